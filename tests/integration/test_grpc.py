# SPDX-License-Identifier: MIT
"""gRPC through the gateway (docs/reference.md "gRPC").

Two parts:
  - HTTP/2 clients (python3-h2 over raw sockets, test_h2.H2Client) in front of
    HTTP/1.1 upstreams that speak gRPC's framing by hand: trailers both ways,
    grpc-timeout, the grpc-status metric and access-log field. These need
    nothing but downstream HTTP/2.
  - python3-grpcio end to end: a real gRPC server (generic handlers, bytes in
    and out, no protoc) behind an upstream with `protocol: h2c`, and a
    grpc.insecure_channel to the gateway: the four call kinds, deadlines,
    statuses, metadata, large messages, gateway-made errors.
"""
import json
import struct
import threading
import time

import pytest

from test_h2 import H2Client, start
from tp_harness import T, build_response, upstream_cfg, wait_until
from tp_hostile import hostile
from tp_more import metrics

GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


def frame(msg):
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\0" + struct.pack(">I", len(msg)) + msg


def routes(up, **extra):
    c = {"upstreams": [upstream_cfg("u", up)],
         "routes": [{"name": "g", "match": {"path_prefix": "/"}, "upstream": "u"}]}
    c.update(extra)
    return c


def grpc_count(tp, code, route="g"):
    return metrics(tp).value("turnpike_grpc_responses_total", default=0, route=route, grpc_status=str(code))


def chunked_with_trailers(body, trailers, headers=None):
    hs = [("Content-Type", "application/grpc"), ("Transfer-Encoding", "chunked")] + list(headers or [])
    head = "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    out = head.encode()
    if body:
        out += b"%x\r\n" % len(body) + body + b"\r\n"
    out += b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers) + b"\r\n"
    return out


# --------------------------------------------------------------------------
# HTTP/2 clients, HTTP/1.1 upstreams
# --------------------------------------------------------------------------


def test_h1_upstream_trailers_reach_h2_client_as_trailing_headers(h):
    """A chunked response's trailer section becomes trailing HEADERS; fields a
    trailer must not carry are dropped; the grpc-status is counted."""
    def handler(req, conn):
        return chunked_with_trailers(frame(b"pong"), [("grpc-status", "0"), ("grpc-message", "fine"),
                                                      ("X-Checksum", "abc"), ("Content-Length", "9")])

    up = h.upstream(handler)
    tp = start(h, routes(up))
    c = H2Client(tp.port)
    st = c.response(c.request("/pkg.Svc/Ping", method="POST", body=frame(b"ping"), headers=GRPC_HEADERS))
    assert st["headers"][":status"] == "200" and st["data"] == frame(b"pong"), st
    assert st.get("trailers") == {"grpc-status": "0", "grpc-message": "fine", "x-checksum": "abc"}, st
    assert up.requests[-1].body == frame(b"ping")
    wait_until(lambda: grpc_count(tp, 0) == 1, T(10), what="grpc_status 0 counted")
    c.close()


def test_h1_upstream_trailers_without_body_data(h):
    """A chunked response with no data, only trailers: HEADERS, then trailing HEADERS, no DATA payload."""
    up = h.upstream(lambda req, conn: chunked_with_trailers(b"", [("grpc-status", "5"),
                                                                  ("grpc-message", "not%20here")]))
    tp = start(h, routes(up))
    c = H2Client(tp.port)
    st = c.response(c.request("/pkg.Svc/Get", method="POST", body=frame(b""), headers=GRPC_HEADERS))
    assert st["headers"][":status"] == "200" and st["data"] == b"", st
    assert st.get("trailers") == {"grpc-status": "5", "grpc-message": "not%20here"}, st
    wait_until(lambda: grpc_count(tp, 5) == 1, T(10), what="grpc_status 5 counted")
    c.close()


def test_h2_request_trailers_reach_h1_upstream(h):
    """HTTP/2 request trailers go to an HTTP/1.1 upstream as the chunked body's trailer section
    (a request without content-length goes chunked)."""
    up = h.upstream()
    tp = start(h, routes(up))
    c = H2Client(tp.port)
    sid = c.request("/t", method="POST", body=b"abc", end=False, headers=[("content-type", "text/plain")])
    c.c.send_headers(sid, [("x-sum", "42"), ("x-other", "v")], end_stream=True)
    c.flush()
    st = c.response(sid)
    assert st["headers"][":status"] == "200", st
    req = up.requests[-1]
    assert req.chunked and req.body == b"abc", req
    assert req.trailers == [b"x-sum: 42", b"x-other: v"], req.trailers
    # trailers right after the head, no DATA at all
    sid = c.request("/t2", method="POST", end=False)
    c.c.send_headers(sid, [("x-only", "1")], end_stream=True)
    c.flush()
    assert c.response(sid)["headers"][":status"] == "200"
    req = up.requests[-1]
    assert req.chunked and req.body == b"" and req.trailers == [b"x-only: 1"], req
    c.close()


