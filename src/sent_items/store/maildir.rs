//! The `maildir` store: writes each copy straight into the mailbox's Maildir++ folder
//! (`<root>/.<folder>/cur/<name>:2,S`), the layout Dovecot reads, marked seen.
//!
//! The file name is derived from the spool entry id (`<secs>.M<usecs>P<pid>Q<seq>.<host>`), so
//! storing the same entry twice — after a crash between the rename and the spool's done mark
//! — renames onto the same name and leaves one copy: the store is idempotent and the workers
//! need no intent record for it. An entry read back after a restart comes as "maybe stored":
//! then a file of the same base name in `cur/` or `new/`, whatever flags a reader gave it
//! meanwhile, counts as the copy. Sequence per copy: create `tmp/<name>`, copy the message into
//! it inside the kernel (`copy_file_range` from the spool segment), `fdatasync`, rename to
//! `cur/<name>:2,S`, `fsync` the `cur/` directory — nine system calls with the closes, nothing
//! checked first in a folder the store already made or saw (docs/sent-items.md, "What a copy
//! costs").
//!
//! Not `O_TMPFILE` + `linkat` into `cur/`: `fdatasync` before the link writes the inode with no
//! link, and only a journal makes the link and the inode's new link count durable together. On
//! a journal-less ext4 a crash after the `cur/` fsync could leave the name pointing at an inode
//! that `e2fsck` then frees: a copy reported stored but lost. Making it safe takes a third
//! sync per copy (an `fsync` of the file after the link), which cost more than it saved.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{modified_utf7, split_mailbox, SentCopy, SentItemsStore, StoreError, Stored};
use crate::fsutil::{self, FsError, TempFile};
use crate::sent_items::spool::{EntryId, Message};

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;
/// How many folders the store remembers as existing. Beyond that the memory starts again
/// empty (a forgotten folder costs its next delivery a few `statx`), so that a server with
/// many mailboxes holds at most about a megabyte of paths.
const READY_LIMIT: usize = 8192;

/// Maildir++ delivery under a root template with `{domain}`, `{local}` and `{mailbox}`.
#[derive(Debug)]
pub struct MaildirStore {
    root: String,
    host: String,
    /// Folder directories known to exist with `tmp/`, `new/`, `cur/` (at most
    /// [`READY_LIMIT`]), so that a delivery into them checks nothing first.
    ready: Mutex<HashSet<PathBuf>>,
}

impl MaildirStore {
    /// A store for the (already validated) root template.
    pub fn new(root: String) -> MaildirStore {
        MaildirStore {
            root,
            host: maildir_host(&fsutil::hostname()),
            ready: Mutex::new(HashSet::new()),
        }
    }

    /// The folder directory for a mailbox and folder, or why the names cannot be used in a
    /// path.
    pub fn folder_dir(&self, mailbox: &str, folder: &str) -> Result<PathBuf, String> {
        let root = expand_root(&self.root, mailbox)?;
        Ok(match folder_component(folder)? {
            None => root,
            Some(component) => root.join(component),
        })
    }

    fn is_ready(&self, dir: &Path) -> bool {
        self.ready.lock().is_ok_and(|set| set.contains(dir))
    }

    fn mark_ready(&self, dir: PathBuf) {
        if let Ok(mut set) = self.ready.lock() {
            if set.len() >= READY_LIMIT {
                set.clear();
            }
            set.insert(dir);
        }
    }
}

impl SentItemsStore for MaildirStore {
    fn name(&self) -> &'static str {
        "maildir"
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn blocking_io(&self) -> bool {
        true
    }

