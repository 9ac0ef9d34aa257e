#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/instr_report.py: summarises a callgrind output file as instructions
per request, grouped by area, plus the top functions.

    instr_report.py CALLGRIND_OUT REQUESTS [TOP]

Only the exclusive cost (Ir) of each function is used: a cost line right
after a "calls=" line is the inclusive cost of that call, already counted in
the callee's own lines, and is skipped. Areas come from the source file (for
turnpike, built with -g) or the object file / function name (libraries).
Used by bench/instr.sh; see bench/README.md.
"""
import re
import sys
from collections import defaultdict

# (area, test on (object, file, function)); the first match wins.
AREAS = [
    ("llhttp parse", lambda o, f, fn: "llhttp" in o or fn.startswith("llhttp")),
    ("TLS (OpenSSL)", lambda o, f, fn: "libssl" in o or "libcrypto" in o),
    ("malloc/free", lambda o, f, fn: "jemalloc" in o
     or re.match(r"^(je_|_?_?libc_)?(malloc|free|calloc|realloc|posix_memalign|aligned_alloc|_int_malloc|_int_free|malloc_consolidate|tcache|cfree)", fn) is not None
     or fn.startswith(("_int_", "tcache_", "unlink_chunk"))),
    ("memcpy/memset/str*", lambda o, f, fn: "libc" in o and re.search(r"mem(cpy|move|set|cmp|chr|rchr)|str(len|cmp|ncmp|chr|casecmp|ncasecmp|nlen|spn|cspn)|__mem|__str", fn) is not None),
    ("io_uring (liburing)", lambda o, f, fn: "liburing" in o or fn.startswith(("io_uring_", "__io_uring", "__sys_io_uring", "_io_uring"))),
    ("libc other (syscall wrappers, time, printf)", lambda o, f, fn: "libc" in o),
    ("RCU (liburcu)", lambda o, f, fn: "liburcu" in o),
    ("routing/policy (src/policy)", lambda o, f, fn: "src/policy/" in f),
    ("request layer: route, header rules (request.c)", lambda o, f, fn: f.endswith("src/http/request.c")),
    ("proxy/attempts (proxy.c)", lambda o, f, fn: f.endswith("src/http/proxy.c")),
    ("HTTP/1 heads: parse glue, header build (h1.c)", lambda o, f, fn: f.endswith("src/http/h1.c")),
    ("client session (h1_server.c)", lambda o, f, fn: f.endswith("src/http/h1_server.c")),
    ("upstream exchange, pool (h1_client.c)", lambda o, f, fn: f.endswith("src/http/h1_client.c")),
    ("HTTP other (src/http)", lambda o, f, fn: "src/http/" in f),
    ("transport: recv/send queues (src/transport)", lambda o, f, fn: "src/transport/" in f),
    ("reactor: loop, dispatch, buffers, queues (src/rt)", lambda o, f, fn: "src/rt/" in f),
    ("core: timers, log, clock (src/core)", lambda o, f, fn: "src/core/" in f),
    ("admin/metrics (control thread)", lambda o, f, fn: "src/admin/" in f),
    ("config", lambda o, f, fn: "src/config/" in f),
    ("dynamic loader", lambda o, f, fn: "ld-linux" in o),
]


def parse(path):
    names = {"ob": {}, "fl": {}, "fn": {}}
    cost = defaultdict(int)  # (ob, fl, fn) -> Ir exclusive
    calls = defaultdict(int)  # callee fn -> number of calls
    ob = fl = fn = ""
    cur = None
    skip_next = False
    events = None
    totals = None

    def name(kind, rest):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", rest)
        if not m:
            return rest
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
            return m.group(2)
        return names[kind].get(m.group(1), "?")

    with open(path, errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and cur is not None:
                    cost[cur] += int(parts[1])
                continue
            key, _, rest = line.partition("=")
            if key == "ob":
                ob = name("ob", rest)
            elif key == "fl":
                fl = name("fl", rest)
            elif key in ("fi", "fe"):
                # inlined code: charge it to the file it came from
                if cur is not None:
                    cur = (ob, name("fl", rest), cur[2])
            elif key == "fn":
                fn = name("fn", rest)
                cur = (ob, fl, fn)
            elif key == "cob":
                name("ob", rest)
            elif key in ("cfi", "cfl"):
                name("fl", rest)
            elif key == "cfn":
                callee = name("fn", rest)
            elif key == "calls":
                calls[callee] += int(rest.split()[0])
                skip_next = True
            elif key == "events":
                events = rest.split()
            elif key == "totals" or key == "summary":
                totals = int(rest.split()[0])
    return cost, calls, totals


def area_of(o, f, fn):
    for a, test in AREAS:
        if test(o, f, fn):
            return a
    return "other: " + (o.rsplit("/", 1)[-1] or "?")


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    path, reqs = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    cost, calls, totals = parse(path)
    total = sum(cost.values())
    by_area = defaultdict(int)
    by_fn = defaultdict(int)
    fn_area = {}
    for (o, f, fn), ir in cost.items():
        a = area_of(o, f, fn)
        by_area[a] += ir
        by_fn[fn] += ir
        fn_area.setdefault(fn, a)
    print(f"INSTR total_Ir={total} requests={reqs} Ir_per_request={total / reqs:.0f}")
    if totals is not None and totals != total:
        print(f"(callgrind's own total: {totals})")
    print()
    print(f"{'area':<52} {'Ir/req':>9} {'share':>6}")
    for a, ir in sorted(by_area.items(), key=lambda kv: -kv[1]):
        print(f"{a:<52} {ir / reqs:9.0f} {100 * ir / total:5.1f}%")
    print()
    print(f"top {top} functions (exclusive Ir)")
    print(f"{'function':<44} {'Ir/req':>8} {'calls/req':>9}  area")
    for fn, ir in sorted(by_fn.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{fn[:44]:<44} {ir / reqs:8.0f} {calls.get(fn, 0) / reqs:9.2f}  {fn_area[fn]}")
    print()
    wanted = ["malloc", "free", "calloc", "realloc", "tp_sqe", "io_uring_submit", "io_uring_submit_and_wait_timeout",
              "llhttp_execute", "tp_router_match"]
    seen = [(w, calls[w]) for w in wanted if calls.get(w)]
    if seen:
        print("calls per request: " + "  ".join(f"{w}={n / reqs:.2f}" for w, n in seen))


if __name__ == "__main__":
    main()
