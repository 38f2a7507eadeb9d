/**
 * cuBLASLt for the CUDA backend: one handle and one 32 MiB workspace per device, and
 * {@link ltMatmulPlan}, a general matrix product whose descriptors are created once and whose
 * algorithm is chosen once per problem: the heuristic's candidates are each timed on the
 * device with CUDA events and the fastest is kept. Plans are cached by problem (device, shapes,
 * types, strides, epilogue, alignment) and shared, so a problem is tuned once per process and
 * its descriptors are never rebuilt. Picks can be kept in a file for other processes
 * (lib/backends/cuda/lt_tuning.ts).
 *
 * All of cuBLASLt's conventions apply: matrices are column-major, `op(A)` is `m × k`, `op(B)`
 * `k × n`, and `D = alpha · op(A) · op(B) + beta · C` is `m × n`. Work is enqueued on the
 * device's stream.
 * @module
 */
import {
  allocHeuristicResults,
  checkCublas,
  CUBLAS_OP_N,
  CUBLAS_OP_T,
  CUBLAS_STATUS_SUCCESS,
  cublasLt,
  CUBLASLT_EPILOGUE_BIAS,
  CUBLASLT_EPILOGUE_DEFAULT,
  CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
  CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
  CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
  CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
  CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER,
  CUBLASLT_MATMUL_DESC_D_SCALE_POINTER,
  CUBLASLT_MATMUL_DESC_EPILOGUE,
  CUBLASLT_MATMUL_DESC_FAST_ACCUM,
  CUBLASLT_MATMUL_DESC_POINTER_MODE,
  CUBLASLT_MATMUL_DESC_TRANSA,
  CUBLASLT_MATMUL_DESC_TRANSB,
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
  CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
  CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
  CUBLASLT_POINTER_MODE_HOST,
  CUDA_R_16BF,
  CUDA_R_16F,
  CUDA_R_32F,
  CUDA_R_32I,
  CUDA_R_64F,
  CUDA_R_8F_E4M3,
  CUDA_R_8F_E5M2,
  CUDA_R_8I,
  CUDA_R_8U,
  HEURISTIC_RESULT_LAYOUT,
  heuristicAlgo,
  heuristicState,
  heuristicWorkspaceSize,
  ltAlgoGetHeuristic,
  ltCreate,
  ltMatmulDescCreate,
  ltMatmulDescDestroy,
  ltMatmulPreferenceCreate,
  ltMatrixLayoutCreate,
  ltMatrixLayoutDestroy,
  ltSetMatmulDescAttribute,
  ltSetMatmulPreferenceAttribute,
  ltSetMatrixLayoutAttribute,
} from "../../../ffi/cublaslt.ts";
import {
  checkCuda,
  copyToDeviceAsync,
  createEvent,
  cudaEventDefault,
  cudaMemcpyDeviceToDevice,
  cudart,
  cudaStreamCaptureStatusNone,
  eventElapsedMs,
  streamCaptureStatus,
} from "../../../ffi/cudart.ts";
import { addressOf } from "../../../ffi/library.ts";
import { float32ToFloat16Bits } from "../../dtype.ts";
import { TensorqError } from "../../errors.ts";
import type { CudaDevice } from "./device.ts";
import { CudaBuffer } from "./memory.ts";
import { hexOf, recordLtPick, savedLtPick } from "./lt_tuning.ts";

/** Bytes of the per-device cuBLASLt workspace (the heuristic may use all of it). */
export const LT_WORKSPACE_BYTES: number = 32 * 2 ** 20;

/** How many heuristic candidates are asked for and timed per problem. */
export const LT_HEURISTIC_CANDIDATES: number = 8;

/**
 * Timing rounds of the autotune: every candidate runs once per round, round robin, and keeps
 * its fastest. One run each picked differently from process to process (a 30 µs GEMM's time
 * varies by more than the gap between good algorithms, and GPU clocks still rise while the
 * first candidates run).
 */
const LT_TIMING_ROUNDS = 4;

/**
 * Each timed run meets its operands as a layer of a forward pass does: A (the weights, in the
 * "TN" linear form) out of L2, B (the activations, just written by the layer before) in it.
 * Between runs (untimed), a memset of this many times the L2 size evicts everything, and a copy
 * of B reads it back in. Back to back, every operand stayed in L2, and the fastest candidate
 * there was often not the fastest in the model.
 */
const LT_FLUSH_L2_TIMES = 2;

/**
 * Problems (2 · m · n · k · batch) below this many flops take the heuristic's first pick unless
 * the spec asks for timing. Timing a new problem costs 10–60 ms (mostly the candidates' first
 * launches, which load their kernels), and at GPT-2-small's linear shapes with up to 2048
 * tokens the fastest candidate beat the first pick by at most ~10 %, of a 10–20 µs kernel: a
 * prompt of a length not seen before paid ~170 ms of timing for a 5 ms forward. The 8 × 512
 * token prefill's products (4.8 GFLOP and up) are still timed.
 */
export const LT_AUTOTUNE_MIN_FLOPS: number = 2 ** 32;

/** `CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK` (uint32_t; not in the binding's table). */
const PREF_REDUCTION_SCHEME_MASK = 3;
/** `CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE`: split-K partial sums kept in the compute type. */
export const LT_REDUCTION_SCHEME_COMPUTE_TYPE: number = 2;
/** `CUBLASLT_REDUCTION_SCHEME_MASK`: every split-K scheme allowed. */
export const LT_REDUCTION_SCHEME_ALL: number = 7;
/** Output types as wide as the compute type: split-K partial sums in them lose nothing. */
const WIDE_OUTPUT_TYPES = new Set([CUDA_R_32F, CUDA_R_32I, CUDA_R_64F]);

/** The highest alignment worth reporting (the pool's allocation granularity). */
const MAX_ALIGNMENT = 256;

