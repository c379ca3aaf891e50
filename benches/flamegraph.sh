#!/usr/bin/env bash
# A flame graph (SVG) of a perf recording of xmpp-lb, as in docs/flamegraph-login.svg:
#
#   PROFILE=profiling PERF_OUT=target/perf.data PERF_FREQ=2999 ROUNDS=1 USERS=3000 \
#     bash benches/load.sh load
#   bash benches/flamegraph.sh target/perf.data docs/flamegraph-login.svg "title"
#
# The stacks are folded by inferno (installed with `cargo install inferno` if missing); the
# runtime's frames above the connection's own code are trimmed, generic arguments left out
# and inlined repeats merged, so the graph reads from the connection's phases down.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 PERF_DATA OUT.svg [TITLE]" >&2; exit 2; }
data=$1 out=$2 title=${3:-xmpp-lb CPU}
command -v perf >/dev/null || { echo "perf is missing (Debian: linux-perf)" >&2; exit 1; }
bin=${CARGO_HOME:-$HOME/.cargo}/bin
[ -x "$bin/inferno-flamegraph" ] || cargo install --quiet inferno
perf script -i "$data" 2>/dev/null | "$bin/inferno-collapse-perf" | python3 -c '
import collections, re, sys
def short(f):
    prev = None
    while prev != f:
        prev, f = f, re.sub(r"<[^<>]*>", "", f)
    return re.sub(r"\{[^{}]*\}", "{..}", f)[:90]
out = collections.Counter()
for line in sys.stdin:
    stack, n = line.rsplit(" ", 1)
    frames = []
    for f in map(short, stack.split(";")):
        if not frames or frames[-1] != f:
            frames.append(f)
    own = [i for i, f in enumerate(frames) if "xmpp_lb::" in f or "connection" in f]
    if own:
        frames = ["xmpp-lb task"] + frames[own[0]:]
    else:
        rt = [i for i, f in enumerate(frames) if "Driver::turn" in f or "park" in f]
        frames = ["tokio runtime"] + frames[rt[0]:] if rt else frames
    out[";".join(frames[:40])] += int(n)
for k, v in out.items():
    print(k, v)
' | "$bin/inferno-flamegraph" --minwidth 2 --width 1400 --title "$title" >"$out"
echo "wrote $out"
