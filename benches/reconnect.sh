#!/usr/bin/env bash
# Reconnect benchmark: full login vs XEP-0198 resume vs SASL2 FAST with inline resume, through
# xmpp-lb (direct TLS, routing by JID, [resumption] keys) in front of three Prosody nodes.
# examples/reconnect.rs logs each user in once per mode, then ROUNDS times drops its connection
# without a stream close and reconnects, timing each reconnect and counting its round trips.
# Each mode runs with a full TLS handshake on every connection, and with TLS session tickets
# kept between connections (resumed handshakes), REPEAT times in a rotating order. The nodes
# restart before each repeat: Prosody 0.12 keeps some memory for every XEP-0198 resume (with or
# without the proxy), and its collector pauses, hence the p99, grow with it.
#
#   bash benches/reconnect.sh
#   USERS=50 ROUNDS=5 CONC=10 REPEAT=5 bash benches/reconnect.sh   # the defaults
#
# Everything runs on loopback on fixed ports BASE_PORT..BASE_PORT+20. Needs prosody with the
# community modules sasl2, sasl2_bind2, sasl2_sm and sasl2_fast (Debian: prosody-modules),
# openssl, curl and python3. Work files (configs, logs, results) go to target/reconnect-bench/,
# replaced on every run. Every process it starts is stopped by pid on exit. Exits non-zero if
# any reconnect failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

USERS=${USERS:-50}        # users; each reconnects ROUNDS times per mode
ROUNDS=${ROUNDS:-5}
CONC=${CONC:-10}          # users reconnecting at once
REPEAT=${REPEAT:-5}       # runs of each mode x TLS kind (the table gives medians)
BASE_PORT=${BASE_PORT:-27600}
domain=example.test
work=$root/target/reconnect-bench
p_node=$((BASE_PORT + 1))       # node ports p_node, +1, +2
p_lb=$((BASE_PORT + 10))
p_metrics=$((BASE_PORT + 20))

pids=()          # the proxy
node_pids=()     # the running Prosody nodes
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { echo "reconnect.sh: $*" >&2; exit 1; }
stop() {   # stop PID...: TERM, up to 5 s, then KILL
  local pid alive
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
cleanup() { stop "${node_pids[@]}" "${pids[@]}"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in prosody openssl curl python3; do command -v $tool >/dev/null || die "$tool is missing"; done
modules=/usr/lib/prosody/modules
for m in sasl2 sasl2_bind2 sasl2_sm sasl2_fast; do
  [ -e "$modules/mod_$m.lua" ] || [ -e "$modules/mod_$m/mod_$m.lua" ] ||
    die "Prosody module $m is missing (Debian package prosody-modules)"
done
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 200); do port_open "$1" && return 0; sleep 0.1; done; die "port $1 never opened"; }
for p in $p_node $((p_node + 1)) $((p_node + 2)) $p_lb $p_metrics; do
  port_open $p && die "port $p is already in use (set BASE_PORT)"
done

say "building xmpp-lb and the reconnect client (release)"
cargo build --release --quiet --bin xmpp-lb --example reconnect

rm -rf "$work"
mkdir -p "$work/certs" "$work/keys" "$work/plugins"
(cd "$work/certs"
 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
   -subj "/CN=xmpp-lb reconnect CA" -keyout ca.key -out ca.pem 2>/dev/null
 openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$domain" \
   -keyout leaf.key -out leaf.csr 2>/dev/null
 printf 'subjectAltName=DNS:%s\n' "$domain" > san.ext
 openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
   -extfile san.ext -out leaf.pem 2>/dev/null
 cat leaf.pem ca.pem > chain.pem)
openssl rand -base64 48 > "$work/keys/sm.key"
openssl rand -base64 48 > "$work/keys/tickets.key"
cp contrib/prosody/mod_sasl2_compat.lua "$work/plugins/"

say "three Prosody nodes on 127.0.0.1:$p_node-$((p_node + 2)) with SASL2, Bind 2, SM and FAST; $USERS accounts"
for n in 1 2 3; do
  dir=$work/node$n
  mkdir -p "$dir/data/example%2etest/accounts" "$dir/certs"
  for ((i = 1; i <= USERS; i++)); do   # internal_plain storage, written before start
    printf 'return {\n\t["password"] = "password";\n};\n' > "$dir/data/example%2etest/accounts/user$i.dat"
  done
  cat > "$dir/prosody.cfg.lua" <<LUA
