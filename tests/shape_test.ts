import assert from "node:assert/strict";
import { allocStorage, type DType, type StorageArray } from "../lib/dtype.ts";
import {
  causalMask,
  concat,
  embedding,
  expand,
  flatten,
  gather,
  permute,
  reshape,
  slice,
  type SliceRange,
  split,
  squeeze,
  stack,
  transpose,
  tril,
  triu,
  unsqueeze,
} from "../lib/ops/shape.ts";
import { RandomStream } from "../lib/random.ts";
import { numel } from "../lib/shape.ts";
import { arange, fromStorage, type Tensor, tensor, zeros } from "../lib/tensor.ts";
import { assertClose, assertTqError, randomValues, testOnDevices, thisLine } from "./helpers.ts";

// ---------------------------------------------------------------------------------------
// Reference indexers: each returns, per output element (row-major), the flat index of the
// source element it must hold. Values then follow as `source[map[i]]`, for float64 values and
// raw storage bits alike.

function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = i % shape[d];
    i = Math.floor(i / shape[d]);
  }
  return idx;
}

function ravel(idx: readonly number[], shape: readonly number[]): number {
  let flat = 0;
  for (let d = 0; d < shape.length; d++) flat = flat * shape[d] + idx[d];
  return flat;
}

function permuteMap(shape: number[], axes: number[]): { map: number[]; shape: number[] } {
  const out = axes.map((a) => shape[a]);
  const map = Array.from({ length: numel(out) }, (_, i) => {
    const o = unravel(i, out);
    const src = new Array<number>(shape.length);
    axes.forEach((a, d) => (src[a] = o[d]));
    return ravel(src, shape);
  });
  return { map, shape: out };
}

function expandMap(shape: number[], out: number[]): number[] {
  const lead = out.length - shape.length;
  return Array.from({ length: numel(out) }, (_, i) => {
    const o = unravel(i, out);
    return ravel(shape.map((e, d) => (e === 1 ? 0 : o[d + lead])), shape);
  });
}

/** Indices one Python slice selects, by filtering 0..n-1 (not by the count formula). */
function pySliceIndices(n: number, range: SliceRange | undefined): number[] | number {
  if (range === null || range === undefined) return Array.from({ length: n }, (_, i) => i);
  if (typeof range === "number") return range < 0 ? range + n : range;
  const [start, stop, step] = range;
  const s = step ?? 1;
  const norm = (v: number, lo: number, hi: number) => Math.min(Math.max(v < 0 ? v + n : v, lo), hi);
  const all = Array.from({ length: n }, (_, i) => i);
  if (s > 0) {
    const lo = start == null ? 0 : norm(start, 0, n);
    const hi = stop == null ? n : norm(stop, 0, n);
    return all.filter((i) => i >= lo && i < hi && (i - lo) % s === 0);
  }
  const hi = start == null ? n - 1 : norm(start, -1, n - 1);
  const lo = stop == null ? -1 : norm(stop, -1, n - 1);
  return all.filter((i) => i <= hi && i > lo && (hi - i) % -s === 0).reverse();
}

function sliceMap(shape: number[], ranges: SliceRange[]): { map: number[]; shape: number[] } {
  const per = shape.map((n, d) => pySliceIndices(n, ranges[d]));
  const lists = per.map((p) => (typeof p === "number" ? [p] : p));
  const full = lists.map((l) => l.length);
  const map = Array.from({ length: numel(full) }, (_, i) => {
    const o = unravel(i, full);
    return ravel(o.map((j, d) => lists[d][j]), shape);
  });
  return { map, shape: per.flatMap((p) => (typeof p === "number" ? [] : [p.length])) };
}

function gatherMap(shape: number[], indices: number[], idxShape: number[], axis: number) {
  const n = shape[axis];
  const out = [...shape.slice(0, axis), ...idxShape, ...shape.slice(axis + 1)];
  const map = Array.from({ length: numel(out) }, (_, i) => {
    const o = unravel(i, out);
    const j = indices[ravel(o.slice(axis, axis + idxShape.length), idxShape)];
    return ravel(
      [...o.slice(0, axis), j < 0 ? j + n : j, ...o.slice(axis + idxShape.length)],
      shape,
    );
  });
  return { map, shape: out };
}

/** For concat: per output element, [part, flat index in that part]. */
function concatMap(shapes: number[][], axis: number): { map: [number, number][]; shape: number[] } {
  const out = [...shapes[0]];
  out[axis] = shapes.reduce((s, sh) => s + sh[axis], 0);
  const map = Array.from({ length: numel(out) }, (_, i): [number, number] => {
    const o = unravel(i, out);
    let j = o[axis];
    let p = 0;
    while (j >= shapes[p][axis]) j -= shapes[p++][axis];
    const src = [...o];
    src[axis] = j;
    return [p, ravel(src, shapes[p])];
  });
  return { map, shape: out };
}

/** For triu/tril: the source index where kept, -1 where zero. */
function triangleMap(shape: number[], k: number, upper: boolean): number[] {
  return Array.from({ length: numel(shape) }, (_, i) => {
    const o = unravel(i, shape);
    const diff = o[o.length - 1] - o[o.length - 2];
    return (upper ? diff >= k : diff <= k) ? i : -1;
  });
}

