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
Supported: the decoders of the architecture table (architectures.py) with rotary tables whose two
halves agree (the non-interleaved rotate_half layout) and silu / gelu MLPs; `supported()` says why not
otherwise, and the exporter traces that graph instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..bundle import (
    ATTENTION_MASK,
    BACKBONE_GRAPH,
    BASE_LM_GRAPH,
    GRAPH_KINDS,
    INPUT_IDS,
    LOGITS_TO_KEEP,
    POSITION_IDS,
    SHADOW_HEAD_GRAPH,
    SHADOW_LM_GRAPH,
    SHADOW_STATES,
    CacheSpec,
)
from . import architectures
from .graphs import rope_parameters, rotary_tables, sliding_window, tied_to
from .loaders.description import SEQ_CLS, ShadowCheckpoint

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


def _rotary_tables(decoder: Any, key: str = "default") -> tuple[np.ndarray, np.ndarray, int | None] | None:
    """RotaryEmbedding's cos/sin caches [rows, rotary_dim / 2] (graphs.rotary_tables: static scaling
    included; LongRoPE's short rows, then its long rows from `long_from`); None when the tables are
    not in the rotate_half layout (both halves equal)."""
    cos, sin, long_from = rotary_tables(decoder, key)
    cos, sin = _array(cos), _array(sin)
    half = cos.shape[-1] // 2
    if not (np.array_equal(cos[:, :half], cos[:, half:]) and np.array_equal(sin[:, :half], sin[:, half:])):
        return None
    return cos[:, :half], sin[:, :half], long_from


def _rope_keys(decoder: Any) -> list[str | None]:
    arch = architectures.of(decoder.config)
    return [arch.rope_key(decoder.config, i) for i in range(len(decoder.layers))]


def supported(decoder: Any) -> str | None:
    """None when this builder can state the HF decoder backbone exactly; else the reason."""
    config = decoder.config
    arch = architectures.of(config)
    if arch is None:
        return f"{config.model_type!r} is not in the architecture table"
    first = getattr(decoder.layers[0], "layer", decoder.layers[0])
    if architectures.activation(first.mlp) is None:
        return f"MLP activation {type(getattr(first.mlp, 'act_fn', None)).__name__} (only silu, gelu, gelu-tanh)"
    if getattr(decoder, "rotary_emb", None) is None:
        return "no rotary embedding"
    keys = {key for key in _rope_keys(decoder) if key is not None}
    for key in keys:
        if rope_parameters(config, key).get("rope_type") == "dynamic":
            return "dynamic rope scaling (its tables depend on the sequence length)"
    head_dim = first.self_attn.head_dim
    if head_dim % 16:
        return f"head_dim {head_dim} (onnxruntime's GroupQueryAttention needs a multiple of 16)"
    if any(_rotary_tables(decoder, key) is None for key in keys):
        return "rotary tables not in the rotate_half layout"
    return None


