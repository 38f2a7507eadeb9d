import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { erf } from "../lib/backends/cpu/util.ts";
import { assertClose, assertTqError, randomValues, testOnDevices, thisLine } from "./helpers.ts";

// Float64 references: each op on float32 inputs, rounded once to float32 by the comparison.
const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const unaryRefs: Record<string, (x: number) => number> = {
  neg: (x) => -x,
  abs: Math.abs,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  tanh: Math.tanh,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  relu: (x) => Math.max(x, 0),
};
const binaryRefs: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  pow: (a, b) => Math.pow(a, b),
  maximum: Math.max,
  minimum: Math.min,
};

function f32(values: Float64Array): Float64Array {
  return values.map((v) => Math.fround(v));
}

testOnDevices("unary ops match a float64 reference on random float32 inputs", (device) => {
  const raw = f32(randomValues(1000, 11));
  for (const [op, ref] of Object.entries(unaryRefs)) {
    // log/sqrt/rsqrt need positive inputs.
    const xs = ["log", "sqrt", "rsqrt"].includes(op)
      ? f32(raw.map((v) => Math.abs(v) + 0.01))
      : raw;
    const x = tq.tensor(Float32Array.from(xs), { device });
    const y = (tq as unknown as Record<string, (t: tq.Tensor) => tq.Tensor>)[op](x);
    assertClose(y.dataSync() as Float32Array, xs.map(ref), {
      rtol: 1e-6,
      atol: 1e-30,
      message: op,
    });
  }
});

testOnDevices("gelu exact and tanh match float64 references", (device) => {
  const xs = f32(randomValues(2000, 12).map((v) => v * 3));
  const x = tq.tensor(Float32Array.from(xs), { device });
  assertClose(
    x.gelu().dataSync() as Float32Array,
    xs.map((v) => 0.5 * v * (1 + erf(v / Math.SQRT2))),
    {
      rtol: 1e-5,
      atol: 1e-7,
    },
  );
  const tanhRef = xs.map((v) =>
    0.5 * v * (1 + Math.tanh(SQRT_2_OVER_PI * (v + 0.044715 * v ** 3)))
  );
  assertClose(x.gelu({ approximate: "tanh" }).dataSync() as Float32Array, tanhRef, {
    rtol: 1e-5,
    atol: 1e-7,
  });
});

testOnDevices("gelu takes its limits at ±∞ and keeps NaN and ±0", (device) => {
  // -∞ · Φ(-∞) is -∞ · 0 written naively; the limit is -0. Huge finite inputs underflow to -0.
  const xs = [-Infinity, Infinity, NaN, 0, -0, -1e30, 1e30];
  const want = [-0, Infinity, NaN, 0, -0, -0, 1e30];
  for (const dtype of ["float32", "float16", "bfloat16"] as const) {
    for (const approximate of ["none", "tanh"] as const) {
      const x = tq.tensor(xs, { dtype, device });
      const got = Array.from(x.gelu({ approximate }).cast("float32").dataSync() as Float32Array);
      const expected = tq.tensor(want, { dtype }).cast("float32").dataSync() as Float32Array;
      got.forEach((v, i) =>
        assert.ok(
          Object.is(v, expected[i]),
          `${dtype} ${approximate} gelu(${xs[i]}) = ${v}, want ${expected[i]}`,
        )
      );
    }
  }
});

Deno.test("cpu gelu keeps its relative precision in the negative tail", () => {
  // High-precision values of x · Φ(x) and of the tanh form: 1 + erf (or 1 + tanh) cancels
  // there, which gave 0 below x = -6.
  const exact: [number, number][] = [
    [-3.25, -0.0018753313877699928895],
    [-5.5, -1.0444259356238245661e-7],
    [-8.374500274658203, -2.3221942002750701534e-16],
    [-12, -2.1317785344932147972e-32],
  ];
  const tanhForm: [number, number][] = [
    [-3.5, -0.00061619765537366330893],
    [-5, -2.2917961966295060456e-7],
    [-7.199999809265137, -1.9994352560926915095e-16],
  ];
  const run = (cases: [number, number][], approximate: "none" | "tanh") => {
    const x = tq.tensor(cases.map(([v]) => v), { dtype: "float32" });
    // Every input is a float32, so the references are for the very inputs.
    const got = x.gelu({ approximate }).dataSync() as Float32Array;
    cases.forEach(([v, want], i) => {
      const rel = Math.abs(got[i] - want) / Math.abs(want);
      assert.ok(rel < 2 ** -22, `${approximate} gelu(${v}) = ${got[i]}, want ${want}`);
    });
  };
  run(exact, "none");
  run(tanhForm, "tanh");
});

