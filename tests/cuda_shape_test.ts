// GPU shape kernels against the CPU backend: the same seeded random storage bits go through
// each op on both devices and must come back bit-identical, for every dtype. Shapes are chosen
// to reach every kernel path: contiguous copies at unaligned offsets, widened (16-byte) unit
// copies, the tiled transpose, the rank > 8 strided copy, int4 nibble paths (odd extents, odd
// offsets), per-part concat copies and the int4 read-modify-write concat, vectorized and
// nibble gathers, and the out-of-range index flag.
import assert from "node:assert/strict";
import { raiseDeferredErrors } from "../lib/backends/cuda/deferred_checks.ts";
import { allocStorage, type DType, DTYPES, type StorageArray } from "../lib/dtype.ts";
import { TensorqError } from "../lib/errors.ts";
import {
  causalMask,
  concat,
  embedding,
  expand,
  gather,
  permute,
  slice,
  type SliceRange,
  tril,
  triu,
} from "../lib/ops/shape.ts";
import { RandomStream } from "../lib/random.ts";
import { numel } from "../lib/shape.ts";
import { fromStorage, type Tensor } from "../lib/tensor.ts";
import { testOnGpu } from "./helpers.ts";

/** Random storage bits for any dtype (NaN payloads, negative zeros and all). */
function randomStorage(dtype: DType, n: number, seed: number): StorageArray {
  const s = new RandomStream(seed);
  const out = allocStorage(dtype, n);
  if (dtype === "float32") {
    const words = new Uint32Array(out.buffer, out.byteOffset, n);
    for (let i = 0; i < n; i++) words[i] = s.nextUint32();
    return out;
  }
  for (let i = 0; i < n; i++) {
    const r = s.nextUint32();
    if (out instanceof BigInt64Array) {
      out[i] = BigInt.asIntN(64, (BigInt(r) << 32n) | BigInt(s.nextUint32()));
    } else if (dtype === "int4") out[i] = (r & 15) - 8;
    else if (dtype === "bool") out[i] = r & 1;
    else if (out instanceof Int32Array) out[i] = r | 0;
    else if (out instanceof Int8Array) out[i] = (r & 0xff) - 128;
    else out[i] = r & (out.BYTES_PER_ELEMENT === 1 ? 0xff : 0xffff);
  }
  return out;
}

/** Random indices in [-extent, extent) (negative ones included), as int32 or int64. */
function randomIndices(
  dtype: "int32" | "int64",
  n: number,
  extent: number,
  seed: number,
  least = -extent,
): StorageArray {
  const s = new RandomStream(seed);
  const values = Array.from({ length: n }, () => (s.nextUint32() % (extent - least)) + least);
  return dtype === "int64"
    ? BigInt64Array.from(values.map((v) => BigInt(v)))
    : Int32Array.from(values);
}

/** Asserts two storages hold the same bits (float32 compared as words, so NaNs too). */
function assertSameBits(dtype: DType, actual: StorageArray, expected: StorageArray, what: string) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  const a = dtype === "float32"
    ? new Uint32Array(actual.buffer, actual.byteOffset, actual.length)
    : actual;
  const e = dtype === "float32"
    ? new Uint32Array(expected.buffer, expected.byteOffset, expected.length)
    : expected;
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== e[i]) {
      assert.fail(`${what}: element ${i} of ${a.length} is ${a[i]}, expected ${e[i]}`);
    }
  }
}

/** A leaf on `device` holding `storage`. */
function leaf(storage: StorageArray, shape: number[], dtype: DType, device: string): Tensor {
  return fromStorage(storage, shape, dtype, device);
}

/**
 * Builds the same graph on "cpu" and "cuda" and compares shape, dtype and bits. `build`
 * receives the device; inputs are made with {@link leaf} from storage created outside it.
 */
function compare(what: string, dtype: DType, build: (device: string) => Tensor): void {
  const cpu = build("cpu");
  const gpu = build("cuda");
  assert.deepEqual(gpu.shape, cpu.shape, `${what}: shape`);
  assert.equal(gpu.dtype, cpu.dtype, `${what}: dtype`);
  assert.ok(gpu.device.startsWith("cuda"), `${what}: device`);
  assertSameBits(dtype, gpu.storageSync(), cpu.storageSync(), what);
}

let seed = 1;
/** Compares `op` applied to one random input of `shape`. */
function compareUnary(
  what: string,
  dtype: DType,
  shape: number[],
  op: (x: Tensor) => Tensor,
): void {
  const storage = randomStorage(dtype, numel(shape), seed++);
  compare(
    `${what} ${dtype} [${shape.join(", ")}]`,
    dtype,
    (d) => op(leaf(storage, shape, dtype, d)),
  );
}

