#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Soak: runs one real turnpike process for a fixed time under mixed load and
faults, classifies the outcome of every request, samples the process's memory
and descriptors, and says whether it passed.

    /usr/bin/python3 scripts/soak.py --bin build/rel/turnpike --duration 1800
    /usr/bin/python3 scripts/soak.py --bin build/asan/turnpike --duration 120 --short

What runs (everything on 127.0.0.1, ports chosen at run time):
  gateway    the binary under test: a plain and a TLS listener (certificates made
             with the openssl command line), admin listener, JSON access log;
             three upstream pools:
               stable   2 endpoints, never disturbed
               restart  1 endpoint whose process is killed (SIGKILL) and started
                        again every --restart-every seconds
               flap     2 endpoints, health checks on; the second goes down for
                        --flap-every seconds, then up for as long, and so on
  upstreams  this script again (`soak.py upstream`), one cheap asyncio HTTP/1.1
             server process per endpoint: answers a deterministic body of the
             requested size (Content-Length or chunked) and the SHA-256 of the
             request body it received
  clients    --clients asyncio tasks in this process sharing one pacer
             (--rate requests/s, so load generation stays bounded in CPU), each
             looping over: keep-alive sessions, single requests on new
             connections, pipelined bursts, uploads (Content-Length and
             chunked), chunked downloads, clients aborting mid-request and
             mid-response; a quarter of the connections use TLS
  reloads    every --reload-every seconds the config file is replaced by the
             other of two variants (they differ in the x-soak-config response
             header) and SIGHUP sent; the reload counts as verified when /config
             shows the next generation and a new request carries the new header
  sampler    VmRSS (/proc/PID/status) and the descriptor count (/proc/PID/fd)
             every --sample-every seconds

Outcome classes (each request gets exactly one):
  ok           the response was complete and verified (status 200, body bytes,
               upload digest, request id, a known x-soak-config value)
  aborted      the client aborted it on purpose (mid-request, mid-response)
  explained    it failed (502/503/504, or the connection ended short of a
               complete response) while the endpoint it went to (from the
               access log, by request id) was inside a fault window: from the
               kill/down moment until --grace seconds after it was back up
  unexplained  everything else; each one is printed

Pass criteria:
  - the gateway is alive at the end, exits 0 on SIGTERM, and its stderr holds no
    sanitizer report;
  - 0 unexplained failures and every reload verified;
  - RSS and descriptor count are flat over the last two thirds of the run: the
    spread (max - min) of those samples is at most --rss-spread MiB / --fd-spread
    descriptors, and the least-squares slope is at most --rss-slope MiB/min /
    --fd-slope descriptors/min (one-sided: so a slow monotonic leak fails even
    inside the spread bound);
  - the descriptors of the idle gateway (no client connection; idle pooled
    upstream connections subtracted) are the same after the load as before it,
    within 2 (the samples above include whatever connections are open at that
    instant; this is the exact leak check);
  - the number of series in /metrics is the same at the end as after warm-up
    (label values come from the configuration only; the warm-up, one restart and
    one flap cycle, lets every status class the faults produce appear once).

Before the clock starts, --prime-mib MiB (384) go through the gateway in 2 MiB
responses: the provided-buffer rings (64 MiB per worker) are cycled FIFO, so
their pages are touched one by one during the first minute of traffic, which
would look like growth.

