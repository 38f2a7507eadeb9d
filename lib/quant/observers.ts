/**
 * Range observers for calibration: each sees batches of values and proposes an absolute
 * maximum (amax) from which a quantization scale is derived (`scale = amax / maxBound`).
 *
 * - {@link MaxObserver}: the running max of |x| (ModelOpt's default "max" calibration).
 * - {@link PerChannelMaxObserver}: max |x| per channel of the last dimension (SmoothQuant).
 * - {@link HistogramObserver}: a histogram of |x| over `[0, running max]` (2048 bins), from
 *   which {@link HistogramObserver.percentile}, {@link HistogramObserver.entropy} (TensorRT's
 *   KL-divergence calibration) and {@link HistogramObserver.mse} choose an amax, following
 *   ModelOpt's `_compute_amax_*` functions (differences are noted on each method).
 *
 * Non-finite values (NaN, ±Infinity) are ignored by every observer.
 * @module
 */
import { float32ToFloat8e4m3Bits, float8e4m3BitsToNumber, roundHalfToEven } from "../dtype.ts";
import { TensorqError } from "../errors.ts";
import type { QuantDType } from "../ops/quantize.ts";
import { describeValue, optionsOf } from "../shape.ts";

/** Something that watches values and proposes an absolute maximum for them. */
export interface AmaxObserver {
  /** Adds a batch of values. */
  observe(x: Float32Array): void;
  /** The proposed amax (0 before any finite value was seen). */
  amax(): number;
  /** The number of finite values seen so far. */
  readonly count: number;
}

/**
 * The most bins or channels an observer takes: 2^24 float64 counters are 128 MiB, and a
 * larger size is a mistake (a byte count, 2**53) that would fail as a raw RangeError.
 */
const MAX_OBSERVER_SIZE = 2 ** 24;

const HISTOGRAM_OPTIONS = ["bins", "method", "percentile", "entropy", "mse"];
const FROM_COUNTS_OPTIONS = ["method", "percentile", "entropy", "mse"];
const SEARCH_OPTIONS = ["startBin", "stride", "dtype"];

function checkValues(op: string, x: unknown): Float32Array {
  if (x instanceof Float32Array) return x;
  throw new TensorqError("observers take a Float32Array", {
    op,
    kind: "argument",
    argument: "x",
    expected: "a Float32Array",
    actual: describeValue(x),
  });
}

function positiveInt(
  op: string,
  argument: string,
  v: unknown,
  min = 1,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max) return v as number;
  const bounded = max < Number.MAX_SAFE_INTEGER;
  throw new TensorqError(
    bounded
      ? `${argument} must be an integer in [${min}, ${max}]`
      : `${argument} must be an integer >= ${min}`,
    {
      op,
      kind: "argument",
      argument,
      expected: bounded ? `an integer from ${min} to ${max}` : `an integer >= ${min}`,
      actual: describeValue(v),
    },
  );
}

/** The running maximum of |x| over everything observed. */
export class MaxObserver implements AmaxObserver {
  #amax = 0;
  #count = 0;

  /** Adds a batch of values. */
  observe(x: Float32Array): void {
    checkValues("MaxObserver.observe", x);
    let m = this.#amax;
    let n = 0;
    for (let i = 0; i < x.length; i++) {
      const a = Math.abs(x[i]);
      if (a < Infinity) {
        n++;
        if (a > m) m = a;
      }
    }
    this.#amax = m;
    this.#count += n;
  }

  /** The largest |x| seen (0 before any value). */
  amax(): number {
    return this.#amax;
  }

  /** The number of finite values seen. */
  get count(): number {
    return this.#count;
  }
}

/**
 * The running maximum of |x| per channel of the last dimension: a batch of `k · channels`
 * values is read as `[k, channels]` rows. {@link PerChannelMaxObserver.amax} is the largest over all channels.
 */
export class PerChannelMaxObserver implements AmaxObserver {
  /** The number of channels (the extent of the last dimension). */
  readonly channels: number;
  readonly #amax: Float64Array;
  #count = 0;

  /** Creates an observer for `channels` channels. */
  constructor(channels: number) {
    this.channels = positiveInt(
      "PerChannelMaxObserver",
      "channels",
      channels,
      1,
      MAX_OBSERVER_SIZE,
    );
    this.#amax = new Float64Array(this.channels);
  }

