import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { ptx as wgemvPtx } from "../kernels/ptx/wgemv.ts";
import { backendFor } from "../lib/backends/backend.ts";
import { activationFn } from "../lib/backends/cpu/linear.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import type { CudaKernelContext } from "../lib/backends/cuda/kernels.ts";
import type { WeightScaleIndex } from "../lib/backends/cuda/linear.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import type { FloatDType } from "../lib/backends/cuda/util.ts";
import {
  streamingGemv,
  WGEMV_FMA_MAX_ROWS,
  WGEMV_MMA_MAX_ROWS,
  WGEMV_MMA_MIN_K_PER_WARP,
  wgemvShape,
} from "../lib/backends/cuda/wgemv.ts";
import { decode, encode } from "../lib/dtype.ts";
import {
  type Activation,
  applyActivation,
  assertNearSums,
  linearState,
  randomCodes,
  randomValues,
  testOnGpu,
  values,
} from "./helpers.ts";

// Tolerances, as ‖got − ref‖₂ ≤ tol·‖ref‖₂ and |got − ref| ≤ tol·max|ref| elementwise.
// - Kernel against a float64 sum of the same values (x · q · s + b): float32 sums (1e-5), and
//   for 16-bit outputs one final rounding (2^-11, 2^-8 relative at most).
// - wlinear on cuda against the cpu backend: the cpu multiplies x by dequantized weights rounded
//   to x's dtype, the streaming GEMV by the unrounded ones (the scale multiplies float32 sums):
//   about 2^-11 / √3 (float16) and 2^-8 / √3 (bfloat16) relative per weight, plus the output
//   rounding.
const KERNEL_TOL: Record<FloatDType, number> = { float32: 1e-5, float16: 1e-3, bfloat16: 5e-3 };
const OP_TOL: Record<FloatDType, number> = { float32: 1e-5, float16: 2e-3, bfloat16: 1e-2 };

type Codes = "int8" | "int4" | "float8e4m3";
const FLOATS: FloatDType[] = ["float32", "float16", "bfloat16"];

// ---------------------------------------------------------------------------------------
// Launch shapes and kernel names (no GPU needed)

const CHANNEL: WeightScaleIndex = { nb: 1, sN: 1, kb: 1, sK: 0 };
const TENSOR: WeightScaleIndex = { nb: 1, sN: 0, kb: 1, sK: 0 };
const blocks = (k: number, b: number): WeightScaleIndex => ({ nb: 1, sN: k / b, kb: b, sK: 1 });

