/**
 * CUDA lowering of matmul on cuBLASLt (rule in lib/ops/matmul.ts, CPU kernel in
 * lib/backends/cpu/matmul.ts): NumPy semantics, float32 / float16 / bfloat16, accumulation in
 * float32 and one rounding to the output dtype.
 *
 * Row-major as column-major, without copies: a row-major `R × C` matrix (row stride `C`) read
 * column-major is its transpose, a `C × R` matrix with leading dimension `C`. So for row-major
 * `A[M, K]`, `B[K, N]`, `C[M, N]` the buffers hold, column-major, `Aᵀ` (K × M, ld K), `Bᵀ`
 * (N × K, ld N) and `Cᵀ` (N × M, ld N), and `C = A·B` is `Cᵀ = Bᵀ·Aᵀ`. cuBLASLt therefore gets
 * its A := our B's buffer (N × K, ld N, op N), its B := our A's buffer (K × M, ld K, op N), and
 * D := our C's buffer (N × M, ld N), with `m = N`, `n = M`, `k = K`.
 *
 * Batch dims (after NumPy broadcasting) become one strided-batched call when each operand's
 * batch index is a single stride (all its batch dims present: stride M·K or K·N; none or all
 * 1: stride 0). A batched A times an unbatched B needs no batching at all: the stacked rows of
 * A form one `(batch·M) × K` matrix. Partial broadcasting (`[2, 1, 3, 4] @ [5, 4, 2]`) loops
 * over the leading batch dims, one strided-batched call per group of trailing dims that do
 * have single strides, with pointer offsets; the alignment those offsets leave is reported to
 * the heuristic so it picks kernels that accept it.
 * @module
 */
import {
  CUBLAS_COMPUTE_32F,
  CUBLAS_COMPUTE_32F_FAST_TF32,
  CUDA_R_16BF,
  CUDA_R_16F,
  CUDA_R_32F,
} from "../../../ffi/cublaslt.ts";
import { checkCuda, cudart } from "../../../ffi/cudart.ts";
import type { DType } from "../../dtype.ts";
import { TensorqError } from "../../errors.ts";
import { matmulGeometry } from "../../ops/matmul.ts";
import { numel } from "../../shape.ts";
import { type LtMatmulPlan, ltMatmulPlan } from "./cublaslt.ts";
import type { CudaDevice } from "./device.ts";
import { type CudaKernelContext, type CudaLaunch, registerCudaKernel } from "./kernels.ts";
import type { CudaBuffer } from "./memory.ts";

let allowTF32 = false;

/**
 * Lets float32 matmuls use TF32 tensor cores (`CUBLAS_COMPUTE_32F_FAST_TF32`: inputs rounded
 * to 10 mantissa bits, about 1e-3 relative error) instead of exact float32 products (the
 * default). Takes effect at the next evaluation, also of plans lowered before.
 */
export function setAllowTF32(on: boolean): void {
  allowTF32 = on;
}

/** Whether float32 matmuls may use TF32 (see {@link setAllowTF32}). */
export function getAllowTF32(): boolean {
  return allowTF32;
}

const CUDA_TYPES: Partial<Record<DType, { type: number; bytes: number }>> = {
  float32: { type: CUDA_R_32F, bytes: 4 },
  float16: { type: CUDA_R_16F, bytes: 2 },
  bfloat16: { type: CUDA_R_16BF, bytes: 2 },
};

/** The largest power of two (≤ 256) dividing every byte offset. */
function alignmentOf(byteOffsets: Iterable<number>): number {
  let align = 256;
  for (const x of byteOffsets) {
    while (align > 1 && x % align !== 0) align /= 2;
  }
  return align;
}

/** How the broadcast batch is split into calls. */
interface BatchSplit {
  /** Products per call (the trailing batch dims that have single strides). */
  group: number;
  /** Element strides between products within a call (0: broadcast). */
  strideA: number;
  strideB: number;
  /** Element offsets of each call's first matrices (one entry per call). */
  offsetsA: number[];
  offsetsB: number[];
  offsetsOut: number[];
}

/**
 * Splits the broadcast batch dims `batch` into leading dims (looped over) and the longest run
 * of trailing dims in which each operand is either fully present or fully broadcast.
 */
