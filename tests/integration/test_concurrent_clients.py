# SPDX-License-Identifier: MIT
"""Many clients at once over both shards: every response belongs to its
request (ids and bodies match), across keep-alive and pipelined connections,
with two upstream endpoints."""
import threading

from tp_harness import T, Client, build_request, build_response, sha256, upstream_cfg


def handler(req, conn):
    body = f"{req.method} {req.target} {req.header('x-request-id')} {sha256(req.body)}".encode()
    return build_response(200, body * 3)


def test_32_clients_keepalive_and_pipelined(h):
    a = h.upstream(handler, name="a")
    b = h.upstream(handler, name="b")
    tp = h.turnpike({"workers": 2, "upstreams": [upstream_cfg("main", a, b)], "routes": [{"upstream": "main"}]})
    errors = []
    n_clients, n_req = 32, 25

    def run(k):
        try:
            c = Client(tp.port, timeout=T(20))
            for i in range(n_req):
                rid = f"c{k}-r{i}"
                body = (f"payload {k} {i} " * (i % 7)).encode()
                if i % 5 == 4:  # a pipelined pair
                    c.send(build_request("POST", f"/p/{k}/{i}", [("X-Request-Id", rid)], body)
                           + build_request("GET", f"/p/{k}/{i}b", [("X-Request-Id", rid + "b")]))
                    exp = [f"POST /p/{k}/{i} {rid} {sha256(body)}", f"GET /p/{k}/{i}b {rid}b {sha256(b'')}"]
                else:
                    c.request("POST", f"/p/{k}/{i}", [("X-Request-Id", rid)], body)
                    exp = [f"POST /p/{k}/{i} {rid} {sha256(body)}"]
                for e in exp:
                    r = c.read_response()
                    want = e.encode() * 3
                    if r.status != 200 or r.body != want or r.header("x-request-id") != e.split(" ")[2]:
                        errors.append((k, i, e, r))
                        return
            c.close()
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T(60))
    assert not any(t.is_alive() for t in threads), "clients still running"
    assert errors == [], errors[:3]
    total = n_clients * (n_req + n_req // 5)
    assert a.count() + b.count() == total
    assert a.count() > 0 and b.count() > 0
    assert a.errors == [] and b.errors == []
