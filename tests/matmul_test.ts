import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { DType } from "../lib/dtype.ts";
import { assertTqError, randomValues, testOnDevices, thisLine } from "./helpers.ts";

// Norm-relative tolerances, ||out − ref|| / ||ref||, against a float64 reference computed from
// the (already rounded) inputs. One output rounding is at most 2^-24 / 2^-11 / 2^-8 relative
// for float32 / float16 / bfloat16; the float32 bound also allows float32 accumulation at the
// K used here (≤ 70).
const TOL: Record<string, number> = { float32: 1e-6, float16: 1e-3, bfloat16: 4e-3 };

/** Float64 `a @ b` for 2-D row-major operands. */
function refMatmul2d(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number) {
  const out = new Array<number>(m * n).fill(0);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p] * b[p * n + j];
      out[i * n + j] = s;
    }
  }
  return out;
}

function values(t: tq.Tensor): number[] {
  return Array.from(t.dataSync() as Float32Array);
}

function assertNormClose(actual: number[], expected: number[], tol: number, what: string): void {
  assert.equal(actual.length, expected.length, what);
  let num = 0, den = 0;
  for (let i = 0; i < expected.length; i++) {
    num += (actual[i] - expected[i]) ** 2;
    den += expected[i] ** 2;
  }
  const err = Math.sqrt(num / den);
  assert.ok(err <= tol, `${what}: norm-relative error ${err} > ${tol}`);
}

function randomTensor(shape: number[], seed: number, dtype: DType, device: string): tq.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return tq.tensor(randomValues(n, seed), { shape, dtype, device });
}

testOnDevices("2-D matmul matches a float64 reference in every float dtype", (device) => {
  // Odd M and N not a multiple of 4 (past one column block) reach every edge of the kernel.
  const sizes: [number, number, number][] = [[5, 7, 3], [7, 33, 70], [1, 1, 1], [8, 64, 4]];
  for (const dtype of ["float32", "float16", "bfloat16"] as DType[]) {
    for (const [m, k, n] of sizes) {
      const a = randomTensor([m, k], m * 100 + k, dtype, device);
      const b = randomTensor([k, n], n * 100 + k + 1, dtype, device);
      const y = tq.matmul(a, b);
      const what = `${dtype} [${m}, ${k}] @ [${k}, ${n}]`;
      assert.equal(y.dtype, dtype, what);
      assert.deepEqual(y.shape, [m, n], what);
      assertNormClose(values(y), refMatmul2d(values(a), values(b), m, k, n), TOL[dtype], what);
    }
  }
});

testOnDevices("hand-computed products and NaN/Inf propagation", (device) => {
  const a = tq.tensor([[1, 2], [3, 4]], { device });
  const b = tq.tensor([[5, 6], [7, 8]], { device });
  assert.deepEqual(tq.matmul(a, b).toArray(), [[19, 22], [43, 50]]);
  assert.deepEqual(a.matmul(tq.tensor([1, 1], { device })).toArray(), [3, 7]);
  // 0 · Inf is NaN: zeros must not be skipped.
  const inf = tq.tensor([[Infinity, 0]], { device });
  const y = values(tq.matmul(inf, tq.tensor([[0], [1]], { device })));
  assert.ok(Number.isNaN(y[0]));
  assert.deepEqual(values(tq.matmul(inf, tq.tensor([[1], [1]], { device }))), [Infinity]);
  // Exact integers in bfloat16 stay exact.
  const ab = tq.tensor([[1, 2], [3, 4]], { dtype: "bfloat16", device });
  assert.deepEqual(tq.matmul(ab, ab).toArray(), [[7, 10], [15, 22]]);
});

testOnDevices("batch dims broadcast like NumPy", (device) => {
  const a = randomTensor([2, 1, 3, 4], 51, "float32", device);
  const b = randomTensor([5, 4, 2], 52, "float32", device);
  const y = tq.matmul(a, b);
  assert.deepEqual(y.shape, [2, 5, 3, 2]);
  const av = values(a), bv = values(b), yv = values(y);
  for (let p = 0; p < 2; p++) {
    for (let q = 0; q < 5; q++) {
      const ref = refMatmul2d(av.slice(p * 12, p * 12 + 12), bv.slice(q * 8, q * 8 + 8), 3, 4, 2);
      const off = (p * 5 + q) * 6;
      assertNormClose(yv.slice(off, off + 6), ref, TOL.float32, `batch ${p}, ${q}`);
    }
  }
  // A 2-D operand broadcasts against a stack.
  const st = randomTensor([5, 2, 3], 54, "float32", device);
  const c = randomTensor([3, 4], 53, "float32", device);
  const z = tq.matmul(st, c);
  assert.deepEqual(z.shape, [5, 2, 4]);
  const stv = values(st), cv = values(c);
  const zref = Array.from(
    { length: 5 },
    (_, q) => refMatmul2d(stv.slice(q * 6, q * 6 + 6), cv, 2, 3, 4),
  ).flat();
  assertNormClose(values(z), zref, TOL.float32, "stack @ matrix");
});

