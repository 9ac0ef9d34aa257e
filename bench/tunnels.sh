#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/tunnels.sh: side-by-side WebSocket tunnel benchmark of turnpike, nginx
# and HAProxy, each proxying to one WebSocket echo upstream.
#
# Each proxy runs pinned to one CPU (one worker/thread, no logging); the load
# generator and the upstream (bench/tunnel_load.c, bench/ws_echo.c: epoll, C,
# built here with $CC -O2) share the other CPU. Over ROUNDS interleaved
# rounds (the proxy order rotates every round), each proxy is started fresh
# and measured twice:
#   echo  CONNS tunnels (default 1000), each echoing MSG_SIZE-byte messages
#         (default 64) in a closed loop: messages/s, p50/p99 round trip, the
#         proxy's CPU time per message (/proc/PID/stat over the measured
#         seconds exactly);
#   bulk  one tunnel the upstream streams into as fast as it goes: MB/s.
# The same two runs straight to the upstream ("direct") show what the load
# side manages without a proxy. Prints medians per proxy, turnpike/nginx and
# turnpike/HAProxy ratios; raw rows go to bench/results/<timestamp>/tunnels.csv.
#
# turnpike is taken from $TURNPIKE_BIN (default build/rel/turnpike); when it
# is missing, rejects the configuration, does not start or does not tunnel,
# its rows say n/a with the reason and the others still run.

set -u -o pipefail

usage() {
	cat <<'EOF'
usage: bench/tunnels.sh [options]
  -r, --rounds N        rounds (env ROUNDS, default 3)
  -d, --duration S      measured seconds per run (env DURATION, default 10)
  -w, --warmup S        seconds of load before each measured run (env WARMUP, default 2)
  -c, --conns N         tunnels in the echo run (env CONNS, default 1000)
  -s, --size B          echo message payload in bytes, 1..65535 (env MSG_SIZE, default 64)
  -p, --proxies "P..."  subset/order of "nginx haproxy turnpike" (env PROXIES)
  -o, --out DIR         results directory (env RESULTS_DIR,
                        default bench/results/<timestamp>)
other env: TURNPIKE_BIN, NGINX_BIN, HAPROXY_BIN, CC, CPU_PROXY, CPU_LOAD,
           READY_TIMEOUT (s, default 10), KEEP_TMP=1
EOF
}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS=("$@")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-1000}
MSG_SIZE=${MSG_SIZE:-64}
PROXIES=${PROXIES:-nginx haproxy turnpike}
RESULTS_DIR=${RESULTS_DIR:-}
CC=${CC:-gcc}

while [ $# -gt 0 ]; do
	case $1 in
	-r | --rounds) ROUNDS=$2; shift 2 ;;
	-d | --duration) DURATION=$2; shift 2 ;;
	-w | --warmup) WARMUP=$2; shift 2 ;;
	-c | --conns) CONNS=$2; shift 2 ;;
	-s | --size) MSG_SIZE=$2; shift 2 ;;
	-p | --proxies) PROXIES=$2; shift 2 ;;
	-o | --out) RESULTS_DIR=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; tpb_die "unknown argument: $1" ;;
	esac
done

for v in ROUNDS DURATION WARMUP CONNS MSG_SIZE; do
	[[ "${!v}" =~ ^[0-9]+$ ]] || tpb_die "$v must be a whole number (got '${!v}')"
done
if [ "$ROUNDS" -lt 1 ] || [ "$DURATION" -lt 1 ] || [ "$CONNS" -lt 1 ]; then
	tpb_die "ROUNDS, DURATION and CONNS must be at least 1"
fi
if [ "$MSG_SIZE" -lt 1 ] || [ "$MSG_SIZE" -gt 65535 ]; then
	tpb_die "MSG_SIZE must be 1..65535"
fi
for p in $PROXIES; do
	case $p in nginx | haproxy | turnpike) ;; *) tpb_die "unknown proxy '$p' (known: nginx haproxy turnpike)" ;; esac
done

stamp=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/$stamp}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
CSV=$RESULTS_DIR/tunnels.csv
SUMMARY=$RESULTS_DIR/tunnels-summary.txt

tpb_init
tpb_pick_cpus
# load generator: one socket per tunnel; proxies: two each; upstream: one each.
tpb_raise_nofile $((CONNS * 4 + 1024))
[ "$TPB_NOFILE" -ge $((CONNS * 2 + 64)) ] || tpb_die "open files limited to $TPB_NOFILE: too few for $CONNS tunnels"

