#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/slow_clients.sh: what slow clients (slowhttptest) cost a proxy's
# ordinary clients: turnpike by default, and side by side with nginx and
# HAProxy as the proxy (PROXIES / -p), the control that tells the proxy's
# share from the attacking tool's. Each proxy (bench/conf/turnpike.yaml.in,
# nginx-proxy.conf.in, haproxy.cfg.in: one worker/thread, no log, default
# limits and timeouts) forwards to the bench nginx upstream. For each proxy
# in turn it is started, taken through these phases, one after the other,
# and stopped:
#
#   quiet          wrk alone
#   slow headers   slowhttptest -H (Slowloris: a header line every INTERVAL s)
#   slow body      slowhttptest -B (R-U-Dead-Yet: a POST body trickled every INTERVAL s,
#                  to /body, where the upstream answers only after the whole body)
#   slow read      slowhttptest -X (requests a 1 MiB file, reads a few bytes a second
#                  through a tiny TCP window)
#   decoy read     (MODES D, not by default) the same slow read aimed at the upstream
#                  itself, not through the proxy: the attack's cost to the machine
#   quiet (after)  wrk alone again: did the proxy recover?
#
# In each attack phase SLOW_CONNS attack connections are opened (at RATE per
# second) and, once they are held (or after RAMP_MAX s), wrk measures WRK_CONNS
# ordinary keep-alive clients for DURATION s while the proxy's RSS (VmRSS of
# its process and descendants, /proc/PID/status) is sampled every 0.25 s.
# Prints one table, a row per proxy and phase: attack connections held at
# wrk's start and end, req/s and p99 and their ratios to that proxy's first
# quiet run, wrk errors, peak and end RSS, the proxy's CPU, slowhttptest's
# CPU (it shares a CPU with wrk and the upstream, so its CPU is taken from
# wrk's), and, for turnpike, how often its receive buffer pool ran dry.
# A proxy whose binary is missing, that does not start, or that does not
# pass the 1 MiB file through is skipped with a warning line under the
# table. Everything runs on 127.0.0.1, ports picked at run time; every
# process started is stopped on exit.
#
# Needs slowhttptest (Debian: apt-get install slowhttptest) besides what
# bench/README.md lists. CPU pinning as in compare.sh: the proxy on CPU_PROXY,
# wrk + the upstream nginx + slowhttptest on CPU_LOAD.

set -u -o pipefail

usage() {
	cat <<'EOT'
usage: bench/slow_clients.sh [options]
  -p, --proxies "P..."  proxies measured one after the other, of turnpike nginx haproxy
                        (and base: a second turnpike build, TURNPIKE_BASE_BIN)
                        (env PROXIES, default "turnpike")
  -d, --duration S      seconds of each measured wrk run (env DURATION, default 10)
  -s, --slow N          slowhttptest connections per attack (env SLOW_CONNS, default 1000)
  -c, --conns N         wrk connections, the ordinary clients (env WRK_CONNS, default 64)
  -m, --modes "M..."    attacks, of H (slow headers) B (slow body) X (slow read)
                        D (decoy: the slow read aimed at the upstream itself, not through
                        the proxy: what the attack costs the machine whatever is in front)
                        (env MODES, default "H B X")
  -o, --out DIR         results directory (env RESULTS_DIR, default bench/results/slow-<timestamp>)
other env: RATE (attack connections/s, default 250), INTERVAL (s between slow
           sends, default 5), RAMP_MAX (s, default 20), WRK_THREADS (default 2),
           ATTACK_NICE (nice level of slowhttptest, default 0; 19 lets it take only
           the CPU the load side leaves, see bench/README.md),
           TURNPIKE_BIN, TURNPIKE_BASE_BIN, NGINX_BIN, HAPROXY_BIN, WRK_BIN,
           SLOWHTTPTEST_BIN, CPU_PROXY, CPU_LOAD, READY_TIMEOUT, WRK_TIMEOUT (s, default 2),
           KEEP_TMP=1
EOT
}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS=("$@")
PROXIES=${PROXIES:-turnpike}
DURATION=${DURATION:-10}
SLOW_CONNS=${SLOW_CONNS:-1000}
WRK_CONNS=${WRK_CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
MODES=${MODES:-H B X}
RATE=${RATE:-250}
INTERVAL=${INTERVAL:-5}
RAMP_MAX=${RAMP_MAX:-20}
ATTACK_NICE=${ATTACK_NICE:-0}
RESULTS_DIR=${RESULTS_DIR:-}
SLOWHTTPTEST_BIN=${SLOWHTTPTEST_BIN:-slowhttptest}

while [ $# -gt 0 ]; do
	case $1 in
	-p | --proxies) PROXIES=$2; shift 2 ;;
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
	case $m in H | B | X | D) ;; *) tpb_die "unknown mode '$m' (known: H B X D)" ;; esac
