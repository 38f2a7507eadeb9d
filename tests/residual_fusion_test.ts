/**
 * Residual adds folded into the fused linear ops (lib/graph/passes/residual_fusion.ts):
 *
 * - the pass: `add(r, Linear(x))` and `add(Linear(x), r)` fuse for float, w8a8 (int8, fp8, and
 *   int8 with a folded layer norm) and weight-only (int8 per channel, int4 blocks of 128)
 *   layers, and do not when the linear output has another reader or is a graph output, when r
 *   broadcasts, when r is the linear output itself, or when the switch is off;
 * - numerics: the fused graph equals the unfused one (switch off) bit for bit on every device
 *   (the residual add rounds the linear's result first, as the unfused add reads it), at 1, 3,
 *   8 and 37 rows (GEMV and GEMM paths on cuda), for float32, float16 and bfloat16 outputs,
 *   and on cuda for an int8 layer at 1024 rows (the wgmma GEMM, which adds it in its epilogue);
 * - cuda against the cpu, with the tolerance the tests of each path use for the linear's value
 *   (tests/flinear_test.ts, tests/cuda_linear_test.ts, tests/cuda_qgemv_test.ts,
 *   tests/cuda_wgemv_test.ts, tests/norm_folding_test.ts), plus one unit in the last place of
 *   the sum for its extra rounding; bit for bit where those are (int8 qlinear on the GEMV).
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { PlanGraph, PlanNode } from "../lib/backends/backend.ts";
import { qgemvLaunchCount } from "../lib/backends/cuda/qgemv.ts";
import { fp8LoweringCounts } from "../lib/backends/cuda/linear.ts";
import type { DType } from "../lib/dtype.ts";
import { runPasses } from "../lib/graph/passes/mod.ts";
import { traceGraph } from "../lib/runtime/evaluate.ts";
import { randomValues, testOnDevices, testOnGpu, values } from "./helpers.ts";

type Kind = "float" | "int8" | "fp8" | "int8 norm" | "weight int8" | "weight int4";

const KINDS: Kind[] = ["float", "int8", "fp8", "int8 norm", "weight int8", "weight int4"];
const DTYPES: DType[] = ["float32", "float16", "bfloat16"];
const ROWS = [1, 3, 8, 37];
/** Input features (a multiple of 128: int4 blocks) and output features. */
const K = 256;
const N = 96;

/** The fused op each kind becomes. */
const FUSED_OP: Record<Kind, string> = {
  float: "linear",
  int8: "qlinear",
  fp8: "qlinear",
  "int8 norm": "qlinear",
  "weight int8": "wlinear",
  "weight int4": "wlinear",
};

/** Input amax of the w8a8 layers. */
const INPUT_AMAX = 3.5;

interface Model {
  /** The layer's output for x (through the layer norm for "int8 norm"). */
  forward: (x: tq.Tensor) => tq.Tensor;
  /** How far one flipped input code moves an output ("int8 norm" on cuda; 0 otherwise). */
  flip: number;
}

/** A Linear of `kind` (K → N, `dtype`) on `device`, from seeded random state. */
function model(kind: Kind, dtype: DType, device: string, seed: number, bias = true): Model {
  if (kind === "float") {
    const layer = new tq.Linear(K, N, { bias, dtype });
    const dict: Record<string, tq.Tensor> = {
      weight: tq.randn([N, K], { seed, std: 1 / Math.sqrt(K), dtype }),
    };
    if (bias) dict.bias = tq.randn([N], { seed: seed + 1, std: 0.5, dtype });
    layer.loadStateDict(dict);
    layer.to(device);
    return { forward: (x) => layer.forward(x).gelu({ approximate: "tanh" }), flip: 0 };
  }
  const q = kind === "fp8" ? "float8e4m3" : kind === "weight int4" ? "int4" : "int8";
  const options: tq.LinearOptions = kind === "weight int4"
    ? { quantDtype: q, weightQuantDim: 1, blockSize: 128 }
    : { quantDtype: q, weightQuantDim: 0 };
  const weight = tq.randn([N, K], { seed, std: 0.05, dtype });
  const w32 = weight.cast("float32").abs();
  const amax = kind === "weight int4" ? w32.reshape([N, K / 128, 128]).max(2) : w32.max(1);
  const dict: Record<string, tq.Tensor> = { weight, weightScale: tq.scaleFromAmax(amax, q) };
  const w8a8 = !kind.startsWith("weight");
  if (w8a8) dict.inputScale = tq.scaleFromAmax(INPUT_AMAX, q);
  if (bias) dict.bias = tq.randn([N], { seed: seed + 1, std: 0.1, dtype });
  const layer = new tq.Linear(K, N, { ...options, bias, dtype });
  layer.loadStateDict(dict);
  layer.to(device);
  if (kind !== "int8 norm") return { forward: (x) => layer.forward(x), flip: 0 };
  const vector = (s: number, low: number, high: number) =>
    tq.tensor(randomValues(K, s, { low, high }), { dtype, device });
  const lnWeight = vector(seed + 3, 0.5, 1.5);
  const lnBias = vector(seed + 4, -0.3, 0.3);
  const maxW = values(w32).reduce((a, b) => Math.max(a, b), 0);
  return {
    forward: (x) => layer.forward(tq.layerNorm(x, lnWeight, lnBias)),
    flip: (INPUT_AMAX / tq.maxBound("int8")) * maxW,
  };
}

