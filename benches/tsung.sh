#!/usr/bin/env bash
# Logins measured by tsung, an independent XMPP load tester (Erlang/OTP's TLS client, Nagle on,
# as many real clients), against one Prosody node by three paths in one tsung run, interleaved:
#   xmpp-lb   xmpp-lb terminating direct TLS,
#   haproxy   HAProxy terminating direct TLS (mode tcp),
#   direct    the node itself, plain TCP (the lower bound).
# Each login is one tsung transaction from the TCP connect (TLS handshake included) to the
# bound resource: stream header, SASL PLAIN, stream restart, resource binding. A warm-up phase
# first logs in and closes the stream right after SASL success, as tsung's warm-up sessions do.
# Prints the login median and p99 per path side by side (from tsung's fullstats log) and the
# ratios; writes them as JSON to $work/results.json.
#
#   bash benches/tsung.sh
#   LOGINS=500 RATE=25 bash benches/tsung.sh    # the defaults
#
# Ports are free loopback ports the OS hands out. Needs tsung, prosody, haproxy, openssl and
# python3 (Debian packages; scripts/install-deps.sh installs them). XMPP_LB_BIN runs a given
# xmpp-lb binary instead of building the release one. Work files (configs, logs, tsung's logs)
# go to $TSUNG_WORK, by default target/tsung-bench/, replaced on every run. Every process it
# starts is stopped by pid on exit (tsung's Erlang port mapper included: it gets one of its own).
# Exits non-zero if any login failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

LOGINS=${LOGINS:-500}     # measured logins, spread over the three paths
RATE=${RATE:-25}          # new logins per second
WARMUP=${WARMUP:-15}      # warm-up sessions (login, then close right after SASL success)
domain=example.test
work=${TSUNG_WORK:-$root/target/tsung-bench}
bench=tsung.sh
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

need_packages tsung prosody haproxy openssl python3
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
tsung_lb_bin

rm -rf "$work"
mkdir -p "$work/tsung" "$work/home"
accounts=$(( LOGINS + WARMUP ))
tsung_stack "$work" "$domain" "$accounts"

# tsung's arrivals are random (exponential gaps at RATE on average): each phase lasts half as
# long again as its sessions need, and ends early when they have all started (maxnumber).
warmup_s=$(( (3 * WARMUP / 2 + RATE - 1) / RATE + 1 ))
login_s=$(( (3 * LOGINS / 2 + RATE - 1) / RATE + 1 ))
sed -e "s|@USERS@|$accounts|g" -e "s|@ACCOUNTS@|$accounts|g" -e "s|@DOMAIN@|$domain|g" \
    -e "s|@RATE@|$RATE|g" -e "s|@WARMUP@|$WARMUP|g" -e "s|@WARMUP_S@|$warmup_s|g" \
    -e "s|@LOGINS@|$LOGINS|g" -e "s|@LOGIN_S@|$login_s|g" -e "s|@P_LB@|$p_lb|g" \
    -e "s|@P_HAPROXY@|$p_haproxy|g" -e "s|@P_DIRECT@|$p_node|g" \
    benches/tsung.xml.in > "$work/tsung.xml"

say "tsung $(dpkg-query -W -f='${Version}' tsung 2>/dev/null || echo '?'): $WARMUP warm-up sessions, then $LOGINS logins at $RATE/s over the three paths"
# -n: no web GUI (it would listen on a fixed port); HOME: tsung writes ~/.tsung. tsung is a
# shell script that runs an Erlang VM: both go in a process group of their own, stopped as one.
# Each proxy serves only its own path's sessions: its CPU over the run, per session, is its
# CPU per login (user + system time, from /proc/PID/stat, in clock ticks).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
lb_cpu0=$(cpu_ticks "$lb_pid"); ha_cpu0=$(cpu_ticks "$ha_pid")
HOME=$work/home ERL_EPMD_PORT=$p_epmd setsid timeout $(( warmup_s + login_s + 120 )) \
  tsung -n -f "$work/tsung.xml" -l "$work/tsung" start </dev/null >"$work/tsung.out" 2>&1 &
tsung_pid=$!
groups+=($tsung_pid)
wait $tsung_pid || die "tsung failed: $(tail -5 "$work/tsung.out")"
logdir=$(find "$work/tsung" -mindepth 1 -maxdepth 1 -type d | head -1)
[ -f "$logdir/tsung-fullstats.log" ] || die "tsung wrote no fullstats log: $(tail -5 "$work/tsung.out")"
lb_cpu=$(( $(cpu_ticks "$lb_pid") - lb_cpu0 )); ha_cpu=$(( $(cpu_ticks "$ha_pid") - ha_cpu0 ))

