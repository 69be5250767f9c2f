"""Decode speed against context length (in-place KV caches) and a 5-turn chat with and without the
prompt cache, on the demo bundle (SmolLM2-135M + its 1-layer shadow), fp32.

    python benchmarks/kv_decode.py BUNDLE [--before /work/main] [--threads 2] [--repeat 2]
                                   [--out benchmarks/results/kv_decode.json]

Decode: each case is a fresh process of the runtime's Python (--python) importing shadow_edge from
one source tree: --before (e.g. a checkout of main: concat caches, one-shot prefill) or this one
(in-place caches, chunked prefill). It prefills a prompt of `ctx` tokens, then times each of
--steps greedy decode steps (the median step gives tok/s). Cases run interleaved (before, after,
before, ...) so that both see the same machine load; the target is tok/s at 2048 >= 0.9x at 256.
Paired: both layouts in one process of this tree, their decode steps alternating (concat caches are
what main runs), which a loaded machine disturbs far less than separate processes.
Prefill: a 2048-token prompt in 256-token chunks and at once, alternating in one process (seconds),
and the peak RSS a fresh process gains over it (activations bounded by the chunk).
Chat: 5 turns of a conversation, each prompt the whole conversation so far (after a system message
of ~400 tokens) rendered with the chat template; with the prompt cache a turn prefills only the
tokens after the longest prefix it shares with the previous turn's caches. Prefill time per turn
and the answers (identical) are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

DECODE = r"""
import json, sys, time
import numpy as np
import shadow_edge
bundle, mode, threads, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
contexts = [int(c) for c in sys.argv[5].split(",")]
model = shadow_edge.load(bundle, mode=mode, threads=threads, verify="size")
engine = model.engine
rng = np.random.default_rng(0)
out = {}
for ctx in contexts:
    ids = rng.integers(100, 40000, (1, ctx))
    seqs = engine.start(1)
    t0 = time.perf_counter()
    logits = engine.forward(seqs, ids)[:, -1]
    prefill = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        token = logits.argmax(-1)[:, None]
        t0 = time.perf_counter()
        logits = engine.forward(seqs, token)[:, -1]
        times.append(time.perf_counter() - t0)
    caches = list(seqs.caches.values())
    out[ctx] = {"prefill_s": prefill, "step_ms_median": 1e3 * sorted(times)[len(times) // 2],
                "tok_per_s": 1 / sorted(times)[len(times) // 2], "cache": type(caches[0]).__name__}
print(json.dumps(out))
"""

# both layouts in one process over the same sessions, their decode steps alternating, so that both
# see the same load from moment to moment: concat is the graphs' own layout (what main runs)
PAIRED = r"""
import copy, json, sys, time
import numpy as np
import shadow_edge
bundle, mode, threads, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
contexts = [int(c) for c in sys.argv[5].split(",")]
model = shadow_edge.load(bundle, mode=mode, threads=threads, verify="size")
shared = model.engine
concat = copy.copy(shared)
concat.runners = {name: copy.copy(runner) for name, runner in shared.runners.items()}
for runner in concat.runners.values():
    runner.kv_layout = "concat"
rng = np.random.default_rng(0)
out = {}
for ctx in contexts:
    ids = rng.integers(100, 40000, (1, ctx))
    state = {}
    for name, engine in (("concat", concat), ("shared_buffer", shared)):
        seqs = engine.start(1)
        state[name] = (engine, seqs, engine.forward(seqs, ids)[:, -1])
    times = {name: [] for name in state}
    for _ in range(steps):
        for name, (engine, seqs, logits) in state.items():
            t0 = time.perf_counter()
            logits = engine.forward(seqs, logits.argmax(-1)[:, None])[:, -1]
            times[name].append(time.perf_counter() - t0)
            state[name] = (engine, seqs, logits)
    out[ctx] = {name: 1 / sorted(t)[len(t) // 2] for name, t in times.items()}
print(json.dumps(out))
"""

# prefill of one long prompt in chunks and at once, alternating in one process
PREFILL = r"""
import json, sys, time
import numpy as np
import shadow_edge
bundle, mode, threads, ctx, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
model = shadow_edge.load(bundle, mode=mode, threads=threads, verify="size")
engine = model.engine
ids = np.random.default_rng(0).integers(100, 40000, (1, ctx))
times = {"chunked_256": [], "one_pass": []}
for _ in range(rounds):
    for name, chunk in (("chunked_256", 256), ("one_pass", 0)):
        engine.prefill_chunk = chunk
        t0 = time.perf_counter()
        engine.forward(engine.start(1), ids)
        times[name].append(time.perf_counter() - t0)
print(json.dumps({name: sorted(t)[len(t) // 2] for name, t in times.items()}))
"""

# peak RSS a fresh process gains over one long prefill, chunked (256) or at once (0)
PREFILL_RSS = r"""
import json, sys
import numpy as np
import shadow_edge
from shadow_edge.runtimes.generate import peak_rss_mb
bundle, mode, threads, ctx, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
model = shadow_edge.load(bundle, mode=mode, threads=threads, verify="size")
model.engine.prefill_chunk = chunk
before = peak_rss_mb()
model.engine.forward(model.engine.start(1), np.random.default_rng(0).integers(100, 40000, (1, ctx)))
print(json.dumps({"peak_rss_mb_before": before, "peak_rss_mb_after": peak_rss_mb()}))
"""

CHAT = r"""
import json, sys, time
import shadow_edge
from shadow_edge.runtimes.prompt_cache import PromptCache
bundle, mode, threads, cached = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
model = shadow_edge.load(bundle, mode=mode, threads=threads, verify="size")
if cached:
    model.prompt_cache = PromptCache()
questions = ["What is the capital of France?", "And of Italy?", "Which of the two is larger?",
             "Name a famous museum in the larger one.", "Summarize our conversation in one sentence."]
# a system message with some context, as an assistant prompt carries: each turn repeats it
system = "You answer questions about European geography briefly. " + " ".join(
    f"Fact {i}: the city number {i} on our list has a river, a museum and a market square." for i in range(20))
messages, turns = [{"role": "system", "content": system}], []
for q in questions:
    messages.append({"role": "user", "content": q})
    t0 = time.perf_counter()
    r = model.chat(messages, max_new_tokens=48, temperature=0.0)
    wall = time.perf_counter() - t0
    messages.append({"role": "assistant", "content": r.text})
    turns.append({"prompt_tokens": r.prompt_tokens, "prefill_s": r.prefill_s, "wall_s": wall,
                  "new_tokens": r.new_tokens, "token_ids": r.token_ids})
print(json.dumps({"turns": turns, "prefilled_tokens": model.prompt_cache.prefilled_tokens if cached else None}))
"""


def run(python: str, source: Path, code: str, *args: object) -> dict:
    env = dict(os.environ, PYTHONPATH=str(source))
    # cwd: `python -c` puts the working directory first on sys.path, before PYTHONPATH
    command = [python, "-c", code, *map(str, args)]
    out = subprocess.run(command, env=env, cwd=source, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--before", type=Path, help="source tree of the version to compare (e.g. main)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--contexts", default="256,2048")
    parser.add_argument("--out", type=Path, default=HERE / "benchmarks/results/kv_decode.json")
    parser.add_argument("--parts", default="decode,paired,prefill,chat", help="which to run (others are kept)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    sources = {"after": HERE} | ({"before": args.before.resolve()} if args.before else {})
    contexts = [int(c) for c in args.contexts.split(",")]

    decode: dict[str, dict[str, dict[str, list]]] = {}
    for _ in range(args.repeat if "decode" in parts else 0):
        for mode in ("attached", "detached"):
            for name, source in sources.items():
                got = run(args.python, source, DECODE, args.bundle, mode, args.threads, args.steps, args.contexts)
                for ctx, figures in got.items():
                    slot = decode.setdefault(name, {}).setdefault(mode, {}).setdefault(ctx, [])
                    slot.append(figures)
                print(name, mode, {c: round(f["tok_per_s"], 1) for c, f in got.items()}, file=sys.stderr)
    summary = {}
    for name, modes in decode.items():
        for mode, by_ctx in modes.items():
            rate = {ctx: statistics.median(f["tok_per_s"] for f in runs) for ctx, runs in by_ctx.items()}
            prefill = {ctx: statistics.median(f["prefill_s"] for f in runs) for ctx, runs in by_ctx.items()}
            low, high = str(contexts[0]), str(contexts[-1])
            summary.setdefault(name, {})[mode] = {
                "tok_per_s": rate,
                "prefill_s": prefill,
                f"ratio_{high}_to_{low}": rate[high] / rate[low],
                "target_met": rate[high] >= 0.9 * rate[low],
                "cache": by_ctx[low][0]["cache"],
            }

    paired: dict[str, dict[str, list]] = {}
    for _ in range(args.repeat if "paired" in parts else 0):
        for mode in ("attached", "detached"):
            got = run(args.python, HERE, PAIRED, args.bundle, mode, args.threads, args.steps, args.contexts)
            for ctx, rates in got.items():
                paired.setdefault(mode, {}).setdefault(ctx, []).append(rates)
            print("paired", mode, got, file=sys.stderr)
    paired_summary = {}
    for mode, by_ctx in paired.items():
        rate = {
            ctx: {kind: statistics.median(r[kind] for r in runs) for kind in runs[0]} for ctx, runs in by_ctx.items()
        }
        low, high = str(contexts[0]), str(contexts[-1])
        paired_summary[mode] = {
            "tok_per_s": rate,
            f"ratio_{high}_to_{low}": {kind: rate[high][kind] / rate[low][kind] for kind in rate[low]},
            "shared_over_concat": {ctx: r["shared_buffer"] / r["concat"] for ctx, r in rate.items()},
        }

    prefill = {}
    for mode in ("attached", "detached") if "prefill" in parts else ():
        high = contexts[-1]
        prefill[mode] = run(args.python, HERE, PREFILL, args.bundle, mode, args.threads, high, args.repeat)
        got = prefill[mode]
        got |= {"tokens": high, "chunked_over_one_pass": got["chunked_256"] / got["one_pass"]}
        for name, chunk in (("chunked_256", 256), ("one_pass", 0)):
            rss = run(args.python, HERE, PREFILL_RSS, args.bundle, mode, args.threads, high, chunk)
            got[f"peak_rss_gain_mb_{name}"] = rss["peak_rss_mb_after"] - rss["peak_rss_mb_before"]
        print("prefill", mode, prefill[mode], file=sys.stderr)

    chat = {}
    for _ in range(args.repeat if "chat" in parts else 0):
        for mode in ("attached", "detached"):
            for cached in (False, True):
                got = run(args.python, HERE, CHAT, args.bundle, mode, args.threads, int(cached))
                chat.setdefault(mode, {}).setdefault("cached" if cached else "fresh", []).append(got)
    chat_summary = {}
    for mode, kinds in chat.items():
        row = {}
        for kind, runs in kinds.items():
            row[kind] = {
                "prefill_s_per_turn": [statistics.median(r["turns"][i]["prefill_s"] for r in runs) for i in range(5)],
                "total_prefill_s": statistics.median(sum(t["prefill_s"] for t in r["turns"]) for r in runs),
                "total_wall_s": statistics.median(sum(t["wall_s"] for t in r["turns"]) for r in runs),
                "prompt_tokens": [t["prompt_tokens"] for t in runs[0]["turns"]],
                "prefilled_tokens": runs[0]["prefilled_tokens"],
            }
        same = all(
            [t["token_ids"] for t in a["turns"]] == [t["token_ids"] for t in b["turns"]]
            for a, b in zip(kinds["fresh"], kinds["cached"], strict=True)
        )
        row["same_answers"] = same
        row["prefill_speedup"] = row["fresh"]["total_prefill_s"] / row["cached"]["total_prefill_s"]
        chat_summary[mode] = row

    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "note": "measured while other jobs shared the 2 cores: compare ratios within this run, not absolute figures",
        "bundle": str(args.bundle),
        "threads": args.threads,
        "steps": args.steps,
        "repeat": args.repeat,
        "sources": {name: str(path) for name, path in sources.items()},
        "decode": summary,
        "decode_paired_in_one_process": paired_summary,
        "prefill_paired_in_one_process_s": prefill,
        "chat_5_turns": chat_summary,
        "raw": {"decode": decode, "paired": paired},
    }
    for key, parts_of in (("decode", "decode"), ("decode_paired_in_one_process", "paired"), ("chat_5_turns", "chat")):
        if parts_of not in parts:  # keep the figures of the parts not run now
            result[key] = old.get(key, {})
            result["raw"][parts_of] = old.get("raw", {}).get(parts_of, {})
    if "prefill" not in parts:
        result["prefill_paired_in_one_process_s"] = old.get("prefill_paired_in_one_process_s", {})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"decode": summary, "paired": paired_summary, "chat": chat_summary}, indent=2))


if __name__ == "__main__":
    main()
