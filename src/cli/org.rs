//! `submitgate org get|set`: organization settings (Get-/Set-TransportConfig).

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use submitgate::policy::editor::Change;
use submitgate::policy::{OrgAuth, PolicySnapshot, RuleMode};

use super::policy::{
    auth_rows, format_list, limit_rows, load_policy, parse_bool, parse_mode, set, title, PolicyArgs,
};

#[derive(Subcommand)]
pub(super) enum OrgCommand {
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
        /// Whether Basic authentication (PLAIN, LOGIN, …) may be used for SMTP AUTH
        /// (Set-AuthenticationPolicy -AllowBasicAuthSmtp).
        #[arg(long, value_name = "true|false", value_parser = parse_bool)]
        allow_basic_auth_smtp: Option<bool>,
        /// Enforce the Basic authentication rule, or only report what it would refuse.
        #[arg(long, value_name = "enforce|report_only", value_parser = parse_mode)]
        basic_auth_mode: Option<RuleMode>,
        /// Whether TLS 1.0/1.1 clients may submit (Set-TransportConfig -AllowLegacyTLSClients).
        #[arg(long, value_name = "true|false", value_parser = parse_bool)]
        allow_legacy_tls_clients: Option<bool>,
        /// Whether a submission without TLS is refused.
        #[arg(long, value_name = "true|false", value_parser = parse_bool)]
        require_tls: Option<bool>,
        /// Enforce the TLS rules (legacy TLS, TLS required), or only report.
        #[arg(long, value_name = "enforce|report_only", value_parser = parse_mode)]
        tls_mode: Option<RuleMode>,
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

/// Runs one organization subcommand.
pub(super) fn run(command: OrgCommand) -> anyhow::Result<ExitCode> {
    match command {
        OrgCommand::Set {
            name,
            smtp_client_authentication_disabled,
            max_concurrent_sessions,
            allow_basic_auth_smtp,
            basic_auth_mode,
            allow_legacy_tls_clients,
            require_tls,
            tls_mode,
            json,
            args,
        } => {
            let change = Change::Organization {
                name: name.clone(),
                smtp_client_authentication_disabled,
                max_concurrent_sessions_per_mailbox: max_concurrent_sessions,
                auth: OrgAuth {
                    allow_basic_auth_smtp,
                    basic_auth_mode,
                    allow_legacy_tls_clients,
                    require_tls,
                    tls_mode,
                },
            };
            let snap = set(&args, &change)?;
            org_get(&snap, Some(&name), json)
        }
        OrgCommand::Get { name, json, args } => {
            let snap = load_policy(&args)?;
            org_get(&snap, name.as_deref(), json)
        }
    }
}

/// Prints one organization, or all of them, as a list or JSON.
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
                    "limits": o.limits,
                    "authentication": o.auth.view(),
                    "mailboxes_with_own_settings": snap.mailboxes_of(&o.name).len(),
                })
            })
            .collect();
        let out = if name.is_some() {
            v[0].clone()
        } else {
            serde_json::Value::Array(v)
        };
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (i, o) in orgs.iter().enumerate() {
        if i > 0 {
            outln!()?;
        }
        let mut rows = vec![
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
        ];
        rows.extend(limit_rows(&o.limits, None));
        rows.extend(auth_rows(&o.auth.view()));
        rows.push((
            "MailboxesWithOwnSettings",
            snap.mailboxes_of(&o.name).len().to_string(),
        ));
        out!("{}", format_list(&rows))?;
    }
    Ok(ExitCode::SUCCESS)
}
