//! `submitgate report`: Exchange's "SMTP AUTH clients" report computed from audit logs — one row
//! per sender address with messages sent, TLS protocol shares, auth mechanisms and refusals by
//! reason, plus totals. Inputs (plain or gzip, detected by magic bytes) are streamed line by line:
//! memory grows with the number of distinct senders, never with the size of the logs.
//!
//! What each event counts for is decided in one place, `event::classify`:
//! - **Messages sent**: `submission_completed` events, whatever the front end. The policy front
//!   end writes one at END-OF-MESSAGE; the milter writes one per message accepted at
//!   end-of-message. Neither a `submission_decision` allow (written once per transaction or
//!   session, before any message exists) nor `session_closed`'s `messages` field (a per-session
//!   sum of those same messages) is counted, so no message is counted twice.
//! - **TLS shares and auth mechanisms** are tallied over the messages sent: the `tls` and
//!   `sasl_method` fields of the `submission_completed` events. Shares are percentages of the
//!   messages whose TLS protocol is known; messages without TLS or with an unrecognised protocol
//!   are counted in "No TLS/unknown".
//! - **Authentication protocol** (Exchange's column of that name): the same messages by the kind
//!   of their mechanism, Basic or OAuth ([`crate::auth_protocol`] says which is which), as
//!   percentages of the messages sent.
//! - **Refusals**: `submission_decision` events with decision `reject` or `defer`, by `reason`.
//! - **Auth failures / Auth refused**: `auth_failed` / `auth_refused_by_policy` events.
//! - **Times restricted / Times released / Spam alerts**: `sender_restricted`,
//!   `sender_released` and `outbound_spam_alert` events (outbound spam thresholds).
//! - **Auth failures / Auth refused**: `auth_failed` / `auth_refused_by_policy` events; the
//!   latter also by the authentication rules' reasons, which the "Basic auth disabled" and
//!   "TLS required" columns add to the submissions refused for the same reason (a login refused
//!   at AUTH never reaches MAIL, so nothing is counted twice).
//! - **Would be refused**: `would_refuse` events (authentication rules in `report_only` mode),
//!   per sender: submissions from the milter and the policy front end, and separately logins at
//!   AUTH from the auth policy endpoint (one login may send several messages).
//! - Every other event kind (`session_opened`, `sent_copy_stored`, kinds added later…) is ignored.
//!
//! This is an offline tool that reads logs; it is not the audit writer ([`crate::audit`]) and
//! shares only the event names and [`Reason`](crate::reason::Reason) with it. One job per file:
//! - `range`: `--since` / `--until` ([`TimeRange`]) and the log's timestamps (chrono);
//! - `input`: opening an input, gzip detection, bounded line reading;
//! - `event`: the fields of one audit line and what it counts for (the counting rules);
//! - `tally`: per-sender counts ([`Tally`]), [`ReportBuilder`] and the finished [`Report`];
//! - `table`: the aligned table and the CSV (one column list for both);
//! - `json`: the JSON document;
//! - `html`: one self-contained page with Exchange's four charts (inline SVG) and the sortable
//!   table;
//! - `logs`: the audit log named in the configuration and its rotated siblings (the default
//!   inputs).

use std::io::{self, Write};
use std::path::PathBuf;
use std::str::FromStr;

mod event;
mod html;
mod input;
mod json;
mod logs;
mod range;
mod table;
mod tally;

pub use html::write_html;
pub use input::MAX_LINE_BYTES;
pub use json::write_json;
pub use logs::rotated_logs;
pub use range::{parse_timestamp, TimeRange};
pub use table::{write_csv, write_table};
pub use tally::{
    AuthProtocolCounts, AuthRuleCounts, Refusals, Report, ReportBuilder, Row, Skipped, Tally,
    TlsCounts,
};

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
    #[error("unknown format {0:?} (expected table, csv, json or html)")]
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
    /// One self-contained HTML page: four charts and the sortable table.
    Html,
}

impl FromStr for Format {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "html" => Ok(Format::Html),
            other => Err(ReportError::BadFormat(other.to_string())),
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
        Format::Html => write_html(&report, out)?,
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

#[cfg(test)]
mod tests;
