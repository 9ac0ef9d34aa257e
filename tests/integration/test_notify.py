# SPDX-License-Identifier: MIT
"""systemd notify protocol (docs/reference.md "Signals", operations.md "systemd"): the test
stands in for systemd with a unix datagram socket named by NOTIFY_SOCKET (a path,
or @name in the abstract namespace): READY=1 once the listeners accept, RELOADING=1
with MONOTONIC_USEC then READY=1 around a reload (also a failed one), STOPPING=1 on
SIGTERM."""
import os
import re
import signal
import tempfile
import time

import pytest

from tp_harness import T, get, upstream_cfg
from tp_more import Notify, config_text, derive, env_turnpike, fields, reload, write_config, write_text_atomic


def mono_us():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def spawn_until_ready(h, notify, config):
    """Starts turnpike with NOTIFY_SOCKET and waits for READY=1 on the socket
    (not through /readyz). Returns (tp, messages up to READY)."""
    for attempt in range(4):
        tp = env_turnpike(h, config, {"NOTIFY_SOCKET": notify.addr}, start=False).spawn()
        msgs = []
        deadline = time.monotonic() + T(20)
        while True:
            if tp.proc.poll() is not None:
                break
            try:
                msg = notify.recv(timeout=0.2)
            except AssertionError:
                assert time.monotonic() < deadline, f"no READY=1 within {T(20)}s:\n{tp.stderr()}"
                continue
            msgs.append(msg)
            if "READY" in fields(msg):
                return tp, msgs
        tp.wait()
        tp.stop()
        tp.checked = True
        if "in use" in tp.stderr() and attempt < 3:
            continue  # port race with another test
        raise AssertionError(f"turnpike exited with {tp.rc} at startup:\n{tp.stderr()}")
    raise AssertionError("could not start turnpike")


@pytest.fixture(params=["path", "abstract"])
def notify(request):
    if request.param == "path":
        d = tempfile.mkdtemp(prefix="tpn", dir="/tmp")  # sun_path is short: keep it short
        n = Notify(os.path.join(d, "notify"))
        yield n
        n.close()
        os.rmdir(d)
    else:
        n = Notify(f"@turnpike-test-{os.getpid()}-{time.monotonic_ns()}")
        yield n
        n.close()


def test_notify_lifecycle(h, notify):
    up = h.upstream(name="U")
    tp, msgs = spawn_until_ready(h, notify, {"upstreams": [upstream_cfg("u", up)],
                                             "routes": [{"name": "all", "upstream": "u"}]})
    for m in msgs:
        f = fields(m)
        assert "RELOADING" not in f and "STOPPING" not in f, msgs
    ready = fields(msgs[-1])
    assert ready["READY"] == "1", msgs
    assert ready.get("STATUS"), f"no STATUS= with READY=1: {msgs}"
    # READY=1 means bound and serving: no waiting here
    r = get(tp.port, "/first")
    assert (r.status, r.body) == (200, b"GET /first"), r
    st, _ = tp.admin_get("/readyz")
    assert st == 200

    # a successful reload
    write_config(tp, derive(tp, routes=[{"name": "all", "upstream": "u",
                                         "response_headers": {"set": {"x-gen": "2"}}}]))
    before = mono_us()
    tp.signal(signal.SIGHUP)
    m1 = fields(notify.recv())
    after = mono_us()
    assert m1.get("RELOADING") == "1", m1
    assert re.fullmatch(r"\d+", m1.get("MONOTONIC_USEC", "")), m1
    assert before <= int(m1["MONOTONIC_USEC"]) <= after, (before, m1, after)
    m2 = fields(notify.recv())
    assert m2.get("READY") == "1" and "RELOADING" not in m2, m2
    assert m2.get("STATUS") == "generation 2", m2
    assert get(tp.port, "/x").header("x-gen") == "2"

    # a failed reload: RELOADING=1, then READY=1 with the error in STATUS
    text = config_text(derive(tp, routes=[{"name": "all", "upstream": "nope"}]))
    write_text_atomic(tp.config_path, text)
    tp.signal(signal.SIGHUP)
    m3 = fields(notify.recv())
    assert m3.get("RELOADING") == "1" and re.fullmatch(r"\d+", m3.get("MONOTONIC_USEC", "")), m3
    m4 = fields(notify.recv())
    assert m4.get("READY") == "1", m4
    assert "reload failed" in m4.get("STATUS", "") and 'no upstream named "nope"' in m4["STATUS"], m4
    assert get(tp.port, "/y").header("x-gen") == "2"
    assert notify.pending() == []

    # shutdown
    tp.signal(signal.SIGTERM)
    m5 = fields(notify.recv())
    assert m5.get("STOPPING") == "1", m5
    assert tp.wait() == 0
    tp.stop()
    tp.check_clean()
    rest = [fields(m) for m in notify.pending()]
    assert all("READY" not in f and "RELOADING" not in f for f in rest), rest


def test_no_notify_socket_no_problem(h):
    """NOTIFY_SOCKET naming a socket nobody listens on: turnpike still runs and reloads."""
    up = h.upstream(name="U")
    tp = env_turnpike(h, {"upstreams": [upstream_cfg("u", up)], "routes": [{"name": "all", "upstream": "u"}]},
                      {"NOTIFY_SOCKET": f"/tmp/tp-nobody-{os.getpid()}-{time.monotonic_ns()}"})
    assert reload(tp, derive(tp)) == 2
    assert get(tp.port, "/z").status == 200
