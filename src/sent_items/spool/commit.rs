//! The commit queue (group commit). Each commit writes, fdatasyncs and renames its entry into
//! `queue/` on its own blocking-pool thread, then joins the queue; the thread that finds no
//! committer at work becomes it and drains the queue batch by batch, with **one** fsync of
//! `queue/` per batch: a lone commit is a batch of one, under load it approaches one fsync
//! per message. A failed directory fsync fails and withdraws (unlinks) its whole batch, so
//! the milter tempfails every message of it. The full sequence and its crash analysis are in
//! docs/architecture.md ("Commit sequence").

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::{Area, EntryId, Inner, SpoolError};
use crate::fsutil::TempFile;

/// Where a commit's outcome goes.
pub(super) type Done = oneshot::Sender<Result<EntryId, SpoolError>>;

/// The blocking-pool side of [`SpoolWriter::commit`](super::SpoolWriter::commit), run on the
/// commit's own thread: steps 1–3 (write `rest`, fdatasync, rename into `queue/`), then the
/// queue (steps 4–6), the outcome sent on `done`.
pub(super) fn commit_on_this_thread(
    inner: Arc<Inner>,
    mut temp: TempFile,
    rest: &[u8],
    done: Done,
) {
    let renamed = temp
        .write_all(rest)
        .and_then(|()| temp.sync_data())
        .map_err(SpoolError::from)
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
}

/// Entries renamed into `queue/` and waiting for the directory fsync, and whether a committer
/// is draining them. Never locked across I/O.
#[derive(Debug, Default)]
pub(super) struct CommitQueue {
    pub(super) waiting: Vec<PendingCommit>,
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
pub(super) struct PendingCommit {
    entry: Uncommitted,
    id: EntryId,
    done: Done,
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
    done: Done,
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

impl Inner {
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
        #[cfg(test)]
        self.hooks
            .rename_fault()
            .map_err(super::io_err("commit (rename) into", &dest))?;
        temp.rename_to(&dest, "commit (rename) into")?;
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
}

/// The same OS error again, for each commit of a batch that one error failed.
fn copy_io(error: &io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(error.kind(), error.to_string()),
    }
}
