/**
 * Elementwise ops: arithmetic with NumPy broadcasting, comparisons, unary math, activations,
 * `where` and `cast`. Each op's shape and dtype rule lives here; CPU kernels are in
 * lib/backends/cpu/elementwise.ts.
 *
 * Dtype rules: no implicit promotion — binary operands must share a dtype (a JS number takes
 * the tensor's dtype). Arithmetic accepts float32, float16, bfloat16, int8, int32, int64;
 * transcendental functions accept floats only; comparisons return bool. Integer division
 * truncates toward zero (division by zero gives 0); integer overflow wraps.
 * @module
 */
import { checkDType, type DType } from "../dtype.ts";
import { TensorqError } from "../errors.ts";
import { broadcastShapes, describeValue, optionsOf } from "../shape.ts";
import type { Tensor } from "../tensor.ts";
import {
  checkDTypeIn,
  checkSameDevice,
  checkSameDType,
  checkTensor,
  FLOAT_DTYPES,
  makeOp,
  NUMERIC_DTYPES,
  operands,
  type TensorLike,
} from "./op.ts";

/** Binary arithmetic ops (same dtype in and out). */
export const ARITHMETIC_OPS = ["add", "sub", "mul", "div", "pow", "maximum", "minimum"] as const;
/** Comparison ops (bool out). */
export const COMPARISON_OPS = [
  "equal",
  "notEqual",
  "less",
  "lessEqual",
  "greater",
  "greaterEqual",
] as const;
/** Unary float ops. */
export const UNARY_FLOAT_OPS = [
  "exp",
  "log",
  "sqrt",
  "rsqrt",
  "tanh",
  "sigmoid",
  "gelu",
] as const;
/** Unary ops that also accept integers. */
export const UNARY_NUMERIC_OPS = ["neg", "abs", "relu"] as const;

function binary(
  op: string,
  a: TensorLike,
  b: TensorLike,
  allowed: readonly DType[],
  outDType?: DType,
): Tensor {
  const [x, y] = operands(op, ["a", "b"], [a, b]);
  const dtype = checkSameDType(op, ["a", "b"], [x, y]);
  checkDTypeIn(op, "a", x, allowed);
  checkSameDevice(op, ["a", "b"], [x, y]);
  const shape = broadcastShapes(op, [x.node.shape, y.node.shape], ["a", "b"]);
  return makeOp(op, [x, y], {}, shape, outDType ?? dtype);
}

function unary(op: string, x: Tensor, allowed: readonly DType[], attrs = {}): Tensor {
  checkTensor(op, "x", x);
  checkDTypeIn(op, "x", x, allowed);
  return makeOp(op, [x], attrs, x.node.shape, x.dtype);
}

/** `a + b` with broadcasting. */
export function add(a: TensorLike, b: TensorLike): Tensor {
  return binary("add", a, b, NUMERIC_DTYPES);
}
/** `a - b` with broadcasting. */
export function sub(a: TensorLike, b: TensorLike): Tensor {
  return binary("sub", a, b, NUMERIC_DTYPES);
}
/** `a * b` with broadcasting. */
export function mul(a: TensorLike, b: TensorLike): Tensor {
  return binary("mul", a, b, NUMERIC_DTYPES);
}
/** `a / b`: true division for floats; truncating for integers (x / 0 → 0). */
export function div(a: TensorLike, b: TensorLike): Tensor {
  return binary("div", a, b, NUMERIC_DTYPES);
}
/** `a ** b` (floats only), with IEEE 754's special cases (`1 ** NaN` is 1, as in C and NumPy). */
export function pow(a: TensorLike, b: TensorLike): Tensor {
  return binary("pow", a, b, FLOAT_DTYPES);
}
/** Elementwise maximum (NaN propagates). */
export function maximum(a: TensorLike, b: TensorLike): Tensor {
  return binary("maximum", a, b, NUMERIC_DTYPES);
}
/** Elementwise minimum (NaN propagates). */
export function minimum(a: TensorLike, b: TensorLike): Tensor {
  return binary("minimum", a, b, NUMERIC_DTYPES);
}

