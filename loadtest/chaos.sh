#!/usr/bin/env bash
# Chaos under load: the mixed k6 scenario (loadtest/k6/mixed_rate.js) at a fixed rate through
# HAProxy (TCP mode) to two sandgate replicas that share one Redis (registry backend and activity
# sink), while the script kills (SIGKILL) and restarts in turn:
#   redis    the Redis server (durable: append-only file fsynced per write, so it comes back
#            with every write it acknowledged)
#   runner   the demo runner every sandbox but one runs on (restarted on the same port)
#   replica  sandgate replica b (restarted on the same port; HAProxy's checks take it out/in)
# then, in runs of their own (one replica, no balancer):
#   cluster-node   the Redis Cluster primary (of 3, each with a replica) holding the activity
#                  key; "back" is when its replica has been promoted; restarted after DOWN
#   control-plane  the control plane of the `daytona` backend and sink (loadtest/control_plane.py)
# Beside k6, loadtest/chaos_probe.py sends every PROBE_EVERY seconds, on new connections, a
# request for a sandbox never named before (a cache miss on every replica: answered only when
# the registry answers) and one for a "marker" sandbox (cached on every replica beforehand; its
# activity mark must reach the sink). The report (loadtest/chaos_report.py) gives per fault:
# k6 requests and failures with their status codes, failed WebSocket sessions, the probes, time
# to recovery after the component is back, and activity marks lost (markers answered 200 whose
# mark is not in the sink at the end). Figures are reported, not asserted; targets missed are
# flagged "TARGET MISSED" on stderr.
#
#   loadtest/chaos.sh          full run (~4 min after the release build)
#   loadtest/chaos.sh --quick  CI smoke (~1 min): shorter phases, lower rate; exits 0 with a
#                              skip message when k6, haproxy, nginx or redis-server is missing
#
# Knobs (environment): SKIP_BUILD=1, SANDGATE_BIN, RATE (150 iterations/s; quick 30), POOL
# (50 sandboxes under k6 load), WARM (15 s before the first fault), DOWN (5 s a component stays
# down), SETTLE (15 s after it is back), PROBE_EVERY (0.25 s), FAULTS ("redis runner replica
# cluster-node control-plane"), OUT (also write the markdown report to this file), KEEP (keep the
# k6 samples, probe lines and logs in this directory).
# Exit status 1 when a component does not work again after its restart (the final checks:
# a never-seen sandbox answered by each replica, a marker's activity mark written), or k6 or a
# proxy could not start.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
prog=chaos.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"
parse_args "$@"

if [ "$quick" = 1 ]; then
  RATE=${RATE:-30}
  WARM=${WARM:-5}
  DOWN=${DOWN:-2}
  SETTLE=${SETTLE:-6}
  POOL=${POOL:-10}
else
  RATE=${RATE:-150}
  WARM=${WARM:-15}
  DOWN=${DOWN:-5}
  SETTLE=${SETTLE:-15}
  POOL=${POOL:-50}
fi
PROBE_EVERY=${PROBE_EVERY:-0.25}
FAULTS=${FAULTS:-redis runner replica cluster-node control-plane}
OUT=${OUT:-}

missing=()
for tool in k6 redis-server redis-cli nginx haproxy python3 curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$quick" = 1 ] && {
    echo "$prog --quick: SKIPPED, not installed: ${missing[*]}"
    exit 0
  }
  die "not installed: ${missing[*]}"
