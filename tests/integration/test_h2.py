# SPDX-License-Identifier: MIT
"""Downstream HTTP/2 (docs/reference.md "HTTP/2"): clients speaking h2 with
prior knowledge on an h2c listener and h2 over TLS by ALPN, each stream
forwarded to an HTTP/1.1 upstream. python3-h2 over raw sockets, so tests see
every frame; nghttp/h2load for a real client's view."""
import json
import signal
import socket
import ssl
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from tp_harness import T, Turnpike, build_response, get, reserve_port, payload, sha256, upstream_cfg, wait_until
from tp_more import derive, metrics, reload

ROUTES = [{"match": {"path_prefix": "/"}, "upstream": "u"}]


class H2Turnpike(Turnpike):
    """A turnpike whose listener "public" has h2c (and optionally TLS)."""

    def __init__(self, tmp_path, config, name, tls=None):
        super().__init__(tmp_path, config, admin=True, name=name)
        self.tls = tls

    def _write_config(self):
        super()._write_config()
        lis = self.config["listeners"][0]
        if self.tls:
            lis["tls"] = self.tls
        else:
            lis["h2c"] = True
        self.config_path.write_text(json.dumps(self.config, indent=1) + "\n")


def start(h, config, tls=None):
    tp = H2Turnpike(h.tmp_path, config, name=f"h2tp{len(h.turnpikes)}", tls=tls)
    h.turnpikes.append(tp)
    return tp.start()


def cfg(up, **extra):
    c = {"upstreams": [upstream_cfg("u", up)], "routes": ROUTES}
    c.update(extra)
    return c