Deno.test("wgemvShape: which problems the streaming GEMV takes, and with which kernel", () => {
  const k = 4096;
  const cases: [Codes, FloatDType, number, WeightScaleIndex, string | undefined][] = [
    ["int8", "float16", 1, CHANNEL, "wgemv_mma_i8_f16"],
    ["int8", "bfloat16", 4, TENSOR, "wgemv_mma_i8_bf16"],
    ["int8", "float16", 8, CHANNEL, "wgemv_mma_i8_f16"],
    ["int8", "float16", 9, CHANNEL, undefined],
    ["int8", "float32", 3, CHANNEL, "wgemv_fma_i8_f32_m3"],
    ["int8", "float32", 5, CHANNEL, undefined],
    ["float8e4m3", "bfloat16", 2, CHANNEL, "wgemv_mma_e4m3_bf16"],
    ["float8e4m3", "float32", 1, TENSOR, "wgemv_fma_e4m3_f32_m1"],
    // Block scales: the MMA needs a scale per 64 bytes of a row at most, the FMA per 16.
    ["int4", "float16", 1, blocks(k, 128), "wgemv_mma_i4_f16"],
    ["int4", "float16", 2, blocks(k, 64), "wgemv_fma_i4_f16_m2"],
    ["int4", "bfloat16", 4, blocks(k, 32), "wgemv_fma_i4_bf16_m4"],
    ["int4", "bfloat16", 5, blocks(k, 32), undefined],
    ["int4", "float16", 1, blocks(k, 16), undefined], // two scales per 16-byte chunk
    ["int8", "float16", 1, blocks(k, 64), "wgemv_mma_i8_f16"],
    ["int8", "float16", 1, blocks(k, 32), "wgemv_fma_i8_f16_m1"],
    ["int8", "float16", 1, blocks(k, 512), "wgemv_mma_i8_f16"],
    ["int8", "float32", 1, blocks(k, 16), "wgemv_fma_i8_f32_m1"],
    ["int8", "float32", 1, blocks(k, 8), undefined],
    ["int8", "float16", 1, blocks(4032, 48), undefined], // not a power-of-two number of bytes
    ["int8", "float16", 1, { nb: 1, sN: 0, kb: 1, sK: 1 }, undefined], // per input feature
    ["int8", "float16", 1, { nb: 2, sN: k, kb: 1, sK: 1 }, undefined], // blocks along N
    ["float8e4m3", "float16", 1, blocks(k, 16), undefined], // fp8 is never block-wise
  ];
  for (const [q, x, m, index, name] of cases) {
    const what = `${q} ${x} M=${m} ${JSON.stringify(index)}`;
    const kk = index.kb === 48 ? 4032 : k;
    const s = wgemvShape(m, 4096, kk, q, x, index, 132);
    assert.equal(s?.kernel, name, what);
    if (s) {
      assert.equal(s.mma, name!.startsWith("wgemv_mma"), what);
      assert.equal(
        s.scaleShift,
        index.sK === 0 ? 0 : Math.log2((index.kb * (q === "int4" ? 4 : 8)) / 8),
      );
    }
  }
  // Rows off the 16-byte grid, empty problems, other dtypes.
  assert.equal(wgemvShape(1, 64, 100, "int8", "float16", CHANNEL, 132), undefined);
  assert.equal(wgemvShape(1, 64, 48, "int4", "float16", CHANNEL, 132), undefined);
  assert.equal(wgemvShape(1, 64, 64, "int4", "float16", CHANNEL, 132)?.kernel, "wgemv_mma_i4_f16");
  assert.equal(wgemvShape(0, 64, 64, "int8", "float16", CHANNEL, 132), undefined);
  assert.equal(wgemvShape(1, 64, 0, "int8", "float16", CHANNEL, 132), undefined);
  assert.equal(wgemvShape(1, 64, 64, "int32", "float16", CHANNEL, 132), undefined);
});

Deno.test("wgemvShape: every block resident at once, warps split K in shares of 192 or more", () => {
  for (const sms of [132, 108, 1]) {
    for (const q of ["int8", "int4", "float8e4m3"] as Codes[]) {
      for (
        const [n, k] of [[8192, 8192], [4096, 4224], [1, 8192], [7, 128], [33, 64], [50000, 2048]]
      ) {
        const s = wgemvShape(1, n, k, q, "float16", CHANNEL, sms)!;
        const what = `${q} ${n}×${k} on ${sms} SMs`;
        assert.equal(s.mma, true, what);
        assert.equal(s.blocks, Math.ceil(n / 16), what);
        assert.ok([1, 2, 4, 8, 16].includes(s.warps), what);
        const perSm = Math.ceil(s.blocks / sms);
        if (s.warps > 1) {
          assert.ok(perSm * s.warps <= 16, `${what}: ${s.warps} warps exceed one wave`);
          assert.ok(k >= WGEMV_MMA_MIN_K_PER_WARP * s.warps, `${what}: too little K a warp`);
        }
        // Maximal: doubling breaks one of the two rules.
        if (s.warps < 16) {
          assert.ok(
            perSm * s.warps * 2 > 16 || k < WGEMV_MMA_MIN_K_PER_WARP * 2 * s.warps,
            `${what}: could double`,
          );
        }
      }
    }
  }
  assert.equal(wgemvShape(1, 8192, 8192, "int8", "float16", CHANNEL, 132)!.warps, 4);
  assert.equal(wgemvShape(1, 8192, 8192, "int4", "float16", blocks(8192, 128), 132)!.warps, 4);
  assert.equal(wgemvShape(1, 4096, 4096, "int8", "float16", CHANNEL, 132)!.warps, 8);
  assert.equal(wgemvShape(1, 1, 8192, "int8", "float16", CHANNEL, 132)!.warps, 16);
  assert.equal(wgemvShape(1, 7, 128, "int8", "float16", CHANNEL, 132)!.warps, 1);
  // GPT-2 small's decode GEMVs: 4 warps at K = 768, 16 at K = 3072, int4 as int8.
  for (const q of ["int8", "int4"] as Codes[]) {
    for (const [n, k, warps] of [[2304, 768, 4], [768, 768, 4], [3072, 768, 4], [768, 3072, 16]]) {
      assert.equal(wgemvShape(1, n, k, q, "float16", blocks(k, 128), 132)!.warps, warps);
    }
  }
  // A chosen count replaces the rule; it must be a power of two up to 16.
  assert.equal(wgemvShape(1, 768, 768, "int4", "float16", CHANNEL, 132, false, 16)!.warps, 16);
  assert.throws(() => wgemvShape(1, 768, 768, "int4", "float16", CHANNEL, 132, false, 3), /warps/);
  assert.throws(() => wgemvShape(1, 768, 768, "int4", "float16", CHANNEL, 132, false, 32), /warps/);
  // The float32-x (FMA) kernels keep two quads a warp.
  const fma = wgemvShape(1, 256, 4096, "int8", "float32", CHANNEL, 132)!;
  assert.equal(fma.mma, false);
  assert.equal(fma.warps, 16);
  assert.equal(wgemvShape(1, 256, 512, "int8", "float32", CHANNEL, 132)!.warps, 4);
});

