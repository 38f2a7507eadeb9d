/**
 * The decode-sized fused quantized GEMV (`qlinear` with M ≤ 8, lib/backends/cuda/qgemv.ts)
 * on its two kernel families against the float16 GEMV of the same shape, kernel launches only.
 * Prints a markdown table last and writes it (qgemv_variants.md) and every raw figure
 * (qgemv_variants.json) to `--out`.
 *
 *     deno run -A bench/qgemv_variants.ts [--out DIR] [--quick]
 *
 * Variants, for M ∈ {1, 8} at GPT-2 small's decode shapes (N×K: QKV 2304×768, attention
 * output 768×768, MLP up 3072×768, MLP down 768×3072) and 8192×8192:
 *   ring int8, mma int8, ring e4m3, mma e4m3: `fusedQuantizedGemv` forced to each family
 *     (`setQgemvKernels`), x float16 quantized per tensor inside the kernel, per-channel
 *     float32 weight scales, float16 bias and output;
 *   fp16: the float16 `linear` lowering (kernels/flinear.cu's GEMV for M ≤ 16) with a bias.
 *
 * Timing: CUDA events around every launch, median of ≥ 200 launches after a warm-up. The
 * launches go out in batches behind a blocker (memsets of a scratch buffer that keep the GPU
 * busy longer than the host takes to enqueue the batch), so the events time the kernels back
 * to back, not the host's launch overhead; the median gap between a launch's end and the next
 * one's start is reported to show it. Two weight placements:
 *   HBM: the weights rotate among enough copies to span twice the L2 cache (as in a decode
 *     step, where a layer's weights were evicted by the other layers'),
 *   L2: one copy, resident in L2 after the first launch of a batch.
 * Each shape also checks mma against ring outputs (int8: bit-equal; e4m3: max relative
 * difference).
 * @module
 */
import * as tq from "../mod.ts";
import { checkCuda, createEvent, cudaEventDefault, cudart, eventElapsedMs } from "../ffi/cudart.ts";
import { backendFor } from "../lib/backends/backend.ts";
import "../lib/backends/cuda/mod.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import {
  type CudaKernelContext,
  type CudaLaunch,
  cudaLowering,
} from "../lib/backends/cuda/kernels.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import {
  type FusedQuantizedGemv,
  fusedQuantizedGemv,
  type QgemvKernels,
  qgemvKernels,
  qgemvLaunchCount,
  qgemvMmaLaunchCount,
  qgemvMmaShape,
  qgemvMmaSupported,
  qgemvShape,
  setQgemvKernels,
} from "../lib/backends/cuda/qgemv.ts";
import { ACT_NONE, memsetAsync } from "../lib/backends/cuda/util.ts";
import { decode, type DType } from "../lib/dtype.ts";
import {
  argFlag,
  argValue,
  checkCommandLine,
  encodeFast,
  fmt,
  gpuUnavailableLine,
  L2_BYTES,
  log,
  markdownTable,
  randnHost,
  summarize,
  writeOut,
} from "./timing.ts";

const args = Deno.args;
checkCommandLine("qgemv_variants.ts", args, { values: ["out"], flags: ["quick"] });
const outDir = argValue(args, "out");
const quick = argFlag(args, "quick");
const WARMUP = quick ? 20 : 50;
const REPS = quick ? 200 : 400;
/** Launches enqueued behind one blocker. */
const BATCH = 50;

const MS = [1, 8];
/** N×K: GPT-2 small's decode shapes, then a large square one. */
const SHAPES: [number, number][] = [
  [2304, 768],
  [768, 768],
  [3072, 768],
  [768, 3072],
  [8192, 8192],
];

type Variant = "fp16" | "ring int8" | "mma int8" | "ring e4m3" | "mma e4m3";
const VARIANTS: Variant[] = ["fp16", "ring int8", "mma int8", "ring e4m3", "mma e4m3"];
type Placement = "HBM" | "L2";

/** One timed variant. */
interface Measured {
  /** Median µs per launch. */
  medianUs: number;
  /** 10th / 90th percentiles. */
  p10Us: number;
  p90Us: number;
  /** Median µs between a launch's end event and the next one's start (host-bound if large). */
  gapUs: number;
  launches: number;
  weightSets: number;
}

/** Why a variant has no figure. */
type Cell = Measured | { skipped: string };

const raw: Record<string, unknown> = { args, warmup: WARMUP, reps: REPS, batch: BATCH };
const results = new Map<string, Cell>();
const checks: string[] = [];

function key(m: number, n: number, k: number, v: Variant, p: Placement): string {
  return `M=${m} ${n}x${k} ${v} ${p}`;
}

// ---------------------------------------------------------------------------------------------
// Timing

