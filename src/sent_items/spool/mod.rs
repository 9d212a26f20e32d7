//! The durable queue between the milter, which captures each submitted message, and the
//! delivery workers, which store it into the sender's Sent Items. An entry is either committed
//! whole (message and metadata) or absent, whatever the moment of a crash.
//!
//! ```text
//! <spool>/lock                   flock(2)ed by the owner (the daemon), see Spool::open
//! <spool>/tmp/<pid>-<seq>.tmp    a large message being written; removed at open
//! <spool>/queue/<segment>.seg    segments: append-only logs of records (entries, their
//!                                delivery states, their done marks); removed when every
//!                                entry in them is done
//! <spool>/failed/<id>.seg        an entry given up on, with its last state (`last_error`);
//!                                `submitgate spool retry` copies it back into the queue
//! ```
//!
//! The design — records, the group commit (one fdatasync per batch), what a crash at each
//! step leaves, recovery at open, `failed/`, ownership — is written down in
//! `docs/architecture.md`, section "The Sent Items spool". Here: [`Spool`] (open, lock,
//! recovery, reads, fail and retry); `entry`, the ids and metadata; `format`, the records;
//! `segment`, reading a segment back and the owner's index of the queue; `commit`, the
//! committer; `writer`, the [`SpoolWriter`]; `legacy`, converting the one-file-per-entry
//! layout of earlier versions.
//!
//! [`Spool::open`] and [`Spool::attach`] block (call them at start-up); every other file
//! operation is an `async` method that runs on tokio's blocking pool, or in place on a thread
//! that may block ([`fsutil::run_blocking`]).

mod commit;
mod entry;
mod error;
mod format;
mod legacy;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::fsutil::{self, TempFile};
use commit::{CommitQueue, Committer, Op, Pending};
use error::{corrupt, io_err};
use format::{small_record, Header, Kind};
use segment::{scan, Index, Scan, SegmentId, Slot};

pub use commit::SEGMENT_BYTES;
pub use entry::{DeliveryState, EntryId, EntryInfo, EntryMeta, SpoolCounts};
pub use error::SpoolError;
pub use format::{Message, HEADER_LEN, MAX_META_BYTES, RECORD_MAGIC};
pub use writer::{SpoolWriter, WRITE_BUFFER};

const TMP_DIR: &str = "tmp";
const QUEUE_DIR: &str = "queue";
const FAILED_DIR: &str = "failed";
const LOCK_FILE: &str = "lock";
const SEGMENT_EXT: &str = ".seg";
const FILE_MODE: u32 = 0o600;

/// Runs file work on tokio's blocking pool, or in place on a thread that may block (the
/// delivery workers of a Maildir store, see [`fsutil::run_blocking`]).
async fn blocking<T, F>(f: F) -> Result<T, SpoolError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fsutil::run_blocking(f)
        .await
        .map_err(|e| SpoolError::Task(e.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    Queue,
    Failed,
}

/// A spool directory with an open handle, kept for cheap directory fsyncs.
#[derive(Debug)]
struct Dir {
    path: PathBuf,
    handle: File,
}

impl Dir {
    fn open(path: PathBuf) -> Result<Dir, SpoolError> {
        let handle = File::open(&path).map_err(io_err("open directory", &path))?;
        Ok(Dir { path, handle })
    }

    fn sync(&self) -> Result<(), SpoolError> {
        self.handle
            .sync_all()
            .map_err(io_err("fsync directory", &self.path))
    }
}

/// What [`Spool::load`] read of a pending entry.
#[derive(Debug)]
pub struct Loaded {
    /// Its latest delivery state (the default when none was written);
    /// [`SpoolError::Corrupt`] if that record is damaged.
    pub state: Result<DeliveryState, SpoolError>,
    /// Its metadata and message; [`SpoolError::Corrupt`] if its record is damaged.
    pub entry: Result<(EntryMeta, Message), SpoolError>,
    /// The entry was read back from the queue's files (at open, or put back by `submitgate
    /// spool retry`), not committed by this process: a crash may have come after its copy was
    /// stored and before its done mark was durable, so a store should look for the copy
    /// before storing it again.
    pub recovered: bool,
}

/// At most this many committed ids wait for [`Spool::take_committed`].
pub const FRESH_MAX: usize = 65_536;

/// Ids committed since the dispatcher last took them (see [`Spool::take_committed`]).
#[derive(Debug, Default)]
struct Fresh {
    watching: bool,
    ids: Vec<EntryId>,
    overflowed: bool,
}

/// The durable queue. Cheap to clone; clones share the directory, the index and the
/// committer.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    tmp: PathBuf,
    queue: Dir,
    failed: Dir,
    pid: u32,
    seq: AtomicU64,
    /// True for the owner ([`Spool::open`]): only it writes to `queue/`.
    owner: bool,
    /// Ops waiting for their batch (see [`commit`]).
    commits: Mutex<CommitQueue>,
    /// The owner's view of the queue (unused beside it, where each call scans afresh).
    index: Mutex<Index>,
    /// Held while segments found in `queue/` are adopted into the index, so that two
    /// listings never adopt (and repair) the same one.
    adopting: Mutex<()>,
    /// Held for the spool's lifetime by the owner; the lock goes with the descriptor.
    _lock: Option<File>,
    /// Signalled after each batch with new entries, for the delivery workers
    /// ([`Spool::committed`]).
    committed: tokio::sync::Notify,
    /// The new entries' ids, for the delivery workers ([`Spool::take_committed`]).
    fresh: Mutex<Fresh>,
    #[cfg(test)]
    hooks: tests::Hooks,
}

