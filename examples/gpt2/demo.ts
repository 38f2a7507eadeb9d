/**
 * GPT-2 quantization demo: load a Hugging Face GPT-2 checkpoint, calibrate its Linear
 * layers on Shakespeare training text, and compare float32 with w8a8, w8, w4 and fp8 on
 * held-out text (loss, perplexity, logit differences, throughput); write an HTML
 * calibration report and generate a sample with the best quantized mode.
 *
 *     deno task demo [--model DIR] [--device cpu|cuda|cuda:N] [--method max|percentile|entropy|mse]
 *                    [--calib-batches N] [--eval-windows N] [--window T] [--report PATH]
 *                    [--prompt TEXT] [--tokens N] [--seed N] [--greedy] [--smoothquant ALPHA]
 *
 * Tokens: a byte-level model (vocabulary of 256) reads UTF-8 bytes. Other GPT-2 models need
 * the `vocab.json` and `merges.txt` of their directory (as Hugging Face ships them): the demo
 * then uses GPT-2's byte-level BPE, implemented below. Without them it stops with exit code 2.
 * @module
 */
import { dirname, resolve } from "node:path";
import { parseArgs } from "node:util";
import * as tq from "../../mod.ts";
import { type LayerHistogram, renderCalibrationReport } from "./report.ts";

const ASSETS = new URL("./assets/", import.meta.url);
const DEFAULT_MODEL = decodeURIComponent(new URL("tiny-shakespeare-gpt2/", ASSETS).pathname);
const TRAIN_TEXT = new URL("train_slice.txt", ASSETS);
const HELDOUT_TEXT = new URL("heldout_slice.txt", ASSETS);
const METHODS: readonly tq.CalibrationMethod[] = ["max", "percentile", "entropy", "mse"];
const QUANT_MODES: readonly tq.QuantizationMode[] = ["w8a8", "w8", "w4", "fp8"];
/** Windows per calibration batch: the default 2 batches see 8 windows, like the reference. */
const CALIB_BATCH_WINDOWS = 4;
const GENERATE_TOP_K = 20;
const GENERATE_TEMPERATURE = 0.8;

const USAGE = `usage: deno task demo [options]
  --model DIR          Hugging Face GPT-2 directory (default: the bundled tiny Shakespeare model)
  --device NAME        cpu, cuda or cuda:N (default cpu)
  --method NAME        calibration: max, percentile, entropy or mse (default max; mse
                       searches fp8's inputs on the fp8 grid)
  --calib-batches N    calibration batches of ${CALIB_BATCH_WINDOWS} training windows (default 2)
  --eval-windows N     held-out windows evaluated per mode (default 8)
  --window T           tokens per window (default 256, at most the model's positions)
  --report PATH        calibration report to write (default tensorq-calibration.html)
  --prompt TEXT        prompt of the generated sample (default "JULIET:\\n")
  --tokens N           tokens to generate (default 200; 0 skips generation)
  --seed N             seed of top-${GENERATE_TOP_K} sampling (default 0)
  --greedy             generate greedily instead of sampling
  --smoothquant ALPHA  also evaluate w8a8 and fp8 after SmoothQuant with this alpha (e.g. 0.5)
  --help               this text`;

/** The parsed command line. */
export interface DemoOptions {
  /** Model directory. */
  model: string;
  /** Device name. */
  device: string;
  /** Calibration method. */
  method: tq.CalibrationMethod;
  /** Calibration batches (of 4 windows each). */
  calibBatches: number;
  /** Held-out windows per mode. */
  evalWindows: number;
  /** Tokens per window (at most the model's positions). */
  window: number;
  /** Report path. */
  report: string;
  /** Generation prompt. */
  prompt: string;
  /** Tokens to generate. */
  tokens: number;
  /** Sampling seed. */
  seed: number;
  /** Greedy decoding instead of sampling. */
  greedy: boolean;
  /** SmoothQuant migration strength for the activation-quantized modes (undefined: off). */
  smoothquant?: number;
}

