/**
 * Conformance with ONNX Runtime's QuantizeLinear / DequantizeLinear (opset 21; TensorRT
 * semantics): every case of a vector file must match bit for bit, on every device.
 *
 * The files, all written by ONNX Runtime (see tests/onnx/make_conformance.py for the layout):
 * - tests/fixtures/onnx_conformance/conformance.safetensors, always (seed 20261207; the shared
 *   fixture's cases and extra ones: 3-D per-channel along a middle axis, fp8 per channel,
 *   int8 block-wise, shorter last blocks, exact ties of every kind, float16 inputs);
 * - ../shared/fixtures/conformance.safetensors, when present;
 * - the file `TENSORQ_CONFORMANCE` names, when set (`python3 tests/onnx/make_conformance.py
 *   FILE SEED` writes one for another seed, with other values and shapes).
 *
 * Each case quantizes the file's x with its scale and compares the codes (int8 / int4 values,
 * e4m3fn bit patterns) with ONNX Runtime's, dequantizes them (to x's float type, as ONNX does)
 * and compares the bits, and dequantizes ONNX Runtime's own codes. A case whose tensors a file
 * lacks is not run for that file (the shared fixture has no extra cases); the shared fixture's
 * cases must be in every file.
 * @module
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { type DType, fromStorageBytes, roundHalfToEven, type StorageArray } from "../lib/dtype.ts";
import { SafetensorsFile } from "../lib/io/safetensors.ts";
import {
  dequantize,
  type QuantDType,
  quantize,
  type QuantizeOptions,
} from "../lib/ops/quantize.ts";
import { fromStorage, type Tensor } from "../lib/tensor.ts";
import { filesExist, SHARED_DIR, testOnDevices } from "./helpers.ts";

interface VectorFile {
  /** Appended to test names. */
  label: string;
  path: string;
  /**
   * How many `pt_x` values x / scale and x * (1 / scale) quantize apart, when the file's
   * README says (otherwise at least one is required).
   */
  reciprocalDiffers?: number;
}

const COMMITTED = fileURLToPath(
  new URL("./fixtures/onnx_conformance/conformance.safetensors", import.meta.url),
);
const SHARED = fileURLToPath(new URL("fixtures/conformance.safetensors", SHARED_DIR));

const FILES: VectorFile[] = [{ label: "", path: COMMITTED }];
// ../shared/fixtures/README.md: "the two differ on 8 of the pt_x values".
if (filesExist(SHARED)) FILES.push({ label: " (../shared)", path: SHARED, reciprocalDiffers: 8 });
const named = Deno.env.get("TENSORQ_CONFORMANCE");
if (named !== undefined) {
  assert.ok(filesExist(named), `TENSORQ_CONFORMANCE: no file ${named}`);
  FILES.push({ label: " (TENSORQ_CONFORMANCE)", path: named });
}

interface Case {
  /** Tensor name prefix: `<prefix>_scale`, `<prefix>_q` (`_bits` for fp8), `<prefix>_dq`. */
  prefix: string;
  /** Name of the input tensor. */
  x: string;
  dtype: QuantDType;
  options: QuantizeOptions;
  /** One of the shared fixture's cases, which every file must have. */
  required?: boolean;
}

