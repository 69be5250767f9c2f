"""The bundle manifest: the only contract between the exporter and the runtime.

A bundle is a folder:
    manifest.json        this schema (format "shadow-edge-bundle", FORMAT_VERSION)
    shadow.onnx          tokens (+ shadow past KV) -> shadow_states (+ present KV)      [attached]
    shadow_lm.onnx       the same decoder plus the shadow head -> logits (+ present KV) [detached]
    backbone.onnx        tokens + shadow_states (+ base past KV) -> logits (+ present KV) [attached]
    base_lm.onnx         optional: the base model alone, without the adapter              [base]
    shadow_head.onnx     shadow_states -> logits: the shadow head alone                   [cascade]
    weights.data         every initializer of every graph, each distinct tensor stored once
    tokenizer.json ...   when the base model has a tokenizer

Imports only the standard library: both sides (torch exporter, torch-free runtime) use it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT_NAME = "shadow-edge-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"

# Graph names (keys of Manifest.graphs) and the modes that need them.
SHADOW_GRAPH = "shadow"
SHADOW_LM_GRAPH = "shadow_lm"
BACKBONE_GRAPH = "backbone"
BASE_LM_GRAPH = "base_lm"
SHADOW_HEAD_GRAPH = "shadow_head"
MODE_GRAPHS = {
    "attached": (SHADOW_GRAPH, BACKBONE_GRAPH),
    "detached": (SHADOW_LM_GRAPH,),
    "base": (BASE_LM_GRAPH,),  # only in bundles exported with --with-base
}
# The cascade is a schedule over graphs, not a mode of its own: the shadow graph plus its head
# answer first (detached), keeping the prompt's shadow states; escalating locally hands those
# states and the shadow KV cache to the backbone. With a remote, the backbone is never loaded.
CASCADE_GRAPHS = {
    "local": (SHADOW_GRAPH, SHADOW_HEAD_GRAPH, BACKBONE_GRAPH),
    "remote": (SHADOW_GRAPH, SHADOW_HEAD_GRAPH),
}

# I/O names follow optimum / onnxruntime-genai so the detached graph is a plain decoder.
PAST_KEY = "past_key_values.{}.key"
PAST_VALUE = "past_key_values.{}.value"
PRESENT_KEY = "present.{}.key"
PRESENT_VALUE = "present.{}.value"
SHADOW_STATES = "shadow_states"
LOGITS_TO_KEEP = "num_logits_to_keep"


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "int64", "float32", ...
    shape: list[int | str]  # ints, or symbolic dimension names


@dataclass
class GraphSpec:
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    purpose: str
    embedding: str  # how this graph gets the token embedding table
    # weight bytes one decoded token reads: every initializer, but one row of a Gather table
    weight_bytes_per_token: int = 0
    precision: str = "float32"  # weights: "float32", "int8" (dynamic) or "int4" (MatMulNBits)
    quantization: dict[str, Any] = field(default_factory=dict)  # method, settings, what was excluded


@dataclass
class CacheSpec:
    """One KV cache: per layer a key and a value of shape [batch, num_kv_heads, seq, head_dim]."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    def past_names(self) -> list[str]:
        return [n for i in range(self.num_layers) for n in (PAST_KEY.format(i), PAST_VALUE.format(i))]

    def present_names(self) -> list[str]:
        return [n for i in range(self.num_layers) for n in (PRESENT_KEY.format(i), PRESENT_VALUE.format(i))]


@dataclass
class ModelSpec:
    architecture: str  # e.g. "LlamaForCausalLM"
    model_type: str
    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    dtype: str
    base: CacheSpec
    shadow: CacheSpec
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    task: str = "causal_lm"  # or "seq_cls": the graphs' logits are class logits, read at the last token
    labels: list[str] = field(default_factory=list)  # seq_cls: the class names (id2label), in order


@dataclass
class FileEntry:
    size: int
    sha256: str


