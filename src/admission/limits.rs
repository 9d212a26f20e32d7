//! Exchange Online's sending limits and restricted senders, as steps of the admission:
//!
//! - at the start of a message ([`super::admit`], MAIL / a transaction's first request), the
//!   limiter's `open` refuses a restricted sender (`550 5.1.8`) and defers a mailbox over its
//!   `messages_per_minute` (`451 4.7.0`), in the same step (and Redis round trip) as the lease;
//! - at each recipient ([`recipient`], the policy front end's RCPT), the recipient is refused
//!   over `recipients_per_message` or when it would go over `recipients_per_day`;
//! - at the end of the message ([`accept`]), the limiter's `commit` judges the whole message
//!   and counts it only if it is accepted: a refused or deferred message counts nothing. An
//!   outbound spam threshold whose action blocks makes the mailbox a restricted sender (audited
//!   `sender_restricted`); one whose action is `alert` lets it through (`outbound_spam_alert`).
//!   A message counted and then not accepted after all (its Sent Items copy could not be
//!   spooled) is taken back with [`unaccept`].
//!
//! A recipient is internal when its domain belongs to an organization of the policy. Reply
//! texts come from `replies:` ([`crate::reply::Replies`]), reasons are typed ([`Reason`]);
//! every refusal is counted in the metrics like the others, and a sender restricted raises
//! the `sender_restricted` alert ([`crate::alerts`]).

use super::{record_refusal, Facts, Hold, Refusal, Scope};
use crate::audit::{Audit, AuditEvent, EventKind, Outcome as AuditOutcome};
use crate::context::Context;
use crate::limiter::{
    BlockedSender, Commit, Crossed, Limiter, LimiterError, MessageCount, Thresholds, Usage,
};
use crate::policy::{Limits, PolicySnapshot};
use crate::reason::Reason;

/// What the admission keeps about the message in progress, between its steps.
#[derive(Debug, Clone)]
pub(super) struct Tracked {
    pub mailbox: String,
    pub organization: String,
    pub limits: Limits,
    /// What the mailbox had submitted when the message started.
    pub usage: Usage,
    /// Recipients admitted so far at RCPT (policy front end).
    pub count: MessageCount,
    /// Counted at end-of-message: what, and when (to take it back).
    pub counted: Option<(MessageCount, u64)>,
}

/// The outcome of [`accept`] (its audit event is already written).
#[derive(Debug)]
pub enum Accept {
    /// The message is accepted and counted (or nothing needed counting).
    Accepted,
    /// Refused for good: restricted sender, too many recipients, recipients per day.
    Refused(Refusal),
    /// Try again later: message rate, or the limiter cannot answer.
    Deferred(Refusal),
}

/// The thresholds the limiter judges a message against.
pub(super) fn thresholds(l: &Limits) -> Thresholds {
    Thresholds {
        messages_per_minute: l.messages_per_minute,
        recipients_per_day: l.recipients_per_day,
        external_per_hour: l.recipient_limit_external_per_hour,
        internal_per_hour: l.recipient_limit_internal_per_hour,
        spam_per_day: l.recipient_limit_per_day,
        action: l.action_when_threshold_reached,
    }
}

/// Whether `address`'s domain belongs to an organization of the policy.
fn is_internal(snapshot: &PolicySnapshot, address: &str) -> bool {
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d).trim();
    let domain = domain.trim_end_matches('>');
    if domain.bytes().any(|b| b.is_ascii_uppercase()) {
        snapshot.is_internal_domain(&domain.to_ascii_lowercase())
    } else {
        snapshot.is_internal_domain(domain)
    }
}

/// Counts `recipients` as external or internal.
pub fn count_recipients(snapshot: &PolicySnapshot, recipients: &[String]) -> MessageCount {
    let mut count = MessageCount::default();
    for r in recipients {
        if is_internal(snapshot, r) {
            count.internal = count.internal.saturating_add(1);
        } else {
            count.external = count.external.saturating_add(1);
        }
    }
    count
}

fn refusal(ctx: &Context, t: &Tracked, reason: Reason) -> Refusal {
    Refusal {
        reply: ctx.replies.for_reason(reason).clone(),
        reason,
        mailbox: t.mailbox.clone(),
        organization: Some(t.organization.clone()),
    }
}