    async fn deliver(&self, copy: SentCopy<'_>) -> Result<Stored, StoreError> {
        let dir = self
            .folder_dir(&copy.meta.mailbox, &copy.meta.folder)
            .map_err(StoreError::permanent)?;
        let base = file_base(&copy.id, &self.host);
        let ready = self.is_ready(&dir);
        let maybe_stored = copy.maybe_stored;
        let message = copy.message;
        let size = message.len();
        let task_dir = dir.clone();
        let result = fsutil::run_blocking(move || -> Result<Stored, StoreError> {
            let dir = task_dir;
            if !ready {
                ensure_folder(&dir)?;
            }
            let tmp = dir.join("tmp").join(&base);
            let name = format!("{base},S={size}:2,S");
            let dest = dir.join("cur").join(&name);
            if maybe_stored && (dest.exists() || find_existing(&dir, &base)?) {
                return Ok(Stored {
                    appenduid: None,
                    already_stored: true,
                });
            }
            write_copy(&dir, ready, tmp, &dest, message, size)?;
            Ok(Stored::default())
        })
        .await
        .map_err(|e| StoreError::transient(format!("maildir: delivery task failed: {e}")))?;
        if result.is_ok() && !ready {
            self.mark_ready(dir);
        } else if result.is_err() {
            // Perhaps the folder was removed under us: check it again next time.
            if let Ok(mut set) = self.ready.lock() {
                set.remove(&dir);
            }
        }
        result
    }

    async fn release_idle(&self, _all: bool) {}
}

