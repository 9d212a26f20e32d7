//! The front ends' sockets and their milter settings: the control socket, the milter's
//! timeout and frame limit, and the rule that at least one front end listens.

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
