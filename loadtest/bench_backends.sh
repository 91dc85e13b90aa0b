#!/usr/bin/env bash
# Registry backends and activity recording, measured side by side in one run:
#   1. registry backend, warm cache: req/s through sandgate with `redis` vs `static`
#   2. cold-cache storm: a fresh proxy (redis backend) gets one request for each of SANDBOXES
#      distinct sandboxes; Redis calls per sandbox, errors, p50/p99 vs a warm run right after
#   3. activity on vs off (static backend)
#   4. Redis activity sink under a SANDBOXES-sandbox load: ZADD calls/s and marks per call
#
#   loadtest/bench_backends.sh          full run (~4 min after the release build)
#   loadtest/bench_backends.sh --quick  CI smoke (< 30 s): 1 run of 2 s each, 1,000 sandboxes;
#                                       exits 0 with a skip message without wrk or redis-server
#
# Topology (2-core machine): the proxies under test on PROXY_CORE, wrk + the upstream (sandgate's
# demo runner) + redis-server (its own, on a free port, no persistence) on LOAD_CORE. Only one
# proxy is under load at a time; the others sit idle on the same core.
#
# Every sandbox is non-public with the same preview token (checked on every request); the
# static backend holds it as `auth_token`, Redis as `auth_token_sha256` (docs/redis.md).
#
# Knobs (environment): SKIP_BUILD=1, SANDGATE_BIN (use this binary, no build), RUNS (3),
# WRK_THREADS (2), WRK_CONNS (64), WRK_DURATION (10s) for 1 and 3; SANDBOXES (10000),
# STORM_ROUNDS (3, a fresh proxy each), STORM_CONNS (256), STORM_LIMIT (60: seconds a storm may
# take), WARM_DURATION (10s) for 2; ACT_DURATION (20s) for 4; PROXY_CORE (1), LOAD_CORE (0),
# PHASES ("warm storm activity": 1+3, 2, 4; any subset, in that order), OUT (also write the
# markdown report to this file).
# Exit status 1 on a failed request (non-2xx, socket error) or a sandgate WARN/ERROR log line;
# figures are reported, never asserted (figures off target are flagged "ANOMALY" on stderr).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=bench_backends.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@" # sets quick=0|1; --help prints the header above

if [ "$quick" = 1 ]; then
  RUNS=${RUNS:-1}
  WRK_DURATION=${WRK_DURATION:-2s}
  SANDBOXES=${SANDBOXES:-1000}
  STORM_ROUNDS=${STORM_ROUNDS:-1}
  STORM_CONNS=${STORM_CONNS:-64}
  WARM_DURATION=${WARM_DURATION:-2s}
  ACT_DURATION=${ACT_DURATION:-3s}
  warmup=0
else
  RUNS=${RUNS:-3}
  WRK_DURATION=${WRK_DURATION:-10s}
  SANDBOXES=${SANDBOXES:-10000}
  STORM_ROUNDS=${STORM_ROUNDS:-3}
  STORM_CONNS=${STORM_CONNS:-256}
  WARM_DURATION=${WARM_DURATION:-10s}
  ACT_DURATION=${ACT_DURATION:-20s}
  warmup=1
fi
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
STORM_LIMIT=${STORM_LIMIT:-60}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
OUT=${OUT:-}
PHASES=${PHASES:-warm storm activity}

# --- prerequisites -------------------------------------------------------------------------
missing=()
for tool in wrk redis-server redis-cli; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$quick" = 1 ]; then
    echo "$prog --quick: SKIPPED, not installed: ${missing[*]} (apt-get install wrk redis-server)"
    exit 0
  fi
  die "not installed: ${missing[*]} (apt-get install wrk redis-server)"
fi
require_tools taskset curl sha256sum awk
ncores=$(nproc)
if [ "$PROXY_CORE" -ge "$ncores" ] || [ "$LOAD_CORE" -ge "$ncores" ]; then
  die "only $ncores core(s); set PROXY_CORE/LOAD_CORE"
fi
resolve_bin
lib_setup backends

