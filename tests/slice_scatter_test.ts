import assert from "node:assert/strict";
import * as tq from "../mod.ts";
import { allocStorage, type DType, DTYPES, encode, type StorageArray } from "../lib/dtype.ts";
import { RandomStream } from "../lib/random.ts";
import { numel } from "../lib/shape.ts";
import { fromStorage, type Tensor } from "../lib/tensor.ts";
import { assertTqError, randomValues, testOnDevices, thisLine } from "./helpers.ts";

/** Seeded random non-zero storage of any dtype (bool: random 0/1, the only non-trivial choice). */
function randomStorage(dtype: DType, n: number, seed: number): StorageArray {
  if (
    dtype === "float32" || dtype === "float16" || dtype === "bfloat16" || dtype === "float8e4m3"
  ) {
    const v = randomValues(n, seed).map((x) => (x === 0 ? 1 : x));
    return encode(dtype, v);
  }
  const s = new RandomStream(seed);
  const out = allocStorage(dtype, n);
  for (let i = 0; i < n; i++) {
    const r = s.nextUint32();
    if (out instanceof BigInt64Array) {
      const v = (BigInt(r) << 32n | BigInt(s.nextUint32())) - (1n << 63n);
      out[i] = v === 0n ? 1n : v;
    } else if (dtype === "bool") out[i] = r & 1;
    else if (dtype === "int4") out[i] = (r % 15) - 7 || 7; // [-7, 7] without 0
    else if (dtype === "int8") out[i] = (r % 255) - 127 || 127;
    else out[i] = r | 0 || 1;
  }
  return out;
}

/** Raw storage words as strings (bigint-safe, NaN-payload-safe) for exact comparison. */
function bits(dtype: DType, storage: StorageArray): string[] {
  if (dtype === "float32") {
    return Array.from(new Uint32Array(storage.buffer, storage.byteOffset, storage.length), String);
  }
  return Array.from(storage as ArrayLike<number | bigint>, String);
}

/** The plain-JS reference: element by element, x's value unless its axis index is in the window. */
function reference(
  dtype: DType,
  x: StorageArray,
  src: StorageArray,
  shape: number[],
  srcShape: number[],
  axis: number,
  start: number,
): string[] {
  const xb = bits(dtype, x);
  const sb = bits(dtype, src);
  const inner = numel(shape.slice(axis + 1));
  const n = shape[axis];
  const m = srcShape[axis];
  return xb.map((v, i) => {
    const j = Math.floor(i / inner) % n;
    const row = Math.floor(i / (inner * n));
    const r = j - start;
    return r >= 0 && r < m ? sb[(row * m + r) * inner + (i % inner)] : v;
  });
}

interface Case {
  dtype: DType;
  shape: number[];
  srcShape: number[];
  axis: number;
  /** A JS start, or [dtype, shape, value] of a start tensor. */
  start: number | ["int32" | "int64", number[], number];
  /** The start the result must show (the clamped one for tensors). */
  at: number;
}

/** Runs one case and checks the result bit-exactly, and that x and src are unchanged. */
function check(device: string, c: Case, seed: number): void {
  const label = `${c.dtype} ${JSON.stringify(c.shape)} <- ${
    JSON.stringify(c.srcShape)
  } axis ${c.axis} start ${JSON.stringify(c.start)}`;
  const xs = randomStorage(c.dtype, numel(c.shape), seed);
  const ss = randomStorage(c.dtype, numel(c.srcShape), seed + 1000);
  const x = fromStorage(xs.slice(), c.shape, c.dtype, device);
  const src = fromStorage(ss.slice(), c.srcShape, c.dtype, device);
  const start = typeof c.start === "number"
    ? c.start
    : tq.tensor(c.start[2], { dtype: c.start[0], device }).reshape(c.start[1]);
  const y = tq.sliceScatter(x, src, start, c.axis);
  assert.deepEqual(y.shape, c.shape, `${label}: shape`);
  assert.equal(y.dtype, c.dtype, `${label}: dtype`);
  assert.equal(y.device, x.device, `${label}: device`);
  const axis = c.axis < 0 ? c.axis + c.shape.length : c.axis;
  const expected = reference(c.dtype, xs, ss, c.shape, c.srcShape, axis, c.at);
  assert.deepEqual(bits(c.dtype, y.storageSync()), expected, label);
  assert.deepEqual(bits(c.dtype, x.storageSync()), bits(c.dtype, xs), `${label}: x changed`);
  assert.deepEqual(bits(c.dtype, src.storageSync()), bits(c.dtype, ss), `${label}: src changed`);
}