for (const dtype of DTYPES) {
  testOnGpu(`cuda permute/transpose matches cpu bit-exactly: ${dtype}`, () => {
    const cases: [number[], number[]][] = [
      [[3, 5, 7], [2, 0, 1]],
      [[3, 5, 7], [1, 0, 2]],
      [[3, 5, 7], [0, 2, 1]],
      [[2, 3, 4, 5], [0, 2, 1, 3]], // contiguous inner rows: widened units
      [[4, 6, 8, 16], [2, 0, 1, 3]], // 16-element rows: 16-byte units for most dtypes
      [[17, 40], [1, 0]], // tiled transpose, partial tiles
      [[3, 33, 65], [0, 2, 1]], // batched tiled transpose
      [[65, 3, 33], [2, 1, 0]],
      [[1, 9, 1, 11], [3, 1, 2, 0]], // extent-1 dims dropped
      [[5, 2, 9], [1, 2, 0]],
      [[2, 3, 2, 3, 2, 3], [5, 3, 1, 0, 2, 4]], // rank 6
      [[2, 1, 3, 1, 2, 3, 2, 1, 3, 2, 3], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]], // rank 8 left
      [[2, 3, 2, 3, 2, 3, 2, 3, 3], [8, 7, 6, 5, 4, 3, 2, 1, 0]], // rank 9: geometry in memory
    ];
    for (const [shape, axes] of cases) {
      compareUnary(`permute ${JSON.stringify(axes)}`, dtype, shape, (x) => permute(x, axes));
    }
  });

  testOnGpu(`cuda expand matches cpu bit-exactly: ${dtype}`, () => {
    const cases: [number[], number[]][] = [
      [[3, 1, 5], [2, 3, 4, 5]],
      [[1], [7, 9]],
      [[5, 1], [5, 33]],
      [[1, 16], [9, 16]], // broadcast rows: widened units
      [[], [3, 3]],
      [[7, 1, 3], [7, 5, 3]],
      [[2, 1, 1, 3], [2, 4, 5, 3]],
      [[1, 1, 7], [3, 2, 7]],
    ];
    for (const [shape, target] of cases) {
      compareUnary(`expand to ${JSON.stringify(target)}`, dtype, shape, (x) => expand(x, target));
    }
  });

  testOnGpu(`cuda slice matches cpu bit-exactly: ${dtype}`, () => {
    const cases: [number[], SliceRange[]][] = [
      [[7, 9, 11], [[1, 6, 2], [null, null, -1], [3, 10]]],
      [[7, 9, 11], [null, [1, 8], [1, 10, 3]]], // odd offsets
      [[7, 9, 11], [[null, null, -2], 4, [null, null, -1]]], // negative steps, dropped dim
      [[101], [[3, 100]]], // contiguous at an odd offset
      [[101], [[1, 100, 2]]],
      [[101], [[99, 2, -1]]],
      [[6, 64], [[1, 5], [8, 40]]], // whole-row runs: widened units
      [[6, 64], [[1, 5], [7, 40]]],
      [[4, 5, 6], [[1, 3]]], // contiguous block of whole rows
      [[4, 5, 6], [[3, 0, -1], [1, 4], [2, 6]]],
      [[3, 4], [[2, 3], [1, 2]]], // a single element
      [[5, 256], [[1, 4]]], // whole rows at a 256-byte multiple: a view, no copy
      [[3, 2, 256], [[1, 2], [1, 2]]], // one row at a 256-byte multiple
    ];
    for (const [shape, ranges] of cases) {
      compareUnary(`slice ${JSON.stringify(ranges)}`, dtype, shape, (x) => slice(x, ranges));
    }
  });

  testOnGpu(`cuda concat of 3 parts on each axis matches cpu bit-exactly: ${dtype}`, () => {
    const cases: [number[][], number][] = [
      [[[2, 5, 3], [1, 5, 3], [3, 5, 3]], 0],
      [[[4, 2, 3], [4, 1, 3], [4, 4, 3]], 1],
      [[[4, 5, 1], [4, 5, 2], [4, 5, 3]], 2],
      [[[3, 8], [3, 16], [3, 24]], 1], // even widths: widened 2-D copies
      [[[3, 7], [3, 0], [3, 9]], 1], // an empty part in the middle
      [[[3, 0], [3, 5], [3, 0]], 1], // one non-empty part
      [[[1, 5], [1, 3], [1, 1]], 1], // one row: contiguous runs at odd offsets
      [[[5], [4], [7]], 0],
    ];
    for (const [shapes, axis] of cases) {
      const storages = shapes.map((s) => randomStorage(dtype, numel(s), seed++));
      compare(
        `concat ${dtype} ${JSON.stringify(shapes)} axis ${axis}`,
        dtype,
        (d) => concat(shapes.map((s, i) => leaf(storages[i], s, dtype, d)), axis),
      );
    }
  });

  testOnGpu(`cuda gather and embedding match cpu bit-exactly: ${dtype}`, () => {
    const shape = [5, 7, 3];
    const x = randomStorage(dtype, numel(shape), seed++);
    for (const indexType of ["int32", "int64"] as const) {
      for (let axis = 0; axis < 3; axis++) {
        for (const idxShape of [[2, 3], [4], []]) {
          const idx = randomIndices(indexType, numel(idxShape), shape[axis], seed++);
          compare(
            `gather ${dtype} axis ${axis} ${indexType} [${idxShape.join(", ")}]`,
            dtype,
            (d) => gather(leaf(x, shape, dtype, d), leaf(idx, idxShape, indexType, d), axis),
          );
        }
      }
      for (const dim of [9, 16, 1, 6]) {
        const weight = randomStorage(dtype, 11 * dim, seed++);
        const ids = randomIndices(indexType, 24, 11, seed++, 0); // embedding ids do not wrap
        compare(
          `embedding ${dtype} [11, ${dim}] ${indexType}`,
          dtype,
          (d) => embedding(leaf(ids, [4, 6], indexType, d), leaf(weight, [11, dim], dtype, d)),
        );
      }
    }
  });

  testOnGpu(`cuda triu/tril match cpu bit-exactly: ${dtype}`, () => {
    for (const shape of [[2, 5, 7], [9, 4], [3, 1, 3], [1, 6]]) {
      for (const k of [-2, 0, 1, 3, 100, -100]) {
        compareUnary(`triu k=${k}`, dtype, shape, (x) => triu(x, k));
        compareUnary(`tril k=${k}`, dtype, shape, (x) => tril(x, k));
      }
    }
  });
}

