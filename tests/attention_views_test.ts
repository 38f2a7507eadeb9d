/**
 * The attention view pass (lib/graph/passes/attention_views.ts): which chains of slices,
 * permutes and reshapes it folds into `attention` (GPT-2's split → reshape → permute of a
 * packed projection, and the head-merging permute of the result), which it leaves alone
 * (second readers, the switch off, misaligned offsets or strides, reshapes that are not views,
 * problems the CUDA kernels take contiguous); and that folding changes no bit of the result:
 * folded == unfused on the CPU for every dtype, and on a GPU (cuda against the CPU within
 * tests/attention_test.ts's norm-relative tolerances: float32 1e-5, float16 2e-3, bfloat16
 * 1e-2; cuda folded == cuda unfused bit for bit).
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { PlanGraph, PlanNode } from "../lib/backends/backend.ts";
import type { DType } from "../lib/dtype.ts";
import type { AttentionView } from "../lib/ops/attention.ts";
import { attentionTakesViews } from "../lib/ops/attention.ts";
import { plannedGraph } from "../lib/runtime/evaluate.ts";
import { randomValues, testOnGpu } from "./helpers.ts";
import { ptx as attentionPtx } from "../kernels/ptx/attention.ts";

const TOL: Record<string, number> = { float32: 1e-5, float16: 2e-3, bfloat16: 1e-2 };

/** One GPT-2-style attention: q, k, v carved out of a packed `[B, T, width]` source. */
interface Case {
  dtype: DType;
  b: number;
  t: number;
  h: number;
  d: number;
  causal: boolean;
  kvLength?: number;
  /** Last extent of the source (default 3·H·D). */
  width?: number;
  /** First column of q, k and v in the source (default 0, H·D, 2·H·D). */
  starts?: [number, number, number];
}

function prod(xs: number[]): number {
  return xs.reduce((a, x) => a * x, 1);
}

/** Runs `fn` with attention view fusion set to `on`, restoring the previous setting. */
function withFusion<T>(on: boolean, fn: () => T): T {
  const was = tq.attentionViewFusionEnabled();
  tq.setAttentionViewFusion(on);
  try {
    return fn();
  } finally {
    tq.setAttentionViewFusion(was);
  }
}

/** Seeded random source `[B, T, width]` of a case. */
function source(c: Case, seed: number, device = "cpu"): tq.Tensor {
  const width = c.width ?? 3 * c.h * c.d;
  const shape = [c.b, c.t, width];
  return tq.tensor(randomValues(prod(shape), seed), { shape, dtype: c.dtype, device });
}

/**
 * GPT-2's block: q, k, v = slices of `src` reshaped to `[B, T, H, D]` and permuted to
 * `[B, H, T, D]`; the result permuted back and reshaped to `[B, T, H·D]`.
 */
function gpt2Attention(src: tq.Tensor, c: Case): tq.Tensor {
  const { b, t, h, d } = c;
  const hd = h * d;
  const starts = c.starts ?? [0, hd, 2 * hd];
  const heads = (start: number) =>
    tq.permute(tq.reshape(tq.slice(src, [null, null, [start, start + hd]]), [b, t, h, d]), [
      0,
      2,
      1,
      3,
    ]);
  const [q, k, v] = starts.map(heads);
  const options: tq.AttentionOptions = { causal: c.causal };
  if (c.kvLength !== undefined) {
    options.kvLength = tq.tensor([c.kvLength], { dtype: "int32", device: src.device });
  }
  const context = tq.attention(q, k, v, options);
  return tq.reshape(tq.permute(context, [0, 2, 1, 3]), [b, t, hd]);
}

function attentionNodes(g: PlanGraph): PlanNode[] {
  return g.nodes.filter((n) => n.op === "attention");
}

function onlyAttention(g: PlanGraph): PlanNode {
  const nodes = attentionNodes(g);
  assert.equal(nodes.length, 1, "one attention node");
  return nodes[0];
}

function viewsOf(n: PlanNode): (AttentionView | null)[] | undefined {
  return n.attrs.views as (AttentionView | null)[] | undefined;
}

function countOps(g: PlanGraph, op: string): number {
  return g.nodes.filter((n) => n.op === op).length;
}

/** Raw bytes of a tensor's storage. */
function bytesOf(t: tq.Tensor): Uint8Array {
  const s = t.storageSync() as ArrayBufferView;
  return new Uint8Array(s.buffer, s.byteOffset, s.byteLength);
}

