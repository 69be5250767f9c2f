"""`export` and `inspect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import command, console, friendly_errors
from .progress_bar import progress_bar
from .reports import print_manifest, warn_fidelity


@command()
@friendly_errors
def export(
    checkpoint: Annotated[
        Path,
        typer.Argument(help="checkpoint folder: shadow-peft (shadow_config.json) or peft SHADOW (adapter_config.json)"),
    ],
    output: Annotated[Path, typer.Argument(help="bundle folder to write")],
    base: Annotated[Path | None, typer.Option(help="base model folder (default: CHECKPOINT/base)")] = None,
    shadow: Annotated[
        Path | None, typer.Option(help="explicit shadow config folder (default: CHECKPOINT/shadow_model)")
    ] = None,
    adapter: Annotated[
        str | None, typer.Option(help="peft: which adapter of the folder (its <name>/ subfolder; default: the top one)")
    ] = None,
    opset: Annotated[int, typer.Option(min=14, max=21, help="ONNX opset of traced graphs")] = 17,
    builder: Annotated[
        str, typer.Option(help="fused (onnxruntime's fused ops, written from the weights) or traced (torch.onnx)")
    ] = "fused",
    force: Annotated[bool, typer.Option("--force", help="replace an existing OUTPUT")] = False,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="compare with PyTorch")] = True,
    tolerance: Annotated[float, typer.Option(min=0.0, help="max |logit diff| allowed by validation")] = 1e-3,
    with_base: Annotated[bool, typer.Option("--with-base", help="add the base model alone (mode 'base')")] = False,
    quantize: Annotated[str, typer.Option(help="none, int8, int4 (or int8-dynamic): see `quantize`")] = "none",
    mobile: Annotated[bool, typer.Option("--mobile", help="also write .ort graphs and genai_config.json")] = False,
    escalation_marker: Annotated[
        str | None, typer.Option(help="cascade default: escalate when the shadow says this ('' = off)")
    ] = None,
    confidence_threshold: Annotated[
        float | None, typer.Option(min=0.0, help="cascade default: escalate under this top-1 probability")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Export a ShadowPEFT checkpoint to a validated ONNX bundle."""
    from ..exporters.export import STAGES
    from ..exporters.export import export as run_export

    labels = {
        "load": "loading checkpoint and base model",
        "shadow": "writing shadow graph",
        "shadow_lm": "writing detached shadow graph",
        "shadow_head": "writing shadow head graph",
        "backbone": "writing backbone graph",
        "base_lm": "writing base graph",
        "tokenizer": "copying tokenizer",
        "validate": "validating against PyTorch",
        "finish": "writing manifest",
    }
    with progress_bar(quiet=as_json) as progress:
        progress(labels["load"], 0, len(STAGES))

        def advance(stage: str) -> None:
            """export() names each stage as it ends (stages a bundle lacks are skipped)."""
            index = STAGES.index(stage)
            following = STAGES[index + 1] if index + 1 < len(STAGES) else stage
            progress(labels[following], index + 1, len(STAGES))

        do_export = run_export
        if quantize != "none":
            from functools import partial

            from ..bundle_tools.quantize import export_quantized

            do_export = partial(export_quantized, to=quantize)
        result = do_export(
            checkpoint,
            output,
            base=base,
            shadow=shadow,
            adapter=adapter,
            opset=opset,
            force=force,
            validate=validate,
            tolerance=tolerance,
            with_base=with_base,
            mobile=mobile,
            escalation=_escalation(marker=escalation_marker, confidence_threshold=confidence_threshold),
            builder=builder,
            progress=advance,
        )
    if as_json:
        print(
            json.dumps(
                {
                    "output": str(result.output),
                    "seconds": round(result.seconds, 2),
                    "validation": result.manifest.validation,
                    "fidelity": result.manifest.fidelity,
                }
            )
        )
        return
    print_manifest(result.output)
    warn_fidelity(getattr(result, "warnings", []))
    console.print(f"[green]exported[/] {result.output} in {result.seconds:.1f} s")


def _escalation(**settings: Any) -> dict[str, Any]:
    """Escalation settings given on the command line ('' turns the marker off)."""
    from ..escalation_policy import EscalationPolicy

    return EscalationPolicy().updated(**settings).to_dict() if any(v is not None for v in settings.values()) else {}


@command()
@friendly_errors
def inspect(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Show a bundle's graphs, inputs/outputs, sizes and validation figures."""
    from ..bundle import read_manifest

    manifest = read_manifest(bundle)
    if as_json:
        print(manifest.to_json(), end="")
        return
    print_manifest(bundle)
