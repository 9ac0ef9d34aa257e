# SPDX-License-Identifier: MIT
"""Circuit breaker (docs/reference.md upstreams[].circuit_breaker, policies.md "Circuit
breaker"): consecutive failures open it; while open the endpoint gets nothing and
clients get 503 when no endpoint can take the request; after open_for a trial goes
through (half-open); a failed trial reopens it, a successful one closes it."""
import threading
import time

import pytest

from tp_harness import T, Client, assert_gateway_error, build_response, get, upstream_cfg, wait_until
from tp_more import admin_json, derive, metrics, reload, wait_metric

BREAKER = {"consecutive_failures": 3, "open_for": "1s", "half_open_requests": 1}


class Flaky:
    """An upstream handler: answers 500, resets the connection after reading the
    request ("reset"), or 200 ("ok"); with hold set, a request waits for release."""

    def __init__(self, mode):
        self.mode = mode
        self.hold = False
        self.released = threading.Event()

    def handler(self, req, conn):
        if self.hold:
            deadline = time.monotonic() + T(30)
            while not self.released.wait(0.02):
                if conn.server.release.is_set() or time.monotonic() > deadline:
                    conn.close()
                    return None
        if self.mode == "500":
            return build_response(500, b"boom", [("X-Upstream", conn.server.name)])
        if self.mode == "reset":
            conn.close(rst=True)
            return None
        return build_response(200, f"{conn.server.name} {req.target}".encode(), [("X-Upstream", conn.server.name)])


def state(tp, up):
    return metrics(tp).value("turnpike_circuit_state", upstream="u", endpoint=up.addr)


def poll_until_not_503(tp, what, sent):
    """Sends requests (fresh connections, 50 ms apart) until one is not 503; every
    503 must be a gateway error. Returns that response; counts requests in sent."""
    out = {}

    def once():
        r = get(tp.port, f"/poll{sent[0]}")
        sent[0] += 1
        if r.status == 503:
            assert_gateway_error(r, 503)
            return False
        out["r"] = r
        return True

    wait_until(once, T(10), interval=0.05, what=what)
    return out["r"]


@pytest.mark.parametrize("mode,client_status", [("500", 500), ("reset", 502)])
def test_single_endpoint_open_half_open_close(h, mode, client_status):
    fl = Flaky(mode)
    up = h.upstream(fl.handler, name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up, circuit_breaker=BREAKER)],
                     "routes": [{"name": "r", "upstream": "u"}]})
    assert state(tp, up) == 0
    for i in range(3):
        r = get(tp.port, f"/f{i}")
        assert r.status == client_status, r
    assert len(up.heads) == 3
    assert state(tp, up) == 1
    ep = admin_json(tp)["upstreams"][0]["endpoints"][0]
    assert (ep["address"], ep["circuit"]) == (up.addr, "open"), ep

    # open: nothing reaches the endpoint, clients get 503 JSON
    for i in range(5):
        assert_gateway_error(get(tp.port, f"/o{i}"), 503)
    assert len(up.heads) == 3

    # after open_for: one trial; it fails, so the breaker opens again
    sent = [0]
    r = poll_until_not_503(tp, "the first trial", sent)
    assert r.status == client_status, r
    assert len(up.heads) == 4
    assert state(tp, up) == 1
    assert_gateway_error(get(tp.port, "/reopened"), 503)
    assert len(up.heads) == 4

    # the endpoint recovers; the next trial succeeds and closes the breaker
    fl.mode = "ok"
    r = poll_until_not_503(tp, "the second trial", sent)
    assert (r.status, r.header("x-upstream")) == (200, "U"), r
    assert state(tp, up) == 0
    for i in range(6):
        r = get(tp.port, f"/c{i}")
        assert r.status == 200, r
    assert len(up.heads) == 4 + 1 + 6
    assert admin_json(tp)["upstreams"][0]["endpoints"][0]["circuit"] == "closed"
    m = metrics(tp)
    # every request is counted once: 3 + 1 failures, 7 successes, the rest 503
    total_5xx = 3 + 5 + 1 + 1 + (sent[0] - 2)
    assert m.total("turnpike_requests_total", route="r") == 3 + 5 + 1 + sent[0] + 6
    assert m.value("turnpike_requests_total", route="r", code="2xx") == 7
    assert m.value("turnpike_requests_total", route="r", code="5xx") == total_5xx


