/**
 * The CPU backend's float64 product (lib/backends/cpu/matmul.ts `gemm`): the WebAssembly SIMD
 * kernels (lib/backends/cpu/gemm_wasm.ts: the blocked product, and the row-by-row product over
 * a cached weight's float32 panels) must give the plain loop's sums bit for bit, at every
 * shape (rows and columns past a multiple of four, several blocks of its workspace), at
 * offsets into larger arrays, and with infinities, NaN, signed zeros and subnormals.
 * @module
 */
import assert from "node:assert/strict";
import { gemm, gemmLoop } from "../lib/backends/cpu/matmul.ts";
import { wasmGemm, wasmGemv, weightPanelBytes } from "../lib/backends/cpu/gemm_wasm.ts";
import { sourceSha256 } from "../kernels/wasm/gemm_f64.ts";
import { sha256Hex } from "../kernels/build.ts";

/** Values as float32 would hold them, with some specials when `specials`. */
function randomArray(length: number, specials: boolean): Float64Array {
  const out = new Float64Array(length);
  const odd = [Infinity, -Infinity, NaN, -0, 0, 1e-40, -3e38, 3e38];
  for (let i = 0; i < length; i++) {
    out[i] = specials && Math.random() < 0.02
      ? odd[Math.floor(Math.random() * odd.length)]
      : Math.fround((Math.random() - 0.5) * 2 ** Math.floor(Math.random() * 20 - 10));
  }
  return out;
}

type Output = Float32Array | Float64Array;

/** Fails naming `what` and the first element whose bits differ (NaN equals NaN). */
function assertSameBits(actual: Output, expected: Output, what: string): void {
  assert.equal(actual.length, expected.length);
  const at = actual.findIndex((v, i) => !Object.is(v, expected[i]));
  assert.equal(at, -1, `${what}: element ${at}: ${actual[at]} vs ${expected[at]}`);
}

/** An output of `count` values and 2 more, filled with a value the products must not touch. */
function outputOf(count: number, float32 = false): Output {
  const out = float32 ? new Float32Array(count + 2) : new Float64Array(count + 2);
  return out.fill(-1234.5); // values outside the product must stay
}

function compare(
  m: number,
  n: number,
  k: number,
  options: { specials?: boolean; float32?: boolean; offsets?: boolean } = {},
): void {
  const [aOff, bOff, outOff] = options.offsets ? [5, 3, 7] : [0, 0, 0];
  const a = randomArray(aOff + m * k, options.specials ?? false);
  const bt = randomArray(bOff + n * k, options.specials ?? false);
  const make = () => outputOf(outOff + m * n, options.float32);
  const expected = make(), actual = make();
  gemmLoop(a, aOff, bt, bOff, expected, outOff, m, n, k);
  assert.ok(wasmGemm(a, aOff, bt, bOff, actual, outOff, m, n, k), "the kernel ran");
  assertSameBits(actual, expected, `m ${m} n ${n} k ${k} ${JSON.stringify(options)}`);
}

Deno.test("WebAssembly gemm: the plain loop's sums bit for bit at odd shapes", () => {
  for (const m of [1, 4, 8, 9, 13, 70]) {
    for (const n of [1, 3, 4, 5, 17, 64]) {
      for (const k of [1, 7, 64, 300]) compare(m, n, k);
    }
  }
});

Deno.test("WebAssembly gemm: offsets, float32 outputs, infinities, NaN and signed zeros", () => {
  for (const [m, n, k] of [[8, 8, 16], [11, 6, 33], [64, 20, 129]]) {
    compare(m, n, k, { offsets: true });
    compare(m, n, k, { float32: true });
    compare(m, n, k, { specials: true, offsets: true });
    compare(m, n, k, { specials: true, float32: true });
  }
});

Deno.test("WebAssembly gemm: products over several blocks of its workspace", () => {
  // k = 4096: 512 columns of Bᵀ and 256 rows of A per block, so 2 × 2 blocks here.
  compare(300, 600, 4096, { float32: true });
});

Deno.test("WebAssembly gemm declines rows longer than its blocks and empty sums", () => {
  const k = (1 << 19) + 1;
  const a = new Float64Array(k), bt = new Float64Array(4 * k), out = new Float64Array(4);
  assert.equal(wasmGemm(a, 0, bt, 0, out, 0, 1, 4, k), false);
  assert.equal(wasmGemm(a, 0, bt, 0, out, 0, 1, 4, 0), false);
});

