# shellcheck shell=bash disable=SC2034,SC2016 # sourced; $names are Postfix's, not ours
# Sourced by run.sh: the milter front end (smtpd_milters) on the submission service.
# Scenarios: milter_scenarios.py. Ports and paths come from run.sh's E2E_* variables.

# Ports that must listen before the scenarios start.
SUITE_PORTS=("$E2E_MILTER_PORT")

suite_setup() {
  local milter="inet:$E2E_HOST:$E2E_MILTER_PORT"
  # The default milter_mail_macros already carries {auth_authen} and {auth_type}; say so
  # explicitly (with the queue id), as examples/postfix/main.cf.milter does.
  postconf -e \
    "sg_e2e_milter_mail_macros = i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}" \
    "sg_e2e_milter_helo_macros = {tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}"
  submission_service \
    "smtpd_milters=$milter" \
    'milter_default_action=tempfail' \
    'milter_protocol=6' \
    'milter_mail_macros=$sg_e2e_milter_mail_macros' \
    'milter_helo_macros=$sg_e2e_milter_helo_macros' \
    'smtpd_recipient_restrictions=permit_sasl_authenticated,reject'

  mkdir -p "$E2E_SUITE_DIR/policies"
  # contoso: enabled organization (limit 3). alice: disabled for her mailbox. carol: the
  # concurrency scenario's own mailbox. erin: sends the messages whose copies are counted.
  # nocopy: sent_items disabled, so no copy at all.
  cat >"$E2E_SUITE_DIR/policies/contoso.yaml" <<'EOF'
organization: contoso
domains: [contoso.com]
smtp_client_authentication_disabled: false
max_concurrent_sessions_per_mailbox: 3
sent_items: { enabled: true, folder: "Sent Items" }
mailboxes:
  alice@contoso.com: { smtp_client_authentication_disabled: true }
  bob@contoso.com: {}
  carol@contoso.com: {}
  erin@contoso.com: {}
  nocopy@contoso.com: { sent_items: { enabled: false } }
EOF
  # fabrikam: disabled organization; printer is allowed for its mailbox.
  cat >"$E2E_SUITE_DIR/policies/fabrikam.yaml" <<'EOF'
organization: fabrikam
domains: [fabrikam.com]
smtp_client_authentication_disabled: true
mailboxes:
  printer@fabrikam.com: { smtp_client_authentication_disabled: false }
EOF

  cat >"$E2E_CONFIG" <<EOF
milter: ["$milter"]
policies: $E2E_SUITE_DIR/policies
default_domain: contoso.com
audit: { path: $E2E_AUDIT_LOG }
limiter: { backend: memory }
sent_items:
  spool: $E2E_SUITE_DIR/spool
  # Copies go into each sender's Sent Items in the run's Dovecot, as its master user.
  store:
    backend: imap
    address: "$E2E_HOST:$E2E_IMAP_PORT"
    tls: none
    login: master_user
    master_user: submitgate
    master_password_file: $WORK/master.secret
EOF
}
