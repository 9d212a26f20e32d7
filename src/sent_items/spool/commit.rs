//! The committer (group commit). Every change to the queue — a new entry, a delivery state,
//! a done mark — is an [`Op`] in the commit queue; whoever finds no committer at work becomes
//! it and drains the queue batch by batch. A batch is whatever queued up while the previous
//! one was syncing: its records are appended to their segments with one `pwritev` per segment
//! (from the ops' own buffers), and made durable with **one `fdatasync` per segment touched**
//! (usually one: the active segment), plus one directory fsync only when the batch created a
//! segment or renames a large entry's own segment in. A batch of done marks alone is written but not synced (see
//! [`super::Spool::complete`]). Then the index is updated and every op of the batch answered. A
//! batch is all or nothing: if any step fails, every op of it fails and what it wrote is
//! withdrawn (segments cut back to their length before the batch, new files unlinked), so the
//! milter tempfails every message of it. The sequence and its crash analysis are in
//! docs/architecture.md ("Commit sequence").

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::io::IoSlice;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::format::{small_record, Kind, HEADER_LEN};
use super::segment::{SegmentId, SegmentInfo, Slot};
use super::{Area, EntryId, Inner, SpoolError, FILE_MODE};

/// A segment takes new entries until it is this long; then the next batch starts a new one
/// (one directory fsync per segment). A segment is removed once its last entry is done, so
/// an entry held back for days keeps at most this much of delivered mail on disk with it.
///
/// A new segment is written full of zeros to this length first (made durable by its first
/// batch's fdatasync), so that later batches overwrite blocks the file already has: their
/// fdatasync then writes the data alone, not the inode too (a file that grows has a new size
/// and new blocks to record: on the development machine's journal-less ext4 a second write
/// and wait in every commit, on a journaling file system a journal commit). A reader takes
/// zeros where a header would be as the end of the records.
pub const SEGMENT_BYTES: u64 = 1024 * 1024;

/// What a new segment is filled with, a chunk at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Where an op's outcome goes: the entry's id.
pub(super) type Answer = oneshot::Sender<Result<EntryId, SpoolError>>;

/// One change to the queue.
#[derive(Debug)]
pub(super) enum Op {
    /// A new entry, appended to the active segment: its whole record, header filled in.
    Append {
        id: EntryId,
        record: Vec<u8>,
        data_len: u64,
        json_len: u64,
    },
    /// A large entry, written (and fdatasynced) as a segment of its own and renamed into
    /// `queue/` already; the batch's directory fsync makes the name durable.
    Renamed {
        id: EntryId,
        segment: Uncommitted,
        data_len: u64,
        json_len: u64,
    },
    /// A new delivery state for a pending entry.
    State { id: EntryId, json: Vec<u8> },
    /// A pending entry leaves the queue (stored, or copied to `failed/`).
    Done { id: EntryId },
}

/// An op waiting in the queue, with where to answer.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) op: Op,
    pub(super) answer: Answer,
}

/// Ops waiting for the next batch, whether a committer is draining them, and the segment new
/// entries go to. Never locked across I/O.
#[derive(Debug, Default)]
pub(super) struct CommitQueue {
    pub(super) waiting: Vec<Pending>,
    draining: bool,
    /// Held by the queue between batches, by the committer during one.
    active: Option<Active>,
}

/// The segment new entries are appended to.
#[derive(Debug)]
struct Active {
    id: SegmentId,
    /// Shared with the batch's [`Withdrawal`] (no descriptor duplicated per batch).
    file: Arc<File>,
}

