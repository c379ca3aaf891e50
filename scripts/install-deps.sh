#!/usr/bin/env bash
# Install what the demo and the tests need on a Debian machine: Prosody with its community
# modules, and ejabberd (the real XMPP servers the tests run), HAProxy (a real front balancer speaking the PROXY protocol),
# Prometheus and promtool (the tests scrape the proxy with a real server and lint its
# exposition), tsung (an independent XMPP load tester, for benches/tsung.sh and its bounded
# test), openssl (demo certificates), curl, slixmpp (the real XMPP client), and Node.js
# with @xmpp/client and Converse.js from npm (the real WebSocket clients, pinned by a
# lockfile), Chromium (Converse.js and the status page test run in it, headless), and
# cargo-deb (the Debian package).
# Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v prosody >/dev/null || missing+=(prosody)
# The community modules (SASL2, Bind 2, FAST, inline stream management) for fast reconnect.
[ -f /usr/lib/prosody/modules/mod_sasl2_fast/mod_sasl2_fast.lua ] || missing+=(prosody-modules)
# ejabberdctl and haproxy live in /usr/sbin, which a non-root PATH may lack.
{ command -v ejabberdctl >/dev/null || [ -x /usr/sbin/ejabberdctl ]; } || missing+=(ejabberd)
{ command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ]; } || missing+=(haproxy)
command -v tsung >/dev/null || missing+=(tsung)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
# A DNS server whose records a test changes, for backend groups found in DNS.
{ command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ]; } || missing+=(dnsmasq-base)
# promtool ships in the same package as the server.
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing+=(prometheus)
# Node.js and npm run the real web client (@xmpp/client) of the WebSocket tests.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
# Headless Chromium runs Converse.js in the browser test, and the proxy's status page in its
# test (driven by puppeteer-core from npm, which downloads no browser of its own).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)"
  sudo_if_needed apt-get update -qq
  # policy-rc.d keeps the packages' own system-wide Prosody, ejabberd, HAProxy and Prometheus
  # services from starting: tests run their own on free loopback ports (each ejabberd with its
  # own node name, Mnesia directory and Erlang port mapper, each Prometheus with its own
  # storage in a temporary directory), and must not share the machine with a stray one (or
  # with a Prometheus scraping on :9090, an ejabberd holding 5222).
  if [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" -eq 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Where no policy-rc.d could be put in place (not root), a package may have started its
  # service anyway: stop the ones just installed, so nothing is left listening on :9090 or
  # :5222 (the ejabberd service's own epmd goes with it).
  for service in prometheus ejabberd haproxy; do
    if [[ " ${missing[*]} " == *" $service "* ]]; then
      if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
        sudo_if_needed systemctl disable --now "$service" >/dev/null 2>&1 || true
      fi
    fi
  done
fi

# cargo-deb builds the Debian package (scripts/package.sh, tests/package.rs), from crates.io.
# Pinned: the package test packs the tests' own dev build, which later versions may refuse.
if ! cargo deb --version 2>/dev/null | grep -q '^cargo-deb 3\.8\.0$'; then
  echo "installing cargo-deb (crates.io)"
  cargo install --locked --quiet cargo-deb --version 3.8.0
fi

# The client: the given interpreter if it has slixmpp, else pip, else a project venv (.venv,
# which the tests and the demo pick up by themselves) where the system Python refuses pip.
python=${XMPP_LB_PYTHON:-python3}
if ! "$python" -c 'import slixmpp' 2>/dev/null && ! .venv/bin/python -c 'import slixmpp' 2>/dev/null; then
  echo "installing slixmpp (PyPI)"
  if ! "$python" -m pip install -q -r tests/clients/requirements.txt 2>/dev/null; then
    "$python" -m venv .venv 2>/dev/null || {
      sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$python" -m venv .venv
    }
    .venv/bin/pip install -q -r tests/clients/requirements.txt
  fi
fi

# The web clients: @xmpp/client, ws, converse.js and puppeteer-core, exactly as the lockfile
# says, in the project's own directory (nothing global). Reinstalled when the lockfile changes.
web=tests/clients/xmpp-js
# @xmpp/client needs Node.js 20.10 or later (the machines have it; Debian 12's own nodejs
# package is 18): say so plainly rather than fail inside a test.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 10) ? 0 : 1)'; then
  echo "Node.js $(node --version) is too old for the web client tests: 20.10 or later is needed" >&2
  exit 1
fi
if [ ! -f "$web/node_modules/.package-lock.json" ] || [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
  echo "installing the web clients (npm ci in $web)"
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
fi
