//! The report as an aligned table for a terminal and as RFC 4180 CSV: one list of columns
//! ([`COLUMNS`]) for both, cells computed as they are printed.

use std::io::{self, Write};

use super::range::rfc3339;
use super::tally::{Report, Tally};
use super::ReportError;
use crate::text;

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
    // Last, so that CSV readers by column position written before it still read right.
    optional("Invalid login", |e| {
        e.tally.refusals.invalid_login.to_string()
    }),
    // Authentication policies (issue 16), after the columns above for the same reason.
    number("Basic %", |e| protocol_share(e, 0)),
    number("OAuth %", |e| protocol_share(e, 1)),
    optional("Basic auth disabled", |e| {
        (e.tally.refusals.basic_auth_disabled + e.tally.auth_refusals.basic_auth_disabled)
            .to_string()
    }),
    optional("Legacy TLS", |e| e.tally.refusals.legacy_tls.to_string()),
    optional("TLS required", |e| {
        (e.tally.refusals.tls_required + e.tally.auth_refusals.tls_required).to_string()
    }),
    optional("Would be refused", |e| {
        e.tally.would_refuse.total().to_string()
    }),
    optional("Would be refused at AUTH", |e| {
        e.tally.would_refuse_at_auth.total().to_string()
    }),
    // Sending limits and restricted senders (issue 15), last.
    optional("Message rate limit", |e| {
        e.tally.refusals.message_rate_limit.to_string()
    }),
    optional("Recipient rate limit", |e| {
        e.tally.refusals.recipient_rate_limit.to_string()
    }),
    optional("Recipients per message", |e| {
        e.tally.refusals.recipients_per_message.to_string()
    }),
    optional("Sender restricted", |e| {
        e.tally.refusals.sender_restricted.to_string()
    }),
    optional("Times restricted", |e| e.tally.restricted.to_string()),
    optional("Times released", |e| e.tally.released.to_string()),
    optional("Spam alerts", |e| e.tally.spam_alerts.to_string()),
];

/// Percent of the messages sent with Basic (0) or OAuth (1), one decimal; empty without
/// messages.
fn protocol_share(e: &Entry<'_>, i: usize) -> String {
    e.tally
        .auth_protocol
        .shares()
        .map_or(String::new(), |s| format!("{:.1}", s[i]))
}

/// `PLAIN:3 LOGIN:1`.
fn mechanisms(t: &Tally) -> String {
    t.auth_mechanisms
        .iter()
        .map(|(m, n)| format!("{m}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Aligned columns (text left, numbers right, `-` for an undefined share; a text cell escaped
/// and cut to [`text::CELL_MAX_CHARS`]), a rule under the header and above the totals; optional columns only when one of their values is not zero.
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
        } else if c.numeric {
            v
        } else {
            // A sender comes from the audit log: escaped and cut, it cannot break the table.
            text::cell(&v, text::CELL_MAX_CHARS).into_owned()
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
    write_would_refuse(report, out)
}

/// The `report_only` summary under the table: what enforcing the rules would refuse, and how
/// many senders that is.
fn write_would_refuse(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    for (what, counts, senders) in [
        (
            "submissions",
            report.totals.would_refuse,
            report
                .rows
                .iter()
                .filter(|r| r.tally.would_refuse.total() > 0)
                .count(),
        ),
        (
            "logins at AUTH",
            report.totals.would_refuse_at_auth,
            report
                .rows
                .iter()
                .filter(|r| r.tally.would_refuse_at_auth.total() > 0)
                .count(),
        ),
    ] {
        if counts.total() == 0 {
            continue;
        }
        let by_reason: Vec<String> = [
            ("basic_auth_disabled", counts.basic_auth_disabled),
            ("legacy_tls", counts.legacy_tls),
            ("tls_required", counts.tls_required),
            ("other", counts.other),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
        writeln!(
            out,
            "\nWould be refused (report_only rules), {what}: {} from {senders} sender(s) ({})",
            counts.total(),
            by_reason.join(", ")
        )?;
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

/// The table as the HTML report shows it: the columns the terminal table shows (optional
/// ones only when not all zero), each with whether it is numeric, and the cells of every
/// sender and of the totals, unescaped and uncut (the HTML writer escapes them).
pub(super) struct Cells {
    pub(super) headers: Vec<(&'static str, bool)>,
    pub(super) rows: Vec<Vec<String>>,
    pub(super) totals: Vec<String>,
}

/// See [`Cells`].
pub(super) fn cells(report: &Report) -> Cells {
    let columns: Vec<&Column> = COLUMNS
        .iter()
        .filter(|c| !c.optional || entries(report).any(|e| (c.cell)(&e) != "0"))
        .collect();
    let totals_label = format!("Total ({} senders)", report.rows.len());
    let mut rows = Vec::with_capacity(report.rows.len());
    let mut totals = Vec::new();
    for e in entries(report) {
        let values: Vec<String> = columns
            .iter()
            .map(|c| {
                if e.is_total && c.header == "Sender address" {
                    totals_label.clone()
                } else {
                    (c.cell)(&e)
                }
            })
            .collect();
        if e.is_total {
            totals = values;
        } else {
            rows.push(values);
        }
    }
    Cells {
        headers: columns.iter().map(|c| (c.header, c.numeric)).collect(),
        rows,
        totals,
    }
}
