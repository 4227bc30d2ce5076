#!/usr/bin/env bash
# Installs everything swarmcache, its tests and its demo need on a fresh Debian 12 machine (root).
# Idempotent: safe to run again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
apt_packages=(iptables nftables iproute2 libnetfilter-queue-dev python3-dev gcc curl
              nginx-light wrk procps psmisc ca-certificates opentracker aria2
              openssh-server openssh-client netcat-openbsd dante-server
              prometheus)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian nginx package starts a default server on :80 of the root namespace; tests and
# benchmarks start their own nginx inside namespaces, so keep the packaged one off.
if pgrep -x nginx >/dev/null 2>&1 && [ -f /run/nginx.pid ]; then
  nginx -s stop 2>/dev/null || true
fi
# prometheus is for the test that evaluates every dashboard query against a real Prometheus; the
# test runs its own instance inside a namespace, so the packaged service stays off.
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
# openssh-server is for the SOCKS test's sshd inside a namespace; the packaged service stays off.
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now ssh >/dev/null 2>&1 || true
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e "$here[test,advise]"
