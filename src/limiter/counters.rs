//! Sending-limit counters: what a mailbox submitted in sliding windows (messages in the last
//! minute, recipients in the last day, external and internal recipients in the last hour),
//! the arithmetic of those windows, and the one judgement of a message against the limits
//! ([`judge`]) that both backends apply (the memory backend in Rust here, the Redis backend in
//! its Lua script, which mirrors it line for line).
//!
//! A window is 60 buckets: one second for the minute, one minute for the hour, 24 minutes for
//! the day. What a window counts is the current bucket and the 59 before it, so it spans
//! between 59 and 60 buckets: the count errs by at most one bucket, 1/60 of the window (a
//! message leaves the minute window between 59 and 60 seconds after it was counted). Only
//! non-empty buckets are stored, so an idle mailbox costs nothing and a busy one at most 60
//! (slot, count) pairs per window.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::policy::SpamAction;

/// Buckets per window.
pub const BUCKETS: u64 = 60;

/// The length of one bucket of a window, in seconds (the window is [`BUCKETS`] of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub bucket_secs: u64,
}

/// Messages per minute: buckets of one second.
pub const MINUTE: WindowSpec = WindowSpec { bucket_secs: 1 };
/// Recipients per hour: buckets of one minute.
pub const HOUR: WindowSpec = WindowSpec { bucket_secs: 60 };
/// Recipients per day (24 h sliding): buckets of 24 minutes.
pub const DAY: WindowSpec = WindowSpec { bucket_secs: 1440 };

impl WindowSpec {
    /// The bucket `secs` (Unix time) falls into.
    pub fn slot(self, secs: u64) -> u64 {
        secs / self.bucket_secs
    }

    /// The oldest bucket still counted at `secs`.
    pub fn first_counted(self, secs: u64) -> u64 {
        self.slot(secs).saturating_sub(BUCKETS - 1)
    }

    /// The window's length in seconds.
    pub fn length_secs(self) -> u64 {
        self.bucket_secs * BUCKETS
    }
}

/// One sliding window: its non-empty buckets as (slot, count), oldest first, and their sum
/// (kept up to date, so that reading a window costs no more than dropping what left it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "VecDeque<(u64, u32)>", into = "VecDeque<(u64, u32)>")]
pub struct Window {
    buckets: VecDeque<(u64, u32)>,
    total: u32,
}

impl From<VecDeque<(u64, u32)>> for Window {
    fn from(buckets: VecDeque<(u64, u32)>) -> Window {
        let total = buckets
            .iter()
            .fold(0u32, |acc, (_, n)| acc.saturating_add(*n));
        Window { buckets, total }
    }
}

impl From<Window> for VecDeque<(u64, u32)> {
    fn from(w: Window) -> Self {
        w.buckets
    }
}

impl Window {
    /// Drops the buckets that left the window at `secs`.
    fn prune(&mut self, spec: WindowSpec, secs: u64) {
        let first = spec.first_counted(secs);
        while let Some((slot, n)) = self.buckets.front().copied() {
            if slot >= first {
                break;
            }
            self.buckets.pop_front();
            self.total = self.total.saturating_sub(n);
        }
    }

    /// What the window counts at `secs` (buckets newer than `secs`, after a clock went back,
    /// count too).
    pub fn sum(&self, spec: WindowSpec, secs: u64) -> u32 {
        let first = spec.first_counted(secs);
        let left = self
            .buckets
            .iter()
            .take_while(|(slot, _)| *slot < first)
            .fold(0u32, |acc, (_, n)| acc.saturating_add(*n));
        self.total.saturating_sub(left)
    }

    /// Counts `n` at `secs` (a clock that went back adds to the newest bucket instead of
    /// reordering the window).
    pub fn add(&mut self, spec: WindowSpec, secs: u64, n: u32) {
        self.prune(spec, secs);
        if n == 0 {
            return;
        }
        let slot = spec.slot(secs);
        match self.buckets.back_mut() {
            Some((last, count)) if *last >= slot => *count = count.saturating_add(n),
            _ => self.buckets.push_back((slot, n)),
        }
        self.total = self.total.saturating_add(n);
    }

