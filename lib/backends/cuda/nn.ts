/**
 * CUDA lowerings of softmax, log-softmax and layer norm (kernels in kernels/nn.cu, rules in
 * lib/ops/nn.ts).
 *
 * Contiguous rows (softmax along the last axis, layer norm's trailing block) of up to 1024
 * elements run a warp per row with the row in registers; longer rows (and scalar rows over
 * 256 elements whose length is not a multiple of the 16-byte vector) run a block per row,
 * caching the row in shared memory when it fits in 47 KiB. Softmax along another axis runs a
 * thread per column.
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
import { FLOAT_NAME } from "./util.ts";

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

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
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
  const k = rowKernel(rows, d, elementBytes(dtype), device.smCount);
  const fn = kernelFunction(device, nnPtx, `layer_norm_${suffix}_${k.variant}`);
  const params = new KernelParams(10);
  return (out, inputs) => {
    params.reset().ptr(inputs[0].address)
      .ptr(hasWeight ? inputs[1].address : 0n)
      .ptr(hasBias ? inputs[biasIndex].address : 0n)
      .ptr(out.address)
      .i64(rows);
    if (k.kind === "warp") {
      params.i32(d).f32(eps);
      launch(device, fn, k.grid, k.block, params);
    } else {
      params.i64(d).f32(eps).i32(k.cached ? 1 : 0);
      launch(device, fn, k.grid, k.block, params, k.sharedBytes);
    }
  };
});
