/**
 * Data types: names, sizes, ranges and exact host conversions.
 *
 * Host storage (what a CPU buffer holds, and the bytes a checkpoint or the GPU holds):
 * float32 → Float32Array, float16/bfloat16 → Uint16Array of bit patterns, float8e4m3 →
 * Uint8Array of bit patterns, int4 → Int8Array with one value per element (packed two per byte
 * only in checkpoints and on the GPU, see {@link packInt4}), int8 → Int8Array, int32 →
 * Int32Array, int64 → BigInt64Array, bool → Uint8Array of 0/1.
 * @module
 */

import { TensorqError } from "./errors.ts";

/** The element types tensorq knows. `float8e4m3` is OCP e4m3fn (no infinities, max 448). */
export type DType =
  | "float32"
  | "float16"
  | "bfloat16"
  | "float8e4m3"
  | "int4"
  | "int8"
  | "int32"
  | "int64"
  | "bool";

/** Facts about one dtype. */
export interface DTypeInfo {
  /** The dtype's name. */
  readonly name: DType;
  /** Bits per element (int4: 4). */
  readonly bits: number;
  /** Bytes per element in packed storage (int4: 0.5). */
  readonly itemSize: number;
  /** True for float32, float16, bfloat16, float8e4m3. */
  readonly isFloat: boolean;
  /** True for int4, int8, int32, int64. */
  readonly isInt: boolean;
  /** Smallest finite value. */
  readonly min: number;
  /** Largest finite value. */
  readonly max: number;
}

/** A CPU buffer's storage array for some dtype (see the module doc). */
export type StorageArray =
  | Float32Array
  | Uint16Array
  | Uint8Array
  | Int8Array
  | Int32Array
  | BigInt64Array;

/** A numeric view of a buffer for computation: floats as Float32Array, int64 as Float64Array. */
export type HostArray = Float32Array | Float64Array | Int8Array | Int32Array | Uint8Array;

/** Every dtype name, in a fixed order (floats, then integers, then bool). */
export const DTYPES: readonly DType[] = Object.freeze(
  [
    "float32",
    "float16",
    "bfloat16",
    "float8e4m3",
    "int4",
    "int8",
    "int32",
    "int64",
    "bool",
  ] as const,
);

/** True when `x` is one of the {@link DTYPES} names. */
export function isDType(x: unknown): x is DType {
  return typeof x === "string" && (DTYPES as readonly string[]).includes(x);
}

function describeValue(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (value === null) return "null";
  if (typeof value === "number" || typeof value === "boolean") return `${typeof value} ${value}`;
  return typeof value;
}

/**
 * Validates a user-given dtype and returns it.
 *
 * @param op The op or API reporting the error.
 * @param argument The argument name the value came from.
 * @param value The value to check.
 * @returns `value`, typed as a {@link DType}.
 * @throws {TensorqError} kind `dtype` when `value` is not a dtype name.
 */
export function checkDType(op: string, argument: string, value: unknown): DType {
  if (isDType(value)) return value;
  throw new TensorqError("unknown dtype", {
    op,
    kind: "dtype",
    argument,
    expected: `one of ${DTYPES.join(", ")}`,
    actual: describeValue(value),
  });
}

const TWO_63 = 2 ** 63;

const DTYPE_INFO: Readonly<Record<DType, DTypeInfo>> = Object.freeze({
  float32: info("float32", 32, true, false, 3.4028234663852886e38),
  float16: info("float16", 16, true, false, 65504),
  bfloat16: info("bfloat16", 16, true, false, 3.3895313892515355e38),
  float8e4m3: info("float8e4m3", 8, true, false, 448),
  int4: info("int4", 4, false, true, 7, -8),
  int8: info("int8", 8, false, true, 127, -128),
  int32: info("int32", 32, false, true, 2147483647, -2147483648),
  // ±2^63 are the nearest numbers to the true limits (2^63 - 1 is not a float64).
  int64: info("int64", 64, false, true, TWO_63, -TWO_63),
  bool: info("bool", 8, false, false, 1, 0),
});

