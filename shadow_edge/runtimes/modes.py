"""One entry point for every mode a bundle supports:

    open_model("out/", mode="attached")                  # also detached, base
    open_model("out/", mode="cascade", remote=None)      # + EscalationPolicy settings
    open_model("out/", mode="speculative", draft_tokens=4)
    open_model("out/", mode="cascade", draft_tokens=4)   # a local escalation decoded speculatively

load(), load_cascade() and load_speculative() stay as they are; this only chooses among them and
refuses options that belong to another mode (rather than ignoring them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bundle import CASCADE_GRAPHS, Manifest
from .model import MODES, ShadowEdgeModel, load

ALL_MODES = (*MODES, "cascade", "speculative")
CASCADE_OPTIONS = {"remote", "remote_api_key", "timeout", "marker", "marker_ids", "confidence_threshold"}
CASCADE_OPTIONS |= {"max_mean_entropy", "window"}


def supported_modes(manifest: Manifest) -> list[str]:
    """The modes of ALL_MODES this bundle can run: its engine modes, the cascade when it has the
    shadow head (escalating to attached here, or to a remote), speculative when it has that and
    the attached graphs."""
    modes = [m for m in MODES if m in manifest.modes]
    if all(g in manifest.graphs for g in CASCADE_GRAPHS["remote"]):
        modes.append("cascade")
        if "attached" in manifest.modes and all(g in manifest.graphs for g in CASCADE_GRAPHS["local"]):
            modes.append("speculative")
    return modes


def open_model(
    bundle: str | Path,
    mode: str = "attached",
    *,
    threads: int | None = None,
    verify: str = "hash",
    prepack: bool = True,
    draft_tokens: int | None = None,
    **cascade: Any,
) -> ShadowEdgeModel:
    """Open `bundle` in `mode` (one of ALL_MODES). draft_tokens: the most tokens the shadow drafts
    per backbone pass, in speculative mode (None: 4) and in the cascade, whose local escalation it
    makes speculative (None: plain attached decoding). cascade: load_cascade()'s remote,
    remote_api_key, timeout and escalation policy settings (None = the bundle's)."""
    if mode not in ALL_MODES:
        raise ValueError(f"mode must be one of {', '.join(ALL_MODES)}, got {mode!r}")
    unknown = sorted(set(cascade) - CASCADE_OPTIONS)
    if unknown:
        raise TypeError(f"open_model() got unknown options: {', '.join(unknown)}")
    given = sorted(k for k, v in cascade.items() if v is not None)
    if given and mode != "cascade":
        raise ValueError(f"{', '.join(given)} apply to cascade mode only, not {mode}")
    if draft_tokens is not None and mode not in ("speculative", "cascade"):
        raise ValueError(f"draft_tokens applies to speculative and cascade modes only, not {mode}")
    opened = dict(threads=threads, verify=verify, prepack=prepack)
    if mode == "cascade":
        from .cascade import load_cascade

        return load_cascade(bundle, **opened, draft_tokens=draft_tokens, **cascade)
    if mode == "speculative":
        from .speculative import DEFAULT_DRAFT_TOKENS, load_speculative

        return load_speculative(bundle, draft_tokens=draft_tokens or DEFAULT_DRAFT_TOKENS, **opened)
    return load(bundle, mode, **opened)
