/**
 * CUDA lowerings of the fused linear ops made by the Q/DQ fusion pass
 * (lib/graph/passes/qdq_fusion.ts; CPU reference in lib/backends/cpu/linear.ts; kernels in
 * kernels/linear.cu). x is `[..., K]`, the float weight W `[N, K]`, the output `[..., N]`,
 * `M = numel(x) / K`.
 *
 * Weights are constants: the quantized (or fake-quantized) form of a weight is made by a
 * kernel on first use and cached per W buffer and quantize-scale buffer (and, for
 * dequantized forms, per dequant-scale buffer and dtype). The cache entry lives as long as the
 * W buffer: it is freed when W is disposed or collected. During a CUDA graph capture a missing
 * form is made for that run only (the capture records its making).
 *
 * - `qlinear` int8: x is quantized per tensor into an int8 buffer, cuBLASLt multiplies in the
 *   "TN" form (A = W codes `K × N`, op T; B = x codes `K × M`; D = int32 `N × M`, which is
 *   `acc[M, N]` row-major) and an epilogue kernel applies `acc · sxd · swd[n] + b[n]` and the
 *   activation, rounding once. M is padded to a multiple of 16 (zero rows) when N and K are
 *   multiples of 16; other shapes, or problems cuBLASLt rejects, use an exact int8 GEMM kernel.
 *   int32 accumulation is exact either way, so both give identical results.
 * - `qlinear` float8e4m3: e4m3 codes into cuBLASLt (fp32 accumulation): per-tensor weight
 *   scales as scalar scale pointers, per-channel ones (when M > 64) as an outer-vector A scale,
 *   with the bias and relu in cuBLASLt's epilogue when the combination runs; otherwise scale-1
 *   products in float32 and the epilogue kernel. M is taken as it is (cuBLASLt's fp8 products
 *   need only K and N in multiples of 16). float32 layers, and shapes whose N or K is not a
 *   multiple of 16, multiply the codes' exact float32 values with a float32 GEMM.
 * - `qlinear` with M ≤ 8 (int8 or float8e4m3, K a multiple of 16, M·K ≤ 48 KiB): one kernel
 *   (lib/backends/cuda/qgemv.ts) quantizes x, streams the weight codes and applies the epilogue.
 * - `qlinear` with a folded layer norm (attrs `norm`): the fused GEMV normalizes x itself where
 *   it takes the problem; otherwise the quantizing layer norm (lib/backends/cuda/nn.ts) writes
 *   x's codes in place of the quantize kernel, bit-identical to the layer norm op followed by
 *   the quantize (the exact float32 fp8 product keeps the two apart).
 * - `wlinear` (weight-only): for M ≤ 16 a GEMV kernel streams the quantized weight and
 *   dequantizes it in registers (int8 / int4 / e4m3 codes whose scale is constant over 16-byte
 *   chunks: per tensor, per output channel, block-wise along K with blocks of a multiple of 16
 *   or 32 elements): for float16 / bfloat16 x the dequantized weights feed tensor-core MMAs
 *   (float32 accumulators), for float32 x float32 FMAs; otherwise cuBLASLt multiplies x by the
 *   cached dequantized weight in x's dtype.
 * - `wlinear` with a folded layer norm (attrs `norm`): the streaming GEMV's `_norm` kernels
 *   (lib/backends/cuda/wgemv.ts) normalize x while staging it, bit-identical to the layer norm
 *   op; otherwise the layer norm kernel writes x to scratch memory for the plain wlinear.
 * - a residual add folded into a `qlinear` / `wlinear` (attr `residual`, its last input, of the
 *   output's shape and dtype; lib/graph/passes/residual_fusion.ts): the fused GEMVs above (with
 *   or without a folded norm) and the int8 wgmma GEMM (no folded norm) add it in their
 *   epilogue, after the output's rounding, in the same launch; every other path runs the
 *   product into y, then the `add` op's kernel in place (`productThenResidual`,
 *   lib/backends/cuda/flinear.ts): the unfused graph's add bit for bit.
 * @module
 */
import {
  CUBLAS_COMPUTE_32F,
  CUBLAS_COMPUTE_32F_FAST_TF32,
  CUBLAS_COMPUTE_32I,
  CUBLASLT_EPILOGUE_DEFAULT,
  CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
  CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F,
  CUDA_R_32F,
  CUDA_R_32I,
  CUDA_R_8F_E4M3,
  CUDA_R_8I,
} from "../../../ffi/cublaslt.ts";
import { cudaStreamCaptureStatusNone, streamCaptureStatus } from "../../../ffi/cudart.ts";
import { ptx as linearPtx } from "../../../kernels/ptx/linear.ts";
import type { DType } from "../../dtype.ts";
import { TensorqError } from "../../errors.ts";
import type { Attrs } from "../../graph/node.ts";
import { unfoldedAttention } from "../../graph/passes/attention_qlinear.ts";
import { numel } from "../../shape.ts";
import { type LtMatmulPlan, ltMatmulPlan, type LtMatmulSpec } from "./cublaslt.ts";
import { attentionKindOf, lowerAttention } from "./attention.ts";
import type { CudaDevice } from "./device.ts";
import { recordVariant, savedVariant } from "./lt_tuning.ts";
import { layerNormCodes, type RowScaleCopies } from "./nn.ts";
import { fusedQuantizedGemv, QGEMV_MAX_ROWS } from "./qgemv.ts";
import { streamingGemv } from "./wgemv.ts";
import {
  fastestWgmmaInt8Gemm,
  type Int8GemmKernel,
  timeLaunchMs,
  wgmmaInt8Gemm,
  type WgmmaInt8Problem,
  wgmmaInt8Unsupported,
} from "./wgmma.ts";
import {
  BLOCK,
  type CudaKernelContext,
  type CudaLaunch,
  type Dim3,
  grid1d,
  KernelParams,
  launch,
  registerCudaKernel,
} from "./kernels.ts";
import {
  foldedNormOf,
  normThenProduct,
  productThenResidual,
  residualAdd,
  residualFits,
  withoutResidual,
} from "./flinear.ts";
import { CudaBuffer } from "./memory.ts";
import {
  ACT_NONE,
  activationCode,
  allowSharedBytes,
  checkInt32,
  FLOAT_KIND,
  FLOAT_NAME,
  type FloatDType,
  floatDType,
  GEMV_WARPS,
  gemvShape,
  LT_TYPE,
  ltEpilogueFor,
  ltPlanProber,
  ltTrialRuns,
  memsetAsync,
  memsetZero,
  moduleKernels,
  NO_LAUNCH,
  roundUp,
  tnSpec,
} from "./util.ts";

const fn = moduleKernels(linearPtx);

/** Kernel name parts of the quantized dtypes. */
const QUANT_NAME: Record<string, string> = { int8: "i8", int4: "i4", float8e4m3: "e4m3" };

/** Rows up to which wlinear runs the GEMV kernel. */
const GEMV_MAX_ROWS = 16;
/** Most warps in a tensor-core GEMV block (MMA_MAX_WARPS in the kernel). */
const GEMV_MMA_MAX_WARPS = 16;
/**
 * Warps an SM holds of the tensor-core GEMV at least: its `__launch_bounds__` caps it at 128
 * registers a thread.
 */
const GEMV_MMA_WARPS_PER_SM = 16;
/** fp8 products with per-channel weight scales use cuBLASLt's outer-vector scales above this
 * many rows; at fewer rows that mode offers only a slow kernel. */
const OUTER_VECTOR_MIN_ROWS = 64;
/** Epilogue threads per block. */
const EPILOGUE_BLOCK = 256;

/** Use cuBLASLt's e4m3 tensor-core GEMMs for fp8 qlinear (the exact float32 path otherwise). */
const FP8_TENSOR_CORES = true;

// ---------------------------------------------------------------------------------------
// Weight scales

/** Where the scale of weight element (n, k) is: `floor(n / nb)·sN + floor(k / kb)·sK`. */
export interface WeightScaleIndex {
  /** Rows sharing a scale row (block-wise along dim 0). */
  nb: number;
  /** Scale stride per row group. */
  sN: number;
  /** Columns sharing a scale (block-wise along dim 1). */
  kb: number;
  /** Scale stride per column group. */
  sK: number;
}

