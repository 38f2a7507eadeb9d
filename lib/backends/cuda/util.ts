/**
 * Helpers shared by the CUDA lowerings: float dtype names and scale kinds, activation codes,
 * argument checks, memsets, kernel lookups, dynamic shared memory opt-in, the GEMV kernels'
 * block layout and cuBLASLt problem setup.
 * @module
 */
import {
  CUBLAS_STATUS_ARCH_MISMATCH,
  CUBLAS_STATUS_INVALID_VALUE,
  CUBLAS_STATUS_NOT_SUPPORTED,
  CUBLASLT_EPILOGUE_BIAS,
  CUBLASLT_EPILOGUE_DEFAULT,
  CUBLASLT_EPILOGUE_GELU,
  CUBLASLT_EPILOGUE_GELU_BIAS,
  CUBLASLT_EPILOGUE_RELU,
  CUBLASLT_EPILOGUE_RELU_BIAS,
  CUDA_R_16BF,
  CUDA_R_16F,
  CUDA_R_32F,
} from "../../../ffi/cublaslt.ts";
import { checkCu, cuda } from "../../../ffi/cuda.ts";
import { addressOf } from "../../../ffi/library.ts";
import { checkCuda, cudart } from "../../../ffi/cudart.ts";
import type { DType } from "../../dtype.ts";
import { TensorqError } from "../../errors.ts";
import { type LtMatmulPlan, ltMatmulPlan, type LtMatmulSpec } from "./cublaslt.ts";
import type { CudaDevice } from "./device.ts";
import { type CudaLaunch, kernelFunction, type PtxModule } from "./kernels.ts";
import type { CudaBuffer } from "./memory.ts";

// ---------------------------------------------------------------------------------------
// Dtypes and codes

/** The float dtypes the float kernels take. */
export type FloatDType = "float32" | "float16" | "bfloat16";

/** Kernel name suffixes of the float dtypes. */
export const FLOAT_NAME: Readonly<Record<FloatDType, string>> = {
  float32: "f32",
  float16: "f16",
  bfloat16: "bf16",
};
/** The scale kind (FLOAT_KIND) of `dtype`, or undefined when it is not a float dtype. */
export function floatKindOf(dtype: DType | undefined): number | undefined {
  return dtype === "float32" || dtype === "float16" || dtype === "bfloat16"
    ? FLOAT_KIND[dtype]
    : undefined;
}

/** Scale kinds the kernels take for float inputs (scales, weights). */
export const FLOAT_KIND: Readonly<Record<FloatDType, number>> = {
  float32: 0,
  float16: 1,
  bfloat16: 2,
};
/** cuBLASLt types of the float dtypes. */
export const LT_TYPE: Readonly<Record<FloatDType, number>> = {
  float32: CUDA_R_32F,
  float16: CUDA_R_16F,
  bfloat16: CUDA_R_16BF,
};

/** Activation codes of the fused linear kernels. */
export const ACTIVATION: Readonly<Record<string, number>> = {
  none: 0,
  relu: 1,
  gelu: 2,
  gelu_tanh: 3,
};
/** Activation code: none. */
export const ACT_NONE = 0;
/** Activation code: relu. */
export const ACT_RELU = 1;
/** Activation code: the tanh form of GELU. */
export const ACT_GELU_TANH = 3;

/**
 * cuBLASLt's epilogue computing a bias (when `hasBias`) and the activation `act` as the
 * reference does for `dtype` outputs, or undefined. Its GELU is the tanh form, with an
 * approximation error that only 16-bit outputs hide.
 */
export function ltEpilogueFor(hasBias: boolean, act: number, dtype: string): number | undefined {
  switch (act) {
    case ACT_NONE:
      return hasBias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    case ACT_RELU:
      return hasBias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
    case ACT_GELU_TANH:
      if (dtype !== "float16" && dtype !== "bfloat16") return undefined;
      return hasBias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    default:
      return undefined;
  }
}

/** Largest int32 value: sizes the kernels index with `int`. */
export const INT32_MAX: number = 2 ** 31 - 1;

/** The lowering of an op whose output is empty: nothing to launch. */
export const NO_LAUNCH: CudaLaunch = () => {};

/** `dtype` as a float dtype, or a dtype error of `op` naming `argument`. */
export function floatDType(op: string, argument: string, dtype: DType): FloatDType {
  if (dtype === "float32" || dtype === "float16" || dtype === "bfloat16") return dtype;
  throw new TensorqError("expected a float dtype", {
    op,
    kind: "dtype",
    argument,
    expected: "float32, float16 or bfloat16",
    actual: dtype,
  });
}

