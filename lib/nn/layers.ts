/**
 * Layers: {@link Linear} (optionally quantized, exactly as Tripy's), {@link LayerNorm},
 * {@link Embedding}, the activations {@link GELU} and {@link ReLU}, and {@link Sequential}.
 * @module
 */
import { checkDType, type DType } from "../dtype.ts";
import { fmtShape, TensorqError, withSharedTrace } from "../errors.ts";
import { add, gelu, type GeluOptions, relu } from "../ops/elementwise.ts";
import { matmul } from "../ops/matmul.ts";
import { checkEps, layerNorm } from "../ops/nn.ts";
import { dequantize, type QuantDType, quantize } from "../ops/quantize.ts";
import { embedding, transpose } from "../ops/shape.ts";
import { full, type Tensor } from "../tensor.ts";
import { checkTensor } from "../ops/op.ts";
import { rand, randn } from "../random.ts";
import { describeValue, optionsOf } from "../shape.ts";
import { booleanOption, Module, registerLibraryModules } from "./module.ts";

const FLOATS: readonly DType[] = ["float32", "float16", "bfloat16"];

let skipInit = 0;

/**
 * Runs `build` with parameter initialization off: layers created inside declare their
 * parameters but leave them unset (no random numbers drawn, no memory used) until a state
 * dict or an assignment sets them. For loading checkpoints.
 */
export function withoutInitialization<T>(build: () => T): T {
  if (typeof build !== "function") {
    throw new TensorqError("build must be a function", {
      op: "withoutInitialization",
      kind: "argument",
      argument: "build",
      expected: "a function that builds the modules",
      actual: describeValue(build),
    });
  }
  skipInit++;
  try {
    return build();
  } finally {
    skipInit--;
  }
}

function initial(make: () => Tensor): Tensor | undefined {
  return skipInit > 0 ? undefined : make();
}
const QUANT: readonly DType[] = ["int8", "int4", "float8e4m3"];

function positiveInt(op: string, argument: string, v: unknown): number {
  if (!Number.isInteger(v) || (v as number) <= 0) {
    throw new TensorqError(`${argument} must be a positive integer`, {
      op,
      kind: "argument",
      argument,
      expected: "a positive integer",
      actual: describeValue(v),
    });
  }
  return v as number;
}

function floatDType(op: string, v: unknown): DType {
  const d = checkDType(op, "dtype", v ?? "float32");
  if (!FLOATS.includes(d)) {
    throw new TensorqError("module dtype must be a float type", {
      op,
      kind: "dtype",
      argument: "dtype",
      expected: FLOATS.join(", "),
      actual: d,
    });
  }
  return d;
}

/** Options of {@link Linear}. */
export interface LinearOptions {
  /** Add a bias (default true; a boolean). */
  bias?: boolean;
  /** Dtype of weight, bias and output (default float32). */
  dtype?: DType;
  /** Quantize the weight (and the input when `inputScale` is set) to this dtype. */
  quantDtype?: QuantDType;
  /**
   * Dimension of the weight `[out, in]` along which scales vary: 0 = one scale per output
   * channel, 1 = per input feature; undefined = one scale for the whole weight. With
   * `blockSize`, the dimension that is split into blocks.
   */
  weightQuantDim?: number;
  /**
   * Block size for block-wise weight quantization (int8/int4) along `weightQuantDim`. Where it
   * does not divide that dimension the last block is shorter, as for `quantize`.
   */
  blockSize?: number;
}

const QUANT_OPTIONS = ["quantDtype", "weightQuantDim", "blockSize"];
const LINEAR_OPTIONS = ["bias", "dtype", ...QUANT_OPTIONS];

/**
 * `y = x · Wᵀ + b` with `weight [out, in]`. When `quantDtype` is set the forward is exactly
 * Tripy's: if `inputScale` is set, `x = dequantize(quantize(x, inputScale))` per tensor; the
 * weight is quantized and dequantized with `weightScale` (per tensor, per channel along
 * `weightQuantDim`, or block-wise); then the float matmul. Fusion into low-precision GEMMs is
 * the graph compiler's job, not this class's.
 */
