/**
 * CUDA reductions, softmax, log-softmax and layer norm against the CPU backend on the same
 * seeded random non-zero inputs, plus CPU-side checks of the launch plans: an emulation of the
 * kernels' index arithmetic must visit exactly the elements the CPU kernel reduces, and every
 * kernel name a lowering can ask for must exist in the PTX.
 *
 * Tolerances (the GPU accumulates in float32, the CPU in float64, both round once):
 * - float32 sum / mean / var: norm-relative error 1e-5 over the output.
 * - float16 / bfloat16 outputs: within 2 ulps of the CPU value, plus (sums, means) the float32
 *   accumulation floor 2^-22 · Σ|x| of the reduced elements (÷ N for means), and (log-softmax,
 *   layer norm) 4e-6 absolute for outputs near zero that come from float32 differences.
 * - float32 softmax: 1e-5 relative elementwise; log-softmax and layer norm: 1e-5 relative +
 *   1e-5 absolute.
 * - max, min, argmax, argmin, integer sums: exact (comparisons are exact, ties go to the first
 *   occurrence on both backends, integer sums wrap identically).
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { DType } from "../lib/dtype.ts";
import { ptx as reducePtx } from "../kernels/ptx/reduce.ts";
import { ptx as nnPtx } from "../kernels/ptx/nn.ts";
import { type DimList, planReduction, type ReducePlan } from "../lib/backends/cuda/reduce.ts";
import { rowKernel } from "../lib/backends/cuda/nn.ts";
import { assertClose, randomValues, testOnGpu } from "./helpers.ts";

const FLOATS: DType[] = ["float32", "float16", "bfloat16"];
const INTS: DType[] = ["int8", "int32", "int64"];
const SUFFIX: Record<string, string> = {
  float32: "f32",
  float16: "f16",
  bfloat16: "bf16",
  int8: "i8",
  int32: "i32",
  int64: "i64",
};

// ---------------------------------------------------------------------------------------------
// Plan emulation (runs everywhere)

function offsetOf(idx: number, dims: DimList): number {
  const n = dims.sizes.length;
  if (n === 0) return 0;
  let off = 0;
  for (let d = n - 1; d >= 1; d--) {
    const q = Math.floor(idx / dims.sizes[d]);
    off += (idx - q * dims.sizes[d]) * dims.strides[d];
    idx = q;
  }
  return off + idx * dims.strides[0];
}

/** For output o and reduced index k, the flat input index the CPU kernel reduces. */
function referenceLayout(shape: number[], axes: number[]): { m: number; r: number; at: number[] } {
  const kept = shape.map((_, d) => d).filter((d) => !axes.includes(d));
  const red = shape.map((_, d) => d).filter((d) => axes.includes(d));
  const m = kept.reduce((p, d) => p * shape[d], 1);
  const r = red.reduce((p, d) => p * shape[d], 1);
  const at = new Array<number>(m * r).fill(-1);
  const n = shape.reduce((p, d) => p * d, 1);
  const index = new Array<number>(shape.length).fill(0);
  for (let i = 0; i < n; i++) {
    let o = 0, k = 0;
    for (const d of kept) o = o * shape[d] + index[d];
    for (const d of red) k = k * shape[d] + index[d];
    at[o * r + k] = i;
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++index[d] < shape[d]) break;
      index[d] = 0;
    }
  }
  return { m, r, at };
}

