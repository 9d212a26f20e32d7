//! The durable queue between the milter, which captures each submitted message, and the
//! delivery workers, which store it into the sender's Sent Items. An entry is either committed
//! whole (message and metadata) or absent, whatever the moment of a crash.
//!
//! # Layout
//!
//! ```text
//! <spool>/lock                 flock(2)ed by the owning process (the daemon), see Spool::open
//! <spool>/tmp/<pid>-<seq>.tmp  a message being written; never delivered, removed at open
//! <spool>/tmp/<pid>-<seq>.state  a delivery state being written; removed at open
//! <spool>/queue/<id>.msg       committed entries, waiting for delivery
//! <spool>/queue/<id>.state     optional delivery state of that entry (missing = fresh)
//! <spool>/failed/<id>.msg      entries given up on (`submitgate spool retry` moves them back)
//! <spool>/failed/<id>.state    their state; `last_error` holds the reason
//! ```
//!
//! An [`EntryId`] reads `<unix seconds, 10 digits>.<microseconds>-<pid>-<counter>`, e.g.
//! `1718022896.123456-4242-7`: unique, sortable by commit time, safe as a file name.
//!
//! # Entry file
//!
//! One file per entry: the message bytes exactly as captured, then the [`EntryMeta`] as JSON,
//! then a fixed 24-byte footer:
//!
//! ```text
//! message bytes | metadata JSON | message length (u64 BE) | metadata length (u64 BE) | "SGSPOOL1"
//! ```
//!
//! The metadata (Message-ID, recipients, …) is only complete at end-of-message, after the body
//! has streamed out, hence a trailer rather than a header; keeping it in the same file means one
//! file to fsync and one rename to commit, where a separate metadata file would cost a second
//! file fsync and a second rename that has to be ordered against the first. The magic comes last,
//! so a truncated file would have to end, by chance, in the magic and two lengths that add up to
//! its new size to pass: a reader checks exactly that (and that the metadata parses and agrees
//! with the message length), and reports anything else as [`SpoolError::Corrupt`] for that
//! entry. Committed files are never rewritten, so this guards against outside damage only.
//!
//! # Commit sequence: group commit, 1 + 1/n fsyncs per message
//!
//! [`SpoolWriter::commit`] first works on its own blocking-pool thread, concurrently with every
//! other commit:
//! 1. write the rest of the message, the metadata and the footer to `tmp/<pid>-<seq>.tmp`
//!    (created only now for a message that fits in the buffer);
//! 2. `fdatasync` the file (**fsync 1**, one per message; fdatasyncs that overlap can share
//!    the device's cache flushes, and on a journaling file system its journal commits);
//! 3. `rename` it to `queue/<id>.msg` — atomic: the entry appears complete or not at all, and
//!    only with its data already durable.
//!
//! The rename is not durable yet. The commit joins the spool's commit queue, and a commit that
//! finds no batch in progress becomes the committer and, on the same thread, repeats until the
//! queue is empty:
//! 4. take every commit waiting — a batch is simply whatever queued up while the previous
//!    batch was syncing; nothing waits for company, so a lone commit is a batch of one and
//!    costs what it did before batching existed;
//! 5. `fsync` the `queue/` directory (**fsync 2**) **once for the whole batch**: every rename
//!    in it happened before this fsync started, so all of them survive a crash after it;
//! 6. answer each commit of the batch: only then does the milter reply "continue".
//!
//! With `n` commits in a batch that is `1 + 1/n` fsyncs per message: 2 without concurrency,
//! towards 1 under load. Renames stay on the commits' own threads, so a slow rename delays
//! only its own commit, never a batch. One committer runs at a time: a commit that arrives
//! during a directory fsync waits for it to end, then goes into the next batch (the price of
//! sharing the fsync). The committer answers its own commit with its batch and drains later
//! batches while its caller has already moved on.
//!
//! If a step fails, the commit fails and leaves nothing visible: before step 3 its temp file is
//! removed; a failed rename concerns that commit only. If the directory fsync fails, no entry
//! of the batch is known to be durable: every commit of the batch fails and every entry of it
//! is unlinked again (best effort, then one more directory fsync), so that the milter
//! tempfails those messages and none of them gets a copy. A crash before step 3 leaves temp
//! files, removed at the next open; between 3 and 5 a renamed entry either survived whole or
//! vanished, with Postfix never having heard "continue" for it. No `tmp/` fsync is needed: a
//! lost unlink of a temp name only leaves a name that the next open removes.
//!
//! # Writing from async code
//!
//! [`SpoolWriter::write`] only copies into a buffer of [`WRITE_BUFFER`] bytes; when the buffer
//! is full it is written through on tokio's blocking pool (a page-cache write can stall under
//! dirty-page throttling, which must not stop the runtime). The temp file is created lazily by
//! the first write-through or by the commit, so a 10 KiB message costs one blocking-pool hop at
//! commit: `open`, one `write`, `fdatasync`, `rename`, `close`, then its share of one directory
//! `fsync` on whichever thread commits its batch; the caller awaits the answer on a channel.
//! A message aborted before 64 KiB never touches the disk. Memory per writer stays below
//! `WRITE_BUFFER` plus the largest chunk passed to `write`.
//!
//! # Delivery state and moves
//!
//! A worker keeps per-entry [`DeliveryState`] in `<id>.state`, written to `tmp/`, fdatasync'ed,
//! renamed next to the entry and the directory fsynced. [`Spool::fail`] writes the state (with
//! the reason) into `failed/` first, then renames the message there and fsyncs both
//! directories; [`Spool::retry`] renames the message back and drops its state (attempts reset);
//! [`Spool::complete`] unlinks the message, then its state. A crash between those steps can
//! only leave a state file without its message, which [`Spool::open`] removes.
//!
//! # Ownership
//!
//! [`Spool::open`] takes an exclusive lock on `<spool>/lock`: only the owner may clean up
//! `tmp/` (another process's temp files would otherwise be deleted under it). Tools that run
//! beside the daemon (`submitgate spool list`, `spool retry`) use [`Spool::attach`], which takes
//! no lock and cleans nothing. One worker handles a given entry at a time.
//!
//! `open` and `attach` block (call them at start-up); every other file operation is an `async`
//! method that runs on tokio's blocking pool and so needs a tokio runtime.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::fsutil;

/// Bytes a [`SpoolWriter`] buffers before writing through to its temp file.
pub const WRITE_BUFFER: usize = 64 * 1024;
/// Size of the footer that ends every entry file.
pub const FOOTER_LEN: u64 = 24;
/// Last 8 bytes of every entry file; the digit is the format version.
pub const FOOTER_MAGIC: [u8; 8] = *b"SGSPOOL1";
/// Largest metadata trailer a reader accepts (guards against a corrupt length).
pub const MAX_META_BYTES: u64 = 16 * 1024 * 1024;

