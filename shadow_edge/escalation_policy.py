"""The cascade's escalation policy: the `escalation` section of a bundle manifest, beside the
manifest's schema (bundle.py reads POLICY_SECTION and POLICY_LIMITS from here), so that the
exporter writing it and the runtime reading it share one definition. What each setting does is
in runtimes/escalation.py, which runs the decision. Imports only the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import GenerationError

# the manifest's `escalation` object: its keys' types and its numbers' bounds (manifest_schema.py)
POLICY_SECTION = {
    "marker": str | None,
    "marker_ids": list[int] | None,
    "confidence_threshold": float,
    "max_mean_entropy": float | None,
    "window": int,
}
POLICY_LIMITS = {  # marker_ids: bundle.py bounds them by its vocabulary limit
    "confidence_threshold": (0, 1e4),
    "max_mean_entropy": (0, 1e4),
    "window": (1, 1 << 16),
}


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
