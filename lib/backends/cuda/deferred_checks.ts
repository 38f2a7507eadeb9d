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
import { copyToHostAsync } from "../../../ffi/cudart.ts";
import { memsetAsync } from "./util.ts";

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

/**
 * The check of a 16-byte device flag at `address`: an int64 position, negative while nothing
 * is recorded, then 8 bytes of detail (a raw index, a float32 value). `describe` turns a
 * recorded flag into the error; taking it resets the position to -1 (all ones).
 */
export function flagCheck(
  device: CudaDevice,
  address: bigint,
  describe: (position: bigint, detail: DataView) => TensorqError,
): DeferredCheck {
  const host = new ArrayBuffer(16);
  const view = new DataView(host);
  return {
    device,
    enqueueRead() {
      copyToHostAsync(new Uint8Array(host), Deno.UnsafePointer.create(address), device.stream, 16);
    },
    takeError() {
      const position = view.getBigInt64(0, true);
      if (position < 0n) return undefined;
      memsetAsync(device, address, 0xff, 8);
      return describe(position, new DataView(host, 8, 8));
    },
  };
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
