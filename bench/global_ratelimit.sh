#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/global_ratelimit.sh: what sharing a rate limit through Redis costs.
# Two turnpike instances behind the same nginx upstream, each loaded by its
# own wrk (wrk/tenants.lua: TENANTS busy x-tenant values), with a per-tenant
# limit high enough that (almost) nothing is refused; in alternating rounds
# the limit is scope: local (each instance alone) and scope: global (leased
# from one redis-server started here on a free port). Per variant: requests/s
# of both together, CPU microseconds per request of both turnpikes together
# and of their control threads alone (where the store client runs), the worse
# p99 of the two wrk runs, and for global the Redis commands per 1,000
# requests (INFO commandstats before and after the measured run): the lease
# calls turnpike sent, and every command Redis ran, the script's own included.
#
# usage: bench/global_ratelimit.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [-t TENANTS] [-R RATE]
# env: ROUNDS (3), DURATION (10), CONNS (32 per instance), WRK_THREADS (1), WARMUP (2),
#      TENANTS (10), RATE (100000 per tenant per second), REDIS_SERVER, TURNPIKE_BIN, RESULTS_DIR

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS=("$@")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-2}
WRK_THREADS=${WRK_THREADS:-1}
TENANTS=${TENANTS:-10}
RATE=${RATE:-100000}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
RESULTS_DIR=${RESULTS_DIR:-}

while [ $# -gt 0 ]; do
	case $1 in
	-r | --rounds) ROUNDS=$2; shift 2 ;;
	-d | --duration) DURATION=$2; shift 2 ;;
	-c | --conns) CONNS=$2; shift 2 ;;
	-t | --tenants) TENANTS=$2; shift 2 ;;
	-R | --rate) RATE=$2; shift 2 ;;
	-h | --help) sed -n '3,17p' "$0"; exit 0 ;;
	*) tpb_die "unknown argument: $1" ;;
	esac
done
for v in ROUNDS DURATION CONNS WARMUP TENANTS RATE; do
	[[ "${!v}" =~ ^[0-9]+$ ]] || tpb_die "$v must be a whole number (got '${!v}')"
done
[ -x "$TURNPIKE_BIN" ] || tpb_die "turnpike not found: $TURNPIKE_BIN (scripts/build.sh build/rel -DCMAKE_BUILD_TYPE=Release)"
command -v "$REDIS_SERVER" >/dev/null || tpb_die "redis-server not found (scripts/setup.sh)"
command -v redis-cli >/dev/null || tpb_die "redis-cli not found (redis-tools)"

RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/global-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
CSV=$RESULTS_DIR/runs.csv
tpb_init
tpb_pick_cpus
tpb_raise_nofile $((CONNS * 8 + 1024))
echo "command: ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS WRK_THREADS=$WRK_THREADS WARMUP=$WARMUP" \
	"TENANTS=$TENANTS RATE=$RATE TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN") $(tpb_shell_quote "$0" "${ORIG_ARGS[@]}")"
tpb_versions
tpb_upstream_start

# Redis runs with the load generator: its CPU is not counted as turnpike's.
tpb_pick_port
REDIS_PORT=$TPB_PORT
tpb_start "$TPB_TMP/redis.log" "$TPB_CPU_LOAD" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 \
	--save '' --appendonly no --daemonize no
REDIS_PID=$TPB_LAST_PID
for ((i = 0; i < 100; i++)); do
	[ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] && break
	tpb_alive "$REDIS_PID" || tpb_die "redis-server exited: $(tail -3 "$TPB_TMP/redis.log")"
	sleep 0.05
done
[ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = PONG ] || tpb_die "redis-server does not answer"
export TPB_TENANTS=$TENANTS
TPB_WRK_SCRIPT=$TPB_BENCH/wrk/tenants.lua

