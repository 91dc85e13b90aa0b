# Helpers shared by the load scripts (bench.sh, bench_tls.sh, bench_backends.sh, bench_auth.sh).
# Sourced, not run.
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

# Waits until FILE has a line matching "PREFIX SCHEME://ADDR" (SCHEME: http unless given) and
# prints ADDR; gives up after TRIES × 50 ms (default 200: 10 s).
wait_for_addr() {
  local file=$1 prefix=$2 pid=$3 scheme=${4:-http} tries=${5:-200} i
  for i in $(seq 1 "$tries"); do
    if grep -q "^$prefix $scheme://" "$file" 2>/dev/null; then
      sed -n "s|^$prefix $scheme://\([^ ]*\).*|\1|p" "$file" | head -n1
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "$prog: '$prefix $scheme://' never appeared in $file" >&2
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
# `sg_pid`, `sg_addr`, `sg_tls` (the HTTPS listener when the config has a [tls] section, else
# empty) and `sg_admin` (the admin listener when the config has one, else empty).
start_sandgate() {
  local name=$1 config=$2 core=$3 binary=${4:-$bin}
  taskset -c "$core" "$binary" serve --config "$config" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  sg_pid=$!
  pids+=("$sg_pid")
  sg_addr=$(wait_for_addr "$tmp/$name.out" "sandgate listening on" "$sg_pid")
  sg_tls=""
  if grep -q '^\[tls\]' "$config"; then
    sg_tls=$(wait_for_addr "$tmp/$name.out" "sandgate listening on" "$sg_pid" https)
  fi
  sg_admin=""
  if grep -q '^\[admin\]' "$config"; then
    sg_admin=$(wait_for_addr "$tmp/$name.out" "sandgate admin on" "$sg_pid")
  fi
}

# --- the side-by-side benchmarks (bench.sh, bench_tls.sh): sandgate vs nginx doing the same job
# Both route the preview host <port>-<sandbox>.preview.localhost of one non-public sandbox to
# {runner}/sandboxes/<sandbox>/toolbox/proxy/<port><uri>, check its X-Daytona-Preview-Token and
# strip it, add X-Daytona-Authorization and X-Forwarded-*, and reuse keep-alive upstream
# connections.

# Sets the names both proxies and the load generator use: `runner_key`, `token`, `sandbox`,
# `app_port`, `preview_host`.
preview_names() {
  runner_key="bench-runner-key"
  token="bench-token"
  sandbox="sbx-bench"
  app_port=3000
  preview_host="$app_port-$sandbox.preview.localhost"
}

# Writes sandgate's config to FILE: static registry with the one non-public sandbox on the runner
# at `runner_addr`, activity on. With CERT and KEY (PEM files) it also serves HTTPS on a free
# port with that pair (the default certificate for any SNI).
write_sandgate_preview_config() {
  local file=$1 cert=${2:-} key=${3:-}
  cat >"$file" <<EOF
[server]
listen = "127.0.0.1:0"
[proxy]
domains = ["preview.localhost"]
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
[activity]
enabled = true
[auth]
cookie_keys = ["loadtest-cookie-key-0123456789abcdef0123"]
[log]
level = "${SANDGATE_LOG_LEVEL:-warn}"
EOF
  if [ -n "$cert" ]; then
    cat >>"$file" <<EOF
[tls]
enabled = true
listen = "127.0.0.1:0"
unknown_sni = "default"
[[tls.certs]]
cert = "$cert"
key = "$key"
EOF
  fi
}

# Starts nginx on CORE with one worker, a keep-alive upstream pool to `runner_addr` and the same
# routing, token check and headers as sandgate. With CERT and KEY it listens with TLS 1.2 + 1.3
# (ALPN h2 and http/1.1, like sandgate) instead of plaintext, with session resumption on (a
# shared session cache and tickets; sandgate's rustls resumes from its in-memory cache). Sets
# `nginx_pid`, `nginx_port` and `nginx_workers` (the worker pids); logs in $tmp/NAME.
# Optional settings (variables, read at the call):
#   nginx_name              NAME of its directory and log files in $tmp (nginx)
#   nginx_access_log        the access_log directive's arguments (off), e.g.
#                           "$tmp/nginx-log/access.log combined buffer=64k"
#   nginx_plain=1           a plain `proxy_pass http://runner;` (clients send the upstream's path
#                           and X-Daytona-Authorization themselves): no routing, token or headers
#   nginx_worker_processes  (1; "auto": one per core)
#   nginx_worker_connections (4096)
# N, or the hard open-file limit when that is lower (raising past it needs CAP_SYS_RESOURCE).
nofile_cap() {
  local hard
  hard=$(ulimit -Hn)
  if [ "$hard" != unlimited ] && [ "$hard" -lt "$1" ]; then echo "$hard"; else echo "$1"; fi
}

start_nginx_preview() {
  local core=$1 cert=${2:-} key=${3:-} listen tls="" location
  local name=${nginx_name:-nginx} access=${nginx_access_log:-off} plain=${nginx_plain:-0}
  local nworkers=${nginx_worker_processes:-1} nconns=${nginx_worker_connections:-4096} want
  local dir=$tmp/$name
  nginx_port=$(free_port)
  listen="listen 127.0.0.1:$nginx_port reuseport;"
  if [ -n "$cert" ]; then
    listen="listen 127.0.0.1:$nginx_port ssl http2 reuseport;"
    tls="ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;"
  fi
  if [ "$plain" = 1 ]; then
    location="server_name _;
    location / {
      proxy_pass http://runner;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";"
  else
    location="server_name ~^(?<app_port>[0-9]+)-(?<sandbox>[a-z0-9-]+)\\.preview\\.localhost\$;
    location / {
      if (\$http_x_daytona_preview_token != \"$token\") { return 401; }
      proxy_pass http://runner/sandboxes/\$sandbox/toolbox/proxy/\$app_port\$request_uri;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$proxy_host;
      proxy_set_header X-Daytona-Preview-Token \"\";
      proxy_set_header X-Daytona-Authorization \"Bearer $runner_key\";
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
  fi
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes $nworkers;
$([ "$nconns" -gt 4096 ] && echo "worker_rlimit_nofile $(nofile_cap $((nconns * 2 + 64)));")
pid $dir/nginx.pid;
error_log $dir/error.log warn;
$([ "$(id -u)" = 0 ] && echo "user root;")
events { worker_connections $nconns; }
http {
  access_log $access;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream runner {
    server $runner_addr;
    keepalive 64;
  }
  server {
    $listen
    $tls
    $location
      # Buffered (nginx's default mode) but entirely in memory: with the default 8 x 4k
      # buffers a 64 KiB answer spills into a temporary file, which would handicap nginx.
      proxy_buffering on;
      proxy_buffer_size 16k;
      proxy_buffers 8 16k;
      proxy_busy_buffers_size 32k;
      proxy_max_temp_file_size 0;
    }
  }
}
EOF
  # nginx_wrap: an optional command prefix (instr.sh runs nginx under valgrind).
  taskset -c "$core" ${nginx_wrap[@]+"${nginx_wrap[@]}"} nginx -p "$dir" \
    -c "$dir/nginx.conf" -e "$dir/error.log" >"$tmp/$name.out" 2>&1 &
  nginx_pid=$!
  pids+=("$nginx_pid")
  for _ in $(seq 1 400); do
    (exec 3<>"/dev/tcp/127.0.0.1/$nginx_port") 2>/dev/null && break
    kill -0 "$nginx_pid" 2>/dev/null || {
      cat "$tmp/$name.out" "$dir/error.log" >&2 || true
      exit 1
    }
    sleep 0.05
  done
  # The port answers as soon as the master listens; the workers are forked after that.
  want=$nworkers
  [ "$want" = auto ] && want=$(nproc)
  nginx_workers=""
  for _ in $(seq 1 400); do
    nginx_workers=$(pgrep -P "$nginx_pid" | tr '\n' ' ') || true
    [ "$(wc -w <<<"$nginx_workers")" -ge "$want" ] && break
    sleep 0.05
  done
  [ -n "$nginx_workers" ] || die "nginx started no worker"
}

# Fails the run (returns 1) when nginx (NAME: its directory in $tmp, default nginx) logged a
# warning or an error: that would handicap it.
check_nginx_log() {
  local log=$tmp/${1:-nginx}/error.log
  if grep -qE '\[(warn|error|crit|alert|emerg)\]' "$log"; then
    echo "$prog: ${1:-nginx} logged warnings/errors:" >&2
    grep -E '\[(warn|error|crit|alert|emerg)\]' "$log" | head -n 5 >&2
    return 1
  fi
}

# Fails the run (returns 1) when sandgate's log NAME.err in $tmp has a warning or an error.
check_sandgate_log() {
  if grep -qE 'WARN|ERROR' "$tmp/$1.err"; then
    echo "$prog: sandgate logged warnings/errors:" >&2
    grep -E 'WARN|ERROR' "$tmp/$1.err" | head -n 20 >&2
    return 1
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
