/**
 * The fused `attention` op against float64 references on seeded random non-zero inputs, and
 * against the unfused chain of the library's own ops; its errors; the CUDA launch plans
 * (checked here on the CPU: every kernel a plan names exists in the PTX); and, on a GPU, the
 * GPT-2-small shapes against the CPU backend.
 *
 * Tolerances, as norm-relative errors ‖out − ref‖ / ‖ref‖ over the output, against a float64
 * reference computed from the (already rounded) inputs: float32 1e-5, float16 2e-3, bfloat16
 * 1e-2 (the GPU computes in float32 and, for 16-bit inputs, rounds the softmax weights to the
 * input's type before multiplying them with v; the CPU computes in float64; both round the
 * output once). Rows with no visible key must be exactly zero.
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { type DType, dtypeInfo } from "../lib/dtype.ts";
import { ptx as attentionPtx } from "../kernels/ptx/attention.ts";
import { type AttentionProblem, planAttention } from "../lib/backends/cuda/attention.ts";
import { assertTqError, randomValues, testOnDevices, testOnGpu, thisLine } from "./helpers.ts";

const FLOATS: DType[] = ["float32", "float16", "bfloat16"];
const TOL: Record<string, number> = { float32: 1e-5, float16: 2e-3, bfloat16: 1e-2 };

/** Sizes of one attention call: q [...lead, T, D], k [...lead, S, D], v [...lead, S, Dv]. */
interface Sizes {
  lead: number[];
  t: number;
  s: number;
  d: number;
  dv: number;
}

interface RefOptions {
  scale: number;
  causal: boolean;
  /** The kvLength value as given (clamped here), or undefined for all keys. */
  kvLength?: number;
}

function prod(xs: number[]): number {
  return xs.reduce((a, b) => a * b, 1);
}

/** Keys 0 .. result-1 are visible to query i (the rule of lib/ops/attention.ts). */
function visibleKeys(i: number, sz: Sizes, o: RefOptions): number {
  const len = Math.min(Math.max(o.kvLength ?? sz.s, 0), sz.s);
  return o.causal ? Math.min(len, i + len - sz.t + 1) : len;
}

/**
 * Float64 attention of the heads in `heads` (flat batch·head indices; default all), written
 * at their places in a [BH, T, Dv] array (other heads left 0).
 */
function refAttention(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  sz: Sizes,
  o: RefOptions,
  heads?: number[],
): Float64Array {
  const { t, s, d, dv } = sz;
  const bh = prod(sz.lead);
  const out = new Float64Array(bh * t * dv);
  for (const h of heads ?? Array.from({ length: bh }, (_, i) => i)) {
    for (let i = 0; i < t; i++) {
      const visible = visibleKeys(i, sz, o);
      if (visible <= 0) continue;
      const scores = new Float64Array(visible);
      for (let j = 0; j < visible; j++) {
        let dot = 0;
        for (let e = 0; e < d; e++) dot += q[(h * t + i) * d + e] * k[(h * s + j) * d + e];
        scores[j] = dot * o.scale;
      }
      const max = Math.max(...scores);
      let total = 0;
      for (let j = 0; j < visible; j++) total += scores[j] = Math.exp(scores[j] - max);
      for (let e = 0; e < dv; e++) {
        let acc = 0;
        for (let j = 0; j < visible; j++) acc += scores[j] * v[(h * s + j) * dv + e];
        out[(h * t + i) * dv + e] = acc / total;
      }
    }
  }
  return out;
}

/** ‖a − e‖ / ‖e‖ over the elements of rows `[BH·T]` selected by `rows` (default all). */
function normError(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  dv: number,
  rows?: (row: number) => boolean,
): number {
  assert.equal(actual.length, expected.length, "output length");
  let diff = 0;
  let ref = 0;
  for (let i = 0; i < actual.length; i++) {
    if (rows && !rows(Math.floor(i / dv))) continue;
    diff += (actual[i] - expected[i]) ** 2;
    ref += expected[i] ** 2;
  }
  return ref === 0 ? Math.sqrt(diff) : Math.sqrt(diff / ref);
}

function values(t: tq.Tensor): Float32Array {
  return t.dataSync() as Float32Array;
}

