/**
 * Quantized Linear layers on the GPU against their PyTorch peers, run in the same job
 * (bench/peers/linear_torch.py). Prints a markdown table last and writes it (linear.md) and
 * every raw figure (linear.json) to `--out`.
 *
 *     deno run -A bench/gpu_linear.ts [--out DIR] [--quick] [--only a,b,c,d,e] [--no-peer]
 *     deno run -A bench/gpu_linear.ts --smoke --device cpu --no-peer   # tiny shapes, no GPU
 *
 * Figures:
 *   a. W8A8 `Linear(8192, 8192)` float32 in/out, int8 per-channel weight × per-tensor input
 *      scales, bias; M = 8192. Peer: quantize x, `torch._int_mm(x8, w8.t())`,
 *      `.float() * (sx*sw) + b`. Target ≥ 1450 TOP/s.
 *   b. The same (float16 in/out) at GPT-2 shapes, M = 4096: 768→2304, 768→3072, 3072→768.
 *      Peer: fp16 `F.linear`. Target ≥ 1.3× the peer.
 *   c. fp8 e4m3 `Linear(8192, 8192)` bfloat16 in/out, per-channel weight × per-tensor input
 *      scales, bias. Peer: `torch._scaled_mm` rowwise + bias (x pre-quantized). Target ≥ 1.1×.
 *   d. Weight-only int8 per channel and int4 blocks of 128, M = 1, 8192×8192, float16.
 *      Peer: fp16 `F.linear`. Targets ≥ 2.5× / ≥ 4×; the rate is weight-stream TB/s.
 *   e. 15 × `Linear(256, 256)`, batch 1, float32, compiled (`tq.compile`, CUDA graph
 *      replay): wall µs per call. Peer: `torch.compile` mode="reduce-overhead". Target ≥ 2×.
 *
 * Device figures (a–d) are CUDA-event medians around `evaluate()` of a forward built before
 * timing (input quantization included: the fused op quantizes x itself); inputs and weights
 * rotate among several sets when one set fits in the L2 cache. Each figure also checks a
 * slice of our output against a float64 reference of the same quantized computation (and
 * reports the error against the unquantized float product).
 * @module
 */
import * as tq from "../mod.ts";
import { float32ToFloat8e4m3Bits, float8e4m3BitsToNumber, roundHalfToEven } from "../lib/dtype.ts";
import {
  argValue,
  benchArgs,
  type BenchFloat,
  describeError,
  deviceTensor,
  errorMessage,
  errorPasses,
  type ErrorReport,
  fmt,
  type GpuTiming,
  log,
  markdownTable,
  type PeerResult,
  randnHost,
  relError,
  rotated,
  rotationCount,
  roundToDType,
  runPeer,
  timeGpu,
  timeWall,
  type WallTiming,
  writeOut,
} from "./timing.ts";

const args = Deno.args;
const { outDir, quick, smoke, noPeer, device } = benchArgs("gpu_linear.ts", args, {
  values: ["only"],
});
const only = new Set((argValue(args, "only") ?? "a,b,c,d,e").split(",").map((s) => s.trim()));
if ([...only].some((f) => !"abcde".includes(f) || f.length !== 1)) {
  console.error(`gpu_linear.ts: --only takes figures among a, b, c, d, e, got ${[...only]}`);
  Deno.exit(2);
}
const PEER = new URL("./peers/linear_torch.py", import.meta.url).pathname;

/** PyTorch figures measured on an H200 on 2026-11-29, used when the peer cannot run. */
const REFERENCE_US: Record<string, number> = {
  w8a8_8192: 2349,
  gpt2_768x2304: 53,
  gpt2_768x3072: 60,
  gpt2_3072x768: 46,
  fp8_8192: 889,
  wo_m1_8192: 49,
  stack15: 156,
};

type FloatDType = BenchFloat;
type QDType = "int8" | "int4" | "float8e4m3";

/** One table row. */
interface Row {
  figure: string;
  oursUs?: number;
  rate?: string;
  peerName: string;
  peerUs?: number;
  peerSource?: string;
  /** peer / ours: how many times faster we are. */
  ratio?: number;
  target: string;
  met?: boolean;
  check?: string;
  note?: string;
  error?: string;
}

const rows: Row[] = [];
const raw: Record<string, unknown> = { args, device, quick, smoke };

// ---------------------------------------------------------------------------------------------
// Host data, rounding and references

const BOUND: Record<QDType, number> = { int8: 127, int4: 7, float8e4m3: 448 };

/** tensorq's scale rule: fround(amax / bound), 1 for an amax of 0. */
function scaleOf(amax: number, q: QDType): number {
  const s = Math.fround(amax / BOUND[q]);
  return Number.isFinite(amax) && s > 0 ? s : 1;
}

