/**
 * Reductions: sum, mean, max, min, argmax, argmin, variance along axes with keepdims.
 * Rules here; CPU kernels in lib/backends/cpu/reduce.ts.
 *
 * Every reduction records attrs `{axes, keepdims}` (`axes`: the sorted, non-negative axes
 * reduced; empty for a rank-0 input); `var` adds `correction`. argmax/argmin with no axis
 * reduce over every axis and return the flat (row-major) index.
 *
 * Dtypes: `sum` keeps float32, float16 and bfloat16, sums int8 and int32 to int32 and int64
 * to int64 (integer sums wrap on overflow); `max`, `min`, `argmax`, `argmin` accept those six
 * (float32, float16, bfloat16, int8, int32, int64); `mean` and `var` accept the three floats
 * only. The storage dtypes int4, float8e4m3 and bool are refused: cast them first. NaN
 * propagates through every float reduction; argmax and argmin return the first NaN's index, as
 * NumPy does.
 *
 * Empty reductions: `sum` gives 0, `mean` and `var` give NaN; `max`, `min`, `argmax` and
 * `argmin` have no identity, so reducing over an axis of extent 0 is a shape error.
 * @module
 */
import type { DType } from "../dtype.ts";
import { fmtShape, TensorqError } from "../errors.ts";
import { normalizeAxes, normalizeAxis, type Shape } from "../shape.ts";
import type { Tensor } from "../tensor.ts";
import { checkDTypeIn, checkTensor, FLOAT_DTYPES, makeOp, NUMERIC_DTYPES } from "./op.ts";

/** The outcome of checking a reduction's arguments. */
interface ReductionPlan {
  axes: number[];
  shape: number[];
  /** Number of elements reduced into each output element. */
  count: number;
}

function checkKeepdims(op: string, keepdims: unknown): boolean {
  if (typeof keepdims !== "boolean") {
    throw new TensorqError("keepdims must be a boolean", {
      op,
      kind: "argument",
      argument: "keepdims",
      expected: "true or false",
      actual: String(keepdims),
    });
  }
  return keepdims;
}

function planReduction(
  op: string,
  x: Tensor,
  axis: number | readonly number[] | undefined,
  keepdims: boolean,
): ReductionPlan {
  const shape: Shape = x.node.shape;
  // A rank-0 tensor accepts axis 0 / -1 (NumPy does); there is no dimension to remove.
  const axes = shape.length === 0
    ? (normalizeAxes(op, axis, 0), [])
    : normalizeAxes(op, axis, shape.length);
  const out: number[] = [];
  let count = 1;
  for (let d = 0; d < shape.length; d++) {
    if (axes.includes(d)) {
      count *= shape[d];
      if (keepdims) out.push(1);
    } else out.push(shape[d]);
  }
  return { axes, shape: out, count };
}

function checkNonEmpty(op: string, x: Tensor, plan: ReductionPlan): void {
  if (plan.count !== 0) return;
  throw new TensorqError(`cannot reduce over an empty axis: ${op} has no identity`, {
    op,
    kind: "shape",
    argument: "x",
    expected: "a non-zero extent along every reduced axis",
    actual: `shape ${fmtShape(x.node.shape)} reduced over axes [${plan.axes.join(", ")}]`,
  });
}

function reduction(
  op: string,
  x: Tensor,
  axis: number | readonly number[] | undefined,
  keepdims: boolean,
  allowed: readonly DType[],
  outDType: (d: DType) => DType = (d) => d,
): Tensor {
  checkTensor(op, "x", x);
  checkDTypeIn(op, "x", x, allowed);
  const keep = checkKeepdims(op, keepdims);
  const plan = planReduction(op, x, axis, keep);
  if (op === "max" || op === "min") checkNonEmpty(op, x, plan);
  return makeOp(op, [x], { axes: plan.axes, keepdims: keep }, plan.shape, outDType(x.dtype));
}

/** The dtype `sum` returns for an input dtype (see the module doc). */
export function sumDType(dtype: DType): DType {
  return dtype === "int8" || dtype === "int32" ? "int32" : dtype;
}

/**
 * Sum over `axis` (all axes when undefined). Float dtypes are kept; int8 and int32 sum to
 * int32 and int64 to int64, wrapping on overflow. An empty reduction gives 0.
 */
export function sum(x: Tensor, axis?: number | readonly number[], keepdims = false): Tensor {
  return reduction("sum", x, axis, keepdims, NUMERIC_DTYPES, sumDType);
}
/** Mean over `axis` (floats only); an empty reduction gives NaN. */
export function mean(x: Tensor, axis?: number | readonly number[], keepdims = false): Tensor {
  return reduction("mean", x, axis, keepdims, FLOAT_DTYPES);
}
/** Maximum over `axis`; NaN propagates; reducing over an axis of extent 0 is an error. */
export function max(x: Tensor, axis?: number | readonly number[], keepdims = false): Tensor {
  return reduction("max", x, axis, keepdims, NUMERIC_DTYPES);
}
/** Minimum over `axis`; NaN propagates; reducing over an axis of extent 0 is an error. */
export function min(x: Tensor, axis?: number | readonly number[], keepdims = false): Tensor {
  return reduction("min", x, axis, keepdims, NUMERIC_DTYPES);
}

function argReduction(op: string, x: Tensor, axis: number | undefined, keepdims: boolean): Tensor {
  checkTensor(op, "x", x);
  checkDTypeIn(op, "x", x, NUMERIC_DTYPES);
  const keep = checkKeepdims(op, keepdims);
  if (axis !== undefined) normalizeAxis(op, axis, x.rank);
  const plan = planReduction(op, x, axis, keep);
  checkNonEmpty(op, x, plan);
  return makeOp(op, [x], { axes: plan.axes, keepdims: keep }, plan.shape, "int32");
}

/**
 * Index (int32) of the first maximum along `axis`, or in the flattened tensor when `axis` is
 * undefined. A NaN counts as the maximum (the first NaN wins), as in NumPy.
 */
export function argmax(x: Tensor, axis?: number, keepdims = false): Tensor {
  return argReduction("argmax", x, axis, keepdims);
}
/**
 * Index (int32) of the first minimum along `axis`, or in the flattened tensor when `axis` is
 * undefined. A NaN counts as the minimum (the first NaN wins), as in NumPy.
 */
export function argmin(x: Tensor, axis?: number, keepdims = false): Tensor {
  return argReduction("argmin", x, axis, keepdims);
}
/**
 * Variance over `axis` (floats only): Σ(x − mean)² / (N − correction), op name `var`.
 * `correction` 0 is the population variance, 1 the sample variance. When N − correction ≤ 0
 * (including an empty reduction) the result is NaN.
 */
export function variance(
  x: Tensor,
  axis?: number | readonly number[],
  keepdims = false,
  correction = 0,
): Tensor {
  const op = "var";
  checkTensor(op, "x", x);
  checkDTypeIn(op, "x", x, FLOAT_DTYPES);
  if (typeof correction !== "number" || !Number.isFinite(correction)) {
    throw new TensorqError("correction must be a finite number", {
      op,
      kind: "argument",
      argument: "correction",
      expected: "a finite number (0: population, 1: sample variance)",
      actual: String(correction),
    });
  }
  const keep = checkKeepdims(op, keepdims);
  const plan = planReduction(op, x, axis, keep);
  return makeOp(op, [x], { axes: plan.axes, keepdims: keep, correction }, plan.shape, x.dtype);
}
