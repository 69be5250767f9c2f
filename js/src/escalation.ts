/** When the cascade's shadow hands a request on (shadow_edge/runtimes/escalation.py): the
 * escalation policy and its running decision, over the first `window` tokens the shadow generates:
 *
 *     marker               escalate as soon as the shadow's text contains it (the shadow is trained
 *                          to answer "[REMOTE]" to what it should not answer); markerIds is the same
 *                          as a token sequence, for bundles without a tokenizer
 *     confidenceThreshold  escalate when the top-1 probability of one of those tokens is below it
 *     maxMeanEntropy       escalate when their mean entropy, in nats, is above it (null: off)
 *
 * Probabilities are the shadow's own softmax, before any sampling setting. The reasons are worded
 * as in Python, so both runtimes' decisions compare as strings. */

import { GenerationError } from "./errors.js";

export interface EscalationPolicy {
  marker: string | null;
  markerIds: number[] | null;
  confidenceThreshold: number;
  maxMeanEntropy: number | null;
  window: number;
}

export type PolicyOverrides = Partial<{ [K in keyof EscalationPolicy]: EscalationPolicy[K] | undefined }>;

export const DEFAULT_POLICY: EscalationPolicy = {
  marker: "[REMOTE]",
  markerIds: null,
  confidenceThreshold: 0,
  maxMeanEntropy: null,
  window: 8,
};

const MANIFEST_KEYS: Record<string, keyof EscalationPolicy> = {
  marker: "marker",
  marker_ids: "markerIds",
  confidence_threshold: "confidenceThreshold",
  max_mean_entropy: "maxMeanEntropy",
  window: "window",
};

const isNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

export function checkPolicy(p: EscalationPolicy): EscalationPolicy {
  if (p.marker !== null && (typeof p.marker !== "string" || !p.marker)) {
    throw new GenerationError(`the escalation marker must be a non-empty string, got ${JSON.stringify(p.marker)}`);
  }
  if (p.markerIds !== null && (!Array.isArray(p.markerIds) || !p.markerIds.length || !p.markerIds.every((t) => Number.isInteger(t) && t >= 0))) {
    throw new GenerationError(`marker_ids must be a non-empty list of token ids, got ${JSON.stringify(p.markerIds)}`);
  }
  if (!isNumber(p.confidenceThreshold) || p.confidenceThreshold < 0) {
    throw new GenerationError(`the confidence threshold must be a number >= 0, got ${JSON.stringify(p.confidenceThreshold)}`);
  }
  if (p.maxMeanEntropy !== null && (!isNumber(p.maxMeanEntropy) || p.maxMeanEntropy < 0)) {
    throw new GenerationError(`max_mean_entropy must be a number >= 0, got ${JSON.stringify(p.maxMeanEntropy)}`);
  }
  if (!Number.isInteger(p.window) || p.window < 1) {
    throw new GenerationError(`the escalation window must be a positive number of tokens, got ${JSON.stringify(p.window)}`);
  }
  return p;
}

/** The policy of a manifest's `escalation` object (snake_case, as Python writes it). */
export function policyFromManifest(data: Record<string, unknown>): EscalationPolicy {
  const policy: Record<string, unknown> = { ...DEFAULT_POLICY };
  for (const [key, value] of Object.entries(data ?? {})) {
    const field = MANIFEST_KEYS[key];
    if (!field) throw new GenerationError(`unknown escalation setting ${JSON.stringify(key)} (known: ${Object.keys(MANIFEST_KEYS).join(", ")})`);
    policy[field] = value;
  }
  return checkPolicy(policy as unknown as EscalationPolicy);
}

/** The policy with the given settings replaced: undefined/null leave a setting as it is, and an
 * empty marker ("") turns the marker rule off. */
export function updatePolicy(policy: EscalationPolicy, overrides: PolicyOverrides): EscalationPolicy {
  const next: Record<string, unknown> = { ...policy };
  for (const [key, value] of Object.entries(overrides)) {
    if (!(key in DEFAULT_POLICY)) throw new GenerationError(`unknown escalation setting ${JSON.stringify(key)}`);
    if (value !== undefined && value !== null) next[key] = value === "" ? null : value;
  }
  return checkPolicy(next as unknown as EscalationPolicy);
}

/** [top-1 probability, entropy in nats] of softmax(logits), in float64. */
export function nextTokenStats(logits: ArrayLike<number>): [number, number] {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  const shifted = Float64Array.from(logits, (v) => v - max);
  let total = 0;
  for (const v of shifted) total += Math.exp(v);
  let top1 = 0;
  let weighted = 0;
  for (const v of shifted) {
    const p = Math.exp(v) / total;
    top1 = Math.max(top1, p);
    weighted += p * v;
  }
  return [top1, Math.max(Math.log(total) - weighted, 0)];
}

/** The running decision for one answer: feed each shadow token; a reason means escalate. */
export class Decision {
  readonly tokens: number[] = [];
  text = "";
  private readonly entropies: number[] = [];

  constructor(readonly policy: EscalationPolicy) {}

  /** The window has passed without escalation: the shadow's answer stands. */
  get settled(): boolean {
    return this.tokens.length >= this.policy.window;
  }

  observe(token: number, text: string, top1: number, entropy: number): string | null {
    const p = this.policy;
    this.tokens.push(token);
    this.text += text;
    this.entropies.push(entropy);
    const n = this.tokens.length;
    if (p.marker !== null && this.text.includes(p.marker)) return `marker ${pyRepr(p.marker)} in the shadow's first ${n} tokens`;
    if (p.markerIds !== null && contains(this.tokens, p.markerIds)) {
      return `marker ids [${p.markerIds.join(", ")}] in the shadow's first ${n} tokens`;
    }
    if (top1 < p.confidenceThreshold) {
      return `confidence: top-1 probability ${top1.toFixed(3)} < ${formatG(p.confidenceThreshold)} at token ${n}`;
    }
    return this.settled ? this.entropy() : null;
  }

  /** The shadow finished inside the window: the rules over all its tokens. */
  finish(): string | null {
    return this.entropy();
  }

  private entropy(): string | null {
    const limit = this.policy.maxMeanEntropy;
    const n = this.entropies.length;
    const mean = n ? this.entropies.reduce((a, b) => a + b, 0) / n : 0;
    return limit !== null && mean > limit ? `entropy: mean ${mean.toFixed(2)} nats > ${formatG(limit)} over ${n} tokens` : null;
  }
}

function contains(tokens: number[], pattern: number[]): boolean {
  for (let i = 0; i + pattern.length <= tokens.length; i++) {
    if (pattern.every((t, j) => tokens[i + j] === t)) return true;
  }
  return false;
}

/** Python's format(x, "g"): six significant digits, no trailing zeros. */
export function formatG(x: number): string {
  if (x === 0) return "0";
  const [mantissa, exp] = x.toExponential(5).split("e");
  const exponent = Number(exp);
  const strip = (s: string) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s);
  if (exponent < -4 || exponent >= 6) {
    return `${strip(mantissa)}e${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  return strip(x.toFixed(Math.max(0, 5 - exponent)));
}

/** Python's repr() of a string, for the messages (quotes chosen as Python chooses them). */
export function pyRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  const body = s
    .replace(/\\/g, "\\\\")
    .replace(/\n/g, "\\n")
    .replace(/\r/g, "\\r")
    .replace(/\t/g, "\\t")
    .replace(new RegExp(quote, "g"), `\\${quote}`);
  return quote + body + quote;
}
