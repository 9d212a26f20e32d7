//! The durable queue between the milter, which captures each submitted message, and the
//! delivery workers, which store it into the sender's Sent Items. An entry is either committed
//! whole (message and metadata) or absent, whatever the moment of a crash.
//!
//! ```text
//! <spool>/lock                   flock(2)ed by the owner (the daemon), see Spool::open
//! <spool>/tmp/<pid>-<seq>.tmp    a message being written; removed at open
//! <spool>/tmp/<pid>-<seq>.state  a delivery state being written; removed at open
//! <spool>/queue/<id>.msg         committed entries, waiting for delivery
//! <spool>/queue/<id>.state       optional delivery state of that entry (missing = fresh)
//! <spool>/failed/<id>.msg        entries given up on (`submitgate spool retry` moves them back)
//! <spool>/failed/<id>.state      their state; `last_error` holds the reason
//! ```
//!
//! The design — entry file format, the group commit and its fsyncs, what a crash at each
//! step leaves, moves between `queue/` and `failed/`, ownership — is written down in
//! `docs/architecture.md`, section "The Sent Items spool". Here: [`Spool`] (open, lock,
//! recovery at open, state files and moves); `entry`, the ids and metadata; `format`, the
//! entry file; `commit`, the commit queue; `writer`, the [`SpoolWriter`].
//!
//! [`Spool::open`] and [`Spool::attach`] block (call them at start-up); every other file
//! operation is an `async` method that runs on tokio's blocking pool.

mod commit;
mod entry;
mod error;
mod format;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fsutil::{self, TempFile};
use commit::CommitQueue;
use error::{corrupt, io_err};
use format::Layout;

pub use entry::{DeliveryState, EntryId, EntryInfo, EntryMeta, SpoolCounts};
pub use error::SpoolError;
pub use format::{Message, FOOTER_LEN, FOOTER_MAGIC, MAX_META_BYTES};
pub use writer::{SpoolWriter, WRITE_BUFFER};

const TMP_DIR: &str = "tmp";
const QUEUE_DIR: &str = "queue";
const FAILED_DIR: &str = "failed";
const LOCK_FILE: &str = "lock";
const MSG_EXT: &str = ".msg";
const STATE_EXT: &str = ".state";
const FILE_MODE: u32 = 0o600;

/// Runs file work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, SpoolError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
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

/// The durable queue. Cheap to clone; clones share the directory and the id counter.
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
    /// Commits waiting for their batch (see [`commit`]).
    commits: Mutex<CommitQueue>,
    /// Held for the spool's lifetime by the owner; the lock goes with the descriptor.
    _lock: Option<File>,
    /// Signalled after each commit, for the delivery workers ([`Spool::committed`]).
    committed: tokio::sync::Notify,
    #[cfg(test)]
    hooks: tests::Hooks,
}

impl Spool {
    /// Opens `dir` as its owner: creates the layout (fsyncing each new directory and its
    /// parent), locks it against a second owner, removes temp files left by a crash and state
    /// files whose entry is gone. Blocking; call at start-up.
    pub fn open(dir: impl AsRef<Path>) -> Result<Spool, SpoolError> {
        let root = dir.as_ref().to_path_buf();
        ensure_dir(&root)?;
        for sub in [TMP_DIR, QUEUE_DIR, FAILED_DIR] {
            ensure_dir(&root.join(sub))?;
        }
        let lock = lock_spool(&root.join(LOCK_FILE))?;
        let inner = Inner::new(root, Some(lock))?;
        inner.clean_up()?;
        Ok(Spool {
            inner: Arc::new(inner),
        })
    }

    /// Opens an existing spool beside its owner (for `submitgate spool list/retry` while the
    /// daemon runs): no lock, no clean-up, nothing created. Blocking.
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
    /// commits by other processes are not seen (the workers also rescan periodically).
    pub async fn committed(&self) {
        self.inner.committed.notified().await;
    }

    /// Starts capturing one message. No I/O happens until the buffer fills or the commit.
    pub fn begin(&self) -> SpoolWriter {
        SpoolWriter::new(self.clone(), self.inner.temp_path("tmp"))
    }

    /// Committed entries waiting for delivery, oldest first.
    pub async fn pending(&self) -> Result<Vec<EntryId>, SpoolError> {
        self.run(|inner| inner.ids(Area::Queue)).await
    }

    /// Metadata of a pending entry; [`SpoolError::Corrupt`] if its file is not a whole entry.
    pub async fn read_meta(&self, id: &EntryId) -> Result<EntryMeta, SpoolError> {
        let id = *id;
        self.run(move |inner| {
            let (path, file) = inner.open_entry(Area::Queue, &id)?;
            let layout = Layout::read(&file, &path)?;
            layout.meta(&file, &path)
        })
        .await
    }

