/**
 * Layer norms folded into the decode-sized `wlinear` and float `linear` that read them
 * (lib/graph/passes/qdq_fusion.ts, `foldNorm`, `WLINEAR_NORM_FOLD_MAX_ROWS`,
 * `LINEAR_NORM_FOLD_MAX_ROWS`): which graphs fold, and the folded product against the same graph
 * with folding off.
 *
 * On the cpu the folded kernel runs the layer norm kernel and then the wlinear / linear kernel,
 * so it equals the unfolded graph (and the layer norm evaluated on its own first) exactly.
 *
 * On cuda the GEMVs' `_norm` kernels (the wlinear's streaming GEMV, kernels/wgemv.cu; the
 * linear's, kernels/flinear.cu) normalize x while staging it, with the float32 operations of the
 * layer-norm kernel the unfolded graph runs, in its order; the products are the plain kernel's
 * with the same launch. Problems the `_norm` kernels do not take run that layer-norm kernel into
 * scratch memory and the plain product. Either way the folded graph must equal the unfolded one
 * bit for bit. Against the cpu the tolerances of tests/cuda_wgemv_test.ts hold (the wlinear GEMV
 * multiplies the unrounded dequantized weights, the cpu rounds them to x's dtype; the float32
 * layer norm differs from the cpu's float64 one by float32 rounding, which at most moves a
 * normalized value to the neighbouring value of x's dtype).
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { ptx as flinearPtx } from "../kernels/ptx/flinear.ts";
import { ptx as wgemvPtx } from "../kernels/ptx/wgemv.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import {
  FLINEAR_GEMV_MAX_ROWS,
  flinearNormLaunchCount,
  flinearNormThreads,
} from "../lib/backends/cuda/flinear.ts";
import type { WeightScaleIndex } from "../lib/backends/cuda/linear.ts";
import type { FloatDType } from "../lib/backends/cuda/util.ts";
import {
  WGEMV_FMA_MAX_ROWS,
  WGEMV_MMA_MAX_ROWS,
  wgemvNormLaunchCount,
  wgemvShape,
} from "../lib/backends/cuda/wgemv.ts";
import {
  LINEAR_NORM_FOLD_MAX_ROWS,
  WLINEAR_NORM_FOLD_MAX_ROWS,
} from "../lib/graph/passes/qdq_fusion.ts";
import {
  type Activation,
  applyActivation,
  assertNearSums,
  linearState,
  randomValues,
  testOnDevices,
  testOnGpu,
  values,
} from "./helpers.ts";

// Against the cpu, as ‖got − ref‖₂ ≤ tol·‖ref‖₂ and |got − ref| ≤ tol·max|ref| elementwise (the
// wlinear tolerances of tests/cuda_wgemv_test.ts).
const OP_TOL: Record<FloatDType, number> = { float32: 1e-5, float16: 2e-3, bfloat16: 1e-2 };

/** The weight quantizations of the tests ("float": none, a float `linear`). */
const QUANTS = {
  "float": {},
  "int8 per channel": { quantDtype: "int8", weightQuantDim: 0 },
  "int4 blocks of 128": { quantDtype: "int4", weightQuantDim: 1, blockSize: 128 },
  "int4 blocks of 32": { quantDtype: "int4", weightQuantDim: 1, blockSize: 32 },
  "fp8 per channel": { quantDtype: "float8e4m3", weightQuantDim: 0 },
} as const satisfies Record<string, tq.LinearOptions>;
type Quant = keyof typeof QUANTS;

interface Case {
  quant: Quant;
  dtype: FloatDType;
  /** Rows of x (x is `[...lead, k]` when `lead` is given, `[m, k]` otherwise). */
  m: number;
  lead?: number[];
  k: number;
  n: number;
  /** The layer norm's affine parameters. */
  affine: "weight and bias" | "weight" | "bias" | "none";
  eps: number;
  bias: boolean;
  act: Activation;
  seed: number;
}

