import assert from "node:assert/strict";
import {
  allocStorage,
  bfloat16BitsToNumber,
  checkDType,
  decode,
  dtypeInfo,
  DTYPES,
  encode,
  float16BitsToNumber,
  float32ToBfloat16Bits,
  float32ToFloat16Bits,
  float32ToFloat8e4m3Bits,
  float8e4m3BitsToNumber,
  formatNumber,
  fromStorageBytes,
  isDType,
  packInt4,
  roundHalfToEven,
  storageByteLength,
  toStorageBytes,
  unpackInt4,
} from "../lib/dtype.ts";
import type { DType } from "../lib/dtype.ts";
import { TensorqError } from "../lib/errors.ts";

const hex = (n: number): string => "0x" + n.toString(16);

function assertBits(actual: number, expected: number, what: string): void {
  assert.equal(hex(actual), hex(expected), what);
}

/** Deterministic 32-bit generator (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer); // little-endian host: [lo, hi]

/** A positive float64 with a random 52-bit mantissa and exponent in [eLo, eHi]. */
function randomFloat(next: () => number, eLo: number, eHi: number): number {
  const e = eLo + (next() % (eHi - eLo + 1));
  u32[0] = next();
  u32[1] = (((e + 1023) & 0x7ff) << 20) | (next() & 0xfffff);
  return f64[0];
}

/** The next float64 above (dir 1) or below (dir -1) a positive finite x. */
function nextFloat(x: number, dir: 1 | -1): number {
  f64[0] = x;
  const lo = u32[0] + dir;
  if (lo < 0) {
    u32[0] = 0xffffffff;
    u32[1] -= 1;
  } else if (lo > 0xffffffff) {
    u32[0] = 0;
    u32[1] += 1;
  } else u32[0] = lo;
  return f64[0];
}

/**
 * Independent reference encoder: nearest entry of the ascending positive value list
 * (index = bit pattern), ties to the even pattern. `top` is the value one step above the
 * largest finite one (2^16 for float16, 2^128 for bfloat16), standing for the overflow pattern.
 */
function referenceEncoder(
  decodeBits: (b: number) => number,
  maxFiniteBits: number,
  top: number,
): (x: number) => number {
  const values: number[] = [];
  for (let b = 0; b <= maxFiniteBits; b++) values.push(decodeBits(b));
  values.push(top);
  return (a: number): number => {
    let lo = 0;
    let hi = values.length - 1;
    if (a >= values[hi]) return hi;
    while (hi - lo > 1) {
      const mid = (lo + hi) >>> 1;
      if (values[mid] <= a) lo = mid;
      else hi = mid;
    }
    // values[lo] <= a < values[hi]; both differences are exact (Sterbenz, or a - 0).
    const below = a - values[lo];
    const above = values[hi] - a;
    if (below < above) return lo;
    if (above < below) return hi;
    return lo % 2 === 0 ? lo : hi;
  };
}

/** Random magnitudes over the format's range plus exact midpoints and their neighbours. */
function testInputs(seed: number, decodeBits: (b: number) => number, maxBits: number): number[] {
  const next = rng(seed);
  const out: number[] = [];
  for (let i = 0; i < 20000; i++) out.push(randomFloat(next, -30, 17));
  for (let i = 0; i < 2000; i++) {
    const b = next() % maxBits;
    const mid = (decodeBits(b) + decodeBits(b + 1)) / 2; // exact in float64
    out.push(mid, nextFloat(mid, 1), nextFloat(mid, -1));
  }
  return out;
}

Deno.test("DTYPES, isDType and checkDType", () => {
  assert.deepEqual([...DTYPES], [
    "float32",
    "float16",
    "bfloat16",
    "float8e4m3",
    "int4",
    "int8",
    "int32",
    "int64",
    "bool",
  ]);
  for (const d of DTYPES) assert.equal(isDType(d), true);
  for (const x of ["float64", "Float32", "", 3, null, undefined, {}]) {
    assert.equal(isDType(x), false, String(x));
  }
  assert.equal(checkDType("zeros", "dtype", "int8"), "int8");
  assert.throws(
    () => checkDType("zeros", "options.dtype", "float64"),
    (e: unknown) =>
      e instanceof TensorqError && e.op === "zeros" && e.kind === "dtype" &&
      e.argument === "options.dtype" && e.expected!.includes("bfloat16") &&
      e.actual === '"float64"',
  );
});

