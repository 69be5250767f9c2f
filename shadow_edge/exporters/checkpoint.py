"""Load a `shadow-peft` 0.1.x checkpoint and its base model into the reference PyTorch model.

The reference model (`shadow_peft.ShadowForCausalLM`, eval mode, fp32) is both what the graphs
are built from and the oracle they are validated against. Nothing here unpickles: adapters,
heads and base weights are read from safetensors (or GGUF) only.

Where things are found:
    CKPT/shadow_config.json, CKPT/shadow_adapter.safetensors, CKPT/shadow_modules.safetensors (opt.)
    base model:      --base DIR, else CKPT/base/            (HF folder with safetensors, or a .gguf)
    explicit shadow: --shadow DIR, else CKPT/shadow_model/  (a config.json; weights are in the adapter)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BaseModelError, CheckpointError, UnsupportedModelError
from . import architectures

CONFIG_FILE = "shadow_config.json"
ADAPTER_FILE = "shadow_adapter.safetensors"
MODULES_FILE = "shadow_modules.safetensors"
BASE_SUBDIR = "base"
SHADOW_SUBDIR = "shadow_model"


@dataclass
class LoadedCheckpoint:
    """The reference model plus what the exporter needs to know about it."""

    reference: Any  # shadow_peft.ShadowForCausalLM, eval, fp32
    checkpoint_dir: Path
    base_dir: Path
    base_file: str | None  # the .gguf file name when the base is GGUF
    shadow_config: dict[str, Any]
    explicit_shadow: bool
    shares_base_embeddings: bool  # the shadow is fed the base embeddings (no table of its own)
    trained_heads: list[str]  # heads restored from shadow_modules.safetensors

    @property
    def peft(self) -> Any:
        return self.reference.peft_model

    @property
    def base_model(self) -> Any:
        return self.reference.peft_model.base_model


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}): truncated or corrupt?") from None


def read_checkpoint_files(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(shadow_config, adapter tensors, extra head tensors) of a checkpoint folder."""
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {ckpt}")
    config_path = ckpt / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"{ckpt} is not a ShadowPEFT checkpoint: no {CONFIG_FILE}",
            hint="pass the folder written by shadow_peft's save_pretrained()",
        )
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
    adapter = _read_safetensors(adapter_path)
    needed = ("shadow_injection_model.injection_downs", "shadow_update_model.hidden_norm.weight")
    missing = [k for k in needed if k not in adapter]
    if missing:
        raise CheckpointError(f"{adapter_path} lacks ShadowPEFT tensors {missing}: not a ShadowPEFT adapter")
    modules_path = ckpt / MODULES_FILE
    modules = _read_safetensors(modules_path) if modules_path.is_file() else {}
    return config, adapter, modules


def _find_dir(explicit: str | Path | None, ckpt: Path, subdir: str) -> Path | None:
    if explicit is not None:
        return Path(explicit)
    candidate = ckpt / subdir
    return candidate if candidate.is_dir() else None


def load_base_model(base_dir: Path) -> tuple[Any, str | None]:
    """A float32 causal LM from an HF folder (safetensors) or a folder holding one .gguf file."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not base_dir.is_dir():
        raise BaseModelError(f"base model folder not found: {base_dir}")
    ggufs = sorted(p.name for p in base_dir.glob("*.gguf"))
    if (base_dir / "config.json").is_file():
        config = AutoConfig.from_pretrained(base_dir)
        architectures.check(config)
        if not list(base_dir.glob("*.safetensors")):
            raise BaseModelError(f"{base_dir} has no *.safetensors weights (pickled .bin weights are not loaded)")
        try:
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="float32", use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BaseModelError(f"cannot load the base model from {base_dir}: {_first_line(exc)}") from None
        return model, None
    if len(ggufs) == 1:
        try:
            model = AutoModelForCausalLM.from_pretrained(base_dir, gguf_file=ggufs[0], dtype="float32")
        except (OSError, ValueError, RuntimeError) as exc:
            raise BaseModelError(f"cannot load {base_dir / ggufs[0]}: {_first_line(exc)}") from None
        architectures.check(model.config)
        return model, ggufs[0]
    raise BaseModelError(f"{base_dir} holds neither config.json with safetensors nor exactly one .gguf file")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _explicit_shadow_model(shadow_dir: Path) -> Any:
    """An empty explicit shadow model built from its config.json (its weights are in the adapter)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = shadow_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"explicit shadow folder {shadow_dir} has no config.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("model_type") == "causal_lm_with_hidden_projection":
        # A projected shadow: the inner model's config travels as a dict; the projection
        # weights are in the adapter (shadow_hidden_projection.weight). Parse, never import.
        data = dict(data.get("shadow_model_config") or {})
    model_type = data.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError):
        raise UnsupportedModelError(f"explicit shadow architecture {model_type!r} is unknown to transformers") from None
    architectures.check(config, "explicit shadow architecture")
    return AutoModelForCausalLM.from_config(config, dtype="float32")


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


def load_checkpoint(
    checkpoint: str | Path, base: str | Path | None = None, shadow: str | Path | None = None
) -> LoadedCheckpoint:
    import torch
    from shadow_peft import ShadowForCausalLM

    ckpt = Path(checkpoint)
    config, adapter, modules = read_checkpoint_files(ckpt)
    base_dir = _find_dir(base, ckpt, BASE_SUBDIR)
    if base_dir is None:
        raise BaseModelError(
            f"no base model given and {ckpt / BASE_SUBDIR} does not exist "
            "(shadow_config.json does not name its base model)"
        )
    base_model, base_file = load_base_model(base_dir)
    _check_fit(base_model, config, adapter, modules)

    explicit = (
        any(k.startswith("shadow_model.embed_tokens.") for k in adapter) or "shadow_hidden_projection.weight" in adapter
    )
    shadow_dir = _find_dir(shadow, ckpt, SHADOW_SUBDIR)
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
    try:
        reference = ShadowForCausalLM.from_pretrained(base_model, ckpt, shadow_model=shadow_model)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"the adapter does not fit the model: {_first_line(exc)}") from None
    reference.eval()
    reference.to(torch.float32)
    peft = reference.peft_model
    shares = (not peft._explicit_shadow_model) or peft._explicit_share_base_embeddings
    trained = sorted({k.split(".")[0] for k in modules})
    return LoadedCheckpoint(
        reference=reference,
        checkpoint_dir=ckpt,
        base_dir=base_dir,
        base_file=base_file,
        shadow_config=config,
        explicit_shadow=explicit,
        shares_base_embeddings=bool(shares and peft._shadow_supports_inputs_embeds),
        trained_heads=trained,
    )
