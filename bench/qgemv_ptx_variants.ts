/**
 * The decode-sized fused quantized GEMV kernels (kernels/qgemv.cu: qgemv_mma_i8_norm,
 * qgemv_mma_i8, qgemv_mma_e4m3_norm) of one or more PTX builds side by side, to compare
 * versions of the kernel source in one job:
 *
 *     nvcc -O3 -std=c++17 -prec-div=true -prec-sqrt=true -ftz=false \
 *         -gencode=arch=compute_90a,code=compute_90a -ptx -I kernels -o A.ptx A.cu
 *     deno run -A bench/qgemv_ptx_variants.ts A.ptx B.ptx:no-ln-threads ...
 *
 * `:no-ln-threads` marks a build from before the kernels took `lnThreads` (commit "qgemv: a
 * folded layer norm sums in the layer-norm kernel's order"). Shapes: GPT-2 small's folded-norm
 * GEMVs at decode, M = 1: c_attn (2304 × 768, no activation) and c_fc (3072 × 768, tanh GELU);
 * x float16 with a layer norm's weight and bias, per-channel float32 weight scales, float16 bias
 * and output. 40 launches, each on its own copy of random weight codes (more bytes than L2
 * holds, as in a decode step), are recorded in a CUDA graph; the graph is replayed 10 times
 * between two events, 15 times; the median per launch is printed.
 * @module
 */
import { backendFor } from "../lib/backends/backend.ts";
import "../lib/backends/cuda/mod.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import { captureGraph } from "../lib/backends/cuda/graph.ts";
import { kernelFunction, KernelParams, launch } from "../lib/backends/cuda/kernels.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { qgemvMmaShape } from "../lib/backends/cuda/qgemv.ts";
import { allowSharedBytes } from "../lib/backends/cuda/util.ts";
import { checkCuda, createEvent, cudart, eventElapsedMs } from "../ffi/cudart.ts";
import { type DType, encode } from "../lib/dtype.ts";

const KERNELS = ["qgemv_mma_i8_norm", "qgemv_mma_i8", "qgemv_mma_e4m3_norm"];
const SHAPES: [n: number, k: number, act: number][] = [[2304, 768, 0], [3072, 768, 3]];
const COPIES = 40;

if (Deno.args.length === 0) {
  console.log("usage: deno run -A bench/qgemv_ptx_variants.ts A.ptx [B.ptx[:no-ln-threads] ...]");
  Deno.exit(2);
}
const cuda = backendFor("cuda");
if (!cuda || cuda.unavailableReason()) {
  console.log(`no GPU: ${cuda?.unavailableReason() ?? "the cuda backend is not loaded"}`);
  Deno.exit(1);
}
const device = CudaDevice.get(0);
let seed = 7;
const random = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
const upload = (dtype: DType, values: ArrayLike<number>) =>
  cuda.upload("cuda:0", dtype, encode(dtype, Float64Array.from(values))) as CudaBuffer;
const values = (n: number, f: () => number) => Array.from({ length: n }, f);

const rows: string[] = [];
for (const [n, k, act] of SHAPES) {
  const m = 1;
  const x = upload("float16", values(m * k, () => 4 * random() - 1.5));
  const sx = upload("float32", [4 / 127]);
  const weights = values(COPIES, () => 0).map(() =>
    upload("int8", values(n * k, () => Math.floor(random() * 255) - 127))
  );
  const sw = upload("float32", values(n, () => 0.01 + 0.01 * random()));
  const bias = upload("float16", values(n, () => random() - 0.5));
  const lnWeight = upload("float16", values(k, () => 0.5 + random()));
  const lnBias = upload("float16", values(k, () => random() - 0.5));
  const outs = values(COPIES, () => 0).map(() => CudaBuffer.allocate(device, "float16", m * n));
  const shape = qgemvMmaShape(m, n, k, device.smCount)!;
  for (const arg of Deno.args) {
    const [file, flag] = arg.split(":");
    const text = Deno.readTextFileSync(file);
    const module = {
      ptxSm90a: text,
      ptxCompute80: text,
      cubinSm90a: undefined,
      cubinSource: undefined,
    };
    for (const name of KERNELS) {
      const fn = kernelFunction(device, module, name);
      allowSharedBytes(fn, shape.sharedBytes, 46 * 1024);
      const params = new KernelParams();
      const graph = captureGraph(device, () => {
        for (let i = 0; i < COPIES; i++) {
          params.reset().ptr(outs[i].address).ptr(x.address).i32(1).ptr(sx.address).i32(0)
            .ptr(sx.address).i32(0).ptr(weights[i].address).ptr(sw.address).i32(0).i32(1)
            .ptr(bias.address).i32(1).i32(act).i32(m).i32(n).i32(k).i32(shape.splits)
            .i32(shape.pitch).ptr(lnWeight.address).ptr(lnBias.address).f32(1e-5);
          if (flag !== "no-ln-threads") params.i32(32);
          params.ptr(0n);
          const grid: [number, number, number] = [shape.blocks, 1, 1];
          launch(device, fn, grid, [32 * shape.warps, 1, 1], params, shape.sharedBytes);
        }
      });
      for (let i = 0; i < 5; i++) graph.replay();
      const start = createEvent(), end = createEvent();
      const perLaunch: number[] = [];
      for (let r = 0; r < 15; r++) {
        checkCuda(cudart().cudaEventRecord(start, device.stream), "cudaEventRecord");
        for (let i = 0; i < 10; i++) graph.replay();
        checkCuda(cudart().cudaEventRecord(end, device.stream), "cudaEventRecord");
        checkCuda(cudart().cudaEventSynchronize(end), "cudaEventSynchronize");
        perLaunch.push(eventElapsedMs(start, end) * 1000 / (10 * COPIES));
      }
      perLaunch.sort((a, b) => a - b);
      rows.push(
        `| ${n} × ${k} | ${name} | ${file.split("/").pop()} | ${perLaunch[7].toFixed(3)} |`,
      );
      graph.dispose();
      checkCuda(cudart().cudaEventDestroy(start), "cudaEventDestroy");
      checkCuda(cudart().cudaEventDestroy(end), "cudaEventDestroy");
    }
  }
}
console.log("| N × K | kernel | PTX | µs a launch (median) |\n| --- | --- | --- | --- |");
for (const row of rows) console.log(row);
