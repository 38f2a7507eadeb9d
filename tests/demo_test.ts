/**
 * The GPT-2 demo (examples/gpt2/demo.ts) run as a subprocess with the permissions of
 * `deno task demo`: the bundled byte-level model end to end, a random model with a GPT-2 BPE
 * vocabulary, the refusal of a model it cannot tokenize, and usage errors. Also the BPE
 * tokenizer (on hand-computed cases and on Hugging Face's ids for a trained vocabulary) and the
 * report helpers on hand-computed cases.
 * @module
 */
import assert from "node:assert/strict";
import { GPT2LMHeadModel, lossFromLogits, saveSafetensors, type Tensor, tensor } from "../mod.ts";
import { bpeTokenizer, generationSummary, ModelFileError } from "../examples/gpt2/demo.ts";
import { collapseBins, fractionAbove, renderCalibrationReport } from "../examples/gpt2/report.ts";

const DEMO = new URL("../examples/gpt2/demo.ts", import.meta.url).pathname;
const ASSETS = new URL("../examples/gpt2/assets/", import.meta.url).pathname;
/** The permissions of the `demo` task in deno.json. */
const PERMISSIONS = ["--allow-read", "--allow-env", "--allow-ffi", "--allow-write"];
const MODES = ["float32", "w8a8", "w8", "w4", "fp8"];

