# SPDX-License-Identifier: MIT
"""Global rate limits (docs/policies.md "Global rate limits"; reference.md
rate_limit_store): gateway processes sharing buckets through a real
redis-server admit no more than burst + rate x t together; per-tenant keys
are separate buckets; Redis killed and restarted, or too slow, makes
on_failure decide and the gateway recover by itself with /readyz 200; a
reload keeps the leased pools. The assertions are about counts."""
import base64
import json
import os
import threading
import time

import pytest

from tp_harness import T, get, upstream_cfg, wait_until
from tp_more import derive, metrics, reload, write_text_atomic
from tp_redis import Redis


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.stop()


def global_route(rate, burst, key="header:x-tenant", name="g"):
    return {"name": name, "match": {"path_prefix": f"/{name}"}, "upstream": "u",
            "rate_limit": {"rate": rate, "burst": burst, "key": key, "scope": "global"}}


def gateway(h, up, redis, routes, timeout=None, on_failure="local"):
    # 100 ms, longer under sanitizers: a control thread starved that long
    # would decide waiting requests by on_failure, which these tests count
    timeout = timeout or f"{int(100 * T(1))}ms"
    return h.turnpike({"upstreams": [upstream_cfg("u", up)],
                       "rate_limit_store": {"redis": redis.addr, "timeout": timeout, "on_failure": on_failure},
                       "routes": routes})


def store_up(tp):
    return metrics(tp).value("turnpike_ratelimit_store_up", default=-1)


def wait_store(tp, want):
    wait_until(lambda: store_up(tp) == want, T(20), what=f"turnpike_ratelimit_store_up == {want}")


def warm(tp, path, tenant):
    """Waits until the tenant is admitted on the instance (its first request
    normally is: it waits for the pool's first lease)."""
    wait_until(lambda: get(tp.port, path, headers=[("X-Tenant", tenant)]).status == 200, T(20),
               what=f"tenant {tenant} admitted on :{tp.port}")


def hammer(tps, path, tenant, seconds, threads_per_tp=3, headers=None):
    """Sends requests for <seconds> from several threads per instance, as fast
    as they come back (with X-Tenant: <tenant>, or <headers>). Returns
    (admitted, refused, other, elapsed) where elapsed spans from before the
    first request to after the last answer."""
    hdrs = headers if headers is not None else [("X-Tenant", tenant)]
    counts = {"200": 0, "429": 0, "other": 0}
    lock = threading.Lock()
    errors = []
    t0 = time.monotonic()
    stop_at = t0 + seconds

    def run(tp):
        mine = {"200": 0, "429": 0, "other": 0}
        try:
            while time.monotonic() < stop_at:
                st = get(tp.port, path, headers=hdrs).status
                mine[str(st) if st in (200, 429) else "other"] += 1
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        with lock:
            for k, v in mine.items():
                counts[k] += v

    ts = [threading.Thread(target=run, args=(tp,), daemon=True) for tp in tps for _ in range(threads_per_tp)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + T(30))
    elapsed = time.monotonic() - t0
    assert not errors, errors[:3]
    return counts["200"], counts["429"], counts["other"], elapsed


def check_shared(h, redis, n):
    up = h.upstream(name="U")
    rate, burst = 20, 40
    tps = [gateway(h, up, redis, [global_route(f"{rate}/s", burst)]) for _ in range(n)]
    for tp in tps:
        wait_store(tp, 1)
    # the warm-up requests are admissions too: they count against the same bound
    t0 = time.monotonic()
    warmed = 0
    for tp in tps:
        warm(tp, "/g/w", "acme")
        warmed += 1
    ok, refused, other, elapsed = hammer(tps, "/g/x", "acme", 3.0)
    elapsed = time.monotonic() - t0
    assert other == 0
    assert refused > 0, (ok, refused)
    bound = burst + rate * elapsed + 1
    # every instance alone would admit up to n times this
    assert ok + warmed <= bound, f"{ok + warmed} admitted by {n} instances, bound {bound:.1f} in {elapsed:.2f}s"
    # and the bucket is used, not starved: at least the refills of the run
    assert ok >= rate * 1.0, (ok, refused)
    for tp in tps:
        m = metrics(tp)
        fb, errs = m.value("turnpike_ratelimit_fallback_total", route="g"), m.value(
            "turnpike_ratelimit_store_errors_total")
        assert (fb, errs) == (0, 0), f"fallbacks {fb}, store errors {errs}: {tp.stderr()[-1500:]}"
    # no store round trip per request: far fewer lease calls than requests
    calls = sum(metrics(tp).value("turnpike_ratelimit_leases_total", route="g") for tp in tps)
    assert calls < (ok + refused) / 2, (calls, ok, refused)


