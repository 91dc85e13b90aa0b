# The pieces soak.sh and chaos.sh start (sourced after lib.sh and lib_setup): Redis, the demo
# runner on a fixed port (so it can be restarted where the proxies expect it), an nginx stub
# runner that reads request bodies (the 64 KiB POSTs: the demo runner answers without reading
# them and closes), the sandboxes in Redis, and sandgate's config. Names as in lib.sh:
# runner_key, token (the preview token of every sandbox, checked on each request).

runner_key="bench-runner-key"
token="bench-token"
token_sha=$(printf '%s' "$token" | sha256sum | awk '{print $1}')
domain="preview.localhost"
key_prefix="sandgate:"
activity_key="sandbox:activity"

# Waits for a proxy's /ready (its registry backend answers).
wait_ready() {
  local admin=$1 i
  for i in $(seq 1 200); do
    [ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "http://$admin/ready" 2>/dev/null)" = 200 ] && return 0
    sleep 0.05
  done
  die "proxy at $admin never became ready"
}

# Waits until something accepts on 127.0.0.1:PORT (TRIES × 50 ms, default 200).
wait_port() {
  local port=$1 tries=${2:-200} i
  for i in $(seq 1 "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

rcli() { redis-cli -p "$redis_port" "$@"; }

# fleet_redis DIR DURABLE: starts redis-server on `redis_port` (picked on the first call, kept
# on restarts) with its files in DIR. DURABLE=yes: append-only file fsynced on every write, so
# a killed and restarted Redis has every write it acknowledged (what it lost is then sandgate's
# loss, not Redis's). Sets `redis_pid`.
fleet_redis() {
  local dir=$1 durable=$2 persist=(--appendonly no)
  mkdir -p "$dir"
  redis_port=${redis_port:-$(free_port)}
  [ "$durable" = yes ] && persist=(--appendonly yes --appendfsync always)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" "${persist[@]}" --dir "$dir" \
    --logfile "$dir/redis.log" >/dev/null 2>&1 &
  redis_pid=$!
  pids+=("$redis_pid")
  local i
  for i in $(seq 1 200); do
    [ "$(rcli ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  die "redis-server did not start: $(tail -n 5 "$dir/redis.log")"
}

# fleet_runner: the demo runner on `runner_port` (picked on the first call, kept on restarts).
# Sets `runner_pid` and `runner_addr`.
fleet_runner() {
  runner_port=${runner_port:-$(free_port)}
  runner_addr="127.0.0.1:$runner_port"
  "$bin" demo --runner-only --runner-listen "$runner_addr" --runner-key "$runner_key" \
    >>"$tmp/runner.out" 2>>"$tmp/runner.err" &
  runner_pid=$!
  pids+=("$runner_pid")
  wait_port "$runner_port" || die "the demo runner did not start: $(tail -n 5 "$tmp/runner.err")"
}

# fleet_body_sink: an nginx stub runner that reads and discards request bodies. Sets `sink_addr`.
fleet_body_sink() {
  local port dir=$tmp/nginx
  port=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
$([ "$(id -u)" = 0 ] && echo "user root;")
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  client_max_body_size 1m;
  client_body_buffer_size 128k;
  server {
    listen 127.0.0.1:$port;
    location / { return 200 "received\n"; }
  }
}
NGINX
  nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$tmp/nginx.out" 2>&1 &
  pids+=($!)
  wait_port "$port" || die "the nginx stub runner did not start: $(cat "$dir/error.log")"
  sink_addr="127.0.0.1:$port"
}

# fleet_load_sandboxes N [PREFIX]: runners `bench-runner` (the demo runner) and `sink-runner`
# (the nginx stub), sandboxes PREFIX0 .. PREFIX(N-1) on the demo runner and `sbx-sink` on the
# stub, all non-public with the preview token, in one `redis-cli --pipe`.
fleet_load_sandboxes() {
  local n=$1 pfx=${2:-sbx-}
  awk -v n="$n" -v p="$key_prefix" -v runner_url="http://$runner_addr" -v sink_url="http://$sink_addr" \
    -v key="$runner_key" -v sha="$token_sha" -v pfx="$pfx" '
    function cmd(argc, a,    i, s) {
      s = "*" argc "\r\n"
      for (i = 1; i <= argc; i++) s = s "$" length(a[i]) "\r\n" a[i] "\r\n"
      printf "%s", s
    }
    function sbx(id, runner,    a) {
      split("HSET|" p "sandbox:" id "|runner|" runner "|public|false|state|started|auth_token_sha256|" sha, a, "|")
      cmd(10, a)
    }
    BEGIN {
      split("HSET|" p "runner:bench-runner|url|" runner_url "|api_key|" key, a, "|"); cmd(6, a)
      split("HSET|" p "runner:sink-runner|url|" sink_url "|api_key|unused", a, "|"); cmd(6, a)
      sbx("sbx-sink", "sink-runner")
      for (i = 0; i < n; i++) sbx(pfx i, "bench-runner")
    }' >"$tmp/load.resp"
  rcli --pipe <"$tmp/load.resp" >"$tmp/load.log" 2>&1 || die "redis-cli --pipe failed: $(cat "$tmp/load.log")"
  grep -q 'errors: 0' "$tmp/load.log" || die "redis-cli --pipe reported errors: $(cat "$tmp/load.log")"
}

# fleet_sandgate_config FILE BACKEND CACHE_TTL [LISTEN] [EXTRA]: redis (or daytona) backend,
# activity marks to the redis sink (daytona: to the control plane), admin listener, SG_THREADS
# serving threads (0: one per core), log level warn. LISTEN (127.0.0.1:0) is the proxy's
# address; EXTRA is appended, REDIS_EXTRA (e.g. cluster_nodes) goes into [redis].
fleet_sandgate_config() {
  local file=$1 backend=$2 ttl=$3 listen=${4:-127.0.0.1:0} extra=${5:-} sink=redis
  [ "$backend" = daytona ] && sink=daytona
  cat >"$file" <<EOF
[server]
listen = "$listen"
threads = ${SG_THREADS:-0}
[admin]
listen = "127.0.0.1:0"
[proxy]
domains = ["$domain"]
[registry]
backend = "$backend"
[registry.cache]
ttl = "$ttl"
[redis]
url = "redis://127.0.0.1:${redis_port:-6379}"
key_prefix = "$key_prefix"
timeout = "${REDIS_TIMEOUT:-1s}"
${REDIS_EXTRA:-}
[activity]
enabled = true
sink = "$sink"
redis_key = "$activity_key"
throttle = "${ACTIVITY_THROTTLE:-10s}"
[auth]
cookie_keys = ["loadtest-cookie-key-0123456789abcdef0123"]
[log]
level = "warn"
$extra
EOF
}
