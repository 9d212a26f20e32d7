//! The daemon configuration (`submitgate.yaml`): raw serde types that refuse unknown keys, then
//! one validation pass that reports every problem at once, each with file, line and column.
//! Only the validated [`Config`] reaches the rest of the daemon.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::endpoint::Endpoint;
use crate::reply::{check_auth_reply, Replies, SmtpReply};
use crate::yaml;

/// Where the CLI looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/submitgate/submitgate.yaml";

/// One configuration problem.
pub type ConfigError = crate::yaml::LocatedError;

/// Every problem of one configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::yaml::fmt_lines(&self.0, f)
    }
}

/// How long a milter connection may stay silent: longer than Postfix's own
/// `milter_content_timeout` (300 s), so that Postfix, not submitgate, gives up first.
pub const DEFAULT_MILTER_TIMEOUT: Duration = Duration::from_secs(360);
/// Smallest accepted `milter_max_frame`: one full body chunk plus its frame overhead.
pub const MIN_MILTER_FRAME: usize = 65_536;
/// Largest accepted `milter_max_frame`.
pub const MAX_MILTER_FRAME: usize = 64 << 20;

/// The Maildir root used when none is configured.
pub const DEFAULT_MAILDIR_ROOT: &str = "./mail/{domain}/{local}/Maildir";

/// A Maildir root template may only use the known placeholders, and must use one that tells
/// mailboxes apart (otherwise every mailbox would share one Sent Items folder).
fn check_maildir_root(root: &str) -> Result<(), String> {
    let mut rest = root;
    let mut distinguishes = false;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("{root:?}: unclosed '{{'"));
        };
        match &rest[open + 1..open + close] {
            "local" | "mailbox" => distinguishes = true,
            "domain" => {}
            other => {
                return Err(format!(
                    "{root:?}: unknown placeholder {{{other}}}; use {{domain}}, {{local}} or {{mailbox}}"
                ))
            }
        }
        rest = &rest[open + close + 1..];
    }
    if !distinguishes {
        return Err(format!(
            "{root:?}: must contain {{local}} or {{mailbox}} so that each mailbox has its own folder"
        ));
    }
    Ok(())
}

/// A duration setting: `default` when absent, an error (and `default`) when unparsable or
/// shorter than `min`.
fn duration_at(
    err: &mut impl FnMut(&[&str], String),
    keys: &[&str],
    value: Option<&str>,
    default: Duration,
    min: Duration,
) -> Duration {
    match value {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d >= min => d,
            _ => {
                err(
                    keys,
                    format!(
                        "{s:?} is not a duration of at least {} (e.g. 30s, 15m, 5d)",
                        humantime::format_duration(min)
                    ),
                );
                default
            }
        },
    }
}

/// `HOST:PORT`, `[V6]:PORT`; the host without brackets.
fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let bad =
        || format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:143, [::1]:993, imap.example.com:993)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(bad()),
    };
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

impl RawStore {
    /// The imap-only keys that are set.
    fn imap_keys(&self) -> Vec<&'static str> {
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
            ("timeout", self.timeout.is_some()),
        ];
        set.iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect()
    }
}

/// Validates the imap store settings, reporting every problem through `err`.
fn imap_config(st: &RawStore, err: &mut impl FnMut(&[&str], String)) -> ImapConfig {
    let key = |k: &'static str| ["sent_items", "store", k];
    let (host, port) = match st.address.as_deref() {
        None => {
            err(
                &["sent_items", "store"],
                "the imap backend needs `address` (e.g. \"127.0.0.1:143\")".into(),
            );
            ("127.0.0.1".to_string(), 143)
        }
        Some(a) => parse_host_port(a).unwrap_or_else(|e| {
            err(&key("address"), e);
            ("127.0.0.1".to_string(), 143)
        }),
    };
    let tls = match st.tls.as_deref() {
        None | Some("starttls") => ImapTls::Starttls,
        Some("none") => ImapTls::None,
        Some("implicit") => ImapTls::Implicit,
        Some(other) => {
            err(
                &key("tls"),
                format!("unknown TLS mode {other:?}; expected none, starttls or implicit"),
            );
            ImapTls::Starttls
        }
    };
    let tls_server_name = match st.tls_server_name.as_deref() {
        None => host.clone(),
        Some(n) => {
            if tokio_rustls::rustls::pki_types::ServerName::try_from(n).is_err() {
                err(
                    &key("tls_server_name"),
                    format!("{n:?} is not a DNS name or IP address"),
                );
            }
            n.to_string()
        }
    };
    if tls != ImapTls::None
        && st.tls_server_name.is_none()
        && tokio_rustls::rustls::pki_types::ServerName::try_from(host.as_str()).is_err()
    {
        err(
            &key("address"),
            format!("{host:?} cannot be checked against a certificate; set tls_server_name"),
        );
    }
    if tls == ImapTls::None {
        for (k, set) in [
            ("ca_file", st.ca_file.is_some()),
            ("tls_verify", st.tls_verify.is_some()),
            ("tls_server_name", st.tls_server_name.is_some()),
        ] {
            if set {
                err(&key(k), "has no effect with tls: none".into());
            }
        }
    }
    let login = match st.login.as_deref() {
        None | Some("master_user") => ImapLogin::MasterUser,
        Some("sasl_authzid") => ImapLogin::SaslAuthzid,
        Some(other) => {
            err(
                &key("login"),
                format!("unknown login mode {other:?}; expected master_user or sasl_authzid"),
            );
            ImapLogin::MasterUser
        }
    };
    let master_user = match st.master_user.as_deref() {
        Some(u) if !u.is_empty() && !u.chars().any(|c| c.is_control()) => u.to_string(),
        Some(u) => {
            err(&key("master_user"), format!("{u:?} is not a user name"));
            String::new()
        }
        None => {
            err(
                &["sent_items", "store"],
                "the imap backend needs `master_user`".into(),
            );
            String::new()
        }
    };
    let master_password_file = match &st.master_password_file {
        Some(p) if !p.as_os_str().is_empty() => p.clone(),
        _ => {
            err(
                &["sent_items", "store"],
                "the imap backend needs `master_password_file` (a file holding the secret)".into(),
            );
            PathBuf::new()
        }
    };
    let master_separator = match st.master_separator.as_deref() {
        None => "*".to_string(),
        Some(s) if !s.is_empty() && !s.chars().any(|c| c.is_control() || c == '"') => s.to_string(),
        Some(s) => {
            err(
                &key("master_separator"),
                format!("{s:?} is not a usable separator"),
            );
            "*".to_string()
        }
    };
    if login == ImapLogin::SaslAuthzid && st.master_separator.is_some() {
        err(
            &key("master_separator"),
            "applies to login: master_user only".into(),
        );
    }
    ImapConfig {
        host,
        port,
        tls,
        tls_server_name,
        ca_file: st.ca_file.clone(),
        tls_verify: st.tls_verify.unwrap_or(true),
        login,
        master_user,
        master_password_file,
        master_separator,
        idle_timeout: duration_at(
            err,
            &key("idle_timeout"),
            st.idle_timeout.as_deref(),
            Duration::from_secs(30),
            Duration::ZERO,
        ),
        timeout: duration_at(
            err,
            &key("timeout"),
            st.timeout.as_deref(),
            Duration::from_secs(60),
            Duration::from_millis(100),
        ),
    }
}