const TMP_DIR: &str = "tmp";
const QUEUE_DIR: &str = "queue";
const FAILED_DIR: &str = "failed";
const LOCK_FILE: &str = "lock";
const MSG_EXT: &str = ".msg";
const STATE_EXT: &str = ".state";
const FILE_MODE: u32 = 0o600;

/// Everything that can go wrong in the spool; errors about a file name its path.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed (disk full, permissions, …).
    #[error("spool: cannot {op} {}: {error}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    /// Another process owns the spool.
    #[error("spool {}: locked by another process (is submitgate already running?)", path.display())]
    Locked { path: PathBuf },
    /// A committed file that cannot be read as an entry; it is never delivered.
    #[error("spool entry {}: corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// No such entry where it was looked for.
    #[error("spool entry {id}: not found in {}", dir.display())]
    UnknownEntry { id: EntryId, dir: PathBuf },
    /// A string that is not an entry id.
    #[error("invalid spool entry id {0:?}")]
    InvalidId(String),
    /// Metadata that cannot be encoded (a time outside 1970..9999).
    #[error("spool entry {}: cannot encode metadata: {reason}", path.display())]
    Encode { path: PathBuf, reason: String },
    /// A writer whose earlier write failed or was cancelled; its message is incomplete.
    #[error("spool: writer for {} is unusable after an earlier failure", path.display())]
    WriterFailed { path: PathBuf },
    /// The blocking-pool task doing the file work panicked or was cancelled.
    #[error("spool: background file task failed: {0}")]
    Task(String),
}

impl SpoolError {
    /// True for an entry that exists but cannot be read; the caller should log it and
    /// [`Spool::fail`] it rather than retry.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, SpoolError::Corrupt { .. })
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |error| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// The same OS error again, for each commit of a batch that one error failed.
fn copy_io(error: &io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(error.kind(), error.to_string()),
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> SpoolError {
    SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Identifies one entry: commit time in microseconds, process id, per-process counter.
/// Ordered by time, and its text form is a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    micros: u64,
    pid: u32,
    seq: u64,
}

impl EntryId {
    /// When the entry was committed (by the committing host's clock).
    pub fn committed_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.micros)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:010}.{:06}-{}-{}",
            self.micros / 1_000_000,
            self.micros % 1_000_000,
            self.pid,
            self.seq
        )
    }
}

impl FromStr for EntryId {
    type Err = SpoolError;

    /// Accepts exactly the form [`Display`](fmt::Display) writes, so that an id typed by an
    /// operator can never name a file outside the spool.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || SpoolError::InvalidId(s.to_string());
        fn digits<T: FromStr>(part: &str) -> Option<T> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        }
        let (time, rest) = s.split_once('-').ok_or_else(invalid)?;
        let (pid, seq) = rest.split_once('-').ok_or_else(invalid)?;
        let (secs, micros) = time.split_once('.').ok_or_else(invalid)?;
        let secs: u64 = digits(secs).ok_or_else(invalid)?;
        let micros: u64 = digits(micros).ok_or_else(invalid)?;
        if micros >= 1_000_000 {
            return Err(invalid());
        }
        let id = EntryId {
            micros: secs
                .checked_mul(1_000_000)
                .and_then(|m| m.checked_add(micros))
                .ok_or_else(invalid)?,
            pid: digits(pid).ok_or_else(invalid)?,
            seq: digits(seq).ok_or_else(invalid)?,
        };
        if id.to_string() != s {
            return Err(invalid());
        }
        Ok(id)
    }
}

impl Serialize for EntryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a committed entry records besides the message itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// The mailbox whose Sent Items receives the copy (normalized address).
    pub mailbox: String,
    /// The organization the mailbox belongs to.
    pub organization: String,
    /// Target folder, e.g. `Sent Items`.
    pub folder: String,
    /// Postfix queue id (milter macro `i`).
    pub queue_id: String,
    /// The message's Message-ID header, when it has one.
    pub message_id: Option<String>,
    /// Envelope sender.
    pub sender: String,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// When the submission was accepted; serialized as RFC 3339 UTC.
    #[serde(with = "rfc3339")]
    pub submitted_at: SystemTime,
    /// Message size in bytes; set by [`SpoolWriter::commit`] to the bytes written.
    pub size: u64,
}

/// A worker's record of its attempts at one entry. A missing state file reads as the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryState {
    /// Delivery attempts so far (reset by [`Spool::retry`]).
    pub attempts: u32,
    /// Start of the first attempt since commit or retry; `max_age` counts from here, so that
    /// a retried entry gets a full new period.
    #[serde(with = "rfc3339::option")]
    pub first_attempt: Option<SystemTime>,
    /// Not before this time.
    #[serde(with = "rfc3339::option")]
    pub next_attempt_at: Option<SystemTime>,
    /// Why the last attempt failed; for failed entries, why the entry was given up.
    pub last_error: Option<String>,
    /// The last attempt may have stored the message (e.g. the connection was lost after the
    /// APPEND was sent): search the folder for the Message-ID before storing again.
    pub outcome_unknown: bool,
    /// When [`Spool::fail`] moved the entry to `failed/`.
    #[serde(with = "rfc3339::option")]
    pub failed_at: Option<SystemTime>,
}

/// One line of `submitgate spool list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryInfo {
    pub id: EntryId,
    /// `None` when the entry is unreadable (see `problem`).
    pub mailbox: Option<String>,
    pub queue_id: Option<String>,
    pub size: Option<u64>,
    /// Since submission (since commit when the metadata is unreadable); in whole seconds in JSON.
    #[serde(serialize_with = "serialize_secs")]
    pub age: Duration,
    pub attempts: u32,
    pub last_error: Option<String>,
    #[serde(with = "rfc3339::option")]
    pub next_attempt_at: Option<SystemTime>,
    /// Why the entry or its state cannot be read, if so.
    pub problem: Option<String>,
}

/// Spool depth for `submitgate status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpoolCounts {
    pub pending: usize,
    pub failed: usize,
    /// Age of the oldest pending entry (by commit time); in whole seconds in JSON.
    #[serde(serialize_with = "serialize_opt_secs")]
    pub oldest_pending: Option<Duration>,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn serialize_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

/// `SystemTime` as RFC 3339 UTC with nanoseconds, so that it round-trips exactly.
mod rfc3339 {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde::{de::Error as _, ser::Error as _, Deserialize, Deserializer, Serializer};

    /// First second humantime cannot format (year 10000).
    const END: u64 = 253_402_300_800;

