/**
 * Shape ops: reshape, permute/transpose, squeeze/unsqueeze, expand, flatten, slice,
 * sliceScatter, concat, stack, split, gather and embedding lookup, triu/tril and the causal
 * mask. Rules here; CPU kernels in lib/backends/cpu/shape.ts.
 *
 * Primitive ops and their attrs (the output shape and dtype come from the node):
 * - `reshape` `{}`: same elements in the same row-major order (a view; also used by flatten,
 *   squeeze, unsqueeze and by identity permutes, slices and concats).
 * - `permute` `{axes}`: output dim i is input dim `axes[i]`.
 * - `expand` `{}`: NumPy broadcast of the input (right-aligned) to the output shape.
 * - `slice` `{starts, steps, counts}`: per input dim, output index o reads input index
 *   `starts[d] + o * steps[d]` for o < `counts[d]`; same rank as the input (an integer index
 *   is a count-1 slice followed by a `reshape`).
 * - `sliceScatter` `{axis, start, hasStartTensor}`: inputs `[x, src]` or `[x, src, start]`;
 *   a copy of x with `x[..., s : s + src.shape[axis], ...] = src` along `axis`, where s is
 *   the attr `start` (a number, already in range) or, when `hasStartTensor` (attr `start`
 *   null), the value of the int32/int64 one-element tensor `start` read at evaluation and
 *   clamped into `[0, x.shape[axis] - src.shape[axis]]`.
 * - `concat` `{axis}`: inputs joined along `axis`.
 * - `gather` `{axis}` and `embedding` `{axis: 0}`: inputs `[x, indices]`; output
 *   `x.shape[:axis] + indices.shape + x.shape[axis+1:]`. gather's indices lie in [-n, n)
 *   (negative ones count from the end), embedding's ids in [0, n); anything else fails at
 *   evaluation, naming the op and the index.
 * - `triu` / `tril` `{k}`: last two dims, elements with `col - row >= k` (`<= k`) kept, the
 *   rest zero.
 * - `causalMask` `{offset}`: no inputs; bool `[queries, keys]`, true where `j <= i + offset`.
 *
 * Every op works on every dtype and moves storage elements bit-exactly.
 * @module
 */
import type { DType } from "../dtype.ts";
import { parseDevice } from "../device.ts";
import { fmtShape, TensorqError } from "../errors.ts";
import { describeValue, numel, optionsOf, sameShape } from "../shape.ts";
import { Tensor } from "../tensor.ts";
import { checkDTypeIn, checkSameDevice, checkSameDType, checkTensor, makeOp } from "./op.ts";

/**
 * One dimension of a {@link slice}: an index (drops the dim), `null` (all) or
 * `[start, stop, step]`.
 */
export type SliceRange =
  | number
  | null
  | readonly [start?: number | null, stop?: number | null, step?: number | null];

// Index dtypes accepted by gather and embedding.
const INDEX_DTYPES: readonly DType[] = ["int32", "int64"];

// ---------------------------------------------------------------------------------------
// Argument checks

function checkInt(op: string, argument: string, value: unknown, min?: number): number {
  if (
    typeof value !== "number" || !Number.isSafeInteger(value) || (min !== undefined && value < min)
  ) {
    throw new TensorqError("invalid integer argument", {
      op,
      kind: "argument",
      argument,
      expected: min === undefined ? "an integer" : `an integer >= ${min}`,
      actual: describeValue(value),
    });
  }
  return value;
}

function checkIntList(op: string, argument: string, value: unknown, min?: number): number[] {
  if (!Array.isArray(value)) {
    throw new TensorqError("expected a list of integers", {
      op,
      kind: "argument",
      argument,
      expected: min === undefined ? "an array of integers" : `an array of integers >= ${min}`,
      actual: describeValue(value),
    });
  }
  return value.map((v, i) => checkInt(op, `${argument}[${i}]`, v, min));
}

