/**
 * Timing helpers shared by the GPU benchmarks: CUDA-event timing on tensorq's device stream
 * ({@link timeGpu}), synchronized wall-clock timing per call ({@link timeWall}), input rotation
 * past the L2 cache ({@link rotationCount}), fast seeded normal data on the host
 * ({@link randnHost}), error measures ({@link relError}), the common command-line options
 * ({@link benchArgs}) and small report helpers.
 * @module
 */
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import type { CudaKernelContext } from "../lib/backends/cuda/kernels.ts";
import { randomOperandBytes } from "../lib/backends/cuda/cublaslt.ts";
import { CUDA_R_8I } from "../ffi/cublaslt.ts";
import { checkCuda, createEvent, cudaEventDefault, cudart, eventElapsedMs } from "../ffi/cudart.ts";
import { RandomStream } from "../lib/random.ts";
import { fromStorage } from "../lib/tensor.ts";
import * as tq from "../mod.ts";

/** The H200's L2 cache, rounded up (inputs rotate through several times this). */
export const L2_BYTES = 60e6;

/** Repetition counts. */
export interface TimingOptions {
  /** Untimed calls first (default 5). */
  warmup?: number;
  /** Timed repetitions (default 20). */
  reps?: number;
}

/** Statistics of a set of samples, in microseconds. */
export interface Stats {
  /** Median. */
  medianUs: number;
  /** 10th percentile. */
  p10Us: number;
  /** 90th percentile. */
  p90Us: number;
  /** Smallest sample. */
  minUs: number;
  /** Number of samples. */
  samples: number;
}

/** Options of {@link timeGpu}. */
export interface GpuTimingOptions extends TimingOptions {
  /**
   * The device the work runs on (default CUDA device 0). A `"cpu"` device is timed by the
   * wall clock per call instead, for smoke runs without a GPU.
   */
  device?: string;
}

/** Result of {@link timeGpu}. */
export interface GpuTiming extends Stats {
  /** Host time per call while enqueueing the timed calls (no synchronize inside). */
  hostUs: number;
  /** True when the host took about as long as the device: the figure is the host's. */
  hostBound: boolean;
  /** Every sample, in call order. */
  allUs: number[];
}

/** Linear-interpolated percentile `q` (0..1) of ascending `sorted`. */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.min(sorted.length - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** Median, p10, p90 and minimum of `samples` (microseconds). */
export function summarize(samples: readonly number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  return {
    medianUs: percentile(s, 0.5),
    p10Us: percentile(s, 0.1),
    p90Us: percentile(s, 0.9),
    minUs: s.length ? s[0] : NaN,
    samples: s.length,
  };
}

/** True when a CUDA device is usable. */
export function gpuAvailable(): boolean {
  return tq.cuda.isAvailable();
}

/** The first line of why CUDA is unavailable (its list of tried paths left out). */
export function gpuUnavailableLine(): string {
  const reason = tq.cuda.unavailableReason() ?? "no CUDA device";
  return reason.split("\n")[0].replace(/ Tried:$/, "");
}

/**
 * Exits with status 1 and one line naming `script` and why, when no CUDA device is usable (a
 * measurement that cannot run is a failure, not an empty table); `hint` says what runs
 * instead, e.g. "--smoke --device cpu".
 */
export function requireGpu(script: string, hint?: string): void {
  if (gpuAvailable()) return;
  console.error(
    `${script}: needs a CUDA GPU (${gpuUnavailableLine()})${hint ? `; try ${hint}` : ""}`,
  );
  Deno.exit(1);
}

/** The options a benchmark's command line may hold. */
export interface CommandLine {
  /** `--name VALUE` / `--name=VALUE` options. */
  values?: readonly string[];
  /** `--name` switches. */
  flags?: readonly string[];
}

/**
 * Checks `args` against the options `script` takes: an unknown option, a value option without
 * its value, or a positional word prints a usage line and exits with status 2 (a misspelt
 * option would otherwise run the defaults without a word).
 */
export function checkCommandLine(script: string, args: readonly string[], known: CommandLine) {
  const values = known.values ?? [];
  const flags = known.flags ?? [];
  const usage = () =>
    `usage: deno run -A bench/${script} ${
      [...values.map((v) => `[--${v} VALUE]`), ...flags.map((f) => `[--${f}]`)].join(" ")
    }`;
  const fail = (why: string): never => {
    console.error(`${script}: ${why}\n${usage()}`);
    Deno.exit(2);
  };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith("--")) fail(`unexpected argument ${JSON.stringify(a)}`);
    const [name, inline] = a.slice(2).split(/=(.*)/s, 2);
    if (flags.includes(name) && inline === undefined) continue;
    if (!values.includes(name)) fail(`unknown option --${name}`);
    if (inline !== undefined) continue;
    if (i + 1 >= args.length || args[i + 1].startsWith("--")) fail(`--${name} needs a value`);
    i++;
  }
}

