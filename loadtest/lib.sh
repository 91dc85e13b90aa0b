# Helpers shared by the load scripts (bench.sh, bench_backends.sh). Sourced, not run.
#
# The caller sets `prog` (its name, for messages) and `repo` (the repository root) first, and
# may define `cleanup_hook` (run by the EXIT trap after the background processes have stopped,
# before the temporary directory is removed).

# Prints a message on stderr and exits 1.
die() {
  echo "$prog: $*" >&2
  exit 1
}

# Creates the temporary directory `$tmp`, the array `pids` of background processes to stop,
# and the EXIT trap that stops them (TERM, then waits) and removes `$tmp`.
lib_setup() {
  tmp=$(mktemp -d -t "sandgate-$1.XXXXXX")
  # nginx workers run as another user when started by root: let them read the config dir.
  chmod 755 "$tmp"
  pids=()
  trap lib_cleanup EXIT
  trap 'exit 130' INT TERM
}

lib_cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if declare -F cleanup_hook >/dev/null; then
    cleanup_hook || true
  fi
  rm -rf "$tmp"
}

# Stops one background process started by the script (and forgets it).
stop_pid() {
  local pid=$1 keep=() p
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${pids[@]}"; do
    [ "$p" = "$pid" ] || keep+=("$p")
  done
  pids=("${keep[@]}")
}

# The sandgate binary: $SANDGATE_BIN when set (CI smoke runs use the debug build), else
# target/release/sandgate, built first unless SKIP_BUILD=1. Sets `bin`.
resolve_bin() {
  if [ -z "${SANDGATE_BIN:-}" ] && [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "building release (fat LTO; takes a few minutes)..." >&2
    (cd "$repo" && cargo build --release --locked >&2)
  fi
  bin="${SANDGATE_BIN:-$repo/target/release/sandgate}"
  [ -x "$bin" ] || die "$bin missing (build first or unset SKIP_BUILD)"
}

# Fails unless every named tool is on PATH.
require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is required"
  done
}

# Waits until FILE has a line matching "PREFIX http://ADDR" and prints ADDR (TRIES × 50 ms,
# default 10 s).
wait_for_addr() {
  local file=$1 prefix=$2 pid=$3 tries=${4:-200} i
  for i in $(seq 1 "$tries"); do
    if grep -q "^$prefix http://" "$file" 2>/dev/null; then
      sed -n "s|^$prefix http://\([^ ]*\).*|\1|p" "$file" | head -n1
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "$prog: '$prefix' never appeared in $file" >&2
  cat "${file%.out}.err" >&2 2>/dev/null || true
  return 1
}

# A free loopback port. Picked below the kernel's ephemeral range (ip_local_port_range), so no
# outgoing connection of this run can be holding it by the time a server binds it, and checked
# by binding it (a connect probe misses ports held by sockets that do not listen).
free_port() {
  local low=10000 high port
  high=$(awk '{print $1 - 1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32767)
  while :; do
    port=$((low + RANDOM % (high - low)))
    if python3 -c 'import socket,sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' \
      "$port" 2>/dev/null; then
      echo "$port"
      return
    fi
  done
}

# Starts sandgate's demo runner (hyper, answers from memory) on CORE with API key KEY, as the
# upstream. Sets `runner_addr` and `runner_pid`.
start_runner() {
  local core=$1 key=$2
  taskset -c "$core" "$bin" demo --runner-only --runner-listen 127.0.0.1:0 \
    --runner-key "$key" >"$tmp/runner.out" 2>"$tmp/runner.err" &
  runner_pid=$!
  pids+=("$runner_pid")
  runner_addr=$(wait_for_addr "$tmp/runner.out" "demo runner listening on" "$runner_pid")
}

# Starts `sandgate serve --config CONFIG` on CORE; NAME names its log files in $tmp. Sets
# `sg_pid`, `sg_addr` and, when the config has an admin listener, `sg_admin` (else empty).
start_sandgate() {
  local name=$1 config=$2 core=$3 binary=${4:-$bin}
  taskset -c "$core" "$binary" serve --config "$config" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  sg_pid=$!
  pids+=("$sg_pid")
  sg_addr=$(wait_for_addr "$tmp/$name.out" "sandgate listening on" "$sg_pid")
  sg_admin=""
  if grep -q '^\[admin\]' "$config"; then
    sg_admin=$(wait_for_addr "$tmp/$name.out" "sandgate admin on" "$sg_pid")
  fi
}

# CPU time (clock ticks) of processes, with all their threads: "user system".
cpu_ticks() {
  local user=0 sys=0 pid u k
  for pid in "$@"; do
    # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the command name.
    read -r u k < <(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12, $13}')
    user=$((user + u))
    sys=$((sys + k))
  done
  echo "$user $sys"
}

# Median of the numbers on stdin, one per line ("-" when there are none).
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# Reads one field of wrk's "BENCH k=v k=v ..." line (from the loadtest/wrk/*.lua scripts).
bench_field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# The common arguments: --quick (CI smoke mode) sets quick=1; -h/--help prints the calling
# script's header comment (everything up to the first line that is not a comment).
parse_args() {
  quick=0
  local arg
  for arg in "$@"; do
    case "$arg" in
      --quick) quick=1 ;;
      -h | --help)
        sed -n '2,/^[^#]/p' "$0" | sed '$d'
        exit 0
        ;;
      *) die "unknown argument $arg" ;;
    esac
  done
}
