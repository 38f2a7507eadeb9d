/**
 * quantize / dequantize / scaleFromAmax: hand-computed cases (ties, saturation, float32
 * division, double rounding), every mode against an independent reference, dtypes, NaN,
 * printing, and one test per error family.
 * @module
 */
import assert from "node:assert/strict";
import {
  bfloat16BitsToNumber,
  decode,
  type DType,
  float16BitsToNumber,
  float32ToBfloat16Bits,
  float32ToFloat16Bits,
  float32ToFloat8e4m3Bits,
  float8e4m3BitsToNumber,
} from "../lib/dtype.ts";
import { Node } from "../lib/graph/node.ts";
import { div } from "../lib/ops/elementwise.ts";
import {
  dequantize,
  type QuantDType,
  quantize,
  type QuantizeOptions,
} from "../lib/ops/quantize.ts";
import { maxBound, scaleFromAmax } from "../lib/quant/scale.ts";
import { formatTensor, fromStorage, ones, Tensor, tensor, zeros } from "../lib/tensor.ts";
import { assertTqError, randomValues, testOnDevices, thisLine } from "./helpers.ts";

const f32 = Math.fround;

/** Quantized values as plain numbers (int values, or fp8 bit patterns). */
function qValues(t: Tensor): number[] {
  return Array.from(t.storageSync() as Int8Array | Uint8Array);
}

/** Decoded float values of a float tensor. */
function floats(t: Tensor): number[] {
  return Array.from(t.dataSync() as Float32Array);
}

function f32Bits(values: ArrayLike<number>): number[] {
  return Array.from(new Uint32Array(Float32Array.from(values).buffer));
}

// ---------------------------------------------------------------------------------------------
// A reference written independently of the kernel: multi-index coordinates instead of flat
// strides, and ties to even via Math.round on halves. The quotient and the product are float32
// operations (Math.fround of the operation on float32 values), not float64 ones.

function rneReference(v: number): number {
  if (v !== v) return NaN;
  // Math.round breaks ties toward +Infinity; halves go to the even neighbour instead.
  return Math.abs(v - Math.trunc(v)) === 0.5 ? 2 * Math.round(v / 2) : Math.round(v);
}

const RANGES: Record<string, [number, number]> = { int8: [-128, 127], int4: [-8, 7] };

/** For each flat element of `shape`, the flat index of its scale (by coordinates). */
function scaleIndexReference(
  shape: number[],
  scaleShape: number[],
  options: QuantizeOptions,
): number[] {
  const n = shape.reduce((a, b) => a * b, 1);
  const rank = shape.length;
  const dim = options.dim === undefined ? undefined : (options.dim + rank) % rank;
  const coords = new Array<number>(rank).fill(0);
  const out: number[] = [];
  for (let flat = 0; flat < n; flat++) {
    let rest = flat;
    for (let d = rank - 1; d >= 0; d--) {
      coords[d] = rest % shape[d];
      rest = Math.floor(rest / shape[d]);
    }
    // A rank-0 scale is per-tensor, with or without dim (ONNX ignores its axis).
    if (dim === undefined || scaleShape.length === 0) out.push(0);
    else if (options.blockSize === undefined) out.push(coords[dim]);
    else {
      let idx = 0;
      for (let d = 0; d < rank; d++) {
        const c = d === dim ? Math.floor(coords[d] / options.blockSize) : coords[d];
        idx = idx * scaleShape[d] + c;
      }
      out.push(idx);
    }
  }
  return out;
}

function quantizeReference(
  x: ArrayLike<number>,
  scaleOf: (i: number) => number,
  dtype: QuantDType,
): number[] {
  return Array.from({ length: x.length }, (_, i) => {
    const quotient = f32(x[i] / scaleOf(i));
    if (dtype === "float8e4m3") return float32ToFloat8e4m3Bits(quotient);
    const [lo, hi] = RANGES[dtype];
    const r = rneReference(quotient);
    // Integers have no -0: NaN and zero quotients store 0.
    return r !== r || r === 0 ? 0 : Math.min(hi, Math.max(lo, r));
  });
}

// ---------------------------------------------------------------------------------------------
// Rounding, saturation, division

testOnDevices("quantize: ties round half to even", (device) => {
  const x = tensor([0.5, 1.5, 2.5, -2.5, -0.5, -1.5, 3.5, -3.5, 0.49999997, 126.5], { device });
  assert.deepEqual(qValues(quantize(x, 1, "int8")), [0, 2, 2, -2, 0, -2, 4, -4, 0, 126]);
  // The same ties through a scale: x / 0.5 = 2x exactly.
  const y = tensor([0.25, 0.75, 1.25, -1.25], { device });
  assert.deepEqual(qValues(quantize(y, 0.5, "int4")), [0, 2, 2, -2]);
});

