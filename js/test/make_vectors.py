"""Shared test vectors for the TypeScript runtime: tiny bundles written by the Python exporter, and
what the Python runtime generates from them, as JSON.

    python js/test/make_vectors.py OUT [--smollm2 DIR]
        # OUT/text, OUT/ids (bundles), OUT/vectors.json; DIR/bundle: the trained robot demo on
        # SmolLM2-135M (exported unless there already: tests/conftest.py uses the same layout, so
        # SHADOW_EDGE_SMOLLM2_DIR=DIR lets pytest and these tests share one export)

The TypeScript tests (js/test/*.test.ts) run the same requests on the same bundles and compare.
Run from the repository with the export extras installed (tests/models.py builds the checkpoints).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import shadow_edge  # noqa: E402
import shadow_edge.bundle  # noqa: E402
from shadow_edge.runtimes.cascade import load_cascade  # noqa: E402
from shadow_edge.runtimes.escalation import next_token_stats  # noqa: E402
from shadow_edge.runtimes.speculative import load_speculative  # noqa: E402

GREEDY = {"max_new_tokens": 12, "temperature": 0.0}
SAMPLED = [
    {"max_new_tokens": 12, "temperature": 0.9, "seed": 7},
    {"max_new_tokens": 12, "temperature": 1.3, "top_k": 20, "seed": 11},
    {"max_new_tokens": 12, "temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.3, "seed": 3},
    {"max_new_tokens": 12, "temperature": 1.0, "top_k": 8, "top_p": 0.7, "seed": 2**40 + 5},
]
TEXT_PROMPTS = ["hello world", "the cat sat on", "a"]
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi! the dog"}]
ID_PROMPTS = [[5, 9, 3, 7, 11], [40, 2, 17]]
ROBOT_PROMPTS = ["Walk forward three steps.", "Please sit down.", "What is the capital of France?"]
ROBOT_CHATS = [[{"role": "user", "content": prompt}] for prompt in ROBOT_PROMPTS]
ROBOT_GREEDY = {"max_new_tokens": 24, "temperature": 0.0}
RNG_SEEDS = [0, 1, 7, 42, 2**32 - 1, 2**40 + 5]


def export_bundles(out: Path) -> dict[str, Path]:
    """A Llama bundle with a byte-level tokenizer and chat template, and a Qwen3 bundle with
    two shadow layers and no tokenizer (token ids only), as tests/conftest.py makes them."""
    from models import tiny_base, write_checkpoint
    from tiny_tokenizer import write_tokenizer

    text_base = write_tokenizer(tiny_base(out / "work" / "text" / "base", "llama", seed=3))
    text_ckpt = write_checkpoint(out / "work" / "text", text_base, seed=4)
    ids_base = tiny_base(out / "work" / "ids" / "base", "qwen3")
    ids_ckpt = write_checkpoint(out / "work" / "ids", ids_base, num_shadow_layers=2)
    return {
        "text": shadow_edge.export(text_ckpt, out / "text", force=True).output,
        "ids": shadow_edge.export(ids_ckpt, out / "ids", force=True).output,
    }


def result(r) -> dict:
    return {"token_ids": r.token_ids, "text": r.text, "finish_reason": r.finish_reason}


def generation_cases(bundle: Path, prompts: list) -> list[dict]:
    """Greedy and seeded sampling in attached and detached mode, with the last position's logits."""
    cases = []
    for mode in ("attached", "detached"):
        model = shadow_edge.load(bundle, mode=mode)
        for prompt in prompts:
            ids = model.encode(prompt)
            cases.append({"kind": "logits", "mode": mode, "prompt": ids, "last": model.logits(ids)[-1].tolist()})
            for settings in [GREEDY, {**GREEDY, "repetition_penalty": 1.5}, *SAMPLED]:
                out = model.generate(prompt, **settings)
                cases.append({"kind": "generate", "mode": mode, "prompt": prompt, "settings": settings, **result(out)})
        if model.tokenizer is not None:
            out = model.chat(CHAT, **GREEDY)
            cases.append({"kind": "chat", "mode": mode, "messages": CHAT, "settings": GREEDY, **result(out)})
    return cases