    pub fn format(t: SystemTime) -> Result<String, String> {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) if d.as_secs() < END => Ok(humantime::format_rfc3339_nanos(t).to_string()),
            _ => Err(format!("time {t:?} is outside 1970..9999")),
        }
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t).map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(D::Error::custom)
    }

    pub mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(text) => humantime::parse_rfc3339(&text)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

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
    /// Commits waiting for their batch (see the module doc).
    commits: Mutex<CommitQueue>,
    /// Held for the spool's lifetime by the owner; the lock goes with the descriptor.
    _lock: Option<File>,
    /// Signalled after each commit, for the delivery workers ([`Spool::committed`]).
    committed: tokio::sync::Notify,
    #[cfg(test)]
    hooks: tests::Hooks,
}

/// Entries renamed into `queue/` and waiting for the directory fsync, and whether a committer
/// is draining them. Never locked across I/O.
#[derive(Debug, Default)]
struct CommitQueue {
    waiting: Vec<PendingCommit>,
    draining: bool,
}

/// An entry renamed into `queue/` whose rename is not yet known to be durable. Dropped before
/// it is committed (its batch failed, or the committer unwound) it is unlinked again, best
/// effort, so that a message the milter tempfails gets no copy.
#[derive(Debug)]
struct Uncommitted {
    path: PathBuf,
    committed: bool,
}

impl Drop for Uncommitted {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::error!(path = %self.path.display(), error = %e, "cannot withdraw an entry whose commit failed");
            }
        }
    }
}

/// One commit in the queue: its entry, visible with its data durable, and where to answer.
#[derive(Debug)]
struct PendingCommit {
    entry: Uncommitted,
    id: EntryId,
    done: oneshot::Sender<Result<EntryId, SpoolError>>,
}

impl PendingCommit {
    /// Settles the entry — kept if `result` is a success, unlinked otherwise — before the
    /// answer goes out.
    fn answer(self, result: Result<EntryId, SpoolError>) -> Answer {
        let PendingCommit {
            mut entry, done, ..
        } = self;
        entry.committed = result.is_ok();
        drop(entry);
        Answer { done, result }
    }
}

/// A renamed entry and its id, before it joins the queue.
struct PendingEntry {
    id: EntryId,
    entry: Uncommitted,
}

/// The outcome of one commit, ready to send.
struct Answer {
    done: oneshot::Sender<Result<EntryId, SpoolError>>,
    result: Result<EntryId, SpoolError>,
}

fn send_all(answers: Vec<Answer>) {
    for Answer { done, result } in answers {
        // A caller that went away has its entry committed all the same.
        let _ = done.send(result);
    }
}

/// The committer role, held by one thread at a time. If that thread unwinds, the role is
/// given up and the commits still queued fail (their callers get [`SpoolError::Task`], their
/// entries are unlinked) rather than wait for a committer that will never come.
struct Committer {
    inner: Arc<Inner>,
    finished: bool,
}

