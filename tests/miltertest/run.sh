#!/usr/bin/env bash
# Runs the miltertest scripts in this directory against a real submitgate: miltertest
# (Debian package `miltertest`, OpenDKIM's milter test client) plays Postfix.
#
# For each script: a fresh daemon with a private config, policies, audit log and spool under a
# temporary directory, listening on a free loopback port; the script runs; then this file checks
# what only the daemon's files can show (spool entries byte for byte, audit events) and, when
# strace is installed, the exact reply texts miltertest received (its Lua API returns only the
# reply command).
#
# Usage:  tests/miltertest/run.sh [SCRIPT...]     (default: every *.lua but common.lua)
# Environment:
#   SUBMITGATE_BIN=PATH   use this binary instead of building one with `cargo build`
#   MILTERTEST_KEEP=1     keep the work directory
# Exit status: 0 when every script passed, 1 when one failed, 77 when miltertest is missing.
# The last line reads "miltertest: N passed, M failed".
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

if ! command -v miltertest >/dev/null 2>&1; then
  echo "miltertest: not installed (apt-get install miltertest); skipped"
  exit 77
fi

if [[ -z "${SUBMITGATE_BIN:-}" ]]; then
  (cd "$REPO" && cargo build --quiet --bin submitgate)
  SUBMITGATE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/submitgate"
fi
[[ -x "$SUBMITGATE_BIN" ]] || { echo "miltertest: no binary at $SUBMITGATE_BIN"; exit 1; }

