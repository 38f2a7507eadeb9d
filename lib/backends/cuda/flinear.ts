/**
 * CUDA lowering of `linear`, the float Linear layer the fusion pass makes
 * (lib/graph/passes/qdq_fusion.ts; CPU reference in lib/backends/cpu/linear.ts; kernels in
 * kernels/flinear.cu): `y = act(x · Wᵀ + b)` with x `[..., K]`, W `[N, K]`, y `[..., N]` of one
 * float dtype, `M = numel(y) / N`. Products accumulate in float32 (no TF32) and the result is
 * rounded once to the dtype, except where said below.
 *
 * - M ≤ 16 (decode-sized): one GEMV kernel streams W with 16-byte loads (any N, K; rows that
 *   are not on 16-byte boundaries are gathered element by element) and applies bias and
 *   activation: one launch, no scratch memory, small grids for small layers.
 * - M > 16: cuBLASLt in the "TN" form (A = W as `K × N`, op T; B = x as `K × M`; D = y as
 *   `N × M`, which is y row-major), with bias and activation in cuBLASLt's epilogue where it
 *   computes them as the reference does: none and relu always, the tanh GELU (cuBLASLt's GELU)
 *   for float16 / bfloat16 outputs only, as its approximation error is below their rounding.
 *   Unlike ours, cuBLASLt's GELU gives NaN (as PyTorch's does), not -0, for a -∞ product, which
 *   needs an infinite input; avoiding it would cost a pass over the output.
 *   Rows that are not whole 16-byte vectors (an odd N) are written by classes of rows that share
 *   their alignment ({@link rowClassProducts}), straight into y.
 *   Each fused configuration is tried once with a real call on scratch buffers, bias pointer
 *   included; when refused, or for exact (erf) GELU, the plain product is followed by an
 *   epilogue kernel: float32 outputs get the product in y and the epilogue in place (the bias
 *   add and activation then round separately, as the unfused graph does), 16-bit outputs get
 *   float32 products in a scratch buffer and one rounding.
 *
 * With a layer norm folded in (attr `norm`, lib/graph/passes/qdq_fusion.ts; x is the norm's
 * input, its weight and bias follow the op's own inputs): the GEMV's `_norm` kernels normalize x
 * while staging it, with the float32 operations of the layer-norm kernel the unfolded graph
 * runs, in its order, so the result equals the unfolded graph's bit for bit (one launch in place
 * of two); problems they do not take (more rows, K not a multiple of 16 bytes, a norm weight of
 * another dtype, more blocks than the GPU holds at once) run that layer-norm kernel into scratch
 * memory first ({@link normThenProduct}).
 *
 * With a residual folded in (attr `residual`, lib/graph/passes/residual_fusion.ts; the last
 * input, of the output's shape and dtype): the GEMV kernel adds it in its epilogue (one launch,
 * `y = round(round(act(x · Wᵀ + b)) + residual)`, the unfused graph's add); every other path
 * runs the product into y and then the `add` op's kernel in place ({@link productThenResidual},
 * which the quantized linear ops use too).
 *
 * Everything is enqueued on the device's stream with no host synchronization, so runs can be
 * recorded into CUDA graphs; the only per-run allocation (16-bit fallback scratch) is freed
 * within the run.
 * @module
 */
