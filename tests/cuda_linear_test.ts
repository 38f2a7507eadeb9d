import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { ptx as linearPtx } from "../kernels/ptx/linear.ts";
import { backendFor } from "../lib/backends/backend.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import {
  BLOCK,
  grid1d,
  kernelFunction,
  KernelParams,
  launch,
} from "../lib/backends/cuda/kernels.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { decode, type DType, float8e4m3BitsToNumber, roundHalfToEven } from "../lib/dtype.ts";
import {
  fp8LoweringCounts,
  preparedWeightCount,
  weightScaleIndex,
} from "../lib/backends/cuda/linear.ts";
import { FLOAT_KIND, gemvShape } from "../lib/backends/cuda/util.ts";
import { type Activation, applyActivation, randomValues, testOnGpu, values } from "./helpers.ts";

// Tolerances, as |got − ref| ≤ atol·max|ref| + rtol·|ref| against the CPU backend's fused
// kernels (float64 sums of the same quantized values) and the unfused fake-quant graph.
// - float32 outputs: the GPU sums in float32 (int8 products in exact int32): 1e-5.
// - float8e4m3 products on tensor cores (N, K multiples of 16): Hopper's fp8 MMA keeps sums in
//   a 22-bit accumulator (13 mantissa bits, truncating) between fp32 promotions, about 2^-13
//   relative per step: 2e-3 of max|y| still catches any wrong scale, layout or code (errors of
//   order 1).
// - float16 / bfloat16 outputs: one rounding on each side of a float32-vs-float64 sum, and the
//   unfused graph rounds the product, the bias add and the activation separately: a few ulps.
interface Tolerance {
  rtol: number;
  atol: number;
}
const F32_TOL: Tolerance = { rtol: 1e-5, atol: 1e-5 };
const FP8_TENSOR_CORE_TOL: Tolerance = { rtol: 1e-3, atol: 2e-3 };
const HALF_TOL: Record<string, Tolerance> = {
  float32: F32_TOL,
  float16: { rtol: 1e-3, atol: 1e-3 },
  bfloat16: { rtol: 8e-3, atol: 8e-3 },
};

interface LinearCase {
  /** x's shape; its last extent is K. */
  x: number[];
  /** Output features N. */
  n: number;
  options: tq.LinearOptions;
  /** Quantize the input too (qlinear); false: weight-only (wlinear). */
  input: boolean;
  bias?: boolean;
  act?: Activation;
  dtype?: DType;
  seed: number;
}

/** Two layers with the same quantized state, one on the cpu and one on cuda. */
function linearPair(c: LinearCase): { cpu: tq.Linear; gpu: tq.Linear } {
  const k = c.x[c.x.length - 1];
  const dtype = c.dtype ?? "float32";
  const o = c.options;
  const weight = tq.randn([c.n, k], { seed: c.seed, std: 0.05, dtype });
  const w32 = weight.cast("float32").abs();
  let amax: tq.Tensor;
  if (o.blockSize !== undefined) {
    amax = o.weightQuantDim === 1
      ? w32.reshape([c.n, k / o.blockSize, o.blockSize]).max(2)
      : w32.reshape([c.n / o.blockSize, o.blockSize, k]).max(1);
  } else if (o.weightQuantDim === 0) amax = w32.max(1);
  else if (o.weightQuantDim === 1) amax = w32.max(0);
  else amax = w32.max();
  const dict: Record<string, tq.Tensor> = {
    weight,
    weightScale: tq.scaleFromAmax(amax, o.quantDtype!),
  };
  if (c.bias ?? true) dict.bias = tq.randn([c.n], { seed: c.seed + 1, std: 0.1, dtype });
  if (c.input) dict.inputScale = tq.scaleFromAmax(3.5, o.quantDtype!);
  const make = () => {
    const layer = new tq.Linear(k, c.n, { ...o, bias: c.bias ?? true, dtype });
    layer.loadStateDict(dict);
    return layer;
  };
  return { cpu: make(), gpu: make().to("cuda") };
}

/** Evaluates `make` with Q/DQ fusion off, on freshly lowered plans (fused plans are cached by
 * graph structure, which does not change with the switch). */
