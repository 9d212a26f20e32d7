//! The front ends' sockets and their milter settings: the control socket, the milter's
//! timeout and frame limit, the policy front end's idle and read timeouts, the connection caps
//! per front end, and the rule that at least one front end listens.

use std::time::Duration;

use super::check::Checker;
use super::raw::RawConfig;
use crate::endpoint::Endpoint;
use crate::milter::codec::DEFAULT_MAX_FRAME;

/// How long a milter connection may stay silent: longer than Postfix's own
/// `milter_content_timeout` (300 s), so that Postfix, not submitgate, gives up first.
pub const DEFAULT_MILTER_TIMEOUT: Duration = Duration::from_secs(360);
/// Smallest accepted `milter_max_frame`: one full body chunk plus its frame overhead.
pub const MIN_MILTER_FRAME: usize = 65_536;
/// Largest accepted `milter_max_frame`.
pub const MAX_MILTER_FRAME: usize = 64 << 20;

/// Connections one front end serves at once unless configured: Postfix's default process
/// limit (100 smtpd processes, each with one connection per front end) times five services.
pub const DEFAULT_MAX_CONNECTIONS: usize = 500;
/// Largest accepted connection cap.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// A policy connection with no request under way is closed after this long: a little above
/// Postfix's `smtpd_policy_service_max_idle` (300 s), so that Postfix closes first.
pub const DEFAULT_POLICY_IDLE_TIMEOUT: Duration = Duration::from_secs(330);
/// A policy request must arrive whole within this long (Postfix writes it in one go).
pub const DEFAULT_POLICY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections each front end serves at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `policy_max_connections`.
    pub policy: usize,
    /// `milter_max_connections`.
    pub milter: usize,
    /// `auth_policy_max_connections`.
    pub auth_policy: usize,
    /// `max_connections` (older configurations): all front ends together, when set.
    pub shared: Option<usize>,
}

/// The caps: each front end's key, else the old shared `max_connections` (so that an older
/// configuration serves the connections it did), else [`DEFAULT_MAX_CONNECTIONS`].
pub(super) fn connection_limits(ck: &mut Checker, raw: &RawConfig) -> ConnectionLimits {
    let range = (1, MAX_MAX_CONNECTIONS);
    let shared = raw.max_connections.map(|n| {
        ck.number_at(
            &["max_connections"],
            Some(n),
            range,
            DEFAULT_MAX_CONNECTIONS,
        )
    });
    let default = shared.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let mut cap = |key: &str, value: Option<usize>| ck.number_at(&[key], value, range, default);
    ConnectionLimits {
        policy: cap("policy_max_connections", raw.policy_max_connections),
        milter: cap("milter_max_connections", raw.milter_max_connections),
        auth_policy: cap(
            "auth_policy_max_connections",
            raw.auth_policy_max_connections,
        ),
        shared,
    }
}

/// `policy_idle_timeout` and `policy_read_timeout`.
pub(super) fn policy_timeouts(ck: &mut Checker, raw: &RawConfig) -> (Duration, Duration) {
    let idle = ck.duration_at(
        &["policy_idle_timeout"],
        raw.policy_idle_timeout.as_deref(),
        DEFAULT_POLICY_IDLE_TIMEOUT,
        Duration::from_secs(1),
        Some("330s, 6m"),
    );
    let read = ck.duration_at(
        &["policy_read_timeout"],
        raw.policy_read_timeout.as_deref(),
        DEFAULT_POLICY_READ_TIMEOUT,
        Duration::from_millis(100),
        Some("10s"),
    );
    (idle, read)
}

/// `milter_timeout`: at least a second.
pub(super) fn milter_timeout(ck: &mut Checker, value: Option<&str>) -> Duration {
    ck.duration_at(
        &["milter_timeout"],
        value,
        DEFAULT_MILTER_TIMEOUT,
        Duration::from_secs(1),
        Some("360s, 6m"),
    )
}

