"""Write the bundle graphs directly from the reference model's weights, with onnxruntime's fused ops.

Tracing the HF modules (onnx_export.trace_graph) yields ~110 nodes per layer of shape arithmetic,
mask building and unfused norms; at decode each node costs a few microseconds of dispatch, which
on a 135M model is as much as all the matrix products. This builder states each layer the way
onnxruntime-genai's model builder does:
    SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization (the residual add fused in),
    one packed q|k|v MatMul and one packed gate|up MatMul (one MatMulNBits each once quantized),
    com.microsoft RotaryEmbedding on explicit position_ids,
    attention over the whole KV cache with one additive mask built once per run (left padding,
    causal order and sliding windows), query heads grouped on their KV head so the cache is never
    repeated per query head,
and, in the backbone, injection and update as a few MatMuls per layer. Inputs, outputs and their
meaning are those of the traced graphs (graphs.py); export validates them against the reference.
The builders read only the loaders' description (loaders/description.py).
Supported: the decoders of checkpoint.SUPPORTED_MODEL_TYPES with rotary tables whose two halves
agree (the non-interleaved rotate_half layout) and SiLU MLPs; `supported()` says why not otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..bundle import (
    BACKBONE_GRAPH,
    BASE_LM_GRAPH,
    LOGITS_TO_KEEP,
    SHADOW_GRAPH,
    SHADOW_HEAD_GRAPH,
    SHADOW_LM_GRAPH,
    SHADOW_STATES,
    CacheSpec,
)
from .graphs import sliding_window, tied_to
from .loaders.description import ShadowCheckpoint

MS = "com.microsoft"
BUILDER_OPSET = 17
_MASKED = float(np.finfo(np.float32).min)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().numpy()


def _linear_weight(linear: torch.nn.Module) -> np.ndarray:
    """nn.Linear's [out, in] weight as the [in, out] right operand of MatMul."""
    return np.ascontiguousarray(_array(linear.weight).T)


