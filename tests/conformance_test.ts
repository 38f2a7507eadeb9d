/**
 * Conformance with ONNX Runtime's QuantizeLinear / DequantizeLinear (TensorRT semantics): every
 * case of ../shared/fixtures/conformance.safetensors must match bit for bit.
 * @module
 */
import assert from "node:assert/strict";
import { type DType, fromStorageBytes, roundHalfToEven, type StorageArray } from "../lib/dtype.ts";
import { SafetensorsFile } from "../lib/io/safetensors.ts";
import {
  dequantize,
  type QuantDType,
  quantize,
  type QuantizeOptions,
} from "../lib/ops/quantize.ts";
import { fromStorage, type Tensor } from "../lib/tensor.ts";
import { testOnDevices } from "./helpers.ts";

const FIXTURE = new URL("../../shared/fixtures/conformance.safetensors", import.meta.url);
const FIXTURE_PATH = decodeURIComponent(FIXTURE.pathname);

function fixturePresent(): boolean {
  try {
    return Deno.statSync(FIXTURE).isFile;
  } catch {
    return false;
  }
}

interface Case {
  /** Tensor name prefix in the fixture. */
  prefix: string;
  /** Name of the input tensor. */
  x: string;
  dtype: QuantDType;
  options: QuantizeOptions;
}

const CASES: Case[] = [
  { prefix: "pt", x: "pt_x", dtype: "int8", options: {} },
  { prefix: "pc", x: "pc_w", dtype: "int8", options: { dim: 0 } },
  { prefix: "pc1", x: "pc_w", dtype: "int8", options: { dim: 1 } },
  { prefix: "b4", x: "b4_w", dtype: "int4", options: { dim: 1, blockSize: 64 } },
  { prefix: "b40", x: "b4_w", dtype: "int4", options: { dim: 0, blockSize: 16 } },
  { prefix: "i4", x: "pt_x", dtype: "int4", options: {} },
  { prefix: "fp8", x: "fp8_x", dtype: "float8e4m3", options: {} },
];

/** Safetensors dtype → tensorq dtype of the raw values (U8 holds fp8 bit patterns here). */
const DTYPE_OF: Record<string, DType> = { F32: "float32", I8: "int8", U8: "float8e4m3" };

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

/** Float32 bits, so that -0 vs 0 and NaN payloads count as differences. */
function bitsOf(values: Float32Array): Uint32Array {
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

if (fixturePresent()) {
  for (const c of CASES) {
    testOnDevices(
      `conformance ${c.prefix}: quantize and dequantize match ONNX Runtime`,
      (device) => {
        using file = SafetensorsFile.open(FIXTURE_PATH);
        const x = load(file, c.x, device);
        const scale = load(file, `${c.prefix}_scale`, device);
        const qName = c.dtype === "float8e4m3" ? "fp8_bits" : `${c.prefix}_q`;
        const qRef = readRaw(file, qName).storage as Int8Array | Uint8Array;
        const dqRef = readRaw(file, `${c.prefix}_dq`).storage as Float32Array;

        const q = quantize(x, scale, c.dtype, c.options);
        assert.equal(q.dtype, c.dtype);
        assert.deepEqual(q.shape, x.shape);
        // int4 values are stored one per element in an Int8Array, like the fixture's I8 values;
        // fp8 storage is the bit patterns, like the fixture's U8.
        assertExact(`${qName}`, q.storageSync() as Int8Array | Uint8Array, qRef);

        const dq = dequantize(q, scale, "float32", c.options);
        assertExact(`${c.prefix}_dq`, bitsOf(dq.storageSync() as Float32Array), bitsOf(dqRef));

        // Dequantizing the reference q directly checks dequantize on its own.
        const qFixture = load(file, qName, device, c.dtype);
        const dq2 = dequantize(qFixture, scale, "float32", c.options);
        assertExact(
          `${c.prefix}_dq (from the fixture's q)`,
          bitsOf(dq2.storageSync() as Float32Array),
          bitsOf(dqRef),
        );
      },
    );
  }

  testOnDevices("conformance pt: a reciprocal multiplication would not match", (device) => {
    // Guards the fixture itself: the README says x * (1 / scale) differs on 8 pt_x values, so
    // matching pt_q exactly proves a true division.
    using file = SafetensorsFile.open(FIXTURE_PATH);
    const x = load(file, "pt_x", device).storageSync() as Float32Array;
    const s = (load(file, "pt_scale", device).storageSync() as Float32Array)[0];
    const reciprocal = Math.fround(1 / s);
    const q = (v: number): number => Math.min(127, Math.max(-128, roundHalfToEven(v)));
    let differ = 0;
    for (const v of x) if (q(Math.fround(v / s)) !== q(Math.fround(v * reciprocal))) differ++;
    console.log(
      `conformance pt_x: x / scale and x * (1 / scale) quantize apart on ${differ} values`,
    );
    assert.equal(differ, 8);
  });
} else {
  for (const c of CASES) {
    Deno.test({
      name: `conformance ${c.prefix} (skipped: ../shared not present)`,
      ignore: true,
      fn: () => {},
    });
  }
  console.log("conformance: skipped: ../shared not present");
}
