"""Sequence classification from both formats (shadow-peft's classifier heads, peft SEQ_CLS's score and
shadow_head): class logits equal to the library's own, attached and detached, one by one and in a
left-padded batch; the CLI, the Python API and serve's /classify; generation refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from models import tiny_base, write_checkpoint, write_peft_checkpoint
from test_export import run_cli
from test_serve import request, running

import shadow_edge
from shadow_edge.bundle import read_manifest
from shadow_edge.exporters.loaders import load_checkpoint

FORMATS = ("shadow-peft", "peft")
TOLERANCE = 1e-4  # fp32 (issue acceptance)
ROWS = [[5, 17, 42, 8, 63, 11, 30], [9, 4], [70, 71, 72, 73]]


@pytest.fixture(scope="session")
def classifiers(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(checkpoint, bundle) of a 3-label classifier in each format, on one tiny Llama base."""
    root = tmp_path_factory.mktemp("classifiers")
    base = tiny_base(root / "base", "llama", seed=5, pad_token_id=0)
    ckpts = {
        "shadow-peft": write_checkpoint(root / "shadow-peft", base, num_labels=3),
        "peft": write_peft_checkpoint(root / "peft", base, task_type="SEQ_CLS", num_labels=3),
    }
    return {
        fmt: (ckpt, shadow_edge.export(ckpt, root / f"{fmt}-bundle", base=base).output) for fmt, ckpt in ckpts.items()
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_validates_class_logits_and_invents_no_lm_head(classifiers, fmt):
    _, bundle = classifiers[fmt]
    manifest = read_manifest(bundle)
    validation = manifest.validation
    assert validation["passed"], validation["failures"]
    assert set(validation["scenarios"]) == {"classify_each_row", "classify_batch2_left_padding"}
    for mode in ("attached", "detached"):
        assert validation[mode]["positions"] == 4 and validation[mode]["max_abs_diff"] <= TOLERANCE
    assert manifest.model.task == "seq_cls" and manifest.model.labels == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert manifest.source["format"] == fmt
    for graph in ("backbone", "shadow_lm"):
        logits = onnx.load(bundle / f"{graph}.onnx", load_external_data=False).graph.output[0]
        assert logits.type.tensor_type.shape.dim[-1].dim_value == 3  # class logits, no vocabulary head


def test_traced_classification_graphs_match_too(classifiers, tmp_path):
    ckpt, _ = classifiers["peft"]
    manifest = shadow_edge.export(ckpt, tmp_path / "out", base=ckpt.parent / "base", builder="traced").manifest
    assert manifest.validation["passed"], manifest.validation["failures"]
    assert set(manifest.source["graph_builders"].values()) == {"traced"}
    for mode in ("attached", "detached"):
        assert manifest.validation[mode]["max_abs_diff"] <= TOLERANCE


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["attached", "detached"])
def test_classify_batch_equals_the_library_row_by_row(classifiers, fmt, mode):
    ckpt, bundle = classifiers[fmt]
    loaded = load_checkpoint(ckpt, base=ckpt.parent / "base")
    model = shadow_edge.load(bundle, mode=mode, threads=1)
    batch = model.classify(ROWS)  # left-padded in one call
    for row, got in zip(ROWS, batch, strict=True):
        want = loaded.reference(torch.tensor([row]), None)[mode][0].numpy()
        np.testing.assert_allclose(got.logits, want, atol=TOLERANCE)
        assert model.classify(row)[0].logits == pytest.approx(got.logits, abs=TOLERANCE)
        assert got.label == f"LABEL_{int(np.argmax(want))}" and sum(got.probs) == pytest.approx(1.0)


def test_classify_command_prints_one_object_per_input(classifiers, tmp_path):
    _, bundle = classifiers["peft"]
    code, output = run_cli("classify", bundle, "--prompt-ids", "5,17,42", "--json")
    assert code == 0, output
    (result,) = [json.loads(line) for line in output.splitlines()]
    assert set(result) == {"label", "logits", "probs"} and len(result["logits"]) == 3
    jsonl = tmp_path / "inputs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"input_ids": row}) for row in ROWS) + "\n")
    code, output = run_cli("classify", bundle, "--file", jsonl, "--detached", "--json")
    assert code == 0, output
    assert len(output.splitlines()) == len(ROWS)
    code, output = run_cli("classify", bundle, "--file", jsonl)
    assert code == 0 and "LABEL_" in output
    code, output = run_cli("inspect", bundle)
    assert code == 0 and "seq_cls" in output


def test_generation_is_refused_on_a_classifier_in_one_line(classifiers):
    _, bundle = classifiers["shadow-peft"]
    for args in (["run", bundle, "--prompt-ids", "1,2,3"], ["run", bundle, "--prompt-ids", "1,2,3", "--cascade"]):
        code, output = run_cli(*args)
        assert code == 1 and "sequence classifier" in output and "shadow-edge classify" in output, output
        assert len(output.strip().splitlines()) == 1


def test_classify_is_refused_on_a_language_model(tiny_exports):
    code, output = run_cli("classify", tiny_exports["llama"].bundle, "--prompt-ids", "1,2,3")
    assert code == 1 and "not a sequence classifier" in output


def test_serve_answers_classify_in_vllms_shape_and_refuses_completions(classifiers):
    _, bundle = classifiers["peft"]
    model = shadow_edge.load(bundle, threads=1)
    with running(model) as url:
        status, answer, _ = request(url, "POST", "/classify", {"model": "m", "input": ROWS})
        assert status == 200, answer
        assert answer["object"] == "list" and answer["usage"]["prompt_tokens"] == sum(map(len, ROWS))
        assert [d["index"] for d in answer["data"]] == [0, 1, 2]
        want = model.classify(ROWS)
        for item, result in zip(answer["data"], want, strict=True):
            assert item["label"] == result.label and item["num_classes"] == 3
            assert item["probs"] == pytest.approx(result.probs)
        status, answer, _ = request(url, "POST", "/v1/classify", {"input": [5, 6]})
        assert status == 200 and len(answer["data"]) == 1
        status, answer, _ = request(url, "POST", "/classify", {"input": 3})
        assert status == 400 and answer["error"]["param"] == "input"
        status, answer, _ = request(url, "POST", "/v1/completions", {"prompt": [1, 2], "max_tokens": 2})
        assert status == 400 and "sequence classifier" in answer["error"]["message"]


def test_a_causal_lm_base_without_its_head_is_refused(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model("llama", **{**_tiny(), "tie_word_embeddings": False})
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "cls-base")
    lm_base = tiny_base(tmp_path / "lm-base", "qwen2")
    ckpt = write_checkpoint(tmp_path / "ckpt", lm_base)
    code, output = run_cli("export", ckpt, tmp_path / "out", "--base", tmp_path / "cls-base")
    assert code == 1 and "no lm_head.weight" in output, output


def _tiny() -> dict:
    from models import TINY

    return dict(TINY)
