/**
 * The lazy {@link Tensor} handle and the functions that create tensors from data.
 *
 * A tensor is immutable: an op returns a new tensor whose node records the op. Nothing runs
 * until a value is needed (`await t.data()`, `t.dataSync()`, `t.toArray()`, printing); an
 * evaluated tensor keeps its value, and later ops use it as a constant.
 * @module
 */
import {
  checkDType,
  decode,
  type DType,
  dtypeInfo,
  encode,
  formatNumber,
  isRepresentable,
  stickyNumber,
  type StorageArray,
} from "./dtype.ts";
import { parseDevice } from "./device.ts";
import { nodeTrace, TensorqError, TRACED_NO_VALUE } from "./errors.ts";
import { Node } from "./graph/node.ts";
import { backendOf, realize } from "./runtime/evaluate.ts";
import {
  checkFiniteNumber,
  checkShape,
  describeValue,
  MAX_HOST_ELEMENTS,
  numel,
  optionsOf,
  type Shape,
} from "./shape.ts";
import * as ew from "./ops/elementwise.ts";
import type { GeluOptions } from "./ops/elementwise.ts";
import * as sh from "./ops/shape.ts";
import * as rd from "./ops/reduce.ts";
import * as nn from "./ops/nn.ts";
import { matmul } from "./ops/matmul.ts";
import type { SliceRange } from "./ops/shape.ts";
import "./backends/cpu/mod.ts";
import "./backends/cuda/mod.ts";

/** Values a tensor's data comes back as: floats decoded to Float32Array, int64 as BigInt64Array. */
export type TensorData = Float32Array | Int8Array | Int32Array | BigInt64Array | Uint8Array;

/** Nested arrays of numbers or booleans, as returned by {@link Tensor.toArray}. */
export type NestedArray = number | boolean | NestedArray[];

/** A lazy tensor: a shape, a dtype, a device and the graph node that produces it. */
export class Tensor {
  /** The graph node behind this tensor. */
  readonly node: Node;

  /** Wraps a graph node (library use; create tensors with {@link tensor} and the ops). */
  constructor(node: Node) {
    // `new Tensor([1, 2])` is PyTorch's habit; here data goes through tensor().
    if (!(node instanceof Node)) {
      throw new TensorqError("new Tensor() wraps a graph node; create tensors with tensor(data)", {
        op: "Tensor",
        kind: "argument",
        argument: "node",
        expected: "a graph node (library use), or call tensor(data, options) instead",
        actual: describeValue(node),
      });
    }
    this.node = node;
  }

  /** The shape, outermost dimension first. */
  get shape(): number[] {
    return [...this.node.shape];
  }
  /** The element type. */
  get dtype(): DType {
    return this.node.dtype;
  }
  /** The canonical device name: `"cpu"` or `"cuda:N"`. */
  get device(): string {
    return this.node.device;
  }
  /** The number of dimensions. */
  get rank(): number {
    return this.node.shape.length;
  }
  /** The number of elements. */
  get size(): number {
    return numel(this.node.shape);
  }
  /** True once the value has been computed and kept. */
  get isEvaluated(): boolean {
    return this.node.realized && !this.node.placeholder;
  }

  /** Evaluates the tensor now (if needed) and returns it. */
  evaluate(): this {
    checkNotDisposed(this, "evaluate");
    realize([this.node]);
    return this;
  }

  /** The values, without blocking the event loop on device work. */
  async data(): Promise<TensorData> {
    checkNotDisposed(this, "data");
    realize([this.node]);
    const backend = backendOf(this.device, "data");
    return storageToData(this.dtype, await backend.downloadAsync(this.node.buffer!));
  }

  /** The values (blocking), in a copy the caller may change. */
  dataSync(): TensorData {
    return storageToData(this.dtype, this.storageSync());
  }

  /**
   * The raw host storage (see lib/dtype.ts: bit patterns for float16/bfloat16/fp8). On the
   * CPU this is the tensor's own array, not a copy: treat it as read-only. Tensors are values,
   * and kernels cache forms derived from a weight's storage (packed or quantized copies), so a
   * write would reach some computations and not others. Use {@link Tensor.dataSync} for a
   * copy.
   */
  storageSync(): StorageArray {
    checkNotDisposed(this, "dataSync");
    realize([this.node]);
    return backendOf(this.device, "dataSync").download(this.node.buffer!);
  }

