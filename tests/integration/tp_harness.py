# SPDX-License-Identifier: MIT
"""Integration harness: runs the real turnpike binary against real upstream
servers (threads of this process on 127.0.0.1, raw sockets) and talks to it
with raw-socket clients, so tests see and control every byte.

Pieces:
  Upstream   a small HTTP/1.1 server that records what it receives (connections,
             heads, bodies, raw bytes) and answers through a handler.
  Client     a raw-socket HTTP/1.x client that parses responses exactly
             (Content-Length, chunked, close-delimited, 1xx interim responses).
  Turnpike   one turnpike process: writes its config, starts it, waits until it
             serves, stops it with SIGTERM and checks exit code 0 and a clean
             stderr (no sanitizer reports).
  Harness    what the `h` fixture hands to a test; its teardown releases blocked
             upstream handlers, stops turnpike (checking it), then the upstreams.

Every wait is bounded. Timeouts scale with the sanitizer (TP_SANITIZE):
ASan/TSan builds are several times slower.
"""
import collections
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time

BIN = os.environ.get("TURNPIKE_BIN")
SANITIZE = os.environ.get("TP_SANITIZE", "address")
SLOW = 1.0 if SANITIZE == "none" else 3.0

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "runtime error:",
    "LeakSanitizer",
    "WARNING: ThreadSanitizer",
    "ERROR: ThreadSanitizer",
)


def T(seconds):
    """A timeout, scaled for sanitizer builds."""
    return seconds * SLOW


_recent_ports = collections.deque(maxlen=256)


def free_port():
    """A port that was free a moment ago (bind 0, close), and not one this process
    handed out lately: the kernel may give the same port to two binds in a row, and
    a gateway whose listener and admin got the same one refuses its configuration."""
    for _ in range(64):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _recent_ports:
            break
    _recent_ports.append(port)
    return port


_reserved = []  # sockets holding the ports reserve_port() handed out


def reserve_port():
    """A port for a gateway's listener or admin, held until release_ports(): bound
    here with SO_REUSEPORT and never listened on. Another program's bind cannot take
    it meanwhile (bind(0) skips it, and a bind without SO_REUSEPORT fails), while the
    gateway, whose listeners set SO_REUSEPORT too, binds it beside this socket and
    gets every connection (a socket that does not listen gets none). A port that was
    merely free a moment ago could be bound again by a parallel test's gateway, and
    the two shared its connections: one test's requests reached the other's admin."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    _reserved.append(s)
    return s.getsockname()[1]


def release_ports():
    while _reserved:
        _reserved.pop().close()


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Polls pred() until it is truthy; returns its value; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def payload(n, seed=1):
    """n deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(n)


# --------------------------------------------------------------------------
# HTTP bits shared by both sides
# --------------------------------------------------------------------------


class Headers:
    """An ordered list of (name, value) as received, case-insensitive lookups."""

    def __init__(self, items):
        self.items = list(items)

    def all(self, name):
        n = name.lower()
        return [v for k, v in self.items if k.lower() == n]

    def get(self, name, default=None):
        vals = self.all(name)
        assert len(vals) <= 1, f"header {name} appears {len(vals)} times: {vals}"
        return vals[0] if vals else default

    def has(self, name):
        return bool(self.all(name))

    def names(self):
        return [k.lower() for k, _ in self.items]

    def __repr__(self):
        return f"Headers({self.items!r})"


