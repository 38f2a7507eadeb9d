/**
 * CUDA graphs: record the work a function enqueues on a device's stream once, then replay it
 * with one launch (about 2 µs of host time for the whole graph instead of ~3 µs per kernel).
 * Stream-ordered allocations made and freed during the recording become memory nodes of the
 * graph; everything else the work touches must stay alive while the graph exists. Each replay
 * marks the recorded launches' device-side checks pending again (deferred_checks.ts).
 * @module
 */
import {
  checkCuda,
  cudaErrorMemoryAllocation,
  cudart,
  cudaStreamCaptureModeThreadLocal,
  endCapture,
  instantiateGraph,
} from "../../../ffi/cudart.ts";
import type { ReplayablePlan } from "../backend.ts";
import type { BuiltOp } from "../../errors.ts";
import { deferCheck, type DeferredCheck, trackDeferred } from "./deferred_checks.ts";
import type { CudaDevice } from "./device.ts";

/** Records the work `enqueue` puts on `device`'s stream into an instantiated CUDA graph. */
export function captureGraph(device: CudaDevice, enqueue: () => void): ReplayablePlan {
  device.makeCurrent();
  checkCuda(
    cudart().cudaStreamBeginCapture(device.stream, cudaStreamCaptureModeThreadLocal),
    "cudaStreamBeginCapture",
  );
  let graph: Deno.PointerValue;
  let checks: [DeferredCheck, BuiltOp | undefined][];
  try {
    checks = trackDeferred(enqueue);
  } catch (e) {
    // End the capture so the stream is usable again, then report the original error.
    try {
      const g = endCapture(device.stream);
      // Best effort, unchecked: the enqueue's own error is the one to report.
      if (g) cudart().cudaGraphDestroy(g);
    } catch {
      // the capture was already invalidated
    }
    throw e;
  }
  graph = endCapture(device.stream);
  let exec: Deno.PointerValue;
  try {
    exec = instantiateGraph(graph);
  } finally {
    // The executable keeps what it needs: the captured graph goes, instantiated or not.
    checkCuda(cudart().cudaGraphDestroy(graph), "cudaGraphDestroy");
    graph = null;
  }
  let disposed = false;
  return {
    replay() {
      device.makeCurrent();
      let status = cudart().cudaGraphLaunch(exec, device.stream);
      if (status === cudaErrorMemoryAllocation) {
        // The graph's memory nodes take physical memory of their own, which the stream-ordered
        // pool may be holding as freed but kept memory (CudaDevice keeps it for reuse): give
        // that back to the driver and launch once more.
        cudart().cudaGetLastError(); // clears the failed launch's record (not sticky): unchecked
        device.synchronize();
        checkCuda(cudart().cudaMemPoolTrimTo(device.pool, 0n), "cudaMemPoolTrimTo");
        status = cudart().cudaGraphLaunch(exec, device.stream);
      }
      checkCuda(status, "cudaGraphLaunch");
      // The recorded launches' device-side checks (gather indices, computed scales).
      for (const [c, op] of checks) deferCheck(c, op);
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      checkCuda(cudart().cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
    },
  };
}
