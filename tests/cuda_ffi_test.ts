import assert from "node:assert/strict";
import { TensorqError } from "../lib/errors.ts";
import {
  cudaFailureOf,
  lazyLibrary,
  librarySearchDirs,
  openLibrary,
  readEnv,
  resetLibraryCache,
} from "../ffi/library.ts";
import {
  checkCu,
  cuda,
  cuGetFunction,
  cuLaunch,
  cuModuleLoadCubin,
  cuModuleLoadPtx,
  cuStatusName,
  KernelParams,
} from "../ffi/cuda.ts";
import {
  checkCuda,
  copyToDevice,
  copyToDeviceAsync,
  copyToHost,
  copyToHostAsync,
  createEvent,
  createStream,
  cudaDevAttrComputeCapabilityMajor,
  cudaDevAttrComputeCapabilityMinor,
  cudaErrorMemoryAllocation,
  cudaMemPoolAttrReleaseThreshold,
  cudaMemPoolAttrUsedMemCurrent,
  cudart,
  cudaStreamCaptureModeThreadLocal,
  cudaStreamCaptureStatusActive,
  cudaStreamCaptureStatusNone,
  cudaStreamNonBlocking,
  defaultMemPool,
  deviceAlloc,
  deviceAllocAsync,
  deviceAttribute,
  endCapture,
  eventElapsedMs,
  instantiateGraph,
  memPoolGetAttribute,
  memPoolSetAttribute,
  runtimeVersion,
  streamCaptureStatus,
} from "../ffi/cudart.ts";
import {
  allocHeuristicResults,
  checkCublas,
  CUBLAS_COMPUTE_32F,
  CUBLAS_OP_N,
  CUBLAS_OP_T,
  CUBLAS_STATUS_NOT_SUPPORTED,
  cublasLt,
  CUBLASLT_EPILOGUE_BIAS,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER,
  CUBLASLT_MATMUL_DESC_EPILOGUE,
  CUBLASLT_MATMUL_DESC_TRANSA,
  CUBLASLT_MATMUL_DESC_TRANSB,
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
  CUDA_R_32F,
  HEURISTIC_RESULT_LAYOUT,
  heuristicAlgo,
  heuristicResultCount,
  heuristicState,
  heuristicWavesCount,
  heuristicWorkspaceSize,
  ltAlgoGetHeuristic,
  ltCreate,
  ltMatmulDescCreate,
  ltMatmulPreferenceCreate,
  ltMatrixLayoutCreate,
  ltSetMatmulDescAttribute,
  ltSetMatmulPreferenceAttribute,
  ltVersion,
} from "../ffi/cublaslt.ts";
import { ptx as smoke } from "../kernels/ptx/smoke.ts";
import type { PtxModule } from "../kernels/ptx_codec.ts";
import { sha256Hex } from "../kernels/build.ts";

// ---------------------------------------------------------------------------------------------
// Helpers

/** Deterministic uniform numbers in [0, 1) (mulberry32). */
function rng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Distance in units in the last place between two finite float32 values. */
function ulpDistance(a: number, b: number): number {
  const bits = new Int32Array(new Float32Array([a, b]).buffer);
  // Map the sign-magnitude bit patterns onto a monotonic integer line.
  const order = (i: number) => (bits[i] < 0 ? -(bits[i] & 0x7fffffff) : bits[i]);
  return Math.abs(order(0) - order(1));
}

function withEnv(vars: Record<string, string | undefined>, body: () => void): void {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, Deno.env.get(k)]));
  try {
    for (const [k, v] of Object.entries(vars)) {
      v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
    }
    body();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
    }
  }
}

/** Runs `body`, which must throw, and returns what it threw. */
function thrown(body: () => unknown): unknown {
  try {
    body();
  } catch (error) {
    return error;
  }
  throw new assert.AssertionError({ message: "expected an exception" });
}

const MISSING = ["libtensorq-missing.so.1", "libtensorq-missing.so.0"];
const PROBE = { cudaProbe: { parameters: [], result: "i32" } } as const;

// ---------------------------------------------------------------------------------------------
// Library lookup (no GPU needed)

