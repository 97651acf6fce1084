-- The request mix of bench/memory.py, for wrk (one thread):
--   wrk -t1 -c32 -d10s -s bench/wrk/memory_mix.lua URL -- DATA_FILE SEED
-- DATA_FILE, one item a line:
--   "mix KIND WEIGHT"  the share of each kind of request (the weights add up to 1)
--   "token TOKEN"      a valid access token (one is drawn at random for each request)
--   "KIND JOB_ID"      a job of that kind (one is drawn at random for each request of it)
-- Kinds with jobs are polled as GET /api/jobs/{id}; "unknown" polls an id no job has (404)
-- and "badtoken" polls a job of the first kind with an invalid token (401). Each request
-- carries a request id of its own. done() prints how many requests of each kind went out
-- ("sent KIND N"). No response(): wrk then reads no body into Lua.

lists, mix, tokens, sent = {}, {}, {}, {}
local counter, tag, first = 0, "", nil

function init(args)
  for line in io.lines(args[1]) do
    local kind, value = line:match("^(%S+) (.+)$")
    if kind == "token" then
      tokens[#tokens + 1] = value
    elseif kind == "mix" then
      local name, weight = value:match("^(%S+) (%S+)$")
      mix[#mix + 1] = { name, tonumber(weight) }
      sent[name] = 0
    else
      if lists[kind] == nil then
        lists[kind] = {}
        first = first or kind
      end
      local list = lists[kind]
      list[#list + 1] = value
    end
  end
  tag = args[2]
  math.randomseed(tonumber(args[2]))
end

local function any_job(kind)
  local list = lists[kind]
  return list[math.random(#list)]
end

function request()
  counter = counter + 1
  local draw, kind = math.random(), mix[#mix][1]
  for _, entry in ipairs(mix) do
    draw = draw - entry[2]
    if draw < 0 then
      kind = entry[1]
      break
    end
  end
  sent[kind] = sent[kind] + 1
  local token = tokens[math.random(#tokens)]
  local job_id
  if kind == "unknown" then
    job_id = "unknown_" .. tag .. "_" .. counter
  elseif kind == "badtoken" then
    job_id, token = any_job(first), "not.a.token"
  else
    job_id = any_job(kind)
  end
  return wrk.format("GET", "/api/jobs/" .. job_id, {
    ["Authorization"] = "Bearer " .. token,
    ["X-Request-Id"] = "mem-" .. tag .. "-" .. counter,
  })
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for kind, count in pairs(thread:get("sent")) do
      io.write(string.format("sent %s %d\n", kind, count))
    end
  end
end
