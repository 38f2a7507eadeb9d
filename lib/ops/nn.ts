/**
 * Neural-network ops: softmax, log-softmax, layer norm. Rules here; CPU kernels in
 * lib/backends/cpu/nn.ts.
 * @module
 */
import { TensorqError } from "../errors.ts";
import type { Tensor } from "../tensor.ts";

function todo(op: string): never {
  throw new TensorqError("not implemented yet", { op, kind: "unsupported" });
}

/** Softmax along `axis` (last by default), computed stably (max subtracted). */
export function softmax(x: Tensor, axis = -1): Tensor {
  return todo("softmax") ?? x ?? axis;
}
/** Log-softmax along `axis`. */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  return todo("logSoftmax") ?? x ?? axis;
}
/**
 * Layer normalization over the trailing dims of `weight`'s shape (the last dim when no
 * weight): `(x − mean) / sqrt(var + eps) · weight + bias`, population variance.
 */
export function layerNorm(x: Tensor, weight?: Tensor, bias?: Tensor, eps = 1e-5): Tensor {
  return todo("layerNorm") ?? x ?? weight ?? bias ?? eps;
}
