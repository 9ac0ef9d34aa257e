# SPDX-License-Identifier: MIT
"""Soak, CI size: scripts/soak.py for 120 s against TURNPIKE_BIN (the ASan
build in CI) with intervals scaled down (an upstream restarted every 20 s, an
endpoint flapping every 5 s, a reload every second, samples every 5 s).

It asserts the soak's pass criteria, all of them correctness properties:
the process is alive and exits 0 with a clean stderr, no request failed
without a fault to explain it, every reload took effect, RSS and descriptors
are flat over the last two thirds of the run, and the number of metric
series did not change. The 30-minute run against a release build is the
same script with its defaults (docs/internals.md, "Soak")."""
import os
import sys

import pytest

from tp_harness import BIN, SANITIZE, SLOW
from tp_hostile import asan_env

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))

import soak  # noqa: E402


def test_soak_two_minutes(tmp_path):
    if not BIN:
        pytest.skip("TURNPIKE_BIN is not set")
    o = soak.options(120, short=True, bin=BIN, dir=str(tmp_path), slow=SLOW)
    if SANITIZE == "address":
        # ASan's quarantine kept small (as for the other memory tests): RSS then shows the
        # gateway's memory, not freed memory held back by the sanitizer
        o["asan_options"] = asan_env()["ASAN_OPTIONS"]
    lines = []
    passed, report = soak.run(o, out=lines.append)
    text = "\n".join(lines)
    print(text)
    failed = [k for k, ok in report["checks"].items() if not ok]
    assert passed, f"soak failed {failed}:\n{text}\n--- turnpike stderr (tail) ---\n{report['stderr_tail']}"
