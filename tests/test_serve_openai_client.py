"""The official `openai` client against a real `shadow-edge serve` subprocess on 127.0.0.1: every
OpenAI field the server implements, compared with the library's own answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from serving import serve_command

import shadow_edge

openai = pytest.importorskip("openai")

CHAT = [{"role": "user", "content": "hi there"}]
PROMPT = "the cat sat"


@pytest.fixture(scope="module")
def model(tiny_text_export) -> Any:
    return shadow_edge.load(tiny_text_export.bundle, threads=1)


@pytest.fixture(scope="module")
def client(tiny_text_export) -> Iterator[Any]:
    with serve_command(tiny_text_export.bundle, "--threads", "1") as (url, _):
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_echo_with_logprobs_scores_the_prompt_tokens_first_one_null(model, client):
    # what lm-eval-harness's local-completions sends for each loglikelihood request
    ids = model.encode(PROMPT)
    got = client.completions.create(model="m", prompt=[ids], logprobs=1, echo=True, max_tokens=1, temperature=0)
    (choice,) = got.choices
    want = model.prompt_logprobs(ids, top=1)
    scored = choice.logprobs.token_logprobs
    assert len(scored) == len(ids) + 1 and scored[0] is None and choice.logprobs.top_logprobs[0] is None
    assert scored[1 : len(ids)] == pytest.approx([lp for lp, _ in want[1:]], abs=1e-6)
    assert choice.logprobs.tokens[: len(ids)] == [model.tokenizer.decode([t], skip_special_tokens=False) for t in ids]
    generated = model.generate(ids, max_new_tokens=1, temperature=0, logprobs=1)
    assert scored[-1] == pytest.approx(generated.logprobs[0], abs=1e-6)
    assert all(len(top) == 1 for top in choice.logprobs.top_logprobs[1:])
    assert choice.text == model.tokenizer.decode(ids) + generated.text
    assert got.usage.prompt_tokens == len(ids) and got.usage.completion_tokens == 1


def test_echo_with_max_tokens_zero_gives_the_prompt_alone(model, client):
    got = client.completions.create(model="m", prompt=PROMPT, logprobs=0, echo=True, max_tokens=0)
    (choice,) = got.choices
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert len(choice.logprobs.token_logprobs) == len(model.encode(PROMPT)) and got.usage.completion_tokens == 0


def test_completion_logprobs_equal_the_librarys(model, client):
    want = model.generate(PROMPT, max_new_tokens=6, temperature=0, logprobs=3, eos_token_ids=[])
    got = client.completions.create(model="m", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    logprobs = got.choices[0].logprobs
    assert logprobs.token_logprobs == pytest.approx(want.logprobs[: len(logprobs.token_logprobs)], abs=1e-6)
    assert [len(top) for top in logprobs.top_logprobs] == [3] * len(logprobs.token_logprobs)


def test_chat_logprobs_and_top_logprobs_equal_the_librarys(model, client):
    want = model.chat(CHAT, max_new_tokens=6, temperature=0, logprobs=2)
    got = client.chat.completions.create(
        model="m", messages=CHAT, max_completion_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    content = got.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx(want.logprobs, abs=1e-6)
    for c, best in zip(content, want.top_logprobs, strict=True):
        assert [t.logprob for t in c.top_logprobs] == pytest.approx([lp for _, lp in best], abs=1e-6)
        assert bytes(c.bytes).decode() == c.token
    # streamed: each chunk carries its token's
    chunks = client.chat.completions.create(
        model="m", messages=CHAT, max_completion_tokens=6, temperature=0, logprobs=True, top_logprobs=2, stream=True
    )
    streamed = [c.logprob for chunk in chunks for c in (chunk.choices[0].logprobs.content if chunk.choices else [])]
    assert streamed == pytest.approx(want.logprobs, abs=1e-6)


def test_chat_without_logprobs_has_none(client):
    got = client.chat.completions.create(model="m", messages=CHAT, max_completion_tokens=3)
    assert got.choices[0].logprobs is None


def test_n_choices_differ_and_each_equals_the_library_with_seed_plus_index(model, client):
    got = client.completions.create(model="m", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=11, n=3)
    assert [c.index for c in got.choices] == [0, 1, 2]
    want = [model.generate(PROMPT, max_new_tokens=8, temperature=1.0, seed=11 + i).text for i in range(3)]
    assert [c.text for c in got.choices] == want and len(set(want)) > 1
    assert got.usage.prompt_tokens == len(model.encode(PROMPT))


def test_prompt_batches_give_n_choices_per_prompt_in_order(model, client):
    prompts = ["the cat", "a dog ran"]
    got = client.completions.create(model="m", prompt=prompts, max_tokens=5, temperature=0, n=2)
    want = [model.generate(p, max_new_tokens=5, temperature=0).text for p in prompts]
    assert [c.text for c in got.choices] == [want[0], want[0], want[1], want[1]]
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    ids = [model.encode(p) for p in prompts]
    by_ids = client.completions.create(model="m", prompt=ids, max_tokens=5, temperature=0)
    assert [c.text for c in by_ids.choices] == want


def test_penalties_and_logit_bias_equal_the_librarys(model, client):
    settings = {"presence_penalty": 1.0, "frequency_penalty": 1.5}
    want = model.generate(PROMPT, max_new_tokens=10, temperature=0, **settings)
    got = client.completions.create(model="m", prompt=PROMPT, max_tokens=10, temperature=0, **settings)
    assert got.choices[0].text == want.text
    plain = model.generate(PROMPT, max_new_tokens=3, temperature=0, eos_token_ids=[])
    banned = plain.token_ids[0]
    got = client.completions.create(
        model="m",
        prompt=PROMPT,
        max_tokens=3,
        temperature=0,
        logit_bias={str(banned): -100},
        extra_body={"return_token_ids": True},
    )
    want = model.generate(PROMPT, max_new_tokens=3, temperature=0, logit_bias={banned: -100.0})
    assert got.choices[0].model_extra["token_ids"] == want.token_ids and banned not in want.token_ids


def test_refused_fields_raise_a_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="best_of"):
        client.completions.create(model="m", prompt=PROMPT, best_of=2)
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.completions.create(model="m", prompt=PROMPT, suffix="!", stream=True)


def _by_index(chunks: Any) -> tuple[dict[int, list[Any]], Any]:
    """The streamed choices of each index, in order, and the usage chunk."""
    got: dict[int, list[Any]] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.usage or usage
        for c in chunk.choices:
            got.setdefault(c.index, []).append(c)
    return got, usage


def test_a_stream_of_n_choices_of_a_prompt_batch_adds_up_to_the_whole_answer(client):
    body = dict(model="m", prompt=["the cat", "a dog ran"], max_tokens=6, temperature=1.0, seed=5, n=2)
    whole = client.completions.create(**body, extra_body={"return_token_ids": True})
    chunks = client.completions.create(
        **body, stream=True, stream_options={"include_usage": True}, extra_body={"return_token_ids": True}
    )
    streamed, usage = _by_index(chunks)
    assert sorted(streamed) == [0, 1, 2, 3]
    for choice in whole.choices:
        parts = streamed[choice.index]
        assert "".join(c.text for c in parts) == choice.text
        assert [t for c in parts for t in c.model_extra["token_ids"]] == choice.model_extra["token_ids"]
        assert [c.finish_reason for c in parts] == [None] * (len(parts) - 1) + [choice.finish_reason]
    assert len({c.text for c in whole.choices[:2]}) == 2  # seed + index: the two choices differ
    assert usage.model_dump() == whole.usage.model_dump()


def test_a_streamed_echo_with_logprobs_starts_with_the_scored_prompt(model, client):
    ids = model.encode(PROMPT)
    body = dict(model="m", prompt=PROMPT, logprobs=1, echo=True, max_tokens=3, temperature=0)
    whole = client.completions.create(**body).choices[0]
    parts = _by_index(client.completions.create(**body, stream=True))[0][0]
    assert parts[0].text == model.tokenizer.decode(ids) and parts[0].logprobs.token_logprobs[0] is None
    assert "".join(c.text for c in parts) == whole.text
    scored = [lp for c in parts for lp in c.logprobs.token_logprobs]
    assert scored[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-6) and len(scored) == len(ids) + 3
    # max_tokens 0: the prompt alone, finished
    (alone,) = _by_index(client.completions.create(**body | {"max_tokens": 0}, stream=True))[0][0]
    assert alone.text == PROMPT and alone.finish_reason == "length"


def test_a_chat_stream_of_n_choices_gives_each_its_role_and_answer(model, client):
    body = dict(model="m", messages=CHAT, max_completion_tokens=5, temperature=1.0, seed=3, n=3)
    whole = client.chat.completions.create(**body)
    streamed = _by_index(client.chat.completions.create(**body, stream=True))[0]
    for choice in whole.choices:
        parts = streamed[choice.index]
        assert parts[0].delta.role == "assistant" and all(c.delta.role is None for c in parts[1:])
        assert "".join(c.delta.content for c in parts) == choice.message.content
