-- SPDX-License-Identifier: MIT
--
-- bench/wrk/users.lua: every request carries "x-user: u<N>" with N drawn
-- from 10,000 values, so a rate limit keyed by header:x-user works on 10,000
-- buckets (wrk cannot vary source addresses on loopback, so client_ip keys
-- cannot be spread this way). Prints the TPBENCH line of report.lua.

local users = 10000
local reqs = {}

init = function(args)
   -- pre-built requests: the Lua cost per request is one table lookup
   for i = 0, users - 1 do
      reqs[i] = wrk.format("GET", "/", { ["x-user"] = "u" .. i })
   end
   math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

request = function()
   return reqs[math.random(0, users - 1)]
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