/** The raw storage of `t` as numbers (16-bit floats as their bits): for bitwise equality. */
function bits(t: tq.Tensor): number[] {
  const s = t.storageSync();
  return Array.from(s as ArrayLike<number>);
}

/** Seeded random `[rows, N]` residual on `device`; `computed`: the output of an op (a node);
 * `misaligned`: a view starting one element into its buffer (off every vector alignment). */
function residual(
  rows: number,
  dtype: DType,
  device: string,
  seed: number,
  computed: boolean,
  misaligned = false,
) {
  if (misaligned) {
    const flat = tq.tensor(randomValues(rows * N + 1, seed), { dtype, device });
    return flat.slice([[1, null]]).reshape([rows, N]);
  }
  const r = tq.tensor(randomValues(rows * N, seed), { shape: [rows, N], dtype, device });
  return computed ? r.neg() : r;
}

/** Seeded random `[rows, K]` input on `device`. */
function input(rows: number, dtype: DType, device: string, seed: number): tq.Tensor {
  // Rows with their own offset and spread (the folded layer norm's mean and variance matter).
  const xs = randomValues(rows * K, seed);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < K; i++) xs[r * K + i] = 0.5 * (r % 3) + (1 + 0.25 * r) * xs[r * K + i];
  }
  return tq.tensor(xs, { shape: [rows, K], dtype, device });
}

/** `targets` traced and run through the graph passes (as evaluation would), with its leaves. */
function planned(...targets: tq.Tensor[]): { graph: PlanGraph; leaves: unknown[] } {
  const traced = traceGraph(targets.map((t) => t.node));
  return { graph: runPasses(traced.graph, traced), leaves: traced.leafNodes };
}

/** The nodes of a planned graph that carry a folded residual. */
function residualNodes(graph: PlanGraph): PlanNode[] {
  return graph.nodes.filter((n) => n.attrs.residual === true);
}

/** Evaluates `make()` with residual fusion off. */
function withoutFusion<T>(make: () => T): T {
  tq.setResidualFusion(false);
  try {
    return make();
  } finally {
    tq.setResidualFusion(true);
  }
}

// ---------------------------------------------------------------------------------------
// The pass

testOnDevices("add(r, Linear(x)) and add(Linear(x), r) fold into the fused linear op", (device) => {
  assert.ok(tq.residualFusionEnabled());
  let seed = 1;
  for (const kind of KINDS) {
    for (const rFirst of [true, false]) {
      for (const computed of [false, true]) {
        const what = `${kind} ${rFirst ? "add(r, y)" : "add(y, r)"} r ${computed ? "op" : "leaf"}`;
        const m = model(kind, "float32", device, seed++);
        const x = input(3, "float32", device, seed++);
        const r = residual(3, "float32", device, seed++, computed);
        const y = m.forward(x);
        const out = rFirst ? r.add(y) : y.add(r);
        const { graph, leaves } = planned(out);
        const ops = graph.nodes.map((n) => n.op);
        assert.ok(!ops.includes("add"), `${what}: ${ops.join(",")}`);
        const fused = residualNodes(graph);
        assert.equal(fused.length, 1, `${what}: ${ops.join(",")}`);
        const node = fused[0];
        assert.equal(node.op, FUSED_OP[kind], what);
        assert.equal(node.attrs.norm !== undefined, kind === "int8 norm", `${what}: norm folded`);
        // It is the graph's output, and the residual is its last input.
        const out0 = graph.outputs[0];
        assert.ok("node" in out0 && graph.nodes[out0.node] === node, what);
        const last = node.inputs[node.inputs.length - 1];
        if (computed) {
          assert.ok("node" in last && graph.nodes[last.node].op === "neg", what);
        } else {
          assert.ok("leaf" in last && leaves[last.leaf] === r.node, what);
        }
        // Own inputs: linear [x, W, b]; qlinear [x, sxq, sxd, W, swq, swd, b, lnW, lnB];
        // wlinear [x, W, swq, swd, b].
        const own = { linear: 3, qlinear: kind === "int8 norm" ? 9 : 7, wlinear: 5 }[node.op]!;
        assert.equal(node.inputs.length, own + 1, what);
        assert.deepEqual(tq.inspectGraph(out).ops.filter((o) => o !== "neg"), [node.op], what);
      }
    }
  }
});

