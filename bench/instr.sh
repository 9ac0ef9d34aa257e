#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/instr.sh: instructions per proxied request, counted by callgrind, so
# that CPU cost can be compared between builds on a noisy machine.
#
# turnpike (one worker, the compare.sh configuration) runs under
# valgrind --tool=callgrind with instrumentation off. After a warm-up of
# WARM requests (pools filled, buffers and slabs touched, caches of the code
# paths populated) instrumentation is switched on (callgrind_control -i on),
# exactly REQUESTS keep-alive GET requests are sent over CONNS connections
# by bench/reqs.c (one in flight per connection), and instrumentation is
# switched off again before anything else happens. The counts therefore
# cover those requests, the CONNS accepts and closes, and the few idle loop
# iterations between the switches (negligible: the loop wakes at most once a
# second when idle). The ring counters (turnpike_ring_*_total in /metrics),
# read before and after, give SQEs, CQEs and loop iterations per request.
# See bench/README.md.

set -u -o pipefail

usage() {
	cat <<'EOF'
usage: bench/instr.sh [options]
  -n, --requests N    measured requests (env REQUESTS, default 20000)
  -c, --conns N       client connections (env CONNS, default 64)
  -w, --warm N        warm-up requests before counting (env WARM, default 4000)
  -t, --top N         functions listed (env TOP, default 25)
  -o, --out DIR       keep the callgrind output and the report in DIR
                      (env RESULTS_DIR, default bench/results/instr-<timestamp>)
other env: TURNPIKE_BIN, CPU_PROXY, CPU_LOAD, READY_TIMEOUT (s, default 60), KEEP_TMP=1
EOF
}

# valgrind starts slowly: a longer default than lib.sh's 10 s
READY_TIMEOUT=${READY_TIMEOUT:-60}
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS=("$@")
REQUESTS=${REQUESTS:-20000}
CONNS=${CONNS:-64}
WARM=${WARM:-4000}
TOP=${TOP:-25}
RESULTS_DIR=${RESULTS_DIR:-}

while [ $# -gt 0 ]; do
	case $1 in
	-n | --requests) REQUESTS=$2; shift 2 ;;
	-c | --conns) CONNS=$2; shift 2 ;;
	-w | --warm) WARM=$2; shift 2 ;;
	-t | --top) TOP=$2; shift 2 ;;
	-o | --out) RESULTS_DIR=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; tpb_die "unknown argument: $1" ;;
	esac
done
for v in REQUESTS CONNS WARM TOP; do
	[[ "${!v}" =~ ^[1-9][0-9]*$ ]] || tpb_die "$v must be a positive whole number (got '${!v}')"
done
[ "$REQUESTS" -ge "$CONNS" ] && [ "$WARM" -ge "$CONNS" ] || tpb_die "REQUESTS and WARM must be at least CONNS"
for t in valgrind callgrind_control "${CC:-cc}"; do
	command -v "$t" >/dev/null || tpb_die "$t not found (Debian: valgrind, gcc)"
done
[ -x "$TURNPIKE_BIN" ] || tpb_die "turnpike not found at $TURNPIKE_BIN (scripts/build.sh build/rel -DCMAKE_BUILD_TYPE=Release)"

RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/instr-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
SUMMARY=$RESULTS_DIR/summary.txt

tpb_init
tpb_pick_cpus
tpb_raise_nofile $((CONNS * 4 + 1024))

"${CC:-cc}" -O2 -o "$TPB_TMP/reqs" "$TPB_BENCH/reqs.c" || tpb_die "building bench/reqs.c failed"

{
	echo "command: REQUESTS=$REQUESTS CONNS=$CONNS WARM=$WARM TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN") $(tpb_shell_quote "$0" "${ORIG_ARGS[@]}")"
	echo "date: $(date -Is); turnpike: $TURNPIKE_BIN ($(git -C "$TPB_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
} | tee "$SUMMARY"

tpb_upstream_start
dir=$TPB_TMP/turnpike
mkdir -p "$dir"
tpb_pick_port
TPB_PROXY_PORT=$TPB_PORT
tpb_pick_port
TPB_ADMIN_PORT=$TPB_PORT
tpb_proxy_render turnpike plain a
out=$RESULTS_DIR/callgrind.out
tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" valgrind --tool=callgrind --instr-atstart=no \
	--callgrind-out-file="$out.%p" "$TURNPIKE_BIN" -c "$dir/turnpike.yaml"
pid=$TPB_LAST_PID
tpb_wait_http "http://127.0.0.1:$TPB_PROXY_PORT/" "$pid" ||
	tpb_die "turnpike under callgrind did not answer within ${READY_TIMEOUT}s; log: $(tail -n 5 "$dir/stderr.log")"

# ring_counters: "sqes cqes waits" from /metrics.
ring_counters() {
	curl -s --max-time 10 "http://127.0.0.1:$TPB_ADMIN_PORT/metrics" | awk '
		/^turnpike_ring_sqes_total / {s = $2} /^turnpike_ring_cqes_total / {c = $2}
		/^turnpike_ring_waits_total / {w = $2} END {print s + 0, c + 0, w + 0}'
}

# Runs reqs pinned to the load CPU; prints its REQS line.
run_reqs() {
	local n=$1 line
	if [ -n "$TPB_CPU_LOAD" ]; then
		line=$(taskset -c "$TPB_CPU_LOAD" "$TPB_TMP/reqs" 127.0.0.1 "$TPB_PROXY_PORT" "$CONNS" "$n")
	else
		line=$("$TPB_TMP/reqs" 127.0.0.1 "$TPB_PROXY_PORT" "$CONNS" "$n")
	fi
	echo "$line"
	[[ "$line" == *" non2xx=0 errors=0 "* ]] || tpb_die "requests failed: $line"
}

tpb_log "warm-up: $WARM requests"
run_reqs "$WARM" >/dev/null
read -r s0 c0 w0 < <(ring_counters)
callgrind_control -i on "$pid" >/dev/null || tpb_die "callgrind_control -i on failed"
line=$(run_reqs "$REQUESTS")
callgrind_control -i off "$pid" >/dev/null || tpb_die "callgrind_control -i off failed"
read -r s1 c1 w1 < <(ring_counters)
callgrind_control -d "$pid" >/dev/null || tpb_die "callgrind_control -d failed"
tpb_stop "$pid" 300
tpb_log "measured: $line"

# The dump taken by callgrind_control -d is the last numbered file; the one
# written at exit holds only the shutdown (instrumentation off) and is dropped.
f=$(ls -1 "$out.$pid".* 2>/dev/null | sort -t. -k3 -n | tail -1)
[ -n "$f" ] && [ -s "$f" ] || tpb_die "no callgrind dump found ($out.$pid.*)"
mv "$f" "$out"
rm -f "$out.$pid" "$out.$pid".*
{
	echo "requests: $line"
	awk -v n="$REQUESTS" -v s="$((s1 - s0))" -v c="$((c1 - c0))" -v w="$((w1 - w0))" 'BEGIN {
		printf "RING sqes_per_req=%.2f cqes_per_req=%.2f waits_per_req=%.3f (sqes=%d cqes=%d waits=%d)\n",
			s / n, c / n, w / n, s, c, w }'
	/usr/bin/python3 "$TPB_BENCH/instr_report.py" "$out" "$REQUESTS" "$TOP"
	echo
	echo "callgrind output: $out (callgrind_annotate --inclusive=yes $out)"
} | tee -a "$SUMMARY"
