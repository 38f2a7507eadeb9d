/**
 * Launch shapes of the decode GEMVs at GPT-2-small's decode layers (one row of x, float16):
 * every shape of each kernel, timed as a decode step runs them (one CUDA graph of launches
 * over weights rotated through three times the L2 cache), with the library's choice marked.
 *
 * - `wgemv` (weight-only int4 blocks of 128 or int8 per channel, kernels/wgemv.cu): warps per
 *   block;
 * - `qgemv` (int8 or e4m3 weights and x, kernels/qgemv.cu, tensor-core kernels): warps
 *   splitting K (`splits`) times groups of 8 output channels per block;
 * - `flinear` (float16 weights, kernels/flinear.cu): warps of its 4-warp blocks splitting K.
 *
 * The layers with a layer norm before them run the `_norm` kernels (the norm folded in), as in
 * the model.
 *
 *     deno run -A bench/decode_gemv_shapes.ts [--kernels wgemv,qgemv,flinear] [--reps N]
 *         [--out DIR]
 *
 * Prints a markdown table per kernel and code dtype (µs per launch: CUDA-event median of graph
 * replays divided by the launches in the graph); `--out DIR` also writes them to
 * DIR/decode_gemv_shapes.md. Each shape's output is first checked against the library's
 * choice's (they sum in another order: tolerance 1e-2 relative to the output's norm).
 * @module
 */
import { backendFor } from "../lib/backends/backend.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import { flinearNormThreads } from "../lib/backends/cuda/flinear.ts";
import { captureGraph } from "../lib/backends/cuda/graph.ts";
import { type CudaKernelContext, KernelParams, launch } from "../lib/backends/cuda/kernels.ts";
import type { WeightScaleIndex } from "../lib/backends/cuda/linear.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import {
  fusedQuantizedGemv,
  QGEMV_MMA_MAX_WARPS,
  qgemvMmaShape,
} from "../lib/backends/cuda/qgemv.ts";
import { allowSharedBytes, gemvShape, moduleKernels } from "../lib/backends/cuda/util.ts";
import { streamingGemv, wgemvShape } from "../lib/backends/cuda/wgemv.ts";
import { decode } from "../lib/dtype.ts";
import { ptx as flinearPtx } from "../kernels/ptx/flinear.ts";
import {
  argValue,
  checkCommandLine,
  encodeFast,
  fmt,
  gpuAvailable,
  gpuUnavailableLine,
  intArg,
  noiseBytes,
  randnHost,
  relError,
  rotationCount,
  timeGpu,
  wlinearRowContext,
  writeOut,
} from "./timing.ts";

const SCRIPT = "decode_gemv_shapes.ts";
checkCommandLine(SCRIPT, Deno.args, { values: ["kernels", "reps", "out"] });
const KERNELS = (argValue(Deno.args, "kernels") ?? "wgemv,qgemv,flinear").split(",");
const REPS = intArg(SCRIPT, Deno.args, "reps", 50);
const OUT = argValue(Deno.args, "out");

/** GPT-2 small's decode GEMVs (one row of x); `norm`: a layer norm is folded into it. */
const LAYERS = [
  { name: "c_attn (ln_1)", n: 2304, k: 768, norm: true },
  { name: "attn c_proj", n: 768, k: 768, norm: false },
  { name: "c_fc (ln_2)", n: 3072, k: 768, norm: true },
  { name: "mlp c_proj", n: 768, k: 3072, norm: false },
];
type Layer = typeof LAYERS[number];

/** One measured shape. */
interface Row {
  layer: string;
  shape: string;
  blocks: number;
  us: number;
  chosen: boolean;
}

const device = () => CudaDevice.get(0);
const cuda = () => backendFor("cuda")!;

function upload16(values: Float32Array): CudaBuffer {
  return cuda().upload("cuda:0", "float16", encodeFast("float16", values)) as CudaBuffer;
}

function uploadF32(values: Float32Array): CudaBuffer {
  return cuda().upload("cuda:0", "float32", values) as CudaBuffer;
}

/** x, the layer norm's weight and bias, and y of a layer. */
function rowBuffers(layer: Layer) {
  return {
    x: upload16(randnHost(layer.k, 7)),
    lnW: upload16(Float32Array.from(randnHost(layer.k, 8), (z) => 1 + 0.1 * z)),
    lnB: upload16(randnHost(layer.k, 9, 0.1)),
    y: CudaBuffer.allocate(device(), "float16", layer.n),
  };
}

/**
 * Times each shape: `run(shape)` gives the launch of weight set `i` (undefined: the shape does
 * not apply), `sets` weight sets rotate, `chosen` is the library's shape.
 */
