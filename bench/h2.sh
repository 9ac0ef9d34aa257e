#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/h2.sh: turnpike, nginx and HAProxy side by side as HTTP/2 fronts
# (h2c, prior knowledge) of one HTTP/1.1 nginx upstream, loaded by h2load.
#
# Two shapes by default: many connections with a few streams each
# (h2load -c 100 -m 10) and one connection carrying many streams
# (h2load -c 1 -m 100). As in compare.sh, each proxy runs pinned to one CPU
# (one worker/thread, no logging), h2load and the upstream share the other;
# over ROUNDS interleaved rounds each proxy is started fresh, warmed up, then
# measured by one h2load run: requests/s, the proxy's CPU time per request
# (/proc/PID/stat), and the request times h2load reports (it gives min, max,
# mean and sd of "time for request", no percentiles: mean and max are shown).
# Medians per proxy and shape; raw rows go to bench/results/h2-<timestamp>/runs.csv.
# TLS (ALPN h2) is not measured here. See bench/README.md.

set -u -o pipefail

usage() {
	cat <<'EOF'
usage: bench/h2.sh [options]
  -r, --rounds N        rounds (env ROUNDS, default 3)
  -d, --duration S      seconds per measured h2load run (env DURATION, default 10)
  -s, --shapes "C:M..." h2load clients:streams per client (env SHAPES, default "100:10 1:100")
  -w, --warmup S        seconds of h2load before each measured run (env WARMUP, default 2)
  -p, --proxies "P..."  subset/order of "nginx haproxy turnpike" (env PROXIES)
  -o, --out DIR         results directory (env RESULTS_DIR, default bench/results/h2-<timestamp>)
other env: TURNPIKE_BIN, NGINX_BIN, HAPROXY_BIN, H2LOAD_BIN, CPU_PROXY, CPU_LOAD,
           READY_TIMEOUT (s, default 10), KEEP_TMP=1
EOF
}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# lib.sh checks for wrk; this script does not use it
WRK_BIN=${WRK_BIN:-true}
H2LOAD_BIN=${H2LOAD_BIN:-h2load}
ORIG_ARGS=("$@")
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
SHAPES=${SHAPES:-100:10 1:100}
WARMUP=${WARMUP:-2}
PROXIES=${PROXIES:-nginx haproxy turnpike}
RESULTS_DIR=${RESULTS_DIR:-}

while [ $# -gt 0 ]; do
	case $1 in
	-r | --rounds) ROUNDS=$2; shift 2 ;;
	-d | --duration) DURATION=$2; shift 2 ;;
	-s | --shapes) SHAPES=$2; shift 2 ;;
	-w | --warmup) WARMUP=$2; shift 2 ;;
	-p | --proxies) PROXIES=$2; shift 2 ;;
	-o | --out) RESULTS_DIR=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; tpb_die "unknown argument: $1" ;;
	esac
done

for v in ROUNDS DURATION WARMUP; do
	[[ "${!v}" =~ ^[0-9]+$ ]] || tpb_die "$v must be a whole number (got '${!v}')"
done
if [ "$ROUNDS" -lt 1 ] || [ "$DURATION" -lt 1 ]; then
	tpb_die "ROUNDS and DURATION must be at least 1"
fi
max_clients=0
for s in $SHAPES; do
	[[ "$s" =~ ^[1-9][0-9]*:[1-9][0-9]*$ ]] || tpb_die "SHAPES entries are CLIENTS:STREAMS (got '$s')"
	[ "${s%:*}" -gt "$max_clients" ] && max_clients=${s%:*}
done
[ "$max_clients" -gt 0 ] || tpb_die "SHAPES is empty"
known="nginx haproxy turnpike"
for p in $PROXIES; do
	case " $known " in *" $p "*) ;; *) tpb_die "unknown proxy '$p' (known: $known)" ;; esac
done
command -v "$H2LOAD_BIN" >/dev/null || tpb_die "h2load not found (Debian package nghttp2-client)"

RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/h2-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
CSV=$RESULTS_DIR/runs.csv
SUMMARY=$RESULTS_DIR/summary.txt

tpb_init
tpb_pick_cpus
tpb_raise_nofile $((max_clients * 4 + 1024))