/** Bytes per element of the `CUDA_R_*` types cuBLASLt matmuls take. */
const TYPE_BYTES: Readonly<Record<number, number>> = {
  [CUDA_R_32F]: 4,
  [CUDA_R_64F]: 8,
  [CUDA_R_16F]: 2,
  [CUDA_R_16BF]: 2,
  [CUDA_R_8I]: 1,
  [CUDA_R_8U]: 1,
  [CUDA_R_32I]: 4,
  [CUDA_R_8F_E4M3]: 1,
  [CUDA_R_8F_E5M2]: 1,
};

/** cuBLASLt state of one device. */
interface LtDeviceState {
  handle: Deno.PointerValue;
  workspace: CudaBuffer;
  workspacePointer: Deno.PointerValue;
  /** Timing events, two per candidate (created on first tuning). */
  events: Deno.PointerValue[];
}

const deviceStates = new Map<number, LtDeviceState>();

function deviceState(device: CudaDevice): LtDeviceState {
  let state = deviceStates.get(device.index);
  if (!state) {
    device.makeCurrent();
    const handle = ltCreate();
    // Allocated once and kept for the life of the process (the map holds it).
    const workspace = CudaBuffer.allocate(device, "int8", LT_WORKSPACE_BYTES);
    state = { handle, workspace, workspacePointer: workspace.pointer, events: [] };
    deviceStates.set(device.index, state);
  }
  return state;
}

/** The cuBLASLt handle and workspace of a device (created on first use, never freed). */
export function ltResources(
  device: CudaDevice,
): { handle: Deno.PointerValue; workspace: CudaBuffer; workspaceBytes: number } {
  const s = deviceState(device);
  return { handle: s.handle, workspace: s.workspace, workspaceBytes: LT_WORKSPACE_BYTES };
}

/** A device address: a pointer value or a bigint. */
export type LtPointer = Deno.PointerValue | bigint;

/** Strided batching: `count` products, operand `X` of product `i` at `X + i · strideX`. */
export interface LtMatmulBatch {
  /** Number of products (≥ 1). */
  count: number;
  /** Elements between consecutive A matrices (0: the same A for all). */
  strideA: number;
  /** Elements between consecutive B matrices (0: the same B for all). */
  strideB: number;
  /** Elements between consecutive C matrices. */
  strideC: number;
  /** Elements between consecutive D matrices (default `strideC`). */
  strideD?: number;
}

/** Byte alignment of the pointers that will be passed to {@link LtMatmulPlan.run}. */
export interface LtAlignment {
  /** Alignment of A (power of two, default 256). */
  a?: number;
  /** Alignment of B (default 256). */
  b?: number;
  /** Alignment of C (default 256). */
  c?: number;
  /** Alignment of D (default 256). */
  d?: number;
}

/** Device pointers held by the matmul descriptor rather than passed as arguments. */
export interface LtMatmulPointers {
  /** Bias vector for bias epilogues (one value per row of D). */
  bias?: LtPointer;
  /** Scale of A (`CUBLASLT_MATMUL_DESC_A_SCALE_POINTER`). */
  aScale?: LtPointer;
  /** Scale of B. */
  bScale?: LtPointer;
  /** Scale of D (fp8 outputs). */
  dScale?: LtPointer;
}

/**
 * A cuBLASLt matrix product: `D = alpha · op(A) · op(B) + beta · C`, column-major, `op(A)`
 * `m × k`, `op(B)` `k × n`, C and D `m × n`.
 */
export interface LtMatmulSpec {
  /** Whether A is stored transposed (`CUBLAS_OP_T`: A is `k × m` in memory). */
  transA: boolean;
  /** Whether B is stored transposed (B is `n × k` in memory). */
  transB: boolean;
  /** Rows of op(A), C and D. */
  m: number;
  /** Columns of op(B), C and D. */
  n: number;
  /** The reduction dimension (≥ 1). */
  k: number;
  /** Leading dimension of A as stored. */
  lda: number;
  /** Leading dimension of B as stored. */
  ldb: number;
  /** Leading dimension of C. */
  ldc: number;
  /** Leading dimension of D (default `ldc`). */
  ldd?: number;
  /** `CUDA_R_*` type of A. */
  aType: number;
  /** `CUDA_R_*` type of B. */
  bType: number;
  /** `CUDA_R_*` type of C. */
  cType: number;
  /** `CUDA_R_*` type of D. */
  dType: number;
  /** `CUBLAS_COMPUTE_*` type. */
  computeType: number;
  /** `CUDA_R_*` type of alpha and beta (`CUDA_R_32F`, `CUDA_R_64F`, `CUDA_R_32I`, `CUDA_R_16F`). */
  scaleType: number;
  /** Strided batching (default: one product). */
  batch?: LtMatmulBatch;
  /** `CUBLASLT_EPILOGUE_*` (default `CUBLASLT_EPILOGUE_DEFAULT`). */
  epilogue?: number;
  /** Bias vector for bias epilogues; can also be given per run. */
  biasPointer?: LtPointer;
  /** `CUDA_R_*` type of the bias (default: cuBLASLt's, the type of D). */
  biasType?: number;
  /** Scale of A; can also be given per run. Setting it (or a mode) tunes with a scale. */
  aScalePointer?: LtPointer;
  /** Scale of B; can also be given per run. */
  bScalePointer?: LtPointer;
  /** Scale of D (fp8 outputs); can also be given per run. */
  dScalePointer?: LtPointer;
  /** `CUBLASLT_MATMUL_MATRIX_SCALE_*` of A's scale (default scalar). */
  aScaleMode?: number;
  /** `CUBLASLT_MATMUL_MATRIX_SCALE_*` of B's scale (default scalar). */
  bScaleMode?: number;
  /** fp8 fast accumulation (`CUBLASLT_MATMUL_DESC_FAST_ACCUM`). */
  fastAccum?: boolean;
  /** Alignment of the pointers that will be passed (default 256 bytes each). */
  alignment?: LtAlignment;
  /** Allowed split-K reduction schemes (`CUBLASLT_REDUCTION_SCHEME_*` bits; algorithms
   * without split-K are always allowed). Default: all for 32-bit and wider outputs; for
   * narrower outputs only compute-type partial sums, so accumulation never rounds to the output
   * type before the end. */
  reductionSchemeMask?: number;
  /** Time the heuristic's candidates and keep the fastest (true), or take the heuristic's
   * first pick (false). Default: time problems of at least {@link LT_AUTOTUNE_MIN_FLOPS}. */
  autotune?: boolean;
  /** Use the heuristic's candidate at this index (0: its first pick), untimed; for comparing
   * candidates. An index past the candidates the heuristic returned is an error. */
  algorithmIndex?: number;
}

