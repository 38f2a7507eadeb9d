/**
 * GPT-2 against PyTorch: the tiny byte-level Shakespeare model's float32 logits and loss
 * (fixtures in ../shared), KV-cache decoding, generation, sharded checkpoints and load errors.
 * @module
 */
import assert from "node:assert/strict";
import { HfCheckpoint, loadHfCheckpoint } from "../lib/io/hf.ts";
import { loadSafetensors, saveSafetensors } from "../lib/io/tensors.ts";
import {
  decodeBytes,
  encodeBytes,
  generate,
  gpt2Config,
  GPT2LMHeadModel,
  kthLargest,
  KVCache,
  lossFromLogits,
  parseGPT2Config,
  sampleFrom,
} from "../lib/models/gpt2.ts";
import { RandomStream } from "../lib/random.ts";
import { concat, slice } from "../lib/ops/shape.ts";
import { type Tensor, tensor } from "../lib/tensor.ts";
import {
  assertTqError,
  filesExist,
  SHARED_DIR,
  sharedTest,
  testOnDevices,
  thisLine,
} from "./helpers.ts";
import * as tq from "../mod.ts";

// The model: ../shared's copy, else the identical one the demo ships.
const SHARED_MODEL = new URL("models/tiny-shakespeare-gpt2/", SHARED_DIR).pathname;
const BUNDLED_MODEL = decodeURIComponent(
  new URL("../examples/gpt2/assets/tiny-shakespeare-gpt2/", import.meta.url).pathname,
);
const MODEL_DIR = filesExist(`${SHARED_MODEL}model.safetensors`) ? SHARED_MODEL : BUNDLED_MODEL;
const FIXTURES = new URL("fixtures/", SHARED_DIR).pathname;
const LOAD_OP = "GPT2LMHeadModel.fromPretrained";

const haveModel = filesExist(`${MODEL_DIR}model.safetensors`, `${MODEL_DIR}config.json`);
const haveShared = haveModel &&
  filesExist(`${FIXTURES}reference.safetensors`, `${FIXTURES}report.json`);
if (!haveShared) {
  console.log(`gpt2 reference tests skipped: ${SHARED_DIR.pathname} (fixtures) not present`);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d; // NaN propagates as a failure
  }
  return m;
}

function floats(t: Tensor): Float32Array {
  return t.dataSync() as Float32Array;
}

// The model and the one full [8, 256] forward, shared by every test that needs them.
let model: GPT2LMHeadModel | undefined;
function tinyModel(): GPT2LMHeadModel {
  model ??= GPT2LMHeadModel.fromPretrained(MODEL_DIR);
  return model;
}

interface Reference {
  inputIds: Tensor;
  torchLogits: Float32Array;
  logits: Tensor;
  seconds: number;
}
let reference: Reference | undefined;
function fullForward(): Reference {
  if (reference) return reference;
  using ref = loadSafetensors(`${FIXTURES}reference.safetensors`);
  const inputIds = ref.get("input_ids");
  const torchLogits = floats(ref.get("logits"));
  const m = tinyModel();
  const start = performance.now();
  const logits = m.forward(inputIds).evaluate();
  const seconds = (performance.now() - start) / 1000;
  console.log(`full forward [8, 256] on cpu: ${seconds.toFixed(2)} s`);
  reference = { inputIds, torchLogits, logits, seconds };
  return reference;
}

/** Token ids of row `row`, first `n` positions, of the reference inputs. */
function promptOf(row: number, n: number): number[] {
  const ids = fullForward().inputIds.dataSync() as Int32Array;
  return Array.from(ids.subarray(row * 256, row * 256 + n));
}

// ---------------------------------------------------------------------------------------
// Config

Deno.test("gpt2Config: defaults are GPT-2 small; invalid fields are named", () => {
  const c = gpt2Config();
  assert.deepEqual(
    [c.vocabSize, c.nPositions, c.nEmbd, c.nLayer, c.nHead, c.nInner],
    [50257, 1024, 768, 12, 12, 3072],
  );
  assert.equal(c.activation, "gelu_new");
  assert.equal(c.tieWordEmbeddings, true);
  assertTqError(() => gpt2Config({ nEmbd: 100, nHead: 3 }), {
    op: "GPT2Config",
    kind: "argument",
    includes: ["nHead", "divisor of nEmbd (100)"],
    line: thisLine() - 4,
  });
  assertTqError(() => gpt2Config({ nLayer: 0 }), { op: "GPT2Config", includes: ["nLayer"] });
  assertTqError(() => parseGPT2Config({ model_type: "bert" }), {
    op: "GPT2Config",
    includes: ["model_type", '"bert"'],
  });
  // config.json's key is named, not the camelCase field.
  assertTqError(() => parseGPT2Config({ activation_function: "relu6" }), {
    op: "GPT2Config",
    kind: "unsupported",
    includes: ["'activation_function'", '"relu6"', "silu"],
  });
  assertTqError(() => parseGPT2Config({ n_head: 0 }), {
    op: "GPT2Config",
    kind: "argument",
    includes: ["'n_head'", "config.json"],
    line: thisLine() - 4,
  });
  // gpt2-medium's shapes; n_inner null means 4·n_embd.
  const medium = parseGPT2Config({ n_embd: 1024, n_layer: 24, n_head: 16, n_inner: null });
  assert.deepEqual([medium.nEmbd, medium.nLayer, medium.nHead, medium.nInner], [
    1024,
    24,
    16,
    4096,
  ]);
});

sharedTest(haveModel, "parseGPT2Config reads the tiny model's config.json", () => {
  const c = parseGPT2Config(JSON.parse(Deno.readTextFileSync(`${MODEL_DIR}config.json`)));
  assert.deepEqual(c, {
    vocabSize: 256,
    nPositions: 256,
    nEmbd: 256,
    nLayer: 4,
    nHead: 4,
    nInner: 1024,
    layerNormEpsilon: 1e-5,
    activation: "gelu_new",
    scaleAttnWeights: true,
    scaleAttnByInverseLayerIdx: false,
    tieWordEmbeddings: true,
  });
});

// ---------------------------------------------------------------------------------------
// Loading

sharedTest(
  haveModel,
  "fromPretrained: HF names, Conv1D weights transposed, lm_head tied to wte",
  () => {
    const m = tinyModel();
    const sd = m.stateDict();
    assert.deepEqual(sd["transformer.h.0.attn.c_attn.weight"].shape, [768, 256]);
    assert.deepEqual(sd["transformer.h.3.mlp.c_proj.weight"].shape, [256, 1024]);
    assert.deepEqual(sd["transformer.wpe.weight"].shape, [256, 256]);
    assert.ok(sd["lm_head.weight"] === sd["transformer.wte.weight"], "the same tensor");
    assert.equal(Object.keys(sd).length, 2 + 4 * 12 + 2 + 1);
    // Linear's [out, in] is the transpose of the file's [in, out].
    using ckpt = loadHfCheckpoint(MODEL_DIR);
    const file = floats(ckpt.tensor("transformer.h.2.mlp.c_fc.weight")); // [256, 1024]
    const mine = floats(sd["transformer.h.2.mlp.c_fc.weight"]); // [1024, 256]
    for (const [i, o] of [[0, 0], [3, 700], [255, 1023], [100, 1]]) {
      assert.equal(mine[o * 256 + i], file[i * 1024 + o], `element in=${i} out=${o}`);
    }
    assert.ok(sd["transformer.h.2.mlp.c_fc.weight"].isEvaluated, "materialized at load");
  },
);

