/**
 * GPT-2 decoding with fixed shapes, so that one decode step is one compiled plan (one CUDA
 * graph replay on a GPU).
 *
 * The KV cache is static: per layer a key and a value tensor `[B, nHead, maxLength, headDim]`.
 * A step takes the new token ids `[B, 1]` (int32), the position `[1]` (int32) and the cache,
 * and returns the greedy next ids, the logits, the next position and the updated cache. The
 * cache is updated functionally: `sliceScatter(cache, new, position)` writes the step's key
 * and value into their slot, and fused attention reads the slots up to the position
 * (`kvLength = position + 1`, read on the device). Nothing in the step depends on the
 * position's value, so every step has the same shapes and replays the same recording. The
 * cache arguments are donated: a step consumes the state it is given, and on a GPU writes the
 * new slot into the cache's memory in place (no copy of the cache per step).
 *
 * ```ts
 * const decoder = buildStaticDecoder(model, { batch: 1, maxLength: 1024 });
 * let { state } = decoder.prefill(promptIds);   // fills the cache with the model's forward
 * for (let i = 0; i < 32; i++) ({ state } = decoder.step(state));
 * ```
 * @module
 */
import * as tq from "../mod.ts";
import { fromStorage } from "../lib/tensor.ts";
import { type BenchFloat, deviceTensor, randnHost, relError } from "./timing.ts";

/** Options of {@link buildStaticDecoder}. */
export interface StaticDecoderOptions {
  /** Sequences decoded together (default 1). */
  batch?: number;
  /** Cache slots: prompt plus generated tokens must fit (default the model's nPositions). */
  maxLength?: number;
  /** Record a CUDA graph of the step on CUDA devices (default true). */
  cudaGraphs?: boolean;
}

/** What a decode step reads: the ids to feed, their position, and the cache. */
export interface DecodeState {
  /** Token ids to feed `[B, 1]` (int32). */
  ids: tq.Tensor;
  /** Position of those ids `[1]` (int32): the cache slot they are written to. */
  pos: tq.Tensor;
  /** Keys and values per layer, `[k0, v0, k1, v1, ...]`, each `[B, nHead, maxLength, headDim]`. */
  cache: tq.Tensor[];
}

/** A step's result. */
export interface StepResult {
  /** The state for the next step (ids = greedy choice, position + 1, updated cache). */
  state: DecodeState;
  /** Logits of the fed ids `[B, 1, vocab]`. */
  logits: tq.Tensor;
}

/** A prefill's result. */
export interface PrefillResult {
  /** The first decode state: the prompt's keys and values padded to `maxLength`. */
  state: DecodeState;
  /** The prompt's logits `[B, T, vocab]`. */
  logits: tq.Tensor;
  /** The model's own (growing) cache after the prompt, for comparisons. */
  kv: tq.KVCache;
}

/** A compiled fixed-shape decoder for one model. */
export interface StaticDecoder {
  /** Sequences per step. */
  readonly batch: number;
  /** Cache slots. */
  readonly maxLength: number;
  /** The compiled step: `(ids, pos, ...cache) → [next, logits, pos + 1, ...cache]`. */
  readonly executable: tq.Executable;
  /** Runs the prompt `[B, T]` through the model's forward and builds the first state. */
  prefill(promptIds: tq.Tensor): PrefillResult;
  /** One decode step; consumes `state`'s cache (its tensors are disposed). */
  step(state: DecodeState): StepResult;
  /** Frees the compiled step. */
  dispose(): void;
}

/** A copy of a state (a step consumes the state it is given). */
export function cloneState(state: DecodeState): DecodeState {
  const copy = (t: tq.Tensor) => fromStorage(t.storageSync(), t.shape, t.dtype, t.device);
  return { ids: copy(state.ids), pos: copy(state.pos), cache: state.cache.map(copy) };
}

/** Frees the tensors of a state (not needed any more). */
export function disposeState(state: DecodeState): void {
  state.ids.dispose();
  state.pos.dispose();
  for (const t of state.cache) t.dispose();
}

/**
 * The decode step as a function of tensors, for {@link tq.compile}: arguments
 * `(ids [B, 1] int32, pos [1] int32, k0, v0, k1, v1, ...)`, results
 * `[next [B, 1] int32, logits [B, 1, vocab], pos + 1, k0', v0', ...]`.
 */
