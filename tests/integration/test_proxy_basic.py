# SPDX-License-Identifier: MIT
"""Basic proxying (docs/reference.md "What the gateway adds and removes", routes):
methods and bodies reach the upstream; hop-by-hop headers are removed;
X-Forwarded-*, X-Request-Id and traceparent; route header rewrites;
strip_prefix; direct_response; 404 for no route."""
import re

import pytest

from tp_harness import Client, assert_gateway_error, build_response, get, upstream_cfg

HEX32 = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@pytest.fixture
def env(h):
    def handler(req, conn):
        hs = [("Content-Type", "text/plain"), ("Server", "upstream/1.0"), ("X-Secret", "s3cr3t"),
              ("X-Resp-Override", "from-upstream"), ("X-Kept", "yes")]
        body = f"{req.method} {req.target} {len(req.body)}".encode()
        if req.method == "HEAD":
            return build_response(200, b"", hs + [("Content-Length", str(len(body)))], length=False)
        return build_response(200, body, hs)

    up = h.upstream(handler)
    tp = h.turnpike({
        "upstreams": [upstream_cfg("main", up)],
        "routes": [
            {"name": "ping", "match": {"path": "/ping"}, "direct_response": {"status": 201, "body": "pong\n"}},
            {"name": "teapot", "match": {"path": "/teapot"}, "direct_response": {"status": 418}},
            {"name": "users", "match": {"path_prefix": "/users"}, "upstream": "main", "strip_prefix": "/users"},
            {"name": "getonly", "match": {"path_prefix": "/getonly", "methods": ["GET"]}, "upstream": "main"},
            {"name": "rewrite", "match": {"path_prefix": "/rw"}, "upstream": "main",
             "request_headers": {"set": {"x-gateway": "turnpike", "x-override": "new"},
                                 "remove": ["x-internal-debug"]},
             "response_headers": {"set": {"strict-transport-security": "max-age=31536000",
                                          "x-resp-override": "from-gateway"},
                                  "remove": ["server", "x-secret"]}},
            {"name": "vhost", "match": {"path_prefix": "/vhost"}, "upstream": "main",
             "request_headers": {"set": {"host": "internal.svc"}}},
            {"name": "api", "match": {"path_prefix": "/api"}, "upstream": "main"},
        ],
    })
    return up, tp


@pytest.mark.parametrize("method,body", [("GET", None), ("POST", b"hello=world"), pytest.param("PUT", b"x" * 3000, id="PUT-3000"),
                                         ("DELETE", None), ("DELETE", b"{}"), ("OPTIONS", None)])
def test_methods_and_bodies(env, method, body):
    up, tp = env
    r = get(tp.port, "/api/item?id=3", method=method, body=body, headers=[("Accept", "*/*")])
    assert r.status == 200, r
    assert r.body == f"{method} /api/item?id=3 {len(body or b'')}".encode()
    assert up.count() == 1
    req = up.requests[0]
    assert (req.method, req.target, req.version) == (method, "/api/item?id=3", "HTTP/1.1")
    assert req.body == (body or b"")
    assert req.header("host") == "test.local"
    assert req.header("accept") == "*/*"
    if body:
        assert req.header("content-length") == str(len(body)) or req.chunked


def test_head(env):
    up, tp = env
    c = Client(tp.port)
    c.request("HEAD", "/api/h")
    r = c.read_response("HEAD")
    assert r.status == 200
    assert r.header("content-length") == str(len(b"HEAD /api/h 0"))
    # no body bytes follow: the next response on the connection parses cleanly
    c.request("GET", "/api/after")
    r2 = c.read_response()
    assert (r2.status, r2.body) == (200, b"GET /api/after 0")
    assert [q.method for q in up.requests] == ["HEAD", "GET"]
    c.close()


