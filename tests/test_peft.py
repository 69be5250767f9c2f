"""HF peft SHADOW adapters (peft's own save_pretrained, weights perturbed): every option exports and
decodes the greedy tokens of peft's own forward (full recompute), attached and detached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from models import assert_greedy_like_reference, tiny_base, write_peft_checkpoint
from test_export import assert_matches_reference, run_cli

import shadow_edge
from shadow_edge.bundle import read_manifest
from shadow_edge.exporters.loaders import load_checkpoint

PROMPT = [5, 17, 42, 8, 63, 11]
GREEDY = 64  # issue acceptance


@pytest.fixture(scope="session")
def peft_bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft-bases")
    return {arch: tiny_base(root / arch, arch, seed=7) for arch in ("llama", "qwen3")}


def export_peft(root: Path, base: Path, builder: str = "fused", export_kwargs: dict | None = None, **options):
    """(checkpoint, manifest) of a peft adapter with these ShadowConfig options, exported to root/out."""
    ckpt = write_peft_checkpoint(root / "ckpt", base, **options)
    manifest = shadow_edge.export(ckpt, root / "out", builder=builder, **(export_kwargs or {})).manifest
    assert_matches_reference(manifest.validation)
    assert manifest.source["format"] == "peft" and manifest.source["library"] == "peft"
    return ckpt, manifest


def assert_generates_like_peft(ckpt: Path, bundle: Path, **load_kwargs) -> None:
    """64 greedy tokens of the bundle (cached ONNX decoding) == peft's forward recomputing each step."""
    loaded = load_checkpoint(ckpt, **load_kwargs)
    for mode in ("attached", "detached"):
        assert_greedy_like_reference(loaded, shadow_edge.load(bundle, mode=mode, threads=1), [PROMPT], GREEDY)


@pytest.mark.parametrize(("arch", "builder"), [("llama", "fused"), ("llama", "traced"), ("qwen3", "fused")])
def test_default_adapter_adapts_every_block_including_the_first(tmp_path, peft_bases, arch, builder):
    ckpt, manifest = export_peft(tmp_path, peft_bases[arch], builder=builder)
    assert manifest.source["adapted_blocks"] == [0, 2]
    assert manifest.source["shadow_shares_base_embeddings"] is True
    assert set(manifest.source["graph_builders"].values()) == {builder}
    assert manifest.source["base"].startswith(str(peft_bases[arch].resolve()))  # from base_model_name_or_path
    assert_generates_like_peft(ckpt, tmp_path / "out")


@pytest.mark.parametrize(
    ("targets", "blocks"),
    [(["model.layers.0", "model.layers.1"], [0, 1]), (["model.layers.1", "model.layers.2"], [1, 2])],
    ids=["exit-before-last", "entry-after-first"],
)
def test_a_block_range_adapts_only_its_blocks(tmp_path, peft_bases, targets, blocks):
    ckpt, manifest = export_peft(tmp_path, peft_bases["llama"], target_modules=targets)
    assert manifest.source["adapted_blocks"] == blocks
    assert_generates_like_peft(ckpt, tmp_path / "out")


def test_layers_to_transform_is_ignored_as_peft_ignores_it(tmp_path, peft_bases):
    # peft still wraps every block; the tensors present say which blocks are adapted
    _, manifest = export_peft(tmp_path, peft_bases["llama"], layers_to_transform=[1])
    assert manifest.source["adapted_blocks"] == [0, 2]


@pytest.mark.parametrize(
    "options",
    [
        {"share_embeddings": False},
        {"shadow_hidden_size": 16},
        {"update_hidden_size": 5, "r": 4},
        {"shadow_num_hidden_layers": 2, "shadow_intermediate_size": 24, "shadow_num_attention_heads": 2},
        {"modules_to_save": ["lm_head"]},
        {"shadow_alpha": 0.7},
    ],
    ids=["own-embeddings", "projected-width", "update-width", "mirror-overrides", "trained-lm-head", "alpha"],
)
def test_mirror_options_export_exactly(tmp_path, peft_bases, options):
    ckpt, manifest = export_peft(tmp_path, peft_bases["llama"], **options)
    shares = "share_embeddings" not in options and "shadow_hidden_size" not in options
    assert manifest.source["shadow_shares_base_embeddings"] is shares
    if "shadow_hidden_size" in options:
        assert manifest.model.shadow.hidden_size == 16
    if "shadow_num_hidden_layers" in options:
        assert manifest.model.shadow.num_layers == 2
    if "modules_to_save" in options:
        assert manifest.source["trained_heads"] == ["lm_head"]
    assert_generates_like_peft(ckpt, tmp_path / "out")


def _plain_shadow(folder: Path, hidden: int) -> Path:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(
        "llama", vocab_size=96, hidden_size=hidden, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
    )  # fmt: skip
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def _projected_shadow(folder: Path) -> Path:
    """A shadow_peft `causal_lm_with_hidden_projection` folder (the published pretrained shadows' format)."""
    import torch
    from shadow_peft.projected_causal_lm import AutoModelForCausalLMWithHiddenProjection
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen3", vocab_size=96, hidden_size=16, intermediate_size=40, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
    )  # fmt: skip
    wrapped = AutoModelForCausalLMWithHiddenProjection.wrap(
        shadow_model=AutoModelForCausalLM.from_config(config),
        shadow_hidden_projection=torch.nn.Linear(16, 32, bias=False),
        lm_head=torch.nn.Linear(32, 96, bias=False),
        init_optimal_projection=False,
    )
    wrapped.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["plain-same-width", "plain-projected", "projected-format"])