testOnDevices("quantize: saturates to each dtype's range", (device) => {
  const x = tensor([1000, -1000, 127.5, -128.5, 126.5, -127.5, 3e38, -3e38], { device });
  assert.deepEqual(qValues(quantize(x, 1, "int8")), [127, -128, 127, -128, 126, -128, 127, -128]);
  const y = tensor([7.5, -8.5, 6.5, -7.5, 100, -100, 0.4], { device });
  assert.deepEqual(qValues(quantize(y, 1, "int4")), [7, -8, 6, -8, 7, -8, 0]);
  // e4m3fn: 448 is the largest finite value; 464 (the midpoint to the non-existent 480) rounds
  // to even 448; anything larger saturates to 0x7e / 0xfe; 0.5 · 2^-9 rounds to even 0.
  const z = tensor([448, 449, 464, 465, 1e6, -1e6, 2 ** -10, 3 * 2 ** -10, -0, 1.125], {
    device,
  });
  assert.deepEqual(
    qValues(quantize(z, 1, "float8e4m3")),
    [0x7e, 0x7e, 0x7e, 0x7e, 0x7e, 0xfe, 0x00, 0x02, 0x80, 0x39],
  );
});

testOnDevices("quantize: divides in float32, never multiplies by the reciprocal", (device) => {
  const s = f32(0.3);
  const x = [2.25, 8.25, f32(3.7500002384185791)];
  // Hand-checked: fround(2.25 / s) = 7.4999995 → 7, but fround(2.25 * fround(1 / s)) = 7.5 → 8.
  const byDivision = x.map((v) => rneReference(f32(v / s)));
  const byReciprocal = x.map((v) => rneReference(f32(v * f32(1 / s))));
  assert.deepEqual(byDivision, [7, 27, 12]);
  assert.deepEqual(byReciprocal, [8, 28, 13]);
  const q = quantize(tensor(x, { device }), tensor(s, { device }), "int8");
  assert.deepEqual(qValues(q), byDivision);
});

// ---------------------------------------------------------------------------------------------
// Modes against the reference

/**
 * Quantizes seeded random data (about 0.6 · bound · scale, so some values saturate, with exact
 * ties planted) and checks q and dequantize(q) bit for bit against the reference.
 */
function checkMode(
  device: string,
  shape: number[],
  scaleShape: number[],
  dtype: QuantDType,
  options: QuantizeOptions,
  seed: number,
): Tensor {
  const bound = maxBound(dtype);
  const scales = Float32Array.from(
    randomValues(scaleShape.reduce((a, b) => a * b, 1), seed, { low: 0.5, high: 4 }),
    (v) => v / bound,
  );
  const idx = scaleIndexReference(shape, scaleShape, options);
  const normal = randomValues(idx.length, seed + 1);
  const xs = Float32Array.from(idx, (s, i) => normal[i] * 0.6 * bound * scales[s]);
  for (let i = 0; i < xs.length; i += 5) xs[i] = ((i % 11) - 5 + 0.5) * scales[idx[i]];
  const scaleOf = (i: number) => scales[idx[i]];
  const expected = quantizeReference(xs, scaleOf, dtype);
  if (dtype !== "float8e4m3") {
    const ties = Array.from(xs).filter((v, i) => Math.abs(f32(v / scaleOf(i)) % 1) === 0.5);
    assert.ok(ties.length > 0, "no exact ties planted");
    assert.ok(expected.some((v) => v === bound || v === -bound - 1), "nothing saturated");
  } else assert.ok(expected.some((v) => (v & 0x7f) === 0x7e), "nothing saturated");

  const x = fromStorage(xs, shape, "float32", device);
  const scale = fromStorage(scales, scaleShape, "float32", device);
  const q = quantize(x, scale, dtype, options);
  assert.equal(q.dtype, dtype);
  assert.deepEqual(q.shape, shape);
  assert.deepEqual(qValues(q), expected);

  const qDecoded = decode(dtype, q.storageSync());
  const dqExpected = Array.from(qDecoded, (v, i) => f32(v * scaleOf(i)));
  const dq = dequantize(q, scale, "float32", options);
  assert.deepEqual(f32Bits(dq.storageSync() as Float32Array), f32Bits(dqExpected));
  return q;
}

testOnDevices("quantize: per-tensor int8, int4, fp8 match the reference", (device) => {
  checkMode(device, [5, 40], [], "int8", {}, 11);
  checkMode(device, [200], [1], "int4", {}, 12);
  checkMode(device, [3, 7, 9], [], "float8e4m3", {}, 13);
});

