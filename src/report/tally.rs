//! The counts: per-sender [`Tally`]s (TLS protocols, mechanisms, refusals by [`Reason`]),
//! accumulated line by line by [`ReportBuilder`] into the finished, sorted [`Report`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead};
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use super::event::{classify, Contribution, EventLine, Tls};
use super::input::{decompressing, open, read_line_bounded, MAX_LINE_BYTES};
use super::range::{parse_timestamp, TimeRange};
use super::ReportError;
use crate::auth_protocol::AuthProtocol;
use crate::reason::Reason;

/// Messages by TLS protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TlsCounts {
    /// `TLSv1` (1.0).
    #[serde(rename = "TLSv1.0")]
    pub v1_0: u64,
    /// `TLSv1.1`.
    #[serde(rename = "TLSv1.1")]
    pub v1_1: u64,
    /// `TLSv1.2`.
    #[serde(rename = "TLSv1.2")]
    pub v1_2: u64,
    /// `TLSv1.3`.
    #[serde(rename = "TLSv1.3")]
    pub v1_3: u64,
    /// No TLS, or a protocol the report does not know.
    pub none_or_unknown: u64,
}

impl TlsCounts {
    fn add(&mut self, tls: Tls) {
        *match tls {
            Tls::V1_0 => &mut self.v1_0,
            Tls::V1_1 => &mut self.v1_1,
            Tls::V1_2 => &mut self.v1_2,
            Tls::V1_3 => &mut self.v1_3,
            Tls::NoneOrUnknown => &mut self.none_or_unknown,
        } += 1;
    }

    fn merge(&mut self, o: &TlsCounts) {
        self.v1_0 += o.v1_0;
        self.v1_1 += o.v1_1;
        self.v1_2 += o.v1_2;
        self.v1_3 += o.v1_3;
        self.none_or_unknown += o.none_or_unknown;
    }

    /// Messages whose protocol is known: the denominator of the shares.
    pub fn known(&self) -> u64 {
        self.v1_0 + self.v1_1 + self.v1_2 + self.v1_3
    }

    /// Percentages of the known messages, rounded to 0.1; `None` when none is known.
    pub fn shares(&self) -> Option<[f64; 4]> {
        let known = self.known();
        (known > 0).then(|| {
            [self.v1_0, self.v1_1, self.v1_2, self.v1_3]
                .map(|n| (n as f64 * 1000.0 / known as f64).round() / 10.0)
        })
    }
}

/// Refused submissions by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Refusals {
    /// Disabled for the organization (Tenant).
    pub org_disabled: u64,
    /// Disabled for the mailbox.
    pub mailbox_disabled: u64,
    /// No organization claims the login's domain.
    pub unknown_organization: u64,
    /// The login cannot be a mailbox (control characters, empty local part, too long).
    pub invalid_login: u64,
    /// Basic authentication disabled (`allow_basic_auth_smtp: false`).
    pub basic_auth_disabled: u64,
    /// TLS 1.0/1.1 (`allow_legacy_tls_clients: false`).
    pub legacy_tls: u64,
    /// No TLS (`require_tls: true`).
    pub tls_required: u64,
    /// Over the concurrent session limit.
    pub concurrency_limit: u64,
    /// The limiter could not be reached and the configuration says tempfail.
    pub limiter_unavailable: u64,
    /// Over the messages per minute (deferred).
    pub message_rate_limit: u64,
    /// Over the recipients per day.
    pub recipient_rate_limit: u64,
    /// Over the recipients per message.
    pub recipients_per_message: u64,
    /// Refused as a restricted (blocked) sender.
    pub sender_restricted: u64,
    /// A reason this report does not know (or none).
    pub other: u64,
}

