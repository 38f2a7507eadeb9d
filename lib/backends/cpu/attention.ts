/**
 * CPU kernel of `attention` (rule in lib/ops/attention.ts): scores, softmax and the weighted
 * sum of values in float64 on decoded inputs, one rounding to the output dtype.
 * @module
 */
import { numel } from "../../shape.ts";
import { registerCpuKernel } from "./backend.ts";
import { outArray, read } from "./util.ts";

registerCpuKernel("attention", (storages, ctx) => {
  const [qInfo, kInfo, vInfo] = ctx.inputs;
  const rank = qInfo.shape.length;
  const t = qInfo.shape[rank - 2];
  const d = qInfo.shape[rank - 1];
  const s = kInfo.shape[rank - 2];
  const dv = vInfo.shape[rank - 1];
  const heads = numel(qInfo.shape.slice(0, rank - 2));
  const q = read(qInfo.dtype, storages[0]);
  const k = read(kInfo.dtype, storages[1]);
  const v = read(vInfo.dtype, storages[2]);
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
    const qBase = h * t * d;
    const kBase = h * s * d;
    const vBase = h * s * dv;
    for (let i = 0; i < t; i++) {
      // Keys 0 .. visible-1 are visible to query i; none leaves the row at zero.
      const visible = causal ? Math.min(len, i + len - t + 1) : len;
      const oBase = (h * t + i) * dv;
      if (visible <= 0) continue;
      let max = -Infinity;
      for (let j = 0; j < visible; j++) {
        let dot = 0;
        for (let e = 0; e < d; e++) dot += q[qBase + i * d + e] * k[kBase + j * d + e];
        const x = dot * scale;
        scores[j] = x;
        if (x > max || x !== x) max = x;
      }
      acc.fill(0);
      let total = 0;
      for (let j = 0; j < visible; j++) {
        const p = Math.exp(scores[j] - max);
        total += p;
        for (let e = 0; e < dv; e++) acc[e] += p * v[vBase + j * dv + e];
      }
      for (let e = 0; e < dv; e++) o[oBase + e] = acc[e] / total;
    }
  }
  return out.finish();
});