/** Normalizes an axis of an existing dimension; unlike reductions, rank 0 has no axis. */
function axisOf(op: string, axis: unknown, rank: number, argument = "axis"): number {
  const a = checkAxisInt(op, axis, argument);
  if (a < -rank || a >= rank) {
    throw new TensorqError("axis out of range", {
      op,
      kind: "axis",
      argument,
      expected: rank === 0
        ? "no axis: the tensor has rank 0"
        : `an integer in [${-rank}, ${rank - 1}] for a rank-${rank} tensor`,
      actual: String(a),
    });
  }
  return a < 0 ? a + rank : a;
}

/** Normalizes the position of a new dimension: in [-rank-1, rank]. */
function newAxisOf(op: string, axis: unknown, rank: number, argument = "axis"): number {
  const a = checkAxisInt(op, axis, argument);
  if (a < -rank - 1 || a > rank) {
    throw new TensorqError("axis out of range", {
      op,
      kind: "axis",
      argument,
      expected: `an integer in [${
        -rank - 1
      }, ${rank}] for a new dimension of a rank-${rank} tensor`,
      actual: String(a),
    });
  }
  return a < 0 ? a + rank + 1 : a;
}

function checkAxisInt(op: string, axis: unknown, argument: string): number {
  if (typeof axis !== "number" || !Number.isInteger(axis)) {
    throw new TensorqError("axis must be an integer", {
      op,
      kind: "axis",
      argument,
      expected: "an integer",
      actual: describeValue(axis),
    });
  }
  return axis;
}

function checkMinRank(op: string, argument: string, x: Tensor, minRank: number): void {
  if (x.rank < minRank) {
    throw new TensorqError(`needs a tensor of rank >= ${minRank}`, {
      op,
      kind: "shape",
      argument,
      expected: `rank >= ${minRank}`,
      actual: `shape ${fmtShape(x.node.shape)} (rank ${x.rank})`,
    });
  }
}

/** The view op: same storage, another shape (the element count is already checked). */
function view(x: Tensor, shape: readonly number[]): Tensor {
  return makeOp("reshape", [x], {}, [...shape], x.dtype);
}

// ---------------------------------------------------------------------------------------
// View-like ops

/** Same data, another shape; one extent may be -1 (inferred). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  checkTensor("reshape", "x", x);
  const dims = checkIntList("reshape", "shape", shape, -1);
  const inferred = dims.flatMap((d, i) => (d === -1 ? [i] : []));
  if (inferred.length > 1) {
    throw new TensorqError("only one extent can be -1", {
      op: "reshape",
      kind: "argument",
      argument: "shape",
      expected: "at most one -1",
      actual: fmtShape(dims),
    });
  }
  const total = x.size;
  if (inferred.length === 1) {
    const known = numel(dims.filter((d) => d !== -1));
    if (known === 0 || total % known !== 0) {
      throw new TensorqError("cannot infer the -1 extent", {
        op: "reshape",
        kind: "shape",
        argument: "shape",
        expected: known === 0
          ? "no zero extent beside -1 (the -1 would be ambiguous)"
          : `extents whose product divides ${total} (the size of ${fmtShape(x.node.shape)})`,
        actual: fmtShape(dims),
      });
    }
    dims[inferred[0]] = total / known;
  } else if (numel(dims) !== total) {
    throw new TensorqError("sizes do not match", {
      op: "reshape",
      kind: "shape",
      argument: "shape",
      expected: `${total} elements (the size of ${fmtShape(x.node.shape)})`,
      actual: `${fmtShape(dims)} (${numel(dims)} elements)`,
    });
  }
  return view(x, dims);
}

/** Removes dimensions of extent 1: all of them, or the given ones (which must be 1). */
export function squeeze(x: Tensor, axis?: number | readonly number[]): Tensor {
  checkTensor("squeeze", "x", x);
  const shape = x.node.shape;
  let drop: number[];
  if (axis === undefined) {
    drop = shape.flatMap((d, i) => (d === 1 ? [i] : []));
  } else {
    const list = typeof axis === "number" ? [axis] : checkAxisList("squeeze", axis);
    drop = list.map((a) => axisOf("squeeze", a, shape.length));
    checkDistinct("squeeze", "axis", list, drop);
    for (let i = 0; i < drop.length; i++) {
      if (shape[drop[i]] !== 1) {
        throw new TensorqError("can only squeeze dimensions of extent 1", {
          op: "squeeze",
          kind: "shape",
          argument: "axis",
          expected: `extent 1 at axis ${list[i]}`,
          actual: `extent ${shape[drop[i]]} (shape ${fmtShape(shape)})`,
        });
      }
    }
  }
  return view(x, shape.filter((_, i) => !drop.includes(i)));
}

