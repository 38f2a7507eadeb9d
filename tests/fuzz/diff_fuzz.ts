// deno-lint-ignore-file no-explicit-any
/**
 * Differential fuzzer for tensorq. Each case is a random graph of 3-12 ops over random tensors,
 * built and evaluated on "cpu" node by node (the reference: every intermediate value is the op's
 * own semantics, no fusion) and then on the device in three ways:
 *  - eager:    the whole graph, graph passes / fusions on;
 *  - compile:  the same function through `tq.compile` (CUDA graphs on CUDA);
 *  - isolated: every op alone, fed the reference's own input values, checked against its local
 *              tolerance only (pins a failure to one op; catches what chained bounds would hide).
 * Outputs are compared elementwise against a bound propagated through the graph from the
 * reference's intermediate values, so chained ops, comparisons, casts and quantize boundaries do
 * not raise false alarms. A TensorqError on the device but not on the CPU (or the reverse) is a
 * finding. Exit code 0 whatever the findings; read OUT/report.json and OUT/summary.txt.
 *
 * Run:  deno run -A tests/fuzz/diff_fuzz.ts --seed 1 --cases 400 --device cuda --out OUT
 *       [--time-limit 240]
 * More: --only K (case K alone), --no-compile, --no-isolated, --max-numel N (65536),
 *       --verbose, --tq-url URL (module URL for repro snippets; found automatically).
 * Harness self-tests (CPU only): --device cpu must report 0 failures except the known
 * dequantize-overflow class; --simulate replaces the device by a CPU run whose every op output is
 * nudged by up to 90% of that op's local tolerance (must report 0 failures: the bounds are
 * sound); --mutate does the same plus one wrong element per case (must report failures).
 *
 * Tolerances (per element; ulp_dt(y) = spacing of the output dtype at |y|, u32 = 2^-24,
 * u_dt = unit roundoff of the dtype; every local term below is doubled (SAFETY = 2)):
 *  - add/sub/mul/div 1 ulp (float16/bfloat16 compute in float32, then round: double rounding);
 *    max/min/neg/abs/relu/where/cast/shape ops exact; comparisons/argmax/int results exact.
 *  - exp/log/tanh/sigmoid/pow 4 ulp in float32, 1 ulp in float16/bfloat16; sqrt/rsqrt 1 ulp;
 *    gelu + 8·u32·(|x·g'(x)| + |g(x)|·(1 + x² + 2|u|)) for float32 argument rounding.
 *  - sum/mean over R: (R + 2)·u32·Σ|x| + 1 ulp (float32 accumulation: a few ulps times R);
 *    var: 4·(R + 2)·u32·(Σ(x-μ)² + max|x|·Σ|x-μ|)/(R - c) + 1 ulp; max/min exact.
 *  - matmul over K: (K + 4)·u32·(|A|·|B|) + 1 ulp; + 2·u_dt·|A||B| where an operand is a
 *    float16/bfloat16 dequantize (fused qlinear/wlinear skip that rounding); + (K + 4)·2^-13·|A||B|
 *    for float16/bfloat16 fp8 qlinear (README: e4m3 tensor cores accumulate narrower than f32).
 *  - softmax p·u32·(4 + 2|x - max| + 2R) + 1 ulp; logSoftmax u32·(4 + 2|x - max| + 2|lse| + 2R)
 *    + 1 ulp; layerNorm (8 + 2·log2 R + R/32)·u32·(1 + |ŷ|)·(2 + |μ|/σ)·|w| + 4·u32·|y| + 1 ulp.
 *  - attention: score error (D + 4)·u32·Σ|q·k| + 4·u32·|s| enters the softmax bound; output
 *    (2·u_dt + (S + 4)·u32)·Σp|v| + 1 ulp (float16/bfloat16 probabilities in flash kernels).
 *    A −∞ score drops its key; a NaN or +∞ score makes its row exact, a non-finite v value
 *    its column.
 *  - quantize codes (int8/int4/e4m3): exact, except where the float64 quotient x/scale lies within
 *    4·u32 (relative) of a rounding boundary (the neighbouring code is allowed), or where the
 *    input's propagated interval x ± E straddles one; dequantize: exact for exact codes, else
 *    the values of the reachable codes.
 *  - NaN must match NaN and ±Inf must match ±Inf wherever the bound is finite.
 * Propagation: monotone functions map the interval x ± E by its ends; mul/div/pow by corners;
 * sums and products by Σ|x|·E; where: |a - b| + max(E) when the condition is ambiguous;
 * softmax/layerNorm/attention by first-order bounds; shape ops move bounds with the library's own
 * shape ops. Elements whose result is genuinely ambiguous (overlapping comparison operands, a
 * truncation or argmax that may go either way, possible overflow) are excused (E = ∞); the
 * summary reports how many.
 * Documented behaviours that are allowed: the fp8 accumulator above, and NaN from a -∞ product
 * in a float16/bfloat16 tanh-GELU epilogue.
 */
// The library under test; repro snippets import it from where this file found it.
import * as tq from "../../mod.ts";
import { parseArgs } from "node:util";

type Tensor = tq.Tensor;
type DType = tq.DType;
type Node = tq.Node;

// ------------------------------------------------------------------------------------------
// Arguments

const { values: argv } = parseArgs({
  args: Deno.args,
  options: {
    seed: { type: "string", default: "1" },
    cases: { type: "string", default: "400" },
    out: { type: "string", default: "diff_fuzz_out" },
    device: { type: "string", default: "cuda" },
    "time-limit": { type: "string", default: "240" },
    only: { type: "string" },
    "no-compile": { type: "boolean", default: false },
    "max-numel": { type: "string", default: "65536" },
    verbose: { type: "boolean", default: false },
    "tq-url": { type: "string" },
    simulate: { type: "boolean", default: false },
    "no-isolated": { type: "boolean", default: false },
    mutate: { type: "boolean", default: false },
  },
});
const SEED = Number(argv.seed);
const CASES = Number(argv.cases);
const OUT_DIR = String(argv.out);
const DEVICE = String(argv.device);
const TIME_LIMIT_S = Number(argv["time-limit"]);
const ONLY = argv.only === undefined ? undefined : Number(argv.only);
const DO_COMPILE = !argv["no-compile"];
const DO_ISOLATED = !argv["no-isolated"];
const MAX_NUMEL = Number(argv["max-numel"]);
const VERBOSE = !!argv.verbose;
const MAX_MACS = 4_000_000;
/**
 * --simulate (harness self-test, CPU only): instead of a device, a CPU run in which every op's
 * output is perturbed by up to 90% of that op's own local tolerance before later ops read it,
 * i.e. a device that is within tolerance at every op. Any mismatch then means the propagated
 * bounds are unsound.
 */
const SIMULATE = !!argv.simulate || !!argv.mutate;
/** --mutate (harness self-test): --simulate plus one wrong element in one random step. */
const MUTATE = !!argv.mutate;

/** The URL of the module under test, for repro snippets (from a library stack frame). */
function tqModuleUrl(): string {
  if (argv["tq-url"]) return String(argv["tq-url"]);
  try {
    tq.reshape(undefined as unknown as Tensor, []);
  } catch (e) {
    const m = /((?:file|https?):\/\/[^\s()]+?)\/lib\/[^\s()]+:\d+:\d+/.exec(
      String((e as Error).stack),
    );
    if (m) return `${m[1]}/mod.ts`;
  }
  return "<path to tensorq mod.ts>";
}
const TQ_URL = tqModuleUrl();

// ------------------------------------------------------------------------------------------
// PRNG (xoshiro128**, seeded by splitmix32 of the seed and the case index)

class Rng {
  private s = new Uint32Array(4);
  constructor(seed: number, stream: number) {
    let x = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(stream + 0x632be5ab, 0x85ebca6b)) >>> 0;
    const next = () => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    for (let i = 0; i < 4; i++) this.s[i] = next();
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }
  u32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }
  f(): number {
    return (this.u32() + (this.u32() >>> 11) / 2097152) / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.f() * (hi - lo + 1));
  }
  pick<T>(a: readonly T[]): T {
    return a[Math.floor(this.f() * a.length)];
  }
  chance(p: number): boolean {
    return this.f() < p;
  }
  normal(): number {
    const u = 1 - this.f(), v = this.f();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  weighted<T>(items: readonly [T, number][]): T {
    const total = items.reduce((s, [, w]) => s + w, 0);
    let r = this.f() * total;
    for (const [v, w] of items) if ((r -= w) < 0) return v;
    return items[items.length - 1][0];
  }
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(0, i);
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }
}
function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

// ------------------------------------------------------------------------------------------
// Host numerics

const U32 = 2 ** -24;
/** Per-addition error allowed for the e4m3 tensor cores' accumulator (README: narrower than f32). */
const FP8_ACC = 2 ** -13;
const SAFETY = 2;
interface FInfo {
  mant: number;
  emin: number;
  max: number;
}
const FINFO: Partial<Record<DType, FInfo>> = {
  float32: { mant: 23, emin: -126, max: 3.4028234663852886e38 },
  float16: { mant: 10, emin: -14, max: 65504 },
  bfloat16: { mant: 7, emin: -126, max: 3.3895313892515355e38 },
  float8e4m3: { mant: 3, emin: -6, max: 448 },
};
const FLOATS: DType[] = ["float32", "float16", "bfloat16"];
const isFloat = (dt: DType) => FINFO[dt] !== undefined;
const isArith = (dt: DType) => FLOATS.includes(dt);
const INT_RANGE: Partial<Record<DType, [number, number]>> = {
  int4: [-8, 7],
  int8: [-128, 127],
  int32: [-2147483648, 2147483647],
};

function floorLog2(a: number): number {
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  return e;
}
function ulp(dt: DType, v: number): number {
  const f = FINFO[dt];
  if (!f) return 0;
  const a = Math.abs(v);
  if (!Number.isFinite(a)) return 0;
  const e = a === 0 ? f.emin : Math.max(floorLog2(a), f.emin);
  return 2 ** (e - f.mant);
}
function unitRound(dt: DType): number {
  const f = FINFO[dt];
  return f ? 2 ** -(f.mant + 1) : 0;
}
function overflowThr(dt: DType): number {
  const f = FINFO[dt];
  if (!f || dt === "float8e4m3") return Infinity;
  return f.max + ulp(dt, f.max) / 2;
}
function rne(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}
/** Rounds a float64 once to a float dtype (RNE; float8e4m3 saturates). */
function roundTo(dt: DType, v: number): number {
  if (Number.isNaN(v)) return NaN;
  const f = FINFO[dt];
  if (!f) return v;
  if (dt === "float32") return Math.fround(v);
  const s = v < 0 || Object.is(v, -0) ? -1 : 1;
  const a = Math.abs(v);
  if (a === Infinity) return dt === "float8e4m3" ? s * f.max : v;
  if (a === 0) return v;
  const e = Math.max(floorLog2(a), f.emin);
  const q = 2 ** (e - f.mant);
  let r = rne(a / q) * q;
  if (r > f.max) r = dt === "float8e4m3" ? f.max : Infinity;
  return s * r;
}
/** Float → integer cast: NaN → 0, truncation toward zero, saturation. */
function castInt(dt: DType, v: number): number {
  if (Number.isNaN(v)) return 0;
  const [lo, hi] = INT_RANGE[dt] ?? [-Infinity, Infinity];
  const t = Math.trunc(v);
  return t < lo ? lo : t > hi ? hi : t === 0 ? 0 : t;
}
/** The code quantize gives for a (float64) quotient v. */
function codeOf(qdt: DType, v: number): number {
  if (qdt === "float8e4m3") return roundTo("float8e4m3", v);
  if (Number.isNaN(v)) return 0;
  const [lo, hi] = INT_RANGE[qdt]!;
  const r = v === Infinity ? hi : v === -Infinity ? lo : rne(v);
  return r < lo ? lo : r > hi ? hi : r;
}
/** erfc with relative error < 1.2e-7 (Numerical Recipes' erfcc); enough for bounds. */
function erfc(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r = t * Math.exp(
    -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                  t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                  t * (-0.82215223 + t * 0.17087277)))))))),
  );
  return x >= 0 ? r : 2 - r;
}
const Phi = (x: number) => 0.5 * erfc(-x / Math.SQRT2);
const phi = (x: number) => Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
const geluD = (x: number) => (Number.isFinite(x) ? Phi(x) + x * phi(x) : x > 0 ? 1 : 0);

const UNARY_F: Record<string, (x: number) => number> = {
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  rsqrt: (x) => 1 / Math.sqrt(x),
  tanh: Math.tanh,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  gelu: (x) => 0.5 * x * erfc(-x / Math.SQRT2),
};

function numel(s: readonly number[]): number {
  return s.reduce((a, b) => a * b, 1);
}
function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
function broadcast(a: readonly number[], b: readonly number[]): number[] | undefined {
  const r = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const da = a[a.length - r + i] ?? 1, db = b[b.length - r + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) return undefined;
    out.push(da === 1 ? db : da);
  }
  return out;
}
function stridesOf(s: readonly number[]): number[] {
  const st = new Array<number>(s.length);
  let acc = 1;
  for (let i = s.length - 1; i >= 0; i--) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}
function unravel(i: number, shape: readonly number[]): number[] {
  const st = stridesOf(shape);
  return shape.map((_, d) => Math.floor(i / st[d]) % shape[d]);
}
function divisors(n: number): number[] {
  const out: number[] = [];
  for (let d = 1; d * d <= n; d++) {
    if (n % d === 0) {
      out.push(d);
      if (d * d !== n) out.push(n / d);
    }
  }
  return out.sort((a, b) => a - b);
}
/** A JS literal for a number (NaN, ±Infinity, -0 included). */
function num(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "Infinity";
  if (v === -Infinity) return "-Infinity";
  if (Object.is(v, -0)) return "-0";
  return String(v);
}
const J = (v: unknown) => JSON.stringify(v);
const shortDT: Record<string, string> = {
  float32: "f32",
  float16: "f16",
  bfloat16: "bf16",
  float8e4m3: "f8",
  int4: "i4",
  int8: "i8",
  int32: "i32",
  int64: "i64",
  bool: "bool",
};
const desc = (shape: readonly number[], dt: DType) => `${shortDT[dt]}[${shape.join(",")}]`;

function readF64(t: Tensor): Float64Array {
  const d = t.dataSync();
  if (d instanceof BigInt64Array) return Float64Array.from(d, (x) => Number(x));
  return Float64Array.from(d as ArrayLike<number>);
}

// ------------------------------------------------------------------------------------------
// Values, steps, environments

interface RV {
  shape: number[];
  dtype: DType;
  ref: Float64Array;
  E: Float64Array;
  t?: Tensor;
  producer?: string;
}
interface Val extends RV {
  id: number;
  t: Tensor;
  leaf?: { role: "arg" | "const" };
  hidden?: boolean; // a module's parameter: not offered to other ops
  step?: Step;
  consumers: number;
}
interface Step {
  idx: number;
  kind: string;
  label: string;
  ins: number[];
  out: number;
  p: Record<string, any>;
  setup?: string;
  code: string;
  fresh: number[]; // leaves the setup code creates fresh (module parameters)
}
interface Env {
  device: string;
  V: Tensor[];
  M: Record<number, tq.Linear>;
  LEAF: (id: number) => Tensor;
  FRESH: (id: number) => Tensor;
  created: Tensor[];
}

const fnCache = new Map<string, (...a: unknown[]) => unknown>();
function runCode(code: string, env: Env): void {
  let fn = fnCache.get(code);
  if (!fn) {
    fn = new Function("tq", "V", "M", "LEAF", "FRESH", code) as (...a: unknown[]) => unknown;
    fnCache.set(code, fn);
  }
  fn(tq, env.V, env.M, env.LEAF, env.FRESH);
}

/** A tensor on `device` from a value's decoded data (exact: the data are the dtype's values). */
function mkTensor(data: Float64Array, shape: number[], dtype: DType, device: string): Tensor {
  let arr: Float32Array | Int32Array | Int8Array | Uint8Array;
  if (isFloat(dtype)) arr = Float32Array.from(data);
  else if (dtype === "int32") arr = Int32Array.from(data);
  else if (dtype === "int8" || dtype === "int4") arr = Int8Array.from(data);
  else if (dtype === "bool") arr = Uint8Array.from(data);
  else throw new Error(`mkTensor: dtype ${dtype}`);
  return tq.tensor(arr, { shape, dtype, device });
}

/** Evaluates every unrealized node behind t one at a time, in order: the ops' own semantics. */
function realizeInOrder(t: Tensor): void {
  const order: Node[] = [];
  const seen = new Set<Node>();
  const visit = (n: Node) => {
    if (n.realized || seen.has(n)) return;
    seen.add(n);
    for (const i of n.inputs) visit(i);
    order.push(n);
  };
  visit(t.node);
  // Evaluating op by op is deliberate here: silence the library's "Q/DQ fusion lost" warning.
  const warn = console.warn;
  console.warn = (...a: unknown[]) => {
    if (!String(a[0]).includes("fusion lost")) warn(...a);
  };
  try {
    for (const n of order) new tq.Tensor(n).evaluate();
  } finally {
    console.warn = warn;
  }
}

