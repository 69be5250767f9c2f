"""Compare exported graphs, run by onnxruntime, with the checkpoint library's own forward in PyTorch
(shadow-peft's, or peft's with use_cache=False: every reference call recomputes the whole sequence).

Scenarios (every mode: attached = shadow + backbone graphs, detached = shadow_lm graph, and
base = base_lm graph against a fresh copy of the base model when the bundle has it):
  prefill_then_decode  batch 1: prefill, single-token steps with a growing past, a 2-token chunk
  batch2_left_padding  batch 2, the shorter row left-padded; each row is compared with the
                       reference run on that row alone, unpadded
  greedy               greedy tokens from ORT (cached decoding) vs. the reference recomputing the
                       whole sequence each step
Classifiers instead: class logits at the last token of each row alone and of a left-padded batch.
The shadow_head graph (the cascade's detached answers) is fed the shadow graph's states of the
prefill and compared with the reference's detached logits.
Figures: max |logit difference| over all compared positions, argmax agreement, greedy matches.
A graph fails when its max difference exceeds the tolerance (DEFAULT_TOLERANCE, absolute, fp32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..bundle import SHADOW_GRAPH, SHADOW_HEAD_GRAPH, GraphSpec, ModelSpec, modes_of
from ..runtimes.engine import Engine, left_pad
from ..runtimes.sessions import open_runners
from .checkpoint import load_base_model
from .loaders.description import SEQ_CLS, ShadowCheckpoint

DEFAULT_TOLERANCE = 1e-3
GREEDY_TOKENS = 8


class _Engines:
    """The runtime's own Engine for every mode the bundle has, so validation checks the exact code
    path that generates; and the shadow graph's session, to compare shadow states directly."""

    def __init__(self, folder: Path, graphs: dict[str, GraphSpec], model: ModelSpec) -> None:
        runners = open_runners(folder, graphs, model, list(graphs))
        self.modes = modes_of(graphs)
        self.engines = {mode: Engine(mode, runners, model) for mode in self.modes}
        self.shadow = runners[SHADOW_GRAPH]
        self.head = runners.get(SHADOW_HEAD_GRAPH)


class _Reference:
    """The format's own forward (loaded.reference) on one unpadded row, recomputing everything."""

    def __init__(self, loaded: ShadowCheckpoint, base_model=None) -> None:
        self.forward = loaded.reference
        self.base_model = base_model  # a fresh, unwrapped copy of the base (for the base_lm graph)

    @torch.no_grad()
    def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """LM logits [seq, vocab] (class logits [labels]) per mode, and the states [seq, d]."""
        input_ids = torch.from_numpy(ids).long()[None]
        result = {name: value[0].numpy() for name, value in self.forward(input_ids, None).items()}
        if self.base_model is not None:
            pos = torch.arange(input_ids.shape[1])[None]
            result["base"] = self.base_model(input_ids=input_ids, position_ids=pos).logits[0].numpy()
        return result


class _Tally:
    def __init__(self) -> None:
        self.max_diff = 0.0
        self.agree = 0
        self.total = 0

    def add(self, got: np.ndarray, want: np.ndarray) -> None:
        self.max_diff = max(self.max_diff, float(np.abs(got - want).max()))
        self.agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        self.total += int(np.prod(got.shape[:-1]))

    def as_dict(self) -> dict:
        return {"max_abs_diff": self.max_diff, "argmax_agree": self.agree, "positions": self.total}


def _prefill_then_decode(runs: _Engines, ref: _Reference, tokens: np.ndarray, tallies: dict) -> None:
    want = ref(tokens)
    for mode, engine in runs.engines.items():
        seqs = engine.start(1)
        for start, end in [(0, 8), (8, 9), (9, 10), (10, 12)]:
            logits = engine.forward(seqs, tokens[None, start:end], keep=0)
            tallies[mode].add(logits[0], want[mode][start:end])
    length = len(tokens)
    states = runs.shadow.step(runs.shadow.new_cache(1), tokens[None], np.ones((1, length)), np.arange(length)[None])
    tallies["shadow_states"].add(states[0], want["states"])
    if runs.head is not None:
        tallies[SHADOW_HEAD_GRAPH].add(runs.head.head(states)[0], want["detached"])


def _batch_left_padding(runs: _Engines, ref: _Reference, rows: list[np.ndarray], pad_id: int, tallies) -> None:
    lengths, steps = [9, 5], 3
    full = [ref(row[: n + steps]) for row, n in zip(rows, lengths, strict=True)]
    ids, mask = left_pad([row[:n] for row, n in zip(rows, lengths, strict=True)], pad_id)
    width = ids.shape[1]
    for mode, engine in runs.engines.items():
        seqs = engine.start(2)
        logits = engine.forward(seqs, ids, mask=mask, keep=0)
        for b, n in enumerate(lengths):
            tallies[mode].add(logits[b, width - n :], full[b][mode][:n])
        for t in range(steps):
            new = np.array([[row[n + t]] for row, n in zip(rows, lengths, strict=True)], dtype=np.int64)
            logits = engine.forward(seqs, new, keep=1)
            for b, n in enumerate(lengths):
                tallies[mode].add(logits[b, -1:], full[b][mode][n + t : n + t + 1])