run_as_root = true
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
certificates = "$dir/certs"
plugin_paths = { "$work/plugins" }
log = { { levels = { min = "${PROSODY_LOG:-warn}" }, to = "file", filename = "$dir/prosody.log" } }
c2s_interfaces = { "127.0.0.1" }
c2s_ports = { $((p_node + n - 1)) }
c2s_direct_tls_ports = { }
legacy_ssl_ports = { }
s2s_ports = { }
s2s_direct_tls_ports = { }
component_ports = { }
http_ports = { }
https_ports = { }
modules_disabled = { "s2s" }
modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "smacks";
                    "sasl2"; "sasl2_bind2"; "sasl2_sm"; "sasl2_fast"; "sasl2_compat" }
smacks_hibernation_time = 60
authentication = "internal_plain"
storage = "internal"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
network_settings = { nagle = false; tcp_backlog = 1024 }
VirtualHost "$domain"
LUA
done
start_nodes() {
  local n
  for n in 1 2 3; do
    prosody --config "$work/node$n/prosody.cfg.lua" -F >>"$work/node$n/stdout.log" 2>&1 </dev/null &
    node_pids+=($!)
  done
  for n in 1 2 3; do wait_port $((p_node + n - 1)); done
}
start_nodes

say "xmpp-lb: direct TLS on :$p_lb, metrics on :$p_metrics"
cat > "$work/xmpp-lb.toml" <<TOML
[[listener]]
name = "direct"
bind = ["127.0.0.1:$p_lb"]
tls = "direct"
cert = "certs/chain.pem"
key = "certs/leaf.key"

[routing]
key = "jid"
domains = ["$domain"]

[[backend]]
name = "node1"
address = "127.0.0.1:$p_node"

[[backend]]
name = "node2"
address = "127.0.0.1:$((p_node + 1))"

[[backend]]
name = "node3"
address = "127.0.0.1:$((p_node + 2))"

[resumption]
sm_key_files = ["keys/sm.key"]
tls_ticket_key_files = ["keys/tickets.key"]

[metrics]
bind = "127.0.0.1:$p_metrics"
TOML
lb=$root/target/release/xmpp-lb
"$lb" check --config "$work/xmpp-lb.toml" >/dev/null
XMPP_LB_LOG=${XMPP_LB_LOG:-warn} "$lb" run --config "$work/xmpp-lb.toml" >"$work/xmpp-lb.log" 2>&1 </dev/null &
pids+=($!)
wait_port $p_lb; wait_port $p_metrics