function errText(e: unknown): string {
  if (e instanceof tq.TensorqError) return `TensorqError(${e.kind}): ${e.message}`;
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

// ------------------------------------------------------------------------------------------
// Error-bound rules

type GetE = (v: RV) => Float64Array;
const zerosCache = new Map<number, Float64Array>();
function zerosOf(n: number): Float64Array {
  let z = zerosCache.get(n);
  if (!z) zerosCache.set(n, z = new Float64Array(n));
  return z;
}
const anyPos = (a: Float64Array) => a.some((x) => x !== 0);

function eTensor(E: Float64Array, shape: number[]): Tensor {
  const f = new Float32Array(E.length);
  for (let i = 0; i < E.length; i++) {
    const e = E[i];
    f[i] = e === 0 ? 0 : Number.isNaN(e) ? Infinity : Math.fround(e * (1 + 2 ** -20) + 1.5e-45);
  }
  return tq.tensor(f, { shape });
}
function refTensor(v: RV): Tensor {
  return v.t ?? mkTensor(v.ref, v.shape, v.dtype, "cpu");
}
function bcastRef(v: RV, shape: number[]): Float64Array {
  if (sameShape(v.shape, shape)) return v.ref;
  if (v.ref.length === 1) return new Float64Array(numel(shape)).fill(v.ref[0]);
  return readF64(tq.expand(refTensor(v), shape));
}
function bcastE(v: RV, shape: number[], getE: GetE): Float64Array {
  const E = getE(v);
  if (sameShape(v.shape, shape)) return E;
  if (!anyPos(E)) return zerosOf(numel(shape));
  if (E.length === 1) return new Float64Array(numel(shape)).fill(E[0]);
  return readF64(tq.expand(eTensor(E, v.shape), shape));
}

/** Adds the output rounding and excuses values that may overflow (finite y only). */
function fin(dt: DType, y: number, e: number, addRound: boolean): number {
  if (Number.isNaN(e)) return Infinity;
  if (dt === "bool") return e > 0 ? Infinity : 0;
  if (!isFloat(dt)) return e > 0 ? Math.ceil(e - 1e-9) : 0;
  if (!Number.isFinite(y)) return e;
  if (addRound && e > 0) e += ulp(dt, y);
  if (Math.abs(y) + e >= overflowThr(dt)) return Infinity;
  return e;
}

/** For a non-finite y from finite operands (an overflow): certain only far past the threshold. */
function overflowE(dt: DType, v64: number, spread: number): number {
  if (!Number.isFinite(v64)) return spread > 0 ? Infinity : 0;
  return Math.abs(v64) - spread - 16 * U32 * Math.abs(v64) >= overflowThr(dt) ? 0 : Infinity;
}

function localK(op: string, dt: DType): number {
  if (op === "sqrt" || op === "rsqrt") return 1;
  return dt === "float32" ? 4 : 1;
}

function ruleUnary(op: string, x: RV, y: RV, getE: GetE, approx: string): Float64Array {
  const X = x.ref, EX = getE(x), Y = y.ref, dt = y.dtype;
  const out = new Float64Array(Y.length);
  for (let i = 0; i < Y.length; i++) {
    const xi = X[i], ei = EX[i], yi = Y[i];
    if (ei === Infinity) {
      out[i] = Infinity;
      continue;
    }
    if (op === "neg" || op === "abs" || op === "relu") {
      out[i] = fin(dt, yi, ei, false);
      continue;
    }
    if (!Number.isFinite(xi)) {
      // Documented: a float16/bfloat16 Linear whose tanh GELU runs in cuBLASLt's epilogue gives
      // NaN for a -∞ product (as PyTorch does).
      const doc = op === "gelu" && approx === "tanh" && xi === -Infinity && dt !== "float32";
      out[i] = ei > 0 || doc ? Infinity : 0;
      continue;
    }
    let prop = 0, local = localK(op, dt) * ulp(dt, yi);
    if (op === "gelu") {
      if (ei > 0) {
        const d = Math.max(Math.abs(geluD(xi - ei)), Math.abs(geluD(xi)), Math.abs(geluD(xi + ei)));
        prop = ei * Math.min(1.2, 1.2 * d + 0.2 * ei);
      }
      const u = Math.abs(0.7978845608 * (xi + 0.044715 * xi * xi * xi));
      local += 8 * U32 * (Math.abs(xi * geluD(xi)) + Math.abs(yi) * (1 + xi * xi + 2 * u));
    } else {
      const F = UNARY_F[op];
      const f0 = F(xi);
      if (ei > 0) {
        const a = F(xi + ei), b = F(xi - ei);
        if (Number.isNaN(a) !== Number.isNaN(f0) || Number.isNaN(b) !== Number.isNaN(f0)) {
          prop = Infinity;
        } else if (Number.isNaN(f0)) prop = 0; // NaN over the whole interval (monotone F)
        else prop = Math.max(Math.abs(a - f0), Math.abs(b - f0));
      }
      if (!Number.isFinite(yi) && Number.isFinite(f0)) {
        out[i] = overflowE(dt, f0, prop + SAFETY * local);
        continue;
      }
    }
    out[i] = fin(dt, yi, prop + SAFETY * local, prop > 0);
  }
  return out;
}

const BIN_F: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  pow: (a, b) => (a === 1 || (a === -1 && !Number.isFinite(b) && !Number.isNaN(b)) ? 1 : a ** b),
  maximum: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.max(a, b)),
  minimum: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.min(a, b)),
};
const mE = (x: number, e: number) => (e === 0 ? 0 : Math.abs(x) * e);

function ruleBinary(op: string, a: RV, b: RV, y: RV, getE: GetE): Float64Array {
  const shape = y.shape, dt = y.dtype;
  const A = bcastRef(a, shape), B = bcastRef(b, shape);
  const EA = bcastE(a, shape, getE), EB = bcastE(b, shape, getE);
  const Y = y.ref;
  const isInt = !isFloat(dt);
  const f = BIN_F[op];
  const out = new Float64Array(Y.length);
  for (let i = 0; i < Y.length; i++) {
    const av = A[i], bv = B[i], ea = EA[i], eb = EB[i], yi = Y[i];
    if (ea === Infinity || eb === Infinity) {
      out[i] = Infinity;
      continue;
    }
    let prop = 0;
    if (ea > 0 || eb > 0) {
      switch (op) {
        case "add":
        case "sub":
          prop = ea + eb;
          break;
        case "mul":
          prop = mE(av, eb) + mE(bv, ea) + ea * eb;
          break;
        case "maximum":
        case "minimum":
          prop = Math.max(ea, eb);
          break;
        case "div": {
          if (bv - eb <= 0 && bv + eb >= 0) {
            prop = Infinity;
            break;
          }
          const q0 = isInt ? Math.trunc(av / bv) : av / bv;
          for (const x of [av - ea, av + ea]) {
            for (const z of [bv - eb, bv + eb]) {
              const q = isInt ? Math.trunc(x / z) : x / z;
              prop = Math.max(prop, Math.abs(q - q0));
            }
          }
          break;
        }
        case "pow": {
          // Across 0, or a possibly negative base whose exponent may reach an integer (NaN for
          // every other exponent).
          const intInB = eb > 0 && Math.floor(bv + eb) >= Math.ceil(bv - eb);
          if ((ea > 0 && av - ea <= 0 && av + ea >= 0) || (av - ea < 0 && intInB)) {
            prop = Infinity;
            break;
          }
          if (av + ea < 0 && eb > 0 && !Number.isInteger(bv)) break; // NaN throughout
          const p0 = f(av, bv);
          for (const x of [av - ea, av, av + ea]) {
            for (const z of [bv - eb, bv, bv + eb]) {
              const q = f(x, z);
              if (Number.isNaN(q) !== Number.isNaN(p0)) prop = Infinity;
              else if (!Number.isNaN(q)) prop = Math.max(prop, Math.abs(q - p0));
            }
          }
          break;
        }
      }
      if (Number.isNaN(prop)) prop = Infinity;
    }
    const local = isInt || op === "maximum" || op === "minimum"
      ? 0
      : (op === "pow" ? localK("pow", dt) : 1) * ulp(dt, yi);
    if (!Number.isFinite(yi) && !isInt) {
      if (Number.isFinite(av) && Number.isFinite(bv)) {
        const v64 = f(av, bv);
        out[i] = Number.isNaN(v64)
          ? (prop > 0 ? Infinity : 0)
          : overflowE(dt, v64, prop + SAFETY * 4 * unitRound(dt) * Math.abs(v64));
      } else out[i] = prop === Infinity ? Infinity : 0;
      continue;
    }
    out[i] = fin(dt, yi, prop + SAFETY * local, prop > 0);
  }
  return out;
}

function ruleCompare(a: RV, b: RV, y: RV, getE: GetE): Float64Array {
  const shape = y.shape;
  const A = bcastRef(a, shape), B = bcastRef(b, shape);
  const EA = bcastE(a, shape, getE), EB = bcastE(b, shape, getE);
  const out = new Float64Array(y.ref.length);
  for (let i = 0; i < out.length; i++) {
    const s = EA[i] + EB[i];
    if (s === 0) continue;
    if (!(s < Infinity)) {
      out[i] = Infinity;
      continue;
    }
    if (Number.isNaN(A[i]) || Number.isNaN(B[i])) continue;
    const d = Math.abs(A[i] - B[i]);
    out[i] = d > s ? 0 : Infinity;
  }
  return out;
}

function ruleWhere(c: RV, a: RV, b: RV, y: RV, getE: GetE): Float64Array {
  const shape = y.shape;
  const C = bcastRef(c, shape), EC = bcastE(c, shape, getE);
  const A = bcastRef(a, shape), B = bcastRef(b, shape);
  const EA = bcastE(a, shape, getE), EB = bcastE(b, shape, getE);
  const out = new Float64Array(y.ref.length);
  for (let i = 0; i < out.length; i++) {
    if (EC[i] === 0) out[i] = C[i] ? EA[i] : EB[i];
    else {
      const same = Number.isNaN(A[i]) && Number.isNaN(B[i]);
      const d = same ? 0 : Math.abs(A[i] - B[i]);
      // Either branch may be taken, each with its own error on the device.
      out[i] = Number.isNaN(d) ? Infinity : d + Math.max(EA[i], EB[i]);
    }
    out[i] = fin(y.dtype, y.ref[i], out[i], false);
  }
  return out;
}

function ruleCast(x: RV, y: RV, getE: GetE): Float64Array {
  const X = x.ref, EX = getE(x), Y = y.ref, to = y.dtype, from = x.dtype;
  const out = new Float64Array(Y.length);
  for (let i = 0; i < Y.length; i++) {
    const xi = X[i], e = EX[i], yi = Y[i];
    if (e === 0) continue;
    if (e === Infinity) {
      out[i] = Infinity;
      continue;
    }
    if (to === "bool") out[i] = xi - e <= 0 && xi + e >= 0 ? Infinity : 0;
    else if (isFloat(from) && isFloat(to)) {
      const lo = roundTo(to, xi - e), hi = roundTo(to, xi + e);
      const d = Math.max(Math.abs(hi - yi), Math.abs(yi - lo));
      out[i] = Number.isNaN(d) ? Infinity : d;
    } else if (isFloat(from)) {
      out[i] = Math.max(Math.abs(castInt(to, xi + e) - yi), Math.abs(yi - castInt(to, xi - e)));
    } else out[i] = isFloat(to) ? e + ulp(to, yi) : e;
    out[i] = fin(to, yi, out[i], false);
  }
  return out;
}

/** Moves the reduced axes last: rows of R elements, M rows (and back, for softmax). */
interface Layout {
  M: number;
  R: number;
  X: Float64Array;
  EX: Float64Array;
  perm: number[];
  identity: boolean;
}
function normAxes(rank: number, axes: number[] | undefined): number[] {
  if (rank === 0) return [];
  if (axes === undefined) return [...Array(rank).keys()];
  return [...new Set(axes.map((a) => (a < 0 ? a + rank : a)))].sort((a, b) => a - b);
}
function layout(v: RV, axes: number[], getE: GetE): Layout {
  const rank = v.shape.length;
  const kept = [...Array(rank).keys()].filter((d) => !axes.includes(d));
  const perm = [...kept, ...axes];
  const identity = perm.every((p, i) => p === i);
  const R = numel(axes.map((a) => v.shape[a]));
  const M = numel(kept.map((d) => v.shape[d]));
  const E = getE(v);
  if (identity) return { M, R, X: v.ref, EX: E, perm, identity };
  const X = readF64(tq.permute(refTensor(v), perm));
  const EX = anyPos(E) ? readF64(tq.permute(eTensor(E, v.shape), perm)) : zerosOf(E.length);
  return { M, R, X, EX, perm, identity };
}
function unpermute(E: Float64Array, v: RV, lay: Layout): Float64Array {
  if (lay.identity) return E;
  const pshape = lay.perm.map((p) => v.shape[p]);
  const inv = new Array<number>(lay.perm.length);
  lay.perm.forEach((p, i) => (inv[p] = i));
  return readF64(tq.permute(eTensor(E, pshape), inv));
}

function ruleReduce(op: string, x: RV, axes: number[], y: RV, getE: GetE): Float64Array {
  const lay = layout(x, axes, getE);
  const { M, R, X, EX } = lay;
  const dt = y.dtype, Y = y.ref;
  const out = new Float64Array(M);
  for (let o = 0; o < M; o++) {
    let S = 0, P = 0, nf = 0, emax = 0;
    for (let k = 0; k < R; k++) {
      const xv = X[o * R + k], e = EX[o * R + k];
      if (Number.isFinite(xv)) S += Math.abs(xv);
      else nf++;
      P += e;
      emax = Math.max(emax, e);
    }
    const yi = Y[o];
    if (op === "max" || op === "min") {
      out[o] = fin(dt, yi, emax, false);
      continue;
    }
    if (!isFloat(dt)) {
      out[o] = fin(dt, yi, P, false);
      continue;
    }
    if (!Number.isFinite(yi)) {
      out[o] = nf > 0 ? (P < Infinity ? 0 : Infinity) : Infinity;
      continue;
    }
    let e = P + SAFETY * (R + 2) * U32 * (S + P) + SAFETY * ulp(dt, yi);
    if (op === "mean") e = e / R + SAFETY * (2 * U32 * Math.abs(yi) + ulp(dt, yi));
    out[o] = fin(dt, yi, e, P > 0);
  }
  return out;
}

function ruleArg(op: string, x: RV, axes: number[], y: RV, getE: GetE): Float64Array {
  const { M, R, X, EX } = layout(x, axes, getE);
  const out = new Float64Array(M);
  const isMax = op === "argmax";
  for (let o = 0; o < M; o++) {
    const idx = y.ref[o];
    let inf = false;
    for (let k = 0; k < R; k++) if (EX[o * R + k] === Infinity) inf = true;
    if (inf) {
      out[o] = Infinity;
      continue;
    }
    const m = X[o * R + idx], em = EX[o * R + idx];
    if (Number.isNaN(m)) continue;
    for (let k = 0; k < R; k++) {
      if (k === idx) continue;
      const xv = X[o * R + k], e = EX[o * R + k];
      if (e + em === 0) continue;
      if (Number.isNaN(xv)) continue;
      const close = isMax ? xv + e >= m - em : xv - e <= m + em;
      if (close) {
        out[o] = Infinity;
        break;
      }
    }
  }
  return out;
}

function ruleVar(x: RV, axes: number[], corr: number, y: RV, getE: GetE): Float64Array {
  const { M, R, X, EX } = layout(x, axes, getE);
  const dt = y.dtype;
  const out = new Float64Array(M);
  const d = R - corr;
  for (let o = 0; o < M; o++) {
    const yi = y.ref[o];
    let mu = 0, nf = false, einf = false, eb = 0, maxAbs = 0;
    for (let k = 0; k < R; k++) {
      const xv = X[o * R + k], e = EX[o * R + k];
      if (!Number.isFinite(xv)) nf = true;
      if (e === Infinity) einf = true;
      mu += xv;
      eb += e;
      maxAbs = Math.max(maxAbs, Math.abs(xv));
    }
    if (einf) {
      out[o] = Infinity;
      continue;
    }
    if (nf || !(d > 0) || !Number.isFinite(yi)) continue;
    mu /= R;
    eb /= R;
    let s2 = 0, s1 = 0, pa = 0, pb = 0;
    for (let k = 0; k < R; k++) {
      const dv = X[o * R + k] - mu, e = EX[o * R + k] + eb;
      s2 += dv * dv;
      s1 += Math.abs(dv);
      pa += Math.abs(dv) * e;
      pb += e * e;
    }
    const prop = (2 * pa + pb) / d;
    const local = 4 * (R + 2) * U32 * (s2 + maxAbs * s1) / d + ulp(dt, yi);
    out[o] = fin(dt, yi, prop + SAFETY * local, prop > 0);
  }
  return out;
}

function ruleSoftmax(op: string, x: RV, axis: number, y: RV, getE: GetE): Float64Array {
  const rank = x.shape.length;
  const axes = rank === 0 ? [] : [axis < 0 ? axis + rank : axis];
  const lay = layout(x, axes, getE);
  const { M, R, X, EX } = lay;
  const Yl = lay.identity ? y.ref : readF64(tq.permute(refTensor(y), lay.perm));
  const dt = y.dtype;
  const out = new Float64Array(M * R);
  for (let o = 0; o < M; o++) {
    let m = -Infinity, bad = false, emax = 0;
    for (let k = 0; k < R; k++) {
      const xv = X[o * R + k];
      if (Number.isNaN(xv) || xv === Infinity) bad = true;
      if (Number.isFinite(xv)) {
        m = Math.max(m, xv);
        emax = Math.max(emax, EX[o * R + k]);
      } else if (EX[o * R + k] > 0) emax = Infinity;
    }
    if (m === -Infinity) bad = true;
    if (bad) {
      // A NaN or +Inf (or only -Inf) makes the whole row NaN, whatever the other elements are.
      let uncertain = false;
      for (let k = 0; k < R; k++) {
        const xv = X[o * R + k], e = EX[o * R + k];
        if (e === Infinity || (!Number.isFinite(xv) && e > 0)) uncertain = true;
      }
      for (let k = 0; k < R; k++) out[o * R + k] = uncertain ? Infinity : 0;
      continue;
    }
    let z = 0;
    for (let k = 0; k < R; k++) {
      const xv = X[o * R + k];
      if (Number.isFinite(xv)) z += Math.exp(xv - m);
    }
    const lse = m + Math.log(z);
    const rel = emax === Infinity ? Infinity : emax > 20 ? Infinity : Math.expm1(2 * emax);
    for (let k = 0; k < R; k++) {
      const xv = X[o * R + k], yi = Yl[o * R + k];
      if (xv === -Infinity) {
        out[o * R + k] = emax > 0 ? Infinity : 0;
        continue;
      }
      let prop: number, local: number;
      if (op === "softmax") {
        const p = Math.exp(xv - lse);
        prop = p * rel;
        local = U32 * (4 + 2 * Math.abs(xv - m) + 2 * R) * p + ulp(dt, yi);
      } else {
        prop = EX[o * R + k] + emax;
        local = U32 * (4 + 2 * Math.abs(xv - m) + 2 * Math.abs(lse) + 2 * R) + ulp(dt, yi);
      }
      out[o * R + k] = fin(dt, yi, prop + SAFETY * local, prop > 0);
    }
  }
  return unpermute(out, x, lay);
}

