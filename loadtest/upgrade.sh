#!/usr/bin/env bash
# Zero-downtime upgrade under load: wrk keeps a constant load on sandgate (one wrk over
# keep-alive connections, one with `Connection: close`, a new connection per request) while
# `sandgate upgrade --pid-file` hands the listeners to a new process UPGRADES times.
#
#   loadtest/upgrade.sh            full run: 5 upgrades, 2 s apart
#   loadtest/upgrade.sh --quick    CI smoke: 2 upgrades, 1 s apart; SKIPPED when wrk is missing
#
# Prints per wrk: requests, connect errors (refused), read/write/timeout errors (a request the
# draining process closed a connection under) and non-2xx answers: all expected to be 0. Each
# connection of the old process answers one more request after the hand-over (with
# `Connection: close`) before it closes, so wrk's keep-alive connections move over cleanly.
#
# Knobs (environment): SKIP_BUILD=1, SANDGATE_BIN, UPGRADES (5), GAP (2 s between upgrades),
# WRK_CONNS (32 per wrk), THREADS (server.threads, 2).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=upgrade.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@"
if ! command -v wrk >/dev/null; then
  [ "$quick" = 1 ] && { echo "SKIPPED: wrk is not installed"; exit 0; }
  die "wrk is required"
fi
if [ "$quick" = 1 ]; then
  UPGRADES=${UPGRADES:-2}
  GAP=${GAP:-1}
else
  UPGRADES=${UPGRADES:-5}
  GAP=${GAP:-2}
fi
WRK_CONNS=${WRK_CONNS:-32}
THREADS=${THREADS:-2}
duration=$((UPGRADES * GAP + 3))

resolve_bin
lib_setup upgrade
start_runner 0 upgrade-runner-key
cat >"$tmp/sandgate.toml" <<EOF
[server]
listen = "127.0.0.1:0"
threads = $THREADS
shutdown_timeout = "2s"
pid_file = "$tmp/sandgate.pid"
[proxy]
domains = ["preview.localhost"]
[[registry.runners]]
id = "runner"
url = "http://$runner_addr"
api_key = "upgrade-runner-key"
[[registry.sandboxes]]
id = "sbx"
runner = "runner"
public = true
[log]
level = "${SANDGATE_LOG_LEVEL:-info}"
EOF
"$bin" serve --config "$tmp/sandgate.toml" >"$tmp/sandgate.out" 2>"$tmp/sandgate.err" &
pids+=($!)
addr=$(wait_for_addr "$tmp/sandgate.out" "sandgate listening on" "$!")
for _ in $(seq 1 100); do [ -s "$tmp/sandgate.pid" ] && break; sleep 0.05; done
first=$(cat "$tmp/sandgate.pid")
host="3000-sbx.preview.localhost"

wrk -t1 -c"$WRK_CONNS" -d"${duration}s" -H "Host: $host" "http://$addr/hello" \
  >"$tmp/wrk-keepalive.txt" 2>&1 &
keepalive=$!
wrk -t1 -c"$WRK_CONNS" -d"${duration}s" -H "Host: $host" -H "Connection: close" \
  "http://$addr/hello" >"$tmp/wrk-close.txt" 2>&1 &
close=$!
sleep 1
for i in $(seq 1 "$UPGRADES"); do
  before=$(cat "$tmp/sandgate.pid")
  started=$(date +%s%N)
  "$bin" upgrade --pid-file "$tmp/sandgate.pid" >"$tmp/upgrade-$i.txt" 2>&1 ||
    { cat "$tmp/upgrade-$i.txt" "$tmp/sandgate.err" >&2; die "upgrade $i failed"; }
  took=$((($(date +%s%N) - started) / 1000000))
  echo "upgrade $i: pid $before -> $(cat "$tmp/sandgate.pid") in ${took} ms"
  sleep "$GAP"
done
wait "$keepalive" "$close"
last=$(cat "$tmp/sandgate.pid")
pids+=("$last")

# wrk's summary: requests, socket errors (connect, read, write, timeout), non-2xx. Counts a
# run with any of them in `bad`.
bad=0
report() {
  local name=$1 file=$2 requests errors non2xx
  requests=$(awk '/requests in/ {print $1}' "$file")
  errors=$(grep -o 'connect [0-9]*, read [0-9]*, write [0-9]*, timeout [0-9]*' "$file" ||
    echo "connect 0, read 0, write 0, timeout 0")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$file")
  echo "$name: requests $requests; socket errors: $errors; non-2xx ${non2xx:-0}"
  if [ "${non2xx:-0}" != 0 ] || echo "$errors" | grep -q '[1-9]'; then
    bad=$((bad + 1))
  fi
}
echo
echo "$("$bin" --version | head -n1); $UPGRADES upgrades under load, server.threads $THREADS"
report "keep-alive ($WRK_CONNS conns)" "$tmp/wrk-keepalive.txt"
report "new connection per request ($WRK_CONNS conns)" "$tmp/wrk-close.txt"
echo "first pid $first, last pid $last; errors logged by the processes:"
grep -E 'ERROR|upgrade failed' "$tmp/sandgate.err" || echo "  none"
[ "$bad" = 0 ] || die "requests failed or were refused during the upgrades"
