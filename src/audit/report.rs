//! `submitgate report`: Exchange's "SMTP AUTH clients" report computed from audit logs — one row
//! per sender address with messages sent, TLS protocol shares, auth mechanisms and refusals by
//! reason, plus totals. Inputs (plain or gzip, detected by magic bytes) are streamed line by line:
//! memory grows with the number of distinct senders, never with the size of the logs.
//!
//! What each event counts for is decided in one place, [`classify`]:
//! - **Messages sent**: `submission_completed` events, whatever the front end. The policy front
//!   end writes one at END-OF-MESSAGE; the milter writes one per message accepted at
//!   end-of-message. Neither a `submission_decision` allow (written once per transaction or
//!   session, before any message exists) nor `session_closed`'s `messages` field (a per-session
//!   sum of those same messages) is counted, so no message is counted twice.
//! - **TLS shares and auth mechanisms** are tallied over the messages sent: the `tls` and
//!   `sasl_method` fields of the `submission_completed` events. Shares are percentages of the
//!   messages whose TLS protocol is known; messages without TLS or with an unrecognised protocol
//!   are counted in "No TLS/unknown".
//! - **Refusals**: `submission_decision` events with decision `reject` or `defer`, by `reason`.
//! - **Auth failures / Auth refused**: `auth_failed` / `auth_refused_by_policy` events.
//! - Every other event kind (`session_opened`, `sent_copy_stored`, kinds added later…) is ignored.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};

/// Lines longer than this are skipped as malformed (an audit line is well under 1 KiB), so that a
/// file without newlines cannot make the report hold it whole.
pub const MAX_LINE_BYTES: usize = 1 << 20;

const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Errors of the report command.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// An input could not be opened.
    #[error("{path}: {source}")]
    Open {
        /// The file as given.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// `--since` / `--until` could not be understood.
    #[error(
        "invalid {option} {value:?}: expected a date (2026-11-27), an RFC 3339 timestamp \
         (2026-11-27T14:00:00Z, 2026-11-27T15:00:00+01:00) or a duration back from now (7d, 24h)"
    )]
    BadDate {
        /// `--since` or `--until`.
        option: &'static str,
        /// The value given.
        value: String,
    },
    /// `--since` is not before `--until`.
    #[error("--since ({since}) is not before --until ({until})")]
    EmptyRange {
        /// The start, RFC 3339.
        since: String,
        /// The end, RFC 3339.
        until: String,
    },
    /// An output format other than table, csv, json.
    #[error("unknown format {0:?} (expected table, csv or json)")]
    BadFormat(String),
    /// Writing the report failed.
    #[error("writing the report: {0}")]
    Write(#[from] io::Error),
    /// Writing the CSV failed.
    #[error("writing the report: {0}")]
    Csv(#[from] csv::Error),
    /// Writing the JSON failed.
    #[error("writing the report: {0}")]
    Json(#[from] serde_json::Error),
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for a terminal; all-zero optional columns are left out.
    Table,
    /// RFC 4180 CSV with a header row and every column, the totals as the last row.
    Csv,
    /// One JSON object: `rows`, `totals` and the period.
    Json,
}

impl FromStr for Format {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(ReportError::BadFormat(other.to_string())),
        }
    }
}

/// The events a report covers: `since <= ts < until`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive start.
    pub since: Option<SystemTime>,
    /// Exclusive end.
    pub until: Option<SystemTime>,
}

impl TimeRange {
    /// Parses `--since` and `--until`. Each accepts a date (`2026-11-27`, UTC), an RFC 3339
    /// timestamp, or a duration meaning "now minus" (`7d`, `24h`, `1h 30m`). A date in `--until`
    /// covers that whole day: `--since 2026-11-01 --until 2026-11-30` is all of November.
    pub fn parse(
        since: Option<&str>,
        until: Option<&str>,
        now: SystemTime,
    ) -> Result<TimeRange, ReportError> {
        let since = since
            .map(|s| parse_bound(s, now, false).ok_or_else(|| bad_date("--since", s)))
            .transpose()?;
        let until = until
            .map(|s| parse_bound(s, now, true).ok_or_else(|| bad_date("--until", s)))
            .transpose()?;
        if let (Some(s), Some(u)) = (since, until) {
            if s >= u {
                return Err(ReportError::EmptyRange {
                    since: humantime::format_rfc3339(s).to_string(),
                    until: humantime::format_rfc3339(u).to_string(),
                });
            }
        }
        Ok(TimeRange { since, until })
    }

