/**
 * The streaming weight-only GEMV of `wlinear` for a few rows of x (kernels in
 * kernels/wgemv.cu): `y[m, n] = act(Σ_k x[m, k] · q[n, k] · s(n, k) + b[n])` straight from the
 * weight's codes (int8, packed int4 or float8e4m3, `[N, K]`), for M ≤ 4 rows (float16 /
 * bfloat16 x: M ≤ 8) when the weight scale is constant over each 16-byte chunk of a row.
 *
 * A block computes 16 output channels with 1 to 16 warps splitting K; every lane keeps several
 * 16-byte weight loads in flight. For float16 / bfloat16 x the codes become exact 16-bit values
 * multiplied on the tensor cores, for float32 x (and block scales smaller than a quad of chunks)
 * exact float32 values multiplied with FMAs; sums are float32 and the scale multiplies partial
 * sums (per quad of chunks or per chunk), so the result differs from the fake-quant reference,
 * which rounds each dequantized weight to x's dtype first, by that rounding only.
 *
 * With a layer norm folded into the wlinear (lib/graph/passes/qdq_fusion.ts), x is the norm's
 * input and the `_norm` kernels (16-bit x on the tensor cores, float32 x with FMAs) normalize it
 * in every block while staging it in shared memory, with the layer-norm kernel's float32
 * operations in its order (the variant {@link layerNormThreads} picks for the rows): the staged
 * values equal the layer norm's output bit for bit, so the result equals the unfolded graph's.
 *
 * A residual folded into the wlinear (lib/graph/passes/residual_fusion.ts) is added by every
 * kernel in its epilogue, after the output's rounding: `y = round(round(act(...)) + residual)`,
 * the unfused graph's add bit for bit, in the same launch.
 *
 * The caller quantizes the weight (the codes) and calls the returned function per run.
 * @module
 */
import { ptx as wgemvPtx } from "../../../kernels/ptx/wgemv.ts";
import type { DType } from "../../dtype.ts";
import type { CudaKernelContext, Dim3 } from "./kernels.ts";
import { KernelParams, launch } from "./kernels.ts";
import type { WeightScaleIndex } from "./linear.ts";
import type { CudaBuffer } from "./memory.ts";
import { layerNormThreads } from "./nn.ts";
import {
  activationCode,
  allowSharedBytes,
  FLOAT_KIND,
  FLOAT_NAME,
  type FloatDType,
  INT32_MAX,
  log2Exact,
  moduleKernels,
  preferSharedMemory,
} from "./util.ts";

const fn = moduleKernels(wgemvPtx);

/** Most rows of x the tensor-core kernels take (float16 / bfloat16 x). */
export const WGEMV_MMA_MAX_ROWS = 8;
/** Most rows of x the FMA kernels take (float32 x, small scale blocks). */
export const WGEMV_FMA_MAX_ROWS = 4;
/**
 * Fewest input features a warp of the tensor-core kernels takes when warps split K. GPT-2-small's
 * decode shapes (K = 768 or 3072, one row) ran fastest at 192 features a warp, int4 and int8
 * alike (the attention output, which has no folded norm, ran 0.1–0.2 µs faster at 48–96); at 48
 * a warp the two with a folded layer norm took 1.7 times as long (bench/decode_gemv_shapes.ts).
 */
export const WGEMV_MMA_MIN_K_PER_WARP = 192;
/** Output channels per block (WGEMV_TILE in the kernel). */
const TILE = 16;
/** Most warps in a block (WGEMV_MAX_WARPS in the kernel). */
const MAX_WARPS = 16;
/**
 * Warps an SM holds at least: the kernels' `__launch_bounds__(512, 1)` caps them at 128
 * registers a thread.
 */
const RESIDENT_WARPS_PER_SM = 16;
/** Dynamic shared memory a kernel may use without opting in (less its static shared memory). */
const SHARED_NO_OPT_IN = 48 * 1024;
/** Most shared memory a norm kernel's block takes: what every sm_80+ GPU grants one block. */
const NORM_SHARED_PER_BLOCK = 99 * 1024;
/**
 * Shared memory of an SM (Hopper) that the blocks of a norm kernel resident at once may take,
 * 1 KiB of it reserved per block: a problem whose staged x would leave blocks waiting for a
 * second wave runs the layer norm kernel first instead.
 */
const NORM_SHARED_PER_SM = 228 * 1024;

/** Kernel name parts of the code dtypes, and their bits. */
const CODES: Readonly<Record<string, { name: string; bits: number }>> = {
  int8: { name: "i8", bits: 8 },
  int4: { name: "i4", bits: 4 },
  float8e4m3: { name: "e4m3", bits: 8 },
};

/** How one problem is launched. */
export interface WgemvShape {
  /** Kernel function name. */
  kernel: string;
  /** True for the tensor-core kernel, false for the FMA kernel. */
  mma: boolean;
  /** Warps per block (they split K for the block's 16 output channels). */
  warps: number;
  /** Blocks: one per 16 output channels. */
  blocks: number;
  /** log2 of the bytes of a row one scale covers (block-wise scales), 0 with one per row. */
  scaleShift: number;
  /** For a folded layer norm (the `_norm` kernels): how x is normalized and staged. */
  norm?: WgemvNormShape;
}

