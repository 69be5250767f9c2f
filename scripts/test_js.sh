#!/usr/bin/env bash
# The TypeScript runtime's tests (js/): the Python exporter writes tiny bundles and the Python
# runtime's answers (js/test/make_vectors.py), then tsc (strict) and node's test runner compare the
# TypeScript runtime with them in Node and in headless Chromium, the trained robot demo on
# SmolLM2-135M included (exported into SHADOW_EDGE_SMOLLM2_DIR unless pytest did already). Needs
# scripts/setup.sh and scripts/setup_js.sh first (scripts/test.sh runs both).
set -euo pipefail
cd "$(dirname "$0")/.."
VECTORS=$(mktemp -d)
trap 'rm -rf "$VECTORS"' EXIT
SMOLLM2=${SHADOW_EDGE_SMOLLM2_DIR:-$VECTORS/smollm2}
if ! .venv/bin/python js/test/make_vectors.py "$VECTORS" --smollm2 "$SMOLLM2" > "$VECTORS/make_vectors.log" 2>&1; then
  cat "$VECTORS/make_vectors.log"
  exit 1
fi
cd js
rm -rf dist
npx tsc -p .
SHADOW_EDGE_VECTORS="$VECTORS" SHADOW_EDGE_CLI="$PWD/../.venv/bin/shadow-edge" node --test dist/test/
