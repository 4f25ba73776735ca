-- Unique mobile-money events for wrk, one per request: benchmarks/bench.py runs
--   wrk ... -s wrk_events.lua URL -- API_KEY PREFIX START_S STEP_S ACCOUNTS THREADS
-- Event n (numbered across all THREADS wrk threads) is event_body(n) of benchmarks/eventload.py,
-- which documents the scheme; the two must stay in step (tests/test_wrk_events.py checks they
-- do). Each thread numbers its events n = thread index, + THREADS, ..., so every event id is
-- unique and every account's timestamps go up. One string.format per request keeps the Lua
-- side of wrk cheap.
local BODY = '{"event_id":"%s-%d","account_id":"acct-%d","timestamp":%.3f,"type":"%s",'
  .. '"amount":%.2f,"balance_before":%.2f,"payee_id":"payee-%d-%d",'
  .. '"device_id":"device-%d-%d","lat":%.3f,"lon":%.3f}'
local threads_made = 0
local headers, prefix, start, step, accounts, stride
local n = 0

function setup(thread)
  thread:set("thread_index", threads_made)
  threads_made = threads_made + 1
end

function init(args)
  headers = {["Content-Type"] = "application/json", ["X-API-Key"] = args[1]}
  prefix = args[2]
  start, step = tonumber(args[3]), tonumber(args[4])
  accounts, stride = tonumber(args[5]), tonumber(args[6])
  n = thread_index or 0
end

local function event_body(i)
  local account = i % accounts
  local mix = (i * 7919) % 10007
  local kind = (mix % 8 == 0) and "cash_out" or "transfer"
  local amount = 5 + mix * 0.05
  local lat_m = -1500 + (account % 50) * 20 + mix % 7
  if mix % 50 == 0 then
    lat_m = lat_m + 3000
  end
  local lon_m = 36500 + (math.floor(account / 50) % 50) * 20 + mix % 5
  return string.format(BODY, prefix, i, account, start + i * step, kind, amount,
    amount * (1 + mix % 19) + 100, account, mix % 5, account, (mix % 16 == 0) and 1 or 0,
    lat_m / 1000, lon_m / 1000)
end

function request()
  local body = event_body(n)
  n = n + stride
  return wrk.format("POST", nil, headers, body)
end
