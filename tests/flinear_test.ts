import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { DType } from "../lib/dtype.ts";
import { activationFn } from "../lib/backends/cpu/linear.ts";
import {
  flinearLtEpilogue,
  flinearRowClassRunCount,
  rowClassLayout,
} from "../lib/backends/cuda/flinear.ts";
import { gemvShape } from "../lib/backends/cuda/util.ts";
import { linearFusionEnabled, setLinearFusion } from "../lib/graph/passes/qdq_fusion.ts";
import { type Activation, applyActivation, testOnDevices, testOnGpu, values } from "./helpers.ts";

// Tolerances, as |got − ref| ≤ tol·(|ref| + max|ref|):
// - float32: the fused op rounds once where the unfused graph rounds after the product, the
//   bias add and the activation; on the GPU both sum in float32 in different orders: 1e-5.
// - float16 / bfloat16: the unfused graph rounds the product, the sum and the activation to
//   8 (bf16) or 11 (f16) significant bits separately: 1e-2 of max|y|.
const TOL: Record<string, number> = { float32: 1e-5, float16: 1e-2, bfloat16: 1e-2 };
const DTYPES: DType[] = ["float32", "float16", "bfloat16"];

const ACTIVATIONS: Activation[] = ["none", "relu", "gelu", "gelu_tanh"];

function assertNear(got: Float64Array, ref: Float64Array, tol: number, what: string): void {
  assert.equal(got.length, ref.length, `${what}: length`);
  let scale = 0;
  for (const v of ref) scale = Math.max(scale, Math.abs(v));
  assert.ok(scale > 0, `${what}: the reference is all zeros`);
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i] - ref[i]);
    if (!(err <= tol * (Math.abs(ref[i]) + scale))) {
      assert.fail(
        `${what}: at ${i} got ${got[i]}, expected ${ref[i]} (max|ref| ${scale}, tol ${tol})`,
      );
    }
  }
}

/** `make()` evaluated with float Linear fusion off: its op list and values. */
function unfused(make: () => tq.Tensor): { ops: string[]; values: Float64Array } {
  setLinearFusion(false);
  try {
    const t = make();
    return { ops: tq.inspectGraph(t).ops, values: values(t) };
  } finally {
    setLinearFusion(true);
  }
}

function layer(
  device: string,
  [k, n]: [number, number],
  dtype: DType,
  bias: boolean,
  seed: number,
): tq.Linear {
  const l = new tq.Linear(k, n, { bias, dtype });
  const dict: Record<string, tq.Tensor> = {
    weight: tq.randn([n, k], { seed, std: 1 / Math.sqrt(k), dtype }),
  };
  if (bias) dict.bias = tq.randn([n], { seed: seed + 1, std: 0.5, dtype });
  l.loadStateDict(dict);
  return l.to(device);
}

/** act(x · Wᵀ + b) in float64 from the tensors' values. */
function reference(x: tq.Tensor, l: tq.Linear, act: Activation): Float64Array {
  const xs = values(x), ws = values(l.weight);
  const b = l.bias ? values(l.bias) : undefined;
  const f = activationFn(act);
  const k = l.inFeatures, n = l.outFeatures, m = xs.length / k;
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = b ? b[j] : 0;
      for (let p = 0; p < k; p++) s += xs[i * k + p] * ws[j * k + p];
      out[i * n + j] = f(s);
    }
  }
  return out;
}

// [K, N]: multiples of 16, and odd sizes (rows not on 16-byte boundaries for any dtype; N = 17
// and 203 split into an aligned product and a thin one beside it).
const SHAPES: [number, number][] = [[64, 48], [33, 17], [256, 96], [40, 7], [96, 203]];
const ROWS = [1, 5, 16, 17, 300];