runner_key="bench-runner-key"
token="bench-token"
token_sha=$(printf '%s' "$token" | sha256sum | awk '{print $1}')
sandbox="sbx-bench"
domain="preview.localhost"
app_port=3000
prefix="sandgate:"
activity_key="sandbox:activity"
failed=0

# --- Redis ---------------------------------------------------------------------------------
redis_port=$(free_port)
taskset -c "$LOAD_CORE" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" \
  --appendonly no --dir "$tmp" --logfile "$tmp/redis.log" >/dev/null 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
rcli() { redis-cli -p "$redis_port" "$@"; }
for _ in $(seq 1 100); do
  [ "$(rcli ping 2>/dev/null)" = PONG ] && break
  sleep 0.05
done
[ "$(rcli ping 2>/dev/null)" = PONG ] || die "redis-server did not start: $(cat "$tmp/redis.log")"

# Calls of one command so far, from INFO commandstats ("cmdstat_evalsha:calls=N,usec=...");
# 0 when Redis has not seen it yet.
redis_calls() {
  rcli info commandstats | tr -d '\r' | awk -F'[:,=]' -v c="cmdstat_$1" '$1 == c {print $3; f = 1} END {if (!f) print 0}'
}

start_runner "$LOAD_CORE" "$runner_key"

# Load the runner, the warm-path sandbox and the storm's sandboxes (plus spares: a storm
# thread that has sent its share goes on past SANDBOXES-1 until its last answers are in) with
# one `redis-cli --pipe` of RESP-encoded HSETs: seconds faster than one CLI call per key.
spare=$((STORM_CONNS * 2 + 100))
awk -v n=$((SANDBOXES + spare)) -v p="$prefix" -v runner_url="http://$runner_addr" \
  -v key="$runner_key" -v sha="$token_sha" -v one="$sandbox" '
  function cmd(argc, a,    i, s) {
    s = "*" argc "\r\n"
    for (i = 1; i <= argc; i++) s = s "$" length(a[i]) "\r\n" a[i] "\r\n"
    printf "%s", s
  }
  function sbx(id,    a) {
    split("HSET|" p "sandbox:" id "|runner|bench-runner|public|false|state|started|auth_token_sha256|" sha, a, "|")
    cmd(10, a)
  }
  BEGIN {
    split("HSET|" p "runner:bench-runner|url|" runner_url "|api_key|" key, a, "|")
    cmd(6, a)
    sbx(one)
    for (i = 0; i < n; i++) sbx("sbx-" i)
  }' >"$tmp/load.resp"