function unfused(make: () => tq.Tensor): Float64Array {
  tq.setQdqFusion(false);
  tq.clearPlanCache();
  try {
    const t = make();
    assert.ok(!tq.inspectGraph(t).ops.some((op) => op === "qlinear" || op === "wlinear"));
    return values(t);
  } finally {
    tq.setQdqFusion(true);
    tq.clearPlanCache();
  }
}

function assertNear(got: Float64Array, ref: Float64Array, tol: Tolerance, what: string): void {
  assert.equal(got.length, ref.length, `${what}: length`);
  let scale = 0;
  for (const v of ref) scale = Math.max(scale, Math.abs(v));
  assert.ok(scale > 0, `${what}: the reference is all zeros`);
  let worst = -1, excess = 0;
  for (let i = 0; i < got.length; i++) {
    const e = Math.abs(got[i] - ref[i]) - (tol.atol * scale + tol.rtol * Math.abs(ref[i]));
    if (!(e <= excess)) {
      excess = e;
      worst = i;
    }
  }
  if (worst >= 0) {
    assert.fail(
      `${what}: at ${worst} got ${got[worst]}, expected ${ref[worst]} (max|ref| ${scale}, ` +
        `rtol ${tol.rtol}, atol ${tol.atol}·max|ref|)`,
    );
  }
}

function describe(c: LinearCase): string {
  const o = c.options;
  return `${c.input ? "qlinear" : "wlinear"} ${o.quantDtype} dim ${o.weightQuantDim ?? "-"}` +
    `${o.blockSize ? ` block ${o.blockSize}` : ""} x [${c.x}] N ${c.n} ${c.dtype ?? "float32"}` +
    ` bias ${c.bias ?? true} act ${c.act ?? "none"}`;
}

/** Runs one case on cuda and checks it against the cpu and the unfused graph. */
function checkCase(c: LinearCase, tol?: Tolerance): void {
  const what = describe(c);
  const { cpu, gpu } = linearPair(c);
  const dtype = c.dtype ?? "float32";
  const x = tq.tensor(randomValues(c.x.reduce((a, b) => a * b, 1), c.seed + 2), {
    shape: c.x,
    dtype,
  });
  const xg = x.to("cuda");
  const forward = (layer: tq.Linear, input: tq.Tensor) =>
    applyActivation(layer.forward(input), c.act);
  const y = forward(gpu, xg);
  assert.deepEqual(tq.inspectGraph(y).ops, [c.input ? "qlinear" : "wlinear"], what);
  const got = values(y);
  assert.deepEqual(y.shape, [...c.x.slice(0, -1), c.n], what);
  const k = c.x[c.x.length - 1];
  const fp8TensorCores = c.options.quantDtype === "float8e4m3" && c.input && c.n % 16 === 0 &&
    k % 16 === 0;
  const t = tol ?? (fp8TensorCores ? FP8_TENSOR_CORE_TOL : HALF_TOL[dtype]);
  assertNear(got, values(forward(cpu, x)), t, `${what} vs cpu`);
  assertNear(got, unfused(() => forward(gpu, xg)), t, `${what} vs unfused`);
}

const INT8_CHANNEL: tq.LinearOptions = { quantDtype: "int8", weightQuantDim: 0 };
const INT8_TENSOR: tq.LinearOptions = { quantDtype: "int8" };
const FP8_CHANNEL: tq.LinearOptions = { quantDtype: "float8e4m3", weightQuantDim: 0 };
const FP8_TENSOR: tq.LinearOptions = { quantDtype: "float8e4m3" };
const INT4_BLOCK128: tq.LinearOptions = { quantDtype: "int4", weightQuantDim: 1, blockSize: 128 };

testOnGpu("qlinear int8: multiples of 16 (cuBLASLt), per channel and per tensor", () => {
  let seed = 1;
  for (const options of [INT8_CHANNEL, INT8_TENSOR]) {
    checkCase({ x: [64, 256], n: 512, options, input: true, seed: seed++ });
    checkCase({ x: [64, 256], n: 512, options, input: true, bias: false, seed: seed++ });
    checkCase({ x: [2, 32, 256], n: 512, options, input: true, act: "relu", seed: seed++ });
  }
});

