/**
 * CPU kernels of the fused linear ops made by the Q/DQ fusion pass
 * (lib/graph/passes/qdq_fusion.ts): `qlinear` (quantized activations and weights, exact
 * integer / fp8 products, float epilogue), `wlinear` (weight-only quantization) and `linear`
 * (float weights). The quantized (or fake-quantized) weight is computed once per weight and
 * scale and cached; a float weight's float64 copy is cached per weight.
 *
 * With attr `residual` (lib/graph/passes/residual_fusion.ts) the op's last input is a residual
 * of the output's shape and dtype: the result, rounded to the output dtype as without it, goes
 * through the `add` kernel with the residual (one more rounding), as the unfused graph does.
 * A qlinear with a folded attention (attr `attention`, lib/graph/passes/attention_qlinear.ts)
 * runs the attention kernel, then itself on the attention's result. With attr `weightCodes`
 * the weight input is a compressed weight's codes, read as they are.
 * @module
 */
import { objectIds } from "../../object_ids.ts";
import { decode, encode, type StorageArray } from "../../dtype.ts";
import type { Attrs } from "../../graph/node.ts";
import { unfoldedAttention } from "../../graph/passes/attention_qlinear.ts";
import { numel } from "../../shape.ts";
import { cpuKernel, type CpuKernelContext, registerCpuKernel } from "./backend.ts";
import { gemm } from "./matmul.ts";
import { gelu, geluTanh, outArray, read } from "./util.ts";

/** The activation a fused op applies after the bias. */
export function activationFn(name: unknown): (x: number) => number {
  switch (name) {
    case "relu":
      return (x) => (x > 0 ? x : Number.isNaN(x) ? NaN : 0);
    case "gelu":
      return gelu;
    case "gelu_tanh":
      return geluTanh;
    default:
      return (x) => x;
  }
}

/** Attrs of the weight's quantize/dequantize, as the quantize kernels read them. */
function weightQuantAttrs(attrs: Attrs, dtype: string): Attrs {
  return { dtype, mode: attrs.weightMode, dim: attrs.weightDim, blockSize: attrs.blockSize };
}

// Cache: weight storage → scale storage → form → prepared weight. Storage arrays are
// immutable; the form names everything else the prepared values depend on (quantized dtype,
// scale layout, a dequantize scale, the product's dtype), since one weight and scale may serve
// several forms.
const weightCache = new WeakMap<StorageArray, WeakMap<StorageArray, Map<string, Float64Array>>>();
/** A number naming a storage array for as long as it lives. */
const storageId = objectIds<StorageArray>();

function cachedWeight(
  w: StorageArray,
  s: StorageArray,
  form: string,
  make: () => Float64Array,
): Float64Array {
  let byScale = weightCache.get(w);
  if (!byScale) weightCache.set(w, byScale = new WeakMap());
  let byForm = byScale.get(s);
  if (!byForm) byScale.set(s, byForm = new Map());
  let v = byForm.get(form);
  if (!v) byForm.set(form, v = make());
  return v;
}

/**
 * The form key of a weight quantized with `attrs` (see {@link weightQuantAttrs}). The shapes
 * belong in it: a reshaped weight and scale share their storage with the originals, and the
 * same values read as another layout quantize to other codes.
 */
function formOf(
  attrs: Attrs,
  weightShape: readonly number[],
  scaleShape: readonly number[],
  ...more: (string | number)[]
): string {
  return JSON.stringify([
    attrs.dtype,
    attrs.mode,
    attrs.dim,
    attrs.blockSize,
    weightShape,
    scaleShape,
    ...more,
  ]);
}

function quantizeValues(
  x: StorageArray,
  s: StorageArray,
  ctx: CpuKernelContext,
  xi: number,
  si: number,
  attrs: Attrs,
): Float64Array {
  const info = { ...ctx.inputs[xi] };
  const q = cpuKernel("quantize")([x, s], {
    attrs,
    out: { shape: info.shape, dtype: attrs.dtype as "int8" },
    inputs: [info, ctx.inputs[si]],
  });
  return Float64Array.from(decode(attrs.dtype as "int8", q));
}

/**
 * `act(acc · scale[j] + bias[j])` per output column j, rounded once to the output dtype
 * (`scale` undefined: no multiply; no bias: + 0, as the unfused graph adds it), then the folded
 * residual if any.
 */