// ---------------------------------------------------------------------------------------
// Values

testOnDevices("sliceScatter: every dtype, axes 0, 1, last and negative, JS start", (device) => {
  const shapes: [number[], number, number][] = [
    // [src shape, axis, start] into x [3, 5, 7]
    [[1, 5, 7], 0, 2],
    [[2, 5, 7], 0, 0],
    [[3, 2, 7], 1, 3],
    [[3, 4, 7], 1, 0],
    [[3, 5, 4], 2, 1],
    [[3, 5, 1], -1, 6],
    [[3, 3, 7], -2, 1],
    [[2, 5, 7], -3, 1],
  ];
  let seed = 1;
  for (const dtype of DTYPES) {
    for (const [srcShape, axis, start] of shapes) {
      check(device, { dtype, shape: [3, 5, 7], srcShape, axis, start, at: start }, seed++);
    }
    // Even rows (int4: whole bytes), and a rank-1 tensor.
    check(
      device,
      { dtype, shape: [4, 6, 8], srcShape: [4, 2, 8], axis: 1, start: 3, at: 3 },
      seed++,
    );
    check(device, { dtype, shape: [9], srcShape: [4], axis: 0, start: 5, at: 5 }, seed++);
  }
});

testOnDevices("sliceScatter: int32 and int64 start tensors of shape [1] and []", (device) => {
  let seed = 100;
  for (const dtype of ["float32", "float16", "int64", "int4", "bool"] as const) {
    for (const startType of ["int32", "int64"] as const) {
      for (const startShape of [[1], []]) {
        for (
          const [axis, srcShape, value] of [
            [0, [2, 5, 7], 1],
            [1, [3, 2, 7], 2],
            [-1, [3, 5, 3], 4],
          ] as [number, number[], number][]
        ) {
          check(device, {
            dtype,
            shape: [3, 5, 7],
            srcShape,
            axis,
            start: [startType, startShape, value],
            at: value,
          }, seed++);
        }
      }
    }
  }
});

testOnDevices("sliceScatter: tensor starts out of range are clamped", (device) => {
  let seed = 200;
  // x [3, 5, 7], src [3, 2, 7] along axis 1: valid starts are 0..3.
  const cases: ["int32" | "int64", number, number][] = [
    ["int32", -1, 0],
    ["int32", -2147483648, 0],
    ["int32", 4, 3],
    ["int32", 2147483647, 3],
    ["int64", -5, 0],
    ["int64", -(2 ** 40), 0],
    ["int64", 100, 3],
    ["int64", 2 ** 40, 3],
    ["int64", 3, 3],
    ["int64", 0, 0],
  ];
  for (const dtype of ["float32", "float16", "int8", "int4"] as const) {
    for (const [type, value, at] of cases) {
      check(device, {
        dtype,
        shape: [3, 5, 7],
        srcShape: [3, 2, 7],
        axis: 1,
        start: [type, [1], value],
        at,
      }, seed++);
    }
  }
});

