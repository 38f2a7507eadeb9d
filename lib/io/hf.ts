/**
 * Hugging Face checkpoint directories: `config.json` plus either one `model.safetensors` or
 * shards listed by `model.safetensors.index.json` (its `weight_map` maps each tensor name to
 * a shard file). {@link loadHfCheckpoint} reads the config and the headers it needs; shards
 * are opened lazily, each once, when one of their tensors is first read.
 *
 * @example
 * ```ts
 * import { loadHfCheckpoint } from "./hf.ts";
 * using ckpt = loadHfCheckpoint("examples/gpt2/assets/tiny-shakespeare-gpt2");
 * const wte = ckpt.tensor("transformer.wte.weight"); // [vocab, dim]
 * ```
 * @module
 */
import type { DType } from "../dtype.ts";
import { messageWithoutCallSite, TensorqError } from "../errors.ts";
import { describeValue, optionsOf } from "../shape.ts";
import type { Tensor } from "../tensor.ts";
import {
  filePath,
  LOAD_OPTIONS,
  type LoadOptions,
  loadSafetensors,
  type SafetensorsTensors,
} from "./tensors.ts";

const OP = "loadHfCheckpoint";
const CONFIG = "config.json";
const SINGLE = "model.safetensors";
const INDEX = "model.safetensors.index.json";

function ioError(message: string, extra: { argument?: string; cause?: unknown } = {}) {
  return new TensorqError(message, { op: OP, kind: "io", ...extra });
}

