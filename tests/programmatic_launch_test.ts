// Programmatic dependent launch: which kernels wait for the previous kernel themselves
// (kernels/common.cuh, gridDependencyEntry), and that dependent chains stay correct when their
// kernels overlap, eagerly and in a replayed CUDA graph.
import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { entriesWaitingOnPriorGrids } from "../lib/backends/cuda/kernels.ts";
import type { PtxModule } from "../kernels/ptx_codec.ts";
import { testOnGpu } from "./helpers.ts";

const PTX_DIR = new URL("../kernels/ptx/", import.meta.url);

/** Every generated kernel module except the FFI smoke test's. */
async function kernelModules(): Promise<[string, PtxModule][]> {
  const modules: [string, PtxModule][] = [];
  for (const entry of Deno.readDirSync(PTX_DIR)) {
    if (!entry.name.endsWith(".ts") || entry.name === "smoke.ts") continue;
    const mod = await import(new URL(entry.name, PTX_DIR).href);
    modules.push([entry.name, mod.ptx as PtxModule]);
  }
  return modules.sort(([a], [b]) => a.localeCompare(b));
}

/** `[name, body]` of each `.entry` of a PTX text. */
function entries(ptx: string): [string, string][] {
  const found: [string, number][] = [];
  const re = /\.entry\s+([A-Za-z_$][\w$]*)/g;
  for (let m = re.exec(ptx); m !== null; m = re.exec(ptx)) found.push([m[1], m.index]);
  return found.map(([name, at], i) => [name, ptx.slice(at, found[i + 1]?.[1] ?? ptx.length)]);
}

Deno.test("entriesWaitingOnPriorGrids: only entries whose own body waits", () => {
  const ptx = [
    ".version 8.8",
    ".target sm_90a",
    ".visible .entry first(\n\t.param .u64 first_param_0\n)\n{\n\tgriddepcontrol.wait;\n\tret;\n}",
    ".visible .entry second(\n)\n{\n\tret;\n}",
    ".visible .entry third_$x(\n)\n{\n\tmov.u32 %r1, 0;\n\tgriddepcontrol.wait;\n\tret;\n}",
  ].join("\n");
  assert.deepEqual([...entriesWaitingOnPriorGrids(ptx)].sort(), ["first", "third_$x"]);
  assert.equal(entriesWaitingOnPriorGrids(".version 8.8\n.target sm_80\n").size, 0);
});

Deno.test("every sm_90a kernel waits for the previous kernel before touching global memory", async () => {
  // A kernel launched before its predecessor has finished may read or write global memory only
  // after griddepcontrol.wait.
  const access = /\b(ld\.global|st\.global|atom\.|red\.|cp\.async|cp\.reduce|tex\.|suld|sust)/;
  let checked = 0;
  for (const [file, module] of await kernelModules()) {
    const waiting = entriesWaitingOnPriorGrids(module.ptxSm90a);
    for (const [name, body] of entries(module.ptxSm90a)) {
      assert.ok(waiting.has(name), `${file}: ${name} does not wait (gridDependencyEntry)`);
      const wait = body.indexOf("griddepcontrol.wait");
      const first = access.exec(body);
      assert.ok(
        first === null || first.index > wait,
        `${file}: ${name} has '${first?.[1]}' before griddepcontrol.wait`,
      );
      checked++;
    }
    // The portable text has neither instruction: devices before 9.0 launch plainly.
    assert.equal(module.ptxCompute80.includes("griddepcontrol"), false, file);
  }
  assert.ok(checked > 100, `only ${checked} entries found`);
});

testOnGpu("programmatic launch: a chain of dependent kernels is exact, eager and replayed", () => {
  assert.equal(tq.cuda.programmaticLaunch(), true);
  // Step i adds (i + 1)·x to the previous step's output, so a kernel that read its input
  // before the previous kernel had finished would lose a term. Small integers keep every value
  // exact: y = x·(1 + 48·49 / 2). 1M elements: every launch has many blocks.
  const n = 1 << 20;
  const steps = 48;
  let state = 20261129;
  const ints = Float32Array.from({ length: n }, () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return (state >>> 28) - 8;
  });
  const chain = (x: tq.Tensor) => {
    let y = x;
    for (let i = 0; i < steps; i++) y = y.add(x.mul(i + 1));
    return y;
  };
  const factor = 1 + (steps * (steps + 1)) / 2;
  const check = (values: ArrayLike<number>, what: string) => {
    for (let i = 0; i < n; i++) {
      if (values[i] !== ints[i] * factor) {
        assert.fail(`${what}: element ${i} is ${values[i]}, expected ${ints[i] * factor}`);
      }
    }
  };
  const x = tq.tensor(ints, { shape: [n], device: "cuda" });
  for (const enabled of [true, false]) {
    tq.cuda.setProgrammaticLaunch(enabled);
    try {
      check(chain(x).dataSync() as Float32Array, `programmatic ${enabled}, eager`);
      const compiled = tq.compile(chain, {
        args: [tq.inputInfo([n], "float32")],
        device: "cuda",
      });
      try {
        for (let r = 0; r < 3; r++) {
          const y = compiled(x) as tq.Tensor;
          check(y.dataSync() as Float32Array, `programmatic ${enabled}, replay ${r}`);
          y.dispose();
        }
      } finally {
        compiled.dispose();
      }
    } finally {
      tq.cuda.setProgrammaticLaunch(true);
    }
  }
});
