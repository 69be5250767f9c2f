"""Mobile packaging: ORT-format graphs for reduced onnxruntime builds, and the bundle folder as an
onnxruntime-genai model folder.

    mobile/{graph}.ort                every bundle graph in ORT format, optimized offline (level all,
                                      "Fixed" style, target arm). ORT format has no external data:
                                      each .ort holds its own copy of the weights it reads.
    mobile/required_operators.config  the operators and opsets of all .ort graphs, for a reduced
                                      onnxruntime build (build.py --include_ops_by_config)
    genai_config.json                 onnxruntime_genai.Model(bundle) runs the bundle:
        detached  (the default) type "decoder": genai_shadow_lm.onnx is shadow_lm with num_logits_to_keep fixed to
                  0 (all positions), the only input genai does not feed;
        attached  (chosen, or the bundle has no detached mode) type "decoder-pipeline": genai_shadow.onnx
                  (its cache renamed to layer L, after the base's L layers) then genai_backbone.onnx
                  (num_logits_to_keep fixed to 0), shadow_states passed between the stages. genai has
                  one KV cache geometry, so this needs the shadow's KV heads and head dim to equal
                  the base's.
The genai graphs share weights.data with the bundle graphs. They live in the bundle folder itself
because onnxruntime refuses external data outside a model's folder and genai refuses ".." in the
paths of genai_config.json (both measured with onnxruntime 1.32 / onnxruntime-genai 0.18).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..bundle import (
    BACKBONE_GRAPH,
    LOGITS_TO_KEEP,
    PAST_KEY,
    PAST_VALUE,
    PRESENT_KEY,
    PRESENT_VALUE,
    SHADOW_GRAPH,
    SHADOW_LM_GRAPH,
    SHADOW_STATES,
    CacheSpec,
    Manifest,
)

MOBILE_DIR = "mobile"
OPERATORS_CONFIG = "required_operators.config"
GENAI_CONFIG = "genai_config.json"
GENAI_THREADS = 4  # a phone's big cores; apps override it in genai_config.json or og.Config
_TOKEN_INPUTS = ["input_ids", "attention_mask", "position_ids"]


def fix_logits_to_keep(model: onnx.ModelProto) -> onnx.ModelProto:
    """The num_logits_to_keep input becomes a constant 0 (logits of all new positions)."""
    inputs = [i for i in model.graph.input if i.name == LOGITS_TO_KEEP]
    for value in inputs:
        model.graph.input.remove(value)
        model.graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), LOGITS_TO_KEEP))
    return model


def rename_values(model: onnx.ModelProto, names: dict[str, str]) -> onnx.ModelProto:
    """Rename graph inputs/outputs and every node reference to them."""
    for value in [*model.graph.input, *model.graph.output]:
        value.name = names.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    return model


def _cache_names(layers: range) -> tuple[list[str], list[str]]:
    past = [f.format(i) for i in layers for f in (PAST_KEY, PAST_VALUE)]
    present = [f.format(i) for i in layers for f in (PRESENT_KEY, PRESENT_VALUE)]
    return past, present


def _decoder_section(manifest: Manifest, cache: CacheSpec) -> dict[str, Any]:
    return {
        "session_options": {
            "log_id": "onnxruntime-genai",
            "provider_options": [],
            "intra_op_num_threads": GENAI_THREADS,
        },
        "head_size": cache.head_dim,
        "hidden_size": cache.hidden_size,
        # genai reads the query head count only for fused attention ops, which these graphs do not use
        "num_attention_heads": max(1, cache.hidden_size // cache.head_dim),
        "num_key_value_heads": cache.num_kv_heads,
        "inputs": {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            "past_key_names": PAST_KEY.replace("{}", "%d"),
            "past_value_names": PAST_VALUE.replace("{}", "%d"),
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": PRESENT_KEY.replace("{}", "%d"),
            "present_value_names": PRESENT_VALUE.replace("{}", "%d"),
        },
    }


def genai_config(manifest: Manifest, decoder: dict[str, Any], model_type: str) -> dict[str, Any]:
    model, gen = manifest.model, manifest.generation
    temperature = float(gen.get("temperature", 0.0))
    return {
        "model": {
            "bos_token_id": model.bos_token_id,
            "context_length": model.max_position_embeddings,
            "eos_token_id": model.eos_token_ids,
            "pad_token_id": model.pad_token_id if model.pad_token_id is not None else (model.eos_token_ids or [0])[0],
            "type": model_type,
            "vocab_size": model.vocab_size,
            "decoder": decoder,
        },
        "search": {
            "do_sample": temperature > 0,
            "max_length": model.max_position_embeddings,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            # the graphs concatenate past and new KV themselves: genai must not share one buffer
            "past_present_share_buffer": False,
            "repetition_penalty": float(gen.get("repetition_penalty", 1.0)),
            "temperature": temperature if temperature > 0 else 1.0,
            "top_k": int(gen.get("top_k", 0)) or (1 if temperature == 0 else 50),
            "top_p": float(gen.get("top_p", 1.0)),
        },
    }


def _load(folder: Path, manifest: Manifest, graph: str) -> onnx.ModelProto:
    return onnx.load(folder / manifest.graphs[graph].file, load_external_data=False)  # weights stay shared


def write_genai(folder: Path, manifest: Manifest, mode: str | None = None) -> dict[str, Any]:
    """genai_config.json and its graphs for `mode`: by default detached when the bundle has it, else
    the attached pipeline."""
    model = manifest.model
    mode = mode or ("detached" if "detached" in manifest.modes else "attached")
    if mode not in manifest.modes or mode not in ("detached", "attached"):
        return {"skipped": f"no {mode} mode to describe for onnxruntime-genai (bundle modes: {manifest.modes})"}
    if mode == "detached":
        onnx.save_model(fix_logits_to_keep(_load(folder, manifest, SHADOW_LM_GRAPH)), folder / "genai_shadow_lm.onnx")
        decoder = {**_decoder_section(manifest, model.shadow), "filename": "genai_shadow_lm.onnx"}
        decoder["num_hidden_layers"] = model.shadow.num_layers
        config, mode, files = genai_config(manifest, decoder, "decoder"), "detached", ["genai_shadow_lm.onnx"]
    else:
        base, shadow = model.base, model.shadow
        if (shadow.num_kv_heads, shadow.head_dim) != (base.num_kv_heads, base.head_dim):
            return {"skipped": "the shadow's KV heads / head dim differ from the base's; genai has one cache geometry"}
        base_past, base_present = _cache_names(range(base.num_layers))
        shadow_past, shadow_present = _cache_names(range(base.num_layers, base.num_layers + shadow.num_layers))
        old_past, old_present = _cache_names(range(shadow.num_layers))
        renamed = dict(zip(old_past + old_present, shadow_past + shadow_present, strict=True))
        onnx.save_model(rename_values(_load(folder, manifest, SHADOW_GRAPH), renamed), folder / "genai_shadow.onnx")
        onnx.save_model(fix_logits_to_keep(_load(folder, manifest, BACKBONE_GRAPH)), folder / "genai_backbone.onnx")
        decoder = _decoder_section(manifest, base)
        decoder["num_hidden_layers"] = base.num_layers + shadow.num_layers
        decoder["pipeline"] = [
            {
                "shadow": {
                    "filename": "genai_shadow.onnx",
                    "inputs": _TOKEN_INPUTS + shadow_past,
                    "outputs": [SHADOW_STATES, *shadow_present],
                },
                "backbone": {
                    "filename": "genai_backbone.onnx",
                    "inputs": [*_TOKEN_INPUTS, SHADOW_STATES, *base_past],
                    "outputs": ["logits", *base_present],
                },
            }
        ]
        config, mode = genai_config(manifest, decoder, "decoder-pipeline"), "attached"
        files = ["genai_shadow.onnx", "genai_backbone.onnx"]
    (folder / GENAI_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {"config": GENAI_CONFIG, "mode": mode, "graphs": files, "files": [GENAI_CONFIG, *files]}


@contextlib.contextmanager
def _quiet_converter():
    """The converter prints progress to stdout and logs at INFO."""
    logger = logging.getLogger("ort_format_model.utils")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def write_ort(folder: Path, manifest: Manifest) -> dict[str, Any]:
    """mobile/{graph}.ort for every bundle graph and one required_operators.config for all."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    from onnxruntime.tools.ort_format_model import create_config_from_models

    target = folder / MOBILE_DIR
    target.mkdir(exist_ok=True)
    graphs = {}
    with _quiet_converter(), tempfile.TemporaryDirectory(prefix="shadow-edge-ort-") as scratch:
        for name, spec in manifest.graphs.items():
            convert_onnx_models_to_ort(
                folder / spec.file,
                output_dir=Path(scratch),
                optimization_styles=[OptimizationStyle.Fixed],
                target_platform="arm",
            )
            ort_file = Path(spec.file).with_suffix(".ort").name
            shutil.move(Path(scratch) / ort_file, target / ort_file)
            graphs[name] = f"{MOBILE_DIR}/{ort_file}"
        create_config_from_models([folder / f for f in graphs.values()], target / OPERATORS_CONFIG, False)
    return {
        "graphs": graphs,
        "required_operators": f"{MOBILE_DIR}/{OPERATORS_CONFIG}",
        "optimization": "level all, Fixed style, target arm",
        "files": [*graphs.values(), f"{MOBILE_DIR}/{OPERATORS_CONFIG}"],
    }


def package_mobile(folder: Path, manifest: Manifest, genai_mode: str | None = None) -> dict[str, Any]:
    """Write the ORT-format graphs and the genai files into a bundle folder; returns manifest.mobile."""
    ort = write_ort(folder, manifest)
    genai = write_genai(folder, manifest, genai_mode)
    files = ort.pop("files") + genai.pop("files", [])
    return {"ort": ort, "genai": genai, "files": files}
