#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/grpc.sh: gRPC unary calls through turnpike against the same calls
# straight to the gRPC server.
#
# The server is bench/grpc_server.py (python3-grpcio, bench.Echo/Unary echoes
# its request); the load is h2load posting a gRPC-framed message of MSG_SIZE
# bytes with content-type application/grpc and te: trailers, over CONNS
# connections with STREAMS concurrent streams each. turnpike runs one worker
# pinned to one CPU (an h2c listener, an upstream with protocol: h2c); h2load
# and the server share the other CPU. Each round measures:
#   direct    h2load -> server
#   turnpike  h2load -> turnpike -> server
# and reports calls/s, failed calls, p50/p99 latency (from h2load's per-request
# log) and, for turnpike, its CPU time per call (/proc/PID/stat over the
# measured run). The Python server is the slower side: calls/s say what it
# manages, and the turnpike row's CPU per call is the figure that speaks about
# the proxy. h2load sees HTTP statuses, not grpc-status: one grpcio call
# through the gateway checks the status before the load starts.
#
# turnpike is taken from $TURNPIKE_BIN (default build/rel/turnpike).

set -u -o pipefail

usage() {
	cat <<'USAGE'
usage: bench/grpc.sh [options]
  -r, --rounds N        rounds (env ROUNDS, default 3)
  -d, --duration S      measured seconds per run (env DURATION, default 10)
  -w, --warmup S        h2load warm-up seconds before each run (env WARMUP, default 2)
  -c, --conns N         h2load connections (env CONNS, default 8)
  -m, --streams N       concurrent streams per connection (env STREAMS, default 16)
  -s, --size B          request message bytes (env MSG_SIZE, default 100)
  -o, --out DIR         results directory (env RESULTS_DIR, default bench/results/<timestamp>)
other env: TURNPIKE_BIN, H2LOAD_BIN, SERVER_THREADS (default 8), CPU_PROXY,
           CPU_LOAD, READY_TIMEOUT (s, default 10), KEEP_TMP=1
USAGE
}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS=("$@")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-8}
STREAMS=${STREAMS:-16}
MSG_SIZE=${MSG_SIZE:-100}
RESULTS_DIR=${RESULTS_DIR:-}
H2LOAD_BIN=${H2LOAD_BIN:-h2load}
SERVER_THREADS=${SERVER_THREADS:-8}
PY=/usr/bin/python3

while [ $# -gt 0 ]; do
	case $1 in
	-r | --rounds) ROUNDS=$2; shift 2 ;;
	-d | --duration) DURATION=$2; shift 2 ;;
	-w | --warmup) WARMUP=$2; shift 2 ;;
	-c | --conns) CONNS=$2; shift 2 ;;
	-m | --streams) STREAMS=$2; shift 2 ;;
	-s | --size) MSG_SIZE=$2; shift 2 ;;
	-o | --out) RESULTS_DIR=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done
for v in ROUNDS DURATION CONNS STREAMS MSG_SIZE; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || tpb_die "$v must be a positive integer (got '${!v}')"
done
[[ $WARMUP =~ ^[0-9]+$ ]] || tpb_die "WARMUP must be a non-negative integer"

# The setup tpb_init does, minus wrk (not used here).
TPB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tpbench.XXXXXX") || tpb_die "mktemp failed"
trap tpb_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
command -v taskset >/dev/null || tpb_die "taskset not found (util-linux)"
command -v ss >/dev/null || tpb_die "ss not found (iproute2)"
command -v "$H2LOAD_BIN" >/dev/null || tpb_die "h2load not found (nghttp2-client)"
$PY -c 'import grpc' 2>/dev/null || tpb_die "python3-grpcio not installed"
TPB_CLK_TCK=$(getconf CLK_TCK) || tpb_die "getconf CLK_TCK failed"
[ -x "$TURNPIKE_BIN" ] || tpb_die "turnpike not found at $TURNPIKE_BIN (scripts/build.sh build/rel -DCMAKE_BUILD_TYPE=Release)"

RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
CSV=$RESULTS_DIR/grpc.csv
echo "round,target,calls_per_s,succeeded,failed,p50_ms,p99_ms,proxy_cpu_us_per_call,load_cpu_pct,other_pct" >"$CSV"

tpb_log "$(printf '%q ' "$0" "${ORIG_ARGS[@]}")# ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP" \
	"CONNS=$CONNS STREAMS=$STREAMS MSG_SIZE=$MSG_SIZE TURNPIKE_BIN=$TURNPIKE_BIN"
tpb_pick_cpus

# gRPC server (with the load generator), then turnpike (alone on its CPU)
tpb_pick_port
SERVER_PORT=$TPB_PORT
tpb_start "$TPB_TMP/server.log" "$TPB_CPU_LOAD" "$PY" "$TPB_BENCH/grpc_server.py" serve "$SERVER_PORT" "$SERVER_THREADS"
SERVER_PID=$TPB_LAST_PID
wait_grpc() { # wait_grpc HOST:PORT PID: one good call within READY_TIMEOUT
	local i
	for ((i = 0; i < READY_TIMEOUT * 5; i++)); do
		tpb_alive "$2" || return 1
		"$PY" "$TPB_BENCH/grpc_server.py" check "$1" 2>/dev/null && return 0
		sleep 0.2
	done
	return 1
}
wait_grpc "127.0.0.1:$SERVER_PORT" "$SERVER_PID" || tpb_die "gRPC server did not answer: $(tail -5 "$TPB_TMP/server.log")"

