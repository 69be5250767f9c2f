"""Grid-exact block quantization: weights that already lie on a block-wise integer grid (the base of
a GGUF checkpoint, dequantized: Q4_1 is w = d*q + m, q in 0..15, Q8_0 is w = d*q, q in -127..127, in
blocks of 32 along the input dimension) are stored as MatMulNBits with the grid's own step and
levels, so that re-quantizing them loses nothing. Round-to-nearest re-quantization of such weights
puts a second, misaligned grid over the first and roughly doubles the error (SmolLM2: 68% top-1).

Per block of `block` values along K: find a step s and an offset c such that every value is
s * (q - z) + c with q an integer in [0, 2^bits) and z = 2^(bits-1) (MatMulNBits' implicit zero
point). Blocks off any grid fall back to min-max rounding with the same float offset (Q4_1-style).
MatMulNBits' zero points cannot carry the offset at speed (float zero points run a reference path
12-35x slower on onnxruntime 1.32's CPU), so c travels beside it:

    y = MatMulNBits(x; q, s) + (x @ S) @ C      S: [K, K/block] block-sum of ones, C: [K/block, N]

S is shared by every quantized MatMul with the same input; the correction reads K*N/8 bytes (fp32
C), a fifth more than the symmetric 4-bit weights. A weight with no offset anywhere (a symmetric
grid, e.g. Q8_0) needs no correction at all. Weights that did not come from a grid gain nothing:
`fit_blocks` reports the exact share and quantize_graph.py rounds them as before (beside a grid base
at int4, at 8 bits: there they are the adapter and a trained shadow, small and the most hurt by
rounding; quantize.py decides with graph_on_grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .weights import drop_unused_initializers

# How far from an integer a value may be, in steps, and still count as on the grid: float32
# dequantization (d*q + m) leaves ~1e-6; rounding a real weight to a grid is off by up to 0.5.
GRID_TOLERANCE = 1e-4


@dataclass
class BlockFit:
    """A [K, N] weight as MatMulNBits blocks: w[b*block + i, n] ~ scales[n, b] * (q[n, b, i] - z) + offsets[n, b]."""

    q: np.ndarray  # uint8 [N, K/block, block]
    scales: np.ndarray  # float32 [N, K/block]
    offsets: np.ndarray  # float32 [N, K/block]
    exact: np.ndarray  # bool [N, K/block]: the block lies on a grid (reproduced to float rounding)
    bits: int

    @property
    def exact_share(self) -> float:
        return float(self.exact.mean())

    def dequantize(self) -> np.ndarray:
        zero = 1 << (self.bits - 1)
        w = self.scales[..., None] * (self.q.astype(np.float32) - zero) + self.offsets[..., None]
        return w.reshape(w.shape[0], -1).T

    def packed(self) -> np.ndarray:
        """MatMulNBits' B: [N, K/block, block*bits/8], two 4-bit values a byte, the first in the low nibble."""
        if self.bits == 8:
            return self.q
        return (self.q[..., 0::2] | (self.q[..., 1::2] << 4)).astype(np.uint8)


def _candidate_steps(lo: np.ndarray, hi: np.ndarray, bits: int) -> list[np.ndarray]:
    """Steps to try per block: a grid spanning k levels from min to max (Q4_1-like, k = 2^bits-1
    first, fewer when the extreme levels are unused), or symmetric around 0 (Q8_0, Q4_0)."""
    top = (1 << bits) - 1
    amax = np.maximum(np.abs(lo), np.abs(hi))
    spans = range(top, 0, -1) if bits <= 4 else (top, 15)  # 8 bits: 255 spans would be slow; Q8_0 is symmetric
    half = 1 << (bits - 1)
    return [(hi - lo) / k for k in spans] + [amax / (half - 1), amax / half]


# Output columns fitted at a time: the search holds ~8 float64 copies of what it fits, so a whole
# 262k-row head (Gemma 3) peaked at ~6 GB; blocks are independent, so chunks give the same fit.
FIT_COLUMNS = 4096


def fit_blocks(weight: np.ndarray, bits: int, block: int) -> BlockFit:
    """The grid of each block of `weight` [K, N] (K a multiple of block), or min-max rounding."""
    n = weight.shape[1]
    if n <= FIT_COLUMNS:
        return _fit_columns(weight, bits, block)
    parts = [_fit_columns(weight[:, i : i + FIT_COLUMNS], bits, block) for i in range(0, n, FIT_COLUMNS)]
    return BlockFit(
        q=np.concatenate([p.q for p in parts]),
        scales=np.concatenate([p.scales for p in parts]),
        offsets=np.concatenate([p.offsets for p in parts]),
        exact=np.concatenate([p.exact for p in parts]),
        bits=bits,
    )


