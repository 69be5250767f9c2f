"""`shadow-edge serve`: an OpenAI-compatible HTTP server for a loaded model (Starlette + uvicorn).

    GET  /health                 status, mode, model name, context length, generations running/waiting
    GET  /v1/models              the one model served
    POST /v1/completions         prompt: text or token ids, or a batch (a list of either)
    POST /v1/chat/completions    messages, rendered with the bundle's chat template
    POST /classify (/v1/classify)  classifier bundles, in vLLM's shape: {"input": text | [texts] | ids
                                 | [ids]} -> {"data": [{index, label, probs, num_classes}], "usage"}

Requests and responses follow OpenAI's schema; `stream: true` answers with server-sent events
(`data: {chunk}` ... `data: [DONE]`). Settings that a request leaves out take the bundle's defaults
(temperature 0 = greedy); `top_k` and `repetition_penalty` are accepted as extras. `n` choices
per prompt, `presence_penalty`, `frequency_penalty`, `logit_bias`, `logprobs` (+ `top_logprobs` in
chat) and, in completions, `echo` (the prompt's tokens scored too, what lm-eval-harness's
loglikelihood reads; `max_tokens: 0` then scores the prompt alone) follow OpenAI, streamed too: a
stream gives every choice of every prompt one after the other, each chunk naming its choice's
`index` (the echoed prompt is a choice's first chunk). Log-probabilities: openai_logprobs.py. As
vLLM does, `"return_token_ids": true` adds `token_ids` to each choice (each chunk's own ids when streaming):
the cascade's remote escalation compares tokens exactly with it. A bundle without a tokenizer takes
token ids and always returns them. When the model's result (or stream) says who served it, as a
cascade's does, `shadow_edge: {escalated, served_by, reason}` rides along; speculative decoding adds
`shadow_edge: {speculative: {rounds, drafted, accepted, acceptance}}`, summed over the choices (a
stream gives each choice's on that choice's last chunk).

The model is duck-typed: anything with mode, context_length, default_max_new_tokens, tokenizer,
encode(), encode_chat(), stream() and generate() (and optionally chat()/stream_chat(), which a
cascade uses to send a conversation on as messages), such as a ShadowEdgeModel.

Access control (API key, Host allow-list, CORS, connection timeouts and cap) lives in
server_guard.py; make_server() refuses a network address without a key unless told otherwise.

This module imports neither torch nor transformers (the runtime stays torch-free).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import GenerationError, ShadowEdgeError
from ..manifest_schema import nesting_depth
from . import server_guard
from .generate import MAX_TOP_LOGPROBS, GenerationResult, Response
from .openai_logprobs import Entry, chat_logprobs, completion_logprobs, generated_entries, prompt_entries
from .prompt_cache import PromptCache
from .server_guard import REQUEST_TIMEOUT, ApiError
from .speculative import SpeculativeStats

log = logging.getLogger(__name__)

MAX_TOKENS_LIMIT = 1024
MAX_REQUEST_BYTES = 1 << 20
# One generation at a time by default: concurrent calls share onnxruntime's intra-op thread pool
# (one thread per core), so on a 2-core device two generations each run at about half speed and
# both answers come later than one after the other would. Raise it on bigger CPUs.
MAX_CONCURRENT = 1
MAX_QUEUED = 8
PROMPT_CACHE_ENTRIES = 2  # conversations whose caches are kept (prompt_cache.py)
MAX_JSON_DEPTH = 16  # requests nest 4 deep (messages, content parts); Python's parser recurses per level

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # the runtime's -> OpenAI's
CASCADE_FIELDS = ("escalated", "served_by", "reason")
NUMBER = (int, float)
MAX_N = 16  # choices per prompt
MAX_PROMPTS = 64  # prompts in one /v1/completions batch

# OpenAI features this server does not implement: refused when asked for (rather than silently
# ignored), accepted at their "off" value, which some clients send explicitly.
UNSUPPORTED_UNLESS = {
    "suffix": (None, ""),
    "best_of": (None, 1),
    "tools": (None, []),
    "response_format": (None, {"type": "text"}),
}
CHAT_UNSUPPORTED_UNLESS = {"echo": (None, False)}  # OpenAI's chat has no echo


class ServedModel(Protocol):
    mode: str
    context_length: int
    default_max_new_tokens: int
    tokenizer: Any

    def encode(self, prompt: str | Sequence[int]) -> list[int]: ...
    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]: ...
    def stream(self, prompt: str | Sequence[int], **settings: Any) -> Iterator[Response]: ...
    def generate(self, prompt: str | Sequence[int], **settings: Any) -> GenerationResult: ...
    def prompt_logprobs(self, prompt: str | Sequence[int], top: int = 0) -> list[tuple[float, list] | None]: ...


def _classify_inputs(body: Any) -> list[str | list[int]]:
    """vLLM's /classify `input`: a text, a list of texts, a list of token ids, or a list of those."""
    value = body.get("input") if isinstance(body, dict) else None

    def row(item: Any) -> bool:
        return isinstance(item, str) or (isinstance(item, list) and all(type(t) is int for t in item))

    if isinstance(value, str) or (isinstance(value, list) and value and all(type(t) is int for t in value)):
        return [value]
    if isinstance(value, list) and value and all(row(item) for item in value):
        return list(value)
    raise ApiError(400, "input must be a text, a list of texts, token ids or a list of token-id lists", param="input")