function splitBatch(
  aBatch: readonly number[],
  bBatch: readonly number[],
  batch: readonly number[],
  aMatrix: number,
  bMatrix: number,
  outMatrix: number,
): BatchSplit {
  const rank = batch.length;
  const pad = (s: readonly number[]) => [...new Array<number>(rank - s.length).fill(1), ...s];
  const pa = pad(aBatch), pb = pad(bBatch);
  const full = (p: number[], from: number) => p.slice(from).every((d, j) => d === batch[from + j]);
  const none = (p: number[], from: number) => p.slice(from).every((d) => d === 1);
  let from = 0;
  while (
    from < rank && !((full(pa, from) || none(pa, from)) && (full(pb, from) || none(pb, from)))
  ) from++;
  const group = numel(batch.slice(from));
  const strideA = group > 1 && !none(pa, from) ? aMatrix : 0;
  const strideB = group > 1 && !none(pb, from) ? bMatrix : 0;
  // Matrix strides of each operand's own (padded) batch dims; broadcast dims contribute 0.
  const ownStrides = (p: number[]) => {
    const s = new Array<number>(rank);
    let acc = 1;
    for (let j = rank - 1; j >= 0; j--) {
      s[j] = p[j] === 1 ? 0 : acc;
      acc *= p[j];
    }
    return s;
  };
  const sa = ownStrides(pa), sb = ownStrides(pb);
  const calls = numel(batch.slice(0, from));
  const offsetsA: number[] = [], offsetsB: number[] = [], offsetsOut: number[] = [];
  const index = new Array<number>(from).fill(0);
  for (let c = 0; c < calls; c++) {
    let ia = 0, ib = 0;
    for (let j = 0; j < from; j++) {
      ia += index[j] * sa[j];
      ib += index[j] * sb[j];
    }
    offsetsA.push(ia * aMatrix);
    offsetsB.push(ib * bMatrix);
    offsetsOut.push(c * group * outMatrix);
    for (let j = from - 1; j >= 0; j--) {
      if (++index[j] < batch[j]) break;
      index[j] = 0;
    }
  }
  return { group, strideA, strideB, offsetsA, offsetsB, offsetsOut };
}

function lowerMatmul(ctx: CudaKernelContext): CudaLaunch {
  const device: CudaDevice = ctx.device;
  const [ia, ib] = ctx.inputs;
  const dtype = ctx.out.dtype;
  const cudaType = CUDA_TYPES[dtype];
  if (!cudaType || ia.dtype !== dtype || ib.dtype !== dtype) {
    throw new TensorqError("matmul on cuda needs float32, float16 or bfloat16 operands", {
      op: "matmul",
      kind: "dtype",
      expected: "float32, float16 or bfloat16 (one dtype)",
      actual: `${ia.dtype} @ ${ib.dtype} → ${dtype}`,
    });
  }
  // A 1-D a is a [1, K] row and a 1-D b a [K, 1] column: same memory, no copy.
  const { m, n, k, aBatch, bBatch, batch } = matmulGeometry(ia.shape, ib.shape);
  if (numel(ctx.out.shape) === 0) return () => {};
  if (k === 0) {
    // Empty sums: the output is zeros.
    return (out: CudaBuffer) => {
      checkCuda(
        cudart().cudaMemsetAsync(out.pointer, 0, BigInt(out.bytes), device.stream),
        "cudaMemsetAsync",
      );
    };
  }

  const split = splitBatch(aBatch, bBatch, batch, m * k, k * n, m * n);
  const es = cudaType.bytes;
  // Batched A times a shared B: one (group·M) × K product.
  const fold = split.group > 1 && split.strideB === 0 && split.strideA === m * k;
  const rows = fold ? split.group * m : m;
  const count = fold ? 1 : split.group;
  const strideBytes = (stride: number) => (count > 1 ? [stride * es] : []);
  // In cuBLASLt's terms A is our b, B is our a, C and D are our output. Bases are 256-byte
  // aligned (pool allocations); offsets and batch strides can only lower that.
  const outAlignment = alignmentOf([
    ...split.offsetsOut.map((o) => o * es),
    ...strideBytes(m * n),
  ]);
  const alignment = {
    a: alignmentOf([...split.offsetsB.map((o) => o * es), ...strideBytes(split.strideB)]),
    b: alignmentOf([...split.offsetsA.map((o) => o * es), ...strideBytes(split.strideA)]),
    c: outAlignment,
    d: outAlignment,
  };

  const makePlan = (tf32: boolean): LtMatmulPlan =>
    ltMatmulPlan(device, {
      transA: false,
      transB: false,
      m: n,
      n: rows,
      k,
      lda: n,
      ldb: k,
      ldc: n,
      aType: cudaType.type,
      bType: cudaType.type,
      cType: cudaType.type,
      dType: cudaType.type,
      computeType: tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
      scaleType: CUDA_R_32F,
      batch: count > 1
        ? { count, strideA: split.strideB, strideB: split.strideA, strideC: m * n }
        : undefined,
      alignment,
    });
  // Plans for exact float32 and for TF32, made when first needed (descriptors and algorithm
  // come from the shared cache after the first plan of a shape).
  const plans: (LtMatmulPlan | undefined)[] = [undefined, undefined];
  const plan = (): LtMatmulPlan => {
    const tf32 = dtype === "float32" && allowTF32;
    return plans[tf32 ? 1 : 0] ??= makePlan(tf32);
  };
  plan();

  const calls = split.offsetsOut.length;
  if (calls === 1 && split.offsetsA[0] === 0 && split.offsetsB[0] === 0) {
    return (out, [a, b]) => plan().run(b.address, a.address, out.address, out.address);
  }
  const offA = BigInt64Array.from(split.offsetsA, (o) => BigInt(o * es));
  const offB = BigInt64Array.from(split.offsetsB, (o) => BigInt(o * es));
  const offOut = BigInt64Array.from(split.offsetsOut, (o) => BigInt(o * es));
  return (out, [a, b]) => {
    const p = plan();
    for (let c = 0; c < calls; c++) {
      const d = out.address + offOut[c];
      p.run(b.address + offB[c], a.address + offA[c], d, d);
    }
  };
}

registerCudaKernel("matmul", lowerMatmul);