    /// Takes back `n` counted at `secs` (a message counted, then not accepted after all).
    pub fn remove(&mut self, spec: WindowSpec, secs: u64, n: u32) {
        let slot = spec.slot(secs);
        if let Some(i) = self.buckets.iter().rposition(|(s, _)| *s <= slot) {
            let count = &mut self.buckets[i].1;
            let taken = n.min(*count);
            *count -= taken;
            self.total = self.total.saturating_sub(taken);
            if *count == 0 {
                self.buckets.remove(i);
            }
        }
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// What a mailbox has submitted, per window, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Messages accepted in the last minute.
    pub messages_last_minute: u32,
    /// Recipients of accepted messages in the last 24 hours.
    pub recipients_last_day: u32,
    /// External recipients in the last hour.
    pub external_last_hour: u32,
    /// Internal recipients in the last hour.
    pub internal_last_hour: u32,
}

/// The recipients of one message, as the outbound spam thresholds tell them apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCount {
    /// Recipients in a domain no organization of the policy holds.
    pub external: u32,
    /// Recipients in a domain of an organization of the policy.
    pub internal: u32,
}

impl MessageCount {
    /// All recipients.
    pub fn total(&self) -> u32 {
        self.external.saturating_add(self.internal)
    }
}

/// The limits a message is judged against (the mailbox's effective policy values); `0` means
/// no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub messages_per_minute: u32,
    pub recipients_per_day: u32,
    pub external_per_hour: u32,
    pub internal_per_hour: u32,
    pub spam_per_day: u32,
    pub action: SpamAction,
}

/// Which outbound spam threshold a message reached (named as its policy key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    RecipientLimitExternalPerHour,
    RecipientLimitInternalPerHour,
    RecipientLimitPerDay,
}

impl Threshold {
    /// The policy key.
    pub fn as_str(self) -> &'static str {
        match self {
            Threshold::RecipientLimitExternalPerHour => "recipient_limit_external_per_hour",
            Threshold::RecipientLimitInternalPerHour => "recipient_limit_internal_per_hour",
            Threshold::RecipientLimitPerDay => "recipient_limit_per_day",
        }
    }

    /// The threshold with this policy key.
    pub fn parse(s: &str) -> Option<Threshold> {
        [
            Threshold::RecipientLimitExternalPerHour,
            Threshold::RecipientLimitInternalPerHour,
            Threshold::RecipientLimitPerDay,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// A threshold reached: which one, the count with the message, and the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossed {
    pub threshold: Threshold,
    pub count: u32,
    pub limit: u32,
}

/// What the limits say about one message (before anything is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Count it; `alert` when it reached a threshold whose action is `alert`.
    Accept { alert: Option<Crossed> },
    /// `messages_per_minute` already reached: defer.
    MessageRate,
    /// It would take the day's recipients over `recipients_per_day`: refuse.
    RecipientRate,
    /// It reaches an outbound spam threshold whose action blocks: refuse and restrict.
    Restrict(Crossed),
}

/// Whether a new message may start now (at MAIL): `false` once `messages_per_minute` messages
/// were accepted in the last minute.
pub fn may_start(usage: &Usage, messages_per_minute: u32) -> bool {
    messages_per_minute == 0 || usage.messages_last_minute < messages_per_minute
}

/// The judgement of a message with `count` recipients for a mailbox that has used `usage`.
/// In order: the message rate, the recipients per day (a sending limit: the message is
/// refused, nothing else happens), then the outbound spam thresholds (external per hour,
/// internal per hour, per day), each reached when the message would take its count above it.
pub fn judge(usage: &Usage, t: &Thresholds, count: MessageCount) -> Judgement {
    if !may_start(usage, t.messages_per_minute) {
        return Judgement::MessageRate;
    }
    let day = usage.recipients_last_day.saturating_add(count.total());
    if t.recipients_per_day != 0 && day > t.recipients_per_day {
        return Judgement::RecipientRate;
    }
    let candidates = [
        (
            Threshold::RecipientLimitExternalPerHour,
            usage.external_last_hour.saturating_add(count.external),
            t.external_per_hour,
        ),
        (
            Threshold::RecipientLimitInternalPerHour,
            usage.internal_last_hour.saturating_add(count.internal),
            t.internal_per_hour,
        ),
        (Threshold::RecipientLimitPerDay, day, t.spam_per_day),
    ];
    let crossed = candidates
        .into_iter()
        .find(|(_, n, limit)| *limit != 0 && n > limit)
        .map(|(threshold, count, limit)| Crossed {
            threshold,
            count,
            limit,
        });
    match crossed {
        Some(c) if t.action.blocks() => Judgement::Restrict(c),
        alert => Judgement::Accept { alert },
    }
}