/** wasmGemv against the plain loop, twice (the second call reads the panels packed by the first). */
function compareGemv(
  m: number,
  n: number,
  k: number,
  options: { specials?: boolean; float32?: boolean; offsets?: boolean } = {},
): void {
  const [aOff, outOff] = options.offsets ? [5, 7] : [0, 0];
  const a = randomArray(aOff + m * k, options.specials ?? false);
  // The weight as a cached weight holds it: float32 values (its specials too).
  const bt = randomArray(n * k, options.specials ?? false).map(Math.fround);
  const make = () => outputOf(outOff + m * n, options.float32);
  const expected = make();
  gemmLoop(a, aOff, bt, 0, expected, outOff, m, n, k);
  for (const call of ["first", "second"]) {
    const actual = make();
    assert.ok(wasmGemv(a, aOff, bt, actual, outOff, m, n, k), "the kernel ran");
    assertSameBits(
      actual,
      expected,
      `${call} call, m ${m} n ${n} k ${k} ${JSON.stringify(options)}`,
    );
  }
}

Deno.test("WebAssembly gemv over packed weights: the plain loop's sums bit for bit", () => {
  for (const m of [1, 2, 7]) {
    for (const n of [1, 3, 4, 5, 15, 16, 17, 33, 64]) {
      for (const k of [1, 7, 64, 300]) compareGemv(m, n, k);
    }
  }
  for (const [m, n, k] of [[1, 20, 33], [3, 37, 129]]) {
    compareGemv(m, n, k, { offsets: true });
    compareGemv(m, n, k, { float32: true });
    compareGemv(m, n, k, { specials: true, offsets: true });
    compareGemv(m, n, k, { specials: true, float32: true });
  }
});

Deno.test("WebAssembly gemv keeps each weight's panels once, and declines what float32 cannot hold", () => {
  const n = 64, k = 256;
  const bt = randomArray(n * k, false);
  const a = randomArray(k, false);
  const out = new Float64Array(n), expected = new Float64Array(n);
  gemmLoop(a, 0, bt, 0, expected, 0, 1, n, k);
  const before = weightPanelBytes();
  assert.ok(wasmGemv(a, 0, bt, out, 0, 1, n, k));
  const packed = weightPanelBytes() - before;
  assert.ok(packed >= n * k * 4, `packed ${packed} bytes for ${n * k} float32 values`);
  assert.ok(wasmGemv(a, 0, bt, out, 0, 1, n, k));
  assert.equal(weightPanelBytes() - before, packed, "the second call packs nothing");
  assertSameBits(out, expected, "packed weight");

  // A value float32 does not hold: the loop computes it instead (gemm falls back).
  const wide = randomArray(n * k, false);
  wide[17] = 0.1; // not a float32
  assert.equal(wasmGemv(a, 0, wide, out, 0, 1, n, k), false);
  assert.equal(weightPanelBytes() - before, packed, "nothing packed for it");
  const viaGemm = new Float64Array(n), viaLoop = new Float64Array(n);
  gemm(a, 0, wide, 0, viaGemm, 0, 1, n, k, true);
  gemmLoop(a, 0, wide, 0, viaLoop, 0, 1, n, k);
  assertSameBits(viaGemm, viaLoop, "a weight float32 does not hold");
  // The packed values read as another shape: declined, and gemm's loop reads them right.
  const a2 = randomArray(n, false), asWide = new Float64Array(k), asWideLoop = new Float64Array(k);
  assert.equal(wasmGemv(a2, 0, bt, asWide, 0, 1, k, n), false);
  gemm(a2, 0, bt, 0, asWide, 0, 1, k, n, true);
  gemmLoop(a2, 0, bt, 0, asWideLoop, 0, 1, k, n);
  assertSameBits(asWide, asWideLoop, "packed values read as another shape");
  // Only a matrix of exactly n×k values is packed (a slice of a larger one is not).
  assert.equal(wasmGemv(a, 0, new Float64Array(n * k + 1), out, 0, 1, n, k), false);
});

Deno.test("kernels/wasm/gemm_f64.ts was assembled from kernels/gemm_f64.wat as it is", () => {
  const text = Deno.readTextFileSync(new URL("../kernels/gemm_f64.wat", import.meta.url));
  assert.equal(sha256Hex(text), sourceSha256, "kernels/gemm_f64.wat changed: run `deno task wasm`");
});