class GraphBuilder:
    """Accumulates nodes and initializers with unique names; emits an onnx.ModelProto."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0
        self._constants: dict[tuple, str] = {}

    def input(self, name: str, dtype: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def output(self, name: str, dtype: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def ints(self, *values: int) -> str:
        """A constant int64 vector (reused)."""
        key = ("i64", values)
        if key not in self._constants:
            self._constants[key] = self.weight(f"const.i64.{len(self._constants)}", np.array(values, np.int64))
        return self._constants[key]

    def scalar(self, value: float | int, dtype: Any) -> str:
        key = (np.dtype(dtype).name, value)
        if key not in self._constants:
            self._constants[key] = self.weight(f"const.{key[0]}.{len(self._constants)}", np.array(value, dtype))
        return self._constants[key]

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, *, name: str = "", **attrs):
        """Add a node; returns its output name (or names when outputs > 1 or given as a list)."""
        self._count += 1
        name = f"{name or op_type}.{self._count}"
        domain = attrs.pop("domain", "")
        names = outputs if isinstance(outputs, list) else [f"{name}.out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "shadow_edge", self.inputs, self.outputs, list(self.initializers.values())
        )
        opsets = [helper.make_opsetid("", BUILDER_OPSET), helper.make_opsetid(MS, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="shadow-edge")
        model.ir_version = 8
        return model


def _rotary_tables(decoder: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """RotaryEmbedding's cos/sin caches [max_positions, head_dim / 2] from the decoder's own rotary
    module (any static rope scaling included), or None when its tables are not in the rotate_half
    layout (both halves equal)."""
    positions = torch.arange(int(decoder.config.max_position_embeddings))[None]
    with torch.no_grad():
        cos, sin = decoder.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = _array(cos[0]), _array(sin[0])
    half = cos.shape[-1] // 2
    if not (np.array_equal(cos[:, :half], cos[:, half:]) and np.array_equal(sin[:, :half], sin[:, half:])):
        return None
    return cos[:, :half], sin[:, :half]


def supported(decoder: Any) -> str | None:
    """None when this builder can state the HF decoder backbone exactly; else the reason."""
    config = decoder.config
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} (only silu)"
    rotary = getattr(decoder, "rotary_emb", None)
    if rotary is None:
        return "no rotary embedding"
    rope = getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) == "dynamic":
        return "dynamic rope scaling (its tables depend on the sequence length)"
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embedding"
    first = decoder.layers[0]
    head_dim = getattr(first, "layer", first).self_attn.head_dim
    if head_dim % 16:
        return f"head_dim {head_dim} (onnxruntime's GroupQueryAttention needs a multiple of 16)"
    if _rotary_tables(decoder) is None:
        return "rotary tables not in the rotate_half layout"
    return None


class _Decoder:
    """The layers of one HF decoder backbone, stated on a GraphBuilder."""

    def __init__(self, b: GraphBuilder, backbone: Any, prefix: str, position_ids: str) -> None:
        self.b, self.backbone, self.prefix, self.position_ids = b, backbone, prefix, position_ids
        self.config = backbone.config
        self.layers = [getattr(layer, "layer", layer) for layer in backbone.layers]
        attention = self.layers[0].self_attn
        self.heads = int(self.config.num_attention_heads)
        self.kv_heads = int(self.config.num_key_value_heads)
        self.head_dim = int(attention.head_dim)
        self.scale = float(attention.scaling)
        self.windows = [sliding_window(self.config, i) for i in range(len(self.layers))]

    # ---- once per run -------------------------------------------------------------------------
    def prepare(self, input_ids: str, attention_mask: str) -> None:
        """Additive masks [batch, 1, seq, total] (one per window size), the cache lengths and the
        rotary tables."""
        b = self.b
        seq = b.op("Gather", [b.op("Shape", [input_ids]), b.ints(1)], axis=0)  # [1]
        total = b.op("Gather", [b.op("Shape", [attention_mask]), b.ints(1)], axis=0)
        zero, one = b.scalar(0, np.int64), b.scalar(1, np.int64)
        key_pos = b.op("Range", [zero, b.op("Squeeze", [total, b.ints(0)]), one])  # [total]
        first = b.op("Sub", [total, seq])
        query_pos = b.op("Range", [b.op("Squeeze", [first, b.ints(0)]), b.op("Squeeze", [total, b.ints(0)]), one])
        query_col = b.op("Unsqueeze", [query_pos, b.ints(1)])  # [seq, 1]
        causal = b.op("LessOrEqual", [key_pos, query_col])  # [seq, total]
        real = b.op("Unsqueeze", [b.op("Cast", [attention_mask], to=TensorProto.BOOL), b.ints(1, 2)])  # [b, 1, 1, t]
        batch = b.op("Gather", [b.op("Shape", [input_ids]), b.ints(0)], axis=0)
        self.total = b.op("Cast", [b.op("Squeeze", [total, b.ints(0)])], to=TensorProto.INT32)
        self.seqlens = b.op("Expand", [b.op("Cast", [b.op("Sub", [total, b.ints(1)])], to=TensorProto.INT32), batch])
        self.masks = {}
        for window in sorted(set(self.windows), key=lambda w: -1 if w is None else w):
            allowed = causal
            if window is not None:
                low = b.op("Sub", [query_col, b.scalar(int(window), np.int64)])
                allowed = b.op("And", [allowed, b.op("Greater", [key_pos, low])])
            allowed = b.op("And", [real, allowed])  # [batch, 1, seq, total]
            self.masks[window] = b.op("Where", [allowed, b.scalar(0.0, np.float32), b.scalar(_MASKED, np.float32)])
        cos, sin = _rotary_tables(self.backbone)
        self.cos = b.weight(f"{self.prefix}.rotary.cos", cos)
        self.sin = b.weight(f"{self.prefix}.rotary.sin", sin)

    # ---- per layer ----------------------------------------------------------------------------
    def linear(self, x: str, modules: list[Any], name: str) -> str:
        """x @ [W_1 | W_2 | ...] (+ biases): one MatMul for projections that read the same input."""
        b = self.b
        weight = np.concatenate([_linear_weight(m) for m in modules], axis=1)
        out = b.op("MatMul", [x, b.weight(f"{name}.weight", weight)], name=name)
        if any(m.bias is not None for m in modules):
            bias = np.concatenate(
                [_array(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32) for m in modules]
            )
            out = b.op("Add", [out, b.weight(f"{name}.bias", bias)])
        return out

    def _head_norm(self, x: str, norm: Any, heads: int, name: str) -> str:
        """Qwen3's per-head RMSNorm of q or k, [batch, seq, heads * dim]."""
        b = self.b
        split = b.op("Reshape", [x, b.ints(0, 0, heads, self.head_dim)])
        normed = b.op(
            "SimplifiedLayerNormalization",
            [split, b.weight(f"{name}.weight", _array(norm.weight))],
            axis=-1,
            epsilon=float(norm.variance_epsilon),
        )
        return b.op("Reshape", [normed, b.ints(0, 0, heads * self.head_dim)])

    def attention(self, i: int, x: str, past: tuple[str, str], present: tuple[str, str]) -> str:
        b, layer = self.b, self.layers[i]
        attn = layer.self_attn
        name = f"{self.prefix}.layers.{i}.attn"
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        qkv = self.linear(x, [attn.q_proj, attn.k_proj, attn.v_proj], f"{name}.qkv_proj")
        q, k, v = b.op("Split", [qkv, b.ints(q_size, kv_size, kv_size)], 3, axis=-1)
        if getattr(attn, "q_norm", None) is not None:
            q = self._head_norm(q, attn.q_norm, self.heads, f"{name}.q_norm")
            k = self._head_norm(k, attn.k_norm, self.kv_heads, f"{name}.k_norm")
        # rotary here, not in GroupQueryAttention: at decode it takes positions from the cache length,
        # which a left-padded row does not share
        q = b.op("RotaryEmbedding", [q, self.position_ids, self.cos, self.sin], domain=MS, num_heads=self.heads)
        k = b.op("RotaryEmbedding", [k, self.position_ids, self.cos, self.sin], domain=MS, num_heads=self.kv_heads)
        # every row is the cache's full length (seqlens); the additive bias masks left padding and
        # sliding windows; grouped query heads read their KV head in place
        out, _, _ = b.op(
            "GroupQueryAttention",
            [q, k, v, past[0], past[1], self.seqlens, self.total, "", "", "", self.masks[self.windows[i]]],
            [f"{name}.out", present[0], present[1]],
            domain=MS,
            num_heads=self.heads,
            kv_num_heads=self.kv_heads,
            scale=self.scale,
        )
        return self.linear(out, [attn.o_proj], f"{name}.o_proj")

    def mlp(self, i: int, x: str) -> str:
        b, mlp = self.b, self.layers[i].mlp
        name = f"{self.prefix}.layers.{i}.mlp"
        size = int(mlp.gate_proj.out_features)
        gate, up = b.op(
            "Split",
            [self.linear(x, [mlp.gate_proj, mlp.up_proj], f"{name}.gate_up_proj"), b.ints(size, size)],
            2,
            axis=-1,
        )
        silu = b.op("Mul", [gate, b.op("Sigmoid", [gate])])
        return self.linear(b.op("Mul", [silu, up]), [mlp.down_proj], f"{name}.down_proj")

    def norm(self, x: str, norm: Any, name: str, skip: str | None = None) -> tuple[str, str]:
        """(RMSNorm(x + skip), x + skip); the sum is x itself without skip."""
        b = self.b
        gamma = b.weight(f"{self.prefix}.{name}.weight", _array(norm.weight))
        eps = float(norm.variance_epsilon)
        if skip is None:
            return b.op("SimplifiedLayerNormalization", [x, gamma], axis=-1, epsilon=eps), x
        out, _, _, total = b.op("SkipSimplifiedLayerNormalization", [x, skip, gamma], 4, domain=MS, epsilon=eps)
        return out, total

    def layer_body(self, i: int, normed: str, residual: str, cache: tuple[list[str], list[str]]) -> tuple[str, str]:
        """One layer from its normed input; returns (residual after attention, MLP output)."""
        past, present = cache
        attn = self.attention(i, normed, (past[2 * i], past[2 * i + 1]), (present[2 * i], present[2 * i + 1]))
        normed, residual = self.norm(residual, self.layers[i].post_attention_layernorm, f"layers.{i}.post_norm", attn)
        return residual, self.mlp(i, normed)

    def run(self, hidden: str, cache: tuple[list[str], list[str]], between=None, adapted: range = range(0)) -> str:
        """All layers; returns the final-normed hidden states. For each layer i in `adapted`,
        `between(i, h)` is called with the input h of layer i (the embeddings when i = 0) and returns
        a delta that layer i reads added to h."""
        normed = residual = ""
        pending: str | None = None  # a layer's MLP output not yet added to the residual
        for i in range(len(self.layers)):
            norm, name = self.layers[i].input_layernorm, f"layers.{i}.input_norm"
            if i in adapted:
                h = hidden if i == 0 else self.b.op("Add", [residual, pending])
                normed, residual = self.norm(h, norm, name, between(i, h))
            elif i == 0:
                normed, residual = self.norm(hidden, norm, name)
            else:
                normed, residual = self.norm(residual, norm, name, pending)
            residual, pending = self.layer_body(i, normed, residual, cache)
        return self.norm(residual, self.backbone.norm, "norm", pending)[0]


