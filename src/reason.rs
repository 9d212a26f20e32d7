//! Why submitgate refused, deferred or gave up on something: the one [`Reason`] enum.
//!
//! Its serde names are the `reason` field of the audit log and the names the report, the
//! metrics and the documentation use. No other module spells a reason as a string: they match
//! on this enum and let serde (or [`Reason::as_str`]) write the name. A leaf module: it imports
//! nothing from the crate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A typed reason. Adding a variant here is how a new rule gets its audit/report name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // Refusals by policy (the submission is refused for good).
    /// `Set-TransportConfig -SmtpClientAuthenticationDisabled $true` and no mailbox override.
    OrgDisabled,
    /// `Set-CASMailbox -SmtpClientAuthenticationDisabled $true`.
    MailboxDisabled,
    /// No organization claims the login's domain and there is no `"*"` organization.
    UnknownOrganization,
    /// The login cannot be a mailbox: a control character (C0, DEL, C1, Unicode format or bidi
    /// control), an empty local part or domain, or longer than 320 bytes (RFC 5321's path).
    InvalidLogin,
    /// The mailbox would go over its recipients per day (24 h sliding window; Exchange's
    /// `SubmissionQuotaExceededException`).
    RecipientRateLimit,
    /// The message has more recipients than the mailbox's `recipients_per_message`.
    RecipientsPerMessage,
    /// The mailbox is a restricted sender: blocked after reaching an outbound spam threshold,
    /// until midnight UTC or until an administrator releases it.
    SenderRestricted,
    /// `allow_basic_auth_smtp: false` and the client authenticated with a Basic (password)
    /// mechanism, or one the front end could not name (see `auth_protocol`).
    BasicAuthDisabled,
    /// `allow_legacy_tls_clients: false` and the session uses TLS 1.0/1.1 (or SSL); the reply
    /// is a 421 by default (Exchange's), which closes the connection.
    LegacyTls,
    /// `require_tls: true` and the session is not encrypted.
    TlsRequired,

    // Deferrals (the client is told to try again).
    /// The mailbox already has its limit of concurrent sessions.
    ConcurrencyLimit,
    /// The mailbox already submitted its `messages_per_minute` in the last minute.
    MessageRateLimit,
    /// The limiter (Redis) could not be asked and `on_error` is `tempfail`.
    LimiterUnavailable,
    /// The Sent Items spool could not take the message's copy.
    SpoolUnavailable,

    // A Sent Items copy given up (`sent_items_copy_failed`).
    /// The spool entry cannot be read back.
    Corrupt,
    /// The store refused the copy for good (a permanent IMAP `NO`, a Maildir that cannot be made).
    Permanent,
    /// The store refused submitgate's login `sent_items.retry.auth_failure_attempts` times.
    LoginRefused,
    /// The copy could not be stored within `sent_items.max_age`.
    MaxAge,
}

impl Reason {
    /// Every reason, in declaration order (for reports and metrics that list them all).
    pub const ALL: [Reason; 18] = [
        Reason::OrgDisabled,
        Reason::MailboxDisabled,
        Reason::UnknownOrganization,
        Reason::InvalidLogin,
        Reason::RecipientRateLimit,
        Reason::RecipientsPerMessage,
        Reason::SenderRestricted,
        Reason::BasicAuthDisabled,
        Reason::LegacyTls,
        Reason::TlsRequired,
        Reason::ConcurrencyLimit,
        Reason::MessageRateLimit,
        Reason::LimiterUnavailable,
        Reason::SpoolUnavailable,
        Reason::Corrupt,
        Reason::Permanent,
        Reason::LoginRefused,
        Reason::MaxAge,
    ];

    /// The audit/report name of the reason (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OrgDisabled => "org_disabled",
            Reason::MailboxDisabled => "mailbox_disabled",
            Reason::UnknownOrganization => "unknown_organization",
            Reason::InvalidLogin => "invalid_login",
            Reason::RecipientRateLimit => "recipient_rate_limit",
            Reason::RecipientsPerMessage => "recipients_per_message",
            Reason::SenderRestricted => "sender_restricted",
            Reason::BasicAuthDisabled => "basic_auth_disabled",
            Reason::LegacyTls => "legacy_tls",
            Reason::TlsRequired => "tls_required",
            Reason::ConcurrencyLimit => "concurrency_limit",
            Reason::MessageRateLimit => "message_rate_limit",
            Reason::LimiterUnavailable => "limiter_unavailable",
            Reason::SpoolUnavailable => "spool_unavailable",
            Reason::Corrupt => "corrupt",
            Reason::Permanent => "permanent",
            Reason::LoginRefused => "login_refused",
            Reason::MaxAge => "max_age",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`Reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a known reason")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, UnknownReason> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_is_the_serde_name_and_parses_back() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).expect("serialize");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            let back: Reason = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, r);
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        assert!("nope".parse::<Reason>().is_err());
    }
}
