/**
 * Bindings to the CUDA runtime API (`libcudart.so.13`, falling back to `.so.12`): devices,
 * memory, streams, events, memory pools and graphs.
 *
 * The library is opened on the first call of {@link cudart}. Device and host pointers are
 * `Deno.PointerValue`s (`null` is the null pointer; `null` as a stream is the legacy default
 * stream). The `...Async` symbols whose C name has no such suffix (`cudaStreamSynchronizeAsync`,
 * `cudaEventSynchronizeAsync`) are the same C functions bound `nonblocking`: they wait on
 * another thread and return a promise. The runtime makes the device's primary context current
 * on that thread by itself.
 * @module
 */

import { TensorqError } from "../lib/errors.ts";
import { addressOf, cString, type CudaFailure, lazyLibrary } from "./library.ts";

// Enum and flag values below are copied from CUDA 13.0's driver_types.h.

/** `cudaSuccess`. */
export const cudaSuccess: number = 0;
/** `cudaErrorInvalidValue`. */
export const cudaErrorInvalidValue: number = 1;
/** `cudaErrorMemoryAllocation`. */
export const cudaErrorMemoryAllocation: number = 2;
/** `cudaErrorInitializationError`. */
export const cudaErrorInitializationError: number = 3;
/** `cudaErrorInsufficientDriver`. */
export const cudaErrorInsufficientDriver: number = 35;
/** `cudaErrorNoDevice`. */
export const cudaErrorNoDevice: number = 100;
/** `cudaErrorNotReady`: returned by `cudaEventQuery`/`cudaStreamQuery` while work is pending. */
export const cudaErrorNotReady: number = 600;
/** `cudaErrorStreamCaptureUnsupported`. */
export const cudaErrorStreamCaptureUnsupported: number = 900;
/** `cudaErrorStreamCaptureInvalidated`. */
export const cudaErrorStreamCaptureInvalidated: number = 901;

/** `cudaMemcpyHostToHost`. */
export const cudaMemcpyHostToHost: number = 0;
/** `cudaMemcpyHostToDevice`. */
export const cudaMemcpyHostToDevice: number = 1;
/** `cudaMemcpyDeviceToHost`. */
export const cudaMemcpyDeviceToHost: number = 2;
/** `cudaMemcpyDeviceToDevice`. */
export const cudaMemcpyDeviceToDevice: number = 3;
/** `cudaMemcpyDefault`: direction inferred from the pointers (unified addressing). */
export const cudaMemcpyDefault: number = 4;

/** `cudaStreamDefault` stream flag. */
export const cudaStreamDefault: number = 0x00;
/** `cudaStreamNonBlocking`: the stream does not synchronize with the legacy default stream. */
export const cudaStreamNonBlocking: number = 0x01;

/** `cudaEventDefault` event flag. */
export const cudaEventDefault: number = 0x00;
/** `cudaEventBlockingSync`: waits on the event sleep instead of spinning. */
export const cudaEventBlockingSync: number = 0x01;
/** `cudaEventDisableTiming`: the event records no time (cheaper). */
export const cudaEventDisableTiming: number = 0x02;

/** `cudaHostAllocDefault`. */
export const cudaHostAllocDefault: number = 0x00;
/** `cudaHostAllocPortable`. */
export const cudaHostAllocPortable: number = 0x01;
/** `cudaHostAllocMapped`. */
export const cudaHostAllocMapped: number = 0x02;
/** `cudaHostAllocWriteCombined`. */
export const cudaHostAllocWriteCombined: number = 0x04;

/** `cudaHostRegisterDefault`. */
export const cudaHostRegisterDefault: number = 0x00;
/** `cudaHostRegisterPortable`. */
export const cudaHostRegisterPortable: number = 0x01;
/** `cudaHostRegisterMapped`. */
export const cudaHostRegisterMapped: number = 0x02;
/** `cudaHostRegisterReadOnly`. */
export const cudaHostRegisterReadOnly: number = 0x08;

