#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/reload.sh: reload under load. For each proxy (turnpike, nginx,
# HAProxy, set up as in compare.sh) two wrk runs of DURATION seconds: one
# plain, one while the configuration is rewritten and a reload triggered
# every INTERVAL_MS milliseconds. Reports requests/s and errors (non-2xx and
# socket errors) of both runs and their ratio.
#
# Every reload really changes something: the configuration alternates the
# value of a response header X-Bench-Gen between "a" and "b", and after the
# run the script checks that the proxy serves the value of the last reload.
# Reload triggers: turnpike SIGHUP; nginx `nginx -p DIR -c CONF -s reload`;
# HAProxy in master-worker mode (-W) SIGUSR2 to the master.
# See bench/README.md.

set -u -o pipefail

usage() {
	cat <<'EOF'
usage: bench/reload.sh [options]
  -d, --duration S      seconds per wrk run (env DURATION, default 10)
  -c, --conns N         wrk connections (env CONNS, default 64)
  -t, --threads N       wrk threads (env WRK_THREADS, default 2)
  -i, --interval MS     milliseconds between reloads (env INTERVAL_MS, default 100)
  -w, --warmup S        seconds of warmup before each run (env WARMUP, default 1)
  -p, --proxies "P..."  subset/order of "nginx haproxy turnpike" (env PROXIES)
  -o, --out DIR         results directory (env RESULTS_DIR,
                        default bench/results/reload-<timestamp>)
other env: TURNPIKE_BIN, NGINX_BIN, HAPROXY_BIN, WRK_BIN, PYTHON, CPU_PROXY, CPU_LOAD,
           READY_TIMEOUT (s, default 10), WRK_TIMEOUT (s, default 2), KEEP_TMP=1
EOF
}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS=("$@")
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
INTERVAL_MS=${INTERVAL_MS:-100}
PYTHON=${PYTHON:-/usr/bin/python3}
WARMUP=${WARMUP:-1}
PROXIES=${PROXIES:-$TPB_PROXIES_ALL}
RESULTS_DIR=${RESULTS_DIR:-}

while [ $# -gt 0 ]; do
	case $1 in
	-d | --duration) DURATION=$2; shift 2 ;;
	-c | --conns) CONNS=$2; shift 2 ;;
	-t | --threads) WRK_THREADS=$2; shift 2 ;;
	-i | --interval) INTERVAL_MS=$2; shift 2 ;;
	-w | --warmup) WARMUP=$2; shift 2 ;;
	-p | --proxies) PROXIES=$2; shift 2 ;;
	-o | --out) RESULTS_DIR=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; tpb_die "unknown argument: $1" ;;
	esac
done

for v in DURATION CONNS WRK_THREADS INTERVAL_MS; do
	[[ "${!v}" =~ ^[1-9][0-9]*$ ]] || tpb_die "$v must be a positive whole number (got '${!v}')"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || tpb_die "WARMUP must be a whole number (got '$WARMUP')"
for p in $PROXIES; do
	case " $TPB_PROXIES_ALL " in *" $p "*) ;; *) tpb_die "unknown proxy '$p' (known: $TPB_PROXIES_ALL)" ;; esac
done

RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/reload-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
CSV=$RESULTS_DIR/reload.csv
SUMMARY=$RESULTS_DIR/summary.txt

tpb_init
tpb_pick_cpus
tpb_raise_nofile $((CONNS * 4 + 1024))

cmdline="DURATION=$DURATION CONNS=$CONNS WRK_THREADS=$WRK_THREADS INTERVAL_MS=$INTERVAL_MS WARMUP=$WARMUP"
cmdline+=" PROXIES=$(tpb_shell_quote "$PROXIES") TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN")"
cmdline+=" $(tpb_shell_quote "$0" "${ORIG_ARGS[@]}")"
{
	echo "command: $cmdline"
	echo "date: $(date -Is); host: $(uname -n); nproc: $(nproc); proxy CPU: ${TPB_CPU_PROXY:-unpinned};" \
		"wrk+upstream+reloader CPU: ${TPB_CPU_LOAD:-unpinned}"
	echo "results: $RESULTS_DIR"
} | tee "$SUMMARY"
tpb_versions 2>&1 | tee -a "$SUMMARY"

tpb_upstream_start
tpb_log "upstream nginx on 127.0.0.1:$TPB_UP_PORT, pid $TPB_UP_PID"

echo "proxy,run,status,requests,duration_s,rps,p99_us,non2xx,err_connect,err_read,err_write,err_timeout,reloads_sent,reloads_applied,final_gen_ok,cpu_ticks,cpu_us_per_req,load_cpu_busy_pct,proxy_cpu_other_pct,proxy_cpu_steal_pct" >"$CSV"