def _fit_columns(weight: np.ndarray, bits: int, block: int) -> BlockFit:
    k, n = weight.shape
    w = weight.T.reshape(n, k // block, block).astype(np.float64)  # float64: judge the grid, not our rounding
    lo, hi = w.min(-1), w.max(-1)
    top = (1 << bits) - 1
    steps = np.where(hi > lo, (hi - lo) / top, 0.0)  # the fallback: min-max rounding
    exact = hi == lo  # a constant block is its offset alone
    for candidate in _candidate_steps(lo, hi, bits):
        todo = ~exact & (candidate > 0)
        if not todo.any():
            break
        levels = (w[todo] - lo[todo, None]) / candidate[todo, None]
        fits = (np.abs(levels - np.round(levels)).max(-1) <= GRID_TOLERANCE) & (np.round(levels).max(-1) <= top)
        idx = tuple(i[fits] for i in np.nonzero(todo))
        steps[idx] = candidate[idx]
        exact[idx] = True
    safe = np.where(steps > 0, steps, 1.0)
    q = np.clip(np.round((w - lo[..., None]) / safe[..., None]), 0, top)
    # center the used levels on the zero point, so that a symmetric grid needs no offset at all
    zero = 1 << (bits - 1)
    shift = np.clip(np.round(lo / safe) + zero, 0, top - q.max(-1))
    offsets = lo - (shift - zero) * steps
    offsets[np.abs(offsets) <= GRID_TOLERANCE * steps] = 0.0
    return BlockFit(
        q=(q + shift[..., None]).astype(np.uint8),
        scales=steps.astype(np.float32),
        offsets=offsets.astype(np.float32),
        exact=exact,
        bits=bits,
    )


@dataclass
class GridReport:
    """What grid quantization did to one graph (the manifest's quantization record)."""

    matmuls: int = 0  # MatMuls stored on their own grid
    blocks: int = 0
    exact_blocks: int = 0
    corrected: int = 0  # of those, with an offset correction beside them
    skipped: int = 0  # MatMuls looked at whose weights lie on no grid (quantized by rounding instead)

    def record(self) -> dict[str, int]:
        return {
            "grid_matmuls": self.matmuls,
            "grid_blocks": self.blocks,
            "grid_exact_blocks": self.exact_blocks,
            "offset_corrections": self.corrected,
            "off_grid_matmuls": self.skipped,
        }


def constant_weight(graph: onnx.GraphProto, node: onnx.NodeProto) -> np.ndarray | None:
    """The float32 [K, N] weight of MatMul(x, W) when W is an initializer, else None."""
    if node.op_type != "MatMul":
        return None
    init = next((t for t in graph.initializer if t.name == node.input[1]), None)
    if init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
        return None
    return numpy_helper.to_array(init)


def _grid_nodes(
    node: onnx.NodeProto, fit: BlockFit, block: int, accuracy_level: int, block_sums: dict[str, str]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """MatMulNBits for `node`, plus (x @ S) @ C + when some block has an offset."""
    n, blocks, _ = fit.q.shape
    x, out, name = node.input[0], node.output[0], node.name or node.output[0]
    inits = [numpy_helper.from_array(fit.packed(), f"{name}.q"), numpy_helper.from_array(fit.scales, f"{name}.scales")]
    has_offsets = bool(fit.offsets.any())
    nbits = onnx.helper.make_node(
        "MatMulNBits",
        [x, inits[0].name, inits[1].name],  # no zero points: the implicit 2^(bits-1), the fast path
        [f"{out}.nbits" if has_offsets else out],
        name=f"{name}.nbits",
        domain="com.microsoft",
        K=blocks * block,
        N=n,
        bits=fit.bits,
        block_size=block,
        accuracy_level=accuracy_level,
    )
    if not has_offsets:
        return [nbits], inits
    nodes = [nbits]
    sums = block_sums.get(x)
    if sums is None:  # sum x over each block once per input, for all MatMuls that read it
        ones = np.kron(np.eye(blocks, dtype=np.float32), np.ones((block, 1), dtype=np.float32))  # [K, blocks]
        inits.append(numpy_helper.from_array(ones, f"{name}.block_sum"))
        sums = block_sums[x] = f"{name}.x_block_sums"
        nodes.append(onnx.helper.make_node("MatMul", [x, inits[-1].name], [sums], name=f"{name}.block_sum"))
    inits.append(numpy_helper.from_array(np.ascontiguousarray(fit.offsets.T), f"{name}.offsets"))  # [blocks, N]
    nodes.append(onnx.helper.make_node("MatMul", [sums, inits[-1].name], [f"{out}.offset"], name=f"{name}.offset"))
    nodes.append(onnx.helper.make_node("Add", [nbits.output[0], f"{out}.offset"], [out], name=f"{name}.add"))
    return nodes, inits


def quantize_on_grid(
    graph: onnx.GraphProto,
    bits_of: dict[str, int],
    block: int,
    accuracy_level: int,
    min_share: float,
) -> GridReport:
    """Replace each MatMul named in bits_of whose blocks lie on a grid (at least min_share of them)
    with grid-exact MatMulNBits (the float MatMuls of its offset correction get new names)."""
    report, block_sums = GridReport(), {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = constant_weight(graph, node) if node.name in bits_of else None
        if weight is None:
            nodes.append(node)
            continue
        bits = bits_of[node.name]
        # a few columns first: an ordinary (off-grid) model's weights are not searched in full
        sample_fits = weight.shape[0] % block == 0 and fit_blocks(weight[:, :8], bits, block).exact_share >= min_share
        fit = fit_blocks(weight, bits, block) if sample_fits else None
        if fit is None or fit.exact_share < min_share:
            report.skipped += 1
            nodes.append(node)
            continue
        new_nodes, inits = _grid_nodes(node, fit, block, accuracy_level, block_sums)
        nodes.extend(new_nodes)  # in place of node: the graph stays topologically sorted
        graph.initializer.extend(inits)
        report.matmuls += 1
        report.blocks += fit.exact.size
        report.exact_blocks += int(fit.exact.sum())
        report.corrected += len(new_nodes) > 1
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)  # the float weights replaced
    return report


def graph_on_grid(path: Path, bits: int, block: int, min_share: float, probes: int = 4) -> bool:
    """Whether some of the first `probes` MatMul weights of the graph at `path` lie on a grid (a GGUF
    base), reading only those tensors' external data: a few columns of each. Some, not all: a GGUF
    mixes types by shape (Gemma 3 270M's Q4_K_M keeps 640-wide rows in Q5_0, others in Q4_K)."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    graph = onnx.load(path, load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    looked = 0
    for node in graph.node:
        tensor = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if tensor is None or len(tensor.dims) != 2 or tensor.dims[0] % block:
            continue
        if uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(path.parent))
        if fit_blocks(numpy_helper.to_array(tensor)[:, :8], bits, block).exact_share >= min_share:
            return True
        looked += 1
        if looked == probes:
            break
    return False


def _symmetric_fit(table: np.ndarray, bits: int, block: int) -> BlockFit | None:
    """The fit of table [rows, dim] (blocks along dim) when every block lies on a symmetric grid."""
    for rows in (table[:64], table):  # a sample first: most tables lie on no grid
        fit = fit_blocks(rows.T, bits, block)
        if not fit.exact.all() or fit.offsets.any():
            return None
    return fit


def embeddings_on_grid(graph: onnx.GraphProto, block: int) -> list[dict[str, int | str]]:
    """Gather(E, ids) -> GatherBlockQuantized on E's own grid, for float32 tables E [vocab, dim] that
    lie exactly on a symmetric 4- or 8-bit block grid (a GGUF Q8_0 token_embd, dequantized) and that
    no other node still reads in float32 (a head left float32 keeps its table). The packed bytes are
    those of the head's MatMulNBits on the same grid, so the bundle stores them once. Returns what
    was replaced: [{"table", "bits"}]."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    tables = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2}
    done, added = [], []
    for name, tensor in tables.items():
        nodes = readers.get(name, [])
        if not nodes or any(n.op_type != "Gather" or list(n.input).index(name) != 0 for n in nodes):
            continue
        if tensor.dims[1] % block:
            continue
        table = numpy_helper.to_array(tensor)
        fit = next((f for bits in (4, 8) if (f := _symmetric_fit(table, bits, block))), None)
        if fit is None:
            continue
        data = numpy_helper.from_array(fit.packed(), f"{name}.q{fit.bits}")
        scales = numpy_helper.from_array(fit.scales, f"{name}.scales{fit.bits}")
        shape = numpy_helper.from_array(np.array([tensor.dims[0], -1], np.int64), f"{name}.rows")
        added += [data, scales, shape]
        rows = onnx.helper.make_node("Reshape", [data.name, shape.name], [f"{name}.rows_q"], name=f"{name}.rows")
        for node in nodes:
            gather = onnx.helper.make_node(
                "GatherBlockQuantized",
                [rows.output[0], node.input[1], scales.name],  # no zero points: the implicit 2^(bits-1)
                list(node.output),
                name=node.name,
                domain="com.microsoft",
                bits=fit.bits,
                block_size=block,
                gather_axis=0,
                quantize_axis=1,
            )
            node.CopyFrom(gather)
        graph.node.insert(0, rows)
        done.append({"table": name, "bits": fit.bits})
    if done:
        graph.initializer.extend(added)
        drop_unused_initializers(graph)  # the float32 tables replaced
    return done
