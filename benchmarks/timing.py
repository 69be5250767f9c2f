"""Per-token timestamps, shared by the benchmarks: every system streams its tokens, and decode speed
at a context is the median gap between consecutive tokens, not an estimate from two calls.

A stream's first token comes after the prefill; each later one after one decode step. So
stamps[0] is the time to the first token, and the gaps stamps[i+1] - stamps[i] are decode steps at
contexts prompt+1, prompt+2, ...
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Iterator


def stamped(tokens: Iterable, count: int) -> list[float]:
    """Seconds from now to each of the first `count` items of `tokens` (a lazy stream)."""
    start = time.perf_counter()
    stamps = []
    for _ in tokens:
        stamps.append(time.perf_counter() - start)
        if len(stamps) == count:
            break
    if len(stamps) != count:
        raise RuntimeError(f"the stream ended after {len(stamps)} of {count} tokens")
    return stamps


def decode_ms(stamps: list[float]) -> float:
    """Median milliseconds of one decode step (the gaps after the first token)."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return 1000 * statistics.median(gaps)


def llama_stream(llm, ids: list[int]) -> Iterator[int]:
    """llama-cpp-python's greedy token stream over exactly these ids (no BOS added, EOS ignored)."""
    llm.reset()
    return llm.generate(ids, top_k=1, temp=0.0, reset=True)


def shadow_edge_stream(model, ids: list[int], count: int) -> Iterator:
    """shadow-edge's greedy stream of exactly `count` new tokens (EOS ignored)."""
    return model.stream(ids, max_new_tokens=count, temperature=0.0, eos_token_ids=[])
