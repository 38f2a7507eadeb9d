/**
 * Evaluation: turns the unrealized part of the graph behind some nodes into a structural
 * {@link PlanGraph}, runs the graph passes, lowers it to a backend plan (cached by structure,
 * so evaluating the same shape of graph again does not lower again) and realizes the nodes.
 * @module
 */
import { type Backend, backendFor, type PlanGraph, type ValueRef } from "../backends/backend.ts";
import { parseDevice } from "../device.ts";
import { evaluating, formatCallSite, TensorqError, TRACED_NO_VALUE } from "../errors.ts";
import type { DeviceBuffer, Node } from "../graph/node.ts";
import { passConfigKey, runPasses } from "../graph/passes/mod.ts";
import "../graph/passes/qdq_fusion.ts";
import "../graph/passes/residual_fusion.ts";
import "../graph/passes/attention_views.ts";
import "../graph/passes/attention_qlinear.ts";
import type { Plan } from "../backends/backend.ts";

/** The backend that serves a canonical device name; errors when it cannot run. */
export function backendOf(device: string, op = "evaluate"): Backend {
  const spec = parseDevice(op, device);
  const backend = backendFor(spec.kind);
  if (!backend) {
    throw new TensorqError(`no backend for device '${device}' is loaded`, {
      op,
      kind: "device",
    });
  }
  const why = backend.unavailableReason();
  if (why) {
    throw new TensorqError(`device '${device}' is not available: ${why}`, { op, kind: "device" });
  }
  return backend;
}

/** Statistics of the plan cache, for tests and tuning. */
export interface PlanCacheStats {
  /** Plans built. */
  lowered: number;
  /** Evaluations served by a cached plan. */
  hits: number;
  /** Plans held. */
  size: number;
  /** Plans dropped, least recently used first, to stay within {@link PlanCacheStats.limit}. */
  evicted: number;
  /** Most plans held at once ({@link setPlanCacheLimit}). */
  limit: number;
}

/** Default of {@link setPlanCacheLimit}. */
export const DEFAULT_PLAN_CACHE_LIMIT = 256;

// Insertion order is recency order: a hit moves its entry to the end.
const planCache = new Map<string, { graph: PlanGraph; plan: Plan }>();
const stats = { lowered: 0, hits: 0, evicted: 0 };
let planLimit = DEFAULT_PLAN_CACHE_LIMIT;

/** Returns counts of plan lowering, cache hits and evictions, and the cache's size and limit. */
export function planCacheStats(): PlanCacheStats {
  return { ...stats, size: planCache.size, limit: planLimit };
}

/** Empties the plan cache. */
export function clearPlanCache(): void {
  planCache.clear();
}

/**
 * Sets how many plans the cache keeps (default 256); beyond it the least recently used go.
 * Graphs whose shapes keep changing (an eager decode loop whose cache grows every step) would
 * otherwise add a plan per call for as long as the process runs.
 */
export function setPlanCacheLimit(limit: number): void {
  if (typeof limit !== "number" || !Number.isSafeInteger(limit) || limit < 1) {
    throw new TensorqError("the plan cache limit must be a positive integer", {
      op: "setPlanCacheLimit",
      kind: "argument",
      argument: "limit",
      expected: "a positive integer",
      actual: String(limit),
    });
  }
  planLimit = limit;
  evictPlans();
}

function evictPlans(): void {
  for (const key of planCache.keys()) {
    if (planCache.size <= planLimit) break;
    planCache.delete(key);
    stats.evicted++;
  }
}

/** A structural graph together with its leaf nodes, built from target nodes. */
export interface TracedGraph {
  /** The structure. */
  graph: PlanGraph;
  /** Leaf nodes in leaf order (their buffers are the plan's inputs). */
  leafNodes: Node[];
  /** Op nodes in graph order. */
  nodes: Node[];
  /** The structural key: equal keys mean interchangeable plans. */
  key: string;
}

/**
 * Walks from `targets` back to realized nodes and numbers everything in topological order.
 * Realized nodes become leaves, in first-use order.
 */
