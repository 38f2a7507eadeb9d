/**
 * Quantizing a whole model: {@link quantizeModel} configures every {@link Linear} (except
 * excluded ones) for one mode and sets its scales from calibration ranges;
 * {@link importAmax} reads ranges exported by NVIDIA ModelOpt (or the same data under
 * `NAME.input_amax` / `NAME.weight_amax`).
 *
 * | mode | weights | inputs |
 * | --- | --- | --- |
 * | `w8a8` | int8 per output channel, `amax / 127` | int8 per tensor, `amax / 127` |
 * | `w8` | int8 per output channel | float |
 * | `w4` | int4 blocks of `blockSize` (128) input features, `amax / 7` | float |
 * | `fp8` | float8e4m3 per output channel, `amax / 448` | float8e4m3 per tensor, `amax / 448` |
 *
 * Scales follow {@link scaleFromAmax}: an amax of 0 gives scale 1. A NaN or infinite amax, given
 * or computed from a weight that holds such values, is an error naming the layer.
 * @module
 */
import { decode } from "../dtype.ts";
import { fmtShape, messageWithoutCallSite, TensorqError } from "../errors.ts";
import { SafetensorsTensors } from "../io/tensors.ts";
import type { Linear } from "../nn/layers.ts";
import { checkModule, type Module } from "../nn/module.ts";
import { FLOAT_DTYPES } from "../ops/op.ts";
import { checkScaleValues, type QuantDType } from "../ops/quantize.ts";
import { fromStorage, scalar, Tensor } from "../tensor.ts";
import { checkUncompressed, listNames } from "./args.ts";
import { describeValue, isPlainObject, optionsOf } from "../shape.ts";
import {
  type Calibration,
  type LayerCalibration,
  namedLinears,
  weightAmaxPerBlock,
  weightAmaxPerRow,
} from "./calibrate.ts";
import { maxBound, scalesOfAmax } from "./scale.ts";

/** A whole-model quantization mode (see the module table). */
export type QuantizationMode = "w8a8" | "w8" | "w4" | "fp8";

/** Options of {@link quantizeModel}. */
export interface QuantizeModelOptions {
  /** The mode. */
  mode: QuantizationMode;
  /**
   * Layers this call leaves as they are (in float, unless an earlier call quantized them: so
   * two calls can give parts of a model different modes): a string matches a dotted layer
   * name and every layer under it (`"lm_head"`, `"h.0.mlp"`); a RegExp is tested against the
   * full name. `Linear.configureQuantization({})` returns a layer to float.
   */
  exclude?: (string | RegExp)[];
  /** Ranges from {@link calibrate} (or {@link importAmax}). */
  calibration?: Calibration;
  /** More ranges by layer name; their fields take precedence over `calibration`'s. */
  amax?: Calibration | Record<string, LayerCalibration>;
  /** Block size along input features for `w4` (default 128). */
  blockSize?: number;
}

/** What {@link quantizeModel} did to one layer. */
export interface QuantizedLayerInfo {
  /** Dotted layer name. */
  name: string;
  /** The mode applied. */
  mode: QuantizationMode;
  /** The quantized dtype. */
  quantDtype: QuantDType;
  /** The weight scale's shape (`[out]` per channel, `[out, ceil(in / blockSize)]` for `w4`). */
  weightScaleShape: number[];
  /** The per-tensor input scale, for modes that quantize inputs. */
  inputScale?: number;
}

interface ModeSpec {
  dtype: QuantDType;
  inputs: boolean;
  blocks: boolean;
}

const MODES: Readonly<Record<QuantizationMode, ModeSpec>> = Object.freeze({
  w8a8: { dtype: "int8", inputs: true, blocks: false },
  w8: { dtype: "int8", inputs: false, blocks: false },
  w4: { dtype: "int4", inputs: false, blocks: true },
  fp8: { dtype: "float8e4m3", inputs: true, blocks: false },
});

/** True when `name` is excluded by one of the patterns. */
function isExcluded(name: string, patterns: (string | RegExp)[]): boolean {
  return patterns.some((p) =>
    typeof p === "string" ? name === p || name.startsWith(`${p}.`) : p.test(name)
  );
}

/** Two of the layers' names, quoted, for error messages. */
function exampleNames(layers: [string, Linear][]): string {
  return listNames(layers.slice(0, 2).map(([n]) => JSON.stringify(n)));
}

