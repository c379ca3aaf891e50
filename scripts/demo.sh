#!/usr/bin/env bash
# The demo: three unmodified Prosody nodes on loopback, xmpp-lb in front (config/demo.toml),
# a few users logging in through it over STARTTLS and direct TLS, and where each one landed.
# Runs until Ctrl-C, then stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
demo=$root/.demo
domain=example.test
users="alice bob carol dave erin frank"
pids=()

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash scripts/install-deps.sh
python=${XMPP_LB_PYTHON:-python3}
"$python" -c 'import slixmpp' 2>/dev/null || python=$root/.venv/bin/python

say "building xmpp-lb"
cargo build --release --quiet
bin=$root/target/release/xmpp-lb

say "making a test CA and a certificate for $domain"
mkdir -p "$demo/certs"
if [ ! -f "$demo/certs/$domain.pem" ]; then
  (cd "$demo/certs"
   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
     -subj "/CN=xmpp-lb demo CA" -keyout ca.key -out ca.pem 2>/dev/null
   openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$domain" \
     -keyout "$domain.key" -out "$domain.csr" 2>/dev/null
   printf 'subjectAltName=DNS:%s,DNS:localhost\n' "$domain" > san.ext
   openssl x509 -req -in "$domain.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
     -extfile san.ext -out leaf.pem 2>/dev/null
   cat leaf.pem ca.pem > "$domain.pem")
fi

"$bin" check --config config/demo.toml

for n in 1 2 3; do
  dir=$demo/node$n
  mkdir -p "$dir/data"
  cat > "$dir/prosody.cfg.lua" <<LUA
-- Demo node $n: plain c2s on loopback; TLS ends at xmpp-lb in front of it.
run_as_root = true
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { info = "$dir/prosody.log" }
interfaces = { "127.0.0.1" }
c2s_interfaces = { "127.0.0.1" }
c2s_ports = { 2530$n }
s2s_ports = { }
modules_disabled = { "s2s" }
modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "presence"; "message"; "iq"; "server_contact_info" }
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
network_settings = { nagle = false; tcp_backlog = 1024 }
VirtualHost "$domain"
  contact_info = { admin = { "xmpp:node$n@$domain" } }
LUA
  for u in $users; do
    prosodyctl --config "$dir/prosody.cfg.lua" register "$u" "$domain" "secret-$u" >/dev/null 2>&1 || true
  done
  prosody --config "$dir/prosody.cfg.lua" -F >"$dir/stdout.log" 2>&1 &
  pids+=($!)
done

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2; return 1
}
alive() { kill -0 "$1" 2>/dev/null || { echo "$2 exited at start (port in use? another demo running?); see above" >&2; exit 1; }; }
for n in 1 2 3; do wait_port 2530$n; done
sleep 0.3
for pid in "${pids[@]}"; do alive "$pid" "a Prosody node"; done
say "three Prosody nodes up on 127.0.0.1:25301-25303"

"$bin" --config config/demo.toml --log warn &
pids+=($!)
wait_port 25222
wait_port 25223
sleep 0.3
alive "${pids[-1]}" "xmpp-lb"
say "xmpp-lb up: STARTTLS on :25222, direct TLS on :25223 (IPv4 and IPv6), metrics on :25464"

printf '\n%-8s %-9s %-18s %-16s %s\n' user tls "route says" "server says" "login"
i=0
for u in $users; do
  if [ $((i % 2)) -eq 0 ]; then tls=starttls port=25222; else tls=direct port=25223; fi
  i=$((i + 1))
  expected=$("$bin" route --config config/demo.toml "$u@$domain" | head -n 1)
  out=$("$python" tests/clients/xmpp_client.py login --jid "$u@$domain" --password "secret-$u" \
        --host 127.0.0.1 --port $port --tls $tls --ca "$demo/certs/ca.pem" --timeout 15 || true)
  node=$(printf '%s' "$out" | "$python" -c 'import json,sys; d=json.load(sys.stdin); print((d.get("node_contact") or "?").split(":")[-1].split("@")[0] if d.get("ok") else "FAILED: "+str(d.get("error")))' 2>/dev/null || echo "FAILED")
  ms=$(printf '%s' "$out" | "$python" -c 'import json,sys; print(json.load(sys.stdin).get("elapsed_ms","-"))' 2>/dev/null || echo -)
  printf '%-8s %-9s %-18s %-16s %s ms\n' "$u" "$tls" "$expected" "$node" "$ms"
done

printf '\nWhy alice lands where she does (xmpp-lb route):\n'
"$bin" route --config config/demo.toml "alice@$domain"
printf '\n'
curl -s http://127.0.0.1:25464/metrics 2>/dev/null | grep -E '^xmpp_lb_routed_total' || true
say "running; try a client of your own against 127.0.0.1:25222 (CA: $demo/certs/ca.pem). Ctrl-C stops."
wait
