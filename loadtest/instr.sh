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
# nginx (when installed; its worker process) and each sandgate run under callgrind with
# bench.sh's configuration (static registry, one non-public sandbox with token auth, activity
# on; nginx doing the same routing, token check and headers), behind wrk -t1 -c4 keep-alive
# preview GETs of the demo runner's /hello. After a 2 s warm-up the counters are zeroed, wrk
# runs DURATION, the counters are dumped, and the instruction count (Ir) is divided by the
# requests wrk completed.
#
# Placement as in bench.sh: the proxies on PROXY_CORE (1), wrk and the runner on LOAD_CORE (0),
# so sandgate sees one CPU and runs its current-thread runtime, as in the wrk benchmark.
#
# DELAY_MS=N paces wrk (each connection waits N ms before each request): the proxy idles between
# requests, so the count includes the cost of going to sleep and waking up per request (the
# partial-load case), not only the saturated one.
#
# IDENTITY=1 measures the signed identity header (issue #15) instead of comparing with nginx:
# the same binary, the same API-key requests (`Authorization: Bearer`, a static-registry key of
# the sandboxes' organisation), to a sandbox without identity and to one opted in (each request
# then carries `X-Sandgate-Identity`). Steady state: one audience, so the proxy reuses its token
# (re-signed every ttl/2). Worst case: each request names another port (wrk rotates over 40,000
# preview ports from 20000; the warm-up uses ports from 3000, so the counted requests meet no
# token it cached), so every request signs a fresh token; the rotation is measured without
# identity too, so the ratio is the signing alone.
#
# Knobs: DURATION (10s; --quick 2s), DELAY_MS (0), ACCESS_LOG (0; 1: access logs on in both), IDENTITY (0), PROXY_CORE, LOAD_CORE, OUT (append the markdown table to this file), KEEP=DIR
# (keep the callgrind dumps there, for callgrind_annotate).
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
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}

for tool in valgrind callgrind_control wrk taskset; do
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

preview_names
start_runner "$LOAD_CORE" "$runner_key"
# ACCESS_LOG=1: both proxies log every request as users run them: sandgate with its defaults
# (level info, access log on, to stderr, which goes to a file here), nginx to a file with a 64 KiB
# buffer.
if [ "${ACCESS_LOG:-0}" = 1 ]; then
  export SANDGATE_LOG_LEVEL=info
  nginx_access_log="$tmp/nginx/access.log combined buffer=64k"
fi
write_sandgate_preview_config "$tmp/sandgate.toml"
IDENTITY=${IDENTITY:-0}
api_key="bench-api-key"
if [ "$IDENTITY" = 1 ]; then
  # Two sandboxes of the key's organisation, one opted in; the test suite's Ed25519 key signs.
  cat >>"$tmp/sandgate.toml" <<EOF
[identity]
enabled = true
[[identity.keys]]
kid = "bench-1"
algorithm = "EdDSA"
private_key_file = "$repo/tests/fixtures/identity_ed25519.pem"
[[registry.api_keys]]
key = "$api_key"
organization = "bench-org"
[[registry.sandboxes]]
id = "sbx-key"
runner = "bench-runner"
organization = "bench-org"
[[registry.sandboxes]]
id = "sbx-identity"
runner = "bench-runner"
organization = "bench-org"
identity = true
EOF
fi
# What `load` sends (count_identity_case sets them per case).
load_host=$preview_host
load_header_name="X-Daytona-Preview-Token"
load_header_value=$token
port_span=""

# wrk against ADDR for DURATION (rotating ports from FIRST when `port_span` is set); prints the
# number of completed requests. Fails when any answer was not 2xx/3xx (a refused credential would
# count the wrong work).
load() {
  local addr=$1 duration=$2 first=${3:-20000} line
  line=$(BENCH_HOST="$load_host" BENCH_HEADER_NAME="$load_header_name" BENCH_HEADER_VALUE="$load_header_value" \
    BENCH_DELAY_MS="${DELAY_MS:-0}" BENCH_PORT_SPAN="$port_span" BENCH_PORT_FIRST="$first" \
    timeout 120 taskset -c "$LOAD_CORE" wrk -t1 -c4 -d"$duration" -s "$repo/loadtest/wrk/headers.lua" "http://$addr/hello" |
    grep '^BENCH ')
  case $line in
    *" errors_status=0 "*) ;;
    *) die "$load_host: answers that were not 2xx/3xx: $line" ;;
  esac
  echo "$line" | sed -n 's/^BENCH requests=\([0-9]*\) .*/\1/p'
}

# Ir of the first dump in FILE (callgrind names it FILE.1) divided by REQUESTS.
per_request() {
  local file=$1 requests=$2 ir
  [ "${requests:-0}" -gt 0 ] || die "$file: wrk completed no request"
  ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$file.1" 2>/dev/null)
  [ -n "$ir" ] || die "no callgrind dump $file.1"
  [ -n "${KEEP:-}" ] && cp "$file.1" "$KEEP/"
  awk -v r="$requests" -v ir="$ir" 'BEGIN {printf "%d %.0f\n", r, ir / r}'
}

