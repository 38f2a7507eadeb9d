/**
 * CPU kernels of the shape ops (rules in lib/ops/shape.ts). Elements are moved as raw words
 * (an unsigned view of the storage of the element's width; 64-bit elements as pairs of 32-bit
 * words), so every dtype, NaN payloads included, passes through bit-exactly.
 * @module
 */
import { allocStorage, type DType, type StorageArray } from "../../dtype.ts";
import { numel, type Shape, stridesOf } from "../../shape.ts";
import { indexOutOfRangeError } from "../../ops/shape.ts";
import { type CpuKernel, registerCpuKernel } from "./backend.ts";

type Words = Uint8Array | Uint16Array | Uint32Array;

/** An unsigned view of the storage and the number of words per element (1, or 2 for 64-bit). */
function wordsOf(storage: StorageArray): { words: Words; per: number } {
  const { buffer, byteOffset, length } = storage;
  switch (storage.BYTES_PER_ELEMENT) {
    case 1:
      return { words: new Uint8Array(buffer, byteOffset, length), per: 1 };
    case 2:
      return { words: new Uint16Array(buffer, byteOffset, length), per: 1 };
    case 4:
      return { words: new Uint32Array(buffer, byteOffset, length), per: 1 };
    default:
      return { words: new Uint32Array(buffer, byteOffset, length * 2), per: 2 };
  }
}

/** Fresh zeroed storage of `dtype` and its word view. */
function output(dtype: DType, n: number): { storage: StorageArray; words: Words; per: number } {
  const storage = allocStorage(dtype, n);
  return { storage, ...wordsOf(storage) };
}

/** Copies `len` words from `src[from]` to `dst[to]`. */
function copyRun(dst: Words, to: number, src: Words, from: number, len: number): void {
  if (len > 16) (dst as Uint32Array).set((src as Uint32Array).subarray(from, from + len), to);
  else for (let i = 0; i < len; i++) dst[to + i] = src[from + i];
}

/**
 * The general strided copy: output element with multi-index o (row-major over `shape`) reads
 * `src[base + Σ o[d]·strides[d]]` (strides in words, may be negative or 0).
 */
function stridedCopy(
  src: Words,
  base: number,
  shape: readonly number[],
  strides: readonly number[],
  dst: Words,
): void {
  const n = numel(shape);
  if (n === 0) return;
  // Drop extent-1 dims and merge dims that are contiguous with each other.
  const dims: number[] = [];
  const steps: number[] = [];
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = dims.length - 1;
    if (last >= 0 && steps[last] === strides[d] * shape[d]) {
      dims[last] *= shape[d];
      steps[last] = strides[d];
    } else {
      dims.push(shape[d]);
      steps.push(strides[d]);
    }
  }
  if (dims.length === 0) {
    dst[0] = src[base];
    return;
  }
  const rank = dims.length;
  const inner = dims[rank - 1];
  const innerStep = steps[rank - 1];
  const counter = new Array<number>(rank - 1).fill(0);
  let from = base;
  for (let to = 0; to < n; to += inner) {
    if (innerStep === 1) copyRun(dst, to, src, from, inner);
    else for (let i = 0, s = from; i < inner; i++, s += innerStep) dst[to + i] = src[s];
    for (let d = rank - 2; d >= 0; d--) {
      from += steps[d];
      if (++counter[d] < dims[d]) break;
      from -= steps[d] * dims[d];
      counter[d] = 0;
    }
  }
}

/** Runs a strided copy over elements, expanding 64-bit elements into word pairs. */
function copyElements(
  input: StorageArray,
  dtype: DType,
  base: number,
  shape: Shape,
  strides: readonly number[],
): StorageArray {
  const src = wordsOf(input);
  const out = output(dtype, numel(shape));
  if (src.per === 1) stridedCopy(src.words, base, shape, strides, out.words);
  else {stridedCopy(src.words, base * 2, [...shape, 2], [
      ...strides.map((s) => s * 2),
      1,
    ], out.words);}
  return out.storage;
}

// A view: the same elements in the same order.
registerCpuKernel("reshape", ([x]) => x);

registerCpuKernel("permute", ([x], ctx) => {
  const axes = ctx.attrs.axes as number[];
  const inStrides = stridesOf(ctx.inputs[0].shape);
  return copyElements(x, ctx.out.dtype, 0, ctx.out.shape, axes.map((a) => inStrides[a]));
});

registerCpuKernel("expand", ([x], ctx) => {
  const src = ctx.inputs[0].shape;
  const out = ctx.out.shape;
  const inStrides = stridesOf(src);
  const lead = out.length - src.length;
  const strides = out.map((_, d) => (d < lead || src[d - lead] === 1 ? 0 : inStrides[d - lead]));
  return copyElements(x, ctx.out.dtype, 0, out, strides);
});

registerCpuKernel("slice", ([x], ctx) => {
  const starts = ctx.attrs.starts as number[];
  const steps = ctx.attrs.steps as number[];
  const inStrides = stridesOf(ctx.inputs[0].shape);
  let base = 0;
  for (let d = 0; d < starts.length; d++) base += starts[d] * inStrides[d];
  return copyElements(x, ctx.out.dtype, base, ctx.out.shape, steps.map((s, d) => s * inStrides[d]));
});

