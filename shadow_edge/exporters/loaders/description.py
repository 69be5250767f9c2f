"""The one description every checkpoint loader returns, and the only thing the builders read.

Both ShadowPEFT implementations compute the same thing in different words (../shared/PEFT_SHADOW.md
§6); a loader states its format in these words:

    s = s0 = projection(shadow.decoder(shadow.embed(ids)))        (projection: identity when None)
    for each block i of the base decoder:
        if adapter.first <= i <= adapter.last:                     (the adapted, contiguous range)
            h = h + ((h - s) @ down_i) @ up_i                      (injection; alpha folded into up_i)
        h = block_i(h)
        if adapter.first <= i < adapter.last:                      (the exit block's update reaches no output)
            u = norm(h) if adapter.norm else h
            s = s + sigmoid(G_i(u)) * (T_i(u) - s)                 (G, T: Linear -> activation -> Linear)
    attached logits = heads.lm_head(base final norm(h));  detached logits = heads.shadow_head(s0)

Tensors and modules are torch's (the exporter side); a third format needs a loader, not a builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ACTIVATIONS = ("silu", "gelu")  # gelu: the exact (erf) form
CAUSAL_LM = "causal_lm"
SEQ_CLS = "seq_cls"


@dataclass
class Injection:
    """Before an adapted block: h + ((h - s) @ down) @ up (dropout is off at inference)."""

    down: torch.Tensor  # [d, r]
    up: torch.Tensor  # [r, d], alpha already multiplied in


@dataclass
class Update:
    """After an adapted block but the exit: s + sigmoid(G(u)) * (T(u) - s), u = norm(h) or h."""

    gate: tuple[nn.Linear, nn.Linear]  # G = gate[1](act(gate[0](u)))
    transform: tuple[nn.Linear, nn.Linear]  # T = transform[1](act(transform[0](u)))


@dataclass
class Adapter:
    """The adapted block range first..last of the base decoder, with per-block parameters."""

    first: int
    last: int
    injections: list[Injection]  # one per block first..last
    updates: list[Update]  # after blocks first..last-1
    norm: nn.LayerNorm | None  # shared by every update; None: the update reads h itself
    activation: str  # one of ACTIVATIONS

    def injection(self, block: int) -> Injection | None:
        return self.injections[block - self.first] if self.first <= block <= self.last else None

    def update(self, block: int) -> Update | None:
        return self.updates[block - self.first] if self.first <= block < self.last else None


@dataclass
class Shadow:
    """The shadow network up to s0 (its decoder already ends with its own final norm)."""

    decoder: nn.Module  # an HF decoder backbone (layers, norm, rotary_emb), no head
    embed: nn.Embedding  # the table it gathers from: the base's own when shared
    shares_base_embeddings: bool
    projection: nn.Linear | None  # d_s -> d, no bias; None when the widths agree


@dataclass
class Heads:
    """What turns hidden states into outputs. A head the checkpoint lacks is None, never invented."""

    lm_head: nn.Module | None = None  # attached LM logits from the base's final-normed h
    shadow_head: nn.Module | None = None  # detached LM logits from s0
    classifier: nn.Module | None = None  # attached class logits, pooled at the last real token
    shadow_classifier: nn.Module | None = None  # detached class logits, pooled from s0
    labels: list[str] = field(default_factory=list)  # id2label, in order

    @property
    def attached(self) -> nn.Module:
        """The head of the backbone graph (a classifier's logits are its classes)."""
        return self.lm_head if self.lm_head is not None else self.classifier

    @property
    def detached(self) -> nn.Module:
        """The head of the detached graphs, on s0."""
        return self.shadow_head if self.shadow_head is not None else self.shadow_classifier


# reference(input_ids [batch, seq], attention_mask [batch, seq] | None, outputs=OUTPUTS) -> the named
# outputs ("attached", "detached", "states"; a library may return more than asked) by the format's
# own library, recomputing everything (no cache). LM logits are [batch, seq, vocab]; class logits
# [batch, labels]; states s0 [batch, seq, d].
OUTPUTS = ("attached", "detached", "states")
ReferenceForward = Callable[..., dict[str, torch.Tensor]]


@dataclass
class Origin:
    """Where a checkpoint came from: its format, the library defining it, its folders."""

    format: str  # "shadow-peft", "peft"
    library: str  # the distribution that wrote and defines it
    checkpoint_dir: Path
    base_dir: Path
    base_file: str | None = None  # the .gguf file name when the base is GGUF
    library_version: str = ""  # filled in from the installed distribution
    shadow_dir: Path | None = None  # an explicit shadow's folder (its config.json), when one was read

    @property
    def input_dirs(self) -> list[Path]:
        """Every folder the export reads: an output may be none of them, nor hold or lie inside one."""
        return [p for p in (self.checkpoint_dir, self.base_dir, self.shadow_dir) if p is not None]

    def __post_init__(self) -> None:
        from importlib.metadata import version

        self.library_version = self.library_version or version(self.library)


def labels_of(config: Any, count: int) -> list[str]:
    """id2label of the base config when it names `count` labels, else LABEL_i."""
    names = getattr(config, "id2label", None) or {}
    if len(names) == count:
        return [str(names[i]) for i in range(count)]
    return [f"LABEL_{i}" for i in range(count)]


@dataclass
class ShadowCheckpoint:
    """A loaded checkpoint of any format, in the words of the module docstring."""

    origin: Origin
    task: str  # CAUSAL_LM or SEQ_CLS
    base: nn.Module  # the HF base model (config, generation config; its decoder's blocks unchanged)
    shadow: Shadow
    adapter: Adapter
    heads: Heads
    reference: ReferenceForward
    details: dict[str, Any] = field(default_factory=dict)  # format-specific facts for manifest.source

    @property
    def base_decoder(self) -> nn.Module:
        """The base's decoder backbone (layers, norm, rotary_emb)."""
        return self.base.base_model

    @property
    def base_config(self) -> Any:
        return self.base.config

    @property
    def base_embed(self) -> nn.Embedding:
        return self.base.get_input_embeddings()