/// A large entry's segment renamed into `queue/`, whose name is not yet known to be durable.
/// Dropped before it is committed (its batch failed, or the committer unwound) it is unlinked
/// again, best effort, so that a message the milter tempfails gets no copy.
#[derive(Debug)]
pub(super) struct Uncommitted {
    pub(super) id: SegmentId,
    pub(super) path: PathBuf,
    pub(super) len: u64,
    pub(super) committed: bool,
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

/// The outcome of one op, ready to send.
struct Reply {
    answer: Answer,
    result: Result<EntryId, SpoolError>,
}

fn send_all(replies: Vec<Reply>) {
    for Reply { answer, result } in replies {
        // A caller that went away has its op committed all the same.
        let _ = answer.send(result);
    }
}

/// The committer role, held by one thread at a time. If that thread unwinds, its batch's
/// writes are withdrawn (see [`Withdrawal`]), the ops of that batch fail (their callers get
/// [`SpoolError::Task`]), and the role passes to a new thread for the ops queued since.
pub(super) struct Committer {
    inner: Arc<Inner>,
    finished: bool,
}

impl Committer {
    /// Commits batches until the queue is empty. The last batch is answered only after this
    /// thread has let go of the spool, so that a caller that drops its last handle on hearing
    /// the answer releases the spool's lock with it.
    pub(super) fn drain(inner: Arc<Inner>) {
        let mut this = Committer {
            inner,
            finished: false,
        };
        let mut active = this.inner.lock_commits().active.take();
        loop {
            #[cfg(test)]
            this.inner.hooks.gather(&this.inner.commits);
            let batch = std::mem::take(&mut this.inner.lock_commits().waiting);
            let replies = if batch.is_empty() {
                Vec::new()
            } else {
                this.inner.commit_batch(&mut active, batch)
            };
            let mut queue = this.inner.lock_commits();
            if queue.waiting.is_empty() {
                queue.draining = false;
                queue.active = active;
                drop(queue);
                this.finished = true;
                drop(this);
                send_all(replies);
                return;
            }
            drop(queue);
            send_all(replies);
        }
    }
}

impl Drop for Committer {
    /// The committer unwound (a bug): its batch failed as it unwound. Ops that queued up
    /// meanwhile (some may have queued after their callers heard of the failure) get a new
    /// committer, on a thread of its own.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let waiting = self.inner.lock_commits().waiting.len();
        tracing::error!(waiting, "spool committer stopped; its batch failed");
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("spool-committer".to_string())
            .spawn(move || Committer::drain(inner));
        if let Err(e) = spawned {
            let stranded = {
                let mut queue = self.inner.lock_commits();
                queue.draining = false;
                std::mem::take(&mut queue.waiting)
            };
            tracing::error!(error = %e, stranded = stranded.len(), "cannot start a new spool committer; failing the commits left");
        }
    }
}

/// What a batch wrote, undone unless [`Withdrawal::disarm`] is called: each touched segment
/// cut back to its length before the batch, a segment created by the batch unlinked. Runs on
/// failure and when the committer unwinds.
struct Withdrawal<'a> {
    inner: &'a Inner,
    /// (segment, its file, its length before the batch).
    cut: Vec<(SegmentId, Arc<File>, u64)>,
    created: Option<SegmentId>,
    armed: bool,
}

impl Withdrawal<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Withdrawal<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut broken = Vec::new();
        for (segment, file, len) in &self.cut {
            if Some(*segment) == self.created {
                continue;
            }
            if let Err(e) = file.set_len(*len).and_then(|()| file.sync_data()) {
                let path = self.inner.segment_path(segment);
                tracing::error!(path = %path.display(), error = %e, "cannot withdraw the records of a failed commit batch; nothing more is appended to this segment, and its entries may be delivered after a restart");
                broken.push(*segment);
            }
        }
        let mut index = self.inner.lock_index();
        for segment in broken {
            if let Some(info) = index.segments.get_mut(&segment) {
                info.broken = true;
            }
        }
        drop(index);
        if let Some(segment) = self.created {
            // Unlinked before it leaves the index, so that no listing adopts it in between.
            let path = self.inner.segment_path(&segment);
            if let Err(e) = fs::remove_file(&path) {
                tracing::error!(path = %path.display(), error = %e, "cannot remove a segment whose creation failed");
            }
            self.inner.lock_index().segments.remove(&segment);
        }
    }
}

