# shellcheck shell=bash disable=SC2034,SC2016 # sourced; $names are Postfix's, not ours
# Sourced by run.sh: authentication policies (issue 16) — Basic authentication retired for SMTP
# AUTH, TLS 1.0/1.1 refused, TLS required, each enforced or report_only — with real OAuth.
# Scenarios: authpol_scenarios.py. Ports and paths come from run.sh's E2E_* variables.
#
# One submitgate with all three front ends, reading one policy directory:
#   - the milter on the submission service 127.0.0.1:10587 (refusal at MAIL);
#   - the policy front end on a second submission service on $E2E_AUTHPOL_POLICY_SMTP_PORT
#     (check_policy_service at RCPT and END-OF-DATA);
#   - the Dovecot auth policy endpoint, which Dovecot asks after every password or token check
#     when the scenarios switch its hook on (refusal at AUTH).
# Both submission services offer STARTTLS with a throwaway CA and server certificate made
# here, and accept TLS 1.0/1.1: Debian 12's OpenSSL refuses them at its default security level
# (MinProtocol TLSv1.2, SECLEVEL 2), so THIS Postfix service - and only it, through
# `-o tls_config_file=` - reads an OpenSSL configuration with MinProtocol TLSv1 and SECLEVEL 0.
# Nothing else on the machine changes; run.sh restores main.cf/master.cf afterwards.
#
# Dovecot (shared with the other suites) gets OAuth through an "!include_try" of
# $E2E_AUTHPOL_DOVECOT_CONF: `auth_mechanisms = plain login xoauth2 oauthbearer` and an
# `oauth2` passdb whose token introspection goes to a small HTTP server the scenarios start on
# $E2E_OAUTH_PORT. The scenarios switch that file between `.oauth` (no auth policy hook) and
# `.hook` (the hook on, with mechanism=%{mech} secured=%{secured}); suite_teardown removes it.

E2E_OAUTH_PORT=$(free_port)
E2E_AUTHPOL_POLICY_SMTP_PORT=$(free_port)
export E2E_OAUTH_PORT E2E_AUTHPOL_POLICY_SMTP_PORT
SUITE_PORTS=("$E2E_MILTER_PORT" "$E2E_POLICY_PORT" "$E2E_AUTH_POLICY_PORT")

export E2E_SUBMITGATE_BIN="$SUBMITGATE_BIN"
export E2E_DOVECOT_CONF="$WORK/dovecot.conf"
export E2E_AUTHPOL_DOVECOT_CONF="$E2E_SUITE_DIR/dovecot-authpol.conf"
export E2E_AUTHPOL_TLS_DIR="$E2E_SUITE_DIR/tls"
export E2E_AUTH_POLICY_KEY_FILE="$E2E_SUITE_DIR/auth-policy.key"
AUTHPOL_POLICY_SERVICE="$E2E_HOST:$E2E_AUTHPOL_POLICY_SMTP_PORT/inet"

# A throwaway CA and a server certificate for mta.submitgate-e2e.test and 127.0.0.1 (the
# scenarios verify it against the CA), and the legacy OpenSSL configuration for Postfix.
authpol_tls_files() {
  local d=$E2E_AUTHPOL_TLS_DIR
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=submitgate e2e throwaway CA' \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj '/CN=mta.submitgate-e2e.test' \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName = DNS:mta.submitgate-e2e.test, IP:127.0.0.1\n' >"$d/san.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/san.ext" -out "$d/server.pem" 2>/dev/null
  chmod 0600 "$d/ca.key" "$d/server.key"
  # The test's Postfix only: TLS 1.0/1.1 possible (OpenSSL 3 needs SECLEVEL 0 for them).
  cat >"$d/openssl-legacy.cnf" <<'EOF'
# submitgate e2e (authpol suite): lets this Postfix service speak TLS 1.0/1.1.
openssl_conf = sg_e2e_legacy
[sg_e2e_legacy]
ssl_conf = sg_e2e_ssl
[sg_e2e_ssl]
system_default = sg_e2e_tls
[sg_e2e_tls]
MinProtocol = TLSv1
CipherString = DEFAULT:@SECLEVEL=0
EOF
}

# The TLS options both submission services share.
authpol_tls_options() {
  local d=$E2E_AUTHPOL_TLS_DIR
  printf '%s\n' \
    smtpd_tls_security_level=may \
    "smtpd_tls_cert_file=$d/server.pem" \
    "smtpd_tls_key_file=$d/server.key" \
    'smtpd_tls_protocols=>=TLSv1' \
    "tls_config_file=$d/openssl-legacy.cnf" \
    smtpd_tls_loglevel=1
}

# authpol_dovecot_settings FILE HOOK: OAuth for Dovecot, with the auth policy hook (yes/no).
authpol_dovecot_settings() {
  cat >"$1" <<EOF
# submitgate e2e (authpol suite): OAuth 2.0 bearer tokens through token introspection.
auth_mechanisms = plain login xoauth2 oauthbearer
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $E2E_SUITE_DIR/dovecot-oauth2.conf.ext
}
EOF
  [ "$2" = yes ] || return 0
  cat >>"$1" <<EOF
