/**
 * The CUDA backend: buffers in device memory, plans that enqueue PTX kernels and cuBLASLt
 * calls on one stream per device, host copies that wait without blocking the event loop.
 * @module
 */
import {
  checkCuda,
  copyToDeviceAsync,
  copyToHostAsync,
  cudaMemcpyDeviceToDevice,
  cudart,
  deviceCount,
} from "../../../ffi/cudart.ts";
import { cuda as driver } from "../../../ffi/cuda.ts";
import { type DType, fromStorageBytes, type StorageArray, toStorageBytes } from "../../dtype.ts";
import { parseDevice } from "../../device.ts";
import type { DeviceBuffer } from "../../graph/node.ts";
import { messageWithoutCallSite, runningOp } from "../../errors.ts";
import { numel } from "../../shape.ts";
import {
  type Backend,
  overwritableInputs,
  type Plan,
  type PlanGraph,
  refInfo,
  registerBackend,
  type ReplayablePlan,
  type ValueRef,
} from "../backend.ts";
import { CudaDevice } from "./device.ts";
import { type CudaLowered, cudaLowering } from "./kernels.ts";
import { CudaBuffer } from "./memory.ts";
import { captureGraph } from "./graph.ts";
import { raiseDeferredErrors } from "./deferred_checks.ts";

let availability: string | undefined | null = null;

/** Why CUDA cannot be used here (undefined when it can); probed once. */
export function cudaUnavailableReason(): string | undefined {
  if (availability !== null) return availability;
  try {
    driver();
    const n = deviceCount();
    availability = n > 0 ? undefined : "no CUDA device is visible";
  } catch (e) {
    // Without the first caller's location: later errors embed this reason at their own.
    availability = messageWithoutCallSite(e);
  }
  return availability;
}

/** Forgets the cached availability probe (after changing library paths in tests). */
export function resetCudaAvailability(): void {
  availability = null;
}

function deviceOf(name: string): CudaDevice {
  return CudaDevice.get(parseDevice("cuda", name).index);
}

interface Step {
  lowered: CudaLowered;
  inputs: ValueRef[];
  dtype: DType;
  numel: number;
  /** The traced op it computes (PlanNode.source). */
  source?: number;
}

class CudaPlan implements Plan {
  constructor(
    private readonly device: CudaDevice,
    private readonly steps: Step[],
    private readonly outputs: ValueRef[],
    // For each step, the intermediates whose last use it is.
    private readonly freeAfter: number[][],
  ) {}

  updatedLeaves(): (number | undefined)[] {
    return this.outputs.map((r) => {
      if (!("node" in r)) return undefined;
      const s = this.steps[r.node];
      if (typeof s.lowered === "function" || !("inPlace" in s.lowered)) return undefined;
      const source = s.inputs[s.lowered.inPlace];
      return "leaf" in source ? source.leaf : undefined;
    });
  }

  run(leaves: DeviceBuffer[], outputs?: DeviceBuffer[]): DeviceBuffer[] {
    this.device.makeCurrent();
    const values = new Array<CudaBuffer | undefined>(this.steps.length);
    const get = (r: ValueRef): CudaBuffer =>
      "leaf" in r ? (leaves[r.leaf] as CudaBuffer) : values[r.node]!;
    // Steps whose result goes straight into a caller-given output buffer.
    const target = new Map<number, CudaBuffer>();
    this.outputs.forEach((r, i) => {
      if (outputs && "node" in r && !target.has(r.node)) {
        target.set(r.node, outputs[i] as CudaBuffer);
      }
    });
    try {
      for (let i = 0; i < this.steps.length; i++) {
        const s = this.steps[i];
        runningOp(s.source);
        const inputs = s.inputs.map(get);
        const given = target.get(i);
        if (typeof s.lowered === "function") {
          const out = given ? given.view() : CudaBuffer.allocate(this.device, s.dtype, s.numel);
          values[i] = out;
          s.lowered(out, inputs);
        } else {
          // A view of an input: unchanged (alias) or updated by the launch (in place).
          const l = s.lowered;
          const out = "inPlace" in l
            ? inputs[l.inPlace].view(s.dtype, s.numel)
            : inputs[l.alias].view(s.dtype, s.numel, l.byteOffset);
          if ("inPlace" in l) l.launch(out, inputs);
          values[i] = out;
          // A caller's output buffer that is that memory itself needs no copy.
          if (given && !given.sharesMemoryWith(out)) {
            copyBuffer(given, out);
            out.dispose();
            values[i] = given.view();
          }
        }
        for (const j of this.freeAfter[i]) {
          values[j]!.dispose();
          values[j] = undefined;
        }
      }
      return this.outputs.map((
        r,
      ) => ("leaf" in r ? (leaves[r.leaf] as CudaBuffer).view() : values[r.node]!));
    } catch (e) {
      for (const v of values) v?.dispose();
      throw e;
    }
  }
}

