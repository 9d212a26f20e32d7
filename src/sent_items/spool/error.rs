//! [`SpoolError`], the one error type of the spool; errors about a file name its path.

use std::io;
use std::path::{Path, PathBuf};

use super::EntryId;
use crate::fsutil::FsError;

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
    /// A change to the queue asked of a spool opened beside its owner ([`Spool::attach`]),
    /// which may only read and move entries back from `failed/`.
    ///
    /// [`Spool::attach`]: super::Spool::attach
    #[error("spool {}: opened beside its owner (read-only): only the daemon changes the queue", path.display())]
    NotOwner { path: PathBuf },
    /// The blocking-pool task doing the file work panicked or was cancelled.
    #[error("spool: background file task failed: {0}")]
    Task(String),
}

impl SpoolError {
    /// True for an entry that exists but cannot be read; the caller should log it and
    /// [`Spool::fail`](super::Spool::fail) it rather than retry.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, SpoolError::Corrupt { .. })
    }
}

pub(super) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |error| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

impl From<FsError> for SpoolError {
    fn from(e: FsError) -> SpoolError {
        SpoolError::Io {
            op: e.op,
            path: e.path,
            error: e.source,
        }
    }
}

pub(super) fn corrupt(path: &Path, reason: impl Into<String>) -> SpoolError {
    SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
