-- POST /user with a new email on every request: run prefix (argument), thread id, counter.
--   wrk -t2 -c64 -d10s -s post_user.lua http://127.0.0.1:PORT -- <run-prefix>
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local next_thread = 0
function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

local prefix = "run"
local counter = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  prefix = args[1] or prefix
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"name":"Bench User","email":"%s.t%d.n%d@bench.example.com"}', prefix, tid or 0, counter)
  return wrk.format("POST", "/user", headers, body)
end
