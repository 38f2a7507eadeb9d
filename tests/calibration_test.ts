/**
 * Calibration: observers (max, per-channel, histogram with percentile / entropy / mse against
 * hand-computed values and float64 transcriptions of ModelOpt's algorithms), calibrate,
 * quantizeModel against a float64 fake-quant reference, importAmax on the reference fixture,
 * SmoothQuant, and the errors.
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { roundHalfToEven } from "../lib/dtype.ts";
import {
  calibrate,
  compressWeights,
  findModule,
  HistogramObserver,
  type HistogramObserverOptions,
  importAmax,
  LayerNorm,
  Linear,
  loadSafetensors,
  manualSeed,
  MaxObserver,
  Module,
  type MseOptions,
  namedLinears,
  namedModules,
  PerChannelMaxObserver,
  quantizeModel,
  randn,
  scaleFromAmax,
  Sequential,
  smoothingScales,
  smoothQuant,
  type SmoothQuantOptions,
  type Tensor,
  tensor,
  weightAmaxPerBlock,
  weightAmaxPerColumn,
  weightAmaxPerRow,
  zeros,
} from "../mod.ts";
import {
  assertClose,
  assertTqError,
  filesExist,
  randomValues,
  SHARED_DIR,
  testOnDevices,
  thisLine,
} from "./helpers.ts";

const f32 = Math.fround;

// ---------------------------------------------------------------------------------------
// Helpers

/** ReLU as a module, for small test models. */
class Relu extends Module {
  forward(x: Tensor): Tensor {
    return x.relu();
  }
}

/** Named children applied in order (to get dotted names like "a.b"). */
class Chain extends Module {
  readonly #order: Module[] = [];
  constructor(children: Record<string, Module>) {
    super();
    for (const [name, m] of Object.entries(children)) {
      this.#order.push(this.registerModule(name, m));
    }
  }
  forward(x: Tensor): Tensor {
    for (const m of this.#order) x = m.forward(x);
    return x;
  }
}

function floats(t: Tensor): Float32Array {
  return t.dataSync() as Float32Array;
}

function f32Values(n: number, seed: number, scale = 1): Float32Array {
  return Float32Array.from(randomValues(n, seed), (v) => v * scale);
}

/** Round half to even, written independently of the library. */
function rne(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
}

/** TensorRT fake quantization: float32 division, RNE, saturation; float32 dequantize. */
function fakeQuant(x: number, s: number, lo: number, hi: number): number {
  const q = Math.min(hi, Math.max(lo, rne(f32(f32(x) / s))));
  return f32(q * s);
}

function absMax(values: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) m = Math.max(m, Math.abs(values[i]));
  return m;
}

/** Float64 Linear on flat rows: x [rows, in], w [out, in]. */
function linearRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  b: ArrayLike<number> | undefined,
  inp: number,
  out: number,
): Float64Array {
  const rows = x.length / inp;
  const y = new Float64Array(rows * out);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < out; o++) {
      let acc = b ? b[o] : 0;
      for (let i = 0; i < inp; i++) acc += x[r * inp + i] * w[o * inp + i];
      y[r * out + o] = acc;
    }
  }
  return y;
}

/** A seeded Sequential(Linear(16, 32), Relu, Linear(32, 8)) and three batches [2, 3, 16]. */
function smallModel(): { model: Sequential; batches: Tensor[] } {
  manualSeed(1234);
  const model = new Sequential(new Linear(16, 32), new Relu(), new Linear(32, 8));
  const batches = [0, 1, 2].map((i) => randn([2, 3, 16], { seed: 100 + i }));
  return { model, batches };
}

const forward = (m: Module, x: Tensor) => m.forward(x);

function bytesOf(t: Tensor): number[] {
  const st = t.storageSync();
  return Array.from(new Uint8Array(st.buffer, st.byteOffset, st.byteLength));
}

/** Every Linear's configuration and stored values (bit patterns), to show nothing changed. */
function snapshot(model: Module): unknown[] {
  return namedLinears(model).map(([name, l]) => [
    name,
    l.quantDtype,
    l.weightQuantDim,
    l.blockSize,
    l.weightCompressed,
    Object.entries(l.stateDict()).map(([k, t]) => [
      k,
      t.dtype,
      t.shape,
      t.device,
      bytesOf(t),
    ]),
  ]);
}

// ---------------------------------------------------------------------------------------
// Transcriptions of ModelOpt's `_compute_amax_entropy` / `_compute_amax_mse` (float64).

