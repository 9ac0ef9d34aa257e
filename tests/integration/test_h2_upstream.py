# SPDX-License-Identifier: MIT
"""Upstream HTTP/2 (docs/reference.md "upstreams[].protocol"): upstreams spoken
to with prior knowledge (h2c) or over TLS with ALPN h2, by HTTP/1.1 and HTTP/2
clients. The upstream is a python3-h2 server on raw sockets that records every
connection, request and reset, so the tests see what the gateway sent."""
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hyperframe.frame
import pytest

from test_h2 import H2Client, start
from tp_harness import Client, T, get, payload, sha256, wait_until
from tp_more import derive, metrics, reload

ROUTES = [{"match": {"path_prefix": "/"}, "upstream": "u"}]


class Resp:
    """What the test upstream answers to one request."""

    def __init__(self, status=200, body=b"", headers=None, trailers=None, hold=None, reset=None, length=True,
                 cut_after=None, close_after=None, close_after_end=False):
        self.status = status
        self.body = body
        self.headers = list(headers or [])
        self.trailers = trailers
        self.hold = hold  # threading.Event: answer once it is set
        self.reset = reset  # RST_STREAM with this code instead of an answer
        self.length = length  # send content-length
        self.cut_after = cut_after  # RST_STREAM INTERNAL_ERROR once this much body is sent
        self.close_after = close_after  # close the whole connection once this much body is sent
        self.close_after_end = close_after_end  # close the whole connection right after END_STREAM


def default_handler(req):
    if req["method"] == "POST":
        body = f"{sha256(req['body'])} {len(req['body'])}".encode()
    else:
        body = f"{req['method']} {req['path']}".encode()
    return Resp(200, body, headers=[("x-conn", str(req["conn"]))])