function checkAxisList(op: string, axes: unknown): number[] {
  if (!Array.isArray(axes)) {
    throw new TensorqError("expected an axis or a list of axes", {
      op,
      kind: "axis",
      argument: "axis",
      expected: "an integer or an array of integers",
      actual: describeValue(axes),
    });
  }
  return axes;
}

function checkDistinct(op: string, argument: string, given: number[], normalized: number[]): void {
  if (new Set(normalized).size !== normalized.length) {
    throw new TensorqError("repeated axis", {
      op,
      kind: "axis",
      argument,
      expected: "distinct axes",
      actual: `[${given.join(", ")}]`,
    });
  }
}

/** Inserts a dimension of extent 1 at `axis` (in [-rank-1, rank]). */
export function unsqueeze(x: Tensor, axis: number): Tensor {
  checkTensor("unsqueeze", "x", x);
  const a = newAxisOf("unsqueeze", axis, x.rank);
  const shape = [...x.node.shape];
  shape.splice(a, 0, 1);
  return view(x, shape);
}

/**
 * Merges dims `startAxis..endAxis` (inclusive) into one. A rank-0 tensor becomes shape [1]
 * (its axes count as those of a rank-1 tensor).
 */
export function flatten(x: Tensor, startAxis = 0, endAxis = -1): Tensor {
  checkTensor("flatten", "x", x);
  const shape = x.node.shape;
  const rank = Math.max(shape.length, 1);
  const start = axisOf("flatten", startAxis, rank, "startAxis");
  const end = axisOf("flatten", endAxis, rank, "endAxis");
  if (start > end) {
    throw new TensorqError("startAxis comes after endAxis", {
      op: "flatten",
      kind: "axis",
      argument: "endAxis",
      expected: `an axis at or after startAxis ${startAxis} (${start})`,
      actual: `${endAxis} (${end})`,
    });
  }
  if (shape.length === 0) return view(x, [1]);
  return view(x, [
    ...shape.slice(0, start),
    numel(shape.slice(start, end + 1)),
    ...shape.slice(end + 1),
  ]);
}

// ---------------------------------------------------------------------------------------
// Copying ops

/** Reorders dimensions: output dim i is input dim `axes[i]`. */
export function permute(x: Tensor, axes: readonly number[]): Tensor {
  checkTensor("permute", "x", x);
  const rank = x.rank;
  if (!Array.isArray(axes) || axes.length !== rank) {
    throw new TensorqError("axes must be a permutation of the dimensions", {
      op: "permute",
      kind: "axis",
      argument: "axes",
      expected: `${rank} axes for a rank-${rank} tensor`,
      actual: describeValue(axes),
    });
  }
  const norm = axes.map((a, i) => axisOf("permute", a, rank, `axes[${i}]`));
  checkDistinct("permute", "axes", [...axes], norm);
  return permuteNormalized(x, norm);
}

function permuteNormalized(x: Tensor, axes: number[]): Tensor {
  const shape = axes.map((a) => x.node.shape[a]);
  // Moving only extents of 1 (or keeping the order of the others) leaves the elements where
  // they are: a view, no copy (decoding's [B, 1, H, D] → [B, H, 1, D], say).
  const moved = axes.filter((a) => x.node.shape[a] !== 1);
  if (moved.every((a, i) => i === 0 || moved[i - 1] < a)) return view(x, shape);
  return makeOp("permute", [x], { axes }, shape, x.dtype);
}

