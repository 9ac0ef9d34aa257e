# SPDX-License-Identifier: MIT
"""1xx interim responses: Expect: 100-continue (the client waits for the 100
before sending the body) and 103 Early Hints relayed before the final answer."""
import pytest

from tp_harness import Client, build_response, sha256, upstream_cfg


def on_head(req, conn):
    if (req.header("expect") or "").lower() == "100-continue":
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")


def handler(req, conn):
    if req.target == "/hints":
        conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n")
        return build_response(200, b"final after hints", [("Link", "</style.css>; rel=preload; as=style")])
    return build_response(200, f"got {len(req.body)} {sha256(req.body)}".encode())


@pytest.fixture
def env(h):
    up = h.upstream(handler, on_head=on_head)
    tp = h.turnpike({"upstreams": [upstream_cfg("main", up)], "routes": [{"upstream": "main"}]})
    return up, tp


def test_expect_100_continue(env):
    up, tp = env
    body = b"the body, sent only after 100 Continue" * 100
    c = Client(tp.port)
    c.send(f"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    first = c.read_response(stop_at_interim=True)  # bounded by the socket timeout
    assert first.status == 100, first
    c.send(body)
    r = c.read_response()
    assert r.status == 200, r
    assert r.body == f"got {len(body)} {sha256(body)}".encode()
    assert all(i.status == 100 for i in r.interim), r.interim
    assert up.count() == 1 and up.requests[0].body == body
    # the connection stays usable
    c.send(b"POST /again HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
    r = c.read_response()
    assert (r.status, r.interim) == (200, [])
    assert r.body == f"got 3 {sha256(b'abc')}".encode()
    c.close()


def test_early_hints_relayed(env):
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/hints")
    r = c.read_response()
    assert r.status == 200
    assert r.body == b"final after hints"
    assert [i.status for i in r.interim] == [103], r.interim
    assert r.interim[0].header("link") == "</style.css>; rel=preload; as=style"
    c.request("GET", "/plain")
    r2 = c.read_response()
    assert r2.status == 200 and r2.interim == []
    c.close()


def test_no_1xx_to_http10_client(env):
    # RFC 9110 15.2: a server must not send a 1xx response to an HTTP/1.0 client
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/hints", version="HTTP/1.0")
    r = c.read_response()
    assert r.status == 200
    assert r.interim == [], r.interim
    assert r.body == b"final after hints"
    c.close()


def test_expect_100_continue_to_gateway_answer(h):
    # a request the gateway answers itself (404 here): the final status comes without the body being sent
    up = h.upstream(handler, on_head=on_head)
    tp = h.turnpike({"upstreams": [upstream_cfg("main", up)],
                     "routes": [{"match": {"path_prefix": "/up"}, "upstream": "main"}]})
    c = Client(tp.port)
    c.send(b"POST /nowhere HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n")
    r = c.read_response()
    assert r.status == 404, r
    assert r.interim == [], "100 Continue sent for a request the gateway refuses"
    assert up.accepted == 0
    c.close()
