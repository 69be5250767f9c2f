"""Speculative decoding: the shadow drafts, the backbone verifies; the tokens are attached greedy's."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ARCHITECTURES
from test_export import run_cli

import shadow_edge
from shadow_edge.bundle import SHADOW_GRAPH, SHADOW_HEAD_GRAPH
from shadow_edge.errors import GenerationError
from shadow_edge.runtimes.speculative import DraftLength, SpeculativeStats, load_speculative

PROMPTS = [[5, 7, 9, 11], [3, 4], [20] * 9]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_speculative_gives_the_attached_greedy_tokens(tiny_exports, arch, penalty):
    bundle = tiny_exports[arch].bundle
    attached = shadow_edge.load(bundle, threads=1)
    speculative = load_speculative(bundle, draft_tokens=3, threads=1)
    settings = dict(max_new_tokens=30, temperature=0, repetition_penalty=penalty, eos_token_ids=[])
    want = [attached.generate(prompt, **settings).token_ids for prompt in PROMPTS]
    for prompt, tokens in zip(PROMPTS, want, strict=True):
        result = speculative.generate(prompt, **settings)
        assert result.token_ids == tokens
        assert result.speculative["rounds"] >= 1 and result.speculative["drafted"] >= 1
    # a batch: left-padded rows, each the tokens it gets alone
    assert [r.token_ids for r in speculative.generate_batch(PROMPTS, **settings)] == want


class _OracleDrafts:
    """A shadow head whose drafts are right except every wrong[row]-th one: the attached model's
    greedy next token, found from the tokens the shadow graph was fed (a real shadow agrees only
    when trained to)."""

    def __init__(self, runners: dict, attached, prompts: list[list[int]], wrong: list[int]) -> None:
        self.shadow = runners[SHADOW_GRAPH]
        self.attached, self.wrong, self.calls = attached, wrong, 0
        self.tokens = [list(p) for p in prompts]
        step = self.shadow.step

        def recording_step(cache, input_ids, mask, positions, *args, **kwargs):
            fed = mask[:, -input_ids.shape[1] :]
            for row, (ids, where, real) in enumerate(zip(input_ids, positions, fed, strict=True)):
                for token, position in zip(ids[real == 1], where[real == 1], strict=True):
                    self.tokens[row][int(position) :] = [int(token)]
            return step(cache, input_ids, mask, positions, *args, **kwargs)

        self.shadow.step = recording_step

    def head(self, states: np.ndarray) -> np.ndarray:
        self.calls += 1
        logits = np.stack([self.attached.logits(tokens)[-1:] for tokens in self.tokens[: len(states)]])
        for row, wrong in enumerate(self.wrong[: len(states)]):
            if self.calls % wrong == 0:
                logits[row, -1, int(np.argmax(logits[row, -1]))] = -1e9  # the runner-up instead
        return logits


@pytest.mark.parametrize("wrong", [1000, 3], ids=["all-accepted", "every-third-rejected"])
def test_accepted_drafts_keep_both_caches_exact(tiny_exports, wrong):
    bundle = tiny_exports["qwen3"].bundle
    attached = shadow_edge.load(bundle, threads=1)
    prompt = [5, 7, 9, 11]
    settings = dict(max_new_tokens=24, temperature=0, eos_token_ids=[])
    speculative = load_speculative(bundle, draft_tokens=4, threads=1)
    speculative.engine.runners[SHADOW_HEAD_GRAPH] = _OracleDrafts(
        speculative.engine.runners, attached, [prompt], [wrong]
    )
    result = speculative.generate(prompt, **settings)
    assert result.token_ids == attached.generate(prompt, **settings).token_ids
    stats = result.speculative
    # each Response says whether its token is a kept draft: as many as the stats count, the first never
    responses = list(speculative.stream(prompt, **settings))
    flags = [r.from_draft for r in responses]
    assert flags[0] is False and sum(flags) == responses[-1].speculative["accepted"] > 0 and len(flags) == 24
    assert {r.from_draft for r in attached.stream(prompt, **settings)} == {None}  # not a speculative stream
    if wrong == 1000:  # 24 tokens: the prompt pass gives one, each round k accepted + 1
        assert stats["acceptance"] == 1.0 and stats["rounds"] <= 6
    else:
        assert 0 < stats["accepted"] < stats["drafted"] and stats["rounds"] < 23


@pytest.mark.parametrize("arch", ["llama", "mistral"])  # mistral: a sliding window of 6 positions
def test_rows_that_accept_different_drafts_keep_their_own(tiny_exports, arch):
    """Per-row trim: a row that accepts every draft is not held back by one that rejects; after each
    round the rows are right-aligned again (sliding windows count stored positions)."""
    bundle = tiny_exports[arch].bundle
    attached = shadow_edge.load(bundle, threads=1)
    prompts = [[5, 7, 9, 11], [3, 4], [20] * 9]
    settings = dict(max_new_tokens=24, temperature=0, repetition_penalty=1.2, eos_token_ids=[])
    speculative = load_speculative(bundle, draft_tokens=4, threads=1)
    speculative.engine.runners[SHADOW_HEAD_GRAPH] = _OracleDrafts(
        speculative.engine.runners, attached, prompts, [1000, 3, 2]
    )
    results = speculative.generate_batch(prompts, **settings)
    assert [r.token_ids for r in results] == [attached.generate(p, **settings).token_ids for p in prompts]
    stats = [r.speculative for r in results]
    assert stats[0]["acceptance"] == 1.0 > stats[1]["acceptance"] > stats[2]["acceptance"] > 0
    assert stats[0]["rounds"] < stats[1]["rounds"] < stats[2]["rounds"]  # row 0 finished first


def test_identical_drafts_are_accepted_under_every_sampling_transform(tiny_exports):
    """p and q come from the same transforms with the same history: drafts equal to attached's own
    distribution are (up to float rounding) always accepted, whatever the settings."""
    bundle = tiny_exports["llama"].bundle
    attached = shadow_edge.load(bundle, threads=1)
    prompt = [5, 7, 9, 11]
    speculative = load_speculative(bundle, draft_tokens=4, threads=1)
    speculative.engine.runners[SHADOW_HEAD_GRAPH] = _OracleDrafts(
        speculative.engine.runners, attached, [prompt], [10**9]
    )
    settings = dict(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.3, presence_penalty=0.5)
    settings |= dict(frequency_penalty=0.4, logit_bias={3: 2.0, 40: -5.0}, max_new_tokens=30, eos_token_ids=[])
    stats = SpeculativeStats.total(
        [speculative.generate(prompt, seed=seed, **settings).speculative for seed in range(5)]
    )
    assert stats.drafted > 50 and stats.acceptance > 0.98


def test_logprobs_are_the_attached_ones(tiny_exports):
    """Each token's log-probabilities come from the backbone's logits at its position (the one that
    verified it), as attached decoding's do."""
    bundle = tiny_exports["llama"].bundle
    settings = dict(max_new_tokens=12, temperature=0, repetition_penalty=1.2, eos_token_ids=[], logprobs=3)
    want = shadow_edge.load(bundle, threads=1).generate_batch(PROMPTS, **settings)
    got = load_speculative(bundle, draft_tokens=3, threads=1).generate_batch(PROMPTS, **settings)
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids
        np.testing.assert_allclose(g.logprobs, w.logprobs, atol=1e-4)
        assert [[t for t, _ in top] for top in g.top_logprobs] == [[t for t, _ in top] for top in w.top_logprobs]