    /// Whether `t` falls in the range.
    pub fn contains(&self, t: SystemTime) -> bool {
        self.since.map_or(true, |s| t >= s) && self.until.map_or(true, |u| t < u)
    }
}

fn bad_date(option: &'static str, value: &str) -> ReportError {
    ReportError::BadDate {
        option,
        value: value.to_string(),
    }
}

/// One bound: a date (its midnight, or the next midnight for an end bound), a timestamp, or a
/// duration back from `now`.
fn parse_bound(s: &str, now: SystemTime, end: bool) -> Option<SystemTime> {
    let s = s.trim();
    if is_date(s) {
        let midnight = humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).ok()?;
        return if end {
            midnight.checked_add(Duration::from_secs(86_400))
        } else {
            Some(midnight)
        };
    }
    if let Some(t) = parse_timestamp(s) {
        return Some(t);
    }
    let back = humantime::parse_duration(s).ok()?;
    now.checked_sub(back).filter(|t| *t >= UNIX_EPOCH)
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// An RFC 3339 timestamp with `Z` or a numeric offset, fractional seconds optional.
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || !s.is_ascii() || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if matches!(b[b.len() - 1], b'Z' | b'z') {
        return humantime::parse_rfc3339_weak(&s[..s.len() - 1]).ok();
    }
    // ±HH:MM
    let n = b.len();
    if n < 25 || !matches!(b[n - 6], b'+' | b'-') || b[n - 3] != b':' {
        return None;
    }
    let digits = |i: usize| -> Option<u64> {
        let (h, l) = (b[i], b[i + 1]);
        (h.is_ascii_digit() && l.is_ascii_digit()).then(|| u64::from((h - b'0') * 10 + (l - b'0')))
    };
    let (hours, minutes) = (digits(n - 5)?, digits(n - 2)?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(&s[..n - 6]).ok()?;
    let offset = Duration::from_secs(hours * 3600 + minutes * 60);
    if b[n - 6] == b'+' {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    }
}

/// The TLS protocols the report tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
    NoneOrUnknown,
}

impl Tls {
    /// Postfix's `encryption_protocol` (`TLSv1`, `TLSv1.2`…); absent or unrecognised = unknown.
    fn of(field: Option<&str>) -> Tls {
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

/// Why a submission was refused (`submission_decision` reject/defer `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    OrgDisabled,
    MailboxDisabled,
    UnknownOrganization,
    ConcurrencyLimit,
    LimiterUnavailable,
    Other,
}

impl Refusal {
    fn of(reason: Option<&str>) -> Refusal {
        match reason {
            Some("org_disabled") => Refusal::OrgDisabled,
            Some("mailbox_disabled") => Refusal::MailboxDisabled,
            Some("unknown_organization") => Refusal::UnknownOrganization,
            Some("concurrency_limit") => Refusal::ConcurrencyLimit,
            Some("limiter_unavailable") => Refusal::LimiterUnavailable,
            _ => Refusal::Other,
        }
    }
}

/// What one event adds to its sender's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contribution {
    Message,
    Refusal(Refusal),
    AuthFailure,
    AuthRefused,
    Nothing,
}

/// The counting rules (see the module documentation). This is the one place to change them,
/// for instance if a front end starts writing a different event per message.
fn classify(ev: &EventLine<'_>) -> Contribution {
    match &*ev.event {
        "submission_completed" => Contribution::Message,
        "submission_decision" => match ev.decision.as_deref() {
            Some("reject" | "defer") => Contribution::Refusal(Refusal::of(ev.reason.as_deref())),
            _ => Contribution::Nothing,
        },
        "auth_failed" => Contribution::AuthFailure,
        "auth_refused_by_policy" => Contribution::AuthRefused,
        _ => Contribution::Nothing,
    }
}

/// The fields of an audit line the report reads; every other field is ignored.
#[derive(Deserialize)]
struct EventLine<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    mailbox: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    decision: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tls: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sasl_method: Option<Cow<'a, str>>,
}

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
    /// Over the concurrent session limit.
    pub concurrency_limit: u64,
    /// The limiter could not be reached and the configuration says tempfail.
    pub limiter_unavailable: u64,
    /// A reason this report does not know (or none).
    pub other: u64,
}

