"""HF peft's `SHADOW` tuner (peft >= 0.21): `adapter_config.json` + `adapter_model.safetensors`.

    CKPT/adapter_config.json        peft_type "SHADOW", task_type CAUSAL_LM | SEQ_CLS
    CKPT/adapter_model.safetensors  every tensor (../shared/PEFT_SHADOW.md §3); extra adapters in CKPT/<name>/
    base model:      --base DIR, else base_model_name_or_path when it is a local folder, else CKPT/base/
    explicit shadow: --shadow DIR, else shadow_model when it is a local folder, else CKPT/shadow_model/
                     (its config.json only: the weights are in the adapter)

The description is rebuilt from the files alone (plain transformers modules: the base untouched, a
mirror backbone from the base config and the adapter's overrides); peft's own model, over a fresh
copy of the base, is built only when the reference forward is first called. The adapted blocks are
the ones whose tensors are present (peft ignores layers_to_transform): a contiguous range a..b,
inject before each, update after each but b, with GELU(erf) MLPs with biases and no norm.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import BaseModelError, CheckpointError
from ..checkpoint import explicit_shadow_config, first_line, load_base_model, read_safetensors
from . import description as spec  # the words a loader describes its checkpoint in

FORMAT = "peft"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
BASE_SUBDIR = "base"
SHADOW_SUBDIR = "shadow_model"
TASKS = {"CAUSAL_LM": spec.CAUSAL_LM, "SEQ_CLS": spec.SEQ_CLS}
PROJECTED = "causal_lm_with_hidden_projection"  # shadow_peft's pretrained-shadow folders

_BLOCK = re.compile(r"^base_model\.model\.(.+)\.(\d+)\.shadow_down\.default\.weight$")
_BACKBONE = "base_model.shadow_backbone.default."
_PROJECTION = "base_model.shadow_projection.default.weight"
_LM_HEAD = "base_model.model.lm_head.weight"
_SCORE = "base_model.model.score."
_SHADOW_HEAD = "base_model.shadow_head.default."


def _read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a peft adapter config")
    return config


def _subadapters(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())


def detect(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() or bool(_subadapters(folder))


def _adapter_folder(ckpt: Path, name: str | None) -> Path:
    """The folder of the adapter asked for: CKPT itself, or CKPT/<name>/ (peft's extra adapters)."""
    names = _subadapters(ckpt)
    if name is None:
        if (ckpt / CONFIG_FILE).is_file():
            return ckpt
        raise CheckpointError(
            f"{ckpt} holds the peft adapters {', '.join(names)} in subfolders",
            hint=f"choose one with --adapter NAME (e.g. --adapter {names[0]})",
        )
    if (ckpt / name / CONFIG_FILE).is_file():
        return ckpt / name
    known = (["default (the top folder)"] if (ckpt / CONFIG_FILE).is_file() else []) + names
    if name == "default" and (ckpt / CONFIG_FILE).is_file():
        return ckpt
    raise CheckpointError(f"no adapter {name!r} in {ckpt} (it holds: {', '.join(known) or 'none'})")


def _local_dir(value: Any) -> Path | None:
    return Path(value) if isinstance(value, str) and value and Path(value).is_dir() else None


def _base_dir(base: str | Path | None, ckpt: Path, config: dict[str, Any]) -> Path:
    if base is not None:
        return Path(base)
    named = config.get("base_model_name_or_path")
    found = _local_dir(named) or _local_dir(str(ckpt / BASE_SUBDIR))
    if found is not None:
        return found
    what = f"names the base {named!r}, which is not a local folder" if named else "does not name its base model"
    raise BaseModelError(f"no base model given and {ckpt / CONFIG_FILE} {what} (the hub is not used)")


def _blocks(tensors: dict[str, torch.Tensor]) -> tuple[str, int, int]:
    """(the blocks' module path, first, last) of the adapted range; a gap is refused."""
    found = [(m.group(1), int(m.group(2))) for m in map(_BLOCK.match, tensors) if m]
    if not found:
        raise CheckpointError("the adapter has no shadow_down tensors: no adapted decoder block")
    prefix = found[0][0]
    indices = sorted(i for _, i in found)
    first, last = indices[0], indices[-1]
    missing = sorted(set(range(first, last + 1)) - set(indices))
    if missing:
        raise CheckpointError(
            f"the adapted blocks {', '.join(map(str, indices))} are not contiguous "
            f"(missing {', '.join(map(str, missing))}); peft itself cannot run such an adapter"
        )
    return prefix, first, last


def _linear(tensors: dict[str, torch.Tensor], prefix: str) -> nn.Linear:
    weight, bias = tensors[prefix + "weight"], tensors.get(prefix + "bias")
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear.eval()


def _adapter(tensors: dict[str, torch.Tensor], prefix: str, first: int, last: int, alpha: float) -> spec.Adapter:
    def block(i: int, name: str) -> str:
        return f"base_model.model.{prefix}.{i}.{name}.default."

    injections = [
        spec.Injection(
            down=tensors[block(i, "shadow_down") + "weight"].T.contiguous(),
            up=alpha * tensors[block(i, "shadow_up") + "weight"].T.contiguous(),
        )
        for i in range(first, last + 1)
    ]
    updates = [
        spec.Update(
            gate=(
                _linear(tensors, block(i, "shadow_update_gate") + "0."),
                _linear(tensors, block(i, "shadow_update_gate") + "2."),
            ),
            transform=(
                _linear(tensors, block(i, "shadow_update_transform") + "0."),
                _linear(tensors, block(i, "shadow_update_transform") + "2."),
            ),
        )
        for i in range(first, last)  # the exit block's update reaches no output
    ]
    return spec.Adapter(first, last, injections, updates, norm=None, activation="gelu")


def _shadow_dir(shadow: str | Path | None, ckpt: Path, config: dict[str, Any]) -> Path:
    if shadow is not None:
        return Path(shadow)
    named = config["shadow_model"]
    found = _local_dir(named) or _local_dir(str(ckpt / SHADOW_SUBDIR))
    if found is None:
        raise CheckpointError(
            f"the adapter's shadow_model {named!r} is not a local folder (the hub is not used)",
            hint="pass the shadow model's folder (its config.json) with --shadow DIR",
        )
    return found


def _shadow_config(shadow_dir: Path) -> tuple[Any, bool]:
    """(the explicit shadow backbone's config, whether it is a projected shadow_peft folder)."""
    path = shadow_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"explicit shadow folder {shadow_dir} has no config.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    projected = data.get("model_type") == PROJECTED
    if projected:  # the inner config travels as a dict; parse it, never import the named class
        data = dict(data.get("shadow_model_config") or {})
    return explicit_shadow_config(data), projected


def _mirror_config(base: Any, config: dict[str, Any]) -> Any:
    """peft's mirror: the base config with its four overrides (kv heads and head_dim stay the base's)."""
    from peft.tuners.shadow.model import _normalize_layer_config

    cfg = copy.deepcopy(base.config)
    cfg.num_hidden_layers = config.get("shadow_num_hidden_layers") or 1
    for key, attr in (
        ("shadow_hidden_size", "hidden_size"),
        ("shadow_intermediate_size", "intermediate_size"),
        ("shadow_num_attention_heads", "num_attention_heads"),
    ):
        if config.get(key) is not None:
            setattr(cfg, attr, int(config[key]))
    return _normalize_layer_config(cfg)


def _backbone(cfg: Any, tensors: dict[str, torch.Tensor]) -> tuple[nn.Module, bool]:
    """(the shadow backbone with the adapter's weights, whether it has its own embedding table)."""
    from transformers import AutoModel

    cfg._attn_implementation = "eager"
    backbone = AutoModel.from_config(cfg, dtype=torch.float32).eval()
    state = {k[len(_BACKBONE) :]: v for k, v in tensors.items() if k.startswith(_BACKBONE)}
    own_table = "embed_tokens.weight" in state
    if not own_table:
        del backbone.embed_tokens  # fed the base embeddings, as peft does
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the shadow backbone does not fit the adapter: {first_line(exc)}") from None
    return backbone, own_table


def _check_fit(base: Any, tensors: dict[str, torch.Tensor], last: int, first_down: torch.Tensor) -> None:
    cfg = base.config
    layers, hidden, vocab = int(cfg.num_hidden_layers), int(cfg.hidden_size), int(cfg.vocab_size)
    if last >= layers:
        raise BaseModelError(f"the adapter adapts block {last}, this base has {layers} layers")
    if first_down.shape[1] != hidden:
        raise BaseModelError(f"the adapter was trained for hidden size {first_down.shape[1]}, this base has {hidden}")
    for key in (_LM_HEAD, _BACKBONE + "embed_tokens.weight"):
        if key in tensors and tensors[key].shape[0] != vocab:
            raise BaseModelError(f"{key} has a vocabulary of {tensors[key].shape[0]}, the base has {vocab}")


def _writable_shadow(shadow_dir: Path, projected: bool, tensors: dict[str, torch.Tensor], scratch: Path) -> Path:
    """A folder peft can load the explicit shadow from: shadow_dir when it holds weights, else its
    config.json beside the adapter's copy of the weights (peft overwrites them from the adapter anyway)."""
    from safetensors.torch import save_file

    if any(shadow_dir.glob("*.safetensors")):
        return shadow_dir
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "config.json").write_bytes((shadow_dir / "config.json").read_bytes())
    state = {k[len(_BACKBONE) :]: v.contiguous() for k, v in tensors.items() if k.startswith(_BACKBONE)}
    if projected:
        state = {f"shadow_model.{k}": v for k, v in state.items()}
        state["shadow_hidden_projection.weight"] = tensors[_PROJECTION].contiguous()
    save_file(state, str(scratch / "model.safetensors"))
    return scratch