testOnDevices("quantize: per-channel along each axis matches the reference", (device) => {
  checkMode(device, [6, 40], [6], "int8", { dim: 0 }, 21);
  checkMode(device, [6, 40], [40], "int8", { dim: 1 }, 22);
  checkMode(device, [3, 5, 8], [5], "int4", { dim: 1 }, 23);
  checkMode(device, [16, 12], [16], "float8e4m3", { dim: 0 }, 24);
});

testOnDevices("quantize: block-wise matches the reference", (device) => {
  checkMode(device, [4, 32], [4, 4], "int4", { dim: 1, blockSize: 8 }, 31);
  checkMode(device, [6, 5, 3], [3, 5, 3], "int8", { dim: 0, blockSize: 2 }, 32);
  checkMode(device, [2, 12, 3], [2, 3, 3], "int4", { dim: 1, blockSize: 4 }, 33);
  // One block covering the whole axis.
  checkMode(device, [3, 16], [3, 1], "int8", { dim: 1, blockSize: 16 }, 34);
});

testOnDevices("quantize: block-wise with a shorter last block (ONNX opset 21)", (device) => {
  // scale.shape[dim] = ceil(x.shape[dim] / blockSize); the last block holds what is left.
  checkMode(device, [5, 250], [5, 4], "int8", { dim: 1, blockSize: 64 }, 35);
  checkMode(device, [37, 6], [3, 6], "int4", { dim: 0, blockSize: 16 }, 36);
  checkMode(device, [2, 11, 3], [2, 4, 3], "int4", { dim: 1, blockSize: 3 }, 37);
  checkMode(device, [4, 3, 13], [4, 3, 2], "int8", { dim: -1, blockSize: 8 }, 38);
  // A block longer than the axis: one scale per row.
  checkMode(device, [6, 10], [6, 1], "int4", { dim: 1, blockSize: 64 }, 39);
});

testOnDevices("quantize: a negative dim counts from the end and is normalized", (device) => {
  const qNeg = checkMode(device, [3, 4, 10], [10], "int4", { dim: -1 }, 41);
  const qPos = checkMode(device, [3, 4, 10], [10], "int4", { dim: 2 }, 41);
  assert.deepEqual(qValues(qNeg), qValues(qPos));
  assert.deepEqual(qNeg.node.attrs, { dtype: "int4", mode: "channel", dim: 2, blockSize: null });
  const qBlock = checkMode(device, [4, 32], [4, 4], "int8", { dim: -1, blockSize: 8 }, 42);
  assert.deepEqual(qBlock.node.attrs, { dtype: "int8", mode: "block", dim: 1, blockSize: 8 });
});

testOnDevices(
  "quantize: a rank-0 scale with dim is per-tensor (ONNX ignores the axis)",
  (device) => {
    let seed = 4301;
    for (const dtype of ["int8", "int4", "float8e4m3"] as const) {
      for (const dim of [-3, -2, -1, 0, 1, 2]) {
        const q = checkMode(device, [3, 5, 7], [], dtype, { dim }, seed);
        assert.deepEqual(q.node.attrs, { dtype, mode: "tensor", dim: null, blockSize: null });
        // The same codes as without dim, from the same data.
        assert.deepEqual(qValues(q), qValues(checkMode(device, [3, 5, 7], [], dtype, {}, seed)));
        seed += 2;
      }
    }
    const x = tensor(randomValues(12, 4350), { shape: [3, 4], device });
    const q = quantize(x, 0.02, "int8", { dim: 1 });
    assert.equal(q.node.attrs.mode, "tensor");
    const dq = dequantize(q, tensor(0.02, { device }), "bfloat16", { dim: -2 });
    assert.deepEqual(dq.node.attrs, {
      dtype: "bfloat16",
      mode: "tensor",
      dim: null,
      blockSize: null,
    });
    assert.deepEqual(floats(dq), floats(dequantize(q, 0.02, "bfloat16")));
    // dim is still checked.
    const line = thisLine() + 1;
    const bad = () => quantize(x, tensor(0.5, { device }), "int8", { dim: 2 });
    assertTqError(bad, { op: "quantize", kind: "axis", includes: ["dim out of range"], line });
  },
);

