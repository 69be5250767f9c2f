"""Progress of the library's long calls (export, quantize, eval, bench): the caller passes a
callback and the library calls it as the work advances; it prints nothing itself. The CLI
renders the calls with Rich on stderr (cli/progress_bar.py). Imports only the standard library.

    progress("measuring detached", 2, 5)   # what runs now, steps done, steps in all
    progress("validating", 3, None)        # a step whose total is not known
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, "int | None"], None]


def silent(label: str, done: int, total: int | None) -> None:
    """The callback of a caller that wants no progress."""
