#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/cpu_profile.sh: where a proxied request's CPU goes, kernel included.
#
# Same setup as bench/compare.sh for ONE proxy (turnpike by default, or nginx,
# HAProxy, base): the proxy pinned to CPU_PROXY, wrk and the nginx upstream on
# CPU_LOAD. wrk runs CONNS keep-alive connections for DURATION seconds; during
# the middle half of that run `perf record` samples everything that runs on
# the proxy's CPU. The samples are then put into categories by symbol name
# (user space by DSO and symbol; kernel by the nearest kernel function on the
# call chain that belongs to a known layer: io_uring, TCP send, TCP receive,
# loopback softirq receive, scheduler and wakeups, syscall entry/exit, epoll,
# timers/interrupts, page faults) and printed as a share of the CPU time the
# proxy and the kernel work on its behalf took, and as microseconds per
# request. See bench/README.md ("cpu_profile.sh").
#
# Choices (the reasons are the caveats to keep in mind reading the output):
#
# - `perf record -C CPU_PROXY` rather than `-p PID`: it also catches the work
#   the kernel does on that CPU outside the proxy's own context (softirq run
#   from an interrupt or in ksoftirqd, IPIs for wakeups), which is part of what
#   a proxied request costs. Samples of other processes that happen to run on
#   that CPU are counted apart ("other processes"), and idle samples are left
#   out of the busy total.
# - `-g` (call graphs): the kernel call chain is what lets a sample in a
#   generic helper (copy to/from user, slab, spinlocks, skb alloc/free) be
#   charged to the layer that called it. User frames past the sampled
#   instruction are not used: release builds of turnpike, nginx and HAProxy
#   keep no frame pointers, so user samples are classified by their own DSO
#   and symbol. (`--kernel-callchains` would skip the useless user walk, but
#   perf script then prints nothing at all for samples taken in user mode.)
#   The walk is a few frames per sample; at FREQ=4000 on one CPU that is a
#   small cost, and the summary prints the request rate inside the recording
#   window next to wrk's average over the whole run so the cost shows.
# - Event: hardware `cycles` when the PMU offers it, else the `cpu-clock`
#   software timer (typical in VMs, whose PMU is often not virtualized); the
#   summary says which. cpu-clock samples are taken from a timer interrupt,
#   so code running with interrupts disabled is charged to where they were
#   enabled again (irq restore, spin_unlock_irqrestore).
# - perf itself runs on CPU_LOAD (with wrk and the upstream), so its buffer
#   copying does not show up on the proxy's CPU; it takes a little CPU from
#   the load side instead.
# - perf is started with its events disabled and switched on and off through
#   its control FIFO, with the request counters read right before each switch,
#   so the sampled window and the counted window are the same to within one
#   counter read (a few ms).
#
# Requests in the window: turnpike (and base) from their own counter
# (turnpike_requests_total summed over /metrics); nginx and HAProxy have no
# counter in the bench configs, so the upstream nginx's stub_status
# "requests" (every proxied request reaches it once) counts for them. Both
# are printed for turnpike.

set -u -o pipefail

usage() {
	cat <<'EOF'
usage: bench/cpu_profile.sh [options]
  -p, --proxy P         turnpike (default), nginx, haproxy or base (env PROXY)
  -c, --conns N         wrk connections (env CONNS, default 64)
  -d, --duration S      seconds of the wrk run; perf records its middle half
                        (env DURATION, default 10, at least 2)
  -t, --threads N       wrk threads (env WRK_THREADS, default 2)
  -w, --warmup S        seconds of wrk before the profiled run (env WARMUP, default 2)
  -F, --freq HZ         samples per second (env FREQ, default 4000)
  -o, --out DIR         results directory (env RESULTS_DIR,
                        default bench/results/cpu-profile-<proxy>-<timestamp>)
other env: TURNPIKE_BIN, TURNPIKE_BASE_BIN, NGINX_BIN, HAPROXY_BIN, WRK_BIN, PERF_BIN,
           CPU_PROXY, CPU_LOAD, READY_TIMEOUT, WRK_TIMEOUT, KEEP_PERF=1 (keep perf.data),
           KEEP_TMP=1
EOF
}

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ORIG_ARGS=("$@")
PROXY=${PROXY:-turnpike}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
WRK_THREADS=${WRK_THREADS:-2}
WARMUP=${WARMUP:-2}
FREQ=${FREQ:-4000}
RESULTS_DIR=${RESULTS_DIR:-}
PERF_BIN=${PERF_BIN:-/usr/bin/perf}
PYTHON=/usr/bin/python3

while [ $# -gt 0 ]; do
	case $1 in
	-p | --proxy) PROXY=$2; shift 2 ;;
	-c | --conns) CONNS=$2; shift 2 ;;
	-d | --duration) DURATION=$2; shift 2 ;;
	-t | --threads) WRK_THREADS=$2; shift 2 ;;
	-w | --warmup) WARMUP=$2; shift 2 ;;
	-F | --freq) FREQ=$2; shift 2 ;;
	-o | --out) RESULTS_DIR=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; tpb_die "unknown argument: $1" ;;
	esac