/** Which algorithm a plan uses and how it was chosen. */
export interface LtAlgorithmChoice {
  /** Index of the chosen candidate in the heuristic's list (0: its first pick). */
  index: number;
  /** Candidates the heuristic returned. */
  candidates: number;
  /** Candidates that ran (the others failed in `cublasLtMatmul` and were skipped). */
  ran: number;
  /** Measured milliseconds of the chosen candidate (undefined when not timed). */
  ms?: number;
  /** Fastest measured milliseconds of each candidate, by heuristic index (NaN where it failed
   * or was not offered; undefined when not timed). */
  candidateMs?: number[];
  /** Workspace bytes the chosen algorithm needs. */
  workspaceBytes: number;
}

/** A prepared cuBLASLt product (see {@link ltMatmulPlan}). */
export interface LtMatmulPlan {
  /** The cache key of the problem. */
  readonly key: string;
  /** The chosen algorithm. */
  readonly algorithm: LtAlgorithmChoice;
  /**
   * Enqueues `D = alpha · op(A) · op(B) + beta · C` on the device's stream. `c` may equal `d`
   * when C and D have the same type and layout. `pointers` override the spec's bias and scale
   * pointers for this and later runs of this plan.
   */
  run(
    a: LtPointer,
    b: LtPointer,
    c: LtPointer,
    d: LtPointer,
    alpha?: number,
    beta?: number,
    pointers?: LtMatmulPointers,
  ): void;
}

function toPointer(p: LtPointer): Deno.PointerValue {
  return typeof p === "bigint" ? Deno.UnsafePointer.create(p) : p;
}

function encodeScalar(view: DataView, offset: number, scaleType: number, value: number): void {
  switch (scaleType) {
    case CUDA_R_32F:
      view.setFloat32(offset, value, true);
      return;
    case CUDA_R_64F:
      view.setFloat64(offset, value, true);
      return;
    case CUDA_R_32I:
      view.setInt32(offset, value, true);
      return;
    case CUDA_R_16F:
      view.setUint16(offset, float32ToFloat16Bits(value), true);
      return;
  }
  throw new TensorqError("unsupported scale type", {
    op: "ltMatmulPlan",
    kind: "unsupported",
    argument: "scaleType",
    expected: "CUDA_R_32F, CUDA_R_64F, CUDA_R_32I or CUDA_R_16F",
    actual: String(scaleType),
  });
}

function checkSpec(spec: LtMatmulSpec): void {
  const positive = (name: string, v: number): void => {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new TensorqError("expected a positive integer", {
        op: "ltMatmulPlan",
        kind: "argument",
        argument: name,
        expected: "an integer ≥ 1",
        actual: String(v),
      });
    }
  };
  positive("m", spec.m);
  positive("n", spec.n);
  positive("k", spec.k);
  const lds: [string, number | undefined, number][] = [
    ["lda", spec.lda, spec.transA ? spec.k : spec.m],
    ["ldb", spec.ldb, spec.transB ? spec.n : spec.k],
    ["ldc", spec.ldc, spec.m],
    ["ldd", spec.ldd ?? spec.ldc, spec.m],
  ];
  for (const [name, ld, rows] of lds) {
    if (!Number.isSafeInteger(ld) || ld! < rows) {
      throw new TensorqError("leading dimension smaller than the stored rows", {
        op: "ltMatmulPlan",
        kind: "argument",
        argument: name,
        expected: `an integer ≥ ${rows}`,
        actual: String(ld),
      });
    }
  }
  for (const name of ["aType", "bType", "cType", "dType"] as const) {
    if (TYPE_BYTES[spec[name]] === undefined) {
      throw new TensorqError("unsupported matrix type", {
        op: "ltMatmulPlan",
        kind: "unsupported",
        argument: name,
        expected: "a CUDA_R_* real type",
        actual: String(spec[name]),
      });
    }
  }
  if (spec.batch) {
    positive("batch.count", spec.batch.count);
    if (spec.batch.count > 0x7fff_ffff) {
      throw new TensorqError("too many batched products", {
        op: "ltMatmulPlan",
        kind: "argument",
        argument: "batch.count",
        expected: "at most 2^31 − 1",
        actual: String(spec.batch.count),
      });
    }
  }
  // cuBLASLt takes a float32 bias with fp8 inputs and float32 output, then reads it as bf16
  // (seen on an H200 with cuBLASLt 13.1: wrong values, no error). Its fp8 table allows only a
  // bf16 bias there, so anything else is refused here.
  const fp8 = spec.aType === CUDA_R_8F_E4M3 || spec.aType === CUDA_R_8F_E5M2;
  const biasEpilogue =
    ((spec.epilogue ?? CUBLASLT_EPILOGUE_DEFAULT) & CUBLASLT_EPILOGUE_BIAS) !== 0;
  if (fp8 && spec.dType === CUDA_R_32F && biasEpilogue && spec.biasType !== CUDA_R_16BF) {
    throw new TensorqError("an fp8 product with float32 output takes only a bfloat16 bias", {
      op: "ltMatmulPlan",
      kind: "unsupported",
      argument: "biasType",
      expected: `CUDA_R_16BF (${CUDA_R_16BF})`,
      actual: String(spec.biasType ?? "the default (the type of D)"),
    });
  }
  for (const [name, v] of Object.entries(spec.alignment ?? {})) {
    if (v !== undefined && (!Number.isInteger(v) || v < 1 || (v & (v - 1)) !== 0)) {
      throw new TensorqError("alignment must be a power of two", {
        op: "ltMatmulPlan",
        kind: "argument",
        argument: `alignment.${name}`,
        expected: "1, 2, 4, … 256",
        actual: String(v),
      });
    }
  }
}

