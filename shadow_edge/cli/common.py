"""The Typer app every command module registers with, its consoles, and one-line errors."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from ..errors import OS_PROBLEMS, ShadowEdgeError


def _hide_flag_metavars(command: Any, ctx: Any) -> None:
    """Flags (options that take no value) show no `<bool>` metavar in --help."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False):
            param.metavar = ""


class Command(TyperCommand):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        _hide_flag_metavars(self, ctx)
        super().format_help(ctx, formatter)


class Group(TyperGroup):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        _hide_flag_metavars(self, ctx)
        super().format_help(ctx, formatter)


app = typer.Typer(
    cls=Group,
    no_args_is_help=True,
    add_completion=False,
    help="Export ShadowPEFT models to ONNX and run them on edge CPUs.",
)


def command(name: str | None = None) -> Callable[[Callable[..., Any]], Any]:
    """app.command() with this CLI's help (see Command)."""
    return app.command(name=name, cls=Command)


def _print_version(value: bool) -> None:
    if value:
        print(f"shadow-edge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Export ShadowPEFT models to ONNX and run them on edge CPUs."""


MODE_HELP = "attached, detached, base, cascade (shadow first, escalating when unsure) or speculative"
PIPE_WIDTH = 1000  # columns for output that is not a terminal (a table is as wide as its cells need)


def make_console(stderr: bool = False) -> Console:
    """A terminal gets its own width; a pipe or a file would get Rich's 80 columns, which cut table
    cells to "attac…", so it gets PIPE_WIDTH (unless COLUMNS says otherwise)."""
    terminal = Console(stderr=stderr)
    if terminal.is_terminal or "COLUMNS" in os.environ:
        return terminal
    return Console(stderr=stderr, width=PIPE_WIDTH)


console = make_console()
err_console = make_console(stderr=True)


DEBUG_VARIABLE = "SHADOW_EDGE_DEBUG"
DEBUG_HINT = f"{DEBUG_VARIABLE}=1 shows the traceback"


def fail(message: str, hint: str = "") -> None:
    """One line on stderr (never wrapped), then exit 1. Messages quote user input: escape Rich markup."""
    err_console.print(
        f"[bold red]error:[/] {escape(message)}" + (f"; [dim]{escape(hint)}[/]" if hint else ""),
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1)


def warn(message: str) -> None:
    """One warning line on stderr; the command goes on."""
    err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def os_error_message(exc: OSError) -> tuple[str, str]:
    """(what happened, what to do next) for a filesystem or socket error: one line naming the path."""
    problem, hint = OS_PROBLEMS.get(exc.errno or 0, (exc.strerror or str(exc), ""))
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    if exc.errno == errno.EEXIST and paths and Path(paths[0]).is_file():  # mkdir(parents=True) through a file
        problem, hint = "is a file where a folder is needed", "check the path"
    return (f"{' -> '.join(paths)}: {problem}" if paths else problem[:1].upper() + problem[1:]), hint


def error_message(exc: BaseException) -> tuple[str, str] | None:
    """The CLI's one error table: (message, hint) for an expected failure, None for a bug (which
    keeps its traceback). Every hint names the debug variable."""
    if isinstance(exc, ShadowEdgeError):
        message, hint = str(exc), exc.hint
    elif isinstance(exc, ImportError):
        message, hint = (
            f"{exc.name or exc} is not installed",
            'install the export extra: pip install "shadow-edge[export]"',
        )
    elif isinstance(exc, OSError):
        message, hint = os_error_message(exc)
    else:
        return None
    return message, f"{hint} ({DEBUG_HINT})" if hint else DEBUG_HINT


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures (error_message's table, and Ctrl-C) into one line and a non-zero exit."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        if os.environ.get(DEBUG_VARIABLE):
            return command(*args, **kwargs)
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: nothing was written")
            raise typer.Exit(130) from None
        except Exception as exc:
            known = error_message(exc)
            if known is None:
                raise
            fail(*known)

    return run


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