testOnDevices(
  "float Linear (+ bias, + activation) fuses into linear and equals the unfused graph",
  (device) => {
    assert.ok(linearFusionEnabled());
    let c = 0, group = 0;
    for (const dtype of DTYPES) {
      for (const m of ROWS) {
        for (const act of ACTIVATIONS) {
          for (const bias of [true, false]) {
            const shape = SHAPES[(c + group) % SHAPES.length];
            const what = `${dtype} M=${m} [K, N]=${shape} bias=${bias} ${act}`;
            const l = layer(device, shape, dtype, bias, 100 + c);
            // One case per dtype with a 3-D input: M = 3 · m rows.
            const xShape = act === "gelu" && bias && m === 5 ? [3, m, shape[0]] : [m, shape[0]];
            const x = tq.randn(xShape, { seed: 200 + c, dtype, device });
            const make = () => applyActivation(l.forward(x), act);
            const y = make();
            assert.deepEqual(tq.inspectGraph(y).ops, ["linear"], what);
            assert.deepEqual(y.shape, [...xShape.slice(0, -1), shape[1]], what);
            const got = values(y);
            const plain = unfused(make);
            assert.ok(plain.ops.includes("matmul") && !plain.ops.includes("linear"), what);
            assertNear(got, plain.values, TOL[dtype], `${what} vs unfused`);
            assertNear(got, reference(x, l, act), TOL[dtype], `${what} vs float64`);
            c++;
          }
        }
        group++;
      }
    }
  },
);

Deno.test("row classes: every output written once, every class product's D aligned", () => {
  // What the row-class lowering and its edge kernel (kernels/flinear.cu, edgeColumns) rely on:
  // class j's rows j, j + P, ... get columns [j·s, j·s + W) from its product, whose D pointer
  // (row j, column j·s) and leading dimension P·N are 16-byte aligned; the edge kernel writes
  // the other N − W columns of row r from the thin products over columns [0, E) and [N − E, N).
  let cases = 0;
  for (const size of [2, 4]) {
    const a = 16 / size;
    for (let n = 1; n <= 400; n++) {
      for (const m of [1, 7, 8, 9, 17, 24, 64]) {
        const layout = rowClassLayout(m, n, 64, size);
        const what = `size ${size} N=${n} M=${m}`;
        if (n % a === 0) {
          assert.equal(layout, undefined, `${what}: rows already aligned`);
          continue;
        }
        if (!layout) continue;
        cases++;
        const { period, step, width, edge } = layout;
        assert.equal((period * n * size) % 16, 0, `${what}: leading dimension`);
        assert.equal(width % a, 0, `${what}: width`);
        assert.ok(edge % a === 0 && edge <= n, `${what}: edge`);
        const writes = new Uint8Array(m * n);
        for (let r = 0; r < m; r++) {
          const j = r % period, c = j * step;
          assert.equal(((j * n + c) * size) % 16, 0, `${what}: class ${j} D pointer`);
          assert.ok(c + width <= n, `${what}: class ${j} past the row`);
          for (let col = c; col < c + width; col++) writes[r * n + col]++;
          for (let e = 0; e < n - width; e++) {
            const col = e < c ? e : width + e;
            const source = e < c ? e : width + e - (n - edge);
            assert.ok(source >= 0 && source < edge, `${what}: row ${r} edge ${e} source`);
            writes[r * n + col]++;
          }
        }
        assert.ok(writes.every((w) => w === 1), `${what}: an output not written exactly once`);
      }
    }
  }
  assert.ok(cases > 1000, `only ${cases} layouts checked`);
  assert.equal(rowClassLayout(8, 50257, 768, 2)?.width, 50208, "GPT-2's logits");
  assert.equal(rowClassLayout(8, 50257, 770, 2), undefined, "x rows off 16 bytes");
});

testOnGpu("odd-width products write their rows in place, by alignment class of rows", () => {
  // N odd, 2 mod 4 and 4 mod 8 give 8, 4 and 2 row classes for 16-bit outputs (4, 2 and 1 for
  // float32, whose rows with N ≡ 4 mod 8 are aligned). M a multiple of the classes runs them as
  // one batched product, other M one product a class (of unequal rows). A column left
  // unwritten keeps whatever its memory held, which the float64 comparison catches.
  const shapes: [number, number][] = [[96, 203], [64, 1001], [128, 50], [32, 36]];
  let c = 0;
  for (const dtype of DTYPES) {
    for (const [k, n] of shapes) {
      for (const m of [17, 24, 64, 301]) {
        for (const act of ["none", "relu", "gelu_tanh"] as Activation[]) {
          const what = `${dtype} M=${m} [K, N]=${[k, n]} ${act}`;
          const l = layer("cuda", [k, n], dtype, false, 500 + c);
          const x = tq.randn([m, k], { seed: 600 + c, dtype, device: "cuda" });
          const before = flinearRowClassRunCount();
          const y = applyActivation(l.forward(x), act);
          const got = values(y);
          const rowsAligned = (n * (dtype === "float32" ? 4 : 2)) % 16 === 0;
          // cuBLASLt's epilogue computes the tanh GELU for 16-bit outputs only.
          const inPlace = !rowsAligned && (act !== "gelu_tanh" || dtype !== "float32");
          assert.equal(flinearRowClassRunCount() - before, inPlace ? 1 : 0, what);
          assertNear(got, reference(x, l, act), TOL[dtype], `${what} vs float64`);
          c++;
        }
      }
    }
  }
});

