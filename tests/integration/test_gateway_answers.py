# SPDX-License-Identifier: MIT
"""What the gateway says itself, and what it adds for HTTP/1.0 clients
(docs/reference.md "Error responses", "What the gateway adds and removes"):

- every response the gateway makes carries Date (RFC 9110 6.6.1): direct_response,
  404, 429, 502, and the admin endpoints, as every proxied response does;
- a 502 says why: the reason and the system error behind it ("Connection refused"),
  the same text in the JSON body and in the access log;
- an HTTP/1.0 request without Host is forwarded with the endpoint's host:port as Host
  (a strict HTTP/1.1 upstream, real nginx, refuses a request without one), and with no
  X-Forwarded-Host, since the client named no host.
"""
import json
import os
import shutil
import signal
import subprocess
import time
from email.utils import parsedate_to_datetime

import pytest

from tp_harness import T, Client, assert_gateway_error, build_response, free_port, get, upstream_cfg, wait_until


def assert_date(r):
    d = r.header("date")
    assert d, f"no Date header: {r}"
    when = parsedate_to_datetime(d)
    assert abs(when.timestamp() - time.time()) < 300, d
    assert d.endswith(" GMT"), d


def test_date_on_every_gateway_answer(h):
    up = h.upstream(lambda req, conn: build_response(200, b"ok"))
    dead = f"127.0.0.1:{free_port()}"
    tp = h.turnpike({
        "upstreams": [upstream_cfg("main", up), upstream_cfg("dead", dead)],
        "routes": [
            {"name": "ping", "match": {"path": "/ping"}, "direct_response": {"status": 200, "body": "pong"}},
            {"name": "limited", "match": {"path": "/limited"}, "upstream": "main",
             "rate_limit": {"rate": "1/m", "burst": 1}},
            {"name": "dead", "match": {"path": "/dead"}, "upstream": "dead"},
            {"name": "main", "match": {"path": "/ok"}, "upstream": "main"},
        ],
    })
    r = get(tp.port, "/ping")
    assert (r.status, r.body) == (200, b"pong"), r
    assert_date(r)
    r = get(tp.port, "/nowhere")
    assert_gateway_error(r, 404)
    assert_date(r)
    assert get(tp.port, "/limited").status == 200
    r = get(tp.port, "/limited")
    assert_gateway_error(r, 429)
    assert_date(r)
    r = get(tp.port, "/dead")
    assert_gateway_error(r, 502)
    assert_date(r)
    r = get(tp.port, "/ok")
    assert r.status == 200, r
    assert_date(r)
    c = Client(tp.admin_port)
    try:
        c.request("GET", "/healthz", host=f"127.0.0.1:{tp.admin_port}")
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200, r
    assert_date(r)


def test_502_names_its_cause(h):
    log = h.tmp_path / "access.log"
    dead = f"127.0.0.1:{free_port()}"
    tp = h.turnpike({
        "access_log": {"path": str(log), "format": "json"},
        "upstreams": [upstream_cfg("dead", dead)],
        "routes": [{"name": "dead", "upstream": "dead"}],
    })
    r = get(tp.port, "/x")
    j = assert_gateway_error(r, 502)
    assert j["error"] == "upstream connect failure: Connection refused", j
    wait_until(lambda: log.exists() and log.read_text().count("\n") >= 1, T(10), what="access log line")
    e = json.loads(log.read_text().splitlines()[0])
    assert e["error"] == j["error"], (e, j)
    assert e["status"] == 502 and e["endpoint"] == dead, e
    assert "Connection refused" in tp.stderr(), tp.stderr()


@pytest.fixture
def nginx_upstream(tmp_path):
    """A real nginx (Debian nginx-light) on a loopback port: strict HTTP/1.1, and it
    answers with the Host and X-Forwarded-Host it received."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not exe:
        pytest.skip("nginx is not installed (scripts/setup.sh installs nginx-light)")
    port = free_port()
    d = tmp_path / "nginx"
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d};
    proxy_temp_path {d};
    fastcgi_temp_path {d};
    uwsgi_temp_path {d};
    scgi_temp_path {d};
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "host=$http_host xfh=$http_x_forwarded_host\\n"; }}
    }}
}}
""")
    p = subprocess.Popen([exe, "-c", str(conf), "-p", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def up():
        if p.poll() is not None:
            raise AssertionError(f"nginx exited: {p.stderr.read().decode(errors='replace')}")
        try:
            get(port, "/", host="probe")
            return True
        except OSError:
            return False

    try:
        wait_until(up, T(10), what="nginx listening")
        yield f"127.0.0.1:{port}"
    finally:
        p.send_signal(signal.SIGQUIT)
        try:
            p.wait(timeout=T(10))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_http10_without_host_gets_the_endpoint_as_host(h, nginx_upstream):
    tp = h.turnpike({"upstreams": [upstream_cfg("strict", nginx_upstream)], "routes": [{"upstream": "strict"}]})
    c = Client(tp.port)
    try:
        c.send(b"GET /x HTTP/1.0\r\n\r\n")
        r = c.read_response()
    finally:
        c.close()
    assert r.status == 200, r
    assert r.body == f"host={nginx_upstream} xfh=\n".encode(), r.body
    # with a Host, that one is forwarded, and named in X-Forwarded-Host
    r = get(tp.port, "/y", host="api.example", version="HTTP/1.0")
    assert r.status == 200, r
    assert r.body == b"host=api.example xfh=api.example\n", r.body