/** The normalized problem: everything that determines descriptors and the algorithm. */
interface Problem {
  device: number;
  transA: boolean;
  transB: boolean;
  m: number;
  n: number;
  k: number;
  lda: number;
  ldb: number;
  ldc: number;
  ldd: number;
  aType: number;
  bType: number;
  cType: number;
  dType: number;
  computeType: number;
  scaleType: number;
  count: number;
  strideA: number;
  strideB: number;
  strideC: number;
  strideD: number;
  epilogue: number;
  biasType: number | null;
  usesBias: boolean;
  usesAScale: boolean;
  usesBScale: boolean;
  usesDScale: boolean;
  aScaleMode: number | null;
  bScaleMode: number | null;
  fastAccum: boolean | null;
  alignA: number;
  alignB: number;
  alignC: number;
  alignD: number;
  reductionSchemeMask: number;
  autotune: boolean;
  algorithmIndex: number | null;
}

function normalize(device: CudaDevice, spec: LtMatmulSpec): Problem {
  const batch = spec.batch && spec.batch.count > 1 ? spec.batch : undefined;
  const epilogue = spec.epilogue ?? CUBLASLT_EPILOGUE_DEFAULT;
  const align = (v: number | undefined): number => Math.min(v ?? MAX_ALIGNMENT, MAX_ALIGNMENT);
  return {
    device: device.index,
    transA: spec.transA,
    transB: spec.transB,
    m: spec.m,
    n: spec.n,
    k: spec.k,
    lda: spec.lda,
    ldb: spec.ldb,
    ldc: spec.ldc,
    ldd: spec.ldd ?? spec.ldc,
    aType: spec.aType,
    bType: spec.bType,
    cType: spec.cType,
    dType: spec.dType,
    computeType: spec.computeType,
    scaleType: spec.scaleType,
    count: batch?.count ?? 1,
    strideA: batch?.strideA ?? 0,
    strideB: batch?.strideB ?? 0,
    strideC: batch?.strideC ?? 0,
    strideD: batch ? batch.strideD ?? batch.strideC : 0,
    epilogue,
    biasType: spec.biasType ?? null,
    // The forward bias epilogues (BIAS, RELU_BIAS, GELU_BIAS) all have the BIAS bit.
    usesBias: (epilogue & CUBLASLT_EPILOGUE_BIAS) !== 0,
    usesAScale: spec.aScalePointer !== undefined || spec.aScaleMode !== undefined,
    usesBScale: spec.bScalePointer !== undefined || spec.bScaleMode !== undefined,
    usesDScale: spec.dScalePointer !== undefined,
    aScaleMode: spec.aScaleMode ?? null,
    bScaleMode: spec.bScaleMode ?? null,
    fastAccum: spec.fastAccum ?? null,
    alignA: align(spec.alignment?.a),
    alignB: align(spec.alignment?.b),
    alignC: align(spec.alignment?.c),
    alignD: align(spec.alignment?.d),
    reductionSchemeMask: spec.reductionSchemeMask ??
      (WIDE_OUTPUT_TYPES.has(spec.dType)
        ? LT_REDUCTION_SCHEME_ALL
        : LT_REDUCTION_SCHEME_COMPUTE_TYPE),
    autotune: spec.autotune ??
      2 * spec.m * spec.n * spec.k * (batch?.count ?? 1) >= LT_AUTOTUNE_MIN_FLOPS,
    algorithmIndex: spec.algorithmIndex ?? null,
  };
}

/** Elements spanned by a (possibly batched) column-major matrix. */
function spanElements(rows: number, cols: number, ld: number, count: number, stride: number) {
  return (count - 1) * stride + ld * (cols - 1) + rows;
}

/** Elements each of A, B and D of `spec` spans, batches included (for scratch operands). */
export function ltOperandElements(spec: LtMatmulSpec): { a: number; b: number; d: number } {
  const count = spec.batch?.count ?? 1;
  const [aRows, aCols] = spec.transA ? [spec.k, spec.m] : [spec.m, spec.k];
  const [bRows, bCols] = spec.transB ? [spec.n, spec.k] : [spec.k, spec.n];
  const strideD = spec.batch?.strideD ?? spec.batch?.strideC ?? 0;
  return {
    a: spanElements(aRows, aCols, spec.lda, count, spec.batch?.strideA ?? 0),
    b: spanElements(bRows, bCols, spec.ldb, count, spec.batch?.strideB ?? 0),
    d: spanElements(spec.m, spec.n, spec.ldd ?? spec.ldc, count, strideD),
  };
}

/** Descriptors, layouts and the chosen algorithm of one problem (shared through the cache). */
class LtMatmulCore {
  readonly key: string;
  readonly problem: Problem;
  readonly device: CudaDevice;
  readonly algorithm: LtAlgorithmChoice;
  readonly #state: LtDeviceState;
  readonly #desc: Deno.PointerValue;
  readonly #aLayout: Deno.PointerValue;
  readonly #bLayout: Deno.PointerValue;
  readonly #cLayout: Deno.PointerValue;
  readonly #dLayout: Deno.PointerValue;
  // alpha at byte 0, beta at byte 16 (room for any scale type); host pointer mode reads them
  // during each cublasLtMatmul call.
  readonly #scalars = new DataView(new ArrayBuffer(32));
  readonly #alphaPointer: Deno.PointerValue;
  readonly #betaPointer: Deno.PointerValue;
  #alpha = NaN;
  #beta = NaN;
  readonly #algo = new Uint8Array(new ArrayBuffer(HEURISTIC_RESULT_LAYOUT.algoBytes));
  readonly #algoPointer: Deno.PointerValue;
  /** Last value set for each pointer attribute of the descriptor. */
  readonly #pointerAttributes = new Map<number, bigint>();