/** `cudaMemPoolReuseFollowEventDependencies` (value: int). */
export const cudaMemPoolReuseFollowEventDependencies: number = 0x1;
/** `cudaMemPoolReuseAllowOpportunistic` (value: int). */
export const cudaMemPoolReuseAllowOpportunistic: number = 0x2;
/** `cudaMemPoolReuseAllowInternalDependencies` (value: int). */
export const cudaMemPoolReuseAllowInternalDependencies: number = 0x3;
/** `cudaMemPoolAttrReleaseThreshold` (value: uint64 bytes kept reserved at synchronization). */
export const cudaMemPoolAttrReleaseThreshold: number = 0x4;
/** `cudaMemPoolAttrReservedMemCurrent` (value: uint64). */
export const cudaMemPoolAttrReservedMemCurrent: number = 0x5;
/** `cudaMemPoolAttrReservedMemHigh` (value: uint64). */
export const cudaMemPoolAttrReservedMemHigh: number = 0x6;
/** `cudaMemPoolAttrUsedMemCurrent` (value: uint64). */
export const cudaMemPoolAttrUsedMemCurrent: number = 0x7;
/** `cudaMemPoolAttrUsedMemHigh` (value: uint64). */
export const cudaMemPoolAttrUsedMemHigh: number = 0x8;

/** `cudaGraphMemAttrReservedMemCurrent` (value: uint64): memory the graph allocator holds. */
export const cudaGraphMemAttrReservedMemCurrent: number = 0x2;

/** `cudaStreamCaptureModeGlobal`. */
export const cudaStreamCaptureModeGlobal: number = 0;
/** `cudaStreamCaptureModeThreadLocal`. */
export const cudaStreamCaptureModeThreadLocal: number = 1;
/** `cudaStreamCaptureModeRelaxed`. */
export const cudaStreamCaptureModeRelaxed: number = 2;

/** `cudaStreamCaptureStatusNone`. */
export const cudaStreamCaptureStatusNone: number = 0;
/** `cudaStreamCaptureStatusActive`. */
export const cudaStreamCaptureStatusActive: number = 1;
/** `cudaStreamCaptureStatusInvalidated`. */
export const cudaStreamCaptureStatusInvalidated: number = 2;

/** `cudaGraphInstantiateFlagAutoFreeOnLaunch`. */
export const cudaGraphInstantiateFlagAutoFreeOnLaunch: number = 1;
/** `cudaGraphInstantiateFlagUpload`. */
export const cudaGraphInstantiateFlagUpload: number = 2;
/** `cudaGraphInstantiateFlagUseNodePriority`. */
export const cudaGraphInstantiateFlagUseNodePriority: number = 8;

/** `cudaDevAttrMaxThreadsPerBlock`. */
export const cudaDevAttrMaxThreadsPerBlock: number = 1;
/** `cudaDevAttrWarpSize`. */
export const cudaDevAttrWarpSize: number = 10;
/** `cudaDevAttrMultiProcessorCount`. */
export const cudaDevAttrMultiProcessorCount: number = 16;
/** `cudaDevAttrL2CacheSize` (bytes). */
export const cudaDevAttrL2CacheSize: number = 38;
/** `cudaDevAttrComputeCapabilityMajor`. */
export const cudaDevAttrComputeCapabilityMajor: number = 75;
/** `cudaDevAttrComputeCapabilityMinor`. */
export const cudaDevAttrComputeCapabilityMinor: number = 76;
/** `cudaDevAttrMaxSharedMemoryPerMultiprocessor` (bytes). */
export const cudaDevAttrMaxSharedMemoryPerMultiprocessor: number = 81;
/** `cudaDevAttrMaxSharedMemoryPerBlockOptin` (bytes). */
export const cudaDevAttrMaxSharedMemoryPerBlockOptin: number = 97;
/** `cudaDevAttrMemoryPoolsSupported`. */
export const cudaDevAttrMemoryPoolsSupported: number = 115;

