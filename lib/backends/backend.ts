/**
 * The backend interface: what the runtime needs from a device. A backend stores buffers,
 * moves them to and from the host, lowers a structural graph into a plan once (plans are
 * cached by the runtime), and runs plans.
 * @module
 */
import type { DType, StorageArray } from "../dtype.ts";
import type { Attrs, DeviceBuffer } from "../graph/node.ts";
import type { Shape } from "../shape.ts";

/** A reference to a value inside a {@link PlanGraph}: a leaf (input) or an earlier node. */
export type ValueRef = { leaf: number } | { node: number };

/** One op in a structural graph. */
export interface PlanNode {
  /** Op name. */
  op: string;
  /** Op attributes. */
  attrs: Attrs;
  /** Output shape. */
  shape: Shape;
  /** Output dtype. */
  dtype: DType;
  /** Inputs. */
  inputs: ValueRef[];
  /**
   * The traced op this node computes (its index in graph order before any pass), for errors
   * raised while it runs; absent on nodes a pass made of several ops.
   */
  source?: number;
}

/** A leaf of a structural graph: a realized value fed to the plan at run time. */
export interface PlanLeaf {
  /** Shape of the value. */
  shape: Shape;
  /** Dtype of the value. */
  dtype: DType;
  /** The op that produced the value before it was realized ("constant" for data). */
  producer: string;
  /**
   * The plan may overwrite this value's buffer (a donated argument of a compiled function):
   * an op that is its only reader can update it in place instead of copying it.
   */
  writable?: boolean;
}

/**
 * A graph with no data: ops in topological order over numbered leaves. Passes rewrite it and
 * backends lower it; it is the unit of plan caching.
 */
export interface PlanGraph {
  /** Canonical device name. */
  device: string;
  /** Inputs of the graph. */
  leaves: PlanLeaf[];
  /** Ops in topological order. */
  nodes: PlanNode[];
  /** The values the caller wants back. */
  outputs: ValueRef[];
}

/** A backend's executable form of a {@link PlanGraph}. */
export interface Plan {
  /**
   * Runs the plan on leaf buffers and returns the output buffers. With `outputs`, results are
   * written into those buffers (one per output, of the right dtype and size) and returned.
   */
  run(leaves: DeviceBuffer[], outputs?: DeviceBuffer[]): DeviceBuffer[];
  /**
   * For each output, the writable leaf whose buffer the plan updates in place to produce it
   * (undefined for the others): a caller may pass that leaf's buffer as the output buffer.
   */
  updatedLeaves?(): (number | undefined)[];
}

/** A recorded run of a plan that can be replayed cheaply (a CUDA graph). */
export interface ReplayablePlan {
  /** Replays the recorded work (same buffers as when recorded). */
  replay(): void;
  /** Frees the recording. */
  dispose(): void;
}

/** A device backend. */
export interface Backend {
  /** "cpu" or "cuda". */
  readonly kind: "cpu" | "cuda";
  /** Why the backend cannot run, or undefined when it can. */
  unavailableReason(): string | undefined;
  /** Copies host storage into a new buffer on `device`. */
  upload(device: string, dtype: DType, storage: StorageArray): DeviceBuffer;
  /** Copies a buffer back to host storage (blocking). */
  download(buffer: DeviceBuffer): StorageArray;
  /** Copies a buffer back to host storage without blocking the event loop. */
  downloadAsync(buffer: DeviceBuffer): Promise<StorageArray>;
  /** Lowers a structural graph into a plan. */
  lower(graph: PlanGraph): Plan;
  /** Allocates an uninitialized buffer. */
  allocate(device: string, dtype: DType, numel: number): DeviceBuffer;
  /** Copies `src` into `dst` (same device, dtype and size), ordered with other work. */
  copy(dst: DeviceBuffer, src: DeviceBuffer): void;
  /**
   * Records one run of `plan` on fixed buffers for cheap replay, when the backend can (CUDA
   * graphs); undefined otherwise.
   */
  record?(plan: Plan, leaves: DeviceBuffer[], outputs: DeviceBuffer[]): ReplayablePlan;
}

const backends = new Map<string, Backend>();

/** Registers a backend for a device kind. */
export function registerBackend(backend: Backend): void {
  backends.set(backend.kind, backend);
}

/** The backend for a device kind, if one is registered. */
export function backendFor(kind: "cpu" | "cuda"): Backend | undefined {
  return backends.get(kind);
}

/**
 * Per node, per input: whether the op may overwrite that input's buffer. It may when the input
 * is a writable leaf (a donated argument of a compiled function) that this one input reads and
 * nothing else does (no other input, not an output).
 */
export function overwritableInputs(graph: PlanGraph): boolean[][] {
  const reads = graph.leaves.map(() => 0);
  const count = (r: ValueRef) => {
    if ("leaf" in r) reads[r.leaf]++;
  };
  graph.nodes.forEach((n) => n.inputs.forEach(count));
  graph.outputs.forEach(count);
  return graph.nodes.map((n) =>
    n.inputs.map((r) =>
      "leaf" in r && graph.leaves[r.leaf].writable === true && reads[r.leaf] === 1
    )
  );
}

/** Output shape and dtype of one input of a plan node, resolved against the graph. */
export function refInfo(graph: PlanGraph, ref: ValueRef): { shape: Shape; dtype: DType } {
  return "leaf" in ref ? graph.leaves[ref.leaf] : graph.nodes[ref.node];
}
