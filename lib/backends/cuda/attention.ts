/**
 * CUDA lowering of `attention` (kernels in kernels/attention.cu, and the flash kernels that write
 * a qlinear's codes in kernels/attention_codes.cu; rule in lib/ops/attention.ts).
 *
 * Which kernel runs (D: q's feature size, Dv: v's, T queries, S keys, BH batch·heads):
 * - D == Dv in {64, 128}, T <= 8: flash-decoding (`attention_decode_*`), the keys of each
 *   batch·head split over enough CTAs to fill the GPU; the CTAs of a batch·head merge their
 *   partial results through a per-device scratch buffer (see {@link planAttention}).
 * - float16 / bfloat16, D == Dv in {64, 128}, T > 8: flash-attention-2 on the tensor cores
 *   (`attention_flash_*`), one CTA per (batch·head, 64 queries).
 * - anything else with Dv <= 256 and D <= 3072: a warp per query on the CUDA cores
 *   (`attention_generic_*`).
 * `kvLength`, when given, is passed as a device pointer and read by the kernels when they run.
 * The choice is {@link attentionKernelKind} (lib/ops/attention.ts). The flash and decode kernels
 * take per-tensor batch, head and position strides: they read inputs folded in as strided views
 * (attr `views`) in place and write the `bthd` output layout (attr `outputLayout`); the
 * generic kernel takes contiguous tensors only, and the view pass folds nothing into its
 * problems.
 * @module
 */
import { ptx as attentionPtx } from "../../../kernels/ptx/attention.ts";
import { ptx as attentionCodesPtx } from "../../../kernels/ptx/attention_codes.ts";
import type { ValueInfo } from "../cpu/backend.ts";
import { type DType, dtypeInfo } from "../../dtype.ts";
import type { Attrs } from "../../graph/node.ts";
import { TensorqError } from "../../errors.ts";
import {
  type AttentionHeadStrides,
  attentionHeadStrides,
  attentionKernelKind,
  type AttentionView,
} from "../../ops/attention.ts";
import { numel, stridesOf } from "../../shape.ts";
import type { CudaDevice } from "./device.ts";
import {
  type CudaLaunch,
  type Dim3,
  kernelFunction,
  KernelParams,
  launch,
  registerCudaKernel,
} from "./kernels.ts";
import { CudaBuffer } from "./memory.ts";
import type { RowScaleCopies } from "./nn.ts";
import {
  allowSharedBytes,
  checkInt32,
  FLOAT_NAME,
  floatDType,
  INT32_MAX,
  memsetZero,
  NO_LAUNCH,
  preferSharedMemory,
  roundUp,
} from "./util.ts";

/** The sizes of one attention call, as the kernels see them. */
export interface AttentionProblem {
  /** Element type of q, k, v and the output. */
  dtype: DType;
  /** Batch·heads: the product of the leading dims. */
  heads: number;
  /** Queries per head (T). */
  queries: number;
  /** Keys per head (S). */
  keys: number;
  /** Feature size of q and k (D). */
  dim: number;
  /** Feature size of v and the output (Dv). */
  valueDim: number;
}

/** How one attention call is launched. */
export interface AttentionLaunch {
  /** Which kernel family. */
  kind: "flash" | "decode" | "generic";
  /** Kernel name in kernels/attention.cu. */
  name: string;
  /** Grid. */
  grid: Dim3;
  /** Block. */
  block: Dim3;
  /** Dynamic shared memory in bytes. */
  sharedBytes: number;
  /** Flash: 64-query tiles per head; decode: CTAs per head (key splits); generic: 1. */
  perHead: number;
  /** Decode: 32-bit words of the splits' partial results (the counters live apart); else 0. */
  scratchWords: number;
}

/** Threads per block of every attention kernel (4 warps). */
const THREADS = 128;
/** Queries per flash CTA. */
const FLASH_QUERIES = 64;
/** Most CTAs the keys of one head are split over (MAX_SPLITS in kernels/attention.cu). */
const MAX_SPLITS = 64;
/** Dynamic shared memory a kernel gets without opting in. */
const DEFAULT_SHARED = 48 * 1024;

function unsupported(expected: string, actual: string): TensorqError {
  return new TensorqError("no CUDA kernel for these attention sizes", {
    op: "attention",
    kind: "unsupported",
    expected,
    actual,
  });
}

/**
 * Chooses the kernel, launch shape and scratch of an attention call on a device with
 * `smCount` multiprocessors. The output must be non-empty.
 *
 * @throws {TensorqError} kind `unsupported` for a non-float dtype, Dv > 256, D > 3072, or sizes
 *   past 32-bit indexing.
 */
