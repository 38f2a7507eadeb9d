import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { ptx as qgemvPtx } from "../kernels/ptx/qgemv.ts";
import { backendFor } from "../lib/backends/backend.ts";
import { activationFn } from "../lib/backends/cpu/linear.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import type { CudaKernelContext } from "../lib/backends/cuda/kernels.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import {
  fusedQuantizedGemv,
  QGEMV_MAX_ROWS,
  QGEMV_MAX_SHARED_BYTES,
  QGEMV_MAX_SHARED_BYTES_E4M3,
  qgemvLaunchCount,
  qgemvShape,
} from "../lib/backends/cuda/qgemv.ts";
import { ACTIVATION, type FloatDType, memsetAsync } from "../lib/backends/cuda/util.ts";
import {
  decode,
  encode,
  float32ToFloat8e4m3Bits,
  float8e4m3BitsToNumber,
  roundHalfToEven,
} from "../lib/dtype.ts";
import {
  type Activation,
  applyActivation,
  randomCodes,
  randomValues,
  testOnGpu,
} from "./helpers.ts";

// What the fused GEMV must compute, and how closely:
// - int8 with no activation or relu: exactly the unfused path's and the CPU reference's
//   function (int32 sums are exact, the epilogue is the same double arithmetic rounded once):
//   the outputs must be EQUAL, bit for bit.
// - float8e4m3 (float32 sums of exact products, in another order than the reference's float64
//   sums) and gelu (float32 activation of t rounded to float):
//   |got − ref| ≤ rtol·|ref| + depth·2^-24·mag, with mag the output's summed terms
//   Σ_k |qx·qw|·sxd·swd + |b| and depth = 16·ceil(K / 16 / L) + log2 L + 1 the number of
//   float32 roundings a sum goes through (a lane's products in order, the shuffle tree, the
//   float of t): the classic bound on a recursive float32 sum. rtol is one unit in the last
//   place of the output dtype (both sides round once, possibly to neighbours; float32: a few
//   ulps of the float32 gelu).
const RTOL: Record<FloatDType, number> = { float32: 1e-6, float16: 1e-3, bfloat16: 8e-3 };
const SMS = 132; // H200

type Codes = "int8" | "float8e4m3";
const FLOATS: FloatDType[] = ["float32", "float16", "bfloat16"];

/** Exact equality (Object.is: -0 and +0 differ, NaN only equals NaN). */
function assertEqualValues(got: ArrayLike<number>, ref: ArrayLike<number>, what: string): void {
  assert.equal(got.length, ref.length, `${what}: length`);
  for (let i = 0; i < ref.length; i++) {
    if (!Object.is(got[i], ref[i])) {
      assert.fail(`${what}: at ${i} got ${got[i]}, expected exactly ${ref[i]}`);
    }
  }
}

/** The float32 roundings a fused GEMV sum of a K-input row goes through (see above). */
function sumDepth(m: number, n: number, k: number): number {
  const lanes = qgemvShape(m, n, k, SMS)!.lanes;
  return 16 * Math.ceil(k / 16 / lanes) + Math.log2(lanes) + 1;
}

/** |got − ref| ≤ rtol·|ref| + depth·2^-24·mag[i] everywhere (NaN fails). */
function assertNear(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  mag: ArrayLike<number>,
  depth: number,
  rtol: number,
  what: string,
): void {
  assert.equal(got.length, ref.length, `${what}: length`);
  let largest = 0;
  for (let i = 0; i < ref.length; i++) {
    largest = Math.max(largest, mag[i]);
    const tol = rtol * Math.abs(ref[i]) + depth * 2 ** -24 * mag[i];
    if (!(Math.abs(got[i] - ref[i]) <= tol)) {
      assert.fail(`${what}: at ${i} got ${got[i]}, expected ${ref[i]} (tolerance ${tol})`);
    }
  }
  assert.ok(largest > 0, `${what}: the summed terms are all zero`);
}

// ---------------------------------------------------------------------------------------
// Launch shapes (no GPU needed)

