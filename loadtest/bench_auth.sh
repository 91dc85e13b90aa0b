#!/usr/bin/env bash
# The added cost of authentication on the warm path, measured side by side in one run: one
# sandgate, four sandboxes, wrk against each in interleaved rounds:
#   public  `pub`, public, no credential
#   token   `tok`, private, X-Daytona-Preview-Token (static registry: SHA-256 + constant-time
#           compare on every request; no verdict cache needed)
#   jwt     `jwt`, private, organization org-1, Authorization: Bearer <HS256 JWT,
#           organization_id=org-1, exp in 1 h> (minted here with python3's stdlib)
#   apikey  `key`, private, organization org-1, Authorization: Bearer <API key of org-1>
# Bearer verdicts are cached per (sandbox, SHA-256 of the credential) for 2 min (never past the
# token's exp), so on the warm path a JWT is verified once and then costs a SHA-256 of the token
# plus a cache lookup: this measures that warm path, not signature verification.
#
#   loadtest/bench_auth.sh          full run (~2.5 min after the release build): 5 rounds x 5 s
#   loadtest/bench_auth.sh --quick  CI smoke (< 20 s): 1 round x 2 s; exits 0 with a skip
#                                   message without wrk
#
# Topology (2-core machine): sandgate alone on PROXY_CORE (static registry, activity on, log
# level warn); wrk + the upstream (sandgate's demo runner) on LOAD_CORE. Keep-alive everywhere.
# Each round runs the four modes back to back, the starting mode rotating from round to round.
#
# Knobs (environment): SKIP_BUILD=1, SANDGATE_BIN (use this binary, no build), ROUNDS (5),
# WRK_THREADS (2), WRK_CONNS (64), WRK_DURATION (5s), PROXY_CORE (1), LOAD_CORE (0), OUT (also
# write the markdown report to this file).
# Exit status 1 on a failed request (non-2xx, socket error), a failed sanity check (a credential
# not accepted, a missing one not refused with 401), or a sandgate WARN/ERROR log line;
# figures are reported, never asserted.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=bench_auth.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@" # sets quick=0|1; --help prints the header above

if [ "$quick" = 1 ]; then
  ROUNDS=${ROUNDS:-1}
  WRK_DURATION=${WRK_DURATION:-2s}
  warmup=0
else
  ROUNDS=${ROUNDS:-5}
  WRK_DURATION=${WRK_DURATION:-5s}
  warmup=1
fi
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
OUT=${OUT:-}

# --- prerequisites -------------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
  if [ "$quick" = 1 ]; then
    echo "$prog --quick: SKIPPED, not installed: wrk (apt-get install wrk)"
    exit 0
  fi
  die "not installed: wrk (apt-get install wrk)"
fi
require_tools taskset curl python3 awk
ncores=$(nproc)
if [ "$PROXY_CORE" -ge "$ncores" ] || [ "$LOAD_CORE" -ge "$ncores" ]; then
  die "only $ncores core(s); set PROXY_CORE/LOAD_CORE"
fi
resolve_bin
lib_setup auth

runner_key="bench-runner-key"
token="bench-preview-token"
api_key="bench-api-key-org-1"
org="org-1"
jwt_secret="bench-hs256-secret-0123456789abcdef" # >= 32 bytes
cookie_key="bench-cookie-key-0123456789abcdef-xyz"
domain="preview.localhost"
app_port=3000
failed=0

# HS256 JWT: organization_id = org-1, exp in 1 h. Python stdlib only.
jwt=$(python3 - "$jwt_secret" "$org" <<'EOF'
import base64, hashlib, hmac, json, sys, time

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

secret, org = sys.argv[1].encode(), sys.argv[2]
now = int(time.time())
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
body = b64(json.dumps({"sub": "bench-user", "organization_id": org, "iat": now,
                       "exp": now + 3600}, separators=(",", ":")).encode())
sig = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
EOF
)

start_runner "$LOAD_CORE" "$runner_key"

