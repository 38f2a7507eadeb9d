/**
 * Bindings to the CUDA driver API (`libcuda.so.1`): modules, kernels and launches.
 *
 * The library is opened on the first call of {@link cuda}. Driver calls need a current context
 * on the calling thread: make the device's primary context current first, e.g. through the
 * runtime (`cudaSetDevice(0)` then `cudaFree(null)`), or with `cuDevicePrimaryCtxRetain` +
 * `cuCtxSetCurrent`.
 * @module
 */

import { TensorqError } from "../lib/errors.ts";
import { addressOf, cString, type CudaFailure, lazyLibrary, toCString } from "./library.ts";

// Enum values below are copied from CUDA 13.0's cuda.h.

/** `CUDA_SUCCESS`. */
export const CUDA_SUCCESS: number = 0;
/** `CUDA_ERROR_INVALID_VALUE`. */
export const CUDA_ERROR_INVALID_VALUE: number = 1;
/** `CUDA_ERROR_OUT_OF_MEMORY`. */
export const CUDA_ERROR_OUT_OF_MEMORY: number = 2;
/** `CUDA_ERROR_NOT_INITIALIZED`. */
export const CUDA_ERROR_NOT_INITIALIZED: number = 3;
/** `CUDA_ERROR_NO_DEVICE`. */
export const CUDA_ERROR_NO_DEVICE: number = 100;
/** `CUDA_ERROR_INVALID_IMAGE`. */
export const CUDA_ERROR_INVALID_IMAGE: number = 200;
/** `CUDA_ERROR_NO_BINARY_FOR_GPU`. */
export const CUDA_ERROR_NO_BINARY_FOR_GPU: number = 209;
/** `CUDA_ERROR_INVALID_PTX`. */
export const CUDA_ERROR_INVALID_PTX: number = 218;
/** `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`. */
export const CUDA_ERROR_UNSUPPORTED_PTX_VERSION: number = 222;
/** `CUDA_ERROR_NOT_FOUND`. */
export const CUDA_ERROR_NOT_FOUND: number = 500;
/** `CUDA_ERROR_NOT_READY`. */
export const CUDA_ERROR_NOT_READY: number = 600;

/** `CU_JIT_INFO_LOG_BUFFER` (option value: `char*`). */
export const CU_JIT_INFO_LOG_BUFFER: number = 3;
/** `CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES` (option value: `unsigned int`, in and out). */
export const CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: number = 4;
/** `CU_JIT_ERROR_LOG_BUFFER` (option value: `char*`). */
export const CU_JIT_ERROR_LOG_BUFFER: number = 5;
/** `CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES` (option value: `unsigned int`, in and out). */
export const CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: number = 6;

/** `CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK`. */
export const CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: number = 1;
/** `CU_DEVICE_ATTRIBUTE_WARP_SIZE`. */
export const CU_DEVICE_ATTRIBUTE_WARP_SIZE: number = 10;
/** `CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT`. */
export const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: number = 16;
/** `CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE` (bytes). */
export const CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: number = 38;
/** `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR`. */
export const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: number = 75;
/** `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR`. */
export const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: number = 76;
/** `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR` (bytes). */
export const CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: number = 81;
/** `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN` (bytes). */
export const CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: number = 97;

/** `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`. */
export const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: number = 8;
/** `CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT` (percent). */
export const CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: number = 9;

/** `CU_TENSOR_MAP_DATA_TYPE_UINT8`. */
export const CU_TENSOR_MAP_DATA_TYPE_UINT8: number = 0;
/** `CU_TENSOR_MAP_INTERLEAVE_NONE`. */
export const CU_TENSOR_MAP_INTERLEAVE_NONE: number = 0;
/** `CU_TENSOR_MAP_SWIZZLE_NONE`. */
export const CU_TENSOR_MAP_SWIZZLE_NONE: number = 0;
/** `CU_TENSOR_MAP_SWIZZLE_128B`. */
export const CU_TENSOR_MAP_SWIZZLE_128B: number = 3;
/** `CU_TENSOR_MAP_L2_PROMOTION_NONE`. */
export const CU_TENSOR_MAP_L2_PROMOTION_NONE: number = 0;
/** `CU_TENSOR_MAP_L2_PROMOTION_L2_256B`. */
export const CU_TENSOR_MAP_L2_PROMOTION_L2_256B: number = 3;
/** `CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE` (out-of-bounds elements read as zero). */
export const CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE: number = 0;
/** Bytes of a `CUtensorMap`. */
export const CU_TENSOR_MAP_BYTES = 128;
/** Alignment of a `CUtensorMap` (`alignas(128)` in CUDA 13.0's cuda.h; the encoder needs 64). */
export const CU_TENSOR_MAP_ALIGNMENT = 128;

