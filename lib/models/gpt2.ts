/**
 * GPT-2, built from tensorq's modules and ops: {@link GPT2LMHeadModel} with Hugging Face
 * parameter names (`transformer.h.0.attn.c_attn.weight`, ...), a {@link KVCache} for
 * decoding, {@link generate} (greedy or seeded sampling), {@link lossFromLogits}, and byte
 * tokenizer helpers for byte-level models.
 *
 * @example
 * ```ts
 * import { decodeBytes, encodeBytes, generate, GPT2LMHeadModel } from "./gpt2.ts";
 * const model = GPT2LMHeadModel.fromPretrained("examples/gpt2/assets/tiny-shakespeare-gpt2");
 * const ids = generate(model, encodeBytes("ROMEO:"), { maxNewTokens: 40 });
 * console.log(decodeBytes(ids));
 * ```
 * @module
 */
import { checkDType, type DType } from "../dtype.ts";
import { checkBoolean, fmtShape, TensorqError } from "../errors.ts";
import { parseDevice } from "../device.ts";
import { loadHfCheckpoint } from "../io/hf.ts";
import { add, cast, gelu, mul, relu, sigmoid, tanh } from "../ops/elementwise.ts";
import { attention } from "../ops/attention.ts";
import { logSoftmax } from "../ops/nn.ts";
import { mean } from "../ops/reduce.ts";
import { concat, gather, permute, reshape, slice, split, transpose } from "../ops/shape.ts";
import { describeValue, isPlainObject, optionsOf } from "../shape.ts";
import { checkTensor } from "../ops/op.ts";
import { checkSeed, randn, RandomStream } from "../random.ts";
import { realize } from "../runtime/evaluate.ts";
import { full, Tensor, tensor } from "../tensor.ts";
import { buildSharingTrace, Module, registerLibraryModules } from "../nn/module.ts";
import { Embedding, LayerNorm, Linear, Sequential, withoutInitialization } from "../nn/layers.ts";
import { buildStaticDecoder, type DecodeState, disposeState } from "./gpt2_decoder.ts";

// ---------------------------------------------------------------------------------------
// Configuration

/**
 * MLP activations of Hugging Face's `GPT2Config.activation_function`: `gelu_new` /
 * `gelu_pytorch_tanh` (GELU, tanh form), `gelu` (exact GELU), `relu`, `silu` (= `swish`,
 * x · sigmoid(x)) and `tanh`.
 */
export type GPT2Activation =
  | "gelu_new"
  | "gelu_pytorch_tanh"
  | "gelu"
  | "relu"
  | "silu"
  | "swish"
  | "tanh";

const ACTIVATIONS: readonly GPT2Activation[] = [
  "gelu_new",
  "gelu_pytorch_tanh",
  "gelu",
  "relu",
  "silu",
  "swish",
  "tanh",
];

/** The shape of a GPT-2 model (Hugging Face `GPT2Config`, in camelCase). */
export interface GPT2Config {
  /** Vocabulary size (`vocab_size`, default 50257). */
  vocabSize: number;
  /** Longest sequence (`n_positions`, default 1024). */
  nPositions: number;
  /** Hidden width (`n_embd`, default 768). */
  nEmbd: number;
  /** Blocks (`n_layer`, default 12). */
  nLayer: number;
  /** Attention heads (`n_head`, default 12); must divide `nEmbd`. */
  nHead: number;
  /** MLP width (`n_inner`, default `4 · nEmbd`). */
  nInner: number;
  /** Layer norm epsilon (`layer_norm_epsilon`, default 1e-5). */
  layerNormEpsilon: number;
  /** MLP activation (`activation_function`, default `gelu_new`). */
  activation: GPT2Activation;
  /** Divide attention scores by √(head dim) (`scale_attn_weights`, default true). */
  scaleAttnWeights: boolean;
  /** Also divide scores by layer index + 1 (`scale_attn_by_inverse_layer_idx`, default false). */
  scaleAttnByInverseLayerIdx: boolean;
  /** `lm_head` shares `transformer.wte`'s weight (`tie_word_embeddings`, default true). */
  tieWordEmbeddings: boolean;
}

const CONFIG_OP = "GPT2Config";

function configError(
  argument: string,
  expected: string,
  actual: unknown,
  where = "",
): TensorqError {
  return new TensorqError(`invalid GPT-2 configuration${where}`, {
    op: CONFIG_OP,
    kind: "argument",
    argument,
    expected,
    actual: describeValue(actual),
  });
}

/**
 * How config errors name a field: the camelCase field for {@link gpt2Config}, config.json's key
 * for {@link parseGPT2Config}, with the suffix its messages take.
 */
interface FieldNaming {
  name: (field: keyof GPT2Config) => string;
  where: string;
}

/**
 * A complete, validated config: missing fields take GPT-2 small's values (`nInner` defaults
 * to `4 · nEmbd`). Errors name the offending field.
 */
export function gpt2Config(fields: Partial<GPT2Config> = {}): GPT2Config {
  return configArgument(CONFIG_OP, fields, "fields");
}

/**
 * The checked config of `op`'s `argument`: a plain object of config fields (undefined only
 * where the caller defaults it), else an error here rather than a TypeError deep in a
 * constructor or, for a non-object, the default 124M model built in seconds.
 */
function configArgument(op: string, config: unknown, argument = "config"): GPT2Config {
  if (!isPlainObject(config)) {
    throw new TensorqError("the GPT-2 config must be a plain object", {
      op,
      kind: "argument",
      argument,
      expected: "an object of GPT2Config fields (e.g. from gpt2Config)",
      actual: describeValue(config),
    });
  }
  // A misspelt field (nLayers) would silently take the default.
  const fields = optionsOf<Partial<GPT2Config>>(op, config, CONFIG_FIELDS, argument);
  return checkedConfig(fields, { name: (field) => field, where: "" });
}

function checkedConfig(fields: Partial<GPT2Config>, naming: FieldNaming): GPT2Config {
  const { name, where } = naming;
  const positiveInt = (field: keyof GPT2Config, v: unknown): number => {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
      throw configError(name(field), "a positive integer", v, where);
    }
    return v;
  };
  const boolean = (field: keyof GPT2Config, v: unknown): boolean => {
    if (typeof v !== "boolean") throw configError(name(field), "a boolean", v, where);
    return v;
  };
  const nEmbd = positiveInt("nEmbd", fields.nEmbd ?? 768);
  const nHead = positiveInt("nHead", fields.nHead ?? 12);
  if (nEmbd % nHead !== 0) {
    throw configError(name("nHead"), `a divisor of ${name("nEmbd")} (${nEmbd})`, nHead, where);
  }
  const eps = fields.layerNormEpsilon ?? 1e-5;
  if (typeof eps !== "number" || !(eps >= 0) || !Number.isFinite(eps)) {
    throw configError(name("layerNormEpsilon"), "a finite number >= 0", eps, where);
  }
  const activation = fields.activation ?? "gelu_new";
  if (!ACTIVATIONS.includes(activation)) {
    throw new TensorqError(`unsupported MLP activation${where}`, {
      op: CONFIG_OP,
      kind: "unsupported",
      argument: name("activation"),
      expected: ACTIVATIONS.join(", "),
      actual: describeValue(activation),
    });
  }
  return {
    vocabSize: positiveInt("vocabSize", fields.vocabSize ?? 50257),
    nPositions: positiveInt("nPositions", fields.nPositions ?? 1024),
    nEmbd,
    nLayer: positiveInt("nLayer", fields.nLayer ?? 12),
    nHead,
    nInner: positiveInt("nInner", fields.nInner ?? 4 * nEmbd),
    layerNormEpsilon: eps,
    activation,
    scaleAttnWeights: boolean("scaleAttnWeights", fields.scaleAttnWeights ?? true),
    scaleAttnByInverseLayerIdx: boolean(
      "scaleAttnByInverseLayerIdx",
      fields.scaleAttnByInverseLayerIdx ?? false,
    ),
    tieWordEmbeddings: boolean("tieWordEmbeddings", fields.tieWordEmbeddings ?? true),
  };
}