/** The kernels' code of activation `activation`, or an error of `op`. */
export function activationCode(op: string, activation: string): number {
  const act = ACTIVATION[activation];
  if (act === undefined) {
    throw new TensorqError("unknown activation", {
      op,
      kind: "unsupported",
      argument: "activation",
      expected: "none, relu, gelu or gelu_tanh",
      actual: activation,
    });
  }
  return act;
}

/** Throws when size `what` (named in the message) exceeds what `op`'s kernels index. */
export function checkInt32(op: string, what: string, v: number): void {
  if (v > INT32_MAX) {
    throw new TensorqError(`${what} too large for the ${op} kernels`, {
      op,
      kind: "unsupported",
      expected: `at most ${INT32_MAX}`,
      actual: String(v),
    });
  }
}

/** `n` rounded up to a multiple of `to`. */
export function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** log2(v) when v is a power of two (1, 2, 4, ...), else -1. */
export function log2Exact(v: number): number {
  if (!Number.isInteger(v) || v < 1) return -1;
  const l = Math.round(Math.log2(v));
  return 2 ** l === v ? l : -1;
}

/** The smallest power of two ≥ `n` (1 for n ≤ 1). */
export function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

// ---------------------------------------------------------------------------------------
// Memory and kernels

/** Sets `bytes` bytes at device address `address` to `value`, on the device's stream. */
export function memsetAsync(
  device: CudaDevice,
  address: bigint,
  value: number,
  bytes: number,
): void {
  const status = cudart().cudaMemsetAsync(
    Deno.UnsafePointer.create(address),
    value,
    BigInt(bytes),
    device.stream,
  );
  checkCuda(status, "cudaMemsetAsync");
}

/** Zeroes `bytes` bytes at device address `address` (nothing for 0), on the device's stream. */
export function memsetZero(device: CudaDevice, address: bigint, bytes: number): void {
  if (bytes === 0) return;
  memsetAsync(device, address, 0, bytes);
}

/** Looks up kernels of one PTX module by name (see {@link kernelFunction}). */
export function moduleKernels(
  module: PtxModule,
): (device: CudaDevice, name: string) => Deno.PointerValue {
  return (device, name) => kernelFunction(device, module, name);
}

/** `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`. */
const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
/** Dynamic shared memory limits already raised, per kernel function. */
const sharedOptIn = new Map<bigint, number>();

/**
 * Raises `kernel`'s dynamic shared memory limit to `bytes` unless it allows them already: it
 * starts at `withoutOptIn` bytes (what the caller's kernel may use without opting in).
 */
export function allowSharedBytes(
  kernel: Deno.PointerValue,
  bytes: number,
  withoutOptIn: number,
): void {
  const key = addressOf(kernel);
  if ((sharedOptIn.get(key) ?? withoutOptIn) >= bytes) return;
  checkCu(
    cuda().cuFuncSetAttribute(kernel, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes),
    "cuFuncSetAttribute",
  );
  sharedOptIn.set(key, bytes);
}

/** `CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT`. */
const CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9;
/** Kernels whose preferred shared-memory carveout was raised to the maximum. */
const carveoutSet = new Set<bigint>();

/**
 * Asks for the largest shared-memory carveout for `kernel` (once per function), for kernels
 * whose blocks per SM are limited by shared memory rather than registers.
 */
export function preferSharedMemory(kernel: Deno.PointerValue): void {
  const key = addressOf(kernel);
  if (carveoutSet.has(key)) return;
  checkCu(
    cuda().cuFuncSetAttribute(kernel, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100),
    "cuFuncSetAttribute",
  );
  carveoutSet.add(key);
}

// ---------------------------------------------------------------------------------------
// GEMV kernels (kernels/gemv.cuh)

/** Warps per GEMV block (GEMV_WARPS in kernels/gemv.cuh). */
export const GEMV_WARPS = 4;
/** Output channels per GEMV warp (GEMV_ROWS in kernels/gemv.cuh). */
export const GEMV_ROWS = 4;
/** Most dynamic shared memory a GEMV stages x in (opted in above the default 48 KiB). */
export const GEMV_SHARED_BYTES: number = 64 * 1024;

/** Launch shape of the GEMV kernels of kernels/gemv.cuh for one problem. */
export interface GemvShape {
  /** Rows the kernel is compiled for (M rounded up to 1, 2, 4, 8 or 16). */
  rowsCompiled: number;
  /** Columns of x staged in shared memory at a time (a multiple of 32 · elements per chunk). */
  tileK: number;
  /** Warps of a block that split K for one group of output channels (1, 2 or 4). */
  splitK: number;
  /** Blocks. */
  blocks: number;
  /** Dynamic shared memory bytes. */
  sharedBytes: number;
}

