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
