/**
 * Per-tensor quantization on the GPU against its PyTorch peers (bench/peers/quantize_torch.py,
 * run in the same job). Prints a markdown table last and writes it (quantize.md) and every raw
 * figure (quantize.json) to `--out`.
 *
 *     deno run -A bench/gpu_quantize.ts [--out DIR] [--size-log2 28] [--iters N] [--quick]
 *                                       [--no-peer] [--variants]
 *     deno run -A bench/gpu_quantize.ts --device cpu --size-log2 16 --no-peer   # no GPU
 *
 * Figures, 2^N elements (default 2^28), scale 4/127, seeded normal data (standard deviation
 * 0.5, never zeros):
 *   - float32 → int8 (target: ≥ 3.9 TB/s effective, torch.compile's figure on an H200,
 *     2026-11-29),
 *   - float32 → float8e4m3,
 *   - bfloat16 → float8e4m3.
 * Effective rate = bytes read + written per call / median time: 5, 5 and 3 bytes an element.
 *
 * Timing: CUDA events on tensorq's stream around `evaluate()` of quantize ops built before
 * timing (the op reads the scale back to check it when it is built), enqueued back to back,
 * warm-up first, median of `--iters` calls (default 50, `--quick` 30); the inputs rotate among
 * at least two device buffers, each larger than the 60 MB L2 cache. The peer times
 * `torch.quantize_per_tensor` and `torch.compile`d formulas the same way.
 *
 * Correctness, before the table: our GPU results on check values (the first 2^20 elements of
 * the benchmark data plus rounding-boundary, saturating and infinite values) must equal the CPU
 * backend's and PyTorch's IEEE formula `clamp(round(x / s))` bit for bit (s a CUDA tensor, so
 * PyTorch divides); the mismatches of `torch.compile` and `quantize_per_tensor` (which
 * multiply by 1 / s) against ours are reported, not required to be zero.
 *
 * `--variants` (GPU only) also times the per-tensor quantize kernels side by side, launched
 * directly on the same buffers: `default` (what the op runs), `v0` (the plain grid-stride
 * kernel it replaced) and `v1` (the next step held in registers instead of a shared-memory
 * ring), each at its own launch shape (lib/backends/cuda/quantize.ts `quantizeTensorLaunch`),
 * after checking that every variant writes the same bytes as the op on the check values.
 * @module
 */
import * as tq from "../mod.ts";
import { fromStorage } from "../lib/tensor.ts";
import { ptx as quantizePtx } from "../kernels/ptx/quantize.ts";
import { cudaBackend } from "../lib/backends/cuda/backend.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import { kernelFunction, KernelParams, launch } from "../lib/backends/cuda/kernels.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import { preferSharedMemory } from "../lib/backends/cuda/util.ts";
import {
  maxThreadsPerSm,
  quantizeTensorLaunch,
  type QuantizeTensorVariant,
} from "../lib/backends/cuda/quantize.ts";
import {
  argFlag,
  benchArgs,
  type BenchFloat,
  deviceTensor,
  encodeFast,
  errorMessage,
  fmt,
  type GpuTiming,
  intArg,
  log,
  markdownTable,
  type PeerResult,
  randnHost,
  requireGpu,
  runPeer,
  timeGpu,
  writeOut,
} from "./timing.ts";

const args = Deno.args;
const { outDir, quick, noPeer, device } = benchArgs("gpu_quantize.ts", args, {
  values: ["size-log2", "iters"],
  flags: ["variants"],
});
const variants = argFlag(args, "variants");
const sizeLog2 = intArg("gpu_quantize.ts", args, "size-log2", 28, 8, 30);
const reps = intArg("gpu_quantize.ts", args, "iters", quick ? 30 : 50);
const WARMUP = 5;
const PEER = new URL("./peers/quantize_torch.py", import.meta.url).pathname;

/** The scale, a float32 value (the peer receives the same number). */
const SCALE = Math.fround(4 / 127);
/** Check values taken from the benchmark data. */
const CHECK_SLICE = 1 << 20;
/** Effective rate the float32 → int8 figure must reach (torch.compile on the H200). */
const TARGET_TBS = 3.9;

interface Figure {
  key: "f32_i8" | "f32_fp8" | "bf16_fp8";
  op: string;
  input: BenchFloat;
  target: "int8" | "float8e4m3";
  bytesPerElement: number;
}

