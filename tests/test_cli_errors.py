"""The CLI's one error table (cli/common.py): expected failures are one line on stderr, with what
happened, what to do next and the debug variable; SHADOW_EDGE_DEBUG=1 gives the traceback."""

from __future__ import annotations

import errno
import os

import pytest
from typer.testing import CliRunner

from shadow_edge.cli import app
from shadow_edge.cli.common import DEBUG_HINT, error_message
from shadow_edge.errors import BundleError

FS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "the filesystem is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EACCES: "permission denied",
}


def one_line(result, *words: str) -> None:
    assert result.exit_code == 1 and not isinstance(result.exception, Exception), result.output
    line = result.stderr.strip()  # export's transient progress bar may leave an empty line
    assert "\n" not in line and line.startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    for word in (*words, DEBUG_HINT):
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize("code", list(FS_ERRORS), ids=[errno.errorcode[c] for c in FS_ERRORS])
def test_filesystem_errors_name_the_path_and_the_problem(code):
    message, hint = error_message(OSError(code, os.strerror(code), "/data/out/weights.data"))
    assert message == f"/data/out/weights.data: {FS_ERRORS[code]}"
    assert hint.endswith(f"({DEBUG_HINT})") and len(hint) > len(DEBUG_HINT) + 3


@pytest.mark.parametrize("code", list(FS_ERRORS), ids=[errno.errorcode[c] for c in FS_ERRORS])
def test_a_filesystem_error_in_a_command_is_one_line(tiny_exports, monkeypatch, code):
    from shadow_edge.exporters import export

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code), "/data/out.bundle.partial/weights.data")

    monkeypatch.setattr(export, "export", full)
    result = CliRunner().invoke(app, ["export", str(tiny_exports["llama"].checkpoint), "/data/out"])
    one_line(result, f"/data/out.bundle.partial/weights.data: {FS_ERRORS[code]}")


def test_an_output_below_a_file_is_one_line(tiny_exports, tmp_path):
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(app, ["export", str(tiny_exports["llama"].checkpoint), str(tmp_path / "file" / "out")])
    one_line(result, str(tmp_path / "file"))


def test_typed_errors_carry_their_hint_and_the_debug_variable(tmp_path):
    assert error_message(BundleError("broken", hint="re-export")) == ("broken", f"re-export ({DEBUG_HINT})")
    assert error_message(RuntimeError("a bug")) is None  # keeps its traceback
    one_line(CliRunner().invoke(app, ["inspect", str(tmp_path / "nope")]), "bundle folder not found")


def test_the_debug_variable_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("SHADOW_EDGE_DEBUG", "1")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "nope")])
    assert isinstance(result.exception, BundleError)
