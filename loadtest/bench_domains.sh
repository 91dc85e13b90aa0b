#!/usr/bin/env bash
# Custom domains (issue #19): what routing through a verified custom domain costs next to the
# sandbox's own preview host, and how long a first handshake waits for its on-demand
# certificate. Loopback only; the whole run is bounded by TIME_LIMIT.
#   1. Side by side in one run, interleaved: wrk over plain HTTP keep-alive to the same
#      sandbox's port with Host `3000-sbx-bench.preview.localhost` (preview host) and with Host
#      `app.bench.test` (a verified custom domain, static registry); same token, same path.
#      req/s, p50, p99 and the proxy's CPU per request, medians of RUNS.
#   2. First-handshake latency with Debian's pebble (a real ACME server, TLS-ALPN-01 answered
#      by sandgate's own TLS listener, pebble-challtestsrv as DNS answering 127.0.0.1): for
#      each of DOMAINS verified domains, curl's time to the end of the TLS handshake
#      (time_appconnect) on the first connection (the on-demand order inside) and on a second
#      one (the certificate held in memory); p50 / max of each.
#
#   loadtest/bench_domains.sh          full run: RUNS=3, WRK_DURATION=10s, DOMAINS=10
#   loadtest/bench_domains.sh --quick  CI smoke (<= 60 s): RUNS=1, WRK_DURATION=3s, DOMAINS=3;
#                                      exits 0 with a SKIPPED line when wrk or pebble is missing
#
# Topology (2-core machine): sandgate on PROXY_CORE; wrk, curl, pebble and the upstream
# (sandgate's demo runner) on LOAD_CORE.
# Knobs (environment): SKIP_BUILD=1, SANDGATE_BIN (use this binary, no build), RUNS,
# WRK_DURATION, WRK_THREADS (1), WRK_CONNS (32), DOMAINS, PROXY_CORE (1), LOAD_CORE (0),
# TIME_LIMIT (600 s; quick 60), OUT (also write the markdown report to this file).
# Exit status 1 when a request was not answered 200, a handshake failed, or sandgate logged a
# WARN/ERROR line; 124 when TIME_LIMIT ran out. Figures are reported, never asserted.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=bench_domains.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@" # sets quick=0|1; --help prints the header above

if [ "$quick" = 1 ]; then
  RUNS=${RUNS:-1}
  WRK_DURATION=${WRK_DURATION:-3s}
  DOMAINS=${DOMAINS:-3}
  TIME_LIMIT=${TIME_LIMIT:-60}
else
  RUNS=${RUNS:-3}
  WRK_DURATION=${WRK_DURATION:-10s}
  DOMAINS=${DOMAINS:-10}
  TIME_LIMIT=${TIME_LIMIT:-600}
fi
WRK_THREADS=${WRK_THREADS:-1}
WRK_CONNS=${WRK_CONNS:-32}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
OUT=${OUT:-}

missing=()
for tool in wrk pebble pebble-challtestsrv; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$quick" = 1 ]; then
    echo "$prog --quick: SKIPPED, not installed: ${missing[*]} (apt-get install wrk pebble)"
    exit 0
  fi
  die "not installed: ${missing[*]} (apt-get install wrk pebble)"
fi

if [ -z "${BENCH_DOMAINS_TIMED:-}" ]; then
  # Built before the time limit starts (a release build takes minutes).
  resolve_bin
  BENCH_DOMAINS_TIMED=1 SANDGATE_BIN="$bin" exec timeout -k 20 "$TIME_LIMIT" \
    "$repo/loadtest/bench_domains.sh" "$@"
fi

require_tools taskset curl python3
ncores=$(nproc)
if [ "$PROXY_CORE" -ge "$ncores" ] || [ "$LOAD_CORE" -ge "$ncores" ]; then
  die "only $ncores core(s); set PROXY_CORE/LOAD_CORE"
fi
resolve_bin
lib_setup bench-domains
preview_names # runner_key, token, sandbox, app_port, preview_host
custom_host="app.bench.test"
failed=0

start_runner "$LOAD_CORE" "$runner_key"

