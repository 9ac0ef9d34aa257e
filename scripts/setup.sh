#!/bin/sh
# Installs what turnpike needs to build, test and benchmark on Debian 12, when
# it is missing. Idempotent: does nothing when everything is there. Run as root
# (or with sudo available).
set -eu

PKGS="build-essential cmake pkg-config clang clang-format libclang-rt-14-dev
liburing-dev node-llhttp libssl-dev libjemalloc-dev libxxhash-dev liburcu-dev libfyaml-dev
libjansson-dev libc-ares-dev libnghttp2-dev nghttp2-client python3-h2 python3-grpcio python3 python3-pytest python3-websockets python3-jwt python3-cryptography curl openssl nginx-light haproxy wrk slowhttptest procps iproute2 dnsmasq-base valgrind
redis-server libhiredis-dev linux-perf"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    echo "setup: installing:$missing"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    # Debian's nginx, haproxy and redis-server packages start their services on install when an
    # init system is running; the tests and benchmarks start their own instances.
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends $missing
    for svc in nginx haproxy redis-server; do
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
            $SUDO systemctl stop "$svc" || true
        fi
    done
fi