function amaxOf(v: Float32Array, start = 0, end = v.length): number {
  let m = 0;
  for (let i = start; i < end; i++) {
    const a = Math.abs(v[i]);
    if (a > m) m = a;
  }
  return m;
}

/** quantize then dequantize one value, as tensorq defines it (scale applied in float64). */
function fakeQuant(v: number, s: number, q: QDType): number {
  const t = Math.fround(v / s);
  if (q === "float8e4m3") return float8e4m3BitsToNumber(float32ToFloat8e4m3Bits(t));
  const lo = q === "int8" ? -128 : -8;
  const hi = q === "int8" ? 127 : 7;
  return Math.min(hi, Math.max(lo, roundHalfToEven(t)));
}

/** How a Linear is quantized in a figure. */
interface QuantSpec {
  qdtype: QDType;
  /** Inputs quantized per tensor (qlinear) or left in float (wlinear). */
  inputs: boolean;
  /** Weight scales per output channel (dim 0) or blocks of input features (dim 1). */
  weightQuantDim: 0 | 1;
  blockSize?: number;
}

/** Host copies of one rotation set (values already rounded to the module dtype). */
interface HostSet {
  x: Float32Array;
  w: Float32Array;
  bias: Float32Array;
  weightScale: Float32Array;
  weightScaleShape: number[];
  inputScale?: number;
}

function weightScales(
  w: Float32Array,
  n: number,
  k: number,
  spec: QuantSpec,
): { scale: Float32Array; shape: number[] } {
  if (spec.weightQuantDim === 0) {
    const scale = new Float32Array(n);
    for (let r = 0; r < n; r++) scale[r] = scaleOf(amaxOf(w, r * k, (r + 1) * k), spec.qdtype);
    return { scale, shape: [n] };
  }
  const b = spec.blockSize!;
  const perRow = k / b;
  const scale = new Float32Array(n * perRow);
  for (let i = 0; i < scale.length; i++) {
    scale[i] = scaleOf(amaxOf(w, i * b, (i + 1) * b), spec.qdtype);
  }
  return { scale, shape: [n, perRow] };
}

/**
 * float64 references for `y[rows, cols]`: the quantized computation tensorq defines (inputs
 * fake-quantized per tensor when quantized, weights per channel or block) and the plain float
 * product.
 */
function references(
  set: HostSet,
  k: number,
  spec: QuantSpec,
  rows: [number, number],
  cols: [number, number],
): { quant: Float64Array; float: Float64Array } {
  const nr = rows[1] - rows[0];
  const nc = cols[1] - cols[0];
  const quant = new Float64Array(nr * nc);
  const float = new Float64Array(nr * nc);
  const xq = new Float64Array(nr * k);
  for (let r = 0; r < nr; r++) {
    for (let j = 0; j < k; j++) {
      const v = set.x[(rows[0] + r) * k + j];
      xq[r * k + j] = spec.inputs ? fakeQuant(v, set.inputScale!, spec.qdtype) : v;
    }
  }
  const wq = new Float64Array(k);
  for (let c = 0; c < nc; c++) {
    const n = cols[0] + c;
    for (let j = 0; j < k; j++) {
      const s = spec.weightQuantDim === 0
        ? set.weightScale[n]
        : set.weightScale[n * (k / spec.blockSize!) + Math.floor(j / spec.blockSize!)];
      // Integer (or fp8) values; the scale is applied after the sum for channel scales.
      const q = fakeQuant(set.w[n * k + j], s, spec.qdtype);
      wq[j] = spec.weightQuantDim === 0 ? q : q * s;
    }
    for (let r = 0; r < nr; r++) {
      let acc = 0;
      let accFloat = 0;
      for (let j = 0; j < k; j++) {
        acc += xq[r * k + j] * wq[j];
        accFloat += set.x[(rows[0] + r) * k + j] * set.w[n * k + j];
      }
      let y = spec.weightQuantDim === 0 ? acc * set.weightScale[n] : acc;
      if (spec.inputs) y *= set.inputScale!;
      quant[r * nc + c] = y + set.bias[n];
      float[r * nc + c] = accFloat + set.bias[n];
    }
  }
  return { quant, float };
}

interface CheckResult {
  error: ErrorReport;
  floatError: ErrorReport;
  ok: boolean;
  text: string;
}

