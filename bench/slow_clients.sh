#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/slow_clients.sh: what slow clients (slowhttptest) cost turnpike's
# ordinary clients. turnpike (build/rel, bench/conf/turnpike.yaml.in: one
# worker, default limits and timeouts) proxies to the bench nginx upstream.
# Phases, one after the other:
#
#   quiet          wrk alone
#   slow headers   slowhttptest -H (Slowloris: a header line every INTERVAL s)
#   slow body      slowhttptest -B (R-U-Dead-Yet: a POST body trickled every INTERVAL s,
#                  to /body, where the upstream answers only after the whole body)
#   slow read      slowhttptest -X (requests a 1 MiB file, reads a few bytes a second
#                  through a tiny TCP window)
#   quiet (after)  wrk alone again: did the gateway recover?
#
# In each attack phase SLOW_CONNS attack connections are opened (at RATE per
# second) and, once they are held (or after RAMP_MAX s), wrk measures WRK_CONNS
# ordinary keep-alive clients for DURATION s while the gateway's RSS
# (/proc/PID/status VmRSS) is sampled every 0.25 s. Prints one table: attack
# connections held at wrk's start and end, req/s and p99 and their ratios to
# the quiet run, wrk errors, peak and end RSS, gateway CPU, and how often its
# receive buffer pool ran dry. Everything runs on
# 127.0.0.1, ports picked at run time; every process started is stopped on exit.
#
# Needs slowhttptest (Debian: apt-get install slowhttptest) besides what
# bench/README.md lists. CPU pinning as in compare.sh: turnpike on CPU_PROXY,
# wrk + nginx + slowhttptest on CPU_LOAD.

set -u -o pipefail

usage() {
	cat <<'EOF'
usage: bench/slow_clients.sh [options]
  -d, --duration S      seconds of each measured wrk run (env DURATION, default 10)
  -s, --slow N          slowhttptest connections per attack (env SLOW_CONNS, default 1000)
  -c, --conns N         wrk connections, the ordinary clients (env WRK_CONNS, default 64)
  -m, --modes "M..."    attacks, of H (slow headers) B (slow body) X (slow read)
                        (env MODES, default "H B X")
  -o, --out DIR         results directory (env RESULTS_DIR, default bench/results/slow-<timestamp>)
other env: RATE (attack connections/s, default 250), INTERVAL (s between slow
           sends, default 5), RAMP_MAX (s, default 20), WRK_THREADS (default 2),
           TURNPIKE_BIN, NGINX_BIN, WRK_BIN, SLOWHTTPTEST_BIN, CPU_PROXY, CPU_LOAD,
           READY_TIMEOUT, WRK_TIMEOUT (s, default 2), KEEP_TMP=1
EOF
}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS=("$@")
DURATION=${DURATION:-10}
SLOW_CONNS=${SLOW_CONNS:-1000}
WRK_CONNS=${WRK_CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
MODES=${MODES:-H B X}
RATE=${RATE:-250}
INTERVAL=${INTERVAL:-5}
RAMP_MAX=${RAMP_MAX:-20}
RESULTS_DIR=${RESULTS_DIR:-}
SLOWHTTPTEST_BIN=${SLOWHTTPTEST_BIN:-slowhttptest}

while [ $# -gt 0 ]; do
	case $1 in
	-d | --duration) DURATION=$2; shift 2 ;;
	-s | --slow) SLOW_CONNS=$2; shift 2 ;;
	-c | --conns) WRK_CONNS=$2; shift 2 ;;
	-m | --modes) MODES=$2; shift 2 ;;
	-o | --out) RESULTS_DIR=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; tpb_die "unknown argument: $1" ;;
	esac
done

for v in DURATION SLOW_CONNS WRK_CONNS WRK_THREADS RATE INTERVAL RAMP_MAX; do
	[[ "${!v}" =~ ^[1-9][0-9]*$ ]] || tpb_die "$v must be a positive whole number (got '${!v}')"
done
for m in $MODES; do
	case $m in H | B | X) ;; *) tpb_die "unknown mode '$m' (known: H B X)" ;; esac
done
command -v "$SLOWHTTPTEST_BIN" >/dev/null ||
	tpb_die "slowhttptest not found ($SLOWHTTPTEST_BIN); on Debian: apt-get install slowhttptest"
[ -x "$TURNPIKE_BIN" ] ||
	tpb_die "turnpike not found: $TURNPIKE_BIN (scripts/build.sh build/rel -DCMAKE_BUILD_TYPE=Release)"

RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/slow-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
SUMMARY=$RESULTS_DIR/summary.txt

tpb_init
tpb_pick_cpus
# slowhttptest + wrk sockets, turnpike's client and upstream sockets, nginx's.
tpb_raise_nofile $(((SLOW_CONNS + WRK_CONNS) * 4 + 1024))