impl Spool {
    /// Opens `dir` as its owner: creates the layout (fsyncing each new directory and its
    /// parent), locks it against a second owner, removes temp files left by a crash, converts
    /// entries of the earlier one-file-per-entry layout, reads every segment back (checking
    /// each record's checksum; a tail cut short by a crash is cut off) and removes segments
    /// with nothing pending. Blocking; call at start-up.
    pub fn open(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        let root = dir.as_ref().to_path_buf();
        ensure_dir(&root)?;
        for sub in [TMP_DIR, QUEUE_DIR, FAILED_DIR] {
            ensure_dir(&root.join(sub))?;
        }
        let lock = lock_spool(&root.join(LOCK_FILE))?;
        let inner = Inner::new(root, Some(lock))?;
        inner.recover()?;
        Ok(Spool {
            inner: Arc::new(inner),
        })
    }

    /// Opens an existing spool beside its owner (for `submitgate spool list/retry` while the
    /// daemon runs): no lock, no clean-up, nothing created; it reads, and moves entries from
    /// `failed/` back, but never writes to the queue's segments. Blocking.
    pub fn attach(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        let root = dir.as_ref().to_path_buf();
        for sub in [TMP_DIR, QUEUE_DIR, FAILED_DIR] {
            let path = root.join(sub);
            let meta = fs::metadata(&path).map_err(io_err("open spool directory", &path))?;
            if !meta.is_dir() {
                return Err(not_a_directory(&path));
            }
        }
        Ok(Spool {
            inner: Arc::new(Inner::new(root, None)?),
        })
    }

    /// The spool's root directory.
    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// Completes after an entry was committed through this spool (or a clone of it) since the
    /// last such wake-up: the delivery workers wait on it. Commits coalesce into one wake-up;
    /// entries put back by `submitgate spool retry` are not seen (the workers also rescan
    /// periodically).
    pub async fn committed(&self) {
        self.inner.committed.notified().await;
    }

    /// From now on, keeps the ids of the entries committed through this spool for
    /// [`Spool::take_committed`] (the delivery workers' dispatcher calls it once, so that a
    /// commit costs it no listing of the whole queue).
    pub fn watch_commits(&self) {
        self.inner.lock_fresh().watching = true;
    }

    /// The entries committed since the last call, in commit order; `None` if more than
    /// [`FRESH_MAX`] piled up meanwhile (they were dropped: list the queue instead).
    pub fn take_committed(&self) -> Option<Vec<EntryId>> {
        let mut fresh = self.inner.lock_fresh();
        let ids = std::mem::take(&mut fresh.ids);
        if std::mem::take(&mut fresh.overflowed) {
            return None;
        }
        Some(ids)
    }

    /// Starts capturing one message. No I/O happens until the buffer fills or the commit.
    pub fn begin(&self) -> SpoolWriter {
        SpoolWriter::new(self.clone(), self.inner.temp_path())
    }

    /// Committed entries waiting for delivery, oldest first. The owner also adopts segments
    /// that appeared in `queue/` (entries put back by `submitgate spool retry`).
    pub async fn pending(&self) -> Result<Vec<EntryId>, SpoolError> {
        self.run(|inner| Ok(inner.queue_slots()?.into_iter().map(|(id, _)| id).collect()))
            .await
    }