testOnGpu("qlinear int8: 4096 × 4096 at M = 1, 16, 17 (M padded to 16 rows)", () => {
  for (const m of [1, 16, 17]) {
    checkCase({ x: [m, 4096], n: 4096, options: INT8_CHANNEL, input: true, seed: 10 + m });
  }
});

testOnGpu("qlinear int8: shapes that are not multiples of 16 (exact int8 GEMM kernel)", () => {
  let seed = 30;
  for (const options of [INT8_CHANNEL, INT8_TENSOR]) {
    checkCase({ x: [7, 33], n: 17, options, input: true, seed: seed++ });
    checkCase({ x: [1, 100], n: 30, options, input: true, act: "gelu_tanh", seed: seed++ });
    checkCase({ x: [3, 5, 70], n: 130, options, input: true, bias: false, seed: seed++ });
    checkCase({ x: [65, 96], n: 72, options, input: true, act: "relu", seed: seed++ });
  }
});

testOnGpu("qlinear int8: activations, 3-D inputs, float16 / bfloat16 layers", () => {
  let seed = 50;
  for (const act of ["relu", "gelu", "gelu_tanh"] as const) {
    checkCase({ x: [2, 3, 256], n: 128, options: INT8_CHANNEL, input: true, act, seed: seed++ });
    checkCase({ x: [2, 3, 40], n: 24, options: INT8_TENSOR, input: true, act, seed: seed++ });
  }
  for (const dtype of ["float16", "bfloat16"] as const) {
    checkCase({ x: [32, 256], n: 64, options: INT8_CHANNEL, input: true, dtype, seed: seed++ });
    checkCase({ x: [5, 40], n: 24, options: INT8_CHANNEL, input: true, dtype, seed: seed++ });
  }
});

/**
 * Runs fp8 qlinear cases (each with its tolerance, or checkCase's) and checks that every one
 * lowered to `path`: cuBLASLt's e4m3 tensor-core GEMMs, or the codes' exact float32 product.
 */
function checkFp8Path(path: "tensorCores" | "exact", cases: [LinearCase, Tolerance?][]): void {
  const before = fp8LoweringCounts();
  for (const [c, tol] of cases) checkCase(c, tol);
  const after = fp8LoweringCounts();
  const other = path === "exact" ? "tensorCores" : "exact";
  assert.equal(after[path] - before[path], cases.length, `every case lowered to ${path}`);
  assert.equal(after[other], before[other], `no case lowered to ${other}`);
}

/** An fp8 qlinear case: x `[.., K]`, N outputs, weight scales, and any other fields. */
function fp8Case(
  x: number[],
  n: number,
  options: tq.LinearOptions,
  seed: number,
  more: Partial<LinearCase> = {},
): LinearCase {
  return { x, n, options, input: true, seed, ...more };
}

const HALF = { dtype: "float16" } as const;
// The unfused graph rounds the product, the bias add and the GELU separately: two float16 ulps
// against cuBLASLt's GELU + bias epilogue.
const FP8_GELU_TOL: Tolerance = { rtol: 2e-3, atol: 3e-3 };
const FP8_BF16_TOL: Tolerance = { rtol: 8e-3, atol: 8e-3 };