def batch_cases(bundle: Path, prompts: list, modes=("attached", "detached"), settings_list=None) -> list[dict]:
    """Prompts of unequal length in one left-padded batch: greedy, seeded sampling (each row with
    its own generator), and an EOS id that stops one row before the others."""
    cases = []
    for mode in modes:
        model = shadow_edge.load(bundle, mode=mode, threads=2)
        ids = [model.encode_chat(p) if isinstance(p[0], dict) else model.encode(p) for p in prompts]
        first = model.generate(ids[0], **GREEDY)
        stop_one = {**GREEDY, "eos_token_ids": [first.token_ids[3]]}
        for settings in settings_list or [GREEDY, SAMPLED[0], SAMPLED[2], stop_one]:
            out = model.generate_batch(ids, **settings)
            case = {"kind": "batch", "mode": mode, "prompts": ids, "settings": settings}
            cases.append(case | {"results": [result(r) for r in out]})
    return cases


def stop_cases(bundle: Path) -> list[dict]:
    """Stop strings and EOS ids taken from the greedy answers, so that each one really fires."""
    cases = []
    model = shadow_edge.load(bundle, mode="detached")
    for prompt in TEXT_PROMPTS:
        plain = model.generate(prompt, **GREEDY, eos_token_ids=[])
        text, ids = plain.text, plain.token_ids
        for settings in (
            {**GREEDY, "eos_token_ids": [], "stop": [text[3:5]]},
            {**GREEDY, "eos_token_ids": [], "stop": ["zzz", text[-2:]]},
            {**GREEDY, "eos_token_ids": [ids[4]]},
        ):
            out = model.generate(prompt, **settings)
            assert out.finish_reason in ("stop", "eos"), (prompt, settings, out)
            cases.append({"kind": "generate", "mode": "detached", "prompt": prompt, "settings": settings} | result(out))
    return cases


def cascade_cases(bundle: Path, prompts: list, marker_from_text: bool) -> list[dict]:
    """Policies that never, always, and (thresholds set between the shadow's own figures) at some
    token escalate; the marker is a piece of the shadow's greedy answer."""
    detached = shadow_edge.load(bundle, mode="detached")
    cases = []
    for prompt in prompts:
        shadow = detached.generate(prompt, **GREEDY)
        ids = detached.encode(prompt)
        rows = detached.logits(ids + shadow.token_ids)[len(ids) - 1 :]
        top1, entropy = zip(*(next_token_stats(row) for row in rows[:6]), strict=True)
        mean = float(np.mean(entropy[:4]))
        ids_piece = {"marker": "", "marker_ids": shadow.token_ids[1:3]}
        piece = {"marker": shadow.text[2:5]} if marker_from_text else ids_piece
        policies = [
            {"confidence_threshold": 0.0, "marker": ""},  # never
            {"confidence_threshold": 1.5},  # always, at the first token
            {"confidence_threshold": _between(top1), "marker": "", "window": 6},
            {"max_mean_entropy": mean + 1e-3, "marker": "", "window": 4},
            {"max_mean_entropy": mean - 1e-3, "marker": "", "window": 4},
            piece,
        ]
        for policy in policies:
            for settings in (GREEDY, SAMPLED[1]):
                out = load_cascade(bundle, **policy).generate(prompt, **settings)
                cases.append(
                    {
                        "kind": "cascade",
                        "prompt": prompt,
                        "policy": policy,
                        "settings": settings,
                        **result(out),
                        "served_by": out.served_by,
                        "escalated": out.escalated,
                        "reason": out.reason,
                        "shadow_token_ids": out.shadow_token_ids,
                    }
                )
    return cases


def speculative_cases(bundle: Path, prompts: list) -> list[dict]:
    """Speculative decoding's tokens and its draft statistics (rounds, drafted, accepted)."""
    cases = []
    for draft_tokens in (1, 4):
        model = load_speculative(bundle, draft_tokens=draft_tokens)
        for prompt in prompts:
            for settings in (GREEDY, {**GREEDY, "repetition_penalty": 1.5}):
                chat = isinstance(prompt, list) and isinstance(prompt[0], dict)
                out = model.chat(prompt, **settings) if chat else model.generate(prompt, **settings)
                case = {"kind": "speculative", "draft_tokens": draft_tokens, "settings": settings}
                case |= {"messages": prompt} if chat else {"prompt": prompt}
                stats = {k: v for k, v in model.stats.to_dict().items() if k != "acceptance"}
                cases.append(case | result(out) | {"stats": stats})
    return cases


def _between(values) -> float:
    """A threshold in the widest gap between the values: some are under it, some not, and float
    noise cannot move one across."""
    ordered = sorted(values)
    low, high = max(zip(ordered, ordered[1:], strict=False), key=lambda pair: pair[1] - pair[0])
    return (low + high) / 2


