#!/usr/bin/env bash
# Header routing vs per-host routing (issue #15), side by side in one run: an SDK talking to
# SANDBOXES sandboxes over HTTP/2, the same requests in two shapes,
#   per-host  one HTTP/2 connection per sandbox host <port>-<id>.preview.localhost (an SDK with
#             a per-host connection pool),
#   header    one HTTP/2 connection to the proxy's own host, each request naming its sandbox in
#             X-Daytona-Sandbox-Id / X-Daytona-Sandbox-Port,
# driven identically by examples/h2_mux_bench.rs (REQUESTS requests, CONCURRENCY in flight,
# request i to sandbox i % SANDBOXES, so the first SANDBOXES requests each meet a new sandbox),
# over h2c (prior knowledge) and over TLS (ALPN h2, a per-run dev certificate). Reported per
# shape: client connections the proxy accepted (its sandgate_connections_accepted_total),
# requests/s, p50/p99 latency (all requests, and the first request of each sandbox: in
# per-host mode the one that opens its connection), proxy CPU per 1,000 requests and proxy
# RSS at the end, then the ratios per-host / header. h2load (nghttp2-client) cross-checks the
# per-request cost: one connection, one sandbox, routed by host vs by headers.
#
#   loadtest/bench_header_routing.sh          full run (~2 min after the release build)
#   loadtest/bench_header_routing.sh --quick  CI smoke (seconds): 1 run, 50 sandboxes, h2c only
#
# Topology (2-core machine): sandgate alone on PROXY_CORE; the load client, h2load and the
# upstream (sandgate's demo runner, answering from memory) on LOAD_CORE. Loopback only. A fresh
# proxy per measurement (its counters and memory start clean).
#
# Every sandbox is non-public with one preview token (checked on every request), on one runner.
#
# Knobs (environment): SKIP_BUILD=1, SANDGATE_BIN (use this binary, no build; the client is
# then its profile's examples/h2_mux_bench, built if missing), H2_CLIENT (the client binary),
# SANDBOXES (750, as in e2b #1342), REQUESTS (30000), CONCURRENCY (64), RUNS (3),
# TRANSPORTS ("h2c tls"), H2LOAD_REQUESTS (20000), H2LOAD_ROUNDS (5: each shape once per round,
# the first alternating; medians), PROXY_CORE (1), LOAD_CORE (0), OUT (also
# write the markdown report to this file).
# Exit status 1 on a failed request or a sandgate WARN/ERROR log line; figures are reported,
# never asserted.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=bench_header_routing.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@" # sets quick=0|1; --help prints the header above

if [ "$quick" = 1 ]; then
  SANDBOXES=${SANDBOXES:-50}
  REQUESTS=${REQUESTS:-1000}
  RUNS=${RUNS:-1}
  TRANSPORTS=${TRANSPORTS:-h2c}
  H2LOAD_REQUESTS=${H2LOAD_REQUESTS:-500}
  H2LOAD_ROUNDS=${H2LOAD_ROUNDS:-1}
else
  SANDBOXES=${SANDBOXES:-750}
  REQUESTS=${REQUESTS:-30000}
  RUNS=${RUNS:-3}
  TRANSPORTS=${TRANSPORTS:-h2c tls}
  H2LOAD_REQUESTS=${H2LOAD_REQUESTS:-20000}
  H2LOAD_ROUNDS=${H2LOAD_ROUNDS:-5}
fi
CONCURRENCY=${CONCURRENCY:-64}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
OUT=${OUT:-}

require_tools taskset curl awk
ncores=$(nproc)
if [ "$PROXY_CORE" -ge "$ncores" ] || [ "$LOAD_CORE" -ge "$ncores" ]; then
  die "only $ncores core(s); set PROXY_CORE/LOAD_CORE"
fi
resolve_bin

# The load client: the example of the same profile as the proxy binary.
client=${H2_CLIENT:-$(dirname "$bin")/examples/h2_mux_bench}
if [ -z "${H2_CLIENT:-}" ] && { [ ! -x "$client" ] || [ -z "${SANDGATE_BIN:-}" ]; } && [ "${SKIP_BUILD:-0}" != 1 ]; then
  profile=$(basename "$(dirname "$bin")")
  [ "$profile" = debug ] && profile=dev
  (cd "$repo" && cargo build --locked --profile "$profile" --example h2_mux_bench >&2)