/// Which limiter backend holds the session leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimiterConfig {
    /// In this process (one MTA).
    Memory,
    /// Shared by several MTAs through Redis.
    Redis(crate::limiter::redis::RedisSettings),
}

/// Where audit events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

/// The audit log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub target: AuditTarget,
    /// Events buffered between the front ends and the writer before they wait (back-pressure).
    pub queue: usize,
}

/// Where Sent Items copies are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Maildir++ under a root template with `{domain}`, `{local}`, `{mailbox}`.
    Maildir {
        /// The template, checked to contain `{local}` or `{mailbox}`.
        root: String,
    },
    /// IMAP APPEND into the mailbox, logged in on its behalf.
    Imap(ImapConfig),
}

/// How the connection to the IMAP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapTls {
    /// Plain TCP (loopback or a trusted network only).
    None,
    /// Plain TCP, then `STARTTLS` before logging in.
    Starttls,
    /// TLS from the first byte (port 993).
    Implicit,
}

/// How submitgate logs in on behalf of a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapLogin {
    /// Dovecot master user: `LOGIN "<mailbox>*<master_user>" secret`.
    MasterUser,
    /// `AUTHENTICATE PLAIN` with authorization identity = mailbox, authentication identity =
    /// `master_user`.
    SaslAuthzid,
}

/// The `imap` store backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapConfig {
    /// Host name or address to connect to.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Connection protection.
    pub tls: ImapTls,
    /// The name the server certificate must carry (default: `host`).
    pub tls_server_name: String,
    /// Trust these CA certificates (PEM) instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Verify the server certificate (on unless explicitly turned off).
    pub tls_verify: bool,
    /// How to log in on a mailbox's behalf.
    pub login: ImapLogin,
    /// The master (or SASL authentication) user.
    pub master_user: String,
    /// File holding the master user's secret (first line); never logged.
    pub master_password_file: PathBuf,
    /// Separator between mailbox and master user for [`ImapLogin::MasterUser`]
    /// (Dovecot's `auth_master_user_separator`).
    pub master_separator: String,
    /// How long an idle logged-in connection is kept for reuse.
    pub idle_timeout: Duration,
    /// Limit for connecting, TLS, and each command.
    pub timeout: Duration,
}

/// Delivery retry timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Delay after the first transient failure; doubled after each further one.
    pub initial: Duration,
    /// Largest delay between attempts.
    pub max: Duration,
    /// Attempts that end in an authentication or authorization failure (wrong master
    /// password, unknown mailbox) before the entry is moved to `failed/`.
    pub auth_failure_attempts: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(15 * 60),
            auth_failure_attempts: 3,
        }
    }
}

/// The Sent Items copy: the durable spool the milter writes and the store the workers fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentItemsConfig {
    /// The spool directory.
    pub spool: PathBuf,
    /// Where copies go.
    pub store: StoreConfig,
    /// True when `sent_items.store` is set: the daemon then runs the delivery workers. Without
    /// it the milter still spools copies (when it runs), but nothing delivers them.
    pub deliver: bool,
    /// Concurrent deliveries.
    pub workers: usize,
    /// An entry still undelivered this long after its first attempt is moved to `failed/`.
    pub max_age: Duration,
    /// Backoff and login-failure limits.
    pub retry: RetryConfig,
    /// How often the spool directory is rescanned even without a wake-up (entries put back by
    /// `submitgate spool retry`, or committed by another process).
    pub scan_interval: Duration,
}

