//! Finding and reading policy files safely: which names count, what may be read (no symbolic
//! link out of the directory, no fifo, a size limit, UTF-8), and the directory's version hash
//! computed one file at a time.

use std::path::Path;

use super::load::MAX_FILE_BYTES;
use crate::yaml::ErrorKind;

/// The version [`super::load_dir`] would give the directory's files, computed one file at a time
/// without building a snapshot; `None` when a file or the directory cannot be read (the full
/// load then reports why).
pub fn version_of_dir(dir: &Path) -> Option<String> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if is_policy_file(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    let mut version = Version::default();
    for path in paths {
        let text = read_policy_file(dir, &path).ok()?;
        version.add(&path, digest(&text));
    }
    Some(version.finish())
}

/// Whether `path` is named like a policy file: `*.yaml`/`*.yml`, not hidden (editors' swap and
/// temp files start with a dot). Whether it may be read is [`read_policy_file`]'s business: a
/// name that matches but is not a regular file is an error, not silently skipped.
pub fn is_policy_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Reads the policy file `path` of the directory `dir`, refusing what must not be read: a
/// symbolic link that leads out of the directory (a link to `/etc/shadow` must not end up
/// quoted in error messages), anything but a regular file (a fifo would block the loader),
/// more than [`MAX_FILE_BYTES`], text that is not UTF-8. The file is opened without following
/// a link and checked on the open descriptor, so it cannot be swapped between check and read.
pub(super) fn read_policy_file(dir: &Path, path: &Path) -> Result<String, (ErrorKind, String)> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let unreadable =
        |e: &dyn std::fmt::Display| (ErrorKind::Unreadable, format!("cannot read: {e}"));
    let md = std::fs::symlink_metadata(path).map_err(|e| unreadable(&e))?;
    let real = if md.file_type().is_symlink() {
        let outside = || {
            (
                ErrorKind::OutsideDirectory,
                "is a symbolic link that leads out of the policy directory (or nowhere); refused"
                    .to_string(),
            )
        };
        let real = std::fs::canonicalize(path).map_err(|_| outside())?;
        let real_dir = std::fs::canonicalize(dir).map_err(|e| unreadable(&e))?;
        if !real.starts_with(&real_dir) {
            return Err(outside());
        }
        real
    } else {
        path.to_path_buf()
    };
    // NONBLOCK: opening a fifo must not wait for a writer; NOFOLLOW: no link swapped in.
    let fd = rustix::fs::open(
        &real,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| unreadable(&e))?;
    let mut file = std::fs::File::from(fd);
    let md = file.metadata().map_err(|e| unreadable(&e))?;
    if !md.is_file() {
        let what = if md.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err((
            ErrorKind::NotRegularFile,
            format!("is {what}, not a regular file; refused"),
        ));
    }
    if md.len() > MAX_FILE_BYTES {
        return Err((
            ErrorKind::TooLarge,
            format!("file is {} bytes; the limit is {MAX_FILE_BYTES}", md.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(md.len()).unwrap_or(0));
    (&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(&e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err((
            ErrorKind::TooLarge,
            format!("file grew past the limit of {MAX_FILE_BYTES} bytes while being read"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        (
            ErrorKind::NotUtf8,
            format!(
                "not valid UTF-8 (byte offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// What a policy file's text is, as a 128-bit XXH3 hash: two texts with the same digest are
/// taken to be the same text (a reload reuses the compiled table of a file whose name and
/// digest it already has).
pub(super) type Digest = u128;

/// The digest of a policy file's text.
pub(super) fn digest(text: &str) -> Digest {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

/// A hash over the names and digests of a directory's files, fed one file at a time in name
/// order: a version string that is stable across runs and equal for equal policies.
#[derive(Default)]
pub(super) struct Version(xxhash_rust::xxh3::Xxh3Default);

impl Version {
    pub(super) fn add(&mut self, path: &Path, digest: Digest) {
        self.0.update(
            path.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        self.0.update(&[0]);
        self.0.update(&digest.to_le_bytes());
    }

    pub(super) fn finish(&self) -> String {
        format!("{:016x}", self.0.digest())
    }
}