/** numpy.digitize(x, space) - 1 for increasing `space`: the last index with space[k] <= x. */
function digitizeMinus1(x: number, space: number[]): number {
  let lo = 0;
  let hi = space.length; // count of elements <= x
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (space[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

function refEntropy(hist: ArrayLike<number>, edges: number[], startBin: number): number {
  const bins = Array.from(hist);
  bins[0] = bins[1];
  const totalData = bins.reduce((a, b) => a + b, 0);
  const nbins = 128;
  const divergences: number[] = [];
  const args: number[] = [];
  for (let i = startBin; i <= bins.length; i++) {
    const space = Array.from({ length: nbins + 1 }, (_, m) => (m === nbins ? i : m * (i / nbins)));
    const digitized = Array.from({ length: i }, (_, j) => digitizeMinus1(j, space));
    for (let j = 0; j < i; j++) if (bins[j] === 0) digitized[j] = -1;
    const newCounts = new Array(nbins).fill(0);
    const counter = new Map<number, number>();
    digitized.forEach((d, j) => {
      if (d === -1) return;
      newCounts[d] += bins[j];
      counter.set(d, (counter.get(d) ?? 0) + 1);
    });
    for (const [k, v] of counter) newCounts[k] /= v;
    const newDensity = digitized.map((d) => (d === -1 ? 0 : newCounts[d]));
    const reference = bins.slice(0, i);
    const outliers = bins.slice(i).reduce((a, b) => a + b, 0);
    reference[i - 1] += outliers;
    assert.equal(Math.round(reference.reduce((a, b) => a + b, 0)), Math.round(totalData));
    // scipy.stats.entropy(p, q): normalize both, sum p·log(p/q).
    const sp = reference.reduce((a, b) => a + b, 0);
    const sq = newDensity.reduce((a, b) => a + b, 0);
    let kl = 0;
    for (let j = 0; j < i; j++) {
      const p = reference[j] / sp;
      const q = newDensity[j] / sq;
      if (p === 0) continue;
      kl += q === 0 ? Infinity : p * Math.log(p / q);
    }
    divergences.push(kl);
    args.push(i);
  }
  let last = 0;
  for (let k = 0; k < divergences.length; k++) if (divergences[k] <= divergences[last]) last = k;
  return edges[args[last]];
}

function refMse(hist: ArrayLike<number>, edges: number[], startBin: number): number {
  const centers = edges.slice(1).map((e, k) => (e + edges[k]) / 2);
  let best = -1;
  let bestMse = Infinity;
  for (let i = startBin; i < centers.length; i++) {
    const amax = centers[i];
    const scale = 127 / amax;
    let mse = 0;
    for (let k = 0; k < centers.length; k++) {
      const q = Math.min(127, Math.max(-127, rne(centers[k] * scale))) / scale;
      mse += (q - centers[k]) ** 2 * hist[k];
    }
    if (mse < bestMse) {
      bestMse = mse;
      best = i;
    }
  }
  return centers[best];
}

function linspaceEdges(range: number, n: number): number[] {
  return Array.from({ length: n + 1 }, (_, k) => (k === n ? range : k * (range / n)));
}

// ---------------------------------------------------------------------------------------
// Observers

Deno.test("MaxObserver: running max of |x|, non-finite values ignored", () => {
  const o = new MaxObserver();
  assert.equal(o.amax(), 0);
  o.observe(new Float32Array([-3, 1, 2]));
  o.observe(new Float32Array([0.5, NaN, -Infinity, -2.5]));
  assert.equal(o.amax(), 3);
  assert.equal(o.count, 5);
  o.observe(new Float32Array([-7.25]));
  assert.equal(o.amax(), 7.25);
});

Deno.test("PerChannelMaxObserver: max |x| per last-dim channel", () => {
  const o = new PerChannelMaxObserver(3);
  o.observe(new Float32Array([1, -5, 2, -4, 3, 0]));
  o.observe(new Float32Array([0.5, 0.5, -6]));
  assert.deepEqual(Array.from(o.channelAmax()), [4, 5, 6]);
  assert.equal(o.amax(), 6);
  const line = thisLine() + 1;
  const bad = () => o.observe(new Float32Array(4));
  assertTqError(bad, {
    op: "PerChannelMaxObserver.observe",
    kind: "shape",
    includes: ["multiple of 3", "got 4 values"],
    line,
  });
});

Deno.test("HistogramObserver: binning over [0, max] and hand-computed re-binning", () => {
  const h = new HistogramObserver({ bins: 4 });
  h.observe(new Float32Array([0.1, -0.3, 0.6, 1.0]));
  assert.equal(h.range, 1);
  assert.deepEqual(Array.from(h.counts), [1, 1, 1, 1]);
  // Doubling: old bins pair up exactly.
  const d = HistogramObserver.fromCounts([1, 1, 1, 1], 1);
  d.observe(new Float32Array([2]));
  assert.deepEqual(Array.from(d.counts), [2, 2, 0, 1]);
  // 1 → 1.5: new width 0.375; old bin [0.25, 0.5) is split half/half into new bins 0 and 1.
  h.observe(new Float32Array([-1.5]));
  assert.equal(h.range, 1.5);
  assert.deepEqual(Array.from(h.counts), [1.5, 1.5, 1, 1]);
  assert.equal(h.count, 5);
  // A first batch of zeros keeps range 0; the zeros land in bin 0 once the range grows.
  const z = new HistogramObserver({ bins: 4 });
  z.observe(new Float32Array([0, -0, NaN]));
  assert.equal(z.range, 0);
  assert.equal(z.percentile(50), 0);
  assert.equal(z.entropy(), 0);
  z.observe(new Float32Array([4, 3]));
  assert.deepEqual(Array.from(z.counts), [2, 0, 0, 2]);
});

Deno.test("HistogramObserver: a value on an edge k·w lands in bin k", () => {
  // max M and M / 2^j (edge 2048 / 2^j), plus values k·M/2048 that float32 holds exactly.
  const r = randomValues(3000, 4242, { low: 0, high: 1 });
  for (let t = 0; t < 1000; t++) {
    const m = f32(0.01 + 100 * r[3 * t]);
    const k = Math.floor(2048 * r[3 * t + 1]);
    const onEdge = [k * (m / 2048)].filter((v) => f32(v) === v);
    const x = Float32Array.from([m, ...Array.from({ length: 11 }, (_, j) => m / 2 ** (j + 1))]);
    const h = new HistogramObserver();
    h.observe(Float32Array.from([...x, ...onEdge]));
    const w = m / 2048;
    const expected = new Float64Array(2048);
    expected[2047]++; // m itself
    for (let j = 1; j <= 11; j++) expected[2048 / 2 ** j]++;
    for (const v of onEdge) expected[Math.round(v / w)]++;
    assert.deepEqual(Array.from(h.counts), Array.from(expected), `max ${m}, k ${k}`);
    // The smallest value, M/2048, is bin 1's lower edge: it is kept by bin 1's upper edge.
    const hx = new HistogramObserver();
    hx.observe(x);
    assert.equal(hx.percentile(100 / x.length), 2 * w, `max ${m}`);
  }
});

Deno.test("HistogramObserver.percentile: known answers on evenly spread data", () => {
  // 0.5, 1.5, ..., 2047.5: one value per bin of width 2047.5 / 2048.
  const x = Float32Array.from({ length: 2048 }, (_, i) => (i % 2 ? -1 : 1) * (i + 0.5));
  const h = new HistogramObserver();
  h.observe(x);
  assert.deepEqual(new Set(h.counts), new Set([1]));
  const w = 2047.5 / 2048;
  assert.equal(h.percentile(50), 1024 * w); // upper edge of bin 1023
  assert.equal(h.percentile(100), 2047.5);
  assert.equal(h.percentile(0.01), 1 * w);
  assert.ok(Math.abs(h.percentile(50) - 1024) < 2 * w);
  // Uniform random data: the 99.99th percentile of |U(-1, 1)| is 0.9999.
  const u = Float32Array.from(randomValues(400000, 7, { low: -1, high: 1 }));
  const hu = new HistogramObserver();
  hu.observe(u.subarray(0, 200000));
  hu.observe(u.subarray(200000));
  assert.ok(Math.abs(hu.percentile(99.99) - 0.9999) < 0.0015, `${hu.percentile(99.99)}`);
  assert.ok(Math.abs(hu.percentile(50) - 0.5) < 0.005, `${hu.percentile(50)}`);
  // 99.9 % of 80000 is 79920 exactly, though 99.9 / 100 rounds up in binary: the bin whose
  // count reaches 79920 is the answer.
  const counts = new Array(2048).fill(0);
  counts[0] = 79920;
  counts[2047] = 80;
  const spike = HistogramObserver.fromCounts(counts, 1);
  assert.equal(spike.percentile(99.9), 1 / 2048);
  assert.equal(spike.percentile(99.91), 1);
});

Deno.test("HistogramObserver.entropy: flat data keeps the full range; Gaussian clips", () => {
  // A flat histogram: Q equals P only without clipping, so the max (upper edge) wins.
  const flat = HistogramObserver.fromCounts(new Array(2048).fill(10), 3);
  assert.equal(flat.entropy(), 3);
  const g = new HistogramObserver();
  const x = f32Values(200000, 11);
  g.observe(x);
  const amax = g.entropy();
  const max = absMax(x);
  assert.ok(amax > 3 && amax < max, `entropy amax ${amax}, max ${max}`);
  // The amax is an upper bin edge: an integer number of bin widths.
  const k = amax / g.binWidth;
  assert.ok(Math.abs(k - Math.round(k)) < 1e-9, `${k}`);
  assert.equal(new HistogramObserver({ method: "entropy" }).amax(), 0);
  // Data from bin 1500 up: lower thresholds have no Q, so they cannot win.
  const high = HistogramObserver.fromCounts(
    Array.from({ length: 2048 }, (_, k) => (k >= 1500 ? 1 + (k % 7) : 0)),
    1,
  );
  assert.ok(high.entropy() > 1500 / 2048, `${high.entropy()}`);
});

Deno.test("HistogramObserver.entropy equals a transcription of ModelOpt's algorithm", () => {
  for (const [seed, n, start, range] of [[3, 300, 128, 5], [4, 2048, 128, 2.5], [5, 700, 200, 1]]) {
    const r = randomValues(n, seed, { low: 0, high: 1 });
    // Decaying counts with some empty bins and a sparse tail.
    const counts = Array.from(
      r,
      (v, k) => (v < 0.15 ? 0 : Math.floor(1000 * Math.exp(-k / 90) * v)),
    );
    const h = HistogramObserver.fromCounts(counts, range);
    const expected = refEntropy(counts, linspaceEdges(range, n), start);
    const actual = h.entropy({ startBin: start });
    assertClose([actual], [expected], { rtol: 1e-12, message: `seed ${seed}` });
  }
});

Deno.test("HistogramObserver.mse: transcription of ModelOpt; below max for heavy tails", () => {
  for (const [seed, n, range] of [[6, 2048, 4], [8, 512, 1]]) {
    const r = randomValues(n, seed, { low: 0, high: 1 });
    const counts = Array.from(r, (v, k) => Math.floor(5000 * Math.exp(-k / 60) * v));
    const h = HistogramObserver.fromCounts(counts, range);
    const expected = refMse(counts, linspaceEdges(range, n), 128);
    assertClose([h.mse()], [expected], { rtol: 1e-12, message: `seed ${seed}` });
  }
  // Laplace(b = 1) data: the tail is cheaper to clip than to round coarsely. The optimum
  // clipping for 8 bits is about 9.89·b (Banner et al., ACIQ), below the sample max (~12).
  const u1 = randomValues(200000, 9, { low: 0, high: 1 });
  const u2 = randomValues(200000, 10, { low: 0, high: 1 });
  const x = Float32Array.from(u1, (v, i) => (u2[i] < 0.5 ? -1 : 1) * -Math.log(1 - v));
  const heavy = new HistogramObserver();
  heavy.observe(x);
  const amax = heavy.mse();
  assert.ok(amax < 0.9 * heavy.range && Math.abs(amax - 9.89) < 0.4, `${amax}, ${heavy.range}`);
  // Uniform data: little to gain by clipping.
  const u = new HistogramObserver();
  u.observe(Float32Array.from(randomValues(100000, 10, { low: -1, high: 1 })));
  assert.ok(u.mse() > 0.95 * u.range, `${u.mse()} vs ${u.range}`);
});

Deno.test("observer errors: bad percentile, method, values", () => {
  const h = new HistogramObserver();
  let line = thisLine() + 1;
  let bad: () => unknown = () => h.percentile(0);
  assertTqError(bad, { op: "HistogramObserver.percentile", kind: "argument", line });
  line = thisLine() + 1;
  bad = () => h.percentile(100.5);
  assertTqError(bad, { op: "HistogramObserver.percentile", includes: ["(0, 100]"], line });
  line = thisLine() + 1;
  bad = () => new HistogramObserver({ method: "kl" as "entropy" });
  assertTqError(bad, { op: "HistogramObserver", includes: ["unknown histogram method"], line });
  line = thisLine() + 1;
  bad = () => new MaxObserver().observe([1, 2] as unknown as Float32Array);
  assertTqError(bad, { op: "MaxObserver.observe", includes: ["Float32Array"], line });
  line = thisLine() + 1;
  bad = () => h.entropy({ dtype: "float8e4m3" as "int8" });
  assertTqError(bad, { op: "HistogramObserver.entropy", kind: "dtype", line });
});

Deno.test("HistogramObserver checks its entropy and mse options when constructed", () => {
  const cases: [HistogramObserverOptions, string, string[]][] = [
    [{ method: "entropy", entropy: { startBin: -1 } }, "argument", ["'entropy.startBin'", "-1"]],
    [{ method: "mse", mse: { dtype: "int16" as "int8" } }, "dtype", ["'mse.dtype'", '"int16"']],
    [{ entropy: { dtype: "float8e4m3" as "int8" } }, "dtype", ["'entropy.dtype'"]],
    [{ entropy: { stride: 0 } }, "argument", ["'entropy.stride'"]],
    [{ bins: 64, entropy: { startBin: 65 } }, "argument", ["exceeds the number of bins"]],
    [{ bins: 64, method: "mse", mse: { startBin: 64 } }, "argument", ["at most 63"]],
    // Checked whatever the method: amax() of another method would not reach them.
    [{ method: "percentile", mse: { stride: 1.5 } }, "argument", ["'mse.stride'", "1.5"]],
    [{ mse: 3 as unknown as MseOptions }, "argument", ["plain object", "'mse'", "got 3"]],
  ];
  for (const [options, kind, includes] of cases) {
    const line = thisLine() + 1;
    const bad = () => new HistogramObserver(options);
    assertTqError(bad, { op: "HistogramObserver", kind, includes, line });
  }
  const fromCounts = () => HistogramObserver.fromCounts([1, 2, 3], 1, { mse: { startBin: 3 } });
  assertTqError(fromCounts, { op: "HistogramObserver", includes: ["'mse.startBin'"] });
  // Valid options are the ones amax() uses.
  const x = f32Values(4000, 4141, 3);
  for (const method of ["entropy", "mse"] as const) {
    const settings = { startBin: 40, stride: 3, dtype: "int4" as const };
    const h = new HistogramObserver({ bins: 256, method, [method]: settings });
    h.observe(x);
    assert.equal(h.amax(), method === "entropy" ? h.entropy(settings) : h.mse(settings));
    assert.notEqual(h.amax(), method === "entropy" ? h.entropy() : h.mse());
  }
});

// ---------------------------------------------------------------------------------------
// calibrate

Deno.test("namedModules and findModule walk children with dotted names", () => {
  const inner = new Sequential(new Linear(2, 2), new Linear(2, 2));
  const model = new Chain({ a: inner, b: new Linear(2, 3) });
  assert.deepEqual(namedModules(model).map(([n]) => n), ["", "a", "a.0", "a.1", "b"]);
  assert.equal(findModule(model, "a.1"), inner.at(1));
  assert.equal(findModule(model, "a.2"), undefined);
});

Deno.test("calibrate (max): input amax of every Linear, weight amax per row and block", () => {
  const { model, batches } = smallModel();
  const calls: string[] = [];
  const l0 = model.at(0) as Linear;
  const l2 = model.at(2) as Linear;
  const existing = () => calls.push("existing");
  l0.inputObserver = existing;
  const progress: [number, number | undefined][] = [];
  const calib = calibrate(model, batches, forward, {
    perChannel: true,
    weightBlockSize: 16,
    onProgress: (done, total) => progress.push([done, total]),
  });
  assert.deepEqual(progress, [[1, 3], [2, 3], [3, 3]]);
  assert.equal(calls.length, 3, "an existing observer keeps being called");
  assert.equal(l0.inputObserver, existing, "the previous observer is restored");
  assert.equal(l2.inputObserver, undefined);
  assert.deepEqual([...calib.keys()], ["0", "2"]);

  // Layer 0 sees the batches: exact max. Layer 2 sees relu(x W1ᵀ + b1): float64 reference.
  const xs = batches.map(floats);
  const x0 = Float32Array.from(xs.flatMap((x) => Array.from(x)));
  assert.equal(calib.get("0")!.inputAmax, absMax(x0));
  const w1 = floats(l0.weight);
  const h = linearRef(x0, w1, floats(l0.bias!), 16, 32).map((v) => Math.max(v, 0));
  assertClose([calib.get("2")!.inputAmax!], [absMax(h)], { rtol: 1e-6 });

  const rowMax = Array.from({ length: 32 }, (_, r) => absMax(w1.subarray(r * 16, r * 16 + 16)));
  assert.deepEqual(Array.from(calib.get("0")!.weightAmax!), rowMax);
  const w2 = floats(l2.weight);
  const blocks = Array.from({ length: 16 }, (_, b) => absMax(w2.subarray(b * 16, b * 16 + 16)));
  assert.deepEqual(Array.from(calib.get("2")!.weightBlockAmax!), blocks);
  assert.equal(calib.get("2")!.weightBlockSize, 16);

  const ch = Array.from({ length: 16 }, (_, j) => {
    let m = 0;
    for (let i = j; i < x0.length; i += 16) m = Math.max(m, Math.abs(x0[i]));
    return m;
  });
  assert.deepEqual(Array.from(calib.get("0")!.inputChannelAmax!), ch);
});

Deno.test("calibrate: histogram methods clip below the max; iterables without a length", () => {
  const { model, batches } = smallModel();
  const max = calibrate(model, batches, forward).get("0")!.inputAmax!;
  for (const method of ["percentile", "entropy", "mse"] as const) {
    const progress: (number | undefined)[] = [];
    const c = calibrate(model, batches.values(), forward, {
      method,
      percentile: 99,
      onProgress: (_d, total) => progress.push(total),
    });
    const a = c.get("0")!.inputAmax!;
    assert.ok(a > 0 && a <= max * (1 + 1e-6), `${method}: ${a} vs max ${max}`);
    assert.deepEqual(progress, [undefined, undefined, undefined]);
  }
  // Percentile 100 of the histogram is the max.
  const p100 = calibrate(model, batches, forward, { method: "percentile", percentile: 100 });
  assert.equal(p100.get("0")!.inputAmax, f32(max));
});

Deno.test("calibrate: dtype picks the grid entropy and mse weigh (fp8 for mse only)", () => {
  const { model, batches } = smallModel();
  // The first layer's inputs are the batches themselves: an observer of our own sees them.
  const own = new HistogramObserver();
  for (const b of batches) own.observe(b.dataSync() as Float32Array);
  const amaxOf = (options: Parameters<typeof calibrate>[3]) =>
    calibrate(model, batches, forward, { onProgress: () => {}, ...options }).get("0")!.inputAmax!;
  const cases = [
    ["mse", "float8e4m3", own.mse({ dtype: "float8e4m3" })],
    ["mse", "int4", own.mse({ dtype: "int4" })],
    ["mse", undefined, own.mse({ dtype: "int8" })],
    ["entropy", "int4", own.entropy({ dtype: "int4" })],
    ["entropy", "int8", own.entropy()],
  ] as const;
  for (const [method, dtype, expected] of cases) {
    assert.equal(amaxOf({ method, dtype }), expected, `${method} ${dtype}`);
  }
  // fp8's relative precision weighs clipping differently: not the int8 answer.
  assert.notEqual(own.mse({ dtype: "float8e4m3" }), own.mse({ dtype: "int8" }));
  // Max and percentile do not depend on it.
  assert.equal(amaxOf({ dtype: "float8e4m3" }), amaxOf({}));
  let line = thisLine() + 1;
  let bad = () => calibrate(model, batches, forward, { method: "entropy", dtype: "float8e4m3" });
  assertTqError(bad, {
    op: "calibrate",
    kind: "dtype",
    includes: ["method entropy has no float8e4m3 search", "mse, percentile or max"],
    line,
  });
  line = thisLine() + 1;
  bad = () => calibrate(model, batches, forward, { method: "mse", dtype: "int16" as "int8" });
  assertTqError(bad, { op: "calibrate", kind: "dtype", includes: ['"int16"'], line });
});

Deno.test("calibrate: a layer that never runs has no input amax", () => {
  manualSeed(5);
  const unused = new Linear(4, 4);
  const model = new Chain({ used: new Linear(4, 4), unused });
  const c = calibrate(model, [randn([2, 4], { seed: 1 })], (m, x) => m.children()[0][1].forward(x));
  assert.equal(c.get("unused")!.inputAmax, undefined);
  assert.ok(c.get("unused")!.weightAmax!.length === 4);
  const line = thisLine() + 1;
  const bad = () => quantizeModel(model, { mode: "w8a8", calibration: c });
  assertTqError(bad, {
    op: "quantizeModel",
    includes: ["1 layer(s) have no input amax: unused"],
    line,
  });
});

Deno.test("calibrate errors", () => {
  const { model, batches } = smallModel();
  let line = thisLine() + 1;
  let bad: () => unknown = () => calibrate(model, batches, forward, { method: "minmax" as "max" });
  assertTqError(bad, { op: "calibrate", includes: ["unknown calibration method", "minmax"], line });
  line = thisLine() + 1;
  bad = () => calibrate(model, [], forward);
  assertTqError(bad, { op: "calibrate", includes: ["no calibration batches"], line });
  line = thisLine() + 1;
  bad = () => calibrate(model, batches, forward, { weightBlockSize: 2.5 });
  assertTqError(bad, {
    op: "calibrate",
    includes: ["weightBlockSize must be a positive integer", "2.5"],
    line,
  });
  line = thisLine() + 1;
  bad = () => calibrate(new Relu(), batches, forward);
  assertTqError(bad, { op: "calibrate", includes: ["no Linear layers"], line });
  line = thisLine() + 1;
  bad = () => calibrate(model, batches, (async () => {}) as unknown as typeof forward);
  assertTqError(bad, { op: "calibrate", includes: ["run must be synchronous"], line });
  assert.equal((model.at(0) as Linear).inputObserver, undefined, "detached after an error");
  // Options: null means the defaults, as across the library; an array is no options object.
  assert.equal(calibrate(model, batches, forward, null as unknown as undefined).size, 2);
  assertTqError(() => calibrate(model, batches, forward, [] as unknown as undefined), {
    op: "calibrate",
    includes: ["'options'", "got []"],
  });
  assertTqError(() => quantizeModel(model, null as unknown as { mode: "w8" }), {
    op: "quantizeModel",
    includes: ["unknown quantization mode"],
  });
  assertTqError(() => findModule({} as Module, "a"), { op: "findModule", includes: ["'root'"] });
  assertTqError(() => findModule(model, 0 as unknown as string), {
    op: "findModule",
    includes: ["'name'", "got 0"],
  });
  // A run that never calls a layer (a compiled executable replays its trace) calibrates nothing.
  const compiled = tq.compile((x: tq.Tensor) => forward(model, x), {
    args: [tq.inputInfo(batches[0].shape)],
  });
  compiled(batches[0]); // traced before calibrating: later calls do not run the layers
  line = thisLine() + 1;
  bad = () => calibrate(model, batches, (_, x) => compiled(x as tq.Tensor));
  assertTqError(bad, {
    op: "calibrate",
    includes: ["no Linear layer saw an input", "none called"],
    line,
  });
  // Traced during calibration, the layers' inputs have no values: said so, not an evaluate error.
  const traceNow = (x: tq.Tensor) =>
    tq.compile((y: tq.Tensor) => forward(model, y), { args: [tq.inputInfo(x.shape)] })(x);
  bad = () => calibrate(model, batches, (_, x) => traceNow(x as tq.Tensor));
  assertTqError(bad, { op: "calibrate", includes: ["inside compile()", "compiled: false"] });
  assert.equal((model.at(0) as Linear).inputObserver, undefined, "detached after an error");
});

// ---------------------------------------------------------------------------------------
// quantizeModel

Deno.test("quantizeModel w8a8 equals a float64 fake-quant reference", () => {
  const { model, batches } = smallModel();
  const l0 = model.at(0) as Linear;
  const l2 = model.at(2) as Linear;
  const floatW = [floats(l0.weight), floats(l2.weight)];
  const bias = [floats(l0.bias!), floats(l2.bias!)];
  const calib = calibrate(model, batches, forward);
  const summary = quantizeModel(model, { mode: "w8a8", calibration: calib });
  const inAmax = [calib.get("0")!.inputAmax!, calib.get("2")!.inputAmax!];
  const inScale = inAmax.map((a) => f32(a / 127));
  assert.deepEqual(summary, [
    { name: "0", mode: "w8a8", quantDtype: "int8", weightScaleShape: [32], inputScale: inScale[0] },
    { name: "2", mode: "w8a8", quantDtype: "int8", weightScaleShape: [8], inputScale: inScale[1] },
  ]);
  const dims: [number, number][] = [[16, 32], [32, 8]];
  // Reference weights: per-row scale = rowAmax / 127 (float32), fake-quantized.
  const wq = floatW.map((w, li) => {
    const [inp, out] = dims[li];
    const q = new Float64Array(w.length);
    for (let o = 0; o < out; o++) {
      const s = f32(absMax(w.subarray(o * inp, (o + 1) * inp)) / 127);
      for (let i = 0; i < inp; i++) q[o * inp + i] = fakeQuant(w[o * inp + i], s, -128, 127);
    }
    return q;
  });
  assert.equal(l0.quantDtype, "int8");
  assert.equal(l0.weightQuantDim, 0);
  const rowScales = Array.from(
    { length: 32 },
    (_, o) => f32(absMax(floatW[0].subarray(o * 16, o * 16 + 16)) / 127),
  );
  assert.deepEqual(Array.from(floats(l0.weightScale!)), rowScales);

  // Layer by layer on the inputs the model actually sees, then end to end.
  const seen: Float32Array[] = [];
  l2.inputObserver = (x) => seen.push(floats(x));
  for (const batch of batches) {
    const x = floats(batch);
    const y = floats(model.forward(batch));
    const q0 = Array.from(x, (v) => fakeQuant(v, inScale[0], -128, 127));
    const h = linearRef(q0, wq[0], bias[0], 16, 32).map((v) => Math.max(v, 0));
    const h32 = seen.at(-1)!;
    assertClose(h32, h, { rtol: 1e-5, atol: 1e-5, message: "layer 0 output" });
    const q1 = Array.from(h32, (v) => fakeQuant(v, inScale[1], -128, 127));
    assertClose(y, linearRef(q1, wq[1], bias[1], 32, 8), { rtol: 1e-5, atol: 1e-5 });
    const q1ref = Array.from(h, (v) => fakeQuant(v, inScale[1], -128, 127));
    assertClose(y, linearRef(q1ref, wq[1], bias[1], 32, 8), { rtol: 1e-5, atol: 1e-5 });
  }
  l2.inputObserver = undefined;
});

Deno.test("quantizeModel modes set dtypes, scale shapes and scale values", () => {
  const { model, batches } = smallModel();
  const l0 = model.at(0) as Linear;
  const l2 = model.at(2) as Linear;
  const w2 = floats(l2.weight);
  const calib = calibrate(model, batches, forward);

  let s = quantizeModel(model, { mode: "w8" });
  assert.deepEqual(s.map((e) => [e.name, e.quantDtype, e.weightScaleShape, e.inputScale]), [
    ["0", "int8", [32], undefined],
    ["2", "int8", [8], undefined],
  ]);
  assert.equal(l2.inputScale, undefined);
  assert.deepEqual(l2.weightScale!.shape, [8]);

  s = quantizeModel(model, { mode: "w4", blockSize: 16 });
  assert.deepEqual(s.map((e) => [e.quantDtype, e.weightScaleShape]), [
    ["int4", [32, 1]],
    ["int4", [8, 2]],
  ]);
  assert.equal(l2.weightQuantDim, 1);
  assert.equal(l2.blockSize, 16);
  const blockScales = Array.from(
    { length: 16 },
    (_, b) => f32(absMax(w2.subarray(b * 16, b * 16 + 16)) / 7),
  );
  assert.deepEqual(Array.from(floats(l2.weightScale!)), blockScales);
  assert.equal(l2.inputScale, undefined);

  s = quantizeModel(model, { mode: "fp8", calibration: calib });
  assert.equal(l0.quantDtype, "float8e4m3");
  assert.equal(l0.weightQuantDim, 0);
  assert.equal(l0.blockSize, undefined);
  assert.equal(l0.inputScale!.item(), f32(calib.get("0")!.inputAmax! / 448));
  assert.equal(s[1].inputScale, f32(calib.get("2")!.inputAmax! / 448));
  const rows = Array.from(
    { length: 8 },
    (_, o) => f32(absMax(w2.subarray(o * 32, o * 32 + 32)) / 448),
  );
  assert.deepEqual(Array.from(floats(l2.weightScale!)), rows);
  const y = floats(model.forward(batches[0]));
  assert.ok(y.every(Number.isFinite));

  // w4 with the default block size 128.
  manualSeed(3);
  const wide = new Sequential(new Linear(256, 8));
  assert.deepEqual(quantizeModel(wide, { mode: "w4" })[0].weightScaleShape, [8, 2]);
});

Deno.test("quantizeModel: exclude by name, prefix and RegExp; amax overrides; zero amax", () => {
  manualSeed(8);
  const layers = Array.from({ length: 11 }, () => new Linear(4, 4));
  const model = new Chain({ blocks: new Sequential(...layers), lm_head: new Linear(4, 2) });
  const names = (ex: (string | RegExp)[]) =>
    quantizeModel(model, { mode: "w8", exclude: ex }).map((e) => e.name);
  const all = names([]);
  assert.equal(all.length, 12);
  assert.deepEqual(names(["lm_head"]), all.slice(0, 11));
  assert.deepEqual(names(["blocks"]), ["lm_head"]);
  // "blocks.1" is a name, not a string prefix: blocks.10 stays quantized.
  assert.ok(!names(["blocks.1"]).includes("blocks.1"));
  assert.ok(names(["blocks.1"]).includes("blocks.10"));
  assert.deepEqual(names([/^blocks\.\d$/g]), ["blocks.10", "lm_head"]);
  // Excluded layers keep their previous configuration (here w8 from the calls above).
  manualSeed(8);
  const fresh = new Chain({ a: new Linear(4, 4), b: new Linear(4, 4) });
  quantizeModel(fresh, { mode: "w8a8", exclude: ["b"], amax: { a: { inputAmax: 0 } } });
  const a = findModule(fresh, "a") as Linear;
  assert.equal(a.inputScale!.item(), 1, "zero amax gives scale 1");
  assert.equal((findModule(fresh, "b") as Linear).quantDtype, undefined);
  // amax fields override calibration's.
  const calib = new Map([["a", { inputAmax: 10, weightAmax: new Float32Array(4).fill(2) }]]);
  quantizeModel(fresh, {
    mode: "w8a8",
    exclude: ["b"],
    calibration: calib,
    amax: { a: { inputAmax: 2.54 } },
  });
  assert.equal(a.inputScale!.item(), f32(2.54 / 127));
  assert.deepEqual(Array.from(floats(a.weightScale!)), new Array(4).fill(f32(2 / 127)));
});

Deno.test("quantizeModel errors name the problem and the caller's line", () => {
  const { model } = smallModel();
  let line = thisLine() + 1;
  let bad: () => unknown = () => quantizeModel(model, { mode: "w8a8" });
  assertTqError(bad, {
    op: "quantizeModel",
    kind: "argument",
    includes: [
      "mode w8a8 quantizes inputs",
      "2 layer(s) have no input amax: 0, 2",
      "pass calibration",
    ],
    line,
  });
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "int8" as "w8" });
  assertTqError(bad, {
    op: "quantizeModel",
    includes: ["unknown quantization mode", "w8a8, w8, w4, fp8", '"int8"'],
    line,
  });
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "w8", exclude: ["0", 2 as unknown as string] });
  assertTqError(bad, { op: "quantizeModel", includes: ["argument 'exclude[1]'", "got 2"], line });
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "w8", exclude: "0" as unknown as string[] });
  assertTqError(bad, { op: "quantizeModel", includes: ["exclude must be an array"], line });
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "w4", blockSize: 0 });
  assertTqError(bad, {
    op: "quantizeModel",
    includes: ["blockSize must be a positive integer"],
    line,
  });
  const shortAmax = { "0": { weightAmax: new Float32Array(3) } };
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "w8", amax: shortAmax });
  assertTqError(bad, {
    op: "quantizeModel",
    kind: "shape",
    includes: ["layer 0", "32 values"],
    line,
  });
  const hf = new Map([["transformer.h.0.attn.c_attn", { inputAmax: 1 }]]);
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "fp8", calibration: hf });
  assertTqError(bad, {
    op: "quantizeModel",
    includes: ["transformer.h.0.attn.c_attn", "nameMap"],
    line,
  });
  // Names that match nothing are errors, not silently ignored.
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "w8", exclude: ["*lm_head*"] });
  assertTqError(bad, {
    op: "quantizeModel",
    includes: ["exclude patterns that match no Linear layer", '"*lm_head*"'],
    line,
  });
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "w8", amax: { "0": {}, "7": { inputAmax: 1 } } });
  assertTqError(bad, { op: "quantizeModel", includes: ["not Linear layers", '"7"'], line });
  // Values that are not all numbers (from JavaScript callers) fail before any layer changes.
  const text = { "0": { weightAmax: ["a"] as unknown as number[] } };
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "w8", amax: text as never });
  assertTqError(bad, {
    op: "quantizeModel",
    includes: ["weight amax of 0", '"a" at index 0'],
    line,
  });
  assert.equal((model.at(0) as Linear).quantDtype, undefined, "nothing changed on error");
  // An infinite weight has no weight scale, and a NaN one would become code 0 without a word:
  // the error names the layer and the row or block.
  const last = model.at(2) as Linear;
  const clean = Float32Array.from(floats(last.weight));
  const cases = [
    [3 * 32 + 17, -Infinity, "holds an infinite value", "row 3", "block 7"],
    [5 * 32 + 2, NaN, "holds NaN", "NaN in row 5", "NaN in block 10"],
  ] as const;
  for (const [at, value, what, row, block] of cases) {
    const w = clean.slice();
    w[at] = value;
    last.weight = tensor(w, { shape: [8, 32] });
    for (const [mode, where] of [["w8", row], ["w4", block]] as const) {
      line = thisLine() + 1;
      bad = () => quantizeModel(model, { mode, blockSize: 16 });
      assertTqError(bad, {
        op: "quantizeModel",
        kind: "argument",
        includes: [`weight of layer 2 ${what}`, where],
        line,
      });
    }
    assert.equal(last.quantDtype, undefined, "nothing changed on error");
  }
  // Through a calibration: its weight amax carry the NaN, which quantizeModel refuses.
  const calibration = calibrate(model, [randn([2, 16], { seed: 3 })], (m, x) => m.forward(x), {
    weightBlockSize: 16,
    onProgress: () => {},
  });
  assert.ok(Number.isNaN(calibration.get("2")!.weightAmax![5]));
  assert.ok(Number.isNaN(calibration.get("2")!.weightBlockAmax![10]));
  assert.ok(calibration.get("2")!.weightAmax!.every((v, i) => i === 5 || v > 0));
  for (const mode of ["w8a8", "w4"] as const) {
    line = thisLine() + 1;
    bad = () => quantizeModel(model, { mode, calibration, blockSize: 16 });
    assertTqError(bad, {
      op: "quantizeModel",
      includes: mode === "w4"
        ? ["weight block amax of 2", "NaN at index 10"]
        : ["weight amax of 2", "NaN at index 5"],
      line,
    });
  }
  assert.equal(last.quantDtype, undefined, "nothing changed on error");
});

