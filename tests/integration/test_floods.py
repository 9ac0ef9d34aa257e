# SPDX-License-Identifier: MIT
"""Floods: 10,000 pipelined requests in one write, and more connections than
the gateway has file descriptors (RLIMIT_NOFILE 256).

Memory is read from /proc/<pid>/status (VmRSS) after a warm-up that touched the
whole receive buffer pool (tp_hostile.warm_buffer_pool), with ASan's quarantine
kept small (tp_hostile.asan_env). CPU time is read from /proc/<pid>/stat. The
bounds are generous: they catch unbounded growth and busy loops, they do not
measure performance. No duration is asserted."""
import os
import re
import resource
import select
import socket
import subprocess
import threading
import time

import pytest

import tp_harness
from tp_harness import T, Client, get, raise_nofile, upstream_cfg
from tp_hostile import asan_env, cpu_seconds, hostile, vm_rss_kib, warm_buffer_pool
from tp_more import EnvTurnpike, env_turnpike

MiB = 1 << 20

# --------------------------------------------------------------------------
# 1. 10,000 pipelined requests in one write
# --------------------------------------------------------------------------

N_PIPELINED = 10000


def test_10000_pipelined_gets_in_one_write(h):
    up = hostile(h)
    tp = env_turnpike(h, {"workers": 1, "upstreams": [upstream_cfg("main", up)], "routes": [{"upstream": "main"}]},
                      asan_env())
    warm_buffer_pool(tp.port)
    base = peak = vm_rss_kib(tp.proc.pid)
    data = b"".join(b"GET /p/%d HTTP/1.1\r\nHost: t\r\nX-Request-Id: r%d\r\n\r\n" % (i, i) for i in range(N_PIPELINED))
    c = Client(tp.port, timeout=T(10))
    sent = threading.Event()
    send_err = []

    def sender():
        try:
            c.sock.sendall(data)  # one write; the kernel splits it as it likes
        except OSError as e:
            send_err.append(e)
        sent.set()

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        for i in range(N_PIPELINED):
            r = c.read_response()
            assert (r.status, r.body) == (200, b"good /p/%d" % i), f"response {i}: {r!r}"
            assert r.header("x-request-id") == f"r{i}", f"response {i} out of order: {r!r}"
            if i % 500 == 0:
                peak = max(peak, vm_rss_kib(tp.proc.pid))
        peak = max(peak, vm_rss_kib(tp.proc.pid))
        assert sent.wait(T(10)) and not send_err, send_err
        assert not c.buf, f"bytes after the last response: {bytes(c.buf[:200])!r}"
        rd, _, _ = select.select([c.sock], [], [], 0)
        assert not rd, "unexpected data (or close) after the last response"
    finally:
        c.close()
        t.join(T(10))
    growth = (peak - base) / 1024
    print(f"pipelined {N_PIPELINED}: gateway RSS {base / 1024:.1f} -> {peak / 1024:.1f} MiB")
    assert growth < 64, f"gateway RSS grew {growth:.0f} MiB serving {N_PIPELINED} pipelined requests"
    assert [tgt for _, tgt in up.served] == [f"/p/{i}" for i in range(N_PIPELINED)]


# --------------------------------------------------------------------------
# 2. more connections than file descriptors
# --------------------------------------------------------------------------

NOFILE = 256
N_FLOOD = 600


class LimitedTurnpike(EnvTurnpike):
    """A turnpike started with RLIMIT_NOFILE soft = hard = NOFILE (it raises its
    soft limit to the hard one at start, so both are set)."""

    def spawn(self):
        self._write_config()
        self.stderr_f = open(self.stderr_path, "ab")
        self.stdout_f = open(self.stdout_path, "ab")

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

        self.proc = subprocess.Popen([tp_harness.BIN, "-c", str(self.config_path)], stdout=self.stdout_f,
                                     stderr=self.stderr_f, stdin=subprocess.DEVNULL, env=self.env,
                                     preexec_fn=limit)
        return self


def open_flood(port, n):
    """n non-blocking connects; returns (sockets, how many completed within a bounded wait)."""
    socks = []
    pending = {}
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        assert err in (0, 115), f"connect: errno {err}"  # 115 = EINPROGRESS
        socks.append(s)
        pending[s.fileno()] = s
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    done = 0
    deadline = time.monotonic() + T(5)
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            s = pending.pop(fd)
            poller.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done += 1
    return socks, done


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def flood(h):
    """A gateway limited to NOFILE descriptors, with N_FLOOD idle client connections
    open against it (more than its descriptors allow). Yields (tp, up, sockets)."""
    if raise_nofile(N_FLOOD * 2 + 200) < N_FLOOD + 100:
        pytest.skip(f"this process cannot hold {N_FLOOD + 100} sockets")
    up = h.upstream()
    cfg = {"workers": 1, "timeouts": {"client_header": "60s", "client_idle": "60s"},
           "upstreams": [upstream_cfg("main", up)], "routes": [{"upstream": "main"}]}
    tp = LimitedTurnpike(h.tmp_path, cfg, {}, name=f"tp{len(h.turnpikes)}")
    h.turnpikes.append(tp)
    tp.start()
    assert get(tp.port, "/before").status == 200
    socks, connected = open_flood(tp.port, N_FLOOD)
    try:
        # the gateway takes what its descriptors leave room for and closes the rest at
        # accept (turnpike_connections_rejected_total), keeping descriptors for the admin
        # listener and upstream connections
        def shed():
            st, body = tp.admin_get("/metrics", timeout=T(3))
            m = re.search(rb"^turnpike_connections_rejected_total (\d+)$", body, re.M)
            return st == 200 and m and int(m.group(1)) > 0
        tp_harness.wait_until(shed, T(10), interval=0.05, what="the gateway to shed connections over its limit")
        assert fd_count(tp.proc.pid) < NOFILE, "the gateway used every descriptor"
        print(f"flood: {connected} of {N_FLOOD} connects completed; gateway holds {fd_count(tp.proc.pid)} fds")
        yield tp, up, socks
    finally:
        for s in socks:
            s.close()


def test_connection_flood_over_nofile_gateway_survives(flood):
    tp, up, socks = flood
    assert tp.proc.poll() is None, f"the gateway died in the flood:\n{tp.stderr()[-3000:]}"
    for s in socks:
        s.close()
    # once the flood is gone, an ordinary request succeeds and the admin listener answers
    c = Client(tp.port, timeout=T(10))
    c.request("GET", "/after")
    r = c.read_response()
    assert (r.status, r.body) == (200, b"GET /after"), r
    c.close()
    assert tp.admin_get("/healthz", timeout=T(10)) == (200, b"ok\n")
    assert tp.proc.poll() is None


def test_connection_flood_admin_healthz_answers(flood):
    tp, up, socks = flood
    st, body = tp.admin_get("/healthz", timeout=T(3))
    assert (st, body) == (200, b"ok\n")


def test_connection_flood_no_busy_loop_on_emfile(flood):
    tp, up, socks = flood
    pid = tp.proc.pid
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    time.sleep(2.0)  # the measurement window: an idle flood, nothing to do
    t1, c1 = time.monotonic(), cpu_seconds(pid)
    used = c1 - c0
    print(f"idle flood: gateway used {used:.2f} s CPU in {t1 - t0:.2f} s")
    assert used < 1.0, f"the gateway used {used:.2f} s of CPU in {t1 - t0:.2f} s of an idle connection flood"
