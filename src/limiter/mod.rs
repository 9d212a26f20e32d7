//! Per-mailbox state shared by every front end: session leases ("at most N concurrent
//! sessions for this mailbox"), sending-limit counters ([`counters`]) and restricted senders
//! ([`blocked`]). The admission step asks [`Limiter::open`] at the start of a message (a
//! restricted sender? over the message rate? a [`Lease`], a slot given back exactly once: by
//! [`Lease::release`] or, as a safety net, on drop) and [`Limiter::commit`] at its end (judge
//! and count it, or block the sender). The limiter never knows which protocol asked. Two
//! backends behind the same API: [`memory`] (this process: sharded maps, check-and-take under
//! one shard's lock; durable under a `state_dir`) and
//! [`redis`] (shared by several MTAs: one Lua script per decision over the mailbox's keys,
//! leases that expire by themselves when a node dies).

pub mod blocked;
pub mod counters;
pub mod memory;
pub mod redis;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use self::blocked::BlockedSender;
pub use self::counters::{Crossed, MessageCount, Threshold, Thresholds, Usage};

use self::counters::Judgement;
use self::memory::MemoryBackend;
use self::redis::{CommitOutcome, OpenOutcome, RedisBackend};

/// The outcome of an acquire.
#[derive(Debug)]
pub enum Acquire {
    /// A slot is held until the lease is released or dropped.
    Granted(Lease),
    /// The mailbox already has `in_use` sessions, the limit is `limit`.
    Refused { in_use: u32, limit: u32 },
    /// The backend cannot answer and its `on_error` policy says to refuse (tempfail).
    Unavailable,
}

/// What [`Limiter::open`] found at the start of a message.
#[derive(Debug)]
pub enum Opening {
    /// The message may go on; `lease` when one was asked for, `in_use` the mailbox's sessions
    /// (this one included), `usage` what it submitted so far.
    Open {
        lease: Option<Lease>,
        in_use: u32,
        usage: Usage,
    },
    /// A session lease was asked for and the mailbox already has `in_use` of `limit`.
    Full { in_use: u32, limit: u32 },
    /// The mailbox is a restricted sender.
    Blocked(BlockedSender),
    /// `messages_per_minute` messages were accepted in the last minute.
    MessageRate { usage: Usage },
    /// The backend cannot answer and its `on_error` says to refuse (tempfail).
    Unavailable,
}

/// What [`Limiter::commit`] did with a message at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Counted: `usage` with the message; `alert` when it reached a threshold whose action is
    /// `alert`; `at` the second it was counted at (to take it back: [`Limiter::uncommit`]).
    Counted {
        usage: Usage,
        alert: Option<Crossed>,
        at: u64,
    },
    /// Refused: the mailbox is (already) a restricted sender.
    Blocked(BlockedSender),
    /// Deferred: the message rate was reached meanwhile.
    MessageRate { usage: Usage },
    /// Refused: it would go over the recipients per day.
    RecipientRate { usage: Usage },
    /// Refused, and the mailbox is now restricted: the message reached `crossed`.
    Restricted {
        crossed: Crossed,
        entry: BlockedSender,
        usage: Usage,
    },
    /// The backend cannot answer and its `on_error` says to refuse (tempfail).
    Unavailable,
}

/// A mailbox's state for `mailbox get`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailboxState {
    pub mailbox: String,
    /// Live sessions (across the cluster with Redis).
    pub sessions: u32,
    pub usage: Usage,
    /// Its block, when it is a restricted sender.
    pub blocked: Option<BlockedSender>,
}

/// Why a limiter request (listing or releasing restricted senders) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimiterError(pub String);

/// The current time in Unix seconds (the memory backend's clock; Redis uses its own).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How often the memory backend drops mailboxes whose windows emptied.
const SWEEP_EVERY_SECS: u64 = 600;

/// Live leases of one mailbox, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MailboxSessions {
    pub mailbox: String,
    pub sessions: u32,
}