/** Copies `src` into `dst` on the device's stream (same device; sizes must match). */
export function copyBuffer(dst: CudaBuffer, src: CudaBuffer): void {
  if (dst.bytes === 0) return;
  const d = dst.cudaDevice;
  checkCuda(
    cudart().cudaMemcpyAsync(
      dst.pointer,
      src.pointer,
      BigInt(dst.bytes),
      cudaMemcpyDeviceToDevice,
      d.stream,
    ),
    "cudaMemcpyAsync",
  );
}

/** The CUDA backend instance. */
export const cudaBackend: Backend = {
  kind: "cuda",
  unavailableReason: cudaUnavailableReason,

  upload(device: string, dtype: DType, storage: StorageArray): DeviceBuffer {
    const d = deviceOf(device);
    const buf = CudaBuffer.allocate(d, dtype, storage.length);
    if (buf.bytes > 0) {
      const bytes = toStorageBytes(dtype, storage) as Uint8Array<ArrayBuffer>;
      copyToDeviceAsync(buf.pointer, bytes, d.stream, buf.bytes);
    }
    return buf;
  },

  download(buffer: DeviceBuffer): StorageArray {
    const b = buffer as CudaBuffer;
    const d = b.cudaDevice;
    d.makeCurrent();
    const host = new Uint8Array(b.bytes);
    if (b.bytes > 0) copyToHostAsync(host, b.pointer, d.stream, b.bytes);
    d.synchronize();
    raiseDeferredErrors();
    return fromStorageBytes(b.dtype, host, b.numel);
  },

  async downloadAsync(buffer: DeviceBuffer): Promise<StorageArray> {
    const b = buffer as CudaBuffer;
    const d = b.cudaDevice;
    d.makeCurrent();
    const host = new Uint8Array(b.bytes);
    if (b.bytes > 0) copyToHostAsync(host, b.pointer, d.stream, b.bytes);
    await d.synchronizeAsync();
    raiseDeferredErrors();
    return fromStorageBytes(b.dtype, host, b.numel);
  },

  allocate(device: string, dtype: DType, n: number): DeviceBuffer {
    return CudaBuffer.allocate(deviceOf(device), dtype, n);
  },

  copy(dst: DeviceBuffer, src: DeviceBuffer): void {
    copyBuffer(dst as CudaBuffer, src as CudaBuffer);
  },

  record(plan: Plan, leaves: DeviceBuffer[], outputs: DeviceBuffer[]): ReplayablePlan {
    const device = (outputs[0] ?? leaves[0]) as CudaBuffer;
    return captureGraph(device.cudaDevice, () => plan.run(leaves, outputs));
  },

  lower(graph: PlanGraph): Plan {
    const device = deviceOf(graph.device);
    const overwritable = overwritableInputs(graph);
    const steps = graph.nodes.map((n, i): Step => ({
      lowered: cudaLowering(n.op)({
        attrs: n.attrs,
        out: { shape: n.shape, dtype: n.dtype },
        inputs: n.inputs.map((r) => refInfo(graph, r)),
        device,
        overwritable: overwritable[i],
      }),
      inputs: n.inputs,
      dtype: n.dtype,
      numel: numel(n.shape),
      source: n.source,
    }));
    const lastUse = steps.map(() => -1);
    steps.forEach((s, i) => s.inputs.forEach((r) => "node" in r && (lastUse[r.node] = i)));
    const isOutput = new Set(graph.outputs.flatMap((r) => ("node" in r ? [r.node] : [])));
    const freeAfter: number[][] = steps.map(() => []);
    lastUse.forEach((at, j) => {
      if (isOutput.has(j)) return;
      // An unused intermediate is freed right after it is made.
      freeAfter[at < 0 ? j : at].push(j);
    });
    return new CudaPlan(device, steps, graph.outputs, freeAfter);
  },
};

registerBackend(cudaBackend);
