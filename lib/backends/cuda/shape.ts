/**
 * CUDA lowerings of the shape ops (rules in lib/ops/shape.ts, CPU reference in
 * lib/backends/cpu/shape.ts; kernels in kernels/shape.cu). Every op moves raw bits, so every
 * dtype, NaN payloads included, comes out bit-identical to the CPU backend.
 *
 * A permute or slice that reads one contiguous run starting 256-byte aligned (a permute that
 * only moves extent-1 dims, a slice of whole leading rows) is a view of its input, no launch.
 * Otherwise permute, expand and slice are one strided copy: dims of extent 1 are dropped, dims that
 * are contiguous with each other merged, and the copy unit widened to up to 16 bytes when the
 * innermost run and all offsets allow it. A plain contiguous run becomes a vectorized copy, a
 * swap of the last two dims a tiled shared-memory transpose. int4 (packed two per byte) moves
 * as whole bytes when the offsets are even; otherwise one thread per output byte assembles
 * both nibbles.
 *
 * sliceScatter is one launch that copies x and src in the widest unit a row allows, reading a
 * start tensor on the device (so a recorded CUDA graph follows its value).
 *
 * gather (negative indices wrap) and embedding (ids in [0, vocab)) with an out-of-range index
 * write zeros for the rows it selects and record the index in a small device flag; the error is
 * raised when the backend next reads results back to the host
 * (lib/backends/cuda/deferred_checks.ts).
 * @module
 */
import { copyToDeviceAsync } from "../../../ffi/cudart.ts";
import { ptx as shapePtx } from "../../../kernels/ptx/shape.ts";
import { type DType, dtypeInfo } from "../../dtype.ts";
import { indexOutOfRangeError } from "../../ops/shape.ts";
import { numel, stridesOf } from "../../shape.ts";
import type { CudaDevice } from "./device.ts";
import { BLOCK, type Dim3, grid1d, KernelParams, launch, registerCudaKernel } from "./kernels.ts";
import { deferCheck, type DeferredCheck, flagCheck } from "./deferred_checks.ts";
import { CudaBuffer } from "./memory.ts";
import { memsetAsync, moduleKernels, NO_LAUNCH } from "./util.ts";

const fn = moduleKernels(shapePtx);

/** Enqueues one copy from device address `src` to device address `dst`. */
/** Enqueues one planned copy from device address `src` to `dst`. */
export type Copy = (dst: bigint, src: bigint) => void;

const NOTHING: Copy = () => {};
const BLOCK_1D: Dim3 = [BLOCK, 1, 1];
// Element counts and offsets below this use the kernels with 32-bit indexing.
const INT32_LIMIT = 2 ** 31;
// Ranks the strided kernels take as launch parameters; higher ranks read device memory.
const MAX_PARAM_RANK = 8;
// Views (contiguous slices) start at multiples of this many bytes: the pool's alignment.
const VIEW_ALIGN = 256;
// Copy units in bytes, widest first.
const UNITS = [16, 8, 4, 2, 1] as const;

/** Bytes per element (int4: 0.5). */
function elementBytes(dtype: DType): number {
  return dtypeInfo(dtype).itemSize;
}

// ---------------------------------------------------------------------------------------
// Strided copies

/** A strided read: output (contiguous over `sizes`) element o reads `base + Σ o[d]·steps[d]`. */
interface Strided {
  sizes: number[];
  steps: number[];
  base: number;
}

/** Drops extent-1 dims and merges dims that are contiguous with each other. */
function collapse(shape: readonly number[], strides: readonly number[]): [number[], number[]] {
  const sizes: number[] = [];
  const steps: number[] = [];
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = sizes.length - 1;
    if (last >= 0 && steps[last] === strides[d] * shape[d]) {
      sizes[last] *= shape[d];
      steps[last] = strides[d];
    } else {
      sizes.push(shape[d]);
      steps.push(strides[d]);
    }
  }
  if (sizes.length === 0) return [[1], [1]];
  return [sizes, steps];
}