/** Swaps two dimensions (default: the last two). */
export function transpose(x: Tensor, dim0 = -2, dim1 = -1): Tensor {
  checkTensor("transpose", "x", x);
  checkMinRank("transpose", "x", x, 2);
  const a = axisOf("transpose", dim0, x.rank, "dim0");
  const b = axisOf("transpose", dim1, x.rank, "dim1");
  const axes = Array.from({ length: x.rank }, (_, i) => i);
  axes[a] = b;
  axes[b] = a;
  return permuteNormalized(x, axes);
}

/** Broadcasts to `shape` (NumPy rules; -1 keeps the input extent). */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  checkTensor("expand", "x", x);
  const target = checkIntList("expand", "shape", shape, -1);
  const src = x.node.shape;
  if (target.length < src.length) {
    throw new TensorqError("cannot expand to a lower rank", {
      op: "expand",
      kind: "shape",
      argument: "shape",
      expected: `at least ${src.length} extents (the rank of ${fmtShape(src)})`,
      actual: fmtShape(target),
    });
  }
  const lead = target.length - src.length;
  const out = target.map((d, i) => {
    if (i < lead) {
      if (d === -1) {
        throw new TensorqError("-1 can only keep an existing dimension", {
          op: "expand",
          kind: "argument",
          argument: `shape[${i}]`,
          expected: "a non-negative extent for a new leading dimension",
          actual: "-1",
        });
      }
      return d;
    }
    const have = src[i - lead];
    if (d === -1 || d === have) return have;
    if (have !== 1) {
      throw new TensorqError("cannot expand a dimension whose extent is not 1", {
        op: "expand",
        kind: "shape",
        argument: "shape",
        expected: `extent ${have} (or -1) at dimension ${i} to expand ${fmtShape(src)}`,
        actual: `${d} in ${fmtShape(target)}`,
      });
    }
    return d;
  });
  if (sameShape(out, src)) return view(x, out);
  return makeOp("expand", [x], {}, out, x.dtype);
}

interface NormalizedRange {
  start: number;
  step: number;
  count: number;
  /** True for an integer index (the dim is dropped). */
  drop: boolean;
}

function sliceBound(op: string, argument: string, v: unknown): number | undefined {
  if (v === null || v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v)) {
    throw new TensorqError("slice bounds must be integers", {
      op,
      kind: "argument",
      argument,
      expected: "an integer, null or undefined",
      actual: describeValue(v),
    });
  }
  return v;
}

/** NumPy/Python slice normalization (PySlice_AdjustIndices) of one dimension of extent n. */
function normalizeRange(r: unknown, n: number, dim: number): NormalizedRange {
  const arg = `ranges[${dim}]`;
  if (r === null || r === undefined) return { start: 0, step: 1, count: n, drop: false };
  if (typeof r === "number") {
    if (!Number.isInteger(r) || r < -n || r >= n) {
      throw new TensorqError("index out of range", {
        op: "slice",
        kind: "argument",
        argument: arg,
        expected: Number.isInteger(r)
          ? `an index in [${-n}, ${n - 1}] for dimension ${dim} of extent ${n}`
          : "an integer index",
        actual: String(r),
      });
    }
    return { start: r < 0 ? r + n : r, step: 1, count: 1, drop: true };
  }
  if (!Array.isArray(r) || r.length > 3) {
    throw new TensorqError("invalid slice range", {
      op: "slice",
      kind: "argument",
      argument: arg,
      expected: "an integer index, null, or [start, stop, step]",
      actual: describeValue(r),
    });
  }
  const step = sliceBound("slice", `${arg}[2]`, r[2]) ?? 1;
  if (step === 0) {
    throw new TensorqError("slice step cannot be zero", {
      op: "slice",
      kind: "argument",
      argument: `${arg}[2]`,
      expected: "a non-zero step",
      actual: "0",
    });
  }
  const clamp = (v: number | undefined, isStart: boolean): number => {
    if (v === undefined) return isStart ? (step < 0 ? n - 1 : 0) : (step < 0 ? -1 : n);
    if (v < 0) {
      v += n;
      if (v < 0) v = step < 0 ? -1 : 0;
    } else if (v >= n) v = step < 0 ? n - 1 : n;
    return v;
  };
  let start = clamp(sliceBound("slice", `${arg}[0]`, r[0]), true);
  const stop = clamp(sliceBound("slice", `${arg}[1]`, r[1]), false);
  let count: number;
  if (step < 0) count = stop < start ? Math.floor((start - stop - 1) / -step) + 1 : 0;
  else count = start < stop ? Math.floor((stop - start - 1) / step) + 1 : 0;
  if (count === 0) start = 0; // canonical attrs for empty ranges
  return { start, step: count <= 1 ? 1 : step, count, drop: false };
}

