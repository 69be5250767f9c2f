"""The cascade (edge-cloud) schedule: the detached shadow answers first; when the escalation
policy says so (escalation.py), the request goes on to the attached model on this device or to
a remote OpenAI-compatible server.

    model = load_cascade("out/", threads=2)                        # shadow, shadow head, backbone
    model = load_cascade("out/", remote="http://server:8000")      # shadow and shadow head only
    result = model.chat([{"role": "user", "content": "sit down"}])
    result.text, result.served_by, result.escalated, result.reason

The detached answer comes from the shadow graph plus the shadow_head graph rather than from
shadow_lm: the same logits (validated at export), but the prompt's shadow states are kept. On a
local escalation the backbone runs over the prompt with those states, and the shadow KV cache of
the prompt is handed over as it is: the shadow network never processes the prompt twice.
The escalated answer is the attached model's answer to the prompt alone (it does not continue
the shadow's partial answer), so a greedy cascade that escalates gives the attached model's
greedy tokens. One prompt at a time: escalation is a per-request decision.

    model = load_cascade("out/", draft_tokens=4)     # = open("out/", "cascade", draft_tokens=4)

With draft_tokens, a local escalation is decoded speculatively (speculative.py): the shadow, whose
cache of the prompt is warm already, drafts up to that many tokens per backbone pass, and the
backbone verifies them. The answer is the same (attached's greedy tokens at temperature 0, its
sampling distribution otherwise); the result's `speculative` holds the drafts' stats.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import BACKBONE_GRAPH, CASCADE_GRAPHS, SHADOW_GRAPH, SHADOW_HEAD_GRAPH, read_manifest
from ..errors import GenerationError
from .classify import refuse_generation
from .engine import Engine, Sequences
from .escalation import Decision, EscalationPolicy, next_token_stats
from .generate import (
    GenerationConfig,
    GenerationResult,
    Response,
    collect,
    peak_rss_mb,
    resolve_max_new_tokens,
    stream_rows,
)
from .model import ShadowEdgeModel, open_bundle, open_graphs, verify_graphs
from .remote import RemoteChunk, RemoteModel
from .sessions import GraphRunner
from .speculative import Prefilled, Speculation, check_draft_tokens
from .tokenizer import Message, Tokenizer


@dataclass
class CascadeResult(GenerationResult):
    escalated: bool = False
    served_by: str = "shadow"  # "shadow" | "attached" | "remote"
    reason: str | None = None  # why it escalated
    shadow_token_ids: list[int] = field(default_factory=list)  # what the shadow generated before deciding
    shadow_text: str | None = None
    shadow_s: float = 0.0  # time the shadow took, up to its decision
    latency_s: float = 0.0  # the whole call


class _ShadowFirst:
    """Engine-like (start/forward) detached decoding as shadow graph -> shadow head, which keeps
    the prompt's shadow states and cache and, while `deciding`, the stats of each next-token
    distribution (a softmax over the vocabulary: not paid once the shadow's answer stands)."""

    mode = "detached"

    def __init__(self, shadow: GraphRunner, head: GraphRunner, model) -> None:
        self.shadow = shadow
        self.head = head
        self.model = model
        self.prompt_states: np.ndarray | None = None
        self.prompt_cache: list[np.ndarray] = []
        self.deciding = True
        self.stats: list[tuple[float, float]] = []  # (top-1 probability, entropy) per forward while deciding

    def start(self, batch: int) -> Sequences:
        return Sequences(caches={SHADOW_GRAPH: self.shadow.new_cache(batch)}, mask=np.zeros((batch, 0), np.int64))

    def forward(self, seqs: Sequences, input_ids: np.ndarray, mask: np.ndarray | None = None, keep: int = 1):
        positions = seqs.advance(input_ids, mask)
        cache = seqs.caches[SHADOW_GRAPH]
        states = self.shadow.step(cache, input_ids, seqs.mask, positions)
        if self.prompt_states is None:
            self.prompt_states, self.prompt_cache = states, list(cache.tensors)
        logits = self.head.head(states[:, -keep:] if keep else states)
        if self.deciding:
            self.stats.append(next_token_stats(logits[0, -1]))
        return logits


class _Resumed:
    """The attached engine whose first forward (the prompt) reuses the shadow's states and cache."""

    mode = "attached"

    def __init__(self, engine: Engine, shadow_first: _ShadowFirst) -> None:
        self.engine = engine
        self.model = engine.model
        self.states = shadow_first.prompt_states
        self.cache = shadow_first.prompt_cache

    def start(self, batch: int) -> Sequences:
        seqs = self.engine.start(batch)
        seqs.caches[SHADOW_GRAPH].update(self.cache)
        return seqs

    def forward(self, seqs: Sequences, input_ids: np.ndarray, mask: np.ndarray | None = None, keep: int = 1):
        states, self.states = self.states, None
        return self.engine.forward(seqs, input_ids, mask, keep, shadow_states=states)


class CascadeStream:
    """Iterate for the Responses of the answer that stands (the shadow's is held back until the
    policy's window has passed); served_by, escalated and reason are set once decided."""

    def __init__(self, model: CascadeModel, ids: list[int], request: Any, config: GenerationConfig) -> None:
        self.served_by: str | None = None
        self.escalated = False
        self.reason: str | None = None
        self.token_ids: list[int] = []
        self.shadow_token_ids: list[int] = []
        self.shadow_text = ""
        self.shadow_s = 0.0
        self.started = time.perf_counter()
        self._responses = model._answer(self, ids, request, config)

    def __iter__(self) -> CascadeStream:
        return self

    def __next__(self) -> Response:
        response = next(self._responses)
        if self.served_by == "remote":
            return response  # its chunks carry their ids in self.token_ids already
        self.token_ids.append(response.token)
        return response

    def close(self) -> None:
        self._responses.close()


class CascadeModel(ShadowEdgeModel):
    """A bundle run as a cascade. `engine` is the attached Engine, None until the first local
    escalation opens the backbone (`open_backbone`; never with a remote): a cascade whose shadow
    answers holds the memory of detached mode, not of attached (issue 15: 360 MB, not 910 MB)."""

    def __init__(
        self,
        root: Path,
        manifest,
        runners: dict[str, GraphRunner],
        tokenizer: Tokenizer | None,
        policy: EscalationPolicy,
        remote: RemoteModel | None,
        open_backbone: Callable[[], dict[str, GraphRunner]] | None = None,
        draft_tokens: int | None = None,
    ) -> None:
        super().__init__(root, manifest, None, tokenizer)  # type: ignore[arg-type]
        self.runners = runners
        self.policy = policy
        self.remote = remote
        self.draft_tokens = draft_tokens  # None: a local escalation decodes plainly
        self._open_backbone = open_backbone
        self._opening = threading.Lock()

    def attached_engine(self) -> Engine:
        """The attached Engine, its backbone session opened on the first call (thread-safe)."""
        with self._opening:
            if self.engine is None:
                if self._open_backbone is None:
                    raise GenerationError("this cascade escalates to a remote server: it has no local backbone")
                self.runners.update(self._open_backbone())
                self.engine = Engine("attached", self.runners, self.manifest.model)
        return self.engine

    @property
    def mode(self) -> str:
        return "cascade"

    def __repr__(self) -> str:
        to = self.remote.url if self.remote else "attached on this device"
        return f"CascadeModel({str(self.root)!r}, escalates to {to}, policy={self.policy})"

    def config(self, **overrides) -> GenerationConfig:
        """As ShadowEdgeModel's; without log-probabilities, which a remote's answer does not carry."""
        if overrides.get("logprobs") is not None:
            raise GenerationError("the cascade gives no log-probabilities: load the bundle in one mode for them")
        return super().config(**overrides)

    def stream(self, prompt: str | Sequence[int], **settings) -> CascadeStream:
        """The answer token by token; the stream's served_by/escalated/reason tell who gave it."""
        return CascadeStream(self, self.encode(prompt), prompt, self.config(**settings))

    def stream_chat(self, messages: Sequence[Message], **settings) -> CascadeStream:
        """Like stream() for a conversation; a remote receives the messages themselves."""
        return CascadeStream(self, self.encode_chat(messages), list(messages), self.config(**settings))

    def generate(self, prompt: str | Sequence[int], **settings) -> CascadeResult:
        return self._collect(self.stream(prompt, **settings))

    def chat(self, messages: Sequence[Message], **settings) -> CascadeResult:
        return self._collect(self.stream_chat(messages, **settings))

    def generate_batch(self, prompts, **settings):
        raise GenerationError("the cascade answers one prompt at a time (escalation is decided per prompt)")

    stream_batch = generate_batch

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        raise GenerationError("the cascade has no single set of logits: load the bundle in one mode for that")

    # -- the schedule -------------------------------------------------------------------------------

    def _answer(self, out: CascadeStream, ids: list[int], request: Any, config: GenerationConfig) -> Iterator[Response]:
        shadow = _ShadowFirst(self.runners[SHADOW_GRAPH], self.runners[SHADOW_HEAD_GRAPH], self.manifest.model)
        decision = Decision(self.policy)
        held: list[Response] = []
        reason = None
        responses = self._rows(shadow, ids, config)
        try:
            for r in responses:
                if out.served_by is not None:  # the shadow's answer stands
                    yield r
                    continue
                top1, entropy = shadow.stats[len(decision.tokens)]
                reason = decision.observe(r.token, r.text, top1, entropy)
                if reason is None and r.finish_reason is not None:
                    reason = decision.finish()
                if reason is not None:
                    break
                held.append(r)
                if decision.settled or r.finish_reason is not None:
                    out.served_by = "shadow"
                    shadow.deciding = False
                    yield from held
        finally:
            responses.close()
        out.shadow_token_ids, out.shadow_text = decision.tokens, decision.text
        out.shadow_s = time.perf_counter() - out.started
        if reason is None:
            return
        out.escalated, out.reason = True, reason
        if self.remote is not None:
            out.served_by = "remote"
            yield from self._remote(out, ids, request, config)
        else:
            out.served_by = "attached"
            engine = self.attached_engine()
            if self.draft_tokens is None:
                yield from self._rows(_Resumed(engine, shadow), ids, config)
                return
            # the shadow's pass over the prompt is done: drafting starts from its states and cache
            speculation = Speculation(self.runners, self.context_length, self.draft_tokens)
            warm = partial(speculation.stream, prefilled=Prefilled(shadow.prompt_states, shadow.prompt_cache))
            yield from self._rows(engine, ids, config, warm)

    def _rows(self, engine, ids: list[int], config: GenerationConfig, token_stream=None) -> Iterator[Response]:
        return stream_rows(
            engine,
            self.tokenizer,
            [ids],
            config,
            self.default_max_new_tokens,
            self.eos_token_ids,
            self.pad_token_id,
            token_stream,
        )

    def _remote(self, out: CascadeStream, ids: list[int], request: Any, config: GenerationConfig) -> Iterator[Response]:
        """The remote's answer as Responses: one per SSE chunk, token = the chunk's last id (-1 if
        the server sends no ids); the chunk's ids go to out.token_ids."""
        assert self.remote is not None
        max_tokens = resolve_max_new_tokens(
            config.max_new_tokens, self.default_max_new_tokens, len(ids), self.context_length
        )
        started = time.perf_counter()
        first_s = 0.0
        count = 0
        previous: RemoteChunk | None = None
        for chunk in itertools.chain(self.remote.stream(request, config, max_tokens), [None]):
            if previous is not None:
                out.token_ids += previous.token_ids
                count += len(previous.token_ids) or 1
                now = time.perf_counter() - started
                first_s = first_s or now
                finish = (previous.finish_reason or "stop") if chunk is None else None
                yield Response(
                    index=0,
                    token=previous.token_ids[-1] if previous.token_ids else -1,
                    text=previous.text,
                    prompt_tokens=len(ids),
                    new_tokens=count,
                    prefill_s=first_s,
                    decode_tok_per_s=(count - 1) / (now - first_s) if now > first_s else 0.0,
                    peak_rss_mb=peak_rss_mb(),
                    finish_reason=finish,
                )
            previous = chunk

    def _collect(self, stream: CascadeStream) -> CascadeResult:
        (result,) = collect(stream, 1, "cascade", self.tokenizer is not None)
        return CascadeResult(
            **{**result.to_dict(), "token_ids": stream.token_ids},  # a remote chunk may carry several ids
            escalated=stream.escalated,
            served_by=stream.served_by or "shadow",
            reason=stream.reason,
            shadow_token_ids=stream.shadow_token_ids,
            shadow_text=stream.shadow_text if self.tokenizer is not None else None,
            shadow_s=stream.shadow_s,
            latency_s=time.perf_counter() - stream.started,
        )


def load_cascade(
    bundle: str | Path,
    remote: str | None = None,
    threads: int | None = None,
    verify: str = "hash",
    prepack: bool = True,
    timeout: float = 120.0,
    remote_api_key: str | None = None,
    draft_tokens: int | None = None,
    **policy: Any,
) -> CascadeModel:
    """Open a bundle as a cascade. remote: the URL of an OpenAI-compatible server to escalate to
    (the backbone is then not loaded), sent remote_api_key as a Bearer token if given; otherwise
    escalation continues in attached mode here, speculatively with draft_tokens (the most drafted
    per backbone pass; None: plain attached decoding).
    policy: EscalationPolicy settings (marker, marker_ids, confidence_threshold, max_mean_entropy,
    window) over the bundle's defaults (manifest.escalation); None keeps a default."""
    root = Path(bundle)
    manifest = read_manifest(root)
    refuse_generation(manifest)  # a classifier bundle has no LM head
    base_policy = EscalationPolicy.from_dict(manifest.escalation)
    chosen = base_policy.updated(**policy)
    if draft_tokens is not None:
        check_draft_tokens(draft_tokens)
        if remote:
            raise GenerationError("draft_tokens speed up a local escalation: a cascade with a remote has none")
    client = RemoteModel(remote, timeout=timeout, api_key=remote_api_key) if remote else None
    if client is None and BACKBONE_GRAPH not in manifest.graphs:
        raise GenerationError("this bundle has no backbone graph: a cascade needs --remote URL to escalate to")
    names = CASCADE_GRAPHS["remote" if client else "local"]
    purpose = "the cascade"
    verify_graphs(root, manifest, names, verify, purpose)  # all checked now; the backbone opened when first needed
    shadow_side = [n for n in names if n != BACKBONE_GRAPH]
    runners, tokenizer = open_bundle(root, manifest, shadow_side, threads, "size", prepack, purpose)

    def open_backbone() -> dict[str, GraphRunner]:
        return open_graphs(root, manifest, [BACKBONE_GRAPH], threads, "size", prepack, purpose=purpose)

    opener = open_backbone if BACKBONE_GRAPH in names else None
    return CascadeModel(root, manifest, runners, tokenizer, chosen, client, opener, draft_tokens)