def test_half_open_lets_exactly_the_trials_through(h):
    fl = Flaky("500")
    up = h.upstream(fl.handler, name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up, circuit_breaker=BREAKER)],
                     "routes": [{"name": "r", "upstream": "u"}]})
    for i in range(3):
        assert get(tp.port, f"/f{i}").status == 500
    assert state(tp, up) == 1
    fl.mode, fl.hold = "ok", True
    # once open_for has passed, a request becomes the (held) trial
    result = {}

    def trial():
        c = Client(tp.port, timeout=T(30))
        try:
            deadline = time.monotonic() + T(10)
            while time.monotonic() < deadline:
                c.request("GET", "/trial")
                r = c.read_response()
                if r.status != 503:
                    result["r"] = r
                    return
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001
            result["e"] = e
        finally:
            c.close()

    t = threading.Thread(target=trial, daemon=True)
    t.start()
    up.wait_heads(4)
    wait_metric(tp, "turnpike_circuit_state", 2, upstream="u", endpoint=up.addr)
    assert admin_json(tp)["upstreams"][0]["endpoints"][0]["circuit"] == "half_open"
    # the one trial is taken: others are refused as if open
    for i in range(4):
        assert_gateway_error(get(tp.port, f"/other{i}"), 503)
    assert len(up.heads) == 4
    fl.released.set()
    t.join(T(20))
    assert "r" in result, result
    assert result["r"].status == 200, result["r"]
    assert state(tp, up) == 0
    assert get(tp.port, "/after").status == 200


def test_open_endpoint_skipped_when_another_is_healthy(h):
    bad = h.upstream(Flaky("500").handler, name="BAD")
    good = h.upstream(name="GOOD")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", bad, good, circuit_breaker=dict(BREAKER, open_for="1m"))],
                     "routes": [{"name": "r", "upstream": "u"}]})
    statuses = []
    for i in range(20):
        if len(bad.heads) >= 3:
            break
        r = get(tp.port, f"/a{i}")
        statuses.append(r.status)
        assert r.status in (200, 500), r
    assert len(bad.heads) == 3, statuses
    assert statuses.count(500) == 3
    m = metrics(tp)
    assert m.value("turnpike_circuit_state", upstream="u", endpoint=bad.addr) == 1
    assert m.value("turnpike_circuit_state", upstream="u", endpoint=good.addr) == 0
    n_good = good.count()
    for i in range(20):
        r = get(tp.port, f"/b{i}")
        assert (r.status, r.header("x-upstream")) == (200, "GOOD"), r
    assert len(bad.heads) == 3
    assert good.count() == n_good + 20


def test_breaker_state_survives_reload_and_removal_closes_it(h):
    """docs/reference.md: circuit-breaker state of endpoints that still exist carries over a
    reload; policies.md: removing circuit_breaker closes the breaker."""
    fl = Flaky("500")
    up = h.upstream(fl.handler, name="U")
    other = h.upstream(name="O")
    long_open = dict(BREAKER, open_for="1m")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up, circuit_breaker=long_open)],
                     "routes": [{"name": "r", "upstream": "u"}]})
    for i in range(3):
        assert get(tp.port, f"/f{i}").status == 500
    assert state(tp, up) == 1
    # a reload that changes other things: still open, still 503, nothing reaches U
    reload(tp, derive(tp, upstreams=[upstream_cfg("u", up, circuit_breaker=long_open), upstream_cfg("o", other)],
                      routes=[{"name": "r", "upstream": "u"}, {"name": "o", "match": {"path": "/o"}, "upstream": "o"}]))
    assert state(tp, up) == 1
    for i in range(3):
        assert_gateway_error(get(tp.port, f"/still{i}"), 503)
    assert len(up.heads) == 3
    assert get(tp.port, "/o").status == 200
    # without circuit_breaker the endpoint takes traffic again
    fl.mode = "ok"
    reload(tp, derive(tp, upstreams=[upstream_cfg("u", up), upstream_cfg("o", other)]))
    r = get(tp.port, "/free")
    assert (r.status, r.header("x-upstream")) == (200, "U"), r
    assert len(up.heads) == 4
    assert metrics(tp).value("turnpike_circuit_state", upstream="u", endpoint=up.addr, default=0) == 0