def robot_bundles(folder: Path) -> dict[str, Path]:
    """The fp32 demo bundle, and its web int4 profile (`quantize --profile web`): int4 body, float32
    head (the int8/int4 head's MatMulNBits is slow in wasm), accuracy level 0 (x86 then computes in
    float32 as wasm does, so both give the same tokens; on x86 alone the native profile is faster)."""
    from shadow_edge.bundle_tools.quantize import quantize_bundle
    from shadow_edge.exporters.demo import write_demo_checkpoint

    ckpt, bundle, web = folder / "ckpt", folder / "bundle", folder / "web-int4"
    if not (ckpt / "shadow_adapter.safetensors").is_file():
        write_demo_checkpoint(ckpt)
    if not (bundle / "manifest.json").is_file():
        shadow_edge.export(ckpt, bundle)
    if not (web / "manifest.json").is_file():
        quantize_bundle(bundle, web, "int4", profile="web", threads=2, force=True)
    return {"robot": bundle, "robot_int4": web}


def robot_cases(bundle: Path) -> list[dict]:
    """The demo's chat answers, greedy, detached, attached and as a cascade (the manifest's policy)."""
    cases = []
    for mode in ("detached", "attached"):
        model = shadow_edge.load(bundle, mode=mode, threads=2)
        for messages in ROBOT_CHATS:
            out = model.chat(messages, **ROBOT_GREEDY)
            cases.append({"kind": "chat", "mode": mode, "messages": messages, "settings": ROBOT_GREEDY} | result(out))
    cascade = load_cascade(bundle, threads=2)
    for messages in ROBOT_CHATS:
        out = cascade.chat(messages, **ROBOT_GREEDY)
        decision = {"served_by": out.served_by, "escalated": out.escalated, "reason": out.reason}
        case = {"kind": "cascade", "messages": messages, "settings": ROBOT_GREEDY, "policy": {}}
        cases.append(case | result(out) | decision | {"shadow_token_ids": out.shadow_token_ids})
    return cases


def external_ranges(bundle: Path) -> dict[str, list[list[int]]]:
    """Per graph, the [offset, length] of weights.data its initializers point at, read by onnx."""
    import onnx

    manifest = shadow_edge.bundle.read_manifest(bundle)
    out = {}
    for name, spec in manifest.graphs.items():
        model = onnx.load(bundle / spec.file, load_external_data=False)
        entries = [{e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data]
        out[name] = sorted([int(e.get("offset", 0)), int(e["length"])] for e in entries)
    return out


def rng_cases() -> list[dict]:
    """numpy's default_rng(seed).random(): the draws the sampler makes."""
    return [{"seed": seed, "random": np.random.default_rng(seed).random(6).tolist()} for seed in RNG_SEEDS]


def main(out: Path, smollm2: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    bundles = export_bundles(out)
    if smollm2 is not None:
        bundles |= robot_bundles(smollm2)
    text_model = shadow_edge.load(bundles["text"], mode="detached")
    tokenizer = text_model.tokenizer
    vectors = {
        "bundles": {name: str(path) for name, path in bundles.items()},
        "rng": rng_cases(),
        "external": {name: external_ranges(path) for name, path in bundles.items()},
        "tokenizer": [
            {"text": s, "ids": tokenizer.encode(s), "chat": tokenizer.apply_chat_template(CHAT)}
            for s in [*TEXT_PROMPTS, "café 日本 🙂", "user: hi!"]
        ],
        "text": generation_cases(bundles["text"], TEXT_PROMPTS)
        + batch_cases(bundles["text"], TEXT_PROMPTS)
        + stop_cases(bundles["text"])
        + cascade_cases(bundles["text"], TEXT_PROMPTS[:2], marker_from_text=True)
        + speculative_cases(bundles["text"], TEXT_PROMPTS),
        "ids": generation_cases(bundles["ids"], ID_PROMPTS)
        + batch_cases(bundles["ids"], ID_PROMPTS)
        + cascade_cases(bundles["ids"], ID_PROMPTS, False)
        + speculative_cases(bundles["ids"], ID_PROMPTS),
        "robot": robot_cases(bundles["robot"])
        + batch_cases(bundles["robot"], ROBOT_CHATS, ["detached"], [ROBOT_GREEDY])
        + speculative_cases(bundles["robot"], ROBOT_CHATS[1:])
        if smollm2 is not None
        else [],
        "robot_int4": robot_cases(bundles["robot_int4"]) if smollm2 is not None else [],
    }
    (out / "vectors.json").write_text(json.dumps(vectors), encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--smollm2", type=Path, help="folder of the SmolLM2 robot demo (exported if absent)")
    args = parser.parse_args()
    main(args.out, args.smollm2)