testOnGpu(
  "cuda contiguous slices and unit-dim permutes are views that kernels read in place",
  () => {
    // [1, 1, 3·256] split like a decode step's q/k/v (views at byte offsets 512 and 1024 for
    // float16), and a permute that only moves an extent-1 dim; each part goes on into a kernel,
    // and the source stays an output too, so a wrong offset or a write through a view shows.
    for (const dtype of ["float16", "float32", "int8"] as const) {
      const storage = randomStorage(dtype, 3 * 256, seed++);
      const build = (device: string) => {
        const x = leaf(storage, [1, 1, 3 * 256], dtype, device);
        const parts = [0, 1, 2].map((p) => slice(x, [null, null, [p * 256, (p + 1) * 256]]));
        const heads = parts.map((t) => permute(t.reshape([1, 1, 4, 64]), [0, 2, 1, 3]));
        return concat([heads[2], heads[0], heads[1], x.reshape([1, 12, 1, 64])], 1);
      };
      compare(`split views ${dtype}`, dtype, build);
    }
  },
);

testOnGpu("cuda causalMask matches cpu", () => {
  const cases: [number, number, number | undefined][] = [
    [5, 9, undefined],
    [7, 7, undefined],
    [6, 6, -2],
    [1, 11, undefined],
    [4, 3, 10],
    [33, 65, 0],
  ];
  for (const [q, k, offset] of cases) {
    compare(
      `causalMask(${q}, ${k}, ${offset})`,
      "bool",
      (device) => causalMask(q, k, { device, offset }),
    );
  }
});

testOnGpu("cuda large embedding lookup: [8, 512] ids into [50257, 768] float32", () => {
  const weight = randomStorage("float32", 50257 * 768, 7);
  const ids = randomIndices("int32", 8 * 512, 50257, 8, 0);
  compare(
    "embedding int32",
    "float32",
    (d) => embedding(leaf(ids, [8, 512], "int32", d), leaf(weight, [50257, 768], "float32", d)),
  );
  const ids64 = randomIndices("int64", 8 * 512, 50257, 9, 0);
  compare(
    "embedding int64",
    "float32",
    (d) => embedding(leaf(ids64, [8, 512], "int64", d), leaf(weight, [50257, 768], "float32", d)),
  );
});

