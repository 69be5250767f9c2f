"""One host of js/bench/hosts.ts: the Python runtime loads BUNDLE in MODE and runs bench/request.json
(greedy, EOS off so every run decodes max_new_tokens); prints one JSON line. Torch-free."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from shadow_edge.runtimes.generate import peak_rss_mb
from shadow_edge.runtimes.model import load


def main(bundle: str, mode: str) -> None:
    request = json.loads((Path(__file__).parent / "request.json").read_text())
    started = time.perf_counter()
    model = load(bundle, mode=mode, threads=request["threads"], verify="size")
    load_s = time.perf_counter() - started
    settings = {"max_new_tokens": request["max_new_tokens"], "temperature": 0.0, "eos_token_ids": []}
    runs = [model.chat(request["messages"], **settings) for _ in range(request["repeat"])]
    print(
        json.dumps(
            {
                "host": "python",
                "mode": mode,
                "load_s": load_s,
                "prefill_s": statistics.median(r.prefill_s for r in runs),
                "decode_tok_per_s": statistics.median(r.decode_tok_per_s for r in runs),
                "prompt_tokens": runs[0].prompt_tokens,
                "new_tokens": runs[0].new_tokens,
                "peak_rss_mb": peak_rss_mb(),
                "token_ids": runs[0].token_ids,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