cmdline="DURATION=$DURATION SLOW_CONNS=$SLOW_CONNS WRK_CONNS=$WRK_CONNS MODES=$(tpb_shell_quote "$MODES")"
cmdline+=" RATE=$RATE INTERVAL=$INTERVAL RAMP_MAX=$RAMP_MAX WRK_THREADS=$WRK_THREADS"
cmdline+=" TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN") $(tpb_shell_quote "$0" "${ORIG_ARGS[@]}")"
{
	echo "command: $cmdline"
	echo "date: $(date -Is); host: $(uname -n); nproc: $(nproc); turnpike CPU: ${TPB_CPU_PROXY:-unpinned};" \
		"wrk+nginx+slowhttptest CPU: ${TPB_CPU_LOAD:-unpinned}; open files: $TPB_NOFILE"
	echo "results: $RESULTS_DIR"
} | tee "$SUMMARY"
tpb_versions 2>&1 | grep -v haproxy | tee -a "$SUMMARY"
tpb_log "slowhttptest: $("$SLOWHTTPTEST_BIN" -h 2>&1 | grep -m1 -o 'version [0-9.]*')"

tpb_upstream_start
# the slow-read target: a 1 MiB static file (location /big/ of nginx-upstream.conf.in)
# (nginx's worker runs as an unprivileged user when started by root: it must be able to read it)
mkdir -p "$TPB_TMP/upstream/big"
head -c 1048576 /dev/zero >"$TPB_TMP/upstream/big/1m.bin"
if ! chmod a+x "$TPB_TMP" "$TPB_TMP/upstream" "$TPB_TMP/upstream/big" ||
	! chmod a+r "$TPB_TMP/upstream/big/1m.bin"; then
	tpb_die "cannot make the slow-read target readable"
fi
tpb_proxy_start turnpike plain || tpb_die "turnpike: $TPB_PROXY_ERR"
TP_PID=$TPB_PROXY_PID
PORT=$TPB_PROXY_PORT
code=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 "http://127.0.0.1:$PORT/big/1m.bin")
[ "$code" = "200 1048576" ] || tpb_die "the 1 MiB slow-read target does not come through turnpike (got '$code')"
tpb_log "turnpike pid $TP_PID on 127.0.0.1:$PORT, upstream nginx on :$TPB_UP_PORT"

# Established TCP connections to turnpike's listener (client side sockets
# excluded: only the server side, sport = PORT), into TPB_ESTAB.
estab() {
	TPB_ESTAB=$(ss -Htn state established "( sport = :$PORT )" 2>/dev/null | wc -l)
}

