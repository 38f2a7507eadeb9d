/**
 * `generate` end to end on GPT-2 small (random weights, float16 on CUDA): tokens per second for
 * greedy decoding, top-k sampling and sampling over the whole vocabulary, each timed after one
 * warm-up generation of the same length (which compiles the decoder and plans its step). Also
 * the host's time to choose one token from a 50257-wide logits row: `sampleFrom` against the
 * choice it replaced (sorting a copy of the row to find the top-k threshold), with no GPU.
 *
 *     deno run -A bench/gpt2_generate.ts [--tokens 256] [--prompt 64] [--reps 3] [--top-k 20]
 *         [--out DIR]
 *
 * Prints markdown tables (medians over `--reps` generations); `--out DIR` also writes them to
 * DIR/gpt2_generate.md.
 * @module
 */
import * as tq from "../mod.ts";
import { kthLargest, sampleFrom } from "../lib/models/gpt2.ts";
import { GPT2_SMALL, randomGpt2 } from "./gpt2_model.ts";
import {
  argValue,
  checkCommandLine,
  gpuAvailable,
  gpuUnavailableLine,
  intArg,
  markdownTable,
  percentile,
  randnHost,
  writeOut,
} from "./timing.ts";

const SCRIPT = "gpt2_generate.ts";
checkCommandLine(SCRIPT, Deno.args, { values: ["tokens", "prompt", "reps", "top-k", "out"] });
const OUT = argValue(Deno.args, "out");
const positions = GPT2_SMALL.nPositions!;
const tokens = intArg(SCRIPT, Deno.args, "tokens", 256, 1, positions - 1);
const promptLength = intArg(SCRIPT, Deno.args, "prompt", 64, 1, positions - tokens);
const reps = intArg(SCRIPT, Deno.args, "reps", 3, 1, 100);
const topK = intArg(SCRIPT, Deno.args, "top-k", 20, 1, GPT2_SMALL.vocabSize!);

const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 0.5);

/** The top-k choice before `kthLargest`: the threshold from a sorted copy of the row. */
function sortedChoice(row: Float32Array, k: number, stream: tq.RandomStream): number {
  const threshold = Float64Array.from(row).sort()[row.length - k];
  let mx = -Infinity;
  for (const x of row) if (x >= threshold && x > mx) mx = x;
  const weights = new Float64Array(row.length);
  let total = 0;
  for (let i = 0; i < row.length; i++) {
    if (row[i] >= threshold) total += weights[i] = Math.exp(row[i] - mx);
  }
  let u = stream.uniform() * total;
  for (let i = 0; i < row.length; i++) {
    u -= weights[i];
    if (weights[i] > 0 && u < 0) return i;
  }
  return row.length - 1;
}

// Host: one token's choice from logits-like rows (rotated among 8, so no row stays cached).
const vocab = GPT2_SMALL.vocabSize!;
const rows = Array.from({ length: 8 }, (_, i) => randnHost(vocab, 50 + i, 3));
const hostRows: string[][] = [];
for (
  const [label, choose] of [
    ["sorting a copy (before)", (r: Float32Array, s: tq.RandomStream) => sortedChoice(r, topK, s)],
    [
      "`sampleFrom` (heap of the top k)",
      (r: Float32Array, s: tq.RandomStream) => sampleFrom(r, 1, topK, s),
    ],
  ] as const
) {
  const stream = new tq.RandomStream(7);
  const samples: number[] = [];
  for (let i = 0; i < 200; i++) {
    const t0 = performance.now();
    choose(rows[i % rows.length], stream);
    if (i >= 40) samples.push(performance.now() - t0);
  }
  hostRows.push([label, median(samples).toFixed(3)]);
}
// The two choices keep the same tokens: the threshold is the same value.
for (const r of rows) {
  const threshold = Float64Array.from(r).sort()[vocab - topK];
  if (kthLargest(r, topK) !== threshold) throw new Error("kthLargest disagrees with sorting");
}
let text = `### Choosing a token from ${vocab} logits, top-${topK} (host, ms per token)\n\n` +
  markdownTable(["choice", "ms"], hostRows) + "\n";

if (!gpuAvailable()) {
  text += `\n${gpuUnavailableLine()}: generate() not timed.\n`;
} else {
  const model = randomGpt2(GPT2_SMALL, "float16", "cuda");
  const stream = new tq.RandomStream(11);
  const prompt = Array.from({ length: promptLength }, () => stream.nextUint32() % vocab);
  const strategies: [string, tq.GenerateOptions][] = [
    ["greedy", { maxNewTokens: tokens }],
    [`sample, top-${topK}`, { maxNewTokens: tokens, strategy: "sample", topK, seed: 1 }],
    ["sample, whole vocabulary", { maxNewTokens: tokens, strategy: "sample", seed: 1 }],
  ];
  const genRows: string[][] = [];
  for (const [label, options] of strategies) {
    tq.generate(model, prompt, options); // warm-up: compiles and plans the decoder
    const times: number[] = [];
    let made = 0;
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now();
      made = tq.generate(model, prompt, options).length;
      times.push(performance.now() - t0);
    }
    const ms = median(times);
    genRows.push([label, String(made), ms.toFixed(1), ((made * 1000) / ms).toFixed(0)]);
  }
  text += `\n### generate() on GPT-2 small, float16, CUDA: ${promptLength}-token prompt\n\n` +
    markdownTable(["strategy", "tokens", "wall ms (median)", "tokens/s"], genRows) + "\n";
}
console.log(text);
writeOut(OUT, "gpt2_generate.md", text);