export class Linear extends Module {
  /** Input features. */
  readonly inFeatures: number;
  /** Output features. */
  readonly outFeatures: number;
  /** Dtype of weight, bias and output. */
  readonly dtype: DType;
  #quantDtype?: QuantDType;
  #weightQuantDim?: number;
  #blockSize?: number;
  #compressed = false;
  /** Quantization dtype, if quantized (changed only by {@link Linear.configureQuantization}). */
  get quantDtype(): QuantDType | undefined {
    return this.#quantDtype;
  }
  /** Weight scale dimension (see {@link LinearOptions.weightQuantDim}). */
  get weightQuantDim(): number | undefined {
    return this.#weightQuantDim;
  }
  /** Block size of block-wise weight quantization. */
  get blockSize(): number | undefined {
    return this.#blockSize;
  }
  /**
   * Called with the layer's input at the start of every forward (before any quantization):
   * calibration observers attach here.
   */
  inputObserver?: (input: Tensor, layer: Linear) => void;

  /**
   * Creates the layer; the weight starts uniform in ±1/√in (seeded by the global stream).
   * `options` null or undefined means the defaults.
   */
  constructor(inFeatures: number, outFeatures: number, options: LinearOptions = {}) {
    super();
    options = optionsOf("Linear", options, LINEAR_OPTIONS);
    this.inFeatures = positiveInt("Linear", "inFeatures", inFeatures);
    this.outFeatures = positiveInt("Linear", "outFeatures", outFeatures);
    this.dtype = floatDType("Linear", options.dtype);
    const bias = booleanOption("Linear", "bias", options.bias, true);
    const bound = 1 / Math.sqrt(inFeatures);
    this.declareParameter(
      "weight",
      { shape: [outFeatures, inFeatures], dtype: this.dtype },
      initial(() =>
        rand([outFeatures, inFeatures], { low: -bound, high: bound, dtype: this.dtype })
      ),
    );
    if (bias) {
      this.declareParameter(
        "bias",
        { shape: [outFeatures], dtype: this.dtype },
        initial(() => rand([outFeatures], { low: -bound, high: bound, dtype: this.dtype })),
      );
    }
    const { quantDtype, weightQuantDim, blockSize } = options;
    this.configureQuantization({ quantDtype, weightQuantDim, blockSize });
  }

  /**
   * Sets (or, with no `quantDtype`, removes) the layer's quantization: declares `weightScale`
   * with the shape the mode needs and the optional per-tensor `inputScale`. Existing scales
   * are dropped. The options are checked first: on an error the layer is unchanged.
   */
  configureQuantization(
    options: Pick<LinearOptions, "quantDtype" | "weightQuantDim" | "blockSize">,
  ): void {
    if (this.weightCompressed) throw this.#compressedError("Linear.configureQuantization");
    options = optionsOf("Linear.configureQuantization", options, QUANT_OPTIONS);
    if (options.quantDtype === undefined) {
      if (options.weightQuantDim !== undefined || options.blockSize !== undefined) {
        throw new TensorqError("weightQuantDim and blockSize need quantDtype", {
          op: "Linear",
          kind: "argument",
          argument: "quantDtype",
          expected: "int8, int4 or float8e4m3",
          actual: "undefined",
        });
      }
      this.removeParameter("weightScale");
      this.removeParameter("inputScale");
      this.#quantDtype = this.#weightQuantDim = this.#blockSize = undefined;
      return;
    }
    const q = options.quantDtype;
    if (!QUANT.includes(q)) {
      throw new TensorqError("unsupported quantization dtype", {
        op: "Linear",
        kind: "dtype",
        argument: "quantDtype",
        expected: QUANT.join(", "),
        actual: typeof q === "string" ? q : String(q),
      });
    }
    if (q === "float8e4m3" && options.blockSize !== undefined) {
      throw new TensorqError("fp8 weights take per-tensor or per-channel scales, not blocks", {
        op: "Linear",
        kind: "argument",
        argument: "blockSize",
        expected: "undefined for float8e4m3 (blocks are for int8 / int4)",
        actual: String(options.blockSize),
      });
    }
    const shape = this.weightScaleShape(options.weightQuantDim, options.blockSize);
    this.removeParameter("weightScale");
    this.removeParameter("inputScale");
    this.#weightQuantDim = options.weightQuantDim;
    this.#blockSize = options.blockSize;
    this.#quantDtype = q;
    this.declareParameter("weightScale", { shape, dtype: "float32" });
    this.declareParameter("inputScale", { shape: [], dtype: "float32", optional: true });
  }

