/**
 * GPT-2-small on the GPU: prefill and decode in float16 and in the quantized modes, side by
 * side with transformers' GPT2LMHeadModel (fp16, eager PyTorch) run in the same job.
 *
 *     deno run -A bench/gpu_gpt2.ts [--out DIR] [--quick] [--modes float16,w8a8,fp8,w4]
 *         [--no-peer] [--steps 32] [--context 512] [--max-length 1024] [--tuning FILE]
 *         [--no-attention-fold] [--compress]
 *     deno run -A bench/gpu_gpt2.ts --smoke --device cpu --no-peer   # tiny model, no GPU
 *
 * Model: 12 layers, 768 wide, 12 heads, 50257 vocab, 1024 positions, random weights (seed 0).
 * Quantized modes use quantizeModel with amax from a max calibration on one random batch,
 * lm_head left in float16.
 *
 * Figures (wall clock, synchronized):
 * - prefill 8×512: per forward, eager (`model.forward(ids).evaluate()`) and compiled
 *   (`tq.compile`, one CUDA graph replay per call);
 * - decode at 512 context: per token over 32 greedy steps fed on the device; the static
 *   decoder (bench/gpt2_static_decode.ts: fixed shapes, one graph replay per step) and the
 *   model's own KVCache forward (eager, growing shapes).
 * The static decoder's logits are checked against the cached forward on a few steps, and the
 * compiled prefill's against the eager one.
 *
 * `--tuning FILE` keeps cuBLASLt's autotune picks in FILE (`tq.cuda.setTuningFile`): a run
 * with the file of an earlier one uses the same GEMM kernels. `--no-attention-fold` keeps each
 * attention apart from the quantized projection that reads it (`tq.setAttentionQlinearFusion`),
 * for a side-by-side figure of that fold. `--compress` replaces each quantized layer's float
 * weight by its codes after quantizeModel (`tq.compressWeights`).
 *
 * Writes gpt2.md (the table) and gpt2.json (everything) to `--out`; prints the table last.
 * @module
 */
import * as tq from "../mod.ts";
import { backToFloat, GPT2_SMALL, randomGpt2, randomIds } from "./gpt2_model.ts";
import {
  buildStaticDecoder,
  checkStaticDecoder,
  cloneState,
  type DecodeState,
  disposeState,
  type StaticDecoder,
} from "./gpt2_static_decode.ts";
import {
  argValue,
  benchArgs,
  type BenchFloat,
  errorMessage,
  fmt,
  intArg,
  log,
  markdownTable,
  relError,
  runPeer,
  timeWall,
  type WallTiming,
  writeOut,
} from "./timing.ts";

const args = Deno.args;
const { outDir, quick, smoke, device, noPeer } = benchArgs("gpu_gpt2.ts", args, {
  values: ["tuning", "modes", "steps", "context", "batch", "seq", "max-length"],
  flags: ["no-attention-fold", "compress"],
});
const tuningFile = argValue(args, "tuning");
if (tuningFile !== undefined) tq.cuda.setTuningFile(tuningFile);
if (args.includes("--no-attention-fold")) tq.setAttentionQlinearFusion(false);
const compress = args.includes("--compress");
const modes = (argValue(args, "modes") ?? "float16,w8a8,fp8,w4").split(",").map((m) => m.trim())
  .filter((m) => m.length > 0);
const steps = intArg("gpu_gpt2.ts", args, "steps", smoke ? 4 : 32);
const context = intArg("gpu_gpt2.ts", args, "context", smoke ? 8 : 512);
const prefillBatch = intArg("gpu_gpt2.ts", args, "batch", smoke ? 2 : 8);
const prefillSeq = intArg("gpu_gpt2.ts", args, "seq", smoke ? 16 : 512);
const checkSteps = quick || smoke ? 2 : 4;
const PEER = new URL("./peers/gpt2_torch.py", import.meta.url).pathname;

/**
 * PyTorch fp16 eager figures measured on an H200 on 2026-11-29 (transformers `GPT2LMHeadModel`),
 * used when the peer cannot run.
 */
const REFERENCE_MS = { prefill: 10.6, decode: 8.3 };

const config: Partial<tq.GPT2Config> = smoke
  ? { nLayer: 2, nEmbd: 128, nHead: 4, vocabSize: 512, nPositions: 64 }
  : GPT2_SMALL;
const maxLength = intArg("gpu_gpt2.ts", args, "max-length", config.nPositions!);

type Mode = "float16" | tq.QuantizationMode;

interface Measurement {
  mode: Mode;
  figure: "prefill eager" | "prefill compiled" | "decode static (graph)" | "decode eager";
  timing?: WallTiming;
  /** Milliseconds per forward (prefill) or per token (decode). */
  ms?: number;
  error?: string;
  check?: string;
  checkOk?: boolean;
}

