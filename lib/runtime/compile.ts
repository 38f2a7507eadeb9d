/**
 * `compile()`: trace a function of tensors into an {@link Executable} that runs without
 * re-tracing. Each input is described by {@link inputInfo}; a dimension may be a range
 * `[min, opt, max]`. The function is traced once per concrete input shape (at compile time for
 * the `opt` shapes, later on first use of another shape in range) and lowered to a plan; on
 * CUDA each shape's run is recorded as a CUDA graph and replayed on every call.
 *
 * A replay writes fixed output buffers. The results of a call are views of them, lent until
 * the next call of the same shape: that call first moves a result still alive into memory of
 * its own (a copy), so results disposed or collected in between cost nothing, and kept ones
 * never change. A recording that reads a lent value as a constant moves it out at trace time
 * (it keeps the address it reads).
 *
 * Tensors the function reads from outside (module weights, constants) are fixed when a shape is
 * traced, like the ops themselves: that is what lets a recording be replayed. After changing
 * them, compile again or call {@link Executable.reset}, which drops every traced shape so that
 * each is traced anew, with the current values.
 * @module
 */
import { checkDType, type DType } from "../dtype.ts";
import { parseDevice } from "../device.ts";
import {
  type BuiltOp,
  builtOpRecord,
  checkBoolean,
  evaluating,
  fmtShape,
  TensorqError,
} from "../errors.ts";
import { type DeviceBuffer, Node } from "../graph/node.ts";
import type { Plan, ReplayablePlan } from "../backends/backend.ts";
import { checkKnownKeys, describeValue, numel } from "../shape.ts";
import { Tensor } from "../tensor.ts";
import { checkTensor } from "../ops/op.ts";
import { backendOf, planFor, traceGraph } from "./evaluate.ts";

/** One dimension: a fixed extent or a `[min, opt, max]` range. */
export type DimSpec = number | readonly [min: number, opt: number, max: number];

/** What an executable's input looks like. */
export interface InputInfo {
  /** Extents or ranges per dimension. */
  readonly shape: readonly DimSpec[];
  /** Element type. */
  readonly dtype: DType;
}

/** Describes a compiled function's input: `inputInfo([[1, 8, 32], 768], "float32")`. */
export function inputInfo(shape: readonly DimSpec[], dtype: DType = "float32"): InputInfo {
  const d = checkDType("inputInfo", "dtype", dtype);
  if (!Array.isArray(shape)) {
    throw new TensorqError("shape must be an array", {
      op: "inputInfo",
      kind: "argument",
      argument: "shape",
      actual: typeof shape,
    });
  }
  shape.forEach((dim, i) => {
    const ok = typeof dim === "number"
      ? Number.isInteger(dim) && dim >= 0
      : Array.isArray(dim) && dim.length === 3 && dim.every((v) => Number.isInteger(v) && v >= 0) &&
        dim[0] <= dim[1] && dim[1] <= dim[2];
    if (!ok) {
      throw new TensorqError("invalid dimension", {
        op: "inputInfo",
        kind: "argument",
        argument: `shape[${i}]`,
        expected: "a non-negative integer or [min, opt, max] with min <= opt <= max",
        actual: describeValue(dim),
      });
    }
  });
  return { shape: [...shape], dtype: d };
}

/** Options of {@link compile}. */
export interface CompileOptions {
  /** One {@link InputInfo} per argument of the function. */
  args: readonly InputInfo[];
  /** Device the executable runs on (default "cpu"). */
  device?: string;
  /** Record CUDA graphs on CUDA devices (default true). */
  cudaGraphs?: boolean;
  /**
   * An array of distinct argument indices (integers in `[0, args.length)`) the caller gives up
   * (like JAX's `donate_argnums`): each call consumes
   * (disposes) the tensors passed there, and a result that updates such an argument in place
   * (a `sliceScatter` into it that nothing else reads, say a KV cache slot) may be written
   * into the argument's memory instead of a copy. With CUDA graphs, passing that result back
   * as the same argument on the next call then costs no copy at all: a decode loop that
   * feeds its cache back runs without moving the cache.
   */
  donate?: readonly number[];
}

const OPTION_KEYS = ["args", "device", "cudaGraphs", "donate"];

/** How many traces are running (compile() inside a traced function nests them). */
let tracing = 0;