  /** The weight scale's shape for a mode (validating the options). */
  private weightScaleShape(dim: number | undefined, blockSize: number | undefined): number[] {
    const [out, inp] = [this.outFeatures, this.inFeatures];
    if (dim !== undefined && dim !== 0 && dim !== 1) {
      throw new TensorqError("weightQuantDim must be 0 or 1", {
        op: "Linear",
        kind: "axis",
        argument: "weightQuantDim",
        expected: "0 (output channels) or 1 (input features)",
        actual: String(dim),
      });
    }
    if (blockSize !== undefined) {
      const b = positiveInt("Linear", "blockSize", blockSize);
      if (dim === undefined) {
        throw new TensorqError("block-wise quantization needs weightQuantDim", {
          op: "Linear",
          kind: "argument",
          argument: "weightQuantDim",
          expected: "0 or 1",
          actual: "undefined",
        });
      }
      // As ONNX's block-wise QuantizeLinear: a last block shorter where b does not divide.
      return dim === 0 ? [Math.ceil(out / b), inp] : [out, Math.ceil(inp / b)];
    }
    if (dim === undefined) return [];
    return dim === 0 ? [out] : [inp];
  }

  /** Weight `[out, in]` (gone once {@link Linear.compressWeight} has replaced it by codes). */
  get weight(): Tensor {
    if (this.weightCompressed) throw this.#compressedError("Linear.weight");
    return this.requireParameter("weight", "Linear.weight");
  }
  set weight(t: Tensor) {
    if (this.weightCompressed) throw this.#compressedError("Linear.weight");
    this.setParameter("weight", t);
  }
  /**
   * The weight's codes `[out, in]` in `quantDtype`, `quantize(weight, weightScale)`, once
   * {@link Linear.compressWeight} has replaced the float weight by them; undefined before.
   */
  get weightCodes(): Tensor | undefined {
    return this.getParameter("weightCodes");
  }
  set weightCodes(t: Tensor | undefined) {
    if (!this.weightCompressed) {
      throw new TensorqError("the layer's weight is not compressed", {
        op: "Linear.weightCodes",
        kind: "state",
        expected: "a layer after compressWeight()",
        actual: "a float weight",
      });
    }
    this.setParameter("weightCodes", t);
  }
  /** True once the float weight was replaced by its codes ({@link Linear.compressWeight}). */
  get weightCompressed(): boolean {
    return this.#compressed;
  }

  /**
   * Replaces the float weight by its codes, `quantize(weight, weightScale)` (parameter
   * `weightCodes`, in `quantDtype`): the layer then computes the same function from one byte
   * a weight (int8, fp8) or half a byte (int4, on the GPU; a byte on the CPU) instead of a
   * float's 2 or 4, and the products
   * use the codes as they are. The quantization is fixed from then on
   * (`configureQuantization` and `weight` raise errors); the weight scale stays a parameter.
   * Returns the float weight, which the layer no longer references (dispose it unless
   * something else shares it).
   *
   * @throws {TensorqError} kind `state` when the layer is not quantized, has no weight scale,
   *   or is compressed already.
   */
  compressWeight(): Tensor {
    const op = "Linear.compressWeight";
    if (this.weightCompressed) {
      throw new TensorqError("the weight is compressed already", { op, kind: "state" });
    }
    const q = this.quantDtype;
    if (q === undefined) {
      throw new TensorqError("only a quantized layer's weight can be compressed", {
        op,
        kind: "state",
        expected: "a layer with quantDtype (configureQuantization or quantizeModel)",
        actual: "quantDtype undefined",
      });
    }
    const ws = this.requireParameter("weightScale", op);
    const weight = this.requireParameter("weight", op);
    const codes = quantize(weight, ws, q, { dim: this.weightQuantDim, blockSize: this.blockSize })
      .evaluate();
    this.removeParameter("weight");
    this.declareParameter("weightCodes", { shape: [...weight.shape], dtype: q }, codes);
    this.#compressed = true;
    return weight;
  }

