/**
 * Finding and opening the NVIDIA shared libraries through `Deno.dlopen`.
 *
 * Nothing is opened at import time. Each binding module creates a lazy getter with
 * {@link lazyLibrary}; the first call searches, in order:
 *
 * 1. `$TENSORQ_CUDA_LIB_DIR` (a directory, or several separated by `:`),
 * 2. `$CUDA_HOME/lib64`, then `$CUDA_PATH/lib64`,
 * 3. `/usr/local/cuda/lib64`,
 * 4. each bare library name, through the system loader (`LD_LIBRARY_PATH`, `ld.so.cache`);
 *    this is where the driver's `libcuda.so.1` normally lives.
 *
 * Within a directory the names are tried in the order given (newest version first). When every
 * attempt fails, the {@link TensorqError} lists each path tried with the loader's message.
 * Environment variables that can't be read (no `--allow-env`) count as unset.
 * @module
 */

import { TensorqError } from "../lib/errors.ts";

/** Options of {@link openLibrary}. */
export interface OpenLibraryOptions {
  /** Directories to search, in order, instead of {@link librarySearchDirs}'s list. */
  searchDirs?: readonly string[];
  /** Whether to try each bare name through the system loader after the directories
   * (default `true`). */
  bareName?: boolean;
}

/** Why a CUDA call failed, attached as the `cause` of the {@link TensorqError} it raised. */
export interface CudaFailure {
  /** Which API returned the status. */
  api: "driver" | "runtime" | "cublasLt";
  /** The numeric status (`CUresult`, `cudaError_t` or `cublasStatus_t`). */
  status: number;
  /** The status's name, e.g. `cudaErrorMemoryAllocation`. */
  name: string;
}

/** Returns the {@link CudaFailure} behind an error raised by a status check, if it is one. */
export function cudaFailureOf(error: unknown): CudaFailure | undefined {
  if (!(error instanceof TensorqError)) return undefined;
  const cause = error.cause as Partial<CudaFailure> | undefined;
  if (cause === undefined || typeof cause !== "object" || cause === null) return undefined;
  if (typeof cause.status !== "number" || typeof cause.name !== "string") return undefined;
  return cause as CudaFailure;
}

/** Reads an environment variable; a missing `--allow-env` permission reads as unset. */
export function readEnv(name: string): string | undefined {
  try {
    const value = Deno.env.get(name);
    return value === "" ? undefined : value;
  } catch {
    return undefined;
  }
}

function joinPath(dir: string, name: string): string {
  return `${dir.replace(/\/+$/, "")}/${name}`;
}

/** The default directories searched for CUDA libraries, in order, without duplicates. */
export function librarySearchDirs(): string[] {
  const dirs: string[] = [];
  const explicit = readEnv("TENSORQ_CUDA_LIB_DIR");
  if (explicit !== undefined) dirs.push(...explicit.split(":").filter((d) => d !== ""));
  for (const variable of ["CUDA_HOME", "CUDA_PATH"]) {
    const root = readEnv(variable);
    if (root !== undefined) dirs.push(joinPath(root, "lib64"));
  }
  dirs.push("/usr/local/cuda/lib64");
  return [...new Set(dirs)];
}

function messageOf(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.replace(/\s+/g, " ").trim();
}

// Deno's dlopen error repeats itself ("Could not open library: Could not open library: PATH:
// reason"); keep the loader's reason alone.
function loaderReason(path: string, error: unknown): string {
  let text = messageOf(error).replace(/^(Could not open library: )+/, "");
  if (text.startsWith(`${path}: `)) text = text.slice(path.length + 2);
  return text;
}

function isPermissionError(error: unknown): boolean {
  return error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied;
}

/**
 * Opens the first library that loads from `names` (e.g. `["libcudart.so.13",
 * "libcudart.so.12"]`), binding `symbols`. `what` names the library in errors
 * (e.g. `"CUDA runtime"`). Throws a {@link TensorqError} (op `dlopen`, kind `cuda`) that lists
 * every path tried when none loads, or when `--allow-ffi` is missing.
 */
