"""The runtime, the bundle schema, `shadow-edge run` and the server of `shadow-edge serve` import neither
torch nor transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Runs in a fresh interpreter (the runtime-only venv when CI provides it) where importing torch
# or transformers fails, so that even a lazy import on the way would show.
SCRIPT = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} imported by the runtime")

sys.meta_path.insert(0, Block())
bundle, text_bundle = sys.argv[1:3]

import shadow_edge
import shadow_edge.bundle, shadow_edge.runtimes.model, shadow_edge.runtimes.sampling, shadow_edge.runtimes.tokenizer
from shadow_edge.cli import app

out = {}
for mode in ("attached", "detached"):
    out[mode] = shadow_edge.load(bundle, mode=mode).generate([1, 2, 3], max_new_tokens=4).token_ids
out["speculative"] = shadow_edge.load_speculative(bundle).generate([1, 2, 3], max_new_tokens=4, temperature=0).token_ids
out["text"] = shadow_edge.load(text_bundle).chat([{"role": "user", "content": "hi"}], max_new_tokens=4).text
from shadow_edge.runtimes.server import make_server
make_server(shadow_edge.load(text_bundle, mode="detached"), port=0)  # the app for `serve`, not started
for args in (["run", bundle, "--prompt-ids", "1,2", "--max-new-tokens", "3", "--json"],
             ["run", text_bundle, "--prompt", "the cat", "--detached", "--max-new-tokens", "3"]):
    try:
        app(args)
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print("RESULT" + json.dumps(out))
"""


def test_runtime_load_generate_run_and_serve_import_neither_torch_nor_transformers(tiny_exports, tiny_text_export):
    python = os.environ.get("SHADOW_EDGE_RUNTIME_PYTHON", sys.executable)
    bundle, text_bundle = str(tiny_exports["llama"].bundle), str(tiny_text_export.bundle)
    proc = subprocess.run(
        [python, "-c", SCRIPT, bundle, text_bundle], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["loaded"] == []
    assert len(result["attached"]) >= 1 and len(result["detached"]) >= 1 and isinstance(result["text"], str)
    assert len(result["speculative"]) == 4


def test_the_bundle_tools_import_neither_torch_nor_transformers():
    # quantize, evaluate, mobile, staging and weights need onnx (the export extra) but not torch:
    # run with this interpreter, torch and transformers blocked
    modules = [p.stem for p in Path(shadow_edge_root(), "bundle_tools").glob("*.py") if p.stem != "__init__"]
    imports = [f"import shadow_edge.bundle_tools.{m}" for m in modules]
    blocked = SCRIPT.split("bundle, text_bundle")[0]  # the Block finder alone
    script = blocked + "\n".join([*imports, "print('RESULT' + json.dumps(sorted(sys.modules)))"])
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert {"quantize", "evaluate", "mobile", "staging", "weights"} <= set(modules)
    assert all(f"shadow_edge.bundle_tools.{m}" in loaded for m in modules)
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "transformers")]


def shadow_edge_root() -> Path:
    import shadow_edge

    return Path(shadow_edge.__file__).parent