Deno.test("dtypeInfo ranges and sizes", () => {
  const rows: [DType, number, number, boolean, boolean, number, number][] = [
    ["float32", 32, 4, true, false, -3.4028234663852886e38, 3.4028234663852886e38],
    ["float16", 16, 2, true, false, -65504, 65504],
    ["bfloat16", 16, 2, true, false, -3.3895313892515355e38, 3.3895313892515355e38],
    ["float8e4m3", 8, 1, true, false, -448, 448],
    ["int4", 4, 0.5, false, true, -8, 7],
    ["int8", 8, 1, false, true, -128, 127],
    ["int32", 32, 4, false, true, -2147483648, 2147483647],
    ["int64", 64, 8, false, true, -(2 ** 63), 2 ** 63],
    ["bool", 8, 1, false, false, 0, 1],
  ];
  for (const [name, bits, itemSize, isFloat, isInt, min, max] of rows) {
    assert.deepEqual({ ...dtypeInfo(name) }, { name, bits, itemSize, isFloat, isInt, min, max });
  }
  // The float maxima are the formats' largest finite values.
  assert.equal(dtypeInfo("float32").max, Math.fround(3.4028234663852886e38));
  assert.equal(dtypeInfo("float16").max, float16BitsToNumber(0x7bff));
  assert.equal(dtypeInfo("bfloat16").max, bfloat16BitsToNumber(0x7f7f));
  assert.equal(dtypeInfo("float8e4m3").max, float8e4m3BitsToNumber(0x7e));
  assert.throws(
    () => dtypeInfo("float64" as DType),
    (e: unknown) =>
      e instanceof TensorqError && e.op === "dtype" && e.kind === "dtype" &&
      e.argument === "dtype",
  );
});

Deno.test("roundHalfToEven", () => {
  const cases: [number, number][] = [
    [0.5, 0],
    [1.5, 2],
    [2.5, 2],
    [3.5, 4],
    [-0.5, -0],
    [-1.5, -2],
    [-2.5, -2],
    [2.4999999999999996, 2],
    [2.5000000000000004, 3],
    [-7.3, -7],
    [-0, -0],
    [0, 0],
    [-0.25, -0],
    [2 ** 51 - 0.5, 2 ** 51], // the largest magnitudes of the 1.5 · 2^52 addition
    [-(2 ** 51) + 1.5, -(2 ** 51) + 2],
    [2 ** 51 + 0.5, 2 ** 51],
    [4503599627370495.5, 4503599627370496], // 2^52 - 0.5: odd floor, rounds up
    [4503599627370494.5, 4503599627370494], // even floor
    [1e300, 1e300],
    [Infinity, Infinity],
    [-Infinity, -Infinity],
  ];
  for (const [x, want] of cases) assert.ok(Object.is(roundHalfToEven(x), want), `${x}`);
  assert.ok(Number.isNaN(roundHalfToEven(NaN)));
});

Deno.test("float16 encode: hand-computed patterns", () => {
  const cases: [number, number][] = [
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff],
    [65519, 0x7bff],
    [65520, 0x7c00], // tie between 65504 and 2^16: even pattern is Inf
    [-65520, 0xfc00],
    [1e10, 0x7c00],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -24, 0x0001],
    [2 ** -25, 0x0000], // tie between 0 and 2^-24: even is 0
    [2 ** -25 + 2 ** -60, 0x0001],
    [3 * 2 ** -25, 0x0002], // tie between 1 and 2 units: even is 2
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -14 - 2 ** -25, 0x0400], // largest subnormal + half unit: carries into the exponent
    [1 + 2 ** -11, 0x3c00], // tie: even mantissa 0
    [1 + 3 * 2 ** -11, 0x3c02], // tie: even mantissa 2
    [1 + 2 ** -11 + 2 ** -40, 0x3c01],
    [0, 0x0000],
    [-0, 0x8000],
    [NaN, 0x7e00],
  ];
  for (const [x, want] of cases) assertBits(float32ToFloat16Bits(x), want, `float16(${x})`);
});