/// The validated daemon configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages and reloads).
    pub path: PathBuf,
    pub policy_listeners: Vec<Endpoint>,
    /// Milter listeners (`smtpd_milters`), in Postfix notation.
    pub milter_listeners: Vec<Endpoint>,
    /// A milter connection that sends nothing for this long is closed.
    pub milter_timeout: Duration,
    /// Largest milter frame accepted (length field), in bytes.
    pub milter_max_frame: usize,
    pub control: Option<Endpoint>,
    /// Mode of the control socket (default 0600: status and reload are for root).
    pub control_socket_mode: u32,
    pub policies_dir: PathBuf,
    /// Reload by itself when the policy directory changes (default true).
    pub watch_policies: bool,
    pub default_domain: Option<String>,
    pub lease_idle_timeout: Duration,
    pub unix_socket_mode: u32,
    pub max_connections: usize,
    pub limiter: LimiterConfig,
    pub audit: AuditConfig,
    pub replies: Replies,
    pub sent_items: SentItemsConfig,
    /// Dovecot auth policy (HTTP) listeners.
    pub auth_policy_listeners: Vec<Endpoint>,
    /// File holding the shared secret Dovecot sends as `X-API-Key` (read at start).
    pub auth_policy_api_key_file: Option<PathBuf>,
    /// Dovecot protocols whose logins the auth policy checks (lower-case; default `smtp`).
    pub auth_policy_protocols: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    policy: Vec<String>,
    #[serde(default)]
    milter: Vec<String>,
    milter_timeout: Option<String>,
    milter_max_frame: Option<usize>,
    control: Option<String>,
    control_socket_mode: Option<String>,
    policies: Option<PathBuf>,
    watch_policies: Option<bool>,
    default_domain: Option<String>,
    lease_idle_timeout: Option<String>,
    unix_socket_mode: Option<String>,
    max_connections: Option<usize>,
    limiter: Option<RawLimiter>,
    audit: Option<RawAudit>,
    replies: Option<RawReplies>,
    sent_items: Option<RawSentItems>,
    #[serde(default)]
    auth_policy: Vec<String>,
    auth_policy_api_key_file: Option<PathBuf>,
    auth_policy_protocols: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSentItems {
    spool: Option<PathBuf>,
    store: Option<RawStore>,
    workers: Option<usize>,
    max_age: Option<String>,
    retry: Option<RawRetry>,
    scan_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial: Option<String>,
    max: Option<String>,
    auth_failure_attempts: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: String,
    root: Option<String>,
    address: Option<String>,
    tls: Option<String>,
    tls_server_name: Option<String>,
    ca_file: Option<PathBuf>,
    tls_verify: Option<bool>,
    login: Option<String>,
    master_user: Option<String>,
    master_password_file: Option<PathBuf>,
    master_separator: Option<String>,
    idle_timeout: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimiter {
    backend: String,
    url: Option<String>,
    key_prefix: Option<String>,
    lease_ttl: Option<String>,
    timeout: Option<String>,
    on_error: Option<String>,
    node_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: String,
    queue: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplies {
    tenant_disabled: Option<String>,
    mailbox_disabled: Option<String>,
    concurrency_limit: Option<String>,
    tempfail: Option<String>,
    auth_tenant_disabled: Option<String>,
    auth_mailbox_disabled: Option<String>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::parse(path, &text)
    }

    /// Validates configuration text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let at = |line: usize, column: usize, message: String| ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            message,
        };
        // An empty file is a valid (all-defaults) configuration.
        let raw: RawConfig = if text.trim().is_empty() {
            serde_yaml::from_str("{}")
        } else {
            serde_yaml::from_str(text)
        }
        .map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigErrors(vec![at(line, column, e.to_string())])
        })?;
        // The positioned tree points each semantic error at its line.
        let tree = yaml::parse(text).ok();
        let mut errors = Vec::new();
        let mut err = |keys: &[&str], message: String| {
            let (line, column) = tree.as_ref().map_or((0, 0), |t| {
                let n = t.locate(keys);
                (n.start.line, n.start.column)
            });
            errors.push(at(line, column, format!("{}: {message}", keys.join("."))));
        };

        let mut policy_listeners = Vec::new();
        for (i, s) in raw.policy.iter().enumerate() {
            match Endpoint::parse(s) {
                Ok(e) => policy_listeners.push(e),
                Err(e) => err(&["policy"], format!("entry {}: {e}", i + 1)),
            }
        }
        let mut milter_listeners = Vec::new();
        for (i, s) in raw.milter.iter().enumerate() {
            match Endpoint::parse(s) {
                Ok(e) => milter_listeners.push(e),
                Err(e) => err(&["milter"], format!("entry {}: {e}", i + 1)),
            }
        }
        let milter_timeout = match raw.milter_timeout.as_deref() {
            None => DEFAULT_MILTER_TIMEOUT,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d >= Duration::from_secs(1) => d,
                _ => {
                    err(
                        &["milter_timeout"],
                        format!("{s:?} is not a duration of at least 1s (e.g. 360s, 6m)"),
                    );
                    DEFAULT_MILTER_TIMEOUT
                }
            },
        };
        let milter_max_frame = match raw.milter_max_frame {
            None => crate::milter::codec::DEFAULT_MAX_FRAME,
            Some(n) if (MIN_MILTER_FRAME..=MAX_MILTER_FRAME).contains(&n) => n,
            Some(n) => {
                err(
                    &["milter_max_frame"],
                    format!(
                        "{n} is not between {MIN_MILTER_FRAME} and {MAX_MILTER_FRAME} bytes \
                         (Postfix sends body chunks of up to 65535 bytes)"
                    ),
                );
                crate::milter::codec::DEFAULT_MAX_FRAME
            }
        };
        let control = raw
            .control
            .as_deref()
            .and_then(|s| match Endpoint::parse(s) {
                Ok(e @ Endpoint::Unix(_)) => Some(e),
                Ok(_) => {
                    err(
                        &["control"],
                        format!("{s:?}: the control socket must be unix:/PATH"),
                    );
                    None
                }
                Err(e) => {
                    err(&["control"], e.to_string());
                    None
                }
            });
        let default_domain = raw.default_domain.as_deref().and_then(|d| {
            let d = d.trim().to_ascii_lowercase();
            if crate::policy::valid_domain(&d) {
                Some(d)
            } else {
                err(&["default_domain"], format!("{d:?} is not a domain name"));
                None
            }
        });
        let lease_idle_timeout = match raw.lease_idle_timeout.as_deref() {
            None => Duration::from_secs(300),
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d >= Duration::from_secs(1) => d,
                _ => {
                    err(
                        &["lease_idle_timeout"],
                        format!("{s:?} is not a duration of at least 1s (e.g. 300s, 5m)"),
                    );
                    Duration::from_secs(300)
                }
            },
        };
        let mut mode = |key: &str, value: Option<&str>, default: u32| match value {
            None => default,
            Some(s) => match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
                Ok(m) if m <= 0o777 => m,
                _ => {
                    err(
                        &[key],
                        format!("{s:?} is not an octal file mode (e.g. \"0660\")"),
                    );
                    default
                }
            },
        };
        let unix_socket_mode = mode("unix_socket_mode", raw.unix_socket_mode.as_deref(), 0o666);
        let control_socket_mode = mode(
            "control_socket_mode",
            raw.control_socket_mode.as_deref(),
            0o600,
        );
        let max_connections = match raw.max_connections {
            None => 1024,
            Some(n) if (1..=1_000_000).contains(&n) => n,
            Some(n) => {
                err(
                    &["max_connections"],
                    format!("{n} is not between 1 and 1000000"),
                );
                1024
            }
        };
        let limiter = match &raw.limiter {
            None => LimiterConfig::Memory,
            Some(l) if l.backend == "memory" => {
                for (key, set) in [
                    ("url", l.url.is_some()),
                    ("key_prefix", l.key_prefix.is_some()),
                    ("lease_ttl", l.lease_ttl.is_some()),
                    ("timeout", l.timeout.is_some()),
                    ("on_error", l.on_error.is_some()),
                    ("node_id", l.node_id.is_some()),
                ] {
                    if set {
                        err(&["limiter", key], "only applies to backend: redis".into());
                    }
                }
                LimiterConfig::Memory
            }
            Some(l) if l.backend == "redis" => {
                use crate::limiter::redis::{default_node_id, OnError, RedisSettings};
                let mut duration =
                    |key: &str, v: Option<&str>, default: Duration, min: Duration| match v {
                        None => default,
                        Some(s) => match humantime::parse_duration(s) {
                            Ok(d) if d >= min => d,
                            _ => {
                                err(
                                    &["limiter", key],
                                    format!("{s:?} is not a duration of at least {min:?}"),
                                );
                                default
                            }
                        },
                    };
                let lease_ttl = duration(
                    "lease_ttl",
                    l.lease_ttl.as_deref(),
                    Duration::from_secs(30),
                    Duration::from_secs(1),
                );
                let timeout = duration(
                    "timeout",
                    l.timeout.as_deref(),
                    Duration::from_millis(50),
                    Duration::from_millis(1),
                );
                let url = l
                    .url
                    .clone()
                    .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
                if let Err(e) = redis::Client::open(url.as_str()) {
                    err(
                        &["limiter", "url"],
                        format!("{}: {e}", crate::limiter::redis::redact(&url)),
                    );
                }
                let on_error = match l.on_error.as_deref() {
                    None | Some("allow") => OnError::Allow,
                    Some("tempfail") => OnError::Tempfail,
                    Some(other) => {
                        err(
                            &["limiter", "on_error"],
                            format!("{other:?}: expected allow or tempfail"),
                        );
                        OnError::Allow
                    }
                };
                LimiterConfig::Redis(RedisSettings {
                    url,
                    key_prefix: l.key_prefix.clone().unwrap_or_else(|| "submitgate:".into()),
                    lease_ttl,
                    timeout,
                    on_error,
                    node_id: l.node_id.clone().unwrap_or_else(default_node_id),
                })
            }
            Some(l) => {
                err(
                    &["limiter", "backend"],
                    format!("unknown backend {:?}; expected memory or redis", l.backend),
                );
                LimiterConfig::Memory
            }
        };
        let audit = match &raw.audit {
            None => AuditConfig {
                target: AuditTarget::File(PathBuf::from("./audit.log")),
                queue: 4096,
            },
            Some(a) => {
                let target = match a.path.as_str() {
                    "-" => AuditTarget::Stdout,
                    "" => {
                        err(
                            &["audit", "path"],
                            "must be a file path or \"-\" (stdout)".into(),
                        );
                        AuditTarget::Stdout
                    }
                    p => AuditTarget::File(PathBuf::from(p)),
                };
                let queue = match a.queue {
                    None => 4096,
                    Some(q) if (1..=1_000_000).contains(&q) => q,
                    Some(q) => {
                        err(
                            &["audit", "queue"],
                            format!("{q} is not between 1 and 1000000"),
                        );
                        4096
                    }
                };
                AuditConfig { target, queue }
            }
        };
        let mut replies = Replies::default();
        if let Some(r) = &raw.replies {
            let fields = [
                (
                    "tenant_disabled",
                    &r.tenant_disabled,
                    &mut replies.tenant_disabled,
                ),
                (
                    "mailbox_disabled",
                    &r.mailbox_disabled,
                    &mut replies.mailbox_disabled,
                ),
                (
                    "concurrency_limit",
                    &r.concurrency_limit,
                    &mut replies.concurrency_limit,
                ),
                ("tempfail", &r.tempfail, &mut replies.tempfail),
            ];
            for (name, raw, slot) in fields {
                if let Some(s) = raw {
                    match SmtpReply::from_str(s) {
                        Ok(reply) => *slot = reply,
                        Err(e) => err(&["replies", name], e),
                    }
                }
            }
            let auth_fields = [
                (
                    "auth_tenant_disabled",
                    &r.auth_tenant_disabled,
                    &mut replies.auth_tenant_disabled,
                ),
                (
                    "auth_mailbox_disabled",
                    &r.auth_mailbox_disabled,
                    &mut replies.auth_mailbox_disabled,
                ),
            ];
            for (name, raw, slot) in auth_fields {
                if let Some(s) = raw {
                    match check_auth_reply(s) {
                        Ok(text) => *slot = text,
                        Err(e) => err(&["replies", name], e),
                    }
                }
            }
        }
        let sent_items = {
            let raw_si = raw.sent_items.as_ref();
            let spool = raw_si
                .and_then(|s| s.spool.clone())
                .unwrap_or_else(|| PathBuf::from("./spool"));
            let store = match raw_si.and_then(|s| s.store.as_ref()) {
                None => StoreConfig::Maildir {
                    root: DEFAULT_MAILDIR_ROOT.to_string(),
                },
                Some(st) => match st.backend.as_str() {
                    "maildir" => {
                        let root = st
                            .root
                            .clone()
                            .unwrap_or_else(|| DEFAULT_MAILDIR_ROOT.to_string());
                        if let Err(e) = check_maildir_root(&root) {
                            err(&["sent_items", "store", "root"], e);
                        }
                        for key in st.imap_keys() {
                            err(
                                &["sent_items", "store", key],
                                "applies to the imap backend only".into(),
                            );
                        }
                        StoreConfig::Maildir { root }
                    }
                    "imap" => {
                        if st.root.is_some() {
                            err(
                                &["sent_items", "store", "root"],
                                "applies to the maildir backend only".into(),
                            );
                        }
                        StoreConfig::Imap(imap_config(st, &mut err))
                    }
                    other => {
                        err(
                            &["sent_items", "store", "backend"],
                            format!("unknown backend {other:?}; expected maildir or imap"),
                        );
                        StoreConfig::Maildir {
                            root: DEFAULT_MAILDIR_ROOT.to_string(),
                        }
                    }
                },
            };
            let workers = match raw_si.and_then(|s| s.workers) {
                None => 4,
                Some(n) if (1..=256).contains(&n) => n,
                Some(n) => {
                    err(
                        &["sent_items", "workers"],
                        format!("{n} is not between 1 and 256"),
                    );
                    4
                }
            };
            let max_age = duration_at(
                &mut err,
                &["sent_items", "max_age"],
                raw_si.and_then(|s| s.max_age.as_deref()),
                Duration::from_secs(5 * 24 * 3600),
                Duration::from_secs(60),
            );
            let scan_interval = duration_at(
                &mut err,
                &["sent_items", "scan_interval"],
                raw_si.and_then(|s| s.scan_interval.as_deref()),
                Duration::from_secs(10),
                Duration::from_millis(100),
            );
            let mut retry = RetryConfig::default();
            if let Some(r) = raw_si.and_then(|s| s.retry.as_ref()) {
                retry.initial = duration_at(
                    &mut err,
                    &["sent_items", "retry", "initial"],
                    r.initial.as_deref(),
                    retry.initial,
                    Duration::from_millis(10),
                );
                retry.max = duration_at(
                    &mut err,
                    &["sent_items", "retry", "max"],
                    r.max.as_deref(),
                    retry.max,
                    Duration::from_millis(10),
                );
                if retry.max < retry.initial {
                    err(
                        &["sent_items", "retry", "max"],
                        format!(
                            "{} is shorter than retry.initial ({})",
                            humantime::format_duration(retry.max),
                            humantime::format_duration(retry.initial)
                        ),
                    );
                }
                match r.auth_failure_attempts {
                    None => {}
                    Some(n) if (1..=1000).contains(&n) => retry.auth_failure_attempts = n,
                    Some(n) => err(
                        &["sent_items", "retry", "auth_failure_attempts"],
                        format!("{n} is not between 1 and 1000"),
                    ),
                }
            }
            SentItemsConfig {
                spool,
                store,
                deliver: raw_si.is_some_and(|s| s.store.is_some()),
                workers,
                max_age,
                retry,
                scan_interval,
            }
        };
        let mut auth_policy_listeners = Vec::new();
        for (i, s) in raw.auth_policy.iter().enumerate() {
            match Endpoint::parse(s) {
                Ok(e) => auth_policy_listeners.push(e),
                Err(e) => err(&["auth_policy"], format!("entry {}: {e}", i + 1)),
            }
        }
        let auth_policy_api_key_file = match &raw.auth_policy_api_key_file {
            Some(p) if p.as_os_str().is_empty() => {
                err(&["auth_policy_api_key_file"], "must be a file path".into());
                None
            }
            other => other.clone(),
        };
        let auth_policy_protocols = match &raw.auth_policy_protocols {
            None => vec!["smtp".to_string()],
            Some(list) => {
                let valid = |p: &str| {
                    !p.is_empty()
                        && p.len() <= 32
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                };
                let mut out = Vec::new();
                for p in list {
                    if valid(p) {
                        out.push(p.to_ascii_lowercase());
                    } else {
                        err(
                            &["auth_policy_protocols"],
                            format!("{p:?} is not a Dovecot protocol name (e.g. smtp, submission)"),
                        );
                    }
                }
                if list.is_empty() {
                    err(
                        &["auth_policy_protocols"],
                        "list at least one protocol (e.g. [smtp])".into(),
                    );
                }
                out
            }
        };
        if raw.policy.is_empty() && raw.milter.is_empty() && raw.auth_policy.is_empty() {
            err(
                &["policy"],
                "no front end configured: list at least one milter or policy listener (e.g. milter: [\"inet:127.0.0.1:10041\"])"
                    .into(),
            );
        }

        if !errors.is_empty() {
            errors.sort_by_key(|e| (e.line, e.column));
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            path: path.to_path_buf(),
            policy_listeners,
            milter_listeners,
            milter_timeout,
            milter_max_frame,
            control,
            control_socket_mode,
            policies_dir: raw.policies.unwrap_or_else(|| PathBuf::from("./policies")),
            watch_policies: raw.watch_policies.unwrap_or(true),
            default_domain,
            lease_idle_timeout,
            unix_socket_mode,
            max_connections,
            limiter,
            audit,
            replies,
            sent_items,
            auth_policy_listeners,
            auth_policy_api_key_file,
            auth_policy_protocols,
        })
    }

    /// The options policy loading needs from the daemon configuration.
    pub fn policy_options(&self) -> crate::policy::LoadOptions {
        crate::policy::LoadOptions {
            default_domain: self.default_domain.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::{
        AUTH_MAILBOX_DISABLED, AUTH_TENANT_DISABLED, CONCURRENCY_LIMIT, TENANT_DISABLED,
    };

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("sg.yaml"), text)
    }

    #[test]
    fn example_parses_with_defaults() {
        let c = parse("policy: [\"inet:127.0.0.1:10040\", \"unix:/tmp/sg.sock\"]\n").unwrap();
        assert_eq!(c.policy_listeners.len(), 2);
        assert_eq!(c.lease_idle_timeout, Duration::from_secs(300));
        assert_eq!(c.policies_dir, PathBuf::from("./policies"));
        assert_eq!(c.replies.concurrency_limit.to_string(), CONCURRENCY_LIMIT);
        assert_eq!(c.replies.tenant_disabled.to_string(), TENANT_DISABLED);
        assert_eq!(c.unix_socket_mode, 0o666);
        assert_eq!(
            c.audit.target,
            AuditTarget::File(PathBuf::from("./audit.log"))
        );
    }

    #[test]
    fn unknown_key_has_position() {
        let e = parse("policy: [\"inet:127.0.0.1:1\"]\npolicys: x\n").unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].line, 2);
        assert!(e.0[0].message.contains("unknown field `policys`"), "{e}");
    }

    #[test]
    fn every_semantic_error_at_once_with_lines() {
        let text = "\
policy: [\"inet:127.0.0.1\"]
lease_idle_timeout: soon
unix_socket_mode: \"999\"
control: \"inet:127.0.0.1:5\"
replies:
  tenant_disabled: \"250 2.0.0 fine\"
  concurrency_limit: \"432 5.3.2 mixed classes\"
  mailbox_disabled: \"550 5.7.139 bad\\r\\ntext\"
";
        let e = parse(text).unwrap_err();
        let lines: Vec<usize> = e.0.iter().map(|x| x.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 6, 7, 8], "{e}");
        let s = e.to_string();
        assert!(s.contains("sg.yaml:6:20: replies.tenant_disabled"), "{s}");
    }

    #[test]
    fn sent_items_defaults_and_checks() {
        let c = parse("policy: [\"inet:127.0.0.1:1\"]\n").unwrap();
        assert_eq!(c.sent_items.spool, PathBuf::from("./spool"));
        assert_eq!(
            c.sent_items.store,
            StoreConfig::Maildir {
                root: DEFAULT_MAILDIR_ROOT.into()
            }
        );
        let e = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nsent_items:\n  store: { backend: maildir, root: \"/var/mail/{domain}\" }\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("sg.yaml:3:36: sent_items.store.root"),
            "{e}"
        );
        let e = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nsent_items: { store: { backend: maildir, root: \"/m/{user}\" } }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown placeholder {user}"), "{e}");
    }

    #[test]
    fn imap_store_and_delivery_settings() {
        let c = parse(
            "policy: [\"inet:127.0.0.1:1\"]
sent_items:
  spool: /var/spool/submitgate
  workers: 8
  max_age: 2d
  retry: { initial: 30s, max: 1h, auth_failure_attempts: 5 }
  store:
    backend: imap
    address: \"imap.contoso.com:993\"
    tls: implicit
    ca_file: /etc/ssl/contoso-ca.pem
    login: sasl_authzid
    master_user: submitgate
    master_password_file: /etc/submitgate/imap.secret
    idle_timeout: 10s
",
        )
        .unwrap();
        let si = &c.sent_items;
        assert!(si.deliver);
        assert_eq!(si.workers, 8);
        assert_eq!(si.max_age, Duration::from_secs(2 * 86400));
        assert_eq!(si.retry.initial, Duration::from_secs(30));
        assert_eq!(si.retry.max, Duration::from_secs(3600));
        assert_eq!(si.retry.auth_failure_attempts, 5);
        let StoreConfig::Imap(imap) = &si.store else {
            panic!("imap expected: {:?}", si.store);
        };
        assert_eq!(imap.host, "imap.contoso.com");
        assert_eq!(imap.port, 993);
        assert_eq!(imap.tls, ImapTls::Implicit);
        assert_eq!(imap.tls_server_name, "imap.contoso.com");
        assert!(imap.tls_verify);
        assert_eq!(imap.login, ImapLogin::SaslAuthzid);
        assert_eq!(imap.master_separator, "*");
        assert_eq!(imap.idle_timeout, Duration::from_secs(10));
        assert_eq!(imap.timeout, Duration::from_secs(60));

        let c = parse("policy: [\"inet:127.0.0.1:1\"]\nsent_items: { store: { backend: imap, address: \"[::1]:143\", master_user: m, master_password_file: /s } }\n").unwrap();
        let StoreConfig::Imap(imap) = &c.sent_items.store else {
            panic!("imap expected");
        };
        assert_eq!((imap.host.as_str(), imap.port), ("::1", 143));
        assert_eq!(imap.tls, ImapTls::Starttls, "STARTTLS by default");
        assert_eq!(imap.login, ImapLogin::MasterUser);

        let c = parse("policy: [\"inet:127.0.0.1:1\"]\n").unwrap();
        assert!(!c.sent_items.deliver);
        assert_eq!(c.sent_items.workers, 4);
        assert_eq!(c.sent_items.max_age, Duration::from_secs(5 * 86400));
    }

    #[test]
    fn sent_items_errors_all_at_once_with_positions() {
        let text = "\
policy: [\"inet:127.0.0.1:1\"]
sent_items:
  workers: 0
  max_age: forever
  retry: { initial: 1m, max: 10s }
  store:
    backend: imap
    address: \"imap.contoso.com\"
    tls: sometimes
    login: kerberos
    root: /var/mail/{local}
    timeout: 1ms
";
        let e = parse(text).unwrap_err();
        let s = e.to_string();
        for expected in [
            "sg.yaml:3:12: sent_items.workers: 0 is not between 1 and 256",
            "sg.yaml:4:12: sent_items.max_age",
            "sg.yaml:5:30: sent_items.retry.max: 10s is shorter than retry.initial (1m)",
            "sg.yaml:8:14: sent_items.store.address",
            "sg.yaml:9:10: sent_items.store.tls: unknown TLS mode \"sometimes\"",
            "sg.yaml:10:12: sent_items.store.login: unknown login mode \"kerberos\"",
            "sg.yaml:11:11: sent_items.store.root: applies to the maildir backend only",
            "sg.yaml:12:14: sent_items.store.timeout",
            "sent_items.store: the imap backend needs `master_user`",
            "sent_items.store: the imap backend needs `master_password_file`",
        ] {
            assert!(s.contains(expected), "missing {expected:?} in:\n{s}");
        }

        let e = parse("policy: [\"inet:127.0.0.1:1\"]\nsent_items:\n  store: { backend: maildir, tls: none, master_user: x }\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("sent_items.store.tls: applies to the imap backend only"),
            "{s}"
        );
        assert!(
            s.contains("sent_items.store.master_user: applies to the imap backend only"),
            "{s}"
        );

        let e = parse("policy: [\"inet:127.0.0.1:1\"]\nsent_items: { store: { backend: imap, address: \"127.0.0.1:143\", tls: none, ca_file: /ca.pem, master_user: m, master_password_file: /s } }\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("sent_items.store.ca_file: has no effect with tls: none"),
            "{e}"
        );
        let e = parse("policy: [\"inet:127.0.0.1:1\"]\nsent_items: { store: { backend: pop3 } }\n")
            .unwrap_err();
        assert!(e.to_string().contains("expected maildir or imap"), "{e}");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("127.0.0.1:143").unwrap(),
            ("127.0.0.1".into(), 143)
        );
        assert_eq!(parse_host_port("[::1]:993").unwrap(), ("::1".into(), 993));
        assert_eq!(
            parse_host_port("imap.example.com:993").unwrap(),
            ("imap.example.com".into(), 993)
        );
        for bad in [
            "imap", "::1:143", ":143", "h:0", "h:70000", "[::1:143", "a b:1",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redis_limiter_settings() {
        use crate::limiter::redis::OnError;
        let c = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nlimiter: { backend: redis, url: \"redis://:pw@10.0.0.5:6379/2\", lease_ttl: 10s, on_error: tempfail, node_id: mta1 }\n",
        )
        .unwrap();
        let LimiterConfig::Redis(r) = c.limiter else {
            panic!("{:?}", c.limiter)
        };
        assert_eq!(r.lease_ttl, Duration::from_secs(10));
        assert_eq!(r.timeout, Duration::from_millis(50));
        assert_eq!(r.on_error, OnError::Tempfail);
        assert_eq!(r.key_prefix, "submitgate:");
        assert_eq!(r.node_id, "mta1");
        let e = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nlimiter:\n  backend: redis\n  url: \"http://x\"\n  on_error: maybe\n  lease_ttl: 0s\n",
        )
        .unwrap_err();
        let lines: Vec<usize> = e.0.iter().map(|x| x.line).collect();
        assert_eq!(lines, vec![4, 5, 6], "{e}");
        let e = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nlimiter: { backend: memory, url: \"redis://x\" }\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("limiter.url: only applies to backend: redis"),
            "{e}"
        );
    }

    #[test]
    fn reply_validation() {
        assert!(SmtpReply::from_str("421 4.3.2 busy").is_ok());
        assert!(SmtpReply::from_str("550 5.7.1 no").is_ok());
        assert!(SmtpReply::from_str("550 4.7.1 wrong class").is_err());
        assert!(SmtpReply::from_str("650 6.7.1 bad code").is_err());
        assert!(SmtpReply::from_str("55 5.7.1 short").is_err());
        assert!(SmtpReply::from_str("550 5.7 two fields").is_err());
        assert!(SmtpReply::from_str("550 5.7.1").is_err());
        assert!(SmtpReply::from_str("550 5.7.1 caf\u{e9}").is_err());
    }

    #[test]
    fn milter_only_config_and_milter_settings() {
        let c =
            parse("milter: [\"inet:127.0.0.1:10041\", \"unix:/run/sg/milter.sock\"]\n").unwrap();
        assert!(c.policy_listeners.is_empty());
        assert_eq!(c.milter_listeners.len(), 2);
        assert_eq!(c.milter_timeout, DEFAULT_MILTER_TIMEOUT);
        assert_eq!(c.milter_max_frame, 1 << 20);
        let c = parse(
            "milter: [\"inet:127.0.0.1:0\"]\nmilter_timeout: 10m\nmilter_max_frame: 2097152\n",
        )
        .unwrap();
        assert_eq!(c.milter_timeout, Duration::from_secs(600));
        assert_eq!(c.milter_max_frame, 2 << 20);
        let e = parse("milter: [\"inet:nohost\"]\nmilter_timeout: never\nmilter_max_frame: 100\n")
            .unwrap_err();
        let lines: Vec<usize> = e.0.iter().map(|x| x.line).collect();
        assert_eq!(lines, vec![1, 2, 3], "{e}");
        let e = parse("policies: ./p\n").unwrap_err();
        assert!(e.to_string().contains("no front end configured"), "{e}");
    }

    #[test]
    fn replies_can_be_overridden() {
        let c = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nreplies: { concurrency_limit: \"421 4.7.0 Too many sessions\" }\n",
        )
        .unwrap();
        assert_eq!(c.replies.concurrency_limit.code, 421);
        assert_eq!(c.replies.tenant_disabled.to_string(), TENANT_DISABLED);
    }

    #[test]
    fn auth_policy_defaults_and_overrides() {
        let c = parse("policy: [\"inet:127.0.0.1:1\"]\n").unwrap();
        assert!(c.auth_policy_listeners.is_empty());
        assert_eq!(c.auth_policy_protocols, ["smtp"]);
        assert_eq!(c.auth_policy_api_key_file, None);
        assert_eq!(c.replies.auth_mailbox_disabled, AUTH_MAILBOX_DISABLED);
        assert_eq!(c.replies.auth_tenant_disabled, AUTH_TENANT_DISABLED);

        // The auth policy alone is a complete front end.
        let c = parse(
            "auth_policy: [\"inet:127.0.0.1:10042\", \"unix:/tmp/ap.sock\"]\n\
auth_policy_api_key_file: /etc/submitgate/auth-policy.key\n\
auth_policy_protocols: [SMTP, submission]\n\
replies: { auth_mailbox_disabled: \"SMTP AUTH is off for this mailbox\" }\n",
        )
        .unwrap();
        assert_eq!(c.auth_policy_listeners.len(), 2);
        assert!(c.policy_listeners.is_empty());
        assert_eq!(c.auth_policy_protocols, ["smtp", "submission"]);
        assert_eq!(
            c.auth_policy_api_key_file.as_deref(),
            Some(Path::new("/etc/submitgate/auth-policy.key"))
        );
        assert_eq!(
            c.replies.auth_mailbox_disabled,
            "SMTP AUTH is off for this mailbox"
        );
    }

    #[test]
    fn auth_policy_errors_have_lines() {
        let text = "\
auth_policy: [\"inet:127.0.0.1\"]
auth_policy_protocols: [\"smtp imap\"]
replies:
  auth_tenant_disabled: \"caf\\u00e9\"
  auth_mailbox_disabled: \"\"
";
        let e = parse(text).unwrap_err();
        let lines: Vec<usize> = e.0.iter().map(|x| x.line).collect();
        assert_eq!(lines, vec![1, 2, 4, 5], "{e}");
        assert!(
            e.to_string().contains("replies.auth_tenant_disabled"),
            "{e}"
        );
        let e = parse("auth_policy_protocols: []\n").unwrap_err();
        assert!(e.to_string().contains("no front end configured"), "{e}");
        assert!(e.to_string().contains("list at least one protocol"), "{e}");
    }
}