testOnDevices("1-D operands: the added dim is removed", (device) => {
  const v = randomTensor([4], 61, "float32", device);
  const w = randomTensor([4], 62, "float32", device);
  const m = randomTensor([4, 3], 63, "float32", device);
  const s = randomTensor([2, 3, 4], 64, "float32", device);
  const t = randomTensor([2, 4, 3], 65, "float32", device);
  const vv = values(v), wv = values(w), mv = values(m), sv = values(s), tv = values(t);

  const dot = tq.matmul(v, w);
  assert.deepEqual(dot.shape, []);
  assertNormClose(values(dot), refMatmul2d(vv, wv, 1, 4, 1), TOL.float32, "vector · vector");

  const vm = tq.matmul(v, m);
  assert.deepEqual(vm.shape, [3]);
  assertNormClose(values(vm), refMatmul2d(vv, mv, 1, 4, 3), TOL.float32, "vector @ matrix");

  const sv1 = tq.matmul(s, w);
  assert.deepEqual(sv1.shape, [2, 3]);
  assertNormClose(values(sv1), refMatmul2d(sv, wv, 6, 4, 1), TOL.float32, "stack @ vector");

  const vt = tq.matmul(v, t);
  assert.deepEqual(vt.shape, [2, 3]);
  const ref = [
    ...refMatmul2d(vv, tv.slice(0, 12), 1, 4, 3),
    ...refMatmul2d(vv, tv.slice(12), 1, 4, 3),
  ];
  assertNormClose(values(vt), ref, TOL.float32, "vector @ stack");
});

testOnDevices(
  "0-size operands: K = 0 gives zeros, empty M/N/batch give empty results",
  (device) => {
    const k0 = tq.matmul(tq.zeros([3, 0], { device }), tq.zeros([0, 2], { device }));
    assert.deepEqual(k0.shape, [3, 2]);
    assert.deepEqual(values(k0), [0, 0, 0, 0, 0, 0]);
    const dot0 = tq.matmul(
      tq.zeros([0], { dtype: "float16", device }),
      tq.zeros([0], {
        dtype: "float16",
        device,
      }),
    );
    assert.deepEqual(dot0.shape, []);
    assert.equal(dot0.item(), 0);
    const empties: [number[], number[], number[]][] = [
      [[0, 4], [4, 2], [0, 2]],
      [[3, 4], [4, 0], [3, 0]],
      [[0, 2, 3], [3, 4], [0, 2, 4]],
    ];
    for (const [as, bs, out] of empties) {
      const y = tq.matmul(tq.zeros(as, { device }), tq.zeros(bs, { device }));
      assert.deepEqual(y.shape, out);
      assert.equal(y.dataSync().length, 0);
    }
    const b0 = tq.matmul(tq.zeros([1, 2, 3], { device }), tq.zeros([0, 3, 5], { device }));
    assert.deepEqual(b0.shape, [0, 2, 5]);
  },
);

testOnDevices("matmul errors name the op, both shapes and the caller's line", (device) => {
  const a = tq.ones([2, 3], { device });
  let line = thisLine() + 1;
  let call = () => tq.matmul(a, tq.ones([4, 5], { device }));
  assertTqError(call, {
    op: "matmul",
    kind: "shape",
    includes: ["inner dims differ", "[2, 3]", "[4, 5]", "3"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.matmul(tq.ones([3], { device }), tq.ones([4], { device }));
  assertTqError(call, { op: "matmul", kind: "shape", includes: ["[3]", "[4]"], line });
  line = thisLine() + 1;
  call = () => tq.matmul(tq.ones([2, 2, 3], { device }), tq.ones([3, 3, 4], { device }));
  assertTqError(call, {
    op: "matmul",
    kind: "shape",
    includes: ["batch dims", "[2, 2, 3]", "[3, 3, 4]"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.matmul(tq.tensor(2, { device }), a);
  assertTqError(call, { op: "matmul", kind: "shape", includes: ["'a'", "rank-0"], line });
  line = thisLine() + 1;
  call = () => tq.matmul(a, tq.tensor(2, { device }));
  assertTqError(call, { op: "matmul", kind: "shape", includes: ["'b'", "rank-0"], line });
  const i = tq.ones([2, 3], { dtype: "int32", device });
  line = thisLine() + 1;
  call = () => tq.matmul(i, tq.ones([3, 2], { dtype: "int32", device }));
  assertTqError(call, { op: "matmul", kind: "dtype", includes: ["int32", "float32"], line });
  line = thisLine() + 1;
  call = () => tq.matmul(a, tq.ones([3, 2], { dtype: "float16", device }));
  assertTqError(call, {
    op: "matmul",
    kind: "dtype",
    includes: ["'b'", "float16", "cast()"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.matmul(a, [[1], [2], [3]] as unknown as tq.Tensor);
  assertTqError(call, { op: "matmul", kind: "argument", includes: ["'b'"], line });
});