/// The windows of one mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxCounters {
    #[serde(default)]
    pub messages: Window,
    #[serde(default)]
    pub recipients: Window,
    #[serde(default)]
    pub external: Window,
    #[serde(default)]
    pub internal: Window,
}

impl MailboxCounters {
    /// The usage at `secs`.
    pub fn usage(&self, secs: u64) -> Usage {
        Usage {
            messages_last_minute: self.messages.sum(MINUTE, secs),
            recipients_last_day: self.recipients.sum(DAY, secs),
            external_last_hour: self.external.sum(HOUR, secs),
            internal_last_hour: self.internal.sum(HOUR, secs),
        }
    }

    /// Counts one accepted message at `secs`.
    pub fn record(&mut self, secs: u64, count: MessageCount) {
        self.messages.add(MINUTE, secs, 1);
        self.recipients.add(DAY, secs, count.total());
        self.external.add(HOUR, secs, count.external);
        self.internal.add(HOUR, secs, count.internal);
    }

    /// Takes back a message counted at `secs`.
    pub fn unrecord(&mut self, secs: u64, count: MessageCount) {
        self.messages.remove(MINUTE, secs, 1);
        self.recipients.remove(DAY, secs, count.total());
        self.external.remove(HOUR, secs, count.external);
        self.internal.remove(HOUR, secs, count.internal);
    }

    /// Drops what left every window at `secs`; `true` when nothing is left.
    pub fn prune(&mut self, secs: u64) -> bool {
        self.messages.prune(MINUTE, secs);
        self.recipients.prune(DAY, secs);
        self.external.prune(HOUR, secs);
        self.internal.prune(HOUR, secs);
        self.messages.is_empty()
            && self.recipients.is_empty()
            && self.external.is_empty()
            && self.internal.is_empty()
    }
}

/// Shards of the memory backend's table (a lock each, so that submissions of different
/// mailboxes rarely wait for one another).
const SHARDS: usize = 64;

type Shard = Mutex<HashMap<Arc<str>, MailboxCounters>>;

/// The memory backend's counters: every mailbox that submitted within the last day.
pub struct CounterTable {
    shards: Box<[Shard]>,
    hasher: RandomState,
}

impl Default for CounterTable {
    fn default() -> Self {
        CounterTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl std::fmt::Debug for CounterTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterTable")
            .field("mailboxes", &self.len())
            .finish()
    }
}

impl CounterTable {
    fn shard(&self, mailbox: &str) -> &Shard {
        let i = (self.hasher.hash_one(mailbox) as usize) % self.shards.len();
        &self.shards[i]
    }

    /// Runs `f` on the mailbox's counters (created empty), under its shard's lock; a mailbox
    /// left with nothing counted is removed again.
    pub fn with<T>(
        &self,
        mailbox: &str,
        secs: u64,
        f: impl FnOnce(&mut MailboxCounters) -> T,
    ) -> T {
        let mut shard = match self.shard(mailbox).lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        match shard.get_mut(mailbox) {
            Some(c) => {
                let out = f(c);
                if c.prune(secs) {
                    shard.remove(mailbox);
                }
                out
            }
            None => {
                let mut c = MailboxCounters::default();
                let out = f(&mut c);
                if !c.prune(secs) {
                    shard.insert(Arc::from(mailbox), c);
                }
                out
            }
        }
    }

    /// The usage of a mailbox at `secs` (without creating an entry).
    pub fn usage(&self, mailbox: &str, secs: u64) -> Usage {
        let shard = match self.shard(mailbox).lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        shard
            .get(mailbox)
            .map_or_else(Usage::default, |c| c.usage(secs))
    }

    /// Mailboxes with something counted.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }

    /// Whether no mailbox has anything counted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every mailbox whose windows emptied by `secs` (the periodic sweep: mailboxes that
    /// stop submitting leave no entry behind).
    pub fn sweep(&self, secs: u64) {
        for shard in self.shards.iter() {
            if let Ok(mut s) = shard.lock() {
                s.retain(|_, c| !c.prune(secs));
            }
        }
    }

