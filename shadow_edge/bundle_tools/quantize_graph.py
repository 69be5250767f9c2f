"""Weight quantization of one ONNX graph: int8 or int4 weight-only (MatMulNBits), or int8 dynamic.

    int8          MatMulNBits, 8 bits: blocks of block_size along K, symmetric by default,
                  accuracy_level 0 by default (float32 compute on dequantized weights)
    int4          MatMulNBits, 4 bits: the same blocks, accuracy_level 4 by default (int8
                  activations in the kernel: the fast CPU path)
    int8-dynamic  onnxruntime's quantize_dynamic: one int8 scale per weight tensor, activations
                  quantized per call (DynamicQuantizeLinear + MatMulInteger)
Weights that already lie on a block grid (a GGUF base, dequantized) are stored on that grid, exactly
(quantize_grid.py; grid=False turns it off); the others are rounded to nearest by onnxruntime.
Measured on the SmolLM2-135M demo bundle (trained robot adapter; base: dequantized Q4_1, Q8_0 table;
fused graphs; attached; 499 tokens; top-1 and greedy 8-token agreement with float32; decode speed
after a 32-token prompt relative to float32 in the same run, 2 threads;
benchmarks/results/quantize_variants.json):
    int4 grid-exact, int8 head     97.2%   88%   2.15x  (the default; detached 3.8x)
    int4 grid-exact, fp32 head     97.0%   75%   1.70x  (detached 1.1x: the 113 MB head)
    int4 grid-exact, level 0       99.8%  100%   0.19x  (exact, but 8-bit level 0 is a slow path)
    int4 rounded (grid=False)      72.1%    0%   2.07x  (a second grid over the Q4_1 one)
    int8 grid-exact, level 0       99.8%  100%   0.15x  (the default: exact, slow)
    int8 grid-exact, level 4       98.0%   88%   1.50x  (96.8% on the untrained adapter)
    int8-dynamic                   55.1%    0%   (detached 86.6%; fused graphs, 2026-12-01; 52.9% before the grid)
Level 4's int8 activations are what costs the grid-exact int4 its last 2-3%; at 8 bits onnxruntime
1.32 is fast only at level 4, whose top-1 hovers around the 97% floor, so int8 stays exact by
default. Hence int8 is block-wise MatMulNBits and quantize_dynamic stays available by name only.

The lm_head / shadow head (every MatMul or Gemm whose output reaches `logits`) stays float32
unless settings.quantize_head says otherwise (quantize.py's "auto": int8 under an int4 body, where
SmolLM2's Q8_0 table makes it grid-exact): its errors land directly on the next-token distribution.
A head tied to the embedding table (Gemm transB=1 on the Gather's table) is first untied into its own
transposed copy; once nothing reads the float32 table but Gathers, a table on a symmetric grid is
read by GatherBlockQuantized on that grid (the head's own bytes: the float32 table leaves the
bundle), others stay float32 Gathers. Works on in-memory models; knows nothing about bundles or
files.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

from .quantize_grid import GridReport, embeddings_on_grid, quantize_on_grid

PRECISIONS = ("int8", "int4", "int8-dynamic")
LOGITS = "logits"
# ops between the head's MatMul and the `logits` output that only move data around
_PASS_THROUGH = {"Reshape", "Slice", "Squeeze", "Unsqueeze", "Identity", "Cast", "Transpose", "Gather", "Flatten"}
_QUANTIZED_OPS = {"int8": "MatMulNBits", "int4": "MatMulNBits", "int8-dynamic": "MatMulInteger"}
_BITS = {"int8": 8, "int4": 4}
_ACCURACY_LEVEL = {"int8": 0, "int4": 4}  # measured: see the module docstring
GRID_SHARE = 0.5  # a MatMul is stored on its grid when this share of its blocks lie on one


@dataclass
class QuantizeSettings:
    to: str
    block_size: int = 32
    symmetric: bool = True
    quantize_head: bool | str = False  # True: at `to`; "int8" / "int4": at that precision
    accuracy: int | None = None  # MatMulNBits accuracy_level; None: the precision's default
    grid: bool = True  # weights on a block grid (GGUF origin) keep it exactly: quantize_grid.py
    off_grid: str | None = None  # precision of the weights on no grid (None: `to`), e.g. a trained adapter

    @property
    def accuracy_level(self) -> int:
        return _ACCURACY_LEVEL.get(self.to, 0) if self.accuracy is None else self.accuracy

    @property
    def head(self) -> str | None:
        """The heads' precision, None for float32."""
        if self.quantize_head in (False, None, "none", "float32"):
            return None
        return self.to if self.quantize_head is True else str(self.quantize_head)

    def record(self) -> dict[str, Any]:
        if self.to == "int8-dynamic":
            return {"method": "onnxruntime quantize_dynamic", "weight_type": "int8", "per_channel": False}
        return {
            "method": "onnxruntime MatMulNBits" + (", grid-exact where the weights lie on a grid" if self.grid else ""),
            "bits": _BITS[self.to],
            "block_size": self.block_size,
            "symmetric": self.symmetric,
            "accuracy_level": self.accuracy_level,
            "head": self.head or "float32",
            **({"off_grid": self.off_grid} if self.off_grid else {}),
        }


