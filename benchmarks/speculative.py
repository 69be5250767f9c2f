"""Speculative decoding against plain attached decoding, side by side on the same prompts: greedy
and sampled (temperature 0.7, fixed seeds), one prompt and a batch, and the cascade continuing a
local escalation speculatively.

    python benchmarks/speculative.py BUNDLE [--threads 2] [--repeat 3] [--draft-tokens 4]
        [--temperature 0.7] [--out benchmarks/results/speculative.json]

Chat prompts of the trained robot demo: commands, which its shadow answers as the attached model
does (drafts accepted), and questions, to which the shadow says [REMOTE] (drafts rejected: what the
adaptive draft length costs). Each measurement runs the two sides alternately, `repeat` times after
a warm-up, with the same seeds (run i: seed i); tok/s is new tokens over wall time (prompt
included), summed over the runs. Greedy rows compare the tokens; sampled rows cannot (the two
consume random numbers differently) and give the acceptance instead.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import shadow_edge
from shadow_edge.runtimes.speculative import SpeculativeStats

PROMPTS = {
    "command": ["Walk forward three steps.", "Turn left and then sit down.", "Pick up the red ball."],
    "question": ["Why do cats purr?", "What is the capital of France?"],
}
MAX_NEW = 48


def side_by_side(calls: dict, repeat: int) -> dict:
    """calls: name -> f(seed) -> list of results. Per name: seconds, new tokens, tok/s, results."""
    for call in calls.values():
        call(0)  # warm-up
    seconds = dict.fromkeys(calls, 0.0)
    results: dict[str, list] = {name: [] for name in calls}
    for seed in range(repeat):
        for name, call in calls.items():
            started = time.perf_counter()
            results[name] += call(seed)
            seconds[name] += time.perf_counter() - started
    out = {}
    for name in calls:
        tokens = sum(r.new_tokens for r in results[name])
        out[name] = {
            "s": seconds[name] / repeat,
            "tok_per_s": round(tokens / seconds[name], 2),
            "results": results[name],
        }
    return out


def chat_call(model, messages: list[dict], settings: dict):
    return lambda seed: [model.chat(messages, max_new_tokens=MAX_NEW, seed=seed, **settings)]


def batch_call(model, prompts: list[list[int]], settings: dict):
    return lambda seed: model.generate_batch(prompts, max_new_tokens=MAX_NEW, seed=seed, **settings)


def row(kind: str, prompt: str, sides: dict, greedy: bool, base: str = "attached", fast: str = "speculative") -> dict:
    plain, spec = sides[base], sides[fast]
    stats = SpeculativeStats.total([r.speculative for r in spec["results"] if r.speculative]).to_dict()
    entry = {
        "kind": kind,
        "prompt": prompt,
        "decoding": "greedy" if greedy else "sampled",
        "new_tokens": round(sum(r.new_tokens for r in spec["results"]) / len(spec["results"]), 1),
        f"{base}_s": round(plain["s"], 4),
        f"{fast}_s": round(spec["s"], 4),
        f"{base}_tok_per_s": plain["tok_per_s"],
        f"{fast}_tok_per_s": spec["tok_per_s"],
        "speedup": round(spec["tok_per_s"] / plain["tok_per_s"], 2),
        **stats,
    }
    if greedy:
        entry["same_tokens"] = [r.token_ids for r in plain["results"]] == [r.token_ids for r in spec["results"]]
    print(json.dumps(entry), flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speculative.json")
    args = parser.parse_args()
    opened = dict(threads=args.threads)
    attached = shadow_edge.open(args.bundle, "attached", **opened)
    speculative = shadow_edge.open(args.bundle, "speculative", draft_tokens=args.draft_tokens, **opened)
    sides = {"attached": attached, "speculative": speculative}
    decodings = {"greedy": {"temperature": 0.0}, "sampled": {"temperature": args.temperature}}
    rows = []
    for decoding, settings in decodings.items():
        greedy = decoding == "greedy"
        for kind, prompts in PROMPTS.items():
            for prompt in prompts:
                messages = [{"role": "user", "content": prompt}]
                calls = {name: chat_call(model, messages, settings) for name, model in sides.items()}
                rows.append(row(kind, prompt, side_by_side(calls, args.repeat), greedy))
        # a batch of the commands: one call, rows left-padded
        batch = [attached.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS["command"]]
        calls = {name: batch_call(model, batch, settings) for name, model in sides.items()}
        rows.append(row("command batch", " | ".join(PROMPTS["command"]), side_by_side(calls, args.repeat), greedy))
    # the cascade: the shadow says [REMOTE] to questions, so it escalates here; the attached answer
    # decoded plainly or speculatively (the other models closed first: memory)
    del attached, speculative, sides
    cascades = {
        "cascade": shadow_edge.open(args.bundle, "cascade", **opened),
        "cascade_speculative": shadow_edge.open(args.bundle, "cascade", draft_tokens=args.draft_tokens, **opened),
    }
    for prompt in PROMPTS["question"]:
        messages = [{"role": "user", "content": prompt}]
        calls = {name: chat_call(model, messages, decodings["greedy"]) for name, model in cascades.items()}
        measured = side_by_side(calls, args.repeat)
        entry = row("cascade escalated", prompt, measured, True, base="cascade", fast="cascade_speculative")
        entry["served_by"] = sorted({r.served_by for side in measured.values() for r in side["results"]})
        rows.append(entry)
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    precisions = sorted({g.get("precision", "float32") for g in manifest["graphs"].values()})
    report = {
        "bundle": str(args.bundle),
        "precisions": precisions,
        "threads": args.threads,
        "repeat": args.repeat,
        "draft_tokens": args.draft_tokens,
        "temperature": args.temperature,
        "max_new_tokens": MAX_NEW,
        "load_average": os.getloadavg(),  # the machine's load when the run ended: figures are relative
        "rows": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
