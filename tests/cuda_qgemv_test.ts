import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { ptx as qgemvPtx } from "../kernels/ptx/qgemv.ts";
import { backendFor } from "../lib/backends/backend.ts";
import { activationFn } from "../lib/backends/cpu/linear.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import {
  type CudaKernelContext,
  kernelFunction,
  KernelParams,
  launch,
} from "../lib/backends/cuda/kernels.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { layerNormThreads } from "../lib/backends/cuda/nn.ts";
import {
  fusedQuantizedGemv,
  QGEMV_MAX_ROWS,
  QGEMV_MAX_SHARED_BYTES,
  QGEMV_MAX_SHARED_BYTES_E4M3,
  QGEMV_MMA_MAX_SHARED_BYTES,
  QGEMV_MMA_MAX_WARPS,
  type QgemvKernels,
  qgemvKernels,
  qgemvLaunchCount,
  qgemvMmaLaunchCount,
  qgemvMmaShape,
  qgemvMmaSupported,
  qgemvShape,
  setQgemvKernels,
} from "../lib/backends/cuda/qgemv.ts";
import {
  ACTIVATION,
  allowSharedBytes,
  FLOAT_KIND,
  type FloatDType,
  memsetAsync,
} from "../lib/backends/cuda/util.ts";
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
  assertTqError,
  randomCodes,
  randomValues,
  testOnGpu,
  values,
} from "./helpers.ts";

// What the fused GEMV must compute, and how closely (every case runs on both kernel families,
// "ring" and "mma"):
// - int8 with no activation or relu: exactly the unfused path's and the CPU reference's
//   function (int32 sums are exact, the epilogue is the same double arithmetic rounded once):
//   the outputs must be EQUAL, bit for bit.
// - ring float8e4m3 (float32 sums of exact products, in another order than the reference's
//   float64 sums) and gelu (float32 activation of t rounded to float):
//   |got − ref| ≤ rtol·|ref| + depth·2^-24·mag, with mag the output's summed terms
//   Σ_k |qx·qw|·sxd·swd + |b| and depth = 16·ceil(K / 16 / L) + log2 L + 1 the number of
//   float32 roundings a sum goes through (a lane's products in order, the shuffle tree, the
//   float of t): the classic bound on a recursive float32 sum. rtol is one unit in the last
//   place of the output dtype (both sides round once, possibly to neighbours; float32: a few
//   ulps of the float32 gelu). int8 gelu on the mma kernels: the same with depth 2 (the sum is
//   exact; only the float of t rounds).
// - mma float8e4m3: Hopper's fp8 tensor cores do not add in exact IEEE float32 (products are
//   aligned to the largest term with a limited number of bits), so
//   |got − exact| ≤ 2^-10·Σ_k |qx·qw|·|sxd·swd| + 1 ulp of the output dtype at the value
//   (gelu: the sum error times gelu's largest slope, 1.13, plus the float32 gelu's error). The
//   bound is checked not to be vacuous: summed over the outputs it stays below a fifth of Σ|t|
//   (t: the value before the activation; a wrong product pairing errs by about |t| itself).
const RTOL: Record<FloatDType, number> = { float32: 1e-6, float16: 1e-3, bfloat16: 8e-3 };
const SMS = 132; // H200
/** Hopper fp8 MMA sums: error bound relative to Σ|products| (see above). */
const FP8_MMA_SUM_TOL = 2 ** -10;
/** Largest slope of either GELU (≈ 1.129 at x ≈ 2.4 for the erf form). */
const GELU_SLOPE = 1.13;

type Codes = "int8" | "float8e4m3";
const FLOATS: FloatDType[] = ["float32", "float16", "bfloat16"];
const FAMILIES: QgemvKernels[] = ["ring", "mma"];

/** Exact equality (Object.is: -0 and +0 differ, NaN only equals NaN). */
function assertEqualValues(got: ArrayLike<number>, ref: ArrayLike<number>, what: string): void {
  assert.equal(got.length, ref.length, `${what}: length`);
  for (let i = 0; i < ref.length; i++) {
    if (!Object.is(got[i], ref[i])) {
      assert.fail(`${what}: at ${i} got ${got[i]}, expected exactly ${ref[i]}`);
    }
  }
}

/** The float32 roundings a ring-kernel sum of a K-input row goes through (see above). */
function sumDepth(m: number, n: number, k: number): number {
  const lanes = qgemvShape(m, n, k, SMS)!.lanes;
  return 16 * Math.ceil(k / 16 / lanes) + Math.log2(lanes) + 1;
}

/** The spacing of `dtype`'s values in the binade of |v| (subnormal spacing below it). */
function ulp(dtype: FloatDType, v: number): number {
  const [bits, minExp] = dtype === "float32"
    ? [23, -126]
    : dtype === "float16"
    ? [10, -14]
    : [7, -126];
  const a = Math.abs(v);
  const e = a > 0 ? Math.max(Math.floor(Math.log2(a)), minExp) : minExp;
  return 2 ** (e - bits);
}

/** What one output of a case is compared with. */
interface Expected {
  /** act(Σ qx·qw · scale + b) in float64, before the output rounding. */
  exact: number;
  /** The value before the activation. */
  t: number;
  /** Σ|qx·qw|·|scale| (the product terms' sizes). */
  sumAbs: number;
  /** |b|. */
  biasAbs: number;
}

/** How closely output values must match, per case and kernel. */
interface Tolerance {
  q: Codes;
  ran: QgemvKernels;
  act: Activation;
  out: FloatDType;
  /** Float32 roundings of a ring-kernel sum. */
  depth: number;
}

/** The bound on |got − exact| of one output (0: must be equal). */
function toleranceOf(tol: Tolerance, e: Expected, got: number): number {
  const gelu = tol.act === "gelu" || tol.act === "gelu_tanh";
  if (tol.q === "int8" && !gelu) return 0;
  if (tol.q === "int8" || tol.ran === "ring") {
    const depth = tol.q === "int8" && tol.ran === "mma" ? 2 : tol.depth;
    return RTOL[tol.out] * Math.abs(e.exact) + depth * 2 ** -24 * (e.sumAbs + e.biasAbs);
  }
  const unit = ulp(tol.out, Math.max(Math.abs(e.exact), Math.abs(got)));
  const sumErr = FP8_MMA_SUM_TOL * e.sumAbs;
  if (!gelu) return sumErr + unit;
  return GELU_SLOPE * (sumErr + 2 ** -24 * Math.abs(e.t)) + 2 ** -20 * Math.abs(e.exact) + unit;
}