done

for v in CONNS DURATION WRK_THREADS WARMUP FREQ; do
	[[ "${!v}" =~ ^[0-9]+$ ]] || tpb_die "$v must be a whole number (got '${!v}')"
done
[ "$CONNS" -ge 1 ] || tpb_die "CONNS must be at least 1"
[ "$DURATION" -ge 2 ] || tpb_die "DURATION must be at least 2 (perf records its middle half)"
[ "$WRK_THREADS" -ge 1 ] || tpb_die "WRK_THREADS must be at least 1"
{ [ "$FREQ" -ge 100 ] && [ "$FREQ" -le 20000 ]; } || tpb_die "FREQ must be within 100..20000"
case $PROXY in
nginx | haproxy | turnpike | base) ;;
*) tpb_die "unknown proxy '$PROXY' (known: nginx haproxy turnpike base)" ;;
esac
[ -x "$PERF_BIN" ] || tpb_die "perf not found ($PERF_BIN; Debian: linux-perf)"
[ -x "$PYTHON" ] || tpb_die "$PYTHON not found"

stamp=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR=${RESULTS_DIR:-$TPB_BENCH/results/cpu-profile-$PROXY-$stamp}
mkdir -p "$RESULTS_DIR" || tpb_die "cannot create $RESULTS_DIR"
SUMMARY=$RESULTS_DIR/summary.txt

tpb_init
tpb_pick_cpus
[ -n "$TPB_CPU_PROXY" ] || tpb_die "needs two CPUs: the profile is of the proxy's CPU alone"
tpb_raise_nofile $((CONNS * 4 + 1024))

# Hardware cycles if the PMU has them, else the cpu-clock timer. cpu-clock
# gets a fixed period in ns, so samples x period is CPU time directly.
if "$PERF_BIN" stat -x, -e cycles -- true 2>&1 | grep -q '^[0-9]'; then
	EVENT="cycles"
	PERF_EV=(-e cycles -F "$FREQ")
	EVENT_NOTE="hardware cycles, ~$FREQ samples/s"
else
	EVENT="cpu-clock"
	PERIOD_NS=$((1000000000 / FREQ))
	PERF_EV=(-e cpu-clock -c "$PERIOD_NS")
	EVENT_NOTE="cpu-clock, one sample every ${PERIOD_NS} ns (no hardware cycles event:"
	EVENT_NOTE+=" this machine's PMU is not available to perf, e.g. not virtualized)"
fi

cmdline="PROXY=$PROXY CONNS=$CONNS DURATION=$DURATION WRK_THREADS=$WRK_THREADS WARMUP=$WARMUP FREQ=$FREQ"
case $PROXY in turnpike | base) cmdline+=" TURNPIKE_BIN=$(tpb_shell_quote "$TURNPIKE_BIN")" ;; esac
[ "$PROXY" = base ] && cmdline+=" TURNPIKE_BASE_BIN=$(tpb_shell_quote "$TURNPIKE_BASE_BIN")"
cmdline+=" $(tpb_shell_quote "$0" "${ORIG_ARGS[@]}")"
{
	echo "command: $cmdline"
	echo "date: $(date -Is); host: $(uname -n); nproc: $(nproc); proxy CPU: $TPB_CPU_PROXY;" \
		"wrk+upstream+perf CPU: ${TPB_CPU_LOAD:-unpinned}; open files: $TPB_NOFILE"
	echo "results: $RESULTS_DIR"
} | tee "$SUMMARY"
tpb_versions 2>&1 | tee -a "$SUMMARY"
tpb_log "perf:     $("$PERF_BIN" version 2>&1)"

tpb_upstream_start
tpb_log "upstream nginx on 127.0.0.1:$TPB_UP_PORT (stub_status on :$TPB_UP_STATUS_PORT), pid $TPB_UP_PID"
tpb_proxy_start "$PROXY" plain || tpb_die "$PROXY: $TPB_PROXY_ERR"
cp -f "$TPB_PROXY_CONF" "$RESULTS_DIR/" 2>/dev/null
url="http://127.0.0.1:$TPB_PROXY_PORT/"
tpb_log "$PROXY on 127.0.0.1:$TPB_PROXY_PORT, pid $TPB_PROXY_PID"

# ---------------------------------------------------------------- counters

# The counters are read right next to the perf switches, so they must be
# quick and steady: plain bash over /dev/tcp, no curl or awk to fork on the
# saturated load CPU (a fork there can take tens of ms).

# http_get PORT PATH: HTTP/1.0 GET to 127.0.0.1:PORT (the server closes after
# the answer), the whole response in CP_BODY; at most 2 s.
http_get() {
	local fd
	CP_BODY=""
	exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&"$fd"
	# read returns nonzero at EOF, which is the normal end here.
	read -r -d '' -t 2 -u "$fd" CP_BODY
	exec {fd}>&-
	[ -n "$CP_BODY" ]
}

