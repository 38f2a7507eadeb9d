import assert from "node:assert/strict";
import { pathToFileURL } from "node:url";
import * as tq from "../mod.ts";
import { assertClose, assertTqError, randomValues, testOnDevices, thisLine } from "./helpers.ts";

// Float64 fake quantization with TensorRT semantics: true float32 division, round half to
// even, saturate; dequantize multiplies in float32.
function rne(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
}
function fakeQuant(x: number, s: number, lo: number, hi: number): number {
  const q = Math.min(hi, Math.max(lo, rne(Math.fround(Math.fround(x) / Math.fround(s)))));
  return Math.fround(q * Math.fround(s));
}

testOnDevices(
  "Linear with int8 per-channel weights and per-tensor input equals a float64 fake-quant reference",
  (device) => {
    const [B, I, O] = [5, 48, 24];
    const wv = randomValues(O * I, 21).map((v) => Math.fround(v * 0.1));
    const bv = randomValues(O, 22).map((v) => Math.fround(v * 0.1));
    const xv = randomValues(B * I, 23).map((v) => Math.fround(v));
    const layer = new tq.Linear(I, O, { quantDtype: "int8", weightQuantDim: 0 });
    const weight = tq.tensor(Float32Array.from(wv), { shape: [O, I], device });
    const bias = tq.tensor(Float32Array.from(bv), { device });
    const weightScale = tq.scaleFromAmax(weight.abs().max(1), "int8");
    const inputScale = tq.scaleFromAmax(3.1, "int8");
    layer.to(device).loadStateDict({
      weight,
      bias,
      weightScale: weightScale.to(device),
      inputScale: inputScale.to(device),
    });
    const y = layer.forward(tq.tensor(Float32Array.from(xv), { shape: [B, I], device }));
    const ws = weightScale.dataSync() as Float32Array;
    const is = inputScale.item();
    const ref = new Float64Array(B * O);
    for (let b = 0; b < B; b++) {
      for (let o = 0; o < O; o++) {
        let acc = 0;
        for (let i = 0; i < I; i++) {
          acc += fakeQuant(xv[b * I + i], is, -128, 127) *
            fakeQuant(wv[o * I + i], ws[o], -128, 127);
        }
        ref[b * O + o] = acc + bv[o];
      }
    }
    assertClose(y.dataSync() as Float32Array, ref, { rtol: 1e-5, atol: 1e-6 });
  },
);

testOnDevices("Linear with int4 block-wise weights (blocks along input features)", (device) => {
  const [B, I, O, BS] = [3, 64, 8, 16];
  const wv = randomValues(O * I, 31).map((v) => Math.fround(v));
  const xv = randomValues(B * I, 32).map((v) => Math.fround(v));
  const layer = new tq.Linear(I, O, {
    bias: false,
    quantDtype: "int4",
    weightQuantDim: 1,
    blockSize: BS,
  });
  const weight = tq.tensor(Float32Array.from(wv), { shape: [O, I], device });
  const amax = weight.abs().reshape([O, I / BS, BS]).max(2);
  const weightScale = tq.scaleFromAmax(amax, "int4");
  assert.deepEqual(weightScale.shape, [O, I / BS]);
  layer.to(device).loadStateDict({ weight, weightScale: weightScale.to(device) });
  const y = layer.forward(tq.tensor(Float32Array.from(xv), { shape: [B, I], device }));
  const ws = weightScale.dataSync() as Float32Array;
  const ref = new Float64Array(B * O);
  for (let b = 0; b < B; b++) {
    for (let o = 0; o < O; o++) {
      let acc = 0;
      for (let i = 0; i < I; i++) {
        acc += xv[b * I + i] *
          fakeQuant(wv[o * I + i], ws[o * (I / BS) + Math.floor(i / BS)], -8, 7);
      }
      ref[b * O + o] = acc;
    }
  }
  assertClose(y.dataSync() as Float32Array, ref, { rtol: 1e-5, atol: 1e-6 });
});

