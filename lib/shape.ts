/**
 * Shape arithmetic shared by op rules and kernels: element counts, strides, broadcasting,
 * axis normalization.
 * @module
 */
import { fmtShape, TensorqError } from "./errors.ts";

/** A tensor shape: non-negative integer extents, outermost first. */
export type Shape = readonly number[];

/**
 * Most elements of a value made or computed on the host: the CPU kernels index elements with
 * int32 (broadcast and reduction offsets).
 */
export const MAX_HOST_ELEMENTS: number = 2 ** 31 - 1;

/** Number of elements of a shape (1 for rank 0). */
export function numel(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major (C-contiguous) strides in elements. */
export function stridesOf(shape: Shape): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** True when two shapes are equal. */
export function sameShape(a: Shape, b: Shape): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * NumPy broadcasting of several shapes; throws a shape error naming the op and the
 * arguments when two extents differ and neither is 1.
 */
export function broadcastShapes(op: string, shapes: Shape[], names?: string[]): number[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (let i = 0; i < rank; i++) {
    let dim = 1;
    let from = -1;
    for (let k = 0; k < shapes.length; k++) {
      const s = shapes[k];
      const d = s[s.length - rank + i] ?? 1;
      if (d === 1) continue;
      if (dim === 1) {
        dim = d;
        from = k;
      } else if (d !== dim) {
        const n = (j: number) => names?.[j] ?? `input ${j}`;
        throw new TensorqError("shapes cannot be broadcast", {
          op,
          kind: "shape",
          argument: n(k),
          expected: `extent ${dim} or 1 at dimension ${i - rank} (as ${n(from)} ${
            fmtShape(shapes[from])
          })`,
          actual: `shape ${fmtShape(s)}`,
        });
      }
    }
    out[i] = dim;
  }
  return out;
}

/**
 * Strides (in elements) that read a contiguous tensor of `shape` as if broadcast to `out`:
 * broadcast dimensions get stride 0.
 */
export function broadcastStrides(shape: Shape, out: Shape): number[] {
  const strides = stridesOf(shape);
  const r = new Array<number>(out.length).fill(0);
  const off = out.length - shape.length;
  for (let i = 0; i < shape.length; i++) r[off + i] = shape[i] === 1 ? 0 : strides[i];
  return r;
}

/** Normalizes a possibly negative axis for a tensor of `rank`; throws an axis error. */
export function normalizeAxis(op: string, axis: number, rank: number, argument = "axis"): number {
  if (typeof axis !== "number" || !Number.isInteger(axis)) {
    throw new TensorqError("axis must be an integer", {
      op,
      kind: "axis",
      argument,
      expected: `an integer in [${-Math.max(rank, 1)}, ${Math.max(rank, 1) - 1}]`,
      actual: describeValue(axis),
    });
  }
  if (axis < -Math.max(rank, 1) || axis >= Math.max(rank, 1)) {
    throw new TensorqError("axis out of range", {
      op,
      kind: "axis",
      argument,
      expected: rank === 0
        ? "an integer in [-1, 0] for a rank-0 tensor"
        : `an integer in [${-rank}, ${rank - 1}] for a rank-${rank} tensor`,
      actual: String(axis),
    });
  }
  return axis < 0 ? axis + Math.max(rank, 1) : axis;
}

/** Normalizes a list of axes (or all axes when undefined); rejects duplicates. */
export function normalizeAxes(
  op: string,
  axes: number | readonly number[] | undefined,
  rank: number,
): number[] {
  if (axes === undefined) return Array.from({ length: rank }, (_, i) => i);
  if (typeof axes !== "number" && !Array.isArray(axes)) {
    throw new TensorqError("axis must be an integer or an array of integers", {
      op,
      kind: "axis",
      argument: "axis",
      expected: "an integer, an array of integers, or undefined for every axis",
      actual: describeValue(axes),
    });
  }
  const list = typeof axes === "number" ? [axes] : [...axes];
  const out = list.map((a) => normalizeAxis(op, a, rank));
  if (new Set(out).size !== out.length) {
    throw new TensorqError("repeated axis", {
      op,
      kind: "axis",
      argument: "axis",
      expected: "distinct axes",
      actual: `[${list.join(", ")}]`,
    });
  }
  return out.sort((a, b) => a - b);
}

/** Validates a user shape: an array of non-negative integers. */
export function checkShape(op: string, shape: unknown, argument = "shape"): number[] {
  if (
    !Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)
  ) {
    throw new TensorqError("invalid shape", {
      op,
      kind: "argument",
      argument,
      expected: "an array of non-negative integers",
      actual: describeValue(shape),
    });
  }
  return [...shape];
}

/** A short description of any value for error messages (it never throws). */
export function describeValue(v: unknown): string {
  if (Array.isArray(v)) {
    return `[${v.slice(0, 8).map(describeValue).join(", ")}${v.length > 8 ? ", ..." : ""}]`;
  }
  if (typeof v === "string") return JSON.stringify(v.length > 80 ? `${v.slice(0, 77)}...` : v);
  if (typeof v === "bigint") return `${v}n (a bigint)`;
  if (typeof v === "function") return "a function";
  if (typeof v === "symbol") return v.toString();
  if (v === null || v === undefined || typeof v !== "object") return String(v);
  if (v instanceof RegExp) return String(v);
  return (v as { constructor?: { name?: string } }).constructor?.name ?? "object";
}

/**
 * `value` if it is a finite number (with `nonNegative`, one >= 0); otherwise an argument error
 * of `op` naming `argument`.
 */
export function checkFiniteNumber(
  op: string,
  argument: string,
  value: unknown,
  nonNegative = false,
): number {
  if (typeof value !== "number" || !Number.isFinite(value) || (nonNegative && value < 0)) {
    const rule = `a finite number${nonNegative ? " >= 0" : ""}`;
    throw new TensorqError(`${argument} must be ${rule}`, {
      op,
      kind: "argument",
      argument,
      expected: rule,
      actual: describeValue(value),
    });
  }
  return value;
}

/**
 * True for a plain object (`{ ... }`, or one made by `Object.create(null)`): not an array, a
 * class instance, a Map or a Promise, which an options or config argument must not be.
 */
export function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== "object" || v === null) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/**
 * The options argument of `op`, checked: undefined and null stand for the defaults (`{}`);
 * anything but a plain object (a string, an array, a tensor, a cache passed where options
 * go) and any key not in `known` (a misspelt option would be ignored) are argument errors.
 */
export function optionsOf<T extends object>(
  op: string,
  options: unknown,
  known: readonly string[],
  argument = "options",
): T {
  if (options === undefined || options === null) return {} as T;
  if (!isPlainObject(options)) {
    throw new TensorqError("options must be a plain object", {
      op,
      kind: "argument",
      argument,
      expected: `an object with ${known.join(", ")}`,
      actual: describeValue(options),
    });
  }
  checkKnownKeys(op, options, known, argument);
  return options as T;
}

/** Throws an argument error of `op` naming the first key of `options` not in `known`. */
export function checkKnownKeys(
  op: string,
  options: object,
  known: readonly string[],
  argument = "options",
): void {
  const unknown = Object.keys(options).filter((k) => !known.includes(k));
  if (unknown.length) {
    throw new TensorqError(`unknown option ${JSON.stringify(unknown[0])}`, {
      op,
      kind: "argument",
      argument: `${argument}.${unknown[0]}`,
      expected: `options among ${known.join(", ")}`,
      actual: unknown.map((k) => JSON.stringify(k)).join(", "),
    });
  }
}
