"""Decode speed and size of float32 vs int8 vs int4 bundles, attached and detached, side by side.

    python benchmarks/quantized_decode.py BUNDLE [--threads 2] [--out benchmarks/results/quantized_decode.json]

BUNDLE is a float32 bundle (e.g. the SmolLM2 demo export). The int8 (accuracy levels 0 and 4),
int4 and int4-with-quantized-head bundles are written (once) under benchmarks/results/tmp/. Every
configuration runs in its own process (so peak RSS is its own): greedy decoding of NEW tokens after a
PROMPT-token prompt, timed per token after the first. Two loaders: `load()` (the runtime as shipped,
its per-graph prepacking choice) and `prepacked` (all graphs in sessions with default options,
weights prepacked). Writes JSON with tok/s, ratios to float32, peak RSS, bundle sizes and each
quantized bundle's fidelity.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

PROMPT, NEW = 32, 64
VARIANTS = {
    "int8": {"to": "int8"},
    "int8-acc4": {"to": "int8", "accuracy_level": 4},
    "int4": {"to": "int4"},
    "int4-head": {"to": "int4", "quantize_head": True},
}


def _decode(bundle: str, mode: str, loader: str, threads: int, queue) -> None:
    from shadow_edge.bundle import read_manifest
    from shadow_edge.bundle_tools.evaluate import open_engine
    from shadow_edge.runtimes.model import load

    ids = np.random.default_rng(0).integers(100, 10000, size=(1, PROMPT))
    if loader == "load()":
        result = load(bundle, mode=mode, threads=threads, verify="size").generate(
            ids[0].tolist(), max_new_tokens=NEW, temperature=0, eos_token_ids=[]
        )
        tok_s = result.decode_tok_per_s
    else:
        engine = open_engine(Path(bundle), read_manifest(bundle), mode, threads)
        seqs = engine.start(1)
        token = engine.forward(seqs, ids)[:, -1].argmax(-1)
        started = time.perf_counter()
        for _ in range(NEW - 1):
            token = engine.forward(seqs, token[:, None])[:, -1].argmax(-1)
        tok_s = (NEW - 1) / (time.perf_counter() - started)
    queue.put({"tok_per_s": round(tok_s, 2), "peak_rss_mb": _peak_rss_mb()})


def _peak_rss_mb() -> int:
    """VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return -1


def measure(bundle: Path, mode: str, loader: str, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_decode, args=(str(bundle), mode, loader, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def bundle_bytes(bundle: Path, mode: str | None = None) -> int:
    """Bytes on disk of the bundle's files (of one mode's graphs + weights.data when mode is given)."""
    from shadow_edge.bundle import MODE_GRAPHS, read_manifest

    m = read_manifest(bundle)
    names = [n for n in m.files if n not in m.mobile.get("files", [])]
    if mode is not None:
        names = [m.graphs[g].file for g in MODE_GRAPHS[mode]] + [n for n in names if n.endswith(".data")]
    return sum(m.files[n].size for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quantized_decode.json")
    args = parser.parse_args()

    from shadow_edge.bundle import read_manifest
    from shadow_edge.bundle_tools.quantize import quantize_bundle

    scratch = Path(__file__).parent / "results" / "tmp"
    bundles = {"float32": args.bundle}
    for name, options in VARIANTS.items():
        bundles[name] = scratch / f"quantized-{name}"
        if not (bundles[name] / "manifest.json").is_file():
            quantize_bundle(args.bundle, bundles[name], force=True, threads=args.threads, **options)
    phone = scratch / "quantized-int4-detached"
    if not (phone / "manifest.json").is_file():
        quantize_bundle(args.bundle, phone, "int4", modes=["detached"], check=False, force=True)

    report: dict = {"threads": args.threads, "prompt_tokens": PROMPT, "new_tokens": NEW, "sizes_mb": {}, "decode": {}}
    report["load_average_before"] = os.getloadavg()  # other processes on the machine skew every figure
    fp32_bytes = bundle_bytes(args.bundle)
    for name, bundle in bundles.items():
        size = bundle_bytes(bundle)
        report["sizes_mb"][name] = {"bundle": round(size / 2**20, 1), "ratio_to_float32": round(size / fp32_bytes, 3)}
        if name != "float32":
            report.setdefault("fidelity", {})[name] = read_manifest(bundle).fidelity["modes"]
    report["sizes_mb"]["int4 detached-only"] = {"bundle": round(bundle_bytes(phone) / 2**20, 1)}
    # interleaved rounds; tok/s is the best of each (the least disturbed run on a shared machine)
    samples: dict = {}
    for _ in range(args.rounds):
        for mode in ("attached", "detached"):
            for loader in ("load()", "prepacked"):
                for name, bundle in bundles.items():
                    samples.setdefault((mode, loader, name), []).append(measure(bundle, mode, loader, args.threads))
    for (mode, loader, name), runs in samples.items():
        best = max(runs, key=lambda run: run["tok_per_s"])
        report["decode"].setdefault(f"{mode} / {loader}", {})[name] = {
            **best,
            "all_tok_per_s": [run["tok_per_s"] for run in runs],
        }
    for key, rows in report["decode"].items():
        base = rows["float32"]["all_tok_per_s"]
        for row in rows.values():
            # per-round ratio to float32 measured seconds apart, median: robust to a busy machine
            row["speedup"] = round(float(np.median(np.divide(row["all_tok_per_s"], base))), 2)
        print(key, json.dumps({name: (row["tok_per_s"], row["speedup"]) for name, row in rows.items()}), flush=True)
    report["phone_detached_int4_1_thread"] = {
        "bundle_mb": report["sizes_mb"]["int4 detached-only"]["bundle"],
        **measure(phone, "detached", "load()", 1),
    }
    report["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["sizes_mb"]), json.dumps(report["phone_detached_int4_1_thread"]))


if __name__ == "__main__":
    main()