@dataclass
class GraphQuantization:
    """What happened to one graph: its precision and the manifest record."""

    precision: str
    quantized: int  # MatMul nodes now quantized
    excluded: list[dict[str, str]] = field(default_factory=list)
    grid: GridReport = field(default_factory=GridReport)
    embeddings: list[dict[str, Any]] = field(default_factory=list)  # tables now read on their grid

    def record(self, settings: QuantizeSettings) -> dict[str, Any]:
        return {
            **settings.record(),
            "quantized_matmuls": self.quantized,
            **(self.grid.record() if settings.grid and settings.to in _BITS else {}),
            **({"embedding_on_grid": self.embeddings} if self.embeddings else {}),
            "excluded": self.excluded,
            "kept_float32": ("" if self.embeddings else "embedding Gather, ")
            + "attention and other non-constant MatMuls, norms"
            + ("" if settings.head else ", lm_head"),
        }


def head_nodes(graph: onnx.GraphProto, ops: tuple[str, ...] = ("MatMul", "Gemm")) -> list[onnx.NodeProto]:
    """The nodes of type `ops` whose output reaches `logits` through data-movement ops only."""
    producers = {out: node for node in graph.node for out in node.output}
    todo = [out.name for out in graph.output if out.name == LOGITS]
    heads: list[onnx.NodeProto] = []
    while todo:
        node = producers.get(todo.pop())
        if node is None:
            continue
        if node.op_type in ops:
            heads.append(node)
        elif node.op_type in _PASS_THROUGH:
            todo.append(node.input[0])
    return heads