  /**
   * The values as nested arrays (numbers; booleans for bool). An int64 value outside the safe
   * integers (|v| ≥ 2^53) may have no exact number: it is an error (read it with {@link Tensor.dataSync}, a BigInt64Array).
   */
  toArray(): NestedArray {
    const storage = this.storageSync();
    if (this.dtype === "int64") checkSafeInts("toArray", storage as BigInt64Array);
    const values = decode(this.dtype, storage);
    const isBool = this.dtype === "bool";
    const build = (dim: number, offset: number): NestedArray => {
      if (dim === this.rank) {
        const v = values[offset];
        return isBool ? v !== 0 : v;
      }
      const inner = numel(this.node.shape.slice(dim + 1));
      return Array.from(
        { length: this.node.shape[dim] },
        (_, i) => build(dim + 1, offset + i * inner),
      );
    };
    return build(0, 0);
  }

  /**
   * The single value of a one-element tensor (bool gives 1 or 0; an int64 with |v| ≥ 2^53 is an
   * error, as in {@link Tensor.toArray}).
   */
  item(): number {
    if (this.size !== 1) {
      throw new TensorqError("item() needs a tensor of one element", {
        op: "item",
        kind: "shape",
        expected: "a tensor of one element",
        actual: `shape [${this.shape.join(", ")}]`,
      });
    }
    const storage = this.storageSync();
    if (this.dtype === "int64") checkSafeInts("item", storage as BigInt64Array);
    return decode(this.dtype, storage)[0];
  }

  /** Copies the tensor to a device (evaluating it first). Returns `this` if already there. */
  to(device: string): Tensor {
    const spec = parseDevice("to", device);
    if (spec.name === this.device) return this;
    const target = backendOf(spec.name, "to");
    const storage = this.storageSync();
    const buffer = target.upload(spec.name, this.dtype, storage);
    const node = new Node("constant", [], {}, this.node.shape, this.dtype, spec.name);
    node.realize(buffer);
    return new Tensor(node);
  }

  /** Frees the tensor's memory now; using it afterwards is an error. */
  dispose(): void {
    this.node.buffer?.dispose();
    this.node.inputs = [];
    disposedNodes.add(this.node);
  }

  /** Frees the tensor's memory at the end of a `using` block. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Evaluates and formats the values, like NumPy. */
  toString(): string {
    return formatTensor(this);
  }

  /** console.log support: evaluates, as printing does in Tripy. */
  [Symbol.for("Deno.customInspect")](): string {
    return formatTensor(this);
  }