testOnDevices("quantize and dequantize record graph ops with their attrs", (device) => {
  const x = tensor([[1, 2], [3, 4]], { device });
  const s = tensor([0.5, 0.25], { device });
  const q = quantize(x, s, "int8", { dim: 0 });
  assert.equal(q.node.op, "quantize");
  assert.deepEqual(q.node.inputs, [x.node, s.node]);
  assert.deepEqual(q.node.attrs, { dtype: "int8", mode: "channel", dim: 0, blockSize: null });
  const dq = dequantize(q, s, "float16", { dim: 0 });
  assert.equal(dq.node.op, "dequantize");
  assert.equal(dq.dtype, "float16");
  assert.deepEqual(dq.node.attrs, { dtype: "float16", mode: "channel", dim: 0, blockSize: null });
  const pt = quantize(x, 0.1, "float8e4m3");
  assert.deepEqual(pt.node.attrs, {
    dtype: "float8e4m3",
    mode: "tensor",
    dim: null,
    blockSize: null,
  });
  // A number scale is a rank-0 float32 constant on x's device.
  const scaleNode = pt.node.inputs[1];
  assert.deepEqual([scaleNode.shape, scaleNode.dtype, scaleNode.device], [
    [],
    "float32",
    device === "cuda" ? "cuda:0" : device,
  ]);
  assert.deepEqual(qValues(q), [2, 4, 12, 16]);
  assert.deepEqual(floats(dq), [1, 2, 3, 4]);
});

testOnDevices("quantize: a lazy scale is used as computed", (device) => {
  const x = tensor([1, -2, 3, 127], { device });
  const lazy = div(tensor([127], { device }), 127); // not evaluated: checked when it is
  assert.equal(lazy.isEvaluated, false);
  const q = quantize(x, lazy, "int8");
  assert.equal(q.node.inputs[1].op, "checkScale");
  assert.deepEqual(qValues(q), [1, -2, 3, 127]);
});

testOnDevices(
  "quantize / dequantize: a scale computed in the graph is checked when evaluated",
  (device) => {
    const x = tensor(randomValues(4 * 6, 11, { low: -3, high: 3 }), { shape: [4, 6], device });
    // Per-channel scales [4] computed from data, with a zero, a NaN and a negative value among
    // them: the error names the first bad one, and the op that reads the scale.
    const amax = tensor([2, 0, NaN, -1], { device }).mul(1);
    assert.equal(amax.isEvaluated, false);
    // Reported at the quantize call, naming the line whose read evaluated it.
    const built = thisLine() + 1;
    const q = quantize(x, amax.div(127), "int8", { dim: 0 });
    const read = thisLine() + 1;
    assertTqError(() => q.storageSync(), {
      op: "quantize",
      kind: "argument",
      includes: [
        "scale must be positive and finite",
        "got 0 at flat index 1 of 4",
        `found when ${device === "cuda" ? "read" : "evaluated"} at`,
        `_test.ts:${read}:`,
      ],
      line: built,
    });
    // A float16 scale of a float16 x, per tensor, negative.
    const x16 = tensor([1, 2, 3], { device, dtype: "float16" });
    const neg = tensor([-0.5], { device, dtype: "float16" }).reshape([]).mul(1);
    assertTqError(() => quantize(x16, neg, "float8e4m3").storageSync(), {
      op: "quantize",
      includes: ["-0.5 at flat index 0 of 1"],
    });
    // dequantize names itself; an infinite block-wise scale.
    const codes = quantize(x, 0.05, "int4");
    const blocks = tensor([[1, 1], [1, Infinity], [1, 1], [1, 1]], { device }).mul(0.05);
    const dq = dequantize(codes, blocks, "float32", { dim: 1, blockSize: 3 });
    assertTqError(() => dq.dataSync(), {
      op: "dequantize",
      includes: ["Infinity at flat index 3 of 8"],
    });
    // Valid computed scales give the evaluated scales' results, and a failed check leaves nothing
    // behind for the next evaluation.
    const good = tensor([2, 1, 4, 3], { device }).mul(1).div(127);
    const computed = qValues(quantize(x, good, "int8", { dim: 0 }));
    const given = tensor([2, 1, 4, 3], { device }).div(127);
    given.evaluate();
    assert.deepEqual(computed, qValues(quantize(x, given, "int8", { dim: 0 })));
    const back = dequantize(quantize(x, good, "int8", { dim: 0 }), good, "float32", { dim: 0 });
    const backGiven = dequantize(quantize(x, given, "int8", { dim: 0 }), given, "float32", {
      dim: 0,
    });
    assert.deepEqual(floats(back), floats(backGiven));
  },
);

// ---------------------------------------------------------------------------------------------
// Dtypes

