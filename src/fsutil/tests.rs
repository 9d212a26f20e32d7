use std::os::unix::fs::PermissionsExt;

use super::*;

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn temp_file_is_created_lazily_and_removed_on_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("1.tmp");
    let temp = TempFile::new(path.clone(), 0o600);
    assert!(!temp.is_created());
    drop(temp);
    assert!(names(dir.path()).is_empty());

    let mut temp = TempFile::new(path.clone(), 0o600);
    temp.write_all(b"half").expect("write");
    assert!(temp.is_created());
    assert_eq!(fs::read(&path).expect("read"), b"half");
    let mode = fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(temp);
    assert!(names(dir.path()).is_empty());
}

#[test]
fn renamed_temp_file_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("entry");
    let mut temp = TempFile::new(dir.path().join("1.tmp"), 0o600);
    temp.write_all(b"whole").expect("write");
    temp.sync_data().expect("sync");
    temp.rename_to(&dest, "rename into place").expect("rename");
    drop(temp);
    assert_eq!(names(dir.path()), vec!["entry"]);
    assert_eq!(fs::read(&dest).expect("read"), b"whole");
}

#[test]
fn new_temp_file_refuses_an_existing_name_unless_overwriting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("1.tmp");
    fs::write(&path, b"left over").expect("write");
    let mut temp = TempFile::new(path.clone(), 0o600);
    let err = temp.write_all(b"x").expect_err("exists");
    assert_eq!(err.op, "create");
    assert_eq!(err.path, path);
    assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists);
    // Not ours: left alone.
    drop(temp);
    assert_eq!(fs::read(&path).expect("read"), b"left over");

    let mut temp = TempFile::new(path.clone(), 0o600).overwriting();
    temp.write_all(b"new").expect("write");
    assert_eq!(fs::read(&path).expect("read"), b"new");
}

#[test]
fn failed_rename_names_the_destination_and_removes_the_temp_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("missing").join("entry");
    let mut temp = TempFile::new(dir.path().join("1.tmp"), 0o600);
    temp.write_all(b"x").expect("write");
    let err = temp.rename_to(&dest, "commit into").expect_err("rename");
    assert_eq!(err.op, "commit into");
    assert_eq!(err.path, dest);
    assert_eq!(
        err.to_string(),
        format!("cannot commit into {}: {}", dest.display(), err.source)
    );
    drop(temp);
    assert!(names(dir.path()).is_empty());
}

#[test]
fn replace_file_replaces_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("policy.yaml");
    fs::write(&dest, b"old").expect("write");
    let temp = TempFile::new(dir.path().join(".policy.yaml.tmp"), 0o644);
    replace_file(temp, &dest, Sync::All, |t| t.write_all(b"new")).expect("replace");
    assert_eq!(names(dir.path()), vec!["policy.yaml"]);
    assert_eq!(fs::read(&dest).expect("read"), b"new");

    // A failed write leaves the old file and no temp file.
    let temp = TempFile::new(dir.path().join(".policy.yaml.tmp"), 0o644);
    let err = replace_file(temp, &dest, Sync::Data, |t| {
        t.write_all(b"partial")?;
        Err(FsError::new(
            "write",
            t.path(),
            io::Error::other("disk full"),
        ))
    })
    .expect_err("write fails");
    assert_eq!(err.op, "write");
    assert_eq!(names(dir.path()), vec!["policy.yaml"]);
    assert_eq!(fs::read(&dest).expect("read"), b"new");
}

#[test]
fn fsync_dir_reports_a_missing_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    fsync_dir(dir.path()).expect("fsync");
    let missing = dir.path().join("missing");
    let err = fsync_dir(&missing).expect_err("missing");
    assert_eq!((err.op, err.path), ("fsync directory", missing));
}

#[test]
fn parent_of_a_bare_name_is_the_current_directory() {
    assert_eq!(parent_of(Path::new("a/b")), Path::new("a"));
    assert_eq!(parent_of(Path::new("b")), Path::new("."));
}

#[test]
fn exclusive_locks_exclude_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lock");
    let open = || {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .expect("open")
    };
    let (first, second) = (open(), open());
    try_lock_exclusive(&first).expect("first lock");
    let err = try_lock_exclusive(&second).expect_err("second lock");
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    drop(first);
    try_lock_exclusive(&second).expect("free again");
    drop(second);
    lock_exclusive(&open()).expect("blocking lock of a free file");
}

#[test]
fn hostname_is_the_kernel_host_name() {
    let host = hostname();
    assert!(!host.contains('\0'));
    // What gethostname(3) returns, read another way.
    if let Ok(kernel) = fs::read_to_string("/proc/sys/kernel/hostname") {
        assert_eq!(host, kernel.trim_end_matches('\n'));
    }
}

#[test]
fn run_blocking_runs_in_place_only_on_a_thread_that_may_block() {
    // A thread of its own: the mark stays with the thread (libtest may run several tests on
    // one).
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let here = std::thread::current().id();
        // Not marked: the work goes to the blocking pool, another thread.
        let there = rt
            .block_on(run_blocking(|| std::thread::current().id()))
            .expect("blocking pool");
        assert_ne!(there, here);
        assert!(!may_block());
        // Marked: in place, no hand-off.
        allow_blocking_here();
        assert!(may_block());
        let there = rt
            .block_on(run_blocking(|| std::thread::current().id()))
            .expect("in place");
        assert_eq!(there, here);
        // The mark is the thread's own.
        let other = std::thread::spawn(may_block).join().expect("thread");
        assert!(!other);
    })
    .join()
    .expect("test thread");
}
