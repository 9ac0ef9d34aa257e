# SPDX-License-Identifier: MIT
"""Reload on SIGHUP (docs/reference.md "Signals", operations.md "Reload"): new routing
after the generation moves; in-flight requests finish on their old configuration;
100 reloads under keep-alive load without a failed request or a dropped
connection; an invalid file changes nothing and is reported as FILE:LINE:COLUMN;
rate-limit buckets carry over."""
import os
import re
import shutil
import signal
import threading
import time

import tp_harness
from tp_harness import T, Client, assert_gateway_error, get, upstream_cfg, wait_until
from tp_more import (Gate, Loader, admin_json, config_text, derive, env_turnpike, generation, metrics, reload,
                     reload_fails, sighup_and_wait, write_config)


def test_reload_changes_routing(h):
    a = h.upstream(name="A")
    b = h.upstream(name="B")
    tp = h.turnpike({
        "upstreams": [upstream_cfg("a", a), upstream_cfg("b", b)],
        "routes": [{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "a"}],
    })
    assert generation(tp) == 1
    r = get(tp.port, "/api/1")
    assert (r.status, r.header("x-upstream")) == (200, "A"), r
    assert_gateway_error(get(tp.port, "/new"), 404)

    cfg = derive(tp, routes=[
        {"name": "api", "match": {"path_prefix": "/api"}, "upstream": "b"},
        {"name": "new", "match": {"path": "/new"}, "direct_response": {"status": 200, "body": "new route\n"}},
    ])
    assert reload(tp, cfg) == 2
    for i in range(6):  # fresh connections land on both workers
        r = get(tp.port, f"/api/{i}")
        assert (r.status, r.header("x-upstream"), r.body) == (200, "B", f"GET /api/{i}".encode()), r
        r = get(tp.port, "/new")
        assert (r.status, r.body) == (200, b"new route\n"), r
    assert a.count() == 1 and b.count() == 6, (a.count(), b.count())

    # and back again, on a keep-alive connection opened before the reload
    c = h.client(tp.port)
    c.request("GET", "/api/x")
    assert c.read_response().header("x-upstream") == "B"
    reload(tp, derive(tp, routes=[{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "a"}]))
    c.request("GET", "/api/y")
    r = c.read_response()
    assert (r.status, r.header("x-upstream")) == (200, "A"), r
    assert_gateway_error(get(tp.port, "/new"), 404)
    assert generation(tp) == 3


def test_inflight_request_finishes_on_old_config(h):
    gate = Gate()
    a = h.upstream(gate.handler, name="A")
    b = h.upstream(name="B")
    tp = h.turnpike({
        "upstreams": [upstream_cfg("a", a), upstream_cfg("b", b)],
        "routes": [{"name": "slow", "match": {"path_prefix": "/slow"}, "upstream": "a",
                    "response_headers": {"set": {"x-config": "old"}}}],
    })
    result = {}

    def slow():
        c = Client(tp.port, timeout=T(30))
        try:
            c.request("GET", "/slow/1")
            result["r"] = c.read_response()
        except Exception as e:  # noqa: BLE001 - reported below
            result["e"] = e
        finally:
            c.close()

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    a.wait_heads(1)  # the slow request is at upstream A, under generation 1

    reload(tp, derive(tp, routes=[{"name": "slow", "match": {"path_prefix": "/slow"}, "upstream": "b",
                                   "response_headers": {"set": {"x-config": "new"}}}]))
    for i in range(4):
        r = get(tp.port, f"/slow/n{i}")
        assert (r.status, r.header("x-upstream"), r.header("x-config")) == (200, "B", "new"), r
    assert "r" not in result and "e" not in result, result  # still held at A

    gate.open()
    t.join(T(20))
    assert not t.is_alive()
    assert "e" not in result, result
    r = result["r"]
    assert (r.status, r.body, r.header("x-upstream"), r.header("x-config")) == (200, b"A /slow/1", "A", "old"), r
    assert len(a.heads) == 1 and b.count() == 4


