"""`shadow-edge bench`: prefill and decode speed of a bundle per mode and prompt length, with the
time of each graph, peak RSS, and how close decoding comes to the machine's memory bandwidth.

Each mode runs in its own subprocess (`python -m shadow_edge.runtimes.bench`), so that its peak RSS
is its own. Every mode open_model() offers is measured (cascade and speculative too). A run: the
seeded random prompt of each length (bench_prompt), then `new_tokens` greedy tokens from the
mode's stream, the tokens `run --mode MODE --greedy` gives (the report keeps them); prefill = the
graphs' time on the prompt (each graph's first run), decode = the tokens after the first per
second of the rest of the stream; medians over `repeat` runs, with min and max. Each graph's
time and runs per decoded token are counted (a speculative round runs the shadow once per draft
and the backbone once). Bytes read per decoded token = per graph, its
runs x (its weights (manifest) + its KV cache at that context); bandwidth use = bytes/token x
tokens/s, against read_bandwidth() measured in the same run. Torch-free.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import MODE_GRAPHS, SCHEDULE_GRAPHS, CacheSpec, cache_for, graph_files, read_manifest, resolve_inside
from ..errors import GenerationError
from ..progress import Progress, silent
from .bandwidth import read_bandwidth
from .cascade import CascadeModel
from .generate import peak_rss_mb
from .memory import mapped_mb, reset_peak, rss_now
from .model import ShadowEdgeModel
from .modes import open_model, supported_modes
from .sessions import GraphRunner

SCHEMA = "shadow-edge-bench/1"
MODULE = "shadow_edge.runtimes.bench"  # run as `python -m MODULE` for a clean process (not __name__: "__main__" there)


class _TimedRunner:
    """Stands in for a GraphRunner in a schedule: adds up the seconds and counts the runs of its
    steps after the first (the prompt's), passing everything else on. A speculative round runs
    the shadow once per draft; a cascade holds its first tokens back until it has decided, so
    decoding is timed by the graphs' runs, not by when the tokens come out."""

    def __init__(self, runner: GraphRunner) -> None:
        self.runner = runner
        self.reset()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)

    def step(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self.runner.step, *args, **kwargs)

    def head(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self.runner.head, *args, **kwargs)

    def _timed(self, run: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = run(*args, **kwargs)
        seconds = time.perf_counter() - start
        if self.prompt_seconds is None:
            self.prompt_seconds = seconds
        else:
            self.seconds += seconds
            self.calls += 1
        return out

    def reset(self) -> None:
        self.prompt_seconds: float | None = None
        self.seconds, self.calls = 0.0, 0


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_prompt(vocab_size: int, length: int, seed: int = 0) -> list[int]:
    """The prompt of every run at `length`: random token ids, the same for a seed and length."""
    return np.random.default_rng([seed, length]).integers(0, vocab_size, size=length).tolist()


def _graph_runners(model: ShadowEdgeModel) -> dict[str, Any]:
    """The sessions a model's schedule runs, all opened (a cascade's backbone too)."""
    if isinstance(model, CascadeModel):
        model.attached_engine()  # escalations run the backbone: opened before timing
        return model.runners
    return model.engine.runners


def measure_mode(
    bundle: str | Path,
    mode: str,
    prompt_lens: list[int],
    new_tokens: int,
    threads: int | None,
    repeat: int,
    seed: int = 0,
) -> dict:
    """Figures of one mode, in this process (see bench() for a clean peak RSS per mode). Each run
    is the mode's greedy stream through open_model(), as `run --mode MODE --greedy` decodes it."""
    model = open_model(bundle, mode, threads=threads, verify="size")
    runners = _graph_runners(model)
    timed = {name: _TimedRunner(runner) for name, runner in runners.items()}
    runners.update(timed)
    spec = model.manifest.model
    rows = []
    for length in prompt_lens:
        if length + new_tokens > model.context_length:
            rows.append({"prompt_len": length, "skipped": f"exceeds the context of {model.context_length}"})
            continue
        prompt = bench_prompt(spec.vocab_size, length, seed)
        prefill, decode, split = [], [], {name: [] for name in timed}
        runs = {name: [] for name in timed}
        for _ in range(repeat + 1):  # the first run warms up and is dropped
            for runner in timed.values():
                runner.reset()
            start = time.perf_counter()
            stream = model.stream(prompt, max_new_tokens=new_tokens, temperature=0, eos_token_ids=[])
            tokens = [r.token for r in stream]
            seconds = time.perf_counter() - start
            prompt_s = sum(r.prompt_seconds or 0.0 for r in timed.values())
            steps = len(tokens) - 1  # the first token comes from the prompt's logits
            prefill.append(prompt_s)
            decode.append(steps / (seconds - prompt_s))
            for name, runner in timed.items():
                split[name].append(1000 * runner.seconds / steps)
                runs[name].append(runner.calls / steps)
        prefill, decode = prefill[1:], decode[1:]
        per_token = {name: statistics.median(v[1:]) for name, v in runs.items()}
        context = length + new_tokens // 2
        graphs = model.manifest.graphs
        weights = sum(per_token[g] * graphs[g].weight_bytes_per_token for g in timed)
        kv = sum(per_token[g] * _kv_bytes(cache_for(spec, g), context) for g in timed if graphs[g].cached)
        rows.append(
            {
                "prompt_len": length,
                "prefill_s": _spread(prefill),
                "prefill_tok_per_s": length / statistics.median(prefill),
                "decode_tok_per_s": _spread(decode),
                "decode_ms_per_graph": {name: statistics.median(v[1:]) for name, v in split.items() if any(v[1:])},
                "runs_per_token": {name: n for name, n in per_token.items() if n},
                "bytes_per_token": {"weights": round(weights), "kv_cache": round(kv), "total": round(weights + kv)},
                "token_ids": tokens,
            }
        )
    return {"mode": mode, "threads": threads, "rows": rows, "peak_rss_mb": peak_rss_mb()}


def _load_anon_mb(bundle: str | Path, mode: str, threads: int | None, prepack: bool) -> float | None:
    """Anonymous MiB that load() adds (sessions, tokenizer and, with prepack, the packed weights)."""
    from .model import load

    before = rss_now()
    model = load(bundle, mode=mode, threads=threads, verify="size", prepack=prepack)
    after = rss_now()
    del model
    return None if before is None or after is None else after.anonymous - before.anonymous


def memory_breakdown(
    bundle: str | Path, mode: str, prompt_len: int, new_tokens: int, threads: int | None, prepack: bool = True
) -> dict:
    """Peak RSS of one mode (in this process: run it in a fresh one) and what it is made of, each
    part measured across one stage: load, a prompt_len prefill, new_tokens decode steps.

    interpreter and libraries  RSS before load (Python, numpy, onnxruntime, tokenizers)
    weights mapped             resident pages of the bundle's files (onnxruntime memory-maps them)
    prepacked copies           anonymous memory load() adds, minus what it adds with prepacking off
                               (measured in a second process, `python -m ... --load-anon`)
    sessions and tokenizer     anonymous memory load() adds with prepacking off
    kv cache                   the caches' arrays at the end
    onnxruntime arenas         anonymous memory left after generating, beyond the KV caches
    prefill activations        the peak during the prefill above the RSS just before it (transient;
                               also weight pages first read then, as without prepacking)
    """
    from .model import load

    manifest = read_manifest(bundle)
    files = {resolve_inside(Path(bundle), f) for g in MODE_GRAPHS[mode] for f in graph_files(manifest, g)}
    before = rss_now()
    if before is None:
        return {"skipped": "needs Linux /proc"}
    model = load(bundle, mode=mode, threads=threads, verify="size", prepack=prepack)
    loaded, load_peak = rss_now(), peak_rss_mb()
    engine = model.engine
    ids = np.random.default_rng(0).integers(0, manifest.model.vocab_size, size=(1, prompt_len))
    seqs = engine.start(1)
    reset_peak()
    start = rss_now()
    logits = engine.forward(seqs, ids)
    prefill_peak = peak_rss_mb()
    for _ in range(new_tokens):
        logits = engine.forward(seqs, logits[:, -1:].argmax(-1))
    end = rss_now()
    # the positions held: an in-place cache reserves more (np.zeros), pages it has not written stay unmapped
    kv = sum(t.nbytes for c in seqs.caches.values() for t in c.tensors) / 2**20
    load_anon = loaded.anonymous - before.anonymous
    no_prepack = load_anon
    if prepack:
        unpacked = subprocess.run(
            [sys.executable, "-m", MODULE, "--load-anon", str(bundle), mode, str(threads or 0)],
            capture_output=True,
            text=True,
            check=False,
        )
        no_prepack = float(unpacked.stdout) if unpacked.returncode == 0 and unpacked.stdout.strip() else None
    parts = {
        "interpreter and libraries": before.total,
        "weights mapped": mapped_mb(files),
        "prepacked copies": None if no_prepack is None else load_anon - no_prepack,
        "sessions and tokenizer": no_prepack,
        "kv cache": kv,
        "onnxruntime arenas": end.anonymous - loaded.anonymous - kv,
        "prefill activations": prefill_peak - start.total,
    }
    return {
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "prepack": prepack,
        "weights_mb": sum(f.stat().st_size for f in files) / 2**20,  # the files the mode maps
        "peak_rss_mb": max(load_peak, peak_rss_mb()),
        "rss_after_load_mb": loaded.total,
        "rss_end_mb": end.total,
        "parts_mb": parts,
    }


def _kv_bytes(cache: CacheSpec, context: int) -> int:
    """float32 keys and values of every layer at `context` positions (batch 1)."""
    return 2 * cache.num_layers * cache.num_kv_heads * cache.head_dim * context * 4


@dataclass
class BenchSettings:
    prompt_lens: list[int]
    new_tokens: int = 32
    modes: list[str] | None = None  # None: every mode the bundle supports
    threads: int | None = None
    repeat: int = 3
    constrained: bool = False  # also detached at 1 thread, as on a small device


def bench(bundle: str | Path, settings: BenchSettings, progress: Progress = silent) -> dict:
    """Every requested mode in its own subprocess, plus the bandwidth probe; the JSON report."""
    manifest = read_manifest(bundle)
    supported = supported_modes(manifest)
    modes = settings.modes or supported
    unknown = [m for m in modes if m not in supported]
    if unknown:
        raise GenerationError(f"this bundle does not support {', '.join(unknown)} (it has: {', '.join(supported)})")
    if not settings.prompt_lens or min(settings.prompt_lens) < 1 or settings.new_tokens < 2 or settings.repeat < 1:
        raise GenerationError("prompt lengths must be >= 1, new tokens >= 2 and repeat >= 1")
    runs = [(m, settings.threads) for m in modes]
    if settings.constrained and "detached" in manifest.modes:
        runs.append(("detached", 1))
    threads = settings.threads or os.cpu_count() or 1
    largest = max(sum(manifest.graphs[g].weight_bytes_per_token for g in SCHEDULE_GRAPHS[m]) for m in modes)
    progress("probing memory bandwidth", 0, len(runs) + 1)
    probe = [read_bandwidth(threads, nbytes=max(largest, 64 << 20)) for _ in range(2)]
    results = []
    for done, (mode, mode_threads) in enumerate(runs, start=1):
        progress(f"measuring {mode}{f' at {mode_threads} thread(s)' if mode_threads else ''}", done, len(runs) + 1)
        args = [
            sys.executable,
            "-m",
            MODULE,
            str(bundle),
            mode,
            ",".join(map(str, settings.prompt_lens)),
            str(settings.new_tokens),
            str(mode_threads or 0),
            str(settings.repeat),
        ]
        finished = subprocess.run(args, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            raise GenerationError(f"bench of {mode} failed: {(finished.stderr.strip().splitlines() or ['?'])[-1]}")
        results.append(json.loads(finished.stdout))
    for result in results:
        result["memory"] = _breakdown_in_subprocess(bundle, result, settings.new_tokens)
    progress("measured", len(runs) + 1, len(runs) + 1)
    bandwidth = min(probe)
    for result in results:
        for row in result["rows"]:
            if "skipped" not in row:
                used = row["bytes_per_token"]["total"] * row["decode_tok_per_s"]["median"]
                row["bandwidth_fraction"] = used / bandwidth
    return {
        "schema": SCHEMA,
        "bundle": str(bundle),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_count": os.cpu_count(),
        "new_tokens": settings.new_tokens,
        "repeat": settings.repeat,
        "memory_bandwidth_gb_s": {"runs": [b / 1e9 for b in probe], "used": bandwidth / 1e9},
        "results": results,
    }


def _breakdown_in_subprocess(bundle: str | Path, result: dict, new_tokens: int) -> dict:
    """memory_breakdown() of a measured mode, in a fresh process, at its longest prompt that ran."""
    if result["mode"] not in MODE_GRAPHS:  # a schedule of several engines: its graphs' breakdowns are theirs
        return {"skipped": f"{result['mode']} runs several engines: see attached and detached"}
    lengths = [row["prompt_len"] for row in result["rows"] if "skipped" not in row]
    if not lengths:
        return {"skipped": "no prompt length fits the context"}
    args = [sys.executable, "-m", MODULE, "--memory", str(bundle), result["mode"], str(max(lengths))]
    done = subprocess.run([*args, str(new_tokens), str(result["threads"] or 0)], capture_output=True, text=True)
    if done.returncode != 0:
        raise GenerationError(f"memory breakdown of {result['mode']} failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout)


def require_matplotlib() -> None:
    """plot() needs matplotlib: checked before measuring, not after minutes of it."""
    if importlib.util.find_spec("matplotlib") is None:
        raise GenerationError("--plot needs matplotlib, which is not installed", hint="pip install matplotlib")


def plot(report: dict, path: Path) -> None:
    """Decode tok/s against context length, one line per mode (needs matplotlib)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for result in report["results"]:
        rows = [r for r in result["rows"] if "skipped" not in r]
        label = result["mode"] + (f" ({result['threads']} thread)" if result["threads"] == 1 else "")
        ax.plot(
            [r["prompt_len"] for r in rows], [r["decode_tok_per_s"]["median"] for r in rows], marker="o", label=label
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (prompt tokens)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(Path(report["bundle"]).name)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__" and sys.argv[1] == "--load-anon":  # memory_breakdown's second process
    print(_load_anon_mb(sys.argv[2], sys.argv[3], int(sys.argv[4]) or None, prepack=False))
elif __name__ == "__main__" and sys.argv[1] == "--memory":  # memory_breakdown in a clean process
    bundle_arg, mode_arg, length, new, threads_arg = sys.argv[2:7]
    packed = "--no-prepack" not in sys.argv[7:]
    print(json.dumps(memory_breakdown(bundle_arg, mode_arg, int(length), int(new), int(threads_arg) or None, packed)))
elif __name__ == "__main__":  # one mode, in a clean process: prints its JSON
    bundle_arg, mode_arg, lens, new, threads_arg, repeat_arg = sys.argv[1:7]
    print(
        json.dumps(
            measure_mode(
                bundle_arg,
                mode_arg,
                [int(n) for n in lens.split(",")],
                int(new),
                int(threads_arg) or None,
                int(repeat_arg),
            )
        )
    )
