/**
 * Calibration: run a model over sample batches with an observer on the input of every
 * {@link Linear}, and collect the ranges (amax) that quantization scales are made from.
 *
 * ```ts
 * const calib = calibrate(model, batches, (m, x) => m.forward(x), { method: "max" });
 * quantizeModel(model, { mode: "w8a8", calibration: calib });
 * ```
 * @module
 */
import { decode } from "../dtype.ts";
import { checkBoolean, isTracedValueError, TensorqError } from "../errors.ts";
import { Linear } from "../nn/layers.ts";
import { checkModule, checkPrefix, type Module } from "../nn/module.ts";
import { describeValue, optionsOf } from "../shape.ts";
import type { QuantDType } from "../ops/quantize.ts";
import type { Tensor } from "../tensor.ts";
import { checkUncompressed } from "./args.ts";
import {
  type AmaxObserver,
  HistogramObserver,
  MaxObserver,
  PerChannelMaxObserver,
} from "./observers.ts";

/** How the per-tensor input amax is chosen from the observed values. */
export type CalibrationMethod = "max" | "percentile" | "entropy" | "mse";

/** What calibration (or an imported amax file) knows about one Linear layer. */
export interface LayerCalibration {
  /**
   * Per-tensor amax of the layer's input (absent when the layer never ran, saw no finite
   * value, or was not given).
   */
  inputAmax?: number;
  /**
   * The number of input values calibration observed, finite or not (absent for imported
   * ranges). A positive count without `inputAmax` means every value was NaN or ±Infinity.
   */
  inputCount?: number;
  /** max |x| of each input feature (last dimension), with `perChannel: true`. */
  inputChannelAmax?: Float32Array;
  /**
   * max |W| of each output row `[out]`. Imported values keep their file's length (one value
   * stands for every row; `out · in / blockSize` values are block amax).
   */
  weightAmax?: Float32Array;
  /**
   * max |W| of each block of `weightBlockSize` input features: `[out, ceil(in /
   * weightBlockSize)]` (a row's last block is shorter where the size does not divide `in`).
   */
  weightBlockAmax?: Float32Array;
  /** The block size of {@link LayerCalibration.weightBlockAmax}. */
  weightBlockSize?: number;
}

/** Calibration results by dotted layer name. */
export type Calibration = Map<string, LayerCalibration>;

const CALIBRATE_OPTIONS = [
  "method",
  "percentile",
  "dtype",
  "perChannel",
  "weightBlockSize",
  "onProgress",
];

/** Options of {@link calibrate}. */
export interface CalibrateOptions {
  /** Input amax method (default "max"); the histogram methods use 2048 bins. */
  method?: CalibrationMethod;
  /** The percentile for method "percentile" (default 99.99). */
  percentile?: number;
  /**
   * The quantized dtype the inputs will take, whose rounding methods "entropy" and "mse"
   * weigh: int8 (default), int4, or float8e4m3 (mse only: entropy's KL search is defined on
   * an integer grid). An fp8 model calibrated for int8 would clip its inputs harder than
   * fp8's relative precision calls for. Methods "max" and "percentile" do not depend on it.
   */
  dtype?: QuantDType;
  /** Also collect max |x| per input feature (`inputChannelAmax`, needed by SmoothQuant). */
  perChannel?: boolean;
  /**
   * Also compute `weightBlockAmax` for blocks of this many input features (e.g. 128); a row's
   * last block is shorter where it does not divide the layer's input features.
   */
  weightBlockSize?: number;
  /**
   * Called after each batch with the batches done and the total (undefined for an iterable
   * without a length). When given, nothing is printed; otherwise a progress line is
   * printed when stdout is a terminal.
   */
  onProgress?: (done: number, total: number | undefined) => void;
}

const METHODS: readonly CalibrationMethod[] = ["max", "percentile", "entropy", "mse"];

/**
 * Every module under `module` (itself first, named `prefix`, "" by default) with dotted
 * names, depth first in registration order. A module registered twice is listed once, under
 * its first name.
 */
export function namedModules(module: Module, prefix: string = ""): [string, Module][] {
  checkModule("namedModules", "module", module);
  checkPrefix("namedModules", prefix);
  const out: [string, Module][] = [];
  const seen = new Set<Module>();
  const walk = (m: Module, name: string) => {
    if (seen.has(m)) return;
    seen.add(m);
    out.push([name, m]);
    for (const [child, sub] of m.children()) walk(sub, name ? `${name}.${child}` : child);
  };
  walk(module, prefix);
  return out;
}