Deno.test("openLibrary: a missing library fails listing every path tried, in order", () => {
  const dirs = ["/nonexistent/tensorq-a", "/nonexistent/tensorq-b/"];
  const error = thrown(() => openLibrary("test", MISSING, PROBE, { searchDirs: dirs }));
  assert.ok(error instanceof TensorqError);
  assert.equal(error.op, "dlopen");
  assert.equal(error.kind, "cuda");
  const message = error.message;
  const expected = [
    "/nonexistent/tensorq-a/libtensorq-missing.so.1",
    "/nonexistent/tensorq-a/libtensorq-missing.so.0",
    "/nonexistent/tensorq-b/libtensorq-missing.so.1",
    "/nonexistent/tensorq-b/libtensorq-missing.so.0",
    "\n  libtensorq-missing.so.1:",
    "\n  libtensorq-missing.so.0:",
  ];
  let last = -1;
  for (const path of expected) {
    const at = message.indexOf(path);
    assert.ok(at > last, `'${path}' missing or out of order in:\n${message}`);
    last = at;
  }
  // Each attempt carries the loader's own reason.
  assert.match(message, /tensorq-a\/libtensorq-missing\.so\.1: .*No such file/);
  assert.match(message, /TENSORQ_CUDA_LIB_DIR/);
});

Deno.test("openLibrary: without the bare-name fallback only the directories are tried", () => {
  assert.throws(
    () => openLibrary("test", MISSING, PROBE, { searchDirs: ["/nonexistent/d"], bareName: false }),
    (e: unknown) =>
      e instanceof TensorqError && e.message.includes("/nonexistent/d/libtensorq-missing.so.0") &&
      !e.message.includes("\n  libtensorq-missing.so.1"),
  );
});

Deno.test("librarySearchDirs: TENSORQ_CUDA_LIB_DIR first, then CUDA_HOME, CUDA_PATH, default", () => {
  withEnv({
    TENSORQ_CUDA_LIB_DIR: "/nonexistent/tq-env:/nonexistent/tq-env2",
    CUDA_HOME: "/nonexistent/cuda-home",
    CUDA_PATH: "/nonexistent/cuda-path/",
  }, () => {
    assert.deepEqual(librarySearchDirs(), [
      "/nonexistent/tq-env",
      "/nonexistent/tq-env2",
      "/nonexistent/cuda-home/lib64",
      "/nonexistent/cuda-path/lib64",
      "/usr/local/cuda/lib64",
    ]);
    const error = thrown(() => openLibrary("test", MISSING, PROBE));
    assert.ok(error instanceof TensorqError);
    const message = error.message;
    assert.ok(
      message.indexOf("/nonexistent/tq-env/libtensorq-missing.so.1") <
        message.indexOf("/usr/local/cuda/lib64/libtensorq-missing.so.1"),
      message,
    );
  });
  withEnv({ TENSORQ_CUDA_LIB_DIR: undefined, CUDA_HOME: undefined, CUDA_PATH: "" }, () => {
    assert.deepEqual(librarySearchDirs(), ["/usr/local/cuda/lib64"]);
    assert.equal(readEnv("CUDA_PATH"), undefined);
  });
});

Deno.test("lazyLibrary: opens once, caches a failure, searches again after reset", () => {
  const getter = lazyLibrary("test", MISSING, PROBE, { searchDirs: ["/nonexistent/lazy"] });
  const first = thrown(getter);
  const second = thrown(getter);
  assert.ok(first instanceof TensorqError);
  assert.equal(second, first);
  resetLibraryCache();
  const third = thrown(getter);
  assert.ok(third instanceof TensorqError);
  assert.notEqual(third, first);
});

// ---------------------------------------------------------------------------------------------
// Argument and result layouts (no GPU needed)