Deno.test("erf matches known values to 1e-14", () => {
  const known: [number, number][] = [
    [0, 0],
    [0.5, 0.5204998778130465],
    [1, 0.8427007929497149],
    [2, 0.9953222650189527],
    [2.5, 0.999593047982555],
    [3, 0.9999779095030014],
    [-1.5, -0.9661051464753108],
  ];
  for (const [x, v] of known) assert.ok(Math.abs(erf(x) - v) < 1e-14, `erf(${x}) = ${erf(x)}`);
});

testOnDevices("binary ops broadcast like NumPy and match float64 references", (device) => {
  const shapes: [number[], number[], number[]][] = [
    [[4, 5], [4, 5], [4, 5]],
    [[4, 5], [5], [4, 5]],
    [[3, 1, 5], [4, 1], [3, 4, 5]],
    [[1], [2, 3], [2, 3]],
    [[], [2, 3], [2, 3]],
    [[2, 0, 3], [3], [2, 0, 3]],
  ];
  for (const [sa, sb, so] of shapes) {
    const na = sa.reduce((p, d) => p * d, 1);
    const nb = sb.reduce((p, d) => p * d, 1);
    const av = f32(randomValues(na, 1).map((v) => v + 3));
    const bv = f32(randomValues(nb, 2).map((v) => Math.abs(v) + 0.5));
    const a = tq.tensor(Float32Array.from(av), { shape: sa, device });
    const b = tq.tensor(Float32Array.from(bv), { shape: sb, device });
    for (const [op, ref] of Object.entries(binaryRefs)) {
      const y = (tq as unknown as Record<string, (x: tq.Tensor, y: tq.Tensor) => tq.Tensor>)[op](
        a,
        b,
      );
      assert.deepEqual(y.shape, so);
      const expected = new Float64Array(y.size);
      const ia = broadcastIdx(sa, so), ib = broadcastIdx(sb, so);
      for (let i = 0; i < y.size; i++) expected[i] = ref(av[ia(i)], bv[ib(i)]);
      assertClose(y.dataSync() as Float32Array, expected, {
        rtol: 1e-6,
        message: `${op} ${sa} ${sb}`,
      });
    }
  }
});

function broadcastIdx(shape: number[], out: number[]): (i: number) => number {
  return (i) => {
    let idx = 0, stride = 1;
    for (let d = out.length - 1, k = shape.length - 1; d >= 0; d--, k--) {
      const coord = Math.floor(i / out.slice(d + 1).reduce((p, x) => p * x, 1)) % out[d];
      if (k >= 0) {
        if (shape[k] !== 1) idx += coord * stride;
        stride *= shape[k];
      }
    }
    return idx;
  };
}

testOnDevices("comparisons, where and scalars", (device) => {
  const a = tq.tensor([[1, 2, 3], [4, 5, 6]], { device });
  const b = tq.tensor([3, 2, 1], { device });
  assert.deepEqual(a.less(b).toArray(), [[true, false, false], [false, false, false]]);
  assert.deepEqual(a.lessEqual(b).toArray(), [[true, true, false], [false, false, false]]);
  assert.deepEqual(a.greater(3).toArray(), [[false, false, false], [true, true, true]]);
  assert.deepEqual(a.greaterEqual(3).toArray(), [[false, false, true], [true, true, true]]);
  assert.deepEqual(a.equal(b).toArray(), [[false, true, false], [false, false, false]]);
  assert.deepEqual(a.notEqual(b).toArray(), [[true, false, true], [true, true, true]]);
  assert.deepEqual(tq.where(a.greater(3), a, b.neg()).toArray(), [[-3, -2, -1], [4, 5, 6]]);
  assert.deepEqual(tq.sub(10, a).toArray(), [[9, 8, 7], [6, 5, 4]]);
  assert.deepEqual(tq.maximum(a, tq.tensor(NaN, { device })).toArray(), [[NaN, NaN, NaN], [
    NaN,
    NaN,
    NaN,
  ]]);
});

