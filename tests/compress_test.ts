/**
 * Compressed weights (`Linear.compressWeight`, `tq.compressWeights`): a quantized Linear whose
 * float weight is replaced by its codes computes the same function, bit for bit, on every
 * device and every product path (w8a8 int8 and fp8, weight-only int8 per output channel, per
 * input feature and per tensor, int4 blocks of 128; float32, float16 and bfloat16; 1, 5, 37
 * and 300 rows: the GEMVs, cuBLASLt and the int8 wgmma GEMM on cuda; 256 input features, and
 * 100, which the CUDA dequantization of the codes takes one element at a time rather than eight;
 * int4 rows whose last block is shorter);
 * the fused op reads the codes as they are (attr `weightCodes`, no quantize of the weight in the
 * plan); the layer's state and errors; and the
 * bundled GPT-2, quantized and compressed, gives the uncompressed logits bit for bit and holds
 * less device memory.
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { DType } from "../lib/dtype.ts";
import { plannedGraph } from "../lib/runtime/evaluate.ts";
import { assertTqError, randomValues, testOnDevices } from "./helpers.ts";

type Kind = "w8a8" | "fp8" | "w8 channel" | "w8 tensor" | "w8 input channel" | "w4 blocks";

const KINDS: Kind[] = ["w8a8", "fp8", "w8 channel", "w8 tensor", "w8 input channel", "w4 blocks"];
const K = 256;
const N = 96;

/**
 * A quantized Linear of `kind` (`k` → N, `dtype`) on `device`, from seeded random state; int4
 * blocks of `block` input features.
 */
function layerOf(
  kind: Kind,
  dtype: DType,
  device: string,
  seed: number,
  k = K,
  block = 128,
): tq.Linear {
  const q: tq.QuantDType = kind === "fp8" ? "float8e4m3" : kind === "w4 blocks" ? "int4" : "int8";
  const options: tq.LinearOptions = kind === "w4 blocks"
    ? { quantDtype: q, weightQuantDim: 1, blockSize: block }
    : kind === "w8 tensor"
    ? { quantDtype: q }
    : kind === "w8 input channel"
    ? { quantDtype: q, weightQuantDim: 1 }
    : { quantDtype: q, weightQuantDim: 0 };
  const weight = tq.randn([N, k], { seed, std: 0.05, dtype });
  const w32 = weight.cast("float32").abs();
  const amax = kind === "w4 blocks"
    ? tq.tensor(tq.weightAmaxPerBlock(w32, block), { shape: [N, Math.ceil(k / block)] })
    : kind === "w8 tensor"
    ? w32.max()
    : kind === "w8 input channel"
    ? w32.max(0)
    : w32.max(1);
  const dict: Record<string, tq.Tensor> = {
    weight,
    weightScale: tq.scaleFromAmax(amax, q),
    bias: tq.randn([N], { seed: seed + 1, std: 0.1, dtype }),
  };
  if (kind === "w8a8" || kind === "fp8") dict.inputScale = tq.scaleFromAmax(3.5, q);
  const layer = new tq.Linear(k, N, { ...options, dtype });
  layer.loadStateDict(dict);
  return layer.to(device);
}

/** The storage of `t` as numbers (16-bit floats as their bits): for bitwise equality. */
function bits(t: tq.Tensor): number[] {
  return Array.from(t.storageSync() as ArrayLike<number>);
}

