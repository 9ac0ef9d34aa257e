# SPDX-License-Identifier: MIT
"""Upgrade tunnels (routes[].upgrade, timeouts.tunnel_idle): a request with an Upgrade
token the route lists is forwarded with Upgrade and Connection: upgrade; a 101 from the
upstream turns both connections into one byte tunnel (half-close passed on, pipelined
bytes kept, backpressure instead of buffering); any other answer leaves the connection
HTTP. Tunnels survive reloads, end with the drain, count against
max_concurrent_requests, show in /metrics and get one access-log line when they end.

Two kinds of upstream: a WebSocket echo server (the `websockets` package, asyncio in a
thread) for real WebSocket clients, and tp_harness.Upstream with a handler that answers
101 by hand and then works on the raw socket, for byte-exact checks."""
import asyncio
import hashlib
import json
import select
import signal
import socket
import ssl
import threading
import time

import websockets
from websockets.exceptions import ConnectionClosed

from test_tls import client_ctx, pki, start_tls  # noqa: F401 - pki is a fixture
from tp_harness import (T, Client, Closed, assert_gateway_error, build_request, build_response, get, has_token, parse_head,
                        payload, raise_nofile, sha256, upstream_cfg, wait_until)
from tp_hostile import asan_env, vm_rss_kib
from tp_more import derive, env_turnpike, metrics, reload, wait_metric

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
WS_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# --------------------------------------------------------------------------
# upstreams
# --------------------------------------------------------------------------


class WsEcho:
    """A WebSocket echo server on 127.0.0.1:<ephemeral port> (asyncio in its own thread).
    Records the path and headers of every handshake; counts open and opened sessions.
    Has what the harness teardown expects of an upstream (release, stop, errors)."""

    def __init__(self, ssl_ctx=None, name="ws"):
        self.name = name
        self.heads = []  # (path, websockets Headers) per handshake
        self.active = 0
        self.opened = 0
        self.errors = []
        self.allow_errors = False
        self.release = threading.Event()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ssl_ctx, ready), daemon=True)
        self.thread.start()
        assert ready.wait(T(10)), "WebSocket echo server did not start"
        self.addr = f"127.0.0.1:{self.port}"

    def _run(self, ssl_ctx, ready):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = await websockets.serve(self._echo, "127.0.0.1", 0, ssl=ssl_ctx, max_size=None,
                                                 compression=None, ping_interval=None, close_timeout=1,
                                                 process_request=self._record, backlog=2048)
            self.port = self.server.sockets[0].getsockname()[1]

        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    async def _record(self, path, headers):
        self.heads.append((path, headers))
        return None  # go on with the handshake

    async def _echo(self, ws, path=None):
        self.active += 1
        self.opened += 1
        try:
            async for msg in ws:
                await ws.send(msg)
        except ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001 - recorded, teardown checks it
            self.errors.append(e)
        finally:
            self.active -= 1

    def stop(self):
        async def close():
            self.server.close()
            await self.server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(T(10))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(T(10))


def ws_echo(h, **kw):
    up = WsEcho(**kw)
    h.upstreams.append(up)
    return up


def echo_body(conn):
    """After the 101: sends back every byte until the client's EOF."""
    while True:
        if conn.buf:
            data = bytes(conn.buf)
            conn.buf.clear()
            conn.send(data)
        conn.fill()  # Closed at EOF ends the handler


