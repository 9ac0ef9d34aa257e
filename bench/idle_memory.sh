#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/idle_memory.sh: memory of idle keep-alive client connections. Each
# proxy (turnpike with the compare.sh configuration plus a long client_idle;
# nginx as in compare.sh) is started fresh; then, for each count in COUNTS,
# connections are added (bench/reqs.c --hold: one request each, then held
# open and idle) until that many are open, and the proxy's RSS and PSS
# (summed over its process tree: nginx master + worker, turnpike + its YAML
# parser guard helper) are read. The helper is turnpike-yaml-guard from
# beside TURNPIKE_BIN (about 2 MiB RSS, 0.3 MiB PSS); a TURNPIKE_BIN without
# it runs the whole binary as the helper, about 4.7 MiB more RSS. Prints
# both per count and the RSS slope in bytes per connection between
# consecutive counts.
# See bench/README.md.

set -u -o pipefail

usage() {
	cat <<'EOF'
usage: bench/idle_memory.sh [options]
  -n, --counts "N..."   connection counts, increasing (env COUNTS, default "2000 10000 100000")
  -p, --proxies "P..."  turnpike and/or nginx (env PROXIES, default "turnpike nginx")
other env: TURNPIKE_BIN, NGINX_BIN, CPU_PROXY, CPU_LOAD, SETTLE (s, default 3: turnpike gives parked buffer memory back after 1-2 s), KEEP_TMP=1
EOF
}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNTS=${COUNTS:-2000 10000 100000}
PROXIES=${PROXIES:-turnpike nginx}
SETTLE=${SETTLE:-3}
while [ $# -gt 0 ]; do
	case $1 in
	-n | --counts) COUNTS=$2; shift 2 ;;
	-p | --proxies) PROXIES=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; tpb_die "unknown argument: $1" ;;
	esac
done
max=0
for c in $COUNTS; do
	[[ "$c" =~ ^[1-9][0-9]*$ ]] && [ "$c" -gt "$max" ] || tpb_die "COUNTS must be increasing positive numbers"
	max=$c
done

tpb_init
tpb_pick_cpus
# The proxy holds every client plus an upstream socket per connection it
# pooled; reqs one socket per connection. Root may raise the hard limit.
tpb_raise_nofile $((max * 2 + 4096))
if [ "$TPB_NOFILE" -lt $((max + 2048)) ]; then
	# No CAP_SYS_RESOURCE (containers): measure as far as the limit allows.
	cap=$((TPB_NOFILE - 2048))
	clamped=""
	for c in $COUNTS; do
		[ "$c" -lt "$cap" ] && clamped+="$c "
	done
	COUNTS="$clamped$cap"
	tpb_warn "open files limited to $TPB_NOFILE: counts reduced to $COUNTS"
fi
"${CC:-cc}" -O2 -o "$TPB_TMP/reqs" "$TPB_BENCH/reqs.c" || tpb_die "building bench/reqs.c failed"
tpb_upstream_start

echo "command: COUNTS=$(tpb_shell_quote "$COUNTS") PROXIES=$(tpb_shell_quote "$PROXIES") TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN") $0"
echo "date: $(date -Is); open files: $TPB_NOFILE"

# VmRSS in kB of PID and its descendants.
rss_kb() {
	local p total=0 v
	for p in "$1" $(tpb_descendants "$1"); do
		v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)
		total=$((total + ${v:-0}))
	done
	echo "$total"
}

# Pss in kB (shared pages divided among the processes sharing them) of PID
# and its descendants: what the process tree costs, without counting the
# libraries an nginx master and worker (or turnpike and its parser guard
# helper) share twice.
pss_kb() {
	local p total=0 v
	for p in "$1" $(tpb_descendants "$1"); do
		v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null)
		total=$((total + ${v:-0}))
	done
	echo "$total"
}

for proxy in $PROXIES; do
	if ! tpb_proxy_start "$proxy" plain; then
		tpb_warn "$proxy: $TPB_PROXY_ERR"
		continue
	fi
	if [ "$proxy" = turnpike ]; then
		# Idle connections must outlive the run: client_idle from 60 s to 1 h.
		printf 'timeouts:\n  client_idle: 3600s\n' >>"$TPB_PROXY_CONF"
		tpb_stop "$TPB_PROXY_PID"
		tpb_start "$TPB_TMP/turnpike/stderr.log" "$TPB_CPU_PROXY" "$TURNPIKE_BIN" -c "$TPB_PROXY_CONF"
		TPB_PROXY_PID=$TPB_LAST_PID
		tpb_wait_http "http://127.0.0.1:$TPB_PROXY_PORT/" "$TPB_PROXY_PID" || tpb_die "turnpike did not restart"
	fi
	pid=$TPB_PROXY_PID
	sleep "$SETTLE"
	printf '%-9s %8s %9s %9s %12s\n' proxy conns rss_MiB pss_MiB "B/conn(slope)"
	printf '%-9s %8s %9.1f %9.1f %12s\n' "$proxy" 0 "$(awk -v k="$(rss_kb "$pid")" 'BEGIN {print k / 1024}')" \
		"$(awk -v k="$(pss_kb "$pid")" 'BEGIN {print k / 1024}')" -
	open=0 prev_kb="" prev_n=""
	holders=()
	for n in $COUNTS; do
		add=$((n - open))
		fifo=$TPB_TMP/hold-$proxy-$n
		mkfifo "$fifo"
		# reqs keeps its connections until its stdin (the fifo) closes.
		taskset -c "${TPB_CPU_LOAD:-0}" "$TPB_TMP/reqs" 127.0.0.1 "$TPB_PROXY_PORT" "$add" "$add" --hold "--spread=$open" \
			<"$fifo" >"$fifo.out" 2>&1 &
		hp=$!
		exec {wfd}>"$fifo"
		holders+=("$hp:$wfd")
		TPB_PIDS+=("$hp")
		for ((i = 0; i < 1200; i++)); do
			grep -q '^HELD' "$fifo.out" 2>/dev/null && break
			tpb_alive "$hp" || break
			sleep 0.1
		done
		grep -q '^HELD' "$fifo.out" || tpb_die "$proxy: opening $add connections failed: $(head -3 "$fifo.out")"
		grep -q ' errors=0 ' "$fifo.out" || tpb_warn "$proxy: $(head -1 "$fifo.out")"
		open=$n
		sleep "$SETTLE"
		kb=$(rss_kb "$pid")
		slope=-
		[ -n "$prev_kb" ] && slope=$(awk -v a="$prev_kb" -v b="$kb" -v m="$prev_n" -v n="$n" 'BEGIN {printf "%.0f", (b - a) * 1024 / (n - m)}')
		printf '%-9s %8d %9.1f %9.1f %12s\n' "$proxy" "$n" "$(awk -v k="$kb" 'BEGIN {print k / 1024}')" \
			"$(awk -v k="$(pss_kb "$pid")" 'BEGIN {print k / 1024}')" "$slope"
		prev_kb=$kb prev_n=$n
	done
	# Close every holder's stdin first: later holders inherited the write
	# ends of the earlier ones' fifos.
	for h in "${holders[@]}"; do
		wfd=${h##*:}
		exec {wfd}>&-
	done
	for h in "${holders[@]}"; do
		wait "${h%%:*}" 2>/dev/null
	done
	tpb_stop "$pid"
done