/** Compares two corner blocks of `y [M, N]` with the references. */
function checkOutput(
  y: tq.Tensor,
  set: HostSet,
  k: number,
  spec: QuantSpec,
  tolerance: number,
): CheckResult {
  const [m, n] = y.shape;
  const r = Math.min(4, m);
  const c = Math.min(256, n);
  const blocks: [[number, number], [number, number]][] = [[[0, r], [0, c]]];
  if (m > r || n > c) blocks.push([[m - r, m], [n - c, n]]);
  const got: number[] = [];
  const quant: number[] = [];
  const float: number[] = [];
  for (const [rows, cols] of blocks) {
    const part = tq.slice(y, [rows, cols]).dataSync() as Float32Array;
    got.push(...part);
    const ref = references(set, k, spec, rows, cols);
    quant.push(...ref.quant);
    float.push(...ref.float);
  }
  const error = relError(got, quant);
  const floatError = relError(got, float);
  const ok = errorPasses(error, tolerance);
  const text = `vs quantized reference: ${describeError(error, tolerance)}; ` +
    `vs float: norm rel ${floatError.normRel.toExponential(2)}`;
  return { error, floatError, ok, text };
}

/** Output tolerance (norm-relative) for an output dtype. */
function toleranceFor(dtype: FloatDType): number {
  return dtype === "float32" ? 1e-4 : dtype === "float16" ? 5e-3 : 1.5e-2;
}

// ---------------------------------------------------------------------------------------------
// Building layers

/** A Linear quantized per `spec` holding one host set's data on the device. */
function makeLinear(
  set: HostSet,
  k: number,
  n: number,
  dtype: FloatDType,
  spec: QuantSpec,
): tq.Linear {
  const layer = tq.withoutInitialization(() =>
    new tq.Linear(k, n, {
      dtype,
      quantDtype: spec.qdtype,
      weightQuantDim: spec.weightQuantDim,
      blockSize: spec.blockSize,
    })
  );
  const dict: Record<string, tq.Tensor> = {
    weight: deviceTensor(set.w, [n, k], dtype, device),
    bias: deviceTensor(set.bias, [n], dtype, device),
    weightScale: tq.tensor(set.weightScale, { shape: set.weightScaleShape, device }),
  };
  if (spec.inputs) {
    dict.inputScale = tq.tensor(Float32Array.of(set.inputScale!), { shape: [], device });
  }
  layer.loadStateDict(dict);
  return layer;
}

const hostCache = new Map<string, Float32Array>();

/** Seeded normal host data, shared between figures that use the same shapes. */
function hostRandn(key: string, n: number, seed: number, std = 1): Float32Array {
  const id = `${key}:${n}:${seed}:${std}`;
  let v = hostCache.get(id);
  if (!v) {
    v = randnHost(n, seed, std);
    hostCache.set(id, v);
  }
  return v;
}

/**
 * Host data of rotation set `i` of a figure: set 0 from the seeds (values rounded to the
 * module dtype, so references see what the device holds), the others rotated copies of it
 * (left unrounded: only set 0 is checked). Every set shares set 0's input scale, as a
 * calibrated layer would.
 */
function hostSet(
  i: number,
  m: number,
  k: number,
  n: number,
  dtype: FloatDType,
  spec: QuantSpec,
  wStd: number,
): HostSet {
  const x0 = hostRandn("x", m * k, 1);
  const w0 = hostRandn("w", n * k, 2, wStd);
  const b0 = hostRandn("b", n, 3, 0.1);
  const x = i === 0 ? roundToDType(dtype, x0) : rotated(x0, i * 7919);
  const w = i === 0 ? roundToDType(dtype, w0) : rotated(w0, i * 104729);
  const bias = i === 0 ? roundToDType(dtype, b0) : rotated(b0, i * 13);
  // Other sets take set 0's input scale (see deviceSets).
  const inputScale = spec.inputs && i === 0 ? scaleOf(amaxOf(x), spec.qdtype) : undefined;
  const ws = weightScales(w, n, k, spec);
  return { x, w, bias, weightScale: ws.scale, weightScaleShape: ws.shape, inputScale };
}

/** Layers and inputs on the device for `count` rotation sets, with set 0's host data. */
function deviceSets(
  count: number,
  m: number,
  k: number,
  n: number,
  dtype: FloatDType,
  spec: QuantSpec,
  wStd: number,
): { first: HostSet; layers: tq.Linear[]; xs: tq.Tensor[] } {
  let first: HostSet | undefined;
  const layers: tq.Linear[] = [];
  const xs: tq.Tensor[] = [];
  for (let i = 0; i < count; i++) {
    const set = hostSet(i, m, k, n, dtype, spec, wStd);
    if (i === 0) first = set;
    else if (spec.inputs) set.inputScale = first!.inputScale;
    layers.push(makeLinear(set, k, n, dtype, spec));
    xs.push(deviceTensor(set.x, [m, k], dtype, device));
  }
  return { first: first!, layers, xs };
}

/** Bytes one forward touches at least (for the L2 rotation decision). */
function setBytes(m: number, k: number, n: number, dtype: FloatDType, q: QDType): number {
  const e = dtype === "float32" ? 4 : 2;
  const wBytes = q === "int4" ? n * k / 2 : n * k;
  return m * k * e + m * n * e + wBytes;
}