/** Replays the kernels' loops; returns the input index visited for each (o, k), in o·R + k. */
function emulate(plan: ReducePlan): number[] {
  const { outputs: m, reduced: r, chunk, splits } = plan;
  const seen = new Array<number>(m * r).fill(-1);
  const visit = (o: number, k: number, input: number): void => {
    assert.ok(k >= 0 && k < r, `reduced index ${k} out of range`);
    assert.equal(seen[o * r + k], -1, `output ${o} visits reduced index ${k} twice`);
    seen[o * r + k] = input;
  };
  if (plan.kind === "rows") {
    const rowLen = plan.rowLen;
    for (let item = 0; item < m * splits; item++) {
      const o = Math.floor(item / splits), s = item % splits;
      const base = offsetOf(o, plan.kept);
      const k1 = Math.min(r, (s + 1) * chunk);
      for (let k = s * chunk; k < k1;) {
        const q = Math.floor(k / rowLen);
        const r0 = k - q * rowLen;
        const r1 = Math.min(rowLen, r0 + (k1 - k));
        const seg = base + offsetOf(q, plan.red);
        for (let i = r0; i < r1; i++) visit(o, q * rowLen + i, seg + i);
        k += r1 - r0;
      }
    }
  } else {
    for (let o = 0; o < m; o++) {
      const base = offsetOf(o, plan.kept);
      for (let s = 0; s < splits; s++) {
        const k1 = Math.min(r, (s + 1) * chunk);
        for (let k = s * chunk; k < k1; k++) visit(o, k, base + offsetOf(k, plan.red));
      }
    }
  }
  return seen;
}

function checkLaunchShape(plan: ReducePlan): void {
  const [gx, gy, gz] = plan.grid;
  const [bx, by, bz] = plan.block;
  assert.ok(gx >= 1 && gy >= 1 && gz === 1 && bz === 1);
  assert.ok(plan.kept.sizes.length <= 8 && plan.red.sizes.length <= 8);
  assert.ok(plan.splits >= 1 && plan.chunk >= 1);
  if (plan.reduced > 0) {
    assert.ok(plan.chunk * plan.splits >= plan.reduced, "splits cover the reduced range");
    assert.ok((plan.splits - 1) * plan.chunk < plan.reduced, "no empty split");
  }
  if (plan.kind === "rows") {
    assert.equal(by, 1);
    assert.equal(gy, 1);
    assert.equal(bx, plan.warpMode ? 256 : 512);
    assert.ok(plan.rowLen >= 32);
    if (plan.warpMode) assert.equal(plan.splits, 1);
  } else {
    assert.equal(bx * by, 256);
    assert.equal(by & (by - 1), 0, "threadIdx.y extent is a power of two");
    assert.ok(gx * bx >= plan.outputs, "grid covers every output");
    assert.equal(gy, plan.splits);
    assert.ok(gy <= 65535);
  }
}

const PLAN_CASES: [number[], number[]][] = [
  [[], []],
  [[7], [0]],
  [[7], []],
  [[3, 5, 7, 11], [0, 1, 2, 3]],
  [[3, 5, 7, 11], [3]],
  [[3, 5, 7, 11], [0]],
  [[3, 5, 7, 11], [1]],
  [[3, 5, 7, 11], [0, 2]],
  [[3, 5, 7, 11], [1, 3]],
  [[3, 5, 7, 11], [0, 1, 3]],
  [[3, 5, 7, 11], [2, 3]],
  [[3, 1, 5, 1, 7], [1, 2]],
  [[2, 3, 40], [2]],
  [[6, 40, 70], [0, 2]],
  [[6, 40, 70], [1, 2]],
  [[40, 3, 1100], [0, 2]],
  [[2, 20000], [1]],
  [[3, 5000], [1]],
  [[5000, 6], [0]],
  [[4096, 2], [0]],
  [[9, 3], [1]],
  [[2, 3, 2, 3, 2, 3, 2, 3], [0, 2, 4, 6]],
  [[2, 3, 2, 3, 2, 3, 2, 3], [1, 3, 5, 7]],
  [[3, 0], [1]],
  [[0, 4], [0]],
];

