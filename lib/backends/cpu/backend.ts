/**
 * The CPU backend: the reference. Buffers are host storage arrays; kernels are plain
 * TypeScript over typed arrays, registered by op name in the files beside this one.
 * @module
 */
import { allocStorage, type DType, type StorageArray } from "../../dtype.ts";
import { runningOp, TensorqError } from "../../errors.ts";
import type { Attrs, DeviceBuffer } from "../../graph/node.ts";
import { MAX_HOST_ELEMENTS, numel, type Shape } from "../../shape.ts";
import {
  type Backend,
  overwritableInputs,
  type Plan,
  type PlanGraph,
  refInfo,
  registerBackend,
  type ValueRef,
} from "../backend.ts";

/** A buffer on the CPU: host storage (see lib/dtype.ts for the array type of each dtype). */
export class CpuBuffer implements DeviceBuffer {
  /** Always "cpu". */
  readonly device = "cpu";
  /** Element type. */
  readonly dtype: DType;
  /** Number of elements. */
  readonly numel: number;
  /** The storage; released on dispose. */
  data: StorageArray;
  /** True after dispose(). */
  disposed = false;
  /** Contents change between runs (see DeviceBuffer.mutable). */
  mutable = false;

  /** Wraps storage (not copied). */
  constructor(dtype: DType, data: StorageArray) {
    this.dtype = dtype;
    this.numel = data.length;
    this.data = data;
  }

  /** Drops the storage reference. */
  dispose(): void {
    this.disposed = true;
  }
}

/** Shape and dtype of a kernel input or output. */
export interface ValueInfo {
  /** Shape. */
  shape: Shape;
  /** Dtype. */
  dtype: DType;
}

/** What a CPU kernel is told about the op it runs. */
export interface CpuKernelContext {
  /** Op attributes. */
  attrs: Attrs;
  /** Output shape and dtype. */
  out: ValueInfo;
  /** Input shapes and dtypes. */
  inputs: ValueInfo[];
  /**
   * Per input: the kernel may write into that input's storage and return it (a donated
   * argument that nothing else reads; see `overwritableInputs`).
   */
  overwritable?: readonly boolean[];
}

/**
 * A CPU kernel: input storages in, output storage out. Inputs must not be modified, except one
 * its context marks overwritable.
 */
export type CpuKernel = (inputs: StorageArray[], ctx: CpuKernelContext) => StorageArray;

const kernels = new Map<string, CpuKernel>();

/** Registers the CPU kernel of an op. */
export function registerCpuKernel(op: string, kernel: CpuKernel): void {
  kernels.set(op, kernel);
}

/** Looks up the CPU kernel of an op; a missing kernel is a clear error. */
export function cpuKernel(op: string): CpuKernel {
  const k = kernels.get(op);
  if (!k) {
    throw new TensorqError(`no kernel for op '${op}' on the cpu backend`, {
      op,
      kind: "unsupported",
    });
  }
  return k;
}

interface Step {
  kernel: CpuKernel;
  inputs: ValueRef[];
  ctx: CpuKernelContext;
  /** The traced op it computes (PlanNode.source). */
  source?: number;
}

class CpuPlan implements Plan {
  constructor(private readonly steps: Step[], private readonly outputs: ValueRef[]) {}

  run(leaves: DeviceBuffer[], outputs?: DeviceBuffer[]): DeviceBuffer[] {
    const values = new Array<StorageArray>(this.steps.length);
    const get = (r: ValueRef): StorageArray =>
      "leaf" in r ? (leaves[r.leaf] as CpuBuffer).data : values[r.node];
    for (let i = 0; i < this.steps.length; i++) {
      const s = this.steps[i];
      runningOp(s.source);
      values[i] = s.kernel(s.inputs.map(get), s.ctx);
    }
    return this.outputs.map((r, i) => {
      const dtype = "leaf" in r ? leaves[r.leaf].dtype : this.steps[r.node].ctx.out.dtype;
      if (!outputs) return new CpuBuffer(dtype, get(r));
      (outputs[i] as CpuBuffer).data.set(get(r) as never);
      return outputs[i];
    });
  }
}

/** `op`'s value `what` (output or input k), unless it exceeds {@link MAX_HOST_ELEMENTS}. */
function checkHostSize(op: string, what: string, shape: Shape): void {
  if (numel(shape) <= MAX_HOST_ELEMENTS) return;
  throw new TensorqError("too many elements for the CPU backend", {
    op,
    kind: "shape",
    argument: what,
    expected: `at most ${MAX_HOST_ELEMENTS} elements (use a GPU, or split the work)`,
    actual: `shape [${shape.join(", ")}]`,
  });
}

/** The CPU backend instance. */
export const cpuBackend: Backend = {
  kind: "cpu",
  unavailableReason: () => undefined,
  upload: (_device, dtype, storage) => new CpuBuffer(dtype, storage),
  download: (buffer) => {
    const b = buffer as CpuBuffer;
    if (b.disposed) {
      throw new TensorqError("the tensor was disposed", { op: "data", kind: "state" });
    }
    return b.data;
  },
  downloadAsync: (buffer) => Promise.resolve(cpuBackend.download(buffer)),
  allocate: (_device, dtype, numel) => new CpuBuffer(dtype, allocStorage(dtype, numel)),
  copy: (dst, src) => (dst as CpuBuffer).data.set((src as CpuBuffer).data as never),
  lower(graph: PlanGraph): Plan {
    const overwritable = overwritableInputs(graph);
    const steps = graph.nodes.map((n, i): Step => {
      const inputs = n.inputs.map((r) => refInfo(graph, r));
      checkHostSize(n.op, "output", n.shape);
      inputs.forEach((info, k) => checkHostSize(n.op, `input ${k}`, info.shape));
      const out = { shape: n.shape, dtype: n.dtype };
      const ctx = { attrs: n.attrs, out, inputs, overwritable: overwritable[i] };
      return { kernel: cpuKernel(n.op), inputs: n.inputs, ctx, source: n.source };
    });
    return new CpuPlan(steps, graph.outputs);
  },
};

registerBackend(cpuBackend);
