/**
 * The CUDA kernel table and PTX module loading.
 *
 * Each op's CUDA lowering is registered by op name (in the files beside this one, one per op
 * family, matching kernels/*.cu). A lowering runs once per plan, when the graph is lowered: it
 * resolves kernel functions and precomputes launch shapes, and returns the function that
 * enqueues the work at run time.
 * @module
 */
import { objectIds } from "../../object_ids.ts";
import {
  cuGetFunction,
  cuLaunch,
  cuModuleLoadPtx,
  type Dim3,
  KernelParams,
} from "../../../ffi/cuda.ts";
import type { PtxModule } from "../../../kernels/ptx_codec.ts";
import { TensorqError } from "../../errors.ts";
import type { Attrs } from "../../graph/node.ts";
import type { ValueInfo } from "../cpu/backend.ts";
import type { CudaDevice } from "./device.ts";
import type { CudaBuffer } from "./memory.ts";

/** A generated PTX module (kernels/ptx/*.ts). */
export type { PtxModule };

/** What a lowering is told about the op. */
export interface CudaKernelContext {
  /** Op attributes. */
  attrs: Attrs;
  /** Output shape and dtype. */
  out: ValueInfo;
  /** Input shapes and dtypes. */
  inputs: ValueInfo[];
  /** The device the plan runs on. */
  device: CudaDevice;
  /**
   * Per input: the op may overwrite it (a writable leaf that nothing else reads), and so can
   * return `{inPlace}` instead of writing a fresh output.
   */
  overwritable?: readonly boolean[];
}

/** Enqueues an op's work on the device's stream. `out` is allocated for the output. */
export type CudaLaunch = (out: CudaBuffer, inputs: CudaBuffer[]) => void;

/**
 * The result of lowering one op: a launch, or `{alias: i}` when the output is input `i`'s
 * memory unchanged (reshape-like views), starting `byteOffset` bytes in (a contiguous slice;
 * a multiple of 256 so that views keep the pool's alignment, which kernels rely on).
 */
export type CudaLowered =
  | CudaLaunch
  | { alias: number; byteOffset?: number }
  | CudaInPlace;

/**
 * An op that updates input `inPlace` (one its context marks overwritable): `launch` gets that
 * input's buffer as its output, which then is the op's result.
 */
export interface CudaInPlace {
  /** The input whose buffer becomes the output. */
  inPlace: number;
  /** Enqueues the update. */
  launch: CudaLaunch;
}

/** Lowers one op of a plan. */
export type CudaLowering = (ctx: CudaKernelContext) => CudaLowered;

const lowerings = new Map<string, CudaLowering>();

/** Registers the CUDA lowering of an op. */
export function registerCudaKernel(op: string, lowering: CudaLowering): void {
  lowerings.set(op, lowering);
}

/** Looks up the CUDA lowering of an op; a missing one is a clear error. */
export function cudaLowering(op: string): CudaLowering {
  const l = lowerings.get(op);
  if (!l) {
    throw new TensorqError(`no kernel for op '${op}' on the cuda backend`, {
      op,
      kind: "unsupported",
    });
  }
  return l;
}

const modules = new Map<string, Deno.PointerValue>();
/** A number per PTX module object (reading its text would inflate it). */
const moduleId = objectIds<PtxModule>();
const functions = new Map<string, Deno.PointerValue>();

/**
 * Returns kernel `name` from a PTX module, loading the module into the device's context on
 * first use (sm_90a PTX on compute capability 9.0, the portable PTX elsewhere).
 */
export function kernelFunction(
  device: CudaDevice,
  module: PtxModule,
  name: string,
): Deno.PointerValue {
  const [major, minor] = device.computeCapability;
  const sm90a = major === 9 && minor === 0;
  const moduleKey = `${device.index}:${sm90a ? "90a" : "80"}:${moduleId(module)}`;
  const fnKey = `${moduleKey}:${name}`;
  const cached = functions.get(fnKey);
  if (cached) return cached;
  let mod = modules.get(moduleKey);
  if (!mod) {
    if (major < 8) {
      throw new TensorqError(
        `compute capability ${major}.${minor} is not supported (tensorq needs 8.0 or newer)`,
        { op: "cuModuleLoadData", kind: "cuda" },
      );
    }
    device.makeCurrent();
    mod = cuModuleLoadPtx(sm90a ? module.ptxSm90a : module.ptxCompute80);
    modules.set(moduleKey, mod);
  }
  const fn = cuGetFunction(mod, name);
  functions.set(fnKey, fn);
  return fn;
}

/** Threads per block of the simple 1-D kernels. */
export const BLOCK = 256;

/** A 1-D grid covering `n` work items with `BLOCK` threads, capped for grid-stride loops. */
export function grid1d(device: CudaDevice, n: number, perThread = 1): Dim3 {
  const blocks = Math.ceil(Math.ceil(n / perThread) / BLOCK);
  return [Math.max(1, Math.min(blocks, device.smCount * 32)), 1, 1];
}

/** Launches a kernel on the device's stream with arguments set by `fill`. */
export function launch(
  device: CudaDevice,
  fn: Deno.PointerValue,
  grid: Dim3,
  block: Dim3,
  params: KernelParams,
  sharedBytes = 0,
): void {
  cuLaunch(fn, grid, block, sharedBytes, device.stream, params);
}

export { type Dim3, KernelParams };
