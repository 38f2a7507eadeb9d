/**
 * Errors raised by tensorq, with the caller's source location.
 *
 * Every check runs when the user calls an op, so the first stack frame outside the library
 * is the line that made the mistake. That frame is named in the message. A check that needs
 * the data (an index out of range) runs when the op is evaluated: its error names the line
 * that built the op, and the line that evaluated it.
 * @module
 */

/** Directory URLs whose frames belong to the library (skipped when finding the caller). */
const LIBRARY_DIRS: string[] = [
  new URL("../lib/", import.meta.url).href,
  new URL("../ffi/", import.meta.url).href,
  new URL("../kernels/", import.meta.url).href,
  new URL("../mod.ts", import.meta.url).href,
];

/** A source location: `file:line:column` of the user's call. */
export interface CallSite {
  /** File URL or path of the frame. */
  file: string;
  /** 1-based line. */
  line: number;
  /** 1-based column. */
  column: number;
}

// Runtime-internal frames (`ext:`, `node:`) are matched whole, so that their path part is not
// taken for a user's file (`ext:deno_web/01_console.js` is not `/01_console.js`).
const FRAME_RE = /\(?((?:file|https?|jsr|npm|data|ext|node):[^\s()]+?|\/[^\s()]+?):(\d+):(\d+)\)?$/;

function isLibraryFrame(file: string): boolean {
  return LIBRARY_DIRS.some((dir) => file.startsWith(dir)) || file.startsWith("ext:") ||
    file.startsWith("node:");
}

/** Parses a V8 stack string and returns the first frame outside the library. */
export function callerFromStack(stack: string | undefined): CallSite | undefined {
  if (!stack) return undefined;
  for (const raw of stack.split("\n").slice(1)) {
    const m = FRAME_RE.exec(raw.trim());
    if (!m) continue;
    const file = m[1];
    if (isLibraryFrame(file)) continue;
    return { file, line: Number(m[2]), column: Number(m[3]) };
  }
  return undefined;
}

/** Captures the current stack cheaply (V8 formats it only if `stack` is read). */
export function captureTrace(): { stack?: string } {
  const holder: { stack?: string } = {};
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 50;
  Error.captureStackTrace(holder);
  Error.stackTraceLimit = limit;
  return holder;
}

let sharedTrace: { stack?: string } | undefined;

/**
 * Runs `fn` with one captured stack standing for every graph node it creates, instead of one
 * capture per node (a few microseconds each: most of an eager forward's host time). Only for
 * library code that calls no user code: the first frame outside the library, the only one
 * a node's `callSite` reads, is then the user's call into the library for all of them.
 */
export function withSharedTrace<T>(fn: () => T): T {
  if (sharedTrace) return fn();
  sharedTrace = captureTrace();
  try {
    return fn();
  } finally {
    sharedTrace = undefined;
  }
}

/** True inside {@link withSharedTrace}. */
export function tracesShared(): boolean {
  return sharedTrace !== undefined;
}

/** The stack to keep with a new graph node: the shared one inside {@link withSharedTrace}. */
export function nodeTrace(): { stack?: string } {
  return sharedTrace ?? captureTrace();
}

/** Returns the caller of the current library function (first frame outside the library). */
export function captureCallSite(): CallSite | undefined {
  return callerFromStack(captureTrace().stack);
}

/** Formats a call site as `file:line:column`, with `file://` URLs shown as paths. */
export function formatCallSite(site: CallSite | undefined): string {
  if (!site) return "<unknown>";
  const file = site.file.startsWith("file://")
    ? decodeURIComponent(new URL(site.file).pathname)
    : site.file;
  return `${file}:${site.line}:${site.column}`;
}

/** Which family an error belongs to, for programmatic handling. */
export type ErrorKind =
  | "shape"
  | "dtype"
  | "axis"
  | "argument"
  | "device"
  | "cuda"
  | "io"
  | "state"
  | "unsupported";

/** Details attached to a {@link TensorqError}. */
export interface TensorqErrorDetails {
  /** The op or API that failed (e.g. `matmul`, `loadSafetensors`, `cuMemAlloc`). */
  op: string;
  /** The family of the error. */
  kind: ErrorKind;
  /** The argument at fault, if any. */
  argument?: string;
  /** What was expected, in words. */
  expected?: string;
  /** What was received, in words. */
  actual?: string;
  /** A call site to report instead of the current stack's caller. */
  callSite?: CallSite;
  /** An underlying error. */
  cause?: unknown;
}

/**
 * The one error class of tensorq. The message reads
 * `op: problem (argument 'x': expected ..., got ...) at file:line:col`.
 */
export class TensorqError extends Error {
  /** The op or API that failed. */
  readonly op: string;
  /** The family of the error. */
  readonly kind: ErrorKind;
  /** The argument at fault, if any. */
  readonly argument?: string;
  /** Expected value or form, in words. */
  readonly expected?: string;
  /** Received value or form, in words. */
  readonly actual?: string;
  /**
   * The user's call site, when it could be found: the call that was given the bad input, or for
   * an error found from the data while evaluating, the call that built the op.
   */
  readonly callSite?: CallSite;

