/**
 * CUDA lowerings of `quantize`, `dequantize` and `checkScale` (kernels in kernels/quantize.cu;
 * rules and attrs in lib/ops/quantize.ts). The first two compute the CPU kernels' function bit
 * for bit: a true float32 division (or product), round half to even, saturation; int4 is packed
 * two per byte.
 *
 * One kernel per (op, mode, input dtype, output dtype); the scale's dtype (float32 or the
 * float side's dtype) is a launch argument. The kernels are grid-stride loops in which each
 * thread handles 16 elements a step as coalesced 16-byte vectors, launched as one resident
 * wave: blocks of 256 threads, as many per SM as the kernel's `__launch_bounds__` guarantee.
 * Per-tensor quantize streams through a shared-memory ring of asynchronous copies (48 KB a
 * block, see kernels/quantize.cu).
 * @module
 */
import { deviceAttribute } from "../../../ffi/cudart.ts";
import { ptx as quantizePtx } from "../../../kernels/ptx/quantize.ts";
import type { DType } from "../../dtype.ts";
import { TensorqError } from "../../errors.ts";
import { badScaleError } from "../../ops/quantize.ts";
import { numel } from "../../shape.ts";
import { deferCheck, flagCheck } from "./deferred_checks.ts";
import type { CudaDevice } from "./device.ts";
import {
  type CudaKernelContext,
  type CudaLowered,
  type Dim3,
  kernelFunction,
  KernelParams,
  launch,
  registerCudaKernel,
} from "./kernels.ts";
import { CudaBuffer } from "./memory.ts";
import { floatKindOf, memsetAsync, preferSharedMemory } from "./util.ts";

/** Threads per block; kernels/quantize.cu's `__launch_bounds__` assume it. */
const THREADS = 256;
/** Elements a thread handles per grid-stride step. */
const CHUNK = 16;
/** The longest dimension block-wise kernels take blocks along (32-bit positions). */
const MAX_BLOCK_EXTENT = 2 ** 31 - 1;
/** `cudaDevAttrMaxThreadsPerMultiProcessor`. */
const MAX_THREADS_PER_SM_ATTRIBUTE = 39;
/** 16-byte vectors a thread loads per step of the per-tensor quantize kernels (FAST_VECTORS). */
const FAST_VECTORS = 4;
/** Steps in a thread's shared-memory ring (ASYNC_STAGES in kernels/quantize.cu). */
const ASYNC_STAGES = 3;
/** Blocks per SM of the per-tensor quantize kernels (their `__launch_bounds__`). */
const FAST_BLOCKS_PER_SM = 4;
/** Blocks per SM of the plain grid-stride per-tensor quantize kernels (`_v0`). */
const V0_BLOCKS_PER_SM = 5;

const SHORT_NAMES: Partial<Record<DType, string>> = {
  float32: "f32",
  float16: "f16",
  bfloat16: "bf16",
  int8: "i8",
  int4: "i4",
  float8e4m3: "fp8",
};

/** A quantization mode as recorded in the op's attrs. */
export type QuantizeMode = "tensor" | "channel" | "block";

/**
 * The kernel of kernels/quantize.cu that computes one op, e.g. `quantize_tensor_f32_i8` or
 * `dequantize_block_i4_bf16`.
 *
 * @param op `"quantize"` or `"dequantize"`.
 * @param mode The scale mode.
 * @param input The dtype of the op's first input.
 * @param output The op's output dtype.
 * @returns The kernel name.
 * @throws {TensorqError} kind `unsupported` for a combination no kernel computes.
 */
export function quantizeKernelName(
  op: "quantize" | "dequantize",
  mode: QuantizeMode,
  input: DType,
  output: DType,
): string {
  const floatSide = op === "quantize" ? input : output;
  const quantSide = op === "quantize" ? output : input;
  const supported = floatKindOf(floatSide) !== undefined &&
    ["int8", "int4", "float8e4m3"].includes(quantSide) &&
    ["tensor", "channel", "block"].includes(mode) &&
    !(mode === "block" && quantSide === "float8e4m3");
  if (!supported) {
    throw new TensorqError("no CUDA kernel for this combination", {
      op,
      kind: "unsupported",
      expected: "float32/float16/bfloat16 ↔ int8/int4/float8e4m3, per-tensor, per-channel or " +
        "block-wise (block-wise for int8/int4 only)",
      actual: `${input} → ${output}, mode ${JSON.stringify(mode)}`,
    });
  }
  return `${op}_${mode}_${SHORT_NAMES[input]}_${SHORT_NAMES[output]}`;
}

