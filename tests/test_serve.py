"""`shadow-edge serve`: a real uvicorn server on loopback, answers compared token for token with the
library, bad requests, concurrency, disconnects, and the command line."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from serving import serve_command
from typer.testing import CliRunner

import shadow_edge
from shadow_edge.cli import app
from shadow_edge.runtimes.generate import GenerationResult
from shadow_edge.runtimes.server import make_server

LIMITS = dict(max_tokens_limit=64, max_request_bytes=64 * 1024, max_concurrent=2, max_queued=2)
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]


@contextlib.contextmanager
def running(model: Any, **limits: Any) -> Iterator[str]:
    """A uvicorn server for `model` on 127.0.0.1 and a free port, in a background thread."""
    server = make_server(model, host="127.0.0.1", port=0, log_level="warning", **limits)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)


def request(url: str, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any, dict]:
    """(status, JSON answer, headers)."""
    conn = connect(url)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload, dict(response.getheaders())


def post(url: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    return request(url, "POST", path, body, raw)[:2]


def open_stream(url: str, path: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = connect(url)
    conn.request("POST", path, body=json.dumps(body | {"stream": True}), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    return conn, response


def events(response: http.client.HTTPResponse) -> Iterator[Any]:
    """The data of each SSE event: a parsed chunk, or the string "[DONE]"."""
    for line in response:
        if line.startswith(b"data: "):
            data = line[6:].strip().decode()
            yield data if data == "[DONE]" else json.loads(data)


def stream(url: str, path: str, body: dict) -> list[Any]:
    conn, response = open_stream(url, path, body)
    try:
        return list(events(response))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def text_models(tiny_text_export) -> dict[str, Any]:
    return {mode: shadow_edge.load(tiny_text_export.bundle, mode=mode) for mode in ("attached", "detached")}


@pytest.fixture(scope="module")
def text_url(text_models) -> Iterator[str]:
    with running(text_models["attached"], **LIMITS) as url:
        yield url


@pytest.fixture(scope="module")
def detached_url(text_models) -> Iterator[str]:
    with running(text_models["detached"]) as url:
        yield url


@pytest.fixture(scope="module")
def ids_model(tiny_exports) -> Any:
    return shadow_edge.load(tiny_exports["llama"].bundle)


@pytest.fixture(scope="module")
def ids_url(ids_model) -> Iterator[str]:
    with running(ids_model) as url:
        yield url


def usage(result: GenerationResult) -> dict[str, int]:
    total = result.prompt_tokens + result.new_tokens
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.new_tokens, "total_tokens": total}


# -- answers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["attached", "detached"])
def test_greedy_completion_equals_the_library(mode, text_models, text_url, detached_url):
    url = text_url if mode == "attached" else detached_url
    want = text_models[mode].generate("the cat", max_new_tokens=12, temperature=0)
    body = {"model": "x", "prompt": "the cat", "max_tokens": 12, "temperature": 0, "return_token_ids": True}
    status, got = post(url, "/v1/completions", body)
    assert status == 200
    assert got["object"] == "text_completion" and got["id"].startswith("cmpl-") and isinstance(got["created"], int)
    assert got["model"] == text_models[mode].root.name
    (choice,) = got["choices"]
    assert choice["token_ids"] == want.token_ids and choice["text"] == want.text and choice["index"] == 0
    assert choice["finish_reason"] == {"eos": "stop", "length": "length"}[want.finish_reason]
    assert got["usage"] == usage(want) and got["usage"]["completion_tokens"] == len(want.token_ids)
    assert "token_ids" not in post(url, "/v1/completions", body | {"return_token_ids": False})[1]["choices"][0]


def test_token_id_prompts_on_a_bundle_without_tokenizer_always_return_the_ids(ids_model, ids_url):
    want = ids_model.generate([1, 2, 3], max_new_tokens=9, temperature=0)
    status, got = post(ids_url, "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 9, "temperature": 0})
    assert status == 200
    assert got["choices"][0]["token_ids"] == want.token_ids and got["choices"][0]["text"] == ""
    assert got["usage"] == usage(want)
    # OpenAI's batch form with one prompt is the same request
    assert (
        post(ids_url, "/v1/completions", {"prompt": [[1, 2, 3]], "max_tokens": 9, "temperature": 0})[1]["choices"]
        == got["choices"]
    )


def test_chat_completion_equals_model_chat(text_models, text_url):
    want = text_models["attached"].chat(CHAT, max_new_tokens=10, temperature=0)
    body = {"messages": CHAT, "max_completion_tokens": 10, "temperature": 0, "return_token_ids": True}
    status, got = post(text_url, "/v1/chat/completions", body)
    assert status == 200 and got["object"] == "chat.completion" and got["id"].startswith("chatcmpl-")
    (choice,) = got["choices"]
    assert choice["message"] == {"role": "assistant", "content": want.text}
    assert choice["token_ids"] == want.token_ids and got["usage"] == usage(want)
    # content given as text parts is the same message
    parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in CHAT]
    assert post(text_url, "/v1/chat/completions", body | {"messages": parts})[1]["choices"] == got["choices"]


def test_a_conversation_reuses_the_previous_turns_caches(tiny_text_export, text_url):
    fresh = shadow_edge.load(tiny_text_export.bundle)  # no prompt cache
    messages = [{"role": "user", "content": "hello there"}]
    before = request(text_url, "GET", "/health")[1]["prompt_cache"]
    for turn in range(3):
        want = fresh.chat(messages, max_new_tokens=6, temperature=0)
        body = {"messages": messages, "max_completion_tokens": 6, "temperature": 0, "return_token_ids": True}
        (choice,) = post(text_url, "/v1/chat/completions", body)[1]["choices"]
        assert choice["token_ids"] == want.token_ids, turn
        messages += [choice["message"], {"role": "user", "content": f"and then {turn}?"}]
    after = request(text_url, "GET", "/health")[1]["prompt_cache"]
    # turns 2 and 3 extend the conversation: their shared prefix is not prefilled again
    assert after["reused_tokens"] - before["reused_tokens"] >= 2 * len(fresh.encode_chat(messages[:1]))
    assert 1 <= after["entries"] <= 2 and after["bytes"] > 0


def test_streamed_completion_adds_up_to_the_answer(text_url):
    body = {"prompt": "the cat", "max_tokens": 16, "temperature": 0, "return_token_ids": True}
    whole = post(text_url, "/v1/completions", body)[1]
    chunks = stream(text_url, "/v1/completions", body | {"stream_options": {"include_usage": True}})
    assert chunks[-1] == "[DONE]"
    *pieces, usage_chunk = chunks[:-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    choices = [c["choices"][0] for c in pieces]
    assert all(c["object"] == "text_completion" and c["id"] == pieces[0]["id"] for c in pieces)
    assert "".join(c["text"] for c in choices) == whole["choices"][0]["text"]
    assert [t for c in choices for t in c["token_ids"]] == whole["choices"][0]["token_ids"]
    assert len(choices) == whole["usage"]["completion_tokens"]  # one chunk per token
    assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + [whole["choices"][0]["finish_reason"]]


def test_streamed_chat_adds_up_to_the_answer(text_url):
    body = {"messages": CHAT, "max_tokens": 10, "temperature": 0}
    whole = post(text_url, "/v1/chat/completions", body)[1]["choices"][0]
    chunks = stream(text_url, "/v1/chat/completions", body)
    assert chunks[-1] == "[DONE]" and all(c["object"] == "chat.completion.chunk" for c in chunks[:-1])
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0]["role"] == "assistant" and "usage" not in chunks[-2]
    assert "".join(d["content"] for d in deltas) == whole["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["finish_reason"]
    assert "token_ids" not in chunks[0]["choices"][0]


def test_stop_strings_end_the_answer_as_in_the_library(text_models, text_url):
    model = text_models["attached"]
    text = model.generate("the cat", max_new_tokens=24, temperature=0).text
    stop = text[len(text) // 2 :][:2]
    want = model.generate("the cat", max_new_tokens=24, temperature=0, stop=[stop])
    assert want.finish_reason == "stop"
    body = {"prompt": "the cat", "max_tokens": 24, "temperature": 0, "stop": stop, "return_token_ids": True}
    for got in (
        post(text_url, "/v1/completions", body)[1],
        post(text_url, "/v1/completions", body | {"stop": [stop]})[1],
    ):
        assert got["choices"][0]["text"] == want.text and got["choices"][0]["token_ids"] == want.token_ids
        assert got["choices"][0]["finish_reason"] == "stop"
    chunks = stream(text_url, "/v1/completions", body)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == want.text


def test_sampling_with_a_seed_is_reproducible_and_equals_the_library(ids_model, ids_url):
    settings = {"temperature": 1.3, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.1, "seed": 7}
    want = ids_model.generate([4, 5], max_new_tokens=20, **settings)
    body = {"prompt": [4, 5], "max_tokens": 20, **settings}
    first = post(ids_url, "/v1/completions", body)[1]["choices"][0]["token_ids"]
    assert first == want.token_ids == post(ids_url, "/v1/completions", body)[1]["choices"][0]["token_ids"]
    other = post(ids_url, "/v1/completions", body | {"seed": 8})[1]["choices"][0]["token_ids"]
    assert other == ids_model.generate([4, 5], max_new_tokens=20, **(settings | {"seed": 8})).token_ids


def test_defaults_fill_a_request_without_max_tokens_within_the_server_limit(text_models, text_url):
    got = post(text_url, "/v1/completions", {"prompt": "the cat", "temperature": 0})[1]
    want = text_models["attached"].generate("the cat", temperature=0, max_new_tokens=LIMITS["max_tokens_limit"])
    assert got["choices"][0]["text"] == want.text and got["usage"] == usage(want)


def test_health_and_models(text_url, text_models):
    status, health, _ = request(text_url, "GET", "/health")
    name = text_models["attached"].root.name
    assert status == 200 and health["status"] == "ok" and health["mode"] == "attached"
    assert health["model"] == name and health["context_length"] == 128 and health["max_concurrent"] == 2
    assert health["running"] == 0 and health["waiting"] == 0
    status, models, _ = request(text_url, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == [name] and models["object"] == "list"


# -- bad requests --------------------------------------------------------------------------------------

BAD = [
    # (path, body or raw bytes, status, param, words in the message)
    ("/v1/completions", b'{"prompt": "a', 400, None, "not valid JSON"),
    ("/v1/completions", b"\xff\xfe{", 400, None, "not valid JSON"),
    ("/v1/completions", [1, 2], 400, None, "must be a JSON object"),
    ("/v1/completions", {"prompt": "a", "max_tokens": "5"}, 400, "max_tokens", "positive integer"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 400, "max_tokens", "0 only with echo"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 65}, 400, "max_tokens", "limit of 64"),
    ("/v1/completions", {"prompt": "a", "temperature": "hot"}, 400, "temperature", "a number"),
    ("/v1/completions", {"prompt": "a", "temperature": True}, 400, "temperature", "a number"),
    ("/v1/completions", {"prompt": "a", "temperature": -1}, 400, None, "temperature must be >= 0"),
    ("/v1/completions", {"prompt": "a", "top_p": 0}, 400, None, "top_p must be in"),
    ("/v1/completions", {"prompt": "a", "stream": "yes"}, 400, "stream", "true or false"),
    ("/v1/completions", {"prompt": "a", "stop": [1]}, 400, "stop", "list of strings"),
    ("/v1/completions", {"prompt": "a", "n": 0}, 400, "n", "n must be in 1..16"),
    ("/v1/completions", {"prompt": "a", "n": 17}, 400, "n", "n must be in 1..16"),
    ("/v1/completions", {"prompt": "a", "logprobs": 21}, 400, "logprobs", "must be in 0..20"),
    ("/v1/completions", {"prompt": "a", "logprobs": True}, 400, "logprobs", "an integer"),
    ("/v1/completions", {"prompt": "a", "best_of": 2}, 400, "best_of", "not supported"),
    ("/v1/completions", {"prompt": "a", "logit_bias": {"x": 1}}, 400, "logit_bias", "token ids to numbers"),
    ("/v1/completions", {"prompt": "a", "logit_bias": {"5": 101}}, 400, None, "logit_bias values must be in"),
    ("/v1/completions", {"prompt": "a", "logit_bias": {"500": 1}}, 400, None, "outside the vocabulary"),
    ("/v1/completions", {"prompt": "a", "presence_penalty": 3}, 400, None, "presence_penalty must be in"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, 400, "top_logprobs", "needs logprobs: true"),
    ("/v1/chat/completions", {"messages": CHAT, "echo": True}, 400, "echo", "not supported"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt", "empty"),
    ("/v1/completions", {"prompt": []}, 400, "prompt", "empty"),
    ("/v1/completions", {"prompt": ["a", ""]}, 400, "prompt", "empty"),
    ("/v1/completions", {"prompt": ["a"] * 65}, 400, "prompt", "at most 64 prompts"),
    ("/v1/completions", {"prompt": [1, "b"]}, 400, "prompt", "a string, a list of token ids"),
    ("/v1/completions", {"max_tokens": 3}, 400, "prompt", "prompt is required"),
    ("/v1/completions", {"prompt": [1, 500]}, 400, None, "token id 500 is outside the vocabulary"),
    ("/v1/completions", {"prompt": [1] * 100, "max_tokens": 40}, 400, None, "exceeds the model's context of 128"),
    ("/v1/completions", {"prompt": "a" * 70_000}, 413, None, "limit of 65536 bytes"),
    ("/v1/chat/completions", {"max_tokens": 3}, 400, "messages", "non-empty list"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages[0]", "text content"),
    ("/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 99}, 400, "max_completion_tokens", "64"),
]


@pytest.mark.parametrize("path, body, status, param, words", BAD)
def test_bad_requests_get_a_4xx_in_the_openai_error_shape(text_url, path, body, status, param, words):
    got_status, got = post(text_url, path, *((None, body) if isinstance(body, bytes) else (body,)))
    assert got_status == status, got
    assert set(got["error"]) == {"message", "type", "param", "code"}
    assert got["error"]["type"] == "invalid_request_error" and got["error"]["param"] == param
    assert words in got["error"]["message"]


def test_text_and_chat_to_a_bundle_without_tokenizer_are_refused(ids_url):
    status, got = post(ids_url, "/v1/completions", {"prompt": "hello", "max_tokens": 3})
    assert status == 400 and "no tokenizer" in got["error"]["message"]
    status, got = post(ids_url, "/v1/completions", {"prompt": "hello"})  # without max_tokens too
    assert status == 400 and "no tokenizer" in got["error"]["message"]
    status, got = post(ids_url, "/v1/chat/completions", {"messages": CHAT, "stream": True})
    assert status == 400 and "tokenizer" in got["error"]["message"]


def test_unknown_routes_and_methods(text_url):
    status, got, _ = request(text_url, "POST", "/v1/embeddings", {})
    assert (
        status == 404
        and got["error"]["type"] == "invalid_request_error"
        and "/v1/embeddings" in got["error"]["message"]
    )
    status, got, headers = request(text_url, "GET", "/v1/completions")
    assert status == 405 and "POST" in headers["allow"] and got["error"]["code"] == "method_not_allowed"


def test_cross_origin_calls_only_from_the_origins_given(text_models, text_url):
    page = "http://127.0.0.1:5173"
    preflight = {
        "Origin": page,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }

    def headers(url: str, method: str, origin: str) -> dict:
        conn = connect(url)
        conn.request(
            method, "/v1/completions" if method == "OPTIONS" else "/health", headers={**preflight, "Origin": origin}
        )
        response = conn.getresponse()
        response.read()
        conn.close()
        return {k.lower(): v for k, v in response.getheaders()}

    assert "access-control-allow-origin" not in headers(text_url, "OPTIONS", page)  # off by default
    with running(text_models["attached"], cors_origins=[page]) as url:
        assert headers(url, "OPTIONS", page)["access-control-allow-origin"] == page
        assert headers(url, "GET", page)["access-control-allow-origin"] == page
        assert "access-control-allow-origin" not in headers(url, "GET", "http://elsewhere.example")


# -- concurrency ---------------------------------------------------------------------------------------


def test_concurrent_requests_each_get_their_own_tokens(text_models, text_url):
    prompts = ["the cat", "a dog ran", "hello", "once upon a time"]
    model = text_models["attached"]
    alone = [model.generate(p, max_new_tokens=24, temperature=0).token_ids for p in prompts]
    got: dict[int, Any] = {}
    start = threading.Barrier(len(prompts))

    def ask(i: int) -> None:
        body = {"prompt": prompts[i], "max_tokens": 24, "temperature": 0, "return_token_ids": True}
        start.wait()
        if i % 2:  # half of them streamed
            got[i] = [t for c in stream(text_url, "/v1/completions", body)[:-1] for t in c["choices"][0]["token_ids"]]
        else:
            got[i] = post(text_url, "/v1/completions", body)[1]["choices"][0]["token_ids"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [got.get(i) for i in range(len(prompts))] == alone
    assert len({tuple(a) for a in alone}) > 1  # the prompts do give different answers


class Slow:
    """A model whose streams yield one token per 50 ms and never stop on EOS, and record how many
    tokens they made and whether they were closed."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.streams: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def stream(self, prompt: Any, **settings: Any) -> Iterator[Any]:
        record = {"tokens": 0, "closed": False}
        self.streams.append(record)

        def responses() -> Iterator[Any]:
            try:
                for r in self.model.stream(prompt, **settings, eos_token_ids=[]):
                    record["tokens"] += 1
                    time.sleep(0.05)
                    yield r
            finally:
                record["closed"] = True

        return responses()