class TunnelUp:
    """An upstream handler: a request with Upgrade gets a hand-made 101 (echoing the
    token) and then body(conn) runs on the raw connection; a request without Upgrade
    gets 200 "plain <target>". Counts tunnels started and ended."""

    def __init__(self, body=echo_body):
        self.body = body
        self.lock = threading.Lock()  # one thread per upstream connection
        self.started = 0
        self.ended = 0

    def handler(self, req, conn):
        token = req.header("upgrade")
        if token is None:
            return build_response(200, f"plain {req.target}".encode())
        conn.send(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {token}\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n".encode())
        with self.lock:
            self.started += 1
        try:
            self.body(conn)
        finally:
            with self.lock:
                self.ended += 1
            conn.close()
        return None


def tunnel_up(h, body=echo_body, **kw):
    t = TunnelUp(body)
    up = h.upstream(t.handler, **kw)
    up.tun = t
    return up


def cfg(up, route=None, **extra):
    """One upstream "u", one route "ws" (with route's keys added), a short drain."""
    r = {"name": "ws", "upstream": "u"}
    r.update(route or {})
    c = {"shutdown": {"drain_timeout": "3s"}, "upstreams": [upstream_cfg("u", up)], "routes": [r]}
    c.update(extra)
    return c


# --------------------------------------------------------------------------
# raw clients
# --------------------------------------------------------------------------


def upgrade_request(target="/ws", token="websocket", headers=()):
    return build_request("GET", target, [("Upgrade", token), ("Connection", "Upgrade"),
                                         ("Sec-WebSocket-Key", WS_KEY), ("Sec-WebSocket-Version", "13"),
                                         *headers])


def read_head(c):
    """(status, Headers, raw head bytes with the final CRLFCRLF) of the next response head;
    whatever follows stays in c.buf."""
    raw = c.read_until(b"\r\n\r\n", limit=65536)
    line, hs = parse_head(raw)
    return int(line.split(" ")[1]), hs, raw + b"\r\n\r\n"


def check_101(status, hs, token="websocket", rid=True):
    assert status == 101, (status, hs)
    assert (hs.get("upgrade") or "").lower() == token, hs
    assert has_token(",".join(hs.all("connection")), "upgrade"), hs
    assert not rid or hs.get("x-request-id"), f"no X-Request-Id on the 101: {hs}"


def open_tunnel(h, port, target="/ws", token="websocket", headers=(), after=b"", timeout=None, rid=True):
    """A raw client whose upgrade request (plus `after`, in the same write) got a 101.
    Returns (client, Headers of the 101, raw 101 head)."""
    c = h.client(port, timeout)
    c.send(upgrade_request(target, token, headers) + after)
    status, hs, raw = read_head(c)
    check_101(status, hs, token, rid)
    return c, hs, raw


def roundtrip(c, data):
    c.send(data)
    got = c.read_exact(len(data))
    assert got == data, (len(got), len(data))


def readable(sock, timeout):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


# --------------------------------------------------------------------------
# WebSocket clients (asyncio)
# --------------------------------------------------------------------------


def ws_connect(url, **kw):
    return websockets.connect(url, max_size=None, compression=None, ping_interval=None, open_timeout=T(20),
                              close_timeout=T(5), **kw)


def digest(msg):
    return (type(msg).__name__, len(msg), sha256(msg if isinstance(msg, bytes) else msg.encode()))


async def echo_check(ws, msg):
    """Sends one message and expects the same message back (type, length, hash)."""
    await ws.send(msg)
    got = await asyncio.wait_for(ws.recv(), T(20))
    assert digest(got) == digest(msg)


async def until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out after {timeout:.1f}s waiting for {what}"
        await asyncio.sleep(0.02)


async def open_many(url, n, parallel=100, **kw):
    sem = asyncio.Semaphore(parallel)

    async def one():
        async with sem:
            return await ws_connect(url, **kw)

    return await asyncio.gather(*(one() for _ in range(n)))


async def echo_all(wss, tag):
    await asyncio.gather(*(echo_check(ws, f"{tag} {i} " + "x" * (i % 97)) for i, ws in enumerate(wss)))


async def close_all(wss):
    await asyncio.gather(*(ws.close() for ws in wss), return_exceptions=True)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, T(120)))


PRINTABLE = bytes(32 + b % 95 for b in range(256))


def text_payload(n, seed):
    # printable ASCII, so len(str) == bytes on the wire
    return payload(n, seed).translate(PRINTABLE).decode("ascii")


# --------------------------------------------------------------------------
# WebSocket echo through the gateway
# --------------------------------------------------------------------------

SIZES = [1, 125, 126, 65535, 65536, 1 << 20, 4 << 20]


def test_ws_frames_echoed_intact(h):
    up = ws_echo(h)
    # a body limit far below the frames: tunnel bytes are not a request body
    tp = h.turnpike(cfg(up, limits={"max_body_bytes": "64KiB"}))

    async def main():
        async with ws_connect(f"ws://127.0.0.1:{tp.port}/chat?room=1") as ws:
            assert ws.response_headers.get("X-Request-Id"), ws.response_headers
            for i, n in enumerate(SIZES):
                await echo_check(ws, payload(n, seed=i))
                await echo_check(ws, text_payload(n, seed=100 + i))
            # several frames in flight at once come back in order
            msgs = [payload(70000 + i, seed=200 + i) for i in range(8)]
            for m in msgs:
                await ws.send(m)
            for m in msgs:
                got = await asyncio.wait_for(ws.recv(), T(20))
                assert digest(got) == digest(m)

    run(main())
    assert up.opened == 1
    path, hs = up.heads[0]
    assert path == "/chat?room=1"
    assert hs.get("Upgrade", "").lower() == "websocket", hs
    assert has_token(",".join(hs.get_all("Connection")), "upgrade"), hs
    assert hs.get("Sec-WebSocket-Key") and hs.get("Sec-WebSocket-Version") == "13", hs
    wait_until(lambda: up.active == 0, T(10), what="the upstream session to end")


