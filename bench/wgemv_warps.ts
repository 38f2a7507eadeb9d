/**
 * Warps per block of the weight-only streaming GEMV (kernels/wgemv.cu) at GPT-2-small's decode
 * shapes: every choice of warps, with and without a folded layer norm, timed as a decode step
 * runs them, one CUDA graph of launches over weights rotated through three times the L2 cache.
 * For comparison, float16's GEMV (`flinear_gemv_f16_m1`, kernels/flinear.cu) at the same shapes
 * with each split of K over its 4-warp blocks.
 *
 *     deno run -A bench/wgemv_warps.ts [--q int4|int8] [--block 128] [--reps N] [--out DIR]
 *
 * Prints, per layer shape, the time per launch of each warps choice (CUDA-event median of graph
 * replays divided by the launches in the graph) and marks the library's default choice. Each
 * choice's output is first checked against the default's (they sum in another order: tolerance
 * 1e-2 relative to the output's norm). `--out DIR` also writes the table to DIR/wgemv_warps.md.
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { backendFor } from "../lib/backends/backend.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import { captureGraph } from "../lib/backends/cuda/graph.ts";
import type { CudaKernelContext } from "../lib/backends/cuda/kernels.ts";
import type { WeightScaleIndex } from "../lib/backends/cuda/linear.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { flinearNormThreads } from "../lib/backends/cuda/flinear.ts";
import { KernelParams, launch } from "../lib/backends/cuda/kernels.ts";
import { allowSharedBytes, gemvShape, moduleKernels } from "../lib/backends/cuda/util.ts";
import { streamingGemv, wgemvShape } from "../lib/backends/cuda/wgemv.ts";
import { ptx as flinearPtx } from "../kernels/ptx/flinear.ts";
import { decode } from "../lib/dtype.ts";
import { encodeFast, fmt, gpuAvailable, randnHost, rotationCount, timeGpu } from "./timing.ts";

const { values } = parseArgs({
  options: {
    q: { type: "string", default: "int4" },
    block: { type: "string" },
    reps: { type: "string", default: "50" },
    out: { type: "string" },
  },
});
const Q = values.q as "int4" | "int8";
if (Q !== "int4" && Q !== "int8") throw new Error(`--q: int4 or int8, got ${values.q}`);
const BLOCK = values.block !== undefined ? Number(values.block) : Q === "int4" ? 128 : undefined;
const REPS = Number(values.reps);
const WARPS = [1, 2, 4, 8, 16];

/** GPT-2 small's decode GEMVs (one row of x); `norm`: a layer norm is folded into it. */
const SHAPES = [
  { name: "c_attn (ln_1)", n: 2304, k: 768, norm: true },
  { name: "attn c_proj", n: 768, k: 768, norm: false },
  { name: "c_fc (ln_2)", n: 3072, k: 768, norm: true },
  { name: "mlp c_proj", n: 768, k: 3072, norm: false },
];

function scaleIndex(k: number): WeightScaleIndex {
  return BLOCK ? { nb: 1, sN: k / BLOCK, kb: BLOCK, sK: 1 } : { nb: 1, sN: 1, kb: 1, sK: 0 };
}

/** `count` bytes of xorshift noise (any byte is a valid int8 code or pair of int4 codes). */
function randomBytes(count: number, seed: number): Int8Array {
  const words = new Uint32Array(Math.ceil(count / 4));
  let s = (seed * 2654435761) | 1;
  for (let i = 0; i < words.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    words[i] = s;
  }
  return new Int8Array(words.buffer, 0, count);
}

function normRel(got: Float32Array, ref: Float32Array): number {
  let d = 0, r = 0;
  for (let i = 0; i < ref.length; i++) {
    d += (got[i] - ref[i]) ** 2;
    r += ref[i] ** 2;
  }
  return Math.sqrt(d / Math.max(r, 1e-30));
}

interface Row {
  shape: string;
  warps: number;
  blocks: number;
  us: number;
  isDefault: boolean;
}

