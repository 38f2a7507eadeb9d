/**
 * Tensors to and from safetensors files: {@link loadSafetensors} opens a file lazily (header
 * only; each tensor's bytes are read when first asked for), {@link saveSafetensors} writes one.
 *
 * Dtype mapping: F32, F16, BF16, F8_E4M3, I8, I32, I64 and BOOL map one to one. F64 loads as
 * float32 (rounded to nearest even), I16 and U8 load as int32 (exact). int4 tensors are stored
 * packed two per byte as U8 `[ceil(n/2)]`, with the metadata keys `tensorq.int4.<name>` holding
 * the logical shape, and load back as int4 (the key prefix is reserved: user metadata cannot use
 * it). BOOL bytes other than 0 load as true (1), as in the reference implementations.
 * @module
 */
import { type DType, fromStorageBytes, packInt4, toStorageBytes } from "../dtype.ts";
import { fmtShape, TensorqError } from "../errors.ts";
import { describeValue, isPlainObject, numel, optionsOf } from "../shape.ts";
import { fromStorage, Tensor } from "../tensor.ts";
import {
  checkMetadata,
  checkPathString,
  type SafetensorsDType,
  type SafetensorsEntry,
  SafetensorsFile,
  writeSafetensors,
} from "./safetensors.ts";

const INT4_KEY = "tensorq.int4.";

const DIRECT: Partial<Record<SafetensorsDType, DType>> = {
  F32: "float32",
  F16: "float16",
  BF16: "bfloat16",
  F8_E4M3: "float8e4m3",
  I8: "int8",
  I32: "int32",
  I64: "int64",
  BOOL: "bool",
};

const TO_SAFETENSORS: Partial<Record<DType, SafetensorsDType>> = {
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
  float8e4m3: "F8_E4M3",
  int8: "I8",
  int32: "I32",
  int64: "I64",
  bool: "BOOL",
};

/** Converts one entry's bytes into a tensor. */
function entryToTensor(
  entry: SafetensorsEntry,
  bytes: Uint8Array,
  int4Shape: number[] | undefined,
  device: string | undefined,
): Tensor {
  if (int4Shape) {
    const n = numel(int4Shape);
    return fromStorage(fromStorageBytes("int4", bytes, n), int4Shape, "int4", device);
  }
  const n = numel(entry.shape);
  if (entry.dtype === "BOOL") {
    // Any nonzero byte is true; kernels compare bools as bytes, so they must be exactly 0 or 1.
    const out = fromStorageBytes("bool", bytes, n) as Uint8Array;
    for (let i = 0; i < n; i++) if (out[i] > 1) out[i] = 1;
    return fromStorage(out, entry.shape, "bool", device);
  }
  const direct = DIRECT[entry.dtype];
  if (direct) return fromStorage(fromStorageBytes(direct, bytes, n), entry.shape, direct, device);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (entry.dtype) {
    case "F64": {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = view.getFloat64(i * 8, true);
      return fromStorage(out, entry.shape, "float32", device);
    }
    case "I16": {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = view.getInt16(i * 2, true);
      return fromStorage(out, entry.shape, "int32", device);
    }
    default: {
      const out = Int32Array.from(bytes);
      return fromStorage(out, entry.shape, "int32", device);
    }
  }
}

/** Options of {@link SafetensorsTensors.get}. */
export interface LoadOptions {
  /** Device to place the tensor on (default "cpu"). */
  device?: string;
}

/** The keys of {@link LoadOptions}. */
export const LOAD_OPTIONS: readonly string[] = ["device"];

/**
 * The logical shape that int4 metadata key `key` gives tensor `name` of `file` (a JSON array of
 * sizes), checked against the entry it describes: packed U8 bytes, two values a byte.
 */
function int4Shape(file: SafetensorsFile, name: string, key: string, value: string): number[] {
  const fail = (problem: string, expected: string, actual: string) =>
    new TensorqError(`${file.path}: tensor ${JSON.stringify(name)}: ${problem}`, {
      op: "loadSafetensors",
      kind: "io",
      argument: key,
      expected,
      actual,
    });
  let shape: unknown;
  try {
    shape = JSON.parse(value);
  } catch {
    // reported below
  }
  if (
    !Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)
  ) {
    throw fail(
      `bad int4 shape in the metadata key ${JSON.stringify(key)}`,
      "a JSON array of sizes, e.g. [4, 8]",
      JSON.stringify(value),
    );
  }
  const entry = file.entry(name);
  if (entry.dtype !== "U8") {
    throw fail(
      `the metadata key ${JSON.stringify(key)} marks it as packed int4, but it is ` +
        `${entry.dtype} ${fmtShape(entry.shape)}`,
      "a U8 tensor of packed int4 values",
      `${entry.dtype} ${fmtShape(entry.shape)}`,
    );
  }
  const need = Math.ceil(numel(shape) / 2);
  if (entry.byteLength !== need) {
    throw fail(
      `int4 ${fmtShape(shape)} (from the metadata key ${JSON.stringify(key)}) packs into ` +
        `${need} bytes, but the tensor holds ${entry.byteLength}`,
      `${need} bytes`,
      `${entry.byteLength} bytes`,
    );
  }
  return shape;
}

/** A safetensors file whose tensors are read on demand. */
export class SafetensorsTensors {
  /** The underlying file (header already parsed). */
  readonly file: SafetensorsFile;
  readonly #int4 = new Map<string, number[]>();