# Requests the upstream has served so far (stub_status "requests", which
# counts the status request itself too), in CP_UPREQ (empty on failure).
up_requests() {
	local line n=0 c
	CP_UPREQ=""
	http_get "$TPB_UP_STATUS_PORT" / || return
	CP_BODY=${CP_BODY#*$'\r\n\r\n'}
	while IFS= read -r line; do
		n=$((n + 1))
		[ "$n" = 3 ] || continue
		read -r _ _ c _ <<<"$line"
		[[ "$c" =~ ^[0-9]+$ ]] && CP_UPREQ=$c
		break
	done <<<"$CP_BODY"
}

# turnpike's own count of requests answered (turnpike_requests_total over
# every route and status class), in CP_OWNREQ; empty for the other proxies
# or when /metrics is unreadable.
own_requests() {
	local line v sum=0 n=0
	CP_OWNREQ=""
	case $PROXY in turnpike | base) ;; *) return ;; esac
	http_get "$TPB_ADMIN_PORT" /metrics || return
	while IFS= read -r line; do
		case $line in
		turnpike_requests_total\{* | "turnpike_requests_total "*)
			v=${line##* }
			v=${v%$'\r'}
			[[ "$v" =~ ^[0-9]+$ ]] || return
			sum=$((sum + v))
			n=$((n + 1))
			;;
		esac
	done <<<"$CP_BODY"
	[ "$n" -gt 0 ] && CP_OWNREQ=$sum
}

# ------------------------------------------------------------- perf control

mkfifo "$TPB_TMP/perf.ctl" "$TPB_TMP/perf.ack" || tpb_die "mkfifo failed"
PERF_DATA=$RESULTS_DIR/perf.data

# perf_cmd CMD: one command to perf record over its control FIFO, waiting
# (bounded) for its acknowledgement. The FIFOs are opened read-write, which
# never blocks, so a perf that died cannot hang the script.
perf_cmd() {
	local ack=""
	echo "$1" >&8 || return 1
	read -r -t 10 ack <&9 || return 1
	[ "$ack" = ack ]
}

# Runs in the background during the measured wrk run (started with
# tpb_start, so the cleanup trap knows it): waits for the middle of the run,
# then reads the counters, enables perf, waits, reads the counters again and
# disables perf. Everything it measured goes to $TPB_TMP/window as KEY=VALUE.
window() {
	local lead=$1 len=$2 out=$TPB_TMP/window t0 t1 up0 up1 own0 own1 tk0 tk1
	local pt0 pi0 ps0 pt1 pi1 ps1
	[ -n "$TPB_CPU_LOAD" ] && taskset -cp "$TPB_CPU_LOAD" "$BASHPID" >/dev/null 2>&1
	exec 8<>"$TPB_TMP/perf.ctl" 9<>"$TPB_TMP/perf.ack"
	sleep "$lead"
	# At both ends the same order, CPU times, then the request counters
	# (the one used for the figures last), then the switch, so the counted
	# and the sampled windows have the same length to within a counter read.
	tpb_cpu_ticks "$TPB_PROXY_PID"
	tk0=$TPB_TICKS
	tpb_cpu_stat "$TPB_CPU_PROXY"
	pt0=$TPB_CS_TOTAL pi0=$TPB_CS_IDLE ps0=$TPB_CS_STEAL
	up_requests
	up0=$CP_UPREQ
	own_requests
	own0=$CP_OWNREQ
	perf_cmd enable || { echo "error=perf did not acknowledge enable" >"$out"; return 1; }
	t0=$EPOCHREALTIME
	sleep "$len"
	tpb_cpu_ticks "$TPB_PROXY_PID"
	tk1=$TPB_TICKS
	tpb_cpu_stat "$TPB_CPU_PROXY"
	pt1=$TPB_CS_TOTAL pi1=$TPB_CS_IDLE ps1=$TPB_CS_STEAL
	up_requests
	up1=$CP_UPREQ
	own_requests
	own1=$CP_OWNREQ
	perf_cmd disable || { echo "error=perf did not acknowledge disable" >"$out"; return 1; }
	t1=$EPOCHREALTIME
	perf_cmd stop
	{
		echo "wall_us=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", (b - a) * 1e6}')"
		# The end read of stub_status counts itself: minus one.
		[ -n "$up0" ] && [ -n "$up1" ] && echo "up_req=$((up1 - up0 - 1))"
		[ -n "$own0" ] && [ -n "$own1" ] && echo "own_req=$((own1 - own0))"
		echo "proxy_ticks=$((tk1 - tk0))"
		echo "cpu_busy_ticks=$(((pt1 - pt0) - (pi1 - pi0) - (ps1 - ps0)))"
		echo "cpu_total_ticks=$((pt1 - pt0))"
		echo "cpu_steal_ticks=$((ps1 - ps0))"
		echo "pids=$(tpb_descendants "$TPB_PROXY_PID" | tr '\n' ',')$TPB_PROXY_PID"
	} >"$out"
}