/**
 * `--name`'s value as an integer in `[min, max]` (`fallback` when absent); anything else prints
 * the problem and exits with status 2 (a NaN would run and print NaN figures).
 */
export function intArg(
  script: string,
  args: readonly string[],
  name: string,
  fallback: number,
  min = 1,
  max = Number.MAX_SAFE_INTEGER,
): number {
  const text = argValue(args, name);
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
    console.error(`${script}: --${name} must be an integer ${range}, got ${JSON.stringify(text)}`);
    Deno.exit(2);
  }
  return n;
}

/**
 * Times device work with CUDA events recorded on tensorq's stream of device 0 around each
 * call: `fn(i)` must only enqueue work (no synchronize inside, or the host gap is counted).
 * Calls get `i = 0 .. warmup + reps - 1` (warm-up first), so callers can pre-build per-call
 * inputs and rotate among input sets. All events of the timed calls are created up front and
 * read after one final synchronize, so the host can run ahead of the device.
 */
export function timeGpu(fn: (i: number) => void, options: GpuTimingOptions = {}): GpuTiming {
  const warmup = options.warmup ?? 5;
  const reps = Math.max(1, options.reps ?? 20);
  if (options.device !== undefined && !options.device.startsWith("cuda")) {
    return timeHost(fn, warmup, reps);
  }
  const device = CudaDevice.get(0);
  for (let i = 0; i < warmup; i++) fn(i);
  device.synchronize();
  const starts = Array.from({ length: reps }, () => createEvent(cudaEventDefault));
  const ends = Array.from({ length: reps }, () => createEvent(cudaEventDefault));
  const lib = cudart();
  try {
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) {
      checkCuda(lib.cudaEventRecord(starts[r], device.stream), "cudaEventRecord");
      fn(warmup + r);
      checkCuda(lib.cudaEventRecord(ends[r], device.stream), "cudaEventRecord");
    }
    const hostUs = ((performance.now() - t0) * 1e3) / reps;
    device.synchronize();
    const allUs = starts.map((s, r) => eventElapsedMs(s, ends[r]) * 1e3);
    const stats = summarize(allUs);
    return { ...stats, hostUs, hostBound: hostUs >= 0.9 * stats.medianUs, allUs };
  } finally {
    for (const e of [...starts, ...ends]) lib.cudaEventDestroy(e);
  }
}

/** CPU stand-in for {@link timeGpu}: wall time of each (synchronous) call. */
function timeHost(fn: (i: number) => void, warmup: number, reps: number): GpuTiming {
  for (let i = 0; i < warmup; i++) fn(i);
  const allUs: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    fn(warmup + r);
    allUs.push((performance.now() - t0) * 1e3);
  }
  const stats = summarize(allUs);
  return { ...stats, hostUs: stats.medianUs, hostBound: false, allUs };
}

/** Options of {@link timeWall}. */
export interface WallOptions extends TimingOptions {
  /**
   * Calls per batch (default 1). A batch runs its calls back to back and then synchronizes;
   * `warmup` and `reps` count calls and are rounded up to whole batches.
   */
  batch?: number;
  /** Runs before each batch, outside the timed region (resetting state, say). */
  beforeBatch?: (batchIndex: number) => void;
  /** Waits for the device at the end of a batch (default `tq.cuda.synchronize`). */
  sync?: () => void;
}

/** Result of {@link timeWall}: statistics of the per-call time of each batch. */
export interface WallTiming extends Stats {
  /** Calls per batch. */
  batch: number;
  /** Timed calls in all. */
  calls: number;
}

/**
 * Wall-clock time per call: each batch runs `fn(i)` `batch` times back to back and then
 * synchronizes; a batch's time divided by `batch` is one sample, and the statistics are over
 * batches. `i` counts every call, warm-up included. Defaults: `reps` 10 batches, `warmup`
 * one batch.
 */
