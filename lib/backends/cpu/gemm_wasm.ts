/**
 * The float64 matrix product on WebAssembly SIMD (kernels/gemm_f64.wat): the same sums as the
 * plain loop of lib/backends/cpu/matmul.ts, bit for bit.
 *
 * - `wasmGemm` (8 rows and more), about 2.5 times as fast as the loop: operands are copied into
 *   the module's memory in blocks of bounded size (its first SCRATCH_BYTES, kept for the
 *   process): rows of A, and columns of Bᵀ packed as panels of four; rows and columns past a
 *   multiple of four are padding, computed and dropped.
 * - `wasmGemv` (fewer rows: a decode step's products), 2.3 to 2.7 times as fast: a layer's
 *   cached weight is packed once into panels of four float32 columns that stay in the module's
 *   memory above the blocks (at most PANEL_BUDGET bytes in all), and each row of A runs over
 *   them. Only weights that float32 holds exactly are packed (every cached weight is: float32
 *   or 16-bit values, or quantized codes), so the sums are the loop's; a panel is freed once
 *   its weight's cache entry is collected.
 * @module
 */
import { Buffer } from "node:buffer";
import { wasmBase64 } from "../../../kernels/wasm/gemm_f64.ts";

/** Values of the A and output blocks, and of the B block (float64 each). */
const A_BLOCK = 1 << 20;
const B_BLOCK = 1 << 21;

/**
 * Bytes of the module's memory that wasmGemm's blocks may use (the A, B and output blocks at
 * their largest: 2^21 + 2^21 + 2^20 values), and wasmGemv's row and output.
 */
const SCRATCH_BYTES = 5 * (1 << 20) * 8;

/** At most this many bytes of weight panels stay in the module's memory. */
const PANEL_BUDGET = 1 << 30;

interface GemmModule {
  memory: WebAssembly.Memory;
  gemm: (a: number, b: number, out: number, m: number, n: number, k: number) => void;
  gemv: (a: number, b: number, out: number, n: number, k: number) => void;
}

let loaded: GemmModule | null | undefined;

/** The instantiated module, or null where WebAssembly SIMD is unavailable. */
function gemmModule(): GemmModule | null {
  if (loaded !== undefined) return loaded;
  try {
    const bytes = new Uint8Array(Buffer.from(wasmBase64, "base64"));
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), {});
    const exports = instance.exports as unknown as GemmModule;
    loaded = { memory: exports.memory, gemm: exports.gemm, gemv: exports.gemv };
  } catch {
    loaded = null;
  }
  return loaded;
}

const roundUp4 = (v: number) => (v + 3) & ~3;
const roundDown4 = (v: number) => v & ~3;

/**
 * `rows` rows of k values of `bt` from `src`, into panels of four rows at `dst` of `heap`:
 * panel q holds rows 4q .. 4q + 3, row p of it at 4p (the kernels' layout of Bᵀ). Rows of the
 * last panel past `rows` are zeros: their outputs are computed and dropped.
 */