testOnDevices("Sequential of Linears and a hand-written x · Wᵀ + b fuse layer by layer", (
  device,
) => {
  for (const dtype of DTYPES) {
    const model = new tq.Sequential(
      layer(device, [48, 64], dtype, true, 1),
      layer(device, [64, 33], dtype, false, 3),
      layer(device, [33, 40], dtype, true, 5),
    );
    const x = tq.randn([6, 48], { seed: 7, dtype, device });
    const y = model.forward(x);
    assert.deepEqual(tq.inspectGraph(y).ops, ["linear", "linear", "linear"], dtype);
    assertNear(values(y), unfused(() => model.forward(x)).values, TOL[dtype], dtype);

    // The same pattern written with ops: relu between layers is absorbed.
    const w = tq.randn([24, 48], { seed: 8, dtype, device });
    const b = tq.randn([24], { seed: 9, dtype, device });
    const make = () => x.matmul(w.transpose(0, 1)).add(b).relu();
    const z = make();
    assert.deepEqual(tq.inspectGraph(z).ops, ["linear"]);
    assertNear(values(z), unfused(make).values, TOL[dtype], `${dtype} by hand`);
  }
});

testOnDevices("fused GELU takes its limits at infinite pre-activations", (device) => {
  // A row holding -inf (or +inf) against positive weights gives -inf (+inf) before the
  // activation: GELU must give -0 (+inf) there, not -inf · 0 = NaN. M = 1 and 7 reach the
  // GEMV, M = 40 the GEMM paths.
  const [k, n] = [48, 24];
  for (const dtype of DTYPES) {
    for (const act of ["gelu", "gelu_tanh"] as const) {
      for (const m of [1, 7, 40]) {
        const what = `${dtype} M=${m} ${act}`;
        // cuBLASLt's own GELU epilogue (16-bit outputs past 16 rows, where it takes the
        // problem) gives NaN at -inf, as PyTorch's GELU does (lib/backends/cuda/flinear.ts).
        const ltGelu = device === "cuda" && m > 16 && flinearLtEpilogue(true, act, dtype);
        const l = new tq.Linear(k, n, { dtype });
        l.loadStateDict({
          weight: tq.rand([n, k], { seed: m, low: 0.1, high: 1, dtype }),
          bias: tq.randn([n], { seed: m + 1, dtype }),
        });
        const xs = tq.randn([m, k], { seed: m + 2 }).dataSync() as Float32Array;
        const sign = (row: number) => (row % 2 === 0 ? -Infinity : Infinity);
        for (let row = 0; row < m; row++) xs[row * k + (row % k)] = sign(row);
        const x = tq.tensor(xs, { shape: [m, k], dtype, device });
        const y = applyActivation(l.to(device).forward(x), act);
        assert.deepEqual(tq.inspectGraph(y).ops, ["linear"], what);
        const got = values(y);
        for (let i = 0; i < got.length; i++) {
          const want = sign(Math.floor(i / n)) === Infinity ? Infinity : 0;
          // -0 or 0: === does not tell them apart.
          const ok = got[i] === want || (ltGelu && want === 0 && Number.isNaN(got[i]));
          assert.ok(ok, `${what}: output ${i} is ${got[i]}, want ${want}`);
        }
      }
    }
  }
});