def test_100_reloads_under_keepalive_load(h):
    up = h.upstream(name="U")

    def routes(v):
        return [{"name": "r", "match": {"path_prefix": "/"}, "upstream": "u",
                 "response_headers": {"set": {"x-version": f"v{v}"}}}]

    tp = h.turnpike({"upstreams": [upstream_cfg("u", up)], "routes": routes(0)})

    def check(r):
        if r.header("x-version") not in ("v0", "v1"):
            return f"x-version {r.header('x-version')!r}"
        return None

    load = Loader(tp.port, 32, "/load", check).start()
    probe = h.client(tp.port)
    try:
        wait_until_each_thread_sent(load, 1)
        next_at = time.monotonic()
        for k in range(1, 101):
            cfg = derive(tp, routes=routes(k % 2))
            write_config(tp, cfg)
            sighup_and_wait(tp, 1 + k)
            # a new request after the reload sees the new configuration
            probe.request("GET", f"/probe/{k}")
            r = probe.read_response()
            assert (r.status, r.header("x-version")) == (200, f"v{k % 2}"), (k, r)
            assert not load.failures, load.failures[:5]
            next_at += 0.05
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        load.stop()
    print(f"load: {sum(load.received)} responses on {load.n} connections during 100 reloads")
    try:
        assert not load.failures, load.failures[:5]
        assert set(load.statuses) == {200}, load.statuses
        for i in range(load.n):
            assert load.sent[i] == load.received[i], (i, load.sent[i], load.received[i])
            assert load.sent[i] >= 2, f"thread {i} made only {load.sent[i]} requests"
            # the same socket still works: nothing was dropped
            c = load.clients[i]
            assert c.sock is load.socks[i]
            c.request("GET", "/after")
            r = c.read_response()
            assert (r.status, r.header("x-version")) == (200, "v0"), r
    finally:
        load.close()
    m = metrics(tp)
    assert m.value("turnpike_config_generation") == 101
    assert m.value("turnpike_config_reloads_total", result="success") == 100
    assert m.value("turnpike_config_reloads_total", result="failure") == 0
    assert admin_json(tp)["generation"] == 101
    total = sum(load.received) + load.n + 100  # load, the checks after it, the probes
    assert m.value("turnpike_requests_total", route="r", code="2xx") == total
    assert up.count() == total


def wait_until_each_thread_sent(load, n):
    wait_until(lambda: all(s >= n for s in load.received) or load.failures, T(20),
               what=f"every load thread to get {n} responses")
    assert not load.failures, load.failures[:5]


def test_invalid_reload_keeps_old_config(h):
    a = h.upstream(name="A")
    tp = h.turnpike({
        "upstreams": [upstream_cfg("a", a)],
        "routes": [{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "a"}],
    })
    path = str(tp.config_path)
    cfg0 = admin_json(tp)
    assert get(tp.port, "/api/0").status == 200

    # 1. an unknown upstream; the error points at the value (the opening quote)
    bad = derive(tp, routes=[{"name": "api", "match": {"path_prefix": "/api"}, "upstream": "nope"}])
    text = config_text(bad)
    lines = text.split("\n")
    ln = next(i for i, s in enumerate(lines) if '"upstream": "nope"' in s)
    col = lines[ln].index('"nope"') + 1
    err = reload_fails(tp, text)
    want = f'{path}:{ln + 1}:{col}: routes[0].upstream: no upstream named "nope"'
    assert want in err, f"expected {want!r} in stderr:\n{err}"
    c1 = admin_json(tp)
    assert (c1["generation"], c1["sha256"], c1["loaded_at"]) == (1, cfg0["sha256"], cfg0["loaded_at"]), c1
    assert [r["name"] for r in c1["routes"]] == ["api"]
    r = get(tp.port, "/api/1")
    assert (r.status, r.header("x-upstream")) == (200, "A"), r

    # 2. a YAML syntax error (the closing brace of the top-level flow mapping is missing)
    text = config_text(derive(tp)).rstrip().rstrip("}") + "\n"
    err = reload_fails(tp, text)
    m = re.search(re.escape(path) + r":(\d+):(\d+): \S", err)
    assert m, f"no {path}:LINE:COLUMN: line in stderr:\n{err}"
    assert int(m.group(1)) >= 1 and int(m.group(2)) >= 1
    m2 = metrics(tp)
    assert m2.value("turnpike_config_reloads_total", result="failure") == 2
    assert m2.value("turnpike_config_reloads_total", result="success") == 0
    assert m2.value("turnpike_config_generation") == 1
    assert generation(tp) == 1
    r = get(tp.port, "/api/2")
    assert (r.status, r.header("x-upstream")) == (200, "A"), r

    # 3. a valid file again: the next reload works and is generation 2
    write_config(tp, tp.config)
    sighup_and_wait(tp, 2)
    assert metrics(tp).value("turnpike_config_reloads_total", result="success") == 1


