//! `submitgate mailbox get|set`: mailbox settings (Get-/Set-CASMailbox): the mailbox's own
//! value, its organization's and the effective one with its source; its sending limits, and,
//! from the running daemon (control socket) when it is reachable, its usage against each limit
//! and whether it is a restricted sender.

use std::process::ExitCode;

use clap::Subcommand;
use submitgate::control;
use submitgate::limiter::MailboxState;
use submitgate::policy::editor::{Change, MailboxAuthChange, Setting};
use submitgate::policy::{MailboxView, PolicySnapshot};

use super::blocked_sender::{expires, time};
use super::policy::{
    auth_rows, format_list, limit_rows, load_config_for_policy, load_policy, parse_bool_setting,
    parse_limit_setting, set, title, PolicyArgs,
};

#[derive(Subcommand)]
pub(super) enum MailboxCommand {
    /// Change a mailbox's settings (Set-CASMailbox); `inherit` is Exchange's $null.
    Set {
        address: String,
        /// true, false or inherit (also $true / $false / $null).
        #[arg(long, value_name = "true|false|inherit", value_parser = parse_bool_setting)]
        smtp_client_authentication_disabled: Option<Setting<bool>>,
        /// Concurrent sessions for this mailbox (1-100000), or inherit.
        #[arg(long, value_name = "N|inherit", value_parser = parse_limit_setting)]
        max_concurrent_sessions: Option<Setting<u32>>,
        /// Whether this mailbox may use Basic authentication (PLAIN, LOGIN, …) for SMTP AUTH,
        /// or inherit the organization's value (Set-User -AuthenticationPolicy).
        #[arg(long, value_name = "true|false|inherit", value_parser = parse_bool_setting)]
        allow_basic_auth_smtp: Option<Setting<bool>>,
        /// Whether this mailbox may submit over TLS 1.0/1.1, or inherit.
        #[arg(long, value_name = "true|false|inherit", value_parser = parse_bool_setting)]
        allow_legacy_tls_clients: Option<Setting<bool>>,
        /// Whether this mailbox's submissions without TLS are refused, or inherit.
        #[arg(long, value_name = "true|false|inherit", value_parser = parse_bool_setting)]
        require_tls: Option<Setting<bool>>,
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

/// Runs one mailbox subcommand.
pub(super) fn run(command: MailboxCommand) -> anyhow::Result<ExitCode> {
    match command {
        MailboxCommand::Set {
            address,
            smtp_client_authentication_disabled,
            max_concurrent_sessions,
            allow_basic_auth_smtp,
            allow_legacy_tls_clients,
            require_tls,
            json,
            args,
        } => {
            let change = Change::Mailbox {
                address: address.clone(),
                smtp_client_authentication_disabled,
                max_concurrent_sessions_per_mailbox: max_concurrent_sessions,
                auth: MailboxAuthChange {
                    allow_basic_auth_smtp,
                    allow_legacy_tls_clients,
                    require_tls,
                },
            };
            let snap = set(&args, &change)?;
            print_mailbox(&snap, &address, json, None)?;
            Ok(ExitCode::SUCCESS)
        }
        MailboxCommand::Get {
            address,
            json,
            args,
        } => {
            let snap = load_policy(&args)?;
            let live = live_state(&args, &snap.normalize(&address));
            print_mailbox(&snap, &address, json, live)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The mailbox's sessions, usage and block from the running daemon: `None` without a
/// configured control socket, an error text when the daemon does not answer.
fn live_state(args: &PolicyArgs, mailbox: &str) -> Option<Result<MailboxState, String>> {
    let config = load_config_for_policy(args).ok().flatten()?;
    let endpoint = config.control?;
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return Some(Err(e.to_string())),
    };
    let reply: Result<control::MailboxStateReply, _> = rt.block_on(control::request(
        &endpoint,
        &control::Request::MailboxState {
            address: mailbox.to_string(),
        },
    ));
    Some(reply.map(|r| r.state).map_err(|e| e.to_string()))
}

/// Prints the mailbox view as a list or JSON (with the daemon's live state when asked for).
fn print_mailbox(
    snap: &PolicySnapshot,
    address: &str,
    json: bool,
    live: Option<Result<MailboxState, String>>,
) -> anyhow::Result<()> {
    let view = snap.describe(address);
    if json {
        let mut v = serde_json::to_value(&view)?;
        if let Some(obj) = v.as_object_mut() {
            match &live {
                Some(Ok(state)) => {
                    obj.insert("live".into(), serde_json::to_value(state)?);
                }
                Some(Err(e)) => {
                    obj.insert("live_error".into(), serde_json::Value::String(e.clone()));
                }
                None => {}
            }
        }
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        out!("{}", format_mailbox(&view, live.as_ref()))?;
    }
    Ok(())
}

/// `N of LIMIT`, or `N (no limit)`.
fn against(n: u32, limit: u32) -> String {
    if limit == 0 {
        format!("{n} (no limit)")
    } else {
        format!("{n} of {limit}")
    }
}

/// The mailbox view in `Format-List` layout.
fn format_mailbox(v: &MailboxView, live: Option<&Result<MailboxState, String>>) -> String {
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
    if let Some(auth) = &v.authentication {
        rows.extend(auth_rows(auth));
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
    if let Some(limits) = &v.effective_limits {
        rows.extend(limit_rows(limits, Some(&v.mailbox_limits)));
        match live {
            None => {}
            Some(Err(e)) => rows.push(("Usage", format!("unknown: {e}"))),
            Some(Ok(state)) => {
                let u = &state.usage;
                rows.push(("Sessions", state.sessions.to_string()));
                rows.push((
                    "MessagesLastMinute",
                    against(u.messages_last_minute, limits.messages_per_minute),
                ));
                rows.push((
                    "RecipientsLastDay",
                    against(u.recipients_last_day, limits.recipients_per_day),
                ));
                rows.push((
                    "ExternalRecipientsLastHour",
                    against(
                        u.external_last_hour,
                        limits.recipient_limit_external_per_hour,
                    ),
                ));
                rows.push((
                    "InternalRecipientsLastHour",
                    against(
                        u.internal_last_hour,
                        limits.recipient_limit_internal_per_hour,
                    ),
                ));
                rows.push((
                    "RestrictedSender",
                    match &state.blocked {
                        None => "False".to_string(),
                        Some(b) => format!(
                            "True (since {}, {}; {} {} of {})",
                            time(b.since),
                            match b.until {
                                0 => "until released".to_string(),
                                _ => format!("until {}", expires(b)),
                            },
                            submitgate::text::cell(&b.threshold, submitgate::text::CELL_MAX_CHARS),
                            b.count,
                            b.limit
                        ),
                    },
                ));
            }
        }
    }
    format_list(&rows)
}