/** config.json's key of each config field. */
const CONFIG_JSON_KEYS: Record<keyof GPT2Config, string> = {
  vocabSize: "vocab_size",
  nPositions: "n_positions",
  nEmbd: "n_embd",
  nLayer: "n_layer",
  nHead: "n_head",
  nInner: "n_inner",
  layerNormEpsilon: "layer_norm_epsilon",
  activation: "activation_function",
  scaleAttnWeights: "scale_attn_weights",
  scaleAttnByInverseLayerIdx: "scale_attn_by_inverse_layer_idx",
  tieWordEmbeddings: "tie_word_embeddings",
};

const CONFIG_FIELDS = Object.keys(CONFIG_JSON_KEYS);

/**
 * Reads a Hugging Face `config.json` object (snake_case keys; absent or null keys take
 * defaults). Rejects non-GPT-2 models and features this implementation lacks
 * (cross-attention). Errors name config.json's keys. `reorder_and_upcast_attn` needs no
 * setting: attention scores are always computed in at least float32.
 */
export function parseGPT2Config(hf: Record<string, unknown>): GPT2Config {
  // A plain object only: a Promise (a missing await), a Map or a Response read as {} would
  // give GPT-2 small's defaults.
  if (!isPlainObject(hf)) {
    throw configError("config", "a config.json object", hf);
  }
  if (hf.model_type !== undefined && hf.model_type !== "gpt2") {
    throw configError("model_type", '"gpt2"', hf.model_type);
  }
  if (hf.add_cross_attention === true) {
    throw new TensorqError("cross-attention is not supported", {
      op: CONFIG_OP,
      kind: "unsupported",
      argument: "add_cross_attention",
    });
  }
  // null means "use the default" in HF configs (e.g. n_inner).
  const fields = Object.fromEntries(
    Object.entries(CONFIG_JSON_KEYS).map(([field, key]) => [field, hf[key] ?? undefined]),
  ) as Partial<GPT2Config>;
  return checkedConfig(fields, {
    name: (field) => CONFIG_JSON_KEYS[field],
    where: " in config.json",
  });
}

// ---------------------------------------------------------------------------------------
// KV cache

/** Past keys and values of one layer, each `[B, nHead, length, headDim]`. */
export interface LayerKV {
  /** Past keys (undefined before the first step). */
  key?: Tensor;
  /** Past values (undefined before the first step). */
  value?: Tensor;
}

/**
 * Keys and values of past positions, per layer, for incremental decoding. Pass the same
 * cache to successive {@link GPT2LMHeadModel.forward} calls: each call attends to the cached
 * positions, continues the positions from {@link KVCache.length}, and appends its own keys
 * and values (so `length` grows by the number of new tokens).
 */
export class KVCache {
  /** One entry per layer. */
  readonly layers: LayerKV[];

  /** An empty cache for `nLayer` layers. */
  constructor(nLayer: number) {
    if (!Number.isSafeInteger(nLayer) || nLayer <= 0) {
      throw new TensorqError("a cache needs a positive layer count", {
        op: "KVCache",
        kind: "argument",
        argument: "nLayer",
        expected: "a positive integer",
        actual: describeValue(nLayer),
      });
    }
    this.layers = Array.from({ length: nLayer }, () => ({}));
  }

  /** Cached positions (0 when empty). */
  get length(): number {
    return this.layers[0].key?.shape[2] ?? 0;
  }

  /** Batch size of the cached sequences (undefined when empty). */
  get batchSize(): number | undefined {
    return this.layers[0].key?.shape[0];
  }

  /** Empties the cache (freeing nothing explicitly: the tensors are dropped). */
  reset(): void {
    for (const layer of this.layers) layer.key = layer.value = undefined;
  }
}

/** Throws unless `cache` is a {@link KVCache} of `layers` layers (named `argument` of `op`). */
function checkCacheFits(op: string, argument: string, cache: unknown, layers: number): void {
  if (!(cache instanceof KVCache) || cache.layers.length !== layers) {
    throw new TensorqError("the cache does not fit this model", {
      op,
      kind: "argument",
      argument,
      expected: `a KVCache of ${layers} layers`,
      actual: cache instanceof KVCache
        ? `a KVCache of ${cache.layers.length} layers`
        : describeValue(cache),
    });
  }
}

/** Token ids of a forward: a `[batch, tokens]` int32 or int64 tensor of at least one token. */
function checkIds(op: string, ids: Tensor): void {
  checkTensor(op, "ids", ids);
  if (ids.rank !== 2 || ids.shape[1] === 0) {
    throw new TensorqError("ids must be a [batch, tokens] tensor with at least one token", {
      op,
      kind: "shape",
      argument: "ids",
      expected: "shape [B, T] with T >= 1",
      actual: `shape ${fmtShape(ids.shape)}`,
    });
  }
  if (ids.dtype !== "int32" && ids.dtype !== "int64") {
    throw new TensorqError("ids must be integers", {
      op,
      kind: "dtype",
      argument: "ids",
      expected: "int32 or int64",
      actual: ids.dtype,
    });
  }
}

/**
 * Checks a forward of `ids [B, T]` against the model's positions and, with a cache, that the
 * cache fits: this model's layers, its heads and dtype, the batch of the cached sequences.
 */
function checkForwardFits(
  op: string,
  cacheArgument: string,
  config: GPT2Config,
  dtype: DType,
  ids: Tensor,
  cache: KVCache | undefined,
): void {
  const [b, t] = ids.shape;
  if (cache !== undefined) {
    checkCacheFits(op, cacheArgument, cache, config.nLayer);
    const cached = cache.layers[0].key;
    const headDim = config.nEmbd / config.nHead;
    if (
      cached &&
      (cached.shape[1] !== config.nHead || cached.shape[3] !== headDim || cached.dtype !== dtype)
    ) {
      throw new TensorqError("the cache holds another model's keys", {
        op,
        kind: "argument",
        argument: cacheArgument,
        expected: `${dtype} keys of ${config.nHead} heads of ${headDim}`,
        actual: `${cached.dtype} keys of shape ${fmtShape(cached.shape)}`,
      });
    }
    if (cache.batchSize !== undefined && cache.batchSize !== b) {
      throw new TensorqError("batch size differs from the cached sequences'", {
        op,
        kind: "shape",
        argument: "ids",
        expected: `batch ${cache.batchSize}`,
        actual: `shape ${fmtShape(ids.shape)}`,
      });
    }
  }
  const past = cache?.length ?? 0;
  if (past + t > config.nPositions) {
    throw new TensorqError("sequence longer than the model's positions", {
      op,
      kind: "shape",
      argument: "ids",
      expected: `at most ${config.nPositions} positions in all`,
      actual: `${past} cached + ${t} new`,
    });
  }
}

/**
 * Runs `build`, which appends the step's keys and values to `cache`, and with a cache
 * evaluates its result together with them, so that the cache holds values rather than
 * ever-growing graphs. A step that fails, when built or evaluated (an id out of the
 * vocabulary, say), leaves the cache as it was.
 */
function stepWithCache(cache: KVCache | undefined, build: () => Tensor): Tensor {
  const before = cache?.layers.map((l) => ({ key: l.key, value: l.value }));
  try {
    const out = build();
    if (cache) {
      const kv = cache.layers.flatMap((l) => [l.key!.node, l.value!.node]);
      realize([out.node, ...kv]);
    }
    return out;
  } catch (e) {
    cache?.layers.forEach((l, i) => {
      l.key = before![i].key;
      l.value = before![i].value;
    });
    throw e;
  }
}