/// Where one op's record goes, once planned.
#[derive(Debug)]
enum Planned {
    /// Appended to `segment`; `slot` is the entry's or the target entry's place.
    Record { segment: SegmentId, record: Vec<u8> },
    /// Nothing to write (a renamed entry).
    Renamed,
}

impl Inner {
    pub(super) fn lock_commits(&self) -> MutexGuard<'_, CommitQueue> {
        // Nothing that can panic runs under this lock; a poisoned queue is still consistent.
        self.commits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an op for the next batch. True if the caller must now become the committer
    /// ([`Committer::drain`]): no committer was at work.
    pub(super) fn enqueue(&self, pending: Pending) -> bool {
        let mut queue = self.lock_commits();
        queue.waiting.push(pending);
        if queue.draining {
            return false;
        }
        queue.draining = true;
        true
    }

    /// One batch: plan, write, sync, update the index, answer (see the module doc). `active`
    /// is the segment new entries go to; it is replaced when full, created when missing, and
    /// dropped if a failed write to it cannot be undone.
    fn commit_batch(&self, active: &mut Option<Active>, batch: Vec<Pending>) -> Vec<Reply> {
        #[cfg(test)]
        self.hooks.record_batch(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let mut ops = Vec::with_capacity(batch.len());
        // Plan: targets of state and done records; ops on entries that are not pending are
        // answered at once and take no part in the batch.
        {
            let index = self.lock_index();
            let mut done_here = Vec::new();
            for Pending { op, answer } in batch {
                let target = match &op {
                    Op::State { id, .. } | Op::Done { id } => {
                        match index.entries.get(id).filter(|_| !done_here.contains(id)) {
                            Some(slot) => {
                                if matches!(op, Op::Done { .. }) {
                                    done_here.push(*id);
                                }
                                if index.segments.get(&slot.segment).is_some_and(|s| s.broken) {
                                    replies.push(Reply {
                                        answer,
                                        result: Err(self.broken_segment(&slot.segment)),
                                    });
                                    continue;
                                }
                                Some(*slot)
                            }
                            None => {
                                replies.push(Reply {
                                    answer,
                                    result: Err(self.unknown(Area::Queue, id)),
                                });
                                continue;
                            }
                        }
                    }
                    _ => None,
                };
                ops.push((op, target, answer));
            }
        }
        if ops.is_empty() {
            return replies;
        }
        match self.write_batch(active, &mut ops) {
            Ok(()) => {
                let mut new_entries = Vec::new();
                for (op, _, answer) in ops {
                    let id = match op {
                        Op::State { id, .. } | Op::Done { id } => id,
                        Op::Append { id, .. } => {
                            new_entries.push(id);
                            id
                        }
                        Op::Renamed {
                            id, mut segment, ..
                        } => {
                            segment.committed = true;
                            new_entries.push(id);
                            id
                        }
                    };
                    replies.push(Reply {
                        answer,
                        result: Ok(id),
                    });
                }
                if !new_entries.is_empty() {
                    // The batch is durable: wake the delivery workers.
                    self.note_committed(new_entries.into_iter());
                    self.committed.notify_one();
                }
            }
            Err(e) => {
                for (op, _, answer) in ops {
                    if let Op::Renamed { segment, .. } = op {
                        // Unlinked (by the drop) before it leaves the index, so that no
                        // listing adopts it in between.
                        let id = segment.id;
                        drop(segment);
                        self.lock_index().segments.remove(&id);
                    }
                    replies.push(Reply {
                        answer,
                        result: Err(copy_error(&e)),
                    });
                }
            }
        }
        replies
    }

    /// Writes and syncs the batch's records, then records them in the index. On error nothing
    /// of the batch stays (the [`Withdrawal`] and the renamed entries' [`Uncommitted`] undo it).
    fn write_batch(
        &self,
        active: &mut Option<Active>,
        ops: &mut [(Op, Option<Slot>, Answer)],
    ) -> Result<(), SpoolError> {
        let mut withdrawal = Withdrawal {
            inner: self,
            cut: Vec::new(),
            created: None,
            armed: true,
        };
        let mut dir_sync = false;
        if ops.iter().any(|(op, ..)| matches!(op, Op::Append { .. })) {
            let full = match active {
                Some(a) => !self
                    .lock_index()
                    .segments
                    .get(&a.id)
                    .is_some_and(|s| s.len < SEGMENT_BYTES && !s.broken),
                None => true,
            };
            if full {
                if let Some(old) = active.take() {
                    self.retire(old.id);
                }
                let created = self.create_segment()?;
                withdrawal.created = Some(created.id);
                dir_sync = true;
                *active = Some(created);
            }
        }
        let active_id = active.as_ref().map(|a| a.id);
        // The records of each segment, in op order.
        let mut plan: Vec<Planned> = Vec::with_capacity(ops.len());
        // Each segment's records, written with one pwritev from the ops' own buffers.
        let mut per_segment: BTreeMap<SegmentId, Vec<Vec<u8>>> = BTreeMap::new();
        for (op, target, _) in ops.iter_mut() {
            let planned = match (op, target) {
                (Op::Append { record, .. }, _) => Planned::Record {
                    // Created above when missing.
                    segment: active_id.ok_or_else(|| {
                        SpoolError::Task("no active segment for new entries".to_string())
                    })?,
                    record: std::mem::take(record),
                },
                (Op::Renamed { .. }, _) => {
                    dir_sync = true;
                    Planned::Renamed
                }
                (Op::State { json, .. }, Some(slot)) => Planned::Record {
                    segment: slot.segment,
                    record: small_record(Kind::State, slot.offset, json),
                },
                (Op::Done { .. }, Some(slot)) => Planned::Record {
                    segment: slot.segment,
                    record: small_record(Kind::Done, slot.offset, &[]),
                },
                // Every state and done op got its target when the batch was planned.
                (Op::State { .. } | Op::Done { .. }, None) => {
                    return Err(SpoolError::Task(
                        "a state or done record without its entry".to_string(),
                    ))
                }
            };
            plan.push(planned);
        }
        // Offsets: each segment's records follow its current end, in op order.
        let starts: BTreeMap<SegmentId, u64> = {
            let index = self.lock_index();
            plan.iter()
                .filter_map(|p| match p {
                    Planned::Record { segment, .. } => Some(*segment),
                    Planned::Renamed => None,
                })
                .map(|s| (s, index.segments.get(&s).map_or(0, |i| i.len)))
                .collect()
        };
        let mut offsets = Vec::with_capacity(plan.len());
        let mut ends = starts.clone();
        for p in plan {
            match p {
                Planned::Record { segment, record } => {
                    let end = ends.entry(segment).or_default();
                    offsets.push(Some(*end));
                    *end += record.len() as u64;
                    per_segment.entry(segment).or_default().push(record);
                }
                Planned::Renamed => offsets.push(None),
            }
        }
        for (segment, records) in &per_segment {
            let start = starts.get(segment).copied().unwrap_or(0);
            let path = self.segment_path(segment);
            let file = match active.as_ref().filter(|a| a.id == *segment) {
                Some(a) => Ok(Arc::clone(&a.file)),
                None => OpenOptions::new().write(true).open(&path).map(Arc::new),
            }
            .map_err(super::io_err("open segment", &path))?;
            let written = self.append(&file, &path, records, start);
            // Cut back on failure even after a partial write.
            withdrawal.cut.push((*segment, file, start));
            written?;
        }
        #[cfg(test)]
        self.hooks.crash_point("records written, not synced");
        // Done marks alone are not synced: they become durable with the next fdatasync of
        // their segment (which every later synced record forces) or the kernel's writeback;
        // one lost to a power failure only delivers its copy again, and the stores recognise
        // a copy they already hold (see `Spool::complete`).
        let lazy = ops.iter().all(|(op, ..)| matches!(op, Op::Done { .. }));
        if !lazy {
            for (segment, file, _) in &withdrawal.cut {
                self.sync_segment(file, segment)?;
            }
        }
        #[cfg(test)]
        self.hooks.crash_point("records synced");
        if dir_sync {
            self.sync_queue_dir()
                .map_err(super::io_err("fsync directory", &self.queue.path))?;
            #[cfg(test)]
            self.hooks.crash_point("directory synced");
        }
        // Durable. Record it.
        let mut gone = Vec::new();
        {
            let mut index = self.lock_index();
            for segment in per_segment.keys() {
                if let (Some(info), Some(end)) =
                    (index.segments.get_mut(segment), ends.get(segment))
                {
                    info.len = *end;
                }
            }
            for ((op, target, _), offset) in ops.iter().zip(offsets) {
                match (op, target, offset) {
                    (
                        Op::Append {
                            id,
                            data_len,
                            json_len,
                            ..
                        },
                        _,
                        Some(offset),
                    ) => {
                        let Some(segment) = active_id else { continue };
                        index.entries.insert(
                            *id,
                            Slot {
                                segment,
                                offset,
                                data_len: *data_len,
                                json_len: *json_len,
                                state: None,
                                recovered: false,
                            },
                        );
                        if let Some(info) = index.segments.get_mut(&segment) {
                            info.live += 1;
                        }
                    }
                    (
                        Op::Renamed {
                            id,
                            segment,
                            data_len,
                            json_len,
                        },
                        ..,
                    ) => {
                        index.segments.insert(
                            segment.id,
                            SegmentInfo {
                                len: segment.len,
                                live: 1,
                                broken: false,
                            },
                        );
                        index.entries.insert(
                            *id,
                            Slot {
                                segment: segment.id,
                                offset: 0,
                                data_len: *data_len,
                                json_len: *json_len,
                                state: None,
                                recovered: false,
                            },
                        );
                    }
                    (Op::State { id, json }, _, Some(offset)) => {
                        if let Some(slot) = index.entries.get_mut(id) {
                            slot.state = Some((offset + HEADER_LEN, json.len() as u64));
                        }
                    }
                    (Op::Done { id }, Some(slot), Some(_)) => {
                        index.entries.remove(id);
                        if let Some(info) = index.segments.get_mut(&slot.segment) {
                            info.live = info.live.saturating_sub(1);
                            if info.live == 0 && Some(slot.segment) != active_id {
                                gone.push(slot.segment);
                            }
                        }
                    }
                    _ => {}
                }
            }
            for segment in &gone {
                index.segments.remove(segment);
            }
        }
        withdrawal.disarm();
        for segment in gone {
            self.remove_segment(&segment);
        }
        Ok(())
    }

    /// A full (or broken) active segment takes no more entries; removed if nothing in it is
    /// pending any more.
    fn retire(&self, segment: SegmentId) {
        let empty = {
            let mut index = self.lock_index();
            let empty = !index.segments.get(&segment).is_some_and(|s| s.live > 0);
            if empty {
                index.segments.remove(&segment);
            }
            empty
        };
        if empty {
            self.remove_segment(&segment);
        }
    }

    /// Unlinks a segment none of whose entries is pending. Not fsynced: should a crash undo
    /// the unlink, the segment comes back with every entry done, and `open` removes it again.
    pub(super) fn remove_segment(&self, segment: &SegmentId) {
        let path = self.segment_path(segment);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a delivered spool segment");
            }
        }
    }

    /// Creates a new, empty active segment, preallocated with zeros (see [`SEGMENT_BYTES`];
    /// the batch's fdatasync makes them durable), registered in the index first, so that no
    /// directory listing adopts it meanwhile.
    fn create_segment(&self) -> Result<Active, SpoolError> {
        let id = self.next_id();
        self.lock_index()
            .segments
            .insert(id, SegmentInfo::default());
        let path = self.segment_path(&id);
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(super::io_err("create segment", &path))
            .and_then(|file| {
                let zeroed = (0..SEGMENT_BYTES)
                    .step_by(ZEROS.len())
                    .try_for_each(|at| file.write_all_at(&ZEROS, at));
                match zeroed {
                    Ok(()) => Ok(file),
                    Err(e) => {
                        let _ = fs::remove_file(&path);
                        Err(super::io_err("preallocate segment", &path)(e))
                    }
                }
            });
        match created {
            Ok(file) => Ok(Active {
                id,
                file: Arc::new(file),
            }),
            Err(e) => {
                self.lock_index().segments.remove(&id);
                Err(e)
            }
        }
    }

    fn append(
        &self,
        file: &File,
        path: &std::path::Path,
        records: &[Vec<u8>],
        at: u64,
    ) -> Result<(), SpoolError> {
        #[cfg(test)]
        self.hooks
            .write_fault()
            .map_err(super::io_err("append to", path))?;
        write_all_vectored_at(file, records, at).map_err(super::io_err("append to", path))
    }

    fn sync_segment(&self, file: &File, segment: &SegmentId) -> Result<(), SpoolError> {
        let path = self.segment_path(segment);
        #[cfg(test)]
        self.hooks
            .data_sync_fault()
            .map_err(super::io_err("fdatasync", &path))?;
        file.sync_data().map_err(super::io_err("fdatasync", &path))
    }

    fn sync_queue_dir(&self) -> io::Result<()> {
        #[cfg(test)]
        self.hooks.dir_sync_fault()?;
        self.queue.handle.sync_all()
    }

    fn broken_segment(&self, segment: &SegmentId) -> SpoolError {
        SpoolError::Io {
            op: "append to",
            path: self.segment_path(segment),
            error: io::Error::other(
                "an earlier failed write could not be undone; restart submitgate to repair the segment",
            ),
        }
    }
}