def _graph_io(b: GraphBuilder, kind: str, spec: CacheSpec | None, hidden: int) -> dict[str, Any]:
    """The inputs of a graph of this kind, in the traced graphs' order; past and present names."""
    io: dict[str, Any] = {}
    if kind == SHADOW_HEAD_GRAPH:
        io[SHADOW_STATES] = b.input(SHADOW_STATES, TensorProto.FLOAT, ["batch", "sequence", hidden])
        return io
    io["input_ids"] = b.input("input_ids", TensorProto.INT64, ["batch", "sequence"])
    io["attention_mask"] = b.input("attention_mask", TensorProto.INT64, ["batch", "total_sequence"])
    io["position_ids"] = b.input("position_ids", TensorProto.INT64, ["batch", "sequence"])
    if kind == BACKBONE_GRAPH:
        io[SHADOW_STATES] = b.input(SHADOW_STATES, TensorProto.FLOAT, ["batch", "sequence", hidden])
    if kind != SHADOW_GRAPH:
        io[LOGITS_TO_KEEP] = b.input(LOGITS_TO_KEEP, TensorProto.INT64, [])
    kv_shape = ["batch", spec.num_kv_heads, "past_sequence", spec.head_dim]
    io["past"] = [b.input(name, TensorProto.FLOAT, kv_shape) for name in spec.past_names()]
    io["present"] = spec.present_names()
    return io


