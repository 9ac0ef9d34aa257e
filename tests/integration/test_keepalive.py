# SPDX-License-Identifier: MIT
"""Connection management on both sides: keep-alive, pipelining, HTTP/1.0
clients, Connection: close from either side, close-delimited upstream
responses, HEAD."""
import time

import pytest

from tp_harness import Client, build_request, build_response, has_token, upstream_cfg


def handler(req, conn):
    path = req.target
    if path.startswith("/close"):  # the upstream closes after answering
        return build_response(200, b"closing " + path.encode(), [("Connection", "close")])
    if path.startswith("/eof"):  # close-delimited: neither Content-Length nor chunked
        conn.send(build_response(200, b"", [("Content-Type", "text/plain")], length=False))
        conn.send(b"close-delimited body " + path.encode())
        conn.close()
        return None
    if path.startswith("/chunked"):
        return build_response(200, b"chunked body " + path.encode() * 20, chunk=True)
    if path == "/p0":  # the first of a pipeline answers last: order must still hold
        time.sleep(0.3)
    if path.startswith("/status/"):  # bodiless statuses
        code = int(path.split("/")[2])
        return build_response(code, b"", [("ETag", '"x"')], length=False)
    if path.startswith("/head"):
        # a HEAD answer announcing a body it (correctly) does not send
        return build_response(200, b"", [("Content-Length", "123456")], length=False)
    return build_response(200, f"{req.method} {path} {req.header('x-request-id')}".encode())


@pytest.fixture
def env(h):
    up = h.upstream(handler)
    tp = h.turnpike({
        "workers": 1,
        "upstreams": [upstream_cfg("main", up)],
        "routes": [{"match": {"path": "/ping"}, "direct_response": {"status": 200, "body": "pong"}},
                   {"match": {"path_prefix": "/"}, "upstream": "main"}],
    })
    return up, tp


def test_keepalive_both_sides(env):
    up, tp = env
    c = Client(tp.port)
    for i in range(5):
        c.request("GET", f"/k{i}", headers=[("X-Request-Id", f"k{i}")])
        r = c.read_response()
        assert (r.status, r.body) == (200, f"GET /k{i} k{i}".encode())
        assert not has_token(r.header("connection"), "close"), r
        assert r.header("x-request-id") == f"k{i}"
    assert up.accepted == 1
    assert [q.conn_id for q in up.requests] == [0] * 5
    c.close()


def test_pipelined_ten_in_one_write(env):
    up, tp = env
    c = Client(tp.port)
    reqs = []
    for i in range(10):
        target = "/ping" if i == 4 else f"/p{i}"
        reqs.append(build_request("GET", target, [("X-Request-Id", f"pipe-{i}")]))
    c.send(b"".join(reqs))
    for i in range(10):
        r = c.read_response()
        assert r.status == 200, (i, r)
        assert r.header("x-request-id") == f"pipe-{i}", (i, r)
        if i == 4:
            assert r.body == b"pong"
        else:
            assert r.body == f"GET /p{i} pipe-{i}".encode(), (i, r)
    assert [q.target for q in up.requests] == [f"/p{i}" for i in range(10) if i != 4]
    # the connection is still usable
    c.request("GET", "/after")
    r = c.read_response()
    assert r.body == f"GET /after {r.header('x-request-id')}".encode()
    c.close()


def test_pipelined_with_bodies_and_errors(env):
    up, tp = env
    c = Client(tp.port)
    data = (build_request("POST", "/b1", [("X-Request-Id", "b1")], body=b"first body")
            + build_request("GET", "/ping", [("X-Request-Id", "b2")])
            + build_request("PUT", "/b3", [("X-Request-Id", "b3")], body=b"x" * 5000)
            + build_request("GET", "/b4", [("X-Request-Id", "b4")]))
    c.send(data)
    bodies = [c.read_response().body for _ in range(4)]
    assert bodies == [b"POST /b1 b1", b"pong", b"PUT /b3 b3", b"GET /b4 b4"]
    assert [(q.target, q.body) for q in up.requests] == [("/b1", b"first body"), ("/b3", b"x" * 5000),
                                                         ("/b4", b"")]
    c.close()


def test_http10_closes_by_default(env):
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/old", version="HTTP/1.0")
    r = c.read_response()
    assert r.status == 200
    assert r.body == f"GET /old {r.header('x-request-id')}".encode()
    assert r.framing in ("length", "close"), r
    assert r.header("transfer-encoding") is None
    assert c.wait_closed() in ("eof", "reset")


def test_http10_keepalive(env):
    up, tp = env
    c = Client(tp.port)
    for i in range(3):
        c.request("GET", f"/ka{i}", version="HTTP/1.0", headers=[("Connection", "keep-alive")])
        r = c.read_response()
        assert r.status == 200
        assert r.framing == "length", r
        assert has_token(r.header("connection"), "keep-alive"), r  # a 1.0 client needs to be told
        assert r.body.startswith(f"GET /ka{i} ".encode())
    c.close()


def test_http10_chunked_upstream_is_not_chunked(env):
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/chunked-10", version="HTTP/1.0")
    r = c.read_response()
    assert r.status == 200
    assert r.header("transfer-encoding") is None, r
    assert r.body == b"chunked body " + b"/chunked-10" * 20
    assert c.wait_closed() in ("eof", "reset")


