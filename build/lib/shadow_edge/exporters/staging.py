"""Atomic output folders: everything a command writes goes to a temporary folder beside the output,
which is renamed onto it only when complete. On any failure (or Ctrl-C) the temporary folder is
removed and an existing output is left untouched. Used by export and quantize alike.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputExistsError


@contextlib.contextmanager
def staging(output: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside output, renamed onto it only if the body completes."""
    if output.exists() and not force:
        raise OutputExistsError(f"output {output} already exists")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is an ordinary folder
    try:
        yield staging
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            output.rename(old / output.name)
            staging.rename(output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(output)
    finally:  # also on KeyboardInterrupt
        shutil.rmtree(staging, ignore_errors=True)