def test_each_call_carries_its_own_stats(tiny_exports):
    """Two interleaved calls: each result's stats are those of the same call alone."""
    bundle = tiny_exports["llama"].bundle
    model = load_speculative(bundle, draft_tokens=3, threads=1)
    settings = dict(max_new_tokens=12, temperature=0.8, seed=5, eos_token_ids=[])
    alone = [model.generate(prompt, **settings).speculative for prompt in PROMPTS[:2]]
    streams = [model.stream(prompt, **settings) for prompt in PROMPTS[:2]]
    last = [None, None]
    for pair in zip(*streams, strict=True):
        last = [r.speculative for r in pair]
    assert last == alone and alone[0] != alone[1]
    with pytest.warns(DeprecationWarning, match="result.speculative"):
        assert model.stats.to_dict() == alone[1]  # the deprecated attribute: the latest call's


CASCADE_PROMPTS = ["hello world", "the cat sat on", "a"]


@pytest.mark.parametrize("oracle", [False, True], ids=["real-shadow-head", "drafts-accepted"])
def test_a_local_escalation_continues_speculatively(tiny_text_export, oracle):
    """The cascade escalates (threshold 1.5: always); the backbone then verifies the shadow's drafts,
    its prompt states and cache reused: the attached model's greedy tokens, the shadow's pass over
    the prompt done once."""
    bundle = tiny_text_export.bundle
    attached = shadow_edge.load(bundle, threads=1)
    settings = dict(max_new_tokens=16, temperature=0, eos_token_ids=[])
    for prompt in CASCADE_PROMPTS:
        cascade = shadow_edge.open(bundle, "cascade", threads=1, draft_tokens=3, confidence_threshold=1.5)
        ids = cascade.encode(prompt)
        if oracle:
            cascade.runners[SHADOW_HEAD_GRAPH] = _OracleDrafts(cascade.runners, attached, [ids], [10**9])
        calls: list[int] = []
        step = cascade.runners[SHADOW_GRAPH].step

        def counting(cache, input_ids, *args, _step=step, _calls=calls, **kwargs):
            _calls.append(int(input_ids.shape[1]))
            return _step(cache, input_ids, *args, **kwargs)

        cascade.runners[SHADOW_GRAPH].step = counting
        result = cascade.generate(prompt, **settings)
        assert (result.served_by, result.escalated) == ("attached", True)
        assert result.token_ids == attached.generate(prompt, **settings).token_ids
        assert calls == [len(ids)] + [1] * (len(calls) - 1)  # the prompt once, then a token at a time
        stats = result.speculative
        assert stats["rounds"] >= 1 and stats["drafted"] >= 1
        if oracle:
            assert stats["acceptance"] > 0.9 and stats["rounds"] <= 6
    plain = shadow_edge.open(bundle, "cascade", threads=1, confidence_threshold=1.5).generate("a", **settings)
    assert plain.speculative is None  # without draft_tokens, plain attached decoding


