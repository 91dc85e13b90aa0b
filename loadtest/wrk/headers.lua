-- wrk script used by loadtest/bench.sh.
--   BENCH_HOST          Host header to send (empty: wrk's default, the URL's host)
--   BENCH_HEADER_NAME   one extra header (the preview token, or the runner key when direct)
--   BENCH_HEADER_VALUE  its value
--   BENCH_USER_AGENT    a User-Agent to send (none by default; the activity rules' cost)
--   BENCH_DELAY_MS      pause this long before each request on a connection (paced load: the
--                       same offered rate for every target, for latency at a fraction of the max)
--   BENCH_PORT_SPAN     N: each request's Host gets the next of N preview ports from
--                       BENCH_PORT_FIRST (10000) in place of BENCH_HOST's own (instr.sh: a new
--                       identity audience each time)
-- At the end it prints one machine-readable line for bench.sh:
--   BENCH requests=N duration_us=N rps=F p50_us=N p99_us=N errors_status=N errors_socket=N
local host = os.getenv("BENCH_HOST")
if host and host ~= "" then
  wrk.headers["Host"] = host
end
local name = os.getenv("BENCH_HEADER_NAME")
if name and name ~= "" then
  wrk.headers[name] = os.getenv("BENCH_HEADER_VALUE") or ""
end
local agent = os.getenv("BENCH_USER_AGENT")
if agent and agent ~= "" then
  wrk.headers["User-Agent"] = agent
end
local span = tonumber(os.getenv("BENCH_PORT_SPAN") or "")
if span and span > 0 and host then
  local rest = host:match("^%d+(%-.*)$")
  local first = tonumber(os.getenv("BENCH_PORT_FIRST") or "") or 10000
  local sent = 0
  function request()
    sent = sent + 1
    wrk.headers["Host"] = string.format("%d%s", first + sent % span, rest)
    return wrk.format()
  end
end
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if pause and pause > 0 then
  function delay()
    return pause
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d errors_status=%d errors_socket=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
