/**
 * Time to load each kernel module on a machine's first run: from its shipped sm_90a cubin, and
 * from its sm_90a PTX, which the driver compiles at load. Run it with the driver's JIT cache
 * off, or a PTX load that ran before is read from the cache:
 *
 *     CUDA_CACHE_DISABLE=1 deno run -A bench/module_load.ts [--out DIR]
 *
 * Prints a markdown table (ms per load, wall clock, each module loaded once each way and
 * unloaded); `--out DIR` also writes it to DIR/module_load.md. Needs a compute capability 9.0
 * GPU (the cubins are for sm_90a).
 * @module
 */
import { checkCu, cuda, cuModuleLoadCubin, cuModuleLoadPtx } from "../ffi/cuda.ts";
import { readEnv } from "../ffi/library.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import type { PtxModule } from "../kernels/ptx_codec.ts";
import { argValue, checkCommandLine, fmt, markdownTable, requireGpu, writeOut } from "./timing.ts";

checkCommandLine("module_load.ts", Deno.args, { values: ["out"] });
requireGpu("module_load.ts");
const OUT = argValue(Deno.args, "out");

const device = CudaDevice.get(0);
const [major, minor] = device.computeCapability;
if (major !== 9 || minor !== 0) {
  console.error(`module_load: needs compute capability 9.0, this GPU is ${major}.${minor}`);
  Deno.exit(1);
}
const cacheOff = readEnv("CUDA_CACHE_DISABLE") === "1";
if (!cacheOff) {
  console.warn("module_load: CUDA_CACHE_DISABLE=1 is not set: PTX loads may hit the JIT cache");
}

/** Milliseconds to load `load()`'s module, which is then unloaded. */
function timeLoad(load: () => Deno.PointerValue): number {
  const started = performance.now();
  const module = load();
  const ms = performance.now() - started;
  checkCu(cuda().cuModuleUnload(module), "cuModuleUnload");
  return ms;
}

const dir = new URL("../kernels/ptx/", import.meta.url);
const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".ts")).sort();
const rows: string[][] = [];
let cubinTotal = 0;
let ptxTotal = 0;
for (const name of names) {
  const { ptx } = await import(new URL(name, dir).href) as { ptx: PtxModule };
  const cubin = ptx.cubinSm90a;
  if (!cubin) throw new Error(`kernels/ptx/${name}: no cubin (rebuild with deno task kernels)`);
  const text = ptx.ptxSm90a;
  const fromCubin = timeLoad(() => cuModuleLoadCubin(cubin));
  const fromPtx = timeLoad(() => cuModuleLoadPtx(text));
  cubinTotal += fromCubin;
  ptxTotal += fromPtx;
  rows.push([
    name.replace(/\.ts$/, ""),
    fmt(cubin.length / 1024, 0),
    fmt(fromCubin, 1),
    fmt(fromPtx, 0),
  ]);
}
rows.push(["all", "", fmt(cubinTotal, 1), fmt(ptxTotal, 0)]);
const table = markdownTable(["module", "cubin KiB", "cubin load ms", "PTX load ms (JIT)"], rows);
const text = `JIT cache ${cacheOff ? "off" : "on (CUDA_CACHE_DISABLE unset)"}\n\n${table}\n`;
console.log(text);
writeOut(OUT, "module_load.md", text);