/**
 * The widest copy unit (bytes) for elements of `esize` bytes: the innermost dim must be
 * contiguous, and its extent, the base and every other stride multiples of the unit.
 * Returns the read in units, or undefined (int4 only) when not even whole bytes fit.
 */
function widen(s: Strided, esize: number): { unit: number; read: Strided } | undefined {
  const r = s.sizes.length;
  for (const unit of UNITS) {
    if (unit < esize) break;
    const f = unit / esize;
    if (
      s.steps[r - 1] === 1 && s.sizes[r - 1] % f === 0 && s.base % f === 0 &&
      s.steps.every((step, d) => d === r - 1 || step % f === 0)
    ) {
      const sizes = s.sizes.map((size, d) => (d === r - 1 ? size / f : size));
      const steps = s.steps.map((step, d) => (d === r - 1 ? 1 : step / f));
      return { unit, read: { sizes, steps, base: s.base / f } };
    }
  }
  if (esize < 1) return undefined;
  return { unit: esize, read: s };
}

/** True when every partial offset sum of the read stays within int32 (32-bit kernels). */
function fitsInt32(s: Strided, n: number): boolean {
  let high = 0;
  let low = 0;
  s.sizes.forEach((size, d) => {
    const reach = s.steps[d] * (size - 1);
    if (reach > 0) high += reach;
    else low += reach;
  });
  return n < INT32_LIMIT && s.base + high < INT32_LIMIT && -low < INT32_LIMIT;
}

/** Sizes padded with 1 and strides padded with 0 to the 16 geometry parameters. */
function geometryParams(s: Strided): number[] {
  const pad = MAX_PARAM_RANK - s.sizes.length;
  return [...s.sizes, ...new Array(pad).fill(1), ...s.steps, ...new Array(pad).fill(0)];
}

/** Sizes then strides in device memory, for ranks above {@link MAX_PARAM_RANK}. */
function uploadGeometry(device: CudaDevice, s: Strided): CudaBuffer {
  const values = BigInt64Array.from([...s.sizes, ...s.steps].map((v) => BigInt(v)));
  const buffer = CudaBuffer.allocate(device, "int64", values.length);
  copyToDeviceAsync(buffer.pointer, values, device.stream, buffer.bytes);
  return buffer;
}

/**
 * Plans a copy of `bytes` contiguous bytes from `src + srcOffset` to `dst + dstOffset`,
 * in the widest units both addresses are aligned to (buffers are 256-byte aligned).
 */
function planContiguous(
  device: CudaDevice,
  bytes: number,
  srcOffset: number,
  dstOffset: number,
): Copy {
  if (bytes === 0) return NOTHING;
  const v = UNITS.find((u) => srcOffset % u === 0 && dstOffset % u === 0) ?? 1;
  const kernel = fn(device, `contiguous_copy_v${v}`);
  const grid = grid1d(device, Math.max(1, Math.floor(bytes / v)), 4);
  const params = new KernelParams(3);
  const from = BigInt(srcOffset);
  const to = BigInt(dstOffset);
  return (dst, src) => {
    params.reset().ptr(dst + to).ptr(src + from).i64(bytes);
    launch(device, kernel, grid, BLOCK_1D, params);
  };
}

/**
 * Plans the tiled transpose when the read is `[B?, P, Q]` with P contiguous in the input:
 * out[b][p][q] = in[base + b·steps[0] + q·steps[-1] + p]. Undefined when it does not apply.
 */
