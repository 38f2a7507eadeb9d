/**
 * Device memory: {@link CudaBuffer}s allocated from the device's stream-ordered pool
 * (cudaMallocAsync / cudaFreeAsync on tensorq's stream, so freed memory is reused in stream
 * order without driver calls). A buffer is freed by `dispose()`, or by a FinalizationRegistry
 * once its tensor is garbage-collected. Views (reshape) share their parent's allocation.
 * @module
 */
import {
  checkCuda,
  cudaErrorMemoryAllocation,
  cudaGraphMemAttrReservedMemCurrent,
  cudaMemPoolAttrReservedMemCurrent,
  cudart,
  cudaStreamCaptureStatusNone,
  graphMemAttribute,
  memInfo,
  memPoolGetAttribute,
  streamCaptureStatus,
} from "../../../ffi/cudart.ts";
import { type DType, storageByteLength } from "../../dtype.ts";
import { TensorqError } from "../../errors.ts";
import type { DeviceBuffer } from "../../graph/node.ts";
import { CudaDevice } from "./device.ts";

/** One device allocation, shared by a buffer and its views. */
interface Allocation {
  device: CudaDevice;
  address: bigint;
  bytes: number;
  refs: number;
}

const stats = { liveBytes: 0, peakBytes: 0, liveBuffers: 0, allocations: 0, frees: 0 };

function release(a: Allocation): void {
  if (--a.refs > 0) return;
  stats.liveBytes -= a.bytes;
  stats.liveBuffers--;
  stats.frees++;
  if (a.address === 0n) return;
  a.device.makeCurrent();
  const status = cudart().cudaFreeAsync(Deno.UnsafePointer.create(a.address), a.device.stream);
  checkCuda(status, "cudaFreeAsync");
}

// Frees allocations whose buffers were collected without dispose().
const registry = new FinalizationRegistry<Allocation>((a) => {
  try {
    release(a);
  } catch {
    // A finalizer must not throw; the process may be shutting the device down.
  }
});

/** A tensor's memory on a CUDA device. */
export class CudaBuffer implements DeviceBuffer {
  /** Canonical device name (`cuda:N`). */
  readonly device: string;
  /** Element type. */
  readonly dtype: DType;
  /** Number of elements. */
  readonly numel: number;
  /** Device address of the first byte. */
  readonly address: bigint;
  /** Bytes of the storage (int4 packed two per byte). */
  readonly bytes: number;
  /** Contents change between runs (see DeviceBuffer.mutable). */
  mutable = false;
  readonly #allocation: Allocation;
  #disposed = false;
  #onDispose?: (() => void)[];

  private constructor(allocation: Allocation, dtype: DType, numel: number, address: bigint) {
    this.#allocation = allocation;
    this.device = `cuda:${allocation.device.index}`;
    this.dtype = dtype;
    this.numel = numel;
    this.address = address;
    this.bytes = storageByteLength(dtype, numel);
    registry.register(this, allocation, this);
  }

  /** Allocates a buffer for `numel` elements of `dtype` (contents undefined). */
  static allocate(device: CudaDevice, dtype: DType, numel: number): CudaBuffer {
    const bytes = storageByteLength(dtype, numel);
    const address = bytes === 0 ? 0n : allocateBytes(device, bytes);
    stats.liveBytes += bytes;
    stats.peakBytes = Math.max(stats.peakBytes, stats.liveBytes);
    stats.liveBuffers++;
    stats.allocations++;
    return new CudaBuffer({ device, address, bytes, refs: 1 }, dtype, numel, address);
  }