export function planAttention(p: AttentionProblem, smCount: number): AttentionLaunch {
  const suffix = FLOAT_NAME[floatDType("attention", "q", p.dtype)];
  const { heads, queries: t, keys: s, dim: d, valueDim: dv } = p;
  checkInt32("attention", "batch·heads", heads);
  checkInt32("attention", "the query count", t);
  checkInt32("attention", "the key count", s);
  const block: Dim3 = [THREADS, 1, 1];
  const kind = attentionKernelKind(p.dtype, t, d, dv);
  if (kind === "decode") {
    const tq = t <= 1 ? 1 : t <= 4 ? 4 : 8;
    // Mirrors kernels/attention.cu: lanes per key, key groups per CTA, keys per group per step.
    const lanesPerKey = d / (p.dtype === "float32" ? 4 : 8);
    const groups = 4 * (32 / lanesPerKey);
    const keysPerStep = groups * (tq >= 8 ? 2 : 4);
    const wanted = Math.ceil((2 * smCount) / heads);
    const splits = Math.max(1, Math.min(Math.ceil(s / keysPerStep), wanted, MAX_SPLITS));
    if (heads * splits > INT32_MAX) throw unsupported("fewer batch·heads", `${heads}`);
    const scratchWords = splits > 1 ? heads * splits * t * (d + 2) : 0;
    return {
      kind: "decode",
      name: `attention_decode_${suffix}_d${d}_t${tq}`,
      grid: [heads * splits, 1, 1],
      block,
      sharedBytes: 0,
      perHead: splits,
      scratchWords,
    };
  }
  if (kind === "flash") {
    const tiles = Math.ceil(t / FLASH_QUERIES);
    if (heads * tiles > INT32_MAX) throw unsupported("fewer batch·heads × query tiles", `${t}`);
    return {
      kind: "flash",
      name: `attention_flash_${suffix}_d${d}`,
      grid: [heads * tiles, 1, 1],
      block,
      // The query tile and two buffers each of the key and value tiles, 16-bit elements.
      sharedBytes: 5 * FLASH_QUERIES * d * 2,
      perHead: tiles,
      scratchWords: 0,
    };
  }
  if (dv > 256) throw unsupported("a value size Dv of at most 256", `Dv = ${dv}`);
  const sharedBytes = 4 * d * 4;
  if (sharedBytes > DEFAULT_SHARED) throw unsupported("a feature size D of at most 3072", `${d}`);
  const rows = heads * t;
  const accumulators = dv <= 64 ? 64 : dv <= 128 ? 128 : 256;
  return {
    kind: "generic",
    name: `attention_generic_${suffix}_v${accumulators}`,
    grid: [Math.max(1, Math.min(Math.ceil(rows / 4), smCount * 16)), 1, 1],
    block,
    sharedBytes,
    perHead: 1,
    scratchWords: 0,
  };
}

/** A device's decode scratch: split counters first, then the splits' partial results. */
interface DecodeScratch {
  buffer: CudaBuffer;
  /** 32-bit words reserved for counters at the start (the partials follow). */
  counterWords: number;
}

/** Each device's decode scratch, and the outgrown ones (recorded graphs may still use them). */
const scratchOf = new Map<number, DecodeScratch>();
const outgrown: CudaBuffer[] = [];

/**
 * Counter and partial-result addresses for a decode launch with `counters` batch·heads and
 * `partialWords` 32-bit words of partials. One buffer serves every decode launch of the device:
 * launches run in stream order and each leaves its counters at zero. The counters sit in a
 * region of their own that no launch's partials overlap (a launch with few heads must not
 * write over the counters of one with many). The buffer is never freed, as recorded CUDA
 * graphs keep its address; a larger request moves later plans to a new, zeroed buffer.
 */
function decodeScratch(
  device: CudaDevice,
  counters: number,
  partialWords: number,
): { counters: bigint; partial: bigint } {
  let scratch = scratchOf.get(device.index);
  if (
    scratch === undefined || scratch.counterWords < counters ||
    scratch.buffer.numel - scratch.counterWords < partialWords
  ) {
    if (scratch !== undefined) outgrown.push(scratch.buffer);
    const counterWords = roundUp(Math.max(counters, 2 * (scratch?.counterWords ?? 0), 64), 64);
    const partial = Math.max(
      partialWords,
      2 * ((scratch?.buffer.numel ?? 0) - (scratch?.counterWords ?? 0)),
    );
    const buffer = CudaBuffer.allocate(device, "int32", counterWords + partial);
    memsetZero(device, buffer.address, buffer.bytes);
    scratch = { buffer, counterWords };
    scratchOf.set(device.index, scratch);
  }
  const base = scratch.buffer.address;
  return { counters: base, partial: base + BigInt(scratch.counterWords * 4) };
}