function info(
  name: DType,
  bits: number,
  isFloat: boolean,
  isInt: boolean,
  max: number,
  min: number = -max,
): DTypeInfo {
  return Object.freeze({ name, bits, itemSize: bits / 8, isFloat, isInt, min, max });
}

/**
 * Facts about a dtype: bits, bytes per element, float/int family and finite range.
 *
 * @param dtype The dtype name.
 * @returns Its {@link DTypeInfo}.
 * @throws {TensorqError} kind `dtype` (op `dtype`) for an unknown name.
 */
export function dtypeInfo(dtype: DType): DTypeInfo {
  return DTYPE_INFO[checkDType("dtype", "dtype", dtype)];
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions. Every encoder rounds a float64 once, straight to the target format:
// rounding through float32 first would round twice and break ties.

const SCRATCH_F64 = new Float64Array(1);
const SCRATCH_U32 = new Uint32Array(SCRATCH_F64.buffer);
const SCRATCH_F32 = new Float32Array(1);
const SCRATCH_F32_U32 = new Uint32Array(SCRATCH_F32.buffer);
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const HI_WORD = LITTLE_ENDIAN ? 1 : 0;

/** floor(log2(a)) for positive finite a, read from the float64 exponent (subnormals: -1023). */
function exponentOf(a: number): number {
  SCRATCH_F64[0] = a;
  return ((SCRATCH_U32[HI_WORD] >>> 20) & 0x7ff) - 1023;
}

/**
 * Rounds a positive magnitude once (to nearest, ties to even) to a binary format with
 * `fracBits` fraction bits, smallest normal exponent `eMin` and largest `eMax`. Returns the
 * magnitude bit pattern; results at or past the format's top (including Infinity for
 * exponents above `eMax`) are left for the caller to map to Inf or saturation.
 */
function roundMagnitude(a: number, fracBits: number, eMin: number, eMax: number): number {
  const e = Math.max(exponentOf(a), eMin);
  if (e > eMax) return Infinity;
  // Scaling by a power of two is exact, so the only rounding is the integer rounding here.
  const q = roundHalfToEven(a * 2 ** (fracBits - e));
  // For subnormals q < 2^fracBits and e = eMin gives exponent field 0; a carry out of the
  // mantissa (q = 2^(fracBits+1)) lands on the next exponent by plain addition.
  return (e - eMin) * 2 ** fracBits + q;
}

// Fast paths for values that are float32 (what most callers hold): the rounding is done on the
// float32 bit pattern, the same single RNE rounding as roundMagnitude's (the value is exact in
// float32), without a float64 scaling and a floor per element. `a` is |x|'s bit pattern; adding
// half an ulp of the target less one, plus the kept lowest bit, then truncating rounds to
// nearest even, and a carry out of the fraction lands on the next exponent.

/** 1.5 · 2^52: adding and subtracting it rounds a float64 below 2^51 to an integer (RNE). */
const RINT = 6755399441055744;

/** float32ToFloat16Bits for a float32 value that is not NaN. */
function float16BitsOfFloat32(x: number): number {
  SCRATCH_F32[0] = x;
  const b = SCRATCH_F32_U32[0];
  const sign = (b >>> 16) & 0x8000;
  const a = b & 0x7fffffff;
  if (a >= 0x477ff000) return sign | 0x7c00; // >= 65520 (rounds above 65504), Infinity
  if (a >= 0x38800000) { // >= 2^-14: normal
    return sign | (((a + 0xfff + ((a >>> 13) & 1)) >>> 13) - (112 << 10));
  }
  // Subnormal (steps of 2^-24); 1024 is the smallest normal's pattern.
  return sign | roundHalfToEven(Math.abs(x) * 16777216);
}

/** float32ToBfloat16Bits for a float32 value that is not NaN. */
function bfloat16BitsOfFloat32(x: number): number {
  SCRATCH_F32[0] = x;
  const b = SCRATCH_F32_U32[0];
  const sign = (b >>> 16) & 0x8000;
  const a = b & 0x7fffffff;
  // Same exponent range as float32: subnormals round alike, and past the top lands on Inf.
  return sign | ((a + 0x7fff + ((a >>> 16) & 1)) >>> 16);
}

/** float32ToFloat8e4m3Bits for a float32 value that is not NaN. */
function float8e4m3BitsOfFloat32(x: number): number {
  SCRATCH_F32[0] = x;
  const b = SCRATCH_F32_U32[0];
  const sign = (b >>> 24) & 0x80;
  const a = b & 0x7fffffff;
  if (a >= 0x43e00000) return sign | 0x7e; // >= 448, Infinity: saturate
  if (a >= 0x3c800000) { // >= 2^-6: normal
    return sign | (((a + 0x7ffff + ((a >>> 20) & 1)) >>> 20) - (120 << 3));
  }
  // Subnormal (steps of 2^-9); 8 is the smallest normal's pattern.
  return sign | roundHalfToEven(Math.abs(x) * 512);
}

/**
 * Rounds to the nearest integer, ties to the even integer (IEEE roundTiesToEven, like NumPy
 * `rint`). NaN and ±Infinity pass through; the sign of zero results follows `x`.
 *
 * @param x Any number.
 * @returns The nearest integer to `x`.
 */
export function roundHalfToEven(x: number): number {
  if (Math.abs(x) < 2251799813685248) {
    // |x| < 2^51: x + 1.5 · 2^52 lies in (2^52, 2^53), where the ulp is 1, so the addition
    // rounds x to an integer (ties to even) and the subtraction is exact.
    const r = (x + RINT) - RINT;
    return r === 0 ? x * 0 : r; // a zero takes x's sign (x · 0 is -0 for x < 0 and x = -0)
  }
  if (!(Math.abs(x) < 4503599627370496)) return x; // NaN, Inf or already an integer (>= 2^52)
  const floor = Math.floor(x);
  const frac = x - floor; // exact for |x| < 2^52
  let r: number;
  if (frac < 0.5) r = floor;
  else if (frac > 0.5) r = floor + 1;
  else r = floor % 2 === 0 ? floor : floor + 1;
  return r === 0 && x < 0 ? -0 : r;
}

/**
 * Encodes a number as IEEE binary16 bits with one round-to-nearest-even from float64.
 * |x| >= 65520 (rounds above 65504) gives ±Inf (0x7c00 / 0xfc00); subnormals down to 2^-24
 * round to even; NaN gives 0x7e00; -0 gives 0x8000.
 *
 * @param x The value (any float64; the name follows the usual float32 → float16 cast).
 * @returns The 16-bit pattern.
 */
export function float32ToFloat16Bits(x: number): number {
  if (Math.fround(x) === x) return float16BitsOfFloat32(x);
  if (x !== x) return 0x7e00;
  if (x === 0) return 1 / x < 0 ? 0x8000 : 0;
  const sign = x < 0 ? 0x8000 : 0;
  const bits = roundMagnitude(Math.abs(x), 10, -14, 15);
  return sign | (bits >= 0x7c00 ? 0x7c00 : bits);
}

/**
 * Decodes IEEE binary16 bits to a number (exact).
 *
 * @param bits The 16-bit pattern (higher bits are ignored).
 * @returns The value, with -0, ±Infinity and NaN as encoded.
 */
export function float16BitsToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (0x400 + mant) * 2 ** (exp - 25);
}