def parse_head(raw):
    """Splits a head (without the final CRLFCRLF) into (start line, Headers)."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    items = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        assert sep, f"malformed header line {line!r}"
        items.append((name, value.strip(" \t")))
    return lines[0], Headers(items)


def has_token(value, token):
    return token.lower() in [t.strip().lower() for t in (value or "").split(",")]


def chunked(data, sizes=(7, 1000, 1, 4096)):
    """Encodes data as a chunked body with chunks of varying sizes."""
    out = bytearray()
    i = 0
    k = 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        k += 1
        piece = data[i : i + n]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        i += n
    out += b"0\r\n\r\n"
    return bytes(out)


def build_request(method="GET", target="/", headers=None, body=None, version="HTTP/1.1", host="test.local"):
    """Request bytes. headers: list of (name, value); Host is added first unless
    host is None or headers already carry one; Content-Length is added for a
    body unless the headers already frame it."""
    hs = list(headers or [])
    names = [k.lower() for k, _ in hs]
    if host is not None and "host" not in names:
        hs.insert(0, ("Host", host))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        hs.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    return head.encode("latin-1") + (body or b"")


def build_response(status=200, body=b"", headers=None, reason=None, chunk=False, length=True):
    """Response bytes; adds Content-Length (or chunked framing) unless told not to."""
    hs = list(headers or [])
    if chunk:
        hs.append(("Transfer-Encoding", "chunked"))
        data = chunked(body)
    else:
        if length:
            hs.append(("Content-Length", str(len(body))))
        data = body
    reason = reason or REASONS.get(status, "Whatever")
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    return head.encode("latin-1") + data


REASONS = {
    100: "Continue",
    103: "Early Hints",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    500: "Internal Server Error",
}


class Closed(Exception):
    """The peer closed (EOF) or reset the connection."""


class Buffered:
    """A socket with a receive buffer and exact reads. Raises Closed at EOF/reset,
    socket.timeout when a read takes longer than the socket's timeout."""

    def __init__(self, sock, recv_size=65536, recv_delay=0.0):
        self.sock = sock
        self.buf = bytearray()
        self.recv_size = recv_size
        self.recv_delay = recv_delay
        self.eof = False
        self.reset = False
        self.received = 0  # bytes received in all

    def fill(self):
        if self.eof:
            raise Closed("eof")
        if self.recv_delay:
            time.sleep(self.recv_delay)
        try:
            data = self.sock.recv(self.recv_size)
        except ConnectionResetError:
            self.eof = True
            self.reset = True
            raise Closed("reset")
        if not data:
            self.eof = True
            raise Closed("eof")
        self.received += len(data)
        self.buf += data
        return len(data)

    def read_until(self, sep, limit=1 << 20):
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + len(sep)]
                return out
            start = max(0, len(self.buf) - len(sep) + 1)
            if len(self.buf) > limit:
                raise AssertionError(f"no {sep!r} within {limit} bytes")
            self.fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_to_eof(self):
        try:
            while True:
                self.fill()
        except Closed:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def read_chunked(self):
        """Reads a chunked body; returns (payload, raw bytes, trailers)."""
        data = bytearray()
        raw = bytearray()
        while True:
            line = self.read_until(b"\r\n", limit=4096)
            raw += line + b"\r\n"
            size_txt = line.split(b";", 1)[0].strip()
            assert re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_txt), f"bad chunk size line {line!r}"
            size = int(size_txt, 16)
            if size == 0:
                trailers = []
                while True:
                    t = self.read_until(b"\r\n", limit=65536)
                    raw += t + b"\r\n"
                    if not t:
                        return bytes(data), bytes(raw), trailers
                    trailers.append(t)
            chunk = self.read_exact(size)
            crlf = self.read_exact(2)
            raw += chunk + crlf
            assert crlf == b"\r\n", f"chunk not followed by CRLF: {crlf!r}"
            data += chunk


# --------------------------------------------------------------------------
# Upstream server
# --------------------------------------------------------------------------


class UpRequest:
    """A request as an upstream received it."""

    def __init__(self, conn_id, raw_head):
        self.conn_id = conn_id
        self.raw_head = raw_head
        line, self.headers = parse_head(raw_head)
        parts = line.split(" ")
        assert len(parts) == 3, f"bad request line {line!r}"
        self.method, self.target, self.version = parts
        self.body = b""
        self.raw_body = b""
        self.chunked = False
        self.complete = False

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def wants_close(self):
        conn = ",".join(self.headers.all("connection"))
        if self.version == "HTTP/1.0":
            return not has_token(conn, "keep-alive")
        return has_token(conn, "close")

    def __repr__(self):
        return f"<UpRequest {self.method} {self.target} {self.version} conn={self.conn_id}>"


