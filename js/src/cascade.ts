/** The cascade (edge-cloud) schedule (shadow_edge/runtimes/cascade.py): the detached shadow answers
 * first; when the escalation policy says so (escalation.ts), the request goes on to the attached
 * model here or to a remote OpenAI-compatible server.
 *
 *     const model = await loadCascade(host);                              // shadow, head, backbone
 *     const model = await loadCascade(host, { remote: "http://server:8000" }); // shadow and head only
 *     const result = await model.chat([{ role: "user", content: "sit down" }]);
 *     result.text, result.servedBy, result.escalated, result.reason
 *
 * The detached answer comes from the shadow graph plus the shadow_head graph (the same logits as
 * shadow_lm, validated at export) so that the prompt's shadow states are kept: a local escalation
 * runs the backbone over the prompt with those states and hands the shadow KV cache over as it is.
 * The escalated answer is the attached model's answer to the prompt alone, so a greedy cascade
 * that escalates gives the attached model's greedy tokens. */

import { type Caches, type Decoder, Engine, lastRow, type Rows } from "./engine.js";
import { Decision, type EscalationPolicy, nextTokenStats, type PolicyOverrides, policyFromManifest, updatePolicy } from "./escalation.js";
import { GenerationError } from "./errors.js";
import { collect, type GenerateOptions, type GenerationConfig, type GenerationResult, type Response, resolveMaxNewTokens, streamTokens } from "./generate.js";
import type { BundleHost, Ort, Tensor } from "./host.js";
import { BACKBONE_GRAPH, CASCADE_GRAPHS, type Manifest, type ModelSpec, SHADOW_GRAPH, SHADOW_HEAD_GRAPH } from "./manifest.js";
import { readManifest, ShadowEdgeModel } from "./model.js";
import { RemoteModel, type RemoteOptions } from "./remote.js";
import { type GraphRunner, type LoadOptions, openGraphs } from "./sessions.js";
import { type Message, Tokenizer } from "./tokenizer.js";

export interface CascadeResult extends GenerationResult {
  escalated: boolean;
  servedBy: "shadow" | "attached" | "remote";
  reason: string | null; // why it escalated
  shadowTokenIds: number[]; // what the shadow generated before deciding
  shadowText: string | null;
  shadowS: number; // time the shadow took, up to its decision
  latencyS: number; // the whole call
}

/** Detached decoding as shadow graph -> shadow head, keeping the prompt's shadow states and cache
 * and, while `deciding`, the stats of each next-token distribution. */
class ShadowFirst implements Decoder {
  promptStates: Tensor | null = null;
  promptCache: Tensor[] = [];
  deciding = true;
  readonly stats: [number, number][] = []; // [top-1 probability, entropy] per forward while deciding

  constructor(
    private readonly shadow: GraphRunner,
    private readonly head: GraphRunner,
    readonly model: ModelSpec,
    private readonly ort: Ort,
  ) {}

  start(): Caches {
    return { [SHADOW_GRAPH]: this.shadow.newCache() };
  }

  async forward(caches: Caches, ids: Rows, keep = 1): Promise<Tensor> {
    const cache = caches[SHADOW_GRAPH];
    const states = await this.shadow.step(cache, ids);
    if (this.promptStates === null) {
      this.promptStates = states;
      this.promptCache = [...cache.tensors];
    }
    const logits = await this.head.head(keep ? this.lastPositions(states, keep) : states);
    if (this.deciding) this.stats.push(nextTokenStats(lastRow(logits)));
    return logits;
  }

  private lastPositions(states: Tensor, keep: number): Tensor {
    const [batch, n, hidden] = states.dims;
    const count = Math.min(keep, n);
    const data = (states.data as Float32Array).subarray((n - count) * hidden, n * hidden);
    return new this.ort.Tensor("float32", data, [batch, count, hidden]);
  }
}

/** The attached engine whose first forward (the prompt) reuses the shadow's states and cache. */
class Resumed implements Decoder {
  private states: Tensor | null;
  readonly model: ModelSpec;

  constructor(
    private readonly engine: Engine,
    private readonly shadow: ShadowFirst,
  ) {
    this.states = shadow.promptStates;
    this.model = engine.model;
  }