impl Refusals {
    /// Counts one refusal; a reason without its own column (or none) counts as other.
    fn add(&mut self, reason: Option<Reason>) {
        *match reason {
            Some(Reason::OrgDisabled) => &mut self.org_disabled,
            Some(Reason::MailboxDisabled) => &mut self.mailbox_disabled,
            Some(Reason::UnknownOrganization) => &mut self.unknown_organization,
            Some(Reason::InvalidLogin) => &mut self.invalid_login,
            Some(Reason::BasicAuthDisabled) => &mut self.basic_auth_disabled,
            Some(Reason::LegacyTls) => &mut self.legacy_tls,
            Some(Reason::TlsRequired) => &mut self.tls_required,
            Some(Reason::ConcurrencyLimit) => &mut self.concurrency_limit,
            Some(Reason::LimiterUnavailable) => &mut self.limiter_unavailable,
            Some(Reason::MessageRateLimit) => &mut self.message_rate_limit,
            Some(Reason::RecipientRateLimit) => &mut self.recipient_rate_limit,
            Some(Reason::RecipientsPerMessage) => &mut self.recipients_per_message,
            Some(Reason::SenderRestricted) => &mut self.sender_restricted,
            Some(
                Reason::SpoolUnavailable
                | Reason::Corrupt
                | Reason::Permanent
                | Reason::LoginRefused
                | Reason::MaxAge,
            )
            | None => &mut self.other,
        } += 1;
    }

    fn merge(&mut self, o: &Refusals) {
        self.org_disabled += o.org_disabled;
        self.mailbox_disabled += o.mailbox_disabled;
        self.unknown_organization += o.unknown_organization;
        self.invalid_login += o.invalid_login;
        self.basic_auth_disabled += o.basic_auth_disabled;
        self.legacy_tls += o.legacy_tls;
        self.tls_required += o.tls_required;
        self.concurrency_limit += o.concurrency_limit;
        self.limiter_unavailable += o.limiter_unavailable;
        self.message_rate_limit += o.message_rate_limit;
        self.recipient_rate_limit += o.recipient_rate_limit;
        self.recipients_per_message += o.recipients_per_message;
        self.sender_restricted += o.sender_restricted;
        self.other += o.other;
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.org_disabled
            + self.mailbox_disabled
            + self.unknown_organization
            + self.invalid_login
            + self.basic_auth_disabled
            + self.legacy_tls
            + self.tls_required
            + self.concurrency_limit
            + self.limiter_unavailable
            + self.message_rate_limit
            + self.recipient_rate_limit
            + self.recipients_per_message
            + self.sender_restricted
            + self.other
    }
}

/// Messages sent by authentication protocol (Exchange's "Authentication protocol" column):
/// the kind of each message's SASL mechanism, as [`AuthProtocol`] places it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuthProtocolCounts {
    /// Basic authentication: a password mechanism (PLAIN, LOGIN, …).
    pub basic: u64,
    /// OAuth: XOAUTH2, OAUTHBEARER.
    pub oauth: u64,
    /// Neither (EXTERNAL, GSSAPI, …).
    pub other: u64,
    /// No mechanism in the event.
    pub unknown: u64,
}

impl AuthProtocolCounts {
    fn add(&mut self, p: AuthProtocol) {
        *match p {
            AuthProtocol::Basic => &mut self.basic,
            AuthProtocol::OAuth => &mut self.oauth,
            AuthProtocol::Other => &mut self.other,
            AuthProtocol::Unknown => &mut self.unknown,
        } += 1;
    }

    fn merge(&mut self, o: &AuthProtocolCounts) {
        self.basic += o.basic;
        self.oauth += o.oauth;
        self.other += o.other;
        self.unknown += o.unknown;
    }

    /// All messages counted.
    pub fn total(&self) -> u64 {
        self.basic + self.oauth + self.other + self.unknown
    }

    /// Basic and OAuth as percentages of all messages, rounded to 0.1; `None` without messages.
    pub fn shares(&self) -> Option<[f64; 2]> {
        let all = self.total();
        (all > 0).then(|| {
            [self.basic, self.oauth].map(|n| (n as f64 * 1000.0 / all as f64).round() / 10.0)
        })
    }
}