def test_grpc_timeout_bounds_the_call(h):
    """grpc-timeout shorter than upstream_response: the gateway answers DEADLINE_EXCEEDED in gRPC
    form when it passes; the upstream got the header; the endpoint's breaker is not blamed."""
    def bad(req, conn):
        conn.wait_release()
        return "stop"

    up = hostile(h, bad=bad)
    tp = start(h, routes(up))
    c = H2Client(tp.port)
    t0 = time.monotonic()
    st = c.response(c.request("/bad/slow", method="POST", body=frame(b"x"),
                              headers=GRPC_HEADERS + [("grpc-timeout", "300m")]), T(20))
    waited = time.monotonic() - t0
    hs = st["headers"]
    assert hs[":status"] == "200" and hs["grpc-status"] == "4", st
    assert "deadline exceeded" in hs["grpc-message"], hs
    assert waited < 25, "upstream_response (30 s) decided, not grpc-timeout"
    assert up.conns[0].requests[0].header("grpc-timeout") == "300m"
    wait_until(lambda: grpc_count(tp, 4) == 1, T(10), what="grpc_status 4 counted")
    c.close()


def test_grpc_timeout_malformed_is_ignored(h):
    up = h.upstream(lambda req, conn: build_response(
        200, frame(b"ok"), [("Content-Type", "application/grpc"), ("grpc-status", "0")]))
    tp = start(h, routes(up))
    c = H2Client(tp.port)
    for bad in ("1x", "123456789S", "S", "-1S", "1.5S"):
        st = c.response(c.request("/pkg.Svc/M", method="POST", body=frame(b"x"),
                                  headers=GRPC_HEADERS + [("grpc-timeout", bad)]))
        assert st["headers"][":status"] == "200" and st["data"] == frame(b"ok"), (bad, st)
        assert up.heads[-1].header("grpc-timeout") == bad
    c.close()


def test_grpc_timeout_after_the_response_started_resets_the_stream(h):
    def bad(req, conn):
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"%x\r\n" % len(frame(b"first")) + frame(b"first") + b"\r\n")
        conn.wait_release()
        return "stop"

    up = hostile(h, bad=bad)
    tp = start(h, routes(up))
    c = H2Client(tp.port)
    st = c.response(c.request("/bad/stream", method="POST", body=frame(b"x"),
                              headers=GRPC_HEADERS + [("grpc-timeout", "400m")]), T(20))
    assert st["headers"][":status"] == "200" and st["data"] == frame(b"first"), st
    assert st["reset"] is not None and not st.get("trailers"), st
    c.close()


def test_grpc_status_metric_access_log_and_gateway_answers(h, tmp_path):
    log = tmp_path / "access.log"
    answers = {"/pkg.Svc/Seven": [("grpc-status", "7"), ("grpc-message", "no")],
               "/pkg.Svc/Odd": [("grpc-status", "99")]}

    def handler(req, conn):
        return build_response(200, b"", [("Content-Type", "application/grpc")] + answers[req.target])

    up = h.upstream(handler)
    tp = start(h, {"upstreams": [upstream_cfg("u", up)],
                   "routes": [{"name": "g", "match": {"path_prefix": "/pkg.Svc/"}, "upstream": "u"}],
                   "access_log": {"path": str(log), "format": "json"}})
    c = H2Client(tp.port)
    for path, want in (("/pkg.Svc/Seven", "7"), ("/pkg.Svc/Odd", "99"), ("/elsewhere", "12")):
        st = c.response(c.request(path, method="POST", body=frame(b""), headers=GRPC_HEADERS))
        assert st["headers"]["grpc-status"] == want, (path, st)
    # not gRPC: no grpc status anywhere
    st = c.response(c.request("/elsewhere"))
    assert st["headers"][":status"] == "404"
    wait_until(lambda: grpc_count(tp, 12, route="unmatched") == 1, T(10), what="unmatched counted")
    m = metrics(tp)
    assert m.value("turnpike_grpc_responses_total", route="g", grpc_status="7") == 1
    assert m.value("turnpike_grpc_responses_total", route="g", grpc_status="other") == 1
    assert m.total("turnpike_grpc_responses_total") == 3
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 4, T(10), what="log lines")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    got = [(e["path"], e.get("grpc_status", "absent")) for e in lines]
    assert got == [("/pkg.Svc/Seven", 7), ("/pkg.Svc/Odd", None), ("/elsewhere", 12),
                   ("/elsewhere", "absent")], got
    c.close()
