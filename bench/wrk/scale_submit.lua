-- Submissions for bench/scale.py, for wrk (one thread): each line of BODIES_FILE posted once,
-- in order, to PATH with TOKEN, then nothing more.
--   wrk -t1 -c16 -d600s -s bench/wrk/scale_submit.lua URL -- BODIES_FILE PATH TOKEN
-- When every submission has been answered, the thread stops and prints
-- "answered ACCEPTED REFUSED" (202s, other statuses) at once; wrk itself then waits for the
-- end of its duration or for SIGINT, which bench/scale.py sends.
-- A connection with no submission left waits (delay) rather than polling the API: the last
-- answers arrive meanwhile.
-- wrk calls request() once before the run, to check what it returns (script_verify_request),
-- and never sends that one; delay() is called before each request actually sent, so a body
-- is used up only once delay() has been called.

local requests, index, total = {}, 0, 0
local idle
local started = false
accepted, refused = 0, 0

function init(args)
  local headers = {
    ["Authorization"] = "Bearer " .. args[3],
    ["Content-Type"] = "application/json",
  }
  for body in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("POST", args[2], headers, body)
  end
  total = #requests
  idle = wrk.format("GET", "/health/live")
end

function delay()
  started = true
  if index >= total then
    return 60000
  end
  return 0
end

function request()
  if not started then -- wrk's check before the run: nothing is sent
    return requests[1]
  end
  index = index + 1
  if index <= total then
    return requests[index]
  end
  return idle
end

function response(status, headers, body)
  if status == 202 then
    accepted = accepted + 1
  elseif status ~= 200 then
    refused = refused + 1
  end
  if accepted + refused == total then
    io.write(string.format("answered %d %d\n", accepted, refused))
    io.flush()
    wrk.thread:stop()
  end
end
