/**
 * CPU kernel of `attention` (rule in lib/ops/attention.ts): scores, softmax and the weighted
 * sum of values in float64 on decoded inputs, one rounding to the output dtype. Inputs given
 * as strided views (attr `views`) are read in place, and the `bthd` output layout (attr
 * `outputLayout`) writes `[B, T, H, Dv]`; neither changes the arithmetic.
 * @module
 */
import type { AttentionView } from "../../ops/attention.ts";
import { numel, stridesOf } from "../../shape.ts";
import { registerCpuKernel } from "./backend.ts";
import { outArray, read } from "./util.ts";

/** The input's view, or its own contiguous layout. */
function layoutOf(view: AttentionView | null | undefined, shape: readonly number[]): AttentionView {
  return view ?? { shape: [...shape], offset: 0, strides: stridesOf(shape) };
}

/** Element offset of flat head `h` (over the leading dims) in `layout`. */
function headBase(layout: AttentionView, h: number): number {
  const { shape, strides } = layout;
  let base = layout.offset;
  for (let d = shape.length - 3; d >= 0; d--) {
    base += (h % shape[d]) * strides[d];
    h = Math.floor(h / shape[d]);
  }
  return base;
}

registerCpuKernel("attention", (storages, ctx) => {
  const views = ctx.attrs.views as (AttentionView | null)[] | undefined;
  const [qL, kL, vL] = [0, 1, 2].map((i) => layoutOf(views?.[i], ctx.inputs[i].shape));
  const rank = qL.shape.length;
  const t = qL.shape[rank - 2];
  const d = qL.shape[rank - 1];
  const s = kL.shape[rank - 2];
  const dv = vL.shape[rank - 1];
  const heads = numel(qL.shape.slice(0, rank - 2));
  const q = read(ctx.inputs[0].dtype, storages[0]);
  const k = read(ctx.inputs[1].dtype, storages[1]);
  const v = read(ctx.inputs[2].dtype, storages[2]);
  const [qT, qE] = qL.strides.slice(rank - 2);
  const [kT, kE] = kL.strides.slice(rank - 2);
  const [vT, vE] = vL.strides.slice(rank - 2);
  // Output strides of the logical [..., H, T, Dv] result; "bthd" writes [B, T, H, Dv].
  const bthd = ctx.attrs.outputLayout === "bthd";
  const nHeads = qL.shape[rank - 3];
  const oH = bthd ? dv : t * dv;
  const oT = bthd ? nHeads * dv : dv;
  const oB = nHeads * t * dv;
  const scale = ctx.attrs.scale as number;
  const causal = ctx.attrs.causal as boolean;
  // The valid key count, clamped to [0, S].
  const given = ctx.attrs.hasKvLength ? (storages[3] as Int32Array)[0] : s;
  const len = Math.min(Math.max(given, 0), s);
  const out = outArray(ctx.out.dtype, heads * t * dv);
  const o = out.values;
  const scores = new Float64Array(s);
  const acc = new Float64Array(dv);
  for (let h = 0; h < heads; h++) {
    const qBase = headBase(qL, h);
    const kBase = headBase(kL, h);
    const vBase = headBase(vL, h);
    const headOut = Math.floor(h / nHeads) * oB + (h % nHeads) * oH;
    for (let i = 0; i < t; i++) {
      // Keys 0 .. visible-1 are visible to query i; none leaves the row at zero.
      const visible = causal ? Math.min(len, i + len - t + 1) : len;
      const oBase = headOut + i * oT;
      if (visible <= 0) continue;
      const qRow = qBase + i * qT;
      let max = -Infinity;
      for (let j = 0; j < visible; j++) {
        const kRow = kBase + j * kT;
        let dot = 0;
        for (let e = 0; e < d; e++) dot += q[qRow + e * qE] * k[kRow + e * kE];
        const x = dot * scale;
        scores[j] = x;
        if (x > max || x !== x) max = x;
      }
      acc.fill(0);
      let total = 0;
      for (let j = 0; j < visible; j++) {
        const p = Math.exp(scores[j] - max);
        total += p;
        const vRow = vBase + j * vT;
        for (let e = 0; e < dv; e++) acc[e] += p * v[vRow + e * vE];
      }
      for (let e = 0; e < dv; e++) o[oBase + e] = acc[e] / total;
    }
  }
  return out.finish();
});