/** An input's layout: its view (attr `views`), or its own shape, contiguous. */
function layoutOf(view: AttentionView | null | undefined, shape: readonly number[]): AttentionView {
  return view ?? { shape: [...shape], offset: 0, strides: stridesOf(shape) };
}

/** Batch, head and position strides of a layout, checked for the kernels' int32 positions. */
function headStrides(name: string, layout: AttentionView): AttentionHeadStrides {
  const strides = attentionHeadStrides(layout.shape, layout.strides);
  if (!strides) {
    throw unsupported(
      `a view of ${name} whose leading dims merge into one batch dim`,
      `strides [${layout.strides.join(", ")}] for shape [${layout.shape.join(", ")}]`,
    );
  }
  checkInt32("attention", `the position stride of ${name}`, strides.row);
  return strides;
}

/** What a codes-writing attention launch writes: int8 or e4m3 codes, and its scale's kind. */
export interface AttentionCodes {
  /** Code type. */
  target: "i8" | "e4m3";
  /** `FLOAT_KIND` of the per-tensor quantize scale. */
  scaleKind: number;
}

/**
 * One attention call, lowered: `run` writes the result (or, when lowered with codes, its
 * codes) at `out` from the buffers of q, k, v (and kvLength); `codeScale` is the quantize
 * scale of a codes-writing launch.
 */
export interface AttentionLowering {
  /** Which kernel family runs. */
  kind: AttentionLaunch["kind"];
  /**
   * Enqueues the call. A codes-writing launch takes the quantize scale and may also write
   * cuBLASLt's per-row copies of a scale for the `bthd` rows b·T + t it writes (`rowScales.rows`
   * is not read: the rows are the result's).
   */
  run: (
    out: bigint,
    inputs: readonly CudaBuffer[],
    codeScale?: CudaBuffer,
    rowScales?: RowScaleCopies,
  ) => void;
}

/**
 * The kernel family an attention call with these attrs (`views`, `outputLayout` included) and
 * input infos (q, k, v[, kvLength]) runs on.
 */
export function attentionKindOf(
  attrs: Attrs,
  inputs: readonly ValueInfo[],
): AttentionLaunch["kind"] {
  return attentionKernelKind(...kindArgs(problemOf(attrs, inputs).problem));
}

function kindArgs(p: AttentionProblem): [DType, number, number, number] {
  return [p.dtype, p.queries, p.dim, p.valueDim];
}

/** The problem of an attention call and the layouts of q, k and v. */
function problemOf(attrs: Attrs, inputs: readonly ValueInfo[]) {
  const views = attrs.views as (AttentionView | null)[] | undefined;
  const layouts = [0, 1, 2].map((i) => layoutOf(views?.[i], inputs[i].shape));
  const [qL, kL, vL] = layouts;
  const rank = qL.shape.length;
  const problem: AttentionProblem = {
    dtype: inputs[0].dtype,
    heads: numel(qL.shape.slice(0, rank - 2)),
    queries: qL.shape[rank - 2],
    keys: kL.shape[rank - 2],
    dim: qL.shape[rank - 1],
    valueDim: vL.shape[rank - 1],
  };
  return { problem, layouts, hasViews: views !== undefined };
}

/**
 * Lowers an attention call (attrs and input infos as the `attention` op's, its result of shape
 * `outShape`). With `codes` the launch writes the per-tensor codes of the result, rounded to
 * its dtype first, as `quantize(attention(...))` would: only the flash kernels do
 * ({@link attentionKindOf} says which kernel a call runs on).
 *
 * @throws {TensorqError} kind `unsupported` for sizes no kernel takes, or codes from a
 *   kernel other than flash.
 */
