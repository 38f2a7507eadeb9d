import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { assertClose, assertTqError, testOnDevices, thisLine } from "./helpers.ts";

/** Evaluates `make()` with fusion on and off and returns both outputs and the fused op list. */
function fusedAndUnfused(make: () => tq.Tensor) {
  const fusedT = make();
  const ops = tq.inspectGraph(fusedT).ops;
  const fused = fusedT.dataSync() as Float32Array;
  tq.setQdqFusion(false);
  try {
    const plain = make();
    assert.ok(!tq.inspectGraph(plain).ops.some((o) => o === "qlinear" || o === "wlinear"));
    return { ops, fused, unfused: plain.dataSync() as Float32Array };
  } finally {
    tq.setQdqFusion(true);
  }
}

function quantLinear(
  device: string,
  [inF, outF]: [number, number],
  options: tq.LinearOptions,
  seed: number,
  input = true,
): tq.Linear {
  const layer = new tq.Linear(inF, outF, options);
  const weight = tq.randn([outF, inF], { seed, std: 0.05 });
  const bias = tq.randn([outF], { seed: seed + 1, std: 0.1 });
  let amax: tq.Tensor;
  if (options.blockSize) {
    amax = weight.abs().reshape([outF, inF / options.blockSize, options.blockSize]).max(2);
  } else if (options.weightQuantDim === 0) amax = weight.abs().max(1);
  else if (options.weightQuantDim === 1) amax = weight.abs().max(0);
  else amax = weight.abs().max();
  const dict: Record<string, tq.Tensor> = {
    weight,
    bias,
    weightScale: tq.scaleFromAmax(amax, options.quantDtype!),
  };
  if (input) dict.inputScale = tq.scaleFromAmax(3.5, options.quantDtype!);
  layer.loadStateDict(dict);
  return layer.to(device);
}

const SHAPES: [number, number, number][] = [[4, 64, 48], [7, 33, 17], [1, 256, 96], [33, 48, 80]];

testOnDevices("w8a8 Linear fuses into qlinear and equals the fake-quant graph", (device) => {
  for (const [m, k, n] of SHAPES) {
    const layer = quantLinear(device, [k, n], { quantDtype: "int8", weightQuantDim: 0 }, m + k);
    const x = tq.randn([m, k], { seed: n, device });
    const r = fusedAndUnfused(() => layer.forward(x));
    assert.deepEqual(r.ops, ["qlinear"], `shape ${[m, k, n]}`);
    assertClose(r.fused, r.unfused, { rtol: 1e-5, atol: 1e-6, message: `${[m, k, n]}` });
  }
});

testOnDevices("fp8 and per-tensor int8 weights, 3-D inputs, bias and activations", (device) => {
  const cases: [tq.LinearOptions, (t: tq.Tensor) => tq.Tensor, string][] = [
    [{ quantDtype: "float8e4m3", weightQuantDim: 0 }, (t) => t, "qlinear"],
    [{ quantDtype: "int8" }, (t) => t.relu(), "qlinear"],
    [{ quantDtype: "int8", weightQuantDim: 0 }, (t) => t.gelu({ approximate: "tanh" }), "qlinear"],
  ];
  for (const [opts, act, op] of cases) {
    const layer = quantLinear(device, [40, 24], opts, 5);
    const x = tq.randn([2, 3, 40], { seed: 6, device });
    const r = fusedAndUnfused(() => act(layer.forward(x)));
    assert.deepEqual(r.ops, [op], JSON.stringify(opts));
    assertClose(r.fused, r.unfused, { rtol: 2e-5, atol: 1e-6, message: JSON.stringify(opts) });
  }
});

testOnDevices("weight-only int8 and int4 block-wise fuse into wlinear", (device) => {
  const cases: tq.LinearOptions[] = [
    { quantDtype: "int8", weightQuantDim: 0 },
    { quantDtype: "int4", weightQuantDim: 1, blockSize: 32 },
    { quantDtype: "int8", weightQuantDim: 1 },
  ];
  for (const opts of cases) {
    const layer = quantLinear(device, [64, 40], opts, 9, false);
    const x = tq.randn([5, 64], { seed: 10, device });
    const r = fusedAndUnfused(() => layer.forward(x));
    assert.deepEqual(r.ops, ["wlinear"], JSON.stringify(opts));
    assertClose(r.fused, r.unfused, { rtol: 1e-5, atol: 1e-6, message: JSON.stringify(opts) });
  }
});