impl Committer {
    /// Commits batches until the queue is empty. The last batch is answered only after this
    /// thread has let go of the spool, so that a caller that drops its last handle on hearing
    /// the answer releases the spool's lock with it.
    fn drain(mut self) {
        loop {
            #[cfg(test)]
            self.inner.hooks.gather(&self.inner.commits);
            let batch = std::mem::take(&mut self.inner.lock_commits().waiting);
            let answers = self.inner.commit_batch(batch);
            let mut queue = self.inner.lock_commits();
            if queue.waiting.is_empty() {
                queue.draining = false;
                drop(queue);
                self.finished = true;
                drop(self);
                send_all(answers);
                return;
            }
            drop(queue);
            send_all(answers);
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let stranded = {
            let mut queue = self.inner.lock_commits();
            queue.draining = false;
            std::mem::take(&mut queue.waiting)
        };
        tracing::error!(
            stranded = stranded.len(),
            "spool committer stopped; failing the commits it left"
        );
    }
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
        let path = self.inner.temp_path("tmp");
        SpoolWriter {
            spool: self.clone(),
            state: Some(Capture {
                buf: Vec::new(),
                temp: TempFile::new(path.clone()),
            }),
            path,
            written: 0,
        }
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

    fn lock_commits(&self) -> MutexGuard<'_, CommitQueue> {
        // Nothing that can panic runs under this lock; a poisoned queue is still consistent.
        self.commits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a renamed entry for the next batch's directory fsync. The caller becomes the
    /// committer if none is at work, and then drains the queue before returning.
    fn enqueue(self: Arc<Self>, pending: PendingCommit) {
        {
            let mut queue = self.lock_commits();
            queue.waiting.push(pending);
            if queue.draining {
                return;
            }
            queue.draining = true;
        }
        Committer {
            inner: self,
            finished: false,
        }
        .drain();
    }

    /// Step 5 of the commit sequence for one batch: one fsync of `queue/`, then the answers,
    /// to send once the caller is ready to. All or nothing (see the module doc).
    fn commit_batch(&self, batch: Vec<PendingCommit>) -> Vec<Answer> {
        #[cfg(test)]
        self.hooks.record_batch(batch.len());
        match self.sync_queue_dir() {
            Ok(()) => {
                let answers = batch
                    .into_iter()
                    .map(|pending| {
                        let id = pending.id;
                        pending.answer(Ok(id))
                    })
                    .collect();
                // The batch is durable: wake the delivery workers.
                self.committed.notify_one();
                answers
            }
            Err(e) => {
                let answers = batch
                    .into_iter()
                    .map(|pending| {
                        pending.answer(Err(SpoolError::Io {
                            op: "fsync directory",
                            path: self.queue.path.clone(),
                            error: copy_io(&e),
                        }))
                    })
                    .collect();
                // The entries are unlinked by now; make that durable if the directory lets us.
                if let Err(e) = self.sync_queue_dir() {
                    tracing::error!(path = %self.queue.path.display(), error = %e, "cannot fsync the withdrawal of a failed commit batch");
                }
                answers
            }
        }
    }

    /// Step 3 of the commit sequence: gives the entry its id and renames it into `queue/`.
    fn rename_into_queue(&self, temp: &mut TempFile) -> Result<PendingEntry, SpoolError> {
        let id = self.next_id();
        let dest = self.msg_path(Area::Queue, &id);
        let rename = || {
            #[cfg(test)]
            self.hooks.rename_fault()?;
            fs::rename(&temp.path, &dest)
        };
        rename().map_err(io_err("commit (rename) into", &dest))?;
        temp.keep = true;
        Ok(PendingEntry {
            id,
            entry: Uncommitted {
                path: dest,
                committed: false,
            },
        })
    }

    fn sync_queue_dir(&self) -> io::Result<()> {
        #[cfg(test)]
        self.hooks.dir_sync_fault()?;
        self.queue.handle.sync_all()
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
        let mut temp = TempFile::new(self.temp_path("state"));
        temp.write_all(&json)?;
        temp.sync_data()?;
        fs::rename(&temp.path, &dest).map_err(io_err("rename into place", &dest))?;
        temp.keep = true;
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
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io_err("fsync directory", path))
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

/// Positions inside an entry file, read from and checked against its footer.
#[derive(Debug, Clone, Copy)]
struct Layout {
    msg_len: u64,
    meta_len: u64,
}

impl Layout {
    fn read(file: &File, path: &Path) -> Result<Layout, SpoolError> {
        let len = file.metadata().map_err(io_err("stat", path))?.len();
        if len < FOOTER_LEN {
            return Err(corrupt(
                path,
                format!("{len} bytes, shorter than the footer"),
            ));
        }
        let mut footer = [0u8; FOOTER_LEN as usize];
        file.read_exact_at(&mut footer, len - FOOTER_LEN)
            .map_err(io_err("read footer of", path))?;
        let (lengths, magic) = footer.split_at(16);
        if magic != FOOTER_MAGIC {
            return Err(corrupt(path, "no footer magic (truncated or not an entry)"));
        }
        let (msg_len, meta_len) = lengths.split_at(8);
        let layout = Layout {
            msg_len: be_u64(msg_len),
            meta_len: be_u64(meta_len),
        };
        let total = layout
            .msg_len
            .checked_add(layout.meta_len)
            .and_then(|n| n.checked_add(FOOTER_LEN));
        if total != Some(len) {
            return Err(corrupt(
                path,
                format!(
                    "footer says {} + {} + {FOOTER_LEN} bytes, file has {len}",
                    layout.msg_len, layout.meta_len
                ),
            ));
        }
        if layout.meta_len > MAX_META_BYTES {
            return Err(corrupt(
                path,
                format!("{} bytes of metadata", layout.meta_len),
            ));
        }
        Ok(layout)
    }

    fn meta(&self, file: &File, path: &Path) -> Result<EntryMeta, SpoolError> {
        // Bounded by MAX_META_BYTES above.
        let mut json = vec![0u8; self.meta_len as usize];
        file.read_exact_at(&mut json, self.msg_len)
            .map_err(io_err("read metadata of", path))?;
        let meta: EntryMeta =
            serde_json::from_slice(&json).map_err(|e| corrupt(path, format!("metadata: {e}")))?;
        if meta.size != self.msg_len {
            return Err(corrupt(
                path,
                format!(
                    "metadata size {} but {} message bytes",
                    meta.size, self.msg_len
                ),
            ));
        }
        Ok(meta)
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_be_bytes(word)
}

fn footer(msg_len: u64, meta_len: u64) -> [u8; FOOTER_LEN as usize] {
    let mut footer = [0u8; FOOTER_LEN as usize];
    footer[..8].copy_from_slice(&msg_len.to_be_bytes());
    footer[8..16].copy_from_slice(&meta_len.to_be_bytes());
    footer[16..].copy_from_slice(&FOOTER_MAGIC);
    footer
}

/// The message bytes of an entry, opened and checked; read it with the method that suits.
#[derive(Debug)]
pub struct Message {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Message {
    /// Message size in bytes (the metadata trailer excluded).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry file this message is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Streams the message from async code.
    pub fn into_async_read(self) -> tokio::io::Take<tokio::fs::File> {
        use tokio::io::AsyncReadExt;
        tokio::fs::File::from_std(self.file).take(self.len)
    }

    /// Streams the message with blocking reads (for use on a blocking thread).
    pub fn into_read(self) -> io::Take<File> {
        self.file.take(self.len)
    }

    /// Reads the whole message into memory (as an IMAP literal needs it).
    pub async fn read_to_vec(self) -> Result<Vec<u8>, SpoolError> {
        blocking(move || {
            let Message { path, file, len } = self;
            let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.take(len)
                .read_to_end(&mut bytes)
                .map_err(io_err("read", &path))?;
            if bytes.len() as u64 != len {
                return Err(corrupt(&path, "shorter than its footer says"));
            }
            Ok(bytes)
        })
        .await?
    }
}

/// A temp file owned by a writer: created on first use, unlinked on drop unless committed.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    file: Option<File>,
    keep: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        TempFile {
            path,
            file: None,
            keep: false,
        }
    }

    /// Runs `f` on the file, creating it first if needed.
    fn with_file<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&File) -> io::Result<T>,
    ) -> Result<T, SpoolError> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&self.path)
                .map_err(io_err("create", &self.path))?;
            self.file = Some(file);
        }
        match &self.file {
            Some(file) => f(file).map_err(io_err(op, &self.path)),
            None => Err(SpoolError::WriterFailed {
                path: self.path.clone(),
            }),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.with_file("write", |mut file| file.write_all(bytes))
    }

    fn sync_data(&mut self) -> Result<(), SpoolError> {
        self.with_file("fsync", |file| file.sync_data())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.keep || self.file.is_none() {
            return;
        }
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove spool temp file");
            }
        }
    }
}

/// What a writer holds between calls: the buffer and the (maybe not yet created) temp file.
#[derive(Debug)]
struct Capture {
    buf: Vec<u8>,
    temp: TempFile,
}

impl Capture {
    fn flush(&mut self) -> Result<(), SpoolError> {
        self.temp.write_all(&self.buf)?;
        self.buf.clear();
        if self.buf.capacity() > 2 * WRITE_BUFFER {
            self.buf.shrink_to(WRITE_BUFFER);
        }
        Ok(())
    }
}

/// Captures one message into the spool. Dropping it (or [`abort`](SpoolWriter::abort)) before
/// [`commit`](SpoolWriter::commit) deletes whatever was written (one `unlink`, done in place,
/// and only if the message had outgrown the buffer).
#[derive(Debug)]
pub struct SpoolWriter {
    spool: Spool,
    /// `None` once a write-through failed or was cancelled: the message has a hole.
    state: Option<Capture>,
    path: PathBuf,
    written: u64,
}

