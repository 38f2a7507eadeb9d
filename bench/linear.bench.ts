/**
 * `deno task bench`: a quantized Linear forward (`forward(x).evaluate()`) in each mode, on the
 * CPU at small shapes and, when a GPU is usable, on CUDA at GPT-2 shapes (synchronized after
 * each call). Without a GPU the CUDA benches are skipped (`deno bench` does not list them), and
 * one line says why.
 *
 * For the GPU figures against PyTorch, run bench/run_gpu.sh on the GPU machine instead.
 * @module
 */
import * as tq from "../mod.ts";
import {
  type BenchFloat,
  deviceTensor,
  gpuAvailable,
  gpuUnavailableLine,
  randnHost,
} from "./timing.ts";

interface Mode {
  name: string;
  options: tq.LinearOptions;
  /** Per-tensor input quantization (W8A8 / fp8). */
  inputs: boolean;
}

const MODES: Mode[] = [
  { name: "float (no quantization)", options: {}, inputs: false },
  { name: "W8A8 int8", options: { quantDtype: "int8", weightQuantDim: 0 }, inputs: true },
  { name: "fp8 e4m3", options: { quantDtype: "float8e4m3", weightQuantDim: 0 }, inputs: true },
  { name: "weight-only int8", options: { quantDtype: "int8", weightQuantDim: 0 }, inputs: false },
  {
    name: "weight-only int4 block 128",
    options: { quantDtype: "int4", weightQuantDim: 1, blockSize: 128 },
    inputs: false,
  },
];

const BOUNDS: Record<string, number> = { int8: 127, int4: 7, float8e4m3: 448 };

/** A seeded Linear(k → n) in `mode` with scales from the weights' and the input's ranges. */
function makeLayer(
  mode: Mode,
  k: number,
  n: number,
  dtype: BenchFloat,
  device: string,
  x: Float32Array,
): tq.Linear {
  const layer = tq.withoutInitialization(() => new tq.Linear(k, n, { ...mode.options, dtype }));
  const w = randnHost(n * k, 2, 1 / Math.sqrt(k));
  const dict: Record<string, tq.Tensor> = {
    weight: deviceTensor(w, [n, k], dtype, device),
    bias: deviceTensor(randnHost(n, 3, 0.05), [n], dtype, device),
  };
  const q = mode.options.quantDtype;
  if (q !== undefined) {
    const bound = BOUNDS[q];
    const block = mode.options.blockSize ?? k;
    const scales = new Float32Array(n * (k / block));
    for (let i = 0; i < scales.length; i++) {
      let m = 0;
      for (let j = i * block; j < (i + 1) * block; j++) m = Math.max(m, Math.abs(w[j]));
      scales[i] = m > 0 ? Math.fround(m / bound) : 1;
    }
    const shape = mode.options.blockSize ? [n, k / block] : [n];
    dict.weightScale = tq.tensor(scales, { shape, device });
    if (mode.inputs) {
      let m = 0;
      for (const v of x) m = Math.max(m, Math.abs(v));
      dict.inputScale = tq.tensor(Float32Array.of(Math.fround(m / bound)), { shape: [], device });
    }
  }
  layer.loadStateDict(dict);
  return layer;
}

// ---- CPU: small shapes ------------------------------------------------------------------------

{
  const [m, k, n] = [8, 256, 256];
  const xHost = randnHost(m * k, 1);
  const x = tq.tensor(xHost, { shape: [m, k] });
  for (const mode of MODES) {
    const layer = makeLayer(mode, k, n, "float32", "cpu", xHost);
    Deno.bench({
      name: `cpu ${mode.name} Linear ${k}→${n}, M=${m}, float32`,
      group: "cpu linear",
      baseline: mode.options.quantDtype === undefined,
      fn: () => {
        layer.forward(x).evaluate();
      },
    });
  }
}

// ---- CUDA: GPT-2 shapes -----------------------------------------------------------------------

const gpuReason = gpuAvailable() ? undefined : gpuUnavailableLine();
if (gpuReason) {
  console.log(`CUDA benches skipped: no GPU (${gpuReason})`);
}

const GPU_CASES: { m: number; k: number; n: number }[] = [
  { m: 4096, k: 768, n: 2304 },
  { m: 1, k: 4096, n: 4096 },
];

for (const { m, k, n } of GPU_CASES) {
  for (const mode of MODES) {
    const name = `cuda ${mode.name} Linear ${k}→${n}, M=${m}, float16`;
    const group = `cuda linear M=${m}`;
    if (gpuReason) {
      Deno.bench({ name: `${name} (skipped: no GPU)`, group, ignore: true, fn: () => {} });
      continue;
    }
    const xHost = randnHost(m * k, 1);
    const x = deviceTensor(xHost, [m, k], "float16", "cuda");
    const layer = makeLayer(mode, k, n, "float16", "cuda", xHost);
    Deno.bench({
      name,
      group,
      baseline: mode.options.quantDtype === undefined,
      fn: () => {
        layer.forward(x).evaluate().dispose();
        tq.cuda.synchronize();
      },
    });
  }
}

{
  const name = "cuda compiled 15 × Linear(256, 256), batch 1, float32 (graph replay)";
  if (gpuReason) {
    Deno.bench({
      name: `${name} (skipped: no GPU)`,
      group: "cuda stack",
      ignore: true,
      fn: () => {},
    });
  } else {
    const layers = Array.from({ length: 15 }, (_, l) => {
      const layer = tq.withoutInitialization(() => new tq.Linear(256, 256));
      layer.loadStateDict({
        weight: deviceTensor(randnHost(256 * 256, 10 + l, 1 / 16), [256, 256], "float32", "cuda"),
        bias: deviceTensor(randnHost(256, 40 + l, 0.05), [256], "float32", "cuda"),
      });
      return layer;
    });
    const stack = new tq.Sequential(...layers);
    const exe = tq.compile((z: tq.Tensor) => stack.forward(z), {
      args: [tq.inputInfo([1, 256], "float32")],
      device: "cuda",
    });
    const x = deviceTensor(randnHost(256, 70), [1, 256], "float32", "cuda");
    Deno.bench({
      name,
      group: "cuda stack",
      fn: () => {
        (exe(x) as tq.Tensor).dispose();
        tq.cuda.synchronize();
      },
    });
  }
}
