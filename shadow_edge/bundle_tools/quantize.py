"""`quantize_bundle()`: a float32 bundle becomes an int8 or int4 bundle with a fidelity report.

Stages: read and verify the source -> per graph, load it with its weights, quantize it
(quantize_graph.py) or keep it float32 -> store every weight once in a fresh weights.data
(weights.py: a quantized tensor that several graphs read, such as the shadow layer of shadow.onnx
and shadow_lm.onnx, is still stored once) -> copy the tokenizer files -> evaluate against the
source (evaluate.py) -> manifest -> move into place. Written through the same staging folder as
export: on failure, Ctrl-C, or fidelity under the floor with strict=True, nothing is written.

Needs onnx and onnxruntime, not torch.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx

from ..bundle import (
    BACKBONE_GRAPH,
    BASE_LM_GRAPH,
    MANIFEST_FILE,
    MODE_GRAPHS,
    SHADOW_GRAPH,
    SHADOW_HEAD_GRAPH,
    GraphSpec,
    Manifest,
    file_entries,
    modes_of,
    read_manifest,
    resolve_inside,
    sha256_file,
    verify_files,
)
from ..errors import OutputExistsError, QuantizeError
from ..runtimes.memory import release_freed_heap
from .evaluate import FLOORS, below_floor, evaluate
from .quantize_graph import GRID_SHARE, PRECISIONS, QuantizeSettings, quantize_model
from .quantize_grid import graph_on_grid
from .staging import staging
from .weights import WEIGHTS_FILE, SharedWeights, weight_bytes_per_token

BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits: a power of two, at least 16
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits compute type: 0 default, 1 fp32, 2 fp16, 3 bf16, 4 int8


@dataclass(frozen=True)
class Profile:
    """What a profile fills in where the caller left quantize_head "auto" / accuracy_level None."""

    head: str | None = None
    accuracy_level: int | None = None


# per host (README: which profile for which host)
#   native  onnxruntime on a CPU (Python, Node, Electron, phones): int8 head under int4, level 4
#   web     onnxruntime-web (wasm): MatMulNBits dequantizes before computing there, so the 49152-wide
#           head stays float32 (330-680 ms a token as int8/int4, 26 ms in float32); accuracy level 0
#           so that x86 computes in float32 as wasm does and both give the same tokens
PROFILES = {"native": Profile(), "web": Profile(head="float32", accuracy_level=0)}


@dataclass
class QuantizeResult:
    output: Path
    manifest: Manifest
    seconds: float
    warnings: list[str]  # fidelity under the floor (strict=False): say it loudly


def _check(source: Manifest, settings: QuantizeSettings, graphs, modes) -> tuple[list[str], list[str]]:
    """(graphs the output keeps, graphs to quantize), or a QuantizeError naming the bad value."""
    if settings.to not in PRECISIONS:
        raise QuantizeError(f"cannot quantize to {settings.to!r}: choose one of {', '.join(PRECISIONS)}")
    if settings.to != "int8-dynamic" and settings.block_size not in BLOCK_SIZES:
        raise QuantizeError(f"block size {settings.block_size} is not supported: choose one of {BLOCK_SIZES}")
    if settings.to != "int8-dynamic" and settings.head not in (None, "int8", "int4"):
        raise QuantizeError(f"cannot quantize the head to {settings.head!r}: choose int8 or int4")
    if settings.off_grid not in (None, "float32", "int8", "int4"):
        raise QuantizeError(
            f"cannot quantize the off-grid weights to {settings.off_grid!r}: choose float32, int8 or int4"
        )
    if settings.accuracy not in (None, *ACCURACY_LEVELS):
        raise QuantizeError(f"accuracy level {settings.accuracy} is not one of {ACCURACY_LEVELS}")
    for mode in modes or ():
        if mode not in source.modes:
            raise QuantizeError(f"the bundle has no {mode} mode (it has: {', '.join(source.modes)})")
    keep = [g for g in source.graphs if modes is None or any(g in MODE_GRAPHS[m] for m in modes)]
    if SHADOW_GRAPH in keep and SHADOW_HEAD_GRAPH in source.graphs and SHADOW_HEAD_GRAPH not in keep:
        keep.append(SHADOW_HEAD_GRAPH)  # no weights of its own: the cascade stays possible
    chosen = keep if graphs is None else list(graphs)
    for name in chosen:
        if name not in keep:
            raise QuantizeError(f"no graph {name!r} to quantize (the output holds: {', '.join(keep)})")
    done = [g for g in keep if source.graphs[g].precision != "float32"]
    if done:
        raise QuantizeError(
            f"graph {done[0]} is already {source.graphs[done[0]].precision}",
            hint="quantize the float32 bundle that `shadow-edge export` wrote",
        )
    return keep, chosen


def _base_on_grid(root: Path, source: Manifest, block: int) -> bool:
    """Whether the base model's weights (the backbone's, or base_lm's) lie partly on a 4-bit grid."""
    graph = next((source.graphs[g] for g in (BACKBONE_GRAPH, BASE_LM_GRAPH) if g in source.graphs), None)
    return graph is not None and graph_on_grid(resolve_inside(root, graph.file), 4, block, GRID_SHARE)