/// Copies the message into `out` inside the kernel: `copy_file_range` (which may share the
/// blocks where the file system can), or `sendfile` where the two files are on different file
/// systems, or plain reads and writes where neither works. (std's `io::copy` would first ask
/// `statx` of both files which copy to use: two more calls per copy.)
fn copy_message(reader: &mut io::Take<File>, out: &File) -> io::Result<u64> {
    use rustix::io::Errno;
    let mut copied = 0u64;
    let mut kernel_copy = KernelCopy::Range;
    while reader.limit() > 0 {
        let chunk = usize::try_from(reader.limit())
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        let result = match kernel_copy {
            KernelCopy::Range => {
                rustix::fs::copy_file_range(reader.get_ref(), None, out, None, chunk)
            }
            KernelCopy::Send => rustix::fs::sendfile(out, reader.get_ref(), None, chunk),
        };
        match result {
            Ok(0) => break,
            Ok(n) => {
                let n = n as u64;
                copied += n;
                reader.set_limit(reader.limit().saturating_sub(n));
            }
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)
                if kernel_copy == KernelCopy::Range =>
            {
                kernel_copy = KernelCopy::Send;
            }
            Err(Errno::INVAL | Errno::NOSYS) if copied == 0 => {
                let mut out = out;
                return io::copy(reader, &mut out);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(copied)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelCopy {
    Range,
    Send,
}

/// Writes the copy to `tmp`, `fdatasync`s it, renames it to `dest` in `cur/` and `fsync`s
/// `cur/`. If the folder was known to exist (`ready`) but creating `tmp` finds it gone, the
/// folder is made again and the copy written into it, rather than failing the attempt.
fn write_copy(
    dir: &Path,
    ready: bool,
    tmp: PathBuf,
    dest: &Path,
    message: Message,
    size: u64,
) -> Result<(), StoreError> {
    let mut temp = TempFile::new(tmp, FILE_MODE).overwriting();
    if let Err(e) = temp.with_file("create", |_| Ok(())) {
        if !(ready && e.source.kind() == io::ErrorKind::NotFound) {
            return Err(Failed::from(e).0);
        }
        ensure_folder(dir)?;
        temp.with_file("create", |_| Ok(()))
            .map_err(|e| Failed::from(e).0)?;
    }
    let mut reader = message.into_read();
    let copied = temp
        .with_file("write", |file| copy_message(&mut reader, file))
        .map_err(|e| Failed::from(e).0)?;
    if copied != size {
        return Err(StoreError::transient(format!(
            "maildir: {}: copied {copied} of {size} bytes (spool entry changed?)",
            temp.path().display()
        )));
    }
    temp.sync_data().map_err(|e| Failed::from(e).0)?;
    temp.rename_to(dest, "rename into place")
        .map_err(|e| Failed::from(e).0)?;
    fsync_dir(fsutil::parent_of(dest))
}

fn at(op: &'static str, path: &Path, e: io::Error) -> StoreError {
    Failed::from(FsError::new(op, path, e)).0
}

/// A failed delivery step as the store reports it (`maildir: cannot <op> <path>: <error>`).
struct Failed(StoreError);

impl From<FsError> for Failed {
    fn from(e: FsError) -> Failed {
        Failed(classify(&e))
    }
}

/// The class of a file-system error (README, "Sent Items copies"): a name the file system
/// cannot hold, or a file too large for it, is permanent for this copy; a directory that is
/// not one, not writable, read-only or a symlink loop is the operator's to fix (a problem of
/// the mailboxes below the directory in the way); anything else (full disk, quota, I/O
/// error, out of descriptors) may clear by itself.
pub fn classify(e: &FsError) -> StoreError {
    use rustix::io::Errno;
    let message = format!("maildir: {e}");
    match Errno::from_io_error(&e.source) {
        Some(Errno::NAMETOOLONG | Errno::ILSEQ | Errno::FBIG) => StoreError::permanent(message),
        Some(
            Errno::ACCESS
            | Errno::PERM
            | Errno::NOTDIR
            | Errno::ISDIR
            | Errno::ROFS
            | Errno::LOOP
            | Errno::XDEV,
        ) => {
            let cause = format!(
                "maildir: cannot {} below {}: {}",
                e.op,
                in_the_way(&e.path).display(),
                e.source
            );
            StoreError::configuration_for_mailboxes(cause, message)
        }
        _ => StoreError::transient(message),
    }
}

/// The deepest existing ancestor of `path` (the directory in the way: not writable, or not a
/// directory), so that every mailbox below it shares one cause.
fn in_the_way(path: &Path) -> &Path {
    path.ancestors()
        .skip(1)
        .find(|p| !p.as_os_str().is_empty() && fs::symlink_metadata(p).is_ok())
        .unwrap_or(path)
}

/// The unique part of the file name for an entry: Maildir's `<secs>.M<usecs>P<pid>Q<seq>.<host>`
/// with the entry's commit time, committing process and counter.
pub fn file_base(id: &EntryId, host: &str) -> String {
    // EntryId's text form is `<secs>.<usecs, 6 digits>-<pid>-<seq>`.
    let text = id.to_string();
    let parsed = text.split_once('.').and_then(|(secs, rest)| {
        let mut parts = rest.splitn(3, '-');
        let usecs = parts.next()?.trim_start_matches('0');
        Some((secs, usecs, parts.next()?, parts.next()?))
    });
    match parsed {
        Some((secs, usecs, pid, seq)) => {
            let usecs = if usecs.is_empty() { "0" } else { usecs };
            format!("{secs}.M{usecs}P{pid}Q{seq}.{host}")
        }
        None => format!("{text}.{host}"),
    }
}

/// The host part of a Maildir name: `/` and `:` are written as `\057` and `\072`, as Maildir
/// readers expect.
pub fn maildir_host(host: &str) -> String {
    let host = if host.is_empty() { "localhost" } else { host };
    host.replace('/', "\\057").replace(':', "\\072")
}

/// Expands `{domain}`, `{local}`, `{mailbox}` in a (validated) root template. The address parts
/// come from a login, so they are refused when they could leave the intended directory.
pub fn expand_root(template: &str, mailbox: &str) -> Result<PathBuf, String> {
    let (local, domain) = split_mailbox(mailbox);
    for (what, part) in [
        ("mailbox", mailbox),
        ("local part", local),
        ("domain", domain),
    ] {
        if part.contains('/') || part.contains('\0') || part == "." || part == ".." {
            return Err(format!(
                "maildir: {what} of {mailbox:?} cannot be used in a path"
            ));
        }
    }
    if local.is_empty() {
        return Err(format!(
            "maildir: mailbox {mailbox:?} has an empty local part"
        ));
    }
    let path = template
        .replace("{mailbox}", mailbox)
        .replace("{local}", local)
        .replace("{domain}", domain);
    Ok(PathBuf::from(path))
}

/// The Maildir++ directory of a folder: `.Sent Items` (`.` separates levels: `.Archive.2024`;
/// names beyond ASCII in modified UTF-7, as Dovecot stores them); `None` for `INBOX`, the root
/// itself.
pub fn folder_component(folder: &str) -> Result<Option<String>, String> {
    if folder.eq_ignore_ascii_case("INBOX") {
        return Ok(None);
    }
    let bad = folder.is_empty()
        || folder.contains('/')
        || folder.contains('\0')
        || folder.starts_with('.')
        || folder.ends_with('.')
        || folder.contains("..");
    if bad {
        return Err(format!(
            "maildir: folder {folder:?} cannot be used as a Maildir++ folder"
        ));
    }
    Ok(Some(format!(".{}", modified_utf7(folder))))
}

/// Creates the folder with `tmp/`, `new/`, `cur/` (and the root's own, and the
/// `maildirfolder` marker) where missing, then fsyncs once each directory that gained an
/// entry (a new mailbox: five directory fsyncs rather than one per `mkdir`). All of it is
/// durable before the copy is written, let alone reported stored.
fn ensure_folder(dir: &Path) -> Result<(), StoreError> {
    let is_sub = dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
    let mut roots = vec![dir.to_path_buf()];
    if is_sub {
        if let Some(root) = dir.parent() {
            roots.push(root.to_path_buf());
        }
    }
    let mut changed = Vec::new();
    for d in &roots {
        for sub in ["tmp", "new", "cur"] {
            ensure_dir(&d.join(sub), &mut changed)?;
        }
    }
    if is_sub {
        let marker = dir.join("maildirfolder");
        if !marker.exists() {
            File::create(&marker).map_err(|e| at("create", &marker, e))?;
            note_changed(&mut changed, dir);
        }
    }
    changed.iter().try_for_each(|d| fsync_dir(d))
}

/// Creates directory `path` and its missing ancestors, noting in `changed` each directory
/// that gained an entry (to be fsynced by the caller).
fn ensure_dir(path: &Path, changed: &mut Vec<PathBuf>) -> Result<(), StoreError> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.is_dir() {
            ensure_dir(parent, changed)?;
        }
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(at("create directory", path, e)),
    }
    note_changed(changed, fsutil::parent_of(path));
    Ok(())
}

fn note_changed(changed: &mut Vec<PathBuf>, dir: &Path) {
    if !changed.iter().any(|d| d == dir) {
        changed.push(dir.to_path_buf());
    }
}

fn fsync_dir(path: &Path) -> Result<(), StoreError> {
    fsutil::fsync_dir(path).map_err(|e| Failed::from(e).0)
}

/// Whether `cur/` or `new/` already holds a file with this base name (whatever its flags).
fn find_existing(dir: &Path, base: &str) -> Result<bool, StoreError> {
    for sub in ["cur", "new"] {
        let sub = dir.join(sub);
        let read = |e| at("read directory", &sub, e);
        for entry in fs::read_dir(&sub).map_err(read)? {
            let name = entry.map_err(read)?.file_name();
            let name = name.to_string_lossy();
            let stem = name.split([',', ':']).next().unwrap_or_default();
            if stem == base {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_templates_expand_and_refuse_escapes() {
        let t = "/var/mail/{domain}/{local}/Maildir";
        assert_eq!(
            expand_root(t, "alice@contoso.com").unwrap(),
            PathBuf::from("/var/mail/contoso.com/alice/Maildir")
        );
        assert_eq!(
            expand_root("/m/{mailbox}", "alice@contoso.com").unwrap(),
            PathBuf::from("/m/alice@contoso.com")
        );
        assert_eq!(
            expand_root(t, "printer").unwrap(),
            PathBuf::from("/var/mail//printer/Maildir")
        );
        for bad in [
            "../x@contoso.com",
            "a/b@contoso.com",
            "x@..",
            "x@a/b",
            "@contoso.com",
            "..",
        ] {
            assert!(expand_root(t, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn folders_map_to_maildirplusplus() {
        assert_eq!(
            folder_component("Sent Items").unwrap().as_deref(),
            Some(".Sent Items")
        );
        assert_eq!(
            folder_component("Archive.2024").unwrap().as_deref(),
            Some(".Archive.2024")
        );
        assert_eq!(folder_component("inbox").unwrap(), None);
        assert_eq!(
            folder_component("Éléments envoyés").unwrap().as_deref(),
            Some(".&AMk-l&AOk-ments envoy&AOk-s")
        );
        for bad in ["", "a/b", ".hidden", "x.", "a..b"] {
            assert!(folder_component(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_come_from_the_entry_id() {
        let id: EntryId = "1718022896.000042-4242-7".parse().unwrap();
        assert_eq!(file_base(&id, "mx1"), "1718022896.M42P4242Q7.mx1");
        let id: EntryId = "1718022896.000000-1-0".parse().unwrap();
        assert_eq!(file_base(&id, "mx1"), "1718022896.M0P1Q0.mx1");
        assert_eq!(maildir_host("a/b:c"), "a\\057b\\072c");
        assert_eq!(maildir_host(""), "localhost");
    }

    #[test]
    fn the_memory_of_known_folders_is_bounded() {
        let store = MaildirStore::new("/m/{mailbox}".into());
        for n in 0..=READY_LIMIT {
            store.mark_ready(PathBuf::from(format!("/m/user{n}/.Sent Items")));
        }
        let known = store.ready.lock().map(|set| set.len()).unwrap_or(0);
        assert!((1..=READY_LIMIT).contains(&known), "{known}");
        assert!(store.is_ready(Path::new(&format!("/m/user{READY_LIMIT}/.Sent Items"))));
    }

    /// The message is a window of a larger file (a spool segment): exactly its bytes are
    /// copied, on the same file system (`copy_file_range`) and from another (`sendfile`).
    #[test]
    fn copies_exactly_the_message_window() {
        use std::io::{Read, Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().expect("tempdir");
        let shm = tempfile::tempdir_in("/dev/shm").ok();
        let bytes: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
        let mut sources = vec![dir.path().to_path_buf()];
        sources.extend(shm.as_ref().map(|d| d.path().to_path_buf()));
        for source in sources {
            let segment = source.join("segment");
            File::create(&segment)
                .and_then(|mut f| f.write_all(&bytes))
                .expect("segment");
            let mut file = File::open(&segment).expect("open");
            file.seek(SeekFrom::Start(1000)).expect("seek");
            let mut reader = file.take(200_000);
            let out_path = dir.path().join("copy");
            let out = File::create(&out_path).expect("create");
            let copied = copy_message(&mut reader, &out).expect("copy");
            assert_eq!(copied, 200_000, "{}", source.display());
            let mut written = Vec::new();
            File::open(&out_path)
                .and_then(|mut f| f.read_to_end(&mut written))
                .expect("read");
            assert!(written == bytes[1000..201_000], "{}", source.display());
        }
    }

    #[test]
    fn file_system_errors_are_classified() {
        use super::super::{FailureKind, ProblemScope};
        let dir = tempfile::tempdir().expect("tempdir");
        // A name longer than NAME_MAX: this copy can never be stored.
        let long = dir.path().join("x".repeat(300)).join("Maildir");
        let e = ensure_folder(&long).expect_err("ENAMETOOLONG");
        assert_eq!(e.kind, FailureKind::Permanent, "{e}");
        assert!(e.message.contains("File name too long"), "{e}");
        // A plain file where the root's directories go: the operator's to fix, one cause for
        // every mailbox below it.
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, b"").expect("file");
        let errors: Vec<StoreError> = ["alice", "bob"]
            .iter()
            .map(|m| ensure_folder(&blocker.join(m).join(".Sent Items")).expect_err("ENOTDIR"))
            .collect();
        for e in &errors {
            assert_eq!(e.kind, FailureKind::Configuration, "{e}");
            assert_eq!(e.scope, ProblemScope::Mailboxes);
            assert!(e.cause().contains(&*blocker.to_string_lossy()), "{e:?}");
            assert!(!e.cause().contains("alice"), "{e:?}");
        }
        assert_eq!(errors[0].cause(), errors[1].cause());
        assert_ne!(errors[0].message, errors[1].message);
        // Anything else may clear by itself.
        let full = FsError::new("write", dir.path(), io::Error::from_raw_os_error(28));
        assert_eq!(classify(&full).kind, FailureKind::Transient);
    }
}
