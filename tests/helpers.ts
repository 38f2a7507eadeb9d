/**
 * Test helpers: the devices to run on, the shared fixtures beside the checkout, seeded random
 * data, closeness checks, error checks that assert the op, kind, message and reported line,
 * and the unfused form of the fused Linear ops' activations.
 * @module
 */
import assert from "node:assert/strict";
import { TensorqError } from "../lib/errors.ts";
import { decode, type DType, float8e4m3BitsToNumber } from "../lib/dtype.ts";
import { backendFor } from "../lib/backends/backend.ts";
import type { Tensor } from "../lib/tensor.ts";
import type { LinearOptions } from "../lib/nn/layers.ts";
import { randn, RandomStream } from "../lib/random.ts";
import { scaleFromAmax } from "../lib/quant/scale.ts";

/** True when GPU tests were asked for (`deno task test:gpu`). */
export const GPU_REQUIRED: boolean = Deno.env.get("TENSORQ_TEST_GPU") === "1";

/** Why CUDA tests are skipped, or undefined when a GPU is usable. */
export function cudaSkipReason(): string | undefined {
  const cuda = backendFor("cuda");
  if (!cuda) return "the cuda backend is not loaded";
  // The first line says what failed; the full reason (every path tried) is in the error.
  return cuda.unavailableReason()?.split("\n")[0].replace(/ Tried:$/, "");
}

/**
 * Registers `fn` as a test on every device: always on "cpu"; on "cuda" when a GPU is usable,
 * otherwise as an ignored test with a visible skip message (a failure under test:gpu).
 */
export function testOnDevices(name: string, fn: (device: string) => void | Promise<void>): void {
  Deno.test(`${name} [cpu]`, () => fn("cpu"));
  testOnGpu(name, () => fn("cuda"));
}

/** Registers a GPU-only test (ignored with a visible message when no GPU is usable). */
export function testOnGpu(name: string, fn: () => void | Promise<void>): void {
  const reason = cudaSkipReason();
  if (reason && !GPU_REQUIRED) {
    Deno.test({ name: `${name} [cuda] (skipped: no GPU: ${reason})`, ignore: true, fn });
    return;
  }
  Deno.test(`${name} [cuda]`, async () => {
    if (reason) throw new Error(`GPU tests required but no GPU is usable: ${reason}`);
    await fn();
  });
}

/** The shared models, fixtures and data beside the checkout (`../shared`), when present. */
export const SHARED_DIR: URL = new URL("../../shared/", import.meta.url);

/** True when every path is an existing file. */
export function filesExist(...paths: (string | URL)[]): boolean {
  return paths.every((p) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  });
}

/**
 * Registers a test that needs files of `../shared` (`present`: whether they exist); without
 * them it is ignored with a visible "(skipped: no ../shared)". `gpu`: a GPU test
 * ({@link testOnGpu}) when the files are present.
 */
export function sharedTest(
  present: boolean,
  name: string,
  fn: () => void | Promise<void>,
  options: { gpu?: boolean } = {},
): void {
  if (!present) {
    const suffix = options.gpu ? " [cuda]" : "";
    Deno.test({ name: `${name}${suffix} (skipped: no ../shared)`, ignore: true, fn });
  } else if (options.gpu) testOnGpu(name, fn);
  else Deno.test(name, fn);
}

/** Seeded random float64 values: normal (default) or uniform in [low, high). */
export function randomValues(
  n: number,
  seed: number,
  options: { low?: number; high?: number; normal?: boolean } = {},
): Float64Array {
  const s = new RandomStream(seed);
  const out = new Float64Array(n);
  const uniform = options.low !== undefined || options.high !== undefined;
  for (let i = 0; i < n; i++) {
    out[i] = uniform && !options.normal
      ? (options.low ?? 0) + ((options.high ?? 1) - (options.low ?? 0)) * s.uniform()
      : s.normal();
  }
  return out;
}

/**
 * `count` seeded random codes of `q` as the kernels store them before any packing (int8 bytes,
 * int4 values in an Int8Array, e4m3 bit patterns without the NaN codes), and their values.
 */
export function randomCodes(q: "int8" | "int4" | "float8e4m3", count: number, seed: number): {
  storage: Int8Array | Uint8Array;
  values: Float64Array;
} {
  const r = new RandomStream(seed);
  const values = new Float64Array(count);
  if (q === "float8e4m3") {
    const storage = new Uint8Array(count);
    for (let i = 0; i < count; i++) {
      let b = r.nextUint32() & 0xff;
      if ((b & 0x7f) === 0x7f) b ^= 1; // no NaN codes
      storage[i] = b;
      values[i] = float8e4m3BitsToNumber(b);
    }
    return { storage, values };
  }
  const [lo, span] = q === "int8" ? [-128, 256] : [-8, 16];
  const storage = new Int8Array(count);
  for (let i = 0; i < count; i++) {
    storage[i] = lo + (r.nextUint32() % span);
    values[i] = storage[i];
  }
  return { storage, values };
}

