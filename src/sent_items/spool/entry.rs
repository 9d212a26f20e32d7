//! What the spool records about an entry besides its bytes: the [`EntryId`] (also its file
//! name), the [`EntryMeta`] committed with it, a worker's [`DeliveryState`], and what
//! `submitgate spool list` and `status` show ([`EntryInfo`], [`SpoolCounts`]).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::format::rfc3339;
use super::SpoolError;

/// Identifies one entry: commit time in microseconds, process id, per-process counter.
/// Ordered by time, and its text form is a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub(super) micros: u64,
    pub(super) pid: u32,
    pub(super) seq: u64,
}

impl EntryId {
    /// When the entry was committed (by the committing host's clock).
    pub fn committed_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.micros)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:010}.{:06}-{}-{}",
            self.micros / 1_000_000,
            self.micros % 1_000_000,
            self.pid,
            self.seq
        )
    }
}

impl FromStr for EntryId {
    type Err = SpoolError;

    /// Accepts exactly the form [`Display`](fmt::Display) writes, so that an id typed by an
    /// operator can never name a file outside the spool.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || SpoolError::InvalidId(s.to_string());
        fn digits<T: FromStr>(part: &str) -> Option<T> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        }
        let (time, rest) = s.split_once('-').ok_or_else(invalid)?;
        let (pid, seq) = rest.split_once('-').ok_or_else(invalid)?;
        let (secs, micros) = time.split_once('.').ok_or_else(invalid)?;
        let secs: u64 = digits(secs).ok_or_else(invalid)?;
        let micros: u64 = digits(micros).ok_or_else(invalid)?;
        if micros >= 1_000_000 {
            return Err(invalid());
        }
        let id = EntryId {
            micros: secs
                .checked_mul(1_000_000)
                .and_then(|m| m.checked_add(micros))
                .ok_or_else(invalid)?,
            pid: digits(pid).ok_or_else(invalid)?,
            seq: digits(seq).ok_or_else(invalid)?,
        };
        if id.to_string() != s {
            return Err(invalid());
        }
        Ok(id)
    }
}

impl Serialize for EntryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a committed entry records besides the message itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The mailbox whose Sent Items receives the copy (normalized address).
    pub mailbox: String,
    /// The organization the mailbox belongs to.
    pub organization: String,
    /// Target folder, e.g. `Sent Items`.
    pub folder: String,
    /// Postfix queue id (milter macro `i`).
    pub queue_id: String,
    /// The message's Message-ID header, when it has one.
    pub message_id: Option<String>,
    /// Envelope sender.
    pub sender: String,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// When the submission was accepted; serialized as RFC 3339 UTC.
    #[serde(with = "rfc3339")]
    pub submitted_at: SystemTime,
    /// Message size in bytes; set by [`SpoolWriter::commit`](super::SpoolWriter::commit) to the bytes written.
    pub size: u64,
}

/// A worker's record of its attempts at one entry. A missing state file reads as the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryState {
    /// Delivery attempts so far (reset by [`Spool::retry`](super::Spool::retry)).
    pub attempts: u32,
    /// Start of the first attempt since commit or retry; `max_age` counts from here, so that
    /// a retried entry gets a full new period.
    #[serde(with = "rfc3339::option")]
    pub first_attempt: Option<SystemTime>,
    /// Not before this time.
    #[serde(with = "rfc3339::option")]
    pub next_attempt_at: Option<SystemTime>,
    /// Why the last attempt failed; for failed entries, why the entry was given up.
    pub last_error: Option<String>,
    /// The last attempt may have stored the message (e.g. the connection was lost after the
    /// APPEND was sent): search the folder for the Message-ID before storing again.
    pub outcome_unknown: bool,
    /// When [`Spool::fail`](super::Spool::fail) moved the entry to `failed/`.
    #[serde(with = "rfc3339::option")]
    pub failed_at: Option<SystemTime>,
}

/// One line of `submitgate spool list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryInfo {
    pub id: EntryId,
    /// `None` when the entry is unreadable (see `problem`).
    pub mailbox: Option<String>,
    pub queue_id: Option<String>,
    pub size: Option<u64>,
    /// Since submission (since commit when the metadata is unreadable); in whole seconds in JSON.
    #[serde(serialize_with = "serialize_secs")]
    pub age: Duration,
    pub attempts: u32,
    pub last_error: Option<String>,
    #[serde(with = "rfc3339::option")]
    pub next_attempt_at: Option<SystemTime>,
    /// Why the entry or its state cannot be read, if so.
    pub problem: Option<String>,
}

/// Spool depth for `submitgate status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpoolCounts {
    pub pending: usize,
    pub failed: usize,
    /// Age of the oldest pending entry (by commit time); in whole seconds in JSON.
    #[serde(serialize_with = "serialize_opt_secs")]
    pub oldest_pending: Option<Duration>,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn serialize_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}
