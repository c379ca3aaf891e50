#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests that start real Prosody nodes on
# loopback and log real clients in through the proxy. Installs missing dependencies first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
