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
  CUDA_ERROR_INVALID_IMAGE,
  CUDA_ERROR_NO_BINARY_FOR_GPU,
  CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
  cuGetFunction,
  cuLaunch,
  cuModuleLoadCubin,
  cuModuleLoadPtx,
  type Dim3,
  KernelParams,
} from "../../../ffi/cuda.ts";
import { cudaFailureOf, readEnv } from "../../../ffi/library.ts";
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

/** How a kernel module was loaded: its shipped sm_90a cubin, or PTX compiled by the driver. */
export type ModuleImage = "cubin" | "ptx";
const moduleImages = new Map<string, ModuleImage>();

/**
 * How `module` was loaded on `device` (undefined before its first kernel was asked for). For
 * tests and benchmarks: on compute capability 9.0 a module with a cubin should say `"cubin"`.
 */
export function moduleImage(device: CudaDevice, module: PtxModule): ModuleImage | undefined {
  for (const arch of ["90a", "80"]) {
    const image = moduleImages.get(`${device.index}:${arch}:${moduleId(module)}`);
    if (image) return image;
  }
  return undefined;
}

/**
 * `TENSORQ_CUDA_FORCE_PTX=1` loads every module from PTX even where a cubin would do: to check
 * the PTX path, or to have the installed driver's compiler build the code.
 */
function forcePtx(): boolean {
  return readEnv("TENSORQ_CUDA_FORCE_PTX") === "1";
}

/** Statuses with which a cubin load means "not for this driver or GPU": the PTX still may be. */
const CUBIN_NOT_USABLE = new Set([
  CUDA_ERROR_INVALID_IMAGE,
  CUDA_ERROR_NO_BINARY_FOR_GPU,
  CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
]);

/** Loads a module for sm_90a: its cubin where it has one that loads, else its PTX. */
function loadSm90a(module: PtxModule): [Deno.PointerValue, ModuleImage] {
  const cubin = forcePtx() ? undefined : module.cubinSm90a;
  if (cubin) {
    try {
      return [cuModuleLoadCubin(cubin), "cubin"];
    } catch (error) {
      const failure = cudaFailureOf(error);
      if (failure?.api !== "driver" || !CUBIN_NOT_USABLE.has(failure.status)) throw error;
      // An older driver than the cubin's compiler: its JIT may still take the PTX.
    }
  }
  return [cuModuleLoadPtx(module.ptxSm90a), "ptx"];
}

/**
 * Returns kernel `name` from a kernel module, loading the module into the device's context on
 * first use: on compute capability 9.0 its sm_90a cubin (or, without one that loads, its
 * sm_90a PTX), elsewhere its portable PTX.
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
    const [loaded, image]: [Deno.PointerValue, ModuleImage] = sm90a
      ? loadSm90a(module)
      : [cuModuleLoadPtx(module.ptxCompute80), "ptx"];
    mod = loaded;
    modules.set(moduleKey, mod);
    moduleImages.set(moduleKey, image);
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
