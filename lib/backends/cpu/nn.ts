/**
 * CPU kernels of softmax, log-softmax and layer norm (rules in lib/ops/nn.ts). Math runs in
 * float64 on decoded values and rounds once to the output dtype.
 * @module
 */
import { numel } from "../../shape.ts";
import { registerCpuKernel } from "./backend.ts";
import { outArray, read } from "./util.ts";

for (const op of ["softmax", "logSoftmax"]) {
  const log = op === "logSoftmax";
  registerCpuKernel(op, ([s], ctx) => {
    const { shape, dtype } = ctx.inputs[0];
    const x = read(dtype, s);
    const out = outArray(ctx.out.dtype, x.length);
    const v = out.values;
    // A rank-0 input is one row of length 1.
    const axis = ctx.attrs.axis as number;
    const len = shape.length === 0 ? 1 : shape[axis];
    const inner = numel(shape.slice(axis + 1));
    const outer = numel(shape.slice(0, axis));
    // Scratch for the exponentials of one row (float64: rounding only at the end).
    const e = new Float64Array(len);
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < inner; i++) {
        const base = o * len * inner + i;
        let mx = -Infinity;
        for (let k = 0; k < len; k++) {
          const t = x[base + k * inner];
          // NaN must win: `t > mx` alone would skip it.
          if (t > mx || t !== t) mx = t;
          if (t !== t) break;
        }
        let total = 0;
        for (let k = 0; k < len; k++) {
          const t = Math.exp(x[base + k * inner] - mx);
          e[k] = t;
          total += t;
        }
        if (log) {
          // (x − max) − log Σ: folding max + log Σ into one shift first would lose log Σ
          // against a max of large magnitude.
          const logTotal = Math.log(total);
          for (let k = 0; k < len; k++) v[base + k * inner] = (x[base + k * inner] - mx) - logTotal;
        } else {
          for (let k = 0; k < len; k++) v[base + k * inner] = e[k] / total;
        }
      }
    }
    return out.finish();
  });
}

registerCpuKernel("layerNorm", (storages, ctx) => {
  const { shape, dtype } = ctx.inputs[0];
  const x = read(dtype, storages[0]);
  const hasWeight = ctx.attrs.hasWeight as boolean;
  const hasBias = ctx.attrs.hasBias as boolean;
  const weight = hasWeight ? read(dtype, storages[1]) : undefined;
  const bias = hasBias ? read(dtype, storages[hasWeight ? 2 : 1]) : undefined;
  const eps = ctx.attrs.eps as number;
  const d = numel(shape.slice(shape.length - (ctx.attrs.dims as number)));
  const out = outArray(ctx.out.dtype, x.length);
  const v = out.values;
  const rows = d === 0 ? 0 : x.length / d;
  for (let r = 0; r < rows; r++) {
    const base = r * d;
    let acc = 0;
    for (let k = 0; k < d; k++) acc += x[base + k];
    const mu = acc / d;
    let sq = 0;
    for (let k = 0; k < d; k++) {
      const t = x[base + k] - mu;
      sq += t * t;
    }
    const inv = 1 / Math.sqrt(sq / d + eps);
    for (let k = 0; k < d; k++) {
      let y = (x[base + k] - mu) * inv;
      if (weight) y *= weight[k];
      if (bias) y += bias[k];
      v[base + k] = y;
    }
  }
  return out.finish();
});
