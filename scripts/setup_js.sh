#!/usr/bin/env bash
# Install what the TypeScript runtime's tests need (idempotent): the npm packages of js/ from its
# lock file, and Debian's chromium for the browser test. The onnxruntime-node package carries its
# CPU binaries (its install script would only fetch CUDA extras) and puppeteer-core drives the
# system chromium, so both skip their downloads.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

if [ ! -f js/node_modules/.package-lock.json ] || [ js/package-lock.json -nt js/node_modules/.package-lock.json ]; then
  (cd js && ONNXRUNTIME_NODE_INSTALL=skip PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
