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
  // Bounds whose difference overflows float64: the middle is 0, not NaN.
  const wide = tq.linspace(-1.7e308, 1.7e308, 3, { dtype: "float32", device }).toArray();
  assert.deepEqual(wide, [-Infinity, 0, Infinity]);
  const quarters = tq.linspace(-1.6e308, 1.6e308, 5, { dtype: "float32", device }).toArray();
  assert.deepEqual(quarters, [-Infinity, -Infinity, 0, Infinity, Infinity]);
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

Deno.test("rand never returns high, in any float dtype; random options are checked", () => {
  // Uniform float64 draws just below 1 round up to 1 in narrow dtypes (about 1 in 512 for
  // bfloat16): they are drawn again.
  const sizes: [tq.DType, number][] = [["bfloat16", 100000], ["float16", 100000], [
    "float8e4m3",
    20000,
  ]];
  for (const [dtype, n] of sizes) {
    const seed = 3 + n;
    const u = tq.rand([n], { seed, dtype }).cast("float32");
    const values = u.dataSync() as Float32Array;
    assert.ok(values.every((v) => v >= 0 && v < 1), `${dtype}: all in [0, 1)`);
    assert.ok(Math.abs(u.mean().item() - 0.5) < 0.02, `${dtype} mean ${u.mean().item()}`);
    const w = tq.rand([n], { seed, dtype, low: -3, high: 2 });
    assert.ok((w.cast("float32").dataSync() as Float32Array).every((v) => v >= -3 && v < 2));
  }
  const cases: [() => unknown, string, string, string[]][] = [
    [() => tq.rand([2], { dtype: "int8" }), "rand", "dtype", ["floating dtype", "got int8"]],
    [() => tq.randn([2], { dtype: "int32" }), "randn", "dtype", ["got int32"]],
    [() => tq.randn([2], { std: -1 }), "randn", "std", [">= 0", "got -1"]],
    [() => tq.randn([2], { std: NaN }), "randn", "std", ["got NaN"]],
    [() => tq.randn([2], { mean: Infinity }), "randn", "mean", ["got Infinity"]],
    [() => tq.rand([2], { low: 1, high: 1 }), "rand", "high", ["above low = 1"]],
    [() => tq.rand([2], { high: NaN }), "rand", "high", ["got NaN"]],
    // low = 1.005 rounds up to 1.0078125 in bfloat16: no bfloat16 value lies in the range.
    [
      () => tq.rand([2], { low: 1.005, high: 1.007, dtype: "bfloat16" }),
      "rand",
      "high",
      ["bfloat16"],
    ],
    // A fractional seed was floored: two seeds gave one stream.
    [() => tq.rand([2], { seed: 0.5 }), "rand", "seed", ["a safe integer", "got 0.5"]],
    [() => tq.randn([2], { seed: 2 ** 53 }), "randn", "seed", ["got 9007199254740992"]],
    [() => tq.manualSeed(1.5), "manualSeed", "seed", ["got 1.5"]],
  ];
  for (const [call, op, argument, includes] of cases) {
    assertTqError(call, { op, includes: [`'${argument}'`, ...includes] });
  }
  assert.deepEqual(tq.randn([3], null as unknown as undefined).shape, [3]);
  // Any safe integer seeds a stream of its own: the bits above 32 and the sign count.
  const first = (seed: number) => Array.from(tq.rand([4], { seed }).dataSync() as Float32Array);
  const streams = [0, 2 ** 32, 2 ** 32 - 1, -1, 1764500000000, -1764500000000].map(first);
  for (let i = 0; i < streams.length; i++) {
    for (let j = i + 1; j < streams.length; j++) {
      assert.notDeepEqual(streams[i], streams[j], `seed streams ${i} and ${j}`);
    }
  }
  assert.deepEqual(first(1764500000000), first(1764500000000));
});

