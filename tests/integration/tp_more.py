# SPDX-License-Identifier: MIT
"""More integration helpers, on top of tp_harness.py (which they use, never change):

  config files   rewrite a running turnpike's configuration atomically (temp file +
                 os.replace) and reload it with SIGHUP, waiting on /config's generation
  admin          /config as JSON, /metrics parsed strictly (Prometheus text 0.0.4)
  EnvTurnpike    a Turnpike started with extra environment variables (NOTIFY_SOCKET)
  Notify         a unix datagram socket standing in for systemd's notify socket
  handlers       upstream handlers: fixed status, gated (blocks until released), health
  Loader         threads doing sequential requests on persistent keep-alive sockets

Every wait is bounded (tp_harness.T scales timeouts for sanitizer builds).
"""
import copy
import json
import math
import os
import re
import signal
import socket
import subprocess
import threading
import time

import tp_harness
from tp_harness import T, Client, Incomplete, build_response, wait_until

# --------------------------------------------------------------------------
# configuration files and reload
# --------------------------------------------------------------------------


def write_text_atomic(path, text):
    """Writes text to path the way an editor or config manager does: a temp file
    in the same directory, then rename over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


def config_text(cfg):
    return json.dumps(cfg, indent=1) + "\n"


def write_config(tp, cfg):
    """Replaces tp's configuration file with cfg (a full mapping, listeners and
    admin included) and remembers it as tp.config."""
    write_text_atomic(tp.config_path, config_text(cfg))
    tp.config = cfg


def derive(tp, **changes):
    """A deep copy of tp's current configuration with top-level keys replaced."""
    cfg = copy.deepcopy(tp.config)
    cfg.update(copy.deepcopy(changes))
    return cfg


def admin_json(tp, path="/config"):
    st, body = tp.admin_get(path)
    assert st == 200, (path, st, body[:300])
    return json.loads(body)


def generation(tp):
    return admin_json(tp)["generation"]


def sighup_and_wait(tp, expect_gen, timeout=None):
    """SIGHUP; waits until /config reports expect_gen."""
    tp.signal(signal.SIGHUP)
    last = [None]

    def done():
        last[0] = generation(tp)
        assert last[0] <= expect_gen, f"generation jumped to {last[0]}, expected {expect_gen}"
        return last[0] == expect_gen

    try:
        wait_until(done, timeout or T(10), interval=0.005, what=f"generation {expect_gen}")
    except AssertionError as e:
        raise AssertionError(f"{e} (last seen {last[0]}); stderr:\n{tp.stderr()[-3000:]}")


def reload(tp, cfg=None, timeout=None):
    """Writes cfg (when given), reloads, waits for the next generation; returns it."""
    g = generation(tp)
    if cfg is not None:
        write_config(tp, cfg)
    sighup_and_wait(tp, g + 1, timeout)
    return g + 1


def reload_fails(tp, text, timeout=None):
    """Writes an invalid file (text), reloads; waits until the failure counter grows.
    Returns the stderr text written since the signal."""
    m0 = metrics(tp)
    fail0 = m0.value("turnpike_config_reloads_total", result="failure")
    err_before = len(tp.stderr())
    write_text_atomic(tp.config_path, text)
    tp.signal(signal.SIGHUP)
    wait_until(lambda: metrics(tp).value("turnpike_config_reloads_total", result="failure") == fail0 + 1,
               timeout or T(10), what="reloads_total{result=failure} to grow")
    # the error lines are written before the counter moves; give stderr a moment to land
    wait_until(lambda: "reload failed" in tp.stderr()[err_before:], T(5), what="'reload failed' on stderr")
    return tp.stderr()[err_before:]


# --------------------------------------------------------------------------
# /metrics, parsed strictly
# --------------------------------------------------------------------------

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
SAMPLE_RE = re.compile(r"(" + METRIC_NAME + r")(\{.*\})? (\S+)( -?\d+)?")
VALUE_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]Inf|NaN")


