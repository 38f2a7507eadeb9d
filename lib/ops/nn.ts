/**
 * Neural-network ops: softmax, log-softmax, layer norm. Each is one primitive op with its own
 * kernel. Rules here; CPU kernels in lib/backends/cpu/nn.ts.
 *
 * Attrs: `softmax` and `logSoftmax` record `{axis}` (non-negative; 0 for a rank-0 input);
 * `layerNorm` records `{dims, eps, hasWeight, hasBias}` where `dims` is the number of
 * trailing dims normalized over and the inputs are `[x, weight?, bias?]`, those absent left
 * out. All three accept float dtypes only.
 * @module
 */
import { fmtShape, TensorqError } from "../errors.ts";
import { describeValue, normalizeAxis } from "../shape.ts";
import type { Tensor } from "../tensor.ts";
import {
  checkDTypeIn,
  checkSameDevice,
  checkSameDType,
  checkTensor,
  FLOAT_DTYPES,
  makeOp,
} from "./op.ts";

function softmaxLike(op: string, x: Tensor, axis: number): Tensor {
  checkTensor(op, "x", x);
  checkDTypeIn(op, "x", x, FLOAT_DTYPES);
  const a = normalizeAxis(op, axis, x.rank);
  return makeOp(op, [x], { axis: a }, x.node.shape, x.dtype);
}

/**
 * Softmax along `axis` (last by default): `exp(x − max) / Σ exp(x − max)`, computed stably
 * in float64 and rounded once. A rank-0 input gives 1.
 */
export function softmax(x: Tensor, axis = -1): Tensor {
  return softmaxLike("softmax", x, axis);
}
/** Log-softmax along `axis` (last by default): `x − max − log Σ exp(x − max)`. */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  return softmaxLike("logSoftmax", x, axis);
}

/** The layer-norm `eps` rule (a positive finite number), for `op`'s argument `eps`. */
export function checkEps(op: string, eps: unknown): number {
  if (typeof eps !== "number" || !Number.isFinite(eps) || eps <= 0) {
    throw new TensorqError("eps must be a positive finite number", {
      op,
      kind: "argument",
      argument: "eps",
      expected: "a positive finite number",
      actual: describeValue(eps),
    });
  }
  return eps;
}

/**
 * Layer normalization over the trailing dims of `weight`'s shape (the last dim when no
 * weight): `(x − mean) / sqrt(var + eps) · weight + bias`, population variance. The CPU
 * computes it in float64 and rounds once; CUDA computes the statistics in float32 (two passes:
 * the mean, then squared deviations), whose sums overflow for rows holding values beyond about
 * 1e19 in magnitude, as PyTorch's float32 kernels do. `weight` and `bias`, when given, must
 * have exactly the normalized shape (x's trailing dims) and x's dtype and device. `eps` must be
 * a positive finite number.
 */
export function layerNorm(x: Tensor, weight?: Tensor, bias?: Tensor, eps = 1e-5): Tensor {
  const op = "layerNorm";
  checkTensor(op, "x", x);
  checkDTypeIn(op, "x", x, FLOAT_DTYPES);
  if (weight !== undefined) checkTensor(op, "weight", weight);
  if (bias !== undefined) checkTensor(op, "bias", bias);
  checkEps(op, eps);
  const xShape = x.node.shape;
  let normShape: readonly number[];
  if (weight !== undefined) {
    normShape = weight.node.shape;
    if (normShape.length === 0 || normShape.length > xShape.length) {
      throw new TensorqError("weight must have between 1 and rank(x) dims", {
        op,
        kind: "shape",
        argument: "weight",
        expected: `the trailing dims of x ${fmtShape(xShape)}`,
        actual: `shape ${fmtShape(normShape)}`,
      });
    }
  } else {
    if (xShape.length === 0) {
      throw new TensorqError("x needs at least one dim to normalize over", {
        op,
        kind: "shape",
        argument: "x",
        expected: "a tensor of rank 1 or more",
        actual: "a rank-0 tensor",
      });
    }
    normShape = xShape.slice(-1);
  }
  const trailing = xShape.slice(xShape.length - normShape.length);
  const present: [string, Tensor][] = [["x", x]];
  if (weight !== undefined) present.push(["weight", weight]);
  if (bias !== undefined) present.push(["bias", bias]);
  for (const [name, t] of present.slice(1)) {
    const s = t.node.shape;
    if (s.length !== normShape.length || s.some((d, i) => d !== trailing[i])) {
      throw new TensorqError(`${name} must match the trailing dims of x`, {
        op,
        kind: "shape",
        argument: name,
        expected: `shape ${fmtShape(trailing)} (${
          normShape.length === 1 ? "the last dim" : `the last ${normShape.length} dims`
        } of x ${fmtShape(xShape)})`,
        actual: `shape ${fmtShape(s)}`,
      });
    }
  }
  const names = present.map(([n]) => n);
  const inputs = present.map(([, t]) => t);
  checkSameDType(op, names, inputs);
  checkSameDevice(op, names, inputs);
  return makeOp(
    op,
    inputs,
    { dims: normShape.length, eps, hasWeight: weight !== undefined, hasBias: bias !== undefined },
    xShape,
    x.dtype,
  );
}
