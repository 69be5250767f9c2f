"""Text <-> token ids for bundles that carry a tokenizer: the `tokenizers` package on the bundle's
tokenizer.json, the chat template rendered with jinja2 as transformers renders it, and an
incremental detokenizer for streaming. Bundles without a tokenizer take and give token ids only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _RustTokenizer

from ..bundle import Manifest, resolve_inside
from ..errors import BundleError, GenerationError
from .memory import release_freed_heap

LONG_TEXT = 1 << 16  # characters: encoding longer texts hands the freed memory back afterwards

Message = dict[str, Any]  # {"role": "user" | "assistant" | "system" | ..., "content": str}


class Tokenizer:
    """A bundle's tokenizer. Thread-safe: encode/decode only read the Rust tokenizer."""

    def __init__(self, tokenizer: _RustTokenizer, config: dict[str, Any], bos_token_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config  # manifest.tokenizer: chat_template, bos/eos/pad tokens, add_bos_token
        self.bos_token_id = bos_token_id

    @classmethod
    def from_bundle(cls, root: Path, manifest: Manifest) -> Tokenizer | None:
        name = manifest.tokenizer.get("file") if manifest.tokenizer else None
        if not name:
            return None
        path = resolve_inside(root, name)
        try:
            tokenizer = _RustTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise BundleError(f"cannot read the bundle's tokenizer {name}: {exc}") from None
        return cls(tokenizer, manifest.tokenizer, manifest.model.bos_token_id)

    @property
    def chat_template(self) -> str | None:
        return self.config.get("chat_template")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        check_utf8(text)
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        if len(text) >= LONG_TEXT:  # its encoding's memory would stay with the process: see memory.py
            release_freed_heap()
        bos = self.bos_token_id
        if add_special_tokens and self.config.get("add_bos_token") and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @cached_property
    def _template(self) -> Any:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise GenerationError(f"chat template: {message}")

        # the environment transformers uses, so templates written for it render the same here
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            return env.from_string(self.chat_template or "")
        except jinja2.TemplateError as exc:
            raise BundleError(f"the bundle's chat template does not parse: {exc}") from None

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise GenerationError("this bundle's tokenizer has no chat template", hint="pass a plain prompt instead")
        for message in messages:
            if not (isinstance(message, dict) and isinstance(message.get("role"), str) and "content" in message):
                raise GenerationError(f"a chat message must be a dict with 'role' and 'content', got {message!r}")
            for key in ("role", "content"):
                if isinstance(message[key], str):
                    check_utf8(message[key], f"a chat message's {key}")
        specials = {k: self.config.get(k) or "" for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt, **specials)

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the rendered conversation; the template writes the special tokens itself."""
        return self.encode(self.apply_chat_template(messages), add_special_tokens=False)


def check_utf8(text: str, what: str = "the prompt") -> None:
    """Text must be encodable as UTF-8: a command-line argument of invalid bytes arrives as lone
    surrogates (Python's surrogateescape), and JSON may carry them as \\udXXX escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end].encode("utf-8", "surrogateescape").hex(" ")
        raise GenerationError(
            f"{what} is not valid UTF-8 text (bytes {bad} at character {exc.start})",
            hint="pass UTF-8 text, or token ids with --prompt-ids",
        ) from None


class StreamDecoder:
    """Incremental detokenization: add() returns the text a new token makes stable, flush() the rest.

    Decoding a short window that starts a few tokens back (not only the new token) keeps what
    depends on context right, e.g. the leading space SentencePiece drops at the start of a text;
    text ending in U+FFFD is held back because it may be an incomplete multi-byte UTF-8 character
    that the next token completes. The pieces concatenate to the decode of all tokens.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # end of the tokens whose text was emitted

    def _pending(self) -> tuple[str, str]:
        window = self.ids[self.prefix :]
        emitted = self.tokenizer.decode(window[: self.read - self.prefix], self.skip_special_tokens)
        return emitted, self.tokenizer.decode(window, self.skip_special_tokens)

    def add(self, token: int) -> str:
        self.ids.append(int(token))
        emitted, text = self._pending()
        if len(text) > len(emitted) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(emitted) :]
        return ""

    def flush(self) -> str:
        emitted, text = self._pending()
        self.prefix = self.read = len(self.ids)
        return text[len(emitted) :]
