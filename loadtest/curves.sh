#!/usr/bin/env bash
# Scaling curves, sandgate vs nginx: req/s, p50/p99, proxy CPU per request and proxy RSS as
# functions of
#   (a) sandboxes in the registry and in use (COUNTS: 1 .. 100,000), static and Redis backends,
#       uniform and Zipf access (loadtest/wrk/curves.lua picks the Host of every request); the
#       regex-routed equal-work nginx does not depend on the count but is drawn for reference
#   (b) concurrent client connections (CONNS: 64 .. 10,000), one sandbox
#   (c) response size (SIZES: 0 .. 1 MiB, the demo runner's /bytes/<n>), one sandbox
# Writes CSVs (one row per point and run) to CHARTS_DIR (loadtest/charts), a markdown summary of
# the medians (summary.md) and, when matplotlib is installed, PNGs drawn by
# loadtest/charts/plot.py (pip install matplotlib; without it the plots are skipped with a note).
#
#   loadtest/curves.sh          full run (~6 min: points of 5 s, 1 run each)
#   loadtest/curves.sh --quick  CI smoke (< 60 s): a few points of 1 s, output in a temporary
#                               directory; exits 0 with a skip message without wrk or nginx
#
# Topology (2-core machine) as in bench.sh: the proxies on PROXY_CORE, wrk + the upstream
# (sandgate's demo runner) + redis-server on LOAD_CORE. Every point starts fresh proxies (so RSS
# belongs to that point); both proxies do the same work (lib.sh): a non-public sandbox whose
# preview token is checked on every request, keep-alive upstream connections; sandgate with
# activity on and [log] level warn, nginx with access_log off. Before a sandbox-count point,
# each sandgate is warmed by a sweep over all its sandboxes (the route cache then holds every
# one: the curves are the warm steady state; the cache holds 100,000 entries by default).
# Proxy RSS = VmRSS from /proc/PID/status (nginx: master + workers), the highest of the samples
# taken every 0.25 s while wrk runs; rss_after_kib is read once wrk has finished.
#
# Knobs (environment): SKIP_BUILD=1, SANDGATE_BIN (use this binary, no build), RUNS (1; points
# are repeated, targets interleaved, plot.py takes medians), DURATION (5s; quick 1s), WARMUP
# (1s before each connection/size point; quick 0), CURVES ("sandboxes connections sizes"),
# COUNTS ("1 100 1000 10000 100000"), BACKENDS ("static redis"; redis is dropped with a note
# when redis-server is missing), ACCESS ("uniform zipf"), ZIPF_S (1.1), CONNS
# ("64 256 1000 4000 10000"), SIZES ("0 1024 4096 16384 65536 262144 1048576"), WRK_THREADS
# (2), WRK_CONNS (64, for the count and size curves), PROXY_CORE (1), LOAD_CORE (0), CHARTS_DIR,
# PLOT (1; 0: no PNGs).
# The script raises its soft open-file limit (ulimit -n) for 10,000 connections (wrk needs one
# descriptor per connection, a proxy two: both open an upstream connection per request in
# flight); a point beyond the hard limit becomes the largest round thousand that fits, noted. Exit status 1 on a failed request or a sandgate WARN/ERROR.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=curves.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@" # sets quick=0|1; --help prints the header above

started=$(date +%s)
if [ "$quick" = 1 ]; then
  DURATION=${DURATION:-1s}
  WARMUP=${WARMUP:-0}
  COUNTS=${COUNTS:-1 1000}
  ACCESS=${ACCESS:-zipf}
  CONNS=${CONNS:-64 512}
  SIZES=${SIZES:-0 65536}
else
  DURATION=${DURATION:-5s}
  WARMUP=${WARMUP:-1s}
  COUNTS=${COUNTS:-1 100 1000 10000 100000}
  ACCESS=${ACCESS:-uniform zipf}
  CONNS=${CONNS:-64 256 1000 4000 10000}
  SIZES=${SIZES:-0 1024 4096 16384 65536 262144 1048576}