/**
 * NumPy basic slicing: per dimension an integer index (drops the dim; negative counts from
 * the end; must be in range), `null` (all), or `[start, stop, step]` with Python's rules
 * (out-of-range bounds clamp, negative bounds count from the end, negative steps walk
 * backwards, a step of 0 is an error). Missing trailing dims are taken whole.
 */
export function slice(x: Tensor, ranges: readonly SliceRange[]): Tensor {
  checkTensor("slice", "x", x);
  const shape = x.node.shape;
  if (!Array.isArray(ranges)) {
    throw new TensorqError("ranges must be an array", {
      op: "slice",
      kind: "argument",
      argument: "ranges",
      expected: "an array with one entry per leading dimension",
      actual: describeValue(ranges),
    });
  }
  if (ranges.length > shape.length) {
    throw new TensorqError("too many ranges for the tensor's rank", {
      op: "slice",
      kind: "argument",
      argument: "ranges",
      expected: `at most ${shape.length} ranges for shape ${fmtShape(shape)}`,
      actual: `${ranges.length} ranges`,
    });
  }
  const norm = shape.map((n, d) => normalizeRange(ranges[d], n, d));
  const counts = norm.map((r) => r.count);
  const kept = shape.flatMap((_, d) => (norm[d].drop ? [] : [counts[d]]));
  if (norm.every((r, d) => r.count === shape[d] && (r.step === 1 || r.count <= 1))) {
    return view(x, kept); // selects everything, in order
  }
  const cut = makeOp(
    "slice",
    [x],
    {
      starts: norm.map((r) => r.start),
      steps: norm.map((r) => r.step),
      counts,
    },
    counts,
    x.dtype,
  );
  return kept.length === counts.length ? cut : view(cut, kept);
}

/**
 * Writes `src` into a copy of `x` along `axis`: returns x with
 * `x[..., start : start + src.shape[axis], ...] = src` (like `torch.slice_scatter` with step
 * 1). `x` is not modified. `x` and `src` share rank, dtype and device, and every extent but
 * the one of `axis` (which may be negative); `src.shape[axis] <= x.shape[axis]`.
 *
 * `start` is a JS integer in `[0, x.shape[axis] - src.shape[axis]]` (anything else is an
 * argument error), or an int32/int64 tensor of shape `[1]` or `[]` on the same device whose
 * value is read when the result is evaluated, so a compiled function (a recorded CUDA graph)
 * can write at a new position on every call. A tensor start outside that range is clamped
 * into it (a negative start writes at 0, a too-large one at the end).
 *
 * @param x The tensor to write into (for a static KV cache: `[B, H, maxLen, D]`).
 * @param src The values to write (for a KV cache: `[B, H, 1, D]`).
 * @param start First index along `axis` that receives `src`.
 * @param axis The axis to write along (default 0).
 * @returns A new tensor of x's shape, dtype and device.
 */
