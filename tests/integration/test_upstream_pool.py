# SPDX-License-Identifier: MIT
"""Upstream keep-alive pooling: connections are reused across requests and
across client connections; an upstream that closes idle pooled connections
does not make the next request fail."""
from tp_harness import T, Client, build_response, get, upstream_cfg, wait_until


def test_reuse_over_one_client_connection(h):
    up = h.upstream()
    tp = h.turnpike({"workers": 1, "upstreams": [upstream_cfg("main", up)], "routes": [{"upstream": "main"}]})
    c = Client(tp.port)
    for i in range(100):
        c.request("GET", f"/r{i}")
        r = c.read_response()
        assert (r.status, r.body) == (200, f"GET /r{i}".encode())
    c.close()
    assert up.count() == 100
    assert up.accepted <= 2, f"{up.accepted} upstream connections for 100 sequential requests"


def test_reuse_across_client_connections(h):
    up = h.upstream()
    tp = h.turnpike({"workers": 1, "upstreams": [upstream_cfg("main", up)], "routes": [{"upstream": "main"}]})
    for i in range(100):
        r = get(tp.port, f"/n{i}")
        assert (r.status, r.body) == (200, f"GET /n{i}".encode())
    assert up.count() == 100
    assert up.accepted <= 2, f"{up.accepted} upstream connections for 100 sequential requests"


def test_keepalive_zero_means_no_pooling(h):
    up = h.upstream()
    tp = h.turnpike({"workers": 1, "upstreams": [upstream_cfg("main", up, keepalive=0)],
                     "routes": [{"upstream": "main"}]})
    c = Client(tp.port)
    for i in range(5):
        c.request("GET", f"/z{i}")
        assert c.read_response().status == 200
    c.close()
    assert up.accepted == 5
    assert all(q.wants_close() for q in up.requests), [q.headers for q in up.requests]


def test_upstream_closes_idle_connection(h):
    # The upstream drops each connection 200 ms after a request unless another arrives.
    up = h.upstream(name="idle")

    def handler(req, conn):
        conn.sock.settimeout(0.2)  # the next read in the serve loop times out -> connection closed
        return build_response(200, f"{req.method} {req.target}".encode())

    up.handler = handler
    tp = h.turnpike({"workers": 1, "upstreams": [upstream_cfg("main", up)], "routes": [{"upstream": "main"}]})
    c = Client(tp.port)
    for i in range(4):
        c.request("GET", f"/i{i}")
        r = c.read_response()
        assert (r.status, r.body) == (200, f"GET /i{i}".encode()), r
        n = i + 1
        wait_until(lambda: up.closed_conns >= n, T(10), what="the upstream to close its idle connection")
    c.close()
    assert up.count() == 4
    assert up.accepted == 4


def test_upstream_closes_right_after_answer(h):
    # The race a pool must survive: the upstream answers with keep-alive framing and
    # closes at once. The next GET either sees the close first or fails on the dead
    # connection and is retried on a fresh one: the client never sees an error.
    up = h.upstream(name="closer")

    def handler(req, conn):
        conn.send(build_response(200, f"{req.method} {req.target}".encode()))
        conn.close()
        return None

    up.handler = handler
    tp = h.turnpike({"workers": 1, "upstreams": [upstream_cfg("main", up)], "routes": [{"upstream": "main"}]})
    c = Client(tp.port)
    for i in range(20):
        c.request("GET", f"/c{i}")
        r = c.read_response()
        assert (r.status, r.body) == (200, f"GET /c{i}".encode()), (i, r)
    c.close()
    assert up.count() == 20
