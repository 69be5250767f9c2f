"""Speculative decoding against plain attached decoding, greedy, side by side on the same prompts.

    python benchmarks/speculative.py BUNDLE [--threads 2] [--repeat 3] [--draft-tokens 4]
        [--out benchmarks/results/speculative.json]

Chat prompts of the trained robot demo: commands, which its shadow answers as the attached model
does (drafts accepted), and questions, to which the shadow says [REMOTE] (drafts rejected: what the
adaptive draft length costs). Medians of `repeat` timed runs after a warm-up; the tokens of both
runs are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import shadow_edge

PROMPTS = {
    "command": ["Walk forward three steps.", "Turn left and then sit down.", "Pick up the red ball."],
    "question": ["Why do cats purr?", "What is the capital of France?"],
}
MAX_NEW = 48


def timed(model, messages: list[dict], repeat: int) -> tuple[float, list[int]]:
    model.chat(messages, temperature=0, max_new_tokens=MAX_NEW)
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = model.chat(messages, temperature=0, max_new_tokens=MAX_NEW)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), result.token_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speculative.json")
    args = parser.parse_args()
    attached = shadow_edge.load(args.bundle, threads=args.threads)
    speculative = shadow_edge.load_speculative(args.bundle, draft_tokens=args.draft_tokens, threads=args.threads)
    rows = []
    for kind, prompts in PROMPTS.items():
        for prompt in prompts:
            messages = [{"role": "user", "content": prompt}]
            plain_s, plain_ids = timed(attached, messages, args.repeat)
            spec_s, spec_ids = timed(speculative, messages, args.repeat)
            row = {
                "kind": kind,
                "prompt": prompt,
                "tokens": len(plain_ids),
                "attached_s": round(plain_s, 4),
                "speculative_s": round(spec_s, 4),
                "speedup": round(plain_s / spec_s, 2),
                "same_tokens": plain_ids == spec_ids,
                **speculative.stats.to_dict(),
            }
            rows.append(row)
            print(json.dumps(row))
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    precisions = sorted({g.get("precision", "float32") for g in manifest["graphs"].values()})
    report = {"bundle": str(args.bundle), "precisions": precisions, "threads": args.threads, "rows": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