Exit code 0 when it passed, 1 otherwise. `run()` is what
tests/integration/test_soak.py calls.
"""
import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "runtime error:",
    "LeakSanitizer",
    "WARNING: ThreadSanitizer",
    "ERROR: ThreadSanitizer",
)

# --------------------------------------------------------------------------
# Deterministic bodies (both sides compute them)
# --------------------------------------------------------------------------

_blocks = {}


def body_bytes(seed, n):
    """n bytes derived from seed: a 64-byte block repeated (cheap to make and check)."""
    blk = _blocks.get(seed)
    if blk is None:
        blk = hashlib.sha256(b"soak%d" % seed).digest() * 2
        if len(_blocks) < 4096:
            _blocks[seed] = blk
    reps = n // 64 + 1
    return (blk * reps)[:n]


def chunk_encode(data, rnd):
    out = bytearray()
    i = 0
    while i < len(data):
        n = rnd.choice((1, 7, 100, 1000, 4096, 16384, 65536))
        piece = data[i : i + n]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        i += n
    out += b"0\r\n\r\n"
    return bytes(out)


# --------------------------------------------------------------------------
# Upstream server (a separate process: `soak.py upstream --port P --name N`)
# --------------------------------------------------------------------------


async def _read_chunked(reader):
    h = hashlib.sha256()
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return h.hexdigest(), total
        h.update(await reader.readexactly(size))
        total += size
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk without CRLF")


async def _upstream_conn(reader, writer, name):
    rnd = random.Random()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            if hdrs.get("transfer-encoding", "").lower() == "chunked":
                digest, blen = await _read_chunked(reader)
            else:
                blen = int(hdrs.get("content-length", "0"))
                h = hashlib.sha256()
                left = blen
                while left:
                    piece = await reader.read(min(left, 65536))
                    if not piece:
                        raise asyncio.IncompleteReadError(b"", left)
                    h.update(piece)
                    left -= len(piece)
                digest = h.hexdigest()
            path, _, query = target.partition("?")
            q = dict(p.partition("=")[::2] for p in query.split("&") if p)
            size = int(q.get("n", "0"))
            seed = int(q.get("s", "0"))
            chunked = q.get("c") == "1"
            body = b"ok\n" if path == "/healthz" else body_bytes(seed, size)
            out = [
                b"HTTP/1.1 200 OK\r\nX-Upstream: ",
                name.encode(),
                b"\r\nX-Body-Sha: ",
                digest.encode(),
                b"\r\nX-Body-Len: %d\r\n" % blen,
            ]
            if chunked and method != "HEAD":
                out.append(b"Transfer-Encoding: chunked\r\n\r\n")
                out.append(chunk_encode(body, rnd))
            else:
                out.append(b"Content-Length: %d\r\n\r\n" % len(body))
                if method != "HEAD":
                    out.append(body)
            writer.write(b"".join(out))
            await writer.drain()
            if "close" in hdrs.get("connection", "").lower():
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass


def upstream_main(port, name):
    async def main():
        srv = await asyncio.start_server(lambda r, w: _upstream_conn(r, w, name), "127.0.0.1", port,
                                         reuse_address=True, backlog=512, limit=1 << 20)
        async with srv:
            await srv.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(main())


class UpstreamProc:
    """One upstream endpoint: a child process on a fixed port, killable and restartable."""

    def __init__(self, name, port, log_dir):
        self.name = name
        self.port = port
        self.addr = f"127.0.0.1:{port}"
        self.log = open(os.path.join(log_dir, f"up-{name}.log"), "ab")
        self.proc = None

    def start(self, timeout=10):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "upstream", "--port",
                                      str(self.port), "--name", self.name], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"upstream {self.name} exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"upstream {self.name} not listening within {timeout}s")
            time.sleep(0.02)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self):
        self.kill()
        self.log.close()


# --------------------------------------------------------------------------
# Gateway process and its configuration
# --------------------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def make_pki(d):
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=120)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=turnpike soak ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=soak.test")
    with open(os.path.join(d, "srv.ext"), "w") as f:
        f.write("subjectAltName=DNS:soak.test,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem",
        "-days", "2", "-extfile", "srv.ext")


ROUTES = ("stable", "restart", "flap")
VARIANTS = ("a", "b")  # the two reload variants: value of x-soak-config


def gateway_config(o, ups, variant):
    hc = {"path": "/healthz", "interval": "500ms", "timeout": "400ms", "healthy_after": 2, "unhealthy_after": 2}
    resp_headers = {"set": {"x-soak-config": variant}}
    return {
        "workers": 2,
        "listeners": [
            {"name": "plain", "address": f"127.0.0.1:{o['port']}"},
            {"name": "tls", "address": f"127.0.0.1:{o['tls_port']}",
             "tls": {"certificates": [{"cert": os.path.join(o["dir"], "srv.pem"),
                                       "key": os.path.join(o["dir"], "srv.key")}]}},
        ],
        "admin": {"address": f"127.0.0.1:{o['admin_port']}"},
        "access_log": {"path": o["access_log"], "format": "json"},
        "timeouts": {"upstream_response": "10s"},
        "shutdown": {"drain_timeout": "10s"},
        "upstreams": [
            {"name": "stable", "endpoints": [{"address": ups["s1"].addr}, {"address": ups["s2"].addr}],
             "keepalive": 8},
            {"name": "restart", "endpoints": [{"address": ups["r1"].addr}], "keepalive": 8},
            {"name": "flap", "endpoints": [{"address": ups["f1"].addr}, {"address": ups["f2"].addr}],
             "keepalive": 8, "health_check": hc},
        ],
        "routes": [
            {"name": r, "match": {"path_prefix": f"/{r}"}, "upstream": r, "response_headers": resp_headers}
            for r in ROUTES
        ] + [{"name": "ping", "match": {"path": "/ping"}, "direct_response": {"status": 200, "body": "pong\n"}}],
    }


def write_config(path, cfg):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)  # the gateway never reads a half-written file


def proc_sample(pid):
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                rss = int(ln.split()[1])  # kB
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------
# Small async HTTP/1.1 client
# --------------------------------------------------------------------------


class Fail(Exception):
    """A request that did not complete as expected; .kind says how."""

    def __init__(self, kind, detail, status=None):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.reuse = False  # the connection is still usable (the response was complete)


async def read_head(reader):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        raise Fail("closed", f"closed before a response head ({len(e.partial)} bytes)")
    except asyncio.LimitOverrunError:
        raise Fail("bad", "response head too long")
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise Fail("bad", f"bad status line {lines[0]!r}")
    hdrs = {}
    for ln in lines[1:]:
        k, sep, v = ln.partition(":")
        if not sep:
            raise Fail("bad", f"bad header line {ln!r}")
        k = k.strip().lower()
        if k in hdrs and k in ("content-length", "transfer-encoding", "x-soak-config", "x-request-id"):
            raise Fail("bad", f"header {k} twice")
        hdrs[k] = v.strip()
    return int(parts[1]), hdrs


async def read_body(reader, hdrs, limit=None):
    """The body per the framing; with limit, stops after about limit bytes (returns what it has)."""
    try:
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return bytes(out)
                out += await reader.readexactly(size)
                if await reader.readexactly(2) != b"\r\n":
                    raise Fail("bad", "chunk not followed by CRLF")
                if limit and len(out) >= limit:
                    return bytes(out)
        if "content-length" in hdrs:
            n = int(hdrs["content-length"])
            if limit:
                return await reader.readexactly(min(n, limit))
            return await reader.readexactly(n)
        raise Fail("bad", "response without framing")
    except asyncio.IncompleteReadError as e:
        raise Fail("short", f"closed inside the body after {len(e.partial)} bytes")
    except ValueError as e:
        raise Fail("bad", f"bad chunk framing: {e}")


# --------------------------------------------------------------------------
# The soak
# --------------------------------------------------------------------------


class Soak:
    def __init__(self, o):
        self.o = o
        self.rnd = random.Random(o["seed"])
        self.results = []  # (t0, t1, route, rid, outcome, kind, status, detail)
        self.faults = {}  # endpoint address -> [[t_down, t_up or None]]
        self.samples = []  # (t, rss kB, fds)
        self.reloads = {"sent": 0, "verified": 0, "failed": []}
        self.seq = 0
        self.next_slot = 0.0
        self.stop_at = 0.0
        self.stopping = False

    # -- bookkeeping --

    def rid(self):
        self.seq += 1
        return f"soak-{self.o['seed']}-{self.seq}"

    def record(self, t0, route, rid, outcome, kind="", status=None, detail=""):
        self.results.append((t0, time.monotonic(), route, rid, outcome, kind, status, detail))

    async def pace(self):
        """One slot of the global request rate."""
        now = time.monotonic()
        self.next_slot = max(self.next_slot + 1.0 / self.o["rate"], now - 1.0)
        if self.next_slot > now:
            await asyncio.sleep(self.next_slot - now)

    # -- connections --

    async def connect(self, tls):
        if tls:
            r, w = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", self.o["tls_port"], ssl=self.ssl_ctx, server_hostname="soak.test", limit=1 << 20),
                self.o["timeout"])
        else:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.o["port"], limit=1 << 20),
                                          self.o["timeout"])
        return r, w

    @staticmethod
    def close(w, rst=False):
        try:
            if rst:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
            else:
                w.close()
        except Exception:  # noqa: BLE001
            pass

    # -- one request spec --

    def spec(self, route=None, upload=None, resp=None):
        rnd = self.rnd
        route = route or rnd.choice(("stable", "stable", "restart", "flap"))
        seed = rnd.randrange(1 << 30)
        size = resp if resp is not None else rnd.choice((0, 10, 1000, 5000, 20000, 70000, 250000))
        chunked_resp = rnd.random() < 0.3
        if upload is None:
            upload = rnd.random() < 0.35
        body = None
        chunked_req = False
        if upload:
            body = body_bytes(seed ^ 0x5A5A, rnd.choice((1, 100, 3000, 40000, 200000)))
            chunked_req = rnd.random() < 0.5
        return {"route": route, "seed": seed, "size": size, "cresp": chunked_resp, "body": body,
                "creq": chunked_req, "rid": self.rid()}

    def request_bytes(self, s, close=False, cl_override=None):
        method = "POST" if s["body"] is not None else "GET"
        target = f"/{s['route']}/item?n={s['size']}&s={s['seed']}&c={1 if s['cresp'] else 0}"
        hs = [f"{method} {target} HTTP/1.1", "Host: soak.test", f"X-Request-Id: {s['rid']}"]
        if close:
            hs.append("Connection: close")
        payload = b""
        if s["body"] is not None:
            if s["creq"]:
                hs.append("Transfer-Encoding: chunked")
                payload = chunk_encode(s["body"], self.rnd)
            else:
                hs.append(f"Content-Length: {cl_override or len(s['body'])}")
                payload = s["body"]
        return ("\r\n".join(hs) + "\r\n\r\n").encode() + payload

    def verify(self, s, status, hdrs, body):
        if status != 200:
            raise Fail("status", f"status {status} body {body[:200]!r}", status)
        if hdrs.get("x-request-id") != s["rid"]:
            raise Fail("bad", f"x-request-id {hdrs.get('x-request-id')!r} != {s['rid']}")
        if hdrs.get("x-soak-config") not in VARIANTS:
            raise Fail("bad", f"x-soak-config {hdrs.get('x-soak-config')!r}")
        if body != body_bytes(s["seed"], s["size"]):
            raise Fail("bad", f"response body differs ({len(body)} bytes, want {s['size']})")
        if s["body"] is not None:
            want = hashlib.sha256(s["body"]).hexdigest()
            if hdrs.get("x-body-sha") != want:
                raise Fail("bad", f"upstream got {hdrs.get('x-body-len')} body bytes with another digest")

    async def exchange(self, r, s):
        """Reads and verifies the response to s; returns True if the connection may be reused.
        A complete response that fails verification raises Fail with .reuse set, so the
        requests behind it on the connection (pipelined or next) still count on their own."""
        status, hdrs = await read_head(r)
        body = await read_body(r, hdrs)
        reuse = "close" not in hdrs.get("connection", "").lower()
        try:
            self.verify(s, status, hdrs, body)
        except Fail as e:
            e.reuse = reuse
            raise
        return reuse

    # -- scenarios (each records the outcome of every request it starts) --

    async def keepalive_session(self, tls):
        n = self.rnd.randint(2, 8)
        r = w = None
        try:
            for i in range(n):
                await self.pace()
                s = self.spec()
                t0 = time.monotonic()
                try:
                    if w is None:
                        r, w = await self.connect(tls)
                    w.write(self.request_bytes(s))
                    reuse = await asyncio.wait_for(self.exchange(r, s), self.o["timeout"])
                    self.record(t0, s["route"], s["rid"], "ok")
                except (Fail, OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                    self.record(t0, s["route"], s["rid"], "fail", *self.describe(e))
                    reuse = getattr(e, "reuse", False)
                if not reuse:
                    if w is not None:
                        self.close(w)
                    r = w = None
        finally:
            if w is not None:
                self.close(w)

    async def single(self, tls):
        await self.pace()
        s = self.spec()
        t0 = time.monotonic()
        w = None
        try:
            r, w = await self.connect(tls)
            w.write(self.request_bytes(s, close=True))
            await asyncio.wait_for(self.exchange(r, s), self.o["timeout"])
            self.record(t0, s["route"], s["rid"], "ok")
        except (Fail, OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            self.record(t0, s["route"], s["rid"], "fail", *self.describe(e))
        finally:
            if w is not None:
                self.close(w)

    async def pipelined(self, tls):
        n = self.rnd.randint(2, 6)
        specs = []
        for _ in range(n):
            await self.pace()
            specs.append(self.spec(upload=self.rnd.random() < 0.2, resp=self.rnd.choice((0, 100, 3000, 30000))))
        t0 = time.monotonic()
        w = None
        done = 0
        try:
            r, w = await self.connect(tls)
            w.write(b"".join(self.request_bytes(s) for s in specs))
            for s in specs:
                try:
                    reuse = await asyncio.wait_for(self.exchange(r, s), self.o["timeout"])
                    self.record(t0, s["route"], s["rid"], "ok")
                except Fail as e:
                    if not e.reuse:
                        raise
                    # a complete error answer (a 502 of a restarted endpoint): the next ones follow
                    self.record(t0, s["route"], s["rid"], "fail", *self.describe(e))
                    reuse = True
                done += 1
                if not reuse:
                    break
            # the gateway closed after a response; the requests behind it were never answered
            for s in specs[done:]:
                self.record(t0, s["route"], s["rid"], "fail", "closed", None, "pipelined request after a close")
        except (Fail, OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            kind, status, detail = self.describe(e)
            cause = specs[done]["rid"]
            self.record(t0, specs[done]["route"], cause, "fail", kind, status, detail)
            # the requests pipelined behind a failed one share its fate (the connection is gone)
            for s in specs[done + 1:]:
                self.record(t0, s["route"], s["rid"], "fail", "after", None, cause)
        finally:
            if w is not None:
                self.close(w)

    async def abort_mid_request(self, tls):
        await self.pace()
        s = self.spec(upload=True)
        s["body"] = body_bytes(s["seed"], 200000)
        s["creq"] = self.rnd.random() < 0.5
        t0 = time.monotonic()
        w = None
        try:
            r, w = await self.connect(tls)
            data = self.request_bytes(s)
            w.write(data[: self.rnd.randint(len(data) // 10, len(data) // 2)])
            await asyncio.wait_for(w.drain(), self.o["timeout"])
            await asyncio.sleep(self.rnd.random() * 0.05)
            self.close(w, rst=self.rnd.random() < 0.5)
            w = None
            self.record(t0, s["route"], s["rid"], "aborted")
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            self.record(t0, s["route"], s["rid"], "fail", *self.describe(e))
        finally:
            if w is not None:
                self.close(w)

    async def abort_mid_response(self, tls):
        await self.pace()
        s = self.spec(upload=False, resp=2 << 20)
        t0 = time.monotonic()
        w = None
        try:
            r, w = await self.connect(tls)
            w.write(self.request_bytes(s))
            status, hdrs = await asyncio.wait_for(read_head(r), self.o["timeout"])
            if status != 200:
                body = await asyncio.wait_for(read_body(r, hdrs), self.o["timeout"])
                raise Fail("status", f"status {status} body {body[:200]!r}", status)
            part = await asyncio.wait_for(read_body(r, hdrs, limit=self.rnd.choice((1, 16384, 200000))),
                                          self.o["timeout"])
            if part != body_bytes(s["seed"], s["size"])[: len(part)]:
                raise Fail("bad", "response body differs")
            self.close(w, rst=self.rnd.random() < 0.5)
            w = None
            self.record(t0, s["route"], s["rid"], "aborted")
        except (Fail, OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            self.record(t0, s["route"], s["rid"], "fail", *self.describe(e))
        finally:
            if w is not None:
                self.close(w)

    @staticmethod
    def describe(e):
        if isinstance(e, Fail):
            return e.kind, e.status, e.detail
        if isinstance(e, asyncio.TimeoutError):
            return "timeout", None, "no answer in time"
        if isinstance(e, asyncio.IncompleteReadError):
            return "short", None, f"closed after {len(e.partial)} bytes"
        return "error", None, f"{type(e).__name__}: {e}"

    async def client(self, idx):
        rnd = random.Random(self.o["seed"] * 1000 + idx)
        scenarios = ((self.keepalive_session, 30), (self.single, 20), (self.pipelined, 15),
                     (self.abort_mid_request, 4), (self.abort_mid_response, 4))
        funcs = [f for f, _ in scenarios]
        weights = [wt for _, wt in scenarios]
        while time.monotonic() < self.stop_at:
            f = rnd.choices(funcs, weights)[0]
            await f(rnd.random() < 0.25)

    # -- reloads, faults, samples --

    async def admin_get(self, path):
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.o["admin_port"], limit=1 << 22),
                                      self.o["timeout"])
        try:
            w.write(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
            status, hdrs = await asyncio.wait_for(read_head(r), self.o["timeout"])
            body = await asyncio.wait_for(read_body(r, hdrs), self.o["timeout"])
            return status, body
        finally:
            self.close(w)

    async def generation(self):
        st, body = await self.admin_get("/config")
        return json.loads(body)["generation"] if st == 200 else None

    async def metric_series(self):
        st, body = await self.admin_get("/metrics")
        lines = [ln for ln in body.decode().splitlines() if ln and not ln.startswith("#")]
        return len(lines), lines

    async def reloader(self):
        gen = await self.generation()
        k = 0
        while time.monotonic() < self.stop_at - self.o["reload_every"]:
            await asyncio.sleep(self.o["reload_every"])
            k += 1
            variant = VARIANTS[k % 2]
            write_config(self.o["config"], gateway_config(self.o, self.ups, variant))
            self.gw.send_signal(signal.SIGHUP)
            self.reloads["sent"] += 1
            want = gen + 1
            deadline = time.monotonic() + 10 * self.o["slow"]
            try:
                while True:
                    g = await self.generation()
                    if g is not None and g >= want:
                        break
                    if time.monotonic() > deadline:
                        raise Fail("reload", f"generation {g}, want {want}")
                    await asyncio.sleep(0.02)
                gen = g
                # a request started now must see the new configuration
                r, w = await self.connect(False)
                try:
                    w.write(b"GET /stable/probe?n=0 HTTP/1.1\r\nHost: soak.test\r\nConnection: close\r\n\r\n")
                    status, hdrs = await asyncio.wait_for(read_head(r), self.o["timeout"])
                finally:
                    self.close(w)
                if status != 200 or hdrs.get("x-soak-config") != variant:
                    raise Fail("reload", f"probe after generation {g}: {status} x-soak-config="
                                         f"{hdrs.get('x-soak-config')!r}, want {variant!r}")
                self.reloads["verified"] += 1
            except (Fail, OSError, asyncio.TimeoutError, ValueError) as e:
                self.reloads["failed"].append((round(time.monotonic() - self.t_start, 1), str(e)))
                g = await self.generation()
                gen = g if g is not None else gen

    def fault(self, key, down):
        now = time.monotonic()
        addr = self.ups[key].addr
        if down:
            self.faults.setdefault(addr, []).append([now, None])
        else:
            self.faults[addr][-1][1] = now

    async def restarter(self):
        while True:
            await asyncio.sleep(self.o["restart_every"])
            if time.monotonic() > self.stop_at - 2:
                return
            self.fault("r1", True)
            await asyncio.to_thread(self.ups["r1"].kill)
            await asyncio.to_thread(self.ups["r1"].start)
            self.fault("r1", False)

    async def flapper(self):
        while True:
            await asyncio.sleep(self.o["flap_every"])
            if time.monotonic() > self.stop_at - 2:
                return
            self.fault("f2", True)
            await asyncio.to_thread(self.ups["f2"].kill)
            await asyncio.sleep(self.o["flap_every"])
            await asyncio.to_thread(self.ups["f2"].start)
            self.fault("f2", False)

    async def sampler(self):
        while True:
            try:
                rss, fds = proc_sample(self.gw.pid)
            except OSError:
                return
            self.samples.append((time.monotonic() - self.t_start, rss, fds))
            if time.monotonic() >= self.stop_at:
                return
            await asyncio.sleep(min(self.o["sample_every"], max(0.0, self.stop_at - time.monotonic())))

    async def prime(self):
        """Moves a few times the provided-buffer rings' size (64 MiB per worker, FIFO) through
        the gateway in 2 MiB responses, so every receive buffer has been touched before the
        clock starts: RSS then starts at its working size and the flatness check sees growth
        that continues, not the rings being filled in once."""
        n = int(self.o["prime_mib"] // 2)
        queue = list(range(n))

        async def worker():
            while queue:
                queue.pop()
                s = self.spec(route="stable", upload=False, resp=2 << 20)
                r, w = await self.connect(False)
                try:
                    w.write(self.request_bytes(s, close=True))
                    await asyncio.wait_for(self.exchange(r, s), self.o["timeout"])
                finally:
                    self.close(w)

        await asyncio.gather(*(worker() for _ in range(4)))

    async def quiet_fds(self):
        """Descriptors of the gateway while it has no client connection, minus its idle pooled
        upstream connections: what it holds for itself (listeners, rings, log, eventfds). The
        smallest of five readings, since a health check may hold one for a moment."""
        vals = []
        deadline = time.monotonic() + 20 * self.o["slow"]
        while len(vals) < 5 and time.monotonic() < deadline:
            _, lines = await self.metric_series()
            active = idle = 0
            for ln in lines:
                if ln.startswith("turnpike_connections_active{"):
                    active += int(float(ln.split()[-1]))
                elif ln.startswith("turnpike_upstream_pool_idle_connections{"):
                    idle += int(float(ln.split()[-1]))
            await asyncio.sleep(0.2)  # the admin connection of that scrape is closed by then
            if active == 0:
                vals.append(proc_sample(self.gw.pid)[1] - idle)
        return min(vals) if vals else None

    async def main(self):
        self.rss_before_prime = proc_sample(self.gw.pid)[0]
        if self.o["prime_mib"]:
            await self.prime()
        self.fds_quiet_start = await self.quiet_fds()
        self.t_start = time.monotonic()
        self.stop_at = self.t_start + self.o["duration"]
        self.series_start = (await self.metric_series())[0]
        bg = [asyncio.create_task(c) for c in (self.reloader(), self.restarter(), self.flapper(), self.sampler())]
        clients = [asyncio.create_task(self.client(i)) for i in range(self.o["clients"])]
        warm = self.o["warmup"]
        await asyncio.sleep(warm)
        self.series_warm, self.series_warm_lines = await self.metric_series()
        await asyncio.gather(*clients)
        for t in bg:
            t.cancel()
        await asyncio.gather(*bg, return_exceptions=True)
        # the last fault window closes once its endpoint is up again
        for key in ("r1", "f2"):
            up = self.ups[key]
            if up.proc is None or up.proc.poll() is not None:
                await asyncio.to_thread(up.start)
                self.fault(key, False)
        self.fds_quiet_end = await self.quiet_fds()
        self.series_end, self.series_end_lines = await self.metric_series()
        self.reload_failures_metric = 0
        for ln in self.series_end_lines:
            if ln.startswith('turnpike_config_reloads_total{result="failure"}'):
                self.reload_failures_metric = int(float(ln.split()[-1]))


# --------------------------------------------------------------------------
# Classification and verdict
# --------------------------------------------------------------------------


def load_access_log(path):
    out = {}
    try:
        with open(path, "rb") as f:
            for ln in f:
                try:
                    j = json.loads(ln)
                except ValueError:
                    continue
                rid = j.get("request_id")
                if rid and rid.startswith("soak-"):
                    out[rid] = (j.get("status"), j.get("endpoint"), j.get("upstream"))
    except OSError:
        pass
    return out


def classify(soak, access):
    o = soak.o
    up_eps = {"stable": [soak.ups[k].addr for k in ("s1", "s2")], "restart": [soak.ups["r1"].addr],
              "flap": [soak.ups[k].addr for k in ("f1", "f2")]}
    counts = {"ok": 0, "aborted": 0, "explained": 0, "unexplained": 0}
    by_route = {r: dict(counts) for r in ROUTES}
    unexplained = []
    explained_kinds = {}

    def in_window(addr, t0, t1):
        for down, up in soak.faults.get(addr, ()):
            end = (up if up is not None else float("inf")) + o["grace"]
            if t0 <= end and t1 >= down - 0.1:
                return True
        return False

    cls_of = {}
    for t0, t1, route, rid, outcome, kind, status, detail in soak.results:
        cls = outcome
        if outcome == "fail" and kind == "after":
            # pipelined behind request <detail>, which failed first: the same class
            cls = cls_of.get(detail, "unexplained")
            if cls == "explained":
                explained_kinds[f"{route}:after"] = explained_kinds.get(f"{route}:after", 0) + 1
        elif outcome == "fail":
            cls = "unexplained"
            explainable = kind in ("closed", "short", "timeout", "error") or (kind == "status" and status in (
                502, 503, 504))
            if explainable:
                entry = access.get(rid)
                eps = [entry[1]] if entry and entry[1] else up_eps[route]
                if any(in_window(ep, t0, t1) for ep in eps):
                    cls = "explained"
                    k = f"{route}:{kind}{'' if status is None else ' ' + str(status)}"
                    explained_kinds[k] = explained_kinds.get(k, 0) + 1
            if cls == "unexplained":
                entry = access.get(rid)
                unexplained.append((round(t0 - soak.t_start, 2), round(t1 - soak.t_start, 2), route, rid, kind,
                                    status, detail, entry))
        if cls == "unexplained" and kind == "after":
            unexplained.append((round(t0 - soak.t_start, 2), round(t1 - soak.t_start, 2), route, rid, kind,
                                status, f"pipelined behind {detail}", access.get(rid)))
        cls_of[rid] = cls
        counts[cls] += 1
        by_route[route][cls] += 1
    return counts, by_route, unexplained, explained_kinds


def lsq_slope(xs, ys):
    n = len(xs)
    mx = sum(xs) / n
    my = sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def flatness(samples, idx, scale):
    """(spread, slope per minute) of column idx over the last two thirds of samples."""
    t_end = samples[-1][0]
    tail = [s for s in samples if s[0] >= t_end / 3.0]
    ys = [s[idx] / scale for s in tail]
    xs = [s[0] / 60.0 for s in tail]
    if len(tail) < 3:
        return None, None, len(tail)
    return max(ys) - min(ys), lsq_slope(xs, ys), len(tail)


def run(o, out=print):
    """Runs the soak with options o (dict, see parse_args); returns (passed, report dict)."""
    o = dict(o)
    own_dir = o.get("dir") is None
    if own_dir:
        o["dir"] = tempfile.mkdtemp(prefix="soak-")
    d = o["dir"]
    make_pki(d)
    o.update(port=free_port(), tls_port=free_port(), admin_port=free_port(),
             config=os.path.join(d, "turnpike.yaml"), access_log=os.path.join(d, "access.log"))
    soak = Soak(o)
    ups = {k: UpstreamProc(k, free_port(), d) for k in ("s1", "s2", "r1", "f1", "f2")}
    soak.ups = ups
    err_path = os.path.join(d, "turnpike.stderr")
    gw = None
    report = {}
    try:
        for u in ups.values():
            u.start()
        write_config(o["config"], gateway_config(o, ups, VARIANTS[0]))
        env = dict(os.environ)
        if o.get("asan_options"):
            env["ASAN_OPTIONS"] = o["asan_options"]
        with open(err_path, "wb") as err:
            gw = subprocess.Popen([o["bin"], "-c", o["config"]], stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                  env=env)
        soak.gw = gw
        deadline = time.monotonic() + 30 * o["slow"]
        while True:
            if gw.poll() is not None:
                raise RuntimeError(f"turnpike exited with {gw.returncode} at start:\n{open(err_path).read()[-3000:]}")
            try:
                c = socket.create_connection(("127.0.0.1", o["admin_port"]), timeout=1)
                c.sendall(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                if c.recv(64).startswith(b"HTTP/1.1 200"):
                    c.close()
                    break
                c.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("turnpike not ready")
            time.sleep(0.05)
        ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))
        soak.ssl_ctx = ctx
        out(f"soak: {o['duration']}s, {o['clients']} clients, {o['rate']} req/s, reload every {o['reload_every']}s, "
            f"restart every {o['restart_every']}s, flap every {o['flap_every']}s, samples every {o['sample_every']}s,"
            f" bin {o['bin']}, dir {d}")
        asyncio.run(soak.main())
        alive = gw.poll() is None
        final = proc_sample(gw.pid) if alive else (None, None)
    finally:
        rc = None
        if gw is not None:
            if gw.poll() is None:
                gw.send_signal(signal.SIGTERM)
            try:
                rc = gw.wait(timeout=60 * o["slow"])
            except subprocess.TimeoutExpired:
                gw.kill()
                rc = gw.wait(timeout=10)
        for u in ups.values():
            u.stop()
    stderr = open(err_path, errors="replace").read()
    sanitizer = [ln for ln in stderr.splitlines() if any(m in ln for m in SANITIZER_MARKERS)]
    access = load_access_log(o["access_log"])
    counts, by_route, unexplained, explained_kinds = classify(soak, access)
    total = sum(counts.values())

    out("")
    out(f"requests: {total}")
    for k in ("ok", "aborted", "explained", "unexplained"):
        out(f"  {k:12s} {counts[k]}")
    for r in ROUTES:
        out(f"  route {r:8s} " + " ".join(f"{k}={v}" for k, v in by_route[r].items()))
    if explained_kinds:
        out("  explained by fault windows: " + ", ".join(f"{k}={v}" for k, v in sorted(explained_kinds.items())))
    for u in unexplained[:40]:
        out(f"  UNEXPLAINED t={u[0]}..{u[1]}s route={u[2]} id={u[3]} kind={u[4]} status={u[5]} {u[6]} "
            f"access-log={u[7]}")
    if len(unexplained) > 40:
        out(f"  ... and {len(unexplained) - 40} more")
    out(f"faults: {sum(len(v) for v in soak.faults.values())} windows "
        f"({', '.join(f'{k}={len(v)}' for k, v in soak.faults.items())})")
    out(f"reloads: sent {soak.reloads['sent']}, verified {soak.reloads['verified']}, "
        f"failed {len(soak.reloads['failed'])}, reload failures in /metrics {soak.reload_failures_metric}")
    for f in soak.reloads["failed"][:10]:
        out(f"  RELOAD FAILED at {f[0]}s: {f[1]}")
    out(f"RSS before priming the buffer rings ({o['prime_mib']} MiB through the gateway): "
        f"{soak.rss_before_prime / 1024:.1f} MiB")
    out("samples (t s, VmRSS MiB, open fds):")
    for t, rss, fds in soak.samples:
        out(f"  {t:7.1f} {rss / 1024:8.1f} {fds:5d}")
    rss_spread, rss_slope, n_tail = flatness(soak.samples, 1, 1024.0)
    fd_spread, fd_slope, _ = flatness(soak.samples, 2, 1.0)
    out(f"last two thirds ({n_tail} samples): RSS spread {rss_spread:.2f} MiB (bound {o['rss_spread']}), "
        f"slope {rss_slope:+.3f} MiB/min (bound {o['rss_slope']}); fds spread {fd_spread:.0f} "
        f"(bound {o['fd_spread']}), slope {fd_slope:+.2f}/min (bound {o['fd_slope']})")
    out(f"descriptors with no client connection, minus idle pooled upstream connections: "
        f"{soak.fds_quiet_start} before the load, {soak.fds_quiet_end} after it")
    new_series = sorted(set(k.rsplit(" ", 1)[0] for k in soak.series_end_lines)
                        - set(k.rsplit(" ", 1)[0] for k in soak.series_warm_lines))
    out(f"metric series: start {soak.series_start}, after warm-up ({o['warmup']}s) {soak.series_warm}, "
        f"end {soak.series_end}" + (f"; new: {new_series[:10]}" if new_series else ""))
    out(f"gateway: alive at end {alive}, exit code {rc}, sanitizer lines {len(sanitizer)}")
    for ln in sanitizer[:20]:
        out(f"  {ln}")

    checks = {
        "alive": alive,
        "exit 0": rc == 0,
        "no sanitizer report": not sanitizer,
        "0 unexplained failures": counts["unexplained"] == 0,
        "every reload verified": not soak.reloads["failed"] and soak.reloads["sent"] > 0
        and soak.reload_failures_metric == 0,
        "RSS flat": rss_spread is not None and rss_spread <= o["rss_spread"] and rss_slope <= o["rss_slope"],
        "fds flat": fd_spread is not None and fd_spread <= o["fd_spread"] and fd_slope <= o["fd_slope"],
        "fds back to the quiet count": soak.fds_quiet_start is not None and soak.fds_quiet_end is not None
        and abs(soak.fds_quiet_end - soak.fds_quiet_start) <= 2,
        "metric series unchanged": soak.series_end == soak.series_warm,
        "faults happened": all(soak.faults.get(ups[k].addr) for k in ("r1", "f2")),
        # not a throughput bound: a soak that verified next to nothing tested nothing
        "the load ran (1 verified request/s or more)": counts["ok"] >= o["duration"],
    }
    passed = all(checks.values())
    for k, v in checks.items():
        out(f"  [{'PASS' if v else 'FAIL'}] {k}")
    out(f"soak {'PASSED' if passed else 'FAILED'}")
    report = {"counts": counts, "by_route": by_route, "unexplained": unexplained, "reloads": soak.reloads,
              "samples": soak.samples, "series": (soak.series_start, soak.series_warm, soak.series_end),
              "checks": checks, "stderr_tail": stderr[-4000:], "final": final, "dir": d,
              "flat": (rss_spread, rss_slope, fd_spread, fd_slope)}
    return passed, report


def options(duration=1800, short=False, **kw):
    """Defaults for the long run; short=True scales intervals for a CI-sized run."""
    o = {
        "bin": None, "duration": duration, "clients": 12, "rate": 150.0, "seed": 1,
        "reload_every": 1.0, "restart_every": 60.0, "flap_every": 15.0, "sample_every": 10.0,
        "timeout": 30.0, "grace": 3.0, "slow": 1.0, "dir": None,
        "rss_spread": 16.0, "rss_slope": 0.2, "fd_spread": 60, "fd_slope": 0.5, "warmup": 75.0,
        "asan_options": None, "prime_mib": 384,
    }
    if short:
        o.update(restart_every=20.0, flap_every=5.0, sample_every=5.0, rate=60.0, clients=8, warmup=30.0,
                 rss_spread=24.0, rss_slope=6.0, fd_slope=8.0, slow=3.0, timeout=60.0, grace=6.0)
    o.update({k: v for k, v in kw.items() if v is not None})
    return o


def main(argv):
    if len(argv) > 1 and argv[1] == "upstream":
        p = argparse.ArgumentParser()
        p.add_argument("cmd")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--name", required=True)
        a = p.parse_args(argv[1:])
        upstream_main(a.port, a.name)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True, help="the turnpike binary")
    p.add_argument("--duration", type=float, default=1800, help="seconds (default 1800)")
    p.add_argument("--short", action="store_true",
                   help="CI scale: restart every 20s, flap every 5s, samples every 5s, sanitizer timeouts")
    for name, typ in (("clients", int), ("rate", float), ("seed", int), ("reload-every", float),
                      ("restart-every", float), ("flap-every", float), ("sample-every", float),
                      ("grace", float), ("warmup", float), ("rss-spread", float), ("rss-slope", float),
                      ("fd-spread", int), ("fd-slope", float), ("prime-mib", int)):
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("--dir", help="work directory (default: a new one under $TMPDIR)")
    a = p.parse_args(argv[1:])
    kw = {k: v for k, v in vars(a).items() if k not in ("short", "duration")}
    o = options(a.duration, a.short, **kw)
    passed, _ = run(o, out=lambda s: print(s, flush=True))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