fi
resolve_bin
# KEEP=DIR: keep the run's samples and logs there (the temporary directory goes at exit).
cleanup_hook() {
  [ -n "${KEEP:-}" ] || return 0
  mkdir -p "$KEEP"
  cp "$tmp"/*.csv "$tmp"/*.log "$tmp"/*.err "$tmp"/*.marks* "$KEEP"/ 2>/dev/null || true
}
lib_setup chaos
. "$repo/loadtest/fleet.sh"
export SG_THREADS=1 ACTIVITY_THROTTLE=1s REDIS_TIMEOUT=1s
cache_ttl=600s # longer than the run: every miss the probes see is a first lookup
now_ms() { date +%s%3N; }
events=$tmp/events.csv
: >"$events"
failed=0

# The markers and never-seen sandboxes the probe may name (one each per PROBE_EVERY).
probes_per_run() { awk -v s="$1" -v e="$PROBE_EVERY" 'BEGIN {printf "%d", s / e + 10}'; }

# --- the main run: HAProxy, two replicas, Redis ------------------------------------------------
main_faults=()
for f in $FAULTS; do
  case $f in
    redis | runner | replica) main_faults+=("$f") ;;
    cluster-node | control-plane) ;;
    *) die "unknown fault $f (FAULTS: redis runner replica cluster-node control-plane)" ;;
  esac
done

start_replica() { # start_replica NAME: sets addr_NAME, admin_NAME, pid_NAME
  local name=$1
  start_sandgate "$name" "$tmp/$name.toml" "0-$(($(nproc) - 1))"
  wait_ready "$sg_admin"
  printf -v "pid_$name" '%s' "$sg_pid"
  printf -v "addr_$name" '%s' "$sg_addr"
  printf -v "admin_$name" '%s' "$sg_admin"
}

# Kills PID (SIGKILL) and reaps it quietly.
kill_hard() {
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# run_k6 NAME TARGET SECONDS: k6 in the background, every sample to $tmp/NAME.k6.csv. Sets k6_pid.
run_k6() {
  K6_CSV_TIME_FORMAT=unix_milli k6 run --quiet --no-color --no-usage-report --no-thresholds \
    --out "csv=$tmp/$1.k6.csv" -e "TARGET=http://$2" -e "TOKEN=$token" -e "RATE=$RATE" \
    -e "DURATION=${3}s" -e "SANDBOX_POOL=$POOL" -e POST_SANDBOX=sbx-sink -e MAX_VUS=600 \
    "$repo/loadtest/k6/mixed_rate.js" >"$tmp/$1.k6.log" 2>&1 &
  k6_pid=$!
  pids+=("$k6_pid")
}

# run_probe NAME TARGET SECONDS MARKERS WARM...: warms the markers on each WARM address, then
# probes TARGET in the background. Sets probe_pid.
run_probe() {
  local name=$1 target=$2 secs=$3 markers=$4 warm=()
  shift 4
  for w in "$@"; do
    warm+=(--warm "$w")
    # k6's sandboxes too: each VU's connection stays on one replica, so k6 alone would leave
    # some sandbox uncached on some replica, and its first request in an outage would fail.
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: 3000-sbx-sink.$domain" \
      -H "X-Daytona-Preview-Token: $token" "http://$w/hello" || true)
    [ "$code" = 200 ] || die "warming sbx-sink on $w: $code"
  done
  python3 "$repo/loadtest/chaos_probe.py" --target "$target" --token "$token" --out /dev/null \
    --duration 0 --markers "$POOL" --mark-prefix "sbx-" "${warm[@]}" >/dev/null ||
    die "warming k6's sandboxes failed"
  python3 "$repo/loadtest/chaos_probe.py" --target "$target" --token "$token" --out /dev/null \
    --duration 0 --markers "$markers" --mark-prefix "sbx-$name-mark-" "${warm[@]}" >/dev/null ||
    die "warming the markers failed"
  python3 "$repo/loadtest/chaos_probe.py" --target "$target" --token "$token" \
    --out "$tmp/$name.probe.csv" --duration "$secs" --interval "$PROBE_EVERY" --markers "$markers" \
    --mark-prefix "sbx-$name-mark-" --miss-prefix "sbx-$name-miss-" >"$tmp/$name.probe.log" 2>&1 &
  probe_pid=$!
  pids+=("$probe_pid")
}

# A fault: kill, wait DOWN, bring back (the command given), record, wait SETTLE.
fault() { # fault NAME PID RESTART-COMMAND...
  local name=$1 pid=$2 killed back
  shift 2
  echo "$prog: $(date -u +%T) killing $name" >&2
  killed=$(now_ms)
  kill_hard "$pid"
  sleep "$DOWN"
  "$@"
  back=$(now_ms)
  echo "$name,$killed,$back" >>"$events"
  echo "$prog: $(date -u +%T) $name back after $(((back - killed)))ms" >&2
  sleep "$SETTLE"
}

restart_redis() { fleet_redis "$tmp/redis" yes; }
restart_runner() { fleet_runner; }
# Brings replica b back and notes (in the background) when HAProxy sends it traffic again.
restart_replica_b() {
  start_replica b
  local since
  since=$(now_ms)
  (
    for _ in $(seq 1 400); do
      n=$(curl -sS --max-time 2 "http://$admin_b/metrics" 2>/dev/null |
        awk '$1 ~ /^sandgate_requests_total/ {s += $2} END {print s + 0}')
      if [ "${n:-0}" -gt 0 ]; then
        echo "final,replica b answered its first request after its restart (s),$(awk -v ms=$(($(now_ms) - since)) 'BEGIN {printf "%.2f", ms / 1000}')" >>"$events"
        exit 0
      fi
      sleep 0.05
    done
  ) &
}

if [ ${#main_faults[@]} -gt 0 ]; then
  fleet_redis "$tmp/redis" yes
  fleet_runner
  fleet_body_sink
  fleet_load_sandboxes "$POOL"
  secs=$((WARM + ${#main_faults[@]} * (DOWN + SETTLE) + 5))
  markers=$(probes_per_run "$secs")
  fleet_load_sandboxes "$markers" "sbx-main-mark-"
  fleet_load_sandboxes "$markers" "sbx-main-miss-"
  for r in a b; do
    fleet_sandgate_config "$tmp/$r.toml" redis "$cache_ttl" "127.0.0.1:$(free_port)"
    start_replica "$r"
  done
  hp_port=$(free_port)
  cat >"$tmp/haproxy.cfg" <<EOF
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch
frontend sandgate
  bind 127.0.0.1:$hp_port
  default_backend replicas
backend replicas
  balance roundrobin
  server a $addr_a check inter 200ms fall 2 rise 2
  server b $addr_b check inter 200ms fall 2 rise 2
EOF
  haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.out" 2>&1 &
  pids+=($!)
  wait_port "$hp_port" || die "haproxy did not start: $(cat "$tmp/haproxy.out")"
  lb="127.0.0.1:$hp_port"

  run_probe main "$lb" "$secs" "$markers" "$addr_a" "$addr_b"
  run_k6 main "$lb" "$secs"
  echo "run,$(now_ms),main" >>"$events"
  echo "$prog: main run: k6 $RATE it/s for ${secs}s through HAProxy to 2 replicas; faults: ${main_faults[*]}" >&2
  sleep "$WARM"
  for f in "${main_faults[@]}"; do
    case $f in
      redis) fault redis "$redis_pid" restart_redis ;;
      runner) fault runner "$runner_pid" restart_runner ;;
      replica) fault replica "$pid_b" restart_replica_b ;;
    esac
  done
  wait "$k6_pid" || true
  wait "$probe_pid" || true
  echo "end,$(now_ms),main" >>"$events"
  sleep 2 # the last activity flush
  # Nothing recovered needs a restart: a never-seen sandbox on each replica, marks written.
  for r in a b; do
    addr_var=addr_$r
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: 3000-sbx-main-miss-$((markers - 1)).$domain" \
      -H "X-Daytona-Preview-Token: $token" "http://${!addr_var}/hello" || true)
    echo "final,replica $r answers a never-seen sandbox,$code" >>"$events"
    [ "$code" = 200 ] || {
      echo "$prog: replica $r answered $code for a never-seen sandbox after the faults" >&2
      failed=1
    }
  done
  rcli zrange "$activity_key" 0 -1 withscores | paste - - -d' ' >"$tmp/main.marks"
fi

# --- the cluster run: Redis Cluster (3 primaries + 3 replicas), one replica -------------------
declare -A cluster_pid=()
start_cluster_node() { # start_cluster_node PORT (its files in $tmp/cluster/PORT, kept on restarts)
  local port=$1 dir=$tmp/cluster/$1 i
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout 1000 --save "" --appendonly yes --appendfsync always --dir "$dir" \
    --logfile "$dir/redis.log" >/dev/null 2>&1 &
  cluster_pid[$port]=$!
  pids+=($!)
  for i in $(seq 1 200); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  die "cluster node $port did not start: $(tail -n 5 "$dir/redis.log")"
}
# The port of the primary serving KEY, as node PORT sees the cluster.
primary_of() { # primary_of PORT KEY
  local slot
  slot=$(redis-cli -p "$1" cluster keyslot "$2")
  redis-cli -p "$1" cluster nodes | awk -v s="$slot" '$3 ~ /master/ && $3 !~ /fail/ {
    for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = (n > 1 ? r[2] : r[1])
      if (s >= lo && s <= hi) { split($2, a, "[:@]"); print a[2]; exit } } }'
}
cluster_ok() { redis-cli -p "$1" cluster info 2>/dev/null | tr -d '\r' | grep -q '^cluster_state:ok'; }

if [[ " $FAULTS " == *" cluster-node "* ]]; then
  [ -n "${runner_addr:-}" ] || fleet_runner
  [ -n "${sink_addr:-}" ] || fleet_body_sink
  # Each node also listens on its port + 10000 (the cluster bus): both below the ephemeral range.
  cports=()
  while [ ${#cports[@]} -lt 6 ]; do
    p=$(free_port)
    [ "$p" -lt 22000 ] && python3 -c 'import socket,sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' \
      $((p + 10000)) 2>/dev/null && [[ " ${cports[*]} " != *" $p "* ]] && cports+=("$p")
  done
  for p in "${cports[@]}"; do start_cluster_node "$p"; done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${cports[@]}") --cluster-replicas 1 \
    --cluster-yes >"$tmp/cluster-create.log" 2>&1 || die "cluster create failed: $(tail -n 5 "$tmp/cluster-create.log")"
  for _ in $(seq 1 300); do
    up=0
    for p in "${cports[@]}"; do
      cluster_ok "$p" && up=$((up + 1))
      redis-cli -p "$p" info replication | tr -d '\r' | grep -q '^master_link_status:up' && up=$((up + 1))
    done
    [ "$up" -ge 9 ] && break # 6 nodes ok + 3 replicas linked
    sleep 0.1
  done
  [ "$up" -ge 9 ] || die "the cluster did not settle"
  secs=$((WARM + DOWN + SETTLE + 5))
  markers=$(probes_per_run "$secs")
  # Keys of every slot: plain commands on redis-cli -c's stdin, which follows MOVED.
  {
    printf 'HSET %srunner:bench-runner url http://%s api_key %s\n' "$key_prefix" "$runner_addr" "$runner_key"
    printf 'HSET %srunner:sink-runner url http://%s api_key unused\n' "$key_prefix" "$sink_addr"
    printf 'HSET %ssandbox:sbx-sink runner sink-runner public false state started auth_token_sha256 %s\n' "$key_prefix" "$token_sha"
    for id in $(seq -f 'sbx-%g' 0 $((POOL - 1))) $(seq -f 'sbx-cluster-mark-%g' 0 $((markers - 1))) \
      $(seq -f 'sbx-cluster-miss-%g' 0 $((markers - 1))); do
      printf 'HSET %ssandbox:%s runner bench-runner public false state started auth_token_sha256 %s\n' "$key_prefix" "$id" "$token_sha"
    done
  } | redis-cli -c -p "${cports[0]}" >"$tmp/cluster-load.log" 2>&1
  grep -qi err "$tmp/cluster-load.log" && die "loading the cluster: $(grep -i err "$tmp/cluster-load.log" | head -n 3)"
  REDIS_EXTRA="cluster_nodes = [$(printf '"redis://127.0.0.1:%s",' "${cports[@]}" | sed 's/,$//')]" \
    fleet_sandgate_config "$tmp/k.toml" redis "$cache_ttl"
  start_replica k
  run_probe cluster "$addr_k" "$secs" "$markers" "$addr_k"
  run_k6 cluster "$addr_k" "$secs"
  echo "run,$(now_ms),cluster" >>"$events"
  echo "$prog: cluster run: k6 $RATE it/s for ${secs}s to one replica (Redis Cluster 3 + 3)" >&2
  sleep "$WARM"
  victim=$(primary_of "${cports[0]}" "$activity_key")
  survivor=${cports[0]}
  [ "$survivor" = "$victim" ] && survivor=${cports[1]}
  echo "$prog: $(date -u +%T) killing cluster-node (primary :$victim, holds $activity_key)" >&2
  killed=$(now_ms)
  kill_hard "${cluster_pid[$victim]}"
  promoted=""
  for _ in $(seq 1 300); do # a replica is promoted after cluster-node-timeout
    now=$(primary_of "$survivor" "$activity_key")
    if [ -n "$now" ] && [ "$now" != "$victim" ] && cluster_ok "$survivor"; then
      promoted=$now
      break
    fi
    sleep 0.05
  done
  back=$(now_ms)
  [ -n "$promoted" ] || echo "$prog: no replica was promoted within 15 s" >&2
  echo "cluster-node,$killed,$back" >>"$events"
  echo "$prog: $(date -u +%T) :$promoted promoted after $((back - killed))ms" >&2
  left=$((killed + DOWN * 1000 - $(now_ms)))
  [ "$left" -gt 0 ] && sleep "$(awk -v ms="$left" 'BEGIN {print ms / 1000}')"
  start_cluster_node "$victim" # rejoins as a replica of the promoted node
  sleep "$SETTLE"
  wait "$k6_pid" || true
  wait "$probe_pid" || true
  echo "end,$(now_ms),cluster" >>"$events"
  sleep 2
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: 3000-sbx-cluster-miss-$((markers - 1)).$domain" \
    -H "X-Daytona-Preview-Token: $token" "http://$addr_k/hello" || true)
  echo "final,replica k (cluster) answers a never-seen sandbox,$code" >>"$events"
  [ "$code" = 200 ] || {
    echo "$prog: replica k answered $code for a never-seen sandbox after the fault" >&2
    failed=1
  }
  redis-cli -c -p "$survivor" zrange "$activity_key" 0 -1 withscores | paste - - -d' ' >"$tmp/cluster.marks"
fi

# --- the control-plane run: daytona backend and sink, one replica ---------------------------
if [[ " $FAULTS " == *" control-plane "* ]]; then
  [ -n "${runner_addr:-}" ] || fleet_runner
  [ -n "${sink_addr:-}" ] || fleet_body_sink
  cp_port=$(free_port)
  : >"$tmp/cp.marks"
  start_control_plane() {
    python3 "$repo/loadtest/control_plane.py" --listen "127.0.0.1:$cp_port" --api-key cp-key \
      --runner "http://$runner_addr" --runner-key "$runner_key" --sink-runner "http://$sink_addr" \
      --token "$token" --marks "$tmp/cp.marks" >>"$tmp/cp.out" 2>&1 &
    cp_pid=$!
    pids+=("$cp_pid")
    wait_port "$cp_port" || die "the control plane did not start: $(cat "$tmp/cp.out")"
  }
  start_control_plane
  fleet_sandgate_config "$tmp/c.toml" daytona "$cache_ttl" "127.0.0.1:0" "[daytona]
api_url = \"http://127.0.0.1:$cp_port/api\"
api_key = \"cp-key\"
timeout = \"1s\""
  start_replica c
  secs=$((WARM + DOWN + SETTLE + 5))
  markers=$(probes_per_run "$secs")
  run_probe cp "$addr_c" "$secs" "$markers" "$addr_c"
  run_k6 cp "$addr_c" "$secs"
  echo "run,$(now_ms),cp" >>"$events"
  echo "$prog: control-plane run: k6 $RATE it/s for ${secs}s to one replica (daytona backend)" >&2
  sleep "$WARM"
  fault control-plane "$cp_pid" start_control_plane
  wait "$k6_pid" || true
  wait "$probe_pid" || true
  echo "end,$(now_ms),cp" >>"$events"
  sleep 2
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: 3000-sbx-cp-miss-$((markers - 1)).$domain" \
    -H "X-Daytona-Preview-Token: $token" "http://$addr_c/hello" || true)
  echo "final,replica c (daytona) answers a never-seen sandbox,$code" >>"$events"
  [ "$code" = 200 ] || {
    echo "$prog: replica c answered $code for a never-seen sandbox after the fault" >&2
    failed=1
  }
  cp "$tmp/cp.marks" "$tmp/cp.marks.final"
fi

# --- report --------------------------------------------------------------------------------
{
  echo "loadtest/chaos.sh$([ "$quick" = 1 ] && echo " --quick"): $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores"
  echo "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), shared with other work, load average $(cut -d' ' -f1-3 /proc/loadavg)),"
  echo "$("$bin" --version | head -n1), HAProxy $(haproxy -v | sed -n '1s/HAProxy version \([^ ]*\).*/\1/p'),"
  echo "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), k6 $(k6 version | awk '{print $2}'); k6 mixed_rate.js at $RATE it/s over $POOL"
  echo "sandboxes; components down ${DOWN}s each, ${SETTLE}s between faults; probes every ${PROBE_EVERY}s."
} >"$tmp/report.md"
python3 "$repo/loadtest/chaos_report.py" --events "$events" --dir "$tmp" --settle "$SETTLE" \
  >>"$tmp/report.md" || failed=1
cat "$tmp/report.md"
[ -n "$OUT" ] && cp "$tmp/report.md" "$OUT"
exit "$failed"