/// Audits and logs a sending-limit refusal: `threshold` is the limit's policy key, `count` the
/// count with this message (or recipient), `limit` its value.
async fn refuse(
    ctx: &Context,
    facts: &Facts<'_>,
    refusal: &Refusal,
    decision: AuditOutcome,
    threshold: &'static str,
    count: u64,
    limit: u32,
) {
    tracing::info!(
        peer = facts.peer,
        mailbox = %refusal.mailbox,
        reason = %refusal.reason,
        threshold,
        count,
        limit,
        "submission {}",
        if decision == AuditOutcome::Defer { "deferred" } else { "refused" }
    );
    crate::metrics::decision(facts.front_end, decision, Some(refusal.reason));
    let mut ev = facts.event(EventKind::SubmissionDecision);
    ev.mailbox = Some(refusal.mailbox.clone());
    ev.organization.clone_from(&refusal.organization);
    ev.decision = Some(decision);
    ev.reason = Some(refusal.reason);
    ev.threshold = Some(threshold);
    ev.count = Some(count);
    ev.limit = Some(limit);
    ev.reply = Some(refusal.reply.to_string());
    ctx.audit.record(ev).await;
}

/// The refusal of a restricted sender (at MAIL or at end-of-message), audited.
pub(super) async fn refuse_restricted(
    ctx: &Context,
    facts: &Facts<'_>,
    mailbox: &str,
    organization: &str,
    entry: &BlockedSender,
) -> Refusal {
    let refusal = Refusal {
        reply: ctx.replies.for_reason(Reason::SenderRestricted).clone(),
        reason: Reason::SenderRestricted,
        mailbox: mailbox.to_string(),
        organization: Some(organization.to_string()),
    };
    tracing::info!(
        peer = facts.peer,
        mailbox,
        since = entry.since,
        until = entry.until,
        "submission refused: restricted sender"
    );
    crate::metrics::decision(
        facts.front_end,
        AuditOutcome::Reject,
        Some(Reason::SenderRestricted),
    );
    let mut ev = facts.event(EventKind::SubmissionDecision);
    ev.mailbox = Some(refusal.mailbox.clone());
    ev.organization = Some(organization.to_string());
    ev.decision = Some(AuditOutcome::Reject);
    ev.reason = Some(Reason::SenderRestricted);
    ev.threshold = threshold_name(&entry.threshold);
    ev.blocked_until = until(entry);
    ev.reply = Some(refusal.reply.to_string());
    ctx.audit.record(ev).await;
    refusal
}

/// The deferral over `messages_per_minute` at the start of a message, audited.
pub(super) async fn defer_message_rate(
    ctx: &Context,
    facts: &Facts<'_>,
    mailbox: &str,
    organization: &str,
    usage: &Usage,
    limit: u32,
) -> Refusal {
    let refusal = Refusal {
        reply: ctx.replies.for_reason(Reason::MessageRateLimit).clone(),
        reason: Reason::MessageRateLimit,
        mailbox: mailbox.to_string(),
        organization: Some(organization.to_string()),
    };
    refuse(
        ctx,
        facts,
        &refusal,
        AuditOutcome::Defer,
        "messages_per_minute",
        u64::from(usage.messages_last_minute) + 1,
        limit,
    )
    .await;
    refusal
}

/// One more recipient of the message in progress (the policy front end's RCPT): refused over
/// `recipients_per_message`, or when it would take the day over `recipients_per_day` (judged
/// on the usage read at the message's start: the end of the message judges again, exactly).
/// Nothing is tracked (no authenticated message in progress): nothing to check.
pub async fn recipient(
    ctx: &Context,
    snapshot: &PolicySnapshot,
    facts: &Facts<'_>,
    hold: &mut Hold,
    address: &str,
) -> Result<(), Refusal> {
    let Some(t) = hold.tracked.as_mut() else {
        return Ok(());
    };
    let _timer = crate::metrics::DecisionTimer::start(facts.front_end);
    let mut count = t.count;
    if is_internal(snapshot, address) {
        count.internal = count.internal.saturating_add(1);
    } else {
        count.external = count.external.saturating_add(1);
    }
    let total = count.total();
    let (reason, threshold, n, limit) =
        if t.limits.recipients_per_message != 0 && total > t.limits.recipients_per_message {
            (
                Reason::RecipientsPerMessage,
                "recipients_per_message",
                u64::from(total),
                t.limits.recipients_per_message,
            )
        } else if t.limits.recipients_per_day != 0
            && t.usage.recipients_last_day.saturating_add(total) > t.limits.recipients_per_day
        {
            (
                Reason::RecipientRateLimit,
                "recipients_per_day",
                u64::from(t.usage.recipients_last_day) + u64::from(total),
                t.limits.recipients_per_day,
            )
        } else {
            t.count = count;
            return Ok(());
        };
    let t = t.clone();
    let refusal = refusal(ctx, &t, reason);
    refuse(
        ctx,
        facts,
        &refusal,
        AuditOutcome::Reject,
        threshold,
        n,
        limit,
    )
    .await;
    Err(refusal)
}

