/**
 * Bindings to cuBLASLt (`libcublasLt.so.13`, falling back to `.so.12`): matrix products with
 * fused epilogues and per-tensor or per-vector scales.
 *
 * The library is opened on the first call of {@link cublasLt}. Descriptor attributes are set
 * through {@link ltSetMatmulDescAttribute}, {@link ltSetMatrixLayoutAttribute} and
 * {@link ltSetMatmulPreferenceAttribute}, which know each supported attribute's C type, so the
 * value's byte size always matches what cuBLASLt expects.
 *
 * cuBLASLt matrices are column-major unless `CUBLASLT_MATRIX_LAYOUT_ORDER` says otherwise.
 * @module
 */

import { TensorqError } from "../lib/errors.ts";
import { addressOf, cString, type CudaFailure, lazyLibrary } from "./library.ts";

// Values below are copied from CUDA 13.0's library_types.h, cublas_api.h and cublasLt.h
// (cuBLAS 13.1).

/** `CUDA_R_32F` (`cudaDataType`). */
export const CUDA_R_32F: number = 0;
/** `CUDA_R_64F`. */
export const CUDA_R_64F: number = 1;
/** `CUDA_R_16F`. */
export const CUDA_R_16F: number = 2;
/** `CUDA_R_8I`. */
export const CUDA_R_8I: number = 3;
/** `CUDA_R_8U`. */
export const CUDA_R_8U: number = 8;
/** `CUDA_R_32I`. */
export const CUDA_R_32I: number = 10;
/** `CUDA_R_16BF`. */
export const CUDA_R_16BF: number = 14;
/** `CUDA_R_8F_E4M3`. */
export const CUDA_R_8F_E4M3: number = 28;
/** `CUDA_R_8F_E5M2`. */
export const CUDA_R_8F_E5M2: number = 29;

/** `CUBLAS_COMPUTE_16F` (`cublasComputeType_t`). */
export const CUBLAS_COMPUTE_16F: number = 64;
/** `CUBLAS_COMPUTE_32F`. */
export const CUBLAS_COMPUTE_32F: number = 68;
/** `CUBLAS_COMPUTE_32F_PEDANTIC`. */
export const CUBLAS_COMPUTE_32F_PEDANTIC: number = 69;
/** `CUBLAS_COMPUTE_64F`. */
export const CUBLAS_COMPUTE_64F: number = 70;
/** `CUBLAS_COMPUTE_32I`. */
export const CUBLAS_COMPUTE_32I: number = 72;
/** `CUBLAS_COMPUTE_32F_FAST_16F`. */
export const CUBLAS_COMPUTE_32F_FAST_16F: number = 74;
/** `CUBLAS_COMPUTE_32F_FAST_16BF`. */
export const CUBLAS_COMPUTE_32F_FAST_16BF: number = 75;
/** `CUBLAS_COMPUTE_32F_FAST_TF32`. */
export const CUBLAS_COMPUTE_32F_FAST_TF32: number = 77;

/** `CUBLAS_OP_N` (`cublasOperation_t`). */
export const CUBLAS_OP_N: number = 0;
/** `CUBLAS_OP_T`. */
export const CUBLAS_OP_T: number = 1;
/** `CUBLAS_OP_C`. */
export const CUBLAS_OP_C: number = 2;

/** `CUBLAS_STATUS_SUCCESS` (`cublasStatus_t`). */
export const CUBLAS_STATUS_SUCCESS: number = 0;
/** `CUBLAS_STATUS_NOT_INITIALIZED`. */
export const CUBLAS_STATUS_NOT_INITIALIZED: number = 1;
/** `CUBLAS_STATUS_ALLOC_FAILED`. */
export const CUBLAS_STATUS_ALLOC_FAILED: number = 3;
/** `CUBLAS_STATUS_INVALID_VALUE`. */
export const CUBLAS_STATUS_INVALID_VALUE: number = 7;
/** `CUBLAS_STATUS_ARCH_MISMATCH`. */
export const CUBLAS_STATUS_ARCH_MISMATCH: number = 8;
/** `CUBLAS_STATUS_MAPPING_ERROR`. */
export const CUBLAS_STATUS_MAPPING_ERROR: number = 11;
/** `CUBLAS_STATUS_EXECUTION_FAILED`. */
export const CUBLAS_STATUS_EXECUTION_FAILED: number = 13;
/** `CUBLAS_STATUS_INTERNAL_ERROR`. */
export const CUBLAS_STATUS_INTERNAL_ERROR: number = 14;
/** `CUBLAS_STATUS_NOT_SUPPORTED`. */
export const CUBLAS_STATUS_NOT_SUPPORTED: number = 15;
/** `CUBLAS_STATUS_LICENSE_ERROR`. */
export const CUBLAS_STATUS_LICENSE_ERROR: number = 16;

