"""The `shadow-peft` 0.1.x format: the reference library's `save_pretrained()` folder.

    CKPT/shadow_config.json, CKPT/shadow_adapter.safetensors, CKPT/shadow_modules.safetensors (opt.)
    base model:      --base DIR, else CKPT/base/            (HF folder with safetensors, or a .gguf)
    explicit shadow: --shadow DIR, else CKPT/shadow_model/  (a config.json; weights are in the adapter)

The library's own model (`ShadowForCausalLM`, or `ShadowForSequenceClassification` when the
modules file holds classifier heads) is built, and the description points at its modules: blocks
1..L-1 adapted (block 0 untouched), one shared LayerNorm before SiLU update MLPs without biases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...errors import BaseModelError, CheckpointError
from ..checkpoint import explicit_shadow_config, find_dir, first_line, load_base_model, read_safetensors
from .description import (
    CAUSAL_LM,
    OUTPUTS,
    SEQ_CLS,
    Adapter,
    Heads,
    Injection,
    Origin,
    Shadow,
    ShadowCheckpoint,
    Update,
    labels_of,
)

FORMAT = "shadow-peft"
CONFIG_FILE = "shadow_config.json"
ADAPTER_FILE = "shadow_adapter.safetensors"
MODULES_FILE = "shadow_modules.safetensors"
BASE_SUBDIR = "base"
SHADOW_SUBDIR = "shadow_model"


def detect(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file()


def read_checkpoint_files(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(shadow_config, adapter tensors, extra head tensors) of a checkpoint folder."""
    config_path = ckpt / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "injection_hidden_size" not in config:
        raise CheckpointError(f"{config_path} is not a ShadowPEFT config (no injection_hidden_size)")
    adapter_path = ckpt / ADAPTER_FILE
    if not adapter_path.is_file():
        pickled = " (only a pickled shadow_adapter.pt, which shadow-edge does not unpickle)"
        raise CheckpointError(
            f"no {ADAPTER_FILE} in {ckpt}{pickled if (ckpt / 'shadow_adapter.pt').exists() else ''}",
            hint="re-save the adapter with shadow_peft >= 0.1 (it writes safetensors)",
        )
    adapter = read_safetensors(adapter_path)
    needed = ("shadow_injection_model.injection_downs", "shadow_update_model.hidden_norm.weight")
    missing = [k for k in needed if k not in adapter]
    if missing:
        raise CheckpointError(f"{adapter_path} lacks ShadowPEFT tensors {missing}: not a ShadowPEFT adapter")
    modules_path = ckpt / MODULES_FILE
    modules = read_safetensors(modules_path) if modules_path.is_file() else {}
    return config, adapter, modules


def _explicit_shadow_model(shadow_dir: Path) -> Any:
    """An empty explicit shadow model built from its config.json (its weights are in the adapter)."""
    from transformers import AutoModelForCausalLM

    path = shadow_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"explicit shadow folder {shadow_dir} has no config.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("model_type") == "causal_lm_with_hidden_projection":
        # A projected shadow: the inner model's config travels as a dict; the projection
        # weights are in the adapter (shadow_hidden_projection.weight). Parse, never import.
        data = dict(data.get("shadow_model_config") or {})
    return AutoModelForCausalLM.from_config(explicit_shadow_config(data), dtype="float32")


def _check_fit(base: Any, config: dict[str, Any], adapter: dict[str, Any], modules: dict[str, Any]) -> None:
    """Fail with the mismatching quantity before shadow_peft fails with a shape error."""
    cfg = base.config
    downs = adapter["shadow_injection_model.injection_downs"]
    layers, hidden = int(cfg.num_hidden_layers), int(cfg.hidden_size)
    if downs.shape[0] != layers - 1:
        raise BaseModelError(
            f"the adapter was trained for a base with {downs.shape[0] + 1} layers, this base has {layers}"
        )
    if downs.shape[1] != hidden:
        raise BaseModelError(f"the adapter was trained for hidden size {downs.shape[1]}, this base has {hidden}")
    if downs.shape[2] != int(config["injection_hidden_size"]):
        raise CheckpointError("shadow_config.json injection_hidden_size does not match the adapter tensors")
    vocab = int(cfg.vocab_size)
    for key, tensor in [*modules.items(), *adapter.items()]:
        if key.endswith(("lm_head.weight", "embed_tokens.weight")) and tensor.shape[0] != vocab:
            raise BaseModelError(f"{key} has a vocabulary of {tensor.shape[0]}, the base has {vocab}")


