import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { resetLibraryCache } from "../ffi/library.ts";
import { checkCuda, cudart, memInfo } from "../ffi/cudart.ts";
import { CudaDevice } from "../lib/backends/cuda/device.ts";
import { CudaBuffer } from "../lib/backends/cuda/memory.ts";
import {
  deferCheck,
  type DeferredCheck,
  raiseDeferredErrors,
} from "../lib/backends/cuda/deferred_checks.ts";
import { evaluating, runningOp, TensorqError } from "../lib/errors.ts";
import { assertTqError, evalInProcess, repoModule, testOnGpu, thisLine } from "./helpers.ts";

testOnGpu("cuda: device tensors round-trip and report their device", async () => {
  const x = tq.randn([3, 5], { seed: 1 });
  const g = x.to("cuda");
  assert.equal(g.device, "cuda:0");
  assert.deepEqual(g.dataSync(), x.dataSync());
  assert.deepEqual(await g.data(), x.dataSync());
  assert.deepEqual(g.to("cpu").toArray(), x.toArray());
  assert.equal(tq.cuda.isAvailable(), true);
  assert.ok(tq.cuda.deviceCount() >= 1);
});

testOnGpu("cuda: await data() does not block the event loop", async () => {
  // About 50 ms of GPU work: twenty 4096³ float32 products.
  const a = tq.randn([4096, 4096], { seed: 2, device: "cuda" });
  let y = a;
  for (let i = 0; i < 20; i++) y = y.matmul(a).mul(1 / 64);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const started = performance.now();
  const values = await y.slice([[0, 1]]).data();
  const waited = performance.now() - started;
  clearInterval(timer);
  assert.equal(values.length, 4096);
  assert.ok(ticks >= 1, `no timer ran during a ${waited.toFixed(1)} ms wait: the loop was blocked`);
});

testOnGpu("cuda: 10,000 evaluations keep device memory steady", () => {
  const w = tq.randn([64, 64], { seed: 3, device: "cuda" });
  const run = () => {
    const x = tq.randn([8, 64], { seed: 4, device: "cuda" });
    const y = x.matmul(w).relu().sum(1);
    y.dataSync();
    y.dispose();
    x.dispose();
  };
  for (let i = 0; i < 100; i++) run();
  const before = tq.cuda.memoryStats();
  for (let i = 0; i < 10_000; i++) run();
  const after = tq.cuda.memoryStats();
  assert.equal(after.liveBytes, before.liveBytes, "live bytes return to the same level");
  assert.equal(after.liveBuffers, before.liveBuffers);
  assert.ok(
    after.poolReservedBytes <= before.poolReservedBytes + (1 << 21),
    `pool grew from ${before.poolReservedBytes} to ${after.poolReservedBytes}`,
  );
});

testOnGpu("cuda: out of memory is a clear error and the process keeps working", () => {
  const one = tq.ones([1], { device: "cuda" });
  const two = tq.full([], 2, { device: "cuda" });
  const attempt = () => {
    // 2^36 float32 elements (256 GiB): more than any GPU has.
    const huge = one.expand([1 << 18, 1 << 18]).mul(two);
    let error: unknown;
    try {
      huge.evaluate();
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof tq.TensorqError, `expected a TensorqError, got ${error}`);
    assert.match(error.message, /out of device memory on cuda:0: requested 256\.00 GiB/);
  };
  attempt(); // the first attempt also lowers (and caches) the plan
  const before = tq.cuda.memoryStats();
  attempt();
  const after = tq.cuda.memoryStats();
  // A failed evaluation leaks nothing, and the device still works.
  assert.equal(after.liveBytes, before.liveBytes);
  assert.equal(after.liveBuffers, before.liveBuffers);
  assert.deepEqual(tq.tensor([1, 2], { device: "cuda" }).add(1).toArray(), [2, 3]);
  // A CUDA graph (whose memory nodes need physical memory of their own) still launches: its
  // first launches after a failed allocation ran out of memory until the pool gave back what
  // it kept.
  const w = tq.randn([64, 64], { seed: 3, device: "cuda" });
  const exe = tq.compile((x) => x.matmul(w).add(1), {
    args: [tq.inputInfo([64, 64])],
    device: "cuda",
  });
  for (let i = 0; i < 3; i++) {
    const x = tq.randn([64, 64], { seed: 10 + i, device: "cuda" });
    const got = (exe(x) as tq.Tensor).dataSync() as Float32Array;
    const want = x.matmul(w).add(1).dataSync() as Float32Array;
    for (let j = 0; j < want.length; j++) {
      assert.ok(Math.abs(got[j] - want[j]) <= 1e-4 * (1 + Math.abs(want[j])), `call ${i} at ${j}`);
    }
  }
});