/** A mistake on the command line: reported with the usage text and exit code 2. */
class UsageError extends Error {}

function intOption(name: string, value: string | undefined, fallback: number, min: number) {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min) {
    throw new UsageError(`--${name} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  }
  return n;
}

/** `p` resolved against the directory the user ran the command from. */
function userPath(p: string): string {
  return resolve(Deno.env.get("INIT_CWD") ?? Deno.cwd(), p);
}

function isDirectory(p: string): boolean {
  try {
    return Deno.statSync(p).isDirectory;
  } catch {
    return false;
  }
}

/** Parses the demo's arguments (throws UsageError on mistakes). */
export function parseDemoArgs(args: string[]): DemoOptions | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        model: { type: "string" },
        device: { type: "string" },
        method: { type: "string" },
        "calib-batches": { type: "string" },
        "eval-windows": { type: "string" },
        window: { type: "string" },
        report: { type: "string" },
        prompt: { type: "string" },
        tokens: { type: "string" },
        seed: { type: "string" },
        greedy: { type: "boolean" },
        smoothquant: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (values.help) return "help";
  const device = values.device ?? "cpu";
  if (!/^(cpu|cuda|cuda:\d+)$/.test(device)) {
    throw new UsageError(`--device must be cpu, cuda or cuda:N, got ${JSON.stringify(device)}`);
  }
  const method = (values.method ?? "max") as tq.CalibrationMethod;
  if (!METHODS.includes(method)) {
    throw new UsageError(`--method must be one of ${METHODS.join(", ")}, got ${values.method}`);
  }
  let smoothquant: number | undefined;
  if (values.smoothquant !== undefined) {
    smoothquant = Number(values.smoothquant);
    if (!(smoothquant >= 0 && smoothquant <= 1)) {
      throw new UsageError(`--smoothquant must be an alpha in [0, 1], got ${values.smoothquant}`);
    }
  }
  // `deno task` runs in the repository root: relative paths are the caller's (INIT_CWD).
  const report = userPath(values.report ?? "tensorq-calibration.html");
  const reportDir = dirname(report);
  if (!isDirectory(reportDir)) {
    throw new UsageError(`--report: the directory ${reportDir} does not exist`);
  }
  return {
    smoothquant,
    model: values.model === undefined ? DEFAULT_MODEL : userPath(values.model),
    device,
    method,
    calibBatches: intOption("calib-batches", values["calib-batches"], 2, 1),
    evalWindows: intOption("eval-windows", values["eval-windows"], 8, 1),
    window: intOption("window", values.window, 256, 2),
    report,
    prompt: values.prompt ?? "JULIET:\n",
    tokens: intOption("tokens", values.tokens, 200, 0),
    seed: intOption("seed", values.seed, 0, 0),
    greedy: values.greedy ?? false,
  };
}

// ---------------------------------------------------------------------------------------
// Tokenizers

/** Text to token ids and back. */
export interface Tokenizer {
  /** Shown in the header. */
  description: string;
  /** Token ids of `text`. */
  encode(text: string): number[];
  /** The UTF-8 bytes a token stands for. */
  tokenBytes(id: number): Uint8Array;
}

const byteTokenizer: Tokenizer = {
  description: "bytes (UTF-8, one token per byte)",
  encode: (text) => tq.encodeBytes(text),
  tokenBytes: (id) => Uint8Array.of(id),
};

/** GPT-2's map from bytes to printable characters (the alphabet of vocab.json). */
function bytesToUnicode(): Map<number, string> {
  const bytes: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bytes.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bytes.push(b);
  for (let b = 0xae; b <= 0xff; b++) bytes.push(b);
  const chars = bytes.slice();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (!bytes.includes(b)) {
      bytes.push(b);
      chars.push(256 + extra++);
    }
  }
  return new Map(bytes.map((b, i) => [b, String.fromCodePoint(chars[i])]));
}

/** GPT-2's pre-tokenization: contractions, letter runs, digit runs, other runs, spaces. */
const PRETOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** A model directory's file the demo cannot use: reported in one line (exit code 1). */
export class ModelFileError extends Error {}

/** `vocab.json`'s token → id map, checked: ids are integers in [0, vocabSize). */
function readVocab(path: string, vocabSize: number): Record<string, number> {
  let vocab: unknown;
  try {
    vocab = JSON.parse(Deno.readTextFileSync(path));
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    throw new ModelFileError(`${path} is not valid JSON: ${e.message}`);
  }
  if (typeof vocab !== "object" || vocab === null || Array.isArray(vocab)) {
    throw new ModelFileError(`${path} must hold an object of token → id`);
  }
  for (const [token, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new ModelFileError(
        `${path} gives token ${JSON.stringify(token)} the id ${JSON.stringify(id)}: ` +
          `ids must be integers in [0, ${vocabSize}) (the model's vocab_size)`,
      );
    }
  }
  return vocab as Record<string, number>;
}

