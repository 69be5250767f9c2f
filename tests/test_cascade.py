"""The cascade: escalation policy rules, and the schedule on a tiny bundle against attached and
detached generation (the remote path is in test_cascade_remote.py, with a real server)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import shadow_edge
from shadow_edge.errors import BundleError, GenerationError
from shadow_edge.runtimes.cascade import load_cascade
from shadow_edge.runtimes.escalation import Decision, EscalationPolicy, next_token_stats

PROMPTS = ["hello world", "the cat", "abc abc", "a"]
GREEDY = {"max_new_tokens": 10, "temperature": 0.0}


# -- policy -------------------------------------------------------------------------------------


def test_next_token_stats_match_the_definition():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000).astype(np.float32) * 4
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    top1, entropy = next_token_stats(logits)
    assert top1 == pytest.approx(probs.max(), rel=1e-9)
    assert entropy == pytest.approx(-(probs * np.log(probs)).sum(), rel=1e-9)
    assert next_token_stats(np.zeros(64, np.float32)) == pytest.approx((1 / 64, math.log(64)))


def test_decision_rules():
    marker = Decision(EscalationPolicy(marker="[REMOTE]", window=4))
    assert marker.observe(1, "[REM", 0.9, 0.1) is None
    assert "marker" in marker.observe(2, "OTE] go", 0.9, 0.1)

    never = Decision(EscalationPolicy(confidence_threshold=0.0, window=2))
    assert never.observe(1, "a", 1e-9, 9.0) is None and not never.settled
    assert never.observe(2, "b", 1e-9, 9.0) is None and never.settled

    always = Decision(EscalationPolicy(confidence_threshold=1.01))
    assert always.observe(1, "a", 1.0, 0.0).startswith("confidence: top-1 probability 1.000 < 1.01 at token 1")

    entropy = Decision(EscalationPolicy(marker=None, max_mean_entropy=1.0, window=2))
    assert entropy.observe(1, "a", 0.5, 0.5) is None
    assert entropy.observe(2, "b", 0.5, 2.0).startswith("entropy: mean 1.25 nats > 1 over 2 tokens")
    short = Decision(EscalationPolicy(max_mean_entropy=1.0, window=8))
    assert short.observe(1, "a", 0.5, 3.0) is None and short.finish().startswith("entropy")

    ids = Decision(EscalationPolicy(marker=None, marker_ids=(5, 6)))
    assert ids.observe(5, "", 1.0, 0.0) is None and "marker ids" in ids.observe(6, "", 1.0, 0.0)


def test_policy_settings_are_checked():
    for bad in (
        {"confidence_threshold": -0.1},
        {"confidence_threshold": "high"},
        {"window": 0},
        {"marker": ""},
        {"max_mean_entropy": float("nan")},
        {"marker_ids": []},
        {"threshold": 0.5},
    ):
        with pytest.raises(GenerationError):
            EscalationPolicy.from_dict(bad)
    policy = EscalationPolicy().updated(marker="", confidence_threshold=0.3, window=None)
    assert policy.marker is None and policy.confidence_threshold == 0.3 and policy.window == 8
    assert EscalationPolicy.from_dict(policy.to_dict()) == policy


# -- schedule -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tiny_text_export):
    bundle = tiny_text_export.bundle
    return {mode: shadow_edge.load(bundle, mode=mode) for mode in ("attached", "detached")}


def test_manifest_has_policy_defaults_and_a_validated_head(tiny_text_export):
    manifest = shadow_edge.load(tiny_text_export.bundle, mode="detached").manifest
    assert manifest.escalation == EscalationPolicy().to_dict()
    assert manifest.validation["shadow_head"]["max_abs_diff"] <= 1e-4
    head = manifest.graphs["shadow_head"]
    assert [t.name for t in head.inputs] == ["shadow_states"] and [t.name for t in head.outputs] == ["logits"]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_every_architecture_tied_or_not(tiny_exports, arch):
    """Token ids only (no tokenizer); qwen2 and mistral have untied heads."""
    bundle = tiny_exports[arch].bundle
    # the head's weight is a tensor the other graphs store already (the tied table, or the head)
    stored = _external_offsets(bundle / "shadow_lm.onnx") | _external_offsets(bundle / "backbone.onnx")
    assert len(_external_offsets(bundle / "shadow_head.onnx")) == 1
    assert _external_offsets(bundle / "shadow_head.onnx") <= stored
    prompt = [5, 9, 3, 7, 11]
    for mode, threshold in (("detached", 0.0), ("attached", 1.5)):
        want = shadow_edge.load(bundle, mode=mode).generate(prompt, **GREEDY).token_ids
        assert load_cascade(bundle, confidence_threshold=threshold).generate(prompt, **GREEDY).token_ids == want


def _external_offsets(path) -> set[tuple[str, str]]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return {
        tuple(e.value for e in t.external_data if e.key in ("offset", "length"))
        for t in model.graph.initializer
        if t.external_data
    }


def test_threshold_zero_keeps_the_shadows_tokens(tiny_text_export, models):
    cascade = load_cascade(tiny_text_export.bundle, confidence_threshold=0.0, marker="")
    for prompt in PROMPTS:
        want = models["detached"].generate(prompt, **GREEDY)
        got = cascade.generate(prompt, **GREEDY)
        assert (got.served_by, got.escalated, got.reason) == ("shadow", False, None)
        assert got.token_ids == want.token_ids and got.text == want.text
        assert got.shadow_token_ids == want.token_ids[: cascade.policy.window]


def test_forced_local_escalation_gives_the_attached_answer(tiny_text_export, models):
    cascade = load_cascade(tiny_text_export.bundle, confidence_threshold=1.5)
    for prompt in PROMPTS:
        want = models["attached"].generate(prompt, **GREEDY)
        got = cascade.generate(prompt, **GREEDY)
        assert (got.served_by, got.escalated) == ("attached", True)
        assert got.reason.startswith("confidence") and len(got.shadow_token_ids) == 1
        assert got.token_ids == want.token_ids and got.text == want.text
    sampled = {"max_new_tokens": 10, "temperature": 0.9, "top_k": 20, "seed": 7}
    assert (
        cascade.generate("the cat", **sampled).token_ids == models["attached"].generate("the cat", **sampled).token_ids
    )


def test_the_backbone_is_opened_on_the_first_local_escalation(tiny_text_export, models):
    cascade = load_cascade(tiny_text_export.bundle, confidence_threshold=0.0, marker="")
    assert cascade.generate("the cat", **GREEDY).served_by == "shadow"
    assert "backbone" not in cascade.runners and cascade.engine is None  # detached mode's memory
    cascade.policy = cascade.policy.updated(confidence_threshold=1.5)
    got = cascade.generate("the cat", **GREEDY)
    assert got.served_by == "attached" and "backbone" in cascade.runners
    assert got.token_ids == models["attached"].generate("the cat", **GREEDY).token_ids
    engine = cascade.engine
    cascade.generate("hello world", **GREEDY)
    assert cascade.engine is engine  # opened once


def test_a_corrupt_backbone_is_refused_at_load_though_opened_later(tiny_text_export, tmp_path):
    bundle = shutil.copytree(tiny_text_export.bundle, tmp_path / "bundle")
    onnx_file = bundle / "backbone.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="backbone.onnx does not match its sha256"):
        load_cascade(bundle)


def test_marker_escalation(tiny_text_export, models):
    shadow = models["detached"].generate("hello world", **GREEDY)
    marker = shadow.text[:3]  # whatever the shadow says first plays the trained marker
    assert marker
    got = load_cascade(tiny_text_export.bundle, marker=marker).generate("hello world", **GREEDY)
    assert got.served_by == "attached" and got.reason.startswith(f"marker {marker!r}")
    assert got.shadow_text.startswith(marker)
    assert got.token_ids == models["attached"].generate("hello world", **GREEDY).token_ids


def test_the_shadow_sees_the_prompt_once(tiny_text_export):
    """Escalating at the first token: the shadow graph processes the prompt once, then one token
    per attached decode step; recomputing would cost the prompt twice."""
    cascade = load_cascade(tiny_text_export.bundle, confidence_threshold=1.5)
    runner = cascade.runners["shadow"]
    seen: list[int] = []
    step = runner.step

    def counting(cache, input_ids, *args, **kwargs):
        seen.append(int(input_ids.shape[1]))
        return step(cache, input_ids, *args, **kwargs)

    runner.step = counting
    ids = cascade.encode("hello world, the cat sat")
    result = cascade.generate(ids, **GREEDY, eos_token_ids=[])
    assert result.served_by == "attached" and result.new_tokens == GREEDY["max_new_tokens"]
    assert seen == [len(ids)] + [1] * (GREEDY["max_new_tokens"] - 1)


def test_streaming_holds_the_shadow_back_until_decided(tiny_text_export, models):
    cascade = load_cascade(tiny_text_export.bundle, confidence_threshold=1.5)
    stream = cascade.stream_chat([{"role": "user", "content": "hi"}], **GREEDY)
    pieces = [r.text for r in stream]
    want = models["attached"].chat([{"role": "user", "content": "hi"}], **GREEDY)
    assert "".join(pieces) == want.text and stream.token_ids == want.token_ids
    assert (stream.served_by, stream.escalated) == ("attached", True)


def test_batches_and_logits_are_refused(tiny_text_export):
    cascade = load_cascade(tiny_text_export.bundle)
    with pytest.raises(GenerationError):
        cascade.generate_batch(["a", "b"])
    with pytest.raises(GenerationError):
        cascade.logits([1, 2])


def test_bundle_without_head_is_refused_with_a_hint(tiny_text_export, tmp_path):
    bundle = shutil.copytree(tiny_text_export.bundle, tmp_path / "old")
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["graphs"]["shadow_head"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="shadow_head") as error:
        load_cascade(bundle)
    assert "re-export" in error.value.hint


def test_a_quantized_bundle_keeps_the_policy_and_cascades(tiny_text_export, tmp_path):
    from shadow_edge.bundle_tools.quantize import quantize_bundle

    # --only attached keeps the head graph too (it holds no weights of its own)
    out = quantize_bundle(tiny_text_export.bundle, tmp_path / "q", "int8", modes=["attached"], check=False).output
    manifest = shadow_edge.load(out, mode="attached").manifest
    assert manifest.escalation == EscalationPolicy().to_dict()
    assert sorted(manifest.graphs) == ["backbone", "shadow", "shadow_head"]
    want = shadow_edge.load(out, mode="attached").generate("the cat", **GREEDY).token_ids
    assert load_cascade(out, confidence_threshold=1.5).generate("the cat", **GREEDY).token_ids == want


# -- CLI ----------------------------------------------------------------------------------------


def test_cli_run_cascade_json_and_errors(tiny_text_export):
    from test_runtime_cli import assert_one_line_error, run

    bundle = tiny_text_export.bundle
    code, stdout, stderr = run(bundle, "--prompt", "the cat", "--cascade", "--confidence-threshold", "1.5", "--json")
    report = json.loads(stdout)
    want = shadow_edge.load(bundle).generate("the cat")
    assert code == 0 and report["token_ids"] == want.token_ids and report["text"] == want.text
    assert (report["mode"], report["escalated"], report["served_by"]) == ("cascade", True, "attached")
    assert report["reason"].startswith("confidence") and report["latency_s"] >= report["shadow_s"] > 0
    code, stdout, stderr = run(bundle, "--prompt", "the cat", "--cascade", "--escalation-marker", "", "--greedy")
    assert code == 0 and stdout[:-1] == shadow_edge.load(bundle, mode="detached").generate("the cat").text
    assert "served by shadow" in stderr
    assert_one_line_error([bundle, "--prompt", "a", "--remote", "http://127.0.0.1:9"], "need --mode cascade")
    assert_one_line_error([bundle, "--prompt", "a", "--cascade", "--detached"], "choose one")
    assert_one_line_error(
        # --chat: a plain prompt to this chat-trained bundle would add a warning line
        [
            bundle,
            "--chat",
            "--prompt",
            "a",
            "--cascade",
            "--remote",
            "http://127.0.0.1:9",
            "--confidence-threshold",
            "2",
        ],
        "cannot reach the remote http://127.0.0.1:9",
    )


def test_cli_export_writes_the_policy(tiny_exports, tmp_path):
    from typer.testing import CliRunner

    from shadow_edge.cli import app

    args = ["export", str(tiny_exports["llama"].checkpoint), str(tmp_path / "b"), "--no-validate"]
    result = CliRunner().invoke(app, [*args, "--escalation-marker", "<ask>", "--confidence-threshold", "0.25"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["escalation"] == EscalationPolicy(marker="<ask>", confidence_threshold=0.25).to_dict()