/** How a `_norm` kernel normalizes x (kernels/wgemv.cu, stageNormalized). */
export interface WgemvNormShape {
  /**
   * Threads the layer-norm kernel of the unfolded graph gives a row (32: a warp per row;
   * otherwise its block size): the order of its sums, which the kernel repeats.
   */
  lnThreads: number;
  /** Bytes of a staged row of x in shared memory (≡ 64 mod 128: conflict-free reads). */
  pitch: number;
  /** Dynamic shared memory bytes: M staged rows. */
  sharedBytes: number;
  /** Static shared memory bytes of the kernel (its warps' sums and the row statistics). */
  staticBytes: number;
}

/**
 * The launch of the streaming GEMV for `m` rows of x (`xDType`), an `[n, k]` weight of
 * `qdtype` codes whose scales are laid out as `index` says, on a GPU of `smCount`
 * multiprocessors; undefined when the kernels do not cover the problem (too many rows, rows
 * not on 16-byte boundaries, scales not constant over 16-byte chunks, or block scales that do
 * not span a power-of-two number of bytes).
 *
 * Warps per block: as many as keep every block resident at once (one wave: no SM idles at the
 * end while others finish a second) while each warp still gets {@link WGEMV_MMA_MIN_K_PER_WARP}
 * input features (tensor-core kernels) or two quads of 64 bytes of each of its rows (FMA
 * kernels).
 *
 * `norm`: the `_norm` kernel of a folded layer norm, with the same launch; also undefined when
 * there is none for the problem (16-bit x on the FMA kernels) or its staged x does not fit
 * (see {@link WgemvNormShape}).
 *
 * `warps` (1 to 16, a power of two) replaces the choice of warps per block (benchmarks compare
 * the choices with it).
 */
export function wgemvShape(
  m: number,
  n: number,
  k: number,
  qdtype: DType,
  xDType: FloatDType,
  index: WeightScaleIndex,
  smCount: number,
  norm = false,
  warps?: number,
): WgemvShape | undefined {
  const codes = CODES[qdtype];
  if (!codes || m < 1 || n < 1 || k < 1 || k > INT32_MAX || n > INT32_MAX) return undefined;
  const perChunk = 128 / codes.bits; // codes per 16-byte chunk
  if (k % perChunk !== 0 || index.nb !== 1) return undefined;
  const rowBytes = (k * codes.bits) / 8;
  const perRow = index.sK === 0;
  let scaleShift = 0;
  if (!perRow) {
    if (index.kb % perChunk !== 0) return undefined;
    scaleShift = log2Exact((index.kb * codes.bits) / 8);
    if (scaleShift < 0) return undefined;
  }
  const half = xDType !== "float32";
  // The tensor-core kernel scales sums over quads of chunks (64 bytes of a row).
  const mma = half && m <= WGEMV_MMA_MAX_ROWS && (perRow || scaleShift >= 6);
  // float8e4m3 weights are never block-wise, so there are no FMA kernels for them with
  // 16-bit x.
  if (!mma && (m > WGEMV_FMA_MAX_ROWS || (half && qdtype === "float8e4m3"))) return undefined;
  const blocks = Math.ceil(n / TILE);
  const quads = Math.ceil(rowBytes / 64);
  const perSm = Math.ceil(blocks / Math.max(1, smCount));
  if (warps !== undefined && (log2Exact(warps) < 0 || warps > MAX_WARPS)) {
    throw new RangeError(
      `wgemvShape: warps must be a power of two up to ${MAX_WARPS}, got ${warps}`,
    );
  }
  warps ??= defaultWarps(
    perSm,
    mma ? (w) => k >= WGEMV_MMA_MIN_K_PER_WARP * w : (w) => quads >= 2 * w,
  );
  const x = FLOAT_NAME[xDType];
  const kernel = mma ? `wgemv_mma_${codes.name}_${x}` : `wgemv_fma_${codes.name}_${x}_m${m}`;
  if (!norm) return { kernel, mma, warps, blocks, scaleShift };
  if (!mma && half) return undefined;
  const xBytes = half ? 2 : 4;
  // The layer-norm kernel of these rows; K is a multiple of 16, so it is a vector variant.
  const lnThreads = layerNormThreads(m, k, xBytes, smCount);
  if (lnThreads === undefined) return undefined;
  // A quad of chunks (64 code bytes) covers 4 · perChunk values of x.
  const pitch = quads * 4 * perChunk * xBytes + 64;
  const sharedBytes = m * pitch;
  // The warps' sums (16 channels × rows compiled) and the statistics (normRed, normStats).
  const staticBytes = 16 * (mma ? WGEMV_MMA_MAX_ROWS : m) * 16 * 4 + (8 * 16 + 16) * 4;
  const perBlock = sharedBytes + staticBytes;
  const resident = Math.min(perSm, Math.floor(RESIDENT_WARPS_PER_SM / warps));
  if (perBlock > NORM_SHARED_PER_BLOCK || resident * (perBlock + 1024) > NORM_SHARED_PER_SM) {
    return undefined;
  }
  return {
    kernel: `${kernel}_norm`,
    mma,
    warps,
    blocks,
    scaleShift,
    norm: { lnThreads, pitch, sharedBytes, staticBytes },
  };
}

