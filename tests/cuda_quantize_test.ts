/**
 * CUDA quantize / dequantize against the CPU kernels, bit for bit, on the same seeded random
 * non-zero inputs: every mode (per-tensor, per-channel, block-wise) × input dtype (float32,
 * float16, bfloat16) × quantized dtype (int8, int4, float8e4m3) × scale dtype (float32 or the
 * float side's dtype). Sizes hit the 16-byte vector units (4 or 8 elements), partly filled
 * grid-stride steps, the element-pair tails (1, 15, 16, 17, 4097, 2^20 + 5) and several
 * grid-stride steps (3.3M to 4.2M elements); shapes put channel and block boundaries inside
 * units (inner extents 1, odd, and multiples of 16), with negative dims and block sizes below
 * and above 16. Special values: NaN (both signs), ±Inf, ±0, huge and tiny values, exact ties,
 * and the int8/int4/fp8 saturation and rounding boundaries. Packed int4 results with odd
 * lengths are also checked byte for byte on the device, pad nibble included.
 *
 * CPU-side checks (run everywhere): every kernel the lowering can name exists in both PTX
 * targets, and unsupported combinations are refused.
 *
 * Tolerance: none. Quantized outputs must be identical; dequantized float outputs must have
 * identical bits (-0 included), except that any NaN matches any NaN (the GPU's float16 and
 * bfloat16 conversions write a different NaN payload than the CPU encoder).
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { copyToHost } from "../ffi/cudart.ts";
import type { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { quantizeKernelName, type QuantizeMode } from "../lib/backends/cuda/quantize.ts";
import { type DType, encode, packInt4, type StorageArray } from "../lib/dtype.ts";
import { TensorqError } from "../lib/errors.ts";
import {
  dequantize,
  type QuantDType,
  quantize,
  type QuantizeOptions,
} from "../lib/ops/quantize.ts";
import { RandomStream } from "../lib/random.ts";
import { fromStorage, type Tensor } from "../lib/tensor.ts";
import { ptx } from "../kernels/ptx/quantize.ts";
import { testOnGpu } from "./helpers.ts";

type FloatDType = "float32" | "float16" | "bfloat16";

const FLOATS: readonly FloatDType[] = ["float32", "float16", "bfloat16"];
const QUANTS: readonly QuantDType[] = ["int8", "int4", "float8e4m3"];

/** Typical |x / s| per target: some values saturate, most do not. */
const SPAN: Record<QuantDType, number> = { int8: 60, int4: 5, float8e4m3: 150 };

// ---------------------------------------------------------------------------------------------
// Data

/** Seeded normal values, never exactly zero. */
function normals(n: number, seed: number, std: number): Float64Array {
  const s = new RandomStream(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const v = s.normal() * std;
    out[i] = v === 0 ? std * 1e-3 : v;
  }
  return out;
}

/** Seeded positive scales in [lo, 2 lo). */
function scales(n: number, seed: number, lo: number): Float64Array {
  const s = new RandomStream(seed);
  return Float64Array.from({ length: n }, () => lo * (1 + s.uniform()));
}

/** The same values as a CPU tensor and a CUDA tensor (storage made once). */
function pair(storage: StorageArray, shape: readonly number[], dtype: DType): [Tensor, Tensor] {
  return [fromStorage(storage, shape, dtype, "cpu"), fromStorage(storage, shape, dtype, "cuda")];
}

function floatPair(values: ArrayLike<number>, shape: readonly number[], dtype: DType) {
  return pair(encode(dtype, values), shape, dtype);
}

function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** The scale shape of a mode (see lib/ops/quantize.ts). */
function scaleShape(shape: readonly number[], options: QuantizeOptions): number[] {
  if (options.dim === undefined) return [];
  const dim = options.dim < 0 ? options.dim + shape.length : options.dim;
  if (options.blockSize === undefined) return [shape[dim]];
  return shape.map((d, i) => (i === dim ? Math.ceil(d / options.blockSize!) : d));
}

// ---------------------------------------------------------------------------------------------
// Comparison

