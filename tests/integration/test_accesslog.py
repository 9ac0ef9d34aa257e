# SPDX-License-Identifier: MIT
"""Access log (docs/reference.md access_log and "Access log json fields"; operations.md
"Access log"): json lines with every field and exact byte counts, the combined
format, SIGUSR1 reopening after a logrotate-style rename, and "-" for stdout."""
import json
import os
import re
import signal
import socket
import struct

from tp_harness import T, Client, build_request, free_port, upstream_cfg, wait_until
from tp_more import Gate, metrics

FIELDS = {"time", "request_id", "trace_id", "client", "method", "host", "path", "protocol", "status", "bytes_in",
          "bytes_out", "duration_ms", "route", "upstream", "endpoint", "upstream_ms", "subject"}
TIME_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)")
HEX32 = re.compile(r"[0-9a-f]{32}")


def lines_of(path):
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    assert not data or data.endswith(b"\n"), f"partial line at the end of {path}: {data[-200:]!r}"
    return data.decode("utf-8").splitlines()


def wait_lines(path, n, what=None):
    return wait_until(lambda: len(lines_of(path)) >= n and lines_of(path), T(10), interval=0.02,
                      what=what or f"{n} lines in {path}")


def exchange(port, raw):
    """Sends raw request bytes on a fresh connection; returns (response, bytes received)."""
    c = Client(port)
    try:
        c.send(raw)
        method = raw.split(b" ", 1)[0].decode()
        r = c.read_response(method)
        return r, c.received
    finally:
        c.close()


def json_cfg(h, path, fmt="json"):
    up = h.upstream(name="U")
    dead = f"127.0.0.1:{free_port()}"
    cfg = {
        "access_log": {"path": str(path), "format": fmt},
        "upstreams": [upstream_cfg("u", up), upstream_cfg("d", dead)],
        "routes": [{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "u"},
                   {"name": "dead", "match": {"path_prefix": "/dead"}, "upstream": "d"},
                   {"name": "all", "match": {"path_prefix": "/x"}, "upstream": "u"}],
    }
    return up, dead, cfg


def test_json_lines(h):
    log = h.tmp_path / "access.log"
    up, dead, cfg = json_cfg(h, log)
    tp = h.turnpike(cfg)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    reqs = {
        "get": build_request("GET", "/api/x?y=1&z=2", [("X-Request-Id", "req-get-1"),
                                                         ("traceparent", f"00-{trace}-00f067aa0ba902b7-01")]),
        "post": build_request("POST", "/api/p", [("X-Request-Id", "req-post-2")], body=b"hello world"),
        "nomatch": build_request("GET", "/nowhere?q=1", [("X-Request-Id", "req-404-3")]),
        "dead": build_request("GET", "/dead/x", [("X-Request-Id", "req-502-4")]),
        "genid": build_request("GET", "/api/gen", host="other.host"),
    }
    resp = {k: exchange(tp.port, raw) for k, raw in reqs.items()}
    assert [resp[k][0].status for k in reqs] == [200, 200, 404, 502, 200]
    lines = wait_lines(log, len(reqs))
    assert len(lines) == len(reqs), lines
    entries = {}
    for ln in lines:
        e = json.loads(ln)
        entries[e["request_id"]] = e
    gen_id = resp["genid"][0].header("x-request-id")
    assert HEX32.fullmatch(gen_id), gen_id
    assert set(entries) == {"req-get-1", "req-post-2", "req-404-3", "req-502-4", gen_id}, list(entries)

    for key, rid in (("get", "req-get-1"), ("post", "req-post-2"), ("nomatch", "req-404-3"), ("dead", "req-502-4"),
                     ("genid", gen_id)):
        e = entries[rid]
        r, received = resp[key]
        gateway_made = key in ("nomatch", "dead")
        assert set(e) == FIELDS | ({"error"} if gateway_made else set()), (key, sorted(e))
        assert TIME_MS.fullmatch(e["time"]), e
        assert r.header("x-request-id") == e["request_id"], (key, e, r)
        assert HEX32.fullmatch(e["trace_id"]), e
        assert e["client"] == "127.0.0.1", e
        assert e["status"] == r.status, e
        assert e["bytes_in"] == len(reqs[key]), (key, e["bytes_in"], len(reqs[key]))
        assert e["bytes_out"] == received, (key, e["bytes_out"], received)
        assert isinstance(e["duration_ms"], (int, float)) and e["duration_ms"] >= 0, e
        assert e["subject"] is None, e  # no route here authenticates
        if gateway_made:
            assert isinstance(e["error"], str) and e["error"], e
            assert e["error"] == r.json()["error"], (e, r.body)

    e = entries["req-get-1"]
    assert (e["method"], e["host"], e["path"], e["route"], e["upstream"], e["endpoint"]) == \
        ("GET", "test.local", "/api/x", "api", "u", up.addr), e
    assert e["trace_id"] == trace
    assert isinstance(e["upstream_ms"], (int, float)) and 0 <= e["upstream_ms"] <= e["duration_ms"], e
    e = entries["req-post-2"]
    assert (e["method"], e["path"], e["route"]) == ("POST", "/api/p", "api"), e
    e = entries["req-404-3"]
    assert (e["method"], e["path"], e["status"]) == ("GET", "/nowhere", 404), e
    assert (e["route"], e["upstream"], e["endpoint"], e["upstream_ms"]) == (None, None, None, None), e
    e = entries["req-502-4"]
    assert (e["route"], e["upstream"], e["status"]) == ("dead", "d", 502), e
    e = entries[gen_id]
    assert (e["host"], e["path"]) == ("other.host", "/api/gen"), e
    # the trace id started by the gateway is the one the upstream received
    tps = [q.header("traceparent") for q in up.requests if q.target == "/api/gen"]
    assert len(tps) == 1 and tps[0].split("-")[1] == e["trace_id"], (tps, e)
    assert metrics(tp).value("turnpike_access_log_dropped_total", default=0) == 0