function ruleLayerNorm(
  x: RV,
  w: RV | undefined,
  b: RV | undefined,
  dims: number,
  eps: number,
  y: RV,
  getE: GetE,
): Float64Array {
  const R = numel(x.shape.slice(x.shape.length - dims));
  const M = R === 0 ? 0 : x.ref.length / R;
  const X = x.ref, EX = getE(x), Y = y.ref, dt = y.dtype;
  const W = w?.ref, EW = w ? getE(w) : undefined, Bv = b?.ref, EB = b ? getE(b) : undefined;
  const out = new Float64Array(X.length);
  const cR = 8 + 2 * Math.log2(Math.max(R, 1)) + R / 32;
  for (let o = 0; o < M; o++) {
    let mu = 0, nf = false, emax = 0;
    for (let k = 0; k < R; k++) {
      const xv = X[o * R + k];
      if (!Number.isFinite(xv)) nf = true;
      mu += xv;
      emax = Math.max(emax, EX[o * R + k]);
    }
    if (nf) {
      for (let k = 0; k < R; k++) out[o * R + k] = emax > 0 ? Infinity : 0;
      continue;
    }
    mu /= R;
    let v = 0;
    for (let k = 0; k < R; k++) v += (X[o * R + k] - mu) ** 2;
    v /= R;
    const sigma = Math.sqrt(v + eps);
    for (let k = 0; k < R; k++) {
      const i = o * R + k, yi = Y[i];
      const yh = (X[i] - mu) / sigma;
      const wk = W ? W[k] : 1, bk = Bv ? Bv[k] : 0;
      let dyh = 0;
      if (emax > 0) {
        dyh = 2 * emax < sigma / 4 ? 1.5 * (2 * emax / sigma) * (1 + Math.abs(yh)) : Infinity;
      }
      const prop = dyh === 0 ? 0 : dyh * Math.abs(wk);
      const propWB = (EW ? mE(yh, EW[k]) : 0) + (EB ? EB[k] : 0);
      const local = cR * U32 * (1 + Math.abs(yh)) * (2 + Math.abs(mu) / sigma) * Math.abs(wk) +
        4 * U32 * (Math.abs(yh * wk) + Math.abs(bk)) + ulp(dt, yi);
      out[i] = fin(dt, yi, prop + propWB + SAFETY * local, prop + propWB > 0);
    }
  }
  return out;
}

function absTensor(v: RV): Tensor {
  return tq.tensor(Float32Array.from(v.ref, (x) => (Number.isFinite(x) ? Math.abs(x) : 0)), {
    shape: v.shape,
  });
}
function nfTensor(v: RV): Tensor {
  return tq.tensor(Float32Array.from(v.ref, (x) => (Number.isFinite(x) ? 0 : 1)), {
    shape: v.shape,
  });
}

function ruleMatmul(a: RV, b: RV, y: RV, getE: GetE, extraRel: number): Float64Array {
  const dt = y.dtype, Y = y.ref;
  const K = a.shape[a.shape.length - 1];
  const EAv = getE(a), EBv = getE(b);
  const A = absTensor(a), B = absTensor(b);
  const L = readF64(tq.matmul(A, B));
  const hasE = anyPos(EAv) || anyPos(EBv);
  let P = zerosOf(Y.length);
  let EA: Tensor | undefined, EB: Tensor | undefined;
  if (hasE) {
    EA = eTensor(EAv, a.shape);
    EB = eTensor(EBv, b.shape);
    P = readF64(tq.matmul(A, EB).add(tq.matmul(EA, B)).add(tq.matmul(EA, EB)));
  }
  const anyNF = a.ref.some((x) => !Number.isFinite(x)) || b.ref.some((x) => !Number.isFinite(x));
  let NF = zerosOf(Y.length), PNF = zerosOf(Y.length);
  if (anyNF) {
    const na = nfTensor(a), nb = nfTensor(b);
    NF = readF64(tq.matmul(na, B.add(1)).add(tq.matmul(A.add(1), nb)));
    if (hasE) PNF = readF64(tq.matmul(na, EB!).add(tq.matmul(EA!, nb)));
  }
  const out = new Float64Array(Y.length);
  for (let i = 0; i < Y.length; i++) {
    const yi = Y[i];
    let p = P[i];
    if (Number.isNaN(p)) p = Infinity;
    if (!Number.isFinite(yi)) {
      out[i] = NF[i] > 0 ? (PNF[i] > 0 || Number.isNaN(PNF[i]) ? Infinity : 0) : Infinity;
      continue;
    }
    const l = L[i];
    const e = p * (1 + 1e-5) +
      SAFETY * ((K + 4) * U32 * (l + p) + extraRel * l + ulp(dt, yi));
    out[i] = fin(dt, yi, e, p > 0);
  }
  return out;
}

function ruleAttention(
  q: RV,
  k: RV,
  v: RV,
  kv: RV | undefined,
  scale: number,
  causal: boolean,
  y: RV,
  getE: GetE,
): Float64Array {
  const r = q.shape.length;
  const T = q.shape[r - 2], D = q.shape[r - 1], S = k.shape[r - 2], Dv = v.shape[r - 1];
  const G = numel(q.shape.slice(0, r - 2));
  const Q = q.ref, Kr = k.ref, Vr = v.ref, Y = y.ref, dt = y.dtype;
  const EQ = getE(q), EK = getE(k), EV = getE(v);
  const L = kv ? Math.min(Math.max(kv.ref[0], 0), S) : S;
  const uf = dt === "float32" ? U32 : unitRound(dt);
  const out = new Float64Array(Y.length);
  const s = new Float64Array(S), ds = new Float64Array(S), p = new Float64Array(S);
  const vis = new Uint8Array(S);
  // Columns of v with a non-finite value at a visible key: those outputs must match exactly
  // (NaN, ±∞), while the row's other columns keep their bound.
  const vBad = new Uint8Array(Dv);
  for (let g = 0; g < G; g++) {
    for (let i = 0; i < T; i++) {
      const oBase = (g * T + i) * Dv;
      // rowBad: a visible score that is NaN or +∞ (or none finite): the whole row must match
      // exactly. A score of −∞ (an infinite q or k) only drops its key, as softmax does.
      let nVis = 0, nFinite = 0, rowBad = false, einf = false, anyE = false;
      vBad.fill(0);
      for (let j = 0; j < S; j++) {
        vis[j] = j < L && (!causal || j <= i + L - T) ? 1 : 0;
        if (!vis[j]) continue;
        nVis++;
        let dot = 0, sa = 0, pe = 0, qkFinite = true;
        for (let d = 0; d < D; d++) {
          const qv = Q[(g * T + i) * D + d], kvv = Kr[(g * S + j) * D + d];
          const eq = EQ[(g * T + i) * D + d], ek = EK[(g * S + j) * D + d];
          if (!Number.isFinite(qv) || !Number.isFinite(kvv)) qkFinite = false;
          if (eq === Infinity || ek === Infinity) einf = true;
          if (eq > 0 || ek > 0) anyE = true;
          dot += qv * kvv;
          sa += Math.abs(qv * kvv);
          pe += mE(qv, ek) + mE(kvv, eq) + eq * ek;
        }
        for (let d = 0; d < Dv; d++) {
          if (!Number.isFinite(Vr[(g * S + j) * Dv + d])) vBad[d] = 1;
          if (EV[(g * S + j) * Dv + d] === Infinity) einf = true;
          if (EV[(g * S + j) * Dv + d] > 0) anyE = true;
        }
        s[j] = scale * dot;
        if (s[j] === -Infinity) {
          ds[j] = 0;
        } else if (!qkFinite || !Number.isFinite(s[j])) {
          rowBad = true;
        } else {
          nFinite++;
          ds[j] = Math.abs(scale) * pe +
            SAFETY * (Math.abs(scale) * (D + 4) * U32 * sa + 4 * U32 * Math.abs(s[j]));
        }
      }
      if (nVis === 0) continue;
      if (einf || rowBad || nFinite === 0) {
        for (let d = 0; d < Dv; d++) out[oBase + d] = einf || anyE ? Infinity : 0;
        continue;
      }
      let m = -Infinity, mx = 0;
      for (let j = 0; j < S; j++) {
        if (!vis[j] || s[j] === -Infinity) continue;
        m = Math.max(m, s[j]);
        mx = Math.max(mx, ds[j]);
      }
      let z = 0;
      for (let j = 0; j < S; j++) {
        z += vis[j] && s[j] !== -Infinity ? (p[j] = Math.exp(s[j] - m)) : (p[j] = 0);
      }
      for (let j = 0; j < S; j++) p[j] /= z;
      const rel = mx > 20 ? Infinity : Math.expm1(2 * mx);
      for (let d = 0; d < Dv; d++) {
        if (vBad[d]) {
          out[oBase + d] = anyE ? Infinity : 0;
          continue;
        }
        let a = 0, b = 0;
        for (let j = 0; j < S; j++) {
          if (!vis[j]) continue;
          const vv = Vr[(g * S + j) * Dv + d];
          a += mE(p[j], EV[(g * S + j) * Dv + d]);
          b += p[j] * Math.abs(vv);
        }
        const prop = a + (rel === 0 ? 0 : rel * b);
        const yi = Y[oBase + d];
        const e = prop + SAFETY * ((2 * uf + (S + 4) * U32) * b + ulp(dt, yi));
        out[oBase + d] = fin(dt, yi, Number.isNaN(e) ? Infinity : e, prop > 0);
      }
    }
  }
  return out;
}

/** For each element of x, the flat index of its scale. */
function scaleMap(xs: number[], ss: number[], mode: string, dim: number, bs: number): Int32Array {
  const n = numel(xs);
  const map = new Int32Array(n);
  if (mode === "tensor") return map;
  const xst = stridesOf(xs);
  if (mode === "channel") {
    for (let i = 0; i < n; i++) map[i] = Math.floor(i / xst[dim]) % xs[dim];
    return map;
  }
  const sst = stridesOf(ss);
  for (let i = 0; i < n; i++) {
    let idx = 0;
    for (let d = 0; d < xs.length; d++) {
      const c = Math.floor(i / xst[d]) % xs[d];
      idx += (d === dim ? Math.floor(c / bs) : c) * sst[d];
    }
    map[i] = idx;
  }
  return map;
}

/** Off only while the simulator sizes its noise (the flips themselves happen in its run). */
let excuseBoundaries = true;
interface QMode {
  mode: string;
  dim: number;
  bs: number;
}
function ruleQuantize(x: RV, s: RV, qdt: DType, qm: QMode, y: RV, getE: GetE): Float64Array {
  const map = scaleMap(x.shape, s.shape, qm.mode, qm.dim, qm.bs);
  const X = x.ref, EX = getE(x), S = s.ref, Y = y.ref;
  const out = new Float64Array(Y.length);
  for (let i = 0; i < Y.length; i++) {
    const xv = X[i], e = EX[i], sc = S[map[i]], yi = Y[i];
    if (e === Infinity) {
      out[i] = Infinity;
      continue;
    }
    if (Number.isNaN(xv)) continue;
    let E = 0;
    if (e > 0) {
      const lo = codeOf(qdt, (xv - e) / sc), hi = codeOf(qdt, (xv + e) / sc);
      E = Math.max(Math.abs(hi - yi), Math.abs(yi - lo));
    }
    const v = xv / sc;
    if (excuseBoundaries && Number.isFinite(v)) {
      const a = codeOf(qdt, v * (1 - 4 * U32)), b = codeOf(qdt, v * (1 + 4 * U32));
      if (a !== b) E = Math.max(E, Math.abs(a - yi), Math.abs(b - yi));
    }
    out[i] = Number.isNaN(E) ? Infinity : E;
  }
  return out;
}
/** Per-case flags noting known classes of discrepancy (reset for each case). */
const caseFlags = new Set<string>();
const DQ_OVERFLOW = "dequantize-overflow";
function ruleDequantize(c: RV, s: RV, qm: QMode, y: RV, getE: GetE): Float64Array {
  const map = scaleMap(c.shape, s.shape, qm.mode, qm.dim, qm.bs);
  const C = c.ref, EC = getE(c), S = s.ref, Y = y.ref, dt = y.dtype;
  for (let i = 0; i < Y.length; i++) {
    if (!Number.isFinite(Y[i]) && Number.isFinite(C[i])) {
      caseFlags.add(DQ_OVERFLOW);
      break;
    }
  }
  const out = new Float64Array(Y.length);
  // The codes the device may hold lie in c ± ec; dequantize is monotone in the code.
  const deq = (code: number, sc: number) => roundTo(dt, Math.fround(code * sc));
  for (let i = 0; i < Y.length; i++) {
    const ec = EC[i];
    if (ec === 0) continue;
    if (ec === Infinity) {
      out[i] = Infinity;
      continue;
    }
    const sc = S[map[i]], yi = Y[i];
    const d = Math.max(Math.abs(deq(C[i] + ec, sc) - yi), Math.abs(yi - deq(C[i] - ec, sc)));
    out[i] = fin(dt, yi, Number.isNaN(d) ? Infinity : d, false);
  }
  return out;
}

function rvOf(t: Tensor, E?: Float64Array, producer?: string): RV {
  t.evaluate();
  const ref = readF64(t);
  return { shape: t.shape, dtype: t.dtype, ref, E: E ?? zerosOf(ref.length), t, producer };
}
function qmodeOf(dim: number | undefined, bs: number | undefined): QMode {
  return bs !== undefined
    ? { mode: "block", dim: dim!, bs }
    : dim !== undefined
    ? { mode: "channel", dim, bs: 0 }
    : { mode: "tensor", dim: 0, bs: 0 };
}

/** A Linear's forward, rule by rule: Q/DQ of x, Q/DQ of W, the product, the bias. */
function ruleLinear(layer: tq.Linear, x: RV, y: RV, getOuterE: GetE): Float64Array {
  const dt = y.dtype as "float32";
  // The layer's input takes the caller's bound; the layer's own intermediates carry theirs.
  const getE: GetE = (r) => (r === x ? getOuterE(x) : r.E);
  const q = layer.quantDtype;
  let xp: RV = x;
  const inScale = layer.inputScale;
  if (q && inScale) {
    const s = rvOf(inScale);
    const codesT = tq.quantize(refTensor(x), inScale, q);
    const codes = rvOf(codesT);
    codes.E = ruleQuantize(x, s, q, qmodeOf(undefined, undefined), codes, getE);
    xp = rvOf(tq.dequantize(codesT, inScale, dt), undefined, "dequantize");
    xp.E = ruleDequantize(codes, s, qmodeOf(undefined, undefined), xp, getE);
  }
  let wp: RV;
  if (q) {
    const ws = layer.weightScale!;
    const s = rvOf(ws);
    const qm = qmodeOf(layer.weightQuantDim, layer.blockSize);
    const opts = { dim: layer.weightQuantDim, blockSize: layer.blockSize };
    let codes: RV;
    if (layer.weightCompressed) codes = rvOf(layer.weightCodes!);
    else {
      const w = rvOf(layer.weight);
      codes = rvOf(tq.quantize(layer.weight, ws, q, opts));
      codes.E = ruleQuantize(w, s, q, qm, codes, getE);
    }
    wp = rvOf(tq.dequantize(codes.t!, ws, dt, opts), undefined, "dequantize");
    wp.E = ruleDequantize(codes, s, qm, wp, getE);
  } else wp = rvOf(layer.weight);
  const wt = rvOf(tq.transpose(wp.t!, 0, 1));
  wt.E = anyPos(wp.E)
    ? readF64(tq.transpose(eTensor(wp.E, wp.shape), 0, 1))
    : zerosOf(wt.ref.length);
  const mm = rvOf(tq.matmul(refTensor(xp), wt.t!));
  let extra = q && dt !== "float32" ? 2 * unitRound(dt) : 0;
  // Documented: fp8 products of float16/bfloat16 layers run on the e4m3 tensor cores, whose
  // accumulator is narrower than float32 (allowed: 2^-13 per addition).
  if (q === "float8e4m3" && inScale && dt !== "float32") {
    extra += FP8_ACC * (x.shape[x.shape.length - 1] + 4);
  }
  mm.E = ruleMatmul(xp, wt, mm, getE, extra);
  const bias = layer.bias;
  if (!bias) {
    return ruleBinary("add", mm, rvOf(tq.zeros(mm.shape.slice(-1), { dtype: dt })), y, getE);
  }
  return ruleBinary("add", mm, rvOf(bias), y, getE);
}

// ------------------------------------------------------------------------------------------
// Case generation

function pickExtent(rng: Rng): number {
  if (rng.chance(0.12)) return rng.pick([16, 32, 48, 64]);
  return rng.weighted<() => number>([
    [() => rng.int(1, 4), 35],
    [() => rng.int(5, 16), 30],
    [() => rng.int(17, 40), 25],
    [() => rng.int(41, 70), 10],
  ])();
}
function capShape(s: number[], max = MAX_NUMEL): number[] {
  s = [...s];
  while (numel(s) > max) {
    let j = 0;
    for (let i = 1; i < s.length; i++) if (s[i] > s[j]) j = i;
    s[j] = Math.ceil(s[j] / 2);
  }
  return s;
}
function randShape(rng: Rng, rlo = 0, rhi = 4, max = MAX_NUMEL): number[] {
  const r = rng.int(rlo, rhi);
  return capShape(Array.from({ length: r }, () => pickExtent(rng)), max);
}

