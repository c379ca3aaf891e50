#!/usr/bin/env bash
# Install what the demo and the tests need on a Debian machine: Prosody (the real XMPP server
# the tests run), openssl (demo certificates), curl, and slixmpp (the real XMPP client).
# Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v prosody >/dev/null || missing+=(prosody)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages)"
  sudo_if_needed apt-get update -qq
  # policy-rc.d keeps the package's own system-wide Prosody service from starting: tests run
  # their own nodes on free loopback ports and must not share the machine with a stray one.
  if [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" -eq 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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
