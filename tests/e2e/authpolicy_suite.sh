# shellcheck shell=bash disable=SC2034,SC2016 # sourced; $names are Postfix's, not ours
# Sourced by run.sh: refusing at AUTH through Dovecot's auth policy hook (issue 7).
# Scenarios: authpolicy_scenarios.py. Ports and paths come from run.sh's E2E_* variables.
#
# Two submitgate processes, so that "submitgate stopped" can be tested honestly:
#   - the one run.sh starts and stops ($E2E_CONFIG): the auth policy endpoint Dovecot asks at
#     AUTH, with an API key and a control socket; the scenarios stop it to see what Dovecot does
#     without it;
#   - a second one started here ($E2E_SUITE_DIR/policy.yaml): the policy front end
#     (check_policy_service) on the submission service, the MAIL/RCPT-stage second line.
#     Both read the same policy directory.
# Dovecot (shared with the other suites) gets its auth_policy_* settings through an
# "!include_try $E2E_SUITE_DIR/dovecot-auth-policy.conf", appended here and removed by
# suite_teardown; the scenarios rewrite that file (reject_on_fail, policy off for the
# benchmark) and reload Dovecot.

SUITE_PORTS=("$E2E_AUTH_POLICY_PORT")

# For the scenarios: the binary (`submitgate mailbox set`), Dovecot's config (reload).
export E2E_SUBMITGATE_BIN="$SUBMITGATE_BIN"
export E2E_DOVECOT_CONF="$WORK/dovecot.conf"
export E2E_DOVECOT_POLICY_CONF="$E2E_SUITE_DIR/dovecot-auth-policy.conf"
export E2E_AUTH_POLICY_KEY_FILE="$E2E_SUITE_DIR/auth-policy.key"
export E2E_POLICY_INSTANCE_AUDIT_LOG="$E2E_SUITE_DIR/policy-audit.log"
AUTHPOLICY_POLICY_PID=

# authpolicy_dovecot_settings FILE REJECT_ON_FAIL: an auth policy block for Dovecot.
authpolicy_dovecot_settings() {
  cat >"$1" <<EOF
# submitgate e2e (authpolicy suite): Dovecot asks submitgate after the password check.
auth_policy_server_url = http://$E2E_HOST:$E2E_AUTH_POLICY_PORT/
auth_policy_server_api_header = X-API-Key:$(cat "$E2E_AUTH_POLICY_KEY_FILE")
auth_policy_hash_nonce = submitgate-e2e-nonce
auth_policy_request_attributes = login=%{requested_username} pwhash=%{hashed_password} remote=%{rip} device_id=%{client_id} protocol=%s session_id=%{session} mechanism=%{mech}
auth_policy_check_before_auth = no
auth_policy_check_after_auth = yes
auth_policy_report_after_auth = yes
auth_policy_reject_on_fail = $2
auth_policy_server_timeout_msecs = 2000
EOF
}

suite_setup() {
  local policy="inet:$E2E_HOST:$E2E_POLICY_PORT"
  postconf -e \
    "sg_e2e_authpolicy_recipient_restrictions = check_policy_service $policy, permit_sasl_authenticated, reject" \
    "sg_e2e_authpolicy_eod_restrictions = check_policy_service $policy"
  submission_service \
    'smtpd_recipient_restrictions=$sg_e2e_authpolicy_recipient_restrictions' \
    'smtpd_end_of_data_restrictions=$sg_e2e_authpolicy_eod_restrictions'

  mkdir -p "$E2E_SUITE_DIR/policies"
  # contoso: enabled. alice: disabled for her mailbox. bob, erin: inherit. frank (no domain)
  # resolves through default_domain.
  cat >"$E2E_SUITE_DIR/policies/contoso.yaml" <<'EOF'
organization: contoso
domains: [contoso.com]
smtp_client_authentication_disabled: false
mailboxes:
  alice@contoso.com: { smtp_client_authentication_disabled: true }
  bob@contoso.com: {}
EOF
  # fabrikam: disabled organization; printer allowed for its mailbox; dave inherits.
  cat >"$E2E_SUITE_DIR/policies/fabrikam.yaml" <<'EOF'
organization: fabrikam
domains: [fabrikam.com]
smtp_client_authentication_disabled: true
mailboxes:
  printer@fabrikam.com: { smtp_client_authentication_disabled: false }
EOF

  # The shared secret Dovecot sends (auth_policy_server_api_header).
  (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$E2E_AUTH_POLICY_KEY_FILE")

  cat >"$E2E_CONFIG" <<EOF
auth_policy: ["inet:$E2E_HOST:$E2E_AUTH_POLICY_PORT"]
auth_policy_api_key_file: $E2E_AUTH_POLICY_KEY_FILE
control: "unix:$E2E_SUITE_DIR/control.sock"
policies: $E2E_SUITE_DIR/policies
default_domain: contoso.com
audit: { path: $E2E_AUDIT_LOG }
EOF
  cat >"$E2E_SUITE_DIR/policy.yaml" <<EOF
policy: ["$policy"]
policies: $E2E_SUITE_DIR/policies
default_domain: contoso.com
audit: { path: $E2E_POLICY_INSTANCE_AUDIT_LOG }
EOF
  (cd "$WORK" && exec "$SUBMITGATE_BIN" serve --config "$E2E_SUITE_DIR/policy.yaml") \
    >>"$E2E_SUITE_DIR/policy-instance.log" 2>&1 &
  AUTHPOLICY_POLICY_PID=$!
  echo "$AUTHPOLICY_POLICY_PID" >"$E2E_SUITE_DIR/policy-instance.pid"
  wait_port "$E2E_POLICY_PORT" 20 "$AUTHPOLICY_POLICY_PID" ||
    die "the policy-front-end submitgate did not listen on $E2E_POLICY_PORT (see $E2E_SUITE_DIR/policy-instance.log)"

  # The variants the scenarios switch between (copied over the included file, then reload).
  authpolicy_dovecot_settings "$E2E_DOVECOT_POLICY_CONF.on" no
  authpolicy_dovecot_settings "$E2E_DOVECOT_POLICY_CONF.reject" yes
  echo '# submitgate e2e: no auth policy (benchmark baseline)' >"$E2E_DOVECOT_POLICY_CONF.off"
  cp "$E2E_DOVECOT_POLICY_CONF.on" "$E2E_DOVECOT_POLICY_CONF"
  dovecot_include "$E2E_DOVECOT_POLICY_CONF" "the auth policy settings"
}

suite_teardown() {
  if [ -n "$AUTHPOLICY_POLICY_PID" ]; then
    kill -TERM "$AUTHPOLICY_POLICY_PID" 2>/dev/null || true
    local rc=0
    wait "$AUTHPOLICY_POLICY_PID" 2>/dev/null || rc=$?
    AUTHPOLICY_POLICY_PID=
    rm -f "$E2E_SUITE_DIR/policy-instance.pid"
    if [ "$rc" -eq 0 ]; then
      pass "$E2E_SUITE/policy-front-end submitgate exits 0 on SIGTERM"
    else
      fail "$E2E_SUITE/policy-front-end submitgate exits 0 on SIGTERM (status $rc)"
      tail -n 50 "$E2E_SUITE_DIR/policy-instance.log"
    fi
  fi
  # Dovecot goes back to no auth policy for the suites after this one.
  dovecot_uninclude "$E2E_DOVECOT_POLICY_CONF"
}