Deno.test("KernelParams: each pointer points at its argument's storage", () => {
  const params = new KernelParams(2);
  const check = (p: KernelParams, values: Array<[string, number | bigint]>) => {
    assert.equal(p.length, values.length);
    values.forEach(([type, value], i) => {
      const address = p.pointerArray[i];
      assert.equal(address - p.pointerArray[0], BigInt(8 * i), "8-byte slots");
      const view = new Deno.UnsafePointerView(Deno.UnsafePointer.create(address)!);
      const read: number | bigint = type === "ptr"
        ? view.getBigUint64()
        : type === "i32"
        ? view.getInt32()
        : type === "u32"
        ? view.getUint32()
        : type === "i64"
        ? view.getBigInt64()
        : type === "f32"
        ? view.getFloat32()
        : view.getFloat64();
      assert.equal(read, value, `argument ${i} (${type})`);
    });
  };
  const devicePointer = Deno.UnsafePointer.create(0x7f00_1234_5678n);
  params.ptr(0x1234_5678_9abcn).i32(-5).u32(0xfffffff0).i64(-(2n ** 40n)).f32(1.5)
    .f64(Math.PI).ptr(null).ptr(devicePointer).u64(2n ** 63n + 7n).i64(-3);
  check(params, [
    ["ptr", 0x1234_5678_9abcn],
    ["i32", -5],
    ["u32", 0xfffffff0],
    ["i64", -(2n ** 40n)],
    ["f32", 1.5],
    ["f64", Math.PI],
    ["ptr", 0n],
    ["ptr", 0x7f00_1234_5678n],
    ["ptr", 2n ** 63n + 7n],
    ["i64", -3n],
  ]);

  // Reuse: same buffers, new values.
  const pointers = params.pointerArray;
  params.reset().f32(-0.25).i32(7);
  assert.equal(params.pointerArray, pointers);
  check(params, [["f32", -0.25], ["i32", 7]]);

  // Growing past the initial capacity keeps every argument readable.
  const many = new KernelParams();
  const expected: Array<[string, number]> = [];
  for (let i = 0; i < 40; i++) {
    many.i32(i * 1000 - 17);
    expected.push(["i32", i * 1000 - 17]);
  }
  check(many, expected);
});

Deno.test("cublasLtMatmulHeuristicResult_t layout: 96 bytes, fields read at their offsets", () => {
  assert.equal(HEURISTIC_RESULT_LAYOUT.bytes, 96);
  assert.equal(HEURISTIC_RESULT_LAYOUT.algoBytes, 64);
  assert.equal(HEURISTIC_RESULT_LAYOUT.workspaceSizeOffset, 64);
  assert.equal(HEURISTIC_RESULT_LAYOUT.stateOffset, 72);
  assert.equal(HEURISTIC_RESULT_LAYOUT.wavesCountOffset, 76);
  assert.equal(HEURISTIC_RESULT_LAYOUT.reservedOffset, 80);

  const results = allocHeuristicResults(3);
  assert.equal(results.byteLength, 288);
  assert.equal(heuristicResultCount(results), 3);
  const view = new DataView(results.buffer);
  view.setBigUint64(2 * 96 + 64, 33554432n, true);
  view.setInt32(2 * 96 + 72, 15, true);
  view.setFloat32(2 * 96 + 76, 0.75, true);
  view.setBigUint64(1 * 96 + 64, 123n, true);
  assert.equal(heuristicWorkspaceSize(results, 2), 33554432);
  assert.equal(heuristicState(results, 2), 15);
  assert.equal(heuristicWavesCount(results, 2), 0.75);
  assert.equal(heuristicWorkspaceSize(results, 1), 123);
  const base = Deno.UnsafePointer.value(Deno.UnsafePointer.of(results));
  assert.equal(Deno.UnsafePointer.value(heuristicAlgo(results, 1)), base + 96n);
  assert.throws(
    () => heuristicState(results, 3),
    (e: unknown) => e instanceof TensorqError && e.kind === "argument",
  );
});

Deno.test("cuBLASLt attribute setters reject unknown attributes and wrong value kinds", () => {
  assert.throws(
    () => ltSetMatmulDescAttribute(null, 9999, 1),
    (e: unknown) => e instanceof TensorqError && e.kind === "unsupported",
  );
  assert.throws(
    () => ltSetMatmulDescAttribute(null, CUBLASLT_MATMUL_DESC_BIAS_POINTER, 5),
    (e: unknown) => e instanceof TensorqError && e.kind === "argument",
  );
  assert.throws(
    () => ltSetMatmulDescAttribute(null, CUBLASLT_MATMUL_DESC_TRANSA, null),
    (e: unknown) => e instanceof TensorqError && e.kind === "argument",
  );
});

