"""Trace the graph modules to ONNX and store their weights once, in one shared external-data file.

torch.onnx's TorchScript exporter is used (about 8x faster than the dynamo exporter on SmolLM2
and exact to ~1e-5). Each graph is exported in memory; then every initializer is keyed by its
bytes, and each distinct tensor is written once to `weights.data` (4 KiB aligned, so the runtime
can memory-map it and two sessions share the pages of tensors they both read, such as the
embedding table). A tied lm_head becomes Gemm(transB=1) on the embedding table itself.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from ..bundle import (
    ATTENTION_MASK,
    BACKBONE_GRAPH,
    BASE_LM_GRAPH,
    GRAPH_KINDS,
    INPUT_IDS,
    LOGITS_TO_KEEP,
    POSITION_IDS,
    SHADOW_GRAPH,
    SHADOW_HEAD_GRAPH,
    SHADOW_LM_GRAPH,
    SHADOW_STATES,
    CacheSpec,
    TensorSpec,
)
from ..bundle_tools.weights import WEIGHTS_FILE, SharedWeights, drop_unused_initializers, weight_bytes_per_token
from ..errors import ExportError
from .graphs import (
    GROUPED_ATTENTION,
    BackboneGraph,
    ShadowHeadGraph,
    attention_implementation,
    base_lm_graph,
    shadow_graph,
    shadow_lm_graph,
)
from .onnx_build import build_graph, supported

DEFAULT_OPSET = 17

_ONNX_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.INT64: "int64", TensorProto.FLOAT16: "float16"}


def cache_spec(config) -> CacheSpec:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return CacheSpec(
        num_layers=int(config.num_hidden_layers),
        num_kv_heads=int(config.num_key_value_heads),
        head_dim=int(head_dim),
        hidden_size=int(config.hidden_size),
    )


# symbolic axes of each input and first output (the KV tensors' are below)
_AXES: dict[str, dict[int, str]] = {
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "total_sequence"},
    "position_ids": {0: "batch", 1: "sequence"},
    SHADOW_STATES: {0: "batch", 1: "sequence"},
}


def _io_names(kind: str, cache: CacheSpec) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    """The graph kind's input and output names (bundle.GRAPH_KINDS) and their dynamic axes."""
    spec = GRAPH_KINDS[kind]
    inputs, outputs = spec.input_names(cache), spec.output_names(cache)
    axes = {name: _AXES[name] for name in spec.inputs if name in _AXES}
    if not spec.cached:  # the shadow head: logits of every position given
        return inputs, outputs, axes | {spec.output: {0: "batch", 1: "sequence"}}
    axes.update({n: {0: "batch", 2: "past_sequence"} for n in cache.past_names()})
    axes[spec.output] = {0: "batch", 1: "sequence" if kind == SHADOW_GRAPH else "kept_sequence"}
    axes.update({n: {0: "batch", 2: "total_sequence"} for n in cache.present_names()})
    return inputs, outputs, axes


def _dummy_inputs(kind: str, cache: CacheSpec, hidden_size: int) -> tuple[torch.Tensor, ...]:
    """Example inputs for tracing, in the graph kind's input order (bundle.GRAPH_KINDS)."""
    batch, seq, past = 2, 3, 4  # distinct sizes so that tracing cannot confuse dimensions
    make = {
        INPUT_IDS: lambda: torch.randint(3, 10, (batch, seq)),
        ATTENTION_MASK: lambda: torch.ones(batch, past + seq, dtype=torch.long),
        POSITION_IDS: lambda: torch.arange(past, past + seq).repeat(batch, 1),
        SHADOW_STATES: lambda: torch.randn(batch, seq, hidden_size),
        LOGITS_TO_KEEP: lambda: torch.tensor(1, dtype=torch.long),
    }
    spec = GRAPH_KINDS[kind]
    args = [make[name]() for name in spec.inputs]
    if spec.cached:
        kv = torch.zeros(batch, cache.num_kv_heads, past, cache.head_dim)
        args += [kv.clone() for _ in range(2 * cache.num_layers)]
    return tuple(args)


def trace_graph(module: torch.nn.Module, kind: str, cache: CacheSpec, hidden_size: int, opset: int) -> onnx.ModelProto:
    inputs, outputs, axes = _io_names(kind, cache)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            _dummy_inputs(kind, cache, hidden_size),
            buffer,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def tensor_specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        specs.append(
            TensorSpec(name=value.name, dtype=_ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type)), shape=shape)
        )
    return specs


def _as_gemm_transposed(node: onnx.NodeProto, table: str) -> None:
    """MatMul(x, W^T) -> Gemm(x, W, transB=1): reads the [out, in] table W itself."""
    node.op_type = "Gemm"
    node.input[1] = table
    node.attribute.append(onnx.helper.make_attribute("transB", 1))


def _matmul_weights(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, onnx.TensorProto]]:
    """(node, weight) of every MatMul whose second input is a stored 2-D tensor."""
    by_name = {t.name: t for t in graph.initializer}
    pairs = [(n, by_name.get(n.input[1])) for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2]
    return [(node, weight) for node, weight in pairs if weight is not None and len(weight.dims) == 2]


