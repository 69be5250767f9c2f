"""`shadow-edge run`: output, and one-line errors for corrupt bundles and bad requests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import shadow_edge
from shadow_edge.bundle import MANIFEST_FILE
from shadow_edge.cli import app


def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["run", *[str(a) for a in args]])
    assert "Traceback" not in result.output
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(args, expected: str) -> None:
    code, stdout, stderr = run(*args)
    assert code == 1, (stdout, stderr)
    assert stderr.count("\n") == 1 and stderr.startswith("error:"), stderr
    assert expected in stderr, stderr


def test_run_json_reports_the_generated_tokens_text_and_stats(tiny_text_export):
    code, stdout, _ = run(tiny_text_export.bundle, "--prompt", "the cat", "--max-new-tokens", 12, "--json")
    assert code == 0
    report = json.loads(stdout)
    want = shadow_edge.load(tiny_text_export.bundle).generate("the cat", max_new_tokens=12)
    assert report["token_ids"] == want.token_ids and report["text"] == want.text
    assert report["mode"] == "attached" and report["prompt_tokens"] == want.prompt_tokens
    assert report["new_tokens"] == len(report["token_ids"]) and report["finish_reason"] in ("eos", "length")
    for key in ("prefill_s", "decode_tok_per_s", "peak_rss_mb"):
        assert isinstance(report[key], float)


def test_run_detached_with_prompt_ids_streams_ids_and_prints_stats(tiny_exports):
    bundle = tiny_exports["qwen3"].bundle
    code, stdout, stderr = run(bundle, "--prompt-ids", "1,2,3", "--detached", "--max-new-tokens", 9, "--greedy")
    assert code == 0
    want = shadow_edge.load(bundle, mode="detached").generate([1, 2, 3], max_new_tokens=9, temperature=0)
    assert [int(t) for t in stdout.split()] == want.token_ids
    assert "3 prompt tokens" in stderr and "tok/s" in stderr and "peak RSS" in stderr


def test_run_samples_reproducibly_with_a_seed(tiny_exports):
    args = [tiny_exports["llama"].bundle, "--prompt-ids", "4,5", "--temperature", 1.2, "--top-k", 20]
    args += ["--top-p", 0.95, "--repetition-penalty", 1.1, "--seed", 3, "--max-new-tokens", 16, "--json"]
    first = json.loads(run(*args)[1])["token_ids"]
    assert json.loads(run(*args)[1])["token_ids"] == first


def test_run_chat_wraps_the_prompt_in_the_chat_template(tiny_text_export):
    code, stdout, _ = run(tiny_text_export.bundle, "--chat", "--prompt", "hi", "--max-new-tokens", 6, "--json")
    want = shadow_edge.load(tiny_text_export.bundle).chat([{"role": "user", "content": "hi"}], max_new_tokens=6)
    assert code == 0 and json.loads(stdout)["token_ids"] == want.token_ids


def test_run_stop_string_cuts_the_streamed_text(tiny_text_export):
    full = shadow_edge.load(tiny_text_export.bundle).generate("the cat", max_new_tokens=24, eos_token_ids=[])
    stop = full.text[3:5]
    code, stdout, _ = run(tiny_text_export.bundle, "--prompt", "the cat", "--max-new-tokens", 24, "--stop", stop)
    assert code == 0 and stop not in stdout


# ---- corrupt bundles --------------------------------------------------------------------------


def _edit_manifest(bundle: Path, edit) -> None:
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    edit(data)
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _point_outside(bundle: Path) -> None:
    """A manifest that names, and lists with the right hash, a graph beside the bundle."""
    shutil.copy(bundle / "shadow.onnx", bundle.parent / "shadow.onnx")

    def edit(data: dict) -> None:
        data["graphs"]["shadow"]["file"] = "../shadow.onnx"
        data["files"]["../shadow.onnx"] = data["files"]["shadow.onnx"]

    _edit_manifest(bundle, edit)


CORRUPTIONS = {
    "missing manifest": (lambda b: (b / MANIFEST_FILE).unlink(), "no manifest.json"),
    "manifest not JSON": (lambda b: (b / MANIFEST_FILE).write_text("{not json"), "is not valid JSON"),
    "unknown version": (lambda b: _edit_manifest(b, lambda d: d.update(format_version=99)), "version 99"),
    "not a manifest": (lambda b: (b / MANIFEST_FILE).write_text("[1, 2]"), "not a shadow-edge-bundle manifest"),
    "truncated weights": (
        lambda b: (b / "weights.data").write_bytes((b / "weights.data").read_bytes()[:-10]),
        "corrupt or truncated",
    ),
    "modified graph": (lambda b: _flip_last_byte(b / "shadow.onnx"), "does not match its sha256"),
    "missing graph": (lambda b: (b / "backbone.onnx").unlink(), "bundle file missing: backbone.onnx"),
    "path outside the bundle": (lambda b: _point_outside(b), "names a file outside the bundle: '../shadow.onnx'"),
    "unlisted graph file": (
        lambda b: _edit_manifest(b, lambda d: d["graphs"]["backbone"].update(file="other.onnx")),
        "lists no file 'other.onnx'",
    ),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_bundle_gives_a_one_line_error(tiny_exports, tmp_path, corruption):
    bundle = shutil.copytree(tiny_exports["llama"].bundle, tmp_path / "bundle")
    damage, expected = CORRUPTIONS[corruption]
    damage(bundle)
    assert_one_line_error([bundle, "--prompt-ids", "1,2"], expected)


def test_no_verify_skips_the_hashes_but_not_the_sizes(tiny_exports, tmp_path):
    bundle = shutil.copytree(tiny_exports["llama"].bundle, tmp_path / "bundle")
    _flip_last_byte(bundle / "weights.data")  # padding or a weight: same size, other hash
    assert_one_line_error([bundle, "--prompt-ids", "1,2"], "does not match its sha256")
    assert run(bundle, "--prompt-ids", "1,2", "--max-new-tokens", 2, "--no-verify")[0] == 0
    (bundle / "weights.data").write_bytes(b"")
    assert_one_line_error([bundle, "--prompt-ids", "1,2", "--no-verify"], "corrupt or truncated")


def test_a_missing_bundle_gives_a_one_line_error(tmp_path):
    assert_one_line_error([tmp_path / "nowhere", "--prompt-ids", "1"], "bundle folder not found")


# ---- bad requests -----------------------------------------------------------------------------

BAD_REQUESTS = [
    (["--prompt-ids", "1,2,96"], "token id 96 is outside the vocabulary (0..95)"),
    (["--prompt-ids", "1,-4"], "token id -4 is outside the vocabulary"),
    (["--prompt-ids", "1,x"], "token ids must be integers"),
    (["--prompt-ids", ","], "no token ids given"),
    (["--prompt-ids", "1,[/x]"], "got '1,[/x]'"),  # printed as is, not as Rich markup
    (["--prompt-ids", "1", "--max-new-tokens", "-5"], "max_new_tokens must be a positive integer"),
    (["--prompt-ids", "1", "--max-new-tokens", "0"], "max_new_tokens must be a positive integer"),
    (["--prompt-ids", "1", "--max-new-tokens", "100000000"], "exceeds the model's context of 128"),
    (["--prompt-ids", "1", "--temperature", "-1"], "temperature must be >= 0"),
    (["--prompt-ids", "1", "--top-p", "0"], "top_p must be in (0, 1]"),
    (["--prompt-ids", "1", "--greedy", "--temperature", "0.7"], "--greedy cannot be combined"),
    (["--prompt-ids", "1", "--threads", "0"], "--threads must be at least 1"),
    (["--prompt-ids", "1", "--stop", "x"], "stop strings need a bundle with a tokenizer"),
    (["--prompt", "hello"], "this bundle has no tokenizer"),
    (["--chat", "--prompt", "hello"], "--chat needs a bundle whose tokenizer has a chat template"),
    (["--prompt", "a", "--prompt-ids", "1"], "give one of --prompt"),
    ([], "no prompt given"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_REQUESTS, ids=[e for _, e in BAD_REQUESTS])
def test_a_bad_request_gives_a_one_line_error(tiny_exports, args, expected):
    assert_one_line_error([tiny_exports["llama"].bundle, *args], expected)


def test_version_prints_the_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"shadow-edge {shadow_edge.__version__}\n"


@pytest.mark.parametrize("command", ["run", "serve", "export", "quantize", "eval", "bench", "inspect", None])
def test_help_shows_flags_without_a_bool_metavar(command):
    result = CliRunner().invoke(app, [command, "--help"] if command else ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--help" in result.stdout
    assert "<bool>" not in result.stdout
    if command == "run":  # options that take a value keep theirs
        assert "--chat " in result.stdout and "<int>" in result.stdout


def test_a_plain_prompt_to_a_chat_trained_bundle_warns_in_detached_and_cascade_mode(tiny_text_export):
    plain = [tiny_text_export.bundle, "--prompt", "hi", "--max-new-tokens", 3]
    for mode, warned in (("detached", True), ("cascade", True), ("attached", False)):
        code, _, stderr = run(*plain, "--mode", mode)
        assert code == 0 and ("pass --chat" in stderr) is warned, (mode, stderr)
    code, _, stderr = run(*plain, "--mode", "detached", "--chat")
    assert code == 0 and "pass --chat" not in stderr


def test_ctrl_c_in_a_chat_stops_the_answer_not_the_chat(tiny_text_export, monkeypatch, capsys):
    from shadow_edge.cli import run_commands

    model = shadow_edge.load(tiny_text_export.bundle, threads=1)
    lines = iter(["hi", KeyboardInterrupt, "and then", ""])  # Ctrl-C at the prompt drops the line

    def typed(_prompt: str) -> str:
        line = next(lines)
        if not isinstance(line, str):
            raise line()
        return line

    monkeypatch.setattr("builtins.input", typed)
    asked, streams = [], []
    real = model.stream_chat

    def stream_chat(messages, **settings):
        asked.append([dict(m) for m in messages])
        stream = real(messages, **settings)
        streams.append(stream)
        if len(asked) == 1:  # Ctrl-C arrives while the first answer is being written
            return _InterruptedAfter(stream, 2)
        return stream

    monkeypatch.setattr(model, "stream_chat", stream_chat)
    run_commands._chat_loop(model, {"max_new_tokens": 6, "temperature": 0, "eos_token_ids": []})
    partial = "".join(r.text for r in real([{"role": "user", "content": "hi"}], max_new_tokens=2, temperature=0))
    assert len(asked) == 2  # the chat went on after the stopped answer
    assert asked[1] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": partial},
        {"role": "user", "content": "and then"},
    ]
    assert streams[0].gi_frame is None  # the first generation was closed, not left running
    out = capsys.readouterr()
    assert "answer stopped" in out.err and out.out.startswith(partial)


class _InterruptedAfter:
    """A real stream whose consumer gets KeyboardInterrupt after `count` responses, as when SIGINT
    arrives between tokens; close() closes the real stream."""

    def __init__(self, stream, count):
        self.stream, self.left = stream, count

    def __iter__(self):
        return self

    def __next__(self):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return next(self.stream)

    def close(self):
        self.stream.close()


def test_chat_has_readline_history_in_a_terminal(tiny_text_export):
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    master, slave = pty.openpty()
    command = [sys.executable, "-c", "from shadow_edge.cli import app; app()", "run", str(tiny_text_export.bundle)]
    command += ["--chat", "--max-new-tokens", "2", "--threads", "1"]
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=os.environ, start_new_session=True)
    os.close(slave)
    seen = b""

    def read_until(marker: bytes, count: int) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while seen.count(marker) < count and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    return

    try:
        read_until(b"> ", 1)
        os.write(master, b"hello there\r")
        read_until(b"> ", 2)
        os.write(master, b"\x1b[A\r")  # the up arrow recalls the last line
        read_until(b"> ", 3)
        os.write(master, b"\r")  # an empty line ends the chat
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    after_second_prompt = seen.split(b"> ")[2]
    assert after_second_prompt.startswith(b"hello there"), seen  # redrawn by readline
