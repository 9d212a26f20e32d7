//! [`SpoolWriter`] captures one message from async code into an entry record: the buffer
//! starts with room for the record header, a write only copies into it and feeds the record's
//! checksum, and every [`WRITE_BUFFER`] bytes it is written through to a temp file on tokio's
//! blocking pool (a page-cache write can stall under dirty-page throttling). At
//! [`SpoolWriter::commit`] a message that never left the buffer — most mail — becomes a record
//! appended to the active segment by the committer; a larger one finishes its temp file and
//! becomes a segment of its own. A message aborted before 64 KiB never touches the disk.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::commit::{Committer, Op, Pending, Uncommitted};
use super::format::{Checksum, Header, HEADER_LEN, MAX_META_BYTES};
use super::{blocking, EntryId, EntryMeta, Inner, Spool, SpoolError, FILE_MODE};
use crate::fsutil::TempFile;

/// Bytes a [`SpoolWriter`] buffers before writing through to its temp file.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// What a writer holds between calls: the buffer, the (maybe not yet created) temp file and
/// the checksum of the message so far.
#[derive(Debug)]
pub(super) struct Capture {
    pub(super) buf: Vec<u8>,
    temp: TempFile,
    /// Bytes already in the temp file (the header's room included).
    flushed: u64,
    crc: Checksum,
}

impl Capture {
    fn flush(&mut self) -> Result<(), SpoolError> {
        self.temp.write_all(&self.buf)?;
        self.flushed += self.buf.len() as u64;
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
    /// A writer whose temp file will be `path` (created by the first write-through).
    pub(super) fn new(spool: Spool, path: PathBuf) -> SpoolWriter {
        SpoolWriter {
            spool,
            state: Some(Capture {
                // Room for the record header, filled in at the commit.
                buf: vec![0; HEADER_LEN as usize],
                temp: TempFile::new(path.clone(), FILE_MODE),
                flushed: 0,
                crc: Checksum::default(),
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
        capture.crc.update(data);
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

    /// Makes the entry durable and visible (docs/architecture.md, "Commit sequence") and
    /// returns its id. `meta.size` is set to the bytes written. On error nothing is committed
    /// and the temp file, if any, is removed. The file work runs on the blocking pool: if this
    /// future is dropped, the commit still completes or fails there, unobserved.
    pub async fn commit(mut self, mut meta: EntryMeta) -> Result<EntryId, SpoolError> {
        let Some(mut capture) = self.state.take() else {
            return Err(self.failed());
        };
        let inner = Arc::clone(&self.spool.inner);
        inner.require_owner()?;
        meta.size = self.written;
        let json = serde_json::to_vec(&meta).map_err(|e| SpoolError::Encode {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if json.len() as u64 > MAX_META_BYTES {
            return Err(SpoolError::Encode {
                path: self.path.clone(),
                reason: format!("{} bytes of metadata", json.len()),
            });
        }
        capture.crc.update(&json);
        let id = inner.next_id();
        let header = Header::entry(id, self.written, json.len() as u64);
        let (answer, answered) = oneshot::channel();
        if capture.flushed == 0 {
            // Still all in memory: the buffer becomes the record, appended by the committer.
            let Capture { mut buf, crc, .. } = capture;
            buf[..HEADER_LEN as usize].copy_from_slice(&header.encode(crc));
            buf.extend_from_slice(&json);
            let op = Op::Append {
                id,
                record: buf,
                data_len: header.data_len,
                json_len: header.json_len,
            };
            if inner.enqueue(Pending { op, answer }) {
                drop(tokio::task::spawn_blocking(move || Committer::drain(inner)));
            }
        } else {
            // The thread is not awaited, the answer is: a thread that becomes the committer
            // answers this commit with its batch, then goes on draining later batches.
            drop(tokio::task::spawn_blocking(move || {
                finish_own_segment(inner, capture, id, header, &json, answer);
            }));
        }
        answered.await.map_err(|_| {
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

/// A large message's commit, on its own blocking-pool thread: the rest of the message and the
/// metadata written, the header filled in, fdatasync, then the file renamed into `queue/` as a
/// segment of its own (its name registered in the index first) and queued for the batch's
/// directory fsync. The thread becomes the committer if none is at work.
fn finish_own_segment(
    inner: Arc<Inner>,
    mut capture: Capture,
    id: EntryId,
    header: Header,
    json: &[u8],
    answer: oneshot::Sender<Result<EntryId, SpoolError>>,
) {
    let written = (|| -> Result<Uncommitted, SpoolError> {
        capture.buf.extend_from_slice(json);
        capture.flush()?;
        let encoded = header.encode(capture.crc.clone());
        capture
            .temp
            .with_file("write", |file| file.write_all_at(&encoded, 0))?;
        capture.temp.sync_data()?;
        let segment = inner.next_id();
        let dest = inner.segment_path(&segment);
        inner
            .lock_index()
            .segments
            .insert(segment, Default::default());
        let renamed = inner
            .rename_fault()
            .map_err(super::io_err("commit (rename) into", &dest))
            .and_then(|()| Ok(capture.temp.rename_to(&dest, "commit (rename) into")?));
        if let Err(e) = renamed {
            inner.lock_index().segments.remove(&segment);
            return Err(e);
        }
        #[cfg(test)]
        inner.hooks.crash_point("large entry renamed in");
        Ok(Uncommitted {
            id: segment,
            path: dest,
            len: capture.flushed,
            committed: false,
        })
    })();
    // Closed now, and removed unless it was renamed.
    drop(capture);
    match written {
        Ok(segment) => {
            let op = Op::Renamed {
                id,
                segment,
                data_len: header.data_len,
                json_len: header.json_len,
            };
            if inner.enqueue(Pending { op, answer }) {
                Committer::drain(inner);
            }
        }
        Err(e) => {
            // Let go of the spool before the caller hears (see `Committer::drain`).
            drop(inner);
            let _ = answer.send(Err(e));
        }
    }
}