function assertSameBits(actual: tq.Tensor, expected: tq.Tensor, what: string): void {
  const a = bytesOf(actual);
  const e = bytesOf(expected);
  assert.equal(a.length, e.length, `${what}: byte length`);
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== e[i]) assert.fail(`${what}: byte ${i} differs (${a[i]} vs ${e[i]})`);
  }
}

/** ‖a − e‖ / ‖e‖. */
function normError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  assert.equal(actual.length, expected.length, "length");
  let diff = 0;
  let ref = 0;
  for (let i = 0; i < actual.length; i++) {
    diff += (actual[i] - expected[i]) ** 2;
    ref += expected[i] ** 2;
  }
  return ref === 0 ? Math.sqrt(diff) : Math.sqrt(diff / ref);
}

// ---------------------------------------------------------------------------------------------
// Pass structure

Deno.test("attention views: GPT-2's split, reshape and permutes fold into attention", () => {
  const c: Case = { dtype: "float16", b: 2, t: 77, h: 3, d: 64, causal: true };
  const hd = c.h * c.d;
  for (const fromNode of [false, true]) {
    const src = source(c, 1);
    const y = gpt2Attention(fromNode ? src.mul(2) : src, c);
    const g = plannedGraph([y.node]);
    assert.equal(countOps(g, "slice"), 0);
    assert.equal(countOps(g, "permute"), 0);
    const att = onlyAttention(g);
    assert.equal(att.attrs.outputLayout, "bthd");
    assert.deepEqual(att.shape, [c.b, c.t, c.h, c.d]);
    const views = viewsOf(att)!;
    [0, hd, 2 * hd].forEach((offset, i) => {
      assert.deepEqual(views[i], {
        shape: [c.b, c.h, c.t, c.d],
        offset,
        strides: [c.t * 3 * hd, c.d, 3 * hd, 1],
      });
      // Every input is the packed source itself.
      assert.deepEqual(att.inputs[i], att.inputs[0]);
    });
    const expected = fromNode ? ["mul", "attention", "reshape"] : ["attention", "reshape"];
    assert.deepEqual(g.nodes.map((n) => n.op), expected);
  }
});

Deno.test("attention views: GPT2Attention's block keeps no slice or permute", () => {
  const config = tq.gpt2Config({ nEmbd: 128, nHead: 2, nLayer: 1, vocabSize: 16 });
  for (const dtype of ["float16", "bfloat16"] as DType[]) {
    const block = new tq.GPT2Attention(config, { dtype });
    const x = tq.randn([2, 20, 128], { seed: 3, dtype });
    const ops = tq.inspectGraph(block.forward(x)).ops;
    assert.ok(!ops.includes("slice") && !ops.includes("permute"), ops.join(", "));
    assert.equal(ops.filter((op) => op === "attention").length, 1);
  }
  // Decode (one new position, float32 too): q, k, v are strided views; no permute is left.
  const block = new tq.GPT2Attention(config);
  const ops = tq.inspectGraph(block.forward(tq.randn([2, 1, 128], { seed: 4 }))).ops;
  assert.ok(!ops.includes("slice") && !ops.includes("permute"), ops.join(", "));
});

Deno.test("attention views: a slice or permute with a second reader stays", () => {
  const c: Case = { dtype: "float16", b: 2, t: 33, h: 2, d: 64, causal: true };
  const hd = c.h * c.d;
  const src = source(c, 5);
  const heads = (z: tq.Tensor) => tq.permute(tq.reshape(z, [c.b, c.t, c.h, c.d]), [0, 2, 1, 3]);
  const [qs, ks, vs] = tq.split(src, 3, 2);
  // k's slice is read again: only its reshape and permute fold (a view of the slice).
  const q = heads(qs), k = heads(ks), v = heads(vs);
  const y = tq.attention(q, k, v, { causal: true });
  const g = plannedGraph([y.node, ks.sum().node]);
  assert.equal(countOps(g, "slice"), 1);
  assert.equal(countOps(g, "permute"), 0);
  const att = onlyAttention(g);
  const views = viewsOf(att)!;
  assert.equal(views[0]!.offset, 0);
  assert.equal(views[2]!.offset, 2 * hd);
  assert.deepEqual(views[1], {
    shape: [c.b, c.h, c.t, c.d],
    offset: 0,
    strides: [c.t * hd, c.d, hd, 1],
  });
  const k1 = att.inputs[1];
  assert.ok("node" in k1 && g.nodes[k1.node].op === "slice");
  // The output read twice (the attention result is an output too): no bthd layout.
  assert.equal(att.attrs.outputLayout, undefined);

  // v's permute is read again: nothing of v folds.
  const y2 = tq.reshape(tq.permute(tq.attention(q, k, v), [0, 2, 1, 3]), [c.b, c.t, hd]);
  const g2 = plannedGraph([y2.node, v.sum().node]);
  const att2 = onlyAttention(g2);
  assert.equal(viewsOf(att2)![2], null);
  assert.notEqual(viewsOf(att2)![0], null);
  assert.equal(att2.attrs.outputLayout, "bthd");
  assert.equal(countOps(g2, "permute"), 1);
});

