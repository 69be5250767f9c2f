"""int4/int8 variants of one float32 bundle: size, fidelity and decode speed, side by side.

    python benchmarks/quantize_variants.py BUNDLE [--threads 2] [--rounds 2] [--scratch DIR]
                                          [--only NAME ...] [--no-speed] [--out FILE]

BUNDLE is a float32 bundle (the SmolLM2 demo export, with --with-base for the base-mode figures).
Each variant is quantized once into --scratch (kept between runs), evaluated against BUNDLE by
quantize itself (the figures in its manifest), then every variant and BUNDLE decode in interleaved
rounds, each run in its own process (quantized_decode.measure): on a shared machine only the ratios
to float32 within one round mean something, so the JSON gives the median per-round ratio.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from quantized_decode import bundle_bytes, measure

VARIANTS: dict[str, dict] = {
    "int4 round-to-nearest, fp32 head (before)": {"to": "int4", "grid": False, "quantize_head": False},
    "int4 (default: grid-exact, int8 head, off-grid int8)": {"to": "int4"},
    "int4 grid-exact, fp32 head": {"to": "int4", "quantize_head": False},
    "int4 grid-exact, off-grid int4": {"to": "int4", "off_grid": "int4"},
    "int4 grid-exact, off-grid float32": {"to": "int4", "off_grid": "float32"},
    "int4 grid-exact, accuracy level 0": {"to": "int4", "accuracy_level": 0},
    "int8 grid-exact (default)": {"to": "int8"},
    "int8 grid-exact, accuracy level 4": {"to": "int8", "accuracy_level": 4},
}
FIGURES = ("top1_agreement", "mean_kl", "greedy_agreement", "greedy_token_agreement", "perplexity")


def _slug(name: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scratch", type=Path, default=Path(__file__).parent / "results" / "tmp")
    parser.add_argument("--only", nargs="*", help="variant names (default: all)")
    parser.add_argument("--no-speed", action="store_true", help="sizes and fidelity only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "quantize_variants.json")
    args = parser.parse_args()

    from shadow_edge.bundle import read_manifest
    from shadow_edge.bundle_tools.quantize import quantize_bundle

    chosen = {name: VARIANTS[name] for name in args.only or VARIANTS}
    bundles = {"float32": args.bundle}
    report: dict = {"threads": args.threads, "float32_bundle_mb": round(bundle_bytes(args.bundle) / 2**20, 1)}
    report["variants"] = {}
    for name, options in chosen.items():
        out = bundles[name] = args.scratch / f"variant-{_slug(name)}"
        if not (out / "manifest.json").is_file():
            quantize_bundle(args.bundle, out, force=True, threads=args.threads, **options)
        manifest = read_manifest(out)
        fidelity = manifest.fidelity["modes"]
        report["variants"][name] = {
            "options": options,
            "size_vs_float32": round(bundle_bytes(out) / bundle_bytes(args.bundle), 3),
            "fidelity": {mode: {k: round(f[k], 4) for k in FIGURES} for mode, f in fidelity.items()},
            "quantization": manifest.graphs["backbone"].quantization if "backbone" in manifest.graphs else None,
        }
        print(name, json.dumps(report["variants"][name]["fidelity"]), flush=True)
    if not args.no_speed:
        report["load_average_before"] = os.getloadavg()  # other processes on the machine skew every figure
        samples: dict = {}
        for _ in range(args.rounds):
            for mode in ("attached", "detached"):
                for name, bundle in bundles.items():
                    samples.setdefault((mode, name), []).append(measure(bundle, mode, "load()", args.threads))
        for (mode, name), runs in samples.items():
            tok_s = [run["tok_per_s"] for run in runs]
            ratio = float(np.median(np.divide(tok_s, [r["tok_per_s"] for r in samples[(mode, "float32")]])))
            row = {"tok_per_s": tok_s, "ratio_to_float32": round(ratio, 2), "peak_rss_mb": runs[-1]["peak_rss_mb"]}
            report.setdefault("decode", {}).setdefault(mode, {})[name] = row
            print(mode, name, json.dumps(row), flush=True)
        report["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
