/**
 * Helpers shared by CPU kernels: output arrays with the dtype's rounding, broadcast index
 * maps, and float64 math the JS standard library lacks (erf, erfc, GELU).
 * @module
 */
import { decode, type DType, encode, type HostArray, type StorageArray } from "../../dtype.ts";
import { broadcastStrides, numel, sameShape, type Shape } from "../../shape.ts";

/** A writable numeric array for results, and how to turn it into the dtype's storage. */
export interface OutArray {
  /** Write results here (plain JS numbers; rounding happens in `finish`). */
  values: Float32Array | Float64Array | Int8Array | Int32Array | Uint8Array;
  /** Returns the storage of the result. */
  finish(): StorageArray;
}

/**
 * An output array for `dtype`. float32 results round on assignment (one rounding from the
 * float64 computation); float16/bfloat16/fp8 go through {@link encode} (one rounding);
 * int8/int32 wrap on assignment (two's complement, like C); int64 and bool via encode.
 */
export function outArray(dtype: DType, n: number): OutArray {
  switch (dtype) {
    case "float32": {
      const values = new Float32Array(n);
      return { values, finish: () => values };
    }
    case "int8":
    case "int4": {
      const values = new Int8Array(n);
      return { values, finish: () => values };
    }
    case "int32": {
      const values = new Int32Array(n);
      return { values, finish: () => values };
    }
    case "bool": {
      const values = new Uint8Array(n);
      return { values, finish: () => values };
    }
    default: {
      const values = new Float64Array(n);
      return { values, finish: () => encode(dtype, values) };
    }
  }
}

/** The numeric view of an input (no copy where the storage already is numeric). */
export function read(dtype: DType, storage: StorageArray): HostArray {
  return decode(dtype, storage);
}

/**
 * For each element of `out` (row-major), the flat index of the element of a tensor of shape
 * `shape` broadcast to `out`. Returns undefined when no mapping is needed (same shape).
 */
export function broadcastIndex(shape: Shape, out: Shape): Int32Array | undefined {
  if (sameShape(shape, out)) return undefined;
  const n = numel(out);
  const idx = new Int32Array(n);
  if (numel(shape) === 1) return idx;
  const strides = broadcastStrides(shape, out);
  const rank = out.length;
  const counter = new Array<number>(rank).fill(0);
  let offset = 0;
  for (let i = 0; i < n; i++) {
    idx[i] = offset;
    for (let d = rank - 1; d >= 0; d--) {
      counter[d]++;
      offset += strides[d];
      if (counter[d] < out[d]) break;
      offset -= strides[d] * out[d];
      counter[d] = 0;
    }
  }
  return idx;
}

/** The error function, accurate to about 1e-15 (series below 2.5, continued fraction above). */
export function erf(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const ax = Math.abs(x);
  if (ax < 2.5) {
    // erf(x) = 2/√π · e^{-x²} · Σ 2ⁿ x^{2n+1} / (1·3·…·(2n+1)): all terms positive, no cancellation.
    const x2 = ax * ax;
    let term = ax;
    let sum = ax;
    for (let n = 1; n < 200; n++) {
      term *= (2 * x2) / (2 * n + 1);
      sum += term;
      if (term < sum * 1e-17) break;
    }
    const r = (2 / Math.sqrt(Math.PI)) * Math.exp(-x2) * sum;
    return x < 0 ? -r : r;
  }
  if (ax > 6) return x < 0 ? -1 : 1;
  const tail = erfcTail(ax);
  return x < 0 ? tail - 1 : 1 - tail;
}

/** erfc(x) for x >= 2.5, to full relative precision (it underflows past x ≈ 27). */
function erfcTail(x: number): number {
  // erfc(x) = e^{-x²}/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))) by backward recurrence.
  let f = x;
  for (let k = 60; k >= 1; k--) f = x + k / 2 / f;
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}

/**
 * GELU, x · Φ(x) = ½ · x · (1 + erf(x / √2)). Below x = -3 that sum cancels (erf nears -1), so
 * the tail is ½ · x · erfc(-x / √2) there, keeping full relative precision. At -∞ it is the
 * limit, -0, not -∞ · 0.
 */
export function gelu(x: number): number {
  if (x >= -3) return 0.5 * x * (1 + erf(x / Math.SQRT2));
  if (x === -Infinity) return -0;
  const t = -x / Math.SQRT2;
  return 0.5 * x * (t >= 2.5 ? erfcTail(t) : 1 - erf(t));
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

/**
 * GELU's tanh form, ½ · x · (1 + tanh(u)) with u = √(2/π) · (x + 0.044715 x³). Below u = -3
 * (tanh nears -1) it is evaluated as x · e^{2u} / (1 + e^{2u}), the same value without the
 * cancellation. At -∞ it is the limit, -0.
 */
export function geluTanh(x: number): number {
  const u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
  if (!(u < -3)) return 0.5 * x * (1 + Math.tanh(u));
  if (x === -Infinity) return -0;
  const e = Math.exp(2 * u);
  return (x * e) / (1 + e);
}
