-- SPDX-License-Identifier: MIT
--
-- bench/wrk/report.lua: makes wrk print one machine-readable summary line
-- after its usual report, for bench/lib.sh (tpb_wrk) to parse:
--
--   TPBENCH requests=N duration_us=N bytes=N connect=N read=N write=N
--           status=N timeout=N p50_us=N p99_us=N max_us=N
--
-- Only done() is defined: wrk calls Lua per request only when request() or
-- response() exist, so this script does not slow the load generator down.
-- "status" is wrk's count of responses with a status above 399 (it never
-- counts 3xx; the benchmark upstream only answers 200).

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "TPBENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d " ..
      "status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
