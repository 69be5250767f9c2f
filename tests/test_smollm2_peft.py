"""End to end on the real SmolLM2-135M-Instruct with an HF peft SHADOW adapter: export, then text
generation in both modes equal to peft's own forward recomputing the whole sequence."""

from __future__ import annotations

import pytest
from models import assert_greedy_like_reference

import shadow_edge
from shadow_edge.bundle import read_manifest
from shadow_edge.exporters.loaders import load_checkpoint

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):"]


def test_smollm2_peft_bundle_validates_against_peft(smollm2_peft_export):
    manifest = read_manifest(smollm2_peft_export.bundle)
    validation = manifest.validation
    assert validation["passed"], validation["failures"]
    assert manifest.source["format"] == "peft" and manifest.source["adapted_blocks"] == [0, 29]
    for mode in ("attached", "detached"):
        assert validation[mode]["max_abs_diff"] <= 1e-3
        assert validation["greedy"][mode]["onnx"] == validation["greedy"][mode]["reference"]
    assert manifest.tokenizer["file"] == "tokenizer.json"  # the base found through base_model_name_or_path


@pytest.mark.parametrize("mode", ["attached", "detached"])
def test_smollm2_peft_text_generation_equals_peft_greedy(smollm2_peft_export, mode):
    loaded = load_checkpoint(smollm2_peft_export.checkpoint)
    model = shadow_edge.load(smollm2_peft_export.bundle, mode=mode, threads=2)
    assert_greedy_like_reference(loaded, model, PROMPTS, 24)
