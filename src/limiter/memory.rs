//! The in-process limiter backend: a count per mailbox in a moka cache, where
//! `and_compute_with` makes check-and-take atomic per key and an empty mailbox leaves no entry.

use std::sync::Arc;

use moka::ops::compute::Op;
use moka::sync::Cache;

use super::MailboxSessions;

/// Counts per mailbox.
pub struct MemoryBackend {
    counts: Cache<Arc<str>, u32>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        MemoryBackend {
            counts: Cache::builder().build(),
        }
    }

    /// `Ok(count after taking)` or `Err(count in use)` when full.
    pub fn acquire(&self, mailbox: &str, limit: u32) -> Result<u32, u32> {
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

    pub fn release(&self, mailbox: &str) {
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

    pub fn in_use(&self, mailbox: &str) -> u32 {
        self.counts.get(mailbox).unwrap_or(0)
    }

    pub fn sessions(&self) -> Vec<MailboxSessions> {
        self.counts
            .iter()
            .map(|(k, v)| MailboxSessions {
                mailbox: k.to_string(),
                sessions: v,
            })
            .collect()
    }
}
