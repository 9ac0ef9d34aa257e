# SPDX-License-Identifier: MIT
"""Load balancing (docs/reference.md upstreams[].balance; policies.md "Load balancing"):
smooth weighted round robin, least_request steering away from a slow endpoint,
consistent hashing on a header."""
import threading

from tp_harness import T, Client, get, upstream_cfg
from tp_more import Gate, metrics


def test_weighted_round_robin_exact(h):
    a = h.upstream(name="A")
    b = h.upstream(name="B")
    tp = h.turnpike({"workers": 1, "upstreams": [upstream_cfg("u", a, b, weights=[3, 1], balance="round_robin")],
                     "routes": [{"name": "r", "upstream": "u"}]})
    c = h.client(tp.port)
    seq = []
    for i in range(400):
        c.request("GET", f"/w{i}")
        r = c.read_response()
        assert r.status == 200, r
        seq.append(r.header("x-upstream"))
    assert (seq.count("A"), seq.count("B")) == (300, 100)
    assert (a.count(), b.count()) == (300, 100)
    # smooth: every block of 4 picks holds 3 A and 1 B (never A A A A B ... clumps)
    for k in range(0, 400, 4):
        assert sorted(seq[k:k + 4]) == ["A", "A", "A", "B"], (k, seq[k:k + 4])
    m = metrics(tp)
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=a.addr, code="2xx") == 300
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=b.addr, code="2xx") == 100


def test_round_robin_two_workers_equal_weights(h):
    """Each worker alternates: over an even number of requests per connection
    the split is exact whichever worker serves the connection."""
    a = h.upstream(name="A")
    b = h.upstream(name="B")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", a, b)], "routes": [{"name": "r", "upstream": "u"}]})
    for k in range(4):
        c = Client(tp.port)
        try:
            names = []
            for i in range(10):
                c.request("GET", f"/c{k}/{i}")
                names.append(c.read_response().header("x-upstream"))
        finally:
            c.close()
        assert (names.count("A"), names.count("B")) == (5, 5), names
        assert all(x != y for x, y in zip(names, names[1:])), names
    assert (a.count(), b.count()) == (20, 20)


def test_least_request_avoids_slow_endpoint(h):
    """A slow endpoint that holds every request it gets (until the end of the test)
    and a fast one, 8 clients in a closed loop. A request goes to the slow endpoint
    only when it has no more in flight than the fast one; with 8 clients that can
    happen at most 4 times (slow in flight <= fast in flight <= 7 - slow in flight),
    whatever the timing. Round robin would send it every other request."""
    gate = Gate()
    slow = h.upstream(gate.handler, name="SLOW")
    fast = h.upstream(name="FAST")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", slow, fast, balance="least_request")],
                     "routes": [{"name": "r", "upstream": "u"}]})
    n_threads, want = 8, 120
    seen = []
    errors = []
    lock = threading.Lock()
    done = threading.Event()

    def run(k):
        c = Client(tp.port, timeout=T(30))
        try:
            i = 0
            while not done.is_set():
                c.request("GET", f"/l{k}/{i}")
                i += 1
                r = c.read_response()
                assert r.status == 200, r
                with lock:
                    seen.append(r.header("x-upstream"))
                    if len(seen) >= want:
                        done.set()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
            done.set()
        finally:
            c.close()

    ts = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n_threads)]
    for t in ts:
        t.start()
    done.wait(T(60))
    assert not errors, errors[:3]
    n_slow = len(slow.heads)
    print(f"least_request: slow {n_slow} of {len(seen)}")
    assert 1 <= n_slow <= 4, f"the holding endpoint got {n_slow} requests"
    assert seen.count("FAST") >= want and "SLOW" not in seen
    gate.open()
    for t in ts:
        t.join(T(20))
    assert not errors, errors[:3]
    assert seen.count("SLOW") == n_slow and len(slow.heads) == n_slow
    assert fast.count() == seen.count("FAST")


def test_hash_on_header_is_sticky(h):
    ups = [h.upstream(name=f"E{i}") for i in range(3)]
    tp = h.turnpike({"upstreams": [upstream_cfg("u", *ups, balance="hash", hash_key="header:x-user")],
                     "routes": [{"name": "r", "upstream": "u"}]})
    placement = {}
    for rnd in range(10):
        for u in range(20):
            user = f"user-{u}"
            # fresh connections: both workers must agree (the table is per upstream)
            r = get(tp.port, f"/h/{rnd}", headers=[("X-User", user)])
            assert r.status == 200, r
            placement.setdefault(user, set()).add(r.header("x-upstream"))
    moved = {u: s for u, s in placement.items() if len(s) != 1}
    assert not moved, f"users seen on several endpoints: {moved}"
    used = {next(iter(s)) for s in placement.values()}
    assert len(used) >= 2, f"20 users all on {used}"
    assert sum(up.count() for up in ups) == 200
    # every endpoint's count is 10 times the number of its users
    for up in ups:
        users = sum(1 for s in placement.values() if s == {up.name})
        assert up.count() == 10 * users, (up.name, up.count(), users)