/// Counts by the authentication rules' reasons: refusals at AUTH, and what `report_only` rules
/// would have refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuthRuleCounts {
    pub basic_auth_disabled: u64,
    pub legacy_tls: u64,
    pub tls_required: u64,
    /// Any other reason (or none): not an authentication rule's.
    pub other: u64,
}

impl AuthRuleCounts {
    fn add(&mut self, reason: Option<Reason>) {
        *match reason {
            Some(Reason::BasicAuthDisabled) => &mut self.basic_auth_disabled,
            Some(Reason::LegacyTls) => &mut self.legacy_tls,
            Some(Reason::TlsRequired) => &mut self.tls_required,
            _ => &mut self.other,
        } += 1;
    }

    fn merge(&mut self, o: &AuthRuleCounts) {
        self.basic_auth_disabled += o.basic_auth_disabled;
        self.legacy_tls += o.legacy_tls;
        self.tls_required += o.tls_required;
        self.other += o.other;
    }

    /// All counted.
    pub fn total(&self) -> u64 {
        self.basic_auth_disabled + self.legacy_tls + self.tls_required + self.other
    }
}

/// What one sender (or all of them, for the totals) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages sent (see the counting rules).
    pub messages_sent: u64,
    /// Messages sent by TLS protocol.
    pub tls: TlsCounts,
    /// Messages sent by SASL mechanism (upper case; `unknown` when the event has none), the most
    /// used first.
    pub auth_mechanisms: Vec<(String, u64)>,
    /// Messages sent by authentication protocol (Basic / OAuth).
    pub auth_protocol: AuthProtocolCounts,
    /// Refused submissions by reason.
    pub refusals: Refusals,
    /// `auth_failed` events.
    pub auth_failures: u64,
    /// `auth_refused_by_policy` events.
    pub auth_refused: u64,
    /// `sender_restricted` events: times the sender was blocked by an outbound spam threshold.
    pub restricted: u64,
    /// `sender_released` events: times an administrator (or midnight) released it.
    pub released: u64,
    /// `outbound_spam_alert` events: thresholds reached with the `alert` action.
    pub spam_alerts: u64,
    /// `auth_refused_by_policy` events by the authentication rules' reasons (the refusals of
    /// `auth_refused` that are theirs; the rest count as other).
    pub auth_refusals: AuthRuleCounts,
    /// Submissions that authentication rules in `report_only` mode would have refused.
    pub would_refuse: AuthRuleCounts,
    /// Logins at AUTH (Dovecot's auth policy) that they would have refused.
    pub would_refuse_at_auth: AuthRuleCounts,
}

impl Tally {
    fn add_mechanism(&mut self, name: &str, n: u64) {
        match self.auth_mechanisms.iter_mut().find(|(m, _)| m == name) {
            Some((_, count)) => *count += n,
            None => {
                // Most senders use one mechanism: no room for four.
                self.auth_mechanisms.reserve_exact(1);
                self.auth_mechanisms.push((name.to_string(), n));
            }
        }
    }

    fn merge(&mut self, o: &Tally) {
        self.messages_sent += o.messages_sent;
        self.tls.merge(&o.tls);
        for (m, n) in &o.auth_mechanisms {
            self.add_mechanism(m, *n);
        }
        self.auth_protocol.merge(&o.auth_protocol);
        self.refusals.merge(&o.refusals);
        self.auth_failures += o.auth_failures;
        self.auth_refused += o.auth_refused;
        self.restricted += o.restricted;
        self.released += o.released;
        self.spam_alerts += o.spam_alerts;
        self.auth_refusals.merge(&o.auth_refusals);
        self.would_refuse.merge(&o.would_refuse);
        self.would_refuse_at_auth.merge(&o.would_refuse_at_auth);
    }

    fn sort_mechanisms(&mut self) {
        self.auth_mechanisms
            .sort_by(|(a, x), (b, y)| y.cmp(x).then_with(|| a.cmp(b)));
    }
}

