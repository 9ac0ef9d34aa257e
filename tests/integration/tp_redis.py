# SPDX-License-Identifier: MIT
"""A redis-server of a test's own, on a loopback port chosen at run time, with
no persistence, and a minimal RESP client to inspect and poke it."""
import shutil
import socket
import subprocess
import time

from tp_harness import T, free_port, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _read_reply(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ValueError(f"unexpected RESP line {line!r}")


class Redis:
    def __init__(self, tmp_path, name="redis"):
        self.tmp_path = tmp_path
        self.port = free_port()
        self.proc = None
        self.log_path = tmp_path / f"{name}.log"
        self.start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        for attempt in range(4):
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--enable-debug-command", "local", "--daemonize", "no", "--logfile", str(self.log_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until(self._pong, T(10), what="redis-server answers PING")
                return self
            except AssertionError:
                if self.proc.poll() is not None and attempt < 3:
                    self.port = free_port()  # lost a port race: another one
                    continue
                raise
        raise AssertionError("could not start redis-server")

    def _pong(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}: {self.log()[-2000:]}")
        try:
            return self.cmd("PING") == "PONG"
        except OSError:
            return False

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cmd(self, *args, timeout=None):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout or T(5))
        try:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            with s.makefile("rb") as f:
                return _read_reply(f)
        finally:
            s.close()

    def commandstats(self):
        """{command: calls} from INFO commandstats."""
        info = self.cmd("INFO", "commandstats").decode()
        out = {}
        for ln in info.splitlines():
            if ln.startswith("cmdstat_"):
                name, rest = ln[8:].split(":", 1)
                fields = dict(kv.split("=") for kv in rest.split(","))
                out[name] = int(fields["calls"])
        return out

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=T(10))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=T(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=T(10))


def start_redis(tmp_path, request=None, name="redis"):
    r = Redis(tmp_path, name)
    if request is not None:
        request.addfinalizer(r.stop)
    return r


