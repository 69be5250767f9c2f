"""onnxruntime sessions for bundle graphs, one per graph, each a step function over numpy arrays.

A step takes the new tokens, the attention mask over past + new positions, their position ids,
and the graph's KV cache; it returns the graph's first output (shadow_states or logits) and
updates the cache in place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..bundle import LOGITS_TO_KEEP, SHADOW_STATES, CacheSpec, GraphSpec
from ..errors import BundleError
from .kv_cache import KVCache


def session_options(threads: int | None = None, prepack: bool = True, spin: bool = True) -> ort.SessionOptions:
    """CPU options; prepack=False keeps MatMul/Gemm weights in the memory-mapped weights file
    instead of a private repacked copy per session; spin=False lets the intra-op threads sleep as
    soon as a run ends (see runtimes/model.py for when)."""
    options = ort.SessionOptions()
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


class GraphRunner:
    """One bundle graph in an onnxruntime session."""

    def __init__(self, path: Path, spec: GraphSpec, cache: CacheSpec, options: ort.SessionOptions | None = None):
        self.spec = spec
        self.cache_spec = cache
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's pybind errors share no base class but Exception
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"onnxruntime cannot load {path.name}: {first}") from None
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def new_cache(self, batch: int) -> KVCache:
        return KVCache(self.cache_spec, batch)

    def step(
        self,
        cache: KVCache,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        shadow_states: np.ndarray | None = None,
        logits_to_keep: int = 1,
    ) -> np.ndarray:
        """Run the graph on new tokens; returns its first output and advances the cache."""
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
            **cache.feeds(),
        }
        if SHADOW_STATES in self.input_names:
            feeds[SHADOW_STATES] = shadow_states
        if LOGITS_TO_KEEP in self.input_names:
            feeds[LOGITS_TO_KEEP] = np.array(logits_to_keep, dtype=np.int64)
        outputs = self.session.run(self.output_names, feeds)
        cache.update(outputs[1:])
        return outputs[0]

    def head(self, shadow_states: np.ndarray) -> np.ndarray:
        """A cacheless head graph (shadow_head): logits [batch, seq, vocab] of the states given."""
        return self.session.run(self.output_names, {SHADOW_STATES: np.ascontiguousarray(shadow_states)})[0]
