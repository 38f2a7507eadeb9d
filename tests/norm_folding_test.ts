/**
 * Layer norms folded into the `qlinear` that reads them (lib/graph/passes/qdq_fusion.ts,
 * `foldNorm`): which graphs fold, and the folded product against the same graph with folding
 * off. On the cpu the folded kernel runs the layer norm kernel and then the qlinear kernel, so
 * the two are equal at any number of rows.
 *
 * On cuda, up to 8 rows the fused GEMV normalizes x itself with the layer-norm kernel's
 * operations in its order and quantizes as the quantize kernel does; above 8 rows the quantizing
 * layer norm writes x's codes the same way. Either way the product reads the unfolded graph's
 * codes: the folded graph must equal the unfolded one bit for bit. Against the cpu (float64
 * layer norm) codes may flip.
 *
 * A flipped code moves an output by at most sxd · max|W| times the code step: 1 for int8, up
 * to 32 for e4m3 (the step below 448). The bound allows two flips an output and requires at
 * least 90% of the outputs to agree to 1e-3 of the largest.
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { DType } from "../lib/dtype.ts";
import { qgemvLaunchCount } from "../lib/backends/cuda/qgemv.ts";
import { rowKernel } from "../lib/backends/cuda/nn.ts";
import { ptx as nnPtx } from "../kernels/ptx/nn.ts";
import { randomValues, testOnDevices, values } from "./helpers.ts";

interface Case {
  q: "int8" | "float8e4m3";
  m: number;
  k: number;
  n: number;
  dtype: DType;
  /** The layer norm's affine parameters. */
  affine: "weight and bias" | "weight" | "bias" | "none";
  bias: boolean;
  /** One weight scale (default: one per output channel). */
  perTensor?: boolean;
  seed: number;
}

/** Input amax of the Linear: normalized values reach about 4 (K ≥ 16 rows, unit scale). */
const INPUT_AMAX = 4;
/** Largest step between neighbouring codes below the saturation bound. */
const CODE_STEP = { int8: 1, float8e4m3: 32 };

/** `linear(layerNorm(x))` of a case on `device`, and the Linear's dequant bound per flip. */
function model(c: Case, device: string): { forward: () => tq.Tensor; flip: number } {
  const weight = tq.randn([c.n, c.k], { seed: c.seed, std: 0.05, dtype: c.dtype });
  const w32 = weight.cast("float32").abs();
  const dict: Record<string, tq.Tensor> = {
    weight,
    weightScale: tq.scaleFromAmax(c.perTensor ? w32.max() : w32.max(1), c.q),
    inputScale: tq.scaleFromAmax(INPUT_AMAX, c.q),
  };
  if (c.bias) dict.bias = tq.randn([c.n], { seed: c.seed + 1, std: 0.1, dtype: c.dtype });
  const layer = new tq.Linear(c.k, c.n, {
    quantDtype: c.q,
    weightQuantDim: c.perTensor ? undefined : 0,
    bias: c.bias,
    dtype: c.dtype,
  });
  layer.loadStateDict(dict);
  layer.to(device);
  const vector = (seed: number, low: number, high: number) =>
    tq.tensor(randomValues(c.k, seed, { low, high }), { dtype: c.dtype, device });
  const hasWeight = c.affine === "weight and bias" || c.affine === "weight";
  const hasBias = c.affine === "weight and bias" || c.affine === "bias";
  const lnWeight = hasWeight ? vector(c.seed + 3, 0.5, 1.5) : undefined;
  const lnBias = hasBias ? vector(c.seed + 4, -0.3, 0.3) : undefined;
  // Rows with their own offset and spread, so the mean and variance matter.
  const xs = randomValues(c.m * c.k, c.seed + 2);
  for (let r = 0; r < c.m; r++) {
    for (let i = 0; i < c.k; i++) xs[r * c.k + i] = 2 * r - 3 + (1 + r) * xs[r * c.k + i];
  }
  const x = tq.tensor(xs, { shape: [c.m, c.k], dtype: c.dtype, device });
  const maxW = values(w32).reduce((a, b) => Math.max(a, b), 0);
  const sxd = INPUT_AMAX / tq.maxBound(c.q);
  return {
    forward: () => layer.forward(tq.layerNorm(x, lnWeight, lnBias)),
    flip: CODE_STEP[c.q] * sxd * maxW,
  };
}

function describe(c: Case): string {
  const scales = c.perTensor ? " per-tensor W" : "";
  return `${c.q} ${c.dtype} M=${c.m} K=${c.k} N=${c.n} norm ${c.affine} bias ${c.bias}${scales}`;
}

