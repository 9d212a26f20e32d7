//! Configuration problems of the store, as the delivery workers met them: one record per
//! distinct cause (not per copy or per attempt), kept until a delivery shows it fixed, for the
//! one loud log line and for `submitgate status`. Bounded: at most [`MAX_CAUSES`] causes of at
//! most [`MAX_CAUSE_LEN`] characters (control characters escaped: part of a cause may come
//! from a server), each remembering at most [`MAX_MAILBOXES`] mailboxes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{ProblemScope, StoreError};

/// Distinct causes listed; further ones are only counted.
pub const MAX_CAUSES: usize = 32;
/// Longest cause kept, in characters.
pub const MAX_CAUSE_LEN: usize = 400;
/// Mailboxes remembered per cause (for [`ProblemScope::Mailboxes`]).
pub const MAX_MAILBOXES: usize = 100;

/// The shared record (cheap to clone; the workers write, the control socket reads).
#[derive(Debug, Clone, Default)]
pub struct Problems {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    by_cause: BTreeMap<String, Record>,
    /// Failed attempts whose cause did not fit in the list.
    unlisted: u64,
}

#[derive(Debug)]
struct Record {
    store: &'static str,
    scope: ProblemScope,
    since: SystemTime,
    last_seen: SystemTime,
    failed_attempts: u64,
    mailboxes: BTreeSet<String>,
}

/// What [`Problems::record`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A cause not seen since the last success: log it loudly, now.
    New,
    /// Known since this time: already logged.
    Known { since: SystemTime },
    /// Not listed: [`MAX_CAUSES`] causes are already listed (log that once: `first` is true).
    Unlisted { first: bool },
}

/// A cause a successful delivery showed fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    pub cause: String,
    pub since: SystemTime,
    pub failed_attempts: u64,
}

/// One configuration problem as `submitgate status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreProblem {
    /// `maildir` or `imap`.
    pub store: String,
    /// The problem, naming the server, file or directory.
    pub cause: String,
    /// `store` (every delivery) or `mailboxes` (those of the mailboxes that met it).
    pub scope: String,
    /// First met since the last success (RFC 3339).
    pub since: String,
    /// Last met (RFC 3339).
    pub last_seen: String,
    /// Attempts it stopped.
    pub failed_attempts: u64,
    /// Mailboxes it stopped (counted up to [`MAX_MAILBOXES`]).
    pub mailboxes: usize,
}

