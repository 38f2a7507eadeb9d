/**
 * The cost of a token count not seen before: GPT-2 small (random weights, float16 and the
 * quantized modes) on CUDA, one eager forward of one sequence per length, timed the first time
 * (planning, and the cuBLASLt autotune of new problem sizes) and the second.
 *
 *     deno run -A bench/new_lengths.ts [--modes float16,w8a8,fp8] [--lengths 100,101,150,333,511]
 *         [--out DIR]
 *
 * Prints a markdown table (wall ms, synchronized, first / second forward); `--out DIR` also
 * writes it to DIR/new_lengths.md.
 * @module
 */
import * as tq from "../mod.ts";
import { GPT2_SMALL, randomGpt2 } from "./gpt2_model.ts";
import { argValue, checkCommandLine, markdownTable, requireGpu, writeOut } from "./timing.ts";

checkCommandLine("new_lengths.ts", Deno.args, { values: ["modes", "lengths", "out"] });
const OUT = argValue(Deno.args, "out");
const modes = (argValue(Deno.args, "modes") ?? "float16,w8a8,fp8").split(",").map((m) => m.trim())
  .filter(Boolean);
const lengthsText = argValue(Deno.args, "lengths") ?? "100,101,150,333,511";
const lengths = lengthsText.split(",").map(Number);
if (lengths.some((l) => !Number.isInteger(l) || l < 1 || l > GPT2_SMALL.nPositions!)) {
  console.error(
    `new_lengths.ts: --lengths: integers in [1, ${GPT2_SMALL.nPositions}], got ${lengthsText}`,
  );
  Deno.exit(2);
}
requireGpu("new_lengths.ts");

const ids = (len: number) =>
  tq.tensor(Int32Array.from({ length: len }, (_, i) => (i * 13) % 50257), {
    shape: [1, len],
    device: "cuda",
  });

const rows: string[][] = [];
for (const mode of modes) {
  const model = randomGpt2(GPT2_SMALL, "float16", "cuda");
  if (mode !== "float16") {
    const calibration = tq.calibrate(model, [ids(256)], (m, b) => m.forward(b).evaluate());
    tq.quantizeModel(model, {
      mode: mode as tq.QuantizationMode,
      exclude: ["lm_head"],
      calibration,
    });
  }
  const row = [mode];
  for (const len of lengths) {
    const x = ids(len);
    const times = [0, 1].map(() => {
      const t0 = performance.now();
      const y = model.forward(x);
      y.evaluate();
      tq.cuda.synchronize();
      y.dispose();
      return performance.now() - t0;
    });
    row.push(times.map((t) => t.toFixed(1)).join(" / "));
  }
  rows.push(row);
}
const table = markdownTable(["mode", ...lengths.map((l) => `${l} tokens`)], rows);
console.log(table);
writeOut(OUT, "new_lengths.md", `${table}\n`);