// ---------------------------------------------------------------------------------------
// Modules

/** Options of the GPT-2 modules. */
export interface GPT2ModuleOptions {
  /** Parameter and activation dtype (default float32). */
  dtype?: DType;
}

/** Options of {@link GPT2Attention}. */
export interface GPT2AttentionOptions extends GPT2ModuleOptions {
  /** Index of the block (only matters with `scaleAttnByInverseLayerIdx`). */
  layerIdx?: number;
}

/**
 * Causal multi-head self-attention: `c_attn` (`Linear(d, 3d)`) gives q, k, v; per head
 * `softmax(q·kᵀ/√(d/h) masked causally)·v`; heads are merged and projected by `c_proj`.
 */
export class GPT2Attention extends Module {
  /** Heads. */
  readonly nHead: number;
  /** Width of one head. */
  readonly headDim: number;
  /** The divisor applied to the scores (√headDim, times layer index + 1 if configured). */
  readonly scoreDivisor: number;
  /** The q, k, v projection `[3d, d]`. */
  readonly c_attn: Linear;
  /** The output projection `[d, d]`. */
  readonly c_proj: Linear;

  /** Creates the layer with random weights. */
  constructor(config: GPT2Config, options: GPT2AttentionOptions = {}) {
    super();
    const op = "GPT2Attention";
    config = configArgument(op, config);
    options = optionsOf(op, options, ["dtype", "layerIdx"]);
    const layerIdx = options.layerIdx ?? 0;
    if (!Number.isSafeInteger(layerIdx) || layerIdx < 0 || layerIdx >= config.nLayer) {
      throw new TensorqError("layerIdx must be a block index of the config", {
        op,
        kind: "argument",
        argument: "options.layerIdx",
        expected: `an integer in [0, ${config.nLayer})`,
        actual: describeValue(layerIdx),
      });
    }
    const d = config.nEmbd;
    this.nHead = config.nHead;
    this.headDim = d / config.nHead;
    let divisor = config.scaleAttnWeights ? Math.sqrt(this.headDim) : 1;
    if (config.scaleAttnByInverseLayerIdx) divisor *= layerIdx + 1;
    this.scoreDivisor = divisor;
    this.c_attn = this.registerModule("c_attn", new Linear(d, 3 * d, { dtype: options.dtype }));
    this.c_proj = this.registerModule("c_proj", new Linear(d, d, { dtype: options.dtype }));
  }

  /**
   * Attends `x [B, T, d]` to itself and, when `past` holds keys and values, to those past
   * positions first. `past` (if given) is updated to hold the keys and values of all
   * positions (past and new).
   */
  forward(x: Tensor): Tensor;
  /** Attends `x` to the positions in `past` and its own, then extends `past`. */
  forward(x: Tensor, past: LayerKV | undefined): Tensor;
  forward(x: Tensor, past?: LayerKV): Tensor {
    const op = "GPT2Attention.forward";
    checkTensor(op, "x", x);
    const width = this.nHead * this.headDim;
    if (x.rank !== 3 || x.shape[2] !== width) {
      throw new TensorqError("x must be [batch, tokens, nEmbd]", {
        op,
        kind: "shape",
        argument: "x",
        expected: `shape [B, T, ${width}]`,
        actual: `shape ${fmtShape(x.shape)}`,
      });
    }
    checkPast(op, past);
    const [b, t, d] = x.shape;
    const heads = (z: Tensor) =>
      permute(reshape(z, [b, t, this.nHead, this.headDim]), [0, 2, 1, 3]);
    const [q, kNew, vNew] = split(this.c_attn.forward(x), 3, 2).map(heads);
    let k = kNew, v = vNew;
    if (past?.key && past.value) {
      k = concat([past.key, kNew], 2);
      v = concat([past.value, vNew], 2);
    }
    if (past) {
      past.key = k;
      past.value = v;
    }
    // One fused op: the new queries are the last t positions of the keys (causal,
    // bottom-right aligned), scores divided by scoreDivisor.
    const context = attention(q, k, v, { scale: 1 / this.scoreDivisor, causal: true });
    return this.c_proj.forward(reshape(permute(context, [0, 2, 1, 3]), [b, t, d]));
  }
}

/**
 * Throws unless `past` is absent or a layer's {key, value} pair: both tensors, or neither (an
 * empty layer). A primitive would fail as a TypeError on the write below, and a key without its
 * value would be silently dropped.
 */
function checkPast(op: string, past: unknown): void {
  if (past === undefined) return;
  const error = (argument: string, actual: unknown) =>
    new TensorqError("past must be one layer's keys and values", {
      op,
      kind: "argument",
      argument,
      expected: "{ key, value } with both tensors or neither (a KVCache layer)",
      actual: describeValue(actual),
    });
  if (!isPlainObject(past)) throw error("past", past);
  const { key, value } = past as LayerKV;
  if ((key === undefined) !== (value === undefined)) {
    throw error(key === undefined ? "past.key" : "past.value", undefined);
  }
  if (key !== undefined) {
    checkTensor(op, "past.key", key);
    checkTensor(op, "past.value", value);
  }
}

/**
 * The feed-forward block: `c_fc` (`Linear(d, nInner)`, `nInner` 4·d by default), the config's
 * activation (`gelu_new`, GELU's tanh form, by default), `c_proj` (`Linear(nInner, d)`).
 */
export class GPT2MLP extends Module {
  /** The activation. */
  readonly activation: GPT2Activation;
  /** The expansion `[nInner, d]`. */
  readonly c_fc: Linear;
  /** The projection back `[d, nInner]`. */
  readonly c_proj: Linear;

  /** Creates the block with random weights. */
  constructor(config: GPT2Config, options: GPT2ModuleOptions = {}) {
    super();
    config = configArgument("GPT2MLP", config);
    const { dtype } = optionsOf<GPT2ModuleOptions>("GPT2MLP", options, ["dtype"]);
    this.activation = config.activation;
    this.c_fc = this.registerModule("c_fc", new Linear(config.nEmbd, config.nInner, { dtype }));
    this.c_proj = this.registerModule("c_proj", new Linear(config.nInner, config.nEmbd, { dtype }));
  }

  /** `c_proj(act(c_fc(x)))`. */
  forward(x: Tensor): Tensor {
    return this.c_proj.forward(mlpActivation(this.activation, this.c_fc.forward(x)));
  }
}

/** `h` through GPT-2's MLP activation `activation`. */
function mlpActivation(activation: GPT2Activation, h: Tensor): Tensor {
  switch (activation) {
    case "gelu_new":
    case "gelu_pytorch_tanh":
      return gelu(h, { approximate: "tanh" });
    case "gelu":
      return gelu(h, { approximate: "none" });
    case "relu":
      return relu(h);
    case "silu":
    case "swish":
      return mul(h, sigmoid(h));
    case "tanh":
      return tanh(h);
  }
}

/** A transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`. */
export class GPT2Block extends Module {
  /** Norm before attention. */
  readonly ln_1: LayerNorm;
  /** Self-attention. */
  readonly attn: GPT2Attention;
  /** Norm before the MLP. */
  readonly ln_2: LayerNorm;
  /** Feed-forward. */
  readonly mlp: GPT2MLP;

  /** Creates the block with random weights. */
  constructor(config: GPT2Config, options: GPT2AttentionOptions = {}) {
    super();
    config = configArgument("GPT2Block", config);
    const { dtype, layerIdx } = optionsOf<GPT2AttentionOptions>("GPT2Block", options, [
      "dtype",
      "layerIdx",
    ]);
    const ln = { eps: config.layerNormEpsilon, dtype };
    this.ln_1 = this.registerModule("ln_1", new LayerNorm(config.nEmbd, ln));
    this.attn = this.registerModule("attn", new GPT2Attention(config, { dtype, layerIdx }));
    this.ln_2 = this.registerModule("ln_2", new LayerNorm(config.nEmbd, ln));
    this.mlp = this.registerModule("mlp", new GPT2MLP(config, { dtype }));
  }

