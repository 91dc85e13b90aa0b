#!/usr/bin/env bash
# HTTPS side-by-side benchmark: nginx vs sandgate serving the same certificate, in one run.
#
#   loadtest/bench_tls.sh            full run (3 interleaved runs of 10 s per target and mode)
#   loadtest/bench_tls.sh --quick    CI smoke: 1 run of 2 s each, TLS 1.3 only; exits 0 with a
#                                    SKIPPED line when wrk, nginx or openssl is not installed
#
# One certificate for both, made per run by `sandgate certs dev --domain preview.localhost`
# (ECDSA P-256 leaf for preview.localhost and *.preview.localhost, signed by a fresh local CA).
# Both proxies serve it as their default certificate with TLS 1.2 + 1.3 and ALPN h2/http/1.1,
# proxy to the same plaintext upstream (sandgate's demo runner) and do the same routing, token
# check and headers as bench.sh (the configs are in lib.sh). Topology as bench.sh: the proxy
# alone on PROXY_CORE, wrk / openssl and the upstream on LOAD_CORE. wrk connects to
# https://localhost:PORT with the preview Host header, so its SNI is "localhost" (the preview
# host does not resolve here, and an IP address as SNI makes rustls warn on every handshake);
# s_time sends no SNI; both proxies answer either with the certificate as their default.
#
# The OpenSSL 3.0 clients (wrk, s_time) spend more CPU per handshake than either proxy, so with
# new connections the load core, not the proxy, is the limit: read "proxy CPU per op" and "one
# core could do" (1e6 / CPU µs), not the measured rate; "proxy core busy" shows how loaded the
# proxy was.
#
# Modes (one table row per mode and proxy):
#   keep-alive        wrk over keep-alive HTTPS connections: TLS record cost on top of proxying
#                     (/hello and /bytes/65536).
#   conn/req          wrk -H 'Connection: close': a new TLS connection for every request. wrk
#                     keeps the session across its reconnects (SSL_clear), so these are RESUMED
#                     handshakes (TLS 1.3 PSK + X25519, no certificate) + one proxied request.
#                     Resumption is on for both: nginx with a shared session cache and tickets,
#                     sandgate with rustls's default in-memory cache (256 sessions, 2 TLS 1.3
#                     tickets per handshake; enough for WRK_CONNS up to ~100).
#   full handshake    openssl s_time -new from HS_CLIENTS processes in parallel: full handshakes
#                     (X25519 + an ECDSA P-256 signature), then close; no request, no resumption.
#   TLS 1.2 lines     (TLS12=1, full mode only) keep-alive /hello and full handshakes again with
#                     TLS 1.2 (wrk is capped at TLS 1.2 through an OPENSSL_CONF MaxProtocol).
# Before measuring, the script checks both proxies answer 200 with the same body over verified
# HTTPS (curl --cacert with the real SNI), serve the same certificate, and prints what openssl
# s_client negotiates with each and whether a reconnect resumes.
#
# Knobs (environment): SKIP_BUILD=1, RUNS (3), WRK_THREADS (2), WRK_CONNS (64), WRK_DURATION
# (10s), SIZES ("small 65536"), HS_CLIENTS (8 openssl s_time processes), TLS12 (1; 0 in
# --quick), PROXY_CORE (1), LOAD_CORE (0), OUT (also write the markdown report to this file).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=bench_tls.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@" # sets quick=0|1; --help prints the header above

if [ "$quick" = 1 ]; then
  RUNS=${RUNS:-1}
  WRK_DURATION=${WRK_DURATION:-2s}
  SIZES=${SIZES:-small}
  TLS12=${TLS12:-0}
  warmup=0
else
  RUNS=${RUNS:-3}
  WRK_DURATION=${WRK_DURATION:-10s}
  SIZES=${SIZES:-small 65536}
  TLS12=${TLS12:-1}
  warmup=1
fi
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
HS_CLIENTS=${HS_CLIENTS:-8}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
OUT=${OUT:-}

# --- prerequisites -------------------------------------------------------------------------
missing=()
for tool in wrk nginx openssl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$quick" = 1 ]; then
    echo "bench_tls.sh --quick: SKIPPED, not installed: ${missing[*]} (apt-get install nginx wrk openssl)"
    exit 0
  fi
  die "not installed: ${missing[*]} (apt-get install nginx wrk openssl)"
fi
require_tools taskset curl
ncores=$(nproc)
if [ "$PROXY_CORE" -ge "$ncores" ] || [ "$LOAD_CORE" -ge "$ncores" ]; then
  die "only $ncores core(s); set PROXY_CORE/LOAD_CORE"