export function sliceScatter(
  x: Tensor,
  src: Tensor,
  start: number | Tensor,
  axis = 0,
): Tensor {
  const op = "sliceScatter";
  checkTensor(op, "x", x);
  checkTensor(op, "src", src);
  const startTensor = start instanceof Tensor ? start : undefined;
  const inputs = startTensor ? [x, src, startTensor] : [x, src];
  checkSameDType(op, ["x", "src"], [x, src]);
  checkSameDevice(op, ["x", "src", "start"], inputs);
  const shape = x.node.shape;
  const srcShape = src.node.shape;
  if (src.rank !== x.rank) {
    throw new TensorqError("x and src must have the same rank", {
      op,
      kind: "shape",
      argument: "src",
      expected: `rank ${x.rank} (as x ${fmtShape(shape)})`,
      actual: `shape ${fmtShape(srcShape)} (rank ${src.rank})`,
    });
  }
  const a = axisOf(op, axis, x.rank);
  for (let d = 0; d < shape.length; d++) {
    if (d !== a && srcShape[d] !== shape[d]) {
      throw new TensorqError("extents differ outside the scatter axis", {
        op,
        kind: "shape",
        argument: "src",
        expected: `extent ${shape[d]} at dimension ${d} (as x ${fmtShape(shape)})`,
        actual: `shape ${fmtShape(srcShape)}`,
      });
    }
  }
  const n = shape[a];
  const m = srcShape[a];
  if (m > n) {
    throw new TensorqError("src is longer than x along the axis", {
      op,
      kind: "shape",
      argument: "src",
      expected: `extent <= ${n} at dimension ${a} (x ${fmtShape(shape)})`,
      actual: `shape ${fmtShape(srcShape)}`,
    });
  }
  if (startTensor) {
    checkDTypeIn(op, "start", startTensor, INDEX_DTYPES);
    const s = startTensor.node.shape;
    if (s.length > 1 || (s.length === 1 && s[0] !== 1)) {
      throw new TensorqError("start must hold one value", {
        op,
        kind: "shape",
        argument: "start",
        expected: "shape [1] or []",
        actual: `shape ${fmtShape(s)}`,
      });
    }
  } else if (typeof start !== "number" || !Number.isSafeInteger(start)) {
    throw new TensorqError("start must be an integer or an index tensor", {
      op,
      kind: "argument",
      argument: "start",
      expected: "an integer, or an int32/int64 tensor of shape [1] or []",
      actual: describeValue(start),
    });
  } else if (start < 0 || start > n - m) {
    throw new TensorqError("start out of range", {
      op,
      kind: "argument",
      argument: "start",
      expected: `an integer in [0, ${n - m}] (extent ${n} of x minus extent ${m} of src ` +
        `at dimension ${a})`,
      actual: String(start),
    });
  }
  // Nothing to write, or src replaces everything (a tensor start clamps to 0): no copy.
  if (m === 0) return view(x, shape);
  if (m === n) return view(src, shape);
  const attrs = {
    axis: a,
    start: startTensor ? null : start as number,
    hasStartTensor: !!startTensor,
  };
  return makeOp(op, inputs, attrs, [...shape], x.dtype);
}

function checkTensorList(op: string, tensors: unknown): Tensor[] {
  if (!Array.isArray(tensors) || tensors.length === 0) {
    throw new TensorqError("needs at least one tensor", {
      op,
      kind: "argument",
      argument: "tensors",
      expected: "a non-empty array of tensors",
      actual: describeValue(tensors),
    });
  }
  const list = tensors.map((t, i) => checkTensor(op, `tensors[${i}]`, t));
  const names = list.map((_, i) => `tensors[${i}]`);
  checkSameDType(op, names, list);
  checkSameDevice(op, names, list);
  return list;
}

