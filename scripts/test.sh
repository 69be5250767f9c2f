#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: pytest (the SmolLM2-135M end-to-end tests
# included; arguments go to pytest), then the TypeScript runtime's tests in Node and Chromium.
# Both use one SmolLM2 export (SHADOW_EDGE_SMOLLM2_DIR; a fresh folder unless you name one).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_js.sh
export SHADOW_EDGE_RUNTIME_PYTHON="$PWD/.venv-runtime/bin/python"
if [ -z "${SHADOW_EDGE_SMOLLM2_DIR:-}" ]; then
  SHADOW_EDGE_SMOLLM2_DIR=$(mktemp -d)
  trap 'rm -rf "$SHADOW_EDGE_SMOLLM2_DIR"' EXIT
  export SHADOW_EDGE_SMOLLM2_DIR
fi
.venv/bin/python -m pytest -q "$@"
bash scripts/test_js.sh