function planTranspose(device: CudaDevice, esize: number, s: Strided): Copy | undefined {
  const r = s.sizes.length;
  if (r < 2 || r > 3) return undefined;
  const p = s.sizes[r - 2];
  const q = s.sizes[r - 1];
  const qStride = s.steps[r - 1];
  const tilesQ = Math.ceil(q / 32);
  if (s.steps[r - 2] !== 1 || qStride === 1 || p < 16 || q < 16 || tilesQ > 65535) {
    return undefined;
  }
  const batches = r === 3 ? s.sizes[0] : 1;
  const batchStride = r === 3 ? s.steps[0] : 0;
  const kernel = fn(device, `transpose_b${esize}`);
  const grid: Dim3 = [Math.ceil(p / 32), tilesQ, Math.min(batches, 65535)];
  const params = new KernelParams(7);
  const from = BigInt(s.base * esize);
  return (dst, src) => {
    params.reset().ptr(dst).ptr(src + from).i64(batches).i64(p).i64(q).i64(batchStride).i64(
      qStride,
    );
    launch(device, kernel, grid, [32, 8, 1], params);
  };
}

/** Plans a strided copy in `unit`-byte units (offsets and strides counted in units). */
function planUnits(device: CudaDevice, unit: number, s: Strided): Copy {
  const [sizes, steps] = collapse(s.sizes, s.steps);
  const read: Strided = { sizes, steps, base: s.base };
  const n = numel(sizes);
  if (sizes.length === 1 && steps[0] === 1) {
    return planContiguous(device, n * unit, s.base * unit, 0);
  }
  const from = BigInt(s.base * unit);
  const grid = grid1d(device, n, 4);
  if (sizes.length <= MAX_PARAM_RANK && fitsInt32({ ...read, base: 0 }, n)) {
    const kernel = fn(device, `strided_copy_b${unit}_r${sizes.length}_n32`);
    const geometry = geometryParams(read);
    const params = new KernelParams(3 + geometry.length);
    return (dst, src) => {
      params.reset().ptr(dst).ptr(src + from).i64(n);
      for (const g of geometry) params.i64(g);
      launch(device, kernel, grid, BLOCK_1D, params);
    };
  }
  const kernel = fn(device, `strided_copy_b${unit}_dyn`);
  const geometry = uploadGeometry(device, read);
  const params = new KernelParams(5);
  return (dst, src) => {
    params.reset().ptr(dst).ptr(src + from).i64(n).ptr(geometry.address).i32(sizes.length);
    launch(device, kernel, grid, BLOCK_1D, params);
  };
}

/** Plans an int4 strided copy nibble by nibble (one thread per output byte). */
function planNibbles(device: CudaDevice, s: Strided): Copy {
  const n = numel(s.sizes);
  const grid = grid1d(device, Math.ceil(n / 2));
  if (s.sizes.length <= MAX_PARAM_RANK && fitsInt32(s, n)) {
    const kernel = fn(device, `strided_copy_i4_r${s.sizes.length}_n32`);
    const geometry = geometryParams(s);
    const params = new KernelParams(4 + geometry.length);
    return (dst, src) => {
      params.reset().ptr(dst).ptr(src).i64(s.base).i64(n);
      for (const g of geometry) params.i64(g);
      launch(device, kernel, grid, BLOCK_1D, params);
    };
  }
  const kernel = fn(device, "strided_copy_i4_dyn");
  const geometry = uploadGeometry(device, s);
  const params = new KernelParams(6);
  return (dst, src) => {
    params.reset().ptr(dst).ptr(src).i64(s.base).i64(n).ptr(geometry.address).i32(s.sizes.length);
    launch(device, kernel, grid, BLOCK_1D, params);
  };
}

/**
 * Plans the copy whose output (contiguous, `shape`) element o reads input element
 * `base + Σ o[d]·strides[d]` (strides in elements; negative and zero strides allowed).
 */
export function planStridedCopy(
  device: CudaDevice,
  dtype: DType,
  shape: readonly number[],
  strides: readonly number[],
  base: number,
): Copy {
  const n = numel(shape);
  if (n === 0) return NOTHING;
  const esize = elementBytes(dtype);
  const [sizes, steps] = collapse(shape, strides);
  const read: Strided = { sizes, steps, base };
  if (sizes.length === 1 && steps[0] === 1 && (esize >= 1 || (n % 2 === 0 && base % 2 === 0))) {
    return planContiguous(device, n * esize, base * esize, 0);
  }
  if (esize >= 1) {
    const tiled = planTranspose(device, esize, read);
    if (tiled) return tiled;
  }
  const wide = widen(read, esize);
  return wide ? planUnits(device, wide.unit, wide.read) : planNibbles(device, read);
}