testOnDevices("residual fusion leaves other adds alone", (device) => {
  let seed = 100;
  for (const kind of KINDS) {
    const m = model(kind, "float32", device, seed++);
    const x = input(3, "float32", device, seed++);
    const r = residual(3, "float32", device, seed++, false);
    const y = m.forward(x);
    const unfusedOps = (...targets: tq.Tensor[]) => {
      const { graph } = planned(...targets);
      assert.equal(residualNodes(graph).length, 0, `${kind}: ${graph.nodes.map((n) => n.op)}`);
      return graph.nodes.map((n) => n.op);
    };
    // The linear output has a second reader.
    assert.ok(unfusedOps(r.add(y).mul(y)).includes("add"), kind);
    // It is also a graph output.
    assert.ok(unfusedOps(y.add(r), y).includes("add"), kind);
    // It is both operands.
    assert.ok(unfusedOps(y.add(y)).includes("add"), kind);
    // r broadcasts over rows, or has the output's elements in another shape.
    const row = tq.tensor(randomValues(N, seed++), { shape: [1, N], device });
    assert.ok(unfusedOps(y.add(row)).includes("add"), kind);
    const y1 = m.forward(input(1, "float32", device, seed++));
    const flat = tq.tensor(randomValues(N, seed++), { shape: [N], device });
    assert.ok(unfusedOps(flat.add(y1)).includes("add"), kind);
    // The linear broadcasts against r ([1, N] + [3, N]).
    assert.ok(unfusedOps(y1.add(r)).includes("add"), kind);
    // The switch.
    withoutFusion(() => {
      assert.equal(tq.residualFusionEnabled(), false);
      assert.ok(unfusedOps(y.add(r)).includes("add"), kind);
    });
    assert.equal(residualNodes(planned(y.add(r)).graph).length, 1, `${kind}: on again`);
  }
});

testOnDevices("a second add after a fused residual add stays an add", (device) => {
  const m = model("float", "float32", device, 200);
  const x = input(3, "float32", device, 201);
  const r1 = residual(3, "float32", device, 202, false);
  const r2 = residual(3, "float32", device, 203, false);
  const { graph } = planned(m.forward(x).add(r1).add(r2));
  assert.deepEqual(graph.nodes.map((n) => n.op), ["linear", "add"]);
  assert.equal(residualNodes(graph).length, 1);
});

// ---------------------------------------------------------------------------------------
// Numerics: fused against unfused, bit for bit

/** One case's output with residual fusion on and off (and the linear's value alone). */
function fusedAndUnfused(
  kind: Kind,
  dtype: DType,
  rows: number,
  device: string,
  seed: number,
  bias: boolean,
  misaligned = false,
) {
  const m = model(kind, dtype, device, seed, bias);
  const x = input(rows, dtype, device, seed + 10);
  const rFirst = seed % 2 === 0;
  const r = residual(rows, dtype, device, seed + 11, seed % 3 === 0, misaligned);
  const make = () => (rFirst ? r.add(m.forward(x)) : m.forward(x).add(r));
  const fused = make();
  const graph = planned(fused).graph;
  const before = qgemvLaunchCount();
  const fusedBits = bits(fused);
  const gemvRuns = qgemvLaunchCount() - before;
  // Evaluated while the switch is off (plans are made at evaluation).
  let plainValues: Float64Array = new Float64Array();
  const plainBits = withoutFusion(() => {
    const t = make();
    assert.ok(tq.inspectGraph(t).ops.includes("add"));
    plainValues = values(t);
    return bits(t);
  });
  return {
    graph,
    fused,
    fusedBits,
    plainBits,
    plainValues,
    gemvRuns,
    linear: () => values(m.forward(x)),
    flip: m.flip,
  };
}

function describe(kind: Kind, dtype: DType, rows: number, bias: boolean): string {
  return `${kind} ${dtype} M=${rows} K=${K} N=${N} bias ${bias}`;
}