Deno.test("attention views: the switch turns the pass off (and keys the plan cache)", () => {
  const c: Case = { dtype: "bfloat16", b: 1, t: 70, h: 2, d: 128, causal: false };
  const src = source(c, 6);
  const off = withFusion(false, () => plannedGraph([gpt2Attention(src, c).node]));
  const att = onlyAttention(off);
  assert.equal(viewsOf(att), undefined);
  assert.equal(att.attrs.outputLayout, undefined);
  assert.deepEqual(Object.keys(att.attrs).sort(), ["causal", "hasKvLength", "scale"]);
  assert.equal(countOps(off, "slice"), 3);
  assert.equal(countOps(off, "permute"), 4);
  assert.ok(!withFusion(false, () => tq.attentionViewFusionEnabled()));
  assert.ok(tq.attentionViewFusionEnabled());
  const on = plannedGraph([gpt2Attention(src, c).node]);
  assert.equal(countOps(on, "permute"), 0);
});

Deno.test("attention views: offsets and strides must be multiples of 8 elements", () => {
  const base: Case = { dtype: "float16", b: 2, t: 20, h: 2, d: 64, causal: true };
  const hd = base.h * base.d;
  // q starts at column 4: its slice stays (the rest folds from the slice's output); k and v,
  // at 8-aligned columns of a row of 3·H·D + 8, fold whole.
  const shifted: Case = { ...base, width: 3 * hd + 8, starts: [4, hd + 8, 2 * hd + 8] };
  let g = plannedGraph([gpt2Attention(source(shifted, 7), shifted).node]);
  let att = onlyAttention(g);
  assert.equal(countOps(g, "slice"), 1);
  assert.equal(countOps(g, "permute"), 0);
  let views = viewsOf(att)!;
  assert.deepEqual(views[0]!.strides, [base.t * hd, base.d, hd, 1]);
  assert.equal(views[0]!.offset, 0);
  assert.deepEqual(views[1]!.strides, [base.t * (3 * hd + 8), base.d, 3 * hd + 8, 1]);
  assert.equal(views[1]!.offset, hd + 8);
  // A row of 3·H·D + 4 elements: no slice folds.
  const odd: Case = { ...base, width: 3 * hd + 4 };
  g = plannedGraph([gpt2Attention(source(odd, 8), odd).node]);
  att = onlyAttention(g);
  assert.equal(countOps(g, "slice"), 3);
  views = viewsOf(att)!;
  for (let i = 0; i < 3; i++) {
    const input = att.inputs[i];
    assert.ok("node" in input && g.nodes[input.node].op === "slice");
    assert.equal(views[i]!.offset, 0);
  }
});

Deno.test("attention views: a reshape that is not a view of the layout stops the fold", () => {
  // [B, H, T, D] permuted from [B, T, H, D] does not merge into [B·H, T, D] without a copy.
  const c: Case = { dtype: "float16", b: 2, t: 12, h: 3, d: 64, causal: true };
  const src = source(c, 9);
  const heads = (z: tq.Tensor) =>
    tq.reshape(tq.permute(tq.reshape(z, [c.b, c.t, c.h, c.d]), [0, 2, 1, 3]), [
      c.b * c.h,
      c.t,
      c.d,
    ]);
  const [q, k, v] = tq.split(src, 3, 2).map(heads);
  const g = plannedGraph([tq.attention(q, k, v, { causal: true }).node]);
  const att = onlyAttention(g);
  assert.equal(viewsOf(att), undefined);
  assert.equal(countOps(g, "permute"), 3);
});