class H2Upstream:
    """An HTTP/2 server (python3-h2) on 127.0.0.1: prior knowledge, or TLS with <tls> (an SSLContext)."""

    def __init__(self, handler=None, max_streams=100, tls=None, port=0, goaway_first=None, stall_path=None,
                 big_window=False):
        self.handler = handler or default_handler
        self.max_streams = max_streams
        self.tls = tls
        self.goaway_first = goaway_first  # on connection 1: GOAWAY(last = its first stream) once this many came
        self.stall_path = stall_path  # a request to this path stops the connection's reading until unstall is set
        self.unstall = threading.Event()
        self.stalled = threading.Event()  # set once a connection stopped reading
        self.big_window = big_window  # announce 2^31-1 windows: only TCP stops the gateway's DATA
        self.heads = []  # paths of request heads received (before their body)
        self.lock = threading.Lock()
        self.conns = 0
        self.closed = 0  # connections the gateway (or we) closed
        self.requests = []  # dicts: conn, sid, method, path, headers, body
        self.resets = []  # (conn, sid, error code) received
        self.socks = []
        self.stopping = threading.Event()
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", port))
        self.ls.listen(128)
        self.ls.settimeout(0.1)
        self.port = self.ls.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.conns += 1
                cid = self.conns
                self.socks.append(s)
            t = threading.Thread(target=self._serve, args=(s, cid), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, s, cid):
        try:
            if self.tls:
                s.settimeout(T(5))
                s = self.tls.wrap_socket(s, server_side=True)
                with self.lock:
                    self.socks.append(s)
            self._loop(s, cid)
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            with self.lock:
                self.closed += 1
            try:
                s.close()
            except OSError:
                pass

    def _loop(self, s, cid):
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=cfg)
        init = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams}
        if self.big_window:
            init[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = 2**31 - 1
        conn.local_settings = h2.settings.Settings(client=False, initial_values=init)
        conn.initiate_connection()
        if self.big_window:
            conn.increment_flow_control_window(2**31 - 1 - 65535)
        s.sendall(conn.data_to_send())
        stall = False
        streams = {}  # sid -> request dict being received
        out = []  # [sid, Resp, sent bytes, headers sent]
        goaway_at = None
        goaway_sent = False
        first_sid = None
        s.settimeout(0.02)
        while not self.stopping.is_set():
            if stall and not self.unstall.is_set():
                self.stalled.set()
                time.sleep(0.02)
                continue
            try:
                data = s.recv(65536)
                if not data:
                    return
            except (socket.timeout, ssl.SSLWantReadError):
                data = None
            if data:
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        hd = dict(ev.headers)
                        streams[ev.stream_id] = {"conn": cid, "sid": ev.stream_id, "method": hd[":method"],
                                                 "path": hd[":path"], "headers": ev.headers, "body": b"",
                                                 "length": 0}
                        with self.lock:
                            self.heads.append(hd[":path"])
                        if hd[":path"] == self.stall_path:
                            stall = True
                        if first_sid is None:
                            first_sid = ev.stream_id
                    elif isinstance(ev, h2.events.DataReceived):
                        rq = streams[ev.stream_id]
                        rq["length"] += len(ev.data)
                        if rq["path"] != self.stall_path or not self.big_window:
                            rq["body"] += ev.data  # (megabytes pushed at a stalled reader are only counted)
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        streams[ev.stream_id]["trailers"] = ev.headers
                    elif isinstance(ev, h2.events.StreamEnded):
                        req = streams[ev.stream_id]
                        with self.lock:
                            self.requests.append(req)
                        if self.goaway_first and cid == 1 and ev.stream_id != first_sid:
                            continue  # above the GOAWAY's last stream id: never processed
                        out.append([ev.stream_id, self.handler(req), 0, False])
                        if self.goaway_first and cid == 1 and goaway_at is None:
                            goaway_at = time.monotonic()
                    elif isinstance(ev, h2.events.StreamReset):
                        with self.lock:
                            self.resets.append((cid, ev.stream_id, ev.error_code))
                        out = [o for o in out if o[0] != ev.stream_id]
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        s.sendall(conn.data_to_send())
                        return
            if goaway_at is not None and not goaway_sent:
                n = sum(1 for r in streams.values() if r["conn"] == cid)
                if n >= self.goaway_first or time.monotonic() - goaway_at > T(2):
                    # GOAWAY written by hand: python3-h2 refuses to send anything after its own
                    s.sendall(conn.data_to_send())
                    s.sendall(hyperframe.frame.GoAwayFrame(last_stream_id=first_sid, error_code=0).serialize())
                    goaway_sent = True
            for o in list(out):
                sid, resp, off, hdr_sent = o
                if resp.hold is not None and not resp.hold.is_set():
                    continue
                if resp.reset is not None:
                    conn.reset_stream(sid, error_code=resp.reset)
                    out.remove(o)
                    continue
                if not hdr_sent:
                    hs = [(":status", str(resp.status))] + resp.headers
                    if resp.length:
                        hs.append(("content-length", str(len(resp.body))))
                    end = not resp.body and resp.trailers is None
                    conn.send_headers(sid, hs, end_stream=end)
                    o[3] = True
                    if end:
                        out.remove(o)
                        continue
                limit = min(x for x in (len(resp.body), resp.cut_after, resp.close_after) if x is not None)
                while off < limit:
                    room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, limit - off)
                    if room <= 0:
                        break
                    conn.send_data(sid, resp.body[off:off + room])
                    off += room
                o[2] = off
                if off >= limit and resp.close_after is not None:
                    s.sendall(conn.data_to_send())
                    return
                if off >= limit and resp.cut_after is not None:
                    conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
                    out.remove(o)
                    continue
                if off >= len(resp.body):
                    if resp.trailers is not None:
                        conn.send_headers(sid, resp.trailers, end_stream=True)
                    else:
                        conn.end_stream(sid)
                    out.remove(o)
                    if resp.close_after_end:
                        s.sendall(conn.data_to_send())
                        return
            pending = conn.data_to_send()
            if pending:
                s.sendall(pending)
            if goaway_sent and not out:
                time.sleep(0.05)
                return

    def wait_requests(self, n, timeout=None):
        wait_until(lambda: len(self.requests) >= n, timeout or T(10), what=f"{n} upstream requests")

    def stop(self):
        self.stopping.set()
        try:
            self.ls.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(T(5))


@pytest.fixture
def ups():
    made = []

    def make(*a, **kw):
        u = H2Upstream(*a, **kw)
        made.append(u)
        return u

    yield make
    for u in made:
        u.stop()


def cfg(up, protocol="h2c", **extra):
    u = {"name": "u", "endpoints": [{"address": up.addr}], "protocol": protocol}
    u.update(extra.pop("upstream", {}))
    # one worker: each worker has its own upstream connections, and the tests count them
    c = {"workers": 1, "upstreams": [u], "routes": ROUTES}
    c.update(extra)
    return c


