"""Speculative sampling follows the attached model's sampling distribution exactly: the frequencies
of whole 4-token answers over many seeds against their probabilities computed from attached's
logits (a chi-square test), and the same test failing for broken acceptance rules."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import chi2

import shadow_edge
from shadow_edge.runtimes import speculative
from shadow_edge.runtimes.sampling import distribution, make_logits_processors, process_logits

PROMPT = [5, 7, 9, 11]
NEW = 4  # the prompt pass's token, two drafts verified in one round, and the token after them
RUNS = 2000  # seeds 0..RUNS-1: fixed, so the test is deterministic
# The same bias lifts four tokens in both p and q, so that with top_k=4 the answers fall among a
# few hundred sequences (countable); the two models still rank those tokens differently, so the
# drafts are accepted 55-70% of the time and rejected otherwise: every branch of the rule runs.
BIAS = {10: 10.0, 20: 10.0, 30: 10.0, 40: 10.0}
SETTINGS = {
    "temperature-top-k": dict(temperature=1.0, top_k=4, logit_bias=BIAS),
    "every-transform": dict(
        temperature=0.7,
        top_k=4,
        top_p=0.95,
        repetition_penalty=1.2,
        presence_penalty=0.3,
        frequency_penalty=0.2,
        logit_bias=BIAS,
    ),
}
PASS_P = 1e-3  # a correct implementation's p-value stays above this; the broken ones' fall far below
BROKEN_P = 1e-6


@pytest.fixture(scope="module")
def models(tiny_exports):
    bundle = tiny_exports["llama"].bundle
    return shadow_edge.load(bundle, threads=1), speculative.load_speculative(bundle, draft_tokens=2, threads=1)


def exact_answers(attached, prompt: list[int], settings: dict) -> dict[tuple[int, ...], float]:
    """The probability of every NEW-token answer under attached sampling: per prefix, attached's
    logits of the whole sequence, processed and transformed as its sampler does."""
    processors = make_logits_processors(
        settings.get("repetition_penalty", 1.0),
        settings.get("presence_penalty", 0.0),
        settings.get("frequency_penalty", 0.0),
        settings.get("logit_bias"),
        [len(prompt)],
    )
    answers: dict[tuple[int, ...], float] = {}

    def extend(prefix: list[int], probability: float) -> None:
        if len(prefix) == NEW:
            answers[tuple(prefix)] = probability
            return
        ids = prompt + prefix
        logits = process_logits(processors, [np.asarray(ids)], attached.logits(ids)[-1:])
        p = distribution(logits, settings["temperature"], settings.get("top_k", 0), settings.get("top_p", 1.0))[0]
        for token in np.flatnonzero(p > 0):
            extend(prefix + [int(token)], probability * p[token])

    extend([], 1.0)
    return answers


def chi_square_p(expected: dict[tuple[int, ...], float], counts: Counter, runs: int) -> float:
    """The p-value of the counts under the expected probabilities; answers expected fewer than 5
    times are pooled into one cell, as the test's approximation needs."""
    cells = sorted(set(expected) | set(counts), key=lambda a: -expected.get(a, 0.0))
    want = np.array([expected.get(a, 0.0) * runs for a in cells])
    got = np.array([counts.get(a, 0) for a in cells], dtype=np.float64)
    big = want >= 5
    want, got = np.append(want[big], want[~big].sum()), np.append(got[big], got[~big].sum())
    if want[-1] == 0 and got[-1] == 0:
        want, got = want[:-1], got[:-1]
    if (want == 0).any():  # an answer attached sampling never gives
        return 0.0
    return float(chi2.sf(((got - want) ** 2 / want).sum(), len(want) - 1))


def answer_counts(
    model, settings: dict, batch: list[list[int]] | None = None
) -> tuple[Counter, speculative.SpeculativeStats]:
    """How often each answer to PROMPT came over seeds 0..RUNS-1 (as row 0 of `batch` if given),
    and the drafts' stats over all those runs."""
    counts: Counter = Counter()
    stats = []
    for seed in range(RUNS):
        if batch is None:
            result = model.generate(PROMPT, max_new_tokens=NEW, seed=seed, eos_token_ids=[], **settings)
        else:
            result = model.generate_batch(batch, max_new_tokens=NEW, seed=seed, eos_token_ids=[], **settings)[0]
        counts[tuple(result.token_ids)] += 1
        stats.append(result.speculative)
    return counts, speculative.SpeculativeStats.total(stats)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_sampled_answers_follow_the_attached_distribution(models, name):
    attached, model = models
    settings = SETTINGS[name]
    expected = exact_answers(attached, PROMPT, settings)
    assert abs(sum(expected.values()) - 1) < 1e-9 and len(expected) > 50
    counts, stats = answer_counts(model, settings)
    p_value = chi_square_p(expected, counts, RUNS)
    assert p_value > PASS_P, f"{name}: the answers do not follow attached sampling (p = {p_value:.2g})"
    # the drafts were both kept and replaced often enough for every branch of the rule to matter
    assert stats.rounds >= RUNS and 0.3 < stats.acceptance < 0.9


def test_a_left_padded_row_of_a_batch_follows_it_too(models):
    attached, model = models
    settings = SETTINGS["temperature-top-k"]
    counts, _ = answer_counts(model, settings, batch=[PROMPT, [20, 21, 22, 23, 24, 25, 26]])
    assert chi_square_p(exact_answers(attached, PROMPT, settings), counts, RUNS) > PASS_P


def _accept_every_draft(p: float, q: float, uniform: float) -> bool:
    return True


def _replace_from_p(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return p  # a rejected draft replaced by a draw from p rather than norm(max(0, p - q))


@pytest.mark.parametrize(
    "name, broken",
    [("accepts", _accept_every_draft), ("residual", _replace_from_p)],
    ids=["accept-every-draft", "replace-from-p"],
)
def test_the_frequency_test_catches_a_wrong_rule(models, monkeypatch, name, broken):
    """The test has power: each broken rule gives answers the chi-square test rejects."""
    attached, model = models
    settings = SETTINGS["temperature-top-k"]
    monkeypatch.setattr(speculative, name, broken)
    counts, _ = answer_counts(model, settings)
    assert chi_square_p(exact_answers(attached, PROMPT, settings), counts, RUNS) < BROKEN_P


def test_same_seed_same_tokens(models):
    _, model = models
    settings = dict(max_new_tokens=24, temperature=0.8, top_p=0.9, eos_token_ids=[])
    first = model.generate_batch([PROMPT, [3, 4]], seed=11, **settings)
    again = model.generate_batch([PROMPT, [3, 4]], seed=11, **settings)
    other = model.generate_batch([PROMPT, [3, 4]], seed=12, **settings)
    assert [r.token_ids for r in first] == [r.token_ids for r in again] != [r.token_ids for r in other]
