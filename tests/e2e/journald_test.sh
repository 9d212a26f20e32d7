#!/usr/bin/env bash
# The operational log in the systemd journal, read back with journalctl: `log: { target:
# journald }` and the automatic choice under systemd (standard error is the journal's stream,
# JOURNAL_STREAM names it). Checks the native protocol's fields: MESSAGE, PRIORITY (a warning is
# 4, an info line 6), SYSLOG_IDENTIFIER=submitgate, the event's own fields, CODE_FILE.
#
# Needs root and systemd's journald. On a machine whose journald runs (systemd as PID 1) it logs
# there; elsewhere (a container, a CI machine without systemd) it starts systemd-journald for
# the test and stops it afterwards.
#
# Usage: tests/e2e/journald_test.sh   (SUBMITGATE_BIN=PATH to skip `cargo build --release`)
# Last line: "journald: N passed, M failed".
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${SUBMITGATE_BIN:-}
if [ -z "$BIN" ]; then
  (cd "$REPO" && cargo build --release)
  BIN=$REPO/target/release/submitgate
fi
BIN=$(realpath "$BIN")
command -v journalctl >/dev/null || { echo "journald: journalctl missing (apt-get install systemd)"; exit 1; }

WORK=$(mktemp -d /tmp/sg-journald.XXXXXX)
started_journald=
cleanup() {
  if [ -n "$started_journald" ]; then
    kill "$started_journald" 2>/dev/null || true
    wait "$started_journald" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A socket file alone proves nothing: a journald that was killed leaves it behind.
if ! pgrep -x systemd-journal >/dev/null; then
  [ -x /lib/systemd/systemd-journald ] || { echo "journald: /lib/systemd/systemd-journald missing"; exit 1; }
  /lib/systemd/systemd-journald >"$WORK/journald.log" 2>&1 &
  started_journald=$!
  # Ready when it answers (the socket files of an earlier journald may still be there).
  up=
  for _ in $(seq 50); do
    if systemd-cat -t submitgate-probe true 2>/dev/null; then up=y; break; fi
    sleep 0.1
  done
  [ -n "$up" ] || { echo "journald: systemd-journald did not start"; cat "$WORK/journald.log"; exit 1; }
fi

pass=0 fail=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }

mkdir -p "$WORK/policies"
cp "$REPO"/policies/*.yaml "$WORK/policies/"
# A milter front end and a spool without a store: the daemon warns at start (copies are only
# spooled), which gives a warning with fields of its own.
write_config() {
  local tag=$1 log=$2
  cat >"$WORK/$tag.yaml" <<EOF
milter: ["inet:127.0.0.1:0"]
policies: $WORK/policies
audit: { path: $WORK/$tag-audit.log }
sent_items: { spool: $WORK/$tag-spool }
$log
EOF
}

# run TAG [PREFIX...]: serve for a moment, then SIGTERM; PREFIX wraps the command.
run() {
  local tag=$1
  shift
  (
    cd "$WORK"
    exec "$@" "$BIN" serve --config "$WORK/$tag.yaml"
  ) &
  local pid=$!
  echo $pid >"$WORK/$tag.pid"
  sleep 1.5
  kill -TERM $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  # journald writes what it has received in its own time.
  for _ in $(seq 30); do
    journalctl --no-pager -o cat _PID="$(cat "$WORK/$tag.pid")" 2>/dev/null | grep -qx stopped && break
    sleep 0.1
  done
}

check_entries() {
  local tag=$1
  journalctl --no-pager -o json _PID="$(cat "$WORK/$tag.pid")" _COMM=submitgate \
    >"$WORK/$tag.journal" 2>/dev/null || true
  python3 - "$tag" "$WORK/$tag.journal" <<'EOF'
import json, sys
tag = sys.argv[1]
entries = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
def first(pred):
    return next((e for e in entries if pred(e)), None)
errors = []
ready = first(lambda e: "ready" in e.get("MESSAGE", ""))
if not ready:
    errors.append("no 'ready' message")
else:
    if ready.get("SYSLOG_IDENTIFIER") != "submitgate":
        errors.append("SYSLOG_IDENTIFIER %r" % ready.get("SYSLOG_IDENTIFIER"))
    if ready.get("PRIORITY") != "6":  # syslog's info, as `journalctl -p info` expects
        errors.append("ready PRIORITY %r, want 6 (info)" % ready.get("PRIORITY"))
    if not ready.get("CODE_FILE", "").startswith("src/"):
        errors.append("no CODE_FILE")
warn = first(lambda e: e.get("PRIORITY") == "4")
if not warn:
    errors.append("no warning (PRIORITY 4)")
elif "spool" not in json.dumps(warn).lower():
    errors.append("the warning does not name the spool: %r" % warn.get("MESSAGE"))
stopped = first(lambda e: e.get("MESSAGE") == "stopped")
if not stopped:
    errors.append("no 'stopped' message")
if errors:
    print("%s: %d entries; %s" % (tag, len(entries), "; ".join(errors)))
    for e in entries[:10]:
        print("   ", {k: v for k, v in e.items() if not k.startswith("_") and not k.startswith("__")})
    sys.exit(1)
EOF
}

# 1. Chosen in the configuration.
write_config configured "log: { target: journald, level: info }"
run configured
if check_entries configured; then ok "log: { target: journald }: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, CODE_FILE, fields"; else bad "log: { target: journald }"; fi

# 2. Chosen by itself under systemd: standard error connected to the journal (systemd-cat), and
#    JOURNAL_STREAM naming it, as systemd sets it for a service; no `log:` section.
write_config automatic ""
run automatic systemd-cat -t submitgate-stderr bash -c \
  'export JOURNAL_STREAM=$(stat -L -c "%d:%i" /proc/self/fd/2); exec "$@"' _
if check_entries automatic; then ok "no log section, stderr is the journal stream: native protocol chosen"; else bad "automatic journal under systemd"; fi
# The lines must not have gone through the stream as text as well (that would double them).
if journalctl --no-pager -o cat SYSLOG_IDENTIFIER=submitgate-stderr _PID="$(cat "$WORK/automatic.pid")" 2>/dev/null | grep -q ready; then
  bad "lines also written as text to the journal stream"
else
  ok "nothing written twice through the stream"
fi

# 3. Without a journal (socket absent for this process: a private mount namespace would be
#    needed; instead JOURNAL_STREAM names another file): standard error, not the journal.
write_config plain ""
(
  cd "$WORK"
  JOURNAL_STREAM=1:1 exec "$BIN" serve --config "$WORK/plain.yaml" 2>"$WORK/plain.stderr"
) &
pid=$!
sleep 1.5
kill -TERM $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
if grep -q ready "$WORK/plain.stderr"; then ok "JOURNAL_STREAM naming another file: stderr"; else bad "stderr fallback"; cat "$WORK/plain.stderr"; fi

echo "journald: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
