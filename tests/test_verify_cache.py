"""Remembered sha256 checks: a bundle is hashed once; a file changed since, even with its size and mtime
restored, is hashed again and refused (issue 15, start-up)."""

from __future__ import annotations

import os
import shutil

import pytest

from shadow_edge import verify_cache
from shadow_edge.bundle import read_manifest, verify_files
from shadow_edge.errors import BundleError


@pytest.fixture
def bundle(tiny_exports, tmp_path, monkeypatch):
    monkeypatch.setenv("SHADOW_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    return shutil.copytree(tiny_exports["llama"].bundle, tmp_path / "bundle")


def count_hashes(monkeypatch) -> list:
    hashed = []
    real = verify_cache.sha256_file

    def counting(path, *args):
        hashed.append(path.name)
        return real(path, *args)

    monkeypatch.setattr(verify_cache, "sha256_file", counting)
    return hashed


def test_a_verified_bundle_is_not_hashed_again(bundle, monkeypatch):
    manifest = read_manifest(bundle)
    hashed = count_hashes(monkeypatch)
    verify_files(bundle, manifest)
    assert sorted(hashed) == sorted(manifest.files)
    hashed.clear()
    verify_files(bundle, manifest)
    assert hashed == []
    assert verify_cache.cache_path().is_file()


def test_a_file_changed_with_size_and_mtime_restored_is_refused(bundle):
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    weights = bundle / "weights.data"
    before = weights.stat()
    with open(weights, "r+b") as fh:  # one flipped byte, same size
        fh.seek(before.st_size // 2)
        byte = fh.read(1)
        fh.seek(before.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `touch -r` would do
    assert weights.stat().st_mtime_ns == before.st_mtime_ns and weights.stat().st_size == before.st_size
    with pytest.raises(BundleError, match="does not match its sha256"):
        verify_files(bundle, manifest)


def test_the_cache_can_be_turned_off(bundle, monkeypatch):
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    monkeypatch.setenv("SHADOW_EDGE_VERIFY_CACHE", "0")
    hashed = count_hashes(monkeypatch)
    verify_files(bundle, manifest)
    assert sorted(hashed) == sorted(manifest.files)


def test_an_unwritable_cache_only_costs_the_hashing(bundle, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("SHADOW_EDGE_CACHE_DIR", str(tmp_path / "file"))
    manifest = read_manifest(bundle)
    hashed = count_hashes(monkeypatch)
    verify_files(bundle, manifest)
    verify_files(bundle, manifest)
    assert len(hashed) == 2 * len(manifest.files)