# ---------------------------------------------------------------------- run

if [ "$WARMUP" -gt 0 ]; then
	tpb_log "warmup: ${WARMUP}s of wrk, $CONNS connections"
	tpb_wrk "$url" "$CONNS" "$WARMUP" "$RESULTS_DIR/wrk-warmup.txt" || tpb_warn "warmup run failed"
fi

tpb_start "$RESULTS_DIR/perf-record.log" "$TPB_CPU_LOAD" "$PERF_BIN" record "${PERF_EV[@]}" \
	-g -C "$TPB_CPU_PROXY" -D -1 \
	--control "fifo:$TPB_TMP/perf.ctl,$TPB_TMP/perf.ack" -o "$PERF_DATA"
PERF_PID=$TPB_LAST_PID
# perf says "Events disabled" once it has set everything up (with -C it
# first records the mappings of every process, which takes a moment).
for ((i = 0; i < 300; i++)); do
	grep -q 'Events disabled' "$RESULTS_DIR/perf-record.log" 2>/dev/null && break
	tpb_alive "$PERF_PID" || break
	sleep 0.1
done
grep -q 'Events disabled' "$RESULTS_DIR/perf-record.log" 2>/dev/null ||
	tpb_die "perf record did not start: $(tail -n 3 "$RESULTS_DIR/perf-record.log" | tr '\n' ' ')"

read -r LEAD LEN < <(awk -v d="$DURATION" 'BEGIN {printf "%.2f %.2f\n", d / 4, d / 2}')
tpb_log "profiling: wrk ${DURATION}s, $CONNS connections; perf on CPU $TPB_CPU_PROXY from ${LEAD}s for ${LEN}s"
rm -f "$TPB_TMP/window"
tpb_start "$TPB_TMP/window.log" "" window "$LEAD" "$LEN"
WINDOW_PID=$TPB_LAST_PID
tpb_wrk "$url" "$CONNS" "$DURATION" "$RESULTS_DIR/wrk.txt" || tpb_die "wrk failed"
wait "$WINDOW_PID"
tpb_stop "$WINDOW_PID" 10
# perf got "stop"; give it time to write its file, then make sure it is gone.
for ((i = 0; i < 100; i++)); do
	tpb_alive "$PERF_PID" || break
	sleep 0.1
done
tpb_stop "$PERF_PID" 100
tpb_alive "$TPB_PROXY_PID" || tpb_die "$PROXY died during the run"
tpb_stop "$TPB_PROXY_PID"

[ -s "$TPB_TMP/window" ] || tpb_die "the recording window measured nothing: $(cat "$TPB_TMP/window.log" 2>/dev/null)"
declare -A W=()
while IFS='=' read -r k v; do W[$k]=$v; done <"$TPB_TMP/window"
[ -z "${W[error]:-}" ] || tpb_die "${W[error]}"
[ -s "$PERF_DATA" ] || tpb_die "perf wrote no data: $(tail -n 3 "$RESULTS_DIR/perf-record.log" | tr '\n' ' ')"

case $PROXY in
turnpike | base)
	REQ=${W[own_req]:-}
	REQ_SRC="turnpike_requests_total from $PROXY's /metrics"
	if [ -z "$REQ" ]; then
		REQ=${W[up_req]:-}
		REQ_SRC="upstream stub_status requests ($PROXY's /metrics unreadable)"
	fi
	;;
*)
	REQ=${W[up_req]:-}
	REQ_SRC="upstream stub_status requests ($PROXY has no request counter in the bench config)"
	;;
esac
{ [ -n "$REQ" ] && [ "$REQ" -gt 0 ]; } || tpb_die "no request count for the window"

# ------------------------------------------------------------------- report

"$PERF_BIN" report -i "$PERF_DATA" --no-children --sort dso,sym --stdio -g none \
	--percent-limit 0.1 >"$RESULTS_DIR/perf-report.txt" 2>"$RESULTS_DIR/perf-report.err"

# The classifier: reads `perf script` output on stdin, the window's figures
# from the environment, prints the tables and writes categories.csv.
# Pattern tables: USER_RULES (leaf frame of a user-space sample, by DSO or
# symbol) and KERNEL_RULES (kernel frames, walked from the leaf towards the
# syscall/interrupt entry: the first frame matching any rule decides, so
# helpers without a rule, such as memcpy, slab, locks or skb alloc/free, are
# charged to the layer that called them). Rules are regexes over the symbol
# name; within one frame the first rule in table order wins.
read -r -d '' CLASSIFIER <<'PY'
import collections, csv, os, re, sys