/** Seeded non-zero float32 values (as float64) and the matching tensor. */
function randomTensor(shape: number[], seed: number, device: string): [Float64Array, Tensor] {
  const v = randomValues(numel(shape), seed).map((x) => Math.fround(x === 0 ? 1 : x));
  return [v, tensor(Float32Array.from(v), { shape, device })];
}

function valuesOf(t: Tensor): number[] {
  return Array.from(t.dataSync() as Float32Array);
}

/** Shape ops are exact: compare with zero tolerance. */
function assertExact(t: Tensor, shape: number[], expected: ArrayLike<number>, message?: string) {
  assert.deepEqual(t.shape, shape, `${message ?? ""} shape`);
  assertClose(valuesOf(t), expected, { rtol: 0, atol: 0, message });
}

/** Random storage bits for any dtype (NaN payloads, negative zeros and all). */
function randomStorage(dtype: DType, n: number, seed: number): StorageArray {
  const s = new RandomStream(seed);
  const out = allocStorage(dtype, n);
  for (let i = 0; i < n; i++) {
    const r = s.nextUint32();
    if (out instanceof BigInt64Array) {
      out[i] = (BigInt(r) << 32n | BigInt(s.nextUint32())) - (1n << 63n);
    } else if (dtype === "int4") out[i] = (r & 15) - 8;
    else if (dtype === "bool") out[i] = r & 1;
    else if (out instanceof Int32Array) out[i] = r | 0;
    else if (dtype === "float32") new Uint32Array(out.buffer)[i] = r;
    else out[i] = r & (out.BYTES_PER_ELEMENT === 1 ? 0xff : 0xffff);
  }
  return out;
}

/** Raw storage words as strings (bigint-safe, NaN-payload-safe) for exact comparison. */
function bits(dtype: DType, storage: StorageArray): string[] {
  if (dtype === "float32") {
    return Array.from(new Uint32Array(storage.buffer, storage.byteOffset, storage.length), String);
  }
  return Array.from(storage as ArrayLike<number | bigint>, String);
}

function pick(dtype: DType, src: StorageArray, map: number[]): string[] {
  const b = bits(dtype, src);
  return map.map((j) => (j < 0 ? "0" : b[j]));
}

// ---------------------------------------------------------------------------------------
// Hand-computed values

testOnDevices("reshape, flatten, squeeze, unsqueeze: shapes and row-major order", (device) => {
  const x = arange(6, undefined, 1, { device }).add(1); // [1..6]
  assertExact(x.reshape([2, 3]), [2, 3], [1, 2, 3, 4, 5, 6]);
  assertExact(x.reshape([3, -1]), [3, 2], [1, 2, 3, 4, 5, 6]);
  assertExact(reshape(x, [-1]), [6], [1, 2, 3, 4, 5, 6]);
  const y = x.reshape([1, 2, 1, 3]);
  assert.deepEqual(squeeze(y).shape, [2, 3]);
  assert.deepEqual(y.squeeze(-2).shape, [1, 2, 3]);
  assert.deepEqual(y.squeeze([0, 2]).shape, [2, 3]);
  assert.deepEqual(x.unsqueeze(0).shape, [1, 6]);
  assert.deepEqual(x.unsqueeze(-1).shape, [6, 1]);
  assert.deepEqual(unsqueeze(y, -3).shape, [1, 2, 1, 1, 3]);
  assert.deepEqual(flatten(y).shape, [6]);
  assert.deepEqual(flatten(y, 1, 2).shape, [1, 2, 3]);
  assert.deepEqual(y.flatten(-2).shape, [1, 2, 3]);
  assertExact(flatten(x.reshape([2, 3]), 0, 1), [6], [1, 2, 3, 4, 5, 6]);
});

