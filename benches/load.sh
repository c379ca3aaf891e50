#!/usr/bin/env bash
# Load comparison, side by side in one run: the same XMPP workload (examples/loadgen.rs, real
# logins with SASL PLAIN and resource binding) against
#   direct-1    one Prosody node, no TLS (the lower bound),
#   direct-3    the three Prosody nodes, no TLS, user i on node i % 3 (no proxy, ideal spread),
#   haproxy     HAProxy terminating direct TLS (ALPN xmpp-client), mode tcp, balance source,
#   lb-direct   xmpp-lb terminating direct TLS, routing by JID,
#   lb-starttls xmpp-lb terminating STARTTLS, routing by JID,
# then the memory each proxy spends per idle logged-in connection (VmRSS before/after holding
# IDLE connections through it).
#
#   bash benches/load.sh [all|load|idle|scale|latency]   # all (default): load and idle
#   USERS=500 ROUNDS=1 IDLE=1000 bash benches/load.sh   # a quick run
#
# `scale` holds idle connections through each proxy in steps of STEP up to SCALE (default
# 1,000 to 9,000: two descriptors each, near the open-file limit), reading the proxy's VmRSS
# and the kernel's TCP socket memory (/proc/net/sockstat) at every step, then after closing.
# `latency` sends RATE messages/s (open loop, RATE_PAIRS pairs, RATE_SECONDS) through each
# setup and compares the one-way latency of every message with the direct connection's.
#
# Everything runs on loopback on fixed high ports (BASE_PORT..BASE_PORT+500). Installs HAProxy
# (Debian package) if missing; needs prosody, openssl and python3. Work files go to
# target/load-bench-BASE_PORT/ (replaced on every run, so runs on other ports can go on side by
# side). Every process it starts is stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
part=${1:-all}
case $part in all|load|idle|scale|latency) ;; *) echo "usage: $0 [all|load|idle|scale|latency]" >&2; exit 2 ;; esac

USERS=${USERS:-2000}          # logins per login run
CONC=${CONC:-50}              # logins (or echo pairs) in flight
PAIRS=${PAIRS:-50}            # echo: session pairs
MESSAGES=${MESSAGES:-100}     # echo: messages per pair, one at a time
IDLE=${IDLE:-5000}            # idle connections held through each proxy
SCALE=${SCALE:-9000}          # scale: connections held at the last step
STEP=${STEP:-1000}            # scale: connections added per step
RATE=${RATE:-5000}            # latency: messages per second over all pairs
RATE_PAIRS=${RATE_PAIRS:-50}  # latency: sender/receiver pairs
RATE_SECONDS=${RATE_SECONDS:-20}  # latency: seconds of sending per run
SLIX_RATE=${SLIX_RATE:-500}   # latency: messages per second sent by slixmpp (0: no slixmpp runs)
SLIX_PAIRS=${SLIX_PAIRS:-20}  # latency: slixmpp sender/receiver pairs
SERIAL=${SERIAL:-300}          # logins one at a time (latency without queueing)
ROUNDS=${ROUNDS:-5}           # rounds of login + echo runs; the order rotates each round
SOURCES=${SOURCES:-200}       # client source addresses 127.0.0.1..SOURCES (HAProxy hashes them)
BASE_PORT=${BASE_PORT:-27000}
domain=example.test
password=password

work=$root/target/load-bench-$BASE_PORT
bench=load.sh
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- prerequisites ------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)"
[ "$part" = scale ] && IDLE=$SCALE
[ "$(ulimit -n)" -ge $((2 * IDLE + 200)) ] || die "open-file limit $(ulimit -n) too low for IDLE=$IDLE"
need_packages haproxy
for tool in prosody openssl python3 haproxy; do
  command -v $tool >/dev/null || die "$tool is missing (bash scripts/install-deps.sh installs prosody and openssl)"
done

PROFILE=${PROFILE:-release}     # cargo profile; "profiling" keeps line tables for profilers
say "building xmpp-lb and the load generator ($PROFILE)"
cargo build --profile "$PROFILE" --quiet --bin xmpp-lb --example loadgen
lb_bin=$root/target/$PROFILE/xmpp-lb
loadgen=$root/target/$PROFILE/examples/loadgen

