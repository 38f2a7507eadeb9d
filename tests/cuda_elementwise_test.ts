/**
 * CUDA elementwise kernels against the CPU backend on the same seeded random non-zero inputs:
 * every op × every dtype its rule allows, at sizes that hit the packed vector paths and their
 * scalar tails (1, 7, 1023, 2^16 + 3) and the grid-stride loops (2^20 + 3 up to 2^23 + 5),
 * broadcast patterns (strided kernels and the scalar fast path), special values (NaN, ±Inf,
 * ±0, overflow and rounding boundaries), casts between all nine dtypes and packed int4 with odd
 * lengths and odd offsets. GPU-only checks compare with hand-computed values where the CPU
 * computes through float64 (int64 wrapping, int64 → float rounding beyond 2^53).
 *
 * CPU-side checks (run everywhere): every kernel a plan names exists in both PTX targets, and
 * replaying the strided kernels' index arithmetic over a plan's arguments visits exactly the
 * elements NumPy broadcasting picks.
 *
 * Tolerances: bit-exact (NaN matches any NaN, -0 must match -0), except transcendental
 * functions (exp, log, tanh, sigmoid, gelu, pow): float32 within 1e-5 relative, float16 and
 * bfloat16 within 1 ulp of the output dtype.
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import {
  allocStorage,
  type DType,
  DTYPES,
  encode,
  FLOAT_DTYPES,
  NUMERIC_DTYPES,
  type StorageArray,
} from "../lib/dtype.ts";
import { TensorqError } from "../lib/errors.ts";
import { fromStorage, type Tensor } from "../lib/tensor.ts";
import { RandomStream } from "../lib/random.ts";
import { numel } from "../lib/shape.ts";
import { broadcastIndex } from "../lib/backends/cpu/util.ts";
import { backendFor } from "../lib/backends/backend.ts";
import type { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import {
  collapseBroadcast,
  type ElementwisePlan,
  MAX_STRIDED_RANK,
  planElementwise,
} from "../lib/backends/cuda/elementwise.ts";
import { ptx } from "../kernels/ptx/elementwise.ts";
import { assertClose, testOnGpu } from "./helpers.ts";

// ---------------------------------------------------------------------------------------------
// The op table (mirrors the rules in lib/ops/elementwise.ts)

const ARITHMETIC = ["add", "sub", "mul", "div", "maximum", "minimum"];
const COMPARISONS = ["equal", "notEqual", "less", "lessEqual", "greater", "greaterEqual"];
const BINARY: [string, readonly DType[]][] = [
  ...ARITHMETIC.map((op): [string, readonly DType[]] => [op, NUMERIC_DTYPES]),
  ["pow", FLOAT_DTYPES],
  ...COMPARISONS.map((op): [string, readonly DType[]] => [
    op,
    op === "equal" || op === "notEqual" ? [...NUMERIC_DTYPES, "bool"] : NUMERIC_DTYPES,
  ]),
];
const EXACT_UNARY = ["neg", "abs", "relu", "sqrt", "rsqrt"];
const TRANSCENDENTAL_UNARY = ["exp", "log", "tanh", "sigmoid", "gelu", "geluTanh"];
const UNARY: [string, readonly DType[]][] = [
  ...["neg", "abs", "relu"].map((op): [string, readonly DType[]] => [op, NUMERIC_DTYPES]),
  ...["sqrt", "rsqrt", ...TRANSCENDENTAL_UNARY].map((op): [string, readonly DType[]] => [
    op,
    FLOAT_DTYPES,
  ]),
];

type Fn = (...t: Tensor[]) => Tensor;
const ops = tq as unknown as Record<string, Fn>;

function binaryFn(op: string): Fn {
  return (a, b) => ops[op](a, b);
}

function unaryFn(op: string): Fn {
  if (op === "gelu") return (x) => tq.gelu(x);
  if (op === "geluTanh") return (x) => tq.gelu(x, { approximate: "tanh" });
  return (x) => ops[op](x);
}

const SIZES = [1, 7, 1023, (1 << 16) + 3];

// ---------------------------------------------------------------------------------------------
// Inputs

interface Input {
  storage: StorageArray;
  shape: number[];
  dtype: DType;
}

interface RandomOptions {
  /** Floats: multiply the normal samples by this (default 3). */
  scale?: number;
  /** Floats: take absolute values. */
  positive?: boolean;
  /** Floats: clip to [-clip, clip]. */
  clip?: number;
  /** Integers: draw from [-range, range) (default: the dtype's range; int64 2^40). */
  range?: number;
  /** Values placed first (encoded to the dtype), then random values. */
  specials?: readonly number[];
  /** Repeat the first `period` values (cheap inputs for large sizes; a prime period keeps
   * every misplaced element visible). */
  period?: number;
}

