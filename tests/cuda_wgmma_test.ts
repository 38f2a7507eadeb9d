import assert from "node:assert/strict";
import { CU_TENSOR_MAP_BYTES, KernelParams, tensorMapBuffer } from "../ffi/cuda.ts";
import { encode, type StorageArray } from "../lib/dtype.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import type { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { ACTIVATION, FLOAT_KIND, type FloatDType, memsetAsync } from "../lib/backends/cuda/util.ts";
import {
  defaultWgmmaVariant,
  fastestWgmmaInt8Gemm,
  timeLaunchMs,
  WGMMA_TILES,
  wgmmaInt8Gemm,
  type WgmmaInt8Problem,
  wgmmaSharedBytes,
} from "../lib/backends/cuda/wgmma.ts";
import { fromStorage, type Tensor } from "../lib/tensor.ts";
import { randomCodes, testOnGpu } from "./helpers.ts";

// Reference: int64 sums of the int8 codes, t = acc · (sxd · swd) + b in float64 (the scale
// product is exact; one rounding for the multiply and one for the add, as
// qlinear_epilogue_i32_<out> and the CPU qlinear do), relu as t <= 0 → +0, one rounding to the
// output dtype. float32 outputs (the kernels' double epilogue) must equal it bit for bit;
// float16 / bfloat16 outputs (the float32 epilogue) may differ by one output ulp where t is
// within float32 rounding of a rounding boundary, so they are checked to one ulp plus 2^-22 of
// the terms' magnitude, and at most 1% of them may differ at all. gelu (tanh form) is applied
// to t rounded to float32 in float64 and compared to one output ulp (a few float32 ulps for
// float32 outputs). With a residual r the reference is the unfused add, round(t) + r rounded
// once, with one unit of slack for the first rounding (none for float32 outputs). Outputs are
// poisoned with 0xff bytes (NaN) before each run, so an unwritten element is caught.

const VARIANTS = Object.keys(WGMMA_TILES);

// ---------------------------------------------------------------------------------------
// KernelParams.bytes (host only: no GPU needed)

function readU64(address: bigint): bigint {
  return new Deno.UnsafePointerView(Deno.UnsafePointer.create(address)!).getBigUint64();
}

function readBytes(address: bigint, n: number): Uint8Array {
  const out = new Uint8Array(n);
  new Deno.UnsafePointerView(Deno.UnsafePointer.create(address)!).copyInto(out);
  return out;
}

Deno.test("KernelParams.bytes: aligned by-value blobs among scalar arguments", () => {
  const params = new KernelParams(4);
  const blobs = [0, 1, 2].map((b) => Uint8Array.from({ length: 128 }, (_, i) => (i * 7 + b) & 255));
  // 40 arguments force the slot storage to grow twice while blobs are in the list.
  params.reset();
  const expected: (bigint | Uint8Array)[] = [];
  for (let i = 0; i < 40; i++) {
    if (i % 13 === 1) {
      const blob = blobs[(i - 1) / 13];
      params.bytes(blob, 128);
      expected.push(blob);
    } else {
      params.u64(BigInt(i) * 1000003n);
      expected.push(BigInt(i) * 1000003n);
    }
  }
  assert.equal(params.length, 40);
  const check = () => {
    expected.forEach((e, i) => {
      const at = params.pointerArray[i];
      if (typeof e === "bigint") {
        assert.equal(readU64(at), e, `scalar argument ${i}`);
      } else {
        assert.equal(at % 128n, 0n, `blob argument ${i} is 128-byte aligned`);
        assert.deepEqual(readBytes(at, 128), e, `blob argument ${i}`);
      }
    });
  };
  check();
  // After a reset the former blob slots hold plain arguments again.
  params.reset();
  for (let i = 0; i < 40; i++) params.i64(-i);
  for (let i = 0; i < 40; i++) {
    assert.equal(BigInt.asIntN(64, readU64(params.pointerArray[i])), BigInt(-i), `slot ${i}`);
  }
  // Reused blob storage: the same layout again gives the same values.
  params.reset();
  for (let i = 0; i < 40; i++) {
    const e = expected[i];
    if (typeof e === "bigint") params.u64(e);
    else params.bytes(e, 128);
  }
  check();
  assert.equal(tensorMapBuffer().length, CU_TENSOR_MAP_BYTES);
  assert.throws(() => params.bytes(blobs[0], 48), /power of two/);
});