  #compressedError(op: string): TensorqError {
    return new TensorqError(
      `the layer's float weight was replaced by its ${this.quantDtype} codes (weightCodes)`,
      {
        op,
        kind: "state",
        expected: "an uncompressed layer",
        actual: "compressWeight() was called",
      },
    );
  }
  /** Bias `[out]`, if the layer has one. */
  get bias(): Tensor | undefined {
    return this.getParameter("bias");
  }
  set bias(t: Tensor | undefined) {
    this.setParameter("bias", t);
  }
  /** Weight scale (float32; shape per the quantization mode). */
  get weightScale(): Tensor | undefined {
    return this.getParameter("weightScale");
  }
  set weightScale(t: Tensor | undefined) {
    this.setParameter("weightScale", t);
  }
  /** Per-tensor input scale (float32 rank 0); when unset, inputs stay unquantized. */
  get inputScale(): Tensor | undefined {
    return this.getParameter("inputScale");
  }
  set inputScale(t: Tensor | undefined) {
    this.setParameter("inputScale", t);
  }

  /** `x · Wᵀ + b`, with Q/DQ around the input and weight when quantized. */
  forward(x: Tensor): Tensor {
    this.#checkForward(x);
    if (this.inputObserver) {
      this.inputObserver(x, this);
      return this.#product(x);
    }
    return withSharedTrace(() => this.#product(x));
  }

  /** Errors that name the layer, not the matmul or transpose that would meet them. */
  #checkForward(x: Tensor): void {
    const op = "Linear.forward";
    checkTensor(op, "x", x);
    if (x.rank === 0 || x.shape[x.rank - 1] !== this.inFeatures) {
      throw new TensorqError("the input's last dimension is not the layer's input features", {
        op,
        kind: "shape",
        argument: "x",
        expected: `[..., ${this.inFeatures}]`,
        actual: fmtShape(x.shape),
      });
    }
    this.checkLiveParameters(op);
  }

  #product(x: Tensor): Tensor {
    let w: Tensor;
    if (this.quantDtype !== undefined) {
      const q = this.quantDtype;
      const inputScale = this.inputScale;
      if (inputScale !== undefined) {
        x = dequantize(quantize(x, inputScale, q), inputScale, x.dtype as "float32");
      }
      const ws = this.requireParameter("weightScale", "Linear.forward");
      const opts = { dim: this.weightQuantDim, blockSize: this.blockSize };
      // A compressed weight is its codes already: dequantize(codes) is the same value.
      const codes = this.weightCompressed
        ? this.requireParameter("weightCodes", "Linear.forward")
        : quantize(this.weight, ws, q, opts);
      w = dequantize(codes, ws, this.dtype as "float32", opts);
    } else {
      w = this.weight;
    }
    const y = matmul(x, transpose(w, 0, 1));
    const b = this.bias;
    return b ? add(y, b) : y;
  }
}

/** Options of {@link LayerNorm}. */
export interface LayerNormOptions {
  /** Added to the variance (default 1e-5; a positive finite number). */
  eps?: number;
  /** Dtype of weight and bias (default float32). */
  dtype?: DType;
}

/** Layer normalization over the trailing `normalizedShape` dims, with weight and bias. */
export class LayerNorm extends Module {
  /** The normalized trailing shape. */
  readonly normalizedShape: number[];
  /** Added to the variance. */
  readonly eps: number;

  /**
   * Creates the layer with weight 1 and bias 0. `options` null or undefined means the
   * defaults.
   */
  constructor(normalizedShape: number | readonly number[], options: LayerNormOptions = {}) {
    super();
    const op = "LayerNorm";
    options = optionsOf(op, options, ["eps", "dtype"]);
    if (typeof normalizedShape !== "number" && !Array.isArray(normalizedShape)) {
      throw new TensorqError("normalizedShape must be a number or an array of numbers", {
        op,
        kind: "argument",
        argument: "normalizedShape",
        expected: "a positive integer or an array of them",
        actual: describeValue(normalizedShape),
      });
    }
    const shape = typeof normalizedShape === "number" ? [normalizedShape] : [...normalizedShape];
    shape.forEach((d, i) => positiveInt(op, `normalizedShape[${i}]`, d));
    this.normalizedShape = shape;
    // As the op's default parameter: only undefined means 1e-5 (null is rejected there too).
    const eps = options.eps === undefined ? 1e-5 : options.eps;
    // The rule of the layerNorm op, checked here so that the error names the construction.
    checkEps(op, eps);
    this.eps = eps;
    const dtype = floatDType(op, options.dtype);
    this.declareParameter("weight", { shape, dtype }, initial(() => full(shape, 1, { dtype })));
    this.declareParameter("bias", { shape, dtype }, initial(() => full(shape, 0, { dtype })));
  }

  /** Scale `normalizedShape`. */
  get weight(): Tensor {
    return this.requireParameter("weight", "LayerNorm.weight");
  }
  set weight(t: Tensor) {
    this.setParameter("weight", t);
  }
  /** Shift `normalizedShape`. */
  get bias(): Tensor {
    return this.requireParameter("bias", "LayerNorm.bias");
  }
  set bias(t: Tensor) {
    this.setParameter("bias", t);
  }