// Status results are `CUresult` (a C enum: i32). Handles are pointers. Out-parameters are
// buffers. Device ordinals (`CUdevice`) are int.
/** The driver API symbols bound by `Deno.dlopen`, with their C signatures. */
export const CUDA_DRIVER_SYMBOLS = {
  cuInit: { parameters: ["u32"], result: "i32" },
  cuDriverGetVersion: { parameters: ["buffer"], result: "i32" },
  cuDeviceGet: { parameters: ["buffer", "i32"], result: "i32" },
  cuDeviceGetCount: { parameters: ["buffer"], result: "i32" },
  cuDeviceGetName: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  cuDeviceGetAttribute: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  cuDevicePrimaryCtxRetain: { parameters: ["buffer", "i32"], result: "i32" },
  cuCtxSetCurrent: { parameters: ["pointer"], result: "i32" },
  cuCtxGetCurrent: { parameters: ["buffer"], result: "i32" },
  cuModuleLoadData: { parameters: ["buffer", "buffer"], result: "i32" },
  cuModuleLoadDataEx: {
    parameters: ["buffer", "buffer", "u32", "buffer", "buffer"],
    result: "i32",
  },
  cuModuleGetFunction: { parameters: ["buffer", "pointer", "buffer"], result: "i32" },
  cuModuleUnload: { parameters: ["pointer"], result: "i32" },
  // (f, gridX, gridY, gridZ, blockX, blockY, blockZ, sharedMemBytes, stream, params, extra)
  cuLaunchKernel: {
    parameters: [
      "pointer",
      "u32",
      "u32",
      "u32",
      "u32",
      "u32",
      "u32",
      "u32",
      "pointer",
      "buffer",
      "pointer",
    ],
    result: "i32",
  },
  cuFuncSetAttribute: { parameters: ["pointer", "i32", "i32"], result: "i32" },
  // Marks the region a profiler started with profiling off (`ncu --profile-from-start off`)
  // collects.
  cuProfilerStart: { parameters: [], result: "i32" },
  cuProfilerStop: { parameters: [], result: "i32" },
  cuGetErrorName: { parameters: ["i32", "buffer"], result: "i32" },
  cuGetErrorString: { parameters: ["i32", "buffer"], result: "i32" },
  // (tensorMap, dataType, rank, globalAddress, globalDim, globalStrides, boxDim,
  // elementStrides, interleave, swizzle, l2Promotion, oobFill); CUDA 12.0+ drivers only.
  cuTensorMapEncodeTiled: {
    parameters: [
      "buffer",
      "i32",
      "u32",
      "pointer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
    ],
    result: "i32",
    optional: true,
  },
} as const;

/** The driver API's bound symbols, as returned by {@link cuda}. */
export type CudaDriverLib = Deno.StaticForeignLibraryInterface<typeof CUDA_DRIVER_SYMBOLS>;

/** The driver library's file names, tried in order (not `libcuda.so`: in a toolkit directory
 * that name is usually a link-time stub). */
export const CUDA_DRIVER_NAMES: readonly string[] = ["libcuda.so.1"];

/** Opens `libcuda.so.1` on first use and returns its symbols (cached, failures too). */
export const cuda: () => CudaDriverLib = lazyLibrary(
  "CUDA driver",
  CUDA_DRIVER_NAMES,
  CUDA_DRIVER_SYMBOLS,
);

// Scratch out-parameters for synchronous calls (off-heap, so their addresses are stable).
const outPointer = new BigUint64Array(new ArrayBuffer(8));
const outInt = new Int32Array(new ArrayBuffer(8));

function statusText(
  lib: CudaDriverLib,
  fn: "cuGetErrorName" | "cuGetErrorString",
  status: number,
): string | undefined {
  outPointer[0] = 0n;
  if (lib[fn](status, outPointer) !== CUDA_SUCCESS || outPointer[0] === 0n) return undefined;
  return cString(Deno.UnsafePointer.create(outPointer[0]));
}

/** Returns `CUresult` `status`'s name and description, e.g. `["CUDA_ERROR_INVALID_VALUE",
 * "invalid argument"]`; a fallback name if the driver can't tell. */
