//! The `submitgate` command: argument parsing, logging set-up, signals, and the small amount of
//! formatting the administrative subcommands need. The logic lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use submitgate::config::{Config, DEFAULT_CONFIG_PATH};
use submitgate::control;
use submitgate::daemon::Daemon;
use submitgate::policy::editor::{self, Change, Setting};
use submitgate::policy::{self, LoadOptions, MailboxView, PolicySnapshot};
use submitgate::report;
use submitgate::sent_items::spool::{EntryId, EntryInfo, Spool};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "submitgate",
    version,
    about = "Exchange Online's SMTP AUTH submission controls for Postfix"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// The daemon configuration file.
    #[arg(long, short = 'c', value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Args, Clone)]
struct PolicyArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The policy directory (default: `policies` from the configuration).
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Serve(ConfigArg),
    /// Check the configuration and the policy files; print every error (exit 1 if any).
    Check(PolicyArgs),
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
    /// The Sent Items spool (works beside the running daemon).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// The SMTP AUTH clients report from audit logs: per sender, messages sent, TLS protocol
    /// shares, auth mechanisms, refusals by reason.
    Report(ReportArgs),
}

#[derive(Subcommand)]
enum SpoolCommand {
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

#[derive(Args)]
struct ReportArgs {
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

#[derive(Subcommand)]
enum OrgCommand {
    /// Change an organization's settings (Set-TransportConfig).
    Set {
        /// Organization name.
        name: String,
        /// true or false (also $true / $false).
        #[arg(long, value_name = "true|false", value_parser = parse_bool)]
        smtp_client_authentication_disabled: Option<bool>,
        /// Concurrent sessions per mailbox (1-100000).
        #[arg(long, value_name = "N")]
        max_concurrent_sessions: Option<u32>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        args: PolicyArgs,
    },
    /// Show one organization, or all of them.
    Get {
        /// Organization name (all organizations when omitted).
        name: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        args: PolicyArgs,
    },
}

#[derive(Subcommand)]
enum MailboxCommand {
    /// Change a mailbox's settings (Set-CASMailbox); `inherit` is Exchange's $null.
    Set {
        address: String,
        /// true, false or inherit (also $true / $false / $null).
        #[arg(long, value_name = "true|false|inherit", value_parser = parse_bool_setting)]
        smtp_client_authentication_disabled: Option<Setting<bool>>,
        /// Concurrent sessions for this mailbox (1-100000), or inherit.
        #[arg(long, value_name = "N|inherit", value_parser = parse_limit_setting)]
        max_concurrent_sessions: Option<Setting<u32>>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        args: PolicyArgs,
    },
    /// Show a mailbox's own value, its organization's value and the effective value.
    Get {
        address: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        args: PolicyArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("submitgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SUBMITGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(c) => {
            let config = Config::load(&c.config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => check(&args),
        Command::Spool { command } => spool_command(command),
        Command::Status { json, config } => {
            let endpoint = control_endpoint(&config)?;
            let rt = tokio::runtime::Runtime::new()?;
            let status: control::Status =
                rt.block_on(control::request(&endpoint, &control::Request::Status))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", control::format_status(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { json, config } => {
            let endpoint = control_endpoint(&config)?;
            let rt = tokio::runtime::Runtime::new()?;
            let reply: control::ReloadReply =
                rt.block_on(control::request(&endpoint, &control::Request::Reload))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else if reply.ok {
                println!(
                    "reloaded: policy version {}{}",
                    reply.version.unwrap_or_default(),
                    if reply.unchanged { " (unchanged)" } else { "" }
                );
            } else {
                println!(
                    "reload FAILED; the old policy (version {}) stays in force:",
                    reply.version.unwrap_or_default()
                );
                for e in &reply.errors {
                    println!("  {e}");
                }
            }
            Ok(if reply.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Org {
            command:
                OrgCommand::Set {
                    name,
                    smtp_client_authentication_disabled,
                    max_concurrent_sessions,
                    json,
                    args,
                },
        } => {
            let change = Change::Organization {
                name: name.clone(),
                smtp_client_authentication_disabled,
                max_concurrent_sessions_per_mailbox: max_concurrent_sessions,
            };
            let snap = set(&args, &change)?;
            org_get(&snap, Some(&name), json)
        }
        Command::Mailbox {
            command:
                MailboxCommand::Set {
                    address,
                    smtp_client_authentication_disabled,
                    max_concurrent_sessions,
                    json,
                    args,
                },
        } => {
            let change = Change::Mailbox {
                address: address.clone(),
                smtp_client_authentication_disabled,
                max_concurrent_sessions_per_mailbox: max_concurrent_sessions,
            };
            let snap = set(&args, &change)?;
            print_mailbox(&snap, &address, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Org {
            command: OrgCommand::Get { name, json, args },
        } => {
            let snap = load_policy(&args)?;
            org_get(&snap, name.as_deref(), json)
        }
        Command::Mailbox {
            command:
                MailboxCommand::Get {
                    address,
                    json,
                    args,
                },
        } => {
            let snap = load_policy(&args)?;
            print_mailbox(&snap, &address, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(a) => {
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
    }
}

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

fn spool_command(command: SpoolCommand) -> anyhow::Result<ExitCode> {
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
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", format_spool(&entries));
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
                println!("{id}: queued again");
            }
            println!(
                "{} entr{} queued again; the daemon picks {} up within its scan_interval",
                moved.len(),
                if moved.len() == 1 { "y" } else { "ies" },
                if moved.len() == 1 { "it" } else { "them" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `spool list` as a table; an unreadable entry shows its problem as the error.
fn format_spool(entries: &[EntryInfo]) -> String {
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            [
                e.id.to_string(),
                e.mailbox.clone().unwrap_or_else(|| "?".into()),
                e.queue_id.clone().unwrap_or_else(|| "?".into()),
                humantime::format_duration(std::time::Duration::from_secs(e.age.as_secs()))
                    .to_string(),
                e.attempts.to_string(),
                e.problem
                    .clone()
                    .or_else(|| e.last_error.clone())
                    .unwrap_or_default(),
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

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let daemon = Daemon::start(config).await?;
    tracing::info!("submitgate {} ready", env!("CARGO_PKG_VERSION"));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading policies");
                daemon.reload().await;
            }
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the audit log");
                daemon.reopen_audit().await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    daemon.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn print_mailbox(snap: &PolicySnapshot, address: &str, json: bool) -> anyhow::Result<()> {
    let view = snap.describe(address);
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", format_mailbox(&view));
    }
    Ok(())
}

/// Edits the policy files (`org set` / `mailbox set`); a running daemon picks the change up
/// by itself (it watches the directory) or on SIGHUP.
fn set(args: &PolicyArgs, change: &Change) -> anyhow::Result<PolicySnapshot> {
    let config = load_config_for_policy(args)?;
    let (dir, opts) = policy_location(args, config.as_ref());
    let applied = editor::apply(&dir, &opts, change)?;
    if applied.changed {
        eprintln!("{}: updated", applied.file.display());
    } else {
        eprintln!("{}: unchanged (already set)", applied.file.display());
    }
    Ok(applied.snapshot)
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().trim_start_matches('$') {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{s:?}: expected true or false")),
    }
}

fn parse_bool_setting(s: &str) -> Result<Setting<bool>, String> {
    match s.to_ascii_lowercase().trim_start_matches('$') {
        "inherit" | "null" => Ok(Setting::Inherit),
        _ => parse_bool(s)
            .map(Setting::Value)
            .map_err(|_| format!("{s:?}: expected true, false or inherit")),
    }
}

fn parse_limit_setting(s: &str) -> Result<Setting<u32>, String> {
    match s.to_ascii_lowercase().trim_start_matches('$') {
        "inherit" | "null" => Ok(Setting::Inherit),
        n => n
            .parse()
            .map(Setting::Value)
            .map_err(|_| format!("{s:?}: expected a number or inherit")),
    }
}

fn control_endpoint(c: &ConfigArg) -> anyhow::Result<submitgate::endpoint::Endpoint> {
    let config = Config::load(&c.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.control.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no `control` socket configured (add e.g. control: \"unix:/run/submitgate/control.sock\")",
            c.config.display()
        )
    })
}

/// The configuration, when it exists or was asked for explicitly; policy commands can run on
/// `--policies DIR` alone.
fn load_config_for_policy(args: &PolicyArgs) -> anyhow::Result<Option<Config>> {
    let path = &args.config.config;
    let explicit = path != Path::new(DEFAULT_CONFIG_PATH);
    if !explicit && args.policies.is_some() && !path.exists() {
        return Ok(None);
    }
    match Config::load(path) {
        Ok(c) => Ok(Some(c)),
        Err(e) => bail!("{e}"),
    }
}

fn load_policy(args: &PolicyArgs) -> anyhow::Result<PolicySnapshot> {
    let config = load_config_for_policy(args)?;
    let (dir, opts) = policy_location(args, config.as_ref());
    policy::load_dir(&dir, &opts).map_err(|e| anyhow::anyhow!("{e}"))
}

fn policy_location(args: &PolicyArgs, config: Option<&Config>) -> (PathBuf, LoadOptions) {
    let dir = args
        .policies
        .clone()
        .or_else(|| config.map(|c| c.policies_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("./policies"));
    let opts = config.map(Config::policy_options).unwrap_or_default();
    (dir, opts)
}

fn check(args: &PolicyArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let config = match load_config_for_policy(args) {
        Ok(c) => {
            if let Some(c) = &c {
                println!("{}: configuration OK", c.path.display());
            }
            c
        }
        Err(e) => {
            println!("{e}");
            failed = true;
            None
        }
    };
    // The auth policy key is read at start: a file the daemon could not use fails here too.
    if let Some(path) = config
        .as_ref()
        .and_then(|c| c.auth_policy_api_key_file.as_ref())
    {
        if let Err(e) = submitgate::auth_policy::ApiKey::read(path) {
            println!("{e}");
            failed = true;
        }
    }
    let (dir, opts) = policy_location(args, config.as_ref());
    match policy::load_dir(&dir, &opts) {
        Ok(snap) => {
            println!(
                "{}: policies OK: {} organization(s), {} mailbox(es) with own settings, version {}",
                dir.display(),
                snap.organizations().len(),
                snap.mailbox_count(),
                snap.version
            );
            if snap.organizations().is_empty() {
                println!(
                    "{}: warning: no organization defined; every submission will be refused",
                    dir.display()
                );
            }
        }
        Err(errors) => {
            println!("{errors}");
            println!("{} error(s)", errors.0.len());
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn title(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn org_get(snap: &PolicySnapshot, name: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let orgs: Vec<_> = match name {
        Some(n) => match snap.organization(n) {
            Some(o) => vec![o],
            None => {
                let known: Vec<&str> = snap
                    .organizations()
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect();
                bail!("no organization {n:?} (known: {})", known.join(", "));
            }
        },
        None => snap.organizations().iter().collect(),
    };
    if json {
        let v: Vec<_> = orgs
            .iter()
            .map(|o| {
                serde_json::json!({
                    "organization": o.name,
                    "file": o.file,
                    "domains": o.domains,
                    "smtp_client_authentication_disabled": o.smtp_client_authentication_disabled,
                    "max_concurrent_sessions_per_mailbox": o.max_concurrent_sessions_per_mailbox,
                    "sent_items": o.sent_items,
                    "mailboxes_with_own_settings": snap.mailboxes_of(&o.name).len(),
                })
            })
            .collect();
        let out = if name.is_some() {
            v[0].clone()
        } else {
            serde_json::Value::Array(v)
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (i, o) in orgs.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let rows = [
            ("Organization", o.name.clone()),
            ("File", o.file.display().to_string()),
            ("Domains", o.domains.join(", ")),
            (
                "SmtpClientAuthenticationDisabled",
                title(o.smtp_client_authentication_disabled).to_string(),
            ),
            (
                "MaxConcurrentSessionsPerMailbox",
                o.max_concurrent_sessions_per_mailbox.to_string(),
            ),
            (
                "SentItems",
                format!(
                    "{} (folder {:?})",
                    if o.sent_items.enabled {
                        "enabled"
                    } else {
                        "disabled"
                    },
                    o.sent_items.folder
                ),
            ),
            (
                "MailboxesWithOwnSettings",
                snap.mailboxes_of(&o.name).len().to_string(),
            ),
        ];
        print!("{}", format_list(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// PowerShell's `Format-List` layout: aligned `Name : Value` lines.
fn format_list(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$} : {v}\n"))
        .collect()
}

fn format_mailbox(v: &MailboxView) -> String {
    let null_or =
        |b: Option<bool>| b.map_or("$null (inherits)".to_string(), |b| title(b).to_string());
    let mut rows = vec![
        ("Identity", v.address.clone()),
        (
            "Organization",
            v.organization
                .clone()
                .unwrap_or_else(|| "(none: no organization claims this domain)".into()),
        ),
        (
            "SmtpClientAuthenticationDisabled",
            title(v.effective_smtp_client_authentication_disabled).to_string(),
        ),
        ("Source", v.source.to_string()),
        (
            "MailboxValue",
            null_or(v.mailbox_smtp_client_authentication_disabled),
        ),
        (
            "OrganizationValue",
            v.organization_smtp_client_authentication_disabled
                .map_or("-".to_string(), |b| title(b).to_string()),
        ),
    ];
    if let Some(limit) = v.effective_max_concurrent_sessions {
        let from = if v.mailbox_max_concurrent_sessions.is_some() {
            "mailbox"
        } else {
            "organization"
        };
        rows.push(("MaxConcurrentSessions", format!("{limit} ({from})")));
    }
    if let Some(s) = &v.sent_items {
        rows.push((
            "SentItems",
            format!(
                "{} (folder {:?})",
                if s.enabled { "enabled" } else { "disabled" },
                s.folder
            ),
        ));
    }
    format_list(&rows)
}