function subnormal(rng: Rng, dt: DType): number {
  const f = FINFO[dt] ?? FINFO.float32!;
  return (rng.chance(0.5) ? -1 : 1) * rng.int(1, 2 ** f.mant - 1) * 2 ** (f.emin - f.mant);
}

function genFloats(rng: Rng, n: number, dt: DType): Float64Array {
  const out = new Float64Array(n);
  const kind = rng.int(0, 5);
  const sigma = rng.pick([0.02, 0.5, 1, 1, 2, 8]);
  const mu = rng.chance(0.25) ? rng.normal() * 2 : 0;
  const lo = rng.normal() * 3, hi = lo + 0.1 + rng.f() * 6;
  const outRate = rng.pick([0.005, 0.02, 0.05]);
  const lim = dt === "float16" ? 60000 : 1e30;
  for (let i = 0; i < n; i++) {
    let v: number;
    switch (kind) {
      case 0:
        v = mu + sigma * rng.normal();
        break;
      case 1:
        v = lo + (hi - lo) * rng.f();
        break;
      case 2:
        v = sigma * rng.normal() * (rng.chance(outRate) ? rng.pick([20, 100, 500, 3000]) : 1);
        break;
      case 3:
        v = rng.int(-4, 4);
        break;
      case 4:
        v = (rng.chance(0.8) ? 1 : -1) * 10 ** (rng.f() * 6 - 3);
        break;
      default:
        v = 0.05 + rng.f() * 3;
    }
    out[i] = Math.max(-lim, Math.min(lim, v));
  }
  if (rng.chance(0.12)) {
    const rate = rng.pick([0.003, 0.01, 0.03]);
    const f = FINFO[dt] ?? FINFO.float32!;
    for (let i = 0; i < n; i++) {
      if (!rng.chance(rate)) continue;
      out[i] = rng.pick([
        NaN,
        Infinity,
        -Infinity,
        -0,
        subnormal(rng, dt),
        0.9 * f.max,
        -0.9 * f.max,
      ]);
    }
  }
  if (out.every((v) => v === 0)) out[rng.int(0, n - 1)] = 1;
  return out;
}

class GenReject extends Error {}

interface CaseData {
  vals: Val[];
  steps: Step[];
  outputs: number[];
  refEnv: Env;
  dt: DType;
  notes: string[];
}

class Gen {
  vals: Val[] = [];
  steps: Step[] = [];
  notes: string[] = [];
  refEnv: Env;
  rejects = 0;
  cpuOnlyErrors: { label: string; error: string; targetResult: string }[] = [];
  constructor(public rng: Rng, public dt: DType) {
    this.refEnv = makeEnv("cpu", this);
  }

  leafData(shape: number[], dtype: DType): Float64Array {
    const n = numel(shape), rng = this.rng;
    if (isArith(dtype)) return genFloats(rng, n, dtype);
    if (dtype === "int32") {
      const w = rng.pick([3, 20, 1000]);
      return Float64Array.from({ length: n }, () => rng.int(-w, w));
    }
    if (dtype === "bool") {
      const p = rng.f();
      return Float64Array.from({ length: n }, () => (rng.chance(p) ? 1 : 0));
    }
    if (dtype === "int8") return Float64Array.from({ length: n }, () => rng.int(-128, 127));
    if (dtype === "int4") return Float64Array.from({ length: n }, () => rng.int(-8, 7));
    if (dtype === "float8e4m3") {
      return Float64Array.from({ length: n }, () => roundTo("float8e4m3", rng.normal() * 40));
    }
    throw new Error(`leafData ${dtype}`);
  }

  addLeaf(
    shape: number[],
    dtype: DType,
    role: "arg" | "const" = "arg",
    data?: Float64Array,
    hidden = false,
  ): Val {
    const raw = data ?? this.leafData(shape, dtype);
    // Round to the dtype with the library's own encoder, then keep the decoded values.
    const t0 = isFloat(dtype) && dtype !== "float8e4m3"
      ? tq.tensor(raw, { shape, dtype })
      : mkTensor(raw, shape, dtype, "cpu");
    const ref = readF64(t0);
    const t = mkTensor(ref, shape, dtype, "cpu");
    const v: Val = {
      id: this.vals.length,
      shape: [...shape],
      dtype,
      ref,
      E: zerosOf(ref.length),
      t,
      leaf: { role },
      hidden,
      consumers: 0,
    };
    this.vals.push(v);
    return v;
  }

  /** Adds a step: builds it on the CPU, evaluates it op by op, computes its error bound. */
  addStep(
    kind: string,
    label: string,
    ins: Val[],
    expr: string,
    p: Record<string, any> = {},
    setup?: string,
    fresh: number[] = [],
  ): Val {
    const id = this.vals.length;
    const step: Step = {
      idx: this.steps.length,
      kind,
      label,
      ins: ins.map((v) => v.id),
      out: id,
      p,
      setup,
      code: `V[${id}] = ${expr};`,
      fresh,
    };
    const env = this.refEnv;
    for (const v of this.vals) env.V[v.id] = v.t;
    let t: Tensor;
    try {
      if (setup) runCode(setup, env);
      runCode(step.code, env);
      t = env.V[id];
    } catch (e) {
      this.rejects++;
      if (VERBOSE) console.log(`  gen reject (build) ${label}: ${errText(e)}`);
      throw new GenReject(errText(e));
    }
    try {
      realizeInOrder(t);
    } catch (e) {
      this.rejects++;
      // An evaluation error on the CPU: does the device raise it too?
      const res = tryStepOnDevice(this, step, ins);
      if (res !== "error") {
        this.cpuOnlyErrors.push({ label, error: errText(e), targetResult: res });
      }
      throw new GenReject(errText(e));
    }
    const ref = readF64(t);
    const v: Val = {
      id,
      shape: t.shape,
      dtype: t.dtype,
      ref,
      E: zerosOf(ref.length),
      t,
      step,
      consumers: 0,
    };
    this.vals.push(v);
    try {
      v.E = computeE(step, this.vals, env, (r) => r.E);
    } catch (e) {
      this.vals.pop();
      throw new Error(`harness: error bound of ${label}: ${errText(e)}\n${(e as Error).stack}`);
    }
    this.steps.push(step);
    for (const i of ins) i.consumers++;
    return v;
  }

  pick(filter: (v: Val) => boolean): Val | undefined {
    const c = this.vals.filter((v) => !v.hidden && filter(v));
    if (c.length === 0) return undefined;
    const w = c.map((v, i) =>
      [v, (v.consumers === 0 ? 3 : 1) * (1 + (2 * i) / c.length)] as [Val, number]
    );
    return this.rng.weighted(w);
  }
  floatVal(filter: (v: Val) => boolean = () => true): Val {
    return this.pick((v) => isArith(v.dtype) && filter(v)) ??
      this.addLeaf(randShape(this.rng, 1, 3), this.dt);
  }
}

function makeEnv(device: string, g: Gen | undefined, dataOf?: (id: number) => Val): Env {
  const env: Env = {
    device,
    V: [],
    M: {},
    created: [],
    LEAF: (id) => {
      const v = (dataOf ?? ((i: number) => g!.vals[i]))(id);
      if (device === "cpu" && g && !dataOf) return v.t;
      const t = mkTensor(v.ref, v.shape, v.dtype, device);
      env.created.push(t);
      return t;
    },
    FRESH: (id) => {
      const v = (dataOf ?? ((i: number) => g!.vals[i]))(id);
      const t = mkTensor(v.ref, v.shape, v.dtype, device);
      env.created.push(t);
      return t;
    },
  };
  return env;
}

/** Runs one step on the target device with the reference's inputs: "ok", "error" or a crash. */
function tryStepOnDevice(g: Gen, step: Step, ins: Val[]): string {
  const env = makeEnv(DEVICE, g);
  try {
    for (const v of ins) env.V[v.id] = env.LEAF(v.id);
    if (step.setup) runCode(step.setup, env);
    runCode(step.code, env);
    env.V[step.out].dataSync();
    env.created.push(env.V[step.out]);
    return "ok";
  } catch (e) {
    return e instanceof tq.TensorqError ? "error" : `crash: ${errText(e)}`;
  } finally {
    disposeEnv(env);
  }
}

function disposeEnv(env: Env): void {
  for (const t of env.created) {
    try {
      t.dispose();
    } catch { /* already gone */ }
  }
  env.created = [];
}

/** The error bound of a step's output from its inputs' bounds (getE) and reference values. */
function computeE(step: Step, vals: Val[], refEnv: Env, getE: GetE): Float64Array {
  const ins = step.ins.map((i) => vals[i]);
  const y = vals[step.out];
  const p = step.p;
  const scalarRV = (value: number, dtype: DType): RV => ({
    shape: [],
    dtype,
    ref: Float64Array.of(isFloat(dtype) ? roundTo(dtype, value) : value),
    E: zerosOf(1),
  });
  const operand = (k: number, dtype: DType): RV => {
    const s = p.scalars?.[k];
    if (s !== undefined) return scalarRV(s, dtype);
    return ins[p.slots[k]];
  };
  switch (step.kind) {
    case "unary":
      return ruleUnary(p.op, ins[0], y, getE, p.approx ?? "none");
    case "binary": {
      const dt = ins[0].dtype;
      return ruleBinary(p.op, operand(0, dt), operand(1, dt), y, getE);
    }
    case "compare": {
      const dt = ins[0].dtype;
      return ruleCompare(operand(0, dt), operand(1, dt), y, getE);
    }
    case "where": {
      const dt = y.dtype;
      return ruleWhere(ins[0], operand(1, dt), operand(2, dt), y, getE);
    }
    case "cast":
      return ruleCast(ins[0], y, getE);
    case "reduce":
      return ruleReduce(p.op, ins[0], normAxes(ins[0].shape.length, p.axes), y, getE);
    case "arg":
      return ruleArg(
        p.op,
        ins[0],
        normAxes(ins[0].shape.length, p.axis === undefined ? undefined : [p.axis]),
        y,
        getE,
      );
    case "var":
      return ruleVar(ins[0], normAxes(ins[0].shape.length, p.axes), p.corr, y, getE);
    case "softmax":
      return ruleSoftmax(p.op, ins[0], p.axis, y, getE);
    case "layerNorm":
      return ruleLayerNorm(
        ins[0],
        p.w !== undefined ? vals[p.w] : undefined,
        p.b !== undefined ? vals[p.b] : undefined,
        p.dims,
        p.eps,
        y,
        getE,
      );
    case "matmul": {
      const a = ins[0], b = ins[1];
      const dq = (v: Val) => v.step?.kind === "dequantize" || v.step?.kind === "linear";
      const f8 = (v: Val) =>
        v.step?.kind === "dequantize" && vals[v.step.ins[0]].dtype === "float8e4m3";
      let extra = y.dtype !== "float32" && (dq(a) || dq(b)) ? 2 * unitRound(y.dtype) : 0;
      if (y.dtype !== "float32" && f8(a) && f8(b)) {
        extra += FP8_ACC * (a.shape[a.shape.length - 1] + 4);
      }
      return ruleMatmul(a, b, y, getE, extra);
    }
    case "attention":
      return ruleAttention(
        ins[0],
        ins[1],
        ins[2],
        p.kv !== undefined ? vals[p.kv] : undefined,
        p.scale,
        p.causal,
        y,
        getE,
      );
    case "quantize": {
      const s = p.scaleNum !== undefined ? scalarRV(p.scaleNum, "float32") : ins[1];
      return ruleQuantize(ins[0], s, p.qdt, p.qm, y, getE);
    }
    case "dequantize": {
      const s = p.scaleNum !== undefined ? scalarRV(p.scaleNum, "float32") : ins[1];
      return ruleDequantize(ins[0], s, p.qm, y, getE);
    }
    case "linear":
      return ruleLinear(refEnv.M[p.mod], ins[0], y, getE);
    case "shape": {
      // Move the bounds with the same shape op (index inputs keep their reference values).
      const env: Env = { ...refEnv, V: [], created: [] };
      let any = false;
      for (const v of ins) {
        if ((p.index ?? []).includes(v.id)) env.V[v.id] = v.t;
        else {
          const E = getE(v);
          if (anyPos(E)) any = true;
          env.V[v.id] = eTensor(E, v.shape);
        }
      }
      if (!any) return zerosOf(y.ref.length);
      runCode(step.code, env);
      return readF64(env.V[step.out]);
    }
  }
  throw new Error(`no rule for ${step.kind}`);
}

// ---------------- generators

type GenFn = (g: Gen) => void;

function partnerShape(rng: Rng, s: number[]): number[] {
  const r = rng.f();
  if (r < 0.3) return [...s];
  if (r < 0.45 && s.length > 0) return s.slice(rng.int(1, s.length));
  if (r < 0.7) return s.map((d) => (rng.chance(0.4) ? 1 : d));
  if (r < 0.78) return [];
  if (r < 0.88 && s.length < 4) return [rng.int(2, 5), ...s.map((d) => (rng.chance(0.3) ? 1 : d))];
  return s.map((d) => (d === 1 && rng.chance(0.6) ? rng.int(2, 9) : d));
}

const SCALARS_F = [2, 0.5, -1.5, 3, 1e-3, 0, 1, -2, 0.1, 7.25];

/** An operand for x in a binary op: an existing value, a new leaf, or a JS number. */
function operandFor(g: Gen, x: Val, allowScalar = true): { v?: Val; s?: number } {
  const rng = g.rng;
  if (allowScalar && rng.chance(0.2)) {
    return { s: isFloat(x.dtype) ? rng.pick(SCALARS_F) : rng.int(-5, 5) };
  }
  if (rng.chance(0.35)) {
    const o = g.pick((v) =>
      v !== x && v.dtype === x.dtype && broadcast(v.shape, x.shape) !== undefined &&
      numel(broadcast(v.shape, x.shape)!) <= MAX_NUMEL
    );
    if (o) return { v: o };
  }
  for (let t = 0; t < 5; t++) {
    const s = partnerShape(rng, x.shape);
    const b = broadcast(s, x.shape);
    if (b && numel(b) <= MAX_NUMEL && b.length <= 4) return { v: g.addLeaf(s, x.dtype) };
  }
  return { v: g.addLeaf([...x.shape], x.dtype) };
}

const genUnary: GenFn = (g) => {
  const rng = g.rng;
  const x = g.pick((v) => isArith(v.dtype) || v.dtype === "int32") ?? g.floatVal();
  if (x.dtype === "int32") {
    const op = rng.pick(["neg", "abs", "relu"]);
    g.addStep("unary", op, [x], `V[${x.id}].${op}()`, { op });
    return;
  }
  const op = rng.pick([
    "neg",
    "abs",
    "relu",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "tanh",
    "sigmoid",
    "gelu",
    "gelu",
    "exp",
    "tanh",
  ]);
  if (op === "gelu") {
    const approx = rng.pick(["none", "tanh"]);
    const expr = rng.chance(0.5)
      ? `tq.gelu(V[${x.id}], { approximate: ${J(approx)} })`
      : `V[${x.id}].gelu(${approx === "none" ? "" : `{ approximate: "tanh" }`})`;
    g.addStep("unary", `gelu(${approx})`, [x], expr, { op, approx });
    return;
  }
  const expr = rng.chance(0.3) ? `tq.${op}(V[${x.id}])` : `V[${x.id}].${op}()`;
  g.addStep("unary", op, [x], expr, { op });
};

function binaryStep(g: Gen, kind: "binary" | "compare", op: string, x: Val): Val {
  const rng = g.rng;
  const o = operandFor(g, x);
  const swap = rng.chance(0.25);
  const xs = `V[${x.id}]`;
  let expr: string, ins: Val[], slots: number[], scalars: (number | undefined)[], label: string;
  if (o.v) {
    const os = `V[${o.v.id}]`;
    const [l, r] = swap ? [os, xs] : [xs, os];
    expr = rng.chance(0.3) ? `tq.${op}(${l}, ${r})` : `${l}.${op}(${r})`;
    ins = [x, o.v];
    slots = swap ? [1, 0] : [0, 1];
    scalars = [undefined, undefined];
    label = swap
      ? `${op}(${desc(o.v.shape, o.v.dtype)}, x)`
      : `${op}(x, ${desc(o.v.shape, o.v.dtype)})`;
  } else {
    const ns = num(o.s!);
    expr = swap
      ? `tq.${op}(${ns}, ${xs})`
      : rng.chance(0.3)
      ? `tq.${op}(${xs}, ${ns})`
      : `${xs}.${op}(${ns})`;
    ins = [x];
    slots = [0, 0];
    scalars = swap ? [o.s, undefined] : [undefined, o.s];
    label = swap ? `${op}(${ns}, x)` : `${op}(x, ${ns})`;
  }
  return g.addStep(kind, label, ins, expr, { op, slots, scalars });
}

const genBinary: GenFn = (g) => {
  const rng = g.rng;
  const x = g.pick((v) => isArith(v.dtype) || v.dtype === "int32") ?? g.floatVal();
  const ops = x.dtype === "int32"
    ? ["add", "sub", "mul", "div", "maximum", "minimum"]
    : ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "add", "mul"];
  binaryStep(g, "binary", rng.pick(ops), x);
};

