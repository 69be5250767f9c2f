/** Generation in three layers (shadow_edge/runtimes/generate.py), for one sequence:
 *
 *     stepTokens()    the step generator: prefill, then one sampled token per step (ids only)
 *     streamTokens()  `Response`s with text pieces, stop conditions and stats, as an async iterator
 *     collect()       drains a stream into one `GenerationResult` (the convenience call)
 *
 * It finishes on an EOS id ("eos": the id is kept in tokenIds, its text is not), on a stop string
 * ("stop": the text ends before it, tokenIds end with the token that completed it) or after
 * maxNewTokens ("length"). */

import type { Decoder } from "./engine.js";
import { lastRow } from "./engine.js";
import { GenerationError } from "./errors.js";
import { checkSettings, type LogitsProcessor, makeLogitsProcessors, makeSampler, type Sampler, seededGenerator } from "./sampling.js";
import type { NumpyRandom } from "./rng.js";
import { StreamDecoder, type Tokenizer } from "./tokenizer.js";

export interface GenerationConfig {
  maxNewTokens?: number; // undefined: the bundle's default, shortened to fit the context
  temperature: number; // 0 = greedy
  topK: number; // 0 = off
  topP: number; // 1 = off
  repetitionPenalty: number; // 1 = off
  seed?: number | bigint; // same seed, same tokens (and the Python runtime's tokens)
  stop: string[];
  eosTokenIds?: number[]; // undefined: the bundle's; [] never stops on EOS
}

export type GenerateOptions = Partial<GenerationConfig>;
export type FinishReason = "eos" | "stop" | "length";

/** One generated token, with the text it made stable and the stats so far. */
export interface Response {
  token: number;
  text: string; // "" when the token completes no character yet, or the bundle has no tokenizer
  promptTokens: number;
  newTokens: number;
  prefillS: number; // prompt processing up to the first token
  decodeTokPerS: number; // tokens after the first, per second of decoding
  finishReason: FinishReason | null; // set on the last response
}

export interface GenerationResult {
  mode: string;
  tokenIds: number[]; // generated only
  text: string | null; // null when the bundle has no tokenizer
  promptTokens: number;
  newTokens: number;
  prefillS: number;
  decodeTokPerS: number;
  finishReason: FinishReason;
}

/** What a bundle fixes for every call: its defaults and limits. */
export interface GenerationContext {
  vocabSize: number;
  contextLength: number;
  defaultMaxNewTokens: number;
  defaultEos: number[];
}

export function checkPrompt(ids: number[], vocabSize: number, context: number): void {
  if (!ids.length) throw new GenerationError("a prompt is empty: give at least one token");
  const bad = ids.find((t) => !Number.isInteger(t) || t < 0 || t >= vocabSize);
  if (bad !== undefined) throw new GenerationError(`token id ${bad} is outside the vocabulary (0..${vocabSize - 1})`);
  if (ids.length >= context) throw new GenerationError(`the prompt has ${ids.length} tokens, the model's context is ${context}`);
}

/** An explicit request must fit the context; the default is shortened to fit it. */
export function resolveMaxNewTokens(requested: number | undefined, fallback: number, prompt: number, context: number): number {
  if (requested === undefined) return Math.max(1, Math.min(fallback, context - prompt));
  if (!Number.isInteger(requested) || requested < 1) {
    throw new GenerationError(`max_new_tokens must be a positive integer, got ${requested}`);
  }
  if (prompt + requested > context) {
    throw new GenerationError(
      `prompt (${prompt} tokens) + max_new_tokens (${requested}) exceeds the model's context of ${context} tokens`,
      `ask for at most ${context - prompt} new tokens, or shorten the prompt`,
    );
  }
  return requested;
}

/** Yields the next token forever; the caller stops it. */
export async function* stepTokens(
  decoder: Decoder,
  prompt: number[],
  sampler: Sampler,
  processors: LogitsProcessor[],
  rng: NumpyRandom,
): AsyncGenerator<number> {
  const caches = decoder.start();
  const history = [...prompt];
  let logits = lastRow(await decoder.forward(caches, prompt, 1));
  for (;;) {
    for (const process of processors) logits = process(history, logits);
    const token = sampler(logits, rng);
    yield token;
    history.push(token);
    logits = lastRow(await decoder.forward(caches, [token], 1));
  }
}

/** stepTokens with the sampler, processors and generator the config asks for. */
export function sampledTokens(decoder: Decoder, prompt: number[], config: GenerationConfig): AsyncGenerator<number> {
  return stepTokens(
    decoder,
    prompt,
    makeSampler(config.temperature, config.topK, config.topP),
    makeLogitsProcessors(config.repetitionPenalty),
    seededGenerator(config.seed),
  );
}

/** Holds back text that could be the start of a stop string; cuts the text at one. */
class StopStrings {
  private readonly stops: string[];
  private pending = "";