def test_cascade_draft_tokens_need_a_local_backbone(tiny_text_export):
    with pytest.raises(GenerationError, match="a cascade with a remote has none"):
        shadow_edge.open(tiny_text_export.bundle, "cascade", draft_tokens=2, remote="http://127.0.0.1:9")
    with pytest.raises(GenerationError, match="draft_tokens must be a positive integer"):
        shadow_edge.open(tiny_text_export.bundle, "cascade", draft_tokens=0)


def test_cli_cascade_with_draft_tokens(tiny_text_export):
    bundle = tiny_text_export.bundle
    args = ["--prompt", "the cat", "--max-new-tokens", "6", "--greedy", "--json", "--threads", "1"]
    args += ["--mode", "cascade", "--confidence-threshold", "1.5", "--draft-tokens", "2"]
    code, output = run_cli("run", bundle, *args)
    assert code == 0, output
    result = json.loads(output)
    want = shadow_edge.load(bundle).generate("the cat", max_new_tokens=6, temperature=0)
    assert result["served_by"] == "attached" and result["token_ids"] == want.token_ids
    assert result["speculative"]["rounds"] >= 1


def test_serve_cascade_with_draft_tokens_decodes_an_escalation_speculatively(tiny_text_export, tmp_path):
    from serving import serve_command
    from test_serve import post

    bundle = tmp_path / "bundle"  # a copy whose policy always escalates: max softmax 1.5 is never reached
    shutil.copytree(tiny_text_export.bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["escalation"]["confidence_threshold"] = 1.5
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    want = shadow_edge.load(bundle).generate("the cat", max_new_tokens=6, temperature=0)
    code, output = run_cli("serve", bundle, "--mode", "attached", "--draft-tokens", "2")
    assert code != 0 and "--draft-tokens needs --mode speculative or --mode cascade" in output
    options = ("--mode", "cascade", "--draft-tokens", "2", "--threads", "1")
    with serve_command(bundle, *options) as (url, _):
        body = {"prompt": "the cat", "max_tokens": 6, "temperature": 0, "return_token_ids": True}
        status, answer = post(url, "/v1/completions", body)
    assert status == 200, answer
    assert answer["choices"][0]["token_ids"] == want.token_ids
    assert answer["shadow_edge"]["served_by"] == "attached" and answer["shadow_edge"]["speculative"]["rounds"] >= 1


def test_draft_length_adapts():
    draft = DraftLength(4)
    draft.update(4, 4)
    assert draft.k == 4  # at the maximum
    draft.update(4, 1)
    assert draft.k == 2  # accepted + 1
    draft.update(2, 0)
    assert draft.k == 1
    draft.update(1, 0)
    assert draft.k == 0  # plain attached steps
    for _ in range(DraftLength.PROBE_EVERY - 1):
        draft.update(0, 0)
        assert draft.k == 0
    draft.update(0, 0)
    assert draft.k == 1  # a probe


def test_draft_tokens_are_checked(tiny_exports):
    with pytest.raises(GenerationError, match="draft_tokens must be a positive integer"):
        load_speculative(tiny_exports["llama"].bundle, draft_tokens=0)


def test_cli_speculative_json_and_errors(tiny_exports):
    bundle = tiny_exports["mistral"].bundle
    code, output = run_cli("run", bundle, "--prompt-ids", "5,7,9", "--speculative", "--greedy", "--json")
    assert code == 0, output
    result = json.loads(output)
    want = shadow_edge.load(bundle).generate([5, 7, 9], temperature=0)
    assert result["mode"] == "speculative" and result["token_ids"] == want.token_ids
    assert set(result["speculative"]) == {"rounds", "drafted", "accepted", "acceptance"}
    code, output = run_cli("run", bundle, "--prompt-ids", "5", "--speculative", "--detached")
    assert code == 1 and "choose one" in output
    code, output = run_cli("run", bundle, "--prompt-ids", "5,7,9", "--speculative", "--temperature", "0.5", "--json")
    assert code == 0 and json.loads(output)["speculative"]["rounds"] >= 1


def test_serve_reports_each_requests_draft_stats(tiny_exports):
    from test_serve import post, running, stream

    model = load_speculative(tiny_exports["llama"].bundle, draft_tokens=3, threads=1)
    settings = dict(max_new_tokens=8, temperature=0, eos_token_ids=[])
    want = [model.generate(p, **settings) for p in PROMPTS[:2]]
    with running(model) as url:
        body = {"prompt": PROMPTS[:2], "max_tokens": 8, "temperature": 0, "return_token_ids": True}
        status, answer = post(url, "/v1/completions", body)
        assert status == 200, answer
        assert [c["token_ids"] for c in answer["choices"]] == [w.token_ids for w in want]
        total = SpeculativeStats.total([w.speculative for w in want]).to_dict()
        assert answer["shadow_edge"]["speculative"] == total
        chunks = stream(url, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0})
        assert chunks[-1] == "[DONE]" and chunks[-2]["shadow_edge"]["speculative"] == want[0].speculative
        assert all("shadow_edge" not in chunk for chunk in chunks[:-2])