export function lowerAttention(
  device: CudaDevice,
  attrs: Attrs,
  inputs: readonly ValueInfo[],
  outShape: readonly number[],
  codes?: AttentionCodes,
): AttentionLowering {
  const { problem, layouts, hasViews } = problemOf(attrs, inputs);
  const [qL, kL, vL] = layouts;
  const rank = qL.shape.length;
  const bthd = attrs.outputLayout === "bthd";
  if (numel(outShape) === 0) {
    return { kind: attentionKernelKind(...kindArgs(problem)), run: () => {} };
  }
  const plan = planAttention(problem, device.smCount);
  if (codes && plan.kind !== "flash") {
    throw unsupported("the flash kernel for an attention that writes codes", plan.kind);
  }
  // The codes variants are a module of their own (kernels/attention_codes.cu).
  const fn = codes
    ? kernelFunction(device, attentionCodesPtx, `${plan.name}_${codes.target}`)
    : kernelFunction(device, attentionPtx, plan.name);
  const { heads, queries, keys, dim, valueDim } = problem;
  const scaleLog2 = (attrs.scale as number) * Math.LOG2E;
  const causal = attrs.causal ? 1 : 0;
  const hasKvLength = attrs.hasKvLength as boolean;
  const params = new KernelParams(32);
  const { grid, block, sharedBytes } = plan;

  if (plan.kind === "generic") {
    if (hasViews || bthd) {
      throw unsupported("contiguous q, k, v and output for the generic kernel", "views");
    }
    const rows = BigInt(heads * queries);
    return {
      kind: plan.kind,
      run: (out, inputs) => {
        params.reset().ptr(inputs[0].address).ptr(inputs[1].address).ptr(inputs[2].address)
          .ptr(out).ptr(hasKvLength ? inputs[3].address : 0n)
          .i64(rows).i32(queries).i32(keys).i32(dim).i32(valueDim).f32(scaleLog2).i32(causal);
        launch(device, fn, grid, block, params, sharedBytes);
      },
    };
  }

  // Flash and decode: bh = b·H + h with H the last leading dim; strides per b, h, position.
  const nHeads = qL.shape[rank - 3];
  const itemSize = dtypeInfo(problem.dtype).itemSize;
  const byteOffsets = [qL, kL, vL].map((l) => BigInt(l.offset * itemSize));
  const [qS, kS, vS] = [["q", qL], ["k", kL], ["v", vL]].map(([name, l]) =>
    headStrides(name as string, l as AttentionView)
  );
  const oS: AttentionHeadStrides = bthd
    ? { batch: queries * nHeads * valueDim, head: valueDim, row: nHeads * valueDim }
    : { batch: nHeads * queries * valueDim, head: queries * valueDim, row: valueDim };
  checkInt32("attention", "the output position stride", oS.row);
  const strideParams = (p: KernelParams): KernelParams => {
    for (const st of [qS, kS, vS, oS]) p.i64(st.batch).i64(st.head).i32(st.row);
    return p;
  };
  const addresses = (out: bigint, inputs: readonly CudaBuffer[]): KernelParams =>
    params.reset().ptr(inputs[0].address + byteOffsets[0])
      .ptr(inputs[1].address + byteOffsets[1]).ptr(inputs[2].address + byteOffsets[2])
      .ptr(out).ptr(hasKvLength ? inputs[3].address : 0n);

  if (plan.kind === "flash") {
    allowSharedBytes(fn, sharedBytes, DEFAULT_SHARED);
    preferSharedMemory(fn);
    return {
      kind: plan.kind,
      run: (out, inputs, codeScale, rowScales) => {
        addresses(out, inputs).i32(heads).i32(nHeads).i32(queries).i32(keys).f32(scaleLog2)
          .i32(causal).i32(plan.perHead);
        strideParams(params);
        if (codes) {
          params.ptr(codeScale!.address).i32(codes.scaleKind).ptr(rowScales?.address ?? 0n)
            .ptr(rowScales?.scale.address ?? 0n).i32(rowScales?.kind ?? 0);
        }
        launch(device, fn, grid, block, params, sharedBytes);
      },
    };
  }
  const scratch = plan.scratchWords > 0
    ? decodeScratch(device, heads, plan.scratchWords)
    : undefined;
  const counters = scratch?.counters ?? 0n;
  const partial = scratch?.partial ?? 0n;
  return {
    kind: plan.kind,
    run: (out, inputs) => {
      addresses(out, inputs).ptr(partial).ptr(counters).i32(heads).i32(nHeads).i32(queries)
        .i32(keys).f32(scaleLog2).i32(causal).i32(plan.perHead);
      launch(device, fn, grid, block, strideParams(params));
    },
  };
}

registerCudaKernel("attention", (ctx): CudaLaunch => {
  if (numel(ctx.out.shape) === 0) return NO_LAUNCH;
  const { run } = lowerAttention(ctx.device, ctx.attrs, ctx.inputs, ctx.out.shape);
  return (out, inputs) => run(out.address, inputs);
});
