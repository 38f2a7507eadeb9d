/**
 * CUDA lowerings of softmax, log-softmax and layer norm (kernels in kernels/nn.cu, rules in
 * lib/ops/nn.ts).
 *
 * Contiguous rows (softmax along the last axis, layer norm's trailing block) of up to 1024
 * elements run a warp per row with the row in registers; longer rows (and scalar rows over
 * 256 elements whose length is not a multiple of the 16-byte vector) run a block per row,
 * caching the row in shared memory when it fits in 47 KiB. Softmax along another axis runs a
 * thread per column.
 *
 * {@link layerNormCodes} launches the layer norm of a `qlinear`'s input folded into it
 * (lib/backends/cuda/linear.ts): the same kernel variant as the layer norm op's for the same
 * rows, storing int8 or e4m3 codes of the normalized values instead of the values.
 * @module
 */
import { ptx as nnPtx } from "../../../kernels/ptx/nn.ts";
import type { DType } from "../../dtype.ts";
import { TensorqError } from "../../errors.ts";
import { numel } from "../../shape.ts";
import {
  BLOCK,
  type CudaKernelContext,
  type CudaLaunch,
  grid1d,
  kernelFunction,
  KernelParams,
  launch,
  registerCudaKernel,
} from "./kernels.ts";
import type { CudaDevice } from "./device.ts";
import type { CudaBuffer } from "./memory.ts";
import { FLOAT_NAME, nextPow2 } from "./util.ts";

/** Longest row a warp handles (32 lanes × 32 values). */
const WARP_MAX = 1024;
/** Longest row the scalar warp kernels handle (32 lanes × 8 values). */
const WARP_SCALAR_MAX = 256;
/**
 * Dynamic shared memory a block kernel may use for its row cache: the 48 KiB a block gets
 * without opting in, less room for the kernels' static scratch.
 */
const SHARED_LIMIT = 47 * 1024;

/** Which kernel variant handles rows of one length. */
export interface RowKernel {
  /** `warp`: a warp per row, `block`: a block per row. */
  kind: "warp" | "block";
  /** Kernel name suffix: `warp_v16`, `warp_s4`, `block_v`, `block_s`. */
  variant: string;
  /** Warps per block (warp kernels) or threads per block (block kernels). */
  block: readonly [number, number, number];
  /** Grid for `rows` rows. */
  grid: readonly [number, number, number];
  /** Block kernels: whether the row is cached in shared memory. */
  cached: boolean;
  /** Dynamic shared memory in bytes. */
  sharedBytes: number;
}

/**
 * Chooses the kernel for `rows` contiguous rows of `length` elements of a dtype with
 * `elementBytes` bytes, on a device with `smCount` multiprocessors.
 */
export function rowKernel(
  rows: number,
  length: number,
  elementBytes: number,
  smCount: number,
): RowKernel {
  const vec = 16 / elementBytes;
  const vector = length % vec === 0;
  if (length <= WARP_MAX && (vector || length <= WARP_SCALAR_MAX)) {
    // Values per lane: a power of two covering the row (at least one vector when vectorized).
    const perLane = Math.max(vector ? vec : 1, nextPow2(Math.ceil(length / 32)));
    const grid = Math.max(1, Math.min(Math.ceil(rows / 4), smCount * 16));
    return {
      kind: "warp",
      variant: `warp_${vector ? "v" : "s"}${perLane}`,
      block: [128, 1, 1],
      grid: [grid, 1, 1],
      cached: false,
      sharedBytes: 0,
    };
  }
  const chunks = vector ? length / vec : length;
  const threads = Math.min(512, Math.max(128, nextPow2(Math.ceil(chunks / 4))));
  const cached = length * 4 <= SHARED_LIMIT;
  const grid = Math.max(1, Math.min(rows, smCount * (2048 / threads)));
  return {
    kind: "block",
    variant: `block_${vector ? "v" : "s"}`,
    block: [threads, 1, 1],
    grid: [grid, 1, 1],
    cached,
    sharedBytes: cached ? length * 4 : 0,
  };
}

