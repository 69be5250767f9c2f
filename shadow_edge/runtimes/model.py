"""The runtime's public API: load a bundle, then generate from text or token ids.

    model = load("out/", mode="detached", threads=2)
    model.generate("Hello", max_new_tokens=32, temperature=0).text
    for r in model.stream([1, 2, 3]): print(r.token, r.text)
    model.chat([{"role": "user", "content": "Hi"}]).text
    model.generate_batch([[1, 2, 3], [4, 5]])      # left-padded, same tokens as one by one
    model.logits([1, 2, 3])                         # [seq, vocab], for tests and evaluation
    model.classify(["great movie", [1, 2, 3]])      # classifier bundles: label, logits, probs per input
    model.prompt_logprobs("Hello world", top=1)     # per prompt token: (logprob, best), first None
    model.generate("Hi", logprobs=2).logprobs       # each generated token's, and 2 alternatives
    model.prompt_cache = PromptCache()              # later one-prompt calls extending an earlier
                                                    # one prefill only their new tokens (chat turns)

load() checks the manifest (format and version) and the size and sha256 of every file the mode
needs (verify="size" skips the hashes, for a bundle already checked), and creates sessions only
for the mode's graphs: a detached model never opens backbone.onnx.

Threads: a ShadowEdgeModel may be shared. Every call owns its KV caches and text state; the
shared parts (onnxruntime sessions, whose run() is thread-safe, the Rust tokenizer, the compiled
chat template) are only read. Concurrent calls share the intra-op thread pool, so each runs
slower; prefer one call at a time on small CPUs, or a batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from ..bundle import (
    MODE_GRAPHS,
    Manifest,
    graph_files,
    read_manifest,
    verify_files,
)
from ..errors import BundleError, GenerationError
from .classify import Classification, classify_rows, refuse_generation
from .engine import Engine
from .generate import (
    GenerationConfig,
    GenerationResult,
    Response,
    check_prompts,
    collect,
    prompt_logprobs,
    stream_rows,
)
from .prompt_cache import PromptCache
from .sessions import GraphRunner, open_runners
from .tokenizer import Message, Tokenizer

MODES = tuple(MODE_GRAPHS)
VERIFY = ("hash", "size")

# Weight prepacking. All graphs memory-map the one weights.data, so tensors they share (the
# embedding table: Gather in both attached graphs, and the tied lm_head's Gemm) are file pages held
# once. Prepacking (the CPU provider's default) gives a session a private repacked copy of each
# MatMul/Gemm weight. The Gathers still read only the rows they look up, so no graph holds the
# embedding table a second time; but the pages read while packing stay counted in RSS until the
# kernel reclaims them. Measured on SmolLM2-135M (2 threads, 256-token prompt):
#   fp32 attached  prepacking on ~10% faster, +~100 MB peak RSS (815 vs 709 MB)
#   int4 attached  on: 36 tok/s, off: 7 tok/s (MatMulNBits without packed weights is slow)
#   fp32 detached  on: 130 tok/s, off: 95 tok/s (1 thread)
# So it is on by default; load(..., prepack=False) (`run --low-memory`) trades that speed for memory.


def load(
    bundle: str | Path,
    mode: str = "attached",
    threads: int | None = None,
    verify: str = "hash",
    prepack: bool = True,
) -> ShadowEdgeModel:
    """Open a bundle folder for generation in `mode`: "attached", "detached", or "base" (the base
    model without the adapter, in bundles exported with --with-base).

    threads: onnxruntime intra-op threads (None: onnxruntime's default, one per core).
    verify: "hash" checks size and sha256 of the mode's files, "size" their sizes only.
    prepack: repack weights per session (faster; False holds less memory, see above)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    root = Path(bundle)
    manifest = read_manifest(root)
    if mode not in manifest.modes:
        raise BundleError(f"this bundle does not support {mode} mode (it supports: {', '.join(manifest.modes)})")
    runners, tokenizer = open_bundle(root, manifest, MODE_GRAPHS[mode], threads, verify, prepack, f"{mode} mode")
    return ShadowEdgeModel(root, manifest, Engine(mode, runners, manifest.model), tokenizer)


def open_graphs(
    root: Path,
    manifest: Manifest,
    names: Sequence[str],
    threads: int | None,
    verify: str,
    prepack: bool,
    purpose: str,
) -> dict[str, GraphRunner]:
    """Check the files of the named graphs (and the tokenizer), then open a session for each."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    verify_graphs(root, manifest, names, verify, purpose)
    return open_runners(root, manifest.graphs, manifest.model, names, threads, prepack)


def open_bundle(
    root: Path,
    manifest: Manifest,
    names: Sequence[str],
    threads: int | None,
    verify: str,
    prepack: bool,
    purpose: str,
) -> tuple[dict[str, GraphRunner], Tokenizer | None]:
    """open_graphs() and the tokenizer at once: parsing tokenizer.json holds the GIL (0.2 s for
    SmolLM2's) while the sessions are built without it, so start-up costs the longer of the two."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        tokenizer = pool.submit(Tokenizer.from_bundle, root, manifest)
        runners = open_graphs(root, manifest, names, threads, verify, prepack, purpose)
        return runners, tokenizer.result()


def verify_graphs(root: Path, manifest: Manifest, names: Sequence[str], verify: str, purpose: str) -> None:
    """Check that the named graphs exist and their files and the tokenizer's: sizes, and sha256 when
    verify is "hash"."""
    if verify not in VERIFY:
        raise ValueError(f"verify must be one of {VERIFY}, got {verify!r}")
    missing = [g for g in names if g not in manifest.graphs]
    if missing:
        raise BundleError(
            f"the manifest has no {', '.join(missing)} graph, which {purpose} needs",
            hint="re-export the checkpoint with this version of shadow-edge",
        )
    needed = [f for g in names for f in graph_files(manifest, g)]
    if manifest.tokenizer.get("file"):
        needed.append(manifest.tokenizer["file"])
    verify_files(root, manifest, list(dict.fromkeys(needed)), hashes=verify == "hash")


class ShadowEdgeModel:
    """A loaded bundle in one mode. See the module docstring for the API and thread safety."""

    token_stream = None  # None: generate.sampled_tokens on the engine; speculative.py drafts instead
    prompt_cache: PromptCache | None = None  # set one to reuse earlier calls' caches (prompt_cache.py)

    def __init__(self, root: Path, manifest: Manifest, engine: Engine, tokenizer: Tokenizer | None) -> None:
        self.root = root
        self.manifest = manifest
        self.engine = engine
        self.tokenizer = tokenizer
        gen = manifest.generation
        known = {f.name for f in fields(GenerationConfig)} - {"max_new_tokens", "eos_token_ids", "stop", "seed"}
        self.defaults = GenerationConfig(**{k: v for k, v in gen.items() if k in known})
        self.default_max_new_tokens = int(gen.get("max_new_tokens", 256))
        self.eos_token_ids = [int(t) for t in gen.get("eos_token_ids", manifest.model.eos_token_ids)]
        model = manifest.model
        self.pad_token_id = next(
            (t for t in (model.pad_token_id, *self.eos_token_ids) if t is not None and 0 <= t < model.vocab_size), 0
        )

    @property
    def mode(self) -> str:
        return self.engine.mode

    @property
    def context_length(self) -> int:
        return self.manifest.model.max_position_embeddings

    def __repr__(self) -> str:
        return f"ShadowEdgeModel({str(self.root)!r}, mode={self.mode!r}, tokenizer={self.tokenizer is not None})"

    # -- prompts --------------------------------------------------------------------------------

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a prompt: text goes through the tokenizer (with its special tokens)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise GenerationError(
                    "this bundle has no tokenizer: give token ids instead of text", hint="use --prompt-ids 1,2,3"
                )
            return self.tokenizer.encode(prompt)
        ids = np.asarray(prompt)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise GenerationError(f"a prompt is a string or a sequence of token ids, got {prompt!r:.80}")
        return [int(t) for t in ids]

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        if self.tokenizer is None:
            raise GenerationError("chat needs a bundle with a tokenizer; this one takes token ids only")
        return self.tokenizer.encode_chat(messages)

    def config(self, **overrides) -> GenerationConfig:
        """The bundle's generation defaults with `overrides` (GenerationConfig fields) applied."""
        return replace(self.defaults, **overrides)

    # -- model calls -----------------------------------------------------------------------------

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Logits [seq, vocab] of every position of one sequence, computed in one pass."""
        ids = self.encode(token_ids)
        check_prompts([ids], self.manifest.model.vocab_size, self.context_length + 1)
        seqs = self.engine.start(1)
        return self.engine.forward(seqs, np.asarray([ids], dtype=np.int64), keep=0)[0]

    def prompt_logprobs(self, prompt: str | Sequence[int], top: int = 0) -> list[tuple[float, list] | None]:
        """Per prompt token, (log-probability, the `top` best (id, log-probability)) given the tokens
        before it; None for the first. One pass; what loglikelihood evaluation sums."""
        ids = self.encode(prompt)
        return prompt_logprobs(self.logits(ids), ids, top)

    def stream_batch(self, prompts: Sequence[str | Sequence[int]], **settings) -> Iterator[Response]:
        """Responses of every row (Response.index) as tokens are produced; checks the request first."""
        refuse_generation(self.manifest)
        ids = [self.encode(p) for p in prompts]
        engine = self.engine
        turn = None
        if self.prompt_cache is not None and len(ids) == 1 and self.token_stream is None:
            turn = engine = self.prompt_cache.turn(self.engine)
        responses = stream_rows(
            engine,
            self.tokenizer,
            ids,
            self.config(**settings),
            self.default_max_new_tokens,
            self.eos_token_ids,
            self.pad_token_id,
            self.token_stream,
        )
        return responses if turn is None else turn.released_after(responses)

    def classify(self, inputs: str | Sequence[int] | Sequence[str | Sequence[int]]) -> list[Classification]:
        """Label, logits and probabilities of each input (one text or id list, or a list of them), in
        the bundle's mode (detached: the shadow alone). Batched with left padding: the same logits as
        one by one."""
        single = isinstance(inputs, str) or (len(inputs) > 0 and isinstance(inputs[0], int | np.integer))
        rows = [self.encode(p) for p in ([inputs] if single else inputs)]
        check_prompts(rows, self.manifest.model.vocab_size, self.context_length + 1)
        return classify_rows(self.engine, self.manifest, rows, self.pad_token_id)

    def stream(self, prompt: str | Sequence[int], **settings) -> Iterator[Response]:
        """One Response per generated token; the last has finish_reason set."""
        return self.stream_batch([prompt], **settings)

    def stream_chat(self, messages: Sequence[Message], **settings) -> Iterator[Response]:
        """stream() for a conversation rendered with the bundle's chat template."""
        return self.stream(self.encode_chat(messages), **settings)

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], **settings) -> list[GenerationResult]:
        if isinstance(prompts, str) or not len(prompts):
            raise GenerationError("generate_batch takes a non-empty list of prompts")
        responses = self.stream_batch(prompts, **settings)
        return collect(responses, len(prompts), self.mode, self.tokenizer is not None)

    def generate(self, prompt: str | Sequence[int], **settings) -> GenerationResult:
        """Generate for one prompt. settings: GenerationConfig fields (max_new_tokens, temperature,
        top_k, top_p, repetition_penalty, seed, stop, eos_token_ids)."""
        return self.generate_batch([prompt], **settings)[0]

    def chat(self, messages: Sequence[Message], **settings) -> GenerationResult:
        """Answer a conversation rendered with the bundle's chat template."""
        return self.generate(self.encode_chat(messages), **settings)
