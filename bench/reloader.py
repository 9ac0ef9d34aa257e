#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""bench/reloader.py: the reload trigger of bench/reload.sh, one process, no forks.

Every INTERVAL_MS, on a fixed schedule (a slow step does not stretch the
interval), writes the other generation's configuration (CONF.a / CONF.b, rendered
beforehand) beside CONF, renames it over CONF (a proxy slower than the interval
may still be reading the previous version) and signals the proxy: SIGHUP for
turnpike and for nginx's master (what `nginx -s reload` sends), SIGUSR2 for
HAProxy's master. After each step "<count> <generation>" goes to STATE.

The loop used to be bash: every step forked mv, sleep and a subshell (and
`nginx -s reload` for nginx), several milliseconds of CPU per reload on the
load CPU, which wrk and the upstream already saturate. With turnpike's SIGHUP
replaced by `kill -0` (no reload at all) the throughput still dropped to
0.71-0.78 of the run without the loop: the bench measured its own trigger.
SIGTERM ends the loop after the current step."""
import argparse
import os
import signal
import time

SIGNALS = {"turnpike": signal.SIGHUP, "base": signal.SIGHUP, "nginx": signal.SIGHUP, "haproxy": signal.SIGUSR2}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True, choices=sorted(SIGNALS))
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--conf", required=True)
    ap.add_argument("--interval-ms", type=int, required=True)
    ap.add_argument("--state", required=True)
    a = ap.parse_args()

    stop = False

    def on_term(_sig, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    texts = {}
    for gen in ("a", "b"):
        with open(f"{a.conf}.{gen}", "rb") as f:
            texts[gen] = f.read()
    sig = SIGNALS[a.name]
    start = time.monotonic()
    n = 0
    while not stop:
        n += 1
        gen = "b" if n % 2 else "a"
        with open(a.conf + ".new", "wb") as f:
            f.write(texts[gen])
        os.replace(a.conf + ".new", a.conf)
        try:
            os.kill(a.pid, sig)
        except ProcessLookupError:
            return 1
        with open(a.state + ".new", "w") as f:
            f.write(f"{n} {gen}\n")
        os.replace(a.state + ".new", a.state)
        wait = start + n * a.interval_ms / 1000 - time.monotonic()
        if wait > 0 and not stop:
            time.sleep(wait)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