class _Decoder:
    """The layers of one HF decoder backbone, stated on a GraphBuilder, as its architecture table
    entry (architectures.py) says."""

    def __init__(self, b: GraphBuilder, backbone: Any, prefix: str, position_ids: str) -> None:
        self.b, self.backbone, self.prefix, self.position_ids = b, backbone, prefix, position_ids
        self.config = backbone.config
        self.arch = architectures.of(self.config)
        self.layers = [getattr(layer, "layer", layer) for layer in backbone.layers]
        self.heads = int(self.config.num_attention_heads)
        self.kv_heads = int(self.config.num_key_value_heads)
        self.head_dim = int(self.layers[0].self_attn.head_dim)
        self.windows = [sliding_window(self.config, i) for i in range(len(self.layers))]
        self.rope_keys = _rope_keys(backbone)
        # Granite scales both branch outputs before the residual add: folded into o_proj and down_proj
        self.residual_scale = self.arch.config_value(self.config, "residual_multiplier") or 1.0

    # ---- once per run -------------------------------------------------------------------------
    def prepare(self, input_ids: str, attention_mask: str) -> None:
        """Additive masks [batch, 1, seq, total] (one per window size), the cache lengths and the
        rotary tables (one pair per rope kind the layers use)."""
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
        self.rotary = {}
        for key in sorted({k for k in self.rope_keys if k is not None}):
            cos, sin, long_from = _rotary_tables(self.backbone, key)
            positions = self.position_ids
            if long_from is not None:  # LongRoPE: a call reaching long_from reads the long rows
                start = b.scalar(long_from, np.int64)
                reached = b.op("GreaterOrEqual", [b.op("ReduceMax", [positions], keepdims=0), start])
                offset = b.op("Mul", [b.op("Cast", [reached], to=TensorProto.INT64), start])
                positions = b.op("Add", [positions, offset])
            self.rotary[key] = (
                positions,
                b.weight(f"{self.prefix}.rotary.{key}.cos", cos),
                b.weight(f"{self.prefix}.rotary.{key}.sin", sin),
            )

    def embed(self, table: str, input_ids: str, embedding: Any) -> str:
        """The layers' input: the table's rows, times the embedding module's own scale (Gemma's
        sqrt(d)) and the multiplier the decoder's forward applies (Granite)."""
        b = self.b
        hidden = b.op("Gather", [table, input_ids], axis=0)
        scale = float(getattr(embedding, "scalar_embed_scale", 1.0))  # what the reference's module applies
        scale *= self.arch.config_value(self.config, "embedding_multiplier") or 1.0
        return hidden if scale == 1.0 else b.op("Mul", [hidden, b.scalar(scale, np.float32)])

    def final_logits(self, logits: str) -> str:
        """The base head's logits as the HF model returns them: Granite divides them, Gemma 2 caps
        them with tanh. (The shadow head is a plain Linear in shadow-peft: not for its logits.)"""
        b = self.b
        divisor = self.arch.config_value(self.config, "logits_divisor")
        if divisor:
            logits = b.op("Mul", [logits, b.scalar(1.0 / divisor, np.float32)])
        cap = self.arch.config_value(self.config, "final_softcap")
        if cap:
            capped = b.op("Tanh", [b.op("Mul", [logits, b.scalar(1.0 / cap, np.float32)])])
            logits = b.op("Mul", [capped, b.scalar(cap, np.float32)])
        return logits

    # ---- per layer ----------------------------------------------------------------------------
    def linear(self, x: str, modules: list[Any], name: str, scale: float = 1.0) -> str:
        """x @ [W_1 | W_2 | ...] (+ biases), times scale: one MatMul for projections that read the
        same input."""
        b = self.b
        weight = np.concatenate([_linear_weight(m) for m in modules], axis=1)
        weight = weight if scale == 1.0 else weight * np.float32(scale)
        out = b.op("MatMul", [x, b.weight(f"{name}.weight", weight)], name=name)
        if any(m.bias is not None for m in modules):
            bias = np.concatenate(
                [_array(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32) for m in modules]
            )
            out = b.op("Add", [out, b.weight(f"{name}.bias", bias * np.float32(scale))])
        return out

    def _gamma(self, norm: Any, name: str) -> tuple[str, float]:
        """A norm's stored scale (Gemma's 1 + w folded in) and its epsilon."""
        gamma = self.arch.norm_offset + _array(norm.weight)
        eps = getattr(norm, "variance_epsilon", None) or norm.eps
        return self.b.weight(f"{name}.weight", gamma), float(eps)

    def _qk_norm(self, x: str, norm: Any, heads: int, name: str) -> str:
        """RMSNorm of q or k [batch, seq, heads * dim]: per head (Qwen3, Gemma 3) or over the whole
        projection (OLMo 2)."""
        b = self.b
        gamma, eps = self._gamma(norm, name)
        if self.arch.qk_norm == "projection":
            return b.op("SimplifiedLayerNormalization", [x, gamma], axis=-1, epsilon=eps)
        split = b.op("Reshape", [x, b.ints(0, 0, heads, self.head_dim)])
        normed = b.op("SimplifiedLayerNormalization", [split, gamma], axis=-1, epsilon=eps)
        return b.op("Reshape", [normed, b.ints(0, 0, heads * self.head_dim)])

    def _rope(self, i: int, x: str, heads: int) -> str:
        key = self.rope_keys[i]
        if key is None:  # SmolLM3's NoPE layers
            return x
        positions, cos, sin = self.rotary[key]
        rotary_dim = 2 * int(self.b.initializers[cos].dims[1])
        partial = {"rotary_embedding_dim": rotary_dim} if rotary_dim != self.head_dim else {}
        return self.b.op("RotaryEmbedding", [x, positions, cos, sin], domain=MS, num_heads=heads, **partial)

    def attention(self, i: int, x: str, past: tuple[str, str], present: tuple[str, str]) -> str:
        b, layer = self.b, self.layers[i]
        attn = layer.self_attn
        name = f"{self.prefix}.layers.{i}.attn"
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        projections = [attn.qkv_proj] if self.arch.packed_qkv else [attn.q_proj, attn.k_proj, attn.v_proj]
        qkv = self.linear(x, projections, f"{name}.qkv_proj")
        q, k, v = b.op("Split", [qkv, b.ints(q_size, kv_size, kv_size)], 3, axis=-1)
        if self.arch.qk_norm:
            q = self._qk_norm(q, attn.q_norm, self.heads, f"{name}.q_norm")
            k = self._qk_norm(k, attn.k_norm, self.kv_heads, f"{name}.k_norm")
        # rotary here, not in GroupQueryAttention: at decode it takes positions from the cache length,
        # which a left-padded row does not share
        q, k = self._rope(i, q, self.heads), self._rope(i, k, self.kv_heads)
        softcap = self.arch.config_value(self.config, "attn_softcap")
        # every row is the cache's full length (seqlens); the additive bias masks left padding and
        # sliding windows; grouped query heads read their KV head in place
        out, _, _ = b.op(
            "GroupQueryAttention",
            [q, k, v, past[0], past[1], self.seqlens, self.total, "", "", "", self.masks[self.windows[i]]],
            [f"{name}.out", present[0], present[1]],
            domain=MS,
            num_heads=self.heads,
            kv_num_heads=self.kv_heads,
            scale=float(attn.scaling),
            **({"softcap": softcap} if softcap else {}),
        )
        return self.linear(out, [attn.o_proj], f"{name}.o_proj", self.residual_scale)

    def mlp(self, i: int, x: str) -> str:
        b, mlp = self.b, self.layers[i].mlp
        name = f"{self.prefix}.layers.{i}.mlp"
        if self.arch.packed_gate_up:
            packed, size = [mlp.gate_up_proj], int(mlp.gate_up_proj.out_features) // 2
        else:
            packed, size = [mlp.gate_proj, mlp.up_proj], int(mlp.gate_proj.out_features)
        gate, up = b.op("Split", [self.linear(x, packed, f"{name}.gate_up_proj"), b.ints(size, size)], 2, axis=-1)
        kind = architectures.activation(mlp)
        if kind == "silu":
            act = b.op("Mul", [gate, b.op("Sigmoid", [gate])])
        else:  # FastGelu: the tanh approximation; Gelu: erf
            act = b.op("FastGelu" if kind == "gelu_tanh" else "Gelu", [gate], domain=MS)
        return self.linear(b.op("Mul", [act, up]), [mlp.down_proj], f"{name}.down_proj", self.residual_scale)

    def input_norm(self, i: int) -> Any:
        """Layer i's input norm (None: OLMo 2 normalizes the branch outputs instead)."""
        return None if self.arch.norms == "post" else self.layers[i].input_layernorm

    def norm(self, x: str, norm: Any, name: str, skip: str | None = None) -> tuple[str, str]:
        """(RMSNorm(x + skip), x + skip); the sum is x itself without skip; no norm: both the sum."""
        b = self.b
        if norm is None:
            total = x if skip is None else b.op("Add", [x, skip])
            return total, total
        gamma, eps = self._gamma(norm, f"{self.prefix}.{name}")
        if skip is None:
            return b.op("SimplifiedLayerNormalization", [x, gamma], axis=-1, epsilon=eps), x
        out, _, _, total = b.op("SkipSimplifiedLayerNormalization", [x, skip, gamma], 4, domain=MS, epsilon=eps)
        return out, total

    def layer_body(self, i: int, normed: str, residual: str, cache: tuple[list[str], list[str]]) -> tuple[str, str]:
        """One layer from its normed input; returns (residual after attention, MLP branch output)."""
        past, present = cache
        layer, name = self.layers[i], f"layers.{i}"
        attn = self.attention(i, normed, (past[2 * i], past[2 * i + 1]), (present[2 * i], present[2 * i + 1]))
        if self.arch.norms == "pre":
            normed, residual = self.norm(residual, layer.post_attention_layernorm, f"{name}.post_norm", attn)
            return residual, self.mlp(i, normed)
        attn = self.norm(attn, layer.post_attention_layernorm, f"{name}.post_attention_norm")[0]
        if self.arch.norms == "post":  # OLMo 2: the MLP reads the unnormed residual
            residual = self.b.op("Add", [residual, attn])
            return residual, self.norm(self.mlp(i, residual), layer.post_feedforward_layernorm, f"{name}.post_ffn")[0]
        normed, residual = self.norm(residual, layer.pre_feedforward_layernorm, f"{name}.pre_ffn_norm", attn)
        return residual, self.norm(self.mlp(i, normed), layer.post_feedforward_layernorm, f"{name}.post_ffn")[0]

    def run(self, hidden: str, cache: tuple[list[str], list[str]], between=None, adapted: range = range(0)) -> str:
        """All layers; returns the final-normed hidden states. For each layer i in `adapted`,
        `between(i, h)` is called with the input h of layer i (the embeddings when i = 0) and returns
        a delta that layer i reads added to h."""
        normed = residual = ""
        pending: str | None = None  # a layer's MLP output not yet added to the residual
        for i in range(len(self.layers)):
            norm, name = self.input_norm(i), f"layers.{i}.input_norm"
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
    """The inputs of a graph of this kind (bundle.GRAPH_KINDS, in its order); past and present names."""
    shapes = {
        INPUT_IDS: (TensorProto.INT64, ["batch", "sequence"]),
        ATTENTION_MASK: (TensorProto.INT64, ["batch", "total_sequence"]),
        POSITION_IDS: (TensorProto.INT64, ["batch", "sequence"]),
        SHADOW_STATES: (TensorProto.FLOAT, ["batch", "sequence", hidden]),
        LOGITS_TO_KEEP: (TensorProto.INT64, []),
    }
    graph = GRAPH_KINDS[kind]
    io: dict[str, Any] = {name: b.input(name, *shapes[name]) for name in graph.inputs}
    if graph.cached:
        assert spec is not None
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


