//! The report as one JSON document: rows in the table's order, totals, the period asked for
//! and the events seen; tallies serialized in place, without a copy of the report.

use std::io::Write;

use serde::Serialize;

use super::range::rfc3339;
use super::tally::{Report, Row, Tally};
use super::ReportError;

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
        m.serialize_entry("auth_protocol", &t.auth_protocol)?;
        let shares = t
            .auth_protocol
            .shares()
            .map(|s| ["basic", "oauth"].into_iter().zip(s).collect::<Vec<_>>());
        m.serialize_entry("auth_protocol_share_percent", &shares.map(JsonPairs))?;
        m.serialize_entry("refusals", &t.refusals)?;
        m.serialize_entry("auth_failures", &t.auth_failures)?;
        m.serialize_entry("auth_refused", &t.auth_refused)?;
        m.serialize_entry("restricted", &t.restricted)?;
        m.serialize_entry("released", &t.released)?;
        m.serialize_entry("spam_alerts", &t.spam_alerts)?;
        m.serialize_entry("auth_refusals", &t.auth_refusals)?;
        m.serialize_entry("would_refuse", &t.would_refuse)?;
        m.serialize_entry("would_refuse_at_auth", &t.would_refuse_at_auth)?;
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