Deno.test("every kernel the lowering can name is in both PTX builds with the launch's parameters", () => {
  // out, x, codes, swd, swdKind, bias, act, M, N, K, sN, sK, scaleShift, residual
  const params = ["u64", "u64", "u64", "u64", "u32", "u64", "u32", "u32", "u32", "u32", "u64"]
    .concat(["u32", "u32", "u64"]);
  const names: string[] = [];
  for (const q of ["i8", "i4", "e4m3"]) {
    for (const x of ["f16", "bf16"]) names.push(`wgemv_mma_${q}_${x}`);
    for (const x of q === "e4m3" ? ["f32"] : ["f32", "f16", "bf16"]) {
      for (let m = 1; m <= WGEMV_FMA_MAX_ROWS; m++) names.push(`wgemv_fma_${q}_${x}_m${m}`);
    }
  }
  assert.equal(WGEMV_MMA_MAX_ROWS, 8);
  const flavours: [string, string][] = [
    ["sm_90a", wgemvPtx.ptxSm90a],
    ["compute_80", wgemvPtx.ptxCompute80],
  ];
  for (const [flavour, ptx] of flavours) {
    // (The `_norm` kernels of a folded layer norm: tests/gemv_norm_folding_test.ts.)
    const entries = [...ptx.matchAll(/\.entry (\w+)\(([^)]*)\)/g)]
      .filter((e) => !e[1].endsWith("_norm"));
    assert.deepEqual(entries.map((e) => e[1]).sort(), [...names].sort(), flavour);
    for (const [, name, list] of entries) {
      const types = [...list.matchAll(/\.param \.(\w+)/g)].map((p) => p[1]);
      assert.deepEqual(types, params, `${flavour} ${name}`);
    }
  }
});

// ---------------------------------------------------------------------------------------
// The kernels against a float64 reference (GPU)

interface KernelCase {
  q: Codes;
  x: FloatDType;
  m: number;
  n: number;
  k: number;
  /** Scales per output channel, one per tensor, or per block of `block` inputs. */
  mode: "channel" | "tensor" | "block";
  block?: number;
  scaleDType: FloatDType;
  bias: boolean;
  act: Activation;
  seed: number;
}

