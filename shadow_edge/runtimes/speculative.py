"""Speculative decoding: the detached shadow drafts, the attached model verifies.

    model = load_speculative("out/", draft_tokens=4, threads=2)
    result = model.generate("The capital of France is", temperature=0)  # attached's greedy text
    result.speculative                                # {"rounds", "drafted", "accepted", "acceptance"}
    model.generate("Hi", temperature=0.7, seed=1)     # sampled: distributed as attached sampling
    model.generate_batch([[1, 2], [3, 4, 5]])         # left-padded rows, each as it would be alone

A round, per row (all rows of a batch at once):
  1. draft: the shadow graph on the last token, then on each of its own drafts, one position at a
     time; the shadow head's logits, processed and transformed exactly as attached decoding's
     (penalties, logit_bias, temperature, top-k, top-p: sampling.py), give the draft distribution
     q, and each draft is drawn from it (its argmax at temperature 0). Every position's shadow
     state is kept: it depends only on the tokens up to it, so it is the one attached decoding
     computes.
  2. verify: the backbone once over those positions with those states: the attached model's
     distribution p after each, under the same transforms.
  3. accept (speculative sampling, Leviathan et al. 2023 / Chen et al. 2023): draft x stays with
     probability min(1, p(x) / q(x)); the first rejected one is replaced by a draw from
     norm(max(0, p - q)); when all stay, one more token comes from p. Each token is then
     distributed as attached sampling's, given the tokens before it. At temperature 0, p and q are
     one-hot: a draft stays when it is attached's argmax, and the replacement is that argmax, so
     the output is attached's greedy output (up to the float rounding of evaluating several
     positions in one pass, which export validation bounds).
  4. trim: both KV caches keep the accepted positions.

Batches: rows accept different numbers of drafts, and each row keeps all of its own (per-row trim,
not the minimum over rows: a row that accepts everything is not held back by one that rejects, so
the number of rounds is the slowest row's, not a round per token of whichever row rejected last).
After a round each row's kept positions are right-aligned again, padding on the left, the scheme
the attached path's batches use, so the graphs see contiguous rows (sliding windows count storage
positions). A row that runs ahead buffers its tokens; the stream yields a token of every row at a
time. The draft length adapts to the best active row (DraftLength). Sampled rows draw from their
own generator (seed): same seed, same tokens; the random numbers are consumed differently from
attached decoding, so the tokens equal attached's in distribution, not draw for draw.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import BACKBONE_GRAPH, CASCADE_GRAPHS, SHADOW_GRAPH, SHADOW_HEAD_GRAPH, read_manifest
from ..errors import BundleError, GenerationError
from .classify import refuse_generation
from .engine import Engine, left_pad, position_ids
from .generate import GenerationConfig, Step, config_processors
from .kv_cache import KVCache
from .model import ShadowEdgeModel, open_bundle
from .sampling import inverse_cdf, log_softmax, make_distribution, process_logits, seeded_generators
from .sessions import GraphRunner
from .tokenizer import Tokenizer

DEFAULT_DRAFT_TOKENS = 4


@dataclass
class SpeculativeStats:
    """One row's: backbone passes after the prompt, drafts it could use, drafts it kept."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**vars(self), "acceptance": round(self.acceptance, 4)}

    @classmethod
    def total(cls, parts: Sequence[dict[str, float]]) -> SpeculativeStats:
        """The sum of several generations' to_dict()s (a request's choices)."""
        return cls(**{name: sum(int(p[name]) for p in parts) for name in ("rounds", "drafted", "accepted")})


@dataclass
class Prefilled:
    """The prompt's shadow pass, done already (the cascade's detached answer): its states
    [1, prompt, hidden] and the shadow cache's tensors over the prompt."""

    states: np.ndarray
    cache: list[np.ndarray]


def accepts(p: float, q: float, uniform: float) -> bool:
    """Whether a draft of draft probability q and target probability p stays, given a uniform in
    [0, 1): with probability min(1, p / q)."""
    return uniform * q < p


def residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Where a rejected draft's replacement is drawn from: norm(max(0, p - q)) (p itself when
    rounding leaves nothing, i.e. p == q, where a rejection has probability 0 anyway)."""
    rest = np.maximum(p - q, 0.0)
    total = rest.sum()
    return rest / total if total > 0 else p


class Speculation:
    """The draft/verify schedule over a bundle's shadow, shadow head and backbone graphs (see the
    module docstring). Holds no per-call state: calls may run side by side."""

    def __init__(self, runners: dict[str, GraphRunner], context: int, draft_tokens: int) -> None:
        self.runners = runners  # the model's: read at each call
        self.context = context
        self.draft_tokens = draft_tokens

    @property
    def shadow(self) -> GraphRunner:
        return self.runners[SHADOW_GRAPH]

    @property
    def head(self) -> GraphRunner:
        return self.runners[SHADOW_HEAD_GRAPH]

    @property
    def backbone(self) -> GraphRunner:
        return self.runners[BACKBONE_GRAPH]

    def stream(
        self,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig,
        pad_id: int,
        prefilled: Prefilled | None = None,
        stats: Sequence[SpeculativeStats] | None = None,
    ) -> Iterator[Step]:
        """The next token of every row, as long as a row may still give one (config.max_new_tokens,
        config.eos_token_ids: stream_rows() resolves both). stats: one per row, filled as it goes."""
        if prefilled is not None and len(prompts) != 1:
            raise ValueError("a prefilled shadow pass is one prompt's")
        stats = list(stats) if stats is not None else [SpeculativeStats() for _ in prompts]
        return _Rounds(self, prompts, config, pad_id, stats).run(prefilled)


class _Rounds:
    """One call's state: the mask [batch, positions] over both caches, and per row its history
    (prompt + tokens given), budget and buffer of tokens not yet yielded."""

    def __init__(self, spec: Speculation, prompts, config: GenerationConfig, pad_id: int, stats) -> None:
        self.spec = spec
        self.batch = len(prompts)
        self.processors = config_processors(config, prompts)
        self.target = make_distribution(config.temperature, config.top_k, config.top_p)
        self.rngs = seeded_generators(config.seed, self.batch)
        self.with_logprobs = config.logprobs is not None
        self.max_new = config.max_new_tokens or spec.context
        self.eos = set(config.eos_token_ids or ())
        self.pad_id = pad_id
        self.stats = stats
        self.prompts = prompts
        self.histories = [np.asarray(p, dtype=np.int64) for p in prompts]  # prompt + tokens given
        self.produced = np.zeros(self.batch, dtype=np.int64)
        self.active = np.ones(self.batch, dtype=bool)
        # per row: (token, its log-probabilities or None, the row's stats then, whether it is an
        # accepted draft), not yet yielded
        self.buffers: list[deque] = [deque() for _ in prompts]

    def run(self, prefilled: Prefilled | None) -> Iterator[Step]:
        spec = self.spec
        shadow_cache, backbone_cache = spec.shadow.new_cache(self.batch), spec.backbone.new_cache(self.batch)
        ids, self.mask = left_pad(self.prompts, self.pad_id)
        positions = position_ids(self.mask)
        if prefilled is None:
            states = spec.shadow.step(shadow_cache, ids, self.mask, positions)
        else:
            states = prefilled.states
            shadow_cache.update(prefilled.cache)
        logits = spec.backbone.step(backbone_cache, ids, self.mask, positions, shadow_states=states)[:, -1]
        logits = process_logits(self.processors, self.histories, logits)
        first = inverse_cdf(self.target(logits), np.array([rng.random() for rng in self.rngs]))
        for b in range(self.batch):
            self._give(b, int(first[b]), logits[b], from_draft=False)
        self.pending = first  # given, in neither cache yet
        draft = DraftLength(spec.draft_tokens)
        while True:
            yield from self._drain()
            if not self.active.any():
                return
            k, accepted = self._round(draft.k, shadow_cache, backbone_cache)
            draft.update(k, accepted)

    def _give(self, b: int, token: int, logits: np.ndarray, from_draft: bool) -> None:
        self.histories[b] = np.append(self.histories[b], token)
        self.produced[b] += 1
        self.active[b] = self.produced[b] < self.max_new and token not in self.eos
        logprobs = log_softmax(logits) if self.with_logprobs else None
        self.buffers[b].append((token, logprobs, self.stats[b].to_dict(), from_draft))

    def _drain(self) -> Iterator[Step]:
        """Steps while every row has a token buffered, or has no more to give (then the pad, which
        stream_rows drops: the row is finished there)."""
        while any(self.buffers) and all(buf or not on for buf, on in zip(self.buffers, self.active, strict=True)):
            rows = [
                buf.popleft() if buf else (self.pad_id, None, stats.to_dict(), False)
                for buf, stats in zip(self.buffers, self.stats, strict=True)
            ]
            logprobs = None
            if self.with_logprobs:
                vocab = next(lp for _, lp, _, _ in rows if lp is not None).shape[-1]
                logprobs = np.stack([lp if lp is not None else np.zeros(vocab) for _, lp, _, _ in rows])
            tokens = np.array([r[0] for r in rows], dtype=np.int64)
            yield Step(tokens, logprobs, [r[2] for r in rows], [r[3] for r in rows])

    def _round(self, want: int, shadow_cache: KVCache, backbone_cache: KVCache) -> tuple[int, int]:
        """One draft/verify round over every row; returns (drafts per row, the most a row accepted)."""
        spec, batch = self.spec, self.batch
        width = self.mask.shape[1]
        remaining = np.where(self.active, self.max_new - self.produced, 0)
        # a round gives a row its accepted drafts and one token more: drafting beyond what a row may
        # still give is wasted; positions stay inside the context
        k = max(0, min(want, spec.context - width - 1, int(remaining.max()) - 1))
        limits = np.minimum(k, np.maximum(remaining - 1, 0))  # drafts each row may keep
        # 1. draft
        fed, states, drafts, draft_probs = [self.pending], [], [], []
        histories = list(self.histories)
        mask = self.mask
        for j in range(k + 1):
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            states.append(spec.shadow.step(shadow_cache, fed[-1][:, None], mask, position_ids(mask)[:, -1:]))
            if j == k:
                break
            logits = process_logits(self.processors, histories, spec.head.head(states[-1])[:, -1])
            q = self.target(logits)
            tokens = inverse_cdf(q, np.array([rng.random() for rng in self.rngs]))
            draft_probs.append(q)
            drafts.append(tokens)
            fed.append(tokens)
            histories = [np.append(h, t) for h, t in zip(histories, tokens, strict=True)]
        # 2. verify: the backbone over every fed position at once
        verified = self._verify(backbone_cache, np.stack(fed, axis=1), mask, np.concatenate(states, axis=1))
        # 3. accept, row by row; the target at position j needs the drafts before it as history,
        # so it is computed (for all rows at once) only while some row is still deciding
        kept = np.zeros(batch, dtype=np.int64)  # fed positions each row keeps in the caches
        accepted = np.zeros(batch, dtype=np.int64)
        deciding = self.active.copy()
        histories = list(self.histories)
        for j in range(k + 1):
            if not deciding.any():
                break
            logits = process_logits(self.processors, histories, verified[:, j])
            p = self.target(logits)
            for b in np.flatnonzero(deciding):
                rng = self.rngs[b]
                x = int(drafts[j][b]) if j < limits[b] else None  # None: no draft left to keep
                stays = x is not None and accepts(p[b, x], draft_probs[j][b, x], rng.random())
                if stays:
                    token = x
                else:  # the rejected draft's replacement, or the token after all the drafts
                    source = residual(p[b], draft_probs[j][b]) if x is not None else p[b]
                    token = int(inverse_cdf(source[None], np.array([rng.random()]))[0])
                    self.pending[b] = token
                if not stays or token in self.eos:  # the row's round ends
                    accepted[b] = j + stays
                    self._count(b, limits[b], accepted[b])
                    kept[b] = j + 1
                    deciding[b] = False
                self._give(b, token, logits[b], from_draft=stays)
            if j < k:
                histories = [np.append(h, t) for h, t in zip(histories, drafts[j], strict=True)]
        # 4. trim: each row keeps its last token and accepted drafts, the rows right-aligned again
        if (kept == kept[0]).all():
            self.mask = mask[:, : width + kept[0]]
            for cache in (shadow_cache, backbone_cache):
                cache.trim(width + int(kept[0]))
        else:
            ends = width + kept
            leading = np.argmax(mask != 0, axis=1)  # every row has a real prompt token
            drop = int((leading + ends.max() - ends).min())  # padding in front of every row
            self.mask = _right_aligned(mask[:, None, :, None], ends, drop)[:, 0, :, 0]
            for cache in (shadow_cache, backbone_cache):
                cache.update([_right_aligned(t, ends, drop) for t in cache.tensors])
        return k, int(accepted.max())

    def _verify(self, cache: KVCache, fed: np.ndarray, mask: np.ndarray, states: np.ndarray) -> np.ndarray:
        """The backbone's logits [batch, fed, vocab] after each fed position [batch, fed]. A batch
        runs row by row: onnxruntime's GroupQueryAttention (fused bundles) refuses several new
        tokens with a past in a batch ("batch_size must be 1 when sequence_length > 1 and past
        context is given", 1.32). Rows with nothing left to give are not run (zeros)."""
        backbone, positions = self.spec.backbone, position_ids(mask)[:, -fed.shape[1] :]
        if self.batch == 1:
            return backbone.step(cache, fed, mask, positions, shadow_states=states, logits_to_keep=0)
        logits, presents = [], []
        for b in range(self.batch):
            row = backbone.new_cache(1)
            row.update([t[b : b + 1] for t in cache.tensors])
            if self.active[b]:
                one = slice(b, b + 1)
                feeds = dict(shadow_states=states[one], logits_to_keep=0)
                logits.append(backbone.step(row, fed[one], mask[one], positions[one], **feeds))
            else:
                logits.append(None)
                row.update([np.pad(t, ((0, 0), (0, 0), (0, fed.shape[1]), (0, 0))) for t in row.tensors])
            presents.append(row.tensors)
        cache.update([np.concatenate(parts, axis=0) for parts in zip(*presents, strict=True)])
        shape = next(x for x in logits if x is not None).shape
        return np.concatenate([x if x is not None else np.zeros(shape, np.float32) for x in logits], axis=0)

    def _count(self, b: int, drafted: int, accepted: int) -> None:
        stats = self.stats[b]
        stats.rounds += 1
        stats.drafted += int(drafted)
        stats.accepted += int(accepted)


def _right_aligned(t: np.ndarray, ends: np.ndarray, drop: int) -> np.ndarray:
    """Row b's first ends[b] positions of t [batch, heads, positions, head_dim], right-aligned (the
    row padded on the left), without the first `drop` positions, which are padding in every row."""
    longest = int(ends.max())
    out = np.zeros((t.shape[0], t.shape[1], longest - drop, t.shape[3]), dtype=t.dtype)
    for b, end in enumerate(ends.tolist()):
        shift = longest - end
        skip = max(0, drop - shift)  # the row's own leading padding that falls in the dropped part
        out[b, :, shift + skip - drop :] = t[b, :, skip:end]
    return out


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


class SpeculativeModel(ShadowEdgeModel):
    """The attached model, decoded with the shadow's drafts (see the module docstring). Each
    result and Response carries its call's stats (`speculative`)."""

    def __init__(self, root: Path, manifest, engine: Engine, tokenizer: Tokenizer | None, draft_tokens: int) -> None:
        super().__init__(root, manifest, engine, tokenizer)
        self.speculation = Speculation(engine.runners, self.context_length, draft_tokens)
        self._last_stats = SpeculativeStats()

    @property
    def mode(self) -> str:
        return "speculative"

    @property
    def draft_tokens(self) -> int:
        return self.speculation.draft_tokens

    @property
    def stats(self) -> SpeculativeStats:
        """Deprecated: the first row's stats of the latest call, shared by every thread; read
        `result.speculative` (or a Response's) instead."""
        warnings.warn("SpeculativeModel.stats is deprecated: read result.speculative", DeprecationWarning, 2)
        return self._last_stats

    def token_stream(self, prompts: Sequence[Sequence[int]], config: GenerationConfig, pad_id: int) -> Iterator[Step]:
        stats = [SpeculativeStats() for _ in prompts]
        self._last_stats = stats[0]
        return self.speculation.stream(prompts, config, pad_id, stats=stats)


def check_draft_tokens(draft_tokens: int) -> None:
    if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 1:
        raise GenerationError(f"draft_tokens must be a positive integer, got {draft_tokens!r}")


def load_speculative(
    bundle: str | Path,
    draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    threads: int | None = None,
    verify: str = "hash",
    prepack: bool = True,
) -> SpeculativeModel:
    """Open a bundle for speculative decoding: its shadow, shadow head and backbone graphs.
    draft_tokens: how many tokens the shadow drafts per backbone pass, at most."""
    check_draft_tokens(draft_tokens)
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
