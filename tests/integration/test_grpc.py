# SPDX-License-Identifier: MIT
"""gRPC through the gateway (docs/reference.md "gRPC").

Two parts:
  - HTTP/2 clients (python3-h2 over raw sockets, test_h2.H2Client) in front of
    HTTP/1.1 upstreams that speak gRPC's framing by hand: trailers both ways,
    grpc-timeout, the grpc-status metric and access-log field. These need
    nothing but downstream HTTP/2.
  - python3-grpcio end to end: a real gRPC server (generic handlers, bytes in
    and out, no protoc) behind an upstream with `protocol: h2c` (and `h2`), and
    a grpcio channel to the gateway (plain h2c, and TLS with ALPN h2): the four
    call kinds, deadlines, statuses, metadata, large messages, gateway-made
    errors; plus a python3-h2 upstream for request trailers and the gateway's
    own deadline on an HTTP/2 upstream stream.
"""
import hashlib
import json
import socket
import struct
import threading
import time
from concurrent import futures

import grpc
import pytest

from test_h2 import H2Client, cert, start  # noqa: F401  (cert: the TLS fixture)
from tp_harness import T, Client, build_response, free_port, upstream_cfg, wait_until
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


def test_route_header_rules_apply_to_heads_not_trailers(h):
    """response_headers remove/set act on the head; a trailer of the same name passes."""
    def handler(req, conn):
        return chunked_with_trailers(frame(b"x"), [("grpc-status", "0"), ("x-internal", "trailer")],
                                     headers=[("X-Internal", "head")])

    up = h.upstream(handler)
    tp = start(h, {"upstreams": [upstream_cfg("u", up)],
                   "routes": [{"name": "g", "upstream": "u",
                               "response_headers": {"remove": ["x-internal"], "set": {"grpc-status": "13"}}}]})
    c = H2Client(tp.port)
    st = c.response(c.request("/pkg.Svc/M", method="POST", body=frame(b""), headers=GRPC_HEADERS))
    assert "x-internal" not in st["headers"] and st["headers"].get("grpc-status") == "13", st
    assert st.get("trailers") == {"grpc-status": "0", "x-internal": "trailer"}, st
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
    # a breaker that opens at the first failure: the deadlines must not open it
    tp = start(h, {"upstreams": [upstream_cfg("u", up, circuit_breaker={"consecutive_failures": 1,
                                                                       "open_for": "1h"})],
                   "routes": [{"name": "g", "match": {"path_prefix": "/"}, "upstream": "u"}]})
    c = H2Client(tp.port)
    for i in range(2):
        t0 = time.monotonic()
        st = c.response(c.request("/bad/slow", method="POST", body=frame(b"x"),
                                  headers=GRPC_HEADERS + [("grpc-timeout", "300m")]), T(20))
        waited = time.monotonic() - t0
        hs = st["headers"]
        assert hs[":status"] == "200" and hs["grpc-status"] == "4", st
        assert hs["grpc-message"] == "deadline exceeded (grpc-timeout)", hs
        assert waited < 25, "upstream_response (30 s) decided, not grpc-timeout"
    assert up.conns[0].requests[0].header("grpc-timeout") == "300m"
    wait_until(lambda: grpc_count(tp, 4) == 2, T(10), what="grpc_status 4 counted")
    # the endpoint still takes calls: its breaker heard of no failure
    st = c.response(c.request("/fine", method="POST", body=frame(b"x"), headers=GRPC_HEADERS))
    assert st["headers"][":status"] == "200" and st["data"] == b"good /fine", st
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


# --------------------------------------------------------------------------
# python3-grpcio end to end: protocol: h2c upstreams
# --------------------------------------------------------------------------

BIG = 16 << 20
CHANNEL_OPTS = [("grpc.max_receive_message_length", BIG), ("grpc.max_send_message_length", BIG),
                ("grpc.enable_retries", 0)]
SERVICES = ("test.Echo", "test.Limited", "test.Auth")
API_KEY = "ak-grpc-" + "7" * 24


def ident(b):
    return b


