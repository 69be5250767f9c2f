"""Torch modules with explicit KV-cache tensors, one per exported graph.

Each wraps modules of the reference model (same parameters, no copies) and re-states its
forward pass with the cache as plain tensors:
    shadow         input_ids, attention_mask, position_ids, past (shadow)  -> shadow_states, present
    shadow_lm      the same + num_logits_to_keep                          -> logits, present
    backbone       input_ids, attention_mask, position_ids, shadow_states,
                   num_logits_to_keep, past (base)                        -> logits, present
    base_lm        like shadow_lm, the base model without the adapter (optional)
    shadow_head    shadow_states                                           -> logits
attention_mask is [batch, past + seq] (1 = real token); position_ids are [batch, seq].
KV tensors are [batch, kv_heads, seq, head_dim]. Inject/update act on each position alone, so
cached decoding is exact (see DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface

from . import architectures
from .loaders.description import SEQ_CLS, ShadowCheckpoint

GROUPED_ATTENTION = "shadow_edge_grouped"


def grouped_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None, **kwargs):
    """transformers' eager attention without repeat_kv: the query heads that share a KV head are
    stacked along the sequence axis, so the graph never copies the KV cache to every query head
    (repeat_kv's Expand copied the whole cache n_heads/n_kv_heads times per token). Gemma 2's
    soft-capping of the scores, like eager attention, comes before the mask."""
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    query = query.reshape(batch, kv_heads, groups * length, dim)  # row g * length + t
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights + attention_mask.repeat(1, 1, groups, 1)
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value).reshape(batch, heads, length, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)


@contextmanager
def attention_implementation(configs: list, name: str) -> Iterator[None]:
    """Trace with `name` as the attention of these configs; the reference keeps its own."""
    before = [config._attn_implementation for config in configs]
    for config in configs:
        config._attn_implementation = name
    try:
        yield
    finally:
        for config, impl in zip(configs, before, strict=True):
            config._attn_implementation = impl


class _TensorCache:
    """Duck-typed transformers Cache: appends the new keys/values to the given past tensors."""

    def __init__(self, past: tuple[torch.Tensor, ...]) -> None:
        self.past = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        self.present: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        past_key, past_value = self.past[layer_idx]
        key = torch.cat([past_key, key], dim=2)
        value = torch.cat([past_value, value], dim=2)
        self.present += [key, value]
        return key, value


def sliding_window(config: Any, layer_idx: int) -> int | None:
    """The attention window of one layer, as transformers applies it (None = full attention)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    return window if getattr(config, "use_sliding_window", True) else None


def attention_bias(attention_mask: torch.Tensor, query_len: int, window: int | None) -> torch.Tensor:
    """Additive mask [batch, 1, query, past + query]: causal, padding, optional sliding window."""
    total = attention_mask.shape[1]
    key_pos = torch.arange(total, device=attention_mask.device)
    query_pos = key_pos[total - query_len :].unsqueeze(1)  # positions of the new tokens in the cache
    allowed = (key_pos.unsqueeze(0) <= query_pos) & attention_mask[:, None, None, :].bool()
    if window is not None:
        allowed = allowed & (key_pos.unsqueeze(0) > query_pos - window)
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)


