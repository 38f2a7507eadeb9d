/**
 * The fused quantized GEMV of `qlinear` for M ≤ 8 rows of x (kernels in kernels/qgemv.cu):
 * `y[m, n] = act(Σ_k qx[m, k] · qw[n, k] · sxd · swd[n] + b[n])` in one launch, where the
 * unfused path takes three (quantize x, a tensor-core GEMM, the epilogue). Each block
 * quantizes x per tensor into shared memory (the unfused path's rule) while its first weight
 * loads fly, multiplies it with the weight's cached int8 / e4m3 codes (`[N, K]`) and finishes
 * with the unfused path's double-precision epilogue.
 *
 * Two kernel families compute it:
 * - "mma" (the default): warp-level tensor-core MMAs (`mma.sync.m16n8k32`), 8 output channels
 *   a warp, K split over several warps of a block ({@link qgemvMmaShape}). int8 everywhere
 *   (exact int32 sums, so none / relu results equal the CPU reference's bit for bit);
 *   float8e4m3 where the sm_90a PTX is loaded (see {@link qgemvMmaSupported}): the tensor
 *   cores' float32 sums are not exact IEEE sums.
 * - "ring": a group of L lanes per output channel, each lane keeping 8 of its row's 16-byte
 *   chunks in flight ({@link qgemvShape}); int8 `__dp4a` sums (exact), e4m3 float32 sums of
 *   exact products. Used for e4m3 elsewhere, and for problems the mma kernels refuse.
 *
 * A residual folded into the qlinear (lib/graph/passes/residual_fusion.ts) is added in the
 * kernels' epilogue, after the output's rounding: `y = round(round(t) + residual)`, the unfused
 * graph's add bit for bit, in the same launch.
 *
 * The caller quantizes the weight (the codes) and calls the returned function per run: one
 * kernel launch, no allocation, no host synchronization.
 * @module
 */
import { ptx as qgemvPtx } from "../../../kernels/ptx/qgemv.ts";
import type { DType } from "../../dtype.ts";
import { TensorqError } from "../../errors.ts";
import type { CudaDevice } from "./device.ts";
import type { CudaKernelContext, Dim3 } from "./kernels.ts";
import { KernelParams, launch } from "./kernels.ts";
import type { CudaBuffer } from "./memory.ts";
import { layerNormThreads } from "./nn.ts";
import {
  allowSharedBytes,
  FLOAT_KIND,
  type FloatDType,
  floatKindOf,
  INT32_MAX,
  log2Exact,
  moduleKernels,
  nextPow2,
} from "./util.ts";

const fn = moduleKernels(qgemvPtx);

/** Most rows of x the fused GEMV takes. */
export const QGEMV_MAX_ROWS = 8;
/** Most shared memory of int8 x codes (M·K bytes) in the ring kernels. */
export const QGEMV_MAX_SHARED_BYTES: number = 48 * 1024;
/**
 * Most shared memory of float8e4m3 x (the codes' float32 values, 4·M·K bytes), opted into
 * above 48 KiB.
 */
export const QGEMV_MAX_SHARED_BYTES_E4M3: number = 192 * 1024;
/**
 * Dynamic shared memory launched without opting in: 48 KiB less room for the norm kernels'
 * static shared memory (2 KiB: NormScratch), which counts against the same 48 KiB.
 */
const SHARED_NO_OPT_IN = 46 * 1024;
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

/** M in 1..8, N in 1..2^31 − 1, K a positive multiple of 16: what both kernel families take. */
function gemvProblem(m: number, n: number, k: number): boolean {
  return Number.isInteger(m) && m >= 1 && m <= QGEMV_MAX_ROWS && Number.isInteger(n) && n >= 1 &&
    n <= INT32_MAX && Number.isInteger(k) && k >= 16 && k % 16 === 0;
}

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
  if (!gemvProblem(m, n, k)) return undefined;
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
 * dequantize scales `swd` and the optional `bias` (the output dtype); with a folded layer norm
 * its `lnWeight` and `lnBias`; with a folded residual add, the `residual` (`[M, N]`, the output
 * dtype) added to the rounded result.
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
  residual?: CudaBuffer,
) => void;

/** A layer norm over x's last dim folded into the GEMV (its weight and bias come per run). */
export interface QgemvNorm {
  /** The layer norm's epsilon. */
  eps: number;
}

// ---------------------------------------------------------------------------------------
// The tensor-core (mma) kernels