    /// What a delivery attempt reads of a pending entry, in one go (one open of its segment,
    /// one trip to the blocking pool): its delivery state, metadata and message. Gone (done
    /// meanwhile, or its segment removed from outside) is [`SpoolError::UnknownEntry`].
    pub async fn load(&self, id: &EntryId) -> Result<Loaded, SpoolError> {
        let id = *id;
        self.run(move |inner| {
            let slot = inner.find(&id)?;
            let (path, file) = inner.open_segment(&slot.segment, &id)?;
            let state = read_state(&file, &path, slot.state);
            let entry = read_meta(&file, &path, &id, &slot).and_then(|meta| {
                let message = Message::at(path, file, slot.offset + HEADER_LEN, slot.data_len)?;
                Ok((meta, message))
            });
            Ok(Loaded {
                state,
                entry,
                recovered: slot.recovered,
            })
        })
        .await
    }

    /// Metadata of a pending entry; [`SpoolError::Corrupt`] if its record is damaged.
    pub async fn read_meta(&self, id: &EntryId) -> Result<EntryMeta, SpoolError> {
        let id = *id;
        self.run(move |inner| {
            let slot = inner.find(&id)?;
            let (path, file) = inner.open_segment(&slot.segment, &id)?;
            read_meta(&file, &path, &id, &slot)
        })
        .await
    }

    /// The message bytes of a pending entry, its record checked first.
    pub async fn open_message(&self, id: &EntryId) -> Result<Message, SpoolError> {
        let id = *id;
        self.run(move |inner| {
            let slot = inner.find(&id)?;
            let (path, file) = inner.open_segment(&slot.segment, &id)?;
            check_entry(&file, &path, &id, slot.offset, slot.data_len, slot.json_len)?;
            Message::at(path, file, slot.offset + HEADER_LEN, slot.data_len)
        })
        .await
    }

    /// Delivery state of a pending entry (the default when none was written).
    pub async fn read_state(&self, id: &EntryId) -> Result<DeliveryState, SpoolError> {
        let id = *id;
        self.run(move |inner| {
            let slot = inner.find(&id)?;
            let (path, file) = inner.open_segment(&slot.segment, &id)?;
            read_state(&file, &path, slot.state)
        })
        .await
    }

    /// Records a new delivery state of a pending entry, durably (a state record, group
    /// committed). Owner only.
    pub async fn write_state(&self, id: &EntryId, state: &DeliveryState) -> Result<(), SpoolError> {
        self.inner.require_owner()?;
        let json = serde_json::to_vec(state).map_err(|e| SpoolError::Encode {
            path: self.inner.queue.path.clone(),
            reason: e.to_string(),
        })?;
        self.submit(Op::State { id: *id, json }).await.map(drop)
    }

    /// Marks a delivered entry done; its segment goes once nothing in it is pending. The mark
    /// is written at once but made durable only with the next fdatasync of its segment (a
    /// batch of done marks alone is not synced): a power loss before that delivers the copy
    /// again, which the stores recognise (docs/architecture.md, "Done marks"). Owner only.
    pub async fn complete(&self, id: &EntryId) -> Result<(), SpoolError> {
        self.inner.require_owner()?;
        self.submit(Op::Done { id: *id }).await.map(drop)
    }

    /// Gives up on a pending entry: copies it to `failed/` with `reason` as its `last_error`,
    /// then marks it done in the queue. Owner only.
    pub async fn fail(&self, id: &EntryId, reason: impl Into<String>) -> Result<(), SpoolError> {
        self.inner.require_owner()?;
        let (id, reason) = (*id, reason.into());
        self.run(move |inner| inner.copy_to_failed(&id, reason))
            .await?;
        #[cfg(test)]
        self.inner.hooks.crash_point("copied to failed/");
        if let Err(e) = self.submit(Op::Done { id }).await {
            // Still queued: the failed copy goes again (had it stayed, `open` would remove it).
            let copy = self.inner.failed_path(&id);
            let _ = fs::remove_file(copy);
            return Err(e);
        }
        Ok(())
    }

    /// Moves a failed entry back to the queue with a fresh delivery state.
    pub async fn retry(&self, id: &EntryId) -> Result<(), SpoolError> {
        let id = *id;
        self.run(move |inner| inner.retry(&id)).await
    }

