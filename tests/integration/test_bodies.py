# SPDX-License-Identifier: MIT
"""Bodies end to end, checked by SHA-256: a 5 MiB request body, an 8 MiB
response body, chunked in both directions, and a slow upstream reader
(backpressure)."""
import threading

from tp_harness import Client, build_response, chunked, payload, sha256, upstream_cfg

MiB = 1 << 20
BIG_RESP = payload(8 * MiB, seed=8)
CHUNKED_RESP = payload(1 * MiB + 12345, seed=3)


def handler(req, conn):
    if req.target == "/download":
        return build_response(200, BIG_RESP, [("Content-Type", "application/octet-stream")])
    if req.target == "/download-chunked":
        return build_response(200, CHUNKED_RESP, chunk=True)
    te = req.header("transfer-encoding")
    info = f"{len(req.body)} {sha256(req.body)} te={te} cl={req.header('content-length')}"
    return build_response(200, info.encode())


def start(h, **upkw):
    up = h.upstream(handler, **upkw)
    tp = h.turnpike({
        "limits": {"max_body_bytes": "10MiB"},
        "upstreams": [upstream_cfg("main", up)],
        "routes": [{"upstream": "main"}],
    })
    return up, tp


def send_in_thread(c, data):
    """Sends data from a thread, so the response can be read while sending."""
    err = []

    def run():
        try:
            c.send(data)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, err


def test_5mib_request_body(h):
    up, tp = start(h)
    body = payload(5 * MiB, seed=5)
    c = Client(tp.port)
    t, err = send_in_thread(c, f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    r = c.read_response()
    t.join(10)
    assert not err
    assert r.status == 200, r
    assert r.body == f"{len(body)} {sha256(body)} te=None cl={len(body)}".encode()
    c.close()


def test_8mib_response_body(h):
    up, tp = start(h)
    c = Client(tp.port)
    for _ in range(2):  # twice on one connection: the framing ends exactly
        c.request("GET", "/download")
        r = c.read_response()
        assert r.status == 200
        assert r.header("content-length") == str(len(BIG_RESP))
        assert len(r.body) == len(BIG_RESP) and sha256(r.body) == sha256(BIG_RESP)
    c.close()


def test_chunked_request_body(h):
    up, tp = start(h)
    body = payload(300000, seed=7)
    c = Client(tp.port)
    c.send(b"POST /chunked-up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, (1, 5000, 77777, 16)))
    r = c.read_response()
    assert r.status == 200, r
    assert r.body == f"{len(body)} {sha256(body)} te=chunked cl=None".encode()
    req = up.requests[0]
    assert req.chunked and req.body == body  # the upstream's parser checked the chunk framing
    # and the next request on the connection is fine
    c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    r = c.read_response()
    assert r.status == 200 and r.body.startswith(b"0 "), r
    c.close()


def test_chunked_request_body_split_writes(h):
    # the same, with the chunk framing cut at every awkward place across writes
    up, tp = start(h)
    body = b"0123456789abcdef" * 50
    wire = b"POST /split HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, (3, 100, 17))
    c = Client(tp.port)
    c.sock.setsockopt(6, 1, 1)  # TCP_NODELAY
    for i in range(0, len(wire), 7):
        c.send(wire[i : i + 7])
    r = c.read_response()
    assert r.status == 200, r
    assert r.body == f"{len(body)} {sha256(body)} te=chunked cl=None".encode()
    c.close()


def test_chunked_response_body(h):
    up, tp = start(h)
    c = Client(tp.port)
    c.request("GET", "/download-chunked")
    r = c.read_response()
    assert r.status == 200
    assert r.framing == "chunked", r
    assert sha256(r.body) == sha256(CHUNKED_RESP)
    c.request("GET", "/download-chunked")
    r = c.read_response()
    assert sha256(r.body) == sha256(CHUNKED_RESP)
    c.close()


def test_slow_upstream_reader(h):
    # the upstream reads 4 KiB at a time with a pause: the gateway must hold
    # back (not drop, not time out: upstream_response counts from the end of the request)
    up, tp = start(h, recv_size=4096, recv_delay=0.001, rcvbuf=16384)
    body = payload(5 * MiB, seed=11)
    c = Client(tp.port, timeout=120)
    t, err = send_in_thread(c, f"PUT /slow HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    r = c.read_response()
    t.join(10)
    assert not err
    assert r.status == 200, r
    assert r.body == f"{len(body)} {sha256(body)} te=None cl={len(body)}".encode()
    c.close()


def test_request_body_trickled(h):
    # head and Content-Length body in many small writes
    up, tp = start(h)
    body = payload(20000, seed=13)
    wire = f"POST /trickle HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    c = Client(tp.port)
    c.sock.setsockopt(6, 1, 1)  # TCP_NODELAY
    for i in range(0, len(wire), 997):
        c.send(wire[i : i + 997])
    r = c.read_response()
    assert r.status == 200, r
    assert r.body == f"{len(body)} {sha256(body)} te=None cl={len(body)}".encode()
    c.close()