def _parse_labels(text, line):
    """Parses '{a="x",b="y"}' (escapes \\\\ \\" \\n) into a dict; AssertionError on bad syntax."""
    assert text[0] == "{" and text[-1] == "}", line
    s = text[1:-1]
    labels = {}
    i = 0
    while i < len(s):
        m = re.match(LABEL_NAME, s[i:])
        assert m, f"bad label name at {s[i:]!r} in {line!r}"
        name = m.group(0)
        i += len(name)
        assert s[i : i + 2] == '="', f"expected =\" after label {name} in {line!r}"
        i += 2
        val = []
        while True:
            assert i < len(s), f"unterminated label value in {line!r}"
            ch = s[i]
            if ch == "\\":
                nxt = s[i + 1 : i + 2]
                assert nxt in ("\\", '"', "n"), f"bad escape \\{nxt} in {line!r}"
                val.append("\n" if nxt == "n" else nxt)
                i += 2
            elif ch == '"':
                i += 1
                break
            else:
                assert ch != "\n", line
                val.append(ch)
                i += 1
        assert name not in labels, f"label {name} twice in {line!r}"
        labels[name] = "".join(val)
        if i < len(s):
            assert s[i] == ",", f"expected , between labels in {line!r}"
            i += 1
            assert i < len(s), f"trailing comma after the last label in {line!r}"
    return labels


class Metrics:
    """A parsed exposition. families: name -> {"type", "help", "samples": [(name, labels, value)]}."""

    def __init__(self, text):
        self.text = text
        self.families = {}
        self.samples = []  # (name, labels dict, value)
        assert text.endswith("\n"), "exposition must end with a newline"
        current = None  # the family whose lines we are in
        seen_done = set()  # families whose block has ended
        for line in text.split("\n")[:-1]:
            assert line == line.strip(), f"stray whitespace in {line!r}"
            assert line, "empty line in the exposition"
            if line.startswith("#"):
                m = re.fullmatch(r"# (HELP|TYPE) (" + METRIC_NAME + r") (.*)", line)
                if not m:
                    # other comments are allowed, but only as "# text"
                    assert line.startswith("# ") and not re.match(r"# (HELP|TYPE)\b", line), line
                    continue
                kind, name, rest = m.groups()
                fam = self.families.setdefault(name, {"type": None, "help": None, "samples": []})
                if kind == "TYPE":
                    assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), line
                    assert fam["type"] is None, f"second TYPE for {name}"
                    assert not fam["samples"], f"TYPE for {name} after its samples"
                    fam["type"] = rest
                else:
                    assert fam["help"] is None, f"second HELP for {name}"
                    assert rest, f"empty HELP for {name}"
                    fam["help"] = rest
                if current != name:
                    assert name not in seen_done, f"family {name} is split into several blocks"
                    if current:
                        seen_done.add(current)
                    current = name
                continue
            m = SAMPLE_RE.fullmatch(line)
            assert m, f"bad sample line {line!r}"
            name, ltext, value, _ts = m.groups()
            assert VALUE_RE.fullmatch(value), f"bad value in {line!r}"
            labels = _parse_labels(ltext, line) if ltext else {}
            fam_name = self.family_of(name)
            fam = self.families.get(fam_name)
            assert fam is not None and fam["type"], f"sample {name} without a TYPE line"
            assert current == fam_name, f"sample {name} outside its family's block ({current})"
            v = float(value)
            fam["samples"].append((name, labels, v))
            self.samples.append((name, labels, v))
        # no duplicate series
        keys = [(n, tuple(sorted(lb.items()))) for n, lb, _ in self.samples]
        dup = {k for k in keys if keys.count(k) > 1}
        assert not dup, f"duplicate series: {sorted(dup)[:5]}"

    def family_of(self, name):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
                if base in self.families and self.families[base]["type"] == "histogram":
                    return base
        return name

    def series(self, name, **labels):
        """[(labels, value)] of samples named name whose labels include labels."""
        return [(lb, v) for n, lb, v in self.samples
                if n == name and all(lb.get(k) == str(val) for k, val in labels.items())]

    def value(self, name, default=None, **labels):
        """The value of the one series with exactly these labels (default when absent)."""
        hits = [v for n, lb, v in self.samples if n == name and lb == {k: str(x) for k, x in labels.items()}]
        assert len(hits) <= 1, (name, labels, hits)
        if not hits:
            if default is None:
                raise AssertionError(f"no series {name}{labels} in:\n" + self.grep(name))
            return default
        return hits[0]

    def total(self, name, **labels):
        return sum(v for _, v in self.series(name, **labels))

    def grep(self, name):
        return "\n".join(ln for ln in self.text.splitlines() if name in ln)

    def check_histograms(self):
        """Every histogram series: increasing le ending in +Inf, non-decreasing counts,
        +Inf == _count, a _sum."""
        for fam_name, fam in self.families.items():
            if fam["type"] != "histogram":
                continue
            groups = {}
            for n, lb, v in fam["samples"]:
                key = tuple(sorted((k, x) for k, x in lb.items() if k != "le"))
                groups.setdefault(key, {"buckets": [], "sum": None, "count": None})
                g = groups[key]
                if n == fam_name + "_bucket":
                    assert "le" in lb, (n, lb)
                    g["buckets"].append((lb["le"], v))
                elif n == fam_name + "_sum":
                    assert "le" not in lb
                    g["sum"] = v
                elif n == fam_name + "_count":
                    assert "le" not in lb
                    g["count"] = v
                else:
                    raise AssertionError(f"histogram {fam_name} has a sample {n}")
            for key, g in groups.items():
                where = f"{fam_name}{dict(key)}"
                assert g["buckets"], f"{where}: no buckets"
                assert g["sum"] is not None and g["count"] is not None, f"{where}: _sum/_count missing"
                les = [float(le) for le, _ in g["buckets"]]
                assert g["buckets"][-1][0] == "+Inf", f"{where}: last bucket is le={g['buckets'][-1][0]}"
                assert all(a < b for a, b in zip(les, les[1:])), f"{where}: le not increasing: {les}"
                counts = [c for _, c in g["buckets"]]
                assert all(a <= b for a, b in zip(counts, counts[1:])), f"{where}: counts decrease: {counts}"
                assert counts[-1] == g["count"], f"{where}: +Inf {counts[-1]} != _count {g['count']}"
                assert g["sum"] >= 0 and not math.isnan(g["sum"]), where
                if g["count"] == 0:
                    assert g["sum"] == 0, where
        return True


