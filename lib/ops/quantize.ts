/**
 * Quantization ops with TensorRT's (and ONNX QuantizeLinear / DequantizeLinear opset 21)
 * semantics, bit for bit:
 *
 * - `quantize`: `q = saturate(roundHalfToEven(x / scale))`, where `x / scale` is a true float32
 *   division (never a multiplication by `1 / scale`: the two differ in the last bit). int8
 *   saturates to [-128, 127], int4 to [-8, 7]; float8e4m3 (e4m3fn) encodes the float32
 *   quotient with round-to-nearest-even and saturates to ±448.
 * - `dequantize`: `x = q * scale` computed in float32 (one rounding), then cast to the output
 *   dtype with round-to-nearest-even.
 *
 * Three modes, chosen by the options and checked against the scale's shape:
 * - per-tensor: scale of rank 0 (with or without `dim`: as in ONNX, the axis of a scalar scale
 *   is unused, though checked), or shape `[1]` without `dim`.
 * - per-channel: `dim` given; scale 1-D of length `x.shape[dim]`.
 * - block-wise (int8 and int4 only): `dim` and `blockSize` given; scale of x's rank with
 *   `scale.shape[dim] = ceil(x.shape[dim] / blockSize)` and every other extent equal to x's.
 *   Element `i` along `dim` uses scale index `floor(i / blockSize)`. As in ONNX opset 21,
 *   `blockSize` need not divide `x.shape[dim]`: the last block is then shorter (x `[40, 250]`
 *   in blocks of 64 along dim 1 takes a scale `[40, 4]`, the last block 58 wide), and a block
 *   may be longer than the whole axis (scale extent 1). For a scale extent S along `dim`, the
 *   accepted block sizes are ONNX's `[ceil(D / S), ceil(D / (S - 1)) - 1]`.
 *
 * Graph ops (the Q/DQ fusion pass matches these names and attributes):
 * - `"quantize"`, inputs `[x, scale]`, attrs
 *   `{ dtype: "int8" | "int4" | "float8e4m3", mode: "tensor" | "channel" | "block",
 *   dim: number | null, blockSize: number | null }`. `dtype` is the quantized (output) dtype;
 *   `dim` is normalized to `[0, rank)` (null for per-tensor); `blockSize` is null unless the
 *   mode is "block".
 * - `"dequantize"`, inputs `[q, scale]`, the same attrs, except that `dtype` is the output
 *   dtype (`"float32" | "float16" | "bfloat16"`); the quantized dtype is `q`'s.
 * - `"checkScale"`, inputs `[scale]`, attrs `{ op: "quantize" | "dequantize" }`: the scale
 *   unchanged, whose evaluation fails (naming `op`) when a value is not positive and finite.
 *   quantize and dequantize put it in front of a scale that is not evaluated yet (one computed
 *   in the graph); an evaluated scale is checked when the op is called.
 *
 * The CPU kernels are in lib/backends/cpu/quantize.ts.
 * @module
 */
import { decode, type DType } from "../dtype.ts";
import { fmtShape, TensorqError } from "../errors.ts";
import type { Node } from "../graph/node.ts";
import { describeValue, optionsOf } from "../shape.ts";
import { scalar, type Tensor } from "../tensor.ts";
import { checkSameDevice, checkTensor, FLOAT_DTYPES, makeOp } from "./op.ts";

/** Dtypes a tensor can be quantized to. `float8e4m3` is OCP e4m3fn (saturating, max 448). */
export type QuantDType = "int8" | "int4" | "float8e4m3";

/** Options of {@link quantize} and {@link dequantize}. */
export interface QuantizeOptions {
  /**
   * The axis of the per-channel or block-wise scale (negative counts from the end). Omit for
   * per-tensor quantization; with a rank-0 scale (per-tensor) it is checked but unused, as
   * ONNX ignores the axis of a scalar scale.
   */
  dim?: number;
  /**
   * Block size along `dim` for block-wise quantization (requires `dim`; int8 and int4 only).
   * It need not divide `x.shape[dim]` (ONNX opset 21): the scale's extent along `dim` is
   * `ceil(x.shape[dim] / blockSize)` and the last block may be shorter.
   */
  blockSize?: number;
}

/** Output dtypes of dequantize. */
type DequantDType = "float32" | "float16" | "bfloat16";

/** The quantization mode recorded in the graph attrs. */
type QuantMode = "tensor" | "channel" | "block";

const QUANT_DTYPES: readonly QuantDType[] = ["int8", "int4", "float8e4m3"];

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (value === null) return "null";
  if (typeof value === "number" || typeof value === "boolean") return `${typeof value} ${value}`;
  return Array.isArray(value) ? "an array" : typeof value;
}