Deno.test("status checks name the status, with or without the library", () => {
  assert.doesNotThrow(() => checkCublas(0, "cublasLtMatmul"));
  assert.throws(
    () => checkCublas(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul"),
    (e: unknown) =>
      e instanceof TensorqError && e.op === "cublasLtMatmul" && e.kind === "cuda" &&
      e.message.includes("cublasLtMatmul: failed with CUBLAS_STATUS_NOT_SUPPORTED") &&
      cudaFailureOf(e)?.status === CUBLAS_STATUS_NOT_SUPPORTED,
  );
  // The runtime library opens without a GPU too: names come from cudaGetErrorName then.
  let runtimeOpens = true;
  try {
    cudart();
  } catch {
    runtimeOpens = false;
  }
  assert.throws(
    () => checkCuda(cudaErrorMemoryAllocation, "cudaMalloc"),
    (e: unknown) =>
      e instanceof TensorqError && e.op === "cudaMalloc" &&
      e.message.includes(
        runtimeOpens
          ? "cudaMalloc: failed with cudaErrorMemoryAllocation (out of memory)"
          : "cudaMalloc",
      ) &&
      cudaFailureOf(e)?.api === "runtime" && cudaFailureOf(e)?.status === 2,
  );
  assert.throws(
    () => copyToDevice(null, new Float32Array(4), 20),
    (e: unknown) => e instanceof TensorqError && e.kind === "argument" && e.argument === "bytes",
  );
});

Deno.test("kernels/ptx/smoke.ts holds sm_90a and compute_80 PTX of smoke_axpy_f32", () => {
  assert.match(smoke.ptxSm90a, /^\.target sm_90a$/m);
  assert.match(smoke.ptxCompute80, /^\.target sm_80$/m);
  for (const ptx of [smoke.ptxSm90a, smoke.ptxCompute80]) {
    assert.match(ptx, /\.entry smoke_axpy_f32\(/);
    // Exact IEEE arithmetic: no flush-to-zero or approximate forms.
    assert.doesNotMatch(ptx, /\.ftz|\.approx/);
  }
});

Deno.test("every kernels/ptx module ships an sm_90a cubin compiled from its own sm_90a PTX", async () => {
  const dir = new URL("../kernels/ptx/", import.meta.url);
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".ts"));
  assert.ok(names.length >= 12, `only ${names.length} generated modules`);
  for (const name of names.sort()) {
    const { ptx } = await import(new URL(name, dir).href) as { ptx: PtxModule };
    const image = ptx.cubinSm90a;
    const source = ptx.cubinSource;
    assert.ok(image && source, `${name}: no cubin`);
    // A cubin left behind by a PTX edit would run other code than the PTX says.
    assert.equal(source.ptxSha256, sha256Hex(ptx.ptxSm90a), `${name}: cubin of another PTX`);
    assert.match(source.compiler, /^ptxas \d+\.\d+\.\d+$/);
    // ELF64, little-endian, EM_CUDA (190), for SM 90 (bits 8-15 of e_flags).
    const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
    assert.deepEqual([...image.subarray(0, 6)], [0x7f, 0x45, 0x4c, 0x46, 2, 1], `${name}: ELF`);
    assert.equal(view.getUint16(18, true), 190, `${name}: e_machine`);
    assert.equal((view.getUint32(48, true) >> 8) & 0xff, 90, `${name}: SM of e_flags`);
  }
});

// ---------------------------------------------------------------------------------------------
// GPU (runs only where a CUDA device is present; TENSORQ_TEST_GPU=1 makes absence a failure)

function gpuSkipReason(): string | undefined {
  try {
    const driver = cuda();
    const status = driver.cuInit(0);
    if (status !== 0) return `cuInit failed: ${cuStatusName(status)[0]}`;
    const count = new Int32Array(new ArrayBuffer(8));
    const countStatus = driver.cuDeviceGetCount(count);
    if (countStatus !== 0) return `cuDeviceGetCount failed: ${cuStatusName(countStatus)[0]}`;
    if (count[0] === 0) return "no CUDA device";
    return undefined;
  } catch (error) {
    // The last path tried is the system loader's search for libcuda.so.1.
    const text = error instanceof Error ? error.message : String(error);
    const attempts = text.split("\n").filter((line) => line.startsWith("  "));
    return `no CUDA driver (${attempts.at(-1)?.trim() ?? text})`;
  }
}

const skipReason = gpuSkipReason();
const requireGpu = readEnv("TENSORQ_TEST_GPU") === "1";
const ignoreGpu = skipReason !== undefined && !requireGpu;
if (skipReason !== undefined) {
  console.log(`cuda: skipped: ${skipReason}${requireGpu ? " (TENSORQ_TEST_GPU=1: failing)" : ""}`);
}

function useDevice0(): void {
  if (skipReason !== undefined) throw new Error(`cuda: ${skipReason}`);
  const rt = cudart();
  checkCuda(rt.cudaSetDevice(0), "cudaSetDevice");
  // Creates and makes current the primary context, which the driver API calls then use.
  checkCuda(rt.cudaFree(null), "cudaFree");
}

