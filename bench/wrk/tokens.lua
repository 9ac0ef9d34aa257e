-- SPDX-License-Identifier: MIT
--
-- bench/wrk/tokens.lua: every request carries "Authorization: Bearer <token>"
-- with the token drawn at random from the file named by $TPB_TOKENS (one per
-- line, as bench/auth_tokens.py writes them: one user each). Requests are
-- built once in init(), so the Lua cost per request is one table lookup.
-- Prints the TPBENCH line of report.lua.

local reqs = {}
local n = 0

init = function(args)
   local path = os.getenv("TPB_TOKENS")
   local f = path and io.open(path, "r")
   if not f then
      io.stderr:write("tokens.lua: cannot open $TPB_TOKENS (" .. tostring(path) .. ")\n")
      os.exit(2)
   end
   for line in f:lines() do
      if #line > 0 then
         reqs[n] = wrk.format("GET", "/", { ["Authorization"] = "Bearer " .. line })
         n = n + 1
      end
   end
   f:close()
   if n == 0 then
      io.stderr:write("tokens.lua: no token in " .. path .. "\n")
      os.exit(2)
   end
   math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

request = function()
   return reqs[math.random(0, n - 1)]
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