/** `cublasStatus_t` names by value, for when `cublasLtGetStatusName` is missing. */
export const CUBLAS_STATUS_NAMES: Readonly<Record<number, string>> = {
  0: "CUBLAS_STATUS_SUCCESS",
  1: "CUBLAS_STATUS_NOT_INITIALIZED",
  3: "CUBLAS_STATUS_ALLOC_FAILED",
  7: "CUBLAS_STATUS_INVALID_VALUE",
  8: "CUBLAS_STATUS_ARCH_MISMATCH",
  11: "CUBLAS_STATUS_MAPPING_ERROR",
  13: "CUBLAS_STATUS_EXECUTION_FAILED",
  14: "CUBLAS_STATUS_INTERNAL_ERROR",
  15: "CUBLAS_STATUS_NOT_SUPPORTED",
  16: "CUBLAS_STATUS_LICENSE_ERROR",
};

/** `CUBLASLT_POINTER_MODE_HOST`: alpha and beta are host scalars. */
export const CUBLASLT_POINTER_MODE_HOST: number = 0;
/** `CUBLASLT_POINTER_MODE_DEVICE`: alpha and beta are device scalars. */
export const CUBLASLT_POINTER_MODE_DEVICE: number = 1;
/** `CUBLASLT_POINTER_MODE_DEVICE_VECTOR`. */
export const CUBLASLT_POINTER_MODE_DEVICE_VECTOR: number = 2;
/** `CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO`. */
export const CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO: number = 3;
/** `CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST`. */
export const CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST: number = 4;

/** `CUBLASLT_ORDER_COL` (`cublasLtOrder_t`, the default). */
export const CUBLASLT_ORDER_COL: number = 0;
/** `CUBLASLT_ORDER_ROW`. */
export const CUBLASLT_ORDER_ROW: number = 1;

/** `CUBLASLT_MATRIX_LAYOUT_TYPE` (uint32_t). */
export const CUBLASLT_MATRIX_LAYOUT_TYPE: number = 0;
/** `CUBLASLT_MATRIX_LAYOUT_ORDER` (int32_t). */
export const CUBLASLT_MATRIX_LAYOUT_ORDER: number = 1;
/** `CUBLASLT_MATRIX_LAYOUT_ROWS` (uint64_t). */
export const CUBLASLT_MATRIX_LAYOUT_ROWS: number = 2;
/** `CUBLASLT_MATRIX_LAYOUT_COLS` (uint64_t). */
export const CUBLASLT_MATRIX_LAYOUT_COLS: number = 3;
/** `CUBLASLT_MATRIX_LAYOUT_LD` (int64_t). */
export const CUBLASLT_MATRIX_LAYOUT_LD: number = 4;
/** `CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT` (int32_t). */
export const CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: number = 5;
/** `CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET` (int64_t, in elements). */
export const CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: number = 6;