/// `milter_max_frame`: room for Postfix's largest body chunk, and not absurdly large.
pub(super) fn milter_max_frame(ck: &mut Checker, value: Option<usize>) -> usize {
    match value {
        None => DEFAULT_MAX_FRAME,
        Some(n) if (MIN_MILTER_FRAME..=MAX_MILTER_FRAME).contains(&n) => n,
        Some(n) => {
            ck.err(
                &["milter_max_frame"],
                format!(
                    "{n} is not between {MIN_MILTER_FRAME} and {MAX_MILTER_FRAME} bytes \
                     (Postfix sends body chunks of up to 65535 bytes)"
                ),
            );
            DEFAULT_MAX_FRAME
        }
    }
}

/// `control`: a unix socket only (status and reload are for the local administrator).
pub(super) fn control(ck: &mut Checker, value: Option<&str>) -> Option<Endpoint> {
    let s = value?;
    match Endpoint::parse(s) {
        Ok(e @ Endpoint::Unix(_)) => Some(e),
        Ok(_) => {
            ck.err(
                &["control"],
                format!("{s:?}: the control socket must be unix:/PATH"),
            );
            None
        }
        Err(e) => {
            ck.err(&["control"], e.to_string());
            None
        }
    }
}

/// A daemon with no milter, policy or auth policy listener would do nothing.
pub(super) fn require_front_end(ck: &mut Checker, raw: &RawConfig) {
    if raw.policy.is_empty() && raw.milter.is_empty() && raw.auth_policy.is_empty() {
        ck.err(
            &["policy"],
            "no front end configured: list at least one milter or policy listener (e.g. milter: [\"inet:127.0.0.1:10041\"])",
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigErrors> {
        Config::parse(Path::new("sg.yaml"), text)
    }

    #[test]
    fn caps_per_front_end_and_policy_timeouts_default() {
        let c = parse("policy: [\"inet:127.0.0.1:1\"]\n").unwrap();
        let each = DEFAULT_MAX_CONNECTIONS;
        assert_eq!(
            c.connection_limits,
            ConnectionLimits {
                policy: each,
                milter: each,
                auth_policy: each,
                shared: None
            }
        );
        assert_eq!(c.policy_idle_timeout, Duration::from_secs(330));
        assert_eq!(c.policy_read_timeout, Duration::from_secs(10));
    }

    #[test]
    fn caps_and_timeouts_are_configurable() {
        let c = parse(
            "policy: [\"inet:127.0.0.1:1\"]\npolicy_max_connections: 2000\n\
             milter_max_connections: 300\nauth_policy_max_connections: 50\n\
             policy_idle_timeout: 5m\npolicy_read_timeout: 500ms\n",
        )
        .unwrap();
        let l = c.connection_limits;
        assert_eq!(
            (l.policy, l.milter, l.auth_policy, l.shared),
            (2000, 300, 50, None)
        );
        assert_eq!(c.policy_idle_timeout, Duration::from_secs(300));
        assert_eq!(c.policy_read_timeout, Duration::from_millis(500));
    }

    #[test]
    fn the_old_shared_key_still_caps_all_front_ends_together() {
        // An older configuration keeps what it had: every front end may use up to
        // max_connections, and all of them together no more.
        let c = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nmax_connections: 2048\nmilter_max_connections: 100\n",
        )
        .unwrap();
        let l = c.connection_limits;
        assert_eq!(
            (l.policy, l.milter, l.auth_policy, l.shared),
            (2048, 100, 2048, Some(2048))
        );
    }

    #[test]
    fn bad_caps_and_timeouts_are_refused_with_their_lines() {
        let e = parse(
            "policy: [\"inet:127.0.0.1:1\"]\npolicy_max_connections: 0\nmax_connections: 0\n\
             policy_idle_timeout: 0s\npolicy_read_timeout: never\n",
        )
        .unwrap_err();
        let s = e.to_string();
        let lines: Vec<usize> = e.0.iter().map(|x| x.line).collect();
        assert_eq!(lines.len(), 4, "{s}");
        for line in [2, 3, 4, 5] {
            assert!(lines.contains(&line), "line {line} missing: {s}");
        }
        assert!(s.contains("policy_max_connections"), "{s}");
        assert!(s.contains("policy_read_timeout"), "{s}");
    }
}
