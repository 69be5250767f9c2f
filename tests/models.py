"""Tiny decoders built from configs offline, and real ShadowPEFT checkpoints written by shadow-peft.

Adapter weights are randomized (shadow-peft initializes W_up to zero, which would make injection a
no-op and the attached-mode checks vacuous).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TINY = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,  # onnxruntime's GroupQueryAttention (the fused builder) needs a multiple of 16
    max_position_embeddings=128,
    tie_word_embeddings=True,
    initializer_range=0.2,  # logits of a few units, so that 1e-4 is a meaningful bound
    bos_token_id=1,
    eos_token_id=2,
)
ARCH_EXTRA = {
    "llama": {},
    "qwen2": {"tie_word_embeddings": False},
    "qwen3": {},
    # a short window makes the sliding-window mask matter in tests
    "mistral": {"sliding_window": 6, "tie_word_embeddings": False},
    # small caps and multipliers, so that each one changes the logits of a tiny model
    "gemma": {},  # gelu-tanh, 1 + w norms, sqrt(d) embedding scale
    "gemma2": {
        "sliding_window": 6,
        "query_pre_attn_scalar": 24,
        "attn_logit_softcapping": 2.0,
        "final_logit_softcapping": 3.0,
    },
    "gemma3_text": {
        "sliding_window": 6,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
        "query_pre_attn_scalar": 24,
        "final_logit_softcapping": 3.0,
    },
    "phi3": {  # LongRoPE; prompt + new tokens stay under original_max_position_embeddings
        "hidden_size": 64,  # Phi-3 derives head_dim = hidden / heads
        "sliding_window": 6,
        "pad_token_id": 0,
        "max_position_embeddings": 256,
        "rope_parameters": {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "original_max_position_embeddings": 128,
            "short_factor": [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0],
            "long_factor": [1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0],
        },
        "tie_word_embeddings": False,
    },
    "granite": {
        "embedding_multiplier": 2.0,
        "residual_multiplier": 0.5,
        "attention_multiplier": 0.1,
        "logits_scaling": 4.0,
    },
    "olmo2": {"pad_token_id": 0, "tie_word_embeddings": False},
    "smollm3": {"pad_token_id": 0, "no_rope_layers": [1, 0, 1], "use_sliding_window": True, "sliding_window": 6},
    # off the architecture table: traced and validated (exaone4), or failing to trace (cohere)
    "exaone4": {"sliding_window": 6, "pad_token_id": 0},
    "cohere": {},
}


def tiny_base(folder: Path, model_type: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a tiny random HF model (config.json + model.safetensors) into folder."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **{**TINY, **ARCH_EXTRA[model_type], **overrides})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    return folder


def write_checkpoint(
    folder: Path,
    base_dir: Path,
    seed: int = 1,
    shadow_model=None,
    train_shadow_head: bool = False,
    **shadow_kwargs,
) -> Path:
    """A ShadowPEFT checkpoint of the model in base_dir, saved by shadow-peft itself."""
    from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = ShadowConfig(
        **{"num_shadow_layers": 1, "injection_hidden_size": 8, "gate_hidden_size": 6, **shadow_kwargs},
        **({"modules_to_save": ["shadow_lm_head"]} if train_shadow_head else {}),
    )
    model = ShadowForCausalLM(get_shadow_model(base, config, shadow_model=shadow_model))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.peft_model.named_parameters():
            if name.startswith("shadow_"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        if train_shadow_head:
            head = model.shadow_lm_head.weight
            head.add_(torch.randn(head.shape, generator=generator) * 0.1)
    model.save_pretrained(folder)
    return folder
