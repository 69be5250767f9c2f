/** The shared test vectors written by make_vectors.py, and their settings in this runtime's names. */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { GenerateOptions } from "../src/generate.js";
import type { PolicyOverrides } from "../src/escalation.js";

export interface Case {
  kind: "logits" | "generate" | "chat" | "cascade" | "speculative" | "batch";
  mode?: "attached" | "detached";
  prompt?: string | number[];
  prompts?: number[][]; // a batch's prompts (token ids)
  results?: { token_ids: number[]; text: string | null; finish_reason: string }[]; // a batch's rows
  messages?: { role: string; content: string }[];
  settings?: Record<string, unknown>;
  policy?: Record<string, unknown>;
  last?: number[];
  token_ids?: number[];
  text?: string | null;
  finish_reason?: string;
  served_by?: string;
  escalated?: boolean;
  reason?: string | null;
  shadow_token_ids?: number[];
  draft_tokens?: number;
  stats?: { rounds: number; drafted: number; accepted: number };
}

export interface Vectors {
  root: string;
  bundles: { text: string; ids: string; robot: string; robot_int4: string };
  rng: { seed: number; random: number[] }[];
  external: Record<string, Record<string, [number, number][]>>; // bundle -> graph -> [offset, length] in weights.data
  tokenizer: { text: string; ids: number[]; chat: string }[];
  text: Case[];
  ids: Case[];
  robot: Case[]; // the trained demo on SmolLM2-135M
  robot_int4: Case[]; // its web int4 profile (make_vectors.robot_bundles)
}

/** The vectors of this test run: SHADOW_EDGE_VECTORS names make_vectors.py's output folder. */
export function readVectors(): Vectors {
  const root = process.env.SHADOW_EDGE_VECTORS;
  if (!root) throw new Error("set SHADOW_EDGE_VECTORS to the folder `python js/test/make_vectors.py DIR` wrote");
  return { root, ...JSON.parse(readFileSync(join(root, "vectors.json"), "utf8")) };
}

const GENERATE_KEYS: Record<string, keyof GenerateOptions> = {
  max_new_tokens: "maxNewTokens",
  temperature: "temperature",
  top_k: "topK",
  top_p: "topP",
  repetition_penalty: "repetitionPenalty",
  seed: "seed",
  stop: "stop",
  eos_token_ids: "eosTokenIds",
};

const POLICY_KEYS: Record<string, keyof PolicyOverrides> = {
  marker: "marker",
  marker_ids: "markerIds",
  confidence_threshold: "confidenceThreshold",
  max_mean_entropy: "maxMeanEntropy",
  window: "window",
};

function renamed<T>(data: Record<string, unknown> | undefined, keys: Record<string, string>): T {
  return Object.fromEntries(
    Object.entries(data ?? {}).map(([k, v]) => {
      if (!(k in keys)) throw new Error(`no name for the setting ${k}`);
      return [keys[k], v];
    }),
  ) as T;
}

export const generateOptions = (c: Case) => renamed<GenerateOptions>(c.settings, GENERATE_KEYS);
export const policyOptions = (c: Case) => renamed<PolicyOverrides>(c.policy, POLICY_KEYS);

/** A short name of a case for test titles. */
export function title(c: Case): string {
  return `${c.kind} ${c.mode ?? ""} ${JSON.stringify(c.prompt ?? c.messages ?? c.prompts)} ${JSON.stringify(c.settings ?? {})} ${JSON.stringify(c.policy ?? {})}`;
}