const COMPARABLE: readonly DType[] = [...NUMERIC_DTYPES, "bool"];
/** `a == b` → bool. */
export function equal(a: TensorLike, b: TensorLike): Tensor {
  return binary("equal", a, b, COMPARABLE, "bool");
}
/** `a != b` → bool. */
export function notEqual(a: TensorLike, b: TensorLike): Tensor {
  return binary("notEqual", a, b, COMPARABLE, "bool");
}
/** `a < b` → bool. */
export function less(a: TensorLike, b: TensorLike): Tensor {
  return binary("less", a, b, NUMERIC_DTYPES, "bool");
}
/** `a <= b` → bool. */
export function lessEqual(a: TensorLike, b: TensorLike): Tensor {
  return binary("lessEqual", a, b, NUMERIC_DTYPES, "bool");
}
/** `a > b` → bool. */
export function greater(a: TensorLike, b: TensorLike): Tensor {
  return binary("greater", a, b, NUMERIC_DTYPES, "bool");
}
/** `a >= b` → bool. */
export function greaterEqual(a: TensorLike, b: TensorLike): Tensor {
  return binary("greaterEqual", a, b, NUMERIC_DTYPES, "bool");
}

/** `-x`. */
export function neg(x: Tensor): Tensor {
  return unary("neg", x, NUMERIC_DTYPES);
}
/** `|x|`. */
export function abs(x: Tensor): Tensor {
  return unary("abs", x, NUMERIC_DTYPES);
}
/** `max(x, 0)`. */
export function relu(x: Tensor): Tensor {
  return unary("relu", x, NUMERIC_DTYPES);
}
/** `e^x`. */
export function exp(x: Tensor): Tensor {
  return unary("exp", x, FLOAT_DTYPES);
}
/** Natural logarithm. */
export function log(x: Tensor): Tensor {
  return unary("log", x, FLOAT_DTYPES);
}
/** Square root. */
export function sqrt(x: Tensor): Tensor {
  return unary("sqrt", x, FLOAT_DTYPES);
}
/** `1 / sqrt(x)`. */
export function rsqrt(x: Tensor): Tensor {
  return unary("rsqrt", x, FLOAT_DTYPES);
}
/** Hyperbolic tangent. */
export function tanh(x: Tensor): Tensor {
  return unary("tanh", x, FLOAT_DTYPES);
}
/** Logistic sigmoid `1 / (1 + e^-x)`. */
export function sigmoid(x: Tensor): Tensor {
  return unary("sigmoid", x, FLOAT_DTYPES);
}

/** Options of {@link gelu}. */
export interface GeluOptions {
  /** `"none"` (exact, with erf; default) or `"tanh"` (GPT-2's `gelu_new`). */
  approximate?: "none" | "tanh";
}

/**
 * GELU: exact `x · Φ(x)` or the tanh approximation
 * `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`. Both take their limits at infinity:
 * `gelu(-∞) = -0`, `gelu(+∞) = +∞`; NaN stays NaN. (A float16 / bfloat16 Linear of more than 16
 * rows whose tanh GELU runs in cuBLASLt's epilogue gives NaN for a -∞ product, as PyTorch does.)
 */
export function gelu(x: Tensor, options: GeluOptions = {}): Tensor {
  const approximate = optionsOf<GeluOptions>("gelu", options, ["approximate"]).approximate ??
    "none";
  if (approximate !== "none" && approximate !== "tanh") {
    throw new TensorqError("unknown approximation", {
      op: "gelu",
      kind: "argument",
      argument: "approximate",
      expected: `"none" or "tanh"`,
      actual: describeValue(approximate),
    });
  }
  return unary("gelu", x, FLOAT_DTYPES, { approximate });
}

/** `cond ? a : b` elementwise, with broadcasting of all three; `cond` must be bool. */
export function where(cond: Tensor, a: TensorLike, b: TensorLike): Tensor {
  checkTensor("where", "cond", cond);
  if (cond.dtype !== "bool") {
    throw new TensorqError("condition must be bool", {
      op: "where",
      kind: "dtype",
      argument: "cond",
      expected: "bool",
      actual: cond.dtype,
    });
  }
  const [x, y] = operands("where", ["a", "b"], [a, b]);
  const dtype = checkSameDType("where", ["a", "b"], [x, y]);
  checkSameDevice("where", ["cond", "a", "b"], [cond, x, y]);
  const shape = broadcastShapes("where", [cond.node.shape, x.node.shape, y.node.shape], [
    "cond",
    "a",
    "b",
  ]);
  return makeOp("where", [cond, x, y], {}, shape, dtype);
}

/**
 * Converts to `dtype`. Floats → floats round to nearest even (float8e4m3 saturates to ±448;
 * float16/bfloat16 overflow to ±Inf). Floats → integers truncate toward zero and saturate to
 * the target range; NaN → 0. Integers → narrower integers saturate too (int32 200 → int8 127;
 * NumPy and PyTorch wrap instead). Anything → bool is `x != 0`. bool → numbers is 0/1.
 */
export function cast(x: Tensor, dtype: DType): Tensor {
  checkTensor("cast", "x", x);
  const to = checkDType("cast", "dtype", dtype);
  return makeOp("cast", [x], { dtype: to }, x.node.shape, to);
}
