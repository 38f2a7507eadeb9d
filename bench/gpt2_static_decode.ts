/**
 * The GPT-2 static decoder of the benchmarks: {@link tq.buildStaticDecoder} with random values
 * in the cache slots the prompt leaves unused (masking, not zeros, must keep them out), and
 * {@link checkStaticDecoder}, which compares its steps with the model's cached forward.
 * @module
 */
import * as tq from "../mod.ts";
import { type BenchFloat, deviceTensor, randnHost, relError } from "./timing.ts";

export { cloneState, type DecodeState, disposeState, type StaticDecoder } from "../mod.ts";

/** {@link tq.buildStaticDecoder} with seeded random padding of the unused cache slots. */
export function buildStaticDecoder(
  model: tq.GPT2LMHeadModel,
  options: tq.StaticDecoderOptions = {},
): tq.StaticDecoder {
  const padding = (shape: number[], layer: number, part: "key" | "value") => {
    const n = shape.reduce((a, e) => a * e, 1);
    const seed = 1000 + 2 * layer + (part === "key" ? 0 : 1);
    return deviceTensor(randnHost(n, seed), shape, model.dtype as BenchFloat, model.device);
  };
  return tq.buildStaticDecoder(model, { padding, ...options });
}

/** One step of {@link checkStaticDecoder}. */
export interface StepCheck {
  /** ‖static − reference‖ / ‖reference‖ over the step's logits. */
  normRel: number;
  /** max |static − reference| / max |reference|. */
  maxRel: number;
  /** The greedy choices agree for every sequence. */
  argmaxMatch: boolean;
  /** Some logits were NaN or infinite. */
  nonFinite: boolean;
}

/**
 * Runs `steps` static decode steps after `promptIds` and the model's own cached forward on the
 * same tokens, comparing the logits of each step. Both are fed the static decoder's greedy
 * choices, so they stay on the same sequence.
 */
export function checkStaticDecoder(
  model: tq.GPT2LMHeadModel,
  decoder: tq.StaticDecoder,
  promptIds: tq.Tensor,
  steps: number,
): StepCheck[] {
  const { state: first, kv } = decoder.prefill(promptIds);
  let state = first;
  const checks: StepCheck[] = [];
  for (let s = 0; s < steps; s++) {
    const fed = state.ids;
    const { state: next, logits } = decoder.step(state);
    const reference = model.forward(fed, { cache: kv });
    const got = logits.dataSync() as Float32Array;
    const want = reference.dataSync() as Float32Array;
    const e = relError(got, want);
    const vocab = model.config.vocabSize;
    let argmaxMatch = true;
    for (let r = 0; r < decoder.batch; r++) {
      const rowGot = got.subarray(r * vocab, (r + 1) * vocab);
      const rowWant = want.subarray(r * vocab, (r + 1) * vocab);
      if (argmaxOf(rowGot) !== argmaxOf(rowWant)) argmaxMatch = false;
    }
    checks.push({ normRel: e.normRel, maxRel: e.maxRel, argmaxMatch, nonFinite: e.nonFinite });
    logits.dispose();
    reference.dispose();
    tq.disposeState(state);
    state = next;
  }
  tq.disposeState(state);
  return checks;
}

function argmaxOf(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}