const FIGURES: Figure[] = [
  { key: "f32_i8", op: "float32 → int8", input: "float32", target: "int8", bytesPerElement: 5 },
  {
    key: "f32_fp8",
    op: "float32 → float8e4m3",
    input: "float32",
    target: "float8e4m3",
    bytesPerElement: 5,
  },
  {
    key: "bf16_fp8",
    op: "bfloat16 → float8e4m3",
    input: "bfloat16",
    target: "float8e4m3",
    bytesPerElement: 3,
  },
];

if (device.startsWith("cuda")) requireGpu("gpu_quantize.ts", "--device cpu for a smoke run");
const n = 2 ** sizeLog2;

// ---------------------------------------------------------------------------------------------
// Data

/**
 * `count` seeded normals (std 0.5): a block of up to 2^24 fresh values tiled over the length
 * (drawing 2^28 values takes seconds; the repetition does not matter to a memory-bound kernel).
 */
function benchValues(count: number): Float32Array {
  const block = randnHost(Math.min(count, 1 << 24), 1234, 0.5);
  if (block.length === count) return block;
  const out = new Float32Array(count);
  for (let off = 0; off < count; off += block.length) {
    out.set(block.subarray(0, Math.min(block.length, count - off)), off);
  }
  return out;
}

/** Values around every rounding boundary of the int8 and fp8 grids, plus saturating ones. */
function boundaryValues(): Float32Array {
  const out: number[] = [];
  for (let k = -130; k <= 130; k++) {
    const mid = (k + 0.5) * SCALE;
    const f = Math.fround(mid);
    out.push(f, nextFloat32(f, 1), nextFloat32(f, -1), Math.fround(k * SCALE));
  }
  // fp8 boundaries: the midpoints between neighbouring e4m3 values, and the saturation region.
  for (let e = -9; e <= 8; e++) {
    for (let m = 0; m < 16; m++) {
      const q = (8 + m + 0.5) * 2 ** (e - 3);
      const f = Math.fround(q * SCALE);
      out.push(f, -f, nextFloat32(f, 1), nextFloat32(f, -1));
    }
  }
  out.push(447 * SCALE, 448 * SCALE, 464 * SCALE, 465 * SCALE, 1e5, -1e5, 3e38, -3e38, -0, 0);
  out.push(Infinity, -Infinity, 1e-30, -1e-30);
  return Float32Array.from(out);
}

/** The float32 neighbour of `f` in direction `dir` (±1). */
function nextFloat32(f: number, dir: number): number {
  const b = new Float32Array([f]);
  const u = new Int32Array(b.buffer);
  if (f === 0) return dir * 2 ** -149;
  u[0] += (f > 0) === (dir > 0) ? 1 : -1;
  return b[0];
}

// ---------------------------------------------------------------------------------------------
// Our figures

interface Ours {
  timing?: GpuTiming;
  tbPerS?: number;
  error?: string;
}

/** Builds the quantize ops before timing, then times their evaluation. */
function timeOurs(xs: tq.Tensor[], scale: tq.Tensor, f: Figure): Ours {
  try {
    const total = WARMUP + reps;
    const pending: (tq.Tensor | undefined)[] = Array.from(
      { length: total },
      (_, i) => tq.quantize(xs[i % xs.length], scale, f.target),
    );
    const timing = timeGpu((i) => {
      pending[i]!.evaluate().dispose();
      pending[i] = undefined;
    }, { warmup: WARMUP, reps, device });
    const tbPerS = (f.bytesPerElement * n) / (timing.medianUs * 1e-6) / 1e12;
    log(
      `ours ${f.op}: median ${fmt(timing.medianUs)} µs (p10 ${fmt(timing.p10Us)}, p90 ${
        fmt(timing.p90Us)
      }), ${fmt(tbPerS, 2)} TB/s; host ${fmt(timing.hostUs)} µs/call${
        timing.hostBound ? " (HOST-BOUND)" : ""
      }`,
    );
    return { timing, tbPerS };
  } catch (e) {
    log(`ours ${f.op} failed: ${errorMessage(e)}`);
    return { error: errorMessage(e) };
  }
}

// ---------------------------------------------------------------------------------------------
// Correctness

interface Check {
  /** Check values compared. */
  count: number;
  /** Mismatches against the CPU backend (must be 0). */
  cpu: number;
  /** Mismatches against each PyTorch path the peer wrote, by path name. */
  torch: Record<string, number>;
  /** True when the CPU backend and PyTorch's IEEE formula agree with us everywhere. */
  exact: boolean;
}

