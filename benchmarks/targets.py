"""Issue 15's targets, each with its measured figure, read from the benchmarks' results JSONs.

    python benchmarks/targets.py [--results benchmarks/results] [--out benchmarks/results/targets_issue15.json]

Sources (write them first; a missing one leaves its targets "not measured"):
  bench_memory_fp32.json     `shadow-edge bench DEMO --prompt-lens 256 --json` (memory breakdown per mode)
  bench_memory_int4.json     the same of int4_llamacpp.py's int4 bundle (round to nearest from fp32)
  bench_memory_phone.json    the same of PHONE = `quantize DEMO --only detached` (the phone bundle)
  startup_llamacpp.json      benchmarks/startup.py (time to first token, peak RSS at it, llama.cpp beside)
  kv_decode.json             benchmarks/kv_decode.py (decode tok/s at 256 / 2048, in-place KV; else
  compare.json               benchmarks/compare.py's ms/token at those contexts)
  int4_llamacpp.json         benchmarks/int4_llamacpp.py (int4 vs llama.cpp Q4_0 / Q4_K_M, same weights)
  int4_llamacpp_1thread.json the same at --threads 1 --out ... (beside it: no thread contention)
For a missed target, `bound` says what the measurement shows it is bound by (the largest parts of the
RSS breakdown, the start-up phases, the per-graph decode time).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(folder: Path, name: str) -> dict | None:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def _memory(bench: dict | None, mode: str) -> dict | None:
    for result in (bench or {}).get("results", []):
        if result["mode"] == mode and "parts_mb" in result.get("memory", {}):
            return result["memory"]
    return None


def _parts(memory: dict, top: int = 3) -> str:
    parts = sorted(((v, k) for k, v in memory["parts_mb"].items() if v is not None), reverse=True)[:top]
    return "RSS parts: " + ", ".join(f"{k} {v:.0f} MB" for v, k in parts)


def targets(folder: Path) -> list[dict]:
    rows: list[dict] = []

    def add(target: str, goal: float, measured: float | None, source: str, bound: str = "", lower: bool = True):
        met = None if measured is None else (measured <= goal if lower else measured >= goal)
        rows.append(
            {
                "target": target,
                "goal": f"{'<=' if lower else '>='} {goal:g}",
                "measured": None if measured is None else round(measured, 3),
                "met": met,
                "source": source,
                "bound": "" if met or measured is None else bound or "",
            }
        )

    fp32, phone = _load(folder, "bench_memory_fp32.json"), _load(folder, "bench_memory_phone.json")
    int4 = _load(folder, "int4_llamacpp.json")
    int4_memory = _memory(_load(folder, "bench_memory_int4.json"), "attached")
    attached = _memory(fp32, "attached")
    add(
        "fp32 attached peak RSS / its weights",
        1.15,
        attached and attached["peak_rss_mb"] / attached["weights_mb"],
        "bench_memory_fp32.json",
        attached and _parts(attached),
    )
    if int4:
        system = int4["systems"]["shadow-edge int4 attached"]
        add(
            "int4 attached peak RSS / llama.cpp Q4_0's (same weights)",
            0.9,
            int4["ratios"]["int4 attached peak RSS / llama.cpp Q4_0's"],
            "int4_llamacpp.json",
            f"ours {system['peak_rss_mb']:.0f} MB, llama.cpp "
            f"{int4['systems']['llama.cpp Q4_0 (base)']['peak_rss_mb']:.0f} MB"
            + (f"; {_parts(int4_memory)}" if int4_memory else ""),
        )
    else:
        add("int4 attached peak RSS / llama.cpp Q4_0's (same weights)", 0.9, None, "int4_llamacpp.json")
    detached = _memory(phone, "detached")
    add(
        "detached int4 phone bundle peak RSS, MB",
        120,
        detached and detached["peak_rss_mb"],
        "bench_memory_phone.json",
        detached and _parts(detached),
    )
    startup = _load(folder, "startup_llamacpp.json")
    rows_s = (startup or {}).get("rows", {})
    warm, cascade = rows_s.get("detached, checks remembered"), rows_s.get("cascade, checks remembered")
    llama = next((v for k, v in rows_s.items() if k.startswith("llama.cpp") and "total_s" in v), None)
    add(
        "cascade answering from the shadow, peak RSS / detached's",
        1.1,
        warm and cascade and cascade["peak_rss_mb"] / warm["peak_rss_mb"],
        "startup_llamacpp.json",
    )
    phases = warm and (
        f"imports {warm['imports_s']:.2f} s, load {warm['load_s']:.2f} s, first token {warm['first_token_s']:.2f} s"
    )
    add("detached time to first token, warm, s", 0.5, warm and warm["total_s"], "startup_llamacpp.json", phases)
    add(
        "detached time to first token / llama.cpp's (same base, warm)",
        1.0,
        warm and llama and warm["total_s"] / llama["total_s"],
        "startup_llamacpp.json",
        phases,
    )
    # kv_decode.py measures the in-place caches that run now; compare.py's run predates them
    kv = (_load(folder, "kv_decode.json") or {}).get("decode", {}).get("after", {})
    compare = _load(folder, "compare.json")
    for mode in ("attached", "detached"):
        decode = (compare or {}).get("results", {}).get(mode, {}).get("decode", {})
        ratio, bound, source = None, "", "compare.json"
        if mode in kv:
            speed = kv[mode]["tok_per_s"]
            ratio, source = speed["2048"] / speed["256"], "kv_decode.json"
            bound = f"{speed['256']:.1f} tok/s at 256, {speed['2048']:.1f} at 2048 (in-place KV)"
        elif "2048" in decode:
            ms = [decode[c]["ms_per_token"] for c in ("256", "2048")]
            ratio, bound = ms[0] / ms[1], f"{ms[0]:.1f} ms/token at 256, {ms[1]:.1f} at 2048"
        add(f"{mode} decode speed at ctx 2048 / at ctx 256", 0.9, ratio, source, bound, lower=False)
    # int4_llamacpp.py at the target's 2 threads, and at 1 (no thread contention on a shared machine)
    for name, label in (("int4_llamacpp.json", ""), ("int4_llamacpp_1thread.json", ", 1 thread")):
        run = _load(folder, name)
        for peer in ("Q4_0", "Q4_K_M"):
            key = f"int4 attached decode speed / llama.cpp {peer} base"
            bound, measured = "", None
            if run:
                ours = run["systems"]["shadow-edge int4 attached"]["best_ms_per_token"]
                base = run["systems"]["shadow-edge int4 base"]["best_ms_per_token"]
                theirs = run["systems"][f"llama.cpp {peer} (base)"]["best_ms_per_token"]
                bound = f"best streams: ours {ours:.1f} ms/token (the base graph alone {base:.1f}), {peer} {theirs:.1f}"
                # the lower of the median per-round ratio and the best streams' one: a loaded machine skews both
                measured = min(run["ratios"][key], run["ratios_best_runs"][key])
            add(f"{key} (same weights{label})", 1.0, measured, name, bound, lower=False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=RESULTS / "targets_issue15.json")
    args = parser.parse_args()
    rows = targets(args.results)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    for row in rows:
        measured = "not measured" if row["measured"] is None else f"{row['measured']:g}"
        verdict = {True: "met", False: "MISSED", None: "-"}[row["met"]]
        print(f"{row['target']:62s} {row['goal']:>8s} {measured:>12s}  {verdict}  {row['bound']}")


if __name__ == "__main__":
    main()