/** GPT-2's byte-level BPE from a model directory's `vocab.json` and `merges.txt`. */
export function bpeTokenizer(dir: string, vocabSize: number): Tokenizer {
  const vocabPath = `${dir}/vocab.json`;
  const vocab = readVocab(vocabPath, vocabSize);
  const ranks = new Map<string, number>();
  const mergesPath = `${dir}/merges.txt`;
  const lines = Deno.readTextFileSync(mergesPath).split("\n");
  for (const [i, line] of lines.entries()) {
    if (line.startsWith("#version") || line.trim() === "") continue;
    if (line.split(" ").length !== 2) {
      throw new ModelFileError(
        `${mergesPath}:${i + 1}: a merge is two tokens separated by one space, got ` +
          JSON.stringify(line),
      );
    }
    ranks.set(line, ranks.size);
  }
  const byteChar = bytesToUnicode();
  const charByte = new Map([...byteChar].map(([b, c]) => [c, b]));
  const idToken: string[] = [];
  for (const [token, id] of Object.entries(vocab)) idToken[id] = token;
  const cache = new Map<string, number[]>();
  const encoder = new TextEncoder();

  const bpe = (word: string): number[] => {
    const hit = cache.get(word);
    if (hit) return hit;
    let parts = Array.from(word);
    while (parts.length > 1) {
      let best = -1, bestRank = Infinity;
      for (let i = 0; i < parts.length - 1; i++) {
        const r = ranks.get(`${parts[i]} ${parts[i + 1]}`);
        if (r !== undefined && r < bestRank) [best, bestRank] = [i, r];
      }
      if (best < 0) break;
      // Merge every occurrence of the best pair, left to right.
      const [a, b] = [parts[best], parts[best + 1]];
      const merged: string[] = [];
      for (let i = 0; i < parts.length; i++) {
        if (i < parts.length - 1 && parts[i] === a && parts[i + 1] === b) {
          merged.push(a + b);
          i++;
        } else merged.push(parts[i]);
      }
      parts = merged;
    }
    const ids = parts.map((p) => {
      const id = vocab[p];
      if (id === undefined) {
        throw new ModelFileError(
          `${vocabPath} has no token ${JSON.stringify(p)}, which the text needs`,
        );
      }
      return id;
    });
    cache.set(word, ids);
    return ids;
  };

  return {
    description: `GPT-2 byte-level BPE (${Object.keys(vocab).length} tokens, ${ranks.size} merges)`,
    encode: (text) => {
      const ids: number[] = [];
      for (const m of text.matchAll(PRETOKENIZE)) {
        const word = Array.from(encoder.encode(m[0]), (b) => byteChar.get(b)!).join("");
        ids.push(...bpe(word));
      }
      return ids;
    },
    tokenBytes: (id) => {
      const token = idToken[id];
      if (token === undefined) return new Uint8Array(0); // padding rows of the embedding
      return Uint8Array.from(Array.from(token), (c) => charByte.get(c) ?? 0x3f);
    },
  };
}