    /// The message bytes of a pending entry (without the metadata trailer), checked as a
    /// whole entry first.
    pub async fn open_message(&self, id: &EntryId) -> Result<Message, SpoolError> {
        let id = *id;
        self.run(move |inner| {
            let (path, file) = inner.open_entry(Area::Queue, &id)?;
            let layout = Layout::read(&file, &path)?;
            Ok(Message {
                path,
                file,
                len: layout.msg_len,
            })
        })
        .await
    }

    /// Delivery state of a pending entry (the default when none was written).
    pub async fn read_state(&self, id: &EntryId) -> Result<DeliveryState, SpoolError> {
        let id = *id;
        self.run(move |inner| inner.read_state(Area::Queue, &id))
            .await
    }

    /// Replaces the delivery state of a pending entry, atomically and durably.
    pub async fn write_state(&self, id: &EntryId, state: &DeliveryState) -> Result<(), SpoolError> {
        let (id, state) = (*id, state.clone());
        self.run(move |inner| {
            inner.require(Area::Queue, &id)?;
            inner.write_state(Area::Queue, &id, &state)
        })
        .await
    }

    /// Removes a delivered entry and its state, durably.
    pub async fn complete(&self, id: &EntryId) -> Result<(), SpoolError> {
        let id = *id;
        self.run(move |inner| inner.complete(&id)).await
    }

    /// Gives up on a pending entry: moves it to `failed/` with `reason` as its `last_error`.
    pub async fn fail(&self, id: &EntryId, reason: impl Into<String>) -> Result<(), SpoolError> {
        let (id, reason) = (*id, reason.into());
        self.run(move |inner| inner.fail(&id, reason)).await
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
            for id in inner.ids(Area::Failed)? {
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
        let area = if failed { Area::Failed } else { Area::Queue };
        self.run(move |inner| inner.list(area)).await
    }

    /// Spool depth, from directory listings only.
    pub async fn counts(&self) -> Result<SpoolCounts, SpoolError> {
        self.run(|inner| {
            let pending = inner.ids(Area::Queue)?;
            let failed = inner.ids(Area::Failed)?;
            let now = SystemTime::now();
            Ok(SpoolCounts {
                pending: pending.len(),
                failed: failed.len(),
                oldest_pending: pending
                    .first()
                    .map(|id| now.duration_since(id.committed_at()).unwrap_or_default()),
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
            commits: Mutex::new(CommitQueue::default()),
            _lock: lock,
            committed: tokio::sync::Notify::new(),
            #[cfg(test)]
            hooks: tests::Hooks::default(),
        })
    }

    fn dir(&self, area: Area) -> &Dir {
        match area {
            Area::Queue => &self.queue,
            Area::Failed => &self.failed,
        }
    }

    fn msg_path(&self, area: Area, id: &EntryId) -> PathBuf {
        self.dir(area).path.join(format!("{id}{MSG_EXT}"))
    }

    fn state_path(&self, area: Area, id: &EntryId) -> PathBuf {
        self.dir(area).path.join(format!("{id}{STATE_EXT}"))
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn temp_path(&self, ext: &str) -> PathBuf {
        self.tmp
            .join(format!("{}-{}.{ext}", self.pid, self.next_seq()))
    }

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

    /// Ids of the entries in `area`, sorted. Other files are skipped here (this runs on every
    /// poll) and reported once, by [`Inner::clean_up`].
    fn ids(&self, area: Area) -> Result<Vec<EntryId>, SpoolError> {
        let mut ids: Vec<EntryId> = list_names(&self.dir(area).path)?
            .iter()
            .filter_map(|name| name.strip_suffix(MSG_EXT)?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn require(&self, area: Area, id: &EntryId) -> Result<(), SpoolError> {
        let path = self.msg_path(area, id);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.unknown(area, id)),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    fn unknown(&self, area: Area, id: &EntryId) -> SpoolError {
        SpoolError::UnknownEntry {
            id: *id,
            dir: self.dir(area).path.clone(),
        }
    }

    fn open_entry(&self, area: Area, id: &EntryId) -> Result<(PathBuf, File), SpoolError> {
        let path = self.msg_path(area, id);
        match File::open(&path) {
            Ok(file) => Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.unknown(area, id)),
            Err(e) => Err(io_err("open", &path)(e)),
        }
    }

    fn read_state(&self, area: Area, id: &EntryId) -> Result<DeliveryState, SpoolError> {
        let path = self.state_path(area, id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DeliveryState::default()),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, format!("delivery state: {e}")))
    }

    /// Writes `<id>.state` in `area` via a temp file: fdatasync, rename, directory fsync.
    fn write_state(
        &self,
        area: Area,
        id: &EntryId,
        state: &DeliveryState,
    ) -> Result<(), SpoolError> {
        let dest = self.state_path(area, id);
        let json = serde_json::to_vec(state).map_err(|e| SpoolError::Encode {
            path: dest.clone(),
            reason: e.to_string(),
        })?;
        let mut temp = TempFile::new(self.temp_path("state"), FILE_MODE);
        temp.write_all(&json)?;
        temp.sync_data()?;
        temp.rename_to(&dest, "rename into place")?;
        self.dir(area).sync()
    }

    fn complete(&self, id: &EntryId) -> Result<(), SpoolError> {
        let msg = self.msg_path(Area::Queue, id);
        match fs::remove_file(&msg) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.unknown(Area::Queue, id))
            }
            Err(e) => return Err(io_err("remove", &msg)(e)),
        }
        remove_if_present(&self.state_path(Area::Queue, id))?;
        self.queue.sync()
    }