def test_two_instances_share_a_bucket(h, redis):
    check_shared(h, redis, 2)


def test_three_instances_share_a_bucket(h, redis):
    check_shared(h, redis, 3)


def test_tenants_have_their_own_buckets(h, redis):
    up = h.upstream(name="U")
    rate, burst = 5, 20
    tps = [gateway(h, up, redis, [global_route(f"{rate}/s", burst)]) for _ in range(2)]
    for tp in tps:
        wait_store(tp, 1)
    t0 = time.monotonic()
    for tp in tps:
        warm(tp, "/g/w", "a")
    ok, refused, _, _ = hammer(tps, "/g/x", "a", 1.5, threads_per_tp=2)
    elapsed = time.monotonic() - t0
    assert refused > 0 and ok + 2 <= burst + rate * elapsed + 1, (ok, refused, elapsed)
    # tenant a is out of tokens; tenant b's bucket is untouched
    for tp in tps:
        warm(tp, "/g/w", "b")
    keys = sorted(k.decode() for k in redis.cmd("KEYS", "turnpike:rl:g:*"))
    assert len(keys) == 2, keys


def test_redis_killed_and_restarted(h, redis):
    up = h.upstream(name="U")
    burst = 5
    tp = gateway(h, up, redis, [global_route("1/m", burst)])
    wait_store(tp, 1)
    warm(tp, "/g/w", "k")
    redis.kill()
    # without the store: the local bucket with the route's rate and burst (on_failure: local)
    wait_store(tp, 0)
    assert tp.admin_get("/readyz")[0] == 200
    codes = [get(tp.port, "/g/x", headers=[("X-Tenant", "k")]).status for _ in range(burst + 10)]
    assert set(codes) <= {200, 429}, codes
    # at most what the pool still held, plus the whole local burst
    assert burst <= codes.count(200) <= burst + 2, codes
    m = metrics(tp)
    assert m.value("turnpike_ratelimit_fallback_total", route="g") >= burst + 8
    assert m.value("turnpike_ratelimit_store_errors_total") >= 1
    # the store comes back on the same port: reconnected by itself, leases again
    redis.start()
    wait_store(tp, 1)
    before = metrics(tp).value("turnpike_ratelimit_leases_total", route="g")
    warm(tp, "/g/w", "fresh")
    assert metrics(tp).value("turnpike_ratelimit_leases_total", route="g") > before
    assert tp.admin_get("/readyz")[0] == 200


def test_redis_unreachable_allow(h, redis):
    """on_failure: allow admits everything while the store cannot be reached."""
    up = h.upstream(name="U")
    redis.kill()
    tp = gateway(h, up, redis, [global_route("1/m", 1)], on_failure="allow")
    assert tp.admin_get("/readyz")[0] == 200
    codes = [get(tp.port, "/g/x", headers=[("X-Tenant", "k")]).status for _ in range(10)]
    assert codes == [200] * 10, codes
    m = metrics(tp)
    assert m.value("turnpike_ratelimit_store_up") == 0
    assert m.value("turnpike_ratelimit_fallback_total", route="g") == 10
    wait_until(lambda: metrics(tp).value("turnpike_ratelimit_store_errors_total") >= 2, T(10),
               what="reconnect attempts counted")


