#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/compare.sh: side-by-side throughput/CPU benchmark of turnpike, nginx
# and HAProxy as keep-alive reverse proxies in front of one nginx upstream.
#
# Each proxy runs pinned to one CPU (one worker/thread, no logging); wrk and
# the upstream share the other CPU. Over ROUNDS interleaved rounds (the proxy
# order rotates every round), for every connection count, each proxy is
# started fresh, warmed up, then measured by one wrk run: requests/s, p99
# latency, the proxy's CPU time per request (/proc/PID/stat), upstream
# connections opened per 1000 requests (upstream stub_status) and errors.
# Prints medians per proxy and the turnpike/nginx and turnpike/HAProxy
# ratios; raw per-round rows go to bench/results/<timestamp>/runs.csv.
# The target "direct" (not in the default list) is wrk straight at the
# upstream, no proxy, same pins and wrk parameters: each proxy's req/s is
# then also printed as a ratio to direct's.
# See bench/README.md for how to read the figures.
#
# turnpike is taken from $TURNPIKE_BIN (default build/rel/turnpike); when it
# is missing or does not start, its row says n/a and the others still run.

set -u -o pipefail

usage() {
	cat <<'EOF'
usage: bench/compare.sh [options]
  -r, --rounds N        rounds (env ROUNDS, default 3)
  -d, --duration S      seconds per measured wrk run (env DURATION, default 10)
  -c, --conns "N..."    connection counts (env CONNS, default "64 1000")
  -t, --threads N       wrk threads (env WRK_THREADS, default 2)
  -w, --warmup S        seconds of warmup per proxy per round (env WARMUP, default 2)
  -p, --proxies "P..."  subset/order of "nginx haproxy turnpike direct" (env PROXIES)
  -o, --out DIR         results directory (env RESULTS_DIR,
                        default bench/results/<timestamp>)
proxies: nginx haproxy turnpike (default), and base: a second turnpike build
  (TURNPIKE_BASE_BIN) in the same rounds, for before/after ratios (turnpike/base),
  and direct: wrk straight at the upstream, no proxy (proxies' req/s vs direct)
other env: TURNPIKE_BIN, TURNPIKE_BASE_BIN, NGINX_BIN, HAPROXY_BIN, WRK_BIN, CPU_PROXY, CPU_LOAD,
           READY_TIMEOUT (s, default 10), WRK_TIMEOUT (s, default 2), KEEP_TMP=1
EOF
}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS=("$@")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64 1000}
WRK_THREADS=${WRK_THREADS:-2}
WARMUP=${WARMUP:-2}
PROXIES=${PROXIES:-nginx haproxy turnpike}
RESULTS_DIR=${RESULTS_DIR:-}

while [ $# -gt 0 ]; do
	case $1 in
	-r | --rounds) ROUNDS=$2; shift 2 ;;
	-d | --duration) DURATION=$2; shift 2 ;;
	-c | --conns) CONNS=$2; shift 2 ;;
	-t | --threads) WRK_THREADS=$2; shift 2 ;;
	-w | --warmup) WARMUP=$2; shift 2 ;;
	-p | --proxies) PROXIES=$2; shift 2 ;;
	-o | --out) RESULTS_DIR=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; tpb_die "unknown argument: $1" ;;
	esac
done

for v in ROUNDS DURATION WRK_THREADS WARMUP; do
	[[ "${!v}" =~ ^[0-9]+$ ]] || tpb_die "$v must be a whole number (got '${!v}')"
done
if [ "$ROUNDS" -lt 1 ] || [ "$DURATION" -lt 1 ] || [ "$WRK_THREADS" -lt 1 ]; then
	tpb_die "ROUNDS, DURATION and WRK_THREADS must be at least 1"
fi
max_conns=0
for c in $CONNS; do
	[[ "$c" =~ ^[1-9][0-9]*$ ]] || tpb_die "CONNS entries must be positive numbers (got '$c')"
	[ "$c" -gt "$max_conns" ] && max_conns=$c
