"""The `shadow-edge` command: wiring only. Each command checks its flags, calls one library
function, and prints a Rich table or JSON. Library errors become one line (what happened, what
to do next) and exit code 1; SHADOW_EDGE_DEBUG=1 shows the traceback instead. torch is imported
by `export` alone, so the other commands start fast and run where torch is not installed.

    common.py            the Typer app, the consoles, one-line errors
    export_commands.py   export, inspect
    run_commands.py      run (attached, detached, cascade), serve
    classify_command.py  classify (classifier bundles)
    quality_commands.py  quantize, eval
    bench_command.py     bench
"""

from importlib import import_module

from .common import app

# importing a module registers its commands; --help lists them in this order
for _module in ("export_commands", "run_commands", "classify_command", "quality_commands", "bench_command"):
    import_module(f".{_module}", __name__)

__all__ = ["app"]
