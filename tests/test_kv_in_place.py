"""In-place KV caches (GroupQueryAttention's shared past/present buffer, bound with IOBinding),
chunked prefill and the multi-turn prompt cache, on real tiny bundles: exact against the concat
layout, against one-pass prefill, against a fresh prefill, and against shadow-peft's forward."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
from models import reference_greedy, reference_logits

import shadow_edge
from shadow_edge.bundle import BACKBONE_GRAPH, KV_CONCAT, KV_SHARED_BUFFER, SHADOW_GRAPH, SHADOW_LM_GRAPH
from shadow_edge.errors import BundleError
from shadow_edge.runtimes import kv_cache
from shadow_edge.runtimes.engine import left_pad
from shadow_edge.runtimes.kv_cache import KVCache, SharedKVCache
from shadow_edge.runtimes.prompt_cache import PromptCache, common_prefix

MODES = ("attached", "detached")
NO_EOS = {"eos_token_ids": []}
BATCH = [[1, 5, 9], [1, 17, 42, 5, 63, 8, 30, 11, 3], [7, 7, 2, 40, 41, 90]]
RNG = np.random.default_rng(7)
LONG = [int(t) for t in RNG.integers(3, 90, 120)]  # near the tiny models' context of 128


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


def as_concat(model):
    """A second engine over the same sessions, with concat caches: the graphs' own layout."""
    import copy

    engine = copy.copy(model.engine)
    engine.runners = {name: copy.copy(runner) for name, runner in model.engine.runners.items()}
    for runner in engine.runners.values():
        runner.kv_layout = KV_CONCAT
    return engine


def run_steps(engine, prompts, steps):
    """Logits of a left-padded prefill, then of each [batch, n] step of `steps`."""
    ids, mask = left_pad(prompts, 0)
    seqs = engine.start(len(prompts))
    out = [engine.forward(seqs, ids, mask, keep=0)]
    out += [engine.forward(seqs, step, keep=0) for step in steps]
    return out, seqs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ["llama", "mistral"])  # mistral: a sliding window of 6