/** Checks a target/output dtype argument against a list. */
function checkDTypeArg<T extends string>(
  op: string,
  value: unknown,
  allowed: readonly T[],
  what: string,
): T {
  if ((allowed as readonly unknown[]).includes(value)) return value as T;
  throw new TensorqError(`unsupported ${what} dtype`, {
    op,
    kind: "dtype",
    argument: "dtype",
    expected: `one of ${allowed.join(", ")}`,
    actual: describe(value),
  });
}

/** Turns a number scale into a rank-0 float32 constant; checks it is positive and finite. */
function scaleTensor(op: string, scale: Tensor | number, device: string): Tensor {
  if (typeof scale === "number") {
    // A zero, subnormal-underflowing or huge number would become 0 or Inf in float32.
    const f = Math.fround(scale);
    if (!(f > 0 && f < Infinity)) {
      throw new TensorqError("scale must be positive and finite", {
        op,
        kind: "argument",
        argument: "scale",
        expected: "a positive finite float32 value",
        actual: f === scale ? String(scale) : `${scale} (${f} in float32)`,
      });
    }
    return scalar(f, "float32", device);
  }
  return checkTensor(op, "scale", scale);
}

/** Throws the error of the first of a scale's `values` that is not positive and finite. */
export function checkScaleArray(op: string, values: ArrayLike<number>): void {
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!(v > 0 && v < Infinity)) throw badScaleError(op, v, i, values.length);
  }
}

/** The message of a scale value that is not positive and finite (as the kernels report it). */
export function badScaleError(
  op: string,
  value: number,
  index: number,
  size: number,
): TensorqError {
  return new TensorqError("scale must be positive and finite", {
    op,
    kind: "argument",
    argument: "scale",
    expected: "positive finite values",
    actual: `${value} at flat index ${index} of ${size}`,
  });
}

/**
 * The scale an op reads: an evaluated scale checked now, one still to be computed behind a
 * `checkScale` node that checks it when it is.
 */
function checkedScale(op: "quantize" | "dequantize", scale: Tensor): Tensor {
  if (!scale.isEvaluated) {
    return makeOp("checkScale", [scale], { op }, scale.node.shape, scale.dtype);
  }
  checkScaleValues(op, scale);
  return scale;
}

/** Checks the values of an already evaluated scale tensor (once per tensor). */
export function checkScaleValues(op: string, scale: Tensor): void {
  // A value never changes: check each scale once (reading a GPU scale costs a round trip).
  if (checkedScales.has(scale.node)) return;
  checkScaleArray(op, decode(scale.dtype, scale.storageSync()));
  checkedScales.add(scale.node);
}

const checkedScales = new WeakSet<Node>();

interface ModeInfo {
  mode: QuantMode;
  dim: number | null;
  blockSize: number | null;
}

/**
 * The block sizes ONNX accepts along an axis of extent `extent` whose scale has extent
 * `scaleExtent` (`[ceil(D / S), ceil(D / (S - 1)) - 1]`, exactly those with
 * `ceil(D / blockSize) = S`), in words; undefined when there is none.
 */
function blockSizeRange(extent: number, scaleExtent: number): string | undefined {
  if (scaleExtent < 1 || extent < 1 || scaleExtent > extent) return undefined;
  const lo = Math.ceil(extent / scaleExtent);
  if (scaleExtent === 1) return `a block size of at least ${lo}`;
  const hi = Math.ceil(extent / (scaleExtent - 1)) - 1;
  return lo === hi ? `block size ${lo}` : `a block size in [${lo}, ${hi}]`;
}

