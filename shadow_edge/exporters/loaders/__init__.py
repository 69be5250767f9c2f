"""Checkpoint loaders, one module per format, each returning one `ShadowCheckpoint` (description.py).

A format is recognised from the folder: `shadow_config.json` (shadow-peft) or `adapter_config.json`
with `peft_type: "SHADOW"` (HF peft). Adding a format = a module with `detect(folder)` and
`load(folder, base, shadow, adapter_name)` listed in FORMATS; the graph builders do not change.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError
from . import peft_shadow, shadow_peft
from .description import CAUSAL_LM, SEQ_CLS, Adapter, Heads, Injection, Origin, Shadow, ShadowCheckpoint, Update

FORMATS = (shadow_peft, peft_shadow)

__all__ = [
    "CAUSAL_LM",
    "SEQ_CLS",
    "Adapter",
    "Heads",
    "Injection",
    "Origin",
    "Shadow",
    "ShadowCheckpoint",
    "Update",
    "load_checkpoint",
]


def load_checkpoint(
    checkpoint: str | Path,
    base: str | Path | None = None,
    shadow: str | Path | None = None,
    adapter: str | None = None,
) -> ShadowCheckpoint:
    """The checkpoint folder of any supported format, described (reference model in eval mode, fp32)."""
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {ckpt}")
    for fmt in FORMATS:
        if fmt.detect(ckpt):
            return fmt.load(ckpt, base=base, shadow=shadow, adapter_name=adapter)
    raise CheckpointError(
        f"{ckpt} is not a ShadowPEFT checkpoint: no {shadow_peft.CONFIG_FILE}, "
        f"nor an {peft_shadow.CONFIG_FILE} with peft_type SHADOW",
        hint="pass the folder written by shadow_peft's or peft's save_pretrained()",
    )
