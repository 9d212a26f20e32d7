//! The configuration file as serde reads it: every section a struct that refuses unknown keys
//! (`deny_unknown_fields`), every value still unchecked text or number. Only the checker
//! ([`super::check`] and the section modules) looks inside; nothing here reaches run time.

use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub policy: Vec<String>,
    #[serde(default)]
    pub milter: Vec<String>,
    pub milter_timeout: Option<String>,
    pub milter_max_frame: Option<usize>,
    pub control: Option<String>,
    pub control_socket_mode: Option<String>,
    pub policies: Option<PathBuf>,
    pub watch_policies: Option<bool>,
    pub default_domain: Option<String>,
    pub lease_idle_timeout: Option<String>,
    pub unix_socket_mode: Option<String>,
    pub max_connections: Option<usize>,
    pub policy_max_connections: Option<usize>,
    pub milter_max_connections: Option<usize>,
    pub auth_policy_max_connections: Option<usize>,
    pub policy_idle_timeout: Option<String>,
    pub policy_read_timeout: Option<String>,
    pub limiter: Option<RawLimiter>,
    pub audit: Option<RawAudit>,
    pub replies: Option<RawReplies>,
    pub sent_items: Option<RawSentItems>,
    #[serde(default)]
    pub auth_policy: Vec<String>,
    pub auth_policy_api_key_file: Option<PathBuf>,
    pub auth_policy_protocols: Option<Vec<String>>,
    /// Prometheus `/metrics` listeners.
    #[serde(default)]
    pub metrics: Vec<String>,
    pub alerts: Option<RawAlerts>,
    pub log: Option<RawLog>,
}

/// `alerts:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub webhook: Option<String>,
    pub command: Option<Vec<String>>,
    pub kinds: Option<Vec<String>>,
    pub min_interval: Option<String>,
    pub timeout: Option<String>,
    pub queue: Option<usize>,
}

impl RawConfig {
    /// Reads the text; an empty file is a valid (all-defaults) configuration.
    pub(super) fn from_text(text: &str) -> Result<RawConfig, serde_yaml::Error> {
        if text.trim().is_empty() {
            serde_yaml::from_str("{}")
        } else {
            serde_yaml::from_str(text)
        }
    }
}

/// `sent_items:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentItems {
    pub spool: Option<PathBuf>,
    pub store: Option<RawStore>,
    pub workers: Option<usize>,
    pub max_age: Option<String>,
    pub retry: Option<RawRetry>,
    pub scan_interval: Option<String>,
}

/// `sent_items.retry:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub initial: Option<String>,
    pub max: Option<String>,
    pub auth_failure_attempts: Option<u32>,
}

/// `sent_items.store:`, the keys of both backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub backend: String,
    pub root: Option<String>,
    pub address: Option<String>,
    pub tls: Option<String>,
    pub tls_server_name: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub tls_verify: Option<bool>,
    pub login: Option<String>,
    pub master_user: Option<String>,
    pub master_password_file: Option<PathBuf>,
    pub master_separator: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_idle_connections: Option<usize>,
    pub timeout: Option<String>,
}

impl RawStore {
    /// The imap-only keys that are set.
    pub(super) fn imap_keys(&self) -> Vec<&'static str> {
        let set = [
            ("address", self.address.is_some()),
            ("tls", self.tls.is_some()),
            ("tls_server_name", self.tls_server_name.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("tls_verify", self.tls_verify.is_some()),
            ("login", self.login.is_some()),
            ("master_user", self.master_user.is_some()),
            ("master_password_file", self.master_password_file.is_some()),
            ("master_separator", self.master_separator.is_some()),
            ("idle_timeout", self.idle_timeout.is_some()),
            ("max_idle_connections", self.max_idle_connections.is_some()),
            ("timeout", self.timeout.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect()
    }
}

/// `limiter:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimiter {
    pub backend: String,
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub lease_ttl: Option<String>,
    pub timeout: Option<String>,
    pub on_error: Option<String>,
    pub node_id: Option<String>,
    /// Memory backend: where the blocked list and the counters survive a restart.
    pub state_dir: Option<PathBuf>,
    /// Redis Cluster: seed nodes (instead of `url`).
    pub cluster: Option<Vec<String>>,
    /// Redis Sentinel (instead of `url`).
    pub sentinel: Option<RawSentinel>,
}

/// `limiter.sentinel:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    pub master_name: String,
    pub nodes: Vec<String>,
}

/// `audit:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub path: String,
    pub queue: Option<usize>,
    pub mode: Option<String>,
}

/// `replies:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplies {
    pub tenant_disabled: Option<String>,
    pub mailbox_disabled: Option<String>,
    pub concurrency_limit: Option<String>,
    pub tempfail: Option<String>,
    pub auth_tenant_disabled: Option<String>,
    pub auth_mailbox_disabled: Option<String>,
    pub invalid_login: Option<String>,
    pub auth_invalid_login: Option<String>,
    pub message_rate_limit: Option<String>,
    pub recipient_rate_limit: Option<String>,
    pub recipients_per_message: Option<String>,
    pub sender_restricted: Option<String>,
    pub basic_auth_disabled: Option<String>,
    pub legacy_tls: Option<String>,
    pub tls_required: Option<String>,
    pub auth_basic_auth_disabled: Option<String>,
    pub auth_tls_required: Option<String>,
}

/// `log:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: Option<String>,
    pub target: Option<String>,
    pub level: Option<String>,
    pub syslog_socket: Option<PathBuf>,
    pub path: Option<PathBuf>,
}
