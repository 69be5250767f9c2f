"""KV cache of one graph: per layer a key and a value, numpy arrays [batch, kv_heads, seq, head_dim].

The graphs concatenate past and new entries themselves (present = past ++ new), so the cache only
swaps in what a step returned; trim() rewinds it (speculative decoding, cascade hand-over).
"""

from __future__ import annotations

import numpy as np

from ..bundle import CacheSpec


class KVCache:
    def __init__(self, spec: CacheSpec, batch: int, dtype: np.dtype = np.float32) -> None:
        self.spec = spec
        empty = np.zeros((batch, spec.num_kv_heads, 0, spec.head_dim), dtype=dtype)
        self.tensors: list[np.ndarray] = [empty] * (2 * spec.num_layers)  # k0, v0, k1, v1, ...

    @property
    def seq_len(self) -> int:
        return int(self.tensors[0].shape[2])

    @property
    def batch(self) -> int:
        return int(self.tensors[0].shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def feeds(self) -> dict[str, np.ndarray]:
        return dict(zip(self.spec.past_names(), self.tensors, strict=True))

    def update(self, present: list[np.ndarray]) -> None:
        self.tensors = list(present)

    def trim(self, seq_len: int) -> None:
        """Keep the first seq_len positions."""
        self.tensors = [t[:, :, :seq_len] for t in self.tensors]