def test_fused_bundles_declare_shared_buffers_and_decode_into_them(models, arch, mode):
    model = models(arch, mode)
    graphs = model.manifest.graphs
    assert {graphs[g].kv_layout for g in (SHADOW_GRAPH, SHADOW_LM_GRAPH, BACKBONE_GRAPH)} == {KV_SHARED_BUFFER}
    seqs = model.engine.start(1)
    caches = list(seqs.caches.values())
    assert all(isinstance(c, SharedKVCache) for c in caches)
    buffers = [b for c in caches for b in c.buffers]
    model.engine.forward(seqs, np.array([[1, 2, 3]]))
    before = [b[:, :, :3].copy() for b in buffers]
    model.engine.forward(seqs, np.array([[4]]))
    # the same arrays, the old positions untouched, the new one written
    assert all(a is b for a, b in zip([b for c in caches for b in c.buffers], buffers, strict=True))
    assert all(np.array_equal(b[:, :, :3], old) for b, old in zip(buffers, before, strict=True))
    assert all(np.abs(b[:, :, 3]).max() > 0 and not b[:, :, 4:].any() for b in buffers)
    assert {c.seq_len for c in caches} == {4}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_a_left_padded_batch_in_place_equals_the_concat_layout(models, arch, mode):
    model = models(arch, mode)
    steps = [RNG.integers(3, 90, (3, 1)) for _ in range(12)]
    shared, seqs = run_steps(model.engine, BATCH, steps)
    concat, plain = run_steps(as_concat(model), BATCH, steps)
    assert isinstance(plain.caches[next(iter(plain.caches))], KVCache)
    for got, want in zip(shared, concat, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # the caches hold the same keys and values
    for name, cache in seqs.caches.items():
        for got, want in zip(cache.tensors, plain.caches[name].tensors, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_a_long_context_grows_the_buffers_and_matches_the_reference(models, tiny_references, monkeypatch, mode):
    monkeypatch.setattr(kv_cache, "CAPACITY_STEP", 8)  # so that 120 tokens grow the buffers 4 times
    model = models("mistral", mode)
    seqs = model.engine.start(1)
    logits = [model.engine.forward(seqs, np.array([LONG[:5]]), keep=0)[0]]
    logits += [model.engine.forward(seqs, np.array([[t]]), keep=1)[0] for t in LONG[5:]]
    assert {c.capacity for c in seqs.caches.values()} == {128}
    np.testing.assert_allclose(
        np.concatenate(logits), reference_logits(tiny_references["mistral"], LONG, mode), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("mode", MODES)
def test_trim_rewinds_in_place_and_decoding_goes_on_exactly(models, tiny_references, mode):
    model = models("llama", mode)
    engine = model.engine
    seqs = engine.start(1)
    engine.forward(seqs, np.array([LONG[:10]]))
    engine.forward(seqs, np.array([[50]]))
    engine.forward(seqs, np.array([[51]]))
    buffers = [b for c in seqs.caches.values() for b in c.buffers]
    seqs.trim(10)  # O(1): a length, no copy
    assert seqs.length == 10 and {c.seq_len for c in seqs.caches.values()} == {10}
    assert all(a is b for a, b in zip([b for c in seqs.caches.values() for b in c.buffers], buffers, strict=True))
    got = engine.forward(seqs, np.array([LONG[10:14]]), keep=0)[0]  # several tokens over a past: a verify pass
    want = reference_logits(tiny_references["llama"], LONG[:14], mode)[10:]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_speculative_decoding_with_in_place_caches_equals_attached(tiny_exports, tiny_references):
    from shadow_edge.runtimes.speculative import load_speculative

    model = load_speculative(tiny_exports["llama"].bundle, draft_tokens=3, threads=1)
    assert model.engine.runners[BACKBONE_GRAPH].kv_layout == KV_SHARED_BUFFER
    result = model.generate(LONG[:9], max_new_tokens=40, **NO_EOS)
    assert result.token_ids == reference_greedy(tiny_references["llama"], LONG[:9], 40, "attached")
    assert model.stats.rounds < 40  # some drafts were accepted, so some trims kept positions


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keep", [0, 1, 7])
def test_chunked_prefill_equals_one_pass(models, mode, keep):
    model = models("mistral", mode)
    engine = model.engine
    whole = engine.forward(engine.start(1), np.array([LONG[:100]]), keep=keep)
    engine.prefill_chunk = 16
    try:
        seqs = engine.start(1)
        chunked = engine.forward(seqs, np.array([LONG[:100]]), keep=keep)
        after = engine.forward(seqs, np.array([[5]]))  # and the cache it leaves is the one-pass cache
    finally:
        engine.prefill_chunk = 256
    assert chunked.shape == whole.shape == (1, keep or 100, model.manifest.model.vocab_size)
    np.testing.assert_allclose(chunked, whole, atol=1e-5, rtol=0)
    one_pass = engine.forward(engine.start(1), np.array([LONG[:100] + [5]]))
    np.testing.assert_allclose(after, one_pass, atol=1e-5, rtol=0)


def test_bundles_without_the_field_run_with_concat_caches(tiny_exports, tmp_path):
    bundle = tmp_path / "old"
    shutil.copytree(tiny_exports["llama"].bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for graph in manifest["graphs"].values():
        del graph["kv_layout"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    old = shadow_edge.load(bundle, threads=1)
    assert all(isinstance(c, KVCache) for c in old.engine.start(1).caches.values())
    new = shadow_edge.load(tiny_exports["llama"].bundle, threads=1)
    assert old.generate(LONG[:8], max_new_tokens=16, **NO_EOS).token_ids == (
        new.generate(LONG[:8], max_new_tokens=16, **NO_EOS).token_ids
    )
    manifest["graphs"]["shadow"]["kv_layout"] = "paged"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="kv_layout 'paged', not one of concat, shared_buffer"):
        shadow_edge.load(bundle, threads=1)


# ---- the prompt cache -------------------------------------------------------------------------


def test_common_prefix():
    assert [common_prefix(a, b) for a, b in [([], [1]), ([1, 2, 3], [1, 2, 4]), ([1, 2], [1, 2, 3]), ([5], [6])]] == [
        0,
        2,
        2,
        0,
    ]


@pytest.mark.parametrize("mode", MODES)
def test_a_conversation_reuses_each_turns_caches_and_answers_as_a_fresh_prefill(tiny_exports, mode):
    fresh = shadow_edge.load(tiny_exports["qwen3"].bundle, mode=mode, threads=1)
    cached = shadow_edge.load(tiny_exports["qwen3"].bundle, mode=mode, threads=1)
    cached.prompt_cache = cache = PromptCache()
    prompt: list[int] = []
    prompt_tokens = 0
    for turn in range(4):
        prompt = prompt + [int(t) for t in RNG.integers(3, 90, 6)]  # the new message
        want = fresh.generate(prompt, max_new_tokens=5, **NO_EOS)
        before = cache.prefilled_tokens
        got = cached.generate(prompt, max_new_tokens=5, **NO_EOS)
        assert got.token_ids == want.token_ids, turn
        # after the first turn only the new message (and the last answer token, never fed) is prefilled
        assert cache.prefilled_tokens - before == (6 if turn == 0 else 7)
        prompt_tokens += len(prompt)
        prompt = prompt + got.token_ids
    assert len(cache) == 1 and cache.reused_tokens == prompt_tokens - cache.prefilled_tokens
    # a prompt that diverges early reuses only the shared prefix
    other = prompt[:3] + [4, 4, 4]
    assert cached.generate(other, max_new_tokens=4, **NO_EOS).token_ids == (
        fresh.generate(other, max_new_tokens=4, **NO_EOS).token_ids
    )


def test_concurrent_calls_never_share_caches(tiny_exports):
    model = shadow_edge.load(tiny_exports["llama"].bundle, threads=1)
    prompts = [LONG[:12], LONG[:12] + [3, 4], LONG[20:30], LONG[:5]]
    want = [model.generate(p, max_new_tokens=12, **NO_EOS).token_ids for p in prompts]
    model.prompt_cache = PromptCache(entries=2)
    got: dict[int, list[list[int]]] = {}

    def work(i: int) -> None:
        got[i] = [model.generate(prompts[i], max_new_tokens=12, **NO_EOS).token_ids for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(prompts))] == [[w] * 3 for w in want]
    assert len(model.prompt_cache) == 2 and model.prompt_cache.reused_tokens > 0


def test_a_batch_or_a_huge_entry_is_not_kept(tiny_exports):
    model = shadow_edge.load(tiny_exports["llama"].bundle, threads=1)
    model.prompt_cache = PromptCache(max_bytes=1)
    model.generate(LONG[:12], max_new_tokens=3, **NO_EOS)
    assert len(model.prompt_cache) == 0
    model.prompt_cache = PromptCache()
    model.generate_batch([LONG[:12], LONG[:4]], max_new_tokens=3, **NO_EOS)
    assert len(model.prompt_cache) == 0
    model.generate(LONG[:12], max_new_tokens=3, **NO_EOS)
    assert len(model.prompt_cache) == 1 and model.prompt_cache.nbytes > 0
