#!/usr/bin/env bash
# Wake on request (issue #16): what a wake adds over the start itself, and the memory a held
# request costs. Loopback only; the whole run is bounded by TIME_LIMIT.
#   1. Added latency: WAKES stopped sandboxes (static registry) woken through the start hook
#      fixture (loadtest/wake_driver.py hook: answers 200 after DELAY_MS, i.e. "the sandbox is
#      up"), one request each, one after the other, each on a new connection; the first
#      response's latency minus DELAY_MS, p50 / p99 / max. The same number of requests to a
#      running sandbox, for comparison (what any proxied request costs here).
#   2. Memory per held request: for each N in HOLD_COUNTS, on a fresh proxy, N idle connections,
#      then one request on each, held on one sandbox whose start does not end (the hook answers
#      it after an hour); VmRSS after SETTLE seconds at each step: KiB
#      per idle connection, what a held request adds, both together. Then the clients close and
#      the held gauge must fall (abandoned requests are not kept until max_wait). For
#      comparison, the same N requests "in flight": to a running sandbox whose app (served by
#      the driver) never answers, what any request waiting on its upstream costs.
#
#   loadtest/bench_wake.sh          full run: WAKES=100, DELAY_MS=200, HOLD_COUNTS="1000 5000"
#   loadtest/bench_wake.sh --quick  CI smoke (< 30 s): WAKES=10, HOLD_COUNTS=200, SETTLE=0.5
#
# Topology (2-core machine): sandgate on PROXY_CORE; the hook, the clients and the upstream
# (sandgate's demo runner) on LOAD_CORE.
# Knobs (environment): SKIP_BUILD=1, SANDGATE_BIN (use this binary, no build), WAKES, DELAY_MS,
# HOLD_COUNTS, SETTLE (2 s), PROXY_CORE (1), LOAD_CORE (0), TIME_LIMIT (600 s; quick 60), OUT
# (also write the markdown report to this file).
# Exit status 1 when a wake did not answer 200, a request was answered while it should be held,
# or sandgate logged a WARN/ERROR line; 124 when TIME_LIMIT ran out. Figures are reported,
# never asserted.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=bench_wake.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@" # sets quick=0|1; --help prints the header above

if [ "$quick" = 1 ]; then
  WAKES=${WAKES:-10}
  HOLD_COUNTS=${HOLD_COUNTS:-200}
  SETTLE=${SETTLE:-0.5}
  TIME_LIMIT=${TIME_LIMIT:-60}
else
  WAKES=${WAKES:-100}
  HOLD_COUNTS=${HOLD_COUNTS:-1000 5000}
  SETTLE=${SETTLE:-2}
  TIME_LIMIT=${TIME_LIMIT:-600}
fi
DELAY_MS=${DELAY_MS:-200}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
OUT=${OUT:-}

if [ -z "${BENCH_WAKE_TIMED:-}" ]; then
  BENCH_WAKE_TIMED=1 exec timeout -k 20 "$TIME_LIMIT" "$repo/loadtest/bench_wake.sh" "$@"
fi

require_tools python3 taskset curl
resolve_bin
lib_setup bench-wake
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

driver="$repo/loadtest/wake_driver.py"
runner_key="bench-wake-runner-key"
failed=0

start_runner "$LOAD_CORE" "$runner_key"

taskset -c "$LOAD_CORE" python3 "$driver" hook --delay-ms "$DELAY_MS" \
  >"$tmp/hook.out" 2>"$tmp/hook.err" &
hook_pid=$!
pids+=("$hook_pid")
hook_addr=$(wait_for_addr "$tmp/hook.out" "hook listening on" "$hook_pid")

# Writes the config: WAKES stopped sandboxes wake-0.., the running `warm` and the stopped
# `slow-1` (its start does not end), all public on the demo runner; wake bounds above any N here.
write_config() {
  local file=$1 i
  cat >"$file" <<EOF
[server]
listen = "127.0.0.1:0"
max_connections_per_ip = 100000
[admin]
listen = "127.0.0.1:0"
[proxy]
domains = ["preview.localhost"]
[log]
level = "${SANDGATE_LOG_LEVEL:-warn}"
[registry.wake]
url = "http://$hook_addr/api/sandbox/{id}/start"
timeout = "10m"
max_wait = "10m"
start_timeout = "10m"
max_held_per_sandbox = 100000
max_held = 100000
[[registry.runners]]
id = "runner-1"
url = "http://$runner_addr"
api_key = "$runner_key"
[[registry.sandboxes]]
id = "warm"
runner = "runner-1"
public = true
[[registry.sandboxes]]
id = "direct"
address = "127.0.0.1"
public = true
[[registry.sandboxes]]
id = "slow-1"
runner = "runner-1"
public = true
state = "stopped"
EOF
  for i in $(seq 0 $((WAKES - 1))); do
    printf '[[registry.sandboxes]]\nid = "wake-%d"\nrunner = "runner-1"\npublic = true\nstate = "stopped"\n' \
      "$i" >>"$file"
  done
}

