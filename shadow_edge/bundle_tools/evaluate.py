"""Fidelity of a bundle against another one (a quantized bundle against its float32 source), or
against the PyTorch model of the checkpoint it was exported from (eval_reference.py, needs torch).

Bundles run in onnxruntime through the runtime's Engine (torch-free). For every mode both sides
support, on one token sequence (the built-in English text of eval_text.py or a given text,
through the bundle's tokenizer; seeded random ids when the bundle has no tokenizer):
    top1_agreement       share of positions whose most likely next token is the same
    mean_kl              mean KL(reference || bundle) of the next-token distributions, in nats
    perplexity           exp(mean negative log-likelihood of the actual next token), each bundle
    greedy_agreement     share of prompts (slices of the text) whose GREEDY_TOKENS greedy tokens
                         are all identical; greedy_token_agreement: the same per token
FLOORS states what a usable quantized bundle reaches; below_floor() names what falls short.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..bundle import MODE_GRAPHS, Manifest, read_manifest, resolve_inside, verify_files
from ..errors import BundleError
from ..progress import Progress, silent
from ..runtimes.engine import Engine
from ..runtimes.sessions import open_runners
from .eval_text import EVAL_TEXT

if TYPE_CHECKING:
    from ..exporters.eval_reference import ReferenceEngine

MAX_TOKENS = 512
GREEDY_PROMPTS = 8
PROMPT_TOKENS = 16
GREEDY_TOKENS = 8
RANDOM_TOKENS = 256
CHUNK_ROWS = 64  # positions whose next-token figures are computed at a time
# Floors (issue 5 targets): int8 top-1 agreement >= 97%; 8-token greedy agreement >= 75% of prompts.
FLOORS = {
    "int8": {"top1_agreement": 0.97, "greedy_agreement": 0.75},
    "int8-dynamic": {"top1_agreement": 0.97, "greedy_agreement": 0.75},
    "int4": {"top1_agreement": 0.90, "greedy_agreement": 0.75},
}


def open_engine(root: Path, manifest: Manifest, mode: str, threads: int | None = None) -> Engine:
    """The mode's graphs in sessions with the runtime's options (weights prepacked)."""
    return Engine(mode, open_runners(root, manifest.graphs, manifest.model, MODE_GRAPHS[mode], threads), manifest.model)


def eval_tokens(root: Path, manifest: Manifest, text: str | None, seed: int = 0) -> tuple[np.ndarray, str]:
    """The evaluated token ids (at most the context length) and a description of where they come from."""
    limit = min(MAX_TOKENS, manifest.model.max_position_embeddings)
    file = manifest.tokenizer.get("file")
    if file:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(resolve_inside(root, file)))
        ids = tokenizer.encode(EVAL_TEXT if text is None else text).ids
        source = "built-in English text" if text is None else "given text"
    elif text is not None:
        raise BundleError("this bundle has no tokenizer, so it cannot evaluate a text", hint="omit --text")
    else:
        rng = np.random.default_rng(seed)
        ids = rng.integers(3, manifest.model.vocab_size, size=min(RANDOM_TOKENS, limit)).tolist()
        source = "random token ids (the bundle has no tokenizer)"
    if len(ids) < PROMPT_TOKENS + 2:
        raise BundleError(f"the evaluation text has {len(ids)} tokens; give at least {PROMPT_TOKENS + 2}")
    return np.asarray(ids[:limit], dtype=np.int64), source


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _greedy(engine: Engine | ReferenceEngine, prompts: np.ndarray, steps: int) -> np.ndarray:
    """[prompts, steps] greedy tokens, all prompts decoded as one batch."""
    seqs = engine.start(prompts.shape[0])
    logits = engine.forward(seqs, prompts, keep=1)
    tokens = []
    for _ in range(steps):
        tokens.append(logits[:, -1].argmax(-1))
        logits = engine.forward(seqs, tokens[-1][:, None].astype(np.int64), keep=1)
    return np.stack(tokens, axis=1)


def _next_token_figures(got: np.ndarray, want: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per position: top-1 agreement, KL(want || got), and both log-likelihoods of the next token
    (targets: one per position but the last). In float64, CHUNK_ROWS positions at a time: over a
    262k-token vocabulary (Gemma 3) whole-text float64 copies took ~6 GB."""
    same, kl, got_ll, want_ll = [], [], [], []
    for start in range(0, len(got), CHUNK_ROWS):
        g = _log_softmax(got[start : start + CHUNK_ROWS].astype(np.float64))
        w = _log_softmax(want[start : start + CHUNK_ROWS].astype(np.float64))
        same.append(g.argmax(-1) == w.argmax(-1))
        kl.append((np.exp(w) * (w - g)).sum(-1))
        rows = np.arange(min(len(g), len(targets) - start))
        got_ll.append(g[rows, targets[start + rows]])
        want_ll.append(w[rows, targets[start + rows]])
    return tuple(np.concatenate(parts) for parts in (same, kl, got_ll, want_ll))


