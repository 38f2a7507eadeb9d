/**
 * The int8 GEMM of `qlinear` on Hopper tensor cores (kernels/wgmma_i8.cu) with the qlinear
 * epilogue fused: `y = act(Σ_k xq[m,k]·wq[n,k] · sxd · swd[n or 0] + b[n])`. float32 outputs
 * are formed in double and rounded once, bit-identical to cuBLASLt int32 products +
 * `qlinear_epilogue_i32_<out>`; float16 / bfloat16 outputs are formed in float32 and are within
 * one output ulp of that (see the kernel file).
 *
 * {@link wgmmaInt8Gemm} prepares one tile configuration for a problem (undefined when the device
 * or the problem does not qualify); {@link fastestWgmmaInt8Gemm} times every configuration once
 * on scratch operands and keeps the fastest, so a lowering can compare it with another path
 * timed by {@link timeLaunchMs}.
 * @module
 */
import {
  CU_TENSOR_MAP_ALIGNMENT,
  CU_TENSOR_MAP_DATA_TYPE_UINT8,
  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
  CU_TENSOR_MAP_INTERLEAVE_NONE,
  CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
  CU_TENSOR_MAP_SWIZZLE_128B,
  cuTensorMapEncodeTiled,
  hasTensorMaps,
  tensorMapBuffer,
} from "../../../ffi/cuda.ts";
import { CUDA_R_8I } from "../../../ffi/cublaslt.ts";
import {
  checkCuda,
  copyToDeviceAsync,
  createEvent,
  cudaEventDefault,
  cudart,
  cudaStreamCaptureStatusNone,
  eventElapsedMs,
  streamCaptureStatus,
} from "../../../ffi/cudart.ts";
import { ptx as wgmmaPtx } from "../../../kernels/ptx/wgmma_i8.ts";
import type { DType } from "../../dtype.ts";
import type { CudaDevice } from "./device.ts";
import { kernelFunction, KernelParams, launch } from "./kernels.ts";
import { randomOperandBytes } from "./cublaslt.ts";
import { CudaBuffer } from "./memory.ts";
import {
  ACT_GELU_TANH,
  ACT_NONE,
  ACT_RELU,
  allowSharedBytes,
  FLOAT_NAME,
  type FloatDType,
  floatKindOf,
  INT32_MAX,
  memsetAsync,
} from "./util.ts";

/** A tile configuration of the kernels: `BM × BN` outputs per tile, pipeline depth. */
export interface WgmmaTile {
  /** Tile rows (cooperative: two consumer warpgroups of BM / 2 rows; ping-pong: one of BM). */
  bm: number;
  /** Tile columns. */
  bn: number;
  /** Pipeline stages of 128 bytes of K. */
  stages: number;
  /**
   * Ping-pong: each consumer warpgroup takes whole tiles and the two alternate on the tensor
   * cores, one's epilogue overlapping the other's main loop (else both share every tile).
   */
  pingPong: boolean;
}

/** The kernels' tile configurations by variant name (kernels/wgmma_i8.cu WGMMA_I8_TILE). */
export const WGMMA_TILES: Readonly<Record<string, WgmmaTile>> = {
  "128x256": { bm: 128, bn: 256, stages: 4, pingPong: false },
  "256x128": { bm: 256, bn: 128, stages: 4, pingPong: false },
  "128x192": { bm: 128, bn: 192, stages: 5, pingPong: false },
  "128x128": { bm: 128, bn: 128, stages: 6, pingPong: false },
  "128x64": { bm: 128, bn: 64, stages: 8, pingPong: false },
  "pp128x128": { bm: 128, bn: 128, stages: 6, pingPong: true },
  "pp64x256": { bm: 64, bn: 256, stages: 4, pingPong: true },
};

const THREADS = 384;
const BK = 128;
/** Dynamic shared memory a kernel may use without opting in. */
const DEFAULT_SHARED = 48 * 1024;

/** Dynamic shared memory of a tile configuration (kernels/wgmma_i8.cu Cfg::SMEM). */
export function wgmmaSharedBytes(tile: WgmmaTile): number {
  return 1024 + tile.stages * (tile.bm + tile.bn) * BK + 256 + 2 * 2 * tile.bn * 8 + 8 * 16 * 144;
}

