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

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .escalation_policy import POLICY_LIMITS, POLICY_SECTION
from .manifest_schema import MAX_MANIFEST_BYTES, build, loads
from .verify_cache import hash_matches, sha256_file

FORMAT_NAME = "shadow-edge-bundle"
TASKS = ("causal_lm", "seq_cls")
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
# the graphs each schedule opens (the cascade's when it escalates on this device)
SCHEDULE_GRAPHS = MODE_GRAPHS | {"cascade": CASCADE_GRAPHS["local"], "speculative": CASCADE_GRAPHS["local"]}

# I/O names follow optimum / onnxruntime-genai so the detached graph is a plain decoder.
PAST_KEY = "past_key_values.{}.key"
PAST_VALUE = "past_key_values.{}.value"
PRESENT_KEY = "present.{}.key"
PRESENT_VALUE = "present.{}.value"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
SHADOW_STATES = "shadow_states"
LOGITS_TO_KEEP = "num_logits_to_keep"
LOGITS = "logits"
TOKEN_INPUTS = (INPUT_IDS, ATTENTION_MASK, POSITION_IDS)


@dataclass(frozen=True)
class GraphKind:
    """The interface of one kind of graph: its inputs, in order, then (when cached) the past
    keys/values of its cache; its first output, then (when cached) the present ones."""

    inputs: tuple[str, ...]
    output: str
    cached: bool = True

    def input_names(self, cache: CacheSpec) -> list[str]:
        return [*self.inputs, *(cache.past_names() if self.cached else [])]

    def output_names(self, cache: CacheSpec) -> list[str]:
        return [self.output, *(cache.present_names() if self.cached else [])]


# How a graph's KV cache inputs and outputs relate (GraphSpec.kv_layout):
#   concat         present = past ++ new: each step returns the whole cache anew (traced graphs)
#   shared_buffer  past and present may be one buffer longer than the cache, updated in place
#                  (GroupQueryAttention's past_present_share_buffer; fused graphs). Such a graph
#                  also runs as concat, so a runtime that does not know the field still runs it.
KV_CONCAT = "concat"
KV_SHARED_BUFFER = "shared_buffer"
KV_LAYOUTS = (KV_CONCAT, KV_SHARED_BUFFER)


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
    kv_layout: str = KV_CONCAT  # one of KV_LAYOUTS; bundles written before the field are concat

    @property
    def cached(self) -> bool:
        """Whether the graph reads and writes a KV cache (the shadow head does not)."""
        return any(t.name.startswith("past_key_values.") for t in self.inputs)


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