/** Runs the streaming GEMV directly on a case's codes and checks it. */
function checkKernel(c: KernelCase): void {
  const what = `${c.q} ${c.mode}${c.block ? ` ${c.block}` : ""} x ${c.x} M=${c.m} N=${c.n} ` +
    `K=${c.k} scales ${c.scaleDType} bias ${c.bias} ${c.act}`;
  const cuda = backendFor("cuda")!;
  const device = CudaDevice.get(0);
  const { m, n, k } = c;
  const codes = randomCodes(c.q, n * k, c.seed);
  const xStorage = encode(c.x, randomValues(m * k, c.seed + 1));
  const x = decode(c.x, xStorage);
  const index = c.mode === "channel" ? CHANNEL : c.mode === "tensor" ? TENSOR : blocks(k, c.block!);
  const scaleShape = c.mode === "channel" ? [n] : c.mode === "tensor" ? [] : [n, k / c.block!];
  const scaleCount = scaleShape.reduce((a, b) => a * b, 1);
  const sStorage = encode(
    c.scaleDType,
    randomValues(scaleCount, c.seed + 2, { low: 0.002, high: 0.02 }),
  );
  const s = decode(c.scaleDType, sStorage);
  const bStorage = c.bias ? encode(c.x, randomValues(n, c.seed + 3)) : undefined;
  const b = bStorage ? decode(c.x, bStorage) : undefined;

  const act = activationFn(c.act);
  const ref = new Float64Array(m * n);
  const w = new Float64Array(k); // row j of q · s
  let magnitude = 0;
  for (let j = 0; j < n; j++) {
    for (let kk = 0; kk < k; kk++) {
      const si = j * index.sN + Math.floor(kk / index.kb) * index.sK;
      w[kk] = codes.values[j * k + kk] * s[si];
    }
    for (let i = 0; i < m; i++) {
      let acc = 0, abs = b ? Math.abs(b[j]) : 0;
      for (let kk = 0; kk < k; kk++) {
        acc += x[i * k + kk] * w[kk];
        abs += Math.abs(x[i * k + kk] * w[kk]);
      }
      ref[i * n + j] = act(acc + (b ? b[j] : 0));
      magnitude = Math.max(magnitude, abs);
    }
  }

  const ctx: CudaKernelContext = {
    attrs: { activation: c.act },
    out: { shape: [m, n], dtype: c.x },
    inputs: [
      { shape: [m, k], dtype: c.x },
      { shape: [n, k], dtype: c.x },
      { shape: scaleShape, dtype: c.scaleDType },
      { shape: scaleShape, dtype: c.scaleDType },
      ...(c.bias ? [{ shape: [n], dtype: c.x }] : []),
    ],
    device,
  };
  const gemv = streamingGemv(ctx, m, n, k, c.q, index);
  assert.ok(gemv, `${what}: not covered`);
  const xb = cuda.upload("cuda:0", c.x, xStorage) as CudaBuffer;
  const wb = cuda.upload("cuda:0", c.q, codes.storage) as CudaBuffer;
  const sb = cuda.upload("cuda:0", c.scaleDType, sStorage) as CudaBuffer;
  const bb = bStorage ? cuda.upload("cuda:0", c.x, bStorage) as CudaBuffer : undefined;
  const y = CudaBuffer.allocate(device, c.x, m * n);
  try {
    gemv(y, xb, wb, sb, bb);
    const got = decode(c.x, cuda.download(y));
    assertNearSums(got, ref, KERNEL_TOL[c.x], what, magnitude);
  } finally {
    for (const buffer of [xb, wb, sb, bb, y]) buffer?.dispose();
  }
}

const ACTS: Activation[] = ["none", "relu", "gelu", "gelu_tanh"];

/** Kernel cases over M = 1..rows for one code / scale layout and every x dtype. */
function kernelCases(
  q: Codes,
  mode: KernelCase["mode"],
  block: number | undefined,
  shapes: [number, number][],
  seed: number,
): KernelCase[] {
  const cases: KernelCase[] = [];
  let i = 0;
  for (const x of FLOATS) {
    const scaleDType = FLOATS[(seed + i) % 3];
    const probe = wgemvShape(
      1,
      16,
      shapes[0][1],
      q,
      x,
      blocksOrNot(mode, block, shapes[0][1]),
      132,
    );
    const rows = probe?.mma ? WGEMV_MMA_MAX_ROWS : WGEMV_FMA_MAX_ROWS;
    for (let m = 1; m <= rows; m++) {
      const [n, k] = shapes[(m + i) % shapes.length];
      cases.push({
        q,
        x,
        m,
        n,
        k,
        mode,
        block,
        scaleDType,
        bias: (m + i) % 2 === 0,
        act: ACTS[(m + 2 * i) % ACTS.length],
        seed: seed + 10 * i + m,
      });
    }
    i++;
  }
  return cases;
}

function blocksOrNot(mode: KernelCase["mode"], block: number | undefined, k: number) {
  return mode === "channel" ? CHANNEL : mode === "tensor" ? TENSOR : blocks(k, block!);
}

// Shapes: partial 16-channel tiles (N = 1, 7, 33), rows whose last quad of chunks is partial
// (K / chunk not a multiple of 4), and the large decode shapes.
const I8_SHAPES: [number, number][] = [[7, 400], [4096, 4224], [1, 8192], [33, 4096 + 48]];
const I4_SHAPES: [number, number][] = [[7, 800], [4096, 4224], [1, 8192], [33, 4096 + 96]];