export function openLibrary<const S extends Deno.ForeignLibraryInterface>(
  what: string,
  names: readonly string[],
  symbols: S,
  options: OpenLibraryOptions = {},
): Deno.DynamicLibrary<S> {
  const dirs = options.searchDirs ?? librarySearchDirs();
  const candidates = dirs.flatMap((dir) => names.map((name) => joinPath(dir, name)));
  if (options.bareName ?? true) candidates.push(...names);
  const attempts: string[] = [];
  for (const path of candidates) {
    try {
      return Deno.dlopen(path, symbols);
    } catch (error) {
      if (isPermissionError(error)) {
        throw new TensorqError(`loading the ${what} library needs the FFI permission`, {
          op: "dlopen",
          kind: "cuda",
          expected: "--allow-ffi",
          actual: messageOf(error),
          cause: error,
        });
      }
      attempts.push(`${path}: ${loaderReason(path, error)}`);
    }
  }
  throw new TensorqError(
    `could not open the ${what} library (${names.join(" or ")}); ` +
      `set TENSORQ_CUDA_LIB_DIR to the directory that holds it. Tried:\n  ` +
      attempts.join("\n  ") + "\n",
    { op: "dlopen", kind: "cuda" },
  );
}

interface CacheEntry {
  reset(): void;
}

const caches = new Set<CacheEntry>();

/**
 * Returns a getter that opens the library on its first call and caches the result. A failure
 * is cached too (the same error is thrown again) until {@link resetLibraryCache}.
 */
export function lazyLibrary<const S extends Deno.ForeignLibraryInterface>(
  what: string,
  names: readonly string[],
  symbols: S,
  options: OpenLibraryOptions = {},
): () => Deno.StaticForeignLibraryInterface<S> {
  let library: Deno.DynamicLibrary<S> | undefined;
  let failure: unknown;
  caches.add({
    reset() {
      library = undefined;
      failure = undefined;
    },
  });
  return () => {
    if (library !== undefined) return library.symbols;
    if (failure !== undefined) throw failure;
    try {
      library = openLibrary(what, names, symbols, options);
    } catch (error) {
      failure = error;
      throw error;
    }
    return library.symbols;
  };
}

/**
 * Forgets every opened library and cached failure, so the next getter call searches again
 * (the environment may have changed). Libraries already opened stay loaded in the process.
 */
export function resetLibraryCache(): void {
  for (const entry of caches) entry.reset();
}

/** Reads the NUL-terminated string at `pointer` (empty for a null pointer). */
export function cString(pointer: Deno.PointerValue): string {
  return pointer === null ? "" : Deno.UnsafePointerView.getCString(pointer);
}

/** Encodes `text` as a NUL-terminated UTF-8 string in its own (off-heap) buffer. */
export function toCString(text: string): Uint8Array<ArrayBuffer> {
  const encoded = new TextEncoder().encode(text);
  const bytes = new Uint8Array(new ArrayBuffer(encoded.length + 1));
  bytes.set(encoded);
  return bytes;
}

/** Converts an address (as a bigint, number or pointer) to a pointer value. */
export function toPointer(address: Deno.PointerValue | bigint | number): Deno.PointerValue {
  if (typeof address === "bigint") return Deno.UnsafePointer.create(address);
  if (typeof address === "number") return Deno.UnsafePointer.create(BigInt(address));
  return address;
}

/** Returns the numeric address of a pointer (`0n` for null). */
export function addressOf(pointer: Deno.PointerValue | bigint | number): bigint {
  if (typeof pointer === "bigint") return pointer;
  if (typeof pointer === "number") return BigInt(pointer);
  return pointer === null ? 0n : Deno.UnsafePointer.value(pointer);
}