Deno.test("cuda reduce plans: the emulated kernels visit exactly the CPU's elements", () => {
  for (const smCount of [4, 132]) {
    for (const [shape, axes] of PLAN_CASES) {
      const ref = referenceLayout(shape, axes);
      if (ref.m === 0) continue; // the lowering launches nothing
      const plan = planReduction(shape, axes, smCount);
      const what = `shape [${shape}] axes [${axes}] smCount ${smCount}`;
      assert.equal(plan.outputs, ref.m, what);
      assert.equal(plan.reduced, ref.r, what);
      checkLaunchShape(plan);
      assert.deepEqual(emulate(plan), ref.at, what);
    }
  }
});

Deno.test("cuda reduce plans: paths and splits are chosen as intended", () => {
  // Contiguous last-axis rows: a warp per row; long rows: blocks, split when outputs are few.
  let p = planReduction([64, 300], [1], 132);
  assert.equal(p.kind, "rows");
  assert.equal(p.warpMode, true);
  p = planReduction([1 << 20], [0], 132);
  assert.equal(p.kind, "rows");
  assert.equal(p.warpMode, false);
  assert.ok(p.splits > 64, `splits ${p.splits}`);
  // Leading axis with a contiguous inner block: threads over inner, split over the axis.
  p = planReduction([5000, 64], [0], 132);
  assert.equal(p.kind, "cols");
  assert.deepEqual(p.block, [32, 8, 1]);
  assert.ok(p.splits > 1);
  p = planReduction([1 << 20, 2], [0], 132);
  assert.deepEqual(p.block, [2, 128, 1]);
  // Short rows: a thread per output.
  p = planReduction([1 << 16, 3], [1], 132);
  assert.equal(p.kind, "cols");
  assert.deepEqual(p.block, [256, 1, 1]);
  // More than 8 runs of reduced dims is refused clearly.
  const shape = Array.from({ length: 18 }, (_, i) => 2 + (i % 2));
  const axes = shape.map((_, i) => i).filter((i) => i % 2 === 0);
  assert.throws(() => planReduction(shape, axes, 132), (e: unknown) => {
    assert.ok(e instanceof tq.TensorqError);
    assert.equal(e.kind, "unsupported");
    return true;
  });
});

function ptxHas(module: { ptxSm90a: string; ptxCompute80: string }, name: string): boolean {
  return module.ptxSm90a.includes(`.entry ${name}(`) &&
    module.ptxCompute80.includes(`.entry ${name}(`);
}

Deno.test("cuda reduce / nn kernels: every name a lowering asks for is in the PTX", () => {
  const ops: [string, DType[]][] = [
    ["sum", [...FLOATS, ...INTS]],
    ["mean", FLOATS],
    ["var", FLOATS],
    ["max", [...FLOATS, ...INTS]],
    ["min", [...FLOATS, ...INTS]],
    ["argmax", [...FLOATS, ...INTS]],
    ["argmin", [...FLOATS, ...INTS]],
  ];
  for (const [op, dtypes] of ops) {
    for (const dtype of dtypes) {
      for (const kind of ["rows", "cols", "finish"]) {
        const name = `reduce_${kind}_${op}_${SUFFIX[dtype]}`;
        assert.ok(ptxHas(reducePtx, name), name);
      }
    }
  }
  const lengths = [...Array.from({ length: 1100 }, (_, i) => i + 1), 2048, 4099, 12288, 20000];
  for (const dtype of FLOATS) {
    const sfx = SUFFIX[dtype];
    assert.ok(ptxHas(nnPtx, `softmax_${sfx}_cols`));
    for (const length of lengths) {
      const k = rowKernel(100, length, dtype === "float32" ? 4 : 2, 132);
      for (const family of ["softmax", "layer_norm"]) {
        const name = `${family}_${sfx}_${k.variant}`;
        assert.ok(ptxHas(nnPtx, name), `${name} (length ${length})`);
      }
      if (k.kind === "warp") assert.ok(length <= 1024);
      else assert.ok(k.sharedBytes <= 47 * 1024 && k.block[0] <= 512);
    }
  }
  // GPT-2 rows: a warp each, 16-byte accesses.
  assert.equal(rowKernel(1024, 768, 4, 132).variant, "warp_v32");
  assert.equal(rowKernel(1024, 768, 2, 132).variant, "warp_v32");
  assert.equal(rowKernel(1024, 512, 4, 132).variant, "warp_v16");
  assert.equal(rowKernel(1024, 4096, 4, 132).variant, "block_v");
  assert.equal(rowKernel(1024, 4096, 4, 132).cached, true);
  assert.equal(rowKernel(1024, 20000, 4, 132).cached, false);
});

