/**
 * Seeded random tensors. A given seed always gives the same values on every machine
 * (a 32-bit xoshiro128** stream, Box–Muller for normals); without a seed, a global stream
 * seeded by {@link manualSeed} (default 0) is used.
 * @module
 */
import { checkDType, decode, type DType, dtypeInfo, encode } from "./dtype.ts";
import { TensorqError } from "./errors.ts";
import { checkFiniteNumber, checkShape, describeValue, numel, optionsOf } from "./shape.ts";
import {
  CREATE_OPTIONS,
  type CreateOptions,
  fromStorage,
  hostValues,
  type Tensor,
} from "./tensor.ts";

/** A reproducible stream of uniform numbers in [0, 1). */
export class RandomStream {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /**
   * Seeds the stream (splitmix32 expands the seed into the state). The low 32 bits of an
   * integer seed give the stream of seeds in [0, 2^32); higher bits (and a negative sign)
   * are mixed in on top, so 2^32 or -1 do not repeat the stream of 0 or 2^32 - 1.
   */
  constructor(seed: number) {
    const whole = checkSeed("RandomStream", seed);
    const high = Math.floor(whole / 2 ** 32); // -1 for small negative seeds
    let x = ((whole >>> 0) ^ 0x9e3779b9) >>> 0;
    const next = () => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    if (high !== 0) {
      x = ((high >>> 0) ^ 0x7f4a7c15) >>> 0;
      this.s0 = (this.s0 ^ next()) >>> 0;
      this.s1 = (this.s1 ^ next()) >>> 0;
      this.s2 = (this.s2 ^ next()) >>> 0;
      this.s3 = (this.s3 ^ next()) >>> 0;
    }
  }

  /** The next 32 random bits. */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** A uniform number in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.nextUint32() >>> 5;
    const lo = this.nextUint32() >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** A standard normal number (Box–Muller). */
  normal(): number {
    let u = 0;
    while (u === 0) u = this.uniform();
    const v = this.uniform();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

let globalStream = new RandomStream(0);

/** Reseeds the global stream used when no seed is given (any safe integer). */
export function manualSeed(seed: number): void {
  globalStream = new RandomStream(checkSeed("manualSeed", seed));
}

/** Options of {@link randn} and {@link rand}. */
export interface RandomOptions extends CreateOptions {
  /** Seed, any safe integer (`Date.now()` included): the same seed gives the same values. */
  seed?: number;
}

/**
 * `seed` if it is a safe integer; otherwise an argument error of `op` naming `argument`. A
 * fractional seed would be floored silently, so two seeds would give one stream.
 */
export function checkSeed(op: string, seed: unknown, argument = "seed"): number {
  if (typeof seed !== "number" || !Number.isSafeInteger(seed)) {
    throw new TensorqError("seed must be an integer", {
      op,
      kind: "argument",
      argument,
      expected: "a safe integer",
      actual: describeValue(seed),
    });
  }
  return seed;
}

function streamFor(op: string, seed: number | undefined): RandomStream {
  return seed === undefined ? globalStream : new RandomStream(checkSeed(op, seed));
}

/** Random values come in floating dtypes only. */
function floatDType(op: string, dtype: unknown): DType {
  const d = checkDType(op, "dtype", dtype ?? "float32");
  if (!dtypeInfo(d).isFloat) {
    throw new TensorqError("random values need a floating dtype", {
      op,
      kind: "dtype",
      argument: "dtype",
      expected: "float32, float16, bfloat16 or float8e4m3",
      actual: d,
    });
  }
  return d;
}

/**
 * Normal samples with mean `mean` and standard deviation `std` (default 0 and 1; finite,
 * `std >= 0`), in a floating dtype.
 */
export function randn(
  shape: readonly number[],
  options: RandomOptions & { mean?: number; std?: number } = {},
): Tensor {
  options = optionsOf("randn", options, [...CREATE_OPTIONS, "seed", "mean", "std"]);
  const s = checkShape("randn", shape);
  const dtype = floatDType("randn", options.dtype);
  const stream = streamFor("randn", options.seed);
  const mean = checkFiniteNumber("randn", "mean", options.mean ?? 0);
  const std = checkFiniteNumber("randn", "std", options.std ?? 1, true);
  const values = hostValues("randn", numel(s));
  for (let i = 0; i < values.length; i++) values[i] = mean + std * stream.normal();
  return fromStorage(encode(dtype, values), s, dtype, options.device);
}

/** `v` as `dtype` holds it (rounded to nearest even), as a number. */
function roundedTo(dtype: DType, v: number): number {
  return decode(dtype, encode(dtype, [v]))[0];
}

/**
 * The least float64 in [low, high] that `dtype` rounds to `high` or above (high itself when
 * none below it does), by bisection: rounding is monotonic, and `low` rounds below `high`.
 */
function roundingUpTo(dtype: DType, low: number, high: number): number {
  let below = low, above = high;
  for (let i = 0; i < 2200; i++) {
    const mid = below + (above - below) / 2;
    if (mid <= below || mid >= above) break; // adjacent float64 values
    if (roundedTo(dtype, mid) >= high) above = mid;
    else below = mid;
  }
  return above;
}

/**
 * Uniform samples in [low, high) (default [0, 1); finite, `low < high`), in a floating dtype.
 * A sample that the dtype would round up to `high` is drawn again, so `high` never appears.
 */
export function rand(
  shape: readonly number[],
  options: RandomOptions & { low?: number; high?: number } = {},
): Tensor {
  options = optionsOf("rand", options, [...CREATE_OPTIONS, "seed", "low", "high"]);
  const s = checkShape("rand", shape);
  const dtype = floatDType("rand", options.dtype);
  const stream = streamFor("rand", options.seed);
  const low = checkFiniteNumber("rand", "low", options.low ?? 0);
  const high = checkFiniteNumber("rand", "high", options.high ?? 1);
  const lowest = roundedTo(dtype, low);
  if (!(low < high) || !(lowest < high)) {
    throw new TensorqError("low must be below high (once rounded to the dtype)", {
      op: "rand",
      kind: "argument",
      argument: "high",
      expected: `a value above low = ${low} in ${dtype}`,
      actual: String(high),
    });
  }
  const values = hostValues("rand", numel(s));
  const draw = () => low + (high - low) * stream.uniform();
  for (let i = 0; i < values.length; i++) values[i] = draw();
  // Draws at or above `limit` round up to high in the dtype (about 1 in 2^(mantissa bits + 1)):
  // they are drawn again after the pass, so that the others keep their values and all stay
  // seeded. A range that (nearly) every draw rounds out of falls back to low, rounded.
  const limit = roundingUpTo(dtype, low, high);
  for (let i = 0; i < values.length; i++) {
    for (let tries = 0; values[i] >= limit; tries++) values[i] = tries < 64 ? draw() : lowest;
  }
  const storage = encode(dtype, values);
  return fromStorage(storage, s, dtype, options.device);
}
