"""`quantize` and `eval`: fidelity tables and warnings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from ..progress import Progress
from .common import command, console, fail, friendly_errors
from .progress_bar import progress_bar
from .reports import print_fidelity, print_manifest, warn_fidelity

# ---- quantize and eval ------------------------------------------------------------------------


def _read_text(path: Path | None) -> str | None:
    from ..errors import BundleError

    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read --text {path}: {getattr(exc, 'strerror', None) or exc}") from None


@command()
@friendly_errors
def quantize(
    bundle: Annotated[Path, typer.Argument(help="float32 bundle folder")],
    output: Annotated[Path, typer.Argument(help="bundle folder to write")],
    to: Annotated[str, typer.Option(help="int8 or int4 (MatMulNBits), or int8-dynamic (quantize_dynamic)")] = "int4",
    profile: Annotated[
        str, typer.Option(help="host: native (onnxruntime on a CPU) or web (onnxruntime-web: float32 head, level 0)")
    ] = "native",
    block_size: Annotated[int, typer.Option(help="MatMulNBits block size along K (16..256, power of 2)")] = 32,
    quantize_head: Annotated[
        str, typer.Option(help="lm_head precision: auto (int8 under int4, else float32), float32, int8, int4")
    ] = "auto",
    accuracy_level: Annotated[
        int | None, typer.Option(help="MatMulNBits compute: 0 (int8 default, exact) .. 4 (int4 default, fast)")
    ] = None,
    grid: Annotated[
        bool, typer.Option("--grid/--no-grid", help="keep weights that lie on a block grid (GGUF) exactly")
    ] = True,
    off_grid: Annotated[
        str, typer.Option(help="weights on no grid: auto (int8 beside a GGUF base's int4), float32, int8, int4")
    ] = "auto",
    only: Annotated[list[str] | None, typer.Option(help="keep only this mode (repeatable), e.g. detached")] = None,
    graph: Annotated[list[str] | None, typer.Option(help="quantize only this graph (repeatable)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing OUTPUT")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="fidelity under the floor is an error")] = False,
    check: Annotated[bool, typer.Option("--eval/--no-eval", help="evaluate against BUNDLE")] = True,
    text: Annotated[Path | None, typer.Option(help="text file to evaluate on (default: built-in)")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads for the evaluation")] = None,
    mobile: Annotated[bool, typer.Option("--mobile", help="also write .ort graphs and genai_config.json")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Quantize a bundle's weights (int8/int4) and report its fidelity against the source."""
    from ..bundle import read_manifest
    from ..bundle_tools.quantize import quantize_bundle

    # quantize_bundle() names each graph as it is written, then "mobile", then "evaluate" (last)
    graphs = None if only else len(read_manifest(bundle).graphs)
    with progress_bar(quiet=as_json) as progress:
        result = quantize_bundle(
            bundle,
            output,
            to,
            block_size=block_size,
            quantize_head=quantize_head,
            accuracy_level=accuracy_level,
            grid=grid,
            off_grid=off_grid,
            graphs=graph,
            modes=only,
            force=force,
            check=check,
            strict=strict,
            text=_read_text(text),
            threads=threads,
            mobile=mobile,
            profile=profile,
            progress=quantize_stages(progress, to, graphs, mobile, check),
        )
    m = result.manifest
    warn_fidelity(result.warnings)
    if as_json:
        sizes = {"bytes": sum(f.size for f in m.files.values())}
        print(
            json.dumps(
                {
                    "output": str(result.output),
                    "seconds": round(result.seconds, 2),
                    **sizes,
                    "precision": {g: s.precision for g, s in m.graphs.items()},
                    "fidelity": m.fidelity,
                }
            )
        )
        return
    print_manifest(result.output)
    console.print(f"[green]quantized[/] {result.output} in {result.seconds:.1f} s")


def quantize_stages(
    progress: Progress, to: str, graphs: int | None, mobile: bool, check: bool
) -> Callable[[str], None]:
    """quantize_bundle()'s stage names as progress steps: `graphs` graph files (None: not known
    ahead, with --only), the mobile files, the evaluation."""
    total = graphs + mobile + 1 if graphs is not None else None
    done = 0
    after_graphs = "evaluating against the source" if check else "writing the manifest"
    progress(f"quantizing to {to}", done, total)

    def stage(name: str) -> None:
        nonlocal done
        done += 1
        if name == "evaluate":
            label = "done"
        elif name == "mobile":
            label = after_graphs
        elif graphs is None or done < graphs:
            label = f"quantizing to {to} ({name} written)"
        else:
            label = "writing the mobile graphs" if mobile else after_graphs
        progress(label, done, total)

    return stage


@command("eval")
@friendly_errors
def eval_(
    bundle: Annotated[Path, typer.Argument(help="bundle folder to evaluate")],
    against: Annotated[Path | None, typer.Option(help="reference bundle (e.g. the float32 source)")] = None,
    reference: Annotated[
        Path | None, typer.Option(help="reference checkpoint, run in PyTorch (needs the export extra)")
    ] = None,
    base: Annotated[Path | None, typer.Option(help="--reference's base model (default: CKPT/base)")] = None,
    text: Annotated[Path | None, typer.Option(help="text file (default: built-in English text)")] = None,
    mode: Annotated[list[str] | None, typer.Option(help="evaluate this mode only (repeatable)")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime (and torch) threads")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Fidelity of BUNDLE against another bundle or its PyTorch checkpoint: top-1 agreement, KL,
    perplexity, greedy agreement, per mode."""
    from ..bundle_tools.evaluate import evaluate

    if (against is None) == (reference is None):
        fail("give one of --against BUNDLE or --reference CHECKPOINT")
    if base is not None and reference is None:
        fail("--base goes with --reference (the checkpoint's base model)")
    with progress_bar(quiet=as_json) as progress:
        report = evaluate(
            bundle,
            against,
            text=_read_text(text),
            modes=mode,
            threads=threads,
            reference=reference,
            base=base,
            progress=progress,
        )
    if as_json:
        print(json.dumps(report))
        return
    print_fidelity(report)
