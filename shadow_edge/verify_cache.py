"""Remembered sha256 checks, so that a bundle is hashed once, not on every start.

Hashing the SmolLM2 demo's 548 MB weights file took 0.5-1 s of every `run` (issue 15). A file whose
sha256 matched once is remembered by its stat: device, inode, size, mtime and ctime (ns). Any write to
the file changes its ctime, which no unprivileged process can set back (unlike mtime, which `touch`
can), so a modified file is hashed again. Bit rot that bypasses the filesystem is not seen by a stat:
`SHADOW_EDGE_VERIFY_CACHE=0` hashes every time.

The record lives in the user's cache folder (`$SHADOW_EDGE_CACHE_DIR`, else `$XDG_CACHE_HOME/shadow-edge`,
else `~/.cache/shadow-edge`), one small JSON file; when it cannot be read or written, files are simply
hashed as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

CACHE_FILE = "verified.json"
MAX_ENTRIES = 512  # a few bundles' files; the oldest are dropped


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _enabled() -> bool:
    return os.environ.get("SHADOW_EDGE_VERIFY_CACHE", "1") != "0"


def cache_path() -> Path:
    if "SHADOW_EDGE_CACHE_DIR" in os.environ:
        return Path(os.environ["SHADOW_EDGE_CACHE_DIR"]) / CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "shadow-edge" / CACHE_FILE


def _key(path: Path) -> tuple[str, list[int]]:
    st = path.stat()
    return os.path.realpath(path), [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _load() -> dict[str, dict]:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(entries: dict[str, dict]) -> None:
    path = cache_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verified-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(dict(list(entries.items())[-MAX_ENTRIES:]), fh)
        os.replace(tmp, path)  # atomic: concurrent runs never read half a file


def hash_matches(path: Path, sha256: str) -> bool:
    """Whether the file's sha256 is `sha256`: hashed unless the same file was found to match before."""
    if not _enabled():
        return sha256_file(path) == sha256
    name, stat = _key(path)
    entries = _load()
    seen = entries.get(name)
    if isinstance(seen, dict) and seen.get("stat") == stat and seen.get("sha256") == sha256:
        return True
    if sha256_file(path) != sha256:
        return False
    entries.pop(name, None)  # re-inserted last: the most recent survive the bound
    entries[name] = {"stat": stat, "sha256": sha256}
    _save(entries)
    return True