/// The session limiter: cheap to clone, shared by every front end.
#[derive(Clone)]
pub struct Limiter {
    backend: Arc<Backend>,
    /// When the memory backend's counters are swept next (Unix seconds).
    next_sweep: Arc<AtomicU64>,
}

enum Backend {
    Memory(MemoryBackend),
    Redis(Box<RedisBackend>),
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Limiter({})", self.backend_name())
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::memory()
    }
}

impl Limiter {
    /// The in-process backend: limits hold for this daemon only.
    pub fn memory() -> Self {
        Limiter::with_memory(MemoryBackend::new())
    }

    /// The in-process backend over a prepared [`MemoryBackend`] (with its state directory).
    pub fn with_memory(backend: MemoryBackend) -> Self {
        Limiter {
            backend: Arc::new(Backend::Memory(backend)),
            next_sweep: Arc::new(AtomicU64::new(now_secs() + SWEEP_EVERY_SECS)),
        }
    }

    /// The shared backend (see [`redis`]). Needs a running tokio runtime: it starts the task
    /// that keeps live leases from expiring.
    pub fn redis(backend: RedisBackend) -> Self {
        let limiter = Limiter {
            backend: Arc::new(Backend::Redis(Box::new(backend))),
            next_sweep: Arc::new(AtomicU64::new(u64::MAX)),
        };
        redis::start_refresher(&limiter);
        limiter
    }

    /// The backend's name, for `status`.
    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// Takes a slot for `mailbox` when fewer than `limit` are in use.
    pub async fn acquire(&self, mailbox: &str, limit: u32) -> Acquire {
        let (id, outcome) = match &*self.backend {
            Backend::Memory(m) => (0, m.acquire(mailbox, limit).map_err(Some)),
            Backend::Redis(r) => {
                let id = r.next_id();
                match r.acquire(mailbox, limit, id).await {
                    redis::Outcome::Granted(n) => (id, Ok(n)),
                    redis::Outcome::Refused(n) => (id, Err(Some(n))),
                    redis::Outcome::Unavailable => (id, Err(None)),
                }
            }
        };
        match outcome {
            Ok(in_use) => Acquire::Granted(Lease {
                limiter: self.clone(),
                mailbox: Arc::from(mailbox),
                id,
                in_use,
                released: false,
            }),
            Err(Some(in_use)) => Acquire::Refused { in_use, limit },
            Err(None) => Acquire::Unavailable,
        }
    }

    fn lease(&self, mailbox: &str, id: u64, in_use: u32) -> Lease {
        Lease {
            limiter: self.clone(),
            mailbox: Arc::from(mailbox),
            id,
            in_use,
            released: false,
        }
    }

    /// The start of a message: refuses a restricted sender, defers over `messages_per_minute`
    /// (0: no limit), and takes a session slot when `lease_limit` asks for one (fewer than
    /// that many in use). With Redis, one round trip.
    pub async fn open(
        &self,
        mailbox: &str,
        lease_limit: Option<u32>,
        messages_per_minute: u32,
    ) -> Opening {
        match &*self.backend {
            Backend::Memory(m) => {
                let now = now_secs();
                self.sweep(now);
                if let Some(b) = m.blocked.get(mailbox, now) {
                    return Opening::Blocked(b);
                }
                let usage = m.counters.usage(mailbox, now);
                if !counters::may_start(&usage, messages_per_minute) {
                    return Opening::MessageRate { usage };
                }
                match lease_limit {
                    Some(limit) => match m.acquire(mailbox, limit) {
                        Ok(in_use) => Opening::Open {
                            lease: Some(self.lease(mailbox, 0, in_use)),
                            in_use,
                            usage,
                        },
                        Err(in_use) => Opening::Full { in_use, limit },
                    },
                    None => Opening::Open {
                        lease: None,
                        in_use: m.in_use(mailbox),
                        usage,
                    },
                }
            }
            Backend::Redis(r) => {
                let id = r.next_id();
                match r.open(mailbox, lease_limit, messages_per_minute, id).await {
                    OpenOutcome::Open { in_use, usage } => Opening::Open {
                        lease: lease_limit.map(|_| self.lease(mailbox, id, in_use)),
                        in_use,
                        usage,
                    },
                    OpenOutcome::Full(in_use) => Opening::Full {
                        in_use,
                        limit: lease_limit.unwrap_or(0),
                    },
                    OpenOutcome::Blocked(b) => Opening::Blocked(b),
                    OpenOutcome::MessageRate(usage) => Opening::MessageRate { usage },
                    OpenOutcome::Unavailable => Opening::Unavailable,
                }
            }
        }
    }