const INT_RANGE: Partial<Record<DType, number>> = {
  int4: 8,
  int8: 128,
  int32: 2 ** 31,
  int64: 2 ** 40,
};

function nonZeroInt(s: RandomStream, range: number): number {
  for (;;) {
    const v = Math.floor(s.uniform() * 2 * range) - range;
    if (v !== 0) return v;
  }
}

/** Seeded random non-zero values of `dtype` as host storage. */
function randomStorage(dtype: DType, n: number, seed: number, o: RandomOptions = {}): StorageArray {
  if (o.period !== undefined && o.period < n) {
    const base = randomStorage(dtype, o.period, seed, { ...o, period: undefined });
    const out = allocStorage(dtype, n);
    const tile = base as { subarray(begin: number, end: number): StorageArray };
    const dest = out as { set(values: StorageArray, offset: number): void };
    for (let i = 0; i < n; i += base.length) dest.set(tile.subarray(0, n - i), i);
    return out;
  }
  const s = new RandomStream(seed);
  const specials = (o.specials ?? []).slice(0, n);
  const values = new Float64Array(n);
  values.set(specials);
  if (dtype === "int64") {
    const range = o.range ?? INT_RANGE.int64!;
    const out = new BigInt64Array(n);
    for (let i = 0; i < n; i++) {
      out[i] = i < specials.length ? BigInt(specials[i]) : BigInt(nonZeroInt(s, range));
    }
    return out;
  }
  for (let i = specials.length; i < n; i++) {
    if (dtype === "bool") values[i] = s.uniform() < 0.5 ? 0 : 1;
    else if (INT_RANGE[dtype] !== undefined) {
      values[i] = nonZeroInt(s, o.range ?? INT_RANGE[dtype]!);
    } else {
      let v = s.normal() * (o.scale ?? 3);
      if (v === 0) v = 0.5;
      if (o.positive) v = Math.abs(v);
      if (o.clip !== undefined) v = Math.max(-o.clip, Math.min(o.clip, v));
      values[i] = v;
    }
  }
  return encode(dtype, values);
}

function input(dtype: DType, shape: number[], seed: number, o: RandomOptions = {}): Input {
  return { storage: randomStorage(dtype, numel(shape), seed, o), shape, dtype };
}

/** Makes every third element of `b` equal to `a`'s (same shapes): ties for comparisons. */
function withTies(a: Input, b: Input): Input {
  const storage = b.storage.slice() as StorageArray;
  for (let i = 0; i < storage.length; i += 3) storage[i] = a.storage[i];
  return { ...b, storage };
}

// ---------------------------------------------------------------------------------------------
// Running on both backends and comparing

interface Results {
  cpu: StorageArray;
  gpu: StorageArray;
  dtype: DType;
  gpuTensor?: Tensor;
}

/** Runs `fn` on the CPU and on the GPU over the same inputs; returns both outputs' storage. */
function both(fn: Fn, inputs: Input[], keepGpu = false): Results {
  const cpu = fn(...inputs.map((i) => fromStorage(i.storage, i.shape, i.dtype, "cpu")));
  const gpuInputs = inputs.map((i) => fromStorage(i.storage, i.shape, i.dtype, "cuda"));
  const gpu = fn(...gpuInputs);
  const results: Results = { cpu: cpu.storageSync(), gpu: gpu.storageSync(), dtype: cpu.dtype };
  assert.deepEqual(gpu.shape, cpu.shape);
  for (const t of gpuInputs) t.dispose();
  if (keepGpu) results.gpuTensor = gpu;
  else gpu.dispose();
  return results;
}

function isNaNBits(dtype: DType, bits: number): boolean {
  switch (dtype) {
    case "float16":
      return (bits & 0x7c00) === 0x7c00 && (bits & 0x3ff) !== 0;
    case "bfloat16":
      return (bits & 0x7f80) === 0x7f80 && (bits & 0x7f) !== 0;
    case "float8e4m3":
      return (bits & 0x7f) === 0x7f;
    default:
      return false;
  }
}

function show(dtype: DType, v: number | bigint): string {
  if (typeof v === "bigint") return `${v}n`;
  if (dtype === "float16" || dtype === "bfloat16" || dtype === "float8e4m3") {
    return `0x${v.toString(16)}`;
  }
  return Object.is(v, -0) ? "-0" : String(v);
}