/**
 * Asserts identical storage. Float outputs compare as bits, NaN included: both backends write
 * ONNX Runtime's NaN (float32 0x7fc00000, float16 0x7e00, bfloat16 0x7fc0).
 */
function assertSame(gpu: StorageArray, cpu: StorageArray, dtype: DType, label: string): void {
  assert.equal(gpu.length, cpu.length, `${label}: length`);
  const g = dtype === "float32" ? new Uint32Array(gpu.buffer, gpu.byteOffset, gpu.length) : gpu;
  const c = dtype === "float32" ? new Uint32Array(cpu.buffer, cpu.byteOffset, cpu.length) : cpu;
  let bad = 0;
  const examples: string[] = [];
  for (let i = 0; i < g.length; i++) {
    const a = Number(g[i]);
    const b = Number(c[i]);
    if (a === b) continue;
    if (examples.length < 5) examples.push(`[${i}] gpu ${a} cpu ${b}`);
    bad++;
  }
  assert.equal(bad, 0, `${label}: ${bad} of ${g.length} differ: ${examples.join(", ")}`);
}

/** quantize on both devices, compared; returns the CUDA result (disposing the rest). */
function checkQuantize(
  x: [Tensor, Tensor],
  s: [Tensor | number, Tensor | number],
  target: QuantDType,
  options: QuantizeOptions,
  label: string,
): void {
  const cpu = quantize(x[0], s[0], target, options);
  const gpu = quantize(x[1], s[1], target, options);
  assert.equal(gpu.device, "cuda:0");
  assertSame(gpu.storageSync(), cpu.storageSync(), target, label);
  cpu.dispose();
  gpu.dispose();
}

function checkDequantize(
  q: [Tensor, Tensor],
  s: [Tensor | number, Tensor | number],
  out: FloatDType,
  options: QuantizeOptions,
  label: string,
): void {
  const cpu = dequantize(q[0], s[0], out, options);
  const gpu = dequantize(q[1], s[1], out, options);
  assertSame(gpu.storageSync(), cpu.storageSync(), out, label);
  cpu.dispose();
  gpu.dispose();
}

/** Scales for every scale dtype allowed with `floatSide`: float32 first, then floatSide. */
function scaleVariants(
  floatSide: FloatDType,
  shape: readonly number[],
  values: Float64Array,
): [string, [Tensor, Tensor]][] {
  const dtypes: FloatDType[] = floatSide === "float32" ? ["float32"] : ["float32", floatSide];
  return dtypes.map((d) => [d, floatPair(values, shape, d)]);
}

/** Random quantized storage: int8 / int4 values in range, fp8 every byte (NaN codes too). */
function randomQuant(dtype: QuantDType, n: number, seed: number): StorageArray {
  const s = new RandomStream(seed);
  if (dtype === "float8e4m3") {
    return Uint8Array.from({ length: n }, () => s.nextUint32() & 0xff);
  }
  const [lo, span] = dtype === "int8" ? [-128, 256] : [-8, 16];
  return Int8Array.from({ length: n }, () => lo + (s.nextUint32() % span));
}

/** Runs quantize and dequantize over every dtype combination of one shape and mode. */
function checkShape(
  shape: readonly number[],
  options: QuantizeOptions,
  seed: number,
  targets: readonly QuantDType[] = QUANTS,
  floats: readonly FloatDType[] = FLOATS,
): void {
  const n = product(shape);
  const sShape = scaleShape(shape, options);
  const sValues = scales(product(sShape), seed + 1, 0.02);
  const label = (what: string) => `${what} shape [${shape}] ${JSON.stringify(options)}`;
  for (const f of floats) {
    const variants = scaleVariants(f, sShape, sValues);
    for (const target of targets) {
      if (target === "float8e4m3" && options.blockSize !== undefined) continue;
      const x = floatPair(normals(n, seed + 2, 0.03 * SPAN[target]), shape, f);
      for (const [sd, s] of variants) {
        checkQuantize(x, s, target, options, label(`quantize ${f} → ${target}, scale ${sd}`));
      }
      const q = pair(randomQuant(target, n, seed + 3), shape, target);
      for (const [sd, s] of variants) {
        checkDequantize(q, s, f, options, label(`dequantize ${target} → ${f}, scale ${sd}`));
      }
      for (const t of [...x, ...q]) t.dispose();
    }
    for (const [, s] of variants) s.forEach((t) => t.dispose());
  }
}