class _PeftReference:
    """peft's own model over a fresh copy of the base, built on first use; every call recomputes the
    whole sequence (use_cache=False: peft 0.21.2's cached generate() is wrong, PEFT_SHADOW.md §5)."""

    def __init__(self, folder: Path, base_dir: Path, num_labels: int | None, shadow: Any) -> None:
        self.folder, self.base_dir, self.num_labels = folder, base_dir, num_labels
        self.shadow = shadow  # None, or (shadow_dir, projected, tensors) of an explicit shadow
        self.model: Any = None

    def _build(self) -> None:
        from peft import PeftConfig, PeftModel
        from peft.tuners.shadow.layers import DetachedShadowModel

        base, _ = load_base_model(self.base_dir, num_labels=self.num_labels)
        base.config._attn_implementation = "eager"
        config = PeftConfig.from_pretrained(str(self.folder))
        with tempfile.TemporaryDirectory() as scratch:
            if self.shadow is not None:
                config.shadow_model = str(_writable_shadow(*self.shadow, Path(scratch) / "shadow"))
            try:
                model = PeftModel.from_pretrained(base, str(self.folder), config=config)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise CheckpointError(f"peft cannot load the adapter: {first_line(exc)}") from None
        self.model = model.eval().to(torch.float32)
        detached = model.base_model.unload_shadow()
        self.detached = detached.eval()
        self.states = DetachedShadowModel(
            detached.backbone,
            detached.shadow_hidden_projection,
            None,
            input_embeddings=detached._shared_input_embeddings[0],
        ).eval()

    @torch.no_grad()
    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, outputs=spec.OUTPUTS
    ) -> dict[str, torch.Tensor]:
        if self.model is None:
            self._build()
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
        run = {
            "attached": lambda: self.model(**kwargs).logits,
            "detached": lambda: self.detached(**kwargs).logits,  # the shadow alone: no base forward
            "states": lambda: self.states(**kwargs),
        }
        return {name: run[name]() for name in outputs}