  constructor(stops: string[]) {
    this.stops = stops.filter((s) => s);
  }

  /** [text safe to emit, whether a stop string was found] */
  feed(piece: string): [string, boolean] {
    this.pending += piece;
    const found = this.stops.map((s) => this.pending.indexOf(s)).filter((i) => i >= 0);
    if (found.length) {
      const out = this.pending.slice(0, Math.min(...found));
      this.pending = "";
      return [out, true];
    }
    let hold = 0;
    for (const s of this.stops) {
      for (let n = 1; n < s.length; n++) if (this.pending.endsWith(s.slice(0, n))) hold = Math.max(hold, n);
    }
    const cut = this.pending.length - hold;
    const out = this.pending.slice(0, cut);
    this.pending = this.pending.slice(cut);
    return [out, false];
  }

  flush(): string {
    const out = this.pending;
    this.pending = "";
    return out;
  }
}

/** Text and stop state of the sequence. */
class Row {
  private readonly decoder: StreamDecoder | null;
  private readonly stops: StopStrings;
  newTokens = 0;
  finishReason: FinishReason | null = null;

  constructor(
    tokenizer: Tokenizer | null,
    stops: string[],
    private readonly eos: Set<number>,
  ) {
    this.decoder = tokenizer ? new StreamDecoder(tokenizer) : null;
    this.stops = new StopStrings(stops);
  }

  add(token: number, maxNewTokens: number): string {
    this.newTokens += 1;
    if (this.eos.has(token)) this.finishReason = "eos";
    let [text, stopped] = this.stops.feed(this.decoder ? this.decoder.add(token) : "");
    if (stopped) {
      this.finishReason = "stop";
      return text;
    }
    if (this.finishReason === null && this.newTokens >= maxNewTokens) this.finishReason = "length";
    if (this.finishReason !== null && this.decoder) {
      const [tail, stoppedAtEnd] = this.stops.feed(this.decoder.flush());
      text += tail + (stoppedAtEnd ? "" : this.stops.flush());
      if (stoppedAtEnd) this.finishReason = "stop";
    }
    return text;
  }
}

export type TokenStream = (prompt: number[], config: GenerationConfig) => AsyncGenerator<number>;

/** Checks the request at once (throws here, not on iteration), then returns the stream.
 * tokens(prompt, config): the next token forever (default: sampledTokens on `decoder`). */
export function streamTokens(
  decoder: Decoder,
  tokenizer: Tokenizer | null,
  prompt: number[],
  config: GenerationConfig,
  context: GenerationContext,
  tokens?: TokenStream,
): AsyncGenerator<Response> {
  checkPrompt(prompt, context.vocabSize, context.contextLength);
  const maxNew = resolveMaxNewTokens(config.maxNewTokens, context.defaultMaxNewTokens, prompt.length, context.contextLength);
  checkSettings(config.temperature, config.topK, config.topP, config.repetitionPenalty);
  if (config.stop.length && !tokenizer) {
    throw new GenerationError("stop strings need a bundle with a tokenizer; this one takes token ids only");
  }
  const eos = new Set(config.eosTokenIds ?? context.defaultEos);
  const steps = (tokens ?? ((p, c) => sampledTokens(decoder, p, c)))(prompt, config);
  return responses(steps, new Row(tokenizer, config.stop, eos), prompt.length, maxNew);
}

async function* responses(
  steps: AsyncGenerator<number>,
  row: Row,
  promptTokens: number,
  maxNew: number,
): AsyncGenerator<Response> {
  const started = performance.now();
  let prefillS = 0;
  let step = 0;
  try {
    for await (const token of steps) {
      const now = performance.now();
      if (step === 0) prefillS = (now - started) / 1000;
      const decodeS = (now - started) / 1000 - prefillS;
      const text = row.add(token, maxNew);
      yield {
        token,
        text,
        promptTokens,
        newTokens: row.newTokens,
        prefillS,
        decodeTokPerS: decodeS > 0 ? step / decodeS : 0,
        finishReason: row.finishReason,
      };
      step += 1;
      if (row.finishReason !== null) return;
    }
  } finally {
    await steps.return(undefined);
  }
}

/** Drain a stream into one result; stats are those of the last response. */
export async function collect(stream: AsyncIterable<Response>, mode: string, hasText: boolean): Promise<GenerationResult> {
  const tokenIds: number[] = [];
  const texts: string[] = [];
  let last: Response | null = null;
  for await (const r of stream) {
    tokenIds.push(r.token);
    texts.push(r.text);
    last = r;
  }
  if (!last || last.finishReason === null) throw new Error("a generation stream ended without a finish reason");
  return {
    mode,
    tokenIds,
    text: hasText ? texts.join("") : null,
    promptTokens: last.promptTokens,
    newTokens: last.newTokens,
    prefillS: last.prefillS,
    decodeTokPerS: last.decodeTokPerS,
    finishReason: last.finishReason,
  };
}