const genCompareWhere: GenFn = (g) => {
  const rng = g.rng;
  let c = rng.chance(0.3) ? g.pick((v) => v.dtype === "bool") : undefined;
  if (!c) {
    const x = g.pick((v) => isArith(v.dtype) || v.dtype === "int32" || v.dtype === "bool") ??
      g.floatVal();
    const ops = x.dtype === "bool"
      ? ["equal", "notEqual"]
      : ["equal", "notEqual", "less", "lessEqual", "greater", "greaterEqual"];
    if (x.dtype === "bool") {
      const o = g.addLeaf(partnerShape(rng, x.shape), "bool");
      if (!broadcast(o.shape, x.shape)) throw new GenReject("shape");
      const op = rng.pick(ops);
      c = g.addStep("compare", `${op}(bool)`, [x, o], `tq.${op}(V[${x.id}], V[${o.id}])`, {
        op,
        slots: [0, 1],
        scalars: [undefined, undefined],
      });
    } else c = binaryStep(g, "compare", rng.pick(ops), x);
  }
  if (!rng.chance(0.75)) return;
  // where(c, a, b)
  const a = g.pick((v) =>
    isArith(v.dtype) && broadcast(v.shape, c!.shape) !== undefined &&
    numel(broadcast(v.shape, c!.shape)!) <= MAX_NUMEL
  ) ?? g.addLeaf(partnerShape(rng, c.shape), g.dt);
  const bo = operandFor(g, a);
  const full = broadcast(broadcast(a.shape, c.shape) ?? [], bo.v ? bo.v.shape : []);
  if (!full || !broadcast(a.shape, c.shape) || numel(full) > MAX_NUMEL || full.length > 4) {
    throw new GenReject("where shapes");
  }
  const ins = bo.v ? [c, a, bo.v] : [c, a];
  const bs = bo.v ? `V[${bo.v.id}]` : num(bo.s!);
  g.addStep(
    "where",
    `where(${desc(c.shape, "bool")})`,
    ins,
    `tq.where(V[${c.id}], V[${a.id}], ${bs})`,
    {
      slots: [0, 1, 2],
      scalars: [undefined, undefined, bo.v ? undefined : bo.s],
    },
  );
};

const genCast: GenFn = (g) => {
  const rng = g.rng;
  const x = g.pick((v) => v.dtype !== "int4") ?? g.floatVal();
  let targets: DType[];
  if (isArith(x.dtype)) {
    targets = ["float32", "float16", "bfloat16", "float8e4m3", "int32", "int8", "bool", "float32"];
  } else if (x.dtype === "float8e4m3") targets = ["float32", "float16", "bfloat16"];
  else if (x.dtype === "int32") targets = ["float32", "float16", "bool", "int8"];
  else if (x.dtype === "bool") targets = ["float32", "int32", "bfloat16"];
  else targets = ["float32", "int32"];
  const to = rng.pick(targets.filter((d) => d !== x.dtype));
  const expr = rng.chance(0.3) ? `tq.cast(V[${x.id}], ${J(to)})` : `V[${x.id}].cast(${J(to)})`;
  g.addStep("cast", `cast(${shortDT[x.dtype]}→${shortDT[to]})`, [x], expr, {});
};

function axesSubset(rng: Rng, rank: number): number[] | undefined {
  if (rank === 0) return rng.chance(0.5) ? undefined : [rng.pick([0, -1])];
  const r = rng.f();
  if (r < 0.2) return undefined;
  if (r < 0.6) return [rng.int(-rank, rank - 1)];
  const ax = [...Array(rank).keys()].filter(() => rng.chance(0.5));
  if (ax.length === 0) ax.push(rng.int(0, rank - 1));
  return ax.map((a) => (rng.chance(0.3) ? a - rank : a));
}

const genReduce: GenFn = (g) => {
  const rng = g.rng;
  const op = rng.pick(["sum", "sum", "mean", "max", "min", "var"]);
  const x = op === "mean" || op === "var"
    ? g.floatVal()
    : g.pick((v) =>
      isArith(v.dtype) || v.dtype === "int32" || (op === "sum" && v.dtype === "int8")
    ) ??
      g.floatVal();
  const axes = axesSubset(rng, x.shape.length);
  const keep = rng.chance(0.4);
  const axT = axes === undefined
    ? "undefined"
    : axes.length === 1 && rng.chance(0.6)
    ? String(axes[0])
    : J(axes);
  const label = `${op}(ax=${axT}${keep ? ",keep" : ""})`;
  if (op === "var") {
    const corr = rng.pick([0, 0, 1, 2]);
    const expr = `V[${x.id}].var(${axT}, ${keep}${corr ? `, ${corr}` : ""})`;
    g.addStep("var", label + (corr ? `,c=${corr}` : ""), [x], expr, { axes, corr });
    return;
  }
  const expr = rng.chance(0.3)
    ? `tq.${op}(V[${x.id}], ${axT}, ${keep})`
    : `V[${x.id}].${op}(${axT}${keep ? ", true" : ""})`;
  g.addStep("reduce", label, [x], expr, { op, axes });
};

const genArg: GenFn = (g) => {
  const rng = g.rng;
  const x = g.pick((v) => isArith(v.dtype) || v.dtype === "int32") ?? g.floatVal();
  const op = rng.pick(["argmax", "argmin"]);
  const rank = x.shape.length;
  const axis = rank === 0 || rng.chance(0.25) ? undefined : rng.int(-rank, rank - 1);
  const keep = rng.chance(0.3);
  g.addStep(
    "arg",
    `${op}(ax=${axis}${keep ? ",keep" : ""})`,
    [x],
    `V[${x.id}].${op}(${axis === undefined ? "undefined" : axis}, ${keep})`,
    {
      op,
      axis,
    },
  );
};

const genSoftmax: GenFn = (g) => {
  const rng = g.rng;
  const x = g.floatVal();
  const op = rng.pick(["softmax", "softmax", "logSoftmax"]);
  const r = x.shape.length;
  const axis = r === 0 ? rng.pick([0, -1]) : rng.chance(0.6) ? -1 : rng.int(-r, r - 1);
  const expr = rng.chance(0.5) ? `V[${x.id}].${op}(${axis})` : `tq.${op}(V[${x.id}], ${axis})`;
  g.addStep("softmax", `${op}(${axis})`, [x], expr, { op, axis });
};

function layerNormStep(g: Gen, x: Val, forceWeights = false): Val {
  const rng = g.rng;
  const r = x.shape.length;
  const hasW = forceWeights || rng.chance(0.75);
  const dims = r >= 2 && hasW && rng.chance(0.3) && !forceWeights ? 2 : 1;
  const norm = x.shape.slice(r - dims);
  const hasB = dims === 1 || hasW ? (forceWeights || rng.chance(0.6)) : false;
  const eps = rng.pick([1e-5, 1e-5, 1e-3, 1e-6]);
  const role = () => (rng.chance(0.5) ? "const" : "arg") as "const" | "arg";
  const w = hasW
    ? g.addLeaf(
      norm,
      x.dtype,
      role(),
      Float64Array.from({ length: numel(norm) }, () => 1 + 0.3 * rng.normal()),
      true,
    )
    : undefined;
  const b = hasB
    ? g.addLeaf(
      norm,
      x.dtype,
      role(),
      Float64Array.from({ length: numel(norm) }, () => 0.2 * rng.normal()),
      true,
    )
    : undefined;
  const ins = [x, ...(w ? [w] : []), ...(b ? [b] : [])];
  const expr = `tq.layerNorm(V[${x.id}], ${w ? `V[${w.id}]` : "undefined"}, ${
    b ? `V[${b.id}]` : "undefined"
  }${eps !== 1e-5 || rng.chance(0.3) ? `, ${eps}` : ""})`;
  return g.addStep("layerNorm", `layerNorm(d=${dims}${w ? ",w" : ""}${b ? ",b" : ""})`, ins, expr, {
    dims,
    eps,
    w: w?.id,
    b: b?.id,
  });
}
const genLayerNorm: GenFn = (g) => {
  layerNormStep(g, g.floatVal((v) => v.shape.length >= 1));
};

const genMatmul: GenFn = (g) => {
  const rng = g.rng;
  const x = g.floatVal((v) => v.shape.length >= 1);
  const s = x.shape, r = s.length, K = s[r - 1];
  const N = pickExtent(rng);
  let bShape: number[];
  let left = false;
  const c = rng.f();
  if (r >= 2 && c < 0.12) left = true;
  if (left) {
    const Mp = pickExtent(rng);
    const aShape = rng.chance(0.5)
      ? [Mp, s[r - 2]]
      : [...s.slice(0, r - 2).map((d) => (rng.chance(0.3) ? 1 : d)), Mp, s[r - 2]];
    const bb = broadcast(aShape.slice(0, -2), s.slice(0, -2));
    if (!bb) throw new GenReject("batch");
    const outN = numel(bb) * Mp * s[r - 1];
    if (outN * s[r - 2] > MAX_MACS || outN > MAX_NUMEL) throw new GenReject("macs");
    const a = g.addLeaf(capShape(aShape), x.dtype);
    if (a.shape[a.shape.length - 1] !== s[r - 2]) throw new GenReject("cap");
    g.addStep(
      "matmul",
      `matmul(${desc(a.shape, a.dtype)}@x)`,
      [a, x],
      `tq.matmul(V[${a.id}], V[${x.id}])`,
    );
    return;
  }
  if (c < 0.25) bShape = [K];
  else if (c < 0.6 || r <= 2) bShape = r === 1 && rng.chance(0.3) ? [rng.int(2, 4), K, N] : [K, N];
  else {
    const batch = s.slice(0, r - 2).map((d) => (rng.chance(0.3) ? 1 : d));
    bShape = [...batch.slice(rng.int(0, batch.length)), K, N];
  }
  const outShape = [
    ...(broadcast(s.slice(0, -2), bShape.slice(0, -2)) ?? []),
    ...(r > 1 ? [s[r - 2]] : []),
    ...(bShape.length > 1 ? [N] : []),
  ];
  const macs = numel(outShape) * K;
  if (macs > MAX_MACS || numel(outShape) > MAX_NUMEL) throw new GenReject("macs");
  let b: Val;
  if (bShape.length >= 2 && rng.chance(0.3)) {
    // A transposed (non-contiguous) view of a leaf as the right operand.
    const tShape = [...bShape.slice(0, -2), N, K];
    const lt = g.addLeaf(tShape, x.dtype);
    b = g.addStep("shape", "transpose(-1,-2)", [lt], `V[${lt.id}].transpose(-1, -2)`);
  } else b = g.addLeaf(bShape, x.dtype);
  g.addStep(
    "matmul",
    `matmul(x@${desc(b.shape, b.dtype)})`,
    [x, b],
    rng.chance(0.5) ? `V[${x.id}].matmul(V[${b.id}])` : `tq.matmul(V[${x.id}], V[${b.id}])`,
  );
};

const genAttention: GenFn = (g) => {
  const rng = g.rng;
  let q = g.pick((v) => isArith(v.dtype) && v.shape.length >= 3);
  if (!q || rng.chance(0.4)) {
    const D = rng.pick([64, 64, 16, 32, rng.int(1, 70)]);
    const lead = rng.chance(0.5) ? [rng.int(1, 2), rng.int(1, 4)] : [rng.int(1, 4)];
    q = g.addLeaf([...lead, rng.int(1, 24), D], g.dt);
  }
  const r = q.shape.length, lead = q.shape.slice(0, r - 2), T = q.shape[r - 2], D = q.shape[r - 1];
  const S = rng.chance(0.3) ? T : rng.int(1, 48);
  const Dv = rng.chance(0.7) ? D : pickExtent(rng);
  if (
    numel(lead) * T * S * (D + Dv) > 4_000_000 || numel([...lead, S, Math.max(D, Dv)]) > MAX_NUMEL
  ) {
    throw new GenReject("attention size");
  }
  const k = g.addLeaf([...lead, S, D], q.dtype);
  const v = g.addLeaf([...lead, S, Dv], q.dtype);
  const causal = rng.chance(0.5);
  const scale = rng.chance(0.6) ? undefined : rng.pick([0.125, 1, 0.05, 0.3]);
  const kv = rng.chance(0.25)
    ? g.addLeaf([1], "int32", "arg", Float64Array.of(rng.int(-1, S + 2)))
    : undefined;
  const opts: string[] = [];
  if (causal || rng.chance(0.3)) opts.push(`causal: ${causal}`);
  if (scale !== undefined) opts.push(`scale: ${scale}`);
  if (kv) opts.push(`kvLength: V[${kv.id}]`);
  const ins = [q, k, v, ...(kv ? [kv] : [])];
  g.addStep(
    "attention",
    `attention(T=${T},S=${S},D=${D},Dv=${Dv}${causal ? ",causal" : ""}${kv ? ",kvLen" : ""})`,
    ins,
    `tq.attention(V[${q.id}], V[${k.id}], V[${v.id}]${
      opts.length ? `, { ${opts.join(", ")} }` : ""
    })`,
    {
      scale: scale ?? (D > 0 ? 1 / Math.sqrt(D) : 1),
      causal,
      kv: kv?.id,
    },
  );
};

/** amax per scale element (finite values only; 0 when none). */
function amaxPer(x: Val, sShape: number[], qm: QMode): Float64Array {
  const n = numel(sShape);
  const map = scaleMap(x.shape, sShape, qm.mode, qm.dim, qm.bs);
  const out = new Float64Array(n);
  for (let i = 0; i < x.ref.length; i++) {
    const a = Math.abs(x.ref[i]);
    if (Number.isFinite(a) && a > out[map[i]]) out[map[i]] = a;
  }
  return out;
}
const BOUND: Record<string, number> = { int8: 127, int4: 7, float8e4m3: 448 };

/** quantize (and usually dequantize) of a float value. */
function qdqSteps(g: Gen, x: Val, withDq: boolean): Val {
  const rng = g.rng;
  const qdt = rng.pick(["int8", "int8", "int4", "float8e4m3"]) as DType;
  const r = x.shape.length;
  let qm: QMode = { mode: "tensor", dim: 0, bs: 0 };
  if (r > 0) {
    const m = rng.f();
    const dim = rng.int(0, r - 1);
    if (m < 0.35) qm = { mode: "channel", dim, bs: 0 };
    else if (m < 0.7 && qdt !== "float8e4m3") {
      const D = x.shape[dim];
      const bs = rng.pick([
        rng.int(1, D),
        Math.max(1, Math.ceil(D / rng.int(1, 4))),
        16,
        32,
        D + rng.int(0, 5),
      ]);
      qm = { mode: "block", dim, bs };
    }
  }
  const sShape = qm.mode === "tensor"
    ? (rng.chance(0.3) ? [1] : [])
    : qm.mode === "channel"
    ? [x.shape[qm.dim]]
    : x.shape.map((d, i) => (i === qm.dim ? Math.ceil(d / qm.bs) : d));
  const amax = amaxPer(x, sShape, qm);
  const f = rng.chance(0.4) ? 1 : rng.pick([0.3, 0.6, 0.9, 1.2, 2]);
  let sDT: DType = x.dtype !== "float32" && rng.chance(0.3) ? x.dtype : "float32";
  const sc = Float64Array.from(amax, (a) => {
    const s = Math.fround((a > 0 ? a : 1) * f / BOUND[qdt]);
    return s > 0 && Number.isFinite(s) ? s : 1;
  });
  if (
    sDT !== "float32" && sc.some((s) => !(roundTo(sDT, s) > 0) || !Number.isFinite(roundTo(sDT, s)))
  ) sDT = "float32";
  const useNum = qm.mode === "tensor" && sShape.length === 0 && rng.chance(0.25);
  const opts = qm.mode === "tensor"
    ? (sShape.length === 0 && r > 0 && rng.chance(0.2) ? `, { dim: ${rng.int(-r, r - 1)} }` : "")
    : qm.mode === "channel"
    ? `, { dim: ${rng.chance(0.3) ? qm.dim - r : qm.dim} }`
    : `, { dim: ${qm.dim}, blockSize: ${qm.bs} }`;
  let s: Val | undefined;
  let sText: string;
  if (useNum) sText = num(sc[0]);
  else {
    s = g.addLeaf(sShape, sDT, "const", sc, true);
    sText = `V[${s.id}]`;
  }
  const modeTxt = qm.mode === "tensor"
    ? "tensor"
    : qm.mode === "channel"
    ? `ch${qm.dim}`
    : `blk${qm.dim}/${qm.bs}`;
  const c = g.addStep(
    "quantize",
    `quantize(${shortDT[qdt]},${modeTxt}${sDT !== "float32" ? ",s" + shortDT[sDT] : ""})`,
    s ? [x, s] : [x],
    `tq.quantize(V[${x.id}], ${sText}, ${J(qdt)}${opts})`,
    {
      qdt,
      qm,
      scaleNum: useNum ? sc[0] : undefined,
    },
  );
  if (!withDq) return c;
  const outDT = sDT !== "float32" ? sDT : rng.chance(0.8) ? x.dtype : rng.pick(FLOATS);
  return g.addStep(
    "dequantize",
    `dequantize(→${shortDT[outDT]})`,
    s ? [c, s] : [c],
    `tq.dequantize(V[${c.id}], ${sText}, ${J(outDT)}${opts})`,
    {
      qm,
      scaleNum: useNum ? sc[0] : undefined,
    },
  );
}
const genQdq: GenFn = (g) => {
  const rng = g.rng;
  if (rng.chance(0.1)) {
    // dequantize of random codes
    const qdt = rng.pick(["int8", "int4", "float8e4m3"]) as DType;
    const c = g.addLeaf(randShape(rng, 1, 3), qdt);
    const s = rng.pick([0.01, 0.1, 1 / 127, 0.5]);
    const out = rng.pick(FLOATS);
    g.addStep(
      "dequantize",
      `dequantize(${shortDT[qdt]} leaf→${shortDT[out]})`,
      [c],
      `tq.dequantize(V[${c.id}], ${s}, ${J(out)})`,
      {
        qm: { mode: "tensor", dim: 0, bs: 0 },
        scaleNum: s,
      },
    );
    return;
  }
  qdqSteps(g, g.floatVal(), rng.chance(0.9));
};