fi
RUNS=${RUNS:-1}
CURVES=${CURVES:-sandboxes connections sizes}
BACKENDS=${BACKENDS:-static redis}
ZIPF_S=${ZIPF_S:-1.1}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
PLOT=${PLOT:-1}

# --- prerequisites -------------------------------------------------------------------------
missing=()
for tool in wrk nginx python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$quick" = 1 ]; then
    echo "$prog --quick: SKIPPED, not installed: ${missing[*]} (apt-get install nginx wrk python3)"
    exit 0
  fi
  die "not installed: ${missing[*]} (apt-get install nginx wrk python3)"
fi
require_tools taskset curl sha256sum awk
if [[ " $BACKENDS " == *" redis "* ]] && ! command -v redis-server >/dev/null; then
  echo "$prog: redis-server not installed: the Redis backend series is skipped" >&2
  BACKENDS=$(tr ' ' '\n' <<<"$BACKENDS" | grep -vx redis | tr '\n' ' ')
fi
ncores=$(nproc)
if [ "$PROXY_CORE" -ge "$ncores" ] || [ "$LOAD_CORE" -ge "$ncores" ]; then
  die "only $ncores core(s); set PROXY_CORE/LOAD_CORE"
fi

# Open files: wrk holds one per connection, a proxy two (each proxy opens an upstream connection
# per request in flight: with C connections waiting on the upstream, up to C of them), plus slack.
# Only CAP_SYS_RESOURCE raises the hard limit; a point that needs more is replaced by the
# largest round thousand that fits, with a note.
max_conns=$(tr ' ' '\n' <<<"$CONNS $WRK_CONNS" | sort -n | tail -n1)
need=$((max_conns * 2 + 1024))
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt "$need" ]; then
  ulimit -Hn "$need" 2>/dev/null || true
  ulimit -Sn "$need" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)"
fi
nofile=$(ulimit -Sn)
if [ "$nofile" != unlimited ] && [ "$nofile" -lt "$need" ]; then
  kept="" fit=$(((nofile - 1024) / 2 / 1000 * 1000)) top=0
  for c in $CONNS; do
    if [ $((c * 2 + 1024)) -le "$nofile" ]; then
      kept+="$c "
      top=$c
    elif [ "$fit" -gt "$top" ]; then
      echo "$prog: ulimit -n $nofile (hard limit): the $c-connection point becomes $fit" >&2
      kept+="$fit "
      top=$fit
    else
      echo "$prog: ulimit -n $nofile (hard limit): dropping the $c-connection point" >&2
    fi
  done
  CONNS=$kept
  max_conns=$(tr ' ' '\n' <<<"$CONNS $WRK_CONNS" | sort -n | tail -n1)
fi
# nginx counts client and upstream connections; its workers may not open more than the limit.
nginx_worker_connections=$(nofile_cap $((max_conns * 2 + 1024)))
[ "$nginx_worker_connections" -lt 4096 ] && nginx_worker_connections=4096
[ "$nofile" != unlimited ] && [ "$nginx_worker_connections" -gt $((nofile - 64)) ] &&
  nginx_worker_connections=$((nofile - 64))
resolve_bin
lib_setup curves
if [ "$quick" = 1 ]; then
  CHARTS_DIR=${CHARTS_DIR:-$tmp/charts}
else
  CHARTS_DIR=${CHARTS_DIR:-$repo/loadtest/charts}
fi
mkdir -p "$CHARTS_DIR"

preview_names # runner_key, token, sandbox (unused here: ids are sbx-N), app_port
domain="preview.localhost"
token_sha=$(printf '%s' "$token" | sha256sum | awk '{print $1}')
prefix="sandgate:"
failed=0
clk_tck=$(getconf CLK_TCK)
lua="$repo/loadtest/wrk/curves.lua"

