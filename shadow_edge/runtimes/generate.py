"""Generation in three layers, as in mlx-lm:

    step_tokens()   the step generator: prefill, then one sampled token per row per step (ids only)
    stream_rows()   per-token `Response`s with text pieces, stop conditions and stats
    collect()       drains a stream into one `GenerationResult` per row (the convenience call)

A row finishes on an EOS id ("eos", the id is kept in token_ids, its text is not), on a stop
string ("stop", the text ends before the stop string, token_ids end with the token that
completed it) or after max_new_tokens ("length"). Rows of a batch finish independently; a
finished row's cache keeps being fed until the whole batch is done, its tokens are dropped.

With `logprobs` set, each Response also carries its token's log-probability and the `logprobs`
most probable alternatives, from the same processed logits the sampler drew from (sampling.py).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import numpy as np

from ..errors import GenerationError
from .engine import Engine, left_pad
from .sampling import (
    LogitsProcessor,
    Sampler,
    check_penalties,
    check_seed,
    check_settings,
    log_softmax,
    make_logits_processors,
    make_sampler,
    process_logits,
    seeded_generators,
    top_logprobs,
)
from .tokenizer import StreamDecoder, Tokenizer

MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass
class GenerationConfig:
    """Settings of one call; `ShadowEdgeModel` fills the defaults from manifest['generation']."""

    max_new_tokens: int | None = None  # None: the bundle's default, shortened to fit the context
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    seed: int | None = None  # same seed, same tokens; each row of a batch uses it alone
    stop: list[str] = field(default_factory=list)
    eos_token_ids: list[int] | None = None  # None: the bundle's; [] never stops on EOS
    presence_penalty: float = 0.0  # OpenAI's, over generated tokens; 0 = off
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    logprobs: int | None = None  # None: off; k: each token's log-probability and the k best


@dataclass
class Response:
    """One generated token of one row, with the text it made stable and the stats so far."""

    index: int  # row of the batch
    token: int
    text: str  # "" when the token completes no character yet, or the bundle has no tokenizer
    prompt_tokens: int
    new_tokens: int
    prefill_s: float  # prompt processing up to the first token
    decode_tok_per_s: float  # tokens after the first, per second of decoding
    peak_rss_mb: float
    finish_reason: str | None = None  # "eos" | "stop" | "length" on a row's last response
    logprob: float | None = None  # with GenerationConfig.logprobs: this token's
    top_logprobs: list[tuple[int, float]] | None = None  # (token id, log-probability), best first
    speculative: dict[str, float] | None = None  # speculative decoding's stats of this row so far
    from_draft: bool | None = None  # speculative: the shadow drafted this token and the backbone kept it

    def summary(self) -> str:
        return (
            f"{self.prompt_tokens} prompt tokens in {self.prefill_s:.2f} s, {self.new_tokens} new tokens at "
            f"{self.decode_tok_per_s:.1f} tok/s, peak RSS {self.peak_rss_mb:.0f} MB, finish: {self.finish_reason}"
        )


@dataclass
class GenerationResult:
    mode: str
    token_ids: list[int]  # generated only
    text: str | None  # None when the bundle has no tokenizer
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_tok_per_s: float
    peak_rss_mb: float
    finish_reason: str
    logprobs: list[float] | None = None  # per generated token, with GenerationConfig.logprobs
    top_logprobs: list[list[tuple[int, float]]] | None = None
    speculative: dict[str, float] | None = None  # rounds, drafted, accepted, acceptance (speculative only)

    def to_dict(self) -> dict:
        return asdict(self)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (the whole process, not one call)."""
    if sys.platform == "win32":
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    if sys.platform.startswith("linux"):
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a process started by a
        # large parent (bench, a test runner) would report the parent's peak
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def parse_token_ids(text: str) -> list[int]:
    """Token ids from "1,2,3" (spaces allowed)."""
    try:
        ids = [int(part) for part in text.replace(" ", ",").split(",") if part]
    except ValueError:
        raise GenerationError(f"token ids must be integers separated by commas, got {text!r}") from None
    if not ids:
        raise GenerationError("no token ids given", hint="pass them as --prompt-ids 1,2,3")
    return ids


def check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, context: int) -> None:
    if not prompts:
        raise GenerationError("no prompt given")
    for row in prompts:
        if len(row) == 0:
            raise GenerationError("a prompt is empty: give at least one token")
        bad = [int(t) for t in row if not 0 <= int(t) < vocab_size]
        if bad:
            raise GenerationError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
        if len(row) >= context:
            raise GenerationError(f"the prompt has {len(row)} tokens, the model's context is {context}")


