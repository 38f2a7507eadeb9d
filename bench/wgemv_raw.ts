/**
 * Micro-benchmark of weight-only Linear at M = 1, N = K = 8192, float16 x: int8 per channel
 * and int4 blocks of 128.
 *
 *     deno run -A bench/wgemv_raw.ts [--reps N] [--n N] [--k K]
 *
 * Two figures per variant, both CUDA-event medians with the weights rotated among enough sets
 * to span three times the L2 cache:
 * - kernel: the streaming GEMV (kernels/wgemv.cu) launched directly on prepared codes, one
 *   launch timed alone and back-to-back batches of 20 (time per launch);
 * - op: `wlinear` through `tq.compile` (one CUDA graph per call, input and output copies
 *   included), whichever kernel the lowering picks.
 *
 * Rates are bytes read (codes, scales, x) and written (y) per second. Each figure also checks
 * a slice of its output against a float64 host reference.
 * @module
 */
import * as tq from "../mod.ts";
import { backendFor } from "../lib/backends/backend.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import type { WeightScaleIndex } from "../lib/backends/cuda/linear.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { streamingGemv, wgemvShape } from "../lib/backends/cuda/wgemv.ts";
import { decode, roundHalfToEven } from "../lib/dtype.ts";
import {
  checkCommandLine,
  describeError,
  deviceTensor,
  encodeFast,
  fmt,
  type GpuTiming,
  intArg,
  noiseBytes,
  randnHost,
  relError,
  requireGpu,
  rotated,
  rotationCount,
  roundToDType,
  timeGpu,
  wlinearRowContext,
} from "./timing.ts";

const SCRIPT = "wgemv_raw.ts";
checkCommandLine(SCRIPT, Deno.args, { values: ["reps", "n", "k"] });
const REPS = intArg(SCRIPT, Deno.args, "reps", 200);
const N = intArg(SCRIPT, Deno.args, "n", 8192);
const K = intArg(SCRIPT, Deno.args, "k", 8192);
const BATCH = 20;
/** Output channels checked against the host reference (first and last). */
const CHECKED = 64;

interface Variant {
  name: string;
  q: "int8" | "int4";
  /** Block size along K (undefined: per output channel). */
  block?: number;
}

const VARIANTS: Variant[] = [
  { name: "int8 per channel", q: "int8" },
  { name: "int4 block 128", q: "int4", block: 128 },
];

function scaleIndex(v: Variant): WeightScaleIndex {
  return v.block ? { nb: 1, sN: K / v.block, kb: v.block, sK: 1 } : { nb: 1, sN: 1, kb: 1, sK: 0 };
}

/** Bytes one call moves: codes, float32 scales, x and y (float16). */
function callBytes(v: Variant): number {
  const codes = v.q === "int4" ? (N * K) / 2 : N * K;
  const scales = v.block ? (N * K / v.block) * 4 : N * 4;
  return codes + scales + 2 * K + 2 * N;
}

function report(label: string, t: GpuTiming, bytes: number, perCall = 1): string {
  const us = t.medianUs / perCall;
  return `${label}: ${fmt(us, 2)} µs (p10 ${fmt(t.p10Us / perCall, 2)}, p90 ${
    fmt(t.p90Us / perCall, 2)
  }), ${fmt(bytes / (us * 1e-6) / 1e12, 2)} TB/s${t.hostBound ? " HOST-BOUND" : ""}`;
}

/** Code (n, k) of a row-major `[N, K]` int8 / packed int4 code array. */
function codeAt(codes: Int8Array, q: Variant["q"], n: number, k: number): number {
  if (q === "int8") return codes[n * K + k];
  const byte = codes[(n * K + k) >> 1];
  const nibble = (k & 1) ? (byte >> 4) & 0xf : byte & 0xf;
  return nibble >= 8 ? nibble - 16 : nibble;
}

/** The checked channels (first and last CHECKED). */
function checkedChannels(): number[] {
  const first = Array.from({ length: Math.min(CHECKED, N) }, (_, i) => i);
  const last = Array.from({ length: Math.min(CHECKED, N) }, (_, i) => N - 1 - i);
  return [...new Set([...first, ...last])];
}

// ---------------------------------------------------------------------------------------------
// The kernel alone