def _greedy(runs: _Engines, ref: _Reference, prompt: np.ndarray) -> dict:
    result = {}
    for mode, engine in runs.engines.items():
        seqs = engine.start(1)
        got: list[int] = []
        ids = prompt[None]
        for _ in range(GREEDY_TOKENS):
            got.append(int(engine.forward(seqs, ids, keep=1)[0, -1].argmax()))
            ids = np.array([[got[-1]]], dtype=np.int64)
        want: list[int] = []
        seq = prompt
        for _ in range(GREEDY_TOKENS):
            want.append(int(ref(seq)[mode][-1].argmax()))
            seq = np.append(seq, want[-1])
        matched = next((i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), GREEDY_TOKENS)
        result[mode] = {"matched_prefix": matched, "tokens": GREEDY_TOKENS, "onnx": got, "reference": want}
    return result


def _classify(runs: _Engines, ref: _Reference, rows: list[np.ndarray], pad_id: int, tallies: dict) -> None:
    """Class logits at the last token: each row alone, then both left-padded in one batch."""
    lengths = [12, 7]
    want = [ref(row[:n]) for row, n in zip(rows, lengths, strict=True)]
    ids, mask = left_pad([row[:n] for row, n in zip(rows, lengths, strict=True)], pad_id)
    for mode, engine in runs.engines.items():
        for b, n in enumerate(lengths):
            tallies[mode].add(engine.forward(engine.start(1), rows[b][None, :n], keep=1)[0], want[b][mode][None])
        logits = engine.forward(engine.start(2), ids, mask=mask, keep=1)
        for b in range(len(lengths)):
            tallies[mode].add(logits[b], want[b][mode][None])
    length = lengths[0]
    states = runs.shadow.step(runs.shadow.new_cache(1), rows[0][None], np.ones((1, length)), np.arange(length)[None])
    tallies["shadow_states"].add(states[0], want[0]["states"])
    if runs.head is not None:
        tallies[SHADOW_HEAD_GRAPH].add(runs.head.head(states[:, -1:])[0], want[0]["detached"][None])


def validate_bundle(
    loaded: ShadowCheckpoint,
    folder: Path,
    graphs: dict[str, GraphSpec],
    model: ModelSpec,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> dict:
    """Run every scenario; returns the report stored in manifest['validation']."""
    runs = _Engines(folder, graphs, model)
    base_model = None
    if "base" in runs.modes:
        base_model, _ = load_base_model(loaded.origin.base_dir)
        base_model.eval()
    ref = _Reference(loaded, base_model)
    vocab = int(loaded.base_config.vocab_size)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=12)
    rows = [rng.integers(3, vocab, size=12) for _ in range(2)]
    pad_id = loaded.base_config.pad_token_id
    pad_id = int(pad_id) if pad_id is not None else 0

    checked = [*runs.modes, *([SHADOW_HEAD_GRAPH] if runs.head is not None else [])]
    tallies = {name: _Tally() for name in checked} | {"shadow_states": _Tally()}
    greedy: dict = {}
    if loaded.task == SEQ_CLS:
        _classify(runs, ref, rows, pad_id, tallies)
        scenarios = ["classify_each_row", "classify_batch2_left_padding"]
    else:
        _prefill_then_decode(runs, ref, tokens, tallies)
        _batch_left_padding(runs, ref, rows, pad_id, tallies)
        greedy = _greedy(runs, ref, tokens[:6])
        scenarios = ["prefill_then_decode", "batch2_left_padding", "greedy"]

    report = {name: tally.as_dict() for name, tally in tallies.items()}
    report["greedy"] = greedy
    report["tolerance"] = tolerance
    report["scenarios"] = scenarios
    report["reference"] = f"{loaded.origin.library} {loaded.origin.library_version}, full recompute (no KV cache)"
    failures = [
        f"{name}: max |logit diff| {report[name]['max_abs_diff']:.2e} > {tolerance:.0e}"
        for name in checked
        if not report[name]["max_abs_diff"] <= tolerance  # NaN fails too
    ]
    failures += [
        f"{mode}: greedy tokens differ from the reference at token {g['matched_prefix']}"
        for mode, g in greedy.items()
        if g["matched_prefix"] < g["tokens"]
    ]
    report["passed"] = not failures
    report["failures"] = failures
    return report