impl Refusals {
    fn add(&mut self, r: Refusal) {
        *match r {
            Refusal::OrgDisabled => &mut self.org_disabled,
            Refusal::MailboxDisabled => &mut self.mailbox_disabled,
            Refusal::UnknownOrganization => &mut self.unknown_organization,
            Refusal::ConcurrencyLimit => &mut self.concurrency_limit,
            Refusal::LimiterUnavailable => &mut self.limiter_unavailable,
            Refusal::Other => &mut self.other,
        } += 1;
    }

    fn merge(&mut self, o: &Refusals) {
        self.org_disabled += o.org_disabled;
        self.mailbox_disabled += o.mailbox_disabled;
        self.unknown_organization += o.unknown_organization;
        self.concurrency_limit += o.concurrency_limit;
        self.limiter_unavailable += o.limiter_unavailable;
        self.other += o.other;
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.org_disabled
            + self.mailbox_disabled
            + self.unknown_organization
            + self.concurrency_limit
            + self.limiter_unavailable
            + self.other
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
    /// Refused submissions by reason.
    pub refusals: Refusals,
    /// `auth_failed` events.
    pub auth_failures: u64,
    /// `auth_refused_by_policy` events.
    pub auth_refused: u64,
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
        self.refusals.merge(&o.refusals);
        self.auth_failures += o.auth_failures;
        self.auth_refused += o.auth_refused;
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
        let open = || -> io::Result<Box<dyn Read>> {
            if path == Path::new("-") {
                Ok(Box::new(io::stdin().lock()))
            } else {
                Ok(Box::new(File::open(path)?))
            }
        };
        let raw = open().map_err(|source| ReportError::Open {
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
        let tally = self.tally(mailbox);
        match contribution {
            Contribution::Message => {
                tally.messages_sent += 1;
                tally.tls.add(Tls::of(ev.tls.as_deref()));
                let mechanism = ev.sasl_method.as_deref().map(str::trim).unwrap_or("");
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
            Contribution::AuthRefused => tally.auth_refused += 1,
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
        Report {
            range: self.range,
            rows,
            totals,
            first_event: self.first_event,
            last_event: self.last_event,
            skipped: self.skipped,
            read_errors: self.read_errors,
        }
    }
}

/// Wraps `raw` in a gzip decoder when it starts with the gzip magic bytes (members concatenated
/// by `cat a.gz b.gz` are all read).
fn decompressing(mut raw: Box<dyn Read>) -> io::Result<Box<dyn BufRead>> {
    let mut magic = [0u8; 2];
    let mut n = 0;
    while n < magic.len() {
        match raw.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let input = io::Cursor::new(magic[..n].to_vec()).chain(raw);
    Ok(if magic[..n] == [0x1f, 0x8b] {
        Box::new(BufReader::with_capacity(
            READ_BUFFER_BYTES,
            MultiGzDecoder::new(input),
        ))
    } else {
        Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, input))
    })
}

/// Reads one line into `buf` without its line end, keeping at most `max` bytes of it (the rest
/// is read and dropped). `None` at the end of input; `Some(false)` when the line was cut.
fn read_line_bounded(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<bool>> {
    buf.clear();
    let mut whole = true;
    let mut any = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(whole));
        }
        any = true;
        let newline = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        let room = max.saturating_sub(buf.len());
        if part.len() > room {
            whole = false;
        }
        buf.extend_from_slice(&part[..part.len().min(room)]);
        let used = newline.map_or(chunk.len(), |i| i + 1);
        input.consume(used);
        if newline.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(whole));
        }
    }
}

/// Reads every input and prints the report to `out` and notes (skipped lines, read errors) to
/// `notes`. Returns `false` when an input could not be read to its end.
pub fn run(
    inputs: &[PathBuf],
    range: TimeRange,
    format: Format,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<bool, ReportError> {
    let mut builder = ReportBuilder::new(range);
    for path in inputs {
        builder.add_path(path)?;
    }
    let report = builder.finish();
    match format {
        Format::Table => write_table(&report, out)?,
        Format::Csv => write_csv(&report, out)?,
        Format::Json => write_json(&report, out)?,
    }
    out.flush()?;
    if report.skipped.lines > 0 {
        let first = report
            .skipped
            .first
            .as_ref()
            .map(|(f, l)| format!(" (first at {f}:{l})"))
            .unwrap_or_default();
        let n = report.skipped.lines;
        let lines = if n == 1 { "line" } else { "lines" };
        writeln!(notes, "{n} {lines} skipped{first}")?;
    }
    for e in &report.read_errors {
        writeln!(notes, "{e}; the rest of this input was not read")?;
    }
    Ok(report.read_errors.is_empty())
}

/// A line of the table and CSV outputs: a sender, or the totals.
struct Entry<'a> {
    sender: &'a str,
    domain: &'a str,
    tally: &'a Tally,
    is_total: bool,
}