WORK=$(mktemp -d /tmp/submitgate-miltertest.XXXXXX)
DAEMON_PID=
cleanup() {
  stop_daemon
  if [[ "${MILTERTEST_KEEP:-}" == 1 ]]; then
    echo "miltertest: work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

PASSED=0
FAILED=0
pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1: $2"; FAILED=$((FAILED + 1)); }

TENANT='550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.'
MAILBOX='550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.'
LIMIT='432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded'
BASIC='550 5.7.30 Basic authentication is not supported for Client Submission.'
LEGACY='421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2.'

# Starts a daemon for one script in $1 (its work dir); sets PORT.
start_daemon() {
  local dir=$1
  mkdir -p "$dir/policies"
  cat >"$dir/policies/contoso.yaml" <<'YAML'
organization: contoso
domains: [contoso.com]
smtp_client_authentication_disabled: false
max_concurrent_sessions_per_mailbox: 3
sent_items: { enabled: true, folder: "Sent Items" }
mailboxes:
  blocked@contoso.com: { smtp_client_authentication_disabled: true }
  solo@contoso.com: { max_concurrent_sessions_per_mailbox: 1 }
  oauthonly@contoso.com: { allow_basic_auth_smtp: false }
YAML
  cat >"$dir/policies/fabrikam.yaml" <<'YAML'
organization: fabrikam
domains: [fabrikam.com]
smtp_client_authentication_disabled: true
mailboxes:
  erp@fabrikam.com: { smtp_client_authentication_disabled: false }
YAML
  cat >"$dir/submitgate.yaml" <<YAML
milter: ["inet:127.0.0.1:0"]
policies: $dir/policies
audit: { path: $dir/audit.log }
sent_items: { spool: $dir/spool }
YAML
  SUBMITGATE_LOG=info "$SUBMITGATE_BIN" serve --config "$dir/submitgate.yaml" \
    >"$dir/daemon.out" 2>"$dir/daemon.err" &
  DAEMON_PID=$!
  PORT=
  for _ in $(seq 1 100); do
    PORT=$(sed -n 's/.*milter front end listening listener=inet:127\.0\.0\.1:\([0-9]*\).*/\1/p' \
      "$dir/daemon.err" | head -n 1)
    [[ -n "$PORT" ]] && grep -q "ready" "$dir/daemon.err" && return 0
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "miltertest: daemon did not start:" >&2
  cat "$dir/daemon.err" >&2
  return 1
}

stop_daemon() {
  if [[ -n "$DAEMON_PID" ]]; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=
  fi
}

# The pending entries of the spool, oldest first: the message of the N-th as entry-N.eml, its
# metadata as entry-N.json; prints N. Read straight from the segment files (records: a 48-byte
# header — magic SGSPOOL2, CRC-32, kind, id or target offset, lengths — then message and JSON;
# docs/architecture.md, "Records"; zeros where a header would be end a segment), each record's
# checksum checked.
extract_entries() {
  python3 - "$1" <<'PY'
import os, sys, zlib
d = sys.argv[1]
q = os.path.join(d, "spool", "queue")
entries = []
for name in sorted(n for n in os.listdir(q) if n.endswith(".seg")) if os.path.isdir(q) else []:
    b = open(os.path.join(q, name), "rb").read()
    found, at = {}, 0
    while at < len(b):
        h = b[at:at + 48]
        if h == bytes(48):
            break  # the zeros a segment is preallocated with: the end of its records
        assert h[:8] == b"SGSPOOL2", f"{name}@{at}: no magic"
        kind, a = h[12], int.from_bytes(h[16:24], "big")
        jlen, dlen = int.from_bytes(h[36:40], "big"), int.from_bytes(h[40:48], "big")
        end = at + 48 + dlen + jlen
        assert end <= len(b), f"{name}@{at}: cut short"
        crc = zlib.crc32(b[at + 12:at + 48], zlib.crc32(b[at + 48:end]))
        assert crc == int.from_bytes(h[8:12], "big"), f"{name}@{at}: checksum"
        if kind == 1:
            found[at] = (a, int.from_bytes(h[32:36], "big"), int.from_bytes(h[24:32], "big"),
                         b[at + 48:at + 48 + dlen], b[at + 48 + dlen:end])
        elif kind == 3:
            del found[a]
        at = end
    entries += found.values()
for n, (_, _, _, msg, meta) in enumerate(sorted(entries), 1):
    open(os.path.join(d, f"entry-{n}.eml"), "wb").write(msg)
    open(os.path.join(d, f"entry-{n}.json"), "wb").write(meta)
print(len(entries))
PY
}

count() { grep -c -- "$2" "$1" || true; }

run_script() {
  local script=$1
  local name
  name=$(basename "$script" .lua)
  local dir="$WORK/$name"
  mkdir -p "$dir"
  if ! start_daemon "$dir"; then
    fail "$name" "daemon did not start"
    return
  fi
  local runner=(miltertest -D "port=$PORT" -D "dir=$HERE" -s "$script")
  local traced=0
  if command -v strace >/dev/null 2>&1; then
    # Record what miltertest reads from the socket, to check reply texts byte for byte.
    runner=(strace -f -qq -e trace=read -e signal=none -s 1024 -o "$dir/strace.txt" "${runner[@]}")
    traced=1
  fi
  if ! "${runner[@]}" >"$dir/miltertest.out" 2>&1; then
    fail "$name" "miltertest failed: $(grep -m1 -E 'FAIL|error|rror' "$dir/miltertest.out" || tail -n 1 "$dir/miltertest.out")"
    stop_daemon
    return
  fi
  stop_daemon # flushes the audit log
  local audit="$dir/audit.log"
  local why=
  case "$name" in
    allow)
      [[ $(extract_entries "$dir") == 1 ]] || why="expected one spool entry"
      [[ $(count "$audit" '"event":"session_opened"') == 1 ]] || why="${why:-session_opened not audited once}"
      grep -q '"event":"session_closed".*"messages":1' "$audit" || why="${why:-session_closed without messages=1}"
      [[ $(count "$audit" '"decision":"allow"') == 1 ]] || why="${why:-allow not audited once}"
      ;;
    disabled)
      grep -q "\"reason\":\"mailbox_disabled\".*\"reply\":\"$MAILBOX\"" "$audit" || why="mailbox reply not audited"
      grep -q "\"reason\":\"org_disabled\".*\"reply\":\"$TENANT\"" "$audit" || why="${why:-tenant reply not audited}"
      if [[ $traced == 1 ]]; then
        grep -qF "\"$MAILBOX\\0\"" "$dir/strace.txt" || why="${why:-miltertest did not receive the exact Mailbox text}"
        grep -qF "\"$TENANT\\0\"" "$dir/strace.txt" || why="${why:-miltertest did not receive the exact Tenant text}"
      fi
      [[ $(extract_entries "$dir") == 0 ]] || why="${why:-unexpected spool entry}"
      ;;
    auth_rules)
      grep -q "\"reason\":\"basic_auth_disabled\".*\"reply\":\"$BASIC\"" "$audit" || why="Basic refusal not audited"
      grep -q "\"decision\":\"defer\",\"reason\":\"legacy_tls\".*\"reply\":\"$LEGACY\"" "$audit" ||
        why="${why:-legacy TLS refusal not audited}"
      [[ $(count "$audit" '"sasl_method":"XOAUTH2"') -ge 2 ]] || why="${why:-XOAUTH2 not audited}"
      if [[ $traced == 1 ]]; then
        grep -qF "\"$BASIC\\0\"" "$dir/strace.txt" || why="${why:-miltertest did not receive the exact Basic text}"
        grep -qF "\"$LEGACY\\0\"" "$dir/strace.txt" || why="${why:-miltertest did not receive the exact TLS text}"
      fi
      ;;
    limit)
      [[ $(count "$audit" '"reason":"concurrency_limit"') -ge 1 ]] || why="expected a concurrency_limit deferral"
      grep -q "\"reply\":\"$LIMIT\"" "$audit" || why="${why:-432 text not audited}"
      if [[ $traced == 1 ]]; then
        grep -qF "\"$LIMIT\\0\"" "$dir/strace.txt" || why="${why:-miltertest did not receive the exact 432 text}"
      fi
      [[ $(count "$audit" '"event":"session_closed"') == 4 ]] || why="${why:-expected four session_closed}"
      ;;
    two_messages)
      [[ $(extract_entries "$dir") == 2 ]] || why="expected two spool entries"
      [[ $(count "$audit" '"event":"session_opened"') == 1 ]] || why="${why:-expected one session_opened}"
      grep -q '"event":"session_closed".*"mailbox":"solo@contoso.com".*"messages":2' "$audit" ||
        why="${why:-session_closed without messages=2}"
      [[ $(count "$audit" '"reason":"concurrency_limit"') == 1 ]] || why="${why:-second connection not refused}"
      ;;
    spool_copy)
      [[ $(extract_entries "$dir") == 1 ]] || why="expected one spool entry"
      if [[ -z "$why" ]] && ! cmp -s "$dir/entry-1.eml" "$HERE/expected-copy.eml"; then
        why="spool entry differs from expected-copy.eml (see $dir/entry-1.eml)"
        MILTERTEST_KEEP=1
      fi
      grep -q '"recipients":\["carol@example.org","dave@example.net"\]' "$dir/entry-1.json" ||
        why="${why:-recipients missing from the entry}"
      grep -q '"message_id":"<copy-1@client.example>"' "$dir/entry-1.json" ||
        why="${why:-Message-ID missing from the entry}"
      ;;
    *) ;;
  esac
  if grep -qE 'panicked|ERROR' "$dir/daemon.err"; then
    why="${why:-daemon logged an error: $(grep -m1 -E 'panicked|ERROR' "$dir/daemon.err")}"
  fi
  if [[ -n "$why" ]]; then
    fail "$name" "$why"
  else
    pass "$name"
  fi
}

if [[ $# -gt 0 ]]; then
  SCRIPTS=("$@")
else
  SCRIPTS=()
  for s in "$HERE"/*.lua; do
    [[ "$(basename "$s")" == common.lua ]] || SCRIPTS+=("$s")
  done
fi
for s in "${SCRIPTS[@]}"; do
  if [[ -f "$s" ]]; then s=$(cd "$(dirname "$s")" && pwd)/$(basename "$s"); else s="$HERE/$s"; fi
  run_script "$s"
done
echo "miltertest: $PASSED passed, $FAILED failed"
[[ $FAILED == 0 ]]