def parallel(fn, n):
    """Runs fn(i) in n threads; returns the results in order."""
    res = [None] * n

    def run(i):
        try:
            res[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            res[i] = e

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(T(60))
    return res


def test_h2c_get_post_both_clients(h, ups):
    """GET and POST through an h2c upstream from HTTP/1.1 and HTTP/2 clients: the
    upstream gets :authority, :path, the forwarding headers and no hop-by-hop field."""
    up = ups()
    tp = start(h, cfg(up))
    r = get(tp.port, "/a/b?x=1", headers=[("Connection", "keep-alive"), ("X-Custom", "v1")])
    assert r.status == 200 and r.body == b"GET /a/b?x=1", (r.status, r.body)
    req = up.requests[-1]
    hd = dict(req["headers"])
    assert hd[":authority"] == "test.local" and hd[":scheme"] == "http", hd
    assert hd["x-custom"] == "v1" and hd["x-forwarded-proto"] == "http" and len(hd["x-request-id"]) == 32, hd
    assert "connection" not in hd and "host" not in hd and hd.get("te") == "trailers", hd
    r = get(tp.port, "/p", method="POST", body=b"hello")
    assert r.status == 200 and r.body == f"{sha256(b'hello')} 5".encode(), r.body
    assert dict(up.requests[-1]["headers"])["content-length"] == "5"
    c = H2Client(tp.port)
    status, hs, body = c.get("/h2?y=2")
    assert status == 200 and body == b"GET /h2?y=2" and hs["x-conn"] == "1", (status, hs, body)
    c.close()
    assert up.conns == 1, "one upstream connection served everything"
    m = metrics(tp)
    assert m.value("turnpike_upstream_connections_opened_total", upstream="u", endpoint=up.addr) == 1


def test_large_bodies_both_ways(h, ups):
    """2 MiB up and 2 MiB down through 64 KiB windows, chunked and with content-length."""
    big = payload(2 << 20)

    def handler(req):
        if req["method"] == "POST":
            return Resp(200, f"{sha256(req['body'])} {len(req['body'])}".encode())
        return Resp(200, big, length=req["path"] != "/nolength")

    up = ups(handler)
    tp = start(h, cfg(up))
    r = get(tp.port, "/big")
    assert r.status == 200 and r.body == big and r.header("content-length") == str(len(big))
    r = get(tp.port, "/nolength")
    assert r.status == 200 and r.body == big and r.header("transfer-encoding") == "chunked"
    r = get(tp.port, "/up", method="POST", body=big)
    assert r.status == 200 and r.body == f"{sha256(big)} {len(big)}".encode(), r.body
    c = H2Client(tp.port, window=16384)
    status, _, body = c.get("/big")
    assert status == 200 and body == big
    sid = c.request("/up", method="POST", body=big)  # no content-length
    st = c.response(sid, T(60))
    assert st["data"] == f"{sha256(big)} {len(big)}".encode(), st["data"][:100]
    c.close()


def test_concurrent_streams_share_one_connection(h, ups):
    """Twenty concurrent requests ride one upstream connection when its limit allows."""
    hold = threading.Event()

    def handler(req):
        return Resp(200, req["path"].encode(), hold=hold)

    up = ups(handler, max_streams=100)
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    sids = [c.request(f"/s/{i}") for i in range(20)]
    up.wait_requests(20)
    assert metrics(tp).value("turnpike_upstream_h2_streams_active", upstream="u", endpoint=up.addr) == 20
    hold.set()
    c.wait(lambda: all(c.streams[s]["ended"] for s in sids), T(20), "20 streams")
    assert all(c.streams[s]["data"] == f"/s/{i}".encode() for i, s in enumerate(sids))
    c.close()
    assert up.conns == 1, up.conns
    m = metrics(tp)
    assert m.value("turnpike_upstream_h2_streams_active", upstream="u", endpoint=up.addr) == 0
    assert m.value("turnpike_upstream_pool_idle_connections", upstream="u", endpoint=up.addr) == 1
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=up.addr, code="2xx") == 20


def test_more_connections_when_the_limit_is_reached(h, ups):
    """The upstream allows 2 streams per connection: 10 concurrent requests open more connections."""
    hold = threading.Event()

    def handler(req):
        return Resp(200, req["path"].encode(), hold=hold)

    up = ups(handler, max_streams=2)
    tp = start(h, cfg(up))
    res = []
    t = threading.Thread(target=lambda: res.extend(parallel(lambda i: get(tp.port, f"/c/{i}"), 10)))
    t.start()
    up.wait_requests(10, T(20))
    per_conn = {}
    for rq in up.requests:
        per_conn[rq["conn"]] = per_conn.get(rq["conn"], 0) + 1
    hold.set()
    t.join(T(30))
    assert [r.status for r in res] == [200] * 10, res
    assert up.conns > 1 and max(per_conn.values()) <= 2, per_conn


def test_goaway_unprocessed_streams_are_retried(h, ups):
    """GOAWAY naming the first stream: the streams above it were not processed and
    go out again on a new connection, a POST too (RFC 9113 8.7)."""
    up = ups(goaway_first=5)
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    sids = [c.request(f"/g/{i}") for i in range(4)]
    sids.append(c.request("/post", method="POST"))  # no body: nothing of it was forwarded
    c.wait(lambda: all(c.streams[s]["ended"] or c.streams[s]["reset"] is not None for s in sids), T(20),
           "5 streams")
    for i, s in enumerate(sids):
        st = c.streams[s]
        assert st["headers"] and st["headers"][":status"] == "200", (i, st)
    assert c.streams[sids[-1]]["data"] == f"{sha256(b'')} 0".encode()
    c.close()
    assert up.conns >= 2, up.conns
    served = [rq for rq in up.requests if rq["conn"] == 1]
    # every request reached the upstream on connection 1; all but the first again later
    assert len(up.requests) >= 5 + len(served) - 1


