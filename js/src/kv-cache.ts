/** KV cache of one graph: per layer a key and a value tensor [batch, kv_heads, seq, head_dim].
 * The graphs concatenate past and new entries themselves (present = past ++ new), so the cache
 * only swaps in what a step returned; trim() rewinds it (speculative decoding). */

import type { Ort, Tensor } from "./host.js";
import { type CacheSpec, pastNames, presentNames } from "./manifest.js";

export class KVCache {
  tensors: Tensor[]; // k0, v0, k1, v1, ...

  constructor(
    readonly spec: CacheSpec,
    private readonly ort: Ort,
    batch = 1,
  ) {
    const empty = new ort.Tensor("float32", new Float32Array(0), [batch, spec.num_kv_heads, 0, spec.head_dim]);
    this.tensors = Array.from({ length: 2 * spec.num_layers }, () => empty);
  }

  get seqLen(): number {
    return this.tensors[0].dims[2];
  }

  get nbytes(): number {
    return this.tensors.reduce((sum, t) => sum + t.size * 4, 0);
  }

  feeds(): Record<string, Tensor> {
    const names = pastNames(this.spec);
    return Object.fromEntries(names.map((name, i) => [name, this.tensors[i]]));
  }

  /** Keep the first seqLen positions (copies: a tensor's data is contiguous per head). */
  trim(seqLen: number): void {
    this.tensors = this.tensors.map((t) => {
      const [batch, heads, seq, dim] = t.dims;
      if (seqLen >= seq) return t;
      const data = t.data as Float32Array;
      const out = new Float32Array(batch * heads * seqLen * dim);
      for (let h = 0; h < batch * heads; h++) out.set(data.subarray(h * seq * dim, (h * seq + seqLen) * dim), h * seqLen * dim);
      return new this.ort.Tensor("float32", out, [batch, heads, seqLen, dim]);
    });
  }

  /** Take the present tensors of a step's outputs. */
  update(outputs: Record<string, Tensor>): void {
    this.tensors = presentNames(this.spec).map((name) => outputs[name]);
  }
}
