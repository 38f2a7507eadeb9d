/**
 * Shared machinery of op definitions: turning arguments into tensors, checking dtypes and
 * devices, and creating the graph node that records the user's call site.
 * @module
 */
import { type DType, dtypeInfo, isRepresentable } from "../dtype.ts";
import { TensorqError } from "../errors.ts";
import { nodeTrace } from "../errors.ts";
import { type Attrs, Node } from "../graph/node.ts";
import type { Shape } from "../shape.ts";
import { disposedDescription, isDisposed, scalar, Tensor } from "../tensor.ts";

/** A tensor or a JS number (a number takes the other operand's dtype and device). */
export type TensorLike = Tensor | number;

export { FLOAT_DTYPES, NUMERIC_DTYPES } from "../dtype.ts";

/** Throws unless `value` is a Tensor. */
export function checkTensor(op: string, argument: string, value: unknown): Tensor {
  if (value instanceof Tensor) return checkLive(op, argument, value);
  throw new TensorqError("expected a tensor", {
    op,
    kind: "argument",
    argument,
    expected: "a Tensor",
    actual: value === null ? "null" : Array.isArray(value) ? "an array" : typeof value,
  });
}

/** `t`, unless it was disposed (its memory and inputs are gone): then a state error. */
function checkLive(op: string, argument: string, t: Tensor): Tensor {
  if (!isDisposed(t)) return t;
  throw new TensorqError("the tensor was disposed", {
    op,
    kind: "state",
    argument,
    expected: "a live tensor",
    actual: disposedDescription(t),
  });
}

/** Throws a dtype error unless `t.dtype` is one of `allowed`. */
export function checkDTypeIn(op: string, argument: string, t: Tensor, allowed: readonly DType[]) {
  if (!allowed.includes(t.dtype)) {
    throw new TensorqError("unsupported dtype", {
      op,
      kind: "dtype",
      argument,
      expected: `one of ${allowed.join(", ")}`,
      actual: t.dtype,
    });
  }
}

/** Throws a dtype error unless all tensors share one dtype (no implicit promotion). */
export function checkSameDType(op: string, names: string[], ts: Tensor[]): DType {
  for (let i = 1; i < ts.length; i++) {
    if (ts[i].dtype !== ts[0].dtype) {
      throw new TensorqError("dtypes differ; tensorq never promotes implicitly, use cast()", {
        op,
        kind: "dtype",
        argument: names[i],
        expected: `${ts[0].dtype} (the dtype of '${names[0]}')`,
        actual: ts[i].dtype,
      });
    }
  }
  return ts[0].dtype;
}

/** Throws a device error unless all tensors share one device. */
export function checkSameDevice(op: string, names: string[], ts: Tensor[]): string {
  for (let i = 1; i < ts.length; i++) {
    if (ts[i].device !== ts[0].device) {
      throw new TensorqError("inputs are on different devices; move one with .to()", {
        op,
        kind: "device",
        argument: names[i],
        expected: `${ts[0].device} (the device of '${names[0]}')`,
        actual: ts[i].device,
      });
    }
  }
  return ts[0].device;
}

/**
 * Converts binary operands: tensors stay, a JS number becomes a rank-0 constant with the
 * other operand's dtype and device. At least one operand must be a tensor.
 */
export function operands(op: string, names: string[], values: TensorLike[]): Tensor[] {
  const ref = values.find((v) => v instanceof Tensor) as Tensor | undefined;
  if (!ref) {
    throw new TensorqError("at least one operand must be a tensor", {
      op,
      kind: "argument",
      argument: names[0],
      expected: "a Tensor",
      actual: typeof values[0],
    });
  }
  return values.map((v, i) => {
    if (v instanceof Tensor) return checkLive(op, names[i], v);
    if (typeof v === "number" || typeof v === "boolean") {
      const value = Number(v);
      // Encoding would truncate or saturate it silently (x.mul(0.5) on int32 gave zeros, and
      // a bool tensor compared equal to 2 as to true).
      if (!isRepresentable(ref.dtype, value)) {
        const info = dtypeInfo(ref.dtype);
        const range = ref.dtype === "bool"
          ? "true, false, 0 or 1"
          : ref.dtype === "int64"
          ? "an integer in [-2^63, 2^63 - 1]"
          : `an integer in [${info.min}, ${info.max}]`;
        throw new TensorqError("a number operand must be representable in the tensor's dtype", {
          op,
          kind: "dtype",
          argument: names[i],
          expected: `${range} (the tensor operand is ${ref.dtype}); ` +
            "cast the tensor to a float dtype first",
          actual: String(value),
        });
      }
      return scalar(value, ref.dtype, ref.device);
    }
    return checkTensor(op, names[i], v);
  });
}

/** Creates the output tensor of an op (the rule has already checked the inputs). */
export function makeOp(
  op: string,
  inputs: Tensor[],
  attrs: Attrs,
  shape: Shape,
  dtype: DType,
  device: string = inputs[0].device,
): Tensor {
  inputs.forEach((t, i) => checkLive(op, `input ${i}`, t));
  const node = new Node(op, inputs.map((t) => t.node), attrs, shape, dtype, device, nodeTrace());
  return new Tensor(node);
}
