-- wrk script used by loadtest/curves.sh: each request picks a sandbox, so the Host header changes.
--   BENCH_SANDBOXES   how many sandboxes: ids <BENCH_PREFIX>0 .. <BENCH_PREFIX>(N-1) (1)
--   BENCH_ACCESS      "uniform": every id equally likely (random); "zipf": id k-1 has weight
--                     1/k^BENCH_ZIPF_S (a precomputed CDF, binary search per request);
--                     "seq": thread k of BENCH_THREADS cycles through ids k, k+T, k+2T, ...
--                     (a sweep: together the threads touch every sandbox once per N requests)
--   BENCH_ZIPF_S      the Zipf exponent (1.1)
--   BENCH_PREFIX      sandbox id prefix ("sbx-")
--   BENCH_PORT        preview port (3000); Host is <port>-<id>.<BENCH_DOMAIN>
--   BENCH_DOMAIN      preview domain ("preview.localhost")
--   BENCH_TOKEN       X-Daytona-Preview-Token to send (empty: none)
--   BENCH_PATH        request path ("/hello")
--   BENCH_THREADS     wrk's -t (for "seq")
--   BENCH_START       first id of the "seq" sweep (0; a multiple of BENCH_THREADS), to go on
--                     where an earlier run stopped
-- No response() callback (it would make wrk parse every response in Lua); non-2xx/3xx answers
-- are counted by wrk itself (errors_status). At the end it prints one machine-readable line:
--   BENCH requests=N duration_us=N rps=F p50_us=N p99_us=N errors_status=N errors_socket=N
local n = tonumber(os.getenv("BENCH_SANDBOXES") or "1")
local access = os.getenv("BENCH_ACCESS") or "uniform"
local s = tonumber(os.getenv("BENCH_ZIPF_S") or "1.1")
local prefix = os.getenv("BENCH_PREFIX") or "sbx-"
local port = os.getenv("BENCH_PORT") or "3000"
local domain = os.getenv("BENCH_DOMAIN") or "preview.localhost"
local token = os.getenv("BENCH_TOKEN") or ""
local path = os.getenv("BENCH_PATH") or "/hello"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local start = tonumber(os.getenv("BENCH_START") or "0")

local created = 0
function setup(thread)
  thread:set("index", created)
  created = created + 1
end

-- Per thread (each has its own Lua state; `index` was set by setup()).
local cdf, next_id

function init(args)
  local me = index or 0
  math.randomseed(os.time() + 7919 * me)
  next_id = (start + me) % n
  if access == "zipf" then
    cdf = {}
    local sum = 0
    for k = 1, n do
      sum = sum + k ^ -s
      cdf[k] = sum
    end
    for k = 1, n do
      cdf[k] = cdf[k] / sum
    end
  end
end

-- Zipf rank (1..n) of a uniform draw: the first k with cdf[k] >= r.
local function zipf_rank()
  local r = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < r then
      lo = mid + 1
    else
      hi = mid
    end
  end
  return lo
end

function request()
  local id
  if access == "zipf" then
    id = zipf_rank() - 1
  elseif access == "seq" then
    id = next_id
    next_id = (next_id + nthreads) % n
  else
    id = math.random(0, n - 1)
  end
  local headers = { Host = port .. "-" .. prefix .. id .. "." .. domain }
  if token ~= "" then
    headers["X-Daytona-Preview-Token"] = token
  end
  return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d errors_status=%d errors_socket=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
