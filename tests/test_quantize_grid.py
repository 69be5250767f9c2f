"""Grid-exact quantization: weights already on a block grid (a GGUF base: Q4_1, Q8_0) are stored on
that grid, so int4/int8 lose nothing; weights on no grid are rounded as before."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import tiny_base, write_checkpoint
from safetensors.numpy import load_file, save_file

from shadow_edge.bundle import read_manifest
from shadow_edge.bundle_tools.quantize import quantize_bundle
from shadow_edge.bundle_tools.quantize_graph import head_nodes
from shadow_edge.bundle_tools.quantize_grid import fit_blocks

BLOCK = 16  # the tiny models' sizes (32, 48) are multiples of 16


def q4_1(w: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """llama.cpp's Q4_1 round trip of w [out, in], blocks along in: d*q + m, q in 0..15, d and m fp16."""
    b = w.reshape(w.shape[0], -1, block)
    lo, hi = b.min(-1, keepdims=True), b.max(-1, keepdims=True)
    d = ((hi - lo) / 15).astype(np.float16).astype(np.float32)
    q = np.clip(np.round((b - lo) / np.where(d > 0, d, 1)), 0, 15)
    return (d * q + lo.astype(np.float16).astype(np.float32)).reshape(w.shape)


def q8_0(w: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """Q8_0 round trip: d*q, q in -127..127, d = amax/127 in fp16."""
    b = w.reshape(w.shape[0], -1, block)
    d = (np.abs(b).max(-1, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    return (d * np.round(b / np.where(d > 0, d, 1))).reshape(w.shape)


@pytest.mark.parametrize("bits", [4, 8])
def test_q4_1_blocks_are_reproduced_exactly(bits):
    w = q4_1(np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32)).T  # [K, N]
    fit = fit_blocks(w, bits, BLOCK)
    assert fit.exact.all() and fit.exact_share == 1.0
    np.testing.assert_allclose(fit.dequantize(), w, rtol=0, atol=1e-6 * np.abs(w).max())
    assert fit.packed().shape == (40, 64 // BLOCK, BLOCK * bits // 8)


def test_a_wide_weight_is_fitted_in_column_chunks_with_the_same_result(monkeypatch):
    """fit_blocks bounds its float64 search by fitting FIT_COLUMNS output columns at a time (a 262k-row
    head peaked at ~6 GB in one piece): the chunked fit must equal the whole one, bit for bit."""
    from shadow_edge.bundle_tools import quantize_grid

    rng = np.random.default_rng(3)
    w = np.concatenate([q4_1(rng.normal(size=(37, 64)).astype(np.float32)), rng.normal(size=(30, 64))]).T
    whole = fit_blocks(w.astype(np.float32), 4, BLOCK)
    monkeypatch.setattr(quantize_grid, "FIT_COLUMNS", 8)  # 67 columns: 8 full chunks and a short one
    chunked = fit_blocks(w.astype(np.float32), 4, BLOCK)
    assert 0 < whole.exact_share < 1  # both kinds of block, so both paths of the search are compared
    for field in ("q", "scales", "offsets", "exact"):
        np.testing.assert_array_equal(getattr(chunked, field), getattr(whole, field))


def test_q8_0_at_8_bits_needs_no_offsets_and_random_weights_lie_on_no_grid():
    rng = np.random.default_rng(1)
    w = q8_0(rng.normal(size=(24, 32)).astype(np.float32)).T
    fit = fit_blocks(w, 8, BLOCK)
    assert fit.exact.all() and not fit.offsets.any()  # symmetric: MatMulNBits' implicit zero point does it
    np.testing.assert_allclose(fit.dequantize(), w, rtol=0, atol=1e-6 * np.abs(w).max())
    noise = rng.normal(size=(32, 24)).astype(np.float32)
    fit = fit_blocks(noise, 4, BLOCK)
    assert fit.exact_share == 0.0
    err = np.abs(fit.dequantize() - noise).T.reshape(fit.q.shape)
    assert (err <= fit.scales[..., None] * 0.5001).all()  # min-max rounding: off by at most half a step


def test_a_constant_block_is_its_offset():
    w = np.full((BLOCK, 3), 0.25, dtype=np.float32)
    fit = fit_blocks(w, 4, BLOCK)
    assert fit.exact.all()
    np.testing.assert_array_equal(fit.dequantize(), w)


# ---- a tiny GGUF-like base: layers on a Q4_1 grid, the embedding on Q8_0 ----------------------


def _gguf_like(root: Path, layer_grid) -> Path:
    """A tiny Llama whose (tied) table is a Q8_0 round trip and each layer weight `layer_grid(name)`'s,
    exported with its base-only graph."""
    import shadow_edge

    base = tiny_base(root / "ckpt" / "base", "llama", seed=5)
    weights = load_file(base / "model.safetensors")
    for name, w in weights.items():
        if name.endswith("embed_tokens.weight"):
            weights[name] = q8_0(w)
        elif w.ndim == 2:
            weights[name] = layer_grid(name)(w)
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    ckpt = write_checkpoint(root / "ckpt", base)
    return shadow_edge.export(ckpt, root / "bundle", with_base=True).output


@pytest.fixture(scope="module")
def gguf_like(tmp_path_factory) -> Path:
    """Layers on a Q4_1 grid, the embedding on Q8_0."""
    return _gguf_like(tmp_path_factory.mktemp("gguf-like"), lambda name: q4_1)


@pytest.fixture(scope="module")
def gguf_mixed(tmp_path_factory) -> Path:
    """A mixed GGUF like Gemma 3 270M's Q4_K_M: attention's q, k, v (the first MatMul the probe reads)
    and gate/up in Q8_0, off any 4-bit grid; o and down in Q4_1."""
    mixed = lambda name: q4_1 if name.endswith(("o_proj.weight", "down_proj.weight")) else q8_0  # noqa: E731
    return _gguf_like(tmp_path_factory.mktemp("gguf-mixed"), mixed)


def test_grid_exact_int4_loses_nothing_where_rounding_loses_a_lot(gguf_like, tmp_path):
    def base_figures(**options) -> tuple[dict, dict]:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        manifest = quantize_bundle(gguf_like, out, "int4", block_size=BLOCK, modes=["base"], **options).manifest
        return manifest.fidelity["modes"]["base"], manifest.graphs["base_lm"].quantization

    exact, record = base_figures(accuracy_level=0)  # float compute: only the weights can differ
    assert exact["top1_agreement"] == 1.0 and exact["mean_kl"] < 1e-9
    assert record["grid_exact_blocks"] == record["grid_blocks"] > 0 and record["off_grid_matmuls"] == 0
    # q|k|v, o, gate|up, down of 3 layers, and the int8 head (the default under int4) on the Q8_0 table
    assert record["grid_matmuls"] == record["quantized_matmuls"] == 3 * 4 + 1
    rounded, record = base_figures(accuracy_level=0, grid=False)
    assert rounded["mean_kl"] > 1e4 * max(exact["mean_kl"], 1e-12) and "grid_matmuls" not in record
    fast, _ = base_figures()  # accuracy level 4: int8 activations cost a little, nothing like rounding
    assert fast["mean_kl"] < rounded["mean_kl"] / 10


def test_an_int8_head_on_a_q8_0_table_needs_no_correction(gguf_like, tmp_path):
    manifest = quantize_bundle(
        gguf_like, tmp_path / "q", "int4", block_size=BLOCK, quantize_head="int8", accuracy_level=0, modes=["base"]
    ).manifest
    graph = onnx.load(tmp_path / "q" / "base_lm.onnx", load_external_data=False).graph
    (head,) = head_nodes(graph, ops=("MatMulNBits",))  # straight to logits: no offset Add
    assert {a.name: a.i for a in head.attribute}["bits"] == 8
    assert manifest.graphs["base_lm"].quantization["head"] == "int8"
    assert manifest.fidelity["modes"]["base"]["mean_kl"] < 1e-9
    ops = Counter(n.op_type for n in graph.node)
    assert ops["Add"] > 0  # the layers' Q4_1 offsets are corrections beside them
    # the table itself is read on the same grid: no float32 copy left, its bytes stored once
    tables = {t.name for t in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "Gather" and n.input[0] in tables]
    assert ops["GatherBlockQuantized"] == 1
    assert manifest.graphs["base_lm"].quantization["embedding_on_grid"] == [{"table": "embed_tokens.weight", "bits": 8}]
    place = {t.name: [e.value for e in t.external_data] for t in graph.initializer}
    rows = next(n for n in graph.node if n.op_type == "Reshape" and n.output[0].endswith(".rows_q"))
    assert place[head.input[1]] == place[rows.input[0]] != []  # the head's int8 bytes, stored once
    assert not [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and list(t.dims) == [96, 32]]


def test_beside_a_grid_base_the_off_grid_adapter_is_rounded_at_8_bits(gguf_like, tmp_path):
    def bits_of(folder: Path, graph: str) -> Counter:
        nodes = onnx.load(folder / f"{graph}.onnx", load_external_data=False).graph.node
        return Counter(next(a.i for a in n.attribute if a.name == "bits") for n in nodes if n.op_type == "MatMulNBits")

    manifest = quantize_bundle(gguf_like, tmp_path / "auto", "int4", block_size=BLOCK, check=False).manifest
    backbone = manifest.graphs["backbone"].quantization
    # injection and update MLPs (random) lie on no grid; the base's projections do
    # (and the head, at int8 by default under int4, on the table's Q8_0 grid)
    assert backbone["off_grid"] == "int8" and backbone["grid_matmuls"] == 3 * 4 + 1 and backbone["off_grid_matmuls"] > 0
    assert bits_of(tmp_path / "auto", "backbone") == {4: 3 * 4, 8: backbone["off_grid_matmuls"] + 1}
    assert set(bits_of(tmp_path / "auto", "shadow")) == {8}  # the random shadow layers: all off the grid
    quantize_bundle(
        gguf_like, tmp_path / "int4", "int4", block_size=BLOCK, off_grid="int4", quantize_head=True, check=False
    )
    assert set(bits_of(tmp_path / "int4", "backbone")) == {4}


def test_beside_a_mixed_gguf_base_its_8_bit_tensors_are_rounded_at_8_bits_not_4(gguf_mixed, tmp_path):
    """auto off-grid looks for any grid among the base's first MatMuls, not all: Gemma 3's Q4_K_M has
    Q5_0 q|k|v first, and rounding those to 4 bits cost 26 points of top-1 (README, Gemma 3 270M)."""
    manifest = quantize_bundle(gguf_mixed, tmp_path / "auto", "int4", block_size=BLOCK, modes=["base"]).manifest
    record = manifest.graphs["base_lm"].quantization
    assert record["off_grid"] == "int8"
    assert record["grid_matmuls"] == 3 * 2 + 1 and record["off_grid_matmuls"] == 3 * 2  # o, down; the head
    auto = manifest.fidelity["modes"]["base"]
    rounded = quantize_bundle(gguf_mixed, tmp_path / "int4", "int4", block_size=BLOCK, modes=["base"], off_grid="int4")
    assert "off_grid" in rounded.manifest.graphs["base_lm"].quantization
    # the Q8_0 layers at 8 bits are near exact; at 4 bits they are re-rounded onto a second grid
    assert auto["mean_kl"] < rounded.manifest.fidelity["modes"]["base"]["mean_kl"] / 5


def test_an_ordinary_model_is_rounded_at_the_precision_asked(tiny_exports, tmp_path):
    manifest = quantize_bundle(tiny_exports["llama"].bundle, tmp_path / "q", "int4", check=False).manifest
    record = manifest.graphs["backbone"].quantization
    assert "off_grid" not in record and record["grid_matmuls"] == 0 and record["off_grid_matmuls"] > 0


def test_cli_quantize_head_and_no_grid(gguf_like, tmp_path):
    from test_export import run_cli

    args = ("--to", "int4", "--block-size", str(BLOCK), "--only", "base", "--no-eval", "--json")
    code, output = run_cli("quantize", gguf_like, tmp_path / "a", *args, "--quantize-head", "int8", "--no-grid")
    assert code == 0, output
    record = read_manifest(tmp_path / "a").graphs["base_lm"].quantization
    assert record["head"] == "int8" and "grid_matmuls" not in record and "grid-exact" not in record["method"]


@pytest.mark.slow
def test_smollm2_int8_head_is_the_q8_0_table_exactly(smollm2_export, tmp_path):
    # detached only: one graph to quantize and evaluate, the head's cost stands alone
    manifest = quantize_bundle(
        smollm2_export.bundle, tmp_path / "q", "int4", quantize_head="int8", modes=["detached"], threads=2
    ).manifest
    graph = onnx.load(tmp_path / "q" / "shadow_lm.onnx", load_external_data=False).graph
    (head,) = head_nodes(graph, ops=("MatMulNBits",))  # no offset correction: Q8_0 is symmetric
    assert {a.name: a.i for a in head.attribute}["bits"] == 8
    record = manifest.graphs["shadow_lm"].quantization
    assert record["grid_exact_blocks"] == record["grid_blocks"]  # the head (Q8_0)
    assert record["off_grid"] == "int8"  # the trained shadow layer left the Q4_1 grid
    detached = manifest.fidelity["modes"]["detached"]
    assert detached["top1_agreement"] >= 0.95 and detached["mean_kl"] < 0.005
