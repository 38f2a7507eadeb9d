/**
 * Scales from calibration ranges: `scale = amax / maxBound(dtype)`, as ModelOpt exports them.
 * @module
 */
import { decode } from "../dtype.ts";
import { TensorqError } from "../errors.ts";
import type { QuantDType } from "../ops/quantize.ts";
import { checkTensor, FLOAT_DTYPES } from "../ops/op.ts";
import { fromStorage, type Tensor } from "../tensor.ts";

const MAX_BOUND: Readonly<Record<QuantDType, number>> = Object.freeze({
  int8: 127,
  int4: 7,
  float8e4m3: 448,
});

/**
 * The largest magnitude a quantized value maps amax to: 127 for int8, 7 for int4 (symmetric
 * ranges; -128 and -8 are reachable only by saturation) and 448 for float8e4m3.
 *
 * @param dtype The quantized dtype.
 * @returns The bound.
 * @throws {TensorqError} kind `dtype` for any other dtype.
 */
export function maxBound(dtype: QuantDType): number {
  if (Object.hasOwn(MAX_BOUND, dtype)) return MAX_BOUND[dtype];
  throw new TensorqError("unsupported quantized dtype", {
    op: "maxBound",
    kind: "dtype",
    argument: "dtype",
    expected: "one of int8, int4, float8e4m3",
    actual: typeof dtype === "string" ? JSON.stringify(dtype) : typeof dtype,
  });
}

/**
 * Scales for quantizing to `dtype` from absolute maxima: `Math.fround(amax / maxBound(dtype))`
 * per element (a float32 division), with ModelOpt's rule that an amax of 0, NaN or ±Infinity
 * gives scale 1 (so all-zero channels quantize to 0 and dequantize exactly). A quotient that
 * underflows to 0 in float32 also gives 1, since a zero scale is invalid.
 *
 * Computed eagerly on the host: a tensor `amax` is evaluated and its values read back.
 *
 * @param amax Absolute maxima (non-negative): a float32, float16 or bfloat16 tensor of any
 *   shape, or a number.
 * @param dtype The quantized dtype the scales are for.
 * @returns A float32 tensor of amax's shape and device (rank 0 on the CPU for a number).
 * @throws {TensorqError} for a negative finite amax, an unsupported amax dtype or `dtype`.
 */
export function scaleFromAmax(amax: Tensor | number, dtype: QuantDType): Tensor {
  const op = "scaleFromAmax";
  let bound: number;
  try {
    bound = maxBound(dtype);
  } catch {
    throw new TensorqError("unsupported quantized dtype", {
      op,
      kind: "dtype",
      argument: "dtype",
      expected: "one of int8, int4, float8e4m3",
      actual: typeof dtype === "string" ? JSON.stringify(dtype) : typeof dtype,
    });
  }
  let values: ArrayLike<number>;
  let shape: number[];
  let device = "cpu";
  if (typeof amax === "number") {
    values = [Math.fround(amax)];
    shape = [];
  } else {
    const t = checkTensor(op, "amax", amax);
    if (!FLOAT_DTYPES.includes(t.dtype)) {
      throw new TensorqError("unsupported amax dtype", {
        op,
        kind: "dtype",
        argument: "amax",
        expected: `one of ${FLOAT_DTYPES.join(", ")}`,
        actual: t.dtype,
      });
    }
    values = decode(t.dtype, t.storageSync());
    shape = t.shape;
    device = t.device;
  }
  const scales = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const a = values[i];
    if (a < 0 && a > -Infinity) {
      throw new TensorqError("amax must not be negative", {
        op,
        kind: "argument",
        argument: "amax",
        expected: "non-negative values (absolute maxima)",
        actual: `${a} at flat index ${i}`,
      });
    }
    const s = Math.fround(a / bound);
    scales[i] = Number.isFinite(a) && s > 0 ? s : 1;
  }
  return fromStorage(scales, shape, "float32", device);
}
