//! The in-process limiter backend: session counts per mailbox in a moka cache, where
//! `and_compute_with` makes check-and-take atomic per key and an empty mailbox leaves no entry;
//! the sending-limit counters ([`CounterTable`]) and the restricted senders ([`BlockedList`]).
//!
//! With a `state_dir` the backend owns that directory (an exclusive `flock` on
//! `<state_dir>/lock`): the blocked list is written to `blocked.json` on every change, and the
//! counters to `counters.json` at a clean shutdown ([`MemoryBackend::save_counters`]) and read
//! back at the next start.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moka::ops::compute::Op;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use super::blocked::{read_json, write_json, BlockedList, StateError};
use super::counters::{CounterTable, MailboxCounters};
use super::MailboxSessions;

/// The counters as `counters.json` holds them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CountersFile {
    /// When they were saved (Unix seconds).
    saved_at: u64,
    mailboxes: Vec<(String, MailboxCounters)>,
}

/// Sessions, counters and restricted senders of this process.
pub struct MemoryBackend {
    counts: Cache<Arc<str>, u32>,
    pub(super) counters: CounterTable,
    pub(super) blocked: Arc<BlockedList>,
    state_dir: Option<PathBuf>,
    /// Held open for the `flock` on `<state_dir>/lock`.
    _lock: Option<File>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    /// Everything in memory only: lost at a restart.
    pub fn new() -> Self {
        MemoryBackend {
            counts: Cache::builder().build(),
            counters: CounterTable::default(),
            blocked: Arc::new(BlockedList::in_memory()),
            state_dir: None,
            _lock: None,
        }
    }

    /// State kept in `dir` (created if missing): locks it, reads the blocked list and the
    /// counters saved at the last clean shutdown (`now` drops what has expired since).
    pub fn with_state(dir: &Path, now: u64) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(crate::fsutil::at("create directory", dir))?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(crate::fsutil::at("open", &lock_path))?;
        match crate::fsutil::try_lock_exclusive(&lock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(StateError::Invalid {
                    path: lock_path,
                    message: "locked by another submitgate: each daemon needs its own \
                              limiter.state_dir (several MTAs share limits through redis)"
                        .into(),
                })
            }
            Err(e) => return Err(crate::fsutil::FsError::new("lock", lock_path, e).into()),
        }
        let blocked = BlockedList::open(dir.join("blocked.json"), now)?;
        let counters = CounterTable::default();
        let saved: CountersFile = read_json(&dir.join("counters.json"))?;
        counters.import(saved.mailboxes, now);
        Ok(MemoryBackend {
            counts: Cache::builder().build(),
            counters,
            blocked: Arc::new(blocked),
            state_dir: Some(dir.to_path_buf()),
            _lock: Some(lock),
        })
    }

    /// Writes the counters to `<state_dir>/counters.json` (at shutdown); nothing without a
    /// state directory. Returns how many mailboxes were saved.
    pub fn save_counters(&self, now: u64) -> Result<usize, StateError> {
        let Some(dir) = &self.state_dir else {
            return Ok(0);
        };
        let mailboxes = self.counters.export(now);
        let n = mailboxes.len();
        write_json(
            &dir.join("counters.json"),
            &CountersFile {
                saved_at: now,
                mailboxes,
            },
        )?;
        Ok(n)
    }

    /// The state directory, when there is one.
    pub fn state_dir(&self) -> Option<&Path> {
        self.state_dir.as_deref()
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
