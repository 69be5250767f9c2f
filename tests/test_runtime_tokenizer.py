"""Tokenizer wrapper: streaming detokenization and chat templates (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_tokenizer import CHAT_TEMPLATE, byte_level, metaspace

from shadow_edge.errors import GenerationError
from shadow_edge.runtimes.tokenizer import StreamDecoder, Tokenizer

CONFIG = {"chat_template": CHAT_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello 🙂"},
    {"role": "assistant", "content": "the cat"},
    {"role": "user", "content": "café?"},
]


def wrap(rust_tokenizer, **config) -> Tokenizer:
    return Tokenizer(rust_tokenizer, {**CONFIG, **config}, bos_token_id=1)


def stream(tokenizer: Tokenizer, ids) -> list[str]:
    decoder = StreamDecoder(tokenizer)
    return [decoder.add(t) for t in ids] + [decoder.flush()]


def test_stream_holds_back_a_multibyte_character_until_its_last_byte():
    tokenizer = wrap(byte_level())
    ids = tokenizer.encode("a🙂s")
    assert len(ids) == 6  # a, four byte tokens, s
    assert stream(tokenizer, ids) == ["a", "", "", "", "🙂", "s", ""]


@pytest.mark.parametrize("make", [byte_level, metaspace])
def test_stream_pieces_concatenate_to_the_decode_of_all_tokens(make):
    tokenizer = wrap(make())
    vocab = tokenizer.tokenizer.get_vocab_size()
    rng = np.random.default_rng(0)
    for _ in range(200):  # random ids: broken UTF-8, special tokens, spaces at piece starts
        ids = rng.integers(0, vocab, size=int(rng.integers(1, 30))).tolist()
        assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)


def test_stream_keeps_the_spaces_sentencepiece_drops_at_a_text_start():
    tokenizer = wrap(metaspace())
    ids = tokenizer.encode("the cat sat")
    assert tokenizer.decode(ids[1:]) == "cat sat"  # decoding a suffix alone loses the space
    assert "".join(stream(tokenizer, ids)) == "the cat sat"


def test_stream_emits_nothing_for_skipped_special_tokens():
    tokenizer = wrap(byte_level())
    pieces = stream(tokenizer, [*tokenizer.encode("the cat"), 2])
    assert pieces[-2:] == ["", ""] and "".join(pieces) == "the cat"


# SmolLM2-Instruct's template: blocks on their own lines (trim_blocks/lstrip_blocks), loop.first
SMOLLM2_TEMPLATE = """{% for message in messages %}
  {% if loop.first and messages[0]['role'] != 'system' %}
{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}
  {% endif %}
{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}
{% endfor %}
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, SMOLLM2_TEMPLATE], ids=["tiny", "smollm2"])
def test_chat_template_renders_as_transformers_does(template):
    from transformers import PreTrainedTokenizerFast

    rust = byte_level()
    config = {**CONFIG, "chat_template": template}
    reference = PreTrainedTokenizerFast(tokenizer_object=rust, **config)
    for messages in (MESSAGES, MESSAGES[1:]):
        for add in (True, False):
            want = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
            assert wrap(rust, **config).apply_chat_template(messages, add_generation_prompt=add) == want
    ids = reference.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert wrap(rust, **config).encode_chat(MESSAGES) == list(ids)


def test_chat_template_raise_exception_becomes_a_generation_error():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}"
    with pytest.raises(GenerationError, match="first message must be user"):
        wrap(byte_level(), chat_template=template).apply_chat_template(MESSAGES)


def test_chat_without_template_or_with_bad_messages_is_a_generation_error():
    with pytest.raises(GenerationError, match="no chat template"):
        wrap(byte_level(), chat_template=None).apply_chat_template(MESSAGES)
    with pytest.raises(GenerationError, match="role"):
        wrap(byte_level()).apply_chat_template([{"content": "no role"}])


def test_encode_adds_bos_only_when_the_bundle_asks():
    assert wrap(byte_level()).encode("hi")[0] != 1
    assert wrap(byte_level(), add_bos_token=True).encode("hi")[0] == 1
    assert wrap(byte_level(), add_bos_token=True).encode("hi", add_special_tokens=False)[0] != 1
