/**
 * GPT-2 decoding with fixed shapes, so that one decode step is one compiled plan (one CUDA
 * graph replay on a GPU). `generate` decodes through it by default.
 *
 * The KV cache is static: one tensor per layer `[2, B, nHead, maxLength, headDim]`, its keys at
 * index 0 and its values at index 1. A step takes the new token ids `[B, 1]` (int32), the
 * position `[1]` (int32) and the cache, and returns the greedy next ids, the logits, the next
 * position and the updated cache. The cache is updated functionally: one
 * `sliceScatter(cache, new, position, 3)` per layer writes the step's key and value into their
 * slot, and fused attention reads the slots up to the position (`kvLength = position + 1`,
 * read on the device) as views of the updated cache. Nothing in the step depends on the
 * position's value, so every step has the same shapes and replays the same recording. The
 * cache arguments are donated: a step consumes the state it is given, and on a GPU writes the
 * new slot into the cache's memory in place (no copy of the cache per step).
 *
 * ```ts
 * const decoder = buildStaticDecoder(model, { batch: 1, maxLength: 1024 });
 * let { state } = decoder.prefill(promptIds); // fills the cache with the model's forward
 * for (let i = 0; i < 32; i++) ({ state } = decoder.step(state));
 * ```
 * @module
 */
import { checkBoolean, fmtShape, TensorqError } from "../errors.ts";
import { checkTensor } from "../ops/op.ts";
import { add } from "../ops/elementwise.ts";
import { attention } from "../ops/attention.ts";
import { argmax } from "../ops/reduce.ts";
import { concat, permute, reshape, slice, sliceScatter, stack } from "../ops/shape.ts";
import { compile, type Executable, inputInfo } from "../runtime/compile.ts";
import { fromStorage, Tensor, tensor, zeros } from "../tensor.ts";
import { describeValue, optionsOf, sameShape } from "../shape.ts";
// A cycle (gpt2.ts imports this module): its exports are only read when a function runs.
import { checkGpt2Model, type GPT2LMHeadModel, type KVCache } from "./gpt2.ts";

/** Options of {@link buildStaticDecoder}. */
export interface StaticDecoderOptions {
  /** Sequences decoded together (default 1). */
  batch?: number;
  /** Cache slots: prompt plus generated tokens must fit (default the model's nPositions). */
  maxLength?: number;
  /** Record a CUDA graph of the step on CUDA devices (default true). */
  cudaGraphs?: boolean;
  /**
   * Values for the cache slots the prompt leaves unused, per layer and part (default zeros).
   * They are masked, so any finite values give the same results.
   */
  padding?: (shape: number[], layer: number, part: "key" | "value") => Tensor;
}

/** What a decode step reads: the ids to feed, their position, and the cache. */
export interface DecodeState {
  /** Token ids to feed `[B, 1]` (int32). */
  ids: Tensor;
  /** Position of those ids `[1]` (int32): the cache slot they are written to. */
  pos: Tensor;
  /**
   * The same position as a host number (set by `prefill` and `step`): `step` refuses to run
   * at `maxLength`, where the cache write would clamp into the last slot. A state without it
   * is not checked.
   */
  position?: number;
  /**
   * One tensor per layer, `[2, B, nHead, maxLength, headDim]`: keys at index 0, values at 1
   * (one write per layer and step updates both).
   */
  cache: Tensor[];
}

/** A step's result. */
export interface StepResult {
  /** The state for the next step (ids = greedy choice, position + 1, updated cache). */
  state: DecodeState;
  /** Logits of the fed ids `[B, 1, vocab]`. */
  logits: Tensor;
}

/** A prefill's result. */
export interface PrefillResult {
  /** The first decode state: the prompt's keys and values padded to `maxLength`. */
  state: DecodeState;
  /** The prompt's logits `[B, T, vocab]`. */
  logits: Tensor;
  /** The model's own (growing) cache after the prompt, for comparisons. */
  kv: KVCache;
}