testOnDevices("linear fusion leaves other patterns alone", (device) => {
  const l = layer(device, [32, 16], "float32", true, 11);
  const x = tq.randn([4, 32], { seed: 12, device });
  // The pre-activation is also an output: the activation stays a separate op.
  const pre = l.forward(x);
  const post = pre.gelu();
  const ops = tq.inspectGraph(tq.stack([pre, post])).ops;
  assert.ok(ops.includes("linear") && ops.includes("gelu"), ops.join(","));
  // Bias broadcast over rows is not a per-channel bias: not absorbed.
  const rowBias = tq.randn([4, 1], { seed: 13, device });
  const y = x.matmul(l.weight.transpose(0, 1)).add(rowBias);
  assert.deepEqual(tq.inspectGraph(y).ops, ["linear", "add"]);
  // A weight that is not transposed is not a Linear.
  const v = tq.randn([32, 16], { seed: 14, device });
  assert.deepEqual(tq.inspectGraph(x.matmul(v)).ops, ["matmul"]);
  // Fake-quant weights stay Q/DQ patterns (or the float graph with Q/DQ fusion off).
  const q = new tq.Linear(32, 16, { quantDtype: "int8", weightQuantDim: 0 });
  q.loadStateDict({
    weight: l.weight.to("cpu"),
    bias: l.bias!.to("cpu"),
    weightScale: tq.scaleFromAmax(l.weight.to("cpu").abs().max(1), "int8"),
  });
  q.to(device);
  assert.deepEqual(tq.inspectGraph(q.forward(x)).ops, ["wlinear"]);
  tq.setQdqFusion(false);
  try {
    const ops = tq.inspectGraph(q.forward(x)).ops;
    assert.ok(ops.includes("matmul") && !ops.includes("linear"), ops.join(","));
  } finally {
    tq.setQdqFusion(true);
  }
  // The switch: off gives the unfused graph.
  setLinearFusion(false);
  try {
    assert.deepEqual(tq.inspectGraph(l.forward(x)).ops, ["permute", "matmul", "add"]);
  } finally {
    setLinearFusion(true);
  }
});

testOnDevices("GPT-2 (random small config) forward equals the unfused graph", (device) => {
  for (const dtype of ["float32", "bfloat16"] as DType[]) {
    const model = tq.GPT2LMHeadModel.random(
      { nEmbd: 64, nHead: 4, nLayer: 2, vocabSize: 96, nPositions: 32 },
      { seed: 3, dtype, device },
    );
    // Rows M = B · T: 1 (decode), 14 (GEMV), 40 (cuBLASLt).
    for (const [b, t] of [[1, 1], [2, 7], [8, 5]]) {
      const ids = tq.tensor(Int32Array.from({ length: b * t }, (_, i) => (i * 37 + 5) % 96), {
        shape: [b, t],
      }).to(device);
      const logits = model.forward(ids);
      const ops = tq.inspectGraph(logits).ops;
      // Per block: c_attn, attn c_proj, c_fc (+ gelu), mlp c_proj; then lm_head.
      assert.equal(ops.filter((o) => o === "linear").length, 4 * 2 + 1, ops.join(" "));
      assert.ok(!ops.includes("gelu"), "the MLP's gelu is absorbed");
      const what = `${dtype} [${b}, ${t}]`;
      // bfloat16: roundings differ in every layer and compound over the blocks.
      const tol = dtype === "float32" ? 2e-5 : 2e-2;
      assertNear(values(logits), unfused(() => model.forward(ids)).values, tol, what);
    }
  }
});

testOnDevices("compiled stack of 15 Linear(256, 256) equals eager", (device) => {
  const layers: tq.Linear[] = [];
  for (let i = 0; i < 15; i++) layers.push(layer(device, [256, 256], "float32", true, 50 + i));
  const model = new tq.Sequential(...layers);
  const exe = tq.compile((x) => model.forward(x), {
    args: [tq.inputInfo([[1, 1, 4], 256])],
    device,
  });
  for (const rows of [1, 1, 3]) {
    const x = tq.randn([rows, 256], { seed: 60 + rows, device });
    const y = exe(x) as tq.Tensor;
    const eager = model.forward(x);
    assert.deepEqual(tq.inspectGraph(eager).ops, new Array(15).fill("linear"));
    assertNear(values(y), values(eager), 1e-6, `compiled vs eager, ${rows} rows`);
    assertNear(values(y), unfused(() => model.forward(x)).values, 1e-5, "vs unfused");
  }
  exe.dispose();
});

