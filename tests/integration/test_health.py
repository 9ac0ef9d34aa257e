# SPDX-License-Identifier: MIT
"""Active health checks (docs/reference.md upstreams[].health_check; "Endpoints start
healthy; a health check answer is healthy when it is 2xx"): an endpoint failing its
check is marked unhealthy after unhealthy_after checks and gets no traffic; it
returns after healthy_after good checks; with no healthy endpoint requests get 503."""
from tp_harness import assert_gateway_error, free_port, get, upstream_cfg
from tp_more import Switch, admin_json, delay_handler, derive, metrics, non_health, reload, wait_metric

HC = {"path": "/hc", "interval": "200ms", "timeout": "1s", "unhealthy_after": 2, "healthy_after": 2}


def healthy(tp, up_addr):
    return metrics(tp).value("turnpike_endpoint_healthy", upstream="u", endpoint=up_addr)


def checks(up):
    with up.lock:
        return [r for r in up.requests if r.target == "/hc"]


def test_failing_endpoint_removed_and_restored(h):
    sa = Switch(200, health_path="/hc", health_status=500)
    a = h.upstream(sa.handler, name="A")
    sb = Switch(200, health_path="/hc", health_status=200)
    b = h.upstream(sb.handler, name="B")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", a, b, health_check=HC)],
                     "routes": [{"name": "r", "upstream": "u"}]})
    wait_metric(tp, "turnpike_endpoint_healthy", 0, upstream="u", endpoint=a.addr)
    assert len(checks(a)) >= 2  # unhealthy_after failed checks at least
    assert all(r.method == "GET" for r in checks(a))
    assert healthy(tp, b.addr) == 1
    eps = {e["address"]: e["healthy"] for e in admin_json(tp)["upstreams"][0]["endpoints"]}
    assert eps == {a.addr: False, b.addr: True}, eps

    for i in range(10):
        r = get(tp.port, f"/x{i}")
        assert (r.status, r.header("x-upstream")) == (200, "B"), r
    assert non_health(a, "/hc") == []

    # recovery: healthy again after healthy_after good checks
    n0 = len(checks(a))
    sa.health_status = 200
    wait_metric(tp, "turnpike_endpoint_healthy", 1, upstream="u", endpoint=a.addr)
    assert len(checks(a)) >= n0 + 2
    names = [get(tp.port, f"/y{i}").header("x-upstream") for i in range(10)]
    assert "A" in names and "B" in names, names  # round robin over both again
    assert len(non_health(a, "/hc")) == names.count("A")


def test_down_endpoint_marked_unhealthy(h):
    dead = f"127.0.0.1:{free_port()}"
    live = h.upstream(Switch(200, health_path="/hc").handler, name="LIVE")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", dead, live, health_check=HC)],
                     "routes": [{"name": "r", "upstream": "u"}]})
    wait_metric(tp, "turnpike_endpoint_healthy", 0, upstream="u", endpoint=dead)
    assert healthy(tp, live.addr) == 1
    for i in range(8):
        r = get(tp.port, f"/d{i}")
        assert (r.status, r.header("x-upstream")) == (200, "LIVE"), r
    assert len(non_health(live, "/hc")) == 8


def test_all_unhealthy_gives_503(h):
    s = Switch(200, health_path="/hc", health_status=503)
    up = h.upstream(s.handler, name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up, health_check=HC)],
                     "routes": [{"name": "r", "upstream": "u"}]})
    wait_metric(tp, "turnpike_endpoint_healthy", 0, upstream="u", endpoint=up.addr)
    for i in range(4):
        assert_gateway_error(get(tp.port, f"/z{i}"), 503)
    assert non_health(up, "/hc") == []
    s.health_status = 200
    wait_metric(tp, "turnpike_endpoint_healthy", 1, upstream="u", endpoint=up.addr)
    r = get(tp.port, "/back")
    assert (r.status, r.body) == (200, b"U /back"), r
    m = metrics(tp)
    assert m.value("turnpike_requests_total", route="r", code="5xx") == 4
    assert m.value("turnpike_requests_total", route="r", code="2xx") == 1


def test_health_state_survives_reload(h):
    """docs/reference.md: health status of endpoints that still exist carries over a reload."""
    s = Switch(200, health_path="/hc", health_status=500)
    up = h.upstream(s.handler, name="U")
    other = h.upstream(name="O")
    slow_hc = dict(HC, interval="1h")  # after the reload, no check could re-mark it
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up, health_check=HC)],
                     "routes": [{"name": "r", "upstream": "u"}]})
    wait_metric(tp, "turnpike_endpoint_healthy", 0, upstream="u", endpoint=up.addr)
    reload(tp, derive(tp, upstreams=[upstream_cfg("u", up, health_check=slow_hc), upstream_cfg("o", other)],
                      routes=[{"name": "r", "upstream": "u"}, {"name": "o", "match": {"path": "/o"}, "upstream": "o"}]))
    assert healthy(tp, up.addr) == 0
    assert_gateway_error(get(tp.port, "/still-down"), 503)
    assert get(tp.port, "/o").status == 200


def test_health_check_timeout_counts_as_failure(h):
    """A check that takes longer than health_check.timeout fails."""
    slow_hc = delay_handler(1.5)
    s = Switch(200, health_path="/hc")

    def handler(req, conn):
        if req.target == "/hc" and s.status == 200 and getattr(s, "hang", True):
            return slow_hc(req, conn)
        return s.handler(req, conn)

    a = h.upstream(handler, name="A")
    b = h.upstream(Switch(200, health_path="/hc").handler, name="B")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", a, b, health_check=dict(HC, timeout="100ms"))],
                     "routes": [{"name": "r", "upstream": "u"}]})
    wait_metric(tp, "turnpike_endpoint_healthy", 0, upstream="u", endpoint=a.addr)
    assert healthy(tp, b.addr) == 1
    for i in range(6):
        r = get(tp.port, f"/t{i}")
        assert (r.status, r.header("x-upstream")) == (200, "B"), r
    assert non_health(a, "/hc") == []
    s.hang = False  # answers at once again
    wait_metric(tp, "turnpike_endpoint_healthy", 1, upstream="u", endpoint=a.addr)
