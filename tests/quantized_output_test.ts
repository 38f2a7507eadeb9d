/**
 * Quantized-output fusion (lib/graph/passes/quantized_output.ts): the producer of a `qlinear`'s
 * x writes x's codes.
 *
 * - the pass: `fc2(gelu(fc1(x)))` with both layers w8a8 (int8 or fp8) gives fc1 attr
 *   `codesOut` (code dtype output, fc2's input scale as its last input) and fc2 `codesIn`, at
 *   more than 8 rows; not at 8 rows or fewer, not when fc1's output has another reader or is a
 *   graph output, not when fc2 is weight-only, not with the switch off;
 * - numerics: the fused graph equals the unfused one (switch off) bit for bit on the cpu and,
 *   on cuda, wherever the codes come from our kernels (the int8 wgmma epilogue, the generic
 *   values-then-quantize path, the flash attention epilogue); cuBLASLt's fp8 products with an
 *   e4m3 output quantize the unrounded float32 values with the scale's reciprocal, so there a
 *   code may move by one step: the outputs agree to a norm-relative 1e-2 (measured: see the
 *   assertion message) and the codes path really ran (the graph says so);
 * - GPT-2 prefill on cuda (float16): attention writes the out-projection's codes and the first
 *   MLP layer the second's, and the logits equal the unfused graph's for w8a8 (bit for bit)
 *   and fp8 (norm-relative 1e-2).
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { PlanGraph } from "../lib/backends/backend.ts";
import type { DType } from "../lib/dtype.ts";
import { runPasses } from "../lib/graph/passes/mod.ts";
import { traceGraph } from "../lib/runtime/evaluate.ts";
import { randomValues, testOnDevices, testOnGpu, values } from "./helpers.ts";

type Q = "int8" | "float8e4m3";

/** Input amax of both layers (the hidden layer's values exceed it: saturation is exercised). */
const INPUT_AMAX = 2.5;
const HIDDEN_AMAX = 2;

/** A w8a8 Linear (`q` codes, per-channel weights) `k → n` with seeded random weights. */
function layer(
  q: Q,
  k: number,
  n: number,
  dtype: DType,
  device: string,
  seed: number,
  amax: number,
) {
  const weight = tq.randn([n, k], { seed, std: 1 / Math.sqrt(k), dtype });
  const l = new tq.Linear(k, n, { quantDtype: q, weightQuantDim: 0, bias: true, dtype });
  l.loadStateDict({
    weight,
    weightScale: tq.scaleFromAmax(weight.cast("float32").abs().max(1), q),
    inputScale: tq.scaleFromAmax(amax, q),
    bias: tq.randn([n], { seed: seed + 1, std: 0.1, dtype }),
  });
  l.to(device);
  return l;
}

/** `fc2(gelu_tanh(fc1(x)))`, both w8a8 of `q`. */
function mlp(q: Q, k: number, hidden: number, dtype: DType, device: string, seed: number) {
  const fc1 = layer(q, k, hidden, dtype, device, seed, INPUT_AMAX);
  const fc2 = layer(q, hidden, k, dtype, device, seed + 2, HIDDEN_AMAX);
  return (x: tq.Tensor) => fc2.forward(fc1.forward(x).gelu({ approximate: "tanh" }));
}

function input(rows: number, k: number, dtype: DType, device: string, seed: number) {
  return tq.tensor(randomValues(rows * k, seed), { shape: [rows, k], dtype, device });
}

function planned(...targets: tq.Tensor[]): PlanGraph {
  const traced = traceGraph(targets.map((t) => t.node));
  return runPasses(traced.graph, traced);
}

/** Runs `make` with the fusion on or off, then restores the setting. */
function withFusion<T>(on: boolean, make: () => T): T {
  const was = tq.quantizedOutputFusionEnabled();
  tq.setQuantizedOutputFusion(on);
  try {
    return make();
  } finally {
    tq.setQuantizedOutputFusion(was);
  }
}

/** Runs `make` with the fusion off. */
function unfused<T>(make: () => T): T {
  return withFusion(false, make);
}

/** Raw storage as numbers (16-bit floats as their bits). */
function bits(t: tq.Tensor): number[] {
  return Array.from(t.storageSync() as ArrayLike<number>);
}

function normRel(a: Float64Array, b: Float64Array): number {
  let d = 0;
  let n = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i] - b[i]) ** 2;
    n += b[i] ** 2;
  }
  return Math.sqrt(d / n);
}

testOnDevices("quantized-output fusion: fc1 writes the codes fc2 reads", (device) => {
  // Off by default (slower on an H200, see the pass); the tests turn it on.
  assert.equal(tq.quantizedOutputFusionEnabled(), false);
  withFusion(true, () => fusesFc1(device));
});

