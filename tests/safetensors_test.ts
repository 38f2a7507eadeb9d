import assert from "node:assert/strict";
import { formatCallSite, messageWithoutCallSite, TensorqError } from "../lib/errors.ts";
import {
  itemSizeOf,
  parseSafetensorsBytes,
  SAFETENSORS_MAX_HEADER_BYTES,
  type SafetensorsDType,
  SafetensorsFile,
  writeSafetensors,
} from "../lib/io/safetensors.ts";
import { loadHfCheckpoint } from "../lib/io/hf.ts";
import { loadSafetensors, SafetensorsTensors, saveSafetensors } from "../lib/io/tensors.ts";
import { cast, equal } from "../lib/ops/elementwise.ts";
import { randn } from "../lib/random.ts";
import { tensor, zeros } from "../lib/tensor.ts";
import { filesExist, SHARED_DIR } from "./helpers.ts";

const ALL_DTYPES: [SafetensorsDType, number][] = [
  ["F64", 8],
  ["F32", 4],
  ["F16", 2],
  ["BF16", 2],
  ["F8_E4M3", 1],
  ["I64", 8],
  ["I32", 4],
  ["I16", 2],
  ["I8", 1],
  ["U8", 1],
  ["BOOL", 1],
];

/** Seeded generator (mulberry32) of bytes in 1..255, so a dropped or shifted byte shows. */
function nonZeroBytes(n: number, seed: number): Uint8Array {
  let s = seed >>> 0;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = 1 + (((t ^ (t >>> 14)) >>> 0) % 255);
  }
  return out;
}

function tempPath(): string {
  return Deno.makeTempFileSync({ prefix: "tensorq_st_", suffix: ".safetensors" });
}

/** Builds raw file bytes: 8-byte length (or `lengthOverride`), header text, `dataLength` bytes. */
function rawFile(header: unknown, dataLength: number, lengthOverride?: bigint): Uint8Array {
  const text = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  return rawFromHeaderBytes(text, dataLength, lengthOverride);
}

function rawFromHeaderBytes(
  headerBytes: Uint8Array,
  dataLength: number,
  lengthOverride?: bigint,
): Uint8Array {
  const out = new Uint8Array(8 + headerBytes.length + dataLength);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  out.set(nonZeroBytes(dataLength, 99), 8 + headerBytes.length);
  return out;
}

/** Asserts `fn` throws a TensorqError of the given op and kind whose message matches `pattern`. */
function assertTensorqError(
  fn: () => unknown,
  pattern: RegExp,
  op = "loadSafetensors",
  kind = "io",
): TensorqError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof TensorqError, `expected a TensorqError, got ${caught}`);
  assert.equal(caught.op, op);
  assert.equal(caught.kind, kind);
  assert.match(caught.message, pattern);
  return caught;
}

function readU64(bytes: Uint8Array): number {
  return Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
}

Deno.test("itemSizeOf gives the size of every dtype and rejects unknown ones", () => {
  for (const [dtype, size] of ALL_DTYPES) assert.equal(itemSizeOf(dtype), size, dtype);
  assertTensorqError(
    () => itemSizeOf("U32" as SafetensorsDType),
    /unknown safetensors dtype "U32"/,
    "itemSizeOf",
    "dtype",
  );
});