def _head(b: GraphBuilder, hidden: str, head: Any, table: str | None, name: str, final=None) -> None:
    """logits of hidden [batch, kept, dim]: Gemm(transB=1) on the stored embedding table `table`
    when the head is tied to it (one stored tensor for both), else MatMul on the [dim, vocab]
    transpose of its weight (plus its bias: classifier heads may have one); `final(logits)` (a base
    head's caps and divisors) when given."""
    vocab, dim = head.weight.shape
    flat = b.op("Reshape", [hidden, b.ints(-1, int(dim))])
    if table is not None:
        logits = b.op("Gemm", [flat, table], name=name, transB=1)
    else:
        logits = b.op("MatMul", [flat, b.weight(f"{name}.weight", _linear_weight(head))], name=name)
    if getattr(head, "bias", None) is not None:
        logits = b.op("Add", [logits, b.weight(f"{name}.bias", _array(head.bias))])
    logits = final(logits) if final is not None else logits
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
    hidden = decoder.embed(_table(b, embed), io["input_ids"], embed)
    hidden = decoder.run(hidden, (io["past"], io["present"]))
    if projection is not None:
        hidden = b.op("MatMul", [hidden, b.weight("shadow_hidden_projection.weight", _linear_weight(projection))])
    if head is None:
        b.op("Identity", [hidden], [SHADOW_STATES])
        width = projection.out_features if projection is not None else embed.embedding_dim
        b.output(SHADOW_STATES, TensorProto.FLOAT, ["batch", "sequence", int(width)])
    else:
        final = decoder.final_logits if kind == BASE_LM_GRAPH else None  # shadow heads are plain Linears
        _head(b, _last_positions(b, hidden, io[LOGITS_TO_KEEP]), head, _tied_table(b, head, embed), "lm_head", final)
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
    hidden = decoder.embed(_table(b, embed), io["input_ids"], embed)
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
    table = _tied_table(b, head, embed)
    final = decoder.final_logits if loaded.task != SEQ_CLS else None  # a classifier's score is read as it is
    _head(b, _last_positions(b, hidden, io[LOGITS_TO_KEEP]), head, table, "lm_head", final)
    _declare_present(b, spec)
    return b.model()


def _shadow_head_graph(loaded: ShadowCheckpoint) -> onnx.ModelProto:
    b = GraphBuilder()
    head = loaded.heads.detached
    io = _graph_io(b, SHADOW_HEAD_GRAPH, None, int(head.weight.shape[1]))
    _head(b, io[SHADOW_STATES], head, _tied_table(b, head, loaded.shadow.embed), "lm_head")
    return b.model()


def build_graph(loaded: ShadowCheckpoint, kind: str, spec: CacheSpec) -> onnx.ModelProto:
    """The graph `kind` of the loaded checkpoint (spec: its KV cache), with GRAPH_KINDS' outputs."""
    if kind == SHADOW_HEAD_GRAPH:
        model = _shadow_head_graph(loaded)
    elif kind == BACKBONE_GRAPH:
        model = _backbone_graph(loaded, spec)
    else:
        model = _decoder_graph(loaded, kind, spec)
    outputs = [o.name for o in model.graph.output]
    if outputs != GRAPH_KINDS[kind].output_names(spec):  # the builder's own bug: not a user's error
        raise AssertionError(f"the {kind} graph was built with the outputs {outputs[:3]}...")
    return model
