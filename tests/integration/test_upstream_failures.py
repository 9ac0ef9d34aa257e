# SPDX-License-Identifier: MIT
"""Failures on the way: an upstream reset mid-response, a stalled upstream
body, a client that leaves mid-response, a dead upstream (502), a slow
upstream (504) and a connect timeout (502)."""
import select
import socket
import struct
import threading
import time

import pytest

from tp_harness import (T, Client, Closed, assert_gateway_error, build_response, free_port, get, parse_head,
                        upstream_cfg)

MiB = 1 << 20


def read_partial(c):
    """Reads a response head and then everything until the connection ends.
    Returns (status, headers, body bytes as received)."""
    head = c.read_until(b"\r\n\r\n")
    line, headers = parse_head(head)
    return int(line.split(" ")[1]), headers, c.read_to_eof()


def chunked_complete(raw):
    """True when raw (a chunked body as received) reaches its last chunk."""
    i = 0
    while True:
        j = raw.find(b"\r\n", i)
        if j < 0:
            return False
        size = int(raw[i:j].split(b";")[0], 16)
        if size == 0:
            return True
        i = j + 2 + size + 2
        if i > len(raw):
            return False


def make_env(h, handler, **timeouts):
    up = h.upstream(handler)
    t = {"upstream_response": "30s"}
    t.update(timeouts)
    tp = h.turnpike({"timeouts": t, "upstreams": [upstream_cfg("main", up)],
                     "routes": [{"match": {"path": "/ping"}, "direct_response": {"status": 200, "body": "pong"}},
                                {"upstream": "main"}]})
    return up, tp


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upstream_reset_mid_response(h, framing):
    go = threading.Event()

    def handler(req, conn):
        if req.target != "/reset":
            return build_response(200, b"fine")
        if framing == "length":
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        else:
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"a" * 1000 + b"\r\n")
        go.wait(T(10))
        conn.close(rst=True)
        return None

    up, tp = make_env(h, handler)
    c = Client(tp.port)
    c.request("GET", "/reset")
    head = c.read_until(b"\r\n\r\n")
    line, headers = parse_head(head)
    assert line.split(" ")[1] == "200", line
    body = bytearray(c.buf)
    c.buf.clear()
    while b"a" * 1000 not in body:  # the first 1000 bytes passed the gateway
        try:
            c.fill()
        except Closed:
            break
        body += c.buf
        c.buf.clear()
    go.set()
    body += c.read_to_eof()
    # docs/operations.md "Aborted responses": reset, not a clean close
    assert c.reset, "an aborted response ended with a clean FIN"
    if headers.get("transfer-encoding"):
        assert not chunked_complete(bytes(body)), "a reset upstream produced a complete chunked response"
    else:
        assert headers.get("content-length") == "100000"
        assert len(body) < 100000, "a reset upstream produced a complete response"
    # the gateway carries on
    r = get(tp.port, "/after")
    assert (r.status, r.body) == (200, b"fine")


def test_upstream_body_stall_closes_client_short(h):
    def handler(req, conn):
        if req.target != "/stall":
            return build_response(200, b"fine")
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"s" * 100)
        conn.server.release.wait(T(30))
        return None

    up, tp = make_env(h, handler, upstream_response="500ms")
    c = Client(tp.port, timeout=T(20))
    c.request("GET", "/stall")
    status, headers, body = read_partial(c)
    assert status == 200
    assert headers.get("content-length") == "5000"
    assert len(body) < 5000
    assert c.reset, "an aborted response ended with a clean FIN"
    r = get(tp.port, "/after")
    assert (r.status, r.body) == (200, b"fine")


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_mid_response(h, how):
    big = b"z" * (8 * MiB)

    def handler(req, conn):
        if req.target != "/big":
            return build_response(200, b"fine")
        return build_response(200, big)

    up, tp = make_env(h, handler)
    for _ in range(3):
        c = Client(tp.port)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.request("GET", "/big")
        c.read_until(b"\r\n\r\n")
        c.read_exact(10000)
        if how == "reset":
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        r = get(tp.port, "/after")
        assert (r.status, r.body) == (200, b"fine")
    assert get(tp.port, "/ping").body == b"pong"


def test_dead_upstream_502(h):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    tp = h.turnpike({"upstreams": [upstream_cfg("dead", dead)], "routes": [{"upstream": "dead"}]})
    r = get(tp.port, "/x")
    assert_gateway_error(r, 502)
    r = get(tp.port, "/x", headers=[("X-Request-Id", "dead-1")])
    j = assert_gateway_error(r, 502)
    assert j["request_id"] == "dead-1"
    # keep-alive after a 502 of a GET without body
    c = Client(tp.port)
    for _ in range(2):
        c.request("GET", "/y")
        assert_gateway_error(c.read_response(), 502)
    c.close()