impl Problems {
    /// An empty record.
    pub fn new() -> Problems {
        Problems::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain inserts and removes: consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a failed attempt of `mailbox` with a configuration error.
    pub fn record(&self, store: &'static str, error: &StoreError, mailbox: &str) -> Recorded {
        let cause = bounded(error.cause());
        let now = SystemTime::now();
        let mut inner = self.lock();
        let listed = inner.by_cause.len();
        match inner.by_cause.get_mut(&cause) {
            Some(record) => {
                record.last_seen = now;
                record.failed_attempts += 1;
                if record.mailboxes.len() < MAX_MAILBOXES {
                    record.mailboxes.insert(mailbox.to_string());
                }
                Recorded::Known {
                    since: record.since,
                }
            }
            None if listed >= MAX_CAUSES => {
                inner.unlisted += 1;
                Recorded::Unlisted {
                    first: inner.unlisted == 1,
                }
            }
            None => {
                inner.by_cause.insert(
                    cause,
                    Record {
                        store,
                        scope: error.scope,
                        since: now,
                        last_seen: now,
                        failed_attempts: 1,
                        mailboxes: BTreeSet::from([mailbox.to_string()]),
                    },
                );
                Recorded::New
            }
        }
    }

    /// A delivery of `mailbox` succeeded: drops the problems of the whole store and those this
    /// mailbox met, and returns them.
    pub fn delivered(&self, mailbox: &str) -> Vec<Cleared> {
        let mut inner = self.lock();
        if inner.by_cause.is_empty() && inner.unlisted == 0 {
            return Vec::new();
        }
        let fixed: Vec<String> = inner
            .by_cause
            .iter()
            .filter(|(_, r)| r.scope == ProblemScope::Store || r.mailboxes.contains(mailbox))
            .map(|(cause, _)| cause.clone())
            .collect();
        // The unlisted causes are unknown: start counting them afresh.
        inner.unlisted = 0;
        fixed
            .into_iter()
            .filter_map(|cause| {
                let r = inner.by_cause.remove(&cause)?;
                Some(Cleared {
                    cause,
                    since: r.since,
                    failed_attempts: r.failed_attempts,
                })
            })
            .collect()
    }

    /// When the problem with `error`'s cause was first met, if it is listed.
    pub fn since(&self, error: &StoreError) -> Option<SystemTime> {
        let cause = bounded(error.cause());
        self.lock().by_cause.get(&cause).map(|r| r.since)
    }

    /// The problems now, oldest first.
    pub fn list(&self) -> Vec<StoreProblem> {
        let inner = self.lock();
        let mut out: Vec<StoreProblem> = inner
            .by_cause
            .iter()
            .map(|(cause, r)| StoreProblem {
                store: r.store.to_string(),
                cause: cause.clone(),
                scope: match r.scope {
                    ProblemScope::Store => "store",
                    ProblemScope::Mailboxes => "mailboxes",
                }
                .to_string(),
                since: rfc3339(r.since),
                last_seen: rfc3339(r.last_seen),
                failed_attempts: r.failed_attempts,
                mailboxes: r.mailboxes.len(),
            })
            .collect();
        out.sort_by(|a, b| a.since.cmp(&b.since).then(a.cause.cmp(&b.cause)));
        if inner.unlisted > 0 {
            out.push(StoreProblem {
                store: String::new(),
                cause: format!(
                    "more than {MAX_CAUSES} distinct configuration problems; the others are not listed (see the log)"
                ),
                scope: "store".to_string(),
                since: String::new(),
                last_seen: String::new(),
                failed_attempts: inner.unlisted,
                mailboxes: 0,
            });
        }
        out
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The cause as kept: control characters escaped, at most [`MAX_CAUSE_LEN`] characters.
fn bounded(cause: &str) -> String {
    let mut out = String::new();
    for (n, c) in cause.chars().enumerate() {
        if n >= MAX_CAUSE_LEN {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The problems as `submitgate status` prints them (nothing when there are none).
pub fn format_problems(problems: &[StoreProblem]) -> String {
    if problems.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "sent items: {} CONFIGURATION ERROR(S); the copies stay queued until fixed:\n",
        problems.len()
    );
    for p in problems {
        out.push_str(&format!("  {}", p.cause));
        if !p.since.is_empty() {
            out.push_str(&format!(
                " (since {}, last {}, {} failed attempt(s), {} mailbox(es))",
                p.since, p.last_seen, p.failed_attempts, p.mailboxes
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> StoreError {
        StoreError::configuration("imap 10.0.0.1:993: TLS certificate refused: not valid for name")
    }

    #[test]
    fn a_cause_is_new_once_and_cleared_by_a_success() {
        let p = Problems::new();
        assert_eq!(p.record("imap", &tls(), "alice@contoso.com"), Recorded::New);
        for mailbox in ["alice@contoso.com", "bob@contoso.com"] {
            assert!(matches!(
                p.record("imap", &tls(), mailbox),
                Recorded::Known { .. }
            ));
        }
        let listed = p.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].failed_attempts, 3);
        assert_eq!(listed[0].mailboxes, 2);
        assert_eq!(listed[0].scope, "store");
        assert!(format_problems(&listed).contains("not valid for name"));
        // Any success fixes a store-wide cause; then it is new again.
        let cleared = p.delivered("carol@fabrikam.com");
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].failed_attempts, 3);
        assert!(p.list().is_empty());
        assert_eq!(format_problems(&p.list()), "");
        assert_eq!(p.record("imap", &tls(), "alice@contoso.com"), Recorded::New);
    }

    #[test]
    fn a_mailbox_cause_is_cleared_only_by_its_mailboxes() {
        let p = Problems::new();
        let e = StoreError::configuration_for_mailboxes(
            "maildir: /var/mail/contoso.com is not a directory",
            "maildir: cannot create directory /var/mail/contoso.com/alice: Not a directory",
        );
        assert_eq!(p.record("maildir", &e, "alice@contoso.com"), Recorded::New);
        assert!(p.delivered("bob@fabrikam.com").is_empty());
        assert_eq!(p.list().len(), 1);
        assert!(p.since(&e).is_some());
        assert_eq!(p.delivered("alice@contoso.com").len(), 1);
        assert!(p.since(&e).is_none());
    }

    #[test]
    fn bounded_in_count_length_and_characters() {
        let p = Problems::new();
        for n in 0..MAX_CAUSES {
            let e = StoreError::configuration(format!("cause {n}"));
            assert_eq!(p.record("imap", &e, "a@b"), Recorded::New);
        }
        let extra = StoreError::configuration("one too many");
        assert_eq!(
            p.record("imap", &extra, "a@b"),
            Recorded::Unlisted { first: true }
        );
        assert_eq!(
            p.record("imap", &extra, "a@b"),
            Recorded::Unlisted { first: false }
        );
        let listed = p.list();
        assert_eq!(listed.len(), MAX_CAUSES + 1);
        assert_eq!(listed[MAX_CAUSES].failed_attempts, 2);

        let p = Problems::new();
        let long = StoreError::configuration(format!("x\n\u{1b}[31m{}", "y".repeat(10_000)));
        p.record("imap", &long, "a@b");
        let cause = &p.list()[0].cause;
        assert!(
            cause.chars().count() <= MAX_CAUSE_LEN + 8,
            "{}",
            cause.len()
        );
        assert!(!cause.chars().any(char::is_control), "{cause:?}");
        for n in 0..2 * MAX_MAILBOXES {
            p.record("imap", &long, &format!("user{n}@b"));
        }
        assert_eq!(p.list()[0].mailboxes, MAX_MAILBOXES);
    }
}
