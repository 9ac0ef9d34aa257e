#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""bench/limits_probe.py: what a held connection costs the gateway, by kind.

    /usr/bin/python3 bench/limits_probe.py --bin build/rel/turnpike [--conns 2000] [--workers 1]

Starts turnpike (one worker by default; client_header and client_idle raised
to 120 s so nothing is timed out during the probe) in front of one upstream of
scripts/soak.py, moves 3 x 64 MiB through it so every receive buffer of the
provided-buffer ring has been touched (the ring is cycled FIFO, so its first
touch would otherwise look like growth), then for each kind of connection
opens --conns of them, waits until the gateway counts them and its RSS
settles, and prints the RSS growth per connection:

  idle          connected, no byte sent
  slowloris     an incomplete request head (a few header lines, no end)
  keepalive     one request answered, then idle on keep-alive
  tls-idle      a finished TLS 1.3 handshake, no request (--conns / 4 of them)
  slow-reader   asked for a 16 MiB response with a 4 KiB receive buffer and
                reads nothing (--conns / 4): what the gateway holds besides the
                kernel's socket buffers

Each kind gets a fresh gateway (primed again), so memory freed by one kind
is not reused by the next. The numbers are VmRSS of the gateway (/proc/PID/status),
so they include the allocator's own overhead; run on a quiet machine for
stable figures.
"""
import argparse
import os
import re
import resource
import select
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import soak  # noqa: E402


def admin(port, path):
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        d = c.recv(1 << 20)
        if not d:
            break
        data += d
    c.close()
    return data.split(b"\r\n\r\n", 1)[1]


def metric(port, name):
    body = admin(port, "/metrics").decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body, re.M))


def rss_settled(pid):
    """VmRSS in KiB once two samples 0.5 s apart differ by less than 256 KiB."""
    last = soak.proc_sample(pid)[0]
    for _ in range(40):
        time.sleep(0.5)
        now = soak.proc_sample(pid)[0]
        if abs(now - last) < 256:
            return now
        last = now
    return last


def wait_active(port, n, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        a = metric(port, "turnpike_connections_active")
        if a == n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"turnpike_connections_active {a}, want {n}")
        time.sleep(0.2)


def open_conns(port, n, rcvbuf=None):
    socks, pending = [], {}
    for _ in range(n):
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: a small window
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        pending[s.fileno()] = s
    p = select.poll()
    for fd in pending:
        p.register(fd, select.POLLOUT)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for fd, _ in p.poll(500):
            pending.pop(fd)
            p.unregister(fd)
    for s in socks:
        s.setblocking(True)
        s.settimeout(30)
    return socks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    d = tempfile.mkdtemp(prefix="limits-")
    soak.make_pki(d)
    up = soak.UpstreamProc("u", soak.free_port(), d)
    up.start()
    port, tport, aport = soak.free_port(), soak.free_port(), soak.free_port()
    cfg = {
        "workers": a.workers,
        "listeners": [{"name": "plain", "address": f"127.0.0.1:{port}"},
                      {"name": "tls", "address": f"127.0.0.1:{tport}",
                       "tls": {"certificates": [{"cert": f"{d}/srv.pem", "key": f"{d}/srv.key"}]}}],
        "admin": {"address": f"127.0.0.1:{aport}"},
        "timeouts": {"client_header": "120s", "client_idle": "120s", "upstream_response": "120s"},
        "upstreams": [{"name": "u", "endpoints": [{"address": up.addr}]}],
        "routes": [{"upstream": "u"}],
    }
    path = os.path.join(d, "tp.yaml")
    soak.write_config(path, cfg)
    ctx = ssl.create_default_context(cafile=f"{d}/ca.pem")

    def start():
        err = open(os.path.join(d, "tp.stderr"), "ab")
        gw = subprocess.Popen([a.bin, "-c", path], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + 20
        while True:
            try:
                admin(aport, "/readyz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # prime: 3 x 64 MiB per worker through the ring
        for _ in range(3 * a.workers):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            c.sendall(f"GET /bulk?n={64 << 20}&s=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            while c.recv(1 << 20):
                pass
            c.close()
        wait_active(aport, 0)
        return gw

    def phase(name, n, setup):
        """A fresh gateway per kind, so memory one kind freed cannot be reused by the next."""
        gw = start()
        try:
            base = rss_settled(gw.pid)
            socks = setup(n)
            wait_active(aport, n)
            rss = rss_settled(gw.pid)
            dry = metric(aport, "turnpike_buffer_pool_exhausted_total")
            print(f"  {name:12s} {n:5d} conns: RSS {base / 1024:6.1f} -> {rss / 1024:6.1f} MiB, "
                  f"{(rss - base) / n:6.1f} KiB per connection (receive buffer pool ran dry {dry:.0f} times)",
                  flush=True)
            for s in socks:
                s.close()
        finally:
            gw.terminate()
            gw.wait(timeout=60)

    try:
        print(f"turnpike {a.bin}, {a.workers} worker(s); RSS measured after priming the buffer ring", flush=True)
        phase("idle", a.conns, lambda n: open_conns(port, n))

        def slowloris(n):
            socks = open_conns(port, n)
            for s in socks:
                s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nUser-Agent: probe\r\nX-a: b\r\n")
            return socks

        phase("slowloris", a.conns, slowloris)

        def keepalive(n):
            socks = open_conns(port, n)
            for s in socks:
                s.sendall(b"GET /ka?n=100 HTTP/1.1\r\nHost: x\r\n\r\n")
            for s in socks:
                got = b""
                while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < 100:
                    got += s.recv(65536)
            return socks

        phase("keepalive", a.conns, keepalive)

        def tls_idle(n):
            return [ctx.wrap_socket(s, server_hostname="soak.test") for s in open_conns(tport, n)]

        phase("tls-idle", a.conns // 4, tls_idle)

        def slow_reader(n):
            socks = open_conns(port, n, rcvbuf=4096)
            for s in socks:
                s.sendall(f"GET /big?n={16 << 20}&s=2 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            return socks

        phase("slow-reader", a.conns // 4, slow_reader)
    finally:
        up.stop()


if __name__ == "__main__":
    main()