/**
 * Threads the layer-norm kernel for `rows` rows of `length` elements gives a row (32: a warp per
 * row; else its block size), or undefined when it is a scalar variant. Kernels that normalize x
 * themselves (the `_norm` GEMVs) sum in this kernel's order, so they need it to be a vector
 * variant (16-byte vectors).
 */
export function layerNormThreads(
  rows: number,
  length: number,
  elementBytes: number,
  smCount: number,
): number | undefined {
  const ln = rowKernel(rows, length, elementBytes, smCount);
  if (!ln.variant.startsWith(`${ln.kind}_v`)) return undefined;
  return ln.kind === "warp" ? 32 : ln.block[0];
}

function suffixOf(op: string, dtype: DType): string {
  const suffix = (FLOAT_NAME as Partial<Record<DType, string>>)[dtype];
  if (suffix === undefined) {
    throw new TensorqError(`no cuda kernel for ${op} on ${dtype}`, {
      op,
      kind: "unsupported",
      argument: "x",
      actual: dtype,
    });
  }
  return suffix;
}

function elementBytes(dtype: DType): number {
  return dtype === "float32" ? 4 : 2;
}

function lowerSoftmax(op: string, ctx: CudaKernelContext): CudaLaunch {
  const { shape, dtype } = ctx.inputs[0];
  const suffix = suffixOf(op, dtype);
  const n = numel(shape);
  if (n === 0) return () => {};
  const log = op === "logSoftmax" ? 1 : 0;
  const axis = ctx.attrs.axis as number;
  // A rank-0 input is one row of length 1.
  const length = shape.length === 0 ? 1 : shape[axis];
  const inner = numel(shape.slice(axis + 1));
  const outer = numel(shape.slice(0, axis));
  const device = ctx.device;
  const params = new KernelParams(8);

  if (inner > 1) {
    const fn = kernelFunction(device, nnPtx, `softmax_${suffix}_cols`);
    const grid = grid1d(device, outer * inner);
    return (out, [x]) => {
      params.reset().ptr(x.address).ptr(out.address).i64(outer).i64(length).i64(inner).i32(log);
      launch(device, fn, grid, [BLOCK, 1, 1], params);
    };
  }
  const rows = outer;
  const k = rowKernel(rows, length, elementBytes(dtype), device.smCount);
  const fn = kernelFunction(device, nnPtx, `softmax_${suffix}_${k.variant}`);
  if (k.kind === "warp") {
    return (out, [x]) => {
      params.reset().ptr(x.address).ptr(out.address).i64(rows).i32(length).i32(log);
      launch(device, fn, k.grid, k.block, params);
    };
  }
  return (out, [x]) => {
    params.reset().ptr(x.address).ptr(out.address).i64(rows).i64(length).i32(log)
      .i32(k.cached ? 1 : 0);
    launch(device, fn, k.grid, k.block, params, k.sharedBytes);
  };
}

for (const op of ["softmax", "logSoftmax"]) {
  registerCudaKernel(op, (ctx) => lowerSoftmax(op, ctx));
}

/** A layer-norm kernel for `rows` rows of `d` elements, and how to launch it. */
interface LayerNormKernel {
  fn: Deno.PointerValue;
  k: RowKernel;
}

/**
 * The layer-norm kernel `<prefix>_<suffix>_<variant>` for `rows` rows of `d` elements of
 * `dtype`: the layer norm op and the quantizing layer norm choose the variant alike, so a row
 * is reduced in the same order by both.
 */
function layerNormKernel(
  device: CudaDevice,
  prefix: string,
  dtype: DType,
  rows: number,
  d: number,
): LayerNormKernel {
  const k = rowKernel(rows, d, elementBytes(dtype), device.smCount);
  return { fn: kernelFunction(device, nnPtx, `${prefix}_${k.variant}`), k };
}

