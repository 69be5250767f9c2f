/** onnxruntime sessions for bundle graphs, one per graph, each a step function over tensors
 * (shadow_edge/runtimes/sessions.py), over a batch of rows. */

import { positionIds, type Rows } from "./engine.js";
import { BundleError } from "./errors.js";
import type { BundleHost, Ort, Session, SessionOptions, Tensor } from "./host.js";
import { KVCache } from "./kv-cache.js";
import {
  BACKBONE_GRAPH,
  BASE_LM_GRAPH,
  type CacheSpec,
  cacheFor,
  filesFor,
  type GraphSpec,
  LOGITS_TO_KEEP,
  type Manifest,
  SHADOW_GRAPH,
  SHADOW_HEAD_GRAPH,
  SHADOW_LM_GRAPH,
  SHADOW_STATES,
} from "./manifest.js";

/** Intra-op threads that spin after a run steal the cores from the graph that runs next: the
 * small shadow graph and head sleep instead (measured in Python, runtimes/model.py). */
const SPIN: Record<string, boolean> = {
  [SHADOW_GRAPH]: false,
  [BACKBONE_GRAPH]: true,
  [SHADOW_LM_GRAPH]: true,
  [BASE_LM_GRAPH]: true,
  [SHADOW_HEAD_GRAPH]: false,
};

export interface LoadOptions {
  /** onnxruntime intra-op threads (default: onnxruntime's choice). */
  threads?: number;
  /** "hash": check sizes and sha256 of the files the mode needs; "size": sizes only. */
  verify?: "hash" | "size";
}

function sessionOptions(graph: string, threads?: number): SessionOptions {
  const options: SessionOptions = { graphOptimizationLevel: "all", executionMode: "sequential" };
  if (threads !== undefined) {
    if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`threads must be >= 1, got ${threads}`);
    options.intraOpNumThreads = threads;
    options.interOpNumThreads = 1;
  }
  if (SPIN[graph] === false) options.extra = { session: { intra_op: { allow_spinning: "0" } } };
  return options;
}

export class GraphRunner {
  readonly inputNames: Set<string>;

  constructor(
    readonly name: string,
    readonly session: Session,
    readonly spec: GraphSpec,
    readonly cacheSpec: CacheSpec,
    private readonly ort: Ort,
  ) {
    this.inputNames = new Set(session.inputNames);
  }

  newCache(batch = 1): KVCache {
    return new KVCache(this.cacheSpec, this.ort, batch);
  }

  private int64(rows: Rows): Tensor {
    return new this.ort.Tensor("int64", BigInt64Array.from(rows.flat(), BigInt), [rows.length, rows[0].length]);
  }

  /** Run the graph on new tokens [batch][seq] after the cache's positions; returns its first output
   * (shadow_states or logits [batch, keep or all, vocab]) and advances the cache. mask: the
   * attention mask [batch][cached + seq] (default: all ones, rows without padding). */
  async step(cache: KVCache, ids: Rows, shadowStates?: Tensor, keep = 1, mask?: Rows): Promise<Tensor> {
    const total = cache.seqLen + ids[0].length;
    const attention = mask ?? ids.map(() => new Array<number>(total).fill(1));
    const feeds: Record<string, Tensor> = {
      input_ids: this.int64(ids),
      attention_mask: this.int64(attention),
      position_ids: this.int64(positionIds(attention, ids[0].length)),
      ...cache.feeds(),
    };
    if (this.inputNames.has(SHADOW_STATES)) {
      if (!shadowStates) throw new Error(`${this.name} needs shadow_states`);
      feeds[SHADOW_STATES] = shadowStates;
    }
    if (this.inputNames.has(LOGITS_TO_KEEP)) feeds[LOGITS_TO_KEEP] = new this.ort.Tensor("int64", BigInt64Array.of(BigInt(keep)), []);
    const outputs = await this.session.run(feeds);
    cache.update(outputs);
    return outputs[this.spec.outputs[0].name];
  }

  /** A cacheless head graph (shadow_head): logits [batch, seq, vocab] of the states given. */
  async head(states: Tensor): Promise<Tensor> {
    const outputs = await this.session.run({ [SHADOW_STATES]: states });
    return outputs[this.spec.outputs[0].name];
  }
}

/** Check the files of the named graphs (and the tokenizer), then open a session for each. */
export async function openGraphs(
  host: BundleHost,
  manifest: Manifest,
  names: string[],
  options: LoadOptions,
  purpose: string,
): Promise<Record<string, GraphRunner>> {
  const verify = options.verify ?? "hash";
  if (verify !== "hash" && verify !== "size") throw new RangeError(`verify must be "hash" or "size", got ${verify}`);
  await host.checkFiles(manifest, filesFor(manifest, names, purpose), verify === "hash");
  const runners: Record<string, GraphRunner> = {};
  for (const name of names) {
    const spec = manifest.graphs[name];
    const cache = cacheFor(manifest.model, name);
    const cacheInput = spec.inputs.find((t) => t.name.startsWith("past_key_values."));
    if (cacheInput && cacheInput.dtype !== "float32") {
      throw new BundleError(`${spec.file} keeps its KV cache in ${cacheInput.dtype}; this runtime reads float32 caches`);
    }
    let session: Session;
    try {
      session = await host.createSession(manifest, spec.file, sessionOptions(name, options.threads));
    } catch (error) {
      const first = String((error as Error).message ?? error).split("\n")[0];
      throw new BundleError(`onnxruntime cannot load ${spec.file}: ${first}`);
    }
    runners[name] = new GraphRunner(name, session, spec, cache, host.ort);
  }
  return runners;
}