  /** Creates an error; the caller's location is captured from the current stack. */
  constructor(message: string, details: TensorqErrorDetails) {
    details ??= { op: "tensorq", kind: "argument" };
    const parts = { message: String(message), details };
    const site = details.callSite ?? captureCallSite();
    let text = `${details.op}: ${String(message)}`;
    const detail = [
      details.expected !== undefined ? `expected ${details.expected}` : "",
      details.actual !== undefined ? `got ${details.actual}` : "",
    ].filter(Boolean).join(", ");
    if (details.argument !== undefined) {
      text += ` (argument '${details.argument}'${detail ? `: ${detail}` : ""})`;
    } else if (detail) text += ` (${detail})`;
    text += ` at ${formatCallSite(site)}`;
    super(text, details.cause !== undefined ? { cause: details.cause } : undefined);
    this.name = "TensorqError";
    this.op = details.op;
    this.kind = details.kind;
    this.argument = details.argument;
    this.expected = details.expected;
    this.actual = details.actual;
    this.callSite = site;
    errorParts.set(this, parts);
  }
}

/** Each error's message and details as given, for {@link evaluatedAt}. */
const errorParts = new WeakMap<TensorqError, { message: string; details: TensorqErrorDetails }>();

/** An op of a graph being evaluated: its name and the call site that built it. */
export interface BuiltOp {
  /** The op's name. */
  readonly op: string;
  /** Its attributes: a check's `op` attribute names the op it checks for. */
  readonly attrs?: { readonly op?: unknown };
  /** The user's line that built it, if known. */
  readonly callSite?: CallSite;
}

/**
 * The parts of `op` that errors use, as a plain record: unlike a graph node, it keeps no inputs
 * (nor their memory) alive, and two records of one line compare equal with {@link sameBuiltOp}.
 */
export function builtOpRecord(op: BuiltOp): BuiltOp {
  const checked = op.attrs?.op;
  return {
    op: op.op,
    ...(typeof checked === "string" ? { attrs: { op: checked } } : {}),
    callSite: op.callSite,
  };
}

/** True when `a` and `b` are the same op built at the same call site. */
export function sameBuiltOp(a: BuiltOp | undefined, b: BuiltOp | undefined): boolean {
  if (!a || !b) return a === b;
  return a.op === b.op && a.attrs?.op === b.attrs?.op && !!a.callSite &&
    sameSite(a.callSite, b.callSite);
}

/** The graph being evaluated: its traced op `i` is `opAt(i)`; `op` is the one running now. */
let evaluation: { opAt: (i: number) => BuiltOp | undefined; op?: number } | undefined;

/**
 * Runs a plan (`run`) whose traced ops are `opAt(i)`. An argument error that an op raises
 * while it runs (an index out of range, known only from the data) is reported at the line
 * that built the op, naming the line that evaluated it as well.
 */
export function evaluating<T>(opAt: (i: number) => BuiltOp | undefined, run: () => T): T {
  const outer = evaluation;
  evaluation = { opAt };
  try {
    return run();
  } catch (e) {
    throw e instanceof TensorqError ? evaluatedAt(e, runningBuiltOp(), "evaluated") : e;
  } finally {
    evaluation = outer;
  }
}

/** Called by a plan before each step: the traced op the step computes, if it is one op's. */
export function runningOp(i: number | undefined): void {
  if (evaluation) evaluation.op = i;
}

/** The op now running inside {@link evaluating}, when a plan step computes one traced op. */
export function runningBuiltOp(): BuiltOp | undefined {
  const e = evaluation;
  return e && e.op !== undefined ? e.opAt(e.op) : undefined;
}

/**
 * `error`, raised while `built` ran, reported at the line that built it; its message names the
 * line where it was found: the evaluation (`"evaluated"`), or on a GPU the read of a result
 * that surfaced a device-side check (`"read"`). Errors of another op, of other kinds than
 * `argument` (the data's), or given their site already come back unchanged.
 */
export function evaluatedAt(
  error: TensorqError,
  built: BuiltOp | undefined,
  how: "evaluated" | "read",
): TensorqError {
  const parts = errorParts.get(error);
  const site = built?.callSite;
  if (!site || (built.op !== error.op && built.attrs?.op !== error.op)) return error;
  if (error.kind !== "argument") return error;
  if (!parts || parts.details.callSite || sameSite(site, error.callSite)) return error;
  const found = error.callSite ? `, found when ${how} at ${formatCallSite(error.callSite)}` : "";
  return new TensorqError(`${parts.message}${found}`, {
    ...parts.details,
    callSite: site,
    cause: parts.details.cause ?? error,
  });
}

function sameSite(a: CallSite, b: CallSite | undefined): boolean {
  return b !== undefined && a.file === b.file && a.line === b.line && a.column === b.column;
}

/**
 * The message of `error` for embedding in another error's message: a {@link TensorqError}'s
 * without its trailing ` at file:line:col`, since the outer error names the call site itself.
 */
export function messageWithoutCallSite(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  if (error instanceof TensorqError) {
    const suffix = ` at ${formatCallSite(error.callSite)}`;
    if (error.message.endsWith(suffix)) return error.message.slice(0, -suffix.length);
  }
  return error.message;
}

/**
 * Words shared by the errors of reading a value while `compile()` traces (a compile input, or
 * anything computed from one): code that must tell these errors apart tests for them.
 */
export const TRACED_NO_VALUE = "no value while the function is traced";

/** True for an error raised by reading a value while `compile()` traces. */
export function isTracedValueError(e: unknown): boolean {
  return e instanceof TensorqError && e.kind === "state" && e.message.includes(TRACED_NO_VALUE);
}

/** Returns `value` if it is a boolean; otherwise throws naming `argument` of `op`. */
export function checkBoolean(op: string, argument: string, value: unknown): boolean {
  if (typeof value !== "boolean") {
    throw new TensorqError(`${argument} must be true or false`, {
      op,
      kind: "argument",
      argument,
      expected: "a boolean",
      actual: typeof value === "string" ? JSON.stringify(value) : String(value),
    });
  }
  return value;
}

/** Formats a shape as `[2, 3]`. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}
