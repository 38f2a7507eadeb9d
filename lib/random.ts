/**
 * Seeded random tensors. A given seed always gives the same values on every machine
 * (a 32-bit xoshiro128** stream, Box–Muller for normals); without a seed, a global stream
 * seeded by {@link manualSeed} (default 0) is used.
 * @module
 */
import { checkDType, encode } from "./dtype.ts";
import { TensorqError } from "./errors.ts";
import { checkShape, numel } from "./shape.ts";
import { type CreateOptions, fromStorage, hostValues, type Tensor } from "./tensor.ts";

/** A reproducible stream of uniform numbers in [0, 1). */
export class RandomStream {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** Seeds the stream (splitmix32 expands the seed into the state). */
  constructor(seed: number) {
    let x = (Math.floor(seed) ^ 0x9e3779b9) >>> 0;
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

/** Reseeds the global stream used when no seed is given. */
export function manualSeed(seed: number): void {
  globalStream = new RandomStream(seed);
}

/** Options of {@link randn} and {@link rand}. */
export interface RandomOptions extends CreateOptions {
  /** Seed: the same seed gives the same values. */
  seed?: number;
}

function streamFor(op: string, seed: number | undefined): RandomStream {
  if (seed === undefined) return globalStream;
  if (!Number.isFinite(seed)) {
    throw new TensorqError("seed must be a finite number", {
      op,
      kind: "argument",
      argument: "seed",
      actual: String(seed),
    });
  }
  return new RandomStream(seed);
}

/** Normal samples with mean `mean` and standard deviation `std` (default 0 and 1). */
export function randn(
  shape: readonly number[],
  options: RandomOptions & { mean?: number; std?: number } = {},
): Tensor {
  const s = checkShape("randn", shape);
  const dtype = checkDType("randn", "dtype", options.dtype ?? "float32");
  const stream = streamFor("randn", options.seed);
  const mean = options.mean ?? 0;
  const std = options.std ?? 1;
  const values = hostValues("randn", numel(s));
  for (let i = 0; i < values.length; i++) values[i] = mean + std * stream.normal();
  return fromStorage(encode(dtype, values), s, dtype, options.device);
}

/** Uniform samples in [low, high) (default [0, 1)). */
export function rand(
  shape: readonly number[],
  options: RandomOptions & { low?: number; high?: number } = {},
): Tensor {
  const s = checkShape("rand", shape);
  const dtype = checkDType("rand", "dtype", options.dtype ?? "float32");
  const stream = streamFor("rand", options.seed);
  const low = options.low ?? 0;
  const high = options.high ?? 1;
  const values = hostValues("rand", numel(s));
  for (let i = 0; i < values.length; i++) values[i] = low + (high - low) * stream.uniform();
  return fromStorage(encode(dtype, values), s, dtype, options.device);
}