/** The {@link Linear} layers under `module` with their dotted names. */
export function namedLinears(module: Module): [string, Linear][] {
  return namedModules(module).filter((e): e is [string, Linear] => e[1] instanceof Linear);
}

/** The module at a dotted name under `root` ("" is `root`), or undefined. */
export function findModule(root: Module, name: string): Module | undefined {
  checkModule("findModule", "root", root);
  if (typeof name !== "string") {
    throw new TensorqError("name must be a dotted module name", {
      op: "findModule",
      kind: "argument",
      argument: "name",
      expected: 'a string such as "transformer.h.0.attn" ("" for the root)',
      actual: describeValue(name),
    });
  }
  if (name === "") return root;
  let m: Module | undefined = root;
  for (const part of name.split(".")) {
    m = m.children().find(([n]) => n === part)?.[1];
    if (!m) return undefined;
  }
  return m;
}

/** The values of a float tensor as float32 on the host (evaluating it). */
function hostFloats(t: Tensor): Float32Array {
  return decode(t.dtype, t.storageSync()) as Float32Array;
}

/**
 * max |w| over `w[start, end)`; NaN where one is NaN (as `torch.amax`): a weight holding NaN
 * has no range, and skipping it would quantize the NaN to code 0 without a word.
 */
function absMax(w: Float32Array, start: number, end: number): number {
  let m = 0;
  for (let c = start; c < end; c++) {
    const a = Math.abs(w[c]);
    if (a > m) m = a;
    else if (a !== a) return NaN;
  }
  return m;
}

/**
 * max |W| of each row of a 2-D weight `[out, in]` (one value per output channel); NaN for a
 * row that holds NaN.
 *
 * @param weight A float tensor of rank 2.
 * @returns `[out]` absolute maxima.
 */
export function weightAmaxPerRow(weight: Tensor): Float32Array {
  const [rows, cols] = weight2d("weightAmaxPerRow", weight);
  const w = hostFloats(weight);
  const out = new Float32Array(rows);
  for (let r = 0; r < rows; r++) out[r] = absMax(w, r * cols, (r + 1) * cols);
  return out;
}

/**
 * max |W| of each block of `blockSize` consecutive input features of a weight `[out, in]`.
 * Where `blockSize` does not divide `in`, each row's last block is shorter (as ONNX's
 * block-wise QuantizeLinear takes it). NaN for a block that holds NaN.
 *
 * @param weight A float tensor of rank 2.
 * @param blockSize A positive integer.
 * @returns `[out, ceil(in / blockSize)]` absolute maxima, row-major.
 */
export function weightAmaxPerBlock(weight: Tensor, blockSize: number): Float32Array {
  const op = "weightAmaxPerBlock";
  const [rows, cols] = weight2d(op, weight);
  if (!Number.isInteger(blockSize) || blockSize <= 0) {
    throw new TensorqError("blockSize must be a positive integer", {
      op,
      kind: "argument",
      argument: "blockSize",
      expected: "a positive integer",
      actual: describeValue(blockSize),
    });
  }
  const w = hostFloats(weight);
  const perRow = Math.ceil(cols / blockSize);
  const out = new Float32Array(rows * perRow);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < perRow; b++) {
      const end = r * cols + Math.min(cols, (b + 1) * blockSize);
      out[r * perRow + b] = absMax(w, r * cols + b * blockSize, end);
    }
  }
  return out;
}

/**
 * max |W| of each column of a weight `[out, in]` (one value per input feature); NaN for a
 * column that holds NaN.
 */
export function weightAmaxPerColumn(weight: Tensor): Float32Array {
  const [rows, cols] = weight2d("weightAmaxPerColumn", weight);
  const w = hostFloats(weight);
  const out = new Float32Array(cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const a = Math.abs(w[r * cols + c]);
      // Once NaN, a column stays NaN: `a > NaN` is false.
      if (a > out[c] || a !== a) out[c] = a;
    }
  }
  return out;
}

function weight2d(op: string, weight: Tensor): [number, number] {
  if (!weight || typeof weight !== "object" || !("node" in weight) || weight.rank !== 2) {
    throw new TensorqError("expected a 2-D weight [out, in]", {
      op,
      kind: "shape",
      argument: "weight",
      expected: "a rank-2 tensor",
      actual: weight && typeof weight === "object" && "shape" in weight
        ? `shape [${(weight as Tensor).shape.join(", ")}]`
        : describeValue(weight),
    });
  }
  return [weight.shape[0], weight.shape[1]];
}

