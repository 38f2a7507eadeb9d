/**
 * Graph nodes: the unit of the lazy graph. A tensor is a handle on a node; a node records the
 * op that produces it, its inputs, attributes, shape, dtype, device and the user's call site.
 * Once evaluated, a node keeps its buffer ("realized") and every consumer sees a constant, but
 * it still remembers which op produced it (the Q/DQ fusion pass reads that).
 * @module
 */
import type { DType } from "../dtype.ts";
import { callerFromStack, type CallSite } from "../errors.ts";
import type { Shape } from "../shape.ts";

/** JSON-serializable op attributes (they form part of a plan's structural key). */
export type Attrs = Readonly<Record<string, unknown>>;

/** A backend-owned buffer holding a realized value. */
export interface DeviceBuffer {
  /** Canonical device name of the buffer. */
  readonly device: string;
  /** Element type. */
  readonly dtype: DType;
  /** Number of elements. */
  readonly numel: number;
  /** Frees the memory now (idempotent). */
  dispose(): void;
  /** True after dispose(). */
  readonly disposed: boolean;
  /**
   * True for buffers whose contents change between runs (the fixed input buffers of a
   * compiled function): kernels must not cache anything derived from them.
   */
  mutable?: boolean;
  /** Another handle on the same memory (backends with views; freed on its own dispose). */
  view?(): DeviceBuffer;
  /** True when `other` is a handle on the same elements of the same memory. */
  sharesMemoryWith?(other: DeviceBuffer): boolean;
}

let nextId = 1;

/** Call sites parsed from traces: nodes made in one forward share one trace and one parse. */
const parsedTraces = new WeakMap<object, CallSite | null>();

function siteOfTrace(trace: { stack?: string } | undefined): CallSite | null {
  if (!trace) return null;
  let site = parsedTraces.get(trace);
  if (site === undefined) {
    site = callerFromStack(trace.stack) ?? null;
    parsedTraces.set(trace, site);
  }
  return site;
}

/** One node of the lazy graph. */
export class Node {
  /** Unique id, increasing in creation order. */
  readonly id: number = nextId++;
  /** The op that produces this node ("constant" for leaves created from data). */
  readonly op: string;
  /** Inputs; emptied once the node is realized so the upstream graph can be collected. */
  inputs: readonly Node[];
  /** Op attributes. */
  readonly attrs: Attrs;
  /** Output shape. */
  readonly shape: Shape;
  /** Output dtype. */
  readonly dtype: DType;
  /** Canonical device name. */
  readonly device: string;
  /** The realized value, once evaluated (or from creation for constants). */
  buffer?: DeviceBuffer;
  /** True for the inputs of a function traced by `compile()`: they have no value. */
  placeholder = false;
  /**
   * True for a placeholder whose argument is donated (`compile`'s `donate`): a plan may
   * overwrite its buffer when nothing else reads it.
   */
  donated = false;
  /**
   * Set while the buffer is lent from a compiled function's fixed buffer, which that
   * function's next call overwrites: gives the node memory of its own. The function calls it
   * before overwriting a result still held, and a recording calls it before it captures the
   * address of a value it reads.
   */
  detach?: () => void;
  /** Error object holding the stack of the user call that created the node (parsed lazily). */
  private readonly trace?: { stack?: string };
  private site?: CallSite | null;

  /** Creates a node; `trace` is an object whose `stack` was captured at the user's call. */
  constructor(
    op: string,
    inputs: readonly Node[],
    attrs: Attrs,
    shape: Shape,
    dtype: DType,
    device: string,
    trace?: { stack?: string },
  ) {
    this.op = op;
    this.inputs = inputs;
    this.attrs = attrs;
    this.shape = shape;
    this.dtype = dtype;
    this.device = device;
    this.trace = trace;
  }

  /** The user's call site that created this node, if known. */
  get callSite(): CallSite | undefined {
    if (this.site === undefined) this.site = siteOfTrace(this.trace);
    return this.site ?? undefined;
  }

  /** True once the node holds a buffer. */
  get realized(): boolean {
    return this.buffer !== undefined && !this.buffer.disposed;
  }

  /** Stores the evaluated value and drops the link to the inputs. */
  realize(buffer: DeviceBuffer): void {
    this.buffer = buffer;
    this.inputs = [];
  }
}