testOnDevices("permute and transpose: hand values", (device) => {
  const x = tensor([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [11, 12]]], { device }); // [2,3,2]
  assertExact(x.permute([2, 0, 1]), [2, 2, 3], [1, 3, 5, 7, 9, 11, 2, 4, 6, 8, 10, 12]);
  assertExact(permute(x, [-1, 1, 0]), [2, 3, 2], [1, 7, 3, 9, 5, 11, 2, 8, 4, 10, 6, 12]);
  assertExact(x.transpose(), [2, 2, 3], [1, 3, 5, 2, 4, 6, 7, 9, 11, 8, 10, 12]);
  assertExact(transpose(x, 0, -2), [3, 2, 2], [1, 2, 7, 8, 3, 4, 9, 10, 5, 6, 11, 12]);
  assertExact(x.permute([0, 1, 2]), [2, 3, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
});

testOnDevices("permute that only moves extents of 1 is a view, not a copy", (device) => {
  const v = Array.from({ length: 2 * 3 * 4 }, (_, i) => i + 1);
  const x = tensor(v, { shape: [2, 1, 3, 4], device });
  // [B, 1, H, D] → [B, H, 1, D] (a decode step's heads): same element order.
  const heads = x.permute([0, 2, 1, 3]);
  assert.equal(heads.node.op, "reshape");
  assertExact(heads, [2, 3, 1, 4], v);
  assertExact(x.permute([1, 0, 2, 3]), [1, 2, 3, 4], v);
  // Reordering extents > 1 still copies.
  const moved = x.permute([0, 3, 1, 2]);
  assert.equal(moved.node.op, "permute");
  const ref = permuteMap([2, 1, 3, 4], [0, 3, 1, 2]);
  assertExact(moved, ref.shape, ref.map.map((j) => v[j]));
});

testOnDevices("expand: hand values, -1 keeps, new leading dims", (device) => {
  const col = tensor([[1], [2]], { device });
  assertExact(col.expand([2, 3]), [2, 3], [1, 1, 1, 2, 2, 2]);
  assertExact(expand(col, [2, -1, 2]), [2, 2, 2], [1, 1, 2, 2, 1, 1, 2, 2]);
  assertExact(tensor([1, 2, 3], { device }).expand([2, 3]), [2, 3], [1, 2, 3, 1, 2, 3]);
  assertExact(tensor(5, { device }).expand([2, 2]), [2, 2], [5, 5, 5, 5]);
  assertExact(col.expand([2, 0]), [2, 0], []);
});

testOnDevices("slice: NumPy values on 1-D, incl. negative steps and clamping", (device) => {
  const x = arange(10, undefined, 1, { device });
  // Expected lists from NumPy 2 (a = np.arange(10); a[start:stop:step]).
  const cases: [SliceRange, number[]][] = [
    [[null, null, -1], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]],
    [[8, 2, -2], [8, 6, 4]],
    [[-3], [7, 8, 9]],
    [[-100, 100], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]],
    [[100, -100, -1], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]],
    [[5, null, -3], [5, 2]],
    [[null, -12, -1], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]],
    [[-1, -11, -4], [9, 5, 1]],
    [[3, 3], []],
    [[7, 2], []],
    [[2, 7, 3], [2, 5]],
    [[-2, null, -1], [8, 7, 6, 5, 4, 3, 2, 1, 0]],
    [[12, null, -1], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]],
    [[null, null, 4], [0, 4, 8]],
    [[-12, 3], [0, 1, 2]],
    [[], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]],
  ];
  for (const [range, expected] of cases) {
    assertExact(x.slice([range]), [expected.length], expected, JSON.stringify(range));
  }
  assertExact(x.slice([-1]), [], [9]);
  assertExact(x.slice([]), [10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
});

testOnDevices("slice: NumPy values on 2-D, integer indices drop dims", (device) => {
  const b = arange(20, undefined, 1, { device }).reshape([4, 5]);
  // b[::-2, 3:-6:-1], b[-1, ::-2], b[1:100, -1] from NumPy.
  assertExact(b.slice([[null, null, -2], [3, -6, -1]]), [2, 4], [18, 17, 16, 15, 8, 7, 6, 5]);
  assertExact(slice(b, [-1, [null, null, -2]]), [3], [19, 17, 15]);
  assertExact(b.slice([[1, 100], -1]), [3], [9, 14, 19]);
  assertExact(b.slice([2]), [5], [10, 11, 12, 13, 14]);
  assertExact(b.slice([1, 2]), [], [7]);
  assertExact(b.slice([null, [1, 1]]), [4, 0], []);
});

testOnDevices("concat, stack, split: hand values", (device) => {
  const a = tensor([[1, 2], [3, 4]], { device });
  const b = tensor([[5, 6]], { device });
  assertExact(concat([a, b]), [3, 2], [1, 2, 3, 4, 5, 6]);
  assertExact(concat([a, a], -1), [2, 4], [1, 2, 1, 2, 3, 4, 3, 4]);
  assertExact(concat([a]), [2, 2], [1, 2, 3, 4]);
  assertExact(concat([zeros([0, 2], { device }), b, zeros([0, 2], { device })]), [1, 2], [5, 6]);
  assertExact(stack([a, a.mul(10)]), [2, 2, 2], [1, 2, 3, 4, 10, 20, 30, 40]);
  assertExact(stack([a, a.mul(10)], -1), [2, 2, 2], [1, 10, 2, 20, 3, 30, 4, 40]);
  assertExact(stack([a, a.mul(10)], 1), [2, 2, 2], [1, 2, 10, 20, 3, 4, 30, 40]);
  const x = arange(12, undefined, 1, { device }).reshape([2, 6]);
  const thirds = x.split(3, 1);
  assert.equal(thirds.length, 3);
  assertExact(thirds[0], [2, 2], [0, 1, 6, 7]);
  assertExact(thirds[2], [2, 2], [4, 5, 10, 11]);
  const parts = split(x, [1, 0, 5], -1);
  assertExact(parts[0], [2, 1], [0, 6]);
  assertExact(parts[1], [2, 0], []);
  assertExact(parts[2], [2, 5], [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]);
  assertExact(split(x, 2)[1], [1, 6], [6, 7, 8, 9, 10, 11]);
});

testOnDevices("gather and embedding: hand values, gather's negative indices wrap", (device) => {
  const x = tensor([[1, 2, 3], [4, 5, 6]], { device });
  const idx32 = tensor([2, -3, 0], { dtype: "int32", device });
  assertExact(x.gather(idx32, 1), [2, 3], [3, 1, 1, 6, 4, 4]);
  const idx64 = tensor([[1], [-1]], { dtype: "int64", device });
  assertExact(gather(x, idx64), [2, 1, 3], [4, 5, 6, 4, 5, 6]);
  assertExact(gather(x, tensor(1, { dtype: "int32", device }), -1), [2], [2, 5]);
  const weight = tensor([[0, 0.5], [1, 1.5], [2, 2.5]], { device });
  const ids = tensor([[2, 0], [1, 2]], { dtype: "int64", device });
  assertExact(embedding(ids, weight), [2, 2, 2], [2, 2.5, 0, 0.5, 1, 1.5, 2, 2.5]);
  assertExact(embedding(tensor([1], { dtype: "int32", device }), weight), [1, 2], [1, 1.5]);
});