start_runner "$LOAD_CORE" "$runner_key"

# --- Redis: its own server, sandboxes sbx-0 .. sbx-(N-1) added as the counts grow ------------
if [[ " $BACKENDS " == *" redis "* ]] && [[ " $CURVES " == *" sandboxes "* ]]; then
  redis_port=$(free_port)
  taskset -c "$LOAD_CORE" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" \
    --appendonly no --dir "$tmp" --logfile "$tmp/redis.log" >/dev/null 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
    sleep 0.05
  done
  [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] || die "redis-server did not start: $(cat "$tmp/redis.log")"
  # The runner, then sandboxes as needed, RESP-encoded HSETs through one `redis-cli --pipe`.
  redis_seed() { # redis_seed FROM TO: sandboxes sbx-FROM .. sbx-(TO-1) (and the runner when FROM is 0)
    awk -v from="$1" -v to="$2" -v p="$prefix" -v runner_url="http://$runner_addr" \
      -v key="$runner_key" -v sha="$token_sha" '
      function cmd(argc, a,    i, s) {
        s = "*" argc "\r\n"
        for (i = 1; i <= argc; i++) s = s "$" length(a[i]) "\r\n" a[i] "\r\n"
        printf "%s", s
      }
      BEGIN {
        if (from == 0) { split("HSET|" p "runner:bench-runner|url|" runner_url "|api_key|" key, a, "|"); cmd(6, a) }
        for (i = from; i < to; i++) {
          split("HSET|" p "sandbox:sbx-" i "|runner|bench-runner|public|false|state|started|auth_token_sha256|" sha, a, "|")
          cmd(10, a)
        }
      }' >"$tmp/seed.resp"
    redis-cli -p "$redis_port" --pipe <"$tmp/seed.resp" >"$tmp/seed.log" 2>&1 || die "redis-cli --pipe failed: $(cat "$tmp/seed.log")"
    grep -q 'errors: 0' "$tmp/seed.log" || die "redis-cli --pipe reported errors: $(cat "$tmp/seed.log")"
  }
fi

# --- proxies -------------------------------------------------------------------------------
# write_config FILE BACKEND N: sandboxes sbx-0 .. sbx-(N-1), all non-public with the same token.
write_config() {
  local file=$1 backend=$2 n=$3
  cat >"$file" <<EOF
[server]
listen = "127.0.0.1:0"
max_connections_per_ip = 0
[admin]
listen = "127.0.0.1:0"
[proxy]
domains = ["$domain"]
[registry]
backend = "$backend"
[activity]
enabled = true
[auth]
cookie_keys = ["loadtest-cookie-key-0123456789abcdef0123"]
[log]
level = "warn"
EOF
  if [ "$backend" = redis ]; then
    cat >>"$file" <<EOF
[redis]
url = "redis://127.0.0.1:$redis_port"
key_prefix = "$prefix"
EOF
  else
    cat >>"$file" <<EOF
[[registry.runners]]
id = "bench-runner"
url = "http://$runner_addr"
api_key = "$runner_key"
EOF
    awk -v n="$n" -v token="$token" 'BEGIN {
      for (i = 0; i < n; i++)
        printf "[[registry.sandboxes]]\nid = \"sbx-%d\"\nrunner = \"bench-runner\"\npublic = false\nauth_token = \"%s\"\nstate = \"started\"\n", i, token
    }' >>"$file"
  fi
}

# Starts sandgate NAME with CONFIG on PROXY_CORE and waits for /ready; sets sg_pid, sg_addr and
# startup_s (from the start to the listening line).
start_proxy() {
  local t0
  t0=$(date +%s.%N)
  start_sandgate "$1" "$2" "$PROXY_CORE"
  startup_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
  for _ in $(seq 1 200); do
    [ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "http://$sg_admin/ready" 2>/dev/null)" = 200 ] && return 0
    sleep 0.05
  done
  die "$1 never became ready"
}