Deno.test("round trip of every dtype (sync and async open)", async () => {
  const shapes = [[3, 5], [7], [2, 1, 3], []];
  const tensors = ALL_DTYPES.map(([dtype, size], i) => {
    const shape = shapes[i % shapes.length];
    const count = shape.reduce((a, b) => a * b, 1);
    return { name: `t${i}_${dtype}`, dtype, shape, bytes: nonZeroBytes(count * size, 1000 + i) };
  });
  const path = tempPath();
  try {
    writeSafetensors(path, tensors);
    for (const file of [SafetensorsFile.open(path), await SafetensorsFile.openAsync(path)]) {
      using f = file;
      assert.equal(f.path, path);
      assert.deepEqual(f.keys(), tensors.map((t) => t.name));
      assert.deepEqual(f.metadata, {});
      let expectedOffset = 0;
      for (const t of tensors) {
        assert.ok(f.has(t.name));
        const e = f.entry(t.name);
        assert.deepEqual(e, {
          name: t.name,
          dtype: t.dtype,
          shape: t.shape,
          byteOffset: expectedOffset,
          byteLength: t.bytes.length,
        });
        expectedOffset += t.bytes.length;
        const back = f.readBytes(t.name);
        assert.deepEqual(back, t.bytes, t.name);
        assert.equal(back.byteOffset, 0);
      }
      assert.equal(f.fileSize, f.dataOffset + expectedOffset);
      assert.ok(!f.has("missing"));
    }
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("writer pads the header with spaces to a multiple of 8 and packs tensors", () => {
  const path = tempPath();
  try {
    const a = nonZeroBytes(12, 1);
    const b = nonZeroBytes(3, 2);
    writeSafetensors(path, {
      a: { dtype: "F32", shape: [3], bytes: a },
      b: { dtype: "U8", shape: [3], bytes: b },
    }, {
      format: "pt",
    });
    const raw = Deno.readFileSync(path);
    const n = readU64(raw);
    assert.equal(n % 8, 0);
    assert.equal(raw.length, 8 + n + 15);
    const text = new TextDecoder().decode(raw.subarray(8, 8 + n));
    const trimmed = text.trimEnd();
    assert.ok(trimmed.length > n - 8, "padding is fewer than 8 bytes");
    assert.equal(text.slice(trimmed.length), " ".repeat(n - trimmed.length));
    assert.deepEqual(JSON.parse(text), {
      __metadata__: { format: "pt" },
      a: { dtype: "F32", shape: [3], data_offsets: [0, 12] },
      b: { dtype: "U8", shape: [3], data_offsets: [12, 15] },
    });
    assert.deepEqual(raw.subarray(8 + n, 8 + n + 12), a);
    assert.deepEqual(raw.subarray(8 + n + 12), b);
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("metadata round trips, including unicode and empty values", () => {
  const path = tempPath();
  const metadata = { format: "pt", note: 'größe ✓ "quoted"', empty: "" };
  try {
    writeSafetensors(
      path,
      [{ name: "x", dtype: "I8", shape: [2], bytes: nonZeroBytes(2, 5) }],
      metadata,
    );
    using f = SafetensorsFile.open(path);
    assert.deepEqual(f.metadata, metadata);
    assert.deepEqual(f.keys(), ["x"]);
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("header order is kept, including integer-like names", () => {
  const path = tempPath();
  const names = ["b", "10", "a", "2"];
  try {
    writeSafetensors(
      path,
      names.map((name, i) => ({
        name,
        dtype: "U8" as const,
        shape: [i + 1],
        bytes: nonZeroBytes(i + 1, i),
      })),
    );
    using f = SafetensorsFile.open(path);
    assert.deepEqual(f.keys(), names);
    assert.deepEqual(f.readBytes("2"), nonZeroBytes(4, 3));
    assert.equal(f.entry("2").byteOffset, 1 + 2 + 3);
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("zero-size tensors write and read as empty", () => {
  const path = tempPath();
  try {
    writeSafetensors(path, [
      { name: "empty", dtype: "F32", shape: [0, 4], bytes: new Uint8Array(0) },
      { name: "after", dtype: "I16", shape: [2], bytes: nonZeroBytes(4, 8) },
    ]);
    using f = SafetensorsFile.open(path);
    assert.deepEqual(f.entry("empty"), {
      name: "empty",
      dtype: "F32",
      shape: [0, 4],
      byteOffset: 0,
      byteLength: 0,
    });
    assert.equal(f.readBytes("empty").length, 0);
    assert.deepEqual(f.readBytes("after"), nonZeroBytes(4, 8));
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("open reads only the header and readBytes only the asked tensor", () => {
  const path = tempPath();
  const big = nonZeroBytes(8 << 20, 11); // 8 MiB that must never be read
  const small = nonZeroBytes(6 * 2, 12);
  const proto = Deno.FsFile.prototype;
  const originalReadSync = proto.readSync;
  let bytesRead = 0;
  try {
    writeSafetensors(path, [
      { name: "big", dtype: "F32", shape: [2 << 20], bytes: big },
      { name: "small", dtype: "BF16", shape: [2, 3], bytes: small },
    ]);
    proto.readSync = function (this: Deno.FsFile, p: Uint8Array): number | null {
      const n = originalReadSync.call(this, p);
      bytesRead += n ?? 0;
      return n;
    };
    using f = SafetensorsFile.open(path);
    assert.equal(bytesRead, f.dataOffset, "open reads the length and header only");
    assert.equal(f.entry("small").byteOffset, big.length);
    bytesRead = 0;
    assert.deepEqual(f.readBytes("small"), small);
    assert.equal(bytesRead, small.length, "readBytes reads just that tensor");
  } finally {
    proto.readSync = originalReadSync;
    Deno.removeSync(path);
  }
});

Deno.test("readBytes reads from disk on demand and returns fresh copies", () => {
  const path = tempPath();
  try {
    const a = nonZeroBytes(16, 21);
    const b = nonZeroBytes(8, 22);
    writeSafetensors(path, [
      { name: "a", dtype: "I64", shape: [2], bytes: a },
      { name: "b", dtype: "F16", shape: [4], bytes: b },
    ]);
    using f = SafetensorsFile.open(path);
    const first = f.readBytes("b");
    first.fill(0);
    assert.deepEqual(f.readBytes("b"), b, "a caller's edit does not leak into later reads");
    // Rewrite b's bytes on disk after open: the next read must see them.
    const replacement = nonZeroBytes(8, 23);
    using w = Deno.openSync(path, { write: true });
    w.seekSync(f.dataOffset + 16, Deno.SeekMode.Start);
    w.writeSync(replacement);
    assert.deepEqual(f.readBytes("b"), replacement);
    assert.deepEqual(f.readBytes("a"), a);
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("entry of a missing tensor names it and lists available ones", () => {
  const path = tempPath();
  try {
    writeSafetensors(path, [
      { name: "alpha", dtype: "U8", shape: [1], bytes: nonZeroBytes(1, 1) },
      { name: "beta", dtype: "U8", shape: [1], bytes: nonZeroBytes(1, 2) },
    ]);
    using f = SafetensorsFile.open(path);
    const err = assertTensorqError(
      () => f.entry("gamma"),
      /no tensor named "gamma"/,
      "loadSafetensors",
      "argument",
    );
    assert.match(err.message, /"alpha", "beta"/);
    assertTensorqError(
      () => f.readBytes("gamma"),
      /no tensor named "gamma"/,
      "loadSafetensors",
      "argument",
    );
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("readBytes after close throws a state error", () => {
  const path = tempPath();
  try {
    writeSafetensors(path, [{ name: "x", dtype: "U8", shape: [1], bytes: nonZeroBytes(1, 1) }]);
    const f = SafetensorsFile.open(path);
    f.close();
    f.close();
    assertTensorqError(() => f.readBytes("x"), /file is closed/, "loadSafetensors", "state");
    assert.deepEqual(f.keys(), ["x"]);
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("parseSafetensorsBytes works on a whole buffer and on a header prefix", () => {
  const header = {
    __metadata__: { k: "v" },
    w: { dtype: "F32", shape: [2, 2], data_offsets: [4, 20] },
    s: { dtype: "I32", shape: [], data_offsets: [0, 4] },
  };
  const raw = rawFile(header, 20);
  const parsed = parseSafetensorsBytes(raw);
  const n = readU64(raw);
  assert.equal(parsed.dataOffset, 8 + n);
  assert.deepEqual(parsed.metadata, { k: "v" });
  assert.deepEqual(parsed.entries, [
    { name: "w", dtype: "F32", shape: [2, 2], byteOffset: 4, byteLength: 16 },
    { name: "s", dtype: "I32", shape: [], byteOffset: 0, byteLength: 4 },
  ]);
  const prefix = raw.slice(0, 8 + n);
  assert.deepEqual(parseSafetensorsBytes(prefix, { fileSize: raw.length }), parsed);
  assertTensorqError(() => parseSafetensorsBytes(prefix), /beyond the data section \(0 bytes\)/);
  assertTensorqError(
    () => parseSafetensorsBytes(raw.slice(0, 12), { fileSize: raw.length }),
    /buffer holds 12 bytes but the header ends/,
  );
});

Deno.test("tensors must tile the data section: overlaps, gaps and trailing bytes are refused", async () => {
  const f32 = (begin: number, end: number) => ({
    dtype: "F32",
    shape: [(end - begin) / 4],
    data_offsets: [begin, end],
  });
  const cases: [string, Record<string, unknown>, number, RegExp, string][] = [
    [
      "overlap",
      { a: f32(0, 8), b: f32(4, 12) },
      12,
      /tensor "b" starts at byte 4 but "a" ends at 8: the two overlap/,
      "b",
    ],
    [
      "same range twice",
      { a: { dtype: "U8", shape: [8], data_offsets: [0, 8] }, b: f32(0, 8) },
      8,
      /tensor "b" starts at byte 0 but "a" ends at 8: the two overlap/,
      "b",
    ],
    [
      "gap",
      { a: f32(0, 4), b: f32(8, 12) },
      12,
      /tensor "b" starts at byte 8 but "a" ends at 4: bytes 4\.\.8 belong to no tensor/,
      "b",
    ],
    [
      "gap before the first tensor",
      { a: f32(4, 8) },
      8,
      /tensor "a" starts at byte 4: bytes 0\.\.4 of the data section belong to no tensor/,
      "a",
    ],
    [
      "gap in reverse header order",
      { b: f32(8, 12), a: f32(0, 4) },
      12,
      /tensor "b" starts at byte 8 but "a" ends at 4/,
      "b",
    ],
    [
      "zero-size tensor inside another",
      { a: f32(0, 8), z: { dtype: "F32", shape: [0], data_offsets: [4, 4] } },
      8,
      /tensor "z" starts at byte 4 but "a" ends at 8/,
      "z",
    ],
    [
      "trailing bytes",
      { a: f32(0, 4) },
      16,
      /the data section has 16 bytes but the last tensor, "a", ends at byte 4: 12 trailing bytes/,
      "",
    ],
    [
      "trailing bytes after an empty tensor",
      { a: f32(0, 4), z: { dtype: "F32", shape: [0], data_offsets: [4, 4] } },
      6,
      /the last tensor, "a", ends at byte 4: 2 trailing bytes/,
      "",
    ],
    [
      "data but no tensor",
      { __metadata__: { k: "v" } },
      3,
      /the data section has 3 bytes but no tensor holds any: 3 trailing bytes/,
      "",
    ],
  ];
  for (const [label, header, dataLength, pattern, culprit] of cases) {
    const raw = rawFile(header, dataLength);
    const err = assertTensorqError(() => parseSafetensorsBytes(raw, { source: "x.st" }), pattern);
    assert.match(err.message, /^loadSafetensors: x\.st: /, label);
    assert.equal(err.argument, culprit || undefined, label);
  }
  const path = tempPath();
  try {
    for (const [label, header, dataLength, pattern] of cases) {
      Deno.writeFileSync(path, rawFile(header, dataLength));
      const err = assertTensorqError(() => SafetensorsFile.open(path), pattern);
      assert.ok(err.message.includes(`${path}: `), `${label}: message names the file`);
      await assert.rejects(() => SafetensorsFile.openAsync(path), pattern);
      assertTensorqError(() => loadSafetensors(path), pattern);
    }
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("layouts that tile the data section load, in any header order", () => {
  const empty = (at: number) => ({ dtype: "I32", shape: [2, 0], data_offsets: [at, at] });
  const valid: [string, Record<string, unknown>, number][] = [
    ["no tensors, no data", {}, 0],
    ["only empty tensors", { z: empty(0), y: empty(0) }, 0],
    [
      "empty tensors first, between and last",
      {
        z0: empty(0),
        a: { dtype: "U8", shape: [3], data_offsets: [0, 3] },
        z1: empty(3),
        b: { dtype: "F16", shape: [2], data_offsets: [3, 7] },
        z2: empty(7),
      },
      7,
    ],
    [
      "header order differs from byte order",
      {
        c: { dtype: "I8", shape: [1], data_offsets: [12, 13] },
        a: { dtype: "F64", shape: [1], data_offsets: [0, 8] },
        b: { dtype: "I32", shape: [], data_offsets: [8, 12] },
      },
      13,
    ],
  ];
  const path = tempPath();
  try {
    for (const [label, header, dataLength] of valid) {
      const raw = rawFile(header, dataLength);
      const parsed = parseSafetensorsBytes(raw);
      assert.deepEqual(
        parsed.entries.map((e) => e.name),
        Object.keys(header).filter((k) => k !== "__metadata__"),
        label,
      );
      Deno.writeFileSync(path, raw);
      using f = SafetensorsFile.open(path);
      for (const e of parsed.entries) {
        assert.deepEqual(
          f.readBytes(e.name),
          raw.subarray(
            parsed.dataOffset + e.byteOffset,
            parsed.dataOffset + e.byteOffset + e.byteLength,
          ),
          `${label}: ${e.name}`,
        );
      }
    }
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("files written by writeSafetensors and saveSafetensors pass the layout check", () => {
  const path = tempPath();
  try {
    writeSafetensors(path, [
      { name: "z0", dtype: "F32", shape: [0], bytes: new Uint8Array(0) },
      { name: "u", dtype: "U8", shape: [3], bytes: nonZeroBytes(3, 1) },
      { name: "z1", dtype: "I64", shape: [4, 0], bytes: new Uint8Array(0) },
      { name: "d", dtype: "F64", shape: [2], bytes: nonZeroBytes(16, 2) },
      { name: "z2", dtype: "BOOL", shape: [0], bytes: new Uint8Array(0) },
    ], { format: "pt" });
    using f = SafetensorsFile.open(path);
    assert.deepEqual(f.keys(), ["z0", "u", "z1", "d", "z2"]);
    assert.equal(f.fileSize - f.dataOffset, 19);
    assert.deepEqual(f.readBytes("d"), nonZeroBytes(16, 2));

    writeSafetensors(path, []);
    using none = SafetensorsFile.open(path);
    assert.deepEqual(none.keys(), []);
    assert.equal(none.fileSize, none.dataOffset);

    const tensors = {
      w: randn([3, 5], { seed: 1 }),
      q: cast(tensor(Int8Array.of(-8, 7, 0, 1, -1, 3, -5)), "int4"),
      e: zeros([0, 2]),
      m: tensor([true, false, true]),
      i: tensor(Int32Array.of(1, -2, 3)),
    };
    saveSafetensors(path, tensors, { note: "x" });
    using back = loadSafetensors(path);
    assert.deepEqual(back.keys(), Object.keys(tensors));
    assert.deepEqual(back.metadata, { note: "x" });
    for (const [name, t] of Object.entries(tensors)) {
      const got = back.get(name);
      assert.equal(got.dtype, t.dtype, name);
      assert.deepEqual(got.shape, t.shape, name);
      assert.deepEqual(got.dataSync(), t.dataSync(), name);
    }
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("malformed headers give TensorqErrors naming the problem", () => {
  const ok = { dtype: "F32", shape: [2], data_offsets: [0, 8] };
  const cases: [string, Uint8Array, RegExp][] = [
    ["short file", new Uint8Array(5), /5 bytes, shorter than the 8-byte header length/],
    ["zero header length", rawFile("", 8), /header length is 0/],
    [
      "huge header length",
      rawFile({ x: ok }, 8, BigInt(SAFETENSORS_MAX_HEADER_BYTES) + 1n),
      /header length 100000001 exceeds the 100000000-byte limit/,
    ],
    [
      "u64 header length",
      rawFile({ x: ok }, 8, 0xffffffffffffffffn),
      /exceeds the 100000000-byte limit/,
    ],
    [
      "header past end",
      rawFile({ x: ok }, 0, 4096n),
      /header length 4096 runs past the end of the file/,
    ],
    [
      "invalid UTF-8",
      rawFromHeaderBytes(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), 0),
      /not valid UTF-8/,
    ],
    ["invalid JSON", rawFile('{"x": {', 0), /header is not valid JSON/],
    ["JSON array", rawFile("[1, 2]", 0), /header is not a JSON object/],
    ["JSON number", rawFile("42", 0), /header is not a JSON object/],
    ["JSON null", rawFile("null", 0), /header is not a JSON object/],
    ["entry not object", rawFile({ x: 3 }, 0), /tensor "x": header entry is not an object/],
    [
      "no dtype",
      rawFile({ x: { shape: [2], data_offsets: [0, 8] } }, 8),
      /tensor "x": header entry has no 'dtype'/,
    ],
    [
      "no shape",
      rawFile({ x: { dtype: "F32", data_offsets: [0, 8] } }, 8),
      /tensor "x": header entry has no 'shape'/,
    ],
    [
      "no data_offsets",
      rawFile({ x: { dtype: "F32", shape: [2] } }, 8),
      /tensor "x": header entry has no 'data_offsets'/,
    ],
    [
      "unknown dtype",
      rawFile({ my_weight: { dtype: "F8_E5M2", shape: [2], data_offsets: [0, 2] } }, 2),
      /tensor "my_weight": unknown dtype "F8_E5M2".*F64, F32, F16, BF16, F8_E4M3, I64, I32, I16, I8, U8, BOOL/,
    ],
    [
      "non-string dtype",
      rawFile({ x: { dtype: 4, shape: [2], data_offsets: [0, 8] } }, 8),
      /unknown dtype 4/,
    ],
    [
      "negative dim",
      rawFile({ x: { dtype: "F32", shape: [-2], data_offsets: [0, 8] } }, 8),
      /tensor "x": shape is not an array of non-negative integers.*\[-2\]/,
    ],
    [
      "fractional dim",
      rawFile({ x: { dtype: "F32", shape: [1.5], data_offsets: [0, 6] } }, 8),
      /shape is not an array of non-negative integers/,
    ],
    [
      "shape not array",
      rawFile({ x: { dtype: "F32", shape: 2, data_offsets: [0, 8] } }, 8),
      /shape is not an array of non-negative integers/,
    ],
    [
      "shape of strings",
      rawFile({ x: { dtype: "F32", shape: ["2"], data_offsets: [0, 8] } }, 8),
      /shape is not an array of non-negative integers/,
    ],
    [
      "three offsets",
      rawFile({ x: { dtype: "F32", shape: [2], data_offsets: [0, 8, 9] } }, 8),
      /tensor "x": data_offsets is not \[begin, end\]/,
    ],
    [
      "negative offset",
      rawFile({ x: { dtype: "F32", shape: [2], data_offsets: [-8, 0] } }, 8),
      /data_offsets is not \[begin, end\]/,
    ],
    [
      "offsets not array",
      rawFile({ x: { dtype: "F32", shape: [2], data_offsets: "0-8" } }, 8),
      /data_offsets is not \[begin, end\]/,
    ],
    [
      "begin after end",
      rawFile({ x: { dtype: "F32", shape: [0], data_offsets: [8, 0] } }, 8),
      /tensor "x": data_offsets begin 8 is after end 0/,
    ],
    [
      "end beyond data",
      rawFile({ x: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }, 12),
      /tensor "x": data_offsets end 16 is beyond the data section \(12 bytes\)/,
    ],
    [
      "byte length mismatch",
      rawFile({ x: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, 12),
      /tensor "x": data_offsets span 8 bytes but F32 \[3\] needs 12/,
    ],
    [
      "metadata not object",
      rawFile({ __metadata__: "pt", x: ok }, 8),
      /__metadata__ is not an object of strings/,
    ],
    [
      "metadata non-string value",
      rawFile({ __metadata__: { version: 2 }, x: ok }, 8),
      /__metadata__ value of "version" is not a string/,
    ],
    [
      "duplicate name",
      rawFile(`{"x":${JSON.stringify(ok)},"x":${JSON.stringify(ok)}}`, 8),
      /names "x" more than once/,
    ],
    [
      // JSON.parse would keep the last: readers that keep the first would read other bytes.
      "repeated field in an entry",
      rawFile('{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"data_offsets":[8,16]}}', 16),
      /tensor "x": header entry has 'data_offsets' more than once/,
    ],
    [
      "repeated metadata key",
      rawFile(`{"__metadata__":{"a":"1","a":"2"},"x":${JSON.stringify(ok)}}`, 8),
      /: __metadata__ has 'a' more than once/,
    ],
    [
      // Elements 0, but the product of the first two dims is past 2^53.
      "overflowing shape",
      rawFile({ x: { dtype: "F32", shape: [2 ** 52, 2 ** 52, 0], data_offsets: [0, 0] } }, 0),
      /shape is not an array .*whose product is at most 2\^53 - 1, got \[4503599627370496,/,
    ],
  ];
  for (const [label, raw, pattern] of cases) {
    const err = assertTensorqError(() => parseSafetensorsBytes(raw, { source: "bad.st" }), pattern);
    assert.match(err.message, /^loadSafetensors: bad\.st: /, label);
  }
  // The same checks run when opening files, and the message names the file.
  const path = tempPath();
  try {
    for (const [label, raw, pattern] of cases) {
      Deno.writeFileSync(path, raw);
      const err = assertTensorqError(() => SafetensorsFile.open(path), pattern);
      assert.ok(err.message.includes(path), `${label}: message names the file`);
    }
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("a file rewritten while a reader has it open: the reader keeps the old tensors", () => {
  const path = tempPath();
  try {
    saveSafetensors(path, { a: tensor([1, 2]), b: tensor([3, 4, 5]) });
    const reader = loadSafetensors(path);
    assert.deepEqual(reader.get("a").toArray(), [1, 2]);
    // Another layout under the same name, written while the reader is open.
    saveSafetensors(path, { b: tensor([9]), a: tensor(new Float32Array(64).fill(7)) });
    assert.deepEqual(reader.get("b").toArray(), [3, 4, 5], "old bytes, not the new layout");
    reader.close();
    const fresh = loadSafetensors(path);
    assert.deepEqual(fresh.get("b").toArray(), [9]);
    fresh.close();
    // Nothing is left beside the file.
    const dir = path.slice(0, path.lastIndexOf("/"));
    const base = path.slice(path.lastIndexOf("/") + 1);
    const leftovers = [...Deno.readDirSync(dir)].filter((e) =>
      e.name.startsWith(base) && e.name !== base
    );
    assert.deepEqual(leftovers, []);
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("file: URLs with a bare '%' name the file they spell", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const url = new URL(`file://${dir}/100%.safetensors`);
    saveSafetensors(url, { a: tensor([1, 2]) });
    assert.ok(Deno.statSync(`${dir}/100%.safetensors`).isFile);
    const loaded = loadSafetensors(url);
    assert.deepEqual(loaded.get("a").toArray(), [1, 2]);
    loaded.close();
    // An escape is still an escape.
    const escaped = loadSafetensors(new URL(`file://${dir}/100%25.safetensors`));
    assert.deepEqual(escaped.keys(), ["a"]);
    escaped.close();
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("openAsync rejects malformed files with the same errors", async () => {
  const path = tempPath();
  try {
    Deno.writeFileSync(path, new Uint8Array(3));
    await assert.rejects(() => SafetensorsFile.openAsync(path), (e: unknown) => {
      assert.ok(e instanceof TensorqError);
      assert.equal(e.op, "loadSafetensors");
      assert.match(e.message, /3 bytes, shorter than the 8-byte header length/);
      return true;
    });
    Deno.writeFileSync(path, rawFile({ x: { dtype: "I32", shape: [2], data_offsets: [0, 8] } }, 4));
    await assert.rejects(
      () => SafetensorsFile.openAsync(path),
      /end 8 is beyond the data section \(4 bytes\)/,
    );
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("opening a missing file is an io TensorqError naming it", async () => {
  const path = "/nonexistent-dir/none.safetensors";
  assertTensorqError(() => SafetensorsFile.open(path), /none\.safetensors: cannot open file/);
  await assert.rejects(() => SafetensorsFile.openAsync(path), TensorqError);
});

Deno.test("writer validates its inputs before touching the file", () => {
  const path = tempPath();
  const original = nonZeroBytes(10, 77);
  Deno.writeFileSync(path, original);
  const good = {
    name: "g",
    dtype: "U8" as SafetensorsDType,
    shape: [2],
    bytes: nonZeroBytes(2, 1),
  };
  const save = (fn: () => void, pattern: RegExp) =>
    assertTensorqError(fn, pattern, "saveSafetensors", "io");
  try {
    save(
      () =>
        writeSafetensors(path, [good, {
          name: "w",
          dtype: "F32",
          shape: [2, 3],
          bytes: new Uint8Array(20),
        }]),
      /tensor "w": F32 \[2, 3\] needs 24 bytes, got 20/,
    );
    save(
      () => writeSafetensors(path, { w: { dtype: "F16", shape: [3], bytes: new Uint8Array(5) } }),
      /tensor "w": F16 \[3\] needs 6 bytes, got 5/,
    );
    save(
      () => writeSafetensors(path, [{ ...good, dtype: "U32" as SafetensorsDType }]),
      /tensor "g": unknown dtype "U32"/,
    );
    save(
      () => writeSafetensors(path, [{ ...good, shape: [-2] }]),
      /shape is not an array of non-negative/,
    );
    save(() => writeSafetensors(path, [good, good]), /tensor "g" is given more than once/);
    save(
      () => writeSafetensors(path, [{ ...good, name: "__metadata__" }]),
      /reserved for metadata/,
    );
    save(
      () => writeSafetensors(path, [{ ...good, bytes: [1, 2] as unknown as Uint8Array }]),
      /bytes is not a Uint8Array/,
    );
    assertTensorqError(
      () => writeSafetensors(path, [good], { version: 2 as unknown as string }),
      /metadata value of "version" is not a string/,
      "saveSafetensors",
      "argument",
    );
    assert.deepEqual(Deno.readFileSync(path), original, "a rejected write leaves the file alone");
  } finally {
    Deno.removeSync(path);
  }
});

const FIXTURES = new URL("fixtures/", SHARED_DIR);
const MODELS = new URL("models/", SHARED_DIR);

const conformance = new URL("conformance.safetensors", FIXTURES);
const hasConformance = filesExist(conformance);
if (!hasConformance) console.log(`skipped: ${conformance.pathname} not present (../shared)`);
Deno.test({
  name: "conformance fixture: pc_w is F32 [64, 96] and pt_x is F32 [4184]",
  ignore: !hasConformance,
  fn: async () => {
    for (
      const file of [
        SafetensorsFile.open(conformance.pathname),
        await SafetensorsFile.openAsync(conformance.pathname),
      ]
    ) {
      using f = file;
      const pcW = f.entry("pc_w");
      assert.equal(pcW.dtype, "F32");
      assert.deepEqual(pcW.shape, [64, 96]);
      assert.equal(pcW.byteLength, 64 * 96 * 4);
      const ptX = f.entry("pt_x");
      assert.equal(ptX.dtype, "F32");
      assert.deepEqual(ptX.shape, [4184]);
      // pt_x holds 4096 normal samples plus extremes including +-1000 (see the fixture README).
      const x = new Float32Array(f.readBytes("pt_x").buffer);
      assert.equal(x.length, 4184);
      assert.ok(x.every(Number.isFinite));
      assert.ok(x.includes(1000) && x.includes(-1000));
    }
  },
});

// ../shared's model, else the identical copy the demo ships.
const sharedGpt2 = new URL("tiny-shakespeare-gpt2/model.safetensors", MODELS);
const gpt2 = filesExist(sharedGpt2)
  ? sharedGpt2
  : new URL("../examples/gpt2/assets/tiny-shakespeare-gpt2/model.safetensors", import.meta.url);
const hasGpt2 = filesExist(gpt2);
if (!hasGpt2) console.log(`skipped: ${gpt2.pathname} not present`);
Deno.test({
  name: "tiny-shakespeare-gpt2: transformer.wte.weight is F32 [256, 256]",
  ignore: !hasGpt2,
  fn: () => {
    using f = SafetensorsFile.open(gpt2.pathname);
    const wte = f.entry("transformer.wte.weight");
    assert.equal(wte.dtype, "F32");
    assert.deepEqual(wte.shape, [256, 256]);
    assert.equal(f.metadata.format, "pt");
    assert.ok(!f.has("lm_head.weight"), "lm_head is tied to wte and absent");
    const w = new Float32Array(f.readBytes("transformer.wte.weight").buffer);
    assert.equal(w.length, 256 * 256);
    assert.ok(w.every(Number.isFinite));
    assert.ok(w.some((v) => v !== 0));
  },
});

Deno.test("opening a directory is an io TensorqError naming it", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "tensorq_st_dir_" });
  try {
    const pattern = /is a directory, not a safetensors file/;
    for (const open of [() => SafetensorsFile.open(dir), () => loadSafetensors(dir)]) {
      const err = assertTensorqError(open, pattern);
      assert.ok(err.message.startsWith(`loadSafetensors: ${dir}: `), err.message);
    }
    await assert.rejects(() => SafetensorsFile.openAsync(dir), (e: unknown) => {
      assert.ok(e instanceof TensorqError && e.op === "loadSafetensors" && e.kind === "io");
      assert.match(e.message, pattern);
      assert.ok(e.message.includes(dir));
      return true;
    });
  } finally {
    Deno.removeSync(dir);
  }
});

/** Writes a file whose tensor `q` (`count` elements of `dtype`) has int4 metadata `shape`. */
function int4File(path: string, shape: string, dtype: SafetensorsDType = "U8", count = 3): void {
  const bytes = count * itemSizeOf(dtype);
  const header = {
    __metadata__: { "tensorq.int4.q": shape, other: "kept" },
    q: { dtype, shape: [count], data_offsets: [0, bytes] },
  };
  Deno.writeFileSync(path, rawFile(header, bytes));
}

Deno.test("int4 metadata: checked against its tensor, errors name the file and tensor", () => {
  const path = tempPath();
  try {
    // Valid: 5 values pack into 3 bytes.
    int4File(path, "[5]");
    using good = loadSafetensors(path);
    assert.deepEqual(good.info("q"), { shape: [5], dtype: "int4" });
    assert.equal(good.get("q").dtype, "int4");
    assert.deepEqual(good.metadata, { other: "kept" });

    const cases: [string, () => void, RegExp][] = [
      [
        "not a JSON array",
        () => int4File(path, "[3;5]"),
        /tensor "q": bad int4 shape in the metadata key "tensorq\.int4\.q".*\[3;5\]/,
      ],
      ["negative size", () => int4File(path, "[-5]"), /bad int4 shape/],
      [
        "F32 entry",
        () => int4File(path, "[5]", "F32"),
        /tensor "q": the metadata key "tensorq\.int4\.q" marks it as packed int4, but it is F32 \[3\]/,
      ],
      [
        "too few bytes",
        () => int4File(path, "[100]"),
        /tensor "q": int4 \[100\] \(from the metadata key "tensorq\.int4\.q"\) packs into 50 bytes, but the tensor holds 3/,
      ],
      [
        "too many bytes",
        () => int4File(path, "[2, 2]"),
        /int4 \[2, 2\] .* packs into 2 bytes, but the tensor holds 3/,
      ],
    ];
    for (const [label, write, pattern] of cases) {
      write();
      const err = assertTensorqError(() => loadSafetensors(path), pattern);
      assert.ok(err.message.startsWith(`loadSafetensors: ${path}: tensor "q": `), label);
      assert.equal(err.argument, "tensorq.int4.q", label);
    }

    // A key whose tensor is absent is ignored (and hidden from the user metadata).
    Deno.writeFileSync(
      path,
      rawFile({
        __metadata__: { "tensorq.int4.gone": "[4]" },
        a: { dtype: "U8", shape: [2], data_offsets: [0, 2] },
      }, 2),
    );
    using orphan = loadSafetensors(path);
    assert.deepEqual(orphan.info("a"), { shape: [2], dtype: "int32" });
    assert.deepEqual(orphan.metadata, {});
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("saveSafetensors refuses user metadata under tensorq's int4 prefix", () => {
  const path = tempPath();
  const original = nonZeroBytes(10, 5);
  Deno.writeFileSync(path, original);
  try {
    const x = randn([2, 3], { seed: 3 });
    const q = cast(tensor(Int8Array.of(1, -2, 3)), "int4");
    for (const [tensors, key] of [[{ x }, "tensorq.int4.x"], [{ q }, "tensorq.int4.q"]] as const) {
      const err = assertTensorqError(
        () => saveSafetensors(path, tensors, { format: "pt", [key]: "[2, 3]" }),
        new RegExp(
          `metadata key "${key.replaceAll(".", "\\.")}" uses the prefix "tensorq\\.int4\\."`,
        ),
        "saveSafetensors",
        "argument",
      );
      assert.equal(err.argument, "metadata");
      assert.ok(err.message.includes(path));
    }
    assert.deepEqual(Deno.readFileSync(path), original, "a rejected save leaves the file alone");
    // Other tensorq-like keys are the user's.
    saveSafetensors(path, { x }, { "tensorq.note": "mine", "tensorq.int4": "mine too" });
    using back = loadSafetensors(path);
    assert.deepEqual(back.metadata, { "tensorq.note": "mine", "tensorq.int4": "mine too" });
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("BOOL bytes other than 0 and 1 load as true (1)", () => {
  const path = tempPath();
  try {
    const header = { m: { dtype: "BOOL", shape: [2, 3], data_offsets: [0, 6] } };
    const raw = rawFile(header, 6);
    const data = raw.subarray(raw.length - 6);
    data.set([0, 1, 2, 255, 0, 128]);
    Deno.writeFileSync(path, raw);
    using f = loadSafetensors(path);
    const m = f.get("m");
    assert.equal(m.dtype, "bool");
    assert.deepEqual(m.dataSync(), Uint8Array.of(0, 1, 1, 1, 0, 1));
    const want = tensor([[false, true, true], [true, false, true]]);
    assert.deepEqual(equal(m, want).dataSync(), Uint8Array.of(1, 1, 1, 1, 1, 1));
    assert.deepEqual(cast(m, "float32").dataSync(), Float32Array.of(0, 1, 1, 1, 0, 1));
    // The raw bytes stay as stored.
    assert.deepEqual(f.file.readBytes("m"), Uint8Array.of(0, 1, 2, 255, 0, 128));
  } finally {
    Deno.removeSync(path);
  }
});

/** How many times the error's own call site appears in its message. */
function callSiteCount(err: TensorqError): number {
  return err.message.split(` at ${formatCallSite(err.callSite)}`).length - 1;
}

/** A checkpoint directory holding `config.json` and the given files (name → bytes). */
function checkpointDir(files: Record<string, Uint8Array | string>): string {
  const dir = Deno.makeTempDirSync({ prefix: "tensorq_hf_" });
  Deno.writeTextFileSync(`${dir}/config.json`, '{"model_type": "gpt2"}');
  for (const [name, content] of Object.entries(files)) {
    if (typeof content === "string") Deno.writeTextFileSync(`${dir}/${name}`, content);
    else Deno.writeFileSync(`${dir}/${name}`, content);
  }
  return dir;
}

Deno.test("Hugging Face loader: wrapped errors name the call site once", () => {
  const a = { dtype: "F32", shape: [1], data_offsets: [0, 4] };
  const dirs: string[] = [];
  try {
    // A single model.safetensors whose header is not JSON.
    dirs.push(checkpointDir({ "model.safetensors": rawFile('{"a": ', 0) }));
    let err = assertTensorqError(
      () => loadHfCheckpoint(dirs[0]),
      /cannot open .*model\.safetensors: loadSafetensors: .*model\.safetensors: header is not valid JSON/,
      "loadHfCheckpoint",
    );
    assert.equal(callSiteCount(err), 1, err.message);
    assert.ok(err.cause instanceof TensorqError);

    // A shard with overlapping tensors, found when one of its tensors is read.
    const index = { weight_map: { a: "s1.safetensors", b: "s2.safetensors" } };
    const b = { dtype: "F32", shape: [2], data_offsets: [0, 8] };
    dirs.push(checkpointDir({
      "model.safetensors.index.json": JSON.stringify(index),
      "s1.safetensors": rawFile({ a }, 4),
      "s2.safetensors": rawFile({ b, c: { ...b, data_offsets: [4, 12] } }, 12),
    }));
    using ckpt = loadHfCheckpoint(dirs[1]);
    assert.deepEqual(ckpt.tensor("a").shape, [1]);
    err = assertTensorqError(
      () => ckpt.tensor("b"),
      /cannot open shard .*s2\.safetensors \(which should hold 'b'\): loadSafetensors: .*tensor "c" starts at byte 4 but "b" ends at 8/,
      "loadHfCheckpoint",
    );
    assert.equal(callSiteCount(err), 1, err.message);

    // A shard that is a directory.
    Deno.removeSync(`${dirs[1]}/s1.safetensors`);
    Deno.mkdirSync(`${dirs[1]}/s1.safetensors`);
    err = assertTensorqError(
      () => loadHfCheckpoint(dirs[1]),
      /missing shard .*s1\.safetensors/,
      "loadHfCheckpoint",
    );
    assert.equal(callSiteCount(err), 1, err.message);
  } finally {
    for (const d of dirs) Deno.removeSync(d, { recursive: true });
  }
});

Deno.test("Hugging Face loader: a file or a missing path instead of a directory", () => {
  const dir = checkpointDir({ "model.safetensors": rawFile({}, 0) });
  try {
    using ok = loadHfCheckpoint(dir);
    assert.deepEqual(ok.names, []);
    for (const file of ["config.json", "model.safetensors"]) {
      const err = assertTensorqError(
        () => loadHfCheckpoint(`${dir}/${file}`),
        new RegExp(`${dir}/${file.replace(".", "\\.")} is a file, not a checkpoint directory`),
        "loadHfCheckpoint",
      );
      assert.ok(err.message.includes(`e.g. ${dir})`), err.message);
      assert.equal(err.argument, "dir");
      assert.equal(callSiteCount(err), 1, err.message);
    }
    assertTensorqError(
      () => loadHfCheckpoint(`${dir}/nope`),
      /checkpoint directory .*\/nope does not exist/,
      "loadHfCheckpoint",
    );
    Deno.removeSync(`${dir}/config.json`);
    assertTensorqError(() => loadHfCheckpoint(dir), /missing config\.json in /, "loadHfCheckpoint");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("messageWithoutCallSite drops only a TensorqError's own call site", () => {
  const inner = new TensorqError("inner problem", { op: "inner", kind: "io" });
  assert.ok(inner.message.endsWith(` at ${formatCallSite(inner.callSite)}`));
  assert.equal(messageWithoutCallSite(inner), "inner: inner problem");
  assert.equal(messageWithoutCallSite(new Error("plain at x.ts:1:2")), "plain at x.ts:1:2");
  assert.equal(messageWithoutCallSite("text"), "text");
});

/** Every `.safetensors` file under `dir` (recursively); none when it does not exist. */
function safetensorsUnder(dir: URL): string[] {
  const found: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir)];
  } catch {
    return found;
  }
  for (const e of entries) {
    if (e.isDirectory) found.push(...safetensorsUnder(new URL(`${e.name}/`, dir)));
    else if (e.name.endsWith(".safetensors")) found.push(new URL(e.name, dir).pathname);
  }
  return found;
}

Deno.test("bundled checkpoints and fixtures pass the layout check and load", () => {
  const roots = [
    new URL("../examples/gpt2/assets/", import.meta.url),
    new URL("fixtures/", import.meta.url),
    FIXTURES,
    MODELS,
  ];
  const files = roots.flatMap(safetensorsUnder);
  assert.ok(files.some((f) => f.endsWith("tiny-shakespeare-gpt2/model.safetensors")), "found");
  for (const path of files) {
    using f = loadSafetensors(path);
    const entries = f.file.entries();
    const used = entries.reduce((n, e) => n + e.byteLength, 0);
    assert.equal(used, f.file.fileSize - f.file.dataOffset, path);
    for (const name of f.keys()) assert.ok(f.info(name).shape, `${path}: ${name}`);
    // Reading the largest tensor checks the file holds all its bytes.
    const largest = entries.reduce((m, e) => (e.byteLength > m.byteLength ? e : m), entries[0]);
    if (largest) assert.equal(f.get(largest.name).dtype, f.info(largest.name).dtype, path);
  }
  // Checkpoint directories (a config.json beside the weights) open as checkpoints.
  const dirs = new Set(files.map((f) => f.slice(0, f.lastIndexOf("/"))));
  let checkpoints = 0;
  for (const dir of dirs) {
    if (!filesExist(`${dir}/config.json`)) continue;
    using ckpt = loadHfCheckpoint(dir);
    for (const name of ckpt.names) ckpt.info(name);
    checkpoints++;
  }
  assert.ok(checkpoints >= 1);
});

// ---------------------------------------------------------------------------------------
// argument checks found by fuzzing: clear TensorqErrors, no file named "undefined"

const BAD_PATHS: [unknown, string][] = [
  [undefined, "got undefined"],
  [null, "got null"],
  [NaN, "got NaN"],
  [0, "got 0"],
  ["", 'got ""'],
  [{}, "got Object"],
  [[1, "a"], 'got [1, "a"]'],
  [() => "f", "got a function"],
  [Symbol("p"), "got Symbol(p)"],
  [10n, "got 10n (a bigint)"],
];

Deno.test("file paths must be non-empty strings or file: URLs", async () => {
  const cwd = Deno.makeTempDirSync({ prefix: "tensorq_paths_" });
  const before = Deno.cwd();
  Deno.chdir(cwd);
  try {
    const x = tensor([1, 2]);
    for (const [path, got] of BAD_PATHS) {
      const p = path as string;
      const label = String(got);
      const calls: [() => unknown, string, string][] = [
        [() => saveSafetensors(p, { x }), "saveSafetensors", "path"],
        [() => loadSafetensors(p), "loadSafetensors", "path"],
        [() => SafetensorsFile.open(p), "SafetensorsFile.open", "path"],
        [
          () => writeSafetensors(p, { x: { dtype: "U8", shape: [0], bytes: new Uint8Array() } }),
          "saveSafetensors",
          "path",
        ],
        [() => loadHfCheckpoint(p), "loadHfCheckpoint", "dir"],
      ];
      for (const [fn, op, argument] of calls) {
        const err = assertTensorqError(fn, /must be a file path/, op, "argument");
        assert.equal(err.argument, argument, label);
        assert.ok(err.message.includes(got), `${label}: ${err.message}`);
        assert.ok(err.message.includes("a file path string or a file: URL object"), err.message);
      }
      await assert.rejects(() => SafetensorsFile.openAsync(p), (e: unknown) => {
        assert.ok(e instanceof TensorqError && e.op === "SafetensorsFile.openAsync", String(e));
        return true;
      });
    }
    // Nothing was written under a coerced name ("undefined", "NaN", "[object Object]", ...).
    assert.deepEqual([...Deno.readDirSync(cwd)], []);
    // Other URLs are still refused; file: URLs still work.
    assertTensorqError(
      () => loadHfCheckpoint(new URL("https://example.com/ckpt")),
      /only local files/,
      "loadHfCheckpoint",
      "argument",
    );
    const url = new URL(`file://${cwd}/a%20b.safetensors`);
    saveSafetensors(url, { x });
    using back = loadSafetensors(url);
    assert.deepEqual(back.keys(), ["x"]);
  } finally {
    Deno.chdir(before);
    Deno.removeSync(cwd, { recursive: true });
  }
});

Deno.test("load and save options, metadata and names are checked", () => {
  const dir = Deno.makeTempDirSync({ prefix: "tensorq_opts_" });
  const path = `${dir}/model.safetensors`;
  try {
    const x = tensor([1, 2]);
    // Metadata: a plain object of strings; undefined and null mean none.
    const badMetadata: [unknown, RegExp][] = [
      ["str", /metadata must map strings to strings.*got "str"/],
      [NaN, /metadata must map strings to strings.*got NaN/],
      [true, /got true/],
      [[], /got \[\]/],
      [["a"], /got \["a"\]/],
      [() => 1, /got a function/],
      [new Map([["k", "v"]]), /got Map/],
      [x, /got Tensor/],
      [10n, /got 10n \(a bigint\)/],
      [Symbol("m"), /got Symbol\(m\)/],
      [{ k: 1 }, /metadata value of "k" is not a string.*got 1/],
      [{ k: 1n }, /metadata value of "k" is not a string.*got 1n \(a bigint\)/],
      [{ k: Symbol("v") }, /got Symbol\(v\)/],
    ];
    for (const [metadata, pattern] of badMetadata) {
      const err = assertTensorqError(
        () => saveSafetensors(path, { x }, metadata as Record<string, string>),
        pattern,
        "saveSafetensors",
        "argument",
      );
      assert.equal(err.argument, "metadata");
    }
    assert.ok(!filesExist(path), "a rejected save writes nothing");
    // Tensors: a plain record of tensors.
    for (const tensors of [undefined, null, "x", [x], new Map([["x", x]])]) {
      assertTensorqError(
        () => saveSafetensors(path, tensors as never),
        /tensors must be a record of tensors/,
        "saveSafetensors",
        "argument",
      );
    }
    assertTensorqError(
      () => saveSafetensors(path, { x: 1n as never }),
      /values must be tensors.*got 1n \(a bigint\)/,
      "saveSafetensors",
      "argument",
    );
    saveSafetensors(path, { x }, null as never);
    Deno.writeTextFileSync(`${dir}/config.json`, "{}");

    using file = loadSafetensors(path);
    using ckpt = loadHfCheckpoint(dir);
    const badOptions: [unknown, RegExp][] = [
      ["cpu", /options must be a plain object.*got "cpu"/],
      [[], /options must be a plain object/],
      [x, /options must be a plain object.*got Tensor/],
      [{ devcie: "cpu" }, /unknown option "devcie".*'options\.devcie'/],
    ];
    for (const [options, pattern] of badOptions) {
      const o = options as never;
      assertTensorqError(() => file.get("x", o), pattern, "SafetensorsTensors.get", "argument");
      assertTensorqError(
        () => file.toRecord(o),
        pattern,
        "SafetensorsTensors.toRecord",
        "argument",
      );
      assertTensorqError(() => ckpt.tensor("x", o), pattern, "HfCheckpoint.tensor", "argument");
    }
    // null options are the defaults.
    assert.deepEqual(file.get("x", null as never).shape, [2]);
    assert.deepEqual(Object.keys(file.toRecord(null as never)), ["x"]);
    assert.deepEqual(ckpt.tensor("x", null as never).shape, [2]);

    // Names that are symbols or bigints are described, not interpolated (which would throw).
    for (const name of [Symbol("n"), 3n]) {
      const n = name as never;
      const shown = typeof name === "symbol" ? "Symbol\\(n\\)" : "3n \\(a bigint\\)";
      assertTensorqError(
        () => file.get(n),
        new RegExp(`no tensor named ${shown}`),
        undefined,
        "argument",
      );
      assertTensorqError(
        () => file.info(n),
        new RegExp(`no tensor named ${shown}`),
        undefined,
        "argument",
      );
      for (const call of [() => ckpt.tensor(n), () => ckpt.info(n), () => ckpt.shardOf(n)]) {
        const err = assertTensorqError(
          call,
          new RegExp(`tensor ${shown} is not in the checkpoint`),
          "loadHfCheckpoint",
        );
        assert.equal(err.argument, "name");
      }
    }
    // writeSafetensors: names, dtypes and shapes that are bigints.
    const raw = { dtype: "U8" as const, shape: [0], bytes: new Uint8Array() };
    assertTensorqError(
      () => writeSafetensors(path, [{ ...raw, name: 1n as never }]),
      /tensor name is not a string.*got 1n/,
      "saveSafetensors",
    );
    assertTensorqError(
      () => writeSafetensors(path, [{ ...raw, name: "r", dtype: 1n as never }]),
      /unknown dtype 1n/,
      "saveSafetensors",
    );
    assertTensorqError(
      () => writeSafetensors(path, [{ ...raw, name: "r", shape: [1n] as never }]),
      /shape is not an array.*got \[1n \(a bigint\)\]/,
      "saveSafetensors",
    );
    assertTensorqError(
      () => itemSizeOf(2n as never),
      /unknown safetensors dtype 2n/,
      "itemSizeOf",
      "dtype",
    );
    // SafetensorsTensors wraps only an opened file.
    for (const bad of [undefined, null, {}, path]) {
      assertTensorqError(
        () => new SafetensorsTensors(bad as never),
        /expected an opened safetensors file/,
        "SafetensorsTensors",
        "argument",
      );
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
