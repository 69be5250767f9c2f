/** Generation in three layers (shadow_edge/runtimes/generate.py), for a batch of prompts:
 *
 *     stepTokens()    the step generator: prefill, then one sampled token per row per step (ids only)
 *     streamRows()    `Response`s with text pieces, stop conditions and stats, as an async iterator
 *                     (streamTokens(): the same for one prompt)
 *     collectRows()   drains a stream into one `GenerationResult` per row (collect(): one prompt)
 *
 * A row finishes on an EOS id ("eos": the id is kept in tokenIds, its text is not), on a stop string
 * ("stop": the text ends before it, tokenIds end with the token that completed it) or after
 * maxNewTokens ("length"). Rows are left-padded and finish independently; a finished row's cache
 * keeps being fed until the whole batch is done, its tokens are dropped. Each row samples with its
 * own generator seeded with the seed: a row gets the tokens it would get alone. */

import { type Decoder, lastRow, leftPad, type Rows } from "./engine.js";
import { GenerationError } from "./errors.js";
import { checkSettings, type LogitsProcessor, makeLogitsProcessors, makeSampler, type Sampler, seededGenerators } from "./sampling.js";
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

/** One generated token of one row, with the text it made stable and the stats so far. */
export interface Response {
  index: number; // row of the batch
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
  padTokenId: number; // fills the left of shorter prompts in a batch (masked out)
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

/** Yields the next token of every row, forever; the caller stops it. */
export async function* stepTokens(
  decoder: Decoder,
  prompts: Rows,
  sampler: Sampler,
  processors: LogitsProcessor[],
  rngs: NumpyRandom[],
  padId: number,
): AsyncGenerator<number[]> {
  const { ids, mask } = leftPad(prompts, padId);
  const caches = decoder.start(prompts.length);
  const histories = prompts.map((prompt) => [...prompt]);
  let logits = await decoder.forward(caches, ids, 1, mask);
  for (;;) {
    const tokens = histories.map((history, b) => {
      let row = lastRow(logits, b);
      for (const process of processors) row = process(history, row);
      return sampler(row, rngs[b]);
    });
    yield tokens;
    tokens.forEach((token, b) => {
      histories[b].push(token);
      mask[b].push(1);
    });
    logits = await decoder.forward(
      caches,
      tokens.map((token) => [token]),
      1,
      mask,
    );
  }
}

/** stepTokens with the sampler, processors and generators the config asks for. */
export function sampledTokens(decoder: Decoder, prompts: Rows, config: GenerationConfig, padId: number): AsyncGenerator<number[]> {
  return stepTokens(
    decoder,
    prompts,
    makeSampler(config.temperature, config.topK, config.topP),
    makeLogitsProcessors(config.repetitionPenalty),
    seededGenerators(config.seed, prompts.length),
    padId,
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

/** Text and stop state of one row. */
class Row {
  private readonly decoder: StreamDecoder | null;
  private readonly stops: StopStrings;
  newTokens = 0;
  finishReason: FinishReason | null = null;

  constructor(
    tokenizer: Tokenizer | null,
    stops: string[],
    private readonly eos: Set<number>,
    readonly promptTokens: number,
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

/** Checks a request (throws at once, not on iteration); returns its max new tokens. */
function checkRequest(prompts: Rows, config: GenerationConfig, context: GenerationContext, tokenizer: Tokenizer | null): number {
  if (!prompts.length) throw new GenerationError("no prompt given");
  for (const prompt of prompts) checkPrompt(prompt, context.vocabSize, context.contextLength);
  const longest = Math.max(...prompts.map((p) => p.length));
  const maxNew = resolveMaxNewTokens(config.maxNewTokens, context.defaultMaxNewTokens, longest, context.contextLength);
  checkSettings(config.temperature, config.topK, config.topP, config.repetitionPenalty);
  if (config.stop.length && !tokenizer) {
    throw new GenerationError("stop strings need a bundle with a tokenizer; this one takes token ids only");
  }
  return maxNew;
}

function rowsOf(prompts: Rows, config: GenerationConfig, context: GenerationContext, tokenizer: Tokenizer | null): Row[] {
  const eos = new Set(config.eosTokenIds ?? context.defaultEos);
  return prompts.map((p) => new Row(tokenizer, config.stop, eos, p.length));
}

/** Checks the request at once, then returns the stream of every row's Responses (left-padded batch). */
export function streamRows(decoder: Decoder, tokenizer: Tokenizer | null, prompts: Rows, config: GenerationConfig, context: GenerationContext): AsyncGenerator<Response> {
  const maxNew = checkRequest(prompts, config, context, tokenizer);
  const steps = sampledTokens(decoder, prompts, config, context.padTokenId);
  return responses(steps, rowsOf(prompts, config, context, tokenizer), maxNew);
}

/** streamRows for one prompt; tokens(prompt, config): its next token forever (default: sampledTokens
 * on `decoder`; speculative decoding drafts and verifies instead). */
export function streamTokens(
  decoder: Decoder,
  tokenizer: Tokenizer | null,
  prompt: number[],
  config: GenerationConfig,
  context: GenerationContext,
  tokens?: TokenStream,
): AsyncGenerator<Response> {
  const maxNew = checkRequest([prompt], config, context, tokenizer);
  const steps = tokens ? oneRow(tokens(prompt, config)) : sampledTokens(decoder, [prompt], config, context.padTokenId);
  return responses(steps, rowsOf([prompt], config, context, tokenizer), maxNew);
}

async function* oneRow(tokens: AsyncGenerator<number>): AsyncGenerator<number[]> {
  try {
    for await (const token of tokens) yield [token];
  } finally {
    await tokens.return(undefined);
  }
}

async function* responses(steps: AsyncGenerator<number[]>, rows: Row[], maxNew: number): AsyncGenerator<Response> {
  const started = performance.now();
  let prefillS = 0;
  let step = 0;
  try {
    for await (const tokens of steps) {
      const now = performance.now();
      if (step === 0) prefillS = (now - started) / 1000;
      const decodeS = (now - started) / 1000 - prefillS;
      for (const [index, row] of rows.entries()) {
        if (row.finishReason !== null) continue;
        const text = row.add(tokens[index], maxNew);
        yield {
          index,
          token: tokens[index],
          text,
          promptTokens: row.promptTokens,
          newTokens: row.newTokens,
          prefillS,
          decodeTokPerS: decodeS > 0 ? step / decodeS : 0,
          finishReason: row.finishReason,
        };
      }
      step += 1;
      if (rows.every((row) => row.finishReason !== null)) return;
    }
  } finally {
    await steps.return(undefined);
  }
}

/** Drain a stream into one result per row; stats are those of each row's last response. */
export async function collectRows(stream: AsyncIterable<Response>, batch: number, mode: string, hasText: boolean): Promise<GenerationResult[]> {
  const tokenIds: number[][] = Array.from({ length: batch }, () => []);
  const texts: string[][] = Array.from({ length: batch }, () => []);
  const last: (Response | null)[] = new Array(batch).fill(null);
  for await (const r of stream) {
    tokenIds[r.index].push(r.token);
    texts[r.index].push(r.text);
    last[r.index] = r;
  }
  return last.map((r, b) => {
    if (!r || r.finishReason === null) throw new Error("a generation stream ended without a finish reason");
    return {
      mode,
      tokenIds: tokenIds[b],
      text: hasText ? texts[b].join("") : null,
      promptTokens: r.promptTokens,
      newTokens: r.newTokens,
      prefillS: r.prefillS,
      decodeTokPerS: r.decodeTokPerS,
      finishReason: r.finishReason,
    };
  });
}

/** collectRows for a one-prompt stream. */
export async function collect(stream: AsyncIterable<Response>, mode: string, hasText: boolean): Promise<GenerationResult> {
  return (await collectRows(stream, 1, mode, hasText))[0];
}