let linearCounter = 0;
function linearStep(g: Gen, x: Val, quant?: string): Val {
  const rng = g.rng;
  const K = x.shape[x.shape.length - 1];
  const N = rng.pick([16, 32, 48, 64, pickExtent(rng), pickExtent(rng)]);
  const rows = numel(x.shape) / K;
  if (rows * N > MAX_NUMEL || rows * N * K > MAX_MACS) throw new GenReject("linear size");
  const dt = x.dtype;
  const hasBias = rng.chance(0.75);
  const wscale = 1 / Math.sqrt(K);
  const W = g.addLeaf(
    [N, K],
    dt,
    "const",
    Float64Array.from({ length: N * K }, () => wscale * rng.normal() * (rng.chance(0.01) ? 8 : 1)),
    true,
  );
  const B = hasBias
    ? g.addLeaf([N], dt, "const", Float64Array.from({ length: N }, () => 0.1 * rng.normal()), true)
    : undefined;
  const mode = quant ?? rng.weighted<string>([["float", 2], ["manual", 4], ["model", 4]]);
  const stepId = g.steps.length + 1000 * ++linearCounter;
  const m = `M[${stepId}]`;
  const fresh = [W.id, ...(B ? [B.id] : [])];
  const lines: string[] = [];
  let label = `Linear(${K}→${N}`;
  const ctorOpts = [`bias: ${hasBias}`, `dtype: ${J(dt)}`];
  let finalLines: string[] = [];
  const amaxX = x.ref.reduce((a, v) => (Number.isFinite(v) ? Math.max(a, Math.abs(v)) : a), 0);
  if (mode === "manual") {
    const qdt = rng.pick(["int8", "int8", "int4", "float8e4m3"]) as DType;
    const dim = rng.pick([undefined, 0, 0, 1]);
    const bs = dim !== undefined && qdt !== "float8e4m3" && rng.chance(0.4)
      ? rng.pick([16, 32, rng.int(1, dim === 0 ? N : K), 7])
      : undefined;
    const qm = qmodeOf(dim, bs);
    const sShape = bs !== undefined
      ? (dim === 0 ? [Math.ceil(N / bs), K] : [N, Math.ceil(K / bs)])
      : dim === undefined
      ? []
      : [dim === 0 ? N : K];
    const amax = amaxPer(W, sShape, qm);
    const f = rng.chance(0.5) ? 1 : rng.pick([0.8, 1.1, 0.5]);
    const ws = g.addLeaf(
      sShape,
      "float32",
      "const",
      Float64Array.from(amax, (a) => Math.fround((a > 0 ? a : 1) * f / BOUND[qdt])),
      true,
    );
    fresh.push(ws.id);
    const quantOpts = [
      `quantDtype: ${J(qdt)}`,
      ...(dim !== undefined ? [`weightQuantDim: ${dim}`] : []),
      ...(bs !== undefined ? [`blockSize: ${bs}`] : []),
    ];
    const inCtor = rng.chance(0.5);
    if (inCtor) ctorOpts.push(...quantOpts);
    else finalLines.push(`${m}.configureQuantization({ ${quantOpts.join(", ")} });`);
    finalLines.push(`${m}.weightScale = FRESH(${ws.id});`);
    label += `,${shortDT[qdt]}${dim === undefined ? "" : bs ? `,blk${dim}/${bs}` : `,ch${dim}`}`;
    if (rng.chance(0.6)) {
      const is = g.addLeaf(
        [],
        "float32",
        "const",
        Float64Array.of(
          Math.fround((amaxX > 0 ? amaxX : 1) * rng.pick([1, 1, 0.7, 1.3]) / BOUND[qdt]),
        ),
        true,
      );
      fresh.push(is.id);
      finalLines.push(`${m}.inputScale = FRESH(${is.id});`);
      label += ",act";
    }
  } else if (mode !== "float") {
    const qmode = mode === "model" ? rng.pick(["w8a8", "w8a8", "w8", "w4", "fp8"]) : mode;
    const blockSize = qmode === "w4" ? rng.pick([16, 32, 128, rng.int(1, K)]) : undefined;
    const amaxOpt = qmode === "w8a8" || qmode === "fp8"
      ? `, amax: { "0": { inputAmax: ${
        num(Math.fround((amaxX > 0 ? amaxX : 1) * rng.pick([1, 1, 0.7, 1.3])))
      } } }`
      : "";
    finalLines.push(
      `tq.quantizeModel(new tq.Sequential(${m}), { mode: ${J(qmode)}${amaxOpt}${
        blockSize ? `, blockSize: ${blockSize}` : ""
      } });`,
    );
    label += `,${qmode}${blockSize ? "/" + blockSize : ""}`;
  }
  if (mode !== "float" && rng.chance(0.3)) {
    finalLines.push(`tq.compressWeights(${m});`);
    label += ",compressed";
  }
  lines.push(
    `${m} = tq.withoutInitialization(() => new tq.Linear(${K}, ${N}, { ${ctorOpts.join(", ")} }));`,
  );
  lines.push(`${m}.weight = FRESH(${W.id});`);
  if (B) lines.push(`${m}.bias = FRESH(${B.id});`);
  lines.push(...finalLines);
  finalLines = [];
  label += ")";
  return g.addStep(
    "linear",
    label,
    [x],
    `${m}.forward(V[${x.id}])`,
    { mod: stepId, W: W.id, B: B?.id },
    lines.join("\n"),
    fresh,
  );
}

function afterLinear(g: Gen, y: Val): void {
  const rng = g.rng;
  if (rng.chance(0.35)) {
    const act = rng.pick(["gelu", "gelu_tanh", "relu"]);
    y = g.addStep(
      "unary",
      act === "gelu_tanh" ? "gelu(tanh)" : act,
      [y],
      act === "gelu_tanh" ? `V[${y.id}].gelu({ approximate: "tanh" })` : `V[${y.id}].${act}()`,
      {
        op: act === "relu" ? "relu" : "gelu",
        approx: act === "gelu_tanh" ? "tanh" : "none",
      },
    );
  }
  if (rng.chance(0.35)) {
    const r = g.addLeaf([...y.shape], y.dtype);
    const swap = rng.chance(0.3);
    g.addStep(
      "binary",
      "add(residual)",
      [y, r],
      swap ? `V[${r.id}].add(V[${y.id}])` : `V[${y.id}].add(V[${r.id}])`,
      {
        op: "add",
        slots: swap ? [1, 0] : [0, 1],
        scalars: [undefined, undefined],
      },
    );
  }
}

const genLinear: GenFn = (g) => {
  const rng = g.rng;
  let x = g.pick((v) =>
    isArith(v.dtype) && v.shape.length >= 1 && v.shape[v.shape.length - 1] <= 70
  );
  if (!x || rng.chance(0.3)) {
    const K = rng.pick([16, 32, 48, 64, pickExtent(rng)]);
    const rows = rng.pick([[rng.int(1, 8)], [rng.int(9, 16)], [rng.int(17, 70)], [
      rng.int(1, 3),
      rng.int(1, 24),
    ]]);
    x = g.addLeaf(capShape([...rows, K]), g.dt);
  }
  afterLinear(g, linearStep(g, x));
};

const genLnLinear: GenFn = (g) => {
  const rng = g.rng;
  const K = rng.pick([16, 32, 64, 48, pickExtent(rng)]);
  const rows = rng.pick([[rng.int(1, 8)], [rng.int(9, 40)], [rng.int(1, 2), rng.int(1, 16)]]);
  const x = g.addLeaf(capShape([...rows, K]), g.dt);
  const ln = layerNormStep(g, x, true);
  afterLinear(g, linearStep(g, ln, rng.pick(["model", "model", "manual", "float"])));
};

const genQkvAttention: GenFn = (g) => {
  const rng = g.rng;
  const B = rng.int(1, 2), H = rng.int(1, 4), D = rng.pick([64, 64, 32, 16, 128]);
  const T = rng.int(1, Math.max(1, Math.min(40, Math.floor(MAX_NUMEL / (B * 3 * H * D)))));
  const C = H * D;
  if (B * T * 3 * C > MAX_NUMEL) throw new GenReject("qkv size");
  const x = g.addLeaf([B, T, 3 * C], g.dt);
  const parts: Val[] = [];
  for (let i = 0; i < 3; i++) {
    const sl = g.addStep(
      "shape",
      `slice(qkv ${i})`,
      [x],
      `V[${x.id}].slice([null, null, [${i * C}, ${(i + 1) * C}]])`,
    );
    const rs = g.addStep(
      "shape",
      "reshape([B,T,H,D])",
      [sl],
      `V[${sl.id}].reshape(${J([B, T, H, D])})`,
    );
    parts.push(g.addStep("shape", "permute(0,2,1,3)", [rs], `V[${rs.id}].permute([0, 2, 1, 3])`));
  }
  const causal = rng.chance(0.7);
  const at = g.addStep(
    "attention",
    `attention(T=${T},H=${H},D=${D}${causal ? ",causal" : ""})`,
    parts,
    `tq.attention(V[${parts[0].id}], V[${parts[1].id}], V[${parts[2].id}], { causal: ${causal} })`,
    {
      scale: 1 / Math.sqrt(D),
      causal,
    },
  );
  const pb = g.addStep("shape", "permute(0,2,1,3)", [at], `V[${at.id}].permute([0, 2, 1, 3])`);
  const y = g.addStep("shape", "reshape([B,T,C])", [pb], `V[${pb.id}].reshape(${J([B, T, C])})`);
  if (C <= 70 * 2 && rng.chance(0.6)) linearStep(g, y, rng.pick(["model", "manual"]));
};

function sliceRange(rng: Rng, n: number): { text: string; drop: boolean; full: boolean } {
  const r = rng.f();
  if (r < 0.25) return { text: "null", drop: false, full: true };
  if (r < 0.35) {
    const i = rng.int(0, n - 1);
    return { text: String(rng.chance(0.3) ? i - n : i), drop: true, full: false };
  }
  const step = rng.pick([1, 1, 1, 2, 3, -1, -2]);
  if (step > 0) {
    const start = rng.int(0, n - 1);
    const stop = rng.int(start + 1, n);
    const st = rng.chance(0.2) ? start - n : start;
    const sp = stop === n
      ? (rng.chance(0.5) ? "null" : rng.chance(0.3) ? String(n + 5) : String(n))
      : String(stop);
    return {
      text: `[${st}, ${sp}${step !== 1 ? `, ${step}` : ""}]`,
      drop: false,
      full: start === 0 && stop === n && step === 1,
    };
  }
  const start = rng.int(0, n - 1);
  const stop = rng.int(-1, start - 1);
  return { text: `[${start}, ${stop === -1 ? "null" : stop}, ${step}]`, drop: false, full: false };
}

const genShape: GenFn = (g) => {
  const rng = g.rng;
  const kind = rng.weighted<string>([
    ["reshape", 3],
    ["permute", 4],
    ["transpose", 2],
    ["squeeze", 1],
    ["unsqueeze", 1],
    ["expand", 3],
    ["flatten", 1],
    ["slice", 4],
    ["concat", 2],
    ["stack", 1],
    ["split", 1],
    ["gather", 2],
    ["embedding", 1],
    ["tri", 2],
    ["sliceScatter", 2],
  ]);
  const want = kind === "embedding"
    ? (v: Val) => v.shape.length === 2
    : kind === "squeeze"
    ? (v: Val) => v.shape.includes(1)
    : () => true;
  const x = g.pick((v) => v.dtype !== "int4" && want(v)) ??
    (kind === "embedding"
      ? g.addLeaf([rng.int(2, 40), pickExtent(rng)], g.dt)
      : g.pick((v) => v.dtype !== "int4") ?? g.floatVal());
  const s = x.shape, r = s.length, X = `V[${x.id}]`;
  const add = (label: string, expr: string, ins: Val[] = [x], index: number[] = []) =>
    g.addStep("shape", label, ins, expr, { index });
  switch (kind) {
    case "reshape": {
      const n = numel(s);
      let rem = n;
      const dims: number[] = [];
      const rank = rng.int(0, 4);
      if (rank === 0 && n !== 1) throw new GenReject("reshape");
      for (let i = 0; i < rank - 1; i++) {
        const d = rng.pick(divisors(rem));
        dims.push(d);
        rem /= d;
      }
      if (rank > 0) dims.push(rem);
      rng.shuffle(dims);
      if (dims.length && rng.chance(0.3)) dims[rng.int(0, dims.length - 1)] = -1;
      if (dims.filter((d) => d === -1).length === 1 && numel(dims.filter((d) => d !== -1)) === 0) {
        throw new GenReject("reshape0");
      }
      add(`reshape(${J(dims)})`, `${X}.reshape(${J(dims)})`);
      return;
    }
    case "permute": {
      if (r < 2) throw new GenReject("permute");
      const perm = rng.shuffle([...Array(r).keys()]);
      add(
        `permute(${perm})`,
        rng.chance(0.3) ? `tq.permute(${X}, ${J(perm)})` : `${X}.permute(${J(perm)})`,
      );
      return;
    }
    case "transpose": {
      if (r < 2) throw new GenReject("transpose");
      const a = rng.int(-r, r - 1), b = rng.int(-r, r - 1);
      add(`transpose(${a},${b})`, `${X}.transpose(${a}, ${b})`);
      return;
    }
    case "squeeze": {
      const ones = s.flatMap((d, i) => (d === 1 ? [i] : []));
      if (ones.length === 0) throw new GenReject("squeeze");
      const ax = rng.chance(0.4) ? undefined : rng.pick(ones);
      add(`squeeze(${ax})`, `${X}.squeeze(${ax === undefined ? "" : ax})`);
      return;
    }
    case "unsqueeze": {
      if (r >= 4) throw new GenReject("unsqueeze");
      const ax = rng.int(-r - 1, r);
      add(`unsqueeze(${ax})`, `${X}.unsqueeze(${ax})`);
      return;
    }
    case "expand": {
      let out = s.map((
        d,
      ) => (d === 1 && rng.chance(0.7) ? rng.int(2, 12) : rng.chance(0.3) ? -1 : d));
      if (r < 4 && rng.chance(0.4)) out = [rng.int(1, 5), ...out];
      const real = out.map((d, i) => (d === -1 ? s[i - (out.length - r)] : d));
      if (numel(real) > MAX_NUMEL) throw new GenReject("expand size");
      add(`expand(${J(out)})`, `${X}.expand(${J(out)})`);
      return;
    }
    case "flatten": {
      const rr = Math.max(r, 1);
      const a = rng.int(0, rr - 1), b = rng.int(a, rr - 1);
      add(`flatten(${a},${b})`, `${X}.flatten(${a}, ${b})`);
      return;
    }
    case "slice": {
      if (r === 0) throw new GenReject("slice");
      const n = rng.int(1, r);
      const rs = s.slice(0, n).map((d) => sliceRange(rng, d));
      if (rs.every((q) => q.full)) throw new GenReject("slice full");
      const txt = `[${rs.map((q) => q.text).join(", ")}]`;
      add(`slice(${txt})`, rng.chance(0.3) ? `tq.slice(${X}, ${txt})` : `${X}.slice(${txt})`);
      return;
    }
    case "concat": {
      if (r === 0) throw new GenReject("concat");
      const a = rng.int(0, r - 1);
      const o = g.addLeaf(s.map((d, i) => (i === a ? rng.int(1, 8) : d)), x.dtype);
      if (numel(s) + numel(o.shape) > MAX_NUMEL) throw new GenReject("concat size");
      const list = rng.chance(0.5) ? [x, o] : rng.chance(0.5) ? [o, x] : [x, o, x];
      add(
        `concat(ax=${a})`,
        `tq.concat([${list.map((v) => `V[${v.id}]`).join(", ")}], ${rng.chance(0.3) ? a - r : a})`,
        [x, o],
      );
      return;
    }
    case "stack": {
      if (r >= 4 || numel(s) * 2 > MAX_NUMEL) throw new GenReject("stack");
      const o = g.addLeaf([...s], x.dtype);
      const a = rng.int(-r - 1, r);
      add(`stack(ax=${a})`, `tq.stack([V[${x.id}], V[${o.id}]], ${a})`, [x, o]);
      return;
    }
    case "split": {
      if (r === 0) throw new GenReject("split");
      const a = rng.int(0, r - 1), n = s[a];
      if (n < 2) throw new GenReject("split1");
      let sizes: string, parts: number;
      if (rng.chance(0.5)) {
        const ds = divisors(n).filter((d) => d > 1);
        const k = rng.pick(ds);
        sizes = String(k);
        parts = k;
      } else {
        const c = rng.int(1, n - 1);
        sizes = J([c, n - c]);
        parts = 2;
      }
      const which = rng.int(0, parts - 1);
      add(`split(${sizes},ax=${a})[${which}]`, `${X}.split(${sizes}, ${a})[${which}]`);
      return;
    }
    case "gather": {
      if (r === 0) throw new GenReject("gather");
      const a = rng.int(0, r - 1), n = s[a];
      const ishape = randShape(rng, 0, 2, 64).map((d) => Math.min(d, 6));
      const idx = g.addLeaf(
        ishape,
        "int32",
        "arg",
        Float64Array.from({ length: numel(ishape) }, () => rng.int(-n, n - 1)),
      );
      if (numel(s) / n * numel(ishape) > MAX_NUMEL) throw new GenReject("gather size");
      add(`gather(ax=${a},${desc(ishape, "int32")})`, `${X}.gather(V[${idx.id}], ${a})`, [x, idx], [
        idx.id,
      ]);
      return;
    }
    case "embedding": {
      if (r !== 2) throw new GenReject("embedding");
      const ishape = randShape(rng, 1, 2, 64).map((d) => Math.min(d, 8));
      const ids = g.addLeaf(
        ishape,
        "int32",
        "arg",
        Float64Array.from({ length: numel(ishape) }, () => rng.int(0, s[0] - 1)),
      );
      add(`embedding(${desc(ishape, "int32")})`, `tq.embedding(V[${ids.id}], ${X})`, [x, ids], [
        ids.id,
      ]);
      return;
    }
    case "tri": {
      if (r < 2) throw new GenReject("tri");
      const op = rng.pick(["triu", "tril"]), k = rng.int(-3, 3);
      add(`${op}(${k})`, `tq.${op}(${X}, ${k})`);
      return;
    }
    case "sliceScatter": {
      if (r === 0) throw new GenReject("sliceScatter");
      const a = rng.int(0, r - 1), n = s[a], m = rng.int(1, n);
      const src = g.addLeaf(s.map((d, i) => (i === a ? m : d)), x.dtype);
      if (rng.chance(0.4)) {
        const st = g.addLeaf(
          rng.chance(0.5) ? [1] : [],
          "int32",
          "arg",
          Float64Array.of(rng.int(-2, n - m + 2)),
        );
        add(
          `sliceScatter(ax=${a},m=${m},start=tensor)`,
          `tq.sliceScatter(${X}, V[${src.id}], V[${st.id}], ${a})`,
          [x, src, st],
          [st.id],
        );
      } else {
        const st = rng.int(0, n - m);
        add(
          `sliceScatter(ax=${a},m=${m},start=${st})`,
          `tq.sliceScatter(${X}, V[${src.id}], ${st}, ${rng.chance(0.3) ? a - r : a})`,
          [x, src],
        );
      }
      return;
    }
  }
};

