/**
 * Storage of the generated PTX modules (kernels/ptx/*.ts): each PTX text is kept deflated and
 * base64-encoded, and inflated on first use, so the package stays small and importing tensorq
 * costs nothing for programs that never load a kernel. When the sm_90a text nearly equals the
 * portable one, it is stored as the lines in which it differs.
 * @module
 */
import { Buffer } from "node:buffer";
import { inflateRawSync } from "node:zlib";

/** The two PTX texts of one kernel file. */
export interface PtxModule {
  /** PTX for sm_90a (Hopper, with wgmma). */
  readonly ptxSm90a: string;
  /** Portable PTX for compute capability 8.0 and newer. */
  readonly ptxCompute80: string;
}

/** Returns `base` with line `i` replaced by `text` for each `[i, text]` of `changes`. */
export function patchLines(base: string, changes: readonly (readonly [number, string])[]): string {
  if (changes.length === 0) return base;
  const lines = base.split("\n");
  for (const [i, text] of changes) lines[i] = text;
  return lines.join("\n");
}

/** Inflates a base64 text of raw-deflated UTF-8. */
export function inflateText(base64: string): string {
  return new TextDecoder().decode(inflateRawSync(Buffer.from(base64, "base64")));
}

/**
 * A module whose texts are inflated when first read: `compute80` is deflated base64, and
 * `sm90a` either deflated base64 too or the line changes from the portable text.
 */
export function lazyPtx(
  compute80: string,
  sm90a: string | readonly (readonly [number, string])[],
): PtxModule {
  let base: string | undefined;
  let hopper: string | undefined;
  const portable = () => (base ??= inflateText(compute80));
  return {
    get ptxCompute80(): string {
      return portable();
    },
    get ptxSm90a(): string {
      hopper ??= typeof sm90a === "string" ? inflateText(sm90a) : patchLines(portable(), sm90a);
      return hopper;
    },
  };
}
