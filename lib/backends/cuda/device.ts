/**
 * One CUDA device as the backend sees it: its primary context (made current through the
 * runtime API), a non-blocking stream that orders all of tensorq's work, the stream-ordered
 * memory pool, and device facts. Nothing is opened until a device is first used.
 * @module
 */
import {
  checkCuda,
  createEvent,
  createStream,
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrComputeCapabilityMinor,
  cudaDevAttrL2CacheSize,
  cudaDevAttrMaxSharedMemoryPerBlockOptin,
  cudaDevAttrMultiProcessorCount,
  cudaEventDisableTiming,
  cudaMemPoolAttrReleaseThreshold,
  cudart,
  defaultMemPool,
  deviceAttribute,
  deviceCount,
  memPoolSetAttribute,
} from "../../../ffi/cudart.ts";
import { TensorqError } from "../../errors.ts";

/** A CUDA device in use by tensorq. */
export class CudaDevice {
  /** Device ordinal. */
  readonly index: number;
  /** Compute capability `[major, minor]`. */
  readonly computeCapability: readonly [number, number];
  /** Number of streaming multiprocessors. */
  readonly smCount: number;
  /** Bytes of L2 cache. */
  readonly l2Bytes: number;
  /** Most shared memory a block may opt into (bytes; 227 KiB on Hopper, 99 KiB on sm_86/89). */
  readonly sharedOptInBytes: number;
  /** The stream all of tensorq's work on this device is ordered on. */
  readonly stream: Deno.PointerValue;
  /** The device's default memory pool (cudaMallocAsync). */
  readonly pool: Deno.PointerValue;
  readonly #event: Deno.PointerValue;

  private constructor(index: number) {
    this.index = index;
    this.makeCurrent();
    // cudaFree(null) forces the primary context to exist before any driver-API call.
    checkCuda(cudart().cudaFree(null), "cudaFree");
    this.computeCapability = [
      deviceAttribute(cudaDevAttrComputeCapabilityMajor, index),
      deviceAttribute(cudaDevAttrComputeCapabilityMinor, index),
    ];
    this.smCount = deviceAttribute(cudaDevAttrMultiProcessorCount, index);
    this.l2Bytes = deviceAttribute(cudaDevAttrL2CacheSize, index);
    this.sharedOptInBytes = deviceAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, index);
    this.stream = createStream();
    this.pool = defaultMemPool(index);
    // Keep freed memory in the pool instead of returning it to the driver at every sync:
    // repeated evaluation then never calls the driver allocator.
    memPoolSetAttribute(this.pool, cudaMemPoolAttrReleaseThreshold, 0xffff_ffff_ffff_ffffn);
    this.#event = createEvent(cudaEventDisableTiming);
  }

  static #devices = new Map<number, CudaDevice>();
  static #current = -1;

  /** The device with ordinal `index`, initialized on first use. */
  static get(index: number): CudaDevice {
    let d = CudaDevice.#devices.get(index);
    if (!d) {
      const count = deviceCount();
      if (index >= count) {
        throw new TensorqError(`no CUDA device ${index}`, {
          op: "cuda",
          kind: "device",
          expected: `an ordinal below ${count}`,
          actual: String(index),
        });
      }
      d = new CudaDevice(index);
      CudaDevice.#devices.set(index, d);
    }
    d.makeCurrent();
    return d;
  }

  /** Makes this device current on the calling thread (a no-op when it already is). */
  makeCurrent(): void {
    if (CudaDevice.#current === this.index) return;
    checkCuda(cudart().cudaSetDevice(this.index), "cudaSetDevice");
    CudaDevice.#current = this.index;
  }

  /** Blocks until all work queued on the stream is done; reports kernel faults. */
  synchronize(): void {
    checkCuda(cudart().cudaStreamSynchronize(this.stream), "cudaStreamSynchronize");
  }

  /** Waits for the stream on a worker thread, leaving the event loop free. */
  async synchronizeAsync(): Promise<void> {
    checkCuda(cudart().cudaEventRecord(this.#event, this.stream), "cudaEventRecord");
    const status = await cudart().cudaEventSynchronizeAsync(this.#event);
    checkCuda(status, "cudaEventSynchronize");
  }

  /** Devices initialized so far. */
  static initialized(): CudaDevice[] {
    return [...CudaDevice.#devices.values()];
  }
}
