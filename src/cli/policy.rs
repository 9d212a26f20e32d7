//! What the policy commands (`check`, `org`, `mailbox`) share: `--config` / `--policies`, where
//! the policy directory is, loading and editing it, the value parsers of `set`, and
//! PowerShell's `Format-List` layout.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use submitgate::config::{Config, DEFAULT_CONFIG_PATH};
use submitgate::policy::authentication::Sourced;
use submitgate::policy::editor::{self, Change, Setting};
use submitgate::policy::{
    self, AuthView, LimitOverrides, Limits, LoadOptions, PolicySnapshot, RuleMode,
};

use super::ConfigArg;

// `--config FILE` and `--policies DIR` (no doc comment: clap would make it help text).
#[derive(Args, Clone)]
pub(super) struct PolicyArgs {
    #[command(flatten)]
    pub(super) config: ConfigArg,
    /// The policy directory (default: `policies` from the configuration).
    #[arg(long, value_name = "DIR")]
    pub(super) policies: Option<PathBuf>,
}

/// Edits the policy files (`org set` / `mailbox set`); a running daemon picks the change up
/// by itself (it watches the directory) or on SIGHUP.
pub(super) fn set(args: &PolicyArgs, change: &Change) -> anyhow::Result<PolicySnapshot> {
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

/// `true` / `false` (also PowerShell's `$true` / `$false`), any case.
pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().trim_start_matches('$') {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{s:?}: expected true or false")),
    }
}

/// A mailbox's own boolean: `true`, `false` or `inherit` (Exchange's `$null`).
/// `enforce` or `report_only` (also `report-only`, `ReportOnly`).
pub(super) fn parse_mode(s: &str) -> Result<RuleMode, String> {
    match s.to_ascii_lowercase().replace('-', "_").as_str() {
        "enforce" => Ok(RuleMode::Enforce),
        "report_only" | "reportonly" => Ok(RuleMode::ReportOnly),
        _ => Err(format!("{s:?}: expected enforce or report_only")),
    }
}

/// `True (mailbox)`: a value and where it comes from, as `org get` / `mailbox get` show it.
pub(super) fn sourced_bool(v: Sourced<bool>) -> String {
    format!("{} ({})", title(v.value), v.source.as_str())
}

/// `ReportOnly (organization)`.
pub(super) fn sourced_mode(v: Sourced<RuleMode>) -> String {
    let name = match v.value {
        RuleMode::Enforce => "Enforce",
        RuleMode::ReportOnly => "ReportOnly",
    };
    format!("{name} ({})", v.source.as_str())
}

/// The authentication policy rows of `org get` / `mailbox get`, in Exchange's names.
pub(super) fn auth_rows(v: &AuthView) -> [(&'static str, String); 5] {
    [
        ("AllowBasicAuthSmtp", sourced_bool(v.allow_basic_auth_smtp)),
        ("BasicAuthMode", sourced_mode(v.basic_auth_mode)),
        (
            "AllowLegacyTLSClients",
            sourced_bool(v.allow_legacy_tls_clients),
        ),
        ("RequireTls", sourced_bool(v.require_tls)),
        ("TlsMode", sourced_mode(v.tls_mode)),
    ]
}

pub(super) fn parse_bool_setting(s: &str) -> Result<Setting<bool>, String> {
    match s.to_ascii_lowercase().trim_start_matches('$') {
        "inherit" | "null" => Ok(Setting::Inherit),
        _ => parse_bool(s)
            .map(Setting::Value)
            .map_err(|_| format!("{s:?}: expected true, false or inherit")),
    }
}

/// A mailbox's own session limit: a number or `inherit`.
pub(super) fn parse_limit_setting(s: &str) -> Result<Setting<u32>, String> {
    match s.to_ascii_lowercase().trim_start_matches('$') {
        "inherit" | "null" => Ok(Setting::Inherit),
        n => n
            .parse()
            .map(Setting::Value)
            .map_err(|_| format!("{s:?}: expected a number or inherit")),
    }
}

/// The configuration, when it exists or was asked for explicitly; policy commands can run on
/// `--policies DIR` alone.
pub(super) fn load_config_for_policy(args: &PolicyArgs) -> anyhow::Result<Option<Config>> {
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

/// The policy snapshot as the daemon would load it.
pub(super) fn load_policy(args: &PolicyArgs) -> anyhow::Result<PolicySnapshot> {
    let config = load_config_for_policy(args)?;
    let (dir, opts) = policy_location(args, config.as_ref());
    policy::load_dir(&dir, &opts).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The policy directory (`--policies`, else the configuration's, else `./policies`) and the
/// load options of the configuration.
pub(super) fn policy_location(
    args: &PolicyArgs,
    config: Option<&Config>,
) -> (PathBuf, LoadOptions) {
    let dir = args
        .policies
        .clone()
        .or_else(|| config.map(|c| c.policies_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("./policies"));
    let opts = config.map(Config::policy_options).unwrap_or_default();
    (dir, opts)
}

/// PowerShell's spelling of a boolean.
pub(super) fn title(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// PowerShell's `Format-List` layout: aligned `Name : Value` lines.
pub(super) fn format_list(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$} : {v}\n"))
        .collect()
}

/// The sending limits and outbound spam thresholds in `Format-List` rows (Exchange's names),
/// each with `(mailbox)` or `(organization)` when `own` says where it comes from.
pub(super) fn limit_rows(l: &Limits, own: Option<&LimitOverrides>) -> Vec<(&'static str, String)> {
    let from = |set: bool| match own {
        None => "",
        Some(_) if set => " (mailbox)",
        Some(_) => " (organization)",
    };
    let n = |v: u32| {
        if v == 0 {
            "0 (no limit)".to_string()
        } else {
            v.to_string()
        }
    };
    let o = own.copied().unwrap_or_default();
    vec![
        (
            "MessagesPerMinute",
            format!(
                "{}{}",
                n(l.messages_per_minute),
                from(o.messages_per_minute.is_some())
            ),
        ),
        (
            "RecipientsPerDay",
            format!(
                "{}{}",
                n(l.recipients_per_day),
                from(o.recipients_per_day.is_some())
            ),
        ),
        (
            "RecipientsPerMessage",
            format!(
                "{}{}",
                n(l.recipients_per_message),
                from(o.recipients_per_message.is_some())
            ),
        ),
        (
            "RecipientLimitExternalPerHour",
            format!(
                "{}{}",
                n(l.recipient_limit_external_per_hour),
                from(o.recipient_limit_external_per_hour.is_some())
            ),
        ),
        (
            "RecipientLimitInternalPerHour",
            format!(
                "{}{}",
                n(l.recipient_limit_internal_per_hour),
                from(o.recipient_limit_internal_per_hour.is_some())
            ),
        ),
        (
            "RecipientLimitPerDay",
            format!(
                "{}{}",
                n(l.recipient_limit_per_day),
                from(o.recipient_limit_per_day.is_some())
            ),
        ),
        (
            "ActionWhenThresholdReached",
            format!(
                "{}{}",
                l.action_when_threshold_reached,
                from(o.action_when_threshold_reached.is_some())
            ),
        ),
    ]
}
