use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::commit::CommitQueue;
use super::format::{Checksum, Header};
use super::*;

/// Test-only controls of the committer; everything off by default.
#[derive(Debug, Default)]
pub(super) struct Hooks {
    /// Before taking its next batch, the committer waits (up to 30 s) until this many
    /// ops are queued, so that a test gets a batch of a known size.
    gather: AtomicUsize,
    /// Sizes of the batches committed so far, in order.
    batches: Mutex<Vec<usize>>,
    /// Directory fsyncs of `queue/` done by committers.
    dir_syncs: AtomicUsize,
    /// fdatasyncs of segments done by committers.
    data_syncs: AtomicUsize,
    /// Fail this many of the next renames of large entries into `queue/` (ENOSPC).
    fail_renames: AtomicUsize,
    /// Fail every directory fsync of `queue/` by committers (EIO).
    fail_dir_sync: AtomicBool,
    /// Fail every segment fdatasync by committers (EIO).
    fail_data_sync: AtomicBool,
    /// Fail every segment write by committers (ENOSPC).
    fail_writes: AtomicBool,
    /// Panic at the start of the next batch.
    panic_in_batch: AtomicBool,
    /// Copy the spool's files into `<dir>/<n>-<point>/` at every crash point: what a
    /// `kill -9` at that moment would leave on disk.
    snapshots: Mutex<Option<Snapshots>>,
}

#[derive(Debug)]
struct Snapshots {
    from: PathBuf,
    to: PathBuf,
    taken: Vec<(String, PathBuf)>,
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
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
            return Err(errno(rustix::io::Errno::NOSPC));
        }
        Ok(())
    }

    pub(super) fn dir_sync_fault(&self) -> io::Result<()> {
        self.dir_syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail_dir_sync.load(Ordering::SeqCst) {
            return Err(errno(rustix::io::Errno::IO));
        }
        Ok(())
    }

    pub(super) fn data_sync_fault(&self) -> io::Result<()> {
        self.data_syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail_data_sync.load(Ordering::SeqCst) {
            return Err(errno(rustix::io::Errno::IO));
        }
        Ok(())
    }

    pub(super) fn write_fault(&self) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(errno(rustix::io::Errno::NOSPC));
        }
        Ok(())
    }

    pub(super) fn crash_point(&self, point: &str) {
        let mut guard = self.snapshots.lock().expect("hooks");
        let Some(snapshots) = guard.as_mut() else {
            return;
        };
        let dest = snapshots.to.join(format!(
            "{}-{}",
            snapshots.taken.len(),
            point.replace(' ', "_")
        ));
        for sub in [TMP_DIR, QUEUE_DIR, FAILED_DIR] {
            fs::create_dir_all(dest.join(sub)).expect("snapshot dir");
            for entry in fs::read_dir(snapshots.from.join(sub)).expect("read dir") {
                let entry = entry.expect("entry");
                // A temp file may go while it is copied.
                let _ = fs::copy(entry.path(), dest.join(sub).join(entry.file_name()));
            }
        }
        snapshots.taken.push((point.to_string(), dest));
    }
}

fn hooks(spool: &Spool) -> &Hooks {
    &spool.inner.hooks
}

fn batches(spool: &Spool) -> Vec<usize> {
    hooks(spool).batches.lock().expect("hooks").clone()
}

