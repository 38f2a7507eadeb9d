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
import {
  type BuiltOp,
  builtOpRecord,
  evaluatedAt,
  runningBuiltOp,
  sameBuiltOp,
  type TensorqError,
} from "../../errors.ts";
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

/**
 * Pending checks, each with the op whose launch marked it (a record: no graph node is kept), for
 * the error's call site; undefined when ops of different lines, or a launch from outside an
 * evaluation, marked it since the last read.
 */
const pending = new Map<DeferredCheck, BuiltOp | undefined>();
let tracked: Map<DeferredCheck, BuiltOp | undefined> | undefined;

/** Adds `check` marked by `op` to `marks`: one op, or undefined when several marked it. */
function mark(
  marks: Map<DeferredCheck, BuiltOp | undefined>,
  check: DeferredCheck,
  op: BuiltOp | undefined,
): void {
  if (!marks.has(check)) marks.set(check, op);
  else if (!sameBuiltOp(marks.get(check), op)) marks.set(check, undefined);
}

/**
 * Marks a check pending: its launch was enqueued since the last read, by `op` (by default the
 * op a plan is running).
 */
export function deferCheck(check: DeferredCheck, op?: BuiltOp): void {
  const built = op ?? runningBuiltOp();
  const record = built && builtOpRecord(built);
  mark(pending, check, record);
  if (tracked) mark(tracked, check, record);
}

/**
 * Runs `enqueue` (a graph recording) and returns the checks its launches marked, each with
 * the op that marked it (for a replay to mark them again).
 */
export function trackDeferred(enqueue: () => void): [DeferredCheck, BuiltOp | undefined][] {
  const outer = tracked;
  const mine = new Map<DeferredCheck, BuiltOp | undefined>();
  tracked = mine;
  try {
    enqueue();
  } finally {
    tracked = outer;
    if (outer) { for (const [c, op] of mine) mark(outer, c, op); }
  }
  return [...mine];
}

/**
 * Raises the first error recorded by a pending check, if any. Waits for the devices' streams;
 * clears every pending check.
 */
export function raiseDeferredErrors(): void {
  if (pending.size === 0) return;
  const checks = [...pending.keys()];
  const ops = [...pending.values()];
  pending.clear();
  for (const c of checks) {
    c.device.makeCurrent();
    c.enqueueRead();
  }
  for (const device of new Set(checks.map((c) => c.device))) device.synchronize();
  let error: TensorqError | undefined;
  checks.forEach((c, i) => {
    c.device.makeCurrent();
    const e = c.takeError();
    // Reported at the line that built the op, when one op's launches marked the check.
    error ??= e && evaluatedAt(e, ops[i], "read");
  });
  if (error) throw error;
}
