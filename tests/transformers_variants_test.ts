/**
 * GPT-2 checkpoints of unusual shapes against transformers' own outputs: head sizes 8 to 128,
 * sharded files, an untied `lm_head`, float16 / bfloat16 checkpoints, a checkpoint without the
 * `transformer.` prefix, every MLP activation, both attention-scaling options.
 *
 * The checkpoints come from `python3 tests/transformers/make_gpt2_variants.py DIR [SEED]`
 * (torch and transformers). One set is kept in tests/fixtures/gpt2_variants and always runs;
 * `TENSORQ_GPT2_VARIANTS=DIR` adds another (other weights and ids). Each runs on the CPU and,
 * when a GPU is usable, on CUDA. For each variant and device:
 * - float32 logits of a batched forward match transformers' (max |Δ| <= 1e-4 · max |logit|);
 * - greedy `generate` (KV cache, compiled step) gives transformers' greedy tokens; a token may
 *   differ only where the reference's logits tie within 1e-3 · max |logit| (the rest is not
 *   compared, as the sequences part there);
 * - a growing KV cache, fed transformers' tokens one by one, gives the logits of its full
 *   forward (same bound);
 * - on CUDA, float16 weights: max |Δ| <= 3e-2 · max |logit| against the float32 reference;
 * - every quantization mode runs, and on CUDA agrees with the CPU: weight-only modes to 1e-3 ·
 *   max |logit|, the modes that quantize activations by a mean |Δ| under half of the mean
 *   quantization error (a value rounded across a step boundary changes by a whole step).
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  calibrate,
  generate,
  GPT2LMHeadModel,
  loadSafetensors,
  type QuantizationMode,
  quantizeModel,
  type Tensor,
  tensor,
} from "../mod.ts";
import { testOnDevices, values } from "./helpers.ts";

/** The kept set, and the one `TENSORQ_GPT2_VARIANTS` names (if any), with their test labels. */
const SETS: { label: string; dir: string }[] = [
  { label: "", dir: fileURLToPath(new URL("./fixtures/gpt2_variants/", import.meta.url)) },
];
const extra = Deno.env.get("TENSORQ_GPT2_VARIANTS");
if (extra !== undefined) SETS.push({ label: " (TENSORQ_GPT2_VARIANTS)", dir: extra });

/** The variant directories under `dir` (each with a reference.safetensors). */
function variants(dir: string): string[] {
  return [...Deno.readDirSync(dir)]
    .filter((e) => e.isDirectory)
    .map((e) => e.name)
    .filter((name) => {
      try {
        return Deno.statSync(join(dir, name, "reference.safetensors")).isFile;
      } catch {
        return false;
      }
    })
    .sort();
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

function diffs(a: ArrayLike<number>, b: ArrayLike<number>): { max: number; mean: number } {
  assert.equal(a.length, b.length, "lengths");
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    assert.ok(!Number.isNaN(d), `NaN at ${i}`);
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / a.length };
}

function ints(t: Tensor): number[] {
  return Array.from(t.dataSync() as BigInt64Array | Int32Array, Number);
}

function idsTensor(ids: number[], rows = 1): Tensor {
  return tensor(Int32Array.from(ids), { shape: [rows, ids.length / rows] });
}

/** The largest power of two <= 128 that divides every Linear's input features. */
function w4BlockSize(model: GPT2LMHeadModel): number {
  const { nEmbd, nInner } = model.config;
  let b = 128;
  while (nEmbd % b !== 0 || nInner % b !== 0) b /= 2;
  return b;
}

interface Reference {
  ids: number[];
  rows: number;
  logits: Float64Array;
  genIds: number[];
  genLogits: Float64Array;
  scale: number;
}

function readReference(dir: string): Reference {
  const file = loadSafetensors(join(dir, "reference.safetensors"));
  try {
    const ids = file.get("ids");
    const logits = values(file.get("logits"));
    return {
      ids: ints(ids),
      rows: ids.shape[0],
      logits,
      genIds: ints(file.get("gen_ids")),
      genLogits: values(file.get("gen_logits")),
      scale: maxAbs(logits),
    };
  } finally {
    file.close();
  }
}

/** Index of the largest value and its margin over the second largest. */
function topTwo(row: ArrayLike<number>): { index: number; margin: number } {
  let first = -Infinity;
  let second = -Infinity;
  let index = -1;
  for (let i = 0; i < row.length; i++) {
    if (row[i] > first) {
      second = first;
      first = row[i];
      index = i;
    } else if (row[i] > second) second = row[i];
  }
  return { index, margin: first - second };
}

const MODES: readonly QuantizationMode[] = ["w8", "w4", "w8a8", "fp8"];

/** Quantized logits of the batched ids per mode, on `device` (calibrated on the same ids). */
function quantizedLogits(dir: string, device: string, ref: Reference): Map<string, Float64Array> {
  const out = new Map<string, Float64Array>();
  for (const mode of MODES) {
    const model = GPT2LMHeadModel.fromPretrained(dir, { device });
    const ids = idsTensor(ref.ids, ref.rows).to(device);
    const calibration = calibrate(model, [ids], (m, x) => m.forward(x), {
      onProgress: () => {},
    });
    quantizeModel(model, {
      mode,
      calibration,
      exclude: ["lm_head"],
      blockSize: w4BlockSize(model),
    });
    out.set(mode, values(model.forward(ids)));
  }
  return out;
}