Deno.test("attention views: only problems the decode and flash kernels take fold", () => {
  const cases: [Case, boolean][] = [
    [{ dtype: "float32", b: 2, t: 77, h: 2, d: 64, causal: true }, false], // generic
    [{ dtype: "float16", b: 2, t: 20, h: 2, d: 40, causal: true }, false], // D not 64 or 128
    [{ dtype: "bfloat16", b: 1, t: 9, h: 2, d: 32, causal: false }, false],
    [{ dtype: "float32", b: 2, t: 5, h: 2, d: 64, causal: true }, true], // decode
    [{ dtype: "float32", b: 1, t: 8, h: 3, d: 128, causal: false }, true],
    [{ dtype: "float16", b: 1, t: 9, h: 2, d: 128, causal: true }, true], // flash
  ];
  for (const [c, folds] of cases) {
    assert.equal(attentionTakesViews(c.dtype, c.t, c.d, c.d), folds, JSON.stringify(c));
    const g = plannedGraph([gpt2Attention(source(c, 10), c).node]);
    const att = onlyAttention(g);
    assert.equal(viewsOf(att) !== undefined, folds, JSON.stringify(c));
    assert.equal(att.attrs.outputLayout === "bthd", folds, JSON.stringify(c));
    assert.equal(countOps(g, "permute"), folds ? 0 : 4, JSON.stringify(c));
  }
  // D != Dv never folds.
  assert.equal(attentionTakesViews("float16", 64, 64, 128), false);
  assert.equal(attentionTakesViews("float16", 1, 128, 64), false);
});

// ---------------------------------------------------------------------------------------------
// Numerics: folded == unfused, bit for bit

/** The GPT-2 block's output with the pass on and off, and the folded plan's attention node. */
function foldedAndUnfused(
  c: Case,
  seed: number,
  device: string,
): { folded: tq.Tensor; unfused: tq.Tensor; node: PlanNode } {
  const src = source(c, seed, device);
  const folded = gpt2Attention(src, c);
  const node = onlyAttention(plannedGraph([folded.node]));
  folded.storageSync();
  const unfused = withFusion(false, () => {
    const y = gpt2Attention(src, c);
    y.storageSync();
    return y;
  });
  return { folded, unfused, node };
}

const NUMERIC_CASES: Case[] = [
  { dtype: "float32", b: 2, t: 1, h: 2, d: 64, causal: true },
  { dtype: "float32", b: 2, t: 5, h: 12, d: 128, causal: false, kvLength: 3 },
  { dtype: "float32", b: 1, t: 8, h: 3, d: 64, causal: true, kvLength: 6 },
  { dtype: "float32", b: 2, t: 77, h: 3, d: 64, causal: true }, // generic: not folded
  { dtype: "float16", b: 2, t: 1, h: 12, d: 64, causal: true, kvLength: 1 },
  { dtype: "float16", b: 1, t: 5, h: 4, d: 128, causal: true },
  { dtype: "float16", b: 2, t: 77, h: 3, d: 64, causal: true, kvLength: 50 },
  { dtype: "float16", b: 1, t: 128, h: 2, d: 128, causal: false },
  { dtype: "bfloat16", b: 1, t: 1, h: 7, d: 128, causal: false },
  { dtype: "bfloat16", b: 2, t: 5, h: 2, d: 64, causal: true, kvLength: 3 },
  { dtype: "bfloat16", b: 1, t: 77, h: 5, d: 128, causal: false, kvLength: 70 },
  { dtype: "bfloat16", b: 2, t: 128, h: 12, d: 64, causal: true },
  // Padded rows and shifted columns (still 8-aligned).
  {
    dtype: "float16",
    b: 2,
    t: 33,
    h: 3,
    d: 64,
    causal: true,
    width: 3 * 192 + 24,
    starts: [8, 200, 400],
  },
];

Deno.test("attention views: folded equals unfused bit for bit on the CPU", () => {
  NUMERIC_CASES.forEach((c, i) => {
    const what = JSON.stringify(c);
    const { folded, unfused, node } = foldedAndUnfused(c, 100 + i, "cpu");
    const expectFold = attentionTakesViews(c.dtype, c.t, c.d, c.d);
    assert.equal(viewsOf(node)?.every((v) => v !== null) ?? false, expectFold, what);
    assertSameBits(folded, unfused, what);
  });
});

/**
 * A decode step against a cache: q from the packed projection (T new positions), k and v
 * contiguous `[B, H, S, D]` values; the output merged back to `[B, T, H·D]`.
 */
function cachedDecode(
  c: Case,
  s: number,
  seed: number,
  device: string,
): { y: tq.Tensor; src: tq.Tensor; k: tq.Tensor; v: tq.Tensor; len: tq.Tensor } {
  const { b, h, d, dtype } = c;
  const src = source(c, seed, device);
  const cache = (offset: number) =>
    tq.tensor(randomValues(b * h * s * d, seed + offset), {
      shape: [b, h, s, d],
      dtype,
      device,
    });
  const k = cache(1);
  const v = cache(2);
  const len = tq.tensor([c.kvLength ?? s], { dtype: "int32", device });
  return { y: decodeGraph(src, k, v, len, c), src, k, v, len };
}