Deno.test("qgemvShape: lanes per channel, block size and the problems it refuses", () => {
  // Lanes: the smallest power of two holding a row in 8 chunks a lane, 4 to 32.
  const lanesFor: [number, number][] = [
    [16, 4],
    [48, 4],
    [512, 4], // 32 chunks
    [528, 8], // 33
    [768, 8],
    [1024, 8], // 64
    [1040, 16], // 65
    [2048, 16],
    [2064, 32],
    [3072, 32],
    [4096, 32], // 256: one ring
    [4112, 32], // 257: a second round for one lane
    [49152, 32], // 12 rounds
  ];
  for (const [k, lanes] of lanesFor) {
    const s = qgemvShape(1, 64, k, SMS);
    assert.ok(s, `K ${k}`);
    assert.equal(s.lanes, lanes, `K ${k}`);
    assert.equal(2 ** s.logLanes, s.lanes);
    assert.equal(s.sharedBytes, k);
  }
  // Refused: rows outside 1..8, K not a positive multiple of 16, M·K above 48 KiB, N outside
  // 1..2^31 − 1.
  const refused: [number, number, number][] = [
    [0, 64, 64],
    [9, 64, 64],
    [16, 64, 64],
    [1.5, 64, 64],
    [1, 64, 0],
    [1, 64, 8],
    [1, 64, 24],
    [1, 64, 100],
    [1, 64, 4100],
    [1, 64, 49168], // 48 KiB + 16
    [2, 64, 24592],
    [8, 64, 6160],
    [1, 0, 64],
    [1, 2 ** 31, 64],
  ];
  for (const [m, n, k] of refused) {
    assert.equal(qgemvShape(m, n, k, SMS), undefined, `M ${m} N ${n} K ${k}`);
  }
  for (const m of [1, 2, 3, 5, 8]) {
    const k = QGEMV_MAX_SHARED_BYTES / m - ((QGEMV_MAX_SHARED_BYTES / m) % 16);
    assert.equal(qgemvShape(m, 64, k, SMS)?.sharedBytes, m * k, `M ${m}, the largest K`);
    // e4m3 keeps x's float32 values: 4 bytes an element, up to 192 KiB (opted into).
    const k8 = QGEMV_MAX_SHARED_BYTES_E4M3 / (4 * m);
    const k8Max = k8 - (k8 % 16);
    const e4m3 = qgemvShape(m, 64, k8Max, SMS, "float8e4m3");
    assert.equal(e4m3?.sharedBytes, 4 * m * k8Max, `e4m3 M ${m}, the largest K`);
    assert.equal(qgemvShape(m, 64, k8Max + 16, SMS, "float8e4m3"), undefined, `e4m3 M ${m}`);
  }
  assert.equal(qgemvShape(1, 64, 49152, SMS, "float8e4m3")?.sharedBytes, 196608);
  assert.equal(QGEMV_MAX_ROWS, 8);

  // Warps: as many as keep at least 3/4 as many blocks as SMs (4 to 32).
  for (const sms of [132, 108, 1]) {
    for (const n of [1, 7, 100, 768, 4096, 11008, 2 ** 31 - 1]) {
      for (const k of [16, 768, 3072, 4096, 8192]) {
        const s = qgemvShape(1, n, k, sms)!;
        const what = `N ${n} K ${k} on ${sms} SMs`;
        assert.ok([4, 8, 16, 32].includes(s.warps), what);
        assert.equal(s.channelsPerBlock, (s.warps * 32) / s.lanes, what);
        assert.equal(s.blocks, Math.ceil(n / s.channelsPerBlock), what);
        assert.ok(s.blocks <= 2 ** 31 - 1, what);
        if (s.warps > 4) assert.ok(4 * s.blocks >= 3 * sms, `${what}: too few blocks`);
        if (s.warps < 32) {
          const larger = Math.ceil(n / (s.channelsPerBlock * 2));
          assert.ok(4 * larger < 3 * sms, `${what}: blocks could be twice as large`);
        }
      }
    }
  }
  // Decode shapes on an H200.
  assert.deepEqual(qgemvShape(1, 4096, 4096, SMS), {
    lanes: 32,
    logLanes: 5,
    warps: 32,
    channelsPerBlock: 32,
    blocks: 128,
    sharedBytes: 4096,
  });
  assert.deepEqual(qgemvShape(8, 768, 768, SMS), {
    lanes: 8,
    logLanes: 3,
    warps: 4,
    channelsPerBlock: 16,
    blocks: 48,
    sharedBytes: 6144,
  });
  assert.equal(qgemvShape(1, 2304, 768, SMS)!.warps, 4);
  assert.equal(qgemvShape(1, 11008, 4096, SMS)!.warps, 32);
});