export function cuStatusName(status: number): [name: string, description: string] {
  let lib: CudaDriverLib;
  try {
    lib = cuda();
  } catch {
    return [`CUresult ${status}`, ""];
  }
  return [
    statusText(lib, "cuGetErrorName", status) ?? `CUresult ${status}`,
    statusText(lib, "cuGetErrorString", status) ?? "",
  ];
}

function cuFailure(status: number, call: string, detail?: string): TensorqError {
  const [name, description] = cuStatusName(status);
  const cause: CudaFailure = { api: "driver", status, name };
  const text = `failed with ${name}${description ? ` (${description})` : ""}` +
    (detail ? `\n${detail}` : "");
  return new TensorqError(text, { op: call, kind: "cuda", cause });
}

/**
 * Throws a {@link TensorqError} (op = `call`, kind `cuda`) unless `status` is `CUDA_SUCCESS`.
 * The message names the status: `cuLaunchKernel: failed with CUDA_ERROR_INVALID_VALUE
 * (invalid argument) at ...`; `cause` is a {@link CudaFailure}.
 */
export function checkCu(status: number, call: string): void {
  if (status !== CUDA_SUCCESS) throw cuFailure(status, call);
}

/** Returns device attribute `attribute` (a `CU_DEVICE_ATTRIBUTE_*`) of device `device`. */
export function cuDeviceAttribute(attribute: number, device: number): number {
  checkCu(cuda().cuDeviceGetAttribute(outInt, attribute, device), "cuDeviceGetAttribute");
  return outInt[0];
}

/** Returns the name of device `device`, e.g. `NVIDIA H200`. */
export function cuDeviceName(device: number): string {
  const bytes = new Uint8Array(new ArrayBuffer(256));
  checkCu(cuda().cuDeviceGetName(bytes, bytes.length, device), "cuDeviceGetName");
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(bytes.subarray(0, end < 0 ? bytes.length : end));
}

const JIT_LOG_BYTES = 16384;

/**
 * Loads a PTX module into the current context. A JIT failure throws a {@link TensorqError}
 * whose message carries the JIT's error log.
 */
export function cuModuleLoadPtx(ptx: string): Deno.PointerValue {
  return loadModuleImage(toCString(ptx));
}

/**
 * Loads a compiled module (a cubin's ELF image) into the current context. A cubin for another
 * GPU fails with `CUDA_ERROR_NO_BINARY_FOR_GPU`, a malformed one with
 * `CUDA_ERROR_INVALID_IMAGE`, each a {@link TensorqError} naming the status.
 */
export function cuModuleLoadCubin(image: Uint8Array): Deno.PointerValue {
  // FFI buffers must be views of a plain ArrayBuffer: copy, so that any view is taken.
  return loadModuleImage(new Uint8Array(image));
}

function loadModuleImage(image: Uint8Array<ArrayBuffer>): Deno.PointerValue {
  const log = new Uint8Array(new ArrayBuffer(JIT_LOG_BYTES));
  const options = new Int32Array(new ArrayBuffer(8));
  options[0] = CU_JIT_ERROR_LOG_BUFFER;
  options[1] = CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES;
  // Option values are void*-sized; the size is passed by value in that slot and the driver
  // writes the number of log bytes used back into it.
  const values = new BigUint64Array(new ArrayBuffer(16));
  values[0] = addressOf(Deno.UnsafePointer.of(log));
  values[1] = BigInt(JIT_LOG_BYTES);
  const module = new BigUint64Array(new ArrayBuffer(8));
  const status = cuda().cuModuleLoadDataEx(module, image, 2, options, values);
  if (status !== CUDA_SUCCESS) {
    const end = log.indexOf(0);
    const text = new TextDecoder().decode(log.subarray(0, end < 0 ? log.length : end)).trim();
    throw cuFailure(status, "cuModuleLoadDataEx", text ? `JIT log:\n${text}` : undefined);
  }
  return Deno.UnsafePointer.create(module[0]);
}