/// The end of the message: judges it with its recipients and counts it if it is accepted.
/// `recipients` are the envelope recipients when the front end knows them all (milter); else
/// the recipients admitted at RCPT count, trimmed to Postfix's `recipient_count` when that is
/// lower (a later restriction refused some), or `recipient_count` external recipients when no
/// RCPT was seen. A transaction's lease is given back in the same limiter step.
pub async fn accept(
    ctx: &Context,
    snapshot: &PolicySnapshot,
    facts: &Facts<'_>,
    hold: &mut Hold,
    recipients: Option<&[String]>,
    recipient_count: Option<u32>,
) -> Accept {
    let release = match hold.scope {
        Scope::Transaction => hold.lease.take(),
        Scope::Session => None,
    };
    let Some(t) = hold.tracked.as_mut() else {
        if let Some(lease) = release {
            lease.release().await;
        }
        return Accept::Accepted;
    };
    // A decision of its own (timed like admit's): the message is judged here.
    let _timer = crate::metrics::DecisionTimer::start(facts.front_end);
    let count = match recipients {
        Some(list) => count_recipients(snapshot, list),
        None => trimmed(t.count, recipient_count),
    };
    let total = count.total();
    if t.limits.recipients_per_message != 0 && total > t.limits.recipients_per_message {
        if let Some(lease) = release {
            lease.release().await;
        }
        let t = t.clone();
        let refusal = refusal(ctx, &t, Reason::RecipientsPerMessage);
        refuse(
            ctx,
            facts,
            &refusal,
            AuditOutcome::Reject,
            "recipients_per_message",
            u64::from(total),
            t.limits.recipients_per_message,
        )
        .await;
        return Accept::Refused(refusal);
    }
    if t.limits.is_unlimited() {
        // Nothing to judge or count.
        if let Some(lease) = release {
            lease.release().await;
        }
        return Accept::Accepted;
    }
    let th = thresholds(&t.limits);
    let outcome = ctx.limiter.commit(&t.mailbox, &th, count, release).await;
    let t = t.clone();
    match outcome {
        Commit::Counted { alert, at, .. } => {
            if let Some(tracked) = hold.tracked.as_mut() {
                tracked.counted = Some((count, at));
            }
            if let Some(crossed) = alert {
                spam_alert(ctx, facts, &t, &crossed).await;
            }
            Accept::Accepted
        }
        Commit::Blocked(entry) => Accept::Refused(
            refuse_restricted(ctx, facts, &t.mailbox, &t.organization, &entry).await,
        ),
        Commit::MessageRate { usage } => Accept::Deferred(
            defer_message_rate(
                ctx,
                facts,
                &t.mailbox,
                &t.organization,
                &usage,
                t.limits.messages_per_minute,
            )
            .await,
        ),
        Commit::RecipientRate { usage } => {
            let refusal = refusal(ctx, &t, Reason::RecipientRateLimit);
            refuse(
                ctx,
                facts,
                &refusal,
                AuditOutcome::Reject,
                "recipients_per_day",
                u64::from(usage.recipients_last_day) + u64::from(total),
                t.limits.recipients_per_day,
            )
            .await;
            Accept::Refused(refusal)
        }
        Commit::Restricted { crossed, entry, .. } => {
            restricted(ctx, facts, &t, &crossed, &entry).await;
            Accept::Refused(
                refuse_restricted(ctx, facts, &t.mailbox, &t.organization, &entry).await,
            )
        }
        Commit::Unavailable => {
            let refusal = refusal(ctx, &t, Reason::LimiterUnavailable);
            tracing::info!(peer = facts.peer, mailbox = %t.mailbox, "submission deferred: limiter unavailable");
            record_refusal(ctx, facts, AuditOutcome::Defer, &refusal, None, None).await;
            Accept::Deferred(refusal)
        }
    }
}

/// Takes back the message [`accept`] counted: it was not accepted after all (the milter could
/// not spool its Sent Items copy and tempfails it).
pub async fn unaccept(ctx: &Context, hold: &mut Hold) {
    if let Some((count, at)) = hold.tracked.as_mut().and_then(|t| t.counted.take()) {
        if let Some(t) = hold.tracked.as_ref() {
            ctx.limiter.uncommit(&t.mailbox, count, at).await;
        }
    }
}

