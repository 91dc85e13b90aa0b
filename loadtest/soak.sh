#!/usr/bin/env bash
# Soak: the mixed k6 scenario (loadtest/k6/mixed_rate.js: preview GET, 64 KiB POST, toolbox,
# WebSocket echo sessions) at a fixed rate for SOAK_DURATION against one sandgate (redis backend
# and redis activity sink, the sandboxes drawn at random from SANDBOXES), sampling the proxy every
# SAMPLE_EVERY: RSS, open fds, threads, route/credential cache entries, tasks alive on its
# runtimes, open connections and WebSockets, requests so far. Writes soak.csv, soak_run.txt and
# (with matplotlib) soak.png via loadtest/charts/soak.py into CHARTS_DIR, and prints whether each
# series is flat after WARMUP (least-squares slope per 10 minutes over the samples after it; the
# figure is reported, never asserted).
#
#   loadtest/soak.sh          20 minutes (not in CI); SKIP_BUILD=1 / SANDGATE_BIN as in lib.sh
#   loadtest/soak.sh --quick  30 s, output in a temporary directory (a smoke of the script)
#
# Knobs (environment): SOAK_DURATION (20m), SAMPLE_EVERY (10, seconds), WARMUP (120, seconds),
# RATE (200 iterations/s over all kinds), VUS (200: k6 VUs, all started up front, so the number
# of keep-alive client connections settles instead of following the machine's load), SANDBOXES
# (2000), CACHE_TTL (30s: entries expire and are refetched during the run, so the cache churns),
# CHARTS_DIR (loadtest/charts).
# Exit status 1 when k6 cannot run, a sandgate WARN/ERROR line is logged, or requests failed.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=soak.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"
parse_args "$@"

if [ "$quick" = 1 ]; then
  SOAK_DURATION=${SOAK_DURATION:-30s}
  SAMPLE_EVERY=${SAMPLE_EVERY:-2}
  WARMUP=${WARMUP:-10}
  RATE=${RATE:-50}
  SANDBOXES=${SANDBOXES:-200}
else
  SOAK_DURATION=${SOAK_DURATION:-20m}
  SAMPLE_EVERY=${SAMPLE_EVERY:-10}
  WARMUP=${WARMUP:-120}
  RATE=${RATE:-200}
  SANDBOXES=${SANDBOXES:-2000}
fi
CACHE_TTL=${CACHE_TTL:-30s}
VUS=${VUS:-200}

missing=()
for tool in k6 redis-server redis-cli nginx python3 curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$quick" = 1 ] && {
    echo "$prog --quick: SKIPPED, not installed: ${missing[*]}"
    exit 0
  }
  die "not installed: ${missing[*]}"
fi
resolve_bin
lib_setup soak
if [ "$quick" = 1 ]; then
  CHARTS_DIR=${CHARTS_DIR:-$tmp/charts}
else
  CHARTS_DIR=${CHARTS_DIR:-$repo/loadtest/charts}
fi
mkdir -p "$CHARTS_DIR"
. "$repo/loadtest/fleet.sh"

fleet_redis "$tmp/redis" no
fleet_runner
fleet_body_sink
fleet_load_sandboxes "$SANDBOXES"
fleet_sandgate_config "$tmp/sandgate.toml" redis "$CACHE_TTL"
start_sandgate sandgate "$tmp/sandgate.toml" "0-$(($(nproc) - 1))"
proxy_pid=$sg_pid
proxy_addr=$sg_addr
proxy_admin=$sg_admin
wait_ready "$proxy_admin"