p_node=$((BASE_PORT + 301))      # node ports p_node, +1, +2
p_lb_starttls=$((BASE_PORT + 222))
p_lb_direct=$((BASE_PORT + 223))
p_lb_metrics=$((BASE_PORT + 464))
p_haproxy=$((BASE_PORT + 224))
for p in $p_node $((p_node + 1)) $((p_node + 2)) $p_lb_starttls $p_lb_direct $p_lb_metrics $p_haproxy; do
  port_open $p && die "port $p is already in use (set BASE_PORT)"
done
rm -rf "$work"
mkdir -p "$work/certs" "$work/results"

say "test CA and certificate for $domain"
make_certs "$work/certs" "$domain"
ca=$work/certs/ca.pem

# ---- three Prosody nodes ------------------------------------------------------------------
max_users=$(( USERS > IDLE ? USERS : IDLE ))
max_users=$(( max_users > PAIRS ? max_users : PAIRS ))
say "three Prosody nodes on 127.0.0.1:$p_node-$((p_node + 2)), $max_users accounts each"
for n in 1 2 3; do
  start_prosody "$work/node$n" $((p_node + n - 1)) "$domain" "$max_users" "$password"
done
for n in 1 2 3; do wait_port $((p_node + n - 1)); done

# ---- the two proxies ----------------------------------------------------------------------
say "xmpp-lb: STARTTLS :$p_lb_starttls, direct TLS :$p_lb_direct"
write_lb_config "$work/xmpp-lb.toml" "$domain" certs "$p_lb_starttls" "$p_lb_direct" "$p_lb_metrics" \
  $((IDLE + 2000)) "$p_node" $((p_node + 1)) $((p_node + 2))
# The descriptor budget up to the limit (90% by default): the scale part holds 2 x SCALE.
printf '\n[overload]\nmax_descriptors = %d\n' $(( $(ulimit -n) - 100 )) >>"$work/xmpp-lb.toml"
"$lb_bin" check --config "$work/xmpp-lb.toml" >/dev/null
# LB_PRELOAD: a shared library preloaded into xmpp-lb only (e.g. another allocator, to compare).
LD_PRELOAD=${LB_PRELOAD:-} "$lb_bin" --config "$work/xmpp-lb.toml" --log "${LB_LOG:-warn}" >"$work/xmpp-lb.log" 2>&1 </dev/null &
lb_pid=$!
pids+=($lb_pid)

say "HAProxy $(haproxy -v | head -1 | awk '{print $3}'): direct TLS :$p_haproxy, balance source over the nodes"
# Two file descriptors per connection; the hard limit of the machine bounds maxconn.
ha_maxconn=$(( IDLE + 2000 ))
(( ha_maxconn <= ($(ulimit -n) - 100) / 2 )) || ha_maxconn=$(( ($(ulimit -n) - 100) / 2 ))
start_haproxy "$work" "$p_haproxy" "$work/certs/haproxy.pem" "$ha_maxconn" \
  "$p_node" $((p_node + 1)) $((p_node + 2))
for p in $p_lb_starttls $p_lb_direct $p_haproxy; do wait_port $p; done

# ---- measuring ----------------------------------------------------------------------------
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
nodes_cpu_ticks() { local t=0 n; for n in "${node_pids[@]}"; do t=$(( t + $(cpu_ticks "$n") )); done; echo $t; }

# setup name -> loadgen target arguments, and the process whose CPU it costs (proxy or node 1)
setup_args() {
  case $1 in
    direct-1) echo "--target 127.0.0.1:$p_node --tls plain" ;;
    direct-3) echo "--target 127.0.0.1:$p_node --target 127.0.0.1:$((p_node + 1)) --target 127.0.0.1:$((p_node + 2)) --tls plain" ;;
    haproxy) echo "--target 127.0.0.1:$p_haproxy --tls direct --ca $ca" ;;
    lb-direct) echo "--target 127.0.0.1:$p_lb_direct --tls direct --ca $ca" ;;
    lb-starttls) echo "--target 127.0.0.1:$p_lb_starttls --tls starttls --ca $ca" ;;
  esac
}
setup_pid() {
  case $1 in haproxy) echo $ha_pid ;; lb-*) echo $lb_pid ;; *) echo "" ;; esac
}