testOnGpu("qlinear fp8: scalar, outer-vector and fallback products", () => {
  // 16-bit layers on cuBLASLt. Per channel, M ≤ 64: scale-1 products and the epilogue; M > 64:
  // outer-vector scales (+ bias epilogue). Per tensor: scalar scale pointers.
  checkFp8Path("tensorCores", [
    [fp8Case([64, 256], 512, FP8_CHANNEL, 70, HALF)],
    [fp8Case([96, 256], 512, FP8_CHANNEL, 71, HALF)],
    [fp8Case([96, 256], 512, FP8_CHANNEL, 72, { ...HALF, act: "relu" })],
    [fp8Case([2, 48, 256], 256, FP8_CHANNEL, 73, { ...HALF, act: "gelu_tanh" }), FP8_GELU_TOL],
    [fp8Case([96, 256], 512, FP8_CHANNEL, 74, { ...HALF, act: "gelu_tanh" }), FP8_GELU_TOL],
    [fp8Case([64, 256], 512, FP8_CHANNEL, 75, { dtype: "bfloat16" }), FP8_BF16_TOL],
    [fp8Case([32, 128], 256, FP8_TENSOR, 76, HALF)],
    [fp8Case([20, 128], 256, FP8_TENSOR, 77, { ...HALF, bias: false })],
  ]);
  // N or K not multiples of 16, and float32 layers: the codes' exact values in a float32
  // product.
  checkFp8Path("exact", [
    [fp8Case([7, 33], 17, FP8_CHANNEL, 78)],
    [fp8Case([1, 100], 30, FP8_TENSOR, 79, { act: "relu" })],
    [fp8Case([96, 256], 512, FP8_CHANNEL, 80), F32_TOL],
  ]);
});

testOnGpu("qlinear fp8: 16-bit layers at any M on the e4m3 tensor cores; float32 exact", () => {
  // M off the 16-row grid (a prompt of any length) once fell to the exact float32 product.
  checkFp8Path("tensorCores", [
    [fp8Case([101, 256], 512, FP8_CHANNEL, 90, HALF)],
    [fp8Case([1, 150, 256], 256, FP8_CHANNEL, 91, HALF)],
    [fp8Case([3, 37, 128], 256, FP8_CHANNEL, 92, { ...HALF, act: "relu" })],
    [fp8Case([37, 128], 256, FP8_TENSOR, 93, HALF)],
    [fp8Case([77, 256], 512, FP8_TENSOR, 94, { dtype: "bfloat16" }), FP8_BF16_TOL],
  ]);
  // float32 layers multiply the codes' exact values, at any M.
  checkFp8Path("exact", [
    [fp8Case([101, 256], 512, FP8_CHANNEL, 95), F32_TOL],
    [fp8Case([64, 256], 512, FP8_CHANNEL, 96), F32_TOL],
  ]);
});