def test_hop_by_hop_removed(env):
    up, tp = env
    r = get(tp.port, "/api/hop", headers=[
        ("Connection", "keep-alive, X-Private, X-Other"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("X-Private", "must not pass"),
        ("X-Other", "must not pass either"),
        ("X-Public", "passes"),
    ])
    assert r.status == 200, r
    req = up.requests[0]
    names = req.headers.names()
    for hop in ("keep-alive", "proxy-connection", "te", "upgrade", "x-private", "x-other"):
        assert hop not in names, f"{hop} forwarded: {req.headers}"
    for v in req.headers.all("connection"):  # the gateway's own, if any
        assert v.strip().lower() in ("keep-alive", "close"), req.headers
    assert req.header("x-public") == "passes"


def test_forwarded_headers_added(env):
    up, tp = env
    r = get(tp.port, "/api/fwd", host="api.example.com:8080")
    assert r.status == 200
    req = up.requests[0]
    assert req.header("x-forwarded-for") == "127.0.0.1"
    assert req.header("x-forwarded-proto") == "http"
    assert req.header("x-forwarded-host") == "api.example.com:8080"
    assert req.header("host") == "api.example.com:8080"


def test_forwarded_for_appended_and_proto_host_replaced(env):
    up, tp = env
    r = get(tp.port, "/api/fwd", host="real.example", headers=[
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "spoofed.example"),
    ])
    assert r.status == 200
    req = up.requests[0]
    xff = ", ".join(req.headers.all("x-forwarded-for"))
    assert [p.strip() for p in xff.split(",")] == ["203.0.113.9", "127.0.0.1"], req.headers
    assert req.headers.all("x-forwarded-proto") == ["http"]
    assert req.headers.all("x-forwarded-host") == ["real.example"]


def test_request_id_kept_and_echoed(env):
    up, tp = env
    r = get(tp.port, "/api/rid", headers=[("X-Request-Id", "client-id-42")])
    assert r.status == 200
    assert up.requests[0].headers.all("x-request-id") == ["client-id-42"]
    assert r.headers.all("x-request-id") == ["client-id-42"]


def test_request_id_generated_and_echoed(env):
    up, tp = env
    ids = set()
    for _ in range(3):
        r = get(tp.port, "/api/rid")
        assert r.status == 200
        rid = r.header("x-request-id")
        assert rid and HEX32.fullmatch(rid), r
        ids.add(rid)
    assert len(ids) == 3
    assert {q.header("x-request-id") for q in up.requests} == ids


@pytest.mark.parametrize("bad", ["a" * 65, 'quote"inside', "back\\slash", "with space"],
                         ids=["65chars", "quote", "backslash", "space"])
def test_request_id_invalid_replaced(env, bad):
    # docs/operations.md: 1..64 visible ASCII without '"' or '\\' is kept, anything else replaced
    up, tp = env
    r = get(tp.port, "/api/rid", headers=[("X-Request-Id", bad)])
    assert r.status == 200
    rid = r.header("x-request-id")
    assert rid and HEX32.fullmatch(rid), r
    assert up.requests[0].headers.all("x-request-id") == [rid]


def test_request_id_64_chars_kept(env):
    up, tp = env
    rid = "R" * 32 + "-" * 8 + "0123456789abcdefghijklmn"
    assert len(rid) == 64
    r = get(tp.port, "/api/rid", headers=[("X-Request-Id", rid)])
    assert r.header("x-request-id") == rid
    assert up.requests[0].headers.all("x-request-id") == [rid]


def test_traceparent_propagated(env):
    up, tp = env
    tpv = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    r = get(tp.port, "/api/trace", headers=[("traceparent", tpv)])
    assert r.status == 200
    assert up.requests[0].headers.all("traceparent") == [tpv]


def test_traceparent_started(env):
    up, tp = env
    r = get(tp.port, "/api/trace")
    assert r.status == 200
    v = up.requests[0].header("traceparent")
    assert v, up.requests[0].headers
    m = TRACEPARENT.fullmatch(v)
    assert m, v
    assert m.group(1) != "0" * 32 and m.group(2) != "0" * 16


@pytest.mark.parametrize("bad", ["garbage", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                                 "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                                 "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                                 "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"],
                         ids=["garbage", "short", "zero-trace", "zero-span", "uppercase"])
def test_traceparent_invalid_restarted(env, bad):
    up, tp = env
    r = get(tp.port, "/api/trace", headers=[("traceparent", bad)])
    assert r.status == 200
    vals = up.requests[0].headers.all("traceparent")
    assert len(vals) == 1 and vals[0] != bad, vals
    m = TRACEPARENT.fullmatch(vals[0])
    assert m and m.group(1) != "0" * 32 and m.group(2) != "0" * 16, vals