const results: Measurement[] = [];
const details: Record<string, unknown> = {
  args,
  config,
  device,
  quick,
  smoke,
  steps,
  context,
  prefill: [prefillBatch, prefillSeq],
  maxLength,
};

/** Random token ids on the bench's device. */
function randomIdsOn(shape: number[], seed: number, vocab: number): tq.Tensor {
  return randomIds(shape, seed, vocab, device);
}

/** GPT-2 with seeded random weights (see bench/gpt2_model.ts). */
function randomModel(dtype: BenchFloat): tq.GPT2LMHeadModel {
  return randomGpt2(config, dtype, device);
}

function countOps(ops: string[]): string {
  const counts = new Map<string, number>();
  for (const op of ops) {
    if (op === "qlinear" || op === "wlinear" || op === "matmul") {
      counts.set(op, (counts.get(op) ?? 0) + 1);
    }
  }
  return [...counts].map(([k, v]) => `${k} ×${v}`).join(", ");
}

function record(m: Measurement): void {
  results.push(m);
  const what = m.error
    ? `ERROR ${m.error.split("\n")[0]}`
    : `${fmt(m.ms, 3)} ms${m.figure.startsWith("decode") ? "/token" : ""}` +
      (m.timing
        ? ` (p10 ${fmt(m.timing.p10Us / 1e3, 3)}, p90 ${fmt(m.timing.p90Us / 1e3, 3)})`
        : "");
  log(`[${m.mode}] ${m.figure}: ${what}${m.check ? `; check: ${m.check}` : ""}`);
  save();
}

function attempt(mode: Mode, figure: Measurement["figure"], fn: () => Partial<Measurement>): void {
  try {
    record({ mode, figure, ...fn() });
  } catch (e) {
    record({ mode, figure, error: errorMessage(e) });
  }
}

// ---------------------------------------------------------------------------------------------
// Figures

function prefillEager(model: tq.GPT2LMHeadModel, ids: tq.Tensor): Partial<Measurement> {
  // The host's share of an eager forward needs a few calls before V8 has compiled the graph
  // building and evaluation paths: one warm-up timed them half-compiled (2× in a --quick run).
  const timing = timeWall(() => {
    const logits = model.forward(ids).evaluate();
    logits.dispose();
  }, { warmup: 5, reps: quick || smoke ? 10 : 20 });
  return { timing, ms: timing.medianUs / 1e3 };
}

function prefillCompiled(model: tq.GPT2LMHeadModel, ids: tq.Tensor): Partial<Measurement> {
  const exe = tq.compile((x: tq.Tensor) => model.forward(x), {
    args: [tq.inputInfo(ids.shape, "int32")],
    device,
  });
  try {
    // Correctness: the last position of the first sequence, compiled vs eager.
    const compiled = exe(ids) as tq.Tensor;
    const eager = model.forward(ids);
    const t = ids.shape[1];
    const got = tq.slice(compiled, [0, t - 1]).dataSync() as Float32Array;
    const want = tq.slice(eager, [0, t - 1]).dataSync() as Float32Array;
    compiled.dispose();
    const e = relError(got, want);
    const ok = !e.nonFinite && e.normRel <= 1e-2;
    const check = `vs eager: norm rel ${e.normRel.toExponential(2)}${
      e.nonFinite ? ", NON-FINITE" : ""
    } (${ok ? "ok" : "FAIL"})`;
    const timing = timeWall(() => {
      const logits = exe(ids) as tq.Tensor;
      logits.dispose();
    }, { warmup: quick || smoke ? 1 : 2, reps: quick || smoke ? 3 : 10 });
    return { timing, ms: timing.medianUs / 1e3, check, checkOk: ok };
  } finally {
    exe.dispose();
  }
}

function decodeStatic(
  model: tq.GPT2LMHeadModel,
  prompt: tq.Tensor,
): Partial<Measurement> {
  let decoder: StaticDecoder | undefined;
  try {
    decoder = buildStaticDecoder(model, { batch: prompt.shape[0], maxLength });
    const checks = checkStaticDecoder(model, decoder, prompt, checkSteps);
    const worst = Math.max(...checks.map((c) => c.normRel));
    // Near-ties among 50257 random-model logits may flip the argmax under fp16 rounding, so
    // the verdict rests on the logits; the argmax agreement is reported alongside.
    const ok = checks.every((c) => !c.nonFinite) && worst <= 2e-2;
    const check = `${checks.length} steps vs the cached forward: worst norm rel ${
      worst.toExponential(2)
    }, argmax ${checks.every((c) => c.argmaxMatch) ? "same" : "differs"}${
      checks.some((c) => c.nonFinite) ? ", NON-FINITE" : ""
    } (${ok ? "ok" : "FAIL"})`;

    // A step consumes the state it is given: each batch starts from a copy of the first one.
    const { state: initial } = decoder.prefill(prompt);
    let state: DecodeState = cloneState(initial);
    const dec = decoder;
    const timing = timeWall(() => {
      const { state: next, logits } = dec.step(state);
      logits.dispose();
      disposeState(state);
      state = next;
    }, {
      batch: steps,
      warmup: steps,
      reps: (quick || smoke ? 2 : 5) * steps,
      beforeBatch: () => {
        disposeState(state);
        state = cloneState(initial);
      },
    });
    disposeState(state);
    disposeState(initial);
    return { timing, ms: timing.medianUs / 1e3, check, checkOk: ok };
  } finally {
    decoder?.dispose();
  }
}

