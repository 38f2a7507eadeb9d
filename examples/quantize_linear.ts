/**
 * The quantization walkthrough: scales from amax, a quantized `Linear(768, 2304)` with loaded
 * weights and scales, and the same computation written by hand with quantize / dequantize /
 * matmul. Both give the same output.
 *
 *     deno run examples/quantize_linear.ts [--device cuda]
 */
import { parseArgs } from "node:util";
import * as tq from "../mod.ts";

/** What the walkthrough computed. */
export interface QuantizeLinearResult {
  /** Output of the quantized Linear module. */
  moduleOutput: tq.Tensor;
  /** Output of the hand-written quantize/dequantize/matmul version. */
  manualOutput: tq.Tensor;
  /** Output of the same layer in float32 (no quantization). */
  floatOutput: tq.Tensor;
  /** max |module − manual| (0: the two are the same computation). */
  maxDiffModuleVsManual: number;
  /** max |module − float| (the quantization error). */
  maxDiffVsFloat: number;
}

/** Runs the walkthrough on `device`. */
export function runQuantizeLinearExample(device = "cpu"): QuantizeLinearResult {
  const [inFeatures, outFeatures] = [768, 2304];

  // Weights, bias and a calibration batch (any source works: a checkpoint, another tool).
  const weight = tq.randn([outFeatures, inFeatures], { seed: 1, std: 0.02, device });
  const bias = tq.randn([outFeatures], { seed: 2, std: 0.01, device });
  const calibration = tq.randn([16, inFeatures], { seed: 3, device });

  // Scales from amax: scale = amax / 127 (per output channel for the weight).
  const weightScale = tq.scaleFromAmax(weight.abs().max(1), "int8").to(device);
  const inputScale = tq.scaleFromAmax(calibration.abs().max(), "int8").to(device);

  // The module: weight quantized along dim 0, input quantized per tensor.
  const layer = new tq.Linear(inFeatures, outFeatures, { quantDtype: "int8", weightQuantDim: 0 });
  layer.to(device);
  layer.loadStateDict({ weight, bias, weightScale, inputScale });

  const x = tq.randn([4, inFeatures], { seed: 4, device });
  const moduleOutput = layer.forward(x);

  // The same thing by hand.
  const qx = tq.quantize(x, inputScale, "int8");
  const dqx = tq.dequantize(qx, inputScale, "float32");
  const qw = tq.quantize(weight, weightScale, "int8", { dim: 0 });
  const dqw = tq.dequantize(qw, weightScale, "float32", { dim: 0 });
  const manualOutput = dqx.matmul(dqw.transpose(0, 1)).add(bias);

  const floatOutput = x.matmul(weight.transpose(0, 1)).add(bias);
  const maxAbs = (t: tq.Tensor) => t.abs().max().item();
  return {
    moduleOutput,
    manualOutput,
    floatOutput,
    maxDiffModuleVsManual: maxAbs(moduleOutput.sub(manualOutput)),
    maxDiffVsFloat: maxAbs(moduleOutput.sub(floatOutput)),
  };
}

const USAGE = "usage: deno run -A examples/quantize_linear.ts [--device cpu|cuda|cuda:N]";

/** Parses `args`, runs the walkthrough and prints it; returns the exit code. */
export function main(args: string[]): number {
  let device: string;
  try {
    const { values } = parseArgs({
      args,
      options: { device: { type: "string", default: "cpu" }, help: { type: "boolean" } },
    });
    if (values.help) {
      console.log(USAGE);
      return 0;
    }
    device = values.device;
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  let r: QuantizeLinearResult;
  try {
    r = runQuantizeLinearExample(device);
  } catch (e) {
    // A device that cannot run (no GPU, no permission) is one line, not a stack trace.
    if (!(e instanceof tq.TensorqError)) throw e;
    console.error(`error: ${e.message}`);
    return 1;
  }
  console.log("quantized Linear output (first row, first 6):");
  console.log(r.moduleOutput.slice([[0, 1], [0, 6]]));
  console.log("manual quantize/dequantize/matmul output (first row, first 6):");
  console.log(r.manualOutput.slice([[0, 1], [0, 6]]));
  console.log(`max |module - manual| = ${r.maxDiffModuleVsManual}`);
  console.log(`max |module - float32| = ${r.maxDiffVsFloat.toExponential(3)} (quantization error)`);
  return 0;
}

if (import.meta.main) Deno.exit(main(Deno.args));