const GENERATORS: [GenFn, number, string][] = [
  [genUnary, 10, "unary"],
  [genBinary, 14, "binary"],
  [genCompareWhere, 5, "compare/where"],
  [genCast, 5, "cast"],
  [genReduce, 9, "reduce"],
  [genArg, 3, "argmax"],
  [genShape, 16, "shape"],
  [genMatmul, 6, "matmul"],
  [genSoftmax, 4, "softmax"],
  [genLayerNorm, 3, "layerNorm"],
  [genAttention, 3, "attention"],
  [genQkvAttention, 2, "qkv-attention"],
  [genQdq, 8, "qdq"],
  [genLinear, 7, "linear"],
  [genLnLinear, 3, "ln-linear"],
];

function generateCase(rng: Rng): Gen {
  const dt = rng.weighted<DType>([["float32", 45], ["float16", 30], ["bfloat16", 25]]);
  const g = new Gen(rng, dt);
  const nLeaves = rng.int(1, 2);
  for (let i = 0; i < nLeaves; i++) g.addLeaf(randShape(rng, 0, 4), dt);
  const target = rng.int(3, 12);
  let attempts = 0;
  while (g.steps.length < target && attempts++ < 80) {
    const fn = rng.weighted(GENERATORS.map(([f, w]) => [f, w] as [GenFn, number]));
    const nVals = g.vals.length, nSteps = g.steps.length;
    try {
      fn(g);
    } catch (e) {
      if (!(e instanceof GenReject)) throw e;
      // Keep values made before the rejected step (leaves are harmless; partial macros stay).
      if (g.vals.length > nVals && g.steps.length === nSteps) {
        // drop leaves only created for the rejected step
        while (g.vals.length > nVals && !g.vals[g.vals.length - 1].step) g.vals.pop();
      }
    }
  }
  return g;
}

// ------------------------------------------------------------------------------------------
// Running and comparing

interface Mismatch {
  output: number;
  desc: string;
  bad: number;
  n: number;
  excused: number;
  worst: { index: number[]; ref: number; got: number; tol: number; absErr: number } | null;
}

function compareVal(v: Val, got: Float64Array, E: Float64Array = v.E): Mismatch {
  let bad = 0, excused = 0, worstScore = -1;
  let worst: Mismatch["worst"] = null;
  if (got.length !== v.ref.length) {
    return {
      output: v.id,
      desc: desc(v.shape, v.dtype),
      bad: 1,
      n: v.ref.length,
      excused: 0,
      worst: { index: [], ref: v.ref.length, got: got.length, tol: 0, absErr: Infinity },
    };
  }
  for (let i = 0; i < got.length; i++) {
    const y = v.ref[i], e = E[i], d = got[i];
    if (e === Infinity) {
      excused++;
      continue;
    }
    const ok = Number.isNaN(y)
      ? Number.isNaN(d)
      : !Number.isFinite(y)
      ? d === y
      : Number.isFinite(d) && Math.abs(d - y) <= e;
    if (ok) continue;
    bad++;
    const absErr = Number.isFinite(d) && Number.isFinite(y) ? Math.abs(d - y) : Infinity;
    const score = absErr === Infinity ? Infinity : absErr / Math.max(e, 1e-300);
    if (score > worstScore || worst === null) {
      worstScore = score;
      worst = { index: unravel(i, v.shape), ref: y, got: d, tol: e, absErr };
    }
  }
  return { output: v.id, desc: desc(v.shape, v.dtype), bad, n: got.length, excused, worst };
}

/** Builds the whole graph in an environment on `device` (leaves uploaded, modules set up). */
function setupEnv(g: Gen, device: string, steps: Step[]): Env {
  const env = makeEnv(device, g);
  if (device === "cpu") {
    env.LEAF = (id) => {
      const v = g.vals[id];
      const t = mkTensor(v.ref, v.shape, v.dtype, device);
      return t;
    };
  }
  const used = new Set(steps.flatMap((s) => s.ins));
  for (const v of g.vals) if (v.leaf && used.has(v.id)) env.V[v.id] = env.LEAF(v.id);
  for (const s of steps) if (s.setup) runCode(s.setup, env);
  return env;
}

let lastGraphOps: string[] = [];
function runEager(env: Env, steps: Step[], outputs: number[]): Float64Array[] {
  for (const s of steps) runCode(s.code, env);
  lastGraphOps = tq.inspectGraph(env.V[outputs[0]]).ops;
  const res = outputs.map((o) => {
    const t = env.V[o];
    return readF64(t);
  });
  for (const o of outputs) env.created.push(env.V[o]);
  return res;
}

function runCompiled(
  env: Env,
  g: Gen,
  steps: Step[],
  outputs: number[],
): { res: Float64Array[]; ops?: string[] } {
  const used = new Set(steps.flatMap((s) => s.ins));
  const argIds = g.vals.filter((v) => v.leaf?.role === "arg" && used.has(v.id)).map((v) => v.id);
  const consts = new Map<number, Tensor>();
  for (const v of g.vals) {
    if (v.leaf && !argIds.includes(v.id) && env.V[v.id]) consts.set(v.id, env.V[v.id]);
  }
  const args = argIds.map((id) => env.V[id]);
  const fn = (...a: Tensor[]): Tensor[] => {
    const sub: Env = { ...env, V: [] };
    for (const [id, t] of consts) sub.V[id] = t;
    argIds.forEach((id, i) => (sub.V[id] = a[i]));
    for (const s of steps) runCode(s.code, sub);
    return outputs.map((o) => sub.V[o]);
  };
  const exe = tq.compile(fn, {
    args: args.map((t) => tq.inputInfo(t.shape, t.dtype)),
    device: env.device,
  });
  try {
    const out = [exe(...args)].flat();
    const res = out.map((t) => readF64(t));
    for (const t of out) t.dispose();
    return { res };
  } finally {
    exe.dispose();
  }
}

/** A CPU run where each step's output is nudged within its local tolerance (see SIMULATE). */
function runSimulated(g: Gen, outputs: number[], rng: Rng): Float64Array[] {
  const env = makeEnv("cpu", g);
  const cur = new Map<number, Float64Array>();
  const mutateAt = rng.int(0, g.steps.length - 1);
  for (const v of g.vals) if (v.leaf) env.V[v.id] = v.t;
  for (const s of g.steps) if (s.setup) runCode(s.setup, env);
  for (const step of g.steps) {
    runCode(step.code, env);
    const t = env.V[step.out];
    realizeInOrder(t);
    const y = g.vals[step.out];
    const got = readF64(t);
    excuseBoundaries = false;
    let Eloc: Float64Array;
    try {
      Eloc = computeE(step, g.vals, g.refEnv, (r) => zerosOf(r.ref.length));
    } finally {
      excuseBoundaries = true;
    }
    const edge = rng.chance(0.3);
    if (isFloat(y.dtype)) {
      for (let i = 0; i < got.length; i++) {
        const e = Eloc[i];
        if (!(e > 0) || e === Infinity || !Number.isFinite(got[i])) continue;
        const u = edge ? (rng.chance(0.5) ? 0.9 : -0.9) : 1.8 * (rng.f() - 0.5);
        // Stay on the reference's side of the element's value (rounded to the dtype).
        got[i] = roundTo(y.dtype, got[i] + u * e * 0.5);
      }
      if (y.dtype === "float8e4m3") {
        for (let i = 0; i < got.length; i++) got[i] = roundTo(y.dtype, got[i]);
      }
      env.V[step.out] = mkTensor(got, y.shape, y.dtype, "cpu");
    }
    if (MUTATE && step.idx === mutateAt) {
      // A deliberate bug: one element off by 1% (+1e-3), or an integer / bool flipped.
      const i = rng.int(0, got.length - 1);
      if (Number.isFinite(got[i])) {
        got[i] = isFloat(y.dtype)
          ? roundTo(y.dtype, got[i] + (0.01 * Math.abs(got[i]) + 1e-3) * (rng.chance(0.5) ? 1 : -1))
          : y.dtype === "bool"
          ? 1 - got[i]
          : got[i] + (got[i] > 0 ? -1 : 1);
        env.V[step.out] = mkTensor(got, y.shape, y.dtype, "cpu");
      }
    }
    cur.set(step.out, got);
    if (VERBOSE) {
      let worst = 0, at = -1;
      for (let i = 0; i < got.length; i++) {
        const e = y.E[i], d = Math.abs(got[i] - y.ref[i]);
        if (e === Infinity || !(d > 0)) continue;
        if (d / e > worst) [worst, at] = [d / e, i];
      }
      console.log(
        `  sim step ${step.idx} ${step.label}: worst |sim-ref|/E = ${worst.toFixed(3)}` +
          (at >= 0 ? ` at ${at} (ref ${y.ref[at]}, sim ${got[at]}, E ${y.E[at]})` : ""),
      );
    }
  }
  return outputs.map((o) => cur.get(o) ?? readF64(env.V[o]));
}

const FUSION_SETTERS: [(on: boolean) => void, () => boolean][] = [
  [tq.setQdqFusion, tq.qdqFusionEnabled],
  [tq.setLinearFusion, tq.linearFusionEnabled],
  [tq.setNormFolding, tq.normFoldingEnabled],
  [tq.setResidualFusion, tq.residualFusionEnabled],
  [tq.setAttentionViewFusion, tq.attentionViewFusionEnabled],
  [tq.setAttentionQlinearFusion, tq.attentionQlinearFusionEnabled],
];
function withFusionsOff<T>(fn: () => T): T {
  const saved = FUSION_SETTERS.map(([, get]) => get());
  FUSION_SETTERS.forEach(([set]) => set(false));
  try {
    return fn();
  } finally {
    FUSION_SETTERS.forEach(([set], i) => set(saved[i]));
  }
}

// ---------------- repro snippets

function b64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}
function dataEntry(v: RV): string {
  let kind: string, bytes: Uint8Array;
  if (isFloat(v.dtype)) {
    kind = "f32";
    bytes = new Uint8Array(Float32Array.from(v.ref).buffer);
  } else if (v.dtype === "int32") {
    kind = "i32";
    bytes = new Uint8Array(Int32Array.from(v.ref).buffer);
  } else if (v.dtype === "int8" || v.dtype === "int4") {
    kind = "i8";
    bytes = new Uint8Array(Int8Array.from(v.ref).buffer);
  } else {
    kind = "u8";
    bytes = Uint8Array.from(v.ref);
  }
  return `[${J(v.shape)}, ${J(v.dtype)}, ${J(kind)}, ${J(b64(bytes))}]`;
}