function joinPath(dir: string, file: string): string {
  return dir.endsWith("/") ? dir + file : `${dir}/${file}`;
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Refuses a path that is not a directory, e.g. the model file given instead of its folder. */
function checkDirectory(path: string): void {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (cause) {
    if (cause instanceof Deno.errors.NotFound) {
      throw ioError(`checkpoint directory ${path} does not exist`, { argument: "dir", cause });
    }
    throw ioError(`cannot read checkpoint directory ${path}: ${messageWithoutCallSite(cause)}`, {
      argument: "dir",
      cause,
    });
  }
  if (!info.isDirectory) {
    const parent = path.replace(/\/+$/, "").replace(/\/[^/]*$/, "") || "/";
    throw ioError(
      `${path} is a file, not a checkpoint directory (the directory that holds ${CONFIG} and ` +
        `the weights${path.includes("/") ? `, e.g. ${parent}` : ""})`,
      { argument: "dir" },
    );
  }
}

function readJson(path: string, what: string): unknown {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (cause) {
    throw ioError(`cannot read ${what} ${path}: ${messageWithoutCallSite(cause)}`, { cause });
  }
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw ioError(`${what} ${path} is not valid JSON: ${messageWithoutCallSite(cause)}`, {
      cause,
    });
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A checkpoint directory opened by {@link loadHfCheckpoint}. */
export class HfCheckpoint {
  /** The directory. */
  readonly dir: string;
  /** The parsed `config.json`. */
  readonly config: Record<string, unknown>;
  /** True when the weights are split into shards listed by an index file. */
  readonly sharded: boolean;
  /** Tensor name → shard file name (relative to `dir`). */
  readonly #shardOf: Map<string, string>;
  /** Opened shards by file name. */
  readonly #open = new Map<string, SafetensorsTensors>();
  // After close() a read must not reopen a shard that nothing would close again.
  #closed = false;

  /** Wraps a parsed directory (use {@link loadHfCheckpoint}). */
  constructor(
    dir: string,
    config: Record<string, unknown>,
    shardOf: Map<string, string>,
    sharded: boolean,
    opened?: SafetensorsTensors,
  ) {
    this.dir = dir;
    this.config = config;
    this.#shardOf = shardOf;
    this.sharded = sharded;
    if (opened) this.#open.set(SINGLE, opened);
  }

  /** Every tensor name, in file (or index) order. */
  get names(): string[] {
    return [...this.#shardOf.keys()];
  }

  /** The shard files, in order of first appearance. */
  get shards(): string[] {
    return [...new Set(this.#shardOf.values())];
  }

  /** True when the checkpoint holds `name`. */
  has(name: string): boolean {
    return this.#shardOf.has(name);
  }

  /** The file (relative to the directory) that holds `name`. */
  shardOf(name: string): string {
    const file = this.#shardOf.get(name);
    if (file === undefined) throw this.#missing(name);
    return file;
  }

  /** Shape and dtype of a tensor, reading only its shard's header. */
  info(name: string): { shape: number[]; dtype: DType } {
    return this.#fileFor(name).info(name);
  }

  /** Reads one tensor. */
  tensor(name: string, options: LoadOptions = {}): Tensor {
    options = optionsOf<LoadOptions>("HfCheckpoint.tensor", options, LOAD_OPTIONS);
    return this.#fileFor(name).get(name, options);
  }

  /** Closes every opened shard. */
  close(): void {
    for (const f of this.#open.values()) f.close();
    this.#open.clear();
    this.#closed = true;
  }

  /** Closes the shards at the end of a `using` block. */
  [Symbol.dispose](): void {
    this.close();
  }

  #missing(name: unknown): TensorqError {
    const where = this.sharded ? `the weight_map of ${joinPath(this.dir, INDEX)}` : SINGLE;
    // A non-string name (a symbol, a bigint) is described, never interpolated.
    const shown = typeof name === "string" ? `'${name}'` : describeValue(name);
    return ioError(`tensor ${shown} is not in the checkpoint ${this.dir} (not in ${where})`, {
      argument: typeof name === "string" ? name : "name",
    });
  }

  #fileFor(name: string): SafetensorsTensors {
    const shard = this.shardOf(name);
    if (this.#closed) {
      throw new TensorqError(`the checkpoint ${this.dir} is closed`, {
        op: OP,
        kind: "state",
        argument: name,
        expected: "reads before close() (or the end of its using block)",
        actual: "a read after close()",
      });
    }
    let file = this.#open.get(shard);
    if (!file) {
      const path = joinPath(this.dir, shard);
      try {
        file = loadSafetensors(path);
      } catch (cause) {
        throw ioError(
          `cannot open shard ${path} (which should hold '${name}'): ` +
            messageWithoutCallSite(cause),
          { argument: name, cause },
        );
      }
      this.#open.set(shard, file);
    }
    if (!file.has(name)) {
      throw ioError(
        `tensor '${name}' is listed in ${INDEX} under shard '${shard}', but that shard ` +
          `does not hold it`,
        { argument: name },
      );
    }
    return file;
  }
}

/**
 * Opens a Hugging Face checkpoint directory: parses `config.json`, then opens
 * `model.safetensors` (header only) or reads `model.safetensors.index.json` and checks that
 * every shard it names exists. Tensors are read on demand with {@link HfCheckpoint.tensor}.
 */
export function loadHfCheckpoint(dir: string | URL): HfCheckpoint {
  const root = filePath(dir, OP, "dir");
  checkDirectory(root);
  const configPath = joinPath(root, CONFIG);
  if (!isFile(configPath)) throw ioError(`missing ${CONFIG} in ${root}`, { argument: "dir" });
  const config = readJson(configPath, CONFIG);
  if (!isRecord(config)) throw ioError(`${configPath} is not a JSON object`);

  const singlePath = joinPath(root, SINGLE);
  if (isFile(singlePath)) {
    let file: SafetensorsTensors;
    try {
      file = loadSafetensors(singlePath);
    } catch (cause) {
      throw ioError(`cannot open ${singlePath}: ${messageWithoutCallSite(cause)}`, { cause });
    }
    const shardOf = new Map(file.keys().map((k) => [k, SINGLE]));
    return new HfCheckpoint(root, config, shardOf, false, file);
  }

  const indexPath = joinPath(root, INDEX);
  if (!isFile(indexPath)) {
    throw ioError(`no weights in ${root}: expected ${SINGLE} or ${INDEX}`, { argument: "dir" });
  }
  const index = readJson(indexPath, INDEX);
  const map = isRecord(index) ? index.weight_map : undefined;
  if (!isRecord(map)) {
    throw ioError(`${indexPath} has no "weight_map" object (tensor name → shard file)`);
  }
  const shardOf = new Map<string, string>();
  const namesByShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(map)) {
    // A shard is a file of the checkpoint's directory tree: no ".." segment leads out of it.
    if (typeof shard !== "string" || shard === "" || shard.split(/[\\/]/).includes("..")) {
      throw ioError(`${indexPath}: weight_map entry '${name}' is not a shard file name`, {
        argument: name,
      });
    }
    shardOf.set(name, shard);
    const names = namesByShard.get(shard);
    if (names) names.push(name);
    else namesByShard.set(shard, [name]);
  }
  for (const [shard, names] of namesByShard) {
    if (!isFile(joinPath(root, shard))) {
      const shown = names.slice(0, 3).map((n) => `'${n}'`).join(", ");
      const more = names.length > 3 ? `, ... (${names.length} in all)` : "";
      throw ioError(
        `missing shard ${joinPath(root, shard)}, which ${INDEX} lists for ${shown}${more}`,
        { argument: names[0] },
      );
    }
  }
  return new HfCheckpoint(root, config, shardOf, true);
}