  /** Wraps an opened file. */
  constructor(file: SafetensorsFile) {
    if (!(file instanceof SafetensorsFile)) {
      throw new TensorqError("expected an opened safetensors file", {
        op: "SafetensorsTensors",
        kind: "argument",
        argument: "file",
        expected: "a SafetensorsFile (or use loadSafetensors(path))",
        actual: describeValue(file),
      });
    }
    this.file = file;
    for (const [key, value] of Object.entries(file.metadata)) {
      const name = key.slice(INT4_KEY.length);
      // A key whose tensor is absent changes nothing (e.g. tensors dropped by another tool).
      if (key.startsWith(INT4_KEY) && file.has(name)) {
        this.#int4.set(name, int4Shape(file, name, key, value));
      }
    }
  }

  /** The user metadata (tensorq's own keys removed). */
  get metadata(): Record<string, string> {
    return Object.fromEntries(
      Object.entries(this.file.metadata).filter(([k]) => !k.startsWith(INT4_KEY)),
    );
  }

  /** Tensor names in file order. */
  keys(): string[] {
    return this.file.keys();
  }

  /** True when the file holds `name`. */
  has(name: string): boolean {
    return this.file.has(name);
  }

  /** Shape and dtype of a tensor without reading its data. */
  info(name: string): { shape: number[]; dtype: DType } {
    const e = this.file.entry(name);
    const int4 = this.#int4.get(name);
    if (int4) return { shape: int4, dtype: "int4" };
    const dtype = DIRECT[e.dtype] ?? (e.dtype === "F64" ? "float32" : "int32");
    return { shape: [...e.shape], dtype };
  }

  /** Reads one tensor (its bytes only). */
  get(name: string, options: LoadOptions = {}): Tensor {
    const { device } = optionsOf<LoadOptions>("SafetensorsTensors.get", options, LOAD_OPTIONS);
    const entry = this.file.entry(name);
    return entryToTensor(entry, this.file.readBytes(name), this.#int4.get(name), device);
  }

  /** Reads every tensor into a record. */
  toRecord(options: LoadOptions = {}): Record<string, Tensor> {
    // Checked here too, so that a file without tensors does not let bad options pass.
    options = optionsOf<LoadOptions>("SafetensorsTensors.toRecord", options, LOAD_OPTIONS);
    return Object.fromEntries(this.keys().map((k) => [k, this.get(k, options)]));
  }

  /** Closes the file. */
  close(): void {
    this.file.close();
  }

  /** Closes the file at the end of a `using` block. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The file system path of `path`: a non-empty string as is, a `file:` URL decoded (`%20` is a
 * space). Other URLs and other values (which Deno would turn into names like "undefined") are
 * refused, naming `op` and `argument`.
 */
export function filePath(path: string | URL, op: string, argument = "path"): string {
  if (!(path instanceof URL)) return checkPathString(path, op, argument);
  if (path.protocol !== "file:") {
    throw new TensorqError("only local files can be read or written", {
      op,
      kind: "argument",
      argument,
      expected: "a path or a file: URL",
      actual: path.href,
    });
  }
  // A "%" not followed by two hex digits is itself (as Deno reads such URLs), not an error.
  return decodeURIComponent(path.pathname.replace(/%(?![0-9A-Fa-f]{2})/g, "%25"));
}

/** Opens a safetensors file lazily: the header now, tensor bytes when each is read. */
export function loadSafetensors(path: string | URL): SafetensorsTensors {
  const p = filePath(path, "loadSafetensors");
  return new SafetensorsTensors(SafetensorsFile.open(p));
}

/** Writes tensors (evaluating them) to a safetensors file, with optional metadata. */
export function saveSafetensors(
  path: string | URL,
  tensors: Record<string, Tensor>,
  metadata: Record<string, string> = {},
): void {
  const op = "saveSafetensors";
  const p = filePath(path, op);
  if (!isPlainObject(tensors)) {
    throw new TensorqError("tensors must be a record of tensors", {
      op,
      kind: "argument",
      argument: "tensors",
      expected: "a plain object mapping names to tensors, e.g. { w }",
      actual: describeValue(tensors),
    });
  }
  const user = checkMetadata(op, p, metadata) ?? {};
  // tensorq's own keys would be read back as int4 shapes and make the file unreadable.
  const reserved = Object.keys(user).find((k) => k.startsWith(INT4_KEY));
  if (reserved !== undefined) {
    throw new TensorqError(
      `${p}: metadata key ${JSON.stringify(reserved)} uses the prefix "${INT4_KEY}", which ` +
        `tensorq reserves for the shapes of int4 tensors`,
      {
        op: "saveSafetensors",
        kind: "argument",
        argument: "metadata",
        expected: `keys not starting with "${INT4_KEY}"`,
        actual: JSON.stringify(reserved),
      },
    );
  }
  const meta: Record<string, string> = { ...user };
  const list = Object.entries(tensors).map(([name, t]) => {
    if (!(t instanceof Tensor)) {
      throw new TensorqError("values must be tensors", {
        op,
        kind: "argument",
        argument: name,
        expected: "a Tensor",
        actual: describeValue(t),
      });
    }
    const storage = t.storageSync();
    if (t.dtype === "int4") {
      meta[INT4_KEY + name] = JSON.stringify(t.shape);
      const bytes = packInt4(storage as Int8Array);
      return { name, dtype: "U8" as const, shape: [bytes.length], bytes };
    }
    const dtype = TO_SAFETENSORS[t.dtype]!;
    return { name, dtype, shape: t.shape, bytes: toStorageBytes(t.dtype, storage) };
  });
  writeSafetensors(p, list, Object.keys(meta).length ? meta : undefined);
}