cmdline="ROUNDS=$ROUNDS DURATION=$DURATION SHAPES=$(tpb_shell_quote "$SHAPES") WARMUP=$WARMUP"
cmdline+=" PROXIES=$(tpb_shell_quote "$PROXIES") TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN")"
cmdline+=" $(tpb_shell_quote "$0" "${ORIG_ARGS[@]}")"
{
	echo "command: $cmdline"
	echo "date: $(date -Is); host: $(uname -n); nproc: $(nproc); proxy CPU: ${TPB_CPU_PROXY:-unpinned};" \
		"h2load+upstream CPU: ${TPB_CPU_LOAD:-unpinned}; open files: $TPB_NOFILE"
	echo "results: $RESULTS_DIR"
} | tee "$SUMMARY"
{
	tpb_versions 2>&1 | grep -v '^wrk:'
	echo "h2load:   $("$H2LOAD_BIN" --version 2>&1 | head -1)"
} | tee -a "$SUMMARY"

tpb_upstream_start
tpb_log "upstream nginx on 127.0.0.1:$TPB_UP_PORT, pid $TPB_UP_PID"

# The h2c templates instead of compare.sh's.
tpb_proxy_render() {
	local name=$1 dir=$TPB_TMP/$1
	local maxconn=$(((TPB_NOFILE - 100) / 2))
	local -a vars=(DIR="$dir" PORT="$TPB_PROXY_PORT" ADMIN_PORT="$TPB_ADMIN_PORT"
		UPSTREAM_PORT="$TPB_UP_PORT" NOFILE="$TPB_NOFILE" MAXCONN="$maxconn")
	case $name in
	nginx) tpb_render "$TPB_BENCH/conf/nginx-h2.conf.in" "$dir/nginx.conf" plain "${vars[@]}" ;;
	haproxy) tpb_render "$TPB_BENCH/conf/haproxy-h2.cfg.in" "$dir/haproxy.cfg" plain "${vars[@]}" ;;
	turnpike) tpb_render "$TPB_BENCH/conf/turnpike-h2.yaml.in" "$dir/turnpike.yaml" plain "${vars[@]}" ;;
	esac
}

# proxy_start NAME: fresh config and process, pinned to the proxy CPU, ready
# when GET / over h2c (prior knowledge: nginx and HAProxy speak only HTTP/2 on
# these listeners) answers 200 and the upstream saw X-Forwarded-For.
# Sets TPB_PROXY_PID, or returns nonzero with the reason in TPB_PROXY_ERR.
proxy_start() {
	local name=$1 dir=$TPB_TMP/$1 xff
	TPB_PROXY_ERR=""
	rm -rf "$dir"
	mkdir -p "$dir"
	tpb_pick_port
	TPB_PROXY_PORT=$TPB_PORT
	tpb_pick_port
	TPB_ADMIN_PORT=$TPB_PORT
	tpb_proxy_render "$name"
	case $name in
	nginx) tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' ;;
	haproxy) tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" "$HAPROXY_BIN" -db -f "$dir/haproxy.cfg" ;;
	turnpike)
		if [ ! -x "$TURNPIKE_BIN" ]; then
			TPB_PROXY_ERR="binary not found: '$TURNPIKE_BIN' (set TURNPIKE_BIN or build build/rel)"
			return 1
		fi
		tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" "$TURNPIKE_BIN" -c "$dir/turnpike.yaml"
		;;
	esac
	TPB_PROXY_PID=$TPB_LAST_PID
	if ! tpb_wait_http "http://127.0.0.1:$TPB_PROXY_PORT/" "$TPB_PROXY_PID" "$READY_TIMEOUT" --http2-prior-knowledge; then
		TPB_PROXY_ERR="no 200 over h2c on 127.0.0.1:$TPB_PROXY_PORT within ${READY_TIMEOUT}s; log: $(tail -n 3 "$dir/stderr.log" 2>/dev/null | tr '\n' ' ')"
		tpb_stop "$TPB_PROXY_PID" 30
		return 1
	fi
	xff=$(curl -s --http2-prior-knowledge --max-time 2 "http://127.0.0.1:$TPB_PROXY_PORT/xff")
	[[ "$xff" == *127.0.0.1* ]] || tpb_warn "$name: upstream did not see X-Forwarded-For with 127.0.0.1 (got '$xff')"
	return 0
}

# h2load_run URL CLIENTS STREAMS SECONDS OUT: one h2load run pinned to the
# load CPU; parses its summary into H2_* (requests/s, succeeded, failed,
# errored, 2xx, mean and max time for request in microseconds).
to_us() {
	awk -v v="$1" 'BEGIN {
		n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
		if (u == "s") n *= 1e6; else if (u == "ms") n *= 1e3; else if (u != "us") { print "n/a"; exit }
		printf "%.0f\n", n
	}'
}