/** A qlinear int8 product with its epilogue. */
export interface WgmmaInt8Problem {
  /** Rows of x and y. */
  m: number;
  /** Output channels (rows of W, columns of y; even, a multiple of 8 for 16-bit outputs). */
  n: number;
  /** Input features (a multiple of 16). */
  k: number;
  /** y's dtype. */
  outDType: FloatDType;
  /** swd has one scale per output channel (else one scale). */
  perChannel: boolean;
  /** Kind of the input dequant scale buffer: 0 float32, 1 float16, 2 bfloat16. */
  sxdKind: number;
  /** Kind of the weight dequant scale buffer: 0 float32, 1 float16, 2 bfloat16. */
  swdKind: number;
  /** The bias's dtype (float32, float16 or bfloat16); undefined: no bias. */
  biasDType?: DType;
  /** Activation code: 0 none, 1 relu, 3 gelu (tanh form; 16-bit outputs only). */
  act: number;
  /** Runs will add a residual in the epilogue (timed with one). */
  residual?: boolean;
}

/** A prepared fused int8 GEMM. */
export interface Int8GemmKernel {
  /** Tile configuration name (a key of {@link WGMMA_TILES}). */
  readonly variant: string;
  /**
   * Enqueues `y = act(xq · wqᵀ · sxd · swd + bias)` on the device's stream. Addresses: `y`
   * `[M, N]` of the output dtype, `xq` int8 `[M, K]`, `wq` int8 `[N, K]` (both 16-byte aligned),
   * `sxd` one scale, `swd` N scales (or one), `bias` N values or `0n` (only when the problem
   * has no bias). With `residual` (`[M, N]` of the output dtype, 16-byte aligned; default `0n`,
   * none) the kernel stores `round(round(y) + residual)`, the unfused residual add.
   */
  run(
    y: bigint,
    xq: bigint,
    wq: bigint,
    sxd: bigint,
    swd: bigint,
    bias: bigint,
    residual?: bigint,
  ): void;
}

/** Why `p` cannot run on the fused kernels of `device`, or undefined when it can. */
export function wgmmaInt8Unsupported(device: CudaDevice, p: WgmmaInt8Problem): string | undefined {
  const [major, minor] = device.computeCapability;
  if (major !== 9 || minor !== 0) return `compute capability ${major}.${minor} is not 9.0`;
  if (!hasTensorMaps()) return "the driver has no tensor maps";
  if (p.m < 1 || p.n < 1 || p.k < 16) return "empty problem";
  if (p.k % 16 !== 0) return "K is not a multiple of 16";
  if (p.m > INT32_MAX || p.n > INT32_MAX || p.k > INT32_MAX) return "too large";
  if (p.outDType === "float32" ? p.n % 2 !== 0 : p.n % 8 !== 0) {
    return p.outDType === "float32" ? "N is odd" : "N is not a multiple of 8";
  }
  if (p.act === ACT_GELU_TANH) {
    if (p.outDType === "float32") return "gelu with a float32 output";
  } else if (p.act !== ACT_NONE && p.act !== ACT_RELU) {
    return "activation other than none, relu or gelu (tanh)";
  }
  if (p.biasDType !== undefined && floatKindOf(p.biasDType) === undefined) return "bias dtype";
  if (![p.sxdKind, p.swdKind].every((kind) => kind === 0 || kind === 1 || kind === 2)) {
    return "scale kind";
  }
  return undefined;
}

/** An estimate of a tile configuration's time on a problem (arbitrary units): full waves of
 * tiles weighted by the tile's area over its main-loop efficiency. */
function estimate(tile: WgmmaTile, p: WgmmaInt8Problem, sms: number): number {
  const tiles = Math.ceil(p.m / tile.bm) * Math.ceil(p.n / tile.bn);
  const efficiency = Math.min(tile.bm, tile.bn) >= 128 ? (tile.bn >= 192 ? 1 : 0.92) : 0.75;
  const kBlocks = Math.ceil(p.k / BK);
  // Each tile also pays a prologue / epilogue of about two k-blocks, mostly hidden behind the
  // other warpgroup's main loop in ping-pong.
  const overhead = tile.pingPong ? 0.5 : 2;
  return Math.ceil(tiles / sms) * tile.bm * tile.bn * (kBlocks + overhead) / efficiency;
}

/** The variant {@link wgmmaInt8Gemm} takes without timing: the smallest estimate. */
export function defaultWgmmaVariant(device: CudaDevice, p: WgmmaInt8Problem): string {
  let best = "128x256";
  let bestCost = Infinity;
  for (const [name, tile] of Object.entries(WGMMA_TILES)) {
    const cost = estimate(tile, p, device.smCount);
    if (cost < bestCost) {
      bestCost = cost;
      best = name;
    }
  }
  return best;
}