  /** Applies the block to `x [B, T, d]`. */
  forward(x: Tensor): Tensor;
  /** Applies the block to `x [B, T, d]`, attending also to (and updating) `past`. */
  forward(x: Tensor, past: LayerKV | undefined): Tensor;
  forward(x: Tensor, past?: LayerKV): Tensor {
    const h = add(x, this.attn.forward(this.ln_1.forward(x), past));
    return add(h, this.mlp.forward(this.ln_2.forward(h)));
  }
}

/** The trunk (`transformer.*`): embeddings, blocks `h.N`, final norm `ln_f`. */
export class GPT2Model extends Module {
  /** The config. */
  readonly config: GPT2Config;
  /** Token embeddings `[vocab, d]`. */
  readonly wte: Embedding;
  /** Position embeddings `[nPositions, d]`. */
  readonly wpe: Embedding;
  /** The blocks, named `0` ... `nLayer - 1`. */
  readonly h: Sequential;
  /** Final layer norm. */
  readonly ln_f: LayerNorm;

  /** Creates the trunk with random weights. */
  constructor(config: GPT2Config, options: GPT2ModuleOptions = {}) {
    super();
    this.config = config = configArgument("GPT2Model", config);
    const { dtype } = optionsOf<GPT2ModuleOptions>("GPT2Model", options, ["dtype"]);
    this.wte = this.registerModule("wte", new Embedding(config.vocabSize, config.nEmbd, { dtype }));
    this.wpe = this.registerModule(
      "wpe",
      new Embedding(config.nPositions, config.nEmbd, { dtype }),
    );
    const blocks = Array.from(
      { length: config.nLayer },
      (_, layerIdx) => new GPT2Block(config, { dtype, layerIdx }),
    );
    this.h = this.registerModule("h", new Sequential(...blocks));
    this.ln_f = this.registerModule(
      "ln_f",
      new LayerNorm(config.nEmbd, { eps: config.layerNormEpsilon, dtype }),
    );
  }

  /** The block at `index` (negative counts from the end, as in `Sequential.at`). */
  block(index: number): GPT2Block {
    const n = this.config.nLayer;
    if (!Number.isSafeInteger(index) || index < -n || index >= n) {
      throw new TensorqError("no block at this index", {
        op: "GPT2Model.block",
        kind: "argument",
        argument: "index",
        expected: `an integer in [${-n}, ${n})`,
        actual: describeValue(index),
      });
    }
    return this.h.at(index) as GPT2Block;
  }

  /**
   * Hidden states `[B, T, d]` for `ids [B, T]`. Positions start at `cache.length` when a
   * cache is given (whose layers are updated); with a cache the step is evaluated at once, as
   * in {@link GPT2LMHeadModel.forward}, and one that fails leaves the cache as it was.
   */
  forward(ids: Tensor): Tensor;
  /** Hidden states for `ids` following the cached positions; the cache is extended. */
  forward(ids: Tensor, cache: KVCache | undefined): Tensor;
  forward(ids: Tensor, cache?: KVCache): Tensor {
    const op = "GPT2Model.forward";
    checkIds(op, ids);
    // null is "no cache", as in GPT2LMHeadModel.forward's options.
    cache ??= undefined;
    checkForwardFits(op, "cache", this.config, this.wte.weight.dtype, ids, cache);
    const input = ids.device === this.wte.weight.device ? ids : ids.to(this.wte.weight.device);
    return stepWithCache(
      cache,
      () => buildSharingTrace(this, () => trunkGraph(this, input, cache)),
    );
  }
}

/** GPT2Model's forward graph, unchecked (both models' forwards check before they build it). */
function trunkGraph(model: GPT2Model, ids: Tensor, cache: KVCache | undefined): Tensor {
  const t = ids.shape[1];
  const start = cache?.length ?? 0;
  const positions = tensor(Int32Array.from({ length: t }, (_, i) => start + i), {
    device: ids.device,
  });
  let x = add(model.wte.forward(ids), model.wpe.forward(positions));
  for (let i = 0; i < model.config.nLayer; i++) {
    x = model.block(i).forward(x, cache?.layers[i]);
  }
  return model.ln_f.forward(x);
}

/** Options of {@link GPT2LMHeadModel.forward}. */
export interface GPT2ForwardOptions {
  /**
   * Past keys and values: the new tokens follow the cached ones, and the cache is extended
   * with them. With a cache the step is evaluated at once (logits, keys and values
   * together) so the cache holds values rather than ever-growing graphs. Null or absent: no
   * cache.
   */
  cache?: KVCache;
}

/** Options of {@link GPT2LMHeadModel.fromPretrained}. */
export interface GPT2LoadOptions {
  /** Device of the parameters (default "cpu"). */
  device?: string;
  /** Parameter dtype (default float32; checkpoint floats are converted). */
  dtype?: DType;
}

/** Options of {@link GPT2LMHeadModel.random}. */
export interface GPT2RandomOptions extends GPT2LoadOptions {
  /** Seed of the weights (default 0): the same seed gives the same model. */
  seed?: number;
}

const LOAD_OP = "GPT2LMHeadModel.fromPretrained";
/** HF `Conv1D` layers: weights stored `[in, out]`. */
const CONV1D_WEIGHT = /\.(c_attn|c_proj|c_fc)\.weight$/;
/** Causal-mask buffers saved by older HF versions: not parameters. */
const ATTN_BUFFER = /(^|\.)attn\.(masked_)?bias$/;
const FLOAT_DTYPES: readonly DType[] = ["float32", "float16", "bfloat16"];

function checkModelDType(op: string, dtype: unknown): DType {
  const d = checkDType(op, "dtype", dtype ?? "float32");
  if (!FLOAT_DTYPES.includes(d)) {
    throw new TensorqError("model dtype must be a float type", {
      op,
      kind: "dtype",
      argument: "dtype",
      expected: FLOAT_DTYPES.join(", "),
      actual: d,
    });
  }
  return d;
}

/**
 * GPT-2 with a language-model head: `transformer` ({@link GPT2Model}) and `lm_head`
 * (`Linear(d, vocab)`, no bias), whose weight is `transformer.wte`'s own tensor when the
 * config ties them. Parameter names are Hugging Face's.
 */
export class GPT2LMHeadModel extends Module {
  /** The config. */
  readonly config: GPT2Config;
  /** The trunk. */
  readonly transformer: GPT2Model;
  /** The output projection `[vocab, d]`. */
  readonly lm_head: Linear;

  /** Creates the model with random weights (see {@link GPT2LMHeadModel.random}). */
  constructor(config: GPT2Config, options: GPT2ModuleOptions = {}) {
    super();
    const op = "GPT2LMHeadModel";
    this.config = configArgument(op, config);
    options = optionsOf(op, options, ["dtype"]);
    const dtype = checkModelDType(op, options.dtype);
    this.transformer = this.registerModule("transformer", new GPT2Model(this.config, { dtype }));
    this.lm_head = this.registerModule(
      "lm_head",
      new Linear(this.config.nEmbd, this.config.vocabSize, { bias: false, dtype }),
    );
    this.tieWeights();
  }

  /** Parameter dtype. */
  get dtype(): DType {
    return this.lm_head.dtype;
  }

  /** Device of the parameters. */
  get device(): string {
    return this.transformer.wte.weight.device;
  }

  /** Makes `lm_head.weight` the very tensor of `transformer.wte.weight` (if tied). */
  tieWeights(): void {
    const table = this.transformer.wte.stateDict().weight; // unset while loading a checkpoint
    if (this.config.tieWordEmbeddings && table) this.lm_head.weight = table;
  }