/**
 * Encodes a number as bfloat16 bits with one round-to-nearest-even from float64 (never via
 * float32). Results that round past the largest finite bfloat16 give ±Inf (0x7f80 / 0xff80);
 * NaN gives 0x7fc0; -0 gives 0x8000.
 *
 * @param x The value (any float64).
 * @returns The 16-bit pattern.
 */
export function float32ToBfloat16Bits(x: number): number {
  if (Math.fround(x) === x) return bfloat16BitsOfFloat32(x);
  if (x !== x) return 0x7fc0;
  if (x === 0) return 1 / x < 0 ? 0x8000 : 0;
  const sign = x < 0 ? 0x8000 : 0;
  const bits = roundMagnitude(Math.abs(x), 7, -126, 127);
  return sign | (bits >= 0x7f80 ? 0x7f80 : bits);
}

/**
 * Decodes bfloat16 bits to a number (exact).
 *
 * @param bits The 16-bit pattern (higher bits are ignored).
 * @returns The value, with -0, ±Infinity and NaN as encoded.
 */
export function bfloat16BitsToNumber(bits: number): number {
  SCRATCH_F32_U32[0] = (bits & 0xffff) << 16;
  return SCRATCH_F32[0];
}

/**
 * Encodes a number as OCP float8 e4m3fn bits (bias 7, no infinities) with one
 * round-to-nearest-even from float64. Saturating: any |x| > 448, Infinity included, gives
 * ±448 (0x7e / 0xfe). Subnormals step by 2^-9; NaN gives 0x7f; -0 gives 0x80.
 *
 * @param x The value (any float64).
 * @returns The 8-bit pattern.
 */
