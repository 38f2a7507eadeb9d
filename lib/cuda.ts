/**
 * The `tq.cuda` namespace: whether a GPU is usable, why not, memory statistics, a device-wide
 * synchronize, and a file for cuBLASLt's autotune picks.
 * @module
 */
import { CudaDevice } from "./backends/cuda/device.ts";
import { cudaUnavailableReason } from "./backends/cuda/backend.ts";
import { type CudaMemoryStats, memoryStats as stats } from "./backends/cuda/memory.ts";
import { deviceCount as count } from "../ffi/cudart.ts";
import { setLtTuningFile } from "./backends/cuda/lt_tuning.ts";

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

/**
 * Keeps the autotune's picks in the JSON file at `path`: cuBLASLt's algorithm for each product
 * of at least 2^32 flops (chosen by timing the heuristic's candidates), and the tile
 * configuration of the int8 GEMM of each w8a8 product (or cuBLASLt, where it was faster).
 * Picks found there are used without timing, where the GPU, the cuBLASLt version and the
 * heuristic's candidate (or the tile configuration) still match, and new picks are added to
 * the file as they are made (a missing file is created). Kernel choices then repeat from one
 * process to the next, and later processes skip the timing. Call it before the first products
 * are planned; `undefined` stops.
 */
export function setTuningFile(path: string | undefined): void {
  setLtTuningFile(path);
}