sharedTest(haveShared, "logits of input_ids match PyTorch float32 (max |diff| <= 1e-3)", () => {
  const { logits, torchLogits, seconds } = fullForward();
  assert.deepEqual(logits.shape, [8, 256, 256]);
  const diff = maxAbsDiff(floats(logits), torchLogits);
  console.log(`max |logit diff| vs PyTorch: ${diff.toExponential(3)} (${seconds.toFixed(2)} s)`);
  assert.ok(diff <= 1e-3, `max diff ${diff}`);
});

sharedTest(haveShared, "lossFromLogits matches report.json fp32_loss (within 1e-4)", () => {
  const { logits, inputIds, torchLogits } = fullForward();
  const report = JSON.parse(Deno.readTextFileSync(`${FIXTURES}report.json`));
  const loss = lossFromLogits(logits, inputIds);
  console.log(`loss ${loss} vs report ${report.fp32_loss}`);
  assert.ok(Math.abs(loss - report.fp32_loss) <= 1e-4, `loss ${loss}`);
  // The PyTorch logits give the same number: the loss function is right on its own.
  const torchLoss = lossFromLogits(tensor(torchLogits, { shape: [8, 256, 256] }), inputIds);
  assert.ok(Math.abs(torchLoss - report.fp32_loss) <= 1e-5, `torch loss ${torchLoss}`);
});

Deno.test("lossFromLogits: hand-computed cross entropy, shifted and unshifted", () => {
  // One sequence, 3 positions, vocab 2. log-softmax of [0, ln 3] is [ln(1/4), ln(3/4)].
  const l3 = Math.log(3);
  const logits = tensor([[[0, l3], [l3, 0], [0, 0]]]);
  const ids = tensor(Int32Array.from([0, 1, 1]), { shape: [1, 3] });
  // Shifted: position 0 → id 1 (3/4), position 1 → id 1 (1/4).
  const shifted = -(Math.log(3 / 4) + Math.log(1 / 4)) / 2;
  assert.ok(Math.abs(lossFromLogits(logits, ids) - shifted) < 1e-6);
  // Unshifted: 0 → 0 (1/4), 1 → 1 (1/4), 2 → 1 (1/2).
  const plain = -(Math.log(1 / 4) + Math.log(1 / 4) + Math.log(1 / 2)) / 3;
  assert.ok(Math.abs(lossFromLogits(logits, ids, { shift: false }) - plain) < 1e-6);
  assertTqError(
    () => lossFromLogits(logits, tensor(Int32Array.from([0, 2, 1]), { shape: [1, 3] })),
    {
      op: "lossFromLogits",
      includes: ["ids[0, 1]", "[0, 2)"],
    },
  );
});

// ---------------------------------------------------------------------------------------
// KV cache

sharedTest(haveShared, "KV-cache decoding equals the full forward (max |diff| <= 1e-4)", () => {
  const m = tinyModel();
  const prompt = promptOf(0, 24);
  const ids = (xs: number[]) => tensor(Int32Array.from(xs), { shape: [1, xs.length] });
  const full = floats(m.forward(ids(prompt)));
  const cache = m.createCache();
  const parts: Tensor[] = [];
  // A 16-token prefill, a 3-token chunk, then one token at a time.
  parts.push(m.forward(ids(prompt.slice(0, 16)), { cache }));
  assert.equal(cache.length, 16);
  parts.push(m.forward(ids(prompt.slice(16, 19)), { cache }));
  for (let i = 19; i < 24; i++) parts.push(m.forward(ids([prompt[i]]), { cache }));
  assert.equal(cache.length, 24);
  assert.deepEqual(cache.layers[3].key!.shape, [1, 4, 24, 64]);
  const stepped = floats(concat(parts, 1));
  const diff = maxAbsDiff(stepped, full);
  console.log(`max |cached - full| logits: ${diff.toExponential(3)}`);
  assert.ok(diff <= 1e-4, `max diff ${diff}`);
  // And both agree with PyTorch on those positions (causal: the rest of the row is unseen).
  const torchRow = fullForward().torchLogits.subarray(0, 24 * 256);
  assert.ok(maxAbsDiff(full, torchRow) <= 1e-3);
  cache.reset();
  assert.equal(cache.length, 0);
});

sharedTest(haveModel, "forward with a cache rejects overflow and batch mismatches", () => {
  const m = tinyModel();
  const cache = m.createCache();
  m.forward(tensor(Int32Array.from([1, 2, 3, 4]), { shape: [2, 2] }), { cache });
  assertTqError(() => m.forward(tensor(Int32Array.from([5]), { shape: [1, 1] }), { cache }), {
    op: "GPT2LMHeadModel.forward",
    kind: "shape",
    includes: ["batch 2"],
    line: thisLine() - 4,
  });
  assertTqError(
    () => m.forward(tensor(new Int32Array(2 * 255), { shape: [2, 255] }), { cache }),
    { op: "GPT2LMHeadModel.forward", includes: ["at most 256 positions", "2 cached + 255 new"] },
  );
  assertTqError(() => m.forward(tensor([[1, 2]])), {
    op: "GPT2LMHeadModel.forward",
    kind: "dtype",
  });
  assertTqError(() => m.forward(tensor(Int32Array.from([1]))), {
    op: "GPT2LMHeadModel.forward",
    kind: "shape",
  });
  assert.throws(() => new KVCache(0));
});

// ---------------------------------------------------------------------------------------
// Generation

sharedTest(
  haveShared,
  "greedy generate: deterministic, same with and without cache, matches argmax",
  () => {
    const m = tinyModel();
    const prompt = promptOf(1, 24);
    const a = generate(m, prompt, { maxNewTokens: 12 });
    const b = generate(m, prompt, { maxNewTokens: 12, strategy: "greedy" });
    const noCache = generate(m, prompt, { maxNewTokens: 12, cache: false });
    assert.equal(a.length, 12);
    assert.deepEqual(a, b);
    assert.deepEqual(noCache, a);
    // The first token is the argmax of PyTorch's logits at the prompt's last position.
    const row = fullForward().torchLogits.subarray((256 + 23) * 256, (256 + 24) * 256);
    assert.equal(a[0], row.indexOf(Math.max(...row)));
    // A tensor prompt gives the same tokens; onToken sees each as it comes.
    const seen: number[] = [];
    const c = generate(m, tensor(Int32Array.from(prompt)), {
      maxNewTokens: 12,
      onToken: (t) => seen.push(t),
    });
    assert.deepEqual(c, a);
    assert.deepEqual(seen, a);
    // Stop tokens end generation after being emitted.
    assert.deepEqual(generate(m, prompt, { maxNewTokens: 12, stopTokens: [a[3]] }), a.slice(0, 4));
    console.log(`greedy: ${JSON.stringify(decodeBytes(prompt) + "|" + decodeBytes(a))}`);
  },
);