testOnDevices("integer arithmetic truncates division and wraps", (device) => {
  const a = tq.tensor([7, -7, 100, 5], { dtype: "int32", device });
  const b = tq.tensor([2, 2, 0, -3], { dtype: "int32", device });
  assert.deepEqual(a.div(b).toArray(), [3, -3, 0, -1]);
  assert.deepEqual(a.mul(b).toArray(), [14, -14, 0, -15]);
  const i8 = tq.tensor([100, -100], { dtype: "int8", device });
  assert.deepEqual(i8.add(100).toArray(), [-56, 0]);
  assert.deepEqual(tq.tensor([2 ** 31 - 1], { dtype: "int32", device }).add(1).toArray(), [
    -(2 ** 31),
  ]);
});

testOnDevices("float16 and bfloat16 arithmetic rounds once from the exact result", (device) => {
  // 1 + 2^-11 is a float16 tie (rounds to 1); 1 + 3·2^-11 rounds up to 1 + 2^-9.
  const h = tq.tensor([1, 1], { dtype: "float16", device });
  const d = tq.tensor([2 ** -11, 3 * 2 ** -11], { dtype: "float16", device });
  assert.deepEqual(h.add(d).toArray(), [1, 1 + 2 ** -9]);
  const bf = tq.tensor([1, 1], { dtype: "bfloat16", device });
  const e = tq.tensor([2 ** -8, 3 * 2 ** -8], { dtype: "bfloat16", device });
  assert.deepEqual(bf.add(e).toArray(), [1, 1 + 2 ** -6]);
});

testOnDevices("cast follows the documented rules", (device) => {
  const x = tq.tensor([1.5, -2.7, 300, -1000, NaN, 0.1], { device });
  assert.deepEqual(x.cast("int8").toArray(), [1, -2, 127, -128, 0, 0]);
  assert.deepEqual(x.cast("bool").toArray(), [true, true, true, true, true, true]);
  assert.deepEqual(x.cast("float8e4m3").cast("float32").toArray(), [
    1.5,
    -2.75,
    288,
    -448,
    NaN,
    0.1015625,
  ]);
  assert.deepEqual(tq.tensor([true, false], { device }).cast("float32").toArray(), [1, 0]);
  assert.deepEqual(tq.tensor([65520], { device }).cast("float16").toArray(), [Infinity]);
  const i64 = tq.tensor(new BigInt64Array([2n ** 40n, -5n]), { device });
  assert.deepEqual(i64.cast("int32").toArray(), [2147483647, -5]);
  assert.deepEqual(i64.cast("float32").toArray(), [2 ** 40, -5]);
});

testOnDevices("rank-0 and 0-size tensors", (device) => {
  const s = tq.tensor(2, { device });
  assert.deepEqual(s.shape, []);
  assert.equal(s.mul(s).item(), 4);
  const z = tq.zeros([0, 3], { device });
  assert.deepEqual(z.add(1).shape, [0, 3]);
  assert.equal(z.exp().dataSync().length, 0);
});

