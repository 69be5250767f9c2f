"""onnxruntime sessions for bundle graphs, one per graph, each a step function over numpy arrays.
open_runners() is where every session is opened: the runtime's loaders, export validation and
evaluation all go through it, with the same options.

A step takes the new tokens, the attention mask over past + new positions, their position ids,
and the graph's KV cache; it returns the graph's first output (shadow_states or logits) and
updates the cache. A graph whose manifest entry says kv_layout "shared_buffer" gets a
SharedKVCache, bound with IOBinding as both its past and present tensors, so that the step writes
the new positions into the cache in place instead of returning the whole cache anew.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..bundle import (
    BACKBONE_GRAPH,
    BASE_LM_GRAPH,
    KV_SHARED_BUFFER,
    LOGITS_TO_KEEP,
    SHADOW_GRAPH,
    SHADOW_HEAD_GRAPH,
    SHADOW_LM_GRAPH,
    SHADOW_STATES,
    CacheSpec,
    GraphSpec,
    ModelSpec,
    cache_for,
    resolve_inside,
    shape_mismatch,
)
from ..errors import BundleError
from .kv_cache import KVCache, SharedKVCache

_state = ort.capi.onnxruntime_pybind11_state
ORT_RUN_ERRORS = (_state.Fail, _state.InvalidArgument, _state.RuntimeException)  # share no base but Exception


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def capped_threads(threads: int | None) -> tuple[int | None, str]:
    """`threads` limited to the usable cores, and a warning when it asked for more: more intra-op
    threads than cores only make them wait for each other (1000 threads decoded 50x slower)."""
    cores = usable_cores()
    if threads is None or threads <= cores:
        return threads, ""
    return cores, f"{threads} threads asked for, but this machine has {cores} usable cores: using {cores}"


def shared_weights(files: Iterable[Path]) -> dict[str, mmap.mmap]:
    """One read-only mapping of each external-data file, by file name, for all the sessions of a
    model (session_options(weights=...)). onnxruntime otherwise maps the file once per session, and
    a page that two sessions read (the embedding rows both attached graphs look up; with large
    folios, the pages around them) counts in RSS once per mapping: measured on the SmolLM2 demo
    without prepacking, fp32 attached peaked at 777 MB with a mapping per session, 668 MB with one."""
    mappings = {}
    for path in files:
        with open(path, "rb") as fh:
            mappings[path.name] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return mappings


def session_options(
    threads: int | None = None,
    prepack: bool = True,
    spin: bool = True,
    weights: Mapping[str, mmap.mmap] | None = None,
) -> ort.SessionOptions:
    """CPU options; prepack=False keeps MatMul/Gemm weights in the memory-mapped weights file
    instead of a private repacked copy per session; spin=False lets the intra-op threads sleep as
    soon as a run ends (SPIN says when); weights: shared_weights() to read the external data
    from, in place (the caller keeps the mappings open as long as the session)."""
    options = ort.SessionOptions()
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if weights:
        options.add_session_config_entry("session.use_external_initializer_file_buffers_directly", "1")
        buffers = [memoryview(m) for m in weights.values()]
        options.add_external_initializers_from_files_in_memory(list(weights), buffers, [len(b) for b in buffers])
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = min(int(threads), usable_cores())  # more only wait for each other
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


# Thread spinning. Each session has its own intra-op pool whose threads spin for a while after a
# run. In attached mode the shadow graph's spinning threads then steal the cores from the backbone
# that runs right after it: on 2 cores this halved attached decoding (SmolLM2, 2 threads: 19-21
# tok/s with spinning everywhere, 28-34 tok/s with the shadow's pool sleeping; the base model
# alone: 37). The small shadow graph loses nothing measurable by waking its threads from sleep.
# The cascade's shadow head runs between two shadow steps, the same situation.
SPIN = {
    SHADOW_GRAPH: False,
    BACKBONE_GRAPH: True,
    SHADOW_LM_GRAPH: True,
    BASE_LM_GRAPH: True,
    SHADOW_HEAD_GRAPH: False,
}


def open_runners(
    root: Path,
    graphs: Mapping[str, GraphSpec],
    model: ModelSpec,
    names: Sequence[str],
    threads: int | None = None,
    prepack: bool = True,
) -> dict[str, GraphRunner]:
    """A GraphRunner for each named graph of the bundle folder `root` (its files already checked),
    with session_options() and SPIN. onnxruntime releases the GIL while it builds a session: the
    graphs open side by side."""
    # Without prepacking the sessions read the weights file itself: one mapping for all of them.
    # With prepacking, onnxruntime's own per-session mapping is better: it lets go of the pages it
    # packed, while pages read through a mapping of ours stay resident (SmolLM2 fp32 attached: load
    # peaked at 1146 MB through one shared mapping, 735 MB through onnxruntime's).
    # (every graph of a bundle reads the one external-data file, weights.data: bundle_tools/weights.py)
    weights = None if prepack else shared_weights(sorted(root.glob("*.data")))

    def runner(name: str) -> GraphRunner:
        spec = graphs[name]
        options = session_options(threads, prepack=prepack, spin=SPIN[name], weights=weights)
        return GraphRunner(resolve_inside(root, spec.file), spec, cache_for(model, name), options, weights)

    with ThreadPoolExecutor(max_workers=max(1, min(len(names), 2))) as pool:
        return dict(zip(names, pool.map(runner, names), strict=True))


class GraphRunner:
    """One bundle graph in an onnxruntime session."""

    def __init__(
        self,
        path: Path,
        spec: GraphSpec,
        cache: CacheSpec,
        options: ort.SessionOptions | None = None,
        weights: Mapping[str, mmap.mmap] | None = None,  # the mappings `options` reads, kept open here
    ):
        self.spec = spec
        self.weights = weights
        self.cache_spec = cache
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's pybind errors share no base class but Exception
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"onnxruntime cannot load {path.name}: {first}") from None
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._check_against_manifest(path.name)
        self.kv_layout = spec.kv_layout  # may be set to KV_CONCAT: every graph also runs that way

    def _check_against_manifest(self, file: str) -> None:
        """The graph must take the inputs and give the outputs the manifest lists (which
        check_consistency checked against bundle.GRAPH_KINDS), with the cache's KV shapes: a
        manifest that disagrees with its graph is refused here, not by a shape error mid-generation."""
        listed = {t.name for t in self.spec.inputs}
        if self.input_names != listed:
            odd = sorted(self.input_names ^ listed)
            raise BundleError(f"{file} does not match the manifest: inputs {odd[:4]} are in one but not the other")
        listed_outputs = [t.name for t in self.spec.outputs]
        if self.output_names != listed_outputs:  # step() reads the first, then the cache's in order
            raise BundleError(
                f"{file} does not match the manifest: its outputs {self.output_names[:3]} "
                f"are not the manifest's {listed_outputs[:3]} (in that order)"
            )
        for value in self.session.get_inputs():
            wrong = shape_mismatch(value.name, value.shape, self.cache_spec)
            if wrong:
                raise BundleError(f"{file} does not match the manifest: {wrong}")

    def new_cache(self, batch: int) -> KVCache | SharedKVCache:
        if self.kv_layout == KV_SHARED_BUFFER:
            return SharedKVCache(self.cache_spec, batch)
        return KVCache(self.cache_spec, batch)

    def step(
        self,
        cache: KVCache | SharedKVCache,
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
        }
        if SHADOW_STATES in self.input_names:
            feeds[SHADOW_STATES] = np.ascontiguousarray(shadow_states, dtype=np.float32)
        if LOGITS_TO_KEEP in self.input_names:
            feeds[LOGITS_TO_KEEP] = np.array(logits_to_keep, dtype=np.int64)
        if isinstance(cache, SharedKVCache):
            return self._step_in_place(cache, feeds)
        outputs = self._checked(self._run(feeds | cache.feeds()))
        cache.update(outputs[1:])
        return outputs[0]

    def _step_in_place(self, cache: SharedKVCache, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One step with the cache's buffers bound as past and present: GroupQueryAttention sees
        past and present share memory and appends the new positions at seqlens_k - new + 1, which
        the graph derives from the attention mask's width (= every row's length; the mask carries
        left padding). Only the first output is copied out."""
        new, total = feeds["input_ids"].shape[1], feeds["attention_mask"].shape[1]
        if total != cache.seq_len + new:
            raise ValueError(f"the attention mask covers {total} positions, the cache {cache.seq_len} + {new} new")
        cache.reserve(total)
        if cache.binding is None:  # past and present stay bound to the buffers until they grow
            cache.binding = self.session.io_binding()
            cache.binding.bind_output(self.output_names[0], "cpu")  # get_outputs() lists them as bound
            names = zip(self.cache_spec.past_names(), self.cache_spec.present_names(), strict=True)
            for (past, present), value in zip(names, cache.values, strict=True):
                cache.binding.bind_ortvalue_input(past, value)
                cache.binding.bind_ortvalue_output(present, value)
        binding = cache.binding
        binding.bind_output(self.output_names[0], "cpu")  # rebinding a name replaces its entry
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        self._run_bound(binding)
        cache.advance(new)
        return self._checked([binding.get_outputs()[0].numpy()])[0]

    def head(self, shadow_states: np.ndarray) -> np.ndarray:
        """A cacheless head graph (shadow_head): logits [batch, seq, vocab] of the states given."""
        return self._checked(self._run({SHADOW_STATES: np.ascontiguousarray(shadow_states)}))[0]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(self.output_names, feeds)
        except ORT_RUN_ERRORS as exc:
            raise self._failed(exc) from None

    def _run_bound(self, binding: ort.IOBinding) -> None:
        try:
            self.session.run_with_iobinding(binding)
        except (*ORT_RUN_ERRORS, RuntimeError) as exc:  # run_with_iobinding raises RuntimeError
            raise self._failed(exc) from None

    def _failed(self, exc: Exception) -> BundleError:
        # the inputs are built from the manifest: a graph that refuses them disagrees with it
        first = str(exc).strip().splitlines()[0][:300]
        return BundleError(f"onnxruntime failed running {self.spec.file}: {first}")

    def _checked(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        # NaN/inf never come out of sound weights, and would be sampled as token 0 or garbage.
        # Checking the last position only costs ~10 us a step (one vocabulary row).
        last = outputs[0][:, -1] if outputs[0].ndim == 3 else outputs[0]
        if not np.isfinite(last).all():
            raise BundleError(
                f"{self.spec.file} produced non-finite values (NaN or inf): its weights are probably corrupt",
                hint="check them against their sha256 (run without --no-verify), or re-export the bundle",
            )
        return outputs