interface Watch {
  name: string;
  layer: Linear;
  input: AmaxObserver;
  channels?: PerChannelMaxObserver;
  /** Input values seen, finite or not. */
  seen: number;
  /** Forwards that reached the layer (an empty batch counts, with no values). */
  calls: number;
}

function checkOptions(options: CalibrateOptions): void {
  const op = "calibrate";
  const method = options.method ?? "max";
  if (!METHODS.includes(method)) {
    throw new TensorqError("unknown calibration method", {
      op,
      kind: "argument",
      argument: "method",
      expected: `one of ${METHODS.join(", ")}`,
      actual: describeValue(method),
    });
  }
  const p = options.percentile;
  if (p !== undefined && !(typeof p === "number" && p > 0 && p <= 100)) {
    throw new TensorqError("percentile must be in (0, 100]", {
      op,
      kind: "argument",
      argument: "percentile",
      expected: "a number in (0, 100], e.g. 99.99",
      actual: describeValue(p),
    });
  }
  const dtype = options.dtype ?? "int8";
  if (dtype !== "int8" && dtype !== "int4" && (dtype !== "float8e4m3" || method === "entropy")) {
    const fp8 = dtype === "float8e4m3";
    throw new TensorqError(
      fp8 ? "method entropy has no float8e4m3 search" : "unsupported calibration dtype",
      {
        op,
        kind: "dtype",
        argument: "dtype",
        expected: fp8
          ? "int8 or int4 with entropy; for fp8, mse, percentile or max"
          : "int8, int4 or float8e4m3",
        actual: describeValue(dtype),
      },
    );
  }
  const b = options.weightBlockSize;
  if (b !== undefined && !(Number.isInteger(b) && b > 0)) {
    throw new TensorqError("weightBlockSize must be a positive integer", {
      op,
      kind: "argument",
      argument: "weightBlockSize",
      expected: "a positive integer, e.g. 128",
      actual: describeValue(b),
    });
  }
  if (options.perChannel !== undefined) checkBoolean(op, "perChannel", options.perChannel);
  if (options.onProgress !== undefined && typeof options.onProgress !== "function") {
    throw new TensorqError("onProgress must be a function", {
      op,
      kind: "argument",
      argument: "onProgress",
      expected: "(done, total) => void",
      actual: describeValue(options.onProgress),
    });
  }
}

function makeInputObserver(options: CalibrateOptions): AmaxObserver {
  const method = options.method ?? "max";
  if (method === "max") return new MaxObserver();
  const dtype = options.dtype ?? "int8";
  return new HistogramObserver({
    method,
    percentile: options.percentile ?? 99.99,
    // Entropy's search takes integer grids only (checked above for entropy itself).
    entropy: { dtype: dtype === "float8e4m3" ? "int8" : dtype },
    mse: { dtype },
  });
}

function isTerminal(): boolean {
  try {
    return Deno.stdout.isTerminal();
  } catch {
    return false;
  }
}

function printProgress(text: string): void {
  try {
    Deno.stdout.writeSync(new TextEncoder().encode(text));
  } catch {
    // A closed or unwritable stdout must not break calibration.
  }
}

/**
 * Runs `run(model, batch)` for every batch with an observer on the input of every
 * {@link Linear} under `model` (through `Linear.inputObserver`, restored afterwards, even on
 * error), and returns per layer the input amax by `method`, the weight amax per output row,
 * and on request per input channel (`perChannel`) and per weight block (`weightBlockSize`).
 *
 * The observers read each input on the host (`storageSync`, decoded to float32), which
 * evaluates the graph up to that layer.
 *
 * @param model The model (any {@link Module}; it needs at least one Linear).
 * @param batches The calibration batches (an array or any iterable; at least one): tensors,
 *   or anything `run` understands (token id arrays, records of inputs).
 * @param run Runs the model on one batch (synchronously); its result (e.g. the logits) is
 *   ignored and not evaluated.
 * @param options Method, percentile, per-channel and block options, progress callback.
 * @returns Results by dotted layer name; layers that never ran (or saw only NaN or infinite
 *   inputs) have no `inputAmax`.
 * @throws {TensorqError} for bad arguments, a model without Linear layers, no batches, an
 *   async `run`, or (before any batch runs) layers with compressed weights, all named.
 */
