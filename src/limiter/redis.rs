//! The shared limiter backend: several MTAs count the same mailboxes in one Redis (a single
//! server, Redis Cluster or Redis Sentinel: [`conn`]).
//!
//! A lease is a member (`<node id>:<counter>`, unique across nodes) of the mailbox's sorted set
//! `<prefix>lease:{<mailbox>}`, scored with its expiry in Redis's own clock. Acquire is one Lua
//! script (drop expired members, count, add when under the limit) so check-and-take is atomic
//! across nodes. The sending-limit counters (`<prefix>count:{<mailbox>}`) and the restricted
//! sender's entry (`<prefix>blocked:{<mailbox>}`) share the mailbox's hash tag, so that one
//! script ([`scripts`]) reads and writes all of them atomically, in Redis Cluster too: a
//! decision is one round trip (`EVALSHA`), whatever it checks. Live leases are refreshed every `lease_ttl / 3`; a crashed node's leases expire
//! by themselves after `lease_ttl`; a set's key expires with its last lease. When Redis cannot
//! answer within `timeout`, `on_error` decides: `allow` (let the submission through, audit
//! `limiter_unavailable` once per outage) or `tempfail`. After an outage, the leases of sessions
//! still alive here are written back once (idempotently: same member ids), so they count again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;

use super::blocked::BlockedSender;
use super::counters::{Crossed, MessageCount, Threshold, Thresholds, Usage};
use super::{Backend, Limiter, MailboxSessions};
use crate::audit::{Audit, AuditEvent, EventKind};

pub mod conn;
mod scripts;

use conn::Conn;
pub use conn::Topology;

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
    /// `redis://[:password@]host:port/db`, `rediss://…` (TLS) or `unix:///path`: the server
    /// of [`Topology::Single`]; with a cluster or sentinels, their first node (for messages).
    pub url: String,
    /// Single server, Redis Cluster or Redis Sentinel.
    pub topology: Topology,
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
    conn: Conn,
    settings: RedisSettings,
    counter: AtomicU64,
    live: Mutex<HashMap<u64, LiveLease>>,
    down: AtomicBool,
    audit: Option<Audit>,
    acquire: Script,
    refresh: Script,
    release: Script,
    count: Script,
    open: Script,
    commit: Script,
    uncommit: Script,
    usage: Script,
    release_sender: Script,
}

/// What the open script found.
pub(super) enum OpenOutcome {
    Open { in_use: u32, usage: Usage },
    Full(u32),
    Blocked(BlockedSender),
    MessageRate(Usage),
    Unavailable,
}

/// What the commit script did.
pub(super) enum CommitOutcome {
    Counted {
        usage: Usage,
        alert: Option<Crossed>,
        at: u64,
    },
    Blocked(BlockedSender),
    MessageRate(Usage),
    RecipientRate(Usage),
    Restricted {
        crossed: Crossed,
        entry: BlockedSender,
        usage: Usage,
    },
    Unavailable,
}

