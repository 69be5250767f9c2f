"""Tokenizers small enough for the tiny test models (vocabulary <= 96), trained here in milliseconds.

Ids 0, 1, 2 are <pad>, <s>, </s>, matching the tiny configs (bos 1, eos 2). Characters outside
ASCII are rare in the corpus, so they stay split into several byte-level tokens: random tokens
from a tiny model then form incomplete UTF-8 sequences, which streaming must handle.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<pad>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
CORPUS = ["hello world, the cat sat on the mat. a dog ran to the sea?", "user: hi! assistant: system: be brief"] * 30
CORPUS += ["café 日本 🙂"]


def byte_level(vocab_size: int = 96) -> Tokenizer:
    """GPT-2 style byte-level BPE (as SmolLM2's)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def metaspace(vocab_size: int = 96) -> Tokenizer:
    """SentencePiece style: '▁' marks spaces, and decoding drops the space at the start of a text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def write_tokenizer(folder: Path, tokenizer: Tokenizer | None = None) -> Path:
    """tokenizer.json + tokenizer_config.json (with a chat template) as transformers saves them."""
    (tokenizer or byte_level()).save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder
