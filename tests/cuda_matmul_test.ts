import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { DType } from "../lib/dtype.ts";
import {
  CUBLAS_COMPUTE_32F,
  CUBLASLT_EPILOGUE_BIAS,
  CUDA_R_16F,
  CUDA_R_32F,
} from "../ffi/cublaslt.ts";
import {
  LT_AUTOTUNE_MIN_FLOPS,
  type LtAlgorithmChoice,
  ltMatmulCacheSize,
  ltMatmulPlan,
} from "../lib/backends/cuda/cublaslt.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import { setAllowTF32 } from "../lib/backends/cuda/matmul.ts";
import type { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { evalInProcess, randomValues, repoModule, testOnGpu } from "./helpers.ts";

// Norm-relative tolerances ‖out − ref‖ / ‖ref‖ against a float64-accumulated CPU reference
// computed from the same (already rounded) inputs. The GPU accumulates in float32 and rounds
// once: float32 (TF32 off) stays well inside 1e-5 at K ≤ 2304; float16 / bfloat16 add one
// output rounding of at most 2^-11 / 2^-8 relative.
const TOL: Record<string, number> = { float32: 1e-5, float16: 5e-3, bfloat16: 1e-2 };
/** TF32 rounds inputs to 10 mantissa bits (2^-11 relative each). */
const TF32_TOL = 1e-3;
const DTYPES: DType[] = ["float32", "float16", "bfloat16"];

function normRelError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  assert.equal(actual.length, expected.length);
  let num = 0, den = 0;
  for (let i = 0; i < expected.length; i++) {
    num += (actual[i] - expected[i]) ** 2;
    den += expected[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** Seeded normal values on the CPU, rounded to `dtype` (non-zero with probability 1; exact
 * zeros are replaced so every input element matters). */
function randomTensor(shape: number[], seed: number, dtype: DType): tq.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const values = randomValues(n, seed).map((v) => (v === 0 ? 0.5 : v));
  return tq.tensor(values, { shape, dtype });
}

/**
 * Computes `a @ b` on the GPU and checks it against the CPU (float64 accumulation on the same
 * rounded inputs, cast to float32 exactly so the reference has no output rounding). Returns
 * the norm-relative error.
 */
function checkMatmul(
  aShape: number[],
  bShape: number[],
  dtype: DType,
  seed: number,
  tol = TOL[dtype],
): number {
  const a = randomTensor(aShape, seed, dtype);
  const b = randomTensor(bShape, seed + 1, dtype);
  const ref = tq.matmul(a.cast("float32"), b.cast("float32"));
  const out = tq.matmul(a.to("cuda"), b.to("cuda"));
  const what = `${dtype} [${aShape}] @ [${bShape}]`;
  assert.equal(out.dtype, dtype, what);
  assert.deepEqual(out.shape, ref.shape, what);
  const err = normRelError(out.dataSync() as Float32Array, ref.dataSync() as Float32Array);
  assert.ok(err <= tol, `${what}: norm-relative error ${err} > ${tol}`);
  return err;
}

testOnGpu("cuda matmul: 2-D products, including sizes that are not multiples of 16", () => {
  const sizes: [number, number, number][] = [[1, 1, 1], [3, 5, 7], [17, 33, 65], [
    256,
    768,
    2304,
  ]];
  for (const dtype of DTYPES) {
    for (const [m, k, n] of sizes) checkMatmul([m, k], [k, n], dtype, m * 7 + k * 3 + n);
  }
});

testOnGpu("cuda matmul: equal batch dims (one strided-batched call)", () => {
  const cases: [number[], number[]][] = [
    [[4, 17, 33], [4, 33, 65]],
    [[2, 3, 5, 7], [2, 3, 7, 9]],
    // Odd matrix sizes: the batch strides leave 16-bit matrices only 2-byte aligned.
    [[3, 3, 5], [3, 5, 7]],
  ];
  let seed = 100;
  for (const dtype of DTYPES) {
    for (const [as, bs] of cases) checkMatmul(as, bs, dtype, seed += 2);
  }
});

testOnGpu("cuda matmul: broadcast batch dims like NumPy", () => {
  const cases: [number[], number[]][] = [
    [[6, 17, 33], [33, 65]], // b without batch: the stack of a is one tall matrix
    [[4, 5, 7], [1, 7, 3]], // b's batch dims all 1
    [[17, 33], [6, 33, 65]], // a without batch: stride 0 for a
    [[1, 1, 5, 7], [3, 7, 2]], // a's batch dims all 1
    [[2, 1, 3, 4], [5, 4, 2]], // partial broadcast: a loop over groups
    [[2, 1, 3, 5], [1, 4, 5, 7]], // partial broadcast with odd (2-byte aligned) offsets
    [[3, 1, 2, 5, 7], [4, 1, 7, 3]], // partial broadcast, groups of a tall a times one b
  ];
  let seed = 200;
  for (const dtype of DTYPES) {
    for (const [as, bs] of cases) checkMatmul(as, bs, dtype, seed += 2);
  }
});

testOnGpu("cuda matmul: 1-D operands are a row / a column", () => {
  const cases: [number[], number[]][] = [
    [[33], [33]],
    [[33], [33, 65]],
    [[17, 33], [33]],
    [[4, 17, 33], [33]],
    [[33], [4, 33, 65]],
    [[1], [1]],
  ];
  let seed = 300;
  for (const dtype of DTYPES) {
    for (const [as, bs] of cases) checkMatmul(as, bs, dtype, seed += 2);
  }
});

testOnGpu("cuda matmul: K = 0 gives zeros, empty outputs give empty tensors", () => {
  for (const dtype of DTYPES) {
    const cases: [number[], number[], number[]][] = [
      [[3, 0], [0, 4], [3, 4]],
      [[2, 3, 0], [2, 0, 5], [2, 3, 5]],
      [[0], [0], []],
      [[0, 5], [5, 3], [0, 3]],
      [[3, 5], [5, 0], [3, 0]],
      [[0, 3, 5], [5, 2], [0, 3, 2]],
    ];
    for (const [as, bs, expected] of cases) {
      // Leave non-zero bytes in the pool so that a missing memset shows.
      const dirty = tq.full([64], 7, { dtype, device: "cuda" });
      dirty.evaluate();
      dirty.dispose();
      const a = tq.zeros(as, { dtype, device: "cuda" });
      const b = tq.zeros(bs, { dtype, device: "cuda" });
      const out = tq.matmul(a, b);
      const what = `${dtype} [${as}] @ [${bs}]`;
      assert.deepEqual(out.shape, expected, what);
      const values = Array.from(out.dataSync() as Float32Array);
      assert.deepEqual(values, new Array(expected.reduce((x, y) => x * y, 1)).fill(0), what);
    }
  }
});

testOnGpu("cuda matmul: setAllowTF32 switches float32 to TF32 and back", () => {
  const shapes: [number[], number[]] = [[256, 768], [768, 2304]];
  try {
    setAllowTF32(true);
    // TF32 may differ from exact float32 (difference > 0 allowed), within 1e-3.
    checkMatmul(shapes[0], shapes[1], "float32", 400, TF32_TOL);
  } finally {
    setAllowTF32(false);
  }
  // The same plan (cached) is exact float32 again.
  checkMatmul(shapes[0], shapes[1], "float32", 400);
});

testOnGpu("cuda matmul: repeated evaluation reuses the tuned plan and is bit-identical", () => {
  const a = randomTensor([64, 96], 500, "float16").to("cuda");
  const b = randomTensor([96, 80], 501, "float16").to("cuda");
  const first = tq.matmul(a, b).dataSync();
  const prepared = ltMatmulCacheSize();
  const second = tq.matmul(a, b).dataSync();
  assert.equal(ltMatmulCacheSize(), prepared, "no new cuBLASLt problem for the same shape");
  assert.deepEqual(second, first);
});

/** The device buffer of an evaluated CUDA tensor. */
function bufferOf(t: tq.Tensor): CudaBuffer {
  return t.evaluate().node.buffer as CudaBuffer;
}

testOnGpu("ltMatmulPlan: TN product with a bias epilogue, scalars and pointer overrides", () => {
  const device = CudaDevice.get(0);
  // Row-major Y[M, N] = X[M, K] · W[N, K]ᵀ + bias[N]: A = W (K × N, ld K, op T), B = X
  // (K × M, ld K, op N), D = Yᵀ (N × M, ld N); the bias has one value per row of D.
  const [M, N, K] = [37, 50, 70];
  const x = randomValues(M * K, 600), w = randomValues(N * K, 601);
  const bias1 = randomValues(N, 602), bias2 = randomValues(N, 603);
  const xg = tq.tensor(x, { shape: [M, K], device: "cuda" });
  const wg = tq.tensor(w, { shape: [N, K], device: "cuda" });
  const b1 = tq.tensor(bias1, { device: "cuda" });
  const b2 = tq.tensor(bias2, { device: "cuda" });
  const y = tq.zeros([M, N], { device: "cuda" });
  // Float64 reference on the float32-rounded inputs.
  const xf = Float32Array.from(x), wf = Float32Array.from(w);
  const product = new Float64Array(M * N);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let p = 0; p < K; p++) s += xf[i * K + p] * wf[j * K + p];
      product[i * N + j] = s;
    }
  }
  const withBias = (bias: Float64Array) => product.map((v, i) => v + Math.fround(bias[i % N]));

  const spec = {
    transA: true,
    transB: false,
    m: N,
    n: M,
    k: K,
    lda: K,
    ldb: K,
    ldc: N,
    aType: CUDA_R_32F,
    bType: CUDA_R_32F,
    cType: CUDA_R_32F,
    dType: CUDA_R_32F,
    computeType: CUBLAS_COMPUTE_32F,
    scaleType: CUDA_R_32F,
  };
  const plan = ltMatmulPlan(device, {
    ...spec,
    epilogue: CUBLASLT_EPILOGUE_BIAS,
    biasPointer: bufferOf(b1).address,
    autotune: true,
  });
  assert.ok(plan.algorithm.candidates >= 1 && plan.algorithm.ran >= 1, "a candidate ran");
  assert.ok(Number.isFinite(plan.algorithm.ms), "the chosen candidate was timed");
  // By default a problem this small takes the heuristic's first pick, untimed; one of
  // LT_AUTOTUNE_MIN_FLOPS is timed.
  const untimed = ltMatmulPlan(device, spec);
  assert.deepEqual([untimed.algorithm.index, untimed.algorithm.ran], [0, 0]);
  assert.equal(untimed.algorithm.ms, undefined);
  const big = Math.ceil(LT_AUTOTUNE_MIN_FLOPS / (2 * 1024 * 1024));
  const timed = ltMatmulPlan(device, {
    ...spec,
    m: 1024,
    n: big,
    k: 1024,
    lda: 1024,
    ldb: 1024,
    ldc: 1024,
  });
  assert.ok(timed.algorithm.ran >= 1 && Number.isFinite(timed.algorithm.ms), "timed by default");
  const [xa, wa, ya] = [bufferOf(xg).address, bufferOf(wg).address, bufferOf(y).address];
  plan.run(wa, xa, ya, ya);
  let err = normRelError(y.dataSync() as Float32Array, withBias(bias1));
  assert.ok(err <= 1e-5, `bias epilogue: error ${err}`);
  plan.run(wa, xa, ya, ya, 1, 0, { bias: bufferOf(b2).address });
  err = normRelError(y.dataSync() as Float32Array, withBias(bias2));
  assert.ok(err <= 1e-5, `overridden bias: error ${err}`);

  // The same problem again is served from the cache, whatever its bias pointer.
  const prepared = ltMatmulCacheSize();
  const again = ltMatmulPlan(device, {
    ...spec,
    epilogue: CUBLASLT_EPILOGUE_BIAS,
    biasPointer: bufferOf(b1).address,
    autotune: true,
  });
  assert.equal(ltMatmulCacheSize(), prepared);
  assert.equal(again.key, plan.key);

  // alpha and beta: D = 0.5 · W·X + 2 · C with C aliasing D (holding the bias2 result).
  const plain = ltMatmulPlan(device, spec);
  plain.run(wa, xa, ya, ya, 0.5, 2);
  const expected = withBias(bias2).map((v, i) => 2 * v + 0.5 * product[i]);
  err = normRelError(y.dataSync() as Float32Array, expected);
  assert.ok(err <= 1e-5, `alpha/beta: error ${err}`);
});