function measureShape(s: typeof SHAPES[number]): Row[] {
  const device = CudaDevice.get(0);
  const cuda = backendFor("cuda")!;
  const { n, k } = s;
  const index = scaleIndex(k);
  const scaleCount = BLOCK ? n * (k / BLOCK) : n;
  const codeBytes = Q === "int4" ? (n * k) / 2 : n * k;
  const count = rotationCount(codeBytes + 4 * scaleCount, { max: 64 });
  const ctx: CudaKernelContext = {
    attrs: { activation: "none" },
    out: { shape: [1, n], dtype: "float16" },
    inputs: [
      { shape: [1, k], dtype: "float16" },
      { shape: [n, k], dtype: "float16" },
      { shape: [scaleCount], dtype: "float32" },
      { shape: [scaleCount], dtype: "float32" },
    ],
    device,
  };
  const codes: CudaBuffer[] = [];
  const scales: CudaBuffer[] = [];
  for (let i = 0; i < count; i++) {
    const buffer = cuda.upload("cuda:0", "int8", randomBytes(codeBytes, 31 + i)) as CudaBuffer;
    codes.push(Q === "int4" ? buffer.view("int4", n * k) : buffer);
    if (Q === "int4") buffer.dispose(); // the view keeps the memory
    const sc = Float32Array.from(randnHost(scaleCount, 200 + i), (z) => 0.002 + 0.0005 * z * z);
    scales.push(cuda.upload("cuda:0", "float32", sc) as CudaBuffer);
  }
  const xHost = randnHost(k, 7);
  const x = cuda.upload("cuda:0", "float16", encodeFast("float16", xHost)) as CudaBuffer;
  const lnW = cuda.upload(
    "cuda:0",
    "float16",
    encodeFast("float16", Float32Array.from(randnHost(k, 8), (z) => 1 + 0.1 * z)),
  ) as CudaBuffer;
  const lnB = cuda.upload(
    "cuda:0",
    "float16",
    encodeFast("float16", randnHost(k, 9, 0.1)),
  ) as CudaBuffer;
  const y = CudaBuffer.allocate(device, "float16", n);
  const norm = s.norm ? { eps: 1e-5 } : undefined;
  const defaultWarps = wgemvShape(1, n, k, Q, "float16", index, device.smCount, s.norm)!.warps;
  const run = (warps: number) => {
    const gemv = streamingGemv(ctx, 1, n, k, Q, index, norm, warps);
    if (!gemv) return undefined;
    return (i: number) => gemv(y, x, codes[i], scales[i], undefined, lnW, lnB);
  };
  const outputOf = (launch: (i: number) => void) => {
    launch(0);
    return decode("float16", cuda.download(y)) as Float32Array;
  };
  const reference = outputOf(run(defaultWarps)!);
  const rows: Row[] = [];
  for (const warps of WARPS) {
    const launch = run(warps);
    const shape = wgemvShape(1, n, k, Q, "float16", index, device.smCount, s.norm, warps);
    if (!launch || !shape) continue;
    const err = normRel(outputOf(launch), reference);
    if (!(err <= 1e-2)) throw new Error(`${s.name}, ${warps} warps: output differs (${err})`);
    const graph = captureGraph(device, () => {
      for (let i = 0; i < count; i++) launch(i);
    });
    try {
      const t = timeGpu(() => graph.replay(), { warmup: 5, reps: REPS });
      rows.push({
        shape: `${s.name} ${n}×${k}`,
        warps,
        blocks: shape.blocks,
        us: t.medianUs / count,
        isDefault: warps === defaultWarps,
      });
    } finally {
      graph.dispose();
    }
  }
  for (const b of [...codes, ...scales, x, lnW, lnB, y]) b.dispose();
  return rows;
}