function fusesFc1(device: string): void {
  let seed = 1;
  for (const q of ["int8", "float8e4m3"] as Q[]) {
    const f = mlp(q, 64, 128, "float32", device, seed++);
    const g = planned(f(input(37, 64, "float32", device, seed++)));
    assert.deepEqual(g.nodes.map((n) => n.op), ["qlinear", "qlinear"], q);
    const [fc1, fc2] = g.nodes;
    assert.equal(fc1.attrs.codesOut, "float32", q);
    assert.equal(fc1.dtype, q);
    assert.equal(fc1.attrs.activation, "gelu_tanh");
    // fc1's inputs: its own seven, then fc2's input quantize scale.
    assert.equal(fc1.inputs.length, 8, q);
    const scale = fc1.inputs[7];
    assert.ok("leaf" in scale && "leaf" in fc2.inputs[1] && scale.leaf === fc2.inputs[1].leaf);
    assert.equal(fc2.attrs.codesIn, true, q);
    assert.equal(fc2.dtype, "float32");

    // At 8 rows the fused GEMV quantizes x itself.
    const small = planned(f(input(8, 64, "float32", device, seed++)));
    assert.ok(small.nodes.every((n) => n.attrs.codesOut === undefined), q);
    // fc1's output read twice, or a graph output too.
    const x = input(37, 64, "float32", device, seed++);
    const fc1Layer = layer(q, 64, 128, "float32", device, seed++, INPUT_AMAX);
    const fc2Layer = layer(q, 128, 64, "float32", device, seed++, HIDDEN_AMAX);
    const h = fc1Layer.forward(x).gelu({ approximate: "tanh" });
    for (
      const g2 of [planned(fc2Layer.forward(h), h), planned(fc2Layer.forward(h).sum().add(h.sum()))]
    ) {
      assert.ok(g2.nodes.every((n) => n.attrs.codesOut === undefined), q);
    }
    // A weight-only second layer quantizes nothing.
    const w8 = new tq.Linear(128, 64, {
      quantDtype: "int8",
      weightQuantDim: 0,
      bias: false,
      dtype: "float32",
    });
    const w = tq.randn([64, 128], { seed: seed++, std: 0.1 });
    w8.loadStateDict({ weight: w, weightScale: tq.scaleFromAmax(w.abs().max(1), "int8") });
    w8.to(device);
    assert.ok(planned(w8.forward(h)).nodes.every((n) => n.attrs.codesOut === undefined), q);
    // The switch.
    const off = unfused(() => planned(f(input(37, 64, "float32", device, seed++))));
    assert.ok(off.nodes.every((n) => n.attrs.codesOut === undefined && !n.attrs.codesIn), q);
  }
}

testOnDevices("quantized-output fusion computes the unfused graph's function", (device) => {
  withFusion(true, () => matchesUnfused(device));
});

function matchesUnfused(device: string): void {
  let seed = 50;
  // K = 256: the tensor-core products (wgmma, cuBLASLt fp8) on cuda; K = 40: the exact ones.
  for (const [k, hidden] of [[256, 512], [40, 72]]) {
    for (const q of ["int8", "float8e4m3"] as Q[]) {
      for (const dtype of ["float32", "float16", "bfloat16"] as DType[]) {
        for (const rows of [37, 300]) {
          const what = `${q} ${dtype} K ${k} rows ${rows}`;
          const f = mlp(q, k, hidden, dtype, device, seed++);
          const x = input(rows, k, dtype, device, seed++);
          const fused = f(x);
          assert.ok(planned(fused).nodes[0].attrs.codesOut !== undefined, what);
          fused.storageSync();
          const plain = unfused(() => {
            const y = f(x);
            y.storageSync();
            return y;
          });
          // cuBLASLt's fp8 product with an fp8 output rounds once from float32 (see the top).
          const ltCodes = device.startsWith("cuda") && q === "float8e4m3" && dtype !== "float32" &&
            k % 16 === 0;
          if (!ltCodes) {
            assert.deepEqual(bits(fused), bits(plain), what);
          } else {
            const rel = normRel(values(fused), values(plain));
            assert.ok(rel <= 1e-2, `${what}: norm-relative difference ${rel.toExponential(2)}`);
          }
        }
      }
    }
  }
}

testOnGpu("GPT-2 prefill on cuda: attention and fc1 write codes; logits as unfused", () => {
  withFusion(true, gpt2Prefill);
});

function gpt2Prefill(): void {
  const config = { nLayer: 2, nEmbd: 128, nHead: 2, vocabSize: 256, nPositions: 128 };
  const ids = (seed: number) =>
    tq.tensor(
      Int32Array.from(randomValues(2 * 96, seed, { low: 0, high: 255.99 }), Math.floor),
      { shape: [2, 96], device: "cuda" },
    );
  for (const mode of ["w8a8", "fp8"] as const) {
    const model = tq.GPT2LMHeadModel.random(config, { seed: 3, dtype: "float16", device: "cuda" });
    const calibration = tq.calibrate(model, [ids(1)], (m, t) => m.forward(t), {
      method: "max",
      onProgress: () => {},
    });
    tq.quantizeModel(model, { mode, calibration, exclude: ["lm_head"] });
    const x = ids(2);
    const logits = model.forward(x);
    const g = planned(logits);
    const writers = g.nodes.filter((n) => n.attrs.codesOut !== undefined).map((n) => n.op);
    // Per layer: attention (→ out-projection) and fc1 (→ fc2).
    assert.deepEqual(writers, ["attention", "qlinear", "attention", "qlinear"], mode);
    const fused = values(logits);
    const plain = unfused(() => values(model.forward(x)));
    if (mode === "w8a8") {
      assert.deepEqual(Array.from(fused), Array.from(plain), mode);
    } else {
      const rel = normRel(fused, plain);
      assert.ok(rel <= 1e-2, `${mode}: norm-relative difference ${rel.toExponential(2)}`);
    }
  }
}
