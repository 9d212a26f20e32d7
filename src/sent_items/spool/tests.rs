use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::commit::CommitQueue;
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
