# SPDX-License-Identifier: MIT
"""Traffic distribution: smooth weighted round robin over endpoints (exact
counts with one worker) and a weighted split between upstreams (random or
not: both arms seen, proportions roughly right)."""
from tp_harness import Client, upstream_cfg


def run_sequential(port, n, target="/x"):
    """n requests on one keep-alive connection; returns the X-Upstream values."""
    c = Client(port)
    seen = []
    try:
        for i in range(n):
            c.request("GET", f"{target}/{i}")
            r = c.read_response()
            assert r.status == 200, r
            assert r.body == f"GET {target}/{i}".encode()
            seen.append(r.header("x-upstream"))
    finally:
        c.close()
    return seen


def test_weighted_round_robin_exact(h):
    a = h.upstream(name="a")
    b = h.upstream(name="b")
    tp = h.turnpike({
        "workers": 1,
        "upstreams": [upstream_cfg("rr", a, b, weights=[3, 1], balance="round_robin")],
        "routes": [{"upstream": "rr"}],
    })
    seen = run_sequential(tp.port, 400)
    assert seen.count("a") == 300 and seen.count("b") == 100, (seen.count("a"), seen.count("b"))
    # smooth: never more than three a's in a row, every window of four holds one b
    for i in range(0, 400, 4):
        assert sorted(seen[i : i + 4]) == ["a", "a", "a", "b"], seen[i : i + 4]
    assert (a.count(), b.count()) == (300, 100)


def test_equal_weights_alternate(h):
    a = h.upstream(name="a")
    b = h.upstream(name="b")
    c = h.upstream(name="c")
    tp = h.turnpike({
        "workers": 1,
        "upstreams": [upstream_cfg("rr", a, b, c)],
        "routes": [{"upstream": "rr"}],
    })
    seen = run_sequential(tp.port, 30)
    assert (seen.count("a"), seen.count("b"), seen.count("c")) == (10, 10, 10)


def test_split_90_10(h):
    v1 = h.upstream(name="v1")
    v2 = h.upstream(name="v2")
    tp = h.turnpike({
        "upstreams": [upstream_cfg("users-v1", v1), upstream_cfg("users-v2", v2)],
        "routes": [{"match": {"path_prefix": "/x"},
                    "split": [{"upstream": "users-v1", "weight": 90}, {"upstream": "users-v2", "weight": 10}]}],
    })
    n = 1000
    seen = run_sequential(tp.port, n)
    n1, n2 = seen.count("v1"), seen.count("v2")
    assert n1 + n2 == n
    # expected 900/100; the binomial sd is ~9.5, so +-40 is over 4 sd
    assert 60 <= n2 <= 140, (n1, n2)
    assert (v1.count(), v2.count()) == (n1, n2)


def test_split_zero_weight_arm_gets_nothing(h):
    v1 = h.upstream(name="v1")
    v2 = h.upstream(name="v2")
    tp = h.turnpike({
        "upstreams": [upstream_cfg("live", v1), upstream_cfg("drained", v2)],
        "routes": [{"split": [{"upstream": "live", "weight": 5}, {"upstream": "drained", "weight": 0}]}],
    })
    seen = run_sequential(tp.port, 50)
    assert seen == ["v1"] * 50
    assert v2.accepted == 0
