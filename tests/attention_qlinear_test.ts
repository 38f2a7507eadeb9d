/**
 * The attention folded into the qlinear that reads it (lib/graph/passes/attention_qlinear.ts):
 *
 * - the pass: GPT-2's attention block (q, k, v carved out of a packed projection, causal or
 *   not, with or without kvLength), followed by a w8a8 or fp8 Linear (with or without bias, with
 *   or without a residual add), leaves no `attention` node: the qlinear has attr `attention`.
 *   It does not fold problems the flash kernel does not take (8 queries or fewer, float32),
 *   an attention result that something else reads too, or with the switch off;
 * - numerics: the folded graph equals the unfused one (switch off) bit for bit, on every device:
 *   on cuda the flash kernel writes x's codes itself (int8 and e4m3 codes; the int8 GEMMs with
 *   padded and unpadded rows, the fp8 tensor-core and exact products, the residual in the int8
 *   epilogue and in cuBLASLt's C), and the codes are those of the rounded attention result.
 * @module
 */
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import type { PlanGraph } from "../lib/backends/backend.ts";
import type { DType } from "../lib/dtype.ts";
import { plannedGraph } from "../lib/runtime/evaluate.ts";
import { ptx as attentionCodesPtx } from "../kernels/ptx/attention_codes.ts";
import { randomValues, testOnDevices } from "./helpers.ts";

interface Case {
  dtype: DType;
  quant: "int8" | "float8e4m3";
  b: number;
  t: number;
  h: number;
  d: number;
  /** Output features of the projection. */
  n: number;
  causal: boolean;
  kvLength?: number;
  bias: boolean;
  residual: boolean;
}

/** Input amax of the projection: attention results of normal values saturate now and then. */
const INPUT_AMAX = 1.5;

/** Runs `fn` with the fold set to `on`, restoring the previous setting. */
function withFold<T>(on: boolean, fn: () => T): T {
  const was = tq.attentionQlinearFusionEnabled();
  tq.setAttentionQlinearFusion(on);
  try {
    return fn();
  } finally {
    tq.setAttentionQlinearFusion(was);
  }
}

/**
 * GPT-2's attention block on `device` from seeded random values: q, k, v sliced out of a packed
 * `[B, T, 3·H·D]` projection, split into heads, attention, heads merged, then a quantized
 * Linear (per-channel weight scales) and optionally a residual add. Returns the output and
 * the attention result before the projection (to read it a second time).
 */
function block(c: Case, device: string, seed: number): { y: tq.Tensor; context: tq.Tensor } {
  const { b, t, h, d, dtype } = c;
  const hd = h * d;
  const src = tq.tensor(randomValues(b * t * 3 * hd, seed), {
    shape: [b, t, 3 * hd],
    dtype,
    device,
  });
  const heads = (start: number) =>
    src.slice([null, null, [start, start + hd]]).reshape([b, t, h, d]).permute([0, 2, 1, 3]);
  const options: tq.AttentionOptions = { causal: c.causal };
  if (c.kvLength !== undefined) {
    options.kvLength = tq.tensor([c.kvLength], { dtype: "int32", device });
  }
  const context = tq.attention(heads(0), heads(hd), heads(2 * hd), options)
    .permute([0, 2, 1, 3]).reshape([b, t, hd]);
  const weight = tq.randn([c.n, hd], { seed: seed + 1, std: 0.05, dtype });
  const layer = new tq.Linear(hd, c.n, {
    quantDtype: c.quant,
    weightQuantDim: 0,
    bias: c.bias,
    dtype,
  });
  const dict: Record<string, tq.Tensor> = {
    weight,
    weightScale: tq.scaleFromAmax(weight.cast("float32").abs().max(1), c.quant),
    inputScale: tq.scaleFromAmax(INPUT_AMAX, c.quant),
  };
  if (c.bias) dict.bias = tq.randn([c.n], { seed: seed + 2, std: 0.1, dtype });
  layer.loadStateDict(dict);
  layer.to(device);
  let y = layer.forward(context);
  if (c.residual) {
    const r = tq.tensor(randomValues(b * t * c.n, seed + 3), { shape: [b, t, c.n], dtype, device });
    y = y.add(r);
  }
  return { y, context };
}

function countOps(g: PlanGraph, op: string): number {
  return g.nodes.filter((n) => n.op === op).length;
}

/** The storage of `t` as numbers (16-bit floats as their bits): for bitwise equality. */
function bits(t: tq.Tensor): number[] {
  return Array.from(t.storageSync() as ArrayLike<number>);
}

const BASE: Case = {
  dtype: "float16",
  quant: "int8",
  b: 2,
  t: 40,
  h: 2,
  d: 64,
  n: 96,
  causal: true,
  bias: true,
  residual: true,
};

