"""The CLI through a real pipe, as `shadow-edge inspect OUT | less` runs it: tables keep whole cells."""

from __future__ import annotations

import os
import subprocess
import sys


def test_inspect_through_a_pipe_cuts_no_table_cell(tiny_exports):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    command = [
        sys.executable,
        "-c",
        "from shadow_edge.cli import app; app()",
        "inspect",
        str(tiny_exports["llama"].bundle),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    # the widest row: at 80 columns its inputs cell was cut
    row = next(line for line in done.stdout.splitlines() if "backbone.onnx" in line and "│" in line)
    assert "input_ids, attention_mask, position_ids, shadow_states, num_logits_to_keep, past_key_values.*" in row
