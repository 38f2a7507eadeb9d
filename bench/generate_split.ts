/**
 * Where a generated token's time goes on the GPU: GPT-2 small (random weights, float16) decoded
 * with the static decoder, each step split into its host-side parts, medians over the tokens
 * of the second of two passes. Two loops:
 * - "row" (sampling, and greedy decoding before the step's argmax was used): ids, the chosen
 *   token uploaded as the next input; step, enqueueing the step (one CUDA graph launch);
 *   wait, the GPU finishing it; fetch, the logits row to the host (`dataSync`, float16 to
 *   float32); choose, the argmax over the row; dispose, releasing the spent state;
 * - "argmax" (greedy `generate`): the step's own argmax stays on the device as the next input;
 *   fetch reads it (4 bytes) and choose reads its logit (a one-element gather) for the NaN
 *   check.
 *
 *     deno run -A bench/generate_split.ts [--tokens 256] [--prompt 64] [--out DIR]
 * @module
 */
import * as tq from "../mod.ts";
import { GPT2_SMALL, randomGpt2 } from "./gpt2_model.ts";
import {
  argValue,
  checkCommandLine,
  intArg,
  markdownTable,
  percentile,
  requireGpu,
  writeOut,
} from "./timing.ts";

const SCRIPT = "generate_split.ts";
checkCommandLine(SCRIPT, Deno.args, { values: ["tokens", "prompt", "out"] });
const OUT = argValue(Deno.args, "out");
const positions = GPT2_SMALL.nPositions!;
const tokens = intArg(SCRIPT, Deno.args, "tokens", 256, 1, positions - 1);
const promptLength = intArg(SCRIPT, Deno.args, "prompt", 64, 1, positions - tokens);
requireGpu(SCRIPT);

const vocab = GPT2_SMALL.vocabSize!;
const model = randomGpt2(GPT2_SMALL, "float16", "cuda");
const maxLength = Math.min(positions, Math.ceil((promptLength + tokens) / 64) * 64);
const decoder = tq.buildStaticDecoder(model, { batch: 1, maxLength });
const prompt = tq.tensor(
  Int32Array.from({ length: promptLength }, (_, i) => (i * 977) % vocab),
  { shape: [1, promptLength], device: "cuda" },
);
const parts = ["ids", "step", "wait", "fetch", "choose", "dispose"] as const;
const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 0.5);
const results: Record<string, Record<string, number>> = {};
for (const loop of ["row", "argmax"] as const) {
  for (let pass = 0; pass < 2; pass++) {
    const first = decoder.prefill(prompt);
    let state = first.state;
    for (const layer of first.kv.layers) [layer.key, layer.value].forEach((t) => t?.dispose());
    first.logits.dispose();
    const times: Record<string, number[]> = Object.fromEntries(parts.map((p) => [p, []]));
    let next = 5;
    for (let i = 0; i < tokens; i++) {
      const t0 = performance.now();
      if (loop === "row" || i === 0) {
        state.ids.dispose();
        state.ids = tq.tensor(Int32Array.of(next), { shape: [1, 1], device: "cuda" });
      }
      const t1 = performance.now();
      const stepped = decoder.step(state);
      const t2 = performance.now();
      tq.cuda.synchronize();
      const t3 = performance.now();
      let t4: number;
      if (loop === "row") {
        const row = stepped.logits.dataSync() as Float32Array;
        t4 = performance.now();
        let best = 0;
        for (let j = 1; j < row.length; j++) if (row[j] > row[best]) best = j;
        next = best;
      } else {
        next = (stepped.state.ids.dataSync() as Int32Array)[0];
        t4 = performance.now();
        const picked = tq.gather(stepped.logits, stepped.state.ids, 2);
        if (Number.isNaN((picked.dataSync() as Float32Array)[0])) throw new Error("NaN logit");
        picked.dispose();
      }
      const t5 = performance.now();
      tq.disposeState(state);
      state = stepped.state;
      stepped.logits.dispose();
      const t6 = performance.now();
      [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5].forEach((t, k) =>
        times[parts[k]].push(t)
      );
    }
    tq.disposeState(state);
    results[loop] = Object.fromEntries(parts.map((p) => [p, median(times[p])]));
  }
}
decoder.dispose();
const sum = (r: Record<string, number>) => parts.reduce((a, p) => a + r[p], 0);
const table = markdownTable(
  ["part", "row: ms per token (median)", "argmax: ms per token (median)"],
  [
    ...parts.map((p) => [p, results.row[p].toFixed(3), results.argmax[p].toFixed(3)]),
    ["sum", sum(results.row).toFixed(3), sum(results.argmax).toFixed(3)],
  ],
);
const text = `### A generated token's parts: GPT-2 small, float16, ${promptLength}-token prompt, ` +
  `${tokens} tokens\n\n${table}\n`;
console.log(text);
writeOut(OUT, "generate_split.md", text);