// ---------------------------------------------------------------------------------------------
// CPU-side checks

const MODES: readonly QuantizeMode[] = ["tensor", "channel", "block"];

Deno.test("cuda quantize: every kernel the lowering names is in both PTX targets", () => {
  let count = 0;
  for (const mode of MODES) {
    for (const f of FLOATS) {
      for (const q of QUANTS) {
        if (mode === "block" && q === "float8e4m3") continue;
        for (
          const name of [
            quantizeKernelName("quantize", mode, f, q),
            quantizeKernelName("dequantize", mode, q, f),
          ]
        ) {
          for (
            const [target, text] of [["sm_90a", ptx.ptxSm90a], ["compute_80", ptx.ptxCompute80]]
          ) {
            assert.ok(text.includes(`.entry ${name}(`), `${name} missing from the ${target} PTX`);
          }
          count++;
        }
      }
    }
  }
  assert.equal(count, 48);
  assert.equal(
    quantizeKernelName("quantize", "tensor", "float32", "int8"),
    "quantize_tensor_f32_i8",
  );
  assert.equal(
    quantizeKernelName("dequantize", "block", "int4", "bfloat16"),
    "dequantize_block_i4_bf16",
  );
});

Deno.test("cuda quantize: combinations without a kernel are refused", () => {
  const refused: [("quantize" | "dequantize"), QuantizeMode, DType, DType][] = [
    ["quantize", "block", "float32", "float8e4m3"],
    ["dequantize", "block", "float8e4m3", "float16"],
    ["quantize", "tensor", "int32", "int8"],
    ["dequantize", "tensor", "int8", "int32"],
    ["quantize", "rows" as QuantizeMode, "float32", "int8"],
  ];
  for (const [op, mode, input, output] of refused) {
    assert.throws(
      () => quantizeKernelName(op, mode, input, output),
      (e: unknown) => e instanceof TensorqError && e.op === op && e.kind === "unsupported",
      `${op} ${mode} ${input} → ${output}`,
    );
  }
});

// ---------------------------------------------------------------------------------------------
// GPU against CPU

testOnGpu("quantize/dequantize per-tensor: vector units and tails", () => {
  for (const [k, n] of [1, 15, 16, 17, 4097, (1 << 20) + 5].entries()) {
    checkShape([n], {}, 100 + 10 * k);
  }
});

testOnGpu("quantize/dequantize per-tensor: several grid-stride steps (2^22 + 9)", () => {
  // More work than one resident wave of threads takes in a step: each thread loops.
  checkShape([(1 << 22) + 9], {}, 200, ["int8", "float8e4m3"], ["float32"]);
  checkShape([3, (1 << 20) + 1], {}, 210, ["int4"], ["bfloat16"]);
});

testOnGpu("quantize/dequantize per-channel: inner extents 1, odd and multiples of 16", () => {
  const cases: [number[], number][] = [
    [[7], 0],
    [[37, 64], 0], // one scale per 64-element row: whole units
    [[64, 37], -1], // a new scale every element: pair path
    [[3, 5, 33], 1], // units straddle channel boundaries
    [[2, 3, 4, 5], -3],
    [[515, 509], 0],
    [[129, 2048], -1],
  ];
  for (const [k, [shape, dim]] of cases.entries()) checkShape(shape, { dim }, 300 + 10 * k);
});

