# shellcheck shell=bash disable=SC2034,SC2016 # sourced; $names are Postfix's, not ours
# Sourced by run.sh: the policy delegation front end (check_policy_service) on the submission
# service. Scenarios: policy_scenarios.py. Ports and paths come from run.sh's E2E_* variables.

# Ports that must listen before the scenarios start.
SUITE_PORTS=("$E2E_POLICY_PORT")

suite_setup() {
  local policy="inet:$E2E_HOST:$E2E_POLICY_PORT"
  # Lists with spaces cannot go through `postconf -P`: they live in main.cf parameters.
  postconf -e \
    "sg_e2e_policy_recipient_restrictions = check_policy_service $policy, permit_sasl_authenticated, reject" \
    "sg_e2e_policy_eod_restrictions = check_policy_service $policy"
  submission_service \
    'smtpd_recipient_restrictions=$sg_e2e_policy_recipient_restrictions' \
    'smtpd_end_of_data_restrictions=$sg_e2e_policy_eod_restrictions'

  mkdir -p "$E2E_SUITE_DIR/policies"
  # contoso: enabled organization. alice: disabled for her mailbox (Set-CASMailbox $true).
  # bob: inherits ($null). carol: the concurrency scenario's own mailbox (org limit 3).
  # scanner: a per-mailbox limit of 1. frank (no domain) resolves through default_domain.
  cat >"$E2E_SUITE_DIR/policies/contoso.yaml" <<'EOF'
organization: contoso
domains: [contoso.com]
smtp_client_authentication_disabled: false
max_concurrent_sessions_per_mailbox: 3
mailboxes:
  alice@contoso.com: { smtp_client_authentication_disabled: true }
  bob@contoso.com: {}
  carol@contoso.com: { smtp_client_authentication_disabled: null }
  scanner@contoso.com: { max_concurrent_sessions_per_mailbox: 1 }
EOF
  # fabrikam: disabled organization (Set-TransportConfig $true). printer: allowed for the
  # mailbox (Set-CASMailbox $false). dave: inherits the organization's value.
  cat >"$E2E_SUITE_DIR/policies/fabrikam.yaml" <<'EOF'
organization: fabrikam
domains: [fabrikam.com]
smtp_client_authentication_disabled: true
mailboxes:
  printer@fabrikam.com: { smtp_client_authentication_disabled: false }
  dave@fabrikam.com: { smtp_client_authentication_disabled: null }
EOF
  # unknown.example belongs to no organization and there is no "*" organization.

  cat >"$E2E_CONFIG" <<EOF
policy: ["$policy"]
policies: $E2E_SUITE_DIR/policies
default_domain: contoso.com
lease_idle_timeout: 300s
audit: { path: $E2E_AUDIT_LOG }
limiter: { backend: memory }
EOF
}
