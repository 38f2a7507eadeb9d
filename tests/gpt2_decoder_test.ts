// The fixed-shape GPT-2 decoder (lib/models/gpt2_decoder.ts) against the model's own cached
// forward, on every device: a random small GPT-2, a random prompt, a few steps; and generate()
// through it. The step's planned graph: one cache write per layer, read by attention as views.
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { AttentionView } from "../lib/ops/attention.ts";
import { plannedGraph } from "../lib/runtime/evaluate.ts";
import { assertTqError, randomValues, testOnDevices, thisLine } from "./helpers.ts";

const CONFIG: Partial<tq.GPT2Config> = {
  nLayer: 2,
  nEmbd: 128,
  nHead: 2,
  vocabSize: 300,
  nPositions: 96,
};

function randomPrompt(t: number, seed: number, device: string): tq.Tensor {
  const stream = new tq.RandomStream(seed);
  const ids = Int32Array.from({ length: t }, () => stream.nextUint32() % 300);
  return tq.tensor(ids, { shape: [1, t], device });
}

function relMax(got: Float32Array, want: Float32Array): number {
  let err = 0, top = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    top = Math.max(top, Math.abs(want[i]));
  }
  return err / top;
}

testOnDevices("static decoder steps match the cached forward; padding is masked", (device) => {
  const model = tq.GPT2LMHeadModel.random(CONFIG, { seed: 11, device });
  // Unused slots hold random values in one decoder and zeros in the other: same logits.
  const padding = (shape: number[], layer: number, part: "key" | "value") =>
    tq.tensor(
      randomValues(shape.reduce((a, e) => a * e, 1), 40 + 2 * layer + +(part === "value")),
      {
        shape,
        device,
      },
    );
  const noisy = tq.buildStaticDecoder(model, { maxLength: 40, padding });
  const plain = tq.buildStaticDecoder(model, { maxLength: 40 });
  const prompt = randomPrompt(13, 5, device);
  const { state: firstA, kv } = noisy.prefill(prompt);
  // One tensor per layer: keys at index 0, values at 1, the prompt's slots first.
  assert.equal(firstA.cache.length, 2);
  for (const [i, layer] of kv.layers.entries()) {
    assert.deepEqual(firstA.cache[i].shape, [2, 1, 2, 40, 64]);
    for (const [part, values] of [[0, layer.key!], [1, layer.value!]] as const) {
      assert.deepEqual(
        tq.slice(firstA.cache[i], [part, null, null, [0, 13]]).dataSync(),
        values.dataSync(),
        `layer ${i} part ${part}: the prompt's slots`,
      );
    }
  }
  let stateA = firstA, stateB = plain.prefill(prompt).state;
  for (let s = 0; s < 6; s++) {
    const fed = stateA.ids;
    const consumed = stateA.cache[0];
    const stepA = noisy.step(stateA);
    const stepB = plain.step(stateB);
    assert.throws(() => consumed.dataSync(), /disposed/, "a step consumes the cache it is given");
    if (device !== "cpu" && s > 0) {
      // Fed back into its own fixed buffer: updated there, not copied.
      const buffer = stepA.state.cache[0].node.buffer!;
      assert.ok(buffer.sharesMemoryWith!(consumed.node.buffer!), `step ${s}: no copy`);
    }
    const reference = model.forward(fed, { cache: kv }).dataSync() as Float32Array;
    const got = stepA.logits.dataSync() as Float32Array;
    assert.deepEqual(got, stepB.logits.dataSync(), `step ${s}: the padding leaks in`);
    const err = relMax(got, reference);
    assert.ok(err <= 1e-5, `step ${s}: max rel ${err.toExponential(2)} against the cached forward`);
    assert.deepEqual(
      Array.from(stepA.state.ids.dataSync() as Int32Array),
      [got.indexOf(Math.max(...got))],
      `step ${s}: the greedy choice`,
    );
    assert.deepEqual(Array.from(stepA.state.pos.dataSync() as Int32Array), [14 + s]);
    tq.disposeState(stateB);
    stateA = stepA.state;
    stateB = stepB.state;
  }
  tq.disposeState(stateA);
  tq.disposeState(stateB);
  noisy.dispose();
  plain.dispose();
});