testOnGpu("quantize/dequantize block-wise: block sizes below and above 16, odd counts", () => {
  const cases: [number[], number, number][] = [
    [[8, 256], -1, 128], // one scale per unit
    [[8, 256], 1, 16],
    [[256, 12], 0, 32], // inner 12: the index moves every element
    [[3, 45, 7], 1, 9], // 945 elements: odd int4 count
    [[6, 50], 1, 5], // blocks shorter than a unit
    [[5, 16, 3], -1, 3],
    [[256, 1030], -1, 103],
    [[1024, 257], -2, 128],
    // ONNX's shorter last block (blockSize not dividing the axis).
    [[40, 250], 1, 64],
    [[37, 20], 0, 16],
    [[3, 37, 5], 1, 8],
    [[5, 7, 13], -1, 4],
    [[9, 1029], -1, 100], // units straddle the short block and the next row
    [[6, 10], 1, 64], // a block longer than the axis
  ];
  for (const [k, [shape, dim, blockSize]] of cases.entries()) {
    checkShape(shape, { dim, blockSize }, 400 + 10 * k, ["int8", "int4"]);
  }
});

testOnGpu("quantize/dequantize per-channel and block-wise over several grid-stride steps", () => {
  // ~3.3M elements: about two steps of the resident wave these kernels launch.
  checkShape([1601, 2053], { dim: 0 }, 500, ["int8"], ["float32"]);
  checkShape([2053, 1601], { dim: -1 }, 510, ["float8e4m3"], ["float16"]);
  checkShape([1600, 2050], { dim: -1, blockSize: 41 }, 520, ["int4"], ["float32"]);
  checkShape([2050, 1600], { dim: 0, blockSize: 41 }, 530, ["int8"], ["bfloat16"]);
  checkShape([1601, 2053], { dim: -1, blockSize: 64 }, 540, ["int4"], ["float16"]);
  checkShape([2053, 1601], { dim: 0, blockSize: 100 }, 550, ["int8"], ["float32"]);
});

/** Special inputs, each as a multiple of the scale (so x / s is what is written). */
function specialQuotients(): number[] {
  return [
    0,
    -0,
    0.5,
    1.5,
    2.5,
    -0.5,
    -1.5,
    -2.5,
    3.5,
    -3.5,
    6.5,
    7.5,
    -7.5,
    -8.5,
    126.5,
    127.5,
    -127.5,
    -128.5,
    1000,
    -1000,
    448,
    -448,
    456,
    464,
    -464,
    463.9,
    465,
    480,
    1e6,
    -1e6,
    2 ** -10,
    -(2 ** -10),
    3 * 2 ** -10,
    2 ** -7 * 1.0625,
    0.4999,
    1e-30,
    -1e-30,
    2 ** -9,
    17.25,
    -17.75,
  ];
}

testOnGpu("quantize: NaN, ±Inf, ±0, huge values, ties and saturation boundaries", () => {
  const base = specialQuotients();
  for (const sv of [0.5, 0.1, 3]) {
    // Spread the specials over vector units and the tail: 16 * 70 + 11 elements.
    const n = 16 * 70 + 11;
    const noise = normals(n, 600, 40);
    const values = Array.from({ length: n }, (_, i) => {
      if (i % 5 === 0) return noise[i];
      const v = base[i % base.length] * sv;
      return i % 7 === 3 ? -v : v;
    });
    values[3] = NaN;
    values[n - 1] = NaN;
    values[20] = Infinity;
    values[n - 2] = -Infinity;
    values[41] = 3e38;
    values[42] = -3e38;
    for (const f of FLOATS) {
      const storage = encode(f, values);
      // A NaN with the sign bit set, as checkpoints may hold.
      if (f === "float32") new Uint32Array(storage.buffer)[7] = 0xffc00000;
      else (storage as Uint16Array)[7] = f === "float16" ? 0xfe00 : 0xffc0;
      const x = pair(storage, [n], f);
      for (const target of QUANTS) {
        for (const [sd, s] of scaleVariants(f, [], Float64Array.of(sv))) {
          checkQuantize(x, s, target, {}, `specials ${f} → ${target}, s ${sv} (${sd})`);
          checkQuantize(x, [sv, sv], target, {}, `specials ${f} → ${target}, number s ${sv}`);
          s.forEach((t) => t.dispose());
        }
        // Per-channel over the same values: scale varies per element of a [n/…] layout.
        const rows = 7;
        const cols = Math.floor(n / rows);
        const xs = pair(storage.slice(0, rows * cols) as StorageArray, [rows, cols], f);
        const ch = floatPair(scales(rows, 610, sv), [rows], "float32");
        checkQuantize(xs, ch, target, { dim: 0 }, `specials per-channel ${f} → ${target}`);
        for (const t of [...xs, ...ch]) t.dispose();
      }
      x.forEach((t) => t.dispose());
    }
  }
});