import {
  CUBLAS_COMPUTE_32F,
  CUBLASLT_EPILOGUE_DEFAULT,
  CUDA_R_32F,
} from "../../../ffi/cublaslt.ts";
import { ptx as flinearPtx } from "../../../kernels/ptx/flinear.ts";
import { TensorqError } from "../../errors.ts";
import { numel } from "../../shape.ts";
import {
  type LtMatmulPlan,
  ltMatmulPlan,
  type LtMatmulSpec,
  ltOperandElements,
} from "./cublaslt.ts";
import type { CudaDevice } from "./device.ts";
import {
  BLOCK,
  type CudaKernelContext,
  type CudaLaunch,
  cudaLowering,
  type Dim3,
  grid1d,
  KernelParams,
  launch,
  registerCudaKernel,
} from "./kernels.ts";
import { CudaBuffer } from "./memory.ts";
import { layerNormThreads } from "./nn.ts";
import { type Copy, planStridedCopy } from "./shape.ts";
import {
  ACTIVATION,
  activationCode,
  allowSharedBytes,
  checkInt32,
  FLOAT_NAME,
  type FloatDType,
  floatDType,
  GEMV_WARPS,
  gemvShape,
  LT_TYPE,
  ltEpilogueFor,
  ltPlanProber,
  ltTrialRuns,
  memsetZero,
  moduleKernels,
  NO_LAUNCH,
  roundUp,
  tnSpec,
} from "./util.ts";

const fn = moduleKernels(flinearPtx);

/** Rows up to which the GEMV kernel runs. */
export const FLINEAR_GEMV_MAX_ROWS = 16;

/** Blocks of the GEMV an SM holds at least (`GEMV_MIN_BLOCKS` in kernels/gemv.cuh). */
function gemvMinBlocks(rows: number): number {
  return rows <= 4 ? 4 : 2;
}

/**
 * For a linear of `m` rows, `[n, k]` weights and `dtype` with a folded layer norm: the threads
 * the layer-norm kernel gives a row (what its `_norm` GEMV needs to sum in that kernel's order)
 * when that GEMV takes the problem, else undefined. It takes the GEMV's rows, K a whole number of
 * 16-byte vectors (the layer-norm kernel's vector variant), and grids that are resident at once:
 * each block computes the statistics first, so a second wave of blocks would wait for them
 * again (a wide product, say a 50257-word vocabulary, does better with the layer-norm kernel).
 */
export function flinearNormThreads(
  m: number,
  n: number,
  k: number,
  dtype: FloatDType,
  smCount: number,
): number | undefined {
  const elems = dtype === "float32" ? 4 : 8;
  if (m < 1 || m > FLINEAR_GEMV_MAX_ROWS || k < 1 || n < 1 || k % elems !== 0) return undefined;
  if (gemvShape(m, n, k, elems, smCount).blocks > smCount * gemvMinBlocks(m)) return undefined;
  return layerNormThreads(m, k, 16 / elems, smCount);
}

let normLaunches = 0;

/**
 * Number of `_norm` GEMV launches enqueued so far (to tell whether a linear with a folded layer
 * norm normalized x in the GEMV or ran the layer norm kernel first).
 */
export function flinearNormLaunchCount(): number {
  return normLaunches;
}

/** Dynamic shared memory that needs no opt-in: the 48 KiB default counts static shared memory
 * (the kernel's split-K partial sums) too, so stay well below it. */
const SHARED_NO_OPT_IN = 32 * 1024;

// ---------------------------------------------------------------------------------------
// cuBLASLt

/** The "TN" product (float32 accumulation) of `[rows, k]` x with `[n, k]` W of type `ab`. */
function floatTnSpec(n: number, rows: number, k: number, ab: number, d: number): LtMatmulSpec {
  return tnSpec(n, rows, k, { a: ab, d, compute: CUBLAS_COMPUTE_32F, scale: CUDA_R_32F });
}

/** cuBLASLt's epilogue for a bias and `activation` on `dtype` outputs (see ltEpilogueFor). */
export function flinearLtEpilogue(
  hasBias: boolean,
  activation: string,
  dtype: string,
): number | undefined {
  const act = ACTIVATION[activation];
  return act === undefined ? undefined : ltEpilogueFor(hasBias, act, dtype);
}

/** Outcomes of fused-configuration trials, by plan key. */
const trials = new Map<string, boolean>();
const tryLtPlan = ltPlanProber();

/**
 * Prepares a fused cuBLASLt product and runs it once on scratch buffers with a bias pointer
 * when the epilogue reads one (some combinations are refused only by the call itself).
 * Returns undefined when cuBLASLt has no algorithm for it or the call fails; both outcomes
 * are remembered.
 */