// A copy of x with src written at rows [s, s + m) of the axis (x viewed as [outer, n, inner]);
// x itself, updated in place, where the plan allows (a donated cache: no copy of the rest).
registerCpuKernel("sliceScatter", ([x, src, startValue], ctx) => {
  const axis = ctx.attrs.axis as number;
  const shape = ctx.inputs[0].shape;
  const n = shape[axis];
  const m = ctx.inputs[1].shape[axis];
  // A start tensor is clamped into range (the rule checked a number start already).
  const start = ctx.attrs.hasStartTensor
    ? Math.min(Math.max(Number(startValue[0]), 0), n - m)
    : (ctx.attrs.start as number);
  const inPlace = ctx.overwritable?.[0] === true;
  const out = inPlace ? { storage: x, ...wordsOf(x) } : output(ctx.out.dtype, numel(shape));
  if (!inPlace) copyRun(out.words, 0, wordsOf(x).words, 0, x.length * out.per);
  const rows = wordsOf(src).words;
  const outer = numel(shape.slice(0, axis));
  const inner = numel(shape.slice(axis + 1)) * out.per;
  const run = m * inner;
  for (let o = 0; o < outer; o++) copyRun(out.words, (o * n + start) * inner, rows, o * run, run);
  return out.storage;
});

registerCpuKernel("concat", (parts, ctx) => {
  const axis = ctx.attrs.axis as number;
  const out = output(ctx.out.dtype, numel(ctx.out.shape));
  const outer = numel(ctx.out.shape.slice(0, axis));
  const chunks = ctx.inputs.map((info) => numel(info.shape.slice(axis)) * out.per);
  const srcs = parts.map((p) => wordsOf(p).words);
  let to = 0;
  for (let o = 0; o < outer; o++) {
    for (let p = 0; p < srcs.length; p++) {
      copyRun(out.words, to, srcs[p], o * chunks[p], chunks[p]);
      to += chunks[p];
    }
  }
  return out.storage;
});

/**
 * Index values normalized to [0, n); throws (at evaluation) for anything outside [-n, n)
 * (gather, whose negative indices wrap) or [0, n) (embedding).
 */
function indexValues(op: string, storage: StorageArray, n: number): Int32Array {
  const count = storage.length;
  const least = op === "embedding" ? 0 : -n;
  const out = new Int32Array(count);
  const bad = (i: number, raw: bigint | number): never => {
    throw indexOutOfRangeError(op, n, raw, i);
  };
  if (storage instanceof BigInt64Array) {
    const lo = BigInt(least);
    const hi = BigInt(n);
    for (let i = 0; i < count; i++) {
      const raw = storage[i];
      if (raw < lo || raw >= hi) bad(i, raw);
      const v = Number(raw);
      out[i] = v < 0 ? v + n : v;
    }
  } else {
    const ints = storage as Int32Array;
    for (let i = 0; i < count; i++) {
      const v = ints[i];
      if (v < least || v >= n) bad(i, v);
      out[i] = v < 0 ? v + n : v;
    }
  }
  return out;
}

function gatherKernel(op: string): CpuKernel {
  return ([x, ids], ctx) => {
    const axis = ctx.attrs.axis as number;
    const shape = ctx.inputs[0].shape;
    const n = shape[axis];
    const index = indexValues(op, ids, n);
    const src = wordsOf(x);
    const out = output(ctx.out.dtype, numel(ctx.out.shape));
    const outer = numel(shape.slice(0, axis));
    const inner = numel(shape.slice(axis + 1)) * src.per;
    let to = 0;
    for (let o = 0; o < outer; o++) {
      const row = o * n * inner;
      for (let j = 0; j < index.length; j++) {
        copyRun(out.words, to, src.words, row + index[j] * inner, inner);
        to += inner;
      }
    }
    return out.storage;
  };
}

registerCpuKernel("gather", gatherKernel("gather"));
registerCpuKernel("embedding", gatherKernel("embedding"));

for (const op of ["triu", "tril"] as const) {
  registerCpuKernel(op, ([x], ctx) => {
    const k = ctx.attrs.k as number;
    const shape = ctx.out.shape;
    const rows = shape[shape.length - 2];
    const cols = shape[shape.length - 1];
    const src = wordsOf(x);
    const out = output(ctx.out.dtype, numel(shape));
    const per = src.per;
    const matrices = numel(shape.slice(0, -2));
    for (let m = 0; m < matrices; m++) {
      for (let r = 0; r < rows; r++) {
        // Kept columns: [r + k, cols) for triu, [0, r + k] for tril; the rest stays zero bits.
        const lo = op === "triu" ? Math.max(0, r + k) : 0;
        const hi = op === "triu" ? cols : Math.min(cols, r + k + 1);
        if (hi <= lo) continue;
        const at = ((m * rows + r) * cols + lo) * per;
        copyRun(out.words, at, src.words, at, (hi - lo) * per);
      }
    }
    return out.storage;
  });
}

registerCpuKernel("causalMask", (_, ctx) => {
  const offset = ctx.attrs.offset as number;
  const [queries, keys] = ctx.out.shape;
  const mask = new Uint8Array(queries * keys);
  for (let i = 0; i < queries; i++) {
    const end = Math.min(keys, Math.max(0, i + offset + 1));
    mask.fill(1, i * keys, i * keys + end);
  }
  return mask;
});