Deno.test("kthLargest equals sorting, on rows with ties, runs and every k", () => {
  const stream = new RandomStream(8128);
  const rows: Record<string, Float32Array> = {
    random: Float32Array.from({ length: 5003 }, () => stream.normal() * 4),
    ties: Float32Array.from({ length: 5003 }, () => Math.round(stream.uniform() * 6) - 3),
    ascending: Float32Array.from({ length: 5003 }, (_, i) => i / 7),
    descending: Float32Array.from({ length: 5003 }, (_, i) => -i / 7),
    constant: new Float32Array(300).fill(-1.5),
    large: Float32Array.from({ length: 50257 }, () => stream.normal() * 4),
  };
  for (const [name, row] of Object.entries(rows)) {
    const sorted = Float64Array.from(row).sort();
    const n = row.length;
    for (const k of [1, 2, 3, 20, 40, 1000, 4096, 4097, n - 1, n]) {
      if (k > n) continue;
      assert.equal(kthLargest(row, k), sorted[n - k], `${name}, k ${k}`);
    }
  }
});

Deno.test("sampleFrom draws each kept token as often as its softmax weight", () => {
  // topK 3 with a tie at the 3rd largest logit (both kept): four tokens of nine can be drawn,
  // at temperature 0.7. 60000 draws: each frequency within 5 standard deviations of its share.
  const row = [0.3, 2.1, -1.0, 1.4, 0.9, 1.4, -3.0, 0.2, 1.7];
  const temperature = 0.7;
  const kept = row.map((_, i) => i).filter((i) => row[i] >= 1.4);
  const weights = kept.map((i) => Math.exp(row[i] / temperature));
  const total = weights.reduce((a, b) => a + b);
  const draws = 60000;
  const counts = new Map<number, number>();
  const stream = new RandomStream(4242);
  for (let d = 0; d < draws; d++) {
    const t = sampleFrom(row, temperature, 3, stream);
    counts.set(t, (counts.get(t) ?? 0) + 1);
  }
  assert.deepEqual([...counts.keys()].sort(), [...kept].sort(), "only the top 3 and its tie");
  kept.forEach((token, j) => {
    const p = weights[j] / total;
    const sd = Math.sqrt(draws * p * (1 - p));
    const got = counts.get(token)!;
    assert.ok(Math.abs(got - draws * p) <= 5 * sd, `token ${token}: ${got} of ${draws}, p ${p}`);
  });
});

sharedTest(haveModel, "sampling is reproducible by seed; topK 1 is greedy", () => {
  const m = tinyModel();
  const prompt = encodeBytes("ROMEO:\n");
  const opts = { maxNewTokens: 24, strategy: "sample" as const, temperature: 1.0 };
  const s1 = generate(m, prompt, { ...opts, seed: 7 });
  const s2 = generate(m, prompt, { ...opts, seed: 7 });
  const s3 = generate(m, prompt, { ...opts, seed: 8 });
  assert.deepEqual(s1, s2);
  assert.notDeepEqual(s1, s3);
  assert.ok(s1.every((t) => Number.isInteger(t) && t >= 0 && t < 256));
  const greedy = generate(m, prompt, { maxNewTokens: 10 });
  assert.deepEqual(
    generate(m, prompt, { maxNewTokens: 10, strategy: "sample", topK: 1, seed: 3 }),
    greedy,
  );
  // A very low temperature concentrates all mass on the argmax.
  assert.deepEqual(
    generate(m, prompt, { maxNewTokens: 10, strategy: "sample", temperature: 1e-4, seed: 5 }),
    greedy,
  );
  console.log(`sample(seed 7): ${JSON.stringify(decodeBytes(s1))}`);
});

Deno.test("generate refuses logits it cannot choose from: NaN, and ±Infinity when sampling", () => {
  const config = { vocabSize: 40, nPositions: 16, nEmbd: 32, nLayer: 1, nHead: 4 };
  const m = GPT2LMHeadModel.random(config, { seed: 9 });
  const setFinalBias = (v: number) => {
    const b = new Float32Array(32);
    b[0] = v;
    m.loadStateDict({ "transformer.ln_f.bias": tensor(b) }, { strict: false });
  };
  const greedy = { maxNewTokens: 4 };
  const sample = { maxNewTokens: 4, strategy: "sample" as const, seed: 1 };
  const topK = { ...sample, topK: 5 };
  setFinalBias(NaN); // every logit NaN: argmax gave token 0 and sampling its last candidate
  for (const options of [greedy, sample, topK]) {
    for (const compiled of [true, false]) {
      const line = thisLine() + 1;
      const run = () => generate(m, [1, 2, 3], { ...options, compiled });
      assertTqError(run, {
        op: "generate",
        kind: "state",
        includes: ["logits of new token 0 are not usable", "got NaN at token id 0"],
        line,
      });
    }
  }
  // +Infinity in channel 0 of the hidden state: logits of ±Infinity by the sign of the row's
  // embedding there. Greedy takes the first +Infinity; a softmax of them is undefined.
  setFinalBias(Infinity);
  const firstPositive = (m.transformer.wte.weight.toArray() as number[][]).findIndex((r) =>
    r[0] > 0
  );
  assert.deepEqual(generate(m, [1, 2, 3], { maxNewTokens: 1 }), [firstPositive]);
  assertTqError(() => generate(m, [1, 2, 3], sample), {
    op: "generate",
    includes: [`got Infinity at token id ${firstPositive}`, "softmax of NaN or ±Infinity"],
  });
});

testOnDevices("generate greedy: the decode step's own argmax; a NaN at a later token", (device) => {
  // Compiled greedy decoding takes each token after the first from the step's argmax on the
  // device; uncompiled decoding takes the host's argmax of each row. They must agree.
  const config = {
    vocabSize: 50,
    nPositions: 24,
    nEmbd: 32,
    nLayer: 2,
    nHead: 4,
    tieWordEmbeddings: false,
  };
  const m = GPT2LMHeadModel.random(config, { seed: 21, device });
  for (const prompt of [[1, 2, 3], [7], [40, 41, 42, 43]]) {
    assert.deepEqual(
      generate(m, prompt, { maxNewTokens: 12 }),
      generate(m, prompt, { maxNewTokens: 12, compiled: false }),
      `prompt ${prompt}`,
    );
  }
  // The first chosen token's embedding made NaN: its own logits are fine, the next token's
  // (after it is fed back) are all NaN.
  const prompt = [1, 2, 3];
  const first = generate(m, prompt, { maxNewTokens: 1 })[0];
  assert.ok(!prompt.includes(first), `first token ${first}`);
  const rows = m.transformer.wte.weight.toArray() as number[][];
  rows[first] = rows[first].map(() => NaN);
  m.loadStateDict({ "transformer.wte.weight": tensor(rows, { device }) }, { strict: false });
  for (const compiled of [true, false]) {
    const seen: number[] = [];
    const line = thisLine() + 2;
    assertTqError(
      () => generate(m, prompt, { maxNewTokens: 5, compiled, onToken: (t) => seen.push(t) }),
      {
        op: "generate",
        kind: "state",
        includes: ["logits of new token 1 are not usable", "got NaN at token id 0"],
        line,
      },
    );
    assert.deepEqual(seen, [first], `compiled ${compiled}`);
  }
});