/** 16-byte weight chunks each lane of the mma kernels keeps in flight (QGEMV_MMA_RING). */
export const QGEMV_MMA_RING = 6;
/** Most warps in a block of the mma kernels (their `__launch_bounds__(512, 2)`). */
export const QGEMV_MMA_MAX_WARPS = 16;
/**
 * Most dynamic shared memory of the mma kernels (x's codes and the warps' partial sums): above
 * 48 KiB it is opted into, and 96 KiB fits every GPU from compute capability 8.0 on. It also
 * keeps K below 98304, so int8 sums (|code products| ≤ 2^14) stay within int32.
 */
export const QGEMV_MMA_MAX_SHARED_BYTES: number = 96 * 1024;
/** Steps a warp streams at most before more warps share a row (while a block has room). */
const MMA_STEPS_PER_WARP = 2;
/**
 * Steps a warp of a `_norm` kernel may stream when splits are traded for groups (every block
 * computes the rows' layer-norm statistics: fewer, wider blocks repeat that less).
 */
const MMA_NORM_STEPS_PER_WARP = 4;
/** Warps an SM holds at 64 registers a thread (the mma kernels' register cap). */
const MMA_WARPS_PER_SM = 32;

/** Kernel names of the mma family, per code dtype. */
const MMA_KERNEL: Readonly<Record<string, string>> = {
  int8: "qgemv_mma_i8",
  float8e4m3: "qgemv_mma_e4m3",
};

/** How one problem is launched on the mma kernels. */
export interface QgemvMmaShape {
  /** Warps sharing one group of 8 output channels; they take every `splits`-th step. */
  splits: number;
  /** Groups of 8 output channels a block computes (each with its own `splits` warps). */
  groupsPerBlock: number;
  /** Warps per block: `splits · groupsPerBlock` (1 to 16). */
  warps: number;
  /** Blocks: `ceil(ceil(N / 8) / groupsPerBlock)`. */
  blocks: number;
  /**
   * Bytes between rows of x's codes in shared memory: K rounded up to 64, plus 64 when that
   * is a multiple of 128 (a quarter warp's two rows then use different banks).
   */
  pitch: number;
  /** Dynamic shared memory bytes: `M · pitch` of codes and `warps · 256` of partial sums. */
  sharedBytes: number;
}

/** Row pitch of x's codes in the mma kernels' shared memory (see {@link QgemvMmaShape}). */
function mmaPitch(k: number): number {
  const pitch = Math.ceil(k / 64) * 64;
  return pitch % 128 === 0 ? pitch + 64 : pitch;
}

/**
 * The launch of the mma kernels for `m` rows of x, `n` outputs and `k` inputs on a GPU of
 * `smCount` multiprocessors; undefined when they do not apply (M outside 1..8, K not a
 * positive multiple of 16, N outside 1..2^31 − 1, shared memory above
 * {@link QGEMV_MMA_MAX_SHARED_BYTES}).
 *
 * A warp computes 8 output channels (a group) over every `splits`-th step of their rows (a
 * step: 64 bytes of each of the 8 rows, one 16-byte load a lane), so the shape is a choice of
 * `splits` and `groupsPerBlock`:
 * - splits: the fewest (a power of two, at most 16) that leave each warp at most 2 steps, so
 *   that at decode sizes every warp has its whole share in flight from its first instructions
 *   and the MMA chains stay short;
 * - M ≤ 2 (x's quantization is cheap): one group a block, unless the blocks would not all be
 *   resident at once (32 warps an SM): then blocks take more groups (2, 4, ... up to 16
 *   warps), then trade splits for groups (warps stream more steps);
 * - M > 2 (every block quantizes all of x, M·K divisions): blocks of 16 warps, trading splits
 *   for groups until there are at most as many blocks as SMs;
 * - `norm` (the `_norm` kernels, M ≤ 2: every block also computes the rows' layer-norm
 *   statistics): then splits are traded for groups, warps per block unchanged, while every SM
 *   still gets a block and a warp streams at most 4 steps. At GPT-2's decode QKV and MLP-up
 *   shapes that is 4 splits × 2 groups, 0.6 µs faster than 8 × 1 (bench/decode_gemv_shapes.ts).
 * Groups per block never exceed the power of two covering N / 8.
 *
 * `choice` replaces the rule (benchmarks compare shapes with it): powers of two whose product,
 * the warps per block, is at most {@link QGEMV_MMA_MAX_WARPS}.
 */