testOnGpu("cuda: an eager allocation takes back the memory compiled functions keep", () => {
  // A compiled function with a 2 GiB intermediate ([16384, 32768] float32): the CUDA graph
  // allocator keeps that memory between launches.
  const [rows, cols] = [16384, 32768];
  const exe = tq.compile((a, b) => a.matmul(b).sum(1), {
    args: [tq.inputInfo([rows, 1]), tq.inputInfo([1, cols])],
    device: "cuda",
  });
  const a = tq.randn([rows, 1], { seed: 21, device: "cuda" });
  const b = tq.randn([1, cols], { seed: 22, device: "cuda" });
  const first = (exe(a, b) as tq.Tensor).dataSync();
  const held = tq.cuda.memoryStats().graphReservedBytes;
  assert.ok(held >= 2 ** 31, `graph memory held after a launch: ${held} bytes`);
  // Free memory plus 1 GiB is there only once the graphs' memory is given back, which the
  // driver does under pressure (the pool's unused memory is trimmed first, so it cannot cover
  // the request).
  const device = CudaDevice.get(0);
  device.synchronize();
  checkCuda(cudart().cudaMemPoolTrimTo(device.pool, 0n), "cudaMemPoolTrimTo");
  const request = memInfo().free + 2 ** 30;
  const big = CudaBuffer.allocate(device, "int8", request);
  assert.equal(big.bytes, request);
  big.dispose();
  assert.ok(tq.cuda.memoryStats().graphReservedBytes < held, "graph memory was given back");
  // The compiled function maps its memory again and gives the same result.
  assert.deepEqual((exe(a, b) as tq.Tensor).dataSync(), first);
});

