//! The decision for one submission, computed from a snapshot alone: no I/O, no clock, no
//! protocol. The front ends turn a [`Decision`] into their own replies and the limiter applies
//! [`Allowed::limit`].

use super::{effective_sent_items, AuthRules, Limits, PolicySnapshot, SentItems};
use crate::reason::Reason;

/// What the front ends know about a submission when they ask.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// The SASL login (`sasl_username` / `{auth_authen}`), as the client gave it.
    pub login: &'a str,
}

/// A submission the policy allows, with what the front ends need next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Normalized address: the key of limits, leases and the Sent Items copy.
    pub mailbox: String,
    pub organization: String,
    /// Concurrent sessions allowed for this mailbox (mailbox ?? organization).
    pub limit: u32,
    /// Where the Sent Items copy goes.
    pub sent_items: SentItems,
    /// Sending limits and outbound spam thresholds (mailbox ?? organization, key by key).
    pub limits: Limits,
    /// The authentication rules (mailbox ?? organization ?? default, key by key) that the
    /// admission step applies to the session's mechanism and TLS.
    pub auth: AuthRules,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Reject {
        /// One of the policy reasons: org_disabled, mailbox_disabled, unknown_organization.
        reason: Reason,
        mailbox: String,
        organization: Option<String>,
    },
}

/// `effective_disabled = mailbox ?? organization`; an unknown organization is refused unless a
/// `"*"` organization exists (deny by default).
pub fn evaluate(snapshot: &PolicySnapshot, submission: &Submission<'_>) -> Decision {
    let mailbox = snapshot.normalize(submission.login);
    let Some(org_idx) = snapshot.org_index_for(&mailbox) else {
        return Decision::Reject {
            reason: Reason::UnknownOrganization,
            mailbox,
            organization: None,
        };
    };
    let org = &snapshot.orgs[org_idx];
    let own = snapshot.own_settings(org_idx, &mailbox);
    let own = own.as_ref();
    let disabled = own
        .and_then(|s| s.smtp_client_authentication_disabled)
        .map(|v| (v, Reason::MailboxDisabled))
        .unwrap_or((org.smtp_client_authentication_disabled, Reason::OrgDisabled));
    if disabled.0 {
        return Decision::Reject {
            reason: disabled.1,
            mailbox,
            organization: Some(org.name.clone()),
        };
    }
    Decision::Allow(Allowed {
        limit: own
            .and_then(|s| s.max_concurrent_sessions_per_mailbox)
            .unwrap_or(org.max_concurrent_sessions_per_mailbox),
        sent_items: effective_sent_items(org, own),
        limits: own.map_or(org.limits, |s| s.overrides.limits.apply(&org.limits)),
        auth: own.map_or_else(
            || org.auth.rules(),
            |s| s.overrides.auth.apply(&org.auth.rules()),
        ),
        organization: org.name.clone(),
        mailbox,
    })
}
