import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { DType } from "../lib/dtype.ts";
import { assertClose, assertTqError, randomValues, testOnDevices, thisLine } from "./helpers.ts";

// Tolerances against float64 references computed from the (already rounded) input values:
// one rounding of the output is at most half an ulp, 2^-24 / 2^-11 / 2^-8 relative for
// float32 / float16 / bfloat16; the bounds below leave room for float32 accumulation on a GPU.
const RTOL: Record<string, number> = { float32: 1e-6, float16: 1e-3, bfloat16: 4e-3 };

/** The values of each output element, in row-major order of the reduced axes. */
function groups(values: ArrayLike<number>, shape: number[], axes: number[]): number[][] {
  const kept = shape.map((_, d) => d).filter((d) => !axes.includes(d));
  let m = 1;
  for (const d of kept) m *= shape[d];
  const out: number[][] = Array.from({ length: m }, () => []);
  const index = new Array<number>(shape.length).fill(0);
  for (let i = 0; i < values.length; i++) {
    let o = 0;
    for (const d of kept) o = o * shape[d] + index[d];
    out[o].push(values[i]);
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++index[d] < shape[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

const refs: Record<string, (g: number[]) => number> = {
  sum: (g) => g.reduce((s, v) => s + v, 0),
  mean: (g) => g.reduce((s, v) => s + v, 0) / g.length,
  max: (g) => Math.max(...g),
  min: (g) => Math.min(...g),
  var: (g) => {
    const mu = g.reduce((s, v) => s + v, 0) / g.length;
    return g.reduce((s, v) => s + (v - mu) ** 2, 0) / g.length;
  },
  argmax: (g) => g.indexOf(Math.max(...g)),
  argmin: (g) => g.indexOf(Math.min(...g)),
};

type Reducer = (x: tq.Tensor, axis?: number | number[], keepdims?: boolean) => tq.Tensor;
const ops: Record<string, Reducer> = {
  sum: tq.sum,
  mean: tq.mean,
  max: tq.max,
  min: tq.min,
  var: (x, axis, keepdims) => tq.var(x, axis, keepdims),
  argmax: (x, axis, keepdims) => tq.argmax(x, axis as number | undefined, keepdims),
  argmin: (x, axis, keepdims) => tq.argmin(x, axis as number | undefined, keepdims),
};

function normAxes(axis: number | number[] | undefined, rank: number): number[] {
  if (axis === undefined) return Array.from({ length: rank }, (_, i) => i);
  return (typeof axis === "number" ? [axis] : axis).map((a) => (a < 0 ? a + rank : a));
}

function reducedShape(shape: number[], axes: number[], keepdims: boolean): number[] {
  return shape.flatMap((d, i) => (axes.includes(i) ? (keepdims ? [1] : []) : [d]));
}

/** ||actual − expected|| / ||expected|| (Euclidean norms). */
function normRelError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < expected.length; i++) {
    num += (actual[i] - expected[i]) ** 2;
    den += expected[i] ** 2;
  }
  return Math.sqrt(num / den);
}

testOnDevices("float reductions match float64 references on random inputs", (device) => {
  const shape = [3, 4, 5];
  const cases: (number | number[] | undefined)[] = [undefined, 0, 1, 2, -1, [0, 2], [1, 2]];
  for (const dtype of ["float32", "float16", "bfloat16"] as DType[]) {
    const x = tq.tensor(randomValues(60, 21), { shape, dtype, device });
    const xs = Array.from(x.dataSync() as Float32Array); // the rounded inputs
    for (const [op, fn] of Object.entries(ops)) {
      for (const axis of cases) {
        if (op.startsWith("arg") && Array.isArray(axis)) continue;
        for (const keepdims of [false, true]) {
          const what = `${op} ${dtype} axis ${JSON.stringify(axis)} keepdims ${keepdims}`;
          const axes = normAxes(axis, 3);
          const y = fn(x, axis, keepdims);
          assert.deepEqual(y.shape, reducedShape(shape, axes, keepdims), what);
          const expected = groups(xs, shape, axes).map(refs[op]);
          const got = Array.from(y.dataSync() as Float32Array);
          if (op.startsWith("arg")) {
            assert.equal(y.dtype, "int32", what);
            assert.deepEqual(got, expected, what);
            continue;
          }
          assert.equal(y.dtype, dtype, what);
          if (op === "max" || op === "min") assert.deepEqual(got, expected, what); // exact
          else if (op === "sum") {
            // Sums can cancel to near zero: compare by norm.
            assert.ok(normRelError(got, expected) <= RTOL[dtype], what);
          } else {
            // Inputs are O(1): the absolute term covers float32 accumulation near zero.
            assertClose(got, expected, { rtol: RTOL[dtype], atol: RTOL[dtype], message: what });
          }
        }
      }
    }
  }
});

testOnDevices("sum of float32 matches the float64 sum by norm on a long axis", (device) => {
  const values = randomValues(8 * 1000, 22);
  const x = tq.tensor(values, { shape: [8, 1000], device });
  const xs = x.dataSync() as Float32Array;
  const expected = groups(xs, [8, 1000], [1]).map(refs.sum);
  assert.ok(normRelError(x.sum(1).dataSync() as Float32Array, expected) <= 1e-6);
  const firstAxis = groups(xs, [8, 1000], [0]).map(refs.sum);
  assert.ok(normRelError(x.sum(0).dataSync() as Float32Array, firstAxis) <= 1e-6);
});

testOnDevices("hand-computed reductions, keepdims and ties", (device) => {
  const x = tq.tensor([[1, 2], [3, 4]], { device });
  assert.deepEqual(tq.mean(x, 0).toArray(), [2, 3]);
  assert.deepEqual(tq.mean(x, 1).toArray(), [1.5, 3.5]);
  assert.deepEqual(tq.mean(x, 1, true).toArray(), [[1.5], [3.5]]);
  assert.equal(tq.sum(x).item(), 10);
  assert.deepEqual(tq.sum(x).shape, []);
  assert.deepEqual(tq.sum(x, undefined, true).toArray(), [[10]]);
  assert.deepEqual(tq.max(x, -1).toArray(), [2, 4]);
  assert.deepEqual(tq.min(x, 0).toArray(), [1, 2]);
  assert.equal(tq.var(x).item(), 1.25);
  assertClose([tq.var(x, undefined, false, 1).item()], [5 / 3]);
  assert.deepEqual(tq.var(x, 0).toArray(), [1, 1]);
  // Ties: the first occurrence wins.
  const t = tq.tensor([1, 3, 3, 2, -1, -1], { device });
  assert.equal(tq.argmax(t).item(), 1);
  assert.equal(tq.argmin(t).item(), 4);
  const m = tq.tensor([[5, 1, 5], [0, 0, -2]], { device });
  assert.deepEqual(tq.argmax(m, 1).toArray(), [0, 0]);
  assert.deepEqual(tq.argmin(m, 1, true).toArray(), [[1], [2]]);
  assert.deepEqual(tq.argmax(m, 0).toArray(), [0, 0, 0]);
  // No axis: flat index; keepdims gives all-ones dims.
  assert.equal(tq.argmin(m).item(), 5);
  assert.deepEqual(tq.argmin(m, undefined, true).shape, [1, 1]);
  const s = tq.sum(tq.ones([2, 3, 4], { device }), [0, 2], true);
  assert.deepEqual(s.shape, [1, 3, 1]);
  assert.deepEqual(s.toArray(), [[[8], [8], [8]]]);
  assert.deepEqual(tq.max(tq.ones([2, 3, 4], { device }), [-1, 0]).shape, [3]);
});

testOnDevices("NaN propagates through float reductions; arg ops pick the first NaN", (device) => {
  const x = tq.tensor([[1, NaN, 3, NaN], [4, 5, 6, 7]], { device });
  for (const op of ["sum", "mean", "max", "min", "var"]) {
    const y = Array.from(ops[op](x, 1).dataSync() as Float32Array);
    assert.ok(Number.isNaN(y[0]), op);
    assert.ok(!Number.isNaN(y[1]), op);
  }
  assert.deepEqual(tq.argmax(x, 1).toArray(), [1, 3]);
  assert.deepEqual(tq.argmin(x, 1).toArray(), [1, 0]);
  assert.equal(tq.argmax(x).item(), 1);
  assert.ok(Number.isNaN(tq.max(tq.tensor([NaN, 1], { dtype: "float16", device })).item()));
});

testOnDevices("integer reductions: dtypes, exactness and wrapping", (device) => {
  const i8 = tq.tensor(new Int8Array([100, 100, 100, -7]), { device });
  const s8 = tq.sum(i8);
  assert.equal(s8.dtype, "int32");
  assert.equal(s8.item(), 293);
  assert.equal(tq.max(i8).dtype, "int8");
  assert.equal(tq.max(i8).item(), 100);
  assert.equal(tq.min(i8).item(), -7);
  assert.equal(tq.argmin(i8).item(), 3);
  const i32 = tq.tensor(new Int32Array([2147483647, 1, 5, -3]), { shape: [2, 2], device });
  assert.deepEqual(Array.from(tq.sum(i32, 1).dataSync() as Int32Array), [-2147483648, 2]);
  assert.deepEqual(tq.max(i32, 0).toArray(), [2147483647, 1]);
  assert.deepEqual(tq.min(i32, 0).toArray(), [5, -3]);
  assert.deepEqual(tq.argmax(i32, 0).toArray(), [0, 0]);
  // The int32 sum wraps at every step: a running sum past 2^53 (8M values near 2^31) still ends
  // exactly at the true sum modulo 2^32.
  const many = new Int32Array(2 ** 23 + 5);
  for (let i = 0; i < many.length; i++) many[i] = 2147483647 - (i % 1000);
  many[many.length - 1] = -7;
  let exact = 0n;
  for (const v of many) exact += BigInt(v);
  assert.equal(tq.sum(tq.tensor(many, { device })).item(), Number(BigInt.asIntN(32, exact)));
  // int64 stays exact beyond 2^53 and wraps at 2^63.
  const big = 2n ** 53n + 1n;
  const i64 = tq.tensor(new BigInt64Array([big, 1n, big + 2n, big + 1n]), { device });
  assert.equal(tq.sum(i64).dtype, "int64");
  assert.deepEqual(tq.sum(i64).dataSync(), new BigInt64Array([3n * big + 4n]));
  assert.deepEqual(tq.max(i64).dataSync(), new BigInt64Array([big + 2n]));
  assert.deepEqual(tq.min(i64).dataSync(), new BigInt64Array([1n]));
  assert.equal(tq.argmax(i64).item(), 2);
  const wrap = tq.tensor(new BigInt64Array([2n ** 62n, 2n ** 62n]), { device });
  assert.deepEqual(tq.sum(wrap).dataSync(), new BigInt64Array([-(2n ** 63n)]));
  // Random int32 values against an exact reference.
  const ints = Int32Array.from(randomValues(60, 23), (v) => Math.round(v * 1000));
  const xi = tq.tensor(ints, { shape: [5, 12], device });
  for (const op of ["sum", "max", "min", "argmax", "argmin"]) {
    assert.deepEqual(
      Array.from(ops[op](xi, 1).dataSync() as Int32Array),
      groups(ints, [5, 12], [1]).map(refs[op]),
      op,
    );
  }
});

testOnDevices("empty reductions and rank-0 inputs", (device) => {
  const e = tq.zeros([2, 0, 3], { device });
  const s = tq.sum(e, 1);
  assert.deepEqual(s.shape, [2, 3]);
  assert.deepEqual(Array.from(s.dataSync() as Float32Array), [0, 0, 0, 0, 0, 0]);
  assert.equal(tq.sum(e).item(), 0);
  assert.ok(Array.from(tq.mean(e, 1).dataSync() as Float32Array).every(Number.isNaN));
  assert.ok(Number.isNaN(tq.var(e).item()));
  assert.deepEqual(tq.sum(tq.zeros([0], { dtype: "int8", device })).dataSync(), new Int32Array(1));
  // Reducing over non-empty axes of an empty tensor is fine for max (nothing to reduce).
  const m = tq.max(e, 2);
  assert.deepEqual(m.shape, [2, 0]);
  assert.equal(m.dataSync().length, 0);
  assert.deepEqual(tq.argmax(e, 0).shape, [0, 3]);

  const r = tq.tensor(2.5, { device });
  for (const op of ["sum", "mean", "max", "min"]) {
    for (const axis of [undefined, 0, -1]) {
      const y = ops[op](r, axis, true);
      assert.deepEqual(y.shape, [], op);
      assert.equal(y.item(), 2.5, op);
    }
  }
  assert.equal(tq.var(r).item(), 0);
  assert.ok(Number.isNaN(tq.var(r, undefined, false, 1).item()));
  assert.equal(tq.argmax(r).item(), 0);
  assert.equal(tq.argmin(r, 0).item(), 0);
  assert.deepEqual(tq.argmin(r, 0).shape, []);
});

testOnDevices(
  "var with correction matches the reference; N - correction <= 0 gives NaN",
  (device) => {
    const x = tq.tensor(randomValues(24, 24), { shape: [4, 6], device });
    const xs = Array.from(x.dataSync() as Float32Array);
    for (const correction of [0, 1, 2.5]) {
      const expected = groups(xs, [4, 6], [1]).map((g) =>
        refs.var(g) * g.length / (g.length - correction)
      );
      assertClose(tq.var(x, 1, false, correction).dataSync() as Float32Array, expected, {
        rtol: 1e-6,
      });
    }
    assert.ok(Array.from(tq.var(x, 0, false, 4).dataSync() as Float32Array).every(Number.isNaN));
    assert.ok(Array.from(tq.var(x, 0, false, 7).dataSync() as Float32Array).every(Number.isNaN));
  },
);

testOnDevices("reduction errors name the op, the argument and the caller's line", (device) => {
  const x = tq.ones([2, 3], { device });
  let line = thisLine() + 1;
  let call = () => tq.sum(x, 2);
  assertTqError(call, { op: "sum", kind: "axis", includes: ["'axis'", "[-2, 1]", "2"], line });
  line = thisLine() + 1;
  call = () => tq.max(x, [1, -1]);
  assertTqError(call, { op: "max", kind: "axis", includes: ["repeated axis", "[1, -1]"], line });
  line = thisLine() + 1;
  call = () => tq.argmax(x, [0, 1] as unknown as number);
  assertTqError(call, { op: "argmax", kind: "axis", line });
  line = thisLine() + 1;
  call = () => tq.mean(tq.ones([2], { dtype: "int32", device }));
  assertTqError(call, { op: "mean", kind: "dtype", includes: ["int32", "float32"], line });
  line = thisLine() + 1;
  call = () => tq.sum(tq.ones([2], { dtype: "bool", device }));
  assertTqError(call, { op: "sum", kind: "dtype", includes: ["bool"], line });
  line = thisLine() + 1;
  call = () => tq.max(tq.zeros([3, 0], { device }), 1);
  assertTqError(call, {
    op: "max",
    kind: "shape",
    includes: ["empty axis", "no identity", "[3, 0]", "[1]"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.argmin(tq.zeros([0], { device }));
  assertTqError(call, { op: "argmin", kind: "shape", includes: ["[0]"], line });
  line = thisLine() + 1;
  call = () => tq.var(x, 1, false, NaN);
  assertTqError(call, { op: "var", kind: "argument", includes: ["'correction'", "NaN"], line });
  line = thisLine() + 1;
  call = () => tq.sum(x, 0, 1 as unknown as boolean);
  assertTqError(call, { op: "sum", kind: "argument", includes: ["'keepdims'"], line });
  line = thisLine() + 1;
  call = () => tq.sum([1, 2] as unknown as tq.Tensor);
  assertTqError(call, { op: "sum", kind: "argument", includes: ["'x'", "an array"], line });
});
