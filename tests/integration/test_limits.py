# SPDX-License-Identifier: MIT
"""limits and client timeouts: 408 (client_header), client_idle, 413 (by
Content-Length before the body, and while streaming chunked), 414, 431 and
max_connections."""
import time

import pytest

from tp_harness import T, Client, assert_gateway_error, chunked, get, upstream_cfg


@pytest.fixture
def env(h):
    up = h.upstream()
    tp = h.turnpike({
        "limits": {"max_body_bytes": "1KiB", "max_header_bytes": "1KiB"},
        "timeouts": {"client_header": "500ms", "client_idle": "1s"},
        "upstreams": [upstream_cfg("main", up)],
        "routes": [{"upstream": "main"}],
    })
    return h, up, tp


def test_408_incomplete_head(env):
    h, up, tp = env
    c = h.client(tp.port, timeout=T(10))
    c.send(b"GET /half HTTP/1.1\r\nHost: t\r\nX-Partial: ")
    r = c.read_response()
    assert_gateway_error(r, 408)
    assert c.wait_closed() in ("eof", "reset")
    assert up.raw_bytes() == b""


def test_408_after_keepalive_request(env):
    # client_header counts per request: a second, incomplete head on a kept-alive connection
    h, up, tp = env
    c = h.client(tp.port, timeout=T(10))
    c.request("GET", "/first")
    assert c.read_response().status == 200
    c.send(b"GET /second HTTP/1.1\r\nHo")
    r = c.read_response()
    assert_gateway_error(r, 408)
    assert c.wait_closed() in ("eof", "reset")
    assert [q.target for q in up.heads] == ["/first"]


def test_client_idle_closes(env):
    h, up, tp = env
    c = h.client(tp.port)
    c.request("GET", "/once")
    r = c.read_response()
    assert r.status == 200
    assert c.wait_closed(T(10)) == "eof"


def test_client_idle_not_while_active(env):
    # requests spaced below client_idle keep the connection open
    h, up, tp = env
    c = h.client(tp.port)
    for i in range(4):
        c.request("GET", f"/a{i}")
        assert c.read_response().status == 200
        time.sleep(0.3)
    assert [q.target for q in up.requests] == [f"/a{i}" for i in range(4)]


def test_stalled_request_body_disconnected(env):
    # docs/operations.md: a client that stops sending a request body for client_idle is disconnected
    h, up, tp = env
    c = h.client(tp.port, timeout=T(10))
    c.send(b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n" + b"x" * 10)
    try:
        r = c.read_response()  # a 408 (or another error) is fine, as long as it ends
        assert r.status >= 400, r
        assert c.wait_closed() in ("eof", "reset")
    except AssertionError as e:
        assert "closed" in str(e), e  # Incomplete: closed without a response
    assert up.count() == 0


def test_stalled_reader_disconnected(h):
    # docs/operations.md: a client that stops reading a response for client_idle is disconnected
    import socket
    import threading

    total = 1 << 30  # far more than all the socket buffers on the way can hold
    block = b"r" * 65536
    failed = threading.Event()

    def handler(req, conn):
        try:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            for _ in range(total // len(block)):
                conn.send(block)
        except OSError:
            failed.set()  # the gateway gave up on the stalled client and closed this connection
        return None

    up = h.upstream(handler)
    tp = h.turnpike({"timeouts": {"client_idle": "1s"}, "upstreams": [upstream_cfg("main", up)],
                     "routes": [{"upstream": "main"}]})
    c = Client(tp.port, timeout=T(10))
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.request("GET", "/big")
    assert failed.wait(T(15)), "the upstream send never failed: the stalled client was kept"
    got = c.read_to_eof()
    assert len(got) < total
    c.close()


def test_413_by_content_length_before_body(env):
    h, up, tp = env
    c = h.client(tp.port, timeout=T(10))
    c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n")  # the body is never sent
    r = c.read_response()
    assert_gateway_error(r, 413)
    assert up.raw_bytes() == b""


def test_body_at_limit_passes(env):
    h, up, tp = env
    r = get(tp.port, "/fits", method="POST", body=b"b" * 1024)
    assert (r.status, r.body) == (200, b"POST /fits")
    assert up.requests[0].body == b"b" * 1024


def test_413_while_streaming_chunked(env):
    h, up, tp = env
    c = h.client(tp.port, timeout=T(10))
    c.send(b"POST /chunky HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    c.send(chunked(b"c" * 1800, (600,))[:-5])  # over the limit, terminating chunk not sent
    r = c.read_response()
    assert_gateway_error(r, 413)
    assert c.wait_closed() in ("eof", "reset")
    assert up.count() == 0, "an over-limit body reached the upstream complete"


def test_chunked_under_limit_passes(env):
    h, up, tp = env
    c = h.client(tp.port)
    c.send(b"POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"d" * 1000, (300,)))
    r = c.read_response()
    assert (r.status, r.body) == (200, b"POST /small")
    assert up.requests[0].body == b"d" * 1000


def test_414_request_line(env):
    h, up, tp = env
    c = h.client(tp.port)
    c.send(b"GET /" + b"u" * 1100 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    r = c.read_response()
    assert_gateway_error(r, 414)
    assert up.raw_bytes() == b""


def test_431_headers(env):
    h, up, tp = env
    c = h.client(tp.port)
    c.send(b"GET /h HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-Fill-%d: %s\r\n" % (i, b"v" * 400) for i in range(3)) + b"\r\n")
    r = c.read_response()
    assert_gateway_error(r, 431)
    assert up.raw_bytes() == b""


def test_431_long_line_plus_headers(env):
    # the request line alone fits, the head does not: 431, not 414
    h, up, tp = env
    c = h.client(tp.port)
    c.send(b"GET /" + b"u" * 950 + b" HTTP/1.1\r\nHost: t\r\nX-More: " + b"m" * 100 + b"\r\n\r\n")
    r = c.read_response()
    assert_gateway_error(r, 431)


def test_head_under_limit_passes(env):
    h, up, tp = env
    r = get(tp.port, "/" + "p" * 300, headers=[("X-Fill", "f" * 400)])
    assert r.status == 200
    assert up.requests[0].header("x-fill") == "f" * 400


def served(c, target):
    c.request("GET", target)
    r = c.read_response()
    return r.status == 200


def test_max_connections(h):
    up = h.upstream()
    tp = h.turnpike({"limits": {"max_connections": 5}, "upstreams": [upstream_cfg("main", up)],
                     "routes": [{"upstream": "main"}]})
    held = [Client(tp.port) for _ in range(5)]
    for i, c in enumerate(held):
        assert served(c, f"/held{i}")
    extra = Client(tp.port)
    assert extra.wait_closed(T(10)) in ("eof", "reset")
    extra.close()
    # the held ones still work
    assert served(held[0], "/still")
    # free two slots: new connections are served again (the close is noticed asynchronously)
    held.pop().close()
    held.pop().close()

    def try_new():
        c = Client(tp.port)
        try:
            if served(c, "/new"):
                return c
        except AssertionError:
            pass
        c.close()
        return None

    for _ in range(2):
        deadline = time.monotonic() + T(10)
        c = None
        while c is None:
            assert time.monotonic() < deadline, "no new connection accepted after closing some"
            c = try_new()
            if c is None:
                time.sleep(0.05)
        held.append(c)
    assert len(held) == 5
    # full again: the next one is closed at once
    extra = Client(tp.port)
    assert extra.wait_closed(T(10)) in ("eof", "reset")
    extra.close()
    for c in held:
        c.close()