function kernelFigure(v: Variant, x: Float32Array): void {
  const device = CudaDevice.get(0);
  const cuda = backendFor("cuda")!;
  const index = scaleIndex(v);
  const scaleCount = v.block ? N * (K / v.block) : N;
  const count = rotationCount(callBytes(v));
  const shape = wgemvShape(1, N, K, v.q, "float16", index, device.smCount);
  if (!shape) throw new Error(`${v.name}: not covered by the streaming GEMV`);
  const ctx = wlinearRowContext(device, N, K, scaleCount);
  const gemv = streamingGemv(ctx, 1, N, K, v.q, index)!;
  const codeBytes = v.q === "int4" ? (N * K) / 2 : N * K;
  const hostCodes: Int8Array[] = [];
  const hostScales: Float32Array[] = [];
  const codes: CudaBuffer[] = [];
  const scales: CudaBuffer[] = [];
  for (let i = 0; i < count; i++) {
    const c = noiseBytes(codeBytes, 17 + i);
    const s = Float32Array.from(randnHost(scaleCount, 100 + i), (z) => 0.002 + 0.0005 * z * z);
    const buffer = cuda.upload("cuda:0", "int8", c) as CudaBuffer;
    codes.push(v.q === "int4" ? buffer.view("int4", N * K) : buffer);
    if (v.q === "int4") buffer.dispose(); // the view keeps the memory
    scales.push(cuda.upload("cuda:0", "float32", s) as CudaBuffer);
    if (i === 0) {
      hostCodes.push(c);
      hostScales.push(s);
    }
  }
  const xb = cuda.upload("cuda:0", "float16", encodeFast("float16", x)) as CudaBuffer;
  const y = CudaBuffer.allocate(device, "float16", N);

  // Check set 0.
  gemv(y, xb, codes[0], scales[0], undefined);
  const gotValues = decode("float16", cuda.download(y));
  const channels = checkedChannels();
  const ref: number[] = [];
  for (const n of channels) {
    let acc = 0;
    for (let k = 0; k < K; k++) {
      const s = hostScales[0][n * index.sN + Math.floor(k / index.kb) * index.sK];
      acc += x[k] * codeAt(hostCodes[0], v.q, n, k) * s;
    }
    ref.push(acc);
  }
  const check = describeError(relError(channels.map((n) => gotValues[n]), ref), 2e-3);

  const single = timeGpu((i) => gemv(y, xb, codes[i % count], scales[i % count], undefined), {
    warmup: 20,
    reps: REPS,
  });
  const batched = timeGpu((i) => {
    for (let r = 0; r < BATCH; r++) {
      const at = (i * BATCH + r) % count;
      gemv(y, xb, codes[at], scales[at], undefined);
    }
  }, { warmup: 3, reps: Math.max(10, Math.floor(REPS / BATCH)) });
  const bytes = callBytes(v);
  console.log(
    `${v.name} kernel ${shape.kernel}, ${shape.blocks} blocks × ${shape.warps} warps, ` +
      `${count} weight sets:`,
  );
  console.log(`  ${report("one launch", single, bytes)}`);
  console.log(`  ${report(`back-to-back ×${BATCH}`, batched, bytes, BATCH)}`);
  console.log(`  check: ${check}`);
  for (const b of [...codes, ...scales, xb, y]) b.dispose();
}

// ---------------------------------------------------------------------------------------------
// The op, compiled

/** tensorq's scale rule: fround(amax / bound), 1 for an amax of 0. */
function scaleOf(amax: number, bound: number): number {
  const s = Math.fround(amax / bound);
  return s > 0 ? s : 1;
}

function weightScales(v: Variant, w: Float32Array): Float32Array {
  const bound = v.q === "int8" ? 127 : 7;
  const span = v.block ?? K;
  const scales = new Float32Array((N * K) / span);
  for (let i = 0; i < scales.length; i++) {
    let amax = 0;
    for (let j = i * span; j < (i + 1) * span; j++) amax = Math.max(amax, Math.abs(w[j]));
    scales[i] = scaleOf(amax, bound);
  }
  return scales;
}

function opFigure(v: Variant, x: Float32Array): void {
  const count = rotationCount(callBytes(v));
  const w0 = roundToDType("float16", randnHost(N * K, 2, 0.02));
  const layers: tq.Linear[] = [];
  let scales0: Float32Array | undefined;
  for (let i = 0; i < count; i++) {
    // Other sets are rotated copies (values already float16).
    const w = i === 0 ? w0 : rotated(w0, i * 104729);
    const scales = weightScales(v, w);
    if (i === 0) scales0 = scales;
    const layer = tq.withoutInitialization(() =>
      new tq.Linear(K, N, {
        dtype: "float16",
        bias: false,
        quantDtype: v.q,
        weightQuantDim: v.block ? 1 : 0,
        blockSize: v.block,
      })
    );
    layer.loadStateDict({
      weight: deviceTensor(w, [N, K], "float16", "cuda"),
      weightScale: tq.tensor(scales, {
        shape: v.block ? [N, K / v.block] : [N],
        device: "cuda",
      }),
    });
    layers.push(layer);
  }
  const xt = deviceTensor(x, [1, K], "float16", "cuda");
  const exes = layers.map((l) =>
    tq.compile((z: tq.Tensor) => l.forward(z), {
      args: [tq.inputInfo([1, K], "float16")],
      device: "cuda",
    })
  );
  const y0 = exes[0](xt) as tq.Tensor;
  const got = y0.dataSync() as Float32Array;
  y0.dispose();
  const ops = tq.inspectGraph(layers[0].forward(xt)).ops;
  // Reference: x · (q · s) in float64 with the codes quantize makes (round half to even).
  const bound = v.q === "int8" ? 127 : 7;
  const channels = checkedChannels();
  const ref = channels.map((n) => {
    let acc = 0;
    for (let k = 0; k < K; k++) {
      const s = scales0![v.block ? n * (K / v.block) + Math.floor(k / v.block) : n];
      const q = Math.max(
        -bound - 1,
        Math.min(bound, roundHalfToEven(Math.fround(w0[n * K + k] / s))),
      );
      acc += x[k] * q * s;
    }
    return acc;
  });
  const check = describeError(relError(channels.map((n) => got[n]), ref), 5e-3);
  const t = timeGpu((i) => (exes[i % count](xt) as tq.Tensor).dispose(), {
    warmup: 20,
    reps: REPS,
  });
  console.log(`${v.name} op (tq.compile, ops ${ops.join(" ")}), ${count} weight sets:`);
  console.log(`  ${report("compiled call", t, callBytes(v))}`);
  console.log(`  check: ${check}`);
  for (const e of exes) e.dispose();
  xt.dispose();
}

requireGpu(SCRIPT);
const x = roundToDType("float16", randnHost(K, 1));
console.log(`weight-only Linear, M = 1, N = ${N}, K = ${K}, float16 x`);
for (const v of VARIANTS) {
  kernelFigure(v, x);
  opFigure(v, x);
}