Deno.test("the qgemv kernels are in both PTX builds with the launch's parameters", () => {
  // out, x, xKind, sxq, sxqKind, sxd, sxdKind, codes, swd, swdKind, swdPerChannel, bias,
  // outKind, act, M, N, K, logL, lnWeight, lnBias, eps
  const params = ["u64", "u64", "u32", "u64", "u32", "u64", "u32", "u64", "u64", "u32", "u32"]
    .concat(["u64", "u32", "u32", "u32", "u32", "u32", "u32", "u64", "u64", "f32"]);
  const flavours: [string, string][] = [
    ["sm_90a", qgemvPtx.ptxSm90a],
    ["compute_80", qgemvPtx.ptxCompute80],
  ];
  const names = ["qgemv_e4m3", "qgemv_e4m3_norm", "qgemv_i8", "qgemv_i8_norm"];
  for (const [flavour, ptx] of flavours) {
    const entries = [...ptx.matchAll(/\.entry (\w+)\(([^)]*)\)/g)];
    assert.deepEqual(entries.map((e) => e[1]).sort(), names, flavour);
    for (const [, name, list] of entries) {
      const types = [...list.matchAll(/\.param \.(\w+)/g)].map((p) => p[1]);
      assert.deepEqual(types, params, `${flavour} ${name}`);
    }
    // Each block uses at most 1024 threads, so at most 64 registers a thread.
    assert.equal([...ptx.matchAll(/\.maxntid 1024, 1, 1/g)].length, names.length, flavour);
  }
});

// ---------------------------------------------------------------------------------------
// The kernels on raw buffers against a float64 reference (GPU): every dtype mix, scale kinds,
// saturation, ties, multi-round rows and partial blocks.

interface KernelCase {
  q: Codes;
  x: FloatDType;
  out: FloatDType;
  m: number;
  n: number;
  k: number;
  perChannel: boolean;
  /** Kinds of the input scales and the weight scales. */
  sxDType: FloatDType;
  swDType: FloatDType;
  bias: boolean;
  act: Activation;
  /** x on a grid of sxq / 2 (int8: many quotients exactly halfway between two codes). */
  ties?: boolean;
  seed: number;
}

/** The per-tensor input quantize of the unfused path: codes' values of x / s (float32). */
function quantizeX(q: Codes, x: ArrayLike<number>, s: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = Math.fround(x[i] / s); // = IEEE float32 division (double rounding is innocuous)
    out[i] = q === "int8"
      ? Math.max(-128, Math.min(127, roundHalfToEven(v)))
      : float8e4m3BitsToNumber(float32ToFloat8e4m3Bits(v));
  }
  return out;
}