load_started=$(date +%s.%N)
rcli --pipe <"$tmp/load.resp" >"$tmp/load.log" 2>&1 || die "redis-cli --pipe failed: $(cat "$tmp/load.log")"
load_secs=$(awk -v a="$load_started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
grep -q 'errors: 0' "$tmp/load.log" || die "redis-cli --pipe reported errors: $(cat "$tmp/load.log")"
echo "loaded $((SANDBOXES + spare + 1)) sandboxes into Redis in ${load_secs}s" >&2

# --- proxies -------------------------------------------------------------------------------
# write_config FILE BACKEND ACTIVITY_ENABLED SINK
write_config() {
  local file=$1 backend=$2 activity=$3 sink=$4
  cat >"$file" <<EOF
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[proxy]
domains = ["$domain"]
[registry]
backend = "$backend"
EOF
  if [ "$backend" = static ]; then
    cat >>"$file" <<EOF
[[registry.runners]]
id = "bench-runner"
url = "http://$runner_addr"
api_key = "$runner_key"
[[registry.sandboxes]]
id = "$sandbox"
runner = "bench-runner"
public = false
auth_token = "$token"
state = "started"
EOF
  fi
  cat >>"$file" <<EOF
[redis]
url = "redis://127.0.0.1:$redis_port"
key_prefix = "$prefix"
[activity]
enabled = $activity
sink = "$sink"
redis_key = "$activity_key"
[auth]
cookie_keys = ["loadtest-cookie-key-0123456789abcdef0123"]
[log]
level = "warn"
EOF
}

# Prometheus counter value from a proxy's admin listener (0 when absent).
metric() {
  curl -sS --max-time 5 "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2; f = 1} END {if (!f) print 0}'
}

# Waits for the proxy's /ready (the registry backend answers).
wait_ready() {
  local admin=$1 i
  for i in $(seq 1 100); do
    [ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "http://$admin/ready" 2>/dev/null)" = 200 ] && return 0
    sleep 0.05
  done
  die "proxy at $admin never became ready"
}

# Each target: "proxy pid, address, admin address".
declare -A pid_of addr_of admin_of
start_target() { # start_target NAME CONFIG
  local name=$1
  start_sandgate "$name" "$2" "$PROXY_CORE"
  pid_of[$name]=$sg_pid
  addr_of[$name]=$sg_addr
  admin_of[$name]=$sg_admin
  wait_ready "$sg_admin"
}

preview() { # preview TARGET SANDBOX_ID [curl args...] → HTTP status
  local t=$1 id=$2
  shift 2
  curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $app_port-$id.$domain" "$@" \
    "http://${addr_of[$t]}/hello"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

report="$tmp/report.md"
{
  echo "Machine: nproc=$ncores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'),"
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); sandgate binary: ${bin#"$repo"/}; proxies on core $PROXY_CORE,"
  echo "wrk + demo runner + redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on core $LOAD_CORE."
} >"$report"

# ===========================================================================================
# 1 + 3. Warm cache: static vs redis backend, activity on vs off. Interleaved, medians.
# ===========================================================================================
phase_warm() {
  write_config "$tmp/static.toml" static true memory
  write_config "$tmp/redis.toml" redis true memory
  write_config "$tmp/static-noact.toml" static false memory
  targets=(static redis static-noact)
  for t in "${targets[@]}"; do
    start_target "$t" "$tmp/$t.toml"
    code=$(preview "$t" "$sandbox" -H "X-Daytona-Preview-Token: $token")
    [ "$code" = 200 ] || die "$t answered $code for $sandbox"
    # Auth really is on.
    code=$(preview "$t" "$sandbox")
    [ "$code" = 401 ] || die "$t without a token answered $code, expected 401"
  done

  # Runs wrk once against one target; prints "rps p50_us p99_us errors_status errors_socket
  # cpu_us_per_req".
  run_wrk() {
    local t=$1 duration=$2 before after line
    before=$(cpu_ticks "${pid_of[$t]}")
    line=$(BENCH_HOST="$app_port-$sandbox.$domain" BENCH_HEADER_NAME="X-Daytona-Preview-Token" \
      BENCH_HEADER_VALUE="$token" timeout 120 taskset -c "$LOAD_CORE" \
      wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$duration" -s "$repo/loadtest/wrk/headers.lua" \
      "http://${addr_of[$t]}/hello" | grep '^BENCH ')
    after=$(cpu_ticks "${pid_of[$t]}")
    awk -v line="$line" -v before="$before" -v after="$after" -v tck="$(getconf CLK_TCK)" 'BEGIN {
      n = split(line, f, " ")
      for (i = 2; i <= n; i++) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
      split(before, b, " "); split(after, a, " ")
      cpu = v["requests"] ? sprintf("%.1f", (a[1] + a[2] - b[1] - b[2]) * 1e6 / tck / v["requests"]) : "-"
      print v["rps"], v["p50_us"], v["p99_us"], v["errors_status"], v["errors_socket"], cpu
    }'
  }

  echo "== 1+3: warm cache, static vs redis, activity on vs off ($RUNS x $WRK_DURATION each)" >&2
  load1_before=$(loadavg)
  if [ "$warmup" = 1 ]; then
    for t in "${targets[@]}"; do run_wrk "$t" 1s >/dev/null; done
  fi
  evalsha_before=$(redis_calls evalsha)
  declare -A results=()
  for run in $(seq 1 "$RUNS"); do
    for t in "${targets[@]}"; do
      r=$(run_wrk "$t" "$WRK_DURATION")
      echo "  run $run $t: req/s p50_us p99_us err_status err_socket cpu_us/req = $r" >&2
      results[$t]+="$r"$'\n'
    done
  done
  evalsha_warm=$(($(redis_calls evalsha) - evalsha_before))
  load1_after=$(loadavg)

  col() { printf '%s' "${results[$1]}" | awk -v c="$2" '$c != "-" {print $c}' | median; }
  {
    echo
    echo "### 1 + 3: warm cache — registry backend static vs redis, activity on vs off"
    echo
    echo "wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION, GET /hello (48 B) on one non-public sandbox,"
    echo "$RUNS run(s) per target interleaved (static, redis, static-noact, static, ...), medians."
    echo "Load average before / after: $load1_before / $load1_after. Redis EVALSHA calls during"
    echo "the timed redis runs: $evalsha_warm (cache warm: TTL 120 s, one refresh per expiry)."
    echo
    echo "| target | backend | activity | req/s | p50 ms | p99 ms | CPU µs/req | req/s ratio | CPU/req ratio | req/s of each run |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---|"
  } >>"$report"
  base_rps=$(col static 1)
  base_cpu=$(col static 6)
  for t in "${targets[@]}"; do
    case $t in
      static) backend=static activity=on ratio_label="1.00 (baseline)" cpu_label="1.00" ;;
      redis) backend=redis activity=on ;;
      static-noact) backend=static activity=off ;;
    esac
    rps=$(col "$t" 1)
    cpu=$(col "$t" 6)
    if [ "$t" = redis ]; then
      ratio_label="redis/static $(awk -v a="$rps" -v b="$base_rps" 'BEGIN {printf "%.3f", a / b}')"
      cpu_label=$(awk -v a="$cpu" -v b="$base_cpu" 'BEGIN {printf "%.3f", a / b}')
      redis_ratio=$(awk -v a="$rps" -v b="$base_rps" 'BEGIN {printf "%.3f", a / b}')
    elif [ "$t" = static-noact ]; then
      # The activity question is on/off: the baseline (activity on) over this row.
      ratio_label="on/off $(awk -v a="$base_rps" -v b="$rps" 'BEGIN {printf "%.3f", a / b}')"
      cpu_label="on/off $(awk -v a="$base_cpu" -v b="$cpu" 'BEGIN {printf "%.3f", a / b}')"
      act_ratio=$(awk -v a="$base_rps" -v b="$rps" 'BEGIN {printf "%.3f", a / b}')
    fi
    rows=$(printf '%s' "${results[$t]}")
    errs=$(echo "$rows" | awk '{s += $4 + $5} END {print s + 0}')
    [ "$errs" = 0 ] || {
      echo "$prog: $t had $errs failed requests" >&2
      failed=1
    }
    printf '| %s | %s | %s | %.0f | %.2f | %.2f | %s | %s | %s | %s |\n' "$t" "$backend" "$activity" \
      "$rps" "$(col "$t" 2 | awk '{print $1 / 1000}')" "$(col "$t" 3 | awk '{print $1 / 1000}')" \
      "$cpu" "$ratio_label" "$cpu_label" \
      "$(echo "$rows" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}')" >>"$report"
  done
  # Paired ratios: each run's targets ran back to back, so a run's ratio cancels most of the
  # slow drift of a shared machine's load; their median is the figure to trust.
  paired() { # paired A B COLUMN → "r1, r2, ... (median m)" of A/B per run
    paste -d' ' <(printf '%s' "${results[$1]}" | awk -v c="$3" '{print $c}') \
      <(printf '%s' "${results[$2]}" | awk -v c="$3" '{print $c}') |
      awk '{r = $1 / $2; printf "%.3f\n", r}' >"$tmp/paired"
    printf '%s (median %s)' "$(paste -sd, "$tmp/paired" | sed 's/,/, /g')" "$(median <"$tmp/paired")"
  }
  {
    echo
    echo "Per-run paired ratios — redis/static req/s: $(paired redis static 1); CPU/req: $(paired redis static 6)."
    echo "Activity on/off req/s: $(paired static static-noact 1); CPU/req: $(paired static static-noact 6)."
  } >>"$report"
  redis_ratio=$(paired redis static 1 | sed 's/.*median \([^)]*\)).*/\1/')
  act_ratio=$(paired static static-noact 1 | sed 's/.*median \([^)]*\)).*/\1/')
  if awk -v r="$redis_ratio" 'BEGIN {exit !(r < 0.95)}'; then
    echo "ANOMALY: redis/static req/s (median paired ratio) $redis_ratio < 0.95" >&2
  fi
  if awk -v r="$act_ratio" 'BEGIN {exit !(r < 0.98)}'; then
    echo "ANOMALY: activity on/off req/s (median paired ratio) $act_ratio < 0.98" >&2
  fi
  for t in "${targets[@]}"; do stop_pid "${pid_of[$t]}"; done
}