  // ---- elementwise ----
  /** Elementwise sum (broadcasting). */
  add(other: Tensor | number): Tensor {
    return ew.add(this, other);
  }
  /** Elementwise difference. */
  sub(other: Tensor | number): Tensor {
    return ew.sub(this, other);
  }
  /** Elementwise product. */
  mul(other: Tensor | number): Tensor {
    return ew.mul(this, other);
  }
  /** Elementwise quotient (true division for floats, truncating for integers). */
  div(other: Tensor | number): Tensor {
    return ew.div(this, other);
  }
  /** Elementwise power. */
  pow(other: Tensor | number): Tensor {
    return ew.pow(this, other);
  }
  /** Elementwise maximum. */
  maximum(other: Tensor | number): Tensor {
    return ew.maximum(this, other);
  }
  /** Elementwise minimum. */
  minimum(other: Tensor | number): Tensor {
    return ew.minimum(this, other);
  }
  /** Elementwise `==` (bool result). */
  equal(other: Tensor | number): Tensor {
    return ew.equal(this, other);
  }
  /** Elementwise `!=` (bool result). */
  notEqual(other: Tensor | number): Tensor {
    return ew.notEqual(this, other);
  }
  /** Elementwise `<` (bool result). */
  less(other: Tensor | number): Tensor {
    return ew.less(this, other);
  }
  /** Elementwise `<=` (bool result). */
  lessEqual(other: Tensor | number): Tensor {
    return ew.lessEqual(this, other);
  }
  /** Elementwise `>` (bool result). */
  greater(other: Tensor | number): Tensor {
    return ew.greater(this, other);
  }
  /** Elementwise `>=` (bool result). */
  greaterEqual(other: Tensor | number): Tensor {
    return ew.greaterEqual(this, other);
  }
  /** Negation. */
  neg(): Tensor {
    return ew.neg(this);
  }
  /** Absolute value. */
  abs(): Tensor {
    return ew.abs(this);
  }
  /** e^x. */
  exp(): Tensor {
    return ew.exp(this);
  }
  /** Natural logarithm. */
  log(): Tensor {
    return ew.log(this);
  }
  /** Square root. */
  sqrt(): Tensor {
    return ew.sqrt(this);
  }
  /** 1 / sqrt(x). */
  rsqrt(): Tensor {
    return ew.rsqrt(this);
  }
  /** Hyperbolic tangent. */
  tanh(): Tensor {
    return ew.tanh(this);
  }
  /** Logistic sigmoid. */
  sigmoid(): Tensor {
    return ew.sigmoid(this);
  }
  /** max(x, 0). */
  relu(): Tensor {
    return ew.relu(this);
  }
  /** GELU, exact (erf) or with the tanh approximation. */
  gelu(options?: GeluOptions): Tensor {
    return ew.gelu(this, options);
  }
  /** Converts to another dtype (the rules are those of the `cast` op). */
  cast(dtype: DType): Tensor {
    return ew.cast(this, dtype);
  }

  // ---- matmul ----
  /** Matrix product with NumPy's rules (batched, 1-D operands). */
  matmul(other: Tensor): Tensor {
    return matmul(this, other);
  }

  // ---- shape ----
  /** Same data, another shape (one extent may be -1). */
  reshape(shape: readonly number[]): Tensor {
    return sh.reshape(this, shape);
  }
  /** Reorders the dimensions. */
  permute(axes: readonly number[]): Tensor {
    return sh.permute(this, axes);
  }
  /** Swaps two dimensions (the last two by default). */
  transpose(dim0?: number, dim1?: number): Tensor {
    return sh.transpose(this, dim0, dim1);
  }
  /** Removes dimensions of extent 1 (all, or the given ones). */
  squeeze(axis?: number | readonly number[]): Tensor {
    return sh.squeeze(this, axis);
  }
  /** Inserts a dimension of extent 1. */
  unsqueeze(axis: number): Tensor {
    return sh.unsqueeze(this, axis);
  }
  /** Broadcasts to a larger shape (-1 keeps an extent). */
  expand(shape: readonly number[]): Tensor {
    return sh.expand(this, shape);
  }
  /** Merges dimensions `startAxis..endAxis` into one. */
  flatten(startAxis?: number, endAxis?: number): Tensor {
    return sh.flatten(this, startAxis, endAxis);
  }
  /** Slices with NumPy semantics: an index, `null` (all), or `[start, stop, step]` per dim. */
  slice(ranges: readonly SliceRange[]): Tensor {
    return sh.slice(this, ranges);
  }
  /** Selects entries along an axis by integer indices. */
  gather(indices: Tensor, axis?: number): Tensor {
    return sh.gather(this, indices, axis);
  }
  /** Splits into equal parts (a number) or parts of the given sizes along an axis. */
  split(sizes: number | readonly number[], axis?: number): Tensor[] {
    return sh.split(this, sizes, axis);
  }