done
[ -n "${PROXIES// /}" ] || tpb_die "PROXIES is empty"
seen=" "
for p in $PROXIES; do
	case " $TPB_PROXIES_ALL " in *" $p "*) ;; *) tpb_die "unknown proxy '$p' (known: $TPB_PROXIES_ALL)" ;; esac
	case $seen in *" $p "*) tpb_die "proxy '$p' named twice in PROXIES" ;; esac
	seen+="$p "
done
command -v "$SLOWHTTPTEST_BIN" >/dev/null ||
	tpb_die "slowhttptest not found ($SLOWHTTPTEST_BIN); on Debian: apt-get install slowhttptest"

RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/slow-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
SUMMARY=$RESULTS_DIR/summary.txt

tpb_init
tpb_pick_cpus
# slowhttptest + wrk sockets, the proxy's client and upstream sockets, nginx's.
tpb_raise_nofile $(((SLOW_CONNS + WRK_CONNS) * 4 + 1024))

cmdline="PROXIES=$(tpb_shell_quote "$PROXIES") DURATION=$DURATION SLOW_CONNS=$SLOW_CONNS WRK_CONNS=$WRK_CONNS"
cmdline+=" MODES=$(tpb_shell_quote "$MODES") RATE=$RATE INTERVAL=$INTERVAL RAMP_MAX=$RAMP_MAX WRK_THREADS=$WRK_THREADS"
cmdline+=" ATTACK_NICE=$ATTACK_NICE"
cmdline+=" TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN")"
case " $PROXIES " in *" base "*) cmdline+=" TURNPIKE_BASE_BIN=$(tpb_shell_quote "$TURNPIKE_BASE_BIN")" ;; esac
cmdline+=" $(tpb_shell_quote "$0" "${ORIG_ARGS[@]}")"
{
	echo "command: $cmdline"
	echo "date: $(date -Is); host: $(uname -n); nproc: $(nproc); proxy CPU: ${TPB_CPU_PROXY:-unpinned};" \
		"wrk+nginx+slowhttptest CPU: ${TPB_CPU_LOAD:-unpinned}; open files: $TPB_NOFILE"
	echo "results: $RESULTS_DIR"
} | tee "$SUMMARY"
case " $PROXIES " in
*" haproxy "*) tpb_versions 2>&1 | tee -a "$SUMMARY" ;;
*) tpb_versions 2>&1 | grep -v haproxy | tee -a "$SUMMARY" ;;
esac
echo "slowhttptest: $("$SLOWHTTPTEST_BIN" -h 2>&1 | grep -m1 -o 'version [0-9.]*')" | tee -a "$SUMMARY"

tpb_upstream_start
# the slow-read target: a 1 MiB static file (location /big/ of nginx-upstream.conf.in)
# (nginx's worker runs as an unprivileged user when started by root: it must be able to read it)
mkdir -p "$TPB_TMP/upstream/big"
head -c 1048576 /dev/zero >"$TPB_TMP/upstream/big/1m.bin"
if ! chmod a+x "$TPB_TMP" "$TPB_TMP/upstream" "$TPB_TMP/upstream/big" ||
	! chmod a+r "$TPB_TMP/upstream/big/1m.bin"; then
	tpb_die "cannot make the slow-read target readable"
fi
tpb_log "upstream nginx on 127.0.0.1:$TPB_UP_PORT, pid $TPB_UP_PID"

# The proxy being measured: its name, pid, listener port (PX, PX_PID, PORT).
PX=""
PX_PID=""
PORT=""

