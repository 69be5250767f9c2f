"""Speculative decoding: the detached shadow drafts, the attached model verifies.

    model = load_speculative("out/", draft_tokens=4, threads=2)
    model.generate("The capital of France is", temperature=0).text   # attached's greedy text
    model.stats                                                       # drafted / accepted counts

Per round the shadow graph runs on the last accepted token and then on each of its own drafts,
one position at a time (the shadow head's argmax is the next draft), keeping every position's
shadow state. The backbone then runs once over those positions with those states and gives the
attached model's next token after each. The leading drafts that agree are accepted, and the
backbone's own token after them comes free; both KV caches are trimmed back to the accepted
positions. A position's shadow state depends only on the tokens up to it, so it is the state
attached decoding computes: the output is the attached model's greedy output (up to the float
rounding of evaluating several positions in one pass, which export validation bounds), with one
backbone pass per round instead of one per token. Greedy only (a repetition penalty is applied
when verifying); one prompt at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import BACKBONE_GRAPH, CASCADE_GRAPHS, SHADOW_GRAPH, SHADOW_HEAD_GRAPH, read_manifest
from ..errors import BundleError, GenerationError
from .classify import refuse_generation
from .engine import Engine
from .generate import GenerationConfig, config_processors
from .model import ShadowEdgeModel, open_bundle
from .tokenizer import Tokenizer

DEFAULT_DRAFT_TOKENS = 4


@dataclass
class SpeculativeStats:
    rounds: int = 0  # backbone passes after the prompt
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**vars(self), "acceptance": round(self.acceptance, 4)}


class SpeculativeModel(ShadowEdgeModel):
    """The attached model, decoded greedily with the shadow's drafts (see the module docstring)."""

    def __init__(self, root: Path, manifest, engine: Engine, tokenizer: Tokenizer | None, draft_tokens: int) -> None:
        super().__init__(root, manifest, engine, tokenizer)
        self.draft_tokens = draft_tokens
        self.stats = SpeculativeStats()  # of the last call

    @property
    def mode(self) -> str:
        return "speculative"

    def token_stream(self, prompts: Sequence[Sequence[int]], config: GenerationConfig, pad_id: int):
        if len(prompts) != 1:
            raise GenerationError("speculative decoding takes one prompt at a time")
        if config.temperature != 0:
            raise GenerationError(
                "speculative decoding gives the attached model's greedy output: use temperature 0 (--greedy)"
            )
        self.stats = SpeculativeStats()
        processors = config_processors(config, prompts)
        return self._tokens(list(prompts[0]), processors, self.stats, config.max_new_tokens or self.context_length)

    def _tokens(self, prompt: list[int], processors, stats: SpeculativeStats, max_new: int) -> Iterator[np.ndarray]:
        runners = self.engine.runners
        shadow, head, backbone = runners[SHADOW_GRAPH], runners[SHADOW_HEAD_GRAPH], runners[BACKBONE_GRAPH]
        shadow_cache, backbone_cache = shadow.new_cache(1), backbone.new_cache(1)
        context = self.context_length
        history = np.asarray(prompt, dtype=np.int64)

        def run(runner, cache, ids: list[int], start: int, **extra) -> np.ndarray:
            positions = np.arange(start, start + len(ids), dtype=np.int64)[None]
            mask = np.ones((1, start + len(ids)), dtype=np.int64)
            return runner.step(cache, np.asarray([ids], dtype=np.int64), mask, positions, **extra)

        def greedy(logits: np.ndarray, seen: np.ndarray) -> int:
            for process in processors:
                logits = process([seen], logits[None])[0]
            return int(np.argmax(logits))

        states = run(shadow, shadow_cache, prompt, 0)
        logits = run(backbone, backbone_cache, prompt, 0, shadow_states=states)[0, -1]
        token = greedy(logits, history)
        length = len(prompt)  # positions in both caches; `token` is accepted but in neither yet
        draft = DraftLength(self.draft_tokens)
        produced = 0
        while True:
            yield np.array([token], dtype=np.int64)
            produced += 1
            history = np.append(history, token)
            # draft: the shadow on `token`, then on each draft; k drafts need k + 1 shadow positions.
            # A round gives its accepted drafts and one token more: drafting beyond what may still
            # be generated (max_new - produced) is wasted work
            k = max(0, min(draft.k, context - length - 2, max_new - produced - 1))
            fed, drafts, states = [token], [], []
            for j in range(k + 1):
                states.append(run(shadow, shadow_cache, [fed[-1]], length + j))
                if j < k:
                    drafts.append(int(np.argmax(head.head(states[-1])[0, -1])))
                    fed.append(drafts[-1])
            # verify: the backbone over every fed position at once
            states = np.concatenate(states, axis=1)
            logits = run(backbone, backbone_cache, fed, length, shadow_states=states, logits_to_keep=0)[0]
            accepted = []
            for j in range(k):
                if greedy(logits[j], np.append(history, np.asarray(accepted, dtype=np.int64))) != drafts[j]:
                    break
                accepted.append(drafts[j])
            history = np.append(history, np.asarray(accepted, dtype=np.int64))
            token = greedy(logits[len(accepted)], history)
            stats.rounds += 1
            stats.drafted += k
            stats.accepted += len(accepted)
            draft.update(k, len(accepted))
            length += len(accepted) + 1
            shadow_cache.trim(length)
            backbone_cache.trim(length)
            for t in accepted:
                yield np.array([t], dtype=np.int64)
            produced += len(accepted)


class DraftLength:
    """How many tokens to draft next: one more after a fully accepted round (up to the maximum),
    the accepted count + 1 after a partial one, half after a rejected first draft. At 0 the rounds
    are plain attached steps; every PROBE_EVERY of them tries one draft again."""

    PROBE_EVERY = 16

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.k = maximum
        self.idle = 0

    def update(self, drafted: int, accepted: int) -> None:
        if drafted == 0:
            self.idle += 1
            self.k = 1 if self.idle >= self.PROBE_EVERY else 0
            self.idle = 0 if self.k else self.idle
        elif accepted == drafted:
            self.k = min(self.maximum, drafted + 1)
        else:
            self.k = accepted + 1 if accepted else drafted // 2


def load_speculative(
    bundle: str | Path,
    draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    threads: int | None = None,
    verify: str = "hash",
    prepack: bool = True,
) -> SpeculativeModel:
    """Open a bundle for speculative decoding: its shadow, shadow head and backbone graphs.
    draft_tokens: how many tokens the shadow drafts per backbone pass."""
    if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 1:
        raise GenerationError(f"draft_tokens must be a positive integer, got {draft_tokens!r}")
    root = Path(bundle)
    manifest = read_manifest(root)
    refuse_generation(manifest)  # a classifier bundle has no LM head
    if "attached" not in manifest.modes:
        raise BundleError(
            "speculative decoding needs the attached graphs; this bundle has only: " + ", ".join(manifest.modes)
        )
    names = CASCADE_GRAPHS["local"]  # shadow, shadow head, backbone
    runners, tokenizer = open_bundle(root, manifest, names, threads, verify, prepack, "speculative decoding")
    return SpeculativeModel(root, manifest, Engine("attached", runners, manifest.model), tokenizer, draft_tokens)