testOnDevices("fused residual adds equal the unfused graph bit for bit", (device) => {
  let seed = 1000;
  for (const kind of KINDS) {
    for (const dtype of DTYPES) {
      for (const rows of ROWS) {
        const bias = (seed & 4) === 0;
        const what = `${describe(kind, dtype, rows, bias)} on ${device}`;
        const c = fusedAndUnfused(kind, dtype, rows, device, seed, bias);
        seed += 7;
        assert.equal(residualNodes(c.graph).length, 1, what);
        assert.ok(c.fusedBits.some((v) => v !== 0), `${what}: all zero`);
        assert.deepEqual(c.fusedBits, c.plainBits, what);
      }
    }
  }
});

// ---------------------------------------------------------------------------------------
// cuda against the cpu (GPU)

/** Unit in the last place of `v` in `dtype`. */
function ulp(dtype: DType, v: number): number {
  const a = Math.abs(v);
  const e = a === 0 ? -126 : Math.floor(Math.log2(a));
  if (dtype === "float16") return 2 ** (Math.max(e, -14) - 10);
  if (dtype === "bfloat16") return 2 ** (Math.max(e, -126) - 7);
  return 2 ** (Math.max(e, -126) - 23);
}

/** Relative and max-relative tolerance of the linear's value on cuda against the cpu. */
function linearTolerance(kind: Kind, dtype: DType): number {
  // tests/flinear_test.ts (TOL) for float layers, tests/cuda_linear_test.ts (HALF_TOL,
  // FP8_TENSOR_CORE_TOL) for w8a8 ones and tests/cuda_wgemv_test.ts (OP_TOL) for weight-only.
  const float: Record<string, number> = { float32: 1e-5, float16: 1e-2, bfloat16: 1e-2 };
  const half: Record<string, number> = { float32: 1e-5, float16: 1e-3, bfloat16: 8e-3 };
  const weightOnly: Record<string, number> = { float32: 1e-5, float16: 2e-3, bfloat16: 1e-2 };
  if (kind === "float") return float[dtype];
  if (kind === "fp8") return Math.max(half[dtype], 2e-3);
  return kind.startsWith("weight") ? weightOnly[dtype] : half[dtype];
}

testOnGpu("fused residual adds on cuda: equal to unfused, and to the cpu", () => {
  let seed = 5000;
  for (const kind of KINDS) {
    for (const dtype of DTYPES) {
      for (const rows of ROWS) {
        const bias = (seed & 4) === 0;
        const what = describe(kind, dtype, rows, bias);
        const gpu = fusedAndUnfused(kind, dtype, rows, "cuda", seed, bias);
        const cpu = fusedAndUnfused(kind, dtype, rows, "cpu", seed, bias);
        seed += 7;
        assert.equal(residualNodes(gpu.graph).length, 1, what);
        // The add step is exact: the fused kernel's sum is the add kernel's.
        assert.deepEqual(gpu.fusedBits, gpu.plainBits, `${what}: cuda fused vs unfused`);
        const w8a8 = kind === "int8" || kind === "fp8" || kind === "int8 norm";
        if (w8a8 && rows <= 8) assert.equal(gpu.gemvRuns, 1, `${what}: the fused GEMV ran`);
        const got = values(gpu.fused), ref = values(cpu.fused);
        if (kind === "int8" && rows <= 8) {
          // Exact int32 sums and the cpu's double epilogue (tests/cuda_qgemv_test.ts).
          assert.deepEqual(gpu.fusedBits, cpu.fusedBits, `${what}: cuda vs cpu`);
          continue;
        }
        // The linear's values on cuda and the cpu differ within the path's tolerance; each of
        // the two roundings may then land one unit apart.
        const lin = cpu.linear();
        const maxLin = lin.reduce((a, b) => Math.max(a, Math.abs(b)), 0);
        const tol = linearTolerance(kind, dtype);
        for (let i = 0; i < got.length; i++) {
          const bound = tol * (Math.abs(lin[i]) + maxLin) + ulp(dtype, lin[i]) +
            ulp(dtype, ref[i]) + 2 * gpu.flip;
          if (!(Math.abs(got[i] - ref[i]) <= bound)) {
            assert.fail(`${what}: at ${i} got ${got[i]}, cpu ${ref[i]} (tolerance ${bound})`);
          }
        }
      }
    }
  }
});

