#!/usr/bin/env bash
# docs/install.md, run as written: builds the Debian package (twice: the second with a higher
# version, for the guide's upgrade), sets up what the guide assumes exists (Postfix delivering
# to discard with a TLS certificate; Dovecot with two virtual mailboxes and a certificate for
# mail.example.com from a private CA), runs every ```sh block of the guide in order in one
# `bash -euo pipefail`, then checks the result: a real message through Postfix's submission
# service with swaks, its Sent Items copy and audit events, a refusal at AUTH, log rotation,
# the rollback, `systemd-analyze verify` on the installed unit.
#
# RUN AS ROOT ON A THROW-AWAY MACHINE ONLY (CI), or under `flock /work/postfix.lock` where the
# system Postfix is shared: it edits /etc/postfix and /etc/dovecot (both saved first and put
# back on exit, also after a run that was killed), starts and stops the system Postfix and
# Dovecot, installs the package (purged on exit if it was not installed before) and uses
# ports 587, 143 and 10042 on loopback. Without systemd as PID 1, `systemctl` is the stand-in
# tests/e2e/install/systemctl (it runs the unit's ExecStart as its User, see docs/install.md).
#
# Usage: tests/e2e/install_test.sh          (SUBMITGATE_BIN=PATH: package that binary, no build)
#        E2E_KEEP=1 keeps the work dir. Last line: "install e2e: N passed, M failed".
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
DOC=$REPO/docs/install.md
BACKUP=/var/backups/submitgate-e2e-install
PACKAGES=(postfix dovecot-core dovecot-imapd swaks logrotate openssl python3 dpkg-dev systemd)

PASSED=0
FAILED=0
pass() {
  PASSED=$((PASSED + 1))
  printf 'PASS install/%s\n' "$1"
}
fail() {
  FAILED=$((FAILED + 1))
  printf 'FAIL install/%s\n' "$1"
}
check() { # check NAME COMMAND...: PASS when the command succeeds
  local name=$1
  shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}
log() { printf '=== %s\n' "$*" >&2; }
die() {
  printf 'install e2e: setup failed: %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "run me as root (on a throw-away machine)"

# ---------------------------------------------------------------------------------------------
# Packages, and the two .debs.
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

WORK=$(mktemp -d /tmp/sg-install.XXXXXX)
chmod 0755 "$WORK"
if [ -z "${SUBMITGATE_BIN:-}" ]; then
  log "cargo build --release"
  (cd "$REPO" && cargo build --release)
  SUBMITGATE_BIN=$REPO/target/release/submitgate
fi
export SUBMITGATE_BIN
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -n1)
log "building the packages"
DEB=$("$REPO/packaging/build-deb.sh" "$WORK/debs")
NEW_DEB=$(DEB_VERSION="$VERSION+e2e1" "$REPO/packaging/build-deb.sh" "$WORK/debs-new")
[ -f "$DEB" ] && [ -f "$NEW_DEB" ] || die "build-deb.sh wrote no package"

# ---------------------------------------------------------------------------------------------
# Saved state, and the clean-up that puts it back.
STANDIN_STATE=$WORK/systemctl-standin
export SYSTEMCTL_STANDIN_STATE=$STANDIN_STATE
WAS_INSTALLED=
dpkg-query -W -f='${Status}\n' submitgate 2>/dev/null | grep -q '^install ok installed$' &&
  WAS_INSTALLED=1
HAD_USER=
getent passwd submitgate >/dev/null && HAD_USER=1
HAD_VMAIL_DIR=
[ -e /var/vmail ] && HAD_VMAIL_DIR=1
HAD_BACKUPS=
[ -e /var/backups/submitgate ] && HAD_BACKUPS=1
HAD_ETC=
[ -e /etc/submitgate ] && HAD_ETC=1

save_config() {
  if [ -f "$BACKUP/saved" ]; then
    log "restoring the configuration a killed run left in $BACKUP first"
    restore_config
  fi
  mkdir -p "$BACKUP"
  tar -C / -cpf "$BACKUP/etc.tar" etc/postfix etc/dovecot
  : >"$BACKUP/saved"
}
restore_config() {
  [ -f "$BACKUP/saved" ] || return 0
  rm -rf /etc/postfix /etc/dovecot
  tar -C / -xpf "$BACKUP/etc.tar"
  rm -rf "$BACKUP"
}