export function float32ToFloat8e4m3Bits(x: number): number {
  if (Math.fround(x) === x) return float8e4m3BitsOfFloat32(x);
  if (x !== x) return 0x7f;
  if (x === 0) return 1 / x < 0 ? 0x80 : 0;
  const sign = x < 0 ? 0x80 : 0;
  const bits = roundMagnitude(Math.abs(x), 3, -6, 8);
  return sign | (bits >= 0x7f ? 0x7e : bits);
}

/**
 * Decodes OCP float8 e4m3fn bits to a number (exact). 0x7f and 0xff are NaN.
 *
 * @param bits The 8-bit pattern (higher bits are ignored).
 * @returns The value.
 */
export function float8e4m3BitsToNumber(bits: number): number {
  const sign = bits & 0x80 ? -1 : 1;
  const exp = (bits >>> 3) & 0xf;
  const mant = bits & 0x7;
  if (exp === 0) return sign * mant * 2 ** -9;
  if (exp === 0xf && mant === 0x7) return NaN;
  return sign * (8 + mant) * 2 ** (exp - 10);
}

// Decode tables, built on first use.
let float16Table: Float32Array | undefined;
let float8e4m3Table: Float32Array | undefined;

function getFloat16Table(): Float32Array {
  if (!float16Table) {
    float16Table = new Float32Array(65536);
    for (let b = 0; b < 65536; b++) float16Table[b] = float16BitsToNumber(b);
  }
  return float16Table;
}

function getFloat8e4m3Table(): Float32Array {
  if (!float8e4m3Table) {
    float8e4m3Table = new Float32Array(256);
    for (let b = 0; b < 256; b++) float8e4m3Table[b] = float8e4m3BitsToNumber(b);
  }
  return float8e4m3Table;
}

// ---------------------------------------------------------------------------------------------
// Storage.

function checkLength(op: string, argument: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new TensorqError("invalid element count", {
      op,
      kind: "argument",
      argument,
      expected: "a non-negative integer",
      actual: String(n),
    });
  }
}

function storageName(dtype: DType): string {
  switch (dtype) {
    case "float32":
      return "Float32Array";
    case "float16":
    case "bfloat16":
      return "Uint16Array";
    case "float8e4m3":
    case "bool":
      return "Uint8Array";
    case "int4":
    case "int8":
      return "Int8Array";
    case "int32":
      return "Int32Array";
    case "int64":
      return "BigInt64Array";
  }
}

function isStorageOf(dtype: DType, storage: unknown): boolean {
  switch (dtype) {
    case "float32":
      return storage instanceof Float32Array;
    case "float16":
    case "bfloat16":
      return storage instanceof Uint16Array;
    case "float8e4m3":
    case "bool":
      return storage instanceof Uint8Array;
    case "int4":
    case "int8":
      return storage instanceof Int8Array;
    case "int32":
      return storage instanceof Int32Array;
    case "int64":
      return storage instanceof BigInt64Array;
  }
}