Deno.test("float16 decode: hand-computed values", () => {
  const cases: [number, number][] = [
    [0x3c00, 1],
    [0xc000, -2],
    [0x7bff, 65504],
    [0x0001, 2 ** -24],
    [0x03ff, 1023 * 2 ** -24],
    [0x0400, 2 ** -14],
    [0x3555, 0.333251953125],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
    [0x8000, -0],
  ];
  for (const [b, want] of cases) assert.ok(Object.is(float16BitsToNumber(b), want), hex(b));
  assert.ok(Number.isNaN(float16BitsToNumber(0x7e00)));
  assert.ok(Number.isNaN(float16BitsToNumber(0xfc01)));
});

Deno.test("float16: every pattern decodes and re-encodes to itself", () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const values = decode("float16", all) as Float32Array;
  const back = encode("float16", values) as Uint16Array;
  let checked = 0;
  for (let b = 0; b < 65536; b++) {
    const scalar = float16BitsToNumber(b);
    assert.ok(Object.is(values[b], scalar) || (Number.isNaN(values[b]) && Number.isNaN(scalar)));
    if (Number.isNaN(scalar)) continue;
    if (back[b] !== b) assert.fail(`float16 ${hex(b)} re-encoded as ${hex(back[b])}`);
    checked++;
  }
  assert.equal(checked, 65536 - 2 * 1023);
});

Deno.test("float16 encode matches a nearest-value reference on random inputs", () => {
  const reference = referenceEncoder(float16BitsToNumber, 0x7bff, 2 ** 16);
  for (const a of testInputs(1234, float16BitsToNumber, 0x7bff)) {
    const want = reference(a);
    assertBits(float32ToFloat16Bits(a), want, `float16(${a})`);
    assertBits(float32ToFloat16Bits(-a), want | 0x8000, `float16(${-a})`);
  }
});

Deno.test("bfloat16 encode: hand-computed patterns", () => {
  const cases: [number, number][] = [
    [1, 0x3f80],
    [-1, 0xbf80],
    [1 + 2 ** -8, 0x3f80], // tie: even mantissa 0
    [1 + 3 * 2 ** -8, 0x3f82], // tie: even mantissa 2
    // float32 would first round this to 1 + 2^-8 (a tie), then to 0x3f80; one rounding goes up.
    [1 + 2 ** -8 + 2 ** -40, 0x3f81],
    [3.3895313892515355e38, 0x7f7f],
    [2 ** 128 - 2 ** 120, 0x7f7f], // the largest finite value
    [2 ** 128 - 2 ** 119, 0x7f80], // tie between max and 2^128: even pattern is Inf
    [2 ** 128 - 2 ** 119 - 2 ** 80, 0x7f7f],
    [Infinity, 0x7f80],
    [-Infinity, 0xff80],
    [2 ** -133, 0x0001], // smallest subnormal
    [2 ** -134, 0x0000], // tie to even 0
    [3 * 2 ** -134, 0x0002],
    [1e-300, 0x0000],
    [-0, 0x8000],
    [NaN, 0x7fc0],
  ];
  for (const [x, want] of cases) assertBits(float32ToBfloat16Bits(x), want, `bfloat16(${x})`);
  // The double-rounding case really does differ through float32.
  assert.equal(Math.fround(1 + 2 ** -8 + 2 ** -40), 1 + 2 ** -8);
  assert.equal(bfloat16BitsToNumber(0x3f81), 1 + 2 ** -7);
  assert.equal(bfloat16BitsToNumber(0x0001), 2 ** -133);
  assert.ok(Object.is(bfloat16BitsToNumber(0x8000), -0));
  assert.equal(bfloat16BitsToNumber(0xff80), -Infinity);
});