/// The senders then the totals, labelled `(total)` (which cannot be an address).
fn entries(report: &Report) -> impl Iterator<Item = Entry<'_>> {
    report
        .rows
        .iter()
        .map(|r| Entry {
            sender: &r.sender,
            domain: r.domain(),
            tally: &r.tally,
            is_total: false,
        })
        .chain(std::iter::once(Entry {
            sender: TOTAL_LABEL,
            domain: "",
            tally: &report.totals,
            is_total: true,
        }))
}

const TOTAL_LABEL: &str = "(total)";

/// One column of the table and CSV outputs. Cells are computed as they are printed, so that
/// printing needs no memory beyond the report itself.
struct Column {
    header: &'static str,
    /// Left out of the table when every value, totals included, is zero.
    optional: bool,
    numeric: bool,
    cell: fn(&Entry<'_>) -> String,
}

const fn text(header: &'static str, cell: fn(&Entry<'_>) -> String) -> Column {
    Column {
        header,
        optional: false,
        numeric: false,
        cell,
    }
}

const fn number(header: &'static str, cell: fn(&Entry<'_>) -> String) -> Column {
    Column {
        header,
        optional: false,
        numeric: true,
        cell,
    }
}

const fn optional(header: &'static str, cell: fn(&Entry<'_>) -> String) -> Column {
    Column {
        header,
        optional: true,
        numeric: true,
        cell,
    }
}

/// Percent of the messages with a known protocol, one decimal; empty when none is known.
fn share(e: &Entry<'_>, i: usize) -> String {
    e.tally
        .tls
        .shares()
        .map_or(String::new(), |s| format!("{:.1}", s[i]))
}

/// The columns, in order; the CSV has all of them.
const COLUMNS: &[Column] = &[
    text("Sender address", |e| e.sender.to_string()),
    text("Domain", |e| e.domain.to_string()),
    number("Messages sent", |e| e.tally.messages_sent.to_string()),
    number("TLS 1.0 %", |e| share(e, 0)),
    number("TLS 1.1 %", |e| share(e, 1)),
    number("TLS 1.2 %", |e| share(e, 2)),
    number("TLS 1.3 %", |e| share(e, 3)),
    number("No TLS/unknown", |e| {
        e.tally.tls.none_or_unknown.to_string()
    }),
    text("Auth mechanisms", |e| mechanisms(e.tally)),
    number("Org disabled", |e| {
        e.tally.refusals.org_disabled.to_string()
    }),
    number("Mailbox disabled", |e| {
        e.tally.refusals.mailbox_disabled.to_string()
    }),
    number("Unknown organization", |e| {
        e.tally.refusals.unknown_organization.to_string()
    }),
    number("Concurrency limit", |e| {
        e.tally.refusals.concurrency_limit.to_string()
    }),
    optional("Limiter unavailable", |e| {
        e.tally.refusals.limiter_unavailable.to_string()
    }),
    optional("Other refusals", |e| e.tally.refusals.other.to_string()),
    optional("Auth failures", |e| e.tally.auth_failures.to_string()),
    optional("Auth refused", |e| e.tally.auth_refused.to_string()),
];