/**
 * Checks every output of a case: equal where the tolerance is 0, else within it; for the mma
 * float8e4m3 bound also that it is not vacuous. NaN fails.
 */
function assertOutputs(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  expected: Expected[],
  tol: Tolerance,
  what: string,
): void {
  assert.equal(got.length, ref.length, `${what}: length`);
  let largest = 0, tolSum = 0, tSum = 0, exactSum = 0, worst = 0;
  for (let i = 0; i < ref.length; i++) {
    const e = expected[i];
    largest = Math.max(largest, e.sumAbs);
    const bound = toleranceOf(tol, e, got[i]);
    if (bound === 0) {
      if (!Object.is(got[i], ref[i])) {
        assert.fail(`${what}: at ${i} got ${got[i]}, expected exactly ${ref[i]}`);
      }
      continue;
    }
    const err = Math.abs(got[i] - e.exact);
    if (!(err <= bound)) {
      assert.fail(`${what}: at ${i} got ${got[i]}, expected ${e.exact} (tolerance ${bound})`);
    }
    worst = Math.max(worst, err / bound);
    tolSum += bound;
    tSum += Math.abs(e.t);
    exactSum += Math.abs(e.exact);
  }
  assert.ok(largest > 0, `${what}: the summed terms are all zero`);
  if (tol.q === "float8e4m3" && tol.ran === "mma") {
    assert.ok(exactSum > 0, `${what}: the reference is all zero`);
    assert.ok(
      tolSum < 0.2 * tSum,
      `${what}: the tolerance is vacuous (Σ tol ${tolSum} vs Σ|t| ${tSum})`,
    );
    assert.ok(worst <= 1, `${what}: worst error ${worst} of the tolerance`);
  }
}

/** Runs `fn` with fused GEMVs lowered to `kind`'s kernels (plans lowered afresh). */
function withKernels<T>(kind: QgemvKernels, fn: () => T): T {
  const before = qgemvKernels();
  setQgemvKernels(kind);
  tq.clearPlanCache();
  try {
    return fn();
  } finally {
    setQgemvKernels(before);
    tq.clearPlanCache();
  }
}

/** The family a fused GEMV of this problem runs on `device` when `family` is asked for. */
function familyRun(
  family: QgemvKernels,
  device: CudaDevice,
  q: Codes,
  m: number,
  n: number,
  k: number,
): QgemvKernels {
  return family === "mma" && qgemvMmaSupported(device, q) &&
      qgemvMmaShape(m, n, k, device.smCount) !== undefined
    ? "mma"
    : "ring";
}

// ---------------------------------------------------------------------------------------
// Launch shapes and kernel families (no GPU needed)

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