function tryFusedPlan(
  device: CudaDevice,
  spec: LtMatmulSpec,
  dtype: FloatDType,
  hasBias: boolean,
): LtMatmulPlan | undefined {
  const specKey = `${device.index}:${JSON.stringify(spec)}`;
  if (trials.get(specKey) === false) return undefined;
  const plan = tryLtPlan(device, spec);
  if (!plan) return undefined;
  // Autotuning already ran the plain product; epilogues are what a call may still refuse.
  if (spec.epilogue === undefined || spec.epilogue === CUBLASLT_EPILOGUE_DEFAULT) return plan;
  if (!trials.has(specKey)) trials.set(specKey, trialRun(device, plan, spec, dtype, hasBias));
  return trials.get(specKey) ? plan : undefined;
}

function trialRun(
  device: CudaDevice,
  plan: LtMatmulPlan,
  spec: LtMatmulSpec,
  dtype: FloatDType,
  hasBias: boolean,
): boolean {
  const spans = ltOperandElements(spec);
  const a = CudaBuffer.allocate(device, dtype, spans.a);
  const b = CudaBuffer.allocate(device, dtype, spans.b);
  const d = CudaBuffer.allocate(device, dtype, spans.d);
  const bias = CudaBuffer.allocate(device, dtype, Math.max(spec.m, 1));
  return ltTrialRuns([a, b, d, bias], () => {
    for (const t of [a, b, bias]) memsetZero(device, t.address, t.bytes);
    plan.run(a.address, b.address, d.address, d.address, 1, 0, {
      bias: hasBias ? bias.address : undefined,
    });
  });
}

// ---------------------------------------------------------------------------------------
// Residual adds folded into the fused linear ops (lib/graph/passes/residual_fusion.ts)

/**
 * The context of a fused linear op (`linear`, `qlinear`, `wlinear`) with attr `residual`, less
 * the residual: its last input dropped, so that the op's lowering makes the product alone.
 */
export function withoutResidual(ctx: CudaKernelContext): CudaKernelContext {
  return {
    ...ctx,
    attrs: { ...ctx.attrs, residual: undefined },
    inputs: ctx.inputs.slice(0, -1),
    overwritable: ctx.overwritable?.slice(0, -1),
  };
}

/**
 * True when a fused linear op's residual (its last input) is `[M, N]` in the output's dtype,
 * what the GEMV kernels add in their epilogue; otherwise the product and an add kernel serve.
 */
export function residualFits(ctx: CudaKernelContext): boolean {
  const residual = ctx.inputs[ctx.inputs.length - 1];
  return numel(residual.shape) === numel(ctx.out.shape) && residual.dtype === ctx.out.dtype;
}

/**
 * A fused linear op with attr `residual` whose product kernels do not take the residual: `lower`
 * runs the product (the op without it, {@link withoutResidual}) into y, then the `add` op's own
 * kernel updates y in place, `y = add(y, residual)`, the unfused graph's add bit for bit (one
 * launch more). In place is safe: the add kernels read each element of y once, in the thread
 * that then writes it.
 */
export function productThenResidual(
  ctx: CudaKernelContext,
  lower: (ctx: CudaKernelContext) => CudaLaunch,
): CudaLaunch {
  const product = lower(withoutResidual(ctx));
  const add = residualAdd(ctx);
  return (y, inputs) => {
    product(y, inputs.slice(0, -1));
    add(y, inputs[inputs.length - 1]);
  };
}

/**
 * The `add` op's kernel for a fused linear op's residual (its last input), updating the op's
 * output in place: `y = add(y, residual)`, the unfused graph's add bit for bit.
 */
export function residualAdd(
  ctx: CudaKernelContext,
): (y: CudaBuffer, residual: CudaBuffer) => void {
  const residual = ctx.inputs[ctx.inputs.length - 1];
  const add = cudaLowering("add")({
    attrs: {},
    out: ctx.out,
    inputs: [ctx.out, residual],
    device: ctx.device,
  });
  if (typeof add !== "function") {
    throw new TensorqError("the residual add has no kernel of its own", {
      op: "linear",
      kind: "state",
    });
  }
  return (y, r) => add(y, [y, r]);
}

