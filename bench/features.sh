#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/features.sh: what a feature costs turnpike. For each scenario, turnpike
# runs with and without the feature, in alternating rounds, behind the same
# nginx upstream and wrk load as compare.sh; the table gives requests/s and
# CPU microseconds per request of both, and their ratios.
#
#   ratelimit   a rate limit keyed by header:x-user; wrk (wrk/users.lua)
#               spreads requests over 10,000 x-user values. Both sides send
#               the header, so only the limiter differs.
#   accesslog   the JSON access log written to a file.
#   auth        an RS256 JWT provider on the route; wrk (wrk/tokens.lua) sends
#               the tokens of USERS users (10,000), made before the run by
#               auth_tokens.py with PyJWT. Both sides get the same requests
#               and send the upstream the same headers; only the JWT check
#               (a cache hit once a worker has verified the token) differs.
#               Not in the default SCENARIOS: -s auth.
#
# usage: bench/features.sh [-s "ratelimit accesslog auth"] [-r ROUNDS] [-d SECONDS] [-c CONNS] [-u USERS]
# env: SCENARIOS, ROUNDS (3), DURATION (10), CONNS (64), WRK_THREADS (2), WARMUP (2),
#      USERS (10000), PYTHON (/usr/bin/python3), TURNPIKE_BIN, CPU_PROXY, CPU_LOAD, RESULTS_DIR

set -u -o pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS=("$@")
SCENARIOS=${SCENARIOS:-ratelimit accesslog}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-2}
WRK_THREADS=${WRK_THREADS:-2}
USERS=${USERS:-10000}
PYTHON=${PYTHON:-/usr/bin/python3}
RESULTS_DIR=${RESULTS_DIR:-}

while [ $# -gt 0 ]; do
	case $1 in
	-s | --scenarios) SCENARIOS=$2; shift 2 ;;
	-r | --rounds) ROUNDS=$2; shift 2 ;;
	-d | --duration) DURATION=$2; shift 2 ;;
	-c | --conns) CONNS=$2; shift 2 ;;
	-u | --users) USERS=$2; shift 2 ;;
	-h | --help) sed -n '3,26p' "$0"; exit 0 ;;
	*) tpb_die "unknown argument: $1" ;;
	esac
done
for v in ROUNDS DURATION CONNS WARMUP USERS; do
	[[ "${!v}" =~ ^[0-9]+$ ]] || tpb_die "$v must be a whole number (got '${!v}')"
done
[ -x "$TURNPIKE_BIN" ] || tpb_die "turnpike not found: $TURNPIKE_BIN (scripts/build.sh build/rel -DCMAKE_BUILD_TYPE=Release)"

RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/features-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
CSV=$RESULTS_DIR/runs.csv
tpb_init
tpb_pick_cpus
tpb_raise_nofile $((CONNS * 4 + 1024))
echo "command: SCENARIOS=$(tpb_shell_quote "$SCENARIOS") ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS" \
	"WRK_THREADS=$WRK_THREADS WARMUP=$WARMUP USERS=$USERS TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN") $(tpb_shell_quote "$0" "${ORIG_ARGS[@]}")"
tpb_versions
tpb_upstream_start
AUTH_DIR=$TPB_TMP/auth
case " $SCENARIOS " in
*" auth "*)
	# The keys and tokens exist before the first round: signing 10,000 tokens
	# takes seconds, which must not land inside a measured run.
	[ "$USERS" -ge 1 ] || tpb_die "USERS must be at least 1"
	"$PYTHON" "$TPB_BENCH/auth_tokens.py" --out "$AUTH_DIR" --users "$USERS" --ttl $((86400 + ROUNDS * 4 * (DURATION + WARMUP))) ||
		tpb_die "auth_tokens.py failed"
	export TPB_TOKENS=$AUTH_DIR/tokens.txt
	AUTH_HDR="Authorization: Bearer $(head -1 "$TPB_TOKENS")"
	tpb_log "auth: $USERS RS256 tokens in $TPB_TOKENS; each worker caches 16384 verified tokens," \
		"so with more users than that some requests pay a full verification"
	;;
esac
echo "round,scenario,variant,requests,rps,cpu_us_per_req,p99_us,non2xx,sockerr,proxy_cpu_other_pct" >"$CSV"

