/**
 * The `tq.cuda` namespace: whether a GPU is usable, why not, memory statistics, and a
 * device-wide synchronize.
 * @module
 */
import { CudaDevice } from "./backends/cuda/device.ts";
import { cudaUnavailableReason } from "./backends/cuda/backend.ts";
import { type CudaMemoryStats, memoryStats as stats } from "./backends/cuda/memory.ts";
import { deviceCount as count } from "../ffi/cudart.ts";

export type { CudaMemoryStats };

/** True when a CUDA device can be used (libraries found, at least one device). */
export function isAvailable(): boolean {
  return cudaUnavailableReason() === undefined;
}

/** Why CUDA cannot be used, or undefined when it can. */
export function unavailableReason(): string | undefined {
  return cudaUnavailableReason();
}

/** Number of visible CUDA devices (0 when CUDA is unavailable). */
export function deviceCount(): number {
  return isAvailable() ? count() : 0;
}

/** Memory held by tensors and pools on the devices in use. */
export function memoryStats(): CudaMemoryStats {
  return stats();
}

/** Waits for all queued work on every device in use (surfaces asynchronous kernel faults). */
export function synchronize(): void {
  for (const d of CudaDevice.initialized()) d.synchronize();
}
