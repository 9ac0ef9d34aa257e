# SPDX-License-Identifier: MIT
"""/metrics (docs/reference.md "Metrics", "Defaults and fine print"; operations.md "Metrics"):
a strict parse of the Prometheus text format 0.0.4, every family of the contract with
its type, histogram consistency, and counters equal to exactly what the test sent
(admin requests not counted)."""
from tp_harness import Client, assert_gateway_error, get, upstream_cfg
from tp_more import Metrics, derive, metrics, reload, wait_metric

CONTRACT = {
    "turnpike_requests_total": "counter",
    "turnpike_request_duration_seconds": "histogram",
    "turnpike_upstream_requests_total": "counter",
    "turnpike_upstream_connect_failures_total": "counter",
    "turnpike_ratelimit_rejected_total": "counter",
    "turnpike_circuit_state": "gauge",
    "turnpike_endpoint_healthy": "gauge",
    "turnpike_connections_active": "gauge",
    "turnpike_connections_total": "counter",
    "turnpike_config_generation": "gauge",
    "turnpike_config_reloads_total": "counter",
}

WEIRD = 'q"uo\\te x'  # a route name with a quote, a backslash and a space


def start(h):
    up = h.upstream(name="U")
    tp = h.turnpike({
        "upstreams": [upstream_cfg("u", up, circuit_breaker={})],
        "routes": [
            {"name": "a", "match": {"path_prefix": "/a"}, "upstream": "u",
             "rate_limit": {"rate": "1000/s", "burst": 1000}},
            {"name": "b", "match": {"path": "/b"}, "direct_response": {"status": 404, "body": "nope"}},
            {"name": WEIRD, "match": {"path": "/q"}, "direct_response": {"status": 200}},
            {"match": {"path": "/unnamed"}, "direct_response": {"status": 302}},
        ],
    })
    return up, tp


def test_exposition_format_and_families(h):
    up, tp = start(h)
    c = Client(tp.admin_port)
    try:
        c.request("GET", "/metrics", host="admin", headers=[("Connection", "close")])
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200, r
    ctype = [p.strip() for p in r.header("content-type").split(";")]
    assert ctype[0] == "text/plain" and "version=0.0.4" in ctype, r
    m = Metrics(r.body.decode("utf-8"))
    for fam, typ in CONTRACT.items():
        assert fam in m.families, f"family {fam} missing:\n{m.text}"
        assert m.families[fam]["type"] == typ, (fam, m.families[fam]["type"])
        assert m.families[fam]["help"], f"no HELP for {fam}"
    for fam, f in m.families.items():
        assert fam.startswith("turnpike_"), fam
        assert f["type"], f"family {fam} without TYPE"
        if f["type"] == "counter":
            assert all(v >= 0 and v == int(v) for _, _, v in f["samples"]), fam
    m.check_histograms()
    # series that exist from the start
    assert m.value("turnpike_config_generation") == 1
    assert m.value("turnpike_config_reloads_total", result="success") == 0
    assert m.value("turnpike_config_reloads_total", result="failure") == 0
    assert m.value("turnpike_circuit_state", upstream="u", endpoint=up.addr) == 0
    assert m.value("turnpike_endpoint_healthy", upstream="u", endpoint=up.addr) == 1
    assert m.value("turnpike_connections_active", listener="public") == 0
    assert m.value("turnpike_connections_total", listener="public") == 0
    assert m.total("turnpike_requests_total") == 0


def test_counts_are_exact(h):
    up, tp = start(h)
    for i in range(5):
        r = get(tp.port, f"/a/{i}")
        assert r.status == 200, r
    for i in range(2):
        r = get(tp.port, "/b")
        assert (r.status, r.body) == (404, b"nope"), r
    for i in range(3):
        assert_gateway_error(get(tp.port, f"/zzz/{i}"), 404)
    assert get(tp.port, "/q").status == 200
    assert get(tp.port, "/unnamed").status == 302
    # admin traffic in between must not count
    for _ in range(3):
        tp.admin_get("/healthz")
        tp.admin_get("/config")
    wait_metric(tp, "turnpike_connections_active", 0, listener="public")
    m = metrics(tp)
    m.check_histograms()
    want = {("a", "2xx"): 5, ("b", "4xx"): 2, ("unmatched", "4xx"): 3, (WEIRD, "2xx"): 1, ("routes[3]", "3xx"): 1}
    got = {(lb["route"], lb["code"]): v for lb, v in m.series("turnpike_requests_total") if v}
    assert got == want, got
    for lb, _ in m.series("turnpike_requests_total"):
        assert set(lb) == {"route", "code"} and lb["code"] in ("1xx", "2xx", "3xx", "4xx", "5xx"), lb
    assert m.value("turnpike_request_duration_seconds_count", route="a") == 5
    assert m.value("turnpike_request_duration_seconds_count", route="b") == 2
    assert m.value("turnpike_request_duration_seconds_count", route=WEIRD) == 1
    assert m.total("turnpike_request_duration_seconds_count") == 12
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=up.addr, code="2xx") == 5
    assert m.total("turnpike_upstream_requests_total") == 5
    assert m.total("turnpike_upstream_connect_failures_total") == 0
    assert m.value("turnpike_ratelimit_rejected_total", route="a") == 0
    assert m.value("turnpike_connections_total", listener="public") == 12
    assert m.value("turnpike_connections_active", listener="public") == 0

    # two requests on one connection: one more connection, two more requests
    c = h.client(tp.port)
    for i in range(2):
        c.request("GET", f"/a/k{i}")
        assert c.read_response().status == 200
    c.close()
    wait_metric(tp, "turnpike_connections_active", 0, listener="public")
    m = metrics(tp)
    assert m.value("turnpike_requests_total", route="a", code="2xx") == 7
    assert m.value("turnpike_connections_total", listener="public") == 13

    # counters survive a reload; generation and the reload counter move
    reload(tp, derive(tp))
    m = metrics(tp)
    assert m.value("turnpike_requests_total", route="a", code="2xx") == 7
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=up.addr, code="2xx") == 7
    assert m.value("turnpike_connections_total", listener="public") == 13
    assert m.value("turnpike_config_generation") == 2
    assert m.value("turnpike_config_reloads_total", result="success") == 1


def test_label_escaping(h):
    up, tp = start(h)
    assert get(tp.port, "/q").status == 200
    m = metrics(tp)
    raw = [ln for ln in m.text.splitlines() if ln.startswith("turnpike_requests_total{") and "uo" in ln]
    assert raw, m.grep("turnpike_requests_total")
    assert all('route="q\\"uo\\\\te x"' in ln for ln in raw), raw
    assert m.value("turnpike_requests_total", route=WEIRD, code="2xx") == 1