def test_thousand_concurrent_tunnels(h):
    n = 1000
    have = raise_nofile(4 * n + 1024)
    assert have >= 4 * n + 256, f"RLIMIT_NOFILE {have} is too low for {n} tunnels"
    up = ws_echo(h)
    tp = h.turnpike(cfg(up, limits={"max_connections": 10 * n}))

    async def main():
        wss = await open_many(f"ws://127.0.0.1:{tp.port}/many", n)
        try:
            await until(lambda: up.active == n, T(20), "all sessions open at the upstream at once")
            await echo_all(wss, "one")
            await echo_all(wss, "two")
        finally:
            await close_all(wss)

    run(main())
    assert up.opened == n
    wait_until(lambda: up.active == 0, T(20), what="every upstream session to end")


# --------------------------------------------------------------------------
# what is and is not tunnelled
# --------------------------------------------------------------------------


def test_non_101_is_a_normal_response_and_connection_stays_http(h):
    def handler(req, conn):
        if req.target == "/refuse-200":
            return build_response(200, b"no upgrade today", [("Content-Type", "text/plain")])
        if req.target == "/refuse-426":
            return build_response(426, b"need another protocol", [("Upgrade", "websocket"),
                                                                  ("Connection", "Upgrade")], reason="Upgrade Required")
        return build_response(200, f"plain {req.target}".encode())

    up = h.upstream(handler)
    tp = h.turnpike(cfg(up))
    c = h.client(tp.port)
    for status, body in ((200, b"no upgrade today"), (426, b"need another protocol")):
        c.send(upgrade_request(f"/refuse-{status}"))
        r = c.read_response()
        assert (r.status, r.body) == (status, body), r
        # the next request on the same connection is plain HTTP again
        c.request("GET", f"/after-{status}")
        r = c.read_response()
        assert (r.status, r.body) == (200, f"plain /after-{status}".encode()), r
    heads = up.heads
    assert [q.target for q in heads] == ["/refuse-200", "/after-200", "/refuse-426", "/after-426"]
    for q in (heads[0], heads[2]):
        assert (q.header("upgrade") or "").lower() == "websocket", q.headers
        assert has_token(q.header("connection"), "upgrade"), q.headers
    for q in (heads[1], heads[3]):
        assert not q.headers.has("upgrade"), q.headers
    assert metrics(tp).value("turnpike_tunnels_total", default=0, route="ws") == 0


def test_token_lists(h):
    up = tunnel_up(h)
    tp = h.turnpike(cfg(up, routes=[
        {"name": "none", "match": {"path_prefix": "/none"}, "upstream": "u", "upgrade": []},
        {"name": "wsonly", "match": {"path_prefix": "/wsonly"}, "upstream": "u", "upgrade": ["websocket"]},
        {"name": "foo", "match": {"path_prefix": "/foo"}, "upstream": "u", "upgrade": ["foo"]},
        {"name": "default", "upstream": "u"},
    ]))

    def refused(target, token):
        c = h.client(tp.port)
        c.send(upgrade_request(target, token))
        r = c.read_response()
        assert (r.status, r.body) == (200, f"plain {target}".encode()), r
        c.request("GET", target + "/next")
        assert c.read_response().body == f"plain {target}/next".encode()
        q = up.heads[-2]
        assert q.target == target
        assert not q.headers.has("upgrade"), q.headers
        assert not has_token(",".join(q.headers.all("connection")), "upgrade"), q.headers

    refused("/none", "websocket")  # upgrade: [] tunnels nothing
    refused("/wsonly", "foo")  # an unlisted token is hop-by-hop
    refused("/foo", "websocket")
    refused("/default", "foo")  # default is [websocket]
    assert up.tun.started == 0

    for target, token in (("/foo", "foo"), ("/wsonly", "websocket"), ("/default", "websocket")):
        c, _, _ = open_tunnel(h, tp.port, target, token)
        roundtrip(c, f"through {target}".encode())
        q = up.heads[-1]
        assert (q.target, q.header("upgrade")) == (target, token), q.headers
        assert has_token(q.header("connection"), "upgrade"), q.headers
    assert up.tun.started == 3

    # "upgrade" as one token of several in Connection (as some browsers send it)
    c = h.client(tp.port)
    c.request("GET", "/default/ff", [("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket"),
                                     ("Sec-WebSocket-Key", WS_KEY), ("Sec-WebSocket-Version", "13")])
    check_101(*read_head(c)[:2])
    roundtrip(c, b"several connection tokens")
    assert up.tun.started == 4


