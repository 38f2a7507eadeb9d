/**
 * Helpers shared by the quantization workflow (calibrate, quantizeModel, compressWeights):
 * name lists for messages, and the check for compressed weights.
 * @module
 */
import { TensorqError } from "../errors.ts";
import type { Linear } from "../nn/layers.ts";

/** The first `limit` of `names`, comma-separated, and how many more there are. */
export function listNames(names: string[], limit = 8): string {
  const shown = names.slice(0, limit).join(", ");
  return names.length > limit ? `${shown} and ${names.length - limit} more` : shown;
}

/**
 * Throws a state error of `op` naming every layer of `layers` whose float weight was replaced
 * by its codes (compressWeights); `advice` ends the message. Checked before anything changes,
 * since reading such a layer's weight fails.
 */
export function checkUncompressed(op: string, layers: [string, Linear][], advice: string): void {
  const compressed = layers.filter(([, l]) => l.weightCompressed).map(([n]) => `'${n}'`);
  if (compressed.length === 0) return;
  const one = compressed.length === 1;
  throw new TensorqError(
    `${one ? "layer" : "layers"} ${listNames(compressed)} ${one ? "holds" : "hold"} ` +
      `compressed weights (compressWeights); ${advice}`,
    {
      op,
      kind: "state",
      argument: "model",
      expected: "Linear layers with their float weights",
      actual: "weight codes (weightCodes) instead of float weights",
    },
  );
}