testOnDevices("block-wise weights with a shorter last block fuse and equal the fake-quant graph", (
  device,
) => {
  // ONNX's ragged blocks (blockSize not dividing the axis). Rows and x dtypes reach each CUDA
  // path: the streaming and tensor-core GEMVs (rows on 16-byte boundaries), the FMA GEMV and the
  // GEMM over dequantized weights.
  const cases: [number[], number, number, "int8" | "int4"][] = [
    [[40, 320], 1, 128, "int4"], // scale [40, 3], the last block 64 wide
    [[48, 160], 1, 64, "int4"], // the last block 32 wide
    [[24, 176], 1, 64, "int8"], // the last block 48 wide
    [[40, 70], 1, 32, "int4"], // rows off 16-byte boundaries; the last block 6 wide
    [[37, 64], 0, 16, "int8"], // scale [3, 64], the last block 5 rows
  ];
  for (const [shape, dim, blockSize, dtype] of cases) {
    const [n, k] = shape;
    const w = tq.randn(shape, { seed: n + k, std: 0.05, device });
    const blocks = shape.map((d, i) => (i === dim ? Math.ceil(d / blockSize) : d));
    const scale = tq.rand(blocks, { seed: 3, device }).mul(0.01).add(0.002);
    for (const xDType of ["float32", "float16"] as const) {
      for (const m of [1, 3, 6, 40]) {
        const x = tq.randn([m, k], { seed: 4 + m, device }).cast(xDType);
        const options = { dim, blockSize };
        const make = () =>
          tq.matmul(
            x,
            tq.dequantize(tq.quantize(w, scale, dtype, options), scale, xDType, options)
              .transpose(0, 1),
          ).cast("float32");
        const r = fusedAndUnfused(make);
        const what = `${shape} dim ${dim} block ${blockSize} ${dtype} x ${xDType} [${m}, ${k}]`;
        assert.ok(r.ops.includes("wlinear"), `${what}: ${r.ops}`);
        const tol = xDType === "float32" ? { rtol: 1e-5, atol: 1e-6 } : { rtol: 4e-3, atol: 1e-3 };
        assertClose(r.fused, r.unfused, { ...tol, message: what });
      }
    }
  }
});

testOnDevices("layers with one output or one input feature fuse too (their transpose is a view)", (
  device,
) => {
  for (const [k, n] of [[48, 1], [1, 24]] as [number, number][]) {
    for (const input of [true, false]) {
      const layer = quantLinear(
        device,
        [k, n],
        { quantDtype: "int8", weightQuantDim: 0 },
        k,
        input,
      );
      const x = tq.randn([3, k], { seed: n, device });
      const r = fusedAndUnfused(() => layer.forward(x));
      assert.deepEqual(r.ops, [input ? "qlinear" : "wlinear"], `[${k}, ${n}] ${input}`);
      assertClose(r.fused, r.unfused, { rtol: 1e-5, atol: 1e-6, message: `[${k}, ${n}]` });
    }
    const float = new tq.Linear(k, n).to(device);
    assert.deepEqual(tq.inspectGraph(float.forward(tq.randn([3, k], { device }))).ops, ["linear"]);
  }
});

testOnDevices(
  "w8a8 with a per-input-feature weight scale cannot use integer GEMMs: wlinear keeps it exact",
  (device) => {
    const layer = quantLinear(device, [32, 16], { quantDtype: "int8", weightQuantDim: 1 }, 11);
    const x = tq.randn([3, 32], { seed: 12, device });
    const r = fusedAndUnfused(() => layer.forward(x));
    assert.ok(r.ops.includes("wlinear") && !r.ops.includes("qlinear"), r.ops.join(","));
    assertClose(r.fused, r.unfused, { rtol: 1e-5, atol: 1e-6 });
  },
);

testOnDevices("manual quantize/dequantize/matmul (the seed's form) fuses too", (device) => {
  const w = tq.randn([24, 40], { seed: 13, device });
  const ws = tq.scaleFromAmax(w.abs().max(1), "int8").to(device);
  const xs = tq.scaleFromAmax(3, "int8").to(device);
  const x = tq.randn([6, 40], { seed: 14, device });
  const make = () => {
    const dqx = tq.dequantize(tq.quantize(x, xs, "int8"), xs, "float32");
    const dqw = tq.dequantize(tq.quantize(w, ws, "int8", { dim: 0 }), ws, "float32", { dim: 0 });
    return dqx.matmul(dqw.transpose(0, 1));
  };
  const r = fusedAndUnfused(make);
  assert.deepEqual(r.ops, ["qlinear"]);
  assertClose(r.fused, r.unfused, { rtol: 1e-5, atol: 1e-6 });
});

testOnDevices(
  "one weight and scale quantized to several dtypes: each product its own",
  (device) => {
    // The fused ops cache the prepared weight per weight and scale; the form (dtype, layout,
    // dequantize scale) must be part of the key, or the second dtype reuses the first's codes.
    const w = tq.randn([16, 32], { seed: 15, device });
    const s = tq.full([], 0.05, { device });
    const x = tq.randn([4, 32], { seed: 16, device });
    const forms: [tq.QuantDType, "weight-only" | "x too"][] = [
      ["int8", "weight-only"],
      ["int4", "weight-only"],
      ["float8e4m3", "weight-only"],
      ["int8", "x too"],
      ["float8e4m3", "x too"],
    ];
    for (const [dtype, which] of forms) {
      const make = () => {
        const dqw = tq.dequantize(tq.quantize(w, s, dtype), s, "float32");
        const dqx = which === "x too" ? tq.dequantize(tq.quantize(x, s, dtype), s, "float32") : x;
        return dqx.matmul(dqw.transpose(0, 1));
      };
      const r = fusedAndUnfused(make);
      assert.deepEqual(r.ops, [which === "x too" ? "qlinear" : "wlinear"], `${dtype} ${which}`);
      assertClose(r.fused, r.unfused, { rtol: 1e-5, atol: 1e-6, message: `${dtype} ${which}` });
    }
  },
);

