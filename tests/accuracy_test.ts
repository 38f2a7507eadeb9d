/**
 * Quantized GPT-2 against PyTorch: the tiny byte-level Shakespeare model quantized with the
 * reference calibration ranges (w8a8, w8, w4 blocks of 128, fp8) must reproduce the
 * reference fake-quantized logits and losses, and max calibration on the reference
 * calibration windows must reproduce the reference ranges. Fixtures in ../shared.
 *
 * Weight-only modes are compared element by element (mean |Δ| <= 1e-3). w4 differs from the
 * reference in one weight of 3.1M, transformer.h.0.mlp.c_fc [434, 220]: w / scale is exactly
 * 1.5 in float32 (rounded to 2, as quantize() specifies), while the reference evidently
 * computed w · 7 / amax = 1.4999999 (rounded to 1; that formula also reproduces every w8
 * tie). That one weight accounts for the mean 4e-4 (with it, the mean is 2.5e-6, as for w8).
 *
 * Modes that also quantize activations cannot be compared element by element: a value that
 * float32 noise (summation order, another exp or tanh) moves across a rounding boundary
 * changes by a whole quantization step, and through attention that reaches every later
 * position of its window. Measured on w8a8: our fused and unfused plans (the same function,
 * summed in another order) differ by mean 6e-4, max 0.11; scaling each quantized input by a
 * random 1 ± 1e-7 moves the logits by mean 7e-3; against PyTorch, every window matches to
 * ~1e-5 up to its first such flip (positions 67 to 256), 60% of all positions. PyTorch does
 * no better against itself: the same fake-quantized model in float32 on its CPU and on the GPU
 * differs by mean 2.1e-2 (w8a8) and 4.0e-2 (fp8), and even on the GPU the fixtures were made
 * on, a PyTorch run differs from them by 2.5e-3 (w8a8) and 2.2e-2 (fp8)
 * (bench/peers/quant_reproducibility.py). Those modes are checked where flips have not spread
 * (position 0 of every window, to 1e-3), by the size of the disagreement relative to the
 * quantization error itself, and by the loss. Wrong
 * definitions fail the position-0 check (tried: input amax 2% too large, int8 range ±127).
 * @module
 */
import assert from "node:assert/strict";
import {
  calibrate,
  findModule,
  GPT2LMHeadModel,
  importAmax,
  Linear,
  loadSafetensors,
  lossFromLogits,
  namedModules,
  type QuantizationMode,
  quantizeModel,
  type SafetensorsTensors,
  type Tensor,
} from "../mod.ts";
import { filesExist, SHARED_DIR, sharedTest } from "./helpers.ts";

const MODEL_DIR = new URL("models/tiny-shakespeare-gpt2/", SHARED_DIR).pathname;
const FIXTURES = new URL("fixtures/", SHARED_DIR).pathname;
const REFERENCE = `${FIXTURES}reference.safetensors`;
const AMAX = `${FIXTURES}calibration_amax.safetensors`;
const REPORT = `${FIXTURES}report.json`;

// config.json, not model.safetensors: a sharded checkpoint has an index instead.
const haveShared = filesExist(`${MODEL_DIR}config.json`, REFERENCE, AMAX, REPORT);
if (!haveShared) {
  console.log(`accuracy tests skipped: ${SHARED_DIR.pathname} (fixtures) not present`);
}

interface Fixtures {
  reference: SafetensorsTensors;
  report: Record<string, number>;
  inputIds: Tensor;
  fp32Logits: Float32Array;
  /** input_ids is [windows, positions]; the logits [windows, positions, vocab]. */
  windows: number;
  positions: number;
  vocab: number;
}

let fixtures: Fixtures | undefined;
function loadFixtures(): Fixtures {
  if (fixtures) return fixtures;
  const reference = loadSafetensors(REFERENCE);
  const inputIds = reference.get("input_ids");
  const logits = reference.get("logits");
  assert.equal(inputIds.shape.length, 2, "input_ids is [windows, positions]");
  assert.deepEqual(logits.shape.slice(0, 2), inputIds.shape, "logits are [windows, positions, V]");
  const [windows, positions] = inputIds.shape;
  fixtures = {
    reference,
    report: JSON.parse(Deno.readTextFileSync(REPORT)),
    inputIds,
    fp32Logits: logits.dataSync() as Float32Array,
    windows,
    positions,
    vocab: logits.shape[2],
  };
  return fixtures;
}

/** Seconds spent in the quantized forwards and calibration, summed over the tests. */
let forwardSeconds = 0;

interface Comparison {
  mean: number;
  max: number;
  /** mean |reference mode logits − reference float32 logits|: the quantization error. */
  quantError: number;
  /** max |ours − reference float32 logits|. */
  oursVsFp32Max: number;
  /** Per window, how many leading positions match the reference to 1e-3 (max over vocab). */
  matchingPrefix: number[];
  /** Positions (of windows × positions) whose logits all match the reference to 1e-3. */
  matchingPositions: number;
}

