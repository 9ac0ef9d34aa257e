# SPDX-License-Identifier: MIT
"""upstreams[].max_concurrent_requests (docs/reference.md; 503 row): in-flight requests to an
upstream across all workers; beyond it 503 JSON; requests pass again once the
in-flight ones finish."""
import threading

from tp_harness import T, Client, assert_gateway_error, get, upstream_cfg
from tp_more import Gate, metrics, wait_metric


def hold_requests(port, n, prefix):
    """n requests on their own connections, in threads; returns (threads, results)."""
    results = [None] * n

    def run(i):
        c = Client(port, timeout=T(30))
        try:
            c.request("GET", f"{prefix}{i}")
            results[i] = c.read_response()
        except Exception as e:  # noqa: BLE001
            results[i] = e
        finally:
            c.close()

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    return ts, results


def test_third_concurrent_request_gets_503(h):
    gate = Gate()
    slow = h.upstream(gate.handler, name="S")
    other = h.upstream(name="O")
    tp = h.turnpike({"upstreams": [upstream_cfg("s", slow, max_concurrent_requests=2), upstream_cfg("o", other)],
                     "routes": [{"name": "slow", "match": {"path_prefix": "/slow"}, "upstream": "s"},
                                {"name": "other", "upstream": "o"}]})
    ts, results = hold_requests(tp.port, 2, "/slow/held")
    slow.wait_heads(2)
    wait_metric(tp, "turnpike_upstream_inflight_requests", 2, upstream="s")

    for i in range(3):  # fresh connections: both workers refuse
        assert_gateway_error(get(tp.port, f"/slow/over{i}"), 503)
    assert len(slow.heads) == 2
    # another upstream is not affected
    r = get(tp.port, "/x")
    assert (r.status, r.header("x-upstream")) == (200, "O"), r

    gate.open()
    for t in ts:
        t.join(T(20))
    assert sorted((r.status, r.body) for r in results) == [(200, b"S /slow/held0"), (200, b"S /slow/held1")], results
    wait_metric(tp, "turnpike_upstream_inflight_requests", 0, upstream="s")
    for i in range(3):
        r = get(tp.port, f"/slow/after{i}")
        assert (r.status, r.body) == (200, f"S /slow/after{i}".encode()), r
    assert len(slow.heads) == 5
    m = metrics(tp)
    assert m.value("turnpike_requests_total", route="slow", code="5xx") == 3
    assert m.value("turnpike_requests_total", route="slow", code="2xx") == 5


def test_cap_of_one_on_a_keepalive_connection(h):
    """The slot is given back when a response completes, so sequential requests on
    one keep-alive connection never hit a cap of 1."""
    up = h.upstream(name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up, max_concurrent_requests=1)],
                     "routes": [{"name": "r", "upstream": "u"}]})
    c = h.client(tp.port)
    for i in range(30):
        c.request("GET", f"/k{i}")
        r = c.read_response()
        assert (r.status, r.body) == (200, f"GET /k{i}".encode()), r
    assert metrics(tp).value("turnpike_upstream_inflight_requests", upstream="u") == 0
