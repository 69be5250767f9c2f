"""`shadow-edge serve` as a user starts it: a subprocess on a free loopback port (test helper)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_command(bundle: Path, *options: str, timeout: float = 60) -> Iterator[tuple[str, subprocess.Popen]]:
    """Runs `shadow-edge serve BUNDLE --port P OPTIONS` (this checkout's code: the environment is
    passed on) and yields (its URL, the process) once /health answers; stops it afterwards."""
    port = free_port()
    command = [sys.executable, "-c", "from shadow_edge.cli import app; app()", "serve", str(bundle)]
    command += ["--port", str(port), *options]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)

    def stderr() -> str:
        proc.terminate()
        return proc.communicate(timeout=60)[1]

    try:
        assert select.select([proc.stdout], [], [], timeout)[0], "the command printed nothing"
        line = proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        assert url in line, line + stderr()
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):  # URLError: refused until it listens
                with urllib.request.urlopen(url + "/health", timeout=timeout) as answer:
                    json.load(answer)
                break
            assert proc.poll() is None and time.monotonic() < deadline, stderr()
            time.sleep(0.05)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)