# -- requests --------------------------------------------------------------------------------------


@dataclass
class ParsedRequest:
    chat: bool
    prompts: list[str | list[int]] | None  # completions: one or a batch
    messages: list[dict[str, str]] | None  # chat
    max_tokens: int | None  # 0: echo the prompt only
    settings: dict[str, Any]  # GenerationConfig fields the request sets (max_new_tokens aside)
    stream: bool
    include_usage: bool
    return_token_ids: bool
    n: int = 1
    echo: bool = False

    @property
    def logprobs(self) -> int | None:
        """Alternatives per token when log-probabilities are asked for, else None."""
        return self.settings.get("logprobs")


def _get(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str, param: str | None = None) -> Any:
    """body[name] if it is of one of `kinds` (null = not given); bool is no number here."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ApiError(400, f"{param or name} must be {what}, got {json.dumps(value)[:80]}", param=param or name)
    return value


def parse_request(body: Any, chat: bool, max_tokens_limit: int) -> ParsedRequest:
    """Check the types and this server's limits; the runtime checks the rest (vocabulary, context,
    sampling ranges) with the same messages as the CLI."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    for name, off in (UNSUPPORTED_UNLESS | (CHAT_UNSUPPORTED_UNLESS if chat else {})).items():
        if body.get(name) not in off:
            raise ApiError(400, f"{name} is not supported by this server", param=name, code="unsupported")
    _get(body, "model", (str,), "a string")  # any name is accepted: there is one model
    n = _get(body, "n", (int,), "an integer")
    n = 1 if n is None else n
    if not 1 <= n <= MAX_N:
        raise ApiError(400, f"n must be in 1..{MAX_N}, got {n}", param="n")
    echo = not chat and bool(_get(body, "echo", (bool,), "true or false"))
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    given = [(n, _get(body, n, (int,), "a positive integer")) for n in names]
    param, max_tokens = next(((n, v) for n, v in given if v is not None), ("max_tokens", None))
    if max_tokens is not None and max_tokens < (0 if echo else 1):
        raise ApiError(400, f"{param} must be a positive integer (0 only with echo), got {max_tokens}", param=param)
    if max_tokens is not None and max_tokens > max_tokens_limit:
        raise ApiError(400, f"{param} ({max_tokens}) exceeds this server's limit of {max_tokens_limit}", param=param)
    settings: dict[str, Any] = {}
    for name, kinds, what in (
        ("temperature", NUMBER, "a number"),
        ("top_p", NUMBER, "a number"),
        ("top_k", (int,), "an integer"),
        ("repetition_penalty", NUMBER, "a number"),
        ("seed", (int,), "an integer"),
        ("presence_penalty", NUMBER, "a number"),
        ("frequency_penalty", NUMBER, "a number"),
    ):
        value = _get(body, name, kinds, what)
        if value is not None:
            settings[name] = float(value) if kinds is NUMBER else value
    if settings.get("top_k") == -1:
        settings["top_k"] = 0  # vLLM's "off"
    stop = _get(body, "stop", (str, list), "a string or a list of strings")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    if stop:
        settings["stop"] = [stop] if isinstance(stop, str) else stop
    bias = _logit_bias(body)
    if bias:
        settings["logit_bias"] = bias
    logprobs = _logprobs(body, chat)
    if logprobs is not None:
        settings["logprobs"] = logprobs
    options = _get(body, "stream_options", (dict,), "an object") or {}
    parsed = ParsedRequest(
        chat=chat,
        prompts=None if chat else _prompts(body),
        messages=_messages(body) if chat else None,
        max_tokens=max_tokens,
        settings=settings,
        stream=bool(_get(body, "stream", (bool,), "true or false")),
        include_usage=bool(_get(options, "include_usage", (bool,), "true or false", "stream_options.include_usage")),
        return_token_ids=bool(_get(body, "return_token_ids", (bool,), "true or false")),
        n=n,
        echo=echo,
    )
    return parsed


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _prompts(body: dict[str, Any]) -> list[str | list[int]]:
    """OpenAI's prompt forms: a string, token ids, or a batch (a list of strings or of id lists)."""
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(400, "prompt is required", param="prompt")
    if isinstance(prompt, str) or (_is_ids(prompt) and prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        prompts = prompt
    else:
        raise ApiError(400, "prompt must be a string, a list of token ids, or a list of those", param="prompt")
    if not prompts or not all(prompts):
        raise ApiError(400, "prompt is empty: give at least one token", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(400, f"a batch holds at most {MAX_PROMPTS} prompts, got {len(prompts)}", param="prompt")
    return prompts


def _logit_bias(body: dict[str, Any]) -> dict[int, float]:
    """{"token id": bias} as {id: bias}; the runtime checks the ids and ranges."""
    bias = _get(body, "logit_bias", (dict,), "an object of token id: bias") or {}
    bad = [k for k, v in bias.items() if not k.isdigit() or not isinstance(v, NUMBER) or isinstance(v, bool)]
    if bad:
        raise ApiError(400, f"logit_bias maps token ids to numbers, got {bad[0]!r:.40}", param="logit_bias")
    return {int(k): float(v) for k, v in bias.items()}


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives per token a request wants with its log-probabilities (None: none).
    Chat: logprobs true + top_logprobs; completions: logprobs is that number."""
    if chat:
        wanted = _get(body, "logprobs", (bool,), "true or false")
        top = _get(body, "top_logprobs", (int,), "an integer")
        if top is not None and not wanted:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        count, param = ((top or 0) if wanted else None), "top_logprobs"
    else:
        count, param = _get(body, "logprobs", (int,), "an integer"), "logprobs"
    if count is not None and not 0 <= count <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"{param} must be in 0..{MAX_TOP_LOGPROBS}, got {count}", param=param)
    return count


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts: text only
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "".join(texts) if len(texts) == len(content) and all(isinstance(t, str) for t in texts) else None
        if not isinstance(role, str) or not isinstance(content, str):
            raise ApiError(400, f"messages[{i}] must have a string role and text content", param=f"messages[{i}]")
        out.append({"role": role, "content": content})
    return out


# -- admission ---------------------------------------------------------------------------------------


class Slots:
    """At most `running` generations at once and `queued` more waiting for a turn; beyond that a
    request is refused at once (429) rather than piling up. Used on the event loop only."""

    def __init__(self, running: int, queued: int) -> None:
        if running < 1 or queued < 0:
            raise ValueError(f"max_concurrent must be >= 1 and max_queued >= 0, got {running}, {queued}")
        self.limit = running
        self.capacity = running + queued
        self.semaphore = anyio.Semaphore(running)
        self.admitted = 0

    @property
    def running(self) -> int:
        return self.limit - self.semaphore.value

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    async def acquire(self) -> None:
        if self.admitted >= self.capacity:
            raise ApiError(
                429,
                f"the server is busy: {self.running} generation(s) running and {self.waiting} waiting; retry later",
                code="server_busy",
                kind="rate_limit_error",
                headers={"Retry-After": "1"},
            )
        self.admitted += 1
        try:
            await self.semaphore.acquire()
        except BaseException:
            self.admitted -= 1
            raise

    def release(self) -> None:
        self.semaphore.release()
        self.admitted -= 1


class EventStream(StreamingResponse):
    """SSE whose `on_close` runs however the response ends, also when the client goes away
    mid-stream (Starlette then cancels the body) or before it began: the generation stops and
    its slot is freed."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


# -- responses ---------------------------------------------------------------------------------------


@dataclass
class Reply:
    """Builds the OpenAI objects of one request's answer."""

    request: ParsedRequest
    model_name: str
    with_ids: bool
    tokenizer: Any = None  # for the tokens' strings in logprobs
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or ("chatcmpl-" if self.request.chat else "cmpl-") + uuid.uuid4().hex

    def envelope(self, choices: list[dict[str, Any]], chunk: bool, **extra: Any) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.request.chat else "text_completion"
        head = {"id": self.id, "object": kind, "created": self.created, "model": self.model_name}
        return head | {"choices": choices} | extra

    def choice(
        self,
        text: str,
        ids: list[int],
        finish: str | None,
        chunk: bool,
        first: bool = False,
        index: int = 0,
        entries: Sequence[Entry] = (),
    ) -> dict:
        if not self.request.chat:
            content: dict[str, Any] = {"text": text}
        elif chunk:
            content = {"delta": {"role": "assistant", "content": text} if first else {"content": text}}
        else:
            content = {"message": {"role": "assistant", "content": text}}
        reason = finish and FINISH_REASONS.get(finish, finish)
        choice = {"index": index, **content, "logprobs": self.logprobs(entries), "finish_reason": reason}
        return choice | ({"token_ids": ids} if self.with_ids else {})

    def logprobs(self, entries: Sequence[Entry]) -> dict[str, list] | None:
        if self.request.logprobs is None:
            return None
        return (chat_logprobs if self.request.chat else completion_logprobs)(self.tokenizer, entries)

    def answer(self, index: int, result: GenerationResult | None, echoed: Echo | None) -> dict[str, Any]:
        """The choice of one generation (None: max_tokens 0), after the echoed prompt if any."""
        text = (result.text or "") if result else ""
        entries = generated_entries(result) if result else []
        if echoed is not None:
            text, entries = echoed.text + text, echoed.entries + entries
        ids = list(result.token_ids) if result else []
        return self.choice(text, ids, result.finish_reason if result else "length", False, index=index, entries=entries)


@dataclass
class Echo:
    """The prompt as echoed: its text, ids and (with logprobs) entries, the first unscored."""

    text: str
    ids: list[int]
    entries: list[Entry]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def _prompt_cache_stats(cache: PromptCache | None) -> dict[str, int] | None:
    if cache is None:
        return None
    return {
        "entries": len(cache),
        "bytes": cache.nbytes,
        "reused_tokens": cache.reused_tokens,
        "prefilled_tokens": cache.prefilled_tokens,
    }


def _shadow_edge(source: Any, generations: Sequence[Any] = ()) -> dict[str, Any]:
    """{"shadow_edge": {...}}: escalated, served_by and reason when a cascade's result or stream has
    them; the draft stats summed over the generations (results, or a stream's last Response) that
    were decoded speculatively."""
    found = {name: getattr(source, name) for name in CASCADE_FIELDS if hasattr(source, name)}
    drafts = [g.speculative for g in generations if getattr(g, "speculative", None)]
    if drafts:
        found["speculative"] = SpeculativeStats.total(drafts).to_dict()
    return {"shadow_edge": found} if found else {}


def _event(payload: Any) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


# -- the app -----------------------------------------------------------------------------------------


class Server:
    """The endpoints of one model; create_app() wraps them in a Starlette app."""

    def __init__(
        self,
        model: ServedModel,
        max_tokens_limit: int,
        max_request_bytes: int,
        max_concurrent: int,
        max_queued: int,
        model_name: str,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        if max_tokens_limit < 1 or max_request_bytes < 1:
            raise ValueError(f"limits must be positive, got {max_tokens_limit}, {max_request_bytes}")
        self.model = model
        self.max_tokens_limit = max_tokens_limit
        self.max_request_bytes = max_request_bytes
        self.slots = Slots(max_concurrent, max_queued)
        self.model_name = model_name
        self.request_timeout = request_timeout
        self.created = int(time.time())

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "model": self.model_name,
                "mode": self.model.mode,
                "context_length": self.model.context_length,
                "max_tokens_limit": self.max_tokens_limit,
                "max_concurrent": self.slots.limit,
                "running": self.slots.running,
                "waiting": self.slots.waiting,
                "prompt_cache": _prompt_cache_stats(getattr(self.model, "prompt_cache", None)),
            }
        )

    async def models(self, request: Request) -> JSONResponse:
        card = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "shadow-edge"}
        return JSONResponse({"object": "list", "data": [card]})

    async def completions(self, request: Request) -> Any:
        return await self.answer(request, chat=False)

    async def chat_completions(self, request: Request) -> Any:
        return await self.answer(request, chat=True)

    async def answer(self, request: Request, chat: bool) -> Any:
        parsed = parse_request(await self.read_json(request), chat, self.max_tokens_limit)
        tokenizer = self.model.tokenizer
        reply = Reply(parsed, self.model_name, parsed.return_token_ids or tokenizer is None, tokenizer)
        await self.slots.acquire()
        handed_over = False
        try:
            if not parsed.stream:
                return JSONResponse(await run_in_threadpool(self.complete, parsed, reply))
            pieces, first = await run_in_threadpool(self.open_stream, parsed)
            handed_over = True  # the stream releases the slot when it ends
            return EventStream(self.events(reply, pieces, first), lambda: self.close(pieces))
        except (GenerationError, ValueError) as exc:  # the runtime's checks of the request
            raise ApiError(400, str(exc)) from None
        except ShadowEdgeError as exc:
            raise ApiError(500, str(exc), kind="server_error") from None
        finally:
            if not handed_over:
                self.slots.release()

    async def classify(self, request: Request) -> JSONResponse:
        inputs = _classify_inputs(await self.read_json(request))

        def run() -> tuple[list[Any], int]:
            tokens = sum(len(self.model.encode(item)) for item in inputs)
            return self.model.classify(inputs), tokens

        await self.slots.acquire()
        try:
            results, tokens = await run_in_threadpool(run)
        except (GenerationError, ValueError) as exc:  # not a classifier bundle, bad ids, too long
            raise ApiError(400, str(exc)) from None
        finally:
            self.slots.release()
        data = [
            {"index": i, "label": r.label, "probs": r.probs, "num_classes": len(r.probs)} for i, r in enumerate(results)
        ]
        return JSONResponse(
            {
                "id": f"classify-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": self.model_name,
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
            }
        )

    async def read_json(self, request: Request) -> Any:
        """The JSON body: declared as such (a cross-site form or text/plain POST is not), within
        the size limit, sent within the request timeout, and nested at most MAX_JSON_DEPTH deep."""
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(415, f"the request body must be application/json, got {kind or 'no Content-Type'!r:.80}")
        too_large = ApiError(
            413, f"the request body exceeds this server's limit of {self.max_request_bytes} bytes", code="too_large"
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_request_bytes:
            raise too_large
        body = bytearray()
        try:
            with anyio.fail_after(self.request_timeout):  # a client trickling its body holds a slot
                async for piece in request.stream():  # chunked bodies have no length to check up front
                    body += piece
                    if len(body) > self.max_request_bytes:
                        raise too_large
        except TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {self.request_timeout:g} s") from None
        try:
            text = body.decode("utf-8")
            depth = nesting_depth(text)
            if depth > MAX_JSON_DEPTH:
                raise ApiError(400, f"the request body nests {depth} levels deep (at most {MAX_JSON_DEPTH})")
            return json.loads(text)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over 4300 digits
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None

    def complete(self, request: ParsedRequest, reply: Reply) -> dict[str, Any]:
        """The whole answer (in a worker thread): n choices per prompt, in OpenAI's order (prompt
        by prompt); usage counts each prompt once. Choice i gets seed + i, so that choices differ."""
        choices, prompt_tokens, new_tokens, result, results = [], 0, 0, None, []
        for p, prompt in enumerate(request.prompts or [None]):
            echoed = self.echo(request, prompt) if request.echo else None
            for i in range(request.n):
                result = self.call(request, False, prompt, i) if request.max_tokens != 0 else None
                choices.append(reply.answer(p * request.n + i, result, echoed))
                new_tokens += result.new_tokens if result else 0
                results += [result] if result else []
            prompt_tokens += result.prompt_tokens if result else len(echoed.ids) if echoed else 0
        usage = _usage(prompt_tokens, new_tokens)
        return reply.envelope(choices, chunk=False, usage=usage, **_shadow_edge(result, results))

    def echo(self, request: ParsedRequest, prompt: str | list[int] | None) -> Echo:
        model = self.model
        ids = model.encode(prompt)  # type: ignore[arg-type]
        text = prompt if isinstance(prompt, str) else (model.tokenizer.decode(ids) if model.tokenizer else "")
        scored = [] if request.logprobs is None else prompt_entries(ids, model.prompt_logprobs(ids, request.logprobs))
        return Echo(text, ids, scored)

    def call(self, request: ParsedRequest, stream: bool, prompt: str | list[int] | None = None, choice: int = 0) -> Any:
        """The model call (in a worker thread): a GenerationResult, or a Response iterator. A
        request without max_tokens gets the bundle's default within this server's limit."""
        model = self.model
        max_new = request.max_tokens
        if max_new is None:
            ids = model.encode_chat(request.messages) if request.chat else model.encode(prompt)  # type: ignore[arg-type]
            max_new = max(1, min(model.default_max_new_tokens, self.max_tokens_limit, model.context_length - len(ids)))
        settings = request.settings | {"max_new_tokens": max_new}
        if choice and "seed" in settings:
            settings["seed"] += choice
        if request.chat:
            # a cascade sends a conversation on to its remote as messages: prefer its chat calls
            method = getattr(model, "stream_chat" if stream else "chat", None)
            if method is not None:
                return method(request.messages, **settings)
            prompt = model.encode_chat(request.messages)
        return (model.stream if stream else model.generate)(prompt, **settings)

    def pieces(self, request: ParsedRequest) -> Iterator[Piece]:
        """Every choice of every prompt streamed one after the other (in a worker thread, one piece
        per next()). A choice's stream is opened and its first Response taken before its echo is
        yielded, so that a request the runtime refuses fails before any chunk is sent."""
        for p, prompt in enumerate(request.prompts or [None]):
            echoed = self.echo(request, prompt) if request.echo else None
            for i in range(request.n):
                index = p * request.n + i
                if request.max_tokens == 0:  # echo alone
                    yield Piece(index, p, None, None, echoed)
                    continue
                responses = self.call(request, True, prompt, i)
                try:
                    response = next(responses, None)
                    if echoed is not None:
                        yield Piece(index, p, None, responses, echoed)
                    while response is not None:
                        yield Piece(index, p, response, responses)
                        response = next(responses, None)
                finally:
                    _close(responses)

    def open_stream(self, request: ParsedRequest) -> tuple[Iterator[Piece], Piece | None]:
        """The pieces and the first one: taken before the headers go out, so that a request the
        runtime refuses (some check lazily) still gets a 400 rather than a broken stream."""
        pieces = self.pieces(request)
        try:
            return pieces, next(pieces, None)
        except BaseException:
            _close(pieces)
            raise

    def close(self, pieces: Iterator[Piece]) -> None:
        _close(pieces)
        self.slots.release()

    async def events(self, reply: Reply, pieces: Iterator[Piece], first: Piece | None) -> AsyncIterator[str]:
        """SSE chunks, one per piece; a choice's last carries its finish_reason (and the cascade's
        fields); usage counts each prompt once, as without a stream."""
        piece, seen, started = first, {}, set()
        prompt_tokens: dict[int, int] = {}
        new_tokens: dict[int, int] = {}
        try:
            while piece is not None:
                response, index = piece.response, piece.index
                if response is None:  # the echoed prompt
                    echoed = piece.echoed
                    assert echoed is not None
                    prompt_tokens[piece.prompt] = len(echoed.ids)
                    finish = "length" if piece.source is None else None
                    text, ids, entries = echoed.text, [], echoed.entries
                else:
                    prompt_tokens[piece.prompt] = response.prompt_tokens
                    new_tokens[index] = response.new_tokens
                    # a stream that keeps its own token_ids (the cascade's, whose remote chunks may
                    # hold several ids) tells them; otherwise each Response is one token
                    kept = getattr(piece.source, "token_ids", None)
                    ids = list(kept[seen.get(index, 0) :]) if kept is not None else [response.token]
                    seen[index] = seen.get(index, 0) + len(ids)
                    finish, text = response.finish_reason, response.text
                    entries = (
                        [] if response.logprob is None else [(response.token, response.logprob, response.top_logprobs)]
                    )
                choice = reply.choice(
                    text, ids, finish, chunk=True, first=index not in started, index=index, entries=entries
                )
                started.add(index)
                done = finish is not None
                extra = _shadow_edge(piece.source, [response] if response is not None else []) if done else {}
                yield _event(reply.envelope([choice], chunk=True, **extra))
                # one token per worker-thread call: the event loop stays free, and a disconnect
                # is noticed between tokens
                piece = await run_in_threadpool(next, pieces, None)
        except Exception as exc:  # after the headers: the error can only travel as an event
            log.exception("generation failed mid-stream")
            yield _event(ApiError(500, str(exc), kind="server_error").payload())
        else:
            if reply.request.include_usage and started:
                usage = _usage(sum(prompt_tokens.values()), sum(new_tokens.values()))
                yield _event(reply.envelope([], chunk=True, usage=usage))
        yield "data: [DONE]\n\n"


@dataclass
class Piece:
    """One step of a streamed answer: a Response of choice `index` (of prompt `prompt`), or, when
    response is None, that choice's echoed prompt. source: the Response stream (None after an
    echo alone), whose cascade fields and kept token_ids the chunks tell."""

    index: int
    prompt: int
    response: Response | None
    source: Any
    echoed: Echo | None = None


def _close(responses: Iterator[Response]) -> None:
    close = getattr(responses, "close", None)
    if close is not None:
        close()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    what = "no such route" if exc.status_code == 404 else exc.detail.lower()
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{what}: {request.method} {request.url.path}"
    return ApiError(exc.status_code, message, code=code, headers=exc.headers).response()


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    return ApiError(500, f"internal error: {exc}", kind="server_error").response()


def create_app(
    model: ServedModel,
    *,
    max_tokens_limit: int = MAX_TOKENS_LIMIT,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_concurrent: int = MAX_CONCURRENT,
    max_queued: int = MAX_QUEUED,
    model_name: str | None = None,
    api_key: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    cors_origins: Sequence[str] = (),
    request_timeout: float = REQUEST_TIMEOUT,
    prompt_cache_entries: int = PROMPT_CACHE_ENTRIES,
) -> Starlette:
    """The ASGI app serving `model` (see the module docstring). api_key: required as
    `Authorization: Bearer KEY`; allowed_hosts: the Host names answered (None: any);
    cors_origins: web origins allowed to call it from a browser (none by default);
    prompt_cache_entries: conversations whose caches the model keeps (0: none), so that a request
    extending an earlier one prefills only its new tokens (prompt_cache.py)."""
    if prompt_cache_entries and getattr(model, "prompt_cache", False) is None:  # a ShadowEdgeModel's
        model.prompt_cache = PromptCache(prompt_cache_entries)  # type: ignore[attr-defined]
    root = getattr(model, "root", None)
    name = model_name or (getattr(root, "name", "") or "shadow-edge")
    server = Server(model, max_tokens_limit, max_request_bytes, max_concurrent, max_queued, name, request_timeout)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/classify", server.classify, methods=["POST"]),
        Route("/v1/classify", server.classify, methods=["POST"]),
    ]
    handlers = {HTTPException: _http_error, ApiError: _api_error, Exception: _server_error}
    guard = server_guard.middleware(api_key, allowed_hosts, cors_origins)
    app = Starlette(routes=routes, exception_handlers=handlers, middleware=guard)  # type: ignore[arg-type]
    app.state.server = server
    return app


