"""Evaluate the robot-assistant adapter on the held-out split with the torch-free runtime.

Exports the checkpoint (with `--with-base`, for side-by-side answers of the plain base) unless
`--bundle` names an existing export, then runs greedy chat generation:

- detached (the shadow alone, as on the device), every test record: a command counts as handled
  locally when the reply equals the expected action exactly and carries no marker; escalation
  precision and recall count `[REMOTE]` on questions (wanted) against `[REMOTE]` on commands;
- attached, a sample of commands (action accuracy) and of questions (the replies beside the base
  model's: the adapter should leave open questions to the base's own behaviour).

    python examples/robot_assistant/evaluate.py [--checkpoint DIR] [--base DIR] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import shadow_edge

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MARKER = "[REMOTE]"


def load_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def replies(model: Any, prompts: Sequence[str], max_new_tokens: int, batch: int = 32) -> tuple[list[str], float]:
    """Greedy chat replies (runtime chat template, left-padded batches) and seconds per prompt."""
    ids = [model.encode_chat([{"role": "user", "content": p}]) for p in prompts]
    out: list[str] = []
    started = time.perf_counter()
    for start in range(0, len(ids), batch):
        results = model.generate_batch(ids[start : start + batch], max_new_tokens=max_new_tokens, temperature=0.0)
        out += [r.text.strip() for r in results]
    return out, (time.perf_counter() - started) / max(1, len(prompts))


def leading_words_shared(a: str, b: str) -> int:
    """How many words two answers share before they first differ."""
    count = 0
    for x, y in zip(a.split(), b.split(), strict=False):
        if x != y:
            break
        count += 1
    return count


def share(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def detached_metrics(records: list[dict], texts: list[str]) -> dict[str, Any]:
    """Local handling of commands and escalation precision/recall of the marker."""
    commands = [(r, t) for r, t in zip(records, texts, strict=True) if r["kind"] == "command"]
    questions = [t for r, t in zip(records, texts, strict=True) if r["kind"] == "question"]
    correct = [t == r["shadow_target"] for r, t in commands]
    escalated = [MARKER in t for _, t in commands]
    flagged = sum(MARKER in t for t in questions)
    by: dict[str, list[bool]] = defaultdict(list)
    for (r, _), ok in zip(commands, correct, strict=True):
        by[f"command/{r['category']}"].append(ok)
        by["command/novel_value" if r["novel_value"] else "command/seen_values"].append(ok)
    for r, t in zip(records, texts, strict=True):
        if r["kind"] == "question":
            by[f"question/{r['category']}"].append(MARKER in t)
    return {
        "commands": len(commands),
        "questions": len(questions),
        "commands_correct_locally": share(sum(correct), len(commands)),
        "commands_escalated": share(sum(escalated), len(commands)),
        "commands_wrong_locally": share(
            sum(not c and not e for c, e in zip(correct, escalated, strict=True)), len(commands)
        ),
        "escalation_precision": share(flagged, flagged + sum(escalated)),
        "escalation_recall": share(flagged, len(questions)),
        "questions_exactly_marker": share(sum(t == MARKER for t in questions), len(questions)),
        "by_category": {k: {"n": len(v), "ok": share(sum(v), len(v))} for k, v in sorted(by.items())},
        "errors": [
            {"prompt": r["prompt"], "expected": r["shadow_target"], "got": t}
            for r, t in zip(records, texts, strict=True)
            if (t != r["shadow_target"] if r["kind"] == "command" else MARKER not in t)
        ][:40],
    }


def one_prompt_latency(models: dict[str, Any], records: list[dict]) -> dict[str, Any]:
    """Seconds for one command alone (no batching), best of 3, per mode: what a device user waits."""
    prompt = next(r["prompt"] for r in records if r["kind"] == "command")
    out: dict[str, Any] = {"prompt": prompt}
    for mode, model in models.items():
        times = []
        for _ in range(3):
            started = time.perf_counter()
            result = model.chat([{"role": "user", "content": prompt}], max_new_tokens=16, temperature=0.0)
            times.append(time.perf_counter() - started)
        out[mode] = {"seconds": round(min(times), 4), "new_tokens": result.new_tokens, "reply": result.text}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "shadow_edge" / "exporters" / "demo_adapter")
    parser.add_argument("--base", type=Path, default=HERE / "work" / "base", help="SmolLM2 HF folder (made if missing)")
    parser.add_argument("--bundle", type=Path, default=None, help="evaluate this export instead of exporting")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="where the export goes")
    parser.add_argument("--data", type=Path, default=HERE / "data", help="folder with test.jsonl")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--attached-commands", type=int, default=60)
    parser.add_argument("--attached-questions", type=int, default=12)
    parser.add_argument("--answer-tokens", type=int, default=40, help="attached/base tokens per question")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    report: dict[str, Any] = {"checkpoint": str(args.checkpoint)}
    bundle = args.bundle
    if bundle is None:
        if not (args.base / "config.json").is_file():
            from shadow_edge.exporters.demo import write_smollm2_base

            write_smollm2_base(args.base)
        started = time.perf_counter()
        bundle = shadow_edge.export(args.checkpoint, args.work / "bundle", base=args.base, force=True, with_base=True)
        bundle = bundle.output
        report["export_seconds"] = round(time.perf_counter() - started, 1)
    report["bundle"] = str(bundle)
    records = load_records(args.data / "test.jsonl")
    rng = random.Random(args.seed)

    detached = shadow_edge.load(bundle, mode="detached", threads=args.threads)
    texts, per_prompt = replies(detached, [r["prompt"] for r in records], max_new_tokens=16)
    report["detached"] = {**detached_metrics(records, texts), "seconds_per_prompt": round(per_prompt, 4)}

    attached = shadow_edge.load(bundle, mode="attached", threads=args.threads)
    report["latency_one_command"] = one_prompt_latency({"detached": detached, "attached": attached}, records)
    commands = rng.sample([r for r in records if r["kind"] == "command"], args.attached_commands)
    got, per_prompt = replies(attached, [r["prompt"] for r in commands], max_new_tokens=16)
    right = [g == r["attached_target"] for r, g in zip(commands, got, strict=True)]
    report["attached"] = {
        "commands": len(commands),
        "command_accuracy": share(sum(right), len(right)),
        "seconds_per_command": round(per_prompt, 3),
        "command_errors": [
            {"prompt": r["prompt"], "expected": r["attached_target"], "got": g}
            for r, g, ok in zip(commands, got, right, strict=True)
            if not ok
        ],
    }
    questions = rng.sample([r for r in records if r["kind"] == "question"], args.attached_questions)
    prompts = [r["prompt"] for r in questions]
    answers, _ = replies(attached, prompts, max_new_tokens=args.answer_tokens)
    base_answers, _ = replies(shadow_edge.load(bundle, mode="base", threads=args.threads), prompts, args.answer_tokens)
    report["attached"]["questions"] = [
        {"prompt": p, "attached": a, "base": b, "leading_words_shared": leading_words_shared(a, b)}
        for p, a, b in zip(prompts, answers, base_answers, strict=True)
    ]
    report["attached"]["questions_answered_with_action"] = sum(a.startswith("ACTION") for a in answers)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_table(report)
    print(f"wrote {args.out}")


def print_table(report: dict[str, Any]) -> None:
    d, a = report["detached"], report["attached"]
    rows = [
        ("held-out commands", d["commands"]),
        ("held-out questions", d["questions"]),
        ("commands handled locally and correctly", d["commands_correct_locally"]),
        ("commands escalated (needlessly)", d["commands_escalated"]),
        ("commands answered wrongly on device", d["commands_wrong_locally"]),
        ("escalation precision", d["escalation_precision"]),
        ("escalation recall", d["escalation_recall"]),
        ("attached: command accuracy", a["command_accuracy"]),
        ("attached: questions answered with ACTION", a["questions_answered_with_action"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        shown = f"{value:.1%}" if isinstance(value, float) else str(value)
        print(f"{name:<{width}}  {shown:>7}")
    latency = report["latency_one_command"]
    for mode in ("detached", "attached"):
        print(f"{'one command, ' + mode + ' (s)':<{width}}  {latency[mode]['seconds']:>7}")
    for key, value in d["by_category"].items():
        print(f"  {key:<{width - 2}}  {value['ok']:.1%} of {value['n']}")
    for q in a["questions"]:
        print(f"\nQ: {q['prompt']} ({q['leading_words_shared']} leading words as the base)")
        print(f"attached: {q['attached']}\nbase:     {q['base']}")


if __name__ == "__main__":
    main()
