//! The shared limiter backend: several MTAs count the same mailboxes in one Redis.
//!
//! A lease is a member (`<node id>:<counter>`, unique across nodes) of the mailbox's sorted set
//! `<prefix>lease:<mailbox>`, scored with its expiry in Redis's own clock. Acquire is one Lua
//! script (drop expired members, count, add when under the limit) so check-and-take is atomic
//! across nodes. Live leases are refreshed every `lease_ttl / 3`; a crashed node's leases expire
//! by themselves after `lease_ttl`; a set's key expires with its last lease. When Redis cannot
//! answer within `timeout`, `on_error` decides: `allow` (let the submission through, audit
//! `limiter_unavailable` once per outage) or `tempfail`. After an outage, the leases of sessions
//! still alive here are written back once (idempotently: same member ids), so they count again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{Backend, Limiter, MailboxSessions};
use crate::audit::{Audit, AuditEvent, EventKind};

/// What to do when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Let the submission through (the org/mailbox flags are still enforced).
    Allow,
    /// Refuse with the tempfail reply (451 4.3.0).
    Tempfail,
}

/// Settings of the Redis backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port/db`, `rediss://…` (TLS) or `unix:///path`.
    pub url: String,
    pub key_prefix: String,
    pub lease_ttl: Duration,
    pub timeout: Duration,
    pub on_error: OnError,
    /// Unique per daemon; part of every lease's member id.
    pub node_id: String,
}

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("redis limiter ({url}): {source}")]
pub struct SetupError {
    url: String,
    source: redis::RedisError,
}

/// The URL with any password hidden, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// A default node id: host name, process id and start time, so two daemons never collide.
pub fn default_node_id() -> String {
    let host = crate::fsutil::hostname();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{host}:{}:{started:x}", std::process::id())
}

const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, n + 1}
end
return {0, n}
";

/// Extends the expiry of live leases: `XX` only updates a member that still exists (a lease
/// released meanwhile stays gone); `ADD` writes one back (after an outage).
const REFRESH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local mode = ARGV[2 * i]
  local member = ARGV[2 * i + 1]
  if mode == 'XX' then
    redis.call('ZADD', key, 'XX', now + ttl, member)
  else
    redis.call('ZADD', key, now + ttl, member)
  end
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
";

const RELEASE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return 1
";

const COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('ZCOUNT', key, '(' .. now, '+inf') end
return out
";

/// A live lease of this node.
struct LiveLease {
    mailbox: Arc<str>,
    /// Known to be in Redis (false: granted during an outage, or Redis came back since).
    registered: bool,
}

/// The backend.
pub struct RedisBackend {
    conn: ConnectionManager,
    settings: RedisSettings,
    counter: AtomicU64,
    live: Mutex<HashMap<u64, LiveLease>>,
    down: AtomicBool,
    audit: Option<Audit>,
    acquire: Script,
    refresh: Script,
    release: Script,
    count: Script,
}

/// The outcome of an acquire, before it becomes a lease.
pub(super) enum Outcome {
    Granted(u32),
    Refused(u32),
    Unavailable,
}

