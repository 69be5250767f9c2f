"""`bench`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import MODE_HELP, command, console, friendly_errors
from .progress_bar import progress_bar


@command()
@friendly_errors
def bench(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    prompt_lens: Annotated[str, typer.Option(help="comma-separated prompt lengths")] = "32,256,1024",
    new_tokens: Annotated[int, typer.Option(min=2, max=4096, help="tokens decoded per run")] = 32,
    mode: Annotated[
        list[str] | None,
        typer.Option(help=f"{MODE_HELP} (repeatable; default: every mode the bundle supports)"),
    ] = None,
    modes: Annotated[str | None, typer.Option(help="comma-separated modes (= --mode, repeated)")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime intra-op threads")] = None,
    repeat: Annotated[int, typer.Option(min=1, max=100, help="runs per case (median reported)")] = 3,
    constrained: Annotated[bool, typer.Option("--constrained", help="also detached at 1 thread")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    plot: Annotated[Path | None, typer.Option(help="write a PNG: decode tok/s against context")] = None,
) -> None:
    """Measure prefill/decode speed, per-graph time, peak RSS and memory-bandwidth use."""
    from ..runtimes.bench import BenchSettings, require_matplotlib
    from ..runtimes.bench import bench as run_bench
    from ..runtimes.bench import plot as write_plot
    from ..runtimes.generate import parse_token_ids

    if plot:
        require_matplotlib()  # before minutes of measuring
    chosen = [*(mode or []), *(modes.split(",") if modes else [])]
    settings = BenchSettings(
        prompt_lens=parse_token_ids(prompt_lens),
        new_tokens=new_tokens,
        modes=list(dict.fromkeys(chosen)) or None,
        threads=threads,
        repeat=repeat,
        constrained=constrained,
    )
    with progress_bar(quiet=as_json) as progress:
        report = run_bench(bundle, settings, progress=progress)
    if plot:
        write_plot(report, plot)
    if as_json:
        print(json.dumps(report))
        return
    table = Table(
        "mode",
        "thr",
        "prompt",
        "prefill tok/s",
        "decode tok/s",
        "ms/token by graph",
        "MB/token",
        "of BW",
        "RSS MB",
        title=f"bench {bundle}",
    )
    for result in report["results"]:
        for row in result["rows"]:
            if "skipped" in row:
                table.add_row(result["mode"], str(result["threads"] or "auto"), str(row["prompt_len"]), row["skipped"])
                continue
            d = row["decode_tok_per_s"]
            table.add_row(
                result["mode"],
                str(result["threads"] or "auto"),
                str(row["prompt_len"]),
                f"{row['prefill_tok_per_s']:.0f}",
                f"{d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f})",
                ", ".join(f"{g} {ms:.1f}" for g, ms in row["decode_ms_per_graph"].items()),
                f"{row['bytes_per_token']['total'] / 1e6:.0f}",
                f"{100 * row['bandwidth_fraction']:.0f}%",
                f"{result['peak_rss_mb']:.0f}",
            )
    console.print(table)
    _print_memory(report)
    bw = report["memory_bandwidth_gb_s"]
    console.print(
        f"memory read bandwidth {bw['used']:.1f} GB/s (probe runs: {', '.join(f'{b:.1f}' for b in bw['runs'])})"
    )


def _print_memory(report: dict) -> None:
    """Each mode's peak RSS against its weights, and what it is made of (runtimes/bench.py)."""
    rows = [(r, r["memory"]) for r in report["results"] if "parts_mb" in r.get("memory", {})]
    if not rows:
        return
    names = list(rows[0][1]["parts_mb"])
    table = Table("mode", "thr", "peak RSS MB", "x weights", *[f"{n} MB" for n in names], title="memory")
    for result, memory in rows:
        parts = memory["parts_mb"]
        table.add_row(
            result["mode"],
            str(result["threads"] or "auto"),
            f"{memory['peak_rss_mb']:.0f}",
            f"{memory['peak_rss_mb'] / memory['weights_mb']:.2f}",
            *["-" if parts[n] is None else f"{parts[n]:.0f}" for n in names],
        )
    console.print(table)