    /// Every mailbox's counters at `secs` (for the snapshot at shutdown).
    pub fn export(&self, secs: u64) -> Vec<(String, MailboxCounters)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            if let Ok(mut s) = shard.lock() {
                s.retain(|_, c| !c.prune(secs));
                out.extend(s.iter().map(|(k, v)| (k.to_string(), v.clone())));
            }
        }
        out
    }

    /// Puts counters back (from a snapshot), dropping what left the windows by `secs`.
    pub fn import(&self, entries: Vec<(String, MailboxCounters)>, secs: u64) {
        for (mailbox, mut c) in entries {
            if c.prune(secs) {
                continue;
            }
            if let Ok(mut s) = self.shard(&mailbox).lock() {
                s.insert(Arc::from(mailbox.as_str()), c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000; // a Unix time; the arithmetic is the same at any.

    #[test]
    fn a_window_counts_the_last_sixty_buckets() {
        let mut w = Window::default();
        w.add(MINUTE, T0, 1);
        w.add(MINUTE, T0, 1);
        assert_eq!(w.sum(MINUTE, T0), 2);
        w.add(MINUTE, T0 + 30, 5);
        assert_eq!(w.sum(MINUTE, T0 + 30), 7);
        assert_eq!(
            w.sum(MINUTE, T0 + 59),
            7,
            "59 s later the first bucket still counts"
        );
        assert_eq!(w.sum(MINUTE, T0 + 60), 5, "60 s later it has left");
        assert_eq!(w.sum(MINUTE, T0 + 89), 5);
        assert_eq!(w.sum(MINUTE, T0 + 90), 0);
        // Adding prunes what left.
        w.add(MINUTE, T0 + 100, 1);
        assert_eq!(w.buckets.len(), 1);
    }

    #[test]
    fn bucket_error_is_at_most_one_sixtieth_of_the_window() {
        // A count made at the very end of a bucket leaves 59 buckets + 1 s later; one made at
        // its start leaves a full window later: the span is between 59/60 and 60/60.
        for spec in [MINUTE, HOUR, DAY] {
            let start = T0 - T0 % spec.bucket_secs; // first second of a bucket
            let end = start + spec.bucket_secs - 1; // its last second
            for at in [start, end] {
                let mut w = Window::default();
                w.add(spec, at, 1);
                let mut leaves = at;
                while w.sum(spec, leaves) == 1 {
                    leaves += 1;
                }
                let lived = leaves - at;
                let window = spec.length_secs();
                assert!(
                    lived <= window && lived > window - spec.bucket_secs,
                    "{spec:?} counted at {at}: left after {lived} s of {window}"
                );
            }
        }
        assert_eq!(DAY.length_secs(), 86_400);
        assert_eq!(HOUR.length_secs(), 3_600);
    }

    #[test]
    fn remove_takes_back_from_the_right_bucket() {
        let mut w = Window::default();
        w.add(HOUR, T0, 3);
        w.add(HOUR, T0 + 120, 4);
        w.remove(HOUR, T0 + 120, 4);
        assert_eq!(w.sum(HOUR, T0 + 120), 3);
        w.remove(HOUR, T0, 3);
        assert!(w.is_empty());
        // Nothing to take back: no underflow.
        w.remove(HOUR, T0, 3);
        assert_eq!(w.sum(HOUR, T0), 0);
    }

    #[test]
    fn a_clock_going_back_never_reorders_the_window() {
        let mut w = Window::default();
        w.add(MINUTE, T0 + 10, 1);
        w.add(MINUTE, T0 + 5, 1);
        assert_eq!(w.buckets.len(), 1);
        assert_eq!(w.sum(MINUTE, T0 + 10), 2);
    }

    fn thresholds() -> Thresholds {
        Thresholds {
            messages_per_minute: 30,
            recipients_per_day: 10_000,
            external_per_hour: 0,
            internal_per_hour: 0,
            spam_per_day: 0,
            action: SpamAction::BlockUserForToday,
        }
    }

    #[test]
    fn the_31st_message_in_a_minute_is_deferred() {
        let mut c = MailboxCounters::default();
        let one = MessageCount {
            external: 1,
            internal: 0,
        };
        for i in 0..30 {
            let usage = c.usage(T0 + i);
            assert_eq!(
                judge(&usage, &thresholds(), one),
                Judgement::Accept { alert: None }
            );
            c.record(T0 + i, one);
        }
        assert_eq!(
            judge(&c.usage(T0 + 30), &thresholds(), one),
            Judgement::MessageRate
        );
        assert!(!may_start(&c.usage(T0 + 30), 30));
        // The first message leaves the window 60 s after it was counted.
        assert!(may_start(&c.usage(T0 + 60), 30));
        assert!(may_start(&c.usage(T0 + 30), 0), "0 = no limit");
    }

    #[test]
    fn the_10001st_recipient_of_a_day_is_refused() {
        let usage = Usage {
            recipients_last_day: 9_999,
            ..Usage::default()
        };
        let one = MessageCount {
            external: 1,
            internal: 0,
        };
        let two = MessageCount {
            external: 1,
            internal: 1,
        };
        assert_eq!(
            judge(&usage, &thresholds(), one),
            Judgement::Accept { alert: None }
        );
        assert_eq!(judge(&usage, &thresholds(), two), Judgement::RecipientRate);
    }

    #[test]
    fn spam_thresholds_restrict_or_alert() {
        let t = Thresholds {
            external_per_hour: 500,
            internal_per_hour: 1000,
            spam_per_day: 1000,
            ..thresholds()
        };
        let usage = Usage {
            external_last_hour: 499,
            internal_last_hour: 10,
            recipients_last_day: 509,
            ..Usage::default()
        };
        let ext = |n| MessageCount {
            external: n,
            internal: 0,
        };
        assert_eq!(judge(&usage, &t, ext(1)), Judgement::Accept { alert: None });
        assert_eq!(
            judge(&usage, &t, ext(2)),
            Judgement::Restrict(Crossed {
                threshold: Threshold::RecipientLimitExternalPerHour,
                count: 501,
                limit: 500
            })
        );
        let alert = Thresholds {
            action: SpamAction::Alert,
            ..t
        };
        assert!(matches!(
            judge(&usage, &alert, ext(2)),
            Judgement::Accept { alert: Some(c) } if c.threshold == Threshold::RecipientLimitExternalPerHour
        ));
        // The day threshold counts internal and external recipients together.
        let busy_day = Usage {
            recipients_last_day: 999,
            ..Usage::default()
        };
        let internal = MessageCount {
            external: 0,
            internal: 2,
        };
        assert!(matches!(
            judge(&busy_day, &t, internal),
            Judgement::Restrict(c) if c.threshold == Threshold::RecipientLimitPerDay
        ));
        for th in [
            Threshold::RecipientLimitExternalPerHour,
            Threshold::RecipientLimitInternalPerHour,
            Threshold::RecipientLimitPerDay,
        ] {
            assert_eq!(Threshold::parse(th.as_str()), Some(th));
        }
    }

    #[test]
    fn the_table_forgets_idle_mailboxes_and_round_trips_a_snapshot() {
        let table = CounterTable::default();
        let one = MessageCount {
            external: 2,
            internal: 1,
        };
        table.with("a@x", T0, |c| c.record(T0, one));
        table.with("b@x", T0, |c| c.record(T0, one));
        assert_eq!(table.usage("a@x", T0).recipients_last_day, 3);
        assert_eq!(table.len(), 2);
        // A look without recording leaves no entry.
        table.with("c@x", T0, |c| c.usage(T0));
        assert_eq!(table.len(), 2);
        let snap = table.export(T0 + 10);
        let json = serde_json::to_string(&snap).unwrap();
        let back: Vec<(String, MailboxCounters)> = serde_json::from_str(&json).unwrap();
        let restored = CounterTable::default();
        restored.import(back, T0 + 10);
        assert_eq!(restored.usage("b@x", T0 + 10), table.usage("b@x", T0 + 10));
        assert_eq!(restored.usage("b@x", T0 + 10).messages_last_minute, 1);
        // A day later everything has left every window.
        table.sweep(T0 + DAY.length_secs());
        assert!(table.is_empty());
        let late = CounterTable::default();
        late.import(snap, T0 + DAY.length_secs());
        assert!(late.is_empty());
    }
}