/** Bit-exact equality (NaN matches any NaN; -0 and 0 differ). */
function assertSame(r: Results, what: string): void {
  const { cpu, gpu, dtype } = r;
  assert.equal(gpu.length, cpu.length, `${what}: length`);
  for (let i = 0; i < cpu.length; i++) {
    const g = gpu[i], c = cpu[i];
    if (Object.is(g, c)) continue;
    if (
      typeof g === "number" && typeof c === "number" && isNaNBits(dtype, g) && isNaNBits(dtype, c)
    ) {
      continue;
    }
    assert.fail(`${what}: at ${i} gpu ${show(dtype, g)}, cpu ${show(dtype, c)}`);
  }
}

/** float16/bfloat16 bits as integers ordered like the values (±0 both 0). */
function ordered16(bits: number): number {
  return bits & 0x8000 ? -(bits & 0x7fff) : bits;
}

/** Transcendental tolerance: float32 1e-5 relative; float16/bfloat16 1 ulp. */
function assertNear(r: Results, what: string): void {
  const { cpu, gpu, dtype } = r;
  if (dtype === "float32") {
    assertClose(gpu as Float32Array, cpu as Float32Array, { rtol: 1e-5, message: what });
    return;
  }
  assert.ok(dtype === "float16" || dtype === "bfloat16", `${what}: ${dtype}`);
  assert.equal(gpu.length, cpu.length, `${what}: length`);
  for (let i = 0; i < cpu.length; i++) {
    const g = gpu[i] as number, c = cpu[i] as number;
    const gNaN = isNaNBits(dtype, g), cNaN = isNaNBits(dtype, c);
    if (gNaN && cNaN) continue;
    if (gNaN !== cNaN || Math.abs(ordered16(g) - ordered16(c)) > 1) {
      assert.fail(`${what}: at ${i} gpu ${show(dtype, g)}, cpu ${show(dtype, c)} (> 1 ulp)`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// CPU-side checks of the plans

const ENTRIES: Set<string>[] = [ptx.ptxSm90a, ptx.ptxCompute80].map((text) =>
  new Set([...text.matchAll(/^\.visible \.entry (\w+)\(/gm)].map((m) => m[1]))
);

function plan(
  op: string,
  out: number[],
  dtype: DType,
  inputs: [number[], DType][],
): ElementwisePlan {
  const attrs = op === "geluTanh"
    ? { approximate: "tanh" }
    : op === "gelu"
    ? { approximate: "none" }
    : {};
  return planElementwise(
    op === "geluTanh" ? "gelu" : op,
    attrs,
    { shape: out, dtype },
    inputs.map(([shape, dtype]) => ({ shape, dtype })),
  );
}

function assertKernelExists(p: ElementwisePlan, what: string): void {
  assert.ok(p.kernel !== undefined, `${what}: no kernel planned`);
  for (const entries of ENTRIES) assert.ok(entries.has(p.kernel), `${what}: ${p.kernel} missing`);
}

Deno.test("every kernel an elementwise plan names exists in both PTX targets", () => {
  const binaryShapes: [number[], number[], number[]][] = [
    [[4], [4], [4]],
    [[], [4], [4]],
    [[4], [1], [4]],
    [[3, 1], [1, 4], [3, 4]],
  ];
  let planned = 0;
  for (const [op, dtypes] of BINARY) {
    for (const dtype of dtypes) {
      const outDType = COMPARISONS.includes(op) ? "bool" : dtype;
      for (const [sa, sb, so] of binaryShapes) {
        assertKernelExists(plan(op, so, outDType, [[sa, dtype], [sb, dtype]]), `${op} ${dtype}`);
        planned++;
      }
    }
  }
  for (const [op, dtypes] of UNARY) {
    for (const dtype of dtypes) {
      assertKernelExists(plan(op, [5], dtype, [[[5], dtype]]), `${op} ${dtype}`);
      planned++;
    }
  }
  for (const from of DTYPES) {
    for (const to of DTYPES) {
      const p = plan("cast", [5], to, [[[5], from]]);
      if (from === to) assert.ok(p.alias && p.kernel === undefined, `cast ${from} → ${to}`);
      else assertKernelExists(p, `cast ${from} → ${to}`);
      planned++;
    }
  }
  for (const dtype of DTYPES) {
    for (const [sc, sa, sb, so] of [[[5], [5], [5], [5]], [[5, 1], [1, 3], [], [5, 3]]]) {
      assertKernelExists(
        plan("where", so, dtype, [[sc, "bool"], [sa, dtype], [sb, dtype]]),
        `where ${dtype} ${sc}`,
      );
      planned++;
    }
  }
  assert.ok(planned > 300);
  // Empty outputs launch nothing.
  assert.equal(
    plan("add", [0, 3], "float32", [[[0, 3], "float32"], [[3], "float32"]]).kernel,
    undefined,
  );
});

const BROADCASTS: number[][][] = [
  [[3, 1, 5], [4, 1]],
  [[4, 1], [3, 1, 5]],
  [[2, 3, 4, 5], [3, 1, 5]],
  [[7, 1, 9], [7, 5, 1]],
  [[1, 6, 1, 1, 4], [5, 1, 2, 1, 1]],
  [[257, 1], [1, 33]],
  // Alternating broadcast dims: nothing merges, rank 8.
  [[2, 1, 3, 1, 2, 1, 2, 1], [1, 2, 1, 2, 1, 3, 1, 2]],
];

/** Replays offsets_of (kernels/elementwise.cu) over a strided plan's arguments. */
function replayStrided(p: ElementwisePlan, inputs: number): number[][] {
  const values = p.args.map(([, v]) => v);
  const [n, rank] = values;
  const dims = values.slice(2, 2 + MAX_STRIDED_RANK);
  const strides = Array.from(
    { length: inputs },
    (_, k) => values.slice(2 + MAX_STRIDED_RANK * (k + 1), 2 + MAX_STRIDED_RANK * (k + 2)),
  );
  assert.ok(rank >= 1 && rank <= MAX_STRIDED_RANK);
  const out = strides.map(() => new Array<number>(n));
  for (let i = 0; i < n; i++) {
    let rest = i;
    const off = strides.map(() => 0);
    for (let d = 0; d < rank - 1; d++) {
      const q = Math.floor(rest / dims[d]);
      const c = rest - q * dims[d];
      rest = q;
      strides.forEach((s, k) => (off[k] += c * s[d]));
    }
    strides.forEach((s, k) => (off[k] += rest * s[rank - 1]));
    off.forEach((o, k) => (out[k][i] = o));
  }
  return out;
}

Deno.test("strided plans visit exactly the elements NumPy broadcasting picks", () => {
  for (const [sa, sb] of BROADCASTS) {
    const so = tq.add(tq.zeros(sa), tq.zeros(sb)).shape;
    const p = plan("add", so, "float32", [[sa, "float32"], [sb, "float32"]]);
    assert.equal(p.kernel, "add_f32_bcast", `${sa} ${sb}`);
    const offsets = replayStrided(p, 2);
    [sa, sb].forEach((s, k) => {
      const want = broadcastIndex(s, so) ?? Int32Array.from({ length: numel(so) }, (_, i) => i);
      assert.deepEqual(offsets[k], Array.from(want), `${sa} ${sb}: input ${k}`);
    });
    // where: the condition broadcast a third way.
    const sc = so.map((d, i) => (i % 2 === 0 ? d : 1));
    const w = plan("where", so, "int4", [[sc, "bool"], [sa, "int4"], [sb, "int4"]]);
    assert.equal(w.kernel, "where_i4");
    assert.equal(w.items, Math.ceil(numel(so) / 2));
    const woff = replayStrided(w, 3);
    [sc, sa, sb].forEach((s, k) => {
      const want = broadcastIndex(s, so) ?? Int32Array.from({ length: numel(so) }, (_, i) => i);
      assert.deepEqual(woff[k], Array.from(want), `where ${sc} ${sa} ${sb}: input ${k}`);
    });
  }
});

Deno.test("collapseBroadcast drops size-1 dims and merges dims that step together", () => {
  assert.deepEqual(collapseBroadcast([2, 3, 4], [[2, 3, 4], [2, 3, 4]]), {
    dims: [24],
    strides: [[1], [1]],
  });
  // Bias add [B, T, C] + [C] is a 2-D broadcast.
  assert.deepEqual(collapseBroadcast([2, 3, 4], [[2, 3, 4], [4]]), {
    dims: [4, 6],
    strides: [[1, 4], [1, 0]],
  });
  assert.deepEqual(collapseBroadcast([3, 4, 5], [[3, 1, 5], [4, 1]]), {
    dims: [5, 4, 3],
    strides: [[1, 0, 5], [0, 1, 0]],
  });
  assert.deepEqual(collapseBroadcast([], [[], []]), { dims: [1], strides: [[0], [0]] });
  const nine = [2, 1, 2, 1, 2, 1, 2, 1, 2];
  const other = nine.map((d) => 3 - d);
  assert.equal(collapseBroadcast(nine.map(() => 2), [nine, other]).dims.length, 9);
  assert.throws(
    () => plan("add", nine.map(() => 2), "float32", [[nine, "float32"], [other, "float32"]]),
    (e: unknown) =>
      e instanceof TensorqError && e.kind === "unsupported" && e.message.includes("at most 8"),
  );
});

// ---------------------------------------------------------------------------------------------
// GPU against CPU

/** Input options per op: positive inputs where the function needs them, etc. */
function binaryInputs(op: string, dtype: DType, shapes: number[][], seed: number): Input[] {
  const o: RandomOptions = {};
  // CPU int32/int64 products go through float64: keep them below 2^53 so it is exact.
  if (op === "mul" && (dtype === "int32" || dtype === "int64")) o.range = 2 ** 26;
  const a = input(dtype, shapes[0], seed, op === "pow" ? { positive: true, scale: 2 } : o);
  let b = input(dtype, shapes[1], seed + 1, op === "pow" ? { scale: 2 } : o);
  if (numel(shapes[0]) === numel(shapes[1])) b = withTies(a, b);
  return [a, b];
}

testOnGpu("binary ops match the CPU on every dtype and size (vector paths and tails)", () => {
  let seed = 1000;
  for (const n of SIZES) {
    for (const [op, dtypes] of BINARY) {
      for (const dtype of dtypes) {
        const r = both(binaryFn(op), binaryInputs(op, dtype, [[n], [n]], seed += 2));
        const what = `${op} ${dtype} n=${n}`;
        if (op === "pow") assertNear(r, what);
        else assertSame(r, what);
      }
    }
  }
});

testOnGpu("binary ops broadcast: strided kernels and tensor ⊕ scalar fast paths", () => {
  const patterns: number[][][] = [
    ...BROADCASTS,
    [[], [1023]],
    [[1023], []],
    [[1], [2, 3]],
    [[2, 3], [1, 1]],
    [[], []],
  ];
  let seed = 2000;
  for (const shapes of patterns) {
    for (const [op, dtypes] of BINARY) {
      for (const dtype of dtypes) {
        const r = both(binaryFn(op), binaryInputs(op, dtype, shapes, seed += 2));
        const what = `${op} ${dtype} [${shapes[0]}] ⊕ [${shapes[1]}]`;
        if (op === "pow") assertNear(r, what);
        else assertSame(r, what);
      }
    }
  }
});

const FLOAT_SPECIALS = [NaN, Infinity, -Infinity, 0, -0, 1, -1, 2, -2.5, 0.5, 3, 1e-3, 65504, 1e30];

testOnGpu("binary ops on special float values (NaN, ±Inf, ±0, overflow)", () => {
  const k = FLOAT_SPECIALS.length;
  const av = FLOAT_SPECIALS.flatMap((v) => new Array<number>(k).fill(v));
  const bv = FLOAT_SPECIALS.flatMap(() => FLOAT_SPECIALS);
  for (const dtype of FLOAT_DTYPES) {
    const a: Input = { storage: encode(dtype, av), shape: [k * k], dtype };
    const b: Input = { storage: encode(dtype, bv), shape: [k * k], dtype };
    const scalar: Input = { storage: encode(dtype, [NaN]), shape: [], dtype };
    for (const [op] of BINARY) {
      const r = both(binaryFn(op), [a, b]);
      if (op === "pow") assertNear(r, `${op} ${dtype}`);
      else assertSame(r, `${op} ${dtype}`);
      // NaN as the scalar operand, on either side.
      assertSame(both(binaryFn(op), [a, scalar]), `${op} ${dtype} x ⊕ NaN`);
      assertSame(both(binaryFn(op), [scalar, b]), `${op} ${dtype} NaN ⊕ x`);
    }
  }
});

function intTensor(values: (number | bigint)[], dtype: DType, device: string): Tensor {
  if (dtype === "int64") {
    return tq.tensor(BigInt64Array.from(values, (v) => BigInt(v)), { device });
  }
  return tq.tensor(values.map(Number), { dtype, device });
}

testOnGpu("integer arithmetic wraps, truncates, and gives 0 for x / 0", () => {
  // int8 and int32: hand-computed values, which the CPU must agree with.
  const cases: { dtype: DType; a: number[]; b: number[]; expect: Record<string, number[]> }[] = [
    {
      dtype: "int8",
      a: [-128, 100, 7, -7, 5, 127],
      b: [-1, 100, 0, 2, 0, -128],
      expect: {
        add: [127, -56, 7, -5, 5, -1],
        sub: [-127, 0, 7, -9, 5, -1],
        mul: [-128, 16, 0, -14, 0, -128],
        div: [-128, 1, 0, -3, 0, 0],
      },
    },
    {
      dtype: "int32",
      a: [-(2 ** 31), 2 ** 31 - 1, 7, -7, 46341, 5],
      b: [-1, 1, 0, 2, 46341, 0],
      expect: {
        add: [2 ** 31 - 1, -(2 ** 31), 7, -5, 92682, 5],
        sub: [-(2 ** 31) + 1, 2 ** 31 - 2, 7, -9, 0, 5],
        mul: [-(2 ** 31), 2 ** 31 - 1, 0, -14, 46341 * 46341 - 2 ** 32, 0],
        div: [-(2 ** 31), 2 ** 31 - 1, 0, -3, 1, 0],
      },
    },
  ];
  for (const { dtype, a, b, expect } of cases) {
    for (const [op, want] of Object.entries(expect)) {
      const gpu = ops[op](intTensor(a, dtype, "cuda"), intTensor(b, dtype, "cuda"));
      const cpu = ops[op](intTensor(a, dtype, "cpu"), intTensor(b, dtype, "cpu"));
      assert.deepEqual(Array.from(gpu.dataSync() as Int32Array), want, `${op} ${dtype} gpu`);
      assert.deepEqual(Array.from(cpu.dataSync() as Int32Array), want, `${op} ${dtype} cpu`);
    }
    const neg = intTensor(a, dtype, "cuda").neg().dataSync() as Int32Array;
    assert.equal(neg[0], a[0], `neg MIN wraps to MIN (${dtype})`);
  }
  // int64 wraps in 64 bits (the CPU computes int64 through float64, so compare with BigInt).
  const MIN = -(2n ** 63n), MAX = 2n ** 63n - 1n;
  const a = [MIN, MAX, 2n ** 62n + 3n, 7n, -7n, 3037000500n];
  const b = [-1n, 1n, 4n, 0n, 2n, 3037000500n];
  const wrap = (f: (x: bigint, y: bigint) => bigint) =>
    a.map((x, i) => BigInt.asIntN(64, f(x, b[i])));
  const expect: Record<string, bigint[]> = {
    add: wrap((x, y) => x + y),
    sub: wrap((x, y) => x - y),
    mul: wrap((x, y) => x * y),
    div: wrap((x, y) => (y === 0n ? 0n : x / y)),
  };
  for (const [op, want] of Object.entries(expect)) {
    const got = ops[op](intTensor(a, "int64", "cuda"), intTensor(b, "int64", "cuda"));
    assert.deepEqual(Array.from(got.dataSync() as BigInt64Array), want, `${op} int64`);
  }
  const x = intTensor(a, "int64", "cuda");
  assert.deepEqual(
    Array.from(x.neg().dataSync() as BigInt64Array),
    a.map((v) => BigInt.asIntN(64, -v)),
  );
  assert.deepEqual(
    Array.from(x.abs().dataSync() as BigInt64Array),
    a.map((v) => BigInt.asIntN(64, v < 0n ? -v : v)),
  );
});

function unaryOptions(op: string): RandomOptions {
  if (op === "log" || op === "sqrt" || op === "rsqrt") return { positive: true };
  if (op === "sigmoid") return { scale: 6 };
  // The CPU's float64 gelu cancels in 1 + erf / 1 + tanh below about -6: stay above it.
  if (op === "gelu" || op === "geluTanh") return { scale: 2, clip: 5 };
  return {};
}

testOnGpu("unary ops match the CPU on every dtype and size", () => {
  let seed = 3000;
  for (const n of SIZES) {
    for (const [op, dtypes] of UNARY) {
      for (const dtype of dtypes) {
        const o = unaryOptions(op);
        // Special values first (NaN, ±Inf, ±0, negatives for log and sqrt).
        if (n >= 1023 && FLOAT_DTYPES.includes(dtype)) {
          o.specials = [...FLOAT_SPECIALS, -2, -1e-3, -65504];
        }
        const r = both(unaryFn(op), [input(dtype, [n], seed++, o)]);
        const what = `${op} ${dtype} n=${n}`;
        if (EXACT_UNARY.includes(op)) assertSame(r, what);
        else assertNear(r, what);
      }
    }
  }
});

testOnGpu("where selects on every dtype, contiguous and broadcast", () => {
  const patterns: number[][][] = [
    ...SIZES.map((n) => [[n], [n], [n]]),
    [[3, 1, 5], [4, 1], []],
    [[], [7], [7]],
    [[5, 1], [5, 3], [1, 3]],
    [[1, 2053], [7, 1], [7, 2053]],
  ];
  let seed = 4000;
  for (const dtype of DTYPES) {
    for (const [sc, sa, sb] of patterns) {
      const inputs = [
        input("bool", sc, seed++),
        input(dtype, sa, seed++),
        input(dtype, sb, seed++),
      ];
      assertSame(
        both((c, a, b) => tq.where(c, a, b), inputs),
        `where ${dtype} [${sc}] [${sa}] [${sb}]`,
      );
    }
  }
});

// Values for cast inputs, encoded to the source dtype first: rounding ties, saturation and
// overflow boundaries of every target.
const CAST_SPECIALS: Record<string, number[]> = {
  float: [
    NaN,
    Infinity,
    -Infinity,
    0,
    -0,
    0.5,
    -0.5,
    1.5,
    -2.5,
    2.7,
    -2.7,
    7.5,
    7.9,
    -8.9,
    8.5,
    -9,
    127.5,
    127.9,
    128,
    -128.9,
    -129,
    255,
    448,
    449,
    464,
    465,
    480,
    -500,
    65504,
    65519.9,
    65520,
    -65520,
    1e-8,
    -1e-8,
    2 ** -9,
    2 ** -10,
    3 * 2 ** -10,
    2 ** -24,
    2 ** -25,
    1.5 * 2 ** -25,
    0.1,
    1 / 3,
    2147483520,
    2 ** 31,
    -(2 ** 31),
    -(2 ** 31) - 256,
    2 ** 63,
    -(2 ** 63),
    1e19,
    -1e19,
    1e30,
    3.4028234663852886e38,
    -3.4028234663852886e38,
    1e-40,
    1e-45,
  ],
  int4: [-8, 7, -1, 1, 0, 5, -5],
  int8: [-128, 127, -1, 1, 0, 7, 8, -8, -9, 100],
  int32: [
    -(2 ** 31),
    2 ** 31 - 1,
    -1,
    1,
    0,
    127,
    128,
    -129,
    255,
    448,
    449,
    464,
    465,
    -465,
    65504,
    65519,
    65520,
    16777217,
    16777219,
    2 ** 24 + 2 ** 16 + 1,
    -(2 ** 24 + 2 ** 16 + 1),
  ],
  int64: [
    -(2 ** 63),
    2 ** 63 - 1,
    -1,
    1,
    0,
    2 ** 53 + 2,
    -(2 ** 53),
    2 ** 31,
    -(2 ** 31) - 1,
    65520,
    465,
    2 ** 40 + 2 ** 32 + 1,
    2 ** 24 + 2 ** 16 + 1,
  ],
  bool: [0, 1, 1, 0],
};

function castSpecials(dtype: DType): number[] {
  return CAST_SPECIALS[dtype] ?? CAST_SPECIALS.float;
}

testOnGpu("cast between every pair of dtypes matches the CPU bit for bit", () => {
  let seed = 5000;
  for (const n of SIZES) {
    for (const from of DTYPES) {
      const specials = castSpecials(from);
      const x = input(from, [n], seed++, { specials, scale: 100 });
      if (from === "int64") {
        // The specials hold ±2^63 as numbers: write the exact int64 extremes.
        const s = x.storage as BigInt64Array;
        if (n > 1) [s[0], s[1]] = [-(2n ** 63n), 2n ** 63n - 1n];
      }
      for (const to of DTYPES) {
        assertSame(both((t) => t.cast(to), [x]), `cast ${from} → ${to} n=${n}`);
      }
    }
  }
});

testOnGpu("int4 casts pack odd lengths with a zero high nibble in the last byte", () => {
  const cuda = backendFor("cuda")!;
  let seed = 6000;
  for (const n of [1, 2, 3, 7, 8, 9, 15, 16, 17, 1023, (1 << 16) + 3]) {
    for (const from of DTYPES) {
      if (from === "int4") continue;
      const x = input(from, [n], seed++, { specials: castSpecials(from), scale: 6 });
      const r = both((t) => t.cast("int4"), [x], true);
      assertSame(r, `cast ${from} → int4 n=${n}`);
      const buffer = r.gpuTensor!.node.buffer as CudaBuffer;
      const raw = buffer.view("int8", Math.ceil(n / 2));
      const bytes = cuda.download(raw) as Int8Array;
      raw.dispose();
      r.gpuTensor!.dispose();
      if (n % 2 === 1) {
        const last = bytes[bytes.length - 1];
        assert.equal(last & 0xf0, 0, `cast ${from} → int4 n=${n}: high nibble`);
      }
    }
    const q = input("int4", [n], seed++);
    for (const to of DTYPES) assertSame(both((t) => t.cast(to), [q]), `cast int4 → ${to} n=${n}`);
  }
  // where on packed int4: odd lengths, broadcast from odd element offsets.
  for (const [sc, sa, sb] of [[[5, 3], [5, 3], [3]], [[1, 3], [5, 1], [5, 3]], [[9], [], [9]]]) {
    const inputs = [
      input("bool", sc, seed++),
      input("int4", sa, seed++),
      input("int4", sb, seed++),
    ];
    const r = both((c, a, b) => tq.where(c, a, b), inputs, true);
    assertSame(r, `where int4 [${sc}] [${sa}] [${sb}]`);
    const n = r.cpu.length;
    const raw = (r.gpuTensor!.node.buffer as CudaBuffer).view("int8", Math.ceil(n / 2));
    const bytes = cuda.download(raw) as Int8Array;
    raw.dispose();
    r.gpuTensor!.dispose();
    if (n % 2 === 1) {
      assert.equal(bytes[bytes.length - 1] & 0xf0, 0, `where int4 n=${n}: high nibble`);
    }
  }
});

testOnGpu("large tensors: grid-stride loops of the vector, scalar and strided kernels", () => {
  // The grid is capped at 32 blocks per SM, so these sizes loop on every GPU up to 160 SMs.
  const big = (1 << 23) + 5;
  const period = 65521;
  const a = input("float32", [big], 7000, { period });
  const b = input("float32", [big], 7001, { period });
  assertSame(both(binaryFn("add"), [a, b]), "add f32 2^23+5");
  assertSame(both(binaryFn("mul"), [a, input("float32", [], 7002)]), "mul f32 2^23+5 ⊕ scalar");
  assertNear(
    both((x) => x.exp(), [input("float32", [(1 << 22) + 3], 7003, { period })]),
    "exp f32 2^22+3",
  );
  const rows = input("float16", [1025, 1], 7004, { period });
  const cols = input("float16", [1, 2053], 7005, { period });
  assertSame(both(binaryFn("less"), [rows, cols]), "less f16 [1025,1] ⊕ [1,2053]");
  assertSame(both(binaryFn("sub"), [rows, cols]), "sub f16 [1025,1] ⊕ [1,2053]");
  assertSame(
    both((c, x, y) => tq.where(c, x, y), [
      input("bool", [1025, 1], 7006, { period }),
      input("float32", [1, 2053], 7007, { period }),
      input("float32", [], 7008),
    ]),
    "where f32 [1025,1] [1,2053] []",
  );
  const wide = (1 << 24) + 3;
  assertSame(
    both((x) => x.cast("int4"), [input("int8", [wide], 7009, { period })]),
    "cast i8 → int4",
  );
  assertSame(
    both((x) => x.cast("int32"), [input("int4", [wide], 7010, { period })]),
    "cast int4 → i32",
  );
});

testOnGpu("int64 → float casts round the exact integer once (beyond 2^53 too)", () => {
  // The CPU goes through float64 first and can round twice here; the GPU must not.
  const x = tq.tensor(
    new BigInt64Array([
      2n ** 62n + 2n ** 38n + 1n, // just above a float32 tie: rounds up
      -(2n ** 62n + 2n ** 38n + 1n),
      2n ** 62n + 2n ** 38n, // an exact tie: rounds to even
      2n ** 62n + 2n ** 54n + 1n, // just above a bfloat16 tie
      2n ** 63n - 1n,
    ]),
    { device: "cuda" },
  );
  assert.deepEqual(Array.from(x.cast("float32").dataSync() as Float32Array), [
    2 ** 62 + 2 ** 39,
    -(2 ** 62 + 2 ** 39),
    2 ** 62,
    2 ** 62 + 2 ** 54,
    2 ** 63,
  ]);
  assert.deepEqual(Array.from(x.cast("bfloat16").dataSync() as Float32Array), [
    2 ** 62,
    -(2 ** 62),
    2 ** 62,
    2 ** 62 + 2 ** 55,
    2 ** 63,
  ]);
  // int32 → bfloat16: rounding through float32 first would land on the tie and give 2^24.
  const y = tq.tensor([2 ** 24 + 2 ** 16 + 1], { dtype: "int32", device: "cuda" });
  assert.deepEqual(Array.from(y.cast("bfloat16").dataSync() as Float32Array), [2 ** 24 + 2 ** 17]);
});