// ---------------------------------------------------------------------------------------------
// Measuring

interface OursResult {
  timing: GpuTiming;
  fresh: GpuTiming;
  /** The same forward compiled to one CUDA graph (input and output copies included). */
  graph?: GpuTiming;
  check: CheckResult;
  ops: string[];
}

/**
 * Times `evaluate()` of forwards built before timing (one per call, rotating among the
 * sets), then also a fresh `forward().evaluate()` per call, and checks set 0's output.
 */
function measureLinear(
  m: number,
  k: number,
  n: number,
  dtype: FloatDType,
  spec: QuantSpec,
  reps: { warmup: number; reps: number },
  wStd = 1,
): OursResult {
  const count = smoke ? 2 : rotationCount(setBytes(m, k, n, dtype, spec.qdtype));
  const { first, layers, xs } = deviceSets(count, m, k, n, dtype, spec, wStd);
  // Check first (also warms up: the backend quantizes and caches the weights).
  const y0 = layers[0].forward(xs[0]);
  const ops = tq.inspectGraph(y0).ops;
  y0.evaluate();
  const check = checkOutput(y0, first, k, spec, toleranceFor(dtype));
  y0.dispose();
  for (let i = 1; i < layers.length; i++) layers[i].forward(xs[i]).evaluate().dispose();

  const total = reps.warmup + reps.reps;
  const pending: (tq.Tensor | undefined)[] = Array.from(
    { length: total },
    (_, i) => layers[i % count].forward(xs[i % count]),
  );
  const timing = timeGpu((i) => {
    const y = pending[i]!.evaluate();
    y.dispose();
    pending[i] = undefined;
  }, { ...reps, device });
  const fresh = timeGpu((i) => {
    layers[i % count].forward(xs[i % count]).evaluate().dispose();
  }, { warmup: 2, reps: Math.max(5, Math.floor(reps.reps / 2)), device });
  let graph: GpuTiming | undefined;
  if (device.startsWith("cuda")) {
    const exes = layers.map((l) =>
      tq.compile((z: tq.Tensor) => l.forward(z), { args: [tq.inputInfo([m, k], dtype)], device })
    );
    const yc = exes[0](xs[0]) as tq.Tensor;
    const checkGraph = checkOutput(yc, first, k, spec, toleranceFor(dtype));
    yc.dispose();
    if (!checkGraph.ok) throw new Error(`compiled forward differs: ${shortCheck(checkGraph)}`);
    graph = timeGpu((i) => {
      (exes[i % count](xs[i % count]) as tq.Tensor).dispose();
    }, { ...reps, device });
    for (const e of exes) e.dispose();
  }
  for (const x of xs) x.dispose();
  return { timing, fresh, graph, check, ops };
}

function describeTiming(t: GpuTiming): string {
  return `median ${fmt(t.medianUs)} µs (p10 ${fmt(t.p10Us)}, p90 ${fmt(t.p90Us)}; host ${
    fmt(t.hostUs)
  } µs/call${t.hostBound ? ", HOST-BOUND" : ""})`;
}

const peerResults = new Map<string, PeerResult>();

/** Runs the peer for `cases` (comma list) once and keeps each case's JSON. */
async function peerCases(cases: string[], extra: string[] = []): Promise<void> {
  if (noPeer) return;
  const todo = cases.filter((c) => !peerResults.has(c));
  if (todo.length === 0) return;
  log(`peer: python3 ${PEER} --case ${todo.join(",")} --json ...`);
  const r = await runPeer(PEER, [
    "--case",
    todo.join(","),
    "--json",
    ...(quick ? ["--quick", "--skip-default-compile"] : []),
    ...extra,
  ], 420);
  const all = (r.json?.cases ?? {}) as Record<string, Record<string, unknown>>;
  for (const c of todo) {
    const json = all[c];
    peerResults.set(
      c,
      json && !json.error ? { json, seconds: r.seconds } : {
        error: (json?.error as string | undefined) ?? r.error ?? "no result",
        seconds: r.seconds,
      },
    );
  }
  raw.peerVersions = { torch: r.json?.torch, device: r.json?.device };
}

/** The peer's median µs for a case (a nested key path into its JSON), or the reference figure. */
function peerUs(kase: string, path: string[] = ["median_us"]): { us?: number; source: string } {
  const r = peerResults.get(kase);
  let v: unknown = r?.json;
  for (const p of path) v = (v as Record<string, unknown> | undefined)?.[p];
  if (typeof v === "number") return { us: v, source: "measured" };
  if (path.length === 1 && REFERENCE_US[kase] !== undefined) {
    return {
      us: REFERENCE_US[kase],
      source: noPeer ? "reference H200 figures" : "reference H200 figures (peer failed)",
    };
  }
  return { source: "unavailable" };
}

