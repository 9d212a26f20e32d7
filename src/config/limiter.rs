//! `limiter:`: session leases in memory (one MTA) or in Redis (shared by several), built into
//! [`LimiterConfig`] with the Redis backend's own [`RedisSettings`].

use std::time::Duration;

use super::check::Checker;
use super::raw::RawLimiter;
use super::LimiterConfig;
use crate::limiter::redis::{default_node_id, redact, OnError, RedisSettings};

/// Checks the section; memory when absent.
pub(super) fn check(ck: &mut Checker, raw: Option<&RawLimiter>) -> LimiterConfig {
    let Some(l) = raw else {
        return LimiterConfig::Memory;
    };
    match l.backend.as_str() {
        "memory" => {
            for (key, set) in [
                ("url", l.url.is_some()),
                ("key_prefix", l.key_prefix.is_some()),
                ("lease_ttl", l.lease_ttl.is_some()),
                ("timeout", l.timeout.is_some()),
                ("on_error", l.on_error.is_some()),
                ("node_id", l.node_id.is_some()),
            ] {
                if set {
                    ck.err(&["limiter", key], "only applies to backend: redis");
                }
            }
            LimiterConfig::Memory
        }
        "redis" => LimiterConfig::Redis(redis_settings(ck, l)),
        other => {
            ck.err(
                &["limiter", "backend"],
                format!("unknown backend {other:?}; expected memory or redis"),
            );
            LimiterConfig::Memory
        }
    }
}

/// `backend: redis`.
fn redis_settings(ck: &mut Checker, l: &RawLimiter) -> RedisSettings {
    let lease_ttl = ck.duration_at(
        &["limiter", "lease_ttl"],
        l.lease_ttl.as_deref(),
        Duration::from_secs(30),
        Duration::from_secs(1),
        None,
    );
    let timeout = ck.duration_at(
        &["limiter", "timeout"],
        l.timeout.as_deref(),
        Duration::from_millis(50),
        Duration::from_millis(1),
        None,
    );
    let url = l
        .url
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    if let Err(e) = redis::Client::open(url.as_str()) {
        ck.err(&["limiter", "url"], format!("{}: {e}", redact(&url)));
    }
    let on_error = match l.on_error.as_deref() {
        None | Some("allow") => OnError::Allow,
        Some("tempfail") => OnError::Tempfail,
        Some(other) => {
            ck.err(
                &["limiter", "on_error"],
                format!("{other:?}: expected allow or tempfail"),
            );
            OnError::Allow
        }
    };
    RedisSettings {
        topology: crate::limiter::redis::Topology::Single,
        url,
        key_prefix: l.key_prefix.clone().unwrap_or_else(|| "submitgate:".into()),
        lease_ttl,
        timeout,
        on_error,
        node_id: l.node_id.clone().unwrap_or_else(default_node_id),
    }
}