  // ---- reductions ----
  /** Sum over axes (all by default). */
  sum(axis?: number | readonly number[], keepdims?: boolean): Tensor {
    return rd.sum(this, axis, keepdims);
  }
  /** Mean over axes. */
  mean(axis?: number | readonly number[], keepdims?: boolean): Tensor {
    return rd.mean(this, axis, keepdims);
  }
  /** Maximum over axes. */
  max(axis?: number | readonly number[], keepdims?: boolean): Tensor {
    return rd.max(this, axis, keepdims);
  }
  /** Minimum over axes. */
  min(axis?: number | readonly number[], keepdims?: boolean): Tensor {
    return rd.min(this, axis, keepdims);
  }
  /** Index of the maximum along an axis (of the flattened tensor by default); int32. */
  argmax(axis?: number, keepdims?: boolean): Tensor {
    return rd.argmax(this, axis, keepdims);
  }
  /** Index of the minimum along an axis; int32. */
  argmin(axis?: number, keepdims?: boolean): Tensor {
    return rd.argmin(this, axis, keepdims);
  }
  /** Variance over axes (`correction` 0: population variance). */
  var(axis?: number | readonly number[], keepdims?: boolean, correction?: number): Tensor {
    return rd.variance(this, axis, keepdims, correction);
  }

  // ---- nn ----
  /** Softmax along an axis (last by default). */
  softmax(axis?: number): Tensor {
    return nn.softmax(this, axis);
  }
  /** Log-softmax along an axis (last by default). */
  logSoftmax(axis?: number): Tensor {
    return nn.logSoftmax(this, axis);
  }
}

const disposedNodes = new WeakSet<Node>();

function checkNotDisposed(t: Tensor, op: string): void {
  if (disposedNodes.has(t.node)) {
    throw new TensorqError("the tensor was disposed", { op, kind: "state" });
  }
  if (t.node.placeholder) {
    throw new TensorqError(
      `a compile() input has ${TRACED_NO_VALUE}; only shapes and dtypes are known`,
      { op, kind: "state" },
    );
  }
}

/** Refuses int64 values that a JS number cannot hold exactly (it would round silently). */
function checkSafeInts(op: string, values: BigInt64Array): void {
  const limit = BigInt(Number.MAX_SAFE_INTEGER);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v > limit || v < -limit) {
      throw new TensorqError("an int64 value is beyond what a JS number holds exactly", {
        op,
        kind: "dtype",
        expected: "values within ±(2^53 - 1); dataSync() gives every int64 as a BigInt",
        actual: `${v} at flat index ${i}`,
      });
    }
  }
}

/** True when `t` was disposed (library use). */
export function isDisposed(t: Tensor): boolean {
  return disposedNodes.has(t.node);
}

/** How errors describe a disposed tensor: "a disposed float32 tensor of shape [2, 3]". */
export function disposedDescription(t: Tensor): string {
  return `a disposed ${t.dtype} tensor of shape [${t.shape.join(", ")}]`;
}

function storageToData(dtype: DType, storage: StorageArray): TensorData {
  if (dtype === "int64") return (storage as BigInt64Array).slice();
  const values = decode(dtype, storage);
  // Floats stored as bits decode to a fresh array; everything else is copied so callers
  // cannot change a memoized value.
  return (values === storage ? values.slice() : values) as TensorData;
}

// ---------------------------------------------------------------------------------------
// Creation

/** The keys of {@link CreateOptions}. */
export const CREATE_OPTIONS: readonly string[] = ["dtype", "device"];

/** Options of the creation functions. */
export interface CreateOptions {
  /** Element type (default float32, or inferred from the data where noted). */
  dtype?: DType;
  /** Device (default "cpu"). */
  device?: string;
}

/** Creates a realized tensor from host storage (library use; no copy on the CPU). */
export function fromStorage(
  storage: StorageArray,
  shape: Shape,
  dtype: DType,
  device = "cpu",
): Tensor {
  const spec = parseDevice("tensor", device);
  const buffer = backendOf(spec.name, "tensor").upload(spec.name, dtype, storage);
  const node = new Node("constant", [], {}, [...shape], dtype, spec.name, nodeTrace());
  node.realize(buffer);
  return new Tensor(node);
}

/** A rank-0 tensor (library use: JS numbers in binary ops become these). */
export function scalar(value: number, dtype: DType, device = "cpu"): Tensor {
  return fromStorage(encode(dtype, [value]), [], dtype, device);
}

/** Typed arrays accepted by {@link tensor}. */
export type TypedArrayInput =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array;

/** Data accepted by {@link tensor}. */
export type TensorInput = number | boolean | TypedArrayInput | readonly TensorInput[];