function addRow(row: Row): void {
  if (row.oursUs !== undefined && row.peerUs !== undefined) row.ratio = row.peerUs / row.oursUs;
  rows.push(row);
  const status = row.error
    ? `ERROR ${row.error.split("\n")[0]}`
    : `ours ${fmt(row.oursUs)} µs (${row.rate ?? ""}), ${row.peerName} ${fmt(row.peerUs)} µs` +
      ` [${row.peerSource ?? ""}], ratio ${fmt(row.ratio, 2)}×, target ${row.target}: ${
        row.met === undefined ? "?" : row.met ? "MET" : "not met"
      }`;
  log(`${row.figure}: ${status}`);
  if (row.check) log(`  check: ${row.check}`);
  if (row.note) log(`  note: ${row.note}`);
  save();
}

function fail(figure: string, peerName: string, target: string, e: unknown): void {
  addRow({ figure, peerName, target, error: errorMessage(e) });
}

function table(): string {
  const header = [
    "figure",
    "ours median (µs)",
    "ours rate",
    "peer",
    "peer median (µs)",
    "ratio (peer / ours)",
    "target",
    "met?",
    "max rel err (vs quantized ref)",
  ];
  const body = rows.map((r) => [
    r.figure,
    r.error ? "error" : fmt(r.oursUs),
    r.rate ?? "—",
    `${r.peerName}${r.peerSource && r.peerSource !== "measured" ? ` (${r.peerSource})` : ""}`,
    fmt(r.peerUs),
    r.ratio === undefined ? "—" : `${r.ratio.toFixed(2)}×`,
    r.target,
    r.error ? "error" : smoke || !device.startsWith("cuda")
      ? "n/a (smoke)" // tiny shapes or the CPU: the targets are set for the GPU's shapes
      : r.met === undefined
      ? "?"
      : r.met
      ? "yes"
      : "no",
    r.check ?? (r.error ? r.error.split("\n")[0].slice(0, 80) : "—"),
  ]);
  return `### Quantized Linear on ${device}${smoke ? " (SMOKE: tiny shapes)" : ""}\n\n` +
    markdownTable(header, body);
}

function save(): void {
  writeOut(outDir, "linear.md", table() + "\n");
  const peers = Object.fromEntries([...peerResults].map(([k, v]) => [k, v.json ?? v]));
  writeOut(
    outDir,
    "linear.json",
    JSON.stringify(
      { ...raw, rows, peers },
      (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v),
      2,
    ),
  );
}

function shortCheck(c: CheckResult): string {
  return `${c.error.maxRel.toExponential(1)} (norm ${c.error.normRel.toExponential(1)}${
    c.error.nonFinite ? ", NON-FINITE" : ""
  }; ${c.ok ? "ok" : "FAIL"}; vs float ${c.floatError.normRel.toExponential(1)})`;
}

// ---------------------------------------------------------------------------------------------
// Figures

const S = smoke ? { big: 64, m: 32, k1: 64, n1: 96, k2: 128, n2: 64, wo: 256 } : {
  big: 8192,
  m: 4096,
  k1: 768,
  n1: 2304,
  k2: 3072,
  n2: 768,
  wo: 8192,
};

async function figureA(): Promise<void> {
  const figure = `a. W8A8 Linear ${S.big}³, float32 out, per-channel w × per-tensor x, bias`;
  const target = "≥ 1450 TOP/s";
  await peerCases(["w8a8_8192"]);
  try {
    const spec: QuantSpec = { qdtype: "int8", inputs: true, weightQuantDim: 0 };
    const r = measureLinear(S.big, S.big, S.big, "float32", spec, {
      warmup: quick ? 3 : 5,
      reps: quick ? 10 : 30,
    });
    const ops = 2 * S.big ** 3;
    const tops = ops / (r.timing.medianUs * 1e-6) / 1e12;
    const peer = peerUs("w8a8_8192");
    raw.a = { ours: r.timing, fresh: r.fresh, ops: r.ops, check: r.check };
    addRow({
      figure,
      oursUs: r.timing.medianUs,
      rate: `${fmt(tops, 0)} TOP/s`,
      peerName: "torch quantize + _int_mm + epilogue",
      peerUs: peer.us,
      peerSource: peer.source,
      target,
      met: tops >= 1450 && r.check.ok,
      check: shortCheck(r.check),
      note: `${describeTiming(r.timing)}; fresh forward+evaluate ${describeTiming(r.fresh)}; ops ${
        r.ops.join(" ")
      }`,
    });
  } catch (e) {
    fail(figure, "torch W8A8", target, e);
  }
}

