/**
 * Storage of the generated kernel modules (kernels/ptx/*.ts): each PTX text is kept deflated and
 * base64-encoded, and inflated on first use, so the package stays small and importing tensorq
 * costs nothing for programs that never load a kernel. When the sm_90a text nearly equals the
 * portable one, it is stored as the lines in which it differs. Beside the PTX, a module may carry
 * the sm_90a text compiled ahead of time (a cubin), which spares Hopper GPUs the driver's JIT.
 * @module
 */
import { Buffer } from "node:buffer";
import { inflateRawSync } from "node:zlib";

/** The sm_90a PTX compiled ahead of time, as the generated module stores it. */
export interface StoredCubin {
  /** The cubin, deflated and base64-encoded. */
  readonly image: string;
  /** SHA-256 (hex) of the sm_90a PTX text the cubin was compiled from. */
  readonly ptxSha256: string;
  /** `ptxas --version`'s release line of the compiler that made it. */
  readonly compiler: string;
}

/** The compiled forms of one kernel file. */
export interface PtxModule {
  /** PTX for sm_90a (Hopper, with wgmma). */
  readonly ptxSm90a: string;
  /** Portable PTX for compute capability 8.0 and newer. */
  readonly ptxCompute80: string;
  /** `ptxSm90a` compiled for sm_90a (an ELF image), when the build made one. */
  readonly cubinSm90a: Uint8Array | undefined;
  /** What the cubin was compiled from and with (undefined without a cubin). */
  readonly cubinSource: { readonly ptxSha256: string; readonly compiler: string } | undefined;
}

/** Returns `base` with line `i` replaced by `text` for each `[i, text]` of `changes`. */
export function patchLines(base: string, changes: readonly (readonly [number, string])[]): string {
  if (changes.length === 0) return base;
  const lines = base.split("\n");
  for (const [i, text] of changes) lines[i] = text;
  return lines.join("\n");
}

/** Inflates a base64 text of raw-deflated bytes. */
export function inflateBytes(base64: string): Uint8Array {
  return new Uint8Array(inflateRawSync(Buffer.from(base64, "base64")));
}

/** Inflates a base64 text of raw-deflated UTF-8. */
export function inflateText(base64: string): string {
  return new TextDecoder().decode(inflateBytes(base64));
}

/**
 * A module whose texts are inflated when first read: `compute80` is deflated base64, and
 * `sm90a` either deflated base64 too or the line changes from the portable text; `cubin`, when
 * given, is the sm_90a text compiled ahead of time.
 */
export function lazyPtx(
  compute80: string,
  sm90a: string | readonly (readonly [number, string])[],
  cubin?: StoredCubin,
): PtxModule {
  let base: string | undefined;
  let hopper: string | undefined;
  let binary: Uint8Array | undefined;
  const portable = () => (base ??= inflateText(compute80));
  return {
    get ptxCompute80(): string {
      return portable();
    },
    get ptxSm90a(): string {
      hopper ??= typeof sm90a === "string" ? inflateText(sm90a) : patchLines(portable(), sm90a);
      return hopper;
    },
    get cubinSm90a(): Uint8Array | undefined {
      if (!cubin) return undefined;
      return (binary ??= inflateBytes(cubin.image));
    },
    get cubinSource() {
      return cubin && { ptxSha256: cubin.ptxSha256, compiler: cubin.compiler };
    },
  };
}