Deno.test("elementwise errors name the op, the argument and the caller's line", () => {
  const a = tq.ones([2, 3]);
  let line = thisLine() + 1;
  let call = () => a.add(tq.ones([4]));
  assertTqError(call, {
    op: "add",
    kind: "shape",
    includes: ["argument 'b'", "[4]", "[2, 3]"],
    line,
  });
  line = thisLine() + 1;
  call = () => a.mul(tq.ones([3], { dtype: "float16" }));
  assertTqError(call, {
    op: "mul",
    kind: "dtype",
    includes: ["float32", "float16", "cast()"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.exp(tq.ones([2], { dtype: "int32" }));
  assertTqError(call, { op: "exp", kind: "dtype", includes: ["int32", "float32"], line });
  line = thisLine() + 1;
  call = () => tq.where(a, a, a);
  assertTqError(call, { op: "where", kind: "dtype", includes: ["bool"], line });
  line = thisLine() + 1;
  call = () => tq.gelu(a, { approximate: "fast" as "tanh" });
  assertTqError(call, { op: "gelu", kind: "argument", includes: ["approximate", '"fast"'], line });
  line = thisLine() + 1;
  call = () => a.cast("float64" as tq.DType);
  assertTqError(call, { op: "cast", kind: "dtype", includes: ["float64"], line });
  // A number operand of an integer tensor must be representable: encoding it would truncate or
  // saturate silently.
  const ints = tq.tensor([1, 2, 3], { dtype: "int32" });
  const cases: [string, () => unknown, string][] = [
    ["mul", () => ints.mul(0.5), "0.5"],
    ["less", () => ints.less(1.5), "1.5"],
    ["add", () => ints.add(NaN), "NaN"],
    ["add", () => ints.add(1e12), "1000000000000"],
    ["add", () => tq.tensor([1], { dtype: "int8" }).add(300), "300"],
  ];
  for (const [op, fn, value] of cases) {
    assertTqError(fn, { op, kind: "dtype", includes: [value, "int"] });
  }
  assert.deepEqual(ints.mul(2).toArray(), [2, 4, 6]);
  assert.deepEqual(ints.mul(0.5 * 4).toArray(), [2, 4, 6]);
});

testOnDevices("pow's IEEE cases and int64 → float casts round once", (device) => {
  // 1^y = 1 for any y, NaN included, and (−1)^±∞ = 1, as IEEE 754 and C's powf say.
  const base = tq.tensor([1, 1, 1, -1, -1, 2], { device });
  const exp = tq.tensor([NaN, Infinity, -Infinity, Infinity, -Infinity, NaN], { device });
  const p = Array.from(base.pow(exp).dataSync() as Float32Array);
  assert.deepEqual(p.slice(0, 5), [1, 1, 1, 1, 1]);
  assert.ok(Number.isNaN(p[5]));
  // 2^60 + 2^36 + 1: through float64 first it would round to 2^60 + 2^36, then to 2^60 in
  // float32; rounded once it is 2^60 + 2^37 (NumPy's value).
  const v = 2n ** 60n + 2n ** 36n + 1n;
  const big = tq.tensor(BigInt64Array.of(v, -v, 2n ** 24n + 1n, 12345n), { device });
  assert.deepEqual(Array.from(big.cast("float32").dataSync() as Float32Array), [
    2 ** 60 + 2 ** 37,
    -(2 ** 60 + 2 ** 37),
    2 ** 24,
    12345,
  ]);
  assert.deepEqual(Array.from(big.cast("float16").dataSync() as Float32Array).slice(3), [12344]);
});

testOnDevices("int64 arithmetic is exact beyond 2^53 and wraps", (device) => {
  const a = tq.tensor(new BigInt64Array([2n ** 62n, 2n ** 53n + 1n, -(2n ** 63n)]), { device });
  const b = tq.tensor(new BigInt64Array([2n ** 62n, 2n, 1n]), { device });
  assert.deepEqual(
    a.add(b).storageSync(),
    new BigInt64Array([-(2n ** 63n), 2n ** 53n + 3n, -(2n ** 63n) + 1n]),
  );
  assert.deepEqual(a.mul(b).storageSync(), new BigInt64Array([0n, 2n ** 54n + 2n, -(2n ** 63n)]));
  assert.deepEqual(
    a.neg().storageSync(),
    new BigInt64Array([-(2n ** 62n), -(2n ** 53n) - 1n, -(2n ** 63n)]),
  );
  assert.deepEqual(a.greater(b).toArray(), [false, true, false]);
  const i32 = tq.tensor([65537, -3], { dtype: "int32", device });
  assert.deepEqual(i32.mul(tq.tensor([65537, 5], { dtype: "int32", device })).toArray(), [
    131073,
    -15,
  ]);
});