testOnGpu("cuda large copies: vector paths, tails and tiles", () => {
  // Contiguous runs at offsets of every alignment, lengths not a multiple of 16 bytes.
  for (const dtype of ["float16", "float32", "int8", "int4", "int64"] as const) {
    const n = 1_000_003;
    const x = randomStorage(dtype, n, 11);
    for (const start of [0, 1, 2, 3, 8, 16]) {
      compare(
        `slice ${dtype} [${start}:]`,
        dtype,
        (d) => slice(leaf(x, [n], dtype, d), [[start, n - 1]]),
      );
    }
  }
  // Tiled transposes larger than the grid, and a strided permute with long rows.
  for (const dtype of ["float32", "bfloat16", "int8", "int64"] as const) {
    compareUnary("transpose", dtype, [3, 515, 1029], (x) => permute(x, [0, 2, 1]));
    compareUnary("permute", dtype, [8, 64, 12, 64], (x) => permute(x, [0, 2, 1, 3]));
    compareUnary("expand", dtype, [1, 64, 1, 64], (x) => expand(x, [4, 64, 12, 64]));
    compareUnary("triu", dtype, [4, 300, 301], (x) => triu(x, 1));
  }
  const parts = [[16, 700, 64], [16, 300, 64], [16, 1, 64]];
  const storages = parts.map((s, i) => randomStorage("float16", numel(s), 20 + i));
  compare(
    "concat kv-cache style",
    "float16",
    (d) => concat(parts.map((s, i) => leaf(storages[i], s, "float16", d)), 1),
  );
  compare("causalMask 1024", "bool", (device) => causalMask(1000, 1024, { device }));
});

/** Evaluates `t` and runs the flag check, returning the error raised (if any). */
function gatherError(t: Tensor): unknown {
  try {
    t.storageSync();
    raiseDeferredErrors();
  } catch (e) {
    return e;
  }
  return undefined;
}

testOnGpu("cuda gather: out-of-range indices give zeros and raise at the flag check", () => {
  const x = randomStorage("float32", 6, 30);
  const bad = gather(
    leaf(x, [2, 3], "float32", "cuda"),
    leaf(Int32Array.from([0, 3, 5, -4]), [4], "int32", "cuda"),
    1,
  );
  const error = gatherError(bad);
  assert.ok(error instanceof TensorqError, `expected a TensorqError, got ${error}`);
  assert.equal(error.op, "gather");
  assert.equal(error.kind, "argument");
  assert.ok(error.message.includes("[-3, 2]"), error.message);
  assert.ok(error.message.includes("got 3 at flat index 1"), error.message);
  // Reported once: the next check is clean, and a valid gather raises nothing.
  raiseDeferredErrors();
  const good = gather(
    leaf(x, [2, 3], "float32", "cuda"),
    leaf(Int32Array.from([0, 2, -3, 1]), [4], "int32", "cuda"),
    1,
  );
  assert.equal(gatherError(good), undefined);

  // Rows of bad indices come out as zeros (read before any check raises).
  const words = new Uint32Array(x.buffer);
  const out = gather(
    leaf(x, [2, 3], "float32", "cuda"),
    leaf(Int32Array.from([1, 7]), [2], "int32", "cuda"),
    1,
  );
  let storage: StorageArray | undefined;
  try {
    storage = out.storageSync();
  } catch {
    // The backend may already raise at the read; the values are then not observable.
  }
  if (storage) {
    const got = new Uint32Array(storage.buffer, storage.byteOffset, 4);
    assert.deepEqual(Array.from(got), [words[1], 0, words[4], 0]);
  }
  assert.ok(gatherError(out) instanceof TensorqError || storage === undefined);
  raiseDeferredErrors();

  const huge = gather(
    leaf(x, [2, 3], "float32", "cuda"),
    leaf(BigInt64Array.from([1n, 2n ** 40n]), [2], "int64", "cuda"),
  );
  const hugeError = gatherError(huge);
  assert.ok(hugeError instanceof TensorqError);
  assert.ok(hugeError.message.includes(`got ${2 ** 40} at flat index 1`), hugeError.message);

  const emb = embedding(
    leaf(Int32Array.from([1, -6, 2]), [3], "int32", "cuda"),
    leaf(randomStorage("int4", 15, 31), [5, 3], "int4", "cuda"),
  );
  const embError = gatherError(emb);
  assert.ok(embError instanceof TensorqError);
  assert.equal(embError.op, "embedding");
  assert.ok(embError.message.includes("'ids'"), embError.message);
  assert.ok(embError.message.includes("got -6 at flat index 1"), embError.message);

  // An empty output still checks its indices (as the CPU does).
  const empty = gather(
    leaf(new Float32Array(0), [0, 3], "float32", "cuda"),
    leaf(Int32Array.from([2, 5]), [2], "int32", "cuda"),
    1,
  );
  const emptyError = gatherError(empty);
  assert.ok(emptyError instanceof TensorqError);
  assert.ok(emptyError.message.includes("got 5 at flat index 1"), emptyError.message);
  raiseDeferredErrors();
});
