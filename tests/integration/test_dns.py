# SPDX-License-Identifier: MIT
"""Service discovery by DNS (docs/reference.md "Endpoint names"): endpoint
addresses written as host:port are resolved by a real DNS server (dnsmasq on a
loopback port chosen at run time, records in a hosts file it re-reads on
SIGHUP); every A/AAAA record is an endpoint, records come and go under load
without a failed request, TTLs shorter than resolve_every are honoured, a
server that stops answering keeps the last set, state of an address that
stays is kept, and a name that never resolved gives 503 until it does."""
import os
import shutil
import signal
import socket
import subprocess
import threading

import pytest

from tp_harness import BIN, T, Upstream, assert_gateway_error, free_port, get, wait_until
from tp_more import Switch, admin_json, metrics, reload

DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None)
pytestmark = pytest.mark.skipif(DNSMASQ is None, reason="dnsmasq (package dnsmasq-base) is not installed")


class Dns:
    """dnsmasq answering for *.tp.test from a hosts file (NXDOMAIN for other names of the zone)."""

    def __init__(self, tmp_path, ttl=1):
        self.hosts = tmp_path / "dns.hosts"
        self.hosts.write_text("")
        self.log = open(tmp_path / "dnsmasq.log", "ab")
        self.ttl = ttl
        self.proc = None
        self.start()

    def start(self, same_port=False):
        for _ in range(5):
            if not same_port:
                self.port = free_udp_port()
            self.proc = subprocess.Popen(
                [DNSMASQ, "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1",
                 "--bind-interfaces", "--no-resolv", "--no-hosts", "--local=/tp.test/",
                 f"--addn-hosts={self.hosts}", f"--local-ttl={self.ttl}", "--conf-file=/dev/null",
                 "--user=root", "--pid-file=", "--cache-size=0"],
                stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
            if self._ready():
                return
            self.stop()
        raise AssertionError("dnsmasq did not start")

    def _ready(self):
        def answers():
            if self.proc.poll() is not None:
                raise _Gone()
            s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            s.close()
            return True

        try:
            wait_until(lambda: _try(answers), T(5), what="dnsmasq listening")
            return True
        except (AssertionError, _Gone):
            return False

    def set(self, records):
        """records: [(ip, name)]; dnsmasq reads the file again on SIGHUP."""
        tmp = self.hosts.with_suffix(".tmp")
        tmp.write_text("".join(f"{ip} {name}\n" for ip, name in records))
        os.replace(tmp, self.hosts)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class _Gone(Exception):
    pass


def _try(fn):
    try:
        return fn()
    except OSError:
        return False


def free_udp_port():
    """A port free for both UDP and TCP a moment ago."""
    while True:
        port = free_port()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()


@pytest.fixture
def dns(tmp_path):
    d = Dns(tmp_path)
    yield d
    d.stop()
    d.log.close()


def upstreams_on(h, hosts, handler=None):
    """Upstreams on the same port of several loopback addresses (what one name's records point to)."""
    for _ in range(20):
        port = free_port()
        made = []
        try:
            for i, host in enumerate(hosts):
                made.append(Upstream(handler, name=f"U{i}", host=host, port=port))
        except OSError:
            for u in made:
                u.stop()
            continue
        h.upstreams.extend(made)
        return port, made
    raise AssertionError("no common free port")


def config(dns, name, port, **extra):
    up = {"name": "u", "endpoints": [{"address": f"{name}:{port}"}], "resolve_every": "200ms"}
    up.update(extra)
    return {"resolver": {"servers": [f"127.0.0.1:{dns.port}"], "timeout": "200ms"},
            "upstreams": [up], "routes": [{"name": "r", "upstream": "u"}]}


def endpoints(tp, upstream="u"):
    ups = {u["name"]: u for u in admin_json(tp)["upstreams"]}
    return ups[upstream]["endpoints"]


def addresses(tp, upstream="u"):
    return sorted(e["address"] for e in endpoints(tp, upstream))


def wait_addresses(tp, want, timeout=None):
    want = sorted(want)
    last = [None]

    def ok():
        last[0] = addresses(tp)
        return last[0] == want

    try:
        wait_until(ok, timeout or T(10), what=f"endpoints {want}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last {last[0]}")


def test_records_spread_traffic_and_show_their_name(h, dns):
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port, ups = upstreams_on(h, hosts)
    dns.set([(ip, "api.tp.test") for ip in hosts])
    tp = h.turnpike(config(dns, "api.tp.test", port))
    want = [f"{ip}:{port}" for ip in hosts]
    wait_addresses(tp, want)
    for e in endpoints(tp):
        assert (e["name"], e["weight"], e["healthy"]) == (f"api.tp.test:{port}", 1, True), e

    for i in range(30):
        r = get(tp.port, f"/s{i}")
        assert r.status == 200, r
    assert all(u.count() > 0 for u in ups), [u.count() for u in ups]
    assert sum(u.count() for u in ups) == 30

    m = metrics(tp)
    info = {(lb["endpoint"], lb["name"]): v for n, lb, v in m.samples if n == "turnpike_dns_endpoint_info"}
    assert info == {(a, f"api.tp.test:{port}"): 1 for a in want}, info
    assert sum(m.value("turnpike_upstream_requests_total", upstream="u", endpoint=a, code="2xx")
               for a in want) == 30
    assert m.value("turnpike_dns_failures_total", upstream="u") == 0


def test_records_added_and_removed_under_load(h, dns):
    hosts = ["127.0.0.2", "127.0.0.3"]
    port, (a, b) = upstreams_on(h, hosts)
    dns.set([("127.0.0.2", "api.tp.test")])
    tp = h.turnpike(config(dns, "api.tp.test", port))
    wait_addresses(tp, [a.addr])

    stop = threading.Event()
    results = {"ok": 0, "bad": []}

    def load():
        n = 0
        while not stop.is_set():
            try:
                r = get(tp.port, f"/l{n}")
                if r.status == 200:
                    results["ok"] += 1
                else:
                    results["bad"].append(r)
            except Exception as e:  # noqa: BLE001
                results["bad"].append(e)
            n += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        # a record appears: the new address gets traffic
        dns.set([("127.0.0.2", "api.tp.test"), ("127.0.0.3", "api.tp.test")])
        wait_addresses(tp, [a.addr, b.addr])
        wait_until(lambda: b.count() > 5, T(10), what="traffic to the added address")
        # the first record goes: requests keep succeeding, the old address gets nothing more
        dns.set([("127.0.0.3", "api.tp.test")])
        wait_addresses(tp, [b.addr])
        n_a = a.count()
        n_b = b.count()
        wait_until(lambda: b.count() > n_b + 20, T(10), what="traffic after the removal")
        assert a.count() == n_a
    finally:
        stop.set()
        for t in threads:
            t.join(T(20))
    assert results["bad"] == [], results["bad"][:5]
    assert results["ok"] > 0


def test_ttl_shorter_than_resolve_every_is_honoured(h, dns):
    port, (a, b) = upstreams_on(h, ["127.0.0.2", "127.0.0.3"])
    dns.set([("127.0.0.2", "ttl.tp.test")])
    tp = h.turnpike(config(dns, "ttl.tp.test", port, resolve_every="1h"))
    wait_addresses(tp, [a.addr])
    # resolve_every is an hour: only the 1 s TTL of the answer brings the change
    dns.set([("127.0.0.3", "ttl.tp.test")])
    wait_addresses(tp, [b.addr])
    assert "ttl 1s" in tp.stderr()


def test_reload_resolves_again_at_once(h, tmp_path):
    d = Dns(tmp_path, ttl=3600)
    try:
        port, (a, b) = upstreams_on(h, ["127.0.0.2", "127.0.0.3"])
        d.set([("127.0.0.2", "rl.tp.test")])
        tp = h.turnpike(config(d, "rl.tp.test", port, resolve_every="1h"))
        wait_addresses(tp, [a.addr])
        d.set([("127.0.0.3", "rl.tp.test")])
        reload(tp)  # same file: the names are asked again right away
        wait_addresses(tp, [b.addr])
        assert get(tp.port, "/after").header("x-upstream") == "U1"
    finally:
        d.stop()
        d.log.close()


def test_server_down_keeps_last_set(h, dns):
    hosts = ["127.0.0.2", "127.0.0.3"]
    port, ups = upstreams_on(h, hosts)
    dns.set([(ip, "down.tp.test") for ip in hosts])
    tp = h.turnpike(config(dns, "down.tp.test", port))
    want = [u.addr for u in ups]
    wait_addresses(tp, want)
    gen = admin_json(tp)["generation"]
    dns.stop()
    wait_until(lambda: metrics(tp).value("turnpike_dns_failures_total", upstream="u") >= 2, T(15),
               what="DNS failures counted")
    assert addresses(tp) == sorted(want)
    assert admin_json(tp)["generation"] == gen  # nothing was republished
    for i in range(6):
        assert get(tp.port, f"/d{i}").status == 200
    assert "does not resolve" in tp.stderr()
    # the server comes back: the name resolves again, the set is unchanged
    dns.start(same_port=True)
    wait_until(lambda: "resolves again" in tp.stderr(), T(15), what="'resolves again' logged")
    assert addresses(tp) == sorted(want)


def test_aaaa_records(h, dns):
    try:
        port, (v4, v6) = upstreams_on(h, ["127.0.0.2", "::1"])
    except OSError:
        pytest.skip("no IPv6 loopback")
    dns.set([("127.0.0.2", "dual.tp.test"), ("::1", "dual.tp.test")])
    tp = h.turnpike(config(dns, "dual.tp.test", port))
    wait_addresses(tp, [v4.addr, f"[::1]:{port}"])
    seen = {get(tp.port, f"/v{i}").header("x-upstream") for i in range(8)}
    assert seen == {"U0", "U1"}, seen
    dns.set([("::1", "dual.tp.test")])
    wait_addresses(tp, [f"[::1]:{port}"])
    assert get(tp.port, "/six").header("x-upstream") == "U1"


def test_state_of_an_address_that_stays_is_kept(h, dns):
    sa = Switch(200, health_path="/hc", health_status=200)
    sb = Switch(200, health_path="/hc", health_status=500)
    port, (a, b, c) = upstreams_on(h, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    a.handler, b.handler = sa.handler, sb.handler
    dns.set([("127.0.0.2", "st.tp.test"), ("127.0.0.3", "st.tp.test")])
    hc = {"path": "/hc", "interval": "1h", "timeout": "1s", "unhealthy_after": 1, "healthy_after": 1}
    tp = h.turnpike(config(dns, "st.tp.test", port, health_check=hc))
    wait_addresses(tp, [a.addr, b.addr])
    wait_until(lambda: {e["address"]: e["healthy"] for e in endpoints(tp)} == {a.addr: True, b.addr: False},
               T(10), what="b unhealthy")
    for i in range(5):
        assert get(tp.port, f"/k{i}").header("x-upstream") == "U0"
    opened = metrics(tp).value("turnpike_upstream_connections_opened_total", upstream="u", endpoint=a.addr)

    dns.set([(ip, "st.tp.test") for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")])
    wait_addresses(tp, [a.addr, b.addr, c.addr])
    health = {e["address"]: e["healthy"] for e in endpoints(tp)}
    assert health[b.addr] is False, health  # a fresh state would start healthy
    m = metrics(tp)
    assert m.value("turnpike_upstream_requests_total", upstream="u", endpoint=a.addr, code="2xx") == 5
    assert m.value("turnpike_upstream_connections_opened_total", upstream="u", endpoint=a.addr) == opened
    r = get(tp.port, "/after")
    assert r.header("x-upstream") in ("U0", "U2"), r


def test_never_resolved_name_gives_503_then_recovers(h, dns):
    port, (a,) = upstreams_on(h, ["127.0.0.2"])
    tp = h.turnpike(config(dns, "late.tp.test", port))
    wait_until(lambda: metrics(tp).value("turnpike_dns_failures_total", upstream="u") >= 1, T(10),
               what="a failed answer")
    assert addresses(tp) == []
    r = get(tp.port, "/early")
    assert_gateway_error(r, 503)
    assert r.json()["error"] == "no resolved endpoint", r.json()
    assert "late.tp.test" in tp.stderr() and "no endpoints until it does" in tp.stderr()

    dns.set([("127.0.0.2", "late.tp.test")])
    wait_addresses(tp, [a.addr])
    r = get(tp.port, "/late")
    assert (r.status, r.body) == (200, b"GET /late"), r


def run_check(tmp_path, text):
    """turnpike -t on <text>: (exit code, stdout, stderr), bounded."""
    path = tmp_path / "check.yaml"
    path.write_text(text)
    r = subprocess.run([BIN, "-t", "-c", str(path)], capture_output=True, text=True, timeout=T(30))
    return r.returncode, r.stdout, r.stderr


def test_check_mode_does_not_resolve(tmp_path):
    # a resolver nobody answers on, a name nobody knows: -t is about syntax only
    port = free_udp_port()
    good = (f'resolver: {{servers: ["127.0.0.1:{port}"], timeout: 10s}}\n'
            "listeners: [{address: 127.0.0.1:1}]\n"
            "upstreams:\n  - name: u\n    endpoints: [{address: nowhere.invalid:80}, {address: 127.0.0.1:2}]\n")
    rc, out, err = run_check(tmp_path, good)
    assert (rc, out.strip(), err) == (0, "configuration ok", ""), (rc, out, err)
    bad = good.replace("nowhere.invalid:80", "no_where.invalid:80")
    rc, out, err = run_check(tmp_path, bad)
    assert rc == 1
    assert ('upstreams[0].endpoints[0].address: invalid host "no_where.invalid" in "no_where.invalid:80" '
            "(expected letters, digits, '-' and '.')") in err, err


def test_hash_balancing_moves_only_keys_of_the_new_address(h, dns):
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    port, ups = upstreams_on(h, hosts)
    dns.set([(ip, "mg.tp.test") for ip in hosts[:3]])
    tp = h.turnpike(config(dns, "mg.tp.test", port, balance="hash", hash_key="header:x-user"))
    wait_addresses(tp, [u.addr for u in ups[:3]])

    def placement():
        return {k: get(tp.port, "/m", headers=[("X-User", f"user{k}")]).header("x-upstream") for k in range(60)}

    before = placement()
    assert len(set(before.values())) == 3, before
    dns.set([(ip, "mg.tp.test") for ip in hosts])
    wait_addresses(tp, [u.addr for u in ups])
    after = placement()
    moved = [k for k in before if after[k] != before[k]]
    assert moved, "the new address took no key"
    elsewhere = [k for k in moved if after[k] != "U3"]
    assert len(elsewhere) <= 2, (elsewhere, before, after)  # Maglev: keys move to the newcomer only


def test_ready_only_after_first_answers(h, dns):
    """/readyz says ready only once every name has had its first answer and the
    addresses are in use: the first request after readiness is never a 503
    because the gateway was quicker than its DNS server (the harness starts
    turnpike by waiting for /readyz 200). The first server listed never
    answers, so the answer comes only after the resolver's timeout."""
    port, (a, b) = upstreams_on(h, ["127.0.0.2", "127.0.0.3"])
    dns.set([("127.0.0.2", "first.tp.test"), ("127.0.0.3", "first.tp.test")])
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        cfg = config(dns, "first.tp.test", port, resolve_every="1h")
        cfg["resolver"] = {"servers": [f"127.0.0.1:{silent.getsockname()[1]}", f"127.0.0.1:{dns.port}"],
                           "timeout": "300ms"}
        tp = h.turnpike(cfg)
        r = get(tp.port, "/first")  # no wait for the endpoints: readiness implies them
        assert r.status == 200, r
        assert addresses(tp) == sorted([a.addr, b.addr])
    finally:
        silent.close()