def test_rst_stream_fails_that_stream_only(h, ups):
    """RST_STREAM on one stream: 502 there, the other streams on the connection succeed."""
    hold = threading.Event()

    def handler(req):
        if req["path"] == "/reset":
            return Resp(reset=h2.errors.ErrorCodes.INTERNAL_ERROR, hold=hold)
        return Resp(200, req["path"].encode(), hold=hold)

    up = ups(handler)
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    sids = [c.request(f"/ok/{i}") for i in range(3)]
    bad = c.request("/reset")
    sids += [c.request(f"/ok/{i}") for i in range(3, 6)]
    up.wait_requests(7)
    hold.set()
    c.wait(lambda: all(c.streams[s]["ended"] for s in sids + [bad]), T(20), "streams")
    assert c.streams[bad]["headers"][":status"] == "502", c.streams[bad]
    assert all(c.streams[s]["headers"][":status"] == "200" for s in sids)
    c.close()
    assert up.conns == 1
    assert sum(1 for rq in up.requests if rq["path"] == "/reset") == 1, "a reset stream is not retried"


def test_upstream_dies_then_recovers(h, ups):
    """The upstream goes away: 502; it comes back on the same port: 200 again."""
    up = ups()
    tp = start(h, cfg(up))
    assert get(tp.port, "/one").status == 200
    port = up.port
    up.stop()
    r = get(tp.port, "/two")
    assert r.status == 502, (r.status, r.body)
    up2 = ups(port=port)
    wait_until(lambda: get(tp.port, "/three").status == 200, T(10), what="recovery")
    assert up2.requests[-1]["path"] == "/three"


def test_upstream_response_timeout_is_504_and_cancels(h, ups):
    """A stream without an answer for upstream_response: 504 on it, RST_STREAM CANCEL
    to the upstream, the connection and its other streams go on."""
    never = threading.Event()

    def handler(req):
        if req["path"] == "/slow":
            return Resp(200, b"late", hold=never)
        return Resp(200, req["path"].encode())

    up = ups(handler)
    tp = start(h, cfg(up, timeouts={"upstream_response": "500ms"}))
    c = H2Client(tp.port)
    slow = c.request("/slow")
    up.wait_requests(1)
    assert c.get("/fast")[0] == 200
    st = c.response(slow, T(10))
    assert st["headers"][":status"] == "504", st
    wait_until(lambda: any(code == h2.errors.ErrorCodes.CANCEL for _, _, code in up.resets), T(5),
               what="RST_STREAM CANCEL at the upstream")
    assert c.get("/after")[0] == 200
    assert up.conns == 1
    c.close()
    never.set()


def test_client_cancel_resets_the_upstream_stream(h, ups):
    """The client resets its stream (and an HTTP/1.1 client goes away): the upstream
    stream gets RST_STREAM CANCEL, the pooled connection serves the next request."""
    never = threading.Event()

    def handler(req):
        if req["path"].startswith("/hang"):
            return Resp(200, b"x", hold=never)
        return Resp(200, req["path"].encode())

    up = ups(handler)
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    sid = c.request("/hang/1")
    up.wait_requests(1)
    c.c.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
    c.flush()
    wait_until(lambda: len(up.resets) >= 1, T(5), what="upstream reset")
    assert up.resets[0][2] == h2.errors.ErrorCodes.CANCEL, up.resets
    cl = Client(tp.port)
    cl.request("GET", "/hang/2")
    up.wait_requests(2)
    # a reset (a FIN alone still gets its response: the client may have half-closed)
    cl.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cl.close()
    wait_until(lambda: len(up.resets) >= 2, T(5), what="second upstream reset")
    assert c.get("/next")[0] == 200
    assert up.conns == 1, "the connection stays pooled"
    c.close()
    never.set()


