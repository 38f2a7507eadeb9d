/**
 * The random-weight GPT-2 the GPU benchmarks run (bench/gpu_gpt2.ts, bench/gpt2_profile.ts),
 * random token ids for it, and the return to float between modes.
 * @module
 */
import * as tq from "../mod.ts";
import { type BenchFloat, deviceTensor, randnHost } from "./timing.ts";

/** GPT-2 small's shape: 12 layers, 768 wide, 12 heads, 50257 words, 1024 positions. */
export const GPT2_SMALL: Partial<tq.GPT2Config> = {
  nLayer: 12,
  nEmbd: 768,
  nHead: 12,
  vocabSize: 50257,
  nPositions: 1024,
};

/**
 * The Linear layers of one GPT-2-small block: name, input features K, output features N, and
 * whether a GELU follows (c_fc: its product takes cuBLASLt's GELU-and-bias epilogue).
 */
export const GPT2_SMALL_LAYERS: readonly [name: string, k: number, n: number, gelu: boolean][] = [
  ["c_attn", 768, 2304, false],
  ["attn c_proj", 768, 768, false],
  ["c_fc", 768, 3072, true],
  ["mlp c_proj", 3072, 768, false],
];

/**
 * GPT-2 of `config` with seeded random weights (normal, std 0.02; layer-norm scales 1) in
 * `dtype` on `device`.
 */
export function randomGpt2(
  config: Partial<tq.GPT2Config>,
  dtype: BenchFloat,
  device: string,
): tq.GPT2LMHeadModel {
  const cfg = tq.gpt2Config(config);
  const model = tq.withoutInitialization(() => new tq.GPT2LMHeadModel(cfg, { dtype }));
  const dict: Record<string, tq.Tensor> = {};
  let seed = 1;
  for (const [name, spec] of model.parameterSpecs()) {
    if (cfg.tieWordEmbeddings && name === "lm_head.weight") continue;
    const n = spec.shape.reduce((a, b) => a * b, 1);
    const isNormScale = /(^|\.)ln_(1|2|f)\.weight$/.test(name);
    const values = isNormScale ? new Float32Array(n).fill(1) : randnHost(n, seed++, 0.02);
    dict[name] = deviceTensor(values, spec.shape, dtype, device);
  }
  if (cfg.tieWordEmbeddings) dict["lm_head.weight"] = dict["transformer.wte.weight"];
  model.loadStateDict(dict, { strict: true });
  return model;
}

/** Seeded random token ids below `vocab` (int32, `shape`) on `device`. */
export function randomIds(shape: number[], seed: number, vocab: number, device: string): tq.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const values = new Int32Array(n);
  const stream = new tq.RandomStream(seed);
  for (let i = 0; i < n; i++) values[i] = stream.nextUint32() % vocab;
  return tq.tensor(values, { shape, device });
}

/** Returns every quantized Linear layer of `model` to float (before the next mode is set). */
export function backToFloat(model: tq.Module): void {
  for (const [, layer] of tq.namedLinears(model)) {
    if (layer.quantDtype !== undefined) layer.configureQuantization({});
  }
}