/** A case's output folded and with folding off, and the fused GEMV launches of the folded. */
function foldedAndPlain(
  c: Case,
  device: string,
): { folded: Float64Array; plain: Float64Array; flip: number; gemvRuns: number } {
  const what = `${describe(c)} on ${device}`;
  assert.ok(tq.normFoldingEnabled());
  const { forward, flip } = model(c, device);
  const y = forward();
  assert.deepEqual(tq.inspectGraph(y).ops, ["qlinear"], `${what}: the norm folds`);
  const gemvBefore = qgemvLaunchCount();
  const folded = values(y);
  const gemvRuns = qgemvLaunchCount() - gemvBefore;
  tq.setNormFolding(false);
  try {
    const plain = forward();
    assert.deepEqual(tq.inspectGraph(plain).ops, ["layerNorm", "qlinear"], what);
    return { folded, plain: values(plain), flip, gemvRuns };
  } finally {
    tq.setNormFolding(true);
  }
}

/** `got` within two flips an output of `ref`, and at least 90% of it within 1e-3 of the max. */
function assertWithinFlips(got: Float64Array, ref: Float64Array, flip: number, what: string) {
  assert.equal(got.length, ref.length, what);
  const largest = ref.reduce((a, b) => Math.max(a, Math.abs(b)), 0);
  assert.ok(largest > 0, `${what}: all outputs are zero`);
  let close = 0;
  for (let i = 0; i < ref.length; i++) {
    const err = Math.abs(got[i] - ref[i]);
    assert.ok(err <= 2 * flip + 1e-3 * largest, `${what}: at ${i} got ${got[i]}, want ${ref[i]}`);
    if (err <= 1e-3 * largest) close++;
  }
  assert.ok(close >= 0.9 * ref.length, `${what}: only ${close} of ${ref.length} outputs agree`);
}

const CASES: Case[] = [
  { q: "int8", m: 1, k: 768, n: 256, dtype: "float16", affine: "weight and bias", bias: true },
  { q: "int8", m: 3, k: 64, n: 40, dtype: "float32", affine: "weight", bias: false },
  { q: "int8", m: 8, k: 256, n: 100, dtype: "bfloat16", affine: "none", bias: true },
  {
    q: "float8e4m3",
    m: 1,
    k: 768,
    n: 200,
    dtype: "float16",
    affine: "weight and bias",
    bias: true,
  },
  { q: "float8e4m3", m: 5, k: 128, n: 64, dtype: "float32", affine: "none", bias: false },
  // K not a multiple of 16: the cuda fused GEMV refuses it and the product reads the codes of
  // the quantizing layer norm.
  { q: "int8", m: 2, k: 40, n: 24, dtype: "float32", affine: "weight and bias", bias: true },
].map((c, i) => ({ ...c, seed: 300 + 10 * i }) as Case);

testOnDevices("a layer norm folds into the decode-sized qlinear that reads it", (device) => {
  for (const c of CASES) {
    const what = `${describe(c)} on ${device}`;
    const { folded, plain, flip, gemvRuns } = foldedAndPlain(c, device);
    const fusedGemv = device === "cuda" && c.k % 16 === 0;
    assert.equal(gemvRuns, fusedGemv ? 1 : 0, `${what}: fused GEMV runs`);
    assert.deepEqual(folded, plain, `${what}: the folded kernel equals layerNorm + qlinear`);
    if (device === "cuda") {
      const cpu = values(model(c, "cpu").forward());
      assertWithinFlips(folded, cpu, flip, `${what} against the cpu`);
    }
  }
});

/**
 * More rows than the fused GEMV takes. On cuda they cover every layer-norm kernel variant
 * (warp rows vectorized and scalar, block rows vectorized, scalar and too long to cache), every
 * affine form, and every product: int8 on the wgmma kernel or cuBLASLt (M padded to 16) and on
 * the exact int8 GEMM (K not a multiple of 16); e4m3 on cuBLASLt with unit, scalar and
 * outer-vector scales (the per-row copies of sxd written with the codes), with the bias in
 * cuBLASLt's epilogue or in ours; and the exact float32 e4m3 product, which keeps the layer
 * norm kernel apart.
 */
const PREFILL_CASES: Case[] = [
  // GPT-2 rows (warp, 16-byte vectors); int8 on wgmma or cuBLASLt with 8 padding rows.
  { q: "int8", m: 40, k: 768, n: 2304, dtype: "float16", affine: "weight and bias", bias: true },
  { q: "int8", m: 300, k: 80, n: 96, dtype: "float32", affine: "weight", bias: false },
  // Block rows, cached in shared memory.
  { q: "int8", m: 33, k: 1280, n: 96, dtype: "bfloat16", affine: "none", bias: true },
  // Block rows, scalar (K not a multiple of 8): the exact int8 GEMM.
  { q: "int8", m: 20, k: 300, n: 40, dtype: "float16", affine: "weight and bias", bias: true },
  // Warp rows, scalar.
  { q: "int8", m: 12, k: 36, n: 24, dtype: "float16", affine: "bias", bias: false },
  // Block rows too long for the cache.
  { q: "int8", m: 10, k: 12800, n: 16, dtype: "float32", affine: "weight", bias: false },
  // e4m3: outer-vector scales (M > 64), 4 padding rows, float32 products + our epilogue.
  {
    q: "float8e4m3",
    m: 300,
    k: 768,
    n: 96,
    dtype: "float16",
    affine: "weight and bias",
    bias: true,
  },
  // Unit scales (per-channel W at M ≤ 64), 8 padding rows.
  { q: "float8e4m3", m: 40, k: 80, n: 2304, dtype: "float32", affine: "weight", bias: false },
  // Block rows; scalar scales, the bias in cuBLASLt's epilogue where it takes it (no padding).
  {
    q: "float8e4m3",
    m: 48,
    k: 1536,
    n: 96,
    dtype: "float16",
    affine: "none",
    bias: true,
    perTensor: true,
  },
  // Outer-vector scales, D the output (no padding, no bias).
  { q: "float8e4m3", m: 128, k: 256, n: 96, dtype: "float16", affine: "bias", bias: false },
  // K not a multiple of 16: the exact float32 product.
  { q: "float8e4m3", m: 24, k: 40, n: 24, dtype: "float32", affine: "weight and bias", bias: true },
].map((c, i) => ({ ...c, seed: 500 + 10 * i }) as Case);