impl SpoolWriter {
    /// Appends message bytes. Usually a copy into memory; every [`WRITE_BUFFER`] bytes, one
    /// write on the blocking pool. After an error (or a cancelled call) the writer refuses
    /// further use with [`SpoolError::WriterFailed`].
    pub async fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let Some(mut capture) = self.state.take() else {
            return Err(self.failed());
        };
        capture.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        if capture.buf.len() < WRITE_BUFFER {
            self.state = Some(capture);
            return Ok(());
        }
        // If this future is dropped mid-flush, `capture` is dropped with the task's output
        // and its temp file unlinked.
        let (capture, result) = blocking(move || {
            let result = capture.flush();
            (capture, result)
        })
        .await?;
        result?;
        self.state = Some(capture);
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// True before the first byte.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Makes the entry durable and visible (see the module doc for the fsync sequence) and
    /// returns its id. `meta.size` is set to the bytes written. On error nothing is committed
    /// and the temp file is removed. The file work runs on the blocking pool: if this future
    /// is dropped, the commit still completes or fails there, unobserved.
    pub async fn commit(mut self, mut meta: EntryMeta) -> Result<EntryId, SpoolError> {
        let Some(mut capture) = self.state.take() else {
            return Err(self.failed());
        };
        meta.size = self.written;
        let json = serde_json::to_vec(&meta).map_err(|e| SpoolError::Encode {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        capture.buf.extend_from_slice(&json);
        capture
            .buf
            .extend_from_slice(&footer(self.written, json.len() as u64));
        let inner = Arc::clone(&self.spool.inner);
        let (done, answer) = oneshot::channel();
        // The thread is not awaited, the answer is: a thread that becomes the committer
        // answers its own commit with its batch, then goes on draining later batches.
        drop(tokio::task::spawn_blocking(move || {
            let Capture { buf, mut temp } = capture;
            let renamed = temp
                .write_all(&buf)
                .and_then(|()| temp.sync_data())
                .and_then(|()| inner.rename_into_queue(&mut temp));
            // Closed now, and removed unless it was renamed.
            drop(temp);
            match renamed {
                Ok(PendingEntry { id, entry }) => inner.enqueue(PendingCommit { entry, id, done }),
                Err(e) => {
                    // Let go of the spool before the caller hears (see `Committer::drain`).
                    drop(inner);
                    let _ = done.send(Err(e));
                }
            }
        }));
        answer.await.map_err(|_| {
            SpoolError::Task("the commit's file task ended without an answer".to_string())
        })?
    }

    /// Discards the message and its temp file.
    pub fn abort(self) {
        drop(self);
    }

    fn failed(&self) -> SpoolError {
        SpoolError::WriterFailed {
            path: self.path.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::Instant;

    use super::*;

    /// Test-only controls of the commit batches; everything off by default.
    #[derive(Debug, Default)]
    pub(super) struct Hooks {
        /// Before taking its next batch, the committer waits (up to 30 s) until this many
        /// commits are queued, so that a test gets a batch of a known size.
        gather: AtomicUsize,
        /// Sizes of the batches committed so far, in order.
        batches: Mutex<Vec<usize>>,
        /// Directory fsyncs of `queue/` done by committers.
        dir_syncs: AtomicUsize,
        /// Fail this many of the next renames into `queue/` (ENOSPC).
        fail_renames: AtomicUsize,
        /// Fail every directory fsync of `queue/` by committers (EIO).
        fail_dir_sync: AtomicBool,
        /// Panic at the start of the next batch.
        panic_in_batch: AtomicBool,
    }

    impl Hooks {
        pub(super) fn gather(&self, commits: &Mutex<CommitQueue>) {
            let want = self.gather.swap(0, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(30);
            while want > 0 && Instant::now() < deadline {
                let queued = commits
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .waiting
                    .len();
                if queued >= want {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        pub(super) fn record_batch(&self, len: usize) {
            self.batches.lock().expect("hooks").push(len);
            if self.panic_in_batch.swap(false, Ordering::SeqCst) {
                panic!("injected committer panic");
            }
        }

        pub(super) fn rename_fault(&self) -> io::Result<()> {
            let fail = self
                .fail_renames
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if fail.is_ok() {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::NOSPC.raw_os_error(),
                ));
            }
            Ok(())
        }

        pub(super) fn dir_sync_fault(&self) -> io::Result<()> {
            self.dir_syncs.fetch_add(1, Ordering::SeqCst);
            if self.fail_dir_sync.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::IO.raw_os_error(),
                ));
            }
            Ok(())
        }
    }

    fn hooks(spool: &Spool) -> &Hooks {
        &spool.inner.hooks
    }

    fn batches(spool: &Spool) -> Vec<usize> {
        hooks(spool).batches.lock().expect("hooks").clone()
    }

    fn meta() -> EntryMeta {
        EntryMeta {
            mailbox: "alice@contoso.com".into(),
            organization: "contoso".into(),
            folder: "Sent Items".into(),
            queue_id: "4Xyz1234".into(),
            message_id: Some("<m1@contoso.com>".into()),
            sender: "alice@contoso.com".into(),
            recipients: vec!["bob@example.org".into(), "carol@example.net".into()],
            submitted_at: UNIX_EPOCH + Duration::new(1_718_022_896, 123_456_789),
            size: 0,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names = list_names(dir).expect("list");
        names.sort();
        names
    }

    fn message(len: usize) -> Vec<u8> {
        // Not periodic in the buffer size, so that a misplaced chunk shows.
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn commit(spool: &Spool, body: &[u8]) -> EntryId {
        let mut w = spool.begin();
        w.write(body).await.expect("write");
        w.commit(meta()).await.expect("commit")
    }

    #[tokio::test]
    async fn small_message_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let body = b"From: alice@contoso.com\r\nSubject: hi\r\n\r\nhello\r\n".to_vec();
        let mut w = spool.begin();
        w.write(&body[..10]).await.expect("write");
        w.write(&body[10..]).await.expect("write");
        assert_eq!(w.len(), body.len() as u64);
        // Small messages stay in memory until the commit.
        assert!(names(&dir.path().join(TMP_DIR)).is_empty());
        let id = w.commit(meta()).await.expect("commit");

        assert_eq!(spool.pending().await.expect("pending"), vec![id]);
        assert!(names(&dir.path().join(TMP_DIR)).is_empty());
        let read = spool.read_meta(&id).await.expect("meta");
        assert_eq!(
            read,
            EntryMeta {
                size: body.len() as u64,
                ..meta()
            }
        );
        let msg = spool.open_message(&id).await.expect("open");
        assert_eq!(msg.len(), body.len() as u64);
        assert_eq!(msg.read_to_vec().await.expect("read"), body);

        let file = fs::read(dir.path().join(QUEUE_DIR).join(format!("{id}.msg"))).expect("read");
        assert!(file.ends_with(&FOOTER_MAGIC));
        assert!(file.starts_with(&body));
    }

    #[tokio::test]
    async fn large_message_streams_with_bounded_buffer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let body = message(5 * 1024 * 1024 + 17);
        let mut w = spool.begin();
        for chunk in body.chunks(65_535) {
            w.write(chunk).await.expect("write");
            let capture = w.state.as_ref().expect("usable");
            assert!(capture.buf.len() < WRITE_BUFFER);
            assert!(capture.buf.capacity() <= 2 * WRITE_BUFFER + 65_535);
        }
        assert_eq!(names(&dir.path().join(TMP_DIR)).len(), 1);
        let id = w.commit(meta()).await.expect("commit");

        let msg = spool.open_message(&id).await.expect("open");
        assert_eq!(msg.len(), body.len() as u64);
        let mut streamed = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut msg.into_async_read(), &mut streamed)
            .await
            .expect("stream");
        assert!(streamed == body, "streamed bytes differ");
        let msg = spool.open_message(&id).await.expect("open");
        let mut read = Vec::new();
        msg.into_read().read_to_end(&mut read).expect("read");
        assert!(read == body, "read bytes differ");
        assert_eq!(
            spool.read_meta(&id).await.expect("meta").size,
            body.len() as u64
        );
    }

    #[tokio::test]
    async fn empty_message_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let id = spool.begin().commit(meta()).await.expect("commit");
        let msg = spool.open_message(&id).await.expect("open");
        assert!(msg.is_empty());
        assert!(msg.read_to_vec().await.expect("read").is_empty());
    }

    #[tokio::test]
    async fn abort_and_drop_remove_the_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join(TMP_DIR);
        let spool = Spool::open(dir.path()).expect("open");
        let body = message(3 * WRITE_BUFFER);

        let mut w = spool.begin();
        w.write(&body).await.expect("write");
        assert_eq!(names(&tmp).len(), 1);
        w.abort();
        assert!(names(&tmp).is_empty());

        let mut w = spool.begin();
        w.write(&body).await.expect("write");
        assert_eq!(names(&tmp).len(), 1);
        drop(w);
        assert!(names(&tmp).is_empty());

        let mut w = spool.begin();
        w.write(b"short").await.expect("write");
        w.abort();
        assert!(names(&tmp).is_empty());
        assert!(spool.pending().await.expect("pending").is_empty());
    }

