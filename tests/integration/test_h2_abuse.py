# SPDX-License-Identifier: MIT
"""Downstream HTTP/2 abuse defences (docs/reference.md "HTTP/2", the table of
what a client gets): CONTINUATION, SETTINGS and PING floods, an HPACK bomb,
stream-id misuse. Each must end the connection with a GOAWAY carrying an
error code, and the gateway must go on serving other clients. Frames are
struct-packed on a raw socket so nothing on the client side validates or
coalesces them; the answer is read raw too (python-h2 would raise on frames
after a GOAWAY)."""
import socket
import struct
import threading
import time

import h2.errors
import pytest

from test_h2 import H2Client, cfg, start
from tp_harness import T, build_response, get
from tp_more import metrics

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
E = h2.errors.ErrorCodes


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, sid) + payload


def hp_int(value, prefix_bits, first=0):
    """An HPACK integer (RFC 7541 5.1) with its <prefix_bits>-bit prefix."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out = [first | top]
    value -= top
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def hp_str(s):
    return hp_int(len(s), 7) + s  # no Huffman coding


def hp_literal(name, value, index=False):
    """A literal field with a new name, with (0x40) or without (0x00) incremental indexing."""
    return (b"\x40" if index else b"\x00") + hp_str(name) + hp_str(value)


# GET http://test.local/ : :method GET (static 2), :scheme http (6), :path / (4),
# :authority as a literal without indexing on static name 1
REQUEST_BLOCK = b"\x82\x86\x84" + b"\x01" + hp_str(b"test.local")


class Raw:
    """A prior-knowledge h2c connection on which the test writes raw frames."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=T(10))
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.buf, self.frames, self.closed = b"", [], False

    def read_until(self, pred, timeout=None, what="frames"):
        """Reads frames into self.frames until pred(self.frames) holds; fails on a timeout
        or a close before it does. Returns self.frames."""
        deadline = time.monotonic() + (timeout or T(10))
        while not pred(self.frames):
            left = deadline - time.monotonic()
            assert left > 0 and not self.closed, f"no {what}: {[(f[0], f[2]) for f in self.frames]}"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                continue
            self.buf += data
            while len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + length:
                    break
                ftype, flags, sid = struct.unpack(">BBI", self.buf[3:9])
                self.frames.append((ftype, flags, sid & 0x7fffffff, self.buf[9:9 + length]))
                self.buf = self.buf[9 + length:]
        return self.frames

    def handshake(self):
        """Reads the gateway's SETTINGS, acknowledges them and waits for the ACK of ours:
        from here on the gateway's settings are in force on both sides. Returns them."""
        self.read_until(lambda fs: any(f[0] == SETTINGS and not f[1] & ACK for f in fs), what="SETTINGS")
        self.send(frame(SETTINGS, ACK, 0))
        self.read_until(lambda fs: any(f[0] == SETTINGS and f[1] & ACK for f in fs), what="SETTINGS ACK")
        payload = next(f[3] for f in self.frames if f[0] == SETTINGS and not f[1] & ACK)
        return dict(struct.unpack(">HI", payload[i:i + 6]) for i in range(0, len(payload), 6))

    def send(self, data):
        """Writes without reading; stops quietly when the peer stops reading or closes."""
        self.sock.settimeout(T(5))
        try:
            self.sock.sendall(data)
            return True
        except (socket.timeout, BrokenPipeError, ConnectionResetError):
            return False

    def finish(self, timeout=None):
        """Reads to the close (or <timeout>): returns ([(type, flags, sid, payload)], closed)."""
        deadline = time.monotonic() + (timeout or T(10))
        buf, closed = b"", False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            buf += data
        buf = self.buf + buf
        frames, off = list(self.frames), 0
        while off + 9 <= len(buf):
            length = int.from_bytes(buf[off:off + 3], "big")
            ftype, flags, sid = struct.unpack(">BBI", buf[off + 3:off + 9])
            if off + 9 + length > len(buf):
                break
            frames.append((ftype, flags, sid & 0x7fffffff, buf[off + 9:off + 9 + length]))
            off += 9 + length
        self.sock.close()
        self.frames, self.buf, self.closed = frames, b"", closed
        return frames, closed


def assert_goaway(raw, code=None, timeout=None):
    """The connection ends with a GOAWAY whose error code is not NO_ERROR (and is
    <code> when given) and is closed by the gateway. Returns the code."""
    frames, closed = raw.finish(timeout)
    goaways = [f for f in frames if f[0] == GOAWAY]
    assert goaways, f"no GOAWAY in {len(frames)} frames ({sorted({f[0] for f in frames})}), closed={closed}"
    last_sid, err = struct.unpack(">II", goaways[-1][3][:8])
    err = E(err) if err in E._value2member_map_ else err
    assert err != E.NO_ERROR, "GOAWAY NO_ERROR after abuse"
    if code is not None:
        assert err == code, (err, code)
    assert closed, f"GOAWAY {err!r} but the connection stayed open"
    return err


