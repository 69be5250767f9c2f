"""Samplers and logits processors: small factories over numpy, nothing else.

    processor(histories, logits) -> logits     histories: per row, the token ids so far (prompt included)
    sampler(logits, rngs) -> token ids         logits [batch, vocab]; rngs: one np.random.Generator per row

Temperature 0 means argmax and ignores the generators. Otherwise the order is that of
transformers: repetition penalty, temperature, top-k, top-p, then one draw per row from its own
generator, so that a row's tokens never depend on the other rows of its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import GenerationError

Sampler = Callable[[np.ndarray, Sequence[np.random.Generator]], np.ndarray]
LogitsProcessor = Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray]


def check_settings(temperature: float, top_k: int, top_p: float, repetition_penalty: float) -> None:
    """Raise a GenerationError naming the first invalid sampling setting."""
    if not (np.isfinite(temperature) and temperature >= 0):
        raise GenerationError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise GenerationError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise GenerationError(f"top_p must be in (0, 1] (1 = off), got {top_p}")
    if not (np.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise GenerationError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty}")


def check_seed(seed: int | None) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise GenerationError(f"seed must be a non-negative integer, got {seed!r}")


def distribution(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """The probabilities a sampler draws from, [..., vocab], for temperature > 0."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if 0 < top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -top_k, axis=-1)[..., -top_k, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)  # ties with the k-th are kept, as in transformers
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        # keep the most probable tokens until their mass reaches top_p (at least one)
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
        keep = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(keep, order, mass_before < top_p, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def make_sampler(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> Sampler:
    """A sampler: argmax when temperature is 0, else one draw per row from `distribution`."""
    check_settings(temperature, top_k, top_p, 1.0)
    if temperature == 0:
        return lambda logits, rngs: np.argmax(logits, axis=-1).astype(np.int64)

    def sample(logits: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        probs = distribution(logits, temperature, top_k, top_p)
        # inverse CDF with one uniform draw per row: the row's generator alone decides its token
        draws = np.array([rng.random() for rng in rngs])[:, None]
        cdf = np.cumsum(probs, axis=-1)
        tokens = (cdf <= draws * cdf[:, -1:]).sum(axis=-1)  # <=: never a token of probability 0
        return np.minimum(tokens, probs.shape[-1] - 1).astype(np.int64)

    return sample


def make_repetition_penalty(penalty: float, context_size: int | None = None) -> LogitsProcessor:
    """transformers' repetition penalty: a logit of a token seen in the last `context_size` ids
    (all of them when None) is divided by `penalty` when positive, multiplied when negative."""
    check_settings(0.0, 0, 1.0, penalty)

    def process(histories: Sequence[np.ndarray], logits: np.ndarray) -> np.ndarray:
        logits = logits.copy()
        for row, history in enumerate(histories):
            seen = np.unique(history[-context_size:] if context_size else history)
            values = logits[row, seen]
            logits[row, seen] = np.where(values > 0, values / penalty, values * penalty)
        return logits

    return process


def make_logits_processors(repetition_penalty: float = 1.0) -> list[LogitsProcessor]:
    return [] if repetition_penalty == 1.0 else [make_repetition_penalty(repetition_penalty)]


def seeded_generators(seed: int | None, batch: int) -> list[np.random.Generator]:
    """One generator per row, each seeded with `seed`: a row samples as it would alone."""
    if seed is None:
        return [np.random.default_rng(s) for s in np.random.SeedSequence().spawn(batch)]
    return [np.random.default_rng(seed) for _ in range(batch)]
