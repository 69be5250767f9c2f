"""An export never deletes its inputs, replaces an old bundle in one step, cleans up after a killed
export, and turns filesystem failures into one line (issue 11, findings 1, 5 and 8)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_export import run_cli

import shadow_edge
from shadow_edge.bundle import read_manifest, verify_files
from shadow_edge.bundle_tools import staging
from shadow_edge.errors import OutputError


def digest(folder: Path) -> dict[str, str]:
    """Every file under folder (symlinks followed) and its sha256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def inputs(tiny_exports, tmp_path) -> tuple[Path, Path]:
    """A private copy of a checkpoint (base at CKPT/base) and of a separate base folder."""
    source = tiny_exports["llama"]
    ckpt = shutil.copytree(source.checkpoint, tmp_path / "ckpt")
    base = shutil.copytree(source.base, tmp_path / "base")
    return ckpt, base


def assert_refused(args: list, inputs: list[Path], expected: str) -> None:
    before = {p: digest(p) for p in inputs}
    code, output = run_cli("export", *args, "--force")
    assert code == 1, output
    assert expected in output and "would delete the input" in output, output
    assert output.count("error:") == 1
    for p, files in before.items():
        assert p.is_dir() and digest(p) == files, f"{p} changed"


def test_output_equal_to_an_input_is_refused_even_with_force(inputs):
    ckpt, base = inputs
    assert_refused([ckpt, ckpt], [ckpt], "is the input")
    assert_refused([ckpt, base, "--base", base], [ckpt, base], "is the input")


def test_output_containing_or_inside_an_input_is_refused(inputs, tmp_path):
    ckpt, base = inputs
    assert_refused([ckpt, tmp_path, "--base", base], [ckpt, base], "contains the input")
    assert_refused([ckpt, ckpt / "bundle"], [ckpt], "lies inside the input")
    assert_refused([ckpt, ckpt / "base"], [ckpt], "lies inside the input")  # the base found at CKPT/base
    assert not (ckpt / "bundle").exists()


def test_symlinks_are_resolved(inputs, tmp_path):
    ckpt, base = inputs
    (tmp_path / "link").symlink_to(ckpt)
    assert_refused([ckpt, tmp_path / "link"], [ckpt], "is the input")
    # CKPT/base is a symlink to the base folder: the output may not be that folder either
    shutil.rmtree(ckpt / "base")
    (ckpt / "base").symlink_to(base)
    assert_refused([ckpt, base], [ckpt, base], "is the input")


def test_quantize_onto_its_source_bundle_is_refused(tiny_exports, tmp_path):
    bundle = shutil.copytree(tiny_exports["llama"].bundle, tmp_path / "bundle")
    before = digest(bundle)
    code, output = run_cli("quantize", bundle, bundle, "--force")
    assert code == 1 and "would delete the input" in output, output
    assert digest(bundle) == before


def test_replacing_a_bundle_swaps_it_in_one_step(inputs, tmp_path, monkeypatch):
    ckpt, _ = inputs
    out = tmp_path / "out"
    shadow_edge.export(ckpt, out)
    (out / "old.txt").write_text("the old bundle")
    swaps = []
    real = staging.exchange

    def recording(a: Path, b: Path) -> bool:
        done = real(a, b)
        swaps.append(done)
        # right after the swap the output is the new, complete bundle and the old one is beside it
        verify_files(out, read_manifest(out))
        return done

    monkeypatch.setattr(staging, "exchange", recording)
    shadow_edge.export(ckpt, out, force=True)
    assert swaps == [True]  # renameat2(RENAME_EXCHANGE): no moment without a complete output
    assert not (out / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ckpt", "out"]


def test_exchange_swaps_two_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b" / "x").write_text("b")
    assert staging.exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"


def test_a_killed_export_is_cleaned_up_by_the_next(inputs, tmp_path):
    ckpt, _ = inputs
    out = tmp_path / "out"
    code = f"import shadow_edge; shadow_edge.export({str(ckpt)!r}, {str(out)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*/*.onnx")):  # midway: graphs being written
        assert proc.poll() is None and time.monotonic() < deadline, "export ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = sorted(p.name for p in tmp_path.glob(".out.*"))
    assert len(leftovers) == 2 and leftovers[1].endswith(".owner"), leftovers  # folder + its marker
    marker = json.loads((tmp_path / leftovers[1]).read_text())
    assert marker["pid"] == proc.pid
    # a folder without a marker is not ours: never touched
    (tmp_path / ".out.partial-mine").mkdir()
    shadow_edge.export(ckpt, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial-mine", "base", "ckpt", "out"]


def test_a_live_exports_folder_is_left_alone(tmp_path):
    out = tmp_path / "out"
    live = tmp_path / ".out.partial-live"
    live.mkdir()
    (tmp_path / ".out.partial-live.owner").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    assert staging.remove_leftovers(out) == []
    assert live.is_dir()


def test_parent_that_is_a_file_is_one_line(inputs, tmp_path):
    ckpt, _ = inputs
    (tmp_path / "file").write_text("x")
    code, output = run_cli("export", ckpt, tmp_path / "file" / "out")
    assert code == 1 and output.count("error:") == 1 and "is a file, not a folder" in output, output
    with pytest.raises(OutputError):
        shadow_edge.export(ckpt, tmp_path / "file")  # the output itself is a file


@pytest.fixture
def mount(tmp_path):
    """A small tmpfs at tmp_path/mnt (root can mount: CI and developers run as root here)."""
    point = tmp_path / "mnt"
    point.mkdir()
    mounted = []

    def do(options: str) -> Path:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield do
    for p in mounted:
        subprocess.run(["umount", str(p)], check=False)


def test_full_filesystem_is_one_line_and_leaves_nothing(inputs, mount):
    ckpt, _ = inputs
    point = mount("size=64k")
    code, output = run_cli("export", ckpt, point / "out")
    assert code == 1 and output.count("error:") == 1, output
    assert "no space left on the device" in output and str(point) in output, output
    assert list(point.iterdir()) == []


def test_read_only_parent_is_one_line(inputs, mount):
    ckpt, _ = inputs
    point = mount("ro,size=64k")
    code, output = run_cli("export", ckpt, point / "out")
    assert code == 1 and output.count("error:") == 1 and "the filesystem is read-only" in output, output