function packPanels(
  heap: Float32Array | Float64Array,
  dst: number,
  bt: Float64Array,
  src: number,
  rows: number,
  k: number,
): void {
  for (let j = 0; j < rows; j += 4) {
    const s0 = src + j * k;
    let d = dst + j * k;
    if (j + 4 <= rows) {
      const s1 = s0 + k, s2 = s1 + k, s3 = s2 + k;
      for (let p = 0; p < k; p++, d += 4) {
        heap[d] = bt[s0 + p];
        heap[d + 1] = bt[s1 + p];
        heap[d + 2] = bt[s2 + p];
        heap[d + 3] = bt[s3 + p];
      }
    } else {
      for (let c = 0; c < 4; c++) {
        for (let p = 0; p < k; p++) heap[d + c + 4 * p] = c < rows - j ? bt[s0 + c * k + p] : 0;
      }
    }
  }
}

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
  // At most A_BLOCK / 4 columns, so that four rows of output fit A_BLOCK too.
  const nb = Math.min(roundUp4(n), A_BLOCK / 4, Math.max(4, roundDown4(Math.floor(B_BLOCK / k))));
  const mb = Math.min(roundUp4(m), Math.max(4, roundDown4(Math.floor(A_BLOCK / Math.max(k, nb)))));
  // Layout in the module's memory: the A block, the B block, the output block.
  const aAt = 0, bAt = mb * k, oAt = bAt + nb * k;
  const bytes = (oAt + mb * nb) * 8;
  if (bytes > SCRATCH_BYTES) return false; // never reached (see SCRATCH_BYTES): panels lie above
  if (!ensureMemory(mod, bytes)) return false;
  const heap = new Float64Array(mod.memory.buffer);
  for (let j0 = 0; j0 < n; j0 += nb) {
    const cols = Math.min(nb, n - j0), colsPad = roundUp4(cols);
    packPanels(heap, bAt, bt, bOff + j0 * k, cols, k);
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

// Weight panels: byte ranges of the module's memory above SCRATCH_BYTES.

/** A range of `bytes` bytes at byte address `at`. */
interface Range {
  at: number;
  bytes: number;
}

/** A packed weight of n rows of k: a range of the module's memory. */
interface Panel extends Range {
  n: number;
  k: number;
}

/** Free ranges below `panelTop`, by address, none adjacent to another. */
const freeRanges: Range[] = [];
/** The end of the panel area handed out so far. */
let panelTop = SCRATCH_BYTES;
let panelBytes = 0;

/** Makes the module's memory at least `bytes` long; false if it cannot grow. */
function ensureMemory(mod: GemmModule, bytes: number): boolean {
  const have = mod.memory.buffer.byteLength;
  if (have >= bytes) return true;
  try {
    mod.memory.grow(Math.ceil((bytes - have) / 65536));
    return true;
  } catch {
    return false; // past the engine's limit for one memory
  }
}

/** A range of `bytes` bytes (a multiple of 64), or null if the budget or memory is spent. */
function allocateRange(mod: GemmModule, bytes: number): Range | null {
  if (panelBytes + bytes > PANEL_BUDGET) return null;
  const i = freeRanges.findIndex((r) => r.bytes >= bytes);
  let at: number;
  if (i >= 0) {
    const r = freeRanges[i];
    at = r.at;
    if (r.bytes === bytes) freeRanges.splice(i, 1);
    else freeRanges[i] = { at: r.at + bytes, bytes: r.bytes - bytes };
  } else {
    if (!ensureMemory(mod, panelTop + bytes)) return null;
    at = panelTop;
    panelTop += bytes;
  }
  panelBytes += bytes;
  return { at, bytes };
}

function freeRange(p: Range): void {
  panelBytes -= p.bytes;
  const after = freeRanges.findIndex((r) => r.at > p.at);
  const i = after < 0 ? freeRanges.length : after;
  freeRanges.splice(i, 0, { at: p.at, bytes: p.bytes });
  // Merge with the next range, then the previous one.
  if (
    i + 1 < freeRanges.length && freeRanges[i].at + freeRanges[i].bytes === freeRanges[i + 1].at
  ) {
    freeRanges[i].bytes += freeRanges[i + 1].bytes;
    freeRanges.splice(i + 1, 1);
  }
  if (i > 0 && freeRanges[i - 1].at + freeRanges[i - 1].bytes === freeRanges[i].at) {
    freeRanges[i - 1].bytes += freeRanges[i].bytes;
    freeRanges.splice(i, 1);
  }
  // A range that ends the area shrinks it.
  const last = freeRanges[freeRanges.length - 1];
  if (last && last.at + last.bytes === panelTop) {
    panelTop = last.at;
    freeRanges.pop();
  }
}

/** Each packed weight's panel; null for one that cannot be packed (not float32, or no room). */
const panels = new WeakMap<Float64Array, Panel | null>();
const releasePanel = new FinalizationRegistry<Range>(freeRange);

/** The bytes the packed weight panels hold now (for tests and memory accounting). */
export function weightPanelBytes(): number {
  return panelBytes;
}

/** `bt` (n rows of k) packed as float32 panels of four rows, or null (see {@link panels}). */
function panelOf(mod: GemmModule, bt: Float64Array, n: number, k: number): Panel | null {
  const known = panels.get(bt);
  if (known !== undefined) return known;
  let panel: Panel | null = null;
  const exact = bt.every((v) => Object.is(Math.fround(v), v) || v !== v);
  const nPad = roundUp4(n);
  // Whole 64-byte lines (arithmetic, not bit operations: sizes may pass 2^31).
  const range = exact ? allocateRange(mod, Math.ceil((nPad * k * 4) / 64) * 64) : null;
  if (range) {
    panel = { ...range, n, k };
    packPanels(new Float32Array(mod.memory.buffer, panel.at, nPad * k), 0, bt, 0, n, k);
    releasePanel.register(bt, range);
  }
  panels.set(bt, panel);
  return panel;
}

/**
 * `out[outOff + i·n + j] = Σ_k a[aOff + i·k + p] · bt[j·k + p]` for `bt` exactly n×k, as
 * matmul.ts's `gemm` defines it, one row at a time over `bt`'s panels. `bt` must never change
 * (a cached weight): it is packed on the first call and read from its panels after that.
 * Returns false, having done nothing, where it cannot run (no WebAssembly SIMD, values float32
 * cannot hold, no room for the panels, or a row and output too long for the scratch space).
 */
export function wasmGemv(
  a: Float64Array,
  aOff: number,
  bt: Float64Array,
  out: Float32Array | Float64Array,
  outOff: number,
  m: number,
  n: number,
  k: number,
): boolean {
  const nPad = roundUp4(n);
  if (k === 0 || n === 0 || bt.length !== n * k || (k + nPad) * 8 > SCRATCH_BYTES) return false;
  const mod = gemmModule();
  if (!mod) return false;
  const panel = panelOf(mod, bt, n, k);
  // (The same values read as another shape are not what was packed.)
  if (!panel || panel.n !== n || panel.k !== k || !ensureMemory(mod, SCRATCH_BYTES)) return false;
  // The row at byte 0, the output after it.
  const heap = new Float64Array(mod.memory.buffer, 0, k + nPad);
  for (let i = 0; i < m; i++) {
    heap.set(a.subarray(aOff + i * k, aOff + (i + 1) * k), 0);
    mod.gemv(0, panel.at, k * 8, nPad, k);
    out.set(heap.subarray(k, k + n), outOff + i * n);
  }
  return true;
}
