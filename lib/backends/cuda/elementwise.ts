/**
 * CUDA lowerings of the elementwise ops (kernels in kernels/elementwise.cu): binary arithmetic
 * and comparisons with broadcasting, unary math and activations, `where` and `cast`. The rules
 * are in lib/ops/elementwise.ts; results match the CPU kernels in
 * lib/backends/cpu/elementwise.ts.
 *
 * Binary ops pick one of three kernels: both inputs with the output's elements (16-byte
 * vector path), one input a single element (vector path with a broadcast scalar), or the
 * strided form, which takes the output shape with size-1 dims dropped and mergeable dims
 * merged (at most 8 left), and each input's element strides (0 on broadcast dims).
 * @module
 */
import { ptx as PTX } from "../../../kernels/ptx/elementwise.ts";
import type { DType } from "../../dtype.ts";
import { TensorqError } from "../../errors.ts";
import { broadcastStrides, numel, type Shape } from "../../shape.ts";
import type { Attrs } from "../../graph/node.ts";
import type { ValueInfo } from "../cpu/backend.ts";
import {
  BLOCK,
  type CudaKernelContext,
  type CudaLaunch,
  type CudaLowered,
  type Dim3,
  grid1d,
  kernelFunction,
  KernelParams,
  launch,
  registerCudaKernel,
} from "./kernels.ts";

/** The most dims the strided kernels take (after merging). */
export const MAX_STRIDED_RANK = 8;

const SUFFIX: Record<DType, string> = {
  float32: "f32",
  float16: "f16",
  bfloat16: "bf16",
  float8e4m3: "f8e4m3",
  int4: "i4",
  int8: "i8",
  int32: "i32",
  int64: "i64",
  bool: "bool",
};

// Bytes per element (int4 is packed and handled by its own kernels).
const BYTES: Record<DType, number> = {
  float32: 4,
  float16: 2,
  bfloat16: 2,
  float8e4m3: 1,
  int4: 1,
  int8: 1,
  int32: 4,
  int64: 8,
  bool: 1,
};

// Ops whose kernels take narrow packs (Vec<..., Heavy> in the .cu file).
const HEAVY = new Set(["div", "pow", "exp", "log", "rsqrt", "tanh", "sigmoid", "gelu"]);

const ARITHMETIC = ["add", "sub", "mul", "div", "pow", "maximum", "minimum"];
const UNARY = [
  "neg",
  "abs",
  "relu",
  "exp",
  "log",
  "sqrt",
  "rsqrt",
  "tanh",
  "sigmoid",
  "gelu",
];

// OpCompare's outcome bits: a < b, a == b, a > b, unordered (a NaN operand).
const LT = 1, EQ = 2, GT = 4, UNORDERED = 8;
const COMPARE_MASK: Record<string, number> = {
  equal: EQ,
  notEqual: LT | GT | UNORDERED,
  less: LT,
  lessEqual: LT | EQ,
  greater: GT,
  greaterEqual: GT | EQ,
};

const BLOCK_DIM: Dim3 = [BLOCK, 1, 1];

/**
 * Elements per pack of the contiguous kernels (mirrors `Vec` in kernels/elementwise.cu):
 * 16-byte accesses of the narrower type, at most 64 bytes of the wider one; heavy math takes
 * two elements (one of an 8-byte type).
 */
function packSize(inBytes: number, outBytes: number, heavy: boolean): number {
  const lo = Math.min(inBytes, outBytes), hi = Math.max(inBytes, outBytes);
  if (heavy) return hi <= 4 ? 2 : 1;
  return Math.min(16 / lo, 64 / hi);
}

/** A broadcast reduced to its essential dims. */
export interface CollapsedBroadcast {
  /** Output dims, innermost first (at least one). */
  dims: number[];
  /** Per input, its element stride along each of `dims` (0 where it is broadcast). */
  strides: number[][];
}

/**
 * Reduces a broadcast of `inputs` to `out` to the fewest dims: size-1 output dims are dropped
 * and neighbouring dims merge when every input steps through them as one (outer stride =
 * inner stride × inner size; broadcast dims have stride 0). Returns dims innermost first.
 *
 * @param out The output shape.
 * @param inputs Each input's shape (broadcastable to `out`).
 * @returns The merged dims and every input's strides along them.
 */