/** Joins tensors of one dtype and device along an existing axis. */
export function concat(tensors: readonly Tensor[], axis = 0): Tensor {
  const list = checkTensorList("concat", tensors);
  const first = list[0].node.shape;
  for (let i = 1; i < list.length; i++) {
    if (list[i].rank !== first.length) {
      throw new TensorqError("tensors must have the same rank", {
        op: "concat",
        kind: "shape",
        argument: `tensors[${i}]`,
        expected: `rank ${first.length} (as tensors[0] ${fmtShape(first)})`,
        actual: `shape ${fmtShape(list[i].node.shape)}`,
      });
    }
  }
  const a = axisOf("concat", axis, first.length);
  for (let i = 1; i < list.length; i++) {
    const s = list[i].node.shape;
    for (let d = 0; d < s.length; d++) {
      if (d !== a && s[d] !== first[d]) {
        throw new TensorqError("extents differ outside the concatenation axis", {
          op: "concat",
          kind: "shape",
          argument: `tensors[${i}]`,
          expected: `extent ${first[d]} at dimension ${d} (as tensors[0] ${fmtShape(first)})`,
          actual: `shape ${fmtShape(s)}`,
        });
      }
    }
  }
  const shape = [...first];
  shape[a] = list.reduce((acc, t) => acc + t.node.shape[a], 0);
  if (list.length === 1) return view(list[0], shape);
  return makeOp("concat", list, { axis: a }, shape, list[0].dtype);
}

/** Joins tensors of equal shape along a new axis (in [-rank-1, rank]). */
export function stack(tensors: readonly Tensor[], axis = 0): Tensor {
  const list = checkTensorList("stack", tensors);
  const first = list[0].node.shape;
  for (let i = 1; i < list.length; i++) {
    if (!sameShape(list[i].node.shape, first)) {
      throw new TensorqError("tensors must have the same shape", {
        op: "stack",
        kind: "shape",
        argument: `tensors[${i}]`,
        expected: `shape ${fmtShape(first)} (as tensors[0])`,
        actual: `shape ${fmtShape(list[i].node.shape)}`,
      });
    }
  }
  const a = newAxisOf("stack", axis, first.length);
  return concat(list.map((t) => unsqueeze(t, a)), a);
}

/**
 * Splits along `axis` into `sizes` equal parts (a number, which must divide the extent) or
 * parts of the given extents (which must sum to it). Each part is a {@link slice}.
 */
export function split(x: Tensor, sizes: number | readonly number[], axis = 0): Tensor[] {
  checkTensor("split", "x", x);
  const a = axisOf("split", axis, x.rank);
  const n = x.node.shape[a];
  let extents: number[];
  if (typeof sizes === "number") {
    const parts = checkInt("split", "sizes", sizes, 1);
    if (n % parts !== 0) {
      throw new TensorqError("the extent is not divisible into equal parts", {
        op: "split",
        kind: "shape",
        argument: "sizes",
        expected: `a divisor of ${n} (extent of axis ${axis} of ${fmtShape(x.node.shape)})`,
        actual: String(parts),
      });
    }
    extents = new Array<number>(parts).fill(n / parts);
  } else {
    extents = checkIntList("split", "sizes", sizes, 0);
    const total = extents.reduce((s, e) => s + e, 0);
    if (extents.length === 0 || total !== n) {
      throw new TensorqError("part extents must sum to the extent of the axis", {
        op: "split",
        kind: "shape",
        argument: "sizes",
        expected: `extents summing to ${n} (axis ${axis} of ${fmtShape(x.node.shape)})`,
        actual: `${fmtShape(extents)} (sum ${total})`,
      });
    }
  }
  const lead: SliceRange[] = new Array<SliceRange>(a).fill(null);
  let at = 0;
  return extents.map((e) => {
    const part = slice(x, [...lead, [at, at + e]]);
    at += e;
    return part;
  });
}

/**
 * The error of an index out of range met while evaluating a `gather` (outside
 * `[-extent, extent)`) or an `embedding` (outside `[0, extent)`), as both backends report it:
 * `value` at flat `position` of the indices.
 */
export function indexOutOfRangeError(
  op: string,
  extent: number,
  value: bigint | number,
  position: bigint | number,
): TensorqError {
  return new TensorqError("index out of range", {
    op,
    kind: "argument",
    argument: op === "embedding" ? "ids" : "indices",
    expected: op === "embedding"
      ? `ids in [0, ${extent - 1}] (a table of ${extent} rows)`
      : `indices in [${-extent}, ${extent - 1}] (an axis of extent ${extent})`,
    actual: `${value} at flat index ${position}`,
  });
}

