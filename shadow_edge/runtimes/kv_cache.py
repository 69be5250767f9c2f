"""KV cache of one graph: per layer a key and a value [batch, kv_heads, seq, head_dim] (numpy).

Two layouts, as the manifest says of each graph (bundle.KV_LAYOUTS):
    KVCache        concat: the graph returns present = past ++ new, the cache swaps it in
                   (every step copies the whole cache once more)
    SharedKVCache  shared_buffer: one buffer per tensor [batch, kv_heads, capacity, head_dim]
                   bound as both past and present (onnxruntime IOBinding), into which
                   GroupQueryAttention writes the new positions in place: a step copies no cache
Both keep the same verbs: seq_len, batch, nbytes, tensors (the valid positions), update(present)
(take these tensors as the cache), trim(n) (keep the first n positions: O(1) when shared).
Every row of a batch holds the same number of positions; left padding is the attention mask's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..bundle import CacheSpec

# capacity is reserved in steps of this many positions, and at least doubles when it grows, so
# that growing (a copy of the cache) happens O(log n) times over a generation
CAPACITY_STEP = 256


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


class SharedKVCache:
    """Buffers GroupQueryAttention updates in place: the graph reads positions [0, seq_len) and
    writes the new ones after them. Not thread-safe: one cache belongs to one decoding call."""

    def __init__(self, spec: CacheSpec, batch: int, capacity: int = 0) -> None:
        self.spec = spec
        self.seq_len = 0
        self._batch = batch
        self.buffers: list[np.ndarray] = []
        self.values: list[ort.OrtValue] = []  # OrtValues over self.buffers (no copy), for IOBinding
        self.binding: ort.IOBinding | None = None  # the graph's binding of self.values (sessions.py)
        self._allocate(capacity)

    @property
    def batch(self) -> int:
        return self._batch

    @property
    def capacity(self) -> int:
        return int(self.buffers[0].shape[2])

    @property
    def nbytes(self) -> int:
        """Bytes allocated (np.zeros: pages past what was written stay untouched, not resident)."""
        return sum(b.nbytes for b in self.buffers)

    @property
    def tensors(self) -> list[np.ndarray]:
        """Views of the valid positions (k0, v0, k1, ...): they change if those positions are
        trimmed away and written again."""
        return [b[:, :, : self.seq_len] for b in self.buffers]

    def reserve(self, seq_len: int) -> None:
        """Make room for seq_len positions (copies the cache when it has to grow)."""
        if seq_len > self.capacity:
            old, length = self.buffers, self.seq_len
            self._allocate(max(seq_len, 2 * self.capacity))
            for new, kept in zip(self.buffers, old, strict=True):
                new[:, :, :length] = kept[:, :, :length]

    def _allocate(self, capacity: int) -> None:
        capacity = -(-max(capacity, 1) // CAPACITY_STEP) * CAPACITY_STEP  # at least one step
        shape = (self._batch, self.spec.num_kv_heads, capacity, self.spec.head_dim)
        self.buffers = [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.spec.num_layers)]
        self.values = [ort.OrtValue.ortvalue_from_numpy(b) for b in self.buffers]
        self.binding = None

    def advance(self, new: int) -> None:
        """The graph has written `new` positions after the cache."""
        self.seq_len += new

    def update(self, present: list[np.ndarray]) -> None:
        """Take these tensors [batch, kv_heads, seq, head_dim] as the cache (a copy)."""
        length = int(present[0].shape[2])
        self.seq_len = 0
        self.reserve(length)
        for buffer, tensor in zip(self.buffers, present, strict=True):
            buffer[:, :, :length] = tensor
        self.seq_len = length

    def trim(self, seq_len: int) -> None:
        """Keep the first seq_len positions: the rest are overwritten by the next steps."""
        self.seq_len = min(self.seq_len, seq_len)