def test_response_trailers_reach_clients(h, ups):
    """Trailers after DATA reach an HTTP/2 client as trailers and an HTTP/1.1 client in
    the last chunk; a trailers-only answer (gRPC style) is relayed as a head."""

    def handler(req):
        if req["path"] == "/only":
            return Resp(200, b"", headers=[("content-type", "application/grpc"), ("grpc-status", "5")],
                        length=False)
        return Resp(200, b"body!", headers=[("content-type", "application/grpc")], length=False,
                    trailers=[("grpc-status", "0"), ("grpc-message", "ok")])

    up = ups(handler)
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    st = c.response(c.request("/t", headers=[("te", "trailers")]))
    assert st["data"] == b"body!" and st.get("trailers") == {"grpc-status": "0", "grpc-message": "ok"}, st
    st = c.response(c.request("/only"))
    assert st["headers"]["grpc-status"] == "5" and st["data"] == b"", st
    c.close()
    cl = Client(tp.port)
    cl.send(b"GET /t HTTP/1.1\r\nHost: test.local\r\nTE: trailers\r\n\r\n")
    head = cl.read_until(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    rest = cl.read_until(b"\r\n0\r\n") + b"|" + cl.read_until(b"\r\n\r\n")
    assert rest == b"5\r\nbody!|grpc-status: 0\r\ngrpc-message: ok", rest
    cl.close()


def test_health_check_speaks_h2c(h, ups):
    """An HTTP health check of an h2c upstream speaks HTTP/2: 503 from /hc marks it down, 200 up."""
    state = {"ok": True}

    def handler(req):
        if req["path"] == "/hc":
            return Resp(200 if state["ok"] else 503, b"hc")
        return Resp(200, b"app")

    up = ups(handler)
    hc = {"path": "/hc", "interval": "100ms", "timeout": "1s", "unhealthy_after": 2, "healthy_after": 2}
    tp = start(h, cfg(up, upstream={"health_check": hc}))
    wait_until(lambda: any(rq["path"] == "/hc" for rq in up.requests), T(10), what="a health check")

    def healthy():
        return metrics(tp).value("turnpike_endpoint_healthy", upstream="u", endpoint=up.addr)

    assert healthy() == 1
    state["ok"] = False
    wait_until(lambda: healthy() == 0, T(10), what="unhealthy")
    assert get(tp.port, "/x").status == 503
    state["ok"] = True
    wait_until(lambda: healthy() == 1, T(10), what="healthy again")
    assert get(tp.port, "/x").status == 200
    hc_req = [rq for rq in up.requests if rq["path"] == "/hc"][0]
    assert dict(hc_req["headers"])["user-agent"] == "turnpike-health-check"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=turnpike test ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "a.key", "-out", "a.csr", "-subj", "/CN=a.test")
    (d / "a.ext").write_text("subjectAltName=DNS:a.test,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "a.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "a.pem",
        "-days", "2", "-extfile", "a.ext")
    return d


def tls_ctx(pki, alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "a.pem"), str(pki / "a.key"))
    ctx.set_alpn_protocols(alpn)
    return ctx


def test_h2_over_tls_with_alpn(h, ups, pki):
    """protocol: h2 negotiates h2 by ALPN and verifies the certificate; streams share the connection."""
    big = payload(1 << 20)

    def handler(req):
        if req["method"] == "POST":
            return Resp(200, f"{sha256(req['body'])} {len(req['body'])}".encode())
        return Resp(200, big)

    up = ups(handler, tls=tls_ctx(pki, ["h2"]))
    hc = {"path": "/hc", "interval": "100ms", "unhealthy_after": 1}
    tp = start(h, cfg(up, "h2", upstream={"tls": {"ca": str(pki / "ca.pem"), "sni": "a.test"}, "health_check": hc}))
    # the health check speaks HTTP/2 over TLS too
    wait_until(lambda: any(dict(rq["headers"]).get("user-agent") == "turnpike-health-check" for rq in up.requests),
               T(10), what="an HTTP/2 health check over TLS")
    assert metrics(tp).value("turnpike_endpoint_healthy", upstream="u", endpoint=up.addr) == 1
    conns0 = up.conns
    r = get(tp.port, "/x")
    assert r.status == 200 and r.body == big
    assert dict(up.requests[-1]["headers"])[":scheme"] == "https"
    res = parallel(lambda i: get(tp.port, "/p", method="POST", body=big[: 100000 + i]), 4)
    assert all(r.status == 200 for r in res), res
    # one connection for the requests (the health checks open their own)
    assert len({rq["conn"] for rq in up.requests if rq["path"] != "/hc"}) == 1, conns0


def test_h2_without_alpn_h2_is_502(h, ups, pki):
    """An upstream whose TLS handshake does not choose h2: 502, with a log line that says so."""
    up = ups(tls=tls_ctx(pki, ["http/1.1"]))
    tp = start(h, cfg(up, "h2", upstream={"tls": {"ca": str(pki / "ca.pem"), "sni": "a.test"}}))
    r = get(tp.port, "/x")
    assert r.status == 502, (r.status, r.body)
    wait_until(lambda: "did not select h2 by ALPN" in tp.stderr(), T(5), what="the log line")


