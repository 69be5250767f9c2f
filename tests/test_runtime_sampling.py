"""Samplers and logits processors against hand-computed distributions."""

from __future__ import annotations

import numpy as np
import pytest

from shadow_edge.errors import GenerationError
from shadow_edge.runtimes.sampling import (
    distribution,
    make_repetition_penalty,
    make_sampler,
    seeded_generators,
)

LOGITS = np.log(np.array([[1.0, 2.0, 4.0, 1.0]]))  # softmax: 1/8, 2/8, 4/8, 1/8


def test_temperature_zero_is_argmax_and_ignores_the_generator():
    logits = np.array([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])
    tokens = make_sampler(0.0)(logits, [])
    assert tokens.tolist() == [1, 0] and tokens.dtype == np.int64


def test_distribution_is_softmax_of_logits_over_temperature():
    np.testing.assert_allclose(distribution(LOGITS, 1.0), [[1 / 8, 2 / 8, 4 / 8, 1 / 8]])
    # temperature 2 takes square roots of the unnormalized probabilities: 1, sqrt 2, 2, 1
    roots = np.array([1.0, np.sqrt(2), 2.0, 1.0])
    np.testing.assert_allclose(distribution(LOGITS, 2.0), [roots / roots.sum()])


def test_top_k_keeps_the_k_most_likely_tokens_renormalized():
    np.testing.assert_allclose(distribution(LOGITS, 1.0, top_k=2), [[0, 1 / 3, 2 / 3, 0]])
    np.testing.assert_allclose(distribution(LOGITS, 1.0, top_k=1), [[0, 0, 1, 0]])


def test_top_p_keeps_the_smallest_set_that_reaches_the_mass():
    logits = np.log(np.array([[0.05, 0.5, 0.15, 0.3]]))
    np.testing.assert_allclose(distribution(logits, 1.0, top_p=0.75), [[0, 0.625, 0, 0.375]])
    np.testing.assert_allclose(distribution(logits, 1.0, top_p=0.85), [[0, 0.5, 0.15, 0.3]] / np.float64(0.95))
    np.testing.assert_allclose(distribution(logits, 1.0, top_p=0.1), [[0, 1, 0, 0]])  # always at least one


def test_top_k_then_top_p_apply_in_order():
    # the 3rd largest logit ties with the 4th: top-k 3 keeps both, as transformers does
    np.testing.assert_allclose(distribution(LOGITS, 1.0, top_k=3), distribution(LOGITS, 1.0))
    # top-p 0.5 then keeps the 4/8 token alone
    np.testing.assert_allclose(distribution(LOGITS, 1.0, top_k=3, top_p=0.5), [[0, 0, 1, 0]])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = np.array([[2.0, -2.0, 2.0, -2.0], [1.0, 1.0, 1.0, 1.0]])
    out = make_repetition_penalty(2.0)([np.array([0, 1, 1]), np.array([3])], logits)
    np.testing.assert_allclose(out, [[1.0, -4.0, 2.0, -2.0], [1.0, 1.0, 1.0, 0.5]])
    np.testing.assert_allclose(logits[0], [2.0, -2.0, 2.0, -2.0])  # input untouched
    windowed = make_repetition_penalty(2.0, context_size=1)([np.array([0, 1])], logits[:1])
    np.testing.assert_allclose(windowed, [[2.0, -4.0, 2.0, -2.0]])


def test_sampled_frequencies_follow_the_distribution():
    sampler = make_sampler(temperature=1.0)
    rng = np.random.default_rng(0)
    draws = np.array([sampler(LOGITS, [rng])[0] for _ in range(20_000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [1 / 8, 2 / 8, 4 / 8, 1 / 8], atol=0.015)


def test_filtered_tokens_are_never_sampled():
    sampler = make_sampler(temperature=1.0, top_k=2)
    rng = np.random.default_rng(1)
    assert {int(sampler(LOGITS, [rng])[0]) for _ in range(2000)} == {1, 2}


def test_same_seed_gives_the_same_tokens_and_rows_do_not_depend_on_their_batch():
    sampler = make_sampler(temperature=1.0, top_p=0.9)
    logits = np.random.default_rng(2).normal(size=(3, 50))

    def draw(seed: int, rows: np.ndarray) -> list[list[int]]:
        rngs = seeded_generators(seed, len(rows))
        return [sampler(rows, rngs).tolist() for _ in range(10)]

    assert draw(7, logits) == draw(7, logits)
    assert draw(7, logits) != draw(8, logits)
    alone = draw(7, logits[1:2])
    assert [step[1] for step in draw(7, logits)] == [step[0] for step in alone]


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": -0.5},
        {"temperature": float("nan")},
        {"top_k": -1},
        {"top_p": 0.0},
        {"top_p": 1.5},
    ],
)
def test_invalid_sampling_settings_raise_a_generation_error(settings):
    with pytest.raises(GenerationError):
        make_sampler(**settings)


@pytest.mark.parametrize("penalty", [0.0, -1.0, float("inf")])
def test_invalid_repetition_penalty_raises_a_generation_error(penalty):
    with pytest.raises(GenerationError):
        make_repetition_penalty(penalty)