class GrpcServer:
    """A grpcio server with generic handlers (bytes in, bytes out) on 127.0.0.1:<ephemeral>."""

    def __init__(self, tls=None):
        self.seen = []  # (method, metadata dict, time_remaining) per call
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=CHANNEL_OPTS)
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary, ident, ident),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream, ident, ident),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream, ident, ident),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, ident, ident),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail, ident, ident),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow, ident, ident),
            "Meta": grpc.unary_unary_rpc_method_handler(self.meta, ident, ident),
            "Big": grpc.unary_unary_rpc_method_handler(self.big, ident, ident),
        }
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(s, handlers)
                                              for s in SERVICES])
        if tls:
            # tls: the directory of the test certificate (c.pem, k.pem)
            creds = grpc.ssl_server_credentials([((tls / "k.pem").read_bytes(), (tls / "c.pem").read_bytes())])
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        else:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def note(self, name, context):
        with self.lock:
            self.seen.append((name, dict(context.invocation_metadata()), context.time_remaining()))

    def unary(self, req, context):
        self.note("Unary", context)
        return b"echo:" + req

    def server_stream(self, req, context):
        n = int(req)
        for i in range(n):
            yield b"item-%d" % i

    def client_stream(self, it, context):
        parts = list(it)
        return b"%d messages, %d bytes" % (len(parts), sum(len(p) for p in parts))

    def bidi(self, it, context):
        for m in it:
            yield m.upper()

    def fail(self, req, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req.decode())

    def slow(self, req, context):
        self.note("Slow", context)
        done = threading.Event()
        context.add_callback(done.set)  # the call ended (deadline, cancel)
        done.wait(T(30))
        if not self.stop.is_set() and context.is_active():
            return b"late"
        return b""

    def meta(self, req, context):
        self.note("Meta", context)
        context.send_initial_metadata((("x-init", "1"),))
        context.set_trailing_metadata((("x-trail", "2"), ("x-trail-bin", b"\x00\x01\xff")))
        return b"meta"

    def big(self, req, context):
        return bytes(reversed(req)) + b"!" * (3 << 20)

    def close(self):
        self.stop.set()
        self.server.stop(grace=0).wait(T(10))


@pytest.fixture
def gsrv():
    s = GrpcServer()
    yield s
    s.close()


def gateway(h, srv, tls=None, **top):
    keys = h.tmp_path / "grpc-keys.yaml"
    keys.write_text(f"- name: client\n  sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}\n")
    ups = [{"name": "grpc", "protocol": "h2c", "endpoints": [{"address": f"127.0.0.1:{srv.port}"}]},
           {"name": "down", "protocol": "h2c", "endpoints": [{"address": f"127.0.0.1:{free_port()}"}]}]
    rts = [{"name": "echo", "match": {"path_prefix": "/test.Echo/"}, "upstream": "grpc"},
           {"name": "limited", "match": {"path_prefix": "/test.Limited/"}, "upstream": "grpc",
            "rate_limit": {"rate": "1/h", "burst": 1}},
           {"name": "authd", "match": {"path_prefix": "/test.Auth/"}, "upstream": "grpc",
            "auth": {"provider": "keys"}},
           {"name": "down", "match": {"path_prefix": "/test.Down/"}, "upstream": "down"}]
    cfg = {"upstreams": ups, "routes": rts, "auth": [{"name": "keys", "api_key": {"keys": str(keys)}}]}
    cfg.update(top)
    return start(h, cfg, tls=tls)


def channel(tp):
    return grpc.insecure_channel(f"127.0.0.1:{tp.port}", options=CHANNEL_OPTS)


def call(ch, method, kind="uu"):
    make = {"uu": ch.unary_unary, "us": ch.unary_stream, "su": ch.stream_unary, "ss": ch.stream_stream}[kind]
    return make(method, request_serializer=ident, response_deserializer=ident)


def rpc_error(fn, *args, **kw):
    with pytest.raises(grpc.RpcError) as ei:
        fn(*args, **kw)
    return ei.value


