"""Samplers and logits processors: small factories over numpy, nothing else.

    processor(histories, logits) -> logits     histories: per row, the token ids so far (prompt included)
    sampler(logits, rngs) -> token ids         logits [batch, vocab]; rngs: one np.random.Generator per row

Temperature 0 means argmax and ignores the generators. Otherwise the order is that of
transformers: the processors (repetition penalty, then OpenAI's presence and frequency penalties
and logit_bias), temperature, top-k, top-p, then one draw per row from its own generator, so that
a row's tokens never depend on the other rows of its batch.

Log-probabilities (`log_softmax`) are those of the processed logits, before temperature, top-k and
top-p: at temperature 0 without processors, the model's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import GenerationError

Sampler = Callable[[np.ndarray, Sequence[np.random.Generator]], np.ndarray]
LogitsProcessor = Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray]
Distribution = Callable[[np.ndarray], np.ndarray]


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


MAX_PENALTY = 2.0  # OpenAI's range for presence_penalty and frequency_penalty
MAX_LOGIT_BIAS = 100.0


def check_penalties(presence: float, frequency: float, logit_bias: dict[int, float] | None, vocab_size: int) -> None:
    """Raise a GenerationError naming the first invalid OpenAI-style penalty or bias."""
    for name, value in (("presence_penalty", presence), ("frequency_penalty", frequency)):
        if not (np.isfinite(value) and abs(value) <= MAX_PENALTY):
            raise GenerationError(f"{name} must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}] (0 = off), got {value}")
    for token, bias in (logit_bias or {}).items():
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < vocab_size:
            raise GenerationError(f"logit_bias token id {token!r} is outside the vocabulary (0..{vocab_size - 1})")
        if not (np.isfinite(bias) and abs(bias) <= MAX_LOGIT_BIAS):
            raise GenerationError(f"logit_bias values must be in [-100, 100], got {bias} for token {token}")


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


def make_distribution(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> Distribution:
    """logits [..., vocab] -> the probabilities the sampler of these settings draws from: one-hot on
    the argmax at temperature 0 (what speculative sampling compares when decoding greedily)."""
    check_settings(temperature, top_k, top_p, 1.0)
    if temperature > 0:
        return lambda logits: distribution(logits, temperature, top_k, top_p)

    def one_hot(logits: np.ndarray) -> np.ndarray:
        probs = np.zeros(logits.shape, dtype=np.float64)
        np.put_along_axis(probs, np.argmax(logits, axis=-1)[..., None], 1.0, axis=-1)
        return probs

    return one_hot


def inverse_cdf(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """The token of each row [batch] that uniforms [batch] in [0, 1) pick from probs [batch, vocab]
    (unnormalised is fine): one draw per row, so the row's generator alone decides its token."""
    cdf = np.cumsum(probs, axis=-1)
    tokens = (cdf <= uniforms[:, None] * cdf[:, -1:]).sum(axis=-1)  # <=: never a token of probability 0
    return np.minimum(tokens, probs.shape[-1] - 1).astype(np.int64)


def make_sampler(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> Sampler:
    """A sampler: argmax when temperature is 0, else one draw per row from `distribution`."""
    check_settings(temperature, top_k, top_p, 1.0)
    if temperature == 0:
        return lambda logits, rngs: np.argmax(logits, axis=-1).astype(np.int64)

    def sample(logits: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
        probs = distribution(logits, temperature, top_k, top_p)
        return inverse_cdf(probs, np.array([rng.random() for rng in rngs]))

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


def make_openai_penalties(presence: float, frequency: float, prompt_lengths: Sequence[int]) -> LogitsProcessor:
    """OpenAI's penalties over the tokens generated so far (not the prompt, as vLLM counts them):
    logit -= frequency * count + presence * (count > 0)."""

    def process(histories: Sequence[np.ndarray], logits: np.ndarray) -> np.ndarray:
        logits = logits.copy()
        for row, (history, skip) in enumerate(zip(histories, prompt_lengths, strict=True)):
            seen, counts = np.unique(history[skip:], return_counts=True)
            logits[row, seen] -= frequency * counts + presence
        return logits

    return process


def make_logit_bias(bias: dict[int, float]) -> LogitsProcessor:
    """OpenAI's logit_bias: added to the logits of the given token ids."""
    ids = np.fromiter(bias, dtype=np.int64)
    values = np.array([bias[i] for i in bias], dtype=np.float32)

    def process(histories: Sequence[np.ndarray], logits: np.ndarray) -> np.ndarray:
        logits = logits.copy()
        logits[:, ids] += values
        return logits

    return process


def make_logits_processors(
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: dict[int, float] | None = None,
    prompt_lengths: Sequence[int] = (),
) -> list[LogitsProcessor]:
    """The processors the settings ask for, in the order they apply; none at their "off" values.
    prompt_lengths: per row, for the OpenAI penalties, which count generated tokens only."""
    processors = [] if repetition_penalty == 1.0 else [make_repetition_penalty(repetition_penalty)]
    if presence_penalty or frequency_penalty:
        processors.append(make_openai_penalties(presence_penalty, frequency_penalty, prompt_lengths))
    if logit_bias:
        processors.append(make_logit_bias(logit_bias))
    return processors


def process_logits(
    processors: Sequence[LogitsProcessor], histories: Sequence[np.ndarray], logits: np.ndarray
) -> np.ndarray:
    """The processors applied in order to logits [batch, vocab] (histories: one per row)."""
    for process in processors:
        logits = process(histories, logits)
    return logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-probabilities over the last axis, in float64 (sums of many stay exact enough)."""
    scaled = np.asarray(logits, dtype=np.float64)
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def top_logprobs(logprobs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most probable (token id, log-probability) of one position [vocab], best first."""
    if k <= 0:
        return []
    k = min(k, logprobs.shape[-1])
    best = np.argpartition(-logprobs, k - 1)[:k]
    best = best[np.argsort(-logprobs[best], kind="stable")]
    return [(int(t), float(logprobs[t])) for t in best]


def seeded_generators(seed: int | None, batch: int) -> list[np.random.Generator]:
    """One generator per row, each seeded with `seed`: a row samples as it would alone."""
    if seed is None:
        return [np.random.default_rng(s) for s in np.random.SeedSequence().spawn(batch)]
    return [np.random.default_rng(seed) for _ in range(batch)]