# reloader NAME PID CONF: execs bench/reloader.py, which until killed writes
# the other generation's config over CONF every INTERVAL_MS and triggers a
# reload (see its header: one process without forks, so the trigger costs the
# load CPU next to nothing). Both variants are rendered beforehand as CONF.a and
# CONF.b. The count and last generation sent go to $TPB_TMP/reloads after each.
reloader() {
	exec "$PYTHON" "$TPB_BENCH/reloader.py" --name "$1" --pid "$2" --conf "$3" \
		--interval-ms "$INTERVAL_MS" --state "$TPB_TMP/reloads"
}

# Reloads the proxy's own log says it performed (or "?" when it cannot tell).
applied_reloads() {
	local name=$1 dir=$TPB_TMP/$1 n
	case $name in
	# Both log one line at the first start and one per successful reload; a
	# reload that failed (bad or truncated file) logs an error instead.
	nginx) n=$(($(grep -c 'start worker processes$' "$dir/error.log" 2>/dev/null) - 1)) ;;
	haproxy) n=$(($(grep -c 'Loading success' "$dir/stderr.log" 2>/dev/null) - 1)) ;;
	turnpike)
		n=$(curl -s --max-time 2 "http://127.0.0.1:$TPB_ADMIN_PORT/metrics" 2>/dev/null |
			awk '/^turnpike_config_reloads_total\{.*result="success"/ {print $2 + 0}')
		;;
	esac
	echo "${n:-?}"
}

# run_one NAME RUN: RUN is "base" (no reloads) or "reload".
run_one() {
	local name=$1 run=$2 dir=$TPB_TMP/$1 url rpid sent=0 last=a final_ok=- applied=- i hdr
	if ! tpb_proxy_start "$name" reload a; then
		tpb_warn "$name: $TPB_PROXY_ERR"
		echo "$name,$run,start_failed,,,,,,,,,,,,,,,,," >>"$CSV"
		ROW_ERR[$name]=$TPB_PROXY_ERR
		return 1
	fi
	url="http://127.0.0.1:$TPB_PROXY_PORT/"
	if [ "$WARMUP" -gt 0 ]; then
		tpb_wrk "$url" "$CONNS" "$WARMUP" "$RESULTS_DIR/wrk-$name-$run-warmup.txt" ||
			tpb_warn "$name: warmup run failed"
	fi
	if [ "$run" = reload ]; then
		# The two variants the reloader alternates between, same ports.
		tpb_proxy_render "$name" reload a
		cp -f "$TPB_PROXY_CONF" "$TPB_PROXY_CONF.a"
		tpb_proxy_render "$name" reload b
		cp -f "$TPB_PROXY_CONF" "$TPB_PROXY_CONF.b"
		cp -f "$TPB_PROXY_CONF.a" "$TPB_PROXY_CONF"
		rm -f "$TPB_TMP/reloads"
		reloader "$name" "$TPB_PROXY_PID" "$TPB_PROXY_CONF" </dev/null &
		rpid=$!
		TPB_PIDS+=("$rpid")
		# Same CPU as wrk: the proxy's CPU only does the proxy's own work.
		[ -n "$TPB_CPU_LOAD" ] && taskset -pc "$TPB_CPU_LOAD" "$rpid" >/dev/null
	fi
	local wrk_ok=1
	# CPU of the whole process tree (master, workers, the ones a reload
	# retires): the reload work is part of what it costs.
	tpb_sample_begin "$TPB_PROXY_PID"
	tpb_wrk "$url" "$CONNS" "$DURATION" "$RESULTS_DIR/wrk-$name-$run.txt" || wrk_ok=0
	if [ "$run" = reload ]; then
		tpb_stop "$rpid" 20
	fi
	tpb_sample_end "$TPB_PROXY_PID"
	if [ "$run" = reload ]; then
		[ -r "$TPB_TMP/reloads" ] && read -r sent last <"$TPB_TMP/reloads"
		# The proxy must end up serving the last generation sent: proof that
		# the reloads were applied, not just signalled. nginx and HAProxy
		# apply asynchronously, so poll for a bounded time.
		final_ok=0
		for ((i = 0; i < 50; i++)); do
			hdr=$(curl -s -D - -o /dev/null --max-time 1 "$url" | tr -d '\r' |
				awk -F': ' 'tolower($1) == "x-bench-gen" {print $2}')
			if [ "$hdr" = "$last" ]; then
				final_ok=1
				break
			fi
			sleep 0.1
		done
		[ "$final_ok" = 1 ] || tpb_warn "$name: serves X-Bench-Gen '$hdr' after the run, expected '$last'"
		applied=$(applied_reloads "$name")
	fi
	local status=ok
	tpb_alive "$TPB_PROXY_PID" || status=died
	[ "$wrk_ok" = 1 ] || status=wrk_failed
	if [ "$status" = wrk_failed ]; then
		echo "$name,$run,$status,,,,,,,,,,$sent,$applied,$final_ok,,,,," >>"$CSV"
	else
		local dur rps cpu
		read -r dur rps cpu < <(awk -v req="$TPB_W_REQ" -v us="$TPB_W_DUR_US" -v dt="$TPB_S_TICKS" \
			-v hz="$TPB_CLK_TCK" 'BEGIN {
				d = us / 1e6
				printf "%.3f %.1f %s\n", d, (d > 0 ? req / d : 0),
					(req > 0 ? sprintf("%.2f", dt * 1e6 / hz / req) : "n/a")
			}')
		echo "$name,$run,$status,$TPB_W_REQ,$dur,$rps,$TPB_W_P99,$TPB_W_NON2XX,$TPB_W_ECONN,$TPB_W_EREAD,$TPB_W_EWRITE,$TPB_W_ETIMEOUT,$sent,$applied,$final_ok,$TPB_S_TICKS,$cpu,$TPB_S_LOAD_PCT,$TPB_S_OTHER_PCT,$TPB_S_STEAL_PCT" >>"$CSV"
		tpb_log "  $(printf '%-8s %-6s %10s rps  %6s us/req  other %4s%%  non2xx %s  sockerr %s (connect %s read %s write %s timeout %s)' \
			"$name" "$run" "$rps" "$cpu" "$TPB_S_OTHER_PCT" "$TPB_W_NON2XX" "$TPB_W_SOCKERR" "$TPB_W_ECONN" "$TPB_W_EREAD" \
			"$TPB_W_EWRITE" "$TPB_W_ETIMEOUT")$([ "$run" = reload ] && echo "  reloads sent $sent applied $applied")"
	fi
	[ "$status" = died ] && tpb_warn "$name died during the $run run"
	tpb_stop "$TPB_PROXY_PID" 150
	cp -f "$dir/stderr.log" "$RESULTS_DIR/$name-$run-stderr.log" 2>/dev/null
	[ -f "$dir/error.log" ] && cp -f "$dir/error.log" "$RESULTS_DIR/$name-$run-error.log"
	return 0
}