def compare_mode(test: Engine, reference: Engine | ReferenceEngine, ids: np.ndarray) -> dict:
    """The figures of one mode (see the module docstring)."""
    got = test.forward(test.start(1), ids[None], keep=0)[0]
    want = reference.forward(reference.start(1), ids[None], keep=0)[0]
    same, kl, got_ll, want_ll = _next_token_figures(got, want, ids[1:])
    del got, want
    stride = max(1, (len(ids) - PROMPT_TOKENS) // GREEDY_PROMPTS)
    starts = [i * stride for i in range(GREEDY_PROMPTS) if i * stride + PROMPT_TOKENS <= len(ids)]
    prompts = np.stack([ids[s : s + PROMPT_TOKENS] for s in starts])
    steps = min(GREEDY_TOKENS, test.model.max_position_embeddings - PROMPT_TOKENS)
    greedy_test, greedy_ref = _greedy(test, prompts, steps), _greedy(reference, prompts, steps)
    return {
        "positions": int(len(ids)),
        "top1_agreement": float(same.mean()),
        "mean_kl": float(kl.mean()),
        "max_kl": float(kl.max()),
        "perplexity": float(np.exp(-got_ll.mean())),
        "reference_perplexity": float(np.exp(-want_ll.mean())),
        "greedy_agreement": float((greedy_test == greedy_ref).all(axis=1).mean()),
        "greedy_token_agreement": float((greedy_test == greedy_ref).mean()),
        "greedy_prompts": len(starts),
        "greedy_tokens": int(steps),
    }


def _bundle_reference(
    ref_root: Path, manifest: Manifest, threads: int | None
) -> tuple[str, list[str], Callable[[str], Engine]]:
    """(a label, its modes, mode -> Engine) for a reference bundle."""
    ref = read_manifest(ref_root)
    verify_files(ref_root, ref, hashes=False)
    if manifest.model.vocab_size != ref.model.vocab_size:
        raise BundleError(
            f"the bundles have different vocabularies ({manifest.model.vocab_size} vs {ref.model.vocab_size})",
            hint="compare a bundle with the bundle it was quantized from",
        )
    return str(ref_root), ref.modes, lambda mode: open_engine(ref_root, ref, mode, threads)


def evaluate(
    bundle: str | Path,
    against: str | Path | None = None,
    text: str | None = None,
    modes: list[str] | None = None,
    threads: int | None = None,
    *,
    reference: str | Path | None = None,
    base: str | Path | None = None,
    progress: Progress = silent,
) -> dict:
    """Fidelity of `bundle` per mode (see the module docstring) against the bundle `against`, or
    against the PyTorch model of the checkpoint `reference` (its base model from `base` or
    CKPT/base; needs torch: eval_reference.py). progress: told as each mode is compared."""
    root = Path(bundle)
    manifest = read_manifest(root)
    verify_files(root, manifest, hashes=False)
    if (against is None) == (reference is None):
        raise BundleError("give one reference: another bundle (against) or a checkpoint (reference), not both")
    ids, source = eval_tokens(root, manifest, text)  # before loading a checkpoint: a bad text fails fast
    progress("loading the reference", 0, None)
    if against is not None:
        label, available, open_reference = _bundle_reference(Path(against), manifest, threads)
        where = "both bundles"
    else:
        from ..exporters.eval_reference import checkpoint_reference

        label, available, open_reference = checkpoint_reference(reference, base, manifest, threads)
        where = "both the bundle and the checkpoint"
    common = [m for m in manifest.modes if m in available]
    chosen = common if modes is None else modes
    unknown = [m for m in chosen if m not in common]
    if unknown or not chosen:
        raise BundleError(f"mode {', '.join(unknown) or '(none)'} is not in {where} (common: {common})")
    report: dict = {"against": label, "text": source, "tokens": int(len(ids)), "modes": {}}
    for done, mode in enumerate(chosen):
        progress(f"comparing {mode} on {len(ids)} tokens", done, len(chosen))
        report["modes"][mode] = compare_mode(open_engine(root, manifest, mode, threads), open_reference(mode), ids)
    progress("compared", len(chosen), len(chosen))
    return report


def below_floor(report: dict, precision: str) -> list[str]:
    """What in the report falls under FLOORS[precision], as readable lines (empty: all good)."""
    floors = FLOORS.get(precision, {})
    return [
        f"{mode}: {name} {figures[name]:.1%} < {floor:.0%}"
        for mode, figures in report["modes"].items()
        for name, floor in floors.items()
        if not figures[name] >= floor  # NaN fails too
    ]