fi
[ -x "$client" ] || die "$client missing (cargo build --example h2_mux_bench, or set H2_CLIENT)"

lib_setup header-routing
domain="preview.localhost"
own_host="sandgate.localhost"
runner_key="bench-runner-key"
token="bench-token"
app_port=3000
failed=0

start_runner "$LOAD_CORE" "$runner_key"
"$bin" certs dev --domain "$domain" --dir "$tmp/certs" >"$tmp/certs.out"
ca="$tmp/certs/dev-ca.pem"

# The proxy's config: SANDBOXES non-public sandboxes sbx-0000... on the runner, HTTPS too.
config="$tmp/sandgate.toml"
{
  cat <<EOF
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[proxy]
domains = ["$domain"]
[auth]
cookie_keys = ["loadtest-cookie-key-0123456789abcdef0123"]
[log]
level = "${SANDGATE_LOG_LEVEL:-warn}"
[tls]
enabled = true
listen = "127.0.0.1:0"
unknown_sni = "default"
[[tls.certs]]
cert = "$tmp/certs/$domain.pem"
key = "$tmp/certs/$domain.key"
[[registry.runners]]
id = "bench-runner"
url = "http://$runner_addr"
api_key = "$runner_key"
EOF
  for i in $(seq 0 $((SANDBOXES - 1))); do
    printf '[[registry.sandboxes]]\nid = "sbx-%04d"\nrunner = "bench-runner"\nauth_token = "%s"\n' "$i" "$token"
  done
} >"$config"

# Prometheus sample value from the admin listener (0 when absent).
metric() {
  curl -sS --max-time 5 "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2; f = 1} END {if (!f) print 0}'
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# measure TRANSPORT MODE RUN: a fresh proxy, one client run; appends a line to $tmp/results:
# transport mode connections rps p50 p99 first_p50 first_p99 cpu_ms_per_1k rss_mib
measure() {
  local transport=$1 mode=$2 run=$3 addr tls_args=() line before after t0 t1
  start_sandgate "hr-$transport-$mode-$run" "$config" "$PROXY_CORE"
  addr=$sg_addr
  if [ "$transport" = tls ]; then
    addr=$sg_tls
    tls_args=(--tls-ca "$ca")
  fi
  # The own host in TLS mode: the certificate's bare domain (not a preview host either).
  local own=$own_host
  [ "$transport" = tls ] && own=$domain
  before=$(metric "$sg_admin" sandgate_connections_accepted_total)
  read -r t0 < <(cpu_ticks "$sg_pid" | awk '{print $1 + $2}')
  if ! line=$(taskset -c "$LOAD_CORE" "$client" --addr "$addr" --mode "$mode" \
    --sandboxes "$SANDBOXES" --app-port "$app_port" --token "$token" --domain "$domain" \
    --own-host "$own" --requests "$REQUESTS" --concurrency "$CONCURRENCY" \
    --path /bench ${tls_args[@]+"${tls_args[@]}"} 2>"$tmp/client.err"); then
    echo "$prog: $transport $mode run $run: requests failed:" >&2
    cat "$tmp/client.err" >&2
    failed=1
  fi
  read -r t1 < <(cpu_ticks "$sg_pid" | awk '{print $1 + $2}')
  after=$(metric "$sg_admin" sandgate_connections_accepted_total)
  local rss
  rss=$(rss_kib "$sg_pid")
  check_sandgate_log "hr-$transport-$mode-$run" || failed=1
  stop_pid "$sg_pid"
  line=$(grep '^RESULT' <<<"$line" || true)
  [ -n "$line" ] || die "the client printed no RESULT line: $(cat "$tmp/client.err")"
  local hz
  hz=$(getconf CLK_TCK)
  echo "$transport $mode $(awk -v a="$before" -v b="$after" 'BEGIN {print b - a}') \
$(bench_field "$line" rps) $(bench_field "$line" p50_ms) $(bench_field "$line" p99_ms) \
$(bench_field "$line" first_p50_ms) $(bench_field "$line" first_p99_ms) \
$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$REQUESTS" 'BEGIN {printf "%.1f", t * 1000 / hz / n * 1000}') \
$(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}')" >>"$tmp/results"
  echo "  $transport $mode run $run: $line" >&2
}
# (The admin listener's scrapes are not counted: only the proxy listeners count connections.)

