# SPDX-License-Identifier: MIT
"""2,000 idle client connections held open while new requests are served;
on shutdown every idle one is closed cleanly (FIN, no data, no reset)."""
import select
import socket
import time

import pytest

from tp_harness import T, Client, get, raise_nofile, upstream_cfg

N_IDLE = 2000


def open_many(port, n):
    """n connected sockets (non-blocking connects, bounded wait)."""
    socks = []
    pending = {}
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        assert err in (0, 115), f"connect: errno {err}"  # 115 = EINPROGRESS
        pending[s.fileno()] = s
        socks.append(s)
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + T(20)
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} connects still pending"
        for fd, ev in poller.poll(1000):
            s = pending.pop(fd)
            poller.unregister(fd)
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return socks


def test_2000_idle_connections(h):
    if raise_nofile(N_IDLE * 2 + 200) < N_IDLE + 100:
        pytest.skip("RLIMIT_NOFILE cannot be raised to hold 2,100 sockets")
    up = h.upstream()
    tp = h.turnpike({
        "limits": {"max_connections": 100000},
        "timeouts": {"client_idle": "60s", "client_header": "60s"},
        "upstreams": [upstream_cfg("main", up)],
        "routes": [{"match": {"path": "/ping"}, "direct_response": {"status": 200, "body": "pong"}},
                   {"upstream": "main"}],
    })
    idle = open_many(tp.port, N_IDLE)
    try:
        # every idle connection is really held by the gateway: some of them serve a request
        for s in idle[::200]:
            s.setblocking(True)
            s.settimeout(T(10))
            c = Client(tp.port, connect=False)
            c.sock = s
            c.request("GET", "/ping")
            r = c.read_response()
            assert (r.status, r.body) == (200, b"pong")
            s.setblocking(False)
        # new connections are served meanwhile, proxied and direct
        for i in range(20):
            r = get(tp.port, f"/new{i}")
            assert (r.status, r.body) == (200, f"GET /new{i}".encode())
        assert get(tp.port, "/ping").body == b"pong"
        # nothing was sent on the idle connections
        quiet = select.poll()
        for s in idle:
            quiet.register(s.fileno(), select.POLLIN)
        assert quiet.poll(0) == [], "an idle connection got data or was closed early"

        rc = tp.stop()
        assert rc == 0, tp.stderr()[-3000:]
        # each idle connection: clean EOF, no bytes, no reset
        outcome = {"eof": 0, "reset": 0, "data": 0}
        poller = select.poll()
        pending = {s.fileno(): s for s in idle}
        for fd in pending:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + T(10)
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(500):
                s = pending.pop(fd)
                poller.unregister(fd)
                try:
                    data = s.recv(4096)
                    outcome["data" if data else "eof"] += 1
                except ConnectionResetError:
                    outcome["reset"] += 1
        assert not pending, f"{len(pending)} idle connections were not closed"
        assert outcome == {"eof": N_IDLE, "reset": 0, "data": 0}, outcome
    finally:
        for s in idle:
            s.close()