    /// Moves every failed entry back; returns the ids moved.
    pub async fn retry_all(&self) -> Result<Vec<EntryId>, SpoolError> {
        self.run(|inner| {
            let mut moved = Vec::new();
            for id in inner.failed_ids()? {
                match inner.retry(&id) {
                    Ok(()) => moved.push(id),
                    // Moved by someone else meanwhile.
                    Err(SpoolError::UnknownEntry { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(moved)
        })
        .await
    }

    /// Pending (or, with `failed`, failed) entries with what an operator wants to see,
    /// oldest first. Unreadable entries are listed with their `problem`.
    pub async fn list(&self, failed: bool) -> Result<Vec<EntryInfo>, SpoolError> {
        self.run(move |inner| {
            if failed {
                inner.list_failed()
            } else {
                inner.list_queue()
            }
        })
        .await
    }

    /// Spool depth.
    pub async fn counts(&self) -> Result<SpoolCounts, SpoolError> {
        self.run(|inner| {
            let pending = inner.queue_slots()?;
            let failed = inner.failed_ids()?;
            let now = SystemTime::now();
            Ok(SpoolCounts {
                pending: pending.len(),
                failed: failed.len(),
                oldest_pending: pending
                    .first()
                    .map(|(id, _)| now.duration_since(id.committed_at()).unwrap_or_default()),
            })
        })
        .await
    }

    async fn run<T, F>(&self, f: F) -> Result<T, SpoolError>
    where
        F: FnOnce(&Inner) -> Result<T, SpoolError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || f(&inner)).await?
    }

    /// Queues `op` for the committer (becoming it, on the blocking pool, if none is at work;
    /// in place on a thread that may block, as the Maildir store's delivery threads, which
    /// saves their done marks a trip to another thread) and waits for its batch.
    async fn submit(&self, op: Op) -> Result<EntryId, SpoolError> {
        let (answer, answered) = oneshot::channel();
        if self.inner.enqueue(Pending { op, answer }) {
            let inner = Arc::clone(&self.inner);
            if fsutil::may_block() {
                // A committer that unwinds (a bug) fails its batch (its `Drop`); this caller
                // then hears of it through its answer, as from the blocking pool.
                let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Committer::drain(inner)
                }));
                if drained.is_err() {
                    tracing::error!("spool committer panicked on a delivery thread");
                }
            } else {
                drop(tokio::task::spawn_blocking(move || Committer::drain(inner)));
            }
        }
        answered
            .await
            .map_err(|_| SpoolError::Task("the committer ended without an answer".to_string()))?
    }
}

impl Inner {
    fn new(root: PathBuf, lock: Option<File>) -> Result<Inner, SpoolError> {
        Ok(Inner {
            tmp: root.join(TMP_DIR),
            queue: Dir::open(root.join(QUEUE_DIR))?,
            failed: Dir::open(root.join(FAILED_DIR))?,
            root,
            pid: std::process::id(),
            seq: AtomicU64::new(0),
            owner: lock.is_some(),
            commits: Mutex::new(CommitQueue::default()),
            index: Mutex::new(Index::default()),
            adopting: Mutex::new(()),
            _lock: lock,
            committed: tokio::sync::Notify::new(),
            fresh: Mutex::new(Fresh::default()),
            #[cfg(test)]
            hooks: tests::Hooks::default(),
        })
    }

    fn lock_fresh(&self) -> MutexGuard<'_, Fresh> {
        // Plain pushes and takes: consistent even if a holder panicked.
        self.fresh.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records entries a batch committed, for [`Spool::take_committed`].
    fn note_committed(&self, ids: impl Iterator<Item = EntryId>) {
        let mut fresh = self.lock_fresh();
        if !fresh.watching || fresh.overflowed {
            return;
        }
        fresh.ids.extend(ids);
        if fresh.ids.len() > FRESH_MAX {
            fresh.ids = Vec::new();
            fresh.overflowed = true;
        }
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        // Nothing that can panic runs under this lock; a poisoned index is still consistent.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn require_owner(&self) -> Result<(), SpoolError> {
        if self.owner {
            Ok(())
        } else {
            Err(SpoolError::NotOwner {
                path: self.root.clone(),
            })
        }
    }

    fn segment_path(&self, segment: &SegmentId) -> PathBuf {
        self.queue.path.join(format!("{segment}{SEGMENT_EXT}"))
    }

    fn failed_path(&self, id: &EntryId) -> PathBuf {
        self.failed.path.join(format!("{id}{SEGMENT_EXT}"))
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn temp_path(&self) -> PathBuf {
        self.tmp
            .join(format!("{}-{}.tmp", self.pid, self.next_seq()))
    }

    /// A fresh id, for an entry or a segment: commit time, pid, counter.
    fn next_id(&self) -> EntryId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        EntryId {
            micros,
            pid: self.pid,
            seq: self.next_seq(),
        }
    }