  start(): Caches {
    const caches = this.engine.start();
    caches[SHADOW_GRAPH].tensors = [...this.shadow.promptCache];
    return caches;
  }

  forward(caches: Caches, ids: Rows, keep = 1, mask?: Rows): Promise<Tensor> {
    const states = this.states ?? undefined;
    this.states = null;
    return this.engine.forward(caches, ids, keep, mask, states);
  }
}

/** Iterate for the Responses of the answer that stands (the shadow's is held back until the
 * policy's window has passed); servedBy, escalated and reason are set once decided. */
export class CascadeStream implements AsyncIterable<Response> {
  servedBy: CascadeResult["servedBy"] | null = null;
  escalated = false;
  reason: string | null = null;
  tokenIds: number[] = [];
  shadowTokenIds: number[] = [];
  shadowText = "";
  shadowS = 0;
  readonly started = performance.now();
  private readonly responses: AsyncGenerator<Response>;

  constructor(model: CascadeModel, ids: number[], request: string | number[] | Message[], config: GenerationConfig) {
    this.responses = model.answer(this, ids, request, config);
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Response> {
    for await (const response of this.responses) {
      if (this.servedBy !== "remote") this.tokenIds.push(response.token); // remote chunks add their own ids
      yield response;
    }
  }
}

export interface CascadeOptions extends LoadOptions, PolicyOverrides, RemoteOptions {
  /** An OpenAI-compatible server to escalate to (the backbone is then not loaded). */
  remote?: string;
}

/** A bundle run as a cascade. Without a remote, `decoder` is the attached Engine. */
export class CascadeModel extends ShadowEdgeModel {
  constructor(
    manifest: Manifest,
    runners: Record<string, GraphRunner>,
    tokenizer: Tokenizer | null,
    readonly policy: EscalationPolicy,
    readonly remote: RemoteModel | null,
    private readonly ort: Ort,
  ) {
    const decoder = remote ? newShadowFirst(runners, manifest, ort) : new Engine("attached", runners, manifest.model);
    super(manifest, decoder, runners, tokenizer, "cascade");
  }

  /** The answer token by token; the stream's servedBy/escalated/reason tell who gave it. */
  override stream(prompt: string | number[], options: GenerateOptions = {}): CascadeStream {
    return this.start(this.encode(prompt), prompt, options);
  }

  /** stream() for a conversation; a remote receives the messages themselves. */
  override streamChat(messages: Message[], options: GenerateOptions = {}): CascadeStream {
    return this.start(this.encodeChat(messages), messages, options);
  }

  private start(ids: number[], request: string | number[] | Message[], options: GenerateOptions): CascadeStream {
    const config = this.config(options);
    // checked now, as streamTokens checks a plain stream
    resolveMaxNewTokens(config.maxNewTokens, this.context.defaultMaxNewTokens, ids.length, this.context.contextLength);
    return new CascadeStream(this, ids, request, config);
  }

  override generate(prompt: string | number[], options: GenerateOptions = {}): Promise<CascadeResult> {
    return this.collectCascade(this.start(this.encode(prompt), prompt, options));
  }

  override chat(messages: Message[], options: GenerateOptions = {}): Promise<CascadeResult> {
    return this.collectCascade(this.start(this.encodeChat(messages), messages, options));
  }

  override streamBatch(): never {
    throw new GenerationError("the cascade answers one prompt at a time (escalation is decided per prompt)");
  }

  override logits(): Promise<Float32Array[]> {
    throw new GenerationError("the cascade has no single set of logits: load the bundle in one mode for that");
  }