export function qgemvMmaShape(
  m: number,
  n: number,
  k: number,
  smCount: number,
  norm = false,
  choice?: { splits: number; groupsPerBlock: number },
): QgemvMmaShape | undefined {
  if (!gemvProblem(m, n, k)) return undefined;
  const pitch = mmaPitch(k);
  const steps = Math.ceil(k / 64);
  const groups = Math.ceil(n / 8);
  const groupCap = nextPow2(groups);
  const sms = Math.max(1, Math.floor(smCount));
  const blocksOf = (groupsPerBlock: number) => Math.ceil(groups / groupsPerBlock);
  if (choice) {
    const { splits, groupsPerBlock } = choice;
    if (
      log2Exact(splits) < 0 || log2Exact(groupsPerBlock) < 0 ||
      splits * groupsPerBlock > QGEMV_MMA_MAX_WARPS
    ) {
      throw new RangeError(
        `qgemvMmaShape: splits and groupsPerBlock must be powers of two with a product up to ${QGEMV_MMA_MAX_WARPS}, got ${splits} and ${groupsPerBlock}`,
      );
    }
    const warps = splits * groupsPerBlock;
    const sharedBytes = m * pitch + warps * 256;
    if (sharedBytes > QGEMV_MMA_MAX_SHARED_BYTES) return undefined;
    return { splits, groupsPerBlock, warps, blocks: blocksOf(groupsPerBlock), pitch, sharedBytes };
  }
  let splits = 1;
  while (splits < QGEMV_MMA_MAX_WARPS && Math.ceil(steps / splits) > MMA_STEPS_PER_WARP) {
    splits *= 2;
  }
  let groupsPerBlock = 1;
  if (m > 2) {
    while (splits * groupsPerBlock < QGEMV_MMA_MAX_WARPS && groupsPerBlock < groupCap) {
      groupsPerBlock *= 2;
    }
    while (blocksOf(groupsPerBlock) > sms && splits > 1 && groupsPerBlock < groupCap) {
      splits /= 2;
      groupsPerBlock *= 2;
    }
  } else {
    while (
      norm && splits > 1 && groupsPerBlock < groupCap && blocksOf(2 * groupsPerBlock) >= sms &&
      Math.ceil(steps / (splits / 2)) <= MMA_NORM_STEPS_PER_WARP
    ) {
      splits /= 2;
      groupsPerBlock *= 2;
    }
    const resident = (warps: number) => sms * Math.floor(MMA_WARPS_PER_SM / warps);
    while (
      blocksOf(groupsPerBlock) > resident(splits * groupsPerBlock) && groupsPerBlock < groupCap
    ) {
      if (splits * groupsPerBlock < QGEMV_MMA_MAX_WARPS) {
        groupsPerBlock *= 2;
      } else if (splits > 1) {
        splits /= 2;
        groupsPerBlock *= 2;
      } else {
        break;
      }
    }
  }
  const warps = splits * groupsPerBlock;
  const sharedBytes = m * pitch + warps * 256;
  if (sharedBytes > QGEMV_MMA_MAX_SHARED_BYTES) return undefined;
  return { splits, groupsPerBlock, warps, blocks: blocksOf(groupsPerBlock), pitch, sharedBytes };
}

/**
 * Whether the mma kernels of `qdtype` codes run on `device`: int8 on every GPU tensorq
 * supports (compute capability 8.0 on); float8e4m3 only where the sm_90a PTX is loaded
 * (compute capability 9.0, see kernelFunction), as its MMA needs sm_89 and the portable
 * compute_80 PTX that every other GPU loads (8.9 and 10.x included) cannot hold it.
 */
export function qgemvMmaSupported(device: CudaDevice, qdtype: DType): boolean {
  if (qdtype === "int8") return true;
  const [major, minor] = device.computeCapability;
  return qdtype === "float8e4m3" && major === 9 && minor === 0;
}

/** The fused GEMV kernel families (see the module documentation). */
export type QgemvKernels = "mma" | "ring";

let family: QgemvKernels = "mma";

/**
 * Chooses the kernel family that fused GEMVs lowered from now on use where it applies
 * ("mma", the default; "ring" forces the ring kernels). Plans already lowered keep theirs.
 */
export function setQgemvKernels(kind: QgemvKernels): void {
  if (kind !== "mma" && kind !== "ring") {
    throw new TensorqError("unknown fused GEMV kernel family", {
      op: "setQgemvKernels",
      kind: "argument",
      argument: "kind",
      expected: "mma or ring",
      actual: String(kind),
    });
  }
  family = kind;
}

/** The kernel family fused GEMVs are lowered to (see {@link setQgemvKernels}). */
export function qgemvKernels(): QgemvKernels {
  return family;
}

let launches = 0;
let mmaLaunches = 0;

/** Number of fused GEMV launches enqueued so far (to tell which path a `qlinear` took). */
export function qgemvLaunchCount(): number {
  return launches;
}

/** Number of those launches that ran the mma kernels. */
export function qgemvMmaLaunchCount(): number {
  return mmaLaunches;
}