def test_explicit_shadow_models_export_exactly(tmp_path, peft_bases, kind):
    make = {
        "plain-same-width": lambda f: _plain_shadow(f, 32),
        "plain-projected": lambda f: _plain_shadow(f, 16),
        "projected-format": _projected_shadow,
    }[kind]
    shadow = make(tmp_path / "shadow")
    ckpt, manifest = export_peft(tmp_path, peft_bases["llama"], shadow_model=str(shadow))
    assert manifest.source["explicit_shadow"] is True
    assert manifest.source["projected_shadow"] is (kind == "projected-format")
    assert manifest.model.shadow.hidden_size == (32 if kind == "plain-same-width" else 16)
    assert manifest.source["shadow_shares_base_embeddings"] is False  # explicit shadows keep their table
    assert_generates_like_peft(ckpt, tmp_path / "out")


def test_explicit_shadow_elsewhere_is_found_with_shadow_dir_holding_only_its_config(tmp_path, peft_bases):
    shadow = _projected_shadow(tmp_path / "shadow")
    ckpt = write_peft_checkpoint(tmp_path / "ckpt", peft_bases["llama"], shadow_model=str(shadow))
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(shadow / "config.json", moved / "config.json")  # its weights travel in the adapter
    shutil.rmtree(shadow)
    manifest = shadow_edge.export(ckpt, tmp_path / "out", shadow=moved).manifest
    assert_matches_reference(manifest.validation)
    assert_generates_like_peft(ckpt, tmp_path / "out", shadow=moved)


def test_extra_adapters_in_subfolders_are_chosen_by_name_or_path(tmp_path, peft_bases):
    ckpt = write_peft_checkpoint(
        tmp_path / "ckpt", peft_bases["llama"], extra_adapters={"small": {"r": 4, "target_modules": ["model.layers.2"]}}
    )
    assert (ckpt / "small" / "adapter_config.json").is_file()
    by_name = shadow_edge.export(ckpt, tmp_path / "by-name", adapter="small").manifest
    by_path = shadow_edge.export(ckpt / "small", tmp_path / "by-path").manifest
    for manifest in (by_name, by_path):
        assert_matches_reference(manifest.validation)
        assert manifest.source["adapted_blocks"] == [2, 2]
    code, output = run_cli("export", ckpt, tmp_path / "out", "--adapter", "missing")
    assert code == 1 and "no adapter 'missing'" in output and "small" in output
    assert_generates_like_peft(ckpt, tmp_path / "by-name", adapter="small")


def test_base_flag_overrides_base_model_name_or_path(tmp_path, peft_bases):
    ckpt = write_peft_checkpoint(tmp_path / "ckpt", peft_bases["llama"])
    moved = tmp_path / "elsewhere"
    shutil.copytree(peft_bases["llama"], moved)
    manifest = shadow_edge.export(ckpt, tmp_path / "out", base=moved, validate=False).manifest
    assert manifest.source["base"] == str(moved.resolve())


# ---- refusals: one line, non-zero exit, nothing written ------------------------------------------


def _edit_config(ckpt: Path, **changes) -> None:
    path = ckpt / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _assert_refused(args: list, expected: str, out: Path) -> None:
    code, output = run_cli("export", *args, out)
    assert code == 1, output
    assert expected in output, output
    assert output.count("error:") == 1 and len(output.strip().splitlines()) == 1, output
    assert not out.exists()


def test_a_gap_in_the_adapted_blocks_is_one_line(tmp_path, peft_bases):
    ckpt = write_peft_checkpoint(
        tmp_path / "ckpt", peft_bases["llama"], target_modules=["model.layers.0", "model.layers.2"]
    )
    _assert_refused([ckpt], "blocks 0, 2 are not contiguous (missing 1)", tmp_path / "out")


def test_a_hub_id_shadow_offline_is_one_line_naming_shadow(tmp_path, peft_bases):
    shadow = _plain_shadow(tmp_path / "shadow", 32)
    ckpt = write_peft_checkpoint(tmp_path / "ckpt", peft_bases["llama"], shadow_model=str(shadow))
    _edit_config(ckpt, shadow_model="shadow-llm/Qwen3-0.6B-H8B")
    _assert_refused([ckpt], "'shadow-llm/Qwen3-0.6B-H8B' is not a local folder", tmp_path / "out")
    _, output = run_cli("export", ckpt, tmp_path / "out")
    assert "--shadow DIR" in output


def test_a_missing_base_is_one_line(tmp_path, peft_bases):
    ckpt = write_peft_checkpoint(tmp_path / "ckpt", peft_bases["llama"])
    _edit_config(ckpt, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M")
    _assert_refused(
        [ckpt], "names the base 'HuggingFaceTB/SmolLM2-135M', which is not a local folder", tmp_path / "out"
    )
    _, output = run_cli("export", ckpt, tmp_path / "out")
    assert "--base DIR" in output


def test_other_peft_types_are_refused(tmp_path):
    ckpt = tmp_path / "lora"
    ckpt.mkdir()
    (ckpt / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    _assert_refused([ckpt], "is a peft 'LORA' adapter, not a SHADOW", tmp_path / "out")


def test_inspect_names_the_format(tmp_path, peft_bases):
    export_peft(tmp_path, peft_bases["llama"], export_kwargs={"validate": True})
    manifest = read_manifest(tmp_path / "out")
    code, output = run_cli("inspect", tmp_path / "out")
    assert code == 0 and "peft" in output
    assert manifest.source["library_version"].startswith("0.21")