  /** The schedule; CascadeStream drives it. */
  async *answer(out: CascadeStream, ids: number[], request: string | number[] | Message[], config: GenerationConfig): AsyncGenerator<Response> {
    const shadow = newShadowFirst(this.runners, this.manifest, this.ort);
    const decision = new Decision(this.policy);
    const held: Response[] = [];
    let reason: string | null = null;
    const responses = streamTokens(shadow, this.tokenizer, ids, config, this.context);
    try {
      for await (const r of responses) {
        if (out.servedBy !== null) {
          yield r; // the shadow's answer stands
          continue;
        }
        const [top1, entropy] = shadow.stats[decision.tokens.length];
        reason = decision.observe(r.token, r.text, top1, entropy);
        if (reason === null && r.finishReason !== null) reason = decision.finish();
        if (reason !== null) break;
        held.push(r);
        if (decision.settled || r.finishReason !== null) {
          out.servedBy = "shadow";
          shadow.deciding = false;
          yield* held;
        }
      }
    } finally {
      await responses.return(undefined);
    }
    out.shadowTokenIds = decision.tokens;
    out.shadowText = decision.text;
    out.shadowS = (performance.now() - out.started) / 1000;
    if (reason === null) return;
    out.escalated = true;
    out.reason = reason;
    if (this.remote) {
      out.servedBy = "remote";
      yield* this.remoteAnswer(out, ids, request, config);
    } else {
      out.servedBy = "attached";
      yield* streamTokens(new Resumed(this.decoder as Engine, shadow), this.tokenizer, ids, config, this.context);
    }
  }

  /** The remote's answer as Responses: one per SSE chunk, token = the chunk's last id (-1 if the
   * server sends no ids); the chunk's ids go to out.tokenIds. */
  private async *remoteAnswer(out: CascadeStream, ids: number[], request: string | number[] | Message[], config: GenerationConfig): AsyncGenerator<Response> {
    const remote = this.remote as RemoteModel;
    const maxTokens = resolveMaxNewTokens(config.maxNewTokens, this.context.defaultMaxNewTokens, ids.length, this.context.contextLength);
    const started = performance.now();
    let firstS = 0;
    let count = 0;
    const chunks = remote.stream(request, config, maxTokens);
    let previous = await chunks.next();
    while (!previous.done) {
      const chunk = previous.value;
      const next = await chunks.next();
      out.tokenIds.push(...chunk.tokenIds);
      count += chunk.tokenIds.length || 1;
      const now = (performance.now() - started) / 1000;
      firstS ||= now;
      yield {
        index: 0,
        token: chunk.tokenIds.length ? chunk.tokenIds[chunk.tokenIds.length - 1] : -1,
        text: chunk.text,
        promptTokens: ids.length,
        newTokens: count,
        prefillS: firstS,
        decodeTokPerS: now > firstS ? (count - 1) / (now - firstS) : 0,
        finishReason: next.done ? ((chunk.finishReason ?? "stop") as Response["finishReason"]) : null,
      };
      previous = next;
    }
  }

  private async collectCascade(stream: CascadeStream): Promise<CascadeResult> {
    const result = await collect(stream, "cascade", this.tokenizer !== null);
    return {
      ...result,
      tokenIds: stream.tokenIds, // a remote chunk may carry several ids
      escalated: stream.escalated,
      servedBy: stream.servedBy ?? "shadow",
      reason: stream.reason,
      shadowTokenIds: stream.shadowTokenIds,
      shadowText: this.tokenizer ? stream.shadowText : null,
      shadowS: stream.shadowS,
      latencyS: (performance.now() - stream.started) / 1000,
    };
  }
}

function newShadowFirst(runners: Record<string, GraphRunner>, manifest: Manifest, ort: Ort): ShadowFirst {
  return new ShadowFirst(runners[SHADOW_GRAPH], runners[SHADOW_HEAD_GRAPH], manifest.model, ort);
}

/** Open a bundle as a cascade. Policy settings in `options` override the manifest's defaults. */
export async function loadCascade(host: BundleHost, options: CascadeOptions = {}): Promise<CascadeModel> {
  const manifest = await readManifest(host);
  const { marker, markerIds, confidenceThreshold, maxMeanEntropy, window } = options;
  const policy = updatePolicy(policyFromManifest(manifest.escalation), { marker, markerIds, confidenceThreshold, maxMeanEntropy, window });
  const remote = options.remote ? new RemoteModel(options.remote, options) : null;
  if (!remote && !(BACKBONE_GRAPH in manifest.graphs)) {
    throw new GenerationError("this bundle has no backbone graph: a cascade needs a remote URL to escalate to");
  }
  const names = remote ? CASCADE_GRAPHS.remote : CASCADE_GRAPHS.local;
  const runners = await openGraphs(host, manifest, names, options, "the cascade");
  const tokenizer = await Tokenizer.fromBundle(host, manifest);
  host.loaded?.();
  return new CascadeModel(manifest, runners, tokenizer, policy, remote, host.ort);
}