Deno.test("weight amax functions: NaN where a row, block or column holds NaN", () => {
  const values = randomValues(4 * 6, 91);
  values[1 * 6 + 4] = NaN;
  const w = tensor(values, { shape: [4, 6] });
  const abs = values.map(Math.abs);
  const maxOf = (idx: number[]) => Math.fround(Math.max(...idx.map((i) => abs[i])));
  const rows = weightAmaxPerRow(w);
  const blocks = weightAmaxPerBlock(w, 4); // blocks of 4 and a last one of 2
  const cols = weightAmaxPerColumn(w);
  for (let r = 0; r < 4; r++) {
    const row = [0, 1, 2, 3, 4, 5].map((c) => r * 6 + c);
    if (r === 1) assert.ok(Number.isNaN(rows[r]));
    else assert.equal(rows[r], maxOf(row));
    assert.equal(blocks[r * 2], maxOf(row.slice(0, 4)));
    if (r === 1) assert.ok(Number.isNaN(blocks[r * 2 + 1]));
    else assert.equal(blocks[r * 2 + 1], maxOf(row.slice(4)));
  }
  for (let c = 0; c < 6; c++) {
    if (c === 4) assert.ok(Number.isNaN(cols[c]));
    else assert.equal(cols[c], maxOf([0, 1, 2, 3].map((r) => r * 6 + c)));
  }
});