// ---------------------------------------------------------------------------------------
// Layer norms folded into the fused linear ops (lib/graph/passes/qdq_fusion.ts, attr `norm`)

/** A folded layer norm's attrs. */
interface FoldedNorm {
  eps: number;
  hasWeight: boolean;
  hasBias: boolean;
}

/**
 * The parts of a fused linear op (`op`: `linear`, `qlinear`, `wlinear`) with a folded layer
 * norm whose own inputs are the first `own`: the norm's weight and bias follow them, where it
 * has them, and a folded residual (attr `residual`) comes last.
 */
export function foldedNormOf(
  ctx: CudaKernelContext,
  op: "linear" | "qlinear" | "wlinear",
  own: number,
) {
  const norm = ctx.attrs.norm as unknown as FoldedNorm;
  const xInfo = ctx.inputs[0];
  const end = ctx.inputs.length - (ctx.attrs.residual === true ? 1 : 0);
  const normInputs = ctx.inputs.slice(own, end);
  return {
    norm,
    /** The op without its norm: x is the normalized x, the inputs its own (and the residual). */
    inner: {
      ...ctx,
      attrs: { ...ctx.attrs, norm: undefined },
      inputs: [...ctx.inputs.slice(0, own), ...ctx.inputs.slice(end)],
    } as CudaKernelContext,
    /** Launch inputs of `inner`: x replaced by the normalized values. */
    innerInputs: (normalized: CudaBuffer, inputs: readonly CudaBuffer[]): CudaBuffer[] => [
      normalized,
      ...inputs.slice(1, own),
      ...inputs.slice(end),
    ],
    /** The norm's weight and bias have x's dtype (what the fused kernels take). */
    sameDType: normInputs.every((i) => i.dtype === xInfo.dtype),
    weightOf: (inputs: readonly CudaBuffer[]) => norm.hasWeight ? inputs[own] : undefined,
    biasOf: (inputs: readonly CudaBuffer[]) =>
      norm.hasBias ? inputs[own + (norm.hasWeight ? 1 : 0)] : undefined,
    /** The layer-norm op's own lowering (launch inputs: x, then the norm's). */
    layerNorm(): (out: CudaBuffer, inputs: CudaBuffer[]) => void {
      const launch = cudaLowering("layerNorm")({
        ...ctx,
        attrs: { dims: 1, eps: norm.eps, hasWeight: norm.hasWeight, hasBias: norm.hasBias },
        out: { shape: xInfo.shape, dtype: xInfo.dtype },
        inputs: [xInfo, ...normInputs],
      });
      if (typeof launch !== "function") {
        throw new TensorqError("the folded layer norm has no kernel of its own", {
          op,
          kind: "state",
        });
      }
      return launch;
    },
    /** Launch inputs of `layerNorm`. */
    normInputsOf: (inputs: readonly CudaBuffer[]): CudaBuffer[] => [
      inputs[0],
      ...inputs.slice(own, end),
    ],
  };
}

/** What {@link foldedNormOf} tells of a fused linear op with a folded layer norm. */
export type FoldedNormParts = ReturnType<typeof foldedNormOf>;

/**
 * A fused linear op with a folded norm (`folded`, {@link foldedNormOf}) that its product kernels
 * do not normalize themselves: the layer-norm kernel writes x normalized to scratch memory, then
 * `lower`'s launch of the op without the norm reads it (the unfolded graph's two launches).
 */
export function normThenProduct(
  folded: FoldedNormParts,
  lower: (ctx: CudaKernelContext) => CudaLaunch,
): CudaLaunch {
  const { device, inputs: [xInfo] } = folded.inner;
  const layerNorm = folded.layerNorm();
  const product = lower(folded.inner);
  return (y, inputs) => {
    const normalized = CudaBuffer.allocate(device, xInfo.dtype, numel(xInfo.shape));
    layerNorm(normalized, folded.normInputsOf(inputs));
    product(y, folded.innerInputs(normalized, inputs));
    normalized.dispose();
  };
}