testOnDevices("compressed weights: the same outputs bit for bit, from the codes", (device) => {
  const rows = device === "cuda" ? [1, 5, 37, 300] : [1, 5, 37];
  let seed = 1;
  // [input features, int4 block, kinds]: whole chunks of eight codes per row, and not; int4
  // rows whose last block is shorter (320 = 128 + 128 + 64: the GEMVs take it; 100 = 3 · 32 + 4).
  const configs: [number, number, Kind[]][] = [
    [K, 128, KINDS],
    [100, 20, KINDS],
    [320, 128, ["w4 blocks"]],
    [100, 32, ["w4 blocks"]],
  ];
  for (const [k, block, kinds] of configs) {
    for (const kind of kinds) {
      for (const dtype of ["float32", "float16", "bfloat16"] as DType[]) {
        const layer = layerOf(kind, dtype, device, seed, k, block);
        const inputs = rows.map((m) =>
          tq.tensor(randomValues(m * k, seed + m), { shape: [m, k], dtype, device })
        );
        const before = inputs.map((x) => bits(layer.forward(x)));
        const float = layer.compressWeight();
        float.dispose();
        assert.equal(layer.weightCodes!.dtype, layer.quantDtype);
        inputs.forEach((x, i) => {
          const y = layer.forward(x);
          const fused = plannedGraph([y.node]).nodes.filter((n) => n.attrs.weightCodes === true);
          assert.equal(fused.length, 1, `${kind} ${dtype}: one fused op reads the codes`);
          const label = `${kind} ${dtype} K ${k} ${rows[i]} rows on ${device}`;
          const after = bits(y);
          const differ = after.findIndex((v, j) => v !== before[i][j]);
          assert.equal(differ, -1, `${label}: element ${differ} differs`);
        });
        seed += 10;
      }
    }
  }
});

Deno.test("compressed weights: the layer's state and errors", () => {
  const layer = layerOf("w8a8", "float32", "cpu", 3);
  assertTqError(() => new tq.Linear(4, 2).compressWeight(), { op: "Linear.compressWeight" });
  const float = layer.compressWeight();
  assert.deepEqual(float.shape, [N, K]);
  assert.equal(layer.weightCompressed, true);
  assertTqError(() => layer.weight, { op: "Linear.weight", includes: ["weightCodes"] });
  assertTqError(() => layer.compressWeight(), { op: "Linear.compressWeight" });
  assertTqError(() => layer.configureQuantization({ quantDtype: "int4" }), {
    op: "Linear.configureQuantization",
  });
  const state = layer.stateDict();
  assert.deepEqual(Object.keys(state).sort(), ["bias", "inputScale", "weightCodes", "weightScale"]);
  assert.equal(state.weightCodes.dtype, "int8");
  // The codes are the quantize op's.
  const expected = tq.quantize(float, layer.weightScale!, "int8", { dim: 0 });
  assert.deepEqual(bits(state.weightCodes), bits(expected));
  assertTqError(() => new tq.Linear(4, 2).weightCodes = undefined, { op: "Linear.weightCodes" });
});

Deno.test("compressWeights: every quantized layer but the excluded, shared weights kept", () => {
  const model = new tq.Sequential(new tq.Linear(K, N), new tq.Linear(N, N), new tq.Linear(N, 8));
  const layers = model.children().map(([, m]) => m as tq.Linear);
  layers[0].configureQuantization({ quantDtype: "int8", weightQuantDim: 0 });
  layers[1].configureQuantization({ quantDtype: "int4", weightQuantDim: 1, blockSize: 32 });
  layers[0].weightScale = tq.full([N], 0.01);
  layers[1].weightScale = tq.full([N, N / 32], 0.02);
  // Layer 2 stays float.
  assertTqError(() => tq.compressWeights(model, { exclude: ["nope"] }), {
    op: "compressWeights",
  });
  assert.deepEqual(tq.compressWeights(model, { exclude: ["1"] }), ["0"]);
  assert.equal(layers[1].weightCompressed, false);
  assert.deepEqual(tq.compressWeights(model), ["1"]);
  assert.equal(layers[2].weightCompressed, false);
  assert.deepEqual(tq.compressWeights(model), []);

  // A float weight shared with an embedding (tied) stays usable.
  const table = new tq.Embedding(N, K);
  const head = new tq.Linear(K, N, { bias: false });
  head.weight = table.weight;
  head.configureQuantization({ quantDtype: "int8", weightQuantDim: 0 });
  head.weightScale = tq.full([N], 0.01);
  const tied = new tq.Sequential(table, head);
  tq.compressWeights(tied);
  // Still readable: not disposed.
  assert.equal(table.weight.dataSync().length, N * K);
});

