"""Eval: fidelity figures of a bundle against another, torch-free, from the library and the CLI."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from test_export import run_cli

from shadow_edge.bundle import read_manifest
from shadow_edge.bundle_tools.evaluate import GREEDY_PROMPTS, GREEDY_TOKENS, below_floor, evaluate


def test_a_bundle_agrees_with_itself_exactly(tiny_exports):
    bundle = tiny_exports["mistral"].bundle
    report = evaluate(bundle, against=bundle)
    assert report["text"].startswith("random token ids") and report["tokens"] == 128  # the context length
    for mode in ("attached", "detached"):
        figures = report["modes"][mode]
        assert figures["top1_agreement"] == 1.0 and figures["greedy_agreement"] == 1.0
        assert abs(figures["mean_kl"]) < 1e-9
        assert figures["perplexity"] == pytest.approx(figures["reference_perplexity"], rel=1e-9)
        assert (figures["greedy_prompts"], figures["greedy_tokens"]) == (GREEDY_PROMPTS, GREEDY_TOKENS)
    assert below_floor(report, "int4") == []


def test_the_built_in_text_or_a_given_one_goes_through_the_tokenizer(tiny_text_export, tmp_path):
    bundle = tiny_text_export.bundle
    report = evaluate(bundle, against=bundle, modes=["detached"])
    assert report["text"] == "built-in English text" and list(report["modes"]) == ["detached"]
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat and then the dog sat on the cat " * 4)
    code, output = run_cli("eval", bundle, "--against", bundle, "--text", text, "--json")
    assert code == 0, output
    assert json.loads(output)["text"] == "given text"


def test_cli_prints_a_table_per_mode(tiny_exports):
    bundle = tiny_exports["llama"].bundle
    code, output = run_cli("eval", bundle, "--against", bundle)
    assert code == 0
    assert "top-1 agree" in output and "attached" in output and "detached" in output and "100.0%" in output


def test_below_floor_names_each_shortfall():
    report = {"modes": {"attached": {"top1_agreement": 0.5, "greedy_agreement": 0.9}}}
    assert below_floor(report, "int8") == ["attached: top1_agreement 50.0% < 97%"]


@pytest.mark.parametrize("case", ["vocabulary", "text without tokenizer", "mode", "missing"])
def test_bad_requests_give_one_line_errors(tiny_exports, tmp_path, case):
    bundle = tiny_exports["llama"].bundle
    other = shutil.copytree(bundle, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["vocab_size"] = 80
    for graph in manifest["graphs"].values():  # a consistent manifest: the schema checks logits' width
        for output in graph["outputs"]:
            output["shape"][2:3] = [80] if output["name"] == "logits" else output["shape"][2:3]
    (other / "manifest.json").write_text(json.dumps(manifest))
    text = tmp_path / "t.txt"
    text.write_text("hello")
    args, expected = {
        "vocabulary": ([other, "--against", bundle], "different vocabularies (80 vs 96)"),
        "text without tokenizer": ([bundle, "--against", bundle, "--text", text], "has no tokenizer"),
        "mode": ([bundle, "--against", bundle, "--mode", "base"], "mode base is not in both bundles"),
        "missing": ([tmp_path / "nope", "--against", bundle], "bundle folder not found"),
    }[case]
    code, output = run_cli("eval", *args)
    assert code == 1 and expected in output and output.count("error:") == 1


@pytest.mark.slow
def test_smollm2_eval_reproduces_the_figures_quantize_stored(smollm2_export, smollm2_int8):
    code, output = run_cli("eval", smollm2_int8, "--against", smollm2_export.bundle, "--threads", "2", "--json")
    assert code == 0
    stored = read_manifest(smollm2_int8).fidelity
    report = json.loads(output)
    assert report["tokens"] == stored["tokens"] >= 400  # the built-in text through SmolLM2's tokenizer
    for mode, figures in report["modes"].items():
        assert figures["top1_agreement"] == stored["modes"][mode]["top1_agreement"]
        assert figures["mean_kl"] == pytest.approx(stored["modes"][mode]["mean_kl"], rel=1e-6)


# ---- against the PyTorch reference (--reference CKPT) ---------------------------------------------


def test_a_float32_bundle_agrees_with_its_checkpoint(tiny_exports):
    exported = tiny_exports["qwen3"]
    report = evaluate(exported.bundle, reference=exported.checkpoint, threads=1)
    assert report["against"].startswith("PyTorch reference") and list(report["modes"]) == ["attached", "detached"]
    for figures in report["modes"].values():
        assert figures["top1_agreement"] == 1.0 and figures["greedy_agreement"] == 1.0
        assert abs(figures["mean_kl"]) < 1e-6
        assert figures["perplexity"] == pytest.approx(figures["reference_perplexity"], rel=1e-4)


def test_base_mode_is_compared_with_a_fresh_base_model(tiny_exports, tmp_path):
    import shadow_edge

    exported = tiny_exports["llama"]
    bundle = shadow_edge.export(exported.checkpoint, tmp_path / "b", with_base=True).output
    code, output = run_cli("eval", bundle, "--reference", exported.checkpoint, "--base", exported.base, "--json")
    assert code == 0, output
    modes = json.loads(output)["modes"]
    assert list(modes) == ["attached", "detached", "base"]
    assert modes["base"]["top1_agreement"] == 1.0 and modes["base"]["mean_kl"] < 1e-6


def test_int8_against_the_checkpoint_gives_the_figures_it_gives_against_the_float32_bundle(tiny_exports, tmp_path):
    from shadow_edge.bundle_tools.quantize import quantize_bundle

    exported = tiny_exports["qwen2"]
    quantized = quantize_bundle(exported.bundle, tmp_path / "q", "int8", check=False).output
    by_bundle = evaluate(quantized, against=exported.bundle)["modes"]
    by_reference = evaluate(quantized, reference=exported.checkpoint)["modes"]
    for mode, figures in by_reference.items():
        # the float32 bundle is the checkpoint to ~1e-6 in logits: the same figures, up to float noise
        assert figures["top1_agreement"] == pytest.approx(by_bundle[mode]["top1_agreement"], abs=1 / 128)
        assert figures["mean_kl"] == pytest.approx(by_bundle[mode]["mean_kl"], rel=1e-2, abs=1e-6)
        assert figures["greedy_token_agreement"] == pytest.approx(by_bundle[mode]["greedy_token_agreement"], abs=0.05)


@pytest.mark.parametrize("case", ["other checkpoint", "both references", "no reference", "base alone"])
def test_reference_errors_are_one_line(tiny_exports, tmp_path, case):
    from models import write_checkpoint

    exported = tiny_exports["llama"]
    if case == "other checkpoint":  # the same base, but a 1-layer shadow where the bundle has 2
        other = write_checkpoint(tmp_path / "ckpt", exported.base, num_shadow_layers=1)
        args, expected = ["--reference", other, "--base", exported.base], "the checkpoint does not match the bundle"
    else:
        args, expected = {
            "both references": (["--reference", exported.checkpoint, "--against", exported.bundle], "give one of"),
            "no reference": ([], "give one of --against BUNDLE or --reference CHECKPOINT"),
            "base alone": (["--against", exported.bundle, "--base", exported.base], "--base goes with --reference"),
        }[case]
    code, output = run_cli("eval", exported.bundle, *args)
    assert code == 1 and expected in output and output.count("error:") == 1, output


def test_without_torch_the_reference_names_the_export_extra(tiny_exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as when it is not installed
    exported = tiny_exports["llama"]
    code, output = run_cli("eval", exported.bundle, "--reference", exported.checkpoint)
    assert code == 1 and "torch is not installed" in output and "shadow-edge[export]" in output


@pytest.mark.slow
def test_smollm2_float32_bundle_agrees_with_shadow_peft(smollm2_export, tmp_path):
    text = tmp_path / "text.txt"  # short: the reference recomputes the whole sequence for every greedy token
    text.write_text(
        "The lighthouse keeper climbed the steps every evening, cleaned the lens and wrote the weather in a book."
    )
    args = ("--reference", smollm2_export.checkpoint, "--text", text, "--mode", "attached", "--threads", "2", "--json")
    code, output = run_cli("eval", smollm2_export.bundle, *args)
    assert code == 0, output
    figures = json.loads(output)["modes"]["attached"]
    assert figures["top1_agreement"] == 1.0 and figures["greedy_agreement"] == 1.0
    assert figures["mean_kl"] < 1e-6  # export validation: max |logit diff| ~7e-5