Deno.test("quantizeModel w4: the amax option's weight fields come first; 1 value for all", () => {
  manualSeed(5);
  const model = new Sequential(new Linear(256, 4));
  const calibration = calibrate(model, [randn([3, 256], { seed: 1 })], (m, x) => m.forward(x), {
    weightBlockSize: 128,
    onProgress: () => {},
  });
  const fromCalibration = quantizeModel(model, { mode: "w4", calibration });
  const layer = model.at(0) as Linear;
  const blockAmax = calibration.get("0")!.weightBlockAmax!;
  assert.deepEqual(
    Array.from(floats(layer.weightScale!)),
    Array.from(blockAmax, (a) => f32(a / 7)),
  );
  assert.deepEqual(fromCalibration[0].weightScaleShape, [4, 2]);
  // amax given beside calibration's block amax: it wins (one value per block).
  const given = [0.5, 0.25, 1, 2, 4, 8, 0.125, 3];
  const amax = { "0": { weightAmax: Float32Array.from(given) } };
  quantizeModel(model, { mode: "w4", calibration, amax });
  assert.deepEqual(Array.from(floats(layer.weightScale!)), given.map((a) => f32(a / 7)));
  // One value stands for every block.
  quantizeModel(model, {
    mode: "w4",
    calibration,
    amax: { "0": { weightAmax: Float32Array.of(0.5) } },
  });
  assert.deepEqual(Array.from(floats(layer.weightScale!)), new Array(8).fill(f32(0.5 / 7)));
  // Per-row values (a per-channel calibration's) give the weights' own block amax.
  quantizeModel(model, { mode: "w4", amax: { "0": { weightAmax: Float32Array.of(9, 9, 9, 9) } } });
  assert.deepEqual(
    Array.from(floats(layer.weightScale!)),
    Array.from(blockAmax, (a) => f32(a / 7)),
  );
  const three = { "0": { weightAmax: Float32Array.of(1, 2, 3) } };
  const line = thisLine() + 1;
  const bad = () => quantizeModel(model, { mode: "w4", amax: three });
  assertTqError(bad, { op: "quantizeModel", kind: "shape", includes: ["8 block values"], line });
});