const CASES: Case[] = [
  { prefix: "pt", x: "pt_x", dtype: "int8", options: {}, required: true },
  { prefix: "pc", x: "pc_w", dtype: "int8", options: { dim: 0 }, required: true },
  { prefix: "pc1", x: "pc_w", dtype: "int8", options: { dim: 1 }, required: true },
  { prefix: "b4", x: "b4_w", dtype: "int4", options: { dim: 1, blockSize: 64 }, required: true },
  { prefix: "b40", x: "b4_w", dtype: "int4", options: { dim: 0, blockSize: 16 }, required: true },
  { prefix: "i4", x: "pt_x", dtype: "int4", options: {}, required: true },
  { prefix: "fp8", x: "fp8_x", dtype: "float8e4m3", options: {}, required: true },
  // Extra cases of tests/onnx/make_conformance.py.
  { prefix: "ch3", x: "ch3_x", dtype: "int8", options: { dim: 1 } },
  { prefix: "ch3i4", x: "ch3_x", dtype: "int4", options: { dim: -1 } },
  { prefix: "ch3f8", x: "ch3_x", dtype: "float8e4m3", options: { dim: 1 } },
  { prefix: "bl", x: "ch3_x", dtype: "int4", options: { dim: 2, blockSize: 16 } },
  { prefix: "fc", x: "fc_w", dtype: "float8e4m3", options: { dim: 0 } },
  { prefix: "fc1", x: "fc_w", dtype: "float8e4m3", options: { dim: 1 } },
  { prefix: "br4", x: "br_w", dtype: "int4", options: { dim: 1, blockSize: 64 } },
  { prefix: "br8", x: "br_w", dtype: "int8", options: { dim: 1, blockSize: 32 } },
  { prefix: "br40", x: "br_w", dtype: "int4", options: { dim: 0, blockSize: 16 } },
  { prefix: "b3", x: "b3_x", dtype: "int4", options: { dim: 1, blockSize: 8 } },
  { prefix: "b3l", x: "b3_x", dtype: "int8", options: { dim: -1, blockSize: 4 } },
  { prefix: "ti", x: "ti_x", dtype: "int8", options: {} },
  { prefix: "ti4", x: "ti_x", dtype: "int4", options: {} },
  { prefix: "t8", x: "t8_x", dtype: "float8e4m3", options: {} },
  // 16-bit inputs: float16 (prefix h) and bfloat16 (bh), when ONNX Runtime could make them.
  ...["h", "bh"].flatMap((p): Case[] => [
    { prefix: p, x: `${p}_x`, dtype: "int8", options: {} },
    { prefix: `${p}4`, x: `${p}_x`, dtype: "int4", options: {} },
    { prefix: `${p}t`, x: `${p}t_x`, dtype: "int8", options: {} },
    { prefix: `${p}t4`, x: `${p}t_x`, dtype: "int4", options: {} },
    { prefix: `${p}f8`, x: `${p}f8_x`, dtype: "float8e4m3", options: {} },
    { prefix: `${p}c`, x: `${p}c_w`, dtype: "int8", options: { dim: 0 } },
    { prefix: `${p}cf8`, x: `${p}c_w`, dtype: "float8e4m3", options: { dim: 1 } },
    { prefix: `${p}b4`, x: `${p}b_w`, dtype: "int4", options: { dim: 1, blockSize: 32 } },
    { prefix: `${p}b8`, x: `${p}b_w`, dtype: "int8", options: { dim: 0, blockSize: 16 } },
  ]),
];

/** The codes' tensor: e4m3fn bit patterns are `<prefix>_bits`, int8 / int4 values `_q`. */
function codesName(c: Case): string {
  return c.dtype === "float8e4m3" ? `${c.prefix}_bits` : `${c.prefix}_q`;
}

/** Safetensors dtype → tensorq dtype of the raw values (U8 holds fp8 bit patterns here). */
const DTYPE_OF: Record<string, DType> = {
  F32: "float32",
  F16: "float16",
  BF16: "bfloat16",
  I8: "int8",
  U8: "float8e4m3",
};

function readRaw(file: SafetensorsFile, name: string): { storage: StorageArray; shape: number[] } {
  const entry = file.entry(name);
  const dtype = DTYPE_OF[entry.dtype];
  assert.ok(dtype, `${name}: unexpected fixture dtype ${entry.dtype}`);
  const n = entry.shape.reduce((a, b) => a * b, 1);
  return { storage: fromStorageBytes(dtype, file.readBytes(name), n), shape: entry.shape };
}

function load(file: SafetensorsFile, name: string, device: string, as?: DType): Tensor {
  const { storage, shape } = readRaw(file, name);
  return fromStorage(storage, shape, as ?? DTYPE_OF[file.entry(name).dtype], device);
}

/** Counts equal elements of two same-length integer arrays (bit patterns or int values). */
function countEqual(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  assert.equal(actual.length, expected.length);
  let same = 0;
  for (let i = 0; i < expected.length; i++) if (actual[i] === expected[i]) same++;
  return same;
}

function firstDiff(actual: ArrayLike<number>, expected: ArrayLike<number>): string {
  for (let i = 0; i < expected.length; i++) {
    if (actual[i] !== expected[i]) {
      return `first at ${i}: got ${actual[i]}, expected ${expected[i]}`;
    }
  }
  return "none";
}

/**
 * The bit patterns of float values (float16/bfloat16 storage already is), so that -0 vs 0 and
 * NaN payloads count as differences.
 */
function bitsOf(values: StorageArray): Uint32Array | Uint16Array {
  if (values instanceof Uint16Array) return values;
  assert.ok(values instanceof Float32Array, "float32 or 16-bit float storage");
  return new Uint32Array(values.buffer, values.byteOffset, values.length);
}

function assertExact(
  label: string,
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
): void {
  const same = countEqual(actual, expected);
  console.log(`conformance ${label}: ${same}/${expected.length} exact`);
  assert.equal(same, expected.length, `${label}: ${firstDiff(actual, expected)}`);
}