Deno.test("static decoder step: one cache write per layer, read by attention as views", () => {
  const model = tq.GPT2LMHeadModel.random({ ...CONFIG, nLayer: 3 }, { seed: 14 });
  const [layers, heads, slots, headDim] = [3, 2, 40, 64];
  const cache = Array.from(
    { length: layers },
    () => tq.zeros([2, 1, heads, slots, headDim]).evaluate(),
  );
  const ids = tq.tensor(Int32Array.of(7), { shape: [1, 1] });
  const pos = tq.tensor(Int32Array.of(5));
  const outs = tq.decodeStepFunction(model)(ids, pos, ...cache);
  const g = plannedGraph(outs.map((t) => t.node));
  const writes = g.nodes.flatMap((n, i) => (n.op === "sliceScatter" ? [i] : []));
  assert.equal(writes.length, layers, "one write per layer");
  // For B = 1 every permute is a view.
  assert.equal(g.nodes.filter((n) => n.op === "permute").length, 0);
  const leafReads = g.leaves.map(() => 0);
  g.nodes.forEach((n) => n.inputs.forEach((r) => "leaf" in r && leafReads[r.leaf]++));
  for (const [layer, w] of writes.entries()) {
    const [x, src] = g.nodes[w].inputs;
    // The layer's cache, read by nothing else: a donated one is updated in place on a GPU.
    assert.ok("leaf" in x && leafReads[x.leaf] === 1, `layer ${layer}: the cache is read once`);
    assert.deepEqual(g.leaves[x.leaf].shape, [2, 1, heads, slots, headDim]);
    assert.deepEqual(g.nodes[(src as { node: number }).node].shape, [2, 1, heads, 1, headDim]);
    assert.deepEqual(g.outputs[3 + layer], { node: w }, `layer ${layer}: returned`);
    // Only attention reads the update: k and v are views into it (keys, then values).
    const readers = g.nodes.filter((n) => n.inputs.some((r) => "node" in r && r.node === w));
    assert.equal(readers.length, 1, `layer ${layer}: one reader`);
    const [reader] = readers;
    assert.equal(reader.op, "attention");
    assert.deepEqual(reader.inputs.slice(1, 3), [{ node: w }, { node: w }]);
    const views = reader.attrs.views as (AttentionView | null)[];
    const strides = [0, slots * headDim, headDim, 1];
    const shape = [1, heads, slots, headDim];
    assert.deepEqual(views[1], { shape, offset: 0, strides });
    assert.deepEqual(views[2], { shape, offset: heads * slots * headDim, strides });
  }
});

testOnDevices("generate through the compiled decoder", (device) => {
  const model = tq.GPT2LMHeadModel.random(CONFIG, { seed: 12, device });
  const prompt = Array.from(randomPrompt(9, 6, "cpu").dataSync() as Int32Array);
  const eager = tq.generate(model, prompt, { maxNewTokens: 20, compiled: false });
  const compiled = tq.generate(model, prompt, { maxNewTokens: 20, compiled: true });
  assert.equal(compiled.length, 20);
  if (device === "cpu") {
    // The same float64-accumulating kernels on both paths: the same tokens.
    assert.deepEqual(compiled, eager);
    const sample = { maxNewTokens: 20, strategy: "sample" as const, topK: 40, seed: 3 };
    assert.deepEqual(
      tq.generate(model, prompt, { ...sample, compiled: true }),
      tq.generate(model, prompt, { ...sample, compiled: false }),
    );
  } else {
    // Other kernels may break a near tie differently: most tokens agree.
    const same = compiled.filter((t, i) => t === eager[i]).length;
    assert.ok(same >= 15, `${same} of 20 tokens agree: ${compiled} vs ${eager}`);
  }
  // Stop tokens and the whole window (prompt + new tokens = nPositions).
  assert.deepEqual(
    tq.generate(model, prompt, { maxNewTokens: 20, compiled: true, stopTokens: [compiled[4]] }),
    compiled.slice(0, compiled.indexOf(compiled[4]) + 1),
  );
  const long = tq.generate(model, prompt, { maxNewTokens: 96 - 9, compiled: true });
  assert.equal(long.length, 96 - 9);
});

Deno.test("static decoder and compiled generate reject what does not fit", () => {
  const model = tq.GPT2LMHeadModel.random(CONFIG, { seed: 13 });
  assertTqError(() => tq.buildStaticDecoder(model, { maxLength: 97 }), {
    op: "buildStaticDecoder",
    includes: ["maxLength", "2..96"],
    line: thisLine() - 3,
  });
  assertTqError(() => tq.buildStaticDecoder(model, { batch: 0 }), {
    op: "buildStaticDecoder",
    includes: ["batch"],
  });
  const decoder = tq.buildStaticDecoder(model, { maxLength: 8 });
  assertTqError(() => decoder.prefill(randomPrompt(8, 1, "cpu")), {
    op: "StaticDecoder.prefill",
    includes: ["1 <= T < 8", "[1, 8]"],
  });
  // Steps fill positions 3..7; the one at 8 would write into slot 7 again (the write clamps).
  let { state } = decoder.prefill(randomPrompt(3, 2, "cpu"));
  for (let position = 3; position < 8; position++) {
    assert.equal(state.position, position);
    const result = decoder.step(state);
    result.logits.dispose();
    tq.disposeState(state);
    state = result.state;
  }
  assertTqError(() => decoder.step(state), {
    op: "StaticDecoder.step",
    kind: "shape",
    includes: ["cache is full", "[0, 8)", "got 8"],
  });
  tq.disposeState(state);
  // Not a tensor, not a state: named, not a TypeError from inside.
  assertTqError(() => decoder.prefill([1, 2] as unknown as tq.Tensor), {
    op: "StaticDecoder.prefill",
    kind: "argument",
    includes: ["'promptIds'", "Tensor"],
  });
  assertTqError(() => decoder.step(undefined as unknown as tq.DecodeState), {
    op: "StaticDecoder.step",
    kind: "argument",
    includes: ["'state'", "prefill() or step()"],
  });
  decoder.dispose();
  // A disposed decoder is refused, whether prefilling or stepping.
  assertTqError(() => decoder.prefill(randomPrompt(3, 2, "cpu")), {
    op: "StaticDecoder.prefill",
    kind: "state",
    includes: ["disposed"],
  });
  assertTqError(() => decoder.step(state), { op: "StaticDecoder.step", kind: "state" });
  // generate checks its model and its callback before any work.
  assertTqError(() => tq.generate({} as tq.GPT2LMHeadModel, [1], { maxNewTokens: 3 }), {
    op: "generate",
    kind: "argument",
    includes: ["'model'", "GPT2LMHeadModel"],
  });
  const onToken = 5 as unknown as (id: number) => void;
  assertTqError(() => tq.generate(model, [1], { maxNewTokens: 3, onToken }), {
    op: "generate",
    includes: ["'onToken'", "got 5"],
  });
  // null options take the defaults.
  const ids = randomPrompt(3, 4, "cpu");
  const viaNull = model.forward(ids, null as unknown as tq.GPT2ForwardOptions).dataSync();
  assert.deepEqual(viaNull, model.forward(ids).dataSync());
  assertTqError(
    () => tq.generate(model, [1, 2], { maxNewTokens: 3, cache: false, compiled: true }),
    {
      op: "generate",
      includes: ["compiled", "cache"],
    },
  );
});