/// Writes `records` one after another at `at`: `pwritev`, as many records a call as it takes
/// (at most `IOV_MAX`), again after a short write.
pub(super) fn write_all_vectored_at(
    file: &File,
    records: &[Vec<u8>],
    mut at: u64,
) -> io::Result<()> {
    /// Linux's `IOV_MAX`.
    const MAX_SLICES: usize = 1024;
    // The first record not wholly written, and how much of it is.
    let (mut next, mut done) = (0, 0);
    while next < records.len() {
        let slices: Vec<IoSlice<'_>> = records[next..]
            .iter()
            .enumerate()
            .map(|(i, r)| IoSlice::new(if i == 0 { &r[done..] } else { r }))
            .take(MAX_SLICES)
            .collect();
        let mut written = match rustix::io::pwritev(file, &slices, at) {
            Ok(0) if slices.iter().any(|s| !s.is_empty()) => {
                return Err(io::ErrorKind::WriteZero.into())
            }
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
        };
        at += written as u64;
        // Past the records written whole, into the one cut short.
        for slice in &slices {
            if written < slice.len() {
                done += written;
                break;
            }
            written -= slice.len();
            next += 1;
            done = 0;
        }
    }
    Ok(())
}

/// The same error again, for each op of a batch that one error failed.
fn copy_error(error: &SpoolError) -> SpoolError {
    match error {
        SpoolError::Io { op, path, error } => SpoolError::Io {
            op,
            path: path.clone(),
            error: match error.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(error.kind(), error.to_string()),
            },
        },
        other => SpoolError::Task(other.to_string()),
    }
}