// A view: the same elements in the same order.
registerCudaKernel("reshape", () => ({ alias: 0 }));

/**
 * The read as a view of the input when it is one contiguous run of whole bytes starting at a
 * multiple of {@link VIEW_ALIGN} bytes (so the view keeps the pool's alignment): no copy.
 */
function contiguousView(
  dtype: DType,
  shape: readonly number[],
  strides: readonly number[],
  base: number,
): { alias: number; byteOffset: number } | undefined {
  const esize = elementBytes(dtype);
  if (esize < 1 || numel(shape) === 0) return undefined;
  const [sizes, steps] = collapse(shape, strides);
  if (sizes.length !== 1 || steps[0] !== 1) return undefined;
  const byteOffset = base * esize;
  return byteOffset % VIEW_ALIGN === 0 ? { alias: 0, byteOffset } : undefined;
}

registerCudaKernel("permute", (ctx) => {
  const axes = ctx.attrs.axes as number[];
  const inStrides = stridesOf(ctx.inputs[0].shape);
  const view = contiguousView(ctx.out.dtype, ctx.out.shape, axes.map((a) => inStrides[a]), 0);
  if (view) return view;
  const copy = planStridedCopy(
    ctx.device,
    ctx.out.dtype,
    ctx.out.shape,
    axes.map((a) => inStrides[a]),
    0,
  );
  return (out, [x]) => copy(out.address, x.address);
});

registerCudaKernel("expand", (ctx) => {
  const src = ctx.inputs[0].shape;
  const shape = ctx.out.shape;
  const inStrides = stridesOf(src);
  const lead = shape.length - src.length;
  const strides = shape.map((_, d) => (d < lead || src[d - lead] === 1 ? 0 : inStrides[d - lead]));
  const copy = planStridedCopy(ctx.device, ctx.out.dtype, shape, strides, 0);
  return (out, [x]) => copy(out.address, x.address);
});

registerCudaKernel("slice", (ctx) => {
  const starts = ctx.attrs.starts as number[];
  const steps = ctx.attrs.steps as number[];
  const inStrides = stridesOf(ctx.inputs[0].shape);
  let base = 0;
  for (let d = 0; d < starts.length; d++) base += starts[d] * inStrides[d];
  const strides = steps.map((s, d) => s * inStrides[d]);
  const view = contiguousView(ctx.out.dtype, ctx.out.shape, strides, base);
  if (view) return view;
  const copy = planStridedCopy(ctx.device, ctx.out.dtype, ctx.out.shape, strides, base);
  return (out, [x]) => copy(out.address, x.address);
});

// ---------------------------------------------------------------------------------------
// concat: each part is a block of `rows` rows of `chunk` elements, written at column
// `colStart` of the output viewed as [rows, total].

function planConcatPart(
  device: CudaDevice,
  dtype: DType,
  rows: number,
  chunk: number,
  total: number,
  colStart: number,
): Copy {
  if (rows === 0 || chunk === 0) return NOTHING;
  // The only non-empty part: a plain copy of the whole output.
  if (chunk === total) return planStridedCopy(device, dtype, [rows * chunk], [1], 0);
  const esize = elementBytes(dtype);
  const unit = UNITS.find((u) => {
    const f = u / esize;
    return u >= esize && chunk % f === 0 && total % f === 0 && colStart % f === 0;
  });
  if (unit !== undefined) {
    const f = unit / esize;
    const dstOffset = colStart * esize;
    if (rows === 1) return planContiguous(device, chunk * esize, 0, dstOffset);
    const cols = chunk / f;
    const stride = total / f;
    const small = rows * stride < INT32_LIMIT;
    const kernel = fn(device, `copy2d_b${unit}_n${small ? 32 : 64}`);
    const grid = grid1d(device, rows * cols);
    const params = new KernelParams(5);
    const to = BigInt(dstOffset);
    return (dst, src) => {
      params.reset().ptr(dst + to).i64(stride).ptr(src).i64(rows).i64(cols);
      launch(device, kernel, grid, BLOCK_1D, params);
    };
  }
  // int4 at odd offsets: nibble read-modify-write of the part's bytes.
  const kernel = fn(device, "concat_part_i4");
  const grid = grid1d(device, rows * (Math.floor(chunk / 2) + 1));
  const params = new KernelParams(7);
  return (dst, src) => {
    params.reset().ptr(dst).ptr(src).i64(rows).i64(chunk).i64(total).i64(colStart).i64(
      rows * total,
    );
    launch(device, kernel, grid, BLOCK_1D, params);
  };
}