function decodeGraph(
  src: tq.Tensor,
  k: tq.Tensor,
  v: tq.Tensor,
  len: tq.Tensor,
  c: Case,
): tq.Tensor {
  const { b, t, h, d } = c;
  const [q] = tq.split(src, 3, 2);
  const qh = tq.permute(tq.reshape(q, [b, t, h, d]), [0, 2, 1, 3]);
  const context = tq.attention(qh, k, v, { causal: c.causal, kvLength: len });
  return tq.reshape(tq.permute(context, [0, 2, 1, 3]), [b, t, h * d]);
}

Deno.test("attention views: decode over a cache (q folded, k and v plain) is bit-identical", () => {
  const cases: Case[] = [
    { dtype: "float16", b: 2, t: 1, h: 12, d: 64, causal: true, kvLength: 30 },
    { dtype: "bfloat16", b: 1, t: 4, h: 3, d: 128, causal: true, kvLength: 41 },
    { dtype: "float32", b: 2, t: 6, h: 2, d: 64, causal: false },
  ];
  cases.forEach((c, i) => {
    const { y, src, k, v, len } = cachedDecode(c, 41, 300 + 10 * i, "cpu");
    const att = onlyAttention(plannedGraph([y.node]));
    const views = viewsOf(att)!;
    assert.ok(views[0] !== null && views[1] === null && views[2] === null);
    assert.equal(att.attrs.outputLayout, c.t > 1 ? "bthd" : undefined);
    const unfused = withFusion(false, () => {
      const u = decodeGraph(src, k, v, len, c);
      u.storageSync();
      return u;
    });
    assertSameBits(y, unfused, JSON.stringify(c));
  });
});

Deno.test("attention views: rank-5 inputs whose leading dims merge fold and match", () => {
  // [2, 3, T, 3·H·D] → q, k, v [2, 3, H, T, D]: the two leading dims form one batch dim.
  const [a, b, t, h, d] = [2, 3, 9, 2, 64];
  const hd = h * d;
  const shape = [a, b, t, 3 * hd];
  for (const dtype of ["float16", "float32"] as DType[]) {
    const src = tq.tensor(randomValues(prod(shape), 400), { shape, dtype });
    const build = () => {
      const [q, k, v] = tq.split(src, 3, 3).map((z) =>
        tq.permute(tq.reshape(z, [a, b, t, h, d]), [0, 1, 3, 2, 4])
      );
      return tq.attention(q, k, v, { causal: true });
    };
    const y = build();
    const att = onlyAttention(plannedGraph([y.node]));
    const views = viewsOf(att);
    assert.equal(views !== undefined, dtype === "float16", dtype);
    if (views) {
      assert.deepEqual(views[1]!.strides, [b * t * 3 * hd, t * 3 * hd, d, 3 * hd, 1]);
    }
    y.storageSync();
    const unfused = withFusion(false, () => {
      const u = build();
      u.storageSync();
      return u;
    });
    assertSameBits(y, unfused, dtype);
  }
});

// ---------------------------------------------------------------------------------------------
// CUDA kernel signatures (checked on the CPU against the PTX)

/** Parameter types of a kernel entry in a PTX text. */
function entryParams(ptx: string, name: string): string[] {
  const start = ptx.indexOf(`.entry ${name}(`);
  assert.ok(start >= 0, `${name} missing from the PTX`);
  const list = ptx.slice(start, ptx.indexOf(")", start));
  return [...list.matchAll(/\.param \.(\w+) /g)].map((m) => m[1]);
}