def resolve_max_new_tokens(requested: int | None, default: int, longest_prompt: int, context: int) -> int:
    """An explicit request must fit the context; the default is shortened to fit it."""
    if requested is None:
        return max(1, min(default, context - longest_prompt))
    if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) or requested < 1:
        raise GenerationError(f"max_new_tokens must be a positive integer, got {requested!r}")
    if longest_prompt + requested > context:
        raise GenerationError(
            f"prompt ({longest_prompt} tokens) + max_new_tokens ({requested}) exceeds the model's context of "
            f"{context} tokens",
            hint=f"ask for at most {context - longest_prompt} new tokens, or shorten the prompt",
        )
    return int(requested)


@dataclass
class Step:
    """One step of a token stream: the token of every row [batch] and, when asked for, the
    log-probabilities [batch, vocab] of the processed logits they were sampled from; a
    speculative stream adds each row's draft stats so far and whether its token is an accepted draft."""

    tokens: np.ndarray
    logprobs: np.ndarray | None = None
    speculative: list[dict[str, float]] | None = None
    from_draft: list[bool] | None = None


def step_tokens(
    engine: Engine,
    prompts: Sequence[Sequence[int]],
    sampler: Sampler,
    processors: Sequence[LogitsProcessor],
    rngs: Sequence[np.random.Generator],
    pad_id: int,
    with_logprobs: bool = False,
) -> Iterator[Step]:
    """Yields the next token of every row, forever; the caller stops it."""
    ids, mask = left_pad(prompts, pad_id)
    seqs = engine.start(len(prompts))
    histories = [np.asarray(row, dtype=np.int64) for row in prompts]
    logits = engine.forward(seqs, ids, mask, keep=1)[:, -1]
    while True:
        logits = process_logits(processors, histories, logits)
        tokens = sampler(logits, rngs)
        yield Step(tokens, log_softmax(logits) if with_logprobs else None)
        histories = [np.append(h, t) for h, t in zip(histories, tokens, strict=True)]
        logits = engine.forward(seqs, tokens[:, None], keep=1)[:, -1]


def sampled_tokens(
    engine: Engine, prompts: Sequence[Sequence[int]], config: GenerationConfig, pad_id: int
) -> Iterator[Step]:
    """step_tokens with the sampler, processors and generators the config asks for."""
    return step_tokens(
        engine,
        prompts,
        make_sampler(config.temperature, config.top_k, config.top_p),
        config_processors(config, prompts),
        seeded_generators(config.seed, len(prompts)),
        pad_id,
        with_logprobs=config.logprobs is not None,
    )


def config_processors(config: GenerationConfig, prompts: Sequence[Sequence[int]]) -> list[LogitsProcessor]:
    return make_logits_processors(
        config.repetition_penalty,
        config.presence_penalty,
        config.frequency_penalty,
        config.logit_bias,
        [len(p) for p in prompts],
    )


def prompt_logprobs(logits: np.ndarray, ids: Sequence[int], top: int) -> list[tuple[float, list] | None]:
    """Per prompt token, (its log-probability, the `top` best alternatives) given the tokens before
    it, from the logits [seq, vocab] of one pass over the prompt; None for the first token, which
    nothing predicts (as OpenAI's echo gives it)."""
    logprobs = log_softmax(logits[:-1])
    return [None] + [(float(lp[t]), top_logprobs(lp, top)) for lp, t in zip(logprobs, ids[1:], strict=True)]