testOnGpu("dequantize: every fp8 code, int extremes, float16 overflow to Inf", () => {
  // All 256 fp8 codes (NaN 0x7f / 0xff, subnormals, ±0), twice plus a tail.
  const codes = Uint8Array.from({ length: 16 * 33 + 5 }, (_, i) => i & 0xff);
  const q8 = pair(codes, [codes.length], "float8e4m3");
  const ints = Int8Array.from({ length: 16 * 20 + 3 }, (_, i) => [-128, 127, 0, -1, 1][i % 5]);
  const qi8 = pair(ints, [ints.length], "int8");
  const i4 = Int8Array.from({ length: 16 * 20 + 3 }, (_, i) => [-8, 7, 0, -1, 1][i % 5]);
  const qi4 = pair(i4, [i4.length], "int4");
  for (const f of FLOATS) {
    // 1000 · 448 overflows float16; 1e-6 · 2^-9 underflows to zero in float16.
    for (const sv of [1000, 0.1, 1e-6, 1]) {
      for (const [sd, s] of scaleVariants(f, [], Float64Array.of(sv))) {
        checkDequantize(q8, s, f, {}, `fp8 codes → ${f}, s ${sv} (${sd})`);
        checkDequantize(qi8, s, f, {}, `int8 extremes → ${f}, s ${sv} (${sd})`);
        checkDequantize(qi4, s, f, {}, `int4 extremes → ${f}, s ${sv} (${sd})`);
        s.forEach((t) => t.dispose());
      }
    }
  }
  for (const t of [...q8, ...qi8, ...qi4]) t.dispose();
});

testOnGpu("quantize int4: packed bytes on the device, pad nibble 0 for odd lengths", () => {
  const cases: [number[], QuantizeOptions][] = [
    [[1], {}],
    [[17], {}],
    [[4097], {}],
    [[3, 5, 7], { dim: 1 }],
    [[3, 45, 7], { dim: 1, blockSize: 9 }],
    [[3, 37, 7], { dim: 1, blockSize: 8 }], // a shorter last block
  ];
  for (const [k, [shape, options]] of cases.entries()) {
    const n = product(shape);
    const sShape = scaleShape(shape, options);
    const sValues = scales(product(sShape), 700 + k, 0.05);
    const x = floatPair(normals(n, 710 + k, 0.4), shape, "float32");
    const s = floatPair(sValues, sShape, "float32");
    const cpu = quantize(x[0], s[0], "int4", options);
    const gpu = quantize(x[1], s[1], "int4", options).evaluate();
    tq.cuda.synchronize();
    const buffer = gpu.node.buffer as CudaBuffer;
    assert.equal(buffer.bytes, Math.ceil(n / 2));
    const bytes = new Uint8Array(buffer.bytes);
    copyToHost(bytes, buffer.pointer);
    assert.deepEqual(bytes, packInt4(cpu.storageSync() as Int8Array), `shape [${shape}]`);
    if (n % 2 === 1) assert.equal(bytes[bytes.length - 1] >> 4, 0, "pad nibble");
    for (const t of [...x, ...s, cpu, gpu]) t.dispose();
  }
});

testOnGpu("quantize/dequantize: zero-element tensors launch nothing", () => {
  for (const shape of [[0], [3, 0]]) {
    const x = fromStorage(new Float32Array(0), shape, "float32", "cuda");
    const q = quantize(x, 0.5, "int8");
    assert.deepEqual(q.shape, shape);
    assert.equal(q.storageSync().length, 0);
    const d = dequantize(q, 0.5, "float16");
    assert.equal(d.storageSync().length, 0);
    const c = quantize(
      fromStorage(new Float32Array(0), [0, 4], "float32", "cuda"),
      fromStorage(new Float32Array(0), [0], "float32", "cuda"),
      "int4",
      { dim: 0 },
    );
    assert.equal(c.storageSync().length, 0);
  }
});
