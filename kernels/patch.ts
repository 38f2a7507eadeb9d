/**
 * Rebuilds a PTX text from another one and the lines in which it differs (generated modules
 * in kernels/ptx/ store the sm_90a PTX this way when it nearly equals the portable PTX).
 * @module
 */

/** Returns `base` with line `i` replaced by `text` for each `[i, text]` of `changes`. */
export function patchLines(base: string, changes: readonly (readonly [number, string])[]): string {
  if (changes.length === 0) return base;
  const lines = base.split("\n");
  for (const [i, text] of changes) lines[i] = text;
  return lines.join("\n");
}