Deno.test("generate: an empty or disposed prompt is named as such", () => {
  const m = GPT2LMHeadModel.random({
    vocabSize: 40,
    nPositions: 16,
    nEmbd: 32,
    nLayer: 1,
    nHead: 4,
  }, {
    seed: 2,
  });
  assertTqError(() => generate(m, [], { maxNewTokens: 1 }), {
    op: "generate",
    includes: ["prompt is empty", "expected at least one token, got 0 tokens"],
    line: thisLine() - 3,
  });
  const prompt = tensor(Int32Array.of(1, 2));
  prompt.dispose();
  assertTqError(() => generate(m, prompt, { maxNewTokens: 1 }), {
    op: "generate",
    kind: "state",
    includes: ["argument 'promptIds'", "disposed"],
    line: thisLine() - 4,
  });
});

sharedTest(haveModel, "generate rejects bad arguments", () => {
  const m = tinyModel();
  assertTqError(() => generate(m, [1, 256], { maxNewTokens: 1 }), {
    op: "generate",
    includes: ["promptIds[1]", "[0, 256)"],
    line: thisLine() - 3,
  });
  assertTqError(() => generate(m, new Array(250).fill(65), { maxNewTokens: 7 }), {
    op: "generate",
    includes: ["maxNewTokens", "<= 256"],
  });
  assertTqError(
    () => generate(m, [65], { maxNewTokens: 1, strategy: "sample", temperature: 0 }),
    { op: "generate", includes: ["temperature"] },
  );
  // Greedy ignores the temperature, but not a meaningless one.
  assert.equal(generate(m, [65], { maxNewTokens: 1, temperature: 0 }).length, 1);
  for (const temperature of [-5, NaN, Infinity]) {
    assertTqError(() => generate(m, [65], { maxNewTokens: 1, temperature }), {
      op: "generate",
      includes: ["'temperature'", "a finite number >= 0", `got ${temperature}`],
    });
  }
  // A prompt longer than the positions is the prompt's fault, whatever maxNewTokens is.
  assertTqError(() => generate(m, new Array(257).fill(65), { maxNewTokens: 0 }), {
    op: "generate",
    includes: ["'promptIds'", "at most 256 tokens", "got 257 tokens"],
  });
  for (
    const [options, includes] of [
      [{ seed: 0.5 }, ["seed", "0.5"]],
      [{ seed: 2 ** 53 }, ["seed", "9007199254740992"]],
      [{ stopTokens: 7 as unknown as number[] }, ["stopTokens", "number[]"]],
      [{ stopTokens: [1, 256] }, ["stopTokens[1]", "[0, 256)"]],
    ] as const
  ) {
    assertTqError(
      () => generate(m, [65], { maxNewTokens: 1, strategy: "sample", ...options }),
      { op: "generate", includes: [...includes] },
    );
  }
  assertTqError(() => generate(m, [[1, 2]] as unknown as number[], { maxNewTokens: 1 }), {
    op: "generate",
    kind: "shape",
    includes: ["one sequence"],
  });
  assertTqError(() => generate(m, [65], { maxNewTokens: 1, topK: 0 }), {
    op: "generate",
    includes: ["topK"],
  });
  assertTqError(() => generate(m, [], { maxNewTokens: 1 }), { op: "generate" });
  assert.deepEqual(generate(m, [65], { maxNewTokens: 0 }), []);
});

Deno.test("encodeBytes / decodeBytes: UTF-8 bytes round trip", () => {
  assert.deepEqual(encodeBytes("Hé!"), [72, 0xc3, 0xa9, 33]);
  assert.equal(decodeBytes([72, 0xc3, 0xa9, 33]), "Hé!");
  assert.equal(decodeBytes([0xc3]), "\ufffd");
  assertTqError(() => decodeBytes("AB" as unknown as number[]), {
    op: "decodeBytes",
    includes: ["number[]", 'got "AB"'],
  });
  // A leading byte order mark is kept, not stripped.
  assert.equal(decodeBytes(encodeBytes("\ufeffhi")), "\ufeffhi");
  assertTqError(() => decodeBytes([65, 256]), { op: "decodeBytes", includes: ["ids[1]"] });
});

// ---------------------------------------------------------------------------------------
// Random models

/** Lines named by the unevaluated nodes of `t`'s graph (leaves made elsewhere excluded). */
function graphLines(t: Tensor): Map<number, number> {
  const lines = new Map<number, number>();
  const seen = new Set<tq.Node>();
  const pending = [t.node];
  for (let n = pending.pop(); n; n = pending.pop()) {
    if (seen.has(n) || n.realized) continue;
    seen.add(n);
    const line = n.callSite?.line ?? -1;
    lines.set(line, (lines.get(line) ?? 0) + 1);
    pending.push(...n.inputs);
  }
  return lines;
}

Deno.test("a forward's graph nodes name the user's line, also those made in user hooks", () => {
  const config = { vocabSize: 50, nPositions: 16, nEmbd: 32, nLayer: 2, nHead: 4 };
  const m = GPT2LMHeadModel.random(config, { seed: 6 });
  const ids = tensor(Int32Array.from([3, 7, 11, 5]), { shape: [1, 4] });
  // Library code only: every node (one stack capture shared by all) names the forward call.
  let line = thisLine() + 1;
  const plain = graphLines(m.forward(ids));
  assert.deepEqual([...plain.keys()], [line]);
  assert.ok(plain.get(line)! > 30, `only ${plain.get(line)} nodes`);

  // User code inside the forward: its nodes name its own lines.
  const c_fc = m.transformer.block(1).mlp.c_fc;
  let observed: Tensor | undefined;
  const observerLine = thisLine() + 1;
  c_fc.inputObserver = (x) => (observed = x.mul(1));
  line = thisLine() + 1;
  const withObserver = graphLines(m.forward(ids));
  c_fc.inputObserver = undefined;
  assert.equal(observed?.node.callSite?.line, observerLine);
  assert.deepEqual([...withObserver.keys()], [line]);

  const mlp = m.transformer.block(0).mlp;
  const forward = mlp.forward.bind(mlp);
  const overrideLine = thisLine() + 1;
  mlp.forward = (x: Tensor) => forward(x).mul(0.5);
  line = thisLine() + 1;
  const overridden = graphLines(m.forward(ids));
  assert.deepEqual([...overridden.keys()].sort(), [overrideLine, line].sort());
  // The override's own node and the MLP's, which it called.
  assert.ok(overridden.get(overrideLine)! >= 4, `${overridden.get(overrideLine)} nodes`);
});

