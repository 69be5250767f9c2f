"""When the cascade's shadow hands a request on: the escalation policy and its running decision.

The policy looks at the first `window` tokens the detached shadow generates:
    marker                escalate as soon as the shadow's text contains it (the shadow is trained
                          to answer "[REMOTE]" to what it should not answer itself); marker_ids is
                          the same as a token sequence, for bundles without a tokenizer
    confidence_threshold  escalate when the top-1 probability of any of those tokens is below it
                          (0 never escalates on confidence; any value above 1 always does)
    max_mean_entropy      escalate when their mean entropy, in nats, is above it (None: off)
Probabilities are the shadow's own next-token distribution (softmax of its logits, before
temperature, top-k/p and repetition penalty), so the decision does not depend on how one samples.
After `window` tokens without escalation, or when the shadow finishes sooner, its answer stands:
the cascade holds the shadow's text back until then and streams it afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import GenerationError


@dataclass(frozen=True)
class EscalationPolicy:
    marker: str | None = "[REMOTE]"
    marker_ids: tuple[int, ...] | None = None
    confidence_threshold: float = 0.0
    max_mean_entropy: float | None = None
    window: int = 8

    def __post_init__(self) -> None:
        if self.marker is not None and (not isinstance(self.marker, str) or not self.marker):
            raise GenerationError(f"the escalation marker must be a non-empty string, got {self.marker!r}")
        if self.marker_ids is not None and (
            not self.marker_ids or not all(isinstance(t, int) and t >= 0 for t in self.marker_ids)
        ):
            raise GenerationError(f"marker_ids must be a non-empty list of token ids, got {self.marker_ids!r}")
        if not _is_number(self.confidence_threshold) or self.confidence_threshold < 0:
            raise GenerationError(f"the confidence threshold must be a number >= 0, got {self.confidence_threshold!r}")
        if self.max_mean_entropy is not None and (not _is_number(self.max_mean_entropy) or self.max_mean_entropy < 0):
            raise GenerationError(f"max_mean_entropy must be a number >= 0, got {self.max_mean_entropy!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise GenerationError(f"the escalation window must be a positive number of tokens, got {self.window!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EscalationPolicy:
        """A policy from a manifest's `escalation` object or keyword settings (None = default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GenerationError(f"unknown escalation setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        values = dict(data)
        if values.get("marker_ids") is not None:
            values["marker_ids"] = tuple(values["marker_ids"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["marker_ids"] = list(self.marker_ids) if self.marker_ids is not None else None
        return data

    def updated(self, **settings: Any) -> EscalationPolicy:
        """This policy with the given settings replaced: None leaves a setting as it is, and an
        empty marker ("") turns the marker rule off."""
        given = {k: (None if v == "" else v) for k, v in settings.items() if v is not None}
        return EscalationPolicy.from_dict(self.to_dict() | given) if given else self


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def next_token_stats(logits: np.ndarray) -> tuple[float, float]:
    """(top-1 probability, entropy in nats) of the distribution softmax(logits) over the vocabulary."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    weights = np.exp(shifted)
    total = float(weights.sum())
    probs = weights / total
    entropy = float(np.log(total) - (probs * shifted).sum())
    return float(probs.max()), max(entropy, 0.0)


class Decision:
    """The running decision for one answer: feed each shadow token; a reason means escalate."""

    def __init__(self, policy: EscalationPolicy) -> None:
        self.policy = policy
        self.tokens: list[int] = []
        self.text = ""
        self.entropies: list[float] = []

    @property
    def settled(self) -> bool:
        """The window has passed without escalation: the shadow's answer stands."""
        return len(self.tokens) >= self.policy.window

    def observe(self, token: int, text: str, top1: float, entropy: float) -> str | None:
        """Add one generated token (its text piece and the stats of the distribution it came from)."""
        policy = self.policy
        self.tokens.append(int(token))
        self.text += text
        self.entropies.append(entropy)
        n = len(self.tokens)
        if policy.marker is not None and policy.marker in self.text:
            return f"marker {policy.marker!r} in the shadow's first {n} tokens"
        if policy.marker_ids is not None and _contains(self.tokens, policy.marker_ids):
            return f"marker ids {list(policy.marker_ids)} in the shadow's first {n} tokens"
        if top1 < policy.confidence_threshold:
            return f"confidence: top-1 probability {top1:.3f} < {policy.confidence_threshold:g} at token {n}"
        return self._entropy() if self.settled else None

    def finish(self) -> str | None:
        """The shadow finished inside the window: the rules over all its tokens."""
        return self._entropy()

    def _entropy(self) -> str | None:
        limit = self.policy.max_mean_entropy
        mean = float(np.mean(self.entropies)) if self.entropies else 0.0
        if limit is not None and mean > limit:
            return f"entropy: mean {mean:.2f} nats > {limit:g} over {len(self.entropies)} tokens"
        return None


def _contains(tokens: Sequence[int], pattern: Sequence[int]) -> bool:
    width = len(pattern)
    return any(list(tokens[i : i + width]) == list(pattern) for i in range(len(tokens) - width + 1))