Deno.test("attention views: flash and decode kernels take the strides the launches pass", () => {
  // (batch i64, head i64, position i32) for q, k, v and the output.
  const strides = ["u64", "u64", "u32"].concat(["u64", "u64", "u32"], ["u64", "u64", "u32"])
    .concat(["u64", "u64", "u32"]);
  // q, k, v, out, kvLength; BH, H, T, S; scale·log2(e); causal; tiles or splits.
  const scalars = ["u32", "u32", "u32", "u32", "f32", "u32", "u32"];
  const flash = [...new Array(5).fill("u64"), ...scalars, ...strides];
  // ... plus the partials and split counters after kvLength.
  const decode = [...new Array(7).fill("u64"), ...scalars, ...strides];
  for (const ptx of [attentionPtx.ptxSm90a, attentionPtx.ptxCompute80]) {
    for (const dtype of ["f16", "bf16"]) {
      for (const d of [64, 128]) {
        assert.deepEqual(entryParams(ptx, `attention_flash_${dtype}_d${d}`), flash);
      }
    }
    for (const dtype of ["f32", "f16", "bf16"]) {
      for (const d of [64, 128]) {
        for (const t of [1, 4, 8]) {
          assert.deepEqual(entryParams(ptx, `attention_decode_${dtype}_d${d}_t${t}`), decode);
        }
      }
    }
  }
});

// ---------------------------------------------------------------------------------------------
// GPU: cuda folded against the CPU, and against cuda unfused bit for bit

/** Checks a case on cuda: folded, against the CPU within tolerance and unfused bit for bit. */
function gpuCheck(c: Case, seed: number): void {
  const what = JSON.stringify(c);
  const { folded, unfused, node } = foldedAndUnfused(c, seed, "cuda");
  assert.ok(viewsOf(node)?.every((v) => v !== null), `${what}: folded on cuda`);
  assertSameBits(folded, unfused, `${what}: cuda folded vs unfused`);
  const cpu = gpt2Attention(source(c, seed, "cpu"), c);
  const err = normError(folded.dataSync() as Float32Array, cpu.dataSync() as Float32Array);
  assert.ok(err <= TOL[c.dtype], `${what}: norm-relative error ${err} > ${TOL[c.dtype]}`);
}

testOnGpu("attention views: flash kernels read the packed projection (prefill)", () => {
  const cases: Case[] = [
    { dtype: "float16", b: 2, t: 256, h: 12, d: 64, causal: true },
    { dtype: "bfloat16", b: 1, t: 130, h: 4, d: 128, causal: false, kvLength: 100 },
    { dtype: "float16", b: 2, t: 77, h: 3, d: 128, causal: true, kvLength: 77 },
    { dtype: "bfloat16", b: 3, t: 9, h: 2, d: 64, causal: true },
    { dtype: "float16", b: 1, t: 64, h: 5, d: 64, causal: false, kvLength: 0 },
    {
      dtype: "float16",
      b: 2,
      t: 100,
      h: 3,
      d: 64,
      causal: true,
      width: 3 * 192 + 24,
      starts: [8, 200, 400],
    },
  ];
  cases.forEach((c, i) => gpuCheck(c, 500 + i));
});

testOnGpu("attention views: decode kernels read strided q, k, v and merge heads", () => {
  const cases: Case[] = [
    { dtype: "float16", b: 8, t: 1, h: 12, d: 64, causal: true },
    { dtype: "float32", b: 2, t: 1, h: 12, d: 64, causal: true },
    { dtype: "bfloat16", b: 2, t: 5, h: 12, d: 128, causal: true },
    { dtype: "float32", b: 1, t: 8, h: 2, d: 128, causal: false, kvLength: 5 },
    { dtype: "float16", b: 3, t: 4, h: 7, d: 64, causal: true, kvLength: 2 },
  ];
  cases.forEach((c, i) => gpuCheck(c, 600 + i));
});

testOnGpu("attention views: decode over a long cache with a strided q (split keys)", () => {
  const cases: Case[] = [
    { dtype: "float16", b: 1, t: 1, h: 12, d: 64, causal: true, kvLength: 1000 },
    { dtype: "bfloat16", b: 2, t: 6, h: 4, d: 128, causal: true, kvLength: 1500 },
    { dtype: "float32", b: 1, t: 1, h: 2, d: 64, causal: false, kvLength: 1999 },
  ];
  cases.forEach((c, i) => {
    const what = JSON.stringify(c);
    const seed = 700 + 10 * i;
    const { y, src, k, v, len } = cachedDecode(c, 2000, seed, "cuda");
    const views = viewsOf(onlyAttention(plannedGraph([y.node])))!;
    assert.ok(views[0] !== null, `${what}: q folded`);
    const unfused = withFusion(false, () => decodeGraph(src, k, v, len, c));
    assertSameBits(y, unfused, `${what}: cuda folded vs unfused`);
    const cpu = cachedDecode(c, 2000, seed, "cpu").y;
    const err = normError(y.dataSync() as Float32Array, cpu.dataSync() as Float32Array);
    assert.ok(err <= TOL[c.dtype], `${what}: norm-relative error ${err}`);
  });
});
