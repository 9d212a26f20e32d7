//! The daemon configuration (`submitgate.yaml`), the top layer beside the daemon and the CLI.
//!
//! Each module owns its checked settings type ([`audit::Settings`], [`worker::Settings`],
//! [`store::Settings`] with [`imap::Settings`], [`RedisSettings`], [`Replies`]); this module
//! *builds* them from the file, so the validated [`Config`] holds them and nothing copies them
//! again. The arrows point one way: config may import any module, and no leaf module imports
//! config.
//!
//! The steps (Vector's `compile` style): `raw` reads the file into serde types that refuse
//! unknown keys; a `check::Checker` carries the positioned YAML tree and collects every problem
//! while each section's checks run (one file per section); only when none was found does the
//! [`Config`] reach the rest of the daemon. Every error names file, line and column.
//!
//! [`audit::Settings`]: crate::audit::Settings
//! [`worker::Settings`]: crate::sent_items::worker::Settings
//! [`store::Settings`]: crate::sent_items::store::Settings
//! [`imap::Settings`]: crate::sent_items::store::imap::Settings

mod alerts;
mod audit;
mod auth_policy;
mod check;
mod imap;
mod limiter;
mod listeners;
mod log;
mod paths;
mod raw;
mod replies;
mod sent_items;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::limiter::redis::RedisSettings;
use crate::reply::Replies;
use crate::sent_items::{store, worker};
use check::Checker;
use raw::RawConfig;

pub use crate::sent_items::store::DEFAULT_MAILDIR_ROOT;
pub use listeners::{
    ConnectionLimits, DEFAULT_MAX_CONNECTIONS, DEFAULT_POLICY_IDLE_TIMEOUT,
    DEFAULT_POLICY_READ_TIMEOUT,
};
pub use listeners::{DEFAULT_MILTER_TIMEOUT, MAX_MILTER_FRAME, MIN_MILTER_FRAME};

/// Where the CLI looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/submitgate/submitgate.yaml";

/// One configuration problem.
pub type ConfigError = crate::yaml::LocatedError;

/// Every problem of one configuration file (the crate's one error-list type).
pub use crate::yaml::Errors as ConfigErrors;

/// Which limiter backend holds the session leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimiterConfig {
    /// In this process (one MTA); the blocked list and the counters survive a restart in
    /// `state_dir` when it is set.
    Memory { state_dir: Option<PathBuf> },
    /// Shared by several MTAs through Redis.
    Redis(RedisSettings),
}

