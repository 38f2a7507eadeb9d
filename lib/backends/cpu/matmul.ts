/**
 * CPU kernel of matmul (rule in lib/ops/matmul.ts). Products accumulate in float64 and round
 * once to the output dtype.
 *
 * Layout: B is transposed once into float64 rows so every output element is a dot product of
 * two contiguous rows, summed in order from the first term. From 8 rows of A on, the product
 * runs on WebAssembly SIMD (lib/backends/cpu/gemm_wasm.ts), which computes the same sums bit
 * for bit; below that a layer's cached weight (`persistent`) runs row by row over panels kept
 * in WebAssembly memory (the same sums again). Otherwise, or where WebAssembly cannot run it,
 * the plain loop here does: a 2×4 block of outputs at a time (8 accumulators, 6 loads per 8
 * multiply-adds), a last odd row 8 outputs at a time, columns in blocks so the rows of Bᵀ in
 * use stay in cache while all rows of A pass over them.
 * @module
 */
import { matmulGeometry } from "../../ops/matmul.ts";
import { numel } from "../../shape.ts";
import { registerCpuKernel } from "./backend.ts";
import { wasmGemm, wasmGemv } from "./gemm_wasm.ts";
import { broadcastIndex, outArray, read } from "./util.ts";

/** Columns of the output (rows of Bᵀ) per cache block: 64 rows × K float64 fits in L2. */
const COLUMN_BLOCK = 64;

/** Rows of A from which the WebAssembly product is faster, its copies included (measured). */
const WASM_MIN_ROWS = 8;

/**
 * `out[outOff + i·n + j] = Σ_k a[aOff + i·k + kk] · bt[bOff + j·k + kk]` for an m×k `a` and an
 * n×k `bt` (B transposed), each sum in order of kk from 0. `persistent`: `bt` is exactly this
 * n×k matrix and never changes (a layer's cached weight), so it may be packed once and kept.
 */
export function gemm(
  a: Float64Array,
  aOff: number,
  bt: Float64Array,
  bOff: number,
  out: Float32Array | Float64Array,
  outOff: number,
  m: number,
  n: number,
  k: number,
  persistent = false,
): void {
  if (m >= WASM_MIN_ROWS) {
    if (wasmGemm(a, aOff, bt, bOff, out, outOff, m, n, k)) return;
  } else if (persistent && bOff === 0 && wasmGemv(a, aOff, bt, out, outOff, m, n, k)) return;
  gemmLoop(a, aOff, bt, bOff, out, outOff, m, n, k);
}

/** {@link gemm} in plain loops: the same sums, for few rows or without WebAssembly. */
export function gemmLoop(
  a: Float64Array,
  aOff: number,
  bt: Float64Array,
  bOff: number,
  out: Float32Array | Float64Array,
  outOff: number,
  m: number,
  n: number,
  k: number,
): void {
  const m2 = m - (m % 2);
  for (let j0 = 0; j0 < n; j0 += COLUMN_BLOCK) {
    const j1 = Math.min(n, j0 + COLUMN_BLOCK);
    const j4 = j0 + ((j1 - j0) - ((j1 - j0) % 4));
    for (let i = 0; i < m2; i += 2) {
      const r0 = aOff + i * k, r1 = r0 + k;
      const o0 = outOff + i * n, o1 = o0 + n;
      let j = j0;
      for (; j < j4; j += 4) {
        const c0 = bOff + j * k, c1 = c0 + k, c2 = c1 + k, c3 = c2 + k;
        let s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
        for (let p = 0; p < k; p++) {
          const x0 = a[r0 + p], x1 = a[r1 + p];
          const y0 = bt[c0 + p], y1 = bt[c1 + p], y2 = bt[c2 + p], y3 = bt[c3 + p];
          s00 += x0 * y0;
          s01 += x0 * y1;
          s02 += x0 * y2;
          s03 += x0 * y3;
          s10 += x1 * y0;
          s11 += x1 * y1;
          s12 += x1 * y2;
          s13 += x1 * y3;
        }
        out[o0 + j] = s00;
        out[o0 + j + 1] = s01;
        out[o0 + j + 2] = s02;
        out[o0 + j + 3] = s03;
        out[o1 + j] = s10;
        out[o1 + j + 1] = s11;
        out[o1 + j + 2] = s12;
        out[o1 + j + 3] = s13;
      }
      for (; j < j1; j++) {
        const c = bOff + j * k;
        let s0 = 0, s1 = 0;
        for (let p = 0; p < k; p++) {
          const y = bt[c + p];
          s0 += a[r0 + p] * y;
          s1 += a[r1 + p] * y;
        }
        out[o0 + j] = s0;
        out[o1 + j] = s1;
      }
    }
    if (m2 < m) rowTimesColumns(a, aOff + m2 * k, bt, bOff, out, outOff + m2 * n, j0, j1, k);
  }
}

