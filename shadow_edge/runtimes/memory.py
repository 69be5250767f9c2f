"""Where a process's memory goes, read from the kernel (Linux /proc), for `bench`'s RSS breakdown.

RSS = file pages mapped into the process (the bundle's weights, memory-mapped by onnxruntime; the
interpreter's and libraries' code) + anonymous memory (prepacked weight copies, onnxruntime's arenas,
numpy arrays such as the KV caches, Python objects). The breakdown of a mode (bench.memory_breakdown)
measures each part as the difference of these figures across one step of a load and a generation.
Elsewhere than on Linux every figure is None.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_MIB = 1024  # /proc reports kB


@dataclass(frozen=True)
class Rss:
    """Resident memory of this process now, in MiB."""

    total: float
    anonymous: float
    file: float  # total - anonymous: mapped files (and shared memory)


def rss_now() -> Rss | None:
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    except OSError:
        return None
    total, anonymous = (int(fields[k].split()[0]) / _MIB for k in ("Rss", "Anonymous"))
    return Rss(total, anonymous, total - anonymous)


def mapped_mb(files: Iterable[Path]) -> float | None:
    """Resident MiB of the mappings of these files (each counted once however many sessions map it)."""
    wanted = {os.path.realpath(f) for f in files}
    total, current = 0, False
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                head = line.split(None, 5)
                if len(head) >= 5 and "-" in head[0]:  # a mapping's header: address perms offset dev inode [path]
                    current = len(head) == 6 and head[5].strip() in wanted
                elif current and head[0] == "Rss:":
                    total += int(head[1])
    except OSError:
        return None
    return total / _MIB


def reset_peak() -> bool:
    """Start VmHWM (peak RSS) over from the current RSS, so that a later peak_rss_mb() is the peak of
    what ran since. Writing 5 to clear_refs does it (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5\n")
        return True
    except OSError:
        return False


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_heap() -> None:
    """Hand the C heap's free pages back to the kernel. glibc keeps freed memory in its heaps (one
    per thread that allocated) for reuse: after the tokenizer encoded a 10^6-character prompt
    (tokenizers' Rust allocations: about 115 MB at the peak for SmolLM2's), the server stayed that
    much larger, growing with each such request as the heaps fragmented. malloc_trim(0) returns it
    (a few ms)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
