"""Every architecture of the table (architectures.py) beyond the first four: tiny configs whose caps,
multipliers, norms and rope kinds each change the logits (models.ARCH_EXTRA), real shadow-peft
checkpoints, both graph builders validated against the reference, and greedy decoding past the
sliding window equal to shadow-peft's, attached and detached."""

from __future__ import annotations

import onnx
import pytest
from conftest import Exported, export_tiny
from models import reference_greedy, tiny_base, write_checkpoint
from test_export import assert_matches_reference, assert_one_line_error

import shadow_edge
from shadow_edge.bundle import read_manifest
from shadow_edge.exporters.architectures import TABLE

NEW_ARCHITECTURES = ("gemma", "gemma2", "gemma3_text", "phi3", "granite", "olmo2", "smollm3")
PROMPT = [1, 17, 42, 5, 63, 8, 30, 11, 9, 71, 23, 4]  # longer than the tiny sliding windows (6)


@pytest.fixture(scope="module")
def arch_exports(tmp_path_factory) -> dict[str, Exported]:
    return {arch: export_tiny(tmp_path_factory, arch) for arch in NEW_ARCHITECTURES}


@pytest.fixture(scope="module")
def arch_references(arch_exports) -> dict:
    from shadow_edge.exporters.loaders import load_checkpoint

    return {arch: load_checkpoint(exported.checkpoint) for arch, exported in arch_exports.items()}


def test_the_table_lists_every_architecture_the_issue_names():
    assert set(NEW_ARCHITECTURES) | {"llama", "mistral", "qwen2", "qwen3"} == set(TABLE)


@pytest.mark.parametrize("arch", NEW_ARCHITECTURES)
def test_fused_graphs_match_the_reference(arch_exports, arch):
    manifest = read_manifest(arch_exports[arch].bundle)
    assert_matches_reference(manifest.validation)
    assert set(manifest.source["graph_builders"].values()) == {"fused"}


@pytest.mark.parametrize("mode", ["attached", "detached"])
@pytest.mark.parametrize("arch", NEW_ARCHITECTURES)
def test_greedy_64_tokens_past_the_window_equal_shadow_peft(arch_exports, arch_references, arch, mode):
    model = shadow_edge.load(arch_exports[arch].bundle, mode=mode, threads=1)
    result = model.generate(PROMPT, max_new_tokens=64, temperature=0, eos_token_ids=[])
    assert result.token_ids == reference_greedy(arch_references[arch], PROMPT, 64, mode)


def _ops(bundle, graph: str = "backbone") -> list[onnx.NodeProto]:
    return list(onnx.load(bundle / f"{graph}.onnx", load_external_data=False).graph.node)


def test_fused_graphs_state_each_architectures_details(arch_exports):
    def count(arch: str, op: str) -> int:
        return sum(n.op_type == op for n in _ops(arch_exports[arch].bundle))

    gqa = next(n for n in _ops(arch_exports["gemma2"].bundle) if n.op_type == "GroupQueryAttention")
    assert {a.name: a.f for a in gqa.attribute}["softcap"] == 2.0  # Gemma 2's attention soft-capping
    assert count("gemma2", "Tanh") == 1  # and its final logits'
    assert count("gemma", "FastGelu") == 3  # gelu-tanh MLPs
    assert count("smollm3", "RotaryEmbedding") == 2 * 2  # layer 1 of 3 has no rope
    assert count("phi3", "ReduceMax") == 1  # LongRoPE's short/long switch
    assert count("olmo2", "SkipSimplifiedLayerNormalization") == 1  # no input norms: only the final one
    graph = onnx.load(arch_exports["gemma3_text"].bundle / "backbone.onnx", load_external_data=False).graph
    rotary = {i.name for i in graph.initializer}  # one table pair per layer type (local and global theta)
    assert {"backbone.rotary.full_attention.cos", "backbone.rotary.sliding_attention.cos"} <= rotary


@pytest.mark.parametrize("arch", NEW_ARCHITECTURES)
def test_traced_graphs_match_the_reference(arch_exports, arch, tmp_path):
    exported = arch_exports[arch]
    manifest = shadow_edge.export(exported.checkpoint, tmp_path / "out", builder="traced").manifest
    assert_matches_reference(manifest.validation)
    assert set(manifest.source["graph_builders"].values()) == {"traced"}


def test_a_decoder_off_the_table_is_traced_and_validated(tmp_path):
    base = tiny_base(tmp_path / "base", "exaone4")
    ckpt = write_checkpoint(tmp_path / "ckpt", base)
    manifest = shadow_edge.export(ckpt, tmp_path / "out", base=base).manifest
    assert_matches_reference(manifest.validation)
    assert manifest.source["graph_builders"]["backbone"] == "traced: 'exaone4' is not in the architecture table"


def test_a_decoder_off_the_table_that_does_not_trace_fails_in_one_line(tmp_path):
    base = tiny_base(tmp_path / "base", "cohere")  # interleaved rope: its module does not trace
    ckpt = write_checkpoint(tmp_path / "ckpt", base)
    assert_one_line_error([ckpt, "--base", base], "cannot trace the shadow graph of 'cohere'", tmp_path / "out")


@pytest.mark.parametrize(
    ("model_type", "config", "reason"),
    [
        ("mixtral", {"num_local_experts": 4}, "mixture-of-experts routing"),
        ("lfm2", {}, "recurrent or convolution layers"),
    ],
)
def test_structures_a_bundle_cannot_express_are_refused_with_the_reason(
    tmp_path, arch_exports, model_type, config, reason
):
    from transformers import AutoConfig

    folder = tmp_path / model_type
    AutoConfig.for_model(model_type, **config).save_pretrained(folder)  # refused before any weight is read
    (folder / "model.safetensors").write_bytes(b"")
    assert_one_line_error([arch_exports["gemma"].checkpoint, "--base", folder], reason, tmp_path / "out")


def test_partial_rotary_phi4_mini_style_is_fused_exactly(tmp_path):
    from models import ARCH_EXTRA

    rope = {**ARCH_EXTRA["phi3"]["rope_parameters"], "partial_rotary_factor": 0.5}
    rope.update(short_factor=[1.0, 1.5, 2.0, 3.0], long_factor=[1.0, 4.0, 8.0, 16.0])  # rotary_dim / 2 of them
    base = tiny_base(tmp_path / "base", "phi3", rope_parameters=rope)
    manifest = shadow_edge.export(write_checkpoint(tmp_path / "ckpt", base), tmp_path / "out", base=base).manifest
    assert_matches_reference(manifest.validation)
    rotary = next(n for n in _ops(tmp_path / "out") if n.op_type == "RotaryEmbedding")
    assert {a.name: a.i for a in rotary.attribute}["rotary_embedding_dim"] == 8  # of head_dim 16


@pytest.mark.parametrize("arch", NEW_ARCHITECTURES)
def test_peft_adapters_of_every_architecture_decode_like_peft(tmp_path, arch):
    """The same architectures through the HF peft SHADOW format (every block adapted, block 0 included):
    validated, and 64 greedy tokens past the sliding window equal to peft's own forward, both modes."""
    from test_peft import assert_generates_like_peft, export_peft

    base = tiny_base(tmp_path / "base", arch, seed=5)
    ckpt, manifest = export_peft(tmp_path, base)
    assert manifest.source["adapted_blocks"] == [0, manifest.model.base.num_layers - 1]
    assert set(manifest.source["graph_builders"].values()) == {"fused"}
    assert_generates_like_peft(ckpt, tmp_path / "out")