function checkKernel(c: KernelCase): void {
  const what = `${c.q} x ${c.x} → ${c.out} M=${c.m} N=${c.n} K=${c.k} ` +
    `${c.perChannel ? "per channel" : "per tensor"} scales ${c.sxDType}/${c.swDType} ` +
    `bias ${c.bias} ${c.act}${c.ties ? " ties" : ""}`;
  const cuda = backendFor("cuda")!;
  const device = CudaDevice.get(0);
  const { m, n, k } = c;
  const qmax = c.q === "int8" ? 127 : 448;
  // sxq = sxd: 3.5 / qmax rounded to the scale dtype; |x| up to ~4.5 saturates some codes.
  const sxStorage = encode(c.sxDType, Float64Array.of(c.ties ? 2 ** -5 : 3.5 / qmax));
  const sx = decode(c.sxDType, sxStorage)[0];
  // Ties: quotients h / 2 with |h| mostly below 128 (exact in every x dtype), half of them
  // odd.
  const xRaw = randomValues(m * k, c.seed + 1).map((v) =>
    c.ties ? (Math.round(v * 40) / 2) * sx : 1.3 * v
  );
  const xStorage = encode(c.x, xRaw);
  const x = decode(c.x, xStorage);
  const codes = randomCodes(c.q, n * k, c.seed);
  const swCount = c.perChannel ? n : 1;
  const swStorage = encode(
    c.swDType,
    randomValues(swCount, c.seed + 2, { low: 0.002, high: 0.02 }),
  );
  const sw = decode(c.swDType, swStorage);
  const bStorage = c.bias ? encode(c.out, randomValues(n, c.seed + 3)) : undefined;
  const b = bStorage ? decode(c.out, bStorage) : undefined;

  const qx = quantizeX(c.q, x, sx);
  if (c.ties && c.q === "int8") {
    let halves = 0;
    for (let i = 0; i < x.length; i++) if (Math.abs(x[i] / sx) % 1 === 0.5) halves++;
    assert.ok(halves > x.length / 4, `${what}: too few quotients halfway between codes`);
  }
  const act = activationFn(c.act);
  const exact = new Float64Array(m * n); // act(t) before the output rounding
  const mag = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0, abs = 0;
      for (let kk = 0; kk < k; kk++) {
        const p = qx[i * k + kk] * codes.values[j * k + kk];
        acc += p;
        abs += Math.abs(p);
      }
      const scale = sx * sw[c.perChannel ? j : 0];
      const bias = b ? b[j] : 0;
      exact[i * n + j] = act(acc * scale + bias);
      mag[i * n + j] = abs * scale + Math.abs(bias);
    }
  }
  const ref = decode(c.out, encode(c.out, exact));

  const ctx: CudaKernelContext = {
    attrs: { activation: c.act },
    out: { shape: [m, n], dtype: c.out },
    inputs: [
      { shape: [m, k], dtype: c.x },
      { shape: [], dtype: c.sxDType },
      { shape: [], dtype: c.sxDType },
      { shape: [n, k], dtype: c.x },
      { shape: [swCount], dtype: c.swDType },
      { shape: [swCount], dtype: c.swDType },
      ...(c.bias ? [{ shape: [n], dtype: c.out }] : []),
    ],
    device,
  };
  const gemv = fusedQuantizedGemv(ctx, m, n, k, c.q, c.perChannel, ACTIVATION[c.act], c.out);
  assert.ok(gemv, `${what}: not covered`);
  const xb = cuda.upload("cuda:0", c.x, xStorage) as CudaBuffer;
  const sxb = cuda.upload("cuda:0", c.sxDType, sxStorage) as CudaBuffer;
  const wb = cuda.upload("cuda:0", c.q, codes.storage) as CudaBuffer;
  const swb = cuda.upload("cuda:0", c.swDType, swStorage) as CudaBuffer;
  const bb = bStorage ? cuda.upload("cuda:0", c.out, bStorage) as CudaBuffer : undefined;
  const y = CudaBuffer.allocate(device, c.out, m * n);
  try {
    memsetAsync(device, y.address, 0xff, y.bytes); // NaN: an unwritten output fails
    const before = qgemvLaunchCount();
    gemv(y, xb, sxb, sxb, wb, swb, bb);
    assert.equal(qgemvLaunchCount(), before + 1, what);
    const got = decode(c.out, cuda.download(y));
    if (c.q === "int8" && (c.act === "none" || c.act === "relu")) {
      assertEqualValues(got, ref, what);
    } else {
      assertNear(got, exact, mag, sumDepth(m, n, k), RTOL[c.out], what);
    }
  } finally {
    for (const buffer of [xb, sxb, wb, swb, bb, y]) buffer?.dispose();
  }
}

const KERNEL_ACTS: Activation[] = ["none", "relu", "gelu", "gelu_tanh"];
// (M, N, K): partial blocks (N = 1, 7, 100), every lane count, rows of several rounds (K =
// 4112: one lane's second round; 8192, 12288, 49152), the largest M·K (48 KiB).
const KERNEL_SHAPES: [number, number, number][] = [
  [1, 1, 16],
  [2, 7, 48],
  [3, 100, 528],
  [4, 33, 1040],
  [5, 64, 2064],
  [6, 300, 4112],
  [7, 16, 3072],
  [8, 96, 6144],
  [4, 50, 8192],
  [4, 20, 12288],
  [1, 9, 49152],
  [8, 768, 4096],
];