def test_slow_redis_times_out_and_falls_back(h, redis):
    up = h.upstream(name="U")
    tp = gateway(h, up, redis, [global_route("1000/s", 1000)], timeout="20ms")
    wait_store(tp, 1)
    warm(tp, "/g/w", "k")
    errors0 = metrics(tp).value("turnpike_ratelimit_store_errors_total")
    sleeper = threading.Thread(target=lambda: redis.cmd("DEBUG", "SLEEP", "3", timeout=T(30)), daemon=True)
    sleeper.start()
    # the pool runs low, its lease call gets no answer within 20 ms: the store is down
    wait_until(lambda: get(tp.port, "/g/x", headers=[("X-Tenant", "k")]) and store_up(tp) == 0, T(20),
               what="store down after a timeout")
    assert metrics(tp).value("turnpike_ratelimit_store_errors_total") > errors0
    assert tp.admin_get("/readyz")[0] == 200
    # meanwhile the local bucket decides (rate 1000/s: admitted)
    wait_until(lambda: get(tp.port, "/g/x", headers=[("X-Tenant", "k")]).status == 200 and
               metrics(tp).value("turnpike_ratelimit_fallback_total", route="g") > 0, T(10),
               what="requests decided by on_failure: local")
    sleeper.join(T(30))
    wait_store(tp, 1)
    warm(tp, "/g/w", "k2")


def test_reload_keeps_leases(h, redis):
    up = h.upstream(name="U")
    tp = gateway(h, up, redis, [global_route("100/s", 200), global_route("100/s", 200, name="other")])
    wait_store(tp, 1)
    warm(tp, "/g/w", "k")
    warm(tp, "/other/w", "k")
    m = metrics(tp)
    leased = m.value("turnpike_ratelimit_leased_tokens_total", route="g")
    other = m.value("turnpike_ratelimit_leased_tokens_total", route="other")
    assert leased > 0 and other > 0
    # a new rate for g keeps its pools; other becomes local: its pools go
    cfg = derive(tp, routes=[global_route("50/s", 200), dict(global_route("100/s", 200, name="other"),
                                                               rate_limit={"rate": "100/s", "burst": 200})])
    reload(tp, cfg)
    m = metrics(tp)
    assert m.value("turnpike_ratelimit_leased_tokens_total", route="g") >= leased
    assert m.value("turnpike_ratelimit_leased_tokens_total", route="other", default=-1) == -1
    for _ in range(5):
        assert get(tp.port, "/other/x", headers=[("X-Tenant", "k")]).status == 200
    warm(tp, "/g/x", "k")
    assert metrics(tp).value("turnpike_ratelimit_store_errors_total") == 0


def test_first_request_of_a_key_waits_for_its_lease(h, redis):
    """A key's first request on an instance finds its pool empty: it waits for
    the lease rather than being refused (docs/policies.md "Waiting for a lease")."""
    up = h.upstream(name="U")
    tps = [gateway(h, up, redis, [global_route("100/s", 200)]) for _ in range(2)]
    for tp in tps:
        wait_store(tp, 1)
    for i in range(5):
        for tp in tps:
            assert get(tp.port, "/g/x", headers=[("X-Tenant", f"new{i}")]).status == 200, (tp.port, i)
    for tp in tps:
        m = metrics(tp)
        assert m.value("turnpike_ratelimit_fallback_total", route="g") == 0
        assert m.value("turnpike_ratelimit_store_errors_total") == 0


def test_sparse_key_is_admitted(h, redis):
    """One request per second per instance to a key whose bucket has plenty of
    tokens: every pool is empty or expired by the next request, and every one
    is admitted all the same."""
    up = h.upstream(name="U")
    tps = [gateway(h, up, redis, [global_route("10/s", 20)]) for _ in range(2)]
    for tp in tps:
        wait_store(tp, 1)
    codes = []
    for _ in range(4):
        for tp in tps:
            codes.append(get(tp.port, "/g/x", headers=[("X-Tenant", "sparse")]).status)
        time.sleep(1.0)
    assert codes == [200] * len(codes), codes
    for tp in tps:
        assert metrics(tp).value("turnpike_ratelimit_fallback_total", route="g") == 0