function checkStorage(
  op: string,
  argument: string,
  dtype: DType,
  storage: StorageArray,
  n?: number,
): void {
  if (!isStorageOf(dtype, storage)) {
    throw new TensorqError(`storage does not match dtype ${dtype}`, {
      op,
      kind: "dtype",
      argument,
      expected: storageName(dtype),
      actual: (storage as { constructor?: { name?: string } })?.constructor?.name ??
        describeValue(storage),
    });
  }
  if (n !== undefined && storage.length !== n) {
    throw new TensorqError("storage length does not match", {
      op,
      kind: "argument",
      argument,
      expected: `length ${n}`,
      actual: `length ${storage.length}`,
    });
  }
}

/**
 * Allocates zeroed storage for `n` elements of `dtype` (array types per the module doc; int4
 * holds one value per element).
 *
 * @param dtype The element type.
 * @param n The element count.
 * @returns A new zero-filled storage array of length `n`.
 */
export function allocStorage(dtype: DType, n: number): StorageArray {
  checkDType("allocStorage", "dtype", dtype);
  checkLength("allocStorage", "n", n);
  switch (dtype) {
    case "float32":
      return new Float32Array(n);
    case "float16":
    case "bfloat16":
      return new Uint16Array(n);
    case "float8e4m3":
    case "bool":
      return new Uint8Array(n);
    case "int4":
    case "int8":
      return new Int8Array(n);
    case "int32":
      return new Int32Array(n);
    case "int64":
      return new BigInt64Array(n);
  }
}

function encodeInt(
  values: ArrayLike<number>,
  out: Int8Array | Int32Array,
  min: number,
  max: number,
): void {
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    out[i] = v !== v ? 0 : v <= min ? min : v >= max ? max : Math.trunc(v);
  }
}

const INT64_MAX = 9223372036854775807n;
const INT64_MIN = -9223372036854775808n;

/**
 * Converts numbers to `dtype` storage with the dtype's rounding.
 *
 * - float32: round to nearest even (Float32Array); float16, bfloat16, float8e4m3: one
 *   round-to-nearest-even from float64 via {@link float32ToFloat16Bits},
 *   {@link float32ToBfloat16Bits} and {@link float32ToFloat8e4m3Bits} (float16/bfloat16
 *   overflow to ±Inf, float8e4m3 saturates to ±448).
 * - Integer dtypes (the cast rule): truncate toward zero, saturate to the dtype's range
 *   (±Infinity included), NaN becomes 0. int64 values are written to a BigInt64Array.
 * - bool: 0 (and -0) becomes 0; anything else, NaN included, becomes 1.
 *
 * @param dtype The element type.
 * @param values The numbers to encode.
 * @param out Optional destination; must be `dtype`'s storage type with `values.length`
 *   elements.
 * @returns `out`, or new storage when `out` is omitted.
 */