def _declare_present(b: GraphBuilder, spec: CacheSpec) -> None:
    for name in spec.present_names():
        b.output(name, TensorProto.FLOAT, ["batch", spec.num_kv_heads, "total_sequence", spec.head_dim])


def _last_positions(b: GraphBuilder, hidden: str, keep: str) -> str:
    """hidden[:, -keep:] (0 keeps every position)."""
    start = b.op("Neg", [b.op("Reshape", [keep, b.ints(1)])])
    return b.op("Slice", [hidden, start, b.ints(np.iinfo(np.int64).max), b.ints(1)])


def _head(b: GraphBuilder, hidden: str, head: Any, table: str | None, name: str) -> None:
    """logits of hidden [batch, kept, dim]: Gemm(transB=1) on the stored embedding table `table`
    when the head is tied to it (one stored tensor for both), else MatMul on the [dim, vocab]
    transpose of its weight (plus its bias: classifier heads may have one)."""
    vocab, dim = head.weight.shape
    flat = b.op("Reshape", [hidden, b.ints(-1, int(dim))])
    if table is not None:
        logits = b.op("Gemm", [flat, table], name=name, transB=1)
    else:
        logits = b.op("MatMul", [flat, b.weight(f"{name}.weight", _linear_weight(head))], name=name)
    if getattr(head, "bias", None) is not None:
        logits = b.op("Add", [logits, b.weight(f"{name}.bias", _array(head.bias))])
    shape = b.op("Concat", [b.op("Slice", [b.op("Shape", [hidden]), b.ints(0), b.ints(2)]), b.ints(-1)], axis=0)
    b.op("Reshape", [logits, shape], ["logits"])
    b.output("logits", TensorProto.FLOAT, ["batch", "kept_sequence", int(vocab)])