/** An error naming the exclude patterns that match none of `layers`. */
function checkExcludeMatches(
  op: string,
  layers: [string, Linear][],
  exclude: (string | RegExp)[],
): void {
  const unmatched = exclude.filter((p) => !layers.some(([name]) => isExcluded(name, [p])));
  if (unmatched.length) {
    throw new TensorqError("exclude patterns that match no Linear layer", {
      op,
      kind: "argument",
      argument: "exclude",
      expected: `dotted layer names or prefixes (e.g. ${exampleNames(layers)}) or RegExps`,
      actual: listNames(unmatched.map(describeValue)),
    });
  }
}

function checkExclude(op: string, exclude: unknown): (string | RegExp)[] {
  if (exclude === undefined) return [];
  if (!Array.isArray(exclude)) {
    throw new TensorqError("exclude must be an array of names, prefixes or RegExps", {
      op,
      kind: "argument",
      argument: "exclude",
      expected: 'an array of strings or RegExps, e.g. ["lm_head"]',
      actual: describeValue(exclude),
    });
  }
  exclude.forEach((p, i) => {
    if (typeof p === "string" || p instanceof RegExp) return;
    throw new TensorqError("exclude patterns must be strings or RegExps", {
      op,
      kind: "argument",
      argument: `exclude[${i}]`,
      expected: "a layer name or prefix (string) or a RegExp",
      actual: describeValue(p),
    });
  });
  // A global or sticky RegExp would make test() stateful across layers.
  return exclude.map((
    p,
  ) => (p instanceof RegExp ? new RegExp(p.source, p.flags.replace(/[gy]/g, "")) : p));
}

const LAYER_RANGE_FIELDS = [
  "inputAmax",
  "inputCount",
  "inputChannelAmax",
  "weightAmax",
  "weightBlockAmax",
  "weightBlockSize",
];

function toLookup(
  op: string,
  argument: string,
  value: unknown,
): Map<string, LayerCalibration> {
  if (value === undefined) return new Map();
  const entries = value instanceof Map
    ? [...value.entries()]
    : isPlainObject(value)
    ? Object.entries(value)
    : undefined;
  if (entries) {
    // Each layer's ranges: a misspelt field (weightAmx) would be ignored silently.
    for (const [name, ranges] of entries) {
      optionsOf(op, ranges, LAYER_RANGE_FIELDS, `${argument}[${JSON.stringify(String(name))}]`);
    }
    return new Map(entries) as Map<string, LayerCalibration>;
  }
  throw new TensorqError(`${argument} must be a Map or a record of layer ranges`, {
    op,
    kind: "argument",
    argument,
    expected: "a Map<string, { inputAmax?, weightAmax? }> (from calibrate or importAmax)",
    actual: describeValue(value),
  });
}

/**
 * The amax values, checked: finite non-negative numbers (0 becomes scale 1 later; NaN, which
 * scaleFromAmax would also turn into 1, is refused here: given or imported, it marks a corrupt
 * range). Any array-like of numbers is accepted; the values are kept as given (not rounded to
 * float32) so that the scales follow scaleFromAmax's rules for numbers.
 */
function amaxValues(op: string, what: string, values: ArrayLike<number>): ArrayLike<number> {
  if (values === null || typeof values !== "object" || typeof values.length !== "number") {
    throw new TensorqError("amax values must be an array of numbers", {
      op,
      kind: "argument",
      argument: what,
      expected: "a Float32Array or an array of numbers",
      actual: describeValue(values),
    });
  }
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    // NaN too: in a file or a hand-made range it marks corruption (scale 1 would hide it).
    if (typeof v !== "number" || !(v >= 0) || v === Infinity) {
      throw new TensorqError("amax values must be finite and non-negative", {
        op,
        kind: "argument",
        argument: what,
        expected: "absolute maxima >= 0",
        actual: `${describeValue(v)} at index ${i}` +
          (Number.isNaN(v) ? " (a weight or input that holds NaN has a NaN amax)" : ""),
      });
    }
  }
  return values instanceof Float32Array ? values : Float64Array.from(values);
}

/**
 * A layer's weight amax per row, or per block of `blockSize` along the input features, computed
 * from its weight. A NaN or infinite weight has no scale: that is an error naming the layer.
 */
