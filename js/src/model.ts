/** The runtime's public API (shadow_edge/runtimes/model.py): load a bundle through a host, then
 * generate from text or token ids.
 *
 *     const model = await load(host, { mode: "detached" });
 *     (await model.generate("Hello", { maxNewTokens: 32 })).text
 *     await model.generateBatch(["Hello", [1, 2, 3]])        // left-padded, same tokens as one by one
 *     for await (const r of model.stream([1, 2, 3])) console.log(r.token, r.text)
 *     await model.chat([{ role: "user", content: "Hi" }])
 *
 * load() checks the manifest (format and version) and the files the mode needs, and opens sessions
 * only for the mode's graphs: a detached model never opens backbone.onnx. Each call owns its KV
 * caches, so calls may overlap (onnxruntime serializes their runs). */

import { Engine, type Decoder } from "./engine.js";
import { BundleError, GenerationError } from "./errors.js";
import {
  collect,
  type GenerateOptions,
  type GenerationConfig,
  type GenerationContext,
  type GenerationResult,
  type Response,
  collectRows,
  streamRows,
} from "./generate.js";
import type { BundleHost } from "./host.js";
import { MANIFEST_FILE, MODE_GRAPHS, type Manifest, type Mode, parseManifest } from "./manifest.js";
import { type GraphRunner, type LoadOptions, openGraphs } from "./sessions.js";
import { type Message, Tokenizer } from "./tokenizer.js";

export const MODES = Object.keys(MODE_GRAPHS) as Mode[];

export async function readManifest(host: BundleHost): Promise<Manifest> {
  let text: string;
  try {
    text = await host.readText(MANIFEST_FILE);
  } catch (error) {
    throw new BundleError(`no ${MANIFEST_FILE} in ${host.location}: not a shadow-edge bundle (${(error as Error).message})`);
  }
  return parseManifest(text);
}

export interface ModelOptions extends LoadOptions {
  mode?: Mode;
}

/** Open a bundle for generation in `mode` (default "attached"). */
export async function load(host: BundleHost, options: ModelOptions = {}): Promise<ShadowEdgeModel> {
  const mode = options.mode ?? "attached";
  if (!MODES.includes(mode)) throw new RangeError(`mode must be one of ${MODES.join(", ")}, got ${mode}`);
  const manifest = await readManifest(host);
  if (!manifest.modes.includes(mode)) {
    throw new BundleError(`this bundle does not support ${mode} mode (it supports: ${manifest.modes.join(", ")})`);
  }
  const runners = await openGraphs(host, manifest, MODE_GRAPHS[mode], options, `${mode} mode`);
  const tokenizer = await Tokenizer.fromBundle(host, manifest);
  host.loaded?.();
  return new ShadowEdgeModel(manifest, new Engine(mode, runners, manifest.model), runners, tokenizer, mode);
}

const SETTINGS: Record<string, keyof GenerationConfig> = {
  temperature: "temperature",
  top_k: "topK",
  top_p: "topP",
  repetition_penalty: "repetitionPenalty",
};

/** A loaded bundle: prompts, generation defaults, and the calls over one Decoder. */
export class ShadowEdgeModel {
  readonly defaults: GenerationConfig;
  readonly context: GenerationContext;

  constructor(
    readonly manifest: Manifest,
    readonly decoder: Decoder,
    readonly runners: Record<string, GraphRunner>,
    readonly tokenizer: Tokenizer | null,
    readonly mode: string,
  ) {
    const gen = manifest.generation ?? {};
    const defaults: GenerationConfig = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1, stop: [] };
    for (const [key, field] of Object.entries(SETTINGS)) {
      if (typeof gen[key] === "number") (defaults as unknown as Record<string, unknown>)[field] = gen[key];
    }
    this.defaults = defaults;
    const eos = Array.isArray(gen.eos_token_ids) ? (gen.eos_token_ids as number[]) : (manifest.model.eos_token_ids ?? []);
    const vocabSize = manifest.model.vocab_size;
    this.context = {
      vocabSize,
      contextLength: manifest.model.max_position_embeddings,
      defaultMaxNewTokens: typeof gen.max_new_tokens === "number" ? gen.max_new_tokens : 256,
      defaultEos: eos,
      // as the Python runtime picks it: the model's pad id, else the first EOS id, else 0
      padTokenId: [manifest.model.pad_token_id, ...eos].find((t) => typeof t === "number" && t >= 0 && t < vocabSize) ?? 0,
    };
  }

  /** Token ids of a prompt: text goes through the tokenizer (with its special tokens). */
  encode(prompt: string | number[]): number[] {
    if (typeof prompt === "string") {
      if (!this.tokenizer) throw new GenerationError("this bundle has no tokenizer: give token ids instead of text");
      return this.tokenizer.encode(prompt);
    }
    if (!Array.isArray(prompt) || !prompt.every(Number.isInteger)) {
      throw new GenerationError(`a prompt is a string or an array of token ids, got ${JSON.stringify(prompt).slice(0, 80)}`);
    }
    return prompt;
  }

  encodeChat(messages: Message[]): number[] {
    if (!this.tokenizer) throw new GenerationError("chat needs a bundle with a tokenizer; this one takes token ids only");
    return this.tokenizer.encodeChat(messages);
  }

  /** The bundle's generation defaults with `options` applied (undefined values are ignored). */
  config(options: GenerateOptions = {}): GenerationConfig {
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
    return { ...this.defaults, ...given };
  }

  /** Logits of every position of one sequence, computed in one pass: one row per position. */
  async logits(prompt: string | number[]): Promise<Float32Array[]> {
    const ids = this.encode(prompt);
    const out = await this.decoder.forward(this.decoder.start(), [ids], 0);
    const vocab = out.dims[2];
    const data = out.data as Float32Array;
    return ids.map((_, i) => data.slice(i * vocab, (i + 1) * vocab));
  }

  /** One Response per generated token of every row (Response.index), the prompts left-padded into
   * one batch; each row's last has finishReason set. Throws at once on a bad request. */
  streamBatch(prompts: (string | number[])[], options: GenerateOptions = {}): AsyncIterable<Response> {
    if (!Array.isArray(prompts) || !prompts.length) throw new GenerationError("a batch is a non-empty list of prompts");
    return streamRows(this.decoder, this.tokenizer, prompts.map((p) => this.encode(p)), this.config(options), this.context);
  }

  /** One result per prompt: the tokens each would get alone (greedy, or seeded: each row draws from its own generator). */
  generateBatch(prompts: (string | number[])[], options: GenerateOptions = {}): Promise<GenerationResult[]> {
    return collectRows(this.streamBatch(prompts, options), prompts.length, this.mode, this.tokenizer !== null);
  }

  /** One Response per generated token; the last has finishReason set. Throws at once on a bad request. */
  stream(prompt: string | number[], options: GenerateOptions = {}): AsyncIterable<Response> {
    return this.streamBatch([prompt], options);
  }

  /** stream() for a conversation rendered with the bundle's chat template. */
  streamChat(messages: Message[], options: GenerateOptions = {}): AsyncIterable<Response> {
    return this.stream(this.encodeChat(messages), options);
  }

  generate(prompt: string | number[], options: GenerateOptions = {}): Promise<GenerationResult> {
    return collect(this.stream(prompt, options), this.mode, this.tokenizer !== null);
  }

  chat(messages: Message[], options: GenerateOptions = {}): Promise<GenerationResult> {
    return this.generate(this.encodeChat(messages), options);
  }

  /** Release the onnxruntime sessions. */
  async release(): Promise<void> {
    await Promise.all(Object.values(this.runners).map((r) => r.session.release()));
  }
}