done
[ "$max_conns" -gt 0 ] || tpb_die "CONNS is empty"
for p in $PROXIES; do
	case " $TPB_PROXIES_ALL direct " in *" $p "*) ;; *) tpb_die "unknown proxy '$p' (known: $TPB_PROXIES_ALL direct)" ;; esac
done

stamp=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/$stamp}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
CSV=$RESULTS_DIR/runs.csv
SUMMARY=$RESULTS_DIR/summary.txt

tpb_init
tpb_pick_cpus
# wrk: one socket per connection; proxies: client + upstream sockets each.
tpb_raise_nofile $((max_conns * 4 + 1024))

# The exact command, with every setting that shapes the run spelled out, so
# the line can be pasted to reproduce it.
cmdline="ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$(tpb_shell_quote "$CONNS") WRK_THREADS=$WRK_THREADS"
cmdline+=" WARMUP=$WARMUP PROXIES=$(tpb_shell_quote "$PROXIES") TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN")"
[ -n "$TURNPIKE_BASE_BIN" ] && cmdline+=" TURNPIKE_BASE_BIN=$(tpb_shell_quote "$TURNPIKE_BASE_BIN")"
cmdline+=" $(tpb_shell_quote "$0" "${ORIG_ARGS[@]}")"
{
	echo "command: $cmdline"
	echo "date: $(date -Is); host: $(uname -n); nproc: $(nproc); proxy CPU: ${TPB_CPU_PROXY:-unpinned};" \
		"wrk+upstream CPU: ${TPB_CPU_LOAD:-unpinned}; open files: $TPB_NOFILE"
	echo "results: $RESULTS_DIR"
} | tee "$SUMMARY"
tpb_versions 2>&1 | tee -a "$SUMMARY"

tpb_upstream_start
tpb_log "upstream nginx on 127.0.0.1:$TPB_UP_PORT (stub_status on :$TPB_UP_STATUS_PORT), pid $TPB_UP_PID"

echo "round,conns,proxy,status,requests,duration_s,rps,p50_us,p99_us,cpu_ticks,cpu_us_per_req,cpu_pct,upstream_conns,upstream_conns_per_1k,non2xx,err_connect,err_read,err_write,err_timeout,xff_ok,load_cpu_busy_pct,proxy_cpu_other_pct,proxy_cpu_steal_pct" >"$CSV"

TP_NA=""    # reason turnpike is n/a for the rest of the run

# Appends a CSV row for a run that produced no measurement.
csv_fail() {
	echo "$1,$2,$3,$4,,,,,,,,,,,,,,,,,,," >>"$CSV"
}

# run_direct ROUND CONNS: the same warmup and measured wrk run straight at
# the upstream. No proxy, so no proxy CPU and no upstream reuse: those
# columns stay empty (load% is the one that matters: the load CPU alone).
run_direct() {
	local r=$1 c=$2 url="http://127.0.0.1:$TPB_UP_PORT/" dur rps lt li load
	if [ "$WARMUP" -gt 0 ]; then
		tpb_wrk "$url" "$c" "$WARMUP" "$RESULTS_DIR/wrk-r$r-c$c-direct-warmup.txt" ||
			tpb_warn "direct: warmup run failed"
	fi
	# Busy share of the wrk+upstream CPU, as tpb_sample_begin/end measure it
	# for the proxied runs (there is no proxy process to sample here).
	tpb_cpu_stat "$TPB_CPU_LOAD"
	lt=$TPB_CS_TOTAL li=$TPB_CS_IDLE
	if ! tpb_wrk "$url" "$c" "$DURATION" "$RESULTS_DIR/wrk-r$r-c$c-direct.txt"; then
		csv_fail "$r" "$c" direct wrk_failed
		return
	fi
	tpb_cpu_stat "$TPB_CPU_LOAD"
	tpb_alive "$TPB_UP_PID" || tpb_die "the upstream nginx died"
	read -r dur rps load < <(awk -v req="$TPB_W_REQ" -v us="$TPB_W_DUR_US" \
		-v lt=$((TPB_CS_TOTAL - lt)) -v li=$((TPB_CS_IDLE - li)) 'BEGIN {
		d = us / 1e6
		printf "%.3f %.1f %.1f\n", d, (d > 0 ? req / d : 0), (lt > 0 ? 100 * (lt - li) / lt : 0) }')
	echo "$r,$c,direct,ok,$TPB_W_REQ,$dur,$rps,$TPB_W_P50,$TPB_W_P99,,,,,,$TPB_W_NON2XX,$TPB_W_ECONN,$TPB_W_EREAD,$TPB_W_EWRITE,$TPB_W_ETIMEOUT,,$load,," >>"$CSV"
	tpb_log "  $(printf '%-8s %10s rps  %7s us/req  cpu %5s%%  load %5s%%  other %4s%%  p99 %6s ms  up %s/1k  non2xx %s  sockerr %s' \
		direct "$rps" - - "$load" - "$(awk -v u="$TPB_W_P99" 'BEGIN {printf "%.2f", u / 1000}')" \
		- "$TPB_W_NON2XX" "$TPB_W_SOCKERR")"
}

