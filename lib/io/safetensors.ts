/**
 * Reading and writing the safetensors format, with no dependencies.
 *
 * A safetensors file is an 8-byte little-endian header length `N`, a UTF-8 JSON header of `N`
 * bytes, then the data section. The header maps each tensor name to
 * `{ dtype, shape, data_offsets: [begin, end] }` (offsets relative to the data section) and may
 * hold `__metadata__`, a string-to-string map. As in the reference implementation, the tensors'
 * byte ranges, sorted by offset, must cover the data section exactly: no gap, no overlap, no
 * trailing bytes.
 *
 * {@link SafetensorsFile} reads only the length and the header when opened; each tensor's bytes
 * are read on demand with {@link SafetensorsFile.readBytes}. {@link writeSafetensors} writes a
 * file whose data section starts on an 8-byte boundary.
 *
 * @example
 * ```ts
 * import { SafetensorsFile, writeSafetensors } from "./safetensors.ts";
 *
 * const path = Deno.makeTempFileSync({ suffix: ".safetensors" });
 * const w = new Float32Array([1, 2, 3, 4]);
 * writeSafetensors(path, [{ name: "w", dtype: "F32", shape: [2, 2], bytes: new Uint8Array(w.buffer) }]);
 * using file = SafetensorsFile.open(path);
 * const back = new Float32Array(file.readBytes("w").buffer); // [1, 2, 3, 4]
 * ```
 * @module
 */

import { fmtShape, TensorqError } from "../errors.ts";
import { describeValue, isPlainObject } from "../shape.ts";

/** Element types this reader and writer understand, as spelled in safetensors headers. */
export type SafetensorsDType =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "F8_E4M3"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U8"
  | "BOOL";

/** One tensor as described by a safetensors header. */
export interface SafetensorsEntry {
  /** Tensor name (the header key). */
  name: string;
  /** Element type. */
  dtype: SafetensorsDType;
  /** Dimensions; `[]` is a scalar. */
  shape: number[];
  /** Start of the tensor's bytes, relative to the start of the data section. */
  byteOffset: number;
  /** Number of bytes: product of the shape times the item size. */
  byteLength: number;
}

/** The parsed header of a safetensors file. */
export interface SafetensorsHeader {
  /** Tensors in header order. */
  entries: SafetensorsEntry[];
  /** The `__metadata__` map (empty when absent). */
  metadata: Record<string, string>;
  /** Absolute file offset of the data section: `8 + header length`. */
  dataOffset: number;
}

/** One tensor to write with {@link writeSafetensors}. */
export interface SafetensorsTensorInput {
  /** Element type. */
  dtype: SafetensorsDType;
  /** Dimensions; `[]` is a scalar. */
  shape: number[];
  /** Raw little-endian element bytes, exactly `product(shape) * itemSizeOf(dtype)` long. */
  bytes: Uint8Array;
}

/** A named tensor to write with {@link writeSafetensors}. */
export interface SafetensorsNamedTensorInput extends SafetensorsTensorInput {
  /** Tensor name (the header key). */
  name: string;
}

/** Options for {@link parseSafetensorsBytes}. */
export interface ParseSafetensorsOptions {
  /**
   * Size of the whole file, when `bytes` holds only its beginning (at least the 8-byte length
   * and the header). Defaults to `bytes.length`.
   */
  fileSize?: number;
  /** Name of the source used in error messages. Defaults to `<memory>`. */
  source?: string;
}

/** Largest header accepted, as in the reference implementation. */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;

const ITEM_SIZES: Record<SafetensorsDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

const SUPPORTED_DTYPES = Object.keys(ITEM_SIZES) as SafetensorsDType[];
const METADATA_KEY = "__metadata__";
const LOAD_OP = "loadSafetensors";
const SAVE_OP = "saveSafetensors";

/** Whether `value` names a supported safetensors dtype. */
export function isSafetensorsDType(value: unknown): value is SafetensorsDType {
  return typeof value === "string" && Object.hasOwn(ITEM_SIZES, value);
}