export function calibrate<M extends Module, B = Tensor>(
  model: M,
  batches: Iterable<B> | B[],
  run: (model: M, batch: B) => unknown,
  options: CalibrateOptions = {},
): Calibration {
  const op = "calibrate";
  checkModule(op, "model", model);
  if (batches === null || typeof (batches as Iterable<B>)?.[Symbol.iterator] !== "function") {
    throw new TensorqError("batches must be iterable", {
      op,
      kind: "argument",
      argument: "batches",
      expected: "an array or iterable of batches",
      actual: describeValue(batches),
    });
  }
  if (typeof run !== "function") {
    throw new TensorqError("run must be a function", {
      op,
      kind: "argument",
      argument: "run",
      expected: "(model, batch) => void",
      actual: describeValue(run),
    });
  }
  options = optionsOf<CalibrateOptions>(op, options, CALIBRATE_OPTIONS);
  checkOptions(options);
  const linears = namedLinears(model);
  if (linears.length === 0) {
    throw new TensorqError("the model has no Linear layers to calibrate", {
      op,
      kind: "argument",
      argument: "model",
      expected: "a module containing Linear layers",
      actual: model.constructor.name,
    });
  }
  // The weight amax need the float weights: fail before running any batch.
  checkUncompressed(op, linears, "calibrate before compressing");
  // Checked with the options; a row's last block may be shorter.
  const blockSize = options.weightBlockSize;

  const watches: Watch[] = linears.map(([name, layer]) => ({
    name,
    layer,
    input: makeInputObserver(options),
    channels: options.perChannel ? new PerChannelMaxObserver(layer.inFeatures) : undefined,
    seen: 0,
    calls: 0,
  }));
  const previous = watches.map((w) => w.layer.inputObserver);
  watches.forEach((w, i) => {
    const before = previous[i];
    w.layer.inputObserver = (x: Tensor, layer: Linear) => {
      before?.(x, layer);
      let values;
      try {
        values = hostFloats(x);
      } catch (e) {
        // Inside compile() (generate's compiled decoder, say) inputs have no values yet.
        if (!isTracedValueError(e)) throw e;
        throw new TensorqError(
          "the model ran inside compile(), where layer inputs have no values to observe",
          {
            op,
            kind: "argument",
            argument: "run",
            expected: "a run that calls the model's forward eagerly (e.g. generate with " +
              "compiled: false)",
            actual: `layer ${w.name} traced by compile()`,
          },
        );
      }
      w.calls++;
      w.seen += values.length;
      w.input.observe(values);
      w.channels?.observe(values);
    };
  });

  const total = Array.isArray(batches) ? batches.length : undefined;
  const print = options.onProgress === undefined && isTerminal();
  let done = 0;
  try {
    for (const batch of batches) {
      const result: unknown = run(model, batch);
      if (result && typeof (result as Promise<unknown>).then === "function") {
        throw new TensorqError("run must be synchronous", {
          op,
          kind: "argument",
          argument: "run",
          expected: "a function that runs the model before returning",
          actual: "a Promise",
        });
      }
      done++;
      if (options.onProgress) options.onProgress(done, total);
      else if (print) {
        printProgress(
          `\r calibrating ${done}${total !== undefined ? `/${total}` : ""} batches ...`,
        );
      }
    }
  } finally {
    watches.forEach((w, i) => (w.layer.inputObserver = previous[i]));
    if (print && done > 0) printProgress("\n");
  }
  if (done === 0) {
    throw new TensorqError("no calibration batches", {
      op,
      kind: "argument",
      argument: "batches",
      expected: "at least one batch",
      actual: "an empty sequence",
    });
  }

  // A compiled executable (a static decoder built before) replays without calling the layers.
  if (watches.length > 0 && watches.every((w) => w.calls === 0)) {
    throw new TensorqError("no Linear layer saw an input during calibration", {
      op,
      kind: "argument",
      argument: "run",
      expected: "a run that calls the model's forward (a compiled executable or static " +
        "decoder replays its trace without calling the layers)",
      actual: `${done} batch(es) run, ${watches.length} layers watched, none called`,
    });
  }
  const result: Calibration = new Map();
  for (const w of watches) {
    const entry: LayerCalibration = {
      inputAmax: w.input.count > 0 ? w.input.amax() : undefined,
      inputCount: w.seen,
      weightAmax: weightAmaxPerRow(w.layer.weight),
    };
    if (w.channels && w.channels.count > 0) entry.inputChannelAmax = w.channels.channelAmax();
    if (blockSize !== undefined) {
      entry.weightBlockAmax = weightAmaxPerBlock(w.layer.weight, blockSize);
      entry.weightBlockSize = blockSize;
    }
    result.set(w.name, entry);
  }
  return result;
}