/** The fused op of a case. */
function opOf(c: Case): "linear" | "wlinear" {
  return c.quant === "float" ? "linear" : "wlinear";
}

/** Most rows of x for which a case's op folds a layer norm. */
function foldRows(c: Case): number {
  return c.quant === "float" ? LINEAR_NORM_FOLD_MAX_ROWS : WLINEAR_NORM_FOLD_MAX_ROWS;
}

function describe(c: Case): string {
  return `${c.quant} ${c.dtype} M=${c.m} K=${c.k} N=${c.n} norm ${c.affine} eps ${c.eps} ` +
    `bias ${c.bias} ${c.act}`;
}

/** The scale layout of a case's weight, as the cuda kernels index it. */
function scaleIndex(c: Case): WeightScaleIndex {
  const block = (QUANTS[c.quant] as tq.LinearOptions).blockSize;
  return block === undefined
    ? { nb: 1, sN: 1, kb: 1, sK: 0 }
    : { nb: 1, sN: c.k / block, kb: block, sK: 1 };
}

/**
 * `act(linear(layerNorm(x)))` of a case on `device`; `stepwise` evaluates the layer norm first,
 * so that the linear reads its values as a leaf.
 */
function model(c: Case, device: string): {
  forward: () => tq.Tensor;
  stepwise: () => tq.Tensor;
  normalized: () => tq.Tensor;
  weight: tq.Tensor;
  bias: tq.Tensor | undefined;
} {
  const o: tq.LinearOptions = QUANTS[c.quant];
  const dict = linearState(o, c.n, c.k, c.dtype, c.seed, c.bias);
  const layer = new tq.Linear(c.k, c.n, { ...o, bias: c.bias, dtype: c.dtype });
  layer.loadStateDict(dict);
  layer.to(device);
  const vector = (seed: number, low: number, high: number) =>
    tq.tensor(randomValues(c.k, seed, { low, high }), { dtype: c.dtype, device });
  const lnWeight = c.affine === "weight and bias" || c.affine === "weight"
    ? vector(c.seed + 3, 0.5, 1.5)
    : undefined;
  const lnBias = c.affine === "weight and bias" || c.affine === "bias"
    ? vector(c.seed + 4, -0.3, 0.3)
    : undefined;
  // Rows with their own offset and spread, so the mean and variance matter.
  const xs = randomValues(c.m * c.k, c.seed + 2);
  for (let r = 0; r < c.m; r++) {
    for (let i = 0; i < c.k; i++) xs[r * c.k + i] = 2 * r - 3 + (1 + r) * xs[r * c.k + i];
  }
  const x = tq.tensor(xs, { shape: [...(c.lead ?? [c.m]), c.k], dtype: c.dtype, device });
  const normalized = () => tq.layerNorm(x, lnWeight, lnBias, c.eps);
  const linear = (input: tq.Tensor) => applyActivation(layer.forward(input), c.act);
  return {
    forward: () => linear(normalized()),
    stepwise: () => {
      const normed = normalized();
      return linear(tq.tensor(values(normed), { shape: normed.shape, dtype: c.dtype, device }));
    },
    normalized,
    weight: dict.weight,
    bias: dict.bias,
  };
}

/** The folded graph's output, checking that the norm folded and that switching it off works. */
function foldedAndUnfolded(c: Case, device: string): { got: Float64Array; ref: Float64Array } {
  const what = `${describe(c)} on ${device}`;
  assert.ok(tq.normFoldingEnabled());
  const { forward } = model(c, device);
  const folded = forward();
  assert.deepEqual(tq.inspectGraph(folded).ops, [opOf(c)], `${what}: folded`);
  const got = values(folded);
  tq.setNormFolding(false);
  try {
    const plain = forward();
    assert.deepEqual(tq.inspectGraph(plain).ops, ["layerNorm", opOf(c)], `${what}: unfolded`);
    return { got, ref: values(plain) };
  } finally {
    tq.setNormFolding(true);
  }
}