# turnpike_buffer_pool_exhausted_total (receives that found every buffer of
# the pool held and had to wait; builds from before the buffer window only
# have turnpike_buffer_ring_exhausted_total, the same thing there), from the
# admin listener, into TPB_DRY.
ring_dry() {
	TPB_DRY=$(curl -s --max-time 2 "http://127.0.0.1:$TPB_ADMIN_PORT/metrics" |
		awk '$1 == "turnpike_buffer_pool_exhausted_total" {p = $2} $1 == "turnpike_buffer_ring_exhausted_total" {r = $2}
		     END {print (p != "" ? p : r)}')
	[[ "$TPB_DRY" =~ ^[0-9]+$ ]] || TPB_DRY=0
}

rss_kib() {
	awk '/^VmRSS:/ {print $2}' "/proc/$TP_PID/status" 2>/dev/null || echo 0
}

# Starts the RSS sampler (every 0.25 s into FILE); TPB_SAMPLER_PID.
sampler_start() {
	local file=$1
	: >"$file"
	tpb_start "$file.log" "" bash -c "while :; do awk '/^VmRSS:/ {print \$2}' /proc/$TP_PID/status >>'$file' || exit 0; sleep 0.25; done"
	TPB_SAMPLER_PID=$TPB_LAST_PID
}

# Waits (bounded) until at most N connections to turnpike remain.
wait_estab_below() {
	local n=$1 i
	for ((i = 0; i < 300; i++)); do
		estab
		[ "$TPB_ESTAB" -le "$n" ] && return 0
		sleep 0.1
	done
	return 1
}

ROWS=()
Q_RPS=""
Q_P99=""

# phase NAME MODE: MODE is "" for a quiet run, else H, B or X.
phase() {
	local name=$1 mode=$2 tag slow_pid="" held0=0 held1=0 i rss_peak rss_end rps p99 ratio_rps ratio_p99
	local -a sargs
	tag=${mode:-quiet}
	tpb_log "phase: $name"
	if [ -n "$mode" ]; then
		sargs=(-c "$SLOW_CONNS" -r "$RATE" -l $((RAMP_MAX + DURATION + 30)) -i "$INTERVAL" -p 3 -v 1)
		case $mode in
		H) sargs+=(-H -x 24 -u "http://127.0.0.1:$PORT/") ;;
		B) sargs+=(-B -s 65536 -x 24 -u "http://127.0.0.1:$PORT/body") ;;
		X) sargs+=(-X -k 1 -n "$INTERVAL" -w 32 -y 64 -z 32 -u "http://127.0.0.1:$PORT/big/1m.bin") ;;
		esac
		tpb_start "$RESULTS_DIR/slowhttptest-$tag.txt" "$TPB_CPU_LOAD" "$SLOWHTTPTEST_BIN" "${sargs[@]}"
		slow_pid=$TPB_LAST_PID
		# the attack is in place once (nearly) all its connections are held, or RAMP_MAX passed
		for ((i = 0; i < RAMP_MAX * 10; i++)); do
			estab
			[ "$TPB_ESTAB" -ge $((SLOW_CONNS * 95 / 100)) ] && break
			tpb_alive "$slow_pid" || break
			sleep 0.1
		done
		estab
		held0=$TPB_ESTAB
	fi
	sampler_start "$RESULTS_DIR/rss-$tag.txt"
	tpb_cpu_ticks "$TP_PID"
	local t0=$TPB_TICKS
	ring_dry
	local dry0=$TPB_DRY
	if ! tpb_wrk "http://127.0.0.1:$PORT/" "$WRK_CONNS" "$DURATION" "$RESULTS_DIR/wrk-$tag.txt"; then
		TPB_W_REQ=0 TPB_W_DUR_US=0 TPB_W_P99=0 TPB_W_SOCKERR=n/a TPB_W_NON2XX=n/a
	fi
	tpb_cpu_ticks "$TP_PID"
	local dt=$((TPB_TICKS - t0))
	ring_dry
	local dry=$((TPB_DRY - dry0))
	if [ -n "$mode" ]; then
		# wrk's own connections are gone: what is left is the attack's
		estab
		held1=$TPB_ESTAB
	fi
	tpb_stop "$TPB_SAMPLER_PID" 10
	rss_end=$(rss_kib)
	rss_peak=$(awk -v e="$rss_end" 'BEGIN {m = e} $1 > m {m = $1} END {print m}' "$RESULTS_DIR/rss-$tag.txt")
	if [ -n "$slow_pid" ]; then
		tpb_stop "$slow_pid" 50
		wait_estab_below 0 || tpb_warn "$name: $TPB_ESTAB connections still open 30 s after the attack stopped"
	fi
	tpb_alive "$TP_PID" || tpb_die "turnpike died during '$name'; log: $(tail -n 5 "$TPB_TMP/turnpike/stderr.log")"
	read -r rps p99 < <(awk -v req="$TPB_W_REQ" -v us="$TPB_W_DUR_US" -v p="$TPB_W_P99" \
		'BEGIN {printf "%.0f %.2f\n", (us > 0 ? req / (us / 1e6) : 0), p / 1000}')
	if [ -z "$mode" ] && [ -z "$Q_RPS" ]; then
		Q_RPS=$rps
		Q_P99=$p99
	fi
	ratio_rps=$(tpb_ratio "$rps" "$Q_RPS")
	ratio_p99=$(tpb_ratio "$p99" "$Q_P99")
	local cpu_pct
	cpu_pct=$(awk -v dt="$dt" -v hz="$TPB_CLK_TCK" -v us="$TPB_W_DUR_US" \
		'BEGIN {printf "%.0f", (us > 0 ? 100 * dt / hz / (us / 1e6) : 0)}')
	local held="-"
	[ -n "$mode" ] && held="$held0 -> $held1"
	ROWS+=("$(printf '%-14s %-7s %-12s %8s %7s %8s %7s %5s/%-5s %8s %7s %5s %9s' \
		"$name" "${mode:+-$mode}" "$held" "$rps" "$ratio_rps" "$p99" "$ratio_p99" \
		"$TPB_W_SOCKERR" "$TPB_W_NON2XX" "$((rss_peak / 1024))" "$((rss_end / 1024))" "$cpu_pct" "$dry")")
	tpb_log "  ${ROWS[-1]}"
}

phase "quiet" ""
for m in $MODES; do
	case $m in
	H) phase "slow headers" H ;;
	B) phase "slow body" B ;;
	X) phase "slow read" X ;;
	esac
done
phase "quiet (after)" ""

{
	echo
	echo "turnpike under slowhttptest, $SLOW_CONNS attack connections per phase ($RATE/s, a send every ${INTERVAL}s);"
	echo "wrk: $WRK_CONNS connections, ${DURATION}s per phase; ratios relative to the first quiet run"
	echo
	printf '%-14s %-7s %-12s %8s %7s %8s %7s %11s %8s %7s %5s %9s\n' \
		phase attack "held s->e" "req/s" "x quiet" "p99 ms" "x quiet" "sockerr/5xx" \
		"RSS max" "RSS end" "CPU%" "ring dry"
	printf '%s\n' "${ROWS[@]}"
	echo
	echo "held: established attack connections at turnpike when wrk started and when it ended;"
	echo "RSS in MiB (VmRSS of turnpike, sampled every 0.25 s); CPU% = turnpike CPU time / wrk duration;"
	echo "ring dry: receives that found turnpike's buffer pool (4096 x 16 KiB per worker) empty during wrk's run"
	echo "(turnpike_buffer_pool_exhausted_total)."
} | tee -a "$SUMMARY"