testOnDevices("triu, tril: hand values with offsets and batches", (device) => {
  const x = arange(1, 13, 1, { device }).reshape([3, 4]);
  assertExact(triu(x), [3, 4], [1, 2, 3, 4, 0, 6, 7, 8, 0, 0, 11, 12]);
  assertExact(triu(x, 1), [3, 4], [0, 2, 3, 4, 0, 0, 7, 8, 0, 0, 0, 12]);
  assertExact(triu(x, -1), [3, 4], [1, 2, 3, 4, 5, 6, 7, 8, 0, 10, 11, 12]);
  assertExact(tril(x), [3, 4], [1, 0, 0, 0, 5, 6, 0, 0, 9, 10, 11, 0]);
  assertExact(tril(x, 2), [3, 4], [1, 2, 3, 0, 5, 6, 7, 8, 9, 10, 11, 12]);
  assertExact(tril(x, -2), [3, 4], [0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0]);
  assertExact(tril(x, 9), [3, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  assertExact(triu(x, 9), [3, 4], new Array(12).fill(0));
  const batch = arange(1, 9, 1, { device }).reshape([2, 2, 2]);
  assertExact(tril(batch), [2, 2, 2], [1, 0, 3, 4, 5, 0, 7, 8]);
  const b = tensor([[true, true], [true, true]], { device });
  assert.deepEqual(triu(b).toArray(), [[true, true], [false, true]]);
  const i = tensor([[1, 2], [3, 4]], { dtype: "int64", device });
  assert.deepEqual(Array.from(tril(i).dataSync() as BigInt64Array), [1n, 0n, 3n, 4n]);
});

testOnDevices("causalMask: square, with a cache of past keys, explicit offset", (device) => {
  const m = causalMask(3, undefined, { device });
  assert.equal(m.dtype, "bool");
  assert.equal(m.device, device === "cuda" ? "cuda:0" : device);
  assert.deepEqual(m.toArray(), [[true, false, false], [true, true, false], [true, true, true]]);
  // Two new queries after 2 cached keys: offset 2 by default.
  assert.deepEqual(causalMask(2, 4, { device }).toArray(), [
    [true, true, true, false],
    [true, true, true, true],
  ]);
  assert.deepEqual(causalMask(1, 5, { device }).toArray(), [[true, true, true, true, true]]);
  assert.deepEqual(causalMask(2, 3, { device, offset: 0 }).toArray(), [
    [true, false, false],
    [true, true, false],
  ]);
  assert.deepEqual(causalMask(2, 2, { device, offset: -1 }).toArray(), [
    [false, false],
    [true, false],
  ]);
  assert.deepEqual(causalMask(0, 3, { device }).shape, [0, 3]);
});

// ---------------------------------------------------------------------------------------
// Against the reference indexers on seeded random non-zero inputs (exact: rtol 0, atol 0)

testOnDevices("permute, transpose, expand match the reference on random inputs", (device) => {
  const shape = [3, 4, 5];
  const [v, x] = randomTensor(shape, 1, device);
  const perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
  for (const axes of perms) {
    const ref = permuteMap(shape, axes);
    assertExact(x.permute(axes), ref.shape, ref.map.map((j) => v[j]), `permute ${axes}`);
  }
  const shape4 = [2, 3, 1, 4];
  const [v4, x4] = randomTensor(shape4, 2, device);
  const ref4 = permuteMap(shape4, [3, 1, 0, 2]);
  assertExact(x4.permute([-1, 1, 0, -2]), ref4.shape, ref4.map.map((j) => v4[j]));
  const refT = permuteMap(shape4, [0, 3, 2, 1]);
  assertExact(x4.transpose(1, -1), refT.shape, refT.map.map((j) => v4[j]));
  for (const out of [[2, 3, 6, 4], [5, 2, 3, 3, 4], [2, -1, 2, 4]]) {
    const resolved = out.map((d, i) => (d === -1 ? shape4[i - out.length + 4] : d));
    const map = expandMap(shape4, resolved);
    assertExact(x4.expand(out), resolved, map.map((j) => v4[j]), `expand ${out}`);
  }
});

testOnDevices("slice matches the reference on random inputs and ranges", (device) => {
  const shape = [5, 7, 6];
  const [v, x] = randomTensor(shape, 3, device);
  const s = new RandomStream(4);
  const int = (lo: number, hi: number) => lo + Math.floor(s.uniform() * (hi - lo + 1));
  const bound = (n: number) => (s.uniform() < 0.2 ? null : int(-n - 3, n + 3));
  for (let trial = 0; trial < 200; trial++) {
    const ranges: SliceRange[] = shape.slice(0, int(0, 3)).map((n): SliceRange => {
      const kind = s.uniform();
      if (kind < 0.15) return int(-n, n - 1);
      if (kind < 0.25) return null;
      let step = int(-4, 4);
      if (step === 0) step = -1;
      return [bound(n), bound(n), s.uniform() < 0.2 ? null : step];
    });
    const ref = sliceMap(shape, ranges);
    assertExact(x.slice(ranges), ref.shape, ref.map.map((j) => v[j]), JSON.stringify(ranges));
  }
});

testOnDevices("concat, stack, split, gather, triu/tril match the reference", (device) => {
  const shapes = [[2, 3, 4], [2, 1, 4], [2, 0, 4], [2, 5, 4]];
  const parts = shapes.map((sh, i) => randomTensor(sh, 10 + i, device));
  const ref = concatMap(shapes, 1);
  assertExact(
    concat(parts.map((p) => p[1]), -2),
    ref.shape,
    ref.map.map(([p, j]) => parts[p][0][j]),
  );
  const same = [0, 1, 2].map((i) => randomTensor([3, 2], 20 + i, device));
  const refStack = concatMap([[3, 1, 2], [3, 1, 2], [3, 1, 2]], 1);
  const stacked = stack(same.map((p) => p[1]), 1);
  assertExact(stacked, refStack.shape, refStack.map.map(([p, j]) => same[p][0][j]));

  const [v, x] = randomTensor([4, 9, 3], 30, device);
  const pieces = x.split([2, 4, 3], 1);
  let at = 0;
  for (const piece of pieces) {
    const e = piece.shape[1];
    const r = sliceMap([4, 9, 3], [null, [at, at + e]]);
    assertExact(piece, r.shape, r.map.map((j) => v[j]));
    at += e;
  }
  const s = new RandomStream(31);
  for (const axis of [0, 1, 2, -1]) {
    const n = [4, 9, 3].at(axis)!;
    const idx = Array.from({ length: 10 }, () => Math.floor(s.uniform() * 2 * n) - n);
    for (const dtype of ["int32", "int64"] as const) {
      const indices = tensor(idx, { dtype, shape: [2, 5], device });
      const r = gatherMap([4, 9, 3], idx, [2, 5], axis < 0 ? axis + 3 : axis);
      assertExact(x.gather(indices, axis), r.shape, r.map.map((j) => v[j]), `axis ${axis}`);
    }
  }
  for (const k of [-3, -1, 0, 1, 2, 5]) {
    const up = triangleMap([4, 9, 3], k, true).map((j) => (j < 0 ? 0 : v[j]));
    const down = triangleMap([4, 9, 3], k, false).map((j) => (j < 0 ? 0 : v[j]));
    assertExact(triu(x, k), [4, 9, 3], up, `triu ${k}`);
    assertExact(tril(x, k), [4, 9, 3], down, `tril ${k}`);
  }
});

// ---------------------------------------------------------------------------------------
// 0-size and rank-0 tensors

testOnDevices("0-size tensors through every op", (device) => {
  const e = zeros([0, 3], { device });
  assertExact(e.reshape([3, 0]), [3, 0], []);
  assertExact(e.reshape([-1, 3]), [0, 3], []);
  assertExact(e.reshape([-1, 3, 1]), [0, 3, 1], []);
  assertExact(e.permute([1, 0]), [3, 0], []);
  assertExact(e.slice([[null, null, -1], 1]), [0], []);
  assertExact(e.unsqueeze(1).expand([0, 4, 3]), [0, 4, 3], []);
  assertExact(concat([e, e], 0), [0, 3], []);
  assertExact(concat([e, e], 1), [0, 6], []);
  assertExact(stack([e, e]), [2, 0, 3], []);
  assert.deepEqual(split(e, 3, 0).map((t) => t.shape), [[0, 3], [0, 3], [0, 3]]);
  const none = tensor(new Int32Array(0), { shape: [0], device });
  assertExact(tensor([1, 2], { device }).gather(none), [0], []);
  assertExact(e.gather(none, 0), [0, 3], []);
  assertExact(e.gather(tensor([2, -1], { dtype: "int32", device }), 1), [0, 2], []);
  assertExact(triu(zeros([2, 0, 0], { device })), [2, 0, 0], []);
  assertExact(embedding(tensor([[1]], { dtype: "int32", device }), zeros([2, 0], { device })), [
    1,
    1,
    0,
  ], []);
});

testOnDevices("rank-0 tensors", (device) => {
  const s = tensor(7, { device });
  assertExact(s.reshape([1, 1]), [1, 1], [7]);
  assertExact(s.reshape([-1]), [1], [7]);
  assertExact(s.reshape([1, 1]).reshape([]), [], [7]);
  assertExact(s.permute([]), [], [7]);
  assertExact(s.unsqueeze(0), [1], [7]);
  assertExact(s.unsqueeze(-1), [1], [7]);
  assertExact(s.squeeze(), [], [7]);
  assertExact(s.flatten(), [1], [7]);
  assertExact(s.expand([2, 3]), [2, 3], [7, 7, 7, 7, 7, 7]);
  assertExact(s.slice([]), [], [7]);
  assertExact(stack([s, s.add(1)]), [2], [7, 8]);
  assertExact(stack([s, s.add(1)], -1), [2], [7, 8]);
});

// ---------------------------------------------------------------------------------------
// Bit-exactness of storage through the copying ops

testOnDevices(
  "storage passes bit-exactly through permute, slice, concat, gather, expand, triu",
  (device) => {
    const dtypes: DType[] = [
      "float16",
      "bfloat16",
      "float8e4m3",
      "int64",
      "float32",
      "int4",
      "bool",
      "int8",
      "int32",
    ];
    const shape = [3, 4, 5];
    const n = numel(shape);
    for (const [k, dtype] of dtypes.entries()) {
      const src = randomStorage(dtype, n, 100 + k);
      const srcCopy = src.slice();
      const x = fromStorage(src, shape, dtype, device);
      const got = (t: Tensor) => bits(dtype, t.storageSync());

      const p = permuteMap(shape, [2, 0, 1]);
      assert.deepEqual(got(x.permute([2, 0, 1])), pick(dtype, src, p.map), `${dtype} permute`);

      const ranges: SliceRange[] = [[null, null, -1], [1, 4, 2], [-1, -6, -2]];
      const sl = sliceMap(shape, ranges);
      assert.deepEqual(got(x.slice(ranges)), pick(dtype, src, sl.map), `${dtype} slice`);

      const other = randomStorage(dtype, 3 * 2 * 5, 200 + k);
      const y = fromStorage(other, [3, 2, 5], dtype, device);
      const c = concatMap([shape, [3, 2, 5]], 1);
      const bx = bits(dtype, src);
      const by = bits(dtype, other);
      const expected = c.map.map(([part, j]) => (part === 0 ? bx[j] : by[j]));
      assert.deepEqual(got(concat([x, y], 1)), expected, `${dtype} concat`);

      const idx = [4, -1, 0, 2, -5];
      const g = gatherMap(shape, idx, [5], 2);
      const indices = tensor(idx, { dtype: "int64", device });
      assert.deepEqual(got(x.gather(indices, 2)), pick(dtype, src, g.map), `${dtype} gather`);

      const ex = expandMap([3, 1, 5], [2, 3, 4, 5]);
      const col = x.slice([null, [1, 2]]);
      const colBits = got(col);
      assert.deepEqual(got(col.expand([2, 3, 4, 5])), ex.map((j) => colBits[j]), `${dtype} expand`);

      const tri = triangleMap(shape, 1, true);
      assert.deepEqual(got(triu(x, 1)), pick(dtype, src, tri), `${dtype} triu`);
      assert.deepEqual(bits(dtype, src), bits(dtype, srcCopy), `${dtype} input unchanged`);
    }
  },
);

testOnDevices("int64 values beyond 2^53 survive slice and gather", (device) => {
  const big = BigInt64Array.from([
    2n ** 62n + 1n,
    -(2n ** 63n),
    2n ** 63n - 1n,
    12345678901234567n,
  ]);
  const x = tensor(big, { shape: [2, 2], device });
  assert.deepEqual(Array.from(x.slice([null, -1]).dataSync() as BigInt64Array), [big[1], big[3]]);
  assert.deepEqual(Array.from(x.transpose().dataSync() as BigInt64Array), [
    big[0],
    big[2],
    big[1],
    big[3],
  ]);
  const g = embedding(tensor([1, 0, 1], { dtype: "int32", device }), x);
  assert.deepEqual(Array.from(g.dataSync() as BigInt64Array), [
    big[2],
    big[3],
    big[0],
    big[1],
    big[2],
    big[3],
  ]);
});

// ---------------------------------------------------------------------------------------
// Laziness

testOnDevices("a reshape → permute → slice chain runs only when read", (device) => {
  const x = arange(24, undefined, 1, { device });
  const a = x.reshape([2, 3, 4]);
  const b = a.permute([2, 0, 1]);
  const c = b.slice([[1, 3], null, [null, null, -1]]);
  assert.equal(a.isEvaluated, false);
  assert.equal(b.isEvaluated, false);
  assert.equal(c.isEvaluated, false);
  assert.deepEqual(c.shape, [2, 2, 3]);
  assert.equal(c.isEvaluated, false);
  assertClose(valuesOf(c), [9, 5, 1, 21, 17, 13, 10, 6, 2, 22, 18, 14], { rtol: 0 });
  assert.equal(c.isEvaluated, true);
  assert.equal(a.isEvaluated, false, "intermediates are not kept");
  assert.equal(b.isEvaluated, false, "intermediates are not kept");
});

// ---------------------------------------------------------------------------------------
// Errors: op, kind, message and the reported line of the user's call

testOnDevices("shape errors", (device) => {
  const x = zeros([2, 3], { device });
  let line = thisLine() + 1;
  let f = () => x.reshape([4, 2]);
  assertTqError(f, {
    op: "reshape",
    kind: "shape",
    includes: ["sizes do not match", "'shape'", "expected 6 elements", "got [4, 2] (8 elements)"],
    line,
  });
  line = thisLine() + 1;
  f = () => x.reshape([4, -1]);
  assertTqError(f, { op: "reshape", kind: "shape", includes: ["cannot infer", "[4, -1]"], line });
  line = thisLine() + 1;
  f = () => zeros([0, 2], { device }).reshape([0, -1]);
  assertTqError(f, { op: "reshape", kind: "shape", includes: ["ambiguous"], line });
  line = thisLine() + 1;
  f = () => x.squeeze(0);
  assertTqError(f, { op: "squeeze", kind: "shape", includes: ["extent 1", "got extent 2"], line });
  line = thisLine() + 1;
  f = () => x.expand([2, 4]);
  assertTqError(f, { op: "expand", kind: "shape", includes: ["not 1", "got 4 in [2, 4]"], line });
  line = thisLine() + 1;
  f = () => x.expand([3]);
  assertTqError(f, { op: "expand", kind: "shape", includes: ["lower rank"], line });
  line = thisLine() + 1;
  f = () => concat([x, zeros([3, 3], { device })], 1);
  assertTqError(f, { op: "concat", kind: "shape", includes: ["'tensors[1]'", "[3, 3]"], line });
  line = thisLine() + 1;
  f = () => concat([x, zeros([6], { device })]);
  assertTqError(f, { op: "concat", kind: "shape", includes: ["same rank"], line });
  line = thisLine() + 1;
  f = () => stack([x, zeros([3, 2], { device })]);
  assertTqError(f, { op: "stack", kind: "shape", includes: ["same shape", "[3, 2]"], line });
  line = thisLine() + 1;
  const g = () => x.split(2, 1);
  assertTqError(g, { op: "split", kind: "shape", includes: ["divisor of 3", "got 2"], line });
  line = thisLine() + 1;
  const h = () => split(x, [1, 1], 1);
  assertTqError(h, { op: "split", kind: "shape", includes: ["summing to 3", "sum 2"], line });
  line = thisLine() + 1;
  f = () => zeros([3], { device }).transpose();
  assertTqError(f, { op: "transpose", kind: "shape", includes: ["rank >= 2"], line });
  line = thisLine() + 1;
  f = () => triu(zeros([3], { device }));
  assertTqError(f, { op: "triu", kind: "shape", includes: ["rank >= 2", "[3]"], line });
  line = thisLine() + 1;
  f = () => embedding(tensor([1], { dtype: "int32", device }), zeros([2, 2, 2], { device }));
  assertTqError(f, { op: "embedding", kind: "shape", includes: ["'weight'", "rank 2"], line });
  line = thisLine() + 1;
  f = () => gather(tensor(1, { device }), tensor(0, { dtype: "int32", device }));
  assertTqError(f, { op: "gather", kind: "shape", includes: ["rank >= 1"], line });
});

testOnDevices("axis errors", (device) => {
  const x = zeros([2, 3], { device });
  let line = thisLine() + 1;
  let f = () => x.permute([0, 0]);
  assertTqError(f, { op: "permute", kind: "axis", includes: ["repeated axis", "[0, 0]"], line });
  line = thisLine() + 1;
  f = () => x.permute([0]);
  assertTqError(f, { op: "permute", kind: "axis", includes: ["2 axes", "permutation"], line });
  line = thisLine() + 1;
  f = () => x.permute([0, 2]);
  assertTqError(f, { op: "permute", kind: "axis", includes: ["'axes[1]'", "[-2, 1]"], line });
  line = thisLine() + 1;
  f = () => x.unsqueeze(3);
  assertTqError(f, { op: "unsqueeze", kind: "axis", includes: ["[-3, 2]", "got 3"], line });
  line = thisLine() + 1;
  f = () => x.transpose(0, -3);
  assertTqError(f, { op: "transpose", kind: "axis", includes: ["'dim1'"], line });
  line = thisLine() + 1;
  f = () => x.squeeze(2);
  assertTqError(f, { op: "squeeze", kind: "axis", includes: ["out of range"], line });
  line = thisLine() + 1;
  f = () => tensor(1, { device }).squeeze(0);
  assertTqError(f, { op: "squeeze", kind: "axis", includes: ["rank 0"], line });
  line = thisLine() + 1;
  f = () => x.flatten(1, 0);
  assertTqError(f, { op: "flatten", kind: "axis", includes: ["after startAxis"], line });
  line = thisLine() + 1;
  f = () => concat([x, x], 2);
  assertTqError(f, { op: "concat", kind: "axis", includes: ["[-2, 1]"], line });
  line = thisLine() + 1;
  f = () => concat([tensor(1, { device }), tensor(2, { device })]);
  assertTqError(f, { op: "concat", kind: "axis", includes: ["rank 0"], line });
  line = thisLine() + 1;
  f = () => stack([x, x], 3);
  assertTqError(f, { op: "stack", kind: "axis", includes: ["[-3, 2]"], line });
  line = thisLine() + 1;
  f = () => x.gather(tensor([0], { dtype: "int32", device }), -3);
  assertTqError(f, { op: "gather", kind: "axis", includes: ["got -3"], line });
});

testOnDevices("argument errors", (device) => {
  const x = zeros([2, 3], { device });
  let line = thisLine() + 1;
  let f = () => x.slice([null, [0, 3, 0]]);
  assertTqError(f, {
    op: "slice",
    kind: "argument",
    includes: ["step cannot be zero", "'ranges[1][2]'"],
    line,
  });
  line = thisLine() + 1;
  f = () => x.slice([null, null, null]);
  assertTqError(f, {
    op: "slice",
    kind: "argument",
    includes: ["at most 2 ranges", "got 3 ranges"],
    line,
  });
  line = thisLine() + 1;
  f = () => x.slice([2]);
  assertTqError(f, { op: "slice", kind: "argument", includes: ["[-2, 1]", "got 2"], line });
  line = thisLine() + 1;
  f = () => x.slice([[0.5]]);
  assertTqError(f, { op: "slice", kind: "argument", includes: ["'ranges[0][0]'"], line });
  line = thisLine() + 1;
  f = () => x.reshape([-1, -1]);
  assertTqError(f, {
    op: "reshape",
    kind: "argument",
    includes: ["only one extent can be -1"],
    line,
  });
  line = thisLine() + 1;
  f = () => x.reshape([2, -2]);
  assertTqError(f, { op: "reshape", kind: "argument", includes: ["'shape[1]'", ">= -1"], line });
  line = thisLine() + 1;
  f = () => x.expand([-1, 2, 3]);
  assertTqError(f, { op: "expand", kind: "argument", includes: ["'shape[0]'"], line });
  line = thisLine() + 1;
  f = () => concat([]);
  assertTqError(f, { op: "concat", kind: "argument", includes: ["at least one tensor"], line });
  line = thisLine() + 1;
  const g = () => x.split(0);
  assertTqError(g, { op: "split", kind: "argument", includes: ["'sizes'", ">= 1"], line });
  line = thisLine() + 1;
  f = () => causalMask(-1);
  assertTqError(f, { op: "causalMask", kind: "argument", includes: ["'queries'"], line });
  line = thisLine() + 1;
  f = () => triu(x, 0.5);
  assertTqError(f, { op: "triu", kind: "argument", includes: ["'k'"], line });
});

testOnDevices("gather and embedding reject out-of-range indices at evaluation", (device) => {
  const x = zeros([2, 3], { device });
  // Reported at the line that built the op, naming the line whose read evaluated it (on a GPU,
  // whose read found it: the kernels record it on the device).
  const found = device === "cuda" ? "read" : "evaluated";
  const failsAt = (t: Tensor, built: number, op: string, includes: string[]) => {
    const read = thisLine() + 1;
    assertTqError(() => t.dataSync(), {
      op,
      kind: "argument",
      includes: [...includes, `found when ${found} at`, `_test.ts:${read}:`],
      line: built,
    });
  };
  let built = thisLine() + 1;
  const bad = x.gather(tensor([0, 3], { dtype: "int32", device }), 1);
  failsAt(bad, built, "gather", ["index out of range", "[-3, 2]", "got 3 at flat index 1"]);
  built = thisLine() + 1;
  const low = gather(x, tensor([-3], { dtype: "int64", device }));
  failsAt(low, built, "gather", ["[-2, 1]", "got -3"]);
  built = thisLine() + 1;
  const huge = gather(x, tensor(BigInt64Array.from([2n ** 40n]), { device }));
  failsAt(huge, built, "gather", [`got ${2 ** 40}`]);
  built = thisLine() + 1;
  const emb = embedding(tensor([5], { dtype: "int32", device }), x);
  failsAt(emb, built, "embedding", ["'ids'", "got 5"]);
  // Unlike gather's indices, embedding ids do not wrap (as in PyTorch).
  for (const dtype of ["int32", "int64"] as const) {
    built = thisLine() + 1;
    const negative = embedding(tensor([1, -1], { dtype, device }), x);
    failsAt(negative, built, "embedding", ["'ids'", "ids in [0, 1]", "got -1 at flat index 1"]);
  }
  // Two gathers of one plan evaluated together: the error names the one with the bad index.
  const good = x.gather(tensor([1, 0], { dtype: "int32", device }), 1);
  built = thisLine() + 1;
  const second = x.gather(tensor([2, -4], { dtype: "int32", device }), 1);
  failsAt(good.add(second), built, "gather", ["got -4 at flat index 1"]);
});

testOnDevices("dtype errors", (device) => {
  const x = zeros([2, 3], { device });
  let line = thisLine() + 1;
  let f = () => concat([x, zeros([2, 3], { dtype: "float16", device })]);
  assertTqError(f, {
    op: "concat",
    kind: "dtype",
    includes: ["'tensors[1]'", "expected float32", "got float16"],
    line,
  });
  line = thisLine() + 1;
  f = () => stack([x, zeros([2, 3], { dtype: "int32", device })]);
  assertTqError(f, { op: "stack", kind: "dtype", includes: ["got int32"], line });
  line = thisLine() + 1;
  f = () => x.gather(tensor([0], { device }));
  assertTqError(f, {
    op: "gather",
    kind: "dtype",
    includes: ["'indices'", "int32, int64", "got float32"],
    line,
  });
  line = thisLine() + 1;
  f = () => embedding(tensor([0], { dtype: "int8", device }), x);
  assertTqError(f, { op: "embedding", kind: "dtype", includes: ["'ids'", "got int8"], line });
});

testOnDevices("device errors", (device) => {
  const x = zeros([2, 2], { dtype: "bool", device });
  const elsewhere = device === "cpu" ? "cuda:0" : "cpu";
  // causalMask builds its node lazily, so a tensor on another device exists without a GPU.
  const other = causalMask(2, 2, { device: elsewhere });
  let line = thisLine() + 1;
  let f = () => concat([x, other]);
  assertTqError(f, {
    op: "concat",
    kind: "device",
    includes: ["'tensors[1]'", `got ${elsewhere}`],
    line,
  });
  line = thisLine() + 1;
  f = () => gather(other, tensor([0], { dtype: "int32", device }));
  assertTqError(f, { op: "gather", kind: "device", includes: ["'indices'"], line });
  line = thisLine() + 1;
  f = () => causalMask(2, 2, { device: "tpu" });
  assertTqError(f, { op: "causalMask", kind: "device", includes: ["'device'", '"tpu"'], line });
});