/** Options of {@link tensor}. */
export interface TensorOptions extends CreateOptions {
  /** Shape for flat typed-array data (default: 1-D). */
  shape?: readonly number[];
}

/** The dtype of typed-array data (undefined for numbers and nested arrays). */
function typedArrayDType(data: TensorInput): DType | undefined {
  if (data instanceof Int8Array) return "int8";
  if (
    data instanceof Int32Array || data instanceof Int16Array || data instanceof Uint8Array ||
    data instanceof Uint16Array
  ) return "int32";
  if (data instanceof BigInt64Array || data instanceof Uint32Array) return "int64";
  if (data instanceof Float32Array || data instanceof Float64Array) return "float32";
  return undefined;
}

/**
 * Creates a tensor from a number, nested arrays, or a typed array. The dtype is inferred
 * when not given: only booleans → bool; Int8Array → int8; Int32Array, Int16Array,
 * Uint8Array, Uint16Array → int32; BigInt64Array, Uint32Array → int64; everything else
 * (numbers, mixed numbers and booleans, Float32Array, Float64Array) → float32. Values are
 * converted with the dtype's rounding (int64 data once, however wide the value); integer
 * dtypes reject non-integral or out-of-range values; for bool any nonzero value is true.
 */
export function tensor(data: TensorInput, options: TensorOptions = {}): Tensor {
  options = optionsOf("tensor", options, ["dtype", "device", "shape"]);
  let dtype = options.dtype === undefined
    ? typedArrayDType(data)
    : checkDType("tensor", "dtype", options.dtype);
  let shape: number[];
  let flat: ArrayLike<number>;
  if (ArrayBuffer.isView(data)) {
    const n = (data as TypedArrayInput).length;
    shape = options.shape != null ? checkShape("tensor", options.shape) : [n];
    if (numel(shape) !== n) {
      throw new TensorqError("shape does not match the data", {
        op: "tensor",
        kind: "shape",
        argument: "shape",
        expected: `${n} elements`,
        actual: `[${shape.join(", ")}] (${numel(shape)} elements)`,
      });
    }
    dtype ??= "float32";
    if (data instanceof BigInt64Array) {
      if (dtype === "int64") return fromStorage(data.slice(), shape, dtype, options.device);
      // Number() rounds to 53 bits; a float dtype would then round a second time.
      const toNumber = dtypeInfo(dtype).isFloat ? stickyNumber : Number;
      flat = Float64Array.from(data, (v) => toNumber(v));
    } else flat = data as ArrayLike<number>;
  } else {
    shape = [];
    let v: unknown = data;
    while (Array.isArray(v)) {
      shape.push(v.length);
      v = v[0];
    }
    const out: number[] = [];
    let numbers = false, booleans = false;
    const walk = (x: unknown, dim: number): void => {
      if (dim === shape.length) {
        if (typeof x === "number") {
          out.push(x);
          numbers = true;
        } else if (typeof x === "boolean") {
          out.push(x ? 1 : 0);
          booleans = true;
        } else {
          throw new TensorqError("data must hold numbers or booleans", {
            op: "tensor",
            kind: "argument",
            argument: "data",
            expected: "a number or boolean at the innermost level",
            actual: describeValue(x),
          });
        }
        return;
      }
      if (!Array.isArray(x) || x.length !== shape[dim]) {
        throw new TensorqError("nested arrays are ragged", {
          op: "tensor",
          kind: "shape",
          argument: "data",
          expected: `an array of length ${shape[dim]} at depth ${dim}`,
          actual: describeValue(x),
        });
      }
      for (const e of x) walk(e, dim + 1);
    };
    walk(data, 0);
    dtype ??= booleans && !numbers ? "bool" : "float32";
    flat = out;
    if (options.shape != null) {
      shape = checkShape("tensor", options.shape);
      if (numel(shape) !== out.length) {
        throw new TensorqError("shape does not match the data", {
          op: "tensor",
          kind: "shape",
          argument: "shape",
          expected: `${out.length} elements`,
          actual: `[${shape.join(", ")}]`,
        });
      }
    }
  }
  checkRepresentable("tensor", dtype, flat);
  return fromStorage(encode(dtype, flat), shape, dtype, options.device);
}

