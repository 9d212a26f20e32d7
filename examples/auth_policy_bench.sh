#!/usr/bin/env bash
# Requests/s of submitgate's Dovecot auth policy endpoint, measured with wrk (Debian: `apt-get
# install wrk`) on loopback: `command=allow` (policy evaluation; no audit) and
# `command=report` (one audit line per request, to a file), over keep-alive connections,
# with an API key, against 1000 mailboxes of which every tenth is disabled.
#
#   examples/auth_policy_bench.sh [CONNECTIONS=10] [SECONDS=10]
#
# Uses target/release/submitgate (built if missing) and a throw-away directory.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=${1:-10}
seconds=${2:-10}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
[ -x target/release/submitgate ] || cargo build --release
bin=$PWD/target/release/submitgate
dir=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

mkdir "$dir/policies"
{
  echo "organization: bench"
  echo "domains: [bench.example]"
  echo "smtp_client_authentication_disabled: false"
  echo "mailboxes:"
  for i in $(seq 0 10 999); do
    echo "  user$i@bench.example: { smtp_client_authentication_disabled: true }"
  done
} >"$dir/policies/bench.yaml"
key=$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')
printf '%s\n' "$key" >"$dir/api.key"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$dir/submitgate.yaml" <<YAML
auth_policy: ["inet:127.0.0.1:$port"]
auth_policy_api_key_file: $dir/api.key
policies: $dir/policies
audit: { path: $dir/audit.log }
YAML
SUBMITGATE_LOG=warn "$bin" serve --config "$dir/submitgate.yaml" &
pid=$!
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

for cmd in allow report; do
  echo "=== command=$cmd, $connections connections, ${seconds}s"
  COMMAND=$cmd API_KEY=$key wrk -t2 -c"$connections" -d"${seconds}s" --latency \
    -s examples/auth_policy_wrk.lua "http://127.0.0.1:$port/"
done
echo "audit lines written: $(wc -l <"$dir/audit.log")"
