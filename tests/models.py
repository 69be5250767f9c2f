"""Tiny decoders built from configs offline, and real ShadowPEFT checkpoints written by shadow-peft.

Adapter weights are randomized (shadow-peft initializes W_up to zero, which would make injection a
no-op and the attached-mode checks vacuous).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    num_labels: int | None = None,
    **shadow_kwargs,
) -> Path:
    """A ShadowPEFT checkpoint of the model in base_dir, saved by shadow-peft itself (a sequence
    classifier with num_labels: both classifier heads trained, i.e. perturbed and saved)."""
    from shadow_peft import ShadowConfig, ShadowForCausalLM, ShadowForSequenceClassification, get_shadow_model
    from transformers import AutoModelForSequenceClassification

    config = ShadowConfig(
        **{"num_shadow_layers": 1, "injection_hidden_size": 8, "gate_hidden_size": 6, **shadow_kwargs},
        **({"modules_to_save": ["shadow_lm_head"]} if train_shadow_head else {}),
    )
    if num_labels is None:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model = ShadowForCausalLM(get_shadow_model(base, config, shadow_model=shadow_model))
    else:
        base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=num_labels, dtype=torch.float32)
        model = ShadowForSequenceClassification(get_shadow_model(base, config, shadow_model=shadow_model))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.peft_model.named_parameters():
            if name.startswith("shadow_"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        heads = [model.shadow_lm_head] if train_shadow_head else []
        heads += [model.classifier_head, model.shadow_classifier_head] if num_labels is not None else []
        for head in heads:
            head.weight.add_(torch.randn(head.weight.shape, generator=generator) * 0.1)
    model.save_pretrained(folder)
    return folder


@torch.no_grad()
def reference_logits(loaded, ids: list[int], mode: str) -> np.ndarray:
    """The checkpoint library's own forward over the whole sequence, no cache: [seq, vocab]."""
    return loaded.reference(torch.tensor([ids]), None, (mode,))[mode][0].numpy()


def reference_greedy(loaded, prompt: list[int], new_tokens: int, mode: str) -> list[int]:
    """Greedy tokens of the library's forward, recomputing the whole sequence for every token."""
    seq = list(prompt)
    for _ in range(new_tokens):
        seq.append(int(reference_logits(loaded, seq, mode)[-1].argmax()))
    return seq[len(prompt) :]


def assert_greedy_like_reference(loaded, model, prompts: list, new_tokens: int) -> None:
    """The bundle's greedy tokens (cached ONNX decoding, in model.mode) for each prompt equal the
    library's forward recomputing the whole sequence for every token; text decodes them."""
    for prompt in prompts:
        result = model.generate(prompt, max_new_tokens=new_tokens, temperature=0.0, eos_token_ids=[])
        ids = model.encode(prompt)
        assert result.token_ids == reference_greedy(loaded, ids, new_tokens, model.mode), (prompt, model.mode)
        assert result.prompt_tokens == len(ids) and result.new_tokens == new_tokens
        if model.tokenizer is not None:
            assert result.text == model.tokenizer.decode(result.token_ids)


def write_peft_checkpoint(
    folder: Path,
    base_dir: Path,
    seed: int = 1,
    task_type: str = "CAUSAL_LM",
    num_labels: int = 3,
    extra_adapters: dict | None = None,
    scale: float = 0.3,
    **shadow_kwargs,
) -> Path:
    """An HF peft SHADOW adapter of the model in base_dir, saved by peft itself (`<name>/` for each
    extra adapter), its shadow weights perturbed by `scale` N(0, 1): peft zero-inits W_up, which
    makes injection a no-op."""
    from peft import ShadowConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    if task_type == "SEQ_CLS":
        base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=num_labels, dtype=torch.float32)
        base.config.pad_token_id = 0
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    defaults = {"r": 8, "shadow_dropout": 0.0}
    model = get_peft_model(base, ShadowConfig(task_type=task_type, **{**defaults, **shadow_kwargs}))
    for name, kwargs in (extra_adapters or {}).items():
        model.add_adapter(name, ShadowConfig(task_type=task_type, **{**defaults, **kwargs}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            trained = any(part in name for part in ("shadow_", "lm_head", "score")) and "base_layer" not in name
            if trained and param.requires_grad or "shadow_backbone" in name or "shadow_projection" in name:
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(folder)
    return folder
