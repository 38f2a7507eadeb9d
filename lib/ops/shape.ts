/**
 * Shape ops: reshape, permute/transpose, squeeze/unsqueeze, expand, flatten, slice, concat,
 * stack, split, gather and embedding lookup, triu/tril and the causal mask. Rules here; CPU
 * kernels in lib/backends/cpu/shape.ts.
 * @module
 */
import { TensorqError } from "../errors.ts";
import type { Tensor } from "../tensor.ts";

/** One dimension of a {@link slice}: an index (drops the dim), `null` (all) or `[start, stop, step]`. */
export type SliceRange =
  | number
  | null
  | readonly [start?: number | null, stop?: number | null, step?: number | null];

function todo(op: string): never {
  throw new TensorqError("not implemented yet", { op, kind: "unsupported" });
}

/** Same data, another shape; one extent may be -1 (inferred). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  return todo("reshape") ?? x ?? shape;
}
/** Reorders dimensions: output dim i is input dim `axes[i]`. */
export function permute(x: Tensor, axes: readonly number[]): Tensor {
  return todo("permute") ?? x ?? axes;
}
/** Swaps two dimensions (default: the last two). */
export function transpose(x: Tensor, dim0 = -2, dim1 = -1): Tensor {
  return todo("transpose") ?? x ?? dim0 ?? dim1;
}
/** Removes dimensions of extent 1: all of them, or the given ones (which must be 1). */
export function squeeze(x: Tensor, axis?: number | readonly number[]): Tensor {
  return todo("squeeze") ?? x ?? axis;
}
/** Inserts a dimension of extent 1 at `axis` (in [-rank-1, rank]). */
export function unsqueeze(x: Tensor, axis: number): Tensor {
  return todo("unsqueeze") ?? x ?? axis;
}
/** Broadcasts to `shape` (NumPy rules; -1 keeps the input extent). */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  return todo("expand") ?? x ?? shape;
}
/** Merges dims `startAxis..endAxis` (inclusive) into one. */
export function flatten(x: Tensor, startAxis = 0, endAxis = -1): Tensor {
  return todo("flatten") ?? x ?? startAxis ?? endAxis;
}
/** NumPy basic slicing; missing trailing dims are taken whole; negative steps allowed. */
export function slice(x: Tensor, ranges: readonly SliceRange[]): Tensor {
  return todo("slice") ?? x ?? ranges;
}
/** Joins tensors of one dtype and device along an existing axis. */
export function concat(tensors: readonly Tensor[], axis = 0): Tensor {
  return todo("concat") ?? tensors ?? axis;
}
/** Joins tensors of equal shape along a new axis. */
export function stack(tensors: readonly Tensor[], axis = 0): Tensor {
  return todo("stack") ?? tensors ?? axis;
}
/** Splits into `sizes` equal parts (a number) or parts of the given extents. */
export function split(x: Tensor, sizes: number | readonly number[], axis = 0): Tensor[] {
  return todo("split") ?? x ?? sizes ?? axis;
}
/**
 * Selects entries along `axis` by integer `indices` (int32/int64, any shape):
 * output shape `x.shape[:axis] + indices.shape + x.shape[axis+1:]`.
 */
export function gather(x: Tensor, indices: Tensor, axis = 0): Tensor {
  return todo("gather") ?? x ?? indices ?? axis;
}
/** Embedding lookup: rows of `weight` [vocab, dim] for integer `ids` of any shape. */
export function embedding(ids: Tensor, weight: Tensor): Tensor {
  return todo("embedding") ?? ids ?? weight;
}
/** Upper triangle of the last two dims (elements with col - row >= k kept, others 0). */
export function triu(x: Tensor, k = 0): Tensor {
  return todo("triu") ?? x ?? k;
}
/** Lower triangle of the last two dims (elements with col - row <= k kept, others 0). */
export function tril(x: Tensor, k = 0): Tensor {
  return todo("tril") ?? x ?? k;
}
/** Options of {@link causalMask}. */
export interface CausalMaskOptions {
  /** Device (default "cpu"). */
  device?: string;
  /** Offset of the first query position (for decoding with a cache of `offset` keys). */
  offset?: number;
}
/**
 * A bool mask [queries, keys] that is true where key position j may be attended from query
 * position i: `j <= i + offset`.
 */
export function causalMask(
  queries: number,
  keys: number = queries,
  options: CausalMaskOptions = {},
): Tensor {
  return todo("causalMask") ?? queries ?? keys ?? options;
}