USER_RULES = [  # (category, field, regex) for the leaf frame of a user sample
    ("user: malloc (jemalloc / libc malloc)", "dso", r"libjemalloc"),
    ("user: malloc (jemalloc / libc malloc)", "sym",
     r"^(__libc_)?(malloc|free|calloc|realloc|cfree|posix_memalign|aligned_alloc|memalign)$"
     r"|^_int_(malloc|free|realloc)|^malloc_consolidate$|^tcache_|^(je|_rjem)_|^(sd|rd|x)?mallocx$|^sdallocx$"),
    ("user: llhttp", "sym", r"^llhttp"),
    ("user: nghttp2", "dso", r"libnghttp2"),
    ("user: OpenSSL", "dso", r"libssl|libcrypto"),
    ("user: liburing", "dso", r"liburing"),
    ("user: libc", "dso", r"(^|/)libc[.-]"),
    ("user: vdso", "dso", r"^\[vdso\]$"),
]
# user: <binary> own code is added at run time for the proxy's binary.

KERNEL_RULES = [  # (category, regex over the symbol) for kernel frames
    ("kernel: io_uring", r"^_*io_(?!schedule|serial|apic)|^io_uring|^tctx_task_work|^io_wq_"),
    ("kernel: epoll", r"^_*ep_|^do_epoll_|^_*(x64_|se_|do_)sys_epoll_|^epoll_"),
    ("kernel: scheduler, wakeups, IPIs",
     r"^(schedule.*|__schedule|preempt_schedule.*|try_to_wake_up|ttwu_.*|sched_ttwu_pending"
     r"|__wake_up.*|wake_up_.*|autoremove_wake_function|default_wake_function|woken_wake_function"
     r"|enqueue_task.*|dequeue_task.*|(enqueue|dequeue)_entity|pick_next_task.*|pick_task.*|put_prev_task.*"
     r"|set_next_entity|update_curr.*|update_load_avg|__update_load_avg.*|update_cfs_group|reweight_entity"
     r"|select_task_rq.*|select_idle_.*|check_preempt.*|wakeup_preempt.*|resched_curr|psi_.*"
     r"|finish_task_switch.*|context_switch|__switch_to.*|switch_mm.*|prepare_task_switch"
     r"|update_rq_clock.*|place_entity|cpuacct_charge|__smp_call_single_queue|smp_call_function.*"
     r"|send_call_function_single_ipi|.*send_IPI.*|flush_smp_call_function_queue"
     r"|__flush_smp_call_function_queue|.*sysvec_call_function_single|.*sysvec_reschedule_ipi"
     r"|do_sched_yield|idle_cpu|available_idle_cpu|newidle_balance|sched_balance_.*|load_balance)$"),
    ("kernel: TCP send path",
     r"^(tcp_sendmsg.*|tcp_push.*|__tcp_push_pending_frames|tcp_write_xmit|__tcp_transmit_skb"
     r"|tcp_transmit_skb|tcp_skb_entail|tcp_stream_alloc_skb|sk_stream_alloc_skb|tcp_send_mss"
     r"|tcp_current_mss|tcp_established_options|tcp_options_write|tcp_event_new_data_sent"
     r"|tcp_rate_skb_sent|tcp_wmem_schedule|tcp_send_ack|__tcp_send_ack.*|tcp_send_delayed_ack"
     r"|tcp_small_queue_check.*|tcp_tso_segs|tcp_mtu_probe|tcp_chrono_.*|tcp_update_skb_after_send"
     r"|tcp_rearm_rto|tcp_schedule_loss_probe|ip_queue_xmit|__ip_queue_xmit|ip_output|ip_finish_output.*"
     r"|__ip_finish_output|ip_local_out|__ip_local_out|ip_send_check|neigh_.*output|dst_output"
     r"|dev_queue_xmit.*|__dev_queue_xmit|dev_hard_start_xmit|loopback_xmit|netif_rx.*|__netif_rx"
     r"|enqueue_to_backlog|validate_xmit_skb.*|skb_do_copy_data_nocache|skb_copy_to_page_nocache"
     r"|sk_page_frag_refill|skb_page_frag_refill|do_tcp_sendpages|tcp_sendpage.*"
     r"|inet_sendmsg|sock_sendmsg.*|__sock_sendmsg|____sys_sendmsg|___sys_sendmsg|__sys_sendto"
     r"|__sys_sendmsg|sock_write_iter)$"),
    ("kernel: softirq / loopback receive (TCP input)",
     r"^(net_rx_action|__napi_poll|napi_poll|process_backlog|__netif_receive_skb.*|netif_receive_skb.*"
     r"|ip_rcv.*|ip_list_rcv|ip_sublist_rcv.*|ip_local_deliver.*|ip_protocol_deliver_rcu"
     r"|tcp_v4_rcv|tcp_v4_do_rcv|tcp_rcv_established|tcp_rcv_state_process|tcp_data_queue"
     r"|tcp_queue_rcv|tcp_event_data_recv|tcp_ack.*|tcp_clean_rtx_queue.*|tcp_check_space|tcp_new_space"
     r"|tcp_validate_incoming|tcp_add_backlog|tcp_filter|sk_filter_trim_cap|tcp_v4_early_demux"
     r"|__inet_lookup_established|inet_ehashfn|__tcp_ack_snd_check|tcp_rtt_estimator|tcp_data_ready"
     r"|sock_def_readable|sk_stream_write_space|tcp_release_cb|__release_sock|tcp_grow_window"
     r"|tcp_measure_rcv_mss|tcp_rcv_rtt_update|tcp_try_coalesce|tcp_ofo_queue|tcp_fast_path_check"
     r"|tcp_mstamp_refresh|handle_softirqs|__do_softirq|do_softirq.*|run_ksoftirqd)$"),
    ("kernel: TCP receive path",
     r"^(tcp_recvmsg.*|tcp_cleanup_rbuf|tcp_rcv_space_adjust|skb_copy_datagram_.*|__skb_datagram_iter"
     r"|simple_copy_to_iter|tcp_recv_timestamp|sk_wait_data|tcp_eat_recv_skb|skb_attempt_defer_free"
     r"|tcp_inq.*|tcp_read_.*|inet_recvmsg|sock_recvmsg.*|__sock_recvmsg|____sys_recvmsg|___sys_recvmsg"
     r"|__sys_recvfrom|__sys_recvmsg|sock_read_iter)$"),
    ("kernel: timers, interrupts, RCU",
     r"^(hrtimer_.*|__hrtimer_.*|tick_.*|.*sysvec_apic_timer_interrupt|update_process_times"
     r"|scheduler_tick|sched_tick|run_timer_softirq|__run_timers|run_timer_base|call_timer_fn"
     r"|irq_enter_rcu|irq_exit_rcu|__irq_exit_rcu|irqentry_.*|account_.*_time|rcu_.*|__note_gp_changes"
     r"|lapic_next_.*|clockevents_.*|perf_.*|__perf_.*|irq_work_.*|.*sysvec_.*|common_interrupt"
     r"|__common_interrupt|handle_irq_event.*|handle_edge_irq)$"),
    ("kernel: page faults, mmap/brk",
     r"^(asm_exc_page_fault|exc_page_fault|do_user_addr_fault|handle_mm_fault|__handle_mm_fault"
     r"|do_anonymous_page|do_fault|do_wp_page|wp_page_copy|do_huge_pmd_anonymous_page"
     r"|__do_sys_brk|__x64_sys_brk|do_brk_flags|__x64_sys_mmap|__x64_sys_munmap|__vm_munmap"
     r"|do_vmi_munmap|do_vmi_align_munmap|ksys_mmap_pgoff|vm_mmap_pgoff|do_mmap|__x64_sys_madvise"
     r"|do_madvise|madvise_.*|zap_page_range.*|unmap_page_range|tlb_finish_mmu)$"),
    ("kernel: syscall entry/exit, fd and VFS",
     r"^(entry_SYSCALL_64.*|do_syscall_64|syscall_exit_to_user_mode.*|syscall_enter_from_user_mode.*"
     r"|exit_to_user_mode.*|__exit_to_user_mode.*|arch_exit_to_user_mode.*|syscall_return_via_sysret"
     r"|entry_SYSRETQ.*|x64_sys_call|__x64_sys_.*|__do_sys_.*|__se_sys_.*|ksys_.*|vfs_(read|write)v?"
     r"|do_writev|do_readv|do_iter_.*|new_sync_.*|rw_verify_area|__fget.*|__fdget.*|fdget.*|fput.*|__fput"
     r"|sockfd_lookup_light|switch_fpu_return|fpregs_.*|restore_fpregs_from_fpstate"
     r"|__rseq_handle_notify_resume|rseq_.*|syscall_trace_enter|__audit_syscall.*|__sys_.*"
     r"|import_iovec|__import_iovec|copy_iovec_from_user|entry_untrain_ret|clear_bhb_loop"
     r"|error_entry|error_return)$"),
    ("idle", r"^(default_idle.*|.*safe_halt|arch_cpu_idle.*|do_idle|cpuidle_.*|cpu_startup_entry"
             r"|mwait_idle.*|intel_idle.*|acpi_idle.*|poll_idle|halt|start_secondary|rest_init"
             r"|.*_idle_call|play_idle_precise)$"),
]
SOFTIRQ = re.compile(r"^(handle_softirqs|__do_softirq|net_rx_action|run_ksoftirqd)$")