Deno.test("decoder helpers reject a bad model, options or state", () => {
  const model = tq.GPT2LMHeadModel.random({ ...CONFIG, nLayer: 1, nPositions: 16 }, { seed: 2 });
  // deno-lint-ignore no-explicit-any
  const bad = (v: unknown) => v as any;
  const decoder = tq.buildStaticDecoder(model, { maxLength: 8 });
  const { state } = decoder.prefill(randomPrompt(3, 1, "cpu"));
  const cases: [() => unknown, string, string, string[]][] = [
    [() => tq.buildStaticDecoder(bad({})), "buildStaticDecoder", "argument", ["'model'"]],
    [() => tq.buildStaticDecoder(model, bad(8)), "buildStaticDecoder", "argument", ["'options'"]],
    [() => tq.buildStaticDecoder(model, bad({ maxLen: 8 })), "buildStaticDecoder", "argument", [
      '"maxLen"',
    ]],
    [() => tq.buildStaticDecoder(model, { padding: bad(0) }), "buildStaticDecoder", "argument", [
      "'padding'",
      "got 0",
    ]],
    [
      () => tq.buildStaticDecoder(model, { cudaGraphs: bad("no") }),
      "buildStaticDecoder",
      "argument",
      [
        "'cudaGraphs'",
      ],
    ],
    [() => tq.buildStaticDecoder(model, { maxLength: bad(8n) }), "buildStaticDecoder", "argument", [
      "8n",
    ]],
    [() => tq.decodeStepFunction(bad(null)), "decodeStepFunction", "argument", ["'model'", "null"]],
    [() => tq.cloneState(bad(Symbol("s"))), "cloneState", "argument", ["'state'", "Symbol(s)"]],
    [() => tq.cloneState(bad({ ...state, cache: [1] })), "cloneState", "argument", ["'state'"]],
    [() => tq.disposeState(bad(undefined)), "disposeState", "argument", ["'state'"]],
    [() => tq.disposeState(bad({ ids: state.ids })), "disposeState", "argument", ["'state'"]],
    [() => decoder.step({ ...state, position: 3.5 }), "StaticDecoder.step", "argument", [
      "'state.position'",
      "3.5",
    ]],
    [() => decoder.step({ ...state, position: bad("3") }), "StaticDecoder.step", "argument", [
      '"3"',
    ]],
    [() => decoder.step({ ...state, cache: [] }), "StaticDecoder.step", "argument", [
      "'state.cache'",
      "expected 1 tensors, one per layer, got 0 tensors",
    ]],
    [
      () =>
        tq.buildStaticDecoder(model, { maxLength: 8, padding: () => tq.zeros([1]) }).prefill(
          randomPrompt(3, 1, "cpu"),
        ),
      "StaticDecoder.prefill",
      "argument",
      ["'padding'", "float32 tensor of shape [1, 2, 5, 64] (layer 0, key)", "got float32 [1]"],
    ],
  ];
  for (const [fn, op, kind, includes] of cases) assertTqError(fn, { op, kind, includes });
  // A copy of a disposed state's tensors is a state error, not a read of freed memory.
  const copy = tq.cloneState(state);
  tq.disposeState(copy);
  assertTqError(() => tq.cloneState(copy), { op: "cloneState", kind: "state" });
  tq.disposeState(copy); // disposing twice is harmless
  const { logits } = decoder.step(state);
  assert.deepEqual(logits.shape, [1, 1, 300]);
  decoder.dispose();
});