# run SETUP KIND ROUND LOADGEN-ARGS...: one loadgen run, its JSON (plus the proxy's CPU) saved
run() {
  local setup=$1 kind=$2 round=$3; shift 3
  local pid cpu0=0 cpu1=0 out
  local ncpu0 ncpu1
  pid=$(setup_pid "$setup")
  [ -n "$pid" ] && cpu0=$(cpu_ticks "$pid")
  ncpu0=$(nodes_cpu_ticks)
  # PERF_OUT=FILE: record xmpp-lb's stacks (perf, PERF_FREQ=499 Hz, DWARF unwinding; best with
  # PROFILE=profiling) during the first lb-direct login run.
  local perf=""
  if [ -n "${PERF_OUT:-}" ] && [ "$setup" = lb-direct ] && [ "$kind" = login ] && [ ! -e "$PERF_OUT" ]; then
    perf record -F "${PERF_FREQ:-499}" --call-graph dwarf,16384 -p "$pid" -o "$PERF_OUT" >/dev/null 2>&1 &
    perf=$!
    sleep 0.5
  fi
  # shellcheck disable=SC2046
  out=$(timeout 330 "$loadgen" $(setup_args "$setup") --domain $domain --password $password \
        --source-ips "$SOURCES" --timeout 300 --label "$setup" "$@" </dev/null)
  [ -n "$pid" ] && cpu1=$(cpu_ticks "$pid")
  ncpu1=$(nodes_cpu_ticks)
  if [ -n "$perf" ]; then kill -INT "$perf"; wait "$perf" || true; fi
  python3 - "$out" "$(( cpu1 - cpu0 ))" "$(( ncpu1 - ncpu0 ))" "$hz" > "$work/results/$kind.$setup.$round.json" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
r["proxy_cpu_s"] = int(sys.argv[2]) / int(sys.argv[4])
r["nodes_cpu_s"] = int(sys.argv[3]) / int(sys.argv[4])
print(json.dumps(r))
PY
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); e=r.get("echo") or {}; print("   %-11s %-5s ok %5d failed %3d  %7.1f logins/s  login p50 %6.1f ms  p99 %6.1f ms%s" % (r["label"], sys.argv[2], r["ok"], r["failed"], r["logins_per_s"], (r["login_ms"] or {}).get("p50", 0), (r["login_ms"] or {}).get("p99", 0), ("  rtt p50 %.2f ms p99 %.2f ms" % (e["rtt_ms"]["p50"], e["rtt_ms"]["p99"])) if e.get("rtt_ms") else "")); [print("     error:", x) for x in r["errors"][:3]]' \
    "$work/results/$kind.$setup.$round.json" "$kind" >&2
}

setups=(direct-1 direct-3 haproxy lb-direct lb-starttls)

