/**
 * cuBLASLt's candidates for GPT-2-small's float16 prefill products (M = 8 × 512 tokens, the
 * bias or GELU-and-bias epilogue the model uses), each timed two ways, beside the candidate the
 * library's autotune picks in this process. Prints a markdown table and writes it
 * (lt_autotune.md) to `--out`.
 *
 *     deno run -A bench/lt_autotune.ts [--out DIR] [--batches N] [--model]
 *
 * With `--model`, a compiled float16 GPT-2-small prefill (random weights) is built first, so
 * its products are tuned as the model tunes them: the table's "autotune" column is then the
 * model's pick (the same problems share one plan), and the autotune's own measurement of every
 * candidate is listed too.
 *
 * - _stream_: launches back to back over weights rotating through three times the L2 cache,
 *   with the same x (in L2), as a model's layers run one after another: per launch, the median
 *   over `--batches` batches (default 15) of one launch per weight set.
 * - _isolated_: each run after an L2 flush, x read back in by a copy, timed alone with CUDA
 *   events (the autotune's method): the minimum and the median of 16 runs.
 * @module
 */
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import {
  ltMatmulChoices,
  ltMatmulPlan,
  type LtMatmulSpec,
  randomOperandBytes,
} from "../lib/backends/cuda/cublaslt.ts";
import { tnSpec } from "../lib/backends/cuda/util.ts";
import {
  checkCuda,
  copyToDevice,
  createEvent,
  cudaEventDefault,
  cudaMemcpyDeviceToDevice,
  cudart,
  eventElapsedMs,
} from "../ffi/cudart.ts";
import {
  CUBLAS_COMPUTE_32F,
  CUBLASLT_EPILOGUE_BIAS,
  CUBLASLT_EPILOGUE_GELU_BIAS,
  CUDA_R_16F,
  CUDA_R_32F,
} from "../ffi/cublaslt.ts";
import {
  argValue,
  checkCommandLine,
  intArg,
  markdownTable,
  percentile,
  requireGpu,
  timeGpu,
  writeOut,
} from "./timing.ts";
import { TensorqError } from "../lib/errors.ts";
import * as tq from "../mod.ts";
import { GPT2_SMALL, GPT2_SMALL_LAYERS, randomGpt2, randomIds } from "./gpt2_model.ts";

checkCommandLine("lt_autotune.ts", Deno.args, { values: ["batches", "out"], flags: ["model"] });
requireGpu("lt_autotune.ts");

const device = CudaDevice.get(0);
const M = 4096;
const BATCHES = intArg("lt_autotune.ts", Deno.args, "batches", 15);
const ISOLATED_RUNS = 16;
const SHAPES: [name: string, k: number, n: number, epilogue: number][] = GPT2_SMALL_LAYERS.map((
  [name, k, n, gelu],
) => [name, k, n, gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS]);

const lib = cudart();
const events = Array.from({ length: 2 * ISOLATED_RUNS }, () => createEvent(cudaEventDefault));

function randomBuffer(bytes: number, seed: number): CudaBuffer {
  const buf = CudaBuffer.allocate(device, "int8", bytes);
  copyToDevice(buf.pointer, randomOperandBytes(CUDA_R_16F, bytes, seed));
  return buf;
}