/**
 * Per-tensor quantize kernels of kernels/quantize.cu: `"default"` (the one the op runs), and,
 * for float32 → int8, float32 → float8e4m3 and bfloat16 → float8e4m3 only, `"v0"` (the plain
 * grid-stride kernel it replaced) and `"v1"` (registers instead of the shared-memory ring).
 */
export type QuantizeTensorVariant = "default" | "v0" | "v1";

/** How a per-tensor quantize kernel is launched. */
export interface QuantizeTensorLaunch {
  /** Kernel name, e.g. `quantize_tensor_f32_i8` or `quantize_tensor_f32_i8_v0`. */
  name: string;
  /** Blocks (one resident wave at most). */
  blocks: number;
  /** Threads per block. */
  threads: number;
  /** Dynamic shared memory bytes per block. */
  sharedBytes: number;
}

/**
 * The launch of per-tensor quantize of `n` elements from `input` to `output` on a device with
 * `smCount` multiprocessors of `threadsPerSm` threads each.
 *
 * @param variant Which kernel (see {@link QuantizeTensorVariant}).
 * @returns The kernel name and launch shape.
 * @throws {TensorqError} kind `unsupported` for a combination no kernel computes.
 */
export function quantizeTensorLaunch(
  input: DType,
  output: DType,
  n: number,
  smCount: number,
  threadsPerSm: number,
  variant: QuantizeTensorVariant = "default",
): QuantizeTensorLaunch {
  const base = quantizeKernelName("quantize", "tensor", input, output);
  const perSmLimit = Math.max(1, Math.floor(threadsPerSm / THREADS));
  if (variant === "v0") {
    const needed = Math.ceil(Math.ceil(n / CHUNK) / THREADS);
    const blocks = Math.min(needed, smCount * Math.min(V0_BLOCKS_PER_SM, perSmLimit));
    return { name: `${base}_v0`, blocks: Math.max(1, blocks), threads: THREADS, sharedBytes: 0 };
  }
  // Elements per 16-byte vector, and vectors per block step (8 warps of 32 lanes).
  const perVector = input === "float32" ? 4 : 8;
  const needed = Math.ceil(n / (perVector * FAST_VECTORS * THREADS));
  const blocks = Math.max(1, Math.min(needed, smCount * Math.min(FAST_BLOCKS_PER_SM, perSmLimit)));
  const sharedBytes = variant === "v1" ? 0 : ASYNC_STAGES * FAST_VECTORS * 16 * THREADS;
  return { name: variant === "v1" ? `${base}_v1` : base, blocks, threads: THREADS, sharedBytes };
}

/** The fastest measured per-tensor kernel of the conversions benchmarked side by side. */
const FASTEST_VARIANT = new Map<string, QuantizeTensorVariant>([
  ["float32>int8", "v1"],
  ["float32>float8e4m3", "v1"],
  ["bfloat16>float8e4m3", "v0"],
]);

const threadsPerSm = new Map<number, number>();

/** The device's thread limit per SM (cached). */
export function maxThreadsPerSm(device: CudaDevice): number {
  let limit = threadsPerSm.get(device.index);
  if (limit === undefined) {
    limit = deviceAttribute(MAX_THREADS_PER_SM_ATTRIBUTE, device.index);
    threadsPerSm.set(device.index, limit);
  }
  return limit;
}

/**
 * Blocks per SM to launch: what the kernel's `__launch_bounds__` minimum guarantees (see the
 * entry points of kernels/quantize.cu), capped by what the device's thread limit allows.
 */
function blocksPerSm(
  device: CudaDevice,
  op: string,
  mode: QuantizeMode,
  quantized: DType,
): number {
  // Per-tensor quantize has its own launch (quantizeTensorLaunch).
  const wanted = mode !== "tensor" ? 3 : op === "quantize" ? 5 : quantized === "float8e4m3" ? 6 : 8;
  return Math.max(1, Math.min(wanted, Math.floor(maxThreadsPerSm(device) / THREADS)));
}