/** A compiled fixed-shape decoder for one model. */
export interface StaticDecoder {
  /** Sequences per step. */
  readonly batch: number;
  /** Cache slots. */
  readonly maxLength: number;
  /** The compiled step: `(ids, pos, ...cache) → [next, logits, pos + 1, ...cache]`. */
  readonly executable: Executable;
  /** Runs the prompt `[B, T]` through the model's forward and builds the first state. */
  prefill(promptIds: Tensor): PrefillResult;
  /** One decode step; consumes `state`'s cache (its tensors are disposed). */
  step(state: DecodeState): StepResult;
  /** Frees the compiled step. */
  dispose(): void;
}

/**
 * Throws unless `state` has a decode state's form: tensors `ids` and `pos`, an array of cache
 * tensors, and `position` absent or an integer. With `live`, its tensors must not be disposed.
 */
function checkState(op: string, state: unknown, live: boolean): DecodeState {
  const s = state as Partial<DecodeState> | null;
  if (
    s === null || typeof s !== "object" || !(s.ids instanceof Tensor) ||
    !(s.pos instanceof Tensor) || !Array.isArray(s.cache) ||
    !s.cache.every((t) => t instanceof Tensor)
  ) {
    throw new TensorqError("state must be the state of the last prefill or step", {
      op,
      kind: "argument",
      argument: "state",
      expected: "{ ids, pos, cache, position } from prefill() or step()",
      actual: describeValue(state),
    });
  }
  if (s.position !== undefined && !Number.isSafeInteger(s.position)) {
    // A fractional position would pass the range check and desynchronize from pos.
    throw new TensorqError("state.position must be an integer", {
      op,
      kind: "argument",
      argument: "state.position",
      expected: "an integer position (as set by prefill and step) or undefined",
      actual: describeValue(s.position),
    });
  }
  if (live) {
    checkTensor(op, "state.ids", s.ids);
    checkTensor(op, "state.pos", s.pos);
    s.cache.forEach((t, i) => checkTensor(op, `state.cache[${i}]`, t));
  }
  return s as DecodeState;
}

/** Frees the tensors of a state (not needed any more). */
export function disposeState(state: DecodeState): void {
  // Disposing twice is harmless, so disposed tensors are accepted.
  checkState("disposeState", state, false);
  state.ids.dispose();
  state.pos.dispose();
  for (const t of state.cache) t.dispose();
}

/** A copy of a state (a step consumes the state it is given), through host memory. */
export function cloneState(state: DecodeState): DecodeState {
  checkState("cloneState", state, true);
  const copy = (t: Tensor) => fromStorage(t.storageSync(), t.shape, t.dtype, t.device);
  return {
    ids: copy(state.ids),
    pos: copy(state.pos),
    cache: state.cache.map(copy),
    position: state.position,
  };
}

/**
 * The decode step as a function of tensors, for {@link compile}: arguments
 * `(ids [B, 1] int32, pos [1] int32, kv0, kv1, ...)` with `kvI` layer I's cache
 * `[2, B, nHead, maxLength, headDim]` (keys, values), results
 * `[next [B, 1] int32, logits [B, 1, vocab], pos + 1, kv0', kv1', ...]`.
 */
