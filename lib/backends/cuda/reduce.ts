/**
 * CUDA lowerings of the reductions (kernels in kernels/reduce.cu, rules in lib/ops/reduce.ts):
 * sum, mean, var, max, min, argmax, argmin over any axes.
 *
 * The input is coalesced into alternating kept / reduced dim groups (size-1 dims dropped,
 * adjacent dims of the same kind merged). When the last group is a reduced one of 32 or more
 * elements, `reduce_rows` runs a warp or block per output over contiguous segments with 16-byte
 * loads; otherwise `reduce_cols` runs threads over adjacent outputs. Long reductions with few
 * outputs are split over several blocks: the partial states go to a workspace (allocated per
 * launch from the stream-ordered pool) and `reduce_finish` combines them.
 * @module
 */
import { ptx as reducePtx } from "../../../kernels/ptx/reduce.ts";
import type { DType } from "../../dtype.ts";
import { TensorqError } from "../../errors.ts";
import { numel } from "../../shape.ts";
import {
  type CudaKernelContext,
  type CudaLaunch,
  type Dim3,
  kernelFunction,
  KernelParams,
  launch,
  registerCudaKernel,
} from "./kernels.ts";
import { CudaBuffer } from "./memory.ts";
import { nextPow2 } from "./util.ts";

/** Dims per group list the kernels take (kept dims and reduced dims, each). */
const MAX_DIMS = 8;
/** Bytes reserved per partial state in the split workspace (the largest state: arg, var). */
const STATE_BYTES = 16;
/** The shortest contiguous reduced run that `reduce_rows` handles (shorter: `reduce_cols`). */
const ROW_MIN = 32;
/** Smallest number of elements a block of a split row reduction works on. */
const MIN_ROW_CHUNK = 8192;

const SUFFIX: Partial<Record<DType, string>> = {
  float32: "f32",
  float16: "f16",
  bfloat16: "bf16",
  int8: "i8",
  int32: "i32",
  int64: "i64",
};

/** Sizes and element strides of a list of coalesced dims, outermost first. */
export interface DimList {
  /** Extent of each dim. */
  sizes: number[];
  /** Input stride (in elements) of each dim. */
  strides: number[];
}

/** How a reduction runs on the GPU (see the module doc). */
export interface ReducePlan {
  /** `rows`: a warp or block per output; `cols`: threads over adjacent outputs. */
  kind: "rows" | "cols";
  /** Number of output elements. */
  outputs: number;
  /** Number of elements reduced into each output. */
  reduced: number;
  /** The kept dims: output `o`'s first element is at `o`'s multi-index · strides. */
  kept: DimList;
  /**
   * rows: the reduced dims except the last (contiguous) one, which picks the segment;
   * cols: all reduced dims.
   */
  red: DimList;
  /** rows: length of the contiguous last reduced dim; cols: 1. */
  rowLen: number;
  /** Reduced elements per split (the whole range when `splits` is 1). */
  chunk: number;
  /** Blocks (or warps) sharing one output's reduction; > 1 needs the finish kernel. */
  splits: number;
  /** rows only: a warp per work item (else a block). */
  warpMode: boolean;
  /** Launch grid. */
  grid: readonly [number, number, number];
  /** Launch block. */
  block: readonly [number, number, number];
}

function dimList(groups: { size: number; stride: number }[]): DimList {
  return { sizes: groups.map((g) => g.size), strides: groups.map((g) => g.stride) };
}

/**
 * Plans the reduction of a contiguous tensor of `shape` over the sorted axes `axes` on a
 * device with `smCount` multiprocessors. Only meaningful for a non-empty output. `op` names
 * the reduction in errors.
 */