    fn rename_fault(&self) -> io::Result<()> {
        #[cfg(test)]
        self.hooks.rename_fault()?;
        Ok(())
    }

    fn unknown(&self, area: Area, id: &EntryId) -> SpoolError {
        SpoolError::UnknownEntry {
            id: *id,
            dir: match area {
                Area::Queue => self.queue.path.clone(),
                Area::Failed => self.failed.path.clone(),
            },
        }
    }

    /// Opens the segment holding entry `id`; gone (its entry done meanwhile) is
    /// [`SpoolError::UnknownEntry`].
    fn open_segment(
        &self,
        segment: &SegmentId,
        id: &EntryId,
    ) -> Result<(PathBuf, File), SpoolError> {
        let path = self.segment_path(segment);
        match File::open(&path) {
            Ok(file) => Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.owner {
                    self.forget_if_missing(segment, &path);
                }
                Err(self.unknown(Area::Queue, id))
            }
            Err(e) => Err(io_err("open", &path)(e)),
        }
    }

    /// Owner: a segment the index still lists but that is not on disk was removed from
    /// outside (the committer takes a segment out of the index before unlinking it, and puts
    /// one in before creating it): its entries are gone, and are forgotten so that no worker
    /// tries them again.
    fn forget_if_missing(&self, segment: &SegmentId, path: &Path) {
        let mut index = self.lock_index();
        if !index.segments.contains_key(segment) || path.exists() {
            return;
        }
        index.segments.remove(segment);
        let before = index.entries.len();
        index.entries.retain(|_, slot| slot.segment != *segment);
        let lost = before - index.entries.len();
        drop(index);
        tracing::error!(segment = %path.display(), lost, "spool segment removed from outside submitgate; its pending entries are lost");
    }

    /// Segment names in `queue/`, sorted; other names are skipped here (this runs on every
    /// poll) and reported once, at open.
    fn segment_ids(&self) -> Result<Vec<SegmentId>, SpoolError> {
        let mut ids: Vec<SegmentId> = list_names(&self.queue.path)?
            .iter()
            .filter_map(|name| name.strip_suffix(SEGMENT_EXT)?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Ids of the entries in `failed/`, sorted.
    fn failed_ids(&self) -> Result<Vec<EntryId>, SpoolError> {
        let mut ids: Vec<EntryId> = list_names(&self.failed.path)?
            .iter()
            .filter_map(|name| name.strip_suffix(SEGMENT_EXT)?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Pending entries and where they are, oldest first: the owner's index (after adopting
    /// new segments), or, beside the owner, a fresh scan of `queue/`.
    fn queue_slots(&self) -> Result<Vec<(EntryId, Slot)>, SpoolError> {
        if self.owner {
            self.adopt_new()?;
            Ok(self
                .lock_index()
                .entries
                .iter()
                .map(|(id, slot)| (*id, *slot))
                .collect())
        } else {
            Ok(self.scan_queue()?.entries.into_iter().collect())
        }
    }

    /// Where pending entry `id` is.
    fn find(&self, id: &EntryId) -> Result<Slot, SpoolError> {
        let slot = if self.owner {
            self.lock_index().entries.get(id).copied()
        } else {
            self.scan_queue()?.entries.get(id).copied()
        };
        slot.ok_or_else(|| self.unknown(Area::Queue, id))
    }

    /// Beside the owner: the queue as its segments say now. Headers only (the owner may be
    /// appending); a tail that is not whole yet is left out.
    fn scan_queue(&self) -> Result<Index, SpoolError> {
        let mut index = Index::default();
        for segment in self.segment_ids()? {
            let path = self.segment_path(&segment);
            let file = match File::open(&path) {
                Ok(file) => file,
                // Removed since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open", &path)(e)),
            };
            let scanned = scan(&file, false).map_err(io_err("read", &path))?;
            index.add(segment, &scanned);
        }
        Ok(index)
    }

    /// Owner: adopts segments in `queue/` that the index does not know (put there by
    /// `submitgate spool retry`, or found at open).
    fn adopt_new(&self) -> Result<(), SpoolError> {
        let _adopting = self.adopting.lock().unwrap_or_else(PoisonError::into_inner);
        for segment in self.segment_ids()? {
            if self.lock_index().segments.contains_key(&segment) {
                continue;
            }
            self.adopt(segment)?;
        }
        Ok(())
    }

    /// Owner, with `adopting` held: reads a segment the index does not know, checksums
    /// included; cuts off a tail that is not whole records (a batch a crash interrupted: none
    /// of it was ever acknowledged); removes the segment if nothing in it is pending, else
    /// adds it to the index. Returns the number of pending entries.
    fn adopt(&self, segment: SegmentId) -> Result<usize, SpoolError> {
        let path = self.segment_path(&segment);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let scanned = scan(&file, true).map_err(io_err("read", &path))?;
        if let Some(bad) = &scanned.stopped {
            tracing::warn!(
                segment = %path.display(),
                at = scanned.valid_len,
                bytes = scanned.file_len - scanned.valid_len,
                problem = %bad.describe(),
                "spool segment ends in a partial record (a commit batch cut short by a crash, never acknowledged); cutting it off"
            );
            file.set_len(scanned.valid_len)
                .and_then(|()| file.sync_data())
                .map_err(io_err("cut the partial tail of", &path))?;
        }
        let live = scanned.live().count();
        if live == 0 {
            drop(file);
            self.remove_segment(&segment);
            return Ok(0);
        }
        self.lock_index().add(segment, &scanned);
        Ok(live)
    }

    /// Blocking part of [`Spool::fail`]: `failed/<id>.seg` gets a copy of the entry's record
    /// and a state record with the reason (temp file, fdatasync, rename, directory fsync).
    fn copy_to_failed(&self, id: &EntryId, reason: String) -> Result<(), SpoolError> {
        let slot = self.find(id)?;
        let (path, file) = self.open_segment(&slot.segment, id)?;
        let mut state = match read_state(&file, &path, slot.state) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(entry = %id, error = %e, "unreadable delivery state replaced");
                DeliveryState::default()
            }
        };
        state.last_error = Some(reason);
        state.failed_at = Some(SystemTime::now());
        state.next_attempt_at = None;
        let json = serde_json::to_vec(&state).map_err(|e| SpoolError::Encode {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let record_len = HEADER_LEN + slot.data_len + slot.json_len;
        let mut temp = TempFile::new(self.temp_path(), FILE_MODE);
        // A damaged record is set aside as it is (what is left of it): `spool list --failed`
        // shows its problem.
        copy_range(&file, &path, slot.offset, record_len, &mut temp)?;
        temp.write_all(&small_record(Kind::State, 0, &json))?;
        temp.sync_data()?;
        temp.rename_to(&self.failed_path(id), "move to failed/")?;
        self.failed.sync()
    }

    /// Copies `failed/<id>.seg`'s entry record (without its state) into a new segment in
    /// `queue/` (temp file, fdatasync, rename, directory fsync), then removes the failed copy.
    fn retry(&self, id: &EntryId) -> Result<(), SpoolError> {
        let from = self.failed_path(id);
        let file = match File::open(&from) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.unknown(Area::Failed, id))
            }
            Err(e) => return Err(io_err("open", &from)(e)),
        };
        let scanned = scan(&file, true).map_err(io_err("read", &from))?;
        let Some(entry) = scanned.entries.iter().find(|e| e.id == *id) else {
            return Err(match scanned.stopped {
                Some(bad) => bad.into_error(&from),
                None => corrupt(&from, format!("no record of entry {id}")),
            });
        };
        let record_len = HEADER_LEN + entry.data_len + entry.json_len;
        let mut temp = TempFile::new(self.temp_path(), FILE_MODE);
        if copy_range(&file, &from, entry.offset, record_len, &mut temp)? != record_len {
            return Err(corrupt(&from, "cut short while being read"));
        }
        temp.sync_data()?;
        let segment = self.next_id();
        let dest = self.segment_path(&segment);
        if self.owner {
            // Known before it appears, so that no listing adopts it half-registered.
            self.lock_index()
                .segments
                .insert(segment, Default::default());
        }
        let renamed = temp
            .rename_to(&dest, "move to queue/")
            .map_err(SpoolError::from)
            .and_then(|()| self.queue.sync());
        if self.owner {
            let mut index = self.lock_index();
            match &renamed {
                Ok(()) => {
                    let whole = Scan {
                        entries: vec![segment::ScannedEntry {
                            offset: 0,
                            state: None,
                            done: false,
                            ..*entry
                        }],
                        valid_len: record_len,
                        file_len: record_len,
                        stopped: None,
                    };
                    index.add(segment, &whole);
                }
                Err(_) => {
                    index.segments.remove(&segment);
                }
            }
        }
        renamed?;
        #[cfg(test)]
        self.hooks.crash_point("retried into queue/");
        remove_if_present(&from)?;
        self.failed.sync()
    }

    fn list_queue(&self) -> Result<Vec<EntryInfo>, SpoolError> {
        let now = SystemTime::now();
        let mut files: HashMap<SegmentId, (PathBuf, File)> = HashMap::new();
        let mut infos = Vec::new();
        for (id, slot) in self.queue_slots()? {
            let (path, file) = match files.get(&slot.segment) {
                Some(open) => open,
                None => match self.open_segment(&slot.segment, &id) {
                    Ok(open) => files.entry(slot.segment).or_insert(open),
                    // Done since the listing.
                    Err(SpoolError::UnknownEntry { .. }) => continue,
                    Err(e) => return Err(e),
                },
            };
            let meta = read_meta(file, path, &id, &slot);
            let state = read_state(file, path, slot.state);
            infos.push(entry_info(id, meta, state, now));
        }
        Ok(infos)
    }

    fn list_failed(&self) -> Result<Vec<EntryInfo>, SpoolError> {
        let now = SystemTime::now();
        let mut infos = Vec::new();
        for id in self.failed_ids()? {
            let path = self.failed_path(&id);
            let file = match File::open(&path) {
                Ok(file) => file,
                // Retried since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("open", &path)(e)),
            };
            let (meta, state) = match scan(&file, false).map_err(io_err("read", &path)) {
                Ok(scanned) => match scanned.entries.iter().find(|e| e.id == id) {
                    Some(e) => {
                        let slot = Slot {
                            segment: id,
                            offset: e.offset,
                            data_len: e.data_len,
                            json_len: e.json_len,
                            state: e.state,
                            recovered: true,
                        };
                        (
                            read_meta(&file, &path, &id, &slot),
                            read_state(&file, &path, e.state),
                        )
                    }
                    None => {
                        let e = match scanned.stopped {
                            Some(bad) => bad.into_error(&path),
                            None => corrupt(&path, format!("no record of entry {id}")),
                        };
                        (Err(e), Ok(DeliveryState::default()))
                    }
                },
                Err(e) => (Err(e), Ok(DeliveryState::default())),
            };
            infos.push(entry_info(id, meta, state, now));
        }
        Ok(infos)
    }

    /// Start-up recovery, owner only: temp files, entries of the earlier layout, every
    /// segment read back and repaired (see [`Inner::adopt`]), and an entry present both in
    /// the queue and in `failed/` (a move interrupted by a crash; the queued copy wins so that
    /// nothing is lost).
    fn recover(&self) -> Result<(), SpoolError> {
        let mut removed = 0usize;
        for name in list_names(&self.tmp)? {
            let path = self.tmp.join(&name);
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove spool temp file")
                }
            }
        }
        if removed > 0 {
            tracing::info!(spool = %self.root.display(), removed, "removed temp files left by an earlier run");
        }
        legacy::convert(self)?;
        {
            let _adopting = self.adopting.lock().unwrap_or_else(PoisonError::into_inner);
            for segment in self.segment_ids()? {
                self.adopt(segment)?;
            }
        }
        let mut fixed = false;
        for id in self.failed_ids()? {
            if self.lock_index().entries.contains_key(&id) {
                tracing::warn!(entry = %id, "entry both queued and failed; keeping the queued copy");
                remove_if_present(&self.failed_path(&id))?;
                fixed = true;
            }
        }
        if fixed {
            self.failed.sync()?;
        }
        for dir in [&self.queue.path, &self.failed.path] {
            for name in list_names(dir)? {
                let ours = name
                    .strip_suffix(SEGMENT_EXT)
                    .is_some_and(|stem| stem.parse::<EntryId>().is_ok());
                if !ours && !legacy::is_legacy_name(&name) {
                    tracing::warn!(dir = %dir.display(), file = %name, "unexpected file in spool, ignored");
                }
            }
        }
        Ok(())
    }
}