def metrics(tp):
    st, body = tp.admin_get("/metrics")
    assert st == 200, (st, body[:300])
    return Metrics(body.decode("utf-8"))


def metric(tp, name, **labels):
    return metrics(tp).value(name, **labels)


def wait_metric(tp, name, want, timeout=None, **labels):
    """Waits until the series name{labels} has the value want."""
    last = [None]

    def ok():
        last[0] = metrics(tp).value(name, default=float("nan"), **labels)
        return last[0] == want

    try:
        wait_until(ok, timeout or T(10), what=f"{name}{labels} == {want}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last value {last[0]}")


# --------------------------------------------------------------------------
# turnpike with extra environment
# --------------------------------------------------------------------------


class EnvTurnpike(tp_harness.Turnpike):
    """A Turnpike whose process gets extra environment variables (and, with bin,
    runs another binary than TURNPIKE_BIN). start() mirrors the harness' start
    (fresh ports, retry on a port race, readiness via /readyz); spawn() only
    starts the process, for tests that watch the startup themselves."""

    def __init__(self, tmp_path, config, env, admin=True, name="tp", bin=None):
        super().__init__(tmp_path, config, admin=admin, name=name)
        self.env = dict(os.environ)
        self.env.update(env)
        self.bin = bin or tp_harness.BIN

    def spawn(self):
        self._write_config()
        self.stderr_f = open(self.stderr_path, "ab")
        self.stdout_f = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen([self.bin, "-c", str(self.config_path)], stdout=self.stdout_f,
                                     stderr=self.stderr_f, stdin=subprocess.DEVNULL, env=self.env)
        return self

    def start(self):
        for attempt in range(4):
            self.spawn()
            try:
                self._wait_ready()
                return self
            except tp_harness._EarlyExit as e:
                if "in use" in self.stderr() and attempt < 3:
                    continue
                raise AssertionError(f"turnpike exited with {e.rc} at startup:\n{self.stderr()}")
        raise AssertionError("could not start turnpike")


def env_turnpike(h, config, env, start=True, bin=None):
    """An EnvTurnpike registered with the harness (its teardown stops and checks it)."""
    tp = EnvTurnpike(h.tmp_path, config, env, name=f"tp{len(h.turnpikes)}", bin=bin)
    h.turnpikes.append(tp)
    return tp.start() if start else tp