function fileExists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** The tokenizer for a model, or undefined when the demo cannot tokenize its text. */
function tokenizerFor(dir: string, vocabSize: number): Tokenizer | undefined {
  if (vocabSize === 256) return byteTokenizer;
  if (fileExists(`${dir}/vocab.json`) && fileExists(`${dir}/merges.txt`)) {
    return bpeTokenizer(dir, vocabSize);
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------
// Output helpers

const isTerminal = (() => {
  try {
    return Deno.stdout.isTerminal();
  } catch {
    return false;
  }
})();
const encoder = new TextEncoder();

function write(text: string): void {
  Deno.stdout.writeSync(encoder.encode(text));
}

/** A progress line that rewrites itself, only on a terminal. */
function progress(text: string): void {
  if (isTerminal) write(`\r\x1b[2K${text}`);
}

function endProgress(): void {
  if (isTerminal) write("\r\x1b[2K");
}

function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

/** Columns padded to their widest cell; numbers right-aligned. */
function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]) =>
    cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c])))
      .join("  ");
  const rule = widths.map((w) => "-".repeat(w)).join("  ");
  return [line(header), rule, ...rows.map(line)].join("\n");
}

// ---------------------------------------------------------------------------------------
// The demo

/** Measured results of one mode. */
interface ModeResult {
  mode: string;
  loss: number;
  maxDiff: number;
  meanDiff: number;
  tokensPerSecond: number;
  error?: string;
}

/** `count` windows of `t` tokens: consecutive, or spread evenly over `ids` when `spread`. */
function windows(ids: number[], t: number, count: number, spread: boolean): number[][] {
  const available = Math.floor(ids.length / t);
  if (count > available) {
    throw new UsageError(
      `the text holds ${available} windows of ${t} tokens, fewer than the ${count} requested`,
    );
  }
  const stride = spread ? Math.floor(available / count) : 1;
  return Array.from({ length: count }, (_, i) => ids.slice(i * stride * t, (i * stride + 1) * t));
}

function idsTensor(rows: number[][], device: string): tq.Tensor {
  return tq.tensor(Int32Array.from(rows.flat()), { shape: [rows.length, rows[0].length], device });
}

/**
 * The model's forward, evaluating the residual stream after every block. Calibration reads
 * each Linear's input, which evaluates the graph up to it; results that are not read are not
 * kept, so without these checkpoints every read would recompute the residual stream from the
 * embeddings (time quadratic in depth).
 */
function forwardByBlock(model: tq.GPT2LMHeadModel, ids: tq.Tensor): tq.Tensor {
  const trunk = model.transformer;
  const positions = tq.arange(0, ids.shape[1], 1, { dtype: "int32", device: ids.device });
  let x = tq.add(trunk.wte.forward(ids), trunk.wpe.forward(positions));
  for (let i = 0; i < model.config.nLayer; i++) x = trunk.block(i).forward(x).evaluate();
  return model.lm_head.forward(trunk.ln_f.forward(x));
}

function synchronize(device: string): void {
  if (device.startsWith("cuda")) tq.cuda.synchronize();
}

