# Pieces shared by the load scripts in benches/ (sourced, not run): messages, stopping every
# process a script started by pid, ports, a test CA, Prosody nodes with accounts, HAProxy
# terminating direct TLS, and xmpp-lb's configuration. One copy, so that every comparison
# measures the same servers set up the same way.
#
# The sourcing script sets `bench` (its name, for messages) and `work` (its work directory)
# first; it appends every pid it starts itself to `pids`, and the id of every process group
# it starts with setsid (a program that forks helpers of its own) to `groups`. Sourcing installs
# the EXIT trap that stops them.

pids=()        # every process to stop on exit, by pid
groups=()      # process groups to stop on exit, by their leader's pid
node_pids=()   # the Prosody nodes among them

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { echo "$bench: $*" >&2; exit 1; }

# Stop every process in `pids` and every group in `groups`: TERM, up to 5 s, then KILL; by
# id, never by name.
stop_pids() {
  local pid alive
  for pid in "${groups[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "${groups[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${groups[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}" "${groups[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_pids EXIT
trap 'exit 130' INT TERM

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Install Debian packages that are missing (the scripts also run where install-deps.sh did not).
need_packages() {
  local missing=() p
  for p in "$@"; do command -v "$p" >/dev/null || [ -x "/usr/sbin/$p" ] || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} (Debian packages)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 200); do port_open "$1" && return 0; sleep 0.1; done
  die "port $1 never opened"
}
# A loopback port nothing listens on, as the OS hands it out.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# make_certs DIR DOMAIN: a test CA (ca.pem) and a certificate for DOMAIN signed by it
# (leaf.pem, leaf.key; chain.pem for xmpp-lb, haproxy.pem with the key for HAProxy).
make_certs() {
  local dir=$1 domain=$2
  mkdir -p "$dir"
  (cd "$dir"
   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
     -subj "/CN=xmpp-lb bench CA" -keyout ca.key -out ca.pem 2>/dev/null
   openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$domain" \
     -keyout leaf.key -out leaf.csr 2>/dev/null
   printf 'subjectAltName=DNS:%s\n' "$domain" > san.ext
   openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
     -extfile san.ext -out leaf.pem 2>/dev/null
   cat leaf.pem ca.pem > chain.pem
   cat leaf.pem ca.pem leaf.key > haproxy.pem)
}

# start_prosody DIR PORT DOMAIN USERS PASSWORD: a Prosody node with plain c2s on
# 127.0.0.1:PORT (TLS ends at whatever is in front of it) and accounts user1..userUSERS, written
# before start in its internal_plain storage. In PASSWORD, `{i}` stands for the user's number.
start_prosody() {
  local dir=$1 port=$2 domain=$3 users=$4 password=$5 i
  local accounts=$dir/data/${domain//./%2e}/accounts
  mkdir -p "$accounts"
  for ((i = 1; i <= users; i++)); do
    printf 'return {\n\t["password"] = "%s";\n};\n' "${password//\{i\}/$i}" > "$accounts/user$i.dat"
  done
  cat > "$dir/prosody.cfg.lua" <<LUA
-- Bench node: plain c2s on loopback (TLS ends at the proxy in front of it).
run_as_root = true
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { { levels = { min = "warn" }, to = "file", filename = "$dir/prosody.log" } }
c2s_interfaces = { "127.0.0.1" }
c2s_ports = { $port }
c2s_direct_tls_ports = { }
legacy_ssl_ports = { }
s2s_ports = { }
s2s_direct_tls_ports = { }
component_ports = { }
http_ports = { }
https_ports = { }
modules_disabled = { "s2s" }
modules_enabled = { "roster"; "saslauth"; "disco"; "ping" }
authentication = "internal_plain"
storage = "internal"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
network_settings = { nagle = false; tcp_backlog = 1024 }
VirtualHost "$domain"
LUA
  prosody --config "$dir/prosody.cfg.lua" -F >"$dir/stdout.log" 2>&1 </dev/null &
  pids+=($!)
  node_pids+=($!)
}

# write_lb_config FILE DOMAIN CERT_DIR STARTTLS_PORT DIRECT_PORT METRICS_PORT MAX_CONNECTIONS
# NODE_PORT...: xmpp-lb routing by JID over the nodes node1.. on 127.0.0.1:NODE_PORT...; an
# empty STARTTLS_PORT or DIRECT_PORT leaves that listener out.
write_lb_config() {
  local file=$1 domain=$2 certs=$3 p_starttls=$4 p_direct=$5 p_metrics=$6 maxconn=$7
  shift 7
  local n=0 port
  {
    if [ -n "$p_starttls" ]; then
      printf '[[listener]]\nname = "starttls"\nbind = ["127.0.0.1:%s"]\ntls = "starttls"\n' "$p_starttls"
      printf 'cert = "%s/chain.pem"\nkey = "%s/leaf.key"\n\n' "$certs" "$certs"
    fi
    if [ -n "$p_direct" ]; then
      printf '[[listener]]\nname = "direct"\nbind = ["127.0.0.1:%s"]\ntls = "direct"\n' "$p_direct"
      printf 'cert = "%s/chain.pem"\nkey = "%s/leaf.key"\n\n' "$certs" "$certs"
    fi
    printf '[routing]\nkey = "jid"\ndomains = ["%s"]\n\n' "$domain"
    for port in "$@"; do
      n=$((n + 1))
      printf '[[backend]]\nname = "node%d"\naddress = "127.0.0.1:%s"\n\n' "$n" "$port"
    done
    printf '[metrics]\nbind = "127.0.0.1:%s"\n\n[limits]\nmax_connections = %d\n' "$p_metrics" "$maxconn"
  } > "$file"
}

# start_haproxy WORK PORT PEM MAXCONN NODE_PORT...: HAProxy terminating direct TLS (ALPN
# xmpp-client) on 127.0.0.1:PORT, mode tcp, balance source over the nodes; sets `ha_pid`.
start_haproxy() {
  local work=$1 port=$2 pem=$3 maxconn=$4
  shift 4
  local n=0 node
  {
    cat <<CFG
global
    maxconn $maxconn
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode tcp
    maxconn $maxconn
    timeout connect 3s
    timeout client 1h
    timeout server 1h
frontend xmpp_direct_tls
    bind 127.0.0.1:$port ssl crt $pem alpn xmpp-client
    default_backend prosody
backend prosody
    balance source
    hash-type consistent
CFG
    for node in "$@"; do
      n=$((n + 1))
      echo "    server node$n 127.0.0.1:$node"
    done
  } > "$work/haproxy.cfg"
  haproxy -c -q -f "$work/haproxy.cfg"
  haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 </dev/null &
  ha_pid=$!
  pids+=($ha_pid)
}

# tsung_stack WORK DOMAIN ACCOUNTS: what the tsung benches run against, on free loopback ports:
# one Prosody node with ACCOUNTS accounts (user<i>, password pw-user<i>), xmpp-lb and HAProxy
# both terminating direct TLS in front of it, and an Erlang port mapper of our own for tsung's
# controller (otherwise it would start as a daemon and outlive the run). Needs `lb_bin`; sets
# p_node, p_lb, p_metrics, p_haproxy, p_epmd, lb_pid and ha_pid.
tsung_stack() {
  local work=$1 domain=$2 accounts=$3 p
  p_node=$(free_port)
  p_lb=$(free_port)
  p_metrics=$(free_port)
  p_haproxy=$(free_port)
  p_epmd=$(free_port)
  say "test CA and certificate for $domain"
  make_certs "$work/certs" "$domain"
  say "one Prosody node on 127.0.0.1:$p_node, $accounts accounts"
  start_prosody "$work/node1" "$p_node" "$domain" "$accounts" "pw-user{i}"
  wait_port "$p_node"
  say "xmpp-lb: direct TLS :$p_lb; HAProxy: direct TLS :$p_haproxy"
  write_lb_config "$work/xmpp-lb.toml" "$domain" "$work/certs" "" "$p_lb" "$p_metrics" $(( accounts + 100 )) "$p_node"
  "$lb_bin" check --config "$work/xmpp-lb.toml" >/dev/null
  "$lb_bin" --config "$work/xmpp-lb.toml" --log warn >"$work/xmpp-lb.log" 2>&1 </dev/null &
  lb_pid=$!
  pids+=($lb_pid)
  start_haproxy "$work" "$p_haproxy" "$work/certs/haproxy.pem" $(( accounts + 100 )) "$p_node"
  for p in $p_lb $p_haproxy $p_metrics; do wait_port "$p"; done
  epmd -port "$p_epmd" -address 127.0.0.1 >"$work/epmd.log" 2>&1 </dev/null &
  pids+=($!)
  wait_port "$p_epmd"
}

# tsung_lb_bin: the xmpp-lb binary the tsung benches run (XMPP_LB_BIN, or the release build);
# sets lb_bin.
tsung_lb_bin() {
  if [ -n "${XMPP_LB_BIN:-}" ]; then
    lb_bin=$XMPP_LB_BIN
  else
    say "building xmpp-lb (release)"
    cargo build --release --quiet --bin xmpp-lb
    lb_bin=$root/target/release/xmpp-lb
  fi
}

# tsung_versions LOAD_START: the machine and the versions measured, for the report.
tsung_versions() {
  echo "Machine: $(nproc) CPUs; load average at start $1, at end $(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'xmpp-lb %s%s; HAProxy %s; Prosody %s; tsung %s\n\n' "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(git diff --quiet HEAD -- src 2>/dev/null || echo ' with uncommitted changes in src/')" \
    "$(haproxy -v | awk 'NR == 1 {print $3}')" "$(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo '?')" \
    "$(dpkg-query -W -f='${Version}' tsung 2>/dev/null || echo '?')"
}
