/**
 * Every tile configuration of the fused int8 wgmma GEMM (lib/backends/cuda/wgmma.ts) at
 * GPT-2-small's prefill shapes (M = 8 × 512 tokens), kernel time only, and the one
 * `fastestWgmmaInt8Gemm` picks. Prints a markdown table and writes it (wgmma_tiles.md) to
 * `--out`.
 *
 *     deno run -A bench/wgmma_tiles.ts [--out DIR] [--repeats 20]
 *
 * Operands: int8 codes from a seeded generator (not constant bytes), per-channel float32
 * weight scales, float16 bias and output. Times: best of `--repeats` single launches between
 * CUDA events, after one warm-up launch.
 * @module
 */
import { cudaBackend } from "../lib/backends/cuda/backend.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import { type DType, encode, type StorageArray } from "../lib/dtype.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { ACT_GELU_TANH, ACT_NONE } from "../lib/backends/cuda/util.ts";
import {
  fastestWgmmaInt8Gemm,
  timeLaunchMs,
  WGMMA_TILES,
  wgmmaInt8Gemm,
  type WgmmaInt8Problem,
} from "../lib/backends/cuda/wgmma.ts";
import { argValue, checkCommandLine, fmt, intArg, markdownTable, requireGpu } from "./timing.ts";

checkCommandLine("wgmma_tiles.ts", Deno.args, { values: ["out", "repeats"] });
requireGpu("wgmma_tiles.ts");
const out = argValue(Deno.args, "out");
const repeats = intArg("wgmma_tiles.ts", Deno.args, "repeats", 20);
const device = CudaDevice.get(0);

/** A device buffer of `bytes` seeded pseudo-random bytes (int8 codes in -64..63). */
function randomBytes(bytes: number, seed: number): CudaBuffer {
  const host = new Int8Array(bytes);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < bytes; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    host[i] = (s & 127) - 64;
  }
  return upload("int8", host);
}

function upload(dtype: DType, storage: StorageArray): CudaBuffer {
  return cudaBackend.upload("cuda", dtype, storage) as CudaBuffer;
}

/** A device buffer of `n` values of `dtype`, spread over [lo, hi). */
function floats(n: number, lo: number, hi: number, dtype: DType): CudaBuffer {
  const values = Float64Array.from({ length: n }, (_, i) => lo + (hi - lo) * ((i * 0.618) % 1));
  return upload(dtype, encode(dtype, values));
}

const shapes: { name: string; n: number; k: number; act: number }[] = [
  { name: "c_attn", n: 2304, k: 768, act: ACT_NONE },
  { name: "attn c_proj", n: 768, k: 768, act: ACT_NONE },
  { name: "c_fc (gelu)", n: 3072, k: 768, act: ACT_GELU_TANH },
  { name: "mlp c_proj", n: 768, k: 3072, act: ACT_NONE },
];
const m = 4096;
const variants = Object.keys(WGMMA_TILES);
const rows: string[][] = [];
for (const s of shapes) {
  const p: WgmmaInt8Problem = {
    m,
    n: s.n,
    k: s.k,
    outDType: "float16",
    perChannel: true,
    sxdKind: 0,
    swdKind: 0,
    biasDType: "float16",
    act: s.act,
  };
  const x = randomBytes(m * s.k, 1), w = randomBytes(s.n * s.k, 2);
  const y = CudaBuffer.allocate(device, "float16", m * s.n);
  const sx = floats(1, 0.01, 0.02, "float32"), sw = floats(s.n, 0.001, 0.002, "float32");
  const b = floats(s.n, -1, 1, "float16");
  const times = variants.map((v) => {
    const kernel = wgmmaInt8Gemm(device, p, v)!;
    const run = () =>
      kernel.run(y.address, x.address, w.address, sx.address, sw.address, b.address);
    return timeLaunchMs(device, run, repeats) * 1000;
  });
  const picked = fastestWgmmaInt8Gemm(device, p);
  const tops = (us: number) => (2 * m * s.n * s.k) / (us * 1e-6) / 1e12;
  const best = Math.min(...times);
  rows.push([
    `${s.name} ${m}×${s.k}→${s.n}`,
    ...times.map((t) => fmt(t, 1)),
    `${picked?.kernel.variant} (${fmt((picked?.ms ?? NaN) * 1000, 1)})`,
    fmt(tops(best), 0),
  ]);
  for (const buf of [x, w, y, sx, sw, b]) buf.dispose();
}
const table = markdownTable(
  ["shape", ...variants.map((v) => `${v} µs`), "autotune pick (µs)", "best TOP/s"],
  rows,
);
console.log(`\n### wgmma int8 tiles, M = ${m}, float16 out (best of ${repeats})\n\n${table}`);
if (out) {
  await Deno.mkdir(out, { recursive: true });
  await Deno.writeTextFile(`${out}/wgmma_tiles.md`, table + "\n");
}