/**
 * The scale index of a `[N, K]` weight quantized with the fused op's attrs (`weightMode`,
 * `weightDim`, `blockSize`), as the kernels compute it.
 */
export function weightScaleIndex(
  attrs: Readonly<Record<string, unknown>>,
  k: number,
): WeightScaleIndex {
  const dim = attrs.weightDim as number | null;
  const block = attrs.blockSize as number | null;
  switch (attrs.weightMode) {
    case "tensor":
      return { nb: 1, sN: 0, kb: 1, sK: 0 };
    case "channel":
      return dim === 0 ? { nb: 1, sN: 1, kb: 1, sK: 0 } : { nb: 1, sN: 0, kb: 1, sK: 1 };
    case "block":
      return dim === 1
        // ceil: the last block of a row may be shorter (ONNX's block-wise quantization).
        ? { nb: 1, sN: Math.ceil(k / block!), kb: block!, sK: 1 }
        : { nb: block!, sN: k, kb: 1, sK: 1 };
  }
  throw new TensorqError("unknown weight quantization mode", {
    op: "linear",
    kind: "unsupported",
    argument: "weightMode",
    expected: "tensor, channel or block",
    actual: String(attrs.weightMode),
  });
}

/** The quantization a prepared weight depends on besides its buffers. */
function quantKey(attrs: Attrs): string {
  return `${attrs.qdtype}:${attrs.weightMode}:${attrs.weightDim}:${attrs.blockSize}`;
}

// ---------------------------------------------------------------------------------------
// The prepared-weight cache

/** The prepared forms of one W buffer. */
interface WeightSlot {
  weight: WeakRef<CudaBuffer>;
  /** quantize scale → dequant scale (or NO_SCALE) → form name → buffer. */
  forms: WeakMap<CudaBuffer, WeakMap<object, Map<string, CudaBuffer>>>;
  /** Every buffer the slot holds (freed together). */
  buffers: CudaBuffer[];
}

const NO_SCALE = {};
const slots = new WeakMap<CudaBuffer, WeightSlot>();
const liveSlots = new Set<WeightSlot>();
const slotFinalizer = new FinalizationRegistry<WeightSlot>((slot) => {
  try {
    releaseSlot(slot);
  } catch {
    // A finalizer must not throw; the process may be shutting the device down.
  }
});
let preparedCount = 0;

function releaseSlot(slot: WeightSlot): void {
  liveSlots.delete(slot);
  slotFinalizer.unregister(slot);
  const w = slot.weight.deref();
  if (w) slots.delete(w);
  for (const b of slot.buffers) b.dispose();
  slot.buffers.length = 0;
}

/** Frees the forms of weights that were disposed (their buffers can never be passed again). */
function sweepDisposedWeights(): void {
  for (const slot of liveSlots) {
    const w = slot.weight.deref();
    if (!w || w.disposed) releaseSlot(slot);
  }
}

/**
 * Number of prepared weight forms made so far (quantized codes, dequantized weights), whether
 * cached or made for one captured run. A forward that reuses cached forms leaves it unchanged.
 */
export function preparedWeightCount(): number {
  return preparedCount;
}

/** A prepared weight form for one run: `temporary` ones are disposed by the caller. */
interface Prepared {
  buffer: CudaBuffer;
  temporary: boolean;
}

/**
 * The form `form` of weight `w` (quantized with `swq`, dequantized with `swd` when given),
 * made by `fill` into a new buffer of `numel` elements of `dtype` on first use.
 */
function preparedWeight(
  device: CudaDevice,
  w: CudaBuffer,
  swq: CudaBuffer,
  swd: CudaBuffer | undefined,
  form: string,
  dtype: DType,
  count: number,
  fill: (dst: CudaBuffer) => void,
): Prepared {
  let slot = slots.get(w);
  if (!slot) {
    const made: WeightSlot = { weight: new WeakRef(w), forms: new WeakMap(), buffers: [] };
    slot = made;
    slots.set(w, made);
    liveSlots.add(made);
    slotFinalizer.register(w, made, made);
    // Disposing the weight frees its forms now (compressWeights disposes float weights).
    w.onDispose(() => releaseSlot(made));
  }
  let byDequant = slot.forms.get(swq);
  if (!byDequant) slot.forms.set(swq, byDequant = new WeakMap());
  let named = byDequant.get(swd ?? NO_SCALE);
  if (!named) byDequant.set(swd ?? NO_SCALE, named = new Map());
  const cached = named.get(form);
  if (cached) return { buffer: cached, temporary: false };

  const buffer = CudaBuffer.allocate(device, dtype, count);
  fill(buffer);
  preparedCount++;
  // Memory allocated inside a capture belongs to the graph, and buffers whose contents change
  // between runs (compiled-function inputs) cannot be cached: use it for this run only.
  if (
    w.mutable || swq.mutable || swd?.mutable ||
    streamCaptureStatus(device.stream) !== cudaStreamCaptureStatusNone
  ) {
    return { buffer, temporary: true };
  }
  sweepDisposedWeights();
  named.set(form, buffer);
  slot.buffers.push(buffer);
  return { buffer, temporary: false };
}

/** Launches of the weight-preparation kernels of one lowering. */
class WeightPrep {
  readonly #device: CudaDevice;
  readonly #params = new KernelParams();
  readonly #n: number;
  readonly #k: number;
  readonly #index: WeightScaleIndex;
  readonly #wKind: number;
  readonly #swqKind: number;
  readonly #key: string;
  /** W is a compressed weight's codes (attr `weightCodes`), not a float weight. */
  readonly #codes: boolean;

  constructor(ctx: CudaKernelContext, wAt: number, n: number, k: number) {
    this.#device = ctx.device;
    this.#n = n;
    this.#k = k;
    this.#index = weightScaleIndex(ctx.attrs, k);
    this.#codes = ctx.attrs.weightCodes === true;
    this.#wKind = this.#codes ? -1 : FLOAT_KIND[floatDType("linear", "W", ctx.inputs[wAt].dtype)];
    this.#swqKind = FLOAT_KIND[floatDType("linear", "weight scale", ctx.inputs[wAt + 1].dtype)];
    // With the shape: a reshaped weight shares its buffer, and read as another layout the
    // same values quantize to other codes.
    this.#key = `${quantKey(ctx.attrs)}:${n}x${k}`;
  }

  #indexParams(p: KernelParams): void {
    const ix = this.#index;
    p.i64(this.#n).i64(this.#k).i64(ix.nb).i64(ix.sN).i64(ix.kb).i64(ix.sK);
  }