function compare(
  ours: Float32Array,
  theirs: Float32Array,
  fp32: Float32Array,
  { windows, positions, vocab }: Fixtures,
  prefixBound = 1e-3,
): Comparison {
  assert.equal(ours.length, theirs.length);
  assert.equal(ours.length, windows * positions * vocab);
  let sum = 0, max = 0, quant = 0, vsFp32 = 0;
  const rowMax = new Float64Array(windows * positions);
  for (let row = 0; row < rowMax.length; row++) {
    let m = 0;
    for (let i = row * vocab, end = i + vocab; i < end; i++) {
      const d = Math.abs(ours[i] - theirs[i]);
      sum += d;
      if (!(d <= m)) m = d; // NaN propagates as a failure
      quant += Math.abs(theirs[i] - fp32[i]);
      const e = Math.abs(ours[i] - fp32[i]);
      if (!(e <= vsFp32)) vsFp32 = e;
    }
    rowMax[row] = m;
    if (!(m <= max)) max = m;
  }
  const matchingPrefix = Array.from({ length: windows }, (_, w) => {
    let p = 0;
    while (p < positions && rowMax[w * positions + p] <= prefixBound) p++;
    return p;
  });
  return {
    mean: sum / ours.length,
    max,
    quantError: quant / ours.length,
    oursVsFp32Max: vsFp32,
    matchingPrefix,
    matchingPositions: rowMax.filter((m) => m <= 1e-3).length,
  };
}

interface ModeCase {
  mode: QuantizationMode;
  fixture: string;
  quantizesInputs: boolean;
}

const MODES: ModeCase[] = [
  { mode: "w8a8", fixture: "w8a8", quantizesInputs: true },
  { mode: "w8", fixture: "w8", quantizesInputs: false },
  { mode: "w4", fixture: "w4_b128", quantizesInputs: false },
  { mode: "fp8", fixture: "fp8", quantizesInputs: true },
];

sharedTest(
  haveShared,
  "float32 logits on the GPU match PyTorch (max |diff| <= 1e-3), loss 1e-4",
  () => {
    const { report, inputIds, fp32Logits } = loadFixtures();
    const model = GPT2LMHeadModel.fromPretrained(MODEL_DIR).to("cuda");
    const logits = model.forward(inputIds.to("cuda")).evaluate();
    const ours = logits.dataSync() as Float32Array;
    let max = 0;
    for (let i = 0; i < ours.length; i++) {
      const d = Math.abs(ours[i] - fp32Logits[i]);
      if (!(d <= max)) max = d;
    }
    const loss = lossFromLogits(logits, inputIds.to("cuda"));
    console.log(`cuda float32: max |logit diff| ${max.toExponential(3)}, loss ${loss.toFixed(6)}`);
    assert.ok(max <= 1e-3, `max diff ${max}`);
    assert.ok(Math.abs(loss - report.fp32_loss) <= 1e-4, `loss ${loss} vs ${report.fp32_loss}`);
  },
  { gpu: true },
);

/**
 * Position-0 bound of the modes that quantize activations, on every device. (fp8 products on
 * the GPU's e4m3 tensor cores would not meet it: between float32 promotions they sum in a
 * narrower accumulator, which moved every window's first logits by more than 1e-2; the
 * float32 model's fp8 layers multiply the codes' exact values instead.)
 */
const POSITION_ZERO_BOUND = 1e-3;

for (const c of MODES) {
  for (const device of ["cpu", "cuda"]) {
    const bound = c.quantizesInputs
      ? `position 0 of every window within ${POSITION_ZERO_BOUND}, mean |Δ| <= 0.5 x ` +
        "quantization error"
      : "mean |Δ| <= 1e-3";
    const name = `${c.mode}: logits match logits_${c.fixture} (${bound}), loss within 0.002`;
    sharedTest(haveShared, name, () => checkMode(c, device), { gpu: device === "cuda" });
  }
}

/** The names of a GPT-2's projections (its Conv1Ds): every Linear but lm_head. */
function projectionNames(model: GPT2LMHeadModel): string[] {
  return namedModules(model)
    .filter(([name, m]) => m instanceof Linear && name !== "lm_head")
    .map(([name]) => name);
}