def untie_head(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """Gemm(x, E, transB=1) on a stored table E -> MatMul(x, E^T) with E^T a new initializer, so that
    the head can be quantized while Gather keeps E. False when node is not such a Gemm."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type != "Gemm" or len(node.input) != 2 or attrs.get("transB") != 1 or attrs.get("transA", 0):
        return False
    if attrs.get("alpha", 1.0) != 1.0:
        return False
    table = next((t for t in graph.initializer if t.name == node.input[1]), None)
    if table is None:
        return False
    transposed = numpy_helper.from_array(numpy_helper.to_array(table).T.copy(), f"{table.name}.transposed")
    graph.initializer.append(transposed)
    node.op_type = "MatMul"
    node.input[1] = transposed.name
    del node.attribute[:]
    return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizers log every node at INFO (the int4 one through its own logger)."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _dynamic(model: onnx.ModelProto, exclude: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic rewrites every Gemm(transB=1) with beta == 1 into a MatMul on a new transposed
    # copy of its weight (a second embedding table for a tied head), even for excluded nodes. An
    # excluded head has no C input, so beta is unused: 0 makes the quantizer leave it alone.
    hidden = [n for n in model.graph.node if n.name in exclude and n.op_type == "Gemm"]
    for node in hidden:
        node.attribute.append(onnx.helper.make_attribute("beta", 0.0))
    with tempfile.TemporaryDirectory(prefix="shadow-edge-quantize-") as scratch:
        # a fresh path each time: re-saving external data appends to an existing file
        out = Path(scratch) / "model.onnx"
        quantize_dynamic(
            model,
            out,
            op_types_to_quantize=["MatMul"],  # not Gather: the embedding stays fp32
            nodes_to_exclude=exclude,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
            extra_options={
                "MatMulConstBOnly": True,  # weights only, not attention's x @ k
                # onnx's shape inference cannot type the outputs of contrib ops (GroupQueryAttention,
                # SkipSimplifiedLayerNormalization...) that feed a fused graph's MatMuls: our graphs
                # compute in float32, so an untyped activation is float32
                "DefaultTensorType": onnx.TensorProto.FLOAT,
            },
        )
        quantized = onnx.load(out)
    for node in quantized.graph.node:
        if node.name in exclude and node.op_type == "Gemm":
            kept = [a for a in node.attribute if a.name != "beta"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return quantized


def _nbits(model: onnx.ModelProto, settings: QuantizeSettings, bits: int, names: set[str]) -> onnx.ModelProto:
    """onnxruntime's round-to-nearest MatMulNBits of the MatMuls named, and of no other."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=settings.block_size,
        is_symmetric=settings.symmetric,
        accuracy_level=settings.accuracy_level,
        nodes_to_exclude=sorted({n.name for n in model.graph.node if n.op_type == "MatMul"} - names),
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    return quantizer.model.model


def _weight_only(
    model: onnx.ModelProto, heads: list[str], settings: QuantizeSettings
) -> tuple[onnx.ModelProto, GridReport]:
    """MatMulNBits: weights on a grid keep it (quantize_grid.py), the others are rounded by
    onnxruntime's quantizer; the heads (already untied) at settings.head, when set."""
    graph = model.graph
    bits = {n.name: _BITS[settings.to] for n in graph.node if n.op_type == "MatMul" and n.name not in heads}
    if settings.head:
        bits.update(dict.fromkeys(heads, _BITS[settings.head]))
    report = GridReport()
    if settings.grid:
        report = quantize_on_grid(graph, bits, settings.block_size, settings.accuracy_level, GRID_SHARE)
        if report.matmuls and not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    left = {n.name for n in graph.node if n.op_type == "MatMul"} & set(bits)  # not the grid's corrections
    if settings.off_grid == "float32":  # kept exact
        left = {name for name in left if name in heads}
    elif settings.off_grid:
        bits.update({name: _BITS[settings.off_grid] for name in left if name not in heads})
    for nbits in sorted(set(bits.values())):  # the head may have other bits than the body
        names = {name for name in left if bits[name] == nbits}
        if names:
            model = _nbits(model, settings, nbits, names)
    return model, report


def quantize_model(
    model: onnx.ModelProto, settings: QuantizeSettings, *, in_place: bool = False
) -> tuple[onnx.ModelProto, GraphQuantization]:
    """A quantized copy of model (weights loaded in memory) and what was done to it. in_place: rewrite
    `model` itself (a caller that drops it saves two copies of the weights: 2 GB for Gemma 3)."""
    if not in_place:
        model = onnx.ModelProto.FromString(model.SerializeToString())
    excluded, heads = [], []
    for head in head_nodes(model.graph):
        heads.append(head.name)
        if settings.head:
            untie_head(model.graph, head)
        else:
            excluded.append({"node": head.name, "op": head.op_type, "reason": "lm_head kept float32"})
    names = [e["node"] for e in excluded]
    grid = GridReport()
    with _quiet():
        if settings.to == "int8-dynamic":
            model = _dynamic(model, names)
        else:
            model, grid = _weight_only(model, heads, settings)
    # a table on its own grid that only Gathers still read (the head, if tied, is quantized now)
    embeddings = embeddings_on_grid(model.graph, settings.block_size) if settings.grid else []
    ops = Counter(node.op_type for node in model.graph.node)
    count = ops[_QUANTIZED_OPS[settings.to]]
    precision = settings.to if count or embeddings else "float32"  # a lone float32 head: none
    return model, GraphQuantization(precision, count, excluded, grid, embeddings)