/** Bytes per element of a safetensors dtype. */
export function itemSizeOf(dtype: SafetensorsDType): number {
  if (!isSafetensorsDType(dtype)) {
    throw new TensorqError(`unknown safetensors dtype ${describeValue(dtype)}`, {
      op: "itemSizeOf",
      kind: "dtype",
      argument: "dtype",
      expected: `one of ${SUPPORTED_DTYPES.join(", ")}`,
      actual: describeValue(dtype),
    });
  }
  return ITEM_SIZES[dtype];
}

/**
 * `path` if it is a non-empty string; otherwise an argument error of `op`. Deno would turn
 * `undefined`, a number or an object into a file name ("undefined", "[object Object]").
 */
export function checkPathString(path: unknown, op: string, argument = "path"): string {
  if (typeof path === "string" && path !== "") return path;
  throw new TensorqError(`${argument} must be a file path`, {
    op,
    kind: "argument",
    argument,
    expected: "a file path string or a file: URL object (new URL(...))",
    actual: describeValue(path),
  });
}

/**
 * `metadata` checked as a plain object of strings (undefined and null stand for none), for
 * error `op`: other objects would be spread or serialized into nonsense keys.
 */
export function checkMetadata(
  op: string,
  path: string,
  metadata: unknown,
): Record<string, string> | undefined {
  if (metadata === undefined || metadata === null) return undefined;
  if (!isPlainObject(metadata)) {
    throw new TensorqError(`${path}: metadata must map strings to strings`, {
      op,
      kind: "argument",
      argument: "metadata",
      expected: "a plain object of strings (Record<string, string>)",
      actual: describeValue(metadata),
    });
  }
  for (const [key, value] of Object.entries(metadata as object)) {
    if (typeof value !== "string") {
      throw new TensorqError(`${path}: metadata value of ${JSON.stringify(key)} is not a string`, {
        op,
        kind: "argument",
        argument: "metadata",
        expected: "string values",
        actual: describeValue(value),
      });
    }
  }
  return metadata as Record<string, string>;
}

function loadError(
  source: string,
  problem: string,
  extra: { argument?: string; expected?: string; actual?: string; cause?: unknown } = {},
): TensorqError {
  return new TensorqError(`${source}: ${problem}`, { op: LOAD_OP, kind: "io", ...extra });
}

/**
 * An array of non-negative integers whose running product stays a safe integer (as the
 * reference reader checks): `[2^52, 2^52, 0]` has no elements but no sane shape either.
 */
function isShape(value: unknown): value is number[] {
  if (!Array.isArray(value)) return false;
  let n = 1;
  for (const d of value) {
    if (!Number.isSafeInteger(d) || d < 0) return false;
    n *= d;
    if (!Number.isSafeInteger(n)) return false;
  }
  return true;
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/** Short preview of a list of names for error messages. */
function previewNames(names: readonly string[], limit = 8): string {
  if (names.length === 0) return "(none)";
  const shown = names.slice(0, limit).map((n) => JSON.stringify(n)).join(", ");
  return names.length > limit ? `${shown}, ... (${names.length} in all)` : shown;
}

/**
 * Top-level keys of a JSON object text, in source order, and the first key that an object at
 * any depth repeats (`JSON.parse` keeps the last value silently; other readers may keep the
 * first, so such a file means different data to different readers). `JSON.parse` also moves
 * integer-like keys to the front, so the order is taken from the text itself. The text must be
 * valid JSON.
 */
function headerKeys(text: string): { keys: string[]; repeated?: [key: string, within: string] } {
  const keys: string[] = [];
  // Per open bracket: the keys seen so far in an object (null for an array) and its name.
  const open: { seen: Set<string> | null; name: string }[] = [];
  let lastKey = "";
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') {
      const start = i;
      i++;
      while (text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
      i++;
      let j = i;
      while (j < text.length && /\s/.test(text[j])) j++;
      const top = open[open.length - 1];
      if (text[j] === ":" && top?.seen) {
        const key = JSON.parse(text.slice(start, i)) as string;
        if (top.seen.has(key)) return { keys, repeated: [key, top.name] };
        top.seen.add(key);
        if (open.length === 1) keys.push(key);
        lastKey = key;
      }
      continue;
    }
    if (c === "{" || c === "[") {
      open.push({ seen: c === "{" ? new Set() : null, name: open.length ? lastKey : "" });
    } else if (c === "}" || c === "]") open.pop();
    i++;
  }
  return { keys };
}