function kernelCases(q: Codes, seed: number): KernelCase[] {
  const cases: KernelCase[] = [];
  KERNEL_SHAPES.forEach(([m, n, k], i) => {
    cases.push({
      q,
      x: FLOATS[i % 3],
      out: FLOATS[(i + Math.floor(i / 3)) % 3],
      m,
      n,
      k,
      perChannel: i % 2 === 0,
      sxDType: FLOATS[(i + 1) % 3],
      swDType: FLOATS[Math.floor(i / 2) % 3],
      bias: i % 3 !== 1,
      act: KERNEL_ACTS[i % KERNEL_ACTS.length],
      seed: seed + 10 * i,
    });
  });
  // Quotients halfway between codes (int8: round half to even), every x dtype.
  for (const x of FLOATS) {
    cases.push({
      q,
      x,
      out: x,
      m: 3,
      n: 40,
      k: 256,
      perChannel: true,
      sxDType: "float32",
      swDType: "float32",
      bias: true,
      act: "relu",
      ties: true,
      seed: seed + 500 + x.length,
    });
  }
  return cases;
}

const INT8_KERNEL_CASES = kernelCases("int8", 7000);
const FP8_KERNEL_CASES = kernelCases("float8e4m3", 8000);

testOnGpu("qgemv kernel int8: dtype mixes, scale kinds, shapes and ties (exact)", () => {
  for (const c of INT8_KERNEL_CASES) checkKernel(c);
});

testOnGpu("qgemv kernel float8e4m3: dtype mixes, scale kinds, shapes and ties", () => {
  for (const c of FP8_KERNEL_CASES) checkKernel(c);
});

// ---------------------------------------------------------------------------------------
// qlinear on cuda (the fused GEMV) against the cpu backend (GPU)

interface OpCase {
  q: Codes;
  perChannel: boolean;
  dtype: FloatDType;
  m: number;
  n: number;
  k: number;
  bias: boolean;
  act: Activation;
  seed: number;
}

function values(t: tq.Tensor): Float64Array {
  return Float64Array.from(decode(t.dtype, t.storageSync()));
}

function describe(c: OpCase): string {
  return `qlinear ${c.q} ${c.perChannel ? "per channel" : "per tensor"} x ${c.dtype} ` +
    `M=${c.m} N=${c.n} K=${c.k} bias ${c.bias} ${c.act}`;
}

/** A quantized Linear (weights and inputs) on cuda and on the cpu, from the same state. */
function checkOp(c: OpCase): void {
  const what = describe(c);
  const options: tq.LinearOptions = {
    quantDtype: c.q,
    ...(c.perChannel ? { weightQuantDim: 0 } : {}),
  };
  const weight = tq.randn([c.n, c.k], { seed: c.seed, std: 0.05, dtype: c.dtype });
  const w32 = weight.cast("float32").abs();
  const dict: Record<string, tq.Tensor> = {
    weight,
    weightScale: tq.scaleFromAmax(c.perChannel ? w32.max(1) : w32.max(), c.q),
    inputScale: tq.scaleFromAmax(3.5, c.q),
  };
  if (c.bias) dict.bias = tq.randn([c.n], { seed: c.seed + 1, std: 0.1, dtype: c.dtype });
  const make = () => {
    const layer = new tq.Linear(c.k, c.n, { ...options, bias: c.bias, dtype: c.dtype });
    layer.loadStateDict(dict);
    return layer;
  };
  const cpu = make();
  const gpu = make().to("cuda");
  const x = tq.tensor(randomValues(c.m * c.k, c.seed + 2), {
    shape: [c.m, c.k],
    dtype: c.dtype,
  });
  const before = qgemvLaunchCount();
  const y = applyActivation(gpu.forward(x.to("cuda")), c.act);
  assert.deepEqual(tq.inspectGraph(y).ops, ["qlinear"], what);
  const got = values(y);
  assert.equal(qgemvLaunchCount(), before + 1, `${what}: the fused GEMV did not run`);
  const ref = values(applyActivation(cpu.forward(x), c.act));
  if (c.q === "int8" && (c.act === "none" || c.act === "relu")) {
    assertEqualValues(got, ref, what);
    return;
  }
  // The summed terms, from the unquantized values: quantizing moves each factor by at most
  // 1/16 of itself (e4m3; int8 less), and saturation only shrinks x.
  const xs = values(x), ws = values(weight);
  const bs = dict.bias ? values(dict.bias) : undefined;
  const mag = new Float64Array(c.m * c.n);
  for (let i = 0; i < c.m; i++) {
    for (let j = 0; j < c.n; j++) {
      let abs = 0;
      for (let kk = 0; kk < c.k; kk++) abs += Math.abs(xs[i * c.k + kk] * ws[j * c.k + kk]);
      mag[i * c.n + j] = 1.2 * abs + (bs ? Math.abs(bs[j]) : 0);
    }
  }
  assertNear(got, ref, mag, sumDepth(c.m, c.n, c.k), RTOL[c.dtype], what);
}

