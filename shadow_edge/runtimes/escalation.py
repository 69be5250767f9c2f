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
the cascade holds the shadow's text back until then and streams it afterwards. The policy itself
(its fields, checks and manifest schema) is escalation_policy.py, beside the manifest's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..escalation_policy import EscalationPolicy

__all__ = ["Decision", "EscalationPolicy", "next_token_stats"]


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
