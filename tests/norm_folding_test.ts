/**
 * Layer norms folded into the decode-sized `qlinear` that reads them
 * (lib/graph/passes/qdq_fusion.ts, `NORM_FOLD_MAX_ROWS`): which graphs fold, and the folded
 * product against the same graph with folding off. On the cpu the folded kernel runs the layer
 * norm kernel and then the qlinear kernel, so the two are equal. On cuda the fused GEMV
 * normalizes x itself, summing in another order than the layer-norm kernel: a normalized value
 * that lands within float32 rounding of a quantization boundary can take the neighbouring code,
 * which moves an output by at most sxd · max|W| a flip. The bound allows two flips an output
 * and requires at least 90% of the outputs to agree to 1e-3 of the largest.
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { decode, type DType } from "../lib/dtype.ts";
import { qgemvLaunchCount } from "../lib/backends/cuda/qgemv.ts";
import { NORM_FOLD_MAX_ROWS } from "../lib/graph/passes/qdq_fusion.ts";
import { randomValues, testOnDevices } from "./helpers.ts";

interface Case {
  q: "int8" | "float8e4m3";
  m: number;
  k: number;
  n: number;
  dtype: DType;
  /** The layer norm's affine parameters. */
  affine: "weight and bias" | "weight" | "none";
  bias: boolean;
  seed: number;
}

/** Input amax of the Linear: normalized values reach about 4 (K ≥ 16 rows, unit scale). */
const INPUT_AMAX = 4;

function values(t: tq.Tensor): Float64Array {
  return Float64Array.from(decode(t.dtype, t.storageSync()));
}

/** `linear(layerNorm(x))` of a case on `device`, and the Linear's dequant bound per flip. */
function model(c: Case, device: string): { forward: () => tq.Tensor; flip: number } {
  const weight = tq.randn([c.n, c.k], { seed: c.seed, std: 0.05, dtype: c.dtype });
  const w32 = weight.cast("float32").abs();
  const dict: Record<string, tq.Tensor> = {
    weight,
    weightScale: tq.scaleFromAmax(w32.max(1), c.q),
    inputScale: tq.scaleFromAmax(INPUT_AMAX, c.q),
  };
  if (c.bias) dict.bias = tq.randn([c.n], { seed: c.seed + 1, std: 0.1, dtype: c.dtype });
  const layer = new tq.Linear(c.k, c.n, {
    quantDtype: c.q,
    weightQuantDim: 0,
    bias: c.bias,
    dtype: c.dtype,
  });
  layer.loadStateDict(dict);
  layer.to(device);
  const vector = (seed: number, low: number, high: number) =>
    tq.tensor(randomValues(c.k, seed, { low, high }), { dtype: c.dtype, device });
  const lnWeight = c.affine !== "none" ? vector(c.seed + 3, 0.5, 1.5) : undefined;
  const lnBias = c.affine === "weight and bias" ? vector(c.seed + 4, -0.3, 0.3) : undefined;
  // Rows with their own offset and spread, so the mean and variance matter.
  const xs = randomValues(c.m * c.k, c.seed + 2);
  for (let r = 0; r < c.m; r++) {
    for (let i = 0; i < c.k; i++) xs[r * c.k + i] = 2 * r - 3 + (1 + r) * xs[r * c.k + i];
  }
  const x = tq.tensor(xs, { shape: [c.m, c.k], dtype: c.dtype, device });
  const maxW = values(w32).reduce((a, b) => Math.max(a, b), 0);
  const sxd = INPUT_AMAX / tq.maxBound(c.q);
  return { forward: () => layer.forward(tq.layerNorm(x, lnWeight, lnBias)), flip: sxd * maxW };
}

function describe(c: Case): string {
  return `${c.q} ${c.dtype} M=${c.m} K=${c.k} N=${c.n} norm ${c.affine} bias ${c.bias}`;
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
  // K not a multiple of 16: the cuda fused GEMV refuses it and the layer-norm kernel runs first.
  { q: "int8", m: 2, k: 40, n: 24, dtype: "float32", affine: "weight and bias", bias: true },
].map((c, i) => ({ ...c, seed: 300 + 10 * i }) as Case);

testOnDevices("a layer norm folds into the decode-sized qlinear that reads it", (device) => {
  assert.ok(tq.normFoldingEnabled());
  for (const c of CASES) {
    const what = `${describe(c)} on ${device}`;
    const { forward, flip } = model(c, device);
    const folded = forward();
    assert.deepEqual(tq.inspectGraph(folded).ops, ["qlinear"], what);
    const gemvRuns = qgemvLaunchCount();
    const got = values(folded);
    const fusedGemv = device === "cuda" && c.k % 16 === 0;
    assert.equal(qgemvLaunchCount() - gemvRuns, fusedGemv ? 1 : 0, `${what}: fused GEMV runs`);
    tq.setNormFolding(false);
    let ref: Float64Array;
    try {
      const plain = forward();
      assert.deepEqual(tq.inspectGraph(plain).ops, ["layerNorm", "qlinear"], what);
      ref = values(plain);
    } finally {
      tq.setNormFolding(true);
    }
    if (device === "cpu") {
      assert.deepEqual(got, ref, `${what}: the folded kernel equals layerNorm + qlinear`);
      continue;
    }
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
});

testOnDevices("layer norms stay apart: more rows than decoding, or another reader", (device) => {
  const c: Case = { ...CASES[0], seed: 900 };
  // More rows than NORM_FOLD_MAX_ROWS.
  const tall: Case = { ...c, m: NORM_FOLD_MAX_ROWS + 1 };
  assert.deepEqual(tq.inspectGraph(model(tall, device).forward()).ops, ["layerNorm", "qlinear"]);
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
  const x = tq.randn([1, c.k], { seed: 2, dtype: c.dtype, device });
  const normed = tq.layerNorm(x);
  const y = layer.forward(normed).add(normed.sum(-1, true));
  assert.ok(tq.inspectGraph(y).ops.includes("layerNorm"), "a norm read twice is kept");
  assert.ok(tq.inspectGraph(y).ops.includes("qlinear"));
});
