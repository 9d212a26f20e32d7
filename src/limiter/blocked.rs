//! Restricted senders (Exchange's "Restricted entities"): mailboxes blocked after reaching an
//! outbound spam threshold, until the next midnight UTC (`block_user_for_today`) or until an
//! administrator releases them (`block_user`). [`BlockedSender`] is one entry as both backends,
//! the control socket and the CLI see it; [`BlockedList`] is the memory backend's list, written
//! to `<state_dir>/blocked.json` (temp file, fsync, rename, directory fsync) on every change so
//! that a restart, even a crash, keeps every block.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, TempFile};
use crate::policy::SpamAction;

/// Seconds in a day: a `block_user_for_today` ends at the next multiple of it (midnight UTC).
pub const DAY_SECS: u64 = 86_400;

/// Largest state file read back (a million blocked senders take about 200 MB: far beyond any
/// real list, small enough not to be a way to exhaust memory).
const MAX_STATE_BYTES: u64 = 256 * 1024 * 1024;

/// One restricted sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedSender {
    /// The normalized mailbox address.
    pub mailbox: String,
    /// When it was blocked (Unix seconds).
    pub since: u64,
    /// When the block ends by itself (Unix seconds, a midnight UTC); `0` = until released.
    pub until: u64,
    /// The outbound spam threshold it reached (its policy key).
    pub threshold: String,
    /// The count that reached it, with the message that did.
    pub count: u64,
    /// The threshold's value.
    pub limit: u64,
    /// The policy's action (`block_user_for_today`, `block_user`).
    pub action: SpamAction,
}

impl BlockedSender {
    /// A block that starts at `now` for `action`: until the next midnight UTC for
    /// `block_user_for_today`, until released otherwise.
    pub fn new(
        mailbox: &str,
        now: u64,
        action: SpamAction,
        threshold: &str,
        count: u64,
        limit: u64,
    ) -> BlockedSender {
        BlockedSender {
            mailbox: mailbox.to_string(),
            since: now,
            until: match action {
                SpamAction::BlockUserForToday => next_midnight(now),
                _ => 0,
            },
            threshold: threshold.to_string(),
            count,
            limit,
            action,
        }
    }

    /// Whether the block still holds at `now`.
    pub fn active(&self, now: u64) -> bool {
        self.until == 0 || now < self.until
    }
}

/// The first midnight UTC after `now` (Unix seconds).
pub fn next_midnight(now: u64) -> u64 {
    (now / DAY_SECS + 1) * DAY_SECS
}

/// Why the blocked list could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The memory backend's blocked senders, durable in `file` when one is given.
#[derive(Debug, Default)]
pub struct BlockedList {
    entries: Mutex<HashMap<String, BlockedSender>>,
    /// How many entries there are, read without the lock: a submission of a mailbox when the
    /// list is empty (nearly always) costs one atomic load.
    count: AtomicUsize,
    file: Option<PathBuf>,
    /// Serializes the writes of the file (the entries' lock is not held while writing).
    writing: Mutex<()>,
}

impl BlockedList {
    /// An empty list kept in memory only.
    pub fn in_memory() -> BlockedList {
        BlockedList::default()
    }

    /// The list stored in `file`: read back now (entries whose block ended by `now` are
    /// dropped), written on every change.
    pub fn open(file: PathBuf, now: u64) -> Result<BlockedList, StateError> {
        let entries = read_state(&file)?
            .into_iter()
            .filter(|b| b.active(now))
            .map(|b| (b.mailbox.clone(), b))
            .collect::<HashMap<_, _>>();
        Ok(BlockedList {
            count: AtomicUsize::new(entries.len()),
            entries: Mutex::new(entries),
            file: Some(file),
            writing: Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BlockedSender>> {
        match self.entries.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The mailbox's block, if one holds at `now` (one that ended is dropped).
    pub fn get(&self, mailbox: &str, now: u64) -> Option<BlockedSender> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut entries = self.lock();
        match entries.get(mailbox) {
            Some(b) if b.active(now) => Some(b.clone()),
            Some(_) => {
                entries.remove(mailbox);
                self.count.store(entries.len(), Ordering::Release);
                None
            }
            None => None,
        }
    }

    /// Blocks a mailbox (replacing an older entry) and writes the list.
    pub fn insert(&self, entry: BlockedSender) -> Result<(), StateError> {
        {
            let mut entries = self.lock();
            entries.insert(entry.mailbox.clone(), entry);
            self.count.store(entries.len(), Ordering::Release);
        }
        self.persist()
    }

    /// Releases a mailbox; its entry if it was blocked (even if its block had just ended).
    pub fn remove(&self, mailbox: &str) -> Result<Option<BlockedSender>, StateError> {
        let removed = {
            let mut entries = self.lock();
            let removed = entries.remove(mailbox);
            self.count.store(entries.len(), Ordering::Release);
            removed
        };
        if removed.is_some() {
            self.persist()?;
        }
        Ok(removed)
    }

    /// Every block that holds at `now`, oldest first.
    pub fn list(&self, now: u64) -> Vec<BlockedSender> {
        let mut v: Vec<BlockedSender> = self
            .lock()
            .values()
            .filter(|b| b.active(now))
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            a.since
                .cmp(&b.since)
                .then_with(|| a.mailbox.cmp(&b.mailbox))
        });
        v
    }

    /// Writes the whole list to its file (no file: nothing to do).
    fn persist(&self) -> Result<(), StateError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let _writing = match self.writing.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Taken under the write lock, so the file always ends with the latest list.
        let mut entries: Vec<BlockedSender> = self.lock().values().cloned().collect();
        entries.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
        write_json(file, &entries)
    }
}