const MS = [1, 2, 3, 5, 8];
const NS = [1, 7, 16, 100, 768];
const KS = [16, 48, 768, 3072, 4096];
const OP_ACTS: Activation[] = ["none", "relu", "gelu"];

/**
 * Five cases per code dtype, weight-scale mode and x dtype: every M once, N and K rotated
 * differently per combination, bias and activation alternating.
 */
function opCases(): OpCase[] {
  const cases: OpCase[] = [];
  let combo = 0;
  for (const q of ["int8", "float8e4m3"] as Codes[]) {
    for (const perChannel of [true, false]) {
      for (const dtype of FLOATS) {
        MS.forEach((m, i) => {
          cases.push({
            q,
            perChannel,
            dtype,
            m,
            n: NS[(i + combo) % NS.length],
            k: KS[(2 * i + combo) % KS.length],
            bias: (i + combo) % 2 === 0,
            act: OP_ACTS[(i + combo) % OP_ACTS.length],
            seed: 9000 + 10 * cases.length,
          });
        });
        combo++;
      }
    }
  }
  return cases;
}

const OP_CASES = opCases();

testOnGpu("qlinear M ≤ 8 against the cpu: int8 per channel and per tensor", () => {
  for (const c of OP_CASES) if (c.q === "int8") checkOp(c);
});

testOnGpu("qlinear M ≤ 8 against the cpu: float8e4m3 per channel and per tensor", () => {
  for (const c of OP_CASES) if (c.q === "float8e4m3") checkOp(c);
});

// Runs everywhere: the GPU cases are problems the fused GEMV takes, and they cover what they
// claim to.
Deno.test("every qgemv test case takes the fused GEMV, and the cases cover the grid", () => {
  for (const c of [...INT8_KERNEL_CASES, ...FP8_KERNEL_CASES, ...OP_CASES]) {
    assert.ok(qgemvShape(c.m, c.n, c.k, SMS, c.q), JSON.stringify(c));
  }
  const seen = <T>(f: (c: OpCase) => T): Set<T> => new Set(OP_CASES.map(f));
  assert.deepEqual([...seen((c) => c.m)].sort((a, b) => a - b), MS);
  assert.deepEqual([...seen((c) => c.n)].sort((a, b) => a - b), NS);
  assert.deepEqual([...seen((c) => c.k)].sort((a, b) => a - b), KS);
  assert.deepEqual([...seen((c) => c.act)].sort(), [...OP_ACTS].sort());
  assert.deepEqual([...seen((c) => c.bias)].sort(), [false, true]);
  // int8 cases with exact checks (none / relu) and tolerance checks (gelu) in every mix of
  // weight-scale mode and x dtype.
  for (const perChannel of [true, false]) {
    for (const dtype of FLOATS) {
      const acts = new Set(
        OP_CASES.filter((c) => c.q === "int8" && c.perChannel === perChannel && c.dtype === dtype)
          .map((c) => c.act),
      );
      assert.equal(acts.size, 3, `${perChannel} ${dtype}`);
    }
  }
  // The kernel cases reach every lane count and mix dtypes.
  const lanes = new Set(INT8_KERNEL_CASES.map((c) => qgemvShape(c.m, c.n, c.k, SMS)!.lanes));
  assert.deepEqual([...lanes].sort((a, b) => a - b), [4, 8, 16, 32]);
  assert.ok(INT8_KERNEL_CASES.some((c) => c.x !== c.out));
  assert.ok(INT8_KERNEL_CASES.some((c) => c.k > 8 * 32 * 16), "no multi-round row");
});
