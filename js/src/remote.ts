/** The cascade's remote escalation (shadow_edge/runtimes/remote.py): a client of any
 * OpenAI-compatible server (`shadow-edge serve`, vLLM, llama.cpp's server) over fetch and SSE.
 *
 * It streams from /v1/completions, or /v1/chat/completions for a conversation, and asks for the
 * generated ids with `return_token_ids` (a vLLM extension `shadow-edge serve` implements); servers
 * that do not send them give text only. Settings travel as the OpenAI fields (temperature 0 =
 * greedy), top_k and repetition_penalty only when they are on. */

import { RemoteError } from "./errors.js";
import type { GenerationConfig } from "./generate.js";
import type { Message } from "./tokenizer.js";

export interface RemoteChunk {
  text: string;
  tokenIds: number[];
  finishReason: string | null; // "stop" or "length" (OpenAI's), on the last chunk
}

export interface RemoteOptions {
  timeoutMs?: number;
  apiKey?: string;
  model?: string;
}

/** The OpenAI fields of a generation config. */
export function requestBody(config: GenerationConfig, maxTokens: number): Record<string, unknown> {
  const body: Record<string, unknown> = { max_tokens: maxTokens, temperature: config.temperature, top_p: config.topP };
  if (config.topK) body.top_k = config.topK;
  if (config.repetitionPenalty !== 1) body.repetition_penalty = config.repetitionPenalty;
  if (config.seed !== undefined) body.seed = Number(config.seed);
  if (config.stop.length) body.stop = [...config.stop];
  return body;
}

export class RemoteModel {
  readonly url: string;

  constructor(
    url: string,
    private readonly options: RemoteOptions = {},
  ) {
    if (!/^https?:\/\//.test(url)) throw new RemoteError(`the remote must be an http(s) URL, got ${JSON.stringify(url)}`);
    this.url = url.replace(/\/+$/, "").replace(/\/v1$/, "");
  }

  /** Generate remotely for a prompt (text or token ids) or a conversation (messages). */
  async *stream(prompt: string | number[] | Message[], config: GenerationConfig, maxTokens: number): AsyncGenerator<RemoteChunk> {
    const chat = Array.isArray(prompt) && prompt.length > 0 && typeof prompt[0] === "object";
    const body = { ...requestBody(config, maxTokens), model: this.options.model ?? "default", stream: true, return_token_ids: true };
    Object.assign(body, chat ? { messages: prompt } : { prompt });
    const headers: Record<string, string> = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (this.options.apiKey) headers.Authorization = `Bearer ${this.options.apiKey}`;
    const signal = AbortSignal.timeout(this.options.timeoutMs ?? 120_000);
    let response: globalThis.Response;
    try {
      response = await fetch(`${this.url}${chat ? "/v1/chat/completions" : "/v1/completions"}`, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal,
      });
    } catch (error) {
      throw new RemoteError(`cannot reach the remote ${this.url}: ${(error as Error).cause ?? (error as Error).message}`);
    }
    if (!response.ok || !response.body) {
      throw new RemoteError(`the remote ${this.url} answered ${response.status}: ${errorMessage(await response.text())}`);
    }
    let sent = false;
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") break;
      sent = true;
      yield parseChunk(data, chat);
    }
    if (!sent) throw new RemoteError("the remote sent an empty answer (no completion chunk)");
  }
}

/** The `data:` payloads of a server-sent event stream. */
async function* sseData(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r?\n/);
      buffer = done ? "" : (lines.pop() ?? "");
      for (const raw of lines) {
        const line = raw.trim();
        if (line.startsWith("data:")) yield line.slice(5).trim(); // blank separators, comments, event names skipped
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock();
    await body.cancel().catch(() => undefined);
  }
}

function parseChunk(data: string, chat: boolean): RemoteChunk {
  let event: Record<string, unknown>;
  try {
    event = JSON.parse(data);
  } catch {
    throw new RemoteError(`the remote sent an event that is not an OpenAI chunk: ${JSON.stringify(data.slice(0, 80))}`);
  }
  if (event && "error" in event) throw new RemoteError(`the remote failed mid-stream: ${errorMessage(data)}`);
  const choices = event?.choices;
  if (choices !== undefined && !Array.isArray(choices)) {
    throw new RemoteError(`the remote sent an event that is not an OpenAI chunk: ${JSON.stringify(data.slice(0, 80))}`);
  }
  const choice = ((choices as Record<string, unknown>[] | undefined)?.[0] ?? {}) as Record<string, unknown>;
  const delta = (choice.delta ?? {}) as Record<string, unknown>;
  const text = String((chat ? delta.content : choice.text) ?? "");
  const ids = Array.isArray(choice.token_ids) ? choice.token_ids.map(Number) : [];
  return { text, tokenIds: ids, finishReason: (choice.finish_reason as string | null) ?? null };
}

function errorMessage(body: string): string {
  try {
    const payload = JSON.parse(body);
    const error = payload?.error;
    return String(typeof error === "object" && error !== null ? (error.message ?? JSON.stringify(error)) : (error ?? body));
  } catch {
    return body.trim().split("\n")[0]?.slice(0, 200) ?? "";
  }
}