// Status results are `cudaError_t` (a C enum: i32). Handles (streams, events, pools, graphs)
// and device pointers are pointers. Out-parameters are buffers. size_t is usize.
/** The runtime API symbols bound by `Deno.dlopen`, with their C signatures. */
export const CUDART_SYMBOLS = {
  cudaGetDeviceCount: { parameters: ["buffer"], result: "i32" },
  cudaSetDevice: { parameters: ["i32"], result: "i32" },
  cudaGetDevice: { parameters: ["buffer"], result: "i32" },
  cudaDeviceGetAttribute: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  cudaDeviceSynchronize: { parameters: [], result: "i32" },
  cudaRuntimeGetVersion: { parameters: ["buffer"], result: "i32" },
  cudaDriverGetVersion: { parameters: ["buffer"], result: "i32" },
  cudaGetErrorName: { parameters: ["i32"], result: "pointer" },
  cudaGetErrorString: { parameters: ["i32"], result: "pointer" },
  cudaGetLastError: { parameters: [], result: "i32" },
  cudaPeekAtLastError: { parameters: [], result: "i32" },

  cudaMalloc: { parameters: ["buffer", "usize"], result: "i32" },
  cudaFree: { parameters: ["pointer"], result: "i32" },
  cudaMallocAsync: { parameters: ["buffer", "usize", "pointer"], result: "i32" },
  cudaFreeAsync: { parameters: ["pointer", "pointer"], result: "i32" },
  cudaMemGetInfo: { parameters: ["buffer", "buffer"], result: "i32" },
  cudaHostAlloc: { parameters: ["buffer", "usize", "u32"], result: "i32" },
  cudaFreeHost: { parameters: ["pointer"], result: "i32" },
  cudaHostRegister: { parameters: ["pointer", "usize", "u32"], result: "i32" },
  cudaHostUnregister: { parameters: ["pointer"], result: "i32" },

  // (dst, src, bytes, kind) with pointers on both sides.
  cudaMemcpy: { parameters: ["pointer", "pointer", "usize", "i32"], result: "i32" },
  // The same function with a JS buffer on the host side.
  cudaMemcpyToDevice: {
    name: "cudaMemcpy",
    parameters: ["pointer", "buffer", "usize", "i32"],
    result: "i32",
  },
  cudaMemcpyToHost: {
    name: "cudaMemcpy",
    parameters: ["buffer", "pointer", "usize", "i32"],
    result: "i32",
  },
  // (dst, src, bytes, kind, stream)
  cudaMemcpyAsync: {
    parameters: ["pointer", "pointer", "usize", "i32", "pointer"],
    result: "i32",
  },
  cudaMemcpyToDeviceAsync: {
    name: "cudaMemcpyAsync",
    parameters: ["pointer", "buffer", "usize", "i32", "pointer"],
    result: "i32",
  },
  cudaMemcpyToHostAsync: {
    name: "cudaMemcpyAsync",
    parameters: ["buffer", "pointer", "usize", "i32", "pointer"],
    result: "i32",
  },
  // (dst, byte value, bytes, stream)
  cudaMemsetAsync: { parameters: ["pointer", "i32", "usize", "pointer"], result: "i32" },

  cudaStreamCreateWithFlags: { parameters: ["buffer", "u32"], result: "i32" },
  cudaStreamSynchronize: { parameters: ["pointer"], result: "i32" },
  cudaStreamSynchronizeAsync: {
    name: "cudaStreamSynchronize",
    parameters: ["pointer"],
    result: "i32",
    nonblocking: true,
  },
  cudaStreamDestroy: { parameters: ["pointer"], result: "i32" },

  cudaEventCreateWithFlags: { parameters: ["buffer", "u32"], result: "i32" },
  cudaEventRecord: { parameters: ["pointer", "pointer"], result: "i32" },
  cudaEventQuery: { parameters: ["pointer"], result: "i32" },
  cudaEventSynchronize: { parameters: ["pointer"], result: "i32" },
  cudaEventSynchronizeAsync: {
    name: "cudaEventSynchronize",
    parameters: ["pointer"],
    result: "i32",
    nonblocking: true,
  },
  // (float* ms, start, end)
  cudaEventElapsedTime: { parameters: ["buffer", "pointer", "pointer"], result: "i32" },
  cudaEventDestroy: { parameters: ["pointer"], result: "i32" },

  cudaDeviceGetDefaultMemPool: { parameters: ["buffer", "i32"], result: "i32" },
  // (pool, attribute, value*)
  cudaMemPoolSetAttribute: { parameters: ["pointer", "i32", "buffer"], result: "i32" },
  cudaMemPoolGetAttribute: { parameters: ["pointer", "i32", "buffer"], result: "i32" },
  cudaMemPoolTrimTo: { parameters: ["pointer", "usize"], result: "i32" },
  // (device, attribute, value*)
  cudaDeviceGetGraphMemAttribute: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  // (device): frees the graph allocator's memory that no graph is using
  cudaDeviceGraphMemTrim: { parameters: ["i32"], result: "i32" },

  cudaStreamBeginCapture: { parameters: ["pointer", "i32"], result: "i32" },
  cudaStreamEndCapture: { parameters: ["pointer", "buffer"], result: "i32" },
  cudaStreamIsCapturing: { parameters: ["pointer", "buffer"], result: "i32" },
  // CUDA 12+ signature: (cudaGraphExec_t*, cudaGraph_t, unsigned long long flags)
  cudaGraphInstantiate: { parameters: ["buffer", "pointer", "u64"], result: "i32" },
  cudaGraphLaunch: { parameters: ["pointer", "pointer"], result: "i32" },
  cudaGraphExecDestroy: { parameters: ["pointer"], result: "i32" },
  cudaGraphDestroy: { parameters: ["pointer"], result: "i32" },
} as const;

