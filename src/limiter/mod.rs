//! Per-mailbox session leases: "at most N concurrent sessions for this mailbox". A front end
//! asks [`Limiter::acquire`] and gets a [`Lease`] (a slot, given back exactly once: by
//! [`Lease::release`] or, as a safety net, on drop) or a refusal. The limiter never knows which
//! protocol asked. Two backends behind the same API: [`memory`] (this process: a sharded map,
//! check-and-take under one shard's lock) and [`redis`] (shared by several MTAs: a sorted set
//! per mailbox, atomic check-and-take in one Lua script, leases that expire by themselves when
//! a node dies).

pub mod memory;
pub mod redis;

use std::fmt;
use std::sync::Arc;

use self::memory::MemoryBackend;
use self::redis::RedisBackend;

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
        Limiter {
            backend: Arc::new(Backend::Memory(MemoryBackend::new())),
        }
    }

    /// The shared backend (see [`redis`]). Needs a running tokio runtime: it starts the task
    /// that keeps live leases from expiring.
    pub fn redis(backend: RedisBackend) -> Self {
        let limiter = Limiter {
            backend: Arc::new(Backend::Redis(Box::new(backend))),
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
