/**
 * `Deno.bench` suites for quantize / dequantize (`deno task bench`).
 *
 * - CPU, 2^16 and 2^20 elements: per-tensor float32 → int8 / float8e4m3, per-channel int8,
 *   int4 blocks of 128, and dequantize int8 → float32 / int4 blocks → float16.
 * - CUDA (when a GPU is usable; otherwise listed as skipped), 2^24 and 2^28 elements:
 *   per-tensor float32 → int8, per-channel int8, int4 blocks of 128, float32 → float8e4m3,
 *   bfloat16 → float8e4m3 and dequantize int8 → float32. Each iteration evaluates a fresh
 *   quantize of a pre-made device tensor and synchronizes; building the lazy op (which reads
 *   the scale back to check it) is outside the measured span. For CUDA-event timings against
 *   PyTorch, run bench/gpu_quantize.ts.
 *
 * Inputs are seeded normal values (never zeros), scaled so that a few values saturate.
 * @module
 */
import * as tq from "../mod.ts";
import { deviceTensor, randnHost } from "./timing.ts";

/** Columns of the 2-D views used by the per-channel and block-wise cases. */
const COLS = 1024;

interface Case {
  /** Bench name suffix. */
  name: string;
  /** Builds the lazy op from the prepared inputs. */
  build: (inputs: Inputs) => tq.Tensor;
}

interface Inputs {
  x: tq.Tensor;
  xBf16: tq.Tensor;
  q8: tq.Tensor;
  q4: tq.Tensor;
  scale: tq.Tensor;
  rowScales: tq.Tensor;
  blockScales: tq.Tensor;
}

const CASES: Case[] = [
  {
    name: "quantize f32 → int8 per-tensor",
    build: (i) => tq.quantize(i.x, i.scale, "int8"),
  },
  {
    name: "quantize f32 → int8 per-channel",
    build: (i) => tq.quantize(i.x, i.rowScales, "int8", { dim: 0 }),
  },
  {
    name: "quantize f32 → int4 block 128",
    build: (i) => tq.quantize(i.x, i.blockScales, "int4", { dim: 1, blockSize: 128 }),
  },
  {
    name: "quantize f32 → fp8 per-tensor",
    build: (i) => tq.quantize(i.x, i.scale, "float8e4m3"),
  },
  {
    name: "quantize bf16 → fp8 per-tensor",
    build: (i) => tq.quantize(i.xBf16, i.scale, "float8e4m3"),
  },
  {
    name: "dequantize int8 → f32 per-tensor",
    build: (i) => tq.dequantize(i.q8, i.scale, "float32"),
  },
  {
    name: "dequantize int4 block 128 → f16",
    build: (i) => tq.dequantize(i.q4, i.blockScales, "float16", { dim: 1, blockSize: 128 }),
  },
];

const prepared = new Map<string, Inputs>();

/** `n` seeded normals (std 0.5): 2^22 fresh values tiled (drawing 2^28 takes seconds). */
function tiledNormals(n: number): Float32Array {
  const block = randnHost(Math.min(n, 1 << 22), 1234, 0.5);
  const out = new Float32Array(n);
  for (let off = 0; off < n; off += block.length) out.set(block, off);
  return out;
}

/** Inputs of `n` elements on `device`, made on first use (2^28 takes a few seconds). */
function inputs(device: string, n: number): Inputs {
  const key = `${device}:${n}`;
  let found = prepared.get(key);
  if (found) return found;
  const rows = n / COLS;
  const shape = [rows, COLS];
  // Standard deviation 0.5 and scale 4 / 127: int8 saturates beyond 8 sigma (a few values at
  // 2^28); int4 blocks use scale 2 / 7, saturating beyond 4 sigma.
  const values = tiledNormals(n);
  const scaleValue = 4 / 127;
  const blockScale = 2 / 7;
  const x = deviceTensor(values, shape, "float32", device);
  const xBf16 = deviceTensor(values, shape, "bfloat16", device);
  const q8 = tq.quantize(x, scaleValue, "int8").evaluate();
  const blockScales = tq.full([rows, COLS / 128], blockScale, { device });
  const q4 = tq.quantize(x, blockScales, "int4", { dim: 1, blockSize: 128 }).evaluate();
  found = {
    x,
    xBf16,
    q8,
    q4,
    scale: tq.full([], scaleValue, { device }),
    rowScales: tq.full([rows], scaleValue, { device }),
    blockScales,
  };
  prepared.set(key, found);
  return found;
}

function sizeName(n: number): string {
  return `2^${Math.log2(n)}`;
}

for (const n of [2 ** 16, 2 ** 20]) {
  for (const c of CASES) {
    Deno.bench({
      name: `cpu ${sizeName(n)} ${c.name}`,
      group: `cpu ${sizeName(n)}`,
      baseline: c === CASES[0],
      fn(b) {
        const t = c.build(inputs("cpu", n));
        b.start();
        t.evaluate();
        b.end();
        t.dispose();
      },
    });
  }
}

const gpuReason = tq.cuda.unavailableReason();
if (gpuReason !== undefined) {
  console.log(`quantize.bench.ts: skipping the cuda suites (no GPU: ${gpuReason})`);
}
for (const n of [2 ** 24, 2 ** 28]) {
  for (const c of CASES) {
    const name = `cuda ${sizeName(n)} ${c.name}`;
    if (gpuReason !== undefined) {
      Deno.bench({ name: `${name} (skipped: no GPU)`, ignore: true, fn() {} });
      continue;
    }
    Deno.bench({
      name,
      group: `cuda ${sizeName(n)}`,
      baseline: c === CASES[0],
      fn(b) {
        const t = c.build(inputs("cuda", n));
        b.start();
        t.evaluate();
        tq.cuda.synchronize();
        b.end();
        t.dispose();
      },
    });
  }
}
