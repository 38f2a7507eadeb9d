/**
 * Where an eager GPT-2-small prefill (8 × 512, random float16 weights) spends its time, per
 * mode: building the graph (`model.forward(ids)`, host only), `evaluate()` (tracing, the plan
 * lookup and every launch, host), and the wait for the GPU after it (a synchronize). Quantized
 * modes use quantizeModel with a max calibration on one random batch of 128 tokens, as
 * `bench/gpu_gpt2.ts` does. Medians over `--reps` forwards after three warm-ups.
 *
 *     deno run -A bench/eager_prefill_split.ts [--modes float16,w8a8,fp8,w4] [--reps 20]
 *
 * Add `--cpu-prof` to Deno's flags for a host profile of the same forwards.
 * @module
 */
import * as tq from "../mod.ts";
import { backToFloat, GPT2_SMALL, randomGpt2, randomIds } from "./gpt2_model.ts";
import { argValue, checkCommandLine, fmt, intArg, percentile, requireGpu } from "./timing.ts";

const SCRIPT = "eager_prefill_split.ts";
checkCommandLine(SCRIPT, Deno.args, { values: ["modes", "reps"] });
const modes = (argValue(Deno.args, "modes") ?? "float16,w8a8,fp8,w4").split(",");
const reps = intArg(SCRIPT, Deno.args, "reps", 20);
requireGpu(SCRIPT);

const model = randomGpt2(GPT2_SMALL, "float16", "cuda");
const vocab = model.config.vocabSize;
const ids = randomIds([8, 512], 11, vocab, "cuda");
const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 0.5);
let calibration: tq.Calibration | undefined;

console.log(
  "| mode | total (ms) | graph building | evaluate() on the host | waiting for the GPU |",
);
console.log("| --- | --- | --- | --- | --- |");
for (const mode of modes) {
  // Each mode from float: a float16 row after a quantized one must not time quantized layers.
  backToFloat(model);
  if (mode !== "float16") {
    calibration ??= tq.calibrate(
      model,
      [randomIds([1, 128], 13, vocab, "cuda")],
      (m, x) => m.forward(x),
      { method: "max", onProgress: () => {} },
    );
    tq.quantizeModel(model, {
      mode: mode as tq.QuantizationMode,
      calibration,
      exclude: ["lm_head"],
    });
  }
  const parts: number[][] = [[], [], [], []];
  for (let i = 0; i < reps + 3; i++) {
    tq.cuda.synchronize();
    const t0 = performance.now();
    const logits = model.forward(ids);
    const t1 = performance.now();
    logits.evaluate();
    const t2 = performance.now();
    tq.cuda.synchronize();
    const t3 = performance.now();
    logits.dispose();
    if (i < 3) continue;
    [t3 - t0, t1 - t0, t2 - t1, t3 - t2].forEach((v, k) => parts[k].push(v));
  }
  console.log(`| ${mode} | ${parts.map((p) => fmt(median(p), 3)).join(" | ")} |`);
}
