//! `submitgate report`: the SMTP AUTH clients report from audit logs ([`submitgate::report`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use submitgate::report;

#[derive(Args)]
pub(super) struct ReportArgs {
    /// Audit log files (plain or gzip; `-` = standard input).
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    audit: Vec<PathBuf>,
    /// Count events from this point on: 2026-11-27, an RFC 3339 timestamp, or 7d / 24h ago.
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// Count events before this point (a date includes that whole day).
    #[arg(long, value_name = "DATE")]
    until: Option<String>,
    /// An aligned table, CSV (RFC 4180) or JSON.
    #[arg(long, value_name = "FORMAT", default_value = "table", value_parser = ["table", "csv", "json"])]
    format: String,
}

/// Prints the report to standard output and its notes to standard error; exit 1 when an input
/// could not be read to its end.
pub(super) fn run(a: &ReportArgs) -> anyhow::Result<ExitCode> {
    let range = report::TimeRange::parse(
        a.since.as_deref(),
        a.until.as_deref(),
        std::time::SystemTime::now(),
    )?;
    let complete = report::run(
        &a.audit,
        range,
        a.format.parse()?,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
    )?;
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