class H2Client:
    """A raw-socket HTTP/2 client (prior knowledge, or over <sock> given)."""

    def __init__(self, port=None, sock=None, window=None, validate=True, settings=None):
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=T(10))
        self.sock.settimeout(T(10))
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                           validate_outbound_headers=validate,
                                           normalize_outbound_headers=validate)
        self.c = h2.connection.H2Connection(config=config)
        self.c.initiate_connection()
        s = dict(settings or {})
        if window is not None:
            s[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = window
        if s:
            self.c.update_settings(s)
        self.streams = {}  # id -> {"headers", "data", "ended", "reset", "trailers"}
        self.goaway = None
        self.closed = False
        self.auto_ack = True
        self.flush()

    def flush(self):
        data = self.c.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, method="GET", body=None, headers=None, end=True, authority="test.local"):
        sid = self.c.get_next_available_stream_id()
        hs = [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority)]
        hs += list(headers or [])
        self.streams[sid] = {"headers": None, "data": b"", "ended": False, "reset": None, "interim": []}
        self.c.send_headers(sid, hs, end_stream=end and body is None)
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid, body, end=True):
        """Sends <body> as the flow-control windows allow (reading while it waits)."""
        off = 0
        while off < len(body):
            room = min(self.c.local_flow_control_window(sid), self.c.max_outbound_frame_size)
            if room <= 0:
                self.pump()
                continue
            self.c.send_data(sid, body[off:off + room])
            off += room
            self.flush()
        if end:
            self.c.end_stream(sid)
            self.flush()

    def pump(self, timeout=None):
        """Reads once and handles the events; returns them."""
        self.sock.settimeout(timeout or T(10))
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            raise ConnectionError("closed")
        events = self.c.receive_data(data)
        for ev in events:
            st = self.streams.get(getattr(ev, "stream_id", None) or 0)
            if isinstance(ev, h2.events.ResponseReceived):
                st["headers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                st["interim"].append(dict(ev.headers))
            elif isinstance(ev, h2.events.TrailersReceived):
                st["trailers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                st["data"] += ev.data
                if self.auto_ack:
                    self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                st["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                if st is not None:
                    st["reset"] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev
        self.flush()
        return events

    def wait(self, pred, timeout=None, what="condition"):
        deadline = time.monotonic() + (timeout or T(10))
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.pump(max(0.05, deadline - time.monotonic()))

    def response(self, sid, timeout=None):
        st = self.streams[sid]
        self.wait(lambda: st["ended"] or st["reset"] is not None, timeout, f"stream {sid}")
        return st

    def get(self, path, **kw):
        st = self.response(self.request(path, **kw))
        return int(st["headers"][":status"]), st["headers"], st["data"]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def test_h2c_get_and_fallback_to_http1(h):
    """A GET over h2c reaches the HTTP/1.1 upstream with :authority as Host; the
    same listener still serves HTTP/1.1."""
    up = h.upstream()
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    status, hs, body = c.get("/a/b?x=1", headers=[("x-custom", "v1"), ("cookie", "a=1"), ("cookie", "b=2")])
    assert status == 200 and body == b"GET /a/b?x=1", (status, body)
    assert hs["x-upstream"] == "up" and len(hs["x-request-id"]) == 32 and "date" in hs, hs
    req = up.heads[-1]
    assert req.header("host") == "test.local" and req.header("x-custom") == "v1", req
    assert req.header("cookie") == "a=1; b=2" and req.header("x-forwarded-proto") == "http", req
    assert req.header("content-length") is None and req.header("transfer-encoding") is None, req
    # several requests, one connection
    for i in range(5):
        assert c.get(f"/n{i}")[2] == f"GET /n{i}".encode()
    c.close()
    r = get(tp.port, "/plain")
    assert r.status == 200 and r.body == b"GET /plain"


def test_h2c_not_on_plain_listener_without_h2c(h):
    """Without h2c the preface is not HTTP/1: 400, and the connection closes."""
    up = h.upstream()
    tp = h.turnpike(cfg(up))
    s = socket.create_connection(("127.0.0.1", tp.port), timeout=T(5))
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 400"), "preface on a plain listener"
    s.close()


def test_bodies_both_ways_with_small_windows(h):
    """1 MiB up (with and without content-length) and 1 MiB down through a 4 KiB client window."""
    big = payload(1 << 20)

    def handler(req, conn):
        if req.method == "POST":
            return build_response(200, (sha256(req.body) + " " + (req.header("transfer-encoding") or "-")).encode())
        return build_response(200, big)

    up = h.upstream(handler)
    tp = start(h, cfg(up))
    c = H2Client(tp.port, window=4096)
    status, _, body = c.get("/down")
    assert status == 200 and body == big
    sid = c.request("/up", method="POST", body=big, headers=[("content-length", str(len(big)))])
    st = c.response(sid, T(30))
    assert st["data"] == (sha256(big) + " -").encode(), st["data"][:100]
    sid = c.request("/up", method="POST", body=big)  # no content-length: chunked to the upstream
    st = c.response(sid, T(30))
    assert st["data"] == (sha256(big) + " chunked").encode(), st["data"][:100]
    c.close()


def test_many_streams_one_slow(h):
    """Twenty streams on one connection; one waits on its upstream, the others complete."""
    gate = threading.Event()

    def handler(req, conn):
        if req.target == "/slow":
            gate.wait(T(20))
        return build_response(200, req.target.encode())

    up = h.upstream(handler)
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    slow = c.request("/slow")
    sids = [c.request(f"/fast/{i}") for i in range(20)]
    c.wait(lambda: all(c.streams[s]["ended"] for s in sids), T(20), "fast streams")
    assert all(c.streams[s]["data"] == f"/fast/{i}".encode() for i, s in enumerate(sids))
    assert not c.streams[slow]["ended"]
    gate.set()
    assert c.response(slow)["data"] == b"/slow"
    c.close()


def test_hop_by_hop_is_refused(h):
    """Connection-specific fields make a stream malformed: RST_STREAM PROTOCOL_ERROR,
    the connection and its other streams go on."""
    up = h.upstream()
    tp = start(h, cfg(up))
    c = H2Client(tp.port, validate=False)
    for name, value in (("connection", "close"), ("transfer-encoding", "chunked"), ("keep-alive", "1"),
                        ("upgrade", "websocket"), ("proxy-connection", "x"), ("te", "gzip")):
        st = c.response(c.request("/x", headers=[(name, value)]))
        assert st["reset"] == h2.errors.ErrorCodes.PROTOCOL_ERROR, (name, st)
    status, _, body = c.get("/ok", headers=[("te", "trailers")])
    assert status == 200 and body == b"GET /ok"
    assert len(up.heads) == 1, "no malformed request reached the upstream"
    c.close()


def test_methods_beyond_the_common_ones(h):
    """Every method llhttp knows is proxied over h2 as it is over HTTP/1; an extension
    method is a 400 on its stream, and so is PRI (HTTP/2's preface, which an HTTP/1
    upstream would take for the start of one). (A method outside the common seven once
    aborted the process: the name lookup walked past llhttp's method map.)"""
    up = h.upstream()
    tp = start(h, cfg(up))
    c = H2Client(tp.port, validate=False)
    for m in ("PROPFIND", "M-SEARCH", "FLUSH"):
        status, _, body = c.get("/m", method=m)
        assert status == 200 and body == m.encode() + b" /m", (m, status, body)
    for m in ("FOO", "BREW", "GETX", "PRI"):
        status, hs, body = c.get("/m", method=m)
        assert status == 400 and json.loads(body)["status"] == 400, (m, status, body)
    assert c.get("/after")[0] == 200, "the connection stays"
    assert tp.proc.poll() is None
    assert len(up.heads) == 4
    c.close()


def test_header_list_too_large_is_431(h):
    up = h.upstream()
    tp = start(h, cfg(up, limits={"max_header_bytes": 2048}))
    c = H2Client(tp.port)
    status, hs, body = c.get("/x", headers=[("x-big", "v" * 3000)])
    assert status == 431 and json.loads(body)["status"] == 431, (status, body)
    assert hs["content-type"] == "application/json"
    assert c.get("/y")[0] == 200, "the connection stays"
    assert len(up.heads) == 1
    c.close()


def test_gateway_answers_and_grpc_form(h):
    """404 as JSON through the same request layer; a gRPC request gets the trailers-only form."""
    up = h.upstream()
    tp = start(h, {"upstreams": [upstream_cfg("u", up)],
                   "routes": [{"match": {"path_prefix": "/api"}, "upstream": "u"}]})
    c = H2Client(tp.port)
    status, hs, body = c.get("/nowhere")
    assert status == 404 and json.loads(body) == {"error": "no route", "status": 404,
                                                   "request_id": hs["x-request-id"]}
    st = c.response(c.request("/nowhere", method="POST", body=b"\0\0\0\0\0",
                              headers=[("content-type", "application/grpc"), ("te", "trailers")]))
    assert st["headers"][":status"] == "200" and st["headers"]["grpc-status"] == "12", st
    assert st["headers"]["grpc-message"] == "no route" and st["data"] == b""
    c.close()


def test_too_many_streams_refused(h):
    """Streams beyond h2_max_concurrent_streams opened before the client saw our
    SETTINGS are refused (REFUSED_STREAM); the others are served."""
    gate = threading.Event()

    def handler(req, conn):
        gate.wait(T(20))
        return build_response(200, b"ok")

    up = h.upstream(handler)
    tp = start(h, cfg(up, limits={"h2_max_concurrent_streams": 3}))
    c = H2Client(tp.port)
    sids = [c.request(f"/s{i}") for i in range(6)]  # sent before reading anything
    c.wait(lambda: sum(c.streams[s]["reset"] is not None for s in sids) >= 3, T(10), "refusals")
    refused = [s for s in sids if c.streams[s]["reset"] is not None]
    assert all(c.streams[s]["reset"] == h2.errors.ErrorCodes.REFUSED_STREAM for s in refused)
    assert c.c.remote_settings.max_concurrent_streams == 3
    gate.set()
    for s in sids:
        if s not in refused:
            assert c.response(s)["data"] == b"ok"
    m = metrics(tp)
    assert m.value("turnpike_h2_resets_total", listener="public") >= 3
    c.close()


def test_rapid_reset_goaway_and_cancel(h):
    """More resets than h2_max_resets_per_s in a second: GOAWAY ENHANCE_YOUR_CALM,
    and the upstream requests of the reset streams are cancelled."""
    gate = threading.Event()

    def handler(req, conn):
        gate.wait(T(20))
        return build_response(200, b"late")

    up = h.upstream(handler)
    up.allow_errors = True
    tp = start(h, cfg(up, limits={"h2_max_resets_per_s": 5}))
    c = H2Client(tp.port)
    for i in range(20):
        sid = c.request(f"/r{i}")
        c.c.reset_stream(sid)
        c.flush()
    try:
        c.wait(lambda: c.goaway is not None, T(10), "GOAWAY")
    except ConnectionError:
        pass
    assert c.goaway is not None and c.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, c.goaway
    wait_until(lambda: metrics(tp).value("turnpike_h2_streams_active", listener="public") == 0, T(10),
               what="streams gone")
    m = metrics(tp)
    assert m.value("turnpike_h2_goaway_total", listener="public", reason="enhance_your_calm") == 1
    # the cancelled requests' upstream connections were closed, not kept for a response nobody wants
    gate.set()
    wait_until(lambda: up.closed_conns >= up.accepted > 0, T(10), what="upstream connections closed")
    c.close()


def test_drain_goaway_lets_streams_finish(h):
    gate = threading.Event()

    def handler(req, conn):
        gate.wait(T(20))
        return build_response(200, b"finished")

    up = h.upstream(handler)
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    sid = c.request("/long")
    up.wait_heads(1)
    tp.signal(signal.SIGTERM)
    c.wait(lambda: c.goaway is not None, T(10), "GOAWAY")
    assert c.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR and c.goaway.last_stream_id == sid
    gate.set()
    # python-h2 takes no frame after a GOAWAY: the rest is read raw (DATA is not compressed),
    # up to the close that follows the last stream
    raw = b""
    while True:
        data = c.sock.recv(65536)
        if not data:
            break
        raw += data
    assert b"finished" in raw, raw
    c.close()
    assert tp.wait(T(20)) == 0


def test_reload_during_open_streams(h):
    """A reload while streams are open: a stream keeps the rules it started with (the
    snapshot it took), a new stream on the same connection gets the new ones."""
    gate = threading.Event()

    def handler(req, conn):
        if req.target == "/slow":
            gate.wait(T(20))
        return build_response(200, req.target.encode())

    up = h.upstream(handler)

    def routes(tag):
        return [{"name": "all", "match": {"path_prefix": "/"}, "upstream": "u",
                 "response_headers": {"set": {"x-config": tag}}}]

    tp = start(h, {"upstreams": [upstream_cfg("u", up)], "routes": routes("old")})
    c = H2Client(tp.port)
    status, hs, _ = c.get("/before")
    assert status == 200 and hs["x-config"] == "old", hs
    slow = c.request("/slow")
    up.wait_heads(2)
    reload(tp, derive(tp, routes=routes("new")))
    status, hs, body = c.get("/after")
    assert status == 200 and hs["x-config"] == "new" and body == b"/after", (status, hs, body)
    assert not c.streams[slow]["ended"]
    gate.set()
    st = c.response(slow)
    assert st["headers"][":status"] == "200" and st["headers"]["x-config"] == "old", st["headers"]
    assert st["data"] == b"/slow"
    c.close()


def test_listener_removed_goaway_streams_finish(h):
    """A reload that removes a listener: its HTTP/2 connections get GOAWAY NO_ERROR with
    the last stream id, the open stream finishes, then the connection closes; the other
    listener goes on serving."""
    gate = threading.Event()

    def handler(req, conn):
        if req.target == "/slow":
            gate.wait(T(20))
        return build_response(200, b"done " + req.target.encode())

    up = h.upstream(handler)
    tp = start(h, cfg(up))
    public = tp.config["listeners"][0]
    p2 = reserve_port()
    reload(tp, derive(tp, listeners=[public, {"name": "extra", "address": f"127.0.0.1:{p2}", "h2c": True}]))
    c = H2Client(p2)
    assert c.get("/first")[0] == 200
    sid = c.request("/slow")
    up.wait_heads(2)
    reload(tp, derive(tp, listeners=[public]))
    c.wait(lambda: c.goaway is not None, T(10), "GOAWAY")
    assert c.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR and c.goaway.last_stream_id == sid, c.goaway
    gate.set()
    raw = b""  # python-h2 takes no frame after a GOAWAY: the rest is read raw up to the close
    while True:
        data = c.sock.recv(65536)
        if not data:
            break
        raw += data
    assert b"done /slow" in raw, raw
    c.close()
    c2 = H2Client(tp.port)
    assert c2.get("/still")[2] == b"done /still"
    c2.close()
    wait_until(lambda: metrics(tp).value("turnpike_h2_streams_active", listener="extra") in (0, None), T(10),
               what="no stream left on the removed listener")


def test_metrics_and_access_log(h, tmp_path):
    log = tmp_path / "access.log"
    up = h.upstream()
    tp = start(h, cfg(up, access_log={"path": str(log), "format": "json"}))
    c = H2Client(tp.port)
    assert c.get("/logged")[0] == 200
    sid = c.request("/open", end=False)
    wait_until(lambda: metrics(tp).value("turnpike_h2_streams_active", listener="public") == 1, T(10),
               what="one open stream")
    c.c.end_stream(sid)
    c.flush()
    c.response(sid)
    c.close()
    get(tp.port, "/h1")
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, T(10), what="log lines")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    by_path = {e["path"]: e for e in lines}
    assert by_path["/logged"]["protocol"] == "HTTP/2" and by_path["/logged"]["status"] == 200
    assert by_path["/h1"]["protocol"] == "HTTP/1.1"


def test_nghttp_and_h2load(h):
    up = h.upstream()
    tp = start(h, cfg(up))
    out = subprocess.run(["nghttp", "-n", "-s", f"http://127.0.0.1:{tp.port}/cli"], capture_output=True,
                         text=True, timeout=T(20))
    assert out.returncode == 0, out.stderr
    out = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "20", f"http://127.0.0.1:{tp.port}/load"],
                         capture_output=True, text=True, timeout=T(60))
    assert "400 succeeded" in out.stdout and "status codes: 400 2xx" in out.stdout, out.stdout


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("h2pki")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out",
                    "c.pem", "-days", "2", "-subj", "/CN=test.local", "-addext",
                    "subjectAltName=DNS:test.local,IP:127.0.0.1"], cwd=d, check=True, capture_output=True,
                   timeout=60)
    return d