fn syncs(spool: &Spool) -> (usize, usize) {
    (
        hooks(spool).data_syncs.load(Ordering::SeqCst),
        hooks(spool).dir_syncs.load(Ordering::SeqCst),
    )
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

/// A segment's bytes up to the end of its records (a segment is preallocated with zeros).
fn written(path: &Path) -> Vec<u8> {
    let file = fs::File::open(path).expect("open");
    let end = super::segment::scan(&file, true).expect("scan").valid_len;
    let mut bytes = fs::read(path).expect("read");
    bytes.truncate(usize::try_from(end).expect("length"));
    bytes
}

fn segments(root: &Path) -> Vec<PathBuf> {
    names(&root.join(QUEUE_DIR))
        .into_iter()
        .map(|n| root.join(QUEUE_DIR).join(n))
        .collect()
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

async fn body_of(spool: &Spool, id: &EntryId) -> Vec<u8> {
    let msg = spool.open_message(id).await.expect("open");
    msg.read_to_vec().await.expect("read")
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
    // Small messages stay in memory until the commit, and never touch tmp/.
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

    // One segment: the entry record, header then message then metadata.
    let files = segments(dir.path());
    assert_eq!(files.len(), 1);
    let file = written(&files[0]);
    assert!(file.starts_with(&RECORD_MAGIC));
    assert_eq!(&file[HEADER_LEN as usize..][..body.len()], &body[..]);
    assert!(file.ends_with(b"}"));
}

#[tokio::test]
async fn large_message_streams_with_bounded_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let small = commit(&spool, b"small one first").await;
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
    // A segment of its own beside the active one.
    assert_eq!(segments(dir.path()).len(), 2);
    assert!(names(&dir.path().join(TMP_DIR)).is_empty());

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
    assert_eq!(spool.pending().await.expect("pending"), vec![small, id]);
    // Its checksum holds: it survives a reopen that checks every record.
    drop(spool);
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.pending().await.expect("pending"), vec![small, id]);
    assert!(body_of(&spool, &id).await == body);
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
    assert!(segments(dir.path()).is_empty());
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
async fn open_removes_leftovers_and_keeps_states() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let kept = commit(&spool, b"kept").await;
    let gone = commit(&spool, b"delivered").await;
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
    spool.complete(&gone).await.expect("complete");
    // A second segment whose entries are all done by the time of the crash.
    let big = commit(&spool, &message(2 * WRITE_BUFFER)).await;
    spool.complete(&big).await.expect("complete");
    drop(spool);

    let tmp = dir.path().join(TMP_DIR);
    fs::write(tmp.join("999-1.tmp"), b"half a message").expect("write");
    let queue = dir.path().join(QUEUE_DIR);
    fs::write(queue.join("notes.txt"), b"an operator's file").expect("write");

    let spool = Spool::open(dir.path()).expect("reopen");
    assert!(names(&tmp).is_empty());
    assert_eq!(segments(dir.path()).len(), 2, "the done segment is removed");
    assert!(
        queue.join("notes.txt").exists(),
        "unexpected files are left alone"
    );
    assert_eq!(spool.read_state(&kept).await.expect("state").attempts, 2);
    assert_eq!(spool.pending().await.expect("pending"), vec![kept]);
    assert!(matches!(
        spool.read_meta(&gone).await,
        Err(SpoolError::UnknownEntry { .. })
    ));
}

/// The bytes of the segment holding `id`, and its path.
fn segment_of(spool: &Spool, id: &EntryId) -> PathBuf {
    let slot = spool.inner.find(id).expect("slot");
    spool.inner.segment_path(&slot.segment)
}

#[tokio::test]
async fn a_partial_tail_is_cut_off_at_open() {
    // What a crash during a batch (or a power loss before its fdatasync ended) can leave at
    // the end of a segment: none of it was ever acknowledged.
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let a = commit(&spool, b"first").await;
    let b = commit(&spool, &message(1000)).await;
    let path = segment_of(&spool, &a);
    drop(spool);
    let whole = written(&path);
    let record = |body: &[u8], json: &[u8], id_seq: u64| {
        let id = EntryId {
            micros: 1_718_022_896_000_000,
            pid: 1,
            seq: id_seq,
        };
        let header = Header::entry(id, body.len() as u64, json.len() as u64);
        let mut crc = Checksum::default();
        crc.update(body);
        crc.update(json);
        let mut r = header.encode(crc).to_vec();
        r.extend_from_slice(body);
        r.extend_from_slice(json);
        r
    };
    let json = serde_json::to_vec(&EntryMeta { size: 4, ..meta() }).expect("json");
    let good = record(b"late", &json, 99);
    let mut zeroed = good.clone();
    // Length right, contents never written (a hole after a power loss).
    for byte in &mut zeroed[HEADER_LEN as usize..] {
        *byte = 0;
    }
    let tails: Vec<(&str, Vec<u8>)> = vec![
        ("half a header", good[..20].to_vec()),
        ("a header, half a body", good[..good.len() - 3].to_vec()),
        ("a body of zeros", zeroed.clone()),
        ("garbage", b"not a record at all, not at all".to_vec()),
        (
            "a zeroed record, then a whole one",
            [zeroed, good.clone()].concat(),
        ),
    ];
    for (what, tail) in tails {
        fs::write(&path, [&whole[..], &tail[..]].concat()).expect("damage");
        let spool = Spool::open(dir.path()).expect("reopen");
        assert_eq!(
            spool.pending().await.expect("pending"),
            vec![a, b],
            "{what}"
        );
        assert_eq!(
            fs::metadata(&path).expect("stat").len(),
            whole.len() as u64,
            "{what}"
        );
        assert!(body_of(&spool, &b).await == message(1000), "{what}");
    }
    // A whole record at the tail counts (it may be a batch whose answer the crash
    // prevented: Postfix then retried or bounced that message; either way it is whole).
    fs::write(&path, [&whole[..], &good[..]].concat()).expect("append");
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.pending().await.expect("pending").len(), 3);
    // New records go after it, in a new segment; the old one is appended to only for
    // states and done marks.
    spool.complete(&a).await.expect("complete");
    drop(spool);
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.pending().await.expect("pending").len(), 2);
}