/** Validates dim/blockSize and the scale's shape; returns the mode and normalized attrs. */
function resolveMode(
  op: string,
  xName: string,
  xShape: readonly number[],
  scaleShape: readonly number[],
  options: QuantizeOptions,
  quantDType: QuantDType,
): ModeInfo {
  if (typeof options !== "object" || options === null) {
    throw new TensorqError("options must be an object", {
      op,
      kind: "argument",
      argument: "options",
      expected: "{ dim?: number; blockSize?: number }",
      actual: describe(options),
    });
  }
  const { dim, blockSize } = options;
  const rank = xShape.length;
  if (blockSize !== undefined && dim === undefined) {
    throw new TensorqError("blockSize needs dim (the axis the blocks run along)", {
      op,
      kind: "argument",
      argument: "blockSize",
      expected: "dim given together with blockSize",
      actual: `blockSize ${describeValue(blockSize)} without dim`,
    });
  }
  if (dim === undefined) {
    if (scaleShape.length === 0 || (scaleShape.length === 1 && scaleShape[0] === 1)) {
      return { mode: "tensor", dim: null, blockSize: null };
    }
    const candidates = scaleShape.length === 1
      ? xShape.flatMap((d, i) => (d === scaleShape[0] ? [i] : []))
      : [];
    const hint = candidates.length
      ? `; for per-channel pass dim (${candidates.join(" or ")} matches scale length ${
        scaleShape[0]
      })`
      : `; per-channel needs dim with scale [${xName}.shape[dim]], block-wise needs dim and ` +
        `blockSize with scale of ${xName}'s rank`;
    throw new TensorqError("the scale's shape matches no quantization mode", {
      op,
      kind: "shape",
      argument: "scale",
      expected: `rank 0 or [1] for per-tensor (no dim given)${hint}`,
      actual: `shape ${fmtShape(scaleShape)} for ${xName} of shape ${fmtShape(xShape)}`,
    });
  }
  if (!Number.isInteger(dim) || dim < -rank || dim >= rank) {
    throw new TensorqError("dim out of range", {
      op,
      kind: "axis",
      argument: "dim",
      expected: rank === 0
        ? `no dim for a rank-0 ${xName} (per-tensor only)`
        : `an integer in [${-rank}, ${rank - 1}] for a rank-${rank} ${xName}`,
      actual: describe(dim),
    });
  }
  const axis = dim < 0 ? dim + rank : dim;
  const extent = xShape[axis];
  if (blockSize === undefined) {
    // ONNX opset 21 ignores the axis for a scalar scale: per-tensor.
    if (scaleShape.length === 0) return { mode: "tensor", dim: null, blockSize: null };
    if (scaleShape.length === 1 && scaleShape[0] === extent) {
      return { mode: "channel", dim: axis, blockSize: null };
    }
    throw new TensorqError("the scale's shape matches no quantization mode", {
      op,
      kind: "shape",
      argument: "scale",
      expected: `[${extent}] for per-channel along dim ${axis}; rank 0 for per-tensor (or ` +
        `[1] with dim omitted); add blockSize for block-wise (scale of rank ${rank})`,
      actual: `shape ${fmtShape(scaleShape)} for ${xName} of shape ${fmtShape(xShape)}`,
    });
  }
  if (!Number.isInteger(blockSize) || blockSize <= 0) {
    throw new TensorqError("blockSize must be a positive integer", {
      op,
      kind: "argument",
      argument: "blockSize",
      expected: "a positive integer",
      actual: describe(blockSize),
    });
  }
  if (quantDType === "float8e4m3") {
    throw new TensorqError("block-wise quantization supports int8 and int4 only", {
      op,
      kind: "unsupported",
      argument: "blockSize",
      expected: "per-tensor or per-channel scales for float8e4m3",
      actual: `blockSize ${blockSize}`,
    });
  }
  // ONNX opset 21: scale.shape[dim] = ceil(extent / blockSize), the last block possibly
  // shorter; every other extent equals x's.
  const blocks = Math.ceil(extent / blockSize);
  const expected = xShape.map((d, i) => (i === axis ? blocks : d));
  const sameRank = scaleShape.length === rank;
  const othersMatch = sameRank && xShape.every((d, i) => i === axis || scaleShape[i] === d);
  if (othersMatch && scaleShape[axis] !== blocks) {
    // The scale has a block-wise shape, but not for this block size: name the block sizes
    // ONNX accepts for its extent S, [ceil(D / S), ceil(D / (S - 1)) - 1].
    const range = blockSizeRange(extent, scaleShape[axis]);
    if (range !== undefined) {
      throw new TensorqError("blockSize does not fit the scale's extent along dim", {
        op,
        kind: "argument",
        argument: "blockSize",
        expected: `${range} for ${xName}.shape[${axis}] = ${extent} and scale.shape[${axis}] = ` +
          `${scaleShape[axis]} (scale.shape[dim] = ceil(${xName}.shape[dim] / blockSize))`,
        actual: String(blockSize),
      });
    }
  }
  if (!othersMatch || scaleShape[axis] !== blocks) {
    throw new TensorqError("the scale's shape matches no quantization mode", {
      op,
      kind: "shape",
      argument: "scale",
      expected: `${fmtShape(expected)} for block-wise along dim ${axis} with blockSize ` +
        `${blockSize} (${xName} shape ${fmtShape(xShape)}; scale.shape[dim] = ` +
        `ceil(${xName}.shape[dim] / blockSize))`,
      actual: `shape ${fmtShape(scaleShape)}`,
    });
  }
  return { mode: "block", dim: axis, blockSize };
}