export function timeWall(fn: (i: number) => void, options: WallOptions = {}): WallTiming {
  const batch = Math.max(1, options.batch ?? 1);
  const warmupBatches = Math.ceil((options.warmup ?? batch) / batch);
  const batches = Math.max(1, Math.ceil((options.reps ?? 10 * batch) / batch));
  const sync = options.sync ?? (() => tq.cuda.synchronize());
  let call = 0;
  const samples: number[] = [];
  for (let b = 0; b < warmupBatches + batches; b++) {
    options.beforeBatch?.(b);
    sync();
    const t0 = performance.now();
    for (let k = 0; k < batch; k++) fn(call++);
    sync();
    const perCallUs = ((performance.now() - t0) * 1e3) / batch;
    if (b >= warmupBatches) samples.push(perCallUs);
  }
  return { ...summarize(samples), batch, calls: batches * batch };
}

/** Options of {@link rotationCount}. */
export interface RotationOptions {
  /** Cache size to defeat (default {@link L2_BYTES}). */
  l2Bytes?: number;
  /** The sets together should span this many times the cache (default 3). */
  factor?: number;
  /** At most this many sets (default 16). */
  max?: number;
}

/**
 * How many distinct input sets of `bytesPerSet` bytes to cycle through so that consecutive
 * uses of one set are separated by more than the L2 cache holds (1 when a set alone is large).
 */
export function rotationCount(bytesPerSet: number, options: RotationOptions = {}): number {
  const span = (options.l2Bytes ?? L2_BYTES) * (options.factor ?? 3);
  const n = Math.ceil(span / Math.max(1, bytesPerSet));
  return Math.max(1, Math.min(options.max ?? 16, n));
}

const POOL = 1 << 20;
let normalPool: Float32Array | undefined;

/** 2^20 exact standard normals (Box–Muller on tensorq's {@link RandomStream}), made once. */
function pool(): Float32Array {
  if (normalPool) return normalPool;
  const stream = new RandomStream(0x5eed);
  const p = new Float32Array(POOL);
  for (let i = 0; i < POOL; i += 2) {
    let u = 0;
    while (u === 0) u = stream.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    const a = 2 * Math.PI * stream.uniform();
    p[i] = r * Math.cos(a);
    p[i + 1] = r * Math.sin(a);
  }
  return (normalPool = p);
}

/**
 * `n` seeded normal samples (mean 0, standard deviation `std`) as float32, fast enough for
 * hundreds of millions of values: each element is drawn uniformly from a fixed pool of 2^20
 * exact normals, indexed by a xorshift stream seeded from `seed`. Never zero-filled.
 */
export function randnHost(n: number, seed: number, std = 1): Float32Array {
  const p = pool();
  const out = new Float32Array(n);
  let x = new RandomStream(seed).nextUint32() | 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = p[(x >>> 12) & (POOL - 1)] * std;
  }
  return out;
}

/** The float dtypes benchmarks create data in. */
export type BenchFloat = "float32" | "float16" | "bfloat16";

/**
 * Storage (tensorq's layout: float32 values, or float16/bfloat16 bit patterns) of `values`
 * rounded to nearest even, fast: the native Float16Array for float16 and a bit trick for
 * bfloat16 (tensorq's own encoder takes seconds for 64M values).
 */
export function encodeFast(dtype: BenchFloat, values: Float32Array): Float32Array | Uint16Array {
  if (dtype === "float32") return values;
  if (dtype === "float16") {
    const halves = new Float16Array(values);
    return new Uint16Array(halves.buffer, halves.byteOffset, halves.length);
  }
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i];
    // NaN stays NaN (quiet); everything else rounds to nearest even (overflow gives ±Inf).
    out[i] = (u & 0x7fffffff) > 0x7f800000
      ? (u >>> 16) | 0x40
      : (u + 0x7fff + ((u >>> 16) & 1)) / 65536;
  }
  return out;
}

/** `values` as the dtype stores them, back in float32 (see {@link encodeFast}). */
export function roundToDType(dtype: BenchFloat, values: Float32Array): Float32Array {
  if (dtype === "float32") return values;
  const storage = encodeFast(dtype, values) as Uint16Array;
  if (dtype === "float16") {
    return Float32Array.from(
      new Float16Array(storage.buffer, storage.byteOffset, storage.length),
    );
  }
  const out = new Float32Array(storage.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < storage.length; i++) bits[i] = storage[i] << 16;
  return out;
}