testOnGpu(
  "qlinear's activation quantize divides like IEEE float32: every float16, 56 scales",
  () => {
    // The kernel divides by one multiply and a correction step instead of a division (kernels/
    // qlinear.cuh, ScaleQuotient): its codes must be the division's for every input, including
    // inf, NaN and −0, and for scales on both sides of its fast-path range. float16 x: all 65536
    // bit patterns. float32 x: the float32 values at and next to every int8 and e4m3 rounding
    // midpoint times s, where a quotient one ulp off would change the code, plus random ones.
    const cuda = backendFor("cuda")!;
    const device = CudaDevice.get(0);
    let seed = 12345;
    const random = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    const scales = [1, 0.5, 3, 4 / 127, 0.1, 1 / 448, 7e-5, 12345.678, 2 ** -90, 2 ** 90];
    scales.push(2 ** -91, 2 ** 100, 2 ** -126, 1.5 * 2 ** -140, 2 - 2 ** -23, 1 + 2 ** -23);
    while (scales.length < 56) scales.push((1 + random()) * 2 ** Math.floor(48 * random() - 24));
    const halfBits = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const halfValues = decode("float16", halfBits) as Float32Array;
    const e4m3Values = Array.from({ length: 127 }, (_, i) => float8e4m3BitsToNumber(i));
    const midpoints = [
      ...Array.from({ length: 257 }, (_, i) => i - 128.5),
      ...e4m3Values.slice(0, -1).flatMap((v, i) => {
        const mid = (v + e4m3Values[i + 1]) / 2;
        return [mid, -mid];
      }),
      448 + 16, // where e4m3 saturates
    ];
    const nextFloat = (v: number, steps: number) => {
      const f = new Float32Array([v]);
      const u = new Int32Array(f.buffer);
      u[0] += v < 0 ? -steps : steps;
      return f[0];
    };
    const halfX = cuda.upload("cuda:0", "float16", halfBits) as CudaBuffer;
    const out = CudaBuffer.allocate(device, "int8", 65536);
    try {
      for (const s0 of scales) {
        const s = Math.fround(s0);
        const floatValues = Float32Array.from(
          midpoints.flatMap((m) => {
            const x = Math.fround(m * s);
            return [-2, -1, 0, 1, 2].map((d) => (d === 0 ? x : nextFloat(x, d)));
          }).concat(Array.from({ length: 4096 }, () => (random() - 0.5) * 600 * s)),
        );
        const floatX = cuda.upload("cuda:0", "float32", floatValues) as CudaBuffer;
        const scaleUp = cuda.upload("cuda:0", "float32", Float32Array.of(s)) as CudaBuffer;
        const inputs = [["f16", halfX, halfValues], ["f32", floatX, floatValues]] as const;
        try {
          for (const [xName, x, xs] of inputs) {
            for (const [target, dtype] of [["i8", "int8"], ["e4m3", "float8e4m3"]] as const) {
              const n = xs.length;
              const kernel = kernelFunction(
                device,
                linearPtx,
                `qlinear_quantize_${xName}_${target}`,
              );
              const params = new KernelParams().ptr(out.address).ptr(x.address).ptr(scaleUp.address)
                .i32(FLOAT_KIND.float32).i64(n).ptr(0n).ptr(0n).i32(0).i32(0);
              launch(device, kernel, grid1d(device, n, 8), [BLOCK, 1, 1], params);
              const got = new Uint8Array((cuda.download(out) as Int8Array).buffer, 0, n);
              // The reference: the quantize op on the CPU backend (its IEEE float32 quotient).
              const ref = tq.quantize(tq.tensor(xs), s, dtype).storageSync();
              const want = new Uint8Array(ref.buffer, ref.byteOffset, n);
              let bad = 0;
              let first = "";
              for (let i = 0; i < n; i++) {
                if (got[i] !== want[i] && bad++ === 0) {
                  first = `x ${xs[i]}: code ${got[i]}, want ${want[i]}`;
                }
              }
              assert.equal(bad, 0, `${xName} → ${target}, s ${s}: ${bad} codes differ (${first})`);
            }
          }
        } finally {
          floatX.dispose();
          scaleUp.dispose();
        }
      }
    } finally {
      halfX.dispose();
      out.dispose();
    }
  },
);

testOnGpu("wlinear int8 per channel and int4 block 128 at M = 1, 5, 16, 40", () => {
  let seed = 100;
  for (const options of [INT8_CHANNEL, INT4_BLOCK128]) {
    for (const m of [1, 5, 16, 40]) {
      checkCase({ x: [m, 512], n: 384, options, input: false, seed: seed++ });
    }
    checkCase({ x: [2, 3, 256], n: 96, options, input: false, act: "gelu_tanh", seed: seed++ });
    // 40 rows of float16: cuBLASLt on the dequantized weight with its GELU + bias epilogue.
    checkCase({
      x: [40, 256],
      n: 96,
      options,
      input: false,
      dtype: "float16",
      act: "gelu_tanh",
      seed: options === INT8_CHANNEL ? 150 : 151,
    });
    checkCase({
      x: [4, 256],
      n: 33,
      options,
      input: false,
      bias: false,
      act: "relu",
      seed: seed++,
    });
  }
});

testOnGpu("wlinear: 4096 × 4096 GEMV at M = 1 and 16", () => {
  let seed = 130;
  for (const options of [INT8_CHANNEL, INT4_BLOCK128]) {
    for (const m of [1, 16]) {
      checkCase({ x: [m, 4096], n: 4096, options, input: false, seed: seed++ });
    }
  }
});

