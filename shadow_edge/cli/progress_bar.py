"""Rich rendering of the library's progress callbacks (shadow_edge/progress.py) on stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..progress import Progress as Callback
from ..progress import silent
from .common import err_console


@contextlib.contextmanager
def progress_bar(quiet: bool = False) -> Iterator[Callback]:
    """A callback drawing the current step, a bar with the steps done and an ETA when the total
    is known, and the time elapsed; it leaves nothing behind on the terminal. Nothing at all
    when quiet (--json) or when stderr is not a terminal, so that logs and pipes stay clean."""
    if quiet or not err_console.is_terminal:
        yield silent
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def update(label: str, done: int, total: int | None) -> None:
            bar.update(task, description=label, completed=done, total=total)

        yield update