# ===========================================================================================
# 2. Cold-cache storm over SANDBOXES distinct sandboxes, then a warm run over the same ones.
# ===========================================================================================
phase_storm() {
  # Runs wrk with loadtest/wrk/sandboxes.lua; ONCE=1 is the storm (interrupted once every thread
  # has its answers). Prints the BENCH line.
  run_sandboxes() {
    local t=$1 once=$2 duration=$3 conns=$4 wpid i
    rm -f "$tmp/storm.done"
    BENCH_SANDBOXES=$SANDBOXES BENCH_PREFIX=sbx- BENCH_PORT=$app_port BENCH_DOMAIN=$domain \
      BENCH_TOKEN=$token BENCH_THREADS=$WRK_THREADS BENCH_ONCE=$once BENCH_DONE_FILE="$tmp/storm.done" \
      taskset -c "$LOAD_CORE" wrk -t"$WRK_THREADS" -c"$conns" -d"$duration" --timeout 10s \
      -s "$repo/loadtest/wrk/sandboxes.lua" "http://${addr_of[$t]}/hello" >"$tmp/wrk.out" 2>&1 &
    wpid=$!
    if [ "$once" = 1 ]; then
      # Poll for the threads' "done" lines, then SIGINT: wrk stops and prints its summary.
      for i in $(seq 1 $((${duration%s} * 50))); do
        [ "$(cat "$tmp/storm.done" 2>/dev/null | wc -l)" -ge "$WRK_THREADS" ] && break
        kill -0 "$wpid" 2>/dev/null || break
        sleep 0.02
      done
      kill -INT "$wpid" 2>/dev/null || true
    fi
    wait "$wpid" || true
    grep '^BENCH ' "$tmp/wrk.out" || die "wrk printed no summary: $(cat "$tmp/wrk.out")"
  }

  # CPU µs per answered request between two cpu_ticks readings, for a BENCH line.
  ticks_per_req() {
    awk -v b="$1" -v a="$2" -v n="$(bench_field "$3" requests)" -v tck="$(getconf CLK_TCK)" 'BEGIN {
      split(b, x, " "); split(a, y, " ")
      printf "%.1f", n ? (y[1] + y[2] - x[1] - x[2]) * 1e6 / tck / n : 0 }'
  }

  echo "== 2: cold-cache storm over $SANDBOXES sandboxes ($STORM_ROUNDS round(s), -c$STORM_CONNS)" >&2
  write_config "$tmp/storm.toml" redis true memory
  load2_before=$(loadavg)
  storm_rows=""
  warm_rows=""
  for round in $(seq 1 "$STORM_ROUNDS"); do
    t=storm$round
    start_target "$t" "$tmp/storm.toml"
    m_miss="sandgate_route_cache_total{reason=\"miss\"}"
    m_coal="sandgate_route_cache_total{reason=\"coalesced\"}"
    e0=$(redis_calls evalsha)
    h0=$(redis_calls hgetall)
    miss0=$(metric "${admin_of[$t]}" "$m_miss")
    c0=$(cpu_ticks "${pid_of[$t]}")
    r0=$(cpu_ticks "$redis_pid")
    line=$(run_sandboxes "$t" 1 "${STORM_LIMIT}s" "$STORM_CONNS")
    c1=$(cpu_ticks "${pid_of[$t]}")
    r1=$(cpu_ticks "$redis_pid")
    sleep 0.5 # requests still in flight when wrk stopped
    e1=$(redis_calls evalsha)
    h1=$(redis_calls hgetall)
    miss1=$(metric "${admin_of[$t]}" "$m_miss")
    coal1=$(metric "${admin_of[$t]}" "$m_coal")
    c2=$(cpu_ticks "${pid_of[$t]}")
    r2=$(cpu_ticks "$redis_pid")
    wline=$(run_sandboxes "$t" 0 "$WARM_DURATION" "$STORM_CONNS")
    c3=$(cpu_ticks "${pid_of[$t]}")
    r3=$(cpu_ticks "$redis_pid")
    e2=$(redis_calls evalsha)
    miss2=$(metric "${admin_of[$t]}" "$m_miss")
    sent=$(bench_field "$line" sent)
    # sandboxes, evalsha, evalsha/sandbox, misses, coalesced, hgetall (inside the script), rps,
    # p50, p99, non2xx, socket errors, answered, proxy CPU µs/req, redis CPU µs/req
    storm_rows+="$(awk -v s="$sent" -v e=$((e1 - e0)) -v m="$(awk -v a="$miss1" -v b="$miss0" 'BEGIN {print a - b}')" \
      -v c="$coal1" -v h=$((h1 - h0)) -v line="$line" -v pc="$(ticks_per_req "$c0" "$c1" "$line")" \
      -v rc="$(ticks_per_req "$r0" "$r1" "$line")" 'BEGIN {
        n = split(line, f, " "); for (i = 2; i <= n; i++) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
        printf "%d %d %.4f %d %d %d %.1f %d %d %d %d %d %s %s\n", s, e, e / s, m, c, h, v["rps"], v["p50_us"],
          v["p99_us"], v["non2xx"], v["errors_socket"], v["requests"], pc, rc }')"$'\n'
    warm_rows+="$(awk -v e=$((e2 - e1)) -v m="$(awk -v a="$miss2" -v b="$miss1" 'BEGIN {print a - b}')" -v line="$wline" \
      -v pc="$(ticks_per_req "$c2" "$c3" "$wline")" -v rc="$(ticks_per_req "$r2" "$r3" "$wline")" 'BEGIN {
        n = split(line, f, " "); for (i = 2; i <= n; i++) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
        printf "%d %d %.1f %d %d %d %d %d %s %s\n", e, m, v["rps"], v["p50_us"], v["p99_us"], v["non2xx"],
          v["errors_socket"], v["requests"], pc, rc }')"$'\n'
    echo "  round $round storm: $line; evalsha $((e1 - e0)), hgetall $((h1 - h0)), cache misses $miss1 - $miss0, coalesced $coal1" >&2
    echo "  round $round warm:  $wline; evalsha $((e2 - e1))" >&2
    stop_pid "${pid_of[$t]}"
  done
  load2_after=$(loadavg)

  scol() { printf '%s' "$1" | awk -v c="$2" '{print $c}' | median; }
  each() { printf '%s' "$1" | awk -v c="$2" -v d="${3:-1}" '{printf "%s" ("%." d "f"), (NR > 1 ? ", " : ""), $c}'; }
  {
    echo
    echo "### 2: cold-cache storm over $SANDBOXES distinct sandboxes (redis backend)"
    echo
    echo "$STORM_ROUNDS round(s), each on a fresh proxy (empty cache): wrk -t$WRK_THREADS -c$STORM_CONNS"
    echo "(loadtest/wrk/sandboxes.lua, BENCH_ONCE=1) sends one GET /hello to each of"
    echo "\`3000-sbx-N.preview.localhost\`, N = 0..$((SANDBOXES - 1)) (every request the first for its sandbox; the"
    echo "threads go on past N = $((SANDBOXES - 1)) until their last answers are in, so a few more distinct"
    echo "sandboxes are sent: column \"sandboxes\"); then, right after, a $WARM_DURATION warm run cycling over the same"
    echo "$SANDBOXES with the same connections. Backend calls = Redis \`INFO commandstats\` delta of \`EVALSHA\`"
    echo "(the backend's one-round-trip Lua read); misses / coalesced = the proxy's"
    echo "\`sandgate_route_cache_total\`; CPU = user + system time of the proxy / of redis-server per answered"
    echo "request. Medians over rounds; load average before / after: $load2_before / $load2_after."
    echo
    echo "| phase | sandboxes | EVALSHA | per sandbox | cache misses | coalesced | req/s | proxy CPU µs/req | Redis CPU µs/req | p50 ms | p99 ms | non-2xx | socket errors | p99 ms of each round |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    printf '| storm | %s | %s | %s | %s | %s | %.0f | %s | %s | %.2f | %.2f | %s | %s | %s |\n' \
      "$(scol "$storm_rows" 1)" "$(scol "$storm_rows" 2)" "$(scol "$storm_rows" 3)" \
      "$(scol "$storm_rows" 4)" "$(scol "$storm_rows" 5)" "$(scol "$storm_rows" 7)" \
      "$(scol "$storm_rows" 13)" "$(scol "$storm_rows" 14)" \
      "$(awk -v x="$(scol "$storm_rows" 8)" 'BEGIN {print x / 1000}')" \
      "$(awk -v x="$(scol "$storm_rows" 9)" 'BEGIN {print x / 1000}')" \
      "$(printf '%s' "$storm_rows" | awk '{s += $10} END {print s + 0}')" \
      "$(printf '%s' "$storm_rows" | awk '{s += $11} END {print s + 0}')" \
      "$(printf '%s' "$storm_rows" | awk '{printf "%s%.2f", (NR > 1 ? ", " : ""), $9 / 1000}')"
    printf '| warm (right after) | %s | %s | %s | %s | - | %.0f | %s | %s | %.2f | %.2f | %s | %s | %s |\n' \
      "$SANDBOXES" "$(scol "$warm_rows" 1)" \
      "$(awk -v e="$(scol "$warm_rows" 1)" -v n="$SANDBOXES" 'BEGIN {printf "%.4f", e / n}')" \
      "$(scol "$warm_rows" 2)" "$(scol "$warm_rows" 3)" "$(scol "$warm_rows" 9)" "$(scol "$warm_rows" 10)" \
      "$(awk -v x="$(scol "$warm_rows" 4)" 'BEGIN {print x / 1000}')" \
      "$(awk -v x="$(scol "$warm_rows" 5)" 'BEGIN {print x / 1000}')" \
      "$(printf '%s' "$warm_rows" | awk '{s += $6} END {print s + 0}')" \
      "$(printf '%s' "$warm_rows" | awk '{s += $7} END {print s + 0}')" \
      "$(printf '%s' "$warm_rows" | awk '{printf "%s%.2f", (NR > 1 ? ", " : ""), $5 / 1000}')"
    echo
    echo "Storm req/s of each round: $(each "$storm_rows" 7 0); EVALSHA per sandbox of each round: $(each "$storm_rows" 3 4);"
    echo "HGETALL calls inside the script (sandbox + runner hash): $(each "$storm_rows" 6 0)."
  } >>"$report"
  bad=$(printf '%s%s' "$storm_rows" "$warm_rows" | awk 'NF == 14 {s += $10 + $11} NF == 10 {s += $6 + $7} END {print s + 0}')
  [ "$bad" = 0 ] || {
    echo "$prog: the storm/warm runs had $bad failed requests" >&2
    failed=1
  }
  if printf '%s' "$storm_rows" | awk '$3 > 1.0 {f = 1} END {exit !f}'; then
    echo "ANOMALY: more than one EVALSHA per sandbox in a cold storm" >&2
  fi
}

