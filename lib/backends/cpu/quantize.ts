/**
 * CPU kernels of `quantize`, `dequantize` and `checkScale` (rules and attrs in
 * lib/ops/quantize.ts).
 *
 * Every input value is a float32 (decoded exactly), so `Math.fround(x / s)` is the correctly
 * rounded float32 quotient: the float64 quotient of two float32 values rounds to the same
 * float32 as a direct float32 division (53 >= 2 · 24 + 2 bits, so double rounding is
 * harmless). Likewise `Math.fround(q * s)` is the float32 product.
 * @module
 */
import {
  encode,
  float32ToFloat8e4m3Bits,
  roundHalfToEven,
  type StorageArray,
} from "../../dtype.ts";
import type { Attrs } from "../../graph/node.ts";
import { checkScaleArray } from "../../ops/quantize.ts";
import type { Shape } from "../../shape.ts";
import { registerCpuKernel } from "./backend.ts";
import { read } from "./util.ts";

/**
 * For each element of a tensor of `shape`, the flat index of its scale under the mode in
 * `attrs` (see lib/ops/quantize.ts). Returns undefined for per-tensor (always index 0).
 */
function scaleIndex(shape: Shape, attrs: Attrs): Int32Array | undefined {
  const mode = attrs.mode as string;
  if (mode === "tensor") return undefined;
  const dim = attrs.dim as number;
  const block = mode === "block" ? (attrs.blockSize as number) : 1;
  let outer = 1;
  for (let i = 0; i < dim; i++) outer *= shape[i];
  let inner = 1;
  for (let i = dim + 1; i < shape.length; i++) inner *= shape[i];
  const extent = shape[dim];
  // ONNX opset 21: ceil(extent / block) scales along dim, the last block possibly shorter.
  const blocks = Math.ceil(extent / block);
  const idx = new Int32Array(outer * extent * inner);
  let k = 0;
  for (let o = 0; o < outer; o++) {
    for (let d = 0; d < extent; d++) {
      // Per-channel scales are 1-D: the outer index does not enter.
      const row = mode === "block" ? (o * blocks + Math.floor(d / block)) * inner : d;
      for (let i = 0; i < inner; i++) idx[k++] = mode === "block" ? row + i : row;
    }
  }
  return idx;
}

registerCpuKernel("quantize", ([sx, ss], ctx) => {
  const x = read(ctx.inputs[0].dtype, sx);
  const s = read(ctx.inputs[1].dtype, ss);
  const map = scaleIndex(ctx.inputs[0].shape, ctx.attrs);
  const n = x.length;
  const target = ctx.out.dtype;
  if (target === "float8e4m3") {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      // The float32 quotient, then one RNE rounding to e4m3fn (saturating, NaN → 0x7f).
      out[i] = float32ToFloat8e4m3Bits(Math.fround(x[i] / s[map ? map[i] : 0]));
    }
    return out;
  }
  const lo = target === "int4" ? -8 : -128;
  const hi = target === "int4" ? 7 : 127;
  const out = new Int8Array(n);
  for (let i = 0; i < n; i++) {
    const r = roundHalfToEven(Math.fround(x[i] / s[map ? map[i] : 0]));
    // NaN fails both comparisons and the assignment stores 0.
    out[i] = r <= lo ? lo : r >= hi ? hi : r;
  }
  return out;
});

registerCpuKernel("dequantize", ([sq, ss], ctx): StorageArray => {
  const q = read(ctx.inputs[0].dtype, sq);
  const s = read(ctx.inputs[1].dtype, ss);
  const map = scaleIndex(ctx.inputs[0].shape, ctx.attrs);
  const n = q.length;
  const product = new Float32Array(n); // rounds each product to float32 on assignment
  for (let i = 0; i < n; i++) product[i] = q[i] * s[map ? map[i] : 0];
  // float16/bfloat16: one RNE rounding of the float32 product.
  return ctx.out.dtype === "float32" ? product : encode(ctx.out.dtype, product);
});

registerCpuKernel("checkScale", ([ss], ctx): StorageArray => {
  checkScaleArray(ctx.attrs.op as string, read(ctx.inputs[0].dtype, ss));
  return ss.slice();
});
