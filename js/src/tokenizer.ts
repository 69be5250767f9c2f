/** Text <-> token ids for bundles that carry a tokenizer (shadow_edge/runtimes/tokenizer.py):
 * `@huggingface/tokenizers` on the bundle's tokenizer.json, the chat template rendered with
 * `@huggingface/jinja` (trim_blocks and lstrip_blocks, as transformers renders it), and an
 * incremental detokenizer for streaming. Bundles without a tokenizer take and give token ids. */

import { Template } from "@huggingface/jinja";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { BundleError, GenerationError } from "./errors.js";
import type { BundleHost } from "./host.js";
import type { Manifest } from "./manifest.js";

export interface Message {
  role: string;
  content: string;
}

export class Tokenizer {
  private template?: Template;

  constructor(
    private readonly tokenizer: HfTokenizer,
    readonly config: Record<string, unknown>, // manifest.tokenizer: chat_template, special tokens, add_bos_token
    readonly bosTokenId: number | null,
  ) {}

  static async fromBundle(host: BundleHost, manifest: Manifest): Promise<Tokenizer | null> {
    const name = manifest.tokenizer?.file;
    if (typeof name !== "string" || !name) return null;
    try {
      const json = JSON.parse(await host.readText(name));
      // the Rust tokenizer the Python runtime uses never cleans up spaces after decoding
      const tokenizer = new HfTokenizer(json, { ...manifest.tokenizer, clean_up_tokenization_spaces: false });
      return new Tokenizer(tokenizer, manifest.tokenizer, manifest.model.bos_token_id ?? null);
    } catch (error) {
      throw new BundleError(`cannot read the bundle's tokenizer ${name}: ${(error as Error).message}`);
    }
  }

  get chatTemplate(): string | null {
    const template = this.config.chat_template;
    return typeof template === "string" && template ? template : null;
  }

  encode(text: string, addSpecialTokens = true): number[] {
    let ids = this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
    const bos = this.bosTokenId;
    if (addSpecialTokens && this.config.add_bos_token && bos !== null && ids[0] !== bos) ids = [bos, ...ids];
    return ids;
  }

  decode(ids: number[], skipSpecialTokens = true): string {
    if (!ids.length) return ""; // tokenizers.js refuses an empty list
    return this.tokenizer.decode(ids, { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
  }

  applyChatTemplate(messages: Message[], addGenerationPrompt = true): string {
    const source = this.chatTemplate;
    if (!source) throw new GenerationError("this bundle's tokenizer has no chat template", "pass a plain prompt instead");
    for (const message of messages) {
      if (typeof message?.role !== "string" || !("content" in message)) {
        throw new GenerationError(`a chat message must have 'role' and 'content', got ${JSON.stringify(message)}`);
      }
    }
    try {
      this.template ??= new Template(source);
    } catch (error) {
      throw new BundleError(`the bundle's chat template does not parse: ${(error as Error).message}`);
    }
    const specials = Object.fromEntries(
      ["bos_token", "eos_token", "pad_token", "unk_token"].map((k) => [k, (this.config[k] as string) || ""]),
    );
    try {
      return this.template.render({ messages, add_generation_prompt: addGenerationPrompt, ...specials });
    } catch (error) {
      throw new GenerationError(`chat template: ${(error as Error).message}`); // raise_exception() included
    }
  }

  /** Token ids of the rendered conversation; the template writes the special tokens itself. */
  encodeChat(messages: Message[]): number[] {
    return this.encode(this.applyChatTemplate(messages), false);
  }
}

/** Incremental detokenization: add() returns the text a new token makes stable, flush() the rest.
 * A short window starting a few tokens back is decoded (context-dependent text such as a leading
 * space stays right); text ending in U+FFFD is held back, as an incomplete UTF-8 character that the
 * next token may complete. The pieces concatenate to the decode of all tokens. */
export class StreamDecoder {
  private ids: number[] = [];
  private prefix = 0; // start of the decode window
  private read = 0; // end of the tokens whose text was emitted

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly skipSpecialTokens = true,
  ) {}

  private pending(): [string, string] {
    const window = this.ids.slice(this.prefix);
    const emitted = this.tokenizer.decode(window.slice(0, this.read - this.prefix), this.skipSpecialTokens);
    return [emitted, this.tokenizer.decode(window, this.skipSpecialTokens)];
  }

  add(token: number): string {
    this.ids.push(token);
    const [emitted, text] = this.pending();
    if (text.length > emitted.length && !text.endsWith("\ufffd")) {
      this.prefix = this.read;
      this.read = this.ids.length;
      return text.slice(emitted.length);
    }
    return "";
  }

  flush(): string {
    const [emitted, text] = this.pending();
    this.prefix = this.read = this.ids.length;
    return text.slice(emitted.length);
  }
}
