"""Latency of each cascade path for one prompt: the shadow alone, local escalation (attached on this
device, reusing the shadow's prompt work), remote escalation (a `shadow-edge serve` attached server on
loopback), next to plain attached and detached runs of the same prompts.

    python benchmarks/cascade_latency.py BUNDLE [--threads 2] [--repeat 3]
        [--out benchmarks/results/cascade_latency.json]

The command prompt is answered by the trained demo shadow itself; the question makes it say
[REMOTE]. The forced rows (--confidence-threshold 1.5) escalate the command too, to time the
escalation paths on the same prompt the shadow answers. The server runs on the same 2 cores, idle
while the device decodes, so remote figures are a lower bound on a real network's. Medians of
`repeat` runs after one warm-up; each path in the same process, side by side.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

COMMAND = "Walk forward three steps."
QUESTION = "Why do cats purr?"
MAX_NEW = 48


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server at {url} did not come up")


def _time(call, repeat: int) -> dict:
    call()  # warm-up: first-run allocations and page faults
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        runs.append((time.perf_counter() - started, result))
    seconds = [s for s, _ in runs]
    result = runs[-1][1]
    return {
        "latency_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "served_by": getattr(result, "served_by", result.mode),
        "reason": getattr(result, "reason", None),
        "shadow_s": getattr(result, "shadow_s", None),
        "new_tokens": result.new_tokens,
        "text": result.text,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cascade_latency.json"))
    args = parser.parse_args()

    import shadow_edge

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("shadow-edge")), "serve", str(args.bundle), "--port", str(port)]
        + ["--threads", str(args.threads)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_healthy(url)
        opened = {"threads": args.threads, "verify": "size"}
        models = {
            "attached": shadow_edge.load(args.bundle, mode="attached", **opened),
            "detached": shadow_edge.load(args.bundle, mode="detached", **opened),
            "cascade": shadow_edge.load_cascade(args.bundle, **opened),
            "cascade forced local": shadow_edge.load_cascade(args.bundle, confidence_threshold=1.5, **opened),
            "cascade remote": shadow_edge.load_cascade(args.bundle, remote=url, **opened),
            "cascade forced remote": shadow_edge.load_cascade(
                args.bundle, remote=url, confidence_threshold=1.5, **opened
            ),
        }
        settings = {"max_new_tokens": MAX_NEW, "temperature": 0.0}
        rows = {}
        for label, prompt in (("command", COMMAND), ("question", QUESTION)):
            messages = [{"role": "user", "content": prompt}]
            rows[label] = {
                name: _time(lambda m=model, msgs=messages: m.chat(msgs, **settings), args.repeat)
                for name, model in models.items()
            }
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = {
        "bundle": str(args.bundle),
        "threads": args.threads,
        "repeat": args.repeat,
        "max_new_tokens": MAX_NEW,
        "prompts": {"command": COMMAND, "question": QUESTION},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for label, row in rows.items():
        print(f"\n{label}: {report['prompts'][label]!r}")
        for name, r in row.items():
            print(f"  {name:24s} {r['latency_s']:6.2f} s  served by {r['served_by']:8s} {r['text'][:60]!r}")


if __name__ == "__main__":
    main()