def test_config_protocol_errors(tmp_path):
    """protocol: an unknown value, and h2c with tls, are refused with file:line:column."""
    from tp_harness import BIN

    conf = tmp_path / "t.yaml"
    conf.write_text("listeners: [{address: 127.0.0.1:1}]\n"
                    "upstreams:\n"
                    "  - name: u\n"
                    "    protocol: h3\n"
                    "    endpoints: [{address: 127.0.0.1:2}]\n"
                    "  - name: v\n"
                    "    protocol: h2c\n"
                    "    tls: {verify: false}\n"
                    "    endpoints: [{address: 127.0.0.1:3}]\n"
                    "routes: [{match: {path_prefix: /}, upstream: u}]\n")
    p = subprocess.run([BIN, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=T(20))
    assert p.returncode != 0, p.stderr
    assert f"{conf}:4:15: upstreams[0].protocol" in p.stderr, p.stderr
    assert f"{conf}:8:5: upstreams[1].tls: h2c is HTTP/2 in clear text" in p.stderr, p.stderr
    conf.write_text("listeners: [{address: 127.0.0.1:1}]\n"
                    "upstreams: [{name: u, protocol: h2, endpoints: [{address: 127.0.0.1:2}]}]\n"
                    "routes: [{match: {path_prefix: /}, upstream: u}]\n")
    p = subprocess.run([BIN, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=T(20))
    assert p.returncode == 0, p.stderr


def test_admin_config_shows_protocol(h, ups):
    up = ups()
    tp = start(h, cfg(up))
    st, body = tp.admin_get("/config")
    assert st == 200 and b'"protocol":"h2c"' in body, body[:400]


def test_reload_keeps_inflight_stream_and_closes_retired_endpoint(h, ups):
    """A stream in flight at a reload finishes on the endpoint it started on; the
    reload moved the upstream to another endpoint, whose requests go there; the old
    endpoint's connection closes once its stream is done."""
    hold = threading.Event()

    def slow(req):
        return Resp(200, b"old " + req["path"].encode(), hold=hold if req["path"] == "/slow" else None)

    a = ups(slow)
    b = ups()
    tp = start(h, cfg(a))
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", get(tp.port, "/slow")), daemon=True)
    t.start()
    a.wait_requests(1)
    reload(tp, derive(tp, upstreams=[{"name": "u", "protocol": "h2c", "endpoints": [{"address": b.addr}]}]))
    r = get(tp.port, "/new")
    assert r.status == 200 and r.body == b"GET /new", r.body
    assert a.closed == 0, "the connection with a stream in flight stays"
    hold.set()
    t.join(T(20))
    assert result["r"].status == 200 and result["r"].body == b"old /slow", result
    wait_until(lambda: a.closed == a.conns == 1, T(10), what="the retired endpoint's connection to close")


def test_drain_lets_streams_finish(h, ups):
    """SIGTERM with streams in flight: they complete, then the gateway exits cleanly
    (the harness checks exit code 0 and no sanitizer report, leaks included)."""
    hold = threading.Event()
    up = ups(lambda req: Resp(200, req["path"].encode(), hold=hold))
    tp = start(h, cfg(up))
    res = []
    t = threading.Thread(target=lambda: res.extend(parallel(lambda i: get(tp.port, f"/d/{i}"), 4)), daemon=True)
    t.start()
    up.wait_requests(4)
    tp.signal(signal.SIGTERM)
    time.sleep(0.2)  # the drain has begun (nothing to wait for: the streams are held)
    hold.set()
    t.join(T(20))
    assert [r.status for r in res] == [200] * 4, res
    assert tp.wait() == 0
    wait_until(lambda: up.closed == up.conns, T(10), what="upstream connections closed")


def test_request_trailers_reach_the_upstream(h, ups):
    """An HTTP/2 client's request trailers go to the h2c upstream as trailers, after the body."""
    up = ups()
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    body = payload(100000)
    sid = c.request("/tr", method="POST", body=body, end=False, headers=[("te", "trailers")])
    c.c.send_headers(sid, [("x-checksum", "abc"), ("grpc-timeout", "1S")], end_stream=True)
    c.flush()
    st = c.response(sid)
    assert st["headers"][":status"] == "200" and st["data"] == f"{sha256(body)} {len(body)}".encode(), st
    req = up.requests[-1]
    assert req.get("trailers") == [("x-checksum", "abc"), ("grpc-timeout", "1S")], req.get("trailers")
    c.close()


def test_no_settings_is_a_connect_timeout(h):
    """An upstream that accepts but never speaks HTTP/2 (no SETTINGS): upstream_connect
    passes, 502, and the request is not left hanging."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    addr = f"127.0.0.1:{ls.getsockname()[1]}"
    try:
        tp = start(h, {"workers": 1, "timeouts": {"upstream_connect": "300ms"},
                       "upstreams": [{"name": "u", "protocol": "h2c", "endpoints": [{"address": addr}]}],
                       "routes": ROUTES})
        r = get(tp.port, "/x")
        assert r.status == 502 and b"connect" in r.body, (r.status, r.body)
        m = metrics(tp)
        assert m.value("turnpike_upstream_connect_failures_total", upstream="u", endpoint=addr) == 1
    finally:
        ls.close()


def test_upstream_fails_mid_response(h, ups):
    """After the head and part of the body: a reset stream cuts that response short (the
    HTTP/2 client's stream is reset, the HTTP/1.1 client's connection closed); a closed
    connection does the same to every response on it; the next request succeeds."""
    big = payload(300000)

    def handler(req):
        if req["path"] == "/cut":
            return Resp(200, big, cut_after=100000)
        if req["path"] == "/die":
            return Resp(200, big, close_after=50000)
        return Resp(200, b"ok")

    up = ups(handler)
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    st = c.response(c.request("/cut"))
    assert st["headers"][":status"] == "200" and st["reset"] is not None and len(st["data"]) < len(big), st["reset"]
    assert c.get("/fine")[0] == 200
    st = c.response(c.request("/die"))
    assert st["reset"] is not None and len(st["data"]) < len(big)
    assert c.get("/fine2")[0] == 200
    c.close()
    cl = Client(tp.port)
    cl.send(b"GET /cut HTTP/1.1\r\nHost: test.local\r\n\r\n")
    head = cl.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    rest = cl.read_to_eof()
    assert len(rest) < len(big), len(rest)
    cl.close()
    assert get(tp.port, "/after").status == 200
    assert up.conns >= 2  # the connection that died was replaced


def test_keepalive_bounds_idle_connections(h, ups):
    """keepalive: 1 keeps one connection without a stream per endpoint; the others
    opened for a burst close once their streams are done."""
    hold = threading.Event()
    up = ups(lambda req: Resp(200, req["path"].encode(), hold=hold), max_streams=1)
    tp = start(h, cfg(up, upstream={"keepalive": 1}))
    res = []
    t = threading.Thread(target=lambda: res.extend(parallel(lambda i: get(tp.port, f"/k/{i}"), 3)), daemon=True)
    t.start()
    up.wait_requests(3)
    assert up.conns == 3
    hold.set()
    t.join(T(20))
    assert [r.status for r in res] == [200] * 3, res
    wait_until(lambda: up.closed == 2, T(10), what="two connections to close")
    assert metrics(tp).value("turnpike_upstream_pool_idle_connections", upstream="u", endpoint=up.addr) == 1
    assert get(tp.port, "/again").status == 200 and up.conns == 3


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) not installed")
def test_many_clients_both_protocols(h, ups):
    """h2load (4 connections x 20 streams) and an HTTP/1.1 client at once, through two
    workers, to an upstream that allows 5 streams per connection: every request succeeds."""
    up = ups(lambda req: Resp(200, payload(20000) if req["path"].endswith("big") else b"ok"), max_streams=5)
    tp = start(h, cfg(up, workers=2))
    res = {}

    def h1():
        res["h1"] = [get(tp.port, f"/h1/{i}{'big' if i % 3 == 0 else ''}").status for i in range(60)]

    t = threading.Thread(target=h1)
    t.start()
    p = subprocess.run(["h2load", "-n", "1000", "-c", "4", "-m", "20", f"http://127.0.0.1:{tp.port}/load/big"],
                       capture_output=True, timeout=T(120), text=True)
    t.join(T(60))
    assert "1000 succeeded" in p.stdout, p.stdout[-800:]
    assert res["h1"] == [200] * 60
    assert up.conns >= 2


def wait_stuck(progress, timeout=None, what="progress to stop"):
    """Waits until progress() (a byte count) stays the same over a few polls: the
    data path is blocked end to end."""
    deadline = time.monotonic() + (timeout or T(20))
    last, same = -1, 0
    while time.monotonic() < deadline:
        now = progress()
        same = same + 1 if now == last else 0
        if same >= 5:
            return
        last = now
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Sender:
    """Sends bytes from gen() on <sock> in a thread, counting them, until done or an error."""

    def __init__(self, sock, gen):
        self.sock, self.sent, self.error, self.done = sock, 0, None, False
        self.t = threading.Thread(target=self._run, args=(gen,), daemon=True)
        self.t.start()

    def _run(self, gen):
        try:
            for piece in gen():
                self.sock.sendall(piece)
                self.sent += len(piece)
            self.done = True
        except OSError as e:
            self.error = e


def test_stream_fails_while_a_request_body_frame_waits(h, ups):
    """A large POST to an upstream that stops reading (windows wide open, so TCP is
    what stops the gateway): a DATA frame waits in the gateway when upstream_response
    passes (504). Once the upstream reads again the gateway sends what it kept, resets
    the stream, and the connection serves the next request. (A client that goes away
    meanwhile is not noticed until its body moves again: the gateway reads no more of
    it while the upstream takes nothing.)"""
    up = ups(stall_path="/stall", big_window=True)
    tp = start(h, cfg(up, limits={"max_body_bytes": "2GiB"}, timeouts={"upstream_response": "1s"}))
    total = 1 << 30
    cl = Client(tp.port, timeout=T(30))
    cl.send(f"POST /stall HTTP/1.1\r\nHost: test.local\r\nContent-Length: {total}\r\n\r\n".encode())
    chunk = payload(1 << 16)
    snd = Sender(cl.sock, lambda: (chunk for _ in range(total // len(chunk))))
    wait_until(up.stalled.is_set, T(10), what="the upstream to stop reading")
    r = cl.read_response("POST")
    assert r.status == 504, (r.status, r.body)
    assert snd.error is None and not snd.done
    up.unstall.set()
    wait_until(lambda: any(code == h2.errors.ErrorCodes.CANCEL for _, _, code in up.resets), T(20),
               what="RST_STREAM CANCEL at the upstream")
    cl.close()
    r = get(tp.port, "/next")
    assert r.status == 200 and r.body == b"GET /next", (r.status, r.body)
    assert up.conns == 1, up.conns


def test_retry_on_status_closing_the_connection(h, ups):
    """A 503 retried (retries.on [503]) with keepalive 0: the retry ends the stream and
    closes its connection while its response head is being handled; the retry, on a
    new connection, answers."""
    seen = []

    def handler(req):
        seen.append(req["path"])
        return Resp(503, b"busy") if len(seen) == 1 else Resp(200, b"fine")

    up = ups(handler)
    tp = start(h, cfg(up, upstream={"keepalive": 0, "retries": {"attempts": 1, "on": [503]}}))
    r = get(tp.port, "/r")
    assert r.status == 200 and r.body == b"fine", (r.status, r.body)
    assert len(seen) == 2 and up.conns == 2, (seen, up.conns)
    assert get(tp.port, "/again").status == 200


def test_complete_response_survives_the_upstream_closing(h, ups):
    """The upstream sends a whole response, then closes its connection, while part of
    the body still waits in the gateway for a client that does not read (an HTTP/2
    client with a 16 KiB window): the client then gets every byte, no reset."""
    big = payload(120000)
    up = ups(lambda req: Resp(200, big, close_after_end=True))
    tp = start(h, cfg(up))
    c = H2Client(tp.port, window=16384)
    sid = c.request("/big")
    wait_until(lambda: up.closed >= 1, T(10), what="the upstream to close its connection")
    st = c.response(sid, T(20))
    assert st["headers"][":status"] == "200" and st["reset"] is None, (st["headers"], st["reset"])
    assert len(st["data"]) == len(big) and st["data"] == big, len(st["data"])
    assert c.get("/next")[0] == 200
    c.close()


def test_max_concurrent_streams_zero_is_refused(h, ups):
    """An upstream announcing SETTINGS_MAX_CONCURRENT_STREAMS 0: the request fails (502)
    in bounded time, having opened at most two connections (the refusal's one retry)."""
    up = ups(max_streams=0)
    tp = start(h, cfg(up, timeouts={"upstream_connect": "2s", "upstream_response": "5s"}))
    r = get(tp.port, "/z")
    assert r.status == 502, (r.status, r.body)
    assert up.conns <= 2, up.conns
    assert not up.requests


def test_goaway_refused_streams_share_the_new_connection(h, ups):
    """GOAWAY refusing eleven streams: their retries ride one or two new connections,
    not one each."""
    up = ups(goaway_first=12)
    tp = start(h, cfg(up))
    c = H2Client(tp.port)
    sids = [c.request(f"/g/{i}") for i in range(12)]
    c.wait(lambda: all(c.streams[s]["ended"] or c.streams[s]["reset"] is not None for s in sids), T(20),
           "12 streams")
    assert all(c.streams[s]["headers"][":status"] == "200" for s in sids), [c.streams[s] for s in sids]
    c.close()
    assert 2 <= up.conns <= 3, up.conns


def test_chunked_upload_of_many_chunks_to_a_slow_upstream(h, ups):
    """A chunked upload of 2500-byte chunks (each over the copy threshold) to an
    upstream that stops reading for a while: no 400, the upstream gets every byte."""
    up = ups(stall_path="/chunked")
    tp = start(h, cfg(up))
    body = payload(800 * 2500)
    cl = Client(tp.port)
    cl.send(b"POST /chunked HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n")

    def gen():
        for i in range(0, len(body), 2500):
            yield b"9c4\r\n" + body[i:i + 2500] + b"\r\n"
        yield b"0\r\n\r\n"

    snd = Sender(cl.sock, gen)
    wait_until(up.stalled.is_set, T(10), what="the upstream to stop reading")
    wait_stuck(lambda: snd.sent, what="the client's body to back up")
    up.unstall.set()
    r = cl.read_response("POST")
    cl.close()
    assert snd.error is None, snd.error
    assert r.status == 200 and r.body == f"{sha256(body)} {len(body)}".encode(), (r.status, r.body[:200])