# The auth policy hook, as examples/dovecot/auth-policy.conf has it: the mechanism and
# whether Postfix said the login came over TLS go to submitgate.
auth_policy_server_url = http://$E2E_HOST:$E2E_AUTH_POLICY_PORT/
auth_policy_server_api_header = X-API-Key:$(cat "$E2E_AUTH_POLICY_KEY_FILE")
auth_policy_hash_nonce = submitgate-e2e-nonce
auth_policy_request_attributes = login=%{requested_username} pwhash=%{hashed_password} remote=%{rip} device_id=%{client_id} protocol=%s session_id=%{session} mechanism=%{mech} secured=%{secured}
auth_policy_check_before_auth = no
auth_policy_check_after_auth = yes
auth_policy_report_after_auth = yes
auth_policy_reject_on_fail = no
EOF
}

suite_setup() {
  authpol_tls_files
  local tls_opts
  mapfile -t tls_opts < <(authpol_tls_options)

  # 10587: the milter. {auth_type} comes with MAIL by default; {tls_version} only with HELO,
  # and Postfix 3.7 takes AUTH and MAIL after STARTTLS without a new EHLO, so the milter would
  # never see the TLS version of such a client: add {tls_version} to the MAIL macros, as
  # examples/postfix/main.cf.milter does.
  postconf -e \
    "sg_e2e_authpol_milter_mail_macros = i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer} {tls_version}"
  submission_service \
    "${tls_opts[@]}" \
    "smtpd_milters=inet:$E2E_HOST:$E2E_MILTER_PORT" \
    'milter_default_action=tempfail' \
    'milter_protocol=6' \
    'milter_mail_macros=$sg_e2e_authpol_milter_mail_macros' \
    'smtpd_recipient_restrictions=permit_sasl_authenticated,reject'

  # The second service: the policy front end at RCPT and END-OF-DATA.
  local policy="inet:$E2E_HOST:$E2E_POLICY_PORT"
  postconf -e \
    "sg_e2e_authpol_recipient_restrictions = check_policy_service $policy, permit_sasl_authenticated, reject" \
    "sg_e2e_authpol_eod_restrictions = check_policy_service $policy"
  smtpd_service "$AUTHPOL_POLICY_SERVICE" "$E2E_AUTHPOL_POLICY_SMTP_PORT" n \
    postfix/submission-e2e-policy "${tls_opts[@]}" \
    'smtpd_recipient_restrictions=$sg_e2e_authpol_recipient_restrictions' \
    'smtpd_end_of_data_restrictions=$sg_e2e_authpol_eod_restrictions'

  mkdir -p "$E2E_SUITE_DIR/policies"
  # contoso: the defaults (Basic allowed, legacy TLS refused, TLS not required, enforce), with
  # alice off Basic authentication, erin allowed TLS 1.0/1.1, scanner required to use TLS.
  cat >"$E2E_SUITE_DIR/policies/contoso.yaml" <<'EOF'
organization: contoso
domains: [contoso.com]
smtp_client_authentication_disabled: false
mailboxes:
  alice@contoso.com: { allow_basic_auth_smtp: false }
  erin@contoso.com: { allow_legacy_tls_clients: true }
  scanner@contoso.com: { require_tls: true }
  bob@contoso.com: {}
EOF
  # fabrikam tries before it enforces: every rule on, every rule report_only. printer keeps
  # Basic authentication for its own mailbox.
  cat >"$E2E_SUITE_DIR/policies/fabrikam.yaml" <<'EOF'
organization: fabrikam
domains: [fabrikam.com]
smtp_client_authentication_disabled: false
allow_basic_auth_smtp: false
basic_auth_mode: report_only
require_tls: true
tls_mode: report_only
mailboxes:
  printer@fabrikam.com: { allow_basic_auth_smtp: true }
EOF

  (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$E2E_AUTH_POLICY_KEY_FILE")
  cat >"$E2E_CONFIG" <<EOF
milter: ["inet:$E2E_HOST:$E2E_MILTER_PORT"]
policy: ["$policy"]
auth_policy: ["inet:$E2E_HOST:$E2E_AUTH_POLICY_PORT"]
auth_policy_api_key_file: $E2E_AUTH_POLICY_KEY_FILE
control: "unix:$E2E_SUITE_DIR/control.sock"
policies: $E2E_SUITE_DIR/policies
default_domain: contoso.com
audit: { path: $E2E_AUDIT_LOG }
limiter: { backend: memory }
EOF

  # Dovecot: OAuth through introspection on $E2E_OAUTH_PORT; the hook is switched on later.
  cat >"$E2E_SUITE_DIR/dovecot-oauth2.conf.ext" <<EOF
introspection_mode = post
introspection_url = http://$E2E_HOST:$E2E_OAUTH_PORT/introspect
username_attribute = username
active_attribute = active
active_value = true
force_introspection = yes
EOF
  authpol_dovecot_settings "$E2E_AUTHPOL_DOVECOT_CONF.oauth" no
  authpol_dovecot_settings "$E2E_AUTHPOL_DOVECOT_CONF.hook" yes
  cp "$E2E_AUTHPOL_DOVECOT_CONF.oauth" "$E2E_AUTHPOL_DOVECOT_CONF"
  dovecot_include "$E2E_AUTHPOL_DOVECOT_CONF" "the authpol settings"
}

suite_teardown() {
  postconf -MX "$AUTHPOL_POLICY_SERVICE" 2>/dev/null || true
  # Dovecot goes back to PLAIN/LOGIN without OAuth for the suites after this one.
  dovecot_uninclude "$E2E_AUTHPOL_DOVECOT_CONF"
}