function countMismatches(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.max(a.length, b.length);
  let bad = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) bad++;
  return bad;
}

function bytesOf(t: tq.Tensor): Uint8Array {
  const s = t.storageSync();
  return new Uint8Array(s.buffer, s.byteOffset, s.byteLength);
}

/** Our GPU result and the CPU backend's on the check values, for one figure. */
function ourCheck(values: Float32Array, f: Figure): { gpu: Uint8Array; cpuMismatches: number } {
  const storage = encodeFast(f.input, values);
  const run = (d: string) => {
    const x = fromStorage(storage, [values.length], f.input, d);
    const q = tq.quantize(x, SCALE, f.target);
    const bytes = bytesOf(q).slice();
    x.dispose();
    q.dispose();
    return bytes;
  };
  const gpu = run(device);
  return { gpu, cpuMismatches: countMismatches(gpu, run("cpu")) };
}

/** PyTorch's result for one path, written by the peer (undefined when absent). */
function torchResult(dir: string, path: string): Uint8Array | undefined {
  try {
    return Deno.readFileSync(`${dir}/${path}.bin`);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel variants (--variants)

const VARIANTS: QuantizeTensorVariant[] = ["v0", "v1", "default"];

interface VariantResult {
  kernel: string;
  blocks: number;
  sharedBytes: number;
  timing?: GpuTiming;
  tbPerS?: number;
  /** Bytes differing from the op's result on the check values (must be 0). */
  mismatches?: number;
  error?: string;
}

/** The device buffer behind a realized tensor. */
function bufferOf(t: tq.Tensor): CudaBuffer {
  const b = t.node.buffer;
  if (!(b instanceof CudaBuffer)) throw new Error("expected a realized CUDA tensor");
  return b;
}

/** Enqueues one variant's kernel: `count` elements of `input` into `out`. */
function launchVariant(
  variant: QuantizeTensorVariant,
  f: Figure,
  count: number,
  out: CudaBuffer,
  input: CudaBuffer,
  scale: CudaBuffer,
  params: KernelParams,
): { kernel: string; blocks: number; sharedBytes: number; run: () => void } {
  const dev = CudaDevice.get(0);
  const shape = quantizeTensorLaunch(
    f.input,
    f.target,
    count,
    dev.smCount,
    maxThreadsPerSm(dev),
    variant,
  );
  const fn = kernelFunction(dev, quantizePtx, shape.name);
  if (shape.sharedBytes > 0) preferSharedMemory(fn);
  const run = () => {
    params.reset().ptr(out.address).ptr(input.address).ptr(scale.address).i32(0).i64(count)
      .i64(1).i64(1).i64(1);
    launch(dev, fn, [shape.blocks, 1, 1], [shape.threads, 1, 1], params, shape.sharedBytes);
  };
  return { kernel: shape.name, blocks: shape.blocks, sharedBytes: shape.sharedBytes, run };
}

/** Checks every variant against the op's bytes on the check values, then times them. */
function timeVariants(
  xs: tq.Tensor[],
  checkValues: Float32Array,
  opBytes: Uint8Array,
  f: Figure,
): Record<string, VariantResult> {
  const dev = CudaDevice.get(0);
  const params = new KernelParams(8);
  const scale = fromStorage(new Float32Array([SCALE]), [], "float32", device);
  const checkIn = fromStorage(
    encodeFast(f.input, checkValues),
    [checkValues.length],
    f.input,
    device,
  );
  const results: Record<string, VariantResult> = {};
  for (const variant of VARIANTS) {
    const checkOut = CudaBuffer.allocate(dev, f.target, checkValues.length);
    const out = CudaBuffer.allocate(dev, f.target, n);
    let r: VariantResult = { kernel: "?", blocks: 0, sharedBytes: 0 };
    try {
      const check = launchVariant(
        variant,
        f,
        checkValues.length,
        checkOut,
        bufferOf(checkIn),
        bufferOf(scale),
        params,
      );
      check.run();
      const got = cudaBackend.download(checkOut);
      const bytes = new Uint8Array(got.buffer, got.byteOffset, got.byteLength);
      const mismatches = countMismatches(bytes, opBytes);
      const inputs = xs.map(bufferOf);
      const timed = inputs.map((x) =>
        launchVariant(variant, f, n, out, x, bufferOf(scale), params).run
      );
      const timing = timeGpu((i) => timed[i % timed.length](), { warmup: WARMUP, reps, device });
      const tbPerS = (f.bytesPerElement * n) / (timing.medianUs * 1e-6) / 1e12;
      r = {
        kernel: check.kernel,
        blocks: check.blocks,
        sharedBytes: check.sharedBytes,
        timing,
        tbPerS,
        mismatches,
      };
      log(
        `variant ${variant} ${f.op} (${check.kernel}, ${check.blocks} blocks, ${check.sharedBytes} B ` +
          `shared): median ${fmt(timing.medianUs)} µs (p10 ${fmt(timing.p10Us)}, p90 ${
            fmt(timing.p90Us)
          }), ${fmt(tbPerS, 2)} TB/s; ${mismatches} bytes differ from the op`,
      );
    } catch (e) {
      r.error = errorMessage(e);
      log(`variant ${variant} ${f.op} failed: ${r.error}`);
    } finally {
      checkOut.dispose();
      out.dispose();
    }
    results[variant] = r;
  }
  checkIn.dispose();
  scale.dispose();
  return results;
}

function variantsReport(): string {
  const all = raw.variants as Record<string, Record<string, VariantResult>> | undefined;
  if (!all) return "";
  const header = ["op", "variant", "kernel", "blocks", "µs", "TB/s", "bytes ≠ op"];
  const body: string[][] = [];
  for (const f of FIGURES) {
    for (const [variant, r] of Object.entries(all[f.key] ?? {})) {
      body.push([
        f.op,
        variant,
        r.kernel,
        String(r.blocks),
        r.error ? `FAILED: ${r.error}` : fmt(r.timing?.medianUs),
        fmt(r.tbPerS, 2),
        r.mismatches === undefined ? "—" : String(r.mismatches),
      ]);
    }
  }
  return `\n### Per-tensor quantize kernel variants, 2^${sizeLog2} elements\n\n` +
    markdownTable(header, body) + "\n";
}

// ---------------------------------------------------------------------------------------------
// Run

const raw: Record<string, unknown> = { args, device, n, sizeLog2, reps, scale: SCALE };
const ours: Record<string, Ours> = {};
const checks: Record<string, Check> = {};
let peer: PeerResult | undefined;

function report(): string {
  const cases = (peer?.json?.cases ?? {}) as Record<string, Record<string, { median_us?: number }>>;
  const header = [
    "op",
    "ours µs",
    "TB/s",
    "torch.compile µs",
    "quantize_per_tensor µs",
    "ratio (torch.compile / ours)",
  ];
  const body = FIGURES.map((f) => {
    const o = ours[f.key];
    const compileUs = cases[f.key]?.compile?.median_us ?? undefined;
    const qptUs = cases[f.key]?.quantize_per_tensor?.median_us ?? undefined;
    const us = o?.timing?.medianUs;
    const ratio = compileUs !== undefined && us !== undefined ? compileUs / us : undefined;
    return [
      `${f.op}, 2^${sizeLog2}${o?.error ? " (FAILED)" : ""}`,
      fmt(us),
      fmt(o?.tbPerS, 2),
      fmt(compileUs),
      f.key === "f32_i8" ? fmt(qptUs) : "n/a",
      ratio !== undefined ? `${fmt(ratio, 2)}×` : "—",
    ];
  });
  const lines: string[] = [];
  for (const f of FIGURES) {
    const c = checks[f.key];
    if (!c) continue;
    const torchText = Object.entries(c.torch).map(([p, k]) => `${p} ${k}`).join(", ");
    lines.push(
      `- check ${f.op}: ${c.count} values; mismatches vs CPU backend ${c.cpu}` +
        (torchText ? `; vs PyTorch: ${torchText}` : "; PyTorch results unavailable") +
        ` (${c.exact ? "bit-exact" : "NOT EXACT"})`,
    );
  }
  const i8 = ours.f32_i8?.tbPerS;
  if (i8 !== undefined) {
    lines.push(
      `- target float32 → int8 ≥ ${TARGET_TBS} TB/s effective: ${fmt(i8, 2)} TB/s (${
        i8 >= TARGET_TBS ? "met" : "MISSED"
      })`,
    );
  }
  if (peer?.error) lines.push(`- PyTorch peer: ${peer.error}`);
  const device0 = peer?.json?.device ? ` on ${peer.json.device}` : "";
  return `### Per-tensor quantize, 2^${sizeLog2} elements${device0}\n\n${lines.join("\n")}\n\n` +
    markdownTable(header, body) + "\n" + variantsReport();
}

function save(): void {
  raw.ours = ours;
  raw.checks = checks;
  raw.peer = peer;
  writeOut(outDir, "quantize.md", report());
  writeOut(outDir, "quantize.json", JSON.stringify(raw, null, 2) + "\n");
}

async function main(): Promise<void> {
  const t0 = performance.now();
  const values = benchValues(n);
  const sets = 2; // each set is 2^28 · 4 bytes = 1 GiB, far past the L2 cache
  const scale = tq.full([], SCALE, { device });
  const inputs: Record<BenchFloat, tq.Tensor[]> = {
    float32: Array.from({ length: sets }, () => deviceTensor(values, [n], "float32", device)),
    bfloat16: [],
    float16: [],
  };
  const bf16 = encodeFast("bfloat16", values);
  inputs.bfloat16 = Array.from({ length: sets }, () => fromStorage(bf16, [n], "bfloat16", device));
  log(
    `data: 2^${sizeLog2} elements, ${sets} input sets, ${
      fmt((performance.now() - t0) / 1e3, 1)
    } s to make`,
  );

  // Check values: the start of the benchmark data plus boundary values.
  const boundary = boundaryValues();
  const checkValues = new Float32Array(Math.min(CHECK_SLICE, n) + boundary.length);
  checkValues.set(values.subarray(0, Math.min(CHECK_SLICE, n)));
  checkValues.set(boundary, Math.min(CHECK_SLICE, n));
  const ourChecks: Record<string, Uint8Array> = {};
  for (const f of FIGURES) {
    const { gpu, cpuMismatches } = ourCheck(checkValues, f);
    ourChecks[f.key] = gpu;
    checks[f.key] = {
      count: gpu.length,
      cpu: cpuMismatches,
      torch: {},
      exact: cpuMismatches === 0,
    };
  }

  for (const f of FIGURES) {
    ours[f.key] = timeOurs(inputs[f.input], scale, f);
    save();
  }
  if (variants && device.startsWith("cuda")) {
    const byFigure: Record<string, Record<string, VariantResult>> = {};
    raw.variants = byFigure;
    for (const f of FIGURES) {
      byFigure[f.key] = timeVariants(inputs[f.input], checkValues, ourChecks[f.key], f);
      save();
    }
  }
  for (const t of [...inputs.float32, ...inputs.bfloat16, scale]) t.dispose();

  if (!noPeer) {
    const dir = await Deno.makeTempDir({ prefix: "tensorq-quantize-" });
    try {
      Deno.writeFileSync(`${dir}/x_f32.bin`, new Uint8Array(checkValues.buffer));
      const bf16Check = encodeFast("bfloat16", checkValues) as Uint16Array;
      Deno.writeFileSync(`${dir}/x_bf16.bin`, new Uint8Array(bf16Check.buffer));
      log(`peer: python3 ${PEER} --size-log2 ${sizeLog2} --json ...`);
      peer = await runPeer(PEER, [
        "--size-log2",
        String(sizeLog2),
        "--json",
        "--iters",
        String(reps),
        "--scale",
        String(SCALE),
        "--check-dir",
        dir,
        ...(quick ? ["--quick"] : []),
      ]);
      if (peer.error) log(`peer: ${peer.error}`);
      else log(`peer: done in ${fmt(peer.seconds, 1)} s`);
      const paths: Record<string, string[]> = {
        f32_i8: ["eager_f32_i8", "compile_f32_i8", "qpt_f32_i8"],
        f32_fp8: ["eager_f32_fp8", "compile_f32_fp8"],
        bf16_fp8: ["eager_bf16_fp8", "compile_bf16_fp8"],
      };
      for (const f of FIGURES) {
        const c = checks[f.key];
        for (const p of paths[f.key]) {
          const theirs = torchResult(dir, p);
          if (theirs) c.torch[p] = countMismatches(ourChecks[f.key], theirs);
        }
        const eager = c.torch[paths[f.key][0]];
        // PyTorch's IEEE formula must agree; without the peer only the CPU backend is checked.
        c.exact = c.cpu === 0 && (eager === undefined || eager === 0);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  save();
  console.log("\n" + report());
}

await main();