def load(
    ckpt: Path, base: str | Path | None = None, shadow: str | Path | None = None, adapter_name: str | None = None
) -> spec.ShadowCheckpoint:
    folder = _adapter_folder(ckpt, adapter_name)
    config = _read_config(folder) or {}
    if config.get("peft_type") != "SHADOW":
        raise CheckpointError(
            f"{folder / CONFIG_FILE} is a peft {config.get('peft_type')!r} adapter, not a SHADOW (ShadowPEFT) one"
        )
    task = TASKS.get(config.get("task_type") or "CAUSAL_LM")
    if task is None:
        raise CheckpointError(f"peft task_type {config['task_type']!r} is not supported (CAUSAL_LM, SEQ_CLS)")
    if not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in {folder} (pickled adapter_model.bin is not unpickled)")
    tensors = read_safetensors(folder / WEIGHTS_FILE)
    prefix, first, last = _blocks(tensors)
    if task == spec.SEQ_CLS and _SCORE + "weight" not in tensors:
        raise CheckpointError("a SEQ_CLS adapter without its trained score head (base_model.model.score.weight)")
    num_labels = int(tensors[_SCORE + "weight"].shape[0]) if task == spec.SEQ_CLS else None
    base_dir = _base_dir(base, ckpt, config)
    base_model, base_file = load_base_model(base_dir, num_labels=num_labels)
    base_model.eval()
    base_model.config._attn_implementation = "eager"
    _check_fit(base_model, tensors, last, tensors[f"base_model.model.{prefix}.{first}.shadow_down.default.weight"])

    explicit = config.get("shadow_model", "mirror") != "mirror"
    explicit_shadow = None
    if explicit:
        shadow_dir = _shadow_dir(shadow, ckpt, config)
        shadow_cfg, projected = _shadow_config(shadow_dir)
        explicit_shadow = (shadow_dir, projected, tensors)
    else:
        shadow_cfg, projected = _mirror_config(base_model, config), False
    backbone, own_table = _backbone(shadow_cfg, tensors)
    projection = _linear(tensors, _PROJECTION[: -len("weight")]) if _PROJECTION in tensors else None

    if task == spec.SEQ_CLS:
        classifier = _linear(tensors, _SCORE)
        heads = spec.Heads(
            classifier=classifier,
            shadow_classifier=_linear(tensors, _SHADOW_HEAD) if _SHADOW_HEAD + "weight" in tensors else classifier,
            labels=spec.labels_of(base_model.config, num_labels),
        )
    else:
        # modules_to_save=["lm_head"]: the trained copy, for both modes (peft's detached head is the base's)
        head = _linear(tensors, _LM_HEAD[: -len("weight")]) if _LM_HEAD in tensors else base_model.lm_head
        heads = spec.Heads(lm_head=head, shadow_head=head)
    return spec.ShadowCheckpoint(
        origin=spec.Origin(
            FORMAT, "peft", folder, base_dir, base_file, shadow_dir=explicit_shadow[0] if explicit_shadow else None
        ),
        task=task,
        base=base_model,
        shadow=spec.Shadow(
            decoder=backbone,
            embed=(backbone if own_table else base_model).get_input_embeddings(),
            shares_base_embeddings=not own_table,
            projection=projection,
        ),
        adapter=_adapter(tensors, prefix, first, last, float(config.get("shadow_alpha", 0.1))),
        heads=heads,
        reference=_PeftReference(folder, base_dir, num_labels, explicit_shadow),
        details={
            "adapter_config": config,
            "adapter": adapter_name or "default",
            "adapted_blocks": [first, last],
            "explicit_shadow": explicit,
            "projected_shadow": projected,
            "trained_heads": sorted(
                {k.split(".")[2] for k in tensors if k.startswith(("base_model.model.lm_head", _SCORE))}
            ),
        },
    )
