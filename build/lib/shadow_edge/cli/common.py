"""The Typer app every command module registers with, its consoles, and one-line errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ShadowEdgeError

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Export ShadowPEFT models to ONNX and run them on edge CPUs."
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, hint: str = "") -> None:
    """One line on stderr (never wrapped), then exit 1. Messages quote user input: escape Rich markup."""
    err_console.print(
        f"[bold red]error:[/] {escape(message)}" + (f"; [dim]{escape(hint)}[/]" if hint else ""),
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors (and Ctrl-C) into one line and a non-zero exit."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        if os.environ.get("SHADOW_EDGE_DEBUG"):
            return command(*args, **kwargs)
        try:
            return command(*args, **kwargs)
        except ShadowEdgeError as exc:
            fail(str(exc), exc.hint)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: nothing was written")
            raise typer.Exit(130) from None
        except ImportError as exc:
            fail(f"{exc.name or exc} is not installed", 'install the export extra: pip install "shadow-edge[export]"')

    return run


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