/** Seeded random q, k, v (scores of order 1 at the default scale). */
function makeInputs(sz: Sizes, dtype: DType, device: string, seed: number) {
  const { lead, t, s, d, dv } = sz;
  const make = (shape: number[], offset: number) =>
    tq.tensor(randomValues(prod(shape), seed + offset), { shape, dtype, device });
  const q = make([...lead, t, d], 0);
  const k = make([...lead, s, d], 1);
  const v = make([...lead, s, dv], 2);
  return { q, k, v, qs: values(q), ks: values(k), vs: values(v) };
}

function kvTensor(n: number, device: string): tq.Tensor {
  return tq.tensor([n], { dtype: "int32", device });
}

/** Checks attention(q, k, v) against the float64 reference, and that hidden rows are zeros. */
function checkCase(
  sz: Sizes,
  dtype: DType,
  device: string,
  seed: number,
  causal: boolean,
  kvLength?: number,
  scale?: number,
): void {
  const { q, k, v, qs, ks, vs } = makeInputs(sz, dtype, device, seed);
  const options: tq.AttentionOptions = { causal };
  if (kvLength !== undefined) options.kvLength = kvTensor(kvLength, device);
  if (scale !== undefined) options.scale = scale;
  const y = tq.attention(q, k, v, options);
  const what = `${dtype} ${JSON.stringify(sz)} causal ${causal} kvLength ${kvLength}`;
  assert.equal(y.dtype, dtype, what);
  assert.deepEqual(y.shape, [...sz.lead, sz.t, sz.dv], what);
  const ref = refAttention(qs, ks, vs, sz, {
    scale: scale ?? 1 / Math.sqrt(sz.d),
    causal,
    kvLength,
  });
  const out = values(y);
  const err = normError(out, ref, sz.dv);
  assert.ok(err <= TOL[dtype], `${what}: norm-relative error ${err} > ${TOL[dtype]}`);
  // Rows that see no key are exactly zero.
  for (let row = 0; row < prod(sz.lead) * sz.t; row++) {
    if (visibleKeys(row % sz.t, sz, { scale: 1, causal, kvLength }) > 0) continue;
    for (let e = 0; e < sz.dv; e++) {
      assert.equal(out[row * sz.dv + e], 0, `${what}: row ${row} sees no key`);
    }
  }
}

testOnDevices("attention matches a float64 reference (prefill shapes)", (device) => {
  const cases: [Sizes, boolean][] = [
    [{ lead: [2, 3], t: 77, s: 77, d: 64, dv: 64 }, true],
    [{ lead: [2, 3], t: 77, s: 77, d: 64, dv: 64 }, false],
    [{ lead: [1], t: 130, s: 130, d: 64, dv: 64 }, true],
    [{ lead: [2, 3], t: 77, s: 90, d: 128, dv: 128 }, true],
    [{ lead: [1], t: 40, s: 33, d: 40, dv: 24 }, true],
    [{ lead: [2], t: 21, s: 12, d: 64, dv: 64 }, true],
    [{ lead: [2, 1, 2], t: 3, s: 19, d: 128, dv: 128 }, false],
  ];
  for (const dtype of FLOATS) {
    cases.forEach(([sz, causal], i) => checkCase(sz, dtype, device, 100 + 10 * i, causal));
  }
});

testOnDevices("attention with kvLength: decode, static cache and clamping", (device) => {
  for (const dtype of FLOATS) {
    // One query over a cache of 37 slots: 0 (nothing visible), 1, mid, all, and clamped.
    const decode: Sizes = { lead: [1], t: 1, s: 37, d: 64, dv: 64 };
    for (const len of [0, 1, 20, 37, -5, 100]) {
      checkCase(decode, dtype, device, 200, true, len);
      checkCase(decode, dtype, device, 201, false, len);
    }
    const heads: Sizes = { lead: [2, 3], t: 1, s: 37, d: 128, dv: 128 };
    for (const len of [1, 20, 37]) checkCase(heads, dtype, device, 210, true, len);
    // Several new queries at the end of the valid keys; the first T − L see nothing.
    const chunk: Sizes = { lead: [2, 3], t: 5, s: 37, d: 64, dv: 64 };
    for (const len of [3, 20, 37]) checkCase(chunk, dtype, device, 220, true, len);
    const prefill: Sizes = { lead: [2, 3], t: 77, s: 77, d: 64, dv: 64 };
    for (const len of [0, 50, 77]) {
      checkCase(prefill, dtype, device, 230, true, len);
      checkCase(prefill, dtype, device, 231, false, len);
    }
    const generic: Sizes = { lead: [2], t: 9, s: 23, d: 40, dv: 40 };
    for (const len of [4, 23]) checkCase(generic, dtype, device, 240, true, len);
  }
});

