"""RSS accounting (runtimes/memory.py) and bench's per-mode memory breakdown, against what the kernel
and the caches say."""

from __future__ import annotations

import json
import mmap
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from shadow_edge.bundle import MODE_GRAPHS, cache_for, read_manifest
from shadow_edge.runtimes.bench import memory_breakdown
from shadow_edge.runtimes.generate import peak_rss_mb
from shadow_edge.runtimes.memory import mapped_mb, reset_peak, rss_now

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
PAGE = mmap.PAGESIZE


def test_mapped_mb_counts_the_resident_pages_of_the_files_asked_for(tmp_path):
    read, unread = tmp_path / "read.data", tmp_path / "unread.data"
    for path in (read, unread):
        path.write_bytes(b"\1" * (4 << 20))
    with open(read, "rb") as a, open(unread, "rb") as b:
        with (
            mmap.mmap(a.fileno(), 0, access=mmap.ACCESS_READ) as touched,
            mmap.mmap(b.fileno(), 0, access=mmap.ACCESS_READ),
        ):
            assert mapped_mb([read, unread]) == 0  # mapped, nothing read yet
            assert sum(touched[i] for i in range(0, 4 << 20, PAGE)) == (4 << 20) // PAGE
            assert mapped_mb([read]) == pytest.approx(4, abs=0.01)
            assert mapped_mb([unread]) == 0
            assert mapped_mb([read, unread, tmp_path / "read.data"]) == pytest.approx(4, abs=0.01)  # once each
    assert mapped_mb([read]) == 0  # unmapped


def test_reset_peak_forgets_an_earlier_peak():
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB resident
    del block
    high = peak_rss_mb()
    assert reset_peak()
    now = rss_now()
    assert peak_rss_mb() < high - 32 and peak_rss_mb() == pytest.approx(now.total, abs=8)
    assert now.total == pytest.approx(now.anonymous + now.file)


def test_breakdown_parts_add_up_to_the_rss_and_kv_matches_the_cache_shapes(tiny_exports):
    bundle = tiny_exports["qwen3"].bundle
    manifest = read_manifest(bundle)
    prompt, new = 40, 8
    report = memory_breakdown(bundle, "attached", prompt, new, threads=1)
    parts = report["parts_mb"]
    # the prefill, then `new` one-token steps: prompt + new positions
    kv = sum(
        2 * c.num_layers * c.num_kv_heads * c.head_dim * (prompt + new) * 4
        for c in (cache_for(manifest.model, g) for g in MODE_GRAPHS["attached"])
    )
    assert parts["kv cache"] == pytest.approx(kv / 2**20)
    assert 0 < parts["weights mapped"] <= report["weights_mb"] + 0.1
    assert parts["prepacked copies"] > -4 and parts["sessions and tokenizer"] > 0
    assert parts["prefill activations"] >= 0
    steady = sum(v for k, v in parts.items() if k != "prefill activations")
    # what is not itemised: other file pages (libraries read after the start), allocator slack
    assert steady == pytest.approx(report["rss_end_mb"], abs=24)
    assert report["peak_rss_mb"] >= report["rss_end_mb"] - 1


def test_low_memory_sessions_share_one_mapping_and_decode_the_same_tokens(tiny_exports):
    from shadow_edge.runtimes.model import load

    bundle = tiny_exports["qwen3"].bundle
    data = bundle / "weights.data"
    prompt = [5, 9, 2, 7, 11, 3]
    fast = load(bundle, mode="attached", threads=1, verify="size")
    low = load(bundle, mode="attached", threads=1, verify="size", prepack=False)
    want = fast.generate(prompt, max_new_tokens=12, temperature=0.0).token_ids
    del fast
    assert low.generate(prompt, max_new_tokens=12, temperature=0.0).token_ids == want
    mappings = {id(r.weights) for r in low.engine.runners.values()}
    assert len(mappings) == 1 and None not in mappings  # both graphs read the one mapping
    # every weight page was read, and counted once (a mapping per session would count the shared ones twice)
    assert mapped_mb([data]) == pytest.approx(data.stat().st_size / 2**20, rel=0.02)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _complete(url: str, prompt: str) -> int:
    body = json.dumps({"prompt": prompt, "max_tokens": 2, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:  # too long for the context: refused, after tokenizing
        return refused.code


def test_a_million_character_request_leaves_the_server_no_larger(tiny_text_export):
    from serving import serve_command

    text = ("the cat sat on the mat. " * 50_000)[:1_000_000]
    with serve_command(tiny_text_export.bundle, "--mode", "detached") as (url, proc):
        assert _complete(url, "hello world") == 200
        before = _rss_mb(proc.pid)
        statuses = [_complete(url, text) for _ in range(3)]
        after = _rss_mb(proc.pid)
    assert statuses == [400] * 3  # over the context, found by tokenizing it (~10^6 tokens here)
    # without handing the tokenizer's freed heap back, each such request left ~100+ MB behind
    assert after - before < 40, (before, after)