env = os.environ
pids = set(int(p) for p in env["CP_PIDS"].split(",") if p)
binary = env["CP_BINARY"]
event = env["CP_EVENT"]
req = int(env["CP_REQ"])
period_ns = int(env.get("CP_PERIOD_NS") or 0)
stat_busy_us = float(env["CP_STAT_BUSY_US"])
proxy_us = float(env["CP_PROXY_US"])

user_rules = [(c, f, re.compile(r)) for c, f, r in USER_RULES]
user_rules.append(("user: %s own code" % binary, "dso", re.compile(r"(^|/)%s$" % re.escape(binary))))
kernel_rules = [(c, re.compile(r)) for c, r in KERNEL_RULES]
OTHER_PROC = "other processes on this CPU"

head_re = re.compile(r"^(?P<comm>.*?)\s+(?P<pid>-?\d+)/(?P<tid>-?\d+)\s+(?P<period>\d+)\s*$")
frame_re = re.compile(r"^\s+(?P<addr>[0-9a-f]+)\s+(?P<sym>.*)\s+\((?P<dso>.*)\)\s*$")


def is_kernel(addr, dso):
    return int(addr, 16) >= 0xffff800000000000 or dso.startswith("[kernel")


def classify(pid, comm, frames):
    """frames: [(addr, sym, dso)] leaf first. Returns (category, leaf label)."""
    addr, sym, dso = frames[0]
    leaf = "%s  %s" % (os.path.basename(dso), sym)
    kframes = [f for f in frames if is_kernel(f[0], f[2])]
    in_softirq = any(SOFTIRQ.match(f[1]) for f in kframes)
    mine = pid in pids or pid == 0 or comm.startswith("ksoftirqd")
    if not mine and not in_softirq:
        return OTHER_PROC, comm
    if not is_kernel(addr, dso):
        for cat, field, rx in user_rules:
            if rx.search(sym if field == "sym" else dso):
                return cat, leaf
        return "user: other libraries (%s)" % os.path.basename(dso), leaf
    for _, fsym, _ in kframes:
        for cat, rx in kernel_rules:
            if rx.match(fsym):
                return cat, leaf
    return ("idle" if pid == 0 else "kernel: other"), leaf