const us = (v: number) => v.toFixed(2);
let report = "";
if (Deno.args.includes("--model")) {
  const model = randomGpt2(GPT2_SMALL, "float16", "cuda");
  const ids = randomIds([8, 512], 3, model.config.vocabSize, "cuda");
  const prefill = tq.compile((t: tq.Tensor) => model.forward(t), {
    args: [tq.inputInfo(ids.shape, "int32")],
    device: "cuda",
  });
  const y = prefill(ids) as tq.Tensor;
  await y.data();
  y.dispose();
  prefill.dispose();
  const lines = ltMatmulChoices()
    .filter((c) => c.problem.n === M && c.algorithm.candidateMs)
    .map((c) => {
      const p = c.problem;
      const ms = c.algorithm.candidateMs!.map((v) => (Number.isNaN(v) ? "-" : us(v * 1e3)));
      return `- m=${p.m} k=${p.k} epilogue=${p.epilogue} types=${p.aType}/${p.dType}: ` +
        `picked ${c.algorithm.index}; the autotune's µs by candidate: ${ms.join(", ")}`;
    });
  report = `The model's cuBLASLt products at ${M} rows:\n\n${lines.join("\n")}\n\n`;
  console.log(report);
}
const rows: string[][] = [];
for (const [name, k, n, epilogue] of SHAPES) {
  const spec: LtMatmulSpec = {
    ...tnSpec(n, M, k, {
      a: CUDA_R_16F,
      d: CUDA_R_16F,
      compute: CUBLAS_COMPUTE_32F,
      scale: CUDA_R_32F,
    }),
    epilogue,
  };
  const wBytes = n * k * 2;
  const sets = Math.max(2, Math.ceil((3 * device.l2Bytes) / wBytes));
  const weights = Array.from({ length: sets }, (_, i) => randomBuffer(wBytes, 1000 + i));
  const x = randomBuffer(M * k * 2, 7);
  const xCopy = CudaBuffer.allocate(device, "int8", M * k * 2);
  const bias = randomBuffer(n * 2, 9);
  const y = CudaBuffer.allocate(device, "float16", M * n);
  const flush = CudaBuffer.allocate(device, "int8", 2 * device.l2Bytes);

  const picked = ltMatmulPlan(device, { ...spec, autotune: true }).algorithm;
  for (let index = 0;; index++) {
    let plan;
    try {
      plan = ltMatmulPlan(device, { ...spec, algorithmIndex: index });
    } catch (e) {
      if (e instanceof TensorqError && e.kind === "unsupported") break;
      throw e;
    }
    const run = (w: CudaBuffer) =>
      plan.run(w.address, x.address, y.address, y.address, 1, 0, { bias: bias.address });
    let ok = true;
    try {
      run(weights[0]);
      device.synchronize();
    } catch {
      ok = false;
    }
    if (!ok) {
      rows.push([name, String(index), index === picked.index ? "**picked**" : "", "fails"]);
      continue;
    }
    // Stream: one launch per weight set, back to back (one batch to warm up).
    const stream = timeGpu(() => {
      for (const w of weights) run(w);
    }, { warmup: 1, reps: BATCHES });
    // Isolated: the autotune's method.
    const isolated: number[] = [];
    for (let r = 0; r < ISOLATED_RUNS; r++) {
      checkCuda(
        lib.cudaMemsetAsync(flush.pointer, r & 0xff, BigInt(flush.bytes), device.stream),
        "cudaMemsetAsync",
      );
      checkCuda(
        lib.cudaMemcpyAsync(
          xCopy.pointer,
          x.pointer,
          BigInt(x.bytes),
          cudaMemcpyDeviceToDevice,
          device.stream,
        ),
        "cudaMemcpyAsync",
      );
      checkCuda(lib.cudaEventRecord(events[2 * r], device.stream), "cudaEventRecord");
      run(weights[r % sets]);
      checkCuda(lib.cudaEventRecord(events[2 * r + 1], device.stream), "cudaEventRecord");
    }
    device.synchronize();
    for (let r = 0; r < ISOLATED_RUNS; r++) {
      isolated.push(eventElapsedMs(events[2 * r], events[2 * r + 1]) * 1e3);
    }
    isolated.sort((a, b) => a - b);
    rows.push([
      name,
      String(index),
      index === picked.index ? "**picked**" : "",
      us(stream.medianUs / sets),
      us(isolated[0]),
      us(percentile(isolated, 0.5)),
    ]);
  }
  for (const b of [...weights, x, xCopy, bias, y, flush]) b.dispose();
}

const table = markdownTable(
  [
    "layer",
    "candidate",
    "autotune",
    "stream µs (median)",
    "isolated µs (min)",
    "isolated µs (median)",
  ],
  rows,
);
console.log(table);
writeOut(argValue(Deno.args, "out"), "lt_autotune.md", report + table + "\n");