const cpuQuantized = new Map<string, Map<string, Float64Array>>();

// CUDA runs after the CPU, whose quantized logits it compares with.
for (const set of SETS) {
  const names = variants(set.dir);
  assert.ok(names.length > 0, `no variants with reference.safetensors under ${set.dir}`);
  for (const name of names) registerVariant(`${name}${set.label}`, join(set.dir, name));
}

function registerVariant(name: string, dir: string): void {
  testOnDevices(`GPT-2 variant ${name}: logits, generation, KV cache, quantization`, (device) => {
    const ref = readReference(dir);
    const model = GPT2LMHeadModel.fromPretrained(dir, { device });
    const tol = 1e-4 * Math.max(1, ref.scale);

    const batched = values(model.forward(idsTensor(ref.ids, ref.rows).to(device)));
    const d = diffs(batched, ref.logits);
    console.log(
      `${name} [${device}] max |logit| ${ref.scale.toFixed(2)}, float32 max |Δ| ` +
        `${d.max.toExponential(2)}, mean ${d.mean.toExponential(2)}`,
    );
    assert.ok(d.max <= tol, `float32 logits: max |Δ| ${d.max} > ${tol}`);

    const vocab = model.config.vocabSize;
    const prompt = ref.genIds.slice(0, 5);
    const generated = ref.genIds.length - prompt.length;
    if (generated > 0) {
      // Greedy tokens: ours must be transformers' until a near tie goes the other way
      // (after that the sequences differ and the reference logits no longer apply).
      const ours = generate(model, prompt, { maxNewTokens: generated });
      let agreed = 0;
      for (let j = 0; j < generated; j++) {
        const at = (prompt.length - 1 + j) * vocab;
        const row = ref.genLogits.subarray(at, at + vocab);
        const theirs = ref.genIds[prompt.length + j];
        if (ours[j] === theirs) {
          agreed++;
          continue;
        }
        const gap = row[topTwo(row).index] - row[ours[j]];
        assert.ok(
          gap <= 1e-3 * ref.scale,
          `greedy token ${j}: ours ${ours[j]} (logit ${row[ours[j]]}), transformers' ${theirs} ` +
            `(logit ${row[theirs]}); tokens ${ours} vs ${ref.genIds.slice(prompt.length)}`,
        );
        break;
      }
      console.log(
        `${name} [${device}] greedy: ${agreed} of ${generated} tokens as transformers'`,
      );

      // A growing cache fed the reference tokens one at a time.
      const cache = model.createCache();
      const parts = [values(model.forward(idsTensor(prompt).to(device), { cache }))];
      for (const id of ref.genIds.slice(prompt.length)) {
        parts.push(values(model.forward(idsTensor([id]).to(device), { cache })));
      }
      const stepped = new Float64Array(ref.genLogits.length);
      let at = 0;
      for (const p of parts) {
        stepped.set(p, at);
        at += p.length;
      }
      const c = diffs(stepped, ref.genLogits);
      assert.ok(c.max <= tol, `KV-cache logits: max |Δ| ${c.max} > ${tol}`);
    }

    if (device === "cuda") {
      const half = GPT2LMHeadModel.fromPretrained(dir, { device, dtype: "float16" });
      const h = diffs(values(half.forward(idsTensor(ref.ids, ref.rows).to(device))), ref.logits);
      console.log(`${name} [cuda] float16 max |Δ| ${h.max.toExponential(2)}`);
      assert.ok(h.max <= 3e-2 * ref.scale, `float16 logits: max |Δ| ${h.max}`);
    }

    const quantized = quantizedLogits(dir, device, ref);
    for (const [mode, q] of quantized) {
      const error = diffs(q, ref.logits).mean;
      assert.ok(Number.isFinite(error) && error > 0, `${mode}: quantization changed nothing`);
    }
    if (device === "cpu") {
      cpuQuantized.set(name, quantized);
      return;
    }
    const cpu = cpuQuantized.get(name);
    if (cpu === undefined) return; // the CPU test was filtered out
    for (const [mode, q] of quantized) {
      const against = diffs(q, cpu.get(mode)!);
      const quantError = diffs(cpu.get(mode)!, ref.logits).mean;
      console.log(
        `${name} ${mode}: CUDA vs CPU max |Δ| ${against.max.toExponential(2)}, mean ` +
          `${against.mean.toExponential(2)}; quantization error (mean) ${
            quantError.toExponential(2)
          }`,
      );
      if (mode === "w8" || mode === "w4") {
        assert.ok(against.max <= 1e-3 * ref.scale, `${mode}: CUDA vs CPU ${against.max}`);
      } else {
        assert.ok(against.mean <= 0.5 * quantError, `${mode}: CUDA vs CPU ${against.mean}`);
      }
    }
  });
}