testOnDevices("quantize: float16 and bfloat16 inputs are decoded exactly", (device) => {
  const values = [2.5, -0.30004882812, 100.0625, 1e-3, -65504];
  for (const dtype of ["float16", "bfloat16"] as DType[]) {
    const x = tensor(values, { dtype, device });
    const exact = Array.from(decode(dtype, x.storageSync()));
    const s = f32(0.1);
    const expected = quantizeReference(exact, () => s, "int8");
    assert.deepEqual(qValues(quantize(x, s, "int8")), expected, dtype);
    assert.equal(expected[0], 25);
    // A scale in x's dtype is decoded exactly too.
    const s16 = tensor(0.1, { dtype, device });
    const s16Value = decode(dtype, s16.storageSync())[0];
    assert.notEqual(s16Value, s);
    const expected16 = quantizeReference(exact, () => s16Value, "float8e4m3");
    assert.deepEqual(qValues(quantize(x, s16, "float8e4m3")), expected16, `${dtype} scale`);
  }
  // Hand-computed: float16 2.5 / 1 ties to 2.
  const h = tensor([2.5, 3.5], { dtype: "float16", device });
  assert.deepEqual(qValues(quantize(h, 1, "int4")), [2, 4]);
});

testOnDevices("dequantize: rounds the float32 product once to float16/bfloat16", (device) => {
  // q * s rounded to float32 first, then to bfloat16 (hand-checked): 3 · 1.0130208730697632 =
  // 3.03906261920929 → float32 3.0390625, a bfloat16 tie that goes to even 0x4042; rounding the
  // exact product straight to bfloat16 would give 0x4043.
  const q = tensor([3, 5, 3], { dtype: "int8", device });
  const s = tensor([1.0130208730697632, 1.009374976158142, 1.0182291269302368], { device });
  const bf = dequantize(q, s, "bfloat16", { dim: 0 });
  assert.equal(bf.dtype, "bfloat16");
  assert.deepEqual(Array.from(bf.storageSync() as Uint16Array), [0x4042, 0x40a2, 0x4044]);
  assert.deepEqual(
    [3 * 1.0130208730697632, 5 * 1.009374976158142, 3 * 1.0182291269302368].map((v) =>
      float32ToBfloat16Bits(v)
    ),
    [0x4043, 0x40a1, 0x4043],
  );
  // float16: 100 · fround(0.1) → float32 10 → 0x4900; -7 · fround(0.3) → -2.1000001 → 0xc033.
  const q2 = tensor([100, -7, 0], { dtype: "int8", device });
  const h = dequantize(q2, tensor([f32(0.1), f32(0.3), 1], { device }), "float16", { dim: 0 });
  assert.deepEqual(Array.from(h.storageSync() as Uint16Array), [0x4900, 0xc033, 0]);
  assert.equal(float16BitsToNumber(0xc033), -2.099609375);
  assert.equal(float32ToFloat16Bits(f32(-7 * f32(0.3))), 0xc033);
  // A scale in the output dtype is accepted.
  const sb = tensor([0.5], { dtype: "bfloat16", device });
  const b2 = dequantize(tensor([-3], { dtype: "int8", device }), sb, "bfloat16");
  assert.equal(bfloat16BitsToNumber((b2.storageSync() as Uint16Array)[0]), -1.5);
});

testOnDevices("dequantize: int4 and fp8 inputs", (device) => {
  const q4 = fromStorage(new Int8Array([-8, -1, 0, 7]), [4], "int4", device);
  assert.deepEqual(floats(dequantize(q4, 0.5, "float32")), [-4, -0.5, 0, 3.5]);
  const q8 = fromStorage(new Uint8Array([0x7e, 0xfe, 0x80, 0x01, 0x38]), [5], "float8e4m3", device);
  const dq = dequantize(q8, 2, "float32").storageSync() as Float32Array;
  assert.deepEqual(f32Bits(dq), f32Bits([896, -896, -0, 2 ** -8, 2]));
  assert.ok(Object.is(dq[2], -0));
});

testOnDevices("quantize: NaN becomes 0 for integers and NaN for fp8", (device) => {
  const x = tensor([NaN, 1, -NaN], { device });
  assert.deepEqual(qValues(quantize(x, 1, "int8")), [0, 1, 0]);
  assert.deepEqual(qValues(quantize(x, 1, "int4")), [0, 1, 0]);
  const q8 = quantize(x, 1, "float8e4m3");
  assert.deepEqual(qValues(q8), [0x7f, 0x38, 0x7f]);
  const back = dequantize(q8, 1, "float32").dataSync();
  assert.ok(Number.isNaN(back[0]) && back[1] === 1 && Number.isNaN(back[2]));
  assert.ok(Number.isNaN(float8e4m3BitsToNumber(0x7f)));
});

testOnDevices("printing int4 and fp8 tensors shows their values", (device) => {
  const q4 = quantize(tensor([-9, -1.5, 2.4, 100], { device }), 1, "int4");
  const text4 = Deno.inspect(q4);
  assert.equal(text4, formatTensor(q4));
  assert.ok(text4.includes("[-8, -2,  2,  7]"), text4);
  assert.ok(text4.includes("dtype=int4"), text4);
  const q8 = quantize(tensor([0.5, 448, -1.75, 1000], { device }), 1, "float8e4m3");
  const text8 = Deno.inspect(q8);
  assert.equal(text8, formatTensor(q8));
  assert.ok(text8.includes("[  0.5,   448, -1.75,   448]"), text8);
  assert.ok(text8.includes("dtype=float8e4m3"), text8);
  console.log(q4);
  console.log(q8);
});