class UpConn(Buffered):
    def __init__(self, server, sock, conn_id):
        super().__init__(sock, server.recv_size, server.recv_delay)
        self.server = server
        self.conn_id = conn_id
        self.closed = False

    def send(self, data):
        self.sock.sendall(data)

    def close(self, rst=False):
        if self.closed:
            return
        self.closed = True
        if rst:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def read_body(self, req):
        te = ",".join(req.headers.all("transfer-encoding"))
        if te:
            assert te.strip().lower() == "chunked", f"upstream got Transfer-Encoding {te!r}"
            req.chunked = True
            req.body, req.raw_body, req.trailers = self.read_chunked()
        else:
            cls = req.headers.all("content-length")
            assert len(cls) <= 1, f"upstream got several Content-Length: {cls}"
            n = int(cls[0]) if cls else 0
            req.body = req.raw_body = self.read_exact(n)


def echo_handler(req, conn):
    """Default: 200 with body "<METHOD> <target>" (no body for HEAD)."""
    body = f"{req.method} {req.target}".encode()
    hs = [("Content-Type", "text/plain"), ("X-Upstream", conn.server.name)]
    if req.method == "HEAD":
        return build_response(200, b"", hs + [("Content-Length", str(len(body)))], length=False)
    return build_response(200, body, hs)


class Upstream:
    """An HTTP/1.1 server on 127.0.0.1:<ephemeral port>, one thread per connection
    (host and port pick another address, "::1" an IPv6 one: endpoints of a DNS name
    share one port on several loopback addresses).

    handler(req, conn) -> bytes to send, or None when it sent (or closed) itself.
    on_head(req, conn) runs after the head, before the body is read (e.g. to send
    100 Continue). With read_body=False the handler reads the body itself.
    recv_size / recv_delay make a slow reader. Everything received is recorded:
      accepted   number of accepted connections
      heads      every request head seen (UpRequest), in order
      requests   every request whose body was read completely
      raw        bytes received, per connection id
      errors     exceptions other than EOF/reset/timeout in connection threads
    """

    def __init__(self, handler=None, name="up", on_head=None, read_body=True, recv_size=65536,
                 recv_delay=0.0, rcvbuf=None, host="127.0.0.1", port=0):
        self.handler = handler or echo_handler
        self.name = name
        self.on_head = on_head
        self.read_body = read_body
        self.recv_size = recv_size
        self.recv_delay = recv_delay
        self.rcvbuf = rcvbuf
        self.lock = threading.Lock()
        self.accepted = 0
        self.closed_conns = 0
        self.heads = []
        self.requests = []
        self.raw = {}
        self.errors = []
        self.conns = []
        self.allow_errors = False  # else the harness teardown fails on anything in .errors
        self.release = threading.Event()  # handlers that block wait on this; teardown sets it
        self.got_head = threading.Event()  # set whenever a head arrives
        v6 = ":" in host
        self.lsock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            self.lsock.bind((host, port))
        except OSError:
            self.lsock.close()
            raise
        self.lsock.listen(512)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"[{host}]:{self.port}" if v6 else f"{host}:{self.port}"
        self.stopping = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    # -- recorded state --

    def raw_bytes(self):
        with self.lock:
            return b"".join(self.raw.values())

    def count(self):
        with self.lock:
            return len(self.requests)

    def wait_heads(self, n, timeout=None):
        wait_until(lambda: len(self.heads) >= n, timeout or T(10), what=f"{n} request heads at {self.name}")

    # -- server --

    def _accept_loop(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                cid = self.accepted
                self.accepted += 1
                self.raw[cid] = b""
            s.settimeout(T(30))
            conn = UpConn(self, s, cid)
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        # Record every byte as it arrives: wrap fill().
        orig_fill = conn.fill

        def fill():
            before = len(conn.buf)
            n = orig_fill()
            with self.lock:
                self.raw[conn.conn_id] += bytes(conn.buf[before:])
            return n

        conn.fill = fill
        try:
            while not conn.closed:
                try:
                    head = conn.read_until(b"\r\n\r\n", limit=4 << 20)
                except Closed:
                    break
                req = UpRequest(conn.conn_id, head)
                with self.lock:
                    self.heads.append(req)
                self.got_head.set()
                if self.on_head:
                    self.on_head(req, conn)
                    if conn.closed:
                        break
                if self.read_body:
                    conn.read_body(req)
                    req.complete = True
                    with self.lock:
                        self.requests.append(req)
                out = self.handler(req, conn)
                if conn.closed:
                    break
                if out is not None:
                    conn.send(out)
                    resp_close = re.search(rb"(?im)^connection:[^\r\n]*close", out.split(b"\r\n\r\n", 1)[0])
                    if resp_close:
                        conn.close()
                        break
                if req.wants_close():
                    conn.close()
                    break
        except (Closed, socket.timeout, ConnectionError, BrokenPipeError):
            pass
        except OSError as e:
            if not self.stopping:
                self.errors.append(e)
        except Exception as e:  # noqa: BLE001 - recorded, tests check it
            self.errors.append(e)
        finally:
            if not conn.closed:
                conn.close()
            with self.lock:
                self.closed_conns += 1

    def stop(self):
        self.stopping = True
        self.release.set()
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        try:
            self.lsock.close()
        except OSError:
            pass
        for c in list(self.conns):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------


class Response:
    def __init__(self, version, status, reason, headers):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = b""
        self.raw_body = b""
        self.framing = None  # "length" | "chunked" | "close" | "none"
        self.interim = []  # 1xx responses before this one
        self.trailers = []

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.framing} {self.headers.items!r} body={self.body[:200]!r}>"