function amaxOfWeights(name: string, layer: Linear, blockSize?: number): Float32Array {
  const amax = blockSize === undefined
    ? weightAmaxPerRow(layer.weight)
    : weightAmaxPerBlock(layer.weight, blockSize);
  const at = amax.findIndex((v) => !Number.isFinite(v));
  if (at >= 0) {
    const what = Number.isNaN(amax[at]) ? "NaN" : "an infinite value";
    throw new TensorqError(`the weight of layer ${name} holds ${what}`, {
      op: "quantizeModel",
      kind: "argument",
      argument: "model",
      expected: "finite weights (their amax sets the weight scales)",
      actual: `${Number.isNaN(amax[at]) ? "NaN" : "±Infinity"} in ${
        blockSize === undefined ? "row" : "block"
      } ${at}`,
    });
  }
  return amax;
}

/** A layer's new state, made (scales on its device) before any layer changes. */
interface Plan {
  name: string;
  layer: Linear;
  weightScale: Tensor;
  weightScaleShape: number[];
  inputScale?: Tensor;
  inputScaleValue?: number;
}

/**
 * A layer's `weightBlockAmax` from `where` (the `amax` option or `calibration`), checked
 * against the block layout of quantizeModel's `blockSize`: its `weightBlockSize` must be that
 * size or absent (then implied), and there must be one value per block.
 */
function blockAmaxOf(
  name: string,
  where: "amax" | "calibration",
  ranges: LayerCalibration,
  layout: { out: number; perRow: number; blockSize: number },
): ArrayLike<number> {
  const op = "quantizeModel";
  const { out, perRow, blockSize } = layout;
  const size = ranges.weightBlockSize;
  if (size !== undefined && size !== blockSize) {
    throw new TensorqError(
      `the weight block amax of layer ${name} (${where}) are for blocks of ${
        describeValue(size)
      } ` +
        `input features, but blockSize is ${blockSize}`,
      {
        op,
        kind: "argument",
        argument: "weightBlockSize",
        expected: `${blockSize} (or absent): calibrate with weightBlockSize: ${blockSize}, or ` +
          `pass blockSize: ${describeValue(size)}`,
        actual: `${describeValue(size)} (from ${where})`,
      },
    );
  }
  const values = amaxValues(op, `weight block amax of ${name}`, ranges.weightBlockAmax!);
  if (values.length !== out * perRow) {
    throw new TensorqError(`block amax of layer ${name} has the wrong length`, {
      op,
      kind: "shape",
      argument: "weightBlockAmax",
      expected: `${out * perRow} values ([${out}, ${perRow}]) for blocks of ${blockSize}`,
      actual: `${values.length} values in ${where}` +
        (size === undefined ? " (no weightBlockSize given, so blocks of blockSize)" : ""),
    });
  }
  return values;
}

/** Options of {@link compressWeights}. */
export interface CompressWeightsOptions {
  /** Layers to leave as they are: dotted names, prefixes of them, or RegExps. */
  exclude?: (string | RegExp)[];
}

/**
 * Replaces the float weight of every quantized `Linear` of `model` by its codes
 * ({@link Linear.compressWeight}): the model computes the same function, and its quantized
 * weights then take one byte (int8, fp8) or half a byte (int4) each on the device instead of
 * a float's 2 or 4, plus their scales. Call it after {@link quantizeModel} (and calibration,
 * which needs the float weights); the quantization is fixed from then on. A float weight that
 * no other parameter of the model shares (a tied embedding) is disposed: evaluate results
 * built from the float weights before (a lazy one would find its weight gone). Returns the names of
 * the layers compressed (quantized layers compressed before are skipped). Every layer is
 * checked before any is compressed.
 *
 * @throws {TensorqError} kind `argument` for a non-module, bad options, exclude patterns
 *   that match no Linear layer, or a weight scale that is not positive and finite; kind
 *   `state` for a quantized layer without a weight scale (each naming the layer).
 */
