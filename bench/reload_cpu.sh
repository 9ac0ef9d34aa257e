#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/reload_cpu.sh: CPU time one reload of a small configuration costs
# turnpike, on an otherwise idle gateway. turnpike (the compare.sh
# configuration, one worker) is started, WARM requests are sent through it
# (so its buffers and pools are in use, as in a gateway that has served
# traffic), then RELOADS SIGHUPs are sent one at a time, each after the
# previous one was applied (the X-Bench-Gen response header it switches is
# served).
# Prints the CPU time (utime + stime of the process, of its descendants - the
# parser guard's helper - and of the children they reaped, from
# /proc/PID/stat) over the reloads divided by their number,
# minus the idle CPU of the same wall time measured just before.
# See bench/README.md.

set -u -o pipefail

usage() {
	cat <<'EOF'
usage: bench/reload_cpu.sh [options]
  -n, --reloads N     reloads (env RELOADS, default 100)
  -w, --warm N        requests sent before (env WARM, default 20000)
other env: TURNPIKE_BIN, CPU_PROXY, CPU_LOAD, READY_TIMEOUT, KEEP_TMP=1
EOF
}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RELOADS=${RELOADS:-100}
WARM=${WARM:-20000}
while [ $# -gt 0 ]; do
	case $1 in
	-n | --reloads) RELOADS=$2; shift 2 ;;
	-w | --warm) WARM=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; tpb_die "unknown argument: $1" ;;
	esac
done
for v in RELOADS WARM; do
	[[ "${!v}" =~ ^[1-9][0-9]*$ ]] || tpb_die "$v must be a positive whole number (got '${!v}')"
done

tpb_init
tpb_pick_cpus
tpb_raise_nofile 4096
"${CC:-cc}" -O2 -o "$TPB_TMP/reqs" "$TPB_BENCH/reqs.c" || tpb_die "building bench/reqs.c failed"
tpb_upstream_start
tpb_proxy_start turnpike reload a || tpb_die "turnpike: $TPB_PROXY_ERR"
pid=$TPB_PROXY_PID
line=$(taskset -c "${TPB_CPU_LOAD:-0}" "$TPB_TMP/reqs" 127.0.0.1 "$TPB_PROXY_PORT" 64 "$WARM")
tpb_log "warm-up: $line"

# The X-Bench-Gen value turnpike serves (a proxied request costs it far less
# than rendering /metrics would).
served_gen() {
	curl -s -o /dev/null -D - --max-time 5 "http://127.0.0.1:$TPB_PROXY_PORT/" |
		awk -F': ' 'tolower($1) == "x-bench-gen" {gsub(/\r/, "", $2); print $2}'
}
# utime + stime + cutime + cstime of PID and its descendants (the parser
# guard's helper), in clock ticks.
ticks() {
	tpb_cpu_ticks "$1"
	echo "$TPB_TICKS"
}

# Idle CPU over about the time the reloads take, to subtract.
t0=${EPOCHREALTIME/./}
c0=$(ticks "$pid")
conf=$TPB_TMP/turnpike/turnpike.yaml
for ((i = 1; i <= RELOADS; i++)); do
	gen=$([ $((i % 2)) = 1 ] && echo b || echo a)
	tpb_proxy_render turnpike reload "$gen"
	kill -HUP "$pid"
	for ((k = 0; k < 500; k++)); do
		[ "$(served_gen)" = "$gen" ] && break
		sleep 0.01
	done
	[ "$k" -lt 500 ] || tpb_die "reload $i not applied within 5 s"
done
c1=$(ticks "$pid")
t1=${EPOCHREALTIME/./}
wall_us=$((t1 - t0))
sleep "$(awk -v u="$wall_us" 'BEGIN {printf "%.3f", u / 1e6}')"
c2=$(ticks "$pid")
tpb_alive "$pid" || tpb_die "turnpike died"
[ -f "$conf" ] || tpb_die "configuration missing"
awk -v n="$RELOADS" -v r="$((c1 - c0))" -v i="$((c2 - c1))" -v hz="$TPB_CLK_TCK" -v w="$wall_us" 'BEGIN {
	printf "RELOAD reloads=%d wall_s=%.2f cpu_ms_total=%.0f idle_cpu_ms=%.0f cpu_ms_per_reload=%.2f\n",
		n, w / 1e6, r * 1000 / hz, i * 1000 / hz, (r - i) * 1000 / hz / n }'
tpb_stop "$pid"