def test_four_kinds_of_call(h, gsrv):
    tp = gateway(h, gsrv)
    with channel(tp) as ch:
        assert call(ch, "/test.Echo/Unary")(b"hi", timeout=T(10)) == b"echo:hi"
        assert list(call(ch, "/test.Echo/ServerStream", "us")(b"50", timeout=T(10))) == \
            [b"item-%d" % i for i in range(50)]
        msgs = [b"x" * i for i in range(1, 40)]
        assert call(ch, "/test.Echo/ClientStream", "su")(iter(msgs), timeout=T(10)) == \
            b"39 messages, %d bytes" % sum(len(m) for m in msgs)
        assert list(call(ch, "/test.Echo/Bidi", "ss")(iter([b"a", b"bc", b"def"] * 20), timeout=T(10))) == \
            [b"A", b"BC", b"DEF"] * 20
        # many concurrent calls on one connection
        fut = [call(ch, "/test.Echo/Unary").future(b"%d" % i, timeout=T(20)) for i in range(64)]
        assert [f.result() for f in fut] == [b"echo:%d" % i for i in range(64)]
    wait_until(lambda: grpc_count(tp, 0, route="echo") == 68, T(10), what="68 OK calls counted")


def test_statuses_and_metadata_are_relayed(h, gsrv):
    tp = gateway(h, gsrv)
    with channel(tp) as ch:
        e = rpc_error(call(ch, "/test.Echo/Fail"), b"widget", timeout=T(10))
        assert e.code() == grpc.StatusCode.NOT_FOUND and e.details() == "no such thing: widget", e
        resp, c = call(ch, "/test.Echo/Meta").with_call(
            b"m", timeout=T(10), metadata=(("x-tenant", "t1"), ("x-blob-bin", b"\x00\x01\x02")))
        assert resp == b"meta"
        assert ("x-init", "1") in c.initial_metadata(), c.initial_metadata()
        tm = dict(c.trailing_metadata())
        assert tm.get("x-trail") == "2" and tm.get("x-trail-bin") == b"\x00\x01\xff", tm
        _, md, _ = [s for s in gsrv.seen if s[0] == "Meta"][-1]
        assert md.get("x-tenant") == "t1" and md.get("x-blob-bin") == b"\x00\x01\x02", md
        assert "x-request-id" in md and "x-forwarded-for" in md, md
    wait_until(lambda: grpc_count(tp, 5, route="echo") == 1, T(10), what="NOT_FOUND counted")
    assert grpc_count(tp, 0, route="echo") == 1


def test_large_messages_both_ways(h, gsrv):
    tp = gateway(h, gsrv)
    big = bytes(range(256)) * (12 << 10)  # 3 MiB
    with channel(tp) as ch:
        out = call(ch, "/test.Echo/Big")(big, timeout=T(60))
    assert out == bytes(reversed(big)) + b"!" * (3 << 20)


def test_client_deadline_reaches_the_upstream(h, gsrv):
    tp = gateway(h, gsrv)
    with channel(tp) as ch:
        e = rpc_error(call(ch, "/test.Echo/Slow"), b"x", timeout=0.5)
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
    # grpcio keeps grpc-timeout out of the metadata it shows; the server's
    # time_remaining() is what the header said
    name, _, remaining = gsrv.seen[-1]
    assert name == "Slow" and remaining is not None and remaining <= 0.5, gsrv.seen


def test_gateway_timeout_shorter_than_the_call(h, gsrv):
    tp = gateway(h, gsrv, timeouts={"upstream_response": "300ms"})
    with channel(tp) as ch:
        e = rpc_error(call(ch, "/test.Echo/Slow"), b"x", timeout=T(20))
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "upstream timeout" in e.details(), e
    wait_until(lambda: grpc_count(tp, 4, route="echo") == 1, T(10), what="DEADLINE_EXCEEDED counted")


def test_gateway_made_errors_in_grpc_form(h, gsrv):
    tp = gateway(h, gsrv)
    with channel(tp) as ch:
        e = rpc_error(call(ch, "/other.Svc/Unary"), b"x", timeout=T(10))
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED and e.details() == "no route", e
        e = rpc_error(call(ch, "/test.Down/Unary"), b"x", timeout=T(10))
        assert e.code() == grpc.StatusCode.UNAVAILABLE and "upstream connect failure" in e.details(), e
        assert call(ch, "/test.Limited/Unary")(b"1", timeout=T(10)) == b"echo:1"
        e = rpc_error(call(ch, "/test.Limited/Unary"), b"2", timeout=T(10))
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        e = rpc_error(call(ch, "/test.Auth/Unary"), b"x", timeout=T(10))
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED and e.details() == "missing credential", e
        assert call(ch, "/test.Auth/Unary")(b"k", timeout=T(10), metadata=(("x-api-key", API_KEY),)) == b"echo:k"
    m = metrics(tp)
    for route, code, n in (("unmatched", 12, 1), ("down", 14, 1), ("limited", 0, 1), ("limited", 8, 1),
                           ("authd", 16, 1), ("authd", 0, 1)):
        assert m.value("turnpike_grpc_responses_total", route=route, grpc_status=str(code)) == n, \
            (route, code, m.grep("grpc_responses"))


