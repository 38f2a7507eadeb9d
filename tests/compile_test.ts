import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { cpuBackend, CpuBuffer } from "../lib/backends/cpu/backend.ts";
import { plannedGraph } from "../lib/runtime/evaluate.ts";
import {
  assertClose,
  assertTqError,
  evalInProcess,
  repoModule,
  testOnDevices,
  thisLine,
} from "./helpers.ts";

function mlp(device: string, layers: number, width: number): tq.Sequential {
  tq.manualSeed(7);
  const mods: tq.Module[] = [];
  for (let i = 0; i < layers; i++) mods.push(new tq.Linear(width, width));
  return new tq.Sequential(...mods).to(device);
}

testOnDevices("compile traces once and matches eager evaluation", (device) => {
  const model = mlp(device, 15, 32);
  const exe = tq.compile((x) => model.forward(x).relu(), {
    args: [tq.inputInfo([[1, 2, 8], 32])],
    device,
  });
  assert.equal(exe.tracedShapes, 1);
  for (let i = 0; i < 5; i++) {
    const x = tq.randn([2, 32], { seed: i, device });
    const y = exe(x) as tq.Tensor;
    assert.deepEqual(y.shape, [2, 32]);
    assertClose(y.dataSync() as Float32Array, model.forward(x).relu().dataSync() as Float32Array, {
      rtol: 1e-6,
      atol: 1e-7,
    });
  }
  assert.equal(exe.tracedShapes, 1, "the opt shape was traced at compile time and reused");
  const y5 = exe(tq.randn([5, 32], { seed: 9, device })) as tq.Tensor;
  assert.deepEqual(y5.shape, [5, 32]);
  assert.equal(exe.tracedShapes, 2);
  exe.dispose();
});

testOnDevices("compile: several inputs and outputs, constants inside the function", (device) => {
  const exe = tq.compile((a, b) => [a.add(b).mul(2), a.sub(1)], {
    args: [tq.inputInfo([3]), tq.inputInfo([3])],
    device,
  });
  const [s, d] = exe(
    tq.tensor([1, 2, 3], { device }),
    tq.tensor([10, 20, 30], { device }),
  ) as tq.Tensor[];
  assert.deepEqual(s.toArray(), [22, 44, 66]);
  assert.deepEqual(d.toArray(), [0, 1, 2]);
  // Outputs of one call are not overwritten by the next.
  exe(tq.tensor([0, 0, 1], { device }), tq.tensor([0, 0, 1], { device }));
  assert.deepEqual(s.toArray(), [22, 44, 66]);
});

testOnDevices("compile: results lent from fixed buffers keep their values while held", (device) => {
  const fn = (x: tq.Tensor) => x.mul(3).add(1);
  const exe = tq.compile(fn, { args: [tq.inputInfo([256])], device });
  const xs = [0, 1, 2, 3].map((i) => tq.randn([256], { seed: 40 + i, device }).evaluate());
  const want = xs.map((x) => fn(x).dataSync() as Float32Array);
  // Each kept result keeps its own value through the calls after it.
  const held = xs.slice(0, 3).map((x) => exe(x) as tq.Tensor);
  held.forEach((y, i) => assert.deepEqual(y.dataSync(), want[i], `result ${i}`));
  // A kept result read as a constant by another compiled function, whose recording keeps the
  // address it read: the next call of the first function must not change what it reads.
  const reader = tq.compile((x) => x.add(held[2]), { args: [tq.inputInfo([256])], device });
  const read = reader(xs[0]) as tq.Tensor;
  const readWant = read.dataSync() as Float32Array;
  assert.deepEqual(readWant, xs[0].add(tq.tensor(want[2], { device })).dataSync());
  read.dispose();
  (exe(xs[3]) as tq.Tensor).dispose();
  assert.deepEqual(held[2].dataSync(), want[2]);
  assert.deepEqual(
    (reader(xs[0]) as tq.Tensor).dataSync(),
    readWant,
    "the other recording reads its own copy",
  );
  if (device !== "cpu") {
    // A result disposed before the next call is never copied: the calls allocate nothing.
    const before = tq.cuda.memoryStats().allocations;
    for (let i = 0; i < 4; i++) {
      const y = exe(xs[i]) as tq.Tensor;
      assert.deepEqual(y.dataSync(), want[i]);
      y.dispose();
    }
    assert.equal(tq.cuda.memoryStats().allocations, before, "no copies of disposed results");
  }
  reader.dispose();
  exe.dispose();
  assert.deepEqual(held[1].dataSync(), want[1], "kept results outlive the executable");
});

