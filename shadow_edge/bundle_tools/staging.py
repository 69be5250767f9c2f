"""Atomic output folders: everything a command writes goes to a temporary folder beside the output,
which replaces it only when complete. Used by export and quantize alike.

- An output that is, contains, or lies inside one of the command's inputs is refused, `--force` or not
  (replacing it would delete the only copy of a checkpoint or a base model).
- On any failure (or Ctrl-C) the temporary folder is removed and an existing output is left untouched.
- A complete old output is swapped with the new one in one step (Linux renameat2 RENAME_EXCHANGE), so
  there is no moment without a complete output; elsewhere two renames (a moment without one).
- A killed command (SIGKILL, power loss) cannot clean up: each of its folders has a marker beside it
  (`<folder>.owner`, the owner's pid and host), and the next command writing to the same place removes
  the folders whose owner is gone. Folders without a marker are never touched.
- Filesystem errors (full disk, read-only, a parent that is a file) become one-line OutputError.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import OS_PROBLEMS, OutputError, OutputExistsError

MARKER_SUFFIX = ".owner"  # beside each staging folder, JSON {pid, host}: what makes a leftover safe to delete
_RENAME_EXCHANGE = 2


def check_not_an_input(output: Path, inputs: Sequence[Path | None]) -> None:
    """Refuse an output that is, contains, or lies inside any input (symlinks resolved)."""
    out = output.resolve()
    for given in inputs:
        if given is None:
            continue
        src = Path(given).resolve()
        if out == src:
            relation = "is"
        elif out in src.parents:
            relation = "contains"
        elif src in out.parents:
            relation = "lies inside"
        else:
            continue
        raise OutputError(
            f"output {output} {relation} the input {given}: writing it would delete the input",
            hint="choose an output folder outside the checkpoint, the base model and the shadow model",
        )


def _owner_alive(marker: Path) -> bool:
    try:
        owner = json.loads(marker.read_text(encoding="utf-8"))
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # unreadable: written by a process killed mid-write
    if host != socket.gethostname():
        return True  # another machine's (shared filesystem): not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(output: Path) -> list[Path]:
    """Remove the staging folders of killed commands that wrote to `output`; returns them."""
    removed = []
    for marker in output.parent.glob(f".{output.name}.*-*{MARKER_SUFFIX}"):
        folder = marker.with_name(marker.name.removesuffix(MARKER_SUFFIX))
        if marker.is_file() and not _owner_alive(marker):
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            marker.unlink(missing_ok=True)
    return removed


def _marker(folder: Path) -> Path:
    return folder.with_name(folder.name + MARKER_SUFFIX)


def _marked_folder(output: Path, kind: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f".{output.name}.{kind}-", dir=output.parent))
    folder.chmod(0o755)  # mkdtemp makes it private; a bundle is an ordinary folder
    _marker(folder).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}), encoding="utf-8")
    return folder


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    _marker(folder).unlink(missing_ok=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a filesystem without exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


def _replace(staged: Path, output: Path) -> None:
    """Move the complete `staged` folder onto `output`, never leaving `output` incomplete."""
    if not output.exists():
        staged.rename(output)
    elif exchange(staged, output):
        shutil.rmtree(staged, ignore_errors=True)  # now the old output
    else:
        old = _marked_folder(output, "old")
        output.rename(old / output.name)
        staged.rename(output)
        _remove(old)


def _filesystem_error(exc: OSError, output: Path) -> OutputError:
    where = Path(exc.filename) if exc.filename else output
    reason, next_step = OS_PROBLEMS.get(exc.errno or 0, (exc.strerror or type(exc).__name__, ""))
    # the output, a staging folder beside it, or its parent: a write failed, not a read of an input
    prefix = f".{output.name}."
    writing = where == output.parent or any(
        p.parent == output.parent and (p == output or p.name.startswith(prefix)) for p in (where, *where.parents)
    )
    hint = "; ".join(filter(None, [f"nothing was written to {output}", next_step]))
    return OutputError(f"{'cannot write ' if writing else ''}{where}: {reason}", hint=hint)


@contextlib.contextmanager
def staging(output: Path, force: bool, inputs: Sequence[Path | None] = ()) -> Iterator[Path]:
    """A temporary folder beside output, moved onto it only if the body completes."""
    check_not_an_input(output, inputs)
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise OutputError(f"output {output} is a file or a symlink, not a folder", hint="choose a folder path")
    blocking = next((p for p in output.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"cannot write {output}: {blocking} is a file, not a folder")
    if output.exists() and not force:
        raise OutputExistsError(f"output {output} already exists")
    staged: Path | None = None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(output)
        staged = _marked_folder(output, "partial")
        yield staged
        _replace(staged, output)
    except OSError as exc:
        raise _filesystem_error(exc, output) from None
    finally:  # also on KeyboardInterrupt
        if staged is not None:
            _remove(staged)
