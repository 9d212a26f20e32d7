//! `submitgate report`: the SMTP AUTH clients report from audit logs ([`submitgate::report`]).
//! Without `--audit` it reads the audit log named in the configuration (`--config`) with its
//! rotated siblings.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use submitgate::audit::Target;
use submitgate::config::{Config, DEFAULT_CONFIG_PATH};
use submitgate::report;

#[derive(Args)]
pub(super) struct ReportArgs {
    /// Audit log files (plain or gzip; `-` = standard input). Default: the configuration's
    /// audit log and its rotated siblings (audit.log.2.gz, audit.log.1, audit.log).
    #[arg(long, value_name = "FILE", num_args = 1..)]
    audit: Vec<PathBuf>,
    /// The daemon configuration, read for its audit log when `--audit` is not given.
    #[arg(long, short = 'c', value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Count events from this point on: 2026-11-27, an RFC 3339 timestamp, or 7d / 24h ago.
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// Count events before this point (a date includes that whole day).
    #[arg(long, value_name = "DATE")]
    until: Option<String>,
    /// An aligned table, CSV (RFC 4180), JSON, or one self-contained HTML page with charts.
    #[arg(long, value_name = "FORMAT", default_value = "table", value_parser = ["table", "csv", "json", "html"])]
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
    let inputs = if a.audit.is_empty() {
        configured_logs(a)?
    } else {
        a.audit.clone()
    };
    let complete = report::run(
        &inputs,
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

/// The configuration's audit log and its rotated siblings, oldest first.
fn configured_logs(a: &ReportArgs) -> anyhow::Result<Vec<PathBuf>> {
    let config = Config::load(&a.config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "no --audit given, and the configuration {} cannot be read for its audit log",
                a.config.display()
            )
        })?;
    match &config.audit.target {
        Target::File(path) => Ok(report::rotated_logs(path)),
        Target::Stdout => anyhow::bail!(
            "{}: the audit log goes to standard output (audit.path: \"-\"); name the files with --audit",
            a.config.display()
        ),
    }
}
