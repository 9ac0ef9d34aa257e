# shellcheck shell=bash
# Variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034
# SPDX-License-Identifier: MIT
#
# bench/lib.sh: helpers shared by bench/compare.sh and bench/reload.sh.
# Sourced, never run. Everything here runs in the one bash process of the
# calling script: process bookkeeping (start pinned, stop with a bounded
# wait, kill everything on exit), port selection, template rendering,
# readiness polling, CPU and upstream-connection sampling, wrk runs and
# their parsing, medians.
#
# Conventions: progress and warnings go to stderr, result tables to stdout.
# Functions that return data set TPB_* globals (bash has no cheap way to
# return several values, and command substitution would fork per call).

TPB_BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TPB_ROOT=$(cd "$TPB_BENCH/.." && pwd)

NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}
HAPROXY_BIN=${HAPROXY_BIN:-/usr/sbin/haproxy}
WRK_BIN=${WRK_BIN:-wrk}
TURNPIKE_BIN=${TURNPIKE_BIN:-$TPB_ROOT/build/rel/turnpike}
# Seconds to wait for a process to answer on its port.
READY_TIMEOUT=${READY_TIMEOUT:-10}

TPB_PIDS=()      # every process this script started and has not stopped yet
TPB_PORTS=()     # ports handed out by tpb_pick_port in this run
TPB_TMP=""       # scratch directory (configs, logs, nginx prefixes)

tpb_log() { printf '%s\n' "$*" >&2; }
tpb_warn() { printf 'warning: %s\n' "$*" >&2; }
tpb_die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# ---------------------------------------------------------------- lifecycle

# Creates the scratch directory and installs the cleanup trap. The EXIT trap
# does the work; INT/TERM only turn into an exit so it runs exactly once.
tpb_init() {
	TPB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/tpbench.XXXXXX") || tpb_die "mktemp failed"
	trap tpb_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	command -v curl >/dev/null || tpb_die "curl not found"
	command -v taskset >/dev/null || tpb_die "taskset not found (util-linux)"
	command -v ss >/dev/null || tpb_die "ss not found (iproute2)"
	command -v "$WRK_BIN" >/dev/null || tpb_die "wrk not found ($WRK_BIN)"
	TPB_CLK_TCK=$(getconf CLK_TCK) || tpb_die "getconf CLK_TCK failed"
}

