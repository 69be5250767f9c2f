/** The schedule of one mode over token ids (shadow_edge/runtimes/engine.py); knows nothing about
 * text or sampling.
 *
 *     attached   shadow graph on the new tokens -> shadow_states -> backbone graph -> logits
 *     detached   shadow_lm graph -> logits (the backbone is never loaded)
 *     base       base_lm graph -> logits (bundles exported with --with-base)
 *
 * A `Caches` is the state of one batch being decoded: one KV cache per graph of the mode. Prompts of
 * unequal length are left-padded (leftPad): the attention mask marks real tokens, and position ids
 * are cumsum(mask) - 1 with pads at 1, as transformers' generate() and the Python runtime derive
 * them. An Engine holds no per-call state, so several batches may be decoded with one. */

import type { Tensor } from "./host.js";
import type { KVCache } from "./kv-cache.js";
import { BACKBONE_GRAPH, MODE_GRAPHS, type Mode, type ModelSpec, SHADOW_GRAPH } from "./manifest.js";
import type { GraphRunner } from "./sessions.js";

export type Caches = Record<string, KVCache>;
/** Token ids (or mask values) of a batch: one row per sequence, all rows as long. */
export type Rows = number[][];

/** What generation drives: an Engine, or the cascade's variants of one. */
export interface Decoder {
  readonly model: ModelSpec;
  start(batch?: number): Caches;
  /** Logits [batch, keep (all new positions if 0), vocab] of the new tokens; advances the caches.
   * mask: the attention mask over every position so far, the new ones included (default: all 1). */
  forward(caches: Caches, ids: Rows, keep?: number, mask?: Rows): Promise<Tensor>;
}

/** input_ids and attention_mask [batch, longest row], rows right-aligned. */
export function leftPad(rows: Rows, padId: number): { ids: Rows; mask: Rows } {
  const width = Math.max(...rows.map((row) => row.length));
  return {
    ids: rows.map((row) => [...new Array<number>(width - row.length).fill(padId), ...row]),
    mask: rows.map((row) => [...new Array<number>(width - row.length).fill(0), ...new Array<number>(row.length).fill(1)]),
  };
}

/** The position ids of the last `count` positions of each row of `mask`; pads get 1, like transformers. */
export function positionIds(mask: Rows, count: number): Rows {
  return mask.map((row) => {
    let seen = 0;
    const positions = row.map((real) => (real ? seen++ : 1));
    return positions.slice(row.length - count);
  });
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

  start(batch = 1): Caches {
    return Object.fromEntries(MODE_GRAPHS[this.mode].map((name) => [name, this.runners[name].newCache(batch)]));
  }

  /** shadowStates (attached mode): the shadow graph's output for these tokens, computed already
   * (the cascade's detached answer), whose keys/values the shadow cache holds. */
  async forward(caches: Caches, ids: Rows, keep = 1, mask?: Rows, shadowStates?: Tensor): Promise<Tensor> {
    if (this.mode !== "attached") {
      const name = MODE_GRAPHS[this.mode][0];
      return this.runners[name].step(caches[name], ids, undefined, keep, mask);
    }
    const states = shadowStates ?? (await this.runners[SHADOW_GRAPH].step(caches[SHADOW_GRAPH], ids, undefined, 1, mask));
    return this.runners[BACKBONE_GRAPH].step(caches[BACKBONE_GRAPH], ids, states, keep, mask);
  }
}

/** The logits of the last position of row `row` of a [batch, n, vocab] tensor. */
export function lastRow(logits: Tensor, row = 0): Float32Array {
  const [, n, vocab] = logits.dims;
  const data = logits.data as Float32Array;
  return data.subarray(((row + 1) * n - 1) * vocab, (row + 1) * n * vocab);
}
