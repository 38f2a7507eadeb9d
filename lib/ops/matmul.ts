/**
 * Matrix product with NumPy's rules. Rule here; CPU kernel in lib/backends/cpu/matmul.ts.
 * @module
 */
import { TensorqError } from "../errors.ts";
import type { Tensor } from "../tensor.ts";

/**
 * `a @ b`: 2-D × 2-D is the matrix product; N-D operands are stacks of matrices in the last
 * two dims with broadcast batch dims; a 1-D `a` is a row vector and a 1-D `b` a column vector
 * (the added dim is removed from the result). Operands share a float dtype.
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  throw new TensorqError("not implemented yet", { op: "matmul", kind: "unsupported" }) ?? a ?? b;
}