function lowerQuantize(op: "quantize" | "dequantize", ctx: CudaKernelContext): CudaLowered {
  const [x, scale] = ctx.inputs;
  const mode = ctx.attrs.mode as QuantizeMode;
  const name = quantizeKernelName(op, mode, x.dtype, ctx.out.dtype);
  const scaleKind = floatKindOf(scale.dtype);
  if (scaleKind === undefined) {
    throw new TensorqError("unsupported scale dtype", {
      op,
      kind: "dtype",
      argument: "scale",
      expected: "float32, float16 or bfloat16",
      actual: scale.dtype,
    });
  }
  const n = numel(x.shape);
  if (n === 0) return () => {};
  // Per-channel: index (i / inner) % extent; block-wise, with t = i / inner:
  // ((t / extent) * ceil(extent / block) + (t % extent) / block) * inner + i % inner, the last
  // block of a row possibly shorter (see kernels/quantize.cu).
  let inner = 1;
  let extent = 1;
  let block = 1;
  if (mode !== "tensor") {
    const dim = ctx.attrs.dim as number;
    extent = x.shape[dim];
    for (let i = dim + 1; i < x.shape.length; i++) inner *= x.shape[i];
    if (mode === "block") {
      // The block walker keeps positions along dim in 32 bits. A block longer than the axis
      // is one block per row, as a block of exactly its length.
      if (extent > MAX_BLOCK_EXTENT) {
        throw new TensorqError("block-wise quantization along a dimension this long", {
          op,
          kind: "unsupported",
          argument: "x",
          expected: `x.shape[${dim}] of at most ${MAX_BLOCK_EXTENT} on CUDA`,
          actual: String(extent),
        });
      }
      block = Math.min(ctx.attrs.blockSize as number, extent);
    }
  }
  const device = ctx.device;
  const params = new KernelParams(8);
  if (op === "quantize" && mode === "tensor") {
    // Measured side by side on an H200 at 2^28 elements (bench/RESULTS.md): for float32
    // inputs the register-pipelined kernel (v1) was fastest (320.7 µs vs 338.1 for the
    // cp.async ring and 344.4 for grid-stride v0, float32 → int8); for bfloat16 → fp8 v0 was.
    const variant = FASTEST_VARIANT.get(`${x.dtype}>${ctx.out.dtype}`) ?? "default";
    const shape = quantizeTensorLaunch(
      x.dtype,
      ctx.out.dtype,
      n,
      device.smCount,
      maxThreadsPerSm(device),
      variant,
    );
    const fast = kernelFunction(device, quantizePtx, shape.name);
    preferSharedMemory(fast);
    const fastGrid: Dim3 = [shape.blocks, 1, 1];
    const fastThreads: Dim3 = [shape.threads, 1, 1];
    return (out, inputs) => {
      params.reset().ptr(out.address).ptr(inputs[0].address).ptr(inputs[1].address)
        .i32(scaleKind).i64(n).i64(1).i64(1).i64(1);
      launch(device, fast, fastGrid, fastThreads, params, shape.sharedBytes);
    };
  }
  const fn = kernelFunction(device, quantizePtx, name);
  const needed = Math.ceil(Math.ceil(n / CHUNK) / THREADS);
  const quantized = op === "quantize" ? ctx.out.dtype : x.dtype;
  const perSm = blocksPerSm(device, op, mode, quantized);
  const blocks = Math.max(1, Math.min(needed, device.smCount * perSm));
  const grid: Dim3 = [blocks, 1, 1];
  const threads: Dim3 = [THREADS, 1, 1];
  return (out, inputs) => {
    params.reset()
      .ptr(out.address)
      .ptr(inputs[0].address)
      .ptr(inputs[1].address)
      .i32(scaleKind)
      .i64(n)
      .i64(inner)
      .i64(extent)
      .i64(block);
    launch(device, fn, grid, threads, params);
  };
}

registerCudaKernel("quantize", (ctx) => lowerQuantize("quantize", ctx));
registerCudaKernel("dequantize", (ctx) => lowerQuantize("dequantize", ctx));

// ---------------------------------------------------------------------------------------
// checkScale: the scale copied through; a value that is not positive and finite is recorded
// in a 16-byte device flag (`ScaleFlag` in kernels/quantize.cu: int64 position, -1 for none,
// then the float32 value) and raised at the next read.

/** Threads of the single `check_scale` block (its `__launch_bounds__`). */
const CHECK_SCALE_THREADS = 1024;

registerCudaKernel("checkScale", (ctx) => {
  const device = ctx.device;
  const n = numel(ctx.out.shape);
  const kind = floatKindOf(ctx.out.dtype);
  if (kind === undefined) {
    throw new TensorqError("unsupported scale dtype", {
      op: "checkScale",
      kind: "dtype",
      expected: "float32, float16 or bfloat16",
      actual: ctx.out.dtype,
    });
  }
  const op = ctx.attrs.op as string;
  const flag = CudaBuffer.allocate(device, "int64", 2);
  memsetAsync(device, flag.address, 0xff, 8);
  const check = flagCheck(
    device,
    flag.address,
    (position, detail) => badScaleError(op, detail.getFloat32(0, true), Number(position), n),
  );
  const fn = kernelFunction(device, quantizePtx, "check_scale");
  const params = new KernelParams(5);
  return (out, [scale]) => {
    if (n === 0) return;
    params.reset().ptr(out.address).ptr(scale.address).i32(kind).i64(n).ptr(flag.address);
    launch(device, fn, [1, 1, 1], [CHECK_SCALE_THREADS, 1, 1], params);
    deferCheck(check);
  };
});