weight = collections.Counter()      # category -> summed period
leafw = collections.Counter()       # (category, leaf) -> summed period
otherleaf = collections.Counter()   # leaf of "kernel: other"
othercomm = collections.Counter()   # comm of "other processes"
ctx = collections.Counter()         # proxy task / other / idle
nsamples = 0
cur = None
frames = []


def flush():
    global nsamples
    if cur is None or not frames:
        return
    comm, pid, period = cur
    cat, leaf = classify(pid, comm, frames)
    nsamples += 1
    weight[cat] += period
    leafw[(cat, leaf)] += period
    if cat == "kernel: other":
        otherleaf[leaf] += period
    if cat == OTHER_PROC:
        othercomm[leaf] += period
    if cat == "idle":
        ctx["idle"] += period
    elif pid in pids:
        ctx["the proxy's own threads"] += period
    elif cat == OTHER_PROC:
        ctx["other processes"] += period
    else:
        ctx["kernel work outside the proxy (softirq in idle/ksoftirqd/other tasks)"] += period


for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip():
        flush()
        cur, frames = None, []
        continue
    if not line[0].isspace():
        flush()
        frames = []
        m = head_re.match(line)
        cur = (m.group("comm"), int(m.group("pid")), int(m.group("period"))) if m else None
        continue
    m = frame_re.match(line)
    if m and cur is not None:
        frames.append((m.group("addr"), m.group("sym").strip(), m.group("dso")))
flush()

busy = sum(w for c, w in weight.items() if c != "idle")
total = sum(weight.values())
mine = busy - weight[OTHER_PROC]    # the proxy's threads + kernel work for it
if mine == 0:
    sys.exit("no samples of the proxy (or kernel work) on its CPU")
if event == "cpu-clock" and period_ns:
    busy_us = busy / 1000.0           # periods are nanoseconds of CPU time
    base = "perf samples x period (cpu-clock)"
else:
    busy_us = stat_busy_us            # cycles: time from /proc/stat
    base = "busy time from /proc/stat x sample share"


def us(w):
    return w / busy * busy_us / req


def pct(w):
    return 100.0 * w / mine


print("samples: %d (%s): idle %.1f %%, other processes %.1f %%, the proxy and kernel work on its"
      " behalf %.1f %%" % (nsamples, event, 100.0 * weight["idle"] / total,
                          100.0 * weight[OTHER_PROC] / total, 100.0 * mine / total))
print("per request: busy time of the proxy's CPU %.2f us (%s; /proc/stat says %.2f us),"
      % (busy_us / req, base, stat_busy_us / req))
print("  of which the proxy and kernel work on its behalf %.2f us; the proxy's processes alone"
      % us(mine))
print("  (utime+stime from /proc/PID/stat, compare.sh's cpu_us/req) %.2f us" % (proxy_us / req))
for k, w in ctx.most_common():
    if k not in ("idle", "other processes"):
        print("  %-70s %5.1f %%" % (k, pct(w)))
if othercomm:
    print("other processes (left out of the table): " + ", ".join(
        "%s %.1f %%" % (c, 100.0 * w / total) for c, w in othercomm.most_common(6)))