const I4_BLOCK_SHAPES: [number, number][] = [[7, 128], [4096, 4224], [1, 8192], [33, 1024]];
const I8_BLOCK_SHAPES: [number, number][] = [[7, 128], [4096, 4160], [1, 8192], [33, 1024]];

/** The kernel test suites: name and cases. */
const KERNEL_SUITES: [string, KernelCase[]][] = [
  ["int8 per channel and per tensor, M = 1..8", [
    ...kernelCases("int8", "channel", undefined, I8_SHAPES, 1000),
    ...kernelCases("int8", "tensor", undefined, I8_SHAPES, 1100),
  ]],
  ["int4 per channel and blocks of 128, 64, 32", [
    ...kernelCases("int4", "channel", undefined, I4_SHAPES, 2000),
    ...[128, 64, 32].flatMap((b) => kernelCases("int4", "block", b, I4_BLOCK_SHAPES, 2100 + b)),
  ]],
  ["float8e4m3 per channel, int8 blocks of 64 and 16", [
    ...kernelCases("float8e4m3", "channel", undefined, I8_SHAPES, 3000),
    ...[64, 16].flatMap((b) => kernelCases("int8", "block", b, I8_BLOCK_SHAPES, 3100 + b)),
  ]],
];

// 512 blocks of 16 channels on 132 SMs: 4 warps a block.
KERNEL_SUITES.push(["8192 output channels (4 warps a block)", [
  {
    q: "int4",
    x: "float16",
    m: 1,
    n: 8192,
    k: 4096,
    mode: "block",
    block: 128,
    scaleDType: "float32",
    bias: true,
    act: "none",
    seed: 4000,
  },
  {
    q: "int8",
    x: "bfloat16",
    m: 2,
    n: 8192,
    k: 2048,
    mode: "channel",
    scaleDType: "bfloat16",
    bias: false,
    act: "gelu",
    seed: 4001,
  },
  {
    q: "int8",
    x: "float32",
    m: 3,
    n: 8192,
    k: 1024,
    mode: "channel",
    scaleDType: "float32",
    bias: true,
    act: "relu",
    seed: 4002,
  },
]]);

for (const [name, cases] of KERNEL_SUITES) {
  testOnGpu(`streaming GEMV kernels: ${name}`, () => {
    for (const c of cases) checkKernel(c);
  });
}