testOnDevices("a layer norm folds into a qlinear of more than 8 rows", (device) => {
  for (const c of PREFILL_CASES) {
    const what = `${describe(c)} on ${device}`;
    const { folded, plain, flip, gemvRuns } = foldedAndPlain(c, device);
    assert.equal(gemvRuns, 0, `${what}: no fused GEMV`);
    // cpu: the same kernels; cuda: the same codes and the same product.
    assert.deepEqual(folded, plain, `${what}: folded and unfolded differ`);
    if (device === "cuda") {
      const cpu = values(model(c, "cpu").forward());
      assertWithinFlips(folded, cpu, flip, `${what} against the cpu`);
    }
  }
});

Deno.test("every quantizing layer norm the lowering can name is in both PTX builds", () => {
  // x, weight, bias, codes, rows, D, eps[, cached], scale, scaleKind, padEnd, rowScales,
  // rowScale, rowScaleKind, rowScaleCount
  const tail = ["u64", "u32", "u64", "u64", "u64", "u32", "u32"];
  const warp = ["u64", "u64", "u64", "u64", "u64", "u32", "f32", ...tail];
  const block = ["u64", "u64", "u64", "u64", "u64", "u64", "f32", "u32", ...tail];
  const lengths = [...Array.from({ length: 1100 }, (_, i) => i + 1), 2048, 4099, 12288, 20000];
  for (const [flavour, ptx] of [["sm_90a", nnPtx.ptxSm90a], ["compute_80", nnPtx.ptxCompute80]]) {
    const params = new Map<string, string[]>();
    for (const [, name, list] of ptx.matchAll(/\.entry (\w+)\(([^)]*)\)/g)) {
      params.set(name, [...list.matchAll(/\.param \.(\w+)/g)].map((p) => p[1]));
    }
    const named = new Set<string>();
    for (const [x, bytes] of [["f32", 4], ["f16", 2], ["bf16", 2]] as const) {
      for (const code of ["i8", "e4m3"]) {
        for (const length of lengths) {
          const { variant, kind } = rowKernel(100, length, bytes, 132);
          const name = `layer_norm_quantize_${x}_${code}_${variant}`;
          // The same variants as the layer norm op's.
          assert.ok(params.has(`layer_norm_${x}_${variant}`), `${flavour} ${name}`);
          assert.deepEqual(params.get(name), kind === "warp" ? warp : block, `${flavour} ${name}`);
          named.add(name);
        }
      }
    }
    const built = [...params.keys()].filter((n) => n.startsWith("layer_norm_quantize_"));
    assert.deepEqual(built.sort(), [...named].sort(), `${flavour}: kernels no lowering names`);
  }
});

testOnDevices("a layer norm read by another op stays apart", (device) => {
  const c: Case = { ...CASES[0], seed: 900 };
  // The norm's output is also read by a residual add.
  const weight = tq.randn([c.n, c.k], { seed: 1, std: 0.05, dtype: c.dtype });
  const layer = new tq.Linear(c.k, c.n, { quantDtype: "int8", weightQuantDim: 0, dtype: c.dtype });
  layer.loadStateDict({
    weight,
    weightScale: tq.scaleFromAmax(weight.cast("float32").abs().max(1), "int8"),
    inputScale: tq.scaleFromAmax(INPUT_AMAX, "int8"),
    bias: tq.zeros([c.n], { dtype: c.dtype }),
  });
  layer.to(device);
  for (const rows of [1, 40]) {
    const x = tq.randn([rows, c.k], { seed: 2, dtype: c.dtype, device });
    const normed = tq.layerNorm(x);
    const y = layer.forward(normed).add(normed.sum(-1, true));
    assert.ok(tq.inspectGraph(y).ops.includes("layerNorm"), `a norm read twice is kept: ${rows}`);
    assert.ok(tq.inspectGraph(y).ops.includes("qlinear"));
  }
});
