#!/usr/bin/env bash
# Installs the system packages the test suite runs against, when they are missing. Idempotent and quiet when
# everything is present, so `make test` can call it every time.
#
# bird2 and gobgpd are BGP peers for the end-to-end tests, which run their own daemons inside network
# namespaces (tests/e2e/bgp_peers.rs). The packages' system services (bird.service, gobgpd.service, or BIRD's
# init script) would listen on port 179 in the root namespace, so they are kept from starting during the
# install and disabled after it — with systemd, or on a machine without it.
set -euo pipefail

packages=(sqlite3 curl bird2 gobgpd iproute2 arping ndisc6 tcpdump procps python3 nginx libnginx-mod-stream haproxy iperf3)
services=(bird gobgpd nginx haproxy)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Stops and disables the BGP daemons' system services; quiet, and harmless when they are absent.
disable_services() {
    for s in "${services[@]}"; do
        if [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now "$s.service" >/dev/null 2>&1 || true
        elif command -v systemctl >/dev/null 2>&1; then
            # Not booted with systemd (a container, a chroot): remove the enablement symlinks offline.
            $SUDO systemctl disable "$s.service" >/dev/null 2>&1 || true
        fi
        if [ -x "/etc/init.d/$s" ]; then
            $SUDO "/etc/init.d/$s" stop >/dev/null 2>&1 || true
            if command -v update-rc.d >/dev/null 2>&1; then
                $SUDO update-rc.d "$s" disable >/dev/null 2>&1 || true
            fi
        fi
    done
}

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    # Installed earlier: only make sure no system BGP daemon holds port 179 in the root namespace.
    if command -v ss >/dev/null 2>&1 && ss -Hltnp 'sport = :179' 2>/dev/null | grep -qE '"(bird|gobgpd)"'; then
        echo "stopping the system BGP daemons (the tests run their own)"
        disable_services
    fi
    exit 0
fi
echo "installing test dependencies: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Keep maintainer scripts from starting services during the install (invoke-rc.d and deb-systemd-invoke both
# honour policy-rc.d); an existing policy is left alone.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [ -n "$own_policy" ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
disable_services