class WgmmaInt8Gemm implements Int8GemmKernel {
  readonly variant: string;
  readonly #device: CudaDevice;
  readonly #fn: Deno.PointerValue;
  readonly #tile: WgmmaTile;
  readonly #p: WgmmaInt8Problem;
  readonly #params = new KernelParams(24);
  readonly #grid: [number, number, number];
  readonly #shared: number;
  readonly #tilesM: number;
  readonly #tilesN: number;
  readonly #biasKind: number;
  // Tensor maps of the last x and W addresses (x moves between calls: pool allocations).
  readonly #xMap = tensorMapBuffer();
  readonly #wMap = tensorMapBuffer();
  #xAddress = -1n;
  #wAddress = -1n;

  constructor(device: CudaDevice, p: WgmmaInt8Problem, variant: string) {
    this.variant = variant;
    this.#device = device;
    this.#p = { ...p };
    this.#tile = WGMMA_TILES[variant];
    this.#fn = kernelFunction(
      device,
      wgmmaPtx,
      `wgmma_i8_${variant}_${FLOAT_NAME[p.outDType]}${p.act === ACT_GELU_TANH ? "_gelu_tanh" : ""}`,
    );
    this.#shared = wgmmaSharedBytes(this.#tile);
    allowSharedBytes(this.#fn, this.#shared, DEFAULT_SHARED);
    this.#tilesM = Math.ceil(p.m / this.#tile.bm);
    this.#tilesN = Math.ceil(p.n / this.#tile.bn);
    this.#grid = [Math.min(this.#tilesM * this.#tilesN, device.smCount), 1, 1];
    this.#biasKind = p.biasDType === undefined ? 0 : floatKindOf(p.biasDType) ?? 0;
  }