function parseEntry(
  source: string,
  name: string,
  raw: unknown,
  dataSize: number,
): SafetensorsEntry {
  const where = `tensor ${JSON.stringify(name)}`;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw loadError(source, `${where}: header entry is not an object`, {
      argument: name,
      expected: "{ dtype, shape, data_offsets }",
      actual: JSON.stringify(raw),
    });
  }
  const fields = raw as Record<string, unknown>;
  for (const field of ["dtype", "shape", "data_offsets"]) {
    if (!Object.hasOwn(fields, field)) {
      throw loadError(source, `${where}: header entry has no '${field}'`, {
        argument: name,
        expected: "{ dtype, shape, data_offsets }",
        actual: `keys ${previewNames(Object.keys(fields))}`,
      });
    }
  }
  const { dtype, shape, data_offsets: offsets } = fields;
  if (!isSafetensorsDType(dtype)) {
    throw loadError(source, `${where}: unknown dtype ${JSON.stringify(dtype)}`, {
      argument: name,
      expected: `one of ${SUPPORTED_DTYPES.join(", ")}`,
      actual: JSON.stringify(dtype),
    });
  }
  if (!isShape(shape)) {
    throw loadError(source, `${where}: shape is not an array of non-negative integers`, {
      argument: name,
      expected: "an array of non-negative integers whose product is at most 2^53 - 1",
      actual: JSON.stringify(shape),
    });
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)
  ) {
    throw loadError(source, `${where}: data_offsets is not [begin, end]`, {
      argument: name,
      expected: "two non-negative integers [begin, end]",
      actual: JSON.stringify(offsets),
    });
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) {
    throw loadError(source, `${where}: data_offsets begin ${begin} is after end ${end}`, {
      argument: name,
      expected: "begin <= end",
      actual: JSON.stringify(offsets),
    });
  }
  if (end > dataSize) {
    throw loadError(
      source,
      `${where}: data_offsets end ${end} is beyond the data section (${dataSize} bytes)`,
      { argument: name, expected: `end <= ${dataSize}`, actual: JSON.stringify(offsets) },
    );
  }
  const expectedBytes = elementCount(shape) * ITEM_SIZES[dtype];
  if (end - begin !== expectedBytes) {
    throw loadError(
      source,
      `${where}: data_offsets span ${end - begin} bytes but ${dtype} ${
        fmtShape(shape)
      } needs ${expectedBytes}`,
      { argument: name, expected: `${expectedBytes} bytes`, actual: `${end - begin} bytes` },
    );
  }
  return { name, dtype, shape: [...shape], byteOffset: begin, byteLength: end - begin };
}

function parseMetadata(source: string, raw: unknown): Record<string, string> {
  if (raw === null) return {};
  if (typeof raw !== "object" || Array.isArray(raw)) {
    throw loadError(source, "__metadata__ is not an object of strings", {
      argument: METADATA_KEY,
      expected: "an object mapping strings to strings",
      actual: JSON.stringify(raw),
    });
  }
  const metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
    if (typeof value !== "string") {
      throw loadError(source, `__metadata__ value of ${JSON.stringify(key)} is not a string`, {
        argument: METADATA_KEY,
        expected: "string values",
        actual: JSON.stringify(value),
      });
    }
    metadata[key] = value;
  }
  return metadata;
}

/** Reads and checks the 8-byte header length against the file size. */
function parseHeaderLength(prefix: Uint8Array, fileSize: number, source: string): number {
  if (fileSize < 8 || prefix.length < 8) {
    throw loadError(source, `file is ${fileSize} bytes, shorter than the 8-byte header length`, {
      expected: "at least 8 bytes",
      actual: `${fileSize} bytes`,
    });
  }
  const length = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (length === 0n) {
    throw loadError(source, "header length is 0", {
      expected: "a header length of at least 2 bytes",
      actual: "0",
    });
  }
  if (length > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
    throw loadError(
      source,
      `header length ${length} exceeds the ${SAFETENSORS_MAX_HEADER_BYTES}-byte limit`,
      {
        expected: `at most ${SAFETENSORS_MAX_HEADER_BYTES} bytes`,
        actual: `${length} bytes`,
      },
    );
  }
  if (length > BigInt(fileSize - 8)) {
    throw loadError(
      source,
      `header length ${length} runs past the end of the file (${fileSize} bytes)`,
      { expected: `at most ${fileSize - 8} bytes`, actual: `${length} bytes` },
    );
  }
  return Number(length);
}