h2load_run() {
	local url=$1 c=$2 m=$3 secs=$4 out=$5 line
	tpb_start "$out" "$TPB_CPU_LOAD" "$H2LOAD_BIN" -c "$c" -m "$m" -t 1 -D "$secs" "$url"
	local pid=$TPB_LAST_PID
	wait "$pid"
	local rc=$?
	tpb_stop "$pid" 10
	line=$(grep '^finished in' "$out")
	if [ "$rc" != 0 ] || [ -z "$line" ]; then
		tpb_warn "h2load failed (exit $rc); output in $out"
		return 1
	fi
	H2_RPS=$(awk '/^finished in/ {for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^req\/s/) {print $i + 0; exit}}' "$out")
	read -r H2_OK H2_FAILED H2_ERRORED < <(awk '/^requests:/ {
		for (i = 1; i <= NF; i++) { if ($(i + 1) ~ /^succeeded/) s = $i; if ($(i + 1) ~ /^failed/) f = $i; if ($(i + 1) ~ /^errored/) e = $i }
		print s + 0, f + 0, e + 0 }' "$out")
	H2_2XX=$(awk '/^status codes:/ {print $3 + 0}' "$out")
	read -r max mean < <(awk '/^time for request:/ {print $5, $6}' "$out")
	H2_MAX_US=$(to_us "$max")
	H2_MEAN_US=$(to_us "$mean")
	return 0
}

echo "round,clients,streams,proxy,status,rps,succeeded,failed,errored,status_2xx,cpu_ticks,cpu_us_per_req,cpu_pct,req_mean_us,req_max_us,load_cpu_busy_pct,proxy_cpu_other_pct,proxy_cpu_steal_pct" >"$CSV"

csv_fail() {
	echo "$1,$2,$3,$4,$5,,,,,,,,,,,,," >>"$CSV"
}