// ---------------------------------------------------------------------------------------------
// Scales from amax

Deno.test("maxBound: 127, 7 and 448", () => {
  assert.deepEqual([maxBound("int8"), maxBound("int4"), maxBound("float8e4m3")], [127, 7, 448]);
});

Deno.test("scaleFromAmax: a float32 division, with 1 for zero, NaN and infinite amax", () => {
  const s = scaleFromAmax(2.54, "int8");
  assert.deepEqual([s.shape, s.dtype, s.device], [[], "float32", "cpu"]);
  assert.equal(s.item(), f32(f32(2.54) / 127));
  assert.equal(scaleFromAmax(0, "int4").item(), 1);
  const amax = tensor([0, NaN, Infinity, 127, 4.48, 1e-44, 7], { device: "cpu" });
  const scales = scaleFromAmax(amax, "float8e4m3");
  assert.deepEqual(scales.shape, [7]);
  // 1e-44 / 448 underflows to 0 in float32, which would be an invalid scale.
  assert.deepEqual(
    f32Bits(floats(scales)),
    f32Bits([1, 1, 1, f32(127 / 448), f32(f32(4.48) / 448), 1, 0.015625]),
  );
  const s4 = scaleFromAmax(tensor([[14, 3.5]]), "int4");
  assert.deepEqual(s4.shape, [1, 2]);
  assert.deepEqual(floats(s4), [2, 0.5]);
  const bf = scaleFromAmax(tensor([12.7], { dtype: "bfloat16" }), "int8");
  assert.equal(bf.dtype, "float32");
  assert.equal(bf.item(), f32(bfloat16BitsToNumber(float32ToBfloat16Bits(12.7)) / 127));
});

testOnDevices("scaleFromAmax: per-channel scales map each row's amax to ±127", (device) => {
  const w = tensor([[0.5, -2, 1], [0, 0, 0], [3, 1e-3, -3]], { device });
  const scale = scaleFromAmax(tensor([2, 0, 3], { device }), "int8");
  assert.equal(scale.device, device === "cuda" ? "cuda:0" : device);
  const q = quantize(w, scale, "int8", { dim: 0 });
  assert.deepEqual(qValues(q), [32, -127, 64, 0, 0, 0, 127, 0, -127]);
});

// ---------------------------------------------------------------------------------------------
// Errors: one test per family, each checking the message and the reported line

function expectError(
  line: number,
  fn: () => unknown,
  expected: { op: string; kind: string; includes: string[] },
): void {
  assertTqError(fn, { ...expected, line });
}

Deno.test("quantize errors: scale not positive or not finite", () => {
  const x = tensor([1, 2, 3]);
  let line = thisLine() + 1;
  let bad = () => quantize(x, 0, "int8");
  expectError(line, bad, {
    op: "quantize",
    kind: "argument",
    includes: ["scale must be positive and finite", "argument 'scale'", "got 0"],
  });
  line = thisLine() + 1;
  bad = () => quantize(x, 1e-50, "int4");
  expectError(line, bad, { op: "quantize", kind: "argument", includes: ["1e-50 (0 in float32)"] });
  line = thisLine() + 1;
  bad = () => quantize(x, NaN, "float8e4m3");
  expectError(line, bad, { op: "quantize", kind: "argument", includes: ["got NaN"] });
  const evaluated = tensor([0.5, -1, 2]);
  line = thisLine() + 1;
  bad = () => quantize(x, evaluated, "int8", { dim: 0 });
  expectError(line, bad, {
    op: "quantize",
    kind: "argument",
    includes: ["positive finite values", "-1 at flat index 1 of 3"],
  });
  const infinite = tensor([Infinity]);
  line = thisLine() + 1;
  bad = () => dequantize(tensor([1], { dtype: "int8" }), infinite, "float32");
  expectError(line, bad, { op: "dequantize", kind: "argument", includes: ["Infinity at flat"] });
});