// Runs everywhere: every kernel case is one the lowering takes, and together they use every
// kernel.
Deno.test("the kernel test cases are covered and reach every kernel", () => {
  const used = new Set<string>();
  const warps = new Set<number>();
  for (const [, cases] of KERNEL_SUITES) {
    for (const c of cases) {
      assert.equal(c.k % (c.block ?? 1), 0);
      const s = wgemvShape(c.m, c.n, c.k, c.q, c.x, blocksOrNot(c.mode, c.block, c.k), 132);
      assert.ok(s, `${JSON.stringify(c)} not covered`);
      used.add(s.kernel);
      warps.add(s.warps);
    }
  }
  assert.deepEqual([...warps].sort((a, b) => a - b), [1, 2, 4, 8, 16]);
  const all = [...wgemvPtx.ptxSm90a.matchAll(/\.entry (\w+)\(/g)].map((e) => e[1])
    .filter((name) => !name.endsWith("_norm")); // tests/gemv_norm_folding_test.ts
  assert.deepEqual([...used].sort(), all.sort());
});

// ---------------------------------------------------------------------------------------
// wlinear on cuda against the cpu backend (GPU)

interface OpCase {
  m: number;
  n: number;
  k: number;
  options: tq.LinearOptions;
  dtype: FloatDType;
  bias: boolean;
  act: Activation;
  seed: number;
}

/** wlinear of a weight-only quantized Linear on cuda and on the cpu, from the same state. */
function checkOp(c: OpCase): void {
  const o = c.options;
  const what = `wlinear ${o.quantDtype} dim ${o.weightQuantDim ?? "-"}` +
    `${o.blockSize ? ` block ${o.blockSize}` : ""} x ${c.dtype} M=${c.m} N=${c.n} K=${c.k} ` +
    `bias ${c.bias} ${c.act}`;
  const dict = linearState(o, c.n, c.k, c.dtype, c.seed, c.bias);
  const make = () => {
    const layer = new tq.Linear(c.k, c.n, { ...o, bias: c.bias, dtype: c.dtype });
    layer.loadStateDict(dict);
    return layer;
  };
  const cpu = make();
  const gpu = make().to("cuda");
  const x = tq.tensor(randomValues(c.m * c.k, c.seed + 2), { shape: [c.m, c.k], dtype: c.dtype });
  const y = applyActivation(gpu.forward(x.to("cuda")), c.act);
  assert.deepEqual(tq.inspectGraph(y).ops, ["wlinear"], what);
  const got = values(y);
  const ref = values(applyActivation(cpu.forward(x), c.act));
  // The summed terms' size: Σ_k |x_k|·max|w| + max|b| bounds every output's.
  const xs = values(x), ws = values(dict.weight);
  let wMax = 0, bMax = 0, xAbs = 0;
  for (const v of ws) wMax = Math.max(wMax, Math.abs(v));
  if (dict.bias) { for (const v of values(dict.bias)) bMax = Math.max(bMax, Math.abs(v)); }
  for (let i = 0; i < c.m; i++) {
    let row = 0;
    for (let kk = 0; kk < c.k; kk++) row += Math.abs(xs[i * c.k + kk]);
    xAbs = Math.max(xAbs, row);
  }
  // w's random signs make the typical sum about √K times smaller than that bound.
  assertNearSums(got, ref, OP_TOL[c.dtype], what, (xAbs * wMax) / Math.sqrt(c.k) + bMax);
}

const OP_OPTIONS: tq.LinearOptions[] = [
  { quantDtype: "int8", weightQuantDim: 0 },
  { quantDtype: "int4", weightQuantDim: 1, blockSize: 128 },
  { quantDtype: "int4", weightQuantDim: 1, blockSize: 64 },
  { quantDtype: "int4", weightQuantDim: 1, blockSize: 32 },
  { quantDtype: "float8e4m3", weightQuantDim: 0 },
];
// (Few large ones: the cpu backend takes seconds to quantize and multiply 4096 × 4224.)
const OP_SHAPES: [number, number][] = [
  [1, 8192],
  [7, 4224],
  [4096, 128],
  [7, 8192],
  [1, 128],
  [1, 4224],
];
const OP_ACTS: Activation[] = ["none", "relu", "gelu"];

function opCases(options: tq.LinearOptions, seed: number): OpCase[] {
  const cases: OpCase[] = [];
  FLOATS.forEach((dtype, i) => {
    for (let m = 1; m <= 4; m++) {
      const [n, k] = OP_SHAPES[(seed + 2 * i + m) % OP_SHAPES.length];
      cases.push({
        m,
        n,
        k,
        options,
        dtype,
        bias: (m + i) % 2 === 1,
        act: OP_ACTS[(m + i) % OP_ACTS.length],
        seed: seed + 10 * i + m,
      });
    }
  });
  return cases;
}

testOnGpu("wlinear M = 1..4 against the cpu: int8 per channel, fp8 per channel", () => {
  for (const c of opCases(OP_OPTIONS[0], 500)) checkOp(c);
  for (const c of opCases(OP_OPTIONS[4], 540)) checkOp(c);
});

testOnGpu("wlinear M = 1..4 against the cpu: int4 blocks of 128, 64, 32", () => {
  for (const c of opCases(OP_OPTIONS[1], 510)) checkOp(c);
  for (const c of opCases(OP_OPTIONS[2], 520)) checkOp(c);
  for (const c of opCases(OP_OPTIONS[3], 530)) checkOp(c);
});

testOnGpu("wlinear: the decode shape 4096 × 8192 at M = 1 (float16)", () => {
  let seed = 600;
  for (const options of [OP_OPTIONS[0], OP_OPTIONS[1]]) {
    checkOp({ m: 1, n: 4096, k: 8192, options, dtype: "float16", bias: true, act: "none", seed });
    seed += 3;
  }
});

// The shapes' K values must suit every layout that uses them.
Deno.test("the test shapes are valid for their layouts", () => {
  for (const [, k] of OP_SHAPES) assert.equal(k % 128, 0);
  for (const [, k] of I8_SHAPES) assert.equal(k % 16, 0);
  for (const [, k] of I4_SHAPES) assert.equal(k % 32, 0);
});
