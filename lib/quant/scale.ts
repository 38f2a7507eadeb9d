/**
 * Scales from calibration ranges: `scale = amax / maxBound(dtype)`, as ModelOpt exports them.
 * @module
 */
import { decode, dtypeInfo } from "../dtype.ts";
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
 * underflows to 0 in float32 also gives 1, since a zero scale is invalid. A number amax is
 * rounded to float32 first; one beyond float32's range (e.g. `1e39`) is divided as it is and
 * the quotient rounded to float32, and it is an error when the quotient does not fit either.
 *
 * Computed eagerly on the host: a tensor `amax` is evaluated and its values read back.
 *
 * @param amax Absolute maxima (non-negative): a float32, float16 or bfloat16 tensor of any
 *   shape, or a number.
 * @param dtype The quantized dtype the scales are for.
 * @returns A float32 tensor of amax's shape and device (rank 0 on the CPU for a number).
 * @throws {TensorqError} for a negative finite amax, a number amax whose scale is beyond
 *   float32's range, an unsupported amax dtype or `dtype`.
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
    values = [amax];
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
  return fromStorage(scalesOfAmax(op, "amax", values, bound), shape, "float32", device);
}

/**
 * The scales of amax values for a dtype of bound `bound`, by {@link scaleFromAmax}'s rules
 * (shared with quantizeModel, whose amax come as numbers). Each value is rounded to float32
 * first unless that overflows; then the quotient is rounded instead.
 *
 * @throws {TensorqError} of `op` for a negative finite value, or one whose scale is beyond
 *   float32's range, naming `argument`.
 */
export function scalesOfAmax(
  op: string,
  argument: string,
  values: ArrayLike<number>,
  bound: number,
): Float32Array {
  const scales = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const a = values[i];
    if (a < 0 && a > -Infinity) {
      throw new TensorqError("amax must not be negative", {
        op,
        kind: "argument",
        argument,
        expected: "non-negative values (absolute maxima)",
        actual: `${a} at flat index ${i}`,
      });
    }
    if (!Number.isFinite(a)) {
      scales[i] = 1;
      continue;
    }
    const a32 = Math.fround(a);
    // A finite number beyond float32's range keeps its value: amax / bound may still fit.
    const s = Math.fround((a32 < Infinity ? a32 : a) / bound);
    if (s === Infinity) {
      throw new TensorqError("amax / maxBound is beyond float32's range", {
        op,
        kind: "argument",
        argument,
        expected: `values whose scale amax / ${bound} is at most ${dtypeInfo("float32").max}`,
        actual: `${a} at flat index ${i}`,
      });
    }
    scales[i] = s > 0 ? s : 1;
  }
  return scales;
}
