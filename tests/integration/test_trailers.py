# SPDX-License-Identifier: MIT
"""Chunked trailers (RFC 9112 7.1.2) whose fields arrive in two reads, in both
directions. A trailer section is part of a valid message wherever TCP splits it:
a response must reach the client complete (trailers relayed or dropped), a
request must reach the upstream. Each case sends the first part, waits until
the gateway has demonstrably processed it (the bytes moved on), then sends the
rest, so the split is a real read boundary at the gateway."""
import select
import socket
import time

import pytest

from tp_harness import T, Client, upstream_cfg, wait_until
from tp_hostile import hostile

# (id, first part, second part): the split falls inside the trailer section
SPLITS = [
    ("one_read", b"0\r\nX-Trailer: value\r\n\r\n", None),
    ("split_between_fields", b"0\r\nX-Trailer: value\r\n", b"X-Other: v\r\n\r\n"),
    ("split_in_name", b"0\r\nX-Tra", b"iler: value\r\n\r\n"),
    ("split_in_value", b"0\r\nX-Trailer: val", b"ue\r\n\r\n"),
]


def params(what):
    return [pytest.param(a, b, id=i) for i, a, b in SPLITS]


def peek_until(sock, needle, timeout):
    """Waits (bounded) until needle is in what sock has received (not consumed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if r:
            data = sock.recv(1 << 20, socket.MSG_PEEK)
            if needle in data or not data:
                return needle in data
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("first,second", params("chunked response is cut short with a reset "
                                                "(proxy.c process_response -> upstream_failed FAIL_INVALID)"))
def test_response_trailers_split_across_reads(h, first, second):
    go = []

    def bad(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n\r\n5\r\nhello\r\n" + first)
        if second is not None:
            wait_until(lambda: go, T(10), what="the client to see the first part")
            conn.send(second)
        return None

    up = hostile(h, bad=bad)
    tp = h.turnpike({"workers": 1, "upstreams": [upstream_cfg("h", up)], "routes": [{"upstream": "h"}]})
    c = Client(tp.port)
    c.request("GET", "/bad")
    if second is not None:
        assert peek_until(c.sock, first, T(10)), "the first part was not relayed"
        go.append(True)
    r = c.read_response()
    assert (r.status, r.body, r.framing) == (200, b"hello", "chunked"), r
    want = [ln for ln in (first + (second or b"")).split(b"\r\n")[1:] if ln]
    assert r.trailers in ([], want), r.trailers
    c.request("GET", "/after")
    r2 = c.read_response()
    assert (r2.status, r2.body) == (200, b"good /after"), r2


@pytest.mark.parametrize("first,second", params("chunked request is refused with 400 (conn.c request "
                                                "body parsing)"))
def test_request_trailers_split_across_reads(h, first, second):
    up = h.upstream()
    tp = h.turnpike({"workers": 1, "upstreams": [upstream_cfg("main", up)], "routes": [{"upstream": "main"}]})
    c = Client(tp.port)
    c.send(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n" + first)
    if second is not None:
        # the body streams: once "hello" reached the upstream, the gateway has read the first part
        wait_until(lambda: b"hello" in up.raw_bytes(), T(10), what="the body to reach the upstream")
        c.send(second)
    r = c.read_response()
    assert (r.status, r.body) == (200, b"POST /t"), r
    assert up.requests[-1].body == b"hello"
    # the trailer section reaches the upstream whole, wherever the read boundary fell
    want = [ln for ln in (first + (second or b"")).split(b"\r\n")[1:] if ln]
    assert up.requests[-1].trailers == want, up.requests[-1].trailers
    c.request("GET", "/after")
    assert c.read_response().body == b"GET /after"
    c.close()


@pytest.mark.parametrize("first,second", params("h2"))
def test_response_trailers_split_across_reads_to_h2_client(h, first, second):
    """The same splits towards an HTTP/2 client: the trailer section, recorded across reads,
    arrives as trailing HEADERS."""
    from test_h2 import H2Client, start
    go = []

    def bad(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n\r\n5\r\nhello\r\n" + first)
        if second is not None:
            wait_until(lambda: go, T(10), what="the gateway to read the first part")
            conn.send(second)
        return None

    up = hostile(h, bad=bad)
    tp = start(h, {"upstreams": [upstream_cfg("h", up)], "routes": [{"upstream": "h"}]})
    c = H2Client(tp.port)
    sid = c.request("/bad")
    if second is not None:
        # "hello" and the first part left in one send: once "hello" is relayed, the first part was read
        c.wait(lambda: c.streams[sid]["data"] == b"hello", what="the body before the trailers")
        go.append(True)
    st = c.response(sid)
    want = dict(ln.decode().lower().split(": ", 1) for ln in (first + (second or b"")).split(b"\r\n")[1:] if ln)
    assert st["data"] == b"hello" and st.get("trailers") == want, st
    c.close()