/// A segment is preallocated with zeros: its records overwrite them in place (the file
/// keeps its length, so a commit's fdatasync has no new size to write), and zeros where a
/// header would be are the clean end of it at open. Zeros followed by written bytes are a hole
/// a power loss left before records that were never answered: cut there, so that they cannot
/// come back once new records fill the hole.
#[tokio::test]
async fn segments_are_preallocated_and_a_hole_before_written_bytes_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let a = commit(&spool, b"first").await;
    let b = commit(&spool, &message(3000)).await;
    let path = segment_of(&spool, &a);
    assert_eq!(fs::metadata(&path).expect("stat").len(), SEGMENT_BYTES);
    let first = written(&path);
    spool.complete(&a).await.expect("complete");
    assert_eq!(fs::metadata(&path).expect("stat").len(), SEGMENT_BYTES);
    drop(spool);
    // Reopened as it is: nothing cut, nothing lost.
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.pending().await.expect("pending"), vec![b]);
    assert_eq!(fs::metadata(&path).expect("stat").len(), SEGMENT_BYTES);
    drop(spool);
    // A hole, then a whole record: `a`'s entry record again, which must not come back.
    let at = written(&path).len() as u64;
    let stale = &first[..HEADER_LEN as usize + 5 + 200];
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, stale, at + 4096).expect("write");
    drop(file);
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.pending().await.expect("pending"), vec![b]);
    assert_eq!(
        fs::metadata(&path).expect("stat").len(),
        at,
        "cut at the hole"
    );
    // The next record about `b` goes where the hole was; nothing else comes back.
    spool.complete(&b).await.expect("complete");
    let c = commit(&spool, b"third").await;
    drop(spool);
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.pending().await.expect("pending"), vec![c]);
}

#[tokio::test]
async fn damaged_entries_are_corrupt_not_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let body = message(1000);
    let id = commit(&spool, &body).await;
    let path = segment_of(&spool, &id);
    let whole = written(&path);
    let meta_at = HEADER_LEN as usize + body.len();

    let mut damaged: Vec<Vec<u8>> = [0, 1, 47, 48, 500, 1047, whole.len() - 1]
        .iter()
        .map(|&n| whole[..n].to_vec())
        .collect();
    // No magic.
    let mut nomagic = whole.clone();
    nomagic[0] = b'X';
    damaged.push(nomagic);
    // Lengths that do not fit the file.
    let mut long = whole.clone();
    long[47] ^= 0x40;
    damaged.push(long);
    // Intact lengths, garbled metadata.
    let mut garbled = whole.clone();
    garbled[meta_at + 1] = b'!';
    damaged.push(garbled);

    for bytes in damaged {
        fs::write(&path, &bytes).expect("damage");
        let err = spool
            .read_meta(&id)
            .await
            .expect_err("meta of damaged entry");
        assert!(err.is_corrupt(), "{err}");
        if bytes.len() < meta_at {
            assert!(spool
                .open_message(&id)
                .await
                .expect_err("message of damaged entry")
                .is_corrupt());
        }
        let listed = spool.list(false).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].problem.is_some());
        assert_eq!(listed[0].mailbox, None);
    }
    // A corrupt entry can still be set aside, as it is.
    spool.fail(&id, "corrupt").await.expect("fail");
    assert!(spool.pending().await.expect("pending").is_empty());
    let failed = spool.list(true).await.expect("failed");
    assert_eq!(failed.len(), 1);
    assert!(failed[0].problem.is_some());
    assert!(spool.retry(&id).await.expect_err("retry").is_corrupt());
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
    assert_eq!(body_of(&spool, &a).await, b"first");
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
    // At most the active segment is left (nothing pending in it); a reopen removes it.
    assert!(segments(dir.path()).len() <= 1);
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
    drop(spool);
    Spool::open(dir.path()).expect("reopen");
    assert!(segments(dir.path()).is_empty());
}