Deno.test("compile rejects calls outside the declared inputs, naming the argument and line", () => {
  const exe = tq.compile((x) => x.mul(2), { args: [tq.inputInfo([[1, 4, 8], 16])] });
  let line = thisLine() + 1;
  let call = (): unknown => exe(tq.ones([9, 16]));
  assertTqError(call, {
    op: "Executable",
    kind: "shape",
    includes: ["args[0]", "[1..8, 16]", "[9, 16]"],
    line,
  });
  line = thisLine() + 1;
  call = () => exe(tq.ones([2, 16], { dtype: "float16" }));
  assertTqError(call, { op: "Executable", kind: "dtype", includes: ["float32", "float16"], line });
  line = thisLine() + 1;
  call = () => exe(tq.ones([2, 16]), tq.ones([2, 16]));
  assertTqError(call, { op: "Executable", kind: "argument", includes: ["expected 1"], line });
  line = thisLine() + 1;
  call = () => tq.inputInfo([[4, 2, 8]]);
  assertTqError(call, { op: "inputInfo", kind: "argument", includes: ["min <= opt <= max"], line });
  const reads = (x: tq.Tensor) => tq.tensor(x.dataSync() as Float32Array);
  line = thisLine() - 1;
  call = () => tq.compile(reads, { args: [tq.inputInfo([2])] });
  assertTqError(call, { op: "dataSync", kind: "state", includes: ["compile() input"], line });
  // Malformed options and results.
  call = () => tq.compile((x) => x, undefined as unknown as tq.CompileOptions);
  assertTqError(call, { op: "compile", includes: ["options.args"] });
  call = () => tq.compile((x) => x, { args: [{ shape: [-1, 3], dtype: "float32" }] });
  assertTqError(call, { op: "inputInfo", includes: ["shape[0]", "-1"] });
  call = () => tq.compile((x) => x, { args: [{ shape: [3], dtype: "f32" as tq.DType }] });
  assertTqError(call, { op: "inputInfo", kind: "dtype", includes: ["f32"] });
  call = () => tq.compile(() => [], { args: [tq.inputInfo([3])] });
  assertTqError(call, { op: "compile", includes: ["returned no tensors"] });
  // A value computed from an input is no more readable while tracing.
  const readsDerived = (x: tq.Tensor) => tq.tensor(x.mul(2).item());
  call = () => tq.compile(readsDerived, { args: [tq.inputInfo([1])] });
  assertTqError(call, { op: "evaluate", kind: "state", includes: ["compile() input"] });
});

testOnDevices("compile: a captured weight disposed after compiling is an error, not freed memory", (
  device,
) => {
  const w = tq.randn([4, 4], { seed: 5, device });
  const exe = tq.compile((x) => x.matmul(w), { args: [tq.inputInfo([2, 4])], device });
  const x = tq.randn([2, 4], { seed: 6, device });
  assert.deepEqual((exe(x) as tq.Tensor).dataSync(), x.matmul(w).dataSync());
  w.dispose();
  const line = thisLine() + 1;
  const call = () => exe(x);
  assertTqError(call, {
    op: "Executable",
    kind: "state",
    includes: ["captured", "disposed"],
    line,
  });
});