/// The recipients admitted at RCPT, trimmed to Postfix's count (internal ones first: an
/// unknown split counts against the external threshold, the stricter reading).
fn trimmed(seen: MessageCount, recipient_count: Option<u32>) -> MessageCount {
    match recipient_count {
        Some(n) if seen.total() == 0 => MessageCount {
            external: n,
            internal: 0,
        },
        Some(n) if n < seen.total() => {
            let mut c = seen;
            let mut excess = seen.total() - n;
            let from_internal = excess.min(c.internal);
            c.internal -= from_internal;
            excess -= from_internal;
            c.external -= excess.min(c.external);
            c
        }
        _ => seen,
    }
}

fn threshold_name(s: &str) -> Option<&'static str> {
    crate::limiter::Threshold::parse(s).map(|t| t.as_str())
}

fn until(entry: &BlockedSender) -> Option<String> {
    (entry.until != 0).then(|| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(entry.until),
        )
        .to_string()
    })
}

/// The `sender_restricted` event: the mailbox reached a threshold whose action blocks.
async fn restricted(
    ctx: &Context,
    facts: &Facts<'_>,
    t: &Tracked,
    crossed: &Crossed,
    entry: &BlockedSender,
) {
    tracing::warn!(
        mailbox = %t.mailbox,
        threshold = crossed.threshold.as_str(),
        count = crossed.count,
        limit = crossed.limit,
        action = entry.action.as_str(),
        "restricted sender: outbound spam threshold reached"
    );
    let mut ev = facts.event(EventKind::SenderRestricted);
    ev.mailbox = Some(t.mailbox.clone());
    ev.organization = Some(t.organization.clone());
    ev.threshold = Some(crossed.threshold.as_str());
    ev.count = Some(u64::from(crossed.count));
    ev.limit = Some(crossed.limit);
    ev.action = Some(entry.action.as_str());
    ev.blocked_until = until(entry);
    ctx.audit.record(ev).await;
    // Exchange's "User restricted from sending email" alert (webhook / command, `alerts:`).
    let why = format!(
        "{} {} of {} ({}, {})",
        crossed.threshold.as_str(),
        crossed.count,
        crossed.limit,
        entry.action.as_str(),
        until(entry).map_or_else(|| "until released".to_string(), |u| format!("until {u}"))
    );
    crate::alerts::raise(crate::alerts::AlertEvent::sender_restricted(
        &t.mailbox,
        Some(&t.organization),
        &why,
    ));
}

/// The `outbound_spam_alert` event: a threshold whose action is `alert` was reached.
async fn spam_alert(ctx: &Context, facts: &Facts<'_>, t: &Tracked, crossed: &Crossed) {
    tracing::warn!(
        mailbox = %t.mailbox,
        threshold = crossed.threshold.as_str(),
        count = crossed.count,
        limit = crossed.limit,
        "outbound spam threshold reached (action: alert)"
    );
    let mut ev = facts.event(EventKind::OutboundSpamAlert);
    ev.mailbox = Some(t.mailbox.clone());
    ev.organization = Some(t.organization.clone());
    ev.threshold = Some(crossed.threshold.as_str());
    ev.count = Some(u64::from(crossed.count));
    ev.limit = Some(crossed.limit);
    ev.action = Some("alert");
    ctx.audit.record(ev).await;
}

/// Releases a restricted sender (`Remove-BlockedSenderAddress`) and audits
/// `sender_released`; `by` says who asked (for the event). `address` is normalized as logins
/// are. Its entry, or `None` when it was not blocked.
pub async fn release_sender(
    limiter: &Limiter,
    audit: &Audit,
    snapshot: &PolicySnapshot,
    address: &str,
    by: &str,
) -> Result<Option<BlockedSender>, LimiterError> {
    let mailbox = snapshot.normalize(address);
    let released = limiter.release_sender(&mailbox).await?;
    if let Some(entry) = &released {
        tracing::info!(mailbox = %entry.mailbox, by, "restricted sender released");
        let mut ev = AuditEvent::new(EventKind::SenderReleased);
        ev.mailbox = Some(entry.mailbox.clone());
        ev.threshold = threshold_name(&entry.threshold);
        ev.action = Some(entry.action.as_str());
        ev.message = Some(format!("released by {by}"));
        audit.record(ev).await;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_trim_to_postfixs_count_internal_first() {
        let seen = MessageCount {
            external: 3,
            internal: 2,
        };
        assert_eq!(trimmed(seen, None), seen);
        assert_eq!(trimmed(seen, Some(5)), seen);
        assert_eq!(
            trimmed(seen, Some(4)),
            MessageCount {
                external: 3,
                internal: 1
            }
        );
        assert_eq!(
            trimmed(seen, Some(1)),
            MessageCount {
                external: 1,
                internal: 0
            }
        );
        assert_eq!(
            trimmed(MessageCount::default(), Some(7)),
            MessageCount {
                external: 7,
                internal: 0
            }
        );
    }
}