# "CALLS ALL": the commands turnpike sent (EVALSHA, EVAL, SCRIPT) and every
# command Redis executed, those run inside the script (TIME, GET, SET) included;
# INFO itself is left out.
redis_calls() {
	redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' |
		awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" { n += $3 }
			/^cmdstat_(evalsha|eval|script)/ { top += $3 } END { print top + 0, n + 0 }'
}

# ctl_ticks PID: CPU ticks of the process's main thread, the control thread.
ctl_ticks() {
	local st
	local -a f
	{ st=$(<"/proc/$1/task/$1/stat"); } 2>/dev/null || { TPB_TICKS=0; return; }
	st=${st##*) }
	read -r -a f <<<"$st"
	TPB_TICKS=$((f[11] + f[12]))
}

# start_pair SCOPE: two turnpikes; PIDS, PORTS.
start_pair() {
	local scope=$1 k dir
	PIDS=() PORTS=()
	for k in 0 1; do
		dir=$TPB_TMP/tp$k
		rm -rf "$dir"
		mkdir -p "$dir"
		tpb_pick_port
		local port=$TPB_PORT
		tpb_pick_port
		tpb_render "$TPB_BENCH/conf/turnpike-global.yaml.in" "$dir/turnpike.yaml" plain PORT="$port" \
			ADMIN_PORT="$TPB_PORT" UPSTREAM_PORT="$TPB_UP_PORT" REDIS_PORT="$REDIS_PORT" RATE="$RATE" SCOPE="$scope"
		tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" "$TURNPIKE_BIN" -c "$dir/turnpike.yaml"
		PIDS+=("$TPB_LAST_PID")
		PORTS+=("$port")
		tpb_wait_http "http://127.0.0.1:$port/" "$TPB_LAST_PID" "$READY_TIMEOUT" -H "x-tenant: t0" ||
			tpb_die "turnpike did not start: $(tail -3 "$dir/stderr.log")"
	done
}

# run_pair SECS OUT_PREFIX: both wrk at once; sums into W_REQ, W_NON2XX, W_SOCKERR; W_P99 the worse.
run_pair() {
	local secs=$1 out=$2 k line kv
	local -a wp=()
	for k in 0 1; do
		tpb_start "$out-$k.txt" "$TPB_CPU_LOAD" "$WRK_BIN" -t "$WRK_THREADS" -c "$CONNS" -d "${secs}s" \
			--timeout 2s --latency -s "$TPB_WRK_SCRIPT" "http://127.0.0.1:${PORTS[k]}/"
		wp+=("$TPB_LAST_PID")
	done
	W_REQ=0 W_NON2XX=0 W_SOCKERR=0 W_P99=0 W_DUR=0
	for k in 0 1; do
		wait "${wp[k]}"
		tpb_stop "${wp[k]}" 10
		line=$(grep '^TPBENCH ' "$out-$k.txt" | tail -1)
		[ -n "$line" ] || { tpb_warn "wrk failed; output in $out-$k.txt"; return 1; }
		for kv in ${line#TPBENCH }; do
			case $kv in
			requests=*) W_REQ=$((W_REQ + ${kv#*=})) ;;
			duration_us=*) [ "${kv#*=}" -gt "$W_DUR" ] && W_DUR=${kv#*=} ;;
			status=*) W_NON2XX=$((W_NON2XX + ${kv#*=})) ;;
			connect=* | read=* | write=* | timeout=*) W_SOCKERR=$((W_SOCKERR + ${kv#*=})) ;;
			p99_us=*) [ "${kv#*=}" -gt "$W_P99" ] && W_P99=${kv#*=} ;;
			esac
		done
	done
	return 0
}

echo "round,scope,requests,rps,cpu_us_per_req,ctl_us_per_req,p99_us,non2xx,sockerr,redis_calls,redis_calls_per_1000,redis_cmds,redis_cmds_per_1000" >"$CSV"
declare -A RPS CPU CTL P99 CMDS CALLS
for ((r = 1; r <= ROUNDS; r++)); do
	order="local global"
	[ $((r % 2)) = 0 ] && order="global local"
	for scope in $order; do
		start_pair "$scope"
		[ "$WARMUP" -gt 0 ] && run_pair "$WARMUP" "$RESULTS_DIR/warm-$r-$scope" >/dev/null
		read -r k0 c0 < <(redis_calls)
		tpb_cpu_ticks "${PIDS[0]}"; t0=$TPB_TICKS
		tpb_cpu_ticks "${PIDS[1]}"; t0=$((t0 + TPB_TICKS))
		ctl_ticks "${PIDS[0]}"; x0=$TPB_TICKS
		ctl_ticks "${PIDS[1]}"; x0=$((x0 + TPB_TICKS))
		if run_pair "$DURATION" "$RESULTS_DIR/wrk-$r-$scope"; then
			tpb_cpu_ticks "${PIDS[0]}"; t1=$TPB_TICKS
			tpb_cpu_ticks "${PIDS[1]}"; t1=$((t1 + TPB_TICKS))
			ctl_ticks "${PIDS[0]}"; x1=$TPB_TICKS
			ctl_ticks "${PIDS[1]}"; x1=$((x1 + TPB_TICKS))
			read -r k1 c1 < <(redis_calls)
			read -r rps cpu ctl kper per < <(awk -v n="$W_REQ" -v us="$W_DUR" -v t="$((t1 - t0))" -v hz="$TPB_CLK_TCK" \
				-v x="$((x1 - x0))" -v k="$((k1 - k0))" -v c="$((c1 - c0))" 'BEGIN {
					printf "%.1f %.2f %.2f %.2f %.2f\n", n / (us / 1e6), (n > 0 ? t / hz * 1e6 / n : 0),
					(n > 0 ? x / hz * 1e6 / n : 0), (n > 0 ? k * 1000 / n : 0), (n > 0 ? c * 1000 / n : 0) }')
			echo "$r,$scope,$W_REQ,$rps,$cpu,$ctl,$W_P99,$W_NON2XX,$W_SOCKERR,$((k1 - k0)),$kper,$((c1 - c0)),$per" >>"$CSV"
			RPS[$scope]+="$rps " CPU[$scope]+="$cpu " CTL[$scope]+="$ctl " P99[$scope]+="$W_P99 " CMDS[$scope]+="$per "
			CALLS[$scope]+="$kper "
			tpb_log "round $r $scope: $rps rps, $cpu us/req (control thread $ctl), p99 ${W_P99}us, non2xx $W_NON2XX," \
				"sockerr $W_SOCKERR, redis: $((k1 - k0)) calls ($kper per 1000 requests), $((c1 - c0)) commands ($per)"
		fi
		tpb_stop "${PIDS[0]}" 50
		tpb_stop "${PIDS[1]}" 50
	done
done

echo
printf '%-8s %12s %12s %12s %10s %16s %16s\n' scope rps cpu_us/req ctl_us/req p99_us calls/1000req cmds/1000req
for scope in local global; do
	# shellcheck disable=SC2086
	printf '%-8s %12s %12s %12s %10s %16s %16s\n' "$scope" "$(tpb_median ${RPS[$scope]:-})" \
		"$(tpb_median ${CPU[$scope]:-})" "$(tpb_median ${CTL[$scope]:-})" "$(tpb_median ${P99[$scope]:-})" \
		"$(tpb_median ${CALLS[$scope]:-})" "$(tpb_median ${CMDS[$scope]:-})"
done
echo "redis: calls = lease calls turnpike sent (EVALSHA, EVAL, SCRIPT); cmds = every command Redis ran, the script's own included"
# shellcheck disable=SC2086
echo "cpu global/local: $(tpb_ratio "$(tpb_median ${CPU[global]:-})" "$(tpb_median ${CPU[local]:-})")"
echo "medians over $ROUNDS round(s) of ${DURATION}s, 2 instances x $CONNS connections, $TENANTS tenants; raw rows: $CSV"
