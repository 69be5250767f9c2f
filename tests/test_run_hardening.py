"""`shadow-edge run` on hostile input (issue 11, findings 2, 6 and 9): corrupt weights under
--no-verify, a closed stdin, a prompt that is not UTF-8, bad seeds, too many threads, too many drafts.
Each gives one line on stderr, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import shadow_edge
from shadow_edge.cli import app
from shadow_edge.errors import BundleError, GenerationError
from shadow_edge.runtimes.sessions import capped_threads, usable_cores


def run(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["run", *[str(a) for a in args]])
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception), result.output
    return result.exit_code, result.stdout, result.stderr


def one_line_error(stderr: str, words: str) -> None:
    lines = [line for line in stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], stderr


@pytest.fixture
def corrupt(tiny_exports, tmp_path):
    """A copy of a tiny bundle whose weights.data is overwritten with one float32 value (same size)."""

    def make(value: float) -> Path:
        bundle = Path(shutil.copytree(tiny_exports["llama"].bundle, tmp_path / f"bundle-{value}"))
        size = (bundle / "weights.data").stat().st_size
        (bundle / "weights.data").write_bytes(np.full(size // 4, value, dtype=np.float32).tobytes())
        return bundle

    return make


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_from_corrupt_weights_stop_generation(corrupt, value):
    bundle = corrupt(value)
    code, _, stderr = run(bundle, "--prompt-ids", "1,2", "--max-new-tokens", 4, "--no-verify")
    assert code == 1
    one_line_error(stderr, "non-finite values (NaN or inf): its weights are probably corrupt")
    assert "run without --no-verify" in stderr
    for mode in ("attached", "detached"):
        with pytest.raises(BundleError, match="non-finite"):
            shadow_edge.load(bundle, mode=mode, verify="size").generate([1, 2], max_new_tokens=4)


def test_no_verify_warns_that_corrupt_weights_go_unnoticed(corrupt):
    code, _, stderr = run(corrupt(0.0), "--prompt-ids", "1,2", "--max-new-tokens", 2, "--no-verify")
    assert code == 0 and "warning: --no-verify: weights are not checked" in stderr


def test_chat_with_stdin_closed_is_one_line(tiny_text_export):
    command = [sys.executable, "-c", "from shadow_edge.cli import app; app()", "run", str(tiny_text_export.bundle)]
    command += ["--chat", "--max-new-tokens", "2"]
    # fd 0 closed before Python starts: sys.stdin is None
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=os.environ, preexec_fn=lambda: os.close(0)
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    one_line_error(result.stderr, "reads the message from stdin, which is closed")


def test_chat_with_an_empty_or_undecodable_stdin_is_one_line(tiny_text_export):
    for data, words in ((b"", "read an empty message"), (b"hi \xff", "not valid UTF-8")):
        result = CliRunner().invoke(app, ["run", str(tiny_text_export.bundle), "--chat"], input=data)
        assert result.exit_code == 1 and not isinstance(result.exception, Exception), result.output
        one_line_error(result.stderr, words)


def test_a_prompt_that_is_not_utf8_is_one_line(tiny_text_export):
    # a command-line argument of invalid bytes reaches Python as a lone surrogate (surrogateescape)
    prompt = os.fsdecode(b"the \xff cat")
    for extra in ([], ["--chat"]):
        code, _, stderr = run(tiny_text_export.bundle, "--prompt", prompt, *extra)
        assert code == 1
        one_line_error(stderr, "not valid UTF-8 text (bytes ff at character 4)")


@pytest.mark.parametrize("seed", ["-1", "-99999999999"])
def test_a_negative_seed_is_one_line(tiny_exports, seed):
    code, _, stderr = run(tiny_exports["llama"].bundle, "--prompt-ids", "1,2", "--seed", seed, "--temperature", 1)
    assert code == 1
    one_line_error(stderr, f"seed must be a non-negative integer, got {seed}")
    with pytest.raises(GenerationError, match="seed"):
        shadow_edge.load(tiny_exports["llama"].bundle).generate([1, 2], seed=int(seed), max_new_tokens=2)


def test_threads_above_the_cores_warn_and_are_capped(tiny_exports):
    cores = usable_cores()
    assert capped_threads(1000) == (
        cores,
        f"1000 threads asked for, but this machine has {cores} usable cores: using {cores}",
    )
    assert capped_threads(1) == (1, "") and capped_threads(None) == (None, "")
    code, stdout, stderr = run(tiny_exports["llama"].bundle, "--prompt-ids", "1,2", "--threads", 1000, "--json")
    assert code == 0 and json.loads(stdout)["new_tokens"] > 0
    assert f"warning: 1000 threads asked for, but this machine has {cores} usable cores" in stderr


def test_draft_tokens_are_capped_by_what_can_still_be_generated(tiny_exports):
    args = [tiny_exports["llama"].bundle, "--prompt-ids", "1,2", "--speculative", "--greedy", "--json"]
    code, stdout, _ = run(*args, "--draft-tokens", 1_000_000, "--max-new-tokens", 4)
    report = json.loads(stdout)
    assert code == 0 and report["new_tokens"] == 4
    assert report["speculative"]["drafted"] <= 3  # each round's last token comes from the backbone
    want = shadow_edge.load(tiny_exports["llama"].bundle).generate([1, 2], max_new_tokens=4, temperature=0)
    assert report["token_ids"] == want.token_ids