/** `CUBLASLT_MATMUL_DESC_COMPUTE_TYPE` (int32_t). */
export const CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: number = 0;
/** `CUBLASLT_MATMUL_DESC_SCALE_TYPE` (int32_t, a `cudaDataType`). */
export const CUBLASLT_MATMUL_DESC_SCALE_TYPE: number = 1;
/** `CUBLASLT_MATMUL_DESC_POINTER_MODE` (int32_t). */
export const CUBLASLT_MATMUL_DESC_POINTER_MODE: number = 2;
/** `CUBLASLT_MATMUL_DESC_TRANSA` (int32_t, a `cublasOperation_t`). */
export const CUBLASLT_MATMUL_DESC_TRANSA: number = 3;
/** `CUBLASLT_MATMUL_DESC_TRANSB` (int32_t). */
export const CUBLASLT_MATMUL_DESC_TRANSB: number = 4;
/** `CUBLASLT_MATMUL_DESC_EPILOGUE` (uint32_t, a `CUBLASLT_EPILOGUE_*`). */
export const CUBLASLT_MATMUL_DESC_EPILOGUE: number = 7;
/** `CUBLASLT_MATMUL_DESC_BIAS_POINTER` (device pointer). */
export const CUBLASLT_MATMUL_DESC_BIAS_POINTER: number = 8;
/** `CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE` (int64_t). */
export const CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: number = 10;
/** `CUBLASLT_MATMUL_DESC_A_SCALE_POINTER` (device pointer). */
export const CUBLASLT_MATMUL_DESC_A_SCALE_POINTER: number = 17;
/** `CUBLASLT_MATMUL_DESC_B_SCALE_POINTER` (device pointer). */
export const CUBLASLT_MATMUL_DESC_B_SCALE_POINTER: number = 18;
/** `CUBLASLT_MATMUL_DESC_C_SCALE_POINTER` (device pointer). */
export const CUBLASLT_MATMUL_DESC_C_SCALE_POINTER: number = 19;
/** `CUBLASLT_MATMUL_DESC_D_SCALE_POINTER` (device pointer). */
export const CUBLASLT_MATMUL_DESC_D_SCALE_POINTER: number = 20;
/** `CUBLASLT_MATMUL_DESC_AMAX_D_POINTER` (device pointer). */
export const CUBLASLT_MATMUL_DESC_AMAX_D_POINTER: number = 21;
/** `CUBLASLT_MATMUL_DESC_FAST_ACCUM` (int8_t: 0 or 1; fp8 only). */
export const CUBLASLT_MATMUL_DESC_FAST_ACCUM: number = 25;
/** `CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE` (int32_t, a `cudaDataType`). */
export const CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: number = 26;
/** `CUBLASLT_MATMUL_DESC_A_SCALE_MODE` (int32_t, a `CUBLASLT_MATMUL_MATRIX_SCALE_*`). */
export const CUBLASLT_MATMUL_DESC_A_SCALE_MODE: number = 31;
/** `CUBLASLT_MATMUL_DESC_B_SCALE_MODE` (int32_t). */
export const CUBLASLT_MATMUL_DESC_B_SCALE_MODE: number = 32;
/** `CUBLASLT_MATMUL_DESC_C_SCALE_MODE` (int32_t). */
export const CUBLASLT_MATMUL_DESC_C_SCALE_MODE: number = 33;
/** `CUBLASLT_MATMUL_DESC_D_SCALE_MODE` (int32_t). */
export const CUBLASLT_MATMUL_DESC_D_SCALE_MODE: number = 34;

/** `CUBLASLT_EPILOGUE_DEFAULT` (`cublasLtEpilogue_t`): no epilogue. */
export const CUBLASLT_EPILOGUE_DEFAULT: number = 1;
/** `CUBLASLT_EPILOGUE_RELU`. */
export const CUBLASLT_EPILOGUE_RELU: number = 2;
/** `CUBLASLT_EPILOGUE_BIAS`: adds a bias vector (one value per row of D). */
export const CUBLASLT_EPILOGUE_BIAS: number = 4;
/** `CUBLASLT_EPILOGUE_RELU_BIAS`. */
export const CUBLASLT_EPILOGUE_RELU_BIAS: number = 6;
/** `CUBLASLT_EPILOGUE_GELU` (tanh approximation). */
export const CUBLASLT_EPILOGUE_GELU: number = 32;
/** `CUBLASLT_EPILOGUE_GELU_BIAS`. */
export const CUBLASLT_EPILOGUE_GELU_BIAS: number = 36;

