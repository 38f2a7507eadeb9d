import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { assertTqError, testOnDevices, thisLine } from "./helpers.ts";

testOnDevices("tensor() from nested arrays, typed arrays and scalars", (device) => {
  const a = tq.tensor([[1, 2, 3], [4, 5, 6]], { device });
  assert.deepEqual(a.shape, [2, 3]);
  assert.equal(a.dtype, "float32");
  assert.equal(a.device, device === "cuda" ? "cuda:0" : "cpu");
  assert.deepEqual(a.toArray(), [[1, 2, 3], [4, 5, 6]]);
  assert.deepEqual(tq.tensor(new Int32Array([1, -2]), { device }).dtype, "int32");
  assert.deepEqual(tq.tensor(new Int8Array([1, -2]), { device }).dtype, "int8");
  assert.deepEqual(tq.tensor(new BigInt64Array([1n, -2n]), { device }).dtype, "int64");
  assert.deepEqual(tq.tensor([true, false], { device }).dtype, "bool");
  const f = tq.tensor(new Float32Array([1, 2, 3, 4, 5, 6]), { shape: [3, 2], device });
  assert.deepEqual(f.toArray(), [[1, 2], [3, 4], [5, 6]]);
  assert.equal(tq.tensor(7.5, { device }).item(), 7.5);
  assert.deepEqual(tq.tensor([], { device }).shape, [0]);
  const h = tq.tensor([0.1, 65504, 4e-8], { dtype: "float16", device });
  assert.deepEqual(h.toArray(), [0.0999755859375, 65504, 5.960464477539063e-8]);
});

testOnDevices("creation functions", (device) => {
  assert.deepEqual(tq.zeros([2, 2], { device }).toArray(), [[0, 0], [0, 0]]);
  assert.deepEqual(tq.ones([3], { dtype: "int32", device }).toArray(), [1, 1, 1]);
  assert.deepEqual(tq.full([2], 2.5, { device }).toArray(), [2.5, 2.5]);
  assert.deepEqual(tq.arange(4, undefined, 1, { device }).toArray(), [0, 1, 2, 3]);
  assert.deepEqual(tq.arange(1, 2, 0.25, { device }).toArray(), [1, 1.25, 1.5, 1.75]);
  assert.deepEqual(tq.arange(5, 0, -2, { dtype: "int32", device }).toArray(), [5, 3, 1]);
  assert.deepEqual(tq.linspace(0, 1, 5, { device }).toArray(), [0, 0.25, 0.5, 0.75, 1]);
  assert.deepEqual(tq.linspace(3, 3, 1, { device }).toArray(), [3]);
});

Deno.test("randn and rand are reproducible by seed and have the right moments", () => {
  const a = tq.randn([10000], { seed: 42 }).dataSync() as Float32Array;
  const b = tq.randn([10000], { seed: 42 }).dataSync() as Float32Array;
  const c = tq.randn([10000], { seed: 43 }).dataSync() as Float32Array;
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const variance = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
  assert.ok(Math.abs(mean) < 0.05, `mean ${mean}`);
  assert.ok(Math.abs(variance - 1) < 0.05, `variance ${variance}`);
  const u = tq.rand([10000], { seed: 1, low: 2, high: 4 }).dataSync() as Float32Array;
  assert.ok(u.every((v) => v >= 2 && v < 4));
  assert.ok(Math.abs(u.reduce((s, v) => s + v, 0) / u.length - 3) < 0.05);
  tq.manualSeed(5);
  const g1 = tq.randn([4]).dataSync();
  tq.manualSeed(5);
  assert.deepEqual(tq.randn([4]).dataSync(), g1);
});

Deno.test("ops are lazy, evaluation memoizes, and repeated graphs reuse the plan", async () => {
  const x = tq.tensor([1, 2, 3]);
  const y = x.mul(2).add(1);
  assert.equal(y.isEvaluated, false);
  assert.deepEqual(Array.from(await y.data() as Float32Array), [3, 5, 7]);
  assert.equal(y.isEvaluated, true);
  const before = tq.planCacheStats();
  // y is now a constant: z's graph is one op over a realized leaf.
  const z = y.sub(1);
  assert.deepEqual(z.toArray(), [2, 4, 6]);
  const mid = tq.planCacheStats();
  assert.equal(mid.lowered, before.lowered + 1);
  // The same structure on fresh data: no new plan.
  for (let i = 0; i < 5; i++) {
    const w = tq.tensor([i, i, i]).mul(2).add(1);
    assert.deepEqual(w.toArray(), [2 * i + 1, 2 * i + 1, 2 * i + 1]);
  }
  const after = tq.planCacheStats();
  // y's first evaluation already lowered the mul/add structure over one leaf.
  assert.equal(after.lowered, mid.lowered, "the mul/add plan is reused");
  assert.ok(after.hits >= mid.hits + 4);
});