  /**
   * A buffer sharing this one's memory with another dtype/element count (reshape, bitcast),
   * starting `byteOffset` bytes in (a contiguous slice). A view of a mutable buffer is mutable.
   */
  view(dtype: DType = this.dtype, numel: number = this.numel, byteOffset = 0): CudaBuffer {
    this.#allocation.refs++;
    const v = new CudaBuffer(this.#allocation, dtype, numel, this.address + BigInt(byteOffset));
    v.mutable = this.mutable;
    return v;
  }

  /** True when `other` is a handle on the same elements of the same allocation. */
  sharesMemoryWith(other: DeviceBuffer): boolean {
    return other instanceof CudaBuffer && other.#allocation === this.#allocation &&
      other.address === this.address && other.bytes === this.bytes;
  }

  /** The device this buffer lives on. */
  get cudaDevice(): CudaDevice {
    return this.#allocation.device;
  }

  /** True after dispose(). */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** The address as a pointer value (for FFI calls). */
  get pointer(): Deno.PointerValue {
    return Deno.UnsafePointer.create(this.address);
  }

  /**
   * Runs `fn` once when this buffer is disposed (not when it is collected): caches of forms
   * made from it (a weight's codes) free them at once.
   */
  onDispose(fn: () => void): void {
    (this.#onDispose ??= []).push(fn);
  }

  /** Returns the memory to the pool (stream-ordered; idempotent). */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    registry.unregister(this);
    release(this.#allocation);
    const callbacks = this.#onDispose ?? [];
    this.#onDispose = undefined;
    for (const fn of callbacks) fn();
  }
}

function allocateBytes(device: CudaDevice, bytes: number): bigint {
  const out = new BigUint64Array(1);
  let status = cudart().cudaMallocAsync(out, BigInt(bytes), device.stream);
  // Inside a graph capture a synchronize would invalidate the capture and hide the real
  // cause: the out-of-memory error is reported as it is.
  if (
    status === cudaErrorMemoryAllocation &&
    streamCaptureStatus(device.stream) === cudaStreamCaptureStatusNone
  ) {
    // Frees still queued on the stream, and the memory CUDA graphs reserved but no graph
    // uses, may make room: wait for the one, give back the other, and retry once.
    cudart().cudaGetLastError();
    device.synchronize();
    checkCuda(cudart().cudaDeviceGraphMemTrim(device.index), "cudaDeviceGraphMemTrim");
    status = cudart().cudaMallocAsync(out, BigInt(bytes), device.stream);
  }
  if (status === cudaErrorMemoryAllocation) {
    cudart().cudaGetLastError(); // allocation failures are not sticky; clear the record
    const free = safeMemInfo();
    throw new TensorqError(
      `out of device memory on cuda:${device.index}: requested ${fmtBytes(bytes)}, ${
        fmtBytes(stats.liveBytes)
      } held by live tensors${free}; dispose() tensors you no longer need`,
      { op: "cudaMallocAsync", kind: "cuda" },
    );
  }
  checkCuda(status, "cudaMallocAsync");
  return out[0];
}

function safeMemInfo(): string {
  try {
    const { free, total } = memInfo();
    return `, ${fmtBytes(free)} free of ${fmtBytes(total)}`;
  } catch {
    return "";
  }
}

function fmtBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${n} B`;
}

/** Device memory statistics. */
export interface CudaMemoryStats {
  /** Bytes held by live tensors and plan intermediates. */
  liveBytes: number;
  /** Highest `liveBytes` so far. */
  peakBytes: number;
  /** Live buffers (allocations, views not counted). */
  liveBuffers: number;
  /** Allocations made from the pool so far. */
  allocations: number;
  /** Allocations returned to the pool so far. */
  frees: number;
  /** Bytes the pools hold from the driver (reused without driver calls). */
  poolReservedBytes: number;
  /**
   * Bytes the CUDA graph allocator holds for compiled functions' intermediates (kept between
   * launches; given back when an eager allocation would otherwise run out of memory).
   */
  graphReservedBytes: number;
}

/** Memory statistics across the devices in use. */
export function memoryStats(): CudaMemoryStats {
  let reserved = 0;
  let graphReserved = 0;
  for (const d of CudaDevice.initialized()) {
    reserved += memPoolGetAttribute(d.pool, cudaMemPoolAttrReservedMemCurrent);
    graphReserved += graphMemAttribute(d.index, cudaGraphMemAttrReservedMemCurrent);
  }
  return { ...stats, poolReservedBytes: reserved, graphReservedBytes: graphReserved };
}