def test_combined_format(h):
    log = h.tmp_path / "combined.log"
    up, dead, cfg = json_cfg(h, log, fmt="combined")
    tp = h.turnpike(cfg)
    r1, _ = exchange(tp.port, build_request("GET", "/x?y=1", [("Referer", "http://ref.example/page?a=1"),
                                                                ("User-Agent", "tp-test/1.0 (x)")]))
    assert (r1.status, r1.body) == (200, b"GET /x?y=1")
    wait_lines(log, 1)
    r2, _ = exchange(tp.port, build_request("HEAD", "/x/head"))
    assert r2.status == 200
    wait_lines(log, 2)
    r3, _ = exchange(tp.port, build_request("GET", "/x/q", [("User-Agent", 'say "hi"\\')]))
    assert r3.status == 200
    lines = wait_lines(log, 3)
    assert len(lines) == 3, lines
    head = r'^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
    assert re.fullmatch(head + r'"GET /x\?y=1 HTTP/1\.1" 200 10 "http://ref\.example/page\?a=1" '
                               r'"tp-test/1\.0 \(x\)"$', lines[0]), lines[0]
    assert re.fullmatch(head + r'"HEAD /x/head HTTP/1\.1" 200 - "-" "-"$', lines[1]), lines[1]
    assert re.fullmatch(head + r'"GET /x/q HTTP/1\.1" 200 8 "-" "say \\x22hi\\x22\\x5C"$', lines[2]), lines[2]


def test_sigusr1_reopens_after_rename(h):
    log = h.tmp_path / "access.log"
    rotated = h.tmp_path / "access.log.1"
    up, dead, cfg = json_cfg(h, log)
    tp = h.turnpike(cfg)

    def req(rid):
        r, _ = exchange(tp.port, build_request("GET", f"/api/{rid}", [("X-Request-Id", rid)]))
        assert r.status == 200, r

    for i in range(3):
        req(f"before-{i}")
    wait_lines(log, 3)
    os.rename(log, rotated)  # logrotate's "create" mode moves the file away
    req("between")  # still goes to the open (renamed) file
    wait_lines(rotated, 4)
    err0 = len(tp.stderr())
    tp.signal(signal.SIGUSR1)
    wait_until(lambda: "access log reopened" in tp.stderr()[err0:], T(10), what="the reopen on stderr")
    assert log.exists()
    after = [f"after-{i}" for i in range(8)]  # fresh connections: both workers
    for rid in after:
        req(rid)
    new_lines = wait_lines(log, len(after))
    assert [json.loads(x)["request_id"] for x in new_lines] and \
        sorted(json.loads(x)["request_id"] for x in new_lines) == sorted(after), new_lines
    old_ids = [json.loads(x)["request_id"] for x in lines_of(rotated)]
    assert sorted(old_ids) == sorted([f"before-{i}" for i in range(3)] + ["between"]), old_ids


def test_stdout(h):
    up, dead, cfg = json_cfg(h, "-")
    tp = h.turnpike(cfg)
    for i in range(3):
        r, _ = exchange(tp.port, build_request("GET", f"/api/o{i}", [("X-Request-Id", f"out-{i}")]))
        assert r.status == 200
    lines = wait_lines(tp.stdout_path, 3)
    ids = sorted(json.loads(x)["request_id"] for x in lines)
    assert ids == ["out-0", "out-1", "out-2"], lines


def test_client_gone_logged_499(h):
    """operations.md: a request that was read but never answered because the client
    went away is logged with status 499."""
    log = h.tmp_path / "access.log"
    gate = Gate()
    up = h.upstream(gate.handler, name="G")
    # upstream_response is long: a 504 cannot come before the wait below ends
    tp = h.turnpike({"access_log": {"path": str(log), "format": "json"}, "timeouts": {"upstream_response": "5m"},
                     "upstreams": [upstream_cfg("g", up)], "routes": [{"name": "held", "upstream": "g"}]})
    c = Client(tp.port)
    c.send(build_request("GET", "/held", [("X-Request-Id", "gone-1")]))
    up.wait_heads(1)
    # the client goes away for good: a reset, not a half-close (which must still get its answer)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    try:
        lines = wait_lines(log, 1, what="the 499 line")
    finally:
        gate.open()
    e = json.loads(lines[0])
    assert (e["request_id"], e["status"], e["route"], e["path"]) == ("gone-1", 499, "held", "/held"), e
    # and the upstream request was abandoned: its connection is closed
    wait_until(lambda: up.closed_conns == up.accepted, T(10), what="the upstream connection to close")
