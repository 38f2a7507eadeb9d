/**
 * Compiles the CUDA kernels in `kernels/*.cu` to PTX and writes `kernels/ptx/<name>.ts`.
 *
 * Each kernel file is compiled twice: for `sm_90a` (Hopper, with its architecture-specific
 * instructions) and for `compute_80` (portable PTX that any newer GPU's driver can JIT). Fast
 * math stays off: division and square roots are IEEE-exact and denormals are kept
 * (`-prec-div=true -prec-sqrt=true -ftz=false`), so results match the CPU backend. The sm_90a
 * PTX is then assembled by ptxas into a cubin that ships beside it: on Hopper the driver loads
 * that instead of compiling the PTX (seconds per module) on a machine's first run.
 *
 * Usage: `deno task kernels [--nvcc PATH] [--ptxas PATH] [file.cu ...]` (default: every
 * `kernels/*.cu`). nvcc is looked up as `--nvcc`, `$NVCC`, `nvcc` on the PATH,
 * `$CUDA_HOME/bin/nvcc`, `/usr/local/cuda/bin/nvcc`; ptxas likewise (`--ptxas`, `$PTXAS`, beside
 * nvcc, on the PATH, ...).
 * @module
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { deflateRawSync } from "node:zlib";

const KERNELS_DIR = new URL("./", import.meta.url);
const PTX_DIR = new URL("./ptx/", import.meta.url);

/** One PTX flavour produced for every kernel file. */
export interface PtxTarget {
  /** Name of the exported constant in the generated module. */
  exportName: string;
  /** nvcc's `-gencode` value. */
  gencode: string;
  /** The `.target` line the PTX must carry. */
  target: string;
  /** What the flavour is for, in the generated doc comment. */
  description: string;
}

/** The PTX flavours built for each kernel file. */
export const PTX_TARGETS: readonly PtxTarget[] = [
  {
    exportName: "ptxSm90a",
    gencode: "arch=compute_90a,code=compute_90a",
    target: "sm_90a",
    description: "PTX for sm_90a (Hopper: H100, H200), using its architecture-specific features",
  },
  {
    exportName: "ptxCompute80",
    gencode: "arch=compute_80,code=compute_80",
    target: "sm_80",
    description: "portable PTX for compute capability 8.0 and newer (JIT-compiled by the driver)",
  },
];

/** nvcc flags shared by every build: optimized, IEEE-exact (no fast math). */
export const NVCC_FLAGS: readonly string[] = [
  "-O3",
  "-std=c++17",
  "-prec-div=true",
  "-prec-sqrt=true",
  "-ftz=false",
];

/** ptxas flags of the shipped cubins: the driver JIT's own default optimization level. */
export const PTXAS_FLAGS: readonly string[] = ["-arch=sm_90a", "-O3"];

class BuildFailure extends Error {}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