def test_empty_bucket_still_refuses(h, redis):
    """Waiting does not admit beyond the bucket: once the store said it is
    empty, requests are refused with 429 and Retry-After."""
    up = h.upstream(name="U")
    tp = gateway(h, up, redis, [global_route("1/m", 3)])
    wait_store(tp, 1)
    codes = [get(tp.port, "/g/x", headers=[("X-Tenant", "z")]).status for _ in range(10)]
    assert codes[0] == 200, codes
    assert set(codes) <= {200, 429} and codes.count(200) <= 3 and codes[-1] == 429, codes
    assert metrics(tp).value("turnpike_ratelimit_fallback_total", route="g") == 0


def test_parked_request_times_out_into_on_failure(h, redis):
    """A request waiting for its pool's first lease while Redis does not answer
    (CLIENT PAUSE) is decided by on_failure once the store's timeout is over,
    before Redis ran the lease call: it does not wait for Redis."""
    up = h.upstream(name="U")
    tp = gateway(h, up, redis, [global_route("10/s", 20)], timeout="200ms", on_failure="allow")
    wait_store(tp, 1)
    m0 = metrics(tp)
    # WRITE: EVALSHA waits while INFO and CLIENT still answer
    calls0 = redis.commandstats().get("evalsha", 0)
    assert redis.cmd("CLIENT", "PAUSE", int(T(20) * 1000), "WRITE") == "OK"
    try:
        r = get(tp.port, "/g/x", headers=[("X-Tenant", "paused")])
        assert r.status == 200, r.status
        # no lease call ran meanwhile: the answer did not come from Redis
        assert redis.commandstats().get("evalsha", 0) == calls0
        m = metrics(tp)
        assert m.value("turnpike_ratelimit_fallback_total", route="g") == \
            m0.value("turnpike_ratelimit_fallback_total", route="g") + 1
        # the call's own deadline (sent just after the request parked) passes too; Redis
        # stays paused until it has (unpaused earlier, it may answer the call in time
        # when the control thread's timer is late on a busy machine)
        wait_until(lambda: metrics(tp).value("turnpike_ratelimit_store_errors_total") >
                   m0.value("turnpike_ratelimit_store_errors_total"), T(10), what="the timeout counted")
    finally:
        assert redis.cmd("CLIENT", "UNPAUSE") == "OK"
    assert tp.admin_get("/readyz")[0] == 200
    # and the store is used again afterwards
    wait_store(tp, 1)
    warm(tp, "/g/w", "after")


def test_parked_requests_over_http2(h, redis):
    """HTTP/2 streams wait for their pools' leases like HTTP/1 requests (the
    stream's head is kept meanwhile): several new keys on one connection."""
    from test_h2 import H2Client
    from test_h2 import start as h2_start

    up = h.upstream(name="U")
    tp = h2_start(h, {"upstreams": [upstream_cfg("u", up)],
                      "rate_limit_store": {"redis": redis.addr, "timeout": "2s", "on_failure": "local"},
                      "routes": [global_route("100/s", 200)]})
    wait_store(tp, 1)
    c = H2Client(tp.port)
    try:
        sids = [c.request(f"/g/h2/{i}", headers=[("x-tenant", f"h2-{i}")]) for i in range(8)]
        for sid in sids:
            st = c.response(sid)
            assert st["reset"] is None and st["headers"][":status"] == "200", st
        seen = [r.target for r in up.requests]
        assert sorted(seen) == sorted(f"/g/h2/{i}" for i in range(8)), seen
    finally:
        c.close()
    m = metrics(tp)
    assert m.value("turnpike_ratelimit_fallback_total", route="g") == 0
    assert m.value("turnpike_ratelimit_store_errors_total") == 0


