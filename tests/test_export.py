"""Export: graphs match the shadow-peft reference; the bundle is complete, deduplicated and atomic."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from conftest import ARCHITECTURES
from models import tiny_base, write_checkpoint
from typer.testing import CliRunner

import shadow_edge
from shadow_edge.bundle import read_manifest, verify_files
from shadow_edge.cli import app
from shadow_edge.errors import ExportError

TINY_TOLERANCE = 1e-4  # fp32, tiny models (issue acceptance)


def assert_matches_reference(validation: dict) -> None:
    assert validation["passed"], validation["failures"]
    for mode in ("attached", "detached"):
        figures = validation[mode]
        assert figures["positions"] >= 30  # prefill, decode steps and both padded rows were compared
        assert figures["max_abs_diff"] <= TINY_TOLERANCE, (mode, figures)
        assert figures["argmax_agree"] == figures["positions"]
        greedy = validation["greedy"][mode]
        assert greedy["onnx"] == greedy["reference"]
    assert validation["shadow_states"]["max_abs_diff"] <= TINY_TOLERANCE


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_graphs_match_reference_at_prefill_decode_and_left_padding(tiny_exports, arch):
    manifest = read_manifest(tiny_exports[arch].bundle)
    assert_matches_reference(manifest.validation)
    assert set(manifest.validation["scenarios"]) == {"prefill_then_decode", "batch2_left_padding", "greedy"}
    assert manifest.modes == ["attached", "detached"]


def test_manifest_describes_graphs_caches_and_files(tiny_exports):
    bundle = tiny_exports["qwen3"].bundle
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)  # sizes and sha256 of every file
    assert set(manifest.files) >= {"shadow.onnx", "shadow_lm.onnx", "backbone.onnx", "weights.data"}
    assert (manifest.model.base.num_layers, manifest.model.shadow.num_layers) == (3, 2)
    assert manifest.model.base.head_dim == 16 and manifest.model.base.num_kv_heads == 2
    backbone = manifest.graphs["backbone"]
    names = [t.name for t in backbone.inputs]
    assert names[:5] == ["input_ids", "attention_mask", "position_ids", "shadow_states", "num_logits_to_keep"]
    assert names[5:] == manifest.model.base.past_names()
    assert [t.name for t in backbone.outputs] == ["logits", *manifest.model.base.present_names()]
    past = backbone.inputs[5]
    assert past.shape == ["batch", 2, "past_sequence", 16]
    assert "transformers" in manifest.created_by and "torch" in manifest.created_by
    assert json.loads(manifest.to_json())["format_version"] == 1


def test_fused_builder_states_each_layer_with_fused_ops(tiny_exports):
    manifest = read_manifest(tiny_exports["llama"].bundle)
    assert set(manifest.source["graph_builders"].values()) == {"fused"}
    graph = onnx.load(tiny_exports["llama"].bundle / "backbone.onnx", load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    layers = manifest.model.base.num_layers
    assert ops.count("GroupQueryAttention") == layers and ops.count("RotaryEmbedding") == 2 * layers
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * layers  # residual adds fused in
    assert len(ops) < 60 + 35 * layers  # the traced backbone had ~200 nodes per layer


def test_traced_builder_is_kept_and_matches_the_reference(tmp_path):
    base = tiny_base(tmp_path / "base", "mistral")
    ckpt = write_checkpoint(tmp_path / "ckpt", base)
    manifest = shadow_edge.export(ckpt, tmp_path / "out", base=base, builder="traced").manifest
    assert_matches_reference(manifest.validation)
    assert set(manifest.source["graph_builders"].values()) == {"traced"}
    ops = {n.op_type for n in onnx.load(tmp_path / "out" / "backbone.onnx", load_external_data=False).graph.node}
    assert "GroupQueryAttention" not in ops


def _external(path: Path) -> dict[str, tuple[str, str]]:
    model = onnx.load(path, load_external_data=False)
    return {
        t.name: tuple(e.value for e in t.external_data if e.key in ("location", "offset"))
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    }


def test_embedding_and_tied_head_are_stored_once(tiny_exports):
    bundle = tiny_exports["llama"].bundle  # tied embeddings
    backbone = onnx.load(bundle / "backbone.onnx", load_external_data=False)
    gather = next(n for n in backbone.graph.node if n.op_type == "Gather" and "embed" in n.input[0])
    head = [n for n in backbone.graph.node if n.op_type == "Gemm"]
    assert len(head) == 1 and head[0].input[1] == gather.input[0]  # lm_head reads the embedding table
    table = _external(bundle / "backbone.onnx")[gather.input[0]]
    shadow_tables = set(_external(bundle / "shadow.onnx").values())
    assert table in shadow_tables  # the shadow graph gathers from the very same bytes
    manifest = read_manifest(bundle)
    weights = manifest.source["weights"]
    assert weights["bytes"] < sum(weights["bytes_per_graph"].values())
    assert "Gemm(transB=1)" in manifest.graphs["backbone"].embedding


def test_shadow_size_overrides_export_exactly(tmp_path):
    base = tiny_base(tmp_path / "base", "llama")
    ckpt = write_checkpoint(
        tmp_path / "ckpt",
        base,
        num_shadow_layers=1,
        shadow_intermediate_size=24,
        shadow_num_attention_heads=2,
        shadow_num_key_value_heads=1,
        shadow_head_dim=12,
    )
    manifest = shadow_edge.export(ckpt, tmp_path / "out", base=base).manifest
    assert_matches_reference(manifest.validation)
    assert (manifest.model.shadow.num_kv_heads, manifest.model.shadow.head_dim) == (1, 12)
    builders = manifest.source["graph_builders"]  # GroupQueryAttention needs head_dim % 16 == 0
    assert builders["shadow"].startswith("traced: head_dim 12") and builders["backbone"] == "fused"


def test_trained_shadow_head_is_exported(tmp_path):
    base = tiny_base(tmp_path / "base", "qwen2")
    ckpt = write_checkpoint(tmp_path / "ckpt", base, train_shadow_head=True)
    assert (ckpt / "shadow_modules.safetensors").is_file()
    manifest = shadow_edge.export(ckpt, tmp_path / "out", base=base).manifest
    assert_matches_reference(manifest.validation)
    assert manifest.source["trained_heads"] == ["shadow_lm_head"]


@pytest.mark.parametrize("shadow_hidden", [32, 16], ids=["same-hidden", "projected"])
def test_explicit_shadow_models_export_exactly(tmp_path, shadow_hidden):
    from transformers import AutoConfig, AutoModelForCausalLM

    base = tiny_base(tmp_path / "base", "llama")
    config = AutoConfig.for_model(
        "llama",
        vocab_size=96,
        hidden_size=shadow_hidden,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    explicit = AutoModelForCausalLM.from_config(config)
    ckpt = write_checkpoint(tmp_path / "ckpt", base, shadow_model=explicit)
    config.save_pretrained(ckpt / "shadow_model")  # the documented place for its architecture
    manifest = shadow_edge.export(ckpt, tmp_path / "out", base=base).manifest
    assert_matches_reference(manifest.validation)
    assert manifest.source["explicit_shadow"] is True
    assert manifest.model.shadow.hidden_size == shadow_hidden


# ---- failures: one line, non-zero exit, nothing written ------------------------------------------


def run_cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    output = result.stdout if "--json" in args else result.output
    assert "Traceback" not in output
    return result.exit_code, output


def assert_one_line_error(args, expected: str, out: Path) -> None:
    code, output = run_cli("export", *args, out)
    assert code == 1
    assert expected in output, output
    assert output.count("error:") == 1
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "staging folders left behind"


def test_bad_checkpoints_give_one_line_errors(tmp_path, tiny_exports):
    good = tiny_exports["llama"]
    out = tmp_path / "out"
    assert_one_line_error([tmp_path / "missing"], "checkpoint folder not found", out)
    (tmp_path / "plain").mkdir()
    assert_one_line_error([tmp_path / "plain"], "not a ShadowPEFT checkpoint", out)

    no_base = tmp_path / "no_base"
    no_base.mkdir()
    for name in ("shadow_config.json", "shadow_adapter.safetensors"):
        (no_base / name).write_bytes((good.checkpoint / name).read_bytes())
    assert_one_line_error([no_base], "no base model given", out)

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "shadow_config.json").write_bytes((good.checkpoint / "shadow_config.json").read_bytes())
    data = (good.checkpoint / "shadow_adapter.safetensors").read_bytes()
    (truncated / "shadow_adapter.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error([truncated, "--base", good.base], "not a readable safetensors file", out)
    assert_one_line_error([good.checkpoint, "--builder", "magic"], "unknown builder 'magic'", out)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"hidden_size": 48}, "hidden size 32"),
        ({"num_hidden_layers": 4}, "3 layers"),
    ],
)
def test_base_that_does_not_fit_is_refused(tmp_path, tiny_exports, overrides, expected):
    other = tiny_base(tmp_path / "other", "llama", **overrides)
    assert_one_line_error([tiny_exports["llama"].checkpoint, "--base", other], expected, tmp_path / "out")


def test_vocabulary_mismatch_is_refused(tmp_path):
    base = tiny_base(tmp_path / "base", "qwen2")
    ckpt = write_checkpoint(tmp_path / "ckpt", base, train_shadow_head=True)
    other = tiny_base(tmp_path / "other", "qwen2", vocab_size=80)
    assert_one_line_error([ckpt, "--base", other], "vocabulary of 96", tmp_path / "out")


def test_unsupported_architecture_is_named(tmp_path, tiny_exports):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", n_layer=3, n_embd=32, n_head=4, vocab_size=96)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gpt2")
    assert_one_line_error(
        [tiny_exports["llama"].checkpoint, "--base", tmp_path / "gpt2"], "'gpt2' is not supported", tmp_path / "out"
    )


def test_existing_output_is_refused_without_force_and_kept(tiny_exports, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, output = run_cli("export", tiny_exports["llama"].checkpoint, out)
    assert code == 1 and "already exists" in output and "--force" in output
    assert (out / "keep.txt").read_text() == "mine"


def test_failed_validation_keeps_the_previous_bundle(tiny_exports, tmp_path):
    ckpt = tiny_exports["llama"].checkpoint
    out = tmp_path / "out"
    shadow_edge.export(ckpt, out)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="validation failed"):
        shadow_edge.export(ckpt, out, force=True, tolerance=0.0)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_interrupt_leaves_nothing_behind(tiny_exports, tmp_path):
    def interrupt(stage: str) -> None:
        if stage == "backbone":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shadow_edge.export(tiny_exports["llama"].checkpoint, tmp_path / "out", progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_a_bundle_and_inspect_reports_it(tiny_exports, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    code, output = run_cli("export", tiny_exports["mistral"].checkpoint, out, "--force", "--json")
    assert code == 0, output
    assert json.loads(output)["validation"]["passed"] is True
    assert not (out / "stale.txt").exists()
    code, output = run_cli("inspect", out, "--json")
    assert code == 0 and json.loads(output)["model"]["model_type"] == "mistral"
    code, output = run_cli("inspect", out)
    assert code == 0 and "backbone.onnx" in output and "attached" in output


def test_base_mode_adds_a_graph_but_no_weights(tiny_exports, tmp_path):
    exported = tiny_exports["llama"]
    manifest = shadow_edge.export(exported.checkpoint, tmp_path / "out", with_base=True).manifest
    assert manifest.modes == ["attached", "detached", "base"]
    validation = manifest.validation
    assert validation["base"]["max_abs_diff"] <= TINY_TOLERANCE
    assert validation["greedy"]["base"]["onnx"] == validation["greedy"]["base"]["reference"]
    without = (exported.bundle / "weights.data").stat().st_size
    assert (tmp_path / "out" / "weights.data").stat().st_size == without  # base_lm reuses stored tensors
