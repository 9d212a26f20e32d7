#!/usr/bin/env bash
# End-to-end tests of submitgate against a real Postfix 3.7 and a real Dovecot 2.3.
#
# RUN THIS AS ROOT ON A THROW-AWAY MACHINE ONLY (CI, a scratch VM or container). It
#   - installs Debian packages that are missing (postfix, dovecot, redis, swaks, miltertest),
#   - creates the system user `vmail`,
#   - rewrites the system Postfix's /etc/postfix/main.cf and master.cf (the originals are kept in
#     /var/backups/submitgate-e2e-postfix and put back on exit) and starts/stops the system
#     Postfix (`postfix stop` first if it is running),
#   - starts a private Dovecot and submitgate from a fresh work dir under /tmp.
#
# Usage:  tests/e2e/run.sh [SUITE...]
#   A suite NAME is the pair tests/e2e/NAME_suite.sh (bash: how to configure Postfix and
#   submitgate for it) + tests/e2e/NAME_scenarios.py (the client side, stdlib Python).
#   Without arguments every tests/e2e/*_scenarios.py runs, in name order.
# Environment:
#   SUBMITGATE_BIN=PATH   use this binary instead of `cargo build --release`
#   E2E_KEEP=1            keep the work dir even when everything passed
#   E2E_POLICY_PORT, E2E_MILTER_PORT, E2E_AUTH_POLICY_PORT, E2E_SASL_PORT, E2E_IMAP_PORT
#                         loopback ports (defaults 10040, 10041, 10042, 10044, 10143; a
#                         busy one is replaced by a free port)
# Exit status: 0 when every scenario passed, 1 otherwise. The last line reads
# "e2e: N passed, M failed".
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)

export E2E_HOST=127.0.0.1
export E2E_SUBMISSION_PORT=10587 # the submission service the scenarios talk to
export E2E_POLICY_PORT=${E2E_POLICY_PORT:-10040}
export E2E_MILTER_PORT=${E2E_MILTER_PORT:-10041}
export E2E_AUTH_POLICY_PORT=${E2E_AUTH_POLICY_PORT:-10042}
export E2E_SASL_PORT=${E2E_SASL_PORT:-10044}
export E2E_IMAP_PORT=${E2E_IMAP_PORT:-10143}
# Every test user has this password (Dovecot passwd-file, {PLAIN} scheme).
export E2E_PASSWORD='e2e-Secret-1'
# Dovecot master user "submitgate" (Sent Items delivery over IMAP); its secret is in
# $WORK/master.secret (E2E_MASTER_PASSWORD_FILE).
export E2E_MASTER_PASSWORD='e2e-Master-7'
# Logins known to Dovecot. Which organization and settings they have is up to each suite's
# policy files; a login whose domain no policy file claims is an "unknown organization".
E2E_USERS=(
  alice@contoso.com bob@contoso.com carol@contoso.com erin@contoso.com scanner@contoso.com
  nocopy@contoso.com
  frank
  printer@fabrikam.com dave@fabrikam.com grace@fabrikam.com
  mallory@unknown.example
)

PACKAGES=(postfix dovecot-core dovecot-imapd redis-server swaks miltertest python3 openssl)
SUBMISSION_SERVICE="$E2E_HOST:$E2E_SUBMISSION_PORT/inet"

log() { printf '=== %s\n' "$*" >&2; }
die() {
  printf 'e2e: setup failed: %s\n' "$*" >&2
  exit 1
}

# --------------------------------------------------------------------------------------------
# Results: scenario runners print "PASS name" / "FAIL name: why"; run.sh adds its own checks.
PASSED=0
FAILED=0
FAILED_NAMES=()
pass() {
  PASSED=$((PASSED + 1))
  printf 'PASS %s\n' "$1"
}
fail() {
  FAILED=$((FAILED + 1))
  FAILED_NAMES+=("$1")
  printf 'FAIL %s\n' "$1"
}

