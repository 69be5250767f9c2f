"""`classify`: label a text, token ids, or every line of a JSONL file with a classifier bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .common import command, console, friendly_errors


def _read_jsonl(path: Path) -> list[str | list[int]]:
    """One input a line: {"text": ...} or {"prompt": ...} (text), {"input_ids": [...]}, or a bare string."""
    from ..errors import GenerationError

    if not path.is_file():
        raise GenerationError(f"--file {path} not found")
    inputs: list[str | list[int]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GenerationError(f"{path}:{number} is not JSON ({exc.msg})") from None
        if isinstance(item, dict):
            item = next((item[k] for k in ("text", "prompt", "input_ids") if k in item), None)
        if not isinstance(item, str | list):
            raise GenerationError(f'{path}:{number}: expected {{"text": ...}}, {{"input_ids": [...]}} or a string')
        inputs.append(item)
    if not inputs:
        raise GenerationError(f"{path} holds no inputs")
    return inputs


@command()
@friendly_errors
def classify(
    bundle: Annotated[Path, typer.Argument(help="classifier bundle folder (exported from a SEQ_CLS checkpoint)")],
    prompt: Annotated[str | None, typer.Option(help="text to classify")] = None,
    prompt_ids: Annotated[str | None, typer.Option(help="token ids to classify, e.g. 1,2,3")] = None,
    file: Annotated[
        Path | None, typer.Option(help='JSONL, one input a line: {"text": ...} or {"input_ids": [...]}')
    ] = None,
    detached: Annotated[
        bool, typer.Option("--detached", help="the shadow and its classifier only (no backbone)")
    ] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime intra-op threads")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line: label, logits, probs")] = False,
) -> None:
    """Print the label and the probabilities of each input."""
    from ..errors import GenerationError
    from ..runtimes.generate import parse_token_ids
    from ..runtimes.model import load

    given = [v for v in (prompt, prompt_ids, file) if v is not None]
    if len(given) != 1:
        raise GenerationError("give exactly one of --prompt TEXT, --prompt-ids 1,2,3 or --file FILE.jsonl")
    inputs: list[str | list[int]]
    if file is not None:
        inputs = _read_jsonl(file)
    else:
        inputs = [prompt if prompt is not None else parse_token_ids(prompt_ids or "")]
    model = load(bundle, mode="detached" if detached else "attached", threads=threads)
    results = model.classify(inputs)
    if as_json:
        for result in results:
            print(json.dumps(result.to_dict()))
        return
    labels = model.manifest.model.labels
    table = Table("input", "label", *labels)
    for item, result in zip(inputs, results, strict=True):
        shown = item if isinstance(item, str) else ",".join(map(str, item))
        table.add_row(shown[:60], result.label, *(f"{p:.3f}" for p in result.probs))
    console.print(table)