def _b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_claim_keys_share_a_bucket(h, redis):
    """key: claim:tenant with JWT auth: the tenant claim of a verified token
    keys the global bucket, across instances and whatever else the tokens say."""
    jwt = pytest.importorskip("jwt")
    secret = os.urandom(32)
    jwks = h.tmp_path / "jwks.json"
    write_text_atomic(jwks, json.dumps({"keys": [{"kty": "oct", "kid": "k", "k": _b64u(secret), "use": "sig"}]}))

    def bearer(tenant, sub):
        now = int(time.time())
        tok = jwt.encode({"sub": sub, "tenant": tenant, "iat": now, "exp": now + 600}, secret, algorithm="HS256",
                         headers={"kid": "k"})
        return [("Authorization", f"Bearer {tok}")]

    up = h.upstream(name="U")
    rate, burst = 5, 10
    route = dict(global_route(f"{rate}/s", burst, key="claim:tenant"), auth={"provider": "tenants"})
    tps = [h.turnpike({"auth": [{"name": "tenants", "jwt": {"keys": str(jwks)}}],
                       "upstreams": [upstream_cfg("u", up)],
                       "rate_limit_store": {"redis": redis.addr, "timeout": f"{int(100 * T(1))}ms"},
                       "routes": [route]}) for _ in range(2)]
    for tp in tps:
        wait_store(tp, 1)
    assert get(tps[0].port, "/g/x").status == 401  # no token: auth refuses before the limit
    t0 = time.monotonic()
    # users of one tenant on both instances: one bucket
    ok, refused, other, _ = hammer(tps, "/g/x", None, 1.5, threads_per_tp=2, headers=bearer("acme", "user-1"))
    ok2, refused2, other2, _ = hammer(tps, "/g/x", None, 0.5, threads_per_tp=1, headers=bearer("acme", "user-2"))
    elapsed = time.monotonic() - t0
    assert other == 0 and other2 == 0
    assert refused + refused2 > 0, (ok, refused, ok2, refused2)
    assert ok + ok2 <= burst + rate * elapsed + 1, (ok, ok2, elapsed)
    # another tenant has its own bucket, on either instance
    for tp in tps:
        wait_until(lambda: get(tp.port, "/g/y", headers=bearer("globex", "user-1")).status == 200, T(20),
                   what="tenant globex admitted")
    keys = sorted(k.decode() for k in redis.cmd("KEYS", "turnpike:rl:g:*"))
    assert len(keys) == 2, keys
    for tp in tps:
        assert metrics(tp).value("turnpike_ratelimit_fallback_total", route="g") == 0


def test_reload_moves_to_another_store(h, redis, tmp_path):
    """A reload that names another store: the gateway leases from the new one,
    closes its connection to the old one, and serves throughout."""
    other = Redis(tmp_path, name="redis2")
    try:
        up = h.upstream(name="U")
        tp = gateway(h, up, redis, [global_route("100/s", 200)])
        wait_store(tp, 1)
        warm(tp, "/g/w", "k")
        assert redis.cmd("KEYS", "turnpike:rl:g:*")
        assert other.cmd("KEYS", "turnpike:rl:g:*") == []
        errors0 = metrics(tp).value("turnpike_ratelimit_store_errors_total")
        cfg = derive(tp, rate_limit_store={"redis": other.addr, "timeout": f"{int(100 * T(1))}ms",
                                           "on_failure": "local"})
        reload(tp, cfg)
        wait_store(tp, 1)
        warm(tp, "/g/w", "k2")
        assert other.cmd("KEYS", "turnpike:rl:g:*"), "leases come from the new store"
        # only this test's own INFO connection is left on the old store
        wait_until(lambda: b"connected_clients:1\r\n" in redis.cmd("INFO", "clients"), T(10),
                   what="the old store's connection closed")
        assert metrics(tp).value("turnpike_ratelimit_store_errors_total") == errors0, "a change is no failure"
        assert tp.admin_get("/readyz")[0] == 200
        assert get(tp.port, "/g/x", headers=[("X-Tenant", "k")]).status == 200
    finally:
        other.stop()