#[tokio::test]
async fn unwritable_spool_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    // Works as root too: files where the directories should be.
    let queue = dir.path().join(QUEUE_DIR);
    fs::remove_dir(&queue).expect("rmdir");
    fs::write(&queue, b"").expect("file");
    let mut w = spool.begin();
    w.write(b"small").await.expect("buffered");
    let err = w.commit(meta()).await.expect_err("commit");
    assert!(matches!(err, SpoolError::Io { .. }), "{err}");
    assert!(err.to_string().contains(QUEUE_DIR), "{err}");

    let tmp = dir.path().join(TMP_DIR);
    fs::remove_dir(&tmp).expect("rmdir");
    fs::write(&tmp, b"").expect("file");
    let mut w = spool.begin();
    let err = w.write(&message(WRITE_BUFFER)).await.expect_err("write");
    assert!(matches!(err, SpoolError::Io { .. }), "{err}");
    assert!(err.to_string().contains(TMP_DIR), "{err}");
    assert!(matches!(
        w.write(b"more").await,
        Err(SpoolError::WriterFailed { .. })
    ));
    assert!(matches!(
        w.commit(meta()).await,
        Err(SpoolError::WriterFailed { .. })
    ));
    assert!(spool.pending().await.is_err());

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
    let queue = dir.path().join(QUEUE_DIR);
    fs::set_permissions(&queue, fs::Permissions::from_mode(0o500)).expect("chmod");
    let mut w = spool.begin();
    w.write(b"small").await.expect("buffered");
    let result = w.commit(meta()).await;
    fs::set_permissions(&queue, fs::Permissions::from_mode(0o700)).expect("chmod");
    assert!(matches!(result, Err(SpoolError::Io { .. })));
}

#[tokio::test]
async fn one_owner_at_a_time_and_attach_only_reads() {
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
    assert_eq!(body_of(&admin, &id).await, b"body");
    // Beside the owner, nothing changes the queue.
    for result in [
        admin.complete(&id).await,
        admin.write_state(&id, &DeliveryState::default()).await,
        admin.fail(&id, "no").await,
        admin.begin().commit(meta()).await.map(drop),
    ] {
        assert!(
            matches!(result, Err(SpoolError::NotOwner { .. })),
            "{result:?}"
        );
    }
    let big = w.commit(meta()).await.expect("commit");
    assert_eq!(admin.pending().await.expect("pending"), vec![id, big]);
    drop(owner);
    Spool::open(admin.path()).expect("open after owner closed");
    assert!(Spool::attach(dir.path().join("missing")).is_err());
}

#[tokio::test]
async fn retry_beside_the_owner_is_adopted_by_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = Spool::open(dir.path()).expect("open");
    let id = commit(&owner, b"to fail").await;
    owner.fail(&id, "permanent").await.expect("fail");
    let admin = Spool::attach(dir.path()).expect("attach");
    assert_eq!(admin.list(true).await.expect("failed").len(), 1);
    assert_eq!(admin.retry_all().await.expect("retry"), vec![id]);
    // The owner finds it at its next listing, with a fresh state, and can deliver it.
    assert_eq!(owner.pending().await.expect("pending"), vec![id]);
    assert_eq!(
        owner.read_state(&id).await.expect("state"),
        DeliveryState::default()
    );
    owner.complete(&id).await.expect("complete");
    assert!(owner.pending().await.expect("pending").is_empty());
    assert!(admin.pending().await.expect("pending").is_empty());
}

#[tokio::test]
async fn a_segment_removed_from_outside_is_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let kept = commit(&spool, b"kept").await;
    let lost = commit(&spool, &large(1)).await;
    fs::remove_file(segment_of(&spool, &lost)).expect("remove");
    assert!(matches!(
        spool.read_meta(&lost).await,
        Err(SpoolError::UnknownEntry { .. })
    ));
    // No worker tries it again.
    assert_eq!(spool.pending().await.expect("pending"), vec![kept]);
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

/// Larger than the write buffer: each is a segment of its own.
fn large(i: usize) -> Vec<u8> {
    let mut body = format!("Subject: {i}\r\n\r\n").into_bytes();
    body.extend(message(WRITE_BUFFER + 1000 + i));
    body
}

