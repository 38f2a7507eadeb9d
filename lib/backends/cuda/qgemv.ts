/**
 * The fused quantized GEMV of `qlinear` for M ≤ 8 rows of x (kernels in kernels/qgemv.cu):
 * `y[m, n] = act(Σ_k qx[m, k] · qw[n, k] · sxd · swd[n] + b[n])` in one launch, where the
 * unfused path takes three (quantize x, a tensor-core GEMM, the epilogue).
 *
 * A group of L lanes computes one output channel from the weight's cached int8 / e4m3 codes
 * (`[N, K]`), each lane keeping 8 of its row's 16-byte chunks in flight; the block quantizes x
 * per tensor into shared memory meanwhile (the unfused path's rule), multiplies (int8: exact
 * int32 `__dp4a` sums, so none / relu results equal the unfused path's and the CPU
 * reference's bit for bit; e4m3: float32 sums of exact products) and finishes with the same
 * double-precision epilogue.
 *
 * The caller quantizes the weight (the codes) and calls the returned function per run: one
 * kernel launch, no allocation, no host synchronization.
 * @module
 */
import { ptx as qgemvPtx } from "../../../kernels/ptx/qgemv.ts";
import type { DType } from "../../dtype.ts";
import type { CudaKernelContext, Dim3 } from "./kernels.ts";
import { KernelParams, launch } from "./kernels.ts";
import type { CudaBuffer } from "./memory.ts";
import {
  allowSharedBytes,
  FLOAT_KIND,
  type FloatDType,
  floatKindOf,
  INT32_MAX,
  moduleKernels,
} from "./util.ts";

const fn = moduleKernels(qgemvPtx);

/** Most rows of x the fused GEMV takes. */
export const QGEMV_MAX_ROWS = 8;
/** Most shared memory of int8 x codes (M·K bytes): no opt-in needed. */
export const QGEMV_MAX_SHARED_BYTES: number = 48 * 1024;
/**
 * Most shared memory of float8e4m3 x (the codes' float32 values, 4·M·K bytes), opted into
 * above 48 KiB.
 */
export const QGEMV_MAX_SHARED_BYTES_E4M3: number = 192 * 1024;
/** 16-byte weight chunks each lane keeps in flight (QGEMV_RING in the kernel). */
export const QGEMV_RING = 8;
/** Fewest and most lanes computing one output channel. */
const MIN_LANES = 4;
const MAX_LANES = 32;
/** Fewest and most warps in a block (the kernel's `__launch_bounds__` allow 1024 threads). */
const MIN_WARPS = 4;
const MAX_WARPS = 32;

/** Kernel names of the code dtypes. */
const KERNEL: Readonly<Record<string, string>> = {
  int8: "qgemv_i8",
  float8e4m3: "qgemv_e4m3",
};

/** How one problem is launched. */
export interface QgemvShape {
  /** Lanes per output channel (L: 4, 8, 16 or 32). */
  lanes: number;
  /** log2 of `lanes`. */
  logLanes: number;
  /** Warps per block (4 to 32). */
  warps: number;
  /** Output channels per block: `warps · 32 / lanes`. */
  channelsPerBlock: number;
  /** Blocks: `ceil(N / channelsPerBlock)`. */
  blocks: number;
  /** Dynamic shared memory bytes: x's codes (int8: `M·K`) or their values (e4m3: `4·M·K`). */
  sharedBytes: number;
}

/**
 * The launch of the fused GEMV for `m` rows of x, `n` outputs and `k` inputs on a GPU of
 * `smCount` multiprocessors with `qdtype` codes; undefined when it does not apply (M outside
 * 1..8, K not a positive multiple of 16, x's shared memory above
 * {@link QGEMV_MAX_SHARED_BYTES} (int8) or {@link QGEMV_MAX_SHARED_BYTES_E4M3}, N outside
 * 1..2^31 − 1).
 *
 * Lanes: the fewest (a power of two, 4 to 32) that hold a row in one ring of 8 chunks each,
 * so that a whole row is in flight at once up to K = 4096. Warps: every block quantizes all of
 * x, so blocks are made as large as possible (up to 32 warps) while there are still at least
 * three quarters as many blocks as multiprocessors to stream the weight (and never fewer than
 * 4 warps).
 */