# --- pebble and its DNS on free ports; they validate against sandgate's fixed listeners ------
http_port=$(free_port)
tls_port=$(free_port)
acme_port=$(free_port)
mgmt_port=$(free_port)
dns_port=$(free_port)
dns_mgmt_port=$(free_port)
"$bin" certs dev --domain localhost --dir "$tmp/pebble-https" >/dev/null
"$bin" certs dev --domain preview.localhost --dir "$tmp/preview" >/dev/null
cat >"$tmp/pebble.json" <<EOF
{"pebble": {
  "listenAddress": "127.0.0.1:$acme_port",
  "managementListenAddress": "127.0.0.1:$mgmt_port",
  "certificate": "$tmp/pebble-https/localhost.pem",
  "privateKey": "$tmp/pebble-https/localhost.key",
  "httpPort": $http_port,
  "tlsPort": $tls_port,
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false
}}
EOF
taskset -c "$LOAD_CORE" pebble-challtestsrv -dns01 "127.0.0.1:$dns_port" \
  -management "127.0.0.1:$dns_mgmt_port" -http01 "" -https01 "" -tlsalpn01 "" \
  -defaultIPv4 127.0.0.1 -defaultIPv6 "" >"$tmp/challtestsrv.log" 2>&1 &
pids+=($!)
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 taskset -c "$LOAD_CORE" pebble \
  -config "$tmp/pebble.json" -dnsserver "127.0.0.1:$dns_port" >"$tmp/pebble.log" 2>&1 &
pids+=($!)
for port in "$acme_port" "$mgmt_port" "$dns_mgmt_port"; do
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
  done
done
curl -sS --max-time 10 --cacert "$tmp/pebble-https/dev-ca.pem" \
  "https://localhost:$mgmt_port/roots/0" >"$tmp/issuing-root.pem" ||
  die "pebble's issuing root: $(cat "$tmp/pebble.log")"

# --- sandgate: the sandbox, its custom domain and DOMAINS more for the handshake part ---------
{
  cat <<EOF
[server]
listen = "127.0.0.1:$http_port"
[proxy]
domains = ["preview.localhost"]
[tls]
enabled = true
listen = "127.0.0.1:$tls_port"
unknown_sni = "refuse"
[[tls.certs]]
cert = "$tmp/preview/preview.localhost.pem"
key = "$tmp/preview/preview.localhost.key"
[domains]
enabled = true
dns_resolver = "127.0.0.1:$dns_port"
[acme]
enabled = true
directory_url = "https://localhost:$acme_port/dir"
ca_root = "$tmp/pebble-https/dev-ca.pem"
challenge = "tls-alpn-01"
dir = "$tmp/acme"
handshake_wait = "30s"
[auth]
cookie_keys = ["loadtest-cookie-key-0123456789abcdef0123"]
[log]
level = "${SANDGATE_LOG_LEVEL:-warn}"
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
[[registry.domains]]
host = "$custom_host"
sandbox = "$sandbox"
port = $app_port
state = "verified"
EOF
  for i in $(seq 1 "$DOMAINS"); do
    printf '[[registry.domains]]\nhost = "d%s.bench.test"\nsandbox = "%s"\nport = %s\nstate = "verified"\n' \
      "$i" "$sandbox" "$app_port"
  done
} >"$tmp/sandgate.toml"
start_sandgate sandgate "$tmp/sandgate.toml" "$PROXY_CORE"
sandgate_pid=$sg_pid
plain="127.0.0.1:$http_port"

for host in "$preview_host" "$custom_host"; do
  got=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $host" \
    -H "X-Daytona-Preview-Token: $token" "http://$plain/hello")
  [ "$got" = 200 ] || die "$host answered $got"
  got=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $host" "http://$plain/hello")
  [ "$got" = 401 ] || die "$host without a token answered $got, expected 401"
done

