import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { DType } from "../lib/dtype.ts";
import { assertClose, assertTqError, randomValues, testOnDevices, thisLine } from "./helpers.ts";

// Tolerances against float64 references computed from the (already rounded) inputs: one
// rounding of the output is at most 2^-24 / 2^-11 / 2^-8 relative for float32 / float16 /
// bfloat16; the absolute term covers outputs near zero computed in float32 on a GPU.
const TOL: Record<string, number> = { float32: 1e-6, float16: 1e-3, bfloat16: 4e-3 };
const FLOATS: DType[] = ["float32", "float16", "bfloat16"];

/** Float64 softmax (or log-softmax) of `xs` with `shape` along `axis`. */
function refSoftmax(xs: ArrayLike<number>, shape: number[], axis: number, log: boolean): number[] {
  const len = shape[axis];
  const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const outer = shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const out = new Array<number>(xs.length);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const idx = Array.from({ length: len }, (_, k) => (o * len + k) * inner + i);
      const row = idx.map((j) => xs[j]);
      const mx = Math.max(...row);
      const lse = mx + Math.log(row.reduce((s, v) => s + Math.exp(v - mx), 0));
      idx.forEach((j, k) => (out[j] = log ? row[k] - lse : Math.exp(row[k] - lse)));
    }
  }
  return out;
}

/** Float64 layer norm over the last `d` elements of each row. */
function refLayerNorm(
  xs: ArrayLike<number>,
  d: number,
  eps: number,
  w?: ArrayLike<number>,
  b?: ArrayLike<number>,
): number[] {
  const out = new Array<number>(xs.length);
  for (let r = 0; r < xs.length / d; r++) {
    const row = Array.from({ length: d }, (_, k) => xs[r * d + k]);
    const mu = row.reduce((s, v) => s + v, 0) / d;
    const v = row.reduce((s, x) => s + (x - mu) ** 2, 0) / d;
    row.forEach((x, k) => {
      out[r * d + k] = ((x - mu) / Math.sqrt(v + eps)) * (w ? w[k] : 1) + (b ? b[k] : 0);
    });
  }
  return out;
}

function values(t: tq.Tensor): number[] {
  return Array.from(t.dataSync() as Float32Array);
}

testOnDevices("softmax and logSoftmax match float64 references on random inputs", (device) => {
  const cases: [number[], number][] = [[[4, 7], -1], [[3, 5, 6], 1], [[3, 5, 6], 0], [[9], 0]];
  for (const dtype of FLOATS) {
    for (const [shape, axis] of cases) {
      const n = shape.reduce((a, b) => a * b, 1);
      const x = tq.tensor(randomValues(n, 31 + n).map((v) => v * 4), { shape, dtype, device });
      const xs = values(x);
      const ax = axis < 0 ? axis + shape.length : axis;
      const what = `${dtype} ${JSON.stringify(shape)} axis ${axis}`;
      const s = tq.softmax(x, axis);
      assert.equal(s.dtype, dtype);
      assert.deepEqual(s.shape, shape);
      assertClose(values(s), refSoftmax(xs, shape, ax, false), {
        rtol: TOL[dtype],
        atol: TOL[dtype] * 1e-3,
        message: `softmax ${what}`,
      });
      assertClose(values(x.logSoftmax(axis)), refSoftmax(xs, shape, ax, true), {
        rtol: TOL[dtype],
        atol: TOL[dtype],
        message: `logSoftmax ${what}`,
      });
    }
  }
});