Deno.test("bfloat16: every pattern decodes and re-encodes to itself", () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const values = decode("bfloat16", all) as Float32Array;
  const back = encode("bfloat16", values) as Uint16Array;
  let checked = 0;
  for (let b = 0; b < 65536; b++) {
    const scalar = bfloat16BitsToNumber(b);
    assert.ok(Object.is(values[b], scalar) || (Number.isNaN(values[b]) && Number.isNaN(scalar)));
    if (Number.isNaN(scalar)) continue;
    if (back[b] !== b) assert.fail(`bfloat16 ${hex(b)} re-encoded as ${hex(back[b])}`);
    checked++;
  }
  assert.equal(checked, 65536 - 2 * 127);
});

Deno.test("bfloat16 encode matches a nearest-value reference on random inputs", () => {
  const reference = referenceEncoder(bfloat16BitsToNumber, 0x7f7f, 2 ** 128);
  const next = rng(99);
  const inputs = testInputs(4321, bfloat16BitsToNumber, 0x7f7f);
  for (let i = 0; i < 5000; i++) inputs.push(randomFloat(next, -140, 130));
  for (const a of inputs) {
    const want = reference(a);
    assertBits(float32ToBfloat16Bits(a), want, `bfloat16(${a})`);
    assertBits(float32ToBfloat16Bits(-a), want | 0x8000, `bfloat16(${-a})`);
  }
});

Deno.test("float8e4m3 encode: hand-computed patterns", () => {
  const cases: [number, number][] = [
    [448, 0x7e],
    [449, 0x7e],
    [464, 0x7e], // would tie to 480 (the NaN slot): saturates instead
    [1000, 0x7e],
    [-1000, 0xfe],
    [Infinity, 0x7e],
    [-Infinity, 0xfe],
    [1, 0x38],
    [-1, 0xb8],
    [1.0625, 0x38], // tie between 1 and 1.125: even mantissa 0
    [1.1875, 0x3a], // tie between 1.125 and 1.25: even mantissa 2
    [2 ** -9, 0x01],
    [2 ** -10, 0x00], // tie to even 0
    [3 * 2 ** -10, 0x02],
    [2 ** -6, 0x08], // smallest normal
    [0.875 * 2 ** -6 + 2 ** -10, 0x08], // largest subnormal + half step carries
    [240, 0x77],
    [-0, 0x80],
    [NaN, 0x7f],
  ];
  for (const [x, want] of cases) assertBits(float32ToFloat8e4m3Bits(x), want, `fp8(${x})`);
  assert.equal(float8e4m3BitsToNumber(0x7e), 448);
  assert.equal(float8e4m3BitsToNumber(0xfe), -448);
  assert.equal(float8e4m3BitsToNumber(0x01), 2 ** -9);
  assert.equal(float8e4m3BitsToNumber(0x78), 256);
  assert.ok(Number.isNaN(float8e4m3BitsToNumber(0x7f)));
  assert.ok(Number.isNaN(float8e4m3BitsToNumber(0xff)));
  assert.ok(Object.is(float8e4m3BitsToNumber(0x80), -0));
});

Deno.test("float8e4m3: all 256 patterns decode and re-encode to themselves", () => {
  const all = new Uint8Array(256).map((_, i) => i);
  const values = decode("float8e4m3", all) as Float32Array;
  const back = encode("float8e4m3", values) as Uint8Array;
  let checked = 0;
  for (let b = 0; b < 256; b++) {
    assert.ok(Object.is(values[b], float8e4m3BitsToNumber(b)) || (b & 0x7f) === 0x7f);
    if ((b & 0x7f) === 0x7f) continue;
    assertBits(back[b], b, `fp8 ${hex(b)}`);
    checked++;
  }
  assert.equal(checked, 254);
});