testOnGpu("fp8 layers on the tensor cores take the residual as cuBLASLt's C", () => {
  // Per-channel fp8 at more than 64 rows: cuBLASLt's fused product with outer-vector scales,
  // which adds the residual as C (one rounding where the unfused graph has two). Its sums
  // already differ from the unfused graph's product (tests/cuda_linear_test.ts,
  // FP8_TENSOR_CORE_TOL), so the fused result is compared within that tolerance plus one unit.
  let seed = 7000;
  for (const dtype of ["float16", "bfloat16"] as const) {
    for (const rows of [96, 101]) {
      for (const bias of [true, false]) {
        const what = describe("fp8", dtype, rows, bias);
        const before = fp8LoweringCounts().residualInC;
        const c = fusedAndUnfused("fp8", dtype, rows, "cuda", seed, bias);
        seed += 7;
        assert.equal(residualNodes(c.graph).length, 1, what);
        assert.equal(fp8LoweringCounts().residualInC - before, 1, `${what}: C took the residual`);
        const got = values(c.fused);
        const plain = c.plainValues;
        const lin = c.linear();
        const maxLin = lin.reduce((a, b) => Math.max(a, Math.abs(b)), 0);
        const tol = linearTolerance("fp8", dtype);
        for (let i = 0; i < got.length; i++) {
          const bound = tol * (Math.abs(lin[i]) + maxLin) + ulp(dtype, plain[i]);
          if (!(Math.abs(got[i] - plain[i]) <= bound)) {
            assert.fail(`${what}: at ${i} got ${got[i]}, unfused ${plain[i]} (tolerance ${bound})`);
          }
        }
      }
    }
  }
});

testOnGpu("a residual off 16-byte alignment is added after the product", () => {
  // The int8 GEMM's epilogue and cuBLASLt's C read the residual in 16-byte vectors: a residual
  // view one element into its buffer takes the add kernel instead, at run time. int8: the
  // unfused graph bit for bit; fp8: within the tensor cores' tolerance of it.
  let seed = 7500;
  for (const kind of ["int8", "fp8"] as const) {
    for (const dtype of ["float16", "bfloat16"] as const) {
      for (const rows of [96, 101]) {
        const what = `${describe(kind, dtype, rows, true)}, residual misaligned`;
        const c = fusedAndUnfused(kind, dtype, rows, "cuda", seed, true, true);
        seed += 7;
        assert.equal(residualNodes(c.graph).length, 1, what);
        if (kind === "int8") {
          assert.deepEqual(c.fusedBits, c.plainBits, what);
          continue;
        }
        const got = values(c.fused);
        const lin = c.linear();
        const maxLin = lin.reduce((a, b) => Math.max(a, Math.abs(b)), 0);
        const tol = linearTolerance("fp8", dtype);
        for (let i = 0; i < got.length; i++) {
          const bound = tol * (Math.abs(lin[i]) + maxLin) + ulp(dtype, c.plainValues[i]);
          if (!(Math.abs(got[i] - c.plainValues[i]) <= bound)) {
            assert.fail(`${what}: at ${i} got ${got[i]}, unfused ${c.plainValues[i]}`);
          }
        }
      }
    }
  }
});

testOnGpu("fused residual adds at prefill size equal the unfused graph bit for bit", () => {
  // GPT-2-small's mlp projection at 1024 rows: on Hopper its int8 product is the wgmma GEMM,
  // which adds the residual in its epilogue (elsewhere, or where cuBLASLt times faster, the add
  // kernel runs after the product: equal either way).
  const [rows, k, n] = [1024, 3072, 768];
  let seed = 9000;
  for (const dtype of ["float16", "bfloat16", "float32"] as const) {
    const layer = new tq.Linear(k, n, { quantDtype: "int8", weightQuantDim: 0, dtype });
    const weight = tq.randn([n, k], { seed: seed++, std: 0.05, dtype });
    layer.loadStateDict({
      weight,
      weightScale: tq.scaleFromAmax(weight.cast("float32").abs().max(1), "int8"),
      inputScale: tq.scaleFromAmax(INPUT_AMAX, "int8"),
      bias: tq.randn([n], { seed: seed++, std: 0.1, dtype }),
    });
    layer.to("cuda");
    const x = tq.tensor(randomValues(rows * k, seed++), {
      shape: [rows, k],
      dtype,
      device: "cuda",
    });
    const r = tq.tensor(randomValues(rows * n, seed++), {
      shape: [rows, n],
      dtype,
      device: "cuda",
    });
    const make = () => layer.forward(x).add(r);
    const fused = make();
    assert.equal(residualNodes(planned(fused).graph).length, 1, dtype);
    const got = bits(fused);
    const want = withoutFusion(() => bits(make()));
    let differ = 0;
    for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) differ++;
    assert.equal(
      differ,
      0,
      `${dtype}: ${differ} of ${want.length} outputs differ from the unfused graph`,
    );
    assert.ok(got.some((v) => v !== 0), `${dtype}: all zero`);
  }
});