/**
 * Warps per block when the caller does not choose: the most (a power of two) that keep every
 * block resident at once and give each warp `enough(warps)` of K.
 */
function defaultWarps(blocksPerSm: number, enough: (warps: number) => boolean): number {
  let warps = 1;
  while (
    warps < MAX_WARPS && blocksPerSm * warps * 2 <= RESIDENT_WARPS_PER_SM && enough(2 * warps)
  ) warps *= 2;
  return warps;
}

let normLaunches = 0;

/**
 * Number of `_norm` kernel launches enqueued so far (to tell whether a wlinear with a folded
 * layer norm normalized x in the GEMV or ran the layer norm kernel first).
 */
export function wgemvNormLaunchCount(): number {
  return normLaunches;
}

/**
 * One run of the streaming GEMV: `y` (`[M, N]`, x's dtype) from `x` (`[M, K]`), the weight's
 * `codes` (`[N, K]`), the dequantize scales `swd` and the optional `bias` (x's dtype); with a
 * folded layer norm, x is the norm's input and `lnWeight` / `lnBias` (`[K]`, x's dtype) its
 * optional affine parameters; with a folded residual add, the `residual` (`[M, N]`, x's dtype)
 * added to the rounded result.
 */
export type StreamingGemv = (
  y: CudaBuffer,
  x: CudaBuffer,
  codes: CudaBuffer,
  swd: CudaBuffer,
  bias: CudaBuffer | undefined,
  lnWeight?: CudaBuffer,
  lnBias?: CudaBuffer,
  residual?: CudaBuffer,
) => void;

/**
 * The streaming GEMV of a `wlinear` op (`ctx`: inputs `[x, W, swq, swd, bias?]`) with `m` rows
 * of x, `n` outputs and `k` inputs, `qdtype` codes and the scale layout `index`; undefined
 * when the kernels do not cover the problem (see {@link wgemvShape}; also when the output or
 * bias dtype differs from x's). Lowering runs once per plan; the returned function enqueues one
 * kernel per run. `norm`: x is the input of a folded layer norm with this `eps` (its weight and
 * bias, of x's dtype, are passed per run). `warps`: see {@link wgemvShape}.
 */
export function streamingGemv(
  ctx: CudaKernelContext,
  m: number,
  n: number,
  k: number,
  qdtype: DType,
  index: WeightScaleIndex,
  norm?: { eps: number },
  warps?: number,
): StreamingGemv | undefined {
  const [xInfo, , , swdInfo, biasInfo] = ctx.inputs;
  const xDType = xInfo.dtype;
  if (xDType !== "float32" && xDType !== "float16" && xDType !== "bfloat16") return undefined;
  if (ctx.out.dtype !== xDType || (biasInfo && biasInfo.dtype !== xDType)) return undefined;
  const swdDType = swdInfo.dtype;
  if (swdDType !== "float32" && swdDType !== "float16" && swdDType !== "bfloat16") {
    return undefined;
  }
  const { device } = ctx;
  const shape = wgemvShape(
    m,
    n,
    k,
    qdtype,
    xDType,
    index,
    device.smCount,
    norm !== undefined,
    warps,
  );
  if (!shape) return undefined;
  const kernel = fn(device, shape.kernel);
  const staged = shape.norm;
  if (staged) {
    allowSharedBytes(kernel, staged.sharedBytes, SHARED_NO_OPT_IN - staged.staticBytes);
    preferSharedMemory(kernel);
  }
  const swdKind = FLOAT_KIND[swdDType];
  const act = activationCode("wlinear", String(ctx.attrs.activation ?? "none"));
  const grid: Dim3 = [shape.blocks, 1, 1];
  const block: Dim3 = [32 * shape.warps, 1, 1];
  const params = new KernelParams();
  return (y, x, codes, swd, bias, lnWeight, lnBias, residual) => {
    params.reset().ptr(y.address).ptr(x.address).ptr(codes.address).ptr(swd.address)
      .i32(swdKind).ptr(bias?.address ?? 0n).i32(act).i32(m).i32(n).i32(k).i64(index.sN)
      .i32(index.sK).i32(shape.scaleShift).ptr(residual?.address ?? 0n);
    if (staged) {
      params.ptr(lnWeight?.address ?? 0n).ptr(lnBias?.address ?? 0n).f32(norm!.eps)
        .i32(staged.lnThreads).i32(staged.pitch);
    }
    launch(device, kernel, grid, block, params, staged?.sharedBytes ?? 0);
    if (staged) normLaunches++;
  };
}
