#!/usr/bin/env bash
# End-to-end benchmark: what submitgate costs a real Postfix 3.7 submission service.
#
# RUN THIS AS ROOT ON A THROW-AWAY MACHINE ONLY, like run.sh (whose set-up it reuses): it
# rewrites and restarts the system Postfix (its main.cf/master.cf are put back on exit) and runs
# a private Dovecot. On a machine shared with others, hold the Postfix lock:
#   flock /work/postfix.lock tests/e2e/bench.sh
#
# Four submission services on loopback, all with SASL (AUTH PLAIN) through Dovecot and the
# `discard` transport, measured in the same run by the same client (examples/smtp_load.rs),
# taking turns:
#   postfix       127.0.0.1:10587  Postfix alone
#   null-milter   127.0.0.1:10588  + a do-nothing milter, its own process (milter_load
#                                  --responder same): submitgate's no-reply flags, answers
#                                  only MAIL and end-of-message, TCP_QUICKACK after each read
#   sg-maildir    127.0.0.1:10589  + submitgate on inet: (durable spool, Maildir store)
#   sg-imap       127.0.0.1:10590  + submitgate on inet: (durable spool, IMAP store into the
#                                  run's Dovecot as its master user)
# and, when named in BENCH_TARGETS:
#   null-all      127.0.0.1:10591  + a do-nothing milter that negotiates no flags and so
#                                  answers every event (milter_load --responder all): what
#                                  the no-reply flags save
#   sg-other      127.0.0.1:10592  + another submitgate build ($BENCH_OTHER_BIN), set up as
#                                  sg-maildir: before/after comparisons in one run (its spool
#                                  is not watched: another build may lay it out otherwise)
#   sg-unix       127.0.0.1:10593  + submitgate as sg-maildir, but on the unix socket of
#                                  README's "Preferred transport" (/var/spool/postfix/
#                                  submitgate/milter.sock, removed at the end; Postfix names
#                                  it unix:submitgate/milter.sock)
#   sg-spool      127.0.0.1:10594  + submitgate with its durable spool but no store (copies
#                                  stay queued): sg-maildir without the Sent Items delivery
# Every session: EHLO, AUTH PLAIN as user0..user999@contoso.com (Dovecot passwd-file), MAIL,
# 2 RCPT, 10 KiB DATA, QUIT. After each submitgate phase the client waits until that
# submitgate's spool is empty and reports how long it took (the target: within 5 s), and for
# every milter its process's CPU time per session, from the phase's start until its spool was
# empty (a figure that moves far less with the machine's load than sessions/s).
#
# Usage:  tests/e2e/bench.sh
# Environment:
#   BENCH_CONNECTIONS=10,50      connection counts, each measured separately
#   BENCH_SECONDS=10             seconds per target and round
#   BENCH_ROUNDS=3               rounds (the summary shows the best round of each target)
#   BENCH_TARGETS="postfix null-milter sg-maildir sg-imap"   which services to measure
#   BENCH_DOVECOT=tuned          `tuned`: Dovecot's high-performance login mode and reused
#                                `imap` processes (docs/sent-items.md, "Dovecot for the imap
#                                store"); `default`: Dovecot as installed (two new processes per
#                                login, which bounds the IMAP store's rate)
#   BENCH_WORKERS=N              sent_items.workers of the submitgate targets (default: theirs)
#   BENCH_PERF=1                 `perf record -g` on the sg-maildir submitgate during the run
#                                (perf.data kept in the work dir, which is then kept)
#   BENCH_OTHER_BIN=PATH         the submitgate binary of target sg-other
#   BENCH_OTHER_DIR=DIR          where sg-other keeps its spool, Maildirs and audit log (a new
#                                directory in DIR, removed at the end), e.g. /dev/shm: what
#                                the disk's syncs cost, with everything else alike
#   SUBMITGATE_BIN, E2E_KEEP     as for run.sh; without SUBMITGATE_BIN the release binary and
#                                the two examples are built first
# Output: per round and target sessions/s, p50, p99; then per connection count the best round
# of each target with its ratio to Postfix alone and to the null milter. Exit status 1 if a
# session failed or a spool was not empty within 5 s of the load's end.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/e2e/run.sh
source "$BENCH_DIR/run.sh"

BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-10,50}
BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_TARGETS=${BENCH_TARGETS:-postfix null-milter sg-maildir sg-imap}
BENCH_USERS=1000
BENCH_DOVECOT=${BENCH_DOVECOT:-tuned}

# The load's logins, beside the users run.sh's Dovecot set-up checks (bob@contoso.com).
for ((i = 0; i < BENCH_USERS; i++)); do
  E2E_USERS+=("user$i@contoso.com")
done

declare -A SERVICE_PORT=([postfix]=10587 [null-milter]=10588 [sg-maildir]=10589 [sg-imap]=10590
  [null-all]=10591 [sg-other]=10592 [sg-unix]=10593 [sg-spool]=10594)
