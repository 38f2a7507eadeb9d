/**
 * The {@link Module} base class: named parameters, nested modules, state dicts.
 *
 * A module declares each parameter once with its expected shape and dtype; assigning a tensor
 * of another shape or dtype is an error naming the parameter. `stateDict()` and
 * `loadStateDict()` use dotted names (`h.0.attn.c_attn.weight`).
 *
 * Modules form a tree, or a DAG when one module is registered in several places (tied layers,
 * listed under every name in a state dict). Cycles are rejected by `registerModule`, so every
 * walk over a module's descendants ends.
 * @module
 */
import type { DType } from "../dtype.ts";
import { checkBoolean, fmtShape, TensorqError, tracesShared, withSharedTrace } from "../errors.ts";
import { describeValue, optionsOf, sameShape } from "../shape.ts";
import { disposedDescription, isDisposed, Tensor } from "../tensor.ts";

/** What a parameter must look like. */
export interface ParameterSpec {
  /** Expected shape. */
  shape: readonly number[];
  /** Expected dtype. */
  dtype: DType;
  /** Optional parameters may be unset and may be missing from a state dict. */
  optional?: boolean;
}

/** Options of {@link Module.loadStateDict}. */
export interface LoadStateDictOptions {
  /**
   * Reject missing and unexpected keys (default true; a boolean). Shape/dtype mismatches and
   * disposed tensors always fail.
   */
  strict?: boolean;
}

/** What {@link Module.loadStateDict} did not use or did not find (non-strict mode). */
export interface LoadStateDictResult {
  /** Required parameters absent from the dict. */
  missing: string[];
  /** Keys of the dict that name no parameter. */
  unexpected: string[];
}

/**
 * `value` when it is a boolean, `fallback` when it is undefined; anything else is an argument
 * error of `op` naming `argument` (a truthy string such as "no" must not read as true).
 */
export function booleanOption(
  op: string,
  argument: string,
  value: unknown,
  fallback: boolean,
): boolean {
  return value === undefined ? fallback : checkBoolean(op, argument, value);
}

/** Throws an argument error of `op` unless `value`, passed as `argument`, is a Module. */
export function checkModule(op: string, argument: string, value: unknown): asserts value is Module {
  if (!(value instanceof Module)) {
    throw new TensorqError("expected a Module", {
      op,
      kind: "argument",
      argument,
      expected: "a Module",
      actual: describeValue(value),
    });
  }
}

/** A name prefix must be a string (null or an object would be glued onto every name). */
export function checkPrefix(op: string, prefix: unknown): void {
  if (typeof prefix !== "string") {
    throw new TensorqError("prefix must be a string", {
      op,
      kind: "argument",
      argument: "prefix",
      expected: 'a dotted name such as "transformer" ("" for none)',
      actual: describeValue(prefix),
    });
  }
}

/** The library's own module classes (exactly these constructors, not user subclasses). */
const libraryModules = new WeakSet<abstract new (...args: never[]) => Module>();

/** Marks module classes as the library's: their `forward` runs no user code of its own. */
export function registerLibraryModules(
  ...classes: (abstract new (...args: never[]) => Module)[]
): void {
  for (const c of classes) libraryModules.add(c);
}

/**
 * True when a forward of `root` runs only library code: every module in the tree is of a
 * library class, none has its own `forward` put on the instance, and no Linear has an input
 * observer. Its graph nodes can then share one captured stack (`withSharedTrace`). A library
 * class whose prototype was patched is not detected: nodes made in the patch would name the
 * call into the library instead of the patch's own line.
 */
export function runsOnlyLibraryCode(root: Module): boolean {
  const pending: Module[] = [root];
  for (let m = pending.pop(); m; m = pending.pop()) {
    if (!libraryModules.has(m.constructor as new () => Module)) return false;
    if (Object.hasOwn(m, "forward") || (m as { inputObserver?: unknown }).inputObserver) {
      return false;
    }
    for (const [, child] of m.children()) pending.push(child);
  }
  return true;
}

/**
 * Runs `build` (a forward of `root`) with one captured stack for all its graph nodes when the
 * forward runs only library code ({@link runsOnlyLibraryCode}); otherwise each node captures
 * its own, so that nodes made in user code name the user's line in it.
 */
export function buildSharingTrace<T>(root: Module, build: () => T): T {
  if (tracesShared() || !runsOnlyLibraryCode(root)) return build();
  return withSharedTrace(build);
}

/** Base class of layers and models. */
export abstract class Module {
  readonly #specs = new Map<string, ParameterSpec>();
  readonly #values = new Map<string, Tensor | undefined>();
  readonly #children = new Map<string, Module>();

  /** Declares a parameter with its spec and initial value (undefined for an unset one). */
  protected declareParameter(name: string, spec: ParameterSpec, value?: Tensor): void {
    this.#specs.set(name, spec);
    this.#values.set(name, undefined);
    if (value !== undefined) this.setParameter(name, value);
  }

  /** Removes a parameter declaration (e.g. a scale no longer used after reconfiguration). */
  protected removeParameter(name: string): void {
    this.#specs.delete(name);
    this.#values.delete(name);
  }