Deno.test("cpu: a decode step's attention equals its row of the prefill's, bit for bit", () => {
  // The CPU sums every score and weighted sum in key order, one query or a band of them: a
  // query attending alone to the keys up to its own gives the causal prefill's row exactly
  // (40 queries: one band of 32 and a shorter one; strided keys and values).
  const [heads, t, d] = [3, 40, 16];
  const q = tq.randn([1, heads, t, d], { seed: 301 });
  const kv = tq.randn([1, t, 2, heads, d], { seed: 302 });
  const k = kv.slice([null, null, 0]).permute([0, 2, 1, 3]);
  const v = kv.slice([null, null, 1]).permute([0, 2, 1, 3]);
  const prefill = tq.attention(q, k, v, { causal: true }).dataSync() as Float32Array;
  for (const i of [0, 1, 17, 31, 32, 39]) {
    const row = q.slice([null, null, [i, i + 1]]);
    const keys = (x: tq.Tensor) => x.slice([null, null, [0, i + 1]]);
    for (const causal of [true, false]) {
      const step = tq.attention(row, keys(k), keys(v), { causal }).dataSync() as Float32Array;
      for (let h = 0; h < heads; h++) {
        const want = prefill.subarray((h * t + i) * d, (h * t + i + 1) * d);
        assert.deepEqual(step.subarray(h * d, (h + 1) * d), want, `query ${i}, head ${h}`);
      }
    }
  }
});

testOnDevices("attention honours an explicit scale, negative included", (device) => {
  const sz: Sizes = { lead: [1, 2], t: 9, s: 9, d: 64, dv: 64 };
  for (const dtype of FLOATS) {
    checkCase(sz, dtype, device, 300, true, undefined, 0.3);
    checkCase(sz, dtype, device, 301, false, undefined, -0.2);
    checkCase(sz, dtype, device, 302, false, undefined, 0);
  }
});

testOnDevices("attention equals softmax(where(mask, q·kᵀ·scale, min))·v", (device) => {
  for (const [t, s] of [[77, 77], [5, 12]]) {
    const sz: Sizes = { lead: [2, 3], t, s, d: 64, dv: 64 };
    const { q, k, v } = makeInputs(sz, "float32", device, 400 + t);
    const scale = 1 / 8;
    const scores = tq.matmul(q, tq.transpose(k, -2, -1)).mul(scale);
    const mask = tq.causalMask(t, s, { device });
    const p = tq.softmax(tq.where(mask, scores, dtypeInfo("float32").min), -1);
    const expected = values(tq.matmul(p, v));
    const actual = values(tq.attention(q, k, v, { causal: true }));
    const err = normError(actual, expected, 64);
    assert.ok(err <= 1e-5, `T ${t} S ${s}: norm-relative error ${err}`);
  }
});