Deno.test("qgemvMmaShape: splits, groups per block, pitch and the problems it refuses", () => {
  const isPow2 = (v: number) => Number.isInteger(Math.log2(v));
  const refused: [number, number, number][] = [
    [0, 64, 64],
    [9, 64, 64],
    [1.5, 64, 64],
    [1, 64, 0],
    [1, 64, 8],
    [1, 64, 24],
    [1, 64, 100],
    [1, 0, 64],
    [1, 2 ** 31, 64],
    [1, 64, 98304], // 96 KiB of codes and more
    [8, 64, 12288],
  ];
  for (const [m, n, k] of refused) {
    assert.equal(qgemvMmaShape(m, n, k, SMS), undefined, `M ${m} N ${n} K ${k}`);
  }
  const ks = [16, 32, 48, 64, 112, 128, 768, 784, 3072, 4096, 8192, 11776, 49152, 90112];
  const ns = [1, 7, 8, 9, 40, 100, 768, 2304, 3072, 8192, 50257, 2 ** 31 - 1];
  for (const sms of [132, 108, 1]) {
    for (const m of [1, 2, 3, 5, 8]) {
      for (const k of ks) {
        for (const n of ns) {
          const what = `M ${m} N ${n} K ${k} on ${sms} SMs`;
          const s = qgemvMmaShape(m, n, k, sms);
          // The mma kernels take every problem the ring kernels take.
          for (const q of ["int8", "float8e4m3"] as Codes[]) {
            if (qgemvShape(m, n, k, sms, q)) assert.ok(s, `${what}: ring ${q} takes it`);
          }
          // Refused only when the codes (pitch < K + 128) and the partial sums of a full
          // block might not fit.
          const fits = m * (k + 128) + QGEMV_MMA_MAX_WARPS * 256 <= QGEMV_MMA_MAX_SHARED_BYTES;
          if (fits) assert.ok(s, `${what}: refused`);
          if (!s) {
            assert.ok(m * k > QGEMV_MMA_MAX_SHARED_BYTES - QGEMV_MMA_MAX_WARPS * 256 - 8 * 128);
            continue;
          }
          const steps = Math.ceil(k / 64), groups = Math.ceil(n / 8);
          assert.ok(isPow2(s.splits) && isPow2(s.groupsPerBlock), what);
          assert.equal(s.warps, s.splits * s.groupsPerBlock, what);
          assert.ok(s.warps >= 1 && s.warps <= QGEMV_MMA_MAX_WARPS, what);
          assert.ok(s.groupsPerBlock < 2 * groups, `${what}: a block of empty groups`);
          assert.equal(s.blocks, Math.ceil(groups / s.groupsPerBlock), what);
          assert.ok(s.blocks * s.groupsPerBlock * 8 >= n, what);
          // Rows on 64-byte boundaries, two rows of a quarter warp in different banks.
          assert.ok(s.pitch >= k && s.pitch - k < 128 && s.pitch % 128 === 64, what);
          assert.equal(s.sharedBytes, m * s.pitch + s.warps * 256, what);
          assert.ok(s.sharedBytes <= QGEMV_MMA_MAX_SHARED_BYTES, what);
          assert.ok(k * 128 * 128 < 2 ** 31, `${what}: int8 sums could overflow`);
          // At most 2 steps a warp unless the block is full or splits traded for groups.
          assert.ok(
            Math.ceil(steps / s.splits) <= 2 || s.splits === QGEMV_MMA_MAX_WARPS ||
              s.warps === QGEMV_MMA_MAX_WARPS,
            `${what}: warps stream ${Math.ceil(steps / s.splits)} steps`,
          );
          // Splits never exceed what 2 steps a warp need.
          assert.ok(s.splits === 1 || Math.ceil(steps / (s.splits / 2)) > 2, `${what}: splits`);
          if (m > 2) {
            // Full blocks (x is quantized once a block), at most one a SM where it can be.
            assert.ok(s.warps === QGEMV_MMA_MAX_WARPS || 2 * s.groupsPerBlock >= groups, what);
            assert.ok(
              s.blocks <= sms || s.splits === 1 || 2 * s.groupsPerBlock >= groups,
              `${what}: ${s.blocks} blocks`,
            );
          } else {
            // Every block resident at once (32 warps an SM) where it can be.
            const resident = sms * Math.floor(32 / s.warps);
            assert.ok(
              s.blocks <= resident || (s.splits === 1 && s.warps === QGEMV_MMA_MAX_WARPS),
              `${what}: ${s.blocks} blocks, ${resident} resident`,
            );
            if (s.groupsPerBlock > 1) {
              const fewer = Math.ceil(groups / (s.groupsPerBlock / 2));
              assert.ok(fewer > sms * Math.floor(32 / (s.warps / 2)) || s.splits < 16, what);
            }
          }
        }
      }
    }
  }
  // Decode shapes on an H200 (GPT-2 small: QKV, attention output, MLP up and down).
  const decode: [number, number, number, [number, number, number]][] = [
    // M, N, K, [splits, groupsPerBlock, blocks]
    [1, 2304, 768, [8, 1, 288]],
    [1, 768, 768, [8, 1, 96]],
    [1, 3072, 768, [8, 1, 384]],
    [1, 768, 3072, [16, 1, 96]],
    [1, 8192, 8192, [4, 4, 256]],
    [8, 2304, 768, [4, 4, 72]],
    [8, 768, 768, [8, 2, 48]],
    [8, 768, 3072, [16, 1, 96]],
  ];
  for (const [m, n, k, [splits, groupsPerBlock, blocks]] of decode) {
    const s = qgemvMmaShape(m, n, k, SMS)!;
    assert.deepEqual(
      [s.splits, s.groupsPerBlock, s.blocks],
      [splits, groupsPerBlock, blocks],
      `M ${m} N ${n} K ${k}`,
    );
  }
  assert.deepEqual(qgemvMmaShape(1, 768, 768, SMS), {
    splits: 8,
    groupsPerBlock: 1,
    warps: 8,
    blocks: 96,
    pitch: 832,
    sharedBytes: 832 + 8 * 256,
  });
  // With a folded layer norm, splits are traded for groups where every SM keeps a block.
  const normDecode: [number, number, number, [number, number, number]][] = [
    [1, 2304, 768, [4, 2, 144]],
    [1, 3072, 768, [4, 2, 192]],
    [2, 2304, 768, [4, 2, 144]],
    [1, 768, 768, [8, 1, 96]], // 48 blocks of 2 groups would idle SMs
    [1, 3072, 3072, [8, 2, 192]], // the plain rule's: 4 splits would stream 12 steps a warp
    [8, 2304, 768, [4, 4, 72]], // M > 2: the plain rule
  ];
  for (const [m, n, k, [splits, groupsPerBlock, blocks]] of normDecode) {
    const s = qgemvMmaShape(m, n, k, SMS, true)!;
    assert.deepEqual(
      [s.splits, s.groupsPerBlock, s.blocks],
      [splits, groupsPerBlock, blocks],
      `norm M ${m} N ${n} K ${k}`,
    );
    assert.equal(s.warps, qgemvMmaShape(m, n, k, SMS)!.warps, "norm keeps the warps per block");
  }
  // A chosen shape replaces the rule; it must be powers of two within a block.
  assert.deepEqual(
    [qgemvMmaShape(1, 768, 768, SMS, false, { splits: 2, groupsPerBlock: 4 })!.blocks],
    [24],
  );
  assert.throws(
    () => qgemvMmaShape(1, 768, 768, SMS, false, { splits: 3, groupsPerBlock: 1 }),
    /powers of two/,
  );
  assert.throws(
    () => qgemvMmaShape(1, 768, 768, SMS, false, { splits: 16, groupsPerBlock: 2 }),
    /powers of two/,
  );
  assert.equal(qgemvMmaShape(1, 1, 16, SMS)?.pitch, 64);
  assert.equal(qgemvMmaShape(3, 1, 784, SMS)?.pitch, 832);
});

Deno.test("setQgemvKernels picks the family; mma is the default", () => {
  assert.equal(qgemvKernels(), "mma");
  try {
    setQgemvKernels("ring");
    assert.equal(qgemvKernels(), "ring");
    setQgemvKernels("mma");
    assert.equal(qgemvKernels(), "mma");
    assertTqError(() => setQgemvKernels("dp4a" as QgemvKernels), {
      op: "setQgemvKernels",
      kind: "argument",
      includes: ["mma or ring", "dp4a"],
    });
    assert.equal(qgemvKernels(), "mma");
  } finally {
    setQgemvKernels("mma");
  }
});