async function figureB(): Promise<void> {
  const shapes: [number, number][] = [[S.k1, S.n1], [S.k1, 4 * S.k1], [S.k2, S.n2]];
  const names = ["gpt2_768x2304", "gpt2_768x3072", "gpt2_3072x768"];
  await peerCases(names);
  for (let i = 0; i < shapes.length; i++) {
    const [k, n] = shapes[i];
    const figure = `b. W8A8 Linear M=${S.m}, ${k}→${n}, float16`;
    const target = "≥ 1.3× fp16 F.linear";
    try {
      const spec: QuantSpec = { qdtype: "int8", inputs: true, weightQuantDim: 0 };
      const r = measureLinear(S.m, k, n, "float16", spec, {
        warmup: quick ? 5 : 20,
        reps: quick ? 30 : 200,
      }, 0.02);
      const tops = 2 * S.m * k * n / (r.timing.medianUs * 1e-6) / 1e12;
      const peer = peerUs(names[i]);
      const torchW8a8 = peerUs(names[i], ["w8a8_torch", "median_us"]).us;
      raw[`b_${names[i]}`] = { ours: r.timing, fresh: r.fresh, ops: r.ops, check: r.check };
      const ratio = peer.us !== undefined ? peer.us / r.timing.medianUs : undefined;
      if (r.graph) {
        const g = r.graph;
        const gRatio = peer.us !== undefined ? peer.us / g.medianUs : undefined;
        addRow({
          figure: `${figure} (CUDA graph)`,
          oursUs: g.medianUs,
          rate: `${fmt(2 * S.m * k * n / (g.medianUs * 1e-6) / 1e12, 0)} TOP/s`,
          peerName: "fp16 F.linear",
          peerUs: peer.us,
          peerSource: peer.source,
          target,
          met: gRatio !== undefined && gRatio >= 1.3 && r.check.ok,
          check: shortCheck(r.check),
          note: `tq.compile replay, input and output copies included; ${describeTiming(g)}`,
        });
      }
      addRow({
        figure,
        oursUs: r.timing.medianUs,
        rate: `${fmt(tops, 0)} TOP/s`,
        peerName: "fp16 F.linear",
        peerUs: peer.us,
        peerSource: peer.source,
        target,
        met: ratio !== undefined && ratio >= 1.3 && r.check.ok,
        check: shortCheck(r.check),
        note: `${describeTiming(r.timing)}; fresh forward+evaluate ${
          describeTiming(r.fresh)
        }; PyTorch W8A8 path ${fmt(torchW8a8)} µs; ops ${r.ops.join(" ")}`,
      });
    } catch (e) {
      fail(figure, "fp16 F.linear", target, e);
    }
  }
}

async function figureC(): Promise<void> {
  const figure = `c. fp8 Linear ${S.big}³, bfloat16 out, per-channel w × per-tensor x, bias`;
  const target = "≥ 1.1× _scaled_mm";
  await peerCases(["fp8_8192"]);
  try {
    const spec: QuantSpec = { qdtype: "float8e4m3", inputs: true, weightQuantDim: 0 };
    const r = measureLinear(S.big, S.big, S.big, "bfloat16", spec, {
      warmup: quick ? 3 : 5,
      reps: quick ? 10 : 30,
    });
    const tflops = 2 * S.big ** 3 / (r.timing.medianUs * 1e-6) / 1e12;
    const peer = peerUs("fp8_8192");
    const ratio = peer.us !== undefined ? peer.us / r.timing.medianUs : undefined;
    const withQuant = peerUs("fp8_8192", ["with_row_quantization", "median_us"]).us;
    raw.c = { ours: r.timing, fresh: r.fresh, ops: r.ops, check: r.check };
    addRow({
      figure,
      oursUs: r.timing.medianUs,
      rate: `${fmt(tflops, 0)} TFLOP/s`,
      peerName: "torch._scaled_mm rowwise + bias",
      peerUs: peer.us,
      peerSource: peer.source,
      target,
      met: ratio !== undefined && ratio >= 1.1 && r.check.ok,
      check: shortCheck(r.check),
      note: `ours includes quantizing x (per tensor); the peer's x is pre-quantized per row ` +
        `(with its row quantization: ${fmt(withQuant)} µs). ${describeTiming(r.timing)}; ` +
        `fresh forward+evaluate ${describeTiming(r.fresh)}; ops ${r.ops.join(" ")}`,
    });
  } catch (e) {
    fail(figure, "torch._scaled_mm", target, e);
  }
}

