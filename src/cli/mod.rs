//! The `submitgate` command line: the clap definitions of every subcommand and the dispatch to
//! their handlers, one file per subcommand group. A binary-side module (declared from
//! `main.rs`): it is the binary's edge, where `anyhow` and printing live; the logic it calls is
//! in the library.
//!
//! - `serve`: the daemon in the foreground, with its signals.
//! - `check`: the configuration and policy files checked.
//! - `policy`: what the policy commands share (`--policies`, loading, editing, value parsers).
//! - `org`, `mailbox`: `org get|set`, `mailbox get|set` (the Exchange cmdlets).
//! - `status`: `status` and `reload`, through the running daemon's control socket.
//! - `blocked_sender`: `blocked-sender list|remove` (restricted senders), through it too.
//! - `spool`: `spool list|retry`.
//! - `report`: the SMTP AUTH clients report from audit logs.
//! - `generate` (hidden): man pages and shell completions from these definitions.
//!
//! Standard output is written only through `outln!`/`out!`, which return the write error
//! (`println!` panics on it): a reader that goes away (`submitgate report | head`) ends the
//! command quietly with exit status 141, as a tool killed by SIGPIPE reports in the shell.

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use submitgate::config::DEFAULT_CONFIG_PATH;

/// `println!` to standard output that returns the `io::Result` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` to standard output that returns the `io::Result` instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod access;
mod blocked_sender;
mod check;
mod generate;
mod mailbox;
mod org;
mod policy;
mod report;
mod serve;
mod spool;
mod status;

use blocked_sender::BlockedSenderCommand;
use mailbox::MailboxCommand;
use org::OrgCommand;
use report::ReportArgs;
use spool::SpoolCommand;

// The command line (no doc comment: clap would make it the long help).
#[derive(Parser)]
#[command(
    name = "submitgate",
    version,
    about = "Exchange Online's SMTP AUTH submission controls for Postfix"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// `--config FILE`, for every subcommand that reads the configuration (no doc comment: clap
// would make it the help text of the subcommands that take it).
#[derive(Args, Clone)]
struct ConfigArg {
    /// The daemon configuration file.
    #[arg(long, short = 'c', value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Serve(ConfigArg),
    /// Check the configuration and the policy files; print every error (exit 1 if any).
    Check(check::CheckArgs),
    /// Organization settings (Get-TransportConfig).
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Show the running daemon's sessions, policy and reload state (via the control socket).
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Make the running daemon reload its policy files now, and print the outcome.
    Reload {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Mailbox settings (Get-CASMailbox).
    Mailbox {
        #[command(subcommand)]
        command: MailboxCommand,
    },
    /// Restricted senders, blocked by an outbound spam threshold (Get-/Remove-BlockedSenderAddress;
    /// through the running daemon's control socket).
    BlockedSender {
        #[command(subcommand)]
        command: BlockedSenderCommand,
    },
    /// The Sent Items spool (works beside the running daemon).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// The SMTP AUTH clients report from audit logs: per sender, messages sent, TLS protocol
    /// shares, auth mechanisms, refusals by reason.
    Report(ReportArgs),
    /// Write the man pages and the bash/zsh/fish completions under DIR (packaging).
    #[command(hide = true)]
    Generate {
        /// Output directory: DIR/man/*.1 and DIR/completions/.
        dir: PathBuf,
    },
}

/// Logging for the commands other than `serve` (which follows `log:` in its configuration):
/// text to standard error, level from `RUST_LOG` or `SUBMITGATE_LOG` (default `info`).
fn init_stderr_logging() {
    let settings = submitgate::logging::Settings {
        target: Some(submitgate::logging::Target::Stderr),
        ..Default::default()
    };
    // Only fails when a logger is installed already, which nothing here does.
    let _ = submitgate::logging::init(&settings);
}

/// The exit status when standard output was closed early: 128 + SIGPIPE, what a shell shows
/// for `yes | head` (Rust ignores SIGPIPE, so the write fails with EPIPE instead).
pub const BROKEN_PIPE_EXIT: u8 = 141;

/// Runs the subcommand; its exit code, or the error `main` prints. Standard output closed by
/// its reader is not an error: the command stops quietly with [`BROKEN_PIPE_EXIT`].
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let result = dispatch(cli).and_then(|code| {
        io::stdout().lock().flush()?;
        Ok(code)
    });
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::from(BROKEN_PIPE_EXIT)),
        other => other,
    }
}

/// Whether an error comes from writing into a pipe nobody reads any more (directly, or
/// inside the report's CSV or JSON writer).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let kind = if let Some(io) = cause.downcast_ref::<io::Error>() {
            Some(io.kind())
        } else if let Some(json) = cause.downcast_ref::<serde_json::Error>() {
            json.io_error_kind()
        } else if let Some(csv) = cause.downcast_ref::<csv::Error>() {
            match csv.kind() {
                csv::ErrorKind::Io(io) => Some(io.kind()),
                _ => None,
            }
        } else {
            None
        };
        kind == Some(io::ErrorKind::BrokenPipe)
    })
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    if !matches!(cli.command, Command::Serve(_)) {
        init_stderr_logging();
    }
    match cli.command {
        Command::Serve(c) => serve::run(&c),
        Command::Check(args) => check::run(&args),
        Command::Org { command } => org::run(command),
        Command::Status { json, config } => status::status(json, &config),
        Command::Reload { json, config } => status::reload(json, &config),
        Command::Mailbox { command } => mailbox::run(command),
        Command::Spool { command } => spool::run(command),
        Command::BlockedSender { command } => blocked_sender::run(command),
        Command::Report(args) => report::run(&args),
        Command::Generate { dir } => generate::run(&dir),
    }
}