testOnGpu("wlinear: other weight modes, fp8 weights, K off the 16-byte grid", () => {
  const cases: [tq.LinearOptions, number[], number][] = [
    [{ quantDtype: "int8" }, [3, 256], 64], // per tensor: GEMV
    [{ quantDtype: "float8e4m3", weightQuantDim: 0 }, [2, 256], 80], // fp8 GEMV
    [{ quantDtype: "float8e4m3" }, [24, 128], 64], // fp8, M > 16: dequantized weight
    [{ quantDtype: "int4", weightQuantDim: 1, blockSize: 32 }, [3, 320], 48], // scale per chunk
    [{ quantDtype: "int8", weightQuantDim: 1, blockSize: 16 }, [2, 256], 40],
    [{ quantDtype: "int4", weightQuantDim: 1, blockSize: 16 }, [2, 256], 40], // 2 scales/chunk
    [{ quantDtype: "int8", weightQuantDim: 1 }, [1, 64], 40], // per input feature
    [{ quantDtype: "int4", weightQuantDim: 0, blockSize: 8 }, [1, 64], 40], // blocks along N
    [{ quantDtype: "int8", weightQuantDim: 0 }, [1, 100], 30], // K % 16 != 0
    [{ quantDtype: "int4", weightQuantDim: 0 }, [5, 48], 7], // K % 32 != 0
  ];
  let seed = 150;
  for (const [options, x, n] of cases) {
    checkCase({ x, n, options, input: false, act: "relu", seed: seed++ });
  }
});

testOnGpu("wlinear: float16 and bfloat16 activations (GEMV and cuBLASLt)", () => {
  let seed = 170;
  for (const dtype of ["float16", "bfloat16"] as const) {
    for (const options of [INT8_CHANNEL, INT4_BLOCK128]) {
      // M = 1 and 5 use the 8-row tensor-core GEMV, 9 and 16 the 16-row one, 40 cuBLASLt.
      for (const m of [1, 5, 9, 16, 40]) {
        checkCase({ x: [m, 512], n: 256, options, input: false, dtype, seed: seed++ });
      }
      checkCase({ x: [12, 1024], n: 72, options, input: false, dtype, seed: seed++ });
      checkCase({ x: [2, 256], n: 64, options, input: false, dtype, act: "gelu", seed: seed++ });
    }
  }
});

testOnGpu("the prepared weight is made once and reused across forwards and plans", () => {
  const cases: LinearCase[] = [
    { x: [16, 256], n: 128, options: INT8_CHANNEL, input: true, seed: 200 },
    { x: [7, 33], n: 17, options: FP8_CHANNEL, input: true, seed: 201 },
    { x: [1, 256], n: 128, options: INT4_BLOCK128, input: false, seed: 202 },
    { x: [40, 256], n: 128, options: INT8_CHANNEL, input: false, seed: 203 },
  ];
  for (const c of cases) {
    const what = describe(c);
    const { gpu } = linearPair(c);
    const x = tq.randn(c.x, { seed: c.seed + 2, device: "cuda" });
    const before = preparedWeightCount();
    const first = values(gpu.forward(x));
    const afterFirst = preparedWeightCount();
    assert.equal(afterFirst, before + 1, `${what}: first forward prepares the weight once`);
    const second = values(gpu.forward(x));
    assert.equal(preparedWeightCount(), afterFirst, `${what}: second forward reuses it`);
    tq.clearPlanCache();
    const third = values(gpu.forward(x));
    assert.equal(preparedWeightCount(), afterFirst, `${what}: a new plan reuses it too`);
    assertNear(second, first, { rtol: 1e-6, atol: 1e-6 }, `${what}: second forward`);
    assertNear(third, first, { rtol: 1e-6, atol: 1e-6 }, `${what}: new plan`);
  }
});

testOnGpu("compiled forwards replay as CUDA graphs with the cached weights", () => {
  const cases: LinearCase[] = [
    { x: [8, 256], n: 128, options: INT8_CHANNEL, input: true, seed: 210 },
    { x: [1, 512], n: 256, options: INT4_BLOCK128, input: false, act: "gelu_tanh", seed: 211 },
    { x: [40, 256], n: 64, options: INT8_CHANNEL, input: false, seed: 212 },
  ];
  for (const c of cases) {
    const what = describe(c);
    const { gpu } = linearPair(c);
    const exe = tq.compile((x) => applyActivation(gpu.forward(x), c.act), {
      args: [tq.inputInfo(c.x)],
      device: "cuda",
    });
    try {
      for (const seed of [c.seed + 2, c.seed + 3]) {
        const x = tq.randn(c.x, { seed, device: "cuda" });
        const eager = values(applyActivation(gpu.forward(x), c.act));
        const before = preparedWeightCount();
        const replayed = values(exe(x) as tq.Tensor);
        assert.equal(preparedWeightCount(), before, `${what}: the replay prepares nothing`);
        assertNear(replayed, eager, { rtol: 1e-6, atol: 1e-6 }, `${what} replay`);
      }
    } finally {
      exe.dispose();
    }
  }
});