# start_variant SCENARIO VARIANT: turnpike with the feature on (VARIANT=on) or off.
start_variant() {
	local scen=$1 var=$2 dir=$TPB_TMP/turnpike script=""
	rm -rf "$dir"
	mkdir -p "$dir"
	tpb_pick_port
	TPB_PROXY_PORT=$TPB_PORT
	tpb_pick_port
	TPB_ADMIN_PORT=$TPB_PORT
	tpb_render "$TPB_BENCH/conf/turnpike-features.yaml.in" "$dir/turnpike.yaml.0" plain DIR="$dir" \
		PORT="$TPB_PROXY_PORT" ADMIN_PORT="$TPB_ADMIN_PORT" UPSTREAM_PORT="$TPB_UP_PORT" AUTH_DIR="$AUTH_DIR"
	script="s|^#@${scen}-off@||"
	[ "$var" = on ] && script="s|^#@${scen}@||"
	sed -e "$script" "$dir/turnpike.yaml.0" >"$dir/turnpike.yaml"
	"$TURNPIKE_BIN" -t -c "$dir/turnpike.yaml" >"$dir/check.log" 2>&1 || tpb_die "turnpike -t: $(cat "$dir/check.log")"
	tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" "$TURNPIKE_BIN" -c "$dir/turnpike.yaml"
	TPB_PROXY_PID=$TPB_LAST_PID
	local -a ready=()
	[ "$scen" = auth ] && ready=(-H "$AUTH_HDR")
	tpb_wait_http "http://127.0.0.1:$TPB_PROXY_PORT/" "$TPB_PROXY_PID" "$READY_TIMEOUT" "${ready[@]}" ||
		tpb_die "turnpike did not start: $(tail -3 "$dir/stderr.log")"
	if [ "$scen" = auth ] && [ "$var" = on ]; then
		# without a token the route must refuse: otherwise "on" measures nothing
		local code
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$TPB_PROXY_PORT/")
		[ "$code" = 401 ] || tpb_die "auth on: a request without a token got $code, not 401"
	fi
}

declare -A RPS CPU
for ((r = 1; r <= ROUNDS; r++)); do
	for scen in $SCENARIOS; do
		case $scen in
		ratelimit) TPB_WRK_SCRIPT=$TPB_BENCH/wrk/users.lua ;;
		accesslog) TPB_WRK_SCRIPT=$TPB_BENCH/wrk/report.lua ;;
		auth) TPB_WRK_SCRIPT=$TPB_BENCH/wrk/tokens.lua ;;
		*) tpb_die "unknown scenario: $scen" ;;
		esac
		# alternate which variant goes first, so drift favours neither
		order="off on"
		[ $((r % 2)) = 0 ] && order="on off"
		for var in $order; do
			start_variant "$scen" "$var"
			url="http://127.0.0.1:$TPB_PROXY_PORT/"
			[ "$WARMUP" -gt 0 ] && tpb_wrk "$url" "$CONNS" "$WARMUP" "$RESULTS_DIR/warm-$r-$scen-$var.txt" >/dev/null
			tpb_sample_begin "$TPB_PROXY_PID"
			if tpb_wrk "$url" "$CONNS" "$DURATION" "$RESULTS_DIR/wrk-$r-$scen-$var.txt"; then
				tpb_sample_end "$TPB_PROXY_PID"
				read -r rps cpu < <(awk -v n="$TPB_W_REQ" -v us="$TPB_W_DUR_US" -v t="$TPB_S_TICKS" -v hz="$TPB_CLK_TCK" \
					'BEGIN { printf "%.1f %.2f\n", n / (us / 1e6), (n > 0 ? t / hz * 1e6 / n : 0) }')
				echo "$r,$scen,$var,$TPB_W_REQ,$rps,$cpu,$TPB_W_P99,$TPB_W_NON2XX,$TPB_W_SOCKERR,$TPB_S_OTHER_PCT" >>"$CSV"
				RPS[$scen,$var]+="$rps "
				CPU[$scen,$var]+="$cpu "
				[ "$TPB_W_NON2XX" -gt 0 ] && tpb_warn "$scen $var: $TPB_W_NON2XX responses >= 400: this run measured refusals too"
				tpb_log "round $r $scen $var: $rps rps, $cpu us/req, p99 ${TPB_W_P99}us, non2xx $TPB_W_NON2XX, sockerr $TPB_W_SOCKERR, other ${TPB_S_OTHER_PCT}%"
			fi
			tpb_stop "$TPB_PROXY_PID" 50
		done
	done
done

echo
printf '%-10s %12s %12s %8s %14s %14s %8s\n' scenario "rps off" "rps on" ratio "cpu_us off" "cpu_us on" ratio
for scen in $SCENARIOS; do
	# shellcheck disable=SC2086
	ro=$(tpb_median ${RPS[$scen,off]:-}) rn=$(tpb_median ${RPS[$scen,on]:-})
	# shellcheck disable=SC2086
	co=$(tpb_median ${CPU[$scen,off]:-}) cn=$(tpb_median ${CPU[$scen,on]:-})
	printf '%-10s %12s %12s %8s %14s %14s %8s\n' "$scen" "$ro" "$rn" "$(tpb_ratio "$rn" "$ro")" "$co" "$cn" "$(tpb_ratio "$cn" "$co")"
done
echo "medians over $ROUNDS round(s) of ${DURATION}s at $CONNS connections; raw rows: $CSV"