testOnDevices("softmax is stable and exact on hand-computed cases", (device) => {
  assertClose(values(tq.softmax(tq.tensor([0, Math.log(3)], { device }))), [0.25, 0.75]);
  // exp(1000) overflows float64: only a max-subtracting kernel gets these right.
  const big = tq.tensor([[1000, 1000], [-1000, -1000]], { device });
  assert.deepEqual(values(tq.softmax(big)), [0.5, 0.5, 0.5, 0.5]);
  assertClose(values(tq.logSoftmax(big)), new Array(4).fill(-Math.LN2));
  // log Σ must survive a max of huge magnitude: [m, m, -m] gives -ln 2 twice, then -inf-ish.
  const huge = tq.tensor([[1e20, 1e20, -1e20], [3e38, 3e38, -3e38]], { device });
  const lh = values(tq.logSoftmax(huge));
  assertClose([lh[0], lh[1], lh[3], lh[4]], new Array(4).fill(-Math.LN2), { rtol: 1e-6 });
  assert.ok(lh[2] < -1e20 && lh[5] === -Infinity, `${lh}`);
  assertClose(values(tq.softmax(tq.tensor([1000, 0], { device }))), [1, 0], { atol: 1e-30 });
  // A masked (-Infinity) entry gets probability 0 and log-probability -Infinity.
  const masked = tq.tensor([1, -Infinity, 1], { device });
  assert.deepEqual(values(tq.softmax(masked)), [0.5, 0, 0.5]);
  assertClose(values(tq.logSoftmax(masked)), [-Math.LN2, -Infinity, -Math.LN2]);
  assert.ok(values(tq.softmax(tq.tensor([1, NaN, 2], { device }))).every(Number.isNaN));
  // Rank 0: one row of one element.
  const r = tq.tensor(3, { device });
  assert.equal(tq.softmax(r).item(), 1);
  assert.equal(tq.logSoftmax(r, 0).item(), 0);
  assert.deepEqual(tq.softmax(r).shape, []);
  // Empty tensors keep their shape.
  assert.deepEqual(tq.softmax(tq.zeros([0, 5], { device })).shape, [0, 5]);
  assert.deepEqual(tq.logSoftmax(tq.zeros([3, 0], { device })).shape, [3, 0]);
});

testOnDevices("layerNorm matches float64 references with and without weight and bias", (device) => {
  const shape = [3, 4, 8];
  for (const dtype of FLOATS) {
    const x = tq.tensor(randomValues(96, 41).map((v) => v * 3 + 1), { shape, dtype, device });
    const w8 = tq.tensor(randomValues(8, 42), { dtype, device });
    const b8 = tq.tensor(randomValues(8, 43), { dtype, device });
    const w32 = tq.tensor(randomValues(32, 44), { shape: [4, 8], dtype, device });
    const b32 = tq.tensor(randomValues(32, 45), { shape: [4, 8], dtype, device });
    const xs = values(x);
    const cases: [string, tq.Tensor, number[], tq.Tensor?, tq.Tensor?][] = [
      ["none", tq.layerNorm(x), refLayerNorm(xs, 8, 1e-5)],
      ["weight", tq.layerNorm(x, w8), refLayerNorm(xs, 8, 1e-5, values(w8))],
      ["bias", tq.layerNorm(x, undefined, b8), refLayerNorm(xs, 8, 1e-5, undefined, values(b8))],
      ["both", tq.layerNorm(x, w8, b8, 1e-3), refLayerNorm(xs, 8, 1e-3, values(w8), values(b8))],
      ["2-D", tq.layerNorm(x, w32, b32), refLayerNorm(xs, 32, 1e-5, values(w32), values(b32))],
    ];
    for (const [what, y, expected] of cases) {
      assert.equal(y.dtype, dtype);
      assert.deepEqual(y.shape, shape);
      assertClose(values(y), expected, {
        rtol: TOL[dtype],
        atol: TOL[dtype],
        message: `${dtype} ${what}`,
      });
    }
  }
});

testOnDevices("layerNorm on hand-computed, rank-1 and empty inputs", (device) => {
  // mean 2.5, population variance 1.25.
  const y = tq.layerNorm(tq.tensor([1, 2, 3, 4], { device }), undefined, undefined, 0.25);
  assertClose(values(y), [-1.5, -0.5, 0.5, 1.5].map((v) => v / Math.sqrt(1.5)));
  const w = tq.tensor([2, 2, 2, 2], { device });
  const b = tq.tensor([1, 1, 1, 1], { device });
  assertClose(values(tq.layerNorm(tq.tensor([5, 5, 5, 5], { device }), w, b)), [1, 1, 1, 1]);
  const e = tq.layerNorm(tq.zeros([0, 4], { device }), w, b);
  assert.deepEqual(e.shape, [0, 4]);
  assert.equal(e.dataSync().length, 0);
});

