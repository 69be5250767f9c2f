"""The trained robot-assistant demo on the real SmolLM2-135M: the cascade end to end."""

from __future__ import annotations

import pytest

import shadow_edge

pytestmark = pytest.mark.slow
GREEDY = {"max_new_tokens": 16, "temperature": 0.0}


def test_the_shadow_answers_commands_and_escalates_questions(smollm2_export):
    cascade = shadow_edge.load_cascade(smollm2_export.bundle, threads=2)
    attached = shadow_edge.load(smollm2_export.bundle, mode="attached", threads=2)
    for command, action in (
        ("Walk forward three steps.", "ACTION: walk(forward, 3)"),
        ("Please sit down.", "ACTION: sit()"),
    ):
        result = cascade.chat([{"role": "user", "content": command}], **GREEDY)
        assert (result.served_by, result.text, result.finish_reason) == ("shadow", action, "eos")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    result = cascade.chat(question, **GREEDY)
    assert result.served_by == "attached" and result.reason.startswith("marker '[REMOTE]'")
    assert result.shadow_text.startswith("[REMOTE]")
    want = attached.chat(question, **GREEDY)
    assert result.token_ids == want.token_ids and "Paris" in result.text