function decodeEager(model: tq.GPT2LMHeadModel, prompt: tq.Tensor): Partial<Measurement> {
  const kv = model.createCache();
  const promptLogits = model.forward(prompt, { cache: kv });
  const t = prompt.shape[1];
  const firstIds = tq.argmax(tq.slice(promptLogits, [null, [t - 1, t]]), -1).evaluate();
  promptLogits.dispose();
  const snapshot = kv.layers.map((l) => ({ key: l.key, value: l.value }));
  let ids = firstIds;
  const timing = timeWall(() => {
    const logits = model.forward(ids, { cache: kv });
    ids = tq.argmax(logits, -1); // [B, 1], evaluated by the next forward
  }, {
    batch: steps,
    warmup: steps,
    reps: (quick || smoke ? 1 : 3) * steps,
    beforeBatch: () => {
      kv.layers.forEach((l, i) => {
        l.key = snapshot[i].key;
        l.value = snapshot[i].value;
      });
      ids = firstIds;
    },
  });
  return { timing, ms: timing.medianUs / 1e3 };
}

// ---------------------------------------------------------------------------------------------
// Report

interface PeerFigures {
  prefillMs?: number;
  decodeMs?: number;
  source: string;
}

let peer: PeerFigures = { source: "not run" };

function ourMs(mode: Mode, figure: Measurement["figure"]): number | undefined {
  const m = results.find((r) => r.mode === mode && r.figure === figure);
  return m?.error ? undefined : m?.ms;
}

function table(): string {
  const header = [
    "mode",
    "figure",
    "ours (ms)",
    `PyTorch fp16 eager (ms) [${peer.source}]`,
    "speedup vs PyTorch",
    "target",
    "met?",
    "vs our float16",
    "check",
  ];
  const rows = results.map((m) => {
    const isDecode = m.figure.startsWith("decode");
    const ref = isDecode ? peer.decodeMs : peer.prefillMs;
    const speedup = m.ms !== undefined && ref !== undefined ? ref / m.ms : undefined;
    let target = "—";
    let met = "—";
    if (m.figure === "decode static (graph)") {
      target = "≥ 10× (≤ 1/10 per token)";
      met = speedup === undefined ? "?" : speedup >= 10 ? "yes" : "no";
    } else if (m.figure.startsWith("prefill")) {
      target = "≥ 2×";
      met = speedup === undefined ? "?" : speedup >= 2 ? "yes" : "no";
    }
    let vsFloat = "—";
    if (m.mode !== "float16" && m.ms !== undefined) {
      const base = ourMs("float16", m.figure);
      if (base !== undefined) {
        const r = base / m.ms;
        vsFloat = `${r.toFixed(2)}× ${r > 1 ? "(faster)" : "(NOT faster)"}`;
      }
    }
    // A smoke run's tiny model says nothing about the targets, set for GPT-2 small on a GPU.
    if (smoke || !device.startsWith("cuda")) met = "n/a (smoke)";
    if (m.error) met = "error";
    return [
      m.mode,
      m.figure + (isDecode ? " /token" : ""),
      m.error ? "error" : fmt(m.ms, 3),
      fmt(ref, 2),
      speedup === undefined ? "—" : `${speedup.toFixed(2)}×`,
      target,
      met,
      vsFloat,
      m.check ?? (m.error ? m.error.split("\n")[0].slice(0, 80) : ""),
    ];
  });
  return `### GPT-2 small (${
    smoke ? "SMOKE: tiny config" : "12×768, vocab 50257"
  }) on ${device}: prefill ${prefillBatch}×${prefillSeq}, decode at ${context} context ` +
    `(${steps} steps, static cache ${maxLength} slots)` +
    (tq.attentionQlinearFusionEnabled() ? "" : ", attention not folded into the projections") +
    (compress ? ", quantized weights compressed to their codes" : "") +
    "\n\n" + markdownTable(header, rows);
}