  /** An empty cache sized for this model. */
  createCache(): KVCache {
    return new KVCache(this.config.nLayer);
  }

  /**
   * Logits `[B, T, vocab]` for token ids `[B, T]` (int32 or int64, each in [0, vocab); moved
   * to the model's device if needed). An id outside the vocabulary raises when the logits are
   * evaluated. The cache goes in the options (`forward(ids, { cache })`): a {@link KVCache}
   * passed in their place is an error.
   */
  forward(ids: Tensor): Tensor;
  /** Logits for `ids`; with `options.cache` the ids continue the cached sequence. */
  forward(ids: Tensor, options: GPT2ForwardOptions): Tensor;
  forward(ids: Tensor, options: GPT2ForwardOptions = {}): Tensor {
    const op = "GPT2LMHeadModel.forward";
    if (options instanceof KVCache) {
      // forward(ids, cache) used to run without the cache, silently.
      throw new TensorqError("pass the cache as forward(ids, { cache })", {
        op,
        kind: "argument",
        argument: "options",
        expected: "an object with cache",
        actual: "a KVCache",
      });
    }
    options = optionsOf(op, options, ["cache"]);
    checkIds(op, ids);
    // null is "no cache" as in optionsOf; any other non-cache (0, "") is an error, not absent.
    const cache = options.cache ?? undefined;
    const dtype = this.transformer.wte.weight.dtype;
    checkForwardFits(op, "options.cache", this.config, dtype, ids, cache);
    const device = this.device;
    const input = ids.device === device ? ids : ids.to(device);
    return stepWithCache(
      cache,
      () =>
        buildSharingTrace(
          this,
          () => this.lm_head.forward(trunkGraph(this.transformer, input, cache)),
        ),
    );
  }

  /**
   * Loads a Hugging Face GPT-2 checkpoint directory (`config.json` plus `model.safetensors`
   * or a sharded index). Conv1D weights (`[in, out]`) are transposed once to Linear's
   * `[out, in]`; causal-mask buffers are skipped; `lm_head` is tied to `wte` when the config
   * ties them. Missing, unexpected or mis-shaped tensors raise one error naming each.
   * Checkpoints saved without the `transformer.` prefix (the original `gpt2` files) load too.
   */
  static fromPretrained(dir: string | URL, options: GPT2LoadOptions = {}): GPT2LMHeadModel {
    options = optionsOf(LOAD_OP, options, ["device", "dtype"]);
    const dtype = checkModelDType(LOAD_OP, options.dtype);
    // Before the checkpoint is read, not at the first tensor moved.
    if (options.device !== undefined) parseDevice(LOAD_OP, options.device, "options.device");
    using ckpt = loadHfCheckpoint(dir);
    const config = parseGPT2Config(ckpt.config);
    // Parameters stay unset until the checkpoint's tensors arrive: no random init to discard.
    const model = withoutInitialization(() => new GPT2LMHeadModel(config, { dtype }));
    const tied = config.tieWordEmbeddings;

    // Expected tensors in HF layout, by model name.
    const expected = new Map<string, number[]>();
    for (const [name, spec] of model.parameterSpecs()) {
      if (tied && name === "lm_head.weight") continue;
      const shape = [...spec.shape];
      expected.set(name, CONV1D_WEIGHT.test(name) ? [shape[1], shape[0]] : shape);
    }
    // Checkpoint name → model name.
    // GPT2Model checkpoints name the transformer's tensors without the "transformer." prefix
    // that GPT2LMHeadModel's have.
    const prefixed = !ckpt.names.some((name) => name.startsWith("transformer."));
    const fileName = new Map<string, string>();
    const unexpected: string[] = [];
    let tiedHead: string | undefined;
    for (const name of ckpt.names) {
      if (ATTN_BUFFER.test(name)) continue;
      const key = prefixed && !name.startsWith("lm_head.") ? `transformer.${name}` : name;
      if (tied && key === "lm_head.weight") {
        tiedHead = name; // HF ties it regardless
        continue;
      }
      if (expected.has(key)) fileName.set(key, name);
      else unexpected.push(name);
    }
    // A tied pair saved once under the head's name (safetensors' save_model keeps one name of
    // tensors that share memory): the embedding is that tensor, as transformers loads it.
    if (tied && tiedHead !== undefined && !fileName.has("transformer.wte.weight")) {
      fileName.set("transformer.wte.weight", tiedHead);
    }
    const missing = [...expected.keys()].filter((k) => !fileName.has(k));
    const wrong: string[] = [];
    for (const [key, name] of fileName) {
      const info = ckpt.info(name);
      const want = expected.get(key)!;
      if (info.shape.join(",") !== want.join(",")) {
        wrong.push(`'${name}': expected ${fmtShape(want)}, got ${fmtShape(info.shape)}`);
      } else if (!FLOAT_DTYPES.includes(info.dtype) && info.dtype !== "float8e4m3") {
        wrong.push(`'${name}': expected a float dtype, got ${info.dtype}`);
      }
    }
    if (missing.length || unexpected.length || wrong.length) {
      const parts: string[] = [];
      if (missing.length) parts.push(`missing tensors: ${missing.map((n) => `'${n}'`).join(", ")}`);
      if (wrong.length) parts.push(`wrong shape or dtype (HF layout): ${wrong.join("; ")}`);
      if (unexpected.length) {
        parts.push(`unexpected tensors: ${unexpected.map((n) => `'${n}'`).join(", ")}`);
      }
      throw new TensorqError(`checkpoint ${ckpt.dir} does not fit GPT-2: ${parts.join(" | ")}`, {
        op: LOAD_OP,
        kind: wrong.length && !missing.length && !unexpected.length ? "shape" : "io",
        argument: "dir",
      });
    }

    const device = options.device ?? "cpu";
    const dict: Record<string, Tensor> = {};
    for (const [key, name] of fileName) {
      let t = ckpt.tensor(name);
      let changed = false;
      if (CONV1D_WEIGHT.test(key)) {
        t = transpose(t, 0, 1);
        changed = true;
      }
      if (t.dtype !== dtype) {
        t = cast(t, dtype);
        changed = true;
      }
      // Materialize once here so the forward never repeats the layout change.
      if (changed) t.evaluate();
      dict[key] = device === t.device ? t : t.to(device);
    }
    if (tied) dict["lm_head.weight"] = dict["transformer.wte.weight"];
    model.loadStateDict(dict, { strict: true });
    return model;
  }

  /**
   * A model with seeded random weights in GPT-2's initialization (normal, std 0.02 for
   * weights; zero biases; unit norm scales), for benchmarks and tests. `config` may be
   * partial (see {@link gpt2Config}).
   */
  static random(
    config: Partial<GPT2Config>,
    options: GPT2RandomOptions = {},
  ): GPT2LMHeadModel {
    const op = "GPT2LMHeadModel.random";
    const checked = configArgument(op, config);
    options = optionsOf(op, options, ["dtype", "device", "seed"]);
    const dtype = checkModelDType(op, options.dtype);
    const seed = checkSeed(op, options.seed ?? 0, "options.seed");
    if (options.device !== undefined) parseDevice(op, options.device, "options.device");
    const model = withoutInitialization(() => new GPT2LMHeadModel(checked, { dtype }));
    const seeds = new RandomStream(seed);
    const device = options.device ?? "cpu";
    const dict: Record<string, Tensor> = {};
    for (const [name, spec] of model.parameterSpecs()) {
      if (model.config.tieWordEmbeddings && name === "lm_head.weight") continue;
      const shape = [...spec.shape];
      const isNorm = /(^|\.)ln_(1|2|f)\./.test(name);
      dict[name] = name.endsWith(".bias")
        ? full(shape, 0, { dtype, device })
        : isNorm
        ? full(shape, 1, { dtype, device })
        : randn(shape, { std: 0.02, dtype, device, seed: seeds.nextUint32() });
    }
    if (model.config.tieWordEmbeddings) dict["lm_head.weight"] = dict["transformer.wte.weight"];
    model.loadStateDict(dict, { strict: true });
    return model;
  }
}