testOnDevices("attention on hand-computed inputs and rows with no visible key", (device) => {
  // Scores 0 and ln 3: weights 1/4 and 3/4 of the values 4 and 8.
  const q = tq.tensor([1], { shape: [1, 1, 1], device });
  const k = tq.tensor([0, Math.log(3)], { shape: [1, 2, 1], device });
  const v = tq.tensor([4, 8], { shape: [1, 2, 1], device });
  const y = tq.attention(q, k, v, { scale: 1 });
  assert.ok(Math.abs(y.item() - 7) < 1e-6, `got ${y.item()}`);
  // kvLength 0: nothing is visible anywhere.
  const sz: Sizes = { lead: [2], t: 4, s: 4, d: 64, dv: 64 };
  const inputs = makeInputs(sz, "float32", device, 500);
  const zero = tq.attention(inputs.q, inputs.k, inputs.v, { kvLength: kvTensor(0, device) });
  assert.ok(values(zero).every((x) => x === 0));
  // Causal with L = 2 of 4 queries: queries 0 and 1 see nothing, 2 sees key 0, 3 keys 0-1.
  const y2 = values(
    tq.attention(inputs.q, inputs.k, inputs.v, { causal: true, kvLength: kvTensor(2, device) }),
  );
  for (let h = 0; h < 2; h++) {
    for (let i = 0; i < 4; i++) {
      const row = Array.from(y2.subarray((h * 4 + i) * 64, (h * 4 + i + 1) * 64));
      if (i < 2) assert.ok(row.every((x) => x === 0), `head ${h} query ${i}`);
      // One visible key: the output is that key's value row.
      if (i === 2) {
        const v0 = Array.from(inputs.vs.subarray(h * 4 * 64, (h * 4 + 1) * 64));
        assert.ok(row.every((x, e) => Math.abs(x - v0[e]) <= 1e-6 * (1 + Math.abs(v0[e]))));
      }
    }
  }
});

/** [batch·heads, T, S, D] and the dtypes of a non-finite case. */
type EdgeCase = [number, number, number, number, DType[]];

/**
 * Causal attention of random q, k, v (`seed`, `seed + 1`, `seed + 2`) after `poison` edits
 * them (flat `[bh, T | S, D]` values), on each case and dtype; `expectNaN(h, i, e)` says which
 * output elements must be NaN, and every other one must be finite.
 */
function checkNonFiniteRows(
  device: string,
  cases: EdgeCase[],
  seed: number,
  poison: (
    q: Float64Array,
    k: Float64Array,
    v: Float64Array,
    t: number,
    s: number,
    d: number,
  ) => void,
  expectNaN: (h: number, i: number, e: number, t: number, s: number) => boolean,
): void {
  for (const [bh, t, s, d, dtypes] of cases) {
    for (const dtype of dtypes) {
      const q = randomValues(bh * t * d, seed);
      const k = randomValues(bh * s * d, seed + 1);
      const v = randomValues(bh * s * d, seed + 2);
      poison(q, k, v, t, s, d);
      const make = (x: Float64Array, n: number) =>
        tq.tensor(x, { shape: [bh, n, d], device }).cast(dtype);
      const out = tq.attention(make(q, t), make(k, s), make(v, s), { causal: true })
        .cast("float32").dataSync() as Float32Array;
      for (let h = 0; h < bh; h++) {
        for (let i = 0; i < t; i++) {
          const row = Array.from(out.subarray((h * t + i) * d, (h * t + i + 1) * d));
          const ok = row.every((x, e) =>
            expectNaN(h, i, e, t, s) ? Number.isNaN(x) : Number.isFinite(x)
          );
          assert.ok(
            ok,
            `${dtype} [${bh}, ${t}, ${s}, ${d}] head ${h} query ${i}: ${row.slice(0, 5)}`,
          );
        }
      }
    }
  }
}

testOnDevices("attention: a NaN query or visible key makes its rows NaN, not zeros", (device) => {
  // The kernel each case reaches on a GPU: flash (16-bit, D 64), decode (T 1, keys over several
  // splits), generic (float32, D 40). Head 0: query T/2 holds a NaN; head 1: key S − 3 does.
  const cases: EdgeCase[] = [
    [2, 77, 77, 64, ["float16", "bfloat16"]],
    [2, 1, 1024, 64, FLOATS],
    [2, 9, 23, 40, FLOATS],
  ];
  checkNonFiniteRows(device, cases, 301, (q, k, _v, t, s, d) => {
    q[Math.floor(t / 2) * d + 5] = NaN;
    k[(s + s - 3) * d + 7] = NaN;
  }, (h, i, _e, t, s) => h === 0 ? i === Math.floor(t / 2) : i + s - t >= s - 3);
});