function smokePtx(): string {
  const major = deviceAttribute(cudaDevAttrComputeCapabilityMajor, 0);
  const minor = deviceAttribute(cudaDevAttrComputeCapabilityMinor, 0);
  return major === 9 && minor === 0 ? smoke.ptxSm90a : smoke.ptxCompute80;
}

Deno.test({
  name: "GPU: smoke_axpy_f32 from PTX and cubin matches float32 a*x+y within 1 ulp",
  ignore: ignoreGpu,
  fn() {
    useDevice0();
    assert.ok(runtimeVersion() >= 12000);
    const n = 100_003;
    const pad = 16;
    const random = rng(20261129);
    const nonZero = () => Math.fround((random() < 0.5 ? -1 : 1) * (0.01 + 4 * random()));
    const a = Math.fround(1.7);
    const x = Float32Array.from({ length: n }, nonZero);
    const y = Float32Array.from({ length: n + pad }, (_, i) => (i < n ? nonZero() : 12345));
    const dx = deviceAlloc(n * 4);
    const dy = deviceAlloc((n + pad) * 4);
    copyToDevice(dx, x);
    const params = new KernelParams();
    const out = new Float32Array(n + pad);
    const block = 256;

    // The sm_90a text and its cubin where the device is 9.0, and the portable text everywhere.
    const texts = [smokePtx(), smoke.ptxCompute80].filter((p, i, all) => all.indexOf(p) === i);
    const variants: (string | Uint8Array)[] = [...texts];
    if (texts[0] === smoke.ptxSm90a && smoke.cubinSm90a) variants.push(smoke.cubinSm90a);
    for (const ptx of variants) {
      const target = typeof ptx === "string" ? /^\.target (\S+)/m.exec(ptx)?.[1] : "sm_90a cubin";
      copyToDevice(dy, y);
      const module = typeof ptx === "string" ? cuModuleLoadPtx(ptx) : cuModuleLoadCubin(ptx);
      const fn = cuGetFunction(module, "smoke_axpy_f32");
      params.reset().f32(a).ptr(dx).ptr(dy).i64(n);
      cuLaunch(fn, [Math.ceil(n / block), 1, 1], [block, 1, 1], 0, null, params);
      checkCuda(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize");

      copyToHost(out, dy);
      let worst = 0;
      for (let i = 0; i < n; i++) {
        // a*x is exact in float64; the kernel fuses it with the add (one float32 rounding).
        const reference = Math.fround(a * x[i] + y[i]);
        worst = Math.max(worst, ulpDistance(out[i], reference));
      }
      assert.ok(worst <= 1, `${target}: worst error ${worst} ulp`);
      for (let i = n; i < n + pad; i++) assert.equal(out[i], 12345, "element past n untouched");
      checkCu(cuda().cuModuleUnload(module), "cuModuleUnload");
    }

    checkCuda(cudart().cudaFree(dx), "cudaFree");
    checkCuda(cudart().cudaFree(dy), "cudaFree");
  },
});

Deno.test({
  name: "GPU: PTX JIT and cubin load errors carry the JIT log or status; driver statuses are named",
  ignore: ignoreGpu,
  fn() {
    useDevice0();
    const broken = ".version 8.0\n.target sm_80\n.address_size 64\n" +
      ".visible .entry broken()\n{\n\tnot_an_instruction %r1;\n\tret;\n}\n";
    assert.throws(
      () => cuModuleLoadPtx(broken),
      (e: unknown) =>
        e instanceof TensorqError && e.op === "cuModuleLoadDataEx" &&
        /CUDA_ERROR_INVALID_PTX/.test(e.message) && /JIT log:\n.*\S/.test(e.message),
    );
    // A cubin that is not one: the status is named, not a crash.
    const notElf = new Uint8Array(4096).map((_, i) => (i * 131 + 7) & 0xff);
    assert.throws(
      () => cuModuleLoadCubin(notElf),
      (e: unknown) =>
        e instanceof TensorqError && e.op === "cuModuleLoadDataEx" &&
        /CUDA_ERROR_(INVALID_IMAGE|INVALID_PTX|UNSUPPORTED_PTX_VERSION)/.test(e.message),
    );
    assert.throws(
      () => checkCu(1, "cuLaunchKernel"),
      (e: unknown) =>
        e instanceof TensorqError &&
        e.message.includes(
          "cuLaunchKernel: failed with CUDA_ERROR_INVALID_VALUE (invalid argument)",
        ),
    );
  },
});

Deno.test({
  name: "GPU: streams, async copies, mem pool, events and graph replay",
  ignore: ignoreGpu,
  async fn() {
    useDevice0();
    const rt = cudart();
    const n = 4099;
    const stream = createStream(cudaStreamNonBlocking);
    const pool = defaultMemPool(0);
    memPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, 64 * 2 ** 20);
    assert.equal(memPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold), 64 * 2 ** 20);
    const dx = deviceAllocAsync(n * 4, stream);
    const dy = deviceAllocAsync(n * 4, stream);
    assert.ok(memPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent) >= 2 * n * 4);

    // Integers and a = 0.5: every result is exact, so two replays give y + x exactly.
    const random = rng(7);
    const x = Float32Array.from({ length: n }, () => Math.floor(random() * 200) - 100 || 1);
    const y = Float32Array.from({ length: n }, () => Math.floor(random() * 200) - 100 || 3);
    copyToDeviceAsync(dx, x, stream);
    copyToDeviceAsync(dy, y, stream);

    const fn = cuGetFunction(cuModuleLoadPtx(smokePtx()), "smoke_axpy_f32");
    const params = new KernelParams().f32(0.5).ptr(dx).ptr(dy).i64(n);
    assert.equal(streamCaptureStatus(stream), cudaStreamCaptureStatusNone);
    checkCuda(
      rt.cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
      "cudaStreamBeginCapture",
    );
    assert.equal(streamCaptureStatus(stream), cudaStreamCaptureStatusActive);
    cuLaunch(fn, [Math.ceil(n / 128), 1, 1], [128, 1, 1], 0, stream, params);
    const graph = endCapture(stream);
    const exec = instantiateGraph(graph, 0);
    params.reset().f32(1000).ptr(null).ptr(null).i64(0); // the graph holds its own copy

    const start = createEvent();
    const end = createEvent();
    checkCuda(rt.cudaEventRecord(start, stream), "cudaEventRecord");
    checkCuda(rt.cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    checkCuda(rt.cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    checkCuda(rt.cudaEventRecord(end, stream), "cudaEventRecord");
    const out = new Float32Array(n);
    copyToHostAsync(out, dy, stream);
    checkCuda(await rt.cudaEventSynchronizeAsync(end), "cudaEventSynchronize");
    checkCuda(await rt.cudaStreamSynchronizeAsync(stream), "cudaStreamSynchronize");
    assert.equal(rt.cudaEventQuery(end), 0);
    const ms = eventElapsedMs(start, end);
    assert.ok(ms >= 0 && ms < 10_000, `elapsed ${ms} ms`);
    for (let i = 0; i < n; i++) assert.equal(out[i], y[i] + x[i], `element ${i}`);

    checkCuda(rt.cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
    checkCuda(rt.cudaGraphDestroy(graph), "cudaGraphDestroy");
    checkCuda(rt.cudaEventDestroy(start), "cudaEventDestroy");
    checkCuda(rt.cudaEventDestroy(end), "cudaEventDestroy");
    checkCuda(rt.cudaFreeAsync(dx, stream), "cudaFreeAsync");
    checkCuda(rt.cudaFreeAsync(dy, stream), "cudaFreeAsync");
    checkCuda(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    checkCuda(rt.cudaMemPoolTrimTo(pool, 0n), "cudaMemPoolTrimTo");
    checkCuda(rt.cudaStreamDestroy(stream), "cudaStreamDestroy");
  },
});

Deno.test({
  name: "GPU: cuBLASLt handle, version, and a TN fp32 matmul with bias epilogue",
  ignore: ignoreGpu,
  fn() {
    useDevice0();
    assert.ok(ltVersion() > 0);
    const lt = cublasLt();
    const handle = ltCreate();
    // Row-major Y[M, N] = X[M, K] · W[N, K]ᵀ + bias[N] in column-major terms ("TN" form):
    // A = W (K × N, ld K, op T), B = X (K × M, ld K, op N), D = Yᵀ (N × M, ld N); the bias
    // has one value per row of D.
    const [M, N, K] = [3, 5, 8];
    const random = rng(99);
    const int = () => Math.floor(random() * 9) - 4 || 2;
    const X = Float32Array.from({ length: M * K }, int);
    const W = Float32Array.from({ length: N * K }, int);
    const bias = Float32Array.from({ length: N }, int);
    const dX = deviceAlloc(X.byteLength);
    const dW = deviceAlloc(W.byteLength);
    const dBias = deviceAlloc(bias.byteLength);
    const dY = deviceAlloc(M * N * 4);
    copyToDevice(dX, X);
    copyToDevice(dW, W);
    copyToDevice(dBias, bias);

    const desc = ltMatmulDescCreate(CUBLAS_COMPUTE_32F, CUDA_R_32F);
    ltSetMatmulDescAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
    ltSetMatmulDescAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
    ltSetMatmulDescAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    ltSetMatmulDescAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, dBias);
    const aLayout = ltMatrixLayoutCreate(CUDA_R_32F, K, N, K);
    const bLayout = ltMatrixLayoutCreate(CUDA_R_32F, K, M, K);
    const dLayout = ltMatrixLayoutCreate(CUDA_R_32F, N, M, N);
    const workspaceBytes = 4 * 2 ** 20;
    const workspace = deviceAlloc(workspaceBytes);
    const preference = ltMatmulPreferenceCreate();
    ltSetMatmulPreferenceAttribute(
      preference,
      CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
      workspaceBytes,
    );
    const results = allocHeuristicResults(4);
    const found = ltAlgoGetHeuristic(
      handle,
      desc,
      aLayout,
      bLayout,
      dLayout,
      dLayout,
      preference,
      results,
    );
    assert.ok(found >= 1 && found <= 4, `found ${found}`);
    assert.equal(heuristicState(results, 0), 0);
    assert.ok(heuristicWorkspaceSize(results, 0) <= workspaceBytes);
    assert.ok(Number.isFinite(heuristicWavesCount(results, 0)));

    const alpha = new Float32Array(new ArrayBuffer(4)).fill(1);
    const beta = new Float32Array(new ArrayBuffer(4));
    checkCublas(
      lt.cublasLtMatmul(
        handle,
        desc,
        Deno.UnsafePointer.of(alpha),
        dW,
        aLayout,
        dX,
        bLayout,
        Deno.UnsafePointer.of(beta),
        dY,
        dLayout,
        dY,
        dLayout,
        heuristicAlgo(results, 0),
        workspace,
        BigInt(workspaceBytes),
        null,
      ),
      "cublasLtMatmul",
    );
    checkCuda(cudart().cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    const Y = new Float32Array(M * N);
    copyToHost(Y, dY);
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let sum = bias[n];
        for (let k = 0; k < K; k++) sum += X[m * K + k] * W[n * K + k];
        assert.equal(Y[m * N + n], sum, `Y[${m}, ${n}]`);
      }
    }

    checkCublas(lt.cublasLtMatmulPreferenceDestroy(preference), "cublasLtMatmulPreferenceDestroy");
    for (const layout of [aLayout, bLayout, dLayout]) {
      checkCublas(lt.cublasLtMatrixLayoutDestroy(layout), "cublasLtMatrixLayoutDestroy");
    }
    checkCublas(lt.cublasLtMatmulDescDestroy(desc), "cublasLtMatmulDescDestroy");
    checkCublas(lt.cublasLtDestroy(handle), "cublasLtDestroy");
    for (const p of [dX, dW, dBias, dY, workspace]) checkCuda(cudart().cudaFree(p), "cudaFree");
  },
});

Deno.test({
  name: "GPU: an impossible cudaMalloc raises cudaErrorMemoryAllocation and the device recovers",
  ignore: ignoreGpu,
  fn() {
    useDevice0();
    assert.throws(
      () => deviceAlloc(2n ** 50n),
      (e: unknown) =>
        e instanceof TensorqError && e.op === "cudaMalloc" && e.kind === "cuda" &&
        e.message.includes("cudaErrorMemoryAllocation") &&
        cudaFailureOf(e)?.status === cudaErrorMemoryAllocation,
    );
    assert.equal(cudart().cudaGetLastError(), 0, "the error does not linger");
    const p = deviceAlloc(1024);
    checkCuda(cudart().cudaMemsetAsync(p, 7, 1024n, null), "cudaMemsetAsync");
    const back = new Uint8Array(1024);
    copyToHost(back, p);
    assert.ok(back.every((b) => b === 7));
    checkCuda(cudart().cudaFree(p), "cudaFree");
  },
});