function epilogue(
  acc: Float64Array,
  ctx: CpuKernelContext,
  n: number,
  scale: Float64Array | undefined,
  bias: StorageArray | undefined,
  biasIndex: number,
  inputs: StorageArray[],
): StorageArray {
  const out = outArray(ctx.out.dtype, acc.length);
  const add = bias ? read(ctx.inputs[biasIndex].dtype, bias) : new Float64Array(n);
  const v = out.values;
  // Loops without calls per element where there is no activation (most products).
  const act = ctx.attrs.activation && ctx.attrs.activation !== "none"
    ? activationFn(ctx.attrs.activation)
    : undefined;
  for (let i = 0; i < acc.length; i += n) {
    if (scale && act) {
      for (let j = 0; j < n; j++) v[i + j] = act(acc[i + j] * scale[j] + add[j]);
    } else if (scale) { for (let j = 0; j < n; j++) v[i + j] = acc[i + j] * scale[j] + add[j]; }
    else if (act) { for (let j = 0; j < n; j++) v[i + j] = act(acc[i + j] + add[j]); }
    else for (let j = 0; j < n; j++) v[i + j] = acc[i + j] + add[j];
  }
  return withResidual(out.finish(), inputs, ctx);
}

/** Inputs of the op before a folded residual (attr `residual`: the last input). */
function ownInputs(ctx: CpuKernelContext): number {
  return ctx.inputs.length - (ctx.attrs.residual === true ? 1 : 0);
}

/**
 * `y` plus the folded residual (the last input) by the `add` kernel, as the unfused graph adds
 * it: both values in the output dtype, summed and rounded once. `y` unchanged without one.
 */
function withResidual(
  y: StorageArray,
  inputs: StorageArray[],
  ctx: CpuKernelContext,
): StorageArray {
  if (ctx.attrs.residual !== true) return y;
  const rAt = ctx.inputs.length - 1;
  return cpuKernel("add")([y, inputs[rAt]], {
    attrs: {},
    out: ctx.out,
    inputs: [ctx.out, ctx.inputs[rAt]],
  });
}

/**
 * A linear, qlinear or wlinear whose x is the input of a layer norm folded in by the fusion pass
 * (attrs `norm`: `{eps, hasWeight, hasBias}`, the norm's weight and bias after the op's `own`
 * inputs): the layer norm kernel, then the plain op on its output.
 */
function normalizedInput(inputs: StorageArray[], ctx: CpuKernelContext, own: number): StorageArray {
  const norm = ctx.attrs.norm as { eps: number; hasWeight: boolean; hasBias: boolean };
  // The norm's inputs end before a folded residual.
  const end = ownInputs(ctx);
  return cpuKernel("layerNorm")([inputs[0], ...inputs.slice(own, end)], {
    attrs: { dims: 1, eps: norm.eps, hasWeight: norm.hasWeight, hasBias: norm.hasBias },
    out: ctx.inputs[0],
    inputs: [ctx.inputs[0], ...ctx.inputs.slice(own, end)],
  });
}

/**
 * A qlinear whose attr `attention` folds in the attention that writes its x: input 0 is q, and
 * k, v (and kvLength) follow the qlinear's own inputs. Returns the attention's result as x
 * and the qlinear without the fold.
 */
function attentionInput(
  inputs: StorageArray[],
  ctx: CpuKernelContext,
): { inputs: StorageArray[]; ctx: CpuKernelContext } {
  const unfolded = unfoldedAttention(ctx.attrs);
  const dtype = ctx.inputs[0].dtype;
  const x = cpuKernel("attention")(unfolded.attentionOperands(inputs), {
    attrs: unfolded.attrs,
    out: { shape: unfolded.shape, dtype },
    inputs: unfolded.attentionOperands(ctx.inputs),
  });
  const xInfo = { shape: unfolded.xShape(ctx.out.shape, ctx.inputs[3].shape[1]), dtype };
  return {
    inputs: unfolded.qlinearOperands(x, inputs),
    ctx: {
      ...ctx,
      attrs: { ...ctx.attrs, attention: undefined },
      inputs: unfolded.qlinearOperands(xInfo, ctx.inputs),
    },
  };
}