const ACTS: Activation[] = ["none", "gelu_tanh", "relu"];
const AFFINES: Case["affine"][] = ["weight and bias", "weight", "bias", "none"];
const FLOATS: FloatDType[] = ["float32", "float16", "bfloat16"];

/** Case number i of a list: the norm's options, eps, bias and activation cycled, seeds apart. */
function cycled(c: Pick<Case, "quant" | "dtype" | "m" | "k" | "n">, i: number, seed: number): Case {
  return {
    ...c,
    affine: AFFINES[i % AFFINES.length],
    eps: i % 3 === 2 ? 0.25 : 1e-5,
    bias: Math.floor(i / 4) % 2 === 0,
    act: ACTS[i % ACTS.length],
    seed: seed + 10 * i,
  };
}

/** cpu cases: every quantization and x dtype at every row count that folds, cycling the
 * norm's options. */
const CPU_CASES: Case[] = [];
for (const quant of Object.keys(QUANTS) as Quant[]) {
  for (const dtype of FLOATS) {
    for (let m = 1; m <= foldRows({ quant } as Case); m++) {
      const i = CPU_CASES.length;
      CPU_CASES.push(cycled({ quant, dtype, m, k: 128, n: 24 }, i, 5000));
    }
  }
}

Deno.test("a layer norm folds into the decode-sized linear or wlinear that reads it [cpu]", () => {
  assert.equal(WLINEAR_NORM_FOLD_MAX_ROWS, WGEMV_MMA_MAX_ROWS);
  assert.equal(LINEAR_NORM_FOLD_MAX_ROWS, FLINEAR_GEMV_MAX_ROWS);
  for (const c of CPU_CASES) {
    const what = describe(c);
    const { got, ref } = foldedAndUnfolded(c, "cpu");
    assert.deepEqual(got, ref, `${what}: the folded kernel equals layerNorm + wlinear`);
    const stepwise = model(c, "cpu").stepwise();
    assert.deepEqual(tq.inspectGraph(stepwise).ops, [opOf(c)], what);
    assert.deepEqual(got, values(stepwise), `${what}: equals the layer norm evaluated first`);
    assert.ok(got.some((v) => v !== 0), `${what}: all outputs are zero`);
  }
});

testOnDevices("which layer norms fold into a linear or wlinear: rows, readers, dims", (device) => {
  for (const quant of ["int8 per channel", "float"] as Quant[]) {
    const base: Case = {
      quant,
      dtype: "float16",
      m: 2,
      k: 64,
      n: 16,
      affine: "weight and bias",
      eps: 1e-5,
      bias: true,
      act: "gelu_tanh",
      seed: 7000,
    };
    const op = opOf(base);
    const max = foldRows(base);
    const ops = (c: Case) => tq.inspectGraph(model(c, device).forward()).ops;
    // Rows are counted over x's leading dims: 2 × max / 2 folds, 3 × ⌈(max + 1) / 3⌉ does not.
    assert.deepEqual(ops({ ...base, m: max, lead: [2, max / 2] }), [op]);
    const over = Math.ceil((max + 1) / 3);
    assert.deepEqual(ops({ ...base, m: 3 * over, lead: [3, over] }), ["layerNorm", op]);
    assert.deepEqual(ops({ ...base, m: max + 1 }), ["layerNorm", op]);

    const layer = new tq.Linear(64, 16, { ...QUANTS[quant], dtype: "float16" });
    layer.loadStateDict(linearState(QUANTS[quant], 16, 64, "float16", 1, true));
    layer.to(device);
    // The norm's output also read by another op.
    const x = tq.randn([1, 64], { seed: 2, dtype: "float16", device });
    const normed = tq.layerNorm(x);
    const twice = layer.forward(normed).add(normed.sum(-1, true));
    assert.ok(tq.inspectGraph(twice).ops.includes("layerNorm"), `${op}: a norm read twice stays`);
    assert.ok(tq.inspectGraph(twice).ops.includes(op));
    // A norm over the last two dims.
    const x3 = tq.randn([1, 2, 64], { seed: 3, dtype: "float16", device });
    const wide = tq.ones([2, 64], { dtype: "float16", device });
    assert.deepEqual(tq.inspectGraph(layer.forward(tq.layerNorm(x3, wide))).ops, [
      "layerNorm",
      op,
    ]);
    // Folding off.
    tq.setNormFolding(false);
    try {
      assert.deepEqual(ops(base), ["layerNorm", op]);
    } finally {
      tq.setNormFolding(true);
    }
    assert.deepEqual(ops(base), [op]);
  }
});