def test_grpc_over_tls_listener_with_alpn_h2(h, gsrv, cert):
    tls = {"certificates": [{"cert": str(cert / "c.pem"), "key": str(cert / "k.pem")}],
           "alpn": ["h2", "http/1.1"]}
    tp = gateway(h, gsrv, tls=tls)
    creds = grpc.ssl_channel_credentials(root_certificates=(cert / "c.pem").read_bytes())
    opts = CHANNEL_OPTS + [("grpc.ssl_target_name_override", "test.local")]
    with grpc.secure_channel(f"127.0.0.1:{tp.port}", creds, options=opts) as ch:
        assert call(ch, "/test.Echo/Unary")(b"tls", timeout=T(10)) == b"echo:tls"
        assert list(call(ch, "/test.Echo/Bidi", "ss")(iter([b"q"] * 10), timeout=T(10))) == [b"Q"] * 10
        e = rpc_error(call(ch, "/test.Echo/Fail"), b"t", timeout=T(10))
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    _, md, _ = gsrv.seen[-2] if gsrv.seen[-1][0] != "Unary" else gsrv.seen[-1]
    assert md.get("x-forwarded-proto") == "https", md


def test_http1_client_gets_the_grpc_trailers_in_the_last_chunk(h, gsrv):
    """An HTTP/2 upstream's trailers reach an HTTP/1.1 client in the last chunk of a
    response the gateway chunks itself."""
    tp = gateway(h, gsrv)
    c = Client(tp.port)
    c.request("POST", "/test.Echo/Unary", headers=[("Content-Type", "application/grpc"), ("TE", "trailers")],
              body=frame(b"h1"))
    r = c.read_response()
    assert r.status == 200 and r.framing == "chunked" and r.body == frame(b"echo:h1"), r
    assert b"grpc-status: 0" in [t.lower() for t in r.trailers], r.trailers
    c.close()
    wait_until(lambda: grpc_count(tp, 0, route="echo") == 1, T(10), what="the call counted")