/**
 * Quantizes `x` with TensorRT semantics: `q = saturate(roundHalfToEven(x / scale))`, the
 * division a true float32 division. int8 saturates to [-128, 127], int4 to [-8, 7] (stored
 * one value per element on the CPU); float8e4m3 rounds the float32 quotient to e4m3fn (nearest
 * even) and saturates to ±448.
 *
 * NaN inputs become 0 for int8 and int4 and NaN (0x7f) for float8e4m3.
 *
 * Modes: per-tensor (scale of rank 0, a valid `dim` unused as in ONNX; or `[1]` without `dim`),
 * per-channel (`dim`, scale `[x.shape[dim]]`), block-wise (`dim` and `blockSize`, int8/int4
 * only, scale of x's rank with `scale.shape[dim] = ceil(x.shape[dim] / blockSize)`: the last
 * block may be shorter). A number scale becomes a rank-0 float32 constant on x's device.
 *
 * @param x The values: float32, float16 or bfloat16 (decoded exactly to float32).
 * @param scale Positive finite scale(s): float32 or x's dtype, on x's device.
 * @param dtype The quantized dtype.
 * @param options `dim` and `blockSize` (see above).
 * @returns The quantized tensor, of x's shape and `dtype`.
 * @throws {TensorqError} for an unsupported dtype (x, scale or target), a scale shape that
 *   matches no mode, `dim` out of range, a bad `blockSize` (not a positive integer, outside
 *   the range the scale's extent allows, given without `dim`, or with float8e4m3), different
 *   devices, or a scale that is not positive and finite (a number or an evaluated tensor when
 *   called, a scale computed in the graph when it is evaluated).
 */
export function quantize(
  x: Tensor,
  scale: Tensor | number,
  dtype: QuantDType,
  options: QuantizeOptions = {},
): Tensor {
  const op = "quantize";
  checkTensor(op, "x", x);
  if (!FLOAT_DTYPES.includes(x.dtype)) {
    throw new TensorqError("unsupported input dtype", {
      op,
      kind: "dtype",
      argument: "x",
      expected: `one of ${FLOAT_DTYPES.join(", ")}`,
      actual: x.dtype,
    });
  }
  const target = checkDTypeArg(op, dtype, QUANT_DTYPES, "target");
  const s = scaleTensor(op, scale, x.device);
  checkScaleDType(op, s, x.dtype === "float32" ? ["float32"] : ["float32", x.dtype], "x");
  checkSameDevice(op, ["x", "scale"], [x, s]);
  options = optionsOf(op, options, ["dim", "blockSize"]);
  const mode = resolveMode(op, "x", x.node.shape, s.node.shape, options, target);
  return makeOp(op, [x, checkedScale(op, s)], { dtype: target, ...mode }, x.node.shape, target);
}

/**
 * Dequantizes `q`: `q * scale` computed in float32 (one rounding), then cast to `dtype` with
 * round-to-nearest-even. The modes and options are those of {@link quantize}.
 *
 * @param q A quantized tensor: int8, int4 or float8e4m3.
 * @param scale Positive finite scale(s): float32 or `dtype`, on q's device.
 * @param dtype The output dtype.
 * @param options `dim` and `blockSize`, as for {@link quantize}.
 * @returns The dequantized tensor, of q's shape and `dtype`.
 * @throws {TensorqError} for the same mistakes as {@link quantize}.
 */
export function dequantize(
  q: Tensor,
  scale: Tensor | number,
  dtype: "float32" | "float16" | "bfloat16",
  options: QuantizeOptions = {},
): Tensor {
  const op = "dequantize";
  checkTensor(op, "q", q);
  if (!(QUANT_DTYPES as readonly DType[]).includes(q.dtype)) {
    throw new TensorqError("unsupported input dtype; dequantize takes a quantized tensor", {
      op,
      kind: "dtype",
      argument: "q",
      expected: `one of ${QUANT_DTYPES.join(", ")}`,
      actual: q.dtype,
    });
  }
  const out = checkDTypeArg(op, dtype, FLOAT_DTYPES as readonly DequantDType[], "output");
  const s = scaleTensor(op, scale, q.device);
  checkScaleDType(op, s, out === "float32" ? ["float32"] : ["float32", out], "the output");
  checkSameDevice(op, ["q", "scale"], [q, s]);
  options = optionsOf(op, options, ["dim", "blockSize"]);
  const mode = resolveMode(op, "q", q.node.shape, s.node.shape, options, q.dtype as QuantDType);
  return makeOp(op, [q, checkedScale(op, s)], { dtype: out, ...mode }, q.node.shape, out);
}

function checkScaleDType(op: string, s: Tensor, allowed: DType[], of: string): void {
  if (allowed.includes(s.dtype)) return;
  throw new TensorqError("unsupported scale dtype", {
    op,
    kind: "dtype",
    argument: "scale",
    expected: allowed.length === 1 ? "float32" : `float32 or ${allowed[1]} (the dtype of ${of})`,
    actual: s.dtype,
  });
}