Deno.test("GEMV launch shapes cover every output channel and K element exactly once", () => {
  const sms = 132;
  const cases: [number, number, number, number][] = [
    [1, 256, 256, 4],
    [1, 2304, 768, 8],
    [16, 768, 3072, 8],
    [16, 768, 768, 4],
    [5, 17, 33, 4],
    [3, 7, 40, 8],
    [9, 50, 5000, 4],
  ];
  for (const [m, n, k, elems] of cases) {
    const s = gemvShape(m, n, k, elems, sms);
    const what = JSON.stringify({ m, n, k, elems, s });
    const step = 32 * elems;
    assert.ok(s.rowsCompiled >= m && s.rowsCompiled <= 16, what);
    assert.equal(s.tileK % step, 0, what);
    assert.equal(s.sharedBytes, s.rowsCompiled * s.tileK * 4, what);
    assert.ok(s.sharedBytes <= 64 * 1024, what);
    assert.ok([1, 2, 4].includes(s.splitK), what);
    // Replays the kernel's indexing: block, warp → channel group and K part; tile, step,
    // lane → chunk; quad j → shared memory slot, which must hold the same x element.
    const seen = new Uint8Array(n * k);
    const groupsPerBlock = 4 / s.splitK;
    for (let block = 0; block < s.blocks; block++) {
      for (let warp = 0; warp < 4; warp++) {
        const n0 = (block * groupsPerBlock + Math.floor(warp / s.splitK)) * 4;
        for (let t0 = 0; t0 < k; t0 += s.tileK) {
          const tk = Math.min(s.tileK, k - t0);
          const steps = Math.ceil(tk / step);
          assert.ok(steps * step <= s.tileK, what);
          for (let st = warp % s.splitK; st < steps; st += s.splitK) {
            for (let lane = 0; lane < 32; lane++) {
              const first = st * step + lane * elems;
              if (first >= tk) continue;
              for (let j = 0; j < elems / 4; j++) {
                const g = st * (step / 4) + j * 32 + lane; // the slot the lane reads
                const rem = g % (step / 4);
                const e0 = Math.floor(g / (step / 4)) * step + (rem % 32) * elems +
                  Math.floor(rem / 32) * 4; // the element staging put there
                assert.equal(e0, first + 4 * j, what);
                for (let e = 0; e < 4; e++) {
                  const kk = t0 + e0 + e;
                  if (kk >= k) continue;
                  for (let r = 0; r < 4; r++) {
                    if (n0 + r < n) seen[(n0 + r) * k + kk]++;
                  }
                }
              }
            }
          }
        }
      }
    }
    assert.ok(seen.every((v) => v === 1), what);
  }
  // The 15 × Linear(256, 256) decode layer: 32 blocks of 1 KiB shared memory.
  const small = gemvShape(1, 256, 256, 4, sms);
  assert.deepEqual(small, {
    rowsCompiled: 1,
    tileK: 256,
    splitK: 2,
    blocks: 32,
    sharedBytes: 1024,
  });
});

Deno.test("cuBLASLt epilogues are used only where they compute what the reference does", () => {
  // cublasLt.h: DEFAULT 1, RELU 2, BIAS 4, RELU_BIAS 6, GELU 32, GELU_BIAS 36.
  for (const dtype of DTYPES) {
    assert.equal(flinearLtEpilogue(false, "none", dtype), 1);
    assert.equal(flinearLtEpilogue(true, "none", dtype), 4);
    assert.equal(flinearLtEpilogue(false, "relu", dtype), 2);
    assert.equal(flinearLtEpilogue(true, "relu", dtype), 6);
    // cuBLASLt's GELU is the tanh form: never for exact GELU.
    assert.equal(flinearLtEpilogue(true, "gelu", dtype), undefined);
  }
  // Its approximation error is hidden by 16-bit rounding only.
  assert.equal(flinearLtEpilogue(true, "gelu_tanh", "float32"), undefined);
  assert.equal(flinearLtEpilogue(true, "gelu_tanh", "bfloat16"), 36);
  assert.equal(flinearLtEpilogue(false, "gelu_tanh", "float16"), 32);
});