  /**
   * Registers a child module under `name` (replacing one registered under it before). A module
   * may be registered in several places, but not inside itself: registering a module that is
   * this one or contains it is an argument error, and nothing changes.
   */
  protected registerModule<M extends Module>(name: string, module: M): M {
    const op = "registerModule";
    checkModule(op, "module", module);
    const path = module.#pathTo(this);
    if (path !== undefined) {
      const where = path === "" ? "it is this module" : `it contains this module at '${path}'`;
      throw new TensorqError(
        `registering ${module.constructor.name} as '${name}' of ${this.constructor.name} ` +
          `would make a cycle: ${where}`,
        {
          op,
          kind: "argument",
          argument: "module",
          expected: "a module that does not contain this one",
          actual: describeValue(module),
        },
      );
    }
    this.#children.set(name, module);
    return module;
  }

  /** The dotted name of `target` under this module ("" for itself), or undefined. */
  #pathTo(target: Module): string | undefined {
    // Shared submodules are searched once: the walk stays linear in the number of modules.
    const seen = new Set<Module>();
    const find = (m: Module, prefix: string): string | undefined => {
      if (m === target) return prefix;
      if (seen.has(m)) return undefined;
      seen.add(m);
      for (const [name, child] of m.#children) {
        const found = find(child, prefix ? `${prefix}.${name}` : name);
        if (found !== undefined) return found;
      }
      return undefined;
    };
    return find(this, "");
  }

  /** The value of a declared parameter (undefined when unset). */
  protected getParameter(name: string): Tensor | undefined {
    return this.#values.get(name);
  }

  /**
   * Throws a state error of `op` naming the first of this module's own parameters that was
   * disposed (a forward would otherwise fail in an op inside it, naming that op's argument).
   */
  protected checkLiveParameters(op: string): void {
    for (const [name, value] of this.#values) {
      if (value && isDisposed(value)) {
        throw new TensorqError(`parameter '${name}' of the layer was disposed`, {
          op,
          kind: "state",
          argument: name,
          expected: "a live tensor (assign a new one to the layer)",
          actual: disposedDescription(value),
        });
      }
    }
  }

  /** The value of a declared parameter; an error naming the module and parameter when unset. */
  protected requireParameter(name: string, op: string): Tensor {
    const v = this.#values.get(name);
    if (v === undefined) {
      throw new TensorqError(`parameter '${name}' of ${this.constructor.name} is not set`, {
        op,
        kind: "state",
        argument: name,
      });
    }
    return v;
  }

  /** Sets a declared parameter after checking its shape and dtype. */
  setParameter(name: string, value: Tensor | undefined): void {
    const spec = this.#specs.get(name);
    if (!spec) {
      throw new TensorqError(`${this.constructor.name} has no parameter ${describeValue(name)}`, {
        op: "setParameter",
        kind: "argument",
        argument: String(name),
        expected: `one of ${[...this.#specs.keys()].join(", ") || "(none)"}`,
      });
    }
    if (value === undefined) {
      this.#values.set(name, undefined);
      return;
    }
    if (!(value instanceof Tensor)) {
      throw new TensorqError("parameter values must be tensors", {
        op: "setParameter",
        kind: "argument",
        argument: name,
        expected: "a Tensor",
        actual: typeof value,
      });
    }
    if (isDisposed(value)) {
      // Caught here, the error names the parameter rather than an op inside a later forward.
      throw new TensorqError("the tensor was disposed", {
        op: "setParameter",
        kind: "state",
        argument: name,
        expected: "a live tensor",
        actual: disposedDescription(value),
      });
    }
    checkAgainstSpec("setParameter", name, spec, value);
    this.#values.set(name, value);
  }

  /** Direct child modules by name. */
  children(): [string, Module][] {
    return [...this.#children];
  }

  /** Every set parameter by dotted name, a tensor shared by several names under each. */
  #allNamedParameters(prefix: string): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [name, value] of this.#values) if (value) out.push([prefix + name, value]);
    for (const [name, child] of this.#children) {
      out.push(...child.#allNamedParameters(`${prefix}${name}.`));
    }
    return out;
  }

  /**
   * Every set parameter of this module and its descendants with dotted names, each tensor
   * once: a tensor shared by several modules (tied weights) is listed under its first name.
   * {@link Module.stateDict} has every name.
   */
  namedParameters(prefix = ""): [string, Tensor][] {
    checkPrefix("Module.namedParameters", prefix);
    const seen = new Set<Tensor>();
    return this.#allNamedParameters(prefix).filter(([, t]) => !seen.has(t) && !!seen.add(t));
  }

  /** Every set parameter of this module and its descendants, each tensor once. */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** Every declared parameter (set or not) with its spec, by dotted name. */
  parameterSpecs(prefix = ""): [string, ParameterSpec][] {
    checkPrefix("Module.parameterSpecs", prefix);
    const out: [string, ParameterSpec][] = [];
    for (const [name, spec] of this.#specs) out.push([prefix + name, spec]);
    for (const [name, child] of this.#children) {
      out.push(...child.parameterSpecs(`${prefix}${name}.`));
    }
    return out;
  }

  /** The parameters as a record of dotted names. */
  stateDict(): Record<string, Tensor> {
    return Object.fromEntries(this.#allNamedParameters(""));
  }

  /**
   * Loads parameters by dotted name. Shape or dtype mismatches and disposed tensors always
   * fail, naming every offending parameter; in strict mode (default) so do missing and
   * unexpected keys. On any error the module is unchanged. The error's kind is `state` when
   * the only problem is disposed tensors, `argument` otherwise.
   */
  loadStateDict(
    dict: Record<string, Tensor>,
    options: LoadStateDictOptions = {},
  ): LoadStateDictResult {
    const op = "loadStateDict";
    if (dict === null || typeof dict !== "object" || Array.isArray(dict)) {
      throw new TensorqError("a state dict is a record of tensors by dotted name", {
        op,
        kind: "argument",
        argument: "dict",
        expected: "Record<string, Tensor>",
        actual: dict === null ? "null" : Array.isArray(dict) ? "an array" : typeof dict,
      });
    }
    const opts = optionsOf<LoadStateDictOptions>(op, options, ["strict"]);
    const strict = booleanOption(op, "strict", opts.strict, true);
    const targets = new Map<string, { module: Module; name: string; spec: ParameterSpec }>();
    const walk = (m: Module, prefix: string) => {
      for (const [name, spec] of m.#specs) targets.set(prefix + name, { module: m, name, spec });
      for (const [name, child] of m.#children) walk(child, `${prefix}${name}.`);
    };
    walk(this, "");
    const missing = [...targets].filter(([k, t]) => !(k in dict) && !t.spec.optional).map(([k]) =>
      k
    );
    const unexpected = Object.keys(dict).filter((k) => !targets.has(k));
    const mismatched: string[] = [];
    const disposed: string[] = [];
    for (const [key, value] of Object.entries(dict)) {
      const t = targets.get(key);
      if (!t) continue;
      if (!(value instanceof Tensor)) {
        mismatched.push(`${key}: not a tensor`);
      } else if (isDisposed(value)) {
        disposed.push(`${key} (${value.dtype} ${fmtShape(value.shape)})`);
      } else if (!sameShape(value.shape, t.spec.shape) || value.dtype !== t.spec.dtype) {
        mismatched.push(
          `${key}: expected ${t.spec.dtype} ${fmtShape(t.spec.shape)}, got ${value.dtype} ${
            fmtShape(value.shape)
          }`,
        );
      }
    }
    const problems: string[] = [];
    if (mismatched.length) problems.push(`wrong shape or dtype: ${mismatched.join("; ")}`);
    if (disposed.length) problems.push(`disposed tensors: ${disposed.join(", ")}`);
    if (strict && missing.length) problems.push(`missing: ${missing.join(", ")}`);
    if (strict && unexpected.length) problems.push(`unexpected: ${unexpected.join(", ")}`);
    if (problems.length) {
      throw new TensorqError(
        `state dict does not fit ${this.constructor.name}: ${problems.join(" | ")}`,
        {
          op,
          kind: disposed.length > 0 && problems.length === 1 ? "state" : "argument",
          argument: "dict",
        },
      );
    }
    for (const [key, value] of Object.entries(dict)) {
      const t = targets.get(key);
      if (t) t.module.#values.set(t.name, value);
    }
    // A strict load is the whole state: optional parameters it lacks (a quantized layer's
    // inputScale) are unset, not kept from before.
    if (strict) {
      for (const [key, t] of targets) {
        if (t.spec.optional && !(key in dict)) t.module.#values.set(t.name, undefined);
      }
    }
    return { missing, unexpected };
  }

  /**
   * Moves every parameter to `device` (in place) and returns this module. A tensor shared by
   * several modules (tied weights) is moved once and stays shared.
   */
  to(device: string): this {
    const moved = new Map<Tensor, Tensor>();
    const move = (m: Module) => {
      for (const [name, value] of m.#values) {
        if (!value) continue;
        let target = moved.get(value);
        if (!target) moved.set(value, target = value.to(device));
        m.#values.set(name, target);
      }
      for (const child of m.#children.values()) move(child);
    };
    move(this);
    return this;
  }

  /** Computes the module's output. */
  abstract forward(...inputs: Tensor[]): Tensor;
}

function checkAgainstSpec(op: string, name: string, spec: ParameterSpec, value: Tensor): void {
  if (!sameShape(value.shape, spec.shape)) {
    throw new TensorqError("parameter has the wrong shape", {
      op,
      kind: "shape",
      argument: name,
      expected: fmtShape(spec.shape),
      actual: fmtShape(value.shape),
    });
  }
  if (value.dtype !== spec.dtype) {
    throw new TensorqError("parameter has the wrong dtype", {
      op,
      kind: "dtype",
      argument: name,
      expected: spec.dtype,
      actual: value.dtype,
    });
  }
}
