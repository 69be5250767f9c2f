"""Progress of the long calls: the library reports steps through its callback (export, quantize,
eval, bench), the CLI draws them with Rich on a terminal's stderr and nowhere else."""

from __future__ import annotations

import io
import json

from rich.console import Console
from typer.testing import CliRunner

from shadow_edge.bundle import read_manifest
from shadow_edge.bundle_tools.evaluate import evaluate
from shadow_edge.bundle_tools.quantize import quantize_bundle
from shadow_edge.cli import app
from shadow_edge.cli import progress_bar as bar_module
from shadow_edge.cli.quality_commands import quantize_stages
from shadow_edge.progress import silent
from shadow_edge.runtimes.bench import BenchSettings, bench


class Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[str, int, int | None]] = []

    def __call__(self, label: str, done: int, total: int | None) -> None:
        self.steps.append((label, done, total))


def assert_counts_up_to_its_total(steps: list[tuple[str, int, int | None]]) -> None:
    done = [d for _, d, t in steps if t is not None]
    assert done == sorted(done) and done[-1] == steps[-1][2], steps
    assert len({t for _, _, t in steps if t is not None}) == 1, steps  # one total throughout


def test_eval_reports_a_step_per_mode(tiny_exports):
    bundle = tiny_exports["llama"].bundle
    record = Recorder()
    report = evaluate(bundle, bundle, progress=record)
    modes = list(report["modes"])
    assert [s for s in record.steps if s[2] is not None] == [
        *[(f"comparing {m} on {report['tokens']} tokens", i, len(modes)) for i, m in enumerate(modes)],
        ("compared", len(modes), len(modes)),
    ]
    assert_counts_up_to_its_total(record.steps)


def test_bench_reports_the_probe_and_each_mode(tiny_exports):
    record = Recorder()
    settings = BenchSettings(prompt_lens=[4], new_tokens=2, modes=["detached", "attached"], threads=1, repeat=1)
    bench(tiny_exports["llama"].bundle, settings, progress=record)
    assert record.steps == [
        ("probing memory bandwidth", 0, 3),
        ("measuring detached at 1 thread(s)", 1, 3),
        ("measuring attached at 1 thread(s)", 2, 3),
        ("measured", 3, 3),
    ]


def test_quantize_reports_every_graph_then_the_evaluation(tiny_exports, tmp_path):
    bundle = tiny_exports["llama"].bundle
    graphs = len(read_manifest(bundle).graphs)
    record = Recorder()
    stages = quantize_stages(record, "int8", graphs, mobile=False, check=True)
    quantize_bundle(bundle, tmp_path / "q", "int8", progress=stages)
    assert_counts_up_to_its_total(record.steps)
    assert record.steps[0] == ("quantizing to int8", 0, graphs + 1)
    assert record.steps[-2] == ("evaluating against the source", graphs, graphs + 1)
    assert record.steps[-1] == ("done", graphs + 1, graphs + 1)


def test_the_bar_draws_on_a_terminal_only(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(bar_module, "err_console", Console(file=screen, force_terminal=True, width=120))
    with bar_module.progress_bar() as progress:
        progress("measuring detached", 1, 4)
    assert "measuring detached" in screen.getvalue() and "1/4" in screen.getvalue()
    with bar_module.progress_bar(quiet=True) as progress:  # --json
        assert progress is silent
    monkeypatch.setattr(bar_module, "err_console", Console(file=io.StringIO(), force_terminal=False))
    with bar_module.progress_bar() as progress:  # stderr is a pipe or a log file
        assert progress is silent


def test_eval_json_on_stdout_stays_parseable(tiny_exports):
    bundle = str(tiny_exports["llama"].bundle)
    result = CliRunner().invoke(app, ["eval", bundle, "--against", bundle, "--mode", "detached", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["modes"]["detached"]["top1_agreement"] == 1.0