/**
 * Asserts |actual − expected| <= atol + rtol·|expected| elementwise (NaN only matches NaN);
 * reports the worst element.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  options: { rtol?: number; atol?: number; message?: string } = {},
): void {
  const rtol = options.rtol ?? 1e-6;
  const atol = options.atol ?? 0;
  assert.equal(actual.length, expected.length, `${options.message ?? ""} length`);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(e) || Number.isNaN(a)) {
      if (Number.isNaN(e) !== Number.isNaN(a)) {
        worst = i;
        worstExcess = Infinity;
        break;
      }
      continue;
    }
    if (a === e) continue;
    const excess = Math.abs(a - e) - (atol + rtol * Math.abs(e));
    if (excess > worstExcess || (excess > 0 && worst < 0)) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    assert.fail(
      `${options.message ?? "values differ"}: at flat index ${worst} got ${
        actual[worst]
      }, expected ${expected[worst]} (rtol ${rtol}, atol ${atol})`,
    );
  }
}

/**
 * Asserts |actual − expected| ≤ tol·max(max|expected|, 1e-2·magnitude) elementwise and a
 * norm-relative error ≤ tol, for sums of products: `magnitude` is the size of the summed terms
 * (max over outputs of Σ|x·w| + |b|). Sums can cancel far below it (a single output, an
 * activation that zeroes it), while float32 sums err in proportion to it.
 */
export function assertNearSums(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what: string,
  magnitude: number,
): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  assert.ok(magnitude > 0, `${what}: the summed terms are all zero`);
  let num = 0, den = 0, scale = 1e-2 * magnitude;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  for (let i = 0; i < expected.length; i++) {
    const d = actual[i] - expected[i];
    assert.ok(
      Math.abs(d) <= tol * scale,
      `${what}: at ${i} got ${actual[i]}, expected ${expected[i]} (max|ref| ${scale}, tol ${tol})`,
    );
    num += d * d;
    den += expected[i] * expected[i];
  }
  const rel = Math.sqrt(num / Math.max(den, expected.length * (1e-2 * magnitude) ** 2));
  assert.ok(rel <= tol, `${what}: norm-relative error ${rel} > ${tol}`);
}

/**
 * Asserts that `fn` throws a TensorqError of the given op and kind whose message contains
 * each of `includes` and that reports the line of the caller (pass the line of the call).
 */
export function assertTqError(
  fn: () => unknown,
  expected: { op: string; kind?: string; includes?: string[]; line?: number },
): TensorqError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof TensorqError, `expected a TensorqError, got ${caught}`);
  assert.equal(caught.op, expected.op);
  if (expected.kind) assert.equal(caught.kind, expected.kind);
  for (const s of expected.includes ?? []) {
    assert.ok(
      caught.message.includes(s),
      `message ${JSON.stringify(caught.message)} lacks ${JSON.stringify(s)}`,
    );
  }
  if (expected.line !== undefined) {
    assert.ok(caught.callSite, "no call site reported");
    assert.equal(caught.callSite.line, expected.line, `reported ${caught.message}`);
    assert.ok(caught.message.includes(`_test.ts:${expected.line}:`), caught.message);
  }
  return caught;
}

/** The activations of the fused Linear ops. */
export type Activation = "none" | "relu" | "gelu" | "gelu_tanh";

/** `t` through activation `act` as its own op (none or undefined: `t` itself). */
export function applyActivation(t: Tensor, act: Activation | undefined): Tensor {
  switch (act) {
    case "relu":
      return t.relu();
    case "gelu":
      return t.gelu();
    case "gelu_tanh":
      return t.gelu({ approximate: "tanh" });
    default:
      return t;
  }
}

/** A module of this repository, by its path relative to tests/, as a quoted import specifier. */
export function repoModule(path: string): string {
  return JSON.stringify(new URL(path, import.meta.url).href);
}

/**
 * Runs `script` with `deno eval` in a new process (with `env` added, and Deno's `flags`): fails
 * the test, with the process's output, unless it exits with code 0; returns the JSON value of its
 * last stdout line.
 */
export async function evalInProcess<T>(
  script: string,
  env?: Record<string, string>,
  flags: string[] = [],
): Promise<T> {
  const run = await new Deno.Command(Deno.execPath(), {
    args: ["eval", ...flags, script],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(run.stdout);
  assert.equal(run.code, 0, text + new TextDecoder().decode(run.stderr));
  return JSON.parse(text.trim().split("\n").at(-1) ?? "") as T;
}

/** The line number of the caller of this function (for error-line assertions). */
export function thisLine(): number {
  const stack = new Error().stack!.split("\n")[2];
  return Number(/:(\d+):\d+\)?$/.exec(stack)![1]);
}

/** A tensor's values as float64 numbers (read back to the host; 16-bit and fp8 decoded). */
export function values(t: Tensor): Float64Array {
  return Float64Array.from(decode(t.dtype, t.storageSync()));
}

/**
 * The state dict of an `n × k` Linear with `options`: a seeded random weight (std 0.05), with
 * `bias` a random bias (std 0.1, seed + 1), and for a weight-only quantized one (quantDtype,
 * weightQuantDim, blockSize) its weight scale from the amax per output channel (or per block of
 * `blockSize` along k).
 */
export function linearState(
  options: LinearOptions,
  n: number,
  k: number,
  dtype: DType,
  seed: number,
  bias: boolean,
): Record<string, Tensor> {
  const weight = randn([n, k], { seed, std: 0.05, dtype });
  const dict: Record<string, Tensor> = { weight };
  if (bias) dict.bias = randn([n], { seed: seed + 1, std: 0.1, dtype });
  if (options.quantDtype === undefined) return dict;
  const w32 = weight.cast("float32").abs();
  const amax = options.blockSize !== undefined
    ? w32.reshape([n, k / options.blockSize, options.blockSize]).max(2)
    : w32.max(1);
  dict.weightScale = scaleFromAmax(amax, options.quantDtype);
  return dict;
}
