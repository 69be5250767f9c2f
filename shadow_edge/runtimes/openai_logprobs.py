"""OpenAI's log-probability objects, built from the runtime's (token id, logprob, top) entries.

    completions  {"tokens": [str], "token_logprobs": [float | null], "top_logprobs": [{str: float} | null],
                  "text_offset": [int]}
    chat         {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}

A token's string is its own decoded text (special tokens included), or "token_id:ID" for a bundle
without a tokenizer, as vLLM writes token ids. A prompt's first token has no log-probability
(null): nothing predicts it. Torch-free, like the rest of runtimes/.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .generate import GenerationResult

# (token id, its log-probability or None, the best (id, log-probability) alternatives or None)
Entry = tuple[int, float | None, list[tuple[int, float]] | None]


def token_text(tokenizer: Any, token: int) -> str:
    if tokenizer is None:
        return f"token_id:{token}"
    return tokenizer.decode([token], skip_special_tokens=False)


def generated_entries(result: GenerationResult) -> list[Entry]:
    if result.logprobs is None or result.top_logprobs is None:
        return []
    return list(zip(result.token_ids, result.logprobs, result.top_logprobs, strict=True))


def prompt_entries(ids: Sequence[int], scored: Sequence[tuple[float, list] | None]) -> list[Entry]:
    """ShadowEdgeModel.prompt_logprobs()'s answer as entries."""
    return [(token, None, None) if s is None else (token, s[0], s[1]) for token, s in zip(ids, scored, strict=True)]


def completion_logprobs(tokenizer: Any, entries: Sequence[Entry]) -> dict[str, list]:
    tokens, offsets, offset = [], [], 0
    for token, _, _ in entries:
        tokens.append(token_text(tokenizer, token))
        offsets.append(offset)
        offset += len(tokens[-1])
    tops = [None if top is None else {token_text(tokenizer, t): lp for t, lp in top} for _, _, top in entries]
    return {
        "tokens": tokens,
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer: Any, entries: Sequence[Entry]) -> dict[str, list]:
    def item(token: int, logprob: float | None) -> dict[str, Any]:
        text = token_text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = [item(t, lp) | {"top_logprobs": [item(a, b) for a, b in top or []]} for t, lp, top in entries]
    return {"content": content}
