"""Rich renderings shared by commands: a bundle's manifest, a fidelity report, fidelity warnings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.errors import MarkupError
from rich.markup import escape
from rich.table import Table

from .common import console, err_console, human_bytes


def print_manifest(bundle: Path) -> None:
    from ..bundle import read_manifest

    m = read_manifest(bundle)
    model = m.model
    console.print(
        f"[bold]{escape(str(bundle))}[/]  {escape(model.architecture)}  vocab {model.vocab_size}  "
        f"hidden {model.hidden_size}  modes: {escape(', '.join(m.modes))}"
    )
    if "format" in m.source:  # which checkpoint format and library the bundle came from
        task = f", {model.task}" + (f" ({', '.join(model.labels)})" if model.labels else "")
        library = f"{m.source.get('library', m.source['format'])} {m.source.get('library_version', '')}".strip()
        console.print(f"from: {m.source['format']} checkpoint ({library}{task})", highlight=False)
    caches = Table("cache", "layers", "kv heads", "head dim", "hidden", title="KV caches")
    for name, spec in (("base", model.base), ("shadow", model.shadow)):
        caches.add_row(name, str(spec.num_layers), str(spec.num_kv_heads), str(spec.head_dim), str(spec.hidden_size))
    console.print(caches)
    graphs = Table("graph", "file", "built", "precision", "inputs", "outputs", "weights", title="Graphs")
    per_graph = _lookup(m.source, "weights", "bytes_per_graph")
    builders = _lookup(m.source, "graph_builders")  # bundles before 0.2 were traced
    for name, g in m.graphs.items():
        cached = any(t.name.startswith("past_key_values") for t in g.inputs)
        ins = ", ".join(t.name for t in g.inputs if not t.name.startswith("past_key_values"))
        outs = ", ".join(t.name for t in g.outputs if not t.name.startswith("present"))
        ins, outs = (ins + ", past_key_values.*", outs + ", present.*") if cached else (ins, outs)
        built = str(builders.get(name, "traced"))
        weights = per_graph.get(name, 0)
        shown = human_bytes(weights) if isinstance(weights, (int, float)) else "?"
        graphs.add_row(*map(escape, (name, g.file, built, g.precision, ins, outs, shown)))  # names from the manifest
    console.print(graphs)
    files = Table("file", "size", "sha256", title=f"Files ({human_bytes(sum(f.size for f in m.files.values()))})")
    for name, f in m.files.items():
        files.add_row(escape(name), human_bytes(f.size), escape(f.sha256[:12]))
    console.print(files)
    if m.fidelity:
        _free_form("fidelity", print_fidelity, m.fidelity)
    if "shadow_head" in m.graphs:
        policy = {k: v for k, v in m.escalation.items() if v is not None}
        console.print(
            f"cascade: yes (`run --mode cascade`); escalation defaults: {json.dumps(policy)}", highlight=False
        )
    _free_form("validation", _print_validation, m)


def _lookup(section: dict[str, Any], *keys: str) -> dict[str, Any]:
    """section[k1][k2]..., or {} where the free-form section does not hold an object there."""
    for key in keys:
        section = section.get(key) if isinstance(section, dict) else None
    return section if isinstance(section, dict) else {}


def _free_form(what: str, render: Any, *args: Any) -> None:
    """Render a free-form section (written by the exporter, not typed by the schema): a section
    that does not have the expected shape is reported, not a traceback."""
    try:
        render(*args)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, MarkupError) as exc:
        err_console.print(
            f"[yellow]the manifest's {what} figures are unreadable ({escape(f'{type(exc).__name__}: {exc}')})[/]"
        )


def _print_validation(m: Any) -> None:
    v = m.validation
    if v.get("skipped") or not v:
        console.print(f"[yellow]validation: {escape(str(v.get('reason', 'skipped at export')))}[/]")
        return
    table = Table(
        "mode", "max |logit diff|", "argmax agree", "greedy match", title=f"Validation (tolerance {v['tolerance']:g})"
    )
    for mode in [*m.modes, *(["shadow_head"] if "shadow_head" in v else [])]:
        g = v["greedy"].get(mode)
        table.add_row(
            mode,
            f"{v[mode]['max_abs_diff']:.2e}",
            f"{v[mode]['argmax_agree']}/{v[mode]['positions']}",
            f"{g['matched_prefix']}/{g['tokens']}" if g else "(as detached)",
        )
    console.print(table)


def print_fidelity(report: dict[str, Any]) -> None:
    title = f"Fidelity against {report['against']} ({report['tokens']} tokens of {report['text']})"
    table = Table("mode", "top-1 agree", "mean KL", "perplexity", "ppl (against)", "greedy agree", title=title)
    for mode, f in report["modes"].items():
        table.add_row(
            mode,
            f"{f['top1_agreement']:.1%}",
            f"{f['mean_kl']:.4f}",
            f"{f['perplexity']:.4g}",
            f"{f['reference_perplexity']:.4g}",
            f"{f['greedy_agreement']:.0%} of {f['greedy_prompts']} x {f['greedy_tokens']} tokens",
        )
    console.print(table)


def warn_fidelity(failures: list[str]) -> None:
    """Fidelity under the floor is said loudly, on stderr, but is not an error without --strict."""
    for failure in failures:
        err_console.print(f"[bold red]WARNING: fidelity under the floor:[/] {failure}", highlight=False)
