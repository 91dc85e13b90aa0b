#!/usr/bin/env bash
# Where sandgate's CPU goes on the hot path (keep-alive preview GET through a non-public
# sandbox with token auth and activity on): samples sandgate with `perf record` (software
# cpu-clock event, so it works in VMs without hardware counters) while wrk drives it, and
# prints the top functions by self time and the inclusive time of the main phases.
#
#   loadtest/profile.sh            (SKIP_BUILD=1 or SANDGATE_BIN, PROFILE_SECONDS=8,
#                                   PATH_SUFFIX=/hello, OUT_DIR=keep perf.data and reports there)
# Needs perf (Debian: linux-perf) and wrk. Same pinning as bench.sh: sandgate on core 1, wrk and
# the upstream on core 0.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=profile.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"
parse_args "$@"
PROFILE_SECONDS=${PROFILE_SECONDS:-8}
PATH_SUFFIX=${PATH_SUFFIX:-/hello}
PROXY_CORE=${PROXY_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}

for tool in perf wrk taskset; do
  command -v "$tool" >/dev/null || die "$tool is required (apt-get install linux-perf wrk)"
done
resolve_bin
lib_setup profile
out=${OUT_DIR:-$tmp}
mkdir -p "$out"

# The same upstream, sandbox and sandgate config as bench.sh.
preview_names
start_runner "$LOAD_CORE" "$runner_key"
write_sandgate_preview_config "$tmp/sandgate.toml"
start_sandgate sandgate "$tmp/sandgate.toml" "$PROXY_CORE"
sandgate_pid=$sg_pid
sandgate_addr=$sg_addr

# Load for a little longer than the sampling window, so perf sees steady state only.
BENCH_HOST="$preview_host" BENCH_HEADER_NAME=X-Daytona-Preview-Token \
  BENCH_HEADER_VALUE="$token" timeout $((PROFILE_SECONDS + 30)) taskset -c "$LOAD_CORE" \
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