// ---------------------------------------------------------------------------------------
// The lowering

function lowerLinear(ctx: CudaKernelContext): CudaLaunch {
  const { device, attrs } = ctx;
  const residual = attrs.residual === true;
  // Inputs `[x, W, bias?, lnWeight?, lnBias?, residual?]`.
  const own = attrs.hasBias === true ? 3 : 2;
  const [xInfo, wInfo] = ctx.inputs;
  const biasInfo = own > 2 ? ctx.inputs[2] : undefined;
  const residualInfo = residual ? ctx.inputs[ctx.inputs.length - 1] : undefined;
  const folded = attrs.norm !== undefined ? foldedNormOf(ctx, "linear", own) : undefined;
  const dtype = floatDType("linear", "output", ctx.out.dtype);
  floatDType("linear", "x", xInfo.dtype);
  floatDType("linear", "W", wInfo.dtype);
  const operands = [xInfo, wInfo, biasInfo, residualInfo].filter((i) => i !== undefined);
  if (operands.some((i) => i.dtype !== dtype)) {
    throw new TensorqError("x, W, bias, residual and the output must share a dtype", {
      op: "linear",
      kind: "dtype",
      expected: dtype,
      actual: operands.map((i) => i.dtype).join(", "),
    });
  }
  const activation = String(attrs.activation ?? "none");
  const act = activationCode("linear", activation);
  const hasBias = biasInfo !== undefined;
  const [n, k] = wInfo.shape;
  const total = numel(ctx.out.shape);
  if (total === 0) return NO_LAUNCH;
  const m = total / n;
  checkInt32("linear", "M", m);
  checkInt32("linear", "N", n);
  checkInt32("linear", "K", k);
  // The GEMV adds a residual itself; every other path adds it after the product.
  const gemvRows = m <= FLINEAR_GEMV_MAX_ROWS && k > 0;
  if (residualInfo && (!gemvRows || !residualFits(ctx))) {
    return productThenResidual(ctx, lowerLinear);
  }
  const elems = dtype === "float32" ? 4 : 8;
  const lnThreads = folded?.sameDType
    ? flinearNormThreads(m, n, k, dtype, device.smCount)
    : undefined;
  if (folded && lnThreads === undefined) return normThenProduct(folded, lowerLinear);
  const name = FLOAT_NAME[dtype];
  const params = new KernelParams();

  const epilogueKernel = fn(device, `flinear_epilogue_${name}`);
  const epilogueGrid: Dim3 = grid1d(device, total, n % 4 === 0 ? 4 : 1);
  /** `y = act(acc + b)`; acc 0n: zero products. */
  const epilogue = (y: CudaBuffer, acc: bigint, bias: CudaBuffer | undefined): void => {
    const p = params.reset().ptr(y.address).ptr(acc).i64(m).i64(n).ptr(bias?.address ?? 0n)
      .i32(act);
    launch(device, epilogueKernel, epilogueGrid, [BLOCK, 1, 1], p);
  };

  if (k === 0) return (y, inputs) => epilogue(y, 0n, inputs[2]);

  if (gemvRows) {
    const shape = gemvShape(m, n, k, elems, device.smCount);
    const suffix = folded ? "_norm" : "";
    const kernel = fn(device, `flinear_gemv_${name}_m${shape.rowsCompiled}${suffix}`);
    allowSharedBytes(kernel, shape.sharedBytes, SHARED_NO_OPT_IN);
    const grid: Dim3 = [shape.blocks, 1, 1];
    const block: Dim3 = [GEMV_WARPS * 32, 1, 1];
    return (y, inputs) => {
      const [x, w] = inputs;
      const bias = biasInfo ? inputs[2] : undefined;
      const r = residual ? inputs[inputs.length - 1] : undefined;
      const p = params.reset().ptr(y.address).ptr(x.address).ptr(w.address)
        .ptr(bias?.address ?? 0n).i32(act).i32(m).i32(n).i32(k).i32(shape.tileK)
        .i32(shape.splitK).ptr(r?.address ?? 0n);
      if (folded) {
        p.ptr(folded.weightOf(inputs)?.address ?? 0n).ptr(folded.biasOf(inputs)?.address ?? 0n)
          .f32(folded.norm.eps).i32(lnThreads!);
        normLaunches++;
      }
      launch(device, kernel, grid, block, p, shape.sharedBytes);
    };
  }

  const type = LT_TYPE[dtype];
  // Rows of D that do not start on 16-byte boundaries (N odd, say a 50257-word vocabulary)
  // leave cuBLASLt only its slow alignment-1 kernels: such products run by row classes
  // ({@link rowClassProducts}), or where those do not apply (a bias, K·size not a multiple of
  // 16 bytes) go to a scratch D with padded rows, compacted into y by one strided copy. A row
  // length (cuBLASLt's m) that is not a multiple of 8 does the same, so the product is split in
  // two: the first N - N % 8 outputs (vectorized kernels) and the last N % 8 (a thin product
  // beside them).
  const rowsAligned = (dt: FloatDType) => (n * dtypeBytes(dt)) % 16 === 0;
  const ldOf = (dt: FloatDType) => rowsAligned(dt) ? n : roundUp(n, 16 / dtypeBytes(dt));
  const compaction = (dt: FloatDType) =>
    rowsAligned(dt) ? undefined : planStridedCopy(device, dt, [m, n], [ldOf(dt), 1], 0);
  /** Output columns [first, first + count) of the product, as cuBLASLt specs. */
  const parts = (dt: FloatDType): { first: number; count: number }[] => {
    const split = rowsAligned(dt) ? n : n - (n % ALIGNED_ROWS);
    if (split === 0 || split === n) return [{ first: 0, count: n }];
    return [{ first: 0, count: split }, { first: split, count: n - split }];
  };
  /** Plans of each part of the product into `dt`, or undefined when one is refused. */
  const partPlans = (dt: FloatDType, epilogue?: number): SplitPlan | undefined => {
    const plans: SplitPlan = [];
    for (const { first, count } of parts(dt)) {
      // A part's W and D start `first` rows / columns in: the kernels must not assume more
      // alignment than that leaves.
      const dAlign = byteAlignment(first * dtypeBytes(dt));
      const spec: LtMatmulSpec = {
        ...floatTnSpec(count, m, k, type, LT_TYPE[dt]),
        ldc: ldOf(dt),
        ldd: ldOf(dt),
        alignment: { a: byteAlignment(first * k * dtypeBytes(dtype)), c: dAlign, d: dAlign },
      };
      const plan = epilogue === undefined
        ? ltMatmulPlan(device, spec)
        : tryFusedPlan(device, { ...spec, epilogue }, dtype, hasBias);
      if (!plan) return undefined;
      plans.push({ plan, first });
    }
    return plans;
  };
  /** The product into `[m, n]` `dst` (through padded scratch rows when needed). */
  const runInto = (
    plans: SplitPlan,
    dt: FloatDType,
    compact: Copy | undefined,
    dst: bigint,
    x: CudaBuffer,
    w: CudaBuffer,
    bias?: CudaBuffer,
  ): void => {
    const padded = compact ? CudaBuffer.allocate(device, dt, m * ldOf(dt)) : undefined;
    const d = padded?.address ?? dst;
    for (const { plan, first } of plans) {
      const at = BigInt(first);
      const wAt = w.address + at * BigInt(k * dtypeBytes(dtype));
      const dAt = d + at * BigInt(dtypeBytes(dt));
      const b = bias && bias.address + at * BigInt(dtypeBytes(dtype));
      plan.run(wAt, x.address, dAt, dAt, 1, 0, { bias: b });
    }
    if (padded) {
      compact!(dst, padded.address);
      padded.dispose();
    }
  };

  const ltEpilogue = flinearLtEpilogue(hasBias, activation, dtype);
  if (ltEpilogue !== undefined) {
    const byClass = rowsAligned(dtype) || hasBias
      ? undefined
      : rowClassProducts(device, dtype, m, n, k, ltEpilogue);
    if (byClass) return (y, [x, w]) => byClass(y.address, x, w);
    const fused = partPlans(dtype, ltEpilogue);
    if (fused) {
      const compact = compaction(dtype);
      return (y, [x, w, bias]) => {
        runInto(fused, dtype, compact, y.address, x, w, hasBias ? bias : undefined);
      };
    }
  }

  const plan = partPlans("float32")!;
  const compact = compaction("float32");
  if (dtype === "float32") {
    // The product into y, then bias and activation in place.
    return (y, [x, w, bias]) => {
      runInto(plan, "float32", compact, y.address, x, w);
      epilogue(y, y.address, bias);
    };
  }
  // 16-bit: float32 products in scratch memory, then one rounding.
  return (y, [x, w, bias]) => {
    const acc = CudaBuffer.allocate(device, "float32", m * n);
    runInto(plan, "float32", compact, acc.address, x, w);
    epilogue(y, acc.address, bias);
    acc.dispose();
  };
}