fi
secs=${WRK_DURATION%s}
[[ "$secs" =~ ^[0-9]+$ ]] || die "WRK_DURATION must be whole seconds (e.g. 10s)"

resolve_bin # SANDGATE_BIN, or the release build

# --- certificate, upstream, proxies --------------------------------------------------------
lib_setup bench-tls
preview_names # runner_key, token, sandbox, app_port, preview_host

"$bin" certs dev --domain preview.localhost --dir "$tmp/certs" >"$tmp/certs.out"
ca="$tmp/certs/dev-ca.pem"
cert="$tmp/certs/preview.localhost.pem"
key="$tmp/certs/preview.localhost.key"
chmod 644 "$key" # nginx reads it as its configured user

start_runner "$LOAD_CORE" "$runner_key"

write_sandgate_preview_config "$tmp/sandgate.toml" "$cert" "$key"
start_sandgate sandgate "$tmp/sandgate.toml" "$PROXY_CORE"
sandgate_pid=$sg_pid
sandgate_tls=$sg_tls

start_nginx_preview "$PROXY_CORE" "$cert" "$key"

# Caps OpenSSL clients (wrk) at TLS 1.2 when named by OPENSSL_CONF.
cat >"$tmp/tls12.cnf" <<'EOF'
openssl_conf = init
[init]
ssl_conf = ssl
[ssl]
system_default = tls12
[tls12]
MaxProtocol = TLSv1.2
EOF

targets=(nginx sandgate)
declare -A addr cpu_pids
addr[nginx]="127.0.0.1:$nginx_port"
addr[sandgate]="$sandgate_tls"
cpu_pids[nginx]="$nginx_pid $nginx_workers"
cpu_pids[sandgate]="$sandgate_pid"
clk_tck=$(getconf CLK_TCK)

path_for() {
  case "$1" in
    small) echo "/hello" ;;
    *) echo "/bytes/$1" ;;
  esac
}