def assert_still_serving(tp):
    """Another client, HTTP/2 and HTTP/1, is served after the abusive one went."""
    c = H2Client(tp.port)
    status, _, body = c.get("/after/h2")
    c.close()
    assert status == 200 and body == b"GET /after/h2", (status, body)
    r = get(tp.port, "/after/h1")
    assert r.status == 200 and r.body == b"GET /after/h1", r


def test_continuation_flood(h):
    """HEADERS without END_HEADERS and then a stream of small CONTINUATION frames
    (each a valid literal field, the decoded list staying far under the HPACK bomb
    bound, so only the CONTINUATION count can stop it). libnghttp2 stops after 8
    (max_continuations, CVE-2024-28182) with a fatal error that turnpike answers
    with GOAWAY PROTOCOL_ERROR. A control request first shows that CONTINUATION
    as such is served."""
    up = h.upstream()
    tp = start(h, cfg(up, limits={"max_header_bytes": 65536}))
    # control: a legitimate 40 KB header block, which python-h2 splits into HEADERS and
    # two CONTINUATION frames (16 KB frames), is served
    c = H2Client(tp.port)
    status, _, body = c.get("/control", headers=[("x-big", "v" * 40000)])
    assert status == 200 and body == b"GET /control", (status, body)
    c.close()
    raw = Raw(tp.port)
    out = frame(HEADERS, END_STREAM, 1, REQUEST_BLOCK)
    out += b"".join(frame(CONTINUATION, 0, 1, hp_literal(b"x-c", b"%d" % i)) for i in range(2000))
    raw.send(out)
    assert_goaway(raw, E.PROTOCOL_ERROR)
    assert len(up.heads) == 1, "the unfinished header block reached the upstream"
    assert_still_serving(tp)


def test_settings_flood(h):
    """Thousands of SETTINGS frames, none of their ACKs read: more than 64 queued
    acknowledgements (max_outbound_ack) is a flood: GOAWAY ENHANCE_YOUR_CALM."""
    up = h.upstream()
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    one = frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 65535))  # INITIAL_WINDOW_SIZE
    raw.send(one * 5000)
    assert_goaway(raw, E.ENHANCE_YOUR_CALM)
    assert_still_serving(tp)


def test_settings_with_too_many_entries(h):
    """A SETTINGS frame of more than 16 entries (max_settings): GOAWAY ENHANCE_YOUR_CALM."""
    up = h.upstream()
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    raw.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 65535) * 17))
    assert_goaway(raw, E.ENHANCE_YOUR_CALM)
    assert_still_serving(tp)


def test_ping_flood(h):
    """Thousands of PINGs, none of the ACKs read: GOAWAY ENHANCE_YOUR_CALM."""
    up = h.upstream()
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    raw.send(b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(5000)))
    assert_goaway(raw, E.ENHANCE_YOUR_CALM)
    assert_still_serving(tp)


def test_hpack_table_bomb(h):
    """One ~4 KB field inserted into the dynamic table, then referenced by a
    one-byte index thousands of times in the same (16 KB) header block: the decoded
    list passes 4 x max_header_bytes + 64 KiB: GOAWAY ENHANCE_YOUR_CALM, nothing
    reaches the upstream."""
    up = h.upstream()
    tp = start(h, cfg(up, limits={"max_header_bytes": 4096}))
    raw = Raw(tp.port)
    value = b"b" * 4000  # 6 + 4000 + 32 fits the default 4096-byte table
    block = REQUEST_BLOCK + hp_literal(b"x-bomb", value, index=True)
    block += hp_int(62, 7, 0x80) * (16000 - len(block))  # 62: the newest dynamic entry
    assert len(block) <= 16384
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    assert_goaway(raw, E.ENHANCE_YOUR_CALM)
    assert len(up.heads) == 0, "the bomb reached the upstream"
    m = metrics(tp)
    assert m.value("turnpike_h2_goaway_total", listener="public", reason="enhance_your_calm") == 1
    assert_still_serving(tp)


def test_even_stream_id(h):
    """A client may not open an even (server-initiated) stream: GOAWAY PROTOCOL_ERROR."""
    up = h.upstream()
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 2, REQUEST_BLOCK))
    assert_goaway(raw, E.PROTOCOL_ERROR)
    assert len(up.heads) == 0
    assert_still_serving(tp)