/**
 * The (layer norm → Linear) pairs of a GPT-2 that SmoothQuant can smooth: `ln_1` feeds
 * `attn.c_attn` and `ln_2` feeds `mlp.c_fc` in every block (the other Linears follow
 * attention or the activation, not a norm).
 */
export function gpt2SmoothQuantPairs(config: GPT2Config): { norm: string; linears: string[] }[] {
  config = configArgument("gpt2SmoothQuantPairs", config);
  const pairs: { norm: string; linears: string[] }[] = [];
  for (let i = 0; i < config.nLayer; i++) {
    pairs.push({ norm: `transformer.h.${i}.ln_1`, linears: [`transformer.h.${i}.attn.c_attn`] });
    pairs.push({ norm: `transformer.h.${i}.ln_2`, linears: [`transformer.h.${i}.mlp.c_fc`] });
  }
  return pairs;
}

// ---------------------------------------------------------------------------------------
// Generation, loss, byte tokenizer

/** Options of {@link generate}. */
export interface GenerateOptions {
  /** Tokens to generate (at most; fewer when a stop token comes). */
  maxNewTokens: number;
  /** `"greedy"` (argmax, default) or `"sample"` (from the softmax of logits / temperature). */
  strategy?: "greedy" | "sample";
  /**
   * Sample only among the `topK` most likely tokens (default: all; an integer >= 1, checked
   * with either strategy). Tokens tied with the `topK`-th largest logit are all kept, as in
   * Hugging Face's top-k filter.
   */
  topK?: number;
  /**
   * Divides the logits before sampling (default 1; must be > 0 when sampling). Greedy decoding
   * ignores it, but still takes only a finite number >= 0 (0 is a common way to ask for greedy).
   */
  temperature?: number;
  /**
   * Seed of the sampling stream (default 0), any safe integer, as for `rand`: the same seed
   * gives the same tokens.
   */
  seed?: number;
  /** Decode with a {@link KVCache} (default true) rather than re-running the whole sequence. */
  cache?: boolean;
  /**
   * Decode with the fixed-shape compiled step of {@link buildStaticDecoder} (planned once; one
   * CUDA graph replay per token on a GPU) rather than the growing {@link KVCache}, which plans
   * each new cache length again. Default: true with `cache`, which it needs.
   */
  compiled?: boolean;
  /** Stop after emitting any of these tokens (it is included in the result). */
  stopTokens?: readonly number[];
  /** Called with each new token as soon as it is chosen. */
  onToken?: (id: number) => void;
}

const GEN_OP = "generate";
/** Throws unless `model` is a GPT2LMHeadModel (generation and the decoder read its modules). */
export function checkGpt2Model(op: string, model: unknown): asserts model is GPT2LMHeadModel {
  if (model instanceof GPT2LMHeadModel) return;
  throw new TensorqError("model must be a GPT2LMHeadModel", {
    op,
    kind: "argument",
    argument: "model",
    expected: "a GPT2LMHeadModel (e.g. from GPT2LMHeadModel.fromPretrained)",
    actual: describeValue(model),
  });
}

const GEN_OPTIONS = [
  "maxNewTokens",
  "strategy",
  "topK",
  "temperature",
  "seed",
  "cache",
  "compiled",
  "stopTokens",
  "onToken",
];

function promptToIds(model: GPT2LMHeadModel, prompt: readonly number[] | Tensor): number[] {
  let ids: number[];
  if (prompt instanceof Tensor) {
    checkTensor(GEN_OP, "promptIds", prompt); // a disposed prompt has no ids to read
    const ok = (prompt.dtype === "int32" || prompt.dtype === "int64") &&
      (prompt.rank === 1 || (prompt.rank === 2 && prompt.shape[0] === 1));
    if (!ok) {
      throw new TensorqError("prompt tensor must hold one sequence of integer ids", {
        op: GEN_OP,
        kind: "shape",
        argument: "promptIds",
        expected: "int32/int64 of shape [T] or [1, T]",
        actual: `${prompt.dtype} ${fmtShape(prompt.shape)}`,
      });
    }
    ids = Array.from(prompt.dataSync() as Int32Array | BigInt64Array, Number);
  } else if (Array.isArray(prompt)) {
    if (prompt.some(Array.isArray)) {
      throw new TensorqError("prompt must be one sequence of ids (generate takes one prompt)", {
        op: GEN_OP,
        kind: "shape",
        argument: "promptIds",
        expected: "number[] (or a [1, T] tensor)",
        actual: "an array of arrays",
      });
    }
    ids = [...prompt];
  } else {
    throw new TensorqError("prompt must be an array of ids or a tensor", {
      op: GEN_OP,
      kind: "argument",
      argument: "promptIds",
      expected: "number[] or Tensor",
      actual: describeValue(prompt),
    });
  }
  const vocab = model.config.vocabSize;
  if (ids.length === 0) {
    throw new TensorqError("prompt is empty", {
      op: GEN_OP,
      kind: "argument",
      argument: "promptIds",
      expected: "at least one token",
      actual: "0 tokens",
    });
  }
  checkIdsInVocab(ids, vocab, "prompt holds an id outside the vocabulary", "promptIds");
  return ids;
}

/**
 * Throws `problem`, naming `argument[i]`, for the first of `ids` not a token id of `vocab`
 * (an integer in [0, vocab)).
 */
function checkIdsInVocab(
  ids: readonly unknown[],
  vocab: number,
  problem: string,
  argument: string,
  op = GEN_OP,
): void {
  const bad = ids.findIndex((v) =>
    typeof v !== "number" || !Number.isInteger(v) || v < 0 || v >= vocab
  );
  if (bad < 0) return;
  throw new TensorqError(problem, {
    op,
    kind: "argument",
    argument: `${argument}[${bad}]`,
    expected: `an integer in [0, ${vocab})`,
    actual: describeValue(ids[bad]),
  });
}

/** Index of the largest value (the first one on ties). */
/** The first largest entry's index, or -1 when the row holds NaN (in the same pass). */
function argmaxOf(row: ArrayLike<number>): number {
  let best = 0;
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) {
    const v = row[i];
    if (v > max) {
      max = v;
      best = i;
    } else if (v !== v) return -1;
  }
  return best;
}

/**
 * Refuses a logits row no token can be chosen from: NaN (the model's output broke; argmax
 * would name token 0), and when sampling +Infinity or only -Infinity, where the softmax is
 * undefined. Greedy decoding takes an infinite row as it is (argmax: the first largest).
 */
function checkLogitsRow(row: ArrayLike<number>, sampling: boolean, step: number): void {
  let bad = -1;
  let finite = false;
  for (let i = 0; i < row.length && bad < 0; i++) {
    const v = row[i];
    if (Number.isNaN(v) || (sampling && v === Infinity)) bad = i;
    else if (v !== -Infinity) finite = true;
  }
  if (bad < 0 && (finite || !sampling)) return;
  throw unusableLogits(
    step,
    sampling,
    bad >= 0 ? `${row[bad]} at token id ${bad}` : "-Infinity at every token id",
  );
}

/** The error of new token `step`'s logits, `found` saying what is wrong with them. */
function unusableLogits(step: number, sampling: boolean, found: string): TensorqError {
  return new TensorqError(`the logits of new token ${step} are not usable`, {
    op: GEN_OP,
    kind: "state",
    expected: sampling
      ? "finite logits to sample from (softmax of NaN or ±Infinity is undefined)"
      : "logits without NaN",
    actual: found,
  });
}