Deno.test("float8e4m3 encode matches a nearest-value reference on random inputs", () => {
  const nearest = referenceEncoder(float8e4m3BitsToNumber, 0x7e, 480);
  const next = rng(7);
  const inputs = testInputs(777, float8e4m3BitsToNumber, 0x7e);
  for (let i = 0; i < 5000; i++) inputs.push(randomFloat(next, -12, 10));
  for (const a of inputs) {
    const want = a > 448 ? 0x7e : nearest(a);
    assertBits(float32ToFloat8e4m3Bits(a), want, `fp8(${a})`);
    assertBits(float32ToFloat8e4m3Bits(-a), want | 0x80, `fp8(${-a})`);
  }
});

/**
 * float32 values (the encoders' bit-pattern path): random patterns of every exponent, plus each
 * format's midpoints (float32-exact for all three) with their float32 neighbours.
 */
function float32Inputs(seed: number, decodeBits: (b: number) => number, maxBits: number): number[] {
  const next = rng(seed);
  const f32 = new Float32Array(1);
  const bits = new Uint32Array(f32.buffer);
  const out: number[] = [];
  for (let e = 0; e < 255; e++) {
    for (let i = 0; i < 200; i++) {
      bits[0] = (e << 23) | (next() & 0x7fffff);
      out.push(f32[0]);
    }
  }
  for (let i = 0; i < 3000; i++) {
    const b = next() % maxBits;
    f32[0] = (decodeBits(b) + decodeBits(b + 1)) / 2;
    assert.equal(f32[0], (decodeBits(b) + decodeBits(b + 1)) / 2, "a midpoint is float32");
    out.push(f32[0]);
    for (const d of [1, -1]) {
      bits[0] += d;
      out.push(f32[0]);
      bits[0] -= d;
    }
  }
  return out;
}

Deno.test("float32 inputs encode like the nearest-value reference (the bit-pattern path)", () => {
  const formats: [string, (x: number) => number, (x: number) => number, number][] = [
    [
      "float16",
      float32ToFloat16Bits,
      referenceEncoder(float16BitsToNumber, 0x7bff, 2 ** 16),
      0x8000,
    ],
    [
      "bfloat16",
      float32ToBfloat16Bits,
      referenceEncoder(bfloat16BitsToNumber, 0x7f7f, 2 ** 128),
      0x8000,
    ],
    [
      "float8e4m3",
      float32ToFloat8e4m3Bits,
      ((nearest) => (a: number) => a > 448 ? 0x7e : nearest(a))(
        referenceEncoder(float8e4m3BitsToNumber, 0x7e, 480),
      ),
      0x80,
    ],
  ];
  const maxBits: Record<string, [(b: number) => number, number]> = {
    float16: [float16BitsToNumber, 0x7bff],
    bfloat16: [bfloat16BitsToNumber, 0x7f7f],
    float8e4m3: [float8e4m3BitsToNumber, 0x7e],
  };
  for (const [name, encodeBits, reference, signBit] of formats) {
    const [decodeBits, top] = maxBits[name];
    const inputs = float32Inputs(name.length * 1000 + 17, decodeBits, top);
    for (const a of [...inputs, Infinity, 0]) {
      assert.equal(Math.fround(a), a);
      const want = reference(a);
      assertBits(encodeBits(a), want, `${name}(${a})`);
      assertBits(encodeBits(-a), want | signBit, `${name}(${-a})`);
    }
  }
});

Deno.test("encode of integer dtypes truncates toward zero, saturates, NaN to 0", () => {
  const inputs = [127.9, -128.5, 300, NaN, -2.7, 2.7, -0.5, Infinity, -Infinity, 0];
  assert.deepEqual(
    [...(encode("int8", inputs) as Int8Array)],
    [127, -128, 127, 0, -2, 2, 0, 127, -128, 0],
  );
  assert.deepEqual(
    [...(encode("int4", inputs) as Int8Array)],
    [7, -8, 7, 0, -2, 2, 0, 7, -8, 0],
  );
  assert.deepEqual(
    [...(encode("int32", [3e9, -3e9, 2147483647.9, -2147483648.9, NaN, -7.9]) as Int32Array)],
    [2147483647, -2147483648, 2147483647, -2147483648, 0, -7],
  );
  assert.deepEqual(
    [
      ...(encode("int64", [
        2 ** 63,
        -(2 ** 63),
        1e30,
        -1e30,
        NaN,
        -2.7,
        2 ** 53 + 2,
      ]) as BigInt64Array),
    ],
    [
      9223372036854775807n,
      -9223372036854775808n,
      9223372036854775807n,
      -9223372036854775808n,
      0n,
      -2n,
      9007199254740994n,
    ],
  );
  assert.deepEqual(
    [...(encode("bool", [0, -0, 1, -3, 0.1, NaN, Infinity]) as Uint8Array)],
    [0, 0, 1, 1, 1, 1, 1],
  );
  assert.deepEqual(
    [...(encode("float32", [1 + 2 ** -24, 1 + 3 * 2 ** -24, 0.1]) as Float32Array)],
    [1, 1 + 2 ** -22, Math.fround(0.1)],
  );
});