class Notify:
    """A unix datagram socket that receives sd_notify messages. addr: a filesystem
    path, or "@name" for the abstract namespace."""

    def __init__(self, addr):
        self.addr = addr
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + addr[1:] if addr.startswith("@") else addr)
        self.messages = []

    def recv(self, timeout=None):
        """The next message as text; AssertionError when none arrives in time."""
        self.sock.settimeout(timeout or T(10))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"no notify message within {timeout or T(10)}s (so far {self.messages})")
        msg = data.decode()
        self.messages.append(msg)
        return msg

    def pending(self):
        """Messages queued right now, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    out.append(self.sock.recv(65536).decode())
                except BlockingIOError:
                    break
        finally:
            self.sock.setblocking(True)
        self.messages += out
        return out

    def close(self):
        self.sock.close()
        if not self.addr.startswith("@"):
            try:
                os.unlink(self.addr)
            except OSError:
                pass


def fields(msg):
    """sd_notify message -> dict of its KEY=VALUE lines."""
    out = {}
    for line in msg.split("\n"):
        if line:
            k, sep, v = line.partition("=")
            assert sep, f"notify line without '=': {line!r} in {msg!r}"
            out[k] = v
    return out


# --------------------------------------------------------------------------
# upstream handlers
# --------------------------------------------------------------------------


def status_handler(status, body=b"x", headers=None):
    def handler(req, conn):
        return build_response(status, body, [("X-Upstream", conn.server.name)] + list(headers or []))
    return handler


class Switch:
    """A mutable status for an upstream: handler() answers self.status."""

    def __init__(self, status=200, health_path=None, health_status=None):
        self.status = status
        self.health_path = health_path
        self.health_status = health_status

    def handler(self, req, conn):
        if self.health_path and req.target == self.health_path:
            st = self.health_status if self.health_status is not None else self.status
            return build_response(st, b"hc", [("X-Upstream", conn.server.name)])
        return build_response(self.status, f"{conn.server.name} {req.target}".encode(),
                              [("X-Upstream", conn.server.name)])


class Gate:
    """An upstream handler that holds each request until opened (or the harness
    releases it at teardown), then answers 200 with '<name> <target>'."""

    def __init__(self):
        self.event = threading.Event()

    def open(self):
        self.event.set()

    def handler(self, req, conn):
        deadline = time.monotonic() + T(30)
        while not self.event.wait(0.02):
            if conn.server.release.is_set() or time.monotonic() > deadline:
                conn.close()  # teardown (or a lost test): do not hold turnpike's drain
                return None
        return build_response(200, f"{conn.server.name} {req.target}".encode(), [("X-Upstream", conn.server.name)])


def delay_handler(seconds):
    def handler(req, conn):
        time.sleep(seconds)
        return build_response(200, f"{conn.server.name} {req.target}".encode(), [("X-Upstream", conn.server.name)])
    return handler


def non_health(up, path):
    """Requests an upstream received, without the health checks on path."""
    with up.lock:
        return [r for r in up.requests if r.target != path]


# --------------------------------------------------------------------------
# load: keep-alive connections in threads
# --------------------------------------------------------------------------


class Loader:
    """n threads, each with one keep-alive connection doing sequential requests
    until stopped. check(resp) -> None or an error text. Records per thread the
    number of requests sent and responses received, the socket used, and failures."""

    def __init__(self, port, n, target="/", check=None, headers=None):
        self.port = port
        self.n = n
        self.target = target
        self.check = check
        self.headers = headers or []
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.failures = []
        self.sent = [0] * n
        self.received = [0] * n
        self.socks = [None] * n
        self.clients = [None] * n
        self.statuses = {}
        self.seen = {}  # check's extra bookkeeping
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, i):
        try:
            c = Client(self.port, timeout=T(20))
        except OSError as e:
            with self.lock:
                self.failures.append(f"thread {i}: connect: {e}")
            return
        self.clients[i] = c
        self.socks[i] = c.sock
        while not self.stop_ev.is_set():
            try:
                c.request("GET", f"{self.target}?t={i}&n={self.sent[i]}", self.headers)
                self.sent[i] += 1
                r = c.read_response()
            except (Incomplete, OSError, AssertionError) as e:
                with self.lock:
                    self.failures.append(f"thread {i} request {self.sent[i]}: {type(e).__name__}: {e}")
                return
            self.received[i] += 1
            with self.lock:
                self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
            err = None
            if r.status != 200:
                err = f"status {r.status}: {r!r}"
            elif tp_harness.has_token(r.header("connection"), "close"):
                err = f"Connection: close on a keep-alive connection: {r!r}"
            elif self.check:
                err = self.check(r)
            if err:
                with self.lock:
                    self.failures.append(f"thread {i} request {self.sent[i]}: {err}")
                return

    def stop(self, timeout=None):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout or T(30))
        alive = [i for i, t in enumerate(self.threads) if t.is_alive()]
        assert not alive, f"load threads still running: {alive}"

    def close(self):
        for c in self.clients:
            if c:
                c.close()
