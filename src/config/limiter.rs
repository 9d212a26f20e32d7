//! `limiter:`: session leases, sending-limit counters and restricted senders in memory (one
//! MTA, durable under `state_dir`) or in Redis (shared by several: one server, a Redis Cluster
//! or a Sentinel-watched master), built into [`LimiterConfig`] with the Redis backend's own
//! [`RedisSettings`].

use std::time::Duration;

use super::check::Checker;
use super::raw::RawLimiter;
use super::LimiterConfig;
use crate::limiter::redis::{default_node_id, redact, OnError, RedisSettings, Topology};

/// Checks the section; memory when absent.
pub(super) fn check(ck: &mut Checker, raw: Option<&RawLimiter>) -> LimiterConfig {
    let Some(l) = raw else {
        return LimiterConfig::Memory { state_dir: None };
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
                ("cluster", l.cluster.is_some()),
                ("sentinel", l.sentinel.is_some()),
            ] {
                if set {
                    ck.err(&["limiter", key], "only applies to backend: redis");
                }
            }
            LimiterConfig::Memory {
                state_dir: l.state_dir.clone(),
            }
        }
        "redis" => {
            if l.state_dir.is_some() {
                ck.err(
                    &["limiter", "state_dir"],
                    "only applies to backend: memory (redis keeps the state itself)",
                );
            }
            LimiterConfig::Redis(redis_settings(ck, l))
        }
        other => {
            ck.err(
                &["limiter", "backend"],
                format!("unknown backend {other:?}; expected memory or redis"),
            );
            LimiterConfig::Memory { state_dir: None }
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
    let (url, topology) = topology(ck, l);
    let key_prefix = l.key_prefix.clone().unwrap_or_else(|| "submitgate:".into());
    if key_prefix.contains(['{', '}']) {
        ck.err(
            &["limiter", "key_prefix"],
            "must not contain { or }: each mailbox's keys take the mailbox as Redis Cluster hash tag",
        );
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
        url,
        key_prefix,
        topology,
        lease_ttl,
        timeout,
        on_error,
        node_id: l.node_id.clone().unwrap_or_else(default_node_id),
    }
}

/// `url` (one server), `cluster: [seed nodes]` or `sentinel: {master_name, nodes}`: exactly one
/// of them (`url` defaults to `redis://127.0.0.1:6379/` when none is set). Returns the URL used
/// in messages (the first node for a cluster or the sentinels) and the topology.
fn topology(ck: &mut Checker, l: &RawLimiter) -> (String, Topology) {
    let set = [l.url.is_some(), l.cluster.is_some(), l.sentinel.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if set > 1 {
        ck.err(
            &["limiter", "backend"],
            "set one of url (one server), cluster (Redis Cluster seed nodes) or sentinel",
        );
    }
    let check_urls = |ck: &mut Checker, key: &str, urls: &[String]| {
        if urls.is_empty() {
            ck.err(&["limiter", key], "needs at least one redis:// node");
        }
        for (i, u) in urls.iter().enumerate() {
            if let Err(e) = redis::Client::open(u.as_str()) {
                ck.err(
                    &["limiter", key],
                    format!("entry {}: {}: {e}", i + 1, redact(u)),
                );
            }
        }
    };
    if let Some(nodes) = &l.cluster {
        check_urls(ck, "cluster", nodes);
        let first = nodes.first().cloned().unwrap_or_default();
        return (first, Topology::Cluster(nodes.clone()));
    }
    if let Some(s) = &l.sentinel {
        check_urls(ck, "sentinel", &s.nodes);
        if s.master_name.trim().is_empty() {
            ck.err(
                &["limiter", "sentinel", "master_name"],
                "the name the sentinels monitor the master under (sentinel monitor NAME …)",
            );
        }
        let first = s.nodes.first().cloned().unwrap_or_default();
        return (
            first,
            Topology::Sentinel {
                master: s.master_name.clone(),
                nodes: s.nodes.clone(),
            },
        );
    }
    let url = l
        .url
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    if let Err(e) = redis::Client::open(url.as_str()) {
        ck.err(&["limiter", "url"], format!("{}: {e}", redact(&url)));
    }
    (url, Topology::Single)
}