def test_decreasing_stream_id(h):
    """Stream 5, then a new stream 3 (lower than one already opened): GOAWAY PROTOCOL_ERROR."""
    up = h.upstream()
    up.allow_errors = True  # stream 5's upstream request may be cancelled by the close
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 5, REQUEST_BLOCK)
             + frame(HEADERS, END_STREAM | END_HEADERS, 3, REQUEST_BLOCK))
    assert_goaway(raw, E.PROTOCOL_ERROR)
    assert all(r.target == "/" for r in up.heads) and len(up.heads) <= 1, up.heads
    assert_still_serving(tp)


def test_skipped_stream_id_opened_later(h):
    """Stream 1, then 7 (3 and 5 skipped: implicitly closed), then a HEADERS opening 3:
    GOAWAY PROTOCOL_ERROR naming 7 as the last stream; 1 and 7 were served."""
    up = h.upstream()
    up.allow_errors = True
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, REQUEST_BLOCK))
    raw.read_until(lambda fs: any(f[0] == DATA and f[2] == 1 and f[1] & END_STREAM for f in fs), what="stream 1")
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 7, REQUEST_BLOCK))
    raw.read_until(lambda fs: any(f[0] == DATA and f[2] == 7 and f[1] & END_STREAM for f in fs), what="stream 7")
    assert not [f for f in raw.frames if f[0] == GOAWAY], "GOAWAY before the misuse"
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 3, REQUEST_BLOCK))
    assert_goaway(raw, E.PROTOCOL_ERROR)
    goaway = [f for f in raw.frames if f[0] == GOAWAY]
    assert struct.unpack(">I", goaway[-1][3][:4])[0] == 7, "GOAWAY's last stream id"
    assert len(up.heads) == 2, up.heads
    assert_still_serving(tp)


def test_late_headers_on_closed_streams_are_ignored(h):
    """What is not misuse stays allowed: trailers on a stream the gateway reset (they
    may have been sent before the client saw the RST_STREAM), and a HEADERS on a stream
    that completed, are ignored (RFC 9113 5.1 "closed"; nghttp2 keeps no closed streams,
    so the two cannot be told apart); the connection goes on."""
    up = h.upstream()
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    # stream 1: connection-specific field: RST_STREAM PROTOCOL_ERROR from the gateway
    raw.send(frame(HEADERS, END_HEADERS, 1, REQUEST_BLOCK + hp_literal(b"connection", b"close")))
    raw.read_until(lambda fs: any(f[0] == RST_STREAM and f[2] == 1 for f in fs), what="RST_STREAM 1")
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, hp_literal(b"x-trailer", b"late")))
    # stream 3 completes, then a second HEADERS on it
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 3, REQUEST_BLOCK))
    raw.read_until(lambda fs: any(f[0] == DATA and f[2] == 3 and f[1] & END_STREAM for f in fs), what="stream 3")
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 3, REQUEST_BLOCK))
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 5, REQUEST_BLOCK))
    raw.read_until(lambda fs: any(f[0] == DATA and f[2] == 5 and f[1] & END_STREAM for f in fs), what="stream 5")
    assert not [f for f in raw.frames if f[0] == GOAWAY], raw.frames
    assert len(up.heads) == 2, up.heads
    raw.sock.close()


def test_headers_on_half_closed_stream(h):
    """A second HEADERS on a stream the client already ended (half-closed remote, the
    response not sent yet): GOAWAY STREAM_CLOSED (nghttp2 makes it a connection error),
    the upstream request is cancelled."""
    gate = threading.Event()

    def handler(req, conn):
        if req.target == "/":
            gate.wait(T(20))
        return build_response(200, f"{req.method} {req.target}".encode())

    up = h.upstream(handler)
    up.allow_errors = True
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, REQUEST_BLOCK))
    up.wait_heads(1)
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, REQUEST_BLOCK))
    assert_goaway(raw, E.STREAM_CLOSED)
    gate.set()
    assert_still_serving(tp)


def test_data_on_idle_stream(h):
    """DATA on a stream never opened (above every id used): GOAWAY PROTOCOL_ERROR."""
    up = h.upstream()
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    raw.send(frame(DATA, END_STREAM, 3, b"hello"))
    assert_goaway(raw, E.PROTOCOL_ERROR)
    assert len(up.heads) == 0
    assert_still_serving(tp)


@pytest.mark.parametrize("sid,increment,code", [
    (0, 0x7fffffff, E.FLOW_CONTROL_ERROR),  # the connection window past 2^31-1
    (0, 0, E.PROTOCOL_ERROR),               # a zero increment on the connection
    (9, 1000, E.PROTOCOL_ERROR),            # WINDOW_UPDATE on an idle stream
])
def test_window_update_misuse_on_connection(h, sid, increment, code):
    up = h.upstream()
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    raw.send(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment)))
    assert_goaway(raw, code)
    assert_still_serving(tp)


