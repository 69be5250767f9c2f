"""The schedule of one mode over token ids: knows nothing about text or sampling.

    attached   shadow graph on the new tokens -> shadow_states -> backbone graph -> logits
    detached   shadow_lm graph -> logits (the backbone is never loaded)
    base       base_lm graph -> logits (the base model without the adapter; optional in bundles)

A `Sequences` is the state of one batch being decoded: one KV cache per graph of the mode and
the attention mask over every position so far. Prompts of unequal length are left-padded: the
mask marks real tokens, and position ids are cumsum(mask) - 1 with pads at 1, as transformers'
generate() derives them (the exporter's validation checks the graphs under exactly this scheme).
An Engine holds no per-call state, so several threads may decode their own Sequences at once.

Prefill in chunks: a prompt of one row longer than `prefill_chunk` tokens runs as consecutive
chunks over the growing cache, so the activations of a step (attention scores are seq x total per
head) stay bounded whatever the prompt's length; the logits are those of one pass, to rounding.
(A batch prefills at once: GroupQueryAttention takes several new tokens over a past only in a
batch of one.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..bundle import BACKBONE_GRAPH, MODE_GRAPHS, SHADOW_GRAPH, ModelSpec
from .kv_cache import KVCache, SharedKVCache
from .sessions import GraphRunner

PREFILL_CHUNK = 256  # tokens per prefill step of a long one-row prompt (0: the whole prompt at once)


def position_ids(mask: np.ndarray) -> np.ndarray:
    """Position of each token among the real tokens of its row; pads get 1, like transformers."""
    positions = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, positions)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both [batch, longest row], rows right-aligned."""
    width = max(len(row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for b, row in enumerate(rows):
        if len(row):
            ids[b, width - len(row) :] = row
            mask[b, width - len(row) :] = 1
    return ids, mask


@dataclass
class Sequences:
    """A batch being decoded: the mode's caches and the mask [batch, positions so far]."""

    caches: dict[str, KVCache | SharedKVCache]
    mask: np.ndarray

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    def advance(self, input_ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Extend the mask by the new tokens (mask: which are real, default all); their position ids."""
        new_mask = np.ones(input_ids.shape, dtype=np.int64) if mask is None else mask.astype(np.int64)
        self.mask = np.concatenate([self.mask, new_mask], axis=1)
        return position_ids(self.mask)[:, -input_ids.shape[1] :]

    def trim(self, length: int) -> None:
        """Keep the first `length` positions of the mask and of every cache."""
        self.mask = self.mask[:, :length]
        for cache in self.caches.values():
            cache.trim(length)


class Engine:
    def __init__(self, mode: str, runners: dict[str, GraphRunner], model: ModelSpec) -> None:
        missing = [g for g in MODE_GRAPHS[mode] if g not in runners]
        if missing:
            raise ValueError(f"{mode} mode needs the graphs {missing}")
        self.mode = mode
        self.runners = runners
        self.model = model
        self.prefill_chunk = PREFILL_CHUNK

    def start(self, batch: int) -> Sequences:
        caches = {name: self.runners[name].new_cache(batch) for name in MODE_GRAPHS[self.mode]}
        return Sequences(caches=caches, mask=np.zeros((batch, 0), dtype=np.int64))

    def forward(
        self,
        seqs: Sequences,
        input_ids: np.ndarray,
        mask: np.ndarray | None = None,
        keep: int = 1,
        shadow_states: np.ndarray | None = None,
    ) -> np.ndarray:
        """Logits [batch, keep (all new positions if 0), vocab] of the new tokens [batch, seq];
        mask marks which new tokens are real (default: all). Advances seqs.
        shadow_states (attached mode): the shadow graph's output for these tokens, computed
        already (the cascade's detached answer), whose keys/values seqs' shadow cache holds."""
        batch, new = input_ids.shape
        chunk = self.prefill_chunk
        if chunk <= 0 or batch > 1 or new <= chunk:
            return self._forward(seqs, input_ids, mask, keep, shadow_states)
        kept = []
        for start in range(0, new, chunk):
            end = min(start + chunk, new)
            wanted = end - max(start, new - keep) if keep else end - start  # of the positions asked for
            logits = self._forward(
                seqs,
                input_ids[:, start:end],
                None if mask is None else mask[:, start:end],
                max(wanted, 1),
                None if shadow_states is None else shadow_states[:, start:end],
            )
            if wanted > 0:
                kept.append(logits)
        return np.concatenate(kept, axis=1)

    def _forward(
        self,
        seqs: Sequences,
        input_ids: np.ndarray,
        mask: np.ndarray | None,
        keep: int,
        shadow_states: np.ndarray | None,
    ) -> np.ndarray:
        positions = seqs.advance(input_ids, mask)
        if self.mode != "attached":  # a plain decoder graph
            (name,) = MODE_GRAPHS[self.mode]
            return self.runners[name].step(seqs.caches[name], input_ids, seqs.mask, positions, logits_to_keep=keep)
        states = shadow_states
        if states is None:
            states = self.runners[SHADOW_GRAPH].step(seqs.caches[SHADOW_GRAPH], input_ids, seqs.mask, positions)
        backbone = self.runners[BACKBONE_GRAPH]
        return backbone.step(
            seqs.caches[BACKBONE_GRAPH], input_ids, seqs.mask, positions, shadow_states=states, logits_to_keep=keep
        )