// ---------------------------------------------------------------------------------------
// cuda: the `_norm` kernels

/** The GPT-2 decode shapes (K, N): c_attn / c_fc's K, the MLP's K; c_attn's N and a small N. */
const GPU_SHAPES: [number, number][] = [[768, 2304], [3072, 96], [768, 96], [3072, 2304]];
const GPU_QUANTS: Quant[] = ["int4 blocks of 128", "int8 per channel", "fp8 per channel"];

/** cuda cases of the tensor-core kernels: M = 1, 3, 8, every shape several times. */
const GPU_CASES: Case[] = [];
GPU_QUANTS.forEach((quant, qi) => {
  (["float16", "bfloat16"] as FloatDType[]).forEach((dtype, di) => {
    [1, 3, 8].forEach((m, mi) => {
      const i = GPU_CASES.length;
      const [k, n] = GPU_SHAPES[(qi + di + mi) % GPU_SHAPES.length];
      GPU_CASES.push(cycled({ quant, dtype, m, k, n }, i, 8000));
    });
  });
});

/** cuda cases of the float32 FMA kernels: M = 1..4. */
const GPU_FMA_CASES: Case[] = GPU_QUANTS.flatMap((quant, qi) =>
  [1, 2, 3, 4].map((m): Case => ({
    quant,
    dtype: "float32",
    m,
    k: qi === 0 ? 3072 : 768,
    n: 40,
    affine: AFFINES[(m + qi) % AFFINES.length],
    eps: 1e-5,
    bias: m % 2 === 1,
    act: ACTS[(m + qi) % ACTS.length],
    seed: 9000 + 10 * m + 100 * qi,
  }))
);

/**
 * cuda cases no `_norm` kernel takes (the layer norm kernel runs first): 16-bit x with int4
 * blocks of 32 (an FMA kernel), float32 x at 8 rows (no GEMV), and a staged x larger than a
 * block's shared memory (8 rows of 8192).
 */
const GPU_FALLBACK_CASES: Case[] = ([
  ["int4 blocks of 32", "float16", 2, 768, 96],
  ["int8 per channel", "float32", 8, 768, 96],
  ["int8 per channel", "float16", 8, 8192, 40],
] as [Quant, FloatDType, number, number, number][]).map(([quant, dtype, m, k, n], i) => ({
  quant,
  dtype,
  m,
  k,
  n,
  affine: "weight and bias",
  eps: 1e-5,
  bias: true,
  act: "none",
  seed: 9500 + 10 * i,
}));

/**
 * cuda cases of the float linear's `_norm` GEMVs: every dtype at 1..16 rows, K from a warp's
 * row (768) to a 512-thread block's (16384), cycling the norm's options.
 */
const GPU_FLOAT_CASES: Case[] = [];
FLOATS.forEach((dtype, di) => {
  [1, 2, 5, 8, 16].forEach((m, mi) => {
    const i = GPU_FLOAT_CASES.length;
    // GPT-2's c_attn (N = 2304) takes one wave of blocks at up to 4 rows.
    const wide = m <= 4 ? [768, 2304] : [768, 1024];
    const [k, n] = [wide, [3072, 96], [768, 96], [16384, 40], [8192, 24]][(di + mi) % 5];
    GPU_FLOAT_CASES.push(cycled({ quant: "float", dtype, m, k, n }, i, 9700));
  });
});

