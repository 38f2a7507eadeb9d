/**
 * SmoothQuant (Xiao et al., 2023): moves activation outliers into the weights so that
 * per-tensor input quantization loses less. For a normalization layer followed by Linear
 * layers that read its output, each input channel `j` gets a factor
 * `s_j = max|X_j|^α / max|W_:,j|^(1−α)`; the norm's weight and bias are divided by `s` and
 * the columns of every following Linear's weight multiplied by it, which leaves the float
 * function unchanged while flattening the activation's per-channel ranges.
 *
 * The pairs are given by the caller (for GPT-2: `ln_1` → `attn.c_attn`, `ln_2` → `mlp.c_fc`).
 * @module
 */
import { decode } from "../dtype.ts";
import { TensorqError } from "../errors.ts";
import { Linear } from "../nn/layers.ts";
import { checkModule, type Module } from "../nn/module.ts";
import { type Tensor, tensor } from "../tensor.ts";
import { checkKnownKeys, describeValue, isPlainObject } from "../shape.ts";
import {
  type Calibration,
  findModule,
  type LayerCalibration,
  weightAmaxPerBlock,
  weightAmaxPerColumn,
  weightAmaxPerRow,
} from "./calibrate.ts";

/** A normalization layer and the Linear layers that read its output. */
export interface SmoothQuantPair {
  /** Dotted name of the norm (a module with a 1-D `weight` and optionally `bias`). */
  norm: string;
  /** Dotted names of the Linear layers fed by the norm. */
  linears: string[];
}

/** Options of {@link smoothQuant}. */
export interface SmoothQuantOptions {
  /** Migration strength α in [0, 1] (default 0.5). */
  alpha?: number;
  /** The norm → Linear pairs to smooth. */
  pairs: SmoothQuantPair[];
}

/**
 * The smoothing factors `s_j = actAmax_j^α / weightAmax_j^(1−α)`. A channel whose
 * activation or weight amax is 0 (or not finite) gets `s_j = 1`.
 *
 * @param actAmax max |X_j| per input channel.
 * @param weightAmax max |W_:,j| per input channel (over all Linear layers of the pair).
 * @param alpha Migration strength in [0, 1].
 * @returns The factors, in float64.
 */
export function smoothingScales(
  actAmax: ArrayLike<number>,
  weightAmax: ArrayLike<number>,
  alpha: number,
): Float64Array {
  const op = "smoothingScales";
  checkAmaxList(op, "actAmax", actAmax);
  checkAmaxList(op, "weightAmax", weightAmax);
  checkAlpha(op, alpha);
  if (actAmax.length !== weightAmax.length) {
    throw new TensorqError("activation and weight amax differ in length", {
      op,
      kind: "shape",
      argument: "weightAmax",
      expected: `${actAmax.length} values`,
      actual: `${weightAmax.length} values`,
    });
  }
  const s = new Float64Array(actAmax.length);
  for (let j = 0; j < s.length; j++) {
    const a = actAmax[j];
    const w = weightAmax[j];
    const v = a ** alpha / w ** (1 - alpha);
    s[j] = a > 0 && w > 0 && v > 0 && v < Infinity ? v : 1;
  }
  return s;
}

/**
 * Throws unless `value` is an array or typed array of numbers >= 0 (NaN and Infinity pass:
 * their channels get factor 1). A string or other object would read as no channels, or as
 * non-numbers that silently give 1.
 */
function checkAmaxList(op: string, argument: string, value: unknown): void {
  const fail = (actual: string) =>
    new TensorqError(`${argument} must be per-channel amax values`, {
      op,
      kind: "argument",
      argument,
      expected: "an array or Float32Array/Float64Array of numbers >= 0",
      actual,
    });
  if (!Array.isArray(value) && !(ArrayBuffer.isView(value) && !(value instanceof DataView))) {
    throw fail(describeValue(value));
  }
  const list = value as ArrayLike<unknown>;
  for (let j = 0; j < list.length; j++) {
    const v = list[j];
    if (typeof v !== "number" || v < 0) throw fail(`${describeValue(v)} at index ${j}`);
  }
}

function checkAlpha(op: string, alpha: unknown): number {
  if (typeof alpha === "number" && alpha >= 0 && alpha <= 1) return alpha;
  throw new TensorqError("alpha must be in [0, 1]", {
    op,
    kind: "argument",
    argument: "alpha",
    expected: "a number in [0, 1], e.g. 0.5",
    actual: describeValue(alpha),
  });
}