# warm_up SETUP...: 200 logins through each, not recorded (the first logins of a Prosody node
# are slower: module and account loads).
warm_up() {
  local s
  say "warm-up"
  for s in "$@"; do
    # shellcheck disable=SC2046
    "$loadgen" $(setup_args "$s") --domain $domain --password $password --source-ips "$SOURCES" \
      --users 200 --concurrency "$CONC" --mode login --timeout 60 </dev/null >/dev/null
  done
}
# rotate ROUND SETUP...: sets `order` to the setups rotated by ROUND - 1, so that no setup
# always runs first (or right after the same neighbour).
rotate() {
  local k=$(( ($1 - 1) % ($# - 1) ))
  shift
  order=("${@:k+1}" "${@:1:k}")
}

# The same open-loop latency measured by an independent client: slixmpp (PyPI), in
# tests/clients/xmpp_client.py's `rate` command, from the project venv if it has it.
slix_python() {
  if [ -x "$root/.venv/bin/python" ] && "$root/.venv/bin/python" -c 'import slixmpp' 2>/dev/null; then
    echo "$root/.venv/bin/python"
  else
    echo python3
  fi
}
slix_args() {
  case $1 in
    direct-3) echo "--tls none --port $p_node --ports $p_node,$((p_node + 1)),$((p_node + 2))" ;;
    haproxy) echo "--tls direct --port $p_haproxy --ca $ca" ;;
    lb-direct) echo "--tls direct --port $p_lb_direct --ca $ca" ;;
    lb-starttls) echo "--tls starttls --port $p_lb_starttls --ca $ca" ;;
  esac
}
# run_slix SETUP ROUND: one slixmpp rate run, its JSON (plus the proxy's CPU) saved.
run_slix() {
  local setup=$1 round=$2 pid cpu0=0 cpu1=0 out
  pid=$(setup_pid "$setup")
  [ -n "$pid" ] && cpu0=$(cpu_ticks "$pid")
  # shellcheck disable=SC2046
  out=$(timeout 300 "$(slix_python)" "$root/tests/clients/xmpp_client.py" rate $(slix_args "$setup") \
        --domain $domain --password $password --pairs "$SLIX_PAIRS" --rate "$SLIX_RATE" \
        --seconds "$RATE_SECONDS" --timeout 60 </dev/null || true)
  [ -n "$pid" ] && cpu1=$(cpu_ticks "$pid")
  python3 - "$out" "$(( cpu1 - cpu0 ))" "$hz" > "$work/results/slix.$setup.$round.json" <<'PY'
import json, sys
r = json.loads(sys.argv[1] or '{"ok": false}')
r["proxy_cpu_s"] = int(sys.argv[2]) / int(sys.argv[3])
print(json.dumps(r))
PY
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); l=r.get("one_way_ms") or {}; print("   %-11s slixmpp sent %s received %s  one-way p50 %.3f p90 %.3f p99 %.3f ms%s" % (sys.argv[2], r.get("sent"), r.get("received"), l.get("p50",0), l.get("p90",0), l.get("p99",0), "" if r.get("ok") else "  FAILED: %s" % r.get("error")))' \
    "$work/results/slix.$setup.$round.json" "$setup" >&2
}
# Idle memory: hold IDLE logged-in connections through one proxy, read its VmRSS.
hold_idle() {
  local setup=$1 pid before after closed lg ready=$work/results/idle.$1.ready
  pid=$(setup_pid "$setup")
  sleep 1
  before=$(rss_kib "$pid")
  # shellcheck disable=SC2046
  "$loadgen" $(setup_args "$setup") --domain $domain --password $password --source-ips "$SOURCES" \
    --users "$IDLE" --concurrency "$CONC" --mode hold --presence --ready-file "$ready" \
    --timeout 400 --label "$setup" </dev/null >"$work/results/idle.$setup.json" &
  lg=$!
  pids+=($lg)
  for _ in $(seq 3000); do [ -e "$ready" ] && break; kill -0 $lg 2>/dev/null || break; sleep 0.1; done
  [ -e "$ready" ] || die "hold through $setup never got ready"
  sleep 3
  after=$(rss_kib "$pid")
  kill -TERM $lg
  wait $lg || true
  sleep 3
  closed=$(rss_kib "$pid")
  python3 - "$work/results/idle.$setup.json" "$before" "$after" "$closed" <<'PY'
import json, sys
path = sys.argv[1]
r = json.load(open(path))
r["rss_before_kib"], r["rss_after_kib"], r["rss_closed_kib"] = map(int, sys.argv[2:5])
open(path, "w").write(json.dumps(r))
PY
  printf '   %-11s held %5s  VmRSS %7d KiB -> %7d KiB (%+.1f KiB/conn), %7d KiB after closing\n' \
    "$setup" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["held"])' "$work/results/idle.$setup.json")" \
    "$before" "$after" "$(python3 -c "print(($after - $before) / max(1, $IDLE))")" "$closed" >&2
}

