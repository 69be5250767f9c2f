"""`export()`: a ShadowPEFT checkpoint (shadow-peft or HF peft SHADOW, loaders/) becomes a validated bundle folder.

Stages: load -> trace graphs -> tokenizer -> validate -> manifest -> move into place.
Everything is written to a temporary folder beside the output and renamed into place only when
complete and validated; on any failure (or Ctrl-C) the temporary folder is removed and an
existing output is left untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..bundle import (
    BACKBONE_GRAPH,
    BASE_LM_GRAPH,
    KV_CONCAT,
    KV_SHARED_BUFFER,
    MANIFEST_FILE,
    SHADOW_GRAPH,
    SHADOW_HEAD_GRAPH,
    SHADOW_LM_GRAPH,
    GraphSpec,
    Manifest,
    ModelSpec,
    file_entries,
    modes_of,
)
from ..bundle_tools.staging import check_not_an_input, staging
from ..errors import ExportError
from ..escalation_policy import EscalationPolicy
from .loaders import SEQ_CLS, ShadowCheckpoint, load_checkpoint
from .onnx_export import BUILDERS, DEFAULT_OPSET, WEIGHTS_FILE, SharedWeights, cache_spec, export_graphs
from .validate import DEFAULT_TOLERANCE, validate_bundle

STAGES = ("load", "shadow", "shadow_lm", "shadow_head", "backbone", "base_lm", "tokenizer", "validate", "finish")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

PURPOSES = {
    SHADOW_GRAPH: "attached: shadow network on new tokens -> shadow_states for the backbone (no head)",
    SHADOW_LM_GRAPH: "detached: the shadow network as a plain decoder with its own head -> logits",
    BACKBONE_GRAPH: "attached: base decoder with injection/update baked in, fed shadow_states -> logits",
    BASE_LM_GRAPH: "base: the base model alone, without the adapter (A/B comparisons, speed baseline)",
    SHADOW_HEAD_GRAPH: "cascade: the shadow head alone, shadow_states -> logits (detached answers keeping the states)",
}


@dataclass
class ExportResult:
    output: Path
    manifest: Manifest
    seconds: float


def _versions() -> dict[str, str]:
    out = {}
    for name in ("shadow-edge", "shadow-peft", "peft", "torch", "transformers", "onnx", "onnxruntime", "onnxscript"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars, warnings or prints from transformers/shadow-peft while exporting."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _save_tokenizer(loaded: ShadowCheckpoint, folder: Path) -> dict:
    """Copy the base's tokenizer (converted from GGUF if needed); {} when it has none."""
    from transformers import AutoTokenizer

    origin = loaded.origin
    has_files = any((origin.base_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    if not (has_files or origin.base_file):
        return {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(origin.base_dir, gguf_file=origin.base_file)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    scratch = folder / ".tokenizer"
    tokenizer.save_pretrained(scratch)
    if not (scratch / "tokenizer.json").is_file():
        shutil.rmtree(scratch)
        return {}
    for name in TOKENIZER_FILES:
        if (scratch / name).is_file():
            shutil.move(str(scratch / name), folder / name)
    shutil.rmtree(scratch)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return {
        "file": "tokenizer.json",
        "chat_template": template,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "add_bos_token": bool(getattr(tokenizer, "add_bos_token", False)),
    }


def _token_ids(config) -> tuple[int | None, list[int], int | None]:
    eos = config.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    bos = config.bos_token_id
    pad = config.pad_token_id
    return (int(bos) if bos is not None else None), eos_ids, (int(pad) if pad is not None else None)


def _generation_defaults(loaded: ShadowCheckpoint, eos_ids: list[int]) -> dict:
    gen = getattr(loaded.base, "generation_config", None)
    defaults = {
        "max_new_tokens": 256,
        "temperature": 0.0,
        "top_k": 0,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "eos_token_ids": eos_ids,
    }
    if gen is not None and gen.do_sample:
        defaults.update(
            temperature=float(gen.temperature or 1.0), top_k=int(gen.top_k or 0), top_p=float(gen.top_p or 1.0)
        )
    return defaults


def _embedding_notes(loaded: ShadowCheckpoint, weights: SharedWeights) -> dict[str, str]:
    tied = bool(getattr(loaded.base_config, "tie_word_embeddings", False))
    shadow_embed = (
        "the base embedding table" if loaded.shadow.shares_base_embeddings else "the shadow's own embedding table"
    )
    both = weights.shared_bytes(SHADOW_GRAPH, BACKBONE_GRAPH)
    return {
        SHADOW_GRAPH: f"Gather on {shadow_embed} in {WEIGHTS_FILE}"
        + (f"; {both} bytes of weights shared with the backbone graph" if both else ""),
        SHADOW_LM_GRAPH: f"Gather on {shadow_embed} in {WEIGHTS_FILE}; the shadow head reads its table "
        "(deduplicated with the lm_head when identical)",
        BACKBONE_GRAPH: f"Gather on the base embedding table in {WEIGHTS_FILE}"
        + ("; the tied lm_head is Gemm(transB=1) on the same stored tensor" if tied else ""),
        BASE_LM_GRAPH: f"the backbone graph's stored tensors in {WEIGHTS_FILE} (no weights of its own)",
        SHADOW_HEAD_GRAPH: f"no embedding; its Gemm(transB=1) reads the shadow head's table in {WEIGHTS_FILE} "
        "(the same stored tensor as the tied lm_head when identical)",
    }


def export(
    checkpoint: str | Path,
    output: str | Path,
    *,
    base: str | Path | None = None,
    shadow: str | Path | None = None,
    adapter: str | None = None,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    validate: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    with_base: bool = False,
    mobile: bool = False,
    escalation: dict[str, Any] | None = None,
    builder: str = "fused",
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a checkpoint of any supported format (loaders/) to a bundle folder at `output`; see the
    module docstring. adapter: which of a peft folder's adapters (its `<name>/` subfolder).
    escalation: the cascade policy defaults written to the manifest (EscalationPolicy fields).
    builder: "fused" (onnx_build.py, onnxruntime's fused ops) or "traced" (torch.onnx)."""
    if builder not in BUILDERS:
        raise ExportError(f"unknown builder {builder!r}: use one of {', '.join(BUILDERS)}")
    policy = EscalationPolicy.from_dict(escalation or {}).to_dict()  # checked before any work
    started = time.perf_counter()
    output = Path(output)
    notify = progress or (lambda stage: None)
    with _quiet_transformers(), staging(output, force, inputs=[Path(checkpoint), base, shadow]) as folder:
        loaded = load_checkpoint(checkpoint, base=base, shadow=shadow, adapter=adapter)
        origin = loaded.origin
        check_not_an_input(output, origin.input_dirs)  # also the folders the loader found
        if with_base and loaded.task == SEQ_CLS:
            raise ExportError("--with-base exports a base language model: a classifier checkpoint has none")
        notify("load")
        names = (SHADOW_GRAPH, SHADOW_LM_GRAPH, SHADOW_HEAD_GRAPH, BACKBONE_GRAPH)
        names += (BASE_LM_GRAPH,) if with_base else ()
        graph_io, weights = export_graphs(loaded, folder, names, opset=opset, on_graph=notify, builder=builder)
        embedding = _embedding_notes(loaded, weights)
        graphs = {
            name: GraphSpec(
                file=file,
                inputs=inputs,
                outputs=outputs,
                purpose=PURPOSES[name],
                embedding=embedding[name],
                weight_bytes_per_token=per_token,
                kv_layout=KV_SHARED_BUFFER if graph_builder == "fused" and name != SHADOW_HEAD_GRAPH else KV_CONCAT,
            )
            for name, (file, inputs, outputs, per_token, graph_builder) in graph_io.items()
        }
        tokenizer = _save_tokenizer(loaded, folder)
        notify("tokenizer")
        config = loaded.base_config
        bos, eos_ids, pad = _token_ids(config)
        model = ModelSpec(
            architecture=type(loaded.base).__name__,
            model_type=config.model_type,
            vocab_size=int(config.vocab_size),
            hidden_size=int(config.hidden_size),
            max_position_embeddings=int(config.max_position_embeddings),
            dtype="float32",
            base=cache_spec(config),
            shadow=cache_spec(loaded.shadow.decoder.config),
            bos_token_id=bos,
            eos_token_ids=eos_ids,
            pad_token_id=pad,
            task=loaded.task,
            labels=loaded.heads.labels,
        )
        validation = {"skipped": True}
        if validate:
            validation = validate_bundle(loaded, folder, graphs, model, tolerance=tolerance)
            if not validation["passed"]:
                raise ExportError("validation failed, nothing written: " + "; ".join(validation["failures"]))
        notify("validate")
        manifest = Manifest(
            model=model,
            graphs=graphs,
            files=file_entries(folder),
            modes=modes_of(graphs),
            source={
                "format": origin.format,
                "library": origin.library,
                "library_version": origin.library_version,
                "task": loaded.task,
                "checkpoint": str(origin.checkpoint_dir.resolve()),
                "base": str(origin.base_dir.resolve()) + (f"/{origin.base_file}" if origin.base_file else ""),
                "base_config_sha256": hashlib.sha256(config.to_json_string().encode()).hexdigest(),
                "adapted_blocks": [loaded.adapter.first, loaded.adapter.last],
                "shadow_shares_base_embeddings": loaded.shadow.shares_base_embeddings,
                **loaded.details,
                "graph_builders": {name: io[4] for name, io in graph_io.items()},
            },
            created_by=_versions(),
            validation=validation,
            generation=_generation_defaults(loaded, eos_ids),
            tokenizer=tokenizer,
            escalation=policy,
        )
        manifest.source["weights"] = weights.record(list(graphs))
        if mobile:  # ORT-format graphs and the onnxruntime-genai files (mobile.py)
            from ..bundle_tools.mobile import package_mobile

            manifest.mobile = package_mobile(folder, manifest)
            manifest.files = file_entries(folder)
        (folder / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        notify("finish")
    return ExportResult(output=output, manifest=manifest, seconds=time.perf_counter() - started)
