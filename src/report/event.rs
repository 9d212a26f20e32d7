//! One audit line as the report reads it ([`EventLine`]: only the fields it needs) and what it
//! counts for ([`classify`], the counting rules of the module documentation). The `reason` is
//! the typed [`Reason`]; a name this build does not know still reads, as "other".

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

use crate::reason::Reason;

/// The TLS protocols the report tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tls {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
    NoneOrUnknown,
}

impl Tls {
    /// Postfix's `encryption_protocol` (`TLSv1`, `TLSv1.2`…); absent or unrecognised = unknown.
    pub(super) fn of(field: Option<&str>) -> Tls {
        let Some(v) = field else {
            return Tls::NoneOrUnknown;
        };
        let v = v.trim();
        let version = v
            .strip_prefix("TLSv")
            .or_else(|| v.strip_prefix("TLS"))
            .or_else(|| v.strip_prefix("tlsv"))
            .unwrap_or("");
        match version {
            "1" | "1.0" => Tls::V1_0,
            "1.1" => Tls::V1_1,
            "1.2" => Tls::V1_2,
            "1.3" => Tls::V1_3,
            _ => Tls::NoneOrUnknown,
        }
    }
}

/// What one event adds to its sender's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Contribution {
    Message,
    /// A refusal by its reason; `None` for none, or one this report does not know.
    Refusal(Option<Reason>),
    AuthFailure,
    /// A `sender_restricted` event: the sender was blocked.
    Restricted,
    /// A `sender_released` event.
    Released,
    /// An `outbound_spam_alert` event.
    SpamAlert,
    /// A login refused at AUTH, by its reason (when the event names one this report knows).
    AuthRefused(Option<Reason>),
    /// A submission (`at_auth: false`) or a login at AUTH (`at_auth: true`) that an
    /// authentication rule in `report_only` mode would have refused.
    WouldRefuse {
        reason: Option<Reason>,
        at_auth: bool,
    },
    Nothing,
}

/// The counting rules (see the module documentation). This is the one place to change them,
/// for instance if a front end starts writing a different event per message.
pub(super) fn classify(ev: &EventLine<'_>) -> Contribution {
    match &*ev.event {
        "submission_completed" => Contribution::Message,
        "submission_decision" => match ev.decision.as_deref() {
            Some("reject" | "defer") => Contribution::Refusal(ev.reason),
            _ => Contribution::Nothing,
        },
        "auth_failed" => Contribution::AuthFailure,
        "sender_restricted" => Contribution::Restricted,
        "sender_released" => Contribution::Released,
        "outbound_spam_alert" => Contribution::SpamAlert,
        "auth_refused_by_policy" => Contribution::AuthRefused(ev.reason),
        "would_refuse" => Contribution::WouldRefuse {
            reason: ev.reason,
            at_auth: ev.front_end.as_deref() == Some("auth_policy"),
        },
        _ => Contribution::Nothing,
    }
}

/// The fields of an audit line the report reads; every other field is ignored.
#[derive(Deserialize)]
pub(super) struct EventLine<'a> {
    #[serde(borrow)]
    pub(super) ts: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) event: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(super) mailbox: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) decision: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) front_end: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "known_reason")]
    pub(super) reason: Option<Reason>,
    #[serde(borrow, default)]
    pub(super) tls: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) sasl_method: Option<Cow<'a, str>>,
}

/// `reason` as a [`Reason`]: a string that names none (a reason from a newer or older build)
/// is `None`, like an absent one, rather than making the whole line unreadable. A value that
/// is not a string (or null) still is a malformed line.
fn known_reason<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Reason>, D::Error> {
    let name = Option::<Cow<'de, str>>::deserialize(d)?;
    Ok(name.and_then(|n| n.parse().ok()))
}