testOnDevices("compile with donate: a cache updated in place across calls", (device) => {
  // A decode-style loop: each call writes a fresh row into slot `pos` of a donated cache and
  // reads the whole cache. Run with and without CUDA graphs, against the same steps built
  // eagerly; results handed back are fed straight in again.
  const rows = 6, width = 64;
  const step = (cache: tq.Tensor, pos: tq.Tensor, row: tq.Tensor) => {
    const next = tq.sliceScatter(cache, row.reshape([1, width]), pos, 0);
    return [next, next.sum(0), tq.add(pos, 1)];
  };
  for (const cudaGraphs of [true, false]) {
    const exe = tq.compile(step, {
      args: [tq.inputInfo([rows, width]), tq.inputInfo([1], "int32"), tq.inputInfo([width])],
      device,
      cudaGraphs,
      donate: [0],
    });
    const initial = tq.randn([rows, width], { seed: 3, device }).evaluate();
    let expected = initial.toArray() as number[][];
    let cache = tq.tensor(initial.dataSync() as Float32Array, { device }).reshape([rows, width])
      .evaluate();
    let pos = tq.tensor(Int32Array.of(0), { device });
    const kept: tq.Tensor[] = [];
    let previous: tq.Tensor | undefined;
    for (let s = 0; s < rows; s++) {
      const row = tq.randn([width], { seed: 10 + s, device }).evaluate();
      const rowValues = row.toArray() as number[];
      const passed = cache;
      const [next, total, nextPos] = exe(cache, pos, row) as tq.Tensor[];
      assert.throws(() => passed.toArray(), /disposed/, "a donated argument is consumed");
      if (device !== "cpu" && cudaGraphs && previous === passed) {
        // Fed back into its own fixed buffer: updated there, not copied.
        assert.ok(next.node.buffer!.sharesMemoryWith!(passed.node.buffer!), "no copy");
      }
      previous = next;
      expected = expected.map((r, i) => (i === s ? rowValues : r));
      assert.deepEqual(next.toArray(), expected.map((r) => r.map((v) => Math.fround(v))));
      const sums = expected[0].map((_, j) => expected.reduce((a, r) => a + r[j], 0));
      assertClose(total.dataSync() as Float32Array, Float32Array.from(sums), {
        rtol: 1e-5,
        atol: 1e-5,
      });
      if (s === 2) {
        // A result kept while a different tensor is donated in its place must not change.
        kept.push(next);
        cache = tq.tensor(next.dataSync() as Float32Array, { device }).reshape([rows, width])
          .evaluate();
      } else cache = next;
      pos = nextPos;
    }
    const snapshot = kept[0].toArray();
    exe(cache, tq.tensor(Int32Array.of(0), { device }), tq.randn([width], { seed: 99, device }));
    assert.deepEqual(kept[0].toArray(), snapshot, "an earlier result is not overwritten");
    exe.dispose();
  }
});

Deno.test("cpu: a donated cache read once is updated in place, any other is copied", () => {
  // The plan of sliceScatter(cache, rows, 2) with the cache a writable leaf (a donated
  // argument): the kernel writes the rows into the cache's own storage and returns it.
  const cache = tq.randn([5, 3], { seed: 4 }).evaluate();
  const rows = tq.randn([2, 3], { seed: 5 }).evaluate();
  const graph = plannedGraph([tq.sliceScatter(cache, rows, 2, 0).node]);
  assert.deepEqual(graph.nodes.map((n) => n.op), ["sliceScatter"]);
  const run = (writable: boolean, g = graph) => {
    const leaves = g.leaves.map((l, i) => (i === 0 ? { ...l, writable } : l));
    const plan = cpuBackend.lower({ ...g, leaves });
    const input = Float32Array.from(cache.dataSync() as Float32Array);
    const bufs = [input, rows.dataSync() as Float32Array].map((d) => new CpuBuffer("float32", d));
    return { input, out: (plan.run(bufs)[0] as CpuBuffer).data as Float32Array };
  };
  const before = cache.dataSync() as Float32Array;
  const r = rows.dataSync() as Float32Array;
  const expected = Float32Array.from(before, (v, i) => (i >= 6 && i < 12 ? r[i - 6] : v));
  const inPlace = run(true);
  assert.equal(inPlace.out, inPlace.input, "the cache's own storage");
  assert.deepEqual(inPlace.out, expected);
  const copied = run(false);
  assert.notEqual(copied.out, copied.input);
  assert.deepEqual(copied.out, expected);
  assert.deepEqual(copied.input, before, "an input that is not writable stays as it was");
  // A writable leaf that something else also reads is not overwritten either.
  const twice = plannedGraph([tq.sliceScatter(cache, rows, 2, 0).add(cache).node]);
  const readTwice = run(true, twice);
  assert.deepEqual(readTwice.input, before);
  assert.deepEqual(readTwice.out, Float32Array.from(expected, (v, i) => v + before[i]));
});

