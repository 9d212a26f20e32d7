//! `submitgate mailbox get|set`: mailbox settings (Get-/Set-CASMailbox): the mailbox's own
//! value, its organization's and the effective one with its source.

use std::process::ExitCode;

use clap::Subcommand;
use submitgate::policy::editor::{Change, MailboxAuthChange, Setting};
use submitgate::policy::{MailboxView, PolicySnapshot};

use super::policy::{
    auth_rows, format_list, load_policy, parse_bool_setting, parse_limit_setting, set, title,
    PolicyArgs,
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
            print_mailbox(&snap, &address, json)?;
            Ok(ExitCode::SUCCESS)
        }
        MailboxCommand::Get {
            address,
            json,
            args,
        } => {
            let snap = load_policy(&args)?;
            print_mailbox(&snap, &address, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints the mailbox view as a list or JSON.
fn print_mailbox(snap: &PolicySnapshot, address: &str, json: bool) -> anyhow::Result<()> {
    let view = snap.describe(address);
    if json {
        outln!("{}", serde_json::to_string_pretty(&view)?)?;
    } else {
        out!("{}", format_mailbox(&view))?;
    }
    Ok(())
}

/// The mailbox view in `Format-List` layout.
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
    format_list(&rows)
}