def rope_parameters(config: Any, key: str = "default") -> dict:
    """The rope parameters of one rope kind ("default", or a layer type for Gemma 3)."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and isinstance(rope.get(key), dict):
        rope = rope[key]
    return rope if isinstance(rope, dict) else {}


def _rotary_call(backbone: nn.Module, positions: int, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    args = () if key == "default" else (key,)  # Gemma 3's module takes the layer type
    with torch.no_grad():
        cos, sin = backbone.rotary_emb(torch.zeros(1, dtype=torch.float32), torch.arange(positions)[None], *args)
    return cos[0].float(), sin[0].float()


def rotary_tables(backbone: nn.Module, key: str = "default") -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """cos, sin [rows, rotary_dim] of the backbone's rotary module for every position, and None; for
    LongRoPE, which picks its short or long factors per call (long once any position reaches
    original_max_position_embeddings), the short tables' rows first, then the long tables, and the
    row the long ones start at: a call reaching it reads row position + start."""
    config = backbone.config
    cos, sin = _rotary_call(backbone, int(config.max_position_embeddings), key)
    rope = rope_parameters(config, key)
    if rope.get("rope_type", rope.get("type")) != "longrope":
        return cos, sin, None
    start = int(rope.get("original_max_position_embeddings") or config.original_max_position_embeddings)
    short_cos, short_sin = _rotary_call(backbone, start, key)
    return torch.cat([short_cos, cos]), torch.cat([short_sin, sin]), start


class _DecoderStack:
    """Runs the layers of one HF backbone over hidden states with a tensor KV cache; what the HF
    model's own forward adds around the layers (embedding multipliers, logit caps) comes from its
    architecture table entry."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone
        self.config = backbone.config
        self.arch = architectures.traced_entry(backbone)
        # shadow-peft wraps each base layer to inject/update; we state those steps explicitly
        self.layers = [getattr(layer, "layer", layer) for layer in backbone.layers]
        self.windows = [sliding_window(self.config, i) for i in range(len(self.layers))]
        # every layer is handed a rope table (SmolLM3's NoPE layers ignore theirs); Gemma 3 has one per type
        self.rope_keys = [
            self.config.layer_types[i] if self.arch.rope_per_layer_type else "default" for i in range(len(self.layers))
        ]
        # LongRoPE's module updates its buffers in place per call, which does not trace: read its tables
        self.tables: dict[str, tuple[torch.Tensor, torch.Tensor, int | None]] = {}
        for key in set(self.rope_keys):
            if rope_parameters(self.config, key).get("rope_type") == "longrope":
                self.tables[key] = rotary_tables(backbone, key)

    def embed(self, embedding: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """The layers' input: the embedding module (Gemma's scales itself) times the multiplier the
        decoder's forward applies (Granite)."""
        multiplier = self.arch.config_value(self.config, "embedding_multiplier")
        hidden = embedding(input_ids)
        return hidden if multiplier is None else hidden * multiplier

    def final_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The base head's logits as the HF causal LM returns them (Granite's divisor, Gemma's cap)."""
        divisor = self.arch.config_value(self.config, "logits_divisor")
        cap = self.arch.config_value(self.config, "final_softcap")
        logits = logits if divisor is None else logits / divisor
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def prepare(self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
        masks = {w: attention_bias(attention_mask, hidden.shape[1], w) for w in set(self.windows)}
        rotary = {key: self._rotary(key, hidden, position_ids) for key in set(self.rope_keys)}
        return masks, rotary

    def _rotary(self, key: str, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.tables:
            return self.backbone.rotary_emb(hidden, position_ids, *(() if key == "default" else (key,)))
        cos, sin, start = self.tables[key]
        rows = position_ids + start * (position_ids.max() >= start).long()
        return cos[rows].to(hidden.dtype), sin[rows].to(hidden.dtype)

    def layer(self, i: int, hidden, masks, rotary, position_ids, cache: _TensorCache) -> torch.Tensor:
        out = self.layers[i](
            hidden,
            attention_mask=masks[self.windows[i]],
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            position_embeddings=rotary[self.rope_keys[i]],
        )
        return out[0] if isinstance(out, tuple) else out


def _last_positions(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """hidden[:, -keep:] with keep a traced scalar (0 keeps every position)."""
    seq = hidden.shape[1]
    positions = torch.arange(seq, device=hidden.device)
    first = torch.where(keep > 0, seq - keep, 0)
    return hidden[:, positions >= first]


def _head(hidden: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """The head on 2-D input, so that onnx_export.tie_transposed_heads can make it a Gemm that reads
    the [vocab, d] embedding table itself."""
    batch, seq, dim = hidden.shape
    return nn.functional.linear(hidden.reshape(-1, dim), head.weight, head.bias).reshape(batch, seq, -1)


class DecoderGraph(nn.Module):
    """A plain decoder with a tensor KV cache: embed -> layers -> norm -> projection [-> head].
    Without a head it returns the hidden states (the shadow state s0); with one, logits."""

    def __init__(
        self,
        backbone: nn.Module,
        embed: nn.Module,
        projection: nn.Module,
        head: nn.Module | None,
        base_head: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed = embed
        self.projection = projection
        self.head = head
        self.stack = _DecoderStack(backbone)
        # a base model's head gets its HF post-processing; shadow-peft's shadow head is a plain Linear
        self.final = self.stack.final_logits if base_head else (lambda logits: logits)

    def states(self, input_ids, attention_mask, position_ids, past) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden = self.stack.embed(self.embed, input_ids)
        masks, rotary = self.stack.prepare(hidden, attention_mask, position_ids)
        cache = _TensorCache(past)
        for i in range(len(self.stack.layers)):
            hidden = self.stack.layer(i, hidden, masks, rotary, position_ids, cache)
        return self.projection(self.backbone.norm(hidden)), cache.present

    def forward(self, input_ids, attention_mask, position_ids, *rest):
        if self.head is None:
            states, present = self.states(input_ids, attention_mask, position_ids, rest)
            return (states, *present)
        num_logits_to_keep, *past = rest
        states, present = self.states(input_ids, attention_mask, position_ids, tuple(past))
        return (self.final(_head(_last_positions(states, num_logits_to_keep), self.head)), *present)


def shadow_graph(loaded: ShadowCheckpoint) -> DecoderGraph:
    """Attached mode's shadow: s0 = P(S(e)), no head (the backbone consumes it)."""
    shadow = loaded.shadow
    return DecoderGraph(shadow.decoder, shadow.embed, shadow.projection or nn.Identity(), None)


def shadow_lm_graph(loaded: ShadowCheckpoint) -> DecoderGraph:
    """Detached mode: the detached head on s0."""
    shadow = loaded.shadow
    return DecoderGraph(shadow.decoder, shadow.embed, shadow.projection or nn.Identity(), loaded.heads.detached)


def tied_to(head: nn.Module, table: torch.Tensor) -> bool:
    """Whether the head's weight is the embedding table itself (equal values, same shape)."""
    return head.weight.shape == table.shape and bool(torch.equal(head.weight, table))


class ShadowHeadGraph(nn.Module):
    """The shadow head alone, for schedules that need the shadow states and the detached logits
    of the same tokens (the cascade hands the prompt's states to the backbone when it escalates).
    The runtime feeds only the positions it needs logits for."""

    def __init__(self, loaded: ShadowCheckpoint) -> None:
        super().__init__()
        self.head = loaded.heads.detached
        # tied: the head is the embedding table, which the exporter then stores once for all graphs
        self.tied = tied_to(self.head, loaded.shadow.embed.weight)

    def forward(self, shadow_states: torch.Tensor) -> torch.Tensor:
        return _head(shadow_states, self.head)


def base_lm_graph(loaded: ShadowCheckpoint) -> DecoderGraph:
    """The base model alone, without the adapter: for A/B comparisons and as the speed baseline."""
    return DecoderGraph(
        loaded.base_decoder, loaded.base_embed, nn.Identity(), loaded.heads.attached, loaded.task != SEQ_CLS
    )


_ACTIVATIONS = {"silu": nn.functional.silu, "gelu": nn.functional.gelu}


class BackboneGraph(nn.Module):
    """Attached mode's base: injection before each adapted block, update after each but the exit."""

    def __init__(self, loaded: ShadowCheckpoint) -> None:
        super().__init__()
        self.backbone = loaded.base_decoder
        self.head = loaded.heads.attached
        self.adapter = loaded.adapter
        self.norm = loaded.adapter.norm  # registered, so that tracing sees its parameters
        self.updates = nn.ModuleList(nn.ModuleList([*u.gate, *u.transform]) for u in loaded.adapter.updates)
        self.act = _ACTIVATIONS[loaded.adapter.activation]
        self.stack = _DecoderStack(self.backbone)
        # HF's caps and divisors belong to its LM head; a classifier's score is read as it is
        self.final = self.stack.final_logits if loaded.task != SEQ_CLS else (lambda logits: logits)

    def _update(self, hidden: torch.Tensor, shadow: torch.Tensor, block: int) -> torch.Tensor:
        # s + sigmoid(G(u)) * (T(u) - s),  u = norm(h) or h
        update = self.adapter.update(block)
        u = hidden if self.norm is None else self.norm(hidden)
        gate = torch.sigmoid(update.gate[1](self.act(update.gate[0](u))))
        target = update.transform[1](self.act(update.transform[0](u)))
        return shadow + gate * (target - shadow)

    def forward(self, input_ids, attention_mask, position_ids, shadow_states, num_logits_to_keep, *past):
        hidden = self.stack.embed(self.backbone.embed_tokens, input_ids)
        masks, rotary = self.stack.prepare(hidden, attention_mask, position_ids)
        cache = _TensorCache(past)
        shadow = shadow_states
        for i in range(len(self.stack.layers)):
            injection = self.adapter.injection(i)
            if injection is not None:  # h + ((h - s) @ W_down) @ (alpha W_up); dropout is off at inference
                hidden = hidden + torch.matmul(torch.matmul(hidden - shadow, injection.down), injection.up)
            hidden = self.stack.layer(i, hidden, masks, rotary, position_ids, cache)
            if self.adapter.update(i) is not None:  # none after the exit block: it reaches no output
                shadow = self._update(hidden, shadow, i)
        hidden = self.backbone.norm(_last_positions(hidden, num_logits_to_keep))
        return (self.final(_head(hidden, self.head)), *cache.present)