tpb_pick_port
TP_PORT=$TPB_PORT
tpb_render "$TPB_BENCH/conf/turnpike-grpc.yaml.in" "$TPB_TMP/turnpike.yaml" start PORT="$TP_PORT" UPSTREAM_PORT="$SERVER_PORT"
tpb_start "$TPB_TMP/turnpike.log" "$TPB_CPU_PROXY" "$TURNPIKE_BIN" -c "$TPB_TMP/turnpike.yaml"
TP_PID=$TPB_LAST_PID
wait_grpc "127.0.0.1:$TP_PORT" "$TP_PID" ||
	tpb_die "no good gRPC call through turnpike: $(tail -5 "$TPB_TMP/turnpike.log")"

"$PY" "$TPB_BENCH/grpc_server.py" body "$TPB_TMP/body.bin" "$MSG_SIZE"

# run TARGET PORT ROUND: one measured h2load run; appends a CSV row
run() {
	local target=$1 port=$2 round=$3 out="$RESULTS_DIR/h2load-$1-$3.txt" log="$TPB_TMP/h2load-$1-$3.log"
	local rps ok failed lat cpu=""
	local -a cmd=(taskset -c "$TPB_CPU_LOAD" "$H2LOAD_BIN" -D "$DURATION" -c "$CONNS" -m "$STREAMS" -t 1
		-d "$TPB_TMP/body.bin" -H "content-type: application/grpc" -H "te: trailers"
		--log-file="$log" "http://127.0.0.1:$port/bench.Echo/Unary")
	[ -z "$TPB_CPU_LOAD" ] && cmd=("${cmd[@]:2}")
	[ "$WARMUP" -gt 0 ] && cmd+=(--warm-up-time="$WARMUP")
	# h2load's warm-up is part of its run: sample the proxy's CPU over the
	# measured seconds only, starting when the warm-up is over
	TPB_S_LOAD_PCT="" TPB_S_OTHER_PCT="" # measured for the turnpike runs only
	"${cmd[@]}" >"$out" 2>&1 &
	local h2pid=$!
	sleep "$WARMUP"
	[ "$target" = turnpike ] && tpb_sample_begin "$TP_PID"
	wait "$h2pid" || tpb_warn "h2load ($target) exited with $?; see $out"
	[ "$target" = turnpike ] && tpb_sample_end "$TP_PID"
	rps=$(awk '/^finished in/ {print $4}' "$out")
	read -r ok failed < <(awk '/^requests:/ {print $8, $10}' "$out")
	# latency percentiles from the per-request log (3rd column: microseconds to the end of the response)
	lat=$(awk '{print $3}' "$log" 2>/dev/null | sort -n | awk '{v[NR] = $1} END {
		if (NR == 0) { print "n/a n/a"; exit }
		i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
		i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
		printf "%.2f %.2f\n", v[i50] / 1000, v[i99] / 1000 }')
	if [ "$target" = turnpike ] && [ -n "$ok" ] && [ "$ok" -gt 0 ]; then
		cpu=$(awk -v t="$TPB_S_TICKS" -v hz="$TPB_CLK_TCK" -v n="$ok" -v d="$DURATION" -v rps="$rps" \
			'BEGIN { calls = rps * d; if (calls < 1) calls = n; printf "%.1f", t / hz * 1e6 / calls }')
	fi
	echo "$round,$target,${rps:-n/a},${ok:-n/a},${failed:-n/a},${lat% *},${lat#* },${cpu:-},${TPB_S_LOAD_PCT:-},${TPB_S_OTHER_PCT:-}" >>"$CSV"
	tpb_log "round $round $target: ${rps:-n/a} calls/s, ${failed:-?} failed, p50 ${lat% *} ms, p99 ${lat#* } ms${cpu:+, turnpike ${cpu} us CPU/call}"
}

for ((round = 1; round <= ROUNDS; round++)); do
	# alternate the order so neither target always runs on a warmer machine
	if ((round % 2)); then
		run direct "$SERVER_PORT" "$round"
		run turnpike "$TP_PORT" "$round"
	else
		run turnpike "$TP_PORT" "$round"
		run direct "$SERVER_PORT" "$round"
	fi
done

tpb_alive "$TP_PID" || tpb_warn "turnpike exited during the run: $(tail -5 "$TPB_TMP/turnpike.log")"
wait_grpc "127.0.0.1:$TP_PORT" "$TP_PID" || tpb_warn "the last check call through turnpike failed"

# medians per target
echo
printf '%-9s %12s %8s %9s %9s %16s\n' target calls/s failed p50_ms p99_ms cpu_us/call
for target in direct turnpike; do
	awk -F, -v t="$target" 'NR > 1 && $2 == t { n++; r[n] = $3; f += $5; p5[n] = $6; p9[n] = $7; c[n] = $8 }
		function med(a, n,   i, j, x) { for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > x + 0; j--) a[j + 1] = a[j]; a[j + 1] = x }
			return n ? a[int((n + 1) / 2)] : "n/a" }
		END { printf "%-9s %12s %8d %9s %9s %16s\n", t, med(r, n), f, med(p5, n), med(p9, n), (t == "turnpike" ? med(c, n) : "-") }' "$CSV"
done
echo
echo "raw rows: $CSV (figures on a shared or busy machine are noisy)"