def _table(b: GraphBuilder, embed: Any) -> str:
    """The embedding table, stored once per graph (the Gather and a tied head read it)."""
    name = "embed_tokens.weight"
    return name if name in b.initializers else b.weight(name, _array(embed.weight))


def _tied_table(b: GraphBuilder, head: Any, embed: Any) -> str | None:
    """The stored embedding table when `head` is tied to it, else None."""
    return _table(b, embed) if tied_to(head, embed.weight) else None


def _decoder_graph(loaded: ShadowCheckpoint, kind: str, spec: CacheSpec) -> onnx.ModelProto:
    """shadow (-> shadow_states), shadow_lm and base_lm (-> logits)."""
    b = GraphBuilder()
    if kind == BASE_LM_GRAPH:
        model, embed, projection, head = loaded.base_decoder, loaded.base_embed, None, loaded.heads.attached
    else:
        shadow = loaded.shadow
        model, embed, projection = shadow.decoder, shadow.embed, shadow.projection
        head = loaded.heads.detached if kind == SHADOW_LM_GRAPH else None
    io = _graph_io(b, kind, spec, 0)
    decoder = _Decoder(b, model, kind, io["position_ids"])
    decoder.prepare(io["input_ids"], io["attention_mask"])
    hidden = b.op("Gather", [_table(b, embed), io["input_ids"]], axis=0)
    hidden = decoder.run(hidden, (io["past"], io["present"]))
    if projection is not None:
        hidden = b.op("MatMul", [hidden, b.weight("shadow_hidden_projection.weight", _linear_weight(projection))])
    if head is None:
        b.op("Identity", [hidden], [SHADOW_STATES])
        width = projection.out_features if projection is not None else embed.embedding_dim
        b.output(SHADOW_STATES, TensorProto.FLOAT, ["batch", "sequence", int(width)])
    else:
        _head(b, _last_positions(b, hidden, io[LOGITS_TO_KEEP]), head, _tied_table(b, head, embed), "lm_head")
    _declare_present(b, spec)
    return b.model()


def _block_diagonal(first: torch.nn.Linear, second: torch.nn.Linear) -> torch.nn.Linear:
    """One Linear computing [first(x1) | second(x2)] from [x1 | x2]: two MLP outputs in one MatMul."""
    combined = torch.nn.Linear(
        first.in_features + second.in_features,
        first.out_features + second.out_features,
        bias=first.bias is not None or second.bias is not None,
    )
    with torch.no_grad():
        combined.weight.zero_()
        combined.weight[: first.out_features, : first.in_features] = first.weight
        combined.weight[first.out_features :, first.in_features :] = second.weight
        if combined.bias is not None:
            combined.bias.zero_()
            for part, rows in ((first, slice(0, first.out_features)), (second, slice(first.out_features, None))):
                if part.bias is not None:
                    combined.bias[rows] = part.bias
    return combined