  #encode(target: Uint8Array<ArrayBuffer>, address: bigint, rows: number, boxRows: number): void {
    cuTensorMapEncodeTiled({
      dataType: CU_TENSOR_MAP_DATA_TYPE_UINT8,
      globalAddress: address,
      globalDims: [this.#p.k, rows],
      globalStrides: [this.#p.k],
      boxDims: [BK, boxRows],
      interleave: CU_TENSOR_MAP_INTERLEAVE_NONE,
      swizzle: CU_TENSOR_MAP_SWIZZLE_128B,
      l2Promotion: CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      oobFill: CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
    }, target);
  }

  run(
    y: bigint,
    xq: bigint,
    wq: bigint,
    sxd: bigint,
    swd: bigint,
    bias: bigint,
    residual: bigint = 0n,
  ): void {
    const p = this.#p;
    if (xq !== this.#xAddress) {
      this.#encode(this.#xMap, xq, p.m, this.#tile.bm);
      this.#xAddress = xq;
    }
    if (wq !== this.#wAddress) {
      this.#encode(this.#wMap, wq, p.n, this.#tile.bn);
      this.#wAddress = wq;
    }
    const hasBias = p.biasDType !== undefined;
    const params = this.#params.reset()
      .bytes(this.#xMap, CU_TENSOR_MAP_ALIGNMENT)
      .bytes(this.#wMap, CU_TENSOR_MAP_ALIGNMENT)
      .ptr(y).ptr(sxd).i32(p.sxdKind).ptr(swd).i32(p.swdKind).i32(p.perChannel ? 1 : 0)
      .ptr(hasBias ? bias : 0n).i32(this.#biasKind).i32(p.act)
      .i32(p.m).i32(p.n).i32(p.k).i32(this.#tilesM).i32(this.#tilesN)
      .i32(Math.max(1, Math.floor(2048 / this.#tile.bm))).ptr(residual);
    launch(this.#device, this.#fn, this.#grid, [THREADS, 1, 1], params, this.#shared);
  }
}

/**
 * Prepares the fused int8 GEMM for `p` with tile configuration `variant` (default: the
 * estimate's pick, {@link defaultWgmmaVariant}); undefined when the device is not sm_90, the
 * driver has no tensor maps, or the problem does not qualify (K not a multiple of 16, N odd or,
 * for 16-bit outputs, not a multiple of 8,
 * an activation other than none, relu or gelu (tanh; 16-bit outputs), a non-float bias).
 */
export function wgmmaInt8Gemm(
  device: CudaDevice,
  p: WgmmaInt8Problem,
  variant?: string,
): Int8GemmKernel | undefined {
  if (wgmmaInt8Unsupported(device, p) !== undefined) return undefined;
  const name = variant ?? defaultWgmmaVariant(device, p);
  if (!(name in WGMMA_TILES)) return undefined;
  return new WgmmaInt8Gemm(device, p, name);
}

const timingEvents = new Map<number, [Deno.PointerValue, Deno.PointerValue]>();

/**
 * Milliseconds `run` (work enqueued on the device's stream) takes: one untimed run (warm-up,
 * lazy loading), then the fastest of `repeats` runs between CUDA events. Synchronizes the
 * stream: not during a graph capture.
 */
export function timeLaunchMs(device: CudaDevice, run: () => void, repeats: number = 3): number {
  let events = timingEvents.get(device.index);
  if (!events) {
    events = [createEvent(cudaEventDefault), createEvent(cudaEventDefault)];
    timingEvents.set(device.index, events);
  }
  const [start, end] = events;
  run();
  let best = Infinity;
  for (let i = 0; i < Math.max(1, repeats); i++) {
    checkCuda(cudart().cudaEventRecord(start, device.stream), "cudaEventRecord");
    run();
    checkCuda(cudart().cudaEventRecord(end, device.stream), "cudaEventRecord");
    device.synchronize();
    best = Math.min(best, eventElapsedMs(start, end));
  }
  return best;
}

/**
 * Scratch operands of a problem: x and W hold seeded pseudo-random codes (the tensor cores' time
 * and power depend on the data, so constant operands would time unlike real ones); the output,
 * scales, biases and residual are bytes 0x3c (small finite values).
 */
function scratchOperands(device: CudaDevice, p: WgmmaInt8Problem): CudaBuffer[] {
  const sizes = [p.m * p.k, p.n * p.k, p.m * p.n * 4, 16, Math.max(p.n, 4) * 4, p.n * 4];
  if (p.residual) sizes.push(p.m * p.n * 4);
  return sizes.map((bytes, i) => {
    const buf = CudaBuffer.allocate(device, "int8", Math.max(bytes, 16));
    if (i < 2) {
      const codes = randomOperandBytes(CUDA_R_8I, buf.bytes, (i + 1) * 2654435761);
      copyToDeviceAsync(buf.pointer, codes, device.stream);
    } else {
      memsetAsync(device, buf.address, 0x3c, buf.bytes);
    }
    return buf;
  });
}

/** The fastest fused configuration of a problem and its time. */
export interface TimedInt8Gemm {
  /** The prepared kernel. */
  kernel: Int8GemmKernel;
  /** Its time on scratch operands, in milliseconds (NaN when not timed). */
  ms: number;
}

/** Timing rounds over the tile configurations in {@link fastestWgmmaInt8Gemm}. */
const TIMING_ROUNDS = 4;

/**
 * Prepares every tile configuration of `p` (the candidates: `variants`, default all), times
 * each on scratch operands ({@link timeLaunchMs}) and returns the fastest with its time;
 * undefined when `p` does not qualify (see {@link wgmmaInt8Gemm}). During a CUDA graph capture
 * nothing is timed: the estimate's pick is returned with `ms` NaN.
 */
export function fastestWgmmaInt8Gemm(
  device: CudaDevice,
  p: WgmmaInt8Problem,
  variants: readonly string[] = Object.keys(WGMMA_TILES),
): TimedInt8Gemm | undefined {
  if (wgmmaInt8Unsupported(device, p) !== undefined) return undefined;
  const names = variants.filter((v) => v in WGMMA_TILES);
  if (names.length === 0) return undefined;
  if (streamCaptureStatus(device.stream) !== cudaStreamCaptureStatusNone) {
    const kernel = wgmmaInt8Gemm(device, p, defaultWgmmaVariant(device, p));
    return kernel && { kernel, ms: NaN };
  }
  const scratch = scratchOperands(device, p);
  try {
    const [x, w, y, sx, sw, b, r] = scratch.map((s) => s.address);
    // Round robin, best of each: GPU clocks still rising while the first variants run would
    // otherwise favour the last ones.
    const timed = names.map((name) => ({
      kernel: new WgmmaInt8Gemm(device, p, name),
      ms: Infinity,
    }));
    for (let round = 0; round < TIMING_ROUNDS; round++) {
      for (const t of timed) {
        const run = () => t.kernel.run(y, x, w, sx, sw, b, r ?? 0n);
        t.ms = Math.min(t.ms, timeLaunchMs(device, run, 2));
      }
    }
    return timed.reduce((a, b) => (b.ms < a.ms ? b : a));
  } finally {
    for (const s of scratch) s.dispose();
  }
}