    #[tokio::test]
    async fn cancelled_write_removes_the_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join(TMP_DIR);
        let spool = Spool::open(dir.path()).expect("open");
        let body = message(WRITE_BUFFER);
        let mut w = spool.begin();
        // Polled once: the write-through is on the blocking pool when the future is dropped.
        while tokio::time::timeout(Duration::ZERO, w.write(&body))
            .await
            .is_ok()
        {}
        assert!(matches!(
            w.write(b"more").await,
            Err(SpoolError::WriterFailed { .. })
        ));
        for _ in 0..100 {
            if names(&tmp).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(names(&tmp).is_empty());
        assert!(w.commit(meta()).await.is_err());
        assert!(spool.pending().await.expect("pending").is_empty());
    }

    #[tokio::test]
    async fn open_removes_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let kept = commit(&spool, b"kept").await;
        spool
            .write_state(
                &kept,
                &DeliveryState {
                    attempts: 2,
                    ..Default::default()
                },
            )
            .await
            .expect("state");
        drop(spool);

        let tmp = dir.path().join(TMP_DIR);
        fs::write(tmp.join("999-1.tmp"), b"half a message").expect("write");
        fs::write(tmp.join("999-2.state"), b"{").expect("write");
        let queue = dir.path().join(QUEUE_DIR);
        fs::write(queue.join("1718022896.000001-1-1.state"), b"{}").expect("write");