testOnDevices("nn errors name the op, the argument and the caller's line", (device) => {
  const x = tq.ones([2, 3], { device });
  let line = thisLine() + 1;
  let call = () => tq.softmax(tq.ones([3], { dtype: "int32", device }));
  assertTqError(call, { op: "softmax", kind: "dtype", includes: ["int32", "float32"], line });
  line = thisLine() + 1;
  call = () => tq.logSoftmax(x, 2);
  assertTqError(call, { op: "logSoftmax", kind: "axis", includes: ["'axis'", "[-2, 1]"], line });
  line = thisLine() + 1;
  call = () => tq.layerNorm(x, tq.ones([2], { device }));
  assertTqError(call, {
    op: "layerNorm",
    kind: "shape",
    includes: ["'weight'", "[3]", "[2, 3]", "got shape [2]"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.layerNorm(x, tq.ones([3], { device }), tq.ones([1, 3], { device }));
  assertTqError(call, { op: "layerNorm", kind: "shape", includes: ["'bias'", "[1, 3]"], line });
  line = thisLine() + 1;
  call = () => tq.layerNorm(x, tq.ones([1, 2, 3], { device }));
  assertTqError(call, { op: "layerNorm", kind: "shape", includes: ["[1, 2, 3]"], line });
  line = thisLine() + 1;
  call = () => tq.layerNorm(tq.tensor(1, { device }));
  assertTqError(call, { op: "layerNorm", kind: "shape", includes: ["rank-0"], line });
  line = thisLine() + 1;
  call = () => tq.layerNorm(x, tq.ones([3], { dtype: "float16", device }));
  assertTqError(call, {
    op: "layerNorm",
    kind: "dtype",
    includes: ["'weight'", "float16", "float32"],
    line,
  });
  for (const eps of [0, -1e-5, Infinity, NaN]) {
    line = thisLine() + 1;
    call = () => tq.layerNorm(x, undefined, undefined, eps);
    assertTqError(call, { op: "layerNorm", kind: "argument", includes: ["'eps'"], line });
  }
  line = thisLine() + 1;
  call = () => tq.softmax(null as unknown as tq.Tensor);
  assertTqError(call, { op: "softmax", kind: "argument", includes: ["'x'", "null"], line });
});

testOnDevices("LayerNorm checks eps when constructed, by the layerNorm op's rule", (device) => {
  const x = tq.tensor(randomValues(15, 46), { shape: [3, 5], device });
  const w = tq.tensor(randomValues(5, 47), { device });
  const b = tq.tensor(randomValues(5, 48), { device });
  const cases: [unknown, string][] = [
    [1e-3, ""],
    [1e-12, ""],
    [0, "got 0"],
    [-0, "got 0"],
    [-1, "got -1"],
    [NaN, "got NaN"],
    [Infinity, "got Infinity"],
    [-Infinity, "got -Infinity"],
    ["1e-5", 'got "1e-5"'],
    [null, "got null"],
    [1n, "got 1n (a bigint)"],
  ];
  for (const [eps, got] of cases) {
    if (got === "") {
      const ln = new tq.LayerNorm(5, { eps: eps as number }).to(device);
      assert.equal(ln.eps, eps);
      ln.loadStateDict({ weight: w, bias: b });
      assert.deepEqual(ln.forward(x).dataSync(), tq.layerNorm(x, w, b, eps as number).dataSync());
      continue;
    }
    // The op takes the same rule (checkEps) as the layer.
    assertTqError(() => tq.layerNorm(x, w, b, eps as number), {
      op: "layerNorm",
      kind: "argument",
      includes: ["eps must be a positive finite number", got],
    });
    const line = thisLine() + 1;
    const call = () => new tq.LayerNorm(5, { eps: eps as number });
    const e = assertTqError(call, {
      op: "LayerNorm",
      kind: "argument",
      includes: ["eps must be a positive finite number", "'eps'", got],
      line,
    });
    assert.equal(e.argument, "eps");
  }
  // Left out, eps is the op's default.
  const ln = new tq.LayerNorm(5, { eps: undefined }).to(device);
  assert.equal(ln.eps, 1e-5);
  ln.loadStateDict({ weight: w, bias: b });
  assert.deepEqual(ln.forward(x).dataSync(), tq.layerNorm(x, w, b).dataSync());
});