export function decodeStepFunction(model: GPT2LMHeadModel): (...args: Tensor[]) => Tensor[] {
  checkGpt2Model("decodeStepFunction", model);
  const config = model.config;
  const trunk = model.transformer;
  return (ids: Tensor, pos: Tensor, ...cache: Tensor[]): Tensor[] => {
    const [b] = ids.shape;
    const d = config.nEmbd;
    // Slots 0..pos hold keys and values: this step writes slot pos and attends to them all.
    const kvLength = add(pos, 1);
    const positionRow = reshape(trunk.wpe.forward(pos), [1, 1, d]);
    let x = add(trunk.wte.forward(ids), positionRow); // [B, 1, d]
    const updated: Tensor[] = [];
    for (let i = 0; i < config.nLayer; i++) {
      const block = trunk.block(i);
      const attn = block.attn;
      const { nHead: h, headDim } = attn;
      const qkv = attn.c_attn.forward(block.ln_1.forward(x)); // [B, 1, 3d]: q | k | v
      const qRows = reshape(slice(qkv, [null, null, [0, d]]), [b, 1, h, headDim]);
      const q = permute(qRows, [0, 2, 1, 3]);
      // k | v as [2, B, H, 1, headDim]: for B = 1 the permute only moves extents of 1 and the
      // slice is one contiguous run, so the write reads qkv in place (larger B: one permute).
      const kvNew = slice(permute(reshape(qkv, [b, 1, 3, h, headDim]), [2, 0, 3, 1, 4]), [[1, 3]]);
      const kv = sliceScatter(cache[i], kvNew, pos, 3); // [2, B, H, L, headDim]
      updated.push(kv);
      // Contiguous parts of the updated cache: views, which the attention-view pass folds in.
      const k = slice(kv, [0]);
      const v = slice(kv, [1]);
      const context = attention(q, k, v, { scale: 1 / attn.scoreDivisor, kvLength });
      const merged = reshape(permute(context, [0, 2, 1, 3]), [b, 1, d]);
      x = add(x, attn.c_proj.forward(merged));
      x = add(x, block.mlp.forward(block.ln_2.forward(x)));
    }
    const logits = model.lm_head.forward(trunk.ln_f.forward(x)); // [B, 1, vocab]
    const next = argmax(logits, -1); // [B, 1] int32
    return [next, logits, add(pos, 1), ...updated];
  };
}

/**
 * Compiles the fixed-shape decode step of `model` (on the model's device). The step reflects
 * the model as it is now: build a new decoder after quantizing or loading other weights.
 */