reconnect() {
  timeout 120 "$root/target/release/examples/reconnect" --target "127.0.0.1:$p_lb" \
    --ca "$work/certs/ca.pem" --domain $domain --concurrency "$CONC" "$@" </dev/null
}
: > "$work/results.jsonl"
# One run per mode and TLS handshake kind, REPEAT times; the order rotates each time so that
# no run always comes first (the shared machine drifts).
runs=(full/full resume/full fast/full full/resumed resume/resumed fast/resumed)
all_healthy() {
  curl -fsS "http://127.0.0.1:$p_metrics/backends" 2>/dev/null |
    python3 -c 'import json,sys; b=json.load(sys.stdin)["backends"]; sys.exit(0 if len(b) == 3 and all(x["healthy"] for x in b) else 1)'
}
for ((rep = 1; rep <= REPEAT; rep++)); do
  k=$(( (rep - 1) % ${#runs[@]} ))
  if [ $rep -gt 1 ]; then   # fresh nodes; the proxy must see them up again before the next run
    stop "${node_pids[@]}"; node_pids=()
    start_nodes
    for _ in $(seq 100); do all_healthy && break; sleep 0.1; done
    all_healthy || die "the proxy does not see the restarted nodes as healthy"
  fi
  say "repeat $rep/$REPEAT: warm-up ($CONC users, 1 reconnect per mode), then $USERS users x $ROUNDS reconnects per mode, $CONC at once"
  # The warm-up is not reported: a node's first logins are slower (module and account loads).
  reconnect --mode all --users "$CONC" --rounds 1 --label warmup >> "$work/results.jsonl" ||
    die "the warm-up failed"
  for run in "${runs[@]:k}" "${runs[@]:0:k}"; do
    mode=${run%/*} tls=${run#*/}
    flag=(); [ "$tls" = resumed ] && flag=(--tls-resume)
    reconnect --mode "$mode" --users "$USERS" --rounds "$ROUNDS" --label "$tls" "${flag[@]}" \
      >> "$work/results.jsonl" || die "the reconnect client failed ($mode, TLS $tls)"
    tail -1 "$work/results.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); m=r["ms"] or {}; print("   %-6s TLS %-7s %4d reconnects, %d failed users, %d round trips, p50 %6.2f ms, p99 %6.2f ms" % (r["mode"], r["label"], r["reconnects"], r["failed_users"], r["round_trips"] or 0, m.get("p50", 0), m.get("p99", 0)))' >&2
  done
done
curl -fsS "http://127.0.0.1:$p_metrics/metrics" > "$work/metrics.txt"

say "results (medians of $REPEAT runs)"
if ! {
  echo "Machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); xmpp-lb $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' with uncommitted changes in src/'); Prosody $(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo '?')"
  echo
  python3 - "$work/results.jsonl" "$work/metrics.txt" "$USERS" "$ROUNDS" "$CONC" "$REPEAT" <<'PY'
import json, re, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
users, rounds, conc, repeat = map(int, sys.argv[3:7])
bad = 0
for r in runs:
    n = conc if r["label"] == "warmup" else users * rounds
    if r["failed_users"] or r["reconnects"] != n:
        bad += 1
        print(f"{r['mode']} (TLS {r['label']}): {r['reconnects']} of {n} reconnects, errors: {r['errors']}", file=sys.stderr)
print(f"{users} users x {rounds} reconnects per mode, {conc} at once, {repeat} runs each; "
      "time from TCP connect to usable session, median over the runs of each run's percentile\n")
print("| mode | TLS handshake | reconnects | failed users | TLS resumed / connections | round trips | p50 ms | p90 ms | p99 ms | max ms | round trips x 100 ms |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
names = {"full": "full login", "resume": "XEP-0198 resume", "fast": "FAST + inline resume"}
for tls in ("full", "resumed"):
    for mode in ("full", "resume", "fast"):
        rs = [r for r in runs if r["label"] == tls and r["mode"] == mode]
        if not rs:
            continue
        # connections: one per reconnect, plus each user's first login (resume, fast)
        conns = sum(r["reconnects"] + (0 if mode == "full" else users) for r in rs)
        rt = max(r["round_trips"] or 0 for r in rs)
        q = lambda k: statistics.median((r["ms"] or {}).get(k, float("nan")) for r in rs)
        print(f"| {names[mode]} | {tls} | {sum(r['reconnects'] for r in rs)} | {sum(r['failed_users'] for r in rs)} | "
              f"{sum(r['tls_resumed'] for r in rs)} / {conns} | {rt:.0f} | "
              + " | ".join(f"{q(k):.2f}" for k in ("p50", "p90", "p99", "max")) + f" | {rt * 100:.0f} ms |")
metrics = {}
for line in open(sys.argv[2]):
    m = re.match(r'(xmpp_lb_(?:resumes|tls_handshakes)_total)\{([^}]*)\} (\S+)', line)
    if m:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        key = (m.group(1), labels.get("kind"), labels.get("result", ""))
        metrics[key] = metrics.get(key, 0) + float(m.group(3))
print("\nThe proxy's counters at the end (warm-up included), summed over the other labels:\n")
for (name, kind, result), v in sorted(metrics.items()):
    print(f"- `{name}{{kind=\"{kind}\"" + (f", result=\"{result}\"" if result else "") + f"}}` {v:.0f}")
# Sanity: the proxy saw every resume the client made, and every resumed TLS handshake.
want = {("xmpp_lb_resumes_total", "legacy", "resumed"): sum(r["reconnects"] for r in runs if r["mode"] == "resume"),
        ("xmpp_lb_resumes_total", "inline", "resumed"): sum(r["reconnects"] for r in runs if r["mode"] == "fast"),
        ("xmpp_lb_tls_handshakes_total", "resumed", ""): sum(r["tls_resumed"] for r in runs)}
for key, n in want.items():
    if metrics.get(key, 0) != n:
        bad += 1
        print(f"{key[0]} {key[1]} {key[2]} is {metrics.get(key, 0):.0f}, the client counted {n}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
} | tee "$work/report.md"; then
  die "some reconnects failed, or the proxy's counters disagree (logs in $work)"
fi