fn assert_nothing_left(dir: &Path) {
    assert!(segments(dir).is_empty(), "segments left");
    assert!(names(&dir.join(TMP_DIR)).is_empty(), "temp files left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_share_one_fdatasync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let mut all = Vec::new();
    for round in 0..2 {
        hooks(&spool).gather.store(32, Ordering::SeqCst);
        let ids: Vec<EntryId> = commit_concurrently(&spool, 32, numbered)
            .await
            .into_iter()
            .map(|r| r.expect("commit"))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert!(body_of(&spool, id).await == numbered(i), "entry {i}");
            assert_eq!(
                spool.read_meta(id).await.expect("meta").size,
                numbered(i).len() as u64
            );
        }
        all.extend(ids);
        // One batch of 32: one fdatasync of the active segment; the directory fsync only
        // for the batch that created it.
        assert_eq!(batches(&spool), vec![32; round + 1]);
        assert_eq!(syncs(&spool), (round + 1, 1));
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 64, "ids are unique");
    assert_eq!(spool.pending().await.expect("pending"), all);
    assert_eq!(segments(dir.path()).len(), 1);
    assert!(names(&dir.path().join(TMP_DIR)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn states_and_done_marks_share_the_batches_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    hooks(&spool).gather.store(16, Ordering::SeqCst);
    let ids: Vec<EntryId> = commit_concurrently(&spool, 16, numbered)
        .await
        .into_iter()
        .map(|r| r.expect("commit"))
        .collect();
    let state = DeliveryState {
        attempts: 1,
        outcome_unknown: true,
        ..Default::default()
    };
    // A state for each of 8, a done mark for the 8 others, all in one batch.
    hooks(&spool).gather.store(16, Ordering::SeqCst);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (spool, id, state) = (spool.clone(), *id, state.clone());
        tasks.spawn(async move {
            if i % 2 == 0 {
                spool.write_state(&id, &state).await
            } else {
                spool.complete(&id).await
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").expect("op");
    }
    assert_eq!(batches(&spool), vec![16, 16]);
    assert_eq!(syncs(&spool), (2, 1));
    let pending = spool.pending().await.expect("pending");
    let mut kept: Vec<EntryId> = ids.iter().step_by(2).copied().collect();
    kept.sort_unstable();
    assert_eq!(pending, kept);
    for id in &pending {
        assert_eq!(spool.read_state(id).await.expect("state"), state);
    }
    // The same after a reopen (read back from the records alone).
    drop(spool);
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.pending().await.expect("pending"), pending);
    for id in &pending {
        assert_eq!(spool.read_state(id).await.expect("state"), state);
    }
}

/// The dispatcher learns of new entries from the committer, in commit order, once it asked.
#[tokio::test]
async fn committed_ids_are_told_once_watched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    commit(&spool, b"before").await;
    assert_eq!(spool.take_committed(), Some(Vec::new()), "not watched yet");
    spool.watch_commits();
    let a = commit(&spool, b"a").await;
    let b = commit(&spool, b"b").await;
    spool.complete(&a).await.expect("complete");
    assert_eq!(spool.take_committed(), Some(vec![a, b]));
    assert_eq!(spool.take_committed(), Some(Vec::new()));
}

/// A batch of done marks alone is written but not synced: the marks become durable with the
/// next synced batch of their segment (a new entry's commit, here), or the kernel's writeback.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn done_marks_alone_are_not_synced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    hooks(&spool).gather.store(4, Ordering::SeqCst);
    let ids: Vec<EntryId> = commit_concurrently(&spool, 4, numbered)
        .await
        .into_iter()
        .map(|r| r.expect("commit"))
        .collect();
    assert_eq!(syncs(&spool), (1, 1));
    for id in &ids[..2] {
        spool.complete(id).await.expect("complete");
    }
    assert_eq!(syncs(&spool), (1, 1), "no fdatasync for done marks alone");
    // The marks are in the file all the same (kill -9 keeps what was written).
    let mut rest = ids[2..].to_vec();
    rest.sort_unstable();
    assert_eq!(spool.pending().await.expect("pending"), rest);
    // A new entry's batch syncs the segment, the marks before it with it.
    let new = commit(&spool, b"later").await;
    assert_eq!(syncs(&spool), (2, 1));
    drop(spool);
    let spool = Spool::open(dir.path()).expect("reopen");
    rest.push(new);
    rest.sort_unstable();
    assert_eq!(spool.pending().await.expect("pending"), rest);
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
    // However they were grouped, every commit was in exactly one batch, each batch had one
    // fdatasync, and the directory was synced once per segment (2 MB of mail: a segment takes
    // batches until it holds 1 MiB, so 1 to 3 of them).
    let batches = batches(&spool);
    assert_eq!(batches.iter().sum::<usize>(), 200);
    let (data, dir_syncs) = syncs(&spool);
    assert_eq!(data, batches.len());
    assert_eq!(dir_syncs, segments(dir.path()).len());
    assert!((1..=3).contains(&dir_syncs), "{dir_syncs} segments");
    assert!(names(&dir.path().join(TMP_DIR)).is_empty());
}

#[tokio::test]
async fn full_segments_roll_over_and_go_once_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let per_segment = (SEGMENT_BYTES as usize / numbered(0).len()) + 1;
    let mut ids = Vec::new();
    for i in 0..per_segment + 5 {
        ids.push(commit(&spool, &numbered(i)).await);
    }
    let files = segments(dir.path());
    assert_eq!(files.len(), 2);
    assert!(fs::metadata(&files[0]).expect("stat").len() >= SEGMENT_BYTES);
    // The first segment goes when its last entry is done, the active one stays.
    for id in &ids[..per_segment] {
        spool.complete(id).await.expect("complete");
    }
    assert_eq!(segments(dir.path()), files[1..]);
    for id in &ids[per_segment..] {
        spool.complete(id).await.expect("complete");
    }
    assert_eq!(segments(dir.path()), files[1..]);
    // A new entry goes to the same (emptied) active segment.
    let next = commit(&spool, b"next").await;
    assert_eq!(segments(dir.path()), files[1..]);
    assert_eq!(spool.pending().await.expect("pending"), vec![next]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_fdatasync_fails_and_withdraws_the_whole_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let before = commit(&spool, b"committed before").await;
    let path = segment_of(&spool, &before);
    let len = written(&path).len() as u64;
    hooks(&spool).fail_data_sync.store(true, Ordering::SeqCst);
    hooks(&spool).gather.store(8, Ordering::SeqCst);
    for result in commit_concurrently(&spool, 8, numbered).await {
        match result {
            Err(SpoolError::Io { op, error, .. }) => {
                assert_eq!(op, "fdatasync");
                assert_eq!(
                    error.raw_os_error(),
                    Some(rustix::io::Errno::IO.raw_os_error())
                );
            }
            other => panic!("expected the fdatasync error, got {other:?}"),
        }
    }
    assert_eq!(batches(&spool), vec![1, 8]);
    // Written, then cut off again: nothing of them is left to come back after a crash.
    assert_eq!(fs::metadata(&path).expect("stat").len(), len);
    assert_eq!(spool.pending().await.expect("pending"), vec![before]);
    // A failed write (disk full) is withdrawn alike.
    hooks(&spool).fail_data_sync.store(false, Ordering::SeqCst);
    hooks(&spool).fail_writes.store(true, Ordering::SeqCst);
    let mut w = spool.begin();
    w.write(b"x").await.expect("write");
    assert!(matches!(
        w.commit(meta()).await,
        Err(SpoolError::Io {
            op: "append to",
            ..
        })
    ));
    assert_eq!(
        spool.complete(&before).await.map_err(|e| e.to_string()),
        Err(format!(
            "spool: cannot append to {}: {}",
            path.display(),
            errno(rustix::io::Errno::NOSPC)
        ))
    );
    assert_eq!(fs::metadata(&path).expect("stat").len(), len);

    // The committer is not stuck: the next commit goes through.
    hooks(&spool).fail_writes.store(false, Ordering::SeqCst);
    let after = commit(&spool, b"committed after").await;
    assert_eq!(spool.pending().await.expect("pending"), vec![before, after]);
    drop(spool);
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.pending().await.expect("pending"), vec![before, after]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_directory_fsync_fails_the_whole_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    hooks(&spool).fail_dir_sync.store(true, Ordering::SeqCst);
    // The batch creates the first segment and renames two large entries in: all need the
    // directory fsync.
    hooks(&spool).gather.store(4, Ordering::SeqCst);
    let body = |i: usize| if i < 2 { numbered(i) } else { large(i) };
    for result in commit_concurrently(&spool, 4, body).await {
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
    assert_eq!(batches(&spool), vec![4]);
    // The new segment and the renamed entries were unlinked again.
    assert_nothing_left(dir.path());
    assert!(spool.pending().await.expect("pending").is_empty());
    hooks(&spool).fail_dir_sync.store(false, Ordering::SeqCst);
    let after = commit(&spool, b"committed after").await;
    assert_eq!(spool.pending().await.expect("pending"), vec![after]);
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
    for result in commit_concurrently(&spool, 6, large).await {
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
    assert_eq!(syncs(&spool), (0, 1));
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
    for result in commit_concurrently(&spool, 3, large).await {
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
    // Interleaved with the commit of the earlier layout done by hand (a new file: write,
    // fdatasync, rename, directory fsync on one blocking-pool hop), so that other load on
    // the disk hits both alike.
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
    // Each commit found the queue empty and committed at once: one batch each, one
    // fdatasync each, and one directory fsync in all (for the segment).
    assert_eq!(batches(&spool), vec![1; 15]);
    assert_eq!(syncs(&spool), (15, 1));
    batched.sort();
    by_hand.sort();
    let (batched, by_hand) = (batched[7], by_hand[7]);
    // Generous, for a shared disk; a batching delay of even a few ms would show.
    assert!(
        batched <= by_hand * 2 + Duration::from_millis(2),
        "median lone commit {batched:?}, by hand {by_hand:?}"
    );
}

/// Where an entry is, as the test expects it or as a reopened snapshot shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Absent,
    Queued,
    Failed,
}

/// One operation of the crash test: which snapshots were taken before it started and before
/// it was answered, and where it leaves its entry.
#[derive(Debug, Clone, Copy)]
struct Event {
    started: usize,
    answered: usize,
    id: EntryId,
    to: Place,
}

fn taken(spool: &Spool) -> usize {
    hooks(spool)
        .snapshots
        .lock()
        .expect("hooks")
        .as_ref()
        .map_or(0, |s| s.taken.len())
}

/// `kill -9` at every step of the commit, state, done, fail and retry sequences: each
/// snapshot of the spool's files taken at a crash point opens cleanly; an entry is where its
/// last answered operation put it, or — while an operation on it was under way — where that
/// operation puts it; no entry is there twice, none is partial, none is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_at_any_step_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("spool");
    let spool = Spool::open(&root).expect("open");
    *hooks(&spool).snapshots.lock().expect("hooks") = Some(Snapshots {
        from: root.clone(),
        to: dir.path().join("snapshots"),
        taken: Vec::new(),
    });
    fn body(i: usize) -> Vec<u8> {
        if i % 5 == 4 {
            large(i)
        } else {
            numbered(i)
        }
    }
    let mut bodies: Vec<(EntryId, Vec<u8>)> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut failed_ids = Vec::new();
    for round in 0..3u32 {
        hooks(&spool).gather.store(5, Ordering::SeqCst);
        let started = taken(&spool);
        let results = commit_concurrently(&spool, 5, body).await;
        let answered = taken(&spool);
        for (i, r) in results.into_iter().enumerate() {
            let id = r.expect("commit");
            bodies.push((id, body(i)));
            events.push(Event {
                started,
                answered,
                id,
                to: Place::Queued,
            });
        }
        let n = bodies.len();
        let (first, second) = (bodies[n - 5].0, bodies[n - 4].0);

        let started = taken(&spool);
        spool.complete(&first).await.expect("complete");
        events.push(Event {
            started,
            answered: taken(&spool),
            id: first,
            to: Place::Absent,
        });

        let state = DeliveryState {
            attempts: round + 1,
            ..Default::default()
        };
        spool.write_state(&second, &state).await.expect("state");
        let started = taken(&spool);
        spool.fail(&second, "given up").await.expect("fail");
        events.push(Event {
            started,
            answered: taken(&spool),
            id: second,
            to: Place::Failed,
        });
        failed_ids.push(second);

        if round == 1 {
            let id = failed_ids.remove(0);
            let started = taken(&spool);
            spool.retry(&id).await.expect("retry");
            events.push(Event {
                started,
                answered: taken(&spool),
                id,
                to: Place::Queued,
            });
        }
    }
    let taken = hooks(&spool)
        .snapshots
        .lock()
        .expect("hooks")
        .take()
        .expect("snapshots")
        .taken;
    let points: std::collections::BTreeSet<&str> = taken.iter().map(|(p, _)| p.as_str()).collect();
    for point in [
        "records written, not synced",
        "records synced",
        "directory synced",
        "large entry renamed in",
        "copied to failed/",
        "retried into queue/",
    ] {
        assert!(points.contains(point), "no crash at {point:?}: {points:?}");
    }
    for (n, (point, snapshot)) in taken.iter().enumerate() {
        let at = format!("crash {n} at {point:?}");
        let reopened = Spool::open(snapshot).unwrap_or_else(|e| panic!("{at}: {e}"));
        let pending = reopened.pending().await.expect("pending");
        let failed: Vec<EntryId> = reopened
            .list(true)
            .await
            .expect("failed")
            .iter()
            .map(|i| i.id)
            .collect();
        for id in pending.iter().chain(&failed) {
            assert!(
                bodies.iter().any(|(b, _)| b == id),
                "{at}: unknown entry {id}"
            );
        }
        for (id, body) in &bodies {
            let place = match (pending.contains(id), failed.contains(id)) {
                (true, _) => Place::Queued,
                (false, true) => Place::Failed,
                (false, false) => Place::Absent,
            };
            let mut sure = Place::Absent;
            let mut maybe = None;
            for e in events.iter().filter(|e| e.id == *id) {
                if e.answered <= n {
                    sure = e.to;
                } else if e.started <= n {
                    maybe = Some(e.to);
                }
            }
            assert!(
                place == sure || Some(place) == maybe,
                "{at}: {id} is {place:?}, expected {sure:?} (or {maybe:?})"
            );
            if place == Place::Queued {
                assert!(body_of(&reopened, id).await == *body, "{at}: {id} differs");
                reopened
                    .read_meta(id)
                    .await
                    .unwrap_or_else(|e| panic!("{at}: {id}: {e}"));
            }
        }
    }
}

/// An entry file of the earlier layout: message, metadata, footer.
fn old_entry(body: &[u8], meta: &EntryMeta) -> Vec<u8> {
    let json = serde_json::to_vec(meta).expect("json");
    let mut file = body.to_vec();
    file.extend_from_slice(&json);
    file.extend_from_slice(&(body.len() as u64).to_be_bytes());
    file.extend_from_slice(&(json.len() as u64).to_be_bytes());
    file.extend_from_slice(b"SGSPOOL1");
    file
}

#[tokio::test]
async fn entries_of_the_earlier_layout_are_converted_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Spool::open(dir.path()).expect("create"));
    let (queue, failed) = (dir.path().join(QUEUE_DIR), dir.path().join(FAILED_DIR));
    let id = |seq| EntryId {
        micros: 1_718_022_896_000_000 + seq,
        pid: 42,
        seq,
    };
    let sized = |body: &[u8]| EntryMeta {
        size: body.len() as u64,
        ..meta()
    };
    let big = message(3 * WRITE_BUFFER);
    fs::write(
        queue.join(format!("{}.msg", id(1))),
        old_entry(b"with state", &sized(b"with state")),
    )
    .expect("write");
    fs::write(
        queue.join(format!("{}.state", id(1))),
        br#"{"attempts":2,"outcome_unknown":true}"#,
    )
    .expect("write");
    fs::write(
        queue.join(format!("{}.msg", id(2))),
        old_entry(&big, &sized(&big)),
    )
    .expect("write");
    fs::write(
        failed.join(format!("{}.msg", id(3))),
        old_entry(b"failed", &sized(b"failed")),
    )
    .expect("write");
    fs::write(
        failed.join(format!("{}.state", id(3))),
        br#"{"attempts":5,"last_error":"mailbox unknown"}"#,
    )
    .expect("write");
    let damaged = old_entry(b"damaged", &sized(b"damaged"));
    fs::write(
        queue.join(format!("{}.msg", id(4))),
        &damaged[..damaged.len() - 3],
    )
    .expect("write");
    fs::write(queue.join(format!("{}.state", id(5))), b"{}").expect("write");
    let old_files = |dir: &Path| -> Vec<String> {
        names(dir)
            .into_iter()
            .filter(|n| !n.ends_with(".seg"))
            .collect()
    };

    let spool = Spool::open(dir.path()).expect("open");
    assert_eq!(spool.pending().await.expect("pending"), vec![id(1), id(2)]);
    assert_eq!(body_of(&spool, &id(1)).await, b"with state");
    assert!(body_of(&spool, &id(2)).await == big);
    let state = spool.read_state(&id(1)).await.expect("state");
    assert_eq!((state.attempts, state.outcome_unknown), (2, true));
    let given_up = spool.list(true).await.expect("failed");
    assert_eq!(given_up.len(), 1);
    assert_eq!((given_up[0].id, given_up[0].attempts), (id(3), 5));
    assert_eq!(given_up[0].last_error.as_deref(), Some("mailbox unknown"));
    // The damaged one stays as it was, never delivered; the orphan state is gone.
    assert_eq!(old_files(&queue), vec![format!("{}.msg", id(4))]);
    assert!(old_files(&failed).is_empty());

    // A crash after converting, before removing the old files: converted once only.
    drop(spool);
    fs::write(
        queue.join(format!("{}.msg", id(1))),
        old_entry(b"with state", &sized(b"with state")),
    )
    .expect("write");
    fs::write(
        failed.join(format!("{}.msg", id(3))),
        old_entry(b"failed", &sized(b"failed")),
    )
    .expect("write");
    let spool = Spool::open(dir.path()).expect("reopen");
    assert_eq!(spool.pending().await.expect("pending"), vec![id(1), id(2)]);
    assert_eq!(spool.list(true).await.expect("failed").len(), 1);
    assert_eq!(old_files(&queue), vec![format!("{}.msg", id(4))]);
    assert!(old_files(&failed).is_empty());
    spool.retry(&id(3)).await.expect("retry");
    assert_eq!(
        spool.pending().await.expect("pending"),
        vec![id(1), id(2), id(3)]
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

#[test]
fn vectored_append_writes_more_records_than_one_pwritev_takes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("segment");
    let file = File::create(&path).expect("create");
    // More than IOV_MAX (1024) records, of different lengths, some empty.
    let records: Vec<Vec<u8>> = (0..2500u32)
        .map(|i| vec![(i % 251) as u8; (i % 37) as usize])
        .collect();
    super::commit::write_all_vectored_at(&file, &records, 7).expect("write");
    let mut expected = vec![0u8; 7];
    for r in &records {
        expected.extend_from_slice(r);
    }
    assert_eq!(fs::read(&path).expect("read"), expected);
}