Deno.test("encode writes into out and checks it", () => {
  const out = new Uint16Array(3);
  assert.equal(encode("float16", [1, -2, 65504], out), out);
  assert.deepEqual([...out], [0x3c00, 0xc000, 0x7bff]);
  assert.throws(
    () => encode("float16", [1, 2], new Float32Array(2)),
    (e: unknown) => e instanceof TensorqError && e.kind === "dtype" && e.argument === "out",
  );
  assert.throws(
    () => encode("float16", [1, 2], new Uint16Array(3)),
    (e: unknown) => e instanceof TensorqError && e.kind === "argument" && e.argument === "out",
  );
  assert.throws(
    () => encode("float64" as DType, [1]),
    (e: unknown) => e instanceof TensorqError && e.op === "encode" && e.kind === "dtype",
  );
});

Deno.test("decode returns the documented views", () => {
  const f32 = new Float32Array([1.5, -2]);
  assert.equal(decode("float32", f32), f32);
  const i8 = new Int8Array([-3, 4]);
  assert.equal(decode("int8", i8), i8);
  assert.equal(decode("int4", i8), i8);
  const i32 = new Int32Array([7]);
  assert.equal(decode("int32", i32), i32);
  const b = new Uint8Array([0, 1]);
  assert.equal(decode("bool", b), b);
  const i64 = decode("int64", new BigInt64Array([-5n, 2n ** 53n, -(2n ** 63n)]));
  assert.ok(i64 instanceof Float64Array);
  assert.deepEqual([...i64], [-5, 2 ** 53, -(2 ** 63)]);
  const h = decode("float16", new Uint16Array([0x3c00, 0x0001]));
  assert.ok(h instanceof Float32Array);
  assert.deepEqual([...h], [1, 2 ** -24]);
  assert.throws(
    () => decode("int32", new Int8Array(2)),
    (e: unknown) => e instanceof TensorqError && e.op === "decode" && e.kind === "dtype",
  );
});

Deno.test("allocStorage and storageByteLength", () => {
  const kinds: [DType, string, number][] = [
    ["float32", "Float32Array", 20],
    ["float16", "Uint16Array", 10],
    ["bfloat16", "Uint16Array", 10],
    ["float8e4m3", "Uint8Array", 5],
    ["int4", "Int8Array", 3],
    ["int8", "Int8Array", 5],
    ["int32", "Int32Array", 20],
    ["int64", "BigInt64Array", 40],
    ["bool", "Uint8Array", 5],
  ];
  for (const [dtype, ctor, bytes] of kinds) {
    const s = allocStorage(dtype, 5);
    assert.equal(s.constructor.name, ctor, dtype);
    assert.equal(s.length, 5);
    assert.equal(storageByteLength(dtype, 5), bytes, dtype);
  }
  assert.equal(storageByteLength("int4", 4), 2);
  assert.equal(storageByteLength("int4", 0), 0);
  assert.throws(
    () => allocStorage("float32", -1),
    (e: unknown) => e instanceof TensorqError && e.kind === "argument" && e.argument === "n",
  );
  assert.throws(() => allocStorage("float32", 1.5), TensorqError);
});

