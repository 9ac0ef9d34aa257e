# SPDX-License-Identifier: MIT
"""TLS: termination on a listener (SNI certificate choice, protocols, ALPN,
bodies and pipelining over TLS, certificates re-read on reload) and TLS to
upstreams (verification against a CA, SNI, keep-alive reuse). Certificates
come from the openssl command line, made per test session."""
import hashlib
import http.server
import json
import signal
import socket
import socketserver
import ssl
import subprocess
import threading

import pytest

from tp_harness import BIN, T, Turnpike, get, payload, upstream_cfg, wait_until


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "otherca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-days", "2", "-subj", f"/CN=turnpike test {ca}")
    for name in ("a", "b"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
            f"/CN={name}.test")
        (d / f"{name}.ext").write_text(f"subjectAltName=DNS:{name}.test,IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return d


class TlsTurnpike(Turnpike):
    """A turnpike whose listener "public" terminates TLS with <tls>."""

    def __init__(self, tmp_path, config, tls, name):
        super().__init__(tmp_path, config, admin=True, name=name)
        self.tls = tls

    def _write_config(self):
        super()._write_config()
        self.config["listeners"][0]["tls"] = self.tls
        self.config_path.write_text(json.dumps(self.config, indent=1) + "\n")


def start_tls(h, pki, config, tls=None, name="tls"):
    tls = tls or {"certificates": [{"cert": str(pki / "a.pem"), "key": str(pki / "a.key")},
                                   {"cert": str(pki / "b.pem"), "key": str(pki / "b.key")}]}
    tp = TlsTurnpike(h.tmp_path, config, tls, name=f"{name}{len(h.turnpikes)}")
    h.turnpikes.append(tp)
    return tp.start()


def client_ctx(pki, **kw):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def tls_connect(port, pki, sni="a.test", ctx=None):
    ctx = ctx or client_ctx(pki)
    s = socket.create_connection(("127.0.0.1", port), timeout=T(10))
    return ctx.wrap_socket(s, server_hostname=sni)


def read_response(s):
    """(status, headers dict lowercase, body) of one Content-Length response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before the head: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    n = int(hdrs.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(65536)
        assert chunk, "closed in the body"
        rest += chunk
    return status, hdrs, rest[:n], rest[n:]


def cert_cn(s):
    subject = dict(x[0] for x in s.getpeercert()["subject"])
    return subject["commonName"]


def test_termination_with_sni(h, pki):
    up = h.upstream()
    tp = start_tls(h, pki, {"upstreams": [upstream_cfg("u", up)], "routes": [{"upstream": "u"}]})
    for sni, want in (("a.test", "a.test"), ("b.test", "b.test")):
        s = tls_connect(tp.port, pki, sni)
        assert cert_cn(s) == want
        s.sendall(b"GET /x HTTP/1.1\r\nHost: " + sni.encode() + b"\r\n\r\n")
        status, hdrs, body, _ = read_response(s)
        assert status == 200 and hdrs.get("x-request-id"), hdrs
        s.close()
    # a name no certificate has: the first certificate (the default)
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    s = tls_connect(tp.port, pki, "unknown.test", ctx)
    assert cert_cn(s) == "a.test"
    s.close()
    heads = up.heads
    assert heads and all(r.header("x-forwarded-proto") == "https" for r in heads), heads
    # plaintext on the TLS port is a failed handshake: closed, nothing proxied
    n = len(up.heads)
    raw = socket.create_connection(("127.0.0.1", tp.port), timeout=T(10))
    raw.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    got = b""
    try:
        while True:
            chunk = raw.recv(4096)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    raw.close()
    assert b"HTTP/1.1 200" not in got and len(up.heads) == n


def test_bodies_and_pipelining_over_tls(h, pki):
    big = payload(3 * 1024 * 1024, seed=7)

    def handler(req, conn):
        if req.target == "/big":
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big
        body = hashlib.sha256(req.body).hexdigest().encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    up = h.upstream(handler)
    tp = start_tls(h, pki, {"upstreams": [upstream_cfg("u", up)], "routes": [{"upstream": "u"}]})
    s = tls_connect(tp.port, pki)
    s.sendall(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
    status, _, body, rest = read_response(s)
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(big).digest() and rest == b""
    upload = payload(2 * 1024 * 1024, seed=8)
    s.sendall(b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % len(upload) + upload)
    status, _, body, _ = read_response(s)
    assert status == 200 and body.decode() == hashlib.sha256(upload).hexdigest()
    # ten pipelined requests in one write: ten answers, in order
    s.sendall(b"".join(b"POST /p%d HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\n\r\n%d" % (i, i) for i in range(10)))
    leftover = b""
    for i in range(10):
        data = leftover
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        n = int([ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")][0].split(b":")[1])
        while len(rest) < n:
            rest += s.recv(65536)
        assert rest[:n].decode() == hashlib.sha256(str(i).encode()).hexdigest(), i
        leftover = rest[n:]
    s.close()


def test_protocols_and_alpn(h, pki):
    up = h.upstream()
    tls = {"certificates": [{"cert": str(pki / "a.pem"), "key": str(pki / "a.key")}], "protocols": ["TLSv1.3"]}
    tp = start_tls(h, pki, {"upstreams": [upstream_cfg("u", up)], "routes": [{"upstream": "u"}]}, tls=tls)
    old = client_ctx(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_connect(tp.port, pki, ctx=old)
    ctx = client_ctx(pki)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    s = tls_connect(tp.port, pki, ctx=ctx)
    assert s.version() == "TLSv1.3" and s.selected_alpn_protocol() == "http/1.1"
    s.close()
    only_h2 = client_ctx(pki)
    only_h2.set_alpn_protocols(["h2"])
    s = tls_connect(tp.port, pki, ctx=only_h2)
    assert s.selected_alpn_protocol() is None  # no protocol in common: no ALPN, HTTP/1.1 still works
    s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert read_response(s)[0] == 200
    s.close()


def test_certificates_reread_on_reload(h, pki):
    up = h.upstream()
    cert, key = h.tmp_path / "live.pem", h.tmp_path / "live.key"
    cert.write_bytes((pki / "a.pem").read_bytes())
    key.write_bytes((pki / "a.key").read_bytes())
    tp = start_tls(h, pki, {"upstreams": [upstream_cfg("u", up)], "routes": [{"upstream": "u"}]},
                   tls={"certificates": [{"cert": str(cert), "key": str(key)}]})
    ctx = client_ctx(pki)
    ctx.check_hostname = False
    s = tls_connect(tp.port, pki, "a.test", ctx)
    assert cert_cn(s) == "a.test"
    s.close()
    cert.write_bytes((pki / "b.pem").read_bytes())
    key.write_bytes((pki / "b.key").read_bytes())
    tp.signal(signal.SIGHUP)
    wait_until(lambda: json.loads(tp.admin_get("/config")[1])["generation"] == 2, T(10), what="reload")
    s = tls_connect(tp.port, pki, "a.test", ctx)
    assert cert_cn(s) == "b.test"
    s.close()
    # a key that does not match: the reload fails, the old certificate stays
    key.write_bytes((pki / "a.key").read_bytes())
    tp.signal(signal.SIGHUP)
    wait_until(lambda: "does not match" in tp.stderr(), T(10), what="the reload error")
    s = tls_connect(tp.port, pki, "a.test", ctx)
    assert cert_cn(s) == "b.test"
    s.close()


def test_check_reports_certificate_errors(tmp_path, pki):
    if not BIN:
        pytest.skip("TURNPIKE_BIN is not set")
    conf = tmp_path / "t.yaml"
    conf.write_text("listeners:\n"
                    "  - address: 127.0.0.1:1\n"
                    "    tls:\n"
                    f"      certificates: [{{cert: {pki / 'a.pem'}, key: {pki / 'b.key'}}}]\n")
    p = subprocess.run([BIN, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith(f"{conf}:4:29: listeners[0].tls.certificates[0].cert: key {pki / 'b.key'} does not "
                               f"match certificate {pki / 'a.pem'}"), p.stderr


class _TlsUpstream:
    """An HTTPS upstream (Python's http.server behind ssl) that counts connections."""

    def __init__(self, pki, cert="a"):
        outer = self
        self.accepted = 0
        self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.paths.append(self.path)
                body = f"tls upstream {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = super().get_request()
                outer.accepted += 1
                return sock, addr

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls_up(pki):
    u = _TlsUpstream(pki)
    yield u
    u.stop()


def test_upstream_tls_verified_with_sni_and_reused(h, pki, tls_up):
    tp = h.turnpike({"upstreams": [{"name": "s", "endpoints": [{"address": tls_up.addr}], "keepalive": 8,
                                    "tls": {"sni": "a.test", "ca": str(pki / "ca.pem")}}],
                     "routes": [{"upstream": "s"}]})
    c = h.client(tp.port)
    for i in range(20):
        c.request("GET", f"/r{i}")
        r = c.read_response()
        assert r.status == 200 and r.body == f"tls upstream /r{i}".encode(), r
    assert 1 <= tls_up.accepted <= 2, tls_up.accepted


def test_upstream_tls_verification_failures(h, pki, tls_up):
    # the certificate is for a.test: a wrong name, or a CA that did not sign it, is a connect failure (502)
    for tls in ({"sni": "b.test", "ca": str(pki / "ca.pem")}, {"sni": "a.test", "ca": str(pki / "otherca.pem")}):
        tp = h.turnpike({"upstreams": [{"name": "s", "endpoints": [{"address": tls_up.addr}], "tls": tls}],
                         "routes": [{"upstream": "s"}]})
        r = get(tp.port, "/v")
        assert r.status == 502, (tls, r)
        assert r.json()["status"] == 502
        _, body = tp.admin_get("/metrics")
        assert f'turnpike_upstream_connect_failures_total{{upstream="s",endpoint="{tls_up.addr}"}} 1' in body.decode()
    assert tls_up.paths == []
    # verify: false accepts it; without sni the certificate is checked against the address when verifying
    tp = h.turnpike({"upstreams": [{"name": "s", "endpoints": [{"address": tls_up.addr}], "tls": {"verify": False}}],
                     "routes": [{"upstream": "s"}]})
    assert get(tp.port, "/nv").status == 200
    tp = h.turnpike({"upstreams": [{"name": "s", "endpoints": [{"address": tls_up.addr}],
                                    "tls": {"ca": str(pki / "ca.pem")}}],
                     "routes": [{"upstream": "s"}]})
    assert get(tp.port, "/ip").status == 200  # the certificate lists IP:127.0.0.1
    assert tls_up.paths == ["/nv", "/ip"]


def test_health_checks_speak_tls_to_tls_upstreams(h, pki, tls_up):
    # The probes of an upstream with tls use TLS, verified like the proxied connections:
    # the endpoint stays healthy and serves. A probe that cannot verify marks it unhealthy (503).
    hc = {"path": "/hc", "interval": "100ms", "timeout": "1s", "healthy_after": 1, "unhealthy_after": 1}
    tp = h.turnpike({"upstreams": [{"name": "s", "endpoints": [{"address": tls_up.addr}], "health_check": hc,
                                    "tls": {"sni": "a.test", "ca": str(pki / "ca.pem")}}],
                     "routes": [{"upstream": "s"}]})
    wait_until(lambda: tls_up.paths.count("/hc") >= 3, T(10), what="three TLS health checks")
    assert get(tp.port, "/after-checks").status == 200
    tp2 = h.turnpike({"upstreams": [{"name": "s", "endpoints": [{"address": tls_up.addr}], "health_check": hc,
                                     "tls": {"sni": "b.test", "ca": str(pki / "ca.pem")}}],
                      "routes": [{"upstream": "s"}]})
    wait_until(lambda: "is unhealthy: TLS handshake" in tp2.stderr(), T(10), what="the failed probe in the log")
    r = get(tp2.port, "/unhealthy")
    assert r.status == 503, r


def test_upstream_tls_handshake_is_bounded_by_upstream_connect(h):
    # An upstream that accepts TCP and never answers the ClientHello: the handshake is part
    # of connecting, so upstream_connect ends it (a connect failure, 502), not upstream_response.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    addr = f"127.0.0.1:{srv.getsockname()[1]}"
    try:
        tp = h.turnpike({"timeouts": {"upstream_connect": "500ms", "upstream_response": "120s"},
                         "upstreams": [{"name": "s", "endpoints": [{"address": addr}], "tls": {"verify": False}}],
                         "routes": [{"upstream": "s"}]})
        r = get(tp.port, "/hs")
        assert r.status == 502, r
        assert r.json()["error"] == "upstream connect failure: timed out", r.json()
        _, body = tp.admin_get("/metrics")
        assert f'turnpike_upstream_connect_failures_total{{upstream="s",endpoint="{addr}"}} 1' in body.decode()
    finally:
        srv.close()
