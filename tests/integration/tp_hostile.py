# SPDX-License-Identifier: MIT
"""A raw-socket upstream that misbehaves on purpose (test_hostile_upstream.py).

HostileUpstream listens on 127.0.0.1:<port chosen by the kernel> and runs one
thread per accepted connection. Each connection:

  1. runs on_accept(conn) first, if given: it may send before reading anything,
     never read at all, or close; returning "stop" ends the connection's thread
     (the socket stays as the script left it);
  2. then serves requests in a loop: a request whose target starts with /bad
     goes to bad(req, conn), which writes whatever it likes (returning "stop"
     ends the loop); /bulk/<n> gets a 200 with n bytes of body; any other
     request gets the well-behaved answer 200 "good <target>" with
     X-Conn: <connection id>.

It records the connections, every byte received per connection, which
connection served which good request, which connections the bad requests
arrived on, and whether the gateway closed a connection (EOF or reset seen
while the loop waited for the next request).

The object has the attributes tp_harness.Harness.teardown() expects of an
upstream (release, stop(), errors, allow_errors): hostile(h, ...) registers it.

Also here, for tests that measure the gateway process:
  gateway_holds / wait_released   does the gateway still hold a descriptor for an
                                  upstream connection (/proc/net/tcp + /proc/<pid>/fd)
  asan_env                        ASan quarantine kept small, so RSS is the gateway's
  warm_buffer_pool                touch the whole receive buffer pool before a baseline
  vm_rss_kib, cpu_seconds         /proc/<pid>/status VmRSS, /proc/<pid>/stat utime+stime

Every wait is bounded (tp_harness.T).
"""
import os
import select
import socket
import struct
import threading
import time

import tp_harness
from tp_harness import T, Buffered, Closed, UpConn, UpRequest, build_response, wait_until


def good_answer(req, conn):
    return build_response(200, f"good {req.target}".encode(), [("X-Conn", str(conn.conn_id))])


class HConn(Buffered):
    """One accepted connection of a HostileUpstream."""

    def __init__(self, server, sock, conn_id):
        super().__init__(sock)
        self.server = server
        self.conn_id = conn_id
        self.raw = bytearray()  # everything received
        self.requests = []  # UpRequest, in order
        self.closed = False  # closed by us
        self.peer_gone = threading.Event()  # EOF or reset seen from the gateway
        self.send_error = None  # exception of a failed send, if any

    def fill(self):
        before = len(self.buf)
        try:
            n = super().fill()
        except Closed:
            self.peer_gone.set()
            raise
        self.raw += self.buf[before:]
        return n

    def read_request(self, body=True):
        """The next request (head, and its body unless body=False)."""
        head = self.read_until(b"\r\n\r\n", limit=4 << 20)
        req = UpRequest(self.conn_id, head)
        if body:
            UpConn.read_body(self, req)
            req.complete = True
        self.requests.append(req)
        return req

    def send(self, data):
        """sendall; False (and send_error set) when the gateway is gone."""
        try:
            self.sock.sendall(data)
            return True
        except OSError as e:
            self.send_error = e
            return False

    def close(self, rst=False):
        if self.closed:
            return
        self.closed = True
        try:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass

    def wait_peer_close_unread(self, timeout=None):
        """Waits (bounded) for the gateway to close this connection WITHOUT reading
        what it sent (POLLRDHUP): for scripts that must never read. True when closed."""
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        deadline = time.monotonic() + (timeout or T(10))
        while not self.server.release.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if p.poll(min(left, 0.1) * 1000):
                self.peer_gone.set()
                return True
        return False

    def wait_release(self, timeout=None):
        """Blocks until the harness tears down (or timeout); True at teardown."""
        return self.server.release.wait(timeout if timeout is not None else T(30))

    def serve(self):
        """The request loop: /bad* to the bad handler, anything else answered well."""
        srv = self.server
        while not self.closed and not srv.release.is_set():
            try:
                req = self.read_request()
            except Closed:
                return
            if req.target.startswith("/bad"):
                with srv.lock:
                    srv.bad_conns.append(self.conn_id)
                srv.got_bad.set()
                if srv.bad(req, self) == "stop" or self.closed:
                    return
                continue
            if req.target.startswith("/bulk/"):
                # /bulk/<n>: n bytes of body, for moving a lot of data through the gateway
                n = int(req.target.split("/")[2])
                piece = b"b" * (1 << 20)
                if not self.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n):
                    return
                while n > 0:
                    if not self.send(piece[:n]):
                        return
                    n -= len(piece)
                continue
            with srv.lock:
                srv.served.append((self.conn_id, req.target))
            if not self.send(good_answer(req, self)):
                return