Deno.test("a forward that fails with a cache leaves the cache as it was", () => {
  const config = { vocabSize: 50, nPositions: 16, nEmbd: 32, nLayer: 2, nHead: 4 };
  const m = GPT2LMHeadModel.random(config, { seed: 4 });
  const ids = tensor(Int32Array.from([3, 7, 11, 5]), { shape: [1, 4] });
  const full = floats(m.forward(ids));
  const cache = m.createCache();
  m.forward(slice(ids, [null, [0, 3]]), { cache });
  assert.equal(cache.length, 3);
  const bad = tensor(Int32Array.of(99), { shape: [1, 1] });
  assert.throws(() => m.forward(bad, { cache }), /out of range|vocab|99/);
  assert.equal(cache.length, 3, "the failed call did not advance the cache");
  // A negative id is no token either (it would read another token's row if it wrapped).
  const negative = tensor(Int32Array.of(-1), { shape: [1, 1] });
  assertTqError(() => m.forward(negative, { cache }), {
    op: "embedding",
    kind: "argument",
    includes: ["ids in [0, 49]", "got -1"],
  });
  assert.equal(cache.length, 3);
  // A cache filled by a model of other heads is named as such (not a concat shape error).
  const other = GPT2LMHeadModel.random({ ...config, nHead: 2 }, { seed: 5 });
  assertTqError(() => other.forward(bad, { cache }), {
    op: "GPT2LMHeadModel.forward",
    includes: ["another model's keys", "2 heads of 16"],
  });
  const last = floats(m.forward(slice(ids, [null, [3, 4]]), { cache }));
  assert.ok(maxAbsDiff(last, full.subarray(3 * 50)) <= 1e-5);
});

Deno.test("GPT2Model.forward with a cache: checked and restored as the head model's forward", () => {
  const config = { vocabSize: 50, nPositions: 8, nEmbd: 32, nLayer: 2, nHead: 4 };
  const m = GPT2LMHeadModel.random(config, { seed: 6 });
  const ids = tensor(Int32Array.from([3, 7, 11, 5]), { shape: [1, 4] });
  const full = floats(m.transformer.forward(ids));
  const cache = m.createCache();
  m.transformer.forward(slice(ids, [null, [0, 3]]), cache);
  assert.equal(cache.length, 3);
  // An id out of the vocabulary fails at once and leaves the cache usable.
  const bad = tensor(Int32Array.of(99), { shape: [1, 1] });
  assertTqError(() => m.transformer.forward(bad, cache), {
    op: "embedding",
    includes: ["got 99"],
  });
  assert.equal(cache.length, 3, "the failed call did not advance the cache");
  const step = floats(m.transformer.forward(slice(ids, [null, [3, 4]]), cache));
  assert.ok(maxAbsDiff(step, full.subarray(3 * 32)) <= 1e-5, "the cache still works");
  // Past the positions: the trunk says so (it named position 8 as a bad id).
  m.transformer.forward(tensor(Int32Array.from([1, 2, 3, 4]), { shape: [1, 4] }), cache);
  assert.equal(cache.length, 8);
  const line = thisLine() + 1;
  const over = () => m.transformer.forward(tensor(Int32Array.of(1), { shape: [1, 1] }), cache);
  assertTqError(over, {
    op: "GPT2Model.forward",
    kind: "shape",
    includes: ["longer than the model's positions", "8 cached + 1 new"],
    line,
  });
  assert.equal(cache.length, 8);
  // Without a cache too.
  const long = tensor(new Int32Array(9).fill(1), { shape: [1, 9] });
  assertTqError(() => m.transformer.forward(long), {
    op: "GPT2Model.forward",
    includes: ["0 cached + 9 new"],
  });
});

Deno.test("GPT2LMHeadModel.random: seeded, tied, any size", () => {
  const config = { vocabSize: 64, nPositions: 16, nEmbd: 32, nLayer: 2, nHead: 4 };
  const a = GPT2LMHeadModel.random(config, { seed: 1 });
  const b = GPT2LMHeadModel.random(config, { seed: 1 });
  const c = GPT2LMHeadModel.random(config, { seed: 2 });
  const ids = tensor(Int32Array.from([1, 5, 9, 63, 0, 2]), { shape: [2, 3] });
  const la = floats(a.forward(ids));
  assert.equal(la.length, 2 * 3 * 64);
  assert.ok(la.every(Number.isFinite));
  assert.equal(maxAbsDiff(la, floats(b.forward(ids))), 0);
  assert.ok(maxAbsDiff(la, floats(c.forward(ids))) > 1e-4);
  assert.ok(a.lm_head.weight === a.transformer.wte.weight);
  const w = floats(a.transformer.h.at(0)!.stateDict()["attn.c_attn.weight"]);
  const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
  assert.ok(Math.abs(std - 0.02) < 0.002, `init std ${std}`);
  // Cached decoding on a random model with an odd head count also matches the full pass.
  const odd = GPT2LMHeadModel.random({ ...config, nEmbd: 24, nHead: 3, tieWordEmbeddings: false });
  assert.ok(odd.lm_head.weight !== odd.transformer.wte.weight);
  const full = floats(odd.forward(ids));
  const cache = odd.createCache();
  const first = odd.forward(slice(ids, [null, [0, 2]]), { cache });
  const last = odd.forward(slice(ids, [null, [2, 3]]), { cache });
  assert.ok(maxAbsDiff(floats(concat([first, last], 1)), full) <= 1e-5);
});

Deno.test("GPT2MLP: every activation_function of GPT2Config against float64", () => {
  const d = 8, inner = 12;
  const x = tensor(Float32Array.from({ length: 3 * d }, (_, i) => Math.sin(i * 1.7) * 2), {
    shape: [3, d],
  });
  const reference: Record<string, (v: number) => number> = {
    gelu_new: (v) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3))),
    gelu_pytorch_tanh: (v) =>
      0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3))),
    gelu: (v) => 0.5 * v * (1 + erf(v / Math.SQRT2)),
    relu: (v) => Math.max(v, 0),
    silu: (v) => v / (1 + Math.exp(-v)),
    swish: (v) => v / (1 + Math.exp(-v)),
    tanh: Math.tanh,
  };
  for (const [name, act] of Object.entries(reference)) {
    const config = parseGPT2Config({
      n_embd: d,
      n_inner: inner,
      n_head: 2,
      activation_function: name,
    });
    const model = GPT2LMHeadModel.random({ ...config, vocabSize: 5, nLayer: 1 }, { seed: 3 });
    const mlp = (model.transformer.h.at(0) as tq.GPT2Block).mlp;
    const sd = mlp.stateDict();
    const [w1, b1, w2, b2] = ["c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"].map(
      (k) => floats(sd[k]),
    );
    const xs = floats(x);
    const want = new Float64Array(3 * d);
    for (let r = 0; r < 3; r++) {
      const h = Array.from({ length: inner }, (_, j) => {
        let s = b1[j];
        for (let k = 0; k < d; k++) s += xs[r * d + k] * w1[j * d + k];
        return act(s);
      });
      for (let o = 0; o < d; o++) {
        let s = b2[o];
        for (let j = 0; j < inner; j++) s += h[j] * w2[o * inner + j];
        want[r * d + o] = s;
      }
    }
    const got = floats(mlp.forward(x));
    assert.ok(maxAbsDiff(got, want) <= 1e-5, `${name}: max |diff| ${maxAbsDiff(got, want)}`);
  }
});

