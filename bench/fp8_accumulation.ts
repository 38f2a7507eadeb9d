/**
 * cuBLASLt's e4m3 GEMMs with outer-vector (per-channel) scales at GPT-2-small's prefill shapes
 * (M = 8 × 512 tokens), with fp8 fast accumulation off (what `qlinear` uses) and on: time and
 * error. Prints a markdown table and writes it (fp8_accumulation.md) to `--out`.
 *
 *     deno run -A bench/fp8_accumulation.ts [--out DIR]
 *
 * Times: the autotune's best (each run from an L2 flushed of the weights) and the mean of 20
 * back-to-back runs, float32 D without an epilogue and float16 D with the model's bias (and
 * GELU for c_fc) epilogue. Error: |D − Σ x·w| / Σ|x·w| over 2000 sampled outputs against a
 * float64 sum, on random e4m3 codes spanning the whole format (unit scales).
 * @module
 */
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { ltMatmulPlan, type LtMatmulSpec } from "../lib/backends/cuda/cublaslt.ts";
import { tnSpec } from "../lib/backends/cuda/util.ts";
import { timeLaunchMs } from "../lib/backends/cuda/wgmma.ts";
import { copyToDevice, copyToHost } from "../ffi/cudart.ts";
import {
  CUBLAS_COMPUTE_32F,
  CUBLASLT_EPILOGUE_BIAS,
  CUBLASLT_EPILOGUE_DEFAULT,
  CUBLASLT_EPILOGUE_GELU_BIAS,
  CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
  CUDA_R_16F,
  CUDA_R_32F,
  CUDA_R_8F_E4M3,
} from "../ffi/cublaslt.ts";
import { float8e4m3BitsToNumber } from "../lib/dtype.ts";
import { argValue, checkCommandLine, markdownTable, noiseBytes, requireGpu } from "./timing.ts";
import { GPT2_SMALL_LAYERS } from "./gpt2_model.ts";

checkCommandLine("fp8_accumulation.ts", Deno.args, { values: ["out"] });
requireGpu("fp8_accumulation.ts");

const device = CudaDevice.get(0);
const M = 4096;
const SHAPES: [name: string, k: number, n: number, gelu: boolean][] = [
  ...GPT2_SMALL_LAYERS,
  ["K = 16384", 16384, 768, false],
];

function upload(bytes: ArrayBufferView<ArrayBuffer>): CudaBuffer {
  const buf = CudaBuffer.allocate(device, "int8", bytes.byteLength);
  copyToDevice(buf.pointer, bytes);
  return buf;
}

const us = (ms: number) => (ms * 1000).toFixed(2);
const rows: string[][] = [];
for (const [name, k, n, gelu] of SHAPES) {
  // Random e4m3 codes (any exponent, either sign), NaN codes replaced.
  const a = noiseBytes(n * k, 21, true), b = noiseBytes(M * k, 22, true);
  const [wa, xb] = [Array.from(a, float8e4m3BitsToNumber), Array.from(b, float8e4m3BitsToNumber)];
  const A = upload(a), B = upload(b);
  const ones = upload(new Float32Array(Math.max(M, n)).fill(1));
  const bias = upload(new Uint16Array(n).fill(0x2000));
  const D = CudaBuffer.allocate(device, "float32", M * n);
  const picks = Array.from({ length: 2000 }, (_, i) => [(i * 7919) % M, (i * 104729) % n]);
  const exact = picks.map(([m, j]) => {
    let sum = 0, abs = 0;
    for (let i = 0; i < k; i++) {
      const p = wa[j * k + i] * xb[m * k + i];
      sum += p;
      abs += Math.abs(p);
    }
    return [sum, abs];
  });
  for (const fast of [false, true]) {
    const spec: LtMatmulSpec = {
      ...tnSpec(n, M, k, {
        a: CUDA_R_8F_E4M3,
        d: CUDA_R_32F,
        compute: CUBLAS_COMPUTE_32F,
        scale: CUDA_R_32F,
      }),
      fastAccum: fast,
      epilogue: CUBLASLT_EPILOGUE_DEFAULT,
      aScaleMode: CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
      bScaleMode: CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
    };
    const scales = { aScale: ones.address, bScale: ones.address };
    const plan = ltMatmulPlan(device, spec);
    const run = () => plan.run(A.address, B.address, D.address, D.address, 1, 0, scales);
    run();
    const warm = timeLaunchMs(device, () => {
      for (let i = 0; i < 20; i++) run();
    }, 5) / 20;
    const y = new Float32Array(M * n);
    copyToHost(y, D.pointer);
    let max = 0, mean = 0;
    picks.forEach(([m, j], i) => {
      const e = Math.abs(y[m * n + j] - exact[i][0]) / exact[i][1];
      max = Math.max(max, e);
      mean += e / picks.length;
    });
    // The model's form: float16 D, bias (and GELU for c_fc) in the epilogue.
    const model: LtMatmulSpec = {
      ...spec,
      ...tnSpec(n, M, k, {
        a: CUDA_R_8F_E4M3,
        d: CUDA_R_16F,
        compute: CUBLAS_COMPUTE_32F,
        scale: CUDA_R_32F,
      }),
      epilogue: gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS,
      biasType: CUDA_R_16F,
      autotune: true, // its time is the autotune's
    };
    let modelTimes = ["no plan", ""];
    try {
      const p16 = ltMatmulPlan(device, model);
      const pointers = { ...scales, bias: bias.address };
      const run16 = () => p16.run(A.address, B.address, D.address, D.address, 1, 0, pointers);
      run16();
      const warm16 = timeLaunchMs(device, () => {
        for (let i = 0; i < 20; i++) run16();
      }, 5) / 20;
      modelTimes = [us(p16.algorithm.ms!), us(warm16)];
    } catch (e) {
      modelTimes = [`no plan (${(e as Error).message.split(" (")[0].slice(0, 40)})`, ""];
    }
    rows.push([
      name,
      `${k} → ${n}`,
      fast ? "on" : "off",
      us(plan.algorithm.ms!),
      us(warm),
      ...modelTimes,
      max.toExponential(2),
      mean.toExponential(2),
    ]);
  }
  for (const x of [A, B, ones, bias, D]) x.dispose();
}
const table = markdownTable(
  [
    "layer",
    "K → N",
    "fast accum",
    "f32 D tuned µs",
    "f32 D warm µs",
    "f16 D + epilogue tuned µs",
    "warm µs",
    "max err / Σ abs(x·w)",
    "mean err / Σ abs(x·w)",
  ],
  rows,
);
console.log(table);
const out = argValue(Deno.args, "out");
if (out) {
  Deno.mkdirSync(out, { recursive: true });
  Deno.writeTextFileSync(`${out}/fp8_accumulation.md`, table + "\n");
}
