# SPDX-License-Identifier: MIT
"""`turnpike -t -c FILE` (docs/reference.md "Command line"): a valid file prints
"configuration ok" and exits 0; an invalid one prints every error as
FILE:LINE:COLUMN: message on stderr (FILE exactly as given) and exits 1.

Runs the real binary named by $TURNPIKE_BIN (ctest sets it); skipped without it.
"""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = "tests/unit/config/data"
BIN = os.environ.get("TURNPIKE_BIN")

pytestmark = pytest.mark.skipif(not BIN, reason="TURNPIKE_BIN is not set")


def check(path, cwd=ROOT):
    """Runs turnpike -t -c <path>; returns (exit code, stdout, stderr lines)."""
    r = subprocess.run([BIN, "-t", "-c", str(path)], cwd=cwd, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr.splitlines()


def test_shipped_config_is_ok():
    rc, out, err = check("conf/turnpike.yaml")
    assert (rc, out, err) == (0, "configuration ok\n", [])


@pytest.mark.parametrize("name", ["full.yaml", "minimal.yaml"])
def test_good_fixtures_are_ok(name):
    rc, out, err = check(f"{DATA}/{name}")
    assert (rc, out, err) == (0, "configuration ok\n", [])


def test_every_error_in_file_order():
    path = f"{DATA}/bad_many.yaml"
    rc, out, err = check(path)
    assert rc == 1
    assert out == ""
    assert err == [
        f"{path}:2:10: workers: 0 is out of range (1..1024)",
        f"{path}:5:5: listeners[0].adress: unknown key",
        f'{path}:6:10: listeners[0].tls: missing required key "certificates"',
        f'{path}:9:16: timeouts.client_idle: invalid duration "10 s" (expected e.g. 250ms, 2s, 1m, 1h)',
        f'{path}:12:13: routes[0].upstream: no upstream named "userz"',
        f"{path}:13:3: routes[1]: needs one of upstream, split or direct_response",
        f'{path}:13:17: routes[1].match.path: invalid path "nope" (must start with /)',
        f'{path}:17:18: upstreams[0].endpoints[0].address: invalid host "local_host" in "local_host:1" '
        "(expected letters, digits, '-' and '.')",
        f"{path}:19:5: upstreams[0].balance: duplicate key",
    ]


def test_config_md_example_message(tmp_path):
    # The example line of docs/reference.md, reproduced at the same line and column.
    conf = tmp_path / "turnpike.yaml"
    conf.write_text(
        "listeners:\n"  # 1
        "  - address: 127.0.0.1:8080\n"  # 2
        "upstreams:\n"  # 3
        "  - name: users\n"  # 4
        "    endpoints:\n"  # 5
        "      - address: 127.0.0.1:9001\n"  # 6
        "routes:\n"  # 7
        "- match: {path: /a}\n"  # 8
        "  upstream: users\n"  # 9
        "- match: {path: /b}\n"  # 10
        "  upstream: users\n"  # 11
        "- name: third\n"  # 12
        "  match: {path: /c}\n"  # 13
        "  upstream: userz\n"  # 14
    )
    rc, out, err = check(conf)
    assert (rc, out) == (1, "")
    assert err == [f'{conf}:14:13: routes[2].upstream: no upstream named "userz"']


def test_path_as_given(tmp_path):
    # A relative path with "./" stays exactly as typed in every message.
    (tmp_path / "c.yaml").write_text("listeners:\n  - address: 127.0.0.1:8080\n    tls: {}\n")
    rc, out, err = check("./c.yaml", cwd=tmp_path)
    assert (rc, out, err) == (1, "", ['./c.yaml:3:10: listeners[0].tls: missing required key "certificates"'])


@pytest.mark.parametrize(
    "text, lines",
    [
        ("", ["1:1: the file is empty (expected a mapping with at least \"listeners\")"]),
        ("- a\n", ["1:1: expected a mapping at the top level, got a list"]),
        ("listeners: [1\nb: 2\n", ["3:1: flow sequence without a closing bracket"]),
        ("listeners:\n  - address: 127.0.0.1:1\nworkers: 1\nworkers: 2\n", ["4:1: workers: duplicate key"]),
        (
            "listeners:\n  - address: 127.0.0.1:1\nupstreams:\n  - name: u\n"
            "    endpoints: [{address: 127.0.0.1:2}]\n    tls: {verify: yes}\n",
            ['6:19: upstreams[0].tls.verify: invalid value "yes" (expected true or false)'],
        ),
        (
            "listeners:\n  - address: 127.0.0.1:1\nroutes:\n  - match: {path: /x}\n"
            "    direct_response: {status: 200}\n    strip_prefix: /x\n",
            ["6:5: routes[0].strip_prefix: not allowed with direct_response"],
        ),
        (
            "listeners:\n  - address: 127.0.0.1:1\n  - address: 127.0.0.1:1\n",
            ["3:14: listeners[1].address: 127.0.0.1:1 is already used by listeners[0]"],
        ),
        (
            # YAML 1.2: "on" is a string, so it is not a valid integer
            "listeners:\n  - address: 127.0.0.1:1\nlimits: {max_connections: on}\n",
            ['3:27: limits.max_connections: invalid integer "on" (expected 1..10000000)'],
        ),
    ],
    ids=["empty", "not-a-mapping", "syntax", "duplicate-key", "unsupported", "strip-direct", "dup-address", "yaml12"],
)
def test_single_errors(tmp_path, text, lines):
    conf = tmp_path / "bad.yaml"
    conf.write_text(text)
    rc, out, err = check(conf)
    assert (rc, out) == (1, "")
    # Nothing else on stderr: libfyaml must not print its own diagnostics.
    assert err == [f"{conf}:{line}" for line in lines]


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    rc, out, err = check(missing)
    assert (rc, out, err) == (1, "", [f"{missing}: No such file or directory"])
    rc, out, err = check(tmp_path)
    assert (rc, out, err) == (1, "", [f"{tmp_path}: Is a directory"])


def test_valid_but_unused_key_is_a_warning(tmp_path):
    # The operator contract's own example: balance: round_robin with a hash_key. The key is
    # valid but has no effect there: -t says so with its position and accepts the file.
    conf = tmp_path / "warn.yaml"
    conf.write_text(
        "listeners:\n  - address: 127.0.0.1:1\n"
        "upstreams:\n  - name: users\n    endpoints: [{address: 127.0.0.1:2}]\n"
        "    balance: round_robin\n    hash_key: header:x-user-id\n"
        "routes:\n  - upstream: users\n"
    )
    rc, out, err = check(conf)
    assert (rc, out) == (0, "configuration ok\n"), (rc, out, err)
    assert err == [f"{conf}:7:5: warning: upstreams[0].hash_key: only used with balance: hash (ignored)"], err
    # a real error next to it still fails the file, and both are said
    conf.write_text(conf.read_text().replace("127.0.0.1:2", "nowhere"))
    rc, out, err = check(conf)
    assert rc == 1 and out == "", (rc, out, err)
    assert any(": warning: upstreams[0].hash_key" in line for line in err), err
    assert any(":5:" in line and "warning" not in line for line in err), err