# One sample: the CSV row of the proxy's state now.
metric_sum() { # metric_sum TEXT NAME-PREFIX → the sum of the samples whose name starts so
  awk -v m="$2" 'index($1, m) == 1 {s += $2} END {printf "%d", s}' <<<"$1"
}
sample() {
  local t=$1 m rss fds threads
  m=$(curl -sS --max-time 5 "http://$proxy_admin/metrics" || true)
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$proxy_pid/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$proxy_pid/status")
  fds=$(find "/proc/$proxy_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  echo "$t,$rss,$fds,$threads,$(metric_sum "$m" 'sandgate_cache_entries{cache="routes"}'),$(metric_sum "$m" 'sandgate_cache_entries{cache="credentials"}'),$(metric_sum "$m" sandgate_tasks_alive),$(metric_sum "$m" sandgate_connections_active),$(metric_sum "$m" sandgate_websockets_active),$(metric_sum "$m" 'sandgate_requests_total{')"
}

csv="$CHARTS_DIR/soak.csv"
echo "elapsed_s,rss_kib,open_fds,threads,cache_routes,cache_credentials,tasks_alive,connections,websockets,requests" >"$csv"
started=$(date +%s)
echo "$prog: k6 mixed_rate.js, $RATE iterations/s for $SOAK_DURATION over $SANDBOXES sandboxes" >&2
k6 run --quiet --no-color --no-usage-report --no-thresholds \
  -e "TARGET=http://$proxy_addr" -e "TOKEN=$token" -e "RATE=$RATE" -e "DURATION=$SOAK_DURATION" \
  -e "SANDBOX_POOL=$SANDBOXES" -e "POST_SANDBOX=sbx-sink" -e "MAX_VUS=$VUS" -e "PREALLOCATED=$VUS" \
  "$repo/loadtest/k6/mixed_rate.js" >"$tmp/k6.log" 2>&1 &
k6_pid=$!
pids+=("$k6_pid")
sample 0 >>"$csv"
next=$SAMPLE_EVERY
while kill -0 "$k6_pid" 2>/dev/null; do
  now=$(($(date +%s) - started))
  if [ "$now" -ge "$next" ]; then
    sample "$now" >>"$csv"
    next=$((next + SAMPLE_EVERY))
  fi
  sleep 0.5
done
k6_status=0
wait "$k6_pid" || k6_status=$?
sleep 2 # connections and WebSockets closing
sample "$(($(date +%s) - started))" >>"$csv"
failed=0
[ "$k6_status" = 0 ] || {
  echo "$prog: k6 exited $k6_status" >&2
  failed=1
}

grep -E '^\s+(checks|http_reqs|http_req_failed|http_req_duration|ws_sessions|ws_echoes|ws_echo_failures|iterations|dropped_iterations)\b' \
  "$tmp/k6.log" | tee "$tmp/k6.summary" >&2 || true
http_failed=$(sed -nE 's/.*http_req_failed[^:]*: *[0-9.]+% +([0-9]+) out of.*/\1/p' "$tmp/k6.summary")
ws_failed=$(sed -nE 's/.*ws_echo_failures[^:]*: *([0-9]+).*/\1/p' "$tmp/k6.summary")
if [ "${http_failed:-0}" != 0 ] || [ "${ws_failed:-0}" != 0 ]; then
  echo "$prog: failed: ${http_failed:-0} requests, ${ws_failed:-0} WebSocket echoes" >&2
  failed=1
fi
check_sandgate_log sandgate || failed=1

{
  echo "loadtest/soak.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
  echo "shared with other work; $("$bin" --version | head -n1), redis backend + redis activity sink,"
  echo "cache ttl $CACHE_TTL; k6 mixed_rate.js $RATE it/s ($VUS VUs) for $SOAK_DURATION over $SANDBOXES sandboxes; samples every ${SAMPLE_EVERY}s."
} >"$CHARTS_DIR/soak_run.txt"
python3 "$repo/loadtest/charts/soak.py" --flat "$WARMUP" "$CHARTS_DIR" | tee "$tmp/flat.txt"
if python3 -c 'import matplotlib' 2>/dev/null; then
  python3 "$repo/loadtest/charts/soak.py" "$CHARTS_DIR"
else
  echo "$prog: matplotlib not installed: no soak.png (pip install matplotlib)" >&2
fi
echo "$prog: samples in $csv"
exit "$failed"