/**
 * `y = act(x · Wᵀ)` for `[m, n]` y whose rows are not whole 16-byte vectors (N odd, say a
 * 50257-word vocabulary), written in place: undefined where it does not apply.
 *
 * Row r starts at element r·N, so rows start on 16-byte boundaries (A elements) only every P-th
 * row, P = A / gcd(N, A). The rows of class j (r mod P = j) all have aligned columns at
 * c_j = j·s, s = A − N mod A (j·s ≡ −j·N mod A). Each class is a cuBLASLt product of its
 * rows (x and y read with P times their row stride) over columns [c_j, c_j + W), W the largest
 * multiple of A with c_{P−1} + W ≤ N: D pointers and leading dimensions 16-byte aligned, the
 * vectorized kernels, straight into y. The class products' W, x and y pointers step by s·K, K
 * and N + s from one class to the next, so when the classes have equal rows (M a multiple of P)
 * they are one strided-batched product; otherwise one product each. The columns they leave out,
 * [0, c_j) and [c_j + W, N), come from two thin products of every row over the first and the last
 * E columns (E ≥ both widths, a multiple of A) into scratch memory, copied into place by the
 * `flinear_edges` kernel. This replaces a product into padded rows and a copy of all of y (for
 * GPT-2's logits, a tenth of a prefill).
 *
 * It needs x's and W's rows on 16-byte boundaries (K·size a multiple of 16), every plan accepted,
 * and no bias: the class products' bias pointers would start c_j elements in, off the 16-byte
 * alignment the padded path gives cuBLASLt's bias loads (not tried).
 */
