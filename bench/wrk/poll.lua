-- `GET /api/jobs/{id}` of random jobs, for `bench/polling.py`:
--     wrk -t1 -c32 -d6s -s bench/wrk/poll.lua URL -- IDS_FILE TOKEN [SEED]
-- IDS_FILE holds one job id a line. Every request is made once, at start (`wrk.format`), with
-- the `Authorization: Bearer TOKEN` header; each request then picks one at random (LuaJIT's
-- generator, seeded with SEED: the same sequence of jobs for every server of one run). No
-- `response` callback: wrk then parses no body, and costs every server alike. At the end one
-- line `WRK {json}` carries the counts and the latency percentiles (µs) for the caller.

local requests = {}

function init(args)
   local ids_file, token, seed = args[1], args[2], tonumber(args[3] or "1")
   local headers = { ["Authorization"] = "Bearer " .. token }
   for id in io.lines(ids_file) do
      if id ~= "" then
         requests[#requests + 1] = wrk.format("GET", "/api/jobs/" .. id, headers)
      end
   end
   assert(#requests > 0, "no job ids in " .. ids_file)
   math.randomseed(seed)
end

function request()
   return requests[math.random(#requests)]
end

function done(summary, latency, requests_)
   local e = summary.errors
   io.write(string.format(
      'WRK {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
      '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
      '"max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean))
end