def test_ratelimit_state_survives_reload(h):
    up = h.upstream(name="U")

    def routes(tag):
        return [{"name": "limited", "match": {"path_prefix": "/"}, "upstream": "u",
                 "rate_limit": {"rate": "1/m", "burst": 5, "key": "route"},
                 "response_headers": {"set": {"x-tag": tag}}}]

    tp = h.turnpike({"upstreams": [upstream_cfg("u", up)], "routes": routes("one")})
    for i in range(3):
        r = get(tp.port, f"/a{i}")
        assert (r.status, r.header("ratelimit-remaining"), r.header("x-tag")) == (200, str(4 - i), "one"), r
    reload(tp, derive(tp, routes=routes("two")))
    for i in range(2):
        r = get(tp.port, f"/b{i}")
        assert (r.status, r.header("ratelimit-remaining"), r.header("x-tag")) == (200, str(1 - i), "two"), r
    r = get(tp.port, "/c")
    assert_gateway_error(r, 429)
    assert r.header("ratelimit-limit") == "5" and r.header("ratelimit-remaining") == "0", r
    assert up.count() == 5
    assert metrics(tp).value("turnpike_ratelimit_rejected_total", route="limited") == 1


def test_removed_endpoint_pool_closed(h):
    """operations.md: keepalive connections to endpoints that were removed are closed."""
    a = h.upstream(name="A")
    b = h.upstream(name="B")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", a)], "routes": [{"name": "r", "upstream": "u"}]})
    for i in range(4):
        assert get(tp.port, f"/a{i}").header("x-upstream") == "A"
    assert a.accepted >= 1
    assert a.closed_conns < a.accepted  # turnpike keeps some pooled
    reload(tp, derive(tp, upstreams=[upstream_cfg("u", b)]))
    wait_until(lambda: a.closed_conns == a.accepted, T(10), what="A's pooled connections to close")
    for i in range(4):
        assert get(tp.port, f"/b{i}").header("x-upstream") == "B"
    assert len(a.heads) == 4


def test_workers_change_needs_restart(h):
    up = h.upstream(name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up)], "routes": [{"name": "r", "upstream": "u"}]})
    err0 = len(tp.stderr())
    assert reload(tp, derive(tp, workers=1, routes=[{"name": "r", "upstream": "u",
                                                      "response_headers": {"set": {"x-new": "1"}}}])) == 2
    wait_until(lambda: "workers" in tp.stderr()[err0:], T(5), what="a warning about workers")
    m = metrics(tp)
    assert m.value("turnpike_shards") == 2
    assert admin_json(tp)["workers"] == 2
    assert get(tp.port, "/x").header("x-new") == "1"


def guard_helpers(pid):
    """Pids of the YAML parser guard helpers whose parent is <pid>."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"--yaml-guard-helper" in cmd:
            out.append(int(d))
    return out


def running(pid):
    """True while <pid> exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(")") + 2:].split()[0] != "Z"


