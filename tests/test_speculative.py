"""Speculative decoding: the shadow drafts, the backbone verifies; the tokens are attached greedy's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ARCHITECTURES
from test_export import run_cli

import shadow_edge
from shadow_edge.bundle import SHADOW_GRAPH, SHADOW_HEAD_GRAPH
from shadow_edge.errors import GenerationError
from shadow_edge.runtimes.speculative import DraftLength, load_speculative

PROMPTS = [[5, 7, 9, 11], [3, 4], [20] * 9]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_speculative_gives_the_attached_greedy_tokens(tiny_exports, arch, penalty):
    bundle = tiny_exports[arch].bundle
    attached = shadow_edge.load(bundle, threads=1)
    speculative = load_speculative(bundle, draft_tokens=3, threads=1)
    for prompt in PROMPTS:
        settings = dict(max_new_tokens=30, temperature=0, repetition_penalty=penalty, eos_token_ids=[])
        assert speculative.generate(prompt, **settings).token_ids == attached.generate(prompt, **settings).token_ids
        assert speculative.stats.rounds >= 1 and speculative.stats.drafted >= 1


class _OracleDrafts:
    """Drafts that are right except every `wrong`-th one: the attached model's greedy next token,
    found from the tokens the shadow graph was fed (a real shadow agrees only when trained to)."""

    def __init__(self, model, attached, prompt: list[int], wrong: int) -> None:
        self.shadow = model.engine.runners[SHADOW_GRAPH]
        self.attached, self.wrong, self.calls = attached, wrong, 0
        self.tokens = list(prompt)
        step = self.shadow.step

        def recording_step(cache, input_ids, mask, positions, *args, **kwargs):
            start = int(positions[0, 0])
            self.tokens[start:] = [int(t) for t in input_ids[0]]
            return step(cache, input_ids, mask, positions, *args, **kwargs)

        self.shadow.step = recording_step

    def head(self, states: np.ndarray) -> np.ndarray:
        self.calls += 1
        logits = self.attached.logits(self.tokens)[-1:][None]
        if self.calls % self.wrong == 0:
            logits[..., int(np.argmax(logits))] = -1e9  # the runner-up instead
        return logits


@pytest.mark.parametrize("wrong", [1000, 3], ids=["all-accepted", "every-third-rejected"])
def test_accepted_drafts_keep_both_caches_exact(tiny_exports, wrong):
    bundle = tiny_exports["qwen3"].bundle
    attached = shadow_edge.load(bundle, threads=1)
    prompt = [5, 7, 9, 11]
    settings = dict(max_new_tokens=24, temperature=0, eos_token_ids=[])
    speculative = load_speculative(bundle, draft_tokens=4, threads=1)
    speculative.engine.runners[SHADOW_HEAD_GRAPH] = _OracleDrafts(speculative, attached, prompt, wrong)
    result = speculative.generate(prompt, **settings)
    assert result.token_ids == attached.generate(prompt, **settings).token_ids
    stats = speculative.stats
    if wrong == 1000:  # 24 tokens: the prompt pass gives one, each round k accepted + 1
        assert stats.acceptance == 1.0 and stats.rounds <= 6
    else:
        assert 0 < stats.accepted < stats.drafted and stats.rounds < 23


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


def test_speculative_refuses_sampling_and_batches(tiny_exports):
    model = load_speculative(tiny_exports["llama"].bundle, threads=1)
    with pytest.raises(GenerationError, match="use temperature 0"):
        model.generate([1, 2], temperature=0.7)
    with pytest.raises(GenerationError, match="one prompt at a time"):
        model.generate_batch([[1, 2], [3]], temperature=0)
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
    code, output = run_cli("run", bundle, "--prompt-ids", "5", "--speculative", "--temperature", "0.5")
    assert code == 1 and "use temperature 0" in output and "Traceback" not in output


@pytest.mark.slow
def test_smollm2_demo_shadow_drafts_the_commands(smollm2_export):
    """The trained robot demo: the shadow's commands are the attached model's, so its drafts pass."""
    attached = shadow_edge.load(smollm2_export.bundle, threads=2)
    speculative = load_speculative(smollm2_export.bundle, threads=2)
    command = [{"role": "user", "content": "Walk forward three steps."}]
    result = speculative.chat(command, temperature=0, max_new_tokens=24)
    assert result.text == attached.chat(command, temperature=0, max_new_tokens=24).text == "ACTION: walk(forward, 3)"
    assert speculative.stats.acceptance == 1.0 and speculative.stats.rounds < len(result.token_ids) / 2
    question = [{"role": "user", "content": "What is the capital of France?"}]  # the shadow says [REMOTE]
    want = attached.chat(question, temperature=0, max_new_tokens=24).token_ids
    assert speculative.chat(question, temperature=0, max_new_tokens=24).token_ids == want