cmdline="ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS MSG_SIZE=$MSG_SIZE"
cmdline+=" PROXIES=$(tpb_shell_quote "$PROXIES") TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN")"
cmdline+=" $(tpb_shell_quote "$0" "${ORIG_ARGS[@]}")"
{
	echo "command: $cmdline"
	echo "date: $(date -Is); host: $(uname -n); nproc: $(nproc); proxy CPU: ${TPB_CPU_PROXY:-unpinned};" \
		"load+upstream CPU: ${TPB_CPU_LOAD:-unpinned}; open files: $TPB_NOFILE"
	echo "results: $RESULTS_DIR"
} | tee "$SUMMARY"
tpb_versions 2>&1 | grep -v '^wrk:' | tee -a "$SUMMARY"

# ------------------------------------------------------------- load side

for prog in ws_echo tunnel_load; do
	"$CC" -O2 -Wall -Wextra -o "$TPB_TMP/$prog" "$TPB_BENCH/$prog.c" -lcrypto 2>"$TPB_TMP/$prog.cc.log" ||
		{ cat "$TPB_TMP/$prog.cc.log" >&2; tpb_die "building $prog failed ($CC, libssl-dev needed)"; }
done

upstream_start() {
	local try
	for try in 1 2 3; do
		tpb_pick_port
		TPB_UP_PORT=$TPB_PORT
		tpb_start "$TPB_TMP/ws_echo.log" "$TPB_CPU_LOAD" "$TPB_TMP/ws_echo" "$TPB_UP_PORT"
		TPB_UP_PID=$TPB_LAST_PID
		tpb_wait_http "http://127.0.0.1:$TPB_UP_PORT/" "$TPB_UP_PID" && return 0
		tpb_warn "ws_echo did not come up on port $TPB_UP_PORT (try $try): $(tail -n 2 "$TPB_TMP/ws_echo.log")"
		tpb_stop "$TPB_UP_PID" 10
	done
	tpb_die "the WebSocket echo upstream did not start"
}
upstream_start
tpb_log "WebSocket echo upstream on 127.0.0.1:$TPB_UP_PORT, pid $TPB_UP_PID"

# The proxies' configurations for tunnels (replaces lib.sh's, same variables).
tpb_proxy_render() {
	local name=$1 mode=$2 gen=$3 dir=$TPB_TMP/$1
	local maxconn=$(((TPB_NOFILE - 100) / 2))
	local -a vars=(DIR="$dir" PORT="$TPB_PROXY_PORT" ADMIN_PORT="$TPB_ADMIN_PORT"
		UPSTREAM_PORT="$TPB_UP_PORT" NOFILE="$TPB_NOFILE" MAXCONN="$maxconn" GEN="$gen")
	case $name in
	nginx) tpb_render "$TPB_BENCH/conf/nginx-tunnels.conf.in" "$dir/nginx.conf" "$mode" "${vars[@]}" ;;
	haproxy) tpb_render "$TPB_BENCH/conf/haproxy-tunnels.cfg.in" "$dir/haproxy.cfg" "$mode" "${vars[@]}" ;;
	turnpike) tpb_render "$TPB_BENCH/conf/turnpike-tunnels.yaml.in" "$dir/turnpike.yaml" "$mode" "${vars[@]}" ;;
	esac
}

