/**
 * Device names: `"cpu"`, `"cuda"` (= `"cuda:0"`) and `"cuda:N"`.
 * @module
 */
import { TensorqError } from "./errors.ts";
import { describeValue } from "./shape.ts";

/** A device name as users write it. */
export type Device = "cpu" | "cuda" | `cuda:${number}`;

/** The parsed form of a device name. */
export interface DeviceSpec {
  /** Backend kind. */
  kind: "cpu" | "cuda";
  /** Device ordinal (0 for cpu). */
  index: number;
  /** Canonical name: `"cpu"` or `"cuda:N"`. */
  name: string;
}

/** Parses and canonicalizes a device name; throws a device error for anything else. */
export function parseDevice(op: string, device: unknown, argument = "device"): DeviceSpec {
  if (device === "cpu") return { kind: "cpu", index: 0, name: "cpu" };
  if (device === "cuda") return { kind: "cuda", index: 0, name: "cuda:0" };
  if (typeof device === "string") {
    const m = /^cuda:(\d+)$/.exec(device);
    if (m) return { kind: "cuda", index: Number(m[1]), name: `cuda:${Number(m[1])}` };
  }
  throw new TensorqError("unknown device", {
    op,
    kind: "device",
    argument,
    expected: `"cpu", "cuda" or "cuda:N"`,
    actual: describeValue(device),
  });
}