Deno.test("the qgemv kernels are in both PTX builds with the launch's parameters", () => {
  // out, x, xKind, sxq, sxqKind, sxd, sxdKind, codes, swd, swdKind, swdPerChannel, bias,
  // outKind, act, M, N, K, then logL (ring) or splits, pitch (mma), then lnWeight, lnBias, eps,
  // lnThreads, residual
  const head = ["u64", "u64", "u32", "u64", "u32", "u64", "u32", "u64", "u64", "u32", "u32"]
    .concat(["u64", "u32", "u32", "u32", "u32", "u32"]);
  const tail = ["u64", "u64", "f32", "u32", "u64"];
  const ringParams = [...head, "u32", ...tail];
  const mmaParams = [...head, "u32", "u32", ...tail];
  const flavours: [string, string][] = [
    ["sm_90a", qgemvPtx.ptxSm90a],
    ["compute_80", qgemvPtx.ptxCompute80],
  ];
  const ring = ["qgemv_e4m3", "qgemv_e4m3_norm", "qgemv_i8", "qgemv_i8_norm"];
  const mma = ["qgemv_mma_e4m3", "qgemv_mma_e4m3_norm", "qgemv_mma_i8", "qgemv_mma_i8_norm"];
  const i8Mma = "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32";
  const fp8Mma = "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32";
  for (const [flavour, ptx] of flavours) {
    const entries = [...ptx.matchAll(/\.entry (\w+)\(([^)]*)\)/g)];
    assert.deepEqual(entries.map((e) => e[1]).sort(), [...ring, ...mma].sort(), flavour);
    for (const [, name, list] of entries) {
      const types = [...list.matchAll(/\.param \.(\w+)/g)].map((p) => p[1]);
      assert.deepEqual(types, name.includes("mma") ? mmaParams : ringParams, `${flavour} ${name}`);
    }
    // Ring blocks use at most 1024 threads, mma blocks 512 (two a SM): 64 registers a thread.
    assert.equal([...ptx.matchAll(/\.maxntid 1024, 1, 1/g)].length, ring.length, flavour);
    assert.equal([...ptx.matchAll(/\.maxntid 512, 1, 1/g)].length, mma.length, flavour);
    // The bodies: the int8 MMA in both builds; the e4m3 MMA only in the sm_90a one (the
    // portable build's e4m3 mma kernels trap).
    const body = (name: string) => {
      const start = ptx.indexOf(`.entry ${name}(`);
      const next = ptx.indexOf(".entry ", start + 1);
      return ptx.slice(start, next < 0 ? undefined : next);
    };
    for (const name of ["qgemv_mma_i8", "qgemv_mma_i8_norm"]) {
      assert.ok(body(name).includes(i8Mma), `${flavour} ${name}`);
    }
    for (const name of ["qgemv_mma_e4m3", "qgemv_mma_e4m3_norm"]) {
      if (flavour === "sm_90a") {
        assert.ok(body(name).includes(fp8Mma), `${flavour} ${name}`);
        assert.ok(!body(name).includes("trap;"), `${flavour} ${name}`);
      } else {
        assert.ok(body(name).includes("trap;"), `${flavour} ${name}`);
      }
    }
    if (flavour === "compute_80") assert.ok(!ptx.includes("e4m3.e4m3"), flavour);
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

/** The float64 outputs of codes `qx` ([m, k]) times `qw` ([n, k]) with the epilogue. */
function expectedOutputs(
  c: { m: number; n: number; k: number; perChannel: boolean; act: Activation },
  qx: ArrayLike<number>,
  qw: ArrayLike<number>,
  sx: number,
  sw: ArrayLike<number>,
  b: ArrayLike<number> | undefined,
): Expected[] {
  const act = activationFn(c.act);
  const { m, n, k } = c;
  const out: Expected[] = [];
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0, abs = 0;
      for (let kk = 0; kk < k; kk++) {
        const p = qx[i * k + kk] * qw[j * k + kk];
        acc += p;
        abs += Math.abs(p);
      }
      const scale = sx * sw[c.perChannel ? j : 0];
      const bias = b ? b[j] : 0;
      const t = acc * scale + bias;
      out.push({ exact: act(t), t, sumAbs: abs * Math.abs(scale), biasAbs: Math.abs(bias) });
    }
  }
  return out;
}

function describeKernel(c: KernelCase): string {
  return `${c.q} x ${c.x} → ${c.out} M=${c.m} N=${c.n} K=${c.k} ` +
    `${c.perChannel ? "per channel" : "per tensor"} scales ${c.sxDType}/${c.swDType} ` +
    `bias ${c.bias} ${c.act}${c.ties ? " ties" : ""}`;
}

/** Device buffers of a case's inputs and output (disposed by `dispose`). */
interface CaseBuffers {
  x: CudaBuffer;
  sx: CudaBuffer;
  w: CudaBuffer;
  sw: CudaBuffer;
  b?: CudaBuffer;
  y: CudaBuffer;
  lnWeight?: CudaBuffer;
  lnBias?: CudaBuffer;
}

function dispose(buffers: CaseBuffers): void {
  for (const b of Object.values(buffers)) (b as CudaBuffer | undefined)?.dispose();
}

/** A fresh y of `dtype` set to NaN (an unwritten output fails). */
function nanOutput(device: CudaDevice, dtype: FloatDType, count: number): CudaBuffer {
  const y = CudaBuffer.allocate(device, dtype, count);
  memsetAsync(device, y.address, 0xff, y.bytes);
  return y;
}

function kernelContext(c: KernelCase, device: CudaDevice): CudaKernelContext {
  const swCount = c.perChannel ? c.n : 1;
  return {
    attrs: { activation: c.act },
    out: { shape: [c.m, c.n], dtype: c.out },
    inputs: [
      { shape: [c.m, c.k], dtype: c.x },
      { shape: [], dtype: c.sxDType },
      { shape: [], dtype: c.sxDType },
      { shape: [c.n, c.k], dtype: c.x },
      { shape: [swCount], dtype: c.swDType },
      { shape: [swCount], dtype: c.swDType },
      ...(c.bias ? [{ shape: [c.n], dtype: c.out }] : []),
    ],
    device,
  };
}

/** A case's weight codes, weight dequant scales and optional bias (storage and values). */
function weightOperands(c: KernelCase) {
  const codes = randomCodes(c.q, c.n * c.k, c.seed);
  const swStorage = encode(
    c.swDType,
    randomValues(c.perChannel ? c.n : 1, c.seed + 2, { low: 0.002, high: 0.02 }),
  );
  const sw = decode(c.swDType, swStorage);
  const bStorage = c.bias ? encode(c.out, randomValues(c.n, c.seed + 3)) : undefined;
  const b = bStorage ? decode(c.out, bStorage) : undefined;
  return { codes, swStorage, sw, bStorage, b };
}