/**
 * Checks that the tensors' byte ranges, sorted by offset, tile the data section from 0 to its
 * end, as the reference implementation requires: an overlap would alias two tensors, and a gap
 * or trailing bytes mean a corrupt or mis-written file.
 */
function checkLayout(source: string, entries: readonly SafetensorsEntry[], dataSize: number) {
  const sorted = [...entries].sort((a, b) =>
    a.byteOffset - b.byteOffset || a.byteLength - b.byteLength
  );
  const expected = "tensors that cover the data section from byte 0 to its end, back to back";
  let end = 0;
  let last: SafetensorsEntry | undefined;
  for (const e of sorted) {
    if (e.byteOffset !== end) {
      const where = `tensor ${JSON.stringify(e.name)} starts at byte ${e.byteOffset}`;
      const before = last ? `but ${JSON.stringify(last.name)} ends at ${end}` : "";
      const problem = e.byteOffset < end
        ? `${where} ${before}: the two overlap`
        : last
        ? `${where} ${before}: bytes ${end}..${e.byteOffset} belong to no tensor`
        : `${where}: bytes 0..${e.byteOffset} of the data section belong to no tensor`;
      throw loadError(source, problem, {
        argument: e.name,
        expected,
        actual: `data_offsets [${e.byteOffset}, ${e.byteOffset + e.byteLength}]`,
      });
    }
    end = e.byteOffset + e.byteLength;
    // Messages name the tensor that holds the bytes before, not an empty one between.
    if (e.byteLength > 0 || !last) last = e;
  }
  if (end !== dataSize) {
    const tail = last
      ? `the last tensor, ${JSON.stringify(last.name)}, ends at byte ${end}`
      : "no tensor holds any";
    throw loadError(
      source,
      `the data section has ${dataSize} bytes but ${tail}: ${dataSize - end} trailing bytes`,
      { expected, actual: `${dataSize - end} unused bytes at the end` },
    );
  }
}

/** Parses the header bytes (without the 8-byte length) of a file of `fileSize` bytes. */
function parseHeaderText(
  headerBytes: Uint8Array,
  fileSize: number,
  source: string,
): SafetensorsHeader {
  const dataOffset = 8 + headerBytes.length;
  const dataSize = fileSize - dataOffset;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch (cause) {
    throw loadError(source, "header is not valid UTF-8", { cause });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw loadError(source, `header is not valid JSON: ${(cause as Error).message}`, { cause });
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw loadError(source, "header is not a JSON object", {
      expected: "a JSON object",
      actual: parsed === null ? "null" : Array.isArray(parsed) ? "an array" : typeof parsed,
    });
  }
  const header = parsed as Record<string, unknown>;
  const { keys: names, repeated } = headerKeys(text);
  if (repeated) {
    const [key, within] = repeated;
    throw loadError(
      source,
      within === METADATA_KEY
        ? `${METADATA_KEY} has '${key}' more than once`
        : within
        ? `tensor ${JSON.stringify(within)}: header entry has '${key}' more than once`
        : `header names ${JSON.stringify(key)} more than once`,
      { argument: within || key },
    );
  }
  const entries: SafetensorsEntry[] = [];
  let metadata: Record<string, string> = {};
  for (const name of names) {
    if (name === METADATA_KEY) metadata = parseMetadata(source, header[name]);
    else entries.push(parseEntry(source, name, header[name], dataSize));
  }
  checkLayout(source, entries, dataSize);
  return { entries, metadata, dataOffset };
}

/**
 * Parses and validates a safetensors header from bytes in memory.
 *
 * `bytes` is either a whole file, or its beginning (at least the 8-byte length and the header)
 * with `options.fileSize` giving the full size, so that offsets are checked against the file.
 * Throws {@link TensorqError} (op `loadSafetensors`, kind `io`) naming the problem.
 */