export function compressWeights(model: Module, options: CompressWeightsOptions = {}): string[] {
  const op = "compressWeights";
  checkModule(op, "model", model);
  options = optionsOf(op, options, ["exclude"]);
  const exclude = checkExclude(op, options.exclude);
  const all = namedLinears(model);
  checkExcludeMatches(op, all, exclude);
  const chosen = all.filter(([name, layer]) =>
    layer.quantDtype !== undefined && !layer.weightCompressed && !isExcluded(name, exclude)
  );
  // Checked for every layer first, so that an error leaves none compressed.
  for (const [name, layer] of chosen) {
    const scale = layer.weightScale;
    if (scale === undefined) {
      throw new TensorqError(`layer '${name}' is quantized but has no weight scale`, {
        op,
        kind: "state",
        argument: "model",
        expected: "a weightScale on every quantized layer (quantizeModel sets them), or the " +
          "layer excluded",
        actual: `quantDtype ${layer.quantDtype} without weightScale`,
      });
    }
    // A lazy scale is evaluated here: checked when the codes are made, it would fail after
    // earlier layers were compressed.
    try {
      checkScaleValues(op, scale);
    } catch (e) {
      if (!(e instanceof TensorqError)) throw e;
      const layer = name === "" ? "the model itself (a Linear)" : `layer '${name}'`;
      // Only a bad value is a bad scale; a disposed one, say, keeps its own error as the cause.
      const badValue = e.op === op && e.argument === "scale";
      throw new TensorqError(
        badValue
          ? `the weight scale of ${layer} is not positive and finite`
          : `the weight scale of ${layer} cannot be read: ${messageWithoutCallSite(e)}`,
        {
          op,
          kind: badValue ? "argument" : e.kind,
          argument: "model",
          expected: "positive finite weight scales",
          actual: badValue ? e.actual : undefined,
          cause: e,
        },
      );
    }
  }
  const uses = new Map<Tensor, number>();
  for (const t of Object.values(model.stateDict())) uses.set(t, (uses.get(t) ?? 0) + 1);
  const names: string[] = [];
  for (const [name, layer] of chosen) {
    const weight = layer.compressWeight();
    if ((uses.get(weight) ?? 0) <= 1) weight.dispose();
    names.push(name);
  }
  return names;
}

/**
 * Quantizes every {@link Linear} under `model` that `exclude` does not match, in place:
 * configures the layer for `mode` (see the module table) and sets `weightScale` and, for
 * `w8a8` and `fp8`, `inputScale` from the amax.
 *
 * Input amax must come from `calibration` or `amax` for `w8a8` and `fp8`. Weight amax is
 * taken from them when present (`amax`'s weight fields before all of `calibration`'s): `[out]`
 * per channel, or for `w4` block amax (`weightBlockAmax`, whose `weightBlockSize` must be
 * `blockSize` or absent, one value per block; or `[out · ceil(in / blockSize)]` `weightAmax`
 * values); a single value stands for every row or block. Absent, per-row values for `w4`, or
 * a calibration's block amax for another block size, they are computed from the weights.
 * Scales follow {@link scaleFromAmax} (a number amax beyond float32's range included). Other
 * lengths, an `amax` entry's `weightBlockSize` other than `blockSize`, exclude patterns that
 * match no Linear layer, `amax` entries naming none and layers with compressed weights
 * ({@link compressWeights}) are errors. Everything is checked, and every scale made, before any
 * layer changes.
 *
 * @param model The model.
 * @param options Mode, exclusions, ranges, block size.
 * @returns One entry per quantized layer, in module order.
 * @throws {TensorqError} for an unknown mode, a bad `exclude` pattern, layers missing input
 *   amax or whose calibration saw no finite input (all named), amax of the wrong type or
 *   length, or compressed layers (all named); the model is then unchanged.
 */