Deno.test("packInt4 / unpackInt4: hand-computed bytes and round trip", () => {
  const values = new Int8Array([1, -1, -8, 7, 3]);
  const packed = packInt4(values);
  // [1 | -1<<4] = 0xf1, [-8 | 7<<4] = 0x78, [3 | pad 0] = 0x03
  assert.deepEqual([...packed], [0xf1, 0x78, 0x03]);
  assert.deepEqual([...unpackInt4(packed, 5)], [1, -1, -8, 7, 3]);
  const next = rng(42);
  for (const n of [0, 1, 2, 17, 1000]) {
    const v = new Int8Array(n).map(() => (next() % 16) - 8);
    const p = packInt4(v);
    assert.equal(p.length, Math.ceil(n / 2));
    if (n % 2 === 1) assert.equal(p[p.length - 1] >>> 4, 0, "padding nibble");
    assert.deepEqual(unpackInt4(p, n), v);
  }
  assert.throws(
    () => unpackInt4(new Uint8Array(2), 5),
    (e: unknown) => e instanceof TensorqError && e.argument === "bytes",
  );
});

Deno.test("toStorageBytes / fromStorageBytes: little-endian layout and round trip", () => {
  assert.deepEqual([...toStorageBytes("float32", new Float32Array([1]))], [0, 0, 0x80, 0x3f]);
  assert.deepEqual([...toStorageBytes("float16", new Uint16Array([0x3c00]))], [0x00, 0x3c]);
  assert.deepEqual([...toStorageBytes("int32", new Int32Array([-2]))], [0xfe, 0xff, 0xff, 0xff]);
  assert.deepEqual([...toStorageBytes("int64", new BigInt64Array([258n]))], [
    2,
    1,
    0,
    0,
    0,
    0,
    0,
    0,
  ]);
  assert.deepEqual([...toStorageBytes("int4", new Int8Array([-1, 2, 5]))], [0x2f, 0x05]);

  const next = rng(5);
  const inputs = Array.from({ length: 9 }, () => ((next() / 2 ** 32) - 0.5) * 20);
  for (const dtype of DTYPES) {
    const storage = encode(dtype, inputs);
    const bytes = toStorageBytes(dtype, storage);
    assert.equal(bytes.length, storageByteLength(dtype, 9), dtype);
    // Place the bytes at an odd offset so typed-array alignment would fail without a copy.
    const shifted = new Uint8Array(bytes.length + 1);
    shifted.set(bytes, 1);
    const back = fromStorageBytes(dtype, shifted.subarray(1), 9);
    assert.deepEqual(back, storage, dtype);
    shifted.fill(0);
    assert.deepEqual(back, storage, `${dtype} copy is independent`);
  }
  assert.throws(
    () => fromStorageBytes("float32", new Uint8Array(7), 2),
    (e: unknown) =>
      e instanceof TensorqError && e.op === "fromStorageBytes" && e.argument === "bytes",
  );
});

Deno.test("formatNumber", () => {
  const cases: [DType, number, string][] = [
    ["float32", 1, "1"],
    ["float32", -2.5, "-2.5"],
    ["float32", 0.123456, "0.1235"],
    ["float32", 123456, "1.235e+05"],
    ["float32", 1234.4, "1234"],
    ["float32", 1234.5, "1235"], // exact decimal ties round away from zero
    ["float32", 9999.5, "1e+04"],
    ["float32", 0.0001, "0.0001"],
    ["float32", 0.00001234, "1.234e-05"],
    ["float16", 65504, "6.55e+04"],
    ["float32", 0, "0"],
    ["float32", -0, "-0"],
    ["float32", NaN, "nan"],
    ["bfloat16", Infinity, "inf"],
    ["float8e4m3", -Infinity, "-inf"],
    ["int8", -128, "-128"],
    ["int32", 2147483647, "2147483647"],
    ["int64", 2 ** 63, "9223372036854775808"],
    ["int64", 123456789012, "123456789012"],
    ["bool", 1, "true"],
    ["bool", 0, "false"],
  ];
  for (const [dtype, v, want] of cases) assert.equal(formatNumber(dtype, v), want, `${dtype} ${v}`);
});