export function parseSafetensorsBytes(
  bytes: Uint8Array,
  options: ParseSafetensorsOptions = {},
): SafetensorsHeader {
  const source = options.source ?? "<memory>";
  const fileSize = options.fileSize ?? bytes.length;
  const headerLength = parseHeaderLength(bytes, fileSize, source);
  if (bytes.length < 8 + headerLength) {
    throw loadError(
      source,
      `buffer holds ${bytes.length} bytes but the header ends at byte ${8 + headerLength}`,
      { expected: `at least ${8 + headerLength} bytes`, actual: `${bytes.length} bytes` },
    );
  }
  return parseHeaderText(bytes.subarray(8, 8 + headerLength), fileSize, source);
}

/** Fills `target` from the file's current position; throws when the file ends first. */
function readExactSync(file: Deno.FsFile, target: Uint8Array, source: string, what: string) {
  let filled = 0;
  while (filled < target.length) {
    const n = file.readSync(target.subarray(filled));
    if (n === null || n === 0) {
      throw loadError(source, `file ended after ${filled} of ${target.length} bytes of ${what}`);
    }
    filled += n;
  }
}

async function readExact(file: Deno.FsFile, target: Uint8Array, source: string, what: string) {
  let filled = 0;
  while (filled < target.length) {
    const n = await file.read(target.subarray(filled));
    if (n === null || n === 0) {
      throw loadError(source, `file ended after ${filled} of ${target.length} bytes of ${what}`);
    }
    filled += n;
  }
}

function openError(path: string, cause: unknown): TensorqError {
  return loadError(path, `cannot open file: ${(cause as Error)?.message ?? String(cause)}`, {
    cause,
  });
}

/** Refuses a directory: opening one succeeds, and only the first read fails (IsADirectory). */
function checkIsFile(path: string, info: Deno.FileInfo): void {
  if (info.isDirectory) {
    throw loadError(path, "is a directory, not a safetensors file", {
      expected: "a .safetensors file",
      actual: "a directory",
    });
  }
}

/** A file system error met while reading the header, as a TensorqError naming the file. */
function headerReadError(path: string, cause: unknown): TensorqError {
  if (cause instanceof TensorqError) return cause;
  return loadError(path, `cannot read the header: ${(cause as Error)?.message ?? cause}`, {
    cause,
  });
}

/**
 * A safetensors file opened lazily: only the header is read at open, and each tensor's bytes
 * are read from disk when asked for. Close it with {@link SafetensorsFile.close} or `using`.
 */
export class SafetensorsFile {
  /** Path the file was opened from. */
  readonly path: string;
  /** The `__metadata__` map (empty when absent). */
  readonly metadata: Record<string, string>;
  /** Absolute file offset of the data section. */
  readonly dataOffset: number;
  /** Size of the file in bytes, at open. */
  readonly fileSize: number;
  #file: Deno.FsFile | undefined;
  #entries: Map<string, SafetensorsEntry>;

  private constructor(
    path: string,
    file: Deno.FsFile,
    fileSize: number,
    header: SafetensorsHeader,
  ) {
    this.path = path;
    this.#file = file;
    this.fileSize = fileSize;
    this.metadata = header.metadata;
    this.dataOffset = header.dataOffset;
    this.#entries = new Map(header.entries.map((e) => [e.name, e]));
  }