# ===========================================================================================
# 4. Redis activity sink: ZADD calls/s and marks per call under a SANDBOXES-sandbox load.
# ===========================================================================================
phase_activity() {
  echo "== 4: redis activity sink, $SANDBOXES sandboxes, $ACT_DURATION" >&2
  write_config "$tmp/act.toml" redis true redis
  rcli del "$activity_key" >/dev/null
  load4_before=$(loadavg)
  start_target act "$tmp/act.toml"
  t=act
  z0=$(redis_calls zadd)
  w0=$(metric "${admin_of[$t]}" sandgate_activity_writes_total)
  e0=$(redis_calls evalsha)
  t0=$(date +%s.%N)
  line=$(run_sandboxes "$t" 0 "$ACT_DURATION" "$WRK_CONNS")
  sleep 1.2 # one more flush interval: the marks of the last second
  t1=$(date +%s.%N)
  z1=$(redis_calls zadd)
  w1=$(metric "${admin_of[$t]}" sandgate_activity_writes_total)
  e1=$(redis_calls evalsha)
  zcard=$(rcli zcard "$activity_key")
  flush_errors=$(metric "${admin_of[$t]}" sandgate_activity_flush_errors_total)
  load4_after=$(loadavg)
  stop_pid "${pid_of[$t]}"
  echo "  $line; zadd $((z1 - z0)), marks $w0 -> $w1, zcard $zcard, evalsha $((e1 - e0))" >&2
  {
    echo
    echo "### 4: Redis activity sink under a $SANDBOXES-sandbox load"
    echo
    echo "A fresh proxy (redis backend, \`[activity] sink = \"redis\"\`, default throttle 10 s and flush"
    echo "interval 1 s); wrk -t$WRK_THREADS -c$WRK_CONNS -d$ACT_DURATION cycling over the $SANDBOXES sandboxes"
    echo "(loadtest/wrk/sandboxes.lua); counters read before wrk and 1.2 s after it (the last flush), so"
    echo "per-second figures are over that $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s window. ZADD = commandstats delta;"
    echo "marks = the proxy's \`sandgate_activity_writes_total\` delta (members written, all ZADDs);"
    echo "ZCARD = distinct sandboxes in \`$activity_key\`. Load average before / after: $load4_before / $load4_after."
    echo
    echo "| req/s | requests | ZADD calls | ZADD/s | marks written | marks/s | marks per ZADD | ZCARD | marks per request | flush errors | cold lookups (EVALSHA) | non-2xx |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -v line="$line" -v z=$((z1 - z0)) -v w0="$w0" -v w1="$w1" -v zc="$zcard" -v t0="$t0" -v t1="$t1" \
      -v fe="$flush_errors" -v e=$((e1 - e0)) 'BEGIN {
      n = split(line, f, " "); for (i = 2; i <= n; i++) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
      secs = t1 - t0; w = w1 - w0
      printf "| %.0f | %d | %d | %.2f | %d | %.0f | %.0f | %d | %.4f | %d | %d | %d |\n", v["rps"], v["requests"],
        z, z / secs, w, w / secs, (z ? w / z : 0), zc, (v["requests"] ? w / v["requests"] : 0), fe, e, v["non2xx"] + v["errors_socket"]
    }'
  } >>"$report"
  [ "$(bench_field "$line" non2xx)" = 0 ] && [ "$(bench_field "$line" errors_socket)" = 0 ] || {
    echo "$prog: the activity run had failed requests: $line" >&2
    failed=1
  }
}

# --- run the phases ------------------------------------------------------------------------
for phase in $PHASES; do
  case $phase in
    warm) phase_warm ;;
    storm) phase_storm ;;
    activity) phase_activity ;;
    *) die "unknown phase $phase (PHASES: warm storm activity)" ;;
  esac
done

# --- health --------------------------------------------------------------------------------
for f in "$tmp"/*.err; do
  if grep -qE 'WARN|ERROR' "$f"; then
    echo "$prog: $(basename "$f" .err) logged warnings/errors:" >&2
    grep -E 'WARN|ERROR' "$f" | head -n 20 >&2
    failed=1
  fi
done

cat "$report"
[ -n "$OUT" ] && cp "$report" "$OUT"
exit "$failed"