/**
 * Float linear cases no `_norm` GEMV takes: K not a whole number of 16-byte vectors, and a grid
 * of more blocks than the GPU holds at once (N = 20000).
 */
const GPU_FLOAT_FALLBACK_CASES: Case[] = ([
  ["float16", 3, 100, 40],
  ["float32", 1, 766, 40],
  ["float16", 1, 768, 20000],
] as [FloatDType, number, number, number][]).map(([dtype, m, k, n], i) => ({
  quant: "float",
  dtype,
  m,
  k,
  n,
  affine: "weight and bias",
  eps: 1e-5,
  bias: true,
  act: "relu",
  seed: 9900 + 10 * i,
}));

Deno.test("flinearNormThreads: which float linears normalize x in the GEMV", () => {
  const sms = 132;
  // GPT-2 small's decode: c_attn and c_fc (a warp per row of 768), a row of 3072 (a block of
  // 128 threads for 16-bit x, 256 for float32).
  assert.equal(flinearNormThreads(1, 2304, 768, "float16", sms), 32);
  assert.equal(flinearNormThreads(8, 1024, 768, "bfloat16", sms), 32);
  assert.equal(flinearNormThreads(1, 768, 3072, "float16", sms), 128);
  assert.equal(flinearNormThreads(2, 768, 3072, "float32", sms), 256);
  // The vocabulary's product (more blocks than one wave), a row that is not whole vectors, too
  // many rows.
  assert.equal(flinearNormThreads(1, 50257, 768, "float16", sms), undefined);
  assert.equal(flinearNormThreads(1, 64, 100, "float16", sms), undefined);
  assert.equal(flinearNormThreads(1, 64, 102, "float32", sms), undefined);
  assert.equal(flinearNormThreads(FLINEAR_GEMV_MAX_ROWS + 1, 64, 768, "float16", sms), undefined);
  for (const c of GPU_FLOAT_CASES) {
    assert.ok(flinearNormThreads(c.m, c.n, c.k, c.dtype, sms), `${describe(c)}: not covered`);
  }
  for (const c of GPU_FLOAT_FALLBACK_CASES) {
    assert.equal(flinearNormThreads(c.m, c.n, c.k, c.dtype, sms), undefined, describe(c));
  }
});

/** The streaming GEMV's launch for a wlinear case with a folded norm (on `sms` multiprocessors). */
function normShape(c: Case, sms: number) {
  const q = (QUANTS[c.quant] as tq.LinearOptions).quantDtype!;
  return wgemvShape(c.m, c.n, c.k, q, c.dtype, scaleIndex(c), sms, true);
}

Deno.test("the `_norm` kernels are in both PTX builds with the launch's parameters", () => {
  // out, x, codes, swd, swdKind, bias, act, M, N, K, sN, sK, scaleShift, residual, then lnWeight,
  // lnBias, eps, lnThreads, pitch.
  const params = ["u64", "u64", "u64", "u64", "u32", "u64", "u32", "u32", "u32", "u32", "u64"]
    .concat(["u32", "u32", "u64", "u64", "u64", "f32", "u32", "u32"]);
  const names: string[] = [];
  for (const q of ["i8", "i4", "e4m3"]) {
    for (const x of ["f16", "bf16"]) names.push(`wgemv_mma_${q}_${x}_norm`);
    for (let m = 1; m <= WGEMV_FMA_MAX_ROWS; m++) names.push(`wgemv_fma_${q}_f32_m${m}_norm`);
  }
  // The float linear's: out, x, w, bias, act, M, N, K, KT, splitK, residual, then lnWeight,
  // lnBias, eps, lnThreads.
  const floatParams = ["u64", "u64", "u64", "u64", "u32", "u32", "u32", "u32", "u32", "u32"]
    .concat(["u64", "u64", "u64", "f32", "u32"]);
  const floatNames = ["f32", "f16", "bf16"].flatMap((x) =>
    [1, 2, 4, 8, 16].map((m) => `flinear_gemv_${x}_m${m}_norm`)
  );
  for (
    const [module, kernels, types] of [
      [wgemvPtx, names, params],
      [flinearPtx, floatNames, floatParams],
    ] as const
  ) {
    for (
      const [flavour, ptx] of [["sm_90a", module.ptxSm90a], ["compute_80", module.ptxCompute80]]
    ) {
      const entries = [...ptx.matchAll(/\.entry (\w+)\(([^)]*)\)/g)]
        .filter((e) => e[1].endsWith("_norm"));
      assert.deepEqual(entries.map((e) => e[1]).sort(), [...kernels].sort(), flavour);
      for (const [, name, list] of entries) {
        const got = [...list.matchAll(/\.param \.(\w+)/g)].map((p) => p[1]);
        assert.deepEqual(got, types, `${flavour} ${name}`);
      }
    }
  }
});