/** True when evaluating `nodes` would read a placeholder (a compile() input being traced). */
function readsPlaceholder(nodes: Node[]): boolean {
  const seen = new Set<Node>();
  const stack = [...nodes];
  while (stack.length) {
    const n = stack.pop()!;
    if (n.placeholder) return true;
    if (n.realized || seen.has(n)) continue;
    seen.add(n);
    stack.push(...n.inputs);
  }
  return false;
}

/** A placeholder's (absent) value: traced graphs read it as a leaf. */
class PlaceholderBuffer implements DeviceBuffer {
  readonly disposed = false;
  constructor(readonly device: string, readonly dtype: DType, readonly numel: number) {}
  dispose(): void {}
}

interface ShapeEntry {
  plan: Plan;
  /** Leaf buffers, with placeholders at `argLeaf` positions to be replaced per call. */
  leaves: DeviceBuffer[];
  /** For each argument, its leaf index (or -1 when the function ignores it). */
  argLeaf: number[];
  /** The leaves the function captured (every leaf that is not an argument's), e.g. weights. */
  captured: DeviceBuffer[];
  outShapes: number[][];
  outDTypes: DType[];
  /** CUDA graph path: fixed input/output buffers and the recording. */
  staticInputs?: DeviceBuffer[];
  staticOutputs?: DeviceBuffer[];
  /** For each output, the donated argument whose fixed buffer it is updated in (or -1). */
  outputArg?: number[];
  /** Per output, the last result lent from its fixed buffer (weakly: a collected one is gone). */
  lent?: (WeakRef<Node> | undefined)[];
  replay?: ReplayablePlan;
  single: boolean;
  /** The traced ops, as records (no nodes kept), for the errors their evaluation raises. */
  ops: readonly BuiltOp[];
}

/** A compiled function: call it with tensors of the declared dtypes and shapes in range. */
export interface Executable {
  /** Runs the compiled function. */
  (...args: Tensor[]): Tensor | Tensor[];
  /** The declared inputs. */
  readonly inputInfos: readonly InputInfo[];
  /** The device it runs on. */
  readonly device: string;
  /** Number of concrete shapes traced so far. */
  readonly tracedShapes: number;
  /**
   * Drops every traced shape (plans, CUDA graphs, fixed buffers): the next call of each shape
   * traces the function again, reading the tensors it captures (weights) as they are then.
   * Call it after changing captured state, e.g. `loadStateDict`, so that no shape keeps the
   * old values. Results already returned keep theirs.
   */
  reset(): void;
  /**
   * Frees plans, CUDA graphs and fixed buffers. Calling the executable (or `reset`) afterwards
   * is an error; results already returned stay valid.
   */
  dispose(): void;
}

function concreteOpt(info: InputInfo): number[] {
  return info.shape.map((d) => (typeof d === "number" ? d : d[1]));
}

/**
 * Traces `fn` into an executable. Calls are checked against `args`: dtype, rank, and each
 * extent within its range; a mismatch is a clear error naming the argument and dimension.
 *
 * `fn` runs only when a shape is traced, not on every call, so whatever it reads besides its
 * arguments is a snapshot taken then: tensors it captures (module weights, constants) keep
 * the values they had at that trace, and a random op without a seed (`tq.rand(shape)`) draws
 * once and repeats those values on every call (pass random values as an argument instead).
 * Shapes are traced at different times (the `opt` shapes now, others on first use), so after
 * changing captured state (`loadStateDict`, assigning a weight) compile again or call
 * {@link Executable.reset}: otherwise shapes traced before the change keep the old values
 * while shapes first seen after it use the new ones. An executable cannot be called with the
 * traced inputs of another `compile()`d function: call `fn` itself there.
 */