registerCudaKernel("concat", (ctx) => {
  const axis = ctx.attrs.axis as number;
  const rows = numel(ctx.out.shape.slice(0, axis));
  const total = numel(ctx.out.shape.slice(axis));
  let colStart = 0;
  const parts = ctx.inputs.map((info) => {
    const chunk = numel(info.shape.slice(axis));
    const copy = planConcatPart(ctx.device, ctx.out.dtype, rows, chunk, total, colStart);
    colStart += chunk;
    return copy;
  });
  return (out, inputs) => {
    for (let p = 0; p < parts.length; p++) parts[p](out.address, inputs[p].address);
  };
});

// ---------------------------------------------------------------------------------------
// gather / embedding and their out-of-range flags

/**
 * One gather's flag: 32 device bytes laid out as `GatherFlag` in kernels/shape.cu. Bytes
 * 0..15 (the launch's smallest bad position and the first reported one) start as all ones
 * (none), bytes 16..31 (its raw value and a block counter) as zero. On the GPU an out-of-range
 * index does not stop the kernel: the rows it selects come out as zeros, and the error (the
 * op, the valid range, the raw index and its flat position, as the CPU backend reports it) is
 * raised at the next read (lib/backends/cuda/deferred_checks.ts).
 */
interface GatherCheck extends DeferredCheck {
  buffer: CudaBuffer;
}

/** A gather's out-of-range flag, checked when results are next read back. */
function gatherCheck(device: CudaDevice, op: string, extent: number): GatherCheck {
  const buffer = CudaBuffer.allocate(device, "int64", 4);
  memsetAsync(device, buffer.address, 0xff, 16);
  memsetAsync(device, buffer.address + 16n, 0, 16);
  // Bytes 8..23: the first reported position, then its raw index.
  const check = flagCheck(
    device,
    buffer.address + 8n,
    (position, detail) => indexOutOfRangeError(op, extent, detail.getBigInt64(0, true), position),
  );
  return { ...check, buffer };
}

/** Enqueues one gather: output, source and index addresses. */
type GatherLaunch = (out: bigint, x: bigint, indices: bigint) => void;

function planGather(
  device: CudaDevice,
  dtype: DType,
  indexBits: number,
  outer: number,
  extent: number,
  count: number,
  inner: number,
  flag: bigint,
  wrap: boolean,
): GatherLaunch {
  const total = outer * count * inner;
  const wrapFlag = wrap ? 1 : 0;
  if (total === 0) {
    // Nothing to copy, but the indices must still be valid.
    const kernel = fn(device, `check_indices_idx${indexBits}`);
    const grid = grid1d(device, count);
    const params = new KernelParams(5);
    return (_out, _x, indices) => {
      params.reset().ptr(indices).i64(count).i64(extent).ptr(flag).i32(wrapFlag);
      launch(device, kernel, grid, BLOCK_1D, params);
    };
  }
  const esize = elementBytes(dtype);
  const unit = UNITS.find((u) => u >= esize && inner % (u / esize) === 0);
  const params = new KernelParams(9);
  if (unit === undefined) {
    // int4 rows of an odd number of elements.
    const kernel = fn(device, `gather_i4_idx${indexBits}`);
    const grid = grid1d(device, Math.ceil(total / 2));
    return (out, x, indices) => {
      params.reset().ptr(out).ptr(x).ptr(indices).i64(outer).i64(extent).i64(count).i64(inner)
        .ptr(flag).i32(wrapFlag);
      launch(device, kernel, grid, BLOCK_1D, params);
    };
  }
  const f = unit / esize;
  const innerUnits = inner / f;
  const small = total / f < INT32_LIMIT && outer * extent * innerUnits < INT32_LIMIT;
  const kernel = fn(device, `gather_b${unit}_idx${indexBits}_n${small ? 32 : 64}`);
  const grid = grid1d(device, total / f);
  return (out, x, indices) => {
    params.reset().ptr(out).ptr(x).ptr(indices).i64(outer).i64(extent).i64(count).i64(
      innerUnits,
    ).ptr(flag).i32(wrapFlag);
    launch(device, kernel, grid, BLOCK_1D, params);
  };
}