/**
 * The k-th largest of `values` (1 <= k <= length, no NaN). A min-heap of the k largest seen
 * takes one pass: for GPT-2's 50257 logits and k = 20 about 0.1 ms, where sorting a copy took
 * 6 ms a token, fifteen times the GPU's decode step. Large k sort.
 * @internal Exported for tests.
 */
export function kthLargest(values: ArrayLike<number>, k: number): number {
  const n = values.length;
  if (k > 4096) return Float64Array.from(values).sort()[n - k];
  const heap = new Float64Array(k); // heap[0]: the smallest kept
  for (let i = 0; i < k; i++) {
    const v = values[i];
    let c = i;
    while (c > 0) {
      const parent = (c - 1) >> 1;
      if (heap[parent] <= v) break;
      heap[c] = heap[parent];
      c = parent;
    }
    heap[c] = v;
  }
  for (let i = k; i < n; i++) {
    const v = values[i];
    if (!(v > heap[0])) continue;
    let c = 0;
    for (;;) {
      let child = 2 * c + 1;
      if (child >= k) break;
      if (child + 1 < k && heap[child + 1] < heap[child]) child++;
      if (heap[child] >= v) break;
      heap[c] = heap[child];
      c = child;
    }
    heap[c] = v;
  }
  return heap[0];
}

/**
 * Draws from softmax(row / temperature) restricted to the topK largest (and those tied with
 * the topK-th), by inverting the cumulative weights at one uniform draw of `stream`.
 * @internal Exported for tests.
 */
export function sampleFrom(
  row: ArrayLike<number>,
  temperature: number,
  topK: number,
  stream: RandomStream,
): number {
  const n = row.length;
  const threshold = topK < n ? kthLargest(row, topK) : -Infinity;
  // The kept tokens in id order: the sums and the walk below see them as a pass over the
  // whole row would, so a seed gives the same token.
  const kept: number[] = [];
  let mx = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = row[i];
    if (x >= threshold) {
      kept.push(i);
      if (x > mx) mx = x;
    }
  }
  const weights = new Float64Array(kept.length);
  let total = 0;
  for (let j = 0; j < kept.length; j++) {
    total += weights[j] = Math.exp((row[kept[j]] - mx) / temperature);
  }
  let u = stream.uniform() * total;
  let last = 0;
  for (let j = 0; j < kept.length; j++) {
    if (weights[j] === 0) continue;
    last = kept[j];
    u -= weights[j];
    if (u < 0) return kept[j];
  }
  return last; // rounding left u just above 0
}

/**
 * Generates up to `maxNewTokens` tokens after `promptIds` (one sequence) and returns the new
 * tokens only. Greedy takes the argmax (first on ties); sampling draws from
 * softmax(logits / temperature), optionally restricted to the `topK` largest, with a
 * {@link RandomStream} seeded by `seed`, so it is reproducible. The prompt plus the new
 * tokens must fit in `nPositions`.
 */
export function generate(
  model: GPT2LMHeadModel,
  promptIds: readonly number[] | Tensor,
  options: GenerateOptions,
): number[] {
  checkGpt2Model(GEN_OP, model);
  const prompt = promptToIds(model, promptIds);
  // maxNewTokens is required, so absent options fail on it below.
  options = optionsOf(GEN_OP, options, GEN_OPTIONS);
  const maxNew = options.maxNewTokens;
  if (!Number.isSafeInteger(maxNew) || maxNew < 0) {
    throw new TensorqError("maxNewTokens must be a non-negative integer", {
      op: GEN_OP,
      kind: "argument",
      argument: "maxNewTokens",
      expected: "an integer >= 0",
      actual: describeValue(maxNew),
    });
  }
  const strategy = options.strategy ?? "greedy";
  if (strategy !== "greedy" && strategy !== "sample") {
    throw new TensorqError("unknown strategy", {
      op: GEN_OP,
      kind: "argument",
      argument: "strategy",
      expected: '"greedy" or "sample"',
      actual: describeValue(strategy),
    });
  }
  const temperature = options.temperature ?? 1;
  // Greedy decoding ignores the temperature (0 is a common way to ask for it).
  const least = strategy === "sample" ? "> 0" : ">= 0";
  const sampling = strategy === "sample";
  if (
    typeof temperature !== "number" || !Number.isFinite(temperature) ||
    (sampling ? !(temperature > 0) : temperature < 0)
  ) {
    throw new TensorqError(`temperature must be a finite number ${least}`, {
      op: GEN_OP,
      kind: "argument",
      argument: "temperature",
      expected: `a finite number ${least}${sampling ? " when sampling" : ""}`,
      actual: describeValue(temperature),
    });
  }
  const vocab = model.config.vocabSize;
  const topK = options.topK ?? vocab;
  if (!Number.isSafeInteger(topK) || topK <= 0) {
    throw new TensorqError("topK must be a positive integer", {
      op: GEN_OP,
      kind: "argument",
      argument: "topK",
      expected: "an integer >= 1",
      actual: describeValue(topK),
    });
  }
  if (prompt.length > model.config.nPositions) {
    throw new TensorqError("prompt is longer than the model's positions", {
      op: GEN_OP,
      kind: "argument",
      argument: "promptIds",
      expected: `at most ${model.config.nPositions} tokens`,
      actual: `${prompt.length} tokens`,
    });
  }
  if (prompt.length + maxNew > model.config.nPositions) {
    throw new TensorqError("prompt plus new tokens exceed the model's positions", {
      op: GEN_OP,
      kind: "argument",
      argument: "maxNewTokens",
      expected: `prompt (${prompt.length}) + maxNewTokens <= ${model.config.nPositions}`,
      actual: describeValue(maxNew),
    });
  }
  const stream = new RandomStream(checkSeed(GEN_OP, options.seed ?? 0));
  if (options.onToken !== undefined && typeof options.onToken !== "function") {
    throw new TensorqError("onToken must be a function", {
      op: GEN_OP,
      kind: "argument",
      argument: "onToken",
      expected: "(id: number) => void",
      actual: describeValue(options.onToken),
    });
  }
  const stopList = options.stopTokens ?? [];
  if (!Array.isArray(stopList)) {
    throw new TensorqError("stopTokens must be an array of token ids", {
      op: GEN_OP,
      kind: "argument",
      argument: "stopTokens",
      expected: "number[]",
      actual: describeValue(stopList),
    });
  }
  checkIdsInVocab(stopList, vocab, "stop token outside the vocabulary", "stopTokens");
  const stops = new Set(stopList);
  // Read as booleans: the string "false" is truthy.
  const useCache = options.cache === undefined
    ? true
    : checkBoolean(GEN_OP, "cache", options.cache);
  const device = model.device;
  const compiled = options.compiled === undefined
    ? useCache
    : checkBoolean(GEN_OP, "compiled", options.compiled);
  if (compiled && !useCache) {
    throw new TensorqError("the compiled decoder needs the KV cache", {
      op: GEN_OP,
      kind: "argument",
      argument: "compiled",
      expected: "cache: true (the default) with compiled: true",
      actual: "cache: false",
    });
  }
  const out: number[] = [];
  /** Takes `next` as the new token: it, and whether generation goes on. */
  const accept = (next: number): Chosen => {
    out.push(next);
    options.onToken?.(next);
    return { next, more: !stops.has(next) && out.length < maxNew };
  };
  /** Chooses the next token from a logits row. */
  const choose = (row: ArrayLike<number>): Chosen => {
    let next: number;
    if (strategy === "greedy") {
      // argmax finds a NaN in its own pass: a second pass over the row would add to every step.
      next = argmaxOf(row);
      if (next < 0) checkLogitsRow(row, false, out.length); // throws: the row holds NaN
    } else {
      checkLogitsRow(row, true, out.length);
      next = sampleFrom(row, temperature, Math.min(topK, vocab), stream);
    }
    return accept(next);
  };
  /**
   * Takes the decode step's own argmax, `id` with its logit `logit`: the greedy choice, as
   * {@link argmaxOf} makes it (the first largest; the first NaN when there is one).
   */
  const acceptArgmax = (id: number, logit: number): Chosen => {
    if (Number.isNaN(logit)) throw unusableLogits(out.length, false, `NaN at token id ${id}`);
    return accept(id);
  };
  if (maxNew === 0) return out;
  if (compiled) {
    decodeCompiled(model, prompt, maxNew, choose, strategy === "greedy" ? acceptArgmax : undefined);
    return out;
  }
  const cache = useCache ? model.createCache() : undefined;
  const sequence = [...prompt];
  let feed = prompt;
  for (;;) {
    const ids = tensor(Int32Array.from(feed), { shape: [1, feed.length], device });
    const logits = model.forward(ids, { cache });
    const { next, more } = choose(slice(logits, [0, -1]).dataSync() as Float32Array);
    if (!more) break;
    sequence.push(next);
    feed = cache ? [next] : sequence;
  }
  return out;
}