NULL_MILTER_PORT=${E2E_NULL_MILTER_PORT:-10045}
IMAP_MILTER_PORT=${E2E_IMAP_MILTER_PORT:-10046}
NULL_ALL_PORT=${E2E_NULL_ALL_PORT:-10047}
OTHER_MILTER_PORT=${E2E_OTHER_MILTER_PORT:-10048}
UNIX_MILTER_PORT=${E2E_UNIX_MILTER_PORT:-10049}
SPOOL_MILTER_PORT=${E2E_SPOOL_MILTER_PORT:-10050}
UNIX_MILTER_DIR=/var/spool/postfix/submitgate
BENCH_PIDS=()
PERF_PID=

bench_cleanup() {
  local rc=$? pid
  set +e
  if [ -n "$PERF_PID" ]; then
    kill -INT "$PERF_PID" 2>/dev/null
    wait "$PERF_PID" 2>/dev/null
  fi
  for pid in "${BENCH_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  [ -n "${UNIX_MILTER_MADE:-}" ] && rm -rf "$UNIX_MILTER_DIR"
  [ -n "${OTHER_DIR_MADE:-}" ] && rm -rf "$OTHER_DIR_MADE"
  (exit "$rc")
  cleanup # run.sh's: Postfix stopped and its configuration put back, Dovecot stopped
}
trap bench_cleanup EXIT

build_bench() {
  if [ -n "${SUBMITGATE_BIN:-}" ]; then
    [ -x "$SUBMITGATE_BIN" ] || die "SUBMITGATE_BIN=$SUBMITGATE_BIN is not executable"
  else
    log "cargo build --release (submitgate, examples smtp_load and milter_load)"
    (cd "$REPO" && cargo build --release --bin submitgate --example smtp_load --example milter_load) ||
      die "cargo build --release failed"
    SUBMITGATE_BIN="$REPO/target/release/submitgate"
  fi
  SMTP_LOAD_BIN=$(dirname "$SUBMITGATE_BIN")/examples/smtp_load
  MILTER_LOAD_BIN=$(dirname "$SUBMITGATE_BIN")/examples/milter_load
  [ -x "$SMTP_LOAD_BIN" ] && [ -x "$MILTER_LOAD_BIN" ] ||
    die "$SMTP_LOAD_BIN or $MILTER_LOAD_BIN missing (cargo build --release --examples)"
}

# bench_service NAME [MILTER]: the submission service NAME on its port, with MILTER
# (inet:HOST:PORT) as its smtpd_milters when given, the options milter_suite.sh uses.
bench_service() {
  local name=$1 milter=${2:-} port=${SERVICE_PORT[$1]}
  local opts=('smtpd_recipient_restrictions=permit_sasl_authenticated,reject')
  if [ -n "$milter" ]; then
    opts+=(
      "smtpd_milters=$milter"
      'milter_default_action=tempfail'
      'milter_protocol=6'
      'milter_mail_macros=$sg_e2e_milter_mail_macros'
      'milter_helo_macros=$sg_e2e_milter_helo_macros'
    )
  fi
  SUBMISSION_SERVICE="$E2E_HOST:$port/inet" E2E_SUBMISSION_PORT=$port submission_service "${opts[@]}"
}

# write_submitgate_config DIR MILTER_PORT STORE: policies and configuration for one submitgate
# (STORE `none`: a spool and no store, so no delivery).
write_submitgate_config() {
  local dir=$1 port=$2 store=$3
  mkdir -p "$dir/policies"
  cat >"$dir/policies/contoso.yaml" <<'EOF'
organization: contoso
domains: [contoso.com]
max_concurrent_sessions_per_mailbox: 3
sent_items: { enabled: true, folder: "Sent Items" }
# Judged and counted, never reached: Exchange's 30 a minute per mailbox would defer this load.
sending_limits: { messages_per_minute: 100000, recipients_per_day: 100000000 }
EOF
  cat >"$dir/submitgate.yaml" <<EOF
milter: ["inet:$E2E_HOST:$port"]
policies: $dir/policies
audit: { path: $dir/audit.log }
limiter: { backend: memory }
sent_items:
  spool: $dir/spool
EOF
  if [ "$store" != none ]; then
    printf '  store: %s\n' "$store" >>"$dir/submitgate.yaml"
  fi
  if [ -n "${BENCH_WORKERS:-}" ]; then
    printf '  workers: %s\n' "$BENCH_WORKERS" >>"$dir/submitgate.yaml"
  fi
}

