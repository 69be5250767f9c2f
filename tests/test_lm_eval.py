"""lm-eval-harness's `local-completions` against a real `shadow-edge serve`: a multiple-choice task
defined in a local YAML over a local JSONL (no hub), whose accuracy and per-choice
loglikelihoods must equal the same task scored through the Python API (sum of the continuation
tokens' log-probabilities, tokenized as lm-eval splits context and continuation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serving import serve_command

import shadow_edge

QUESTIONS = [
    ("the cat sat on the", ["mat", "sea", "dog"], 0),
    ("a dog ran to the", ["sea", "cat", "hello"], 0),
    ("hello", ["world", "mat", "the sea"], 0),
    ("the dog sat on", ["the mat", "a cat", "world"], 1),
    ("user: hi! assistant:", ["hello", "be brief", "the sea"], 2),
    ("system: be", ["brief", "world", "sat"], 0),
    ("the sea?", ["a dog ran", "the cat", "hello world"], 1),
    ("a cat ran to", ["the mat", "the dog", "the sea"], 2),
]
TASK = "shadow_edge_tiny_mc"


def write_task(folder: Path) -> None:
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        'target_delimiter: " "\n'
        "metric_list:\n  - metric: acc\n"
    )


def python_api_loglikelihoods(model, context: str, continuation: str) -> float:
    """lm-eval's split (api/model.py _encode_pair): encode context + continuation, drop the
    context's tokens; no special tokens (add_bos_token=False)."""
    whole = model.tokenizer.encode(context + continuation, add_special_tokens=False)
    start = len(model.tokenizer.encode(context, add_special_tokens=False))
    return sum(lp for lp, _ in model.prompt_logprobs(whole)[start:])


def test_lm_eval_local_completions_accuracy_equals_the_python_api(tiny_text_export, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    write_task(tmp_path)
    bundle = tiny_text_export.bundle
    model = shadow_edge.load(bundle, threads=1)
    scores = [[python_api_loglikelihoods(model, q, " " + c) for c in choices] for q, choices, _ in QUESTIONS]
    accuracy = float(np.mean([int(np.argmax(s)) == a for s, (_, _, a) in zip(scores, QUESTIONS, strict=True)]))

    with serve_command(bundle, "--threads", "1") as (url, _):
        args = (
            f"base_url={url}/v1/completions,tokenizer_backend=huggingface,tokenizer={bundle},"
            "num_concurrent=1,max_retries=1,max_length=128,batch_size=4"  # 4 prompts a request: batches
        )
        out = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=args,
            tasks=[TASK],
            task_manager=TaskManager(include_path=str(tmp_path)),
            log_samples=True,
            limit=None,
        )
    got = out["results"][TASK]["acc,none"]
    assert got == pytest.approx(accuracy, abs=1e-12), (got, accuracy)
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    served = [[resp[0][0] for resp in s["resps"]] for s in samples]
    np.testing.assert_allclose(served, scores, atol=1e-4)
    print(f"lm-eval accuracy {got:.4f}, Python API {accuracy:.4f}")
