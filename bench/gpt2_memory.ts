/**
 * GPU memory of GPT-2-small (random weights, float16) in each mode: the bytes live tensors hold
 * once the model is on the device, after a max calibration (one batch of 128 tokens), after
 * quantizeModel, after one prefill (8 × 512: the products make and cache their weight forms,
 * and cuBLASLt gets its workspace), and after one decode-sized forward (1 token: the streaming
 * GEMVs' forms). Each mode runs in a process of its own, so nothing of one mode is counted in
 * another. With `--compress`, each quantized mode also runs with its weights compressed
 * (`tq.compressWeights` after quantizeModel: codes instead of float weights).
 *
 *     deno run -A bench/gpt2_memory.ts [--modes float16,w8a8,fp8,w4] [--compress] [--out DIR]
 *
 * Prints a markdown table (MiB); `--out DIR` also writes it to DIR/gpt2_memory.md.
 * @module
 */
import * as tq from "../mod.ts";
import { GPT2_SMALL, randomGpt2, randomIds } from "./gpt2_model.ts";
import { argValue, checkCommandLine, fmt, markdownTable, requireGpu, writeOut } from "./timing.ts";

const MiB = 1024 * 1024;
const STAGES = [
  "model loaded",
  "after calibrate",
  "after quantizeModel",
  "after a prefill",
  "after a decode step",
];

/** Live MiB after each stage of one mode (in this process); `mode+c`: compressed. */
function measure(run: string): number[] {
  const [mode, compressed] = [run.replace(/\+c$/, ""), run.endsWith("+c")];
  const live = () => tq.cuda.memoryStats().liveBytes / MiB;
  const model = randomGpt2(GPT2_SMALL, "float16", "cuda");
  const vocab = model.config.vocabSize;
  const sizes = [live()];
  if (mode !== "float16") {
    const calibIds = randomIds([1, 128], 13, vocab, "cuda");
    const calibration = tq.calibrate(model, [calibIds], (m, ids) => m.forward(ids), {
      method: "max",
      onProgress: () => {},
    });
    sizes.push(live());
    tq.quantizeModel(model, {
      mode: mode as tq.QuantizationMode,
      calibration,
      exclude: ["lm_head"],
    });
    if (compressed) tq.compressWeights(model);
    calibIds.dispose();
  } else {
    sizes.push(live());
  }
  sizes.push(live());
  for (const shape of [[8, 512], [1, 1]]) {
    const ids = randomIds(shape, 3, vocab, "cuda");
    model.forward(ids).evaluate().dispose();
    ids.dispose();
    tq.cuda.synchronize();
    sizes.push(live());
  }
  return sizes;
}

checkCommandLine("gpt2_memory.ts", Deno.args, {
  values: ["modes", "out", "child"],
  flags: ["compress"],
});
const child = argValue(Deno.args, "child");
if (child === undefined) requireGpu("gpt2_memory.ts");
if (child !== undefined) {
  console.log(JSON.stringify(measure(child)));
} else {
  const modes = (argValue(Deno.args, "modes") ?? "float16,w8a8,fp8,w4").split(",");
  if (Deno.args.includes("--compress")) {
    modes.push(...modes.filter((m) => m !== "float16").map((m) => `${m}+c`));
  }
  const rows: string[][] = [];
  for (const mode of modes) {
    const { code, stdout, stderr } = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL(import.meta.url).pathname, "--child", mode],
    }).outputSync();
    const out = new TextDecoder().decode(stdout).trim().split("\n");
    if (code !== 0) {
      throw new Error(`${mode}: exit ${code}\n${new TextDecoder().decode(stderr)}`);
    }
    const sizes = JSON.parse(out[out.length - 1]) as number[];
    console.log(`${mode}: ${sizes.map((s) => fmt(s)).join(" / ")} MiB`);
    rows.push([mode.replace(/\+c$/, " compressed"), ...sizes.map((s) => fmt(s))]);
  }
  const table = "GPT-2 small (float16, random weights): MiB held by live tensors\n\n" +
    markdownTable(["mode", ...STAGES], rows);
  console.log(table);
  const outDir = argValue(Deno.args, "out");
  if (outDir) writeOut(outDir, "gpt2_memory.md", table + "\n");
}