def test_slow_upstream_504(h):
    def handler(req, conn):
        conn.server.release.wait(T(30))  # answers only at teardown
        return build_response(200, b"too late")

    up, tp = make_env(h, handler, upstream_response="500ms")
    c = Client(tp.port, timeout=T(20))
    c.request("GET", "/slow", headers=[("X-Request-Id", "slow-1")])
    r = c.read_response()
    j = assert_gateway_error(r, 504)
    assert j["request_id"] == "slow-1"
    assert len(up.heads) == 1 and up.heads[0].target == "/slow"
    c.close()
    assert get(tp.port, "/ping").body == b"pong"


def blackhole():
    """A listening socket whose accept queue is full, so further SYNs are dropped
    and connects to it hang. Returns (listener, fillers) or None."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    addr = ls.getsockname()
    fillers = []
    for _ in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(addr)
        fillers.append(s)
        w = select.select([], [s], [], 0.3)[1]
        if not w:  # this one hangs: the queue is full
            return ls, fillers
    for s in fillers:
        s.close()
    ls.close()
    return None


def test_upstream_connect_timeout_502(h):
    bh = blackhole()
    if bh is None:
        pytest.skip("cannot make a local address that drops SYNs")
    ls, fillers = bh
    try:
        tp = h.turnpike({
            "timeouts": {"upstream_connect": "300ms", "upstream_response": "60s"},
            "upstreams": [upstream_cfg("hole", "127.0.0.1:%d" % ls.getsockname()[1])],
            "routes": [{"upstream": "hole"}],
        })
        t0 = time.monotonic()
        c = Client(tp.port, timeout=T(20))
        c.request("GET", "/x", headers=[("X-Request-Id", "hole-1")])
        r = c.read_response()
        j = assert_gateway_error(r, 502)
        assert j["request_id"] == "hole-1"
        # a kernel connect timeout would take minutes; the socket timeout above bounds the wait
        assert time.monotonic() - t0 < T(20)
        c.close()
    finally:
        for s in fillers:
            s.close()
        ls.close()


BAD_RESPONSES = [
    ("garbage", b"garbage\r\n\r\n"),
    ("cl_and_te", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("two_cl", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello"),
    ("status_2_digits", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n"),
    ("status_099", b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n"),
    ("status_600", b"HTTP/1.1 600 OK\r\nContent-Length: 0\r\n\r\n"),
    ("nul_in_header", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n"),
]


@pytest.mark.parametrize("resp", [pytest.param(r, id=i) for i, r in BAD_RESPONSES])
def test_invalid_upstream_response_502(h, resp):
    def handler(req, conn):
        conn.send(resp)
        conn.close()
        return None

    up, tp = make_env(h, handler)
    r = get(tp.port, "/bad", method="POST", body=b"x")
    assert_gateway_error(r, 502)
    assert len(up.heads) == 1


def test_upstream_closes_without_answer_502(h):
    def handler(req, conn):
        conn.close()  # reads the request, answers nothing
        return None

    up, tp = make_env(h, handler)
    r = get(tp.port, "/mute", method="POST", body=b"payload")
    assert_gateway_error(r, 502)
    assert len(up.heads) == 1, "a POST was sent twice"


def test_upstream_obs_fold_not_relayed(h):
    # RFC 9112 5.2: a proxy either answers 502 or replaces each fold with spaces
    def handler(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok")
        return None

    up, tp = make_env(h, handler)
    r = get(tp.port, "/fold")  # the client's parser rejects a continuation line
    if r.status == 502:
        assert_gateway_error(r, 502)
    else:
        assert r.status == 200 and r.body == b"ok", r
        assert " ".join(r.header("x-a").split()) == "a folded", r


def test_upstream_invalid_chunk_not_completed(h):
    def handler(req, conn):
        if req.target != "/badchunk":
            return build_response(200, b"fine")
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n")
        return None

    up, tp = make_env(h, handler)
    c = Client(tp.port)
    c.request("GET", "/badchunk")
    # the bad chunk arrives with the head: nothing was relayed yet, so the
    # client gets a gateway 502, and its connection stays usable
    r = c.read_response()
    assert_gateway_error(r, 502)
    c.request("GET", "/again")
    assert c.read_response().status == 200
    c.close()
    r = get(tp.port, "/after")
    assert (r.status, r.body) == (200, b"fine")