Deno.test("wgemvShape with a folded norm: the plain launch, the layer norm's order, the staging", () => {
  const sms = 132;
  const used = new Set<string>();
  for (const c of GPU_FALLBACK_CASES) {
    assert.equal(normShape(c, sms), undefined, `${describe(c)}: left to the layer norm kernel`);
  }
  for (const c of [...GPU_CASES, ...GPU_FMA_CASES]) {
    const what = describe(c);
    const q = (QUANTS[c.quant] as tq.LinearOptions).quantDtype!;
    const s = normShape(c, sms);
    const plain = wgemvShape(c.m, c.n, c.k, q, c.dtype, scaleIndex(c), sms);
    assert.ok(s?.norm && plain, `${what}: not covered`);
    // The same launch as the plain kernel's: the same sums in the same order.
    assert.equal(s.kernel, `${plain.kernel}_norm`, what);
    assert.deepEqual([s.warps, s.blocks, s.scaleShift, s.mma], [
      plain.warps,
      plain.blocks,
      plain.scaleShift,
      plain.mma,
    ], what);
    // The layer-norm kernel: a warp per row up to 1024 values, else a block of a thread per
    // four 16-byte vectors (K = 3072: 128 threads for 16-bit x, 256 for float32).
    const lnThreads = c.k <= 1024 ? 32 : c.dtype === "float32" ? 256 : 128;
    assert.equal(s.norm.lnThreads, lnThreads, what);
    // Staged rows: whole quads of chunks (64 code bytes), plus 64 bytes (bank offset).
    const bits = q === "int4" ? 4 : 8;
    const xBytes = c.dtype === "float32" ? 4 : 2;
    const quadValues = (64 * 8) / bits;
    assert.equal(s.norm.pitch, Math.ceil(c.k / quadValues) * quadValues * xBytes + 64, what);
    assert.equal(s.norm.pitch % 128, 64, what);
    assert.equal(s.norm.sharedBytes, c.m * s.norm.pitch, what);
    used.add(s.kernel);
  }
  const all = [...wgemvPtx.ptxSm90a.matchAll(/\.entry (\w+)\(/g)].map((e) => e[1])
    .filter((name) => name.endsWith("_norm"));
  assert.deepEqual([...used].sort(), all.sort(), "the cuda cases reach every `_norm` kernel");
  // GPT-2's c_attn at M = 1 (int4 blocks of 128, float16): 144 blocks of four warps.
  const attn = normShape({ ...GPU_CASES[0], m: 1, k: 768, n: 2304 }, sms)!;
  assert.deepEqual([attn.kernel, attn.warps, attn.norm!.pitch, attn.norm!.sharedBytes], [
    "wgemv_mma_i4_f16_norm",
    4,
    6 * 256 + 64,
    1600,
  ]);
});

/**
 * Checks a case on cuda: the folded graph equals the unfolded one exactly, ran the `_norm`
 * kernel when its GEMV takes the problem (wgemvShape for a wlinear; for a linear, K a whole
 * number of 16-byte vectors), and is close to the cpu's.
 */
function checkOnGpu(c: Case): void {
  const what = `${describe(c)} on cuda`;
  const float = c.quant === "float";
  const sms = CudaDevice.get(0).smCount;
  const expectNorm = float
    ? flinearNormThreads(c.m, c.n, c.k, c.dtype, sms) !== undefined
    : normShape(c, sms) !== undefined;
  const count = float ? flinearNormLaunchCount : wgemvNormLaunchCount;
  const launches = count();
  const { got, ref } = foldedAndUnfolded(c, "cuda");
  assert.equal(count() - launches, expectNorm ? 1 : 0, `${what}: _norm launches`);
  assert.deepEqual(got, ref, `${what}: folded equals unfolded`);

  const cpu = model(c, "cpu");
  const want = values(cpu.forward());
  // The summed terms' size: Σ_k |x̂_k|·max|w| / √K (random signs) + max|b|.
  const xs = values(cpu.normalized());
  const maxAbs = (v: Float64Array) => v.reduce((a, b) => Math.max(a, Math.abs(b)), 0);
  const wMax = maxAbs(values(cpu.weight));
  const bMax = cpu.bias ? maxAbs(values(cpu.bias)) : 0;
  let xAbs = 0;
  for (let i = 0; i < c.m; i++) {
    let row = 0;
    for (let kk = 0; kk < c.k; kk++) row += Math.abs(xs[i * c.k + kk]);
    xAbs = Math.max(xAbs, row);
  }
  assertNearSums(got, want, OP_TOL[c.dtype], what, (xAbs * wMax) / Math.sqrt(c.k) + bMax);
}

testOnGpu("wlinear with a folded norm, tensor-core kernels: M = 1, 3, 8, 16-bit x", () => {
  for (const c of GPU_CASES) checkOnGpu(c);
});

testOnGpu("wlinear with a folded norm: float32 x (FMA kernels) and the layer-norm fallback", () => {
  for (const c of [...GPU_FMA_CASES, ...GPU_FALLBACK_CASES]) checkOnGpu(c);
});

testOnGpu(
  "linear with a folded norm: M = 1..16, every float dtype, and the layer-norm fallback",
  () => {
    for (const c of [...GPU_FLOAT_CASES, ...GPU_FLOAT_FALLBACK_CASES]) checkOnGpu(c);
  },
);

testOnDevices("a folded norm and a folded residual in one linear: h + linear(layerNorm(h))", (
  device,
) => {
  // GPT-2's decode step: the residual stream h feeds the norm and the residual add.
  for (const dtype of FLOATS) {
    const layer = new tq.Linear(768, 768, { dtype });
    layer.loadStateDict(linearState({}, 768, 768, dtype, 9950, true));
    layer.to(device);
    const h = tq.tensor(randomValues(2 * 768, 9951, { low: -3, high: 3 }), {
      shape: [1, 2, 768],
      dtype,
      device,
    });
    const lnWeight = tq.tensor(randomValues(768, 9952, { low: 0.5, high: 1.5 }), { dtype, device });
    const step = () => h.add(layer.forward(tq.layerNorm(h, lnWeight, undefined, 1e-5)));
    const fused = step();
    assert.deepEqual(tq.inspectGraph(fused).ops, ["linear"], `${dtype} on ${device}`);
    const got = values(fused);
    tq.setNormFolding(false);
    try {
      const plain = step();
      assert.deepEqual(tq.inspectGraph(plain).ops, ["layerNorm", "linear"]);
      assert.deepEqual(got, values(plain), `${dtype} on ${device}: folded equals unfolded`);
    } finally {
      tq.setNormFolding(true);
    }
    assert.ok(got.some((v) => v !== 0), `${dtype} on ${device}: all outputs are zero`);
  }
});