/** A scratch buffer whose memsets keep the GPU busy while the host enqueues a batch. */
class Blocker {
  readonly #buffer: CudaBuffer;
  readonly #device: CudaDevice;
  /** Memsets per batch. */
  count = 1;

  constructor(device: CudaDevice, bytes: number) {
    this.#device = device;
    this.#buffer = CudaBuffer.allocate(device, "int8", bytes);
  }

  /** µs one memset takes on the GPU. */
  calibrate(): number {
    const lib = cudart();
    const [a, b] = [createEvent(cudaEventDefault), createEvent(cudaEventDefault)];
    try {
      this.enqueue(1);
      checkCuda(lib.cudaEventRecord(a, this.#device.stream), "cudaEventRecord");
      this.enqueue(4);
      checkCuda(lib.cudaEventRecord(b, this.#device.stream), "cudaEventRecord");
      this.#device.synchronize();
      return (eventElapsedMs(a, b) * 1e3) / 4;
    } finally {
      lib.cudaEventDestroy(a);
      lib.cudaEventDestroy(b);
    }
  }

  enqueue(times = this.count): void {
    for (let i = 0; i < times; i++) {
      memsetAsync(this.#device, this.#buffer.address, i & 1, this.#buffer.bytes);
    }
  }

  dispose(): void {
    this.#buffer.dispose();
  }
}

/**
 * Times `launch(i)` (one kernel launch, weight set i % sets) with events around each launch:
 * WARMUP untimed launches, then REPS timed ones in batches of BATCH behind the blocker.
 */
function timeLaunches(
  device: CudaDevice,
  blocker: Blocker,
  launch: (i: number) => void,
  weightSets: number,
): Measured {
  for (let i = 0; i < WARMUP; i++) launch(i);
  device.synchronize();
  const lib = cudart();
  const starts = Array.from({ length: REPS }, () => createEvent(cudaEventDefault));
  const ends = Array.from({ length: REPS }, () => createEvent(cudaEventDefault));
  try {
    for (let r0 = 0; r0 < REPS; r0 += BATCH) {
      blocker.enqueue();
      for (let r = r0; r < Math.min(REPS, r0 + BATCH); r++) {
        checkCuda(lib.cudaEventRecord(starts[r], device.stream), "cudaEventRecord");
        launch(WARMUP + r);
        checkCuda(lib.cudaEventRecord(ends[r], device.stream), "cudaEventRecord");
      }
    }
    device.synchronize();
    const us = starts.map((s, r) => eventElapsedMs(s, ends[r]) * 1e3);
    const gaps: number[] = [];
    for (let r = 0; r + 1 < REPS; r++) {
      if ((r + 1) % BATCH !== 0) gaps.push(eventElapsedMs(ends[r], starts[r + 1]) * 1e3);
    }
    const stats = summarize(us);
    return {
      medianUs: stats.medianUs,
      p10Us: stats.p10Us,
      p90Us: stats.p90Us,
      gapUs: summarize(gaps).medianUs,
      launches: REPS,
      weightSets,
    };
  } finally {
    for (const e of [...starts, ...ends]) lib.cudaEventDestroy(e);
  }
}

// ---------------------------------------------------------------------------------------------
// Data

/** `count` seeded codes of `q` (e4m3 without NaN codes), as the kernels store them. */
function codes(q: "int8" | "float8e4m3", count: number, seed: number): Int8Array | Uint8Array {
  let s = (seed * 2654435761) >>> 0 || 1;
  const out = q === "int8" ? new Int8Array(count) : new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    let b = (s >>> 8) & 0xff;
    if (q === "float8e4m3" && (b & 0x7f) === 0x7f) b ^= 1;
    out[i] = q === "int8" ? (b << 24) >> 24 : b;
  }
  return out;
}

function upload(dtype: DType, storage: ArrayLike<number> | Float32Array): CudaBuffer {
  return backendFor("cuda")!.upload("cuda:0", dtype, storage as never) as CudaBuffer;
}

/** How many weight copies of `bytes` bytes span twice the L2 cache (1 for large weights). */
function hbmSets(bytes: number): number {
  return Math.max(1, Math.min(1024, Math.ceil((2 * L2_BYTES) / bytes)));
}

// ---------------------------------------------------------------------------------------------
// One shape

function measureShape(
  device: CudaDevice,
  blocker: Blocker,
  m: number,
  n: number,
  k: number,
): void {
  const shape = `${n}×${k}`;
  log(`M=${m} ${shape}`);
  const x = upload("float16", encodeFast("float16", randnHost(m * k, 11)));
  const inputScale = 3.5 / 127;
  const sx = upload("float32", Float32Array.of(inputScale));
  const sx8 = upload("float32", Float32Array.of(3.5 / 448));
  const sw = upload("float32", randnHost(n, 12).map((v) => 0.002 + 0.001 * Math.abs(v)));
  const bias = upload("float16", encodeFast("float16", randnHost(n, 13, 0.1)));
  const y = CudaBuffer.allocate(device, "float16", m * n);
  const yRef = CudaBuffer.allocate(device, "float16", m * n);
  const owned: CudaBuffer[] = [x, sx, sx8, sw, bias, y, yRef];
  try {
    // fp16: the float16 linear lowering (its GEMV for M ≤ 16).
    {
      const fp16Lowering = cudaLowering("linear")({
        attrs: { hasBias: true, activation: "none" },
        out: { shape: [m, n], dtype: "float16" },
        inputs: [
          { shape: [m, k], dtype: "float16" },
          { shape: [n, k], dtype: "float16" },
          { shape: [n], dtype: "float16" },
        ],
        device,
      }) as CudaLaunch;
      const wHost = encodeFast("float16", randnHost(n * k, 14, 0.05));
      for (const p of ["HBM", "L2"] as Placement[]) {
        const sets = p === "HBM" ? hbmSets(2 * n * k) : 1;
        const ws = Array.from({ length: sets }, () => upload("float16", wHost));
        try {
          device.synchronize();
          results.set(
            key(m, n, k, "fp16", p),
            timeLaunches(device, blocker, (i) => fp16Lowering(y, [x, ws[i % sets], bias]), sets),
          );
        } finally {
          for (const w of ws) w.dispose();
        }
      }
    }
    // The fused GEMV on both families, both code dtypes.
    for (const q of ["int8", "float8e4m3"] as const) {
      const name = q === "int8" ? "int8" : "e4m3";
      const scale = q === "int8" ? sx : sx8;
      const wHost = codes(q, n * k, 15);
      const ctx: CudaKernelContext = {
        attrs: { activation: "none" },
        out: { shape: [m, n], dtype: "float16" },
        inputs: [
          { shape: [m, k], dtype: "float16" },
          { shape: [], dtype: "float32" },
          { shape: [], dtype: "float32" },
          { shape: [n, k], dtype: "float16" },
          { shape: [n], dtype: "float32" },
          { shape: [n], dtype: "float32" },
          { shape: [n], dtype: "float16" },
        ],
        device,
      };
      const gemvs = new Map<QgemvKernels, FusedQuantizedGemv>();
      for (const family of ["ring", "mma"] as QgemvKernels[]) {
        const v = `${family} ${name}` as Variant;
        const runsMma = family === "mma";
        if (runsMma && !qgemvMmaSupported(device, q)) {
          const why = `no ${name} mma kernel on compute capability ${device.computeCapability}`;
          for (const p of ["HBM", "L2"] as Placement[]) {
            results.set(key(m, n, k, v, p), { skipped: why });
          }
          continue;
        }
        const takes = runsMma
          ? qgemvMmaShape(m, n, k, device.smCount)
          : qgemvShape(m, n, k, device.smCount, q);
        const before = qgemvKernels();
        setQgemvKernels(family);
        let gemv: FusedQuantizedGemv | undefined;
        try {
          gemv = takes ? fusedQuantizedGemv(ctx, m, n, k, q, true, ACT_NONE, "float16") : undefined;
        } finally {
          setQgemvKernels(before);
        }
        if (!gemv) {
          const why = `the ${family} kernels refuse M=${m} K=${k}`;
          for (const p of ["HBM", "L2"] as Placement[]) {
            results.set(key(m, n, k, v, p), { skipped: why });
          }
          continue;
        }
        gemvs.set(family, gemv);
        raw[`shape ${key(m, n, k, v, "L2")}`] = takes;
        for (const p of ["HBM", "L2"] as Placement[]) {
          const sets = p === "HBM" ? hbmSets(n * k) : 1;
          const ws = Array.from({ length: sets }, () => upload(q, wHost));
          try {
            device.synchronize();
            const mmaBefore = qgemvMmaLaunchCount(), allBefore = qgemvLaunchCount();
            const g = gemv;
            results.set(
              key(m, n, k, v, p),
              timeLaunches(
                device,
                blocker,
                (i) => g(y, x, scale, scale, ws[i % sets], sw, bias),
                sets,
              ),
            );
            const launched = qgemvLaunchCount() - allBefore;
            const mmaLaunched = qgemvMmaLaunchCount() - mmaBefore;
            if (mmaLaunched !== (runsMma ? launched : 0)) {
              throw new Error(`${v}: ${mmaLaunched} of ${launched} launches ran the mma kernels`);
            }
          } finally {
            for (const w of ws) w.dispose();
          }
        }
      }
      // mma against ring on one weight set.
      const ring = gemvs.get("ring"), mma = gemvs.get("mma");
      if (ring && mma) {
        const w = upload(q, wHost);
        try {
          ring(yRef, x, scale, scale, w, sw, bias);
          mma(y, x, scale, scale, w, sw, bias);
          const cuda = backendFor("cuda")!;
          const a = decode("float16", cuda.download(yRef)), b = decode("float16", cuda.download(y));
          let maxDiff = 0, maxRef = 0, unequal = 0;
          for (let i = 0; i < a.length; i++) {
            maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
            maxRef = Math.max(maxRef, Math.abs(a[i]));
            if (!Object.is(a[i], b[i])) unequal++;
          }
          const line = q === "int8"
            ? `M=${m} ${shape} int8: mma ${
              unequal === 0 ? "equals" : `DIFFERS FROM (${unequal})`
            } ring`
            : `M=${m} ${shape} e4m3: max |mma − ring| / max |ring| = ${
              (maxDiff / maxRef).toExponential(2)
            }`;
          checks.push(line);
          log(`  check: ${line}`);
        } finally {
          w.dispose();
        }
      }
    }
  } finally {
    for (const b of owned) b.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function cell(c: Cell | undefined, fp16: Cell | undefined): string {
  if (!c) return "—";
  if ("skipped" in c) return "—";
  const base = `${fmt(c.medianUs, 2)}${c.gapUs > 2 ? " (host?)" : ""}`;
  if (!fp16 || "skipped" in fp16 || c === fp16) return base;
  return `${base} (${fmt(fp16.medianUs / c.medianUs, 2)}×)`;
}

function table(p: Placement): string {
  const rows: string[][] = [];
  for (const m of MS) {
    for (const [n, k] of SHAPES) {
      const fp16 = results.get(key(m, n, k, "fp16", p));
      rows.push([
        String(m),
        `${n}×${k}`,
        ...VARIANTS.map((v) => cell(results.get(key(m, n, k, v, p)), fp16)),
      ]);
    }
  }
  return markdownTable(["M", "N×K", ...VARIANTS.map((v) => `${v} µs`)], rows);
}

function report(device: CudaDevice): string {
  const skipped = [...results.entries()].filter(([, c]) => "skipped" in c)
    .map(([k, c]) => `${k}: ${(c as { skipped: string }).skipped}`);
  const uniqueSkips = [...new Set(skipped.map((s) => s.replace(/^M=\d+ \S+ /, "")))];
  return [
    `# Fused quantized GEMV variants (${device.smCount} SMs, compute capability ${
      device.computeCapability.join(".")
    })`,
    "",
    `Median µs per launch over ${REPS} launches (CUDA events, launches back to back behind a`,
    "blocker); in parentheses fp16 µs / variant µs (above 1: faster than the float16 GEMV).",
    '"(host?)": the median gap between launches exceeded 2 µs (the figure may include host time).',
    "",
    "## Weights streamed from HBM (rotating copies spanning twice the L2)",
    "",
    table("HBM"),
    "",
    "## Weights resident in L2 (one copy)",
    "",
    table("L2"),
    "",
    "## Checks (mma against ring on the same inputs)",
    "",
    ...checks.map((c) => `- ${c}`),
    ...(uniqueSkips.length ? ["", "## Not measured", "", ...uniqueSkips.map((s) => `- ${s}`)] : []),
    "",
  ].join("\n");
}

function main(): void {
  if (!tq.cuda.isAvailable()) {
    const why = `needs a CUDA GPU (${gpuUnavailableLine()})`;
    log(why);
    writeOut(outDir, "qgemv_variants.md", `qgemv variants bench skipped: ${why}\n`);
    Deno.exitCode = 1; // a measurement that could not run is a failure, not an empty table
    return;
  }
  const device = CudaDevice.get(0);
  const blocker = new Blocker(device, 256 * 1024 * 1024);
  try {
    const memsetUs = blocker.calibrate();
    // Host time per timed launch (two event records and a launch), generously: 30 µs.
    blocker.count = Math.max(1, Math.ceil((2 * BATCH * 30) / memsetUs));
    raw.blocker = { memsetUs, memsetsPerBatch: blocker.count };
    log(`blocker: ${blocker.count} memsets of 256 MiB (${fmt(memsetUs)} µs each) per batch`);
    for (const m of MS) {
      for (const [n, k] of SHAPES) {
        measureShape(device, blocker, m, n, k);
      }
    }
  } finally {
    blocker.dispose();
    setQgemvKernels("mma");
  }
  raw.results = Object.fromEntries(results);
  raw.checks = checks;
  const text = report(device);
  writeOut(outDir, "qgemv_variants.md", text);
  writeOut(outDir, "qgemv_variants.json", JSON.stringify(raw, null, 2) + "\n");
  log("");
  log(text);
}

if (import.meta.main) main();