testOnDevices("attention: a row whose visible scores are all −∞ is NaN, not zeros", (device) => {
  // Flash, decode over several splits, decode in one split, generic. In head 0, the last query
  // is (+∞, 0, …) and every key's first feature is negative: each score it sees is −∞.
  const cases: EdgeCase[] = [
    [2, 77, 77, 64, ["float16", "bfloat16"]],
    [2, 1, 1024, 64, FLOATS],
    [2, 4, 40, 128, FLOATS],
    [2, 9, 23, 40, FLOATS],
  ];
  checkNonFiniteRows(device, cases, 311, (q, k, _v, t, s, d) => {
    for (let e = 0; e < d; e++) q[(t - 1) * d + e] = e === 0 ? Infinity : 0;
    for (let j = 0; j < s; j++) k[j * d] = -0.25 - Math.abs(k[j * d]);
  }, (h, i, _e, t) => h === 0 && i === t - 1);
});

testOnDevices(
  "attention: a NaN value at a key hidden by causality stays out of the rows",
  (device) => {
    // Several queries over a cache (the decode kernels on a GPU, T <= 8) and the generic kernel
    // (D 40). The last key's value is NaN in column 3 of every head: only the last query sees it.
    const cases: EdgeCase[] = [
      [2, 4, 40, 64, FLOATS],
      [2, 8, 300, 128, FLOATS],
      [2, 5, 23, 40, FLOATS],
    ];
    checkNonFiniteRows(device, cases, 321, (_q, _k, v, _t, s, d) => {
      for (let h = 0; h < 2; h++) v[(h * s + s - 1) * d + 3] = NaN;
    }, (_h, i, e, t) => i === t - 1 && e === 3);
  },
);

testOnDevices("attention with empty dims", (device) => {
  const z = (shape: number[]) => tq.zeros(shape, { device });
  assert.deepEqual(tq.attention(z([2, 0, 8]), z([2, 3, 8]), z([2, 3, 4])).shape, [2, 0, 4]);
  assert.deepEqual(tq.attention(z([0, 2, 8]), z([0, 3, 8]), z([0, 3, 4])).shape, [0, 2, 4]);
  // No keys: every query outputs zeros.
  const q = tq.tensor(randomValues(16, 600), { shape: [1, 2, 8], device });
  const y = tq.attention(q, z([1, 0, 8]), z([1, 0, 4]), { causal: true });
  assert.deepEqual(y.shape, [1, 2, 4]);
  assert.deepEqual(Array.from(values(y)), new Array(8).fill(0));
});

testOnDevices("attention in a compiled function reads kvLength when it runs", (device) => {
  const sz: Sizes = { lead: [1, 2], t: 1, s: 300, d: 64, dv: 64 };
  for (const dtype of ["float32", "float16"] as DType[]) {
    const { q, k, v, qs, ks, vs } = makeInputs(sz, dtype, device, 700);
    const exe = tq.compile(
      (q, k, v, len) => tq.attention(q, k, v, { causal: true, kvLength: len }),
      {
        args: [
          tq.inputInfo([1, 2, 1, 64], dtype),
          tq.inputInfo([1, 2, 300, 64], dtype),
          tq.inputInfo([1, 2, 300, 64], dtype),
          tq.inputInfo([1], "int32"),
        ],
        device,
      },
    );
    // On a GPU the keys are split over several CTAs: replays reuse the split counters.
    for (const len of [3, 300, 129, 0, 77]) {
      const y = exe(q, k, v, kvTensor(len, device)) as tq.Tensor;
      const ref = refAttention(qs, ks, vs, sz, { scale: 1 / 8, causal: true, kvLength: len });
      const err = normError(values(y), ref, 64);
      assert.ok(err <= TOL[dtype], `${dtype} kvLength ${len}: error ${err}`);
    }
    exe.dispose();
  }
});

