// The fixed-shape GPT-2 decoder (lib/models/gpt2_decoder.ts) against the model's own cached
// forward, on every device: a random small GPT-2, a random prompt, a few steps; and generate()
// through it.
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
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
  let stateA = firstA, stateB = plain.prefill(prompt).state;
  for (let s = 0; s < 6; s++) {
    const fed = stateA.ids;
    const consumed = stateA.cache[0];
    const stepA = noisy.step(stateA);
    const stepB = plain.step(stateB);
    assert.throws(() => consumed.dataSync(), /disposed/, "a step consumes the cache it is given");
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
  decoder.dispose();
  assertTqError(
    () => tq.generate(model, [1, 2], { maxNewTokens: 3, cache: false, compiled: true }),
    {
      op: "generate",
      includes: ["compiled", "cache"],
    },
  );
});