function rowClassProducts(
  device: CudaDevice,
  dtype: FloatDType,
  m: number,
  n: number,
  k: number,
  epilogue: number,
): ((y: bigint, x: CudaBuffer, w: CudaBuffer) => void) | undefined {
  const size = dtypeBytes(dtype);
  const layout = rowClassLayout(m, n, k, size);
  if (!layout) return undefined;
  const { period, step, width, edge } = layout;
  const type = LT_TYPE[dtype];
  const spec = (rows: number, count: number): LtMatmulSpec => ({
    ...floatTnSpec(width, rows, k, type, type),
    ldb: period * k,
    ldc: period * n,
    ldd: period * n,
    alignment: { a: 16, b: 16, c: 16, d: 16 },
    epilogue,
    ...(count > 1
      ? { batch: { count, strideA: step * k, strideB: k, strideC: n + step, strideD: n + step } }
      : {}),
  });
  const rowsOf = (j: number) => Math.floor((m - 1 - j) / period) + 1;
  // Each product's plan and its first class.
  const launches: [LtMatmulPlan, number][] = [];
  if (m % period === 0) {
    const plan = tryFusedPlan(device, spec(m / period, period), dtype, false);
    if (!plan) return undefined;
    launches.push([plan, 0]);
  } else {
    for (let j = 0; j < period; j++) {
      const plan = tryFusedPlan(device, spec(rowsOf(j), 1), dtype, false);
      if (!plan) return undefined;
      launches.push([plan, j]);
    }
  }
  const edgePlan = tryFusedPlan(
    device,
    {
      ...floatTnSpec(edge, m, k, type, type),
      alignment: { a: 16, b: 16, c: 16, d: 16 },
      epilogue,
    },
    dtype,
    false,
  );
  if (!edgePlan) return undefined;
  const copy = fn(device, `flinear_edges_b${size}`);
  const copyGrid = grid1d(device, m * (n - width));
  const params = new KernelParams();
  return (y, x, w) => {
    for (const [plan, j] of launches) {
      const d = y + BigInt((j * n + j * step) * size);
      plan.run(w.address + BigInt(j * step * k * size), x.address + BigInt(j * k * size), d, d);
    }
    const scratch = CudaBuffer.allocate(device, dtype, 2 * m * edge);
    const left = scratch.address, right = left + BigInt(m * edge * size);
    edgePlan.run(w.address, x.address, left, left);
    edgePlan.run(w.address + BigInt((n - edge) * k * size), x.address, right, right);
    const p = params.reset().ptr(y).ptr(left).ptr(right).i64(m).i64(n).i64(edge).i32(period)
      .i64(step).i64(width);
    launch(device, copy, copyGrid, [BLOCK, 1, 1], p);
    scratch.dispose();
    rowClassRuns++;
  };
}

