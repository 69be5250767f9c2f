"""`shadow-edge bench`: its JSON report, the bandwidth probe, the plot."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from shadow_edge.bundle import MODE_GRAPHS, read_manifest
from shadow_edge.cli import app
from shadow_edge.runtimes.bandwidth import read_bandwidth


def test_bench_report_has_every_mode_prompt_and_figure(tiny_exports, tmp_path):
    bundle = tiny_exports["qwen3"].bundle
    png = tmp_path / "bench.png"
    args = [
        "bench",
        str(bundle),
        "--prompt-lens",
        "4,8,200",
        "--new-tokens",
        "4",
        "--repeat",
        "1",
        "--threads",
        "1",
        "--constrained",
        "--json",
        "--plot",
        str(png),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["schema"] == "shadow-edge-bench/1"
    assert [(r["mode"], r["threads"]) for r in report["results"]] == [("attached", 1), ("detached", 1), ("detached", 1)]
    assert report["memory_bandwidth_gb_s"]["used"] > 0
    manifest = read_manifest(bundle)
    for result in report["results"]:
        assert result["peak_rss_mb"] > 0
        memory = result["memory"]  # measured at the longest prompt that ran (test_memory.py checks the parts)
        assert memory["prompt_len"] == 8 and memory["peak_rss_mb"] >= memory["rss_end_mb"] - 1
        assert memory["parts_mb"]["kv cache"] > 0 and memory["parts_mb"]["weights mapped"] > 0
        rows = {r["prompt_len"]: r for r in result["rows"]}
        assert "exceeds the context" in rows[200]["skipped"]  # 200 + 4 > 128 positions
        for length in (4, 8):
            row = rows[length]
            decode = row["decode_tok_per_s"]
            assert 0 < decode["min"] <= decode["median"] <= decode["max"] < math.inf
            assert row["prefill_tok_per_s"] > 0
            assert set(row["decode_ms_per_graph"]) == set(MODE_GRAPHS[result["mode"]])
            weights = sum(manifest.graphs[g].weight_bytes_per_token for g in MODE_GRAPHS[result["mode"]])
            assert row["bytes_per_token"]["weights"] == weights > 0
            assert row["bytes_per_token"]["kv_cache"] > 0
            assert 0 < row["bandwidth_fraction"] < math.inf
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_a_mode_the_bundle_lacks(tiny_exports):
    result = CliRunner().invoke(app, ["bench", str(tiny_exports["llama"].bundle), "--modes", "base"])
    assert result.exit_code == 1 and "does not support base" in result.output and "Traceback" not in result.output


def test_bandwidth_probe_is_positive_finite_and_stable():
    runs = [read_bandwidth(1, nbytes=64 << 20, passes=3) for _ in range(2)]
    assert all(0.1e9 < r < 1e13 for r in runs)  # between 0.1 GB/s and 10 TB/s
    assert max(runs) / min(runs) < 4  # stable enough to print, on a noisy shared machine