/**
 * The fused GEMV of a `qlinear` op (`ctx`: inputs `[x, sxq, sxd, w, swq, swd, bias?]`) with
 * `m` rows of x, `n` outputs, `k` inputs and `qdtype` codes (`perChannel`: one weight scale per
 * output channel, else one per tensor), activation code `act` and output dtype `outDType`;
 * undefined when it does not apply (see {@link qgemvMmaShape} and {@link qgemvShape}; also for
 * other code dtypes, or float kinds the kernels do not take). It runs the mma kernels where
 * the family is "mma" ({@link setQgemvKernels}), the device runs them
 * ({@link qgemvMmaSupported}) and they take the problem, else the ring kernels. With `norm`, x
 * is the input of a layer norm over its last dim (weight and bias of x's dtype, when it has
 * them, passed per run) whose output the product reads: the kernel normalizes x itself, summing
 * in the order of the layer-norm kernel the unfolded graph would run ({@link layerNormThreads}),
 * so its codes are that graph's; undefined where that kernel is a scalar variant.
 * Lowering runs once per plan; the returned function enqueues one kernel per run. `choice`:
 * the mma kernels' shape in place of the rule (see {@link qgemvMmaShape}).
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
  choice?: { splits: number; groupsPerBlock: number },
): FusedQuantizedGemv | undefined {
  const base = KERNEL[qdtype];
  if (base === undefined) return undefined;
  const [xInfo, sxqInfo, sxdInfo, , , swdInfo, biasInfo] = ctx.inputs;
  const xKind = floatKindOf(xInfo.dtype);
  const sxqKind = floatKindOf(sxqInfo.dtype);
  const sxdKind = floatKindOf(sxdInfo.dtype);
  const swdKind = floatKindOf(swdInfo.dtype);
  const outKind = FLOAT_KIND[outDType];
  if (xKind === undefined || sxqKind === undefined || sxdKind === undefined) return undefined;
  if (swdKind === undefined || (biasInfo && biasInfo.dtype !== outDType)) return undefined;
  const { device } = ctx;
  const mmaShape = family === "mma" && qgemvMmaSupported(device, qdtype)
    ? qgemvMmaShape(m, n, k, device.smCount, norm !== undefined, choice)
    : undefined;
  const ringShape = mmaShape
    ? undefined
    : qgemvShape(m, n, k, device.smCount, qdtype as "int8" | "float8e4m3");
  const shape = mmaShape ?? ringShape;
  // The e4m3 ring kernel opts into up to 192 KiB, more than GPUs before Hopper allow a block
  // (99 KiB on sm_86/89, 163 KiB on sm_80): such products take the general path there. The
  // norm kernels' static 2 KiB counts against the same limit.
  if (!shape || shape.sharedBytes + 2 * 1024 > device.sharedOptInBytes) return undefined;
  // A folded norm sums as the layer-norm kernel of the unfolded graph would: its vector variants.
  const lnThreads = norm ? layerNormThreads(m, k, xKind === 0 ? 4 : 2, device.smCount) : 0;
  if (lnThreads === undefined) return undefined;
  const kernel = fn(device, `${mmaShape ? MMA_KERNEL[qdtype] : base}${norm ? "_norm" : ""}`);
  allowSharedBytes(kernel, shape.sharedBytes, SHARED_NO_OPT_IN);
  const grid: Dim3 = [shape.blocks, 1, 1];
  const block: Dim3 = [32 * shape.warps, 1, 1];
  // The family's own parameters: K split and x's pitch (mma), or lanes per channel (ring).
  const layout = mmaShape ? [mmaShape.splits, mmaShape.pitch] : [ringShape!.logLanes];
  const params = new KernelParams();
  return (y, x, sxq, sxd, codes, swd, bias, lnWeight, lnBias, residual) => {
    params.reset().ptr(y.address).ptr(x.address).i32(xKind).ptr(sxq.address).i32(sxqKind)
      .ptr(sxd.address).i32(sxdKind).ptr(codes.address).ptr(swd.address).i32(swdKind)
      .i32(perChannel ? 1 : 0).ptr(bias?.address ?? 0n).i32(outKind).i32(act).i32(m).i32(n)
      .i32(k);
    for (const v of layout) params.i32(v);
    params.ptr(lnWeight?.address ?? 0n).ptr(lnBias?.address ?? 0n).f32(norm?.eps ?? 0)
      .i32(lnThreads).ptr(residual?.address ?? 0n);
    launch(device, kernel, grid, block, params, shape.sharedBytes);
    launches++;
    if (mmaShape) mmaLaunches++;
  };
}