Deno.test("wgmma tiles: shared memory within the 227 KiB opt-in limit", () => {
  for (const [name, tile] of Object.entries(WGMMA_TILES)) {
    assert.ok(wgmmaSharedBytes(tile) <= 232448, `${name}: ${wgmmaSharedBytes(tile)} bytes`);
  }
});

// ---------------------------------------------------------------------------------------
// GPU cases

/** A fast seeded generator (xorshift32) for the large operands. */
function xorshift(seed: number): () => number {
  let s = (seed * 2654435761) >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

const KIND_DTYPE: readonly FloatDType[] = ["float32", "float16", "bfloat16"];

/** `n` values uniform in [lo, hi), each exactly representable in `dtype`. */
function randomFloats(n: number, seed: number, lo: number, hi: number, dtype: FloatDType) {
  const next = xorshift(seed);
  const values = Float64Array.from({ length: n }, () => lo + (hi - lo) * (next() / 2 ** 32));
  const storage = encode(dtype, values);
  const exact = Float64Array.from(
    new Float64Array(values.length).map((_, i) => decodeOne(dtype, storage, i)),
  );
  return { storage, exact };
}

function decodeOne(dtype: FloatDType, storage: StorageArray, i: number): number {
  if (dtype === "float32") return (storage as Float32Array)[i];
  const bits = (storage as Uint16Array)[i];
  if (dtype === "bfloat16") return new Float32Array(new Uint32Array([bits << 16]).buffer)[0];
  const sign = bits & 0x8000 ? -1 : 1;
  const e = (bits >> 10) & 31, f = bits & 1023;
  if (e === 0) return sign * f * 2 ** -24;
  if (e === 31) return f ? NaN : sign * Infinity;
  return sign * (1 + f / 1024) * 2 ** (e - 15);
}

/** Raw output bits, one element per entry. */
function bitsOf(dtype: FloatDType, storage: StorageArray): Uint32Array | Uint16Array {
  if (dtype === "float32") {
    const f = storage as Float32Array;
    return new Uint32Array(f.buffer, f.byteOffset, f.length);
  }
  return storage as Uint16Array;
}

interface GemmCase {
  m: number;
  n: number;
  k: number;
  out: FloatDType;
  perChannel: boolean;
  /** Bias dtype (default none). */
  bias?: FloatDType;
  act?: "none" | "relu" | "gelu_tanh";
  sxdKind?: number;
  swdKind?: number;
  /** Check every output (default when M·N·K ≤ 2^30), else a sample plus the edges. */
  full?: boolean;
  /** Tile configurations to run (default all). */
  variants?: readonly string[];
  /** Add a residual `[M, N]` of the output dtype in the epilogue. */
  residual?: boolean;
  seed: number;
}

function bufferOf(t: Tensor): CudaBuffer {
  return t.evaluate().node.buffer as CudaBuffer;
}

function upload(storage: StorageArray, dtype: "int8" | FloatDType): Tensor {
  return fromStorage(storage, [storage.length], dtype, "cuda");
}

/** Operands of a case on the GPU and on the host. */
function operands(c: GemmCase) {
  const sxdKind = c.sxdKind ?? 0, swdKind = c.swdKind ?? 0;
  const x = randomCodes("int8", c.m * c.k, c.seed).storage as Int8Array;
  const w = randomCodes("int8", c.n * c.k, c.seed + 1).storage as Int8Array;
  const sx = randomFloats(1, c.seed + 2, 0.001, 0.01, KIND_DTYPE[sxdKind]);
  const sw = randomFloats(c.perChannel ? c.n : 1, c.seed + 3, 0.001, 0.01, KIND_DTYPE[swdKind]);
  const b = c.bias ? randomFloats(c.n, c.seed + 4, -1, 1, c.bias) : undefined;
  const r = c.residual ? randomFloats(c.m * c.n, c.seed + 5, -2, 2, c.out) : undefined;
  const gpu = {
    x: upload(x, "int8"),
    w: upload(w, "int8"),
    sx: upload(sx.storage, KIND_DTYPE[sxdKind]),
    sw: upload(sw.storage, KIND_DTYPE[swdKind]),
    b: b && upload(b.storage, c.bias!),
    r: r && upload(r.storage, c.out),
    y: fromStorage(encode(c.out, new Float64Array(c.m * c.n)), [c.m, c.n], c.out, "cuda"),
  };
  return { x, w, sx: sx.exact[0], sw: sw.exact, b: b?.exact, r: r?.exact, gpu, sxdKind, swdKind };
}

type Operands = ReturnType<typeof operands>;

/** Output positions checked: all, or a seeded sample plus the first / last rows and columns. */
function positions(c: GemmCase): Int32Array {
  const full = c.full ?? c.m * c.n * c.k <= 2 ** 30;
  if (full) return Int32Array.from({ length: c.m * c.n }, (_, i) => i);
  const next = xorshift(c.seed + 99);
  const out: number[] = [];
  for (let i = 0; i < 8192; i++) out.push((next() % c.m) * c.n + (next() % c.n));
  for (let i = 0; i < 256; i++) {
    const r = next() % c.m, col = next() % c.n;
    out.push(r * c.n, r * c.n + c.n - 1, col, (c.m - 1) * c.n + col);
  }
  out.push(c.m * c.n - 1);
  return Int32Array.from(out);
}

/** gelu, tanh form, in float64. */
function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

/** Expected outputs at `at` (the reference above): the value before the output rounding, the
 * magnitude of its terms (|acc · scale| + |b|), and with a residual r the unfused add's value
 * round(t) + r, whose first rounding may land one unit (`slack`) apart. */
function expected(c: GemmCase, o: Operands, at: Int32Array) {
  const t = new Float64Array(at.length);
  const mag = new Float64Array(at.length);
  const slack = new Float64Array(at.length);
  for (let i = 0; i < at.length; i++) {
    const row = Math.floor(at[i] / c.n), col = at[i] % c.n;
    let acc = 0;
    const xo = row * c.k, wo = col * c.k;
    for (let p = 0; p < c.k; p++) acc += o.x[xo + p] * o.w[wo + p];
    const scale = o.sx * o.sw[c.perChannel ? col : 0];
    const b = o.b ? o.b[col] : 0;
    let v = acc * scale + b;
    if (c.act === "relu" && v <= 0) v = 0;
    if (c.act === "gelu_tanh") v = geluTanh(Math.fround(v));
    mag[i] = Math.abs(acc * scale) + Math.abs(b);
    if (o.r) {
      const rounded = decodeOne(c.out, encode(c.out, Float64Array.of(v)), 0);
      slack[i] = (c.out === "float32" ? 0 : ulpOf(c.out, v)) + 2 ** -22 * mag[i];
      v = rounded + o.r[at[i]];
    }
    t[i] = v;
  }
  return { t, mag, slack, bits: Array.from(bitsOf(c.out, encode(c.out, t))) };
}

type Expected = ReturnType<typeof expected>;

/** One unit in the last place of `dtype` at `v`. */
function ulpOf(dtype: FloatDType, v: number): number {
  const mantissa = dtype === "float32" ? 23 : dtype === "float16" ? 10 : 7;
  const minExp = dtype === "float32" ? -126 : dtype === "float16" ? -14 : -126;
  const e = v === 0 ? minExp : Math.max(minExp, Math.floor(Math.log2(Math.abs(v))));
  return 2 ** (e - mantissa);
}

function problemOf(c: GemmCase): WgmmaInt8Problem {
  return {
    m: c.m,
    n: c.n,
    k: c.k,
    outDType: c.out,
    perChannel: c.perChannel,
    sxdKind: c.sxdKind ?? 0,
    swdKind: c.swdKind ?? 0,
    biasDType: c.bias,
    act: ACTIVATION[c.act ?? "none"],
  };
}

/** Runs `kernel` into the poisoned output and checks it. */
function runAndCheck(
  label: string,
  c: GemmCase,
  o: Operands,
  run: (y: bigint, x: bigint, w: bigint, sx: bigint, sw: bigint, b: bigint, r: bigint) => void,
  at: Int32Array,
  want: Expected,
): void {
  const device = CudaDevice.get(0);
  const y = bufferOf(o.gpu.y);
  memsetAsync(device, y.address, 0xff, y.bytes);
  run(
    y.address,
    bufferOf(o.gpu.x).address,
    bufferOf(o.gpu.w).address,
    bufferOf(o.gpu.sx).address,
    bufferOf(o.gpu.sw).address,
    o.gpu.b ? bufferOf(o.gpu.b).address : 0n,
    o.gpu.r ? bufferOf(o.gpu.r).address : 0n,
  );
  const storage = o.gpu.y.storageSync();
  const got = bitsOf(c.out, storage);
  const poison = c.out === "float32" ? 0xffffffff : 0xffff;
  let unwritten = 0;
  for (let i = 0; i < c.m * c.n; i++) if (got[i] === poison) unwritten++;
  assert.equal(unwritten, 0, `${label}: ${unwritten} outputs not written`);
  const exact = c.out === "float32" && (c.act ?? "none") !== "gelu_tanh";
  let bad = 0, differ = 0;
  let first = "";
  for (let i = 0; i < at.length; i++) {
    const g = got[at[i]];
    if (g === want.bits[i]) continue;
    differ++;
    const value = decodeOne(c.out, storage, at[i]);
    const ulps = c.out === "float32" ? 4 : 1;
    const tol = ulps * ulpOf(c.out, want.t[i]) + 2 ** -22 * want.mag[i] + want.slack[i];
    if (exact || !(Math.abs(value - want.t[i]) <= tol)) {
      if (bad++ === 0) {
        first = `first at row ${Math.floor(at[i] / c.n)} column ${at[i] % c.n}: got ${value} (${
          g.toString(16)
        }), want ${want.t[i]} (${want.bits[i].toString(16)})`;
      }
    }
  }
  assert.equal(bad, 0, `${label}: ${bad} of ${at.length} outputs out of tolerance (${first})`);
  if ((c.act ?? "none") !== "gelu_tanh") {
    assert.ok(differ <= at.length / 100, `${label}: ${differ} of ${at.length} outputs differ`);
  }
}

/** Whether `device` is the sm_90 GPU the wgmma kernels run on. */
function gpuIsHopper(device: CudaDevice): boolean {
  return device.computeCapability[0] === 9 && device.computeCapability[1] === 0;
}

function checkCase(c: GemmCase): void {
  const device = CudaDevice.get(0);
  const o = operands(c);
  const p = problemOf(c);
  const at = positions(c);
  const want = expected(c, o, at);
  const name = `${c.m}x${c.n}x${c.k} ${c.out} ${c.perChannel ? "channel" : "tensor"} bias ${
    c.bias ?? "none"
  } ${c.act ?? "none"}`;
  if (!gpuIsHopper(device)) {
    assert.equal(wgmmaInt8Gemm(device, p), undefined, "only sm_90 runs the wgmma kernels");
    return;
  }
  for (const variant of c.variants ?? VARIANTS) {
    const kernel = wgmmaInt8Gemm(device, p, variant);
    assert.ok(kernel, `${name}: ${variant} prepared`);
    assert.equal(kernel.variant, variant);
    runAndCheck(`${name} ${variant}`, c, o, (...a) => kernel.run(...a), at, want);
  }
  for (const t of Object.values(o.gpu)) t?.dispose();
}

testOnGpu("wgmmaInt8Gemm: tiny and ragged shapes, every tile, every output dtype", () => {
  const outs: FloatDType[] = ["float32", "float16", "bfloat16"];
  let seed = 10;
  for (const out of outs) {
    // 77x200x64: K below one 128-byte stage, M and N below one tile.
    checkCase({ m: 77, n: 200, k: 64, out, perChannel: false, seed: seed++ });
    checkCase({
      m: 77,
      n: 200,
      k: 64,
      out,
      perChannel: true,
      bias: out,
      act: "relu",
      seed: seed++,
    });
    // N not a multiple of the tile (float32 outputs: nor of 8) and K not a multiple of 128.
    const ragged = out === "float32" ? 78 : 72;
    checkCase({ m: 130, n: ragged, k: 96, out, perChannel: true, bias: out, seed: seed++ });
    checkCase({
      m: 257,
      n: out === "float32" ? 334 : 328,
      k: 208,
      out,
      perChannel: true,
      act: "relu",
      seed: seed++,
    });
    // M = 1.
    checkCase({ m: 1, n: 768, k: 3072, out, perChannel: true, bias: out, seed: seed++ });
    // gelu (tanh form) in the epilogue (16-bit outputs).
    if (out !== "float32") {
      checkCase({
        m: 130,
        n: 264,
        k: 160,
        out,
        perChannel: true,
        bias: out,
        act: "gelu_tanh",
        seed: seed++,
      });
    }
  }
});

testOnGpu("wgmmaInt8Gemm: a residual added in the epilogue, every tile and output dtype", () => {
  let seed = 90;
  for (const out of ["float32", "float16", "bfloat16"] as const) {
    checkCase({
      m: 77,
      n: 200,
      k: 64,
      out,
      perChannel: true,
      bias: out,
      residual: true,
      seed: seed++,
    });
    checkCase({
      m: 257,
      n: out === "float32" ? 334 : 328,
      k: 208,
      out,
      perChannel: false,
      act: "relu",
      residual: true,
      seed: seed++,
    });
  }
  // GPT-2's projections before a residual add (sampled).
  checkCase({
    m: 4096,
    n: 768,
    k: 3072,
    out: "float16",
    perChannel: true,
    bias: "float16",
    residual: true,
    seed: seed++,
  });
});

testOnGpu("wgmmaInt8Gemm: scale and bias kinds other than the output dtype", () => {
  checkCase({
    m: 200,
    n: 264,
    k: 160,
    out: "float16",
    perChannel: true,
    bias: "float32",
    sxdKind: 1,
    swdKind: 2,
    act: "relu",
    seed: 40,
  });
  checkCase({
    m: 129,
    n: 136,
    k: 272,
    out: "float32",
    perChannel: false,
    bias: "bfloat16",
    sxdKind: 2,
    swdKind: 1,
    seed: 41,
  });
});

testOnGpu("wgmmaInt8Gemm: 1000x1000x528 (every output) and GPT-2 shapes (sampled)", () => {
  checkCase({
    m: 1000,
    n: 1000,
    k: 528,
    out: "float16",
    perChannel: true,
    bias: "float16",
    seed: 50,
  });
  checkCase({
    m: 4096,
    n: 2304,
    k: 768,
    out: "bfloat16",
    perChannel: true,
    bias: "bfloat16",
    act: "relu",
    seed: 51,
  });
  checkCase({
    m: 4096,
    n: 768,
    k: 3072,
    out: "float32",
    perChannel: false,
    bias: "float32",
    seed: 52,
  });
});

testOnGpu("wgmmaInt8Gemm: GPT-2's c_fc with gelu (sampled)", () => {
  checkCase({
    m: 4096,
    n: 3072,
    k: 768,
    out: "float16",
    perChannel: true,
    bias: "float16",
    act: "gelu_tanh",
    seed: 53,
  });
});

testOnGpu("wgmmaInt8Gemm: 8192x8192x8192 (sampled)", () => {
  checkCase({
    m: 8192,
    n: 8192,
    k: 8192,
    out: "float16",
    perChannel: true,
    bias: "float16",
    variants: ["128x256", "256x128", "pp128x128"],
    seed: 60,
  });
});

testOnGpu("wgmmaInt8Gemm: new x and W addresses re-encode the tensor maps", () => {
  const device = CudaDevice.get(0);
  if (!gpuIsHopper(device)) return;
  const c: GemmCase = { m: 300, n: 256, k: 384, out: "float32", perChannel: true, seed: 70 };
  const kernel = wgmmaInt8Gemm(device, problemOf(c));
  assert.ok(kernel);
  for (const seed of [70, 71, 72]) {
    const cs = { ...c, seed };
    const o = operands(cs);
    const at = positions(cs);
    runAndCheck(`seed ${seed}`, cs, o, (...a) => kernel.run(...a), at, expected(cs, o, at));
    for (const t of Object.values(o.gpu)) t?.dispose();
  }
});

testOnGpu("fastestWgmmaInt8Gemm: times every tile and keeps a correct fastest", () => {
  const device = CudaDevice.get(0);
  const c: GemmCase = {
    m: 4096,
    n: 3072,
    k: 768,
    out: "float16",
    perChannel: true,
    bias: "float16",
    seed: 80,
  };
  const o = operands(c);
  const p = problemOf(c);
  const timed = fastestWgmmaInt8Gemm(device, p);
  if (!gpuIsHopper(device)) {
    assert.equal(timed, undefined);
    return;
  }
  assert.ok(timed && Number.isFinite(timed.ms) && timed.ms > 0, "timed");
  assert.ok(VARIANTS.includes(timed.kernel.variant));
  assert.ok(VARIANTS.includes(defaultWgmmaVariant(device, p)));
  const at = positions(c);
  runAndCheck("fastest", c, o, (...a) => timed.kernel.run(...a), at, expected(c, o, at));
  const ms = timeLaunchMs(device, () => {});
  assert.ok(ms >= 0 && ms < 1, `an empty launch sequence takes ${ms} ms`);
  for (const t of Object.values(o.gpu)) t?.dispose();
});

testOnGpu("wgmmaInt8Gemm: unsupported problems", () => {
  const device = CudaDevice.get(0);
  const p: WgmmaInt8Problem = {
    m: 64,
    n: 64,
    k: 64,
    outDType: "float32",
    perChannel: false,
    sxdKind: FLOAT_KIND.float32,
    swdKind: FLOAT_KIND.float32,
    act: 0,
  };
  assert.equal(wgmmaInt8Gemm(device, { ...p, k: 24 }), undefined, "K not a multiple of 16");
  assert.equal(wgmmaInt8Gemm(device, { ...p, n: 63 }), undefined, "odd N");
  assert.equal(
    wgmmaInt8Gemm(device, { ...p, n: 66, outDType: "float16" }),
    undefined,
    "16-bit output, N not a multiple of 8",
  );
  assert.equal(wgmmaInt8Gemm(device, { ...p, act: 2 }), undefined, "gelu (erf)");
  assert.equal(wgmmaInt8Gemm(device, { ...p, act: 3 }), undefined, "gelu (tanh), float32 out");
  assert.ok(
    !gpuIsHopper(device) || wgmmaInt8Gemm(device, { ...p, act: 3, outDType: "float16" }),
    "gelu (tanh), float16 out",
  );
  assert.equal(wgmmaInt8Gemm(device, { ...p, biasDType: "int32" }), undefined, "int bias");
  assert.equal(wgmmaInt8Gemm(device, { ...p, m: 0 }), undefined, "empty");
  assert.equal(wgmmaInt8Gemm(device, p, "64x64"), undefined, "unknown tile");
});