function checkKernel(c: KernelCase, family: QgemvKernels): void {
  const what = `${family}: ${describeKernel(c)}`;
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
  const { codes, swStorage, sw, bStorage, b } = weightOperands(c);

  const qx = quantizeX(c.q, x, sx);
  if (c.ties && c.q === "int8") {
    let halves = 0;
    for (let i = 0; i < x.length; i++) if (Math.abs(x[i] / sx) % 1 === 0.5) halves++;
    assert.ok(halves > x.length / 4, `${what}: too few quotients halfway between codes`);
  }
  const expected = expectedOutputs(c, qx, codes.values, sx, sw, b);
  const ref = decode(c.out, encode(c.out, Float64Array.from(expected, (e) => e.exact)));

  const gemv = withKernels(
    family,
    () =>
      fusedQuantizedGemv(
        kernelContext(c, device),
        m,
        n,
        k,
        c.q,
        c.perChannel,
        ACTIVATION[c.act],
        c.out,
      ),
  );
  assert.ok(gemv, `${what}: not covered`);
  const ran = familyRun(family, device, c.q, m, n, k);
  const buffers: CaseBuffers = {
    x: cuda.upload("cuda:0", c.x, xStorage) as CudaBuffer,
    sx: cuda.upload("cuda:0", c.sxDType, sxStorage) as CudaBuffer,
    w: cuda.upload("cuda:0", c.q, codes.storage) as CudaBuffer,
    sw: cuda.upload("cuda:0", c.swDType, swStorage) as CudaBuffer,
    b: bStorage ? cuda.upload("cuda:0", c.out, bStorage) as CudaBuffer : undefined,
    y: nanOutput(device, c.out, m * n),
  };
  try {
    const before = qgemvLaunchCount(), mmaBefore = qgemvMmaLaunchCount();
    gemv(buffers.y, buffers.x, buffers.sx, buffers.sx, buffers.w, buffers.sw, buffers.b);
    assert.equal(qgemvLaunchCount(), before + 1, what);
    assert.equal(qgemvMmaLaunchCount(), mmaBefore + (ran === "mma" ? 1 : 0), `${what}: ${ran}`);
    const got = decode(c.out, cuda.download(buffers.y));
    const tol: Tolerance = { q: c.q, ran, act: c.act, out: c.out, depth: sumDepth(m, n, k) };
    assertOutputs(got, ref, expected, tol, `${what} (ran ${ran})`);
  } finally {
    dispose(buffers);
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

for (const family of FAMILIES) {
  testOnGpu(`qgemv kernel int8 (${family}): dtype mixes, scale kinds, shapes and ties`, () => {
    for (const c of INT8_KERNEL_CASES) checkKernel(c, family);
  });

  testOnGpu(`qgemv kernel float8e4m3 (${family}): dtype mixes, scale kinds, shapes, ties`, () => {
    for (const c of FP8_KERNEL_CASES) checkKernel(c, family);
  });
}

// ---------------------------------------------------------------------------------------
// The mma kernels' own grid (GPU): every M tile fill, K that ends mid-step (16, 32, 48, 784)
// or spans several splits (3072), N around the 8-channel groups and a decode-sized one.

const MMA_MS = [1, 3, 8];
const MMA_KS = [16, 32, 48, 784, 3072];
const MMA_NS = [1, 7, 8, 9, 40, 2304];
const MMA_ACTS: Activation[] = ["none", "relu", "gelu_tanh"];
const MMA_OUTS: FloatDType[] = ["float32", "float16"];

/** The mma grid's cases of one code dtype: every (M, K, N), the other choices rotated. */
function mmaCases(q: Codes, seed: number): KernelCase[] {
  const cases: KernelCase[] = [];
  let i = 0;
  for (const m of MMA_MS) {
    for (const k of MMA_KS) {
      for (const n of MMA_NS) {
        cases.push({
          q,
          x: FLOATS[(i + Math.floor(i / 7)) % 3],
          out: MMA_OUTS[Math.floor(i / 3) % 2],
          m,
          n,
          k,
          perChannel: Math.floor(i / 2) % 2 === 0,
          sxDType: FLOATS[Math.floor(i / 5) % 3],
          swDType: FLOATS[Math.floor(i / 4) % 3],
          bias: i % 2 === 0,
          act: MMA_ACTS[i % 3],
          seed: seed + 10 * i,
        });
        i++;
      }
    }
  }
  return cases;
}

const INT8_MMA_CASES = mmaCases("int8", 11000);
const FP8_MMA_CASES = mmaCases("float8e4m3", 12000);

testOnGpu("qgemv mma kernel int8: M, K and N around the tiles (exact for none / relu)", () => {
  for (const c of INT8_MMA_CASES) checkKernel(c, "mma");
});

testOnGpu("qgemv mma kernel float8e4m3: M, K and N around the tiles", () => {
  const device = CudaDevice.get(0);
  if (!qgemvMmaSupported(device, "float8e4m3")) {
    console.log(
      `float8e4m3 mma kernels not used on compute capability ${device.computeCapability}: ` +
        "these cases run the ring kernels",
    );
  }
  for (const c of FP8_MMA_CASES) checkKernel(c, "mma");
});

// ---------------------------------------------------------------------------------------
// The folded layer norm on the mma kernels (GPU). Both families normalize with the same code
// (layerNormStats in the layer-norm kernel's order, quantizeX), whose float32 sums do not depend
// on the block size: the ring kernel launched with the mma launch's block size quantizes x to
// the same codes, so int8 outputs must be EQUAL to its outputs (every activation: same exact
// sums, same epilogue) and e4m3 ones within the mma sum bound plus the ring's float32 sum bound.
// (tests/norm_folding_test.ts checks the codes against the unfolded layer norm bit for bit.)
// Against a float64 layer norm the outputs may differ by codes that flip at quantization
// boundaries (as in tests/norm_folding_test.ts; the row mean's float32 error shifts a whole row,
// about half a flip a row at K = 3072): at most four flips an output, and 90% within 1e-3 of
// the largest.

interface NormCase extends KernelCase {
  affine: "weight and bias" | "weight" | "none";
}

const NORM_EPS = 1e-5;
/** Input scale of the norm cases: normalized values reach about 4. */
const NORM_AMAX = 4;

function describeNorm(c: NormCase): string {
  return `${describeKernel(c)} norm ${c.affine}`;
}

/** The ring kernel `qgemv_<q>_norm` with `threads` threads a block (any block size works). */
function launchRingNorm(
  device: CudaDevice,
  c: NormCase,
  threads: number,
  bufs: CaseBuffers,
  y: CudaBuffer,
): void {
  const shape = qgemvShape(c.m, c.n, c.k, device.smCount, c.q)!;
  const kernel = kernelFunction(
    device,
    qgemvPtx,
    c.q === "int8" ? "qgemv_i8_norm" : "qgemv_e4m3_norm",
  );
  allowSharedBytes(kernel, shape.sharedBytes, 0);
  const channelsPerBlock = threads / shape.lanes;
  const params = new KernelParams().ptr(y.address).ptr(bufs.x.address).i32(FLOAT_KIND[c.x])
    .ptr(bufs.sx.address).i32(FLOAT_KIND[c.sxDType]).ptr(bufs.sx.address)
    .i32(FLOAT_KIND[c.sxDType]).ptr(bufs.w.address).ptr(bufs.sw.address)
    .i32(FLOAT_KIND[c.swDType]).i32(c.perChannel ? 1 : 0).ptr(bufs.b?.address ?? 0n)
    .i32(FLOAT_KIND[c.out]).i32(ACTIVATION[c.act]).i32(c.m).i32(c.n).i32(c.k)
    .i32(shape.logLanes).ptr(bufs.lnWeight?.address ?? 0n).ptr(bufs.lnBias?.address ?? 0n)
    .f32(NORM_EPS).i32(layerNormThreads(c.m, c.k, c.x === "float32" ? 4 : 2, device.smCount)!)
    .ptr(0n);
  launch(
    device,
    kernel,
    [Math.ceil(c.n / channelsPerBlock), 1, 1],
    [threads, 1, 1],
    params,
    shape.sharedBytes,
  );
}

/** The spacing of e4m3 values around |v| (the code step a flip moves by). */
function e4m3Step(v: number): number {
  const a = Math.abs(v);
  return a < 2 ** -6 ? 2 ** -9 : 2 ** (Math.floor(Math.log2(a)) - 3);
}

function checkNormKernel(c: NormCase): void {
  const what = `mma: ${describeNorm(c)}`;
  const cuda = backendFor("cuda")!;
  const device = CudaDevice.get(0);
  const { m, n, k } = c;
  const qmax = c.q === "int8" ? 127 : 448;
  const sxStorage = encode(c.sxDType, Float64Array.of(NORM_AMAX / qmax));
  const sx = decode(c.sxDType, sxStorage)[0];
  // Rows with their own offset and spread, so the mean and variance matter.
  const xRaw = randomValues(m * k, c.seed + 1);
  for (let r = 0; r < m; r++) {
    for (let i = 0; i < k; i++) xRaw[r * k + i] = 2 * r - 3 + (1 + r) * xRaw[r * k + i];
  }
  const xStorage = encode(c.x, xRaw);
  const x = decode(c.x, xStorage);
  // Layer-norm weights 1/2, 1 or 2: r·w is exact, so the result cannot depend on whether the
  // assembler fuses r·w + b into one FMA in one kernel and not in the other (PTX allows it).
  const lnWStorage = c.affine !== "none"
    ? encode(c.x, randomValues(k, c.seed + 4).map((v) => 2 ** Math.sign(Math.round(v))))
    : undefined;
  const lnBStorage = c.affine === "weight and bias"
    ? encode(c.x, randomValues(k, c.seed + 5, { low: -0.3, high: 0.3 }))
    : undefined;
  const lnW = lnWStorage ? decode(c.x, lnWStorage) : undefined;
  const lnB = lnBStorage ? decode(c.x, lnBStorage) : undefined;
  const { codes, swStorage, sw, bStorage, b } = weightOperands(c);

  // float64 layer norm (population variance), rounded to x's dtype, then the quantize.
  const normed = new Float64Array(m * k);
  for (let r = 0; r < m; r++) {
    let mean = 0, sq = 0;
    for (let i = 0; i < k; i++) mean += x[r * k + i];
    mean /= k;
    for (let i = 0; i < k; i++) sq += (x[r * k + i] - mean) ** 2;
    const inv = 1 / Math.sqrt(sq / k + NORM_EPS);
    for (let i = 0; i < k; i++) {
      normed[r * k + i] = (x[r * k + i] - mean) * inv * (lnW ? lnW[i] : 1) + (lnB ? lnB[i] : 0);
    }
  }
  const qx = quantizeX(c.q, decode(c.x, encode(c.x, normed)), sx);
  const expected = expectedOutputs(c, qx, codes.values, sx, sw, b);

  const shape = qgemvMmaShape(m, n, k, device.smCount, true)!;
  const gemv = withKernels(
    "mma",
    () =>
      fusedQuantizedGemv(
        kernelContext(c, device),
        m,
        n,
        k,
        c.q,
        c.perChannel,
        ACTIVATION[c.act],
        c.out,
        { eps: NORM_EPS },
      ),
  );
  assert.ok(gemv, `${what}: not covered`);
  const bufs: CaseBuffers = {
    x: cuda.upload("cuda:0", c.x, xStorage) as CudaBuffer,
    sx: cuda.upload("cuda:0", c.sxDType, sxStorage) as CudaBuffer,
    w: cuda.upload("cuda:0", c.q, codes.storage) as CudaBuffer,
    sw: cuda.upload("cuda:0", c.swDType, swStorage) as CudaBuffer,
    b: bStorage ? cuda.upload("cuda:0", c.out, bStorage) as CudaBuffer : undefined,
    lnWeight: lnWStorage ? cuda.upload("cuda:0", c.x, lnWStorage) as CudaBuffer : undefined,
    lnBias: lnBStorage ? cuda.upload("cuda:0", c.x, lnBStorage) as CudaBuffer : undefined,
    y: nanOutput(device, c.out, m * n),
  };
  const yRing = nanOutput(device, c.out, m * n);
  try {
    const mmaBefore = qgemvMmaLaunchCount();
    gemv(bufs.y, bufs.x, bufs.sx, bufs.sx, bufs.w, bufs.sw, bufs.b, bufs.lnWeight, bufs.lnBias);
    assert.equal(qgemvMmaLaunchCount(), mmaBefore + 1, `${what}: the mma kernel did not run`);
    launchRingNorm(device, c, 32 * shape.warps, bufs, yRing);
    const got = decode(c.out, cuda.download(bufs.y));
    const ring = decode(c.out, cuda.download(yRing));
    if (c.q === "int8") {
      assertEqualValues(got, ring, `${what}: against the ring kernel`);
    } else {
      const depth = sumDepth(m, n, k);
      for (let i = 0; i < got.length; i++) {
        const e = expected[i];
        // Σ|qx·qw| from the float64 codes: a flipped code moves it by far less than 5%.
        const sumAbs = 1.05 * e.sumAbs;
        const slope = c.act === "none" || c.act === "relu" ? 1 : GELU_SLOPE;
        const bound = slope * (FP8_MMA_SUM_TOL + depth * 2 ** -24) * sumAbs +
          2 ** -20 * Math.abs(ring[i]) +
          2 * ulp(c.out, Math.max(Math.abs(got[i]), Math.abs(ring[i])));
        if (!(Math.abs(got[i] - ring[i]) <= bound)) {
          assert.fail(
            `${what}: at ${i} got ${got[i]}, the ring kernel ${ring[i]} (bound ${bound})`,
          );
        }
      }
    }
    // Sanity against the float64 layer norm: code flips at quantization boundaries only.
    let largest = 0;
    for (const e of expected) largest = Math.max(largest, Math.abs(e.exact));
    assert.ok(largest > 0, `${what}: all outputs are zero`);
    let close = 0;
    for (let j = 0; j < n; j++) {
      let wMax = 0, step = 1;
      for (let kk = 0; kk < k; kk++) wMax = Math.max(wMax, Math.abs(codes.values[j * k + kk]));
      if (c.q === "float8e4m3") step = e4m3Step(448);
      const flip = step * wMax * sx * sw[c.perChannel ? j : 0] *
        (c.act === "gelu_tanh" ? GELU_SLOPE : 1);
      for (let r = 0; r < m; r++) {
        const i = r * n + j;
        const e = expected[i];
        const sumErr = c.q === "float8e4m3" ? FP8_MMA_SUM_TOL * 1.05 * e.sumAbs * GELU_SLOPE : 0;
        const err = Math.abs(got[i] - e.exact);
        const bound = 4 * flip + sumErr + 1e-3 * largest;
        assert.ok(err <= bound, `${what}: at ${i} got ${got[i]}, float64 ${e.exact} (${bound})`);
        if (err <= 1e-3 * largest + sumErr) close++;
      }
    }
    assert.ok(close >= 0.9 * m * n, `${what}: only ${close} of ${m * n} outputs agree`);
  } finally {
    dispose(bufs);
    yRing.dispose();
  }
}

const NORM_AFFINES: NormCase["affine"][] = ["weight and bias", "weight", "none"];

/** Norm cases of one code dtype: every M and K of the mma grid, N and the rest rotated. */
function normCases(q: Codes, seed: number): NormCase[] {
  const cases: NormCase[] = [];
  let i = 0;
  for (const m of MMA_MS) {
    for (const k of MMA_KS) {
      cases.push({
        q,
        x: FLOATS[i % 3],
        out: MMA_OUTS[Math.floor(i / 2) % 2],
        m,
        n: [9, 40, 2304, 7, 8][i % 5],
        k,
        perChannel: i % 2 === 0,
        sxDType: "float32",
        swDType: FLOATS[Math.floor(i / 3) % 3],
        bias: Math.floor(i / 2) % 2 === 0,
        act: MMA_ACTS[i % 3],
        affine: NORM_AFFINES[Math.floor(i / 3) % 3],
        seed: seed + 10 * i,
      });
      i++;
    }
  }
  // Wide decode shapes: the `_norm` kernels trade splits for groups there (qgemvMmaShape).
  for (const n of [2304, 3072]) {
    cases.push({
      q,
      x: "float16",
      out: "float16",
      m: 1,
      n,
      k: 784,
      perChannel: true,
      sxDType: "float32",
      swDType: "float32",
      bias: true,
      act: MMA_ACTS[i % 3],
      affine: "weight and bias",
      seed: seed + 10 * i,
    });
    i++;
  }
  return cases;
}

const INT8_NORM_CASES = normCases("int8", 13000);
const FP8_NORM_CASES = normCases("float8e4m3", 14000);

testOnGpu("qgemv mma kernel int8 with a folded layer norm: equal to the ring kernel", () => {
  for (const c of INT8_NORM_CASES) checkNormKernel(c);
});

testOnGpu("qgemv mma kernel float8e4m3 with a folded layer norm", () => {
  const device = CudaDevice.get(0);
  if (!qgemvMmaSupported(device, "float8e4m3")) {
    console.log(
      `float8e4m3 mma kernels not used on compute capability ${device.computeCapability}: ` +
        "nothing to compare",
    );
    return;
  }
  for (const c of FP8_NORM_CASES) checkNormKernel(c);
});

// ---------------------------------------------------------------------------------------
// qlinear on cuda (the fused GEMV) against the cpu backend (GPU), on both kernel families

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

function describe(c: OpCase): string {
  return `qlinear ${c.q} ${c.perChannel ? "per channel" : "per tensor"} x ${c.dtype} ` +
    `M=${c.m} N=${c.n} K=${c.k} bias ${c.bias} ${c.act}`;
}

/** A quantized Linear (weights and inputs) on cuda and on the cpu, from the same state. */
function checkOp(c: OpCase, family: QgemvKernels): void {
  const what = `${family}: ${describe(c)}`;
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
  const ran = familyRun(family, CudaDevice.get(0), c.q, c.m, c.n, c.k);
  const before = qgemvLaunchCount(), mmaBefore = qgemvMmaLaunchCount();
  const got = withKernels(family, () => {
    const y = applyActivation(gpu.forward(x.to("cuda")), c.act);
    assert.deepEqual(tq.inspectGraph(y).ops, ["qlinear"], what);
    return values(y);
  });
  assert.equal(qgemvLaunchCount(), before + 1, `${what}: the fused GEMV did not run`);
  assert.equal(qgemvMmaLaunchCount(), mmaBefore + (ran === "mma" ? 1 : 0), `${what}: ${ran}`);
  const ref = values(applyActivation(cpu.forward(x), c.act));
  if (c.q === "int8" && (c.act === "none" || c.act === "relu")) {
    assertEqualValues(got, ref, what);
    return;
  }
  // The summed terms, from the unquantized values: quantizing moves each factor by at most
  // 1/16 of itself (e4m3; int8 less), and saturation only shrinks x.
  const xs = values(x), ws = values(weight);
  const bs = dict.bias ? values(dict.bias) : undefined;
  const expected: Expected[] = [];
  for (let i = 0; i < c.m; i++) {
    for (let j = 0; j < c.n; j++) {
      let abs = 0;
      for (let kk = 0; kk < c.k; kk++) abs += Math.abs(xs[i * c.k + kk] * ws[j * c.k + kk]);
      // t is only bounded here: |t| ≤ Σ|terms| + |b|.
      const biasAbs = bs ? Math.abs(bs[j]) : 0;
      expected.push({
        exact: ref[i * c.n + j],
        t: 1.2 * abs + biasAbs,
        sumAbs: 1.2 * abs,
        biasAbs,
      });
    }
  }
  // ref is rounded to the dtype too: one more unit in the last place.
  const tol: Tolerance = { q: c.q, ran, act: c.act, out: c.dtype, depth: sumDepth(c.m, c.n, c.k) };
  for (let i = 0; i < got.length; i++) {
    const bound = toleranceOf(tol, expected[i], got[i]) +
      RTOL[c.dtype] * Math.abs(ref[i]);
    if (!(Math.abs(got[i] - ref[i]) <= bound)) {
      assert.fail(`${what}: at ${i} got ${got[i]}, expected ${ref[i]} (tolerance ${bound})`);
    }
  }
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

for (const family of FAMILIES) {
  testOnGpu(`qlinear M ≤ 8 against the cpu (${family}): int8 per channel and per tensor`, () => {
    for (const c of OP_CASES) if (c.q === "int8") checkOp(c, family);
  });

  testOnGpu(`qlinear M ≤ 8 against the cpu (${family}): float8e4m3 per channel, per tensor`, () => {
    for (const c of OP_CASES) if (c.q === "float8e4m3") checkOp(c, family);
  });
}

// Runs everywhere: the GPU cases are problems the fused GEMV takes, and they cover what they
// claim to.
Deno.test("every qgemv test case takes the fused GEMV, and the cases cover the grid", () => {
  for (const c of [...INT8_KERNEL_CASES, ...FP8_KERNEL_CASES, ...OP_CASES]) {
    assert.ok(qgemvShape(c.m, c.n, c.k, SMS, c.q), JSON.stringify(c));
    assert.ok(qgemvMmaShape(c.m, c.n, c.k, SMS), JSON.stringify(c));
  }
  const mmaCases = [...INT8_MMA_CASES, ...FP8_MMA_CASES, ...INT8_NORM_CASES, ...FP8_NORM_CASES];
  for (const c of mmaCases) {
    assert.ok(qgemvMmaShape(c.m, c.n, c.k, SMS), JSON.stringify(c));
  }
  // The norm cases' ring comparison takes the problem too.
  for (const c of [...INT8_NORM_CASES, ...FP8_NORM_CASES]) {
    assert.ok(qgemvShape(c.m, c.n, c.k, SMS, c.q), JSON.stringify(c));
  }
  // ... and some of them run a block of several groups (splits traded for groups).
  for (const cases of [INT8_NORM_CASES, FP8_NORM_CASES]) {
    assert.ok(
      cases.some((c) => qgemvMmaShape(c.m, c.n, c.k, SMS, true)!.groupsPerBlock > 1),
      "no norm case with several groups a block",
    );
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

  // The mma grid: every (M, K, N) once per code dtype, and every other choice with each M and
  // each K; int8 exact checks (none / relu) at every M and K.
  for (const cases of [INT8_MMA_CASES, FP8_MMA_CASES]) {
    assert.equal(cases.length, MMA_MS.length * MMA_KS.length * MMA_NS.length);
    const key = (c: KernelCase) => `${c.m} ${c.k} ${c.n}`;
    assert.equal(new Set(cases.map(key)).size, cases.length);
    for (
      const [name, axis] of [["M", (c: KernelCase) => c.m], ["K", (c: KernelCase) => c.k]] as [
        string,
        (c: KernelCase) => number,
      ][]
    ) {
      for (const v of new Set(cases.map(axis))) {
        const some = cases.filter((c) => axis(c) === v);
        const has = <T>(f: (c: KernelCase) => T, all: T[]) =>
          assert.deepEqual(
            [...new Set(some.map(f))].sort(),
            [...all].sort(),
            `${name} ${v}: ${f}`,
          );
        has((c) => c.act, MMA_ACTS);
        has((c) => c.out, MMA_OUTS);
        has((c) => c.perChannel, [false, true]);
        has((c) => c.bias, [false, true]);
        has((c) => c.x, FLOATS);
      }
    }
  }
  // The norm grid: every M and K, every affine form, activation and output dtype.
  for (const cases of [INT8_NORM_CASES, FP8_NORM_CASES]) {
    const pairs = new Set(cases.map((c) => `${c.m} ${c.k}`));
    assert.equal(pairs.size, MMA_MS.length * MMA_KS.length);
    assert.deepEqual([...new Set(cases.map((c) => c.affine))].sort(), [...NORM_AFFINES].sort());
    assert.deepEqual([...new Set(cases.map((c) => c.act))].sort(), [...MMA_ACTS].sort());
    assert.deepEqual([...new Set(cases.map((c) => c.out))].sort(), [...MMA_OUTS].sort());
    assert.deepEqual([...new Set(cases.map((c) => c.perChannel))].sort(), [false, true]);
    assert.deepEqual([...new Set(cases.map((c) => c.bias))].sort(), [false, true]);
  }
  // The mma kernel cases reach several splits and groups per block, and a multi-round warp.
  const mmaShapes = [...INT8_KERNEL_CASES, ...INT8_MMA_CASES].map((c) =>
    qgemvMmaShape(c.m, c.n, c.k, SMS)!
  );
  assert.deepEqual([...new Set(mmaShapes.map((s) => s.splits))].sort((a, b) => a - b), [
    1,
    2,
    4,
    8,
    16,
  ]);
  assert.ok(mmaShapes.some((s) => s.groupsPerBlock > 1), "no block of several groups");
  assert.ok(
    [...INT8_KERNEL_CASES, ...INT8_MMA_CASES].some((c) =>
      Math.ceil(c.k / 64) > 6 * qgemvMmaShape(c.m, c.n, c.k, SMS)!.splits
    ),
    "no warp with more than one ring of steps",
  );
});

Deno.test("the tolerance of the mma float8e4m3 sums is checked, and ulp spacing", () => {
  assert.equal(ulp("float32", 1), 2 ** -23);
  assert.equal(ulp("float32", 1.5), 2 ** -23);
  assert.equal(ulp("float16", 1000), 0.5);
  assert.equal(ulp("float16", 1e-6), 2 ** -24);
  assert.equal(ulp("bfloat16", -3), 2 ** -6);
  assert.equal(ulp("float32", 0), 2 ** -149);
  assert.equal(e4m3Step(448), 32);
  assert.equal(e4m3Step(1), 0.125);
  assert.equal(e4m3Step(2 ** -8), 2 ** -9);
  const tol: Tolerance = { q: "float8e4m3", ran: "mma", act: "none", out: "float32", depth: 0 };
  const e: Expected = { exact: 10, t: 10, sumAbs: 1024, biasAbs: 0 };
  assert.equal(toleranceOf(tol, e, 10), 1 + ulp("float32", 10));
  // A sum off by more than the bound fails; a vacuous bound fails.
  assert.throws(() => assertOutputs([12], [10], [e], tol, "off"), /tolerance/);
  assert.throws(
    () => assertOutputs([10], [10], [{ ...e, sumAbs: 2e4 }], tol, "vacuous"),
    /vacuous/,
  );
  // Measured against |t|: an activation that zeroes the output keeps the bound meaningful.
  const zeroed: Expected = { exact: 0, t: -10, sumAbs: 1024, biasAbs: 0 };
  assertOutputs([10, 0.5], [10, 0], [e, zeroed], { ...tol, act: "relu" }, "relu");
  assertOutputs([10.5], [10], [e], tol, "within");
  // int8 none / relu: equality only.
  const exactTol: Tolerance = { ...tol, q: "int8" };
  assert.equal(toleranceOf(exactTol, e, 10), 0);
  assert.throws(() => assertOutputs([10.5], [10], [e], exactTol, "int8"), /exactly/);
});
