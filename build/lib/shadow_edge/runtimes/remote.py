"""The cascade's remote escalation: a client of any OpenAI-compatible server (`shadow-edge serve`,
vLLM, llama.cpp's server...), standard library only.

It streams (SSE) from /v1/completions, or /v1/chat/completions for a conversation, and asks for
the generated token ids with `return_token_ids` (an extension of vLLM that `shadow-edge serve`
implements); servers that do not send them give text only. Settings travel as the OpenAI fields
(temperature 0 = greedy), top_k and repetition_penalty only when they are on.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RemoteError
from .generate import GenerationConfig


@dataclass
class RemoteChunk:
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" or "length" (OpenAI's), on the last chunk


def request_body(config: GenerationConfig, max_tokens: int) -> dict[str, Any]:
    """The OpenAI fields of a generation config."""
    body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": config.temperature, "top_p": config.top_p}
    if config.top_k:
        body["top_k"] = config.top_k
    if config.repetition_penalty != 1.0:
        body["repetition_penalty"] = config.repetition_penalty
    if config.seed is not None:
        body["seed"] = config.seed
    if config.stop:
        body["stop"] = list(config.stop)
    return body


class RemoteModel:
    def __init__(self, url: str, timeout: float = 120.0, api_key: str | None = None, model: str = "default") -> None:
        if not url.startswith(("http://", "https://")):
            raise RemoteError(f"the remote must be an http(s) URL, got {url!r}")
        self.url = url.rstrip("/").removesuffix("/v1")
        self.timeout = timeout
        self.api_key = api_key
        self.model = model

    def stream(
        self, prompt: str | Sequence[int] | Sequence[dict[str, str]], config: GenerationConfig, max_tokens: int
    ) -> Iterator[RemoteChunk]:
        """Generate remotely for a prompt (text or token ids) or a conversation (a list of messages)."""
        chat = bool(prompt) and isinstance(prompt, (list, tuple)) and isinstance(prompt[0], dict)
        body = request_body(config, max_tokens) | {"model": self.model, "stream": True, "return_token_ids": True}
        body["messages" if chat else "prompt"] = list(prompt) if not isinstance(prompt, str) else prompt
        path = "/v1/chat/completions" if chat else "/v1/completions"
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                yield from _events(response, chat)
        except urllib.error.HTTPError as exc:
            raise RemoteError(f"the remote {self.url} answered {exc.code}: {_error_message(exc)}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach the remote {self.url}: {reason}") from None


def _events(response: Any, chat: bool) -> Iterator[RemoteChunk]:
    sent = False
    for chunk in _chunks(response, chat):
        sent = True
        yield chunk
    if not sent:
        raise RemoteError("the remote sent an empty answer (no completion chunk)")


def _chunks(response: Any, chat: bool) -> Iterator[RemoteChunk]:
    for raw in response:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
            choice = event["choices"][0] if event.get("choices") else {}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise RemoteError(f"the remote sent an event that is not an OpenAI chunk: {data[:80]!r}") from None
        if "error" in event:
            raise RemoteError(f"the remote failed mid-stream: {_message(event)}")
        text = (choice.get("delta") or {}).get("content") or "" if chat else choice.get("text") or ""
        yield RemoteChunk(text, [int(t) for t in choice.get("token_ids") or []], choice.get("finish_reason"))


def _message(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    return str(error.get("message", error) if isinstance(error, dict) else error or payload)


def _error_message(exc: urllib.error.HTTPError) -> str:
    body = exc.read().decode("utf-8", "replace")
    try:
        return _message(json.loads(body))
    except json.JSONDecodeError:
        return body.strip().splitlines()[0][:200] if body.strip() else exc.reason