Deno.test("quantize errors: scale shape matches no mode", () => {
  const x = tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [
    1,
    2,
    3,
    4,
    5,
    6,
  ]]);
  let line = thisLine() + 1;
  let bad = () => quantize(x, tensor([1, 1, 1, 1, 1, 1]), "int8");
  expectError(line, bad, {
    op: "quantize",
    kind: "shape",
    includes: ["matches no quantization mode", "rank 0 or [1] for per-tensor", "pass dim (1"],
  });
  line = thisLine() + 1;
  bad = () => quantize(x, tensor([1, 1, 1, 1, 1, 1]), "int8", { dim: 0 });
  expectError(line, bad, {
    op: "quantize",
    kind: "shape",
    includes: ["[4] for per-channel along dim 0", "rank 0 for per-tensor", "got shape [6]"],
  });
  line = thisLine() + 1;
  bad = () => quantize(x, tensor([[1, 1, 1], [1, 1, 1]]), "int4", { dim: 1, blockSize: 2 });
  expectError(line, bad, {
    op: "quantize",
    kind: "shape",
    includes: ["[4, 3] for block-wise along dim 1 with blockSize 2", "got shape [2, 3]"],
  });
});

Deno.test("quantize errors: dim out of range", () => {
  const x = tensor([[1, 2], [3, 4]]);
  let line = thisLine() + 1;
  let bad = () => quantize(x, tensor([1, 1]), "int8", { dim: 2 });
  expectError(line, bad, {
    op: "quantize",
    kind: "axis",
    includes: ["dim out of range", "[-2, 1] for a rank-2 x", "got number 2"],
  });
  line = thisLine() + 1;
  bad = () => dequantize(tensor(3, { dtype: "int8" }), 1, "float32", { dim: 0 });
  expectError(line, bad, { op: "dequantize", kind: "axis", includes: ["no dim for a rank-0 q"] });
});

Deno.test("quantize errors: blockSize", () => {
  const x = tensor([[1, 2, 3, 4, 5, 6]]);
  const s3 = tensor([[1, 1, 1]]);
  let line = thisLine() + 1;
  let bad = () => quantize(x, s3, "int4", { dim: 1, blockSize: 1.5 });
  expectError(line, bad, {
    op: "quantize",
    kind: "argument",
    includes: ["blockSize must be a positive integer", "got number 1.5"],
  });
  line = thisLine() + 1;
  bad = () => quantize(x, s3, "int4", { dim: 1, blockSize: 0 });
  expectError(line, bad, { op: "quantize", kind: "argument", includes: ["got number 0"] });
  line = thisLine() + 1;
  bad = () => quantize(x, s3, "int4", { dim: 1, blockSize: 4 });
  expectError(line, bad, {
    op: "quantize",
    kind: "argument",
    includes: [
      "blockSize does not fit the scale's extent",
      "block size 2 for x.shape[1] = 6 and scale.shape[1] = 3",
      "got 4",
    ],
  });
  // ONNX's range [ceil(D / S), ceil(D / (S - 1)) - 1]: 250 wide in 4 scales takes 63 to 83.
  const wide = zeros([2, 250]);
  const s4 = ones([2, 4]);
  line = thisLine() + 1;
  bad = () => quantize(wide, s4, "int8", { dim: 1, blockSize: 84 });
  expectError(line, bad, {
    op: "quantize",
    kind: "argument",
    includes: ["a block size in [63, 83] for x.shape[1] = 250 and scale.shape[1] = 4", "got 84"],
  });
  const codes = zeros([2, 250], { dtype: "int8" });
  const options = { dim: 1, blockSize: 249 };
  line = thisLine() + 1;
  bad = () => dequantize(codes, ones([2, 1]), "float32", options);
  expectError(line, bad, {
    op: "dequantize",
    kind: "argument",
    includes: ["a block size of at least 250", "got 249"],
  });
  // A scale longer than the axis fits no block size: the shape error names ceil(D / B).
  line = thisLine() + 1;
  bad = () => quantize(x, ones([1, 7]), "int4", { dim: 1, blockSize: 1 });
  expectError(line, bad, {
    op: "quantize",
    kind: "shape",
    includes: ["[1, 6] for block-wise along dim 1 with blockSize 1", "got shape [1, 7]"],
  });
  line = thisLine() + 1;
  bad = () => quantize(x, s3, "int4", { blockSize: 2 });
  expectError(line, bad, { op: "quantize", kind: "argument", includes: ["blockSize needs dim"] });
  line = thisLine() + 1;
  bad = () => quantize(x, s3, "float8e4m3", { dim: 1, blockSize: 2 });
  expectError(line, bad, {
    op: "quantize",
    kind: "unsupported",
    includes: ["block-wise quantization supports int8 and int4 only"],
  });
});