if [ "$part" = all ] || [ "$part" = load ]; then
  warm_up "${setups[@]}"

  for ((round = 1; round <= ROUNDS; round++)); do
    say "round $round/$ROUNDS: $USERS logins at concurrency $CONC, $SERIAL one at a time, echo $PAIRS pairs at once and 5 one at a time, $MESSAGES messages each"
    rotate "$round" "${setups[@]}"
    for s in "${order[@]}"; do
      run "$s" login "$round" --mode login --users "$USERS" --concurrency "$CONC"
    done
    # The same logins resuming TLS sessions (the client keeps its session tickets): a
    # reconnecting client's cost, reported apart from full handshakes.
    for s in "${order[@]}"; do
      case $s in direct-*) continue ;; esac
      run "$s" loginr "$round" --mode login --users "$USERS" --concurrency "$CONC" --tls-resume
    done
    for s in "${order[@]}"; do
      run "$s" login1 "$round" --mode login --users "$SERIAL" --concurrency 1
    done
    for s in "${order[@]}"; do
      run "$s" echo "$round" --mode echo --pairs "$PAIRS" --messages "$MESSAGES" --concurrency "$PAIRS"
    done
    for s in "${order[@]}"; do
      run "$s" echo1 "$round" --mode echo --pairs 5 --messages "$MESSAGES" --concurrency 1
    done
  done
fi

# Kernel memory of all TCP sockets (pages, /proc/net/sockstat "TCP: ... mem N").
tcp_mem_pages() { awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat; }
# Kernel slab memory of the machine (KiB): socket structures, files, epoll items live there.
slab_kib() { awk '$1 == "Slab:" {print $2}' /proc/meminfo; }
# scale_idle SETUP: hold STEP more connections at a time up to SCALE; one line per step.
scale_idle() {
  local setup=$1 pid n=0 lg ready holders=() base_rss base_mem
  pid=$(setup_pid "$setup")
  sleep 1
  base_rss=$(rss_kib "$pid"); base_mem=$(tcp_mem_pages)
  echo "$setup 0 $base_rss $base_mem $(slab_kib)" >>"$work/results/scale.txt"
  while (( n < SCALE )); do
    ready=$work/results/scale.$setup.$n.ready
    # shellcheck disable=SC2046
    "$loadgen" $(setup_args "$setup") --domain $domain --password $password --source-ips "$SOURCES" \
      --users "$STEP" --first-user $((n + 1)) --concurrency "$CONC" --mode hold --presence \
      --ready-file "$ready" --timeout 900 --label "$setup" </dev/null >"$work/results/scale.$setup.$n.json" &
    lg=$!
    pids+=($lg); holders+=($lg)
    for _ in $(seq 3000); do [ -e "$ready" ] && break; kill -0 $lg 2>/dev/null || break; sleep 0.1; done
    [ -e "$ready" ] || die "hold through $setup never got ready at $n"
    n=$((n + STEP))
    sleep 2
    echo "$setup $n $(rss_kib "$pid") $(tcp_mem_pages) $(slab_kib) $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["held"])' "$ready")" >>"$work/results/scale.txt"
    tail -1 "$work/results/scale.txt" >&2
  done
  kill -TERM "${holders[@]}"
  for lg in "${holders[@]}"; do wait "$lg" || true; done
  sleep 3
  echo "$setup closed $(rss_kib "$pid") $(tcp_mem_pages) $(slab_kib)" >>"$work/results/scale.txt"
  tail -1 "$work/results/scale.txt" >&2
}

if [ "$part" = latency ]; then
  lat_setups=(direct-3 haproxy lb-direct lb-starttls)
  warm_up "${lat_setups[@]}"
  for ((round = 1; round <= ROUNDS; round++)); do
    say "round $round/$ROUNDS: $RATE messages/s for $RATE_SECONDS s over $RATE_PAIRS pairs, through each setup"
    rotate "$round" "${lat_setups[@]}"
    for s in "${order[@]}"; do
      run "$s" rate "$round" --mode rate --pairs "$RATE_PAIRS" --rate "$RATE" --seconds "$RATE_SECONDS" --concurrency "$CONC"
      python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["rate"]; l=r["one_way_ms"] or {}; print("     sent %d received %d  one-way p50 %.3f p90 %.3f p99 %.3f max %.3f ms" % (r["sent"], r["received"], l.get("p50",0), l.get("p90",0), l.get("p99",0), l.get("max",0)))' "$work/results/rate.$s.$round.json" >&2
    done
  done
  if [ "$SLIX_RATE" != 0 ]; then
    for ((round = 1; round <= ROUNDS; round++)); do
      say "slixmpp round $round/$ROUNDS: $SLIX_RATE messages/s for $RATE_SECONDS s over $SLIX_PAIRS pairs, through each setup"
      rotate "$round" "${lat_setups[@]}"
      for s in "${order[@]}"; do run_slix "$s" "$round"; done
    done
  fi