function makeRepro(opts: {
  title: string;
  data: Map<number, RV>;
  argIds: number[];
  constIds: number[];
  steps: Step[];
  outputs: number[];
  compiled: boolean;
  notes: string[];
}): string {
  const setups = opts.steps.filter((s) => s.setup).map((s) => s.setup!).join("\n").split("\n").map((
    l,
  ) => "  " + l).join("\n");
  const codes = opts.steps.map((s) => `    ${s.code} // ${s.label}`).join("\n");
  const data = [...opts.data].map(([id, v]) => `  ${id}: ${dataEntry(v)},`).join("\n");
  return `// tensorq differential-fuzz repro: ${opts.title}
${opts.notes.map((n) => `// ${n}`).join("\n")}
// Run: deno run -A repro.ts [device]     (compares "cpu" with the device, default ${J(DEVICE)})
import * as tq from ${J(TQ_URL)};
const DEV = Deno.args[0] ?? ${J(DEVICE)};
const DATA: Record<number, [number[], tq.DType, string, string]> = {
${data}
};
function leafOn(dev: string, id: number): tq.Tensor {
  const [shape, dtype, kind, b64] = DATA[id];
  const bin = atob(b64);
  const u = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
  const data = kind === "f32" ? new Float32Array(u.buffer) : kind === "i32" ? new Int32Array(u.buffer) : kind === "i8" ? new Int8Array(u.buffer) : u;
  return tq.tensor(data, { shape, dtype, device: dev });
}
function run(dev: string, compiled: boolean): tq.Tensor[] {
  const V: tq.Tensor[] = [];
  const M: Record<number, tq.Linear> = {};
  const LEAF = (id: number) => leafOn(dev, id);
  const FRESH = LEAF;
  const ARGS: number[] = ${J(opts.argIds)};
  for (const id of ${J(opts.constIds)}) V[id] = LEAF(id);
${setups}
  const body = (...args: tq.Tensor[]): tq.Tensor[] => {
    ARGS.forEach((id, i) => (V[id] = args[i]));
${codes}
    return [${opts.outputs.map((o) => `V[${o}]`).join(", ")}];
  };
  const inputs = ARGS.map(LEAF);
  if (!compiled) return body(...inputs);
  const exe = tq.compile(body, { args: inputs.map((t) => tq.inputInfo(t.shape, t.dtype)), device: dev });
  return [exe(...inputs)].flat();
}
// The reference: the CPU, every node evaluated on its own (the ops' own semantics, no fusion).
function opByOp(t: tq.Tensor): tq.Tensor {
  const order: tq.Node[] = [];
  const seen = new Set<tq.Node>();
  const visit = (n: tq.Node) => {
    if (n.realized || seen.has(n)) return;
    seen.add(n);
    n.inputs.forEach(visit);
    order.push(n);
  };
  visit(t.node);
  for (const n of order) new tq.Tensor(n).evaluate();
  return t;
}
const ref = run("cpu", false).map(opByOp);
const got = run(DEV, ${opts.compiled});
ref.forEach((r, k) => {
  const a = Array.from(r.dataSync() as unknown as ArrayLike<number>);
  const b = Array.from(got[k].dataSync() as unknown as ArrayLike<number>);
  let worst = -1, at = -1;
  for (let i = 0; i < a.length; i++) {
    const same = Number.isNaN(a[i]) ? Number.isNaN(b[i]) : a[i] === b[i];
    const d = same ? 0 : Number.isFinite(a[i] - b[i]) ? Math.abs(a[i] - b[i]) : Infinity;
    if (d > worst) [worst, at] = [d, i];
  }
  console.log(\`output \${k} \${r.dtype} [\${r.shape}]: max |cpu - \${DEV}| = \${worst} at flat index \${at} (cpu \${a[at]}, \${DEV} \${b[at]})\`);
});
`;
}

// ---------------- the case

type Localized =
  | { step: number; label: string; worst: Mismatch["worst"]; bad: number; n: number }
  | string;
interface Finding {
  seed: number;
  case: number;
  type: "mismatch" | "error-one-device" | "crash" | "cpu-only-error";
  path: string;
  ops: string[];
  inputs: string[];
  message: string;
  mismatches?: Mismatch[];
  localized?: Localized;
  fusionsOff?: string;
  graphOps?: string[];
  repro?: string;
  note?: string;
}

interface CaseResult {
  status: "pass" | "fail" | "skip";
  reason?: string;
  findings: Finding[];
  nOps: number;
  kinds?: string[];
}

function describeCase(g: Gen) {
  return {
    ops: g.steps.map((s) => s.label),
    inputs: g.vals.filter((v) => v.leaf && !v.hidden).map((v) =>
      `v${v.id}:${desc(v.shape, v.dtype)}${v.leaf!.role === "const" ? "(const)" : ""}`
    ),
  };
}

function fullRepro(g: Gen, outputs: number[], compiled: boolean, title: string): string {
  const used = new Set(g.steps.flatMap((s) => [...s.ins, ...s.fresh]));
  const data = new Map<number, RV>();
  for (const v of g.vals) if (v.leaf && used.has(v.id)) data.set(v.id, v);
  const insUsed = new Set(g.steps.flatMap((s) => s.ins));
  const argIds = g.vals.filter((v) => v.leaf?.role === "arg" && insUsed.has(v.id)).map((v) => v.id);
  const constIds = g.vals.filter((v) => v.leaf && v.leaf.role === "const" && insUsed.has(v.id)).map(
    (v) => v.id,
  );
  return makeRepro({
    title,
    data,
    argIds,
    constIds,
    steps: g.steps,
    outputs,
    compiled,
    notes: ["whole graph as the fuzzer ran it"],
  });
}

/** Runs each step alone on the device with the reference's inputs; the first that fails. */
function localize(g: Gen): Localized {
  for (const step of g.steps) {
    const ins = step.ins.map((i) => g.vals[i]);
    const env = makeEnv(DEVICE, g);
    try {
      for (const v of ins) env.V[v.id] = mkTensor(v.ref, v.shape, v.dtype, DEVICE);
      for (const v of ins) env.created.push(env.V[v.id]);
      if (step.setup) runCode(step.setup, env);
      runCode(step.code, env);
      const y = g.vals[step.out];
      const got = readF64(env.V[step.out]);
      env.created.push(env.V[step.out]);
      const Eloc = computeE(step, g.vals, g.refEnv, (r) => zerosOf(r.ref.length));
      const m = compareVal(y, got, Eloc);
      if (m.bad > 0) {
        return { step: step.idx, label: step.label, worst: m.worst, bad: m.bad, n: m.n };
      }
    } catch (e) {
      return `step ${step.idx} ${step.label} raised on ${DEVICE} with the reference's inputs: ${
        errText(e)
      }`;
    } finally {
      disposeEnv(env);
    }
  }
  return "no single step fails alone with the reference's inputs (a whole-graph / fusion / plan issue)";
}

function stepRepro(g: Gen, idx: number): string {
  const step = g.steps[idx];
  const data = new Map<number, RV>();
  for (const i of [...step.ins, ...step.fresh]) data.set(i, g.vals[i]);
  return makeRepro({
    title: `seed ${SEED} case ${currentCase}, step ${idx} alone: ${step.label}`,
    data,
    argIds: [],
    constIds: step.ins,
    steps: [step],
    outputs: [step.out],
    compiled: false,
    notes: ["single op with the CPU reference's input values (the localized failing step)"],
  });
}

let currentCase = -1;
/** Strictness statistics over compared output elements: excused, exact, log2(tol / ulp) buckets. */
const tolStats = { elements: 0, excused: 0, exact: 0, ulpBuckets: new Array<number>(64).fill(0) };
function recordTol(v: Val): void {
  for (let i = 0; i < v.E.length; i++) {
    const e = v.E[i], y = v.ref[i];
    tolStats.elements++;
    if (e === Infinity) tolStats.excused++;
    else if (e === 0 || !Number.isFinite(y)) tolStats.exact++;
    else if (isFloat(v.dtype)) {
      const r = e / ulp(v.dtype, y);
      tolStats.ulpBuckets[Math.max(0, Math.min(63, Math.ceil(Math.log2(Math.max(r, 1)))))]++;
    } else tolStats.ulpBuckets[Math.max(0, Math.min(63, Math.ceil(Math.log2(Math.max(e, 1)))))]++;
  }
}
function tolSummary(): string {
  const t = tolStats, n = t.elements || 1;
  const inexact = t.ulpBuckets.reduce((a, b) => a + b, 0);
  let acc = 0, med = 0, p90 = 0;
  for (let k = 0; k < 64; k++) {
    acc += t.ulpBuckets[k];
    if (!med && acc >= inexact / 2) med = k;
    if (!p90 && acc >= inexact * 0.9) {
      p90 = k;
      break;
    }
  }
  return `${t.elements} output elements checked: ${(100 * t.exact / n).toFixed(1)}% exact, ` +
    `${(100 * t.excused / n).toFixed(2)}% excused (ambiguous), the rest within a median of ` +
    `≤2^${med} and a 90th percentile of ≤2^${p90} ulps of their dtype`;
}

function runCase(caseIdx: number): CaseResult {
  currentCase = caseIdx;
  caseFlags.clear();
  const rng = new Rng(SEED, caseIdx);
  let g: Gen;
  try {
    g = generateCase(rng);
  } catch (e) {
    return {
      status: "skip",
      reason: `harness error in generation: ${errText(e)}`,
      findings: [],
      nOps: 0,
    };
  }
  const findings: Finding[] = [];
  const { ops, inputs } = describeCase(g);
  const base = { seed: SEED, case: caseIdx, ops, inputs };
  for (const c of g.cpuOnlyErrors) {
    findings.push({
      ...base,
      type: "cpu-only-error",
      path: "step",
      message:
        `CPU raised at evaluation but ${DEVICE} did not (${c.targetResult}) in ${c.label}: ${c.error}`,
    });
  }
  if (g.steps.length < 3) {
    return { status: "skip", reason: "fewer than 3 ops generated", findings, nOps: g.steps.length };
  }
  // Outputs: the last value, plus up to two other unconsumed step outputs.
  const last = g.steps[g.steps.length - 1].out;
  const sinks = g.vals.filter((v) => v.step && v.consumers === 0 && v.id !== last).map((v) => v.id);
  const outputs = [last, ...g.rng.shuffle(sinks).slice(0, 2)];
  const outVals = outputs.map((o) => g.vals[o]);
  outVals.forEach(recordTol);
  let locCache: Localized | undefined;
  const getLoc = () => (locCache ??= localize(g));
  const paths: string[] = SIMULATE ? ["simulated"] : ["eager", ...(DO_COMPILE ? ["compile"] : [])];
  let env: Env | undefined;
  let eagerOk = false;
  for (const path of paths) {
    let res: Float64Array[] | undefined;
    try {
      if (!env) env = setupEnv(g, DEVICE, g.steps);
      res = SIMULATE
        ? runSimulated(g, outputs, new Rng(SEED ^ 0x5eed, caseIdx))
        : path === "eager"
        ? runEager(env, g.steps, outputs)
        : runCompiled(env, g, g.steps, outputs).res;
      if (path === "eager") eagerOk = true;
    } catch (e) {
      const isTq = e instanceof tq.TensorqError;
      findings.push({
        ...base,
        type: isTq ? "error-one-device" : "crash",
        path,
        message: `${path} on ${DEVICE} raised (the CPU reference did not): ${errText(e)}` +
          (path === "compile" && eagerOk ? " [eager on the device succeeded]" : ""),
        localized: path === "eager" ? getLoc() : undefined,
        repro: fullRepro(
          g,
          outputs,
          path === "compile",
          `seed ${SEED} case ${caseIdx} (${path} raises on ${DEVICE})`,
        ),
      });
      if (!env) break;
      continue;
    }
    const mism = outVals.map((v, k) => compareVal(v, res![k])).filter((m) => m.bad > 0);
    if (mism.length === 0) continue;
    const f: Finding = {
      ...base,
      type: "mismatch",
      path,
      message: `${path}: ${
        mism.map((m) => `v${m.output} ${m.desc}: ${m.bad}/${m.n} beyond tolerance`).join("; ")
      }`,
      mismatches: mism,
    };
    f.graphOps = lastGraphOps;
    const loc = SIMULATE ? "n/a (simulated)" : getLoc();
    f.localized = loc;
    try {
      const env2 = setupEnv(g, DEVICE, g.steps);
      const r2 = withFusionsOff(() => runEager(env2, g.steps, outputs));
      disposeEnv(env2);
      const bad2 = outVals.map((v, k) => compareVal(v, r2[k]).bad).reduce((a, b) => a + b, 0);
      f.fusionsOff = bad2 === 0
        ? "passes with all fusion passes off (a fusion bug)"
        : `still ${bad2} bad elements with fusion passes off`;
    } catch (e) {
      f.fusionsOff = `with fusion passes off: ${errText(e)}`;
    }
    const compileOnly = path === "compile" &&
      !findings.some((x) => x.path === "eager" && x.type === "mismatch");
    f.repro = typeof loc === "object" && !compileOnly
      ? stepRepro(g, loc.step)
      : fullRepro(g, outputs, path === "compile", `seed ${SEED} case ${caseIdx} (${path})`);
    findings.push(f);
  }
  if (env) disposeEnv(env);
  if (caseFlags.has(DQ_OVERFLOW)) {
    for (const f of findings) {
      if (f.type === "mismatch") {
        f.note = "probably the known class (check the localized step): a dequantize in this case " +
          "overflowed its output dtype from finite codes (±Inf in the op-by-op semantics) while the " +
          "fused qlinear keeps the product in float32; seen on the CPU too";
      }
    }
  }
  if (DO_ISOLATED && !SIMULATE) {
    const loc = getLoc();
    if (typeof loc === "object" || loc.includes("raised")) {
      findings.push({
        ...base,
        type: typeof loc === "object"
          ? "mismatch"
          : loc.includes("TensorqError")
          ? "error-one-device"
          : "crash",
        path: "isolated",
        message: typeof loc === "object"
          ? `step ${loc.step} ${loc.label} alone, with the reference's inputs: ${loc.bad}/${loc.n} beyond its local tolerance`
          : loc,
        localized: loc,
        repro: typeof loc === "object" ? stepRepro(g, loc.step) : undefined,
        note: caseFlags.has(DQ_OVERFLOW) && typeof loc === "object"
          ? "probably the known class: a dequantize in this case overflowed its output dtype (see above)"
          : undefined,
      });
    }
  }
  return {
    status: findings.length > 0 ? "fail" : "pass",
    findings,
    nOps: g.steps.length,
    kinds: g.steps.map((s) => s.label.replace(/\(.*$/, "")),
  };
}

// ------------------------------------------------------------------------------------------
// Main

function fmtNum(v: number): string {
  return Number.isFinite(v)
    ? (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0)
      ? v.toExponential(3)
      : String(+v.toPrecision(6)))
    : String(v);
}

/** One line for a failing case: its paths, and the worst of its findings. */
function caseLine(fs: Finding[]): string {
  const score = (f: Finding) => {
    if (f.type !== "mismatch") return Infinity;
    const ws = f.mismatches
      ? f.mismatches.map((m) => m.worst)
      : typeof f.localized === "object"
      ? [f.localized.worst]
      : [];
    return Math.max(0, ...ws.map((w) => (w ? w.absErr / Math.max(w.tol, 1e-300) : 0)));
  };
  const main = fs.reduce((a, b) => (score(b) > score(a) ? b : a));
  const paths = [...new Set(fs.map((f) => `${f.type}/${f.path}`))].join(",");
  return oneLine(main).replace(/\[[^\]]*\/[^\]]*\] /, `[${paths}] `);
}

function oneLine(f: Finding): string {
  let s = `FAIL seed=${f.seed} case=${f.case} [${f.type}/${f.path}] ops=[${
    f.ops.join(", ")
  }] inputs=[${f.inputs.join(" ")}]`;
  if (f.mismatches) {
    const m = f.mismatches.reduce((
      a,
      b,
    ) => ((b.worst?.absErr ?? 0) / (b.worst?.tol || 1e-300) >
        (a.worst?.absErr ?? 0) / (a.worst?.tol || 1e-300)
      ? b
      : a)
    );
    const w = m.worst;
    s += ` | out v${m.output} ${m.desc}: ${m.bad}/${m.n} bad; worst at [${w?.index}] ref=${
      fmtNum(w?.ref ?? NaN)
    } got=${fmtNum(w?.got ?? NaN)} |Δ|=${fmtNum(w?.absErr ?? NaN)} tol=${fmtNum(w?.tol ?? NaN)}`;
  } else s += ` | ${f.message}`;
  if (f.path === "isolated" && typeof f.localized === "object") {
    const w = f.localized.worst;
    s += ` | worst at [${w?.index}] ref=${fmtNum(w?.ref ?? NaN)} got=${fmtNum(w?.got ?? NaN)} |Δ|=${
      fmtNum(w?.absErr ?? NaN)
    } tol=${fmtNum(w?.tol ?? NaN)}`;
  } else if (f.localized) {
    s += typeof f.localized === "string"
      ? ` | ${f.localized}`
      : ` | localized: step ${f.localized.step} ${f.localized.label} (${f.localized.bad}/${f.localized.n} bad alone)`;
  }
  if (f.fusionsOff) s += ` | ${f.fusionsOff}`;
  if (f.note) s += ` | NOTE ${f.note}`;
  return s;
}

function main(): void {
  if (DEVICE !== "cpu" && DEVICE.startsWith("cuda") && !tq.cuda.isAvailable()) {
    console.error(`device ${DEVICE} is not available: ${tq.cuda.unavailableReason()}`);
    Deno.exit(0);
  }
  Deno.mkdirSync(OUT_DIR, { recursive: true });
  for (const e of Deno.readDirSync(OUT_DIR)) {
    if (e.isFile && /^repro_\d+_\d+_\d+\.ts$/.test(e.name)) Deno.removeSync(`${OUT_DIR}/${e.name}`);
  }
  let cudaErrorStreak = 0;
  const reproSigs = new Map<string, number>();
  let reproBytes = 0;
  const t0 = performance.now();
  const stats = {
    run: 0,
    passed: 0,
    failed: 0,
    failedKnownClassOnly: 0,
    skipped: 0,
    oneDevice: 0,
    crashes: 0,
    cpuOnly: 0,
    mismatches: 0,
    ops: 0,
  };
  const findings: Finding[] = [];
  const skips: { case: number; reason: string }[] = [];
  const opCounts: Record<string, number> = {};
  const cases = ONLY !== undefined ? [ONLY] : [...Array(CASES).keys()];
  let stoppedEarly = false;
  console.log(
    `tensorq diff-fuzz: seed ${SEED}, ${cases.length} cases, cpu vs ${DEVICE}${
      DO_COMPILE ? " (eager + compile)" : ""
    }, tq at ${TQ_URL}`,
  );
  for (const c of cases) {
    if ((performance.now() - t0) / 1000 > TIME_LIMIT_S) {
      stoppedEarly = true;
      break;
    }
    let r: CaseResult;
    try {
      r = runCase(c);
    } catch (e) {
      r = {
        status: "skip",
        reason: `harness error: ${errText(e)} ${(e as Error).stack ?? ""}`,
        findings: [],
        nOps: 0,
      };
    }
    if (r.status === "skip") {
      stats.skipped++;
      skips.push({ case: c, reason: r.reason ?? "" });
      if (VERBOSE || r.reason?.startsWith("harness")) console.log(`skip case ${c}: ${r.reason}`);
    } else {
      stats.run++;
      stats.ops += r.nOps;
      if (r.status === "pass") stats.passed++;
      else stats.failed++;
      if (r.status === "fail" && r.findings.every((f) => f.note)) stats.failedKnownClassOnly++;
    }
    for (const f of r.findings) {
      findings.push(f);
      if (f.type === "error-one-device") stats.oneDevice++;
      else if (f.type === "crash") stats.crashes++;
      else if (f.type === "cpu-only-error") stats.cpuOnly++;
      else stats.mismatches++;
      // Keep repro snippets for the first few findings of each kind, within a size budget.
      if (f.repro) {
        const sig = `${f.type}|${f.path === "isolated" ? "isolated" : "graph"}|${
          typeof f.localized === "object" ? f.localized.label.replace(/\(.*/, "") : "whole"
        }|${f.note ? "known" : ""}`;
        const n = (reproSigs.get(sig) ?? 0) + 1;
        reproSigs.set(sig, n);
        if (n > 3 || reproBytes + f.repro.length > 60e6) {
          f.repro = `(omitted: ${n - 1} earlier findings of the same kind "${sig}" keep theirs)`;
        } else reproBytes += f.repro.length;
      }
    }
    if (r.findings.length) console.log(caseLine(r.findings));
    if (VERBOSE && r.status === "pass") console.log(`pass case ${c}`);
    if (r.status !== "skip") {
      for (const k of r.kinds ?? []) opCounts[k] = (opCounts[k] ?? 0) + 1;
    }
    // A CUDA error that poisons the context makes every later case fail: stop after a streak.
    const cudaErr = r.findings.some((f) => /TensorqError\(cuda\)/.test(f.message));
    cudaErrorStreak = cudaErr ? cudaErrorStreak + 1 : 0;
    if (cudaErrorStreak >= 5) {
      console.log(
        "stopping: 5 consecutive cases raised CUDA errors (the device context may be unusable)",
      );
      stoppedEarly = true;
      break;
    }
  }
  const secs = (performance.now() - t0) / 1000;
  const rows: [string, string][] = [
    ["cases run", String(stats.run)],
    ["passed", String(stats.passed)],
    [
      "failed",
      String(stats.failed) +
      (stats.failedKnownClassOnly
        ? ` (${stats.failedKnownClassOnly} only of the known dequantize-overflow class)`
        : ""),
    ],
    ["  mismatch findings (eager/compile/isolated)", String(stats.mismatches)],
    ["  errors on one device only", String(stats.oneDevice + stats.cpuOnly)],
    ["  crashes (non-TensorqError)", String(stats.crashes)],
    ["skipped", String(stats.skipped)],
    ["ops generated (run cases)", String(stats.ops)],
    ["tolerances", tolSummary()],
    ["total time", `${secs.toFixed(1)} s${stoppedEarly ? " (time limit reached)" : ""}`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  const table = [
    `cpu vs ${DEVICE}, seed ${SEED}`,
    "-".repeat(w + 12),
    ...rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`),
  ].join("\n");
  console.log("\n" + table);
  const report = {
    config: {
      seed: SEED,
      cases: CASES,
      device: DEVICE,
      timeLimit: TIME_LIMIT_S,
      compile: DO_COMPILE,
      maxNumel: MAX_NUMEL,
      tqUrl: TQ_URL,
      only: ONLY,
    },
    summary: { ...stats, seconds: secs, stoppedEarly },
    opCoverage: opCounts,
    tolerance: { ...tolStats, text: tolSummary() },
    findings,
    skipped: skips,
  };
  Deno.writeTextFileSync(
    `${OUT_DIR}/report.json`,
    JSON.stringify(
      report,
      (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v),
      1,
    ),
  );
  const lines = findings.map(oneLine); // every finding, one per line (several per case)
  Deno.writeTextFileSync(
    `${OUT_DIR}/summary.txt`,
    table + "\n\n" + (lines.length ? lines.join("\n") : "no findings") + "\n",
  );
  findings.forEach((f, i) => {
    if (f.repro) Deno.writeTextFileSync(`${OUT_DIR}/repro_${f.seed}_${f.case}_${i}.ts`, f.repro);
  });
  console.log(`report: ${OUT_DIR}/report.json, summary: ${OUT_DIR}/summary.txt`);
  Deno.exit(0);
}

main();