/// One sender address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The `mailbox` field, lower-cased.
    pub sender: String,
    /// What it did.
    pub tally: Tally,
}

impl Row {
    /// The sender's domain: after the last `@`; empty without one.
    pub fn domain(&self) -> &str {
        self.sender.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// Lines that could not be used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// How many.
    pub lines: u64,
    /// The first one: input name and 1-based line number.
    pub first: Option<(String, u64)>,
}

/// The finished report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The range asked for.
    pub range: TimeRange,
    /// One row per sender: the most messages first, then by address.
    pub rows: Vec<Row>,
    /// All senders together.
    pub totals: Tally,
    /// The first and last counted event.
    pub first_event: Option<SystemTime>,
    /// See `first_event`.
    pub last_event: Option<SystemTime>,
    /// Malformed lines.
    pub skipped: Skipped,
    /// Inputs that could not be read to their end: name and error (what was read still counts).
    pub read_errors: Vec<String>,
    /// Messages sent per UTC day (days since the Unix epoch) and sending domain, for the HTML
    /// report's volume chart; domains in name order.
    pub daily: BTreeMap<i64, Vec<(String, u64)>>,
}

/// Accumulates audit lines into per-sender tallies.
#[derive(Debug, Default)]
pub struct ReportBuilder {
    range: TimeRange,
    senders: HashMap<Box<str>, Tally>,
    first_event: Option<SystemTime>,
    last_event: Option<SystemTime>,
    skipped: Skipped,
    read_errors: Vec<String>,
    /// Messages per UTC day and sending domain: grows with days × domains, not with messages.
    daily: HashMap<i64, HashMap<Box<str>, u64>>,
}

/// The UTC day of `t`, as days since the Unix epoch.
pub(super) fn day_of(t: SystemTime) -> i64 {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs / 86_400).unwrap_or(i64::MAX)
}

impl ReportBuilder {
    /// A builder counting the events in `range`.
    pub fn new(range: TimeRange) -> Self {
        ReportBuilder {
            range,
            ..Default::default()
        }
    }

    /// Reads one input to its end: a file, or `-` for standard input; gzip is recognised by its
    /// magic bytes. An error while opening is returned; an error in the middle (a truncated
    /// gzip file) is recorded in [`Report::read_errors`] and what was read still counts.
    pub fn add_path(&mut self, path: &Path) -> Result<(), ReportError> {
        let name = path.display().to_string();
        let raw = open(path).map_err(|source| ReportError::Open {
            path: name.clone(),
            source,
        })?;
        if let Err(e) = decompressing(raw).and_then(|mut r| self.add_reader(&name, &mut r)) {
            self.read_errors.push(format!("{name}: {e}"));
        }
        Ok(())
    }

    /// Reads audit lines from `input` (already decompressed) until its end; `name` is used in
    /// the skipped-line message.
    pub fn add_reader(&mut self, name: &str, input: &mut impl BufRead) -> io::Result<()> {
        let mut line = Vec::with_capacity(1024);
        let mut number = 0u64;
        while let Some(whole) = read_line_bounded(input, &mut line, MAX_LINE_BYTES)? {
            number += 1;
            if !whole || !self.add_line(&line) {
                self.skipped.lines += 1;
                if self.skipped.first.is_none() {
                    self.skipped.first = Some((name.to_string(), number));
                }
            }
        }
        Ok(())
    }