    /// The end of a message with `count` recipients: judged against `t`, then counted, or
    /// refused (restricted sender, message rate, recipients per day), or refused with the
    /// mailbox now restricted (an outbound spam threshold whose action blocks). `release`, a
    /// transaction's lease, is given back in the same step (one round trip with Redis).
    pub async fn commit(
        &self,
        mailbox: &str,
        t: &Thresholds,
        count: MessageCount,
        release: Option<Lease>,
    ) -> Commit {
        match &*self.backend {
            Backend::Memory(m) => {
                let now = now_secs();
                let outcome = match m.blocked.get(mailbox, now) {
                    Some(b) => Commit::Blocked(b),
                    None => self.commit_memory(m, mailbox, t, count, now).await,
                };
                if let Some(lease) = release {
                    lease.release().await;
                }
                outcome
            }
            Backend::Redis(r) => {
                let id = release.map(|mut lease| {
                    lease.released = true;
                    lease.id
                });
                match r.commit(mailbox, t, count, id).await {
                    CommitOutcome::Counted { usage, alert, at } => {
                        Commit::Counted { usage, alert, at }
                    }
                    CommitOutcome::Blocked(b) => Commit::Blocked(b),
                    CommitOutcome::MessageRate(usage) => Commit::MessageRate { usage },
                    CommitOutcome::RecipientRate(usage) => Commit::RecipientRate { usage },
                    CommitOutcome::Restricted {
                        crossed,
                        entry,
                        usage,
                    } => Commit::Restricted {
                        crossed,
                        entry,
                        usage,
                    },
                    CommitOutcome::Unavailable => Commit::Unavailable,
                }
            }
        }
    }

    async fn commit_memory(
        &self,
        m: &MemoryBackend,
        mailbox: &str,
        t: &Thresholds,
        count: MessageCount,
        now: u64,
    ) -> Commit {
        let (judgement, usage) = m.counters.with(mailbox, now, |c| {
            let before = c.usage(now);
            let j = counters::judge(&before, t, count);
            if let Judgement::Accept { .. } = j {
                c.record(now, count);
                (j, c.usage(now))
            } else {
                (j, before)
            }
        });
        match judgement {
            Judgement::Accept { alert } => Commit::Counted {
                usage,
                alert,
                at: now,
            },
            Judgement::MessageRate => Commit::MessageRate { usage },
            Judgement::RecipientRate => Commit::RecipientRate { usage },
            Judgement::Restrict(crossed) => {
                let entry = BlockedSender::new(
                    mailbox,
                    now,
                    t.action,
                    crossed.threshold.as_str(),
                    u64::from(crossed.count),
                    u64::from(crossed.limit),
                );
                let list = m.blocked.clone();
                let stored = entry.clone();
                // The state file is written off the runtime's threads (fsync).
                let written = match tokio::runtime::Handle::try_current() {
                    Ok(_) => tokio::task::spawn_blocking(move || list.insert(stored))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                    Err(_) => list.insert(stored).map_err(|e| e.to_string()),
                };
                if let Err(e) = written {
                    tracing::error!(
                        mailbox,
                        "restricted sender blocked in memory, but the state file could not be written: {e}"
                    );
                }
                Commit::Restricted {
                    crossed,
                    entry,
                    usage,
                }
            }
        }
    }

