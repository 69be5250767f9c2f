"""The cascade's remote escalation against a real `shadow-edge serve` server on loopback."""

from __future__ import annotations

import pytest
from test_serve import running

import shadow_edge
from shadow_edge.errors import RemoteError

GREEDY = {"max_new_tokens": 10, "temperature": 0.0}
CHAT = [{"role": "user", "content": "the cat"}]


@pytest.fixture(scope="module")
def attached(tiny_text_export):
    return shadow_edge.load(tiny_text_export.bundle, mode="attached")


@pytest.fixture(scope="module")
def remote_url(attached):
    with running(attached, max_tokens_limit=32, max_concurrent=1) as url:
        yield url


def test_forced_remote_escalation_gives_the_attached_answer(tiny_text_export, attached, remote_url):
    cascade = shadow_edge.load_cascade(tiny_text_export.bundle, remote=remote_url, confidence_threshold=1.5)
    assert "backbone" not in cascade.runners  # the device holds the shadow and its head only
    for prompt in ("hello world", "abc abc"):
        want = attached.generate(prompt, **GREEDY)
        got = cascade.generate(prompt, **GREEDY)
        assert (got.served_by, got.escalated) == ("remote", True) and got.reason.startswith("confidence")
        assert got.token_ids == want.token_ids and got.text == want.text
        assert got.new_tokens == len(want.token_ids) and got.finish_reason in ("stop", "length")
    want = attached.chat(CHAT, **GREEDY)
    stream = cascade.stream_chat(CHAT, **GREEDY)  # the messages themselves go to the server
    assert "".join(r.text for r in stream) == want.text and stream.token_ids == want.token_ids
    assert stream.served_by == "remote"


def test_threshold_zero_never_calls_the_remote(tiny_text_export):
    # nothing listens on port 9: a call would fail
    cascade = shadow_edge.load_cascade(
        tiny_text_export.bundle, remote="http://127.0.0.1:9", confidence_threshold=0.0, marker=""
    )
    want = shadow_edge.load(tiny_text_export.bundle, mode="detached").generate("the cat", **GREEDY)
    got = cascade.generate("the cat", **GREEDY)
    assert got.served_by == "shadow" and got.token_ids == want.token_ids


def test_remote_failures_are_one_line_errors(tiny_text_export, remote_url):
    down = shadow_edge.load_cascade(tiny_text_export.bundle, remote="http://127.0.0.1:9", confidence_threshold=1.5)
    with pytest.raises(RemoteError, match="cannot reach the remote http://127.0.0.1:9"):
        down.generate("the cat", **GREEDY)
    refusing = shadow_edge.load_cascade(tiny_text_export.bundle, remote=remote_url, confidence_threshold=1.5)
    with pytest.raises(RemoteError, match="answered 400: .*max_tokens"):
        refusing.generate("the cat", max_new_tokens=64)  # over the server's limit of 32
    with pytest.raises(RemoteError, match="http"):
        shadow_edge.load_cascade(tiny_text_export.bundle, remote="ftp://example")


def test_serve_remote_needs_cascade_mode(tiny_text_export):
    from typer.testing import CliRunner

    from shadow_edge.cli import app

    result = CliRunner().invoke(app, ["serve", str(tiny_text_export.bundle), "--remote", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and result.stderr.startswith("error: --remote needs --mode cascade")
    result = CliRunner().invoke(app, ["serve", str(tiny_text_export.bundle), "--mode", "sideways"])
    assert result.exit_code != 0 and "sideways" in result.output and "Traceback" not in result.output