Deno.test("compile rejects a bad donate list", () => {
  const line = thisLine() + 2;
  assertTqError(
    () => tq.compile((a) => a.add(1), { args: [tq.inputInfo([2])], donate: [1] }),
    { op: "compile", kind: "argument", includes: ["donate", "[0, 0]", "1"], line },
  );
});

testOnDevices(
  "compile: data checks (gather indices, computed scales) raise on every call",
  (device) => {
    const table = tq.randn([10, 4], { seed: 61, device });
    const built = thisLine() + 1;
    const lookup = tq.compile((ids: tq.Tensor) => tq.embedding(ids, table), {
      args: [tq.inputInfo([3], "int32")],
      device,
    });
    const ids = (values: number[]) => tq.tensor(Int32Array.from(values), { device });
    const first = lookup(ids([1, 2, 3])) as tq.Tensor;
    assert.deepEqual(first.dataSync(), tq.embedding(ids([1, 2, 3]), table).dataSync());
    // On CUDA later calls replay a recorded graph: its device-side index check still reports.
    for (let call = 0; call < 2; call++) {
      // The CPU raises during the call, CUDA at the read (the launch does not wait); both name
      // the traced function's line that built the embedding, and the line that called it.
      const read = thisLine() + 1;
      assertTqError(() => (lookup(ids([4, 12, 0])) as tq.Tensor).dataSync(), {
        op: "embedding",
        kind: "argument",
        includes: [
          "index out of range",
          "got 12 at flat index 1",
          // A GPU finds it at the read (a device-side check), the CPU when it evaluates.
          `found when ${device === "cuda" ? "read" : "evaluated"} at`,
          `_test.ts:${read}:`,
        ],
        line: built,
      });
      const good = lookup(ids([9, 0, 5])) as tq.Tensor;
      assert.deepEqual(good.dataSync(), tq.embedding(ids([9, 0, 5]), table).dataSync());
    }

    // Dynamic quantization: the scale from the input's own amax, zero for an all-zero input.
    const roundTrip = tq.compile((x: tq.Tensor) => {
      const s = x.abs().max().div(127);
      return tq.dequantize(tq.quantize(x, s, "int8"), s, "float32");
    }, { args: [tq.inputInfo([6], "float32")], device });
    const x = tq.tensor([0.5, -1, 2, 0.25, 3, -4], { device });
    const want = (roundTrip(x) as tq.Tensor).dataSync();
    for (let call = 0; call < 2; call++) {
      assertTqError(() => (roundTrip(tq.zeros([6], { device })) as tq.Tensor).dataSync(), {
        op: "quantize",
        kind: "argument",
        includes: ["scale must be positive and finite", "got 0 at flat index 0 of 1"],
      });
      assert.deepEqual((roundTrip(x) as tq.Tensor).dataSync(), want);
    }
  },
);

testOnDevices("compile: captured weights are fixed per trace until reset() re-traces every shape", (
  device,
) => {
  const lin = new tq.Linear(2, 1, { bias: false }).to(device);
  lin.weight = tq.tensor([[1, 1]], { device });
  const exe = tq.compile((x) => lin.forward(x), {
    args: [tq.inputInfo([[1, 1, 2], 2])],
    device,
  });
  const run = (rows: number) =>
    Array.from((exe(tq.ones([rows, 2], { device })) as tq.Tensor).dataSync() as Float32Array);
  assert.deepEqual(run(1), [2]);
  lin.loadStateDict({ weight: tq.tensor([[10, 10]], { device }) });
  // Documented snapshot: the shape traced before the change keeps the old weight.
  assert.deepEqual(run(1), [2]);
  exe.reset();
  assert.equal(exe.tracedShapes, 0, "reset drops every traced shape");
  assert.deepEqual(run(1), [20], "the shape traced before reads the new weight");
  assert.deepEqual(run(2), [20, 20], "so does a shape first seen after");
  assert.equal(exe.tracedShapes, 2);
  // An unseeded random op draws once per trace; reset draws again.
  const noisy = tq.compile((x) => x.add(tq.rand([64], { device })), {
    args: [tq.inputInfo([64])],
    device,
  });
  const zeros = tq.zeros([64], { device });
  const first = (noisy(zeros) as tq.Tensor).dataSync();
  assert.deepEqual((noisy(zeros) as tq.Tensor).dataSync(), first, "repeats between calls");
  noisy.reset();
  assert.notDeepEqual((noisy(zeros) as tq.Tensor).dataSync(), first, "a new draw after reset");
  noisy.dispose();
  exe.dispose();
});