/// A restricted sender's entry as the commit script wrote it (`None`: empty or not ours).
fn parse_entry(json: &str) -> Option<BlockedSender> {
    if json.is_empty() {
        return None;
    }
    serde_json::from_str(json).ok()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        let conn = Conn::open(&settings.url, &settings.topology, settings.timeout).map_err(err)?;
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
            open: Script::new(&scripts::open()),
            commit: Script::new(&scripts::commit()),
            uncommit: Script::new(scripts::UNCOMMIT),
            usage: Script::new(&scripts::usage()),
            release_sender: Script::new(scripts::RELEASE_SENDER),
        })
    }

    /// The mailbox's lease set; its name carries the mailbox as hash tag.
    fn key(&self, mailbox: &str) -> String {
        self.key_of("lease", mailbox)
    }

    /// `<prefix><kind>:{<mailbox>}`: every key of a mailbox has the same hash tag.
    fn key_of(&self, kind: &str, mailbox: &str) -> String {
        format!("{}{kind}:{{{mailbox}}}", self.settings.key_prefix)
    }

    /// The mailbox of a key made by [`RedisBackend::key_of`].
    fn mailbox_of<'k>(&self, kind: &str, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.settings.key_prefix.as_str())?
            .strip_prefix(kind)?
            .strip_prefix(":{")?
            .strip_suffix('}')
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
            Err(_) => {
                self.conn.reset();
                Err(format!("no answer within {timeout:?}"))
            }
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
        let pattern = format!("{}lease:{{*", glob_escape(&self.settings.key_prefix));
        let keys: Vec<String> = self
            .call(Duration::from_secs(5), self.conn.scan(&pattern))
            .await?;
        let mut out = Vec::new();
        // One key per call: in a cluster the keys of one script must share a slot.
        for k in keys {
            let Some(mailbox) = self.mailbox_of("lease", &k) else {
                continue;
            };
            let mut conn = self.conn.clone();
            let counts: Vec<u32> = self
                .call(
                    Duration::from_secs(5),
                    self.count.key(&k).invoke_async(&mut conn),
                )
                .await?;
            if let Some(n) = counts.first().copied().filter(|n| *n > 0) {
                out.push(MailboxSessions {
                    mailbox: mailbox.to_string(),
                    sessions: n,
                });
            }
        }
        Some(out)
    }

    /// The start of a message: restricted? over the message rate? and the lease when
    /// `lease_limit` asks for one (member `id`), in one script.
    pub(super) async fn open(
        &self,
        mailbox: &str,
        lease_limit: Option<u32>,
        messages_per_minute: u32,
        id: u64,
    ) -> OpenOutcome {
        let mut conn = self.conn.clone();
        let mut invocation = self.open.prepare_invoke();
        invocation
            .key(self.key(mailbox))
            .key(self.key_of("count", mailbox))
            .key(self.key_of("blocked", mailbox))
            .arg(if lease_limit.is_some() { "1" } else { "0" })
            .arg(lease_limit.unwrap_or(0))
            .arg(self.ttl_ms())
            .arg(self.member(id))
            .arg(messages_per_minute);
        let answer: Option<(u8, u32, String, u32, u32, u32, u32)> = self
            .call(self.settings.timeout, invocation.invoke_async(&mut conn))
            .await;
        let Some((code, in_use, entry, m, r, e, i)) = answer else {
            return match self.settings.on_error {
                OnError::Allow => {
                    if lease_limit.is_some() {
                        // Not in Redis yet: the first refresh after the outage writes it.
                        self.track(id, mailbox, false);
                    }
                    OpenOutcome::Open {
                        in_use: 0,
                        usage: Usage::default(),
                    }
                }
                OnError::Tempfail => OpenOutcome::Unavailable,
            };
        };
        let usage = Usage {
            messages_last_minute: m,
            recipients_last_day: r,
            external_last_hour: e,
            internal_last_hour: i,
        };
        match code {
            0 => {
                if lease_limit.is_some() {
                    self.track(id, mailbox, true);
                }
                OpenOutcome::Open { in_use, usage }
            }
            1 => OpenOutcome::Full(in_use),
            2 => match parse_entry(&entry) {
                Some(b) => OpenOutcome::Blocked(b),
                None => self.bad_entry(mailbox, &entry),
            },
            _ => OpenOutcome::MessageRate(usage),
        }
    }

    fn bad_entry(&self, mailbox: &str, entry: &str) -> OpenOutcome {
        tracing::error!(
            mailbox,
            entry = %crate::text::escape(&entry.chars().take(200).collect::<String>()),
            "redis limiter: a restricted sender's entry is not submitgate's JSON; treated as blocked"
        );
        OpenOutcome::Blocked(BlockedSender {
            mailbox: mailbox.to_string(),
            since: 0,
            until: 0,
            threshold: "unknown".into(),
            count: 0,
            limit: 0,
            action: crate::policy::SpamAction::BlockUser,
        })
    }

    /// The end of a message: judge, then count or block, and give back the lease with member
    /// `release` if given, in one script.
    pub(super) async fn commit(
        &self,
        mailbox: &str,
        t: &Thresholds,
        count: MessageCount,
        release: Option<u64>,
    ) -> CommitOutcome {
        if let Some(id) = release {
            self.untrack(id);
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.commit.prepare_invoke();
        invocation
            .key(self.key(mailbox))
            .key(self.key_of("count", mailbox))
            .key(self.key_of("blocked", mailbox))
            .arg(t.messages_per_minute)
            .arg(t.recipients_per_day)
            .arg(t.external_per_hour)
            .arg(t.internal_per_hour)
            .arg(t.spam_per_day)
            .arg(t.action.as_str())
            .arg(count.external)
            .arg(count.internal)
            .arg(mailbox)
            .arg(release.map(|id| self.member(id)).unwrap_or_default());
        type Answer = (u8, String, u32, u32, u32, u32, u64, String, u32, u32);
        let answer: Option<Answer> = self
            .call(self.settings.timeout, invocation.invoke_async(&mut conn))
            .await;
        let Some((code, entry, m, r, e, i, secs, which, n, limit)) = answer else {
            return match self.settings.on_error {
                OnError::Allow => CommitOutcome::Counted {
                    usage: Usage::default(),
                    alert: None,
                    at: now_secs(),
                },
                OnError::Tempfail => CommitOutcome::Unavailable,
            };
        };
        let usage = Usage {
            messages_last_minute: m,
            recipients_last_day: r,
            external_last_hour: e,
            internal_last_hour: i,
        };
        let crossed = Threshold::parse(&which).map(|threshold| Crossed {
            threshold,
            count: n,
            limit,
        });
        match code {
            0 => CommitOutcome::Counted {
                usage,
                alert: crossed,
                at: secs,
            },
            2 | 5 => {
                let entry = match parse_entry(&entry) {
                    Some(b) => b,
                    None => match self.bad_entry(mailbox, &entry) {
                        OpenOutcome::Blocked(b) => b,
                        _ => return CommitOutcome::Unavailable,
                    },
                };
                match (code, crossed) {
                    (5, Some(crossed)) => CommitOutcome::Restricted {
                        crossed,
                        entry,
                        usage,
                    },
                    _ => CommitOutcome::Blocked(entry),
                }
            }
            3 => CommitOutcome::MessageRate(usage),
            _ => CommitOutcome::RecipientRate(usage),
        }
    }

    /// Takes back a message counted at `at` (its commit said so).
    pub(super) async fn uncommit(&self, mailbox: &str, count: MessageCount, at: u64) {
        let mut conn = self.conn.clone();
        let mut invocation = self.uncommit.key(self.key_of("count", mailbox));
        invocation.arg(at).arg(count.external).arg(count.internal);
        let _: Option<i64> = self
            .call(
                self.settings.timeout * 4,
                invocation.invoke_async(&mut conn),
            )
            .await;
    }

    /// Sessions, block and usage of a mailbox (`None` when Redis cannot answer).
    pub(super) async fn usage(&self, mailbox: &str) -> Option<(u32, Option<BlockedSender>, Usage)> {
        let mut conn = self.conn.clone();
        let mut invocation = self.usage.prepare_invoke();
        invocation
            .key(self.key(mailbox))
            .key(self.key_of("count", mailbox))
            .key(self.key_of("blocked", mailbox));
        let (n, entry, m, r, e, i): (u32, String, u32, u32, u32, u32) = self
            .call(Duration::from_secs(5), invocation.invoke_async(&mut conn))
            .await?;
        Some((
            n,
            parse_entry(&entry),
            Usage {
                messages_last_minute: m,
                recipients_last_day: r,
                external_last_hour: e,
                internal_last_hour: i,
            },
        ))
    }

    /// Every restricted sender (SCAN on every master).
    pub(super) async fn blocked_senders(&self) -> Result<Vec<BlockedSender>, String> {
        let pattern = format!("{}blocked:{{*", glob_escape(&self.settings.key_prefix));
        let keys = tokio::time::timeout(Duration::from_secs(10), self.conn.scan(&pattern))
            .await
            .map_err(|_| "redis: no answer within 10s".to_string())?
            .map_err(|e| format!("redis: {e}"))?;
        let mut out = Vec::new();
        for key in keys {
            let mut conn = self.conn.clone();
            let value: Option<String> = tokio::time::timeout(
                Duration::from_secs(5),
                redis::cmd("GET").arg(&key).query_async(&mut conn),
            )
            .await
            .map_err(|_| "redis: no answer within 5s".to_string())?
            .map_err(|e| format!("redis: {e}"))?;
            if let Some(b) = value.as_deref().and_then(parse_entry) {
                out.push(b);
            }
        }
        out.sort_by(|a, b| {
            a.since
                .cmp(&b.since)
                .then_with(|| a.mailbox.cmp(&b.mailbox))
        });
        Ok(out)
    }

    /// Releases a restricted sender; its entry if it was one.
    pub(super) async fn release_sender(
        &self,
        mailbox: &str,
    ) -> Result<Option<BlockedSender>, String> {
        let mut conn = self.conn.clone();
        let value: Option<String> = tokio::time::timeout(
            Duration::from_secs(5),
            self.release_sender
                .key(self.key_of("blocked", mailbox))
                .invoke_async(&mut conn),
        )
        .await
        .map_err(|_| "redis: no answer within 5s".to_string())?
        .map_err(|e| format!("redis: {e}"))?;
        Ok(value.as_deref().and_then(parse_entry))
    }

    /// Extends every live lease of this node (and writes back those Redis does not know).
    async fn refresh_all(&self) {
        let mut batch: Vec<(u64, Arc<str>, bool)> = match self.live.lock() {
            Ok(live) => live
                .iter()
                .map(|(id, l)| (*id, l.mailbox.clone(), l.registered))
                .collect(),
            Err(_) => return,
        };
        let timeout = (self.settings.lease_ttl / 3).max(self.settings.timeout);
        // In a cluster the keys of one script must live in one slot: one call per mailbox.
        let cluster = matches!(self.settings.topology, Topology::Cluster(_));
        batch.sort_by(|a, b| a.1.cmp(&b.1));
        let chunks: Vec<&[(u64, Arc<str>, bool)]> = if cluster {
            batch.chunk_by(|a, b| a.1 == b.1).collect()
        } else {
            batch.chunks(500).collect()
        };
        for chunk in chunks {
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
