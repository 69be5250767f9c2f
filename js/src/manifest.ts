/** The bundle manifest (manifest.json), read as shadow_edge/bundle.py reads it: the only contract
 * between the Python exporter and this runtime. Only the fields the runtime uses are typed. */

import { BundleError } from "./errors.js";

export const FORMAT_NAME = "shadow-edge-bundle";
export const FORMAT_VERSION = 1;
export const MANIFEST_FILE = "manifest.json";

export const SHADOW_GRAPH = "shadow";
export const SHADOW_LM_GRAPH = "shadow_lm";
export const BACKBONE_GRAPH = "backbone";
export const BASE_LM_GRAPH = "base_lm";
export const SHADOW_HEAD_GRAPH = "shadow_head";

export type Mode = "attached" | "detached" | "base";
export const MODE_GRAPHS: Record<Mode, string[]> = {
  attached: [SHADOW_GRAPH, BACKBONE_GRAPH],
  detached: [SHADOW_LM_GRAPH],
  base: [BASE_LM_GRAPH],
};
/** The cascade's graphs: the shadow and its head answer first; a local escalation adds the backbone. */
export const CASCADE_GRAPHS = {
  local: [SHADOW_GRAPH, SHADOW_HEAD_GRAPH, BACKBONE_GRAPH],
  remote: [SHADOW_GRAPH, SHADOW_HEAD_GRAPH],
};

export const SHADOW_STATES = "shadow_states";
export const LOGITS_TO_KEEP = "num_logits_to_keep";

export interface TensorSpec {
  name: string;
  dtype: string; // numpy dtype name: "int64", "float32"
  shape: (number | string)[];
}

export interface GraphSpec {
  file: string;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  purpose: string;
  precision?: string;
}

/** One KV cache: per layer a key and a value [batch, num_kv_heads, seq, head_dim]. */
export interface CacheSpec {
  num_layers: number;
  num_kv_heads: number;
  head_dim: number;
  hidden_size: number;
}

export interface ModelSpec {
  architecture: string;
  model_type: string;
  vocab_size: number;
  hidden_size: number;
  max_position_embeddings: number;
  dtype: string;
  base: CacheSpec;
  shadow: CacheSpec;
  bos_token_id: number | null;
  eos_token_ids: number[];
  pad_token_id: number | null;
}

export interface FileEntry {
  size: number;
  sha256: string;
}

export interface Manifest {
  format: string;
  format_version: number;
  model: ModelSpec;
  graphs: Record<string, GraphSpec>;
  files: Record<string, FileEntry>;
  modes: string[];
  generation: Record<string, unknown>;
  tokenizer: Record<string, unknown>;
  escalation: Record<string, unknown>;
}

export function pastNames(cache: CacheSpec): string[] {
  return layerNames(cache, "past_key_values.{}.key", "past_key_values.{}.value");
}

export function presentNames(cache: CacheSpec): string[] {
  return layerNames(cache, "present.{}.key", "present.{}.value");
}

function layerNames(cache: CacheSpec, key: string, value: string): string[] {
  const names: string[] = [];
  for (let i = 0; i < cache.num_layers; i++) names.push(key.replace("{}", `${i}`), value.replace("{}", `${i}`));
  return names;
}

/** Check format and version, and that the sections the runtime reads are there. */
export function parseManifest(text: string): Manifest {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new BundleError(`${MANIFEST_FILE} is not valid JSON (${(error as Error).message})`);
  }
  const record = (typeof data === "object" && data !== null ? data : {}) as Record<string, unknown>;
  if (record.format !== FORMAT_NAME) {
    throw new BundleError(`manifest is not a ${FORMAT_NAME} manifest (format=${JSON.stringify(record.format)})`);
  }
  if (record.format_version !== FORMAT_VERSION) {
    throw new BundleError(
      `bundle format version ${JSON.stringify(record.format_version)} is not supported (this shadow-edge reads version ${FORMAT_VERSION})`,
      "re-export the checkpoint with a matching version of shadow-edge",
    );
  }
  for (const key of ["model", "graphs", "files", "modes"]) {
    if (typeof record[key] !== "object" || record[key] === null) {
      throw new BundleError(`manifest is malformed: no ${JSON.stringify(key)} section`);
    }
  }
  const model = record.model as Record<string, unknown>;
  for (const key of ["vocab_size", "max_position_embeddings", "base", "shadow"]) {
    if (model[key] === undefined) throw new BundleError(`manifest is malformed: model.${key} is missing`);
  }
  return {
    generation: {},
    tokenizer: {},
    escalation: {},
    ...record,
  } as unknown as Manifest;
}

/** The KV cache a graph reads and writes: the base's for backbone/base_lm, else the shadow's. */
export function cacheFor(model: ModelSpec, graph: string): CacheSpec {
  return graph === BACKBONE_GRAPH || graph === BASE_LM_GRAPH ? model.base : model.shadow;
}

/** The weight files of the bundle (external data every graph may reference). */
export function weightFiles(manifest: Manifest): string[] {
  return Object.keys(manifest.files).filter((name) => name.endsWith(".data"));
}

/** The files the named graphs need (their .onnx files and the weights), plus the tokenizer. */
export function filesFor(manifest: Manifest, graphs: string[], purpose: string): string[] {
  const missing = graphs.filter((g) => !(g in manifest.graphs));
  if (missing.length) {
    throw new BundleError(
      `the manifest has no ${missing.join(", ")} graph, which ${purpose} needs`,
      "re-export the checkpoint with this version of shadow-edge",
    );
  }
  const names = graphs.map((g) => manifest.graphs[g].file).concat(weightFiles(manifest));
  const tokenizer = manifest.tokenizer?.file;
  if (typeof tokenizer === "string" && tokenizer) names.push(tokenizer);
  for (const name of names) {
    if (!(name in manifest.files)) throw new BundleError(`manifest lists no file ${JSON.stringify(name)}`);
    checkRelative(name);
  }
  return [...new Set(names)];
}

/** Refuse a file name that points outside the bundle. */
export function checkRelative(name: string): string {
  const parts = name.split(/[\\/]/);
  if (name.startsWith("/") || /^[a-zA-Z]:/.test(name) || parts.includes("..")) {
    throw new BundleError(`manifest names a file outside the bundle: ${JSON.stringify(name)}`);
  }
  return name;
}