function measure<S>(
  layer: Layer,
  shapes: S[],
  chosen: S,
  sets: number,
  y: CudaBuffer,
  run: (shape: S) => { launch: (i: number) => void; blocks: number } | undefined,
  describe: (shape: S) => string,
): Row[] {
  const outputOf = (launchOne: (i: number) => void) => {
    launchOne(0);
    return decode("float16", cuda().download(y)) as Float32Array;
  };
  const reference = outputOf(run(chosen)!.launch);
  const rows: Row[] = [];
  for (const shape of shapes) {
    const r = run(shape);
    if (!r) continue;
    const err = relError(outputOf(r.launch), reference).normRel;
    if (!(err <= 1e-2)) {
      throw new Error(`${layer.name}, ${describe(shape)}: output differs (${err})`);
    }
    const graph = captureGraph(device(), () => {
      for (let i = 0; i < sets; i++) r.launch(i);
    });
    try {
      const t = timeGpu(() => graph.replay(), { warmup: 5, reps: REPS });
      rows.push({
        layer: `${layer.name} ${layer.n}×${layer.k}`,
        shape: describe(shape),
        blocks: r.blocks,
        us: t.medianUs / sets,
        chosen: describe(shape) === describe(chosen),
      });
    } finally {
      graph.dispose();
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// wgemv

function wgemvRows(layer: Layer, q: "int4" | "int8"): Row[] {
  const { n, k } = layer;
  const block = q === "int4" ? 128 : undefined;
  const index: WeightScaleIndex = block
    ? { nb: 1, sN: k / block, kb: block, sK: 1 }
    : { nb: 1, sN: 1, kb: 1, sK: 0 };
  const scaleCount = block ? n * (k / block) : n;
  const codeBytes = q === "int4" ? (n * k) / 2 : n * k;
  const sets = rotationCount(codeBytes + 4 * scaleCount, { max: 64 });
  const ctx = wlinearRowContext(device(), n, k, scaleCount);
  const codes: CudaBuffer[] = [];
  const scales: CudaBuffer[] = [];
  for (let i = 0; i < sets; i++) {
    const buffer = cuda().upload("cuda:0", "int8", noiseBytes(codeBytes, 31 + i)) as CudaBuffer;
    codes.push(q === "int4" ? buffer.view("int4", n * k) : buffer);
    if (q === "int4") buffer.dispose(); // the view keeps the memory
    scales.push(
      uploadF32(Float32Array.from(randnHost(scaleCount, 200 + i), (z) => 0.002 + 0.0005 * z * z)),
    );
  }
  const { x, lnW, lnB, y } = rowBuffers(layer);
  const norm = layer.norm ? { eps: 1e-5 } : undefined;
  const sms = device().smCount;
  const chosen = wgemvShape(1, n, k, q, "float16", index, sms, layer.norm)!.warps;
  try {
    return measure(layer, [1, 2, 4, 8, 16], chosen, sets, y, (warps) => {
      const gemv = streamingGemv(ctx, 1, n, k, q, index, norm, warps);
      const shape = wgemvShape(1, n, k, q, "float16", index, sms, layer.norm, warps);
      if (!gemv || !shape) return undefined;
      return {
        launch: (i) => gemv(y, x, codes[i], scales[i], undefined, lnW, lnB),
        blocks: shape.blocks,
      };
    }, (warps) => `${warps} warps`);
  } finally {
    for (const b of [...codes, ...scales, x, lnW, lnB, y]) b.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// qgemv

function qgemvRows(layer: Layer, q: "int8" | "float8e4m3"): Row[] {
  const { n, k } = layer;
  const sets = rotationCount(n * k + 4 * n, { max: 64 });
  const ctx: CudaKernelContext = {
    attrs: { activation: "none" },
    out: { shape: [1, n], dtype: "float16" },
    inputs: [
      { shape: [1, k], dtype: "float16" },
      { shape: [], dtype: "float32" },
      { shape: [], dtype: "float32" },
      { shape: [n, k], dtype: "float16" },
      { shape: [n], dtype: "float32" },
      { shape: [n], dtype: "float32" },
    ],
    device: device(),
  };
  const codes: CudaBuffer[] = [];
  const scales: CudaBuffer[] = [];
  for (let i = 0; i < sets; i++) {
    const bytes = noiseBytes(n * k, 41 + i, q === "float8e4m3");
    codes.push(cuda().upload("cuda:0", "int8", bytes) as CudaBuffer);
    scales.push(
      uploadF32(Float32Array.from(randnHost(n, 400 + i), (z) => 0.002 + 0.0005 * z * z)),
    );
  }
  // x's scale (quantize divides by it, dequantize multiplies): an amax of 4.
  const sx = Math.fround(4 / (q === "int8" ? 127 : 448));
  const sxq = uploadF32(Float32Array.of(sx));
  const sxd = uploadF32(Float32Array.of(sx));
  const { x, lnW, lnB, y } = rowBuffers(layer);
  const norm = layer.norm ? { eps: 1e-5 } : undefined;
  const sms = device().smCount;
  const rule = qgemvMmaShape(1, n, k, sms, layer.norm)!;
  const shapes: { splits: number; groupsPerBlock: number }[] = [];
  for (let splits = 1; splits <= QGEMV_MMA_MAX_WARPS; splits *= 2) {
    for (let g = 1; splits * g <= QGEMV_MMA_MAX_WARPS && g <= 4; g *= 2) {
      shapes.push({ splits, groupsPerBlock: g });
    }
  }
  try {
    return measure(
      layer,
      shapes,
      { splits: rule.splits, groupsPerBlock: rule.groupsPerBlock },
      sets,
      y,
      (choice) => {
        const gemv = fusedQuantizedGemv(ctx, 1, n, k, q, true, 0, "float16", norm, choice);
        const shape = qgemvMmaShape(1, n, k, sms, layer.norm, choice);
        if (!gemv || !shape) return undefined;
        return {
          launch: (i) => gemv(y, x, sxq, sxd, codes[i], scales[i], undefined, lnW, lnB),
          blocks: shape.blocks,
        };
      },
      (c) => `${c.splits} splits × ${c.groupsPerBlock} groups`,
    );
  } finally {
    for (const b of [...codes, ...scales, sxq, sxd, x, lnW, lnB, y]) b.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// flinear (float16 weights)

function flinearRows(layer: Layer): Row[] {
  const { n, k } = layer;
  const sets = rotationCount(2 * n * k, { max: 64 });
  const weights: CudaBuffer[] = [];
  for (let i = 0; i < sets; i++) weights.push(upload16(randnHost(n * k, 300 + i, 0.02)));
  const { x, lnW, lnB, y } = rowBuffers(layer);
  const sms = device().smCount;
  const lnThreads = layer.norm ? flinearNormThreads(1, n, k, "float16", sms) : undefined;
  if (layer.norm && lnThreads === undefined) throw new Error(`${layer.name}: no _norm GEMV`);
  const kernel = moduleKernels(flinearPtx)(
    device(),
    `flinear_gemv_f16_m1${layer.norm ? "_norm" : ""}`,
  );
  const base = gemvShape(1, n, k, 8, sms);
  allowSharedBytes(kernel, base.sharedBytes, 32 * 1024);
  const steps = Math.ceil(Math.min(k, base.tileK) / 256);
  const params = new KernelParams();
  try {
    return measure(layer, [1, 2, 4].filter((v) => v <= steps), base.splitK, sets, y, (splitK) => {
      // kernels/flinear.cu: 4-warp blocks of 4 / splitK groups of 4 output channels.
      const blocks = Math.ceil(Math.ceil(n / 4) / (4 / splitK));
      return {
        blocks,
        launch: (i) => {
          const p = params.reset().ptr(y.address).ptr(x.address).ptr(weights[i].address)
            .ptr(0n).i32(0).i32(1).i32(n).i32(k).i32(base.tileK).i32(splitK).ptr(0n);
          if (layer.norm) p.ptr(lnW.address).ptr(lnB.address).f32(1e-5).i32(lnThreads!);
          launch(device(), kernel, [blocks, 1, 1], [128, 1, 1], p, base.sharedBytes);
        },
      };
    }, (splitK) => `split ${splitK}`);
  } finally {
    for (const b of [...weights, x, lnW, lnB, y]) b.dispose();
  }
}

// ---------------------------------------------------------------------------------------------

if (!gpuAvailable()) {
  console.error(`decode_gemv_shapes.ts: needs a CUDA GPU (${gpuUnavailableLine()})`);
  Deno.exitCode = 1;
} else {
  const sections: [string, string, (layer: Layer) => Row[]][] = [];
  if (KERNELS.includes("wgemv")) {
    sections.push(["wgemv", "int4 blocks of 128", (l) => wgemvRows(l, "int4")]);
    sections.push(["wgemv", "int8 per channel", (l) => wgemvRows(l, "int8")]);
  }
  if (KERNELS.includes("qgemv")) {
    sections.push(["qgemv", "int8", (l) => qgemvRows(l, "int8")]);
    sections.push(["qgemv", "float8e4m3", (l) => qgemvRows(l, "float8e4m3")]);
  }
  if (KERNELS.includes("flinear")) sections.push(["flinear", "float16", flinearRows]);
  const lines: string[] = [];
  for (const [kernel, what, rowsOf] of sections) {
    lines.push(
      `### ${kernel}, ${what} weights, float16 x, one row: µs per launch in a CUDA graph`,
      "",
      "(* the library's choice)",
      "",
      "| layer | shape | blocks | µs per launch |",
      "| --- | --- | --- | --- |",
    );
    for (const layer of LAYERS) {
      for (const r of rowsOf(layer)) {
        lines.push(
          `| ${r.layer} | ${r.shape}${r.chosen ? " *" : ""} | ${r.blocks} | ${fmt(r.us, 2)} |`,
        );
      }
    }
    lines.push("");
  }
  const text = lines.join("\n");
  console.log(text);
  writeOut(OUT, "decode_gemv_shapes.md", text);
}
