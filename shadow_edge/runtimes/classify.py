"""Sequence classification on a classifier bundle (manifest.model.task == "seq_cls").

The graphs of such a bundle end in class logits instead of an LM head: the backbone graph in the
base's trained classifier (attached), the shadow_lm graph in the shadow's (detached: only the small
shadow network runs, the edge case of the paper's shadow-only results). Both are read at the last
token of each row, which is where either library pools: rows are left-padded, so the last position
is each row's last real token. A batch gives the logits of its rows run one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..bundle import Manifest
from ..errors import GenerationError
from .engine import Engine, left_pad

SEQ_CLS = "seq_cls"
BATCH = 16  # rows per onnxruntime call: bounds the padded batch's memory


@dataclass
class Classification:
    label: str
    logits: list[float]  # one per label, in the manifest's label order
    probs: list[float]  # softmax of the logits

    def to_dict(self) -> dict:
        return asdict(self)


def is_classifier(manifest: Manifest) -> bool:
    return manifest.model.task == SEQ_CLS


def refuse_generation(manifest: Manifest) -> None:
    """A GenerationError when the bundle is a classifier: it has no LM head to generate with."""
    if is_classifier(manifest):
        labels = ", ".join(manifest.model.labels)
        raise GenerationError(
            f"this bundle is a sequence classifier (labels: {labels}): it has no language-model head to generate with",
            hint="use `shadow-edge classify BUNDLE --prompt TEXT` (Python: model.classify(texts))",
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def classify_rows(engine: Engine, manifest: Manifest, rows: Sequence[list[int]], pad_id: int) -> list[Classification]:
    """Class logits of each token-id row (non-empty), BATCH rows per left-padded call."""
    if not is_classifier(manifest):
        raise GenerationError("this bundle is a language model, not a sequence classifier: use run or generate")
    labels = manifest.model.labels
    out: list[Classification] = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        ids, mask = left_pad(chunk, pad_id)
        logits = engine.forward(engine.start(len(chunk)), ids, mask=mask, keep=1)[:, -1].astype(np.float64)
        for row, probs in zip(logits, _softmax(logits), strict=True):
            best = int(row.argmax())
            out.append(Classification(labels[best], [float(x) for x in row], [float(p) for p in probs]))
    return out