# run_one ROUND CONNS PROXY: one fresh proxy, warmup, one measured wrk run.
run_one() {
	local r=$1 c=$2 p=$3 dir=$TPB_TMP/$3 url a0 a1 req dur rps cpu cpu_pct up up1k
	if [ "$p" = direct ]; then
		run_direct "$r" "$c"
		return
	fi
	if [ "$p" = turnpike ] && [ -n "$TP_NA" ]; then
		csv_fail "$r" "$c" "$p" na
		return
	fi
	if ! tpb_proxy_start "$p" plain; then
		tpb_warn "$p: $TPB_PROXY_ERR"
		[ "$p" = turnpike ] && TP_NA=$TPB_PROXY_ERR
		csv_fail "$r" "$c" "$p" start_failed
		cp -f "$dir"/*.log "$RESULTS_DIR/" 2>/dev/null
		return
	fi
	url="http://127.0.0.1:$TPB_PROXY_PORT/"
	if [ "$WARMUP" -gt 0 ]; then
		tpb_wrk "$url" "$c" "$WARMUP" "$RESULTS_DIR/wrk-r$r-c$c-$p-warmup.txt" ||
			tpb_warn "$p: warmup run failed"
	fi
	tpb_sample_begin "$TPB_PROXY_PID"
	tpb_upstream_accepts || tpb_die "upstream stub_status unreadable"
	a0=$TPB_ACCEPTS
	if ! tpb_wrk "$url" "$c" "$DURATION" "$RESULTS_DIR/wrk-r$r-c$c-$p.txt"; then
		csv_fail "$r" "$c" "$p" wrk_failed
		tpb_stop "$TPB_PROXY_PID"
		return
	fi
	tpb_sample_end "$TPB_PROXY_PID"
	tpb_upstream_accepts || tpb_die "upstream stub_status unreadable"
	a1=$TPB_ACCEPTS
	local dt=$TPB_S_TICKS load_pct=$TPB_S_LOAD_PCT other_pct=$TPB_S_OTHER_PCT steal_pct=$TPB_S_STEAL_PCT
	local status=ok
	if ! tpb_alive "$TPB_PROXY_PID"; then
		# Its CPU time is gone with it: the row would be meaningless.
		tpb_warn "$p died during the run"
		status=died
		[ "$p" = turnpike ] && TP_NA="died during a run"
	fi
	req=$TPB_W_REQ
	# The status read after the run counted its own connection: minus one.
	up=$((a1 - a0 - 1))
	read -r dur rps cpu cpu_pct up1k < <(awk -v req="$req" -v us="$TPB_W_DUR_US" -v dt="$dt" \
		-v hz="$TPB_CLK_TCK" -v up="$up" 'BEGIN {
			d = us / 1e6
			printf "%.3f %.1f %s %.1f %s\n", d, (d > 0 ? req / d : 0),
				(req > 0 ? sprintf("%.2f", dt * 1e6 / hz / req) : "n/a"),
				(d > 0 ? 100 * dt / hz / d : 0),
				(req > 0 ? sprintf("%.3f", up * 1000 / req) : "n/a")
		}')
	if [ "$status" = ok ]; then
		echo "$r,$c,$p,ok,$req,$dur,$rps,$TPB_W_P50,$TPB_W_P99,$dt,$cpu,$cpu_pct,$up,$up1k,$TPB_W_NON2XX,$TPB_W_ECONN,$TPB_W_EREAD,$TPB_W_EWRITE,$TPB_W_ETIMEOUT,$TPB_XFF_OK,$load_pct,$other_pct,$steal_pct" >>"$CSV"
	else
		csv_fail "$r" "$c" "$p" "$status"
	fi
	tpb_log "  $(printf '%-8s %10s rps  %7s us/req  cpu %5s%%  load %5s%%  other %4s%%  p99 %6s ms  up %s/1k  non2xx %s  sockerr %s' \
		"$p" "$rps" "$cpu" "$cpu_pct" "$load_pct" "$other_pct" "$(awk -v u="$TPB_W_P99" 'BEGIN {printf "%.2f", u / 1000}')" \
		"$up1k" "$TPB_W_NON2XX" "$TPB_W_SOCKERR")"
	tpb_stop "$TPB_PROXY_PID"
	cp -f "$TPB_PROXY_CONF" "$RESULTS_DIR/" 2>/dev/null
}

read -r -a plist <<<"$PROXIES"
n=${#plist[@]}
for ((r = 1; r <= ROUNDS; r++)); do
	for c in $CONNS; do
		tpb_log "round $r/$ROUNDS, $c connections:"
		# Rotate the order each round so that no proxy always runs first
		# (cold caches) or last (after the others heated the machine).
		for ((i = 0; i < n; i++)); do
			run_one "$r" "$c" "${plist[(i + r - 1) % n]}"
		done
	done
done

# ------------------------------------------------------------------ report

# col CONNS PROXY FIELD: the values of one CSV column for the ok rows.
col() {
	awk -F, -v c="$1" -v p="$2" -v f="$3" 'NR == 1 {for (i = 1; i <= NF; i++) h[$i] = i; next}
		$2 == c && $3 == p && $4 == "ok" {print $h[f]}' "$CSV"
}

{
	echo
	echo "medians over $ROUNDS round(s) of ${DURATION}s; cpu_us/req = proxy CPU time per request;"
	echo "cpu% = proxy CPU use (100 = its CPU saturated); load% = busy share of the wrk+upstream CPU;"
	echo "up/1k = upstream connections opened per 1000 requests; non2xx, sockerr = wrk error counts per run"
	case " $PROXIES " in *" direct "*)
		echo "direct = wrk straight at the upstream (no proxy: no proxy CPU, no up/1k); the load CPU"
		echo "(wrk + upstream) is the limit there, so 'vs direct' is a share of the load side's capacity" ;;
	esac
	for c in $CONNS; do
		echo
		echo "== $c connections =="
		printf '%-9s %6s %10s %11s %6s %6s %9s %8s %8s %8s\n' proxy rounds rps cpu_us/req cpu% load% p99_ms up/1k non2xx sockerr
		declare -A med_rps=() med_cpu=()
		for p in $PROXIES; do
			ok=$(col "$c" "$p" rps | wc -l)
			if [ "$ok" = 0 ]; then
				reason=""
				[ "$p" = turnpike ] && [ -n "$TP_NA" ] && reason="  ($TP_NA)"
				printf '%-9s %6s %10s %11s %6s %6s %9s %8s %8s %8s%s\n' "$p" "0/$ROUNDS" n/a n/a n/a n/a n/a n/a n/a n/a "$reason"
				med_rps[$p]=n/a
				med_cpu[$p]=n/a
				continue
			fi
			if [ "$p" = direct ]; then
				# shellcheck disable=SC2046 # one value per word is wanted
				{
					med_rps[$p]=$(tpb_median $(col "$c" "$p" rps))
					load=$(tpb_median $(col "$c" "$p" load_cpu_busy_pct))
					p99=$(tpb_median $(col "$c" "$p" p99_us))
					e2=$(tpb_median $(col "$c" "$p" non2xx))
					es=$(tpb_median $(awk -F, -v c="$c" -v p="$p" 'NR > 1 && $2 == c && $3 == p && $4 == "ok" {print $16 + $17 + $18 + $19}' "$CSV"))
				}
				printf '%-9s %6s %10.0f %11s %6s %6.0f %9.2f %8s %8s %8s\n' "$p" "$ok/$ROUNDS" "${med_rps[$p]}" \
					- - "$load" "$(awk -v u="$p99" 'BEGIN {print u / 1000}')" - "$e2" "$es"
				continue
			fi
			# shellcheck disable=SC2046 # one value per word is wanted
			{
				med_rps[$p]=$(tpb_median $(col "$c" "$p" rps))
				med_cpu[$p]=$(tpb_median $(col "$c" "$p" cpu_us_per_req))
				pct=$(tpb_median $(col "$c" "$p" cpu_pct))
				load=$(tpb_median $(col "$c" "$p" load_cpu_busy_pct))
				p99=$(tpb_median $(col "$c" "$p" p99_us))
				up=$(tpb_median $(col "$c" "$p" upstream_conns_per_1k))
				e2=$(tpb_median $(col "$c" "$p" non2xx))
				# Socket errors: wrk's four kinds summed per round, then the median.
				es=$(tpb_median $(awk -F, -v c="$c" -v p="$p" 'NR > 1 && $2 == c && $3 == p && $4 == "ok" {print $16 + $17 + $18 + $19}' "$CSV"))
			}
			printf '%-9s %6s %10.0f %11.2f %6.0f %6.0f %9.2f %8.3f %8s %8s\n' "$p" "$ok/$ROUNDS" "${med_rps[$p]}" \
				"${med_cpu[$p]}" "$pct" "$load" "$(awk -v u="$p99" 'BEGIN {print u / 1000}')" "$up" "$e2" "$es"
		done
		for base in nginx haproxy base; do
			case " $PROXIES " in *" $base "*) ;; *) continue ;; esac
			case " $PROXIES " in *" turnpike "*) ;; *) continue ;; esac
			printf 'turnpike/%-8s rps %s   cpu_us/req %s\n' "$base" \
				"$(tpb_ratio "${med_rps[turnpike]}" "${med_rps[$base]}")" \
				"$(tpb_ratio "${med_cpu[turnpike]}" "${med_cpu[$base]}")"
		done
		case " $PROXIES " in *" direct "*)
			line=""
			for p in $PROXIES; do
				[ "$p" = direct ] && continue
				line+="${line:+, }$p $(tpb_ratio "${med_rps[$p]}" "${med_rps[direct]}")"
			done
			[ -n "$line" ] && echo "req/s vs direct: $line" ;;
		esac
		unset med_rps med_cpu
	done
	# Flag runs disturbed by something else on the proxy's CPU.
	noisy=$(awk -F, 'NR > 1 && $4 == "ok" && ($22 > 5 || $23 > 2) {n++} END {print n + 0}' "$CSV")
	if [ "$noisy" -gt 0 ]; then
		echo
		echo "note: in $noisy run(s) more than 5% of the proxy's CPU went to other work or 2% was"
		echo "stolen by the hypervisor (columns proxy_cpu_other_pct, proxy_cpu_steal_pct): noisy machine"
	fi
	echo
	echo "raw rows: $CSV"
} | tee -a "$SUMMARY"