def _backbone_graph(loaded: ShadowCheckpoint, spec: CacheSpec) -> onnx.ModelProto:
    """The base decoder with injection before each adapted block and update after each but the exit."""
    b = GraphBuilder()
    adapter = loaded.adapter
    hidden_size = int(loaded.base_config.hidden_size)
    io = _graph_io(b, BACKBONE_GRAPH, spec, hidden_size)
    decoder = _Decoder(b, loaded.base_decoder, BACKBONE_GRAPH, io["position_ids"])
    decoder.prepare(io["input_ids"], io["attention_mask"])
    embed = loaded.base_embed
    hidden = b.op("Gather", [_table(b, embed), io["input_ids"]], axis=0)
    shadow = [io[SHADOW_STATES]]
    norm = adapter.norm

    def activation(x: str) -> str:
        if adapter.activation == "gelu":
            return b.op("Gelu", [x], domain=MS)  # erf form, as nn.GELU()
        return b.op("Mul", [x, b.op("Sigmoid", [x])])

    def update_shadow(i: int, h: str) -> str:
        # s + g * (t - s),  g = sigmoid(G(u)),  t = T(u),  u = LayerNorm(h) or h
        update = adapter.update(i)
        u = h
        if norm is not None:
            gamma = b.weight("update.norm.weight", _array(norm.weight))
            u = b.op(
                "LayerNormalization",
                [h, gamma, b.weight("update.norm.bias", _array(norm.bias))],
                axis=-1,
                epsilon=float(norm.eps),
            )
        first = decoder.linear(u, [update.gate[0], update.transform[0]], f"update.{i}.in")
        out = decoder.linear(
            activation(first), [_block_diagonal(update.gate[1], update.transform[1])], f"update.{i}.out"
        )
        gate_pre, target = b.op("Split", [out, b.ints(hidden_size, hidden_size)], 2, axis=-1)
        s = shadow[0]
        return b.op("Add", [s, b.op("Mul", [b.op("Sigmoid", [gate_pre]), b.op("Sub", [target, s])])])

    def between(i: int, h: str) -> str:
        if adapter.update(i - 1) is not None:  # the update after the previous adapted block
            shadow[0] = update_shadow(i - 1, h)
        injection = adapter.injection(i)  # ((h - s) @ W_down) @ (alpha W_up)
        down = b.weight(f"inject.{i}.down", _array(injection.down))
        up = b.weight(f"inject.{i}.up", _array(injection.up))
        return b.op(
            "MatMul",
            [b.op("MatMul", [b.op("Sub", [h, shadow[0]]), down], name=f"inject.{i}.down"), up],
            name=f"inject.{i}.up",
        )

    adapted = range(adapter.first, adapter.last + 1)
    hidden = decoder.run(hidden, (io["past"], io["present"]), between, adapted)
    head = loaded.heads.attached
    _head(b, _last_positions(b, hidden, io[LOGITS_TO_KEEP]), head, _tied_table(b, head, embed), "lm_head")
    _declare_present(b, spec)
    return b.model()


def _shadow_head_graph(loaded: ShadowCheckpoint) -> onnx.ModelProto:
    b = GraphBuilder()
    head = loaded.heads.detached
    io = _graph_io(b, SHADOW_HEAD_GRAPH, None, int(head.weight.shape[1]))
    _head(b, io[SHADOW_STATES], head, _tied_table(b, head, loaded.shadow.embed), "lm_head")
    return b.model()


def build_graph(loaded: ShadowCheckpoint, kind: str, spec: CacheSpec) -> onnx.ModelProto:
    """The graph `kind` of the loaded checkpoint (spec: its KV cache)."""
    if kind == SHADOW_HEAD_GRAPH:
        return _shadow_head_graph(loaded)
    if kind == BACKBONE_GRAPH:
        return _backbone_graph(loaded, spec)
    return _decoder_graph(loaded, kind, spec)
