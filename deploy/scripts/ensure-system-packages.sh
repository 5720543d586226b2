#!/usr/bin/env bash
# Installs the Debian packages Serval needs when they are missing.
# Usage: ensure-system-packages.sh [--bench | --dns-bench]
#   --bench: the data-path benchmark's tools instead (iperf3, haproxy; `make bench-deps`)
#   --dns-bench: the DNS benchmark's tools instead (dnsperf, dnsmasq; `make bench-dns-deps`)
# Needs root (or passwordless sudo) only when something is missing.
set -euo pipefail

# command-on-PATH -> Debian package providing it
declare -A NEEDED=(
    [etcd]=etcd-server
    [etcdctl]=etcd-client
    [ip]=iproute2
    # the resolver's DNS back-end tests serve records from it (the -base package:
    # the binary without a system service)
    [dnsmasq]=dnsmasq-base
    # the dashboard's browser tests drive it headless through playwright (never a
    # downloaded browser build)
    [chromium]=chromium
)
if [ "${1:-}" = "--bench" ]; then
    NEEDED=(
        [iperf3]=iperf3
        [haproxy]=haproxy
    )
elif [ "${1:-}" = "--dns-bench" ]; then
    NEEDED=(
        [dnsperf]=dnsperf
        [dnsmasq]=dnsmasq-base
    )
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--bench | --dns-bench]" >&2
    exit 2
fi

missing=()
for cmd in "${!NEEDED[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEEDED[$cmd]}")
done
if [ $# -eq 0 ]; then
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "serval: installing missing system packages: ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
else
    echo "serval: cannot install ${missing[*]}: run as root, or install them yourself:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged etcd (and haproxy) as system services; Serval and its
# benchmark run their own.
for unit in etcd haproxy; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$unit" 2>/dev/null; then
        $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
done
echo "serval: installed ${missing[*]}" >&2