tpb_cleanup() {
	local i
	trap - EXIT INT TERM
	# Newest first: proxies and wrk before the upstream they depend on.
	for ((i = ${#TPB_PIDS[@]} - 1; i >= 0; i--)); do
		tpb_stop "${TPB_PIDS[i]}" 50
	done
	TPB_PIDS=()
	if [ -n "$TPB_TMP" ] && [ -d "$TPB_TMP" ]; then
		if [ "${KEEP_TMP:-0}" = 1 ]; then
			tpb_log "kept scratch directory $TPB_TMP"
		else
			rm -rf "$TPB_TMP"
		fi
	fi
}

# ----------------------------------------------------------------- CPU pins

# Picks the CPU for the proxy under test (TPB_CPU_PROXY) and the CPU shared by
# wrk and the upstream (TPB_CPU_LOAD) from the CPUs this process may use, so
# a run inside a restricted cpuset still pins to CPUs it is allowed on.
# CPU_PROXY / CPU_LOAD override. With one CPU nothing is pinned.
tpb_pick_cpus() {
	local list part lo hi c
	local -a cpus=()
	list=$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status)
	IFS=, read -r -a parts <<<"$list"
	for part in "${parts[@]}"; do
		lo=${part%-*}
		hi=${part#*-}
		for ((c = lo; c <= hi; c++)); do cpus+=("$c"); done
	done
	if [ "${#cpus[@]}" -ge 2 ]; then
		TPB_CPU_PROXY=${CPU_PROXY:-${cpus[0]}}
		TPB_CPU_LOAD=${CPU_LOAD:-${cpus[1]}}
	else
		tpb_warn "only ${#cpus[@]} CPU available (nproc=$(nproc)): nothing is pinned;" \
			"the proxy, wrk and the upstream share one CPU, so figures mostly measure contention"
		TPB_CPU_PROXY=${CPU_PROXY:-}
		TPB_CPU_LOAD=${CPU_LOAD:-}
	fi
}

# Raises the open-file limit so that wrk, the proxies (client + upstream
# sockets) and the upstream all fit NEED descriptors. Children inherit it.
tpb_raise_nofile() {
	local need=$1 soft hard
	soft=$(ulimit -Sn)
	hard=$(ulimit -Hn)
	if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
		# Only root (CAP_SYS_RESOURCE) may raise the hard limit.
		ulimit -Hn "$need" 2>/dev/null && hard=$need
	fi
	if [ "$soft" != unlimited ] && [ "$soft" -lt "$need" ]; then
		if [ "$hard" = unlimited ] || [ "$hard" -ge "$need" ]; then
			ulimit -Sn "$need"
		else
			ulimit -Sn "$hard"
			tpb_warn "open files limited to $hard (wanted $need); large CONNS may fail"
		fi
	fi
	TPB_NOFILE=$(ulimit -Sn)
	[ "$TPB_NOFILE" = unlimited ] && TPB_NOFILE=1048576
}

# ------------------------------------------------------------------- ports

tpb_port_in_use() {
	[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
}

# Picks a free TCP port on 127.0.0.1 below the ephemeral range (so wrk's and
# the proxies' outgoing connections cannot collide with it) that this run
# has not handed out yet. Result in TPB_PORT.
tpb_pick_port() {
	local lo hi eph_lo p i used
	read -r eph_lo _ </proc/sys/net/ipv4/ip_local_port_range
	if [ "$eph_lo" -gt 12000 ]; then
		lo=10000
		hi=$((eph_lo - 1))
	else
		lo=61000
		hi=65000
	fi
	for ((i = 0; i < 200; i++)); do
		p=$((lo + RANDOM % (hi - lo + 1)))
		used=0
		for u in "${TPB_PORTS[@]}"; do [ "$u" = "$p" ] && used=1; done
		[ "$used" = 1 ] && continue
		tpb_port_in_use "$p" && continue
		TPB_PORTS+=("$p")
		TPB_PORT=$p
		return 0
	done
	tpb_die "no free port found in $lo-$hi"
}

# --------------------------------------------------------------- templates

# tpb_render IN OUT MODE KEY=VALUE...: copies IN to OUT replacing @KEY@ with
# VALUE. Lines starting with "#@reload@" are template lines that only
# reload.sh wants (a header whose value alternates between reloads): with
# MODE=reload the marker is stripped, otherwise they stay comments (all four
# formats use # for comments).
tpb_render() {
	local in=$1 out=$2 mode=$3 kv key val script=""
	shift 3
	for kv in "$@"; do
		key=${kv%%=*}
		val=${kv#*=}
		val=${val//\\/\\\\}
		val=${val//|/\\|}
		val=${val//&/\\&}
		script+="s|@${key}@|${val}|g;"
	done
	[ "$mode" = reload ] && script+='s|^#@reload@||;'
	sed -e "$script" "$in" >"$out.tmp" || tpb_die "rendering $in failed"
	if grep -v '^#' "$out.tmp" | grep -q '@[A-Z_]*@'; then
		tpb_die "unsubstituted placeholder left in $out: $(grep -v '^#' "$out.tmp" | grep -o '@[A-Z_]*@' | head -1)"
	fi
	# Rename so a process re-reading OUT (reload) never sees half a file.
	mv -f "$out.tmp" "$out"
}

# --------------------------------------------------------------- processes

# tpb_start LOG CPU CMD...: starts CMD in the background, pinned to CPU when
# CPU is not empty, stdout+stderr to LOG. taskset execs CMD, so the pid is
# CMD's own. Result in TPB_LAST_PID.
tpb_start() {
	local log=$1 cpu=$2
	shift 2
	if [ -n "$cpu" ]; then
		taskset -c "$cpu" "$@" >"$log" 2>&1 </dev/null &
	else
		"$@" >"$log" 2>&1 </dev/null &
	fi
	TPB_LAST_PID=$!
	TPB_PIDS+=("$TPB_LAST_PID")
}

# True while PID exists and is not a zombie (our own children stay zombies
# until waited for, and kill -0 would still succeed on them).
tpb_alive() {
	local st
	[ -r "/proc/$1/stat" ] || return 1
	{ st=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
	st=${st##*) }
	[ "${st%% *}" != Z ]
}

# Prints PID's descendants (children, grandchildren...), one per line.
tpb_descendants() {
	local c
	for c in $(pgrep -P "$1" 2>/dev/null); do
		echo "$c"
		tpb_descendants "$c"
	done
}

# tpb_stop PID [TENTHS]: SIGTERM to PID, waits up to TENTHS/10 s for it and
# every descendant it had (nginx workers, HAProxy workers, old workers still
# draining after a reload) to exit, then SIGKILLs what is left, by pid.
tpb_stop() {
	local pid=$1 tenths=${2:-100} i left p
	local -a all
	local -a keep=()
	mapfile -t all < <(tpb_descendants "$pid")
	all=("$pid" "${all[@]}")
	if tpb_alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null
		for ((i = 0; i < tenths; i++)); do
			left=0
			for p in "${all[@]}"; do tpb_alive "$p" && left=1; done
			[ "$left" = 0 ] && break
			sleep 0.1
		done
		for p in "${all[@]}"; do
			if tpb_alive "$p"; then
				tpb_warn "pid $p did not exit after SIGTERM; sending SIGKILL"
				kill -KILL "$p" 2>/dev/null
			fi
		done
	fi
	wait "$pid" 2>/dev/null
	for p in "${TPB_PIDS[@]}"; do [ "$p" != "$pid" ] && keep+=("$p"); done
	TPB_PIDS=("${keep[@]}")
}

# tpb_wait_http URL PID [TIMEOUT_S [CURL_ARG...]]: polls URL (curl with the extra
# arguments, e.g. -H "Authorization: ...") until it answers 200, giving up
# when PID dies or the timeout passes.
tpb_wait_http() {
	local url=$1 pid=$2 timeout=${3:-$READY_TIMEOUT} i code
	shift 2
	[ $# -gt 0 ] && shift
	for ((i = 0; i < timeout * 10; i++)); do
		tpb_alive "$pid" || return 1
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" 2>/dev/null)
		[ "$code" = 200 ] && return 0
		sleep 0.1
	done
	return 1
}

# CPU time (in clock ticks, all threads) of PID and all its descendants, in
# TPB_TICKS. /proc/PID/stat of a process already sums its threads; children
# are added for the nginx master/worker split. Each process adds its own
# utime + stime and the cutime + cstime of the children it has reaped, so a
# worker that exits mid-run (retired by a reload) is still counted, once:
# first live, then inside its parent's cutime/cstime.
tpb_cpu_ticks() {
	local p st total=0
	local -a f
	for p in "$1" $(tpb_descendants "$1"); do
		{ st=$(<"/proc/$p/stat"); } 2>/dev/null || continue
		# comm (field 2) may contain spaces: cut after its closing paren,
		# then utime, stime, cutime, cstime (fields 14-17) are words 12-15.
		st=${st##*) }
		read -r -a f <<<"$st"
		total=$((total + f[11] + f[12] + f[13] + f[14]))
	done
	TPB_TICKS=$total
}

# tpb_cpu_stat CPU: jiffies of one CPU from /proc/stat into TPB_CS_TOTAL,
# TPB_CS_IDLE (idle + iowait) and TPB_CS_STEAL (time the hypervisor gave to
# someone else). Two samples tell how busy that CPU was in between, e.g.
# whether wrk + upstream saturated theirs. Empty CPU (unpinned): all CPUs.
tpb_cpu_stat() {
	local want=cpu${1:-} name user nice sys idle iowait irq softirq steal rest
	TPB_CS_TOTAL=0 TPB_CS_IDLE=0 TPB_CS_STEAL=0
	while read -r name user nice sys idle iowait irq softirq steal rest; do
		[ "$name" = "$want" ] || continue
		TPB_CS_TOTAL=$((user + nice + sys + idle + iowait + irq + softirq + steal))
		TPB_CS_IDLE=$((idle + iowait))
		TPB_CS_STEAL=$steal
		break
	done </proc/stat
}

# tpb_sample_begin PID / tpb_sample_end PID: bracket a measured run. The end
# sets TPB_S_TICKS (CPU ticks PID and its descendants used in between) and,
# as shares of the run, TPB_S_LOAD_PCT (busy time of the wrk+upstream CPU:
# near 100 means the load side may have been the limit), TPB_S_OTHER_PCT
# (time of the proxy's CPU used by anything but the proxy: other processes,
# or softirq work done while the proxy was not running; with the kernel's
# tick accounting, softirq ticks taken while the proxy runs are charged to
# its stime) and TPB_S_STEAL_PCT (time the hypervisor gave to other guests).
# OTHER or STEAL well above 0 mark a run disturbed by a noisy machine.
tpb_sample_begin() {
	tpb_cpu_stat "$TPB_CPU_LOAD"
	TPB_S_LT=$TPB_CS_TOTAL TPB_S_LI=$TPB_CS_IDLE
	tpb_cpu_stat "$TPB_CPU_PROXY"
	TPB_S_PT=$TPB_CS_TOTAL TPB_S_PI=$TPB_CS_IDLE TPB_S_PS=$TPB_CS_STEAL
	tpb_cpu_ticks "$1"
	TPB_S_T0=$TPB_TICKS
}

tpb_sample_end() {
	tpb_cpu_ticks "$1"
	TPB_S_TICKS=$((TPB_TICKS - TPB_S_T0))
	tpb_cpu_stat "$TPB_CPU_PROXY"
	local pt=$((TPB_CS_TOTAL - TPB_S_PT)) pi=$((TPB_CS_IDLE - TPB_S_PI)) ps=$((TPB_CS_STEAL - TPB_S_PS))
	tpb_cpu_stat "$TPB_CPU_LOAD"
	local lt=$((TPB_CS_TOTAL - TPB_S_LT)) li=$((TPB_CS_IDLE - TPB_S_LI))
	read -r TPB_S_LOAD_PCT TPB_S_OTHER_PCT TPB_S_STEAL_PCT < <(awk -v lt="$lt" -v li="$li" \
		-v pt="$pt" -v pi="$pi" -v st="$ps" -v own="$TPB_S_TICKS" 'BEGIN {
			o = pt - pi - st - own
			if (o < 0) o = 0          # tick sampling jitter
			printf "%.1f %.1f %.1f\n", (lt > 0 ? 100 * (lt - li) / lt : 0),
				(pt > 0 ? 100 * o / pt : 0), (pt > 0 ? 100 * st / pt : 0)
		}')
}

# ------------------------------------------------------------------ upstream

# Starts the upstream nginx (pinned with the load generator) and waits for it.
# Sets TPB_UP_PORT, TPB_UP_STATUS_PORT, TPB_UP_PID.
tpb_upstream_start_once() {
	local dir=$TPB_TMP/upstream
	mkdir -p "$dir"
	tpb_pick_port
	TPB_UP_PORT=$TPB_PORT
	tpb_pick_port
	TPB_UP_STATUS_PORT=$TPB_PORT
	tpb_render "$TPB_BENCH/conf/nginx-upstream.conf.in" "$dir/nginx.conf" plain \
		DIR="$dir" PORT="$TPB_UP_PORT" STATUS_PORT="$TPB_UP_STATUS_PORT" NOFILE="$TPB_NOFILE"
	tpb_start "$dir/stderr.log" "$TPB_CPU_LOAD" "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;'
	TPB_UP_PID=$TPB_LAST_PID
	if ! tpb_wait_http "http://127.0.0.1:$TPB_UP_PORT/" "$TPB_UP_PID" ||
		! tpb_upstream_accepts; then
		cat "$dir/stderr.log" "$dir/error.log" >&2 2>/dev/null
		tpb_stop "$TPB_UP_PID" 30
		return 1
	fi
}

# Starts the upstream; a second and third try on new ports cover the rare
# case of another program binding a port between our check and nginx's bind.
tpb_upstream_start() {
	local try
	for try in 1 2 3; do
		tpb_upstream_start_once && return 0
		tpb_warn "upstream nginx did not come up (try $try)"
	done
	tpb_die "upstream nginx did not start; see the messages above"
}

# Connections the upstream nginx has accepted so far, from stub_status, in
# TPB_ACCEPTS. The status request's own connection is counted too: a
# before/after pair over a run therefore over-counts by exactly one.
tpb_upstream_accepts() {
	local out
	out=$(curl -s --max-time 2 "http://127.0.0.1:$TPB_UP_STATUS_PORT/") || return 1
	TPB_ACCEPTS=$(awk 'NR == 3 {print $1}' <<<"$out")
	[[ "$TPB_ACCEPTS" =~ ^[0-9]+$ ]]
}

# ----------------------------------------------------------------- proxies

# "base" is a second turnpike build ($TURNPIKE_BASE_BIN, e.g. the previous
# commit's) measured in the same rounds, for before/after figures.
TPB_PROXIES_ALL="nginx haproxy turnpike base"
TURNPIKE_BASE_BIN=${TURNPIKE_BASE_BIN:-}

# tpb_proxy_start NAME MODE GEN: renders NAME's config for the port in
# TPB_PROXY_PORT into $TPB_TMP/NAME/ and starts it pinned to the proxy CPU.
# MODE is plain (compare.sh) or reload (reload.sh: HAProxy in master-worker
# mode, the alternating response header enabled with value GEN). Returns
# nonzero when the binary is missing or the proxy does not answer 200 in
# time (reason in TPB_PROXY_ERR). Sets TPB_PROXY_PID.
tpb_proxy_start() {
	tpb_proxy_start_once "$@" && return 0
	# Exited at startup: maybe a port taken between our check and its bind
	# (other programs pick ports too). One more try on new ports.
	case $TPB_PROXY_ERR in
	exited*)
		tpb_warn "$1: $TPB_PROXY_ERR; retrying on new ports"
		tpb_proxy_start_once "$@"
		;;
	*) return 1 ;;
	esac
}

tpb_proxy_start_once() {
	local name=$1 mode=$2 gen=${3:-a} dir=$TPB_TMP/$1 conf
	TPB_PROXY_ERR=""
	rm -rf "$dir"
	mkdir -p "$dir"
	tpb_pick_port
	TPB_PROXY_PORT=$TPB_PORT
	tpb_pick_port
	TPB_ADMIN_PORT=$TPB_PORT
	case $name in
	nginx)
		conf=$dir/nginx.conf
		tpb_proxy_render nginx "$mode" "$gen"
		tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" "$NGINX_BIN" -p "$dir" -c "$conf" -g 'daemon off;'
		;;
	haproxy)
		conf=$dir/haproxy.cfg
		tpb_proxy_render haproxy "$mode" "$gen"
		if [ "$mode" = reload ]; then
			tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" "$HAPROXY_BIN" -W -db -f "$conf"
		else
			tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" "$HAPROXY_BIN" -db -f "$conf"
		fi
		;;
	turnpike | base)
		local bin=$TURNPIKE_BIN
		[ "$name" = base ] && bin=$TURNPIKE_BASE_BIN
		if [ ! -x "$bin" ]; then
			TPB_PROXY_ERR="binary not found: '$bin' (set TURNPIKE_BIN / TURNPIKE_BASE_BIN or build build/rel)"
			return 1
		fi
		conf=$dir/turnpike.yaml
		tpb_proxy_render "$name" "$mode" "$gen"
		# A template the binary rejects is worth its own message (and no
		# retry): turnpike -t prints every error as FILE:LINE:COL.
		if ! timeout 20 "$bin" -t -c "$conf" >"$dir/check.log" 2>&1; then
			TPB_PROXY_ERR="configuration rejected by turnpike -t: $(head -n 3 "$dir/check.log" | tr '\n' ' ')"
			return 1
		fi
		tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" "$bin" -c "$conf"
		;;
	*) tpb_die "unknown proxy: $name" ;;
	esac
	TPB_PROXY_PID=$TPB_LAST_PID
	TPB_PROXY_CONF=$conf
	if ! tpb_wait_http "http://127.0.0.1:$TPB_PROXY_PORT/" "$TPB_PROXY_PID"; then
		if tpb_alive "$TPB_PROXY_PID"; then
			TPB_PROXY_ERR="no 200 on 127.0.0.1:$TPB_PROXY_PORT within ${READY_TIMEOUT}s"
		else
			wait "$TPB_PROXY_PID"
			TPB_PROXY_ERR="exited with status $? during startup"
		fi
		TPB_PROXY_ERR+="; log: $(tail -n 3 "$dir/stderr.log" 2>/dev/null | tr '\n' ' ')"
		tpb_stop "$TPB_PROXY_PID" 30
		return 1
	fi
	# The request must really have crossed the proxy to our upstream with an
	# X-Forwarded-For: /xff echoes that header, nothing else answers it.
	TPB_XFF=$(curl -s --max-time 2 "http://127.0.0.1:$TPB_PROXY_PORT/xff")
	case $TPB_XFF in
	*127.0.0.1*) TPB_XFF_OK=1 ;;
	*)
		TPB_XFF_OK=0
		tpb_warn "$name: upstream did not see X-Forwarded-For with 127.0.0.1 (got '$TPB_XFF')"
		;;
	esac
	return 0
}

# (Re-)renders the running proxy's config with response header value GEN.
# Uses the ports picked by tpb_proxy_start.
tpb_proxy_render() {
	local name=$1 mode=$2 gen=$3 dir=$TPB_TMP/$1
	# HAProxy refuses to start unless it can have 2 descriptors per maxconn
	# (client + server side) plus a few: derive maxconn from our limit.
	local maxconn=$(((TPB_NOFILE - 100) / 2))
	local -a vars=(DIR="$dir" PORT="$TPB_PROXY_PORT" ADMIN_PORT="$TPB_ADMIN_PORT"
		UPSTREAM_PORT="$TPB_UP_PORT" NOFILE="$TPB_NOFILE" MAXCONN="$maxconn" GEN="$gen")
	case $name in
	nginx) tpb_render "$TPB_BENCH/conf/nginx-proxy.conf.in" "$dir/nginx.conf" "$mode" "${vars[@]}" ;;
	haproxy) tpb_render "$TPB_BENCH/conf/haproxy.cfg.in" "$dir/haproxy.cfg" "$mode" "${vars[@]}" ;;
	turnpike | base) tpb_render "$TPB_BENCH/conf/turnpike.yaml.in" "$dir/turnpike.yaml" "$mode" "${vars[@]}" ;;
	esac
}

# Prints one line naming the versions of the programs involved.
tpb_versions() {
	local v
	tpb_log "nginx:    $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
	tpb_log "haproxy:  $("$HAPROXY_BIN" -v 2>&1 | head -1)"
	tpb_log "wrk:      $("$WRK_BIN" -v 2>&1 | head -1 | cut -c1-40)"
	if [ -x "$TURNPIKE_BIN" ]; then
		v=$(timeout 5 "$TURNPIKE_BIN" --version 2>&1 | head -1)
		tpb_log "turnpike: $TURNPIKE_BIN (${v:-no version output})"
	else
		tpb_log "turnpike: $TURNPIKE_BIN (missing)"
	fi
	tpb_log "kernel:   $(uname -r); cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
}

# --------------------------------------------------------------------- wrk

# tpb_wrk URL CONNS SECONDS OUT: runs wrk pinned to the load CPU (with the
# Lua script TPB_WRK_SCRIPT, by default wrk/report.lua), waits for
# it (in the background so the INT/TERM trap can stop it), and parses the
# line bench/wrk/report.lua prints into TPB_W_* variables. Returns nonzero
# when wrk failed or printed no report.
tpb_wrk() {
	local url=$1 conns=$2 secs=$3 out=$4 threads=${WRK_THREADS:-2} line kv
	[ "$threads" -gt "$conns" ] && threads=$conns
	tpb_start "$out" "$TPB_CPU_LOAD" "$WRK_BIN" -t "$threads" -c "$conns" -d "${secs}s" \
		--timeout "${WRK_TIMEOUT:-2}s" --latency -s "${TPB_WRK_SCRIPT:-$TPB_BENCH/wrk/report.lua}" "$url"
	local pid=$TPB_LAST_PID
	wait "$pid"
	local rc=$?
	tpb_stop "$pid" 10
	line=$(grep '^TPBENCH ' "$out" | tail -1)
	if [ "$rc" != 0 ] || [ -z "$line" ]; then
		tpb_warn "wrk failed (exit $rc); output in $out"
		return 1
	fi
	for kv in ${line#TPBENCH }; do
		case $kv in
		requests=*) TPB_W_REQ=${kv#*=} ;;
		duration_us=*) TPB_W_DUR_US=${kv#*=} ;;
		connect=*) TPB_W_ECONN=${kv#*=} ;;
		read=*) TPB_W_EREAD=${kv#*=} ;;
		write=*) TPB_W_EWRITE=${kv#*=} ;;
		timeout=*) TPB_W_ETIMEOUT=${kv#*=} ;;
		status=*) TPB_W_NON2XX=${kv#*=} ;;
		p50_us=*) TPB_W_P50=${kv#*=} ;;
		p99_us=*) TPB_W_P99=${kv#*=} ;;
		esac
	done
	TPB_W_SOCKERR=$((TPB_W_ECONN + TPB_W_EREAD + TPB_W_EWRITE + TPB_W_ETIMEOUT))
	return 0
}

# -------------------------------------------------------------------- math

# tpb_median V...: prints the median of the numeric arguments (mean of the
# two middle values for an even count), or "n/a" when there are none.
tpb_median() {
	printf '%s\n' "$@" | awk '/^-?[0-9.]+$/ {v[n++] = $1 + 0}
		END {
			if (n == 0) { print "n/a"; exit }
			for (i = 1; i < n; i++) {          # insertion sort: n is tiny
				x = v[i]
				for (j = i - 1; j >= 0 && v[j] > x; j--) v[j + 1] = v[j]
				v[j + 1] = x
			}
			m = (n % 2) ? v[int(n / 2)] : (v[n / 2 - 1] + v[n / 2]) / 2
			print m
		}'
}

# tpb_ratio A B: A/B with two decimals, or n/a when either is missing or B is 0.
tpb_ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/ || b + 0 == 0) print "n/a"
		else printf "%.2f\n", a / b
	}'
}

# tpb_shell_quote ARG...: prints the arguments quoted for reuse in a shell.
tpb_shell_quote() {
	local a out=""
	for a in "$@"; do
		if [[ "$a" =~ ^[A-Za-z0-9_./=:,+-]+$ ]]; then
			out+=" $a"
		else
			out+=" '${a//\'/\'\\\'\'}'"
		fi
	done
	printf '%s\n' "${out# }"
}
