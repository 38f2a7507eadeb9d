/**
 * CPU kernel of `attention` (rule in lib/ops/attention.ts): scores, softmax and the weighted
 * sum of values in float64 on decoded inputs, one rounding to the output dtype. Inputs given
 * as strided views (attr `views`) are read in place, and the `bthd` output layout (attr
 * `outputLayout`) writes `[B, T, H, Dv]`; neither changes the arithmetic.
 *
 * Each head is copied into contiguous rows, and its queries go in bands of {@link BAND}: the
 * band's scores are one product Q·Kᵀ over the keys its last query sees, and the weighted sum
 * one product P·V over the keys its first query sees, continued per query over the rest. The
 * products are matmul's `gemm`, whose sums run in the same order as the plain loops (each
 * score over the head dimension, each output over the keys), so the results are those of
 * the loops bit for bit; keys a query does not see never enter its sums.
 * @module
 */
import type { AttentionView } from "../../ops/attention.ts";
import { numel, stridesOf } from "../../shape.ts";
import { registerCpuKernel } from "./backend.ts";
import { gemm } from "./matmul.ts";
import { outArray, read } from "./util.ts";

/** Queries per band: a multiple of 8, where the WebAssembly product takes over. */
const BAND = 32;

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
  // Keys 0 .. visible(i) - 1 are visible to query i (nondecreasing in i); none leaves the row
  // at zero.
  const visible = (i: number) => causal ? Math.min(len, i + len - t + 1) : len;
  const qh = new Float64Array(t * d);
  const kh = new Float64Array(t > 1 ? len * d : 0);
  const scores = new Float64Array(BAND * len);
  const weights = new Float64Array(BAND * len);
  const vt = new Float64Array(dv * len);
  const sums = new Float64Array(BAND * dv);
  const totals = new Float64Array(BAND);
  for (let h = 0; h < heads && len > 0; h++) {
    const qBase = headBase(qL, h);
    const kBase = headBase(kL, h);
    const vBase = headBase(vL, h);
    const headOut = Math.floor(h / nHeads) * oB + (h % nHeads) * oH;
    for (let i = 0; i < t; i++) {
      for (let e = 0; e < d; e++) qh[i * d + e] = q[qBase + i * qT + e * qE];
    }
    // One query (a decode step) reads the keys where they are; a band, gathered into rows.
    if (t > 1) {
      for (let j = 0; j < len; j++) {
        for (let e = 0; e < d; e++) kh[j * d + e] = k[kBase + j * kT + e * kE];
      }
    }
    for (let i0 = 0; i0 < t; i0 += BAND) {
      const rows = Math.min(BAND, t - i0);
      const last = visible(i0 + rows - 1);
      if (last <= 0) continue;
      // Scores of the band against the keys its last query sees (each sum in order of e).
      if (t > 1) gemm(qh, i0 * d, kh, 0, scores, 0, rows, last, d);
      else {
        for (let j = 0; j < last; j++) {
          const kRow = kBase + j * kT;
          let sum = 0;
          for (let e = 0; e < d; e++) sum += qh[e] * k[kRow + e * kE];
          scores[j] = sum;
        }
      }
      // A band of one query sums all its keys below, in the same order, without gathering Vᵀ.
      const first = rows > 1 ? Math.max(visible(i0), 0) : 0;
      for (let r = 0; r < rows; r++) {
        const seen = visible(i0 + r);
        if (seen <= 0) continue;
        const row = r * last;
        let max = -Infinity;
        for (let j = 0; j < seen; j++) {
          const x = scores[row + j] * scale;
          scores[row + j] = x;
          if (x > max || x !== x) max = x;
        }
        let total = 0;
        for (let j = 0; j < seen; j++) {
          const p = Math.exp(scores[row + j] - max);
          total += p;
          scores[row + j] = p;
          if (j < first) weights[r * first + j] = p;
        }
        totals[r] = total;
      }
      // Σ p·v over the keys every query of the band sees, then each query's remaining keys.
      if (first > 0) {
        for (let e = 0; e < dv; e++) {
          for (let j = 0; j < first; j++) vt[e * first + j] = v[vBase + j * vT + e * vE];
        }
        gemm(weights, 0, vt, 0, sums, 0, rows, dv, first);
      } else {
        sums.fill(0);
      }
      for (let r = 0; r < rows; r++) {
        const seen = visible(i0 + r);
        if (seen <= 0) continue;
        const acc = sums.subarray(r * dv, (r + 1) * dv);
        for (let j = first; j < seen; j++) {
          const p = scores[r * last + j];
          const vRow = vBase + j * vT;
          for (let e = 0; e < dv; e++) acc[e] += p * v[vRow + e * vE];
        }
        const oBase = headOut + (i0 + r) * oT;
        for (let e = 0; e < dv; e++) o[oBase + e] = acc[e] / totals[r];
      }
    }
  }
  return out.finish();
});