    /// Takes back a message [`Limiter::commit`] counted at `at` (the message was not accepted
    /// after all: its Sent Items copy could not be spooled).
    pub async fn uncommit(&self, mailbox: &str, count: MessageCount, at: u64) {
        match &*self.backend {
            Backend::Memory(m) => {
                m.counters
                    .with(mailbox, now_secs(), |c| c.unrecord(at, count));
            }
            Backend::Redis(r) => r.uncommit(mailbox, count, at).await,
        }
    }

    /// A mailbox's sessions, usage and block (`None` when Redis cannot answer).
    pub async fn mailbox_state(&self, mailbox: &str) -> Option<MailboxState> {
        let (sessions, blocked, usage) = match &*self.backend {
            Backend::Memory(m) => {
                let now = now_secs();
                (
                    m.in_use(mailbox),
                    m.blocked.get(mailbox, now),
                    m.counters.usage(mailbox, now),
                )
            }
            Backend::Redis(r) => r.usage(mailbox).await?,
        };
        Some(MailboxState {
            mailbox: mailbox.to_string(),
            sessions,
            usage,
            blocked,
        })
    }

    /// Every restricted sender, the oldest block first (`Get-BlockedSenderAddress`).
    pub async fn blocked_senders(&self) -> Result<Vec<BlockedSender>, LimiterError> {
        match &*self.backend {
            Backend::Memory(m) => Ok(m.blocked.list(now_secs())),
            Backend::Redis(r) => r.blocked_senders().await.map_err(LimiterError),
        }
    }

    /// Releases a restricted sender (`Remove-BlockedSenderAddress`): its entry, or `None`
    /// when it was not blocked.
    pub async fn release_sender(
        &self,
        mailbox: &str,
    ) -> Result<Option<BlockedSender>, LimiterError> {
        match &*self.backend {
            Backend::Memory(m) => {
                let list = m.blocked.clone();
                let mailbox = mailbox.to_string();
                tokio::task::spawn_blocking(move || list.remove(&mailbox))
                    .await
                    .map_err(|e| LimiterError(e.to_string()))?
                    .map_err(|e| LimiterError(e.to_string()))
            }
            Backend::Redis(r) => r.release_sender(mailbox).await.map_err(LimiterError),
        }
    }

    /// Saves what must survive a clean restart (the memory backend's counters, under its
    /// `state_dir`); returns how many mailboxes were saved. Redis keeps its own.
    pub fn save_state(&self) -> Result<usize, LimiterError> {
        match &*self.backend {
            Backend::Memory(m) => m
                .save_counters(now_secs())
                .map_err(|e| LimiterError(e.to_string())),
            Backend::Redis(_) => Ok(0),
        }
    }