def tie_transposed_heads(model: onnx.ModelProto) -> int:
    """Rewrite MatMul(x, W^T) as Gemm(x, W, transB=1) where W^T is a stored transpose of an
    embedding table (the exporter folds a tied lm_head into a transposed copy of the table).
    Only MatMul weights shaped like a transposed Gather table are compared, each table read once.
    Returns how many heads were tied."""
    graph = model.graph
    gathered = {node.input[0] for node in graph.node if node.op_type == "Gather"}
    tables = {(tuple(t.dims), t.data_type): t for t in graph.initializer if t.name in gathered and len(t.dims) == 2}
    arrays: dict[str, np.ndarray] = {}
    tied = 0
    for node, weight in _matmul_weights(graph):
        table = tables.get((tuple(weight.dims)[::-1], weight.data_type))
        if table is None:
            continue
        if table.name not in arrays:
            arrays[table.name] = numpy_helper.to_array(table)
        if np.array_equal(numpy_helper.to_array(weight), arrays[table.name].T):
            _as_gemm_transposed(node, table.name)
            tied += 1
    drop_unused_initializers(graph)
    return tied


def untranspose_head(model: onnx.ModelProto) -> None:
    """A tied shadow_head graph has no Gather to tie to: store its [in, out] MatMul weight back in
    the [vocab, hidden] layout of the embedding table, so the shared weights file keeps one copy."""
    graph = model.graph
    for node, weight in _matmul_weights(graph):
        table = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), weight.name + ".table")
        graph.initializer.append(table)
        _as_gemm_transposed(node, table.name)
    drop_unused_initializers(graph)


GRAPH_MODULES = {
    SHADOW_GRAPH: shadow_graph,
    SHADOW_LM_GRAPH: shadow_lm_graph,
    BACKBONE_GRAPH: BackboneGraph,
    BASE_LM_GRAPH: base_lm_graph,
    SHADOW_HEAD_GRAPH: ShadowHeadGraph,
}


BUILDERS = ("fused", "traced")


def _traced(loaded, kind: str, cache: CacheSpec, hidden: int, opset: int) -> onnx.ModelProto:
    configs = [loaded.base_config, loaded.shadow.decoder.config]
    try:
        module = GRAPH_MODULES[kind](loaded)
        with attention_implementation(configs, GROUPED_ATTENTION):
            model = trace_graph(module, kind, cache, hidden, opset)
    except (RuntimeError, AssertionError, AttributeError, TypeError, ValueError, IndexError) as exc:
        # a decoder off the architecture table whose modules do not trace (SHADOW_EDGE_DEBUG=1: the traceback)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        model_type = loaded.base_config.model_type
        raise ExportError(f"cannot trace the {kind} graph of {model_type!r}: {first}") from exc
    if kind != SHADOW_HEAD_GRAPH:
        tie_transposed_heads(model)
    elif module.tied:  # else its MatMul weight is stored like shadow_lm's, and shared with it
        untranspose_head(model)
    return model


def graph_builder(loaded, kind: str, builder: str) -> str:
    """ "fused" when asked for and onnx_build can state the graph's decoder, else "traced: why"."""
    if builder != "fused" or kind == SHADOW_HEAD_GRAPH:
        return builder
    decoder = loaded.base_decoder if kind in (BACKBONE_GRAPH, BASE_LM_GRAPH) else loaded.shadow.decoder
    reason = supported(decoder)
    return f"traced: {reason}" if reason else "fused"


def export_graphs(
    loaded, folder: Path, names: tuple[str, ...], opset: int = DEFAULT_OPSET, on_graph=None, builder: str = "fused"
) -> tuple[dict, SharedWeights]:
    """Write {name}.onnx for each named graph, and weights.data, into folder.

    builder: "fused" writes the graphs from the weights with onnxruntime's fused ops (onnx_build.py;
    falls back to tracing for decoders it cannot state), "traced" traces the torch modules.
    Returns ({graph: (file, inputs, outputs, weight bytes per token, builder used)}, the shared
    weights record)."""
    base_cache = cache_spec(loaded.base_config)
    shadow_cache = cache_spec(loaded.shadow.decoder.config)
    hidden = int(loaded.base_config.hidden_size)
    weights = SharedWeights(folder / WEIGHTS_FILE)
    graphs = {}
    for kind in names:
        cache = base_cache if kind in (BACKBONE_GRAPH, BASE_LM_GRAPH) else shadow_cache
        used = graph_builder(loaded, kind, builder)
        if used == "fused":
            model = build_graph(loaded, kind, cache)
        else:
            model = _traced(loaded, kind, cache, hidden, opset)
        weights.externalize(kind, model)
        file = f"{kind}.onnx"
        onnx.save_model(model, folder / file)
        graphs[kind] = (
            file,
            tensor_specs(list(model.graph.input)),
            tensor_specs(list(model.graph.output)),
            weight_bytes_per_token(model),
            used,
        )
        if on_graph is not None:
            on_graph(kind)
    return graphs, weights