def test_window_update_overflow_on_stream(h):
    """A stream's window past 2^31-1 is a stream error: RST_STREAM FLOW_CONTROL_ERROR for
    that stream (its upstream request cancelled); the connection serves another stream."""
    gate = threading.Event()

    def handler(req, conn):
        if req.target == "/slow":
            gate.wait(T(20))
        return build_response(200, req.target.encode())

    up = h.upstream(handler)
    up.allow_errors = True
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    slow = b"\x82\x86" + b"\x04" + hp_str(b"/slow") + b"\x01" + hp_str(b"test.local")
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 1, slow))
    up.wait_heads(1)
    raw.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0x7fffffff)))
    raw.read_until(lambda fs: any(f[0] == RST_STREAM and f[2] == 1 for f in fs), what="RST_STREAM 1")
    rst = next(f for f in raw.frames if f[0] == RST_STREAM and f[2] == 1)
    assert struct.unpack(">I", rst[3])[0] == E.FLOW_CONTROL_ERROR
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 3, REQUEST_BLOCK))
    raw.read_until(lambda fs: any(f[0] == DATA and f[2] == 3 and f[1] & END_STREAM for f in fs), what="stream 3")
    assert not [f for f in raw.frames if f[0] == GOAWAY]
    gate.set()
    raw.sock.close()


def test_initial_window_size_over_max(h):
    """SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1: GOAWAY FLOW_CONTROL_ERROR."""
    up = h.upstream()
    tp = start(h, cfg(up))
    raw = Raw(tp.port)
    raw.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 0x80000000)))
    assert_goaway(raw, E.FLOW_CONTROL_ERROR)
    assert_still_serving(tp)


def test_excess_streams_after_settings_ack_are_refused(h):
    """A client that acknowledged SETTINGS_MAX_CONCURRENT_STREAMS 3 and opens 5 streams
    anyway gets RST_STREAM REFUSED_STREAM for the 2 beyond the limit (not a connection
    error); they count as resets; the connection survives and the 3 others complete."""
    gate = threading.Event()

    def handler(req, conn):
        if req.target == "/":
            gate.wait(T(20))
        return build_response(200, f"{req.method} {req.target}".encode())

    up = h.upstream(handler)
    tp = start(h, cfg(up, limits={"h2_max_concurrent_streams": 3}))
    raw = Raw(tp.port)
    settings = raw.handshake()
    assert settings.get(0x3) == 3, settings  # MAX_CONCURRENT_STREAMS as configured
    sids = [1, 3, 5, 7, 9]
    raw.send(b"".join(frame(HEADERS, END_STREAM | END_HEADERS, sid, REQUEST_BLOCK) for sid in sids))
    raw.read_until(lambda fs: sum(f[0] == RST_STREAM for f in fs) >= 2, what="two refusals")
    up.wait_heads(3)
    rsts = {f[2]: struct.unpack(">I", f[3])[0] for f in raw.frames if f[0] == RST_STREAM}
    assert rsts == {7: E.REFUSED_STREAM, 9: E.REFUSED_STREAM}, rsts
    assert metrics(tp).value("turnpike_h2_resets_total", listener="public") == 2
    gate.set()
    raw.read_until(lambda fs: all(any(f[0] == DATA and f[2] == s and f[1] & END_STREAM for f in fs)
                                  for s in sids[:3]), what="the three streams")
    # a refused stream's id is used: a new stream goes on from 11, within the limit again
    raw.send(frame(HEADERS, END_STREAM | END_HEADERS, 11, REQUEST_BLOCK))
    raw.read_until(lambda fs: any(f[0] == DATA and f[2] == 11 and f[1] & END_STREAM for f in fs), what="stream 11")
    assert not [f for f in raw.frames if f[0] == GOAWAY], raw.frames
    assert len(up.heads) == 4
    raw.sock.close()


def test_excess_stream_refusals_count_as_resets(h):
    """Refusals past h2_max_resets_per_s in a second: GOAWAY ENHANCE_YOUR_CALM."""
    gate = threading.Event()

    def handler(req, conn):
        if req.target == "/":
            gate.wait(T(20))
        return build_response(200, f"{req.method} {req.target}".encode())

    up = h.upstream(handler)
    up.allow_errors = True
    tp = start(h, cfg(up, limits={"h2_max_concurrent_streams": 2, "h2_max_resets_per_s": 3}))
    raw = Raw(tp.port)
    raw.handshake()
    raw.send(b"".join(frame(HEADERS, END_STREAM | END_HEADERS, sid, REQUEST_BLOCK) for sid in range(1, 24, 2)))
    assert_goaway(raw, E.ENHANCE_YOUR_CALM)
    gate.set()
    assert_still_serving(tp)