# Established TCP connections to the proxy's listener (client side sockets
# excluded: only the server side, sport = PORT), into TPB_ESTAB. The decoy
# attack counts at the upstream's port instead (ATK_PORT), less the
# connections the proxy itself held there before it (ATK_BASE).
ATK_PORT=""
ATK_BASE=0
estab() {
	TPB_ESTAB=$(ss -Htn state established "( sport = :${ATK_PORT:-$PORT} )" 2>/dev/null | wc -l)
	TPB_ESTAB=$((TPB_ESTAB - ATK_BASE))
}

# turnpike_buffer_pool_exhausted_total (receives that found every buffer of
# the pool held and had to wait; builds from before the buffer window only
# have turnpike_buffer_ring_exhausted_total, the same thing there), from
# turnpike's admin listener, into TPB_DRY.
ring_dry() {
	TPB_DRY=$(curl -s --max-time 2 "http://127.0.0.1:$TPB_ADMIN_PORT/metrics" |
		awk '$1 == "turnpike_buffer_pool_exhausted_total" {p = $2} $1 == "turnpike_buffer_ring_exhausted_total" {r = $2}
		     END {print (p != "" ? p : r)}')
	[[ "$TPB_DRY" =~ ^[0-9]+$ ]] || TPB_DRY=0
}

# VmRSS in KiB of PID and its descendants (nginx: master + worker; turnpike:
# the gateway + its YAML guard helper), summed, into TPB_RSS; 0 once PID is gone.
tree_rss() {
	local p k v _ s=0
	for p in "$1" $(tpb_descendants "$1"); do
		{
			while read -r k v _; do
				if [ "$k" = VmRSS: ]; then
					s=$((s + v))
					break
				fi
			done <"/proc/$p/status"
		} 2>/dev/null
	done
	TPB_RSS=$s
}

# The host's TCP memory in pages (the "mem" of /proc/net/sockstat: every TCP
# socket's queues, whoever owns them), into TPB_TCPMEM.
tcp_mem() {
	local k v _
	TPB_TCPMEM=0
	while read -r k _ _ _ _ _ _ _ _ _ v _; do
		if [ "$k" = TCP: ]; then
			TPB_TCPMEM=$v
			break
		fi
	done </proc/net/sockstat
}

# A kernel TCP counter into TPB_KC: TcpExt:NAME (/proc/net/netstat) or Tcp:NAME
# (/proc/net/snmp); 0 when this kernel has no such counter.
kcounter() {
	TPB_KC=$(awk -v p="${1%%:*}:" -v n="${1#*:}" \
		'$1 == p { if (!seen) { for (i = 2; i <= NF; i++) if ($i == n) c = i; seen = 1 } else { print (c ? $c : 0); exit } }' \
		/proc/net/netstat /proc/net/snmp)
	[[ "$TPB_KC" =~ ^[0-9]+$ ]] || TPB_KC=0
}

# The RSS sampler, run in the background: the proxy tree's RSS every 0.25 s
# into FILE, and the host's TCP memory (pages) into FILE.tcp, until the proxy is gone.
rss_sampler() {
	local file=$1
	while tpb_alive "$PX_PID"; do
		tree_rss "$PX_PID"
		echo "$TPB_RSS" >>"$file"
		tcp_mem
		echo "$TPB_TCPMEM" >>"$file.tcp"
		sleep 0.25
	done
}

# Starts the RSS sampler into FILE; TPB_SAMPLER_PID.
sampler_start() {
	local file=$1
	: >"$file"
	: >"$file.tcp"
	tpb_start "$file.log" "" rss_sampler "$file"
	TPB_SAMPLER_PID=$TPB_LAST_PID
}

# Waits (bounded) until at most N connections to the proxy remain.
wait_estab_below() {
	local n=$1 i
	for ((i = 0; i < 300; i++)); do
		estab
		[ "$TPB_ESTAB" -le "$n" ] && return 0
		sleep 0.1
	done
	return 1
}

# CPU ticks over a wrk run (microseconds) as a percentage of one CPU.
cpu_pct() {
	awk -v dt="$1" -v hz="$TPB_CLK_TCK" -v us="$2" \
		'BEGIN {printf "%.0f", (us > 0 ? 100 * dt / hz / (us / 1e6) : 0)}'
}

ROWS=()
NOTES=()
RAN=0
Q_RPS=""
Q_P99=""
ROW_FMT='%-8s %-14s %-7s %-12s %8s %7s %8s %7s %5s/%-5s %8s %7s %5s %8s %9s %8s %9s %7s'
PAGE_KIB=$(($(getconf PAGESIZE) / 1024))
read -r _ TCP_PRESSURE _ </proc/sys/net/ipv4/tcp_mem

# phase NAME TAG MODE: MODE is "" for a quiet run, else H, B or X; TAG names
# its files. Returns nonzero when the proxy died during the phase.
phase() {
	local name=$1 tag=$2 mode=$3 slow_pid="" held0=0 held1=0 i rss_peak rss_end rps p99 ratio_rps ratio_p99
	local a0=0 atk="-" dry="-" dry0=0 t0 dt press0 rtx0 tcp_peak
	local -a sargs
	tpb_log "$PX: phase $name"
	# the host's TCP memory pressure and retransmissions from the attack's start to wrk's end
	kcounter TcpExt:TCPMemoryPressuresChrono
	press0=$TPB_KC
	kcounter Tcp:RetransSegs
	rtx0=$TPB_KC
	ATK_PORT=""
	ATK_BASE=0
	if [ "$mode" = D ]; then
		ATK_PORT=$TPB_UP_PORT
		estab
		ATK_BASE=$TPB_ESTAB
	fi
	if [ -n "$mode" ]; then
		sargs=(-c "$SLOW_CONNS" -r "$RATE" -l $((RAMP_MAX + DURATION + 30)) -i "$INTERVAL" -p 3 -v 1)
		case $mode in
		H) sargs+=(-H -x 24 -u "http://127.0.0.1:$PORT/") ;;
		B) sargs+=(-B -s 65536 -x 24 -u "http://127.0.0.1:$PORT/body") ;;
		X) sargs+=(-X -k 1 -n "$INTERVAL" -w 32 -y 64 -z 32 -u "http://127.0.0.1:$PORT/big/1m.bin") ;;
		D) sargs+=(-X -k 1 -n "$INTERVAL" -w 32 -y 64 -z 32 -u "http://127.0.0.1:$TPB_UP_PORT/big/1m.bin") ;;
		esac
		if [ "$ATTACK_NICE" != 0 ]; then
			tpb_start "$RESULTS_DIR/slowhttptest-$PX-$tag.txt" "$TPB_CPU_LOAD" nice -n "$ATTACK_NICE" "$SLOWHTTPTEST_BIN" "${sargs[@]}"
		else
			tpb_start "$RESULTS_DIR/slowhttptest-$PX-$tag.txt" "$TPB_CPU_LOAD" "$SLOWHTTPTEST_BIN" "${sargs[@]}"
		fi
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
		tpb_alive "$slow_pid" || tpb_warn "$PX $name: slowhttptest exited before wrk started"
	fi
	sampler_start "$RESULTS_DIR/rss-$PX-$tag.txt"
	tpb_cpu_ticks "$PX_PID"
	t0=$TPB_TICKS
	if [ -n "$slow_pid" ]; then
		tpb_cpu_ticks "$slow_pid"
		a0=$TPB_TICKS
	fi
	case $PX in turnpike | base) ring_dry; dry0=$TPB_DRY ;; esac
	if ! tpb_wrk "http://127.0.0.1:$PORT/" "$WRK_CONNS" "$DURATION" "$RESULTS_DIR/wrk-$PX-$tag.txt"; then
		TPB_W_REQ=0 TPB_W_DUR_US=0 TPB_W_P99=0 TPB_W_SOCKERR=n/a TPB_W_NON2XX=n/a
	fi
	tpb_cpu_ticks "$PX_PID"
	dt=$((TPB_TICKS - t0))
	if [ -n "$slow_pid" ]; then
		# slowhttptest is one process; once it has exited its ticks are gone
		if tpb_alive "$slow_pid"; then
			tpb_cpu_ticks "$slow_pid"
			atk=$(cpu_pct $((TPB_TICKS - a0)) "$TPB_W_DUR_US")
		else
			atk=n/a
		fi
	fi
	case $PX in turnpike | base) ring_dry; dry=$((TPB_DRY - dry0)) ;; esac
	kcounter TcpExt:TCPMemoryPressuresChrono
	local press
	press=$(awk -v ms=$((TPB_KC - press0)) 'BEGIN {printf "%.1f", ms / 1000}')
	kcounter Tcp:RetransSegs
	local rtx=$((TPB_KC - rtx0))
	if [ -n "$mode" ]; then
		# wrk's own connections are gone: what is left is the attack's
		estab
		held1=$TPB_ESTAB
	fi
	tpb_stop "$TPB_SAMPLER_PID" 10
	tree_rss "$PX_PID"
	rss_end=$TPB_RSS
	rss_peak=$(awk -v e="$rss_end" 'BEGIN {m = e} $1 > m {m = $1} END {print m}' "$RESULTS_DIR/rss-$PX-$tag.txt")
	tcp_peak=$(awk -v k="$PAGE_KIB" '$1 > m {m = $1} END {printf "%.0f", m * k / 1024}' "$RESULTS_DIR/rss-$PX-$tag.txt.tcp")
	# seconds sampled above tcp_mem's pressure value (the kernel's own counter only
	# moves once a pressure episode ends, so it misses one that outlasts wrk)
	local press_s
	press_s=$(awk -v lim="$TCP_PRESSURE" '$1 > lim {n++} END {printf "%.1f", n * 0.25}' "$RESULTS_DIR/rss-$PX-$tag.txt.tcp")
	if [ -n "$slow_pid" ]; then
		tpb_stop "$slow_pid" 50
		wait_estab_below "$([ "$mode" = D ] && echo "$WRK_CONNS" || echo 0)" || tpb_warn "$PX $name: $TPB_ESTAB connections still open 30 s after the attack stopped"
	fi
	if ! tpb_alive "$PX_PID"; then
		ROWS+=("$(printf '%-8s %-14s %-7s died; log: %s' "$PX" "$name" "${mode:+-$mode}" \
			"$(tail -n 3 "$TPB_TMP/$PX/stderr.log" 2>/dev/null | tr '\n' ' ')")")
		tpb_warn "${ROWS[-1]}"
		return 1
	fi
	read -r rps p99 < <(awk -v req="$TPB_W_REQ" -v us="$TPB_W_DUR_US" -v p="$TPB_W_P99" \
		'BEGIN {printf "%.0f %.2f\n", (us > 0 ? req / (us / 1e6) : 0), p / 1000}')
	if [ -z "$mode" ] && [ -z "$Q_RPS" ]; then
		Q_RPS=$rps
		Q_P99=$p99
	fi
	ratio_rps=$(tpb_ratio "$rps" "$Q_RPS")
	ratio_p99=$(tpb_ratio "$p99" "$Q_P99")
	local held="-"
	[ -n "$mode" ] && held="$held0 -> $held1"
	# shellcheck disable=SC2059 # ROW_FMT is a format of ours, not data
	ROWS+=("$(printf "$ROW_FMT" "$PX" "$name" "${mode:+-$mode}" "$held" "$rps" "$ratio_rps" "$p99" "$ratio_p99" \
		"$TPB_W_SOCKERR" "$TPB_W_NON2XX" "$((rss_peak / 1024))" "$((rss_end / 1024))" \
		"$(cpu_pct "$dt" "$TPB_W_DUR_US")" "$atk" "$dry" "$tcp_peak" "$press_s/$press" "$rtx")")
	tpb_log "  ${ROWS[-1]}"
}

