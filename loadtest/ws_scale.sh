#!/usr/bin/env bash
# WebSocket scale: sandgate's memory per idle proxied WebSocket, and proof that every one still
# works. For each N in COUNTS, on a fresh proxy:
#   1. warm-up: WARMUP WebSockets opened, echoed and closed; sandgate's VmRSS = the baseline
#   2. N WebSockets opened through sandgate to preview URLs (public sandboxes on sandgate's demo
#      runner, whose /ws echoes) and held idle; VmRSS again, after SETTLE seconds
#      → KiB per connection = (RSS held - baseline) / N; sandgate_websockets_active must be N
#   3. every connection sends one message and must get it back; VmRSS again (what traffic left)
#   4. all closed; VmRSS once more (what the allocator kept)
#
#   loadtest/ws_scale.sh          full run: N = 10,000 and 50,000 (see "File descriptors")
#   loadtest/ws_scale.sh --quick  CI smoke (< 30 s): N = 200, SETTLE 1
#
# Clients: loadtest/ws_client.py (Python 3, standard library; a couple of KiB per socket), one
# process per PER_PROCESS connections, each binding its own source address 127.0.0.11, .12, ...
# Upstreams: one demo runner (and one sandbox) per PER_PROCESS connections, on 127.0.0.2, .3, ...
# so every (source, destination) pair of addresses has its own ~28k ephemeral ports, both on the
# client → sandgate side and on the sandgate → runner side.
#
# File descriptors: sandgate holds two sockets per WebSocket, and one process may open at most
# `ulimit -Hn` files (the script raises its soft limit to that). An N that does not fit in one
# process is spread over PROXIES sandgate processes sharing one port with `server.reuse_port`
# (SO_REUSEPORT: the kernel hands each a share of the connections), as an operator runs one per
# core; RSS and `sandgate_websockets_active` are summed over them. PROXIES defaults to the fewest
# processes that keep each under 85 % of the limit.
#
# Knobs (environment): COUNTS ("10000 50000"; quick "200"), PROXIES (sandgate processes; auto),
# SANDGATE_BIN (use this binary, no build), SKIP_BUILD=1, PER_PROCESS (15000 connections per client process and per runner),
# CONCURRENCY (256 handshakes / echoes in flight per client process), WARMUP (200), SETTLE (3 s;
# quick 1), FD_SLACK (200), TIME_LIMIT (1500 s; quick 60: the whole run, then everything is
# stopped), OUT (also write the markdown report to this file).
# Exit status 1 when a connection failed to open or echo, a count was off, or sandgate logged a
# WARN/ERROR line; 124 when TIME_LIMIT ran out. Memory figures are reported, never asserted.
# At small N the figure is inflated by what the allocator keeps from the CONCURRENCY handshakes
# in flight at once (tens of KiB each); compare rows of several thousand.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=ws_scale.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"

parse_args "$@" # sets quick=0|1; --help prints the header above

if [ "$quick" = 1 ]; then
  COUNTS=${COUNTS:-200}
  SETTLE=${SETTLE:-1}
  TIME_LIMIT=${TIME_LIMIT:-60}
  WARMUP=${WARMUP:-50}
else
  COUNTS=${COUNTS:-10000 50000}
  SETTLE=${SETTLE:-3}
  TIME_LIMIT=${TIME_LIMIT:-1500}
  WARMUP=${WARMUP:-200}
fi
PER_PROCESS=${PER_PROCESS:-15000}
CONCURRENCY=${CONCURRENCY:-256}
FD_SLACK=${FD_SLACK:-200}
OUT=${OUT:-}

# The whole run is bounded: past TIME_LIMIT, `timeout` sends TERM and the EXIT trap stops
# everything this script started.
if [ -z "${WS_SCALE_TIMED:-}" ]; then
  WS_SCALE_TIMED=1 exec timeout -k 20 "$TIME_LIMIT" "$repo/loadtest/ws_scale.sh" "$@"
fi

require_tools python3 curl awk
resolve_bin
lib_setup ws-scale

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fd_limit=$(ulimit -n)