def test_parser_guard_helper_reused_and_respawned(h):
    """The YAML parser runs first in a helper process that serves load after load (not
    a fork of the gateway per load); a helper that was killed is replaced at the next
    reload, one that saw a malformed file is retired."""
    up = h.upstream(name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up)], "routes": [{"name": "r", "upstream": "u"}]})
    pid = tp.proc.pid
    helpers = guard_helpers(pid)
    assert len(helpers) == 1, helpers
    for gen in (2, 3):
        assert reload(tp, derive(tp, routes=[{"name": "r", "upstream": "u",
                                              "response_headers": {"set": {"x-gen": str(gen)}}}])) == gen
    assert guard_helpers(pid) == helpers  # the same helper served every load

    os.kill(helpers[0], signal.SIGKILL)
    assert reload(tp, derive(tp, routes=[{"name": "r", "upstream": "u",
                                          "response_headers": {"set": {"x-gen": "4"}}}])) == 4
    assert get(tp.port, "/x").header("x-gen") == "4"
    new = guard_helpers(pid)
    assert len(new) == 1 and new != helpers, (helpers, new)
    assert not os.path.exists(f"/proc/{helpers[0]}"), "the killed helper was not reaped by the gateway"

    # an invalid file is still refused with its position; the helper that parsed it
    # does not parse another file (its heap went through malformed input): it exits,
    # is reaped, and the next load starts a new one
    err = reload_fails(tp, config_text(derive(tp)).rstrip().rstrip("}") + "\n")
    assert re.search(re.escape(str(tp.config_path)) + r":\d+:\d+: \S", err), err
    assert guard_helpers(pid) == []
    assert not os.path.exists(f"/proc/{new[0]}"), "the retired helper was not reaped"
    write_config(tp, tp.config)
    sighup_and_wait(tp, 5)
    last = guard_helpers(pid)
    assert len(last) == 1 and last != new, (new, last)

    tp.stop()
    wait_until(lambda: not running(last[0]), T(10), what="the helper to exit with the gateway")


# crashes libfyaml 0.7.12 in its document builder (tests/fuzz/fuzz_jwt, tests/unit/auth/test_apikey.c)
CRASHES_LIBFYAML = "- - ? ?  2:" + "\t" * 25 + "?\t\t\t \t\t\t:\t"
GATEWAY_ONLY_LIBS = ("libssl", "libcrypto", "libnghttp2", "libcares", "libhiredis", "liburing", "liburcu",
                     "libjemalloc", "libjansson", "libxxhash")


def mapped_libs(pid):
    """Base names of the shared objects mapped into <pid>."""
    with open(f"/proc/{pid}/maps") as f:
        return {os.path.basename(ln.split()[5]) for ln in f if len(ln.split()) >= 6 and ".so" in ln}


def one_guard_helper(pid):
    helpers = wait_until(lambda: guard_helpers(pid), T(10), what="the parser guard helper")
    assert len(helpers) == 1, helpers
    return helpers[0]


def check_crash_refused(tp, pid):
    """A reload with a file that crashes libfyaml fails with the guard's message; the
    gateway keeps its configuration and serves; the crashed helper is reaped."""
    gen = generation(tp)
    err = reload_fails(tp, CRASHES_LIBFYAML)
    # "failed" when the helper dies of it; "did not finish" when dying takes longer than
    # the guard's 5 s (a sanitizer build symbolizing its report on a busy machine)
    assert re.search(re.escape(str(tp.config_path)) + r":1:1: the YAML parser (failed|did not finish) on this file",
                     err), err
    assert generation(tp) == gen
    assert get(tp.port, "/x").status == 200
    assert guard_helpers(pid) == []
    write_config(tp, tp.config)
    sighup_and_wait(tp, gen + 1)


def assert_unprivileged(helper):
    """The helper holds no capability of any kind (the gateway may: it runs as root
    here, or with CAP_NET_BIND_SERVICE under systemd) and can gain none."""
    with open(f"/proc/{helper}/status") as f:
        st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    for k in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[k], 16) == 0, (k, st[k])
    assert st["NoNewPrivs"].strip() == "1", st["NoNewPrivs"]