Deno.test("compile: a disposed executable refuses calls and reset", () => {
  const exe = tq.compile((x) => x.add(1), { args: [tq.inputInfo([3])] });
  const kept = exe(tq.zeros([3])) as tq.Tensor;
  exe.dispose();
  exe.dispose(); // idempotent
  assert.equal(exe.tracedShapes, 0);
  const line = thisLine() + 1;
  const call = () => exe(tq.zeros([3]));
  assertTqError(call, { op: "Executable", kind: "state", includes: ["disposed"], line });
  assertTqError(() => exe.reset(), { op: "Executable", kind: "state", includes: ["disposed"] });
  assert.equal(exe.tracedShapes, 0, "no silent re-trace");
  assert.deepEqual(kept.toArray(), [1, 1, 1], "results outlive the executable");
});

Deno.test("compile: a disposed argument is an error naming the executable's argument", () => {
  const exe = tq.compile((x, y) => x.add(y), { args: [tq.inputInfo([3]), tq.inputInfo([3])] });
  const a = tq.tensor([1, 2, 3]);
  const b = tq.tensor([4, 5, 6]);
  assert.deepEqual((exe(a, b) as tq.Tensor).toArray(), [5, 7, 9]);
  b.dispose();
  const line = thisLine() + 1;
  const call = () => exe(a, b);
  assertTqError(call, {
    op: "Executable",
    kind: "state",
    includes: ["the tensor was disposed", "argument 'args[1]'", "a disposed float32 tensor"],
    line,
  });
  exe.dispose();
});

Deno.test("compile validates donate: an array of distinct argument indices", () => {
  const fn = (a: tq.Tensor, b: tq.Tensor) => a.add(b);
  const args = [tq.inputInfo([3]), tq.inputInfo([3])];
  const bad: [unknown, string[]][] = [
    [0, ["options.donate", "an array", "got 0"]],
    ["0", ["options.donate", "an array", 'got "0"']],
    [new Set([0]), ["options.donate", "got Set"]],
    [[1.5], ["options.donate[0]", "[0, 1]", "got 1.5"]],
    [[0, -1], ["options.donate[1]", "got -1"]],
    [[2], ["options.donate[0]", "got 2"]],
    [[1, 1], ["options.donate[1]", "unlisted"]],
    [["0"], ["options.donate[0]", 'got "0"']],
  ];
  for (const [donate, includes] of bad) {
    const line = thisLine() + 1;
    const call = () => tq.compile(fn, { args, donate: donate as number[] });
    assertTqError(call, { op: "compile", kind: "argument", includes, line });
  }
  const none = () => tq.compile(() => tq.ones([1]), { args: [], donate: [0] });
  assertTqError(none, { op: "compile", kind: "argument", includes: ["takes no arguments"] });
  // Valid forms still compile.
  tq.compile(fn, { args, donate: [] }).dispose();
  tq.compile(fn, { args, donate: [1, 0] }).dispose();
  tq.compile(fn, { args, donate: undefined }).dispose();
});