testOnDevices("sliceScatter: src covering the whole axis, and an empty src", (device) => {
  let seed = 300;
  for (const dtype of ["float32", "bfloat16", "int32"] as const) {
    check(
      device,
      { dtype, shape: [3, 5, 7], srcShape: [3, 5, 7], axis: 1, start: 0, at: 0 },
      seed++,
    );
    check(device, {
      dtype,
      shape: [3, 5, 7],
      srcShape: [3, 5, 7],
      axis: 1,
      start: ["int32", [1], 3],
      at: 0,
    }, seed++);
    check(
      device,
      { dtype, shape: [3, 5, 7], srcShape: [3, 0, 7], axis: 1, start: 5, at: 5 },
      seed++,
    );
    check(device, { dtype, shape: [0, 5], srcShape: [0, 2], axis: 1, start: 1, at: 1 }, seed++);
  }
});

testOnDevices("sliceScatter: 16-byte rows and non-vectorizable rows", (device) => {
  // 64 float16 = 128 bytes per row: 16-byte units.
  check(device, {
    dtype: "float16",
    shape: [2, 3, 64, 64],
    srcShape: [2, 3, 5, 64],
    axis: 2,
    start: ["int32", [1], 37],
    at: 37,
  }, 400);
  check(device, {
    dtype: "float16",
    shape: [2, 3, 64, 64],
    srcShape: [2, 3, 64, 64],
    axis: 2,
    start: 0,
    at: 0,
  }, 401);
  check(device, {
    dtype: "int4",
    shape: [2, 3, 64, 64],
    srcShape: [2, 3, 3, 64],
    axis: 2,
    start: ["int64", [], 61],
    at: 61,
  }, 402);
  // 7 float32 = 28 bytes per row: 4-byte units.
  check(device, {
    dtype: "float32",
    shape: [3, 5, 7],
    srcShape: [3, 3, 7],
    axis: 1,
    start: ["int32", [1], 1],
    at: 1,
  }, 403);
  // 3 bytes per row: byte units.
  check(
    device,
    { dtype: "int8", shape: [4, 9, 3], srcShape: [4, 2, 3], axis: 1, start: 7, at: 7 },
    404,
  );
});

testOnDevices(
  "sliceScatter: KV-cache shape [1, 12, 1024, 64] float16 at a tensor start",
  (device) => {
    let seed = 500;
    for (const [type, value] of [["int32", 517], ["int64", 0], ["int32", 1023]] as const) {
      check(device, {
        dtype: "float16",
        shape: [1, 12, 1024, 64],
        srcShape: [1, 12, 1, 64],
        axis: 2,
        start: [type, [1], value],
        at: value,
      }, seed++);
    }
  },
);

