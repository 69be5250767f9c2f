"""The torch-free runtime on real tiny bundles: exact against shadow-peft, batches, sampling,
streaming, stop conditions and request checks."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from conftest import ARCHITECTURES
from models import reference_greedy, reference_logits

import shadow_edge
from shadow_edge.errors import BundleError, GenerationError

MODES = ("attached", "detached")
PROMPT = [1, 17, 42, 5, 63, 8, 30, 11]
NO_EOS = {"eos_token_ids": []}  # random tiny models may emit EOS anywhere: off unless tested


@pytest.fixture(scope="module")
def models(tiny_models):
    """load(arch, mode), each loaded once."""
    return tiny_models


@pytest.fixture(scope="module")
def text_model(tiny_text_export):
    return shadow_edge.load(tiny_text_export.bundle, threads=1)


# ---- exactness --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_64_tokens_equal_the_reference_token_for_token(models, tiny_references, arch, mode):
    result = models(arch, mode).generate(PROMPT, max_new_tokens=64, temperature=0, **NO_EOS)
    assert result.token_ids == reference_greedy(tiny_references[arch], PROMPT, 64, mode)
    assert (result.new_tokens, result.finish_reason, result.text) == (64, "length", None)


@pytest.mark.parametrize("mode", MODES)
def test_logits_of_a_sequence_equal_the_reference(models, tiny_references, mode):
    ids = PROMPT * 3
    got = models("mistral", mode).logits(ids)  # sliding window 6 < 24 tokens
    np.testing.assert_allclose(got, reference_logits(tiny_references["mistral"], ids, mode), atol=1e-4)


# ---- batches and sampling ---------------------------------------------------------------------

BATCH = [[1, 5, 9], PROMPT + [3], [7, 7, 2, 40, 41, 90]]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mode", MODES)
def test_a_left_padded_batch_gives_the_same_tokens_as_one_by_one(models, arch, mode):
    model = models(arch, mode)
    batch = model.generate_batch(BATCH, max_new_tokens=20, **NO_EOS)
    assert [r.token_ids for r in batch] == [model.generate(p, max_new_tokens=20, **NO_EOS).token_ids for p in BATCH]
    assert [r.prompt_tokens for r in batch] == [len(p) for p in BATCH]


def test_a_sampled_batch_gives_the_same_tokens_as_one_by_one(models):
    model = models("qwen3")
    settings = dict(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=3, **NO_EOS)
    batch = model.generate_batch(BATCH, **settings)
    assert [r.token_ids for r in batch] == [model.generate(p, **settings).token_ids for p in BATCH]


def test_the_same_seed_reproduces_the_sampled_tokens(models):
    model = models("llama", "detached")
    settings = dict(max_new_tokens=24, temperature=1.5, top_k=40, repetition_penalty=1.3, **NO_EOS)
    first = model.generate(PROMPT, seed=11, **settings).token_ids
    assert model.generate(PROMPT, seed=11, **settings).token_ids == first
    assert model.generate(PROMPT, seed=12, **settings).token_ids != first


def test_repetition_penalty_changes_greedy_output(models):
    model = models("llama")
    plain = model.generate(PROMPT, max_new_tokens=32, **NO_EOS).token_ids
    penalized = model.generate(PROMPT, max_new_tokens=32, repetition_penalty=5.0, **NO_EOS).token_ids
    assert penalized != plain
    assert len(set(penalized)) >= len(set(plain))


# ---- streaming and stop conditions ------------------------------------------------------------


def test_stream_yields_each_token_before_computing_the_next(models, monkeypatch):
    model = models("qwen2")
    calls = []
    forward = model.engine.forward
    monkeypatch.setattr(model.engine, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    for n, response in enumerate(model.stream(PROMPT, max_new_tokens=5, **NO_EOS), start=1):
        assert len(calls) == n  # the prefill, then one decode step per token already yielded
        assert response.new_tokens == n
    assert response.finish_reason == "length"


def test_streamed_text_concatenates_to_the_generated_text(text_model):
    settings = dict(max_new_tokens=48, **NO_EOS)
    responses = list(text_model.stream("the cat", **settings))
    result = text_model.generate("the cat", **settings)
    assert [r.token for r in responses] == result.token_ids
    assert "".join(r.text for r in responses) == result.text == text_model.tokenizer.decode(result.token_ids)
    assert result.text  # the tiny tokenizer's bytes make some text
    assert [r.finish_reason for r in responses] == [None] * 47 + ["length"]


def test_a_stop_string_ends_the_text_before_it(text_model):
    full = text_model.generate("the cat", max_new_tokens=48, **NO_EOS)
    stop = next(full.text[i : i + 2] for i in range(4, len(full.text)) if "\ufffd" not in full.text[i : i + 2])
    cut = full.text.index(stop)
    result = text_model.generate("the cat", max_new_tokens=48, stop=[stop], **NO_EOS)
    assert result.finish_reason == "stop"
    assert result.text == full.text[:cut]
    assert result.token_ids == full.token_ids[: len(result.token_ids)] and result.new_tokens < 48
    streamed = "".join(r.text for r in text_model.stream("the cat", max_new_tokens=48, stop=[stop], **NO_EOS))
    assert streamed == result.text  # no part of the stop string was ever emitted


def test_an_eos_token_ends_generation_and_is_kept(models):
    model = models("llama", "detached")
    full = model.generate(PROMPT, max_new_tokens=40, **NO_EOS).token_ids
    eos = full[len(full) // 2]
    result = model.generate(PROMPT, max_new_tokens=40, eos_token_ids=[eos])
    assert result.token_ids == full[: full.index(eos) + 1]
    assert result.finish_reason == "eos"


def test_the_bundles_eos_stops_by_default(models):
    model = models("qwen2", "detached")
    assert model.eos_token_ids == [2]
    result = model.generate(PROMPT, max_new_tokens=100)
    assert result.finish_reason == "eos" if 2 in result.token_ids else result.finish_reason == "length"
    assert 2 not in result.token_ids[:-1]


def test_chat_renders_the_template_and_generates(text_model):
    messages = [{"role": "user", "content": "the cat?"}]
    ids = text_model.encode_chat(messages)
    assert ids[0] == 1 and text_model.tokenizer.decode(ids, skip_special_tokens=False).endswith("<s>assistant:")
    assert text_model.chat(messages, max_new_tokens=8).token_ids == text_model.generate(ids, max_new_tokens=8).token_ids


def test_text_prompts_go_through_the_tokenizer(text_model):
    ids = text_model.tokenizer.encode("the dog")
    assert (
        text_model.generate("the dog", max_new_tokens=6).token_ids
        == text_model.generate(ids, max_new_tokens=6).token_ids
    )


def test_results_carry_stats(models):
    result = models("llama").generate(PROMPT, max_new_tokens=10, **NO_EOS)
    assert (result.mode, result.prompt_tokens, result.new_tokens) == ("attached", len(PROMPT), 10)
    assert result.prefill_s > 0 and result.decode_tok_per_s > 0 and result.peak_rss_mb > 10
    assert set(result.to_dict()) >= {"token_ids", "text", "prefill_s", "decode_tok_per_s", "peak_rss_mb"}


def test_threads_can_share_a_model(models):
    model = models("mistral")
    prompts = [PROMPT, [4, 5, 6], [9] * 7, [1, 2]]
    want = [model.generate(p, max_new_tokens=24, **NO_EOS).token_ids for p in prompts]
    got: dict[int, list[int]] = {}

    def work(i: int) -> None:
        got[i] = model.generate(prompts[i], max_new_tokens=24, **NO_EOS).token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(prompts))] == want


# ---- request checks ---------------------------------------------------------------------------


def test_prompt_plus_new_tokens_beyond_the_context_is_an_error(models):
    model = models("qwen3")
    assert model.context_length == 128
    with pytest.raises(GenerationError, match="exceeds the model's context of 128"):
        model.generate([5] * 100, max_new_tokens=29)
    assert model.generate([5] * 100, max_new_tokens=28, **NO_EOS).new_tokens == 28
    with pytest.raises(GenerationError, match="context is 128"):
        model.generate([5] * 128)


def test_the_default_max_new_tokens_is_shortened_to_fit_the_context(models):
    result = models("qwen3", "detached").generate([5] * 120, **NO_EOS)
    assert (result.new_tokens, result.finish_reason) == (8, "length")


@pytest.mark.parametrize("prompt", [[1, 96], [-1, 3], [5, 10**12]])
def test_token_ids_outside_the_vocabulary_are_an_error(models, prompt):
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        models("llama").generate(prompt, max_new_tokens=2)
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        models("llama").logits(prompt)


@pytest.mark.parametrize("max_new_tokens", [0, -3, 2.5, True, 10**9])
def test_negative_or_absurd_max_new_tokens_are_an_error(models, max_new_tokens):
    with pytest.raises(GenerationError, match="max_new_tokens"):
        models("llama").generate(PROMPT, max_new_tokens=max_new_tokens)


def test_bad_prompts_are_an_error(models):
    model = models("llama")
    for prompt, match in [([], "empty"), ("text", "no tokenizer"), ([[1, 2]], "sequence of token ids")]:
        with pytest.raises(GenerationError, match=match):
            model.generate(prompt)
    with pytest.raises(GenerationError, match="stop strings need a bundle with a tokenizer"):
        model.generate(PROMPT, stop=["x"])
    with pytest.raises(GenerationError, match="non-empty list"):
        model.generate_batch([])


def test_detached_mode_never_opens_the_backbone(tiny_exports, tmp_path):
    bundle = shutil.copytree(tiny_exports["qwen2"].bundle, tmp_path / "bundle")
    (bundle / "backbone.onnx").unlink()
    detached = shadow_edge.load(bundle, mode="detached")
    assert list(detached.engine.runners) == ["shadow_lm"]
    assert detached.generate(PROMPT, max_new_tokens=4).new_tokens >= 1
    with pytest.raises(BundleError, match="missing: backbone.onnx"):
        shadow_edge.load(bundle, mode="attached")
    with pytest.raises(BundleError, match="does not support base mode"):
        shadow_edge.load(bundle, mode="base")


def test_sessions_prepack_by_default_and_the_attached_shadow_pool_sleeps(tiny_exports):
    """Prepacking on (quantized MatMulNBits is ~5x slower without it) unless prepack=False; the
    attached shadow session does not spin, so its threads leave the cores to the backbone."""
    bundle = tiny_exports["llama"].bundle

    def entry(runner, key: str) -> str | None:
        try:
            return runner.session.get_session_options().get_session_config_entry(key)
        except RuntimeError:  # not set: onnxruntime's default
            return None

    def settings(model) -> dict[str, tuple[bool, bool]]:
        return {
            name: (
                entry(runner, "session.disable_prepacking") != "1",
                entry(runner, "session.intra_op.allow_spinning") != "0",
            )
            for name, runner in model.engine.runners.items()
        }

    assert settings(shadow_edge.load(bundle)) == {"shadow": (True, False), "backbone": (True, True)}
    assert settings(shadow_edge.load(bundle, mode="detached")) == {"shadow_lm": (True, True)}
    assert settings(shadow_edge.load(bundle, prepack=False)) == {"shadow": (False, False), "backbone": (False, True)}