/** float16's GEMV at shape `s` with each split of K (flinear_gemv_f16_m1, 4 warps a block). */
function measureFloat16(s: typeof SHAPES[number]): Row[] {
  const device = CudaDevice.get(0);
  const cuda = backendFor("cuda")!;
  const { n, k } = s;
  const count = rotationCount(2 * n * k, { max: 64 });
  const weights: CudaBuffer[] = [];
  for (let i = 0; i < count; i++) {
    const w = encodeFast("float16", randnHost(n * k, 300 + i, 0.02));
    weights.push(cuda.upload("cuda:0", "float16", w) as CudaBuffer);
  }
  const x = cuda.upload("cuda:0", "float16", encodeFast("float16", randnHost(k, 7))) as CudaBuffer;
  const lnW = cuda.upload(
    "cuda:0",
    "float16",
    encodeFast("float16", Float32Array.from(randnHost(k, 8), (z) => 1 + 0.1 * z)),
  ) as CudaBuffer;
  const lnB = cuda.upload(
    "cuda:0",
    "float16",
    encodeFast("float16", randnHost(k, 9, 0.1)),
  ) as CudaBuffer;
  const y = CudaBuffer.allocate(device, "float16", n);
  const lnThreads = s.norm ? flinearNormThreads(1, n, k, "float16", device.smCount) : undefined;
  if (s.norm && lnThreads === undefined) throw new Error(`${s.name}: no float16 _norm GEMV`);
  const kernel = moduleKernels(flinearPtx)(device, `flinear_gemv_f16_m1${s.norm ? "_norm" : ""}`);
  const base = gemvShape(1, n, k, 8, device.smCount);
  allowSharedBytes(kernel, base.sharedBytes, 32 * 1024);
  const steps = Math.ceil(Math.min(k, base.tileK) / 256);
  const params = new KernelParams();
  const run = (splitK: number) => {
    const blocks = Math.ceil(Math.ceil(n / 4) / (4 / splitK));
    return {
      blocks,
      launch: (i: number) => {
        const p = params.reset().ptr(y.address).ptr(x.address).ptr(weights[i].address).ptr(0n)
          .i32(0).i32(1).i32(n).i32(k).i32(base.tileK).i32(splitK).ptr(0n);
        if (s.norm) p.ptr(lnW.address).ptr(lnB.address).f32(1e-5).i32(lnThreads!);
        launch(device, kernel, [blocks, 1, 1], [128, 1, 1], p, base.sharedBytes);
      },
    };
  };
  const outputOf = (launchOne: (i: number) => void) => {
    launchOne(0);
    return decode("float16", cuda.download(y)) as Float32Array;
  };
  const reference = outputOf(run(base.splitK).launch);
  const rows: Row[] = [];
  for (const splitK of [1, 2, 4].filter((v) => v <= steps)) {
    const { blocks, launch: launchOne } = run(splitK);
    const err = normRel(outputOf(launchOne), reference);
    if (!(err <= 1e-2)) throw new Error(`${s.name}, split ${splitK}: output differs (${err})`);
    const graph = captureGraph(device, () => {
      for (let i = 0; i < count; i++) launchOne(i);
    });
    try {
      const t = timeGpu(() => graph.replay(), { warmup: 5, reps: REPS });
      rows.push({
        shape: `${s.name} ${n}×${k}`,
        warps: splitK,
        blocks,
        us: t.medianUs / count,
        isDefault: splitK === base.splitK,
      });
    } finally {
      graph.dispose();
    }
  }
  for (const b of [...weights, x, lnW, lnB, y]) b.dispose();
  return rows;
}

if (!gpuAvailable()) {
  console.log("wgemv_warps: no CUDA device; nothing to measure.");
} else {
  const title = `weight-only GEMV, ${Q}${BLOCK ? ` blocks of ${BLOCK}` : " per channel"}, ` +
    `float16 x, one row, µs per launch in a CUDA graph (* the default choice)`;
  const lines = [
    `### ${title}`,
    "",
    "| layer | warps | blocks | µs per launch |",
    "| --- | --- | --- | --- |",
  ];
  for (const s of SHAPES) {
    for (const r of measureShape(s)) {
      lines.push(
        `| ${r.shape} | ${r.warps}${r.isDefault ? " *" : ""} | ${r.blocks} | ${fmt(r.us, 2)} |`,
      );
    }
  }
  lines.push(
    "",
    "### float16 GEMV (flinear_gemv_f16_m1), same shapes: warps of a 4-warp block splitting K",
    "",
    "| layer | split | blocks | µs per launch |",
    "| --- | --- | --- | --- |",
  );
  for (const s of SHAPES) {
    for (const r of measureFloat16(s)) {
      lines.push(
        `| ${r.shape} | ${r.warps}${r.isDefault ? " *" : ""} | ${r.blocks} | ${fmt(r.us, 2)} |`,
      );
    }
  }
  const text = lines.join("\n") + "\n";
  console.log(text);
  if (values.out) Deno.writeTextFileSync(join(values.out, "wgemv_warps.md"), text);
}