// Runs everywhere: the scale index the kernels use matches the quantize op's scale mapping.
Deno.test("weightScaleIndex matches quantize's scale layout in every mode", () => {
  const [n, k] = [8, 32];
  const w = tq.tensor(randomValues(n * k, 300).map((v) => 0.5 * v), { shape: [n, k] });
  const modes: {
    attrs: Record<string, unknown>;
    scaleShape: number[];
    opts: tq.QuantizeOptions;
  }[] = [
    { attrs: { weightMode: "tensor", weightDim: null, blockSize: null }, scaleShape: [], opts: {} },
    {
      attrs: { weightMode: "channel", weightDim: 0, blockSize: null },
      scaleShape: [n],
      opts: { dim: 0 },
    },
    {
      attrs: { weightMode: "channel", weightDim: 1, blockSize: null },
      scaleShape: [k],
      opts: { dim: 1 },
    },
    {
      attrs: { weightMode: "block", weightDim: 1, blockSize: 8 },
      scaleShape: [n, k / 8],
      opts: { dim: 1, blockSize: 8 },
    },
    {
      attrs: { weightMode: "block", weightDim: 0, blockSize: 2 },
      scaleShape: [n / 2, k],
      opts: { dim: 0, blockSize: 2 },
    },
  ];
  const wv = w.dataSync() as Float32Array;
  for (const { attrs, scaleShape, opts } of modes) {
    const count = scaleShape.reduce((a, b) => a * b, 1);
    // Distinct scales: a wrong index changes most quotients' rounded values.
    const scales = Float32Array.from({ length: count }, (_, i) => 0.02 + 0.013 * ((i * 7) % 11));
    const s = tq.tensor(scales, { shape: scaleShape });
    const q = tq.quantize(w, s, "int8", opts).dataSync() as Int8Array;
    const ix = weightScaleIndex(attrs, k);
    for (let r = 0; r < n; r++) {
      for (let c = 0; c < k; c++) {
        const at = Math.floor(r / ix.nb) * ix.sN + Math.floor(c / ix.kb) * ix.sK;
        const v = Math.fround(wv[r * k + c] / scales[at]);
        const expected = Math.max(-128, Math.min(127, roundHalfToEven(v))) + 0; // no -0
        assert.equal(q[r * k + c], expected, `${JSON.stringify(attrs)} at (${r}, ${c})`);
      }
    }
  }
});

Deno.test("gemvShape: tiles hold whole warp steps, fit shared memory and cover K", () => {
  for (const elems of [16, 32]) {
    for (const m of [1, 2, 3, 5, 9, 16]) {
      for (const [n, k] of [[8192, 8192], [768, 3072], [40, 64], [4096, 4096 + 32 * elems]]) {
        const s = gemvShape(m, n, k, elems, 132);
        const step = 32 * elems;
        assert.ok(s.rowsCompiled >= m && s.rowsCompiled <= 16, `rows ${s.rowsCompiled} for ${m}`);
        assert.equal(s.tileK % step, 0);
        assert.ok(s.tileK >= Math.min(k, step));
        assert.ok(s.sharedBytes <= 64 * 1024 && s.sharedBytes === s.rowsCompiled * s.tileK * 4);
        assert.ok([1, 2, 4].includes(s.splitK));
        assert.equal(s.blocks, Math.ceil(Math.ceil(n / 4) / (4 / s.splitK)));
      }
    }
  }
  // Few output channels split K across the warps of a block; many do not.
  assert.equal(gemvShape(1, 768, 3072, 16, 132).splitK, 4);
  assert.equal(gemvShape(1, 8192, 8192, 16, 132).splitK, 1);
});
