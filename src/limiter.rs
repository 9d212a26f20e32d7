//! Per-mailbox session leases: "at most N concurrent sessions for this mailbox". A front end
//! asks [`Limiter::acquire`] and gets a [`Lease`] (a slot, given back exactly once: by
//! [`Lease::release`] or, as a safety net, on drop) or a refusal. The limiter never knows which
//! protocol asked. The in-memory backend counts with moka's atomic per-key compute; empty
//! mailboxes leave no entry behind.

use std::fmt;
use std::sync::Arc;

use moka::ops::compute::Op;
use moka::sync::Cache;

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
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.backend {
            Backend::Memory(_) => f.write_str("Limiter(memory)"),
        }
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

    /// The backend's name, for `status`.
    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Memory(_) => "memory",
        }
    }

    /// Takes a slot for `mailbox` when fewer than `limit` are in use.
    pub async fn acquire(&self, mailbox: &str, limit: u32) -> Acquire {
        match &*self.backend {
            Backend::Memory(m) => match m.acquire(mailbox, limit) {
                Ok(in_use) => Acquire::Granted(Lease {
                    limiter: self.clone(),
                    mailbox: Arc::from(mailbox),
                    in_use,
                    released: false,
                }),
                Err(in_use) => Acquire::Refused { in_use, limit },
            },
        }
    }

    /// Sessions currently held for `mailbox`.
    pub async fn in_use(&self, mailbox: &str) -> u32 {
        match &*self.backend {
            Backend::Memory(m) => m.in_use(mailbox),
        }
    }

    /// Every mailbox with live sessions, the busiest first.
    pub async fn sessions(&self) -> Vec<MailboxSessions> {
        let mut v = match &*self.backend {
            Backend::Memory(m) => m.sessions(),
        };
        v.sort_by(|a, b| {
            b.sessions
                .cmp(&a.sessions)
                .then_with(|| a.mailbox.cmp(&b.mailbox))
        });
        v
    }

    fn release_slot(&self, mailbox: &str) {
        match &*self.backend {
            Backend::Memory(m) => m.release(mailbox),
        }
    }
}

/// One held session slot. Released exactly once: explicitly with [`Lease::release`], or when
/// dropped (a connection task that ends by error or panic still gives its slot back).
#[derive(Debug)]
pub struct Lease {
    limiter: Limiter,
    mailbox: Arc<str>,
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
        self.release_now();
    }

    fn release_now(&mut self) {
        if !self.released {
            self.released = true;
            self.limiter.release_slot(&self.mailbox);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release_now();
    }
}

/// Counts per mailbox in a moka cache; `and_compute_with` makes check-and-take atomic per key.
struct MemoryBackend {
    counts: Cache<Arc<str>, u32>,
}

impl MemoryBackend {
    fn new() -> Self {
        MemoryBackend {
            counts: Cache::builder().build(),
        }
    }

    /// `Ok(count after taking)` or `Err(count in use)` when full.
    fn acquire(&self, mailbox: &str, limit: u32) -> Result<u32, u32> {
        let mut outcome = Err(0);
        self.counts
            .entry(Arc::from(mailbox))
            .and_compute_with(|entry| {
                let current = entry.map_or(0, |e| e.into_value());
                if current < limit {
                    outcome = Ok(current + 1);
                    Op::Put(current + 1)
                } else {
                    outcome = Err(current);
                    Op::Nop
                }
            });
        outcome
    }

    fn release(&self, mailbox: &str) {
        self.counts
            .entry(Arc::from(mailbox))
            .and_compute_with(|entry| match entry.map(|e| e.into_value()) {
                Some(n) if n > 1 => Op::Put(n - 1),
                Some(_) => Op::Remove,
                None => {
                    tracing::error!(mailbox, "lease released for a mailbox with no sessions");
                    Op::Nop
                }
            });
    }

    fn in_use(&self, mailbox: &str) -> u32 {
        self.counts.get(mailbox).unwrap_or(0)
    }

    fn sessions(&self) -> Vec<MailboxSessions> {
        self.counts
            .iter()
            .map(|(k, v)| MailboxSessions {
                mailbox: k.to_string(),
                sessions: v,
            })
            .collect()
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
