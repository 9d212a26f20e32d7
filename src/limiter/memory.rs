//! The in-process limiter backend: a count per mailbox in a sharded map, where one shard's
//! lock makes check-and-take atomic per key and an empty mailbox leaves no entry.
//!
//! A plain map behind a few mutexes rather than a concurrent cache: every request of the
//! front ends takes or gives back a lease, and a map lookup under an uncontended lock is the
//! cheapest way to do that (a moka cache, used before, cost about a tenth of the policy front
//! end's CPU in eviction bookkeeping it never needed).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use super::MailboxSessions;

/// Shards of the map (a power of two): connections on different worker threads rarely wait
/// for one another.
const SHARDS: usize = 16;

/// One shard: sessions in use per mailbox.
type Shard = HashMap<Box<str>, u32>;

/// Counts per mailbox.
pub struct MemoryBackend {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        MemoryBackend {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The shard holding `mailbox`, locked. A poisoned lock (a panic while holding it, which
    /// nothing here can cause) still holds consistent counts: each update is one assignment.
    fn shard(&self, mailbox: &str) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(mailbox) as usize & (SHARDS - 1);
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Ok(count after taking)` or `Err(count in use)` when full.
    pub fn acquire(&self, mailbox: &str, limit: u32) -> Result<u32, u32> {
        let mut shard = self.shard(mailbox);
        match shard.get_mut(mailbox) {
            Some(n) if *n < limit => {
                *n += 1;
                Ok(*n)
            }
            Some(n) => Err(*n),
            None if limit > 0 => {
                shard.insert(mailbox.into(), 1);
                Ok(1)
            }
            None => Err(0),
        }
    }

    pub fn release(&self, mailbox: &str) {
        let mut shard = self.shard(mailbox);
        match shard.get_mut(mailbox) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                shard.remove(mailbox);
            }
            None => {
                drop(shard);
                tracing::error!(mailbox, "lease released for a mailbox with no sessions");
            }
        }
    }

    pub fn in_use(&self, mailbox: &str) -> u32 {
        self.shard(mailbox).get(mailbox).copied().unwrap_or(0)
    }

    pub fn sessions(&self) -> Vec<MailboxSessions> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.extend(shard.iter().map(|(k, v)| MailboxSessions {
                mailbox: k.to_string(),
                sessions: *v,
            }));
        }
        all
    }
}