        let spool = Spool::open(dir.path()).expect("reopen");
        assert!(names(&tmp).is_empty());
        assert_eq!(
            names(&queue),
            vec![format!("{kept}.msg"), format!("{kept}.state")]
        );
        assert_eq!(spool.read_state(&kept).await.expect("state").attempts, 2);
        assert_eq!(spool.pending().await.expect("pending"), vec![kept]);
    }

    #[tokio::test]
    async fn damaged_entries_are_corrupt_not_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let body = message(1000);
        let id = commit(&spool, &body).await;
        let path = dir.path().join(QUEUE_DIR).join(format!("{id}.msg"));
        let whole = fs::read(&path).expect("read");

        let mut damaged: Vec<Vec<u8>> = [0, 1, 23, 24, 500, 1000, whole.len() - 1]
            .iter()
            .map(|&n| whole[..n].to_vec())
            .collect();
        // Intact footer, lengths that do not add up.
        let mut extra = whole.clone();
        extra.insert(0, b'X');
        damaged.push(extra);
        // Intact lengths, garbled metadata.
        let mut garbled = whole.clone();
        garbled[1001] = b'!';
        damaged.push(garbled);

        for bytes in damaged {
            fs::write(&path, &bytes).expect("damage");
            let err = spool
                .read_meta(&id)
                .await
                .expect_err("meta of damaged entry");
            assert!(err.is_corrupt(), "{err}");
            let err = spool.open_message(&id).await;
            if bytes.len() as u64 != whole.len() as u64 {
                assert!(err.expect_err("message of damaged entry").is_corrupt());
            }
            let listed = spool.list(false).await.expect("list");
            assert_eq!(listed.len(), 1);
            assert!(listed[0].problem.is_some());
            assert_eq!(listed[0].mailbox, None);
        }
        // A corrupt entry can still be set aside.
        spool.fail(&id, "corrupt").await.expect("fail");
        assert!(spool.pending().await.expect("pending").is_empty());
    }

    #[tokio::test]
    async fn fail_list_retry_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let a = commit(&spool, b"first").await;
        let b = commit(&spool, b"second").await;
        assert!(a < b);
        assert_eq!(spool.pending().await.expect("pending"), vec![a, b]);

        let attempt = DeliveryState {
            attempts: 3,
            first_attempt: Some(SystemTime::now()),
            next_attempt_at: Some(SystemTime::now() + Duration::from_secs(60)),
            last_error: Some("connection refused".into()),
            outcome_unknown: true,
            failed_at: None,
        };
        spool.write_state(&a, &attempt).await.expect("state");
        assert_eq!(spool.read_state(&a).await.expect("state"), attempt);
        assert_eq!(
            spool.read_state(&b).await.expect("state"),
            DeliveryState::default()
        );

        spool.fail(&a, "authentication failed").await.expect("fail");
        assert_eq!(spool.pending().await.expect("pending"), vec![b]);
        let failed = spool.list(true).await.expect("list");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].id, a);
        assert_eq!(failed[0].mailbox.as_deref(), Some("alice@contoso.com"));
        assert_eq!(failed[0].queue_id.as_deref(), Some("4Xyz1234"));
        assert_eq!(failed[0].attempts, 3);
        assert_eq!(
            failed[0].last_error.as_deref(),
            Some("authentication failed")
        );
        assert_eq!(failed[0].problem, None);
        assert!(failed[0].age > Duration::from_secs(3600));
        let json = serde_json::to_value(&failed[0]).expect("json");
        assert_eq!(json["id"], a.to_string());

        let counts = spool.counts().await.expect("counts");
        assert_eq!((counts.pending, counts.failed), (1, 1));
        assert!(counts.oldest_pending.is_some());

        assert!(matches!(
            spool.read_meta(&a).await,
            Err(SpoolError::UnknownEntry { .. })
        ));
        spool.retry(&a).await.expect("retry");
        assert_eq!(spool.pending().await.expect("pending"), vec![a, b]);
        assert_eq!(
            spool.read_state(&a).await.expect("state"),
            DeliveryState::default()
        );
        assert!(spool.list(true).await.expect("list").is_empty());
        assert!(matches!(
            spool.retry(&a).await,
            Err(SpoolError::UnknownEntry { .. })
        ));

        spool.fail(&a, "x").await.expect("fail");
        spool.fail(&b, "y").await.expect("fail");
        assert_eq!(spool.retry_all().await.expect("retry all"), vec![a, b]);

        spool.write_state(&a, &attempt).await.expect("state");
        spool.complete(&a).await.expect("complete");
        spool.complete(&b).await.expect("complete");
        assert!(spool.pending().await.expect("pending").is_empty());
        assert!(names(&dir.path().join(QUEUE_DIR)).is_empty());
        assert!(names(&dir.path().join(FAILED_DIR)).is_empty());
        assert!(matches!(
            spool.complete(&a).await,
            Err(SpoolError::UnknownEntry { .. })
        ));
        assert!(matches!(
            spool.write_state(&a, &attempt).await,
            Err(SpoolError::UnknownEntry { .. })
        ));
        let counts = spool.counts().await.expect("counts");
        assert_eq!(
            counts,
            SpoolCounts {
                pending: 0,
                failed: 0,
                oldest_pending: None
            }
        );
    }

    #[tokio::test]
    async fn unwritable_spool_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        // Works as root too: a file where the temp directory should be.
        let tmp = dir.path().join(TMP_DIR);
        fs::remove_dir(&tmp).expect("rmdir");
        fs::write(&tmp, b"").expect("file");
        let mut w = spool.begin();
        w.write(b"small").await.expect("buffered");
        let err = w.commit(meta()).await.expect_err("commit");
        assert!(matches!(err, SpoolError::Io { .. }), "{err}");
        assert!(err.to_string().contains(TMP_DIR), "{err}");

        let mut w = spool.begin();
        let err = w.write(&message(WRITE_BUFFER)).await.expect_err("write");
        assert!(matches!(err, SpoolError::Io { .. }), "{err}");
        assert!(matches!(
            w.write(b"more").await,
            Err(SpoolError::WriterFailed { .. })
        ));
        assert!(matches!(
            w.commit(meta()).await,
            Err(SpoolError::WriterFailed { .. })
        ));
        assert!(spool.pending().await.expect("pending").is_empty());

        // A spool path that is a file.
        let file = dir.path().join("plain");
        fs::write(&file, b"").expect("file");
        assert!(Spool::open(&file).is_err());
    }

    #[tokio::test]
    async fn read_only_spool_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        if rustix::process::geteuid().is_root() {
            // Root ignores permission bits; the test above covers this case.
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let tmp = dir.path().join(TMP_DIR);
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o500)).expect("chmod");
        let mut w = spool.begin();
        w.write(b"small").await.expect("buffered");
        let result = w.commit(meta()).await;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(matches!(result, Err(SpoolError::Io { .. })));
    }

    #[tokio::test]
    async fn one_owner_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let owner = Spool::open(dir.path().join("a/b/spool")).expect("open");
        assert!(matches!(
            Spool::open(owner.path()),
            Err(SpoolError::Locked { .. })
        ));
        let id = commit(&owner, b"body").await;
        // A temp file of the owner survives an attach.
        let mut w = owner.begin();
        w.write(&message(WRITE_BUFFER)).await.expect("write");
        let admin = Spool::attach(owner.path()).expect("attach");
        assert_eq!(names(&owner.path().join(TMP_DIR)).len(), 1);
        assert_eq!(admin.pending().await.expect("pending"), vec![id]);
        w.commit(meta()).await.expect("commit");
        drop(owner);
        Spool::open(admin.path()).expect("open after owner closed");
        assert!(Spool::attach(dir.path().join("missing")).is_err());
    }

    /// Starts `n` commits at once, the `i`-th with body `body(i)`; their results in order.
    async fn commit_concurrently(
        spool: &Spool,
        n: usize,
        body: fn(usize) -> Vec<u8>,
    ) -> Vec<Result<EntryId, SpoolError>> {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let spool = spool.clone();
            tasks.spawn(async move {
                let mut w = spool.begin();
                w.write(&body(i)).await?;
                w.commit(meta()).await.map(|id| (i, id))
            });
        }
        let mut results: Vec<Option<Result<EntryId, SpoolError>>> = (0..n).map(|_| None).collect();
        let mut failed = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("commit task") {
                Ok((i, id)) => results[i] = Some(Ok(id)),
                Err(e) => failed.push(e),
            }
        }
        // Failures are not told apart by index; the tests that make some only count them.
        let mut failed = failed.into_iter();
        results
            .into_iter()
            .map(|r| {
                r.or_else(|| failed.next().map(Err))
                    .expect("one result per commit")
            })
            .collect()
    }

    fn numbered(i: usize) -> Vec<u8> {
        let mut body = format!("Subject: {i}\r\n\r\n").into_bytes();
        body.extend(message(10 * 1024 + i));
        body
    }

    fn assert_nothing_left(dir: &Path) {
        assert!(
            names(&dir.join(QUEUE_DIR)).is_empty(),
            "visible entries left"
        );
        assert!(names(&dir.join(TMP_DIR)).is_empty(), "temp files left");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_share_one_directory_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        hooks(&spool).gather.store(32, Ordering::SeqCst);
        let ids: Vec<EntryId> = commit_concurrently(&spool, 32, numbered)
            .await
            .into_iter()
            .map(|r| r.expect("commit"))
            .collect();
        assert_eq!(batches(&spool), vec![32]);
        assert_eq!(hooks(&spool).dir_syncs.load(Ordering::SeqCst), 1);

        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 32, "ids are unique");
        assert_eq!(spool.pending().await.expect("pending"), sorted);
        for (i, id) in ids.iter().enumerate() {
            let msg = spool.open_message(id).await.expect("open");
            assert!(
                msg.read_to_vec().await.expect("read") == numbered(i),
                "entry {i}"
            );
            assert_eq!(
                spool.read_meta(id).await.expect("meta").size,
                numbered(i).len() as u64
            );
        }
        assert!(names(&dir.path().join(TMP_DIR)).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_concurrent_commits_are_all_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let results = commit_concurrently(&spool, 200, numbered).await;
        let mut ids: Vec<EntryId> = results.into_iter().map(|r| r.expect("commit")).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 200);
        assert_eq!(spool.pending().await.expect("pending"), ids);
        for info in spool.list(false).await.expect("list") {
            assert_eq!(info.problem, None, "{}", info.id);
        }
        // However they were grouped, every commit was in exactly one batch, and each batch
        // had its directory fsync.
        let batches = batches(&spool);
        assert_eq!(batches.iter().sum::<usize>(), 200);
        assert_eq!(
            hooks(&spool).dir_syncs.load(Ordering::SeqCst),
            batches.len()
        );
        assert!(names(&dir.path().join(TMP_DIR)).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn failed_directory_fsync_fails_the_whole_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let before = commit(&spool, b"committed before").await;
        hooks(&spool).fail_dir_sync.store(true, Ordering::SeqCst);
        hooks(&spool).gather.store(8, Ordering::SeqCst);
        for result in commit_concurrently(&spool, 8, numbered).await {
            match result {
                Err(SpoolError::Io { op, error, .. }) => {
                    assert_eq!(op, "fsync directory");
                    assert_eq!(
                        error.raw_os_error(),
                        Some(rustix::io::Errno::IO.raw_os_error())
                    );
                }
                other => panic!("expected the fsync error, got {other:?}"),
            }
        }
        assert_eq!(batches(&spool), vec![1, 8]);
        // The batch's own fsync, then the one after the withdrawal (both failing here).
        assert_eq!(hooks(&spool).dir_syncs.load(Ordering::SeqCst), 3);
        // All eight were renamed into queue/ before the fsync, and all were unlinked again.
        assert_eq!(spool.pending().await.expect("pending"), vec![before]);
        assert!(names(&dir.path().join(TMP_DIR)).is_empty());

        // The committer is not stuck: the next commit goes through.
        hooks(&spool).fail_dir_sync.store(false, Ordering::SeqCst);
        let after = commit(&spool, b"committed after").await;
        assert_eq!(spool.pending().await.expect("pending"), vec![before, after]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn failed_rename_fails_only_its_own_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        hooks(&spool).fail_renames.store(1, Ordering::SeqCst);
        // The five others make one batch; the failed one never joins it.
        hooks(&spool).gather.store(5, Ordering::SeqCst);
        let mut committed = Vec::new();
        let mut failed = 0;
        for result in commit_concurrently(&spool, 6, numbered).await {
            match result {
                Ok(id) => committed.push(id),
                Err(SpoolError::Io { op, error, .. }) => {
                    assert_eq!(op, "commit (rename) into");
                    assert_eq!(
                        error.raw_os_error(),
                        Some(rustix::io::Errno::NOSPC.raw_os_error())
                    );
                    failed += 1;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!((committed.len(), failed), (5, 1));
        assert_eq!(batches(&spool), vec![5]);
        committed.sort_unstable();
        assert_eq!(spool.pending().await.expect("pending"), committed);
        assert!(names(&dir.path().join(TMP_DIR)).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn committer_panic_fails_its_batch_and_frees_the_role() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        hooks(&spool).panic_in_batch.store(true, Ordering::SeqCst);
        hooks(&spool).gather.store(3, Ordering::SeqCst);
        for result in commit_concurrently(&spool, 3, numbered).await {
            assert!(matches!(result, Err(SpoolError::Task(_))), "{result:?}");
        }
        // Renamed before the panic, unlinked again as the batch unwound.
        assert_nothing_left(dir.path());
        let id = commit(&spool, b"committed after").await;
        assert_eq!(spool.pending().await.expect("pending"), vec![id]);
    }

    #[tokio::test]
    async fn a_lone_commit_is_a_batch_of_one_without_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let reference = dir.path().join("reference");
        fs::create_dir(&reference).expect("mkdir");
        let body = numbered(0);
        // Interleaved with the same work done by hand without the queue (write, fdatasync,
        // rename, directory fsync on one blocking-pool hop), so that other load on the disk
        // hits both alike.
        let (mut batched, mut by_hand) = (Vec::new(), Vec::new());
        for round in 0..15 {
            let start = Instant::now();
            commit(&spool, &body).await;
            batched.push(start.elapsed());

            let (reference, body) = (reference.clone(), body.clone());
            let start = Instant::now();
            blocking(move || -> io::Result<()> {
                let temp = reference.join(format!("{round}.tmp"));
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&temp)?;
                file.write_all(&body)?;
                file.sync_data()?;
                fs::rename(&temp, reference.join(format!("{round}.msg")))?;
                File::open(&reference)?.sync_all()
            })
            .await
            .expect("task")
            .expect("reference commit");
            by_hand.push(start.elapsed());
        }
        // Each commit found the queue empty and committed at once: one batch each, with its
        // own directory fsync, exactly the unbatched sequence.
        assert_eq!(batches(&spool), vec![1; 15]);
        assert_eq!(hooks(&spool).dir_syncs.load(Ordering::SeqCst), 15);
        batched.sort();
        by_hand.sort();
        let (batched, by_hand) = (batched[7], by_hand[7]);
        // Generous, for a shared disk; a batching delay of even a few ms would show.
        assert!(
            batched <= by_hand * 2 + Duration::from_millis(2),
            "median lone commit {batched:?}, by hand {by_hand:?}"
        );
    }

    #[test]
    fn entry_ids_parse_only_their_own_form() {
        let id = EntryId {
            micros: 1_718_022_896_000_042,
            pid: 4242,
            seq: 7,
        };
        assert_eq!(id.to_string(), "1718022896.000042-4242-7");
        assert_eq!(
            "1718022896.000042-4242-7".parse::<EntryId>().expect("id"),
            id
        );
        for bad in [
            "",
            "../x",
            "1718022896.000042-4242",
            "1718022896.000042-4242-7.msg",
            "1718022896.42-4242-7",
            "1718022896.000042-04242-7",
            "1718022896.000042-+4242-7",
            "1718022896.000042-4242-7-1",
            "99999999999999999999.000000-1-1",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad:?}");
        }
        let early = EntryId {
            micros: 999_999_999_999_999,
            pid: 1,
            seq: 2,
        };
        assert!(early.to_string() < id.to_string());
        assert!(early < id);
    }

    #[test]
    fn metadata_round_trips_as_json() {
        let json = serde_json::to_string(&meta()).expect("json");
        assert!(
            json.contains("\"submitted_at\":\"2024-06-10T12:34:56.123456789Z\""),
            "{json}"
        );
        let back: EntryMeta = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, meta());
        let before_epoch = EntryMeta {
            submitted_at: UNIX_EPOCH - Duration::from_secs(1),
            ..meta()
        };
        assert!(serde_json::to_string(&before_epoch).is_err());
    }

    #[test]
    fn state_round_trips_and_tolerates_missing_fields() {
        let state = DeliveryState {
            attempts: 1,
            first_attempt: Some(UNIX_EPOCH + Duration::from_secs(1_718_022_896)),
            next_attempt_at: None,
            last_error: Some("timeout".into()),
            outcome_unknown: false,
            failed_at: None,
        };
        let json = serde_json::to_string(&state).expect("json");
        assert_eq!(
            serde_json::from_str::<DeliveryState>(&json).expect("parse"),
            state
        );
        let old: DeliveryState = serde_json::from_str(r#"{"attempts":4}"#).expect("parse");
        assert_eq!(old.attempts, 4);
        assert_eq!(old.first_attempt, None);
    }
}