/**
 * One row of A against rows j0..j1 of Bᵀ (a decode step's product): eight outputs at a time, so
 * that eight independent sums hide the adds' latency (2.5× one sum at a time).
 */
function rowTimesColumns(
  a: Float64Array,
  r: number,
  bt: Float64Array,
  bOff: number,
  out: Float32Array | Float64Array,
  o: number,
  j0: number,
  j1: number,
  k: number,
): void {
  let j = j0;
  for (; j + 8 <= j1; j += 8) {
    const c0 = bOff + j * k, c1 = c0 + k, c2 = c1 + k, c3 = c2 + k;
    const c4 = c3 + k, c5 = c4 + k, c6 = c5 + k, c7 = c6 + k;
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    for (let p = 0; p < k; p++) {
      const x = a[r + p];
      s0 += x * bt[c0 + p];
      s1 += x * bt[c1 + p];
      s2 += x * bt[c2 + p];
      s3 += x * bt[c3 + p];
      s4 += x * bt[c4 + p];
      s5 += x * bt[c5 + p];
      s6 += x * bt[c6 + p];
      s7 += x * bt[c7 + p];
    }
    out[o + j] = s0;
    out[o + j + 1] = s1;
    out[o + j + 2] = s2;
    out[o + j + 3] = s3;
    out[o + j + 4] = s4;
    out[o + j + 5] = s5;
    out[o + j + 6] = s6;
    out[o + j + 7] = s7;
  }
  for (; j < j1; j++) {
    const c = bOff + j * k;
    let s = 0;
    for (let p = 0; p < k; p++) s += a[r + p] * bt[c + p];
    out[o + j] = s;
  }
}

registerCpuKernel("matmul", ([sa, sb], ctx) => {
  const [ia, ib] = ctx.inputs;
  const { m, n, k, aBatch, bBatch, batch } = matmulGeometry(ia.shape, ib.shape);
  const batches = numel(batch);
  const out = outArray(ctx.out.dtype, batches * m * n);
  if (out.values.length === 0) return out.finish();
  const a = Float64Array.from(read(ia.dtype, sa));
  // Bᵀ of every matrix of b, in float64 (exact: inputs are float32 or narrower).
  const b = read(ib.dtype, sb);
  const bt = new Float64Array(b.length);
  const bMatrices = b.length / (k * n || 1);
  for (let q = 0; q < bMatrices; q++) {
    const off = q * k * n;
    for (let p = 0; p < k; p++) {
      for (let j = 0; j < n; j++) bt[off + j * k + p] = b[off + p * n + j];
    }
  }
  const aMap = broadcastIndex(aBatch, batch);
  const bMap = broadcastIndex(bBatch, batch);
  const values = out.values as Float32Array | Float64Array;
  for (let q = 0; q < batches; q++) {
    const qa = aMap ? aMap[q] : q, qb = bMap ? bMap[q] : q;
    gemm(a, qa * m * k, bt, qb * k * n, values, q * m * n, m, n, k);
  }
  return out.finish();
});