/// Checks that the record at `offset` is entry `id` with the lengths the index has.
fn check_entry(
    file: &File,
    path: &Path,
    id: &EntryId,
    offset: u64,
    data_len: u64,
    json_len: u64,
) -> Result<(), SpoolError> {
    let file_len = file.metadata().map_err(io_err("stat", path))?.len();
    let (header, _) = Header::read(file, offset, file_len).map_err(|bad| bad.into_error(path))?;
    if header.id != Some(*id) || header.data_len != data_len || header.json_len != json_len {
        return Err(corrupt(
            path,
            format!("the record at offset {offset} is not entry {id} as indexed"),
        ));
    }
    Ok(())
}

fn read_meta(file: &File, path: &Path, id: &EntryId, slot: &Slot) -> Result<EntryMeta, SpoolError> {
    check_entry(file, path, id, slot.offset, slot.data_len, slot.json_len)?;
    let json = read_json(
        file,
        path,
        slot.offset + HEADER_LEN + slot.data_len,
        slot.json_len,
    )?;
    let meta: EntryMeta = serde_json::from_slice(&json)
        .map_err(|e| corrupt(path, format!("metadata of {id}: {e}")))?;
    if meta.size != slot.data_len {
        return Err(corrupt(
            path,
            format!(
                "metadata of {id}: size {} but {} message bytes",
                meta.size, slot.data_len
            ),
        ));
    }
    Ok(meta)
}

