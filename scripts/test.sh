#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, the SmolLM2-135M end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SHADOW_EDGE_RUNTIME_PYTHON="$PWD/.venv-runtime/bin/python"
exec .venv/bin/python -m pytest -q "$@"
