#!/usr/bin/env bash
# SSH gateway benchmark: session setup time and scp throughput, through `sandgate ssh-gateway` vs
# straight to the same sshd, in one run (real OpenSSH client and server on loopback).
#
#   loadtest/ssh_bench.sh            20 × `ssh … true`, scp of 200 MiB up and down, each path
#   SESSIONS=5 SIZE_MIB=20 loadtest/ssh_bench.sh   smaller
#
# Knobs: SANDGATE_BIN (default target/release/sandgate, built unless SKIP_BUILD=1), SESSIONS (20),
# SIZE_MIB (200), OUT (append the markdown report to this file).
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${SESSIONS:-20}
SIZE_MIB=${SIZE_MIB:-200}
BIN=${SANDGATE_BIN:-target/release/sandgate}
if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${SANDGATE_BIN:-}" ]; then
  cargo build --release --quiet
fi
for tool in /usr/sbin/sshd ssh scp ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "ssh_bench.sh: SKIPPED ($tool missing)"; exit 0; }
done

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

prog=ssh_bench.sh
# shellcheck source=loadtest/lib.sh
. loadtest/lib.sh

"$BIN" ssh-gateway keygen --out "$dir/host_key" >/dev/null
"$BIN" ssh-gateway keygen --out "$dir/upstream_key" >/dev/null
ssh-keygen -q -t ed25519 -N '' -f "$dir/sshd_host_key"
cp "$dir/upstream_key.pub" "$dir/authorized_keys"
mkdir -p /run/sshd
sshd_port=$(free_port)
user=$(id -un)
cat >"$dir/sshd_config" <<CONF
Port $sshd_port
ListenAddress 127.0.0.1
HostKey $dir/sshd_host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
CONF
/usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>"$dir/sshd.log" &
pids+=($!)

token=benchtoken0123456789abcdefghijkl
cat >"$dir/sandgate.toml" <<CONF
[ssh]
listen = "127.0.0.1:0"
host_key = "$dir/host_key"
upstream_key = "$dir/upstream_key"
upstream_user = "$user"

[log]
access = false
level = "warn"

[[registry.sandboxes]]
id = "bench"
address = "127.0.0.1"
ssh_port = $sshd_port

[[registry.ssh_tokens]]
token = "$token"
sandbox = "bench"
CONF
"$BIN" ssh-gateway --config "$dir/sandgate.toml" >"$dir/gateway.out" 2>"$dir/gateway.log" &
pids+=($!)
for _ in $(seq 100); do
  grep -q "listening on" "$dir/gateway.out" 2>/dev/null && break
  sleep 0.05
done
gw_port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$dir/gateway.out")
[ -n "$gw_port" ] || { cat "$dir/gateway.log"; exit 1; }

opts=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR)
direct=(-i "$dir/upstream_key" -p "$sshd_port" "$user@127.0.0.1")
via=(-p "$gw_port" "$token@127.0.0.1")

now() { date +%s.%N; }
setup_ms() { # mean ms per `ssh … true`
  local start end
  start=$(now)
  for _ in $(seq "$SESSIONS"); do ssh "${opts[@]}" "$@" true; done
  end=$(now)
  echo "scale=1; ($end - $start) * 1000 / $SESSIONS" | bc
}
head -c $((SIZE_MIB << 20)) /dev/urandom >"$dir/payload"
scp_mibs() { # MiB/s of one upload and one download; $1 = port option value, $2 = user@host, rest = extra
  local port=$1 target=$2; shift 2
  local start mid end
  start=$(now)
  scp -q "${opts[@]}" "$@" -P "$port" "$dir/payload" "$target:$dir/up.bin"
  mid=$(now)
  scp -q "${opts[@]}" "$@" -P "$port" "$target:$dir/up.bin" "$dir/down.bin"
  end=$(now)
  cmp -s "$dir/payload" "$dir/down.bin" || { echo "scp mismatch" >&2; exit 1; }
  printf '%s / %s' "$(echo "scale=0; $SIZE_MIB / ($mid - $start)" | bc)" \
    "$(echo "scale=0; $SIZE_MIB / ($end - $mid)" | bc)"
}

d_setup=$(setup_ms "${direct[@]}")
g_setup=$(setup_ms "${via[@]}")
d_scp=$(scp_mibs "$sshd_port" "$user@127.0.0.1" -i "$dir/upstream_key")
g_scp=$(scp_mibs "$gw_port" "$token@127.0.0.1")

report=$(cat <<MD
### SSH gateway ($(date -u +%Y-%m-%d), $(nproc) cores, loopback, $(ssh -V 2>&1 | cut -d, -f1))

| path | session setup, mean of $SESSIONS × \`ssh … true\` | scp $SIZE_MIB MiB up / down (MiB/s) |
|---|---|---|
| direct to sshd | $d_setup ms | $d_scp |
| through sandgate ssh-gateway | $g_setup ms | $g_scp |
MD
)
echo "$report"
if [ -n "${OUT:-}" ]; then printf '\n%s\n' "$report" >>"$OUT"; fi