/** The runtime API's bound symbols, as returned by {@link cudart}. */
export type CudartLib = Deno.StaticForeignLibraryInterface<typeof CUDART_SYMBOLS>;

/** The runtime library's file names, tried in order. */
export const CUDART_NAMES: readonly string[] = ["libcudart.so.13", "libcudart.so.12"];

/** Opens the CUDA runtime on first use and returns its symbols (cached, failures too). */
export const cudart: () => CudartLib = lazyLibrary("CUDA runtime", CUDART_NAMES, CUDART_SYMBOLS);

// Scratch out-parameters for synchronous calls (off-heap, so their addresses are stable).
const outPointer = new BigUint64Array(new ArrayBuffer(8));
const outInt = new Int32Array(new ArrayBuffer(8));
const outU64 = new BigUint64Array(new ArrayBuffer(16));
const outFloat = new Float32Array(new ArrayBuffer(8));

/** Returns `cudaError_t` `status`'s name and description, e.g. `["cudaErrorMemoryAllocation",
 * "out of memory"]`; a fallback name if the runtime can't be opened. */
export function cudaStatusName(status: number): [name: string, description: string] {
  let lib: CudartLib;
  try {
    lib = cudart();
  } catch {
    return [`cudaError_t ${status}`, ""];
  }
  return [cString(lib.cudaGetErrorName(status)), cString(lib.cudaGetErrorString(status))];
}

/**
 * Throws a {@link TensorqError} (op = `call`, kind `cuda`) unless `status` is `cudaSuccess`.
 * The message names the status: `cudaMalloc: failed with cudaErrorMemoryAllocation (out of
 * memory) at ...`; `cause` is a {@link CudaFailure}. Also clears the runtime's last-error state, so a
 * recoverable failure (out of memory) doesn't resurface from a later `cudaGetLastError`.
 */
export function checkCuda(status: number, call: string): void {
  if (status === cudaSuccess) return;
  const [name, description] = cudaStatusName(status);
  try {
    cudart().cudaGetLastError();
  } catch {
    // The runtime could not be opened: nothing to clear.
  }
  const cause: CudaFailure = { api: "runtime", status, name };
  throw new TensorqError(
    `failed with ${name || `cudaError_t ${status}`}${description ? ` (${description})` : ""}`,
    { op: call, kind: "cuda", cause },
  );
}

/** Number of CUDA devices visible to the runtime. */
export function deviceCount(): number {
  checkCuda(cudart().cudaGetDeviceCount(outInt), "cudaGetDeviceCount");
  return outInt[0];
}

/** Returns device attribute `attribute` (a `cudaDevAttr*`) of device `device`. */
export function deviceAttribute(attribute: number, device: number): number {
  checkCuda(cudart().cudaDeviceGetAttribute(outInt, attribute, device), "cudaDeviceGetAttribute");
  return outInt[0];
}

/** The runtime's version, e.g. `13000` for 13.0. */
export function runtimeVersion(): number {
  checkCuda(cudart().cudaRuntimeGetVersion(outInt), "cudaRuntimeGetVersion");
  return outInt[0];
}

/** The newest CUDA version the installed driver supports, e.g. `13000`. */
export function driverVersion(): number {
  checkCuda(cudart().cudaDriverGetVersion(outInt), "cudaDriverGetVersion");
  return outInt[0];
}