cat >"$tmp/sandgate.toml" <<EOF
[server]
listen = "127.0.0.1:0"
[proxy]
domains = ["$domain"]
[registry]
backend = "static"
[[registry.runners]]
id = "bench-runner"
url = "http://$runner_addr"
api_key = "$runner_key"
[[registry.sandboxes]]
id = "pub"
runner = "bench-runner"
public = true
state = "started"
[[registry.sandboxes]]
id = "tok"
runner = "bench-runner"
public = false
auth_token = "$token"
state = "started"
[[registry.sandboxes]]
id = "jwt"
runner = "bench-runner"
public = false
state = "started"
organization = "$org"
[[registry.sandboxes]]
id = "key"
runner = "bench-runner"
public = false
state = "started"
organization = "$org"
[[registry.api_keys]]
key = "$api_key"
organization = "$org"
[activity]
enabled = true
sink = "memory"
[auth]
cookie_keys = ["$cookie_key"]
[auth.jwt]
hs256_secret = "$jwt_secret"
[log]
level = "warn"
EOF
start_sandgate sandgate "$tmp/sandgate.toml" "$PROXY_CORE"

# Mode → sandbox, credential header name and value.
modes=(public token jwt apikey)
declare -A sbx_of hname_of hvalue_of label_of
sbx_of=([public]=pub [token]=tok [jwt]=jwt [apikey]=key)
hname_of=([public]="" [token]="X-Daytona-Preview-Token" [jwt]="Authorization" [apikey]="Authorization")
hvalue_of=([public]="" [token]="$token" [jwt]="Bearer $jwt" [apikey]="Bearer $api_key")
label_of=([public]="public, no credential" [token]="X-Daytona-Preview-Token"
  [jwt]="Bearer HS256 JWT (${#jwt} B)" [apikey]="Bearer API key")

preview() { # preview SANDBOX [curl args...] → HTTP status
  local id=$1
  shift
  curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $app_port-$id.$domain" "$@" \
    "http://$sg_addr/hello"
}

# Each credential opens its sandbox (this also warms the route and verdict caches). The
# refusals are checked after the timed rounds: a failed check leaves a rate-limiter bucket for
# 127.0.0.1 behind, which every later private request would then consult.
for m in "${modes[@]}"; do
  if [ -n "${hname_of[$m]}" ]; then
    code=$(preview "${sbx_of[$m]}" -H "${hname_of[$m]}: ${hvalue_of[$m]}")
  else
    code=$(preview "${sbx_of[$m]}")
  fi
  [ "$code" = 200 ] || die "$m: ${sbx_of[$m]} answered $code, expected 200"
done

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Runs wrk once for one mode; prints "rps p50_us p99_us errors_status errors_socket
# cpu_us_per_req user_us_per_req sys_us_per_req".
run_wrk() {
  local m=$1 duration=$2 before after line
  before=$(cpu_ticks "$sg_pid")
  line=$(BENCH_HOST="$app_port-${sbx_of[$m]}.$domain" BENCH_HEADER_NAME="${hname_of[$m]}" \
    BENCH_HEADER_VALUE="${hvalue_of[$m]}" timeout 60 taskset -c "$LOAD_CORE" \
    wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$duration" -s "$repo/loadtest/wrk/headers.lua" \
    "http://$sg_addr/hello" | grep '^BENCH ') || die "wrk failed for $m"
  after=$(cpu_ticks "$sg_pid")
  awk -v line="$line" -v before="$before" -v after="$after" -v tck="$(getconf CLK_TCK)" 'BEGIN {
    n = split(line, f, " "); for (i = 2; i <= n; i++) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
    split(before, b, " "); split(after, a, " ")
    u = (a[1] - b[1]) * 1e6 / tck; s = (a[2] - b[2]) * 1e6 / tck; r = v["requests"]
    printf "%.1f %d %d %d %d %.1f %.1f %.1f\n", v["rps"], v["p50_us"], v["p99_us"], v["errors_status"],
      v["errors_socket"], (r ? (u + s) / r : 0), (r ? u / r : 0), (r ? s / r : 0) }'
}

if [ "$warmup" = 1 ]; then
  for m in "${modes[@]}"; do run_wrk "$m" 1s >/dev/null; done
fi

