-- wrk script for benches/load/run.sh.
--
-- Environment:
--   BENCH_TOKENS  file with one token per line: every request carries the next token
--                 (distinct-token workload; requests are pre-built in init(), so the
--                 per-request Lua cost is a table lookup). Unset: the request is static
--                 and the token comes from wrk's -H (same-token workload).
--   BENCH_PATH    request path for BENCH_TOKENS requests (static requests use the URL's).
--   BENCH_RATE    total requests/s to aim at (paced workload, see delay() below)
--   BENCH_THREADS the wrk -t value (needed with BENCH_RATE when it is not 1).
--
-- done() prints one line "WRKJSON {...}" that run.sh parses: requests, duration, errors
-- and latency percentiles in microseconds.

local token_file = os.getenv("BENCH_TOKENS")
local rate = tonumber(os.getenv("BENCH_RATE") or "")

if token_file and token_file ~= "" then
   local reqs, n, i = {}, 0, 0

   function init(args)
      local path = os.getenv("BENCH_PATH") or wrk.path
      local host = wrk.headers["Host"]
      for line in io.lines(token_file) do
         if #line > 0 then
            n = n + 1
            reqs[n] = wrk.format("GET", path, { ["Host"] = host, ["Authorization"] = "Bearer " .. line })
         end
      end
      if n == 0 then
         error("no tokens in " .. token_file)
      end
      -- Each thread starts at its own offset so threads do not replay one another.
      math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
      i = math.random(n) - 1
   end

   function request()
      i = i + 1
      if i > n then
         i = 1
      end
      return reqs[i]
   end
end

if rate and rate > 0 then
   -- Paced load: every send claims the next slot of a fixed schedule (rate / threads
   -- per thread), so the rate holds whatever the latency, as long as enough
   -- connections are free. A connection behind schedule sends at once; more than
   -- 100 ms behind, the schedule restarts from now (no burst to catch up).
   -- LuaJIT's ffi gives a monotonic millisecond clock; delay() is in whole ms, the
   -- schedule itself is fractional, so rounding never accumulates.
   local ffi = require("ffi")
   ffi.cdef [[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clk, bench_timespec *tp);
   ]]
   local ts = ffi.new("bench_timespec")
   local function now_ms()
      ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
   end
   local threads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
   local interval = 1000.0 * threads / rate
   local next_slot = nil

   function delay()
      local now = now_ms()
      if next_slot == nil or next_slot < now - 100 then
         next_slot = now
      end
      next_slot = next_slot + interval
      local d = next_slot - now
      if d <= 0 then
         return 0
      end
      return math.floor(d + 0.5)
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,'
         .. '"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_mean_us":%.1f,"lat_max_us":%d,'
         .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
      e.timeout, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end