# --------------------------------------------------------------------------------------------
# Packages
install_missing_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
      missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  # Postfix must not ask questions; its configuration is ours anyway.
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

# --------------------------------------------------------------------------------------------
# Helpers

# wait_port PORT SECONDS [PID]: wait until 127.0.0.1:PORT accepts; fail early if PID died.
wait_port() {
  local port=$1 secs=$2 pid=${3:-} i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/$E2E_HOST/$port") 2>/dev/null; then
      return 0
    fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    sleep 0.1
  done
  return 1
}

port_in_use() { (exec 3<>"/dev/tcp/$E2E_HOST/$1") 2>/dev/null; }

# dovecot_include FILE WHAT: includes FILE from the run's dovecot.conf (once), checks the
# result with doveconf (dying with "doveconf rejects WHAT") and reloads Dovecot.
dovecot_include() {
  local file=$1 what=$2
  grep -qF "$file" "$E2E_DOVECOT_CONF" || printf '!include_try %s\n' "$file" >>"$E2E_DOVECOT_CONF"
  doveconf -c "$E2E_DOVECOT_CONF" -n >/dev/null || die "doveconf rejects $what"
  doveadm -c "$E2E_DOVECOT_CONF" reload || die "doveadm reload failed"
  sleep 1
}

# dovecot_uninclude FILE: drops FILE's include from the run's dovecot.conf and reloads Dovecot
# (best effort: it runs in suite tear-downs).
dovecot_uninclude() {
  local file=$1 tmp="$E2E_DOVECOT_CONF.tmp"
  grep -vF "$file" "$E2E_DOVECOT_CONF" >"$tmp" && mv "$tmp" "$E2E_DOVECOT_CONF"
  doveadm -c "$E2E_DOVECOT_CONF" reload || true
  sleep 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

postfix_running() { postfix status >/dev/null 2>&1; }

# Stop what an earlier run of this script may have left behind (killed with SIGKILL, say):
# its private Dovecot and submitgate, found through the pid files in its work dir.
stop_leftovers() {
  local dir pid
  for dir in /tmp/sg-e2e.*; do
    [ -d "$dir" ] || continue
    if [ -f "$dir/submitgate.pid" ]; then
      pid=$(cat "$dir/submitgate.pid")
      if kill -0 "$pid" 2>/dev/null && grep -q submitgate "/proc/$pid/cmdline" 2>/dev/null; then
        log "stopping submitgate $pid left by an earlier run ($dir)"
        kill "$pid" 2>/dev/null || true
      fi
    fi
    if [ -f "$dir/dovecot.conf" ] && [ -f "$dir/run/master.pid" ]; then
      log "stopping Dovecot left by an earlier run ($dir)"
      doveadm -c "$dir/dovecot.conf" stop 2>/dev/null || true
    fi
  done
}

# --------------------------------------------------------------------------------------------
# Clean-up: always runs (trap EXIT).
WORK=
SUBMITGATE_PID=
DOVECOT_STARTED=
POSTFIX_TOUCHED=
cleanup() {
  local rc=$?
  set +e
  stop_submitgate quiet
  if [ -n "$POSTFIX_TOUCHED" ]; then
    postfix_running && postfix stop >/dev/null 2>&1
    restore_postfix_config
  fi
  if [ -n "$DOVECOT_STARTED" ]; then
    doveadm -c "$WORK/dovecot.conf" stop >/dev/null 2>&1
  fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$rc" -eq 0 ] && [ "${E2E_KEEP:-0}" != 1 ]; then
      rm -rf "$WORK"
    else
      echo "e2e: work dir kept: $WORK" >&2
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --------------------------------------------------------------------------------------------
# Dovecot: SASL for Postfix on $E2E_SASL_PORT, IMAP on $E2E_IMAP_PORT, one Maildir per user.
start_dovecot() {
  id vmail >/dev/null 2>&1 ||
    useradd --system --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin vmail
  local vmail_uid
  vmail_uid=$(id -u vmail)
  mkdir -p "$WORK/mail" "$WORK/run"
  chown vmail:vmail "$WORK/mail"

  : >"$WORK/users"
  local u
  for u in "${E2E_USERS[@]}"; do
    printf '%s:{PLAIN}%s::::::\n' "$u" "$E2E_PASSWORD" >>"$WORK/users"
  done
  chmod 0640 "$WORK/users"
  chgrp dovecot "$WORK/users"
  # The master user submitgate's IMAP store logs in as (LOGIN "user*submitgate" secret).
  printf 'submitgate:{PLAIN}%s::::::\n' "$E2E_MASTER_PASSWORD" >"$WORK/masters"
  printf '%s\n' "$E2E_MASTER_PASSWORD" >"$WORK/master.secret"
  chmod 0640 "$WORK/masters"
  chgrp dovecot "$WORK/masters"
  chmod 0600 "$WORK/master.secret"

  cat >"$WORK/dovecot.conf" <<EOF
# Private Dovecot for submitgate's end-to-end tests (tests/e2e/run.sh).
base_dir = $WORK/run
state_dir = $WORK/state
log_path = $WORK/dovecot.log
protocols = imap
listen = $E2E_HOST
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = $vmail_uid
mail_uid = vmail
mail_gid = vmail
mail_location = maildir:$WORK/mail/%u

auth_master_user_separator = *
passdb {
  driver = passwd-file
  args = scheme=PLAIN $WORK/masters
  master = yes
  result_success = continue
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN $WORK/users
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=$WORK/mail/%u
}

namespace inbox {
  inbox = yes
  mailbox "Sent Items" {
    special_use = \\Sent
    auto = subscribe
  }
}

service imap-login {
  inet_listener imap {
    address = $E2E_HOST
    port = $E2E_IMAP_PORT
  }
  inet_listener imaps {
    port = 0
  }
}

# Postfix's SASL (smtpd_sasl_type = dovecot) over TCP.
service auth {
  inet_listener sasl {
    address = $E2E_HOST
    port = $E2E_SASL_PORT
  }
}

# No penalty for failed logins: scenarios log in wrongly on purpose, fast.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
EOF
  mkdir -p "$WORK/state"
  doveconf -c "$WORK/dovecot.conf" -n >/dev/null || die "doveconf rejects $WORK/dovecot.conf"
  DOVECOT_STARTED=1
  dovecot -c "$WORK/dovecot.conf" || die "dovecot did not start (see $WORK/dovecot.log)"
  wait_port "$E2E_SASL_PORT" 15 || die "Dovecot SASL port $E2E_SASL_PORT not listening"
  wait_port "$E2E_IMAP_PORT" 15 || die "Dovecot IMAP port $E2E_IMAP_PORT not listening"
  doveadm -c "$WORK/dovecot.conf" auth test bob@contoso.com "$E2E_PASSWORD" >/dev/null ||
    die "doveadm auth test failed for bob@contoso.com"
}

# --------------------------------------------------------------------------------------------
# Postfix: the system's, loopback only, delivering nothing (discard), logging to a file.
configure_postfix_base() {
  postfix_running && postfix stop >/dev/null 2>&1
  save_postfix_config
  POSTFIX_TOUCHED=1
  # With debconf's "No configuration" there is no main.cf at all.
  [ -f /etc/postfix/main.cf ] || : >/etc/postfix/main.cf
  if [ ! -f /etc/postfix/master.cf ]; then
    cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf 2>/dev/null ||
      cp /etc/postfix/master.cf.proto /etc/postfix/master.cf ||
      die "no master.cf to start from"
  fi

  postconf -e \
    'compatibility_level = 3.6' \
    'myhostname = mta.submitgate-e2e.test' \
    'mydomain = submitgate-e2e.test' \
    'mydestination =' \
    'inet_interfaces = loopback-only' \
    'inet_protocols = ipv4' \
    'mynetworks = 127.0.0.0/8' \
    'relayhost =' \
    'alias_maps =' \
    'alias_database =' \
    'default_transport = discard' \
    'local_transport = discard' \
    'relay_transport = discard' \
    "maillog_file_prefixes = /var, /dev/stdout, $WORK" \
    "maillog_file = $WORK/postfix.log" \
    'smtpd_tls_security_level = none' \
    'smtp_tls_security_level = none'
  # postlogd writes maillog_file; it must exist in master.cf (Debian's has it).
  [ -n "$(postconf -M postlog/unix-dgram 2>/dev/null)" ] ||
    postconf -M 'postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd'
}

# The system's main.cf/master.cf as they were before any run of this script: saved once, put
# back on exit. A run killed before its clean-up leaves the copy, and the next run restores
# from it rather than saving its own edits.
POSTFIX_BACKUP=/var/backups/submitgate-e2e-postfix
save_postfix_config() {
  [ -f "$POSTFIX_BACKUP/saved" ] && return 0
  mkdir -p "$POSTFIX_BACKUP"
  rm -f "$POSTFIX_BACKUP/main.cf" "$POSTFIX_BACKUP/master.cf"
  local f
  for f in main.cf master.cf; do
    if [ -f "/etc/postfix/$f" ]; then cp -p "/etc/postfix/$f" "$POSTFIX_BACKUP/$f"; fi
  done
  : >"$POSTFIX_BACKUP/saved"
}
restore_postfix_config() {
  [ -f "$POSTFIX_BACKUP/saved" ] || return 0
  local f
  for f in main.cf master.cf; do
    if [ -f "$POSTFIX_BACKUP/$f" ]; then
      cp -p "$POSTFIX_BACKUP/$f" "/etc/postfix/$f"
    else
      rm -f "/etc/postfix/$f" # there was none (debconf "No configuration")
    fi
  done
  rm -rf "$POSTFIX_BACKUP"
}

# submission_service NAME=VALUE...: (re)create the submission service on
# $E2E_HOST:$E2E_SUBMISSION_PORT with SASL through Dovecot, no TLS, and the given -o options.
# A value with spaces cannot go into master.cf through `postconf -P`: put it in a main.cf
# parameter (postconf -e 'sg_e2e_x = a b, c') and pass NAME=\$sg_e2e_x.
# With SUBMISSION_CHROOT=y the service runs chrooted in the queue directory, as Debian's
# master.cf has its smtpd services.
submission_service() {
  smtpd_service "$SUBMISSION_SERVICE" "$E2E_SUBMISSION_PORT" "${SUBMISSION_CHROOT:-n}" \
    postfix/submission-e2e smtpd_tls_security_level=none "$@"
}

# smtpd_service SERVICE PORT CHROOT SYSLOG_NAME OPTION...: master.cf's SERVICE (HOST:PORT/inet)
# replaced by an smtpd on E2E_HOST:PORT with Dovecot SASL and the -o OPTIONs.
smtpd_service() {
  local service=$1 port=$2 chroot=$3 syslog=$4
  shift 4
  postconf -MX "$service" 2>/dev/null || true
  postconf -M "$service=$E2E_HOST:$port inet n - $chroot - - smtpd"
  local opt
  for opt in \
    "syslog_name=$syslog" \
    smtpd_sasl_auth_enable=yes \
    smtpd_sasl_type=dovecot \
    "smtpd_sasl_path=inet:$E2E_HOST:$E2E_SASL_PORT" \
    "$@"; do
    postconf -P "$service/$opt"
  done
}

start_postfix() {
  postfix check || die "postfix check failed"
  postfix start >/dev/null || die "postfix start failed"
  wait_port "$E2E_SUBMISSION_PORT" 20 || die "Postfix is not listening on $E2E_SUBMISSION_PORT"
}

# --------------------------------------------------------------------------------------------
# submitgate
build_submitgate() {
  if [ -n "${SUBMITGATE_BIN:-}" ]; then
    [ -x "$SUBMITGATE_BIN" ] || die "SUBMITGATE_BIN=$SUBMITGATE_BIN is not executable"
    # The suites start it from their work directories: a relative path must not depend on that.
    SUBMITGATE_BIN=$(realpath "$SUBMITGATE_BIN")
    return
  fi
  log "cargo build --release"
  (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
  SUBMITGATE_BIN="$REPO/target/release/submitgate"
}

# start_submitgate PORT...: run `submitgate serve` with $E2E_CONFIG from $WORK (relative paths
# in the config are relative to it) and wait until every PORT listens. With E2E_RUN_AS=USER it
# runs as that user (and its group), as a packaged daemon would.
start_submitgate() {
  local as=()
  if [ -n "${E2E_RUN_AS:-}" ]; then
    as=(setpriv "--reuid=$E2E_RUN_AS" "--regid=$E2E_RUN_AS" --init-groups --)
  fi
  (cd "$WORK" && exec "${as[@]}" "$SUBMITGATE_BIN" serve --config "$E2E_CONFIG") \
    >>"$E2E_SUBMITGATE_LOG" 2>&1 &
  SUBMITGATE_PID=$!
  echo "$SUBMITGATE_PID" >"$WORK/submitgate.pid"
  local port
  for port in "$@"; do
    if ! wait_port "$port" 20 "$SUBMITGATE_PID"; then
      if kill -0 "$SUBMITGATE_PID" 2>/dev/null; then
        echo "e2e: submitgate is not listening on $port after 20 s" >&2
      else
        local rc=0
        wait "$SUBMITGATE_PID" || rc=$?
        SUBMITGATE_PID=
        echo "e2e: submitgate exited with status $rc before listening on $port" >&2
      fi
      return 1
    fi
  done
}

# stop_submitgate [quiet]: SIGTERM, then wait up to 10 s. Returns 0 when it exited 0.
stop_submitgate() {
  [ -n "$SUBMITGATE_PID" ] || return 0
  local pid=$SUBMITGATE_PID rc=0 i
  SUBMITGATE_PID=
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    [ "${1:-}" = quiet ] || echo "e2e: submitgate did not stop within 10 s of SIGTERM" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid" 2>/dev/null || rc=$?
  rm -f "$WORK/submitgate.pid"
  if [ "$rc" -ne 0 ] && [ "${1:-}" != quiet ]; then
    echo "e2e: submitgate exited $rc after SIGTERM" >&2
  fi
  return "$rc"
}

# --------------------------------------------------------------------------------------------
dump_logs() {
  local suite=$1 f
  for f in "$WORK/postfix.log" "$E2E_SUBMITGATE_LOG" "$E2E_AUDIT_LOG" "$WORK/dovecot.log"; do
    [ -f "$f" ] || continue
    printf '\n----- %s (last 150 lines) -----\n' "$f"
    tail -n 150 "$f"
  done
  printf '\n----- end of logs for suite %s -----\n' "$suite"
}

# run_suite NAME: NAME_suite.sh defines suite_setup (configure Postfix's submission service,
# write $E2E_CONFIG and policy files, start extra servers) and may define suite_teardown.
run_suite() {
  local name=$1 out before_failed=$FAILED
  log "suite $name"
  export E2E_SUITE=$name
  export E2E_SUITE_DIR="$WORK/$name"
  export E2E_CONFIG="$E2E_SUITE_DIR/submitgate.yaml"
  export E2E_AUDIT_LOG="$E2E_SUITE_DIR/audit.log"
  export E2E_SUBMITGATE_LOG="$E2E_SUITE_DIR/submitgate.log"
  export E2E_POSTFIX_LOG="$WORK/postfix.log"
  mkdir -p "$E2E_SUITE_DIR"

  unset -f suite_setup suite_teardown
  unset E2E_RUN_AS SUBMISSION_CHROOT
  SUITE_PORTS=()
  # shellcheck source=/dev/null
  source "$E2E_DIR/${name}_suite.sh"
  declare -F suite_setup >/dev/null || die "$E2E_DIR/${name}_suite.sh defines no suite_setup"

  postfix_running && postfix stop >/dev/null 2>&1
  suite_setup # a failure here ends the run (set -e), the trap cleans up
  start_postfix

  if ! start_submitgate "${SUITE_PORTS[@]}"; then
    fail "$name/submitgate starts"
    stop_submitgate quiet || true
    dump_logs "$name"
    return
  fi
  pass "$name/submitgate starts"

  export E2E_SUBMITGATE_PID=$SUBMITGATE_PID # for scenarios that send SIGHUP
  out="$E2E_SUITE_DIR/scenarios.out"
  # The scenario runner prints PASS/FAIL lines itself; count them here.
  local rc=0
  timeout 300 python3 "$E2E_DIR/${name}_scenarios.py" 2>&1 | tee "$out" || rc=$?
  local line
  while IFS= read -r line; do
    case $line in
    "PASS "*) PASSED=$((PASSED + 1)) ;;
    "FAIL "*)
      FAILED=$((FAILED + 1))
      FAILED_NAMES+=("${line#FAIL }")
      ;;
    esac
  done <"$out"
  if [ "$rc" -ne 0 ] && [ "$FAILED" -eq "$before_failed" ]; then
    fail "$name/scenario runner exited $rc without reporting a failure"
  fi

  if stop_submitgate; then
    pass "$name/submitgate exits 0 on SIGTERM"
  else
    fail "$name/submitgate exits 0 on SIGTERM"
  fi
  if declare -F suite_teardown >/dev/null; then
    suite_teardown || true
  fi
  postfix stop >/dev/null 2>&1 || true

  if [ "$FAILED" -ne "$before_failed" ]; then
    dump_logs "$name"
  fi
}

# --------------------------------------------------------------------------------------------
main() {
  [ "$(id -u)" -eq 0 ] || die "run me as root (on a throw-away machine)"
  local suites=() f
  if [ $# -gt 0 ]; then
    suites=("$@")
  else
    for f in "$E2E_DIR"/*_scenarios.py; do
      f=$(basename "$f")
      suites+=("${f%_scenarios.py}")
    done
  fi
  for f in "${suites[@]}"; do
    [ -f "$E2E_DIR/${f}_scenarios.py" ] || die "no $E2E_DIR/${f}_scenarios.py"
    [ -f "$E2E_DIR/${f}_suite.sh" ] || die "no $E2E_DIR/${f}_suite.sh"
  done

  local started=$SECONDS
  install_missing_packages
  build_submitgate
  export SUBMITGATE_BIN # scenarios run `submitgate spool list`
  log "packages and build took $((SECONDS - started)) s"
  started=$SECONDS

  stop_leftovers
  postfix_running && postfix stop >/dev/null 2>&1
  port_in_use "$E2E_SUBMISSION_PORT" &&
    die "port $E2E_SUBMISSION_PORT on $E2E_HOST is in use (by something other than Postfix)"
  # A developer may have a submitgate of their own on 10040: take another port then.
  local var
  for var in E2E_POLICY_PORT E2E_MILTER_PORT E2E_AUTH_POLICY_PORT E2E_SASL_PORT E2E_IMAP_PORT; do
    if port_in_use "${!var}"; then
      printf -v "$var" '%s' "$(free_port)"
      log "port in use, $var=${!var} instead"
    fi
  done

  WORK=$(mktemp -d /tmp/sg-e2e.XXXXXX)
  chmod 0755 "$WORK" # Dovecot's unprivileged processes walk into base_dir
  export WORK
  log "work dir $WORK"

  start_dovecot
  configure_postfix_base

  for f in "${suites[@]}"; do
    run_suite "$f"
  done

  echo
  if [ "$FAILED" -gt 0 ]; then
    echo "Failed:"
    printf '  %s\n' "${FAILED_NAMES[@]}"
  fi
  echo "e2e scenarios took $((SECONDS - started)) s (set-up included, build excluded)"
  echo "e2e: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# tests/e2e/bench.sh sources this file for its set-up functions and runs its own main.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