fn read_state(
    file: &File,
    path: &Path,
    at: Option<(u64, u64)>,
) -> Result<DeliveryState, SpoolError> {
    let Some((offset, len)) = at else {
        return Ok(DeliveryState::default());
    };
    let json = read_json(file, path, offset, len)?;
    serde_json::from_slice(&json).map_err(|e| corrupt(path, format!("delivery state: {e}")))
}

fn read_json(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, SpoolError> {
    if len > MAX_META_BYTES {
        return Err(corrupt(
            path,
            format!("{len} bytes of JSON at offset {offset}"),
        ));
    }
    // Bounded just above.
    let mut json = vec![0u8; len as usize];
    file.read_exact_at(&mut json, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt(path, format!("cut short before offset {}", offset + len))
        } else {
            io_err("read", path)(e)
        }
    })?;
    Ok(json)
}

/// Copies `len` bytes at `offset` of `file` (fewer if the file ends before) to the end of
/// `temp`, in the kernel where it can; returns the bytes copied.
fn copy_range(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
    temp: &mut TempFile,
) -> Result<u64, SpoolError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut source = file.try_clone().map_err(io_err("open", path))?;
    source
        .seek(SeekFrom::Start(offset))
        .map_err(io_err("seek in", path))?;
    let mut source = source.take(len);
    Ok(temp.with_file("write", |mut out| io::copy(&mut source, &mut out))?)
}

