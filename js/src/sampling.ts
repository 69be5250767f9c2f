/** Samplers and logits processors (shadow_edge/runtimes/sampling.py), over one row of logits.
 *
 *     processor(history, logits) -> logits   history: the token ids so far (prompt included)
 *     sampler(logits, rng) -> token id
 *
 * Temperature 0 means argmax and ignores the generator. Otherwise the order is that of
 * transformers and the Python runtime: repetition penalty, temperature, top-k, top-p, then one
 * uniform draw from numpy's generator (rng.ts) read through the inverse CDF, in float64 as numpy
 * does. So a seed gives the Python runtime's tokens; they could differ only if a draw fell within
 * a few ulps of a CDF boundary (numpy sums pairwise and its exp may differ from Math.exp by an ulp). */

import { GenerationError } from "./errors.js";
import { NumpyRandom } from "./rng.js";

export type Sampler = (logits: Float32Array, rng: NumpyRandom) => number;
export type LogitsProcessor = (history: number[], logits: Float32Array) => Float32Array;

export function checkSettings(temperature: number, topK: number, topP: number, repetitionPenalty: number): void {
  if (!(Number.isFinite(temperature) && temperature >= 0)) {
    throw new GenerationError(`temperature must be >= 0 (0 = greedy), got ${temperature}`);
  }
  if (!(Number.isInteger(topK) && topK >= 0)) throw new GenerationError(`top_k must be >= 0 (0 = off), got ${topK}`);
  if (!(topP > 0 && topP <= 1)) throw new GenerationError(`top_p must be in (0, 1] (1 = off), got ${topP}`);
  if (!(Number.isFinite(repetitionPenalty) && repetitionPenalty > 0)) {
    throw new GenerationError(`repetition_penalty must be > 0 (1 = off), got ${repetitionPenalty}`);
  }
}

export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** The probabilities a sampler draws from, for temperature > 0 (float64). */
export function distribution(logits: ArrayLike<number>, temperature = 1, topK = 0, topP = 1): Float64Array {
  const vocab = logits.length;
  const scaled = Float64Array.from(logits, (v) => v / temperature);
  if (topK > 0 && topK < vocab) {
    const kth = Float64Array.from(scaled).sort()[vocab - topK]; // ties with the k-th are kept
    for (let i = 0; i < vocab; i++) if (scaled[i] < kth) scaled[i] = -Infinity;
  }
  let max = -Infinity;
  for (const v of scaled) max = Math.max(max, v);
  const probs = scaled.map((v) => Math.exp(v - max));
  normalize(probs);
  if (topP < 1) {
    // keep the most probable tokens until their mass reaches top_p (at least one)
    const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a] || a - b); // stable
    let cumsum = 0;
    const keep = new Uint8Array(vocab);
    for (const i of order) {
      cumsum += probs[i];
      keep[i] = cumsum - probs[i] < topP ? 1 : 0; // numpy's cumsum - sorted, rounding included
    }
    for (let i = 0; i < vocab; i++) if (!keep[i]) probs[i] = 0;
    normalize(probs);
  }
  return probs;
}

function normalize(values: Float64Array): void {
  let total = 0;
  for (const v of values) total += v;
  for (let i = 0; i < values.length; i++) values[i] /= total;
}

/** A sampler: argmax when temperature is 0, else one draw from `distribution`. */
export function makeSampler(temperature = 0, topK = 0, topP = 1): Sampler {
  checkSettings(temperature, topK, topP, 1);
  if (temperature === 0) return (logits) => argmax(logits);
  return (logits, rng) => {
    const probs = distribution(logits, temperature, topK, topP);
    const cdf = new Float64Array(probs.length);
    let sum = 0;
    for (let i = 0; i < probs.length; i++) cdf[i] = sum += probs[i];
    const threshold = rng.random() * cdf[cdf.length - 1];
    let token = 0;
    while (token < cdf.length && cdf[token] <= threshold) token++; // <=: never a token of probability 0
    return Math.min(token, probs.length - 1);
  };
}

/** transformers' repetition penalty: a logit of a token seen so far is divided by `penalty` when
 * positive, multiplied when negative; in float32, as numpy computes it on float32 logits. */
export function makeRepetitionPenalty(penalty: number): LogitsProcessor {
  checkSettings(0, 0, 1, penalty);
  const factor = Math.fround(penalty);
  return (history, logits) => {
    const out = Float32Array.from(logits);
    for (const token of new Set(history)) {
      const value = out[token];
      out[token] = value > 0 ? value / factor : value * factor;
    }
    return out;
  };
}

export function makeLogitsProcessors(repetitionPenalty = 1): LogitsProcessor[] {
  return repetitionPenalty === 1 ? [] : [makeRepetitionPenalty(repetitionPenalty)];
}

/** The generator of a call: seeded when a seed is given, else from fresh entropy. */
export function seededGenerator(seed?: number | bigint | null): NumpyRandom {
  if (seed === undefined || seed === null) {
    const words = new Uint32Array(4);
    globalThis.crypto.getRandomValues(words);
    return new NumpyRandom(words.reduce((acc, w) => (acc << 32n) | BigInt(w), 0n));
  }
  if (typeof seed === "number" && !Number.isSafeInteger(seed)) {
    throw new GenerationError(`seed must be a non-negative integer, got ${seed}`);
  }
  if (BigInt(seed) < 0n) throw new GenerationError(`seed must be a non-negative integer, got ${seed}`);
  return new NumpyRandom(seed);
}

/** One generator per row of a batch, each seeded with `seed`: a row samples as it would alone. */
export function seededGenerators(seed: number | bigint | null | undefined, batch: number): NumpyRandom[] {
  return Array.from({ length: batch }, () => seededGenerator(seed));
}