Deno.test("cuda: a bad library directory gives a clear error and the CPU keeps working", async () => {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import * as tq from ${JSON.stringify(new URL("../mod.ts", import.meta.url).href)};
       console.log("reason:", tq.cuda.unavailableReason());
       console.log("cpu:", tq.tensor([1, 2]).add(1).toArray().join(","));
       try { tq.ones([1], { device: "cuda" }); } catch (e) { console.log("error:", e.message); }`,
    ],
    env: {
      TENSORQ_CUDA_LIB_DIR: "/nonexistent/tensorq-libs",
      CUDA_HOME: "/nonexistent/cuda-home",
      CUDA_PATH: "/nonexistent/cuda-path",
      LD_LIBRARY_PATH: "/nonexistent/ld",
    },
    stdout: "piped",
    stderr: "piped",
  });
  const out = await cmd.output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
  assert.match(text, /cpu: 2,3/);
  if (/reason: undefined/.test(text)) {
    // The driver or runtime was still found through the system loader: nothing more to check.
    return;
  }
  assert.match(text, /\/nonexistent\/tensorq-libs/);
  assert.match(text, /error: .*not available/);
  resetLibraryCache();
});

// A little of several kernel modules (nn, elementwise, reduce, quantize): evaluated in this
// process and, from its source text, in one that loads every module from PTX.
function moduleProbe(t: typeof tq): number[][] {
  const x = t.randn([96, 768], { seed: 20261130, device: "cuda" });
  const w = t.randn([768], { seed: 20261131, device: "cuda" }).mul(0.1).add(1);
  const h = t.layerNorm(x, w).gelu();
  // x, not h: a last-bit difference in h could move a code across a rounding boundary.
  const q = t.dequantize(t.quantize(x, 0.02, "int8"), 0.02, "float32");
  return [h.softmax(), q, h.sum(1)].map((y) => Array.from(y.dataSync() as Float32Array));
}

testOnGpu(
  "cuda: kernel modules load from their sm_90a cubins on compute capability 9.0, and from PTX " +
    "(TENSORQ_CUDA_FORCE_PTX=1) they compute the same",
  async () => {
    const { moduleImage } = await import("../lib/backends/cuda/kernels.ts");
    const { ptx: nnModule } = await import("../kernels/ptx/nn.ts");
    const here = moduleProbe(tq);
    const device = CudaDevice.get(0);
    const [major, minor] = device.computeCapability;
    const forced = Deno.env.get("TENSORQ_CUDA_FORCE_PTX") === "1";
    assert.equal(
      moduleImage(device, nnModule),
      major === 9 && minor === 0 && !forced ? "cubin" : "ptx",
    );

    const script = [
      `import * as tq from ${repoModule("../mod.ts")};`,
      `import { moduleImage } from ${repoModule("../lib/backends/cuda/kernels.ts")};`,
      `import { CudaDevice } from ${repoModule("../lib/backends/cuda/device.ts")};`,
      `import { ptx } from ${repoModule("../kernels/ptx/nn.ts")};`,
      moduleProbe.toString(),
      "const out = moduleProbe(tq);",
      "console.log(JSON.stringify({ image: moduleImage(CudaDevice.get(0), ptx), out }));",
    ].join("\n");
    const there = await evalInProcess<{ image: string; out: number[][] }>(script, {
      TENSORQ_CUDA_FORCE_PTX: "1",
    });
    assert.equal(there.image, "ptx");
    // One PTX text, two assemblies (ours ahead of time, the driver's at load). The same ptxas
    // gives the same bits; another version may contract a multiply and an add differently.
    here.forEach((values, i) => {
      const other = there.out[i];
      assert.equal(other.length, values.length);
      let worst = 0;
      for (let j = 0; j < values.length; j++) {
        const scale = Math.max(Math.abs(values[j]), 1e-30);
        worst = Math.max(worst, Math.abs(values[j] - other[j]) / scale);
      }
      assert.ok(worst <= 2.4e-7, `output ${i}: relative difference ${worst}`);
    });
  },
);

Deno.test("cuda.setTuningFile: bad paths and files give clear errors; a new path is fine", () => {
  const dir = Deno.makeTempDirSync();
  try {
    assert.throws(() => tq.cuda.setTuningFile(""), /tuning file must be a non-empty path/);
    Deno.writeTextFileSync(`${dir}/broken.json`, "{ not json");
    assert.throws(
      () => tq.cuda.setTuningFile(`${dir}/broken.json`),
      /broken\.json is not JSON/,
    );
    Deno.writeTextFileSync(`${dir}/other.json`, JSON.stringify({ format: "something else" }));
    assert.throws(
      () => tq.cuda.setTuningFile(`${dir}/other.json`),
      /other\.json is not a tensorq cuBLASLt tuning file/,
    );
    assert.throws(() => tq.cuda.setTuningFile(dir), /could not read the tuning file/);
    // A missing file is created only at the first pick.
    tq.cuda.setTuningFile(`${dir}/new.json`);
    assert.throws(() => Deno.statSync(`${dir}/new.json`), Deno.errors.NotFound);
  } finally {
    tq.cuda.setTuningFile(undefined);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("device-side checks report the line that built the op, across evaluations of that line", () => {
  // A fake device and check (no GPU): the bookkeeping of lib/backends/cuda/deferred_checks.ts.
  const device = { makeCurrent() {}, synchronize() {} } as unknown as CudaDevice;
  let bad = false;
  let errorLine = 0;
  const check: DeferredCheck = {
    device,
    enqueueRead() {},
    takeError: () => {
      if (!bad) return undefined;
      bad = false;
      errorLine = thisLine() + 1;
      return new TensorqError("index out of range", { op: "gather", kind: "argument" });
    },
  };
  const at = (line: number) => ({ file: "file:///app.ts", line, column: 14 });
  // Each eager evaluation traces new nodes: equal records of one line, not one object.
  const evaluate = (line: number) =>
    evaluating(() => ({ op: "gather", callSite: at(line) }), () => {
      runningOp(0);
      deferCheck(check);
    });
  const raised = () => assertTqError(raiseDeferredErrors, { op: "gather", kind: "argument" });
  bad = true;
  evaluate(7);
  evaluate(7);
  let e = raised();
  assert.equal(e.callSite?.line, 7, e.message);
  // Where the error was made is this test's check (a library's read in real use).
  assert.match(e.message, new RegExp(`found when read at .*_test\\.ts:${errorLine}:`));
  // Launches of two lines marked it: no line can be told, the read's is reported.
  bad = true;
  evaluate(7);
  evaluate(9);
  e = raised();
  assert.ok(!e.message.includes("found when"), e.message);
  assert.ok(e.callSite?.file.endsWith("_test.ts"), e.message);
});