/**
 * A float64 scratch array of `n` elements for creating a tensor on the host: a clear error
 * when `n` exceeds {@link MAX_HOST_ELEMENTS} or the memory cannot be had.
 */
export function hostValues(op: string, n: number): Float64Array {
  if (n > MAX_HOST_ELEMENTS) {
    throw new TensorqError("too many elements to create on the host", {
      op,
      kind: "shape",
      argument: "shape",
      expected: `at most ${MAX_HOST_ELEMENTS} elements`,
      actual: String(n),
    });
  }
  try {
    return new Float64Array(n);
  } catch (e) {
    throw new TensorqError("out of host memory", {
      op,
      kind: "shape",
      argument: "shape",
      expected: "a tensor that fits in memory",
      actual: `${n} elements (${n * 8} bytes of float64 while creating)`,
      cause: e,
    });
  }
}

function checkRepresentable(
  op: string,
  dtype: DType,
  values: ArrayLike<number>,
  argument = "data",
): void {
  const info = dtypeInfo(dtype);
  // bool takes any number: nonzero is true (as in cast, NumPy and PyTorch).
  if (!info.isInt) return;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!isRepresentable(dtype, v)) {
      const [min, max] = dtype === "int64" ? ["-2^63", "2^63 - 1"] : [info.min, info.max];
      throw new TensorqError("value not representable", {
        op,
        kind: "argument",
        argument,
        expected: `integers in [${min}, ${max}] for ${dtype}`,
        actual: `${v} at flat index ${i}`,
      });
    }
  }
}

/** A tensor filled with one value (a number or a boolean; for bool, nonzero is true). */
export function full(shape: readonly number[], value: number, options: CreateOptions = {}): Tensor {
  options = optionsOf("full", options, CREATE_OPTIONS);
  const s = checkShape("full", shape);
  const dtype = checkDType("full", "dtype", options.dtype ?? "float32");
  if (typeof value !== "number" && typeof value !== "boolean") {
    throw new TensorqError("value must be a number", {
      op: "full",
      kind: "argument",
      argument: "value",
      expected: "a number (or a boolean)",
      actual: describeValue(value),
    });
  }
  value = Number(value);
  checkRepresentable("full", dtype, [value], "value");
  const values = hostValues("full", numel(s)).fill(value);
  return fromStorage(encode(dtype, values), s, dtype, options.device);
}

/** A tensor of zeros. */
export function zeros(shape: readonly number[], options: CreateOptions = {}): Tensor {
  return full(shape, 0, options ?? {});
}

/** A tensor of ones. */
export function ones(shape: readonly number[], options: CreateOptions = {}): Tensor {
  return full(shape, 1, options ?? {});
}

/**
 * Evenly spaced values in `[start, stop)`: `arange(stop)` or `arange(start, stop, step)`.
 * Default dtype float32.
 */
export function arange(
  start: number,
  stop?: number,
  step = 1,
  options: CreateOptions = {},
): Tensor {
  options = optionsOf("arange", options, CREATE_OPTIONS);
  if (stop === undefined) [start, stop] = [0, start];
  if (!Number.isFinite(step) || step === 0) {
    throw new TensorqError("step must be a non-zero finite number", {
      op: "arange",
      kind: "argument",
      argument: "step",
      expected: "a non-zero finite number",
      actual: String(step),
    });
  }
  checkFiniteNumber("arange", "start", start);
  checkFiniteNumber("arange", "stop", stop);
  const n = Math.max(0, Math.ceil((stop - start) / step));
  const values = hostValues("arange", n);
  for (let i = 0; i < n; i++) values[i] = start + i * step;
  const dtype = checkDType("arange", "dtype", options.dtype ?? "float32");
  // The values come from start, stop and step; the dtype is what cannot hold one.
  checkRepresentable("arange", dtype, values, "dtype");
  return fromStorage(encode(dtype, values), [n], dtype, options.device);
}

/**
 * `num` evenly spaced values from `start` to `stop` inclusive (finite bounds). Integer dtypes
 * take only ranges whose every value is an integer.
 */