for (const op of ["gather", "embedding"] as const) {
  registerCudaKernel(op, (ctx) => {
    const axis = ctx.attrs.axis as number;
    const [source, indices] = ctx.inputs;
    const count = numel(indices.shape);
    if (count === 0) return NO_LAUNCH; // the output is empty and there is no index to check
    const extent = source.shape[axis];
    const check = gatherCheck(ctx.device, op, extent);
    const enqueue = planGather(
      ctx.device,
      ctx.out.dtype,
      indices.dtype === "int64" ? 64 : 32,
      numel(source.shape.slice(0, axis)),
      extent,
      count,
      numel(source.shape.slice(axis + 1)),
      check.buffer.address,
      op === "gather", // embedding ids do not wrap
    );
    return (out, [x, ids]) => {
      enqueue(out.address, x.address, ids.address);
      deferCheck(check);
    };
  });
}

// ---------------------------------------------------------------------------------------
// triu / tril / causalMask

for (const op of ["triu", "tril"] as const) {
  registerCudaKernel(op, (ctx) => {
    const shape = ctx.out.shape;
    const n = numel(shape);
    if (n === 0) return NO_LAUNCH;
    const rows = shape[shape.length - 2];
    const cols = shape[shape.length - 1];
    const k = ctx.attrs.k as number;
    const esize = elementBytes(ctx.out.dtype);
    const name = esize < 1 ? "triangle_i4" : `triangle_b${esize}_n${n < INT32_LIMIT ? 32 : 64}`;
    const kernel = fn(ctx.device, name);
    const grid = grid1d(ctx.device, esize < 1 ? Math.ceil(n / 2) : n);
    const params = new KernelParams(7);
    const upper = op === "triu" ? 1 : 0;
    return (out, [x]) => {
      params.reset().ptr(out.address).ptr(x.address).i64(n).i64(rows).i64(cols).i64(k).i32(upper);
      launch(ctx.device, kernel, grid, BLOCK_1D, params);
    };
  });
}

registerCudaKernel("causalMask", (ctx) => {
  const [queries, keys] = ctx.out.shape;
  const n = queries * keys;
  if (n === 0) return NO_LAUNCH;
  const offset = ctx.attrs.offset as number;
  const kernel = fn(ctx.device, `causal_mask_n${n < INT32_LIMIT ? 32 : 64}`);
  const grid = grid1d(ctx.device, n);
  const params = new KernelParams(4);
  return (out) => {
    params.reset().ptr(out.address).i64(n).i64(keys).i64(offset);
    launch(ctx.device, kernel, grid, BLOCK_1D, params);
  };
});

// ---------------------------------------------------------------------------------------
// sliceScatter: one launch over the output; each unit comes from src inside the window and
// from x elsewhere. The start is a launch parameter (a number attr) or read on the device
// (a start tensor, clamped there), so a recorded CUDA graph follows the tensor's value.