/// `PLAIN:3 LOGIN:1`.
fn mechanisms(t: &Tally) -> String {
    t.auth_mechanisms
        .iter()
        .map(|(m, n)| format!("{m}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A point in time as the audit log writes it.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Aligned columns (text left, numbers right, `-` for an undefined share), a rule under the
/// header and above the totals; optional columns only when one of their values is not zero.
pub fn write_table(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    match (report.first_event, report.last_event) {
        (Some(f), Some(l)) => writeln!(
            out,
            "SMTP AUTH clients report: {} sender(s), events from {} to {}",
            report.rows.len(),
            rfc3339(f),
            rfc3339(l)
        )?,
        _ => writeln!(out, "SMTP AUTH clients report: no matching events")?,
    }
    writeln!(out)?;
    let totals_label = format!("Total ({} senders)", report.rows.len());
    let cell = |c: &Column, e: &Entry<'_>| -> String {
        if e.is_total && c.header == "Sender address" {
            return totals_label.clone();
        }
        let v = (c.cell)(e);
        if c.numeric && v.is_empty() {
            "-".to_string()
        } else {
            v
        }
    };
    let columns: Vec<&Column> = COLUMNS
        .iter()
        .filter(|c| !c.optional || entries(report).any(|e| (c.cell)(&e) != "0"))
        .collect();
    // First pass: the widths; second pass: the lines.
    let mut widths: Vec<usize> = columns.iter().map(|c| width(c.header)).collect();
    for e in entries(report) {
        for (w, c) in widths.iter_mut().zip(&columns) {
            *w = (*w).max(width(&cell(c, &e)));
        }
    }
    let line = |out: &mut dyn Write, values: &[String]| -> io::Result<()> {
        let mut text = String::new();
        for (i, ((c, w), v)) in columns.iter().zip(&widths).zip(values).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = " ".repeat(w.saturating_sub(width(v)));
            if c.numeric {
                text.push_str(&pad);
                text.push_str(v);
            } else {
                text.push_str(v);
                text.push_str(&pad);
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_string()).collect();
    line(out, &headers)?;
    line(out, &rule)?;
    for (i, e) in entries(report).enumerate() {
        if i == report.rows.len() {
            line(out, &rule)?;
        }
        let values: Vec<String> = columns.iter().map(|c| cell(c, &e)).collect();
        line(out, &values)?;
    }
    Ok(())
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// RFC 4180 CSV (CRLF line ends, quoting as needed): a header row, one row per sender, then
/// the totals labelled `(total)`. Every column is present; a TLS share is empty when the
/// sender has no message with a known protocol.
pub fn write_csv(report: &Report, out: &mut dyn Write) -> Result<(), ReportError> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    w.write_record(COLUMNS.iter().map(|c| c.header))?;
    for e in entries(report) {
        w.write_record(COLUMNS.iter().map(|c| (c.cell)(&e)))?;
    }
    w.flush()?;
    Ok(())
}

/// A tally as JSON.
struct JsonTally<'a>(&'a Tally);

impl Serialize for JsonTally<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let t = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("messages_sent", &t.messages_sent)?;
        m.serialize_entry("tls", &t.tls)?;
        let shares = t.tls.shares().map(|s| {
            let names = ["TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"];
            names.into_iter().zip(s).collect::<Vec<_>>()
        });
        m.serialize_entry("tls_share_percent", &shares.map(JsonPairs))?;
        m.serialize_entry("auth_mechanisms", &JsonMechanisms(&t.auth_mechanisms))?;
        m.serialize_entry("refusals", &t.refusals)?;
        m.serialize_entry("auth_failures", &t.auth_failures)?;
        m.serialize_entry("auth_refused", &t.auth_refused)?;
        m.end()
    }
}

/// Name/value pairs as a JSON object, in order.
struct JsonPairs(Vec<(&'static str, f64)>);

impl Serialize for JsonPairs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (*k, *v)))
    }
}

struct JsonMechanisms<'a>(&'a [(String, u64)]);

impl Serialize for JsonMechanisms<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Serialize)]
struct JsonRow<'a> {
    sender: &'a str,
    domain: &'a str,
    #[serde(flatten)]
    tally: JsonTally<'a>,
}

#[derive(Serialize)]
struct JsonTotals<'a> {
    senders: usize,
    #[serde(flatten)]
    tally: JsonTally<'a>,
}

/// The rows, serialized one at a time.
struct JsonRows<'a>(&'a [Row]);

impl Serialize for JsonRows<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| JsonRow {
            sender: &r.sender,
            domain: r.domain(),
            tally: JsonTally(&r.tally),
        }))
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    since: Option<String>,
    until: Option<String>,
    first_event: Option<String>,
    last_event: Option<String>,
    rows: JsonRows<'a>,
    totals: JsonTotals<'a>,
    skipped_lines: u64,
}