    /// Counts one line; `false` when it is malformed. Blank lines are ignored.
    fn add_line(&mut self, line: &[u8]) -> bool {
        if line.iter().all(u8::is_ascii_whitespace) {
            return true;
        }
        let Ok(ev) = serde_json::from_slice::<EventLine<'_>>(line) else {
            return false;
        };
        let contribution = classify(&ev);
        if contribution == Contribution::Nothing {
            return true;
        }
        let Some(ts) = parse_timestamp(&ev.ts) else {
            return false;
        };
        let Some(mailbox) = ev
            .mailbox
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        else {
            return false;
        };
        if !self.range.contains(ts) {
            return true;
        }
        self.first_event = Some(self.first_event.map_or(ts, |f| f.min(ts)));
        self.last_event = Some(self.last_event.map_or(ts, |l| l.max(ts)));
        if contribution == Contribution::Message {
            let domain = mailbox.rsplit_once('@').map_or("", |(_, d)| d);
            let domain: Cow<'_, str> = if domain.chars().any(char::is_uppercase) {
                Cow::Owned(domain.to_lowercase())
            } else {
                Cow::Borrowed(domain)
            };
            let domains = self.daily.entry(day_of(ts)).or_default();
            // Looked up by reference: a key is allocated once per day and domain.
            match domains.get_mut(&*domain) {
                Some(n) => *n += 1,
                None => {
                    domains.insert(domain.into(), 1);
                }
            }
        }
        let tally = self.tally(mailbox);
        match contribution {
            Contribution::Message => {
                tally.messages_sent += 1;
                tally.tls.add(Tls::of(ev.tls.as_deref()));
                let mechanism = ev.sasl_method.as_deref().map(str::trim).unwrap_or("");
                tally
                    .auth_protocol
                    .add(AuthProtocol::of_mechanism(Some(mechanism)));
                if mechanism.is_empty() {
                    tally.add_mechanism("unknown", 1);
                } else if mechanism.bytes().any(|b| b.is_ascii_lowercase()) {
                    tally.add_mechanism(&mechanism.to_ascii_uppercase(), 1);
                } else {
                    tally.add_mechanism(mechanism, 1);
                }
            }
            Contribution::Refusal(r) => tally.refusals.add(r),
            Contribution::AuthFailure => tally.auth_failures += 1,
            Contribution::Restricted => tally.restricted += 1,
            Contribution::Released => tally.released += 1,
            Contribution::SpamAlert => tally.spam_alerts += 1,
            Contribution::AuthRefused(reason) => {
                tally.auth_refused += 1;
                tally.auth_refusals.add(reason);
            }
            Contribution::WouldRefuse { reason, at_auth } => {
                if at_auth {
                    tally.would_refuse_at_auth.add(reason);
                } else {
                    tally.would_refuse.add(reason);
                }
            }
            Contribution::Nothing => {}
        }
        true
    }

    /// The sender's tally; addresses are compared case-insensitively.
    fn tally(&mut self, mailbox: &str) -> &mut Tally {
        let key: Cow<'_, str> = if mailbox.chars().any(char::is_uppercase) {
            Cow::Owned(mailbox.to_lowercase())
        } else {
            Cow::Borrowed(mailbox)
        };
        self.senders.entry(key.into()).or_default()
    }

    /// The rows, sorted, with their totals.
    pub fn finish(self) -> Report {
        let mut totals = Tally::default();
        let mut rows: Vec<Row> = self
            .senders
            .into_iter()
            .map(|(sender, mut tally)| {
                totals.merge(&tally);
                tally.sort_mechanisms();
                Row {
                    sender: sender.into(),
                    tally,
                }
            })
            .collect();
        totals.sort_mechanisms();
        rows.sort_by(|a, b| {
            b.tally
                .messages_sent
                .cmp(&a.tally.messages_sent)
                .then_with(|| a.sender.cmp(&b.sender))
        });
        let mut daily: BTreeMap<i64, Vec<(String, u64)>> = BTreeMap::new();
        for (day, domains) in self.daily {
            daily.insert(
                day,
                domains.into_iter().map(|(d, n)| (d.into(), n)).collect(),
            );
        }
        for domains in daily.values_mut() {
            domains.sort();
        }
        Report {
            range: self.range,
            rows,
            totals,
            first_event: self.first_event,
            last_event: self.last_event,
            skipped: self.skipped,
            read_errors: self.read_errors,
            daily,
        }
    }
}