  /** Opens `path` and reads its header synchronously. */
  static open(path: string): SafetensorsFile {
    checkPathString(path, "SafetensorsFile.open");
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path, { read: true });
    } catch (cause) {
      throw openError(path, cause);
    }
    try {
      const info = file.statSync();
      checkIsFile(path, info);
      const fileSize = info.size;
      const prefix = new Uint8Array(8);
      if (fileSize >= 8) readExactSync(file, prefix, path, "the header length");
      const headerLength = parseHeaderLength(prefix, fileSize, path);
      const headerBytes = new Uint8Array(headerLength);
      readExactSync(file, headerBytes, path, "the header");
      return new SafetensorsFile(
        path,
        file,
        fileSize,
        parseHeaderText(headerBytes, fileSize, path),
      );
    } catch (error) {
      file.close();
      throw headerReadError(path, error);
    }
  }

  /** Opens `path` and reads its header asynchronously. */
  static async openAsync(path: string): Promise<SafetensorsFile> {
    checkPathString(path, "SafetensorsFile.openAsync");
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (cause) {
      throw openError(path, cause);
    }
    try {
      const info = await file.stat();
      checkIsFile(path, info);
      const fileSize = info.size;
      const prefix = new Uint8Array(8);
      if (fileSize >= 8) await readExact(file, prefix, path, "the header length");
      const headerLength = parseHeaderLength(prefix, fileSize, path);
      const headerBytes = new Uint8Array(headerLength);
      await readExact(file, headerBytes, path, "the header");
      return new SafetensorsFile(
        path,
        file,
        fileSize,
        parseHeaderText(headerBytes, fileSize, path),
      );
    } catch (error) {
      file.close();
      throw headerReadError(path, error);
    }
  }

  /** Tensor names in header order (`__metadata__` excluded). */
  keys(): string[] {
    return [...this.#entries.keys()];
  }

  /** All tensor entries in header order (copies). */
  entries(): SafetensorsEntry[] {
    return [...this.#entries.values()].map((e) => ({ ...e, shape: [...e.shape] }));
  }

  /** Whether the file holds a tensor called `name`. */
  has(name: string): boolean {
    return this.#entries.has(name);
  }

  /** The header entry of tensor `name` (a copy); throws when there is none. */
  entry(name: string): SafetensorsEntry {
    const found = this.#entries.get(name);
    if (!found) {
      throw new TensorqError(`${this.path}: no tensor named ${describeValue(name)}`, {
        op: LOAD_OP,
        kind: "argument",
        argument: "name",
        expected: `one of ${previewNames(this.keys())}`,
        actual: describeValue(name),
      });
    }
    return { ...found, shape: [...found.shape] };
  }

  /** Reads the bytes of tensor `name` from disk into a fresh buffer (8-byte aligned). */
  readBytes(name: string): Uint8Array {
    const { byteOffset, byteLength } = this.entry(name);
    const file = this.#file;
    if (!file) {
      throw new TensorqError(`${this.path}: file is closed`, {
        op: LOAD_OP,
        kind: "state",
        argument: "name",
        actual: describeValue(name),
      });
    }
    const bytes = new Uint8Array(byteLength);
    if (byteLength === 0) return bytes;
    try {
      file.seekSync(this.dataOffset + byteOffset, Deno.SeekMode.Start);
      readExactSync(file, bytes, this.path, `tensor ${JSON.stringify(name)}`);
    } catch (cause) {
      if (cause instanceof TensorqError) throw cause;
      throw loadError(this.path, `cannot read tensor ${JSON.stringify(name)}`, { cause });
    }
    return bytes;
  }

  /** Closes the file; later reads throw. Closing twice is harmless. */
  close(): void {
    this.#file?.close();
    this.#file = undefined;
  }

  /** Closes the file (for `using`). */
  [Symbol.dispose](): void {
    this.close();
  }
}

function saveError(
  path: string,
  problem: string,
  extra: { argument?: string; expected?: string; actual?: string; cause?: unknown } = {},
): TensorqError {
  return new TensorqError(`${path}: ${problem}`, { op: SAVE_OP, kind: "io", ...extra });
}

function normalizeInputs(
  path: string,
  tensors: SafetensorsNamedTensorInput[] | Record<string, SafetensorsTensorInput>,
): SafetensorsNamedTensorInput[] {
  if (Array.isArray(tensors)) return tensors;
  if (typeof tensors !== "object" || tensors === null) {
    throw saveError(path, "tensors must be an array or an object", {
      argument: "tensors",
      expected: "an array of named tensors or a record of tensors",
      actual: describeValue(tensors),
    });
  }
  return Object.entries(tensors).map(([name, t]) => ({ ...t, name }));
}

/**
 * Writes tensors to a safetensors file at `path`, in the given order, with the header padded
 * with spaces so that the data section starts on an 8-byte boundary. Tensors are laid out back
 * to back (no gaps, as the reference implementation requires); each starts aligned to its item
 * size when the ones before it keep that alignment, e.g. when wider dtypes come first.
 *
 * A record's order is its key order (integer-like keys come first in JavaScript).
 * Everything is validated before the file is touched; throws {@link TensorqError}
 * (op `saveSafetensors`).
 */
export function writeSafetensors(
  path: string,
  tensors: SafetensorsNamedTensorInput[] | Record<string, SafetensorsTensorInput>,
  metadata?: Record<string, string>,
): void {
  checkPathString(path, SAVE_OP);
  const list = normalizeInputs(path, tensors);
  metadata = checkMetadata(SAVE_OP, path, metadata);
  // Integer-like keys would be reordered by a JS object, so the header text is built by hand.
  const parts: string[] = [];
  if (metadata !== undefined) parts.push(`"${METADATA_KEY}":${JSON.stringify(metadata)}`);
  const seen = new Set<string>();
  let offset = 0;
  for (const t of list) {
    const name = t?.name;
    if (typeof name !== "string") {
      throw saveError(path, "tensor name is not a string", {
        argument: "name",
        expected: "a string",
        actual: describeValue(name),
      });
    }
    const where = `tensor ${JSON.stringify(name)}`;
    if (name === METADATA_KEY) {
      throw saveError(path, `${where}: the name is reserved for metadata`, { argument: name });
    }
    if (seen.has(name)) {
      throw saveError(path, `${where} is given more than once`, { argument: name });
    }
    seen.add(name);
    if (!isSafetensorsDType(t.dtype)) {
      throw saveError(path, `${where}: unknown dtype ${describeValue(t.dtype)}`, {
        argument: name,
        expected: `one of ${SUPPORTED_DTYPES.join(", ")}`,
        actual: describeValue(t.dtype),
      });
    }
    if (!isShape(t.shape)) {
      throw saveError(path, `${where}: shape is not an array of non-negative integers`, {
        argument: name,
        expected: "an array of non-negative integers",
        actual: describeValue(t.shape),
      });
    }
    if (!(t.bytes instanceof Uint8Array)) {
      throw saveError(path, `${where}: bytes is not a Uint8Array`, {
        argument: name,
        expected: "a Uint8Array",
        actual: Object.prototype.toString.call(t.bytes),
      });
    }
    const expectedBytes = elementCount(t.shape) * ITEM_SIZES[t.dtype];
    if (t.bytes.length !== expectedBytes) {
      throw saveError(
        path,
        `${where}: ${t.dtype} ${
          fmtShape(t.shape)
        } needs ${expectedBytes} bytes, got ${t.bytes.length}`,
        { argument: name, expected: `${expectedBytes} bytes`, actual: `${t.bytes.length} bytes` },
      );
    }
    const entry = {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [offset, offset + expectedBytes],
    };
    parts.push(`${JSON.stringify(name)}:${JSON.stringify(entry)}`);
    offset += expectedBytes;
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const headerLength = Math.ceil(json.length / 8) * 8;
  if (headerLength > SAFETENSORS_MAX_HEADER_BYTES) {
    throw saveError(path, `header of ${headerLength} bytes exceeds the limit`, {
      expected: `at most ${SAFETENSORS_MAX_HEADER_BYTES} bytes`,
      actual: `${headerLength} bytes`,
    });
  }
  const head = new Uint8Array(8 + headerLength).fill(0x20); // pad with spaces
  new DataView(head.buffer).setBigUint64(0, BigInt(headerLength), true);
  head.set(json, 8);

  // Written beside the target and renamed over it: a reader that has the old file open keeps
  // reading the old bytes (rewritten in place, its offsets would point into the new layout),
  // and a failed write leaves the old file whole.
  const temporary = `${path}.${crypto.randomUUID().slice(0, 8)}.partial`;
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(temporary, { write: true, createNew: true });
  } catch (cause) {
    throw saveError(path, `cannot open file for writing: ${(cause as Error)?.message}`, { cause });
  }
  let done = false;
  try {
    try {
      writeAllSync(file, head);
      for (const t of list) writeAllSync(file, t.bytes);
    } finally {
      file.close();
    }
    Deno.renameSync(temporary, path);
    done = true;
  } catch (cause) {
    throw saveError(path, `cannot write file: ${(cause as Error)?.message}`, { cause });
  } finally {
    if (!done) {
      try {
        Deno.removeSync(temporary);
      } catch {
        // already gone; the error above is the one to report
      }
    }
  }
}

function writeAllSync(file: Deno.FsFile, bytes: Uint8Array): void {
  let written = 0;
  while (written < bytes.length) written += file.writeSync(bytes.subarray(written));
}