domain="preview.localhost"
runner_key="ws-scale-runner-key"
app_port=3000
failed=0

# Summed VmRSS (KiB) of the given processes; fails the run when one of them is gone.
rss_kib() {
  local pid kib sum=0
  for pid in "$@"; do
    kib=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$pid/status" 2>/dev/null) || true
    [ -n "$kib" ] || die "sandgate (pid $pid) is not running"
    sum=$((sum + kib))
  done
  echo "$sum"
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
per_conn() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {printf "%.2f", (b - a) / n}'; }
# Metric M summed over the admin listeners given after it; "unreachable" when one does not
# answer.
metric() {
  local m=$1 addr page sum=0
  shift
  for addr in "$@"; do
    page=$(curl -fsS --max-time 5 "http://$addr/metrics") || {
      echo unreachable
      return 0
    }
    sum=$((sum + $(awk -v m="$m" '$1 == m {printf "%d", $2; f = 1} END {if (!f) print 0}' <<<"$page")))
  done
  echo "$sum"
}

# Waits (bounded) until every client's output file has a line starting with WORD (or the client
# exited); prints those lines. Uses the arrays `outs` and `client_pids`.
wait_lines() {
  local word=$1 limit=$2 all k
  for _ in $(seq 1 $((limit * 10))); do
    all=1
    for k in "${!outs[@]}"; do
      grep -q "^$word" "${outs[$k]}" 2>/dev/null || ! kill -0 "${client_pids[$k]}" 2>/dev/null || all=0
    done
    [ "$all" = 1 ] && break
    sleep 0.1
  done
  for k in "${!outs[@]}"; do
    grep -m1 "^$word" "${outs[$k]}" 2>/dev/null || {
      echo "$prog: no $word line from client $k:" >&2
      cat "${outs[$k]}" "${outs[$k]%.out}.err" >&2 2>/dev/null || true
      return 1
    }
  done
}

indent() { sed 's/^/  /'; }

# Sums field KEY=VALUE over "WORD k=v ..." lines on stdin.
sum_field() { tr ' ' '\n' | sed -n "s/^$1=//p" | awk '{s += $1} END {print s + 0}'; }
max_field() { tr ' ' '\n' | sed -n "s/^$1=//p" | awk '$1 > m {m = $1} END {print m + 0}'; }

report="$tmp/report.md"
{
  echo "Machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'),"
  echo "$(awk '$1 == "MemTotal:" {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, $(uname -sr); $(date -u '+%Y-%m-%d %H:%M UTC'); open files limit $fd_limit;"
  echo "sandgate binary: ${bin#"$repo"/}; $(python3 --version) client."
  echo
  echo "| N | sandgate processes / runners / client processes | RSS baseline MiB | RSS N idle MiB | **KiB per idle WS** | echoed | RSS after echo MiB | KiB per WS after echo | RSS all closed MiB | open s | echo s |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$report"

run_one() {
  local n=$1 groups r c addr procs per_proc usable
  # Each process: 2 sockets per WebSocket plus FD_SLACK, under 85 % of the limit (SO_REUSEPORT
  # spreads connections by hash, not evenly).
  usable=$((fd_limit * 85 / 100 - FD_SLACK))
  procs=${PROXIES:-$(((2 * n + usable - 1) / usable))}
  [[ "$procs" =~ ^[1-9][0-9]*$ ]] || die "PROXIES must be a positive number (got '$procs')"
  per_proc=$(((n + procs - 1) / procs))
  if [ $((2 * per_proc + FD_SLACK)) -gt "$fd_limit" ]; then
    echo "$prog: N=$n SKIPPED: $procs sandgate process(es) would need ~$((2 * per_proc + FD_SLACK)) open files each, the limit is $fd_limit; raise PROXIES" >&2
    echo "| $n | not run: $procs process(es) × ~$((2 * per_proc + FD_SLACK)) open files > \`ulimit -Hn\` $fd_limit | | | | | | | | | |" >>"$report"
    return 0
  fi
  groups=$(((n + PER_PROCESS - 1) / PER_PROCESS))
  [ "$groups" -le 80 ] || die "N=$n needs $groups address groups; raise PER_PROCESS"
  echo "== N=$n: $procs sandgate process(es), $groups runner(s), $groups client process(es)" >&2
  local dir="$tmp/n$n"
  mkdir -p "$dir"

  # --- upstreams: one demo runner and one public sandbox per group ---------------------------
  local runner_pids=() hosts=()
  local config="$dir/sandgate.toml"
  cat >"$config" <<EOF
[server]
listen = "127.0.0.1:0"
$([ "$procs" -gt 1 ] && echo "reuse_port = true")
max_connections = $((n + 1000))
max_connections_per_ip = 0
[admin]
listen = "127.0.0.1:0"
[proxy]
domains = ["$domain"]
max_requests_per_sandbox = 0
[registry]
backend = "static"
[auth]
cookie_keys = ["loadtest-cookie-key-0123456789abcdef0123"]
[log]
level = "warn"
access = false
EOF
  for r in $(seq 0 $((groups - 1))); do
    "$bin" demo --runner-only --runner-listen "127.0.0.$((2 + r)):0" --runner-key "$runner_key" \
      >"$dir/runner$r.out" 2>"$dir/runner$r.err" &
    runner_pids+=($!)
    pids+=($!)
    addr=$(wait_for_addr "$dir/runner$r.out" "demo runner listening on" "$!")
    cat >>"$config" <<EOF
[[registry.runners]]
id = "runner-$r"
url = "http://$addr"
api_key = "$runner_key"
[[registry.sandboxes]]
id = "sbx-ws-$r"
runner = "runner-$r"
public = true
state = "started"
EOF
    hosts+=(--host "$app_port-sbx-ws-$r.$domain")
  done

  # --- sandgate: PROCS processes on one port (SO_REUSEPORT) -------------------------------------
  local sgs=() admins=() sg_addr="" p listen
  for p in $(seq 0 $((procs - 1))); do
    listen=${sg_addr:-127.0.0.1:0}
    SANDGATE_SERVER__LISTEN=$listen "$bin" serve --config "$config" \
      >"$dir/sandgate$p.out" 2>"$dir/sandgate$p.err" &
    sgs+=($!)
    pids+=($!)
    addr=$(wait_for_addr "$dir/sandgate$p.out" "sandgate listening on" "$!")
    sg_addr=${sg_addr:-$addr}
    admins+=("$(wait_for_addr "$dir/sandgate$p.out" "sandgate admin on" "$!")")
  done

  # --- 1. warm-up and baseline -------------------------------------------------------------------
  if [ "$WARMUP" -gt 0 ]; then
    python3 "$repo/loadtest/ws_client.py" --proxy "$sg_addr" "${hosts[@]}" --source 127.0.0.10 \
      --count "$WARMUP" --concurrency "$CONCURRENCY" --oneshot --tag warmup \
      >"$dir/warmup.out" 2>"$dir/warmup.err" || {
      echo "$prog: warm-up failed: $(cat "$dir/warmup.out" "$dir/warmup.err")" >&2
      failed=1
    }
    sleep 1
  fi
  local rss0
  rss0=$(rss_kib "${sgs[@]}")

  # --- 2. N idle WebSockets ------------------------------------------------------------------------
  local client_pids=() outs=() share left=$n
  for c in $(seq 0 $((groups - 1))); do
    share=$(((left + groups - c - 1) / (groups - c)))
    left=$((left - share))
    python3 "$repo/loadtest/ws_client.py" --proxy "$sg_addr" "${hosts[@]}" \
      --source "127.0.0.$((11 + c))" --count "$share" --concurrency "$CONCURRENCY" \
      --deadline "$TIME_LIMIT" --tag "c$c" >"$dir/client$c.out" 2>"$dir/client$c.err" &
    client_pids+=($!)
    pids+=($!)
    outs+=("$dir/client$c.out")
  done
  local opened ok_open bad_open open_secs
  opened=$(wait_lines OPENED "$TIME_LIMIT") || die "clients did not finish opening"
  indent <<<"$opened" >&2
  ok_open=$(echo "$opened" | sum_field ok)
  bad_open=$(echo "$opened" | sum_field failed)
  open_secs=$(echo "$opened" | max_field secs)
  sleep "$SETTLE"
  local rss1 active
  rss1=$(rss_kib "${sgs[@]}")
  active=$(metric sandgate_websockets_active "${admins[@]}")
  echo "  sandgate VmRSS ${rss0} KiB → ${rss1} KiB with $ok_open open; websockets_active $active" >&2
  if [ "$bad_open" != 0 ] || [ "$ok_open" != "$n" ] || [ "$active" != "$n" ]; then
    echo "$prog: N=$n: opened $ok_open, failed $bad_open, sandgate_websockets_active $active" >&2
    failed=1
  fi

  # --- 3. every connection echoes ----------------------------------------------------------------
  for c in "${client_pids[@]}"; do kill -USR1 "$c"; done
  local echoed ok_echo bad_echo echo_secs
  echoed=$(wait_lines ECHOED "$TIME_LIMIT") || die "clients did not finish the echo round"
  indent <<<"$echoed" >&2
  ok_echo=$(echo "$echoed" | sum_field ok)
  bad_echo=$(echo "$echoed" | sum_field failed)
  echo_secs=$(echo "$echoed" | max_field secs)
  if [ "$bad_echo" != 0 ] || [ "$ok_echo" != "$n" ]; then
    echo "$prog: N=$n: $ok_echo echoed, $bad_echo failed" >&2
    failed=1
  fi
  sleep "$SETTLE"
  local rss2
  rss2=$(rss_kib "${sgs[@]}")

  # --- 4. all closed -----------------------------------------------------------------------------
  for c in "${client_pids[@]}"; do kill -TERM "$c"; done
  for c in "${client_pids[@]}"; do
    wait "$c" || {
      echo "$prog: client $c exited with $?: $(cat "${outs[@]}")" >&2
      failed=1
    }
  done
  for _ in $(seq 1 $((SETTLE * 10 + 50))); do
    [ "$(metric sandgate_websockets_active "${admins[@]}")" = 0 ] && break
    sleep 0.1
  done
  local rss3
  rss3=$(rss_kib "${sgs[@]}")
  echo "  after echo ${rss2} KiB; all closed ${rss3} KiB" >&2

  printf '| %s | %s / %s / %s | %s | %s | **%s** | %s / %s | %s | %s | %s | %s | %s |\n' \
    "$n" "$procs" "$groups" "$groups" "$(mib "$rss0")" "$(mib "$rss1")" "$(per_conn "$rss0" "$rss1" "$n")" \
    "$ok_echo" "$n" "$(mib "$rss2")" "$(per_conn "$rss0" "$rss2" "$n")" "$(mib "$rss3")" \
    "$open_secs" "$echo_secs" >>"$report"

  for p in "${!sgs[@]}"; do
    if grep -qE 'WARN|ERROR' "$dir/sandgate$p.err"; then
      echo "$prog: sandgate $p logged warnings/errors:" >&2
      grep -E 'WARN|ERROR' "$dir/sandgate$p.err" | head -n 20 >&2
      failed=1
    fi
    stop_pid "${sgs[$p]}"
  done
  for r in "${runner_pids[@]}"; do stop_pid "$r"; done
}

for n in $COUNTS; do
  run_one "$n"
done

{
  echo
  echo "KiB per WS = (VmRSS with the N WebSockets held - baseline after a $WARMUP-connection warm-up) / N,"
  echo "read ${SETTLE} s after the last one opened; \"after echo\": the same after every connection sent"
  echo "and got back one message. Runners and clients: $PER_PROCESS connections each at most, on their own"
  echo "127.0.0.x addresses."
} >>"$report"
cat "$report"
[ -n "$OUT" ] && cp "$report" "$OUT"
exit "$failed"