def _copy_other_files(source_root: Path, source: Manifest, folder: Path) -> None:
    """Tokenizer, chat template and the like: every file that is not a graph, weights or mobile package."""
    graph_files = {spec.file for spec in source.graphs.values()}
    packaged = set(source.mobile.get("files", []))
    for name in source.files:
        if name in graph_files or name in packaged or name.endswith(".data"):
            continue
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(resolve_inside(source_root, name), target)


def _versions() -> dict[str, str]:
    out = {}
    for name in ("shadow-edge", "onnx", "onnxruntime"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def quantize_bundle(
    bundle: str | Path,
    output: str | Path,
    to: str = "int4",
    *,
    block_size: int = 32,
    symmetric: bool = True,
    quantize_head: bool | str = "auto",
    accuracy_level: int | None = None,
    grid: bool = True,
    off_grid: str | None = "auto",
    graphs: Sequence[str] | None = None,
    modes: Sequence[str] | None = None,
    force: bool = False,
    check: bool = True,
    strict: bool = False,
    text: str | None = None,
    threads: int | None = None,
    mobile: bool = False,
    progress: Callable[[str], None] | None = None,
    source_label: str | None = None,
    profile: str = "native",
) -> QuantizeResult:
    """Write a quantized copy of `bundle` to `output`.

    to: "int8" or "int4" (MatMulNBits: block_size, symmetric) or "int8-dynamic" (quantize_dynamic).
    quantize_head: the lm_head / shadow head's precision: "auto" (int8 under an int4 body, a
    precision above the body's; float32 otherwise), False / "float32", True (at `to`), "int8",
    "int4". grid: weights that lie on a block grid (a GGUF base) are stored on it exactly
    (quantize_grid.py), and an embedding table on a symmetric grid is read on it once no float32
    head needs it; False rounds them like any other. off_grid: the precision of the weights on no
    grid ("auto": int8 when int4 re-quantizes a base partly on a grid, a GGUF, where they are the
    adapter, a trained shadow and the GGUF's own 5-8-bit tensors, which int4 rounding hurts most;
    else `to`). accuracy_level: MatMulNBits compute
    (default 0 for int8, 4 for int4; see quantize_graph.py for the trade-off). graphs: the graphs to
    quantize (default all; the others are copied float32). modes: the modes the output keeps
    (default all; ["detached"] makes a phone bundle without the backbone). check: evaluate against
    the source and store the figures in manifest.fidelity; under FLOORS a warning, or with
    strict=True a QuantizeError. mobile: also write the ORT-format graphs and the onnxruntime-genai
    folder (mobile.py). source_label: how the manifest names the source (default: its path).
    profile: the host the bundle is for, PROFILES ("web": a float32 head, accuracy level 0)."""
    started = time.perf_counter()
    source_root, output = Path(bundle), Path(output)
    notify = progress or (lambda stage: None)
    source = read_manifest(source_root)
    if profile not in PROFILES:
        raise QuantizeError(f"no profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if quantize_head == "auto" and PROFILES[profile].head:
        quantize_head = PROFILES[profile].head
    if accuracy_level is None:
        accuracy_level = PROFILES[profile].accuracy_level
    if quantize_head == "auto":
        quantize_head = "int8" if to == "int4" else False
    if off_grid == "auto":
        off_grid = "int8" if to == "int4" and grid and _base_on_grid(source_root, source, block_size) else None
    settings = QuantizeSettings(to, block_size, symmetric, quantize_head, accuracy_level, grid, off_grid)
    if profile == "web" and settings.head:
        raise QuantizeError(
            f"the web profile keeps the head float32 (a {settings.head} head is slow in wasm)",
            hint="drop --quantize-head, or quantize with --profile native",
        )
    keep, chosen = _check(source, settings, graphs, modes)
    verify_files(source_root, source)
    warnings: list[str] = []
    with staging(output, force, inputs=[source_root]) as folder:
        weights = SharedWeights(folder / WEIGHTS_FILE)
        specs: dict[str, GraphSpec] = {}
        for name in keep:
            spec = source.graphs[name]
            model = onnx.load(resolve_inside(source_root, spec.file))  # with its weights, in memory
            if name in chosen:
                model, done = quantize_model(model, settings, in_place=True)
                spec = replace(spec, precision=done.precision, quantization=done.record(settings))
            weights.externalize(name, model)
            onnx.save_model(model, folder / spec.file)
            specs[name] = replace(spec, weight_bytes_per_token=weight_bytes_per_token(model))
            del model
            # onnxruntime's quantizer leaves reference cycles that hold a copy of the graph's weights
            # (4 GB after Gemma 3's four graphs): free them, and the heap they grew, before the next
            gc.collect()
            release_freed_heap()
            notify(name)
        _copy_other_files(source_root, source, folder)
        manifest = Manifest(
            model=source.model,
            graphs=specs,
            files={},
            modes=modes_of(specs),
            source={
                **source.source,
                "weights": weights.record(list(specs)),
                "quantized_from": {
                    "bundle": source_label or str(source_root.resolve()),
                    "manifest_sha256": sha256_file(source_root / MANIFEST_FILE),
                    "precision": to,
                    "profile": profile,
                },
                "validation": source.validation,
            },
            created_by=_versions(),
            validation={
                "skipped": True,
                "reason": "quantized bundle: the float32 source's validation against "
                "PyTorch is in source.validation; figures against that source are in fidelity",
            },
            generation=source.generation,
            tokenizer=source.tokenizer,
            escalation=source.escalation,
        )
        if mobile:
            from .mobile import package_mobile

            manifest.mobile = package_mobile(folder, manifest)
            notify("mobile")
        manifest.files = file_entries(folder)
        (folder / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        if check:
            report = evaluate(folder, source_root, text=text, threads=threads)
            report["against"] = source_label or report["against"]
            failures = below_floor(report, to)
            manifest.fidelity = {**report, "floors": FLOORS[to], "passed": not failures, "failures": failures}
            if failures and strict:
                raise QuantizeError("fidelity under the floor, nothing written: " + "; ".join(failures))
            warnings = failures
            (folder / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        notify("evaluate")
    return QuantizeResult(output=output, manifest=manifest, seconds=time.perf_counter() - started, warnings=warnings)


def export_quantized(
    checkpoint: str | Path, output: str | Path, to: str, *, force: bool = False, **options
) -> QuantizeResult:
    """`shadow-edge export --quantize`: export float32 to a scratch folder beside output, quantize it
    into output (evaluated against that float32 export), then drop the scratch folder. options:
    export()'s keyword arguments, plus mobile, strict and text for quantize_bundle()."""
    from ..exporters.export import export

    quantize_options = {k: options.pop(k) for k in ("mobile", "strict", "text") if k in options}
    output = Path(output)
    if output.exists() and not force:  # fail before the slow export, as export itself would
        raise OutputExistsError(f"output {output} already exists")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.float32-", dir=output.parent) as scratch:
        source = export(checkpoint, Path(scratch) / "bundle", **options).output
        label = "the float32 export made on the way (not kept)"
        return quantize_bundle(source, output, to, force=force, source_label=label, **quantize_options)