/** `CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F`: one fp32 scale for the whole matrix. */
export const CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F: number = 0;
/** `CUBLASLT_MATMUL_MATRIX_SCALE_VEC16_UE4M3`. */
export const CUBLASLT_MATMUL_MATRIX_SCALE_VEC16_UE4M3: number = 1;
/** `CUBLASLT_MATMUL_MATRIX_SCALE_VEC32_UE8M0`. */
export const CUBLASLT_MATMUL_MATRIX_SCALE_VEC32_UE8M0: number = 2;
/** `CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F`: fp32 vectors, M values for A and N for B. */
export const CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F: number = 3;
/** `CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F`. */
export const CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F: number = 4;
/** `CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F`. */
export const CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F: number = 5;

/** `CUBLASLT_MATMUL_PREF_SEARCH_MODE` (uint32_t). */
export const CUBLASLT_MATMUL_PREF_SEARCH_MODE: number = 0;
/** `CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES` (uint64_t). */
export const CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: number = 1;
/** `CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES` (uint32_t). */
export const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: number = 5;
/** `CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES` (uint32_t). */
export const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: number = 6;
/** `CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES` (uint32_t). */
export const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: number = 7;
/** `CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES` (uint32_t). */
export const CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: number = 8;

/** The C type of a descriptor attribute's value. */
export type LtAttributeType = "i8" | "i32" | "u32" | "i64" | "u64" | "ptr";

/** C types of the settable `CUBLASLT_MATMUL_DESC_*` attributes (from cublasLt.h). */
export const MATMUL_DESC_ATTRIBUTE_TYPES: Readonly<Record<number, LtAttributeType>> = {
  [CUBLASLT_MATMUL_DESC_COMPUTE_TYPE]: "i32",
  [CUBLASLT_MATMUL_DESC_SCALE_TYPE]: "i32",
  [CUBLASLT_MATMUL_DESC_POINTER_MODE]: "i32",
  [CUBLASLT_MATMUL_DESC_TRANSA]: "i32",
  [CUBLASLT_MATMUL_DESC_TRANSB]: "i32",
  [CUBLASLT_MATMUL_DESC_EPILOGUE]: "u32",
  [CUBLASLT_MATMUL_DESC_BIAS_POINTER]: "ptr",
  [CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE]: "i64",
  [CUBLASLT_MATMUL_DESC_A_SCALE_POINTER]: "ptr",
  [CUBLASLT_MATMUL_DESC_B_SCALE_POINTER]: "ptr",
  [CUBLASLT_MATMUL_DESC_C_SCALE_POINTER]: "ptr",
  [CUBLASLT_MATMUL_DESC_D_SCALE_POINTER]: "ptr",
  [CUBLASLT_MATMUL_DESC_AMAX_D_POINTER]: "ptr",
  [CUBLASLT_MATMUL_DESC_FAST_ACCUM]: "i8",
  [CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE]: "i32",
  [CUBLASLT_MATMUL_DESC_A_SCALE_MODE]: "i32",
  [CUBLASLT_MATMUL_DESC_B_SCALE_MODE]: "i32",
  [CUBLASLT_MATMUL_DESC_C_SCALE_MODE]: "i32",
  [CUBLASLT_MATMUL_DESC_D_SCALE_MODE]: "i32",
};

/** C types of the settable `CUBLASLT_MATRIX_LAYOUT_*` attributes (from cublasLt.h). */
export const MATRIX_LAYOUT_ATTRIBUTE_TYPES: Readonly<Record<number, LtAttributeType>> = {
  [CUBLASLT_MATRIX_LAYOUT_TYPE]: "u32",
  [CUBLASLT_MATRIX_LAYOUT_ORDER]: "i32",
  [CUBLASLT_MATRIX_LAYOUT_ROWS]: "u64",
  [CUBLASLT_MATRIX_LAYOUT_COLS]: "u64",
  [CUBLASLT_MATRIX_LAYOUT_LD]: "i64",
  [CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT]: "i32",
  [CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET]: "i64",
};