  /** The weight's codes (int8 / e4m3 bytes, packed int4), `[N, K]`: W itself when compressed. */
  codes(w: CudaBuffer, swq: CudaBuffer, qdtype: DType): Prepared {
    if (this.#codes) return { buffer: w, temporary: false };
    const device = this.#device;
    const kernel = fn(device, `linear_quantize_weight_${QUANT_NAME[qdtype]}`);
    const count = this.#n * this.#k;
    return preparedWeight(device, w, swq, undefined, `${this.#key}/codes`, qdtype, count, (d) => {
      const p = this.#params.reset().ptr(d.address).ptr(w.address).i32(this.#wKind)
        .ptr(swq.address).i32(this.#swqKind);
      this.#indexParams(p);
      const units = qdtype === "int4" ? Math.ceil(count / 2) : count;
      launch(device, kernel, grid1d(device, units), [BLOCK, 1, 1], p);
    });
  }

  /**
   * `dequantize(quantize(W, swq), swd)` in `dtype`; without `swd` (and `swdKind` < 0) the
   * codes' exact values. For a compressed weight, `dequantize(W, swd)` made for this run only
   * (temporary): the point of compressing is to hold the codes alone.
   */
  dequantized(
    w: CudaBuffer,
    swq: CudaBuffer,
    swd: CudaBuffer | undefined,
    swdKind: number,
    qdtype: DType,
    dtype: FloatDType,
  ): Prepared {
    const device = this.#device;
    if (this.#codes) {
      const kernel = fn(
        device,
        `linear_dequantize_codes_${QUANT_NAME[qdtype]}_${FLOAT_NAME[dtype]}`,
      );
      const buffer = CudaBuffer.allocate(device, dtype, this.#n * this.#k);
      // Eight elements a thread: rows of whole chunks, codes aligned for the chunk's load.
      const chunked = this.#k % 8 === 0 && w.address % (qdtype === "int4" ? 4n : 8n) === 0n;
      const p = this.#params.reset().ptr(buffer.address).ptr(w.address)
        .ptr(swd?.address ?? 0n).i32(swd ? swdKind : -1);
      this.#indexParams(p);
      p.i32(chunked ? 1 : 0);
      const units = chunked ? buffer.numel / 8 : buffer.numel;
      launch(device, kernel, grid1d(device, units), [BLOCK, 1, 1], p);
      preparedCount++;
      return { buffer, temporary: true };
    }
    const kernel = fn(
      device,
      `linear_fakequant_weight_${QUANT_NAME[qdtype]}_${FLOAT_NAME[dtype]}`,
    );
    const count = this.#n * this.#k;
    const form = `${this.#key}/${swd ? "dequantized" : "values"}:${dtype}`;
    return preparedWeight(device, w, swq, swd, form, dtype, count, (d) => {
      const p = this.#params.reset().ptr(d.address).ptr(w.address).i32(this.#wKind)
        .ptr(swq.address).i32(this.#swqKind).ptr(swd?.address ?? 0n).i32(swd ? swdKind : -1);
      this.#indexParams(p);
      launch(device, kernel, grid1d(device, count), [BLOCK, 1, 1], p);
    });
  }
}

// ---------------------------------------------------------------------------------------
// cuBLASLt problems that may be unsupported

/**
 * Prepares a cuBLASLt product, or returns undefined when cuBLASLt has no algorithm for it or
 * every candidate fails when run (both remembered, so a problem is probed once).
 */
const tryLtPlan = ltPlanProber();

// ---------------------------------------------------------------------------------------
// Shared launches

/** Launches of the activation quantize and epilogue kernels of one lowering. */
class LinearLaunches {
  readonly device: CudaDevice;
  readonly params: KernelParams = new KernelParams();
  readonly m: number;
  readonly n: number;
  readonly act: number;
  readonly outDType: FloatDType;
  readonly #epilogueGrid: Dim3;

  constructor(ctx: CudaKernelContext, m: number, n: number) {
    this.device = ctx.device;
    this.m = m;
    this.n = n;
    this.outDType = floatDType("linear", "output", ctx.out.dtype);
    this.act = activationCode("linear", String(ctx.attrs.activation ?? "none"));
    checkInt32("linear", "M", m);
    checkInt32("linear", "N", n);
    const perThread = n % 4 === 0 ? 4 : 1;
    this.#epilogueGrid = [
      Math.ceil(Math.ceil(n / perThread) / EPILOGUE_BLOCK),
      Math.min(m, 65535),
      1,
    ];
  }

  /**
   * Per-tensor quantize of `count` activations into `dst` (`target`: i8, e4m3, e4m3f32); with
   * `rowScales`, also writes `rows` copies of the float32 value of `scale` to `address`.
   */
  quantizeX(
    kernel: Deno.PointerValue,
    dst: bigint,
    x: CudaBuffer,
    sxq: CudaBuffer,
    sxqKind: number,
    count: number,
    rowScales?: RowScaleCopies,
  ): void {
    if (count === 0 && !rowScales) return;
    const p = this.params.reset().ptr(dst).ptr(x.address).ptr(sxq.address).i32(sxqKind).i64(count)
      .ptr(rowScales?.address ?? 0n).ptr(rowScales?.scale.address ?? 0n)
      .i32(rowScales?.kind ?? 0).i32(rowScales?.rows ?? 0);
    // Two 8-value chunks a thread (quantizeActivations, kernels/linear.cu).
    const grid = grid1d(this.device, Math.max(count, 16 * (rowScales?.rows ?? 0)), 16);
    launch(this.device, kernel, grid, [BLOCK, 1, 1], p);
  }

  /**
   * `out = act(acc · sxd · swd + bias)` over the first M rows of `acc` ([rows, N], int32 or
   * float32 as `kernel` expects). `scales` undefined: the products are already scaled.
   */
  epilogue(
    kernel: Deno.PointerValue,
    out: CudaBuffer,
    acc: bigint,
    scales: { sxd: CudaBuffer; sxdKind: number; swd: CudaBuffer; swdKind: number } | undefined,
    perChannel: boolean,
    bias: CudaBuffer | undefined,
  ): void {
    const p = this.params.reset().ptr(out.address).ptr(acc).i32(this.m).i32(this.n)
      .ptr(scales?.sxd.address ?? 0n).i32(scales?.sxdKind ?? 0)
      .ptr(scales?.swd.address ?? 0n).i32(scales?.swdKind ?? 0).i32(perChannel ? 1 : 0)
      .ptr(bias?.address ?? 0n).i32(this.act);
    launch(this.device, kernel, this.#epilogueGrid, [EPILOGUE_BLOCK, 1, 1], p);
  }
}

// ---------------------------------------------------------------------------------------
// qlinear

/**
 * What a product reads as x: int8 or e4m3 codes (one byte each), or the e4m3 codes' exact
 * values as float32 (the exact fallback product).
 */
type CodeTarget = "i8" | "e4m3" | "e4m3f32";

/**
 * Writes the codes of x (`M·K`, row-major, from the launch's inputs) to `dst` and zero codes
 * after them up to `rows·K`; with `rowScales`, also the per-row copies of the input dequant
 * scale.
 */
type CodesStep = (
  dst: bigint,
  inputs: readonly CudaBuffer[],
  rows: number,
  rowScales?: RowScaleCopies,
) => void;

/** Makes (once per lowering) the x → codes step of the target a product reads. */
type CodesSource = (target: CodeTarget) => CodesStep;

/** The per-tensor quantize kernel of x (input 0) with the input quantize scale (input 1). */
function quantizeCodes(
  ops: LinearLaunches,
  xName: string,
  sxqKind: number,
  m: number,
  k: number,
): CodesSource {
  return (target) => {
    const kernel = fn(ops.device, `qlinear_quantize_${xName}_${target}`);
    const bytes = target === "e4m3f32" ? 4 : 1;
    return (dst, inputs, rows, rowScales) => {
      ops.quantizeX(kernel, dst, inputs[0], inputs[1], sxqKind, m * k, rowScales);
      memsetZero(ops.device, dst + BigInt(m * k * bytes), (rows - m) * k * bytes);
    };
  };
}

/** How an fp8 product is done by cuBLASLt. */
interface Fp8Choice {
  plan: LtMatmulPlan;
  /**
   * Weight and input scales given to cuBLASLt: none (scale 1), scalars, or outer vectors (the
   * weight's per-channel scales and a per-row copy of the input scale).
   */
  scales: "none" | "scalar" | "outer";
  /** D is the output (bias and relu in cuBLASLt's epilogue); otherwise float32 + epilogue. */
  fused: boolean;
  /** Rows of B and D: M itself, or M padded to a multiple of 16 with zero rows. */
  rows: number;
  /**
   * The residual is cuBLASLt's C (beta 1): D = scaled product + bias + residual, rounded once
   * (fused plans of layers with a residual and no activation).
   */
  residualInC: boolean;
}

/**
 * A qlinear whose x is the input of a folded layer norm over its last dim (inputs `[x, sxq,
 * sxd, W, swq, swd, bias?, lnWeight?, lnBias?]`): the fused GEMV normalizes x itself where it
 * takes the problem; otherwise the plain qlinear's product reads codes written by the
 * quantizing layer norm (one launch in place of the layer norm and the quantize), or, for the
 * exact float32 fp8 product, the quantize of the layer-norm kernel's output.
 */
function lowerNormQlinear(ctx: CudaKernelContext): CudaLaunch {
  const { device, attrs } = ctx;
  const own = attrs.hasBias ? 7 : 6;
  const folded = foldedNormOf(ctx, "qlinear", own);
  const { norm, inner, weightOf: lnWeightOf, biasOf: lnBiasOf } = folded;
  const xInfo = ctx.inputs[0];
  const [n, k] = ctx.inputs[3].shape;
  const total = numel(ctx.out.shape);
  if (total === 0) return NO_LAUNCH;
  const m = total / n;
  const gemv = qlinearGemv(ctx);
  if (gemv) return (y, inputs) => gemv(y, inputs);
  const xDType = floatDType("qlinear", "x", xInfo.dtype);
  const sxqKind = FLOAT_KIND[floatDType("qlinear", "input scale", ctx.inputs[1].dtype)];
  const quantize = quantizeCodes(
    new LinearLaunches(inner, m, n),
    FLOAT_NAME[xDType],
    sxqKind,
    m,
    k,
  );
  const codes: CodesSource = (target) => {
    if (target !== "e4m3f32") {
      const write = layerNormCodes(device, xDType, m, k, norm.eps, target);
      return (dst, inputs, rows, rowScales) => {
        write(
          dst,
          inputs[0],
          lnWeightOf(inputs),
          lnBiasOf(inputs),
          inputs[1],
          sxqKind,
          rows * k,
          rowScales,
        );
      };
    }
    // The exact product reads the codes' values as float32: normalize, then quantize.
    const layerNorm = folded.layerNorm();
    const values = quantize(target);
    return (dst, inputs, rows, rowScales) => {
      const normalized = CudaBuffer.allocate(device, xInfo.dtype, m * k);
      layerNorm(normalized, folded.normInputsOf(inputs));
      values(dst, [normalized, ...inputs.slice(1)], rows, rowScales);
      normalized.dispose();
    };
  };
  return lowerQlinear(inner, codes);
}

/**
 * A qlinear with a folded attention (attr `attention`, lib/graph/passes/attention_qlinear.ts;
 * inputs `[q, sxq, sxd, W, swq, swd, bias?, k, v, kvLength?, residual?]`). Where the attention
 * runs on the flash kernel, that kernel writes x's codes in place of the quantize kernel (the
 * result rounded to its dtype, then quantized: the unfused graph's codes), and a residual is
 * added as for any qlinear. Otherwise, and for the exact float32 fp8 product, the attention
 * writes its result to scratch memory first.
 */
function lowerAttentionQlinear(ctx: CudaKernelContext): CudaLaunch {
  const { device } = ctx;
  const unfolded = unfoldedAttention(ctx.attrs);
  const { attrs } = unfolded;
  const infos = unfolded.attentionOperands(ctx.inputs);
  const xDType = floatDType("qlinear", "x", ctx.inputs[0].dtype);
  const [n, k] = ctx.inputs[3].shape;
  const xInfo = { shape: unfolded.xShape(ctx.out.shape, k), dtype: xDType };
  const m = n === 0 ? 0 : numel(ctx.out.shape) / n;
  // The qlinear without the fold: x is the attention's result.
  const inner: CudaKernelContext = {
    ...ctx,
    attrs: { ...ctx.attrs, attention: undefined },
    inputs: unfolded.qlinearOperands(xInfo, ctx.inputs),
    overwritable: undefined,
  };
  const toScratch = (): (inputs: readonly CudaBuffer[]) => CudaBuffer => {
    const attention = lowerAttention(device, attrs, infos, unfolded.shape);
    return (inputs) => {
      const x = CudaBuffer.allocate(device, xDType, m * k);
      attention.run(x.address, unfolded.attentionOperands(inputs));
      return x;
    };
  };
  if (m * k === 0 || attentionKindOf(attrs, infos) !== "flash") {
    const attention = toScratch();
    const rest = lowerQlinear(inner);
    return (y, inputs) => {
      const x = attention(inputs);
      rest(y, unfolded.qlinearOperands(x, inputs));
      x.dispose();
    };
  }
  const sxqKind = FLOAT_KIND[floatDType("qlinear", "input scale", ctx.inputs[1].dtype)];
  const ops = new LinearLaunches(inner, m, n);
  const xName = FLOAT_NAME[xDType];
  const codes: CodesSource = (target) => {
    if (target === "e4m3f32") {
      const attention = toScratch();
      const values = quantizeCodes(ops, xName, sxqKind, m, k)(target);
      return (dst, inputs, rows, rowScales) => {
        const x = attention(inputs);
        values(dst, [x, ...inputs.slice(1)], rows, rowScales);
        x.dispose();
      };
    }
    const attention = lowerAttention(device, attrs, infos, unfolded.shape, {
      target,
      scaleKind: sxqKind,
    });
    return (dst, inputs, rows, rowScales) => {
      // The kernel also writes the per-row copies of the input scale (outer-vector fp8
      // products) of the M rows; padding rows get zero codes and zero scales.
      attention.run(dst, unfolded.attentionOperands(inputs), inputs[1], rowScales);
      memsetZero(device, dst + BigInt(m * k), (rows - m) * k);
      if (rowScales) memsetZero(device, rowScales.address + BigInt(4 * m), 4 * (rows - m));
    };
  };
  // The launch's inputs keep the attention's between the qlinear's own and the residual: the
  // codes step reads them, the product only its own and the last.
  if (inner.attrs.residual !== true) return qlinearProduct(inner, codes);
  if (residualFits(inner)) return qlinearProduct(withoutResidual(inner), codes, residualAdd(inner));
  return productThenResidual(inner, (c) => qlinearProduct(c, codes));
}

/**
 * Lowers a qlinear. `codesOf`, when given, makes the steps that write x's codes (the launch's
 * input 0 is then whatever those steps read, and inputs may follow the qlinear's own); by
 * default x is quantized by the quantize kernel.
 */
function lowerQlinear(ctx: CudaKernelContext, codesOf?: CodesSource): CudaLaunch {
  if (ctx.attrs.attention) return lowerAttentionQlinear(ctx);
  if (ctx.attrs.residual === true) {
    const inner = withoutResidual(ctx);
    if (residualFits(ctx)) {
      const gemv = qlinearGemv(inner);
      if (gemv) return (y, inputs) => gemv(y, inputs, inputs[inputs.length - 1]);
      if (inner.attrs.norm === undefined) return qlinearProduct(inner, undefined, residualAdd(ctx));
    }
    return productThenResidual(ctx, (inner) => lowerQlinear(inner));
  }
  if (ctx.attrs.norm !== undefined) return lowerNormQlinear(ctx);
  return qlinearProduct(ctx, codesOf);
}

/**
 * The product of a qlinear without a residual or a norm (see {@link lowerQlinear}). With
 * `addResidual` the launch's inputs end with a residual: the int8 wgmma GEMM adds it in its
 * epilogue (16-byte aligned residuals), every other path with `addResidual` after the product.
 */
function qlinearProduct(
  ctx: CudaKernelContext,
  codesOf: CodesSource | undefined,
  addResidual?: (y: CudaBuffer, residual: CudaBuffer) => void,
): CudaLaunch {
  const { device, attrs } = ctx;
  const [xInfo, sxqInfo, sxdInfo, wInfo, , swdInfo, biasInfo] = ctx.inputs;
  const [n, k] = wInfo.shape;
  const total = numel(ctx.out.shape);
  if (total === 0) return NO_LAUNCH;
  const m = total / n;
  const qdtype = attrs.qdtype as DType;
  if (qdtype !== "int8" && qdtype !== "float8e4m3") {
    throw new TensorqError("qlinear needs int8 or float8e4m3 codes", {
      op: "qlinear",
      kind: "unsupported",
      argument: "qdtype",
      actual: String(qdtype),
    });
  }
  const ops = new LinearLaunches(ctx, m, n);
  checkInt32("qlinear", "K", k);
  const out = FLOAT_NAME[ops.outDType];
  const xName = FLOAT_NAME[floatDType("qlinear", "x", xInfo.dtype)];
  const sxqKind = FLOAT_KIND[floatDType("qlinear", "input scale", sxqInfo.dtype)];
  const sxdKind = FLOAT_KIND[floatDType("qlinear", "input scale", sxdInfo.dtype)];
  const swdKind = FLOAT_KIND[floatDType("qlinear", "weight scale", swdInfo.dtype)];
  const perChannel = attrs.weightMode === "channel";
  const prep = new WeightPrep(ctx, 3, n, k);
  const scalesOf = (sxd: CudaBuffer, swd: CudaBuffer) => ({ sxd, sxdKind, swd, swdKind });
  // Inputs the codes step reads may follow the bias.
  const biasOf = (inputs: readonly CudaBuffer[]) => attrs.hasBias ? inputs[6] : undefined;
  const codes = codesOf ?? quantizeCodes(ops, xName, sxqKind, m, k);

  // The product, then the residual add when there is one (the launch's inputs end with it).
  const thenResidual = (product: CudaLaunch): CudaLaunch =>
    addResidual
      ? (y, inputs) => {
        product(y, inputs);
        addResidual(y, inputs[inputs.length - 1]);
      }
      : product;

  if (k === 0) {
    // Empty sums: y = act(b).
    const epilogue = fn(device, `qlinear_epilogue_i32_${out}`);
    return thenResidual((y, inputs) => {
      const acc = CudaBuffer.allocate(device, "int32", m * n);
      memsetZero(device, acc.address, acc.bytes);
      const scales = scalesOf(inputs[2], inputs[5]);
      ops.epilogue(epilogue, y, acc.address, scales, perChannel, biasOf(inputs));
      acc.dispose();
    });
  }

  // M ≤ 8: one fused kernel quantizes x, multiplies and applies the epilogue (qgemv.ts). (With
  // a residual the caller has already asked for the GEMV that adds it.)
  const gemv = codesOf || addResidual ? undefined : qlinearGemv(ctx);
  if (gemv) return (y, inputs) => gemv(y, inputs);

  const mPad = roundUp(m, 16);
  const tensorCoreShape = n % 16 === 0 && k % 16 === 0;

  if (qdtype === "int8") {
    const plan = tensorCoreShape
      ? tryLtPlan(
        device,
        tnSpec(n, mPad, k, {
          a: CUDA_R_8I,
          d: CUDA_R_32I,
          compute: CUBLAS_COMPUTE_32I,
          scale: CUDA_R_32I,
        }),
      )
      : undefined;
    const rows = plan ? mPad : m;
    const writeCodes = codes("i8");
    const epilogue = fn(device, `qlinear_epilogue_i32_${out}`);
    // Our own sm_90a kernel (wgmma, epilogue fused) where it beats cuBLASLt + the epilogue.
    const fused = chooseWgmmaInt8(
      device,
      {
        m,
        n,
        k,
        outDType: ops.outDType,
        perChannel,
        sxdKind,
        swdKind,
        biasDType: biasInfo?.dtype,
        act: ops.act,
        residual: addResidual !== undefined,
      },
      plan && (() => timeLtInt8(device, plan, ops, epilogue, mPad, n, k, perChannel, addResidual)),
    );
    if (fused) {
      return (y, inputs) => {
        const [, , sxd, w, swq, swd] = inputs;
        const wq = prep.codes(w, swq, "int8");
        const xq = CudaBuffer.allocate(device, "int8", m * k);
        writeCodes(xq.address, inputs, m);
        const residual = addResidual ? inputs[inputs.length - 1] : undefined;
        const inKernel = residual !== undefined && residualVectorAligned(residual);
        fused.run(
          y.address,
          xq.address,
          wq.buffer.address,
          sxd.address,
          swd.address,
          biasOf(inputs)?.address ?? 0n,
          inKernel ? residual.address : 0n,
        );
        if (residual && !inKernel) addResidual!(y, residual);
        xq.dispose();
        if (wq.temporary) wq.buffer.dispose();
      };
    }
    const gemm = plan ? undefined : fn(device, "qlinear_gemm_i8");
    const gemmGrid: Dim3 = [Math.ceil(n / 64), Math.ceil(m / 64), 1];
    if (!plan && gemmGrid[1] > 65535) {
      throw new TensorqError("too many rows for the int8 GEMM kernel", {
        op: "qlinear",
        kind: "unsupported",
        expected: `at most ${65535 * 64} rows`,
        actual: String(m),
      });
    }
    return thenResidual((y, inputs) => {
      const [, , sxd, w, swq, swd] = inputs;
      const bias = biasOf(inputs);
      const wq = prep.codes(w, swq, "int8");
      const xq = CudaBuffer.allocate(device, "int8", rows * k);
      writeCodes(xq.address, inputs, rows);
      const acc = CudaBuffer.allocate(device, "int32", rows * n);
      if (plan) {
        plan.run(wq.buffer.address, xq.address, acc.address, acc.address, 1, 0);
      } else {
        const p = ops.params.reset().ptr(acc.address).ptr(xq.address).ptr(wq.buffer.address)
          .i32(m).i32(n).i32(k);
        launch(device, gemm!, gemmGrid, [256, 1, 1], p);
      }
      ops.epilogue(epilogue, y, acc.address, scalesOf(sxd, swd), perChannel, bias);
      xq.dispose();
      acc.dispose();
      if (wq.temporary) wq.buffer.dispose();
    });
  }

  // float8e4m3 on cuBLASLt's e4m3 tensor-core GEMMs (FP8_TENSOR_CORES), else the exact path
  // below. Float32 layers take the exact path: the e4m3 MMAs sum in a narrower accumulator
  // between float32 promotions, and at float32 precision that moves activation codes across
  // their rounding boundaries downstream (GPT-2's fp8 logits at a window's first position:
  // off the PyTorch reference by more than 1e-2, against within 1e-3 with the exact product).
  const choice = FP8_TENSOR_CORES && tensorCoreShape && ops.outDType !== "float32"
    ? chooseFp8Plan(device, {
      n,
      m,
      mPad,
      k,
      outDType: ops.outDType,
      perChannel,
      f32Scales: sxdInfo.dtype === "float32" && swdInfo.dtype === "float32",
      biasDType: biasInfo?.dtype,
      act: ops.act,
      residual: addResidual !== undefined,
    })
    : undefined;
  if (choice) {
    fp8Lowerings.tensorCores++;
    const writeCodes = codes("e4m3");
    const epilogue = fn(device, `qlinear_epilogue_f32_${out}`);
    const { plan, scales, fused, rows, residualInC } = choice;
    const product = (y: CudaBuffer, inputs: readonly CudaBuffer[], residual?: CudaBuffer) => {
      const [, , sxd, w, swq, swd] = inputs;
      const bias = biasOf(inputs);
      const wq = prep.codes(w, swq, "float8e4m3");
      const xq = CudaBuffer.allocate(device, "float8e4m3", rows * k);
      // Outer-vector scales: B's is the input scale repeated per row, written with the codes.
      const rowScales = scales === "outer"
        ? CudaBuffer.allocate(device, "float32", rows)
        : undefined;
      writeCodes(
        xq.address,
        inputs,
        rows,
        rowScales && { address: rowScales.address, scale: sxd, kind: sxdKind, rows },
      );
      // Unfused, the epilogue kernel adds the bias: cuBLASLt gets none.
      const ltBias = fused ? bias?.address : undefined;
      const pointers = scales === "none" ? { bias: ltBias } : {
        aScale: swd.address,
        bScale: rowScales?.address ?? sxd.address,
        bias: ltBias,
      };
      if (fused) {
        const c = residual?.address ?? y.address;
        plan.run(wq.buffer.address, xq.address, c, y.address, 1, residual ? 1 : 0, pointers);
      } else {
        const acc = CudaBuffer.allocate(device, "float32", rows * n);
        plan.run(wq.buffer.address, xq.address, acc.address, acc.address, 1, 0, pointers);
        const unscaled = scales === "none" ? scalesOf(sxd, swd) : undefined;
        ops.epilogue(epilogue, y, acc.address, unscaled, perChannel, bias);
        acc.dispose();
      }
      rowScales?.dispose();
      xq.dispose();
      if (wq.temporary) wq.buffer.dispose();
    };
    const productThenAdd = thenResidual((y, inputs) => product(y, inputs));
    if (!residualInC) return productThenAdd;
    fp8Lowerings.residualInC++;
    // The residual goes in as C where it is as aligned as the plan assumes; otherwise the add
    // kernel runs after the product.
    return (y, inputs) => {
      const residual = inputs[inputs.length - 1];
      if (residualVectorAligned(residual)) product(y, inputs, residual);
      else productThenAdd(y, inputs);
    };
  }

  fp8Lowerings.exact++;
  // The codes' exact values in a float32 product (fp32 accumulation, like cuBLASLt's fp8).
  // TF32 tensor cores are exact here: every e4m3 value (3 mantissa bits) is a TF32 value, and
  // products of two are exact in the float32 accumulators.
  const plan = ltMatmulPlan(
    device,
    tnSpec(n, m, k, {
      a: CUDA_R_32F,
      d: CUDA_R_32F,
      compute: CUBLAS_COMPUTE_32F_FAST_TF32,
      scale: CUDA_R_32F,
    }),
  );
  const writeCodes = codes("e4m3f32");
  const epilogue = fn(device, `qlinear_epilogue_f32_${out}`);
  return thenResidual((y, inputs) => {
    const [, , sxd, w, swq, swd] = inputs;
    const wv = prep.dequantized(w, swq, undefined, -1, "float8e4m3", "float32");
    const xv = CudaBuffer.allocate(device, "float32", m * k);
    writeCodes(xv.address, inputs, m);
    const acc = CudaBuffer.allocate(device, "float32", m * n);
    plan.run(wv.buffer.address, xv.address, acc.address, acc.address);
    ops.epilogue(epilogue, y, acc.address, scalesOf(sxd, swd), perChannel, biasOf(inputs));
    xv.dispose();
    acc.dispose();
    if (wv.temporary) wv.buffer.dispose();
  });
}

const fp8Lowerings = { tensorCores: 0, exact: 0, residualInC: 0 };

/**
 * Alignment (bytes) of a residual that a GEMM reads itself (the int8 wgmma epilogue, cuBLASLt's
 * C of an fp8 product): both read it in 16-byte vectors.
 */
const RESIDUAL_VECTOR_BYTES = 16;

/** True when the GEMMs that add a residual themselves can read `residual` (see above). */
function residualVectorAligned(residual: CudaBuffer): boolean {
  return residual.address % BigInt(RESIDUAL_VECTOR_BYTES) === 0n;
}

/**
 * fp8 qlinear products lowered so far: on cuBLASLt's e4m3 tensor cores (of them, those that
 * take a residual as cuBLASLt's C), and as the codes' exact float32 values (float32 layers, and
 * shapes cuBLASLt's fp8 GEMMs do not take).
 */
export function fp8LoweringCounts(): { tensorCores: number; exact: number; residualInC: number } {
  return { ...fp8Lowerings };
}

/** The int8 product chosen per problem: a wgmma tile configuration, or "lt" (cuBLASLt). */
const int8Choices = new Map<string, string>();
let int8Timings = 0;

/** How many int8 GEMM problems were timed so far (tile configurations against cuBLASLt). */
export function int8GemmTimingCount(): number {
  return int8Timings;
}

/**
 * Our fused wgmma int8 GEMM for `p` when it is faster than the cuBLASLt path (`timeLt`, which
 * times cuBLASLt's product + the epilogue; undefined when cuBLASLt has no plan): both are timed
 * once per problem on scratch operands and the choice is kept, in the tuning file too when one
 * is in use (lt_tuning.ts; a saved choice is taken untimed while it still applies). Undefined
 * when the kernel does not apply (not sm_90, K not a multiple of 16, an activation it does not
 * fuse) or is slower. Nothing is timed during a graph capture: a problem first seen there takes
 * cuBLASLt.
 */
function chooseWgmmaInt8(
  device: CudaDevice,
  p: WgmmaInt8Problem,
  timeLt: (() => number) | undefined,
): Int8GemmKernel | undefined {
  if (wgmmaInt8Unsupported(device, p) !== undefined) return undefined;
  const key = `${device.index}:${JSON.stringify(p)}`;
  const known = int8Choices.get(key);
  if (known !== undefined) return known === "lt" ? undefined : wgmmaInt8Gemm(device, p, known);
  const fileKey = `wgmma_i8 ${JSON.stringify(p)}`;
  const saved = savedVariant(device, fileKey)?.variant;
  if (saved === "lt" && timeLt) {
    int8Choices.set(key, saved);
    return undefined;
  }
  // A saved tile configuration that no longer exists gives no kernel: timed again.
  const savedKernel = saved !== undefined && saved !== "lt"
    ? wgmmaInt8Gemm(device, p, saved)
    : undefined;
  if (savedKernel) {
    int8Choices.set(key, saved!);
    return savedKernel;
  }
  if (streamCaptureStatus(device.stream) !== cudaStreamCaptureStatusNone) {
    return timeLt ? undefined : wgmmaInt8Gemm(device, p);
  }
  int8Timings++;
  const best = fastestWgmmaInt8Gemm(device, p);
  const ltMs = timeLt?.();
  const useWgmma = best !== undefined && (ltMs === undefined || best.ms < ltMs);
  const choice = useWgmma ? best!.kernel.variant : "lt";
  int8Choices.set(key, choice);
  if (best !== undefined || ltMs !== undefined) {
    recordVariant(device, fileKey, { variant: choice, ms: useWgmma ? best!.ms : ltMs });
  }
  return useWgmma ? best!.kernel : undefined;
}

/**
 * Milliseconds of cuBLASLt's int8 product + the epilogue kernel (+ the residual add, when
 * `addResidual` is given) on scratch operands.
 */
function timeLtInt8(
  device: CudaDevice,
  plan: LtMatmulPlan,
  ops: LinearLaunches,
  epilogue: Deno.PointerValue,
  rows: number,
  n: number,
  k: number,
  perChannel: boolean,
  addResidual?: (y: CudaBuffer, residual: CudaBuffer) => void,
): number {
  const a = CudaBuffer.allocate(device, "int8", n * k);
  const b = CudaBuffer.allocate(device, "int8", rows * k);
  const acc = CudaBuffer.allocate(device, "int32", rows * n);
  const y = CudaBuffer.allocate(device, ops.outDType, rows * n);
  const s = CudaBuffer.allocate(device, "float32", Math.max(n, 4));
  try {
    for (const buf of [a, b, s]) memsetAsync(device, buf.address, 0x3c, buf.bytes);
    const scales = { sxd: s, sxdKind: 0, swd: s, swdKind: 0 };
    return timeLaunchMs(device, () => {
      plan.run(a.address, b.address, acc.address, acc.address, 1, 0);
      ops.epilogue(epilogue, y, acc.address, scales, perChannel, s);
      addResidual?.(y, y);
    });
  } finally {
    for (const buf of [a, b, acc, y, s]) buf.dispose();
  }
}

/**
 * The first fp8 cuBLASLt configuration that runs, most fused first: scales (outer vectors for
 * per-channel weights above {@link OUTER_VECTOR_MIN_ROWS} rows, scalars for per-tensor ones)
 * applied by cuBLASLt, with the bias and relu in its epilogue when D can be the output; else
 * float32 products finished by the epilogue kernel.
 */
function chooseFp8Plan(
  device: CudaDevice,
  p: {
    n: number;
    m: number;
    mPad: number;
    k: number;
    outDType: FloatDType;
    perChannel: boolean;
    f32Scales: boolean;
    biasDType: DType | undefined;
    act: number;
    /** The layer adds a residual after its product. */
    residual: boolean;
  },
): Fp8Choice | undefined {
  const candidates: Omit<Fp8Choice, "plan">[] = [];
  // cuBLASLt scale pointers must be float32; per-channel scales only pay off above 64 rows.
  const scaleModes: Fp8Choice["scales"][] = !p.f32Scales
    ? []
    : p.perChannel
    ? (p.m > OUTER_VECTOR_MIN_ROWS ? ["outer"] : [])
    : ["scalar"];
  // Writing the (16-bit) output directly needs an activation cuBLASLt computes as the
  // reference does (none, relu, the tanh GELU), and a bias of D's type (cuBLASLt's fp8 table).
  const epilogue = ltEpilogueFor(p.biasDType !== undefined, p.act, p.outDType);
  const fusable = epilogue !== undefined &&
    (p.biasDType === undefined || p.biasDType === p.outDType);
  // cuBLASLt's fp8 products need K and N (the leading dimensions) in multiples of 16, not M:
  // M rows as they are first, M padded with zero rows if a library version refuses them.
  // A residual can be cuBLASLt's C when nothing comes after the bias (an activation would
  // apply to it): D = product + bias + residual, rounded once instead of twice. fp8 products on
  // the tensor cores differ from the unfused graph's anyway (their sums), so this changes no
  // guarantee; it saves the add kernel's launch and its pass over y.
  const residualInC = p.residual && p.act === ACT_NONE;
  for (const rows of p.mPad === p.m ? [p.m] : [p.m, p.mPad]) {
    for (const scales of scaleModes) {
      // A padded D has more rows than the output: only the float32 scratch takes them.
      if (fusable && rows === p.m) {
        if (residualInC) candidates.push({ scales, fused: true, rows, residualInC: true });
        candidates.push({ scales, fused: true, rows, residualInC: false });
      }
      candidates.push({ scales, fused: false, rows, residualInC: false });
    }
    candidates.push({ scales: "none", fused: false, rows, residualInC: false });
  }
  for (const c of candidates) {
    const d = c.fused ? LT_TYPE[p.outDType] : CUDA_R_32F;
    const spec: LtMatmulSpec = {
      ...tnSpec(p.n, c.rows, p.k, {
        a: CUDA_R_8F_E4M3,
        d,
        compute: CUBLAS_COMPUTE_32F,
        scale: CUDA_R_32F,
      }),
      fastAccum: false,
      epilogue: c.fused ? epilogue : CUBLASLT_EPILOGUE_DEFAULT,
    };
    // C is the residual, wherever the caller's tensor starts (checked per run).
    if (c.residualInC) spec.alignment = { c: RESIDUAL_VECTOR_BYTES };
    if (c.scales !== "none") {
      const mode = c.scales === "outer"
        ? CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F
        : CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
      spec.aScaleMode = spec.bScaleMode = mode;
    }
    const plan = tryLtPlan(device, spec);
    if (plan && trialRun(device, plan, p, c)) return { plan, ...c };
  }
  return undefined;
}

/**
 * Runs a candidate fp8 plan once on scratch buffers with bias and scale pointers set as the
 * real runs will set them: some combinations are refused only by the call itself.
 */
function trialRun(
  device: CudaDevice,
  plan: LtMatmulPlan,
  p: { n: number; k: number; outDType: FloatDType; biasDType: DType | undefined },
  c: Omit<Fp8Choice, "plan">,
): boolean {
  const a = CudaBuffer.allocate(device, "float8e4m3", p.n * p.k);
  const b = CudaBuffer.allocate(device, "float8e4m3", c.rows * p.k);
  const d = CudaBuffer.allocate(device, c.fused ? p.outDType : "float32", c.rows * p.n);
  const aux = CudaBuffer.allocate(device, "float32", Math.max(p.n, c.rows, 1));
  // A residual C: a buffer of its own, as the real runs' residual is.
  const cBuffer = c.residualInC ? CudaBuffer.allocate(device, p.outDType, c.rows * p.n) : undefined;
  return ltTrialRuns(cBuffer ? [a, b, d, aux, cBuffer] : [a, b, d, aux], () => {
    memsetZero(device, a.address, a.bytes);
    memsetZero(device, b.address, b.bytes);
    memsetZero(device, aux.address, aux.bytes);
    // As the real runs: cuBLASLt gets the bias only when its epilogue adds it.
    const bias = c.fused && p.biasDType !== undefined ? aux.address : undefined;
    const pointers = c.scales === "none"
      ? { bias }
      : { aScale: aux.address, bScale: aux.address, bias };
    if (cBuffer) memsetZero(device, cBuffer.address, cBuffer.bytes);
    plan.run(
      a.address,
      b.address,
      cBuffer?.address ?? d.address,
      d.address,
      1,
      cBuffer ? 1 : 0,
      pointers,
    );
  });
}

// ---------------------------------------------------------------------------------------
// wlinear

/** Dynamic shared memory a kernel may use without opting in. */
const SHARED_NO_OPT_IN = 48 * 1024;

/** Launch shape of the tensor-core GEMV (float16 / bfloat16 x) for one problem. */
export interface GemvMmaShape {
  /** Rows of x the kernel is compiled for: 8 (M ≤ 8) or 16. */
  rowsCompiled: number;
  /** Warps of a block; they split K for the block's 16 output channels. */
  warps: number;
  /** Blocks: one per 16 output channels. */
  blocks: number;
  /** Dynamic shared memory bytes (the warps' partial sums). */
  sharedBytes: number;
}

/**
 * The tensor-core GEMV launch shape for `m` rows, `n` outputs, `k` inputs, `elems` codes per
 * 16-byte chunk, on `sms` multiprocessors: one block per 16 output channels, with as many
 * warps splitting K as keep every block resident at once (a single wave, so no SM idles at the
 * end) while each warp still reads at least two 64-byte pieces of each of its rows.
 */
export function gemvMmaShape(
  m: number,
  n: number,
  k: number,
  elems: number,
  sms: number,
): GemvMmaShape {
  const rowsCompiled = m <= 8 ? 8 : 16;
  const blocks = Math.ceil(n / 16);
  const quads = Math.ceil(k / elems / 4);
  const resident = sms * GEMV_MMA_WARPS_PER_SM;
  let warps = 1;
  while (
    warps < GEMV_MMA_MAX_WARPS && blocks * warps * 2 <= resident && quads >= warps * 4
  ) warps *= 2;
  return { rowsCompiled, warps, blocks, sharedBytes: warps * rowsCompiled * 16 * 4 };
}

/**
 * A wlinear whose x is the input of a folded layer norm over its last dim (inputs `[x, W, swq,
 * swd, bias?, lnWeight?, lnBias?]`): the streaming GEMV's `_norm` kernel normalizes x itself
 * where it takes the problem (with the layer-norm kernel's arithmetic: the same result as the
 * unfolded graph); otherwise the layer-norm kernel writes the normalized x to scratch memory for
 * the plain wlinear.
 */
function lowerNormWlinear(ctx: CudaKernelContext): CudaLaunch {
  if (numel(ctx.out.shape) === 0) return NO_LAUNCH;
  const gemv = wlinearGemv(ctx);
  if (gemv) return (y, inputs) => gemv(y, inputs);
  return normThenProduct(foldedNormOf(ctx, "wlinear", ctx.attrs.hasBias ? 5 : 4), lowerWlinear);
}

function lowerWlinear(ctx: CudaKernelContext): CudaLaunch {
  if (ctx.attrs.residual === true) {
    const gemv = residualFits(ctx) ? wlinearGemv(withoutResidual(ctx)) : undefined;
    if (gemv) return (y, inputs) => gemv(y, inputs, inputs[inputs.length - 1]);
    return productThenResidual(ctx, lowerWlinear);
  }
  if (ctx.attrs.norm !== undefined) return lowerNormWlinear(ctx);
  const { device, attrs } = ctx;
  const [xInfo, wInfo, , swdInfo, biasInfo] = ctx.inputs;
  const [n, k] = wInfo.shape;
  const total = numel(ctx.out.shape);
  if (total === 0) return NO_LAUNCH;
  const m = total / n;
  const qdtype = attrs.qdtype as DType;
  if (!(qdtype in QUANT_NAME)) {
    throw new TensorqError("wlinear needs int8, int4 or float8e4m3 codes", {
      op: "wlinear",
      kind: "unsupported",
      argument: "qdtype",
      actual: String(qdtype),
    });
  }
  const ops = new LinearLaunches(ctx, m, n);
  checkInt32("wlinear", "K", k);
  const xDType = floatDType("wlinear", "x", xInfo.dtype);
  const x = FLOAT_NAME[xDType];
  const swdKind = FLOAT_KIND[floatDType("wlinear", "weight scale", swdInfo.dtype)];
  const prep = new WeightPrep(ctx, 1, n, k);
  const hasBias = biasInfo !== undefined;

  if (k === 0) {
    // Empty sums: y = act(b).
    const epilogue = fn(device, `qlinear_epilogue_f32_${FLOAT_NAME[ops.outDType]}`);
    return (y, inputs) => {
      const acc = CudaBuffer.allocate(device, "float32", m * n);
      memsetZero(device, acc.address, acc.bytes);
      ops.epilogue(epilogue, y, acc.address, undefined, false, inputs[4]);
      acc.dispose();
    };
  }

  // The GEMVs need rows on 16-byte boundaries and one scale per 16-byte chunk of a row.
  const elems = qdtype === "int4" ? 32 : 16;
  const index = weightScaleIndex(attrs, k);
  // A few rows: the streaming GEMV (kernels/wgemv.cu) reads the codes at memory speed.
  const streaming = wlinearGemv(ctx);
  if (streaming) return (y, inputs) => streaming(y, inputs);
  const chunkUniform = index.nb === 1 && (index.sK === 0 || index.kb % elems === 0);
  if (m <= GEMV_MAX_ROWS && k % elems === 0 && chunkUniform && xDType !== "float32") {
    const shape = gemvMmaShape(m, n, k, elems, device.smCount);
    const kernel = fn(
      device,
      `wlinear_gemv_mma_${QUANT_NAME[qdtype]}_${x}_m${shape.rowsCompiled}`,
    );
    const grid: Dim3 = [shape.blocks, 1, 1];
    const block: Dim3 = [32 * shape.warps, 1, 1];
    return (y, [xb, w, swq, swd, bias]) => {
      const wq = prep.codes(w, swq, qdtype);
      const p = ops.params.reset().ptr(y.address).ptr(xb.address).ptr(wq.buffer.address)
        .ptr(swd.address).i32(swdKind).ptr(bias?.address ?? 0n).i32(ops.act)
        .i32(m).i32(n).i32(k).i64(index.sN).i32(index.kb).i32(index.sK);
      launch(device, kernel, grid, block, p, shape.sharedBytes);
      if (wq.temporary) wq.buffer.dispose();
    };
  }
  if (m <= GEMV_MAX_ROWS && k % elems === 0 && chunkUniform) {
    const shape = gemvShape(m, n, k, elems, device.smCount);
    const kernel = fn(device, `wlinear_gemv_${QUANT_NAME[qdtype]}_${x}_m${shape.rowsCompiled}`);
    allowSharedBytes(kernel, shape.sharedBytes, SHARED_NO_OPT_IN);
    const grid: Dim3 = [shape.blocks, 1, 1];
    return (y, [xb, w, swq, swd, bias]) => {
      const wq = prep.codes(w, swq, qdtype);
      const p = ops.params.reset().ptr(y.address).ptr(xb.address).ptr(wq.buffer.address)
        .ptr(swd.address).i32(swdKind).ptr(bias?.address ?? 0n).i32(ops.act)
        .i32(m).i32(n).i32(k).i64(index.sN).i32(index.kb).i32(index.sK)
        .i32(shape.tileK).i32(shape.splitK);
      launch(device, kernel, grid, [GEMV_WARPS * 32, 1, 1], p, shape.sharedBytes);
      if (wq.temporary) wq.buffer.dispose();
    };
  }

  // cuBLASLt on the cached dequantized weight (float32 without TF32, or x's 16-bit type).
  const xType = LT_TYPE[xDType];
  let plan: LtMatmulPlan | undefined;
  let fused = false;
  // Bias and activation in cuBLASLt's epilogue where it computes them as the reference does.
  const ltEpilogue = ops.outDType === xDType ? ltEpilogueFor(hasBias, ops.act, xDType) : undefined;
  if (ltEpilogue !== undefined) {
    plan = tryLtPlan(device, {
      ...tnSpec(n, m, k, { a: xType, d: xType, compute: CUBLAS_COMPUTE_32F, scale: CUDA_R_32F }),
      epilogue: ltEpilogue,
    });
    fused = plan !== undefined;
  }
  plan ??= ltMatmulPlan(
    device,
    tnSpec(n, m, k, { a: xType, d: CUDA_R_32F, compute: CUBLAS_COMPUTE_32F, scale: CUDA_R_32F }),
  );
  const product = plan;
  const epilogue = fn(device, `qlinear_epilogue_f32_${FLOAT_NAME[ops.outDType]}`);
  return (y, [xb, w, swq, swd, bias]) => {
    const dq = prep.dequantized(w, swq, swd, swdKind, qdtype, xDType);
    if (fused) {
      product.run(dq.buffer.address, xb.address, y.address, y.address, 1, 0, {
        bias: bias?.address,
      });
    } else {
      // float32 products, scaled in place when the output is float32.
      const acc = ops.outDType === "float32"
        ? undefined
        : CudaBuffer.allocate(device, "float32", m * n);
      const d = acc?.address ?? y.address;
      product.run(dq.buffer.address, xb.address, d, d);
      ops.epilogue(epilogue, y, d, undefined, false, bias);
      acc?.dispose();
    }
    if (dq.temporary) dq.buffer.dispose();
  };
}

// ---------------------------------------------------------------------------------------
// Residual adds folded into qlinear / wlinear (lib/graph/passes/residual_fusion.ts)

/**
 * A fused linear op's GEMV launch: the op's inputs (its own, then a folded norm's), and the
 * residual the kernel adds in its epilogue, if any.
 */
type GemvLaunch = (y: CudaBuffer, inputs: CudaBuffer[], residual?: CudaBuffer) => void;

/**
 * A qlinear (residual taken off) on the fused GEMV, which quantizes x itself (normalizing it
 * first when a layer norm is folded): at most {@link QGEMV_MAX_ROWS} rows and K > 0, or
 * undefined.
 */
function qlinearGemv(ctx: CudaKernelContext): GemvLaunch | undefined {
  const { attrs } = ctx;
  const [n, k] = ctx.inputs[3].shape;
  const total = numel(ctx.out.shape);
  const m = total / n;
  if (total === 0 || k === 0 || m > QGEMV_MAX_ROWS) return undefined;
  const folded = attrs.norm !== undefined
    ? foldedNormOf(ctx, "qlinear", attrs.hasBias ? 7 : 6)
    : undefined;
  if (folded && !folded.sameDType) return undefined;
  const qdtype = attrs.qdtype as DType;
  const plain = folded?.inner ?? ctx;
  const gemv = fusedQuantizedGemv(
    plain,
    m,
    n,
    k,
    qdtype,
    attrs.weightMode === "channel",
    activationCode("qlinear", String(attrs.activation ?? "none")),
    floatDType("qlinear", "output", ctx.out.dtype),
    folded && { eps: folded.norm.eps },
  );
  if (!gemv) return undefined;
  const prep = new WeightPrep(plain, 3, n, k);
  return (y, inputs, residual) => {
    const [x, sxq, sxd, w, swq, swd] = inputs;
    const wq = prep.codes(w, swq, qdtype);
    const bias = attrs.hasBias ? inputs[6] : undefined;
    gemv(
      y,
      x,
      sxq,
      sxd,
      wq.buffer,
      swd,
      bias,
      folded?.weightOf(inputs),
      folded?.biasOf(inputs),
      residual,
    );
    if (wq.temporary) wq.buffer.dispose();
  };
}

/**
 * A wlinear (residual taken off) on the streaming GEMV (normalizing x itself when a layer norm
 * is folded), where it takes the problem; undefined otherwise.
 */
function wlinearGemv(ctx: CudaKernelContext): GemvLaunch | undefined {
  const { attrs } = ctx;
  const [n, k] = ctx.inputs[1].shape;
  const total = numel(ctx.out.shape);
  const qdtype = attrs.qdtype as DType;
  if (total === 0 || k === 0 || !(qdtype in QUANT_NAME)) return undefined;
  const folded = attrs.norm !== undefined
    ? foldedNormOf(ctx, "wlinear", attrs.hasBias ? 5 : 4)
    : undefined;
  if (folded && !folded.sameDType) return undefined;
  const plain = folded?.inner ?? ctx;
  const index = weightScaleIndex(attrs, k);
  const gemv = streamingGemv(
    plain,
    total / n,
    n,
    k,
    qdtype,
    index,
    folded && { eps: folded.norm.eps },
  );
  if (!gemv) return undefined;
  const prep = new WeightPrep(plain, 1, n, k);
  return (y, inputs, residual) => {
    const [x, w, swq, swd] = inputs;
    const wq = prep.codes(w, swq, qdtype);
    const bias = attrs.hasBias ? inputs[4] : undefined;
    gemv(y, x, wq.buffer, swd, bias, folded?.weightOf(inputs), folded?.biasOf(inputs), residual);
    if (wq.temporary) wq.buffer.dispose();
  };
}

registerCudaKernel("qlinear", (ctx) => lowerQlinear(ctx));
registerCudaKernel("wlinear", lowerWlinear);
