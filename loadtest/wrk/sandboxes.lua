-- wrk script used by loadtest/bench_backends.sh: every request goes to another sandbox.
--   BENCH_SANDBOXES   how many sandboxes: ids <BENCH_PREFIX>0 .. <BENCH_PREFIX>(N-1) (10000)
--   BENCH_PREFIX      sandbox id prefix ("sbx-")
--   BENCH_PORT        preview port (3000); Host is <port>-<id>.<BENCH_DOMAIN>
--   BENCH_DOMAIN      preview domain ("preview.localhost")
--   BENCH_TOKEN       X-Daytona-Preview-Token to send (empty: none)
--   BENCH_PATH        request path ("/hello")
--   BENCH_THREADS     wrk's -t (threads start as they are set up, so none can count them)
--   BENCH_ONCE        "1": a cold-cache storm. Thread k of T sends ids k, k+T, k+2T, ... and
--                     never repeats one: once its share of 0..N-1 is sent it goes on past N-1
--                     (the caller loads spare sandboxes there), so every request is the first
--                     for its sandbox. When the answers to its share are in, the thread stops
--                     and appends a line to BENCH_DONE_FILE; the caller interrupts wrk (SIGINT:
--                     wrk then prints its summary) once all threads have. Otherwise ids cycle
--                     over 0..N-1 until -d ends.
-- At the end it prints one machine-readable line:
--   BENCH requests=N duration_us=N rps=F p50_us=N p99_us=N errors_status=N errors_socket=N
--         non2xx=N sent=N        (sent: requests sent, = distinct sandboxes with BENCH_ONCE=1)
local n = tonumber(os.getenv("BENCH_SANDBOXES") or "10000")
local prefix = os.getenv("BENCH_PREFIX") or "sbx-"
local port = os.getenv("BENCH_PORT") or "3000"
local domain = os.getenv("BENCH_DOMAIN") or "preview.localhost"
local token = os.getenv("BENCH_TOKEN") or ""
local path = os.getenv("BENCH_PATH") or "/hello"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local once = os.getenv("BENCH_ONCE") == "1"
local done_file = os.getenv("BENCH_DONE_FILE") or ""

-- Main state: give each thread its index, keep the threads for done().
local threads = {}
local created = 0
function setup(thread)
  thread:set("index", created)
  created = created + 1
  table.insert(threads, thread)
end

-- Per thread (each has its own Lua state; thread:set() in setup() made `index` a global here).
local next_id, mine, received, non2xx, sent, finished

function init(args)
  next_id = index or 0
  mine = 0
  for _ = next_id, n - 1, nthreads do mine = mine + 1 end
  received, non2xx, sent, finished = 0, 0, 0, false
end

function request()
  local id = next_id
  next_id = next_id + nthreads
  if next_id >= n and not once then
    next_id = next_id - n
  end
  sent = sent + 1
  local headers = { Host = port .. "-" .. prefix .. id .. "." .. domain }
  if token ~= "" then
    headers["X-Daytona-Preview-Token"] = token
  end
  return wrk.format("GET", path, headers)
end

-- Defined in both modes so that storm and warm runs cost wrk the same per response.
function response(status, headers, body)
  received = received + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
  -- Cheap enough per response, and the main state can only read what threads publish.
  wrk.thread:set("non2xx", non2xx)
  wrk.thread:set("sent", sent)
  if once and not finished and received >= mine then
    finished = true
    if done_file ~= "" then
      local f = io.open(done_file, "a")
      f:write("done\n")
      f:close()
    end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local bad, sent_all = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + (tonumber(t:get("non2xx")) or 0)
    sent_all = sent_all + (tonumber(t:get("sent")) or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d errors_status=%d errors_socket=%d non2xx=%d sent=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout, bad, sent_all))
end