def _reference(model: Any, task: str) -> Any:
    """The library's forward, recomputing every position: attached, detached and s0."""
    peft = model.peft_model

    @torch.no_grad()
    def forward(
        input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, outputs: tuple[str, ...] = OUTPUTS
    ) -> dict[str, torch.Tensor]:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos)  # both modes in one pass
        result = {"attached": out.logits, "detached": out.shadow_logits}
        if "states" in outputs:
            result["states"] = peft._compute_initial_shadow_hidden(
                input_ids=input_ids, attention_mask=mask, position_ids=pos, inputs_embeds=None
            )
        return result

    return forward


def _adapter(peft: Any, layers: int) -> Adapter:
    """Blocks 1..L-1: injection k = i - 1 before block i, update k after block k + 1."""
    injection, update = peft.shadow_injection_model, peft.shadow_update_model
    alpha = float(injection.alpha)
    injections = [
        Injection(down=injection.injection_downs[k].detach(), up=alpha * injection.injection_ups[k].detach())
        for k in range(layers - 1)
    ]
    updates = [
        Update(
            gate=(update.update_gates[k][0], update.update_gates[k][2]),
            transform=(update.update_transforms[k][0], update.update_transforms[k][3]),
        )
        for k in range(layers - 2)
    ]
    return Adapter(1, layers - 1, injections, updates, norm=update.hidden_norm, activation="silu")


def load(
    ckpt: Path, base: str | Path | None = None, shadow: str | Path | None = None, adapter_name: str | None = None
) -> ShadowCheckpoint:
    from shadow_peft import ShadowForCausalLM, ShadowForSequenceClassification

    if adapter_name is not None:
        raise CheckpointError(f"--adapter {adapter_name}: a shadow-peft checkpoint holds one adapter")
    config, adapter, modules = read_checkpoint_files(ckpt)
    task = SEQ_CLS if any(k.startswith("classifier_head.") for k in modules) else CAUSAL_LM
    base_dir = find_dir(base, ckpt, BASE_SUBDIR)
    if base_dir is None:
        raise BaseModelError(
            f"no base model given and {ckpt / BASE_SUBDIR} does not exist "
            "(shadow_config.json does not name its base model)"
        )
    num_labels = int(modules["classifier_head.weight"].shape[0]) if task == SEQ_CLS else None
    base_model, base_file = load_base_model(base_dir, num_labels=num_labels)
    _check_fit(base_model, config, adapter, modules)

    explicit = (
        any(k.startswith("shadow_model.embed_tokens.") for k in adapter) or "shadow_hidden_projection.weight" in adapter
    )
    shadow_dir = find_dir(shadow, ckpt, SHADOW_SUBDIR)
    if shadow_dir is not None:
        explicit = True
    shadow_model = None
    if explicit:
        if shadow_dir is None:
            raise CheckpointError(
                "the adapter holds an explicit shadow model, whose architecture the checkpoint does not record",
                hint=f"put the shadow model's config.json in {ckpt / SHADOW_SUBDIR}/ or pass --shadow DIR",
            )
        shadow_model = _explicit_shadow_model(shadow_dir)

    for model in (base_model, shadow_model):
        if model is not None:
            model.config._attn_implementation = "eager"  # one attention formula for torch and ONNX
    wrapper = ShadowForSequenceClassification if task == SEQ_CLS else ShadowForCausalLM
    try:
        reference = wrapper.from_pretrained(base_model, ckpt, shadow_model=shadow_model)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"the adapter does not fit the model: {first_line(exc)}") from None
    reference.eval()
    reference.to(torch.float32)
    peft = reference.peft_model
    shares = bool(
        ((not peft._explicit_shadow_model) or peft._explicit_share_base_embeddings)
        and peft._shadow_supports_inputs_embeds
    )
    base_model = peft.base_model
    projection = peft.shadow_hidden_projection
    if task == SEQ_CLS:
        heads = Heads(
            classifier=reference.classifier_head,
            shadow_classifier=reference.shadow_classifier_head,
            labels=labels_of(base_model.config, num_labels),
        )
    else:
        heads = Heads(lm_head=reference.lm_head, shadow_head=reference.shadow_lm_head)
    layers = int(base_model.config.num_hidden_layers)
    return ShadowCheckpoint(
        origin=Origin(FORMAT, "shadow-peft", ckpt, base_dir, base_file, shadow_dir=shadow_dir),
        task=task,
        base=base_model,
        shadow=Shadow(
            decoder=peft.shadow_model,
            embed=(base_model if shares else peft.shadow_model).get_input_embeddings(),
            shares_base_embeddings=shares,
            projection=projection if isinstance(projection, torch.nn.Linear) else None,
        ),
        adapter=_adapter(peft, layers),
        heads=heads,
        reference=_reference(reference, task),
        details={
            "shadow_config": config,
            "explicit_shadow": explicit,
            "trained_heads": sorted({k.split(".")[0] for k in modules}),
        },
    )
