"""Log-probabilities, OpenAI's penalties and logit_bias: hand-computed on small arrays, and on a
real tiny bundle against its own logits."""

from __future__ import annotations

import numpy as np
import pytest

import shadow_edge
from shadow_edge.errors import GenerationError
from shadow_edge.runtimes.sampling import (
    log_softmax,
    make_logit_bias,
    make_logits_processors,
    make_openai_penalties,
    top_logprobs,
)

PROMPT = [1, 17, 42, 5, 63, 8, 30, 11]
NO_EOS = {"eos_token_ids": []}


def test_log_softmax_is_log_of_normalized_exponentials():
    logits = np.log(np.array([[1.0, 2.0, 4.0, 1.0]]))
    np.testing.assert_allclose(log_softmax(logits), np.log([[1 / 8, 2 / 8, 4 / 8, 1 / 8]]))


def test_top_logprobs_are_the_best_in_order():
    lp = np.log(np.array([0.1, 0.5, 0.15, 0.25]))
    assert [t for t, _ in top_logprobs(lp, 3)] == [1, 3, 2]
    assert top_logprobs(lp, 0) == []


def test_openai_penalties_count_generated_tokens_only():
    history = np.array([7, 7, 1, 2, 2, 2])  # prompt [7, 7], generated 1 once and 2 three times
    out = make_openai_penalties(0.5, 0.25, [2])([history], np.zeros((1, 8)))
    expected = np.zeros(8)
    expected[1] = -(0.25 * 1 + 0.5)
    expected[2] = -(0.25 * 3 + 0.5)
    np.testing.assert_allclose(out[0], expected)  # 7 (prompt only) untouched


def test_logit_bias_adds_to_the_given_ids():
    out = make_logit_bias({3: -100.0, 0: 2.5})([np.array([1])], np.ones((2, 4)))
    np.testing.assert_allclose(out, [[3.5, 1, 1, -99], [3.5, 1, 1, -99]])


def test_off_values_give_no_processors():
    assert make_logits_processors(1.0, 0.0, 0.0, {}) == []


@pytest.fixture(scope="module", params=["attached", "detached"])
def model(request, tiny_exports):
    return shadow_edge.load(tiny_exports["llama"].bundle, mode=request.param, threads=1)


def test_generated_logprobs_are_those_of_the_models_logits(model):
    result = model.generate(PROMPT, max_new_tokens=5, logprobs=3, **NO_EOS)
    logits = model.logits(PROMPT + result.token_ids)
    expected = log_softmax(logits[len(PROMPT) - 1 : -1])
    got = [expected[i, t] for i, t in enumerate(result.token_ids)]
    np.testing.assert_allclose(result.logprobs, got, atol=1e-4)
    for i, best in enumerate(result.top_logprobs):
        assert len(best) == 3 and best[0][0] == result.token_ids[i]  # greedy: the chosen is the best
        np.testing.assert_allclose([lp for _, lp in best], np.sort(expected[i])[::-1][:3], atol=1e-4)


def test_prompt_logprobs_score_each_token_given_the_ones_before(model):
    scored = model.prompt_logprobs(PROMPT, top=2)
    assert scored[0] is None and len(scored) == len(PROMPT)
    expected = log_softmax(model.logits(PROMPT))
    for i, (lp, best) in enumerate(scored[1:], start=1):
        assert lp == pytest.approx(expected[i - 1, PROMPT[i]], abs=1e-6)
        assert len(best) == 2 and best[0][1] >= best[1][1]


def test_logit_bias_forces_and_forbids_tokens(model):
    greedy = model.generate(PROMPT, max_new_tokens=4, **NO_EOS).token_ids
    forced = model.generate(PROMPT, max_new_tokens=4, logit_bias={9: 100.0}, **NO_EOS).token_ids
    assert forced == [9, 9, 9, 9] != greedy
    banned = model.generate(PROMPT, max_new_tokens=4, logit_bias={greedy[0]: -100.0}, **NO_EOS).token_ids
    assert banned[0] != greedy[0]


def test_penalised_tokens_and_logprobs_follow_the_processed_logits(model):
    result = model.generate(
        PROMPT, max_new_tokens=10, frequency_penalty=1.5, presence_penalty=0.5, logprobs=0, **NO_EOS
    )
    raw = model.logits(PROMPT + result.token_ids)[len(PROMPT) - 1 : -1].astype(np.float64)
    for i, token in enumerate(result.token_ids):
        seen, counts = np.unique(np.asarray(result.token_ids[:i], dtype=np.int64), return_counts=True)
        processed = raw[i].copy()
        processed[seen] -= 1.5 * counts + 0.5
        assert token == int(np.argmax(processed))
        assert result.logprobs[i] == pytest.approx(log_softmax(processed)[token], abs=1e-4)
    assert result.top_logprobs == [[] for _ in result.token_ids]


@pytest.mark.parametrize(
    "settings",
    [
        {"presence_penalty": 2.5},
        {"frequency_penalty": float("nan")},
        {"logit_bias": {10**6: 1.0}},
        {"logit_bias": {1: 101.0}},
        {"logprobs": 21},
        {"logprobs": -1},
    ],
)
def test_invalid_openai_settings_raise_a_generation_error(model, settings):
    with pytest.raises(GenerationError):
        model.generate(PROMPT, max_new_tokens=2, **settings)


def test_the_cascade_refuses_logprobs(tiny_exports):
    model = shadow_edge.open(tiny_exports["llama"].bundle, mode="cascade", threads=1)
    with pytest.raises(GenerationError, match="log-probabilities"):
        model.generate(PROMPT, max_new_tokens=2, logprobs=1)
