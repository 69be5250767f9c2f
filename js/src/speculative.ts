/** Speculative decoding (shadow_edge/runtimes/speculative.py): the detached shadow drafts, the
 * attached model verifies.
 *
 * Per round the shadow graph runs on the last accepted token and then on each of its own drafts,
 * one position at a time (the shadow head's argmax is the next draft), keeping every position's
 * shadow state. The backbone then runs once over those positions with those states and gives the
 * attached model's next token after each. The leading drafts that agree are accepted, and the
 * backbone's own token after them comes free; both KV caches are trimmed back to the accepted
 * positions. The output is the attached model's greedy output, with one backbone pass per round
 * instead of one per token. Greedy only (a repetition penalty is applied when verifying). */

import { Engine, lastRow } from "./engine.js";
import { BundleError, GenerationError } from "./errors.js";
import { type GenerateOptions, type Response, streamTokens } from "./generate.js";
import type { BundleHost, Ort, Tensor } from "./host.js";
import { BACKBONE_GRAPH, CASCADE_GRAPHS, type Manifest, SHADOW_GRAPH, SHADOW_HEAD_GRAPH } from "./manifest.js";
import { readManifest, ShadowEdgeModel } from "./model.js";
import { argmax, type LogitsProcessor, makeLogitsProcessors } from "./sampling.js";
import { type GraphRunner, type LoadOptions, openGraphs } from "./sessions.js";
import { Tokenizer } from "./tokenizer.js";

export const DEFAULT_DRAFT_TOKENS = 4;

export interface SpeculativeStats {
  rounds: number; // backbone passes after the prompt
  drafted: number;
  accepted: number;
}

/** How many tokens to draft next: one more after a fully accepted round (up to the maximum), the
 * accepted count + 1 after a partial one, half after a rejected first draft. At 0 the rounds are
 * plain attached steps; every PROBE_EVERY of them tries one draft again. */
export class DraftLength {
  static readonly PROBE_EVERY = 16;
  k: number;
  private idle = 0;

  constructor(readonly maximum: number) {
    this.k = maximum;
  }

  update(drafted: number, accepted: number): void {
    if (drafted === 0) {
      this.idle += 1;
      this.k = this.idle >= DraftLength.PROBE_EVERY ? 1 : 0;
      if (this.k) this.idle = 0;
    } else if (accepted === drafted) this.k = Math.min(this.maximum, drafted + 1);
    else this.k = accepted ? accepted + 1 : Math.floor(drafted / 2);
  }
}

export class SpeculativeModel extends ShadowEdgeModel {
  stats: SpeculativeStats = { rounds: 0, drafted: 0, accepted: 0 }; // of the last call

  constructor(
    manifest: Manifest,
    runners: Record<string, GraphRunner>,
    tokenizer: Tokenizer | null,
    readonly draftTokens: number,
    private readonly ort: Ort,
  ) {
    super(manifest, new Engine("attached", runners, manifest.model), runners, tokenizer, "speculative");
  }

  override streamBatch(): never {
    throw new GenerationError("speculative decoding takes one prompt at a time");
  }

  override stream(prompt: string | number[], options: GenerateOptions = {}): AsyncIterable<Response> {
    const config = this.config(options);
    if (config.temperature !== 0) {
      throw new GenerationError("speculative decoding gives the attached model's greedy output: use temperature 0");
    }
    const stats: SpeculativeStats = { rounds: 0, drafted: 0, accepted: 0 };
    this.stats = stats;
    const processors = makeLogitsProcessors(config.repetitionPenalty);
    return streamTokens(this.decoder, this.tokenizer, this.encode(prompt), config, this.context, (ids) => this.tokens(ids, processors, stats));
  }

  private async *tokens(prompt: number[], processors: LogitsProcessor[], stats: SpeculativeStats): AsyncGenerator<number> {
    const [shadow, head, backbone] = [SHADOW_GRAPH, SHADOW_HEAD_GRAPH, BACKBONE_GRAPH].map((g) => this.runners[g]);
    const shadowCache = shadow.newCache();
    const backboneCache = backbone.newCache();
    const greedy = (logits: Float32Array, seen: number[]): number => argmax(processors.reduce((l, process) => process(seen, l), logits));
    const history = [...prompt];

    const promptStates = await shadow.step(shadowCache, [prompt]);
    let token = greedy(lastRow(await backbone.step(backboneCache, [prompt], promptStates, 1)), history);
    let length = prompt.length; // positions in both caches; `token` is accepted but in neither yet
    const draft = new DraftLength(this.draftTokens);
    for (;;) {
      yield token;
      history.push(token);
      // 1. draft: the shadow on `token`, then on each draft; k drafts need k + 1 shadow positions
      const k = Math.max(0, Math.min(draft.k, this.context.contextLength - length - 2));
      const fed = [token];
      const drafts: number[] = [];
      const states: Tensor[] = [];
      for (let j = 0; j <= k; j++) {
        states.push(await shadow.step(shadowCache, [[fed[fed.length - 1]]]));
        if (j < k) {
          drafts.push(argmax(lastRow(await head.head(states[j]))));
          fed.push(drafts[j]);
        }
      }
      // 2. verify: the backbone over every fed position at once
      const logits = await backbone.step(backboneCache, [fed], this.concatenate(states), 0);
      const vocab = logits.dims[2];
      const row = (i: number) => (logits.data as Float32Array).subarray(i * vocab, (i + 1) * vocab);
      const accepted: number[] = [];
      for (let j = 0; j < k && greedy(row(j), [...history, ...accepted]) === drafts[j]; j++) accepted.push(drafts[j]);
      history.push(...accepted);
      token = greedy(row(accepted.length), history);
      // 3. account, and rewind both caches to the accepted positions
      stats.rounds += 1;
      stats.drafted += k;
      stats.accepted += accepted.length;
      draft.update(k, accepted.length);
      length += accepted.length + 1;
      shadowCache.trim(length);
      backboneCache.trim(length);
      for (const t of accepted) yield t;
    }
  }

  /** Shadow states [1, 1, hidden] of successive positions as one [1, n, hidden] tensor. */
  private concatenate(states: Tensor[]): Tensor {
    const hidden = states[0].dims[2];
    const data = new Float32Array(states.length * hidden);
    states.forEach((s, i) => data.set(s.data as Float32Array, i * hidden));
    return new this.ort.Tensor("float32", data, [1, states.length, hidden]);
  }
}

export interface SpeculativeOptions extends LoadOptions {
  draftTokens?: number;
}

/** Open a bundle for speculative decoding: its shadow, shadow head and backbone graphs. */
export async function loadSpeculative(host: BundleHost, options: SpeculativeOptions = {}): Promise<SpeculativeModel> {
  const draftTokens = options.draftTokens ?? DEFAULT_DRAFT_TOKENS;
  if (!Number.isInteger(draftTokens) || draftTokens < 1) throw new GenerationError(`draft_tokens must be a positive integer, got ${draftTokens}`);
  const manifest = await readManifest(host);
  if (!manifest.modes.includes("attached")) {
    throw new BundleError(`speculative decoding needs the attached graphs; this bundle has only: ${manifest.modes.join(", ")}`);
  }
  const runners = await openGraphs(host, manifest, CASCADE_GRAPHS.local, options, "speculative decoding");
  const tokenizer = await Tokenizer.fromBundle(host, manifest);
  host.loaded?.();
  return new SpeculativeModel(manifest, runners, tokenizer, draftTokens, host.ort);
}
