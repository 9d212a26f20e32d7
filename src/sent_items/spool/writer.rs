//! [`SpoolWriter`] captures one message from async code: a write only copies into a buffer of
//! [`WRITE_BUFFER`] bytes, written through to the temp file on tokio's blocking pool when it
//! fills (a page-cache write can stall under dirty-page throttling); the temp file is created
//! by the first write-through or by the commit, so a message aborted before 64 KiB never
//! touches the disk. [`SpoolWriter::commit`] hands the rest to the commit queue.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::format::encode_trailer;
use super::{blocking, commit, EntryId, EntryMeta, Spool, SpoolError, FILE_MODE};
use crate::fsutil::TempFile;

/// Bytes a [`SpoolWriter`] buffers before writing through to its temp file.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// What a writer holds between calls: the buffer and the (maybe not yet created) temp file.
#[derive(Debug)]
pub(super) struct Capture {
    pub(super) buf: Vec<u8>,
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
    pub(super) state: Option<Capture>,
    path: PathBuf,
    written: u64,
}

impl SpoolWriter {
    /// A writer whose temp file will be `path` (created by the first write-through or the
    /// commit).
    pub(super) fn new(spool: Spool, path: PathBuf) -> SpoolWriter {
        SpoolWriter {
            spool,
            state: Some(Capture {
                buf: Vec::new(),
                temp: TempFile::new(path.clone(), FILE_MODE),
            }),
            path,
            written: 0,
        }
    }

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

    /// Makes the entry durable and visible (the fsyncs: docs/architecture.md, "Commit
    /// sequence") and returns its id. `meta.size` is set to the bytes written. On error
    /// nothing is committed and the temp file is removed. The file work runs on the blocking
    /// pool: if this future is dropped, the commit still completes or fails there, unobserved.
    pub async fn commit(mut self, mut meta: EntryMeta) -> Result<EntryId, SpoolError> {
        let Some(mut capture) = self.state.take() else {
            return Err(self.failed());
        };
        meta.size = self.written;
        encode_trailer(&meta, self.written, &mut capture.buf).map_err(|e| SpoolError::Encode {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let inner = Arc::clone(&self.spool.inner);
        let (done, answer) = oneshot::channel();
        // The thread is not awaited, the answer is: a thread that becomes the committer
        // answers its own commit with its batch, then goes on draining later batches.
        drop(tokio::task::spawn_blocking(move || {
            let Capture { buf, temp } = capture;
            commit::commit_on_this_thread(inner, temp, &buf, done);
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
