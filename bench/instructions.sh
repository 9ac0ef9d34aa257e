#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench/instructions.sh: instructions turnpike executes per proxied request,
# counted by valgrind's callgrind, and where they go. Unlike times, the count
# hardly moves on a busy or noisy machine, so it can compare two builds (or
# two commits) run minutes apart.
#
# turnpike (one worker, the configuration of bench/compare.sh) runs under
# callgrind in front of the bench's nginx upstream. The script sends N1 and
# then N2 requests over C keep-alive connections, in two separate runs, and
# divides the difference of the totals by N2 - N1, so that start, warm-up and
# shutdown cancel out. It then prints the functions with the largest share of
# the N2 run (inclusive and self, per request).
#
# usage: bench/instructions.sh [-n N2] [-c CONNS] [-b BIN]...
#   -n N2     requests in the long run (default 20000; the short one is N2/4)
#   -c CONNS  keep-alive connections (default 16)
#   -b BIN    a turnpike binary to measure; repeat to compare builds
#             (default build/rel/turnpike)
#   -t N      functions to list per binary (default 25)
# Needs valgrind (scripts/setup.sh installs it).

set -u -o pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N2=20000
CONNS_N=16
TOP=25
BINS=()
while [ $# -gt 0 ]; do
	case $1 in
	-n) N2=$2; shift 2 ;;
	-c) CONNS_N=$2; shift 2 ;;
	-b) BINS+=("$2"); shift 2 ;;
	-t) TOP=$2; shift 2 ;;
	-h | --help) sed -n '3,22p' "$0"; exit 0 ;;
	*) tpb_die "unknown argument: $1" ;;
	esac
done
[ ${#BINS[@]} -gt 0 ] || BINS=("$TURNPIKE_BIN")
N1=$((N2 / 4))
# Without precise register updates at memory accesses, turnpike under valgrind
# 3.19 stops seeing completions after a few hundred requests (the old and the
# new runtime alike): the loop then waits forever. This flag avoids it.
VG_FLAGS=${VG_FLAGS:---vex-iropt-register-updates=allregs-at-mem-access}
command -v valgrind >/dev/null || tpb_die "valgrind not found (scripts/setup.sh installs it)"
command -v callgrind_annotate >/dev/null || tpb_die "callgrind_annotate not found"

tpb_init
tpb_pick_cpus
tpb_raise_nofile 4096
tpb_upstream_start

# Sends N requests over C keep-alive connections, one outstanding per connection.
drive() {
	/usr/bin/python3 - "$1" "$2" "$3" <<'EOF'
import socket, sys
port, n, c = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
req = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: instructions.sh\r\n\r\n"
socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(c)]
bufs = [b""] * c
def read_one(i):
    s = socks[i]
    while True:
        b = bufs[i]
        end = b.find(b"\r\n\r\n")
        if end >= 0:
            head = b[:end].decode("latin-1").lower()
            cl = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip() == "content-length":
                    cl = int(v)
            if len(b) >= end + 4 + cl:
                if not head.startswith("http/1.1 200"):
                    sys.exit("unexpected response: " + head.split("\r\n")[0])
                bufs[i] = b[end + 4 + cl:]
                return
        d = s.recv(65536)
        if not d:
            sys.exit("connection closed")
        bufs[i] += d
done = 0
while done < n:
    k = min(c, n - done)
    for i in range(k):
        socks[i].sendall(req)
    for i in range(k):
        read_one(i)
    done += k
EOF
}

# One run of BIN under callgrind with N requests; total instructions in TPB_IR.
run() {
	local bin=$1 n=$2 out=$3 dir=$TPB_TMP/turnpike pid
	rm -rf "$dir"
	mkdir -p "$dir"
	tpb_pick_port
	TPB_PROXY_PORT=$TPB_PORT
	tpb_pick_port
	TPB_ADMIN_PORT=$TPB_PORT
	tpb_proxy_render turnpike plain a
	tpb_start "$dir/stderr.log" "$TPB_CPU_PROXY" valgrind --tool=callgrind --callgrind-out-file="$out" $VG_FLAGS \
		--dump-instr=no --collect-jumps=no "$bin" -c "$dir/turnpike.yaml"
	pid=$TPB_LAST_PID
	READY_TIMEOUT=60 tpb_wait_http "http://127.0.0.1:$TPB_PROXY_PORT/" "$pid" ||
		{ cat "$dir/stderr.log" >&2; tpb_die "turnpike did not start under valgrind"; }
	drive "$TPB_PROXY_PORT" "$n" "$CONNS_N" || tpb_die "the request driver failed"
	tpb_stop "$pid" 600
	TPB_IR=$(awk '/^summary:/ {print $2}' "$out")
	[[ "$TPB_IR" =~ ^[0-9]+$ ]] || tpb_die "no instruction count in $out"
}

tpb_log "N1=$N1 N2=$N2 requests over $CONNS_N connections; upstream nginx on CPU ${TPB_CPU_LOAD:-any}"
printf '%-40s %14s %14s %10s\n' binary "Ir($N1)" "Ir($N2)" "Ir/request"
for bin in "${BINS[@]}"; do
	[ -x "$bin" ] || tpb_die "not executable: $bin"
	run "$bin" "$N1" "$TPB_TMP/cg.1"
	ir1=$TPB_IR
	run "$bin" "$N2" "$TPB_TMP/cg.2"
	ir2=$TPB_IR
	per=$(((ir2 - ir1) / (N2 - N1)))
	printf '%-40s %14s %14s %10s\n' "$bin" "$ir1" "$ir2" "$per"
	# where they go: the long run's functions, per request (start-up is in
	# the totals too, so small entries are approximate)
	callgrind_annotate --inclusive=yes --threshold=100 "$TPB_TMP/cg.2" 2>/dev/null |
		awk -v n="$N2" -v top="$TOP" '
			/^-+$/ { sep++; next }
			sep >= 2 && $1 ~ /^[0-9,]+$/ && shown < top {
				ir = $1; gsub(",", "", ir); fn = $NF; for (i = 2; i < NF; i++) if ($i !~ /^\(/) fn = $i
				printf "    %9.0f Ir/req incl  %s\n", ir / n, $0 ~ /\?\?\?/ ? $0 : $NF; shown++
			}' | sed 's/ \[[^]]*\]$//' >&2
	cp "$TPB_TMP/cg.2" "$TPB_TMP/callgrind.$(basename "$bin").$$" 2>/dev/null || true
done