Deno.test("quantizeModel and calibrate: compressed layers fail before anything changes", () => {
  manualSeed(4101);
  const model = new Sequential(new Linear(12, 10), new Linear(10, 9), new Linear(9, 5));
  quantizeModel(model, { mode: "w8", exclude: ["0", "2"] });
  assert.deepEqual(compressWeights(model), ["1"]);
  const before = snapshot(model);
  // amax for every layer: no weight is read while planning, yet the compressed one is named.
  const amax = Object.fromEntries(
    ["0", "1", "2"].map((n, i) => [n, { inputAmax: 1 + i, weightAmax: Float32Array.of(0.5) }]),
  );
  for (const mode of ["w4", "w8a8", "fp8", "w8"] as const) {
    // Without amax too: the weights would be read (amaxOfWeights), and inputs lack ranges.
    for (const options of [{ mode, amax }, { mode }]) {
      const line = thisLine() + 1;
      const bad = () => quantizeModel(model, options);
      assertTqError(bad, {
        op: "quantizeModel",
        kind: "state",
        includes: [
          "layer '1' holds compressed weights (compressWeights); quantize before compressing",
          "argument 'model'",
        ],
        line,
      });
      assert.deepEqual(snapshot(model), before, `${mode}: nothing changed on error`);
    }
  }
  // calibrate fails before running a batch, and leaves no observer attached.
  let runs = 0;
  const x = tensor(randomValues(3 * 12, 4102), { shape: [3, 12] });
  const line = thisLine() + 1;
  const bad = () => calibrate(model, [x, x], (m, b) => void (runs++, m.forward(b)));
  assertTqError(bad, {
    op: "calibrate",
    kind: "state",
    includes: ["layer '1' holds compressed weights", "calibrate before compressing"],
    line,
  });
  assert.equal(runs, 0, "no batch ran");
  assert.ok(namedLinears(model).every(([, l]) => l.inputObserver === undefined));
  assert.deepEqual(snapshot(model), before);

  // Excluding the compressed layer is fine.
  const done = quantizeModel(model, { mode: "w8a8", amax, exclude: ["1"] });
  assert.deepEqual(done.map((e) => e.name), ["0", "2"]);
});

Deno.test("quantizeModel: amax beyond float32's range divide before rounding", () => {
  manualSeed(4111);
  const model = new Sequential(new Linear(6, 4), new Linear(4, 3));
  // Finite JavaScript numbers above float32's maximum (3.4e38); their scales fit float32.
  // JavaScript callers may pass weight amax as plain arrays, which can hold them.
  const huge = Array.from(randomValues(5, 4112, { low: 1, high: 9 }), (u) => u * 1e39);
  const plain = (v: number[]) => v as unknown as Float32Array;
  const info = quantizeModel(model, {
    mode: "fp8",
    amax: {
      "0": { inputAmax: huge[0], weightAmax: plain(huge.slice(1)) },
      "1": { inputAmax: 2.5 },
    },
  });
  assert.equal(info[0].inputScale, f32(huge[0] / 448));
  assert.equal(info[0].inputScale, scaleFromAmax(huge[0], "float8e4m3").item());
  const l0 = model.at(0) as Linear;
  assert.equal(l0.inputScale!.item(), f32(huge[0] / 448));
  assert.deepEqual(Array.from(floats(l0.weightScale!)), huge.slice(1).map((a) => f32(a / 448)));
  assert.ok(Array.from(floats(l0.weightScale!)).every((s) => s > 1e35 && s < Infinity));
  // Values within float32's range still round to float32 first (a float32 division).
  assert.equal(info[1].inputScale, f32(f32(2.5) / 448));

  // A quotient beyond float32's range too: an error naming the layer; nothing changes.
  const before = snapshot(model);
  const tooLarge = { "1": { weightAmax: plain([huge[0] * 1e3]) } };
  const line = thisLine() + 1;
  const bad = () => quantizeModel(model, { mode: "w8", amax: tooLarge });
  assertTqError(bad, {
    op: "quantizeModel",
    kind: "argument",
    includes: ["beyond float32's range", "argument 'weight amax of 1'", "amax / 127"],
    line,
  });
  assert.deepEqual(snapshot(model), before);
});

