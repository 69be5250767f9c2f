"""Mobile packaging: .ort graphs load and match the .onnx graphs; onnxruntime-genai runs the bundle
(detached decoder, attached decoder-pipeline) and greedy-decodes the same tokens as our runtime."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import shadow_edge
from shadow_edge.bundle import cache_for, read_manifest, verify_files
from shadow_edge.bundle_tools.evaluate import open_engine
from shadow_edge.bundle_tools.mobile import package_mobile, write_genai
from shadow_edge.bundle_tools.quantize import quantize_bundle
from shadow_edge.runtimes.sessions import GraphRunner

og = pytest.importorskip("onnxruntime_genai")


def genai_greedy(folder, ids: list[int], steps: int) -> list[int]:
    """onnxruntime-genai's greedy tokens (it stops early at an EOS id)."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def engine_greedy(folder, mode: str, ids: list[int], steps: int) -> list[int]:
    engine = open_engine(folder, read_manifest(folder), mode)
    seqs = engine.start(1)
    logits = engine.forward(seqs, np.asarray([ids]))
    tokens = []
    for _ in range(steps):
        tokens.append(int(logits[0, -1].argmax()))
        logits = engine.forward(seqs, np.asarray([[tokens[-1]]]))
    return tokens


def assert_same_greedy(genai: list[int], ours: list[int]) -> None:
    assert genai and genai == ours[: len(genai)]


@pytest.fixture(scope="module")
def tiny_mobile(tiny_exports, tmp_path_factory):
    """The tiny Llama bundle exported again with --mobile."""
    out = tmp_path_factory.mktemp("mobile") / "bundle"
    return shadow_edge.export(tiny_exports["llama"].checkpoint, out, mobile=True).output


def test_ort_graphs_load_and_match_the_onnx_graphs(tiny_mobile):
    manifest = read_manifest(tiny_mobile)
    verify_files(tiny_mobile, manifest)  # the mobile files are listed and hashed like the others
    assert set(manifest.mobile["ort"]["graphs"]) == {"shadow", "shadow_lm", "shadow_head", "backbone"}
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 96, size=(1, 7))
    mask, pos = np.ones((1, 7), dtype=np.int64), np.arange(7)[None]
    for name, ort_file in manifest.mobile["ort"]["graphs"].items():
        spec, cache = manifest.graphs[name], cache_for(manifest.model, name)
        onnx_runner = GraphRunner(tiny_mobile / spec.file, spec, cache)
        ort_runner = GraphRunner(tiny_mobile / ort_file, spec, cache)
        states = rng.standard_normal((1, 7, 32)).astype(np.float32)
        if name == "shadow_head":
            np.testing.assert_allclose(ort_runner.head(states), onnx_runner.head(states), atol=1e-5)
            continue
        want = onnx_runner.step(onnx_runner.new_cache(1), ids, mask, pos, shadow_states=states, logits_to_keep=0)
        got = ort_runner.step(ort_runner.new_cache(1), ids, mask, pos, shadow_states=states, logits_to_keep=0)
        np.testing.assert_allclose(got, want, atol=1e-5)
    config = (tiny_mobile / manifest.mobile["ort"]["required_operators"]).read_text()
    assert "ai.onnx;17;" in config and "MatMul" in config and "Gather" in config


def test_genai_runs_the_detached_shadow_as_a_plain_decoder(tiny_mobile):
    genai = read_manifest(tiny_mobile).mobile["genai"]
    assert genai["mode"] == "detached" and genai["graphs"] == ["genai_shadow_lm.onnx"]
    ids = [5, 17, 33, 8, 61]
    ours = shadow_edge.load(tiny_mobile, mode="detached").generate(ids, max_new_tokens=12, eos_token_ids=[])
    assert_same_greedy(genai_greedy(tiny_mobile, ids, 12), ours.token_ids)


def test_genai_runs_the_attached_pair_as_a_decoder_pipeline(tiny_exports, tmp_path):
    folder = shutil.copytree(tiny_exports["qwen3"].bundle, tmp_path / "bundle")
    genai = write_genai(folder, read_manifest(folder), "attached")
    assert genai["mode"] == "attached" and genai["graphs"] == ["genai_shadow.onnx", "genai_backbone.onnx"]
    ids = [9, 4, 71, 23, 40, 12]
    assert_same_greedy(genai_greedy(folder, ids, 12), engine_greedy(folder, "attached", ids, 12))


def test_the_pipeline_is_refused_when_the_caches_differ_in_shape(tmp_path):
    from models import tiny_base, write_checkpoint

    base = tiny_base(tmp_path / "base", "llama")
    ckpt = write_checkpoint(tmp_path / "ckpt", base, shadow_num_key_value_heads=1, shadow_head_dim=12)
    bundle = shadow_edge.export(ckpt, tmp_path / "out", base=base, validate=False).output
    assert "one cache geometry" in write_genai(bundle, read_manifest(bundle), "attached")["skipped"]
    assert write_genai(bundle, read_manifest(bundle))["mode"] == "detached"  # the detached shadow still works


@pytest.mark.slow
def test_smollm2_int4_genai_and_ort_match_our_runtime(smollm2_int4):
    manifest = read_manifest(smollm2_int4)
    assert manifest.mobile["genai"]["mode"] == "detached"
    ids = shadow_edge.load(smollm2_int4, mode="detached").encode("The lighthouse on the northern cape")
    ours = shadow_edge.load(smollm2_int4, mode="detached").generate(ids, max_new_tokens=16, eos_token_ids=[])
    assert_same_greedy(genai_greedy(smollm2_int4, ids, 16), ours.token_ids)
    spec, cache = manifest.graphs["shadow_lm"], manifest.model.shadow
    runners = [
        GraphRunner(smollm2_int4 / f, spec, cache) for f in (spec.file, manifest.mobile["ort"]["graphs"]["shadow_lm"])
    ]
    x, mask, pos = np.asarray([ids]), np.ones((1, len(ids)), dtype=np.int64), np.arange(len(ids))[None]
    want, got = (r.step(r.new_cache(1), x, mask, pos, logits_to_keep=0) for r in runners)
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.slow
def test_smollm2_attached_int4_runs_as_a_genai_pipeline(smollm2_export, tmp_path):
    out = quantize_bundle(smollm2_export.bundle, tmp_path / "b", "int4", modes=["attached"], check=False)
    manifest = out.manifest
    assert manifest.mobile == {} and manifest.modes == ["attached"]
    package_mobile(out.output, manifest)  # into the written bundle: the genai files are extra
    ids = [504, 33059, 335, 260, 5761, 1020, 432]
    assert_same_greedy(genai_greedy(out.output, ids, 16), engine_greedy(out.output, "attached", ids, 16))