export function linspace(
  start: number,
  stop: number,
  num: number,
  options: CreateOptions = {},
): Tensor {
  options = optionsOf("linspace", options, CREATE_OPTIONS);
  if (!Number.isInteger(num) || num < 0) {
    throw new TensorqError("num must be a non-negative integer", {
      op: "linspace",
      kind: "argument",
      argument: "num",
      expected: "a non-negative integer",
      actual: String(num),
    });
  }
  checkFiniteNumber("linspace", "start", start);
  checkFiniteNumber("linspace", "stop", stop);
  const dtype = checkDType("linspace", "dtype", options.dtype ?? "float32");
  const step = num > 1 ? (stop - start) / (num - 1) : 0;
  const values = hostValues("linspace", num);
  // stop - start can overflow float64 (bounds near ±1.8e308): then weigh the ends instead.
  const at = Number.isFinite(step)
    ? (i: number) => start + i * step
    : (i: number) => start * (1 - i / (num - 1)) + stop * (i / (num - 1));
  for (let i = 0; i < num; i++) values[i] = i === num - 1 && num > 1 ? stop : at(i);
  checkRepresentable("linspace", dtype, values, "dtype");
  return fromStorage(encode(dtype, values), [num], dtype, options.device);
}

// ---------------------------------------------------------------------------------------
// Printing

const EDGE = 3;
const SUMMARIZE_ABOVE = 1000;

/** Formats a tensor's values (evaluating it) with its dtype, device and shape. */
export function formatTensor(t: Tensor): string {
  if (!(t instanceof Tensor)) {
    throw new TensorqError("t must be a Tensor", {
      op: "formatTensor",
      kind: "argument",
      argument: "t",
      expected: "a Tensor",
      actual: describeValue(t),
    });
  }
  if (disposedNodes.has(t.node)) return `Tensor(<disposed>, dtype=${t.dtype}, shape=[${t.shape}])`;
  if (t.node.placeholder) {
    return `Tensor(<compile input>, dtype=${t.dtype}, device=${t.device}, shape=[${t.shape}])`;
  }
  const shape = t.node.shape;
  if (shape.length > 0 && numel(shape) === 0) {
    // No elements: nothing to lay out (rows of nothing would be as many as the other extents).
    return `tensor([], dtype=${t.dtype}, device=${t.device}, shape=[${shape.join(", ")}])`;
  }
  const storage = t.storageSync();
  const values = decode(t.dtype, storage);
  const summarize = values.length > SUMMARIZE_ABOVE;
  // int64 prints from its storage: a float64 would change digits beyond 2^53.
  const fmt = t.dtype === "int64"
    ? (_: number, at: number) => String((storage as BigInt64Array)[at])
    : (v: number) => formatNumber(t.dtype, v);
  const strides = shape.map((_, i) => numel(shape.slice(i + 1)));
  const cells: string[] = [];
  const collect = (dim: number, off: number) => {
    if (dim === shape.length) return void cells.push(fmt(values[off], off));
    for (let i = 0; i < shape[dim]; i++) {
      if (summarize && shape[dim] > 2 * EDGE && i === EDGE) i = shape[dim] - EDGE;
      collect(dim + 1, off + i * strides[dim]);
    }
  };
  collect(0, 0);
  const width = Math.max(0, ...cells.map((c) => c.length));
  let k = 0;
  const render = (dim: number, indent: string): string => {
    if (dim === shape.length) return cells[k++].padStart(width);
    const parts: string[] = [];
    for (let i = 0; i < shape[dim]; i++) {
      if (summarize && shape[dim] > 2 * EDGE && i === EDGE) {
        parts.push("...");
        i = shape[dim] - EDGE;
      }
      parts.push(render(dim + 1, indent + " "));
    }
    const sep = dim === shape.length - 1
      ? ", "
      : ",\n" + "\n".repeat(Math.max(0, shape.length - dim - 2)) + indent + " ";
    return `[${parts.join(sep)}]`;
  };
  const body = render(0, "       ");
  return `tensor(${body}, dtype=${t.dtype}, device=${t.device}, shape=[${shape.join(", ")}])`;
}