Deno.test("quantizeModel w4: weightBlockAmax must match the block layout", () => {
  manualSeed(4121);
  const model = new Sequential(new Linear(10, 3));
  const layer = model.at(0) as Linear;
  const x = tensor(randomValues(4 * 10, 4122), { shape: [4, 10] });
  const calib4 = calibrate(model, [x], forward, { weightBlockSize: 4 });
  // Blocks of 4 over 10 input features: 3 per row (the last 2 wide), 9 in all.
  const given = Float32Array.from(randomValues(9, 4123, { low: 0.1, high: 3 }));
  const expect = (amax: ArrayLike<number>) =>
    assert.deepEqual(Array.from(floats(layer.weightScale!)), Array.from(amax, (a) => f32(a / 7)));

  // Without weightBlockSize the size is implied; with it, it must agree.
  quantizeModel(model, { mode: "w4", blockSize: 4, amax: { "0": { weightBlockAmax: given } } });
  expect(given);
  const sized = { "0": { weightBlockAmax: given.map((a) => a * 2), weightBlockSize: 4 } };
  quantizeModel(model, { mode: "w4", blockSize: 4, calibration: calib4, amax: sized });
  expect(given.map((a) => a * 2));
  quantizeModel(model, { mode: "w4", blockSize: 4, calibration: calib4 });
  expect(calib4.get("0")!.weightBlockAmax!);

  const before = snapshot(model);
  // Another block size in amax: an error, even beside calibration's matching values.
  const other = { "0": { weightBlockAmax: new Float32Array(12).fill(1), weightBlockSize: 3 } };
  const withCalib = { mode: "w4", blockSize: 4, calibration: calib4 } as const;
  let line = thisLine() + 1;
  let bad = () => quantizeModel(model, { ...withCalib, amax: other });
  assertTqError(bad, {
    op: "quantizeModel",
    kind: "argument",
    includes: [
      "weight block amax of layer 0 (amax) are for blocks of 3 input features",
      "blockSize is 4",
      "argument 'weightBlockSize'",
    ],
    line,
  });
  // Calibration made for another block size: its block amax come from the weights, so they
  // are computed again for these blocks, as a fresh calibration would give them.
  const reused = new Sequential(new Linear(12, 3));
  const fresh = new Sequential(new Linear(12, 3));
  fresh.loadStateDict(reused.stateDict());
  const x12 = [randn([2, 12], { seed: 77 })];
  quantizeModel(reused, {
    mode: "w4",
    blockSize: 6,
    calibration: calibrate(reused, x12, forward, { weightBlockSize: 4 }),
  });
  quantizeModel(fresh, {
    mode: "w4",
    blockSize: 6,
    calibration: calibrate(fresh, x12, forward, { weightBlockSize: 6 }),
  });
  const scaleOf = (m: Sequential) => Array.from(floats((m.at(0) as Linear).weightScale!));
  assert.deepEqual(scaleOf(reused), scaleOf(fresh));
  // No weightBlockSize and a length that fits no layout of blockSize.
  const short = { "0": { weightBlockAmax: given.slice(0, 8) } };
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "w4", blockSize: 4, amax: short });
  assertTqError(bad, {
    op: "quantizeModel",
    kind: "shape",
    includes: ["9 values ([3, 3]) for blocks of 4", "got 8 values", "no weightBlockSize given"],
    line,
  });
  assert.deepEqual(snapshot(model), before, "nothing changed on error");
});

Deno.test("quantizeModel: input amax of the wrong type, or calibration without finite inputs", () => {
  manualSeed(4131);
  const model = new Sequential(new Linear(5, 4), new Linear(4, 2));
  const before = snapshot(model);
  const text = { "0": { inputAmax: "3" as unknown as number }, "1": { inputAmax: 1 } };
  let line = thisLine() + 1;
  let bad: () => unknown = () => quantizeModel(model, { mode: "w8a8", amax: text });
  assertTqError(bad, {
    op: "quantizeModel",
    kind: "argument",
    includes: ["input amax of layer 0 has the wrong type", 'got "3" (string)'],
    line,
  });
  // Inputs that are all NaN or infinite: no amax, but the values were seen.
  const special = [NaN, Infinity, -Infinity];
  const values = Float32Array.from(
    randomValues(10, 4132, { low: 0, high: 3 }),
    (u) => special[Math.floor(u)],
  );
  const calib = calibrate(model, [tensor(values, { shape: [2, 5] })], forward);
  assert.equal(calib.get("0")!.inputAmax, undefined);
  assert.equal(calib.get("0")!.inputCount, 10);
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "fp8", calibration: calib });
  const e = assertTqError(bad, {
    op: "quantizeModel",
    kind: "argument",
    includes: ["2 layer(s) saw no finite input values in calibration", ": 0, 1"],
    line,
  });
  assert.ok(!e.message.includes("no input amax"), e.message);
  // Both kinds at once: each named as what it is.
  calib.set("1", { weightAmax: calib.get("1")!.weightAmax });
  line = thisLine() + 1;
  bad = () => quantizeModel(model, { mode: "w8a8", calibration: calib });
  assertTqError(bad, {
    op: "quantizeModel",
    includes: ["1 layer(s) have no input amax: 1", "1 layer(s) saw no finite input values"],
    line,
  });
  assert.deepEqual(snapshot(model), before, "nothing changed on error");
});

// ---------------------------------------------------------------------------------------
// importAmax

const AMAX_FILE = new URL("fixtures/calibration_amax.safetensors", SHARED_DIR);
const haveFixture = filesExist(AMAX_FILE);

Deno.test({
  name: `importAmax reads the reference calibration file${
    haveFixture ? "" : " (skipped: fixtures/calibration_amax.safetensors not found)"
  }`,
  ignore: !haveFixture,
  fn: () => {
    using file = loadSafetensors(AMAX_FILE);
    const amax = importAmax(file);
    assert.equal(amax.size, 16);
    const expected = [0, 1, 2, 3].flatMap((b) =>
      ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"].map((l) => `transformer.h.${b}.${l}`)
    );
    assert.deepEqual([...amax.keys()].sort(), expected.sort());
    const widths: Record<string, number> = {
      "attn.c_attn": 768,
      "attn.c_proj": 256,
      "mlp.c_fc": 1024,
      "mlp.c_proj": 256,
    };
    for (const [name, entry] of amax) {
      assert.ok(entry.inputAmax! > 0, name);
      const kind = name.split(".").slice(-2).join(".");
      assert.equal(entry.weightAmax!.length, widths[kind], name);
      assert.ok(entry.weightAmax!.every((v) => v > 0), name);
      assert.equal(entry.inputAmax, file.get(`${name}.input_amax`).item());
    }
    const renamed = importAmax(file, {
      nameMap: (
        n,
      ) => (n.startsWith("transformer.h.0.") ? n.slice("transformer.".length) : undefined),
    });
    assert.deepEqual([...renamed.keys()], [
      "h.0.attn.c_attn",
      "h.0.attn.c_proj",
      "h.0.mlp.c_fc",
      "h.0.mlp.c_proj",
    ]);
  },
});

Deno.test("importAmax: ModelOpt quantizer names drive quantizeModel", () => {
  manualSeed(21);
  const model = new Chain({ a: new Chain({ b: new Linear(4, 2) }) });
  const amax = importAmax({
    "a.b.input_quantizer._amax": tensor([3.5]),
    "a.b.weight_quantizer._amax": tensor([[0.25], [0.5]]),
    "a.b.weight": tensor([1]),
  });
  assert.deepEqual([...amax.keys()], ["a.b"]);
  assert.equal(amax.get("a.b")!.inputAmax, 3.5);
  assert.deepEqual(Array.from(amax.get("a.b")!.weightAmax!), [0.25, 0.5]);
  const [info] = quantizeModel(model, { mode: "w8a8", amax });
  assert.equal(info.inputScale, f32(3.5 / 127));
  const layer = findModule(model, "a.b") as Linear;
  assert.deepEqual(Array.from(floats(layer.weightScale!)), [f32(0.25 / 127), f32(0.5 / 127)]);
  // Record nameMap; per-channel input amax.
  const mapped = importAmax({ "x.input_amax": tensor([1, 4, 2]) }, { nameMap: { x: "a.b" } });
  assert.equal(mapped.get("a.b")!.inputAmax, 4);
  assert.deepEqual(Array.from(mapped.get("a.b")!.inputChannelAmax!), [1, 4, 2]);

  let line = thisLine() + 1;
  let bad: () => unknown = () => importAmax({ "a.weight": tensor([1]) });
  assertTqError(bad, { op: "importAmax", includes: ["no amax tensors found", "a.weight"], line });
  line = thisLine() + 1;
  bad = () => importAmax({ "a.input_amax": tensor([-1]) });
  assertTqError(bad, { op: "importAmax", includes: ["non-negative", "-1 at index 0"], line });
  // NaN in a file marks corruption: refused like a negative or infinite amax (it became scale 1).
  line = thisLine() + 1;
  bad = () => importAmax({ "a.input_quantizer._amax": tensor([NaN]) });
  assertTqError(bad, { op: "importAmax", includes: ["finite", "NaN at index 0"], line });
  line = thisLine() + 1;
  bad = () => importAmax({ "a.input_amax": tensor([1], { dtype: "int32" }) });
  assertTqError(bad, { op: "importAmax", kind: "dtype", line });
  // An empty amax tensor is an error naming its key, not an amax of 0.
  for (const key of ["a.b.input_quantizer._amax", "a.b.weight_amax"]) {
    line = thisLine() + 1;
    bad = () => importAmax({ [key]: zeros([0]), "c.input_amax": tensor([2]) });
    assertTqError(bad, {
      op: "importAmax",
      kind: "shape",
      includes: ["holds no values", `argument '${key}'`, "got shape [0]"],
      line,
    });
  }
});