/** The cases a file holds; throws if one of the shared fixture's is missing. */
function casesOf(path: string): Case[] {
  using file = SafetensorsFile.open(path);
  const has = (c: Case) =>
    [c.x, `${c.prefix}_scale`, codesName(c), `${c.prefix}_dq`].every((n) => file.has(n));
  const missing = CASES.filter((c) => c.required && !has(c)).map((c) => c.prefix);
  assert.equal(missing.length, 0, `${path}: no tensors for the cases ${missing.join(", ")}`);
  return CASES.filter(has);
}

/**
 * The case's options for the file's shapes. A block-wise case names the block size its vectors
 * were made with; a file made with another (same names, other shapes) shows it in the scale's
 * extent, `ceil(D / block)`: a whole number of blocks gives `D / extent`, and anything else is
 * ambiguous and fails.
 */
function optionsFor(c: Case, xShape: readonly number[], scaleShape: readonly number[]) {
  const { dim, blockSize } = c.options;
  if (blockSize === undefined || dim === undefined) return c.options;
  const axis = dim < 0 ? dim + xShape.length : dim;
  const [extent, blocks] = [xShape[axis], scaleShape[axis]];
  if (Math.ceil(extent / blockSize) === blocks) return c.options;
  assert.ok(
    blocks > 0 && extent % blocks === 0,
    `${c.prefix}: ${blocks} scales along axis ${axis} of ${extent} fit no block size ` +
      `unambiguously (the case expects ${blockSize})`,
  );
  console.log(`conformance ${c.prefix}: blocks of ${extent / blocks}, from the file's shapes`);
  return { ...c.options, blockSize: extent / blocks };
}

function registerCase(vectors: VectorFile, c: Case): void {
  const where = `${c.prefix}${vectors.label}`;
  testOnDevices(`conformance ${where}: quantize and dequantize match ONNX Runtime`, (device) => {
    using file = SafetensorsFile.open(vectors.path);
    const x = load(file, c.x, device);
    const scale = load(file, `${c.prefix}_scale`, device);
    const qName = codesName(c);
    const qRef = readRaw(file, qName).storage as Int8Array | Uint8Array;
    const dqRef = readRaw(file, `${c.prefix}_dq`).storage;
    const options = optionsFor(c, x.shape, scale.shape);

    const q = quantize(x, scale, c.dtype, options);
    assert.equal(q.dtype, c.dtype);
    assert.deepEqual(q.shape, x.shape);
    // int4 values are stored one per element in an Int8Array, like the file's I8 values;
    // fp8 storage is the bit patterns, like the file's U8.
    assertExact(`${qName}${vectors.label}`, q.storageSync() as Int8Array | Uint8Array, qRef);

    // ONNX's DequantizeLinear returns the scale's type, which is x's.
    const out = x.dtype as "float32" | "float16" | "bfloat16";
    const dq = dequantize(q, scale, out, options);
    assertExact(`${c.prefix}_dq${vectors.label}`, bitsOf(dq.storageSync()), bitsOf(dqRef));

    // Dequantizing the reference codes directly checks dequantize on its own.
    const qFile = load(file, qName, device, c.dtype);
    const dq2 = dequantize(qFile, scale, out, options);
    assertExact(
      `${c.prefix}_dq${vectors.label} (from the file's codes)`,
      bitsOf(dq2.storageSync()),
      bitsOf(dqRef),
    );
  });
}

function registerReciprocalCheck(vectors: VectorFile): void {
  const name = `conformance pt${vectors.label}: a reciprocal multiplication would not match`;
  testOnDevices(name, (device) => {
    // Guards the file itself: values whose x / scale and x * (1 / scale) quantize apart make
    // an exact match of pt_q a proof of a true division.
    using file = SafetensorsFile.open(vectors.path);
    const x = load(file, "pt_x", device).storageSync() as Float32Array;
    const s = (load(file, "pt_scale", device).storageSync() as Float32Array)[0];
    const reciprocal = Math.fround(1 / s);
    const q = (v: number): number => Math.min(127, Math.max(-128, roundHalfToEven(v)));
    let differ = 0;
    for (const v of x) if (q(Math.fround(v / s)) !== q(Math.fround(v * reciprocal))) differ++;
    console.log(
      `conformance pt_x${vectors.label}: x / scale and x * (1 / scale) quantize apart on ` +
        `${differ} values`,
    );
    if (vectors.reciprocalDiffers !== undefined) assert.equal(differ, vectors.reciprocalDiffers);
    else assert.ok(differ > 0, "no pt_x value tells a division from a reciprocal product");
  });
}

for (const vectors of FILES) {
  for (const c of casesOf(vectors.path)) registerCase(vectors, c);
  registerReciprocalCheck(vectors);
}
if (!filesExist(SHARED)) {
  Deno.test({
    name: "conformance (../shared) (skipped: ../shared not present)",
    ignore: true,
    fn: () => {},
  });
}