export function encode(
  dtype: DType,
  values: ArrayLike<number>,
  out?: StorageArray,
): StorageArray {
  checkDType("encode", "dtype", dtype);
  const n = values.length;
  if (out !== undefined) checkStorage("encode", "out", dtype, out, n);
  const target = out ?? allocStorage(dtype, n);
  switch (dtype) {
    case "float32":
      (target as Float32Array).set(values);
      break;
    case "float16": {
      const dst = target as Uint16Array;
      if (HAS_FLOAT16_ARRAY) {
        // The engine's conversion rounds each float64 once, to nearest even (ECMA-262
        // ToFloat16); NaNs are made canonical (0x7e00) afterwards.
        const half = new Float16Array(dst.buffer, dst.byteOffset, n);
        half.set(values);
        for (let i = 0; i < n; i++) if ((dst[i] & 0x7fff) > 0x7c00) dst[i] = 0x7e00;
      } else {
        for (let i = 0; i < n; i++) dst[i] = float32ToFloat16Bits(values[i]);
      }
      break;
    }
    case "bfloat16": {
      const dst = target as Uint16Array;
      const f32 = new Float32Array(1);
      const u32 = new Uint32Array(f32.buffer);
      for (let i = 0; i < n; i++) {
        const v = values[i];
        f32[0] = v;
        // Fast path: a float32 value rounds to bfloat16 exactly by integer RNE on its bits.
        // Anything else (float64 inputs) takes the single-rounding general path.
        if (f32[0] === v && (u32[0] & 0x7f800000) !== 0x7f800000) {
          const bits = u32[0];
          dst[i] = (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
        } else dst[i] = float32ToBfloat16Bits(v);
      }
      break;
    }
    case "float8e4m3": {
      const dst = target as Uint8Array;
      for (let i = 0; i < n; i++) dst[i] = float32ToFloat8e4m3Bits(values[i]);
      break;
    }
    case "int4":
      encodeInt(values, target as Int8Array, -8, 7);
      break;
    case "int8":
      encodeInt(values, target as Int8Array, -128, 127);
      break;
    case "int32":
      encodeInt(values, target as Int32Array, -2147483648, 2147483647);
      break;
    case "int64": {
      const dst = target as BigInt64Array;
      for (let i = 0; i < n; i++) {
        const v = values[i];
        dst[i] = v !== v
          ? 0n
          : v >= TWO_63
          ? INT64_MAX
          : v <= -TWO_63
          ? INT64_MIN
          : BigInt(Math.trunc(v));
      }
      break;
    }
    case "bool": {
      const dst = target as Uint8Array;
      for (let i = 0; i < n; i++) dst[i] = values[i] === 0 ? 0 : 1;
      break;
    }
  }
  return target;
}

/**
 * A numeric view of `dtype` storage for computation.
 *
 * float32 returns the same Float32Array (no copy); float16, bfloat16 and float8e4m3 return a
 * new Float32Array (exact); int4/int8 return the Int8Array itself, int32 the Int32Array
 * itself, bool the Uint8Array itself; int64 returns a new Float64Array (exact up to 2^53).
 *
 * @param dtype The element type.
 * @param storage Storage of that dtype.
 * @returns The values as a {@link HostArray}.
 */
export function decode(dtype: DType, storage: StorageArray): HostArray {
  checkDType("decode", "dtype", dtype);
  checkStorage("decode", "storage", dtype, storage);
  switch (dtype) {
    case "float32":
      return storage as Float32Array;
    case "float16": {
      const src = storage as Uint16Array;
      const table = getFloat16Table();
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
      return out;
    }
    case "bfloat16": {
      // bfloat16 is the top half of a float32: a shift is exact and faster than a table.
      const src = storage as Uint16Array;
      const out = new Float32Array(src.length);
      const outBits = new Uint32Array(out.buffer);
      for (let i = 0; i < src.length; i++) outBits[i] = src[i] << 16;
      return out;
    }
    case "float8e4m3": {
      const src = storage as Uint8Array;
      const table = getFloat8e4m3Table();
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
      return out;
    }
    case "int4":
    case "int8":
    case "int32":
    case "bool":
      return storage as Int8Array | Int32Array | Uint8Array;
    case "int64": {
      const src = storage as BigInt64Array;
      const out = new Float64Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = Number(src[i]);
      return out;
    }
  }
}

/**
 * Packs int4 values two per byte: element 2i in the low nibble, 2i+1 in the high nibble, as
 * two's complement nibbles; an odd length is padded with 0. Values are taken modulo 16, so
 * pass values already in [-8, 7] (see {@link encode}).
 *
 * @param values One int4 value per element.
 * @returns `ceil(values.length / 2)` packed bytes.
 */
export function packInt4(values: Int8Array): Uint8Array {
  const n = values.length;
  const out = new Uint8Array((n + 1) >>> 1);
  const pairs = n >>> 1;
  for (let i = 0; i < pairs; i++) {
    out[i] = (values[2 * i] & 0xf) | ((values[2 * i + 1] & 0xf) << 4);
  }
  if (n & 1) out[pairs] = values[n - 1] & 0xf;
  return out;
}

/**
 * Unpacks int4 values packed by {@link packInt4}, sign-extending each nibble.
 *
 * @param bytes Packed bytes (at least `ceil(n / 2)`).
 * @param n The number of values to unpack.
 * @returns One value in [-8, 7] per element.
 */
export function unpackInt4(bytes: Uint8Array, n: number): Int8Array {
  checkLength("unpackInt4", "n", n);
  const need = Math.ceil(n / 2);
  if (bytes.length < need) {
    throw new TensorqError("too few bytes for the int4 count", {
      op: "unpackInt4",
      kind: "argument",
      argument: "bytes",
      expected: `at least ${need} bytes for ${n} values`,
      actual: `${bytes.length} bytes`,
    });
  }
  const out = new Int8Array(n);
  for (let i = 0; i < n; i++) {
    const byte = bytes[i >>> 1];
    const nibble = i & 1 ? byte >>> 4 : byte & 0xf;
    out[i] = (nibble << 28) >> 28;
  }
  return out;
}

/**
 * Bytes needed to store `n` elements of `dtype` in packed form (int4: `ceil(n / 2)`).
 *
 * @param dtype The element type.
 * @param n The element count.
 * @returns The byte count.
 */
export function storageByteLength(dtype: DType, n: number): number {
  checkDType("storageByteLength", "dtype", dtype);
  checkLength("storageByteLength", "n", n);
  return dtype === "int4" ? Math.ceil(n / 2) : n * DTYPE_INFO[dtype].itemSize;
}

/** Reverses each `itemSize`-byte group in place (little-endian ↔ host order). */
function swapBytes(bytes: Uint8Array, itemSize: number): void {
  for (let i = 0; i < bytes.length; i += itemSize) bytes.subarray(i, i + itemSize).reverse();
}

/**
 * The little-endian bytes of `dtype` storage, as a checkpoint or the GPU holds them; int4 is
 * packed with {@link packInt4}. On little-endian hosts (all Deno targets) the result is a view
 * over the same memory for every dtype but int4, so write it out before changing the storage.
 *
 * @param dtype The element type.
 * @param storage Storage of that dtype.
 * @returns `storageByteLength(dtype, storage.length)` bytes.
 */
export function toStorageBytes(dtype: DType, storage: StorageArray): Uint8Array {
  checkDType("toStorageBytes", "dtype", dtype);
  checkStorage("toStorageBytes", "storage", dtype, storage);
  if (dtype === "int4") return packInt4(storage as Int8Array);
  const view = new Uint8Array(storage.buffer, storage.byteOffset, storage.byteLength);
  const itemSize = storage.BYTES_PER_ELEMENT;
  if (LITTLE_ENDIAN || itemSize === 1) return view;
  const copy = view.slice();
  swapBytes(copy, itemSize);
  return copy;
}

/**
 * Builds `dtype` storage from little-endian bytes (the inverse of {@link toStorageBytes}). The
 * bytes are copied, so their alignment and later changes never matter.
 *
 * @param dtype The element type.
 * @param bytes Exactly `storageByteLength(dtype, n)` bytes.
 * @param n The element count.
 * @returns New storage of length `n`.
 */
export function fromStorageBytes(dtype: DType, bytes: Uint8Array, n: number): StorageArray {
  checkDType("fromStorageBytes", "dtype", dtype);
  checkLength("fromStorageBytes", "n", n);
  const need = storageByteLength(dtype, n);
  if (bytes.length !== need) {
    throw new TensorqError("byte length does not match the element count", {
      op: "fromStorageBytes",
      kind: "argument",
      argument: "bytes",
      expected: `${need} bytes for ${n} ${dtype} values`,
      actual: `${bytes.length} bytes`,
    });
  }
  if (dtype === "int4") return unpackInt4(bytes, n);
  const out = allocStorage(dtype, n);
  const outBytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  outBytes.set(bytes);
  if (!LITTLE_ENDIAN && out.BYTES_PER_ELEMENT > 1) swapBytes(outBytes, out.BYTES_PER_ELEMENT);
  return out;
}

/** Drops trailing zeros of a fraction (and a bare trailing point). */
function trimFraction(digits: string): string {
  return digits.includes(".") ? digits.replace(/0+$/, "").replace(/\.$/, "") : digits;
}

/**
 * True when the number `v` is a value of `dtype` as is: any number for float dtypes; for
 * integer dtypes an integer in range (int64: [-2^63, 2^63), as 2^63 itself is a float64);
 * for bool 0 or 1.
 */
export function isRepresentable(dtype: DType, v: number): boolean {
  if (dtype === "bool") return v === 0 || v === 1;
  const info = DTYPE_INFO[dtype];
  if (!info.isInt) return true;
  return Number.isInteger(v) && v >= info.min && (dtype === "int64" ? v < TWO_63 : v <= info.max);
}

/**
 * `x` as a float64 of at most 26 significant bits, the last one sticky (set when any bit below
 * it is). `Number(x)` rounds to 53 bits, and a narrower float type would then round a second
 * time; this float64 holds the value exactly enough that any type of ≤ 24 bits rounds it once,
 * correctly.
 */
export function stickyNumber(x: bigint): number {
  const negative = x < 0n;
  let m = negative ? -x : x;
  const bits = m.toString(2).length;
  if (bits <= 26) return Number(x);
  const shift = BigInt(bits - 26);
  const low = m & ((1n << shift) - 1n);
  m >>= shift;
  if (low !== 0n) m |= 1n;
  const v = Number(m) * 2 ** Number(shift);
  return negative ? -v : v;
}

/**
 * Formats one value for printing. Floats use 4 significant digits like C `%.4g` (`0.1235`,
 * `1.235e+05`); integers print in full; bool prints `true`/`false`; NaN and infinities print
 * as `nan`, `inf`, `-inf`. Exact decimal ties (`1234.5`) round away from zero.
 *
 * @param dtype The element type the value belongs to.
 * @param v The value (as decoded by {@link decode}).
 * @returns The text.
 */
export function formatNumber(dtype: DType, v: number): string {
  checkDType("formatNumber", "dtype", dtype);
  if (dtype === "bool") return v !== 0 ? "true" : "false";
  if (v !== v) return "nan";
  if (v === Infinity) return "inf";
  if (v === -Infinity) return "-inf";
  if (!DTYPE_INFO[dtype].isFloat) {
    return Number.isInteger(v) ? BigInt(v).toString() : String(v);
  }
  if (v === 0) return 1 / v < 0 ? "-0" : "0";
  const sci = v.toExponential(3); // rounds to 4 significant digits first, as %g does
  const ePos = sci.indexOf("e");
  const exp = Number(sci.slice(ePos + 1));
  if (exp >= -4 && exp < 4) return trimFraction(v.toFixed(3 - exp));
  const mantissa = trimFraction(sci.slice(0, ePos));
  const expDigits = String(Math.abs(exp)).padStart(2, "0");
  return `${mantissa}e${exp < 0 ? "-" : "+"}${expDigits}`;
}

const HAS_FLOAT16_ARRAY = typeof (globalThis as { Float16Array?: unknown }).Float16Array ===
  "function";

/** Float dtypes that support arithmetic. */
export const FLOAT_DTYPES: readonly DType[] = ["float32", "float16", "bfloat16"];

/** Dtypes that support arithmetic (add, mul, comparisons, reductions). */
export const NUMERIC_DTYPES: readonly DType[] = [
  "float32",
  "float16",
  "bfloat16",
  "int8",
  "int32",
  "int64",
];
