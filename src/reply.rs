//! SMTP replies: the checked [`SmtpReply`] type and the [`Replies`] submitgate gives, Exchange
//! Online's texts by default. A leaf module: `config` parses replies into these types, the
//! front ends and the admission step read them; it imports only [`crate::reason`].

use std::fmt;
use std::str::FromStr;

use crate::reason::Reason;

/// An SMTP reply: `550 5.7.139 text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    pub enhanced: String,
    pub text: String,
}

impl fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced, self.text)
    }
}

impl FromStr for SmtpReply {
    type Err = String;

    /// Parses and checks `NNN X.Y.Z text`: a 4xx or 5xx code, an enhanced status code of the
    /// same class, and printable ASCII text (it goes into SMTP and the policy/milter protocols).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.trim().splitn(3, ' ');
        let code = parts.next().unwrap_or_default();
        let enhanced = parts.next().unwrap_or_default();
        let text = parts.next().unwrap_or_default().trim();
        let code_num: u16 = match code.parse() {
            Ok(n) if code.len() == 3 && (400..600).contains(&n) => n,
            _ => {
                return Err(format!(
                    "{s:?}: the reply must start with a 4xx or 5xx code"
                ))
            }
        };
        let class = code.as_bytes()[0];
        let fields: Vec<&str> = enhanced.split('.').collect();
        let valid_enhanced = fields.len() == 3
            && fields[0].as_bytes() == [class]
            && fields[1..]
                .iter()
                .all(|f| !f.is_empty() && f.len() <= 3 && f.bytes().all(|b| b.is_ascii_digit()));
        if !valid_enhanced {
            return Err(format!(
                "{s:?}: after the code comes an enhanced status code of the same class ({}.X.Y)",
                class as char
            ));
        }
        if text.is_empty() || text.len() > 400 || !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(format!(
                "{s:?}: the text must be 1 to 400 printable ASCII characters"
            ));
        }
        Ok(SmtpReply {
            code: code_num,
            enhanced: enhanced.to_string(),
            text: text.to_string(),
        })
    }
}

/// The replies submitgate gives; Exchange Online's texts by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replies {
    pub tenant_disabled: SmtpReply,
    pub mailbox_disabled: SmtpReply,
    pub concurrency_limit: SmtpReply,
    /// A login that cannot be a mailbox (control characters, empty local part, too long).
    pub invalid_login: SmtpReply,
    /// Over `messages_per_minute` (a deferral: the client tries again).
    pub message_rate_limit: SmtpReply,
    /// Over `recipients_per_day`.
    pub recipient_rate_limit: SmtpReply,
    /// Over `recipients_per_message`.
    pub recipients_per_message: SmtpReply,
    /// A restricted (blocked) sender.
    pub sender_restricted: SmtpReply,
    /// `allow_basic_auth_smtp: false` and the client used a Basic (password) mechanism.
    pub basic_auth_disabled: SmtpReply,
    /// `allow_legacy_tls_clients: false` and the session uses TLS 1.0/1.1. A 421: Postfix
    /// closes the connection after it, as Exchange does.
    pub legacy_tls: SmtpReply,
    /// `require_tls: true` and the session is not encrypted.
    pub tls_required: SmtpReply,
    /// When submitgate itself cannot do its part (limiter down with `on_error: tempfail`,
    /// spool unwritable).
    pub tempfail: SmtpReply,
    /// The auth policy refusal text (Dovecot's `msg`) when the organization disables SMTP AUTH.
    /// Text only: Postfix sends `535 5.7.8 Error: authentication failed: <text>`.
    pub auth_tenant_disabled: String,
    /// The auth policy refusal text when the mailbox disables SMTP AUTH.
    pub auth_mailbox_disabled: String,
    /// The auth policy refusal text for a login that cannot be a mailbox.
    pub auth_invalid_login: String,
    /// The auth policy refusal text when Basic authentication is disabled for the login.
    pub auth_basic_auth_disabled: String,
    /// The auth policy refusal text when TLS is required and Dovecot says the login came
    /// without it.
    pub auth_tls_required: String,
}

/// Exchange Online's reply when the organization disables SMTP AUTH.
pub const TENANT_DISABLED: &str =
    "550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.";
/// Exchange Online's reply when the mailbox disables SMTP AUTH.
pub const MAILBOX_DISABLED: &str =
    "550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.";
/// Exchange Online's reply over the concurrency limit.
pub const CONCURRENCY_LIMIT: &str = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded";
/// Our reply to a login that cannot be a mailbox (not Exchange's: it has no such check).
pub const INVALID_LOGIN: &str =
    "550 5.7.1 Authentication unsuccessful, the login is not a valid mailbox address.";
/// Over the messages per minute: a deferral in the 451 4.7.0 class, the text after Exchange's
/// "Message submission rate for this client has exceeded the configured limit".
pub const MESSAGE_RATE_LIMIT: &str =
    "451 4.7.0 Message submission rate for this mailbox has exceeded the configured limit, try again later";
/// Exchange Online's reply over the recipients per day.
pub const RECIPIENT_RATE_LIMIT: &str =
    "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException";
/// Exchange Online's reply over the recipients per message.
pub const RECIPIENTS_PER_MESSAGE: &str = "550 5.5.3 RESOLVER.ADR.RecipLimit; too many recipients";
/// Exchange Online's reply to a restricted sender.
pub const SENDER_RESTRICTED: &str = "550 5.1.8 Access denied, bad outbound sender";
/// Exchange Online's reply to Basic authentication once it is turned off for SMTP AUTH.
pub const BASIC_AUTH_DISABLED: &str =
    "550 5.7.30 Basic authentication is not supported for Client Submission.";