async function figureD(): Promise<void> {
  await peerCases(["wo_m1_8192"]);
  const variants: {
    name: string;
    spec: QuantSpec;
    /** Speed-up over fp16 F.linear asked for; undefined: faster than it. */
    target?: number;
    bytes: number;
    peerNote: string;
  }[] = [
    {
      name: "int8 per channel",
      spec: { qdtype: "int8", inputs: false, weightQuantDim: 0 },
      target: 2.5,
      bytes: S.wo * S.wo + S.wo * 4 + S.wo * 2,
      peerNote: `PyTorch dequantize-then-F.linear ${
        fmt(peerUs("wo_m1_8192", ["int8_dequant_then_linear", "median_us"]).us)
      } µs`,
    },
    {
      name: "int4 block 128",
      spec: { qdtype: "int4", inputs: false, weightQuantDim: 1, blockSize: 128 },
      target: 4,
      bytes: S.wo * S.wo / 2 + S.wo * (S.wo / 128) * 4 + S.wo * 2,
      peerNote: `PyTorch tinygemm int4 (bf16, group 128) ${
        fmt(peerUs("wo_m1_8192", ["int4_tinygemm_bf16", "median_us"]).us)
      } µs`,
    },
    // Decode-sized qlinear: x quantized per tensor inside the one GEMV launch.
    {
      name: "W8A8 int8 per channel (x per tensor)",
      spec: { qdtype: "int8", inputs: true, weightQuantDim: 0 },
      bytes: S.wo * S.wo + S.wo * 4 + S.wo * 2,
      peerNote: "x quantized inside the kernel",
    },
    {
      name: "fp8 e4m3 per channel (x per tensor)",
      spec: { qdtype: "float8e4m3", inputs: true, weightQuantDim: 0 },
      bytes: S.wo * S.wo + S.wo * 4 + S.wo * 2,
      peerNote: "x quantized inside the kernel",
    },
  ];
  const peer = peerUs("wo_m1_8192");
  for (const v of variants) {
    const base = `d. ${v.spec.inputs ? "" : "weight-only "}${v.name}, M=1, ${S.wo}×${S.wo}, ` +
      "float16";
    const target = v.target !== undefined
      ? `≥ ${v.target}× fp16 F.linear`
      : "faster than fp16 F.linear";
    try {
      const k = S.wo, n = S.wo;
      const count = smoke ? 2 : rotationCount(v.bytes);
      const { first, layers, xs } = deviceSets(count, 1, k, n, "float16", v.spec, 0.02);
      const x = xs[0];
      const y0 = layers[0].forward(x);
      const ops = tq.inspectGraph(y0).ops;
      const check = checkOutput(y0.evaluate(), first, k, v.spec, toleranceFor("float16"));
      y0.dispose();
      const warmup = quick ? 10 : 20;
      const reps = quick ? 50 : 200;
      const pending: (tq.Tensor | undefined)[] = Array.from(
        { length: warmup + reps },
        (_, i) => layers[i % count].forward(x),
      );
      const eager = timeGpu((i) => {
        pending[i]!.evaluate().dispose();
        pending[i] = undefined;
      }, { warmup, reps, device });
      // The same forward as one CUDA graph per layer (input and output copies included).
      const exes = layers.map((l) =>
        tq.compile((z: tq.Tensor) => l.forward(z), {
          args: [tq.inputInfo([1, k], "float16")],
          device,
        })
      );
      const yc = exes[0](x) as tq.Tensor;
      const checkGraph = checkOutput(yc, first, k, v.spec, toleranceFor("float16"));
      yc.dispose();
      const graph = timeGpu((i) => {
        (exes[i % count](x) as tq.Tensor).dispose();
      }, { warmup, reps, device });
      for (const e of exes) e.dispose();
      raw[`d_${v.spec.qdtype}${v.spec.inputs ? "_a" : ""}`] = {
        eager,
        graph,
        ops,
        check,
        checkGraph,
        sets: count,
      };
      for (
        const [label, t, c] of [["eager", eager, check], ["CUDA graph", graph, checkGraph]] as [
          string,
          GpuTiming,
          CheckResult,
        ][]
      ) {
        const ratio = peer.us !== undefined ? peer.us / t.medianUs : undefined;
        addRow({
          figure: `${base} (${label})`,
          oursUs: t.medianUs,
          rate: `${fmt(v.bytes / (t.medianUs * 1e-6) / 1e12, 2)} TB/s`,
          peerName: "fp16 F.linear",
          peerUs: peer.us,
          peerSource: peer.source,
          target,
          met: ratio !== undefined && ratio >= (v.target ?? 1) && c.ok,
          check: shortCheck(c),
          note: `${describeTiming(t)}; ${count} weight sets rotated; ${v.peerNote}; ops ${
            ops.join(" ")
          }`,
        });
      }
      for (const t of xs) t.dispose();
    } catch (e) {
      fail(base, "fp16 F.linear", target, e);
    }
  }
}

/** float64 forward of the 15-layer stack for one input row. */
function stackReference(
  x: Float32Array,
  weights: Float32Array[],
  biases: Float32Array[],
  width: number,
): Float64Array {
  let h = Float64Array.from(x);
  for (let l = 0; l < weights.length; l++) {
    const next = new Float64Array(width);
    for (let o = 0; o < width; o++) {
      let acc = biases[l][o];
      for (let i = 0; i < width; i++) acc += h[i] * weights[l][o * width + i];
      next[o] = acc;
    }
    h = next;
  }
  return h;
}