    /// Drops idle mailboxes' counters every [`SWEEP_EVERY_SECS`], off the runtime's threads.
    fn sweep(&self, now: u64) {
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now < due
            || self
                .next_sweep
                .compare_exchange(
                    due,
                    now + SWEEP_EVERY_SECS,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let backend = self.backend.clone();
        let run = move || {
            if let Backend::Memory(m) = &*backend {
                m.counters.sweep(now_secs());
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(run);
            }
            Err(_) => run(),
        }
    }

    /// Sessions currently held for `mailbox` (across the cluster with Redis).
    pub async fn in_use(&self, mailbox: &str) -> u32 {
        match &*self.backend {
            Backend::Memory(m) => m.in_use(mailbox),
            Backend::Redis(r) => r.in_use(mailbox).await.unwrap_or(0),
        }
    }

    /// Every mailbox with live sessions (across the cluster with Redis), the busiest first.
    pub async fn sessions(&self) -> Vec<MailboxSessions> {
        let mut v = match &*self.backend {
            Backend::Memory(m) => m.sessions(),
            Backend::Redis(r) => r.sessions().await.unwrap_or_default(),
        };
        v.sort_by(|a, b| {
            b.sessions
                .cmp(&a.sessions)
                .then_with(|| a.mailbox.cmp(&b.mailbox))
        });
        v
    }

    async fn release_slot(&self, mailbox: &str, id: u64) {
        match &*self.backend {
            Backend::Memory(m) => m.release(mailbox),
            Backend::Redis(r) => r.release(mailbox, id).await,
        }
    }

    fn release_slot_on_drop(&self, mailbox: Arc<str>, id: u64) {
        match &*self.backend {
            Backend::Memory(m) => m.release(&mailbox),
            Backend::Redis(r) => r.release_in_background(self.clone(), mailbox, id),
        }
    }
}

/// One held session slot. Released exactly once: explicitly with [`Lease::release`], or when
/// dropped (a connection task that ends by error or panic still gives its slot back).
#[derive(Debug)]
pub struct Lease {
    limiter: Limiter,
    mailbox: Arc<str>,
    /// The backend's id for this slot (the Redis member), 0 for the memory backend.
    id: u64,
    in_use: u32,
    released: bool,
}

impl Lease {
    /// The mailbox this slot belongs to.
    pub fn mailbox(&self) -> &str {
        &self.mailbox
    }

    /// Sessions in use for the mailbox right after this one was granted (itself included).
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Gives the slot back.
    pub async fn release(mut self) {
        if !self.released {
            self.released = true;
            self.limiter.release_slot(&self.mailbox, self.id).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            self.released = true;
            self.limiter
                .release_slot_on_drop(self.mailbox.clone(), self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(a: Acquire) -> Lease {
        match a {
            Acquire::Granted(l) => l,
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn limit_holds_and_release_frees() {
        let l = Limiter::memory();
        let a = granted(l.acquire("a@x", 2).await);
        let b = granted(l.acquire("a@x", 2).await);
        assert_eq!(b.in_use(), 2);
        assert!(matches!(
            l.acquire("a@x", 2).await,
            Acquire::Refused {
                in_use: 2,
                limit: 2
            }
        ));
        // Other mailboxes are independent.
        let _c = granted(l.acquire("b@x", 2).await);
        a.release().await;
        assert_eq!(l.in_use("a@x").await, 1);
        let _d = granted(l.acquire("a@x", 2).await);
        drop(b);
        assert_eq!(l.in_use("a@x").await, 1);
    }

    #[tokio::test]
    async fn empty_mailboxes_leave_no_entry() {
        let l = Limiter::memory();
        let a = granted(l.acquire("a@x", 3).await);
        assert_eq!(l.sessions().await.len(), 1);
        a.release().await;
        assert!(l.sessions().await.is_empty());
        assert_eq!(l.in_use("a@x").await, 0);
    }

    #[tokio::test]
    async fn sessions_busiest_first() {
        let l = Limiter::memory();
        let _a = granted(l.acquire("a@x", 3).await);
        let _b1 = granted(l.acquire("b@x", 3).await);
        let _b2 = granted(l.acquire("b@x", 3).await);
        let s = l.sessions().await;
        assert_eq!(s[0].mailbox, "b@x");
        assert_eq!(s[0].sessions, 2);
        assert_eq!(s[1].sessions, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_acquires_never_exceed_the_limit() {
        let l = Limiter::memory();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move { l.acquire("hot@x", 3).await }));
        }
        let mut leases = Vec::new();
        for t in tasks {
            if let Acquire::Granted(lease) = t.await.unwrap() {
                leases.push(lease);
            }
        }
        assert_eq!(leases.len(), 3);
        assert_eq!(l.in_use("hot@x").await, 3);
        leases.clear();
        assert_eq!(l.in_use("hot@x").await, 0);
    }
}
