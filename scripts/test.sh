#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: pytest (the SmolLM2-135M end-to-end tests
# included; arguments go to pytest), then the TypeScript runtime's tests in Node and Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_js.sh
export SHADOW_EDGE_RUNTIME_PYTHON="$PWD/.venv-runtime/bin/python"
.venv/bin/python -m pytest -q "$@"
bash scripts/test_js.sh
