"""The plain base model in transformers.js's layout, for the browser peer of js/bench/hosts.ts:

    python js/bench/transformersjs_model.py BUNDLE OUT
        # BUNDLE: exported with --with-base (its base_lm graph); OUT: config.json, generation_config.json,
        # tokenizer files (the chat template in tokenizer_config.json), onnx/model.onnx + model.onnx_data

base_lm has the I/O transformers.js feeds a decoder (input_ids, attention_mask, position_ids,
past_key_values.{i}.key|value, num_logits_to_keep -> logits, present.{i}.key|value; optimum's names),
so it is the peer's model as it is: its weights move to model.onnx_data, the only external-data file
name transformers.js fetches, and the batch dimension is renamed optimum's `batch_size`
(transformers.js sizes the first step's empty cache from the graph's symbolic dimensions, an unknown
name as 0). Config and tokenizer come from the checkpoint's base folder (no hub).
The graph is our fused one (GroupQueryAttention, RotaryEmbedding...): both runtimes run the same
kernels, so the comparison is of what each does around onnxruntime-web.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import onnx

from shadow_edge.bundle import BASE_LM_GRAPH, read_manifest


def write_model(bundle: Path, base: Path, out: Path) -> Path:
    manifest = read_manifest(bundle)
    if BASE_LM_GRAPH not in manifest.graphs:
        raise SystemExit(f"{bundle} has no {BASE_LM_GRAPH} graph: export it with --with-base")
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    model = onnx.load(bundle / manifest.graphs[BASE_LM_GRAPH].file)  # with its weights
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "batch":
                dim.dim_param = "batch_size"
    onnx.save_model(model, out / "onnx" / "model.onnx", save_as_external_data=True, location="model.onnx_data")
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        shutil.copy2(base / name, out / name)
    tokenizer_config = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = base / "chat_template.jinja"
    if template.is_file():  # transformers 5 writes it beside; transformers.js reads tokenizer_config.json
        tokenizer_config["chat_template"] = template.read_text(encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle exported with --with-base")
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=Path, help="the base model folder (default: the checkpoint's base/)")
    args = parser.parse_args()
    base = args.base or Path(read_manifest(args.bundle).source.get("base", ""))
    write_model(args.bundle, base, args.out)
