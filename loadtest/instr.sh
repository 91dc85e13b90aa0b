#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: a figure that
# does not move with the load of a shared machine, for before/after ratios of an optimisation.
# (Kernel time is not counted; bench.sh's CPU µs/request covers both.)
#
#   loadtest/instr.sh                      the release build (built unless SKIP_BUILD=1)
#   BASE_BIN=/tmp/old-sandgate loadtest/instr.sh     also counts an older build, same requests
#   loadtest/instr.sh --quick              CI smoke: a short run; exits 0 with a SKIPPED line
#                                          when valgrind or wrk is missing
#
# Each sandgate runs under callgrind with the same config as bench.sh (static registry, one
# non-public sandbox with token auth, activity on), behind wrk -t1 -c4 keep-alive preview GETs
# of the demo runner's /hello. After a warm-up the counters are zeroed, wrk runs DURATION, the
# counters are dumped, and the total instruction count (Ir) is divided by the requests wrk
# completed. Knobs: DURATION (10s; --quick 2s), OUT (append the markdown table to this file),
# KEEP=DIR (keep the callgrind dumps there, for callgrind_annotate).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=instr.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@"
if [ "$quick" = 1 ]; then
  DURATION=${DURATION:-2s}
else
  DURATION=${DURATION:-10s}
fi
OUT=${OUT:-}
BASE_BIN=${BASE_BIN:-}

for tool in valgrind callgrind_control wrk; do
  if ! command -v "$tool" >/dev/null; then
    [ "$quick" = 1 ] && {
      echo "instr.sh --quick: SKIPPED, $tool is not installed (apt-get install valgrind wrk)"
      exit 0
    }
    die "$tool is required (apt-get install valgrind wrk)"
  fi
done

resolve_bin
lib_setup instr

runner_key="bench-runner-key"
token="bench-token"
sandbox="sbx-bench"
preview_host="3000-$sandbox.preview.localhost"
start_runner 0 "$runner_key"

cat >"$tmp/sandgate.toml" <<EOF
[server]
listen = "127.0.0.1:0"
[proxy]
domains = ["preview.localhost"]
[registry]
backend = "static"
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
[activity]
enabled = true
[auth]
cookie_keys = ["loadtest-cookie-key-0123456789abcdef0123"]
[log]
level = "warn"
EOF

# wrk against ADDR for DURATION; prints the number of completed requests.
load() {
  local addr=$1 duration=$2
  BENCH_HOST="$preview_host" BENCH_HEADER_NAME="X-Daytona-Preview-Token" BENCH_HEADER_VALUE="$token" \
    timeout 120 wrk -t1 -c4 -d"$duration" -s "$repo/loadtest/wrk/headers.lua" "http://$addr/hello" |
    sed -n 's/^BENCH requests=\([0-9]*\) .*/\1/p'
}

# Counts one binary; prints "requests instructions_per_request".
count() {
  local name=$1 binary=$2 pid addr requests ir
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$name" --dump-instr=no \
    "$binary" serve --config "$tmp/sandgate.toml" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pid=$!
  pids+=("$pid")
  addr=$(wait_for_addr "$tmp/$name.out" "sandgate listening on" "$pid" 1200)
  load "$addr" 2s >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  requests=$(load "$addr" "$DURATION")
  callgrind_control -d "$pid" >/dev/null 2>&1
  [ -n "${KEEP:-}" ] && cp "$tmp"/cg."$name".* "$KEEP"/
  stop_pid "$pid"
  [ "${requests:-0}" -gt 0 ] || die "$name: wrk completed no request"
  # The dump after zeroing is cg.<name>.<n>; its "summary:" line is the total Ir since.
  ir=$(grep -h '^summary:' "$tmp"/cg."$name".* 2>/dev/null | awk '{print $2}' | sort -n | head -n1)
  [ -n "$ir" ] || die "$name: no callgrind dump"
  awk -v r="$requests" -v ir="$ir" 'BEGIN {printf "%d %.0f\n", r, ir / r}'
}

declare -A result
targets=(sandgate)
result[sandgate]=$(count sandgate "$bin")
if [ -n "$BASE_BIN" ]; then
  [ -x "$BASE_BIN" ] || die "BASE_BIN $BASE_BIN is not an executable"
  targets+=(sandgate-base)
  result[sandgate-base]=$(count sandgate-base "$BASE_BIN")
fi

report="$tmp/report.md"
{
  echo "callgrind, wrk -t1 -c4 -d$DURATION keep-alive preview GETs (token auth, activity on);"
  echo "$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "| target | requests counted | instructions / request | vs base |"
  echo "|---|---:|---:|---:|"
  for t in "${targets[@]}"; do
    read -r requests ipr <<<"${result[$t]}"
    ratio="-"
    if [ -n "$BASE_BIN" ]; then
      ratio=$(awk -v a="$ipr" -v b="$(echo "${result[sandgate-base]}" | awk '{print $2}')" \
        'BEGIN {printf "%.2f", a / b}')
    fi
    echo "| $t | $requests | $ipr | $ratio |"
  done
} >"$report"
cat "$report"
[ -n "$OUT" ] && cat "$report" >>"$OUT"
exit 0
