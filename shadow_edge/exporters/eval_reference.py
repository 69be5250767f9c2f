"""The PyTorch reference of a bundle (the checkpoint it was exported from, in its own library) behind the
Engine interface that evaluate.compare_mode drives, for `shadow-edge eval BUNDLE --reference CKPT`.

Nothing of ours is trusted on the reference side: the format library's own forward (the oracle of export's
validation) recomputes the whole sequence at every call, without a KV cache. Needs torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Manifest, ModelSpec
from ..errors import CheckpointError


@dataclass
class _Tokens:
    ids: np.ndarray  # [batch, tokens so far]


class ReferenceEngine:
    """start() and forward() of runtimes.engine.Engine, by a PyTorch model over the whole sequence."""

    def __init__(self, logits: Callable[[Any], Any], model: ModelSpec) -> None:
        self.logits = logits  # int64 tensor [batch, seq] -> logits tensor [batch, seq, vocab]
        self.model = model

    def start(self, batch: int) -> _Tokens:
        return _Tokens(np.zeros((batch, 0), dtype=np.int64))

    def forward(
        self, seqs: _Tokens, input_ids: np.ndarray, mask: np.ndarray | None = None, keep: int = 1
    ) -> np.ndarray:
        import torch

        if mask is not None:
            raise ValueError("the reference engine takes unpadded rows only")
        seqs.ids = np.concatenate([seqs.ids, input_ids.astype(np.int64)], axis=1)
        with torch.no_grad():
            logits = self.logits(torch.from_numpy(seqs.ids))
        return logits[:, -(keep or input_ids.shape[1]) :].float().numpy()


def _logits_of(model: Any) -> Callable[[Any], Any]:
    def run(ids: Any) -> Any:
        import torch

        positions = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions).logits

    return run


def _check_matches(loaded: Any, manifest: Manifest) -> None:
    """A CheckpointError naming the first quantity in which the checkpoint and the bundle differ."""
    from .onnx_export import cache_spec

    config = loaded.base_config
    pairs = [
        ("vocabulary size", int(config.vocab_size), manifest.model.vocab_size),
        ("hidden size", int(config.hidden_size), manifest.model.hidden_size),
        ("base layers/KV heads/head dim", cache_spec(config), manifest.model.base),
        ("shadow layers/KV heads/head dim", cache_spec(loaded.shadow.decoder.config), manifest.model.shadow),
    ]
    for key in ("shadow_config", "adapter_config"):  # the format's own config file
        if key in manifest.source:
            pairs.append((key, loaded.details.get(key), manifest.source[key]))
    for what, got, want in pairs:
        if got != want:
            exported = manifest.source.get("checkpoint", "?")
            raise CheckpointError(
                f"the checkpoint does not match the bundle: its {what} differs ({got} vs {want} in the bundle)",
                hint=f"pass the checkpoint the bundle was exported from ({exported}) and its --base",
            )


def checkpoint_reference(
    checkpoint: str | Path, base: str | Path | None, manifest: Manifest, threads: int | None
) -> tuple[str, list[str], Callable[[str], ReferenceEngine]]:
    """(a label, the modes it has, mode -> ReferenceEngine) for the checkpoint a bundle came from:
    attached and detached from shadow-peft, base from a fresh copy of the base model."""
    import torch  # first, so that a missing torch is what the error names

    from .checkpoint import load_base_model
    from .loaders import load_checkpoint

    if threads:
        torch.set_num_threads(threads)
    loaded = load_checkpoint(checkpoint, base)
    _check_matches(loaded, manifest)

    def open_mode(mode: str) -> ReferenceEngine:
        if mode == "base":
            model, _ = load_base_model(loaded.origin.base_dir)  # shadow-peft wraps the base it holds in place
            return ReferenceEngine(_logits_of(model.eval()), manifest.model)
        return ReferenceEngine(lambda ids: loaded.reference(ids, None, (mode,))[mode], manifest.model)

    label = f"PyTorch reference {Path(checkpoint)} ({loaded.origin.library}, float32)"
    return label, ["attached", "detached", "base"], open_mode
