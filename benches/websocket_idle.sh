#!/usr/bin/env bash
# Idle memory per logged-in connection: WebSocket over TLS side by side with direct TLS, each
# through its own proxy process in front of one Prosody node (tests/websocket_memory.rs).
# Prints the table docs/benchmarks.md records.
#   bash benches/websocket_idle.sh            # 2000 connections each (WS_IDLE_N to change)
set -euo pipefail
cd "$(dirname "$0")/.."
export WS_IDLE_N=${WS_IDLE_N:-2000}
cargo build --release --bins
cargo test --release --test websocket_memory -- --nocapture 2>&1 | grep -E '^\||^ratio|test result'