Deno.test("attention into qlinear: GPT-2's block folds, with and without bias, residual, kvLength", () => {
  const cases: Case[] = [
    BASE,
    { ...BASE, quant: "float8e4m3", residual: false },
    { ...BASE, bias: false, causal: false, kvLength: 30 },
    { ...BASE, dtype: "bfloat16", d: 128 },
  ];
  for (const c of cases) {
    const g = plannedGraph([block(c, "cpu", 1).y.node]);
    const label = JSON.stringify(c);
    assert.equal(countOps(g, "attention"), 0, label);
    const ql = g.nodes.filter((n) => n.op === "qlinear");
    assert.equal(ql.length, 1, label);
    const folded = ql[0].attrs.attention as { shape: number[]; hasKvLength: boolean };
    assert.deepEqual(folded.shape, [c.b, c.t, c.h, c.d], label);
    assert.equal(folded.hasKvLength, c.kvLength !== undefined, label);
    assert.equal(ql[0].attrs.residual === true, c.residual, label);
    // x, 5 scales and codes, bias?, k, v, kvLength?, residual?
    const inputs = 6 + (c.bias ? 1 : 0) + 2 + (c.kvLength !== undefined ? 1 : 0) +
      (c.residual ? 1 : 0);
    assert.equal(ql[0].inputs.length, inputs, label);
  }
});

Deno.test("attention into qlinear: left apart for decode-sized and float32 problems, a second reader, the switch off", () => {
  const decode = plannedGraph([block({ ...BASE, t: 8 }, "cpu", 1).y.node]);
  assert.equal(countOps(decode, "attention"), 1);
  const f32 = plannedGraph([block({ ...BASE, dtype: "float32" }, "cpu", 1).y.node]);
  assert.equal(countOps(f32, "attention"), 1);
  const { y, context } = block(BASE, "cpu", 1);
  const twice = plannedGraph([y.node, context.sum().node]);
  assert.equal(countOps(twice, "attention"), 1);
  assert.ok(twice.nodes.every((n) => n.attrs.attention === undefined));
  const off = withFold(false, () => plannedGraph([block(BASE, "cpu", 1).y.node]));
  assert.equal(countOps(off, "attention"), 1);
});

Deno.test("attention into qlinear: the codes kernels take the parameters the launches pass", () => {
  // q, k, v, codes, kvLength; BH, H, T, S; scale·log2(e); causal; tiles; (batch, head,
  // position) strides of q, k, v and the output; the code scale and its kind; the row-scale
  // copies, their scale and its kind.
  const strides = new Array(4).fill(["u64", "u64", "u32"]).flat();
  const expected = [
    ...new Array(5).fill("u64"),
    ...["u32", "u32", "u32", "u32", "f32", "u32", "u32"],
    ...strides,
    ...["u64", "u32", "u64", "u64", "u32"],
  ];
  for (const ptx of [attentionCodesPtx.ptxSm90a, attentionCodesPtx.ptxCompute80]) {
    for (const dtype of ["f16", "bf16"]) {
      for (const d of [64, 128]) {
        for (const codes of ["i8", "e4m3"]) {
          const name = `attention_flash_${dtype}_d${d}_${codes}`;
          const start = ptx.indexOf(`.entry ${name}(`);
          assert.ok(start >= 0, `${name} missing from the PTX`);
          const list = ptx.slice(start, ptx.indexOf(")", start));
          assert.deepEqual(
            [...list.matchAll(/\.param \.(\w+) /g)].map((m) => m[1]),
            expected,
            name,
          );
        }
      }
    }
  }
});

/** Cases of the numeric check: every lowering path of the codes the flash kernel writes. */
const NUMERIC_CASES: Case[] = [
  // int8 on the wgmma GEMM (residual in its epilogue) or cuBLASLt, rows padded to 16 (80).
  BASE,
  // 2 x 100 rows: not a multiple of 16; no bias, not causal, a shorter kvLength.
  { ...BASE, t: 100, causal: false, bias: false, kvLength: 77 },
  // N = 72: not a multiple of 16, the exact int8 GEMM kernel.
  { ...BASE, n: 72, residual: false },
  // fp8 on cuBLASLt (outer-vector scales past 64 rows; the residual as C), bfloat16, D = 128.
  { ...BASE, quant: "float8e4m3", dtype: "bfloat16", d: 128 },
  { ...BASE, quant: "float8e4m3", t: 100, residual: false },
  // fp8 with N = 72: the exact float32 product of the codes' values.
  { ...BASE, quant: "float8e4m3", n: 72 },
];

testOnDevices("attention into qlinear: folded == unfused bit for bit", (device) => {
  NUMERIC_CASES.forEach((c, i) => {
    const seed = 10 + 7 * i;
    const folded = block(c, device, seed).y;
    assert.equal(countOps(plannedGraph([folded.node]), "attention"), 0);
    const fused = bits(folded);
    const unfused = withFold(false, () => bits(block(c, device, seed).y));
    assert.equal(fused.length, c.b * c.t * c.n);
    const differ = fused.findIndex((x, j) => x !== unfused[j]);
    assert.equal(differ, -1, `${JSON.stringify(c)} on ${device}: element ${differ} differs`);
  });
});