testOnDevices("LayerNorm, Embedding and Sequential", (device) => {
  const ln = new tq.LayerNorm(4).to(device);
  const x = tq.tensor([[1, 2, 3, 4], [2, 2, 2, 6]], { device });
  const y = ln.forward(x).dataSync() as Float32Array;
  const ref = [[1, 2, 3, 4], [2, 2, 2, 6]].flatMap((row) => {
    const m = row.reduce((a, b) => a + b) / 4;
    const v = row.reduce((a, b) => a + (b - m) ** 2, 0) / 4;
    return row.map((e) => (e - m) / Math.sqrt(v + 1e-5));
  });
  assertClose(y, ref, { rtol: 1e-5, atol: 1e-6 });
  const emb = new tq.Embedding(10, 3).to(device);
  const rows = emb.forward(tq.tensor([[1, 9]], { dtype: "int32", device }));
  assert.deepEqual(rows.shape, [1, 2, 3]);
  const table = emb.weight.toArray() as number[][];
  assert.deepEqual(rows.toArray(), [[table[1], table[9]]]);
  const seq = new tq.Sequential(new tq.Linear(4, 8), new tq.LayerNorm(8), new tq.Linear(8, 2)).to(
    device,
  );
  assert.deepEqual(seq.forward(x).shape, [2, 2]);
  assert.deepEqual(Object.keys(seq.stateDict()), [
    "0.weight",
    "0.bias",
    "1.weight",
    "1.bias",
    "2.weight",
    "2.bias",
  ]);
  assert.equal(seq.parameters().length, 6);
});

testOnDevices("GELU and ReLU layers: the ops as modules, in a Sequential", (device) => {
  tq.manualSeed(7); // the same layers on every device, with outputs on both sides of 0
  const x = tq.tensor(randomValues(5 * 4, 31, { low: -2, high: 2 }), { shape: [5, 4], device });
  const seq = new tq.Sequential(
    new tq.Linear(4, 8),
    new tq.GELU({ approximate: "tanh" }),
    new tq.Linear(8, 6),
    new tq.GELU(),
    new tq.Linear(6, 3),
    new tq.ReLU(),
  ).to(device);
  // Activations hold no parameters: the Linear layers' are all there is.
  assert.deepEqual(Object.keys(seq.stateDict()), [
    "0.weight",
    "0.bias",
    "2.weight",
    "2.bias",
    "4.weight",
    "4.bias",
  ]);
  const lin = (i: number) => seq.at(i) as tq.Linear;
  // The same graph as the ops written out: equal bit for bit.
  const ops = lin(4).forward(
    lin(2).forward(lin(0).forward(x).gelu({ approximate: "tanh" })).gelu(),
  ).relu();
  const y = seq.forward(x).dataSync() as Float32Array;
  assert.deepEqual(y, ops.dataSync());
  assert.ok(y.some((v) => v > 0) && y.some((v) => v === 0), "ReLU clips some outputs");
  // The first two layers against float64.
  const w = lin(0).weight.dataSync() as Float32Array;
  const b = lin(0).bias!.dataSync() as Float32Array;
  const xs = x.dataSync() as Float32Array;
  const ref: number[] = [];
  for (let r = 0; r < 5; r++) {
    for (let o = 0; o < 8; o++) {
      let z = b[o];
      for (let k = 0; k < 4; k++) z += xs[r * 4 + k] * w[o * 4 + k];
      ref.push(0.5 * z * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3))));
    }
  }
  const partial = new tq.Sequential(lin(0), seq.at(1)!).forward(x).dataSync() as Float32Array;
  assertClose(partial, ref, { rtol: 1e-5, atol: 1e-6 });
  const line = thisLine() + 1;
  const bad = () => new tq.GELU({ approximate: "erf" as "none" });
  assertTqError(bad, {
    op: "GELU",
    kind: "argument",
    includes: ["unknown approximation", '"erf"'],
    line,
  });
  assert.throws(() => new tq.GELU({ approx: "tanh" } as tq.GeluOptions), /unknown option "approx"/);
});

