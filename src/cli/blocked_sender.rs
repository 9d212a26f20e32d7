//! `submitgate blocked-sender list|remove`: the restricted senders (Exchange's
//! `Get-BlockedSenderAddress` / `Remove-BlockedSenderAddress`), through the running daemon's
//! control socket, so that they work beside it with either limiter backend.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;
use submitgate::control::{self, BlockedReply, ReleaseReply};
use submitgate::limiter::BlockedSender;
use submitgate::text;

use super::status::control_endpoint;
use super::ConfigArg;

#[derive(Subcommand)]
pub(super) enum BlockedSenderCommand {
    /// List the restricted senders (Get-BlockedSenderAddress).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Release a restricted sender (Remove-BlockedSenderAddress); exit 1 if it was not blocked.
    Remove {
        /// The mailbox address.
        address: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Runs one blocked-sender subcommand.
pub(super) fn run(command: BlockedSenderCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    match command {
        BlockedSenderCommand::List { json, config } => {
            let endpoint = control_endpoint(&config)?;
            let reply: BlockedReply = rt.block_on(control::request(
                &endpoint,
                &control::Request::BlockedSenders,
            ))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&reply.blocked)?)?;
            } else {
                out!("{}", format_list(&reply.blocked))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        BlockedSenderCommand::Remove {
            address,
            json,
            config,
        } => {
            let endpoint = control_endpoint(&config)?;
            let reply: ReleaseReply = rt.block_on(control::request(
                &endpoint,
                &control::Request::ReleaseSender {
                    address: address.clone(),
                },
            ))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&reply)?)?;
            } else {
                match &reply.released {
                    Some(b) => outln!("released: {}", text::cell(&b.mailbox, 320))?,
                    None => outln!(
                        "{} is not a restricted sender",
                        text::cell(&address, text::CELL_MAX_CHARS)
                    )?,
                }
            }
            Ok(if reply.released.is_some() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Unix seconds as RFC 3339 (UTC).
pub(super) fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// When a block ends, as `blocked-sender list` and `mailbox get` show it.
pub(super) fn expires(b: &BlockedSender) -> String {
    if b.until == 0 {
        "until released".to_string()
    } else {
        time(b.until)
    }
}

/// The table: one row per restricted sender (cells escaped and cut: an address comes from a
/// login).
fn format_list(blocked: &[BlockedSender]) -> String {
    if blocked.is_empty() {
        return "no restricted senders\n".to_string();
    }
    let header = [
        "SENDER ADDRESS",
        "BLOCKED SINCE",
        "EXPIRES",
        "REASON",
        "COUNT/LIMIT",
        "ACTION",
    ];
    let rows: Vec<[String; 6]> = blocked
        .iter()
        .map(|b| {
            [
                text::cell(&b.mailbox, text::CELL_MAX_CHARS).into_owned(),
                time(b.since),
                expires(b),
                text::cell(&b.threshold, text::CELL_MAX_CHARS).into_owned(),
                format!("{}/{}", b.count, b.limit),
                b.action.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            s.push_str(&" ".repeat(w.saturating_sub(cell.chars().count())));
        }
        format!("{}\n", s.trim_end())
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use submitgate::policy::SpamAction;

    #[test]
    fn the_table_aligns_and_escapes() {
        let rows = vec![
            BlockedSender {
                mailbox: "alice@contoso.com".into(),
                since: 1_800_000_000,
                until: 1_800_057_600,
                threshold: "recipient_limit_per_day".into(),
                count: 1001,
                limit: 1000,
                action: SpamAction::BlockUserForToday,
            },
            BlockedSender {
                mailbox: "bob\u{1b}[2J@contoso.com".into(),
                since: 1_800_000_001,
                until: 0,
                threshold: "recipient_limit_external_per_hour".into(),
                count: 501,
                limit: 500,
                action: SpamAction::BlockUser,
            },
        ];
        let text = format_list(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("SENDER ADDRESS"));
        assert!(lines[1].contains("2027-01-16T00:00:00Z"), "{text}");
        assert!(lines[2].contains("until released"), "{text}");
        assert!(lines[2].starts_with("bob\\u{1b}[2J@contoso.com"), "{text}");
        assert_eq!(format_list(&[]), "no restricted senders\n");
    }
}