class RawH2Upstream:
    """A minimal HTTP/2 server (python3-h2, prior knowledge, a thread per connection):
    records each request's headers, body and trailers, answers 200 with a trailer section."""

    def __init__(self):
        import h2.config
        import h2.connection
        import h2.events
        self.h2 = (h2.config, h2.connection, h2.events)
        self.requests = {}
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        self.lsock.settimeout(0.2)
        while not self.done.is_set():
            try:
                sock, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self.handle, args=(sock,), daemon=True).start()

    def handle(self, sock):
        h2config, h2conn, ev = self.h2
        sock.settimeout(0.2)
        conn = h2conn.H2Connection(config=h2config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        while not self.done.is_set():
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            for e in conn.receive_data(data):
                sid = getattr(e, "stream_id", None)
                if isinstance(e, ev.RequestReceived):
                    self.requests[(id(conn), sid)] = {"headers": dict(e.headers), "body": b"", "trailers": None}
                elif isinstance(e, ev.DataReceived):
                    self.requests[(id(conn), sid)]["body"] += e.data
                    conn.acknowledge_received_data(e.flow_controlled_length, sid)
                elif isinstance(e, ev.TrailersReceived):
                    self.requests[(id(conn), sid)]["trailers"] = dict(e.headers)
                elif isinstance(e, ev.StreamEnded):
                    if self.requests[(id(conn), sid)]["headers"][":path"].startswith("/raw/hang"):
                        continue  # never answered
                    conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                    conn.send_data(sid, frame(b"raw"))
                    conn.send_headers(sid, [("grpc-status", "0"), ("x-up-trailer", "yes")], end_stream=True)
            sock.sendall(conn.data_to_send())
        sock.close()

    def close(self):
        self.done.set()
        self.thread.join(T(10))
        self.lsock.close()


def test_request_trailers_reach_an_h2c_upstream(h):
    """HTTP/2 client request trailers end the upstream HTTP/2 stream as trailing HEADERS, and
    HTTP/1.1 client chunked trailers too (names lowercased)."""
    up = RawH2Upstream()
    try:
        tp = start(h, {"workers": 1, "upstreams": [{"name": "r", "protocol": "h2c",
                                      "endpoints": [{"address": f"127.0.0.1:{up.port}"}]}],
                       "routes": [{"name": "raw", "upstream": "r"}]})
        c = H2Client(tp.port)
        sid = c.request("/raw/h2", method="POST", body=b"abc", end=False, headers=GRPC_HEADERS)
        c.c.send_headers(sid, [("x-client-sum", "42")], end_stream=True)
        c.flush()
        st = c.response(sid)
        assert st["data"] == frame(b"raw") and st.get("trailers") == {"grpc-status": "0", "x-up-trailer": "yes"}, st
        c.close()
        cl = Client(tp.port)
        cl.send(b"POST /raw/h1 HTTP/1.1\r\nHost: t\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked"
                b"\r\n\r\n3\r\nxyz\r\n0\r\nX-Client-Sum: 7\r\n\r\n")
        r = cl.read_response()
        assert r.status == 200 and r.body == frame(b"raw"), r
        cl.close()
        got = {v["headers"][":path"]: v for v in up.requests.values()}
        assert got["/raw/h2"]["body"] == b"abc" and got["/raw/h2"]["trailers"] == {"x-client-sum": "42"}, got
        assert got["/raw/h1"]["body"] == b"xyz" and got["/raw/h1"]["trailers"] == {"x-client-sum": "7"}, got
    finally:
        up.close()


def test_grpc_timeout_bounds_a_call_to_an_h2c_upstream(h):
    """The gateway's own deadline on an HTTP/2 upstream stream: DEADLINE_EXCEEDED in gRPC form,
    the upstream stream cancelled, the connection kept for the next call."""
    up = RawH2Upstream()
    try:
        tp = start(h, {"workers": 1, "upstreams": [{"name": "r", "protocol": "h2c",
                                                    "endpoints": [{"address": f"127.0.0.1:{up.port}"}]}],
                       "routes": [{"name": "raw", "upstream": "r"}]})
        c = H2Client(tp.port)
        st = c.response(c.request("/raw/hang", method="POST", body=frame(b"x"),
                                  headers=GRPC_HEADERS + [("grpc-timeout", "300m")]), T(20))
        assert st["headers"][":status"] == "200" and st["headers"]["grpc-status"] == "4", st
        assert st["headers"]["grpc-message"] == "deadline exceeded (grpc-timeout)", st
        st = c.response(c.request("/raw/after", method="POST", body=frame(b"y"), headers=GRPC_HEADERS))
        assert st.get("trailers", {}).get("grpc-status") == "0", st
        c.close()
        wait_until(lambda: grpc_count(tp, 4, route="raw") == 1 and grpc_count(tp, 0, route="raw") == 1, T(10),
                   what="both calls counted")
    finally:
        up.close()


def test_grpc_to_a_tls_upstream_with_alpn_h2(h, cert):
    """protocol: h2: the gateway speaks HTTP/2 over TLS (ALPN h2) to a grpcio server with TLS."""
    srv = GrpcServer(tls=cert)
    try:
        tp = start(h, {"upstreams": [{"name": "s", "protocol": "h2", "tls": {"ca": str(cert / "c.pem"),
                                                                             "sni": "test.local"},
                                      "endpoints": [{"address": f"127.0.0.1:{srv.port}"}]}],
                       "routes": [{"name": "s", "upstream": "s"}]})
        with channel(tp) as ch:
            assert call(ch, "/test.Echo/Unary")(b"tls-up", timeout=T(10)) == b"echo:tls-up"
            assert list(call(ch, "/test.Echo/ServerStream", "us")(b"5", timeout=T(10))) == \
                [b"item-%d" % i for i in range(5)]
            e = rpc_error(call(ch, "/test.Echo/Fail"), b"z", timeout=T(10))
            assert e.code() == grpc.StatusCode.NOT_FOUND and e.details() == "no such thing: z", e
        wait_until(lambda: grpc_count(tp, 0, route="s") == 2 and grpc_count(tp, 5, route="s") == 1, T(10),
                   what="the calls counted")
    finally:
        srv.close()