registerCpuKernel("qlinear", (inputs, ctx) => {
  if (ctx.attrs.attention) {
    const inner = attentionInput(inputs, ctx);
    return cpuKernel("qlinear")(inner.inputs, inner.ctx);
  }
  const [sxq, sxd, w, swq, swd] = inputs.slice(1);
  const folded = ctx.attrs.norm !== undefined;
  const x = folded ? normalizedInput(inputs, ctx, ctx.attrs.hasBias ? 7 : 6) : inputs[0];
  // The inputs after the qlinear's own are a folded norm's, then a folded residual.
  const bias = ctx.attrs.hasBias ? inputs[6] : undefined;
  const [n, k] = ctx.inputs[3].shape;
  const m = numel(ctx.inputs[0].shape) / (k || 1);
  const qdtype = ctx.attrs.qdtype as string;
  const qx = quantizeValues(x, sxq, ctx, 0, 1, {
    dtype: qdtype,
    mode: "tensor",
    dim: null,
    blockSize: null,
  });
  const wAttrs = weightQuantAttrs(ctx.attrs, qdtype);
  const qw = cachedWeight(
    w,
    swq,
    formOf(
      wAttrs,
      ctx.inputs[3].shape,
      ctx.inputs[4].shape,
      ctx.inputs[3].dtype,
      ctx.inputs[4].dtype,
    ),
    () =>
      ctx.attrs.weightCodes
        ? Float64Array.from(decode(qdtype as "int8", w))
        : quantizeValues(w, swq, ctx, 3, 4, wAttrs),
  );
  const acc = new Float64Array(m * n);
  if (k > 0) gemm(qx, 0, qw, 0, acc, 0, m, n, k, true);
  const xs = read(ctx.inputs[2].dtype, sxd)[0];
  const ws = read(ctx.inputs[5].dtype, swd);
  const perChannel = ctx.attrs.weightMode === "channel";
  const scale = new Float64Array(n);
  for (let j = 0; j < n; j++) scale[j] = xs * ws[perChannel ? j : 0];
  return epilogue(acc, ctx, n, scale, bias, 6, inputs);
});

registerCpuKernel("wlinear", (inputs, ctx) => {
  const [, w, swq, swd] = inputs;
  const folded = ctx.attrs.norm !== undefined;
  const x = folded ? normalizedInput(inputs, ctx, ctx.attrs.hasBias ? 5 : 4) : inputs[0];
  // The inputs after the wlinear's own are a folded norm's, then a folded residual.
  const bias = ctx.attrs.hasBias ? inputs[4] : undefined;
  const [n, k] = ctx.inputs[1].shape;
  const m = numel(ctx.inputs[0].shape) / (k || 1);
  const qdtype = ctx.attrs.qdtype as string;
  const attrs = weightQuantAttrs(ctx.attrs, qdtype);
  const form = formOf(
    attrs,
    ctx.inputs[1].shape,
    ctx.inputs[2].shape,
    ctx.inputs[1].dtype,
    ctx.inputs[2].dtype,
    ctx.inputs[3].dtype,
    storageId(swd),
    String(ctx.inputs[3].shape),
    ctx.inputs[0].dtype,
  );
  const dqw = cachedWeight(w, swq, form, () => {
    // A compressed weight is its codes already (attr weightCodes).
    const q = ctx.attrs.weightCodes ? w : cpuKernel("quantize")([w, swq], {
      attrs,
      out: { shape: ctx.inputs[1].shape, dtype: qdtype as "int8" },
      inputs: [ctx.inputs[1], ctx.inputs[2]],
    });
    const dq = cpuKernel("dequantize")([q, swd], {
      attrs: { ...attrs, dtype: "float32" },
      out: { shape: ctx.inputs[1].shape, dtype: "float32" },
      inputs: [{ shape: ctx.inputs[1].shape, dtype: qdtype as "int8" }, ctx.inputs[3]],
    });
    // The fake-quant graph dequantizes to the matmul's dtype: round the same way.
    const dtype = ctx.inputs[0].dtype;
    const rounded = dtype === "float32" ? dq : encode(dtype, dq as Float32Array);
    return Float64Array.from(read(dtype, rounded));
  });
  const acc = new Float64Array(m * n);
  if (k > 0) {
    gemm(Float64Array.from(read(ctx.inputs[0].dtype, x)), 0, dqw, 0, acc, 0, m, n, k, true);
  }
  return epilogue(acc, ctx, n, undefined, bias, 4, inputs);
});

// Float weights as float64 `[N, K]` rows (already the Bᵀ layout gemm takes), per storage.
const floatWeights = new WeakMap<StorageArray, Float64Array>();

registerCpuKernel("linear", (inputs, ctx) => {
  const w = inputs[1];
  const x = ctx.attrs.norm !== undefined
    ? normalizedInput(inputs, ctx, ctx.attrs.hasBias ? 3 : 2)
    : inputs[0];
  // A folded residual may follow: the bias is input 2 only when there is one.
  const bias = ctx.attrs.hasBias ? inputs[2] : undefined;
  const [n, k] = ctx.inputs[1].shape;
  // From the output: with K = 0 the input is empty but the output is act(bias).
  const m = n > 0 ? numel(ctx.out.shape) / n : 0;
  const acc = new Float64Array(m * n);
  if (k > 0 && acc.length > 0) {
    let wt = floatWeights.get(w);
    if (!wt) floatWeights.set(w, wt = Float64Array.from(read(ctx.inputs[1].dtype, w)));
    gemm(Float64Array.from(read(ctx.inputs[0].dtype, x)), 0, wt, 0, acc, 0, m, n, k, true);
  }
  return epilogue(acc, ctx, n, undefined, bias, 2, inputs);
});
