/**
 * Matrix product with NumPy's rules. Rule here; CPU kernel in lib/backends/cpu/matmul.ts.
 *
 * The op records no attrs: the kernel reads everything from the input shapes (a rank-1 `a`
 * is a row vector, a rank-1 `b` a column vector, leading dims are broadcast batch dims).
 * @module
 */
import { fmtShape, TensorqError } from "../errors.ts";
import type { Shape } from "../shape.ts";
import type { Tensor } from "../tensor.ts";
import {
  checkDTypeIn,
  checkSameDevice,
  checkSameDType,
  checkTensor,
  FLOAT_DTYPES,
  makeOp,
} from "./op.ts";

/** The batch dims two matmul operands broadcast to (undefined when they cannot). */
export function matmulBatchShape(aBatch: Shape, bBatch: Shape): number[] | undefined {
  const rank = Math.max(aBatch.length, bBatch.length);
  const out = new Array<number>(rank);
  for (let i = 0; i < rank; i++) {
    const da = aBatch[aBatch.length - rank + i] ?? 1;
    const db = bBatch[bBatch.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) return undefined;
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** The product a kernel computes for operand shapes a matmul accepted. */
export interface MatmulGeometry {
  /** Rows of each product (1 for a 1-D `a`, a row vector). */
  m: number;
  /** Columns of each product (1 for a 1-D `b`, a column vector). */
  n: number;
  /** The reduction length. */
  k: number;
  /** a's batch dims (empty for a 1-D or 2-D a). */
  aBatch: number[];
  /** b's batch dims (empty for a 1-D or 2-D b). */
  bBatch: number[];
  /** The batch dims they broadcast to. */
  batch: number[];
}

/** M, N, K and the batch dims of `a @ b` for shapes {@link matmul} checked already. */
export function matmulGeometry(as: Shape, bs: Shape): MatmulGeometry {
  const aBatch = as.slice(0, -2), bBatch = bs.slice(0, -2);
  return {
    m: as.length === 1 ? 1 : as[as.length - 2],
    n: bs.length === 1 ? 1 : bs[bs.length - 1],
    k: as[as.length - 1],
    aBatch,
    bBatch,
    batch: matmulBatchShape(aBatch, bBatch)!,
  };
}

/**
 * `a @ b`: 2-D × 2-D is the matrix product; N-D operands are stacks of matrices in the last
 * two dims with broadcast batch dims; a 1-D `a` is a row vector and a 1-D `b` a column vector
 * (the added dim is removed from the result, so vector · vector is rank 0). Operands share a
 * float dtype (float32, float16, bfloat16; no promotion). Products accumulate in float32 or
 * better and round once to the dtype.
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  const op = "matmul";
  checkTensor(op, "a", a);
  checkTensor(op, "b", b);
  checkDTypeIn(op, "a", a, FLOAT_DTYPES);
  const dtype = checkSameDType(op, ["a", "b"], [a, b]);
  checkSameDevice(op, ["a", "b"], [a, b]);
  const as = a.node.shape, bs = b.node.shape;
  for (const [name, s] of [["a", as], ["b", bs]] as const) {
    if (s.length === 0) {
      throw new TensorqError("operands must have at least one dim", {
        op,
        kind: "shape",
        argument: name,
        expected: "a tensor of rank 1 or more",
        actual: "a rank-0 tensor (use mul for scalars)",
      });
    }
  }
  const k = as[as.length - 1];
  const kb = bs.length === 1 ? bs[0] : bs[bs.length - 2];
  if (k !== kb) {
    throw new TensorqError("inner dims differ", {
      op,
      kind: "shape",
      argument: "b",
      expected: `${bs.length === 1 ? `length ${k}` : `extent ${k} at dim -2`} (the last dim of a ${
        fmtShape(as)
      })`,
      actual: `shape ${fmtShape(bs)}`,
    });
  }
  const aBatch = as.slice(0, -2), bBatch = bs.slice(0, -2);
  const batch = matmulBatchShape(aBatch, bBatch);
  if (!batch) {
    throw new TensorqError("batch dims cannot be broadcast", {
      op,
      kind: "shape",
      argument: "b",
      expected: `batch dims broadcastable with ${fmtShape(aBatch)} (a is ${fmtShape(as)})`,
      actual: `batch dims ${fmtShape(bBatch)} (b is ${fmtShape(bs)})`,
    });
  }
  const shape = [...batch];
  if (as.length > 1) shape.push(as[as.length - 2]);
  if (bs.length > 1) shape.push(bs[bs.length - 1]);
  return makeOp(op, [a, b], {}, shape, dtype);
}
