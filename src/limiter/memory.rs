//! The in-process limiter backend: session counts per mailbox in a sharded map, where one
//! shard's lock makes check-and-take atomic per key and an empty mailbox leaves no entry; the
//! sending-limit counters ([`CounterTable`]) and the restricted senders ([`BlockedList`]).
//!
//! With a `state_dir` the backend owns that directory (an exclusive `flock` on
//! `<state_dir>/lock`): the blocked list is written to `blocked.json` on every change, and the
//! counters to `counters.json` at a clean shutdown ([`MemoryBackend::save_counters`]) and read
//! back at the next start.
//!
//! A plain map behind a few mutexes rather than a concurrent cache: every request of the
//! front ends takes or gives back a lease, and a map lookup under an uncontended lock is the
//! cheapest way to do that (a moka cache, used before, cost about a tenth of the policy front
//! end's CPU in eviction bookkeeping it never needed).

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// Shards of the map (a power of two): connections on different worker threads rarely wait
/// for one another.
const SHARDS: usize = 16;

/// One shard: sessions in use per mailbox.
type Shard = HashMap<Box<str>, u32>;

/// Sessions, counters and restricted senders of this process.
pub struct MemoryBackend {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
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
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
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
            counters,
            blocked: Arc::new(blocked),
            state_dir: Some(dir.to_path_buf()),
            _lock: Some(lock),
            ..MemoryBackend::new()
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