fn entry_info(
    id: EntryId,
    meta: Result<EntryMeta, SpoolError>,
    state: Result<DeliveryState, SpoolError>,
    now: SystemTime,
) -> EntryInfo {
    let problem = match (&meta, &state) {
        (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
        _ => None,
    };
    let state = state.unwrap_or_default();
    let meta = meta.ok();
    let since = meta.as_ref().map_or(id.committed_at(), |m| m.submitted_at);
    EntryInfo {
        id,
        mailbox: meta.as_ref().map(|m| m.mailbox.clone()),
        queue_id: meta.as_ref().map(|m| m.queue_id.clone()),
        size: meta.as_ref().map(|m| m.size),
        age: now.duration_since(since).unwrap_or_default(),
        attempts: state.attempts,
        last_error: state.last_error,
        next_attempt_at: state.next_attempt_at,
        problem,
    }
}

/// Names in `dir`. A non-UTF-8 name (never ours) comes back lossily converted, so that it
/// matches no entry and start-up recovery reports it.
fn list_names(dir: &Path) -> Result<Vec<String>, SpoolError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

fn remove_if_present(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

fn not_a_directory(path: &Path) -> SpoolError {
    SpoolError::Io {
        op: "use as directory",
        path: path.to_path_buf(),
        error: io::Error::other("not a directory"),
    }
}

/// Creates `path` (and missing parents) if needed; a new directory and its parent are fsynced
/// so that the directory itself survives a crash.
fn ensure_dir(path: &Path) -> Result<(), SpoolError> {
    let created = match fs::create_dir(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = parent_of(path).ok_or_else(|| io_err("create directory", path)(e))?;
            ensure_dir(parent)?;
            match fs::create_dir(path) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(io_err("create directory", path)(e)),
            }
        }
        Err(e) => return Err(io_err("create directory", path)(e)),
    };
    if !created {
        let meta = fs::metadata(path).map_err(io_err("open spool directory", path))?;
        return if meta.is_dir() {
            Ok(())
        } else {
            Err(not_a_directory(path))
        };
    }
    fsync_dir(path)?;
    match parent_of(path) {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

fn parent_of(path: &Path) -> Option<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(Path::new(".")),
        other => other,
    }
}

fn fsync_dir(path: &Path) -> Result<(), SpoolError> {
    Ok(fsutil::fsync_dir(path)?)
}

fn lock_spool(path: &Path) -> Result<File, SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_err("open lock file", path))?;
    match fsutil::try_lock_exclusive(&file) {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(SpoolError::Locked {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_err("lock", path)(e)),
    }
}