stream_errors=$(python3 - "$p_metrics" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
              if l.startswith("xmpp_lb_stream_errors_sent_total{"))))
PY
)

say "results"
tsung_versions "$load_start"
python3 - "$logdir" "$LOGINS" "$RATE" "$stream_errors" "$work/results.json" "$lb_cpu" "$ha_cpu" "$(getconf CLK_TCK)" <<'PY'
import json, os, re, statistics, sys
logdir, logins, rate, stream_errors, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
hz = int(sys.argv[8])
cpu_s = {"xmpp-lb": int(sys.argv[6]) / hz, "haproxy": int(sys.argv[7]) / hz}
paths = {"xmpp-lb": "login_xmpp_lb", "haproxy": "login_haproxy", "direct": "login_direct"}
samples = {p: [] for p in paths}
warmups = 0
per_path_warmups = {p: 0 for p in paths}
for m in re.finditer(r"\{sample,tr_(\w+),([0-9.eE+-]+)\}", open(os.path.join(logdir, "tsung-fullstats.log")).read()):
    for p, name in paths.items():
        if m.group(1) == name:
            samples[p].append(float(m.group(2)))
        if m.group(1) == "warmup_" + name[len("login_"):]:
            per_path_warmups[p] += 1
    warmups += m.group(1).startswith("warmup_")
# tsung.log's last dump holds the counters: errors, and sessions started and finished.
errors, counts = {}, {}
for line in open(os.path.join(logdir, "tsung.log")):
    f = line.split()
    if len(f) >= 4 and f[0] == "stats:" and f[1].startswith("error_"):
        errors[f[1]] = int(f[3])
    elif len(f) >= 4 and f[0] == "stats:" and f[1] in ("users_count", "finish_users_count"):
        counts[f[1]] = int(f[3])
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))] if xs else float("nan")
rows = {p: {"logins": len(xs), "median_ms": statistics.median(xs) if xs else float("nan"),
            "p99_ms": pct(xs, 99), "max_ms": max(xs) if xs else float("nan"),
            # every session through the path did a full TLS handshake and a login
            "proxy_cpu_ms_per_login": cpu_s[p] * 1000 / max(1, len(xs) + per_path_warmups[p]) if p in cpu_s else None}
        for p, xs in samples.items()}
ok = sum(r["logins"] for r in rows.values())
# Every session tsung started (it may start one fewer than asked) ended its transaction.
started = counts.get("users_count", 0)
all_ok = started > 0 and warmups + ok == started == counts.get("finish_users_count") and not errors
result = {"logins_asked": logins, "sessions_started": started, "warmups_ok": warmups,
          "logins_ok": ok, "all_ok": all_ok, "rate_per_s": float(rate), "errors": errors,
          "xmpp_lb_stream_errors": stream_errors, "paths": rows}
json.dump(result, open(out, "w"), indent=1)
print(f"{ok} logins at {rate}/s, one Prosody node, interleaved over the paths (tsung; direct TLS or plain TCP, SASL PLAIN, bind)\n")
print("| path | logins ok | login median ms | p99 ms | max ms | proxy CPU ms/login |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for p in paths:
    r = rows[p]
    c = r["proxy_cpu_ms_per_login"]
    print(f"| {p} | {r['logins']} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} | {'-' if c is None else f'{c:.2f}'} |")
def q(a, b):
    return "-" if not (a == a and b == b) or b == 0 else f"{a / b:.2f}"
print("\n| ratio | median | p99 | proxy CPU/login |\n| --- | ---: | ---: | ---: |")
for a, b in (("xmpp-lb", "haproxy"), ("xmpp-lb", "direct"), ("haproxy", "direct")):
    ca, cb = rows[a]["proxy_cpu_ms_per_login"], rows[b]["proxy_cpu_ms_per_login"]
    c = "-" if ca is None or cb is None else q(ca, cb)
    print(f"| {a} / {b} | {q(rows[a]['median_ms'], rows[b]['median_ms'])} | {q(rows[a]['p99_ms'], rows[b]['p99_ms'])} | {c} |")
print(f"\nsessions started {started}: {warmups} warm-ups and {ok} logins completed; tsung errors {errors or 'none'}; stream errors sent by xmpp-lb: {stream_errors}")
sys.exit(0 if all_ok and stream_errors == 0 else 1)
PY
