# SPDX-License-Identifier: MIT
"""Admin endpoints (docs/reference.md "Admin endpoints", operations.md): /config with
generation, loaded_at, source, sha256 and the live state of routes and upstreams,
before and after a reload; /healthz, /readyz (503 while draining); the admin paths
are not served on the public listener."""
import datetime
import hashlib
import re
import signal
import threading
import time

from tp_harness import T, Client, assert_gateway_error, get, has_token, upstream_cfg, wait_until
from tp_more import Gate, admin_json, derive, reload

RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")


def parse_time(s):
    assert RFC3339.fullmatch(s), s
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def test_config_document_and_reload(h):
    a = h.upstream(name="A")
    b = h.upstream(name="B")
    t0 = time.time()
    tp = h.turnpike({
        "upstreams": [upstream_cfg("ua", a, b, weights=[2, 1], circuit_breaker={}),
                      upstream_cfg("ub", b)],
        "routes": [{"name": "api", "match": {"path_prefix": "/api", "methods": ["GET"]}, "upstream": "ua"},
                   {"name": "ping", "match": {"path": "/ping"}, "direct_response": {"status": 200, "body": "pong"}}],
    })
    t1 = time.time()
    c = Client(tp.admin_port)
    try:
        c.request("GET", "/config", host="admin", headers=[("Connection", "close")])
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200 and r.header("content-type").split(";")[0] == "application/json", r
    j = r.json()
    assert j["generation"] == 1
    loaded = parse_time(j["loaded_at"])
    assert t0 - 2 <= loaded <= t1 + 2, (t0, j["loaded_at"], t1)
    assert j["source"] == str(tp.config_path)
    assert j["sha256"] == hashlib.sha256(tp.config_path.read_bytes()).hexdigest()
    assert [r["name"] for r in j["routes"]] == ["api", "ping"]
    assert j["routes"][0]["upstream"] == "ua"
    ups = {u["name"]: u for u in j["upstreams"]}
    assert set(ups) == {"ua", "ub"}
    eps = [(e["address"], e["weight"], e["healthy"], e["circuit"]) for e in ups["ua"]["endpoints"]]
    assert eps == [(a.addr, 2, True, "closed"), (b.addr, 1, True, "closed")], eps

    # reload: generation 2, the new file's hash, the new routes
    cfg = derive(tp, routes=[{"name": "api2", "match": {"path_prefix": "/v2"}, "upstream": "ub"}])
    time.sleep(0.01)  # loaded_at has millisecond resolution: make the two differ
    reload(tp, cfg)
    j2 = admin_json(tp)
    assert j2["generation"] == 2
    assert j2["sha256"] == hashlib.sha256(tp.config_path.read_bytes()).hexdigest() != j["sha256"]
    assert j2["source"] == str(tp.config_path)
    assert parse_time(j2["loaded_at"]) > loaded
    assert [r["name"] for r in j2["routes"]] == ["api2"]
    assert get(tp.port, "/v2/x").header("x-upstream") == "B"
    assert_gateway_error(get(tp.port, "/ping"), 404)


def test_health_and_ready_and_not_on_public_listener(h):
    up = h.upstream(name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up)],
                     "routes": [{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "u"}]})
    st, body = tp.admin_get("/healthz")
    assert (st, body.strip()) == (200, b"ok"), body
    assert tp.admin_get("/readyz")[0] == 200
    assert tp.admin_get("/nothing-here")[0] == 404
    # the public listener does not serve admin paths: they are ordinary, unmatched requests
    for path in ("/metrics", "/config", "/healthz"):
        assert_gateway_error(get(tp.port, path), 404)
    assert len(up.heads) == 0


def test_readyz_503_while_draining(h):
    gate = Gate()
    up = h.upstream(gate.handler, name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up)], "routes": [{"name": "r", "upstream": "u"}],
                     "shutdown": {"drain_timeout": "20s"}})
    result = {}

    def held():
        c = Client(tp.port, timeout=T(30))
        try:
            c.request("GET", "/held")
            result["r"] = c.read_response()
        except Exception as e:  # noqa: BLE001
            result["e"] = e
        finally:
            c.close()

    t = threading.Thread(target=held, daemon=True)
    t.start()
    up.wait_heads(1)
    tp.signal(signal.SIGTERM)
    wait_until(lambda: tp.admin_get("/readyz")[0] == 503, T(10), what="/readyz 503")
    assert admin_json(tp)["draining"] is True
    assert tp.admin_get("/healthz")[0] == 200
    gate.open()
    t.join(T(20))
    r = result.get("r")
    assert r is not None, result
    assert (r.status, r.body) == (200, b"U /held"), r
    assert has_token(r.header("connection"), "close"), r
    assert tp.wait() == 0