Deno.test("compile rejects unknown options and non-boolean cudaGraphs", () => {
  const fn = (x: tq.Tensor) => x.mul(2);
  const args = [tq.inputInfo([3])];
  let line = thisLine() + 1;
  let call = (): unknown => tq.compile(fn, { args, devices: "cpu" } as tq.CompileOptions);
  assertTqError(call, {
    op: "compile",
    kind: "argument",
    includes: ["unknown option", "options.devices", "args, device, cudaGraphs, donate"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.compile(fn, { args, cudaGraphs: "no" as unknown as boolean });
  assertTqError(call, {
    op: "compile",
    kind: "argument",
    includes: ["options.cudaGraphs", "true or false", '"no"'],
    line,
  });
  call = () => tq.compile(fn, { args, cudaGraphs: 0 as unknown as boolean });
  assertTqError(call, { op: "compile", kind: "argument", includes: ["options.cudaGraphs"] });
  // Absent optional options are fine (callers forward their own optional settings).
  tq.compile(fn, { args, device: undefined, cudaGraphs: undefined }).dispose();
  tq.compile(fn, { args, cudaGraphs: false }).dispose();
});

testOnDevices("compile: an executable called inside another compiled function is a clear error", (
  device,
) => {
  const inner = tq.compile((x) => x.mul(3), { args: [tq.inputInfo([3])], device });
  const message = "cannot be called inside another compile()d function";
  // The error names the line of the inner call, in the traced function.
  let line = thisLine() + 2;
  let call = (): unknown =>
    tq.compile((x) => (inner(x) as tq.Tensor).add(1), {
      args: [tq.inputInfo([3])],
      device,
    });
  assertTqError(call, { op: "compile", kind: "state", includes: [message], line });
  // Also for a value derived from the traced input, and when a later shape is traced.
  call = () =>
    tq.compile((x) => (inner(x.add(1)) as tq.Tensor).add(1), { args: [tq.inputInfo([3])], device });
  assertTqError(call, { op: "compile", kind: "state", includes: [message] });
  line = thisLine() + 2;
  const outer = tq.compile(
    (x) => (x.shape[0] === 3 ? (inner(x) as tq.Tensor) : x),
    { args: [tq.inputInfo([[1, 1, 3]])], device },
  );
  call = () => outer(tq.ones([3], { device }));
  assertTqError(call, { op: "compile", kind: "state", includes: [message], line });
  assert.equal(outer.tracedShapes, 1, "the failed trace is not kept");
  // Called on values of its own inside a trace, it runs and its result is a captured constant.
  const c = tq.tensor([1, 2, 3], { device });
  const uses = tq.compile((x) => x.add(inner(c) as tq.Tensor), {
    args: [tq.inputInfo([3])],
    device,
  });
  assert.deepEqual((uses(tq.ones([3], { device })) as tq.Tensor).toArray(), [
    4,
    7,
    10,
  ]);
  // The calling function itself works in place of the executable.
  const inlined = tq.compile((x) => x.mul(3).add(1), { args: [tq.inputInfo([3])], device });
  assert.deepEqual((inlined(c) as tq.Tensor).toArray(), [4, 7, 10]);
  for (const e of [inner, outer, uses, inlined]) e.dispose();
});

Deno.test("compile keeps no traced graph: a captured tensor evaluated and dropped later is freed", async () => {
  // The executable keeps records of its ops (for errors' lines), not the traced nodes, which
  // would hold a captured lazy tensor's node and the buffer it gets when evaluated later.
  const alive = await evalInProcess<{ node: boolean; buffer: boolean; exe: string }>(
    `import * as tq from ${repoModule("../mod.ts")};
    let w = tq.randn([256, 256], { seed: 1 }).mul(2);
    const node = new WeakRef(w.node);
    const exe = tq.compile((x) => x.add(w.sum()), { args: [tq.inputInfo([3])] });
    exe(tq.tensor([1, 2, 3])).dataSync();
    w.dataSync();
    const buffer = new WeakRef(w.node.buffer);
    w = undefined;
    for (let i = 0; i < 5; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 10));
    }
    console.log(JSON.stringify({
      node: node.deref() !== undefined,
      buffer: buffer.deref() !== undefined,
      exe: typeof exe,
    }));`,
    undefined,
    ["--v8-flags=--expose-gc"],
  );
  assert.deepEqual(alive, { node: false, buffer: false, exe: "function" });
});