export function quantizeModel(model: Module, options: QuantizeModelOptions): QuantizedLayerInfo[] {
  const op = "quantizeModel";
  checkModule(op, "model", model);
  options = optionsOf(op, options, ["mode", "exclude", "calibration", "amax", "blockSize"]);
  const mode = options.mode;
  if (typeof mode !== "string" || !Object.hasOwn(MODES, mode)) {
    throw new TensorqError("unknown quantization mode", {
      op,
      kind: "argument",
      argument: "mode",
      expected: `one of ${Object.keys(MODES).join(", ")}`,
      actual: describeValue(mode),
    });
  }
  const spec = MODES[mode];
  const exclude = checkExclude(op, options.exclude);
  const blockSize = options.blockSize ?? 128;
  if (!Number.isInteger(blockSize) || blockSize <= 0) {
    throw new TensorqError("blockSize must be a positive integer", {
      op,
      kind: "argument",
      argument: "blockSize",
      expected: "a positive integer, e.g. 128",
      actual: describeValue(blockSize),
    });
  }
  const calibration = toLookup(op, "calibration", options.calibration);
  const overrides = toLookup(op, "amax", options.amax);
  const rangesOf = (name: string): LayerCalibration => ({
    ...calibration.get(name),
    ...overrides.get(name),
  });

  const all = namedLinears(model);
  // Two of the model's Linear layer names, for the errors below.
  const examples = exampleNames(all);
  checkExcludeMatches(op, all, exclude);
  const unknownOverrides = [...overrides.keys()].filter((n) => !all.some(([name]) => name === n));
  if (unknownOverrides.length) {
    throw new TensorqError("amax names layers that are not Linear layers of the model", {
      op,
      kind: "argument",
      argument: "amax",
      expected: `dotted Linear layer names (e.g. ${examples})`,
      actual: listNames(unknownOverrides.map(describeValue)),
    });
  }
  const layers = all.filter(([name]) => !isExcluded(name, exclude));
  // Reading a compressed layer's weight fails: name such layers before anything changes.
  checkUncompressed(op, layers, "quantize before compressing, or exclude compressed layers");
  const bound = maxBound(spec.dtype);
  const plans: Plan[] = [];
  const absent: string[] = [];
  const nonFinite: string[] = [];
  for (const [name, layer] of layers) {
    const ranges = rangesOf(name);
    const [out, inp] = [layer.outFeatures, layer.inFeatures];
    const device = layer.weight.device;
    let inputScale: Tensor | undefined;
    let inputScaleValue: number | undefined;
    if (spec.inputs) {
      const inputAmax: unknown = ranges.inputAmax;
      if (inputAmax === undefined) {
        // Calibration that saw only NaN or infinite inputs has a count but no amax.
        if ((ranges.inputCount ?? 0) > 0) nonFinite.push(name);
        else absent.push(name);
        continue;
      }
      const what = `input amax of ${name}`;
      if (typeof inputAmax !== "number") {
        throw new TensorqError(`the input amax of layer ${name} has the wrong type`, {
          op,
          kind: "argument",
          argument: what,
          expected: "a number (the absolute maximum of the layer's input, >= 0)",
          actual: `${describeValue(inputAmax)} (${typeof inputAmax})`,
        });
      }
      [inputScaleValue] = scalesOfAmax(op, what, amaxValues(op, what, [inputAmax]), bound);
      inputScale = scalar(inputScaleValue, "float32", device);
    }
    let weightAmax: ArrayLike<number>;
    let weightScaleShape: number[];
    if (spec.blocks) {
      // A row's last block is shorter where blockSize does not divide the input features.
      const perRow = Math.ceil(inp / blockSize);
      const blocks = out * perRow;
      weightScaleShape = [out, perRow];
      // The weight fields of `amax` take precedence over all of `calibration`'s.
      const override = overrides.get(name);
      const fromOverride = override?.weightBlockAmax !== undefined ||
        override?.weightAmax !== undefined;
      const source = fromOverride ? override : calibration.get(name);
      const block = source?.weightBlockAmax;
      const given = source?.weightAmax;
      // A calibration made for other blocks: its block amax come from the weights alone, so
      // computing them again for these blocks loses nothing (one calibration serves any
      // blockSize). Values given in `amax` are the user's: another size there is an error.
      const otherBlocks = !fromOverride && block !== undefined &&
        source!.weightBlockSize !== undefined && source!.weightBlockSize !== blockSize;
      if (otherBlocks) weightAmax = amaxOfWeights(name, layer, blockSize);
      else if (block !== undefined) {
        weightAmax = blockAmaxOf(name, fromOverride ? "amax" : "calibration", source!, {
          out,
          perRow,
          blockSize,
        });
      } else if (given !== undefined) {
        // Block amax (imported files keep them flat) or one value for every block. Per-row
        // amax (a per-channel calibration's) do not bound the blocks tightly: the block amax
        // are computed from the weights instead, as when none are given.
        const values = amaxValues(op, `weight amax of ${name}`, given);
        if (values.length === blocks) weightAmax = values;
        else if (values.length === 1) weightAmax = new Float64Array(blocks).fill(values[0]);
        else if (values.length === out) weightAmax = amaxOfWeights(name, layer, blockSize);
        else {
          throw new TensorqError(`weight amax of layer ${name} has the wrong length`, {
            op,
            kind: "shape",
            argument: "weightAmax",
            expected: `${blocks} block values ([${out}, ${perRow}]), 1, or ${out} per-row ` +
              "values (then the block amax are computed from the weights)",
            actual: `${values.length} values`,
          });
        }
      } else weightAmax = amaxOfWeights(name, layer, blockSize);
    } else {
      weightScaleShape = [out];
      const given = ranges.weightAmax === undefined
        ? undefined
        : amaxValues(op, `weight amax of ${name}`, ranges.weightAmax);
      if (given === undefined) weightAmax = amaxOfWeights(name, layer);
      else if (given.length === out) weightAmax = given;
      else if (given.length === 1) weightAmax = new Float64Array(out).fill(given[0]);
      else {
        throw new TensorqError(`weight amax of layer ${name} has the wrong length`, {
          op,
          kind: "shape",
          argument: "weightAmax",
          expected: `${out} values (one per output channel) or 1`,
          actual: `${given.length} values`,
        });
      }
    }
    const scales = scalesOfAmax(op, `weight amax of ${name}`, weightAmax, bound);
    const weightScale = fromStorage(scales, weightScaleShape, "float32", device);
    plans.push({ name, layer, weightScale, weightScaleShape, inputScale, inputScaleValue });
  }
  if (absent.length || nonFinite.length) {
    const known = new Set(layers.map(([n]) => n));
    const unknown = [...calibration.keys(), ...overrides.keys()].filter((n) => !known.has(n));
    const hint = absent.length === 0
      ? "; check the model's activations on the calibration batches"
      : unknown.length
      ? `; the ranges name layers not in the model (${listNames(unknown, 3)}): ` +
        "map names with importAmax's nameMap"
      : calibration.size + overrides.size === 0
      ? "; pass calibration (from calibrate or importAmax) or amax"
      : "";
    const problems = [
      absent.length ? `${absent.length} layer(s) have no input amax: ${listNames(absent)}` : "",
      nonFinite.length
        ? `${nonFinite.length} layer(s) saw no finite input values in calibration (only NaN ` +
          `or ±Infinity): ${listNames(nonFinite)}`
        : "",
    ].filter(Boolean);
    throw new TensorqError(
      `mode ${mode} quantizes inputs, but ${problems.join("; ")}${hint}`,
      {
        op,
        kind: "argument",
        argument: "calibration",
        expected: "an inputAmax for every quantized layer",
        actual: `none for ${listNames([...absent, ...nonFinite])}`,
      },
    );
  }

  // Everything is checked and every scale made: only assignments from here on.
  const summary: QuantizedLayerInfo[] = [];
  for (const p of plans) {
    p.layer.configureQuantization({
      quantDtype: spec.dtype,
      weightQuantDim: spec.blocks ? 1 : 0,
      blockSize: spec.blocks ? blockSize : undefined,
    });
    p.layer.weightScale = p.weightScale;
    if (p.inputScale !== undefined) p.layer.inputScale = p.inputScale;
    summary.push({
      name: p.name,
      mode,
      quantDtype: spec.dtype,
      weightScaleShape: p.weightScaleShape,
      inputScale: p.inputScaleValue,
    });
  }
  return summary;
}

