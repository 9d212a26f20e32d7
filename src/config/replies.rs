//! `replies:`: overrides of the SMTP replies and of the Dovecot auth policy texts, each
//! checked, built into [`Replies`] over its defaults.

use super::check::Checker;
use super::raw::RawReplies;
use crate::reply::Replies;

/// Checks the section; the defaults when absent.
pub(super) fn check(ck: &mut Checker, raw: Option<&RawReplies>) -> Replies {
    let mut replies = Replies::default();
    let Some(r) = raw else {
        return replies;
    };
    for (name, value, slot) in [
        (
            "tenant_disabled",
            &r.tenant_disabled,
            &mut replies.tenant_disabled,
        ),
        (
            "mailbox_disabled",
            &r.mailbox_disabled,
            &mut replies.mailbox_disabled,
        ),
        (
            "concurrency_limit",
            &r.concurrency_limit,
            &mut replies.concurrency_limit,
        ),
        ("tempfail", &r.tempfail, &mut replies.tempfail),
        (
            "invalid_login",
            &r.invalid_login,
            &mut replies.invalid_login,
        ),
        (
            "message_rate_limit",
            &r.message_rate_limit,
            &mut replies.message_rate_limit,
        ),
        (
            "recipient_rate_limit",
            &r.recipient_rate_limit,
            &mut replies.recipient_rate_limit,
        ),
        (
            "recipients_per_message",
            &r.recipients_per_message,
            &mut replies.recipients_per_message,
        ),
        (
            "sender_restricted",
            &r.sender_restricted,
            &mut replies.sender_restricted,
        ),
        (
            "basic_auth_disabled",
            &r.basic_auth_disabled,
            &mut replies.basic_auth_disabled,
        ),
        ("legacy_tls", &r.legacy_tls, &mut replies.legacy_tls),
        ("tls_required", &r.tls_required, &mut replies.tls_required),
    ] {
        ck.reply_at(&["replies", name], value.as_deref(), slot);
    }
    for (name, value, slot) in [
        (
            "auth_tenant_disabled",
            &r.auth_tenant_disabled,
            &mut replies.auth_tenant_disabled,
        ),
        (
            "auth_mailbox_disabled",
            &r.auth_mailbox_disabled,
            &mut replies.auth_mailbox_disabled,
        ),
        (
            "auth_invalid_login",
            &r.auth_invalid_login,
            &mut replies.auth_invalid_login,
        ),
        (
            "auth_basic_auth_disabled",
            &r.auth_basic_auth_disabled,
            &mut replies.auth_basic_auth_disabled,
        ),
        (
            "auth_tls_required",
            &r.auth_tls_required,
            &mut replies.auth_tls_required,
        ),
    ] {
        ck.auth_reply_at(&["replies", name], value.as_deref(), slot);
    }
    replies
}
