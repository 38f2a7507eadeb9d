/**
 * Reductions: sum, mean, max, min, argmax, argmin, variance along axes with keepdims.
 * Rules here; CPU kernels in lib/backends/cpu/reduce.ts.
 * @module
 */
import { TensorqError } from "../errors.ts";
import type { Tensor } from "../tensor.ts";

function todo(op: string): never {
  throw new TensorqError("not implemented yet", { op, kind: "unsupported" });
}

/** Sum over `axis` (all axes when undefined). */
export function sum(x: Tensor, axis?: number | readonly number[], keepdims = false): Tensor {
  return todo("sum") ?? x ?? axis ?? keepdims;
}
/** Mean over `axis`. */
export function mean(x: Tensor, axis?: number | readonly number[], keepdims = false): Tensor {
  return todo("mean") ?? x ?? axis ?? keepdims;
}
/** Maximum over `axis`. */
export function max(x: Tensor, axis?: number | readonly number[], keepdims = false): Tensor {
  return todo("max") ?? x ?? axis ?? keepdims;
}
/** Minimum over `axis`. */
export function min(x: Tensor, axis?: number | readonly number[], keepdims = false): Tensor {
  return todo("min") ?? x ?? axis ?? keepdims;
}
/** Index (int32) of the first maximum along `axis`, or of the flattened tensor. */
export function argmax(x: Tensor, axis?: number, keepdims = false): Tensor {
  return todo("argmax") ?? x ?? axis ?? keepdims;
}
/** Index (int32) of the first minimum along `axis`, or of the flattened tensor. */
export function argmin(x: Tensor, axis?: number, keepdims = false): Tensor {
  return todo("argmin") ?? x ?? axis ?? keepdims;
}
/** Variance over `axis`: Σ(x − mean)² / (N − correction). */
export function variance(
  x: Tensor,
  axis?: number | readonly number[],
  keepdims = false,
  correction = 0,
): Tensor {
  return todo("var") ?? x ?? axis ?? keepdims ?? correction;
}