/// One JSON object: `rows` (an array of row objects, the order of the table), `totals`, the
/// range asked for, the first and last counted event and the skipped-line count.
pub fn write_json(report: &Report, out: &mut dyn Write) -> Result<(), ReportError> {
    let doc = JsonReport {
        since: report.range.since.map(rfc3339),
        until: report.range.until.map(rfc3339),
        first_event: report.first_event.map(rfc3339),
        last_event: report.last_event.map(rfc3339),
        rows: JsonRows(&report.rows),
        totals: JsonTotals {
            senders: report.rows.len(),
            tally: JsonTally(&report.totals),
        },
        skipped_lines: report.skipped.lines,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn timestamps() {
        let t = at("2026-11-27T14:33:33.286Z");
        assert_eq!(parse_timestamp("2026-11-27T14:33:33.286Z"), Some(t));
        assert_eq!(parse_timestamp("2026-11-27T15:33:33.286+01:00"), Some(t));
        assert_eq!(parse_timestamp("2026-11-27T09:03:33.286-05:30"), Some(t));
        assert_eq!(parse_timestamp("2026-11-27 14:33:33.286z"), Some(t));
        assert_eq!(
            parse_timestamp("2026-11-27T14:33:33Z"),
            Some(at("2026-11-27T14:33:33Z"))
        );
        for bad in [
            "",
            "2026-11-27",
            "2026-11-27T14:33:33",
            "2026-11-27T14:33:33.286",
            "2026-13-27T14:33:33Z",
            "2026-11-27T14:33:33+24:00",
            "2026-11-27T14:33:33+0100",
            "2026-11-27T14:33:33.28éZ",
            "yesterday at noon please",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn range_bounds() {
        let now = at("2026-11-27T12:00:00Z");
        let r = TimeRange::parse(Some("2026-11-01"), Some("2026-11-30"), now).unwrap();
        assert_eq!(r.since, Some(at("2026-11-01T00:00:00Z")));
        // A date as the end covers that whole day.
        assert_eq!(r.until, Some(at("2026-12-01T00:00:00Z")));
        assert!(r.contains(at("2026-11-30T23:59:59.999Z")));
        assert!(!r.contains(at("2026-12-01T00:00:00Z")));
        assert!(r.contains(at("2026-11-01T00:00:00Z")));
        assert!(!r.contains(at("2026-10-31T23:59:59.999Z")));

        let r = TimeRange::parse(Some("7d"), Some("24h"), now).unwrap();
        assert_eq!(r.since, Some(at("2026-11-20T12:00:00Z")));
        assert_eq!(r.until, Some(at("2026-11-26T12:00:00Z")));
        let r = TimeRange::parse(Some("2026-11-27T10:00:00+01:00"), None, now).unwrap();
        assert_eq!(r.since, Some(at("2026-11-27T09:00:00Z")));
        assert_eq!(r.until, None);

        assert!(matches!(
            TimeRange::parse(Some("2026-11-27"), Some("2026-11-26"), now),
            Err(ReportError::EmptyRange { .. })
        ));
        let e = TimeRange::parse(None, Some("last tuesday"), now).unwrap_err();
        assert!(e.to_string().contains("--until \"last tuesday\""), "{e}");
        assert!(TimeRange::parse(Some("2026-02-30"), None, now).is_err());
    }

    #[test]
    fn tls_protocols() {
        assert_eq!(Tls::of(Some("TLSv1")), Tls::V1_0);
        assert_eq!(Tls::of(Some("TLSv1.0")), Tls::V1_0);
        assert_eq!(Tls::of(Some("TLSv1.1")), Tls::V1_1);
        assert_eq!(Tls::of(Some("TLSv1.2")), Tls::V1_2);
        assert_eq!(Tls::of(Some("TLSv1.3")), Tls::V1_3);
        assert_eq!(Tls::of(Some("SSLv3")), Tls::NoneOrUnknown);
        assert_eq!(Tls::of(Some("")), Tls::NoneOrUnknown);
        assert_eq!(Tls::of(None), Tls::NoneOrUnknown);
    }

    fn contribution(json: &str) -> Contribution {
        classify(&serde_json::from_str::<EventLine<'_>>(json).unwrap())
    }

    #[test]
    fn counting_rules() {
        let ts = r#""ts":"2026-11-27T09:00:00.000Z","mailbox":"a@x""#;
        let c = |rest: &str| contribution(&format!("{{{ts},{rest}}}"));
        assert_eq!(
            c(r#""event":"submission_completed","front_end":"policy""#),
            Contribution::Message
        );
        assert_eq!(
            c(r#""event":"submission_completed","front_end":"milter""#),
            Contribution::Message
        );
        // Decided before any message exists: a milter session's allow is not a message.
        assert_eq!(
            c(r#""event":"submission_decision","front_end":"milter","decision":"allow""#),
            Contribution::Nothing
        );
        // The same messages again, summed per session.
        assert_eq!(
            c(r#""event":"session_closed","front_end":"milter","messages":2"#),
            Contribution::Nothing
        );
        assert_eq!(
            c(r#""event":"submission_decision","decision":"reject","reason":"org_disabled""#),
            Contribution::Refusal(Refusal::OrgDisabled)
        );
        assert_eq!(
            c(r#""event":"submission_decision","decision":"defer","reason":"concurrency_limit""#),
            Contribution::Refusal(Refusal::ConcurrencyLimit)
        );
        assert_eq!(
            c(r#""event":"submission_decision","decision":"defer","reason":"limiter_unavailable""#),
            Contribution::Refusal(Refusal::LimiterUnavailable)
        );
        assert_eq!(
            c(r#""event":"submission_decision","decision":"reject","reason":"solar_flare""#),
            Contribution::Refusal(Refusal::Other)
        );
        assert_eq!(c(r#""event":"auth_failed""#), Contribution::AuthFailure);
        assert_eq!(
            c(r#""event":"auth_refused_by_policy""#),
            Contribution::AuthRefused
        );
        for ignored in [
            "auth_succeeded",
            "session_opened",
            "sent_copy_stored",
            "limiter_unavailable",
            "something_new",
        ] {
            assert_eq!(c(&format!(r#""event":"{ignored}""#)), Contribution::Nothing);
        }
    }

    #[test]
    fn lines_are_bounded() {
        let input = b"short\r\nthis one is too long\nlast without newline";
        let mut r = io::BufReader::with_capacity(4, &input[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line_bounded(&mut r, &mut buf, 10).unwrap(), Some(true));
        assert_eq!(buf, b"short");
        assert_eq!(
            read_line_bounded(&mut r, &mut buf, 10).unwrap(),
            Some(false)
        );
        assert_eq!(buf, b"this one i");
        assert_eq!(
            read_line_bounded(&mut r, &mut buf, 100).unwrap(),
            Some(true)
        );
        assert_eq!(buf, b"last without newline");
        assert_eq!(read_line_bounded(&mut r, &mut buf, 100).unwrap(), None);
    }

    #[test]
    fn shares_round_to_a_tenth() {
        let tls = TlsCounts {
            v1_0: 1,
            v1_1: 0,
            v1_2: 0,
            v1_3: 2,
            none_or_unknown: 5,
        };
        assert_eq!(tls.known(), 3);
        assert_eq!(tls.shares(), Some([33.3, 0.0, 0.0, 66.7]));
        assert_eq!(TlsCounts::default().shares(), None);
    }

    #[test]
    fn builder_merges_case_and_keeps_first_skipped_line() {
        let log = concat!(
            r#"{"ts":"2026-11-27T09:00:00.000Z","event":"submission_completed","mailbox":"Ann@X.example","tls":"TLSv1.2","sasl_method":"plain"}"#,
            "\n\n",
            "{broken\n",
            r#"{"ts":"2026-11-27T09:00:01.000Z","event":"submission_completed","mailbox":"ann@x.example"}"#,
            "\n[1,2]\n",
        );
        let mut b = ReportBuilder::new(TimeRange::default());
        b.add_reader("mem", &mut log.as_bytes()).unwrap();
        let r = b.finish();
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].sender, "ann@x.example");
        assert_eq!(r.rows[0].domain(), "x.example");
        let t = &r.rows[0].tally;
        assert_eq!(t.messages_sent, 2);
        assert_eq!(t.tls.v1_2, 1);
        assert_eq!(t.tls.none_or_unknown, 1);
        assert_eq!(
            t.auth_mechanisms,
            vec![("PLAIN".to_string(), 1), ("unknown".to_string(), 1)]
        );
        assert_eq!(r.totals, *t);
        assert_eq!(r.skipped.lines, 2);
        assert_eq!(r.skipped.first, Some(("mem".to_string(), 3)));
        assert_eq!(r.first_event, Some(at("2026-11-27T09:00:00Z")));
        assert_eq!(r.last_event, Some(at("2026-11-27T09:00:01Z")));
    }
}
