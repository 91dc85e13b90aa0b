#!/usr/bin/env bash
# Where sandgate's CPU goes on the hot path (keep-alive preview GET through a non-public
# sandbox with token auth and activity on): samples sandgate with `perf record` (software
# cpu-clock event, so it works in VMs without hardware counters) while wrk drives it, and
# prints the top functions by self time and the inclusive time of the main phases.
#
#   loadtest/profile.sh            (SKIP_BUILD=1, PROFILE_SECONDS=8, PATH_SUFFIX=/hello,
#                                   OUT_DIR=keep perf.data and reports there)
# Needs perf (Debian: linux-perf) and wrk. Same pinning as bench.sh: sandgate on core 1, wrk and
# the upstream on core 0.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
PROFILE_SECONDS=${PROFILE_SECONDS:-8}
PATH_SUFFIX=${PATH_SUFFIX:-/hello}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}

for tool in perf wrk taskset; do
  command -v "$tool" >/dev/null || {
    echo "profile.sh: $tool is required (apt-get install linux-perf wrk)" >&2
    exit 1
  }
done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --locked >&2
fi
bin="$repo/target/release/sandgate"

tmp=$(mktemp -d -t sandgate-profile.XXXXXX)
out=${OUT_DIR:-$tmp}
mkdir -p "$out"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for_addr() {
  local file=$1 prefix=$2 i
  for i in $(seq 1 200); do
    if grep -q "^$prefix http://" "$file" 2>/dev/null; then
      sed -n "s|^$prefix http://\([^ ]*\).*|\1|p" "$file" | head -n1
      return 0
    fi
    sleep 0.05
  done
  echo "profile.sh: '$prefix' never appeared in $file" >&2
  return 1
}

taskset -c "$LOAD_CORE" "$bin" demo --runner-only --runner-listen 127.0.0.1:0 --runner-key prof-key \
  >"$tmp/runner.out" 2>&1 &
pids+=($!)
runner_addr=$(wait_for_addr "$tmp/runner.out" "demo runner listening on")
cat >"$tmp/sandgate.toml" <<EOF
[server]
listen = "127.0.0.1:0"
[proxy]
domains = ["preview.localhost"]
[registry]
backend = "static"
[[registry.runners]]
id = "r"
url = "http://$runner_addr"
api_key = "prof-key"
[[registry.sandboxes]]
id = "sbx-prof"
runner = "r"
public = false
auth_token = "prof-token"
[auth]
cookie_keys = ["loadtest-cookie-key-0123456789abcdef0123"]
[log]
level = "warn"
EOF
taskset -c "$PROXY_CORE" "$bin" serve --config "$tmp/sandgate.toml" >"$tmp/sandgate.out" 2>&1 &
pids+=($!)
sandgate_pid=$!
sandgate_addr=$(wait_for_addr "$tmp/sandgate.out" "sandgate listening on")

# Load for a little longer than the sampling window, so perf sees steady state only.
BENCH_HOST="3000-sbx-prof.preview.localhost" BENCH_HEADER_NAME=X-Daytona-Preview-Token \
  BENCH_HEADER_VALUE=prof-token timeout $((PROFILE_SECONDS + 30)) taskset -c "$LOAD_CORE" \
  wrk -t2 -c64 -d$((PROFILE_SECONDS + 3))s -s "$repo/loadtest/wrk/headers.lua" \
  "http://$sandgate_addr$PATH_SUFFIX" >"$out/wrk.txt" &
pids+=($!)
wrk_pid=$!
sleep 1
# DWARF unwinding: the release build has line tables but no frame pointers.
perf record -q -e cpu-clock -F 1999 --call-graph dwarf,16384 -p "$sandgate_pid" \
  -o "$out/perf.data" -- sleep "$PROFILE_SECONDS" 2>"$tmp/perf-record.err" || {
  cat "$tmp/perf-record.err" >&2
  exit 1
}
wait "$wrk_pid" || true
grep '^BENCH' "$out/wrk.txt" || true

perf report -i "$out/perf.data" --no-children --sort symbol --percent-limit 0.7 --stdio \
  -g none 2>/dev/null | grep -v '^#' | sed '/^$/d' >"$out/self.txt"
perf report -i "$out/perf.data" --children --sort symbol --percent-limit 2 --stdio -g none \
  2>/dev/null | grep -v '^#' | sed '/^$/d' >"$out/children.txt"
echo "== top functions by self time (% of sandgate's samples)"
head -n 45 "$out/self.txt"
echo
echo "== inclusive time (children) of the largest subtrees"
head -n 60 "$out/children.txt"
[ -n "${OUT_DIR:-}" ] && echo "perf.data and reports kept in $out"
exit 0