elif [ "$part" = scale ]; then
  say "scale: idle logged-in connections (with presence) held through each proxy, $STEP more at a time up to $SCALE"
  : >"$work/results/scale.txt"
  scale_idle lb-direct
  scale_idle haproxy
elif [ "$part" = all ] || [ "$part" = idle ]; then
  say "idle memory: $IDLE logged-in connections (with presence) held through each proxy"
  hold_idle lb-direct
  hold_idle haproxy
fi

# ---- report -------------------------------------------------------------------------------
say "results (median of $ROUNDS rounds; ratios of medians)"
{
  echo "Machine: $(nproc) CPUs; load average at start $load_start, at end $(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'xmpp-lb %s%s; HAProxy %s; Prosody %s\n' "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(git diff --quiet HEAD -- src 2>/dev/null || echo ' with uncommitted changes in src/')" \
    "$(haproxy -v | awk 'NR == 1 {print $3}')" "$(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo '?')"
} | tee "$work/report.md"
if [ "$part" = latency ]; then
  SLIX_RATE=$SLIX_RATE SLIX_PAIRS=$SLIX_PAIRS python3 - "$work/results" "$ROUNDS" "$RATE" "$RATE_PAIRS" "$RATE_SECONDS" <<'PY' | tee -a "$work/report.md"
import json, os, statistics, sys
d, rounds, rate, pairs, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
setups = ["direct-3", "haproxy", "lb-direct", "lb-starttls"]
rows = {}
for s in setups:
    runs = [json.load(open(os.path.join(d, f"rate.{s}.{r}.json"))) for r in range(1, rounds + 1)]
    lat = [r["rate"]["one_way_ms"] or {} for r in runs]
    rows[s] = {
        "sent": sum(r["rate"]["sent"] for r in runs),
        "received": sum(r["rate"]["received"] for r in runs),
        "cpu": statistics.median([r["proxy_cpu_s"] * 1e6 / max(1, r["rate"]["received"]) for r in runs]),
        **{q: statistics.median([l.get(q, float("nan")) for l in lat]) for q in ("p50", "p90", "p99", "max")},
    }