/** The module's own (not its children's) parameter, or undefined. */
function ownParameter(m: Module, name: string): Tensor | undefined {
  return m.stateDict()[name];
}

function floats(t: Tensor): Float32Array {
  return decode(t.dtype, t.storageSync()) as Float32Array;
}

interface PairPlan {
  norm: Module;
  linears: [string, Linear][];
  act: Float64Array;
  scales: Float64Array;
}

/**
 * Applies SmoothQuant to each pair, in place: divides the norm's `weight` (and `bias`) by
 * `s` and multiplies column `j` of every paired Linear's weight by `s_j`. Activation ranges
 * come from `calibration`'s `inputChannelAmax` (run {@link calibrate} with
 * `perChannel: true`; the channel max over the pair's layers is used).
 *
 * Returns a copy of `calibration` updated for the smoothed layers: `inputChannelAmax`
 * divided by `s`, `inputAmax` their max (i.e. max calibration: recalibrate for histogram
 * methods), and weight amax recomputed from the new weights.
 *
 * @param model The model holding the layers.
 * @param calibration Per-channel ranges of the paired layers' inputs.
 * @param options `alpha` (default 0.5) and the `pairs`.
 * @returns The updated calibration.
 * @throws {TensorqError} for an unknown layer name, a norm without a 1-D weight, a Linear
 *   whose input features differ from the norm's width, an already quantized Linear, a layer
 *   in two pairs (or twice in one), missing per-channel ranges, alpha outside [0, 1], or an
 *   unknown key in the options or a pair.
 *   Nothing changes then.
 */