testOnDevices("attention errors name the argument and the caller's line", (device) => {
  const x = (shape: number[], dtype: DType = "float32") => tq.zeros(shape, { dtype, device });
  const q = x([2, 3, 5, 8]);
  const k = x([2, 3, 7, 8]);
  const v = x([2, 3, 7, 4]);
  let line = thisLine() + 1;
  let call = () => tq.attention(x([5, 8]), x([7, 8]), x([7, 4]));
  assertTqError(call, {
    op: "attention",
    kind: "shape",
    includes: ["'q'", "rank 3 or more", "[5, 8]"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.attention(q, x([2, 3, 7, 6]), v);
  assertTqError(call, {
    op: "attention",
    kind: "shape",
    includes: ["'k'", "[2, 3, 7, 8]", "got shape [2, 3, 7, 6]"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.attention(q, x([1, 3, 7, 8]), v);
  assertTqError(call, {
    op: "attention",
    kind: "shape",
    includes: ["'k'", "[2, 3, S, 8]", "got shape [1, 3, 7, 8]"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.attention(q, k, x([2, 2, 7, 4]));
  assertTqError(call, {
    op: "attention",
    kind: "shape",
    includes: ["'v'", "[2, 3, 7, Dv]", "got shape [2, 2, 7, 4]"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.attention(q, k, x([2, 3, 6, 4]));
  assertTqError(call, {
    op: "attention",
    kind: "shape",
    includes: ["'v'", "[2, 3, 7, 4]", "got shape [2, 3, 6, 4]"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.attention(q, x([2, 3, 7, 8], "float16"), v);
  assertTqError(call, {
    op: "attention",
    kind: "dtype",
    includes: ["'k'", "float16", "float32"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.attention(x([2, 3, 5, 8], "int32"), x([2, 3, 7, 8], "int32"), v);
  assertTqError(call, { op: "attention", kind: "dtype", includes: ["'q'", "int32"], line });
  line = thisLine() + 1;
  call = () => tq.attention(q, k, v, { kvLength: x([1]) });
  assertTqError(call, {
    op: "attention",
    kind: "dtype",
    includes: ["'kvLength'", "int32", "float32"],
    line,
  });
  line = thisLine() + 1;
  call = () => tq.attention(q, k, v, { kvLength: x([2], "int32") });
  assertTqError(call, {
    op: "attention",
    kind: "shape",
    includes: ["'kvLength'", "[1]", "got shape [2]"],
    line,
  });
  for (const scale of [NaN, Infinity, "2" as unknown as number]) {
    line = thisLine() + 1;
    call = () => tq.attention(q, k, v, { scale });
    assertTqError(call, { op: "attention", kind: "argument", includes: ["'scale'"], line });
  }
  line = thisLine() + 1;
  call = () => tq.attention(q, k, v, { causal: 1 as unknown as boolean });
  assertTqError(call, { op: "attention", kind: "argument", includes: ["'causal'"], line });
  line = thisLine() + 1;
  call = () => tq.attention(q, null as unknown as tq.Tensor, v);
  assertTqError(call, { op: "attention", kind: "argument", includes: ["'k'", "null"], line });
});

// ---------------------------------------------------------------------------------------------
// CUDA launch plans (run everywhere)

Deno.test("attention CUDA plans pick the intended kernels, all present in the PTX", () => {
  const sm = 132;
  const problem = (
    dtype: DType,
    heads: number,
    queries: number,
    keys: number,
    dim: number,
    valueDim = dim,
  ): AttentionProblem => ({ dtype, heads, queries, keys, dim, valueDim });
  // GPT-2-small prefill: flash, 8 query tiles per head, 5 tiles of shared memory.
  const prefill = planAttention(problem("float16", 96, 512, 512, 64), sm);
  assert.equal(prefill.name, "attention_flash_f16_d64");
  assert.deepEqual(prefill.grid, [96 * 8, 1, 1]);
  assert.equal(prefill.sharedBytes, 5 * 64 * 64 * 2);
  // GPT-2-small decode: 12 heads spread over 16 splits of 64 keys, with scratch.
  const decode = planAttention(problem("float16", 12, 1, 1024, 64), sm);
  assert.equal(decode.name, "attention_decode_f16_d64_t1");
  assert.equal(decode.perHead, 16);
  assert.deepEqual(decode.grid, [12 * 16, 1, 1]);
  assert.equal(decode.scratchWords, 12 * 16 * 66);
  // A short cache needs one split and no scratch.
  const short = planAttention(problem("bfloat16", 12, 3, 32, 128), sm);
  assert.equal(short.name, "attention_decode_bf16_d128_t4");
  assert.equal(short.perHead, 1);
  assert.equal(short.scratchWords, 0);
  assert.equal(planAttention(problem("float32", 6, 77, 77, 64), sm).kind, "generic");
  assert.equal(
    planAttention(problem("float16", 6, 77, 77, 40), sm).name,
    "attention_generic_f16_v64",
  );
  assert.throws(() => planAttention(problem("float32", 1, 9, 9, 64, 300), sm), tq.TensorqError);

  // Every kernel a plan can name is in both PTX flavours.
  const names = new Set<string>();
  for (const dtype of FLOATS) {
    for (const [d, dv] of [[64, 64], [128, 128], [40, 40], [64, 200], [16, 100], [256, 256]]) {
      for (const t of [1, 2, 4, 5, 8, 9, 512]) {
        for (const s of [0, 1, 37, 1024, 100000]) {
          names.add(planAttention(problem(dtype, 12, t, s, d, dv), sm).name);
        }
      }
    }
  }
  assert.equal(names.size, 4 + 18 + 9);
  for (const name of names) {
    for (const ptx of [attentionPtx.ptxCompute80, attentionPtx.ptxSm90a]) {
      assert.ok(ptx.includes(`.entry ${name}(`), `${name} missing from the PTX`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// GPU: GPT-2-small shapes against the CPU backend

/** Runs attention on cuda and checks heads `heads` against the float64 reference. */
function gpuCase(
  sz: Sizes,
  dtype: DType,
  causal: boolean,
  kvLength: number | undefined,
  heads: number[] | undefined,
  seed: number,
): void {
  const { q, k, v, qs, ks, vs } = makeInputs(sz, dtype, "cuda", seed);
  const options: tq.AttentionOptions = { causal };
  if (kvLength !== undefined) options.kvLength = kvTensor(kvLength, "cuda");
  const out = values(tq.attention(q, k, v, options));
  const ref = refAttention(qs, ks, vs, sz, { scale: 1 / Math.sqrt(sz.d), causal, kvLength }, heads);
  const selected = heads ? new Set(heads) : undefined;
  const err = normError(
    out,
    ref,
    sz.dv,
    selected ? (row) => selected.has(Math.floor(row / sz.t)) : undefined,
  );
  const what = `${dtype} ${JSON.stringify(sz)} causal ${causal} kvLength ${kvLength}`;
  assert.ok(err <= TOL[dtype], `${what}: norm-relative error ${err}`);
}

testOnGpu("attention at GPT-2-small shapes matches the CPU", () => {
  // Prefill: B=1, H=2 fully; B=8, H=12 on the first and last heads (all of it runs).
  gpuCase(
    { lead: [1, 2], t: 512, s: 512, d: 64, dv: 64 },
    "float16",
    true,
    undefined,
    undefined,
    800,
  );
  gpuCase(
    { lead: [8, 12], t: 512, s: 512, d: 64, dv: 64 },
    "float16",
    true,
    undefined,
    [0, 95],
    801,
  );
  gpuCase({ lead: [1, 2], t: 512, s: 512, d: 64, dv: 64 }, "bfloat16", false, 300, undefined, 802);
  gpuCase({ lead: [1, 2], t: 300, s: 300, d: 128, dv: 128 }, "float16", true, 257, undefined, 803);
  // Decode: one query over a 1024-slot cache, split over many CTAs.
  for (const len of [1024, 1000, 65, 1, 0]) {
    gpuCase({ lead: [1, 12], t: 1, s: 1024, d: 64, dv: 64 }, "float16", true, len, undefined, 810);
  }
  gpuCase({ lead: [1, 12], t: 1, s: 1024, d: 64, dv: 64 }, "bfloat16", true, 777, undefined, 811);
  gpuCase({ lead: [1, 12], t: 1, s: 1024, d: 64, dv: 64 }, "float32", true, 999, undefined, 812);
  gpuCase({ lead: [2, 4], t: 6, s: 2000, d: 128, dv: 128 }, "float16", true, 1500, undefined, 813);
  // Many heads with few splits, and a long cache with the most splits.
  gpuCase(
    { lead: [8, 12], t: 1, s: 700, d: 64, dv: 64 },
    "float16",
    false,
    undefined,
    undefined,
    814,
  );
  gpuCase({ lead: [1, 1], t: 1, s: 20000, d: 64, dv: 64 }, "float16", false, 19999, undefined, 815);
});
