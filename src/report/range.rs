//! The period a report covers: `--since` / `--until` parsed into a [`TimeRange`], and the
//! RFC 3339 timestamps of the audit log read and written with chrono. Every time is at or after
//! the Unix epoch (as the audit log writes them); anything earlier is not a valid bound or
//! timestamp.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use super::ReportError;

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
                    since: format_smart(s),
                    until: format_smart(u),
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
        let midnight = NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()?
            .and_hms_opt(0, 0, 0)?
            .and_utc();
        let midnight = since_epoch(midnight)?;
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

/// `YYYY-MM-DD` exactly (chrono's `%Y` alone would also take a sign or more digits).
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// An RFC 3339 timestamp with `Z` or a numeric offset (`±HH:MM`), fractional seconds
/// optional, `T` or a space between date and time.
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    since_epoch(t.with_timezone(&Utc))
}

/// `t` as a [`SystemTime`], if it is not before the Unix epoch. A leap second (`:60`, which
/// chrono keeps as nanoseconds past 10⁹) counts as `:59`.
fn since_epoch(t: DateTime<Utc>) -> Option<SystemTime> {
    let secs = u64::try_from(t.timestamp()).ok()?;
    let nanos = t.timestamp_subsec_nanos() % 1_000_000_000;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// A point in time as the audit log writes it: UTC, milliseconds (`2026-11-27T14:33:33.286Z`).
pub(super) fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// UTC, with the fraction only when there is one, then all nine digits (in error messages).
fn format_smart(t: SystemTime) -> String {
    let t = DateTime::<Utc>::from(t);
    let precision = if t.timestamp_subsec_nanos() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Nanos
    };
    t.to_rfc3339_opts(precision, true)
}