function checkMode(c: ModeCase, device: string): void {
  const fx = loadFixtures();
  const { reference, report, inputIds, fp32Logits } = fx;
  const model = GPT2LMHeadModel.fromPretrained(MODEL_DIR);
  using amaxFile = loadSafetensors(AMAX);
  const amax = importAmax(amaxFile);
  const layers = quantizeModel(model, { mode: c.mode, exclude: ["lm_head"], amax });
  assert.deepEqual(layers.map((l) => l.name), projectionNames(model), "every Conv1D, not lm_head");
  if (c.mode === "w4") {
    // Blocks of 128 input features per output row.
    const [out, inFeatures] = (findModule(model, layers[0].name) as Linear).weight.shape;
    assert.deepEqual(layers[0].weightScaleShape, [out, Math.ceil(inFeatures / 128)]);
  }
  model.to(device);

  const start = performance.now();
  const logits = model.forward(inputIds.to(device)).evaluate();
  const seconds = (performance.now() - start) / 1000;
  forwardSeconds += seconds;
  const loss = lossFromLogits(logits, inputIds.to(device));
  const theirs = reference.get(`logits_${c.fixture}`).dataSync() as Float32Array;
  const r = compare(
    logits.dataSync() as Float32Array,
    theirs,
    fp32Logits,
    fx,
    POSITION_ZERO_BOUND,
  );
  const expectedLoss = report[`${c.fixture}_loss`];
  const reportMax = report[`${c.fixture}_max_abs_logit_diff_vs_fp32`];
  console.log(
    `${c.mode} [${device}]: mean |Δ| ${r.mean.toExponential(3)}, max |Δ| ${
      r.max.toExponential(3)
    } ` +
      `vs logits_${c.fixture}; loss ${loss.toFixed(6)} (reference ${expectedLoss.toFixed(6)}, ` +
      `|Δ| ${Math.abs(loss - expectedLoss).toExponential(2)}); max |Δ| vs float32 ` +
      `${r.oursVsFp32Max.toFixed(4)} (reference ${reportMax.toFixed(4)}); positions within ` +
      `1e-3: ${r.matchingPositions}/${
        fx.windows * fx.positions
      }, leading per window [${r.matchingPrefix}]; ` +
      `forward ${seconds.toFixed(2)} s`,
  );

  assert.ok(Math.abs(loss - expectedLoss) <= 0.002, `loss ${loss} vs ${expectedLoss}`);
  if (c.quantizesInputs) {
    assert.ok(
      r.matchingPrefix.every((p) => p >= 1),
      `position 0 differs in some window: leading matches ${r.matchingPrefix}`,
    );
    assert.ok(
      r.mean <= 0.5 * r.quantError,
      `mean |Δ| ${r.mean} vs quantization error ${r.quantError}`,
    );
  } else {
    assert.ok(r.mean <= 1e-3, `mean |Δ| ${r.mean}`);
  }
  // Same order of magnitude of damage as PyTorch's quantized model.
  assert.ok(
    r.oursVsFp32Max > 0.5 * reportMax && r.oursVsFp32Max < 2 * reportMax,
    `max |Δ| vs float32 ${r.oursVsFp32Max}, reference ${reportMax}`,
  );
}

function relativeDiff(a: number, b: number): number {
  return Math.abs(a - b) / Math.max(Math.abs(b), 1e-30);
}

sharedTest(
  haveShared,
  "max calibration on calib_ids reproduces calibration_amax (1e-4 relative)",
  () => {
    const { reference } = loadFixtures();
    const calibIds = reference.get("calib_ids");
    assert.equal(calibIds.shape.length, 2, "calib_ids is [windows, positions]");
    const model = GPT2LMHeadModel.fromPretrained(MODEL_DIR);
    const start = performance.now();
    const calib = calibrate(model, [calibIds], (m, ids) => m.forward(ids), {
      method: "max",
      onProgress: () => {},
    });
    forwardSeconds += (performance.now() - start) / 1000;
    using amaxFile = loadSafetensors(AMAX);
    const expected = importAmax(amaxFile);
    const projections = projectionNames(model);
    assert.deepEqual([...expected.keys()].sort(), [...projections].sort(), "amax of every Conv1D");
    let worstInput = 0, worstWeight = 0;
    for (const [name, want] of expected) {
      const got = calib.get(name);
      assert.ok(got, `no calibration for ${name}`);
      const d = relativeDiff(got.inputAmax!, want.inputAmax!);
      assert.ok(d <= 1e-4, `${name}: input amax ${got.inputAmax} vs ${want.inputAmax}`);
      worstInput = Math.max(worstInput, d);
      const gw = got.weightAmax!, ww = want.weightAmax!;
      assert.equal(gw.length, ww.length, `${name}: weight amax length`);
      for (let i = 0; i < ww.length; i++) {
        const e = relativeDiff(gw[i], ww[i]);
        assert.ok(e <= 1e-4, `${name}: weight amax[${i}] ${gw[i]} vs ${ww[i]}`);
        worstWeight = Math.max(worstWeight, e);
      }
    }
    // lm_head is calibrated too (it is a Linear) but the reference leaves it out.
    assert.ok(calib.has("lm_head"));
    console.log(
      `calibration: worst relative diff input amax ${worstInput.toExponential(2)}, ` +
        `weight amax ${worstWeight.toExponential(2)} (${expected.size} layers)`,
    );
  },
);

sharedTest(haveShared, "accuracy: total forward time", () => {
  console.log(`accuracy: quantized forwards and calibration took ${forwardSeconds.toFixed(1)} s`);
  fixtures?.reference.close();
  fixtures = undefined;
});