/** One sliceScatter kernel choice: its copy unit and geometry counted in units. */
interface ScatterKernel {
  kernel: Deno.PointerValue;
  grid: Dim3;
  /** Address bits that must be zero for this unit (width − 1). */
  alignMask: bigint;
  /** The units the kernel goes over. */
  count: number;
  inner: number;
}

/**
 * The `slice_scatter` kernel (the whole output from x and src) or the `slice_write` one (src's
 * elements into a buffer that already holds x) for one copy unit: `count` elements to go over,
 * `reach` the output's elements (they choose 32- or 64-bit indexing).
 */
function scatterKernel(
  device: CudaDevice,
  kind: "scatter" | "write",
  unit: number,
  esize: number,
  count: number,
  inner: number,
  reach: number,
): ScatterKernel {
  if (unit === 0) {
    // int4 with an odd inner extent: nibbles, one thread per output byte (scatter only).
    return {
      kernel: fn(device, "slice_scatter_i4"),
      grid: grid1d(device, Math.ceil(count / 2)),
      alignMask: 0n,
      count,
      inner,
    };
  }
  const f = unit / esize;
  const units = count / f;
  const width = reach / f < INT32_LIMIT ? 32 : 64;
  return {
    kernel: fn(device, `slice_${kind}_b${unit}_n${width}`),
    // The scatter kernel keeps four loads in flight per thread.
    grid: grid1d(device, units, kind === "scatter" ? 4 : 1),
    alignMask: BigInt(unit - 1),
    count: units,
    inner: inner / f,
  };
}

registerCudaKernel("sliceScatter", (ctx) => {
  const axis = ctx.attrs.axis as number;
  const shape = ctx.out.shape;
  const total = numel(shape);
  if (total === 0) return NO_LAUNCH;
  const n = shape[axis];
  const m = ctx.inputs[1].shape[axis];
  const inner = numel(shape.slice(axis + 1));
  const startInfo = ctx.inputs[2];
  const startKind = startInfo === undefined ? 0 : startInfo.dtype === "int64" ? 2 : 1;
  const startValue = (ctx.attrs.start as number | null) ?? 0;
  const esize = elementBytes(ctx.out.dtype);
  // Every window boundary is a multiple of `inner` elements from the buffer start, so the
  // widest unit dividing a row of `inner` elements fits every offset; int4 rows of an odd
  // length start mid-byte and go nibble by nibble.
  const rowBytes = inner * esize;
  const narrowUnit = esize < 1 ? (inner % 2 === 0 ? 1 : 0) : esize;
  const wideUnit = narrowUnit === 0 ? 0 : UNITS.find((u) => u >= esize && rowBytes % u === 0)!;
  // x overwritable: write only the window into x's own buffer (not nibble by nibble).
  const inPlace = ctx.overwritable?.[0] === true && narrowUnit !== 0;
  const kind = inPlace ? "write" : "scatter";
  const count = inPlace ? numel(ctx.inputs[1].shape) : total;
  const narrow = scatterKernel(ctx.device, kind, narrowUnit, esize, count, inner, total);
  const wide = wideUnit === narrowUnit
    ? narrow
    : scatterKernel(ctx.device, kind, wideUnit, esize, count, inner, total);
  const params = new KernelParams(10);
  const enqueue = (out: CudaBuffer, [x, src, start]: CudaBuffer[]) => {
    if (count === 0) return;
    // Pool buffers are 256-byte aligned; anything else takes the element-wide kernel.
    const aligned = ((out.address | x.address | src.address) & wide.alignMask) === 0n;
    const k = aligned ? wide : narrow;
    params.reset().ptr(out.address);
    if (!inPlace) params.ptr(x.address);
    params.ptr(src.address).ptr(start === undefined ? 0n : start.address).i32(startKind)
      .i64(startValue).i64(k.count).i64(n).i64(m).i64(k.inner);
    launch(ctx.device, k.kernel, k.grid, BLOCK_1D, params);
  };
  return inPlace ? { inPlace: 0, launch: enqueue } : enqueue;
});
