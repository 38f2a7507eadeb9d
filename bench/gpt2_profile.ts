/**
 * One compiled GPT-2-small prefill (8 × 512) and one static decode step per mode, each between
 * cuProfilerStart / cuProfilerStop and followed by a marker kernel (int64 abs, which GPT-2 never
 * runs), for a kernel profiler started with profiling off. Warm-up, calibration and autotuning
 * run outside the profiled regions.
 *
 *     ncu --profile-from-start off --clock-control none --cache-control none \
 *         --metrics gpu__time_duration.sum --csv --page raw --log-file OUT/ncu.csv \
 *         deno run -A bench/gpt2_profile.ts [--modes float16,w8a8,fp8,w4] [--tuning FILE] \
 *         [--no-attention-fold] [--compress]
 *     python3 bench/ncu_kernels.py OUT/ncu.csv float16,w8a8,fp8,w4
 *
 * Under the profiler every launch is slow, so the autotune's timings there are wrong and its
 * picks are not those of a normal run. Pass `--tuning FILE` to both a normal run and the
 * profiled one: the first saves its picks, the second uses them. `--compress` replaces each
 * quantized layer's float weight by its codes (`tq.compressWeights`), in a model of the mode's
 * own (the same seeded weights), as `bench/gpu_gpt2.ts --compress` does.
 *
 * The second command sums kernel durations by name for each region (prefill, decode per mode).
 * Each mode also prints the cuBLASLt algorithm its prefill products picked (by heuristic index)
 * and the autotune's time of every candidate.
 * @module
 */
import * as tq from "../mod.ts";
import { checkCu, cuda } from "../ffi/cuda.ts";
import { buildStaticDecoder } from "./gpt2_static_decode.ts";
import { backToFloat, GPT2_SMALL, randomGpt2, randomIds } from "./gpt2_model.ts";
import { argValue, checkCommandLine, requireGpu } from "./timing.ts";
import { ltMatmulChoices } from "../lib/backends/cuda/cublaslt.ts";

const device = "cuda";
checkCommandLine("gpt2_profile.ts", Deno.args, {
  values: ["modes", "tuning"],
  flags: ["no-attention-fold", "compress"],
});
requireGpu("gpt2_profile.ts");
const modes = (argValue(Deno.args, "modes") ?? "float16,w8a8,fp8,w4").split(",");
const tuningFile = argValue(Deno.args, "tuning");
if (tuningFile !== undefined) tq.cuda.setTuningFile(tuningFile);
// Attention apart from the quantized projection that reads it (tq.setAttentionQlinearFusion).
if (Deno.args.includes("--no-attention-fold")) tq.setAttentionQlinearFusion(false);
const compress = Deno.args.includes("--compress");
const baseModel = randomGpt2(GPT2_SMALL, "float16", device);
const vocab = baseModel.config.vocabSize;
const prefillIds = randomIds([8, 512], 3, vocab, device);
const markerInput = tq.tensor(new BigInt64Array([1n, -2n, 3n]), { device });

/** Runs `fn` as a profiled region, then the marker kernel that ends it in the profile. */
async function profiled(fn: () => Promise<void>): Promise<void> {
  checkCu(cuda().cuProfilerStart(), "cuProfilerStart");
  await fn();
  const marker = tq.abs(markerInput).evaluate();
  await marker.data();
  marker.dispose();
  checkCu(cuda().cuProfilerStop(), "cuProfilerStop");
}

let calibration: tq.Calibration | undefined;
const printed = new Set<string>();
for (const mode of modes) {
  // Compressed weights cannot go back to float: those modes get a model of their own.
  const own = compress && mode !== "float16";
  const model = own ? randomGpt2(GPT2_SMALL, "float16", device) : baseModel;
  if (mode !== "float16") {
    calibration ??= tq.calibrate(
      baseModel,
      [randomIds([1, 128], 7, vocab, device)],
      (m, t) => m.forward(t),
      { method: "max", onProgress: () => {} },
    );
    tq.quantizeModel(model, {
      mode: mode as tq.QuantizationMode,
      calibration,
      exclude: ["lm_head"],
    });
    if (own) tq.compressWeights(model);
  }
  const prefill = tq.compile((t: tq.Tensor) => model.forward(t), {
    args: [tq.inputInfo(prefillIds.shape, "int32")],
    device,
  });
  const runPrefill = async () => {
    const y = prefill(prefillIds) as tq.Tensor;
    await y.data();
    y.dispose();
  };
  for (let i = 0; i < 2; i++) await runPrefill();
  for (const c of ltMatmulChoices()) {
    const rows = prefillIds.shape[0] * prefillIds.shape[1];
    const key = JSON.stringify(c.problem);
    if (c.problem.n !== rows || !c.algorithm.candidateMs || printed.has(key)) continue;
    printed.add(key);
    const ms = c.algorithm.candidateMs.map((v) => (Number.isNaN(v) ? "-" : (v * 1e3).toFixed(1)));
    console.log(
      `${mode}: cuBLASLt m=${c.problem.m} k=${c.problem.k} epilogue=${c.problem.epilogue} ` +
        `A=${c.problem.aType} D=${c.problem.dType}: picked ${c.algorithm.index} of µs ${
          ms.join(" ")
        }`,
    );
  }
  const decoder = buildStaticDecoder(model, { batch: 1, maxLength: 1024 });
  let { state } = decoder.prefill(randomIds([1, 512], 5, vocab, device));
  for (let i = 0; i < 3; i++) ({ state } = decoder.step(state));
  await state.ids.data();
  console.log(`${mode}: profiling`);
  await profiled(runPrefill);
  await profiled(async () => {
    ({ state } = decoder.step(state));
    await state.ids.data();
  });
  prefill.dispose();
  if (own) {
    for (const p of model.parameters()) p.dispose();
  } else backToFloat(model);
}