impl RedisBackend {
    /// Prepares the connection (lazily: a Redis that is down at start is an outage, not a
    /// start failure). Needs a running tokio runtime.
    pub fn new(settings: RedisSettings, audit: Option<Audit>) -> Result<Self, SetupError> {
        let err = |source| SetupError {
            url: redact(&settings.url),
            source,
        };
        let client = redis::Client::open(settings.url.as_str()).map_err(err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(settings.timeout.max(Duration::from_millis(200))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(err)?;
        Ok(RedisBackend {
            conn,
            settings,
            counter: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            audit,
            acquire: Script::new(ACQUIRE),
            refresh: Script::new(REFRESH),
            release: Script::new(RELEASE),
            count: Script::new(COUNT),
        })
    }

    fn key(&self, mailbox: &str) -> String {
        format!("{}lease:{mailbox}", self.settings.key_prefix)
    }

    fn member(&self, id: u64) -> String {
        format!("{}:{id}", self.settings.node_id)
    }

    pub(super) fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn ttl_ms(&self) -> u64 {
        self.settings.lease_ttl.as_millis() as u64
    }

    fn track(&self, id: u64, mailbox: &str, registered: bool) {
        if let Ok(mut live) = self.live.lock() {
            live.insert(
                id,
                LiveLease {
                    mailbox: Arc::from(mailbox),
                    registered,
                },
            );
        }
    }

    fn untrack(&self, id: u64) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&id);
        }
    }

    /// Runs one Redis operation within the timeout, noting outages and recoveries.
    async fn call<T, F>(&self, timeout: Duration, op: F) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let result = match tokio::time::timeout(timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match result {
            Ok(v) => {
                self.mark_up();
                Some(v)
            }
            Err(e) => {
                crate::metrics::limiter_error("redis");
                self.mark_down(&e).await;
                None
            }
        }
    }

    async fn mark_down(&self, error: &str) {
        if !self.down.swap(true, Ordering::SeqCst) {
            let url = redact(&self.settings.url);
            tracing::warn!(
                url,
                "redis limiter unavailable ({error}); on_error = {:?}",
                self.settings.on_error
            );
            if let Some(audit) = &self.audit {
                let mut ev = AuditEvent::new(EventKind::LimiterUnavailable);
                ev.message = Some(format!(
                    "{url}: {error}; on_error: {}",
                    match self.settings.on_error {
                        OnError::Allow => "allow",
                        OnError::Tempfail => "tempfail",
                    }
                ));
                audit.record(ev).await;
            }
            crate::alerts::raise(crate::alerts::AlertEvent::limiter_unavailable(&format!(
                "{url}: {error}"
            )));
        }
    }

    fn mark_up(&self) {
        if self.down.swap(false, Ordering::SeqCst) {
            tracing::info!(
                url = redact(&self.settings.url),
                "redis limiter reachable again"
            );
            // Sessions that lived through the outage are written back once by the next refresh.
            if let Ok(mut live) = self.live.lock() {
                for lease in live.values_mut() {
                    lease.registered = false;
                }
            }
        }
    }

    pub(super) async fn acquire(&self, mailbox: &str, limit: u32, id: u64) -> Outcome {
        let mut conn = self.conn.clone();
        let mut invocation = self.acquire.key(self.key(mailbox));
        invocation
            .arg(limit)
            .arg(self.ttl_ms())
            .arg(self.member(id));
        let answer: Option<(u32, u32)> = self
            .call(self.settings.timeout, invocation.invoke_async(&mut conn))
            .await;
        match answer {
            Some((1, n)) => {
                self.track(id, mailbox, true);
                Outcome::Granted(n)
            }
            Some((_, n)) => Outcome::Refused(n),
            None => match self.settings.on_error {
                OnError::Allow => {
                    // Not in Redis yet: the first refresh after the outage writes it.
                    self.track(id, mailbox, false);
                    Outcome::Granted(0)
                }
                OnError::Tempfail => Outcome::Unavailable,
            },
        }
    }

    pub(super) async fn release(&self, mailbox: &str, id: u64) {
        self.untrack(id);
        let mut conn = self.conn.clone();
        let mut invocation = self.release.key(self.key(mailbox));
        invocation.arg(self.member(id));
        // On failure the member expires by itself after lease_ttl.
        let _: Option<i64> = self
            .call(
                self.settings.timeout * 4,
                invocation.invoke_async(&mut conn),
            )
            .await;
    }

    pub(super) fn release_in_background(&self, limiter: Limiter, mailbox: Arc<str>, id: u64) {
        self.untrack(id);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Backend::Redis(r) = &*limiter.backend {
                        r.release(&mailbox, id).await;
                    }
                });
            }
            Err(_) => tracing::debug!(
                mailbox = &*mailbox,
                "lease dropped outside the runtime; it expires after lease_ttl"
            ),
        }
    }

    pub(super) async fn in_use(&self, mailbox: &str) -> Option<u32> {
        let mut conn = self.conn.clone();
        let counts: Option<Vec<u32>> = self
            .call(
                self.settings.timeout * 4,
                self.count.key(self.key(mailbox)).invoke_async(&mut conn),
            )
            .await;
        counts.and_then(|c| c.first().copied())
    }

    /// Sessions per mailbox across every node.
    pub(super) async fn sessions(&self) -> Option<Vec<MailboxSessions>> {
        let prefix = format!("{}lease:", self.settings.key_prefix);
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut conn = self.conn.clone();
        let keys: Vec<String> = self
            .call(Duration::from_secs(5), async {
                let mut iter = conn.scan_match::<_, String>(&pattern).await?;
                let mut keys = Vec::new();
                while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
                    keys.push(k?);
                }
                Ok(keys)
            })
            .await?;
        let mut out = Vec::new();
        for chunk in keys.chunks(500) {
            let mut conn = self.conn.clone();
            let mut invocation = self.count.prepare_invoke();
            for k in chunk {
                invocation.key(k);
            }
            let counts: Vec<u32> = self
                .call(Duration::from_secs(5), invocation.invoke_async(&mut conn))
                .await?;
            for (k, n) in chunk.iter().zip(counts) {
                if n > 0 {
                    out.push(MailboxSessions {
                        mailbox: k[prefix.len()..].to_string(),
                        sessions: n,
                    });
                }
            }
        }
        Some(out)
    }

    /// Extends every live lease of this node (and writes back those Redis does not know).
    async fn refresh_all(&self) {
        let batch: Vec<(u64, Arc<str>, bool)> = match self.live.lock() {
            Ok(live) => live
                .iter()
                .map(|(id, l)| (*id, l.mailbox.clone(), l.registered))
                .collect(),
            Err(_) => return,
        };
        let timeout = (self.settings.lease_ttl / 3).max(self.settings.timeout);
        for chunk in batch.chunks(500) {
            let mut conn = self.conn.clone();
            let mut invocation = self.refresh.prepare_invoke();
            invocation.arg(self.ttl_ms());
            for (id, mailbox, registered) in chunk {
                invocation
                    .key(self.key(mailbox))
                    .arg(if *registered { "XX" } else { "ADD" })
                    .arg(self.member(*id));
            }
            let done: Option<i64> = self.call(timeout, invocation.invoke_async(&mut conn)).await;
            if done.is_some() {
                if let Ok(mut live) = self.live.lock() {
                    for (id, _, _) in chunk {
                        if let Some(l) = live.get_mut(id) {
                            l.registered = true;
                        }
                    }
                }
            }
        }
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Starts the task that refreshes this node's live leases every `lease_ttl / 3`; it ends when
/// the limiter is dropped.
pub(super) fn start_refresher(limiter: &Limiter) {
    let Backend::Redis(r) = &*limiter.backend else {
        return;
    };
    let period = (r.settings.lease_ttl / 3).max(Duration::from_millis(100));
    let weak = Arc::downgrade(&limiter.backend);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(backend) = weak.upgrade() else { break };
            if let Backend::Redis(r) = &*backend {
                r.refresh_all().await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact("rediss://user:pw@r.example:6380"),
            "rediss://***@r.example:6380"
        );
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(redact("unix:///run/redis.sock"), "unix:///run/redis.sock");
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("sg:[a]*?"), "sg:\\[a\\]\\*\\?");
    }

    #[test]
    fn node_ids_differ_between_processes() {
        let id = default_node_id();
        assert!(id.contains(&format!(":{}:", std::process::id())), "{id}");
    }
}