/** Options of {@link importAmax}. */
export interface ImportAmaxOptions {
  /**
   * Renames layers: a record (names it lacks stay as they are) or a function (returning
   * undefined drops the layer).
   */
  nameMap?: Record<string, string> | ((name: string) => string | undefined);
}

const AMAX_KEY = /^(.+)\.(input|weight)(?:_quantizer\._amax|_amax)$/;

/**
 * Reads calibration ranges exported by ModelOpt (`NAME.input_quantizer._amax`,
 * `NAME.weight_quantizer._amax`) or stored as `NAME.input_amax` / `NAME.weight_amax`; other
 * tensors are ignored. An input amax of one value becomes `inputAmax`; several values
 * become `inputChannelAmax` (and their max `inputAmax`). A weight amax is kept flat as
 * `weightAmax` (`[out]` or `[out, 1]` per channel; see {@link quantizeModel}).
 *
 * @param tensors A record of tensors or an opened safetensors file.
 * @param options `nameMap` to rename layers (e.g. Hugging Face names to the model's).
 * @returns Ranges by (mapped) layer name, in file order.
 * @throws {TensorqError} when no amax tensor is found, an amax tensor is not float, is
 *   empty, holds negative, NaN or infinite values, or two names map to the same layer.
 */
export function importAmax(
  tensors: Record<string, Tensor> | SafetensorsTensors,
  options: ImportAmaxOptions = {},
): Calibration {
  const op = "importAmax";
  let keys: string[];
  let get: (k: string) => Tensor;
  if (tensors instanceof SafetensorsTensors) {
    keys = tensors.keys();
    get = (k) => tensors.get(k);
  } else if (typeof tensors === "object" && tensors !== null && !Array.isArray(tensors)) {
    keys = Object.keys(tensors);
    get = (k) => (tensors as Record<string, Tensor>)[k];
  } else {
    throw new TensorqError("expected tensors", {
      op,
      kind: "argument",
      argument: "tensors",
      expected: "a record of tensors or a SafetensorsTensors (loadSafetensors)",
      actual: describeValue(tensors),
    });
  }
  const nameMap = optionsOf<ImportAmaxOptions>(op, options, ["nameMap"]).nameMap;
  // Only a plain record or a function: null, an array or a Map would be silently ignored.
  if (nameMap !== undefined && typeof nameMap !== "function" && !isPlainObject(nameMap)) {
    throw new TensorqError("nameMap must be a record or a function", {
      op,
      kind: "argument",
      argument: "options.nameMap",
      expected: "a Record<string, string> or (name) => string | undefined",
      actual: describeValue(nameMap),
    });
  }
  const rename = (name: string): string | undefined => {
    if (nameMap === undefined) return name;
    if (typeof nameMap === "function") return nameMap(name);
    return Object.hasOwn(nameMap, name) ? nameMap[name] : name;
  };
  const result: Calibration = new Map();
  const origin = new Map<string, string>();
  let found = 0;
  for (const key of keys) {
    const m = AMAX_KEY.exec(key);
    if (!m) continue;
    found++;
    const name = rename(m[1]);
    if (name === undefined) continue;
    if (typeof name !== "string") {
      throw new TensorqError("nameMap must return a string or undefined", {
        op,
        kind: "argument",
        argument: "nameMap",
        expected: "a string or undefined",
        actual: `${describeValue(name)} for ${m[1]}`,
      });
    }
    const previous = origin.get(name);
    if (previous !== undefined && previous !== m[1]) {
      throw new TensorqError(`layers ${previous} and ${m[1]} both map to ${name}`, {
        op,
        kind: "argument",
        argument: "nameMap",
        expected: "distinct target names",
        actual: `${previous}, ${m[1]} -> ${name}`,
      });
    }
    origin.set(name, m[1]);
    const t = get(key);
    if (!(t instanceof Tensor) || !FLOAT_DTYPES.includes(t.dtype)) {
      throw new TensorqError("amax tensors must be float tensors", {
        op,
        kind: "dtype",
        argument: key,
        expected: FLOAT_DTYPES.join(", "),
        actual: t instanceof Tensor ? t.dtype : describeValue(t),
      });
    }
    const values = Float32Array.from(decode(t.dtype, t.storageSync()));
    if (values.length === 0) {
      // An empty input amax would read as inputAmax 0 (scale 1), an empty weight amax as no
      // value for any row.
      throw new TensorqError("an amax tensor holds no values", {
        op,
        kind: "shape",
        argument: key,
        expected: "at least one amax value",
        actual: `shape ${fmtShape(t.shape)}`,
      });
    }
    amaxValues(op, key, values);
    const entry = result.get(name) ?? {};
    if (m[2] === "input") {
      if (values.length === 1) entry.inputAmax = values[0];
      else {
        entry.inputChannelAmax = values;
        entry.inputAmax = values.reduce((a, b) => (b > a ? b : a), 0);
      }
    } else entry.weightAmax = values;
    result.set(name, entry);
  }
  if (found === 0) {
    throw new TensorqError("no amax tensors found", {
      op,
      kind: "argument",
      argument: "tensors",
      expected: "names ending in .input_quantizer._amax, .weight_quantizer._amax, " +
        ".input_amax or .weight_amax",
      actual: keys.length ? `${keys.length} tensors such as ${listNames(keys, 3)}` : "no tensors",
    });
  }
  return result;
}