interface DemoRun {
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

async function runDemo(args: string[]): Promise<DemoRun> {
  const start = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...PERMISSIONS, DEMO, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder();
  return {
    code: out.code,
    stdout: text.decode(out.stdout),
    stderr: text.decode(out.stderr),
    seconds: (performance.now() - start) / 1000,
  };
}

interface TableRow {
  loss: number;
  perplexity: number;
  maxDiff: number;
  meanDiff: number;
  tokensPerSecond: number;
}

/** The rows of the demo's results table, by mode. */
function parseTable(stdout: string): Map<string, TableRow> {
  const rows = new Map<string, TableRow>();
  const re = /^(float32|w8a8|w8|w4|fp8)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$/gm;
  for (const m of stdout.matchAll(re)) {
    const [loss, perplexity, maxDiff, meanDiff, tokensPerSecond] = m.slice(2).map(Number);
    rows.set(m[1], { loss, perplexity, maxDiff, meanDiff, tokensPerSecond });
  }
  return rows;
}

function assertTable(run: DemoRun): Map<string, TableRow> {
  const rows = parseTable(run.stdout);
  assert.deepEqual([...rows.keys()], MODES, run.stdout);
  for (const [mode, r] of rows) {
    assert.ok(Number.isFinite(r.loss) && r.loss > 0, `${mode} loss ${r.loss}`);
    assert.ok(Math.abs(r.perplexity - Math.exp(r.loss)) <= 2e-3 * r.perplexity, mode);
    assert.ok(r.tokensPerSecond > 0, `${mode} tokens/s`);
    if (mode === "float32") assert.equal(r.maxDiff, 0);
    else assert.ok(r.maxDiff > 0 && r.meanDiff > 0 && r.meanDiff <= r.maxDiff, mode);
  }
  return rows;
}

Deno.test("demo: bundled model, small settings: 5 modes, float32 loss, report with SVG", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tensorq-demo-" });
  try {
    const report = `${dir}/report.html`;
    const run = await runDemo([
      "--eval-windows",
      "1",
      "--calib-batches",
      "1",
      "--window",
      "64",
      "--tokens",
      "16",
      "--report",
      report,
    ]);
    console.log(`demo subprocess: ${run.seconds.toFixed(1)} s`);
    assert.equal(run.code, 0, `exit ${run.code}\n${run.stdout}\n${run.stderr}`);
    const rows = assertTable(run);

    // The float32 row is the loss of the first 64 held-out bytes under the bundled model.
    const held = Deno.readFileSync(`${ASSETS}heldout_slice.txt`).subarray(0, 64);
    const ids = tensor(Int32Array.from(held), { shape: [1, 64] });
    const model = GPT2LMHeadModel.fromPretrained(`${ASSETS}tiny-shakespeare-gpt2`);
    const expected = lossFromLogits(model.forward(ids), ids);
    const got = rows.get("float32")!.loss;
    assert.ok(Math.abs(got - expected) <= 1e-3, `float32 loss ${got}, expected ${expected}`);
    // A trained byte model: well below uniform (ln 256 = 5.5 nats).
    assert.ok(expected > 0.3 && expected < 2.5, `loss ${expected}`);
    // int8 weights barely move the loss.
    assert.ok(Math.abs(rows.get("w8")!.loss - got) < 0.05);

    assert.match(run.stdout, /sample from (w8a8|w8|w4|fp8)/);
    assert.match(
      run.stdout,
      /\(16 tokens in [0-9.]+ s: the first after [0-9.]+ s \(the prompt and compiling the decoder\), then ([0-9.]+ tokens\/s|too fast to time) with the KV cache\)/,
    );
    const html = Deno.readTextFileSync(report);
    assert.ok(html.includes("<svg"), "report has SVG");
    assert.equal(html.match(/<svg /g)?.length, 17, "one histogram per Linear");
    assert.ok(html.includes("transformer.h.3.mlp.c_proj") && html.includes("amax"));
    assert.ok(!/<script|https?:\/\/(?!www\.w3\.org)/.test(html), "self-contained");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("demo: --smoothquant adds smoothed w8a8 and fp8 rows with losses near the others", async () => {
  const run = await runDemo([
    "--eval-windows",
    "1",
    "--calib-batches",
    "1",
    "--window",
    "64",
    "--tokens",
    "0",
    "--smoothquant",
    "0.5",
    "--report",
    await Deno.makeTempFile({ suffix: ".html" }),
  ]);
  assert.equal(run.code, 0, `exit ${run.code}\n${run.stdout}\n${run.stderr}`);
  const rows = new Map<string, number>();
  for (const m of run.stdout.matchAll(/^(\S+)\s+(\d+\.\d+)\s+\d/gm)) rows.set(m[1], Number(m[2]));
  for (const mode of ["w8a8", "fp8"]) {
    const plain = rows.get(mode)!, smoothed = rows.get(`${mode}+sq0.5`)!;
    assert.ok(Number.isFinite(smoothed), `${mode}+sq0.5 row missing:\n${run.stdout}`);
    // Smoothing is exact in float; after quantization the loss stays close to the plain mode's.
    assert.ok(Math.abs(smoothed - plain) < 0.05, `${mode}: ${plain} vs smoothed ${smoothed}`);
  }
  const bad = await runDemo(["--smoothquant", "2"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr + bad.stdout, /--smoothquant must be an alpha in \[0, 1\]/);
});

// ---------------------------------------------------------------------------------------
// A non-byte-level model: a random GPT-2 with a small BPE vocabulary.

/** GPT-2's byte → character map (duplicated here so the test does not trust the demo's). */
function byteChars(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const chars: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    chars[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + extra++);
  }
  return chars;
}

const MERGES = ["h e", "Ġ t", "Ġt he", "t he"];

/** A random 1-layer GPT-2 of vocabulary 300 in HF layout; with BPE files when `withBpe`. */
function writeBpeModel(dir: string, withBpe: boolean): void {
  Deno.mkdirSync(dir, { recursive: true });
  const config = { vocabSize: 300, nPositions: 64, nEmbd: 128, nLayer: 1, nHead: 2 };
  const model = GPT2LMHeadModel.random(config, { seed: 5 });
  const tensors: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(model.stateDict())) {
    if (name === "lm_head.weight") continue; // tied
    tensors[name] = /\.(c_attn|c_proj|c_fc)\.weight$/.test(name) ? t.transpose(0, 1) : t;
  }
  saveSafetensors(`${dir}/model.safetensors`, tensors);
  Deno.writeTextFileSync(
    `${dir}/config.json`,
    JSON.stringify({
      model_type: "gpt2",
      vocab_size: 300,
      n_positions: 64,
      n_embd: 128,
      n_layer: 1,
      n_head: 2,
    }),
  );
  if (!withBpe) return;
  const vocab: Record<string, number> = {};
  byteChars().forEach((c, b) => (vocab[c] = b));
  ["he", "Ġt", "Ġthe", "the"].forEach((t, i) => (vocab[t] = 256 + i));
  Deno.writeTextFileSync(`${dir}/vocab.json`, JSON.stringify(vocab));
  Deno.writeTextFileSync(`${dir}/merges.txt`, `#version: 0.2\n${MERGES.join("\n")}\n`);
}

Deno.test("bpeTokenizer: hand-computed merges, byte fallback and round trip", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tensorq-bpe-" });
  try {
    writeBpeModel(dir, true);
    const tok = bpeTokenizer(dir, 300);
    // "the" → t,h,e → t,he → the; " the" → Ġ,t,he → Ġt,he → Ġthe; " then" → Ġthe, n.
    assert.deepEqual(tok.encode("the the then"), [259, 258, 258, 110]);
    // Every occurrence of the best pair merges in one step.
    assert.deepEqual(tok.encode("hehe"), [256, 256]);
    // Contractions split off; bytes outside the merges are their own tokens.
    assert.deepEqual(tok.encode("he's"), [256, 39, 115]);
    const text = "Thé  then\n\nhe's — ok";
    const ids = tok.encode(text);
    const bytes = ids.flatMap((id) => Array.from(tok.tokenBytes(id)));
    assert.equal(new TextDecoder().decode(Uint8Array.from(bytes)), text);
    assert.equal(tok.tokenBytes(299).length, 0, "an id without a token decodes to nothing");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bpeTokenizer: unusable vocab.json or merges.txt are named in one-line errors", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tensorq-bpe-bad-" });
  try {
    writeBpeModel(dir, true);
    const vocab = JSON.parse(Deno.readTextFileSync(`${dir}/vocab.json`));
    const refuses = (pattern: RegExp) =>
      assert.throws(
        () => bpeTokenizer(dir, 300).encode("Juliet then"),
        (e) => e instanceof ModelFileError && pattern.test(e.message),
      );
    Deno.writeTextFileSync(`${dir}/vocab.json`, '{"a": 1,');
    refuses(/vocab\.json is not valid JSON/);
    Deno.writeTextFileSync(`${dir}/vocab.json`, "[1, 2]");
    refuses(/vocab\.json must hold an object of token → id/);
    Deno.writeTextFileSync(`${dir}/vocab.json`, JSON.stringify({ ...vocab, "Ġthen": 300 }));
    refuses(/token "Ġthen" the id 300: ids must be integers in \[0, 300\)/);
    Deno.writeTextFileSync(`${dir}/vocab.json`, JSON.stringify({ ...vocab, "Ġthen": "7" }));
    refuses(/the id "7"/);
    // A byte the text needs but the vocabulary lacks.
    const { J: _, ...withoutJ } = vocab;
    Deno.writeTextFileSync(`${dir}/vocab.json`, JSON.stringify(withoutJ));
    refuses(/vocab\.json has no token "J", which the text needs/);
    Deno.writeTextFileSync(`${dir}/vocab.json`, JSON.stringify(vocab));
    Deno.writeTextFileSync(`${dir}/merges.txt`, "#version: 0.2\nh e\nthe\n");
    refuses(/merges\.txt:3: a merge is two tokens separated by one space, got "the"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bpeTokenizer: the ids of Hugging Face tokenizers on a trained vocabulary", () => {
  // tests/fixtures/bpe: 1000 tokens trained on the demo's training slice, and the ids that
  // Hugging Face tokenizers gives for held-out text and strings that reach every branch of the
  // pre-tokenization (tests/transformers/make_bpe_vectors.py).
  const dir = new URL("fixtures/bpe/", import.meta.url).pathname;
  const { texts, ids } = JSON.parse(Deno.readTextFileSync(`${dir}vectors.json`)) as {
    texts: string[];
    ids: number[][];
  };
  assert.equal(texts.length, ids.length);
  assert.ok(texts.length >= 20, "the vector file holds its texts");
  const tok = bpeTokenizer(dir, 1000);
  const decoder = new TextDecoder();
  for (let i = 0; i < texts.length; i++) {
    assert.deepEqual(tok.encode(texts[i]), ids[i], `text ${i}: ${JSON.stringify(texts[i])}`);
    const bytes = ids[i].flatMap((id) => Array.from(tok.tokenBytes(id)));
    assert.equal(decoder.decode(Uint8Array.from(bytes)), texts[i], `text ${i} round trip`);
  }
});

Deno.test("demo: a BPE model runs end to end; without vocab.json it exits with code 2", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tensorq-demo-bpe-" });
  try {
    writeBpeModel(`${dir}/bpe`, true);
    const args = (model: string) => [
      "--model",
      model,
      "--eval-windows",
      "1",
      "--calib-batches",
      "1",
      "--window",
      "32",
      "--tokens",
      "8",
      "--greedy",
      "--report",
      `${dir}/report.html`,
    ];
    const run = await runDemo(args(`${dir}/bpe`));
    assert.equal(run.code, 0, `exit ${run.code}\n${run.stdout}\n${run.stderr}`);
    assert.match(run.stdout, /GPT-2 byte-level BPE \(260 tokens, 4 merges\)/);
    const rows = assertTable(run);
    // Random weights: near the uniform loss ln 300.
    assert.ok(Math.abs(rows.get("float32")!.loss - Math.log(300)) < 0.5);
    assert.match(run.stdout, /greedy/);

    writeBpeModel(`${dir}/plain`, false);
    const refused = await runDemo(args(`${dir}/plain`));
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /vocabulary of 300 tokens and no vocab\.json\/merges\.txt/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("demo: usage errors exit with code 2 and name the option", async () => {
  const bad = await runDemo(["--device", "tpu"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--device must be cpu, cuda or cuda:N, got "tpu"/);
  assert.match(bad.stderr, /usage: deno task demo/);
  const window = await runDemo(["--window", "1000", "--tokens", "0"]);
  assert.equal(window.code, 2);
  assert.match(window.stderr, /--window 1000 exceeds the model's 256/);
  // A seed beyond a safe integer, checked before any work.
  const seed = await runDemo(["--seed", "1e20"]);
  assert.equal(seed.code, 2);
  assert.match(seed.stderr, /--seed must be an integer >= 0, got "1e20"/);
  assert.doesNotMatch(seed.stdout, /calibrat/i);
  const unknown = await runDemo(["--bogus"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /bogus/);
  // Checked before any work: a report directory that does not exist, an empty prompt.
  const report = await runDemo(["--report", "/nonexistent-dir/r.html"]);
  assert.equal(report.code, 2);
  assert.match(report.stderr, /--report: the directory \/nonexistent-dir does not exist/);
  const prompt = await runDemo(["--prompt", "", "--eval-windows", "1", "--calib-batches", "1"]);
  assert.equal(prompt.code, 2);
  assert.match(prompt.stderr, /--prompt must not be empty/);
  assert.doesNotMatch(prompt.stdout, /calibrat/i, "rejected before calibrating");
});

Deno.test("generationSummary: the first token's wait apart from the rate of the rest", () => {
  // 201 tokens: the first 2 s after the start, the other 200 over the next 0.5 s.
  assert.equal(
    generationSummary(201, 1000, 3000, 3500),
    "201 tokens in 2.50 s: the first after 2.00 s (the prompt and compiling the decoder), " +
      "then 400.0 tokens/s with the KV cache",
  );
  assert.equal(generationSummary(1, 0, 250, 250), "1 token in 0.25 s with the KV cache");
  assert.equal(generationSummary(0, 0, undefined, 10), "0 tokens in 0.01 s with the KV cache");
  assert.match(generationSummary(3, 0, 100, 100), /then too fast to time/);
});

Deno.test("report helpers: collapsed bins, mass above amax, escaped names", () => {
  assert.deepEqual(collapseBins([1, 2, 3, 4, 5, 6, 7, 8], 4), [3, 7, 11, 15]);
  assert.deepEqual(collapseBins([1, 2, 3, 4, 5], 2), [6, 9]);
  // Bins of width 1 over [0, 4]; amax 2.5 cuts bin 2 in half.
  assert.equal(fractionAbove([4, 3, 2, 1], 4, 2.5), (1 + 1) / 10);
  assert.equal(fractionAbove([4, 3, 2, 1], 4, 4), 0);
  const html = renderCalibrationReport(
    [{ name: "a<b>", counts: [5, 0, 0, 1], range: 2, amax: 1.5 }],
    { method: "percentile" },
  );
  assert.ok(html.includes("a&#60;b&#62;") && !html.includes("a<b>"));
  assert.match(html, /amax 1\.5 \(percentile\)/);
  assert.match(html, /16\.6667%/); // the last bin [1.5, 2) holds 1 of 6 values
});
