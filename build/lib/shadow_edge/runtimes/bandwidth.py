"""Memory read bandwidth of this machine, measured with numpy, for the speed limit of decoding.

CPU decoding reads every weight once per token, so tokens/s <= bandwidth / bytes read per token.
The probe sums a buffer from `threads` threads at once (numpy releases the GIL in reductions) and
keeps the best of several passes, the way STREAM-like probes do. Give it a buffer as large as the
weights a token reads: measured here, 256 MB read at ~25 GB/s but 1 GB at ~13 GB/s (caches and
TLB reach further than the advertised L3). Torch-free.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

DEFAULT_BYTES = 256 << 20


def read_bandwidth(threads: int = 1, nbytes: int = DEFAULT_BYTES, passes: int = 5) -> float:
    """Best observed read bandwidth in bytes/s with `threads` concurrent readers."""
    threads = max(1, int(threads))
    buffer = np.ones(nbytes // 4, dtype=np.float32)  # touched once here, so pages are resident
    slices = np.array_split(buffer, threads)
    best = 0.0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(passes):
            start = time.perf_counter()
            list(pool.map(np.sum, slices))
            elapsed = time.perf_counter() - start
            best = max(best, buffer.nbytes / elapsed)
    return best