Deno.test("quantize errors: unsupported dtypes", () => {
  const x = tensor([1, 2]);
  let line = thisLine() + 1;
  let bad = () => quantize(tensor([1, 2], { dtype: "int32" }), 1, "int8");
  expectError(line, bad, {
    op: "quantize",
    kind: "dtype",
    includes: ["unsupported input dtype", "float32, float16, bfloat16", "got int32"],
  });
  line = thisLine() + 1;
  bad = () => quantize(x, 1, "int32" as QuantDType);
  expectError(line, bad, {
    op: "quantize",
    kind: "dtype",
    includes: ["unsupported target dtype", "int8, int4, float8e4m3", 'got "int32"'],
  });
  line = thisLine() + 1;
  bad = () => quantize(x, tensor(1, { dtype: "float16" }), "int8");
  expectError(line, bad, {
    op: "quantize",
    kind: "dtype",
    includes: ["unsupported scale dtype", "expected float32", "got float16"],
  });
  const h = tensor([1, 2], { dtype: "float16" });
  line = thisLine() + 1;
  bad = () => quantize(h, tensor(1, { dtype: "bfloat16" }), "int8");
  expectError(line, bad, {
    op: "quantize",
    kind: "dtype",
    includes: ["float32 or float16 (the dtype of x)", "got bfloat16"],
  });
  line = thisLine() + 1;
  bad = () => dequantize(x, 1, "float32");
  expectError(line, bad, {
    op: "dequantize",
    kind: "dtype",
    includes: ["takes a quantized tensor", "got float32"],
  });
  const q = tensor([1, 2], { dtype: "int8" });
  line = thisLine() + 1;
  bad = () => dequantize(q, 1, "int8" as "float32");
  expectError(line, bad, {
    op: "dequantize",
    kind: "dtype",
    includes: ["unsupported output dtype", "float32, float16, bfloat16"],
  });
});

Deno.test("quantize errors: inputs on different devices", () => {
  const x = tensor([1, 2]);
  // An unevaluated stand-in for a tensor on another device (no GPU needed to check the rule).
  const elsewhere = new Tensor(new Node("constant", [], {}, [], "float32", "cuda:0"));
  let line = thisLine() + 1;
  let bad = () => quantize(x, elsewhere, "int8");
  expectError(line, bad, {
    op: "quantize",
    kind: "device",
    includes: ["different devices", "expected cpu (the device of 'x')", "got cuda:0"],
  });
  line = thisLine() + 1;
  bad = () => dequantize(tensor([1], { dtype: "int4" }), elsewhere, "float16");
  expectError(line, bad, { op: "dequantize", kind: "device", includes: ["got cuda:0"] });
});

Deno.test("scaleFromAmax: a number amax beyond float32's range is divided, then rounded", () => {
  // Finite numbers above float32's maximum (up to 7 times it, so that amax / 7 fits too):
  // amax / bound is rounded to float32 once.
  const huge = Array.from(randomValues(6, 4360, { low: 1, high: 2.3 }), (u) => u * 1e39);
  for (const dtype of ["int4", "int8", "float8e4m3"] as const) {
    for (const a of huge) {
      const s = scaleFromAmax(a, dtype).item();
      assert.equal(s, f32(a / maxBound(dtype)));
      assert.ok(s < Infinity && s > 1e36, `${a}: ${s}`);
    }
  }
  assert.equal(scaleFromAmax(1e39, "float8e4m3").item(), f32(1e39 / 448));
  // Within float32's range the amax is rounded to float32 first (a float32 division).
  const inRange = Array.from(randomValues(6, 4361, { low: 0.01, high: 3e38 }));
  for (const a of inRange) assert.equal(scaleFromAmax(a, "int8").item(), f32(f32(a) / 127));
  // Infinity still gives scale 1 (ModelOpt's rule).
  assert.equal(scaleFromAmax(Infinity, "int8").item(), 1);
});

Deno.test("scaleFromAmax errors: negative amax, unsupported dtypes", () => {
  let line = thisLine() + 1;
  let bad = () => scaleFromAmax(tensor([1, -2]), "int8");
  expectError(line, bad, {
    op: "scaleFromAmax",
    kind: "argument",
    includes: ["amax must not be negative", "-2 at flat index 1"],
  });
  line = thisLine() + 1;
  bad = () => scaleFromAmax(1, "int32" as QuantDType);
  expectError(line, bad, { op: "scaleFromAmax", kind: "dtype", includes: ['got "int32"'] });
  line = thisLine() + 1;
  bad = () => scaleFromAmax(tensor([1], { dtype: "int32" }), "int8");
  expectError(line, bad, { op: "scaleFromAmax", kind: "dtype", includes: ["got int32"] });
  // A quotient beyond float32's range too has no scale.
  line = thisLine() + 1;
  bad = () => scaleFromAmax(1e41, "int8");
  expectError(line, bad, {
    op: "scaleFromAmax",
    kind: "argument",
    includes: ["beyond float32's range", "amax / 127", "got 1e+41"],
  });
});
