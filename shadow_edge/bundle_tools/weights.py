"""One external-data file for every graph of a bundle, each distinct tensor stored once.

Every initializer of at least INLINE_BYTES is keyed by its dtype, shape and bytes; a tensor seen
before (in this graph or another) is pointed at, not written again. Offsets are 4 KiB aligned so
that the runtime can memory-map the file and two sessions share the pages of tensors they both
read (the embedding table). Used by export and by quantize (a quantized tensor used by several
graphs is still stored once). Imports no torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

WEIGHTS_FILE = "weights.data"
INLINE_BYTES = 1024  # smaller tensors stay inside the .onnx file
ALIGN = 4096


@dataclass
class SharedWeights:
    """Writes distinct initializers once into one external-data file."""

    path: Path
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # content key -> (offset, length)
    referenced: dict[str, set[str]] = field(default_factory=dict)  # graph -> content keys it reads
    size: int = 0

    def externalize(self, graph_name: str, model: onnx.ModelProto) -> None:
        keys = self.referenced.setdefault(graph_name, set())
        with open(self.path, "ab") as fh:
            for tensor in model.graph.initializer:
                # raw_data is already the little-endian bytes; to_array().tobytes() would copy them twice
                raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
                if len(raw) < INLINE_BYTES:
                    continue
                key = f"{tensor.data_type}:{list(tensor.dims)}:{hashlib.sha256(raw).hexdigest()}"
                if key not in self.offsets:
                    padding = -self.size % ALIGN
                    fh.write(b"\0" * padding)
                    self.offsets[key] = (self.size + padding, len(raw))
                    fh.write(raw)
                    self.size += padding + len(raw)
                keys.add(key)
                offset, length = self.offsets[key]
                tensor.ClearField("raw_data")
                for attr in ("float_data", "int32_data", "int64_data", "double_data"):
                    tensor.ClearField(attr)
                tensor.data_location = TensorProto.EXTERNAL
                del tensor.external_data[:]
                for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v

    def bytes_of(self, graph_name: str) -> int:
        return sum(self.offsets[k][1] for k in self.referenced.get(graph_name, ()))

    def shared_bytes(self, a: str, b: str) -> int:
        common = self.referenced.get(a, set()) & self.referenced.get(b, set())
        return sum(self.offsets[k][1] for k in common)

    def record(self, graphs: list[str]) -> dict[str, Any]:
        """The manifest's description of the weights file (manifest.source["weights"])."""
        return {
            "file": self.path.name,
            "bytes": self.size,
            "bytes_per_graph": {name: self.bytes_of(name) for name in graphs},
            "layout": "each distinct tensor stored once, 4 KiB aligned",
        }


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads (weights a rewrite replaced)."""
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def weight_bytes_per_token(model: onnx.ModelProto) -> int:
    """Bytes of weights one decode step reads: all initializers, except that a table read only by
    Gather or GatherBlockQuantized (an embedding; the latter's data through a Reshape, and its
    scales) costs one row per token."""
    graph = model.graph
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, slot))

    def row_read(node: onnx.NodeProto, slot: int) -> bool:
        if node.op_type == "Reshape" and slot == 0:
            return all(row_read(*use) for use in consumers.get(node.output[0], [])) and node.output[0] in consumers
        return (node.op_type, slot) in {("Gather", 0), ("GatherBlockQuantized", 0), ("GatherBlockQuantized", 2)}

    total = 0
    for tensor in graph.initializer:
        dims = list(tensor.dims)
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        count = int(np.prod(dims)) if dims else 1
        uses = consumers.get(tensor.name, [])
        if uses and all(row_read(*use) for use in uses) and len(dims) >= 2:
            count //= dims[0]
        total += count * itemsize
    return total