class _StopStrings:
    """Holds back text that could be the start of a stop string; cuts the text at one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was found)."""
        self.pending += piece
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending = self.pending[: min(found)], ""
            return out, True
        hold = max((n for s in self.stops for n in range(1, len(s)) if self.pending.endswith(s[:n])), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class _Row:
    """Text and stop state of one row."""

    def __init__(self, tokenizer: Tokenizer | None, stops: Sequence[str], eos: set[int], prompt_tokens: int) -> None:
        self.decoder = StreamDecoder(tokenizer) if tokenizer is not None else None
        self.stops = _StopStrings(stops)
        self.eos = eos
        self.prompt_tokens = prompt_tokens
        self.new_tokens = 0
        self.finish_reason: str | None = None

    def add(self, token: int, max_new_tokens: int) -> str:
        self.new_tokens += 1
        if token in self.eos:
            self.finish_reason = "eos"
        text = self.decoder.add(token) if self.decoder else ""
        text, stopped = self.stops.feed(text)
        if stopped:
            self.finish_reason = "stop"
            return text
        if self.finish_reason is None and self.new_tokens >= max_new_tokens:
            self.finish_reason = "length"
        if self.finish_reason is not None and self.decoder is not None:
            tail, stopped = self.stops.feed(self.decoder.flush())
            text += tail + ("" if stopped else self.stops.flush())
            self.finish_reason = "stop" if stopped else self.finish_reason
        return text


def stream_rows(
    engine: Engine,
    tokenizer: Tokenizer | None,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    default_max_new_tokens: int,
    default_eos: Sequence[int],
    pad_id: int,
    token_stream: Callable[[Sequence[Sequence[int]], GenerationConfig, int], Iterator[Step | np.ndarray]] | None = None,
) -> Iterator[Response]:
    """Checks the request at once, then returns the stream of Responses of every row.
    token_stream(prompts, config, pad_id): the next token of every row, forever (default:
    sampled_tokens on `engine`; speculative.py drafts and verifies instead), as Steps, or plain
    token arrays when it gives no log-probabilities."""
    model = engine.model
    check_prompts(prompts, model.vocab_size, model.max_position_embeddings)
    longest = max(len(p) for p in prompts)
    max_new = resolve_max_new_tokens(
        config.max_new_tokens, default_max_new_tokens, longest, model.max_position_embeddings
    )
    check_settings(config.temperature, config.top_k, config.top_p, config.repetition_penalty)
    check_seed(config.seed)
    check_penalties(config.presence_penalty, config.frequency_penalty, config.logit_bias, model.vocab_size)
    if config.logprobs is not None and not 0 <= config.logprobs <= MAX_TOP_LOGPROBS:
        raise GenerationError(
            f"logprobs must be in 0..{MAX_TOP_LOGPROBS} (alternatives per token), got {config.logprobs}"
        )
    if config.stop and tokenizer is None:
        raise GenerationError("stop strings need a bundle with a tokenizer; this one takes token ids only")
    eos = set(default_eos if config.eos_token_ids is None else config.eos_token_ids)
    # the stream knows how many tokens a row may still give and which end it (speculative drafts no
    # more than that)
    resolved = replace(config, max_new_tokens=max_new, eos_token_ids=sorted(eos))
    steps = (token_stream or partial(sampled_tokens, engine))(prompts, resolved, pad_id)
    rows = [_Row(tokenizer, config.stop, eos, len(p)) for p in prompts]
    return _responses(steps, rows, max_new, config.logprobs)


def _responses(
    steps: Iterator[Step | np.ndarray], rows: list[_Row], max_new: int, top: int | None
) -> Iterator[Response]:
    started = time.perf_counter()
    prefill_s = 0.0
    try:
        for step, out in enumerate(steps):
            out = out if isinstance(out, Step) else Step(out)
            if top is not None and out.logprobs is None:
                raise GenerationError("this mode does not give log-probabilities")
            now = time.perf_counter()
            if step == 0:
                prefill_s = now - started
            decode_s = now - started - prefill_s
            rate = step / decode_s if decode_s > 0 else 0.0
            rss = peak_rss_mb()  # once a step: reading /proc is ~20 us, 2% of a detached int4 token
            for index, (row, token) in enumerate(zip(rows, out.tokens.tolist(), strict=True)):
                if row.finish_reason is not None:
                    continue
                text = row.add(token, max_new)
                logprob, best = None, None
                if out.logprobs is not None and top is not None:
                    logprob, best = float(out.logprobs[index, token]), top_logprobs(out.logprobs[index], top)
                yield Response(
                    index=index,
                    token=token,
                    text=text,
                    prompt_tokens=row.prompt_tokens,
                    new_tokens=row.new_tokens,
                    prefill_s=prefill_s,
                    decode_tok_per_s=rate,
                    peak_rss_mb=rss,
                    finish_reason=row.finish_reason,
                    logprob=logprob,
                    top_logprobs=best,
                    speculative=out.speculative[index] if out.speculative else None,
                    from_draft=out.from_draft[index] if out.from_draft else None,
                )
            if all(row.finish_reason is not None for row in rows):
                return
    finally:
        steps.close()


def collect(responses: Iterator[Response], batch: int, mode: str, has_text: bool) -> list[GenerationResult]:
    """Drain a stream into one result per row; stats are those of each row's last response."""
    tokens: list[list[int]] = [[] for _ in range(batch)]
    texts = [[] for _ in range(batch)]
    last: list[Response | None] = [None] * batch
    logprobs: list[list[float]] = [[] for _ in range(batch)]
    tops: list[list[list[tuple[int, float]]]] = [[] for _ in range(batch)]
    for r in responses:
        tokens[r.index].append(r.token)
        texts[r.index].append(r.text)
        last[r.index] = r
        if r.logprob is not None:
            logprobs[r.index].append(r.logprob)
            tops[r.index].append(r.top_logprobs or [])
    results = []
    for b in range(batch):
        r = last[b]
        assert r is not None and r.finish_reason is not None
        results.append(
            GenerationResult(
                mode=mode,
                token_ids=tokens[b],
                text="".join(texts[b]) if has_text else None,
                prompt_tokens=r.prompt_tokens,
                new_tokens=r.new_tokens,
                prefill_s=r.prefill_s,
                decode_tok_per_s=r.decode_tok_per_s,
                peak_rss_mb=r.peak_rss_mb,
                finish_reason=r.finish_reason,
                logprobs=logprobs[b] if r.logprob is not None else None,
                top_logprobs=tops[b] if r.logprob is not None else None,
                speculative=r.speculative,
            )
        )
    return results
