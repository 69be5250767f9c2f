"""Typed errors of shadow-edge.

The library raises these; the CLI turns each into one line that says what happened and what to
do next (set SHADOW_EDGE_DEBUG=1 for the traceback). Every message names the bad value.
"""

from __future__ import annotations

import errno


class ShadowEdgeError(Exception):
    """Base class: an expected failure with a message meant for a person."""

    hint: str = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint or self.hint


class CheckpointError(ShadowEdgeError):
    """The checkpoint folder is missing, incomplete, or not a ShadowPEFT checkpoint."""


class BaseModelError(ShadowEdgeError):
    """The base model cannot be found, loaded, or does not fit the adapter."""

    hint = "pass the base model folder with --base DIR (see README: 'Where the base model comes from')"


class UnsupportedModelError(ShadowEdgeError):
    """The architecture is not one shadow-edge can export."""


class ExportError(ShadowEdgeError):
    """Export or post-export validation failed; nothing was written to the output."""


class OutputExistsError(ShadowEdgeError):
    """The output path exists and --force was not given."""

    hint = "choose another output path or pass --force to replace it"


class OutputError(ShadowEdgeError):
    """The output cannot be written where asked (it overlaps an input, or the filesystem refused);
    nothing was written and the inputs and any old output are intact."""


class BundleError(ShadowEdgeError):
    """A bundle is missing, corrupt, of an unknown version, or unsafe to load."""


class GenerationError(ShadowEdgeError):
    """A generation request is invalid (token ids, lengths, sampling settings)."""


class QuantizeError(ShadowEdgeError):
    """Quantization was refused (bad settings, an already quantized bundle) or, with strict, its
    fidelity fell under the floor; nothing was written to the output."""


class RemoteError(ShadowEdgeError):
    """The cascade's remote server could not be reached or refused the request."""

    hint = "check --remote (an OpenAI-compatible server, e.g. `shadow-edge serve BUNDLE`)"


class ServeError(ShadowEdgeError):
    """`serve` refused its settings (an exposed address without an API key, an empty key)."""


# errno -> (the problem, what to do next): filesystem errors name the path and say what went wrong
OS_PROBLEMS = {
    errno.ENOSPC: ("no space left on the device", "free some space or write somewhere else"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write somewhere else"),
    errno.EROFS: ("the filesystem is read-only", "write to a folder on a writable filesystem"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EISDIR: ("is a folder, not a file", "check the path"),
    errno.EACCES: ("permission denied", "check its permissions or use another path"),
    errno.EPERM: ("operation not permitted", "check its permissions or use another path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or close other programs"),
    errno.EADDRINUSE: ("the address is already in use", "choose another --port or stop the other server"),
    errno.EADDRNOTAVAIL: ("the address is not available on this machine", "check --host"),
}
