/**
 * w4 Linear layers whose input width is not a multiple of the block size (the last block of
 * each row shorter, as ONNX's block-wise quantization allows), fused (`wlinear`) against the
 * same graph with Q/DQ fusion off (dequantize, then a float16 matmul), and against a layer of
 * the nearest whole-block width. GPT-2 XL's widths: 1600 = 12.5 blocks of 128.
 *
 *     deno run -A bench/ragged_blocks.ts [--out DIR] [--quick]
 *     deno run -A bench/ragged_blocks.ts --device cpu --smoke   # tiny shapes, no GPU
 *
 * Figures are CUDA-event medians (µs) of compiled forwards (`tq.compile`: CUDA graph replay),
 * rotating among enough layers that their weights come from memory; the last column times
 * `evaluate()` of forwards built before timing (host work included). Each fused output is
 * checked against the unfused one (max |difference| within 1e-2 of the outputs' root mean
 * square: float16 rounding apart).
 * @module
 */
import * as tq from "../mod.ts";
import {
  benchArgs,
  fmt,
  type GpuTiming,
  log,
  markdownTable,
  randnHost,
  requireGpu,
  rotationCount,
  timeGpu,
  writeOut,
} from "./timing.ts";

const { outDir, quick, smoke, device } = benchArgs("ragged_blocks.ts", Deno.args);
if (device.startsWith("cuda")) requireGpu("ragged_blocks.ts", "--smoke --device cpu");
const BLOCK = smoke ? 32 : 128;
const reps = quick ? { warmup: 5, reps: 20 } : { warmup: 10, reps: 50 };

interface Shape {
  /** What the layer is in GPT-2 XL (or its whole-block neighbour). */
  name: string;
  k: number;
  n: number;
}

const SHAPES: Shape[] = smoke
  ? [{ name: "ragged", k: 80, n: 48 }, { name: "whole", k: 64, n: 48 }]
  : [
    { name: "c_attn 1600→4800", k: 1600, n: 4800 },
    { name: "c_attn 1536→4608 (whole blocks)", k: 1536, n: 4608 },
    { name: "c_fc 1600→6400", k: 1600, n: 6400 },
    { name: "c_fc 1536→6144 (whole blocks)", k: 1536, n: 6144 },
  ];
const ROWS = smoke ? [1, 16] : [1, 8, 4096];

/** A w4 Linear with block amax scales from a random weight, moved to the device. */
function w4Linear(k: number, n: number, seed: number): tq.Linear {
  const layer = new tq.Linear(k, n, { bias: true, dtype: "float16" });
  const weight = tq.tensor(randnHost(n * k, seed, 0.05), { shape: [n, k] }).cast("float16")
    .evaluate();
  const bias = tq.tensor(randnHost(n, seed + 1, 0.1), { shape: [n] }).cast("float16").evaluate();
  layer.loadStateDict({ weight, bias });
  tq.quantizeModel(new tq.Sequential(layer), { mode: "w4", blockSize: BLOCK, exclude: [] });
  return layer.to(device);
}

/** Median time of `evaluate()` of forwards built before timing (host work included). */
function timeEager(layer: tq.Linear, x: tq.Tensor): GpuTiming {
  const total = reps.warmup + reps.reps;
  const pending: (tq.Tensor | undefined)[] = Array.from({ length: total }, () => layer.forward(x));
  return timeGpu((i) => {
    pending[i]!.evaluate().dispose();
    pending[i] = undefined;
  }, { ...reps, device });
}

/**
 * Median time of compiled forwards (CUDA graph replay on CUDA), with Q/DQ fusion on or off at
 * compile time, rotating among `layers` so that their weights come from memory, not the L2.
 */
function timeCompiled(layers: tq.Linear[], x: tq.Tensor, fused: boolean): GpuTiming {
  tq.setQdqFusion(fused);
  try {
    const exes = layers.map((l) =>
      tq.compile((z: tq.Tensor) => l.forward(z), {
        args: [tq.inputInfo(x.shape, "float16")],
        device,
      })
    );
    try {
      return timeGpu((i) => {
        (exes[i % exes.length](x) as tq.Tensor).dispose();
      }, { ...reps, device });
    } finally {
      for (const e of exes) e.dispose();
    }
  } finally {
    tq.setQdqFusion(true);
  }
}

/** max |a - b| over the root mean square of b: float16 outputs differ by their rounding. */
function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let worst = 0, squares = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i] - b[i]));
    squares += b[i] * b[i];
  }
  return worst / Math.sqrt(squares / b.length);
}

const rows: string[][] = [];
for (const [s, shape] of SHAPES.entries()) {
  const weightBytes = shape.n * Math.ceil(shape.k / 2);
  const count = smoke ? 2 : rotationCount(weightBytes);
  const layers = Array.from({ length: count }, (_, i) => w4Linear(shape.k, shape.n, 100 + s + i));
  const layer = layers[0];
  for (const m of ROWS) {
    const x = tq.tensor(randnHost(m * shape.k, 7 + m), { shape: [m, shape.k] }).cast("float16")
      .evaluate().to(device).evaluate();
    const y = layer.forward(x);
    const ops = tq.inspectGraph(y).ops.join("+");
    const fusedY = y.cast("float32").dataSync() as Float32Array;
    tq.setQdqFusion(false);
    let plain: Float32Array;
    try {
      plain = layer.forward(x).cast("float32").dataSync() as Float32Array;
    } finally {
      tq.setQdqFusion(true);
    }
    const diff = maxRelDiff(fusedY, plain);
    if (!(diff <= 1e-2)) throw new Error(`${shape.name} m=${m}: fused vs unfused ${diff}`);
    const eager = timeEager(layer, x);
    const fused = timeCompiled(layers, x, true);
    const unfused = timeCompiled(layers, x, false);
    log(
      `${shape.name} m=${m} [${ops}]: compiled fused ${fmt(fused.medianUs)} µs, unfused ${
        fmt(unfused.medianUs)
      } µs; eager fused ${fmt(eager.medianUs)} µs; max |diff| / rms ${diff.toExponential(1)}`,
    );
    rows.push([
      shape.name,
      String(m),
      fmt(fused.medianUs),
      fmt(unfused.medianUs),
      (unfused.medianUs / fused.medianUs).toFixed(2) + "×",
      m === 1 ? fmt(weightBytes / fused.medianUs / 1e6, 2) : "",
      fmt(eager.medianUs),
    ]);
    x.dispose();
  }
}
const table = markdownTable(
  [
    "layer (w4, blocks of 128, float16 x)",
    "rows",
    "fused µs",
    "unfused µs",
    "speedup",
    "weights TB/s",
    "fused, eager µs",
  ],
  rows,
);
writeOut(outDir, "ragged-blocks.md", table + "\n");
console.log(table);