print(f"\nF. Message latency under load: {rate} messages/s for {secs} s over {pairs} pairs, open loop; one-way latency of every message, sender to receiver (medians of {rounds} runs)\n")
print("| setup | sent | received | p50 ms | p90 ms | p99 ms | max ms | added p50 ms | added p99 ms | proxy CPU µs/message |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
base = rows["direct-3"]
for s in setups:
    r = rows[s]
    added = "-" if s == "direct-3" else f"{r['p50'] - base['p50']:+.3f}"
    added99 = "-" if s == "direct-3" else f"{r['p99'] - base['p99']:+.3f}"
    cpu = "-" if s == "direct-3" else f"{r['cpu']:.1f}"
    print(f"| {s} | {r['sent']} | {r['received']} | {r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} | {r['max']:.3f} | {added} | {added99} | {cpu} |")
if not os.path.exists(os.path.join(d, "slix.direct-3.1.json")):
    sys.exit(0)
slix = {}
for s in setups:
    runs = [json.load(open(os.path.join(d, f"slix.{s}.{r}.json"))) for r in range(1, rounds + 1)]
    lat = [r.get("one_way_ms") or {} for r in runs]
    slix[s] = {
        "sent": sum(r.get("sent") or 0 for r in runs),
        "received": sum(r.get("received") or 0 for r in runs),
        **{q: statistics.median([l.get(q, float("nan")) for l in lat]) for q in ("p50", "p90", "p99", "max")},
    }
print(f"\nF2. The same measured by slixmpp (an independent client, Python): {os.environ.get('SLIX_RATE', '500')} messages/s over {os.environ.get('SLIX_PAIRS', '20')} pairs (medians of {rounds} runs)\n")
print("| setup | sent | received | p50 ms | p90 ms | p99 ms | max ms | added p50 ms | added p99 ms |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
base = slix["direct-3"]
for s in setups:
    r = slix[s]
    added = "-" if s == "direct-3" else f"{r['p50'] - base['p50']:+.3f}"
    added99 = "-" if s == "direct-3" else f"{r['p99'] - base['p99']:+.3f}"
    print(f"| {s} | {r['sent']} | {r['received']} | {r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} | {r['max']:.3f} | {added} | {added99} |")
PY
  exit 0
fi
if [ "$part" = scale ]; then
  python3 - "$work/results/scale.txt" "$(getconf PAGESIZE)" <<'PY' | tee -a "$work/report.md"
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
page = int(sys.argv[2]) / 1024
print("\nE. Idle connections held through each proxy, step by step: VmRSS of the proxy; the")
print("machine's TCP socket buffer memory (/proc/net/sockstat) and kernel slab memory (/proc/meminfo),")
print("which hold the proxy's two sockets and also the client's and the node's for every connection\n")
print("| proxy | connections held | VmRSS KiB | KiB per connection (from 0) | KiB per connection (this step) | TCP buffers KiB (machine) | kernel slab KiB (machine) | slab KiB per connection (from 0) |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
base = {}
prev = {}
for r in rows:
    setup, n, rss, mem, slab = r[0], r[1], int(r[2]), int(r[3]) * page, int(r[4])
    if n == "0":
        base[setup] = (rss, slab)
        prev[setup] = (0, rss)
        print(f"| {setup} | 0 | {rss} | - | - | {mem:.0f} | {slab} | - |")
        continue
    if n == "closed":
        print(f"| {setup} | after closing | {rss} | - | - | {mem:.0f} | {slab} | - |")
        continue
    held = int(r[5])
    n = int(n)
    pn, prss = prev[setup]
    step = (rss - prss) / max(1, n - pn)
    prev[setup] = (n, rss)
    print(f"| {setup} | {n} ({held} in this step) | {rss} | {(rss - base[setup][0]) / n:.1f} | {step:.1f} | {mem:.0f} | {slab} | {(slab - base[setup][1]) / n:.1f} |")
PY
  exit 0
fi
python3 - "$work/results" "$ROUNDS" "$USERS" "$CONC" "$PAIRS" "$MESSAGES" "$IDLE" "$SERIAL" <<'PY' | tee -a "$work/report.md"
import json, os, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
users, conc, pairs, messages, idle, serial = sys.argv[3:9]
setups = ["direct-1", "direct-3", "haproxy", "lb-direct", "lb-starttls"]
def load(kind, s):
    return [json.load(open(os.path.join(d, f"{kind}.{s}.{r}.json"))) for r in range(1, rounds + 1)]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")
def pct(r, key, q):
    return (r.get(key) or {}).get(q) if key == "login_ms" else ((r.get("echo") or {}).get("rtt_ms") or {}).get(q)
rows = {}
for s in setups if os.path.exists(os.path.join(d, "login.direct-1.1.json")) else []:
    L, L1, E, E1 = load("login", s), load("login1", s), load("echo", s), load("echo1", s)
    allruns = L + L1 + E + E1
    rows[s] = {
        "ok": sum(r["ok"] for r in L),
        "failed": sum(r["failed"] + (r.get("echo") or {}).get("pairs_failed", 0) for r in allruns),
        "rate": med([r["logins_per_s"] for r in L]),
        **{q: med([pct(r, "login_ms", q) for r in L]) for q in ("p50", "p90", "p99", "max")},
        "cpu": med([r["proxy_cpu_s"] * 1000 / max(1, r["ok"]) for r in L]),
        "rcpu": float("nan") if s.startswith("direct") else med([r["proxy_cpu_s"] * 1000 / max(1, r["ok"]) for r in load("loginr", s)]),
        "rp50": float("nan") if s.startswith("direct") else med([pct(r, "login_ms", "p50") for r in load("loginr", s)]),
        "ncpu": med([r["nodes_cpu_s"] * 1000 / max(1, r["ok"]) for r in L]),
        "ccpu": med([r["client_cpu_s"] * 1000 / max(1, r["ok"]) for r in L]),
        "s50": med([pct(r, "login_ms", "p50") for r in L1]),
        "s99": med([pct(r, "login_ms", "p99") for r in L1]),
        "e50": med([pct(r, "rtt", "p50") for r in E]),
        "e99": med([pct(r, "rtt", "p99") for r in E]),
        "e150": med([pct(r, "rtt", "p50") for r in E1]),
        "e199": med([pct(r, "rtt", "p99") for r in E1]),
    }
def f(x, n=1):
    return "-" if x != x else f"{x:.{n}f}"
def load_tables():
    print(f"\nA. Login throughput: {users} logins per run, {conc} in flight (medians of {rounds} runs)\n")
    print("| setup | logins ok | failures (all runs) | logins/s | login p50 ms | p90 ms | p99 ms | max ms | proxy CPU ms/login | Prosody CPU ms/login | loadgen CPU ms/login | proxy CPU ms/login, TLS resumed | login p50 ms, TLS resumed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in setups:
        r = rows[s]
        cpu = "-" if s.startswith("direct") else f(r["cpu"], 2)
        print(f"| {s} | {r['ok']} | {r['failed']} | {f(r['rate'], 0)} | {f(r['p50'])} | {f(r['p90'])} | {f(r['p99'])} | {f(r['max'])} | {cpu} | {f(r['ncpu'], 2)} | {f(r['ccpu'], 2)} | {f(r['rcpu'], 2)} | {f(r['rp50'])} |")
    print(f"\nB. Latency without queueing: {serial} logins one at a time; echo round trips, {messages} messages per pair, 5 pairs one at a time and {pairs} pairs at once (medians of {rounds} runs)\n")
    print("| setup | login p50 ms | login p99 ms | echo RTT p50 ms (1 pair) | RTT p99 ms (1 pair) | echo RTT p50 ms (" + pairs + " pairs) | RTT p99 ms (" + pairs + " pairs) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in setups:
        r = rows[s]
        print(f"| {s} | {f(r['s50'], 2)} | {f(r['s99'], 2)} | {f(r['e150'], 3)} | {f(r['e199'], 3)} | {f(r['e50'], 2)} | {f(r['e99'], 2)} |")
    print("\nC. Ratios (of the medians above)\n")
    print("| ratio | logins/s | login p50 | p90 | p99 | proxy CPU/login | proxy CPU/login, TLS resumed | serial login p50 | p99 | echo RTT p50 (1 pair) | p99 (1 pair) | echo RTT p50 (" + pairs + " pairs) | p99 (" + pairs + " pairs) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    def q(a, b):
        return "-" if not (a == a and b == b) or b == 0 else f"{a / b:.2f}"
    for a, b in [("lb-direct", "direct-1"), ("lb-direct", "direct-3"), ("lb-direct", "haproxy"), ("lb-starttls", "haproxy")]:
        A, B = rows[a], rows[b]
        cpu = "-" if b.startswith("direct") else q(A["cpu"], B["cpu"])
        rcpu = "-" if b.startswith("direct") else q(A["rcpu"], B["rcpu"])
        cells = [q(A[k], B[k]) for k in ("rate", "p50", "p90", "p99")] + [cpu, rcpu] + [q(A[k], B[k]) for k in ("s50", "s99", "e150", "e199", "e50", "e99")]
        print(f"| {a} / {b} | " + " | ".join(cells) + " |")
if rows:
    load_tables()
if not os.path.exists(os.path.join(d, "idle.haproxy.json")):
    sys.exit(0)
print(f"\nD. Idle connections: {idle} logged in (with presence) and held through each proxy\n")
print("| proxy | held | VmRSS before KiB | VmRSS holding KiB | KiB per connection | VmRSS after close KiB |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for s, name in [("lb-direct", "xmpp-lb (direct TLS)"), ("haproxy", "HAProxy (direct TLS)")]:
    r = json.load(open(os.path.join(d, f"idle.{s}.json")))
    per = (r["rss_after_kib"] - r["rss_before_kib"]) / max(1, r["held"])
    print(f"| {name} | {r['held']} | {r['rss_before_kib']} | {r['rss_after_kib']} | {per:.1f} | {r['rss_closed_kib']} |")
PY