class HostileUpstream:
    def __init__(self, bad=None, on_accept=None, name="hostile"):
        self.bad = bad or (lambda req, conn: conn.send(good_answer(req, conn)))
        self.on_accept = on_accept
        self.name = name
        self.lock = threading.Lock()
        self.conns = []  # HConn, by id
        self.bad_conns = []  # connection ids the /bad requests arrived on
        self.served = []  # (connection id, target) of the well-behaved answers
        self.errors = []
        self.allow_errors = False
        self.release = threading.Event()
        self.got_bad = threading.Event()
        self.stopping = False
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    @property
    def accepted(self):
        with self.lock:
            return len(self.conns)

    def conn(self, i):
        with self.lock:
            return self.conns[i]

    def wait_conns(self, n, timeout=None):
        wait_until(lambda: self.accepted >= n, timeout or T(10), what=f"{n} connections at {self.name}")

    def wait_gone(self, conn_id, timeout=None):
        """True when the gateway closed connection conn_id within timeout (bounded wait)."""
        return self.conn(conn_id).peer_gone.wait(timeout or T(5))

    def _accept_loop(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            s.settimeout(T(20))
            with self.lock:
                conn = HConn(self, s, len(self.conns))
                self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            if self.on_accept and self.on_accept(conn) == "stop":
                return
            conn.serve()
        except (Closed, socket.timeout, ConnectionError):
            pass
        except OSError as e:
            if not self.stopping:
                self.errors.append(e)
        except Exception as e:  # noqa: BLE001 - recorded; the harness teardown reports it
            self.errors.append(e)

    def stop(self):
        self.stopping = True
        self.release.set()
        for s in (self.lsock,):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        for c in list(self.conns):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.thread.join(timeout=5)


def _tcp_inodes():
    """{(local port, remote port): socket inode} of the IPv4 TCP sockets on 127.0.0.1."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            lip, lport = parts[1].split(":")
            rip, rport = parts[2].split(":")
            if lip == rip == "0100007F":
                out[(int(lport, 16), int(rport, 16))] = int(parts[9])
    return out


def gateway_holds(pid, conn):
    """True while process pid still has a descriptor for the upstream connection
    conn (an HConn). Its closing cannot always be seen from the upstream: when the
    upstream never reads, the gateway's FIN waits behind unsent data for ever."""
    gw_port = conn.sock.getpeername()[1]
    up_port = conn.sock.getsockname()[1]
    inode = _tcp_inodes().get((gw_port, up_port), 0)
    if not inode:
        return False  # gone, or orphaned (closed, FIN pending): no descriptor holds it
    want = f"socket:[{inode}]"
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}") == want:
                return True
        except OSError:
            pass
    return False


def wait_released(pid, conn, timeout=None):
    """Waits (bounded) until the gateway closed its descriptor of conn; True if it did."""
    try:
        wait_until(lambda: not gateway_holds(pid, conn), timeout or T(5), interval=0.05,
                   what="the gateway to close an upstream connection")
        return True
    except AssertionError:
        return False


def hostile(h, **kw):
    """A HostileUpstream registered with the harness (stopped at teardown)."""
    up = HostileUpstream(**kw)
    h.upstreams.append(up)
    return up


def asan_env():
    """Environment for a gateway whose memory is measured: ASan's quarantine of
    freed memory (256 MiB by default) kept small, so RSS shows the gateway's own
    memory, not the sanitizer's."""
    opts = [o for o in os.environ.get("ASAN_OPTIONS", "").split(":") if o]
    return {"ASAN_OPTIONS": ":".join(opts + ["quarantine_size_mb=1", "thread_local_quarantine_size_kb=64"])}


def warm_buffer_pool(port, mib=96):
    """Relays mib MiB from the upstream (a HostileUpstream's /bulk/<n>) to a
    client, so that every page of the worker's receive buffer pool (4096 x 16 KiB
    per shard, cycled FIFO through the io_uring buffer ring) has been touched
    before a test takes its RSS baseline: the pool's first touch is not growth."""
    c = tp_harness.Client(port, timeout=T(30))
    try:
        n = mib << 20
        c.request("GET", f"/bulk/{n}")
        head = c.read_until(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"200", head
        left = n - len(c.buf)
        c.buf.clear()
        while left > 0:
            data = c.sock.recv(1 << 20)
            assert data, "connection closed during the warm-up transfer"
            left -= len(data)
    finally:
        c.close()


def vm_rss_kib(pid):
    """The process' resident set size (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid):
    """utime + stime of the process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    fields = st[st.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

