"""One table of the decoder architectures shadow-edge exports, read by both graph builders and the loader.

Each entry states, per `model_type`, what differs from a Llama decoder layer
    x -> RMSNorm -> attention(q|k|v, rope) -> + x -> RMSNorm -> gate/up MLP -> + residual
so the fused builder (onnx_build.py) can state the layer with onnxruntime's ops, the traced path
(graphs.py) can call the HF modules with the right arguments, and the loader (checkpoint.py) can tell
a supported architecture, one to try by tracing, and one no bundle can express apart.
Adding an architecture is one entry here (plus any op it newly needs in onnx_build.py).

Facts not in the table are read from the reference model itself, so the graphs follow what the
reference computes: each attention's `scaling` (head_dim ** -0.5, Gemma's query_pre_attn_scalar,
Granite's attention_multiplier), the embedding module's `embed_scale` (Gemma: sqrt(hidden_size)),
rotary tables from each rotary module (static scaling, LongRoPE, per layer type), norms' epsilons.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class Architecture:
    model_type: str
    # where the layer's norms sit: "pre" (Llama: input, post_attention), "sandwich" (Gemma 2/3: also
    # a norm after attention and around the MLP: pre_/post_feedforward_layernorm), "post" (OLMo 2:
    # no input norm; post_attention_layernorm and post_feedforward_layernorm on the branch outputs)
    norms: str = "pre"
    norm_offset: float = 0.0  # RMSNorm scales by (offset + weight): Gemma stores w for (1 + w)
    qk_norm: str | None = None  # "head": per head (Qwen3, Gemma 3); "projection": whole q / k (OLMo 2)
    packed_qkv: bool = False  # one qkv_proj (Phi-3) instead of q_proj, k_proj, v_proj
    packed_gate_up: bool = False  # one gate_up_proj, gate first (Phi-3)
    # config attributes: multipliers and caps applied by the HF forward, None when absent
    embedding_multiplier: str | None = None  # the decoder's forward scales its input embeddings (Granite)
    residual_multiplier: str | None = None  # attention and MLP outputs scaled before the residual add (Granite)
    attn_softcap: str | None = None  # tanh soft-capping of attention scores (Gemma 2)
    final_softcap: str | None = None  # tanh soft-capping of the base head's logits (Gemma 2, Gemma 3)
    logits_divisor: str | None = None  # the base head's logits divided by it (Granite)
    rope_per_layer_type: bool = False  # one rotary table per layer type (Gemma 3: local 1e4, global 1e6)
    no_rope_layers: str | None = None  # config list: 0 = that layer has no rope (SmolLM3's NoPE layers)

    def config_value(self, config: Any, field: str) -> float | None:
        """The config value named by one of the attribute fields above (None when unset)."""
        name = getattr(self, field)
        value = getattr(config, name, None) if name else None
        return None if value is None else float(value)

    def has_rope(self, config: Any, layer: int) -> bool:
        flags = getattr(config, self.no_rope_layers, None) if self.no_rope_layers else None
        return bool(flags[layer]) if flags is not None else True

    def rope_key(self, config: Any, layer: int) -> str | None:
        """Which rotary table a layer reads: its layer type, "default", or None (no rope)."""
        if not self.has_rope(config, layer):
            return None
        return config.layer_types[layer] if self.rope_per_layer_type else "default"


_GEMMA = dict(norm_offset=1.0)  # and an embedding module that scales by sqrt(d) (read from it)
TABLE: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture("llama"),
        Architecture("mistral"),
        Architecture("qwen2"),
        Architecture("qwen3", qk_norm="head"),
        Architecture("gemma", **_GEMMA),
        Architecture(
            "gemma2",
            norms="sandwich",
            attn_softcap="attn_logit_softcapping",
            final_softcap="final_logit_softcapping",
            **_GEMMA,
        ),
        Architecture(
            "gemma3_text",
            norms="sandwich",
            qk_norm="head",
            final_softcap="final_logit_softcapping",
            rope_per_layer_type=True,
            **_GEMMA,
        ),
        Architecture("phi3", packed_qkv=True, packed_gate_up=True),
        Architecture(
            "granite",
            embedding_multiplier="embedding_multiplier",
            residual_multiplier="residual_multiplier",
            logits_divisor="logits_scaling",
        ),
        Architecture("olmo2", norms="post", qk_norm="projection"),
        Architecture("smollm3", no_rope_layers="no_rope_layers"),
    )
}

# config attributes of structures a bundle cannot express: expert routing, recurrent and convolution
# layers (their state is not a KV cache). Anything else shadow-peft wraps is traced and validated.
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")
_RECURRENT_LAYER_TYPES = ("conv", "mamba", "linear_attention", "recurrent", "ssm")
_RECURRENT_KEYS = ("conv_L_cache", "ssm_state_size", "state_size", "mamba_d_state", "linear_num_value_heads")


def of(config: Any) -> Architecture | None:
    """The table's entry for this config, None when it is not in the table."""
    return TABLE.get(getattr(config, "model_type", None))


def traced_entry(decoder: Any) -> Architecture:
    """The entry the traced path follows: the table's, or for a decoder off the table a plain one
    whose rope is per layer type when its rotary module takes one (validation decides the rest)."""
    entry = of(decoder.config)
    if entry is not None:
        return entry
    rotary = getattr(decoder, "rotary_emb", None)
    per_type = rotary is not None and "layer_type" in inspect.signature(rotary.forward).parameters
    return Architecture(str(decoder.config.model_type), rope_per_layer_type=per_type)


def supported_names() -> str:
    return ", ".join(TABLE)


def _refusal(config: Any) -> str | None:
    """Why no bundle can express this decoder, or None."""
    if any(getattr(config, key, None) for key in _MOE_KEYS):
        return "mixture-of-experts routing"
    layer_types = [str(t) for t in getattr(config, "layer_types", None) or []]
    kinds = sorted({t for t in layer_types if any(k in t for k in _RECURRENT_LAYER_TYPES)})
    if kinds or any(getattr(config, key, None) is not None for key in _RECURRENT_KEYS):
        return f"recurrent or convolution layers ({', '.join(kinds) or 'a state-space or conv state'})"
    if getattr(config, "rope_parameters", None) is None and getattr(config, "rope_theta", None) is None:
        return "no rotary position embedding (the graphs feed positions to rotary tables)"
    return None


def check(config: Any, what: str = "architecture") -> Architecture | None:
    """The table entry of a decoder config; None for one to try by tracing (validation decides);
    UnsupportedModelError, naming the reason, for structures a bundle cannot express."""
    model_type = getattr(config, "model_type", None)
    reason = None if model_type in TABLE else _refusal(config)
    if reason:
        raise UnsupportedModelError(
            f"{what} {model_type!r} is not supported: {reason} (in the architecture table: {supported_names()})"
        )
    return of(config)


# the MLP activation, by the class of the reference's own activation module (what it computes)
ACTIVATIONS = {
    "SiLUActivation": "silu",
    "SiLU": "silu",
    "GELUTanh": "gelu_tanh",  # Gemma's gelu_pytorch_tanh
    "NewGELUActivation": "gelu_tanh",
    "GELUActivation": "gelu",
}


def activation(mlp: Any) -> str | None:
    """silu | gelu_tanh | gelu for the MLP's activation module, None for another."""
    module = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None)
    return ACTIVATIONS.get(type(module).__name__)