Deno.test("the plan cache keeps the most recently used plans up to its limit", () => {
  tq.clearPlanCache();
  const start = tq.planCacheStats();
  assert.equal(start.limit, tq.DEFAULT_PLAN_CACHE_LIMIT);
  // A graph per length, as an eager decode loop whose cache grows makes.
  const run = (n: number) => tq.arange(0, n).mul(2).add(1).dataSync();
  try {
    tq.setPlanCacheLimit(3);
    for (const n of [1, 2, 3]) run(n);
    run(1); // now the most recent: 2 is the oldest
    run(4);
    const s = tq.planCacheStats();
    assert.equal(s.size, 3);
    assert.equal(s.evicted - start.evicted, 1);
    const lowered = s.lowered;
    run(1);
    run(3);
    run(4);
    assert.equal(tq.planCacheStats().lowered, lowered, "1, 3 and 4 were kept");
    run(2);
    assert.equal(tq.planCacheStats().lowered, lowered + 1, "2 was evicted");
    assert.deepEqual(Array.from(run(2) as Float32Array), [1, 3]);
    tq.setPlanCacheLimit(1);
    assert.equal(tq.planCacheStats().size, 1, "lowering the limit evicts at once");
    assertTqError(() => tq.setPlanCacheLimit(0), {
      op: "setPlanCacheLimit",
      includes: ["positive integer"],
    });
  } finally {
    tq.setPlanCacheLimit(tq.DEFAULT_PLAN_CACHE_LIMIT);
  }
});

Deno.test("printing evaluates and shows dtype, device and shape", () => {
  const t = tq.tensor([[1.5, -2], [3, 4]]).mul(2);
  const s = String(t);
  assert.equal(t.isEvaluated, true);
  assert.match(s, /\[\[ *3, +-4\],\n +\[ *6, +8\]\]/);
  assert.match(s, /dtype=float32, device=cpu, shape=\[2, 2\]/);
  assert.match(Deno.inspect(t), /tensor\(/);
  const big = tq.arange(5000);
  assert.match(String(big), /0, +1, +2, \.\.\., 4997, 4998, 4999/);
  assert.match(String(tq.tensor([true, false])), /true, false/);
  assert.match(String(tq.tensor(3)), /tensor\(3, dtype=float32/);
});

Deno.test("dispose and using free a tensor; later use is a state error", () => {
  const t = tq.ones([4]).add(1);
  t.evaluate();
  t.dispose();
  let line = thisLine() + 1;
  let call = () => t.dataSync();
  assertTqError(call, { op: "dataSync", kind: "state", includes: ["disposed"], line });
  {
    using u = tq.ones([2]);
    assert.deepEqual(u.toArray(), [1, 1]);
  }
  line = thisLine() + 1;
  call = () => tq.tensor([[1, 2], [3]]).dataSync();
  assertTqError(call, { op: "tensor", kind: "shape", includes: ["ragged"], line });
  // A disposed tensor as an op's input: named at the op, not a kernel failure later.
  const w = tq.randn([3, 3], { seed: 1 });
  w.dispose();
  line = thisLine() + 1;
  call = () => tq.ones([2, 3]).matmul(w).dataSync();
  assertTqError(call, { op: "matmul", kind: "state", includes: ["disposed", "'b'"], line });
  line = thisLine() + 1;
  call = () => tq.ones([3, 3]).add(w).dataSync();
  assertTqError(call, { op: "add", kind: "state", includes: ["disposed"], line });
  // Disposed after the op was made, before evaluation.
  const v = tq.randn([3, 3], { seed: 2 });
  v.evaluate();
  const y = tq.ones([2, 3]).matmul(v);
  v.dispose();
  line = thisLine() + 1;
  call = () => y.dataSync();
  assertTqError(call, {
    op: "constant",
    kind: "state",
    includes: ["depends on was disposed"],
    line,
  });
});

Deno.test("creation and axis errors: non-finite ranges, huge sizes, non-number axes", () => {
  for (
    const [op, call, includes] of [
      ["arange", () => tq.arange(NaN), ["stop", "NaN"]],
      ["arange", () => tq.arange(0, Infinity), ["stop", "Infinity"]],
      ["full", () => tq.zeros([1e6, 1e6]), ["too many elements", "1000000000000"]],
      ["randn", () => tq.randn([3e9]), ["too many elements"]],
      ["sum", () => tq.ones([2, 2]).sum(null as unknown as number), ["axis", "null"]],
      ["argmax", () => tq.ones([2, 2]).argmax("0" as unknown as number), ["axis", '"0"']],
    ] as const
  ) {
    assertTqError(call, { op, includes: [...includes] });
  }
  // More than 2^31 − 1 elements in a CPU plan (a lazy expand) is refused, not summed wrongly.
  const wide = tq.ones([1], { dtype: "int8" }).expand([2 ** 31 + 5]).sum();
  assertTqError(() => wide.item(), { op: "expand", kind: "shape", includes: ["CPU backend"] });
  // Options given as null take the defaults.
  assert.equal(tq.gelu(tq.zeros([1]), null as unknown as undefined).item(), 0);
});

Deno.test("creation errors name the argument and the caller's line", () => {
  let line = thisLine() + 1;
  let call = (): unknown => tq.tensor([1.5], { dtype: "int32" });
  assertTqError(call, { op: "tensor", kind: "argument", includes: ["1.5", "int32"], line });
  line = thisLine() + 1;
  call = () => tq.tensor([1, 2, 3], { shape: [2, 2] });
  assertTqError(call, { op: "tensor", kind: "shape", includes: ["3 elements"], line });
  line = thisLine() + 1;
  call = () => tq.zeros([2, -1]);
  assertTqError(call, { op: "full", kind: "argument", includes: ["non-negative"], line });
  line = thisLine() + 1;
  call = () => tq.ones([2], { device: "tpu" });
  assertTqError(call, { op: "tensor", kind: "device", includes: ['"tpu"'], line });
  line = thisLine() + 1;
  call = () => tq.arange(0, 4, 0);
  assertTqError(call, { op: "arange", kind: "argument", includes: ["step"], line });
  line = thisLine() + 1;
  call = () => tq.tensor([1, 2]).item();
  assertTqError(call, { op: "item", kind: "shape", line });
});