@pytest.mark.slow
def test_smollm2_demo_shadow_drafts_the_commands(smollm2_export):
    """The trained robot demo: the shadow's commands are the attached model's, so its drafts pass."""
    attached = shadow_edge.load(smollm2_export.bundle, threads=2)
    speculative = load_speculative(smollm2_export.bundle, threads=2)
    command = [{"role": "user", "content": "Walk forward three steps."}]
    result = speculative.chat(command, temperature=0, max_new_tokens=24)
    assert result.text == attached.chat(command, temperature=0, max_new_tokens=24).text == "ACTION: walk(forward, 3)"
    assert result.speculative["acceptance"] == 1.0 and result.speculative["rounds"] < len(result.token_ids) / 2
    question = [{"role": "user", "content": "What is the capital of France?"}]  # the shadow says [REMOTE]
    want = attached.chat(question, temperature=0, max_new_tokens=24).token_ids
    assert speculative.chat(question, temperature=0, max_new_tokens=24).token_ids == want
    # the cascade escalates on the marker and decodes the attached answer speculatively
    cascade = shadow_edge.open(smollm2_export.bundle, "cascade", draft_tokens=4, threads=2)
    escalated = cascade.chat(question, temperature=0, max_new_tokens=24)
    assert escalated.served_by == "attached" and escalated.reason.startswith("marker")
    assert escalated.token_ids == want and escalated.speculative["rounds"] >= 1
    # sampled commands: the drafts pass as greedily (the demo's attached model is nearly certain)
    sampled = speculative.chat(command, temperature=0.7, seed=3, max_new_tokens=24)
    assert sampled.speculative["acceptance"] == 1.0 and sampled.text == "ACTION: walk(forward, 3)"