export function compile(
  fn: (...args: Tensor[]) => Tensor | Tensor[],
  options: CompileOptions,
): Executable {
  if (typeof fn !== "function") {
    throw new TensorqError("expected a function", {
      op: "compile",
      kind: "argument",
      argument: "fn",
      actual: typeof fn,
    });
  }
  if (options && typeof options === "object" && !Array.isArray(options)) {
    // A misspelt option would otherwise be silently ignored.
    checkKnownKeys("compile", options, OPTION_KEYS);
  }
  if (!options || typeof options !== "object" || !Array.isArray(options.args)) {
    throw new TensorqError("options must list the function's inputs", {
      op: "compile",
      kind: "argument",
      argument: "options.args",
      expected: "{ args: [inputInfo(shape, dtype), ...] }",
      actual: options && typeof options === "object" ? typeof options.args : typeof options,
    });
  }
  const infos = options.args.map((a, i) => {
    if (!a || !Array.isArray(a.shape)) {
      throw new TensorqError("each argument needs an inputInfo()", {
        op: "compile",
        kind: "argument",
        argument: `args[${i}]`,
        expected: "inputInfo(shape, dtype)",
        actual: a === null ? "null" : typeof a,
      });
    }
    // Hand-made infos get inputInfo's checks.
    return inputInfo(a.shape, a.dtype ?? "float32");
  });
  const indices = infos.length > 0
    ? `integers in [0, ${infos.length - 1}]`
    : "no index (the function takes no arguments)";
  // Only arrays, like `args`: a Set or a single index is rejected rather than half-supported.
  if (options.donate !== undefined && !Array.isArray(options.donate)) {
    throw new TensorqError("donate must be an array of argument indices", {
      op: "compile",
      kind: "argument",
      argument: "options.donate",
      expected: `an array of distinct ${indices}`,
      actual: describeValue(options.donate),
    });
  }
  const donated = new Set<number>();
  for (const [k, i] of (options.donate ?? []).entries()) {
    if (!Number.isInteger(i) || i < 0 || i >= infos.length || donated.has(i)) {
      throw new TensorqError("donate must list distinct argument indices", {
        op: "compile",
        kind: "argument",
        argument: `options.donate[${k}]`,
        expected: infos.length > 0 ? `an unlisted integer in [0, ${infos.length - 1}]` : indices,
        actual: describeValue(i),
      });
    }
    donated.add(i);
  }
  if (options.cudaGraphs !== undefined) {
    checkBoolean("compile", "options.cudaGraphs", options.cudaGraphs);
  }
  const device = parseDevice("compile", options.device ?? "cpu").name;
  const backend = backendOf(device, "compile");
  const useGraphs = (options.cudaGraphs ?? true) && backend.record !== undefined;
  const entries = new Map<string, ShapeEntry>();
  let disposed = false;

  const trace = (shapes: number[][]): ShapeEntry => {
    const placeholders = shapes.map((shape, i) => {
      const node = new Node("input", [], { index: i }, shape, infos[i].dtype, device);
      node.placeholder = true;
      node.donated = donated.has(i);
      node.realize(new PlaceholderBuffer(device, infos[i].dtype, numel(shape)));
      return new Tensor(node);
    });
    let result: Tensor | Tensor[];
    tracing++;
    try {
      result = fn(...placeholders);
    } finally {
      tracing--;
    }
    const single = !Array.isArray(result);
    const outs = single ? [result as Tensor] : (result as Tensor[]);
    if (outs.length === 0) {
      throw new TensorqError("the compiled function returned no tensors", {
        op: "compile",
        kind: "argument",
        argument: "fn",
        expected: "a Tensor or a non-empty array of Tensors",
        actual: "[]",
      });
    }
    outs.forEach((t, i) => {
      if (!(t instanceof Tensor)) {
        throw new TensorqError("the compiled function must return tensors", {
          op: "compile",
          kind: "argument",
          argument: `output ${i}`,
          actual: typeof t,
        });
      }
      if (t.device !== device) {
        throw new TensorqError("an output is on another device than the executable", {
          op: "compile",
          kind: "device",
          argument: `output ${i}`,
          expected: device,
          actual: t.device,
        });
      }
    });
    // Outputs that are inputs or constants still go through a plan, and a value returned twice
    // gets a second node: wrap them in a copy-free reshape so every output is its own op.
    const seen = new Set<Node>();
    const targets = outs.map((t) => {
      const node = (t.node.realized || seen.has(t.node) ? t.reshape(t.shape) : t).node;
      seen.add(node);
      return node;
    });
    const traced = traceGraph(targets);
    // A recording keeps the addresses it reads: values lent by other executables get their own.
    if (useGraphs) { for (const n of traced.leafNodes) n.detach?.(); }
    const plan = planFor(traced, backend);
    const argLeaf = placeholders.map((p) => traced.leafNodes.indexOf(p.node));
    const leaves = traced.leafNodes.map((n) => n.buffer!);
    const entry: ShapeEntry = {
      plan,
      leaves,
      argLeaf,
      captured: leaves.filter((_, i) => !argLeaf.includes(i)),
      outShapes: outs.map((t) => t.shape),
      outDTypes: outs.map((t) => t.dtype),
      single,
      ops: traced.nodes.map(builtOpRecord),
    };
    return entry;
  };

  const check = (args: Tensor[]): number[][] => {
    if (args.length !== infos.length) {
      throw new TensorqError("wrong number of arguments", {
        op: "Executable",
        kind: "argument",
        expected: String(infos.length),
        actual: String(args.length),
      });
    }
    return args.map((t, i) => {
      const info = infos[i];
      if (!(t instanceof Tensor)) {
        throw new TensorqError("arguments must be tensors", {
          op: "Executable",
          kind: "argument",
          argument: `args[${i}]`,
          actual: typeof t,
        });
      }
      checkTensor("Executable", `args[${i}]`, t); // a disposed argument has no value to read
      if (t.dtype !== info.dtype) {
        throw new TensorqError("argument has the wrong dtype", {
          op: "Executable",
          kind: "dtype",
          argument: `args[${i}]`,
          expected: info.dtype,
          actual: t.dtype,
        });
      }
      if (t.device !== device) {
        throw new TensorqError("argument is on another device", {
          op: "Executable",
          kind: "device",
          argument: `args[${i}]`,
          expected: device,
          actual: t.device,
        });
      }
      const shape = t.shape;
      const ok = shape.length === info.shape.length &&
        shape.every((d, k) => {
          const spec = info.shape[k];
          return typeof spec === "number" ? d === spec : d >= spec[0] && d <= spec[2];
        });
      if (!ok) {
        throw new TensorqError("argument shape is outside the compiled range", {
          op: "Executable",
          kind: "shape",
          argument: `args[${i}]`,
          expected: `[${
            info.shape.map((d) => (typeof d === "number" ? String(d) : `${d[0]}..${d[2]}`)).join(
              ", ",
            )
          }]`,
          actual: fmtShape(shape),
        });
      }
      return shape;
    });
  };

  /**
   * Marks `node`'s buffer `view` as lent from a fixed buffer that the next replay overwrites:
   * its `detach` copies the value into memory of its own (a no-op once the user disposed it).
   */
  const lend = (node: Node, view: DeviceBuffer) => {
    node.detach = () => {
      node.detach = undefined;
      if (node.buffer !== view || view.disposed) return;
      const own = backend.allocate(device, node.dtype, view.numel);
      backend.copy(own, view);
      view.dispose();
      node.buffer = own;
    };
  };

  /** Records the CUDA graph of a shape on its first call, from that call's real inputs. */
  const prepareGraph = (entry: ShapeEntry, inputs: DeviceBuffer[]) => {
    entry.staticInputs = inputs.map((b, i) => {
      const s = backend.allocate(device, infos[i].dtype, b.numel);
      s.mutable = true; // refilled on every call: kernels must not cache what they derive
      backend.copy(s, b);
      return s;
    });
    // A result updated in place in a donated argument's buffer lives in that fixed buffer.
    const updated = entry.plan.updatedLeaves?.() ?? [];
    entry.outputArg = entry.outShapes.map((_, j) =>
      updated[j] === undefined ? -1 : entry.argLeaf.indexOf(updated[j]!)
    );
    entry.lent = entry.outShapes.map(() => undefined);
    entry.staticOutputs = entry.outShapes.map((s, j) => {
      const arg = entry.outputArg![j];
      return arg >= 0
        ? entry.staticInputs![arg]
        : backend.allocate(device, entry.outDTypes[j], numel(s));
    });
    const leaves = bindLeaves(entry, entry.staticInputs);
    // One plain run first, on the real inputs: weight caches and algorithm choices happen
    // outside the recording, and input-dependent errors surface here.
    evaluating((i) => entry.ops[i], () => entry.plan.run(leaves, entry.staticOutputs));
    // Inside evaluating: the recording's checks keep the ops that mark them, for the replays.
    const outputs = entry.staticOutputs;
    entry.replay = evaluating(
      (i) => entry.ops[i],
      () => backend.record!(entry.plan, leaves, outputs),
    );
  };

  const entryFor = (shapes: number[][]): ShapeEntry => {
    const key = JSON.stringify(shapes);
    let entry = entries.get(key);
    if (!entry) {
      entry = trace(shapes);
      entries.set(key, entry);
    }
    return entry;
  };

  // Trace the opt shapes now so errors in fn surface at compile time.
  entryFor(infos.map(concreteOpt));

  const checkLive = () => {
    if (disposed) {
      throw new TensorqError("the executable was disposed; compile the function again", {
        op: "Executable",
        kind: "state",
        expected: "an executable not yet disposed",
        actual: "a disposed executable",
      });
    }
  };

  const exe = ((...args: Tensor[]) => {
    checkLive();
    // Its traced inputs have no values to run on; inlining fn would bypass this executable's
    // snapshot of captured state, so it is an error rather than a silent re-trace.
    if (
      tracing > 0 && readsPlaceholder(args.filter((a) => a instanceof Tensor).map((a) => a.node))
    ) {
      throw new TensorqError(
        "an executable cannot be called inside another compile()d function; call the function " +
          "it compiles instead",
        {
          op: "compile",
          kind: "state",
          expected: "arguments with values",
          actual: "the traced inputs of another compile()d function",
        },
      );
    }
    const shapes = check(args);
    const entry = entryFor(shapes);
    // Tensors the function captured (weights) are read by every call: one disposed since
    // would be freed memory.
    entry.captured.forEach((b) => {
      if (b.disposed) {
        throw new TensorqError(
          "a tensor the compiled function captured (e.g. a weight) was disposed; compile again",
          {
            op: "Executable",
            kind: "state",
            expected: "the captured tensors alive while the compiled function is used",
            actual: `a disposed ${b.dtype} tensor of ${b.numel} elements`,
          },
        );
      }
    });
    for (const a of args) a.evaluate();
    let outs: DeviceBuffer[];
    if (useGraphs && !entry.replay) prepareGraph(entry, args.map((a) => a.node.buffer!));
    if (entry.replay) {
      const statics = entry.staticInputs!;
      // Results lent from the fixed buffers that this call overwrites: those still alive move
      // out first, except the very tensor passed (donated) back into the buffer it was lent
      // from. One disposed (or collected) before this call costs nothing.
      const lent = entry.lent!;
      lent.forEach((ref, j) => {
        const node = ref?.deref();
        const arg = entry.outputArg![j];
        if (node && !(arg >= 0 && node === args[arg].node)) node.detach?.();
        lent[j] = undefined;
      });
      args.forEach((a, i) => {
        if (!statics[i].sharesMemoryWith?.(a.node.buffer!)) {
          backend.copy(statics[i], a.node.buffer!);
        }
      });
      entry.replay.replay();
      // Results are views of the fixed buffers, lent until the next call (see `lend`).
      outs = entry.staticOutputs!.map((s) => s.view!());
    } else {
      // Without a recording the plan reads the arguments' own buffers: a donated one that may
      // be updated in place is first copied, as other views may share its memory.
      const buffers = args.map((a, i) => {
        const b = a.node.buffer!;
        if (!donated.has(i)) return b;
        const own = backend.allocate(device, b.dtype, b.numel);
        backend.copy(own, b);
        return own;
      });
      outs = evaluating((i) => entry.ops[i], () => entry.plan.run(bindLeaves(entry, buffers)));
      buffers.forEach((b, i) => donated.has(i) && b.dispose());
    }
    const tensors = outs.map((b, i) => {
      const node = new Node("constant", [], {}, entry.outShapes[i], entry.outDTypes[i], device);
      node.realize(b);
      if (entry.replay) {
        lend(node, b);
        entry.lent![i] = new WeakRef(node);
      }
      return new Tensor(node);
    });
    for (const i of donated) args[i].dispose();
    return entry.single ? tensors[0] : tensors;
  }) as Executable;
  // Lent results are views: they keep the memory of a fixed buffer freed here.
  const release = () => {
    for (const e of entries.values()) {
      e.replay?.dispose();
      e.staticInputs?.forEach((b) => b.dispose());
      e.staticOutputs?.forEach((b) => b.dispose());
    }
    entries.clear();
  };
  Object.defineProperties(exe, {
    inputInfos: { value: infos },
    device: { value: device },
    tracedShapes: { get: () => entries.size },
    reset: {
      value: () => {
        checkLive();
        release();
      },
    },
    dispose: {
      value: () => {
        release();
        disposed = true;
      },
    },
  });
  return exe;
}

function bindLeaves(entry: ShapeEntry, inputs: DeviceBuffer[]): DeviceBuffer[] {
  const leaves = [...entry.leaves];
  entry.argLeaf.forEach((leaf, i) => {
    if (leaf >= 0) leaves[leaf] = inputs[i];
  });
  return leaves;
}