/** erf to ~1e-7 (Abramowitz–Stegun 7.1.26 is too coarse; a series / continued fraction). */
function erf(x: number): number {
  const t = Math.abs(x);
  if (t < 3) {
    // Maclaurin series: converges fast enough below 3 in float64.
    let term = t, sum = t;
    for (let n = 1; n < 80; n++) {
      term *= -t * t / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  return Math.sign(x) * (1 - Math.exp(-t * t) / (t * Math.sqrt(Math.PI)) * (1 - 1 / (2 * t * t)));
}

// ---------------------------------------------------------------------------------------
// Checkpoint directories: sharded, broken

/** Writes a checkpoint directory with the tiny model's config and the given tensors. */
function writeCheckpoint(
  tensors: Record<string, Tensor>,
  shards?: Record<string, string[]>,
): string {
  const dir = Deno.makeTempDirSync({ prefix: "tensorq-gpt2-" });
  Deno.copyFileSync(`${MODEL_DIR}config.json`, `${dir}/config.json`);
  if (!shards) {
    saveSafetensors(`${dir}/model.safetensors`, tensors, { format: "pt" });
    return dir;
  }
  const weightMap: Record<string, string> = {};
  for (const [file, names] of Object.entries(shards)) {
    const part = Object.fromEntries(names.filter((n) => n in tensors).map((n) => [n, tensors[n]]));
    saveSafetensors(`${dir}/${file}`, part, { format: "pt" });
    for (const n of names) weightMap[n] = file;
  }
  Deno.writeTextFileSync(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
  );
  return dir;
}

function tinyTensors(): Record<string, Tensor> {
  using f = loadSafetensors(`${MODEL_DIR}model.safetensors`);
  return f.toRecord();
}

function twoShards(names: string[]): Record<string, string[]> {
  const half = Math.ceil(names.length / 2);
  return {
    "model-00001-of-00002.safetensors": names.slice(0, half),
    "model-00002-of-00002.safetensors": names.slice(half),
  };
}

sharedTest(haveShared, "a sharded checkpoint loads and gives identical logits", () => {
  const tensors = tinyTensors();
  const dir = writeCheckpoint(tensors, twoShards(Object.keys(tensors)));
  try {
    using ckpt = loadHfCheckpoint(dir);
    assert.ok(ckpt instanceof HfCheckpoint && ckpt.sharded);
    assert.equal(ckpt.shards.length, 2);
    assert.deepEqual([...ckpt.names].sort(), Object.keys(tensors).sort());
    assert.equal(ckpt.shardOf("transformer.ln_f.weight"), "model-00002-of-00002.safetensors");
    assert.deepEqual(ckpt.info("transformer.wte.weight"), { shape: [256, 256], dtype: "float32" });
    assertTqError(() => ckpt.tensor("transformer.h.9.ln_1.weight"), {
      op: "loadHfCheckpoint",
      kind: "io",
      includes: ["'transformer.h.9.ln_1.weight'", "weight_map"],
    });

    const sharded = GPT2LMHeadModel.fromPretrained(dir);
    const ids = slice(fullForward().inputIds, [[0, 2], [0, 64]]);
    const want = floats(tinyModel().forward(ids));
    assert.equal(maxAbsDiff(floats(sharded.forward(ids)), want), 0);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

sharedTest(
  haveModel,
  "checkpoint forms: a tied pair saved as lm_head.weight; '..' in a name",
  () => {
    const { ["transformer.wte.weight"]: wte, ...rest } = tinyTensors();
    const ids = tensor(Int32Array.from([72, 101, 108, 108, 111]), { shape: [1, 5] });
    const want = floats(tinyModel().forward(ids));
    // safetensors' save_model keeps one name of tied tensors: the head's, alphabetically first.
    const dirs = [writeCheckpoint({ ...rest, "lm_head.weight": wte })];
    // A shard name with ".." that is no path segment of its own.
    const all = tinyTensors();
    dirs.push(writeCheckpoint(all, { "model..part1.safetensors": Object.keys(all) }));
    try {
      for (const dir of dirs) {
        assert.equal(maxAbsDiff(floats(GPT2LMHeadModel.fromPretrained(dir).forward(ids)), want), 0);
      }
      // A closed checkpoint does not reopen its shards.
      const ckpt = loadHfCheckpoint(dirs[1]);
      assert.deepEqual(ckpt.tensor("transformer.ln_f.bias").shape, [256]);
      ckpt.close();
      assertTqError(() => ckpt.tensor("transformer.ln_f.bias"), {
        op: "loadHfCheckpoint",
        kind: "state",
        includes: ["is closed", "a read after close()"],
        line: thisLine() - 4,
      });
    } finally {
      for (const dir of dirs) Deno.removeSync(dir, { recursive: true });
    }
  },
);

sharedTest(haveModel, "broken checkpoints give errors naming the tensor or file", () => {
  const tensors = tinyTensors();
  const dirs: string[] = [];
  try {
    // A missing tensor.
    const { ["transformer.h.1.mlp.c_fc.weight"]: _, ...withoutOne } = tensors;
    dirs.push(writeCheckpoint(withoutOne));
    assertTqError(() => GPT2LMHeadModel.fromPretrained(dirs.at(-1)!), {
      op: LOAD_OP,
      kind: "io",
      includes: ["missing tensors: 'transformer.h.1.mlp.c_fc.weight'"],
      line: thisLine() - 4,
    });
    // A tensor of the wrong shape.
    dirs.push(
      writeCheckpoint({ ...tensors, "transformer.ln_f.weight": tensor(new Float32Array(128)) }),
    );
    assertTqError(() => GPT2LMHeadModel.fromPretrained(dirs.at(-1)!), {
      op: LOAD_OP,
      kind: "shape",
      includes: ["'transformer.ln_f.weight': expected [256], got [128]"],
    });
    // A Conv1D weight stored as [out, in] instead of HF's [in, out].
    const c = tensors["transformer.h.0.attn.c_attn.weight"];
    dirs.push(writeCheckpoint({
      ...tensors,
      "transformer.h.0.attn.c_attn.weight": c.transpose(0, 1).evaluate(),
    }));
    assertTqError(() => GPT2LMHeadModel.fromPretrained(dirs.at(-1)!), {
      op: LOAD_OP,
      includes: ["'transformer.h.0.attn.c_attn.weight': expected [256, 768], got [768, 256]"],
    });
    // An unexpected tensor; old-style causal-mask buffers are skipped silently.
    dirs.push(writeCheckpoint({
      ...tensors,
      "transformer.h.0.attn.bias": tensor(new Float32Array(4), { shape: [1, 1, 2, 2] }),
      "transformer.h.0.extra.weight": tensor(new Float32Array(3)),
    }));
    assertTqError(() => GPT2LMHeadModel.fromPretrained(dirs.at(-1)!), {
      op: LOAD_OP,
      includes: ["unexpected tensors: 'transformer.h.0.extra.weight'"],
    });
    // A sharded index naming a tensor its shard lacks.
    const names = Object.keys(tensors);
    const shards = twoShards(names);
    shards["model-00002-of-00002.safetensors"].push("transformer.h.0.ln_1.weight");
    dirs.push(writeCheckpoint(
      Object.fromEntries(
        names.filter((n) => n !== "transformer.h.0.ln_1.weight").map((n) => [
          n,
          tensors[n],
        ]),
      ),
      {
        "model-00001-of-00002.safetensors": shards["model-00001-of-00002.safetensors"].filter(
          (n) => n !== "transformer.h.0.ln_1.weight",
        ),
        "model-00002-of-00002.safetensors": shards["model-00002-of-00002.safetensors"],
      },
    ));
    assertTqError(() => GPT2LMHeadModel.fromPretrained(dirs.at(-1)!), {
      op: "loadHfCheckpoint",
      kind: "io",
      includes: ["'transformer.h.0.ln_1.weight'", "model-00002-of-00002.safetensors"],
    });
    // A shard file that does not exist.
    const dir = writeCheckpoint(tensors, twoShards(names));
    dirs.push(dir);
    Deno.removeSync(`${dir}/model-00001-of-00002.safetensors`);
    assertTqError(() => loadHfCheckpoint(dir), {
      op: "loadHfCheckpoint",
      kind: "io",
      includes: ["missing shard", "model-00001-of-00002.safetensors", `'${names[0]}'`],
    });
    // No weights, no config.
    Deno.removeSync(`${dir}/model.safetensors.index.json`);
    assertTqError(() => loadHfCheckpoint(dir), {
      op: "loadHfCheckpoint",
      includes: ["model.safetensors or model.safetensors.index.json"],
    });
    Deno.removeSync(`${dir}/config.json`);
    assertTqError(() => GPT2LMHeadModel.fromPretrained(dir), {
      op: "loadHfCheckpoint",
      kind: "io",
      includes: ["missing config.json"],
    });
  } finally {
    for (const d of dirs) Deno.removeSync(d, { recursive: true });
  }
});

sharedTest(
  haveShared,
  "checkpoints without the transformer. prefix (original gpt2 files) load",
  () => {
    const tensors = tinyTensors();
    const renamed = Object.fromEntries(
      Object.entries(tensors).map(([k, v]) => [k.replace(/^transformer\./, ""), v]),
    );
    const dir = writeCheckpoint(renamed);
    // Without wte.weight the others still map: only the one tensor is missing.
    const { ["wte.weight"]: _, ...withoutWte } = renamed;
    const broken = writeCheckpoint(withoutWte);
    try {
      const m = GPT2LMHeadModel.fromPretrained(dir);
      const ids = slice(fullForward().inputIds, [[0, 1], [0, 32]]);
      assert.equal(maxAbsDiff(floats(m.forward(ids)), floats(tinyModel().forward(ids))), 0);
      const error = assertTqError(() => GPT2LMHeadModel.fromPretrained(broken), {
        op: LOAD_OP,
        kind: "io",
        includes: ["missing tensors: 'transformer.wte.weight'"],
      });
      assert.ok(!error.message.includes("unexpected"), error.message);
    } finally {
      Deno.removeSync(dir, { recursive: true });
      Deno.removeSync(broken, { recursive: true });
    }
  },
);

Deno.test("SmoothQuant on GPT-2's norm → Linear pairs keeps the float forward", () => {
  const model = tq.GPT2LMHeadModel.random({
    nLayer: 2,
    nHead: 2,
    nEmbd: 32,
    vocabSize: 40,
    nPositions: 16,
  }, { seed: 3 });
  const ids = tq.tensor([[1, 5, 9, 2, 7, 3]], { dtype: "int32" });
  const before = model.forward(ids).dataSync() as Float32Array;
  const calib = tq.calibrate(model, [ids], (m, b) => void m.forward(b).evaluate(), {
    perChannel: true,
  });
  const pairs = tq.gpt2SmoothQuantPairs(model.config);
  assert.deepEqual(pairs[1], {
    norm: "transformer.h.0.ln_2",
    linears: ["transformer.h.0.mlp.c_fc"],
  });
  assert.equal(pairs.length, 4);
  tq.smoothQuant(model, calib, { alpha: 0.5, pairs });
  const after = model.forward(ids).dataSync() as Float32Array;
  let worst = 0;
  for (let i = 0; i < before.length; i++) worst = Math.max(worst, Math.abs(after[i] - before[i]));
  assert.ok(worst < 1e-4, `smoothing changed the float logits by ${worst}`);
});

Deno.test("GPT-2 arguments: bad configs, options, inputs and caches are named errors", () => {
  const small = { vocabSize: 16, nPositions: 8, nEmbd: 8, nLayer: 1, nHead: 2 };
  const config = gpt2Config(small);
  const m = GPT2LMHeadModel.random(small);
  const ids = tensor([[1, 2, 3]], { dtype: "int32" });
  const x = tq.randn([1, 3, 8], { seed: 1 });
  // deno-lint-ignore no-explicit-any
  const bad = (v: unknown) => v as any;
  const cases: [() => unknown, string, string, string[]][] = [
    // A KVCache where the options go was silently ignored.
    [() => m.forward(ids, bad(m.createCache())), "GPT2LMHeadModel.forward", "argument", [
      "forward(ids, { cache })",
      "got a KVCache",
    ]],
    [() => m.forward(ids, bad({ cahce: 1 })), "GPT2LMHeadModel.forward", "argument", [
      "'options.cahce'",
    ]],
    [() => m.forward(ids, { cache: bad(0) }), "GPT2LMHeadModel.forward", "argument", [
      "'options.cache'",
      "got 0",
    ]],
    [() => m.forward(ids, { cache: bad("") }), "GPT2LMHeadModel.forward", "argument", ['got ""']],
    [() => m.forward(bad(7)), "GPT2LMHeadModel.forward", "argument", ["'ids'", "Tensor"]],
    // Non-object configs: not the default 124M model, not a TypeError.
    ...[NaN, "str", true, 0, [], ids, null].flatMap((v) =>
      [
        [() => new GPT2LMHeadModel(bad(v)), "GPT2LMHeadModel", "argument", ["'config'"]],
        [() => GPT2LMHeadModel.random(bad(v)), "GPT2LMHeadModel.random", "argument", ["'config'"]],
      ] as [() => unknown, string, string, string[]][]
    ),
    [() => gpt2Config(bad("str")), "GPT2Config", "argument", ["'fields'", 'got "str"']],
    [() => gpt2Config(bad(null)), "GPT2Config", "argument", ["got null"]],
    [() => gpt2Config(bad({ nLayers: 2 })), "GPT2Config", "argument", ['"nLayers"']],
    // BigInt and Symbol values are described, not a serialization TypeError.
    [() => gpt2Config({ nEmbd: bad(10n) }), "GPT2Config", "argument", ["10n (a bigint)"]],
    [() => gpt2Config({ activation: bad(Symbol("a")) }), "GPT2Config", "unsupported", [
      "Symbol(a)",
    ]],
    [() => parseGPT2Config({ n_head: 2n }), "GPT2Config", "argument", ["'n_head'", "2n"]],
    [() => new tq.GPT2Attention(bad(undefined)), "GPT2Attention", "argument", ["'config'"]],
    [() => new tq.GPT2MLP(bad(null)), "GPT2MLP", "argument", ["'config'"]],
    [() => new tq.GPT2Block(bad(3)), "GPT2Block", "argument", ["'config'"]],
    [() => new tq.GPT2Model(bad("x")), "GPT2Model", "argument", ["'config'"]],
    [() => tq.gpt2SmoothQuantPairs(bad(7)), "gpt2SmoothQuantPairs", "argument", ["'config'"]],
    [
      () => new tq.GPT2Model(config, bad(null)).forward(ids, bad(3)),
      "GPT2Model.forward",
      "argument",
      [
        "'cache'",
        "got 3",
      ],
    ],
    [() => new tq.GPT2Block(config, bad("x")), "GPT2Block", "argument", ["'options'"]],
    [() => new tq.GPT2MLP(config, bad({ layerIdx: 0 })), "GPT2MLP", "argument", ['"layerIdx"']],
    [() => new GPT2LMHeadModel(config, bad(NaN)), "GPT2LMHeadModel", "argument", ["'options'"]],
    [() => new tq.GPT2Attention(config, { layerIdx: 1.5 }), "GPT2Attention", "argument", [
      "'options.layerIdx'",
      "[0, 1)",
    ]],
    [() => new tq.GPT2Attention(config, { layerIdx: 1 }), "GPT2Attention", "argument", ["got 1"]],
    // Inputs and pasts checked before use.
    [() => new tq.GPT2Attention(config).forward(bad("str")), "GPT2Attention.forward", "argument", [
      "'x'",
    ]],
    [
      () => new tq.GPT2Attention(config).forward(tq.randn([3, 8])),
      "GPT2Attention.forward",
      "shape",
      [
        "[B, T, 8]",
      ],
    ],
    [() => new tq.GPT2Attention(config).forward(x, bad(1.5)), "GPT2Attention.forward", "argument", [
      "'past'",
      "got 1.5",
    ]],
    [() => new tq.GPT2Block(config).forward(x, bad(null)), "GPT2Attention.forward", "argument", [
      "'past'",
    ]],
    [
      () => new tq.GPT2Attention(config).forward(x, { key: tq.randn([1, 2, 1, 4]) }),
      "GPT2Attention.forward",
      "argument",
      ["'past.value'"],
    ],
    [
      () => new tq.GPT2Attention(config).forward(x, bad({ key: 1, value: 2 })),
      "GPT2Attention.forward",
      "argument",
      [
        "'past.key'",
      ],
    ],
    [() => new tq.GPT2Model(config).forward(bad([1, 2])), "GPT2Model.forward", "argument", [
      "'ids'",
    ]],
    [
      () => new tq.GPT2Model(config).forward(tq.tensor([1], { dtype: "int32" })),
      "GPT2Model.forward",
      "shape",
      [
        "[B, T]",
      ],
    ],
    [() => m.transformer.block(1), "GPT2Model.block", "argument", ["[-1, 1)", "got 1"]],
    [() => m.transformer.block(-2), "GPT2Model.block", "argument", ["[-1, 1)", "got -2"]],
    [() => m.transformer.block(0.5), "GPT2Model.block", "argument", ["got 0.5"]],
    [() => m.transformer.block(bad(Symbol("i"))), "GPT2Model.block", "argument", ["Symbol(i)"]],
    // Options of the static helpers.
    [
      () => GPT2LMHeadModel.random(small, bad({ seed: "x" })),
      "GPT2LMHeadModel.random",
      "argument",
      [
        "'options.seed'",
        'got "x"',
      ],
    ],
    [
      () => GPT2LMHeadModel.random(small, bad({ seed: 1.5 })),
      "GPT2LMHeadModel.random",
      "argument",
      [
        "safe integer",
      ],
    ],
    [() => GPT2LMHeadModel.random(small, bad({ sed: 1 })), "GPT2LMHeadModel.random", "argument", [
      '"sed"',
    ]],
    [
      () => GPT2LMHeadModel.random(small, bad({ device: "gpu" })),
      "GPT2LMHeadModel.random",
      "device",
      [
        '"gpu"',
      ],
    ],
    [() => GPT2LMHeadModel.fromPretrained(MODEL_DIR, bad("cpu")), LOAD_OP, "argument", [
      "'options'",
    ]],
    [() => GPT2LMHeadModel.fromPretrained(MODEL_DIR, bad({ dev: 1 })), LOAD_OP, "argument", [
      '"dev"',
    ]],
    [() => generate(m, [1], bad(undefined)), "generate", "argument", [
      "'maxNewTokens'",
      "undefined",
    ]],
    [() => generate(m, [1], bad(3)), "generate", "argument", ["'options'"]],
    [() => generate(m, [1], bad({ maxNewTokens: 1, maxTokens: 2 })), "generate", "argument", [
      '"maxTokens"',
    ]],
    [() => generate(m, [1], { maxNewTokens: 1, cache: bad("false") }), "generate", "argument", [
      "'cache'",
    ]],
    [() => generate(m, [1], { maxNewTokens: 1, compiled: bad(0) }), "generate", "argument", [
      "'compiled'",
    ]],
    [() => generate(m, [1], { maxNewTokens: 1, strategy: bad(1n) }), "generate", "argument", [
      "1n",
    ]],
    [() => generate(m, [1], { maxNewTokens: bad(Symbol("n")) }), "generate", "argument", [
      "Symbol(n)",
    ]],
    [
      () => lossFromLogits(tq.randn([1, 3, 16]), ids, bad({ shift: 0 })),
      "lossFromLogits",
      "argument",
      [
        "'shift'",
      ],
    ],
    [() => lossFromLogits(tq.randn([1, 3, 16]), ids, bad("x")), "lossFromLogits", "argument", [
      "'options'",
    ]],
    [() => new KVCache(bad(2n)), "KVCache", "argument", ["2n"]],
  ];
  for (const [fn, op, kind, includes] of cases) assertTqError(fn, { op, kind, includes });
  // The documented forms still work: null options, a null cache, unshifted loss.
  assert.deepEqual(
    m.forward(ids, { cache: bad(null) }).dataSync(),
    m.forward(ids, bad(null)).dataSync(),
  );
  assert.ok(Number.isFinite(lossFromLogits(m.forward(ids), ids, bad(null))));
  assert.equal(generate(m, [1], { maxNewTokens: 1, cache: false, compiled: false }).length, 1);
  assert.equal(tq.gpt2SmoothQuantPairs(config).length, 2);
});

Deno.test("GPT2Model: block(-1) is the last block; a null cache is no cache; compile takes bound forwards", () => {
  const m = GPT2LMHeadModel.random(
    { vocabSize: 32, nPositions: 16, nEmbd: 8, nLayer: 2, nHead: 2 },
    {
      seed: 3,
    },
  );
  assert.equal(m.transformer.block(-1), m.transformer.block(1));
  const ids = tensor(Int32Array.from([1, 2, 3, 4]), { shape: [1, 4] });
  const plain = m.transformer.forward(ids).dataSync();
  assert.deepEqual(m.transformer.forward(ids, null as unknown as undefined).dataSync(), plain);
  // forward(ids, cache?) declares two parameters: compile with one input still traces it.
  const exe = tq.compile(m.transformer.forward.bind(m.transformer), {
    args: [tq.inputInfo([1, 4], "int32")],
  });
  assert.deepEqual((exe(ids) as Tensor).dataSync(), plain);
  exe.dispose();
});
