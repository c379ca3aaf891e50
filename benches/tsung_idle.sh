#!/usr/bin/env bash
# Idle memory per connection measured with tsung, an independent XMPP client (Erlang/OTP's TLS
# client), side by side in one run: tsung logs in HOLD sessions with presence, spread at random
# over xmpp-lb and HAProxy (both terminating direct TLS in front of one Prosody node), and keeps
# them idle; each proxy's VmRSS is read before, while holding (once the established connections
# on its port stop growing), and after tsung is stopped. KiB per connection = growth / the
# connections it holds (counted with ss on its port).
#
#   bash benches/tsung_idle.sh
#   HOLD=4000 RATE=200 bash benches/tsung_idle.sh    # the defaults
#
# Ports are free loopback ports the OS hands out. Needs tsung, prosody, haproxy, openssl, ss and
# python3 (scripts/install-deps.sh installs them). XMPP_LB_BIN runs a given xmpp-lb binary
# instead of building the release one. Work files go to target/tsung-idle/, replaced on every
# run. Every process it starts is stopped by pid (tsung's process group) on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

HOLD=${HOLD:-4000}    # sessions tsung holds, over both proxies
RATE=${RATE:-200}     # new sessions per second
domain=example.test
work=$root/target/tsung-idle
bench=tsung_idle.sh
# shellcheck source=benches/lib.sh
source "$root/benches/lib.sh"

need_packages tsung prosody haproxy openssl python3
ulimit -n "$(ulimit -Hn)"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
tsung_lb_bin

rm -rf "$work"
mkdir -p "$work/tsung" "$work/home"
tsung_stack "$work" "$domain" "$HOLD"

arrival_s=$(( (3 * HOLD / 2 + RATE - 1) / RATE + 1 ))
hold_s=$(( arrival_s + 600 ))
sed -e "s|@USERS@|$HOLD|g" -e "s|@DOMAIN@|$domain|g" -e "s|@RATE@|$RATE|g" \
    -e "s|@ARRIVAL_S@|$arrival_s|g" -e "s|@HOLD_S@|$hold_s|g" \
    -e "s|@P_LB@|$p_lb|g" -e "s|@P_HAPROXY@|$p_haproxy|g" \
    benches/tsung-idle.xml.in > "$work/tsung.xml"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# Established client connections on a proxy's port.
held() { ss -Htn state established "( sport = :$1 )" | wc -l; }

sleep 1
lb_before=$(rss_kib "$lb_pid"); ha_before=$(rss_kib "$ha_pid")
say "tsung $(dpkg-query -W -f='${Version}' tsung 2>/dev/null || echo '?'): $HOLD sessions at $RATE/s over the two proxies, then idle"
HOME=$work/home ERL_EPMD_PORT=$p_epmd setsid timeout $(( hold_s + 120 )) \
  tsung -n -f "$work/tsung.xml" -l "$work/tsung" start </dev/null >"$work/tsung.out" 2>&1 &
tsung_pid=$!
groups+=($tsung_pid)

# Wait for the arrivals, then until the held connections stop growing for 3 s.
sleep "$arrival_s"
last=-1 stable=0
for _ in $(seq 120); do
  kill -0 "$tsung_pid" 2>/dev/null || die "tsung ended early: $(tail -5 "$work/tsung.out")"
  now=$(( $(held "$p_lb") + $(held "$p_haproxy") ))
  if [ "$now" -eq "$last" ]; then stable=$((stable + 1)); else stable=0; fi
  [ "$stable" -ge 3 ] && break
  last=$now
  sleep 1
done
lb_held=$(held "$p_lb"); ha_held=$(held "$p_haproxy")
lb_holding=$(rss_kib "$lb_pid"); ha_holding=$(rss_kib "$ha_pid")
bound=$(python3 - "$p_metrics" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
              if l.startswith("xmpp_lb_backend_connections_open{"))))
PY
)
kill -TERM -- "-$tsung_pid" 2>/dev/null || true
wait "$tsung_pid" 2>/dev/null || true
sleep 3
lb_after=$(rss_kib "$lb_pid"); ha_after=$(rss_kib "$ha_pid")

say "results"
tsung_versions "$load_start"
echo "| proxy | connections held | VmRSS before KiB | VmRSS holding KiB | KiB per connection | VmRSS after tsung stopped KiB |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for p in lb ha; do
  name=xmpp-lb; [ $p = ha ] && name=HAProxy
  b=${p}_before h=${p}_holding a=${p}_after n=${p}_held
  printf '| %s (direct TLS) | %d | %d | %d | %s | %d |\n' "$name" "${!n}" "${!b}" "${!h}" \
    "$(python3 -c "print(f'{($(( ${!h} - ${!b} ))) / max(1, ${!n}):.1f}')")" "${!a}"
done
echo
echo "xmpp-lb relayed sessions open on the node while holding: $bound (of $lb_held held)"
[ "$bound" -eq "$lb_held" ] || die "not every connection held through xmpp-lb was logged in"