/// Writes `value` as JSON to `path` durably: temp file, fsync, rename, directory fsync.
pub fn write_json<T: Serialize>(path: &std::path::Path, value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = TempFile::new(PathBuf::from(temp_name), 0o600).overwriting();
    fsutil::replace_file(temp, path, fsutil::Sync::Data, |t: &mut TempFile| {
        t.write_all(&bytes).map_err(StateError::from)
    })
}

/// Reads a JSON state file; a missing file is the empty default.
pub fn read_json<T: serde::de::DeserializeOwned + Default>(
    path: &std::path::Path,
) -> Result<T, StateError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
        Err(e) => return Err(fsutil::FsError::new("open", path, e).into()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(fsutil::at("read", path))?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(StateError::Invalid {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_STATE_BYTES} bytes"),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| StateError::Invalid {
        path: path.to_path_buf(),
        message: format!("not a submitgate state file: {e}"),
    })
}

fn read_state(path: &std::path::Path) -> Result<Vec<BlockedSender>, StateError> {
    read_json(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: u64 = 1_800_000_000 - 1_800_000_000 % DAY_SECS + 43_200;

    #[test]
    fn block_for_today_ends_at_midnight_utc_and_block_user_never() {
        let today = BlockedSender::new("a@x", NOON, SpamAction::BlockUserForToday, "t", 501, 500);
        assert_eq!(today.until, NOON + 43_200);
        assert_eq!(today.until % DAY_SECS, 0);
        assert!(today.active(today.until - 1));
        assert!(!today.active(today.until));
        let forever = BlockedSender::new("a@x", NOON, SpamAction::BlockUser, "t", 501, 500);
        assert_eq!(forever.until, 0);
        assert!(forever.active(u64::MAX));
        assert_eq!(
            next_midnight(NOON - 43_200),
            NOON + 43_200,
            "at midnight: the next one"
        );
    }

    #[test]
    fn the_list_survives_a_reopen_and_drops_ended_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blocked.json");
        let list = BlockedList::open(file.clone(), NOON).unwrap();
        assert!(list.get("a@x", NOON).is_none());
        list.insert(BlockedSender::new(
            "a@x",
            NOON,
            SpamAction::BlockUserForToday,
            "recipient_limit_per_day",
            1001,
            1000,
        ))
        .unwrap();
        list.insert(BlockedSender::new(
            "b@x",
            NOON + 1,
            SpamAction::BlockUser,
            "recipient_limit_per_day",
            1001,
            1000,
        ))
        .unwrap();
        assert_eq!(list.list(NOON + 2).len(), 2);
        // Read back as a restart would, still the same day, then the next day.
        let again = BlockedList::open(file.clone(), NOON + 3).unwrap();
        assert_eq!(again.list(NOON + 3), list.list(NOON + 3));
        let tomorrow = BlockedList::open(file.clone(), NOON + DAY_SECS).unwrap();
        let left = tomorrow.list(NOON + DAY_SECS);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].mailbox, "b@x");
        // Released: gone from the file too.
        assert!(again.remove("b@x").unwrap().is_some());
        assert!(again.remove("b@x").unwrap().is_none());
        let after = BlockedList::open(file, NOON + 4).unwrap();
        assert_eq!(after.list(NOON + 4).len(), 1);
        assert!(after.get("b@x", NOON + 4).is_none());
        assert!(after.get("a@x", NOON + 4).is_some());
    }

    #[test]
    fn a_damaged_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blocked.json");
        std::fs::write(&file, "{ not json").unwrap();
        let e = BlockedList::open(file.clone(), NOON)
            .unwrap_err()
            .to_string();
        assert!(e.contains("blocked.json"), "{e}");
    }
}