function save(): void {
  writeOut(outDir, "gpt2.md", table() + "\n");
  writeOut(
    outDir,
    "gpt2.json",
    JSON.stringify(
      { ...details, peer, results },
      (_k, v) => typeof v === "number" && !Number.isFinite(v) ? null : v,
      2,
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Main

async function runPeerFigures(): Promise<void> {
  if (noPeer) {
    peer = {
      prefillMs: REFERENCE_MS.prefill,
      decodeMs: REFERENCE_MS.decode,
      source: "reference H200 figures",
    };
    return;
  }
  log("running the PyTorch peer (transformers GPT2LMHeadModel, fp16, eager) ...");
  const peerArgs = [
    "--json",
    "--batch",
    String(prefillBatch),
    "--seq",
    String(prefillSeq),
    "--context",
    String(context),
    "--steps",
    String(steps),
  ];
  if (quick) peerArgs.push("--quick");
  const r = await runPeer(PEER, peerArgs, 240);
  details.peerRaw = r.json ?? { error: r.error };
  const prefill = (r.json?.prefill as Record<string, number> | undefined)?.median_ms;
  const decode = (r.json?.decode as Record<string, number> | undefined)?.median_ms;
  if (typeof prefill === "number" && typeof decode === "number") {
    const attn = r.json?.attn_implementation;
    peer = { prefillMs: prefill, decodeMs: decode, source: `measured, attention ${attn ?? "?"}` };
  } else {
    log(`peer failed (${r.error ?? "missing figures"}): using the reference H200 figures`);
    peer = {
      prefillMs: typeof prefill === "number" ? prefill : REFERENCE_MS.prefill,
      decodeMs: typeof decode === "number" ? decode : REFERENCE_MS.decode,
      source: "reference H200 figures (peer failed)",
    };
  }
  log(`PyTorch: prefill ${fmt(peer.prefillMs, 2)} ms, decode ${fmt(peer.decodeMs, 2)} ms/token`);
}

async function main(): Promise<void> {
  if (device.startsWith("cuda") && !tq.cuda.isAvailable()) {
    log(`no GPU: ${tq.cuda.unavailableReason()}; nothing to measure (try --smoke --device cpu)`);
    writeOut(outDir, "gpt2.md", `GPT-2 bench skipped: no GPU (${tq.cuda.unavailableReason()})\n`);
    Deno.exitCode = 1;
    return;
  }
  const t0 = performance.now();
  await runPeerFigures();
  save();

  const dtype: BenchFloat = "float16";
  log(`building the model (${dtype}, random weights) ...`);
  const model = randomModel(dtype);
  const vocab = model.config.vocabSize;
  const prefillIds = randomIdsOn([prefillBatch, prefillSeq], 11, vocab);
  const prompt = randomIdsOn([1, context], 12, vocab);
  const calibIds = randomIdsOn([1, smoke ? 8 : 128], 13, vocab);
  log(`model ready in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);

  let calibration: tq.Calibration | undefined;
  for (const name of modes) {
    const mode = name as Mode;
    const tm = performance.now();
    // Compressed weights cannot go back to float: those modes get a model of their own (the
    // same seeded weights).
    const own = compress && mode !== "float16";
    const target = own ? randomModel(dtype) : model;
    try {
      if (mode !== "float16") {
        calibration ??= tq.calibrate(model, [calibIds], (m, ids) => m.forward(ids), {
          method: "max",
          onProgress: () => {},
        });
        tq.quantizeModel(target, { mode, calibration, exclude: ["lm_head"] });
        if (compress) tq.compressWeights(target);
      }
      const ops = countOps(tq.inspectGraph(target.forward(randomIdsOn([1, 4], 14, vocab))).ops);
      log(`[${mode}] graph: ${ops}`);
      details[`ops_${mode}`] = ops;
      attempt(mode, "prefill eager", () => prefillEager(target, prefillIds));
      attempt(mode, "prefill compiled", () => prefillCompiled(target, prefillIds));
      attempt(mode, "decode static (graph)", () => decodeStatic(target, prompt));
      attempt(mode, "decode eager", () => decodeEager(target, prompt));
    } catch (e) {
      record({ mode, figure: "prefill eager", error: errorMessage(e) });
    } finally {
      if (own) {
        for (const p of target.parameters()) p.dispose();
      } else {
        backToFloat(model); // for the next mode
      }
    }
    log(`[${mode}] done in ${((performance.now() - tm) / 1e3).toFixed(1)} s`);
  }
  details.seconds = (performance.now() - t0) / 1e3;
  save();
  log("");
  log(table());
  // A figure that failed is a failed run (scripts that collect the tables check the status).
  if (results.some((m) => m.error)) Deno.exitCode = 1;
}

if (import.meta.main) await main();