def wait_idle(url: str) -> None:
    deadline = time.monotonic() + 60
    while request(url, "GET", "/health")[1]["running"]:
        assert time.monotonic() < deadline, "the slot was never freed"
        time.sleep(0.02)


def test_a_full_server_refuses_and_a_client_that_leaves_frees_its_slot(ids_model):
    slow = Slow(ids_model)
    with running(slow, max_concurrent=1, max_queued=0) as url:
        conn, response = open_stream(url, "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 120})
        first = next(events(response))
        assert first["choices"][0]["finish_reason"] is None
        status, got, headers = request(url, "POST", "/v1/completions", {"prompt": [1, 2], "max_tokens": 2})
        assert status == 429 and "busy" in got["error"]["message"] and headers["retry-after"] == "1"
        assert request(url, "GET", "/health")[1]["running"] == 1
        conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
        conn.close()
        wait_idle(url)
        (record,) = slow.streams
        assert record["closed"] and record["tokens"] < 120  # the generation stopped early
        status, got = post(url, "/v1/completions", {"prompt": [1, 2], "max_tokens": 2})
        assert status == 200 and len(got["choices"][0]["token_ids"]) == 2


def test_a_cascade_answer_says_who_served_it(tiny_text_export, text_models):
    """A real cascade forced to escalate (threshold > 1): the attached model's greedy tokens, and
    the cascade's fields under `shadow_edge`, also on the last chunk of a stream."""
    want = text_models["attached"].chat(CHAT, max_new_tokens=10, temperature=0)
    with running(shadow_edge.load_cascade(tiny_text_export.bundle, confidence_threshold=1.5)) as url:
        assert request(url, "GET", "/health")[1]["mode"] == "cascade"
        body = {"messages": CHAT, "max_tokens": 10, "temperature": 0, "return_token_ids": True}
        got = post(url, "/v1/chat/completions", body)[1]
        assert got["choices"][0]["token_ids"] == want.token_ids
        assert got["choices"][0]["message"]["content"] == want.text
        tags = got["shadow_edge"]
        assert (tags["escalated"], tags["served_by"]) == (True, "attached") and tags["reason"].startswith("confidence")
        chunks = stream(url, "/v1/chat/completions", body)
        assert [t for c in chunks[:-1] for t in c["choices"][0]["token_ids"]] == want.token_ids
        assert chunks[-2]["shadow_edge"] == tags and all("shadow_edge" not in c for c in chunks[:-2])


# -- command line --------------------------------------------------------------------------------------


def test_serve_on_a_missing_bundle_is_one_line_and_no_traceback(tmp_path):
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:"), result.stderr


def test_serve_command_answers_on_its_port(tiny_exports, ids_model):
    bundle = tiny_exports["llama"].bundle
    with serve_command(bundle, "--mode", "detached", "--threads", "1", "--max-tokens-limit", "8") as (url, _):
        health = request(url, "GET", "/health")[1]
        assert health["mode"] == "detached" and health["model"] == tiny_exports["llama"].bundle.name
        want = shadow_edge.load(tiny_exports["llama"].bundle, mode="detached").generate([1, 2], max_new_tokens=5)
        assert (
            post(url, "/v1/completions", {"prompt": [1, 2], "max_tokens": 5})[1]["choices"][0]["token_ids"]
            == want.token_ids
        )
        assert post(url, "/v1/completions", {"prompt": [1, 2], "max_tokens": 9})[0] == 400