# skip PROXY REASON: a warning now and a line under the table.
skip() {
	NOTES+=("warning: $1 skipped: $2")
	tpb_warn "$1 skipped: $2"
	cp -f "$TPB_TMP/$1"/*.log "$RESULTS_DIR/" 2>/dev/null
}

# run_proxy PROXY: starts it, runs every phase against it, stops it.
run_proxy() {
	local bin code m
	PX=$1
	case $PX in
	turnpike) bin=$TURNPIKE_BIN ;;
	base) bin=$TURNPIKE_BASE_BIN ;;
	nginx) bin=$NGINX_BIN ;;
	haproxy) bin=$HAPROXY_BIN ;;
	esac
	if [ -z "$bin" ] || ! command -v "$bin" >/dev/null; then
		case $PX in
		turnpike) skip "$PX" "binary not found: '$bin' (scripts/build.sh build/rel -DCMAKE_BUILD_TYPE=Release)" ;;
		base) skip "$PX" "binary not found: '$bin' (set TURNPIKE_BASE_BIN)" ;;
		*) skip "$PX" "binary not found: '$bin'" ;;
		esac
		return
	fi
	if ! tpb_proxy_start "$PX" plain; then
		skip "$PX" "$TPB_PROXY_ERR"
		return
	fi
	PX_PID=$TPB_PROXY_PID
	PORT=$TPB_PROXY_PORT
	cp -f "$TPB_PROXY_CONF" "$RESULTS_DIR/$PX-${TPB_PROXY_CONF##*/}" 2>/dev/null
	code=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 "http://127.0.0.1:$PORT/big/1m.bin")
	if [ "$code" != "200 1048576" ]; then
		tpb_stop "$PX_PID"
		skip "$PX" "the 1 MiB slow-read target does not come through (got '$code')"
		return
	fi
	tpb_log "$PX pid $PX_PID on 127.0.0.1:$PORT"
	RAN=$((RAN + 1))
	Q_RPS=""
	Q_P99=""
	if phase "quiet" quiet ""; then
		for m in $MODES; do
			case $m in
			H) phase "slow headers" H H ;;
			B) phase "slow body" B B ;;
			X) phase "slow read" X X ;;
			D) phase "decoy read" D D ;;
			esac || break
		done
	fi
	if tpb_alive "$PX_PID"; then
		phase "quiet (after)" quiet-after ""
		tpb_stop "$PX_PID"
	else
		NOTES+=("warning: $PX died; its remaining phases were not run (logs in $RESULTS_DIR)")
		tpb_stop "$PX_PID" 10
		cp -f "$TPB_TMP/$PX"/*.log "$RESULTS_DIR/" 2>/dev/null
	fi
}

for p in $PROXIES; do
	run_proxy "$p"
done

{
	echo
	echo "$PROXIES under slowhttptest, $SLOW_CONNS attack connections per phase ($RATE/s, a send every ${INTERVAL}s);"
	echo "wrk: $WRK_CONNS connections, ${DURATION}s per phase; ratios relative to the proxy's own first quiet run"
	echo
	printf '%-8s %-14s %-7s %-12s %8s %7s %8s %7s %11s %8s %7s %5s %8s %9s %8s %9s %7s\n' \
		proxy phase attack "held s->e" "req/s" "x quiet" "p99 ms" "x quiet" "sockerr/5xx" \
		"RSS max" "RSS end" "CPU%" "atk CPU%" "ring dry" "TCP MiB" "press s" "retrans"
	[ "${#ROWS[@]}" -gt 0 ] && printf '%s\n' "${ROWS[@]}"
	echo
	echo "held: established attack connections at the proxy when wrk started and when it ended;"
	echo "RSS in MiB (VmRSS of the proxy and its descendants summed, sampled every 0.25 s: nginx's"
	echo "master + worker, turnpike + its YAML guard helper); CPU% = the proxy's CPU time (its"
	echo "processes) / wrk duration; atk CPU% = slowhttptest's CPU time during wrk's run / wrk"
	echo "duration (slowhttptest shares CPU ${TPB_CPU_LOAD:-(unpinned)} with wrk and the upstream: what it takes, wrk cannot have);"
	echo "ring dry (turnpike only): receives that found turnpike's buffer pool (4096 x 16 KiB per worker)"
	echo "empty during wrk's run (turnpike_buffer_pool_exhausted_total)."
	echo "TCP MiB: the host's TCP memory at its peak during wrk's run (/proc/net/sockstat: the queues of every"
	echo "TCP socket, the attack's included), against net.ipv4.tcp_mem ($(awk -v k="$PAGE_KIB" \
		'{printf "pressure at %.0f MiB, hard limit %.0f MiB", $2 * k / 1024, $3 * k / 1024}' /proc/sys/net/ipv4/tcp_mem));"
	echo "press s: seconds of wrk's run the host's TCP memory was sampled above tcp_mem's pressure value /"
	echo "seconds the kernel counted in pressure from the attack's start to wrk's end (it counts an"
	echo "episode once it ends); retrans: TCP segments the host retransmitted over the same span."
	[ "${#NOTES[@]}" -gt 0 ] && printf '%s\n' "${NOTES[@]}"
} | tee -a "$SUMMARY"
[ "$RAN" -gt 0 ] || tpb_die "no proxy could be measured"