  constructor(device: CudaDevice, key: string, p: Problem) {
    this.key = key;
    this.problem = p;
    this.device = device;
    this.#state = deviceState(device);
    device.makeCurrent();
    const scalarsBase = Deno.UnsafePointer.of(this.#scalars.buffer);
    this.#alphaPointer = scalarsBase;
    this.#betaPointer = Deno.UnsafePointer.offset(scalarsBase!, 16);
    this.#algoPointer = Deno.UnsafePointer.of(this.#algo);
    encodeScalar(this.#scalars, 0, p.scaleType, 1); // rejects unknown scale types early

    this.#desc = ltMatmulDescCreate(p.computeType, p.scaleType);
    // Until the constructor returns the core is not cached: on an error (a problem cuBLASLt
    // refuses, say) its descriptor and layouts are destroyed here, or they would leak.
    const made: Deno.PointerValue[] = [];
    try {
      const desc = this.#desc;
      ltSetMatmulDescAttribute(desc, CUBLASLT_MATMUL_DESC_POINTER_MODE, CUBLASLT_POINTER_MODE_HOST);
      ltSetMatmulDescAttribute(
        desc,
        CUBLASLT_MATMUL_DESC_TRANSA,
        p.transA ? CUBLAS_OP_T : CUBLAS_OP_N,
      );
      ltSetMatmulDescAttribute(
        desc,
        CUBLASLT_MATMUL_DESC_TRANSB,
        p.transB ? CUBLAS_OP_T : CUBLAS_OP_N,
      );
      if (p.epilogue !== CUBLASLT_EPILOGUE_DEFAULT) {
        ltSetMatmulDescAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, p.epilogue);
      }
      if (p.biasType !== null) {
        ltSetMatmulDescAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, p.biasType);
      }
      if (p.aScaleMode !== null) {
        ltSetMatmulDescAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, p.aScaleMode);
      }
      if (p.bScaleMode !== null) {
        ltSetMatmulDescAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, p.bScaleMode);
      }
      if (p.fastAccum !== null) {
        ltSetMatmulDescAttribute(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, p.fastAccum ? 1 : 0);
      }