# Starts the equal-work nginx (fresh) on PROXY_CORE; sets nginx_port, nginx_pid, nginx_workers.
start_nginx() {
  start_nginx_preview "$PROXY_CORE"
}

# Fails unless ADDR answers 200 for sandbox ID (and, with a third argument, 401 without token).
check_target() {
  local addr=$1 id=$2 code
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $app_port-$id.$domain" \
    -H "X-Daytona-Preview-Token: $token" "http://$addr/hello")
  [ "$code" = 200 ] || die "$addr answered $code for $id"
  if [ -n "${3:-}" ]; then
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $app_port-$id.$domain" "http://$addr/hello")
    [ "$code" = 401 ] || die "$addr without a token answered $code for $id, expected 401"
  fi
}

# Sum of VmRSS (KiB) of the processes.
rss_kib() {
  local total=0 pid k v _
  for pid in "$@"; do
    while read -r k v _; do
      if [ "$k" = VmRSS: ]; then
        total=$((total + v))
        break
      fi
    done <"/proc/$pid/status" || true
  done
  echo "$total"
}

# measure "PIDS" DURATION CONNS URL [VAR=value ...]: one wrk run with curves.lua; prints
# "rps p50_ms p99_ms errors cpu_us_per_req rss_peak_kib rss_after_kib".
measure() {
  local procs=$1 duration=$2 conns=$3 url=$4 before after wpid peak=0 r line
  shift 4
  # shellcheck disable=SC2086
  before=$(cpu_ticks $procs)
  env BENCH_TOKEN="$token" BENCH_DOMAIN="$domain" BENCH_PORT="$app_port" BENCH_THREADS="$WRK_THREADS" \
    BENCH_ZIPF_S="$ZIPF_S" "$@" timeout $((${duration%s} + 120)) taskset -c "$LOAD_CORE" \
    wrk -t"$WRK_THREADS" -c"$conns" -d"$duration" --timeout 10s -s "$lua" "$url" >"$tmp/wrk.out" 2>&1 &
  wpid=$!
  while kill -0 "$wpid" 2>/dev/null; do
    # shellcheck disable=SC2086
    r=$(rss_kib $procs)
    if [ "$r" -gt "$peak" ]; then peak=$r; fi
    sleep 0.25
  done
  wait "$wpid" || true
  # shellcheck disable=SC2086
  after=$(cpu_ticks $procs)
  line=$(grep '^BENCH ' "$tmp/wrk.out") || die "wrk printed no summary: $(cat "$tmp/wrk.out")"
  # shellcheck disable=SC2086
  awk -v line="$line" -v before="$before" -v after="$after" -v tck="$clk_tck" -v peak="$peak" \
    -v rss="$(rss_kib $procs)" 'BEGIN {
    n = split(line, f, " ")
    for (i = 2; i <= n; i++) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
    split(before, b, " "); split(after, a, " ")
    cpu = v["requests"] ? sprintf("%.1f", (a[1] + a[2] - b[1] - b[2]) * 1e6 / tck / v["requests"]) : "-"
    printf "%.0f %.3f %.3f %d %s %d %d\n", v["rps"], v["p50_us"] / 1000, v["p99_us"] / 1000,
      v["errors_status"] + v["errors_socket"], cpu, peak, rss
  }'
}

# Warms sandgate at ADDR: "seq" sweeps (BENCH_START goes on where the last one stopped) until
# N requests have been answered, so every sandbox is in the route cache.
warm_sweep() {
  local procs=$1 addr=$2 n=$3 done_n=0 secs=1 r rps
  while [ "$done_n" -lt "$n" ]; do
    r=$(measure "$procs" "${secs}s" "$WRK_CONNS" "http://$addr/hello" BENCH_SANDBOXES="$n" \
      BENCH_ACCESS=seq BENCH_START=$((done_n / WRK_THREADS * WRK_THREADS)))
    rps=${r%% *}
    [ "$rps" -gt 0 ] || die "warm-up of $addr answered nothing"
    done_n=$((done_n + rps * secs))
    secs=$(((n - done_n) / rps + 1))
    if [ "$secs" -gt 30 ]; then secs=30; fi
  done
}

