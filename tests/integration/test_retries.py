# SPDX-License-Identifier: MIT
"""Retries (docs/reference.md upstreams[].retries; operations.md "Retries"): a connect failure
is retried on the other endpoint; a POST whose request was sent is not retried after
a reset (the client gets 502), a GET is; a 503 listed in retries.on is retried;
upstream metrics count every attempt."""
from tp_harness import assert_gateway_error, free_port, get, upstream_cfg
from tp_more import metrics, status_handler


def reset_after_request(req, conn):
    conn.close(rst=True)
    return None


def test_get_retried_after_connect_failure(h):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    live = h.upstream(name="LIVE")
    tp = h.turnpike({"workers": 1,
                     "upstreams": [upstream_cfg("u", dead, live, retries={"attempts": 1, "on": ["connect_failure"]})],
                     "routes": [{"name": "r", "upstream": "u"}]})
    for i in range(4):
        r = get(tp.port, f"/g{i}")
        assert (r.status, r.body, r.header("x-upstream")) == (200, f"GET /g{i}".encode(), "LIVE"), r
    assert live.count() == 4
    m = metrics(tp)
    # round robin over [dead, live] on one worker: the dead one is tried at least twice
    assert m.value("turnpike_upstream_connect_failures_total", upstream="u", endpoint=dead) >= 2
    assert m.value("turnpike_upstream_connect_failures_total", upstream="u", endpoint=live.addr) == 0
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=live.addr, code="2xx") == 4
    assert m.value("turnpike_requests_total", route="r", code="2xx") == 4


def test_post_not_retried_after_send_get_is(h):
    bad = h.upstream(reset_after_request, name="BAD")
    good = h.upstream(name="GOOD")
    tp = h.turnpike({"workers": 1,
                     "upstreams": [upstream_cfg("u", bad, good,
                                                retries={"attempts": 1, "on": ["connect_failure", "reset"]})],
                     "routes": [{"name": "r", "upstream": "u"}]})
    results = {}
    for i in range(4):
        body = f"post-body-{i}".encode()
        r = get(tp.port, f"/p{i}", method="POST", body=body)
        results[body] = r
    bad_bodies = [q.body for q in bad.requests]
    good_bodies = [q.body for q in good.requests]
    assert bad_bodies, "round robin never chose the resetting endpoint"
    for body, r in results.items():
        if body in bad_bodies:
            assert_gateway_error(r, 502)
            assert body not in good_bodies, f"{body} was sent again after the reset"
        else:
            assert (r.status, r.body) == (200, b"POST /p" + body[-1:]), r
            assert body in good_bodies
    n_502 = sum(1 for r in results.values() if r.status == 502)
    assert n_502 == len(bad_bodies)

    # a GET is idempotent: reset at BAD, retried at GOOD
    before_bad = len(bad.heads)
    for i in range(4):
        r = get(tp.port, f"/g{i}")
        assert (r.status, r.header("x-upstream")) == (200, "GOOD"), r
    assert len(bad.heads) > before_bad  # some GETs did go to BAD first
    m = metrics(tp)
    assert m.value("turnpike_requests_total", route="r", code="5xx") == n_502
    assert m.value("turnpike_requests_total", route="r", code="2xx") == 4 - n_502 + 4


def test_retry_on_503(h):
    unavailable = h.upstream(status_handler(503, b"busy"), name="U503")
    ok = h.upstream(name="OK")
    tp = h.turnpike({"workers": 1,
                     "upstreams": [upstream_cfg("u", unavailable, ok, retries={"attempts": 1, "on": [503]})],
                     "routes": [{"name": "r", "upstream": "u"}]})
    for i in range(6):
        r = get(tp.port, f"/r{i}")
        assert (r.status, r.body, r.header("x-upstream")) == (200, f"GET /r{i}".encode(), "OK"), r
    assert ok.count() == 6
    assert unavailable.count() >= 3  # round robin: every other first try at least
    m = metrics(tp)
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=unavailable.addr,
                   code="5xx") == unavailable.count()
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=ok.addr, code="2xx") == 6
    assert m.total("turnpike_upstream_requests_total", upstream="u") == 6 + unavailable.count()
    assert m.value("turnpike_requests_total", route="r", code="2xx") == 6


def test_retries_exhausted_relays_last_response(h):
    """operations.md "Retries": the last try's response is relayed to the client as
    the upstream sent it."""
    a = h.upstream(status_handler(503, b"busy a"), name="A")
    b = h.upstream(status_handler(503, b"busy b"), name="B")
    tp = h.turnpike({"workers": 1,
                     "upstreams": [upstream_cfg("u", a, b, retries={"attempts": 1, "on": [503]})],
                     "routes": [{"name": "r", "upstream": "u"}]})
    r = get(tp.port, "/x")
    assert (r.status, r.body, r.header("x-upstream")) == (503, b"busy b", "B"), r
    assert (a.count(), b.count()) == (1, 1)
    m = metrics(tp)
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=a.addr, code="5xx") == 1
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=b.addr, code="5xx") == 1
    assert m.value("turnpike_requests_total", route="r", code="5xx") == 1
    # a 500 is not in retries.on: passed through, no retry
    c = h.upstream(status_handler(500, b"upstream 500 body"), name="C")
    d = h.upstream(name="D")
    tp2 = h.turnpike({"workers": 1,
                      "upstreams": [upstream_cfg("v", c, d, retries={"attempts": 1, "on": [503]})],
                      "routes": [{"name": "r", "upstream": "v"}]})
    rs = sorted(((r.status, r.body) for r in (get(tp2.port, f"/y{i}") for i in range(2))))
    assert rs == [(200, b"GET /y1"), (500, b"upstream 500 body")] or rs == [(200, b"GET /y0"), (500, b"upstream 500 body")], rs
    assert (c.count(), d.count()) == (1, 1)


def test_no_retry_without_retries_section(h):
    dead = f"127.0.0.1:{free_port()}"
    live = h.upstream(name="LIVE")
    tp = h.turnpike({"workers": 1, "upstreams": [upstream_cfg("u", dead, live)],
                     "routes": [{"name": "r", "upstream": "u"}]})
    rs = [get(tp.port, f"/n{i}") for i in range(4)]
    assert sorted(r.status for r in rs) == [200, 200, 502, 502], rs
    for r in rs:
        if r.status == 502:
            assert_gateway_error(r, 502)
    assert live.count() == 2
    assert metrics(tp).value("turnpike_upstream_connect_failures_total", upstream="u", endpoint=dead) == 2