export function collapseBroadcast(out: Shape, inputs: readonly Shape[]): CollapsedBroadcast {
  const full = inputs.map((s) => broadcastStrides(s, out));
  const dims: number[] = [];
  const strides: number[][] = inputs.map(() => []);
  for (let d = 0; d < out.length; d++) {
    const size = out[d];
    if (size === 1) continue;
    const last = dims.length - 1;
    if (last >= 0 && full.every((st, k) => strides[k][last] === st[d] * size)) {
      dims[last] *= size;
      full.forEach((st, k) => (strides[k][last] = st[d]));
    } else {
      dims.push(size);
      full.forEach((st, k) => strides[k].push(st[d]));
    }
  }
  if (dims.length === 0) {
    dims.push(1);
    strides.forEach((s) => s.push(0));
  }
  return { dims: dims.reverse(), strides: strides.map((s) => s.reverse()) };
}

/** The strided kernels' arguments after `n`: rank, dims, then each input's strides (8 each). */
function stridedArgs(op: string, out: Shape, inputs: readonly Shape[]): KernelArg[] {
  const { dims, strides } = collapseBroadcast(out, inputs);
  if (dims.length > MAX_STRIDED_RANK) {
    throw new TensorqError(
      `broadcast needs ${dims.length} dims after merging; ` +
        `the cuda kernels take at most ${MAX_STRIDED_RANK}`,
      {
        op,
        kind: "unsupported",
        expected: `at most ${MAX_STRIDED_RANK} dims`,
        actual: `output [${out.join(", ")}]`,
      },
    );
  }
  const pad = (values: number[], fill: number): number[] => [
    ...values,
    ...new Array<number>(MAX_STRIDED_RANK - values.length).fill(fill),
  ];
  const values = [...pad(dims, 1), ...strides.flatMap((s) => pad(s, 0))];
  return [["i32", dims.length], ...values.map((v): KernelArg => ["i64", v])];
}

/** One kernel argument after the pointers: its C type and value. */
export type KernelArg = readonly ["i32" | "u32" | "i64", number];

/** How an elementwise op runs on the GPU (a pure function of the op, so tests can check it). */
export interface ElementwisePlan {
  /** Kernel name in kernels/elementwise.cu; absent when nothing runs. */
  kernel?: string;
  /** True when the output is input 0 unchanged (a cast to the same dtype). */
  alias?: boolean;
  /** The inputs whose addresses follow the output's, in kernel order. */
  inputs: number[];
  /** The arguments after the pointers. */
  args: KernelArg[];
  /** Work items the grid covers (elements; output bytes for packed int4 `where`). */
  items: number;
  /** Items per thread per loop step (the kernel's pack size), for sizing the grid. */
  perThread: number;
}

const NOTHING_PLAN: ElementwisePlan = { inputs: [], args: [], items: 0, perThread: 1 };

function planBinary(op: string, out: ValueInfo, [ia, ib]: ValueInfo[]): ElementwisePlan {
  const n = numel(out.shape);
  if (n === 0) return NOTHING_PLAN;
  const mask = COMPARE_MASK[op];
  const base = mask === undefined ? `${op}_${SUFFIX[ia.dtype]}` : `compare_${SUFFIX[ia.dtype]}`;
  const maskArg: KernelArg[] = mask === undefined ? [] : [["u32", mask]];
  const perThread = packSize(BYTES[ia.dtype], BYTES[out.dtype], HEAVY.has(op));
  const na = numel(ia.shape), nb = numel(ib.shape);
  if (na === n && nb === n) {
    return { kernel: base, inputs: [0, 1], args: [["i64", n], ...maskArg], items: n, perThread };
  }
  if (na === 1 || nb === 1) {
    // One operand is a single element, so the other has the output's elements.
    const first = na === 1 ? 1 : 0;
    return {
      kernel: `${base}_scalar`,
      inputs: first ? [1, 0] : [0, 1],
      args: [["i64", n], ["i32", first], ...maskArg],
      items: n,
      perThread,
    };
  }
  return {
    kernel: `${base}_bcast`,
    inputs: [0, 1],
    args: [["i64", n], ...stridedArgs(op, out.shape, [ia.shape, ib.shape]), ...maskArg],
    items: n,
    perThread: 1,
  };
}