# One row of a CSV: the point's columns then measure's output, comma-separated.
csv_row() { tr ' ' ',' <<<"$*" >>"$csv"; }

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load_before=$(loadavg)
echo "$prog: sandgate ${bin#"$repo"/}, $DURATION per point, $RUNS run(s), CSVs in $CHARTS_DIR" >&2

# ===========================================================================================
# (a) sandboxes in the registry and in use
# ===========================================================================================
curve_sandboxes() {
  csv="$CHARTS_DIR/sandboxes.csv"
  echo "target,backend,access,sandboxes,run,rps,p50_ms,p99_ms,errors,cpu_us_per_req,rss_peak_kib,rss_after_kib,startup_s" >"$csv"
  local seeded=0 n backend run access t r
  declare -A addr_of pids_of start_of
  for n in $COUNTS; do
    if [[ " $BACKENDS " == *" redis "* ]]; then
      redis_seed "$seeded" "$n"
      seeded=$n
    fi
    local names=()
    for backend in $BACKENDS; do
      t=sandgate-$backend
      write_config "$tmp/$t-$n.toml" "$backend" "$n"
      start_proxy "$t-$n" "$tmp/$t-$n.toml"
      addr_of[$t]=$sg_addr pids_of[$t]=$sg_pid start_of[$t]=$startup_s
      check_target "$sg_addr" sbx-0 401
      check_target "$sg_addr" "sbx-$((n - 1))"
      names+=("$t")
    done
    start_nginx
    addr_of[nginx]="127.0.0.1:$nginx_port" pids_of[nginx]="$nginx_pid $nginx_workers" start_of[nginx]="-"
    check_target "${addr_of[nginx]}" "sbx-$((n - 1))" 401
    names+=(nginx)
    for t in "${names[@]}"; do
      [ "$t" = nginx ] && continue
      echo "  $n sandboxes: warming $t (startup ${start_of[$t]} s)" >&2
      warm_sweep "${pids_of[$t]}" "${addr_of[$t]}" "$n"
    done
    for run in $(seq 1 "$RUNS"); do
      for access in $ACCESS; do
        for t in "${names[@]}"; do
          r=$(measure "${pids_of[$t]}" "$DURATION" "$WRK_CONNS" "http://${addr_of[$t]}/hello" \
            BENCH_SANDBOXES="$n" BENCH_ACCESS="$access")
          echo "  $n sandboxes $access run $run $t: rps p50_ms p99_ms errors cpu_us/req rss_peak rss_after = $r" >&2
          backend=${t#sandgate-}
          [ "$t" = nginx ] && backend=regex
          csv_row "${t%%-*} $backend $access $n $run $r ${start_of[$t]}"
          [ "$(awk '{print $4}' <<<"$r")" = 0 ] || failed=1
        done
      done
    done
    for t in "${names[@]}"; do
      # shellcheck disable=SC2086
      for p in ${pids_of[$t]}; do
        [ "$t" = nginx ] && [ "$p" != "$nginx_pid" ] && continue
        stop_pid "$p"
      done
    done
  done
}

# ===========================================================================================
# (b) concurrent connections and (c) response sizes: one sandbox, fresh proxies per point
# ===========================================================================================
# one_sandbox_point X CONNS PATH: measures sandgate and nginx at one point; rows "target X run ...".
one_sandbox_point() {
  local x=$1 conns=$2 path=$3 run t r
  declare -A addr_of pids_of
  start_proxy "sandgate-$csv_name-$x" "$tmp/one.toml"
  addr_of[sandgate]=$sg_addr pids_of[sandgate]=$sg_pid
  start_nginx
  addr_of[nginx]="127.0.0.1:$nginx_port" pids_of[nginx]="$nginx_pid $nginx_workers"
  for t in sandgate nginx; do
    check_target "${addr_of[$t]}" sbx-0 401
    if [ "$WARMUP" != 0 ]; then
      measure "${pids_of[$t]}" "$WARMUP" "$conns" "http://${addr_of[$t]}$path" BENCH_SANDBOXES=1 \
        BENCH_PATH="$path" >/dev/null
    fi
  done
  for run in $(seq 1 "$RUNS"); do
    for t in sandgate nginx; do
      r=$(measure "${pids_of[$t]}" "$DURATION" "$conns" "http://${addr_of[$t]}$path" \
        BENCH_SANDBOXES=1 BENCH_PATH="$path")
      echo "  $csv_name $x run $run $t: rps p50_ms p99_ms errors cpu_us/req rss_peak rss_after = $r" >&2
      csv_row "$t $x $run $r"
      [ "$(awk '{print $4}' <<<"$r")" = 0 ] || failed=1
    done
  done
  stop_pid "${pids_of[sandgate]}"
  stop_pid "$nginx_pid"
}

curve_connections() {
  csv_name=connections
  csv="$CHARTS_DIR/connections.csv"
  echo "target,connections,run,rps,p50_ms,p99_ms,errors,cpu_us_per_req,rss_peak_kib,rss_after_kib" >"$csv"
  write_config "$tmp/one.toml" static 1
  local c
  for c in $CONNS; do
    [ "$c" -ge "$WRK_THREADS" ] || continue
    one_sandbox_point "$c" "$c" /hello
  done
}

curve_sizes() {
  csv_name=sizes
  csv="$CHARTS_DIR/sizes.csv"
  echo "target,size_bytes,run,rps,p50_ms,p99_ms,errors,cpu_us_per_req,rss_peak_kib,rss_after_kib" >"$csv"
  write_config "$tmp/one.toml" static 1
  local size
  for size in $SIZES; do
    one_sandbox_point "$size" "$WRK_CONNS" "/bytes/$size"
  done
}

for curve in $CURVES; do
  case $curve in
    sandboxes) curve_sandboxes ;;
    connections) curve_connections ;;
    sizes) curve_sizes ;;
    *) die "unknown curve $curve (CURVES: sandboxes connections sizes)" ;;
  esac