declare -A results
for m in "${modes[@]}"; do results[$m]=""; done
loads=()
started=$(date -u '+%Y-%m-%d %H:%M UTC')
load_before=$(loadavg)
for round in $(seq 1 "$ROUNDS"); do
  for i in 0 1 2 3; do
    m=${modes[$(((round - 1 + i) % 4))]}
    row=$(run_wrk "$m" "$WRK_DURATION")
    results[$m]+="$row"$'\n'
    echo "  round $round $m: $row" >&2
  done
  loads+=("$(cut -d' ' -f1 /proc/loadavg)")
done
load_after=$(loadavg)

# The refusals (after the timed rounds, see above).
for m in token jwt apikey; do
  code=$(preview "${sbx_of[$m]}")
  [ "$code" = 401 ] || {
    echo "$prog: ${sbx_of[$m]} without a credential answered $code, expected 401" >&2
    failed=1
  }
done
# A credential of another kind does not open the token-only sandbox (no organisation).
code=$(preview tok -H "Authorization: Bearer $jwt")
case $code in 401 | 403) ;; *)
  echo "$prog: tok with a JWT answered $code, expected 401/403" >&2
  failed=1
  ;;
esac

col() { printf '%s' "${results[$1]}" | awk -v c="$2" '{print $c}' | median; }
# Paired per-round ratio of mode A to public for COLUMN: each round ran the modes back to back,
# so a round's ratio cancels most of the slow drift of a shared machine's load.
paired() { # paired MODE COLUMN → median of the per-round ratios
  paste -d' ' <(printf '%s' "${results[$1]}" | awk -v c="$2" '{print $c}') \
    <(printf '%s' "${results[public]}" | awk -v c="$2" '{print $c}') |
    awk '{printf "%.3f\n", ($2 ? $1 / $2 : 0)}' | median
}

report="$tmp/report.md"
{
  echo "Machine: nproc=$ncores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //');"
  echo "started $started; sandgate binary: ${bin#"$repo"/}; sandgate on core $PROXY_CORE, wrk + demo runner on"
  echo "core $LOAD_CORE. wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION, GET /hello (48 B), $ROUNDS round(s) of the four"
  echo "modes back to back (starting mode rotated per round), medians over rounds."
  echo "Load average (1/5/15 min) before: $load_before; 1-min after each round: ${loads[*]}; after: $load_after."
  echo
  echo "| mode | sandbox | req/s | p50 ms | p99 ms | CPU µs/req (user + sys) | req/s vs public | CPU/req vs public | added CPU µs/req | paired req/s ratio | paired CPU ratio | req/s of each round |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
} >"$report"
base_rps=$(col public 1)
base_cpu=$(col public 6)
for m in "${modes[@]}"; do
  rows=$(printf '%s' "${results[$m]}")
  errs=$(echo "$rows" | awk '{s += $4 + $5} END {print s + 0}')
  [ "$errs" = 0 ] || {
    echo "$prog: $m had $errs failed requests" >&2
    failed=1
  }
  rps=$(col "$m" 1)
  cpu=$(col "$m" 6)
  if [ "$m" = public ]; then
    pr="-" pc="-"
  else
    pr=$(paired "$m" 1) pc=$(paired "$m" 6)
  fi
  printf '| %s | `%s` | %.0f | %.2f | %.2f | %s (%s + %s) | %.3f | %.3f | %+.1f | %s | %s | %s |\n' \
    "${label_of[$m]}" "${sbx_of[$m]}" "$rps" \
    "$(col "$m" 2 | awk '{print $1 / 1000}')" "$(col "$m" 3 | awk '{print $1 / 1000}')" \
    "$cpu" "$(col "$m" 7)" "$(col "$m" 8)" \
    "$(awk -v a="$rps" -v b="$base_rps" 'BEGIN {print (b ? a / b : 0)}')" \
    "$(awk -v a="$cpu" -v b="$base_cpu" 'BEGIN {print (b ? a / b : 0)}')" \
    "$(awk -v a="$cpu" -v b="$base_cpu" 'BEGIN {print a - b}')" "$pr" "$pc" \
    "$(echo "$rows" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}')" >>"$report"
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