# Fails the run when sandgate logged a WARN or ERROR line.
check_log() {
  if grep -E ' (WARN|ERROR) ' "$tmp/$1.err" >/dev/null; then
    echo "$prog: sandgate logged warnings or errors:" >&2
    grep -E ' (WARN|ERROR) ' "$tmp/$1.err" | head -n 5 >&2
    failed=1
  fi
}

write_config "$tmp/sandgate.toml"
report="$tmp/report.md"
{
  echo "Machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -sr);"
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); load average $(cut -d' ' -f1-3 /proc/loadavg); sandgate binary: ${bin#"$repo"/};"
  echo "start delay ${DELAY_MS} ms (hook fixture), $WAKES wakes, sandgate on core $PROXY_CORE, hook/clients/runner on core $LOAD_CORE."
  echo
} >"$report"

# --- 1. added latency ----------------------------------------------------------------------
start_sandgate wakes "$tmp/sandgate.toml" "$PROXY_CORE"
ids=$(seq -s, -f 'wake-%g' 0 $((WAKES - 1)))
if ! taskset -c "$LOAD_CORE" python3 "$driver" wakes --proxy "$sg_addr" --ids "$ids" \
  --warm warm --delay-ms "$DELAY_MS" >"$tmp/wakes.txt" 2>"$tmp/wakes.err"; then
  cat "$tmp/wakes.err" >&2
  failed=1
fi
hook_calls=$(curl -fsS --max-time 5 "http://$hook_addr/calls" 2>/dev/null || echo "?")
hook_overshoot=$(curl -fsS --max-time 5 "http://$hook_addr/overshoot" 2>/dev/null || echo "?")
{
  echo "**Added latency of a wake** (ms; a new connection per request):"
  echo
  echo '```'
  cat "$tmp/wakes.txt"
  echo "$hook_overshoot"
  echo "start calls received by the hook: $hook_calls (expected $WAKES)"
  echo '```'
  echo
} >>"$report"
check_log wakes
stop_pid "$sg_pid"

# --- 2. memory per held request ------------------------------------------------------------
{
  echo "**Memory per held request** (one sandbox whose start does not end; fresh proxy per N):"
  echo
  echo "| N | requests | RSS before KiB | N idle connections KiB | N requests waiting KiB | KiB per idle connection | **KiB a waiting request adds** | KiB per request with its connection | answered early | still held 1 s after the clients closed |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} >>"$report"
# One row: on a fresh proxy, N requests held by a wake (KIND "held") or waiting on an app that
# never answers (KIND "in flight", the comparison).
hold_row() {
  local n=$1 kind=$2 name line flags=()
  name="hold-$n-${kind// /-}"
  [ "$kind" = held ] || flags=(--in-flight)
  start_sandgate "$name" "$tmp/sandgate.toml" "$PROXY_CORE"
  # Warm-up: a few hundred ordinary requests, so the baseline includes the pools and buffers
  # any proxy has after its first connections.
  taskset -c "$LOAD_CORE" python3 "$driver" wakes --proxy "$sg_addr" \
    --ids "$(printf 'warm,%.0s' $(seq 1 199))warm" --warm warm --delay-ms 0 >/dev/null 2>&1 || true
  local id=slow-1
  [ "$kind" = held ] || id=direct
  if ! taskset -c "$LOAD_CORE" python3 "$driver" hold --proxy "$sg_addr" --admin "$sg_admin" \
    --pid "$sg_pid" --id "$id" --count "$n" --settle "$SETTLE" "${flags[@]}" \
    >"$tmp/$name.txt" 2>"$tmp/$name.err"; then
    cat "$tmp/$name.txt" "$tmp/$name.err" >&2
    failed=1
  fi
  line=$(grep '^result' "$tmp/$name.txt" || echo "result")
  field() { tr ' ' '\n' <<<"$line" | sed -n "s/^$1=//p"; }
  echo "| $n | $kind | $(field baseline_kib) | $(field idle_kib) | $(field held_kib) | $(field kib_per_conn) | **$(field kib_per_held)** | $(field kib_per_both) | $(field answered_early) | $(field held_1s_after_close) |" >>"$report"
  check_log "$name"
  stop_pid "$sg_pid"
}

for n in $HOLD_COUNTS; do
  hold_row "$n" held
  hold_row "$n" "in flight"
done

cat "$report"
[ -z "$OUT" ] || cp "$report" "$OUT"
exit "$failed"