// ---------------------------------------------------------------------------------------
// SmoothQuant

Deno.test("smoothingScales: hand-computed factors", () => {
  const s = smoothingScales([4, 9, 0, 1], [1, 4, 2, 0], 0.5);
  assert.deepEqual(Array.from(s), [2, 1.5, 1, 1]);
  assert.deepEqual(Array.from(smoothingScales([8], [2], 1)), [8]);
  assert.deepEqual(Array.from(smoothingScales([8], [2], 0)), [0.5]);
});

Deno.test("smoothQuant keeps the float output and flattens the activation ranges", () => {
  manualSeed(77);
  const C = 32;
  const norm = new LayerNorm(C);
  // Outlier channels, as in trained transformers: a few large norm weights.
  const gamma = f32Values(C, 41, 0.3).map((v, j) => (j % 11 === 3 ? 25 + v : 1 + v));
  norm.weight = tensor(gamma);
  norm.bias = tensor(f32Values(C, 42, 0.1));
  const q = new Linear(C, 16);
  const k = new Linear(C, 24);
  const model = new Chain({ ln: norm, q });
  const run = (m: Chain, x: Tensor) => {
    const h = (findModule(m, "ln") as LayerNorm).forward(x);
    return [q.forward(h), k.forward(h)];
  };
  const container = new Chain({ block: model, k });
  const batches = [0, 1].map((i) => randn([3, 5, C], { seed: 300 + i, std: 2 }));
  const before = batches.map((x) => run(model, x).map(floats));
  const calib = calibrate(container, batches, (_m, x) => void run(model, x), { perChannel: true });
  const spread = (c: Float32Array) => {
    const sorted = Array.from(c).sort((a, b) => a - b);
    return sorted.at(-1)! / sorted[sorted.length >> 1];
  };
  const spreadBefore = spread(calib.get("block.q")!.inputChannelAmax!);
  const updated = smoothQuant(container, calib, {
    alpha: 0.5,
    pairs: [{ norm: "block.ln", linears: ["block.q", "k"] }],
  });
  batches.forEach((x, i) => {
    const after = run(model, x).map(floats);
    assertClose(after[0], before[i][0], { rtol: 1e-5, atol: 1e-5, message: "q output" });
    assertClose(after[1], before[i][1], { rtol: 1e-5, atol: 1e-5, message: "k output" });
  });
  const recal = calibrate(container, batches, (_m, x) => void run(model, x), { perChannel: true });
  const spreadAfter = spread(recal.get("block.q")!.inputChannelAmax!);
  assert.ok(spreadAfter < spreadBefore / 2, `spread ${spreadBefore} -> ${spreadAfter}`);
  // The returned calibration predicts the new ranges and weights.
  assertClose(updated.get("k")!.inputChannelAmax!, recal.get("k")!.inputChannelAmax!, {
    rtol: 1e-5,
  });
  assertClose([updated.get("block.q")!.inputAmax!], [recal.get("block.q")!.inputAmax!], {
    rtol: 1e-5,
  });
  assert.deepEqual(updated.get("k")!.weightAmax, recal.get("k")!.weightAmax);
  assert.notDeepEqual(calib.get("k")!.weightAmax, recal.get("k")!.weightAmax, "input not modified");
});

Deno.test("smoothQuant errors", () => {
  manualSeed(78);
  const model = new Chain({ ln: new LayerNorm(8), fc: new Linear(8, 4), out: new Linear(4, 4) });
  const plain = calibrate(model, [randn([2, 8], { seed: 1 })], forward);
  const pairs = [{ norm: "ln", linears: ["fc"] }];
  let line = thisLine() + 1;
  let bad: () => unknown = () => smoothQuant(model, plain, { pairs });
  assertTqError(bad, { op: "smoothQuant", includes: ["perChannel: true"], line });
  const calib = calibrate(model, [randn([2, 8], { seed: 1 })], forward, { perChannel: true });
  line = thisLine() + 1;
  bad = () => smoothQuant(model, calib, { pairs: [{ norm: "ln", linears: ["out"] }] });
  assertTqError(bad, {
    op: "smoothQuant",
    kind: "shape",
    includes: ["out does not read ln"],
    line,
  });
  line = thisLine() + 1;
  bad = () => smoothQuant(model, calib, { pairs: [{ norm: "ln2", linears: ["fc"] }] });
  assertTqError(bad, { op: "smoothQuant", includes: ["no module named ln2"], line });
  line = thisLine() + 1;
  bad = () => smoothQuant(model, calib, { pairs: [{ norm: "ln", linears: ["fc", "fc"] }] });
  assertTqError(bad, {
    op: "smoothQuant",
    kind: "argument",
    includes: ["fc is listed twice in the same pair", "argument 'pairs[0].linears'"],
    line,
  });
  line = thisLine() + 1;
  bad = () => smoothQuant(model, calib, { alpha: 1.5, pairs: [] });
  assertTqError(bad, { op: "smoothQuant", includes: ["alpha must be in [0, 1]"], line });
  // A misspelt key is an error, not the default alpha applied without a word.
  const lnWeight = () => model.stateDict()["ln.weight"].dataSync();
  const weightBefore = lnWeight();
  line = thisLine() + 1;
  bad = () => smoothQuant(model, calib, { alhpa: 0.9, pairs } as SmoothQuantOptions);
  assertTqError(bad, {
    op: "smoothQuant",
    kind: "argument",
    includes: ['unknown option "alhpa"', "argument 'options.alhpa'"],
    line,
  });
  const strayKey = { ...pairs[0], alpha: 0.9 };
  line = thisLine() + 1;
  bad = () => smoothQuant(model, calib, { pairs: [strayKey] });
  assertTqError(bad, {
    op: "smoothQuant",
    kind: "argument",
    includes: ['unknown option "alpha"', "argument 'pairs[0].alpha'"],
    line,
  });
  assert.deepEqual(lnWeight(), weightBefore, "nothing changed");
  quantizeModel(model, { mode: "w8" });
  line = thisLine() + 1;
  bad = () => smoothQuant(model, calib, { pairs: [{ norm: "ln", linears: ["fc"] }] });
  assertTqError(bad, { op: "smoothQuant", kind: "state", includes: ["already quantized"], line });
});

testOnDevices("w4 blocks that do not divide the input features: a shorter last block", (device) => {
  // 100 input features in blocks of 32: 32, 32, 32 and a last block of 4, as ONNX's
  // block-wise QuantizeLinear takes them.
  const [inp, out] = [100, 6];
  const layer = new Linear(inp, out, { bias: true });
  layer.weight = tensor(randomValues(out * inp, 71).map((v, i) => (i % 37 === 0 ? 4 * v : v)), {
    shape: [out, inp],
  });
  const model = new Sequential(layer);
  const x = tensor(randomValues(5 * inp, 72), { shape: [5, inp] });
  const calib = calibrate(model, [x], (m, b) => m.forward(b), { weightBlockSize: 32 });
  const block = calib.get("0")!.weightBlockAmax!;
  const w = layer.weight.dataSync() as Float32Array;
  // Block amax by hand, then the layer's scales: amax / 7 in float32.
  const expected: number[] = [];
  for (let r = 0; r < out; r++) {
    for (let b = 0; b < 4; b++) {
      let m = 0;
      for (let c = 32 * b; c < Math.min(inp, 32 * (b + 1)); c++) {
        m = Math.max(m, Math.abs(w[r * inp + c]));
      }
      expected.push(m);
    }
  }
  assert.deepEqual(Array.from(block), expected);
  const yFloat = model.forward(x).dataSync() as Float32Array;
  const [info] = quantizeModel(model, { mode: "w4", blockSize: 32, calibration: calib });
  model.to(device);
  assert.deepEqual(info.weightScaleShape, [out, 4]);
  const scale = layer.weightScale!.dataSync() as Float32Array;
  assert.deepEqual(Array.from(scale), expected.map((m) => Math.fround(m / 7)));
  // The forward multiplies by the dequantized weight: codes round(w / scale) within [-8, 7].
  const y = model.forward(x.to(device)).dataSync() as Float32Array;
  const xs = x.dataSync() as Float32Array;
  const bias = layer.bias!.dataSync() as Float32Array;
  let worst = 0, moved = 0;
  for (let i = 0; i < 5; i++) {
    for (let o = 0; o < out; o++) {
      let acc = 0;
      for (let c = 0; c < inp; c++) {
        const s = scale[o * 4 + Math.floor(c / 32)];
        const q = Math.min(7, Math.max(-8, roundHalfToEven(Math.fround(w[o * inp + c] / s))));
        acc += xs[i * inp + c] * Math.fround(q * s);
      }
      const ref = Math.fround(acc) + bias[o];
      worst = Math.max(worst, Math.abs(y[i * out + o] - ref) / (Math.abs(ref) + 1));
      moved = Math.max(moved, Math.abs(y[i * out + o] - yFloat[i * out + o]));
    }
  }
  assert.ok(worst < 1e-5, `w4 forward vs a float64 reference: ${worst}`);
  assert.ok(moved > 0, "quantization changed the output");
});

// ---------------------------------------------------------------------------------------
// argument checks found by fuzzing: clear TensorqErrors, never raw TypeErrors or silent results