async function runs(command: string): Promise<boolean> {
  try {
    const { success } = await new Deno.Command(command, {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false;
  }
}

async function findTool(
  tool: "nvcc" | "ptxas",
  explicit: string | undefined,
  beside?: string,
): Promise<string> {
  if (explicit !== undefined) {
    if (await runs(explicit)) return explicit;
    throw new BuildFailure(`--${tool} ${explicit}: not a ${tool} that runs`);
  }
  const cudaHome = env("CUDA_HOME");
  // ptxas is looked for beside the nvcc in use first, so the two come from one toolkit.
  const sibling = beside?.includes("/")
    ? `${beside.slice(0, beside.lastIndexOf("/"))}/${tool}`
    : undefined;
  const candidates = [
    env(tool.toUpperCase()),
    sibling,
    tool,
    cudaHome ? `${cudaHome}/bin/${tool}` : undefined,
    `/usr/local/cuda/bin/${tool}`,
  ].filter((c): c is string => c !== undefined);
  for (const candidate of candidates) if (await runs(candidate)) return candidate;
  throw new BuildFailure(
    `${tool} not found (tried ${candidates.join(", ")}); install the CUDA toolkit or pass ` +
      `--${tool} PATH`,
  );
}

/** Compiles one `.cu` file to PTX for `target`; returns the PTX text. */
export async function compilePtx(nvcc: string, source: string, target: PtxTarget): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "tensorq-ptx-" });
  try {
    const out = `${dir}/out.ptx`;
    const args = [...NVCC_FLAGS, `-gencode=${target.gencode}`, "-ptx", "-o", out, source];
    const result = await new Deno.Command(nvcc, { args, stdout: "piped", stderr: "piped" })
      .output();
    if (!result.success) {
      const log = new TextDecoder().decode(result.stderr) + new TextDecoder().decode(result.stdout);
      throw new BuildFailure(`${nvcc} ${args.join(" ")} failed:\n${log.trim()}`);
    }
    const ptx = await Deno.readTextFile(out);
    if (!new RegExp(`^\\.target\\s+${target.target}\\b`, "m").test(ptx)) {
      const found = /^\.target\s+(\S+)/m.exec(ptx)?.[1] ?? "none";
      throw new BuildFailure(`${source}: expected .target ${target.target} PTX, got ${found}`);
    }
    return ptx;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The release line of `ptxas --version`, e.g. `ptxas 13.0.88`. */
export async function ptxasVersion(ptxas: string): Promise<string> {
  const result = await new Deno.Command(ptxas, { args: ["--version"], stdout: "piped" }).output();
  const text = new TextDecoder().decode(result.stdout);
  const version = /release [\d.]+, V([\d.]+)/.exec(text)?.[1];
  if (!result.success || !version) {
    throw new BuildFailure(`${ptxas} --version: no release line in:\n${text.trim()}`);
  }
  return `ptxas ${version}`;
}

/** Assembles sm_90a PTX text into a cubin with ptxas; returns the ELF image. */
export async function compileCubin(ptxas: string, ptx: string, name: string): Promise<Uint8Array> {
  const dir = await Deno.makeTempDir({ prefix: "tensorq-cubin-" });
  try {
    const input = `${dir}/${name}.ptx`;
    const out = `${dir}/${name}.cubin`;
    await Deno.writeTextFile(input, ptx);
    const args = [...PTXAS_FLAGS, input, "-o", out];
    const result = await new Deno.Command(ptxas, { args, stdout: "piped", stderr: "piped" })
      .output();
    if (!result.success) {
      const log = new TextDecoder().decode(result.stderr) + new TextDecoder().decode(result.stdout);
      throw new BuildFailure(`${ptxas} ${args.join(" ")} failed:\n${log.trim()}`);
    }
    return await Deno.readFile(out);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** SHA-256 of a text's UTF-8 bytes, in hex: ties a cubin to the PTX it came from. */
export function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** PTX ignores indentation: dropping it saves about a tenth of the size. */
export function compactPtx(text: string): string {
  return text.split("\n").map((l) => l.trimStart()).join("\n");
}

/** Renders the generated TypeScript module for kernel file `name` (without `.cu`). */
export function renderPtxModule(
  name: string,
  ptx: Readonly<Record<string, string>>,
  cubin?: { image: Uint8Array; compiler: string },
): string {
  const base = compactPtx(ptx.ptxCompute80);
  const hopper = compactPtx(ptx.ptxSm90a);
  const baseLines = base.split("\n");
  const hopperLines = hopper.split("\n");
  const changes: [number, string][] = [];
  if (baseLines.length === hopperLines.length) {
    hopperLines.forEach((line, i) => line !== baseLines[i] && changes.push([i, line]));
  }
  // When the sm_90a text differs from the portable one in only a few lines (often just the
  // .target directive), ship it as those lines.
  const patch = baseLines.length === hopperLines.length && changes.length < baseLines.length / 20;
  const deflatedBytes = (bytes: Uint8Array) =>
    JSON.stringify(Buffer.from(deflateRawSync(bytes, { level: 9 })).toString("base64"));
  const deflated = (text: string) => deflatedBytes(new TextEncoder().encode(text));
  return [
    `// generated by kernels/build.ts from kernels/${name}.cu; do not edit`,
    "",
    "/**",
    ` * PTX of \`kernels/${name}.cu\`, built by \`deno task kernels\`: ${
      PTX_TARGETS.map((t) => t.target).join(" and ")
    }${cubin ? `, and an sm_90a cubin of the sm_90a text (${cubin.compiler})` : ""}, deflated ` +
    `(see kernels/ptx_codec.ts).`,
    " * @module",
    " */",
    "",
    `import { lazyPtx, type PtxModule } from "../ptx_codec.ts";`,
    "",
    `/** ${PTX_TARGETS[1].description}; ${PTX_TARGETS[0].description}. */`,
    `export const ptx: PtxModule = lazyPtx(`,
    `  ${deflated(base)},`,
    `  ${patch ? JSON.stringify(changes) : deflated(hopper)},`,
    ...(cubin
      ? [
        `  {`,
        `    image: ${deflatedBytes(cubin.image)},`,
        `    ptxSha256: ${JSON.stringify(sha256Hex(hopper))},`,
        `    compiler: ${JSON.stringify(cubin.compiler)},`,
        `  },`,
      ]
      : []),
    `);`,
    "",
  ].join("\n");
}

function parseArgs(args: string[]): { nvcc?: string; ptxas?: string; files: string[] } {
  const tools: { nvcc?: string; ptxas?: string } = {};
  const files: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const tool = /^--(nvcc|ptxas)(=.*)?$/.exec(arg);
    if (tool) {
      const value = tool[2] !== undefined ? tool[2].slice(1) : args[++i];
      if (!value) throw new BuildFailure(`--${tool[1]} needs a path`);
      tools[tool[1] as "nvcc" | "ptxas"] = value;
    } else if (arg === "--help" || arg === "-h") {
      console.log("usage: deno task kernels [--nvcc PATH] [--ptxas PATH] [kernels/NAME.cu ...]");
      Deno.exit(0);
    } else if (arg.startsWith("-")) throw new BuildFailure(`unknown option ${arg}`);
    else files.push(arg);
  }
  return { ...tools, files };
}

async function defaultSources(): Promise<string[]> {
  const sources: string[] = [];
  for await (const entry of Deno.readDir(KERNELS_DIR)) {
    if (entry.isFile && entry.name.endsWith(".cu")) {
      sources.push(new URL(entry.name, KERNELS_DIR).pathname);
    }
  }
  return sources.sort();
}

async function main(args: string[]): Promise<void> {
  const options = parseArgs(args);
  const nvcc = await findTool("nvcc", options.nvcc);
  const ptxas = await findTool("ptxas", options.ptxas, nvcc);
  const compiler = await ptxasVersion(ptxas);
  const sources = options.files.length > 0 ? options.files : await defaultSources();
  if (sources.length === 0) throw new BuildFailure("no kernels/*.cu files to build");
  await Deno.mkdir(PTX_DIR, { recursive: true });
  for (const source of sources) {
    const base = source.split("/").pop() ?? source;
    if (!base.endsWith(".cu")) throw new BuildFailure(`${source}: not a .cu file`);
    const name = base.slice(0, -".cu".length);
    const ptx: Record<string, string> = {};
    for (const target of PTX_TARGETS) {
      ptx[target.exportName] = await compilePtx(nvcc, source, target);
    }
    const image = await compileCubin(ptxas, compactPtx(ptx.ptxSm90a), name);
    const out = new URL(`${name}.ts`, PTX_DIR);
    await Deno.writeTextFile(out, renderPtxModule(name, ptx, { image, compiler }));
    console.log(
      `kernels/ptx/${name}.ts: ${PTX_TARGETS.map((t) => t.target).join(", ")}, ` +
        `sm_90a cubin (${compiler})`,
    );
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    if (!(error instanceof BuildFailure)) throw error;
    console.error(`kernels/build.ts: ${error.message}`);
    Deno.exit(1);
  }
}