/** Plans one autotuned float16 product in a new process with `tuningFile`; its choice. */
function planInProcess(tuningFile: string): Promise<LtAlgorithmChoice> {
  const script = [
    `import * as tq from ${repoModule("../mod.ts")};`,
    `import { ltMatmulPlan } from ${repoModule("../lib/backends/cuda/cublaslt.ts")};`,
    `import { CudaDevice } from ${repoModule("../lib/backends/cuda/device.ts")};`,
    `import { tnSpec } from ${repoModule("../lib/backends/cuda/util.ts")};`,
    `tq.cuda.setTuningFile(${JSON.stringify(tuningFile)});`,
    // 2 · 2048 · 2048 · 1024 flops: above the autotune's threshold.
    "const plan = ltMatmulPlan(CudaDevice.get(0), { ...tnSpec(2048, 2048, 1024, " +
    `{ a: ${CUDA_R_16F}, d: ${CUDA_R_16F}, compute: ${CUBLAS_COMPUTE_32F}, scale: ${CUDA_R_32F} }),` +
    " autotune: true });",
    "console.log(JSON.stringify(plan.algorithm));",
  ].join("\n");
  return evalInProcess<LtAlgorithmChoice>(script);
}

testOnGpu("a tuning file gives another process the same cuBLASLt pick, untimed", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const file = `${dir}/tuning.json`;
    const first = await planInProcess(file);
    assert.ok(first.ran > 1, `the first process times its candidates (ran ${first.ran})`);
    const saved = JSON.parse(Deno.readTextFileSync(file));
    const entries = Object.values(saved.devices).flatMap((d) =>
      Object.values(d as Record<string, { index: number; algo: string }>)
    );
    assert.equal(entries.length, 1);
    assert.equal(entries[0].index, first.index);
    assert.match(entries[0].algo, /^[0-9a-f]{128}$/);

    const second = await planInProcess(file);
    assert.equal(second.ran, 0, "the second process takes the saved pick without timing");
    assert.equal(second.index, first.index);

    // A pick whose algorithm the heuristic no longer offers is timed again and replaced.
    const stale = Deno.readTextFileSync(file).replace(entries[0].algo, "ab".repeat(64));
    Deno.writeTextFileSync(file, stale);
    const third = await planInProcess(file);
    assert.ok(third.ran > 1, "a stale pick is timed again");
    assert.doesNotMatch(Deno.readTextFileSync(file), /(ab){64}/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

/**
 * Runs one w8a8 int8 layer (1024 rows, 768 → 768, float16) in a new process with
 * `tuningFile`: how many int8 GEMM problems it timed.
 */
function int8LayerInProcess(tuningFile: string): Promise<{ timings: number }> {
  const script = [
    `import * as tq from ${repoModule("../mod.ts")};`,
    `import { int8GemmTimingCount } from ${repoModule("../lib/backends/cuda/linear.ts")};`,
    `tq.cuda.setTuningFile(${JSON.stringify(tuningFile)});`,
    "const layer = new tq.Linear(768, 768, { quantDtype: 'int8', weightQuantDim: 0, " +
    "dtype: 'float16' });",
    "const weight = tq.randn([768, 768], { seed: 1, std: 0.05, dtype: 'float16' });",
    "layer.loadStateDict({ weight, bias: tq.randn([768], { seed: 2, dtype: 'float16' }),",
    "  weightScale: tq.scaleFromAmax(weight.cast('float32').abs().max(1), 'int8'),",
    "  inputScale: tq.scaleFromAmax(3, 'int8') });",
    "layer.to('cuda');",
    "const x = tq.randn([1024, 768], { seed: 3, dtype: 'float16', device: 'cuda' });",
    "layer.forward(x).evaluate();",
    "console.log(JSON.stringify({ timings: int8GemmTimingCount() }));",
  ].join("\n");
  return evalInProcess<{ timings: number }>(script);
}

testOnGpu("a tuning file gives another process the same int8 GEMM tiles, untimed", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const file = `${dir}/tuning.json`;
    const variantOf = () => {
      const saved = JSON.parse(Deno.readTextFileSync(file));
      const entries = Object.values(saved.devices).flatMap((d) =>
        Object.entries(d as Record<string, { variant?: string }>)
      ).filter(([key]) => key.startsWith("wgmma_i8 "));
      assert.equal(entries.length, 1, "one int8 GEMM problem in the file");
      return entries[0][1].variant!;
    };
    const first = await int8LayerInProcess(file);
    assert.equal(first.timings, 1, "the first process times the problem");
    const variant = variantOf();
    assert.match(variant, /^(lt|[a-z0-9]+x[0-9]+)$/);

    const second = await int8LayerInProcess(file);
    assert.equal(second.timings, 0, "the second process takes the saved choice without timing");
    assert.equal(variantOf(), variant);

    // A tile configuration that no longer exists is timed again and replaced.
    const stale = Deno.readTextFileSync(file).replace(
      `"variant": ${JSON.stringify(variant)}`,
      '"variant": "nonexistent"',
    );
    assert.notEqual(stale, Deno.readTextFileSync(file));
    Deno.writeTextFileSync(file, stale);
    const third = await int8LayerInProcess(file);
    assert.equal(third.timings, 1, "an unknown tile configuration is timed again");
    assert.notEqual(variantOf(), "nonexistent");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