print()
print("share% = of the proxy and kernel work on its behalf (other processes and idle left out)")
print("%-48s %7s %8s" % ("category", "share%", "us/req"))
rows = sorted(((c, w) for c, w in weight.items() if c not in ("idle", OTHER_PROC)),
              key=lambda x: -x[1])
for c, w in rows:
    print("%-48s %7.1f %8.3f" % (c, pct(w), us(w)))
print("%-48s %7.1f %8.3f" % ("total", 100.0, us(mine)))
print()
print("top 15 symbols (leaf frame, self samples):")
print("%7s %8s  %-44s %s" % ("share%", "us/req", "category", "dso  symbol"))
top = [(k, w) for k, w in leafw.items() if k[0] not in ("idle", OTHER_PROC)]
for (c, leaf), w in sorted(top, key=lambda x: -x[1])[:15]:
    print("%7.1f %8.3f  %-44s %s" % (pct(w), us(w), c[:44], leaf))
if otherleaf:
    print()
    print("largest leaves in 'kernel: other' (no rule on their call chain):")
    for leaf, w in otherleaf.most_common(5):
        print("%7.1f %%  %s" % (pct(w), leaf))
with open(env["CP_CSV"], "w", newline="") as f:
    wr = csv.writer(f)
    wr.writerow(["category", "weight", "share_pct", "us_per_req"])
    for c, w in rows + [(OTHER_PROC, weight[OTHER_PROC])]:
        wr.writerow([c, w, "%.2f" % pct(w) if c != OTHER_PROC else "", "%.4f" % us(w)])
PY

wall_s=$(awk -v u="${W[wall_us]}" 'BEGIN {printf "%.3f", u / 1e6}')
case $PROXY in
nginx) binary=$(basename "$NGINX_BIN") ;;
haproxy) binary=$(basename "$HAPROXY_BIN") ;;
turnpike) binary=$(basename "$TURNPIKE_BIN") ;;
base) binary=$(basename "$TURNPIKE_BASE_BIN") ;;
esac
{
	echo
	echo "== where $PROXY's CPU goes: $CONNS connections, CPU $TPB_CPU_PROXY, window ${wall_s}s (from ${LEAD}s of a ${DURATION}s wrk run) =="
	echo "event: $EVENT_NOTE; call graphs (-g)"
	echo "requests in the window: $REQ ($REQ_SRC)"
	case $PROXY in
	turnpike | base) echo "  upstream stub_status over the same window: ${W[up_req]:-n/a}" ;;
	esac
	awk -v req="$REQ" -v w="$wall_s" -v wr="$TPB_W_REQ" -v wd="$TPB_W_DUR_US" -v hz="$TPB_CLK_TCK" \
		-v tot="${W[cpu_total_ticks]}" -v st="${W[cpu_steal_ticks]}" 'BEGIN {
		printf "req/s in the window %.0f; wrk over its whole run %.0f (perf on)\n", req / w, wr / (wd / 1e6)
		if (tot > 0 && st > 0) printf "steal on the proxy CPU during the window: %.1f %%\n", 100 * st / tot
	}'
	if [ "$TPB_W_SOCKERR" != 0 ] || [ "$TPB_W_NON2XX" != 0 ]; then
		echo "wrk errors: $TPB_W_SOCKERR socket, $TPB_W_NON2XX non-2xx"
	fi
	"$PERF_BIN" script -i "$PERF_DATA" -F comm,pid,tid,period,ip,sym,dso 2>"$RESULTS_DIR/perf-script.err" |
		CP_PIDS="${W[pids]}" CP_BINARY="$binary" CP_EVENT="$EVENT" CP_REQ="$REQ" \
			CP_PERIOD_NS="${PERIOD_NS:-}" CP_CSV="$RESULTS_DIR/categories.csv" \
			CP_STAT_BUSY_US="$(awk -v t="${W[cpu_busy_ticks]}" -v hz="$TPB_CLK_TCK" 'BEGIN {printf "%.0f", t * 1e6 / hz}')" \
			CP_PROXY_US="$(awk -v t="${W[proxy_ticks]}" -v hz="$TPB_CLK_TCK" 'BEGIN {printf "%.0f", t * 1e6 / hz}')" \
			"$PYTHON" -c "$CLASSIFIER"
	lost=$(grep -ci 'lost' "$RESULTS_DIR/perf-record.log")
	[ "$lost" = 0 ] || echo "note: perf reported lost samples: $(grep -i lost "$RESULTS_DIR/perf-record.log" | head -2 | tr '\n' ' ')"
	echo
	echo "full perf report (dso,sym, --no-children): $RESULTS_DIR/perf-report.txt"
} | tee -a "$SUMMARY"

if [ "${KEEP_PERF:-0}" = 1 ]; then
	tpb_log "kept $PERF_DATA"
else
	rm -f "$PERF_DATA" "$PERF_DATA.old"
fi