/// Exchange Online's reply to a TLS 1.0/1.1 client.
pub const LEGACY_TLS: &str = "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2.";
/// RFC 3207's reply (and Postfix's own, with `smtpd_tls_auth_only`/`encrypt`) when TLS is
/// required and the session has none.
pub const TLS_REQUIRED: &str = "530 5.7.0 Must issue a STARTTLS command first.";
/// Our own temporary failure.
pub const TEMPFAIL: &str = "451 4.3.0 Temporary submission failure, try again later";
/// The auth policy text (at AUTH) when the organization disables SMTP AUTH.
pub const AUTH_TENANT_DISABLED: &str =
    "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant";
/// The auth policy text (at AUTH) when the mailbox disables SMTP AUTH.
pub const AUTH_MAILBOX_DISABLED: &str =
    "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox";

/// The auth policy text (at AUTH) for a login that cannot be a mailbox.
pub const AUTH_INVALID_LOGIN: &str =
    "Authentication unsuccessful, the login is not a valid mailbox address";

/// The auth policy text (at AUTH) when Basic authentication is disabled.
pub const AUTH_BASIC_AUTH_DISABLED: &str =
    "Basic authentication is not supported for Client Submission";

/// The auth policy text (at AUTH) when TLS is required and the login came without it.
pub const AUTH_TLS_REQUIRED: &str = "Must issue a STARTTLS command first";

/// Longest auth policy refusal text: Dovecot passes it on in one SASL line, and Postfix in one
/// SMTP reply line.
pub const MAX_AUTH_REPLY: usize = 200;

/// Checks an auth policy refusal text: 1 to [`MAX_AUTH_REPLY`] printable ASCII characters.
pub fn check_auth_reply(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty()
        || text.len() > MAX_AUTH_REPLY
        || !text.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Err(format!(
            "{text:?}: must be 1 to {MAX_AUTH_REPLY} printable ASCII characters, without an SMTP code \
             (Postfix answers `535 5.7.8 Error: authentication failed: <text>`)"
        ));
    }
    Ok(text.to_string())
}

impl Default for Replies {
    fn default() -> Self {
        let p = |s: &str| {
            SmtpReply::from_str(s).unwrap_or_else(|e| unreachable!("built-in reply: {e}"))
        };
        Replies {
            tenant_disabled: p(TENANT_DISABLED),
            mailbox_disabled: p(MAILBOX_DISABLED),
            concurrency_limit: p(CONCURRENCY_LIMIT),
            invalid_login: p(INVALID_LOGIN),
            message_rate_limit: p(MESSAGE_RATE_LIMIT),
            recipient_rate_limit: p(RECIPIENT_RATE_LIMIT),
            recipients_per_message: p(RECIPIENTS_PER_MESSAGE),
            sender_restricted: p(SENDER_RESTRICTED),
            basic_auth_disabled: p(BASIC_AUTH_DISABLED),
            legacy_tls: p(LEGACY_TLS),
            tls_required: p(TLS_REQUIRED),
            tempfail: p(TEMPFAIL),
            auth_tenant_disabled: AUTH_TENANT_DISABLED.to_string(),
            auth_mailbox_disabled: AUTH_MAILBOX_DISABLED.to_string(),
            auth_invalid_login: AUTH_INVALID_LOGIN.to_string(),
            auth_basic_auth_disabled: AUTH_BASIC_AUTH_DISABLED.to_string(),
            auth_tls_required: AUTH_TLS_REQUIRED.to_string(),
        }
    }
}

impl Replies {
    /// The SMTP reply for a refusal or deferral reason: a policy refusal (an unknown
    /// organization gets the Tenant text), an invalid login, an authentication rule (Basic
    /// authentication, legacy TLS, TLS required), the concurrency limit, a sending limit, a
    /// restricted sender, or our own temporary failure.
    pub fn for_reason(&self, reason: Reason) -> &SmtpReply {
        match reason {
            Reason::MailboxDisabled => &self.mailbox_disabled,
            Reason::OrgDisabled | Reason::UnknownOrganization => &self.tenant_disabled,
            Reason::ConcurrencyLimit => &self.concurrency_limit,
            Reason::InvalidLogin => &self.invalid_login,
            Reason::MessageRateLimit => &self.message_rate_limit,
            Reason::RecipientRateLimit => &self.recipient_rate_limit,
            Reason::RecipientsPerMessage => &self.recipients_per_message,
            Reason::SenderRestricted => &self.sender_restricted,
            Reason::BasicAuthDisabled => &self.basic_auth_disabled,
            Reason::LegacyTls => &self.legacy_tls,
            Reason::TlsRequired => &self.tls_required,
            Reason::LimiterUnavailable
            | Reason::SpoolUnavailable
            | Reason::Corrupt
            | Reason::Permanent
            | Reason::LoginRefused
            | Reason::MaxAge => &self.tempfail,
        }
    }

    /// The auth policy refusal text (Dovecot's `msg`) for a policy refusal reason.
    pub fn auth_text_for(&self, reason: Reason) -> &str {
        match reason {
            Reason::MailboxDisabled => &self.auth_mailbox_disabled,
            Reason::InvalidLogin => &self.auth_invalid_login,
            Reason::BasicAuthDisabled => &self.auth_basic_auth_disabled,
            Reason::TlsRequired => &self.auth_tls_required,
            // Dovecot is not told the TLS version, so LegacyTls never comes up at AUTH.
            _ => &self.auth_tenant_disabled,
        }
    }
}