export function smoothQuant(
  model: Module,
  calibration: Calibration,
  options: SmoothQuantOptions,
): Calibration {
  const op = "smoothQuant";
  checkModule(op, "model", model);
  if (!(calibration instanceof Map)) {
    throw new TensorqError("calibration must be a Map (from calibrate or importAmax)", {
      op,
      kind: "argument",
      argument: "calibration",
      expected: "a Map of layer ranges",
      actual: describeValue(calibration),
    });
  }
  if (!isPlainObject(options) || !Array.isArray(options.pairs)) {
    throw new TensorqError("options.pairs must list the norm → Linear pairs", {
      op,
      kind: "argument",
      argument: "pairs",
      expected: "[{ norm: string, linears: string[] }, ...]",
      actual: describeValue(isPlainObject(options) ? options.pairs : options),
    });
  }
  // A misspelt alpha would otherwise smooth with the default without a word.
  checkKnownKeys(op, options, ["alpha", "pairs"]);
  const alpha = checkAlpha(op, options.alpha ?? 0.5);
  const used = new Set<string>();
  const usedNorms = new Set<Module>();
  const plans: PairPlan[] = options.pairs.map((pair, i) => {
    const where = `pairs[${i}]`;
    if (
      typeof pair !== "object" || pair === null || typeof pair.norm !== "string" ||
      !Array.isArray(pair.linears) || pair.linears.length === 0 ||
      pair.linears.some((n) => typeof n !== "string")
    ) {
      throw new TensorqError("a pair names a norm and at least one Linear", {
        op,
        kind: "argument",
        argument: where,
        expected: "{ norm: string, linears: string[] }",
        actual: describeValue(pair),
      });
    }
    checkKnownKeys(op, pair, ["norm", "linears"], where);
    const norm = findModule(model, pair.norm);
    if (norm && usedNorms.has(norm)) {
      throw new TensorqError(`${pair.norm} appears in more than one pair`, {
        op,
        kind: "argument",
        argument: `${where}.norm`,
        expected: "each norm smoothed once (list all its Linear layers in one pair)",
        actual: JSON.stringify(pair.norm),
      });
    }
    if (norm) usedNorms.add(norm);
    if (!norm) {
      throw new TensorqError(`no module named ${pair.norm}`, {
        op,
        kind: "argument",
        argument: `${where}.norm`,
        expected: "the dotted name of a module in the model",
        actual: JSON.stringify(pair.norm),
      });
    }
    const normWeight = ownParameter(norm, "weight");
    if (!normWeight || normWeight.rank !== 1) {
      throw new TensorqError(`${pair.norm} has no 1-D weight to fold the factors into`, {
        op,
        kind: "argument",
        argument: `${where}.norm`,
        expected: "a normalization module with a 1-D weight (e.g. LayerNorm)",
        actual: `${norm.constructor.name}${normWeight ? ` weight [${normWeight.shape}]` : ""}`,
      });
    }
    const width = normWeight.shape[0];
    const twice = pair.linears.find((n, k) => pair.linears.indexOf(n) !== k);
    if (twice !== undefined) {
      throw new TensorqError(`${twice} is listed twice in the same pair`, {
        op,
        kind: "argument",
        argument: `${where}.linears`,
        expected: "each Linear named once",
        actual: JSON.stringify(pair.linears),
      });
    }
    const linears: [string, Linear][] = pair.linears.map((name) => {
      const m = findModule(model, name);
      if (!(m instanceof Linear)) {
        throw new TensorqError(m ? `${name} is not a Linear` : `no module named ${name}`, {
          op,
          kind: "argument",
          argument: `${where}.linears`,
          expected: "dotted names of Linear layers",
          actual: m ? m.constructor.name : JSON.stringify(name),
        });
      }
      if (m.inFeatures !== width) {
        throw new TensorqError(`${name} does not read ${pair.norm}'s output`, {
          op,
          kind: "shape",
          argument: `${where}.linears`,
          expected: `${width} input features (the norm's width)`,
          actual: `${m.inFeatures}`,
        });
      }
      if (m.quantDtype !== undefined) {
        throw new TensorqError(`${name} is already quantized; smooth before quantizeModel`, {
          op,
          kind: "state",
          argument: `${where}.linears`,
          expected: "float Linear layers",
          actual: `quantDtype ${m.quantDtype}`,
        });
      }
      if (used.has(name)) {
        throw new TensorqError(`${name} appears in more than one pair`, {
          op,
          kind: "argument",
          argument: `${where}.linears`,
          expected: "each Linear smoothed once",
          actual: JSON.stringify(name),
        });
      }
      used.add(name);
      return [name, m];
    });
    const act = new Float64Array(width);
    const missing: string[] = [];
    for (const [name] of linears) {
      const channels = calibration.get(name)?.inputChannelAmax;
      if (!channels || channels.length !== width) {
        missing.push(name);
        continue;
      }
      for (let j = 0; j < width; j++) if (channels[j] > act[j]) act[j] = channels[j];
    }
    if (missing.length === linears.length) {
      throw new TensorqError(
        `no per-channel input amax for ${missing.join(", ")}: calibrate with perChannel: true`,
        {
          op,
          kind: "argument",
          argument: "calibration",
          expected: `inputChannelAmax of ${width} values`,
          actual: "none",
        },
      );
    }
    const wmax = new Float64Array(width);
    for (const [, l] of linears) {
      const cols = weightAmaxPerColumn(l.weight);
      for (let j = 0; j < width; j++) if (cols[j] > wmax[j]) wmax[j] = cols[j];
    }
    const scales = smoothingScales(act, wmax, alpha);
    return { norm, linears, act, scales };
  });

  const updated: Calibration = new Map(
    [...calibration].map(([k, v]) => [k, { ...v } as LayerCalibration]),
  );
  for (const p of plans) {
    const s = p.scales;
    for (const param of ["weight", "bias"]) {
      const t = ownParameter(p.norm, param);
      if (!t) continue;
      const v = floats(t);
      const out = new Float64Array(v.length);
      for (let j = 0; j < v.length; j++) out[j] = v[j] / s[j];
      p.norm.setParameter(param, tensor(out, { shape: t.shape, dtype: t.dtype, device: t.device }));
    }
    for (const [name, l] of p.linears) {
      const w = l.weight;
      const v = floats(w);
      const [rows, cols] = w.shape;
      const out = new Float64Array(v.length);
      for (let r = 0; r < rows; r++) {
        for (let j = 0; j < cols; j++) out[r * cols + j] = v[r * cols + j] * s[j];
      }
      l.weight = tensor(out, { shape: w.shape, dtype: w.dtype, device: w.device });
      // Every Linear of the pair reads the same activation, now divided by s.
      const entry = updated.get(name) ?? {};
      const c = Float32Array.from(p.act, (a, j) => a / s[j]);
      entry.inputChannelAmax = c;
      entry.inputAmax = c.reduce((a, b) => (b > a ? b : a), 0);
      entry.weightAmax = weightAmaxPerRow(l.weight);
      if (entry.weightBlockSize !== undefined) {
        entry.weightBlockAmax = weightAmaxPerBlock(l.weight, entry.weightBlockSize);
      }
      updated.set(name, entry);
    }
  }
  return updated;
}