      const layout = (type: number, rows: number, cols: number, ld: number, stride: number) => {
        const l = ltMatrixLayoutCreate(type, rows, cols, ld);
        made.push(l);
        if (p.count > 1) {
          ltSetMatrixLayoutAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, p.count);
          ltSetMatrixLayoutAttribute(
            l,
            CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
            BigInt(stride),
          );
        }
        return l;
      };
      const [aRows, aCols] = p.transA ? [p.k, p.m] : [p.m, p.k];
      const [bRows, bCols] = p.transB ? [p.n, p.k] : [p.k, p.n];
      this.#aLayout = layout(p.aType, aRows, aCols, p.lda, p.strideA);
      this.#bLayout = layout(p.bType, bRows, bCols, p.ldb, p.strideB);
      this.#cLayout = layout(p.cType, p.m, p.n, p.ldc, p.strideC);
      // One layout for C and D when they match: C may then alias D.
      this.#dLayout = this.#cAliasesD()
        ? this.#cLayout
        : layout(p.dType, p.m, p.n, p.ldd, p.strideD);

      this.algorithm = this.#chooseAlgorithm();
    } catch (e) {
      try {
        for (const l of made) ltMatrixLayoutDestroy(l);
        ltMatmulDescDestroy(this.#desc);
      } catch {
        // the original error is the one to report
      }
      throw e;
    }
  }

  #cAliasesD(): boolean {
    const p = this.problem;
    return p.cType === p.dType && p.ldc === p.ldd && p.strideC === p.strideD;
  }

  /** Sets the scalars and enqueues one product with algorithm `algo`; returns the status. */
  #call(
    algo: Deno.PointerValue,
    a: Deno.PointerValue,
    b: Deno.PointerValue,
    c: Deno.PointerValue,
    d: Deno.PointerValue,
    alpha: number,
    beta: number,
  ): number {
    if (alpha !== this.#alpha) {
      encodeScalar(this.#scalars, 0, this.problem.scaleType, alpha);
      this.#alpha = alpha;
    }
    if (beta !== this.#beta) {
      encodeScalar(this.#scalars, 16, this.problem.scaleType, beta);
      this.#beta = beta;
    }
    const s = this.#state;
    return cublasLt().cublasLtMatmul(
      s.handle,
      this.#desc,
      this.#alphaPointer,
      a,
      this.#aLayout,
      b,
      this.#bLayout,
      this.#betaPointer,
      c,
      this.#cLayout,
      d,
      this.#dLayout,
      algo,
      s.workspacePointer,
      BigInt(LT_WORKSPACE_BYTES),
      this.device.stream,
    );
  }

  /** Points a descriptor pointer attribute at `value` (null when undefined) unless it already does. */
  setPointerAttribute(attribute: number, value: LtPointer | undefined): void {
    // Unset means null: a plan is shared, and a pointer an earlier run set must not linger
    // (cuBLASLt refuses a bias pointer for some types even when the epilogue ignores it).
    const address = value === undefined ? 0n : addressOf(value);
    // A new descriptor's pointers are null.
    if ((this.#pointerAttributes.get(attribute) ?? 0n) === address) return;
    ltSetMatmulDescAttribute(this.#desc, attribute, address);
    this.#pointerAttributes.set(attribute, address);
  }

  run(
    a: LtPointer,
    b: LtPointer,
    c: LtPointer,
    d: LtPointer,
    alpha: number,
    beta: number,
    pointers: LtMatmulPointers,
  ): void {
    this.device.makeCurrent();
    this.setPointerAttribute(CUBLASLT_MATMUL_DESC_BIAS_POINTER, pointers.bias);
    this.setPointerAttribute(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, pointers.aScale);
    this.setPointerAttribute(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, pointers.bScale);
    this.setPointerAttribute(CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, pointers.dScale);
    const status = this.#call(
      this.#algoPointer,
      toPointer(a),
      toPointer(b),
      toPointer(c),
      toPointer(d),
      alpha,
      beta,
    );
    checkCublas(status, "cublasLtMatmul");
  }

  #describe(): string {
    const p = this.problem;
    return `${p.transA ? "T" : "N"}${p.transB ? "T" : "N"} m=${p.m} n=${p.n} k=${p.k} ` +
      `types A=${p.aType} B=${p.bType} C=${p.cType} D=${p.dType} compute=${p.computeType}` +
      (p.count > 1 ? ` batch=${p.count}` : "") +
      (p.epilogue !== CUBLASLT_EPILOGUE_DEFAULT ? ` epilogue=${p.epilogue}` : "");
  }

  #chooseAlgorithm(): LtAlgorithmChoice {
    const p = this.problem;
    const lt = cublasLt();
    const preference = ltMatmulPreferenceCreate();
    const results = allocHeuristicResults(LT_HEURISTIC_CANDIDATES);
    let found: number;
    let heuristicScratch: CudaBuffer | undefined;
    try {
      ltSetMatmulPreferenceAttribute(
        preference,
        CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
        LT_WORKSPACE_BYTES,
      );
      // The heuristic then excludes kernels that need more alignment than the pointers have.
      ltSetMatmulPreferenceAttribute(
        preference,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
        p.alignA,
      );
      ltSetMatmulPreferenceAttribute(
        preference,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        p.alignB,
      );
      ltSetMatmulPreferenceAttribute(
        preference,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
        p.alignC,
      );
      ltSetMatmulPreferenceAttribute(
        preference,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
        p.alignD,
      );
      const mask = new Uint32Array(new ArrayBuffer(4));
      mask[0] = p.reductionSchemeMask;
      checkCublas(
        lt.cublasLtMatmulPreferenceSetAttribute(preference, PREF_REDUCTION_SCHEME_MASK, mask, 4n),
        "cublasLtMatmulPreferenceSetAttribute",
      );
      // Vector scale modes are offered only for a descriptor whose scale pointers are set:
      // point them (and the bias) at scratch memory while asking.
      if (p.usesAScale || p.usesBScale || p.usesBias) {
        heuristicScratch = CudaBuffer.allocate(this.device, "int8", vectorBytesOf(p));
        const at = heuristicScratch.address;
        if (p.usesBias) this.setPointerAttribute(CUBLASLT_MATMUL_DESC_BIAS_POINTER, at);
        if (p.usesAScale) this.setPointerAttribute(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, at);
        if (p.usesBScale) this.setPointerAttribute(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, at);
      }
      try {
        found = ltAlgoGetHeuristic(
          this.#state.handle,
          this.#desc,
          this.#aLayout,
          this.#bLayout,
          this.#cLayout,
          this.#dLayout,
          preference,
          results,
        );
      } catch (e) {
        throw new TensorqError(`cuBLASLt has no algorithm for ${this.#describe()}`, {
          op: "cublasLtMatmulAlgoGetHeuristic",
          kind: "unsupported",
          cause: e,
        });
      }
    } finally {
      if (heuristicScratch) {
        this.#clearPointerAttributes();
        heuristicScratch.dispose();
      }
      checkCublas(
        lt.cublasLtMatmulPreferenceDestroy(preference),
        "cublasLtMatmulPreferenceDestroy",
      );
    }
    const candidates: number[] = [];
    for (let i = 0; i < found; i++) {
      if (
        heuristicState(results, i) === CUBLAS_STATUS_SUCCESS &&
        heuristicWorkspaceSize(results, i) <= LT_WORKSPACE_BYTES
      ) candidates.push(i);
    }
    if (candidates.length === 0) {
      throw new TensorqError(`cuBLASLt has no algorithm for ${this.#describe()}`, {
        op: "cublasLtMatmulAlgoGetHeuristic",
        kind: "unsupported",
      });
    }
    /** The opaque algorithm of candidate `index`. */
    const algoOf = (index: number) => {
      const at = index * HEURISTIC_RESULT_LAYOUT.bytes + HEURISTIC_RESULT_LAYOUT.algoOffset;
      return results.subarray(at, at + HEURISTIC_RESULT_LAYOUT.algoBytes);
    };
    const keep = (
      index: number,
      ran: number,
      ms?: number,
      candidateMs?: number[],
    ): LtAlgorithmChoice => {
      this.#algo.set(algoOf(index));
      return {
        index,
        candidates: found,
        ran,
        ms,
        candidateMs,
        workspaceBytes: heuristicWorkspaceSize(results, index),
      };
    };
    if (p.algorithmIndex !== null) {
      if (!Number.isInteger(p.algorithmIndex) || p.algorithmIndex < 0) {
        throw new TensorqError(
          `algorithmIndex must be a non-negative integer, got ${p.algorithmIndex}`,
          { op: "cublasLtMatmulAlgoGetHeuristic", kind: "argument" },
        );
      }
      if (p.algorithmIndex >= candidates.length) {
        throw new TensorqError(
          `algorithmIndex ${p.algorithmIndex} is past the ${candidates.length} usable ` +
            `candidates cuBLASLt offers for ${this.#describe()}`,
          { op: "cublasLtMatmulAlgoGetHeuristic", kind: "unsupported" },
        );
      }
      return keep(candidates[p.algorithmIndex], 0);
    }
    // A pick saved by an earlier process, while the heuristic still offers its algorithm.
    if (p.autotune) {
      const saved = savedLtPick(this.device, this.key);
      if (saved && candidates.includes(saved.index) && hexOf(algoOf(saved.index)) === saved.algo) {
        return keep(saved.index, 0, saved.ms);
      }
    }
    // Timing synchronizes the stream, which a graph capture forbids: take the first pick.
    const capturing = streamCaptureStatus(this.device.stream) !== cudaStreamCaptureStatusNone;
    if (!p.autotune || capturing) return keep(candidates[0], 0);
    const choice = this.#time(results, candidates, keep);
    recordLtPick(this.device, this.key, {
      index: choice.index,
      algo: hexOf(algoOf(choice.index)),
      ms: choice.ms,
    });
    return choice;
  }

  /** Runs each candidate on scratch operands, times it, and keeps the fastest. */
  #time(
    results: Uint8Array<ArrayBuffer>,
    candidates: number[],
    keep: (index: number, ran: number, ms?: number, candidateMs?: number[]) => LtAlgorithmChoice,
  ): LtAlgorithmChoice {
    const p = this.problem;
    const device = this.device;
    const state = this.#state;
    while (state.events.length < 2 * LT_HEURISTIC_CANDIDATES * LT_TIMING_ROUNDS) {
      state.events.push(createEvent(cudaEventDefault));
    }
    const scratch: CudaBuffer[] = [];
    const fill = (bytes: number, randomType?: number): Deno.PointerValue => {
      const buf = CudaBuffer.allocate(device, "int8", Math.max(bytes, 16));
      scratch.push(buf);
      if (randomType !== undefined) {
        // A and B: pseudo-random values (the tensor cores' time and power depend on the data).
        // One block is generated and copied over the span.
        const block = randomOperandBytes(randomType, Math.min(buf.bytes, RANDOM_BLOCK_BYTES));
        for (let at = 0; at < buf.bytes; at += block.length) {
          const ptr = Deno.UnsafePointer.create(buf.address + BigInt(at));
          copyToDeviceAsync(ptr, block, device.stream, Math.min(block.length, buf.bytes - at));
        }
        return buf.pointer;
      }
      // 0x3c bytes are small finite non-zero values in every type (fp32 ≈ 0.0115, fp16 ≈ 1.06,
      // bf16 ≈ 0.0115, e4m3 1.5, int8 60): no NaN or denormal slow paths.
      checkCuda(
        cudart().cudaMemsetAsync(buf.pointer, 0x3c, BigInt(buf.bytes), device.stream),
        "cudaMemsetAsync",
      );
      return buf.pointer;
    };
    try {
      const [aRows, aCols] = p.transA ? [p.k, p.m] : [p.m, p.k];
      const [bRows, bCols] = p.transB ? [p.n, p.k] : [p.k, p.n];
      const aSpan = spanElements(aRows, aCols, p.lda, p.count, p.strideA);
      const bSpan = spanElements(bRows, bCols, p.ldb, p.count, p.strideB);
      const a = fill(aSpan * TYPE_BYTES[p.aType], p.aType);
      const b = fill(bSpan * TYPE_BYTES[p.bType], p.bType);
      const d = fill(spanElements(p.m, p.n, p.ldd, p.count, p.strideD) * TYPE_BYTES[p.dType]);
      const c = this.#cAliasesD()
        ? d
        : fill(spanElements(p.m, p.n, p.ldc, p.count, p.strideC) * TYPE_BYTES[p.cType]);
      const vectorBytes = vectorBytesOf(p);
      if (p.usesBias) {
        this.setPointerAttribute(CUBLASLT_MATMUL_DESC_BIAS_POINTER, fill(vectorBytes));
      }
      if (p.usesAScale) {
        this.setPointerAttribute(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, fill(vectorBytes));
      }
      if (p.usesBScale) {
        this.setPointerAttribute(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, fill(vectorBytes));
      }
      if (p.usesDScale) this.setPointerAttribute(CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, fill(16));

      const timed: { index: number; algo: Deno.PointerValue; slots: number[] }[] = [];
      let lastStatus = CUBLAS_STATUS_SUCCESS;
      // The first call probes support (an unsupported combination fails only here) and warms
      // up (lazy kernel loading); then every supported candidate is timed once a round.
      for (const index of candidates) {
        const algo = heuristicAlgo(results, index);
        const status = this.#call(algo, a, b, c, d, 1, 0);
        if (status === CUBLAS_STATUS_SUCCESS) timed.push({ index, algo, slots: [] });
        else lastStatus = status;
      }
      const flushBytes = LT_FLUSH_L2_TIMES * Math.max(device.l2Bytes, 2 ** 20);
      const bBytes = bSpan * TYPE_BYTES[p.bType];
      // Where memory is too short for the flush buffers, candidates are timed warm.
      const flush = tryAllocate(device, flushBytes);
      const bCopy = flush && tryAllocate(device, Math.max(bBytes, 16));
      for (const buf of [flush, bCopy]) if (buf) scratch.push(buf);
      let slot = 0;
      for (let round = 0; round < LT_TIMING_ROUNDS && timed.length > 0; round++) {
        for (const t of timed) {
          if (flush && bCopy) {
            checkCuda(
              cudart().cudaMemsetAsync(
                flush.pointer,
                slot & 0xff,
                BigInt(flushBytes),
                device.stream,
              ),
              "cudaMemsetAsync",
            );
            checkCuda(
              cudart().cudaMemcpyAsync(
                bCopy.pointer,
                b,
                BigInt(bBytes),
                cudaMemcpyDeviceToDevice,
                device.stream,
              ),
              "cudaMemcpyAsync",
            );
          }
          const [start, end] = [state.events[2 * slot], state.events[2 * slot + 1]];
          checkCuda(cudart().cudaEventRecord(start, device.stream), "cudaEventRecord");
          const status = this.#call(t.algo, a, b, c, d, 1, 0);
          checkCuda(cudart().cudaEventRecord(end, device.stream), "cudaEventRecord");
          checkCublas(status, "cublasLtMatmul");
          t.slots.push(slot++);
        }
      }
      device.synchronize();
      if (timed.length === 0) {
        let cause: unknown;
        try {
          checkCublas(lastStatus, "cublasLtMatmul");
        } catch (e) {
          cause = e;
        }
        throw new TensorqError(`every cuBLASLt candidate failed for ${this.#describe()}`, {
          op: "cublasLtMatmul",
          kind: "unsupported",
          cause,
        });
      }
      let best = timed[0];
      let bestMs = Infinity;
      const candidateMs = Array.from({ length: LT_HEURISTIC_CANDIDATES }, () => NaN);
      for (const t of timed) {
        for (const at of t.slots) {
          const ms = eventElapsedMs(state.events[2 * at], state.events[2 * at + 1]);
          if (!(ms >= candidateMs[t.index])) candidateMs[t.index] = ms;
          if (ms < bestMs) {
            bestMs = ms;
            best = t;
          }
        }
      }
      return keep(best.index, timed.length, bestMs, candidateMs);
    } finally {
      this.#clearPointerAttributes();
      for (const buf of scratch) buf.dispose();
    }
  }

  /** Points the bias and scale attributes back at nothing (scratch must not outlive them). */
  #clearPointerAttributes(): void {
    for (
      const attribute of [
        CUBLASLT_MATMUL_DESC_BIAS_POINTER,
        CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
        CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
        CUBLASLT_MATMUL_DESC_D_SCALE_POINTER,
      ]
    ) {
      if (this.#pointerAttributes.has(attribute)) this.setPointerAttribute(attribute, 0n);
    }
  }
}