Deno.test("tensor() and full(): int64 data rounds once, bool holds only 0 and 1", () => {
  // 2^60 + 2^36 + 1 lies just above a float32 midpoint; through a float64 it rounded to 2^60.
  const wide = 2n ** 60n + 2n ** 36n + 1n;
  const viaCast = tq.tensor(new BigInt64Array([wide])).cast("float32").item();
  assert.equal(tq.tensor(new BigInt64Array([wide]), { dtype: "float32" }).item(), viaCast);
  assert.equal(viaCast, Math.fround(2 ** 60 + 2 ** 37));
  const b16 = tq.tensor(new BigInt64Array([2n ** 40n + 2n ** 32n + 1n]), { dtype: "bfloat16" });
  assert.equal(b16.item(), 2 ** 40 + 2 ** 33);
  // toArray and item give numbers: an int64 a number cannot hold is an error, not rounded.
  const huge = tq.tensor(new BigInt64Array([5n, 2n ** 53n + 1n]));
  assertTqError(() => huge.toArray(), {
    op: "toArray",
    kind: "dtype",
    includes: ["9007199254740993 at flat index 1", "dataSync()"],
  });
  assertTqError(() => huge.slice([1]).item(), { op: "item", includes: ["9007199254740993"] });
  assert.deepEqual(huge.slice([[0, 1]]).toArray(), [5]);
  assert.equal(tq.tensor(new BigInt64Array([-(2n ** 53n) + 1n])).item(), -(2 ** 53) + 1);
  assertTqError(() => tq.arange(0, 10, 1, { dtype: "int4" }), {
    op: "arange",
    includes: ["'dtype'", "got 8 at flat index 8"],
  });
  // Printing an int64 keeps every digit.
  assert.match(tq.tensor(new BigInt64Array([2n ** 62n + 1n])).toString(), /4611686018427387905/);
  // Only booleans make a bool tensor; mixed data is numeric.
  assert.equal(tq.tensor([true, false]).dtype, "bool");
  const mixed = tq.tensor([true, 2] as unknown as number[]);
  assert.equal(mixed.dtype, "float32");
  assert.deepEqual(mixed.toArray(), [1, 2]);
  assert.deepEqual(tq.full([2], true as unknown as number, { dtype: "bool" }).toArray(), [
    true,
    true,
  ]);
  for (
    const [op, call, includes] of [
      ["full", () => tq.full([2], "a" as unknown as number), ["'value'", 'got "a"']],
      ["full", () => tq.full([2], 1n as unknown as number), ["got 1n (a bigint)"]],
      ["full", () => tq.full([2], undefined as unknown as number), ["got undefined"]],
      // 2^63 is a float64 but no int64.
      ["tensor", () => tq.tensor([2 ** 63], { dtype: "int64" }), ["2^63 - 1"]],
      [
        "add",
        () => tq.tensor(new BigInt64Array([1n])).add(2 ** 63),
        ["[-2^63, 2^63 - 1]"],
      ],
      // A bool tensor compared with 2 was compared with true.
      ["equal", () => tq.tensor([true, false]).equal(2), ["true, false, 0 or 1"]],
      ["linspace", () => tq.linspace(NaN, 1, 3), ["'start'", "got NaN"]],
      ["linspace", () => tq.linspace(0, Infinity, 3), ["'stop'"]],
      ["linspace", () => tq.linspace(0, 1, 3, { dtype: "int32" }), ["got 0.5 at flat index 1"]],
      ["linspace", () => tq.linspace(0, 1, 1e15), ["too many elements"]],
    ] as const
  ) {
    assertTqError(call, { op, includes: [...includes] });
  }
  assert.deepEqual(tq.linspace(0, 4, 3, { dtype: "int32" }).toArray(), [0, 2, 4]);
  // Created as bool, any nonzero value is true (a byte mask of 255s, say).
  assert.deepEqual(tq.tensor(new Uint8Array([0, 255, 1]), { dtype: "bool" }).toArray(), [
    false,
    true,
    true,
  ]);
  assert.deepEqual(tq.full([2], 0.5, { dtype: "bool" }).equal(1).toArray(), [true, true]);
  assert.deepEqual(tq.tensor([true, false]).equal(1).toArray(), [true, false]);
  // Options given as null take the defaults.
  assert.deepEqual(tq.zeros([2], null as unknown as undefined).toArray(), [0, 0]);
  assert.deepEqual(tq.ones([1], null as unknown as undefined).toArray(), [1]);
  assert.deepEqual(tq.tensor([1], null as unknown as undefined).toArray(), [1]);
  assert.deepEqual(tq.arange(0, 2, 1, null as unknown as undefined).toArray(), [0, 1]);
  assert.deepEqual(tq.linspace(0, 1, 2, null as unknown as undefined).toArray(), [0, 1]);
});