/** Runs the demo; returns the process exit code. */
export function runDemo(options: DemoOptions): number {
  const { device } = options;
  if (device.startsWith("cuda") && !tq.cuda.isAvailable()) {
    console.error(`error: CUDA is not available: ${tq.cuda.unavailableReason()}`);
    return 1;
  }
  const load = () => tq.GPT2LMHeadModel.fromPretrained(options.model, { device });
  let start = performance.now();
  const model = load();
  const config = model.config;
  const loadSeconds = (performance.now() - start) / 1000;
  const tokenizer = tokenizerFor(options.model, config.vocabSize);
  if (!tokenizer) {
    console.error(
      `error: ${options.model} has a vocabulary of ${config.vocabSize} tokens and no ` +
        "vocab.json/merges.txt: this demo reads text as bytes (vocabulary 256) or with GPT-2's " +
        "BPE from those two files. Add them (they come with every Hugging Face GPT-2) or use a " +
        "byte-level model.",
    );
    return 2;
  }
  // The sample's prompt is checked now, not after calibration and evaluation.
  const prompt = tokenizer.encode(options.prompt);
  if (options.tokens > 0) {
    if (prompt.length === 0) throw new UsageError("--prompt must not be empty");
    if (prompt.length >= config.nPositions) {
      throw new UsageError(
        `--prompt is ${prompt.length} tokens, but the model has ${config.nPositions} positions ` +
          "and the sample needs at least one after the prompt",
      );
    }
  }
  if (options.window > config.nPositions) {
    throw new UsageError(`--window ${options.window} exceeds the model's ${config.nPositions}`);
  }
  const t = options.window;
  const params = [...new Set(model.parameters())].reduce((n, p) => n + p.size, 0);
  console.log(
    `model ${options.model}: ${config.nLayer} layers, ${config.nHead} heads, width ` +
      `${config.nEmbd}, ${config.nPositions} positions, vocabulary ${config.vocabSize}, ` +
      `${(params / 1e6).toFixed(2)}M parameters; loaded in ${
        loadSeconds.toFixed(2)
      } s on ${device}`,
  );
  console.log(`tokens: ${tokenizer.description}`);

  // Calibration on training text, with our own histogram of every Linear's input for the
  // report (calibrate() calls an observer that is already attached before its own).
  const trainIds = tokenizer.encode(Deno.readTextFileSync(TRAIN_TEXT));
  const heldoutIds = tokenizer.encode(Deno.readTextFileSync(HELDOUT_TEXT));
  const calibWindows = windows(trainIds, t, options.calibBatches * CALIB_BATCH_WINDOWS, true);
  const batches = Array.from(
    { length: options.calibBatches },
    (_, b) =>
      idsTensor(calibWindows.slice(b * CALIB_BATCH_WINDOWS, (b + 1) * CALIB_BATCH_WINDOWS), device),
  );
  const linears = tq.namedLinears(model);
  const histograms = new Map(linears.map(([name]) => [name, new tq.HistogramObserver()]));
  const attachHistograms = (on: boolean) => {
    for (const [name, layer] of linears) {
      const h = histograms.get(name)!;
      // Evaluate x itself (not only a cast of it) so that calibrate's own read reuses it.
      layer.inputObserver = on
        ? (x) => {
          x.evaluate();
          h.observe((x.dtype === "float32" ? x : tq.cast(x, "float32")).dataSync() as Float32Array);
        }
        : undefined;
    }
  };
  start = performance.now();
  let calibration: tq.Calibration;
  attachHistograms(true);
  try {
    calibration = tq.calibrate(model, batches, forwardByBlock, {
      method: options.method,
      perChannel: options.smoothquant !== undefined,
      onProgress: (done, total) =>
        progress(`calibrating (${options.method}): batch ${done}/${total} ...`),
    });
    // Should calibrate() ever stop calling observers attached before it, collect the
    // report's histograms in a pass of their own.
    if (linears.every(([name]) => histograms.get(name)!.count === 0)) {
      batches.forEach((batch, i) => {
        progress(`histograms for the report: batch ${i + 1}/${batches.length} ...`);
        forwardByBlock(model, batch);
      });
    }
  } finally {
    attachHistograms(false);
    endProgress();
  }
  console.log(
    `calibrated ${linears.length} Linear layers with ${options.method} on ` +
      `${plural(calibWindows.length, "training window")} of ${t} tokens in ` +
      `${((performance.now() - start) / 1000).toFixed(1)} s`,
  );

  // The report.
  const layers: LayerHistogram[] = linears.map(([name]) => {
    const h = histograms.get(name)!;
    return {
      name,
      counts: h.counts,
      range: h.range,
      amax: calibration.get(name)?.inputAmax,
      excluded: name === "lm_head",
    };
  });
  const html = renderCalibrationReport(layers, {
    method: options.method,
    subtitle: `Model ${options.model}; ${calibWindows.length} windows of ${t} tokens of ` +
      "Tiny Shakespeare training text.",
  });
  Deno.writeTextFileSync(options.report, html);
  console.log(`calibration report: ${options.report}`);

  // Evaluation: one [N, T] batch of consecutive held-out windows per mode.
  const evalIds = idsTensor(windows(heldoutIds, t, options.evalWindows, false), device);
  const nTokens = options.evalWindows * t;
  let floatLogits: tq.Tensor | undefined;
  const results: ModeResult[] = [];
  let best: { result: ModeResult; model: tq.GPT2LMHeadModel } | undefined;
  let fp8Calibration: tq.Calibration | undefined;
  // Each mode, plus the activation-quantized ones after SmoothQuant when asked for.
  const runs: { label: string; mode: tq.QuantizationMode | "float32"; smooth?: number }[] = [
    { label: "float32", mode: "float32" },
    ...QUANT_MODES.map((mode) => ({ label: mode, mode })),
  ];
  if (options.smoothquant !== undefined) {
    for (const mode of ["w8a8", "fp8"] as const) {
      runs.push({ label: `${mode}+sq${options.smoothquant}`, mode, smooth: options.smoothquant });
    }
  }
  for (const { label: mode, mode: quantMode, smooth } of runs) {
    progress(`evaluating ${mode} on ${plural(options.evalWindows, "held-out window")} ...`);
    let m = model;
    try {
      if (quantMode !== "float32") {
        m = load(); // a fresh float copy to quantize
        let calib = smooth === undefined ? calibration : tq.smoothQuant(m, calibration, {
          alpha: smooth,
          pairs: tq.gpt2SmoothQuantPairs(m.config),
        });
        // mse weighs the rounding of the dtype the inputs take: fp8 gets a search of its own.
        const dtype = quantMode === "fp8" && options.method === "mse" ? "float8e4m3" : "int8";
        // smoothQuant's ranges are max ranges: other methods calibrate the smoothed model again.
        if (smooth !== undefined && options.method !== "max") {
          calib = tq.calibrate(m, batches, forwardByBlock, { method: options.method, dtype });
        } else if (dtype === "float8e4m3") {
          fp8Calibration ??= tq.calibrate(model, batches, forwardByBlock, {
            method: "mse",
            dtype,
            onProgress: (done, total) => progress(`calibrating (mse, fp8): batch ${done}/${total}`),
          });
          calib = fp8Calibration;
        }
        tq.quantizeModel(m, { mode: quantMode, exclude: ["lm_head"], calibration: calib });
      }
      if (device.startsWith("cuda")) {
        m.forward(evalIds).evaluate(); // warm-up: plan lowering and GEMM autotuning
        synchronize(device);
      }
      const t0 = performance.now();
      const logits = m.forward(evalIds).evaluate();
      synchronize(device);
      const seconds = (performance.now() - t0) / 1000;
      const loss = tq.lossFromLogits(logits, evalIds);
      let maxDiff = 0, meanDiff = 0;
      if (floatLogits) {
        const diff = tq.abs(tq.sub(logits, floatLogits));
        maxDiff = tq.max(diff).item();
        meanDiff = tq.mean(diff).item();
      } else floatLogits = logits;
      const result = { mode, loss, maxDiff, meanDiff, tokensPerSecond: nTokens / seconds };
      results.push(result);
      if (mode !== "float32" && (!best || loss < best.result.loss)) best = { result, model: m };
    } catch (e) {
      // A mode the model cannot take (e.g. w4 blocks that do not divide a layer) is reported.
      if (mode === "float32" || !(e instanceof tq.TensorqError)) throw e;
      const error = e.message;
      results.push({ mode, loss: NaN, maxDiff: NaN, meanDiff: NaN, tokensPerSecond: NaN, error });
    }
  }
  endProgress();
  const num = (v: number, digits: number) => (Number.isFinite(v) ? v.toFixed(digits) : "n/a");
  console.log(
    `\nheld-out: ${plural(options.evalWindows, "window")} of ${t} tokens (${nTokens} tokens), ` +
      `loss in nats per token; |Δ logit| against float32; device ${device}`,
  );
  console.log(formatTable(
    ["mode", "loss", "perplexity", "max |Δ logit|", "mean |Δ logit|", "tokens/s"],
    results.map((r) => [
      r.mode,
      num(r.loss, 4),
      num(Math.exp(r.loss), 3),
      num(r.maxDiff, 4),
      num(r.meanDiff, 5),
      num(r.tokensPerSecond, 0),
    ]),
  ));
  for (const r of results) if (r.error) console.log(`${r.mode}: not evaluated: ${r.error}`);

  // A sample from the best quantized mode.
  if (options.tokens > 0 && best) {
    const room = config.nPositions - prompt.length;
    const maxNewTokens = Math.min(options.tokens, room);
    const how = options.greedy
      ? "greedy"
      : `top-${GENERATE_TOP_K} sampling, temperature ${GENERATE_TEMPERATURE}, seed ${options.seed}`;
    console.log(`\nsample from ${best.result.mode} (lowest quantized loss), ${how}:\n`);
    const text = new TextDecoder();
    write(options.prompt);
    start = performance.now();
    // The first token also pays the one-time work (compiling the decoder, loading kernels):
    // the rate is given for the tokens after it.
    let firstAt: number | undefined;
    const out = tq.generate(best.model, prompt, {
      maxNewTokens,
      strategy: options.greedy ? "greedy" : "sample",
      topK: GENERATE_TOP_K,
      temperature: GENERATE_TEMPERATURE,
      seed: options.seed,
      onToken: (id) => {
        firstAt ??= performance.now();
        write(text.decode(tokenizer.tokenBytes(id), { stream: true }));
      },
    });
    write(text.decode());
    console.log(`\n\n(${generationSummary(out.length, start, firstAt, performance.now())})`);
  }
  return 0;
}