testOnDevices("sliceScatter: node op, attrs and inputs", (device) => {
  const x = tq.zeros([2, 6, 4], { device });
  const src = tq.ones([2, 1, 4], { device });
  const pos = tq.tensor([3], { dtype: "int32", device });
  const y = tq.sliceScatter(x, src, pos, -2);
  assert.equal(y.node.op, "sliceScatter");
  assert.deepEqual(y.node.attrs, { axis: 1, start: null, hasStartTensor: true });
  assert.deepEqual(y.node.inputs, [x.node, src.node, pos.node]);
  const z = tq.sliceScatter(x, src, 2, 1);
  assert.deepEqual(z.node.attrs, { axis: 1, start: 2, hasStartTensor: false });
  assert.deepEqual(z.node.inputs, [x.node, src.node]);
  assert.deepEqual(z.toArray(), [
    [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
  ]);
  // src covering the whole axis is src itself (no copy).
  assert.equal(tq.sliceScatter(x, tq.ones([2, 6, 4], { device }), pos, 1).node.op, "reshape");
});

// ---------------------------------------------------------------------------------------
// compile: the start is read at run time (on CUDA, from the recorded graph's input buffer)

testOnDevices("sliceScatter: compiled with a start tensor, called with new positions", (device) => {
  const shape = [1, 2, 16, 8];
  const rowShape = [1, 2, 1, 8];
  const exe = tq.compile((cache, row, pos) => tq.sliceScatter(cache, row, pos, 2), {
    args: [
      tq.inputInfo(shape, "float16"),
      tq.inputInfo(rowShape, "float16"),
      tq.inputInfo([1], "int32"),
    ],
    device,
  });
  const cacheStorage = randomStorage("float16", numel(shape), 600);
  const cache = fromStorage(cacheStorage.slice(), shape, "float16", device);
  const results: [Tensor, string[]][] = [];
  let seed = 601;
  for (const [pos, at] of [[3, 3], [11, 11], [-4, 0], [40, 15]]) {
    const rowStorage = randomStorage("float16", numel(rowShape), seed++);
    const row = fromStorage(rowStorage.slice(), rowShape, "float16", device);
    const y = exe(cache, row, tq.tensor([pos], { dtype: "int32", device })) as Tensor;
    const expected = reference("float16", cacheStorage, rowStorage, shape, rowShape, 2, at);
    assert.deepEqual(bits("float16", y.storageSync()), expected, `pos ${pos}`);
    results.push([y, expected]);
  }
  // Earlier outputs are not overwritten by later calls, and the cache is unchanged.
  for (const [y, expected] of results) assert.deepEqual(bits("float16", y.storageSync()), expected);
  assert.deepEqual(bits("float16", cache.storageSync()), bits("float16", cacheStorage));
  assert.equal(exe.tracedShapes, 1);
  exe.dispose();
});

// ---------------------------------------------------------------------------------------
// Errors

Deno.test("sliceScatter errors name the argument, expected vs actual, and the line", () => {
  const x = tq.zeros([3, 5, 7]);
  const row = tq.zeros([3, 2, 7]);
  const op = "sliceScatter";
  let line = thisLine() + 1;
  let f = (): unknown => tq.sliceScatter(x, tq.zeros([5, 7]), 0, 1);
  assertTqError(f, { op, kind: "shape", includes: ["'src'", "rank 3", "[5, 7]"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, tq.zeros([3, 2, 6]), 0, 1);
  assertTqError(f, {
    op,
    kind: "shape",
    includes: ["'src'", "extent 7 at dimension 2", "[3, 2, 6]"],
    line,
  });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, tq.zeros([3, 6, 7]), 0, 1);
  assertTqError(f, { op, kind: "shape", includes: ["'src'", "extent <= 5", "[3, 6, 7]"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, tq.zeros([3, 2, 7], { dtype: "float16" }), 0, 1);
  assertTqError(f, { op, kind: "dtype", includes: ["'src'", "float32", "got float16"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, row, tq.tensor([1]), 1);
  assertTqError(f, { op, kind: "dtype", includes: ["'start'", "int32, int64", "float32"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, row, tq.tensor([1, 2], { dtype: "int32" }), 1);
  assertTqError(f, { op, kind: "shape", includes: ["'start'", "[1] or []", "[2]"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, row, tq.tensor([[1]], { dtype: "int64" }), 1);
  assertTqError(f, { op, kind: "shape", includes: ["'start'", "[1] or []", "[1, 1]"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, row, 1.5, 1);
  assertTqError(f, { op, kind: "argument", includes: ["'start'", "an integer", "got 1.5"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, row, "1" as unknown as number, 1);
  assertTqError(f, { op, kind: "argument", includes: ["'start'", 'got "1"'], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, row, 4, 1);
  assertTqError(f, { op, kind: "argument", includes: ["'start'", "[0, 3]", "got 4"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, row, -1, 1);
  assertTqError(f, { op, kind: "argument", includes: ["'start'", "[0, 3]", "got -1"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, row, 0, 3);
  assertTqError(f, { op, kind: "axis", includes: ["'axis'", "[-3, 2]", "got 3"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(tq.tensor(1), tq.tensor(2), 0);
  assertTqError(f, { op, kind: "axis", includes: ["rank 0"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter([1, 2] as unknown as Tensor, row, 0);
  assertTqError(f, { op, kind: "argument", includes: ["'x'", "an array"], line });
  line = thisLine() + 1;
  f = () => tq.sliceScatter(x, null as unknown as Tensor, 0);
  assertTqError(f, { op, kind: "argument", includes: ["'src'", "got null"], line });
});