    fn fail(&self, id: &EntryId, reason: String) -> Result<(), SpoolError> {
        self.require(Area::Queue, id)?;
        let mut state = match self.read_state(Area::Queue, id) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(entry = %id, error = %e, "unreadable delivery state replaced");
                DeliveryState::default()
            }
        };
        state.last_error = Some(reason);
        state.failed_at = Some(SystemTime::now());
        state.next_attempt_at = None;
        // State first: a crash after this leaves a state without its message, removed at open.
        self.write_state(Area::Failed, id, &state)?;
        let from = self.msg_path(Area::Queue, id);
        let to = self.msg_path(Area::Failed, id);
        fs::rename(&from, &to).map_err(io_err("move to failed/", &from))?;
        self.failed.sync()?;
        remove_if_present(&self.state_path(Area::Queue, id))?;
        self.queue.sync()
    }

    fn retry(&self, id: &EntryId) -> Result<(), SpoolError> {
        let from = self.msg_path(Area::Failed, id);
        let to = self.msg_path(Area::Queue, id);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.unknown(Area::Failed, id))
            }
            Err(e) => return Err(io_err("move to queue/", &from)(e)),
        }
        self.queue.sync()?;
        remove_if_present(&self.state_path(Area::Failed, id))?;
        self.failed.sync()
    }

    fn list(&self, area: Area) -> Result<Vec<EntryInfo>, SpoolError> {
        let now = SystemTime::now();
        let mut infos = Vec::new();
        for id in self.ids(area)? {
            let meta = match self.open_entry(area, &id) {
                Ok((path, file)) => Layout::read(&file, &path).and_then(|l| l.meta(&file, &path)),
                // Completed or moved since the directory was read.
                Err(SpoolError::UnknownEntry { .. }) => continue,
                Err(e) => Err(e),
            };
            let state = self.read_state(area, &id);
            let problem = match (&meta, &state) {
                (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
                _ => None,
            };
            let state = state.unwrap_or_default();
            let meta = meta.ok();
            let since = meta.as_ref().map_or(id.committed_at(), |m| m.submitted_at);
            infos.push(EntryInfo {
                id,
                mailbox: meta.as_ref().map(|m| m.mailbox.clone()),
                queue_id: meta.as_ref().map(|m| m.queue_id.clone()),
                size: meta.as_ref().map(|m| m.size),
                age: now.duration_since(since).unwrap_or_default(),
                attempts: state.attempts,
                last_error: state.last_error,
                next_attempt_at: state.next_attempt_at,
                problem,
            });
        }
        Ok(infos)
    }

    /// Start-up clean-up, owner only: temp files, states without their message, and an entry
    /// present in both `queue/` and `failed/` (a move interrupted on a file system without
    /// atomic rename; the queued copy wins so that nothing is lost).
    fn clean_up(&self) -> Result<(), SpoolError> {
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
        let queued = self.ids(Area::Queue)?;
        for id in self.ids(Area::Failed)? {
            if queued.binary_search(&id).is_ok() {
                tracing::warn!(entry = %id, "entry both queued and failed; keeping the queued copy");
                remove_if_present(&self.msg_path(Area::Failed, &id))?;
                remove_if_present(&self.state_path(Area::Failed, &id))?;
            }
        }
        for area in [Area::Queue, Area::Failed] {
            let dir = &self.dir(area).path;
            for name in list_names(dir)? {
                if let Some(stem) = name.strip_suffix(STATE_EXT) {
                    if !dir.join(format!("{stem}{MSG_EXT}")).exists() {
                        remove_if_present(&dir.join(&name))?;
                    }
                } else if !name
                    .strip_suffix(MSG_EXT)
                    .is_some_and(|stem| stem.parse::<EntryId>().is_ok())
                {
                    tracing::warn!(dir = %dir.display(), file = %name, "unexpected file in spool, ignored");
                }
            }
        }
        Ok(())
    }
}

/// Names in `dir`. A non-UTF-8 name (never ours) comes back lossily converted, so that it
/// matches no entry and start-up clean-up reports it.
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