@dataclass
class Manifest:
    model: ModelSpec
    graphs: dict[str, GraphSpec]
    files: dict[str, FileEntry]
    modes: list[str]
    source: dict[str, Any]
    created_by: dict[str, str]
    validation: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)  # quantized bundles: eval against the source
    mobile: dict[str, Any] = field(default_factory=dict)  # ORT-format graphs, onnxruntime-genai folder
    escalation: dict[str, Any] = field(default_factory=dict)  # cascade policy defaults (runtimes/escalation.py)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def weight_bytes_per_token(self, mode: str) -> int:
        """Weight bytes one decoded token reads in `mode`: the sum over the mode's graphs."""
        return sum(self.graphs[g].weight_bytes_per_token for g in MODE_GRAPHS[mode])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise BundleError(f"manifest is not a {FORMAT_NAME} manifest (format={_field(data, 'format')!r})")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {version!r} is not supported (this shadow-edge reads version {FORMAT_VERSION})",
                hint="re-export the checkpoint with this version of shadow-edge",
            )
        try:
            model = dict(data["model"])
            model["base"] = CacheSpec(**model["base"])
            model["shadow"] = CacheSpec(**model["shadow"])
            graph_fields = {f.name for f in fields(GraphSpec)}  # newer optional fields are ignored
            graphs = {
                name: GraphSpec(
                    **{
                        **{k: v for k, v in g.items() if k in graph_fields},
                        "inputs": [TensorSpec(**t) for t in g["inputs"]],
                        "outputs": [TensorSpec(**t) for t in g["outputs"]],
                    }
                )
                for name, g in data["graphs"].items()
            }
            files = {name: FileEntry(**f) for name, f in data["files"].items()}
            known = {f.name for f in fields(cls)}
            rest = {k: v for k, v in data.items() if k in known and k not in ("model", "graphs", "files")}
            return cls(model=ModelSpec(**model), graphs=graphs, files=files, **rest)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"manifest is malformed: {exc}") from None


def _field(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(root: Path) -> dict[str, FileEntry]:
    """Size and sha256 of every file under root except the manifest itself."""
    return {
        p.relative_to(root).as_posix(): FileEntry(size=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }


def resolve_inside(root: Path, relative: str) -> Path:
    """The path of a bundle file, refusing any that points outside the bundle."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BundleError(f"manifest names a file outside the bundle: {relative!r}")
    return path


def read_manifest(bundle: str | Path) -> Manifest:
    root = Path(bundle)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise BundleError(f"bundle folder not found: {root}", hint="pass the folder `shadow-edge export` wrote")
    if not path.is_file():
        raise BundleError(f"no {MANIFEST_FILE} in {root}: not a shadow-edge bundle")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})") from None
    return Manifest.from_dict(data)


def verify_files(bundle: str | Path, manifest: Manifest, names: list[str] | None = None, hashes: bool = True) -> None:
    """Check size (and sha256 unless hashes=False) of the named bundle files, or of all of them."""
    root = Path(bundle)
    for name in names if names is not None else list(manifest.files):
        entry = manifest.files.get(name)
        if entry is None:
            raise BundleError(f"manifest lists no file {name!r}")
        path = resolve_inside(root, name)
        if not path.is_file():
            raise BundleError(f"bundle file missing: {name}")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"bundle file {name} has {size} bytes, manifest says {entry.size}: corrupt or truncated")
        if hashes and sha256_file(path) != entry.sha256:
            raise BundleError(f"bundle file {name} does not match its sha256 in the manifest: corrupt or modified")


def graph_files(manifest: Manifest, graph: str) -> list[str]:
    """The files a graph needs: its .onnx file and the weights it references."""
    spec = manifest.graphs[graph]
    weights = [name for name in manifest.files if name.endswith(".data")]
    return [spec.file, *weights]


def cache_for(model: ModelSpec, graph: str) -> CacheSpec:
    """The KV cache a graph reads and writes: the base's for backbone/base_lm, else the shadow's."""
    return model.base if graph in (BACKBONE_GRAPH, BASE_LM_GRAPH) else model.shadow


def modes_of(graphs: dict) -> list[str]:
    """The modes whose graphs are all present."""
    return [mode for mode, names in MODE_GRAPHS.items() if all(name in graphs for name in names)]


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: validation figures that are not finite are stored as null."""
    return value if math.isfinite(value) else None