export function traceGraph(targets: Node[]): TracedGraph {
  const device = targets[0].device;
  const leafIndex = new Map<Node, number>();
  const nodeIndex = new Map<Node, number>();
  const leafNodes: Node[] = [];
  const order: Node[] = [];
  const keyParts: string[] = [device];

  // Iterative post-order DFS so deep graphs (long generation loops) don't overflow the stack.
  const visit = (root: Node): void => {
    const stack: [Node, number][] = [[root, 0]];
    while (stack.length) {
      const top = stack[stack.length - 1];
      const [n, i] = top;
      if (nodeIndex.has(n) || leafIndex.has(n)) {
        stack.pop();
        continue;
      }
      if (n.buffer?.disposed && n.inputs.length === 0) {
        // Disposed: its memory is gone and its inputs were dropped, nothing to recompute from.
        const made = n.callSite ? ` made at ${formatCallSite(n.callSite)}` : "";
        throw new TensorqError("a tensor this value depends on was disposed", {
          op: n.op,
          kind: "state",
          expected: "every input alive until the values that depend on it are evaluated",
          actual: `a disposed ${n.dtype} tensor of shape [${n.shape.join(", ")}]${made}`,
        });
      }
      if (n.realized) {
        leafIndex.set(n, leafNodes.length);
        leafNodes.push(n);
        keyParts.push(`L${n.dtype}[${n.shape}]${n.op}${n.donated ? "w" : ""}`);
        stack.pop();
        continue;
      }
      if (n.device !== device) {
        throw new TensorqError("inputs are on different devices; move them with .to()", {
          op: n.op,
          kind: "device",
          expected: device,
          actual: n.device,
          callSite: n.callSite,
        });
      }
      if (i < n.inputs.length) {
        top[1] = i + 1;
        stack.push([n.inputs[i], 0]);
        continue;
      }
      stack.pop();
      nodeIndex.set(n, order.length);
      order.push(n);
    }
  };
  for (const t of targets) visit(t);

  const ref = (n: Node): ValueRef =>
    leafIndex.has(n) ? { leaf: leafIndex.get(n)! } : { node: nodeIndex.get(n)! };
  const refKey = (r: ValueRef) => ("leaf" in r ? `l${r.leaf}` : `n${r.node}`);
  const graph: PlanGraph = {
    device,
    leaves: leafNodes.map((n) => ({
      shape: n.shape,
      dtype: n.dtype,
      producer: n.op,
      ...(n.donated ? { writable: true } : {}),
    })),
    nodes: order.map((n, source) => {
      const inputs = n.inputs.map(ref);
      keyParts.push(
        `${n.op}${JSON.stringify(n.attrs)}${n.dtype}[${n.shape}](${inputs.map(refKey)})`,
      );
      return { op: n.op, attrs: n.attrs, shape: n.shape, dtype: n.dtype, inputs, source };
    }),
    outputs: targets.map(ref),
  };
  keyParts.push(`->${graph.outputs.map(refKey)}`);
  return { graph, leafNodes, nodes: order, key: keyParts.join(";") };
}

/** Lowers (or fetches from the cache) the plan for a traced graph. */
export function planFor(traced: TracedGraph, backend: Backend): Plan {
  const key = `${passConfigKey()}|${traced.key}`;
  const cached = planCache.get(key);
  if (cached) {
    stats.hits++;
    planCache.delete(key);
    planCache.set(key, cached);
    return cached.plan;
  }
  const graph = runPasses(traced.graph, traced);
  const plan = backend.lower(graph);
  stats.lowered++;
  planCache.set(key, { graph, plan });
  evictPlans();
  return plan;
}

/**
 * Realizes every node of `targets` that is not yet realized; all must be on one device.
 * Afterwards each target holds its buffer.
 */
export function realize(targets: Node[]): void {
  const pending = [...new Set(targets.filter((n) => !n.realized))];
  if (pending.length === 0) return;
  for (const n of pending) {
    if (n.device !== pending[0].device) {
      throw new TensorqError("cannot evaluate tensors of different devices together", {
        op: "evaluate",
        kind: "device",
        expected: pending[0].device,
        actual: n.device,
      });
    }
  }
  const backend = backendOf(pending[0].device);
  const traced = traceGraph(pending);
  if (traced.leafNodes.some((n) => n.placeholder)) {
    throw new TensorqError(
      `this value depends on a compile() input, which has ${TRACED_NO_VALUE}; only shapes ` +
        "and dtypes are known",
      { op: "evaluate", kind: "state" },
    );
  }
  const plan = planFor(traced, backend);
  const leaves: DeviceBuffer[] = traced.leafNodes.map((n) => n.buffer!);
  const outs = evaluating((i) => traced.nodes[i], () => plan.run(leaves));
  pending.forEach((n, i) => n.realize(outs[i]));
}

/** The graph that evaluating `targets` would run: after the passes, before lowering. */
export function plannedGraph(targets: Node[]): PlanGraph {
  const pending = targets.filter((n) => !n.realized);
  const traced = traceGraph(pending.length ? pending : targets);
  return runPasses(traced.graph, traced);
}