export function qgemvShape(
  m: number,
  n: number,
  k: number,
  smCount: number,
  qdtype: "int8" | "float8e4m3" = "int8",
): QgemvShape | undefined {
  if (!Number.isInteger(m) || m < 1 || m > QGEMV_MAX_ROWS) return undefined;
  if (!Number.isInteger(n) || n < 1 || n > INT32_MAX) return undefined;
  if (!Number.isInteger(k) || k < 16 || k % 16 !== 0) return undefined;
  const sharedBytes = qdtype === "int8" ? m * k : 4 * m * k;
  if (sharedBytes > (qdtype === "int8" ? QGEMV_MAX_SHARED_BYTES : QGEMV_MAX_SHARED_BYTES_E4M3)) {
    return undefined;
  }
  const chunks = k / 16;
  let lanes = MIN_LANES;
  while (lanes < MAX_LANES && lanes * QGEMV_RING < chunks) lanes *= 2;
  const blocksOf = (warps: number) => Math.ceil(n / ((warps * 32) / lanes));
  let warps = MAX_WARPS;
  while (warps > MIN_WARPS && 4 * blocksOf(warps) < 3 * smCount) warps /= 2;
  return {
    lanes,
    logLanes: Math.log2(lanes),
    warps,
    channelsPerBlock: (warps * 32) / lanes,
    blocks: blocksOf(warps),
    sharedBytes,
  };
}

/**
 * One run of the fused GEMV: `y` (`[M, N]`, the output dtype) from `x` (`[M, K]`), the
 * input's quantize and dequantize scales `sxq`, `sxd`, the weight's `codes` (`[N, K]`), its
 * dequantize scales `swd` and the optional `bias` (the output dtype).
 */
export type FusedQuantizedGemv = (
  y: CudaBuffer,
  x: CudaBuffer,
  sxq: CudaBuffer,
  sxd: CudaBuffer,
  codes: CudaBuffer,
  swd: CudaBuffer,
  bias: CudaBuffer | undefined,
  lnWeight?: CudaBuffer,
  lnBias?: CudaBuffer,
) => void;

/** A layer norm over x's last dim folded into the GEMV (its weight and bias come per run). */
export interface QgemvNorm {
  /** The layer norm's epsilon. */
  eps: number;
}

let launches = 0;

/** Number of fused GEMV launches enqueued so far (to tell which path a `qlinear` took). */
export function qgemvLaunchCount(): number {
  return launches;
}

/**
 * The fused GEMV of a `qlinear` op (`ctx`: inputs `[x, sxq, sxd, w, swq, swd, bias?]`) with
 * `m` rows of x, `n` outputs, `k` inputs and `qdtype` codes (`perChannel`: one weight scale per
 * output channel, else one per tensor), activation code `act` and output dtype `outDType`;
 * undefined when it does not apply (see {@link qgemvShape}; also for other code dtypes, or
 * float kinds the kernels do not take). With `norm`, x is the input of a layer norm over its
 * last dim (weight and bias of x's dtype, when it has them, passed per run) whose output the
 * product reads: the kernel normalizes x itself. Lowering runs once per plan; the returned
 * function enqueues one kernel per run.
 */
export function fusedQuantizedGemv(
  ctx: CudaKernelContext,
  m: number,
  n: number,
  k: number,
  qdtype: DType,
  perChannel: boolean,
  act: number,
  outDType: FloatDType,
  norm?: QgemvNorm,
): FusedQuantizedGemv | undefined {
  const base = KERNEL[qdtype];
  if (base === undefined) return undefined;
  const name = norm ? `${base}_norm` : base;
  const [xInfo, sxqInfo, sxdInfo, , , swdInfo, biasInfo] = ctx.inputs;
  const xKind = floatKindOf(xInfo.dtype);
  const sxqKind = floatKindOf(sxqInfo.dtype);
  const sxdKind = floatKindOf(sxdInfo.dtype);
  const swdKind = floatKindOf(swdInfo.dtype);
  const outKind = FLOAT_KIND[outDType];
  if (xKind === undefined || sxqKind === undefined || sxdKind === undefined) return undefined;
  if (swdKind === undefined || (biasInfo && biasInfo.dtype !== outDType)) return undefined;
  const { device } = ctx;
  const shape = qgemvShape(m, n, k, device.smCount, qdtype as "int8" | "float8e4m3");
  if (!shape) return undefined;
  const kernel = fn(device, name);
  allowSharedBytes(kernel, shape.sharedBytes, QGEMV_MAX_SHARED_BYTES);
  const grid: Dim3 = [shape.blocks, 1, 1];
  const block: Dim3 = [32 * shape.warps, 1, 1];
  const params = new KernelParams();
  return (y, x, sxq, sxd, codes, swd, bias, lnWeight, lnBias) => {
    params.reset().ptr(y.address).ptr(x.address).i32(xKind).ptr(sxq.address).i32(sxqKind)
      .ptr(sxd.address).i32(sxdKind).ptr(codes.address).ptr(swd.address).i32(swdKind)
      .i32(perChannel ? 1 : 0).ptr(bias?.address ?? 0n).i32(outKind).i32(act).i32(m).i32(n)
      .i32(k).i32(shape.logLanes).ptr(lnWeight?.address ?? 0n).ptr(lnBias?.address ?? 0n)
      .f32(norm?.eps ?? 0);
    launch(device, kernel, grid, block, params, shape.sharedBytes);
    launches++;
  };
}