  /** Adds a batch whose length is a multiple of {@link PerChannelMaxObserver.channels}. */
  observe(x: Float32Array): void {
    const op = "PerChannelMaxObserver.observe";
    checkValues(op, x);
    const c = this.channels;
    if (x.length % c !== 0) {
      throw new TensorqError("the batch is not a whole number of channel rows", {
        op,
        kind: "shape",
        argument: "x",
        expected: `a multiple of ${c} values (last dimension ${c})`,
        actual: `${x.length} values`,
      });
    }
    const m = this.#amax;
    let n = 0;
    for (let row = 0; row < x.length; row += c) {
      for (let j = 0; j < c; j++) {
        const a = Math.abs(x[row + j]);
        if (a < Infinity) {
          n++;
          if (a > m[j]) m[j] = a;
        }
      }
    }
    this.#count += n;
  }

  /** max |x| of each channel (0 for channels without finite values). */
  channelAmax(): Float32Array {
    return Float32Array.from(this.#amax);
  }

  /** The largest |x| over all channels. */
  amax(): number {
    let m = 0;
    for (const v of this.#amax) if (v > m) m = v;
    return m;
  }

  /** The number of finite values seen. */
  get count(): number {
    return this.#count;
  }
}

/** How a {@link HistogramObserver} turns its histogram into an amax. */
export type HistogramMethod = "percentile" | "entropy" | "mse";

/** Options of {@link HistogramObserver}. */
export interface HistogramObserverOptions {
  /**
   * Number of bins over `[0, running max]` (default 2048). A search visits about
   * `bins² / stride` bins (mse; half that for entropy) and refuses more than 2^32: at stride
   * 1, up to about 65k bins for mse and 92k for entropy.
   */
  bins?: number;
  /** The method {@link HistogramObserver.amax} uses (default "entropy"). */
  method?: HistogramMethod;
  /** The percentile for method "percentile" (default 99.99). */
  percentile?: number;
  /** Options for method "entropy". */
  entropy?: EntropyOptions;
  /** Options for method "mse". */
  mse?: MseOptions;
}

/** Options of {@link HistogramObserver.entropy}. */
export interface EntropyOptions {
  /** The first candidate threshold, in bins (default 128). */
  startBin?: number;
  /** Step between candidate thresholds, in bins (default 1). */
  stride?: number;
  /** Target dtype: int8 quantizes to 128 levels (default), int4 to 8. */
  dtype?: "int8" | "int4";
}

/** Options of {@link HistogramObserver.mse}. */
export interface MseOptions {
  /** The first candidate bin (default 128). */
  startBin?: number;
  /** Step between candidate bins (default 1). */
  stride?: number;
  /** Target dtype whose rounding is simulated (default int8). */
  dtype?: QuantDType;
}

const METHODS: readonly HistogramMethod[] = ["percentile", "entropy", "mse"];

/**
 * A histogram of |x| with a fixed number of bins (default 2048) spanning `[0, max]`, where
 * `max` is the largest finite |x| seen so far. Bin `k` covers `[k·w, (k+1)·w)` with
 * `w = max / bins`; the last bin also holds `max` itself.
 *
 * When a batch raises the max, the existing counts are re-binned into the wider range: each
 * old bin's count is spread over the new bins it overlaps in proportion to the overlap
 * (density assumed uniform within a bin), so counts may become fractional. (ModelOpt instead
 * appends bins of the old width, so its bin count grows; keeping 2048 bins keeps the
 * candidate search of {@link HistogramObserver.entropy} over bins 128..2048 as in TensorRT.)
 */
export class HistogramObserver implements AmaxObserver {
  /** Number of bins. */
  readonly bins: number;
  /** The method {@link HistogramObserver.amax} uses. */
  readonly method: HistogramMethod;
  readonly #percentile: number;
  readonly #entropy: EntropyOptions;
  readonly #mse: MseOptions;
  #counts: Float64Array;
  #range = 0;
  #count = 0;

  /**
   * Creates an empty histogram. Every option is checked here, the `entropy` and `mse` ones
   * (which {@link HistogramObserver.amax} uses) included.
   */
  constructor(options: HistogramObserverOptions = {}) {
    const op = "HistogramObserver";
    options = optionsOf<HistogramObserverOptions>(op, options, HISTOGRAM_OPTIONS);
    this.bins = positiveInt(op, "bins", options.bins ?? 2048, 2, MAX_OBSERVER_SIZE);
    const method = options.method ?? "entropy";
    if (!(METHODS as readonly unknown[]).includes(method)) {
      throw new TensorqError("unknown histogram method", {
        op,
        kind: "argument",
        argument: "method",
        expected: `one of ${METHODS.join(", ")}`,
        actual: describeValue(method),
      });
    }
    this.method = method;
    this.#percentile = checkPercentile(op, options.percentile ?? 99.99);
    // Checked now, not when amax() first uses them.
    this.#entropy = { ...subOptions(op, "entropy", options.entropy) };
    // A search's length is checked here only for the method amax() will run.
    entropySettings(op, this.#entropy, this.bins, "entropy.", method === "entropy");
    this.#mse = { ...subOptions(op, "mse", options.mse) };
    mseSettings(op, this.#mse, this.bins, "mse.", method === "mse");
    this.#counts = new Float64Array(this.bins);
  }

  /**
   * A histogram from given counts over `[0, range]` (for tests, or to reuse a histogram
   * collected elsewhere). `counts.length` is the number of bins.
   */
  static fromCounts(
    counts: ArrayLike<number>,
    range: number,
    options: Omit<HistogramObserverOptions, "bins"> = {},
  ): HistogramObserver {
    const op = "HistogramObserver.fromCounts";
    // An array or typed array: a number, a string or a tensor would read as no bins at all.
    const length = typeof counts === "object" && counts !== null
      ? (counts as { length?: unknown }).length
      : undefined;
    if (!Number.isSafeInteger(length) || typeof counts === "string") {
      throw new TensorqError("counts must be an array of bin counts", {
        op,
        kind: "argument",
        argument: "counts",
        expected: "an array or typed array of finite numbers >= 0",
        actual: describeValue(counts),
      });
    }
    positiveInt(op, "counts.length", length, 2, MAX_OBSERVER_SIZE);
    // 0 is the range of a histogram that saw only zeros (or nothing), so it round-trips.
    if (typeof range !== "number" || !(range >= 0 && range < Infinity)) {
      throw new TensorqError("range must be finite and non-negative", {
        op,
        kind: "argument",
        argument: "range",
        expected: "a finite number >= 0",
        actual: describeValue(range),
      });
    }
    const rest = optionsOf<Omit<HistogramObserverOptions, "bins">>(
      op,
      options,
      FROM_COUNTS_OPTIONS,
    );
    const h = new HistogramObserver({ ...rest, bins: counts.length });
    let total = 0;
    for (let i = 0; i < counts.length; i++) {
      const c = counts[i];
      if (typeof c !== "number" || !(c >= 0 && c < Infinity)) {
        throw new TensorqError("counts must be finite and non-negative", {
          op,
          kind: "argument",
          argument: "counts",
          expected: "finite numbers >= 0",
          actual: `${describeValue(c)} at index ${i}`,
        });
      }
      h.#counts[i] = c;
      total += c;
    }
    h.#range = range;
    h.#count = total;
    return h;
  }

  /** The histogram's upper end: the largest finite |x| seen (0 before any). */
  get range(): number {
    return this.#range;
  }

  /** Width of one bin (`range / bins`). */
  get binWidth(): number {
    return this.#range / this.bins;
  }

  /** A copy of the bin counts. */
  get counts(): Float64Array {
    return this.#counts.slice();
  }

  /** The number of finite values seen (the sum of the counts). */
  get count(): number {
    return this.#count;
  }

  /** Adds |x| of a batch to the histogram, widening (and re-binning) it first if needed. */
  observe(x: Float32Array): void {
    checkValues("HistogramObserver.observe", x);
    let m = 0;
    for (let i = 0; i < x.length; i++) {
      const a = Math.abs(x[i]);
      if (a < Infinity && a > m) m = a;
    }
    if (m > this.#range) this.#rebin(m);
    const counts = this.#counts;
    const last = this.bins - 1;
    const range = this.#range;
    const perUnit = range > 0 ? this.bins / range : 0;
    const w = this.binWidth;
    let n = 0;
    for (let i = 0; i < x.length; i++) {
      const a = Math.abs(x[i]);
      if (!(a < Infinity)) continue;
      n++;
      let k = Math.floor(a * perUnit);
      if (k > last) k = last;
      // `a · (bins / range)` rounds twice and can put a value on an edge k·w into bin k − 1:
      // step to the bin whose edges hold it.
      else if (a < k * w) k--;
      else if (k < last && w > 0 && a >= (k + 1) * w) k++;
      counts[k]++;
    }
    this.#count += n;
  }

  /** Spreads the counts over `[0, newRange]`, proportionally to the overlap of old/new bins. */
  #rebin(newRange: number): void {
    const old = this.#counts;
    const oldWidth = this.#range / this.bins;
    const newWidth = newRange / this.bins;
    const next = new Float64Array(this.bins);
    const last = this.bins - 1;
    for (let k = 0; k < old.length; k++) {
      const c = old[k];
      if (c === 0) continue;
      if (oldWidth === 0) {
        next[0] += c; // everything seen so far was 0
        continue;
      }
      const lo = k * oldWidth;
      const hi = lo + oldWidth;
      const j = Math.min(Math.floor(lo / newWidth), last);
      const edge = (j + 1) * newWidth;
      // The new bins are wider, so an old bin overlaps at most two of them.
      if (hi <= edge || j === last) next[j] += c;
      else {
        const inFirst = c * ((edge - lo) / oldWidth);
        next[j] += inFirst;
        next[j + 1] += c - inFirst;
      }
    }
    this.#counts = next;
    this.#range = newRange;
  }

  /** The amax by the method chosen at construction. */
  amax(): number {
    switch (this.method) {
      case "percentile":
        return this.percentile(this.#percentile);
      case "entropy":
        return this.entropy(this.#entropy);
      default:
        return this.mse(this.#mse);
    }
  }

  /**
   * The amax that keeps `p` percent of the values: the upper edge `(k + 1)·w` of the first
   * bin `k` at which the cumulative count reaches `p`% of the total. `percentile(100)` is the
   * max. (ModelOpt's `_compute_amax_percentile` returns that bin's lower edge `k·w`.)
   *
   * @param p The percentile, in (0, 100] (default 99.99).
   * @returns The amax; 0 for an empty histogram.
   */
  percentile(p: number = 99.99): number {
    checkPercentile("HistogramObserver.percentile", p);
    const counts = this.#counts;
    let total = 0;
    for (const c of counts) total += c;
    if (total === 0 || this.#range === 0) return 0;
    // p / 100 of the total, less a relative 1e-12: p is a decimal fraction that binary
    // floating point rounds (99.9 / 100 rounds up), which must not skip the bin at which the
    // count reaches the target exactly.
    const target = (p / 100) * total * (1 - 1e-12);
    let cum = 0;
    for (let k = 0; k < counts.length; k++) {
      cum += counts[k];
      if (cum >= target) return k === counts.length - 1 ? this.#range : (k + 1) * this.binWidth;
    }
    return this.#range; // rounding left cum a hair short of total
  }

  /**
   * TensorRT's entropy (KL-divergence) calibration, as ModelOpt's `_compute_amax_entropy`:
   * bin 0 is first replaced by bin 1 (discounting a spike of zeros); for each candidate
   * threshold `i` (in bins) from `startBin` to `bins`, the reference distribution P is
   * `bins[0:i]` with all counts beyond it added into its last bin, and the candidate Q
   * merges `bins[0:i]` into 128 levels (8 for int4; bin `j` goes to level
   * `floor(j·levels/i)`) and spreads each level's count evenly over its non-empty bins.
   * The threshold minimizing KL(P‖Q) wins (the largest on ties).
   *
   * A threshold whose `bins[0:i]` are all empty has no Q, so its divergence is infinite.
   * (ModelOpt's `scipy.stats.entropy` gives NaN there, which its argmin picks: the lower edge
   * of the lowest occupied bin above bin 0, clipping all the data above it.)
   *
   * Convention: the amax is the winning threshold's upper bin edge `i·w` (ModelOpt's
   * `calib_bin_edges[i]`), not the bin center `(i − 0.5)·w`.
   *
   * @param options `startBin` (128), `stride` (1), `dtype` (int8).
   * @returns The amax; 0 for an empty or all-zero histogram.
   */
  entropy(options: EntropyOptions = {}): number {
    const n = this.bins;
    const { levels, start, stride } = entropySettings(
      "HistogramObserver.entropy",
      subOptions("HistogramObserver.entropy", "options", options),
      n,
      "options.",
    );
    if (this.#count === 0 || this.#range === 0) return 0;
    const bins = this.#counts.slice();
    bins[0] = bins[1];
    let total = 0;
    for (const c of bins) total += c;
    // suffix[i] = sum of bins[i:], the outliers of threshold i.
    const suffix = new Float64Array(n + 1);
    for (let k = n - 1; k >= 0; k--) suffix[k] = suffix[k + 1] + bins[k];
    const levelSum = new Float64Array(levels);
    const levelNonZero = new Float64Array(levels);
    let best = -1;
    let bestKl = Infinity;
    for (let i = start; i <= n; i += stride) {
      levelSum.fill(0);
      levelNonZero.fill(0);
      for (let j = 0; j < i; j++) {
        const c = bins[j];
        if (c === 0) continue;
        const l = Math.floor((j * levels) / i);
        levelSum[l] += c;
        levelNonZero[l]++;
      }
      const sumP = total;
      const sumQ = total - suffix[i];
      let kl = 0;
      if (sumQ <= 0) kl = Infinity;
      for (let j = 0; j < i && kl < Infinity; j++) {
        const p = (j === i - 1 ? bins[j] + suffix[i] : bins[j]) / sumP;
        if (p === 0) continue;
        const c = bins[j];
        if (c === 0) {
          kl = Infinity; // P has mass where Q has none
          break;
        }
        const l = Math.floor((j * levels) / i);
        const q = levelSum[l] / levelNonZero[l] / sumQ;
        kl += p * Math.log(p / q);
      }
      if (kl <= bestKl) {
        bestKl = kl;
        best = i;
      }
    }
    // Infinity <= Infinity: when every candidate diverges, the last one wins, as in ModelOpt.
    return best === n ? this.#range : best * this.binWidth;
  }

  /**
   * The amax minimizing the expected squared quantization error, as ModelOpt's
   * `_compute_amax_mse`: candidates are the bin centers `(k + 0.5)·w` for `k` from
   * `startBin` to the last bin; for each, every bin center `c` is fake-quantized
   * (`s = amax / maxBound`, `q = clamp(roundHalfToEven(c / s))·s`, in float64; float8e4m3
   * rounds to its grid and saturates at 448) and the error `Σ count·(q − c)²` is summed.
   * The first minimum wins. (ModelOpt's simulation zeroes everything for an integer amax
   * <= 2^-24 and fp8 values < 2^-24, so on data that small its candidates tie and the first
   * wins; nothing is zeroed here, as the quantizer does not zero such scales.)
   *
   * @param options `startBin` (128), `stride` (1), `dtype` (int8).
   * @returns The amax (a bin center); 0 for an empty or all-zero histogram.
   */
  mse(options: MseOptions = {}): number {
    const n = this.bins;
    const { dtype, bound, start, stride } = mseSettings(
      "HistogramObserver.mse",
      subOptions("HistogramObserver.mse", "options", options),
      n,
      "options.",
    );
    if (this.#count === 0 || this.#range === 0) return 0;
    const w = this.binWidth;
    const counts = this.#counts;
    const centers = new Float64Array(n);
    for (let k = 0; k < n; k++) centers[k] = (k + 0.5) * w;
    let best = start;
    let bestErr = Infinity;
    for (let i = start; i < n; i += stride) {
      const amax = centers[i];
      const s = amax / bound;
      let err = 0;
      for (let k = 0; k < n; k++) {
        const c = counts[k];
        if (c === 0) continue;
        const x = centers[k];
        let q: number;
        if (dtype === "float8e4m3") q = float8e4m3BitsToNumber(float32ToFloat8e4m3Bits(x / s));
        else q = Math.min(roundHalfToEven(x / s), bound);
        const d = q * s - x;
        err += c * d * d;
      }
      if (err < bestErr) {
        bestErr = err;
        best = i;
      }
    }
    return centers[best];
  }
}

function checkPercentile(op: string, p: unknown): number {
  if (typeof p === "number" && p > 0 && p <= 100) return p;
  throw new TensorqError("percentile must be in (0, 100]", {
    op,
    kind: "argument",
    argument: "percentile",
    expected: "a number in (0, 100], e.g. 99.99",
    actual: describeValue(p),
  });
}

/** `options` checked as a plain object of `startBin`, `stride`, `dtype` (undefined/null: `{}`). */
function subOptions<T extends object>(op: string, argument: string, options: T | undefined): T {
  return optionsOf<T>(op, options, SEARCH_OPTIONS, argument);
}

/**
 * Entropy options checked against `bins`, with their defaults; `prefix` names them in errors
 * (`"entropy."` for the constructor's).
 */
function entropySettings(
  op: string,
  options: EntropyOptions,
  bins: number,
  prefix = "",
  checkSteps = true,
): { levels: number; start: number; stride: number } {
  const levels = levelsFor(op, options.dtype ?? "int8", `${prefix}dtype`);
  const start = positiveInt(op, `${prefix}startBin`, options.startBin ?? Math.min(128, bins), 1);
  const stride = positiveInt(op, `${prefix}stride`, options.stride ?? 1);
  if (start > bins) {
    throw new TensorqError("startBin exceeds the number of bins", {
      op,
      kind: "argument",
      argument: `${prefix}startBin`,
      expected: `at most ${bins}`,
      actual: describeValue(start),
    });
  }
  if (checkSteps) {
    // Threshold i compares i bins.
    const candidates = Math.floor((bins - start) / stride) + 1;
    checkSearchSteps(op, prefix, candidates * (start + (stride * (candidates - 1)) / 2), bins);
  }
  return { levels, start, stride };
}

/**
 * The most bin visits an amax search may take: on a 2-core development machine about 10 s for
 * mse and 90 s for entropy, whose visits cost more. A search over a histogram of millions of
 * bins would otherwise run for days. Default histograms take a few million.
 */
const MAX_SEARCH_STEPS = 2 ** 32;

function checkSearchSteps(op: string, prefix: string, steps: number, bins: number): void {
  if (steps <= MAX_SEARCH_STEPS) return;
  throw new TensorqError(`the amax search over ${bins} bins would take too long`, {
    op,
    kind: "argument",
    argument: `${prefix}stride`,
    expected: `startBin and stride that leave at most 2^32 bin visits (candidates × bins)`,
    actual: `about ${steps.toExponential(2)} visits`,
  });
}

/** Mse options checked against `bins`, with their defaults (see {@link entropySettings}). */
function mseSettings(
  op: string,
  options: MseOptions,
  bins: number,
  prefix = "",
  checkSteps = true,
): { dtype: QuantDType; bound: number; start: number; stride: number } {
  const dtype = options.dtype ?? "int8";
  const bound = boundFor(op, dtype, `${prefix}dtype`);
  const start = positiveInt(
    op,
    `${prefix}startBin`,
    options.startBin ?? Math.min(128, bins - 1),
    0,
  );
  const stride = positiveInt(op, `${prefix}stride`, options.stride ?? 1);
  if (start >= bins) {
    throw new TensorqError("startBin must be below the number of bins", {
      op,
      kind: "argument",
      argument: `${prefix}startBin`,
      expected: `at most ${bins - 1}`,
      actual: describeValue(start),
    });
  }
  // Every candidate fake-quantizes every bin.
  if (checkSteps) {
    checkSearchSteps(op, prefix, (Math.floor((bins - 1 - start) / stride) + 1) * bins, bins);
  }
  return { dtype, bound, start, stride };
}

function levelsFor(op: string, dtype: unknown, argument = "dtype"): number {
  if (dtype === "int8") return 128;
  if (dtype === "int4") return 8;
  throw new TensorqError("entropy calibration supports int8 and int4", {
    op,
    kind: "dtype",
    argument,
    expected: "int8 or int4",
    actual: describeValue(dtype),
  });
}

function boundFor(op: string, dtype: unknown, argument = "dtype"): number {
  if (dtype === "int8") return 127;
  if (dtype === "int4") return 7;
  if (dtype === "float8e4m3") return 448;
  throw new TensorqError("unsupported quantized dtype", {
    op,
    kind: "dtype",
    argument,
    expected: "int8, int4 or float8e4m3",
    actual: describeValue(dtype),
  });
}