def test_http10_keepalive_chunked_upstream_is_not_chunked(env):
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/chunked-ka", version="HTTP/1.0", headers=[("Connection", "keep-alive")])
    r = c.read_response()
    assert r.status == 200
    assert r.header("transfer-encoding") is None, r
    assert r.body == b"chunked body " + b"/chunked-ka" * 20
    if r.framing == "length":  # the gateway may keep a length-framed answer alive
        c.request("GET", "/again", version="HTTP/1.0", headers=[("Connection", "keep-alive")])
        assert c.read_response().status == 200
    c.close()


def test_client_connection_close(env):
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/bye", headers=[("Connection", "close")])
    r = c.read_response()
    assert r.status == 200
    assert has_token(r.header("connection"), "close"), r
    assert c.wait_closed() in ("eof", "reset")


def test_client_connection_close_direct_response(env):
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/ping", headers=[("Connection", "close")])
    r = c.read_response()
    assert (r.status, r.body) == (200, b"pong")
    assert has_token(r.header("connection"), "close"), r
    assert c.wait_closed() in ("eof", "reset")


def test_upstream_connection_close(env):
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/close1")
    r = c.read_response()
    assert (r.status, r.body) == (200, b"closing /close1")
    assert not has_token(r.header("connection"), "close"), "the upstream's close leaked to the client"
    c.request("GET", "/next")
    r = c.read_response()
    assert r.status == 200 and r.body.startswith(b"GET /next ")
    assert up.accepted == 2
    c.close()


def test_close_delimited_upstream_is_chunked_for_http11(env):
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/eof-chunked")
    r = c.read_response()
    assert (r.status, r.framing) == (200, "chunked"), r
    assert r.body == b"close-delimited body /eof-chunked"
    # the client connection survives the upstream's close
    c.request("GET", "/after-eof")
    r2 = c.read_response()
    assert r2.status == 200 and r2.body.startswith(b"GET /after-eof "), r2
    assert up.accepted == 2
    c.close()


def test_close_delimited_upstream_http10_client(env):
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/eof10", version="HTTP/1.0")
    r = c.read_response()
    assert r.status == 200
    assert r.framing == "close", r
    assert r.body == b"close-delimited body /eof10"


def test_head_with_content_length_no_body(env):
    up, tp = env
    c = Client(tp.port)
    c.request("HEAD", "/head")
    r = c.read_response("HEAD")
    assert r.status == 200
    assert r.header("content-length") == "123456"
    # nothing else may follow: the next request's answer is next on the wire
    c.request("GET", "/after-head")
    r2 = c.read_response()
    assert r2.status == 200 and r2.body.startswith(b"GET /after-head "), r2
    c.request("HEAD", "/head2")
    assert c.read_response("HEAD").status == 200
    c.request("GET", "/last")
    assert c.read_response().body.startswith(b"GET /last ")
    c.close()


@pytest.mark.parametrize("code", [204, 304])
def test_bodiless_status_keeps_connection(env, code):
    up, tp = env
    c = Client(tp.port)
    for _ in range(2):
        c.request("GET", f"/status/{code}")
        r = c.read_response()
        assert r.status == code, r
        assert r.header("transfer-encoding") is None, r
        c.request("GET", "/after-status")
        r2 = c.read_response()
        assert r2.status == 200 and r2.body.startswith(b"GET /after-status "), r2
    c.close()


def test_body_to_direct_response_is_discarded(env):
    up, tp = env
    c = Client(tp.port)
    c.request("POST", "/ping", body=b"ignored body " * 10)
    r = c.read_response()
    assert (r.status, r.body) == (200, b"pong")
    c.request("GET", "/ping")
    r = c.read_response()
    assert (r.status, r.body) == (200, b"pong")
    c.request("GET", "/proxied")
    r = c.read_response()
    assert r.status == 200 and r.body.startswith(b"GET /proxied "), r
    assert [q.target for q in up.requests] == ["/proxied"]
    c.close()


def test_half_closed_client_gets_response(env):
    # docs/operations.md: a client that shuts down its sending side after a complete request
    up, tp = env
    c = Client(tp.port)
    c.request("GET", "/half")
    c.sock.shutdown(1)  # SHUT_WR
    r = c.read_response()
    assert r.status == 200 and r.body.startswith(b"GET /half "), r
    assert c.wait_closed() in ("eof", "reset")


def test_lingering_close_keeps_response(env):
    # Connection: close with unread bytes behind it: the response still arrives whole
    up, tp = env
    c = Client(tp.port)
    c.send(build_request("GET", "/ping", [("Connection", "close")]) + b"X" * 200000)
    r = c.read_response()
    assert (r.status, r.body) == (200, b"pong")
    assert c.wait_closed() in ("eof", "reset")



def test_pipeline_stops_after_connection_close(env):
    up, tp = env
    c = Client(tp.port)
    c.send(build_request("GET", "/pa", [("X-Request-Id", "pa")])
           + build_request("GET", "/pb", [("X-Request-Id", "pb"), ("Connection", "close")])
           + build_request("GET", "/pc", [("X-Request-Id", "pc")]))
    r1 = c.read_response()
    r2 = c.read_response()
    assert (r1.body, r2.body) == (b"GET /pa pa", b"GET /pb pb")
    assert has_token(r2.header("connection"), "close"), r2
    assert c.wait_closed() in ("eof", "reset")
    assert [q.target for q in up.heads] == ["/pa", "/pb"], "a request after Connection: close was processed"
