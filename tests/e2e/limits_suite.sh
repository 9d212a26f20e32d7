# shellcheck shell=bash disable=SC2034,SC2016 # sourced; $names are Postfix's, not ours
# Sourced by run.sh: Exchange's sending limits and restricted senders (issue 15) through real
# Postfix. The usual submission service ($E2E_SUBMISSION_PORT) has submitgate as its milter; a
# second one ($E2E_LIMITS_POLICY_PORT) asks the policy front end of the same submitgate, so
# that both front ends meet real Postfix. Scenarios: limits_scenarios.py.

# The second submission service (policy front end); a busy port is replaced by a free one.
export E2E_LIMITS_POLICY_PORT=${E2E_LIMITS_POLICY_PORT:-10588}
if port_in_use "$E2E_LIMITS_POLICY_PORT"; then
  E2E_LIMITS_POLICY_PORT=$(free_port)
fi
LIMITS_POLICY_SERVICE="$E2E_HOST:$E2E_LIMITS_POLICY_PORT/inet"

# Ports that must listen before the scenarios start.
SUITE_PORTS=("$E2E_MILTER_PORT" "$E2E_POLICY_PORT")

suite_setup() {
  local milter="inet:$E2E_HOST:$E2E_MILTER_PORT"
  local policy="inet:$E2E_HOST:$E2E_POLICY_PORT"
  postconf -e \
    "sg_e2e_milter_mail_macros = i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}" \
    "sg_e2e_policy_recipient_restrictions = check_policy_service $policy, permit_sasl_authenticated, reject" \
    "sg_e2e_policy_eod_restrictions = check_policy_service $policy"
  submission_service \
    "smtpd_milters=$milter" \
    'milter_default_action=tempfail' \
    'milter_protocol=6' \
    'milter_mail_macros=$sg_e2e_milter_mail_macros' \
    'smtpd_recipient_restrictions=permit_sasl_authenticated,reject'
  # The policy front end's service: like submission_service, on its own port.
  smtpd_service "$LIMITS_POLICY_SERVICE" "$E2E_LIMITS_POLICY_PORT" n \
    postfix/submission-e2e-policy smtpd_tls_security_level=none \
    'smtpd_recipient_restrictions=$sg_e2e_policy_recipient_restrictions' \
    'smtpd_end_of_data_restrictions=$sg_e2e_policy_eod_restrictions'

  mkdir -p "$E2E_SUITE_DIR/policies"
  # Exchange's sending limits for everyone (30 messages a minute, 10 000 recipients a day, 500
  # per message). erin: an outbound spam threshold that blocks until released. grace: one
  # that blocks for the rest of the day (the restart scenario).
  cat >"$E2E_SUITE_DIR/policies/contoso.yaml" <<'EOF'
organization: contoso
domains: [contoso.com]
mailboxes:
  erin@contoso.com:
    outbound_spam: { recipient_limit_external_per_hour: 3, action_when_threshold_reached: block_user }
EOF
  cat >"$E2E_SUITE_DIR/policies/fabrikam.yaml" <<'EOF'
organization: fabrikam
domains: [fabrikam.com]
mailboxes:
  grace@fabrikam.com:
    outbound_spam: { recipient_limit_per_day: 2, action_when_threshold_reached: block_user_for_today }
EOF

  cat >"$E2E_CONFIG" <<EOF
milter: ["$milter"]
policy: ["$policy"]
control: "unix:$E2E_SUITE_DIR/control.sock"
policies: $E2E_SUITE_DIR/policies
default_domain: contoso.com
audit: { path: $E2E_AUDIT_LOG }
limiter: { backend: memory, state_dir: $E2E_SUITE_DIR/state }
sent_items: { spool: $E2E_SUITE_DIR/spool }
EOF
}

suite_teardown() {
  postconf -MX "$LIMITS_POLICY_SERVICE" 2>/dev/null || true
}