/** C types of the settable `CUBLASLT_MATMUL_PREF_*` attributes (from cublasLt.h). */
export const MATMUL_PREFERENCE_ATTRIBUTE_TYPES: Readonly<Record<number, LtAttributeType>> = {
  [CUBLASLT_MATMUL_PREF_SEARCH_MODE]: "u32",
  [CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES]: "u64",
  [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES]: "u32",
  [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES]: "u32",
  [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES]: "u32",
  [CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES]: "u32",
};

/**
 * Byte layout of `cublasLtMatmulHeuristicResult_t` (x86-64): `cublasLtMatmulAlgo_t algo`
 * (`uint64_t data[8]`) at 0, `size_t workspaceSize` at 64, `cublasStatus_t state` at 72,
 * `float wavesCount` at 76, `int reserved[4]` at 80; 96 bytes in all, 8-byte aligned.
 */
export const HEURISTIC_RESULT_LAYOUT: {
  readonly algoOffset: number;
  readonly algoBytes: number;
  readonly workspaceSizeOffset: number;
  readonly stateOffset: number;
  readonly wavesCountOffset: number;
  readonly reservedOffset: number;
  readonly bytes: number;
} = {
  algoOffset: 0,
  algoBytes: 64,
  workspaceSizeOffset: 64,
  stateOffset: 72,
  wavesCountOffset: 76,
  reservedOffset: 80,
  bytes: 96,
};