Deno.test("an evaluation error raised while printing names the user's lines", () => {
  // The line that built the gather, and the one whose printing evaluated it.
  const built = thisLine() + 1;
  const y = tq.ones([3, 2]).gather(tq.tensor([5], { dtype: "int32" }), 0);
  const line = thisLine() + 1;
  assertTqError(() => console.log(y), {
    op: "gather",
    includes: ["got 5", `found when evaluated at`, `_test.ts:${line}:`],
    line: built,
  });
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
  // No elements: no rows of nothing either, however long the other extents.
  assert.equal(
    String(tq.zeros([1e8, 0])),
    "tensor([], dtype=float32, device=cpu, shape=[1e8, 0])"
      .replace("1e8", "100000000"),
  );
  assert.equal(
    String(tq.zeros([0], { dtype: "int32" })),
    "tensor([], dtype=int32, device=cpu, shape=[0])",
  );
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
  // Disposed after the op was made, before evaluation: the message says where it was made.
  const madeAt = thisLine() + 1;
  const v = tq.randn([3, 3], { seed: 2 });
  v.evaluate();
  const y = tq.ones([2, 3]).matmul(v);
  v.dispose();
  line = thisLine() + 1;
  call = () => y.dataSync();
  assertTqError(call, {
    op: "constant",
    kind: "state",
    includes: [
      "depends on was disposed",
      `made at ${new URL(import.meta.url).pathname}:${madeAt}:`,
    ],
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

Deno.test("options must be plain objects of known keys; other bad arguments are named", () => {
  const x = tq.ones([2, 3]);
  const cases: [string, () => unknown, string[]][] = [
    // A misspelt or misplaced option used to be ignored: the dtype string made a float32.
    ["full", () => tq.zeros([2], "int32" as unknown as tq.CreateOptions), ["plain object"]],
    ["tensor", () => tq.tensor([1], { dtpye: "int32" } as tq.TensorOptions), ['"dtpye"']],
    ["arange", () => tq.arange(0, 3, 1, { shape: [3] } as tq.CreateOptions), ['"shape"']],
    ["linspace", () => tq.linspace(0, 1, 3, [] as tq.CreateOptions), ["got []"]],
    ["randn", () => tq.randn([2], { sd: 2 } as tq.RandomOptions), ['"sd"', "std"]],
    ["rand", () => tq.rand([2], { max: 2 } as tq.RandomOptions), ['"max"', "high"]],
    ["gelu", () => tq.gelu(x, "tanh" as tq.GeluOptions), ["plain object", 'got "tanh"']],
    ["causalMask", () => tq.causalMask(2, 2, { offest: 1 } as tq.CausalMaskOptions), ['"offest"']],
    ["quantize", () => tq.quantize(x, 0.1, "int8", { axis: 0 } as tq.QuantizeOptions), [
      '"axis"',
      "dim, blockSize",
    ]],
    ["RandomStream", () => new tq.RandomStream("x" as unknown as number), ["'seed'", 'got "x"']],
    ["Sequential.at", () => new tq.Sequential(new tq.Linear(2, 2)).at(1.5), ["'index'", "1.5"]],
    ["Module.namedParameters", () => new tq.Linear(2, 2).namedParameters(5 as unknown as string), [
      "'prefix'",
    ]],
    ["namedModules", () => tq.namedModules(new tq.Linear(2, 2), 5 as unknown as string), [
      "'prefix'",
    ]],
    [
      "calibrate",
      () =>
        tq.calibrate(new tq.Linear(3, 2), [x], (m, b) => m.forward(b as tq.Tensor), {
          perChannel: "yes" as unknown as boolean,
        }),
      ["'perChannel'", 'got "yes"'],
    ],
  ];
  for (const [op, call, includes] of cases) assertTqError(call, { op, includes });
  // Errors describe values without failing on them (a Symbol, a BigInt, a function).
  assertTqError(() => tq.gelu(x, { approximate: 1n as unknown as "tanh" }), {
    op: "gelu",
    includes: ["1n (a bigint)"],
  });
  assertTqError(() => tq.gelu(x, { approximate: Symbol("s") as unknown as "tanh" }), {
    op: "gelu",
    includes: ["Symbol(s)"],
  });
});

Deno.test("constructors and helpers refuse values they cannot use", () => {
  const cases: [string, () => unknown, string[]][] = [
    // PyTorch's torch.Tensor([1, 2]) habit.
    ["Tensor", () => new tq.Tensor([1, 2] as unknown as tq.Node), ["tensor(data)", "got [1, 2]"]],
    ["formatTensor", () => tq.formatTensor({} as tq.Tensor), ["'t'", "got Object"]],
    ["encodeBytes", () => tq.encodeBytes(42 as unknown as string), ["'text'", "got 42"]],
    // A forgotten await: the config read as {} gave GPT-2 small's defaults.
    [
      "GPT2Config",
      () => tq.parseGPT2Config(Promise.resolve({}) as unknown as Record<string, unknown>),
      [
        "got Promise",
      ],
    ],
    ["Module.parameterSpecs", () => new tq.Linear(2, 2).parameterSpecs(null as unknown as ""), [
      "'prefix'",
    ]],
    ["inputInfo", () => tq.inputInfo([10n as unknown as number, 3]), ["10n (a bigint)"]],
  ];
  for (const [op, call, includes] of cases) assertTqError(call, { op, includes });
  // tensor's shape option: 0 or "" were ignored (kept [n]); null still means "absent".
  assertTqError(() => tq.tensor([1, 2], { shape: 0 as unknown as number[] }), { op: "tensor" });
  assert.deepEqual(tq.tensor([1, 2], { shape: null as unknown as number[] }).shape, [2]);
  // A layer's ranges with a misspelt field are named, not ignored.
  const layer = new tq.Linear(4, 2);
  assertTqError(
    () =>
      tq.quantizeModel(layer, {
        mode: "w8",
        amax: { "": { weightAmx: [1, 1] } as unknown as tq.LayerCalibration },
      }),
    { op: "quantizeModel", includes: ['"weightAmx"'] },
  );
});