def test_h2c_is_never_tunnelled(h):
    up = tunnel_up(h)
    tp = h.turnpike(cfg(up, route={"upgrade": ["websocket", "h2c"]}))
    c = h.client(tp.port)
    c.request("GET", "/h2", [("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings"),
                             ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")])
    r = c.read_response()
    assert (r.status, r.body) == (200, b"plain /h2"), r
    q = up.heads[-1]
    assert not q.headers.has("upgrade"), q.headers
    assert not q.headers.has("http2-settings"), q.headers
    assert not has_token(",".join(q.headers.all("connection")), "upgrade"), q.headers
    # websocket on the same route still is tunnelled
    c2, _, _ = open_tunnel(h, tp.port, "/ws2")
    roundtrip(c2, b"still works")
    assert up.tun.started == 1


def test_a_101_the_request_did_not_ask_for_is_a_502(h):
    """A 101 naming a protocol that was not offered, or answering a request that
    offered none (its token not on the route's list), is an invalid response:
    502, and the upstream connection is not tunnelled."""
    def handler(req, conn):
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: Upgrade\r\n\r\n")
        return None

    up = h.upstream(handler)
    tp = h.turnpike(cfg(up, route={"upgrade": ["websocket"]}))
    for target, token in (("/wrong-protocol", "websocket"), ("/not-offered", "foo")):
        c = h.client(tp.port)
        c.send(upgrade_request(target, token))
        r = c.read_response()
        assert_gateway_error(r, 502)
        assert r.json()["error"].startswith("invalid upstream response"), r.json()
        assert not r.header("upgrade"), r
    assert metrics(tp).value("turnpike_tunnels_total", route="ws") == 0


def test_x_request_id_on_the_101(h):
    up = tunnel_up(h)
    tp = h.turnpike(cfg(up))
    _, hs, _ = open_tunnel(h, tp.port, headers=[("X-Request-Id", "tunnel-req-7")])
    assert hs.get("x-request-id") == "tunnel-req-7", hs
    assert up.heads[-1].header("x-request-id") == "tunnel-req-7"
    _, hs, _ = open_tunnel(h, tp.port)
    rid = hs.get("x-request-id")
    assert rid and rid == up.heads[-1].header("x-request-id"), (hs, up.heads[-1].headers)


# --------------------------------------------------------------------------
# byte-level tunnel behaviour
# --------------------------------------------------------------------------

# How long the upstream watches for bytes that must not come before its 101. No
# readiness check can show that nothing arrives; a broken gateway writes pipelined
# bytes together with the head, so they are there at once.
EARLY_WINDOW = 0.3


def test_pipelined_bytes_reach_upstream_after_the_101(h):
    early = {}
    sent_extra = threading.Event()

    def handler(req, conn):
        # anything besides the head before the 101 would be read as a second request
        # by an upstream that does not upgrade
        if req.target == "/later":
            sent_extra.wait(T(10))
        early[req.target] = bytes(conn.buf) + (conn.sock.recv(65536, socket.MSG_PEEK)
                                               if readable(conn.sock, EARLY_WINDOW) else b"")
        return tun.handler(req, conn)

    tun = TunnelUp()
    up = h.upstream(handler)
    tp = h.turnpike(cfg(up))

    # in the same write as the head
    extra = b"\x81\x05hello" + payload(3000, seed=5)
    c, _, _ = open_tunnel(h, tp.port, "/same-write", after=extra)
    assert c.read_exact(len(extra)) == extra
    roundtrip(c, b"and more")

    # sent while the gateway waits for the upstream's answer
    c2 = h.client(tp.port)
    c2.send(upgrade_request("/later"))
    up.wait_heads(2)
    extra2 = payload(5000, seed=6)
    c2.send(extra2)
    sent_extra.set()
    status, hs, _ = read_head(c2)
    check_101(status, hs)
    assert c2.read_exact(len(extra2)) == extra2
    assert early == {"/same-write": b"", "/later": b""}, {k: v[:80] for k, v in early.items()}


def test_half_close_client_to_upstream(h):
    got = {}

    def body(conn):
        data = bytearray()
        try:
            while True:
                data += conn.buf
                conn.buf.clear()
                conn.fill()
        except Closed:
            pass
        got["data"] = bytes(data)
        # the client's FIN arrived; the upstream can still send
        conn.send(b"after your EOF: " + sha256(bytes(data)).encode())

    up = tunnel_up(h, body)
    tp = h.turnpike(cfg(up))
    c, _, _ = open_tunnel(h, tp.port)
    data = payload(200000, seed=9)
    c.send(data)
    c.sock.shutdown(socket.SHUT_WR)
    rest = c.read_to_eof()
    assert rest == b"after your EOF: " + sha256(data).encode(), rest[:100]
    assert got["data"] == data


def test_half_close_upstream_to_client(h):
    got = {}

    def body(conn):
        conn.send(b"bye")
        conn.sock.shutdown(socket.SHUT_WR)
        data = bytearray()
        try:
            while True:
                data += conn.buf
                conn.buf.clear()
                conn.fill()
        except Closed:
            pass
        got["data"] = bytes(data)

    up = tunnel_up(h, body)
    tp = h.turnpike(cfg(up))
    c, _, _ = open_tunnel(h, tp.port)
    assert c.read_exact(3) == b"bye"
    assert c.wait_closed(T(10)) == "eof", "the upstream's FIN was not passed on"
    late = payload(100000, seed=10)
    try:
        c.send(late)  # the client can still send after the upstream's FIN
        c.sock.shutdown(socket.SHUT_WR)
    except OSError as e:
        raise AssertionError(f"the gateway closed the client side on the upstream's FIN: {e!r}")
    wait_until(lambda: "data" in got, T(10), what="the upstream to see the client's bytes and EOF")
    assert got["data"] == late


def test_stalled_reader_backpressure_keeps_memory_flat(h):
    """The upstream tries to push 512 MiB to a client that reads nothing: the gateway
    stops reading the upstream (its writes block) and its RSS stays flat; then the
    client reads everything, intact, and the RSS still stays flat. The baseline is
    taken after a first tunnel relayed 96 MiB, so that the first touch of the
    receive buffer pool (tp_hostile.warm_buffer_pool) is not counted as growth;
    ASan's quarantine is kept small (tp_hostile.asan_env)."""
    total = 512 << 20
    warm = 96 << 20
    chunk = payload(1 << 20, seed=11)
    state = {"sent": 0, "done": False}

    def push(conn, n, count):
        conn.sock.settimeout(T(120))
        view = memoryview(chunk)
        sent = 0
        while sent < n:
            k = conn.sock.send(view[sent % len(chunk):][: n - sent])
            sent += k
            if count:
                state["sent"] = sent
        if count:
            state["done"] = True
        conn.sock.shutdown(socket.SHUT_WR)
        conn.read_to_eof()

    def body(conn):
        if conn.server.tunnels_seen == 0:
            conn.server.tunnels_seen = 1
            push(conn, warm, False)
        else:
            push(conn, total, True)

    up = tunnel_up(h, body)
    up.tunnels_seen = 0
    tp = env_turnpike(h, cfg(up, workers=1), asan_env())

    def read_all(c, n):
        hasher = hashlib.sha256()
        got = len(c.buf)
        hasher.update(bytes(c.buf))
        c.buf.clear()
        while got < n:
            data = c.sock.recv(1 << 20)
            assert data, f"EOF after {got} of {n} bytes"
            hasher.update(data)
            got += len(data)
        assert got == n
        return hasher.hexdigest()

    w, _, _ = open_tunnel(h, tp.port, "/warm", timeout=T(60))
    read_all(w, warm)
    assert w.wait_closed(T(10)) == "eof"
    w.close()  # the upstream half-closed; its read side waits for ours
    wait_until(lambda: up.tun.ended == 1, T(10), what="the warm-up tunnel to end")

    c = Client(tp.port, T(60), connect=False)
    h.clients.append(c)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # before connect: a small window
    c.sock.connect(("127.0.0.1", tp.port))
    c.send(upgrade_request("/stall"))
    # only the 101 head, a byte at a time, so that nothing of the stream is read
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = c.sock.recv(1)
        assert b, head
        head += b
    assert head.startswith(b"HTTP/1.1 101"), head
    base = vm_rss_kib(tp.proc.pid) << 10
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], vm_rss_kib(tp.proc.pid) << 10)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        last = {"sent": -1, "since": time.monotonic()}

        def stalled():
            s = state["sent"]
            now = time.monotonic()
            if s != last["sent"]:
                last["sent"], last["since"] = s, now
                return False
            return s > 0 and now - last["since"] > 1.0

        wait_until(stalled, T(60), interval=0.1, what="the upstream's writes to block")
        # the socket buffers on the way hold about 10 MiB; a gateway that took in as
        # much as its whole receive buffer pool (64 MiB) would show here
        assert not state["done"] and state["sent"] < 48 << 20, \
            f"the upstream pushed {state['sent'] >> 20} MiB to a client that reads nothing"
        assert peak[0] - base < 32 << 20, f"RSS grew by {(peak[0] - base) >> 20} MiB with a stalled reader"
        digest_got = read_all(c, total)
        assert c.sock.recv(1) == b""
    finally:
        stop.set()
        sampler.join(5)
    want = hashlib.sha256()
    for _ in range(total // len(chunk)):
        want.update(chunk)
    assert digest_got == want.hexdigest()
    assert peak[0] - base < 32 << 20, f"RSS grew by {(peak[0] - base) >> 20} MiB relaying {total >> 20} MiB"


# --------------------------------------------------------------------------
# timeouts, reload, drain
# --------------------------------------------------------------------------


def test_tunnel_idle_closes_an_idle_tunnel(h):
    up = tunnel_up(h)
    tp = h.turnpike(cfg(up, timeouts={"tunnel_idle": "1s"}))
    c, _, _ = open_tunnel(h, tp.port)
    # bytes more often than tunnel_idle keep it open past it (3 s of traffic, 300 ms apart)
    for i in range(10):
        roundtrip(c, b"tick %d" % i)
        time.sleep(0.3)
    assert c.wait_closed(T(10)) in ("eof", "reset"), "an idle tunnel was not closed"
    wait_until(lambda: up.tun.ended == 1, T(10), what="the upstream side of the idle tunnel to close")


def test_http_timeouts_do_not_cut_a_tunnel(h):
    up = tunnel_up(h)
    tp = h.turnpike(cfg(up, timeouts={"client_idle": "500ms", "upstream_response": "500ms", "tunnel_idle": "4s"}))
    c, _, _ = open_tunnel(h, tp.port)
    roundtrip(c, b"first")
    # silent for four times client_idle and upstream_response, half of tunnel_idle
    assert not readable(c.sock, 2.0), f"something came on an idle tunnel: {c.wait_closed(0.1)}"
    roundtrip(c, b"still here")
    assert c.wait_closed(T(15)) in ("eof", "reset"), "tunnel_idle did not close the tunnel"


def test_reload_keeps_200_live_tunnels(h):
    n = 200
    raise_nofile(4 * n + 1024)
    a = ws_echo(h, name="A")
    b = ws_echo(h, name="B")
    tp = h.turnpike(cfg(a))
    url = f"ws://127.0.0.1:{tp.port}/live"

    async def main():
        loop = asyncio.get_running_loop()
        wss = await open_many(url, n)
        try:
            await echo_all(wss, "before")
            await loop.run_in_executor(None, reload, tp)  # same file
            await echo_all(wss, "after plain reload")
            # the live tunnels' route and upstream are gone from the new configuration:
            # they stay with A, new tunnels go to B
            changed = derive(tp, upstreams=[upstream_cfg("v", b)], routes=[{"name": "other", "upstream": "v"}],
                             timeouts={"client_idle": "7s"})
            await loop.run_in_executor(None, reload, tp, changed)
            await echo_all(wss, "after changed reload")
            assert a.active == n
            async with ws_connect(url) as fresh:
                await echo_check(fresh, "new tunnel")
            await echo_all(wss, "last")
        finally:
            await close_all(wss)

    run(main())
    assert (a.opened, b.opened) == (n, 1)


def test_drain_keeps_tunnels_until_drain_timeout(h):
    up = tunnel_up(h)
    drain = T(5)
    tp = h.turnpike(cfg(up, shutdown={"drain_timeout": f"{drain:g}s"}))
    clients = [open_tunnel(h, tp.port, f"/d{i}", timeout=drain + T(20))[0] for i in range(3)]
    for c in clients:
        roundtrip(c, b"before")
    t0 = time.monotonic()
    tp.signal(signal.SIGTERM)
    wait_until(lambda: tp.admin_get("/readyz")[0] == 503, T(10), what="/readyz 503 while draining")
    for c in clients:
        roundtrip(c, b"while draining")  # not cut by the drain's start
    # and not soon after it either: a third of drain_timeout later they still work
    # (checked only when an overloaded machine has not already used up most of
    # drain_timeout getting here, when the end of the drain may rightly have come)
    time.sleep(max(0.0, t0 + drain / 3 - time.monotonic()))
    if time.monotonic() - t0 < drain * 0.6:
        for c in clients:
            roundtrip(c, b"later while draining")
    assert tp.proc.poll() is None
    for c in clients:
        assert c.wait_closed(drain + T(15)) in ("eof", "reset"), "a tunnel outlived drain_timeout"
    assert tp.wait(T(15)) == 0
    wait_until(lambda: up.tun.ended == 3, T(10), what="the upstream sides to close")


# --------------------------------------------------------------------------
# limits, metrics, access log
# --------------------------------------------------------------------------


def test_live_tunnels_count_against_max_concurrent_requests(h):
    up = tunnel_up(h)
    tp = h.turnpike({"shutdown": {"drain_timeout": "3s"},
                     "upstreams": [upstream_cfg("u", up, max_concurrent_requests=2)],
                     "routes": [{"name": "ws", "upstream": "u"}]})
    c1, _, _ = open_tunnel(h, tp.port, "/t1")
    c2, _, _ = open_tunnel(h, tp.port, "/t2")
    roundtrip(c1, b"one")
    roundtrip(c2, b"two")
    wait_metric(tp, "turnpike_upstream_inflight_requests", 2, upstream="u")
    for i in range(3):  # fresh connections, either worker
        c = h.client(tp.port)
        c.send(upgrade_request(f"/t3-{i}"))
        assert_gateway_error(c.read_response(), 503)
    assert_gateway_error(get(tp.port, "/plain"), 503)
    assert up.tun.started == 2 and len(up.heads) == 2
    roundtrip(c1, b"still one")

    c1.close()
    wait_until(lambda: up.tun.ended == 1, T(10), what="the upstream side of the closed tunnel to end")
    wait_metric(tp, "turnpike_upstream_inflight_requests", 1, upstream="u")
    c3, _, _ = open_tunnel(h, tp.port, "/t4")
    roundtrip(c3, b"three")
    roundtrip(c2, b"two again")
    assert up.tun.started == 3


def test_rate_limit_applies_to_upgrade_requests(h):
    up = tunnel_up(h)
    tp = h.turnpike(cfg(up, route={"rate_limit": {"rate": "1/m", "burst": 2, "key": "client_ip"}}))
    tunnels = [open_tunnel(h, tp.port, f"/r{i}")[0] for i in range(2)]
    c = h.client(tp.port)
    c.send(upgrade_request("/r2"))
    assert_gateway_error(c.read_response(), 429)
    assert len(up.heads) == 2
    for t in tunnels:
        roundtrip(t, b"the admitted ones work")


def test_metrics_active_gauge_and_total(h):
    up = tunnel_up(h)
    plain = h.upstream(name="P")
    tp = h.turnpike({"shutdown": {"drain_timeout": "3s"},
                     "upstreams": [upstream_cfg("u", up), upstream_cfg("p", plain)],
                     "routes": [{"name": "plainroute", "match": {"path_prefix": "/plain"}, "upstream": "p"},
                                {"name": "ws", "upstream": "u"}]})
    m = metrics(tp)
    assert m.value("turnpike_tunnels_active", default=0, route="ws") == 0
    assert m.value("turnpike_tunnels_total", default=0, route="ws") == 0

    clients = [open_tunnel(h, tp.port, f"/m{i}")[0] for i in range(3)]
    wait_metric(tp, "turnpike_tunnels_active", 3, route="ws")
    m = metrics(tp)
    assert m.families["turnpike_tunnels_active"]["type"] == "gauge"
    assert m.families["turnpike_tunnels_total"]["type"] == "counter"
    assert m.value("turnpike_tunnels_total", route="ws") == 3
    # an upgrade request the upstream answers with 200 is no tunnel
    r = get(tp.port, "/plain/x", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")])
    assert r.status == 200, r
    clients[0].close()
    clients[1].sock.shutdown(socket.SHUT_RDWR)
    wait_metric(tp, "turnpike_tunnels_active", 1, route="ws")
    roundtrip(clients[2], b"x")
    clients[2].close()
    wait_metric(tp, "turnpike_tunnels_active", 0, route="ws")
    m = metrics(tp)
    assert m.value("turnpike_tunnels_total", route="ws") == 3
    assert m.value("turnpike_tunnels_total", default=0, route="plainroute") == 0
    assert m.value("turnpike_tunnels_active", default=0, route="plainroute") == 0


def test_access_log_line_when_the_tunnel_ends(h):
    from test_accesslog import lines_of, wait_lines

    log = h.tmp_path / "access.log"
    extra_from_upstream = payload(777, seed=12)

    def body(conn):
        conn.send(extra_from_upstream)
        echo_body(conn)

    up = tunnel_up(h, body)
    tp = h.turnpike(cfg(up, access_log={"path": str(log)}))
    req = upgrade_request("/logged", headers=[("X-Request-Id", "tun-log-1")])
    c = h.client(tp.port)
    c.send(req)
    status, hs, head101 = read_head(c)
    check_101(status, hs)
    opened = time.monotonic()
    assert c.read_exact(len(extra_from_upstream)) == extra_from_upstream
    sent = 0
    for i in range(5):
        data = payload(10000 + i, seed=20 + i)
        roundtrip(c, data)
        sent += len(data)
    time.sleep(0.5)  # a tunnel that lasts: duration_ms covers all of it, not just the head
    assert [json.loads(ln)["request_id"] for ln in lines_of(log)] == [], "logged before the tunnel ended"
    c.close()
    held_ms = (time.monotonic() - opened) * 1000
    lines = wait_lines(log, 1)
    assert len(lines) == 1, lines
    e = json.loads(lines[0])
    assert e["status"] == 101, e
    assert e["request_id"] == "tun-log-1" == hs.get("x-request-id"), e
    assert (e["method"], e["path"], e["route"], e["upstream"]) == ("GET", "/logged", "ws", "u"), e
    assert e["bytes_in"] == len(req) + sent, (e, len(req), sent)
    assert e["bytes_out"] == len(head101) + len(extra_from_upstream) + sent, (e, len(head101))
    assert e["duration_ms"] >= held_ms - 50, (e, held_ms)


# --------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------


def test_wss_through_a_tls_listener(h, pki):
    up = ws_echo(h)
    tp = start_tls(h, pki, cfg(up))

    async def main():
        async with ws_connect(f"wss://127.0.0.1:{tp.port}/secure", ssl=client_ctx(pki),
                              server_hostname="a.test") as ws:
            for i, n in enumerate((1, 126, 65536, 1 << 20, 4 << 20)):
                await echo_check(ws, payload(n, seed=300 + i))
            await echo_check(ws, "text over TLS")

    run(main())
    assert up.opened == 1 and up.heads[0][0] == "/secure"
    assert up.heads[0][1].get("X-Forwarded-Proto") == "https"


def test_tls_upstream(h, pki):
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(pki / "a.pem"), str(pki / "a.key"))
    up = ws_echo(h, ssl_ctx=sctx)
    c = cfg(up)
    c["upstreams"] = [{"name": "u", "endpoints": [{"address": up.addr}],
                       "tls": {"sni": "a.test", "ca": str(pki / "ca.pem")}}]
    tp = h.turnpike(c)

    async def main():
        async with ws_connect(f"ws://127.0.0.1:{tp.port}/to-tls") as ws:
            for i, n in enumerate((1, 126, 65536, 1 << 20, 4 << 20)):
                await echo_check(ws, payload(n, seed=400 + i))
                await echo_check(ws, text_payload(min(n, 100000), seed=500 + i))

    run(main())
    assert up.opened == 1 and up.heads[0][0] == "/to-tls"


# --------------------------------------------------------------------------
# the helpers above, without a gateway (they must work for the tests to mean anything)
# --------------------------------------------------------------------------


def test_helpers_against_each_other_directly(tmp_path):
    from tp_harness import Harness

    hh = Harness(tmp_path)
    try:
        ws = ws_echo(hh)

        async def main():
            async with ws_connect(f"ws://{ws.addr}/direct") as c:
                for i, n in enumerate((1, 65536, 4 << 20)):
                    await echo_check(c, payload(n, seed=i))
                await echo_check(c, "text")

        run(main())
        assert ws.opened == 1 and ws.heads[0][1]["Upgrade"].lower() == "websocket"

        up = tunnel_up(hh)
        c, hs, _ = open_tunnel(hh, up.port, after=b"early", rid=False)
        assert hs.get("sec-websocket-accept") == WS_ACCEPT
        assert c.read_exact(5) == b"early"
        roundtrip(c, payload(100000, seed=3))
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read_to_eof() == b""
        wait_until(lambda: up.tun.ended == 1, T(5), what="the raw tunnel to end")
    finally:
        hh.teardown()