/**
 * How long a generation of `count` tokens took, begun at `start` with its first token at
 * `firstAt` and its last at `end` (performance.now() times): the first token's wait (the prompt's
 * forward and the one-time work of compiling the decoder) apart from the rate of the rest.
 */
export function generationSummary(
  count: number,
  start: number,
  firstAt: number | undefined,
  end: number,
): string {
  const seconds = (end - start) / 1000;
  const total = `${plural(count, "token")} in ${seconds.toFixed(2)} s`;
  if (firstAt === undefined || count < 2) return `${total} with the KV cache`;
  const rest = (end - firstAt) / 1000;
  const rate = rest > 0 ? `${((count - 1) / rest).toFixed(1)} tokens/s` : "too fast to time";
  return `${total}: the first after ${((firstAt - start) / 1000).toFixed(2)} s (the prompt and ` +
    `compiling the decoder), then ${rate} with the KV cache`;
}

/** Parses `args`, runs the demo, and returns the exit code (2 for usage errors). */
export function main(args: string[]): number {
  try {
    const options = parseDemoArgs(args);
    if (options === "help") {
      console.log(USAGE);
      return 0;
    }
    return runDemo(options);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}\n\n${USAGE}`);
      return 2;
    }
    // Library errors and file system errors (e.g. the report cannot be written) in one line.
    if (
      e instanceof tq.TensorqError || e instanceof ModelFileError ||
      e instanceof Deno.errors.NotFound ||
      e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.IsADirectory
    ) {
      console.error(`error: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

if (import.meta.main) Deno.exit(main(Deno.args));