# tune_dovecot: the settings docs/sent-items.md recommends for many senders' copies (one
# login process for many connections, imap processes reused), then a reload.
tune_dovecot() {
  cat >>"$WORK/dovecot.conf" <<'EOF'

# tests/e2e/bench.sh, BENCH_DOVECOT=tuned (docs/sent-items.md)
service imap-login {
  service_count = 0
  process_min_avail = 2
}
service imap {
  service_count = 0
  process_min_avail = 4
}
EOF
  doveconf -c "$WORK/dovecot.conf" -n >/dev/null || die "doveconf rejects the tuned $WORK/dovecot.conf"
  doveadm -c "$WORK/dovecot.conf" reload || die "doveadm reload failed"
}

# start_bench_process PORT LOG COMMAND...: runs COMMAND in the background, waits for PORT.
start_bench_process() {
  local port=$1 logfile=$2
  shift 2
  "$@" >>"$logfile" 2>&1 &
  local pid=$!
  BENCH_PIDS+=("$pid")
  wait_port "$port" 20 "$pid" || die "$* is not listening on $port (see $logfile)"
  LAST_PID=$pid
}

bench_main() {
  [ "$(id -u)" -eq 0 ] || die "run me as root (on a throw-away machine)"
  install_missing_packages
  build_bench
  stop_leftovers
  postfix_running && postfix stop >/dev/null 2>&1
  local name
  for name in "${!SERVICE_PORT[@]}"; do
    port_in_use "${SERVICE_PORT[$name]}" && die "port ${SERVICE_PORT[$name]} is in use"
  done
  local var
  for var in E2E_SASL_PORT E2E_IMAP_PORT E2E_MILTER_PORT NULL_MILTER_PORT IMAP_MILTER_PORT \
    NULL_ALL_PORT OTHER_MILTER_PORT UNIX_MILTER_PORT SPOOL_MILTER_PORT; do
    if port_in_use "${!var}"; then
      printf -v "$var" '%s' "$(free_port)"
      log "port in use, $var=${!var} instead"
    fi
  done

  WORK=$(mktemp -d /tmp/sg-e2e.XXXXXX)
  chmod 0755 "$WORK"
  export WORK
  log "work dir $WORK"
  start_dovecot
  case $BENCH_DOVECOT in
  tuned) tune_dovecot ;;
  default) ;;
  *) die "BENCH_DOVECOT=$BENCH_DOVECOT: tuned or default" ;;
  esac
  configure_postfix_base
  # 50 connections on each service (up to seven), each session an smtpd process.
  postconf -e 'default_process_limit = 400' \
    "sg_e2e_milter_mail_macros = i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}" \
    "sg_e2e_milter_helo_macros = {tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}"

  local targets=() spools=() pids=()
  for name in $BENCH_TARGETS; do
    case $name in
    postfix) bench_service postfix ;;
    null-milter)
      start_bench_process "$NULL_MILTER_PORT" "$WORK/null-milter.log" \
        "$MILTER_LOAD_BIN" --responder same --listen "$E2E_HOST:$NULL_MILTER_PORT"
      bench_service null-milter "inet:$E2E_HOST:$NULL_MILTER_PORT"
      ;;
    sg-maildir)
      write_submitgate_config "$WORK/sg-maildir" "$E2E_MILTER_PORT" \
        "{ backend: maildir, root: \"$WORK/sg-maildir/mail/{domain}/{local}/Maildir\" }"
      start_bench_process "$E2E_MILTER_PORT" "$WORK/sg-maildir/submitgate.log" \
        "$SUBMITGATE_BIN" serve --config "$WORK/sg-maildir/submitgate.yaml"
      if [ "${BENCH_PERF:-0}" = 1 ]; then
        perf record -F 999 -g -p "$LAST_PID" -o "$WORK/perf-sg-maildir.data" \
          >"$WORK/perf.log" 2>&1 &
        PERF_PID=$!
        E2E_KEEP=1
      fi
      bench_service sg-maildir "inet:$E2E_HOST:$E2E_MILTER_PORT"
      spools+=(--spool "sg-maildir=$WORK/sg-maildir/spool")
      ;;
    sg-imap)
      write_submitgate_config "$WORK/sg-imap" "$IMAP_MILTER_PORT" \
        "{ backend: imap, address: \"$E2E_HOST:$E2E_IMAP_PORT\", tls: none, login: master_user, master_user: submitgate, master_password_file: $WORK/master.secret }"
      start_bench_process "$IMAP_MILTER_PORT" "$WORK/sg-imap/submitgate.log" \
        "$SUBMITGATE_BIN" serve --config "$WORK/sg-imap/submitgate.yaml"
      bench_service sg-imap "inet:$E2E_HOST:$IMAP_MILTER_PORT"
      spools+=(--spool "sg-imap=$WORK/sg-imap/spool")
      ;;
    null-all)
      start_bench_process "$NULL_ALL_PORT" "$WORK/null-all.log" \
        "$MILTER_LOAD_BIN" --responder all --listen "$E2E_HOST:$NULL_ALL_PORT"
      bench_service null-all "inet:$E2E_HOST:$NULL_ALL_PORT"
      ;;
    sg-other)
      [ -x "${BENCH_OTHER_BIN:-}" ] || die "target sg-other needs BENCH_OTHER_BIN=PATH"
      local other_dir=$WORK/sg-other
      if [ -n "${BENCH_OTHER_DIR:-}" ]; then
        other_dir=$(mktemp -d "$BENCH_OTHER_DIR/sg-other.XXXXXX")
        OTHER_DIR_MADE=$other_dir
      fi
      write_submitgate_config "$other_dir" "$OTHER_MILTER_PORT" \
        "{ backend: maildir, root: \"$other_dir/mail/{domain}/{local}/Maildir\" }"
      start_bench_process "$OTHER_MILTER_PORT" "$other_dir/submitgate.log" \
        "$BENCH_OTHER_BIN" serve --config "$other_dir/submitgate.yaml"
      bench_service sg-other "inet:$E2E_HOST:$OTHER_MILTER_PORT"
      ;;
    sg-unix)
      # README's recipe, the daemon running as root here: the directory's group and set-gid
      # bit give the socket group postfix, its mode 0660 lets smtpd connect.
      rm -rf "$UNIX_MILTER_DIR"
      install -d -o root -g postfix -m 2750 "$UNIX_MILTER_DIR"
      UNIX_MILTER_MADE=1
      write_submitgate_config "$WORK/sg-unix" "$UNIX_MILTER_PORT" \
        "{ backend: maildir, root: \"$WORK/sg-unix/mail/{domain}/{local}/Maildir\" }"
      # Also on TCP (unused) so that start_bench_process can wait for it.
      sed -i "s|^milter: .*|milter: [\"unix:$UNIX_MILTER_DIR/milter.sock\", \"inet:$E2E_HOST:$UNIX_MILTER_PORT\"]\nunix_socket_mode: \"0660\"|" \
        "$WORK/sg-unix/submitgate.yaml"
      start_bench_process "$UNIX_MILTER_PORT" "$WORK/sg-unix/submitgate.log" \
        "$SUBMITGATE_BIN" serve --config "$WORK/sg-unix/submitgate.yaml"
      bench_service sg-unix "unix:submitgate/milter.sock"
      spools+=(--spool "sg-unix=$WORK/sg-unix/spool")
      ;;
    sg-spool)
      write_submitgate_config "$WORK/sg-spool" "$SPOOL_MILTER_PORT" none
      start_bench_process "$SPOOL_MILTER_PORT" "$WORK/sg-spool/submitgate.log" \
        "$SUBMITGATE_BIN" serve --config "$WORK/sg-spool/submitgate.yaml"
      bench_service sg-spool "inet:$E2E_HOST:$SPOOL_MILTER_PORT"
      ;;
    *) die "unknown target $name (postfix, null-milter, null-all, sg-maildir, sg-imap, sg-other, sg-unix, sg-spool)" ;;
    esac
    targets+=(--target "$name=${SERVICE_PORT[$name]}")
    # The milter's process (start_bench_process's), for its CPU time per session.
    if [ "$name" != postfix ]; then
      pids+=(--pid "$name=$LAST_PID")
    fi
  done
  # start_postfix waits for E2E_SUBMISSION_PORT: the first target's (postfix's 10587 may not
  # be among them).
  local first=${BENCH_TARGETS%% *}
  E2E_SUBMISSION_PORT=${SERVICE_PORT[$first]} start_postfix
  local port
  for name in $BENCH_TARGETS; do
    port=${SERVICE_PORT[$name]}
    wait_port "$port" 20 || die "Postfix is not listening on $port"
  done

  local floor=()
  case " $BENCH_TARGETS " in *" null-milter "*) floor=(--floor null-milter) ;; esac
  log "load: $BENCH_TARGETS; connections $BENCH_CONNECTIONS; ${BENCH_SECONDS}s x $BENCH_ROUNDS rounds; Dovecot $BENCH_DOVECOT; workers ${BENCH_WORKERS:-default}"
  local rc=0
  "$SMTP_LOAD_BIN" "${targets[@]}" "${spools[@]}" "${pids[@]}" "${floor[@]}" \
    --connections "$BENCH_CONNECTIONS" --seconds "$BENCH_SECONDS" --rounds "$BENCH_ROUNDS" \
    --users "$BENCH_USERS" --domain contoso.com --password "$E2E_PASSWORD" |
    tee "$WORK/bench.out" || rc=$?
  if [ "$rc" -ne 0 ]; then
    E2E_KEEP=1
    grep -h -iE 'warn|error' "$WORK"/sg-*/submitgate.log 2>/dev/null | tail -n 20 >&2 || true
  fi
  return "$rc"
}

bench_main "$@"