# --- 1. preview host vs custom domain --------------------------------------------------------
clk_tck=$(getconf CLK_TCK)
# run_wrk HOST DURATION: "rps p50_us p99_us errors cpu_us_per_request"
run_wrk() {
  local host=$1 duration=$2 before after line
  read -r -a before < <(cpu_ticks "$sandgate_pid")
  line=$(BENCH_HOST="$host" BENCH_HEADER_NAME="X-Daytona-Preview-Token" BENCH_HEADER_VALUE="$token" \
    timeout 120 taskset -c "$LOAD_CORE" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$duration" \
    -s "$repo/loadtest/wrk/headers.lua" "http://$plain/hello" | grep '^BENCH ')
  read -r -a after < <(cpu_ticks "$sandgate_pid")
  local requests
  requests=$(bench_field "$line" requests)
  echo "$(bench_field "$line" rps) $(bench_field "$line" p50_us) $(bench_field "$line" p99_us)" \
    "$(($(bench_field "$line" errors_status) + $(bench_field "$line" errors_socket)))" \
    "$(awk -v u=$((after[0] - before[0])) -v s=$((after[1] - before[1])) -v t="$clk_tck" -v n="$requests" \
      'BEGIN {printf "%.1f", n ? (u + s) * 1e6 / t / n : 0}')"
}

declare -A res=()
labels=(preview custom)
declare -A host_of=([preview]="$preview_host" [custom]="$custom_host")
for label in "${labels[@]}"; do run_wrk "${host_of[$label]}" 1s >/dev/null; done # warm-up
for run in $(seq 1 "$RUNS"); do
  for label in "${labels[@]}"; do
    r=$(run_wrk "${host_of[$label]}" "$WRK_DURATION")
    echo "  run $run $label: rps p50_us p99_us errors cpu_us/req = $r" >&2
    res[$label]+="$r"$'\n'
  done
done

report="$tmp/report.md"
col() { printf '%s' "${res[$1]}" | awk -v c="$2" '{print $c}' | median; }
{
  echo "Plain HTTP keep-alive, wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION, $RUNS run(s) per host interleaved, medians;"
  echo "proxy on core $PROXY_CORE, load + upstream on core $LOAD_CORE; $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "| Host | req/s | p50 ms | p99 ms | proxy CPU µs per request | req/s vs preview host | p99 vs preview host |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
} >"$report"
base_rps=$(col preview 1)
base_p99=$(col preview 3)
for label in "${labels[@]}"; do
  rps=$(col "$label" 1)
  p50=$(col "$label" 2)
  p99=$(col "$label" 3)
  cpu=$(col "$label" 5)
  errors=$(printf '%s' "${res[$label]}" | awk '{s += $4} END {print s + 0}')
  [ "$errors" = 0 ] || {
    echo "$prog: $label had $errors errors" >&2
    failed=1
  }
  awk -v h="${host_of[$label]}" -v r="$rps" -v a="$p50" -v b="$p99" -v c="$cpu" -v br="$base_rps" -v bp="$base_p99" \
    'BEGIN {printf "| `%s` | %.0f | %.2f | %.2f | %s | %.2f | %.2f |\n", h, r, a / 1000, b / 1000, c, r / br, b / bp}' >>"$report"
done

# --- 2. first handshake: on-demand order vs held certificate ----------------------------------
handshake_ms() {
  curl -sS -o /dev/null -w '%{time_appconnect} %{http_code}' --max-time 60 \
    --cacert "$tmp/issuing-root.pem" --resolve "$1:$tls_port:127.0.0.1" \
    -H "X-Daytona-Preview-Token: $token" "https://$1:$tls_port/hello"
}
first=()
again=()
for i in $(seq 1 "$DOMAINS"); do
  host="d$i.bench.test"
  for kind in first again; do
    if ! out=$(handshake_ms "$host"); then
      echo "$prog: $kind handshake for $host failed" >&2
      failed=1
      continue
    fi
    [ "${out#* }" = 200 ] || {
      echo "$prog: $host answered ${out#* }" >&2
      failed=1
    }
    ms=$(awk -v s="${out%% *}" 'BEGIN {printf "%.1f", s * 1000}')
    echo "  $host $kind handshake: $ms ms" >&2
    if [ "$kind" = first ]; then first+=("$ms"); else again+=("$ms"); fi
  done
done
orders=$(grep -c 'POST /order-plz' "$tmp/pebble.log" || true)
summary() { printf '%s\n' "$@" | awk 'NF' | sort -g | awk '{a[NR] = $1} END {if (NR == 0) {print "- | -"; exit} printf "%s | %s", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2), a[NR]}'; }
{
  echo
  echo "TLS handshake time (curl time_appconnect, TLS 1.3) for $DOMAINS verified custom domains, pebble on loopback (PEBBLE_VA_NOSLEEP=1, TLS-ALPN-01); pebble saw $orders order(s):"
  echo
  echo "| handshake | p50 ms | max ms |"
  echo "|---|---:|---:|"
  echo "| first (on-demand order: account, order, TLS-ALPN-01 validation, finalize, download) | $(summary "${first[@]}") |"
  echo "| second (certificate held in memory) | $(summary "${again[@]}") |"
} >>"$report"
[ "$orders" = "$DOMAINS" ] || {
  echo "$prog: pebble saw $orders orders for $DOMAINS domains" >&2
  failed=1
}

check_sandgate_log sandgate || failed=1
cat "$report"
[ -n "$OUT" ] && cp "$report" "$OUT"
exit "$failed"