/** Free and total device memory in bytes. */
export function memInfo(): { free: number; total: number } {
  checkCuda(
    cudart().cudaMemGetInfo(outU64.subarray(0, 1), outU64.subarray(1, 2)),
    "cudaMemGetInfo",
  );
  return { free: Number(outU64[0]), total: Number(outU64[1]) };
}

/** Allocates `bytes` of device memory (`cudaMalloc`). */
export function deviceAlloc(bytes: number | bigint): Deno.PointerValue {
  checkCuda(cudart().cudaMalloc(outPointer, BigInt(bytes)), "cudaMalloc");
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** Allocates `bytes` of device memory ordered on `stream` (`cudaMallocAsync`). */
export function deviceAllocAsync(
  bytes: number | bigint,
  stream: Deno.PointerValue,
): Deno.PointerValue {
  checkCuda(cudart().cudaMallocAsync(outPointer, BigInt(bytes), stream), "cudaMallocAsync");
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** Allocates `bytes` of page-locked host memory (`cudaHostAlloc`, `cudaHostAlloc*` flags). */
export function hostAlloc(bytes: number | bigint, flags: number = 0): Deno.PointerValue {
  checkCuda(cudart().cudaHostAlloc(outPointer, BigInt(bytes), flags), "cudaHostAlloc");
  return Deno.UnsafePointer.create(outPointer[0]);
}

function copyLength(call: string, host: ArrayBufferView, bytes: number | undefined): number {
  const length = bytes ?? host.byteLength;
  if (!Number.isInteger(length) || length < 0 || length > host.byteLength) {
    throw new TensorqError("byte count out of range", {
      op: call,
      kind: "argument",
      argument: "bytes",
      expected: `an integer in [0, ${host.byteLength}] (the host buffer's size)`,
      actual: String(length),
    });
  }
  return length;
}

/** Copies `bytes` (default: all) of host buffer `src` to device address `dst`; synchronous. */
export function copyToDevice(
  dst: Deno.PointerValue,
  src: ArrayBufferView<ArrayBuffer>,
  bytes?: number,
): void {
  const length = copyLength("cudaMemcpy", src, bytes);
  checkCuda(
    cudart().cudaMemcpyToDevice(dst, src, BigInt(length), cudaMemcpyHostToDevice),
    "cudaMemcpy",
  );
}

/** Copies `bytes` (default: all of `dst`) from device address `src` to host buffer `dst`;
 * synchronous. */
export function copyToHost(
  dst: ArrayBufferView<ArrayBuffer>,
  src: Deno.PointerValue,
  bytes?: number,
): void {
  const length = copyLength("cudaMemcpy", dst, bytes);
  checkCuda(
    cudart().cudaMemcpyToHost(dst, src, BigInt(length), cudaMemcpyDeviceToHost),
    "cudaMemcpy",
  );
}

/**
 * Enqueues a copy of host buffer `src` to device address `dst` on `stream`. Keep `src`
 * alive and unchanged until the stream has passed the copy (pageable memory is staged before
 * the call returns; page-locked memory is read later).
 */
export function copyToDeviceAsync(
  dst: Deno.PointerValue,
  src: ArrayBufferView<ArrayBuffer>,
  stream: Deno.PointerValue,
  bytes?: number,
): void {
  const length = copyLength("cudaMemcpyAsync", src, bytes);
  checkCuda(
    cudart().cudaMemcpyToDeviceAsync(dst, src, BigInt(length), cudaMemcpyHostToDevice, stream),
    "cudaMemcpyAsync",
  );
}

/** Enqueues a copy from device address `src` to host buffer `dst` on `stream`. Keep `dst`
 * alive and don't read it until the stream has passed the copy. */
export function copyToHostAsync(
  dst: ArrayBufferView<ArrayBuffer>,
  src: Deno.PointerValue,
  stream: Deno.PointerValue,
  bytes?: number,
): void {
  const length = copyLength("cudaMemcpyAsync", dst, bytes);
  checkCuda(
    cudart().cudaMemcpyToHostAsync(dst, src, BigInt(length), cudaMemcpyDeviceToHost, stream),
    "cudaMemcpyAsync",
  );
}

/** Creates a stream (`cudaStreamCreateWithFlags`; e.g. `cudaStreamNonBlocking`). */
export function createStream(flags: number = cudaStreamNonBlocking): Deno.PointerValue {
  checkCuda(cudart().cudaStreamCreateWithFlags(outPointer, flags), "cudaStreamCreateWithFlags");
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** Creates an event (`cudaEventCreateWithFlags`; e.g. `cudaEventDisableTiming`). */
export function createEvent(flags: number = cudaEventDefault): Deno.PointerValue {
  checkCuda(cudart().cudaEventCreateWithFlags(outPointer, flags), "cudaEventCreateWithFlags");
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** Milliseconds between two completed timing events. */
export function eventElapsedMs(start: Deno.PointerValue, end: Deno.PointerValue): number {
  checkCuda(cudart().cudaEventElapsedTime(outFloat, start, end), "cudaEventElapsedTime");
  return outFloat[0];
}

/** Returns device `device`'s default memory pool (used by `cudaMallocAsync`). */
export function defaultMemPool(device: number): Deno.PointerValue {
  checkCuda(
    cudart().cudaDeviceGetDefaultMemPool(outPointer, device),
    "cudaDeviceGetDefaultMemPool",
  );
  return Deno.UnsafePointer.create(outPointer[0]);
}

function isIntPoolAttribute(attribute: number): boolean {
  return attribute >= cudaMemPoolReuseFollowEventDependencies &&
    attribute <= cudaMemPoolReuseAllowInternalDependencies;
}

/** Sets a memory pool attribute (`cudaMemPoolAttr*`; the reuse flags take 0 or 1, the
 * others a uint64 byte count). */
export function memPoolSetAttribute(
  pool: Deno.PointerValue,
  attribute: number,
  value: number | bigint,
): void {
  if (isIntPoolAttribute(attribute)) outInt[0] = Number(value);
  else outU64[0] = BigInt(value);
  const buffer = isIntPoolAttribute(attribute) ? outInt : outU64;
  checkCuda(cudart().cudaMemPoolSetAttribute(pool, attribute, buffer), "cudaMemPoolSetAttribute");
}

/** Reads a memory pool attribute (`cudaMemPoolAttr*`) as a number. */
export function memPoolGetAttribute(pool: Deno.PointerValue, attribute: number): number {
  outU64[0] = 0n;
  const buffer = isIntPoolAttribute(attribute) ? outInt : outU64;
  checkCuda(cudart().cudaMemPoolGetAttribute(pool, attribute, buffer), "cudaMemPoolGetAttribute");
  return isIntPoolAttribute(attribute) ? outInt[0] : Number(outU64[0]);
}

/** Reads a graph memory attribute (`cudaGraphMemAttr*`, uint64 bytes) of device `device`. */
export function graphMemAttribute(device: number, attribute: number): number {
  outU64[0] = 0n;
  checkCuda(
    cudart().cudaDeviceGetGraphMemAttribute(device, attribute, outU64),
    "cudaDeviceGetGraphMemAttribute",
  );
  return Number(outU64[0]);
}

/** Returns `stream`'s capture status (`cudaStreamCaptureStatus*`). */
export function streamCaptureStatus(stream: Deno.PointerValue): number {
  checkCuda(cudart().cudaStreamIsCapturing(stream, outInt), "cudaStreamIsCapturing");
  return outInt[0];
}

/** Ends capture on `stream` and returns the captured graph. */
export function endCapture(stream: Deno.PointerValue): Deno.PointerValue {
  checkCuda(cudart().cudaStreamEndCapture(stream, outPointer), "cudaStreamEndCapture");
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** Instantiates `graph` into an executable graph (`cudaGraphInstantiateFlag*` flags). */
export function instantiateGraph(
  graph: Deno.PointerValue,
  flags: number | bigint = 0,
): Deno.PointerValue {
  checkCuda(
    cudart().cudaGraphInstantiate(outPointer, graph, BigInt(flags)),
    "cudaGraphInstantiate",
  );
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** Returns the address of a host buffer's first byte, for host-pointer arguments such as
 * `cudaHostRegister`'s; the caller keeps `buffer` alive while the address is used. */
export function hostAddress(buffer: ArrayBufferView<ArrayBuffer> | ArrayBuffer): bigint {
  return addressOf(Deno.UnsafePointer.of(buffer));
}