/**
 * The launch shape of the gemv.cuh kernels (float Linear and float32-x weight-only) for
 * `m` ≤ 16 rows, `n` outputs, `k` inputs and `elems` elements (or codes) per 16-byte chunk on
 * a GPU of `sms` multiprocessors.
 */
export function gemvShape(m: number, n: number, k: number, elems: number, sms: number): GemvShape {
  const rowsCompiled = m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : m <= 8 ? 8 : 16;
  const step = 32 * elems;
  const maxTile = Math.max(
    step,
    Math.floor(GEMV_SHARED_BYTES / (4 * rowsCompiled) / step) * step,
  );
  const tileK = Math.min(maxTile, roundUp(Math.max(k, 1), step));
  const groups = Math.ceil(n / GEMV_ROWS);
  // Warp steps of one tile: the warps of a group split each tile's steps.
  const steps = Math.ceil(Math.min(k, tileK) / step);
  // Split K over the warps of a block while there are too few blocks to fill the GPU twice
  // and every warp keeps at least one step: small layers get more, shorter blocks.
  let splitK = 1;
  while (
    splitK < GEMV_WARPS && Math.ceil(groups / (GEMV_WARPS / splitK)) < 2 * sms &&
    steps >= 2 * splitK
  ) splitK *= 2;
  return {
    rowsCompiled,
    tileK,
    splitK,
    blocks: Math.ceil(groups / (GEMV_WARPS / splitK)),
    sharedBytes: rowsCompiled * tileK * 4,
  };
}

// ---------------------------------------------------------------------------------------
// cuBLASLt

/** Operand types of a cuBLASLt product. */
export interface LtTypes {
  /** Type of A and B. */
  a: number;
  /** Type of C and D. */
  d: number;
  /** Compute type. */
  compute: number;
  /** Scale type. */
  scale: number;
}

/** The "TN" product of row-major `[rows, k]` activations with row-major `[n, k]` weights. */
export function tnSpec(n: number, rows: number, k: number, types: LtTypes): LtMatmulSpec {
  return {
    transA: true,
    transB: false,
    m: n,
    n: rows,
    k,
    lda: k,
    ldb: k,
    ldc: n,
    aType: types.a,
    bType: types.a,
    cType: types.d,
    dType: types.d,
    computeType: types.compute,
    scaleType: types.scale,
  };
}

/** cuBLASLt statuses that refuse a problem: anything else (out of memory, a fault) is real. */
const LT_REFUSALS: ReadonlySet<number> = new Set([
  CUBLAS_STATUS_NOT_SUPPORTED,
  CUBLAS_STATUS_INVALID_VALUE,
  CUBLAS_STATUS_ARCH_MISMATCH,
]);

/**
 * True when `e` is cuBLASLt refusing a problem rather than a real failure: a refused problem
 * is remembered and takes another path for good, so an allocation failure must not pass for
 * one.
 */
function isLtRefusal(e: unknown): boolean {
  if (!(e instanceof TensorqError) || !e.op.startsWith("cublasLt")) return false;
  const status = (e.cause as { status?: unknown } | undefined)?.status;
  return typeof status === "number" && LT_REFUSALS.has(status);
}

/**
 * A prober of cuBLASLt problems that may be unsupported: it prepares a product, or returns
 * undefined when cuBLASLt has no algorithm for it or every candidate fails when run (both
 * remembered by this prober, so a problem is probed once).
 */
export function ltPlanProber(): (
  device: CudaDevice,
  spec: LtMatmulSpec,
) => LtMatmulPlan | undefined {
  const rejected = new Set<string>();
  return (device, spec) => {
    const key = `${device.index}:${JSON.stringify(spec)}`;
    if (rejected.has(key)) return undefined;
    try {
      return ltMatmulPlan(device, spec);
    } catch (e) {
      // Unsupported problems fail in descriptor setup, the heuristic or the probing calls;
      // anything else (a device fault, out of memory) is a real error.
      if (e instanceof TensorqError && (e.kind === "unsupported" || isLtRefusal(e))) {
        rejected.add(key);
        return undefined;
      }
      throw e;
    }
  };
}

/**
 * Runs `run`, a trial cuBLASLt call on the `scratch` buffers, then disposes them: false when
 * cuBLASLt refused the call (some configurations are refused only by the call itself).
 */
export function ltTrialRuns(scratch: readonly CudaBuffer[], run: () => void): boolean {
  try {
    run();
    return true;
  } catch (e) {
    if (isLtRefusal(e)) return false;
    throw e;
  } finally {
    for (const t of scratch) t.dispose();
  }
}