testOnDevices("a reshaped weight and scale get their own codes, not the original layout's", (
  device,
) => {
  // An evaluated reshape shares its storage: the prepared-weight cache must key on the shape too.
  const w = tq.randn([8, 8], { seed: 21, device }).evaluate();
  const s = tq.rand([4, 8], { seed: 22, low: 0.05, high: 0.2, device }).evaluate();
  const options = { dim: 0, blockSize: 2 };
  const product = (x: tq.Tensor, weight: tq.Tensor, scale: tq.Tensor) =>
    x.matmul(
      tq.dequantize(tq.quantize(weight, scale, "int8", options), scale, "float32", options)
        .transpose(0, 1),
    );
  product(tq.randn([3, 8], { seed: 23, device }), w, s).dataSync(); // fills the cache
  const w2 = w.reshape([16, 4]).evaluate();
  const s2 = s.reshape([8, 4]).evaluate();
  const r = fusedAndUnfused(() => product(tq.randn([3, 4], { seed: 24, device }), w2, s2));
  assert.ok(r.ops.includes("wlinear"), r.ops.join(", "));
  assertClose(r.fused, r.unfused, { rtol: 1e-5, atol: 1e-6 });
});

Deno.test("the pass switches take booleans only; inspectGraph takes a tensor", () => {
  const switches: [string, (on: boolean) => void][] = [
    ["setQdqFusion", tq.setQdqFusion],
    ["setLinearFusion", tq.setLinearFusion],
    ["setNormFolding", tq.setNormFolding],
    ["setResidualFusion", tq.setResidualFusion],
    ["setAttentionViewFusion", tq.setAttentionViewFusion],
    ["setAttentionQlinearFusion", tq.setAttentionQlinearFusion],
  ];
  for (const [op, set] of switches) {
    // "false" is truthy: it turned the pass on.
    assertTqError(() => set("false" as unknown as boolean), {
      op,
      kind: "argument",
      includes: ["'on'", 'got "false"'],
    });
  }
  assert.equal(tq.qdqFusionEnabled(), true, "a refused value leaves the setting as it was");
  assertTqError(() => tq.inspectGraph(3 as unknown as tq.Tensor), { op: "inspectGraph" });
});

Deno.test("evaluating a dequantized value before its matmul warns once, naming the line", () => {
  const w = tq.randn([8, 16], { seed: 15 });
  const ws = tq.scaleFromAmax(w.abs().max(1), "int8");
  const x = tq.randn([2, 16], { seed: 16 });
  const xs = tq.scaleFromAmax(3, "int8");
  const warnings: string[] = [];
  const original = console.warn;
  console.warn = (msg: string) => warnings.push(msg);
  try {
    const line = thisLine() + 1;
    const dqx = tq.dequantize(tq.quantize(x, xs, "int8"), xs, "float32");
    String(dqx); // printing evaluates: the fusion is lost
    const dqw = tq.dequantize(tq.quantize(w, ws, "int8", { dim: 0 }), ws, "float32", { dim: 0 });
    const y = dqx.matmul(dqw.transpose(0, 1));
    assert.ok(!tq.inspectGraph(y).ops.includes("qlinear"));
    const values = y.dataSync();
    y.add(0).dataSync(); // another evaluation: no second warning
    dqx.matmul(dqw.transpose(0, 1)).dataSync();
    assert.equal(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0], /Q\/DQ fusion lost/);
    assert.ok(warnings[0].includes(`fusion_test.ts:${line}:`), warnings[0]);
    // The result is still right: the float fake-quant product.
    tq.setQdqFusion(false);
    const ref = tq.dequantize(tq.quantize(x, xs, "int8"), xs, "float32").matmul(
      dqw.transpose(0, 1),
    );
    assert.deepEqual(values, ref.dataSync());
  } finally {
    console.warn = original;
    tq.setQdqFusion(true);
  }
});

testOnDevices(
  "an input scale computed in the graph keeps the fusion, behind its check",
  (device) => {
    const x = tq.randn([5, 64], { seed: 31, device });
    const w = tq.randn([48, 64], { seed: 32, std: 0.05, device });
    const sw = tq.full([48], 0.002, { device });
    const product = (sx: tq.Tensor) => {
      const xq = tq.dequantize(tq.quantize(x, sx, "int8"), sx, "float32");
      const wq = tq.dequantize(tq.quantize(w, sw, "int8", { dim: 0 }), sw, "float32", { dim: 0 });
      return tq.matmul(xq, wq.transpose(0, 1));
    };
    // Dynamic quantization: the scale from this batch's own amax.
    const computed = product(x.abs().max().div(127));
    const ops = tq.inspectGraph(computed).ops;
    assert.ok(ops.includes("qlinear") && ops.includes("checkScale"), ops.join(", "));
    const given = x.abs().max().div(127);
    given.evaluate();
    assert.deepEqual(computed.dataSync(), product(given).dataSync());
  },
);