Deno.test("observers check their sizes and options", () => {
  const o = (v: unknown) => v as never;
  const cases: [() => unknown, string, string, string[]][] = [
    [() => new PerChannelMaxObserver(2 ** 53), "PerChannelMaxObserver", "argument", [
      "'channels'",
      "9007199254740992",
    ]],
    [() => new PerChannelMaxObserver(2 ** 24 + 1), "PerChannelMaxObserver", "argument", [
      "16777216",
    ]],
    [() => new PerChannelMaxObserver(o(10n)), "PerChannelMaxObserver", "argument", ["10n"]],
    [() => new PerChannelMaxObserver(o(Symbol("c"))), "PerChannelMaxObserver", "argument", [
      "Symbol(c)",
    ]],
    [() => new HistogramObserver({ bins: 2 ** 53 }), "HistogramObserver", "argument", [
      "'bins'",
      "9007199254740992",
    ]],
    [() => new HistogramObserver({ bins: o(64n) }), "HistogramObserver", "argument", ["64n"]],
    [() => new HistogramObserver(o("percentile")), "HistogramObserver", "argument", [
      "plain object",
      '"percentile"',
    ]],
    [() => new HistogramObserver(o([])), "HistogramObserver", "argument", ["plain object"]],
    [() => new HistogramObserver(o({ bin: 64 })), "HistogramObserver", "argument", [
      "'options.bin'",
    ]],
    [() => new HistogramObserver({ entropy: o([]) }), "HistogramObserver", "argument", [
      "'entropy'",
    ]],
    [() => new HistogramObserver({ mse: o({ start: 3 }) }), "HistogramObserver", "argument", [
      "'mse.start'",
    ]],
    [() => new HistogramObserver({ method: o(Symbol("m")) }), "HistogramObserver", "argument", [
      "Symbol(m)",
    ]],
    [
      () => new HistogramObserver().entropy(o({ strides: 2 })),
      "HistogramObserver.entropy",
      "argument",
      ["'options.strides'"],
    ],
  ];
  for (const [fn, op, kind, includes] of cases) assertTqError(fn, { op, kind, includes });
  // null options are the defaults, as everywhere.
  assert.equal(new HistogramObserver(o(null)).bins, 2048);
  assert.equal(new PerChannelMaxObserver(2 ** 10).channels, 1024);
});

Deno.test("HistogramObserver refuses an amax search that would run for hours", () => {
  // 2^18 bins: entropy's default search visits about 2^35 bins, mse's 2^36.
  const bins = 2 ** 18;
  for (const method of ["entropy", "mse"] as const) {
    assertTqError(() => new HistogramObserver({ bins, method }), {
      op: "HistogramObserver",
      kind: "argument",
      includes: [`'${method}.stride'`, `${bins} bins`, "2^32"],
    });
  }
  // The percentile method needs no search; a search asked for later is checked then, and a
  // coarser stride brings it within reach.
  const h = new HistogramObserver({ bins, method: "percentile" });
  h.observe(Float32Array.from(randomValues(4096, 77)));
  for (const method of ["entropy", "mse"] as const) {
    assertTqError(() => h[method](), {
      op: `HistogramObserver.${method}`,
      kind: "argument",
      includes: ["'options.stride'"],
    });
    assertTqError(() => h[method]({ startBin: bins + 1 }), {
      op: `HistogramObserver.${method}`,
      includes: ["'options.startBin'"],
    });
    const amax = h[method]({ stride: 1024 });
    assert.ok(amax > 0 && amax <= h.range, `${method}: ${amax} in (0, ${h.range}]`);
  }
});

Deno.test("HistogramObserver.fromCounts checks counts, range and options", () => {
  const fromCounts = (counts: unknown, range: unknown, options?: unknown) => () =>
    HistogramObserver.fromCounts(counts as number[], range as number, options as never);
  const op = "HistogramObserver.fromCounts";
  const cases: [() => unknown, string[]][] = [
    [fromCounts(undefined, 1), ["'counts'", "got undefined"]],
    [fromCounts(null, 1), ["'counts'", "got null"]],
    [fromCounts(NaN, 1), ["'counts'", "got NaN"]],
    [fromCounts(-1, 1), ["'counts'", "got -1"]],
    [fromCounts(true, 1), ["'counts'", "got true"]],
    [fromCounts({}, 1), ["'counts'", "got Object"]],
    [fromCounts("1234", 1), ["'counts'", '"1234"']],
    [fromCounts(tensor([1, 2, 3]), 1), ["'counts'", "Tensor"]],
    [fromCounts(10n, 1), ["'counts'", "10n"]],
    [fromCounts(Symbol("c"), 1), ["'counts'", "Symbol(c)"]],
    [fromCounts([], 1), ["'counts.length'", "got 0"]],
    [fromCounts({ length: 2 ** 24 + 1 }, 1), ["'counts.length'", "16777217"]],
    [fromCounts({ length: 2 ** 53 }, 1), ["'counts'", "got Object"]],
    [fromCounts([1, -1, 2], 1), ["'counts'", "-1 at index 1"]],
    [fromCounts([1, "2", 3], 1), ["'counts'", '"2" at index 1']],
    [fromCounts([1, 2n, 3], 1), ["'counts'", "2n (a bigint) at index 1"]],
    [fromCounts([1, Symbol("s"), 3], 1), ["'counts'", "Symbol(s) at index 1"]],
    [fromCounts([1, 2], true), ["'range'", "got true"]],
    [fromCounts([1, 2], null), ["'range'", "got null"]],
    [fromCounts([1, 2], ""), ["'range'", 'got ""']],
    [fromCounts([1, 2], []), ["'range'", "got []"]],
    [fromCounts([1, 2], 5n), ["'range'", "5n"]],
    [fromCounts([1, 2], Symbol("r")), ["'range'", "Symbol(r)"]],
    [fromCounts([1, 2], -1), ["'range'", "got -1"]],
    [fromCounts([1, 2], Infinity), ["'range'", "got Infinity"]],
    [fromCounts([1, 2], 1, "percentile"), ["plain object", '"percentile"']],
    [fromCounts([1, 2], 1, { bins: 4 }), ["'options.bins'"]],
    [fromCounts([1, 2], 1, { method: "percentile", percentil: 99 }), ["'options.percentil'"]],
  ];
  for (const [fn, includes] of cases) assertTqError(fn, { op, kind: "argument", includes });
  // Arrays, typed arrays and a range of 0 (a histogram that saw only zeros) are fine.
  const z = new HistogramObserver({ bins: 4 });
  z.observe(new Float32Array([0, 0]));
  const back = HistogramObserver.fromCounts(z.counts, z.range, null as never);
  assert.deepEqual(Array.from(back.counts), [2, 0, 0, 0]);
  assert.equal(HistogramObserver.fromCounts(Float32Array.of(1, 3), 2).count, 4);
});

Deno.test("smoothingScales checks its amax lists and alpha", () => {
  const call = (a: unknown, w: unknown, alpha: unknown) => () =>
    smoothingScales(a as number[], w as number[], alpha as number);
  const cases: [() => unknown, string, string[]][] = [
    [call(undefined, [1], 0.5), "argument", ["'actAmax'", "got undefined"]],
    [call(null, [1], 0.5), "argument", ["'actAmax'", "got null"]],
    [call([1], undefined, 0.5), "argument", ["'weightAmax'", "got undefined"]],
    [call([1], null, 0.5), "argument", ["'weightAmax'", "got null"]],
    [call("str", [1, 2, 3], 0.5), "argument", ["'actAmax'", '"str"']],
    [call([1, 2, 3], "str", 0.5), "argument", ["'weightAmax'", '"str"']],
    [call({ length: 1, 0: 1 }, [1], 0.5), "argument", ["'actAmax'", "Object"]],
    [call([1, -2], [1, 1], 0.5), "argument", ["'actAmax'", "-2 at index 1"]],
    [call([1, 2], [1, "1"], 0.5), "argument", ["'weightAmax'", '"1" at index 1']],
    [call([1], [1n], 0.5), "argument", ["'weightAmax'", "1n (a bigint) at index 0"]],
    [call(BigInt64Array.of(1n), [1], 0.5), "argument", ["'actAmax'"]],
    [call([1, 2], [1], 0.5), "shape", ["'weightAmax'", "2 values", "1 values"]],
    [call([1], [1], 1.5), "argument", ["'alpha'", "got 1.5"]],
    [call([1], [1], -0.1), "argument", ["'alpha'"]],
    [call([1], [1], NaN), "argument", ["'alpha'", "got NaN"]],
    [call([1], [1], 1n), "argument", ["'alpha'", "1n"]],
    [call([1], [1], Symbol("a")), "argument", ["'alpha'", "Symbol(a)"]],
  ];
  for (const [fn, kind, includes] of cases) {
    assertTqError(fn, { op: "smoothingScales", kind, includes });
  }
  // Typed arrays, and non-finite amax (factor 1), still work.
  assert.deepEqual(
    Array.from(smoothingScales(Float32Array.of(4, NaN), Float64Array.of(1, 2), 0.5)),
    [2, 1],
  );
});

Deno.test("importAmax checks its options and nameMap", () => {
  const tensors = { "x.input_amax": tensor([2]) };
  const cases: [unknown, string[]][] = [
    ["nameMap", ["plain object", '"nameMap"']],
    [[], ["plain object", "[]"]],
    [{ namemap: {} }, ["'options.namemap'"]],
    [{ nameMap: null }, ["'options.nameMap'", "got null"]],
    [{ nameMap: [] }, ["'options.nameMap'", "got []"]],
    [{ nameMap: [["x", "y"]] }, ["'options.nameMap'"]],
    [{ nameMap: new Map([["x", "y"]]) }, ["'options.nameMap'", "got Map"]],
    [{ nameMap: "x" }, ["'options.nameMap'", 'got "x"']],
    [{ nameMap: 1n }, ["'options.nameMap'", "1n"]],
    [{ nameMap: Symbol("n") }, ["'options.nameMap'", "Symbol(n)"]],
  ];
  for (const [options, includes] of cases) {
    assertTqError(() => importAmax(tensors, options as never), {
      op: "importAmax",
      kind: "argument",
      includes,
    });
  }
  // undefined and null options, and an undefined nameMap, mean no renaming.
  for (const options of [undefined, null, {}, { nameMap: undefined }]) {
    assert.deepEqual([...importAmax(tensors, options as never).keys()], ["x"]);
  }
});