async function figureE(): Promise<void> {
  const figure = "e. 15 × Linear(256, 256), batch 1, float32, compiled (wall per call)";
  const target = "≥ 2× torch.compile reduce-overhead";
  await peerCases(["stack15"]);
  try {
    const width = 256;
    const weights: Float32Array[] = [];
    const biases: Float32Array[] = [];
    const layers = Array.from({ length: 15 }, (_, l) => {
      const layer = tq.withoutInitialization(() => new tq.Linear(width, width));
      weights.push(randnHost(width * width, 500 + l, 1 / Math.sqrt(width)));
      biases.push(randnHost(width, 600 + l, 0.05));
      layer.loadStateDict({
        weight: tq.tensor(weights[l], { shape: [width, width], device }),
        bias: tq.tensor(biases[l], { shape: [width], device }),
      });
      return layer;
    });
    const stack = new tq.Sequential(...layers);
    const xHost = randnHost(width, 700);
    const x = tq.tensor(xHost, { shape: [1, width], device });
    const exe = tq.compile((z: tq.Tensor) => stack.forward(z), {
      args: [tq.inputInfo([1, width], "float32")],
      device,
    });
    const y = exe(x) as tq.Tensor;
    const got = y.dataSync() as Float32Array;
    y.dispose();
    const ref = stackReference(xHost, weights, biases, width);
    // cuBLAS may run float32 products in TF32 (~3e-4 a layer): allow for that over 15.
    const tolerance = 5e-3;
    const error = relError(got, ref);
    const calls = smoke ? 200 : quick ? 1000 : 3000;
    const compiled: WallTiming = timeWall(() => {
      (exe(x) as tq.Tensor).dispose();
    }, { warmup: 200, reps: calls, batch: 100 });
    const eager: WallTiming = timeWall(() => {
      stack.forward(x).evaluate().dispose();
    }, { warmup: 20, reps: smoke ? 40 : 200, batch: 20 });
    exe.dispose();
    const peer = peerUs("stack15");
    const eagerPeer = peerUs("stack15", ["eager", "median_us"]).us;
    const defaultPeer = peerUs("stack15", ["compile_default", "median_us"]).us;
    raw.e = { compiled, eager, error };
    const ratio = peer.us !== undefined ? peer.us / compiled.medianUs : undefined;
    addRow({
      figure,
      oursUs: compiled.medianUs,
      rate: `${fmt(1e6 / compiled.medianUs, 0)} calls/s`,
      peerName: "torch.compile reduce-overhead",
      peerUs: peer.us,
      peerSource: peer.source,
      target,
      met: ratio !== undefined && ratio >= 2 && errorPasses(error, tolerance),
      check: `${error.maxRel.toExponential(1)} (norm ${error.normRel.toExponential(1)}; ${
        errorPasses(error, tolerance) ? "ok" : "FAIL"
      }; vs float64)`,
      note: `compiled: median ${fmt(compiled.medianUs)} µs/call over ${compiled.calls} calls ` +
        `(p10 ${fmt(compiled.p10Us)}, p90 ${fmt(compiled.p90Us)}); ours eager ${
          fmt(eager.medianUs)
        } µs/call; PyTorch eager ${fmt(eagerPeer)} µs, torch.compile default ${
          fmt(defaultPeer)
        } µs`,
    });
  } catch (e) {
    fail(figure, "torch.compile reduce-overhead", target, e);
  }
}

async function main(): Promise<void> {
  if (device.startsWith("cuda") && !tq.cuda.isAvailable()) {
    log(`no GPU: ${tq.cuda.unavailableReason()}; nothing to measure (try --smoke --device cpu)`);
    writeOut(
      outDir,
      "linear.md",
      `Linear bench skipped: no GPU (${tq.cuda.unavailableReason()})\n`,
    );
    Deno.exitCode = 1;
    return;
  }
  const t0 = performance.now();
  const figures: [string, () => Promise<void>][] = [
    ["a", figureA],
    ["b", figureB],
    ["c", figureC],
    ["d", figureD],
    ["e", figureE],
  ];
  for (const [id, run] of figures) {
    if (!only.has(id)) continue;
    const t = performance.now();
    await run();
    log(`(figure ${id}: ${((performance.now() - t) / 1e3).toFixed(1)} s)`);
  }
  raw.seconds = (performance.now() - t0) / 1e3;
  save();
  log("");
  log(table());
  // A figure that failed is a failed run (scripts that collect the tables check the status).
  if (rows.some((r) => r.error)) Deno.exitCode = 1;
}

if (import.meta.main) await main();