Deno.test("compressWeights: every layer is checked before any is compressed", () => {
  const model = new tq.Sequential(
    new tq.Linear(24, 16),
    new tq.Linear(16, 12),
    new tq.Linear(12, 8),
  );
  const layers = model.children().map(([, m]) => m as tq.Linear);
  layers.forEach((l, i) => {
    l.weight = tq.tensor(randomValues(l.outFeatures * l.inFeatures, 4201 + i), {
      shape: [l.outFeatures, l.inFeatures],
    });
    l.configureQuantization({ quantDtype: "int8", weightQuantDim: 0 });
  });
  const scales = layers.map((l, i) =>
    Float32Array.from(randomValues(l.outFeatures, 4211 + i, { low: 0.01, high: 0.05 }))
  );
  layers[0].weightScale = tq.tensor(scales[0]);
  layers[1].weightScale = tq.tensor(scales[1]);
  // Layer 2 is quantized but has no weight scale: named, and no layer compressed.
  assertTqError(() => tq.compressWeights(model), {
    op: "compressWeights",
    kind: "state",
    includes: ["layer '2' is quantized but has no weight scale", "argument 'model'"],
  });
  assert.deepEqual(layers.map((l) => l.weightCompressed), [false, false, false]);
  // A scale that is not positive: named with the value, no layer compressed.
  const bad = scales[1].slice();
  bad[5] = 0;
  layers[1].weightScale = tq.tensor(bad);
  layers[2].weightScale = tq.tensor(scales[2]);
  assertTqError(() => tq.compressWeights(model), {
    op: "compressWeights",
    kind: "argument",
    includes: ["weight scale of layer '1' is not positive and finite", "0 at flat index 5"],
  });
  assert.deepEqual(layers.map((l) => l.weightCompressed), [false, false, false]);
  // A lazy scale is evaluated and checked up front too (it failed after earlier layers were
  // compressed, naming no layer).
  layers[1].weightScale = tq.mul(tq.tensor(scales[1]), 0);
  assertTqError(() => tq.compressWeights(model), {
    op: "compressWeights",
    kind: "argument",
    includes: ["weight scale of layer '1' is not positive and finite"],
  });
  assert.deepEqual(layers.map((l) => l.weightCompressed), [false, false, false]);
  // Excluded, the layer is not checked; the others are compressed.
  assert.deepEqual(tq.compressWeights(model, { exclude: ["1"] }), ["0", "2"]);
  layers[1].weightScale = tq.tensor(scales[1]);
  assert.deepEqual(tq.compressWeights(model), ["1"]);
});

const MODEL_DIR = new URL("../examples/gpt2/assets/tiny-shakespeare-gpt2/", import.meta.url)
  .pathname;

testOnDevices("compressWeights: GPT-2 gives the same logits bit for bit", (device) => {
  for (const mode of ["w8a8", "fp8", "w4"] as tq.QuantizationMode[]) {
    const model = tq.GPT2LMHeadModel.fromPretrained(MODEL_DIR);
    const ids = tq.tensor(Array.from({ length: 2 * 40 }, (_, i) => (i * 37 + 11) % 256), {
      shape: [2, 40],
      dtype: "int32",
    });
    const calibration = tq.calibrate(model, [ids], (m, b) => m.forward(b), {
      method: "max",
      onProgress: () => {},
    });
    tq.quantizeModel(model, { mode, calibration, exclude: ["lm_head"] });
    model.to(device);
    const onDevice = ids.to(device);
    const before = bits(model.forward(onDevice));
    const liveBefore = device === "cuda" ? tq.cuda.memoryStats().liveBytes : 0;
    const names = tq.compressWeights(model);
    assert.equal(names.length, 16, `${mode}: every Conv1D`);
    const after = bits(model.forward(onDevice));
    const differ = after.findIndex((v, j) => v !== before[j]);
    assert.equal(differ, -1, `${mode} on ${device}: logit ${differ} differs`);
    if (device === "cuda") {
      // 16 layers of float32 weights (4 bytes) now held as codes: at least 3 bytes each freed
      // for int8 / fp8 (3.5 for int4), less what the first forward's forms had cached.
      const weights = 4 * (256 * 768 + 256 * 256 + 2 * 256 * 1024);
      const freed = liveBefore - tq.cuda.memoryStats().liveBytes;
      assert.ok(freed >= 0.5 * 3 * weights, `${mode}: ${freed} bytes freed of ~${3 * weights}`);
    }
  }
});