/// The Sent Items copy: the durable spool the milter writes and the store the workers fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentItemsConfig {
    /// The spool directory.
    pub spool: PathBuf,
    /// Where copies go.
    pub store: store::Settings,
    /// True when `sent_items.store` is set: the daemon then runs the delivery workers. Without
    /// it the milter still spools copies (when it runs), but nothing delivers them.
    pub deliver: bool,
    /// The delivery workers: concurrency, `max_age`, retry, `scan_interval`.
    pub worker: worker::Settings,
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
    /// Policy front end: a connection with no request under way is closed after this long.
    pub policy_idle_timeout: Duration,
    /// Policy front end: a request must arrive whole (and its reply be taken) within this long.
    pub policy_read_timeout: Duration,
    pub unix_socket_mode: u32,
    /// Connections served at once, per front end (and all together when `max_connections`
    /// is set).
    pub connection_limits: ConnectionLimits,
    pub limiter: LimiterConfig,
    pub audit: crate::audit::Settings,
    pub replies: Replies,
    pub sent_items: SentItemsConfig,
    /// Dovecot auth policy (HTTP) listeners.
    pub auth_policy_listeners: Vec<Endpoint>,
    /// File holding the shared secret Dovecot sends as `X-API-Key` (read at start).
    pub auth_policy_api_key_file: Option<PathBuf>,
    /// Dovecot protocols whose logins the auth policy checks (lower-case; default `smtp`).
    pub auth_policy_protocols: Vec<String>,
    /// Prometheus `GET /metrics` listeners (HTTP).
    pub metrics_listeners: Vec<Endpoint>,
    /// Where alert events go (`None`: no alerts).
    pub alerts: Option<crate::alerts::Settings>,
    /// The operational log (`log:`).
    pub log: crate::logging::Settings,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                kind: crate::yaml::ErrorKind::Unreadable,
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::parse(path, &text)
    }

    /// Validates configuration text; `path` names it in errors, and relative paths in it are
    /// relative to its directory.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let raw = RawConfig::from_text(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                kind: crate::yaml::ErrorKind::Config,
                message: e.to_string(),
            }])
        })?;
        let mut ck = Checker::new(path, text);
        // The order of the checks is the order of problems that share a position.
        let policy_listeners = ck.endpoints_at("policy", &raw.policy);
        let milter_listeners = ck.endpoints_at("milter", &raw.milter);
        let milter_timeout = listeners::milter_timeout(&mut ck, raw.milter_timeout.as_deref());
        let milter_max_frame = listeners::milter_max_frame(&mut ck, raw.milter_max_frame);
        let control = listeners::control(&mut ck, raw.control.as_deref());
        let default_domain = default_domain(&mut ck, raw.default_domain.as_deref());
        let lease_idle_timeout = ck.duration_at(
            &["lease_idle_timeout"],
            raw.lease_idle_timeout.as_deref(),
            Duration::from_secs(300),
            Duration::from_secs(1),
            Some("300s, 5m"),
        );
        let unix_socket_mode =
            ck.mode_at("unix_socket_mode", raw.unix_socket_mode.as_deref(), 0o666);
        let control_socket_mode = ck.mode_at(
            "control_socket_mode",
            raw.control_socket_mode.as_deref(),
            0o600,
        );
        let connection_limits = listeners::connection_limits(&mut ck, &raw);
        let (policy_idle_timeout, policy_read_timeout) = listeners::policy_timeouts(&mut ck, &raw);
        let limiter = limiter::check(&mut ck, raw.limiter.as_ref());
        let audit = audit::check(&mut ck, raw.audit.as_ref());
        let replies = replies::check(&mut ck, raw.replies.as_ref());
        let sent_items = sent_items::check(&mut ck, raw.sent_items.as_ref());
        let auth_policy_listeners = ck.endpoints_at("auth_policy", &raw.auth_policy);
        let auth_policy_api_key_file =
            auth_policy::api_key_file(&mut ck, raw.auth_policy_api_key_file.as_deref());
        let auth_policy_protocols =
            auth_policy::protocols(&mut ck, raw.auth_policy_protocols.as_deref());
        let metrics_listeners = ck.endpoints_at("metrics", &raw.metrics);
        let alerts = alerts::check(&mut ck, raw.alerts.as_ref());
        let log = log::check(&mut ck, raw.log.as_ref());
        listeners::require_front_end(&mut ck, &raw);

        let mut config = ck.finish(Config {
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
            policy_idle_timeout,
            policy_read_timeout,
            unix_socket_mode,
            connection_limits,
            limiter,
            audit,
            replies,
            sent_items,
            auth_policy_listeners,
            auth_policy_api_key_file,
            auth_policy_protocols,
            metrics_listeners,
            alerts,
            log,
        })?;
        paths::resolve(&mut config, path.parent().unwrap_or(Path::new("")));
        Ok(config)
    }

    /// The options policy loading needs from the daemon configuration.
    pub fn policy_options(&self) -> crate::policy::LoadOptions {
        crate::policy::LoadOptions {
            default_domain: self.default_domain.clone(),
        }
    }
}

/// `default_domain`: lower-cased, and a domain name.
fn default_domain(ck: &mut Checker, value: Option<&str>) -> Option<String> {
    let d = value?.trim().to_ascii_lowercase();
    if crate::policy::valid_domain(&d) {
        Some(d)
    } else {
        ck.err(&["default_domain"], format!("{d:?} is not a domain name"));
        None
    }
}

#[cfg(test)]
mod tests;
