/**
 * The float64 matrix product on WebAssembly SIMD (kernels/gemm_f64.wat): the same sums as the
 * plain loop of lib/backends/cpu/matmul.ts, bit for bit, about 2.5 times as fast. Operands are
 * copied into the module's memory in blocks of bounded size (at most 32 MiB in all, kept for
 * the process): rows of A, and columns of Bᵀ packed as panels of four; rows and columns past a
 * multiple of four are padding, computed and dropped.
 * @module
 */
import { Buffer } from "node:buffer";
import { wasmBase64 } from "../../../kernels/wasm/gemm_f64.ts";

/** Values of the A and output blocks, and of the B block (float64 each). */
const A_BLOCK = 1 << 20;
const B_BLOCK = 1 << 21;

interface GemmModule {
  memory: WebAssembly.Memory;
  gemm: (a: number, b: number, out: number, m: number, n: number, k: number) => void;
}

let loaded: GemmModule | null | undefined;

/** The instantiated module, or null where WebAssembly SIMD is unavailable. */
function gemmModule(): GemmModule | null {
  if (loaded !== undefined) return loaded;
  try {
    const bytes = new Uint8Array(Buffer.from(wasmBase64, "base64"));
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), {});
    const exports = instance.exports as unknown as GemmModule;
    loaded = { memory: exports.memory, gemm: exports.gemm };
  } catch {
    loaded = null;
  }
  return loaded;
}

const roundUp4 = (v: number) => (v + 3) & ~3;
const roundDown4 = (v: number) => v & ~3;

/**
 * `out[outOff + i·n + j] = Σ_k a[aOff + i·k + p] · bt[bOff + j·k + p]` as matmul.ts's `gemm`
 * defines it, on WebAssembly. Returns false, having done nothing, where it cannot run (no
 * WebAssembly SIMD, or rows too long for its blocks).
 */
export function wasmGemm(
  a: Float64Array,
  aOff: number,
  bt: Float64Array,
  bOff: number,
  out: Float32Array | Float64Array,
  outOff: number,
  m: number,
  n: number,
  k: number,
): boolean {
  if (k === 0 || 4 * k > B_BLOCK) return false;
  const mod = gemmModule();
  if (!mod) return false;
  const nb = Math.min(roundUp4(n), Math.max(4, roundDown4(Math.floor(B_BLOCK / k))));
  const mb = Math.min(roundUp4(m), Math.max(4, roundDown4(Math.floor(A_BLOCK / Math.max(k, nb)))));
  // Layout in the module's memory: the A block, the B block, the output block.
  const aAt = 0, bAt = mb * k, oAt = bAt + nb * k;
  const bytes = (oAt + mb * nb) * 8;
  const have = mod.memory.buffer.byteLength;
  if (have < bytes) mod.memory.grow(Math.ceil((bytes - have) / 65536));
  const heap = new Float64Array(mod.memory.buffer);
  for (let j0 = 0; j0 < n; j0 += nb) {
    const cols = Math.min(nb, n - j0), colsPad = roundUp4(cols);
    // Panel q holds columns j0 + 4q .. j0 + 4q + 3, row p of it at 4p.
    for (let j = 0; j < cols; j += 4) {
      const s0 = bOff + (j0 + j) * k;
      let d = bAt + j * k;
      if (j + 4 <= cols) {
        const s1 = s0 + k, s2 = s1 + k, s3 = s2 + k;
        for (let p = 0; p < k; p++, d += 4) {
          heap[d] = bt[s0 + p];
          heap[d + 1] = bt[s1 + p];
          heap[d + 2] = bt[s2 + p];
          heap[d + 3] = bt[s3 + p];
        }
      } else {
        for (let c = 0; c < cols - j; c++) {
          for (let p = 0; p < k; p++) heap[d + c + 4 * p] = bt[s0 + c * k + p];
        }
      }
    }
    for (let i0 = 0; i0 < m; i0 += mb) {
      const rows = Math.min(mb, m - i0);
      heap.set(a.subarray(aOff + i0 * k, aOff + (i0 + rows) * k), aAt);
      mod.gemm(aAt * 8, bAt * 8, oAt * 8, roundUp4(rows), colsPad, k);
      for (let i = 0; i < rows; i++) {
        const from = oAt + i * colsPad;
        out.set(heap.subarray(from, from + cols), outOff + (i0 + i) * n + j0);
      }
    }
  }
  return true;
}
