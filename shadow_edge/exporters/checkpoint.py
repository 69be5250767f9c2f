"""What every checkpoint loader (loaders/) shares: the base model and safetensors reading.

Nothing here unpickles: adapters, heads and base weights are read from safetensors (or GGUF) only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BaseModelError, CheckpointError, UnsupportedModelError
from . import architectures


def read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}): truncated or corrupt?") from None


def find_dir(explicit: str | Path | None, ckpt: Path, subdir: str) -> Path | None:
    if explicit is not None:
        return Path(explicit)
    candidate = ckpt / subdir
    return candidate if candidate.is_dir() else None


def load_base_model(base_dir: Path, num_labels: int | None = None) -> tuple[Any, str | None]:
    """A float32 causal LM (a sequence classifier with num_labels) from an HF folder (safetensors) or
    a folder holding one .gguf file."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto, extra = AutoModelForCausalLM, {}
    if num_labels is not None:
        auto, extra = AutoModelForSequenceClassification, {"num_labels": num_labels}

    if not base_dir.is_dir():
        raise BaseModelError(f"base model folder not found: {base_dir}")
    ggufs = sorted(p.name for p in base_dir.glob("*.gguf"))
    if (base_dir / "config.json").is_file():
        config = AutoConfig.from_pretrained(base_dir)
        architectures.check(config)
        if not list(base_dir.glob("*.safetensors")):
            raise BaseModelError(f"{base_dir} has no *.safetensors weights (pickled .bin weights are not loaded)")
        try:
            model, info = auto.from_pretrained(
                base_dir, dtype="float32", use_safetensors=True, output_loading_info=True, **extra
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise BaseModelError(f"cannot load the base model from {base_dir}: {first_line(exc)}") from None
        if num_labels is None and "lm_head.weight" in info["missing_keys"]:
            # transformers would initialise the head at random on every load: never export that
            raise BaseModelError(
                f"{base_dir} has no lm_head.weight (a {'/'.join(config.architectures or ['headless'])} checkpoint): "
                "it is not a language model",
                hint="pass the causal-LM base the adapter was trained on; a classifier needs a SEQ_CLS adapter",
            )
        return model, None
    if len(ggufs) == 1:
        try:
            model = auto.from_pretrained(base_dir, gguf_file=ggufs[0], dtype="float32", **extra)
        except (OSError, ValueError, RuntimeError) as exc:
            raise BaseModelError(f"cannot load {base_dir / ggufs[0]}: {first_line(exc)}") from None
        architectures.check(model.config)
        return model, ggufs[0]
    raise BaseModelError(f"{base_dir} holds neither config.json with safetensors nor exactly one .gguf file")


def explicit_shadow_config(data: dict[str, Any], what: str = "explicit shadow architecture") -> Any:
    """The transformers config of an explicit shadow from its config.json dict, checked against the
    architecture table (both loaders: parse the dict, never import a class it names)."""
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    try:
        config = AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError):
        raise UnsupportedModelError(f"{what} {model_type!r} is unknown to transformers") from None
    architectures.check(config, what)
    return config


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