# --- checks: same answers, same certificate; what gets negotiated -------------------------
curl_target() {
  local t=$1 path=$2
  shift 2
  curl -sS -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 --cacert "$ca" \
    --resolve "$preview_host:${addr[$t]##*:}:127.0.0.1" "$@" \
    "https://$preview_host:${addr[$t]##*:}$path"
}
for size in $SIZES; do
  path=$(path_for "$size")
  expect=""
  for t in "${targets[@]}"; do
    got=$(curl_target "$t" "$path" -H "X-Daytona-Preview-Token: $token")
    [ "${got%% *}" = 200 ] || die "$t https $path answered $got"
    [ -z "$expect" ] && expect=${got#* }
    [ "${got#* }" = "$expect" ] || die "$t https $path body size ${got#* } != $expect"
  done
done
for t in "${targets[@]}"; do
  got=$(curl_target "$t" /hello)
  [ "${got%% *}" = 401 ] || die "$t without a token answered ${got%% *}, expected 401"
done

request="GET /hello HTTP/1.1\r\nHost: $preview_host\r\nX-Daytona-Preview-Token: $token\r\nConnection: close\r\n\r\n"
# s_client against target T with extra arguments; sends one request, reads to the end.
s_client() {
  local t=$1
  shift
  # shellcheck disable=SC2059
  printf "$request" | timeout 10 openssl s_client -connect "${addr[$t]}" \
    -servername "$preview_host" -CAfile "$ca" -ign_eof "$@" 2>&1
}
negotiated="$tmp/negotiated.md"
{
  echo "| target | protocol | cipher suite | key exchange | signature | ALPN offered h2,http/1.1 | verified | certificate SHA-256 | reconnect resumed |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >"$negotiated"
fingerprints=()
for t in "${targets[@]}"; do
  out=$(s_client "$t" -brief </dev/null)
  field() { sed -n "s/^$1: *//p" <<<"$out" | head -n1; }
  fp=$(s_client "$t" -showcerts </dev/null | openssl x509 -noout -fingerprint -sha256 | sed 's/.*=//')
  fingerprints+=("$fp")
  alpn=$(s_client "$t" -alpn h2,http/1.1 -sess_out "$tmp/session-$t.pem" |
    sed -n 's/^ALPN protocol: *//p' | head -n1)
  if s_client "$t" -sess_in "$tmp/session-$t.pem" | grep -q '^Reused,'; then resumed=yes; else resumed=no; fi
  printf '| %s | %s | %s | %s | %s (%s) | %s | %s | %s… | %s |\n' "$t" "$(field 'Protocol version')" \
    "$(field Ciphersuite)" "$(field 'Server Temp Key')" "$(field 'Signature type')" \
    "$(field 'Hash used')" "${alpn:-none}" "$(field Verification)" "${fp:0:23}" \
    "$resumed" >>"$negotiated"
done
[ "${fingerprints[0]}" = "${fingerprints[1]}" ] || die "the proxies serve different certificates"
echo "negotiated (openssl s_client, SNI $preview_host):" >&2
cat "$negotiated" >&2

# --- load generators -----------------------------------------------------------------------
# Both print "rate p50_us p99_us errors cpu_us_per_op user_us sys_us busy_percent" (p50/p99
# "-" for s_time); CPU is the proxy's (all its threads / processes), busy = CPU / wall time.
cpu_line() {
  local before=$1 after=$2 wall_ns=$3 ops=$4
  awk -v before="$before" -v after="$after" -v tck="$clk_tck" -v n="$ops" -v wall="$wall_ns" 'BEGIN {
    split(before, b, " "); split(after, a, " ")
    u = (a[1] - b[1]) / tck; s = (a[2] - b[2]) / tck
    if (n == 0) { print "- - - -"; exit }
    printf "%.1f %.1f %.1f %.0f\n", (u + s) * 1e6 / n, u * 1e6 / n, s * 1e6 / n, (u + s) * 1e11 / wall
  }'
}

# run_wrk TARGET PATH DURATION close|keep 13|12
run_wrk() {
  local t=$1 path=$2 duration=$3 conn=$4 version=$5 before after t0 t1 line extra=()
  [ "$conn" = close ] && extra+=(-H "Connection: close")
  local env=(BENCH_HOST="$preview_host" BENCH_HEADER_NAME="X-Daytona-Preview-Token" BENCH_HEADER_VALUE="$token")
  [ "$version" = 12 ] && env+=(OPENSSL_CONF="$tmp/tls12.cnf")
  # shellcheck disable=SC2086
  before=$(cpu_ticks ${cpu_pids[$t]})
  t0=$(date +%s%N)
  line=$(env "${env[@]}" timeout 120 taskset -c "$LOAD_CORE" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" \
    -d"$duration" "${extra[@]}" -s "$repo/loadtest/wrk/headers.lua" "https://localhost:${addr[$t]##*:}$path" |
    grep '^BENCH ')
  t1=$(date +%s%N)
  # shellcheck disable=SC2086
  after=$(cpu_ticks ${cpu_pids[$t]})
  echo "$(bench_field "$line" rps) $(bench_field "$line" p50_us) $(bench_field "$line" p99_us)" \
    "$(($(bench_field "$line" errors_status) + $(bench_field "$line" errors_socket)))" \
    "$(cpu_line "$before" "$after" $((t1 - t0)) "$(bench_field "$line" requests)")"
}

# run_stime TARGET SECONDS 13|12: HS_CLIENTS parallel `openssl s_time -new`.
run_stime() {
  local t=$1 seconds=$2 version=$3 before after t0 t1 i n=0 errors=0 c spids=()
  # shellcheck disable=SC2086
  before=$(cpu_ticks ${cpu_pids[$t]})
  t0=$(date +%s%N)
  for i in $(seq 1 "$HS_CLIENTS"); do
    timeout $((seconds + 30)) taskset -c "$LOAD_CORE" openssl s_time -connect "${addr[$t]}" -new \
      -time "$seconds" "-tls1_$((version % 10))" >"$tmp/stime-$i.out" 2>&1 &
    spids+=($!)
    pids+=($!)
  done
  for i in "${!spids[@]}"; do
    wait "${spids[$i]}" || errors=$((errors + 1))
    stop_pid "${spids[$i]}"
    c=$(sed -n 's/^\([0-9]*\) connections in [0-9]* real seconds.*/\1/p' "$tmp/stime-$((i + 1)).out")
    if [ -z "$c" ]; then
      errors=$((errors + 1))
      head -n 5 "$tmp/stime-$((i + 1)).out" >&2
    else
      n=$((n + c))
    fi
  done
  t1=$(date +%s%N)
  # shellcheck disable=SC2086
  after=$(cpu_ticks ${cpu_pids[$t]})
  echo "$(awk -v n="$n" -v w=$((t1 - t0)) 'BEGIN {printf "%.1f", n * 1e9 / w}') - - $errors" \
    "$(cpu_line "$before" "$after" $((t1 - t0)) "$n")"
}

# measure LABEL KIND ARGS...: warm-up, RUNS interleaved runs per proxy, one table row each.
report="$tmp/report.md"
failed=0
measure() {
  local label=$1 kind=$2 run t r rows rate p50 p99 cpu usr sys busy errs each ratio cpu_ratio capacity
  shift 2
  local -A res=()
  if [ "$warmup" = 1 ]; then
    for t in "${targets[@]}"; do
      if [ "$kind" = wrk ]; then run_wrk "$t" "$1" 1s "$2" "$3" >/dev/null; else run_stime "$t" 1 "$1" >/dev/null; fi
    done
  fi
  for run in $(seq 1 "$RUNS"); do
    for t in "${targets[@]}"; do
      if [ "$kind" = wrk ]; then
        r=$(run_wrk "$t" "$1" "$WRK_DURATION" "$2" "$3")
      else
        r=$(run_stime "$t" "$secs" "$1")
      fi
      echo "  $label run $run $t: rate p50_us p99_us errors cpu/usr/sys_us busy% = $r" >&2
      res[$t]+="$r"$'\n'
    done
  done
  local nginx_rate nginx_cpu
  nginx_rate=$(printf '%s' "${res[nginx]}" | awk '{print $1}' | median)
  nginx_cpu=$(printf '%s' "${res[nginx]}" | awk '{print $5}' | median)
  for t in "${targets[@]}"; do
    rows=$(printf '%s' "${res[$t]}")
    rate=$(echo "$rows" | awk '{print $1}' | median)
    p50=$(echo "$rows" | awk '$2 != "-" {printf "%.2f\n", $2 / 1000}' | median)
    p99=$(echo "$rows" | awk '$3 != "-" {printf "%.2f\n", $3 / 1000}' | median)
    cpu=$(echo "$rows" | awk '{print $5}' | median)
    usr=$(echo "$rows" | awk '{print $6}' | median)
    sys=$(echo "$rows" | awk '{print $7}' | median)
    busy=$(echo "$rows" | awk '{print $8}' | median)
    errs=$(echo "$rows" | awk '{s += $4} END {print s + 0}')
    each=$(echo "$rows" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}')
    ratio=$(awk -v a="$rate" -v b="$nginx_rate" 'BEGIN {printf "%.2f", a / b}')
    cpu_ratio=$(awk -v a="$cpu" -v b="$nginx_cpu" 'BEGIN {printf "%.2f", a / b}')
    capacity=$(awk -v c="$cpu" 'BEGIN {printf "%.0f", 1e6 / c}')
    printf '| %s | %s | %.0f | %s | %s | %s (%s + %s) | %s%% | %s | %s | %s | %s |\n' "$label" "$t" \
      "$rate" "$p50" "$p99" "$cpu" "$usr" "$sys" "$busy" "$capacity" "$ratio" "$cpu_ratio" \
      "$each" >>"$report"
    if [ "$errs" != 0 ]; then
      echo "$prog: $label $t had $errs errors (non-2xx/3xx, socket, or s_time failures)" >&2
      failed=1
    fi
  done
}

{
  echo "Same certificate (ECDSA P-256, \`sandgate certs dev\`), $RUNS run(s) per proxy and mode"
  echo "interleaved, medians; wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION, openssl s_time -new × $HS_CLIENTS"
  echo "processes; proxies on core $PROXY_CORE, load + upstream on core $LOAD_CORE; $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "| mode | proxy | req/s (handshakes/s) | p50 ms | p99 ms | proxy CPU µs per req (handshake), user + sys | proxy core busy | one core could do /s | rate vs nginx | CPU vs nginx | rate of each run |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
} >"$report"

for size in $SIZES; do
  label=$([ "$size" = small ] && echo "TLS 1.3 keep-alive, small (~50 B)" || echo "TLS 1.3 keep-alive, $size B")
  measure "$label" wrk "$(path_for "$size")" keep 13
done
measure "TLS 1.3 conn/req (resumed), small" wrk /hello close 13
measure "TLS 1.3 full handshake only" stime 13
if [ "$TLS12" = 1 ]; then
  measure "TLS 1.2 keep-alive, small (~50 B)" wrk /hello keep 12
  measure "TLS 1.2 full handshake only" stime 12
fi

{
  echo
  echo "Negotiated (openssl s_client -servername $preview_host; wrk sends no ALPN, so HTTP/1.1):"
  echo
  cat "$negotiated"
} >>"$report"

check_nginx_log || failed=1
check_sandgate_log sandgate || failed=1

cat "$report"
[ -n "$OUT" ] && cp "$report" "$OUT"
exit "$failed"