export function decodeStepFunction(
  model: tq.GPT2LMHeadModel,
): (...args: tq.Tensor[]) => tq.Tensor[] {
  const config = model.config;
  const trunk = model.transformer;
  return (ids: tq.Tensor, pos: tq.Tensor, ...cache: tq.Tensor[]): tq.Tensor[] => {
    const [b] = ids.shape;
    const d = config.nEmbd;
    // Slots 0..pos hold keys and values: this step writes slot pos and attends to them all.
    const kvLength = tq.add(pos, 1);
    const positionRow = tq.reshape(trunk.wpe.forward(pos), [1, 1, d]);
    let x = tq.add(trunk.wte.forward(ids), positionRow); // [B, 1, d]
    const updated: tq.Tensor[] = [];
    for (let i = 0; i < config.nLayer; i++) {
      const block = trunk.block(i);
      const attn = block.attn;
      const heads = (z: tq.Tensor) =>
        tq.permute(tq.reshape(z, [b, 1, attn.nHead, attn.headDim]), [0, 2, 1, 3]);
      const [q, kNew, vNew] = tq.split(attn.c_attn.forward(block.ln_1.forward(x)), 3, 2).map(
        heads,
      );
      const k = tq.sliceScatter(cache[2 * i], kNew, pos, 2); // [B, H, L, headDim]
      const v = tq.sliceScatter(cache[2 * i + 1], vNew, pos, 2);
      updated.push(k, v);
      const context = tq.attention(q, k, v, { scale: 1 / attn.scoreDivisor, kvLength }); // [B, H, 1, headDim]
      const merged = tq.reshape(tq.permute(context, [0, 2, 1, 3]), [b, 1, d]);
      x = tq.add(x, attn.c_proj.forward(merged));
      x = tq.add(x, block.mlp.forward(block.ln_2.forward(x)));
    }
    const logits = model.lm_head.forward(trunk.ln_f.forward(x)); // [B, 1, vocab]
    const next = tq.argmax(logits, -1); // [B, 1] int32
    return [next, logits, tq.add(pos, 1), ...updated];
  };
}

/** Compiles the fixed-shape decode step of `model` (on the model's device). */
export function buildStaticDecoder(
  model: tq.GPT2LMHeadModel,
  options: StaticDecoderOptions = {},
): StaticDecoder {
  const config = model.config;
  const batch = options.batch ?? 1;
  const maxLength = options.maxLength ?? config.nPositions;
  if (!Number.isInteger(maxLength) || maxLength < 2 || maxLength > config.nPositions) {
    throw new tq.TensorqError("maxLength must be an integer in [2, nPositions]", {
      op: "buildStaticDecoder",
      kind: "argument",
      argument: "maxLength",
      expected: `2..${config.nPositions}`,
      actual: String(maxLength),
    });
  }
  const headDim = config.nEmbd / config.nHead;
  const cacheShape = [batch, config.nHead, maxLength, headDim];
  const dtype = model.dtype;
  const device = model.device;
  const executable = tq.compile(decodeStepFunction(model), {
    args: [
      tq.inputInfo([batch, 1], "int32"),
      tq.inputInfo([1], "int32"),
      ...Array.from({ length: 2 * config.nLayer }, () => tq.inputInfo(cacheShape, dtype)),
    ],
    device,
    cudaGraphs: options.cudaGraphs,
    donate: Array.from({ length: 2 * config.nLayer }, (_, i) => 2 + i),
  });

  const prefill = (promptIds: tq.Tensor): PrefillResult => {
    const [b, t] = promptIds.shape;
    if (b !== batch || t >= maxLength) {
      throw new tq.TensorqError("prompt does not fit the decoder", {
        op: "StaticDecoder.prefill",
        kind: "shape",
        argument: "promptIds",
        expected: `[${batch}, T] with T < ${maxLength}`,
        actual: `[${promptIds.shape.join(", ")}]`,
      });
    }
    const kv = model.createCache();
    const logits = model.forward(promptIds, { cache: kv });
    // Unused slots hold random values: masking, not zeros, must keep them out.
    const fill = [batch, config.nHead, maxLength - t, headDim];
    const n = fill.reduce((a, e) => a * e, 1);
    const cache = kv.layers.flatMap((layer, i) =>
      [layer.key!, layer.value!].map((part, j) =>
        tq.concat([
          part,
          deviceTensor(randnHost(n, 1000 + 2 * i + j), fill, dtype as BenchFloat, device),
        ], 2).evaluate()
      )
    );
    const last = tq.slice(logits, [null, [t - 1, t]]); // [B, 1, vocab]
    const ids = tq.argmax(last, -1).evaluate(); // [B, 1]
    const pos = tq.tensor(Int32Array.of(t), { device });
    return { state: { ids, pos, cache }, logits, kv };
  };

  const step = (state: DecodeState): StepResult => {
    const out = executable(state.ids, state.pos, ...state.cache) as tq.Tensor[];
    const [next, logits, pos, ...cache] = out;
    return { state: { ids: next, pos, cache }, logits };
  };

  return {
    batch,
    maxLength,
    executable,
    prefill,
    step,
    dispose: () => executable.dispose(),
  };
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
  decoder: StaticDecoder,
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
    disposeState(state);
    state = next;
  }
  disposeState(state);
  return checks;
}

function argmaxOf(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}