/** Returns kernel `name` (an `extern "C"` entry) of a loaded module. */
export function cuGetFunction(module: Deno.PointerValue, name: string): Deno.PointerValue {
  checkCu(cuda().cuModuleGetFunction(outPointer, module, toCString(name)), "cuModuleGetFunction");
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** A tiled tensor map's layout, as `cuTensorMapEncodeTiled` takes it. */
export interface TensorMapTiled {
  /** A `CU_TENSOR_MAP_DATA_TYPE_*`. */
  dataType: number;
  /** Device address of the tensor's first element (16-byte aligned). */
  globalAddress: bigint;
  /** Elements per dimension, innermost first (the rank is this length, 1 to 5). */
  globalDims: readonly number[];
  /** Bytes between consecutive indices of dimensions 1 and up (rank - 1 entries, multiples
   * of 16). */
  globalStrides: readonly number[];
  /** Elements of the box (the tile one copy moves) per dimension, each at most 256. */
  boxDims: readonly number[];
  /** Traversal strides per dimension (default all 1). */
  elementStrides?: readonly number[];
  /** A `CU_TENSOR_MAP_INTERLEAVE_*` (default none). */
  interleave?: number;
  /** A `CU_TENSOR_MAP_SWIZZLE_*` (default none). */
  swizzle?: number;
  /** A `CU_TENSOR_MAP_L2_PROMOTION_*` (default none). */
  l2Promotion?: number;
  /** A `CU_TENSOR_MAP_FLOAT_OOB_FILL_*` (default none: out-of-bounds elements read as 0). */
  oobFill?: number;
}

/** Returns a zeroed {@link CU_TENSOR_MAP_BYTES}-byte off-heap buffer at an address aligned to
 * {@link CU_TENSOR_MAP_ALIGNMENT}, to encode a tensor map into. */
export function tensorMapBuffer(): Uint8Array<ArrayBuffer> {
  const buffer = new ArrayBuffer(CU_TENSOR_MAP_BYTES + CU_TENSOR_MAP_ALIGNMENT);
  const base = addressOf(Deno.UnsafePointer.of(buffer));
  const align = BigInt(CU_TENSOR_MAP_ALIGNMENT);
  const offset = Number((align - (base % align)) % align);
  return new Uint8Array(buffer, offset, CU_TENSOR_MAP_BYTES);
}

/** True when the driver exports `cuTensorMapEncodeTiled` (CUDA 12.0 and newer). */
export function hasTensorMaps(): boolean {
  try {
    return cuda().cuTensorMapEncodeTiled !== null;
  } catch {
    return false;
  }
}

/**
 * Encodes a tiled tensor map (`cuTensorMapEncodeTiled`) into `target` (default: a new
 * {@link tensorMapBuffer}) and returns it: the 128 bytes a kernel takes as a
 * `const __grid_constant__ CUtensorMap` parameter (append them with
 * {@link KernelParams.bytes}). `target` must be 64-byte aligned off-heap memory. Throws a
 * {@link TensorqError} (op `cuTensorMapEncodeTiled`) when the driver lacks the call or rejects
 * the layout.
 */
export function cuTensorMapEncodeTiled(
  layout: TensorMapTiled,
  target: Uint8Array<ArrayBuffer> = tensorMapBuffer(),
): Uint8Array<ArrayBuffer> {
  const encode = cuda().cuTensorMapEncodeTiled;
  if (encode === null) {
    throw new TensorqError("the CUDA driver has no cuTensorMapEncodeTiled", {
      op: "cuTensorMapEncodeTiled",
      kind: "unsupported",
      expected: "a CUDA 12.0 or newer driver",
    });
  }
  const rank = layout.globalDims.length;
  const misaligned = addressOf(Deno.UnsafePointer.of(target)) % 64n !== 0n;
  if (target.length < CU_TENSOR_MAP_BYTES || misaligned) {
    throw new TensorqError("tensor map target must be 128 bytes at a 64-byte aligned address", {
      op: "cuTensorMapEncodeTiled",
      kind: "argument",
      argument: "target",
    });
  }
  const dims = new BigUint64Array(new ArrayBuffer(8 * rank));
  const strides = new BigUint64Array(new ArrayBuffer(8 * Math.max(1, rank - 1)));
  const box = new Uint32Array(new ArrayBuffer(4 * rank));
  const elementStrides = new Uint32Array(new ArrayBuffer(4 * rank));
  for (let i = 0; i < rank; i++) {
    dims[i] = BigInt(layout.globalDims[i]);
    if (i > 0) strides[i - 1] = BigInt(layout.globalStrides[i - 1]);
    box[i] = layout.boxDims[i];
    elementStrides[i] = layout.elementStrides?.[i] ?? 1;
  }
  const status = encode(
    target,
    layout.dataType,
    rank,
    Deno.UnsafePointer.create(layout.globalAddress),
    dims,
    strides,
    box,
    elementStrides,
    layout.interleave ?? CU_TENSOR_MAP_INTERLEAVE_NONE,
    layout.swizzle ?? CU_TENSOR_MAP_SWIZZLE_NONE,
    layout.l2Promotion ?? CU_TENSOR_MAP_L2_PROMOTION_NONE,
    layout.oobFill ?? CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
  );
  if (status !== CUDA_SUCCESS) {
    throw cuFailure(
      status,
      "cuTensorMapEncodeTiled",
      `dims [${layout.globalDims}], strides [${layout.globalStrides}], box [${layout.boxDims}]`,
    );
  }
  return target;
}

const INITIAL_SLOTS = 16;
/** Bytes of the first by-value blob chunk of a {@link KernelParams}. */
const BLOB_CHUNK_BYTES = 1024;

/**
 * The `void** kernelParams` array of a launch: one 8-byte slot of storage per argument and an
 * array of pointers to those slots. Both buffers live as long as this object. Reuse one per
 * call site: {@link KernelParams.reset} then append the arguments again (no allocation unless
 * a launch has more arguments than ever before).
 */
export class KernelParams {
  #storage: ArrayBuffer;
  #u32: Uint32Array;
  #i32: Int32Array;
  #f32: Float32Array;
  #f64: Float64Array;
  #i64: BigInt64Array;
  #u64: BigUint64Array;
  #pointers: BigUint64Array<ArrayBuffer>;
  #storageBase = 0n;
  #count = 0;
  // By-value blobs (bytes()): off-heap chunks kept for reuse, the slots whose pointer entries
  // point into them, and the bump position in the chunks.
  #blobChunks: { bytes: Uint8Array<ArrayBuffer>; base: bigint }[] = [];
  #blobSlots: number[] = [];
  #blobAddresses: bigint[] = [];
  #blobChunk = 0;
  #blobOffset = 0;

  /** Creates an empty argument list with room for `capacity` arguments before it grows. */
  constructor(capacity: number = INITIAL_SLOTS) {
    // Explicitly created ArrayBuffers live outside the V8 heap: their addresses never move.
    const slots = Math.max(INITIAL_SLOTS, Math.ceil(capacity));
    this.#storage = new ArrayBuffer(slots * 8);
    this.#u32 = new Uint32Array(this.#storage);
    this.#i32 = new Int32Array(this.#storage);
    this.#f32 = new Float32Array(this.#storage);
    this.#f64 = new Float64Array(this.#storage);
    this.#i64 = new BigInt64Array(this.#storage);
    this.#u64 = new BigUint64Array(this.#storage);
    this.#pointers = new BigUint64Array(new ArrayBuffer(slots * 8));
    this.#fillPointers();
  }

  #fillPointers(): void {
    const base = addressOf(Deno.UnsafePointer.of(this.#storage));
    this.#storageBase = base;
    for (let i = 0; i < this.#pointers.length; i++) this.#pointers[i] = base + BigInt(i * 8);
    // Blob arguments appended since the last reset keep pointing at their blobs.
    this.#blobSlots.forEach((slot, i) => this.#pointers[slot] = this.#blobAddresses[i]);
  }

  // Reserves the next slot. Call it before reading a view field: growing replaces the views.
  #next(): number {
    if (this.#count === this.#pointers.length) {
      const old = new Uint8Array(this.#storage);
      this.#storage = new ArrayBuffer(this.#storage.byteLength * 2);
      new Uint8Array(this.#storage).set(old);
      this.#u32 = new Uint32Array(this.#storage);
      this.#i32 = new Int32Array(this.#storage);
      this.#f32 = new Float32Array(this.#storage);
      this.#f64 = new Float64Array(this.#storage);
      this.#i64 = new BigInt64Array(this.#storage);
      this.#u64 = new BigUint64Array(this.#storage);
      this.#pointers = new BigUint64Array(new ArrayBuffer(this.#storage.byteLength));
      this.#fillPointers();
    }
    return this.#count++;
  }

  /** Empties the list, keeping its buffers. */
  reset(): this {
    this.#count = 0;
    if (this.#blobSlots.length > 0) {
      // Those slots hold plain arguments again unless bytes() is called for them.
      for (const slot of this.#blobSlots) {
        this.#pointers[slot] = this.#storageBase + BigInt(slot * 8);
      }
      this.#blobSlots.length = 0;
      this.#blobAddresses.length = 0;
    }
    this.#blobChunk = 0;
    this.#blobOffset = 0;
    return this;
  }

  /** Number of arguments appended since the last reset. */
  get length(): number {
    return this.#count;
  }

  /** The `void*[]` passed to `cuLaunchKernel`: entry `i` is the address of argument `i`. */
  get pointerArray(): BigUint64Array<ArrayBuffer> {
    return this.#pointers;
  }

  /** Appends a pointer argument (device address; null, a pointer object or a bigint). */
  ptr(p: Deno.PointerValue | bigint): this {
    const slot = this.#next();
    this.#u64[slot] = typeof p === "bigint" ? p : addressOf(p);
    return this;
  }

  /** Appends an `int` argument. */
  i32(value: number): this {
    const slot = this.#next();
    this.#i32[slot * 2] = value;
    return this;
  }

  /** Appends an `unsigned int` argument. */
  u32(value: number): this {
    const slot = this.#next();
    this.#u32[slot * 2] = value;
    return this;
  }

  /** Appends a `long long` argument. */
  i64(value: number | bigint): this {
    const slot = this.#next();
    this.#i64[slot] = BigInt(value);
    return this;
  }

  /** Appends an `unsigned long long` argument. */
  u64(value: number | bigint): this {
    const slot = this.#next();
    this.#u64[slot] = BigInt(value);
    return this;
  }

  /** Appends a `float` argument. */
  f32(value: number): this {
    const slot = this.#next();
    this.#f32[slot * 2] = value;
    return this;
  }

  /** Appends a `double` argument. */
  f64(value: number): this {
    const slot = this.#next();
    this.#f64[slot] = value;
    return this;
  }

  /**
   * Appends a by-value argument of `data.length` bytes (a struct such as a
   * `const __grid_constant__ CUtensorMap`): the bytes are copied into storage of this object at
   * an address aligned to `alignment` (a power of two), which the argument's pointer entry
   * points at.
   */
  bytes(data: Uint8Array, alignment: number = 64): this {
    if (!(Number.isInteger(alignment) && alignment > 0 && (alignment & (alignment - 1)) === 0)) {
      throw new TensorqError("alignment must be a power of two", {
        op: "KernelParams.bytes",
        kind: "argument",
        argument: "alignment",
        actual: String(alignment),
      });
    }
    const slot = this.#next();
    const [view, address] = this.#blobSpace(data.length, alignment);
    view.set(data);
    this.#pointers[slot] = address;
    this.#blobSlots.push(slot);
    this.#blobAddresses.push(address);
    return this;
  }

  // Next `size` bytes of blob storage at an `alignment`-aligned address (chunks are never
  // moved or freed, so earlier blobs stay valid).
  #blobSpace(size: number, alignment: number): [Uint8Array, bigint] {
    const align = BigInt(alignment);
    for (;;) {
      const chunk = this.#blobChunks[this.#blobChunk];
      if (!chunk) break;
      const start = chunk.base + BigInt(this.#blobOffset);
      const offset = Number((start + align - 1n) / align * align - chunk.base);
      if (offset + size <= chunk.bytes.length) {
        this.#blobOffset = offset + size;
        return [chunk.bytes.subarray(offset, offset + size), chunk.base + BigInt(offset)];
      }
      this.#blobChunk++;
      this.#blobOffset = 0;
    }
    const buffer = new ArrayBuffer(Math.max(BLOB_CHUNK_BYTES, size + alignment));
    const bytes = new Uint8Array(buffer);
    this.#blobChunks.push({ bytes, base: addressOf(Deno.UnsafePointer.of(buffer)) });
    this.#blobChunk = this.#blobChunks.length - 1;
    this.#blobOffset = 0;
    return this.#blobSpace(size, alignment);
  }
}

/** Launch dimensions `[x, y, z]`. */
export type Dim3 = readonly [x: number, y: number, z: number];

/**
 * Launches kernel `fn` on `stream` (null: the legacy default stream) with `params` as its
 * arguments, in the order the kernel declares them.
 */
export function cuLaunch(
  fn: Deno.PointerValue,
  grid: Dim3,
  block: Dim3,
  sharedBytes: number,
  stream: Deno.PointerValue,
  params: KernelParams,
): void {
  const status = cuda().cuLaunchKernel(
    fn,
    grid[0],
    grid[1],
    grid[2],
    block[0],
    block[1],
    block[2],
    sharedBytes,
    stream,
    params.pointerArray,
    null,
  );
  if (status !== CUDA_SUCCESS) throw cuFailure(status, "cuLaunchKernel");
}