// ---------------------------------------------------------------------------------------------
// GPU against CPU

/** A seeded random tensor on the CPU: normal floats (non-zero), or integers spanning `dtype`. */
function randomTensor(shape: number[], dtype: DType, seed: number): tq.Tensor {
  const n = shape.reduce((p, d) => p * d, 1);
  const v = randomValues(n, seed);
  if (dtype === "int64") {
    // Around ±2^60: sums of a few dozen wrap.
    const big = BigInt64Array.from(v, (x) => BigInt(Math.round(x * 2 ** 20)) * (1n << 40n));
    return tq.tensor(big, { shape, dtype });
  }
  if (dtype === "int32") {
    // Around ±2^29: sums of a few dozen wrap.
    return tq.tensor(
      v.map((x) => Math.max(-(2 ** 31), Math.min(2 ** 31 - 1, Math.round(x * 2 ** 29)))),
      {
        shape,
        dtype,
      },
    );
  }
  if (dtype === "int8") {
    return tq.tensor(v.map((x) => Math.max(-128, Math.min(127, Math.round(x * 40)))), {
      shape,
      dtype,
    });
  }
  return tq.tensor(v.map((x) => (x === 0 ? 0.5 : x)), { shape, dtype });
}

/** One unit in the last place of |v| in `dtype`. */
function ulp(dtype: DType, v: number): number {
  const a = Math.abs(v);
  const [mantissa, minExp] = dtype === "float16"
    ? [10, -14]
    : dtype === "bfloat16"
    ? [7, -126]
    : [23, -126];
  const e = a === 0 ? minExp : Math.max(minExp, Math.floor(Math.log2(a)));
  return 2 ** (e - mantissa);
}

/** |actual − expected| <= ulps · ulp(expected) + atol[i] elementwise; NaN only matches NaN. */
function assertUlps(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  dtype: DType,
  ulps: number,
  atol: (i: number) => number,
  what: string,
): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i], e = expected[i];
    if (Number.isNaN(a) || Number.isNaN(e)) {
      assert.ok(Number.isNaN(a) && Number.isNaN(e), `${what}: at ${i} got ${a}, expected ${e}`);
      continue;
    }
    if (a === e) continue;
    const bound = ulps * ulp(dtype, e) + atol(i);
    assert.ok(
      Math.abs(a - e) <= bound,
      `${what}: at ${i} got ${a}, expected ${e} (${
        (Math.abs(a - e) / ulp(dtype, e)).toFixed(2)
      } ulps, bound ${bound})`,
    );
  }
}

function assertExact(actual: tq.TensorData, expected: tq.TensorData, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i], e = expected[i];
    if (typeof a === "number" && typeof e === "number" && Number.isNaN(a) && Number.isNaN(e)) {
      continue;
    }
    assert.equal(a, e, `${what}: at ${i}`);
  }
}