// Status results are `cublasStatus_t` (a C enum: i32). Handles and descriptors are pointers;
// alpha, beta, matrices, algo and workspace are pointers (host or device, as configured).
/** The cuBLASLt symbols bound by `Deno.dlopen`, with their C signatures. */
export const CUBLASLT_SYMBOLS = {
  cublasLtCreate: { parameters: ["buffer"], result: "i32" },
  cublasLtDestroy: { parameters: ["pointer"], result: "i32" },
  cublasLtGetVersion: { parameters: [], result: "usize" },
  cublasLtGetStatusName: { parameters: ["i32"], result: "pointer", optional: true },
  cublasLtGetStatusString: { parameters: ["i32"], result: "pointer", optional: true },
  // (desc*, cublasComputeType_t, cudaDataType scaleType)
  cublasLtMatmulDescCreate: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  cublasLtMatmulDescDestroy: { parameters: ["pointer"], result: "i32" },
  // (desc, attribute, const void* value, size_t bytes)
  cublasLtMatmulDescSetAttribute: {
    parameters: ["pointer", "i32", "buffer", "usize"],
    result: "i32",
  },
  // (layout*, cudaDataType, uint64 rows, uint64 cols, int64 ld)
  cublasLtMatrixLayoutCreate: {
    parameters: ["buffer", "i32", "u64", "u64", "i64"],
    result: "i32",
  },
  cublasLtMatrixLayoutDestroy: { parameters: ["pointer"], result: "i32" },
  cublasLtMatrixLayoutSetAttribute: {
    parameters: ["pointer", "i32", "buffer", "usize"],
    result: "i32",
  },
  cublasLtMatmulPreferenceCreate: { parameters: ["buffer"], result: "i32" },
  cublasLtMatmulPreferenceDestroy: { parameters: ["pointer"], result: "i32" },
  cublasLtMatmulPreferenceSetAttribute: {
    parameters: ["pointer", "i32", "buffer", "usize"],
    result: "i32",
  },
  // (handle, desc, Adesc, Bdesc, Cdesc, Ddesc, preference, requested, results[], int* returned)
  cublasLtMatmulAlgoGetHeuristic: {
    parameters: [
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "i32",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  // (handle, desc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo, workspace,
  //  workspaceBytes, stream)
  cublasLtMatmul: {
    parameters: [
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "usize",
      "pointer",
    ],
    result: "i32",
  },
} as const;

/** cuBLASLt's bound symbols, as returned by {@link cublasLt}. */
export type CublasLtLib = Deno.StaticForeignLibraryInterface<typeof CUBLASLT_SYMBOLS>;

/** cuBLASLt's file names, tried in order. */
export const CUBLASLT_NAMES: readonly string[] = ["libcublasLt.so.13", "libcublasLt.so.12"];

/** Opens cuBLASLt on first use and returns its symbols (cached, failures too). */
export const cublasLt: () => CublasLtLib = lazyLibrary(
  "cuBLASLt",
  CUBLASLT_NAMES,
  CUBLASLT_SYMBOLS,
);

// Scratch buffers for synchronous calls (off-heap, so their addresses are stable).
const outPointer = new BigUint64Array(new ArrayBuffer(8));
const outInt = new Int32Array(new ArrayBuffer(8));
const attributeBytes = new Uint8Array(new ArrayBuffer(8));
const attributeView = new DataView(attributeBytes.buffer);

/** Returns `cublasStatus_t` `status`'s name, e.g. `CUBLAS_STATUS_NOT_SUPPORTED`, and its
 * description when the library provides one. */
export function cublasStatusName(status: number): [name: string, description: string] {
  const fallback = CUBLAS_STATUS_NAMES[status] ?? `cublasStatus_t ${status}`;
  let lib: CublasLtLib;
  try {
    lib = cublasLt();
  } catch {
    return [fallback, ""];
  }
  const name = lib.cublasLtGetStatusName ? cString(lib.cublasLtGetStatusName(status)) : "";
  const text = lib.cublasLtGetStatusString ? cString(lib.cublasLtGetStatusString(status)) : "";
  return [name || fallback, text];
}

/**
 * Throws a {@link TensorqError} (op = `call`, kind `cuda`) unless `status` is
 * `CUBLAS_STATUS_SUCCESS`. The message names the status: `cublasLtMatmul: failed with
 * CUBLAS_STATUS_NOT_SUPPORTED at ...`; `cause` is a {@link CudaFailure}.
 */
export function checkCublas(status: number, call: string): void {
  if (status === CUBLAS_STATUS_SUCCESS) return;
  const [name, description] = cublasStatusName(status);
  const cause: CudaFailure = { api: "cublasLt", status, name };
  throw new TensorqError(
    `failed with ${name}${description && description !== name ? ` (${description})` : ""}`,
    { op: call, kind: "cuda", cause },
  );
}

/** cuBLASLt's version, e.g. `130100` for 13.1.0. */
export function ltVersion(): number {
  return Number(cublasLt().cublasLtGetVersion());
}

/** Creates a cuBLASLt handle (`cublasLtCreate`). */
export function ltCreate(): Deno.PointerValue {
  checkCublas(cublasLt().cublasLtCreate(outPointer), "cublasLtCreate");
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** Creates a matmul descriptor for a `CUBLAS_COMPUTE_*` type and a `CUDA_R_*` scale type
 * (the type of alpha and beta). */
export function ltMatmulDescCreate(computeType: number, scaleType: number): Deno.PointerValue {
  checkCublas(
    cublasLt().cublasLtMatmulDescCreate(outPointer, computeType, scaleType),
    "cublasLtMatmulDescCreate",
  );
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** Destroys a matmul descriptor. */
export function ltMatmulDescDestroy(desc: Deno.PointerValue): void {
  checkCublas(cublasLt().cublasLtMatmulDescDestroy(desc), "cublasLtMatmulDescDestroy");
}

/** Destroys a matrix layout. */
export function ltMatrixLayoutDestroy(layout: Deno.PointerValue): void {
  checkCublas(cublasLt().cublasLtMatrixLayoutDestroy(layout), "cublasLtMatrixLayoutDestroy");
}

/** Creates a matrix layout: `type` a `CUDA_R_*`, `rows` × `cols` with leading dimension
 * `ld` (column-major by default). */
export function ltMatrixLayoutCreate(
  type: number,
  rows: number | bigint,
  cols: number | bigint,
  ld: number | bigint,
): Deno.PointerValue {
  checkCublas(
    cublasLt().cublasLtMatrixLayoutCreate(
      outPointer,
      type,
      BigInt(rows),
      BigInt(cols),
      BigInt(ld),
    ),
    "cublasLtMatrixLayoutCreate",
  );
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** Creates a heuristic search preference descriptor. */
export function ltMatmulPreferenceCreate(): Deno.PointerValue {
  checkCublas(
    cublasLt().cublasLtMatmulPreferenceCreate(outPointer),
    "cublasLtMatmulPreferenceCreate",
  );
  return Deno.UnsafePointer.create(outPointer[0]);
}

/** An attribute value: a number or bigint for integer attributes; a pointer (or address) for
 * pointer attributes. */
export type LtAttributeValue = number | bigint | Deno.PointerValue;

function encodeAttribute(
  call: string,
  table: Readonly<Record<number, LtAttributeType>>,
  attribute: number,
  value: LtAttributeValue,
): Uint8Array<ArrayBuffer> {
  const type = table[attribute];
  if (type === undefined) {
    throw new TensorqError("attribute not supported by this binding", {
      op: call,
      kind: "unsupported",
      argument: "attribute",
      expected: `one of ${Object.keys(table).join(", ")}`,
      actual: String(attribute),
    });
  }
  const isPointerLike = value === null || typeof value === "object";
  if (isPointerLike !== (type === "ptr") && !(type === "ptr" && typeof value === "bigint")) {
    throw new TensorqError("attribute value has the wrong kind", {
      op: call,
      kind: "argument",
      argument: "value",
      expected: type === "ptr" ? "a pointer or bigint address" : `an integer (${type})`,
      actual: value === null ? "null" : typeof value,
    });
  }
  switch (type) {
    case "i8":
      attributeView.setInt8(0, Number(value));
      return attributeBytes.subarray(0, 1);
    case "i32":
      attributeView.setInt32(0, Number(value), true);
      return attributeBytes.subarray(0, 4);
    case "u32":
      attributeView.setUint32(0, Number(value), true);
      return attributeBytes.subarray(0, 4);
    case "i64":
      attributeView.setBigInt64(0, BigInt(value as number | bigint), true);
      return attributeBytes.subarray(0, 8);
    case "u64":
      attributeView.setBigUint64(0, BigInt(value as number | bigint), true);
      return attributeBytes.subarray(0, 8);
    case "ptr":
      attributeView.setBigUint64(0, addressOf(value as Deno.PointerValue | bigint), true);
      return attributeBytes.subarray(0, 8);
  }
}

type LtSetAttribute = (
  handle: Deno.PointerValue,
  attribute: number,
  bytes: Uint8Array<ArrayBuffer>,
  size: bigint,
) => number;

/** Encodes `value` with the attribute's C type and calls one of the three setters. */
function setAttribute(
  call: string,
  setter: LtSetAttribute,
  table: Readonly<Record<number, LtAttributeType>>,
  handle: Deno.PointerValue,
  attribute: number,
  value: LtAttributeValue,
): void {
  const bytes = encodeAttribute(call, table, attribute, value);
  checkCublas(setter(handle, attribute, bytes, BigInt(bytes.length)), call);
}

/** Sets a `CUBLASLT_MATMUL_DESC_*` attribute, encoded with the attribute's C type. */
export function ltSetMatmulDescAttribute(
  desc: Deno.PointerValue,
  attribute: number,
  value: LtAttributeValue,
): void {
  const call = "cublasLtMatmulDescSetAttribute";
  setAttribute(
    call,
    (h, a, b, n) => cublasLt().cublasLtMatmulDescSetAttribute(h, a, b, n),
    MATMUL_DESC_ATTRIBUTE_TYPES,
    desc,
    attribute,
    value,
  );
}

/** Sets a `CUBLASLT_MATRIX_LAYOUT_*` attribute, encoded with the attribute's C type. */
export function ltSetMatrixLayoutAttribute(
  layout: Deno.PointerValue,
  attribute: number,
  value: LtAttributeValue,
): void {
  const call = "cublasLtMatrixLayoutSetAttribute";
  setAttribute(
    call,
    (h, a, b, n) => cublasLt().cublasLtMatrixLayoutSetAttribute(h, a, b, n),
    MATRIX_LAYOUT_ATTRIBUTE_TYPES,
    layout,
    attribute,
    value,
  );
}

/** Sets a `CUBLASLT_MATMUL_PREF_*` attribute, encoded with the attribute's C type. */
export function ltSetMatmulPreferenceAttribute(
  preference: Deno.PointerValue,
  attribute: number,
  value: LtAttributeValue,
): void {
  const call = "cublasLtMatmulPreferenceSetAttribute";
  const table = MATMUL_PREFERENCE_ATTRIBUTE_TYPES;
  setAttribute(
    call,
    (h, a, b, n) => cublasLt().cublasLtMatmulPreferenceSetAttribute(h, a, b, n),
    table,
    preference,
    attribute,
    value,
  );
}

/** Allocates room for `count` heuristic results (off-heap, so its address is stable). */
export function allocHeuristicResults(count: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new ArrayBuffer(count * HEURISTIC_RESULT_LAYOUT.bytes));
}

/** Number of heuristic results `results` has room for. */
export function heuristicResultCount(results: Uint8Array): number {
  return Math.floor(results.byteLength / HEURISTIC_RESULT_LAYOUT.bytes);
}

/**
 * Asks cuBLASLt for up to `results`' capacity algorithms (best first) and returns how many it
 * wrote. Throws if none fits (`CUBLAS_STATUS_NOT_SUPPORTED`).
 */
export function ltAlgoGetHeuristic(
  handle: Deno.PointerValue,
  desc: Deno.PointerValue,
  a: Deno.PointerValue,
  b: Deno.PointerValue,
  c: Deno.PointerValue,
  d: Deno.PointerValue,
  preference: Deno.PointerValue,
  results: Uint8Array<ArrayBuffer>,
): number {
  const requested = heuristicResultCount(results);
  outInt[0] = 0;
  checkCublas(
    cublasLt().cublasLtMatmulAlgoGetHeuristic(
      handle,
      desc,
      a,
      b,
      c,
      d,
      preference,
      requested,
      results,
      outInt,
    ),
    "cublasLtMatmulAlgoGetHeuristic",
  );
  return outInt[0];
}

function resultView(results: Uint8Array, index: number): DataView {
  if (!Number.isInteger(index) || index < 0 || index >= heuristicResultCount(results)) {
    throw new TensorqError("heuristic result index out of range", {
      op: "heuristicResult",
      kind: "argument",
      argument: "index",
      expected: `an integer in [0, ${heuristicResultCount(results)})`,
      actual: String(index),
    });
  }
  return new DataView(
    results.buffer,
    results.byteOffset + index * HEURISTIC_RESULT_LAYOUT.bytes,
    HEURISTIC_RESULT_LAYOUT.bytes,
  );
}

/** Pointer to result `index`'s `cublasLtMatmulAlgo_t`, for `cublasLtMatmul`'s `algo`.
 * Valid while `results` is alive. */
export function heuristicAlgo(results: Uint8Array<ArrayBuffer>, index: number): Deno.PointerValue {
  resultView(results, index);
  const base = Deno.UnsafePointer.of(results);
  if (base === null) return null;
  return Deno.UnsafePointer.offset(base, index * HEURISTIC_RESULT_LAYOUT.bytes);
}

/** Workspace bytes result `index`'s algorithm needs. */
export function heuristicWorkspaceSize(results: Uint8Array, index: number): number {
  const view = resultView(results, index);
  return Number(view.getBigUint64(HEURISTIC_RESULT_LAYOUT.workspaceSizeOffset, true));
}

/** Result `index`'s `cublasStatus_t` (its other fields are valid only when 0). */
export function heuristicState(results: Uint8Array, index: number): number {
  return resultView(results, index).getInt32(HEURISTIC_RESULT_LAYOUT.stateOffset, true);
}

/** Result `index`'s waves count (1.0: the kernel fills the GPU once). */
export function heuristicWavesCount(results: Uint8Array, index: number): number {
  return resultView(results, index).getFloat32(HEURISTIC_RESULT_LAYOUT.wavesCountOffset, true);
}