# Every graph kind a bundle may hold. Both graph builders (exporters/onnx_build.py writing the
# graphs, exporters/onnx_export.py tracing them) declare exactly these inputs and outputs, and a
# manifest whose graphs say otherwise is refused (check_consistency), as is a session that
# disagrees with its manifest (runtimes/sessions.py).
GRAPH_KINDS = {
    SHADOW_GRAPH: GraphKind(TOKEN_INPUTS, SHADOW_STATES),
    SHADOW_LM_GRAPH: GraphKind((*TOKEN_INPUTS, LOGITS_TO_KEEP), LOGITS),
    BACKBONE_GRAPH: GraphKind((*TOKEN_INPUTS, SHADOW_STATES, LOGITS_TO_KEEP), LOGITS),
    BASE_LM_GRAPH: GraphKind((*TOKEN_INPUTS, LOGITS_TO_KEEP), LOGITS),
    SHADOW_HEAD_GRAPH: GraphKind((SHADOW_STATES,), LOGITS, cached=False),
}


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
    escalation: dict[str, Any] = field(default_factory=dict)  # cascade policy defaults (escalation_policy.py)
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
        """A manifest from untrusted JSON data: every field typed and bounded (manifest_schema.py),
        then checked for consistency (file names, token ids, graph I/O against the caches)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise BundleError(f"manifest is not a {FORMAT_NAME} manifest (format={_field(data, 'format')!r:.80})")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {version!r:.40} is not supported "
                f"(this shadow-edge reads version {FORMAT_VERSION})",
                hint="re-export the checkpoint with this version of shadow-edge",
            )
        manifest = build(cls, data, LIMITS, SECTIONS)
        check_consistency(manifest)
        return manifest


# -- the schema's bounds (manifest_schema.py enforces them and the type hints above) -----------------

MAX_LAYERS = 1024
MAX_VOCAB = 1 << 22  # Gemma 3's 262,144 is the largest vocabulary of a supported family
MAX_HIDDEN = 1 << 17
MAX_BYTES = 1 << 44  # 16 TiB
MAX_NAME = 256  # characters of a graph input/output name or of one file name component
LIMITS = {
    "CacheSpec.num_layers": (1, MAX_LAYERS),
    "CacheSpec.num_kv_heads": (1, 1024),
    "CacheSpec.head_dim": (1, 4096),
    "CacheSpec.hidden_size": (1, MAX_HIDDEN),
    "ModelSpec.vocab_size": (1, MAX_VOCAB),
    "ModelSpec.hidden_size": (1, MAX_HIDDEN),
    "ModelSpec.max_position_embeddings": (1, 1 << 24),
    "ModelSpec.bos_token_id": (0, MAX_VOCAB),
    "ModelSpec.eos_token_ids": (0, MAX_VOCAB),
    "ModelSpec.pad_token_id": (-1, 1 << 31),  # some configs name a pad id outside the vocabulary
    "TensorSpec.shape": (0, 1 << 31),  # 0: a dimension the graph leaves unnamed
    "GraphSpec.weight_bytes_per_token": (0, MAX_BYTES),
    "FileEntry.size": (0, MAX_BYTES),
    "Manifest.generation.max_new_tokens": (1, 1 << 24),
    "Manifest.generation.temperature": (0, 1e4),
    "Manifest.generation.top_k": (0, MAX_VOCAB),
    "Manifest.generation.top_p": (0, 1),
    "Manifest.generation.repetition_penalty": (0, 1e4),
    "Manifest.generation.eos_token_ids": (0, MAX_VOCAB),
    "Manifest.escalation.marker_ids": (0, MAX_VOCAB),
    **{f"Manifest.escalation.{key}": bounds for key, bounds in POLICY_LIMITS.items()},
}
# the keys the runtime reads from the free-form sections, and their types
SECTIONS = {
    "Manifest.generation": {
        "max_new_tokens": int,
        "temperature": float,
        "top_k": int,
        "top_p": float,
        "repetition_penalty": float,
        "eos_token_ids": list[int],
    },
    "Manifest.tokenizer": {
        "file": str,
        "chat_template": str | None,
        "bos_token": str | None,
        "eos_token": str | None,
        "pad_token": str | None,
        "add_bos_token": bool,
    },
    "Manifest.escalation": POLICY_SECTION,  # the cascade's policy (escalation_policy.py)
}
# graphs whose `logits` output spans the vocabulary
LM_GRAPHS = (SHADOW_LM_GRAPH, BACKBONE_GRAPH, BASE_LM_GRAPH, SHADOW_HEAD_GRAPH)


def check_consistency(manifest: Manifest) -> None:
    """What types cannot say: file names stay inside the bundle and are listed, token ids lie in
    the vocabulary, and each graph's cache inputs/outputs are those its cache spec implies (so a
    layer count or KV shape that disagrees with the graph is refused before anything is sized by it)."""
    model = manifest.model
    for name in manifest.files:
        check_file_name(name)
    named = [spec.file for spec in manifest.graphs.values()]
    named += [manifest.tokenizer["file"]] if manifest.tokenizer.get("file") else []
    for name in named:
        check_file_name(name)
        if name not in manifest.files:
            raise BundleError(f"manifest lists no file {name!r}")
    ids = [model.bos_token_id, *model.eos_token_ids, *manifest.generation.get("eos_token_ids", [])]
    bad = [t for t in ids if t is not None and t >= model.vocab_size]
    if bad:
        raise BundleError(f"manifest names token id {bad[0]}, outside the vocabulary (0..{model.vocab_size - 1})")
    if model.task not in TASKS:
        raise BundleError(f"manifest model.task is {model.task[:40]!r}, not one of {', '.join(TASKS)}")
    # a classifier's graphs end in class logits, one per label, not in the vocabulary
    width = len(model.labels) if model.task == "seq_cls" else model.vocab_size
    for graph, spec in manifest.graphs.items():
        if spec.kv_layout not in KV_LAYOUTS:
            raise BundleError(
                f"manifest graph {graph} has kv_layout {spec.kv_layout[:40]!r}, not one of {', '.join(KV_LAYOUTS)}",
                hint="re-export the checkpoint with this version of shadow-edge",
            )
        _check_graph_io(graph, spec, cache_for(model, graph), width)


def _check_graph_io(graph: str, spec: GraphSpec, cache: CacheSpec, vocab_size: int) -> None:
    kind = GRAPH_KINDS.get(graph)
    if kind is None:
        raise BundleError(f"manifest names a graph {graph[:MAX_NAME]!r}; graphs are {', '.join(GRAPH_KINDS)}")
    tensors = [*spec.inputs, *spec.outputs]
    for t in tensors:
        if not t.name or len(t.name) > MAX_NAME or "\x00" in t.name or len(t.shape) > 8 or len(t.dtype) > 32:
            raise BundleError(f"manifest graph {graph} has a malformed input/output {t.name[:MAX_NAME]!r}")
    if not kind.cached and (spec.cached or any(t.name.startswith("present.") for t in spec.outputs)):
        raise BundleError(f"manifest graph {graph} has a KV cache; a {graph} graph has none")
    named = [t.name for t in spec.inputs if not t.name.startswith("past_key_values.")]
    first = spec.outputs[0].name if spec.outputs else None
    if named != list(kind.inputs) or first != kind.output:
        raise BundleError(
            f"manifest graph {graph} takes {', '.join(named)[:200]} and gives {first!r} first; "
            f"a {graph} graph takes {', '.join(kind.inputs)} and gives {kind.output!r} first"
        )
    past = sorted(t.name for t in spec.inputs if t.name.startswith("past_key_values."))
    present = [t.name for t in spec.outputs[1:]]  # the runtime reads them in this order
    if kind.cached and (past != sorted(cache.past_names()) or present != cache.present_names()):
        raise BundleError(
            f"manifest graph {graph} has {len(past)} cache inputs and {len(present)} cache outputs, "
            f"its cache of {cache.num_layers} layers needs {2 * cache.num_layers} of each "
            "(outputs in the order present.0.key, present.0.value, present.1.key, ...)"
        )
    for t in tensors:
        wrong = shape_mismatch(t.name, t.shape, cache, vocab_size if graph in LM_GRAPHS else None)
        if wrong:
            raise BundleError(f"manifest graph {graph}: {wrong}")


def shape_mismatch(name: str, shape: Sequence[Any], cache: CacheSpec, vocab_size: int | None = None) -> str:
    """What a tensor's fixed dimensions contradict ('' if nothing): a KV tensor's heads and
    head_dim, and the vocabulary width of logits (symbolic and unnamed dimensions pass)."""
    if name.startswith(("past_key_values.", "present.")):
        want = {1: cache.num_kv_heads, 3: cache.head_dim}
    elif name == "logits" and vocab_size is not None:
        want = {2: vocab_size}
    else:
        return ""
    for axis, size in want.items():
        dim = shape[axis] if len(shape) > axis else None
        if isinstance(dim, int) and dim and dim != size:
            return f"{name} has {dim} at axis {axis}, the manifest's model says {size}"
    return ""


def check_file_name(name: str) -> None:
    """A bundle file name is a relative POSIX path inside the bundle, of plain components."""
    parts = name.split("/")
    if name.startswith("/") or ".." in parts:
        raise BundleError(f"manifest names a file outside the bundle: {name[:MAX_NAME]!r}")
    if "\x00" in name or "\\" in name or any(p in ("", ".") or len(p) > MAX_NAME for p in parts) or len(parts) > 8:
        raise BundleError(f"manifest has a malformed file name {name[:MAX_NAME]!r} (a relative path of plain names)")


def _field(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


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
    if path.stat().st_size > MAX_MANIFEST_BYTES:  # before reading it
        raise BundleError(f"{path} has {path.stat().st_size} bytes, more than a manifest may ({MAX_MANIFEST_BYTES})")
    return Manifest.from_dict(loads(path.read_bytes(), str(path)))


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
        if hashes and not hash_matches(path, entry.sha256):  # remembered per file stat (verify_cache.py)
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