declare -A ROW_ERR=()
for p in $PROXIES; do
	tpb_log "$p:"
	run_one "$p" base && run_one "$p" reload
done

# ------------------------------------------------------------------ report

# field PROXY RUN COLUMN: one value from the CSV ("" when absent).
field() {
	awk -F, -v p="$1" -v r="$2" -v f="$3" 'NR == 1 {for (i = 1; i <= NF; i++) h[$i] = i; next}
		$1 == p && $2 == r && $3 == "ok" {print $h[f]}' "$CSV"
}
errs() {
	awk -F, -v p="$1" -v r="$2" 'NR > 1 && $1 == p && $2 == r && $3 == "ok" {print $8 + $9 + $10 + $11 + $12}' "$CSV"
}

{
	echo
	echo "reload under load: $CONNS connections, ${DURATION}s per run, a reload every ${INTERVAL_MS} ms"
	echo "errors = non-2xx + socket errors (connect, read, write, timeout) seen by wrk;"
	echo "cpu = CPU time of the proxy's processes per request; ratio = reload / base"
	printf '%-9s %9s %10s %6s %8s %10s %8s %8s %6s %7s %9s\n' proxy rps_base rps_reload ratio \
		err_base err_reload cpu_base cpu_reload sent applied final_gen
	for p in $PROXIES; do
		rb=$(field "$p" base rps)
		rr=$(field "$p" reload rps)
		if [ -z "$rb" ] && [ -z "$rr" ]; then
			printf '%-9s %9s %10s %6s %8s %10s %8s %8s %6s %7s %9s  (%s)\n' "$p" n/a n/a n/a n/a n/a n/a n/a \
				n/a n/a n/a "${ROW_ERR[$p]:-no successful run}"
			continue
		fi
		fo=$(field "$p" reload final_gen_ok)
		case $fo in 1) fo=ok ;; 0) fo=WRONG ;; *) fo=n/a ;; esac
		printf '%-9s %9.0f %10.0f %6s %8s %10s %8s %8s %6s %7s %9s\n' "$p" "${rb:-0}" "${rr:-0}" \
			"$(tpb_ratio "$rr" "$rb")" "$(errs "$p" base)" "$(errs "$p" reload)" \
			"$(field "$p" base cpu_us_per_req)" "$(field "$p" reload cpu_us_per_req)" \
			"$(field "$p" reload reloads_sent)" "$(field "$p" reload reloads_applied)" "$fo"
	done
	noisy=$(awk -F, 'NR > 1 && $3 == "ok" && ($19 > 5 || $20 > 2) {n++} END {print n + 0}' "$CSV")
	if [ "$noisy" -gt 0 ]; then
		echo
		echo "note: in $noisy run(s) more than 5% of the proxy's CPU went to other work or 2% was"
		echo "stolen by the hypervisor (columns proxy_cpu_other_pct, proxy_cpu_steal_pct): noisy machine"
	fi
	echo
	echo "raw rows: $CSV"
} | tee -a "$SUMMARY"