/** A tensor of `dtype` on `device` holding `values` rounded to nearest even, made fast. */
export function deviceTensor(
  values: Float32Array,
  shape: readonly number[],
  dtype: BenchFloat,
  device: string,
): tq.Tensor {
  return fromStorage(encodeFast(dtype, values), shape, dtype, device);
}

/**
 * A different array with the same values: `src` rotated by `shift` elements. Gives each
 * rotation set its own data (and its own buffers) without drawing new random numbers.
 */
export function rotated(src: Float32Array, shift: number): Float32Array {
  const n = src.length;
  const k = ((shift % n) + n) % n;
  const out = new Float32Array(n);
  out.set(src.subarray(k), 0);
  out.set(src.subarray(0, k), n - k);
  return out;
}

/** How far `out` is from `ref`. */
export interface ErrorReport {
  /** ‖out − ref‖₂ / ‖ref‖₂. */
  normRel: number;
  /** max |out − ref| / max |ref|. */
  maxRel: number;
  /** max |out − ref|. */
  maxAbs: number;
  /** Elements compared. */
  count: number;
  /** True when any output is NaN or infinite (never passes). */
  nonFinite: boolean;
}

/** Compares `out` with a higher-precision `ref` of the same length. */
export function relError(out: ArrayLike<number>, ref: ArrayLike<number>): ErrorReport {
  if (out.length !== ref.length) {
    throw new Error(`relError: lengths differ (${out.length} vs ${ref.length})`);
  }
  let num = 0, den = 0, maxAbs = 0, maxRef = 0;
  let nonFinite = false;
  for (let i = 0; i < out.length; i++) {
    const o = out[i];
    const r = ref[i];
    if (!Number.isFinite(o)) nonFinite = true;
    const d = Math.abs(o - r);
    num += d * d;
    den += r * r;
    if (d > maxAbs) maxAbs = d;
    if (Math.abs(r) > maxRef) maxRef = Math.abs(r);
  }
  return {
    normRel: den > 0 ? Math.sqrt(num / den) : Math.sqrt(num),
    maxRel: maxRef > 0 ? maxAbs / maxRef : maxAbs,
    maxAbs: nonFinite ? NaN : maxAbs,
    count: out.length,
    nonFinite,
  };
}

/** True when `e` is within `tolerance` (norm-relative) and all outputs are finite. */
export function errorPasses(e: ErrorReport, tolerance: number): boolean {
  return !e.nonFinite && e.normRel <= tolerance;
}

/** A short "normRel 1.2e-5, max rel 3.4e-5 (ok)" description. */
export function describeError(e: ErrorReport, tolerance: number): string {
  const verdict = errorPasses(e, tolerance) ? "ok" : `FAIL > ${tolerance}`;
  return `norm rel ${e.normRel.toExponential(2)}, max rel ${e.maxRel.toExponential(2)}` +
    `${e.nonFinite ? ", NON-FINITE" : ""} over ${e.count} values (${verdict})`;
}

/** Formats a number for a table cell (`—` for missing values). */
export function fmt(v: number | undefined | null, digits = 1): string {
  if (v === undefined || v === null || !Number.isFinite(v)) return "—";
  if (Math.abs(v) >= 1e4) return v.toFixed(0);
  return v.toFixed(digits);
}