Deno.test("stateDict round trip through safetensors, including int4 and fp8 tensors", () => {
  const dir = Deno.makeTempDirSync();
  const src = new tq.Sequential(new tq.Linear(6, 4), new tq.LayerNorm(4));
  const path = `${dir}/m.safetensors`;
  const extra = {
    q4: tq.quantize(tq.randn([3, 5], { seed: 9 }), 0.2, "int4"),
    f8: tq.quantize(tq.randn([7], { seed: 10 }), 0.01, "float8e4m3"),
    h: tq.randn([2, 2], { seed: 11, dtype: "bfloat16" }),
  };
  tq.saveSafetensors(path, { ...src.stateDict(), ...extra }, { note: "test" });
  using file = tq.loadSafetensors(path);
  assert.deepEqual(file.metadata, { note: "test" });
  assert.deepEqual(file.info("q4"), { shape: [3, 5], dtype: "int4" });
  for (const [k, t] of Object.entries(extra)) {
    const back = file.get(k);
    assert.equal(back.dtype, t.dtype);
    assert.deepEqual(back.storageSync(), t.storageSync(), k);
  }
  const dst = new tq.Sequential(new tq.Linear(6, 4), new tq.LayerNorm(4));
  const dict = Object.fromEntries(
    file.keys().filter((k) => !(k in extra)).map((k) => [k, file.get(k)]),
  );
  dst.loadStateDict(dict);
  const x = tq.randn([2, 6], { seed: 12 });
  assert.deepEqual(dst.forward(x).dataSync(), src.forward(x).dataSync());
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("safetensors paths: file URLs with escaped characters; bad int4 metadata", () => {
  const dir = Deno.makeTempDirSync({ prefix: "tensorq st #1 ü " });
  try {
    const url = pathToFileURL(`${dir}/a b%.safetensors`);
    assert.ok(url.pathname.includes("%20%23"), url.pathname); // the URL escapes " #"
    const x = tq.randn([2, 3], { seed: 4 });
    tq.saveSafetensors(url, { x });
    assert.ok(Deno.statSync(`${dir}/a b%.safetensors`).isFile);
    using file = tq.loadSafetensors(url);
    assert.deepEqual(file.get("x").dataSync(), x.dataSync());
    assertTqError(() => tq.loadSafetensors(new URL("https://example.com/m.safetensors")), {
      op: "loadSafetensors",
      kind: "argument",
      includes: ["https://example.com/m.safetensors", "file: URL"],
    });
    // An int4 tensor whose shape entry in the metadata is not a JSON array of sizes.
    const path = `${dir}/q.safetensors`;
    tq.saveSafetensors(path, { q: tq.quantize(tq.randn([3, 5], { seed: 9 }), 0.2, "int4") });
    // Edit the header's bytes in place: the packed data after it is not UTF-8 text.
    const bytes = Deno.readFileSync(path);
    const at = new TextDecoder("latin1").decode(bytes).indexOf('"[3,5]"');
    assert.ok(at > 0, "the metadata holds the shape as [3,5]");
    bytes[at + 3] = 0x3b; // "," -> ";"
    Deno.writeFileSync(path, bytes);
    assertTqError(() => tq.loadSafetensors(path), {
      op: "loadSafetensors",
      kind: "io",
      includes: ["int4", "[3;5]"],
    });
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("quantization state: strict loads replace it, configuration is atomic, ties are kept", () => {
  const w = tq.randn([4, 6], { seed: 1 });
  const layer = new tq.Linear(6, 4, { quantDtype: "int8", weightQuantDim: 0 });
  const weightScale = tq.full([4], 0.02);
  layer.loadStateDict({
    weight: w,
    bias: tq.zeros([4]),
    weightScale,
    inputScale: tq.full([], 0.01),
  });
  assert.ok(layer.inputScale);
  // A strict load without inputScale makes the layer weight-only, like a fresh one.
  layer.loadStateDict({ weight: w, bias: tq.zeros([4]), weightScale });
  assert.equal(layer.inputScale, undefined);
  const fresh = new tq.Linear(6, 4, { quantDtype: "int8", weightQuantDim: 0 });
  fresh.loadStateDict({ weight: w, bias: tq.zeros([4]), weightScale });
  const x = tq.randn([2, 6], { seed: 2 });
  assert.deepEqual(layer.forward(x).dataSync(), fresh.forward(x).dataSync());
  // A non-strict load keeps what it does not name.
  layer.inputScale = tq.full([], 0.01);
  layer.loadStateDict({ weight: w }, { strict: false });
  assert.ok(layer.inputScale);
  // The mode changes only through configureQuantization, which checks before it changes.
  assert.throws(() => {
    (layer as unknown as { quantDtype: string }).quantDtype = "int4";
  }, TypeError);
  assertTqError(() => layer.configureQuantization({ quantDtype: "int8", weightQuantDim: 2 }), {
    op: "Linear",
    includes: ["weightQuantDim"],
  });
  assert.deepEqual([layer.quantDtype, layer.weightQuantDim], ["int8", 0]);
  assert.ok(layer.weightScale && layer.inputScale, "the scales survive a rejected configuration");
  assertTqError(() => new tq.Linear(6, 4, { quantDtype: "int16" as tq.QuantDType }), {
    op: "Linear",
    includes: ["int8, int4, float8e4m3", "int16"],
  });
  assertTqError(
    () => new tq.Linear(6, 4, { quantDtype: "float8e4m3", weightQuantDim: 1, blockSize: 2 }),
    { op: "Linear", includes: ["blockSize", "int8 / int4"] },
  );
  assertTqError(() => layer.loadStateDict(null as unknown as Record<string, tq.Tensor>), {
    op: "loadStateDict",
    includes: ["null"],
  });

  // Tied weights: listed once by parameters(), under both names in stateDict(), and moved once.
  const shared = new tq.Linear(3, 3);
  const seq = new tq.Sequential(shared, shared);
  assert.equal(seq.parameters().length, 2);
  assert.deepEqual(Object.keys(seq.stateDict()), ["0.weight", "0.bias", "1.weight", "1.bias"]);
  const to = tq.Tensor.prototype.to;
  // Stand-in for a device move: every call makes a new tensor, as a real transfer does.
  tq.Tensor.prototype.to = function (this: tq.Tensor) {
    return tq.tensor(this.dataSync() as Float32Array, { shape: this.shape });
  };
  try {
    const before = shared.weight;
    seq.to("elsewhere");
    const [a, b] = [(seq.at(0) as tq.Linear).weight, (seq.at(1) as tq.Linear).weight];
    assert.ok(a !== before && a === b, "moved once and still shared");
  } finally {
    tq.Tensor.prototype.to = to;
  }
});

Deno.test("module errors name the parameter and the caller's line", () => {
  const layer = new tq.Linear(4, 3);
  let line = thisLine() + 1;
  let call = (): unknown => (layer.weight = tq.zeros([4, 3]));
  assertTqError(call, {
    op: "setParameter",
    kind: "shape",
    includes: ["weight", "[3, 4]", "[4, 3]"],
    line,
  });
  const half = tq.zeros([3, 4], { dtype: "float16" });
  line = thisLine() + 1;
  call = () => layer.loadStateDict({ weight: half, nope: tq.zeros([1]) });
  assertTqError(call, {
    op: "loadStateDict",
    includes: ["weight: expected float32 [3, 4], got float16", "missing: bias", "unexpected: nope"],
    line,
  });
  const relaxed = layer.loadStateDict({ weight: tq.zeros([3, 4]), nope: tq.zeros([1]) }, {
    strict: false,
  });
  assert.deepEqual(relaxed, { missing: ["bias"], unexpected: ["nope"] });
  line = thisLine() + 1;
  call = () => new tq.Linear(4, 3, { quantDtype: "int4", weightQuantDim: 1, blockSize: 0 });
  assertTqError(call, {
    op: "Linear",
    kind: "argument",
    includes: ["blockSize"],
    line,
  });
  // A block size that does not divide the dimension leaves a shorter last block.
  const ragged = new tq.Linear(4, 3, { quantDtype: "int4", weightQuantDim: 1, blockSize: 3 });
  ragged.weightScale = tq.ones([3, 2]);
  assert.deepEqual(ragged.weightScale.shape, [3, 2]);
  assert.throws(() => (ragged.weightScale = tq.ones([3, 1])), /\[3, 2\]/);
  const q = new tq.Linear(4, 3, { quantDtype: "int8" });
  line = thisLine() + 1;
  call = () => q.forward(tq.ones([1, 4]));
  assertTqError(call, { op: "Linear.forward", kind: "state", includes: ["weightScale"], line });
  line = thisLine() + 1;
  call = () => new tq.Linear(0, 3);
  assertTqError(call, { op: "Linear", kind: "argument", includes: ["inFeatures"], line });
  // The layer, not the matmul or transpose inside it, names a wrong input or a disposed weight.
  line = thisLine() + 1;
  call = () => layer.forward(tq.ones([2, 5]));
  assertTqError(call, {
    op: "Linear.forward",
    kind: "shape",
    includes: ["argument 'x'", "expected [..., 4], got [2, 5]"],
    line,
  });
  line = thisLine() + 1;
  call = () => layer.forward(tq.tensor(1));
  assertTqError(call, { op: "Linear.forward", kind: "shape", includes: ["got []"], line });
  const dead = tq.ones([2, 4]);
  dead.dispose();
  line = thisLine() + 1;
  call = () => layer.forward(dead);
  assertTqError(call, { op: "Linear.forward", kind: "state", includes: ["argument 'x'"], line });
  const withBias = new tq.Linear(4, 3);
  withBias.bias!.dispose();
  line = thisLine() + 1;
  call = () => withBias.forward(tq.ones([2, 4]));
  assertTqError(call, {
    op: "Linear.forward",
    kind: "state",
    includes: [
      "parameter 'bias' of the layer was disposed",
      "a disposed float32 tensor of shape [3]",
    ],
    line,
  });
});

/** Each parameter of `m` by dotted name with its tensor and values, to check a failed load. */
function snapshot(m: tq.Module): [string, tq.Tensor, number[]][] {
  return Object.entries(m.stateDict()).map((
    [k, t],
  ) => [k, t, Array.from(t.dataSync() as Float32Array)]);
}

function assertUnchanged(m: tq.Module, before: [string, tq.Tensor, number[]][]): void {
  const now = snapshot(m);
  assert.deepEqual(now.map(([k]) => k), before.map(([k]) => k));
  now.forEach(([k, t, v], i) => {
    assert.ok(t === before[i][1], `${k} was replaced`);
    assert.deepEqual(v, before[i][2]);
  });
}

Deno.test("layer options: null means the defaults, other non-objects are rejected", () => {
  const x = tq.randn([3, 2], { seed: 61 });
  const lin = new tq.Linear(2, 3, null as unknown as tq.LinearOptions);
  assert.deepEqual(Object.keys(lin.stateDict()), ["weight", "bias"]);
  assert.equal(lin.dtype, "float32");
  assert.equal(lin.quantDtype, undefined);
  assert.deepEqual(
    lin.forward(x).dataSync(),
    x.matmul(lin.weight.transpose()).add(lin.bias!).dataSync(),
  );
  const ln = new tq.LayerNorm(4, null as unknown as tq.LayerNormOptions);
  assert.equal(ln.eps, 1e-5);
  const h = tq.randn([2, 4], { seed: 62 });
  assert.deepEqual(ln.forward(h).dataSync(), tq.layerNorm(h, ln.weight, ln.bias).dataSync());
  const emb = new tq.Embedding(4, 2, null as unknown as tq.EmbeddingOptions);
  assert.deepEqual([emb.weight.shape, emb.weight.dtype], [[4, 2], "float32"]);

  const bad: [string, () => unknown, string][] = [
    ["Linear", () => new tq.Linear(2, 3, 5 as unknown as tq.LinearOptions), "got 5"],
    ["Linear", () => new tq.Linear(2, 3, "float16" as tq.LinearOptions), 'got "float16"'],
    ["Linear", () => new tq.Linear(2, 3, [] as tq.LinearOptions), "got []"],
    ["LayerNorm", () => new tq.LayerNorm(4, true as unknown as tq.LayerNormOptions), "got true"],
    ["Embedding", () => new tq.Embedding(4, 2, "x" as tq.EmbeddingOptions), 'got "x"'],
  ];
  for (const [op, call, got] of bad) {
    const e = assertTqError(call, { op, kind: "argument", includes: ["options", got] });
    assert.equal(e.argument, "options");
  }
  const line = thisLine() + 1;
  const call = () => new tq.Linear(2, 3, 1 as unknown as tq.LinearOptions);
  assertTqError(call, {
    op: "Linear",
    kind: "argument",
    includes: ["options must be a plain object", "bias, dtype, quantDtype", "got 1"],
    line,
  });

  // configureQuantization: null removes quantization as {} does; a non-object changes nothing.
  const q = new tq.Linear(2, 3, { quantDtype: "int8", weightQuantDim: 0 });
  assertTqError(
    () => q.configureQuantization(7 as unknown as tq.LinearOptions),
    { op: "Linear.configureQuantization", kind: "argument", includes: ["options", "got 7"] },
  );
  assert.deepEqual([q.quantDtype, q.weightScale?.shape ?? [3]], ["int8", [3]]);
  q.configureQuantization(null as unknown as tq.LinearOptions);
  assert.equal(q.quantDtype, undefined);
  assert.deepEqual(Object.keys(q.stateDict()), ["weight", "bias"]);

  // loadStateDict: null options are the defaults (strict); other non-objects change nothing.
  const dict = { weight: tq.randn([3, 2], { seed: 63 }), bias: tq.randn([3], { seed: 64 }) };
  lin.loadStateDict(dict, null as unknown as tq.LoadStateDictOptions);
  assert.ok(lin.weight === dict.weight && lin.bias === dict.bias);
  assertTqError(() => lin.loadStateDict({ weight: dict.weight }, null as never), {
    op: "loadStateDict",
    includes: ["missing: bias"],
  });
  const before = snapshot(lin);
  const other = { weight: tq.randn([3, 2], { seed: 65 }), bias: tq.randn([3], { seed: 66 }) };
  assertTqError(() => lin.loadStateDict(other, "lenient" as tq.LoadStateDictOptions), {
    op: "loadStateDict",
    kind: "argument",
    includes: ["options must be a plain object", "strict", '"lenient"'],
  });
  assertUnchanged(lin, before);
});

Deno.test("boolean options must be booleans: Linear bias, loadStateDict strict", () => {
  for (const bias of ["no", "false", 0, 1, null, {}]) {
    const line = thisLine() + 1;
    const call = () => new tq.Linear(2, 3, { bias: bias as boolean });
    const e = assertTqError(call, {
      op: "Linear",
      kind: "argument",
      includes: ["bias must be true or false", "'bias'", "a boolean"],
      line,
    });
    assert.equal(e.argument, "bias");
  }
  assert.deepEqual(Object.keys(new tq.Linear(2, 3, { bias: false }).stateDict()), ["weight"]);
  assert.deepEqual(Object.keys(new tq.Linear(2, 3, { bias: true }).stateDict()), [
    "weight",
    "bias",
  ]);

  const lin = new tq.Linear(4, 3);
  const before = snapshot(lin);
  const partial = { weight: tq.randn([3, 4], { seed: 71 }) };
  for (const strict of ["no", 0, 1, null]) {
    const line = thisLine() + 1;
    const call = () => lin.loadStateDict(partial, { strict: strict as unknown as boolean });
    const e = assertTqError(call, {
      op: "loadStateDict",
      kind: "argument",
      includes: ["strict must be true or false", "'strict'", "a boolean"],
      line,
    });
    assert.equal(e.argument, "strict");
    assertUnchanged(lin, before);
  }
  // The booleans themselves keep their meaning.
  assertTqError(() => lin.loadStateDict(partial, { strict: true }), {
    op: "loadStateDict",
    includes: ["missing: bias"],
  });
  assertUnchanged(lin, before);
  assert.deepEqual(lin.loadStateDict(partial, { strict: false }), {
    missing: ["bias"],
    unexpected: [],
  });
  assert.ok(lin.weight === partial.weight && lin.bias === before[1][1]);
});

Deno.test("disposed tensors are rejected when loaded or set, naming the parameter", () => {
  const seq = new tq.Sequential(new tq.Linear(4, 3), new tq.LayerNorm(3));
  const lin = seq.at(0) as tq.Linear;
  const before = snapshot(seq);
  const dict = {
    "0.weight": tq.randn([3, 4], { seed: 81 }),
    "0.bias": tq.randn([3], { seed: 82 }),
    "1.weight": tq.randn([3], { seed: 83 }),
    "1.bias": tq.randn([3], { seed: 84 }),
  };
  dict["0.weight"].dispose();
  let line = thisLine() + 1;
  let call = (): unknown => seq.loadStateDict(dict);
  assertTqError(call, {
    op: "loadStateDict",
    kind: "state",
    includes: ["disposed tensors: 0.weight (float32 [3, 4])"],
    line,
  });
  assertUnchanged(seq, before);
  // Non-strict loads check the tensors they would use too.
  call = () => seq.loadStateDict({ "0.weight": dict["0.weight"] }, { strict: false });
  assertTqError(call, { op: "loadStateDict", kind: "state", includes: ["0.weight"] });
  assertUnchanged(seq, before);
  // With other problems the error lists them all and is an argument error.
  dict["1.bias"].dispose();
  call = () => seq.loadStateDict({ ...dict, "1.weight": tq.randn([4], { seed: 85 }) });
  assertTqError(call, {
    op: "loadStateDict",
    kind: "argument",
    includes: ["1.weight: expected float32 [3], got float32 [4]", "0.weight", "1.bias"],
  });
  assertUnchanged(seq, before);

  // Setters and setParameter.
  const w = tq.randn([3, 4], { seed: 86 });
  w.dispose();
  line = thisLine() + 1;
  call = () => (lin.weight = w);
  const e = assertTqError(call, {
    op: "setParameter",
    kind: "state",
    includes: ["disposed", "'weight'", "a disposed float32 tensor of shape [3, 4]"],
    line,
  });
  assert.equal(e.argument, "weight");
  const b = tq.randn([3], { seed: 87 });
  b.dispose();
  assertTqError(() => lin.setParameter("bias", b), {
    op: "setParameter",
    kind: "state",
    includes: ["'bias'"],
  });
  assertUnchanged(seq, before);
  const x = tq.randn([2, 4], { seed: 88 });
  assert.deepEqual(
    lin.forward(x).dataSync(),
    x.matmul(before[0][1].transpose()).add(before[1][1]).dataSync(),
  );
});

// The line of Holder's registerModule call: the user's line that a registerModule error names.
let holdLine = 0;

class Holder extends tq.Module {
  hold(name: string, m: tq.Module): void {
    holdLine = thisLine() + 1;
    this.registerModule(name, m);
  }
  forward(x: tq.Tensor): tq.Tensor {
    return x;
  }
}

Deno.test("registerModule rejects cycles, so walks over a module end; shared modules stay", () => {
  const a = new Holder();
  let call = () => a.hold("self", a);
  let e = assertTqError(call, {
    op: "registerModule",
    kind: "argument",
    includes: ["registering Holder as 'self' of Holder would make a cycle: it is this module"],
  });
  assert.equal(e.callSite?.line, holdLine);
  assert.equal(e.argument, "module");
  assert.deepEqual(a.children(), []);

  // a → b → c → (a rejected): the error names where c finds a.
  const b = new Holder();
  const c = new Holder();
  const lin = new tq.Linear(2, 2);
  b.hold("c", c);
  c.hold("lin", lin);
  a.hold("b", b);
  call = () => c.hold("back", a);
  e = assertTqError(call, {
    op: "registerModule",
    kind: "argument",
    includes: ["as 'back' of Holder would make a cycle", "it contains this module at 'b.c'"],
  });
  assert.equal(e.callSite?.line, holdLine);
  assert.deepEqual(c.children().map(([n]) => n), ["lin"]);
  // Every walk still works on the unchanged tree.
  assert.deepEqual(Object.keys(a.stateDict()), ["b.c.lin.weight", "b.c.lin.bias"]);
  assert.equal(a.parameters().length, 2);
  assert.deepEqual(a.parameterSpecs().map(([n]) => n), ["b.c.lin.weight", "b.c.lin.bias"]);
  assert.deepEqual(tq.namedModules(a).map(([n]) => n), ["", "b", "b.c", "b.c.lin"]);
  const w = tq.randn([2, 2], { seed: 91 });
  a.loadStateDict({ "b.c.lin.weight": w, "b.c.lin.bias": tq.randn([2], { seed: 92 }) });
  assert.ok(lin.weight === w);

  // A module registered twice (no cycle) is allowed and listed under both names.
  const shared = new tq.Linear(2, 2);
  const twice = new Holder();
  twice.hold("p", shared);
  twice.hold("q", shared);
  assert.deepEqual(Object.keys(twice.stateDict()), ["p.weight", "p.bias", "q.weight", "q.bias"]);
  assert.equal(twice.parameters().length, 2);

  // Not a module.
  call = () => a.hold("x", {} as tq.Module);
  assertTqError(call, {
    op: "registerModule",
    kind: "argument",
    includes: ["'module'", "got Object"],
  });
});
