/**
 * Autotune picks kept in a JSON file ({@link setLtTuningFile}), so that another process uses the
 * same kernels without timing them again: cuBLASLt's algorithms, and the tile configuration of
 * our own int8 GEMM (or cuBLASLt instead of it). Timing picks among candidates a few percent
 * apart differently from run to run (and a process under a kernel profiler, whose launches are
 * slow, times its candidates wrongly); a file makes the choice repeatable.
 *
 * Picks are stored per device identity (compute capability, SM count, L2 size and cuBLASLt
 * version) and problem. A cuBLASLt pick holds the algorithm's bytes and is used only when the
 * heuristic still offers that exact algorithm at that index; a kernel configuration is stored
 * by name ({@link SavedVariant}), used while that configuration exists. The file is read once,
 * when set, and rewritten whole at each new pick: processes sharing a file at the same time may
 * drop each other's new picks (the last write wins), which only means those problems are timed
 * again later.
 * @module
 */
import { ltVersion } from "../../../ffi/cublaslt.ts";
import { TensorqError } from "../../errors.ts";
import { describeValue } from "../../shape.ts";
import type { CudaDevice } from "./device.ts";

/** A pick as stored: the heuristic's candidate index, its algorithm bytes (hex) and time. */
export interface LtSavedPick {
  index: number;
  algo: string;
  ms?: number;
}

/** A choice among our own kernel's configurations as stored: its name and time. */
export interface SavedVariant {
  variant: string;
  ms?: number;
}

const FORMAT = "tensorq-cublaslt-tuning";

interface TuningFile {
  format: typeof FORMAT;
  version: 1;
  /** Device identity → problem key → pick. */
  devices: Record<string, Record<string, LtSavedPick | SavedVariant>>;
}

let path: string | undefined;
let file: TuningFile = emptyFile();

function emptyFile(): TuningFile {
  return { format: FORMAT, version: 1, devices: {} };
}

/**
 * Keeps autotune picks in the JSON file at `filePath`: picks already there are used without
 * timing (where the device, the cuBLASLt version and the heuristic's candidate still match),
 * and each new pick is added to the file as it is made. A missing file is created at the
 * first pick. `undefined` stops using a file (picks already made stay in this process).
 */
export function setLtTuningFile(filePath: string | undefined): void {
  if (filePath !== undefined && (typeof filePath !== "string" || filePath === "")) {
    throw new TensorqError("the tuning file must be a non-empty path", {
      op: "setTuningFile",
      kind: "argument",
      argument: "path",
      expected: "a file path",
      actual: describeValue(filePath),
    });
  }
  if (filePath === undefined) {
    path = undefined;
    file = emptyFile();
    return;
  }
  let text: string | undefined;
  try {
    text = Deno.readTextFileSync(filePath);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new TensorqError(`could not read the tuning file ${filePath}: ${message(e)}`, {
        op: "setTuningFile",
        kind: "io",
        cause: e,
      });
    }
  }
  file = text === undefined ? emptyFile() : parse(filePath, text);
  path = filePath;
}

function parse(filePath: string, text: string): TuningFile {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TensorqError(`the tuning file ${filePath} is not JSON: ${message(e)}`, {
      op: "setTuningFile",
      kind: "io",
      cause: e,
    });
  }
  const f = json as Partial<TuningFile> | null;
  if (
    f === null || typeof f !== "object" || f.format !== FORMAT || f.version !== 1 ||
    typeof f.devices !== "object" || f.devices === null
  ) {
    throw new TensorqError(`${filePath} is not a tensorq cuBLASLt tuning file`, {
      op: "setTuningFile",
      kind: "io",
      expected: `{"format": "${FORMAT}", "version": 1, "devices": {...}}`,
      actual: text.slice(0, 80),
    });
  }
  return f as TuningFile;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** What a pick depends on besides the problem: the GPU's kind and the library's version. */
function identity(device: CudaDevice): string {
  const [major, minor] = device.computeCapability;
  return `sm_${major}${minor} ${device.smCount} SMs L2 ${device.l2Bytes} cuBLASLt ${ltVersion()}`;
}

/** The saved pick of `key` on `device`, when a tuning file is in use and holds one. */
export function savedLtPick(device: CudaDevice, key: string): LtSavedPick | undefined {
  if (path === undefined) return undefined;
  const pick = file.devices[identity(device)]?.[key] as Partial<LtSavedPick> | undefined;
  if (
    !pick || !Number.isInteger(pick.index) || pick.index! < 0 || typeof pick.algo !== "string"
  ) return undefined;
  return pick as LtSavedPick;
}

/** Adds a pick to the tuning file (rewritten whole, through a temporary file). */
export function recordLtPick(device: CudaDevice, key: string, pick: LtSavedPick): void {
  record(device, key, pick);
}

/** The saved kernel configuration of `key` on `device`, when the tuning file holds one. */
export function savedVariant(device: CudaDevice, key: string): SavedVariant | undefined {
  if (path === undefined) return undefined;
  const pick = file.devices[identity(device)]?.[key] as Partial<SavedVariant> | undefined;
  return pick && typeof pick.variant === "string" ? pick as SavedVariant : undefined;
}

/** Adds a kernel configuration to the tuning file. */
export function recordVariant(device: CudaDevice, key: string, pick: SavedVariant): void {
  record(device, key, pick);
}

function record(device: CudaDevice, key: string, pick: LtSavedPick | SavedVariant): void {
  if (path === undefined) return;
  const id = identity(device);
  (file.devices[id] ??= {})[key] = pick;
  const tmp = `${path}.tmp-${Deno.pid}`;
  try {
    Deno.writeTextFileSync(tmp, JSON.stringify(file, null, 1) + "\n");
    Deno.renameSync(tmp, path);
  } catch (e) {
    throw new TensorqError(`could not write the tuning file ${path}: ${message(e)}`, {
      op: "setTuningFile",
      kind: "io",
      cause: e,
    });
  }
}

/** Lowercase hex of bytes (an algorithm's opaque descriptor). */
export function hexOf(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
