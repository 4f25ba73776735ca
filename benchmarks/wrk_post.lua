-- POSTs for wrk, cycling through pre-encoded bodies: benchmarks/bench.py runs
--   wrk ... -s wrk_post.lua URL -- BODIES_FILE API_KEY
-- BODIES_FILE holds one JSON body per line. Requests are formatted once, in init, so that
-- the Lua side of wrk costs as little as possible per request.
local requests = {}
local next_index = 1

function init(args)
  local headers = {["Content-Type"] = "application/json", ["X-API-Key"] = args[2]}
  for line in io.lines(args[1]) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line)
    end
  end
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end