/** Appends the shape arguments of a layer-norm kernel and launches it. */
function launchLayerNorm(
  device: CudaDevice,
  { fn, k }: LayerNormKernel,
  params: KernelParams,
  d: number,
  eps: number,
  extra: (p: KernelParams) => void,
): void {
  if (k.kind === "warp") {
    params.i32(d).f32(eps);
  } else {
    params.i64(d).f32(eps).i32(k.cached ? 1 : 0);
  }
  extra(params);
  launch(device, fn, k.grid, k.block, params, k.sharedBytes);
}

registerCudaKernel("layerNorm", (ctx): CudaLaunch => {
  const op = "layerNorm";
  const { shape, dtype } = ctx.inputs[0];
  const suffix = suffixOf(op, dtype);
  const n = numel(shape);
  const d = numel(shape.slice(shape.length - (ctx.attrs.dims as number)));
  if (n === 0 || d === 0) return () => {};
  const rows = n / d;
  const hasWeight = ctx.attrs.hasWeight as boolean;
  const hasBias = ctx.attrs.hasBias as boolean;
  const biasIndex = hasWeight ? 2 : 1;
  const eps = ctx.attrs.eps as number;
  const device = ctx.device;
  const kernel = layerNormKernel(device, `layer_norm_${suffix}`, dtype, rows, d);
  const params = new KernelParams(10);
  return (out, inputs) => {
    params.reset().ptr(inputs[0].address)
      .ptr(hasWeight ? inputs[1].address : 0n)
      .ptr(hasBias ? inputs[biasIndex].address : 0n)
      .ptr(out.address)
      .i64(rows);
    launchLayerNorm(device, kernel, params, d, eps, () => {});
  };
});

/** float32 copies of a scale, one per row: cuBLASLt's outer-vector scale of x. */
export interface RowScaleCopies {
  /** Where the `rows` float32 copies go. */
  address: bigint;
  /** The scale (one element). */
  scale: CudaBuffer;
  /** The scale's dtype: 0 float32, 1 float16, 2 bfloat16. */
  kind: number;
  /** Copies to write. */
  rows: number;
}

/**
 * Writes the codes of a layer norm's output over the last dim to `codes`: element i is the
 * normalized value rounded to x's dtype (bit-identical to what the layer norm op writes for the
 * same rows), divided by the one-element `scale` (IEEE division) and rounded to the code (int8:
 * half to even, saturated; e4m3: RNE, saturated to ±448, NaN 0x7f). Codes from `rows·d` up to
 * `end` are set to zero; `rowScales`, when given, is filled in the same launch.
 */
export type LayerNormCodesLaunch = (
  codes: bigint,
  x: CudaBuffer,
  weight: CudaBuffer | undefined,
  bias: CudaBuffer | undefined,
  scale: CudaBuffer,
  scaleKind: number,
  end: number,
  rowScales?: RowScaleCopies,
) => void;

/**
 * The quantizing layer norm (`layer_norm_quantize_<x>_<code>_<variant>`) for `rows` rows of
 * `d > 0` elements of `dtype` with epsilon `eps`, storing `code` codes ("i8" or "e4m3").
 */
export function layerNormCodes(
  device: CudaDevice,
  dtype: DType,
  rows: number,
  d: number,
  eps: number,
  code: "i8" | "e4m3",
): LayerNormCodesLaunch {
  const op = "layerNorm";
  const prefix = `layer_norm_quantize_${suffixOf(op, dtype)}_${code}`;
  const kernel = layerNormKernel(device, prefix, dtype, rows, d);
  const params = new KernelParams(16);
  return (codes, x, weight, bias, scale, scaleKind, end, rowScales) => {
    params.reset().ptr(x.address).ptr(weight?.address ?? 0n).ptr(bias?.address ?? 0n)
      .ptr(codes).i64(rows);
    launchLayerNorm(device, kernel, params, d, eps, (p) => {
      p.ptr(scale.address).i32(scaleKind).i64(end).ptr(rowScales?.address ?? 0n)
        .ptr(rowScales?.scale.address ?? 0n).i32(rowScales?.kind ?? 0).i32(rowScales?.rows ?? 0);
    });
  };
}