def make_server(
    model: ServedModel,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    *,
    api_key: str | None = None,
    allow_no_auth: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    max_connections: int = server_guard.MAX_CONNECTIONS,
    head_timeout: float = server_guard.HEAD_TIMEOUT,
    keep_alive_timeout: float = server_guard.KEEP_ALIVE_TIMEOUT,
    **options: Any,
) -> uvicorn.Server:
    """A uvicorn server for `model` (not started); options: create_app()'s keywords. A network
    address needs an api_key unless allow_no_auth; a loopback one answers only to loopback Host
    names unless allowed_hosts says otherwise. Connections are capped and time out."""
    warning = server_guard.exposure(host, api_key, allow_no_auth)
    hosts = allowed_hosts if allowed_hosts is not None else server_guard.default_hosts(host)
    app = create_app(model, api_key=api_key, allowed_hosts=hosts, **options)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=server_guard.head_timeout_protocol(head_timeout),
        limit_concurrency=max_connections,
        timeout_keep_alive=int(max(1, keep_alive_timeout)),
    )
    if warning:
        logging.getLogger("uvicorn.error").warning(warning)  # uvicorn's log: configured by Config()
    return uvicorn.Server(config)


def serve(
    model: ServedModel, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **options: Any
) -> None:
    """Serve `model` until Ctrl-C. Binds to loopback unless `host` says otherwise; options:
    make_server()'s and create_app()'s keywords."""
    make_server(model, host, port, log_level, **options).run()