  /** Normalizes `x` over its trailing dims. */
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}

/** Options of {@link Embedding}. */
export interface EmbeddingOptions {
  /** Dtype of the table (default float32). */
  dtype?: DType;
}

/** A lookup table `weight [numEmbeddings, embeddingDim]` indexed by integer ids. */
export class Embedding extends Module {
  /** Rows of the table. */
  readonly numEmbeddings: number;
  /** Width of each row. */
  readonly embeddingDim: number;

  /**
   * Creates the table with standard normal entries (seeded by the global stream). `options`
   * null or undefined means the defaults.
   */
  constructor(numEmbeddings: number, embeddingDim: number, options: EmbeddingOptions = {}) {
    super();
    options = optionsOf("Embedding", options, ["dtype"]);
    this.numEmbeddings = positiveInt("Embedding", "numEmbeddings", numEmbeddings);
    this.embeddingDim = positiveInt("Embedding", "embeddingDim", embeddingDim);
    const dtype = floatDType("Embedding", options.dtype);
    const shape = [numEmbeddings, embeddingDim];
    this.declareParameter("weight", { shape, dtype }, initial(() => randn(shape, { dtype })));
  }

  /** The table. */
  get weight(): Tensor {
    return this.requireParameter("weight", "Embedding.weight");
  }
  set weight(t: Tensor) {
    this.setParameter("weight", t);
  }

  /**
   * Rows for `ids` (int32/int64, each in [0, numEmbeddings); others raise when evaluated):
   * shape `ids.shape + [embeddingDim]`.
   */
  forward(ids: Tensor): Tensor {
    return embedding(ids, this.weight);
  }
}

/** GELU as a layer (for {@link Sequential}): the `gelu` op with the same options. */
export class GELU extends Module {
  /** `"none"` (exact, with erf) or `"tanh"` (GPT-2's `gelu_new`). */
  readonly approximate: "none" | "tanh";

  /** Creates the layer; `approximate` defaults to `"none"`, as in the op. */
  constructor(options: GeluOptions = {}) {
    super();
    const op = "GELU";
    const approximate = optionsOf<GeluOptions>(op, options, ["approximate"]).approximate ??
      "none";
    // Checked here so that the error names the construction, not a later forward.
    if (approximate !== "none" && approximate !== "tanh") {
      throw new TensorqError("unknown approximation", {
        op,
        kind: "argument",
        argument: "approximate",
        expected: `"none" or "tanh"`,
        actual: describeValue(approximate),
      });
    }
    this.approximate = approximate;
  }

  /** `gelu(x)`. */
  forward(x: Tensor): Tensor {
    return gelu(x, { approximate: this.approximate });
  }
}

/** ReLU as a layer (for {@link Sequential}): `max(x, 0)`. */
export class ReLU extends Module {
  /** `relu(x)`. */
  forward(x: Tensor): Tensor {
    return relu(x);
  }
}

/** Modules applied in order; children are named "0", "1", .... */
export class Sequential extends Module {
  readonly #layers: Module[];

  /** Chains `layers`. */
  constructor(...layers: Module[]) {
    super();
    this.#layers = layers;
    layers.forEach((m, i) => {
      if (!(m instanceof Module)) {
        throw new TensorqError("Sequential takes modules", {
          op: "Sequential",
          kind: "argument",
          argument: `layers[${i}]`,
          expected: "a Module",
          actual: typeof m,
        });
      }
      this.registerModule(String(i), m);
    });
  }

  /** Number of layers. */
  get length(): number {
    return this.#layers.length;
  }

  /** The layer at `index` (negative counts from the end; undefined past either end). */
  at(index: number): Module | undefined {
    // Array.at would truncate 1.5 to 1 and read "str" or NaN as 0.
    if (!Number.isSafeInteger(index)) {
      throw new TensorqError("index must be an integer", {
        op: "Sequential.at",
        kind: "argument",
        argument: "index",
        expected: "an integer",
        actual: describeValue(index),
      });
    }
    return this.#layers.at(index);
  }

  /** Applies each layer to the previous one's output. */
  forward(x: Tensor): Tensor {
    for (const m of this.#layers) x = m.forward(x);
    return x;
  }
}

registerLibraryModules(Linear, LayerNorm, Embedding, GELU, ReLU, Sequential);