/** How {@link rowClassProducts} splits `[m, n]` outputs of `size`-byte elements. */
export interface RowClassLayout {
  /** Row classes P: rows r and r + P start at the same alignment. */
  period: number;
  /** s: class j's product starts at column j·s. */
  step: number;
  /** W: the columns each class product writes (a multiple of 16 bytes). */
  width: number;
  /** E: the columns of each thin product, over the first and the last E of every row. */
  edge: number;
}

/**
 * The row-class split of `[m, n]` outputs of `size`-byte elements with K = `k`, or undefined
 * where it does not apply: rows already aligned, x or W rows off 16 bytes, outputs too narrow
 * for a product beside the edges, or fewer rows than classes.
 */
export function rowClassLayout(
  m: number,
  n: number,
  k: number,
  size: number,
): RowClassLayout | undefined {
  const a = 16 / size;
  if ((k * size) % 16 !== 0 || n % a === 0) return undefined;
  const period = a / gcd(n, a);
  const step = a - (n % a);
  const width = Math.floor((n - (period - 1) * step) / a) * a;
  const edge = roundUp(Math.max((period - 1) * step, n - width), a);
  if (width < a || edge > n || m < period) return undefined;
  return { period, step, width, edge };
}

let rowClassRuns = 0;

/**
 * Number of products run so far by row classes (to tell whether an odd-width product wrote
 * its output in place or through padded rows and a copy).
 */
export function flinearRowClassRunCount(): number {
  return rowClassRuns;
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

/**
 * Output features cuBLASLt's vectorized kernels need N (its m, D's contiguous extent) to be a
 * multiple of: 16 bytes of float16.
 */
const ALIGNED_ROWS = 8;

/** The largest power of two (at most 256) dividing an offset of `bytes` from a pool buffer. */
function byteAlignment(bytes: number): number {
  let a = 1;
  while (a < 256 && bytes % (2 * a) === 0) a *= 2;
  return a;
}

/** A product split by output columns: each part's plan and its first column. */
type SplitPlan = { plan: LtMatmulPlan; first: number }[];

/** Bytes of one element of a float dtype. */
function dtypeBytes(dtype: FloatDType): number {
  return dtype === "float32" ? 4 : 2;
}

registerCudaKernel("linear", lowerLinear);
