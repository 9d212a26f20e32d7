//! `submitgate spool list|retry`: the Sent Items spool, beside the running daemon.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use submitgate::config::Config;
use submitgate::sent_items::spool::{EntryId, EntryInfo, Spool};
use submitgate::text;

use super::ConfigArg;

#[derive(Subcommand)]
pub(super) enum SpoolCommand {
    /// List queued entries (or failed ones): id, mailbox, queue id, age, attempts, last error.
    List {
        /// Show entries given up on (in failed/) instead of queued ones.
        #[arg(long)]
        failed: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Put failed entries back in the queue, with a fresh delivery state.
    Retry {
        /// The entry id (as `spool list --failed` shows it).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every failed entry.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Runs one spool subcommand on a single-threaded runtime.
pub(super) fn run(command: SpoolCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match command {
        SpoolCommand::List {
            failed,
            json,
            config,
        } => {
            let spool = attach_spool(&config)?;
            let entries = rt.block_on(spool.list(failed))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&entries)?)?;
            } else {
                out!("{}", format_spool(&entries))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SpoolCommand::Retry { id, all, config } => {
            let spool = attach_spool(&config)?;
            let moved = if all {
                rt.block_on(spool.retry_all())?
            } else {
                let id: EntryId = id.unwrap_or_default().parse()?;
                rt.block_on(spool.retry(&id))?;
                vec![id]
            };
            for id in &moved {
                outln!("{id}: queued again")?;
            }
            outln!(
                "{} entr{} queued again; the daemon picks {} up within its scan_interval",
                moved.len(),
                if moved.len() == 1 { "y" } else { "ies" },
                if moved.len() == 1 { "it" } else { "them" }
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The spool named by the configuration, attached beside the daemon.
fn attach_spool(config: &ConfigArg) -> anyhow::Result<Spool> {
    let c = Config::load(&config.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    Spool::attach(&c.sent_items.spool).with_context(|| {
        format!(
            "spool {} (from {})",
            c.sent_items.spool.display(),
            c.path.display()
        )
    })
}

/// Longest LAST ERROR shown in the table, in characters (the last column is not padded).
const ERROR_MAX_CHARS: usize = 200;

/// `spool list` as a table; an unreadable entry shows its problem as the error. Every cell
/// is escaped; the padded ones are cut to [`text::CELL_MAX_CHARS`], the error to
/// [`ERROR_MAX_CHARS`] (`--json` has the whole values).
fn format_spool(entries: &[EntryInfo]) -> String {
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let cut = |s: &str| text::cell(s, text::CELL_MAX_CHARS).into_owned();
            [
                e.id.to_string(),
                cut(e.mailbox.as_deref().unwrap_or("?")),
                cut(e.queue_id.as_deref().unwrap_or("?")),
                humantime::format_duration(std::time::Duration::from_secs(e.age.as_secs()))
                    .to_string(),
                e.attempts.to_string(),
                text::cell(
                    e.problem
                        .as_deref()
                        .or(e.last_error.as_deref())
                        .unwrap_or_default(),
                    ERROR_MAX_CHARS,
                )
                .into_owned(),
            ]
        })
        .collect();
    let header = ["ID", "MAILBOX", "QUEUE ID", "AGE", "ATTEMPTS", "LAST ERROR"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out.push_str(&format!(
        "{} entr{}\n",
        rows.len(),
        if rows.len() == 1 { "y" } else { "ies" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(mailbox: &str, error: Option<String>) -> EntryInfo {
        EntryInfo {
            id: "1718022896.123456-4242-7".parse().expect("entry id"),
            mailbox: Some(mailbox.to_string()),
            queue_id: Some("5B0E4B672E".into()),
            size: Some(10),
            age: Duration::from_secs(90),
            attempts: 2,
            last_error: error,
            next_attempt_at: None,
            problem: None,
        }
    }

    #[test]
    fn huge_and_odd_cells_are_cut_and_escaped() {
        let huge = format!("{}@contoso.com", "a".repeat(70_000));
        let table = format_spool(&[
            entry(&huge, Some("e".repeat(70_000))),
            entry("bob\n\u{1b}[2J@contoso.com", Some("line\nbreak".into())),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        let width = text::CELL_MAX_CHARS;
        assert!(
            lines[1].contains(&format!("  {}…  ", "a".repeat(width - 1))),
            "{table}"
        );
        assert!(lines[1].ends_with(&format!("{}…", "e".repeat(ERROR_MAX_CHARS - 1))));
        assert!(lines[2].contains("bob\\n\\u{1b}[2J@contoso.com"), "{table}");
        assert!(lines[2].ends_with("line\\nbreak"), "{table}");
        // The columns stay aligned: QUEUE ID starts at the same place on every line.
        let at = |l: &str| l.find("5B0E4B672E").map(|i| l[..i].chars().count());
        assert_eq!(at(lines[1]), at(lines[2]));
        assert_eq!(lines[3], "2 entries");
    }
}