/** `bytes` of device memory, or undefined when the device is out of memory. */
function tryAllocate(device: CudaDevice, bytes: number): CudaBuffer | undefined {
  try {
    return CudaBuffer.allocate(device, "int8", bytes);
  } catch (e) {
    if (e instanceof TensorqError && e.op === "cudaMallocAsync") return undefined;
    throw e;
  }
}

/** Bytes of a scratch bias or scale vector: enough for the largest scale mode (block scales
 * of 16 along k). */
function vectorBytesOf(p: Problem): number {
  return Math.ceil(Math.max(p.m, p.n) / 128) * 128 * (Math.ceil(p.k / 16) + 4) * 4;
}

const cores = new Map<string, LtMatmulCore>();

/** Number of distinct cuBLASLt problems prepared (and tuned) so far in this process. */
export function ltMatmulCacheSize(): number {
  return cores.size;
}

/** The problems prepared so far in this process (their normalized specs) and the algorithm
 * each uses: for seeing what a model's products chose. */
export function ltMatmulChoices(): {
  problem: Readonly<Record<string, unknown>>;
  algorithm: LtAlgorithmChoice;
}[] {
  return [...cores.values()].map((c) => ({
    problem: { ...c.problem },
    algorithm: { ...c.algorithm },
  }));
}