def test_parser_guard_helper_is_the_small_program(h):
    """The guard's helper is the turnpike-yaml-guard program beside the turnpike binary,
    which maps libfyaml and libc but none of the gateway's other libraries, and holds no
    privilege; it meets a file that crashes libfyaml in place of the gateway, and its
    successor is the small program again."""
    up = h.upstream(name="U")
    tp = h.turnpike({"upstreams": [upstream_cfg("u", up)], "routes": [{"name": "r", "upstream": "u"}]})
    pid = tp.proc.pid
    small = os.path.join(os.path.dirname(os.path.realpath(tp_harness.BIN)), "turnpike-yaml-guard")
    helper = one_guard_helper(pid)
    assert os.readlink(f"/proc/{helper}/exe") == small
    assert_unprivileged(helper)
    libs = mapped_libs(helper)
    assert any(lib.startswith("libfyaml") for lib in libs), libs
    assert not [lib for lib in libs if lib.startswith(GATEWAY_ONLY_LIBS)], libs

    check_crash_refused(tp, pid)
    helper = one_guard_helper(pid)
    assert os.readlink(f"/proc/{helper}/exe") == small


def test_parser_guard_helper_slow_once_is_tried_again(h):
    """A helper that misses its hello once (5 s: a host too busy to start it in time)
    costs that one check a fork of the gateway; the next check starts the small program
    again. (One miss used to drop the small program for the life of the process: every
    later helper was the whole turnpike binary.)"""
    bindir = h.tmp_path / "sbin"
    bindir.mkdir()
    alone = str(bindir / "turnpike")
    shutil.copy2(os.path.realpath(tp_harness.BIN), alone)
    small = os.path.join(os.path.dirname(os.path.realpath(tp_harness.BIN)), "turnpike-yaml-guard")
    # stands in for the small program: silent the first time, the real one after that
    stand_in = bindir / "turnpike-yaml-guard"
    stand_in.write_text(f"""#!/bin/sh
if [ ! -e "$0.missed" ]; then : >"$0.missed"; exec sleep 60; fi
exec {small} "$@"
""")
    stand_in.chmod(0o755)
    up = h.upstream(name="U")
    tp = env_turnpike(h, {"upstreams": [upstream_cfg("u", up)], "routes": [{"name": "r", "upstream": "u"}]}, {},
                      bin=alone)
    assert (bindir / "turnpike-yaml-guard.missed").exists(), "the stand-in was not started"
    pid = tp.proc.pid
    gen = generation(tp)
    write_config(tp, tp.config)
    sighup_and_wait(tp, gen + 1)
    helper = one_guard_helper(pid)
    assert os.readlink(f"/proc/{helper}/exe") == small


def test_parser_guard_falls_back_to_the_turnpike_binary(h):
    """Where only the turnpike binary was copied (no turnpike-yaml-guard beside it), the
    binary runs as its own guard helper, which guards reloads just the same."""
    bindir = h.tmp_path / "sbin"
    bindir.mkdir()
    alone = str(bindir / "turnpike")
    shutil.copy2(os.path.realpath(tp_harness.BIN), alone)
    assert not os.path.exists(bindir / "turnpike-yaml-guard")
    up = h.upstream(name="U")
    tp = env_turnpike(h, {"upstreams": [upstream_cfg("u", up)], "routes": [{"name": "r", "upstream": "u"}]}, {},
                      bin=alone)
    pid = tp.proc.pid
    helper = one_guard_helper(pid)
    assert os.readlink(f"/proc/{helper}/exe") == alone
    assert_unprivileged(helper)
    with open(f"/proc/{helper}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"turnpike", b"--yaml-guard-helper"]

    check_crash_refused(tp, pid)
    helper = one_guard_helper(pid)
    assert os.readlink(f"/proc/{helper}/exe") == alone
