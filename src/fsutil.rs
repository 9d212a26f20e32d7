//! Durable file-system steps shared by the spool, the Maildir store and the policy editor:
//! a temp file that is renamed into place or removed ([`TempFile`]), the whole
//! write → fsync → rename → directory fsync sequence ([`replace_file`]), directory fsync,
//! `flock(2)` locks and the host name, and where file work runs ([`run_blocking`]: inline on a
//! thread that may block, else on tokio's blocking pool). System calls go through `rustix`'s
//! safe wrappers.
//!
//! A leaf module: it knows nothing of the callers' error types. Every failure is a
//! [`FsError`] naming the step (`op`) and the path, which callers map into their own errors.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

/// A file-system step that failed: what was being done, to which path, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct FsError {
    /// The step, as a verb phrase: `create`, `write`, `fsync`, `rename into place`, …
    pub op: &'static str,
    /// The file or directory the step concerned.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl FsError {
    /// An error of step `op` on `path`.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> FsError {
        FsError {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `map_err` adapter: turns an `io::Error` of step `op` on `path` into an [`FsError`].
pub fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::new(op, path, source)
}

/// A file written under a temporary name, to be renamed into place once complete. It is
/// created on first use; dropped before [`rename_to`](TempFile::rename_to) succeeded, it is
/// unlinked again (a failure to do so is logged), so an incomplete file never stays behind.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    mode: u32,
    overwrite: bool,
    file: Option<File>,
    kept: bool,
}

impl TempFile {
    /// A temp file at `path` with permission bits `mode` (before the umask), not created
    /// yet. Creating it fails if the name exists, unless [`overwriting`](TempFile::overwriting).
    pub fn new(path: PathBuf, mode: u32) -> TempFile {
        TempFile {
            path,
            mode,
            overwrite: false,
            file: None,
            kept: false,
        }
    }

    /// Creation truncates a file left under the same name instead of failing (for temp
    /// names that are reused, such as a Maildir `tmp/` name derived from the message).
    pub fn overwriting(mut self) -> TempFile {
        self.overwrite = true;
        self
    }

    /// The temporary name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file exists on disk yet (it is created by the first write or sync).
    pub fn is_created(&self) -> bool {
        self.file.is_some()
    }

    /// Runs `f` on the file, creating it first if needed; an error of `f` is reported as
    /// step `op` on the temp path.
    pub fn with_file<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&File) -> io::Result<T>,
    ) -> Result<T, FsError> {
        let file = match &mut self.file {
            Some(file) => file,
            slot @ None => {
                let mut options = OpenOptions::new();
                options.write(true).mode(self.mode);
                if self.overwrite {
                    options.create(true).truncate(true);
                } else {
                    options.create_new(true);
                }
                let file = options.open(&self.path).map_err(at("create", &self.path))?;
                slot.insert(file)
            }
        };
        f(file).map_err(at(op, &self.path))
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), FsError> {
        self.with_file("write", |mut file| file.write_all(bytes))
    }

    /// `fdatasync`: the contents are durable (enough for a file that is then renamed).
    pub fn sync_data(&mut self) -> Result<(), FsError> {
        self.with_file("fsync", |file| file.sync_data())
    }

    /// `fsync`: the contents and all metadata (permissions, owner) are durable.
    pub fn sync_all(&mut self) -> Result<(), FsError> {
        self.with_file("fsync", |file| file.sync_all())
    }

    /// Renames the file to `dest` (atomic within one file system); from then on it is no
    /// longer removed on drop. The rename is durable only once `dest`'s directory is
    /// fsynced ([`fsync_dir`]), which is left to the caller so that it can share one
    /// directory fsync between several renames. A failure is step `op` on `dest`.
    pub fn rename_to(&mut self, dest: &Path, op: &'static str) -> Result<(), FsError> {
        fs::rename(&self.path, dest).map_err(at(op, dest))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.kept || self.file.is_none() {
            return;
        }
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temp file");
            }
        }
    }
}

/// How much of a temp file [`replace_file`] makes durable before the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// `fdatasync`: the contents (enough for a file whose metadata nobody relies on).
    Data,
    /// `fsync`: the contents and the metadata (permissions and owner set by `write`).
    All,
}

/// Replaces (or creates) `dest` durably with what `write` puts into `temp`: write, fsync as
/// `sync` says, rename over `dest`, fsync `dest`'s directory. On error before the rename
/// `dest` is unchanged and the temp file is removed.
pub fn replace_file<E: From<FsError>>(
    mut temp: TempFile,
    dest: &Path,
    sync: Sync,
    write: impl FnOnce(&mut TempFile) -> Result<(), E>,
) -> Result<(), E> {
    write(&mut temp)?;
    match sync {
        Sync::Data => temp.sync_data()?,
        Sync::All => temp.sync_all()?,
    }
    temp.rename_to(dest, "rename into place")?;
    Ok(fsync_dir(parent_of(dest))?)
}

/// The directory holding file `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the entries of directory `path` (creations, renames, unlinks) durable.
pub fn fsync_dir(path: &Path) -> Result<(), FsError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(at("fsync directory", path))
}

/// Takes an exclusive `flock(2)` on `file`, waiting for another holder to let go. The lock
/// belongs to the open file description: it goes when the file (every clone of its
/// descriptor) is closed.
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    rustix::fs::flock(file, FlockOperation::LockExclusive).map_err(io::Error::from)
}

/// Takes an exclusive `flock(2)` on `file` without waiting: an error of kind
/// [`io::ErrorKind::WouldBlock`] if another open file description holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<()> {
    rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive).map_err(io::Error::from)
}

/// This machine's host name (the `uname(2)` node name, as `gethostname(3)` returns it);
/// bytes that are not UTF-8 are replaced.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

thread_local! {
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one on which file work may block: [`run_blocking`] then runs it
/// in place. For threads that serve nothing else waiting on them (the Sent Items delivery
/// runtime's workers), never for the runtime that serves Postfix's connections.
pub fn allow_blocking_here() {
    MAY_BLOCK.with(|b| b.set(true));
}

/// Whether [`allow_blocking_here`] was called on this thread.
pub fn may_block() -> bool {
    MAY_BLOCK.with(std::cell::Cell::get)
}

/// Runs blocking file work: in place on a thread marked by [`allow_blocking_here`] (no hand-off
/// to another thread and back), otherwise on tokio's blocking pool. The error is the pool's,
/// when the task panicked or the runtime is shutting down.
pub async fn run_blocking<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if may_block() {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f).await
    }
}

#[cfg(test)]
mod tests;