function planUnary(op: string, attrs: Attrs, out: ValueInfo): ElementwisePlan {
  const n = numel(out.shape);
  if (n === 0) return NOTHING_PLAN;
  const name = op === "gelu" && attrs.approximate === "tanh" ? "gelu_tanh" : op;
  const bytes = BYTES[out.dtype];
  return {
    kernel: `${name}_${SUFFIX[out.dtype]}`,
    inputs: [0],
    args: [["i64", n]],
    items: n,
    perThread: packSize(bytes, bytes, HEAVY.has(op)),
  };
}

function planCast(out: ValueInfo, from: DType): ElementwisePlan {
  const to = out.dtype;
  if (from === to) return { ...NOTHING_PLAN, alias: true };
  const n = numel(out.shape);
  if (n === 0) return NOTHING_PLAN;
  // int4 casts move eight elements per unit; float8 casts use the heavy (narrow) packs.
  const perThread = from === "int4" || to === "int4"
    ? 8
    : packSize(BYTES[from], BYTES[to], from === "float8e4m3" || to === "float8e4m3");
  return {
    kernel: `cast_${SUFFIX[from]}_${SUFFIX[to]}`,
    inputs: [0],
    args: [["i64", n]],
    items: n,
    perThread,
  };
}

function planWhere(out: ValueInfo, inputs: ValueInfo[]): ElementwisePlan {
  const n = numel(out.shape);
  if (n === 0) return NOTHING_PLAN;
  const shapes = inputs.map((i) => i.shape);
  const width = BYTES[out.dtype] * 8;
  if (out.dtype !== "int4" && shapes.every((s) => numel(s) === n)) {
    const bytes = BYTES[out.dtype];
    return {
      kernel: `where_b${width}`,
      inputs: [0, 1, 2],
      args: [["i64", n]],
      items: n,
      perThread: packSize(bytes, bytes, false),
    };
  }
  // Packed int4 always takes the strided form, one thread per output byte.
  const int4 = out.dtype === "int4";
  return {
    kernel: int4 ? "where_i4" : `where_b${width}_bcast`,
    inputs: [0, 1, 2],
    args: [["i64", n], ...stridedArgs("where", out.shape, shapes)],
    items: int4 ? Math.ceil(n / 2) : n,
    perThread: 1,
  };
}

/**
 * Plans an elementwise op: which kernel of kernels/elementwise.cu runs and with which
 * arguments. Pure (no device needed); the lowerings launch what it returns.
 *
 * @param op The op name (as registered by lib/ops/elementwise.ts).
 * @param attrs The op's attributes.
 * @param out The output's shape and dtype.
 * @param inputs The inputs' shapes and dtypes.
 * @returns The launch plan.
 * @throws {TensorqError} kind `unsupported` when a broadcast keeps more than 8 dims after
 *   merging.
 */
export function planElementwise(
  op: string,
  attrs: Attrs,
  out: ValueInfo,
  inputs: ValueInfo[],
): ElementwisePlan {
  if (op === "cast") return planCast(out, inputs[0].dtype);
  if (op === "where") return planWhere(out, inputs);
  if (inputs.length === 1) return planUnary(op, attrs, out);
  return planBinary(op, out, inputs);
}

const NOTHING: CudaLaunch = () => {};

function lower(op: string): (ctx: CudaKernelContext) => CudaLowered {
  return (ctx) => {
    const plan = planElementwise(op, ctx.attrs, ctx.out, ctx.inputs);
    if (plan.alias) return { alias: 0 };
    if (plan.kernel === undefined) return NOTHING;
    const device = ctx.device;
    const fn = kernelFunction(device, PTX, plan.kernel);
    const grid = grid1d(device, plan.items, plan.perThread);
    const params = new KernelParams(1 + plan.inputs.length + plan.args.length);
    return (out, inputs) => {
      params.reset().ptr(out.address);
      for (const i of plan.inputs) params.ptr(inputs[i].address);
      for (const [type, value] of plan.args) params[type](value);
      launch(device, fn, grid, BLOCK_DIM, params);
    };
  };
}

for (const op of [...ARITHMETIC, ...Object.keys(COMPARE_MASK), ...UNARY, "cast", "where"]) {
  registerCudaKernel(op, lower(op));
}