# Alternate the shapes within each run so drifting background load hits both alike.
: >"$tmp/results"
for run in $(seq 1 "$RUNS"); do
  for transport in $TRANSPORTS; do
    for mode in per-host header; do
      measure "$transport" "$mode" "$run"
    done
  done
done

# --- h2load cross-check: one connection, one sandbox, host vs headers ----------------------
h2load_report=""
if command -v h2load >/dev/null; then
  start_sandgate hr-h2load "$config" "$PROXY_CORE"
  # h2load SHAPE: one run; prints its req/s, fails the run on a non-2xx answer.
  h2load_rps() {
    local out
    local shape=(-H ":authority: $app_port-sbx-0000.$domain")
    [ "$1" = header ] && shape=(-H ":authority: $own_host" -H "x-daytona-sandbox-id: sbx-0000" \
      -H "x-daytona-sandbox-port: $app_port")
    out=$(taskset -c "$LOAD_CORE" h2load -n "$H2LOAD_REQUESTS" -c 1 -m "$CONCURRENCY" \
      -H "x-daytona-preview-token: $token" "${shape[@]}" "http://$sg_addr/bench" 2>&1)
    grep -q "status codes: $H2LOAD_REQUESTS 2xx" <<<"$out" || {
      echo "$prog: h2load ($1) saw failures or non-2xx answers:" >&2
      grep -E '^(requests|status codes)' <<<"$out" >&2
      failed=1
    }
    # "finished in 1.23s, 16260.16 req/s, ..."
    sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out"
  }
  : >"$tmp/h2load"
  for round in $(seq 1 "$H2LOAD_ROUNDS"); do
    order="host header"
    [ $((round % 2)) = 0 ] && order="header host"
    for shape in $order; do
      echo "$shape $(h2load_rps "$shape")" >>"$tmp/h2load"
    done
  done
  check_sandgate_log hr-h2load || failed=1
  stop_pid "$sg_pid"
  h2load_median() { awk -v s="$1" '$1 == s {print $2}' "$tmp/h2load" | median; }
  by_host=$(h2load_median host)
  by_header=$(h2load_median header)
  h2load_report="h2load -n $H2LOAD_REQUESTS -c 1 -m $CONCURRENCY (h2c), one sandbox, median of \
$H2LOAD_ROUNDS: by host $by_host req/s, by headers $by_header req/s \
($(awk -v a="$by_header" -v b="$by_host" 'BEGIN {printf "%.2fx", a / b}')); each round \
$(awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}' "$tmp/h2load")"
else
  h2load_report="h2load: not installed (apt-get install nghttp2-client), cross-check skipped"
fi

# --- report --------------------------------------------------------------------------------
report="$tmp/report.md"
{
  echo "SANDBOXES=$SANDBOXES REQUESTS=$REQUESTS CONCURRENCY=$CONCURRENCY RUNS=$RUNS (medians of runs)"
  echo
  echo "| transport | routing | connections accepted | req/s | p50 ms | p99 ms | first-request p50 / p99 ms | proxy CPU ms / 1k req | proxy RSS MiB |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for transport in $TRANSPORTS; do
    for mode in per-host header; do
      col() { awk -v t="$transport" -v m="$mode" -v c="$1" '$1 == t && $2 == m {print $c}' "$tmp/results" | median; }
      echo "| $transport | $mode | $(col 3) | $(col 4) | $(col 5) | $(col 6) | $(col 7) / $(col 8) | $(col 9) | $(col 10) |"
    done
  done
  echo
  for transport in $TRANSPORTS; do
    ratio() {
      local a b
      a=$(awk -v t="$transport" -v c="$1" '$1 == t && $2 == "per-host" {print $c}' "$tmp/results" | median)
      b=$(awk -v t="$transport" -v c="$1" '$1 == t && $2 == "header" {print $c}' "$tmp/results" | median)
      awk -v a="$a" -v b="$b" 'BEGIN {if (b > 0) printf "%.2fx", a / b; else print "-"}'
    }
    echo "- $transport, per-host / header: connections $(ratio 3), req/s $(ratio 4), p50 $(ratio 5), p99 $(ratio 6), first-request p99 $(ratio 8), proxy CPU per request $(ratio 9), proxy RSS $(ratio 10)"
  done
  echo "- $h2load_report"
} >"$report"
cat "$report"
[ -n "$OUT" ] && cp "$report" "$OUT"
exit "$failed"
