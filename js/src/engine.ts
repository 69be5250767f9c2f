/** The schedule of one mode over token ids (shadow_edge/runtimes/engine.py); knows nothing about
 * text or sampling.
 *
 *     attached   shadow graph on the new tokens -> shadow_states -> backbone graph -> logits
 *     detached   shadow_lm graph -> logits (the backbone is never loaded)
 *     base       base_lm graph -> logits (bundles exported with --with-base)
 *
 * A `Caches` is the state of one sequence being decoded: one KV cache per graph of the mode. An
 * Engine holds no per-call state, so several sequences may be decoded with one. */

import type { Tensor } from "./host.js";
import type { KVCache } from "./kv-cache.js";
import { BACKBONE_GRAPH, MODE_GRAPHS, type Mode, type ModelSpec, SHADOW_GRAPH } from "./manifest.js";
import type { GraphRunner } from "./sessions.js";

export type Caches = Record<string, KVCache>;

/** What generation drives: an Engine, or the cascade's variants of one. */
export interface Decoder {
  readonly model: ModelSpec;
  start(): Caches;
  /** Logits [1, keep (all new positions if 0), vocab] of the new tokens; advances the caches. */
  forward(caches: Caches, ids: number[], keep?: number): Promise<Tensor>;
}

export class Engine implements Decoder {
  constructor(
    readonly mode: Mode,
    readonly runners: Record<string, GraphRunner>,
    readonly model: ModelSpec,
  ) {
    const missing = MODE_GRAPHS[mode].filter((g) => !(g in runners));
    if (missing.length) throw new Error(`${mode} mode needs the graphs ${missing.join(", ")}`);
  }

  start(): Caches {
    return Object.fromEntries(MODE_GRAPHS[this.mode].map((name) => [name, this.runners[name].newCache()]));
  }

  /** shadowStates (attached mode): the shadow graph's output for these tokens, computed already
   * (the cascade's detached answer), whose keys/values the shadow cache holds. */
  async forward(caches: Caches, ids: number[], keep = 1, shadowStates?: Tensor): Promise<Tensor> {
    if (this.mode !== "attached") {
      const name = MODE_GRAPHS[this.mode][0];
      return this.runners[name].step(caches[name], ids, undefined, keep);
    }
    const states = shadowStates ?? (await this.runners[SHADOW_GRAPH].step(caches[SHADOW_GRAPH], ids));
    return this.runners[BACKBONE_GRAPH].step(caches[BACKBONE_GRAPH], ids, states, keep);
  }
}

/** The logits of the last position of a [1, n, vocab] tensor. */
export function lastRow(logits: Tensor): Float32Array {
  const [, n, vocab] = logits.dims;
  const data = logits.data as Float32Array;
  return data.subarray((n - 1) * vocab, n * vocab);
}