cleanup() {
  local rc=$?
  set +e
  PATH=$E2E_DIR/install:$PATH systemctl stop submitgate >/dev/null 2>&1
  postfix stop >/dev/null 2>&1
  doveadm stop >/dev/null 2>&1
  if [ -z "$WAS_INSTALLED" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y submitgate >/dev/null 2>&1
    if [ -z "$HAD_USER" ]; then
      deluser --system --quiet submitgate >/dev/null 2>&1
      delgroup --system --quiet submitgate >/dev/null 2>&1
    fi
    # Purging keeps files the guide added (a policy file); they would belong to a group that
    # no longer exists.
    [ -n "$HAD_ETC" ] || rm -rf /etc/submitgate
  fi
  restore_config
  [ -n "$HAD_VMAIL_DIR" ] || rm -rf /var/vmail
  [ -n "$HAD_BACKUPS" ] || rm -rf /var/backups/submitgate
  rm -f /var/log/postfix-install-e2e.log
  if [ "$rc" -eq 0 ] && [ "${E2E_KEEP:-0}" != 1 ]; then
    rm -rf "$WORK"
  else
    echo "install e2e: work dir kept: $WORK" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

postfix status >/dev/null 2>&1 && postfix stop >/dev/null 2>&1
doveadm stop >/dev/null 2>&1 || true
for port in 587 143 10042; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is in use"
  fi
done
save_config

# ---------------------------------------------------------------------------------------------
# What the guide assumes exists: a private CA and a certificate for mail.example.com (Dovecot's
# IMAP, Postfix's submission TLS), Dovecot with virtual mailboxes, Postfix on loopback.
export MAIL_DOMAIN=example.com MAIL_HOST=mail.example.com
export TEST_PASSWORD='install-e2e-Pw-3'
export CA_FILE=$WORK/ca.pem # readable by the submitgate user, as a CA file must be
export DEB NEW_DEB
log "the mail system the guide starts from"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=submitgate e2e CA" \
  -keyout "$WORK/ca.key" -out "$CA_FILE" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$MAIL_HOST" -keyout /etc/dovecot/private/e2e-mail.key \
  -out "$WORK/mail.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s\n' "$MAIL_HOST" >"$WORK/san.ext"
openssl x509 -req -in "$WORK/mail.csr" -CA "$CA_FILE" -CAkey "$WORK/ca.key" -CAcreateserial \
  -days 2 -extfile "$WORK/san.ext" -out /etc/dovecot/private/e2e-mail.pem 2>/dev/null
chmod 0644 "$CA_FILE" /etc/dovecot/private/e2e-mail.pem
chmod 0600 /etc/dovecot/private/e2e-mail.key

id vmail >/dev/null 2>&1 ||
  useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin vmail
install -d -o vmail -g vmail -m 0750 /var/vmail
install -m 0640 -o root -g dovecot /dev/null /etc/dovecot/users
for u in alice bob; do
  printf '%s@%s:{PLAIN}%s::::::\n' "$u" "$MAIL_DOMAIN" "$TEST_PASSWORD" >>/etc/dovecot/users
done
# The site's own settings: virtual users from a passwd-file instead of the system's (PAM).
sed -i 's/^!include auth-system.conf.ext/#&/' /etc/dovecot/conf.d/10-auth.conf
cat >/etc/dovecot/local.conf <<EOF
# The mail system docs/install.md starts from (tests/e2e/install_test.sh).
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = </etc/dovecot/private/e2e-mail.pem
ssl_key = </etc/dovecot/private/e2e-mail.key
auth_mechanisms = plain login
first_valid_uid = $(id -u vmail)
mail_location = maildir:/var/vmail/%d/%n/Maildir
passdb {
  driver = passwd-file
  args = scheme=PLAIN /etc/dovecot/users
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=/var/vmail/%d/%n
}
EOF
doveconf -n >/dev/null || die "doveconf rejects the base configuration"
dovecot || die "dovecot did not start"

[ -f /etc/postfix/main.cf ] || : >/etc/postfix/main.cf
[ -f /etc/postfix/master.cf ] || cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf
postconf -e \
  'compatibility_level = 3.6' \
  "myhostname = $MAIL_HOST" \
  "mydomain = $MAIL_DOMAIN" \
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
  'maillog_file = /var/log/postfix-install-e2e.log' \
  'smtpd_tls_chain_files = /etc/dovecot/private/e2e-mail.key, /etc/dovecot/private/e2e-mail.pem' \
  'smtpd_tls_security_level = may'
[ -n "$(postconf -M postlog/unix-dgram 2>/dev/null)" ] ||
  postconf -M 'postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd'
postfix start >/dev/null || die "postfix start failed"

# ---------------------------------------------------------------------------------------------
# The guide.
log "running the sh blocks of docs/install.md"
python3 - "$DOC" >"$WORK/guide.sh" <<'EOF'
import sys
text = open(sys.argv[1]).read().split("\n")
out, block, n = [], None, 0
for line in text:
    if block is None and line.strip() == "```sh":
        block, n = [], n + 1
    elif block is not None and line.strip() == "```":
        out.append(f"echo '--- docs/install.md, sh block {n}' >&2")
        out.extend(block)
        block = None
    elif block is not None:
        block.append(line)
print("\n".join(out))
EOF
[ "$(grep -c '^echo .--- docs/install.md' "$WORK/guide.sh")" -ge 8 ] ||
  die "found fewer sh blocks in docs/install.md than expected"
guide_rc=0
(cd "$WORK" && PATH=$E2E_DIR/install:$PATH bash -euo pipefail -x "$WORK/guide.sh") \
  >"$WORK/guide.out" 2>&1 || guide_rc=$?
if [ "$guide_rc" -eq 0 ]; then
  pass "every command of docs/install.md succeeds"
else
  fail "every command of docs/install.md succeeds (exit $guide_rc; last lines below)"
  tail -n 60 "$WORK/guide.out"
fi

# ---------------------------------------------------------------------------------------------
# The result.
export PATH=$E2E_DIR/install:$PATH
AUDIT=/var/log/submitgate/audit.log

check "the unit passes systemd-analyze verify" \
  systemd-analyze verify /lib/systemd/system/submitgate.service
check "check as the submitgate user" \
  runuser -u submitgate -- submitgate check --config /etc/submitgate/submitgate.yaml
pid=$(cat "$STANDIN_STATE/main.pid" 2>/dev/null || true)
check "the daemon runs as submitgate" \
  test "$(ps -o user= -p "${pid:-0}" 2>/dev/null | tr -d ' ')" = submitgate
check "the milter socket is submitgate:postfix 0660 in a 2750 directory" \
  test "$(stat -c '%U:%G %a' /var/spool/postfix/submitgate/milter.sock 2>/dev/null)" = "submitgate:postfix 660" -a \
  "$(stat -c '%U:%G %a' /var/spool/postfix/submitgate)" = "submitgate:postfix 2750"
check "master-users is root:dovecot 0640" \
  test "$(stat -c '%U:%G %a' /etc/dovecot/master-users)" = "root:dovecot 640"
check "the package's version after the rollback" \
  test "$(dpkg-query -W -f='${Version}' submitgate)" = "$VERSION"

# send SUBJECT USER: one message through the submission service (TLS, AUTH PLAIN).
send() {
  swaks --server 127.0.0.1:587 --tls --auth PLAIN --auth-user "$2" --auth-password "$TEST_PASSWORD" \
    --from "$2" --to "someone@example.net" --header "Subject: $1" >"$WORK/swaks.out" 2>&1
}
# wait_for SECONDS COMMAND...: until the command succeeds.
wait_for() {
  local secs=$1 i
  shift
  for ((i = 0; i < secs * 10; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}
sent_copies() { # sent_copies SUBJECT: how many files in alice's Sent Items carry the subject
  grep -l "^Subject: $1" "/var/vmail/$MAIL_DOMAIN/alice/Maildir/.Sent Items/cur/"* 2>/dev/null | wc -l
}

subject="install e2e $(date +%s%N)"
if send "$subject" "alice@$MAIL_DOMAIN"; then
  pass "a message through Postfix's submission service with the milter"
else
  fail "a message through Postfix's submission service with the milter"
  cat "$WORK/swaks.out"
fi
copies_are() { test "$(sent_copies "$1")" = "$2"; }
check "its copy in alice's Sent Items" wait_for 20 copies_are "$subject" 1
copy=$(grep -l "^Subject: $subject" "/var/vmail/$MAIL_DOMAIN/alice/Maildir/.Sent Items/cur/"* 2>/dev/null | head -n1 || true)
check "the copy is flagged \\Seen (Maildir :2,S)" bash -c '[[ "$1" =~ :2,[A-Z]*S[A-Z]*$ ]]' _ "$copy"
# audit_has.py FILE MAILBOX: the mailbox's allowed submission_decision and imap sent_copy_stored.
cat >"$WORK/audit_has.py" <<'EOF'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
mine = [e for e in events if e.get("mailbox") == sys.argv[2]]
ok = any(e["event"] == "submission_decision" and e.get("decision") == "allow" for e in mine) \
    and any(e["event"] == "sent_copy_stored" and e.get("store") == "imap" for e in mine)
sys.exit(0 if ok else 1)
EOF
check "the audit log has the decision and sent_copy_stored" \
  wait_for 10 python3 "$WORK/audit_has.py" "$AUDIT" "alice@$MAIL_DOMAIN"
check "one copy only (once the audit log says it is stored)" copies_are "$subject" 1

submitgate mailbox set "bob@$MAIL_DOMAIN" --smtp-client-authentication-disabled true \
  --config /etc/submitgate/submitgate.yaml >/dev/null
# The policy directory is watched; `reload` makes it certain before the next login.
submitgate reload --config /etc/submitgate/submitgate.yaml >/dev/null
if send "refused $subject" "bob@$MAIL_DOMAIN"; then
  fail "a disabled mailbox is refused at AUTH (it was accepted)"
elif grep -q '535 5.7.8 .*SmtpClientAuthentication is disabled for the Mailbox' "$WORK/swaks.out"; then
  pass "a disabled mailbox is refused at AUTH through Dovecot's auth policy"
else
  fail "a disabled mailbox is refused at AUTH through Dovecot's auth policy"
  cat "$WORK/swaks.out"
fi
check "the refusal is audited as auth_refused_by_policy" \
  wait_for 10 grep -q "\"event\":\"auth_refused_by_policy\".*\"mailbox\":\"bob@$MAIL_DOMAIN\"" "$AUDIT"

# The guide rotated the audit log before the upgrade restarted the daemon; rotate again now,
# with the daemon running since: SIGUSR1 must make it write the next events to the new file.
check "the guide's rotation moved the audit log away" test -e /var/log/submitgate/audit.log.1
logrotate --force /etc/logrotate.d/submitgate
check "logrotate moved the audit log away again" test -s /var/log/submitgate/audit.log.1
rotated_lines=$(wc -l </var/log/submitgate/audit.log.1 || echo missing)
subject2="after rotation $(date +%s%N)"
send "$subject2" "alice@$MAIL_DOMAIN" || true
check "after SIGUSR1 the next events go to the new audit log" \
  wait_for 20 grep -q '"event":"sent_copy_stored"' "$AUDIT"
check "and none to the rotated file" test "$(wc -l </var/log/submitgate/audit.log.1)" = "$rotated_lines"
check "the new audit log is submitgate's, mode 0640" \
  test "$(stat -c '%U %a' "$AUDIT")" = "submitgate 640"

check "submitgate stops with exit status 0" systemctl stop submitgate

if [ "$FAILED" -gt 0 ]; then
  for f in "$STANDIN_STATE/submitgate.log" /var/log/postfix-install-e2e.log "$AUDIT"; do
    [ -f "$f" ] || continue
    printf '\n----- %s (last 80 lines) -----\n' "$f"
    tail -n 80 "$f"
  done
  printf '\n----- the guide, traced (last 80 lines) -----\n'
  tail -n 80 "$WORK/guide.out"
fi
echo "install e2e took $SECONDS s (package builds included)"
echo "install e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
