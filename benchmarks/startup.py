"""Time to first token of a fresh process: `shadow-edge run BUNDLE --detached` (and the cascade), with
the sha256 checks remembered (warm), not yet remembered (first run after export), or skipped, beside
llama.cpp (llama-cpp-python, the same SmolLM2 GGUF) when it is installed.

    python benchmarks/startup.py BUNDLE [--threads 2] [--repeat 5] [--out benchmarks/results/startup.json]

Each case runs `repeat` fresh processes of the runtime's Python (--python, default this one) after one
warm-up, on a warm page cache (dropping the page cache needs root and /proc/sys/vm/drop_caches: the
cold-cache row is measured only where that works). A process reports its own phases: interpreter start
to imports done, load() (verification, sessions, tokenizer), and the first token; `total` is the
process's wall time to its first token as a user waits for it (interpreter start included); peak_rss_mb
the process's VmHWM at that token (Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "Walk forward three steps."

# runs inside the measured process: phases from the interpreter's start (time.time() of the parent)
PROBE = r"""
import json, sys, time
t0 = float(sys.argv[1])
mode, bundle, threads, verify = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
import shadow_edge
from shadow_edge.runtimes.cascade import load_cascade
imported = time.time()
if mode == "cascade":
    model = load_cascade(bundle, threads=threads, verify=verify)
else:
    model = shadow_edge.load(bundle, mode=mode, threads=threads, verify=verify)
loaded = time.time()
first = next(iter(model.stream_chat([{"role": "user", "content": PROMPT}], max_new_tokens=1, temperature=0.0)))
done = time.time()
peak = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"imports_s": imported - t0, "load_s": loaded - imported, "first_token_s": done - loaded,
                  "total_s": done - t0, "peak_rss_mb": peak, "token": first.token}))
""".replace("PROMPT", repr(PROMPT))

LLAMA_PROBE = r"""
import json, sys, time
t0 = float(sys.argv[1])
from llama_cpp import Llama
imported = time.time()
llm = Llama(model_path=sys.argv[2], n_threads=int(sys.argv[3]), n_ctx=512, verbose=False)
loaded = time.time()
out = llm.create_chat_completion([{"role": "user", "content": PROMPT}], max_tokens=1, temperature=0.0)
done = time.time()
peak = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"imports_s": imported - t0, "load_s": loaded - imported, "first_token_s": done - loaded,
                  "total_s": done - t0, "peak_rss_mb": peak}))
""".replace("PROMPT", repr(PROMPT))


def _run(python: str, probe: str, args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [python, "-c", probe, repr(time.time()), *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"probe failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _case(python: str, probe: str, args: list[str], repeat: int, env: dict, before=None) -> dict:
    _run(python, probe, args, env)  # warm-up: page cache, remembered checks
    runs = []
    for _ in range(repeat):
        if before is not None:
            before()
        runs.append(_run(python, probe, args, env))
    keys = ("imports_s", "load_s", "first_token_s", "total_s", "peak_rss_mb")
    return {key: statistics.median(r[key] for r in runs) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--python", default=sys.executable, help="the runtime's interpreter (no torch needed)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/startup.json"))
    args = parser.parse_args()
    bundle = str(args.bundle.resolve())
    cache = tempfile.mkdtemp(prefix="startup-verify-cache-")
    env = {**os.environ, "SHADOW_EDGE_CACHE_DIR": cache}

    def forget_checks() -> None:
        Path(cache, "verified.json").unlink(missing_ok=True)

    rows: dict[str, dict] = {}
    base = [bundle, str(args.threads)]
    rows["detached, checks remembered"] = _case(args.python, PROBE, ["detached", *base, "hash"], args.repeat, env)
    rows["detached, first run (hashes every file)"] = _case(
        args.python, PROBE, ["detached", *base, "hash"], args.repeat, env, forget_checks
    )
    rows["detached, --no-verify"] = _case(args.python, PROBE, ["detached", *base, "size"], args.repeat, env)
    rows["cascade, checks remembered"] = _case(args.python, PROBE, ["cascade", *base, "hash"], args.repeat, env)
    rows["attached, checks remembered"] = _case(args.python, PROBE, ["attached", *base, "hash"], args.repeat, env)
    if _drop_page_cache():
        rows["detached, cold page cache"] = _case(
            args.python, PROBE, ["detached", *base, "hash"], args.repeat, env, _drop_page_cache
        )
    try:
        import llama_cpp  # noqa: F401

        from shadow_edge.exporters.demo import GGUF_FILE, smollm2_gguf_dir

        gguf = str(smollm2_gguf_dir() / GGUF_FILE)
        rows["llama.cpp (Q4_1 GGUF, base alone)"] = _case(
            sys.executable, LLAMA_PROBE, [gguf, str(args.threads)], args.repeat, os.environ.copy()
        )
    except ImportError:
        rows["llama.cpp (Q4_1 GGUF, base alone)"] = {"skipped": "llama-cpp-python is not installed"}
    report = {
        "schema": "shadow-edge-startup/1",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "bundle": bundle,
        "threads": args.threads,
        "repeat": args.repeat,
        "target": "detached first token <= 0.5 s warm (issue 15)",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, row in rows.items():
        figures = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)) or row.get("skipped")
        print(f"{name:45s} {figures}")


if __name__ == "__main__":
    main()