done

# --- health, summary, plots ----------------------------------------------------------------
check_nginx_log nginx || failed=1
for f in "$tmp"/sandgate*.err; do
  [ -f "$f" ] || continue
  check_sandgate_log "$(basename "$f" .err)" || failed=1
done

wall=$(($(date +%s) - started))
{
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); nproc=$ncores; sandgate ${bin#"$repo"/}; nginx $(nginx -v 2>&1 | sed 's|.*/||');"
  echo "proxies on core $PROXY_CORE, wrk -t$WRK_THREADS + runner + redis on core $LOAD_CORE; $DURATION per point, $RUNS run(s);"
  echo "load average before / after: $load_before / $(loadavg); wall time ${wall} s$([ "$quick" = 1 ] && echo " (--quick)")"
} >"$CHARTS_DIR/run.txt"
python3 "$repo/loadtest/charts/plot.py" --tables "$CHARTS_DIR" >"$CHARTS_DIR/summary.md"
cat "$CHARTS_DIR/summary.md"
drawn=""
if [ "$PLOT" = 1 ]; then
  if python3 -c 'import matplotlib' 2>/dev/null; then
    python3 "$repo/loadtest/charts/plot.py" "$CHARTS_DIR"
    drawn=" and PNGs"
  else
    echo "$prog: matplotlib not installed (pip install matplotlib): no PNGs drawn" >&2
  fi
fi
echo "$prog: wall time ${wall} s; CSVs$drawn in $CHARTS_DIR" >&2
exit "$failed"