# run_one ROUND CLIENTS STREAMS PROXY
run_one() {
	local r=$1 c=$2 m=$3 p=$4 url cpu cpu_pct
	if ! proxy_start "$p"; then
		tpb_warn "$p: $TPB_PROXY_ERR"
		csv_fail "$r" "$c" "$m" "$p" start_failed
		return
	fi
	url="http://127.0.0.1:$TPB_PROXY_PORT/"
	if [ "$WARMUP" -gt 0 ]; then
		h2load_run "$url" "$c" "$m" "$WARMUP" "$RESULTS_DIR/h2load-r$r-c$c-m$m-$p-warmup.txt" ||
			tpb_warn "$p: warmup run failed"
	fi
	tpb_sample_begin "$TPB_PROXY_PID"
	if ! h2load_run "$url" "$c" "$m" "$DURATION" "$RESULTS_DIR/h2load-r$r-c$c-m$m-$p.txt"; then
		csv_fail "$r" "$c" "$m" "$p" h2load_failed
		tpb_stop "$TPB_PROXY_PID"
		return
	fi
	tpb_sample_end "$TPB_PROXY_PID"
	if ! tpb_alive "$TPB_PROXY_PID"; then
		tpb_warn "$p died during the run"
		csv_fail "$r" "$c" "$m" "$p" died
		return
	fi
	read -r cpu cpu_pct < <(awk -v req="$H2_OK" -v dt="$TPB_S_TICKS" -v hz="$TPB_CLK_TCK" -v d="$DURATION" 'BEGIN {
		printf "%s %.1f\n", (req > 0 ? sprintf("%.2f", dt * 1e6 / hz / req) : "n/a"), 100 * dt / hz / d }')
	echo "$r,$c,$m,$p,ok,$H2_RPS,$H2_OK,$H2_FAILED,$H2_ERRORED,$H2_2XX,$TPB_S_TICKS,$cpu,$cpu_pct,$H2_MEAN_US,$H2_MAX_US,$TPB_S_LOAD_PCT,$TPB_S_OTHER_PCT,$TPB_S_STEAL_PCT" >>"$CSV"
	tpb_log "  $(printf '%-8s %10s rps  %7s us/req  cpu %5s%%  load %5s%%  other %4s%%  mean %s us  max %s us  failed %s errored %s' \
		"$p" "$H2_RPS" "$cpu" "$cpu_pct" "$TPB_S_LOAD_PCT" "$TPB_S_OTHER_PCT" "$H2_MEAN_US" "$H2_MAX_US" "$H2_FAILED" "$H2_ERRORED")"
	tpb_stop "$TPB_PROXY_PID"
	cp -f "$TPB_TMP/$p"/*.{conf,cfg,yaml} "$RESULTS_DIR/" 2>/dev/null
}

read -r -a plist <<<"$PROXIES"
n=${#plist[@]}
for ((r = 1; r <= ROUNDS; r++)); do
	for s in $SHAPES; do
		tpb_log "round $r/$ROUNDS, h2load -c ${s%:*} -m ${s#*:}:"
		for ((i = 0; i < n; i++)); do
			run_one "$r" "${s%:*}" "${s#*:}" "${plist[(i + r - 1) % n]}"
		done
	done
done

# ------------------------------------------------------------------ report

col() {
	awk -F, -v c="$1" -v m="$2" -v p="$3" -v f="$4" 'NR == 1 {for (i = 1; i <= NF; i++) h[$i] = i; next}
		$2 == c && $3 == m && $4 == p && $5 == "ok" {print $h[f]}' "$CSV"
}

{
	echo
	echo "medians over $ROUNDS round(s) of ${DURATION}s; cpu_us/req = proxy CPU time per request;"
	echo "cpu% = proxy CPU use (100 = its CPU saturated); load% = busy share of the h2load+upstream CPU;"
	echo "mean_ms / max_ms = h2load's \"time for request\" (it prints no percentiles); failed+errored per run"
	for s in $SHAPES; do
		c=${s%:*} m=${s#*:}
		echo
		echo "== h2load -c $c -m $m =="
		printf '%-9s %6s %10s %11s %6s %6s %8s %8s %8s\n' proxy rounds rps cpu_us/req cpu% load% mean_ms max_ms errors
		declare -A med_rps=() med_cpu=()
		for p in $PROXIES; do
			ok=$(col "$c" "$m" "$p" rps | wc -l)
			if [ "$ok" = 0 ]; then
				printf '%-9s %6s %10s %11s %6s %6s %8s %8s %8s\n' "$p" "0/$ROUNDS" n/a n/a n/a n/a n/a n/a n/a
				med_rps[$p]=n/a med_cpu[$p]=n/a
				continue
			fi
			# shellcheck disable=SC2046 # one value per word is wanted
			{
				med_rps[$p]=$(tpb_median $(col "$c" "$m" "$p" rps))
				med_cpu[$p]=$(tpb_median $(col "$c" "$m" "$p" cpu_us_per_req))
				pct=$(tpb_median $(col "$c" "$m" "$p" cpu_pct))
				load=$(tpb_median $(col "$c" "$m" "$p" load_cpu_busy_pct))
				mean=$(tpb_median $(col "$c" "$m" "$p" req_mean_us))
				max=$(tpb_median $(col "$c" "$m" "$p" req_max_us))
				errs=$(tpb_median $(awk -F, -v c="$c" -v m="$m" -v p="$p" 'NR > 1 && $2 == c && $3 == m && $4 == p && $5 == "ok" {print $8 + $9}' "$CSV"))
			}
			printf '%-9s %6s %10.0f %11.2f %6.0f %6.0f %8.2f %8.2f %8s\n' "$p" "$ok/$ROUNDS" "${med_rps[$p]}" \
				"${med_cpu[$p]}" "$pct" "$load" "$(awk -v u="$mean" 'BEGIN {print u / 1000}')" \
				"$(awk -v u="$max" 'BEGIN {print u / 1000}')" "$errs"
		done
		for base in nginx haproxy; do
			case " $PROXIES " in *" $base "*) ;; *) continue ;; esac
			case " $PROXIES " in *" turnpike "*) ;; *) continue ;; esac
			printf 'turnpike/%-8s rps %s   cpu_us/req %s\n' "$base" \
				"$(tpb_ratio "${med_rps[turnpike]}" "${med_rps[$base]}")" \
				"$(tpb_ratio "${med_cpu[turnpike]}" "${med_cpu[$base]}")"
		done
		unset med_rps med_cpu
	done
	noisy=$(awk -F, 'NR > 1 && $5 == "ok" && ($17 > 5 || $18 > 2) {n++} END {print n + 0}' "$CSV")
	if [ "$noisy" -gt 0 ]; then
		echo
		echo "note: in $noisy run(s) more than 5% of the proxy's CPU went to other work or 2% was"
		echo "stolen by the hypervisor (columns proxy_cpu_other_pct, proxy_cpu_steal_pct): noisy machine"
	fi
	echo
	echo "raw rows: $CSV"
} | tee -a "$SUMMARY"
