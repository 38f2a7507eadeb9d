/**
 * CPU kernels of the elementwise ops (rules in lib/ops/elementwise.ts). Math runs in float64
 * on decoded values and rounds once to the output dtype.
 * @module
 */
import { encode, stickyNumber } from "../../dtype.ts";
import { numel } from "../../shape.ts";
import { type CpuKernelContext, registerCpuKernel } from "./backend.ts";
import { broadcastIndex, gelu, geluTanh, outArray, read } from "./util.ts";

type BinaryFn = (a: number, b: number) => number;
type UnaryFn = (x: number) => number;

const INT_DTYPES = new Set(["int8", "int32", "int64", "int4"]);

function nanMax(a: number, b: number): number {
  return Number.isNaN(a) || Number.isNaN(b) ? NaN : a > b ? a : b;
}
function nanMin(a: number, b: number): number {
  return Number.isNaN(a) || Number.isNaN(b) ? NaN : a < b ? a : b;
}

/**
 * pow with IEEE 754's (and C's powf, which the CUDA kernels call) special cases where
 * JavaScript's differs: 1^y is 1 for every y (NaN too), and (−1)^±∞ is 1.
 */
function ieeePow(a: number, b: number): number {
  if (a === 1 || (a === -1 && (b === Infinity || b === -Infinity))) return 1;
  return Math.pow(a, b);
}

const binaryOps: Record<string, { float: BinaryFn; int?: BinaryFn }> = {
  add: { float: (a, b) => a + b },
  sub: { float: (a, b) => a - b },
  mul: { float: (a, b) => a * b, int: (a, b) => Math.imul(a, b) },
  div: { float: (a, b) => a / b, int: (a, b) => (b === 0 ? 0 : Math.trunc(a / b)) },
  pow: { float: ieeePow },
  maximum: { float: nanMax },
  minimum: { float: nanMin },
  equal: { float: (a, b) => (a === b ? 1 : 0) },
  notEqual: { float: (a, b) => (a !== b ? 1 : 0) },
  less: { float: (a, b) => (a < b ? 1 : 0) },
  lessEqual: { float: (a, b) => (a <= b ? 1 : 0) },
  greater: { float: (a, b) => (a > b ? 1 : 0) },
  greaterEqual: { float: (a, b) => (a >= b ? 1 : 0) },
};

// int64 arithmetic in BigInt: exact and wrapping (BigInt64Array stores modulo 2^64).
const int64Ops: Record<string, (a: bigint, b: bigint) => bigint | boolean> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => (b === 0n ? 0n : a / b),
  maximum: (a, b) => (a > b ? a : b),
  minimum: (a, b) => (a < b ? a : b),
  equal: (a, b) => a === b,
  notEqual: (a, b) => a !== b,
  less: (a, b) => a < b,
  lessEqual: (a, b) => a <= b,
  greater: (a, b) => a > b,
  greaterEqual: (a, b) => a >= b,
};

function int64Binary(op: string, sa: BigInt64Array, sb: BigInt64Array, ctx: CpuKernelContext) {
  const f = int64Ops[op];
  const n = numel(ctx.out.shape);
  const mapA = broadcastIndex(ctx.inputs[0].shape, ctx.out.shape);
  const mapB = broadcastIndex(ctx.inputs[1].shape, ctx.out.shape);
  const boolOut = ctx.out.dtype === "bool";
  const out = boolOut ? new Uint8Array(n) : new BigInt64Array(n);
  for (let i = 0; i < n; i++) {
    const r = f(sa[mapA ? mapA[i] : i], sb[mapB ? mapB[i] : i]);
    if (boolOut) (out as Uint8Array)[i] = r ? 1 : 0;
    else (out as BigInt64Array)[i] = r as bigint;
  }
  return out;
}

