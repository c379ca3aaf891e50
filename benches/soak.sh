#!/usr/bin/env bash
# Soak run: a steady churn of logins, XEP-0198 resumptions through the proxy, messages and
# abrupt disconnects against the release xmpp-lb binary in front of three Prosody nodes
# (examples/soak.rs over the tests' harness, testkit::soak), sampling the proxy's resident
# memory, open descriptors, threads and open-connection gauges. Prints the table
# docs/benchmarks.md records; tests/soak.rs runs two minutes of the same and asserts the curves
# stay flat.
#
#   bash benches/soak.sh                              # 30 minutes, a sample a minute
#   MINUTES=10 SAMPLE_SECONDS=30 bash benches/soak.sh
#   CLIENTS=24 MESSAGES=5 MESSAGE_MS=40 PAUSE_MS=400  # the defaults of the churn
#
# Everything runs on loopback on free ports; the nodes and the proxy are children of the run,
# stopped by pid at its end (and killed with it if it dies). Needs prosody (Debian package).
# The output goes to target/soak/soak-<date>.md too. Exits non-zero if a message was lost,
# reordered or duplicated, or a login or resumption failed.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-30}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-60}
CLIENTS=${CLIENTS:-24}
MESSAGES=${MESSAGES:-5}
MESSAGE_MS=${MESSAGE_MS:-40}
PAUSE_MS=${PAUSE_MS:-400}
command -v prosody >/dev/null || { echo "soak.sh: prosody is missing (bash scripts/install-deps.sh)" >&2; exit 1; }
cargo build --release --quiet --bin xmpp-lb --example soak
mkdir -p target/soak
out=target/soak/soak-$(date -u +%Y%m%dT%H%M%SZ).md
{
  echo "xmpp-lb $(git describe --always --dirty 2>/dev/null || echo unknown), $(nproc) cores," \
       "load at start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "    MINUTES=$MINUTES SAMPLE_SECONDS=$SAMPLE_SECONDS CLIENTS=$CLIENTS MESSAGES=$MESSAGES" \
       "MESSAGE_MS=$MESSAGE_MS PAUSE_MS=$PAUSE_MS bash benches/soak.sh"
  echo
} > "$out"
target/release/examples/soak --minutes "$MINUTES" --sample-seconds "$SAMPLE_SECONDS" \
  --clients "$CLIENTS" --messages "$MESSAGES" --message-ms "$MESSAGE_MS" --pause-ms "$PAUSE_MS" \
  | tee -a "$out"
echo "written to $out" >&2