export function buildStaticDecoder(
  model: GPT2LMHeadModel,
  options: StaticDecoderOptions = {},
): StaticDecoder {
  const op = "buildStaticDecoder";
  checkGpt2Model(op, model);
  options = optionsOf(op, options, ["batch", "maxLength", "cudaGraphs", "padding"]);
  const config = model.config;
  const batch = options.batch ?? 1;
  const maxLength = options.maxLength ?? config.nPositions;
  if (!Number.isSafeInteger(batch) || batch < 1) {
    throw new TensorqError("batch must be a positive integer", {
      op: "buildStaticDecoder",
      kind: "argument",
      argument: "batch",
      expected: "an integer >= 1",
      actual: describeValue(batch),
    });
  }
  if (!Number.isInteger(maxLength) || maxLength < 2 || maxLength > config.nPositions) {
    throw new TensorqError("maxLength must be an integer in [2, nPositions]", {
      op: "buildStaticDecoder",
      kind: "argument",
      argument: "maxLength",
      expected: `2..${config.nPositions}`,
      actual: describeValue(maxLength),
    });
  }
  if (options.cudaGraphs !== undefined) checkBoolean(op, "cudaGraphs", options.cudaGraphs);
  if (options.padding !== undefined && typeof options.padding !== "function") {
    throw new TensorqError("padding must be a function", {
      op,
      kind: "argument",
      argument: "padding",
      expected: "(shape, layer, part) => Tensor",
      actual: describeValue(options.padding),
    });
  }
  const headDim = config.nEmbd / config.nHead;
  const cacheShape = [2, batch, config.nHead, maxLength, headDim];
  const dtype = model.dtype;
  const device = model.device;
  const executable = compile(decodeStepFunction(model), {
    args: [
      inputInfo([batch, 1], "int32"),
      inputInfo([1], "int32"),
      ...Array.from({ length: config.nLayer }, () => inputInfo(cacheShape, dtype)),
    ],
    device,
    cudaGraphs: options.cudaGraphs,
    donate: Array.from({ length: config.nLayer }, (_, i) => 2 + i),
  });
  const padding = options.padding ??
    ((shape: number[]) => zeros(shape, { dtype, device }));

  let disposed = false;
  const checkLive = (op: string) => {
    if (disposed) {
      throw new TensorqError("the decoder was disposed", {
        op,
        kind: "state",
        expected: "a decoder not yet disposed (build another with buildStaticDecoder)",
        actual: "a disposed decoder",
      });
    }
  };

  const prefill = (promptIds: Tensor): PrefillResult => {
    const op = "StaticDecoder.prefill";
    checkLive(op);
    if (!(promptIds instanceof Tensor)) {
      throw new TensorqError("promptIds must be a tensor of token ids", {
        op,
        kind: "argument",
        argument: "promptIds",
        expected: `an int32/int64 Tensor of shape [${batch}, T]`,
        actual: describeValue(promptIds),
      });
    }
    const [b, t] = promptIds.shape;
    if (promptIds.rank !== 2 || b !== batch || t < 1 || t >= maxLength) {
      throw new TensorqError("prompt does not fit the decoder", {
        op,
        kind: "shape",
        argument: "promptIds",
        expected: `[${batch}, T] with 1 <= T < ${maxLength}`,
        actual: `[${promptIds.shape.join(", ")}]`,
      });
    }
    const kv = model.createCache();
    const logits = model.forward(promptIds, { cache: kv });
    const fill = [batch, config.nHead, maxLength - t, headDim];
    const padded = (i: number, part: "key" | "value"): Tensor => {
      const p: unknown = padding(fill, i, part);
      if (!(p instanceof Tensor) || !sameShape(p.shape, fill) || p.dtype !== dtype) {
        throw new TensorqError("padding returned values that do not fill the cache", {
          op,
          kind: "argument",
          argument: "padding",
          expected: `a ${dtype} tensor of shape ${fmtShape(fill)} (layer ${i}, ${part})`,
          actual: p instanceof Tensor ? `${p.dtype} ${fmtShape(p.shape)}` : describeValue(p),
        });
      }
      return p;
    };
    const cache = kv.layers.map((layer, i) =>
      stack(
        ([["key", layer.key!], ["value", layer.value!]] as const).map(([part, values]) =>
          concat([values, padded(i, part)], 2)
        ),
      ).evaluate()
    );
    const last = slice(logits, [null, [t - 1, t]]); // [B, 1, vocab]
    const ids = argmax(last, -1).evaluate(); // [B, 1]
    const pos = tensor(Int32Array.of(t), { device });
    return { state: { ids, pos, cache, position: t }, logits, kv };
  };

  const step = (state: DecodeState): StepResult => {
    const op = "StaticDecoder.step";
    checkLive(op);
    checkState(op, state, false);
    if (state.cache.length !== config.nLayer) {
      throw new TensorqError("the state's cache does not fit this decoder", {
        op,
        kind: "argument",
        argument: "state.cache",
        expected: `${config.nLayer} tensors, one per layer`,
        actual: `${state.cache.length} tensors`,
      });
    }
    const at = state.position;
    if (at !== undefined && !(at >= 0 && at < maxLength)) {
      throw new TensorqError("the decode cache is full", {
        op,
        kind: "shape",
        argument: "state.position",
        expected: `a position in [0, ${maxLength}) (maxLength ${maxLength})`,
        actual: describeValue(at),
      });
    }
    const out = executable(state.ids, state.pos, ...state.cache) as Tensor[];
    const [next, logits, pos, ...cache] = out;
    const position = at === undefined ? undefined : at + 1;
    return { state: { ids: next, pos, cache, position }, logits };
  };

  return {
    batch,
    maxLength,
    executable,
    prefill,
    step,
    dispose: () => {
      disposed = true;
      executable.dispose();
    },
  };
}
