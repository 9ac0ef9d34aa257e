# SPDX-License-Identifier: MIT
"""Listeners added and removed by a reload (docs/reference.md "Signals": listeners added or
removed in the file are opened or closed; operations.md: connections of a removed
listener finish their current request and close)."""
import socket

from tp_harness import T, get, reserve_port, has_token, upstream_cfg
from tp_more import Gate, admin_json, config_text, derive, metrics, reload, reload_fails, wait_metric


def refused(port, tries=5):
    """True when every one of <tries> connects to port is refused."""
    for _ in range(tries):
        s = socket.socket()
        s.settimeout(T(5))
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            continue
        else:
            return False
        finally:
            s.close()
    return True


def public(tp):
    return [l for l in tp.config["listeners"] if l["name"] == "public"]


def test_listener_added_and_removed(h):
    up = h.upstream(name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up)],
                     "routes": [{"name": "all", "upstream": "u"}]})
    p2 = reserve_port()
    assert refused(p2)

    reload(tp, derive(tp, listeners=public(tp) + [{"name": "extra", "address": f"127.0.0.1:{p2}"}]))
    for i in range(4):
        r = get(p2, f"/x{i}")
        assert (r.status, r.body) == (200, f"GET /x{i}".encode()), r
    assert get(tp.port, "/p").status == 200
    listeners = {l["name"]: l["address"] for l in admin_json(tp)["listeners"]}
    assert listeners == {"public": f"127.0.0.1:{tp.port}", "extra": f"127.0.0.1:{p2}"}, listeners
    m = metrics(tp)
    assert m.value("turnpike_connections_total", listener="extra") == 4
    assert m.value("turnpike_connections_total", listener="public") == 1

    # remove it: new connections are refused, the old listener keeps serving
    reload(tp, derive(tp, listeners=public(tp)))
    assert refused(p2)
    assert get(tp.port, "/p2").status == 200
    assert [l["name"] for l in admin_json(tp)["listeners"]] == ["public"]

    # and add it back on the same address
    reload(tp, derive(tp, listeners=public(tp) + [{"name": "extra", "address": f"127.0.0.1:{p2}"}]))
    r = get(p2, "/back")
    assert (r.status, r.body) == (200, b"GET /back"), r
    assert metrics(tp).value("turnpike_connections_total", listener="extra") == 5


def test_listener_address_change(h):
    up = h.upstream(name="U")
    p2, p3 = reserve_port(), reserve_port()
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up)], "routes": [{"name": "all", "upstream": "u"}]})
    reload(tp, derive(tp, listeners=public(tp) + [{"name": "extra", "address": f"127.0.0.1:{p2}"}]))
    assert get(p2, "/a").status == 200
    reload(tp, derive(tp, listeners=public(tp) + [{"name": "extra", "address": f"127.0.0.1:{p3}"}]))
    assert refused(p2)
    r = get(p3, "/b")
    assert (r.status, r.body) == (200, b"GET /b"), r


def test_connections_on_removed_listener_finish_and_close(h):
    gate = Gate()
    slow = h.upstream(gate.handler, name="S")
    fast = h.upstream(name="F")
    tp = h.turnpike({"upstreams": [upstream_cfg("s", slow), upstream_cfg("f", fast)],
                     "routes": [{"name": "slow", "match": {"path_prefix": "/slow"}, "upstream": "s"},
                                {"name": "fast", "upstream": "f"}]})
    p2 = reserve_port()
    reload(tp, derive(tp, listeners=public(tp) + [{"name": "extra", "address": f"127.0.0.1:{p2}"}]))

    idle = h.client(p2)  # keep-alive, idle at the reload
    idle.request("GET", "/i1")
    r = idle.read_response()
    assert r.status == 200 and not has_token(r.header("connection"), "close"), r

    busy = h.client(p2)  # a request in flight at the reload
    busy.request("GET", "/f1")
    assert busy.read_response().status == 200
    busy.request("GET", "/slow/1")
    slow.wait_heads(1)

    reload(tp, derive(tp, listeners=public(tp)))
    assert refused(p2)

    # the idle connection is closed (nothing to finish)
    assert idle.wait_closed(T(5)) in ("eof", "reset")

    # the busy one gets its response, marked Connection: close, then closes
    gate.open()
    r = busy.read_response()
    assert (r.status, r.body) == (200, b"S /slow/1"), r
    assert has_token(r.header("connection"), "close"), r
    assert busy.wait_closed(T(5)) == "eof"

    # the public listener is untouched, keep-alive included
    c = h.client(tp.port)
    for i in range(3):
        c.request("GET", f"/p{i}")
        r = c.read_response()
        assert r.status == 200 and not has_token(r.header("connection"), "close"), r
    # once the clients close their ends too, nothing of the old listener is left
    idle.close()
    busy.close()
    wait_metric(tp, "turnpike_connections_active", 0, listener="extra")
    assert metrics(tp).value("turnpike_connections_total", listener="extra") == 2


def test_reload_fails_when_new_listener_cannot_bind(h):
    """operations.md: a listener that cannot bind fails the whole reload."""
    up = h.upstream(name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up)], "routes": [{"name": "all", "upstream": "u"}]})
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    try:
        bad = derive(tp, listeners=public(tp) + [{"name": "extra", "address": f"127.0.0.1:{busy}"}],
                     routes=[{"name": "all", "upstream": "u", "response_headers": {"set": {"x-new": "1"}}}])
        text = config_text(bad)
        lines = text.split("\n")
        ln = next(i for i, s in enumerate(lines) if f'"127.0.0.1:{busy}"' in s)
        col = lines[ln].index(f'"127.0.0.1:{busy}"') + 1
        err = reload_fails(tp, text)
        want = f"{tp.config_path}:{ln + 1}:{col}: listeners[1].address: cannot listen on 127.0.0.1:{busy}"
        assert want in err, f"expected {want!r} in:\n{err}"
    finally:
        blocker.close()
    j = admin_json(tp)
    assert j["generation"] == 1 and [l["name"] for l in j["listeners"]] == ["public"], j
    r = get(tp.port, "/x")
    assert r.status == 200 and r.header("x-new") is None, r
