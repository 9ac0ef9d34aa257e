-- SPDX-License-Identifier: MIT
--
-- bench/wrk/tenants.lua: every request carries "x-tenant: t<N>" with N drawn
-- from TPB_TENANTS values (default 10), so a rate limit keyed by
-- header:x-tenant sees a few busy keys, as an API with per-tenant quotas
-- does. Prints the TPBENCH line of report.lua.

local tenants = tonumber(os.getenv("TPB_TENANTS") or "10")
local reqs = {}

init = function(args)
   for i = 0, tenants - 1 do
      reqs[i] = wrk.format("GET", "/", { ["x-tenant"] = "t" .. i })
   end
   math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

request = function()
   return reqs[math.random(0, tenants - 1)]
end

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "TPBENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d " ..
      "status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