# load MODE PORT OUT PID...: one tunnel_load run pinned to the load CPU, its CPU
# figures for the PIDs (none: direct). Over its measured window (from its
# TPTUN-START line to its exit) the CPUs are sampled (tpb_sample_begin/end on
# the first PID, else the upstream) and the upstream's CPU ticks taken.
# Parses the TPTUN line into TPB_L_*. Returns nonzero when it failed (message
# in TPB_L_ERR).
load() {
	local mode=$1 port=$2 out=$3 line kv rc i sampled=0 up0
	shift 3
	local -a args
	if [ "$mode" = echo ]; then
		args=(echo 127.0.0.1 "$port" "$CONNS" "$MSG_SIZE" "$WARMUP" "$DURATION" "$@")
	else
		args=(bulk 127.0.0.1 "$port" "$WARMUP" "$DURATION" "$@")
	fi
	tpb_start "$out" "$TPB_CPU_LOAD" timeout $((WARMUP + DURATION + 60)) "$TPB_TMP/tunnel_load" "${args[@]}"
	local pid=$TPB_LAST_PID
	# setup (at most 30 s in tunnel_load) and warmup, polled every 20 ms
	for ((i = 0; i < (WARMUP + 40) * 50; i++)); do
		if grep -q '^TPTUN-START' "$out" 2>/dev/null; then
			tpb_sample_begin "${1:-$TPB_UP_PID}"
			tpb_cpu_ticks "$TPB_UP_PID"
			up0=$TPB_TICKS
			sampled=1
			break
		fi
		tpb_alive "$pid" || break
		sleep 0.02
	done
	wait "$pid"
	rc=$?
	if [ "$sampled" = 1 ]; then
		tpb_sample_end "${1:-$TPB_UP_PID}"
		tpb_cpu_ticks "$TPB_UP_PID"
		TPB_L_UP_TICKS=$((TPB_TICKS - up0))
	fi
	tpb_stop "$pid" 10
	line=$(grep '^TPTUN ' "$out" | tail -1)
	if [ "$rc" != 0 ] || [ -z "$line" ] || [ "$sampled" = 0 ]; then
		TPB_L_ERR="tunnel_load $mode exited with $rc: $(grep -v '^TPTUN' "$out" | tail -n 2 | tr '\n' ' ')"
		return 1
	fi
	for kv in ${line#TPTUN }; do
		case $kv in
		messages=*) TPB_L_MSGS=${kv#*=} ;;
		bytes=*) TPB_L_BYTES=${kv#*=} ;;
		duration_us=*) TPB_L_DUR_US=${kv#*=} ;;
		p50_us=*) TPB_L_P50=${kv#*=} ;;
		p99_us=*) TPB_L_P99=${kv#*=} ;;
		cpu_ticks=*) TPB_L_TICKS=${kv#*=} ;;
		self_ticks=*) TPB_L_SELF_TICKS=${kv#*=} ;;
		errors=*) TPB_L_ERRORS=${kv#*=} ;;
		esac
	done
	return 0
}

echo "round,test,proxy,status,conns,messages,bytes,duration_s,msgs_per_s,mb_per_s,p50_us,p99_us,cpu_ticks,cpu_us_per_msg,cpu_pct,load_cpu_busy_pct,errors,load_cpu_own_pct,load_cpu_other_pct,proxy_cpu_other_pct,proxy_cpu_steal_pct" >"$CSV"

TP_NA="" # reason turnpike is n/a for the rest of the run

csv_fail() {
	echo "$1,$2,$3,$4,,,,,,,,,,,,,,,,," >>"$CSV"
}

# measure ROUND TEST PROXY PORT PID...: one load run, one CSV row. Returns
# nonzero when the run failed.
measure() {
	local r=$1 t=$2 p=$3 port=$4 dur mps mbps cpu cpu_pct own other conns=$CONNS
	shift 4
	[ "$t" = bulk ] && conns=1
	if ! load "$t" "$port" "$RESULTS_DIR/load-r$r-$t-$p.txt" "$@"; then
		tpb_warn "$p $t: $TPB_L_ERR"
		csv_fail "$r" "$t" "$p" load_failed
		return 1
	fi
	read -r dur mps mbps cpu cpu_pct own other < <(awk -v m="$TPB_L_MSGS" -v b="$TPB_L_BYTES" -v us="$TPB_L_DUR_US" \
		-v dt="$TPB_L_TICKS" -v hz="$TPB_CLK_TCK" -v direct="$([ $# = 0 ] && echo 1 || echo 0)" \
		-v lt="$((TPB_L_UP_TICKS + TPB_L_SELF_TICKS))" -v busy="$TPB_S_LOAD_PCT" 'BEGIN {
			d = us / 1e6
			own = (d > 0 ? 100 * lt / hz / d : 0)
			if (own > 100) own = 100     # tick sampling jitter
			other = busy - own
			if (other < 0) other = 0
			printf "%.3f %.1f %.1f %s %s %.1f %.1f\n", d, (d > 0 ? m / d : 0), (d > 0 ? b / d / 1e6 : 0),
				(direct || m == 0 ? "n/a" : sprintf("%.2f", dt * 1e6 / hz / m)),
				(direct || d == 0 ? "n/a" : sprintf("%.1f", 100 * dt / hz / d)), own, other
		}')
	local pother=$TPB_S_OTHER_PCT psteal=$TPB_S_STEAL_PCT
	[ $# = 0 ] && pother=n/a psteal=n/a
	echo "$r,$t,$p,ok,$conns,$TPB_L_MSGS,$TPB_L_BYTES,$dur,$mps,$mbps,$TPB_L_P50,$TPB_L_P99,$TPB_L_TICKS,$cpu,$cpu_pct,$TPB_S_LOAD_PCT,$TPB_L_ERRORS,$own,$other,$pother,$psteal" >>"$CSV"
	if [ "$t" = echo ]; then
		tpb_log "  $(printf '%-8s echo %10s msg/s  %7s us/msg  cpu %5s%%  load %5s%% (others %4s%%)  p99 %7s ms' "$p" \
			"$mps" "$cpu" "$cpu_pct" "$TPB_S_LOAD_PCT" "$other" "$(awk -v u="$TPB_L_P99" 'BEGIN {printf "%.2f", u / 1000}')")"
	else
		tpb_log "  $(printf '%-8s bulk %10s MB/s   cpu %5s%%  load %5s%% (others %4s%%)' "$p" "$mbps" "$cpu_pct" \
			"$TPB_S_LOAD_PCT" "$other")"
	fi
}

# run_proxy ROUND PROXY: a fresh proxy, the echo run, the bulk run.
run_proxy() {
	local r=$1 p=$2 dir=$TPB_TMP/$2 t
	local -a pids
	if [ "$p" = turnpike ] && [ -n "$TP_NA" ]; then
		csv_fail "$r" echo "$p" na
		csv_fail "$r" bulk "$p" na
		return
	fi
	if ! tpb_proxy_start "$p" plain; then
		tpb_warn "$p: $TPB_PROXY_ERR"
		[ "$p" = turnpike ] && TP_NA=$TPB_PROXY_ERR
		csv_fail "$r" echo "$p" start_failed
		csv_fail "$r" bulk "$p" start_failed
		cp -f "$dir"/*.log "$RESULTS_DIR/" 2>/dev/null
		return
	fi
	mapfile -t pids < <(tpb_descendants "$TPB_PROXY_PID")
	pids=("$TPB_PROXY_PID" "${pids[@]}")
	for t in echo bulk; do
		if ! measure "$r" "$t" "$p" "$TPB_PROXY_PORT" "${pids[@]}"; then
			# A turnpike without tunnels answers the upgrade with something else:
			# no point in trying again every round.
			[ "$p" = turnpike ] && TP_NA="no tunnel: $TPB_L_ERR"
		fi
		if ! tpb_alive "$TPB_PROXY_PID"; then
			tpb_warn "$p died during the $t run"
			[ "$p" = turnpike ] && TP_NA="died during a run"
			sed -i "\$s/^$r,$t,$p,ok,/$r,$t,$p,died,/" "$CSV"
			break
		fi
	done
	tpb_stop "$TPB_PROXY_PID"
	cp -f "$TPB_PROXY_CONF" "$RESULTS_DIR/" 2>/dev/null
}

read -r -a plist <<<"$PROXIES"
n=${#plist[@]}
for ((r = 1; r <= ROUNDS; r++)); do
	tpb_log "round $r/$ROUNDS:"
	for t in echo bulk; do
		measure "$r" "$t" direct "$TPB_UP_PORT" || true
	done
	for ((i = 0; i < n; i++)); do
		run_proxy "$r" "${plist[(i + r - 1) % n]}"
	done
done

# ------------------------------------------------------------------ report

# col TEST PROXY FIELD: the values of one CSV column for the ok rows.
col() {
	awk -F, -v t="$1" -v p="$2" -v f="$3" 'NR == 1 {for (i = 1; i <= NF; i++) h[$i] = i; next}
		$2 == t && $3 == p && $4 == "ok" {print $h[f]}' "$CSV"
}

# shellcheck disable=SC2046 # one value per word is wanted
{
	echo
	echo "medians over $ROUNDS round(s) of ${DURATION}s; cpu_us/msg = proxy CPU time per echoed message;"
	echo "cpu% = proxy CPU use (100 = its CPU saturated); load% = busy share of the load+upstream CPU"
	echo "(near 100: the load side may have been the limit; compare with the direct row), oth% = the"
	echo "part of load% that was neither the load generator nor the upstream (other processes)"
	echo
	echo "== echo: $CONNS tunnels, $MSG_SIZE-byte messages, closed loop =="
	printf '%-9s %6s %10s %11s %6s %6s %6s %8s %8s %7s\n' proxy rounds msgs/s cpu_us/msg cpu% load% oth% p50_ms p99_ms errors
	declare -A mps=() cpu=() p99=() mbs=()
	for p in direct $PROXIES; do
		ok=$(col echo "$p" msgs_per_s | wc -l)
		if [ "$ok" = 0 ]; then
			reason=""
			[ "$p" = turnpike ] && [ -n "$TP_NA" ] && reason="  ($TP_NA)"
			printf '%-9s %6s %10s %11s %6s %6s %6s %8s %8s %7s%s\n' "$p" "0/$ROUNDS" n/a n/a n/a n/a n/a n/a n/a n/a "$reason"
			mps[$p]=n/a cpu[$p]=n/a p99[$p]=n/a
			continue
		fi
		mps[$p]=$(tpb_median $(col echo "$p" msgs_per_s))
		cpu[$p]=$(tpb_median $(col echo "$p" cpu_us_per_msg))
		p99[$p]=$(tpb_median $(col echo "$p" p99_us))
		printf '%-9s %6s %10.0f %11s %6s %6s %6s %8.2f %8.2f %7s\n' "$p" "$ok/$ROUNDS" "${mps[$p]}" "${cpu[$p]}" \
			"$(tpb_median $(col echo "$p" cpu_pct))" "$(tpb_median $(col echo "$p" load_cpu_busy_pct))" \
			"$(tpb_median $(col echo "$p" load_cpu_other_pct))" \
			"$(awk -v u="$(tpb_median $(col echo "$p" p50_us))" 'BEGIN {print u / 1000}')" \
			"$(awk -v u="${p99[$p]}" 'BEGIN {print u / 1000}')" "$(tpb_median $(col echo "$p" errors))"
	done
	echo
	echo "== bulk: one tunnel, upstream to client =="
	printf '%-9s %6s %10s %6s %6s %6s %10s\n' proxy rounds MB/s cpu% load% oth% vs_direct
	mbs[direct]=$(tpb_median $(col bulk direct mb_per_s))
	for p in direct $PROXIES; do
		ok=$(col bulk "$p" mb_per_s | wc -l)
		if [ "$ok" = 0 ]; then
			reason=""
			[ "$p" = turnpike ] && [ -n "$TP_NA" ] && reason="  ($TP_NA)"
			printf '%-9s %6s %10s %6s %6s %6s %10s%s\n' "$p" "0/$ROUNDS" n/a n/a n/a n/a n/a "$reason"
			mbs[$p]=n/a
			continue
		fi
		mbs[$p]=$(tpb_median $(col bulk "$p" mb_per_s))
		printf '%-9s %6s %10.0f %6s %6s %6s %10s\n' "$p" "$ok/$ROUNDS" "${mbs[$p]}" \
			"$(tpb_median $(col bulk "$p" cpu_pct))" "$(tpb_median $(col bulk "$p" load_cpu_busy_pct))" \
			"$(tpb_median $(col bulk "$p" load_cpu_other_pct))" \
			"$(tpb_ratio "${mbs[$p]}" "${mbs[direct]}")"
	done
	echo
	for base in nginx haproxy; do
		case " $PROXIES " in *" $base "*) ;; *) continue ;; esac
		case " $PROXIES " in *" turnpike "*) ;; *) continue ;; esac
		printf 'turnpike/%-8s msgs/s %s   cpu_us/msg %s   p99 %s   bulk MB/s %s\n' "$base" \
			"$(tpb_ratio "${mps[turnpike]}" "${mps[$base]}")" "$(tpb_ratio "${cpu[turnpike]}" "${cpu[$base]}")" \
			"$(tpb_ratio "${p99[turnpike]}" "${p99[$base]}")" "$(tpb_ratio "${mbs[turnpike]}" "${mbs[$base]}")"
	done
	saturated=$(awk -F, 'NR > 1 && $4 == "ok" && $3 != "direct" && $16 > 95 {n++} END {print n + 0}' "$CSV")
	if [ "$saturated" -gt 0 ]; then
		echo
		echo "note: in $saturated proxied run(s) the load+upstream CPU was over 95% busy: their msgs/s may"
		echo "show the load side's limit rather than the proxy's (column load_cpu_busy_pct)"
	fi
	noisy=$(awk -F, 'NR > 1 && $4 == "ok" && ($19 > 5 || ($20 != "n/a" && $20 > 5) || ($21 != "n/a" && $21 > 2)) {n++}
		END {print n + 0}' "$CSV")
	if [ "$noisy" -gt 0 ]; then
		echo
		echo "note: in $noisy run(s) other processes took more than 5% of the load or the proxy CPU, or the"
		echo "hypervisor stole more than 2% (columns load_cpu_other_pct, proxy_cpu_other_pct,"
		echo "proxy_cpu_steal_pct): noisy machine, rounds differ more than usual"
	fi
	echo
	echo "raw rows: $CSV"
} | tee -a "$SUMMARY"