def test_request_and_response_header_rewrites(env):
    up, tp = env
    r = get(tp.port, "/rw/x", headers=[("X-Override", "old"), ("X-Internal-Debug", "1"),
                                       ("x-internal-debug", "2"), ("X-Other", "kept")])
    assert r.status == 200, r
    req = up.requests[0]
    assert req.headers.all("x-gateway") == ["turnpike"]
    assert req.headers.all("x-override") == ["new"]
    assert req.headers.all("x-internal-debug") == []
    assert req.header("x-other") == "kept"
    assert r.headers.all("strict-transport-security") == ["max-age=31536000"]
    assert r.headers.all("x-resp-override") == ["from-gateway"]
    assert r.headers.all("server") == []
    assert r.headers.all("x-secret") == []
    assert r.header("x-kept") == "yes"
    assert r.body == b"GET /rw/x 0"


def test_host_rewrite(env):
    up, tp = env
    r = get(tp.port, "/vhost/x", host="public.example")
    assert r.status == 200, r
    req = up.requests[0]
    assert req.headers.all("host") == ["internal.svc"]
    assert req.headers.all("x-forwarded-host") == ["public.example"]


def test_no_rewrites_on_other_routes(env):
    up, tp = env
    r = get(tp.port, "/api/x", headers=[("X-Internal-Debug", "1")])
    assert r.header("server") == "upstream/1.0"
    assert r.header("x-secret") == "s3cr3t"
    assert up.requests[0].header("x-internal-debug") == "1"
    assert up.requests[0].header("x-gateway") is None


@pytest.mark.parametrize("target,forwarded", [
    ("/users", "/"),
    ("/users/", "/"),
    ("/users/7", "/7"),
    ("/users/7?x=1", "/7?x=1"),
    ("/users?x=1&y=2", "/?x=1&y=2"),
    ("/users/a/b/c", "/a/b/c"),
])
def test_strip_prefix(env, target, forwarded):
    up, tp = env
    r = get(tp.port, target)
    assert r.status == 200, r
    assert up.requests[0].target == forwarded


def test_prefix_matches_whole_segments(env):
    up, tp = env
    r = get(tp.port, "/usersx")
    assert_gateway_error(r, 404)
    assert up.count() == 0


def test_direct_response(env):
    up, tp = env
    r = get(tp.port, "/ping", headers=[("X-Request-Id", "dr-1")])
    assert (r.status, r.body, r.framing) == (201, b"pong\n", "length")
    assert r.header("content-length") == "5"
    assert r.header("x-request-id") == "dr-1"
    r = get(tp.port, "/teapot")
    assert (r.status, r.body, r.framing) == (418, b"", "length")
    assert r.header("content-length") == "0"
    assert up.count() == 0


def test_no_route_404(env):
    up, tp = env
    r = get(tp.port, "/nowhere")
    assert_gateway_error(r, 404)
    r = get(tp.port, "/nowhere", headers=[("X-Request-Id", "nf-7")])
    j = assert_gateway_error(r, 404)
    assert j["request_id"] == "nf-7"
    assert up.count() == 0


def test_method_mismatch_404(env):
    up, tp = env
    r = get(tp.port, "/getonly/x")
    assert r.status == 200
    r = get(tp.port, "/getonly/x", method="DELETE")
    assert_gateway_error(r, 404)
    r = get(tp.port, "/getonly/x", method="POST", body=b"abc")
    assert_gateway_error(r, 404)
    assert up.count() == 1


def test_body_to_404_is_read_and_dropped(env):
    # docs/operations.md: a Content-Length body up to 1 MiB is read and dropped to keep the connection
    up, tp = env
    c = Client(tp.port)
    c.request("POST", "/nowhere", body=b"q" * 5000)
    assert_gateway_error(c.read_response(), 404)
    c.request("GET", "/api/next")
    r = c.read_response()
    assert (r.status, r.body) == (200, b"GET /api/next 0")
    assert [q.target for q in up.requests] == ["/api/next"]
    c.close()


def test_chunked_body_to_404_closes(env):
    up, tp = env
    c = Client(tp.port)
    c.send(b"POST /nowhere HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    r = c.read_response()
    assert_gateway_error(r, 404)
    assert r.header("connection", "").lower() == "close", r
    assert c.wait_closed() in ("eof", "reset")
    assert up.count() == 0