/**
 * Prepares a cuBLASLt product on `device`. The first request for a problem creates its
 * descriptors and layouts, asks the heuristic for up to {@link LT_HEURISTIC_CANDIDATES}
 * algorithms (excluding those that need more alignment than `spec.alignment` promises) and,
 * when the problem is autotuned (`spec.autotune`), runs each once on pseudo-random scratch
 * operands, then times every candidate in
 * {@link LT_TIMING_ROUNDS} round-robin rounds with CUDA events (each run from an L2 flushed
 * of A and holding B: {@link LT_FLUSH_L2_TIMES}) and keeps the fastest (candidates that fail in
 * `cublasLtMatmul` are skipped). Later requests for the same problem
 * reuse all of it. Bias and scale pointers are not part of the problem: they are set on the
 * descriptor at each run, from `run`'s `pointers` or else the spec's.
 */
export function ltMatmulPlan(device: CudaDevice, spec: LtMatmulSpec): LtMatmulPlan {
  checkSpec(spec);
  const problem = normalize(device, spec);
  const key = JSON.stringify(problem);
  let core = cores.get(key);
  if (!core) {
    core = new LtMatmulCore(device, key, problem);
    cores.set(key, core);
  }
  const shared = core;
  const defaults: LtMatmulPointers = {
    bias: spec.biasPointer,
    aScale: spec.aScalePointer,
    bScale: spec.bScalePointer,
    dScale: spec.dScalePointer,
  };
  let current = defaults;
  return {
    key,
    algorithm: shared.algorithm,
    run(a, b, c, d, alpha = 1, beta = 0, pointers?: LtMatmulPointers): void {
      if (pointers) current = { ...current, ...pointers };
      shared.run(a, b, c, d, alpha, beta, current);
    },
  };
}

/** Bytes of the random block {@link randomOperandBytes} makes for an autotune operand. */
const RANDOM_BLOCK_BYTES = 1 << 20;

/**
 * `bytes` bytes of pseudo-random elements (xorshift32 from `seed`) of the `CUDA_R_*` type
 * `type`: floats of magnitude in [0.5, 1) with random signs and mantissas (no NaN, infinity or
 * subnormal), and random codes of the integer types.
 */
export function randomOperandBytes(
  type: number,
  bytes: number,
  seed = 2463534242,
): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(bytes);
  const words = new Uint32Array(out.buffer, 0, bytes >> 2);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    words[i] = s >>> 0;
  }
  // Keep the sign and mantissa bits; set the exponent to that of 0.5.
  const masked = (view: Uint8Array | Uint16Array | Uint32Array, keep: number, exponent: number) => {
    for (let i = 0; i < view.length; i++) view[i] = (view[i] & keep) | exponent;
  };
  switch (type) {
    case CUDA_R_32F:
      masked(words, 0x807fffff, 0x3f000000);
      break;
    case CUDA_R_16F:
      masked(new Uint16Array(out.buffer, 0, bytes >> 1), 0x83ff, 0x3800);
      break;
    case CUDA_R_16BF:
      masked(new Uint16Array(out.buffer, 0, bytes >> 1), 0x807f, 0x3f00);
      break;
    case CUDA_R_8F_E4M3:
      masked(out, 0x87, 0x30);
      break;
    case CUDA_R_8F_E5M2:
      masked(out, 0x83, 0x38);
      break;
    case CUDA_R_64F:
      // Bytes 6 and 7 of each double hold its sign and exponent: 0.5 to 1 as well.
      for (let i = 6; i + 1 < bytes; i += 8) {
        out[i] = (out[i] & 0x0f) | 0xe0;
        out[i + 1] = (out[i + 1] & 0x80) | 0x3f;
      }
      break;
  }
  return out;
}
