# SPDX-License-Identifier: MIT
"""pytest fixtures for the integration tests: `h` gives a test a Harness
(tp_harness.py) whose teardown stops every turnpike it started with SIGTERM
and asserts exit code 0 and a stderr free of sanitizer reports."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tp_harness  # noqa: E402


@pytest.fixture
def h(tmp_path):
    if not tp_harness.BIN:
        pytest.skip("TURNPIKE_BIN is not set")
    harness = tp_harness.Harness(tmp_path)
    yield harness
    harness.teardown()