def test_tls_alpn_h2_and_fallback(h, cert):
    up = h.upstream()
    tls = {"certificates": [{"cert": str(cert / "c.pem"), "key": str(cert / "k.pem")}],
           "alpn": ["h2", "http/1.1"]}
    tp = start(h, cfg(up), tls=tls)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", tp.port), timeout=T(10)),
                        server_hostname="test.local")
    assert s.selected_alpn_protocol() == "h2"
    c = H2Client(sock=s)
    status, _, body = c.get("/tls")
    assert status == 200 and body == b"GET /tls"
    assert up.heads[-1].header("x-forwarded-proto") == "https"
    big = payload(300000)
    st = c.response(c.request("/post", method="POST", body=big), T(30))
    assert st["headers"][":status"] == "200"
    c.close()
    # a client that offers only http/1.1 gets HTTP/1.1
    ctx1 = ssl.create_default_context()
    ctx1.check_hostname = False
    ctx1.verify_mode = ssl.CERT_NONE
    ctx1.set_alpn_protocols(["http/1.1"])
    s1 = ctx1.wrap_socket(socket.create_connection(("127.0.0.1", tp.port), timeout=T(10)),
                          server_hostname="test.local")
    assert s1.selected_alpn_protocol() == "http/1.1"
    s1.sendall(b"GET /one HTTP/1.1\r\nHost: test.local\r\n\r\n")
    assert s1.recv(100).startswith(b"HTTP/1.1 200")
    s1.close()