export function planReduction(
  shape: readonly number[],
  axes: readonly number[],
  smCount: number,
  op = "reduce",
): ReducePlan {
  const groups: { size: number; stride: number; reduced: boolean }[] = [];
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const reduced = axes.includes(d);
    const last = groups.at(-1);
    if (last && last.reduced === reduced) last.size *= shape[d];
    else groups.push({ size: shape[d], stride: 0, reduced });
  }
  let stride = 1;
  for (let i = groups.length - 1; i >= 0; i--) {
    groups[i].stride = stride;
    stride *= groups[i].size;
  }
  const keptGroups = groups.filter((g) => !g.reduced);
  const redGroups = groups.filter((g) => g.reduced);
  const outputs = numel(keptGroups.map((g) => g.size));
  const reduced = numel(redGroups.map((g) => g.size));
  if (keptGroups.length > MAX_DIMS || redGroups.length > MAX_DIMS) {
    throw new TensorqError(
      `the cuda reduction kernels take at most ${MAX_DIMS} kept and ${MAX_DIMS} reduced dims`,
      {
        op,
        kind: "unsupported",
        argument: "axes",
        expected: `at most ${MAX_DIMS} runs of kept and of reduced dims (adjacent dims merge)`,
        actual: `${keptGroups.length} kept and ${redGroups.length} reduced runs in shape [${
          shape.join(", ")
        }] over axes [${axes.join(", ")}]`,
      },
    );
  }
  const kept = dimList(keptGroups);
  const last = groups.at(-1);

  if (reduced > 0 && last?.reduced && last.size >= ROW_MIN) {
    const rowLen = last.size;
    const red = dimList(redGroups.slice(0, -1));
    const warpMode = reduced <= 512 || (reduced <= 4096 && outputs >= smCount * 32);
    if (warpMode) {
      const grid = Math.max(1, Math.min(Math.ceil(outputs / 8), smCount * 16));
      return {
        kind: "rows",
        outputs,
        reduced,
        kept,
        red,
        rowLen,
        chunk: reduced,
        splits: 1,
        warpMode,
        grid: [grid, 1, 1],
        block: [256, 1, 1],
      };
    }
    // A block of 512 per work item; 4 such blocks fill a multiprocessor.
    const target = smCount * 4;
    let splits = 1;
    if (outputs < target) {
      splits = Math.min(
        Math.ceil(target / outputs),
        Math.max(1, Math.floor(reduced / MIN_ROW_CHUNK)),
      );
    }
    const chunk = Math.ceil(reduced / splits / 64) * 64;
    splits = Math.ceil(reduced / chunk);
    const grid = Math.max(1, Math.min(outputs * splits, smCount * 16));
    return {
      kind: "rows",
      outputs,
      reduced,
      kept,
      red,
      rowLen,
      chunk,
      splits,
      warpMode,
      grid: [grid, 1, 1],
      block: [512, 1, 1],
    };
  }

  // Threads over outputs (x) and over the reduced range (y), 256 per block. A kept last dim
  // of `inner` elements makes `inner` adjacent outputs adjacent in memory.
  const inner = last && !last.reduced ? last.size : 1;
  const tx0 = Math.min(32, nextPow2(inner));
  const ty = reduced === 0 ? 1 : Math.min(256 / tx0, nextPow2(Math.ceil(reduced / 4)));
  const tx = 256 / ty;
  const blocksX = Math.ceil(outputs / tx);
  const target = smCount * 8;
  let splits = 1;
  if (blocksX < target && reduced >= ty * 64) {
    splits = Math.min(Math.ceil(target / blocksX), Math.floor(reduced / (ty * 32)), 65535);
  }
  const chunk = Math.max(1, Math.ceil(reduced / splits));
  splits = Math.max(1, Math.ceil(reduced / chunk));
  return {
    kind: "cols",
    outputs,
    reduced,
    kept,
    red: dimList(redGroups),
    rowLen: 1,
    chunk,
    splits,
    warpMode: false,
    grid: [blocksX, splits, 1],
    block: [tx, ty, 1],
  };
}

/** Appends a dim list as the kernels take it: count, 8 sizes, 8 strides. */
function pushDims(params: KernelParams, dims: DimList): void {
  params.i32(dims.sizes.length);
  for (let i = 0; i < MAX_DIMS; i++) params.i64(dims.sizes[i] ?? 1);
  for (let i = 0; i < MAX_DIMS; i++) params.i64(dims.strides[i] ?? 0);
}

function lowerReduction(op: string, ctx: CudaKernelContext): CudaLaunch {
  const { shape, dtype } = ctx.inputs[0];
  const suffix = SUFFIX[dtype];
  if (suffix === undefined) {
    throw new TensorqError(`no cuda kernel for ${op} on ${dtype}`, {
      op,
      kind: "unsupported",
      argument: "x",
      actual: dtype,
    });
  }
  const outputs = numel(ctx.out.shape);
  if (outputs === 0) return () => {};
  const device = ctx.device;
  const plan = planReduction(shape, ctx.attrs.axes as number[], device.smCount, op);
  // mean divides by the count, var by N − correction; the other ops ignore it.
  const param = op === "mean"
    ? plan.reduced
    : op === "var"
    ? plan.reduced - (ctx.attrs.correction as number)
    : 0;
  const main = kernelFunction(device, reducePtx, `reduce_${plan.kind}_${op}_${suffix}`);
  const finish = plan.splits > 1
    ? kernelFunction(device, reducePtx, `reduce_finish_${op}_${suffix}`)
    : undefined;
  const finishGrid: Dim3 = [
    Math.max(1, Math.min(Math.ceil(outputs / 8), device.smCount * 16)),
    1,
    1,
  ];
  const params = new KernelParams(64);

  const launchMain = (x: bigint, dst: bigint): void => {
    params.reset().ptr(x).ptr(dst).i64(plan.outputs);
    if (plan.kind === "rows") {
      params.i64(plan.rowLen).i64(plan.reduced / plan.rowLen).i64(plan.chunk).i32(plan.splits)
        .i32(plan.warpMode ? 1 : 0).f64(param);
    } else {
      params.i64(plan.reduced).i64(plan.chunk).i32(plan.splits).f64(param);
    }
    pushDims(params, plan.kept);
    pushDims(params, plan.red);
    launch(device, main, plan.grid, plan.block, params);
  };

  return (out, [x]) => {
    if (finish === undefined) {
      launchMain(x.address, out.address);
      return;
    }
    const workspace = CudaBuffer.allocate(device, "int8", plan.outputs * plan.splits * STATE_BYTES);
    try {
      launchMain(x.address, workspace.address);
      params.reset().ptr(workspace.address).ptr(out.address).i64(plan.outputs).i32(plan.splits)
        .f64(param);
      launch(device, finish, finishGrid, [256, 1, 1], params);
    } finally {
      // Stream-ordered: the memory returns to the pool after the kernels above have run.
      workspace.dispose();
    }
  };
}

for (const op of ["sum", "mean", "var", "max", "min", "argmax", "argmin"]) {
  registerCudaKernel(op, (ctx) => lowerReduction(op, ctx));
}
