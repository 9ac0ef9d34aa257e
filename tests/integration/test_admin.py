# SPDX-License-Identifier: MIT
"""The admin listener: /healthz, /readyz, and request counting in /metrics."""
import re

from tp_harness import Client, get, upstream_cfg


def metric(text, name, **labels):
    """The value of one sample of <name> with exactly these labels; None when absent."""
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None


def test_healthz_and_readyz(h):
    up = h.upstream()
    tp = h.turnpike({"upstreams": [upstream_cfg("main", up)], "routes": [{"upstream": "main"}]})
    st, body = tp.admin_get("/healthz")
    assert (st, body.strip()) == (200, b"ok")
    st, _ = tp.admin_get("/readyz")
    assert st == 200
    # one request per admin connection, announced with Connection: close
    c = Client(tp.admin_port)
    c.request("GET", "/healthz")
    r = c.read_response()
    assert r.status == 200 and r.header("connection", "").lower() == "close", r
    assert c.wait_closed() == "eof"
    c.close()
    st, _ = tp.admin_get("/nonexistent")
    assert st == 404
    assert up.accepted == 0


def test_metrics_count_requests(h):
    up = h.upstream()
    tp = h.turnpike({"upstreams": [upstream_cfg("main", up)],
                     "routes": [{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "main"}]})
    for i in range(3):
        assert get(tp.port, f"/api/{i}").status == 200
    assert get(tp.port, "/nope").status == 404
    st, body = tp.admin_get("/metrics")
    assert st == 200
    text = body.decode()
    assert metric(text, "turnpike_requests_total", route="api", code="2xx") == 3, text
    assert metric(text, "turnpike_requests_total", route="unmatched", code="4xx") == 1, text
    assert metric(text, "turnpike_upstream_requests_total", upstream="main", endpoint=up.addr, code="2xx") == 3, text
    assert metric(text, "turnpike_connections_total", listener="public") == 4, text
