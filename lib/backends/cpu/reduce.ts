/**
 * CPU kernels of the reductions (rules in lib/ops/reduce.ts). Values accumulate in float64
 * (int64 in BigInt, so large values stay exact) and round once to the output dtype.
 * @module
 */
import type { StorageArray } from "../../dtype.ts";
import { type Shape, stridesOf } from "../../shape.ts";
import { registerCpuKernel } from "./backend.ts";
import { outArray, read } from "./util.ts";

/** Where each output element starts in the input, and the offsets of the reduced elements. */
interface ReduceLayout {
  /** Input offset of the first reduced element of each output element. */
  bases: Int32Array;
  /** Offsets (from a base) of the reduced elements, in row-major order of the reduced axes. */
  offsets: Int32Array;
}

/** Row-major offsets of every index of the sub-shape `dims` with strides `strides`. */
function offsetsOf(dims: number[], strides: number[]): Int32Array {
  let n = 1;
  for (const d of dims) n *= d;
  const out = new Int32Array(n);
  const rank = dims.length;
  const counter = new Array<number>(rank).fill(0);
  let offset = 0;
  for (let i = 0; i < n; i++) {
    out[i] = offset;
    for (let d = rank - 1; d >= 0; d--) {
      counter[d]++;
      offset += strides[d];
      if (counter[d] < dims[d]) break;
      offset -= strides[d] * dims[d];
      counter[d] = 0;
    }
  }
  return out;
}

function layoutOf(shape: Shape, axes: readonly number[]): ReduceLayout {
  const strides = stridesOf(shape);
  const keptDims: number[] = [], keptStrides: number[] = [];
  const redDims: number[] = [], redStrides: number[] = [];
  for (let d = 0; d < shape.length; d++) {
    if (axes.includes(d)) {
      redDims.push(shape[d]);
      redStrides.push(strides[d]);
    } else {
      keptDims.push(shape[d]);
      keptStrides.push(strides[d]);
    }
  }
  return { bases: offsetsOf(keptDims, keptStrides), offsets: offsetsOf(redDims, redStrides) };
}

function axesOf(attrs: Readonly<Record<string, unknown>>): number[] {
  return attrs.axes as number[];
}

registerCpuKernel("sum", ([s], ctx) => {
  const { bases, offsets } = layoutOf(ctx.inputs[0].shape, axesOf(ctx.attrs));
  const m = bases.length, r = offsets.length;
  if (ctx.inputs[0].dtype === "int64") {
    const x = s as BigInt64Array;
    const out = new BigInt64Array(m);
    for (let o = 0; o < m; o++) {
      const base = bases[o];
      let acc = 0n;
      for (let k = 0; k < r; k++) acc += x[base + offsets[k]];
      out[o] = BigInt.asIntN(64, acc);
    }
    return out;
  }
  const x = read(ctx.inputs[0].dtype, s);
  const out = outArray(ctx.out.dtype, m);
  const v = out.values;
  if (ctx.out.dtype === "int32") {
    // int8 and int32 sums wrap modulo 2^32 (the documented overflow) at every step: a float64
    // running sum would stop being exact past 2^53 and wrap to the wrong value.
    for (let o = 0; o < m; o++) {
      const base = bases[o];
      let acc = 0;
      for (let k = 0; k < r; k++) acc = (acc + x[base + offsets[k]]) | 0;
      v[o] = acc;
    }
    return out.finish();
  }
  for (let o = 0; o < m; o++) {
    const base = bases[o];
    let acc = 0;
    for (let k = 0; k < r; k++) acc += x[base + offsets[k]];
    v[o] = acc;
  }
  return out.finish();
});

registerCpuKernel("mean", ([s], ctx) => {
  const { bases, offsets } = layoutOf(ctx.inputs[0].shape, axesOf(ctx.attrs));
  const m = bases.length, r = offsets.length;
  const x = read(ctx.inputs[0].dtype, s);
  const out = outArray(ctx.out.dtype, m);
  const v = out.values;
  for (let o = 0; o < m; o++) {
    const base = bases[o];
    let acc = 0;
    for (let k = 0; k < r; k++) acc += x[base + offsets[k]];
    v[o] = acc / r; // 0 / 0 = NaN for an empty reduction
  }
  return out.finish();
});

registerCpuKernel("var", ([s], ctx) => {
  const { bases, offsets } = layoutOf(ctx.inputs[0].shape, axesOf(ctx.attrs));
  const m = bases.length, r = offsets.length;
  const denom = r - (ctx.attrs.correction as number);
  const x = read(ctx.inputs[0].dtype, s);
  const out = outArray(ctx.out.dtype, m);
  const v = out.values;
  for (let o = 0; o < m; o++) {
    if (!(denom > 0)) {
      v[o] = NaN;
      continue;
    }
    const base = bases[o];
    let acc = 0;
    for (let k = 0; k < r; k++) acc += x[base + offsets[k]];
    const mu = acc / r;
    // Two passes: the sum of squared deviations does not cancel catastrophically.
    let sq = 0;
    for (let k = 0; k < r; k++) {
      const d = x[base + offsets[k]] - mu;
      sq += d * d;
    }
    v[o] = sq / denom;
  }
  return out.finish();
});

/**
 * Index (into `offsets`) of the first maximum (`greater`) or minimum of the elements at
 * `base + offsets[k]`; the first NaN wins.
 */
function extremeIndex<T extends number | bigint>(
  x: ArrayLike<T>,
  base: number,
  offsets: Int32Array,
  greater: boolean,
): number {
  const r = offsets.length;
  let best = 0;
  let bestValue = x[base + offsets[0]];
  if (bestValue !== bestValue) return 0;
  for (let k = 1; k < r; k++) {
    const v = x[base + offsets[k]];
    if (v !== v) return k;
    if (greater ? v > bestValue : v < bestValue) {
      best = k;
      bestValue = v;
    }
  }
  return best;
}

for (const [op, greater] of [["max", true], ["min", false]] as const) {
  registerCpuKernel(op, ([s], ctx) => {
    const { bases, offsets } = layoutOf(ctx.inputs[0].shape, axesOf(ctx.attrs));
    const m = bases.length;
    const dtype = ctx.inputs[0].dtype;
    if (dtype === "int64") {
      const x = s as BigInt64Array;
      const out = new BigInt64Array(m);
      for (let o = 0; o < m; o++) {
        out[o] = x[bases[o] + offsets[extremeIndex(x, bases[o], offsets, greater)]];
      }
      return out;
    }
    // The extreme is one of the inputs: copy its storage element, so no rounding at all.
    const x = read(dtype, s);
    const src = s as Exclude<StorageArray, BigInt64Array>;
    const out = new (src.constructor as new (n: number) => typeof src)(m);
    for (let o = 0; o < m; o++) {
      out[o] = src[bases[o] + offsets[extremeIndex(x, bases[o], offsets, greater)]];
    }
    return out;
  });
}

for (const [op, greater] of [["argmax", true], ["argmin", false]] as const) {
  registerCpuKernel(op, ([s], ctx) => {
    const { bases, offsets } = layoutOf(ctx.inputs[0].shape, axesOf(ctx.attrs));
    const m = bases.length;
    const dtype = ctx.inputs[0].dtype;
    const out = new Int32Array(m);
    if (dtype === "int64") {
      const x = s as BigInt64Array;
      for (let o = 0; o < m; o++) out[o] = extremeIndex(x, bases[o], offsets, greater);
    } else {
      const x = read(dtype, s);
      for (let o = 0; o < m; o++) out[o] = extremeIndex(x, bases[o], offsets, greater);
    }
    return out;
  });
}
