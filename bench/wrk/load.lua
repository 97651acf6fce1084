-- Polls of the jobs a load benchmark submits as it runs, for `bench/load.py`:
--     wrk -t1 -c50 -d60s -s bench/wrk/load.lua URL -- IDS_FILE TOKEN [SEED]
-- IDS_FILE grows while wrk runs: the benchmark appends the id of every job the API accepted,
-- one a line. Every 256 requests the lines added since are read (a partial last line is kept
-- for the next read) and a request made for each new job (`wrk.format`, with the
-- `Authorization: Bearer TOKEN` header); each request picks a known job at random. Every
-- answer's status is counted (`response`), so that a 404 for a job that exists shows: at the
-- end one line `WRK {json}` carries the counts per status, wrk's error counts and the latency
-- percentiles (µs) for the caller.

local requests = {}
local file, pending_text, sent = nil, "", 0
local headers = {}
statuses = {}

local function read_new_ids()
   file:seek("cur") -- clears the end-of-file flag: what was appended since is read
   local text = pending_text .. (file:read("*a") or "")
   local last = 1
   for id, finish in text:gmatch("([^\n]*)\n()") do
      if id ~= "" then
         requests[#requests + 1] = wrk.format("GET", "/api/jobs/" .. id, headers)
      end
      last = finish
   end
   pending_text = text:sub(last)
end

function setup(thread)
   threads = threads or {}
   table.insert(threads, thread)
end

function init(args)
   file = assert(io.open(args[1], "r"))
   headers = { ["Authorization"] = "Bearer " .. args[2] }
   math.randomseed(tonumber(args[3] or "1"))
   read_new_ids()
   assert(#requests > 0, "no job ids in " .. args[1])
end

function request()
   sent = sent + 1
   if sent % 256 == 0 then
      read_new_ids()
   end
   return requests[math.random(#requests)]
end

function response(status, headers_, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests_)
   local counts = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         counts[status] = (counts[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(counts) do
      parts[#parts + 1] = string.format('"%d": %d', status, count)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
      '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
      '"max_us": %d, "mean_us": %.1f, "statuses": {%s}}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean, table.concat(parts, ", ")))
end
