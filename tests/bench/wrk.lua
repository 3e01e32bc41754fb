-- wrk script for `make bench` (tests/bench/bench.py).
--
--   wrk ... -s wrk.lua URL -- [path=/x] [close=1] [xff=N]
--
-- path=   request target (default: the URL's path)
-- close=1 send "Connection: close" (a new connection per request)
-- xff=N   rotate N public client addresses in X-Forwarded-For (IPv4, and
--         every tenth one IPv6), so a proxy that trusts 127.0.0.0/8 sees
--         N distinct clients and really geolocates them
--
-- The requests are built once in init(); request() only picks the next one.
-- done() prints one line "BENCHJSON {...}" with the exact counts and the
-- latency percentiles in microseconds, which bench.py reads instead of the
-- rounded human summary.

local reqs = {}
local n, i = 0, 0

-- First octets that are not private, loopback, link-local, CGNAT,
-- benchmarking or multicast space.
local skip = { [0] = true, [10] = true, [100] = true, [127] = true,
               [169] = true, [172] = true, [192] = true, [198] = true }

local function address(k)
  if k % 10 == 0 then
    return string.format("2a%02x:%x:%x::%x", math.random(0, 15),
                         math.random(1, 65535), math.random(1, 65535), math.random(1, 65535))
  end
  local a
  repeat a = math.random(1, 223) until not skip[a]
  return string.format("%d.%d.%d.%d", a, math.random(0, 255), math.random(0, 255),
                       math.random(1, 254))
end

function init(args)
  local opts = {}
  for _, arg in ipairs(args) do
    local k, v = arg:match("^([%w_]+)=(.*)$")
    if k then opts[k] = v end
  end
  local path = opts.path or wrk.path
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  if opts.close == "1" then headers["Connection"] = "close" end
  local count = tonumber(opts.xff or "0") or 0
  math.randomseed(20240601)      -- the same addresses in every run
  if count <= 0 then
    reqs[1] = wrk.format("GET", path, headers)
    n = 1
  else
    for k = 1, count do
      headers["X-Forwarded-For"] = address(k)
      reqs[k] = wrk.format("GET", path, headers)
    end
    n = count
  end
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"bytes":%d,"duration_us":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"mean_us":%.1f,"max_us":%.0f}\n',
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