function normRel(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < expected.length; i++) {
    if (Number.isNaN(expected[i]) && Number.isNaN(actual[i])) continue;
    num += (actual[i] - expected[i]) ** 2;
    den += expected[i] ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

type ReduceOp = "sum" | "mean" | "var" | "max" | "min" | "argmax" | "argmin";
const FLOAT_OPS: ReduceOp[] = ["sum", "mean", "var", "max", "min", "argmax", "argmin"];
const INT_OPS: ReduceOp[] = ["sum", "max", "min", "argmax", "argmin"];

function reduceWith(
  op: ReduceOp,
  x: tq.Tensor,
  axis: number | number[] | undefined,
  keepdims: boolean,
): tq.Tensor {
  switch (op) {
    case "sum":
      return tq.sum(x, axis, keepdims);
    case "mean":
      return tq.mean(x, axis, keepdims);
    case "var":
      return tq.var(x, axis, keepdims, 1);
    case "max":
      return tq.max(x, axis, keepdims);
    case "min":
      return tq.min(x, axis, keepdims);
    case "argmax":
      return tq.argmax(x, axis as number | undefined, keepdims);
    case "argmin":
      return tq.argmin(x, axis as number | undefined, keepdims);
  }
}

/** Runs `op` on the CPU and on the GPU on the same input and compares (see the module doc). */
function checkReduction(
  op: ReduceOp,
  x: tq.Tensor,
  axis: number | number[] | undefined,
  keepdims: boolean,
): void {
  const what = `${op} ${x.dtype} [${x.shape}] axis ${JSON.stringify(axis)} keepdims ${keepdims}`;
  const cpu = reduceWith(op, x, axis, keepdims);
  const gpu = reduceWith(op, x.to("cuda"), axis, keepdims);
  assert.deepEqual(gpu.shape, cpu.shape, what);
  assert.equal(gpu.dtype, cpu.dtype, what);
  const e = cpu.dataSync(), a = gpu.dataSync();
  const dtype = x.dtype;
  if (!FLOATS.includes(dtype) || op === "max" || op === "min" || op.startsWith("arg")) {
    assertExact(a, e, what);
    return;
  }
  const af = a as Float32Array, ef = e as Float32Array;
  if (dtype === "float32") {
    const err = normRel(af, ef);
    assert.ok(err <= 1e-5, `${what}: norm-relative error ${err}`);
    for (let i = 0; i < ef.length; i++) {
      assert.equal(Number.isNaN(af[i]), Number.isNaN(ef[i]), `${what}: NaN at ${i}`);
    }
    return;
  }
  // float16 / bfloat16: 2 ulps plus the float32 accumulation floor.
  let floor: ArrayLike<number> = new Float32Array(ef.length);
  if (op === "sum" || op === "mean") {
    const absSum = tq.sum(x.abs().cast("float32"), axis, keepdims).dataSync() as Float32Array;
    const count = x.size / Math.max(1, ef.length);
    floor = absSum.map((s) => (s * 2 ** -22) / (op === "mean" ? Math.max(1, count) : 1));
  }
  assertUlps(af, ef, dtype, 2, (i) => floor[i], what);
}

const AXES_CASES: (number | number[] | undefined)[] = [
  undefined,
  3,
  -1,
  0,
  1,
  [0, 2],
  [1, 3],
  [0, 1, 3],
  [2, 3],
  [1, 2],
];

testOnGpu("cuda reductions match the CPU: every op, dtype, axes and keepdims", () => {
  const shape = [3, 5, 7, 11];
  for (const dtype of [...FLOATS, ...INTS]) {
    const x = randomTensor(shape, dtype, 101);
    const ops = FLOATS.includes(dtype) ? FLOAT_OPS : INT_OPS;
    for (const op of ops) {
      for (const axis of AXES_CASES) {
        if (op.startsWith("arg") && Array.isArray(axis)) continue; // one axis or all
        for (const keepdims of [false, true]) checkReduction(op, x, axis, keepdims);
      }
    }
  }
});

testOnGpu("cuda reductions match the CPU: rows with vector tails, strided segments, splits", () => {
  const cases: [number[], number | number[] | undefined][] = [
    [[6, 40, 70], 2], // rows of 70: unaligned starts, vector body and tails
    [[6, 40, 70], [0, 2]], // rows path with an outer reduced dim
    [[6, 40, 70], [1, 2]], // merged into contiguous rows of 2800
    [[40, 3, 1100], [0, 2]], // block rows, splits crossing segments
    [[24, 4, 4096], [0, 2]],
    [[5000, 64], 0], // leading axis, threads over the inner block, split over the axis
    [[1 << 17, 2], 0],
    [[1 << 16, 3], 1], // many short rows
    [[1 << 14, 64], 1], // many warp rows
    [[300, 3000], 1], // block rows
    [[2, 3, 2, 3, 2, 3, 2, 3], [0, 2, 4, 6]], // many non-adjacent runs
    [[2, 3, 2, 3, 2, 3, 2, 3], [1, 3, 5, 7]],
  ];
  for (const dtype of [...FLOATS, ...INTS]) {
    for (const [i, [shape, axis]] of cases.entries()) {
      const x = randomTensor(shape, dtype, 200 + i);
      for (const op of FLOATS.includes(dtype) ? FLOAT_OPS : INT_OPS) {
        if (op.startsWith("arg") && Array.isArray(axis)) continue;
        checkReduction(op, x, axis, false);
      }
    }
  }
});

testOnGpu("cuda reductions match the CPU: rows of 1<<20 and whole-tensor reductions", () => {
  for (const dtype of [...FLOATS, ...INTS]) {
    const x = randomTensor([1 << 20], dtype, 300);
    for (const op of FLOATS.includes(dtype) ? FLOAT_OPS : INT_OPS) checkReduction(op, x, 0, false);
    const y = randomTensor([3, 1 << 19], dtype, 301);
    for (const op of FLOATS.includes(dtype) ? FLOAT_OPS : INT_OPS) {
      checkReduction(op, y, 1, true);
      checkReduction(op, y, undefined, false);
    }
  }
});

testOnGpu("cuda reductions: rank 0, no axes, size-1 and empty reductions", () => {
  for (const dtype of FLOATS) {
    const s = tq.tensor(2.5, { dtype });
    for (const op of FLOAT_OPS) {
      checkReduction(op, s, undefined, false);
      checkReduction(op, s, 0, true);
    }
    const x = randomTensor([4, 1, 6], dtype, 400);
    for (const op of ["sum", "mean", "max"] as ReduceOp[]) {
      checkReduction(op, x, [], false);
      checkReduction(op, x, 1, false);
      checkReduction(op, x, [1, 2], true);
    }
    // Empty reductions: sum 0, mean and var NaN; an empty output launches nothing.
    for (const [shape, axis] of [[[3, 0], 1], [[0, 4], 0], [[0, 4], 1]] as [number[], number][]) {
      const e = tq.zeros(shape, { dtype });
      for (const op of ["sum", "mean", "var"] as ReduceOp[]) checkReduction(op, e, axis, false);
    }
  }
  const g = tq.sum(tq.zeros([3, 0], { device: "cuda" }), 1).dataSync() as Float32Array;
  assert.deepEqual(Array.from(g), [0, 0, 0]);
  const m = tq.mean(tq.zeros([3, 0], { device: "cuda" }), 1).dataSync() as Float32Array;
  assert.ok(Array.from(m).every(Number.isNaN));
});

testOnGpu(
  "cuda reductions: NaN propagates, arg ops pick the first NaN, ties the first index",
  () => {
    for (const dtype of FLOATS) {
      const n = 6 * 300;
      const v = Array.from(randomValues(n, 500));
      // NaNs in rows 1 and 4 (two in row 4), and a column of ties in row 2.
      v[1 * 300 + 17] = NaN;
      v[4 * 300 + 250] = NaN;
      v[4 * 300 + 3] = NaN;
      for (let k = 0; k < 300; k += 50) v[2 * 300 + k] = 9;
      for (let k = 25; k < 300; k += 50) v[2 * 300 + k] = -9;
      const x = tq.tensor(v, { shape: [6, 300], dtype });
      const t = x.transpose();
      for (const op of FLOAT_OPS) {
        checkReduction(op, x, 1, false);
        checkReduction(op, x, undefined, false);
        // The same data laid out so the reduced axis is the leading one.
        checkReduction(op, t, 0, false);
      }
      const am = tq.argmax(x.to("cuda"), 1).dataSync() as Int32Array;
      assert.equal(am[1], 17);
      assert.equal(am[4], 3);
      assert.equal(am[2], 0);
      assert.equal((tq.argmin(x.to("cuda"), 1).dataSync() as Int32Array)[2], 25);
    }
  },
);

testOnGpu("cuda arg / extreme ops on rows whose values all equal the identity", () => {
  // Every element −inf (floats) or the dtype's minimum / maximum (ints): index 0 must win.
  const cases: [DType, number][] = [
    ["float32", -Infinity],
    ["float16", -Infinity],
    ["bfloat16", -Infinity],
    ["int8", -128],
    ["int32", -(2 ** 31)],
  ];
  for (const [dtype, low] of cases) {
    for (const shape of [[3, 700], [3, 20], [2, 40000]]) {
      const x = tq.full(shape, low, { dtype });
      checkReduction("argmax", x, 1, false);
      checkReduction("max", x, 1, false);
      checkReduction("argmax", x, undefined, false);
      const first = tq.argmax(x.to("cuda"), 1).dataSync() as Int32Array;
      assert.ok(first.every((i) => i === 0), `${dtype} [${shape}]`);
    }
  }
  const high: [DType, number][] = [["float32", Infinity], ["int8", 127], ["int32", 2 ** 31 - 1]];
  for (const [dtype, value] of high) {
    const x = tq.full([4, 300], value, { dtype });
    checkReduction("argmin", x, 1, false);
    checkReduction("argmin", x, 0, false);
    checkReduction("min", x, 1, false);
  }
  const big = tq.tensor(BigInt64Array.from({ length: 600 }, () => -(2n ** 63n)), {
    shape: [2, 300],
    dtype: "int64",
  });
  checkReduction("argmax", big, 1, false);
  checkReduction("argmax", big, 0, false);
});

// ---------------------------------------------------------------------------------------------
// softmax, log-softmax, layer norm

/**
 * Elementwise check of a softmax-like output. `nearZero`: allow 1e-5 (float32) / 4e-6 (16-bit)
 * absolute for outputs near zero that come from float32 differences (log-softmax, layer norm);
 * softmax has no such floor (its error is relative).
 */
function checkFloatOutput(
  a: Float32Array,
  e: Float32Array,
  dtype: DType,
  nearZero: boolean,
  what: string,
): void {
  if (dtype === "float32") {
    assertClose(a, e, { rtol: 1e-5, atol: nearZero ? 1e-5 : 1e-30, message: what });
  } else {
    assertUlps(a, e, dtype, 2, () => (nearZero ? 4e-6 : 0), what);
  }
}

function checkSoftmax(x: tq.Tensor, axis: number): void {
  for (const [name, fn] of [["softmax", tq.softmax], ["logSoftmax", tq.logSoftmax]] as const) {
    const what = `${name} ${x.dtype} [${x.shape}] axis ${axis}`;
    const e = fn(x, axis).dataSync() as Float32Array;
    const a = fn(x.to("cuda"), axis).dataSync() as Float32Array;
    checkFloatOutput(a, e, x.dtype, name === "logSoftmax", what);
  }
}

testOnGpu(
  "cuda softmax / logSoftmax match the CPU along the last axis (warp and block rows)",
  () => {
    const lengths = [1, 3, 4, 7, 8, 31, 32, 33, 100, 256, 257, 500, 512, 768, 1000, 1023, 1024];
    const long = [1025, 2048, 4099, 12000, 13000, 1 << 16];
    for (const dtype of FLOATS) {
      for (const [i, length] of lengths.entries()) {
        checkSoftmax(randomTensor([37, length], dtype, 600 + i), -1);
      }
      for (const [i, length] of long.entries()) {
        checkSoftmax(randomTensor([5, length], dtype, 700 + i), 1);
      }
      checkSoftmax(randomTensor([2, 12, 128, 512], dtype, 710), -1); // attention scores
      checkSoftmax(tq.tensor(0.75, { dtype }), 0);
    }
  },
);

testOnGpu("cuda softmax / logSoftmax match the CPU along other axes", () => {
  for (const dtype of FLOATS) {
    const x = randomTensor([5, 7, 9], dtype, 800);
    checkSoftmax(x, 0);
    checkSoftmax(x, 1);
    checkSoftmax(randomTensor([3, 2000, 4], dtype, 801), 1);
  }
});

testOnGpu("cuda softmax: NaN and infinities behave as on the CPU", () => {
  const v = Array.from(randomValues(4 * 40, 900));
  v[0 * 40 + 5] = NaN; // NaN row
  v[1 * 40 + 7] = Infinity; // +inf: exp(inf − inf) is NaN, so the row is NaN
  for (let k = 0; k < 40; k++) v[2 * 40 + k] = -Infinity; // all −inf: NaN
  v[3 * 40 + 9] = -Infinity; // one −inf: probability 0
  for (const dtype of FLOATS) {
    const x = tq.tensor(v, { shape: [4, 40], dtype });
    checkSoftmax(x, 1);
    checkSoftmax(x.transpose(), 0);
    const big = tq.tensor(Array.from({ length: 3000 }, (_, i) => (i === 1234 ? NaN : i / 3000)), {
      shape: [1, 3000],
      dtype,
    });
    checkSoftmax(big, 1);
  }
});

testOnGpu(
  "cuda layerNorm matches the CPU: GPT-2 rows, odd rows, long rows, weight and bias",
  () => {
    const sizes = [1, 3, 8, 64, 100, 257, 768, 1000, 1024, 1030, 4096, 20000];
    for (const dtype of FLOATS) {
      for (const [i, d] of sizes.entries()) {
        const x = randomTensor([9, d], dtype, 1000 + i);
        const w = randomTensor([d], dtype, 1100 + i);
        const b = randomTensor([d], dtype, 1200 + i);
        const variants: [string, tq.Tensor | undefined, tq.Tensor | undefined][] = [
          ["plain", undefined, undefined],
          ["weight", w, undefined],
          ["bias", undefined, b],
          ["weight+bias", w, b],
        ];
        for (const [name, wt, bt] of variants) {
          const what = `layerNorm ${dtype} d ${d} ${name}`;
          const e = tq.layerNorm(x, wt, bt, 1e-5).dataSync() as Float32Array;
          const a = tq.layerNorm(x.to("cuda"), wt?.to("cuda"), bt?.to("cuda"), 1e-5)
            .dataSync() as Float32Array;
          checkFloatOutput(a, e, dtype, true, what);
        }
      }
      // GPT-2 activations, and normalizing two trailing dims.
      const h = randomTensor([4, 64, 768], dtype, 1300);
      const w = randomTensor([768], dtype, 1301);
      const b = randomTensor([768], dtype, 1302);
      checkFloatOutput(
        tq.layerNorm(h.to("cuda"), w.to("cuda"), b.to("cuda")).dataSync() as Float32Array,
        tq.layerNorm(h, w, b).dataSync() as Float32Array,
        dtype,
        true,
        `layerNorm ${dtype} [4, 64, 768]`,
      );
      const x2 = randomTensor([6, 5, 12], dtype, 1303);
      const w2 = randomTensor([5, 12], dtype, 1304);
      checkFloatOutput(
        tq.layerNorm(x2.to("cuda"), w2.to("cuda"), undefined, 1e-3).dataSync() as Float32Array,
        tq.layerNorm(x2, w2, undefined, 1e-3).dataSync() as Float32Array,
        dtype,
        true,
        `layerNorm ${dtype} two trailing dims`,
      );
    }
  },
);