for (const [op, fns] of Object.entries(binaryOps)) {
  registerCpuKernel(op, ([sa, sb], ctx) => {
    const [ia, ib] = ctx.inputs;
    if (ia.dtype === "int64" && int64Ops[op]) {
      return int64Binary(op, sa as BigInt64Array, sb as BigInt64Array, ctx);
    }
    const a = read(ia.dtype, sa);
    const b = read(ib.dtype, sb);
    const f = INT_DTYPES.has(ia.dtype) && fns.int ? fns.int : fns.float;
    const out = outArray(
      ctx.out.dtype,
      numel(ctx.out.shape),
    );
    const v = out.values;
    const n = v.length;
    const mapA = broadcastIndex(ia.shape, ctx.out.shape);
    const mapB = broadcastIndex(ib.shape, ctx.out.shape);
    if (!mapA && !mapB) { for (let i = 0; i < n; i++) v[i] = f(a[i], b[i]); }
    else if (!mapA) { for (let i = 0; i < n; i++) v[i] = f(a[i], b[mapB![i]]); }
    else if (!mapB) { for (let i = 0; i < n; i++) v[i] = f(a[mapA[i]], b[i]); }
    else for (let i = 0; i < n; i++) v[i] = f(a[mapA[i]], b[mapB[i]]);
    return out.finish();
  });
}

const unaryOps: Record<string, UnaryFn> = {
  neg: (x) => -x,
  abs: (x) => Math.abs(x),
  relu: (x) => (x > 0 ? x : Number.isNaN(x) ? NaN : 0),
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  tanh: Math.tanh,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
};

const int64Unary: Record<string, (x: bigint) => bigint> = {
  neg: (x) => -x,
  abs: (x) => (x < 0n ? -x : x),
  relu: (x) => (x > 0n ? x : 0n),
};

for (const [op, f] of Object.entries(unaryOps)) {
  registerCpuKernel(op, ([s], ctx) => {
    if (ctx.inputs[0].dtype === "int64") {
      // BigInt64Array stores modulo 2^64: -(-2^63) wraps to -2^63, as in C.
      return BigInt64Array.from(s as BigInt64Array, int64Unary[op]);
    }
    const x = read(ctx.inputs[0].dtype, s);
    const out = outArray(ctx.out.dtype, x.length);
    const v = out.values;
    for (let i = 0; i < x.length; i++) v[i] = f(x[i]);
    return out.finish();
  });
}

registerCpuKernel("gelu", ([s], ctx) => {
  const x = read(ctx.inputs[0].dtype, s);
  const out = outArray(ctx.out.dtype, x.length);
  const v = out.values;
  // One loop per form: a call site that sees one function is inlined.
  if (ctx.attrs.approximate === "tanh") {
    for (let i = 0; i < x.length; i++) v[i] = geluTanh(x[i]);
  } else for (let i = 0; i < x.length; i++) v[i] = gelu(x[i]);
  return out.finish();
});

registerCpuKernel("where", ([sc, sa, sb], ctx) => {
  const [ic, ia, ib] = ctx.inputs;
  const c = read(ic.dtype, sc);
  const a = read(ia.dtype, sa);
  const b = read(ib.dtype, sb);
  const n = numel(ctx.out.shape);
  const mc = broadcastIndex(ic.shape, ctx.out.shape);
  const ma = broadcastIndex(ia.shape, ctx.out.shape);
  const mb = broadcastIndex(ib.shape, ctx.out.shape);
  if (ctx.out.dtype === "int64") {
    const A = sa as BigInt64Array, B = sb as BigInt64Array, r = new BigInt64Array(n);
    for (let i = 0; i < n; i++) r[i] = c[mc ? mc[i] : i] ? A[ma ? ma[i] : i] : B[mb ? mb[i] : i];
    return r;
  }
  // Select, then re-encode: exact, since every selected value is representable in the dtype.
  const vals = new Float64Array(n);
  for (let i = 0; i < n; i++) vals[i] = c[mc ? mc[i] : i] ? a[ma ? ma[i] : i] : b[mb ? mb[i] : i];
  return encode(ctx.out.dtype, vals);
});

registerCpuKernel("cast", ([s], ctx) => {
  const from = ctx.inputs[0].dtype;
  const to = ctx.out.dtype;
  if (from === to) return s;
  if (from === "int64" && to !== "bool") {
    // Number() rounds to 53 bits and a narrower float type would round again: stickyNumber.
    const src = s as BigInt64Array;
    const narrow = to === "float32" || to === "float16" || to === "bfloat16";
    return encode(to, Float64Array.from(src, (x) => (narrow ? stickyNumber(x) : Number(x))));
  }
  return encode(to, read(from, s));
});
