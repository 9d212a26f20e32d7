# shellcheck shell=bash disable=SC2034,SC2016 # sourced; $names are Postfix's, not ours
# Sourced by run.sh: the milter front end on a unix socket inside Postfix's chroot, the
# transport README recommends ("Postfix set-up (milter)"), set up exactly as README says:
#   - a `submitgate` system user; the directory /var/spool/postfix/submitgate owned by
#     submitgate, group postfix, mode 2750 (setgid: the socket gets group postfix);
#   - submitgate runs as that user with `unix_socket_mode: "0660"` and listens on
#     unix:/var/spool/postfix/submitgate/milter.sock;
#   - the submission service is chrooted (as Debian's master.cf has it) and names the socket
#     relative to the queue directory: smtpd_milters = unix:submitgate/milter.sock.
# The milter suite's policies and Dovecot store are reused; scenarios: milterunix_scenarios.py.

# shellcheck source=milter_suite.sh
source "$E2E_DIR/milter_suite.sh"
eval "milter_suite_setup() $(declare -f suite_setup | tail -n +2)"

MILTER_DIR=/var/spool/postfix/submitgate
export E2E_MILTER_SOCKET=$MILTER_DIR/milter.sock
# The daemon also listens on TCP (nothing uses it): run.sh waits for that port, bound after
# the socket, to know the daemon is up.
SUITE_PORTS=("$E2E_MILTER_PORT")
E2E_RUN_AS=submitgate
SUBMISSION_CHROOT=y

suite_setup() {
  milter_suite_setup
  id submitgate >/dev/null 2>&1 ||
    useradd --system --user-group --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin submitgate
  # The recipe.
  rm -rf "$MILTER_DIR"
  install -d -o submitgate -g postfix -m 2750 "$MILTER_DIR"
  submission_service \
    'smtpd_milters=unix:submitgate/milter.sock' \
    'milter_default_action=tempfail' \
    'milter_protocol=6' \
    'milter_mail_macros=$sg_e2e_milter_mail_macros' \
    'milter_helo_macros=$sg_e2e_milter_helo_macros' \
    'smtpd_recipient_restrictions=permit_sasl_authenticated,reject'
  sed -i "s|^milter: .*|milter: [\"unix:$E2E_MILTER_SOCKET\", \"inet:$E2E_HOST:$E2E_MILTER_PORT\"]\nunix_socket_mode: \"0660\"|" "$E2E_CONFIG"
  grep -q '^unix_socket_mode: "0660"$' "$E2E_CONFIG" || die "$E2E_CONFIG: milter line not replaced"
  # What the daemon writes (spool, audit log) and reads (the IMAP master password).
  chown -R submitgate: "$E2E_SUITE_DIR"
  chgrp submitgate "$WORK/master.secret"
  chmod 0640 "$WORK/master.secret"
  # Debian prepares the chroot this way before starting Postfix (resolv.conf, hosts, ...).
  if [ -x /usr/lib/postfix/configure-instance.sh ]; then
    /usr/lib/postfix/configure-instance.sh - >/dev/null
  fi
}

suite_teardown() {
  chgrp root "$WORK/master.secret"
  chmod 0600 "$WORK/master.secret"
  rm -rf "$MILTER_DIR"
}
