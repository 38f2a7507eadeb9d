/**
 * Checks that kernels make on the device and the host raises later. A kernel that finds bad
 * data (an index out of range, a scale that is not positive) records it in a small device flag
 * and carries on; the launch marks its check pending, and the backend calls
 * {@link raiseDeferredErrors} when it next reads results back to the host (a synchronizing
 * read anyway), so a check costs no synchronization per launch. A CUDA graph replays launches
 * without their host code: {@link trackDeferred} collects the checks a recording's launches
 * marked, for each replay to mark again.
 * @module
 */
import type { TensorqError } from "../../errors.ts";
import type { CudaDevice } from "./device.ts";

/** One op's device flag. */
export interface DeferredCheck {
  /** The device whose stream the flag is written on. */
  readonly device: CudaDevice;
  /** Enqueues the copy of the flag to host memory on the device's stream. */
  enqueueRead(): void;
  /**
   * After the devices synchronized: the error the flag holds, if any. Resets the flag (on the
   * stream) so that the next launch can record again.
   */
  takeError(): TensorqError | undefined;
}

const pending = new Set<DeferredCheck>();
let tracked: Set<DeferredCheck> | undefined;

/** Marks a check pending: its launch was enqueued since the last read. */
export function deferCheck(check: DeferredCheck): void {
  pending.add(check);
  tracked?.add(check);
}

/** Runs `enqueue` (a graph recording) and returns the checks its launches marked. */
export function trackDeferred(enqueue: () => void): DeferredCheck[] {
  const outer = tracked;
  const mine = new Set<DeferredCheck>();
  tracked = mine;
  try {
    enqueue();
  } finally {
    tracked = outer;
    for (const c of mine) outer?.add(c);
  }
  return [...mine];
}

/**
 * Raises the first error recorded by a pending check, if any. Waits for the devices' streams;
 * clears every pending check.
 */
export function raiseDeferredErrors(): void {
  if (pending.size === 0) return;
  const checks = [...pending];
  pending.clear();
  for (const c of checks) {
    c.device.makeCurrent();
    c.enqueueRead();
  }
  for (const device of new Set(checks.map((c) => c.device))) device.synchronize();
  let error: TensorqError | undefined;
  for (const c of checks) {
    c.device.makeCurrent();
    const e = c.takeError();
    error ??= e;
  }
  if (error) throw error;
}
