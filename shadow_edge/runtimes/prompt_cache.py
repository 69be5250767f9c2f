"""Multi-turn prompt cache (mlx-lm's): the KV caches of earlier calls and the token ids they hold.

A chat's next prompt repeats the conversation so far: the previous prompt, the answer, then the
new message. Kept caches make that prefix free: a call takes the entry sharing the longest prefix
with its prompt, trims the entry's caches to that prefix (O(1) with in-place caches) and prefills
only the rest. The caches hold what one pass over the same tokens would (KV entries of past
positions never change: DESIGN.md), so the tokens are those of a fresh prefill, to rounding.

    cache = PromptCache(entries=2)
    model.prompt_cache = cache             # ShadowEdgeModel: one-row calls now use it
    turn = cache.turn(engine)              # or by hand: an Engine-like object for one call
    ... generate with turn.start / turn.forward ...
    turn.release()                         # its caches and ids go back as the newest entry

Threads: a call takes its entry out of the cache (under a lock) and puts it back when it ends, so
concurrent calls never share caches; one that finds nothing reusable prefills from scratch.
At most `entries` entries are kept, least recently used dropped first, and none whose caches
take more than `max_bytes` (a huge prompt is not held on to after its call).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .engine import Engine, Sequences

T = TypeVar("T")
MAX_BYTES = 256 << 20  # per entry: SmolLM2 attached holds ~47 KB of KV per token, so ~5,600 tokens


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


@dataclass
class _Entry:
    engine: Engine  # the caches are of this engine's graphs
    ids: list[int]  # the tokens the caches hold, in order (== seqs.length)
    seqs: Sequences

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.seqs.caches.values())


class PromptCache:
    """Caches of earlier one-row calls, reusable by any call whose prompt extends theirs."""

    def __init__(self, entries: int = 1, max_bytes: int = MAX_BYTES) -> None:
        if entries < 1:
            raise ValueError(f"a prompt cache keeps at least 1 entry, got {entries}")
        self.entries = entries
        self.max_bytes = max_bytes
        self._kept: list[_Entry] = []  # oldest first
        self._lock = threading.Lock()
        self.reused_tokens = 0  # over all calls: prompt tokens not prefilled again
        self.prefilled_tokens = 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._kept)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def turn(self, engine: Engine) -> CachedTurn:
        return CachedTurn(engine, self)

    def take(self, engine: Engine, prompt: Sequence[int]) -> tuple[_Entry | None, int]:
        """The entry sharing the longest prefix with `prompt` (removed: the caller owns it now), and
        how many of its positions to keep: at most len(prompt) - 1, since the last prompt token
        must run to give the next token's logits."""
        with self._lock:
            scored = [(common_prefix(e.ids, prompt), i) for i, e in enumerate(self._kept) if e.engine is engine]
            best, index = max(scored, default=(0, -1))
            if best == 0:
                return None, 0
            return self._kept.pop(index), min(best, len(prompt) - 1)

    def put(self, entry: _Entry) -> None:
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            self._kept.append(entry)
            del self._kept[: -self.entries]


class CachedTurn:
    """Engine-like (start/forward) for one call of batch 1: its prompt's first forward reuses the
    best entry of the cache; release() puts the caches back with the ids they now hold. Calls of
    other batch sizes, or asking for every position's logits, pass through uncached."""

    def __init__(self, engine: Engine, cache: PromptCache) -> None:
        self.engine = engine
        self.cache = cache
        self.mode = engine.mode
        self.model = engine.model
        self.seqs: Sequences | None = None
        self.ids: list[int] = []
        self.reused = 0

    def start(self, batch: int) -> Sequences:
        seqs = self.engine.start(batch)
        self.seqs = seqs if batch == 1 else None
        return seqs

    def forward(self, seqs: Sequences, input_ids: np.ndarray, mask: np.ndarray | None = None, keep: int = 1):
        if self.seqs is not seqs:
            return self.engine.forward(seqs, input_ids, mask, keep)
        if seqs.length == 0 and keep and (mask is None or mask.all()):  # the prompt: reuse a prefix
            prompt = input_ids[0].tolist()
            entry, self.reused = self.cache.take(self.engine, prompt)
            if entry is not None:
                seqs.caches, seqs.mask = entry.seqs.caches, entry.seqs.mask
                seqs.trim(self.reused)
                self.ids = prompt[: self.reused]
                input_ids = input_ids[:, self.reused :]
                mask = None
            self.cache.reused_tokens += self.reused
            self.cache.prefilled_tokens += input_ids.shape[1]
        logits = self.engine.forward(seqs, input_ids, mask, keep)
        self.ids.extend(input_ids[0].tolist())
        return logits

    def release(self) -> None:
        """Give the caches back (once): the newest entry, holding every token fed so far."""
        seqs, self.seqs = self.seqs, None
        if seqs is not None and seqs.length == len(self.ids) and self.ids:
            self.cache.put(_Entry(self.engine, self.ids, seqs))

    def released_after(self, items: Iterator[T]) -> Iterator[T]:
        """`items`, then release() (also when the consumer stops early or fails)."""
        try:
            yield from items
        finally:
            release = getattr(items, "close", None)
            if release is not None:
                release()
            self.release()
