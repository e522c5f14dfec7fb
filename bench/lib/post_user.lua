-- POST /user with a new email on every request: run prefix (argument), thread id, counter.
--   wrk -t2 -c64 -d10s -s post_user.lua http://127.0.0.1:PORT -- <run-prefix>
-- The request is concatenated from parts fixed at init: wrk.format (a table, a string.format
-- per header, a join) cost wrk's Lua a third of its user CPU, taken from the server it measures.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "report.lua")

local next_thread = 0
function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
end

local counter = 0
local head, body_start
local body_end = '@bench.example.com"}'

function init(args)
  local prefix = args[1] or "run"
  -- wrk.init has set the Host header from the URL before calling this.
  head = "POST /user HTTP/1.1\r\nHost: " .. wrk.headers["Host"] ..
    "\r\nContent-Type: application/json\r\nContent-Length: "
  body_start = '{"name":"Bench User","email":"' .. prefix .. ".t" .. (tid or 0) .. ".n"
end

function request()
  counter = counter + 1
  local body = body_start .. counter .. body_end
  return head .. #body .. "\r\n\r\n" .. body
end