/** A chosen token, and whether generation goes on. */
interface Chosen {
  next: number;
  more: boolean;
}

/**
 * {@link generate}'s loop on a {@link buildStaticDecoder} step sized for the prompt and the new
 * tokens (slots rounded up to a multiple of 64, within nPositions). `choose` picks a token from
 * a logits row and says whether to go on. With `acceptArgmax` (greedy decoding), the tokens
 * after the first are the step's own argmax: it stays on the device as the next step's input,
 * and only it and its logit are read back, not the whole row (on a GPU that row's copy and
 * scan took 0.3 ms of a GPT-2-small token's 0.8).
 */
function decodeCompiled(
  model: GPT2LMHeadModel,
  prompt: readonly number[],
  maxNew: number,
  choose: (row: ArrayLike<number>) => Chosen,
  acceptArgmax?: (id: number, logit: number) => Chosen,
): void {
  const device = model.device;
  const needed = prompt.length + maxNew;
  const maxLength = Math.min(model.config.nPositions, Math.max(2, Math.ceil(needed / 64) * 64));
  const decoder = buildStaticDecoder(model, { batch: 1, maxLength });
  const ids = tensor(Int32Array.from(prompt), { shape: [1, prompt.length], device });
  let state: DecodeState | undefined;
  try {
    const first = decoder.prefill(ids);
    state = first.state;
    for (const layer of first.kv.layers) [layer.key, layer.value].forEach((t) => t?.dispose());
    let chosen = choose(slice(first.logits, [0, -1]).dataSync() as Float32Array);
    first.logits.dispose();
    let fed = false; // state.ids already holds chosen.next (the step's argmax)
    while (chosen.more) {
      if (!fed) {
        // Feed the chosen token (the step's own argmax is only the greedy choice).
        state.ids.dispose();
        state.ids = tensor(Int32Array.of(chosen.next), { shape: [1, 1], device });
      }
      const { state: next, logits } = decoder.step(state);
      disposeState(state); // its cache was consumed; its ids and position are spent
      state = next;
      if (acceptArgmax) {
        const id = (state.ids.dataSync() as Int32Array)[0];
        const picked = gather(logits, state.ids, 2); // [1, 1, 1, 1]: the argmax's logit
        const logit = (picked.dataSync() as Float32Array)[0];
        picked.dispose();
        chosen = acceptArgmax(id, logit);
        fed = true;
      } else chosen = choose(logits.dataSync() as Float32Array);
      logits.dispose();
    }
  } finally {
    if (state) disposeState(state);
    decoder.dispose();
  }
}

/** Options of {@link lossFromLogits}. */
export interface LossOptions {
  /**
   * True (default): `ids` are the inputs that produced the logits and position t is scored
   * against `ids[t + 1]` (Hugging Face's `labels` convention). False: `ids` are the targets
   * of each position already.
   */
  shift?: boolean;
}

/**
 * Mean next-token cross entropy (nats) of `logits [B, T, vocab]` against `ids [B, T]`
 * (int32/int64), computed with log-softmax and gather.
 */
export function lossFromLogits(logits: Tensor, ids: Tensor, options: LossOptions = {}): number {
  const op = "lossFromLogits";
  options = optionsOf(op, options, ["shift"]);
  if (!(logits instanceof Tensor) || logits.rank !== 3) {
    throw new TensorqError("logits must be [batch, tokens, vocab]", {
      op,
      kind: "shape",
      argument: "logits",
      expected: "rank 3",
      actual: logits instanceof Tensor ? `shape ${fmtShape(logits.shape)}` : describeValue(logits),
    });
  }
  const [b, t, vocab] = logits.shape;
  const shift = options.shift === undefined ? true : checkBoolean(op, "shift", options.shift);
  if (
    !(ids instanceof Tensor) || ids.rank !== 2 || ids.shape[0] !== b || ids.shape[1] !== t ||
    (ids.dtype !== "int32" && ids.dtype !== "int64")
  ) {
    throw new TensorqError("ids must be int32/int64 [batch, tokens] matching the logits", {
      op,
      kind: "shape",
      argument: "ids",
      expected: `int32/int64 ${fmtShape([b, t])}`,
      actual: ids instanceof Tensor ? `${ids.dtype} ${fmtShape(ids.shape)}` : describeValue(ids),
    });
  }
  const steps = shift ? t - 1 : t;
  if (steps <= 0 || b === 0) {
    throw new TensorqError("no position to score", {
      op,
      kind: "shape",
      argument: "logits",
      expected: shift ? "at least 2 tokens" : "at least 1 token",
      actual: `shape ${fmtShape(logits.shape)}`,
    });
  }
  const targets = Array.from(ids.dataSync() as Int32Array | BigInt64Array, Number);
  const flatIndex = new Int32Array(b * steps);
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < steps; j++) {
      const target = targets[i * t + j + (shift ? 1 : 0)];
      if (!Number.isInteger(target) || target < 0 || target >= vocab) {
        throw new TensorqError("target id outside the vocabulary", {
          op,
          kind: "argument",
          argument: `ids[${i}, ${j + (shift ? 1 : 0)}]`,
          expected: `an integer in [0, ${vocab})`,
          actual: String(target),
        });
      }
      flatIndex[i * steps + j] = (i * steps + j) * vocab + target;
    }
  }
  const scored = shift ? slice(logits, [null, [0, steps]]) : logits;
  const logp = reshape(logSoftmax(scored, -1), [b * steps * vocab]);
  const picked = gather(logp, tensor(flatIndex, { device: logits.device }), 0);
  return -mean(cast(picked, "float32")).item();
}

/** UTF-8 bytes of `text`: the token ids of a byte-level model. */
export function encodeBytes(text: string): number[] {
  if (typeof text !== "string") {
    throw new TensorqError("text must be a string", {
      op: "encodeBytes",
      kind: "argument",
      argument: "text",
      expected: "a string",
      actual: describeValue(text),
    });
  }
  return Array.from(new TextEncoder().encode(text));
}

/**
 * Text of byte ids (each in [0, 255]); invalid UTF-8 (e.g. a cut multi-byte character)
 * decodes to U+FFFD.
 */
export function decodeBytes(ids: readonly number[]): string {
  if (!Array.isArray(ids)) {
    throw new TensorqError("byte ids must be an array", {
      op: "decodeBytes",
      kind: "argument",
      argument: "ids",
      expected: "number[]",
      actual: describeValue(ids),
    });
  }
  checkIdsInVocab(ids, 256, "byte ids must be integers in [0, 255]", "ids", "decodeBytes");
  // A leading byte order mark is a character like any other to a byte-level model.
  return new TextDecoder("utf-8", { ignoreBOM: true }).decode(Uint8Array.from(ids));
}

registerLibraryModules(GPT2Attention, GPT2MLP, GPT2Block, GPT2Model, GPT2LMHeadModel);