/**
 * Selects entries along `axis` by integer `indices` (int32/int64, any shape):
 * output shape `x.shape[:axis] + indices.shape + x.shape[axis+1:]`. Indices must lie in
 * [-n, n) for an axis of extent n (negative ones count from the end, as in NumPy's take);
 * since values are only known at evaluation, a bad index raises then.
 */
export function gather(x: Tensor, indices: Tensor, axis = 0): Tensor {
  checkTensor("gather", "x", x);
  checkTensor("gather", "indices", indices);
  checkDTypeIn("gather", "indices", indices, INDEX_DTYPES);
  checkSameDevice("gather", ["x", "indices"], [x, indices]);
  checkMinRank("gather", "x", x, 1);
  const a = axisOf("gather", axis, x.rank);
  const s = x.node.shape;
  const shape = [...s.slice(0, a), ...indices.node.shape, ...s.slice(a + 1)];
  return makeOp("gather", [x, indices], { axis: a }, shape, x.dtype);
}

/**
 * Embedding lookup: rows of `weight` [vocab, dim] (any dtype) for integer `ids` (int32/int64)
 * of any shape; output `ids.shape + [dim]`. Ids must lie in [0, vocab), as in PyTorch's
 * `embedding`; anything else (a negative id included) raises at evaluation. Otherwise the same
 * computation as `gather(weight, ids, 0)`, which also takes negative indices.
 */
export function embedding(ids: Tensor, weight: Tensor): Tensor {
  checkTensor("embedding", "ids", ids);
  checkTensor("embedding", "weight", weight);
  checkDTypeIn("embedding", "ids", ids, INDEX_DTYPES);
  if (weight.rank !== 2) {
    throw new TensorqError("weight must be a matrix [vocab, dim]", {
      op: "embedding",
      kind: "shape",
      argument: "weight",
      expected: "rank 2",
      actual: `shape ${fmtShape(weight.node.shape)}`,
    });
  }
  checkSameDevice("embedding", ["weight", "ids"], [weight, ids]);
  const shape = [...ids.node.shape, weight.node.shape[1]];
  return makeOp("embedding", [weight, ids], { axis: 0 }, shape, weight.dtype);
}

function triangle(op: "triu" | "tril", x: Tensor, k: number): Tensor {
  checkTensor(op, "x", x);
  checkMinRank(op, "x", x, 2);
  const offset = checkInt(op, "k", k);
  return makeOp(op, [x], { k: offset }, x.node.shape, x.dtype);
}

/** Upper triangle of the last two dims (elements with col - row >= k kept, others 0). */
export function triu(x: Tensor, k = 0): Tensor {
  return triangle("triu", x, k);
}
/** Lower triangle of the last two dims (elements with col - row <= k kept, others 0). */
export function tril(x: Tensor, k = 0): Tensor {
  return triangle("tril", x, k);
}
/** Options of {@link causalMask}. */
export interface CausalMaskOptions {
  /** Device (default "cpu"). */
  device?: string;
  /**
   * Absolute position of the first query (default `keys - queries`: the queries are the
   * last `queries` positions of the `keys`, which covers decoding with a cache of past keys).
   */
  offset?: number;
}
/**
 * A bool mask [queries, keys] that is true where key position j may be attended from query
 * position i: `j <= i + offset`. With the default offset `keys - queries`, the queries are
 * the newest positions: `causalMask(1, 11)` lets the one new token see all 11 keys (10
 * cached ones and itself), and `causalMask(n)` is the usual lower triangle.
 */
export function causalMask(
  queries: number,
  keys: number = queries,
  options: CausalMaskOptions = {},
): Tensor {
  options = optionsOf("causalMask", options, ["device", "offset"]);
  const q = checkInt("causalMask", "queries", queries, 0);
  const k = checkInt("causalMask", "keys", keys, 0);
  const offset = options.offset === undefined
    ? k - q
    : checkInt("causalMask", "offset", options.offset);
  const device = parseDevice("causalMask", options.device ?? "cpu").name;
  return makeOp("causalMask", [], { offset }, [q, k], "bool", device);
}