# Zeroes PID's counters after a warm-up, loads ADDR for DURATION, dumps; prints the requests.
measure() {
  local pid=$1 addr=$2 requests
  load "$addr" 2s 3000 >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  requests=$(load "$addr" "$DURATION")
  callgrind_control -d "$pid" >/dev/null 2>&1
  echo "$requests"
}

# Counts one sandgate binary; prints "requests instructions_per_request".
count_sandgate() {
  local name=$1 binary=$2 pid addr requests
  taskset -c "$PROXY_CORE" valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$name" --dump-instr=no \
    "$binary" serve --config "$tmp/sandgate.toml" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pid=$!
  pids+=("$pid")
  addr=$(wait_for_addr "$tmp/$name.out" "sandgate listening on" "$pid" http 1200)
  requests=$(measure "$pid" "$addr")
  stop_pid "$pid"
  per_request "$tmp/cg.$name" "$requests"
}

# Counts nginx's worker (same routing, token check and headers, see lib.sh).
count_nginx() {
  local requests
  nginx_wrap=(valgrind --tool=callgrind --trace-children=yes --dump-instr=no
    "--callgrind-out-file=$tmp/cg.nginx.%p")
  start_nginx_preview "$PROXY_CORE"
  nginx_workers=${nginx_workers%% *}
  requests=$(measure "$nginx_workers" "127.0.0.1:$nginx_port")
  stop_pid "$nginx_pid"
  per_request "$tmp/cg.nginx.$nginx_workers" "$requests"
}

declare -A result
targets=()
# IDENTITY=1: one sandgate case NAME (also its files' name), API-key requests to SANDBOX, over
# SPAN rotating ports when set. LABEL is the report's.
declare -A label
count_identity_case() {
  local name=$1 sandbox_id=$2 span=$3
  load_host="$app_port-$sandbox_id.preview.localhost"
  load_header_name="Authorization"
  load_header_value="Bearer $api_key"
  port_span=$span
  label[$name]=$4
  targets+=("$name")
  result[$name]=$(count_sandgate "$name" "$bin")
}
if [ "$IDENTITY" = 1 ]; then
  count_identity_case off sbx-key "" "API key, identity off"
  count_identity_case on sbx-identity "" "API key, identity on (token reused)"
  count_identity_case off-rotating sbx-key 40000 "API key, identity off, a new port each request"
  count_identity_case on-rotating sbx-identity 40000 "API key, identity on, a new token each request"
  report="$tmp/report.md"
  {
    echo "callgrind, wrk -t1 -c4 -d$DURATION${DELAY_MS:+, paced $DELAY_MS ms,} keep-alive preview GETs with an API key (activity on);"
    echo "$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "| case | requests counted | instructions / request | vs identity off, same requests |"
    echo "|---|---:|---:|---:|"
    for t in "${targets[@]}"; do
      read -r requests ipr <<<"${result[$t]}"
      case $t in
        *-rotating) ref=${result[off-rotating]} ;;
        *) ref=${result[off]} ;;
      esac
      ratio=$(awk -v a="$ipr" -v b="${ref#* }" 'BEGIN {printf "%.2f", a / b}')
      echo "| ${label[$t]} | $requests | $ipr | $ratio |"
    done
  } >"$report"
  cat "$report"
  [ -n "$OUT" ] && cat "$report" >>"$OUT"
  exit 0
fi
if command -v nginx >/dev/null; then
  targets+=(nginx)
  result[nginx]=$(count_nginx)
fi
targets+=(sandgate)
result[sandgate]=$(count_sandgate sandgate "$bin")
if [ -n "$BASE_BIN" ]; then
  [ -x "$BASE_BIN" ] || die "BASE_BIN $BASE_BIN is not an executable"
  targets+=(sandgate-base)
  result[sandgate-base]=$(count_sandgate sandgate-base "$BASE_BIN")
fi
ref=${result[nginx]:-${result[sandgate-base]:-${result[sandgate]}}}
ref_name=$([ -n "${result[nginx]:-}" ] && echo nginx || { [ -n "$BASE_BIN" ] && echo sandgate-base || echo sandgate; })

report="$tmp/report.md"
{
  echo "callgrind, wrk -t1 -c4 -d$DURATION${DELAY_MS:+, paced $DELAY_MS ms,} keep-alive preview GETs (token auth, activity on);"
  echo "$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "| target | requests counted | instructions / request | vs $ref_name |"
  echo "|---|---:|---:|---:|"
  for t in "${targets[@]}"; do
    read -r requests ipr <<<"${result[$t]}"
    ratio=$(awk -v a="$ipr" -v b="$(echo "$ref" | awk '{print $2}')" 'BEGIN {printf "%.2f", a / b}')
    echo "| $t | $requests | $ipr | $ratio |"
  done
} >"$report"
cat "$report"
[ -n "$OUT" ] && cat "$report" >>"$OUT"
exit 0