/** A markdown table from a header and rows of cells. */
export function markdownTable(header: readonly string[], rows: readonly string[][]): string {
  const line = (cells: readonly string[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

/** The value of `--name VALUE` (or `--name=VALUE`) in `args`, if present. */
export function argValue(args: readonly string[], name: string): string | undefined {
  const flag = `--${name}`;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag) return args[i + 1];
    if (args[i].startsWith(`${flag}=`)) return args[i].slice(flag.length + 1);
  }
  return undefined;
}

/** True when `--name` is present in `args`. */
export function argFlag(args: readonly string[], name: string): boolean {
  return args.includes(`--${name}`);
}

/** The command-line options every GPU benchmark reads. */
export interface BenchArgs {
  /** `--out DIR`: where the report files go (none: not written). */
  outDir: string | undefined;
  /** `--quick`: fewer repetitions. */
  quick: boolean;
  /** `--smoke`: tiny shapes (runs without a GPU with `--device cpu`). */
  smoke: boolean;
  /** `--no-peer`: skip the PyTorch peer. */
  noPeer: boolean;
  /** `--device NAME`, `cuda` by default. */
  device: string;
}

/**
 * The common options of a GPU benchmark's `args`, after checking the whole command line
 * against them and the script's own (`extra`; see {@link checkCommandLine}).
 */
export function benchArgs(
  script: string,
  args: readonly string[],
  extra: CommandLine = {},
): BenchArgs {
  checkCommandLine(script, args, {
    values: ["out", "device", ...(extra.values ?? [])],
    flags: ["quick", "smoke", "no-peer", ...(extra.flags ?? [])],
  });
  const device = argValue(args, "device") ?? "cuda";
  if (!/^(cpu|cuda|cuda:\d+)$/.test(device)) {
    console.error(`${script}: --device must be cpu, cuda or cuda:N, got ${JSON.stringify(device)}`);
    Deno.exit(2);
  }
  return {
    outDir: argValue(args, "out"),
    quick: argFlag(args, "quick"),
    smoke: argFlag(args, "smoke"),
    noPeer: argFlag(args, "no-peer"),
    device,
  };
}

/** Prints one line of a benchmark's progress log. */
export function log(msg: string): void {
  console.log(msg);
}

/** Result of {@link runPeer}. */
export interface PeerResult {
  /** The JSON object the peer printed last on stdout (undefined when it failed). */
  json?: Record<string, unknown>;
  /** Why there is no result. */
  error?: string;
  /** Seconds the peer process ran. */
  seconds: number;
}

/**
 * Runs a Python peer script (`python3 SCRIPT ARGS...`) with its stderr passed through and
 * parses the last line of its stdout that is a JSON object. Failures are returned, not thrown.
 */
export async function runPeer(
  script: string,
  args: readonly string[],
  timeoutSeconds = 300,
): Promise<PeerResult> {
  const t0 = performance.now();
  const seconds = () => (performance.now() - t0) / 1e3;
  try {
    const cmd = new Deno.Command("python3", {
      args: [script, ...args],
      stdout: "piped",
      stderr: "inherit",
      env: { PYTHONUNBUFFERED: "1" },
      signal: AbortSignal.timeout(timeoutSeconds * 1e3),
    });
    const out = await cmd.output();
    const text = new TextDecoder().decode(out.stdout);
    const lines = text.split("\n").map((l) => l.trim()).filter((l) => l.startsWith("{"));
    for (let i = lines.length - 1; i >= 0; i--) {
      try {
        return { json: JSON.parse(lines[i]), seconds: seconds() };
      } catch {
        // not JSON: keep looking
      }
    }
    return {
      error: `peer exited with code ${out.code} without a JSON result`,
      seconds: seconds(),
    };
  } catch (e) {
    return {
      error: `peer failed: ${e instanceof Error ? e.message : String(e)}`,
      seconds: seconds(),
    };
  }
}

/** Writes `text` to `dir/name` (creating `dir`), ignoring a missing directory argument. */
export function writeOut(dir: string | undefined, name: string, text: string): void {
  if (!dir) return;
  Deno.mkdirSync(dir, { recursive: true });
  Deno.writeTextFileSync(`${dir}/${name}`, text);
}

/** The message of an error value. */
export function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.stack ?? e.message;
  return String(e);
}

/**
 * `count` bytes of seeded noise (cuBLASLt's autotune operands, {@link randomOperandBytes}): any
 * byte is a valid int8 code or pair of int4 codes; with `e4m3`, the NaN codes (0x7f, 0xff) are
 * replaced by their neighbours.
 */
export function noiseBytes(count: number, seed: number, e4m3 = false): Int8Array<ArrayBuffer> {
  // Random int8 codes are uniformly random bytes.
  const words = randomOperandBytes(CUDA_R_8I, Math.ceil(count / 4) * 4, seed);
  const bytes = new Int8Array(words.buffer, 0, count);
  if (e4m3) { for (let i = 0; i < count; i++) if ((bytes[i] & 0x7f) === 0x7f) bytes[i] ^= 1; }
  return bytes;
}

/**
 * The lowering context of a one-row `wlinear` (float16 x and output, `[n, k]` weight,
 * `scaleCount` float32 scales, no bias) on `device`, for launching its GEMV directly.
 */
export function wlinearRowContext(
  device: CudaDevice,
  n: number,
  k: number,
  scaleCount: number,
): CudaKernelContext {
  return {
    attrs: { activation: "none" },
    out: { shape: [1, n], dtype: "float16" },
    inputs: [
      { shape: [1, k], dtype: "float16" },
      { shape: [n, k], dtype: "float16" },
      { shape: [scaleCount], dtype: "float32" },
      { shape: [scaleCount], dtype: "float32" },
    ],
    device,
  };
}