class Incomplete(AssertionError):
    """The connection ended before the response was complete."""

    def __init__(self, msg, partial):
        super().__init__(msg)
        self.partial = partial


class Client(Buffered):
    """A raw-socket client: send bytes, read exact responses, watch for close."""

    def __init__(self, port, timeout=None, connect=True):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout or T(10))
        super().__init__(sock)
        self.port = port
        if connect:
            sock.connect(("127.0.0.1", port))

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method="GET", target="/", headers=None, body=None, version="HTTP/1.1", host="test.local"):
        self.send(build_request(method, target, headers, body, version, host))

    def read_response(self, method="GET", stop_at_interim=False):
        """Reads one response; 1xx interim responses are collected in .interim
        (or returned alone with stop_at_interim)."""
        interim = []
        while True:
            try:
                head = self.read_until(b"\r\n\r\n", limit=1 << 20)
            except Closed:
                raise Incomplete(f"connection closed before a response head (buffer {bytes(self.buf)[:200]!r})", None)
            line, headers = parse_head(head)
            m = re.fullmatch(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?", line)
            assert m, f"bad status line {line!r}"
            r = Response(m.group(1), int(m.group(2)), m.group(3) or "", headers)
            if 100 <= r.status < 200 and r.status != 101:
                r.framing = "none"
                if stop_at_interim:
                    return r
                interim.append(r)
                continue
            r.interim = interim
            break
        te = ",".join(headers.all("transfer-encoding"))
        cl = headers.all("content-length")
        try:
            if method == "HEAD" or r.status in (204, 304):
                r.framing = "none"
            elif te:
                assert not cl, f"response has both Transfer-Encoding and Content-Length: {r}"
                if te.split(",")[-1].strip().lower() == "chunked":
                    r.framing = "chunked"
                    r.body, r.raw_body, r.trailers = self.read_chunked()
                else:
                    r.framing = "close"
                    r.body = r.raw_body = self.read_to_eof()
            elif cl:
                assert len(cl) == 1, f"response has {len(cl)} Content-Length headers: {r}"
                r.framing = "length"
                r.body = r.raw_body = self.read_exact(int(cl[0]))
            else:
                r.framing = "close"
                r.body = r.raw_body = self.read_to_eof()
        except Closed:
            r.body = bytes(self.buf)
            raise Incomplete(f"connection closed inside the body ({len(self.buf)} bytes buffered): {r}", r)
        return r

    def wait_closed(self, timeout=None):
        """Waits for the peer to close. Returns "eof", "reset", "data:<bytes>"
        (something arrived instead) or "timeout"."""
        if self.buf:
            return "data:" + repr(bytes(self.buf[:200]))
        deadline = time.monotonic() + (timeout or T(10))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return "timeout"
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return "reset"
            except socket.timeout:
                return "timeout"
            if not data:
                return "eof"
            return "data:" + repr(data[:200])

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def get(port, target="/", method="GET", headers=None, body=None, host="test.local", version="HTTP/1.1"):
    """One request on a fresh connection; returns the Response."""
    c = Client(port)
    try:
        c.request(method, target, headers, body, version, host)
        return c.read_response(method)
    finally:
        c.close()


def assert_gateway_error(r, status):
    """A gateway-made error: exact JSON keys, status, request id = X-Request-Id,
    Content-Type application/json, Content-Length framing."""
    assert r.status == status, r
    assert r.framing == "length", f"gateway error without Content-Length: {r}"
    ctype = r.header("content-type", "")
    assert ctype.split(";")[0].strip() == "application/json", r
    j = r.json()
    assert set(j) == {"error", "status", "request_id"}, j
    assert j["status"] == status, j
    assert isinstance(j["error"], str) and j["error"], j
    rid = r.header("x-request-id")
    assert rid, f"no X-Request-Id on a gateway error: {r}"
    assert j["request_id"] == rid, (j, rid)
    return j


# --------------------------------------------------------------------------
# turnpike process
# --------------------------------------------------------------------------


class Turnpike:
    """One turnpike process. config: the YAML mapping as a dict, without
    listeners/admin (added here with fresh ports). Written as JSON, which is
    YAML 1.2."""

    def __init__(self, tmp_path, config, admin=True, name="tp"):
        assert BIN, "TURNPIKE_BIN is not set"
        self.tmp_path = tmp_path
        self.name = name
        self.user_config = dict(config)
        self.with_admin = admin
        self.proc = None
        self.rc = None
        self.stderr_path = tmp_path / f"{name}.stderr"
        self.stdout_path = tmp_path / f"{name}.stdout"
        self.config_path = tmp_path / f"{name}.yaml"
        self.checked = False

    def _write_config(self):
        self.port = reserve_port()
        self.admin_port = reserve_port() if self.with_admin else None
        cfg = {"workers": 2}
        cfg.update(self.user_config)
        cfg.setdefault("shutdown", {"drain_timeout": "10s"})
        cfg["listeners"] = [{"name": "public", "address": f"127.0.0.1:{self.port}"}]
        if self.with_admin:
            cfg["admin"] = {"address": f"127.0.0.1:{self.admin_port}"}
        self.config = cfg
        self.config_path.write_text(json.dumps(cfg, indent=1) + "\n")

    def start(self):
        for attempt in range(4):
            self._write_config()
            self.stderr_f = open(self.stderr_path, "ab")
            self.stdout_f = open(self.stdout_path, "ab")
            self.proc = subprocess.Popen([BIN, "-c", str(self.config_path)], stdout=self.stdout_f,
                                         stderr=self.stderr_f, stdin=subprocess.DEVNULL)
            try:
                self._wait_ready()
                return self
            except _EarlyExit as e:
                if "in use" in self.stderr() and attempt < 3:
                    continue  # a port race with another test: pick new ports
                raise AssertionError(f"turnpike exited with {e.rc} at startup:\n{self.stderr()}")
        raise AssertionError("could not start turnpike")

    def _wait_ready(self):
        deadline = time.monotonic() + T(20)
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.rc = rc
                raise _EarlyExit(rc)
            if self.with_admin:
                try:
                    st, _ = self.admin_get("/readyz", timeout=1)
                    if st == 200:
                        return
                except OSError:
                    pass
            else:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"turnpike not ready within {T(20)}s:\n{self.stderr()}")
            time.sleep(0.02)

    def admin_get(self, path, timeout=None):
        """(status, body bytes) of GET <path> on the admin listener."""
        c = Client(self.admin_port, timeout=timeout or T(10))
        try:
            c.request("GET", path, host=f"127.0.0.1:{self.admin_port}", headers=[("Connection", "close")])
            r = c.read_response()
            return r.status, r.body
        finally:
            c.close()

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=None):
        """Waits for exit; returns the exit code (AssertionError if still running)."""
        try:
            self.rc = self.proc.wait(timeout=timeout or T(20))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"turnpike still running after {timeout or T(20)}s:\n{self.stderr()[-3000:]}")
        return self.rc

    def stop(self, timeout=None):
        """SIGTERM (when still running) and wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.rc = self.proc.wait(timeout=timeout or T(30))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"turnpike did not exit within {timeout or T(30)}s of SIGTERM:\n"
                                 f"{self.stderr()[-3000:]}")
        finally:
            for f in (self.stderr_f, self.stdout_f):
                try:
                    f.close()
                except Exception:  # noqa: BLE001
                    pass
        return self.rc

    def check_clean(self):
        """Asserts exit code 0 and no sanitizer report in stderr."""
        self.checked = True
        err = self.stderr()
        bad = [ln for ln in err.splitlines() if any(m in ln for m in SANITIZER_MARKERS)]
        assert not bad, f"sanitizer report from turnpike:\n{err[-6000:]}"
        assert self.rc == 0, f"turnpike exited with {self.rc}:\n{err[-3000:]}"


class _EarlyExit(Exception):
    def __init__(self, rc):
        super().__init__(rc)
        self.rc = rc


class Harness:
    """What the `h` fixture gives a test."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.upstreams = []
        self.turnpikes = []
        self.clients = []

    def upstream(self, *args, **kw):
        up = Upstream(*args, **kw)
        self.upstreams.append(up)
        return up

    def turnpike(self, config, admin=True):
        tp = Turnpike(self.tmp_path, config, admin=admin, name=f"tp{len(self.turnpikes)}")
        self.turnpikes.append(tp)
        return tp.start()

    def client(self, port, timeout=None):
        c = Client(port, timeout)
        self.clients.append(c)
        return c

    def teardown(self):
        errors = []
        for up in self.upstreams:
            up.release.set()
        for c in self.clients:
            c.close()
        for tp in self.turnpikes:
            try:
                tp.stop()
                tp.check_clean()
            except AssertionError as e:
                errors.append(e)
        release_ports()
        for up in self.upstreams:
            up.stop()
            if up.errors and not up.allow_errors:
                # e.g. the gateway sent the upstream something that is not valid HTTP/1.1
                errors.append(AssertionError(f"upstream {up.name} saw errors: {up.errors!r}"))
        if errors:
            raise errors[0]


def upstream_cfg(name, *ups, weights=None, **extra):
    """An upstreams[] entry for Upstream objects (or "ip:port" strings)."""
    eps = []
    for i, u in enumerate(ups):
        ep = {"address": u if isinstance(u, str) else u.addr}
        if weights:
            ep["weight"] = weights[i]
        eps.append(ep)
    d = {"name": name, "endpoints": eps}
    d.update(extra)
    return d


def raise_nofile(want):
    """Raises RLIMIT_NOFILE (soft) towards want, up to the hard limit; returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

