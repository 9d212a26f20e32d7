//! Sent Items delivery into Maildir++: one `:2,S` file per entry, byte-identical, idempotent
//! after a crash and after a done mark lost to a power failure; how failures are classed (a name too long: permanent; a file in the way:
//! configuration, kept queued until fixed; transient: backoff until `max_age`); a folder removed under the store is made again by the next copy; and a real Dovecot reading that Maildir lists the copy `\Seen` (skipped,
//! with a note, without Dovecot).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use submitgate::audit::{self, Audit};
use submitgate::sent_items::spool::{EntryId, Spool, HEADER_LEN, RECORD_MAGIC};
use submitgate::sent_items::store::maildir::MaildirStore;
use submitgate::sent_items::store::{SentCopy, SentItemsStore, StoreError, Stored};
use submitgate::sent_items::worker;
use support::dovecot::{message, Dovecot, Options, Rig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const ALICE: &str = "alice@contoso.com";

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test]
async fn committed_entry_becomes_one_seen_file() {
    let mail = tempfile::tempdir().expect("tempdir");
    let rig = Rig::start(&format!(
        "  store: {{ backend: maildir, root: \"{}/{{domain}}/{{local}}/Maildir\" }}\n",
        mail.path().display()
    ));
    let (body, mid) = message(1, 10 * 1024);
    let id = rig.commit(ALICE, &body, &mid).await;
    rig.drained(Duration::from_secs(10)).await;

    let folder = mail.path().join("contoso.com/alice/Maildir/.Sent Items");
    let cur = files(&folder.join("cur"));
    assert_eq!(cur.len(), 1, "{cur:?}");
    let name = cur[0]
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    assert!(name.ends_with(":2,S"), "{name}");
    assert!(name.contains(&format!(",S={}", body.len())), "{name}");
    assert_eq!(
        std::fs::read(&cur[0]).expect("read"),
        body,
        "byte-identical"
    );
    assert!(files(&folder.join("new")).is_empty());
    assert!(files(&folder.join("tmp")).is_empty());
    assert!(folder.join("maildirfolder").exists());
    for sub in ["cur", "new", "tmp"] {
        assert!(mail
            .path()
            .join("contoso.com/alice/Maildir")
            .join(sub)
            .is_dir());
    }
    let events = rig.events().await;
    let stored: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "sent_copy_stored")
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["store"], "maildir");
    assert_eq!(stored[0]["spool_entry"], id.to_string());
    assert_eq!(stored[0]["message_id"], mid);
    rig.stop().await;
}

#[tokio::test]
async fn delivering_the_same_entry_again_leaves_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path().join("spool")).expect("spool");
    let (body, mid) = message(2, 3000);
    let id = support::dovecot::commit(&spool, ALICE, &body, &mid).await;
    let meta = spool.read_meta(&id).await.expect("meta");
    let store = MaildirStore::new(format!("{}/m/{{mailbox}}", dir.path().display()));
    // As after a crash between the rename and the spool's complete(): same entry again, both
    // as a fresh attempt and as one whose outcome is unknown.
    for maybe_stored in [false, false, true] {
        let copy = SentCopy {
            id,
            meta: &meta,
            message: spool.open_message(&id).await.expect("message"),
            maybe_stored,
        };
        let stored = store.deliver(copy).await.expect("deliver");
        assert_eq!(stored.already_stored, maybe_stored);
    }
    let cur = files(&dir.path().join("m/alice@contoso.com/.Sent Items/cur"));
    assert_eq!(cur.len(), 1, "{cur:?}");
    assert_eq!(std::fs::read(&cur[0]).expect("read"), body);
}

/// A done mark is not synced by itself (docs/architecture.md, "Done marks"): should a power
/// failure lose it, the entry is back at the next start. The store then looks for the copy by
/// its base name, whatever flags a reader gave it meanwhile, and stores nothing twice.
#[tokio::test]
async fn a_done_mark_lost_to_a_power_failure_stores_nothing_twice() {
    let mail = tempfile::tempdir().expect("tempdir");
    let store = format!(
        "  store: {{ backend: maildir, root: \"{}/{{domain}}/{{local}}/Maildir\" }}\n",
        mail.path().display()
    );
    let rig = Rig::start(&store);
    let (body, mid) = message(4, 4096);
    let id = rig.commit(ALICE, &body, &mid).await;
    rig.drained(Duration::from_secs(10)).await;
    let dir = rig.stop().await;
    // The entry's records are its own and its done mark, a header alone, the last record:
    // put the zeros of the preallocated segment back in its place, as a power failure before
    // its writeback would leave it.
    let segments = files(&dir.path().join("spool/queue"));
    assert_eq!(segments.len(), 1, "{segments:?}");
    let bytes = std::fs::read(&segments[0]).expect("segment");
    let done_at = bytes
        .windows(RECORD_MAGIC.len())
        .rposition(|w| w == RECORD_MAGIC)
        .expect("a done record");
    assert!(done_at > 0, "the entry record comes first");
    let segment = std::fs::OpenOptions::new()
        .write(true)
        .open(&segments[0])
        .expect("segment");
    std::os::unix::fs::FileExt::write_all_at(&segment, &[0u8; HEADER_LEN as usize], done_at as u64)
        .expect("zero the done mark");
    drop(segment);
    // Meanwhile a reader marked the copy answered.
    let cur = mail
        .path()
        .join("contoso.com/alice/Maildir/.Sent Items/cur");
    let stored = files(&cur);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let name = stored[0].to_string_lossy().into_owned();
    assert!(name.ends_with(":2,S"), "{name}");
    std::fs::rename(&stored[0], name.replace(":2,S", ":2,RS")).expect("rename");

    let rig = Rig::start_in(dir, &store);
    assert_eq!(rig.spool.pending().await.expect("pending"), vec![id]);
    rig.delivery.wake();
    rig.drained(Duration::from_secs(10)).await;
    let again: Vec<_> = rig
        .events()
        .await
        .into_iter()
        .filter(|e| e["event"] == "sent_copy_stored" && e["already_stored"] == true)
        .collect();
    assert_eq!(again.len(), 1, "found, not stored again: {again:?}");
    let stored = files(&cur);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(std::fs::read(&stored[0]).expect("read"), body);
    rig.stop().await;
}

#[tokio::test]
async fn unusable_mailbox_names_fail_permanently() {
    let mail = tempfile::tempdir().expect("tempdir");
    let rig = Rig::start(&format!(
        "  store: {{ backend: maildir, root: \"{}/{{domain}}/{{local}}/Maildir\" }}\n",
        mail.path().display()
    ));
    let (body, mid) = message(3, 100);
    rig.commit("../../etc@contoso.com", &body, &mid).await;
    rig.drained(Duration::from_secs(10)).await;
    let failed = rig.spool.list(true).await.expect("failed");
    assert_eq!(failed.len(), 1);
    assert!(failed[0]
        .last_error
        .as_deref()
        .unwrap_or_default()
        .contains("cannot be used in a path"));
    assert!(files(mail.path()).is_empty(), "nothing written anywhere");
    rig.stop().await;
}

#[tokio::test]
async fn dovecot_lists_the_maildir_copy_as_seen() {
    let Some(dovecot) = Dovecot::start(
        "dovecot_lists_the_maildir_copy_as_seen",
        Options {
            auto_sent: false,
            mail_location: Some("maildir:{mail}/%d/%n/Maildir".into()),
            ..Options::default()
        },
    ) else {
        return;
    };
    let rig = Rig::start(&format!(
        "  store: {{ backend: maildir, root: \"{}/{{domain}}/{{local}}/Maildir\" }}\n",
        dovecot.mail_dir().display()
    ));
    let (body, mid) = message(4, 10 * 1024);
    rig.commit(ALICE, &body, &mid).await;
    rig.drained(Duration::from_secs(10)).await;
    rig.stop().await;
    // submitgate runs as the mail user in production; here the test runs as root.
    support::dovecot::chown_vmail(&dovecot.mail_dir());
    let stored = dovecot.fetch(ALICE, "Sent Items").await;
    assert!(
        stored == vec![(body.clone(), true)],
        "expected one byte-identical \\Seen copy, found {} message(s)",
        stored.len()
    );
}

/// Workers over a fresh spool with fast timing (`max_age` 600 ms), for any store.
struct Workers {
    dir: tempfile::TempDir,
    spool: Spool,
    delivery: worker::Delivery,
    audit: Audit,
    writer: submitgate::audit::AuditWriter,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Workers {
    fn start<S: SentItemsStore>(dir: tempfile::TempDir, store: S) -> Workers {
        let spool = Spool::open(dir.path().join("spool")).expect("spool");
        let (audit, writer) = Audit::start(&audit::Settings {
            target: audit::Target::File(dir.path().join("audit.log")),
            queue: 16,
            mode: audit::DEFAULT_MODE,
        })
        .expect("audit");
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let delivery = worker::start(
            spool.clone(),
            Arc::new(store),
            audit.clone(),
            worker::Settings {
                workers: 2,
                max_age: Duration::from_millis(600),
                retry: worker::RetrySettings {
                    initial: Duration::from_millis(40),
                    max: Duration::from_millis(80),
                    auth_failure_attempts: 3,
                },
                scan_interval: Duration::from_millis(50),
                shutdown_grace: Duration::from_secs(1),
            },
            shutdown.clone(),
            &tracker,
        );
        Workers {
            dir,
            spool,
            delivery,
            audit,
            writer,
            shutdown,
            tracker,
        }
    }

    async fn commit(&self, mailbox: &str, n: usize) -> EntryId {
        let (body, mid) = message(n, 100);
        let id = support::dovecot::commit(&self.spool, mailbox, &body, &mid).await;
        self.delivery.wake();
        id
    }

    async fn wait_failed(&self, n: usize) {
        let s = self.spool.clone();
        support::wait_for(Duration::from_secs(10), "entries to fail", move || {
            let s = s.clone();
            async move { s.list(true).await.map(|l| l.len() == n).unwrap_or(false) }
        })
        .await;
    }

    /// Stops everything and returns the audit events.
    async fn stop(self) -> Vec<serde_json::Value> {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        drop(self.delivery);
        // As the daemon does: the writer ends after what was recorded, even while an attempt
        // abandoned at shutdown still holds a handle.
        self.audit.close().await;
        drop(self.audit);
        self.writer.finish().await;
        support::read_audit(&self.dir.path().join("audit.log"))
    }
}

/// A store that always fails with a transient error (a full disk, a server away).
struct AlwaysTransient;

impl SentItemsStore for AlwaysTransient {
    fn name(&self) -> &'static str {
        "maildir"
    }

    fn idempotent(&self) -> bool {
        true
    }

    async fn deliver(&self, _copy: SentCopy<'_>) -> Result<Stored, StoreError> {
        Err(StoreError::transient(
            "maildir: cannot write /m/tmp/x: No space left on device (os error 28)",
        ))
    }

    async fn release_idle(&self, _all: bool) {}
}

#[tokio::test]
async fn transient_failures_back_off_then_fail_at_max_age() {
    let w = Workers::start(tempfile::tempdir().expect("tempdir"), AlwaysTransient);
    let id = w.commit(ALICE, 5).await;
    w.wait_failed(1).await;
    let failed = w.spool.list(true).await.expect("failed");
    assert_eq!(failed[0].id, id);
    assert!(
        failed[0].attempts >= 4,
        "retried with backoff: {}",
        failed[0].attempts
    );
    let reason = failed[0].last_error.clone().unwrap_or_default();
    assert!(reason.contains("max_age"), "{reason}");
    assert!(reason.contains("No space left"), "{reason}");
    assert!(
        w.delivery.problems().list().is_empty(),
        "not a configuration problem"
    );
    let events = w.stop().await;
    let ev: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "sent_copy_failed")
        .collect();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["reason"], "max_age");
    assert_eq!(ev[0]["mailbox"], ALICE);
    assert!(ev[0]["attempts"].as_u64().unwrap_or(0) >= 4);
}

#[tokio::test]
async fn a_name_too_long_for_the_file_system_fails_permanently_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = format!("{}/mail/{{domain}}/{{local}}/Maildir", dir.path().display());
    let w = Workers::start(dir, MaildirStore::new(root));
    // A local part longer than NAME_MAX (255): ENAMETOOLONG, never storable.
    let long = format!("{}@contoso.com", "a".repeat(300));
    w.commit(&long, 6).await;
    w.wait_failed(1).await;
    let failed = w.spool.list(true).await.expect("failed");
    assert_eq!(failed[0].attempts, 1, "given up at the first attempt");
    let reason = failed[0].last_error.clone().unwrap_or_default();
    assert!(reason.contains("permanent failure"), "{reason}");
    assert!(reason.contains("File name too long"), "{reason}");
    let events = w.stop().await;
    let ev: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "sent_copy_failed")
        .collect();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["reason"], "permanent");
}

#[tokio::test]
async fn a_file_in_the_way_holds_copies_queued_until_it_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A root below a plain file: every delivery fails with "Not a directory" until the
    // operator removes it. (The tests run as root, so a mode cannot stand in the way.)
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"").expect("file");
    let root = format!("{}/{{domain}}/{{local}}/Maildir", blocker.display());
    let w = Workers::start(dir, MaildirStore::new(root));
    w.commit(ALICE, 7).await;
    w.commit("bob@contoso.com", 8).await;
    let problems = w.delivery.problems().clone();
    let started = std::time::Instant::now();
    support::wait_for(
        Duration::from_secs(10),
        "retries for longer than max_age",
        || {
            let problems = problems.clone();
            async move {
                started.elapsed() > Duration::from_millis(900)
                    && problems
                        .list()
                        .first()
                        .is_some_and(|p| p.failed_attempts >= 6)
            }
        },
    )
    .await;
    let listed = problems.list();
    assert_eq!(listed.len(), 1, "one cause for both mailboxes: {listed:?}");
    assert_eq!(listed[0].mailboxes, 2);
    assert!(
        listed[0].cause.contains(&*blocker.to_string_lossy()),
        "{listed:?}"
    );
    assert!(!listed[0].cause.contains("alice"), "{listed:?}");
    assert!(
        w.spool.list(true).await.expect("failed").is_empty(),
        "past max_age, kept"
    );
    let queued = w.spool.list(false).await.expect("queued");
    assert_eq!(queued.len(), 2);
    for e in &queued {
        assert_eq!(e.attempts, 0, "not counted: {e:?}");
        let error = e.last_error.clone().unwrap_or_default();
        assert!(error.contains("Not a directory"), "{error}");
    }

    std::fs::remove_file(&blocker).expect("remove the blocker");
    let s = w.spool.clone();
    support::wait_for(Duration::from_secs(10), "the queue to drain", move || {
        let s = s.clone();
        async move { s.pending().await.map(|p| p.is_empty()).unwrap_or(false) }
    })
    .await;
    let p = problems.clone();
    support::wait_for(Duration::from_secs(10), "the problem to clear", move || {
        let p = p.clone();
        async move { p.list().is_empty() }
    })
    .await;
    let events = w.stop().await;
    assert!(!events.iter().any(|e| e["event"] == "sent_copy_failed"));
    let stored: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "sent_copy_stored")
        .collect();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|e| e["attempts"] == 1), "{stored:?}");
}

#[tokio::test]
async fn a_commit_wakes_the_workers_without_waiting_for_a_scan() {
    let mail = tempfile::tempdir().expect("tempdir");
    let rig = Rig::start(&format!(
        "  scan_interval: 1h\n  store: {{ backend: maildir, root: \"{}/{{mailbox}}\" }}\n",
        mail.path().display()
    ));
    // One copy stored means the dispatcher is past its start-up scan (it scans before it waits
    // for wake-ups): from then on, with a 1 h scan interval, only a commit can wake it.
    let (body, mid) = message(0, 500);
    rig.commit_quietly(ALICE, &body, &mid).await;
    rig.drained(Duration::from_secs(5)).await;
    for n in 1..3 {
        let (body, mid) = message(n, 500);
        // Straight into the spool, as the milter does: no explicit wake-up.
        rig.commit_quietly(ALICE, &body, &mid).await;
        rig.drained(Duration::from_secs(5)).await;
    }
    let cur = files(&mail.path().join("alice@contoso.com/.Sent Items/cur"));
    assert_eq!(cur.len(), 3);
    rig.stop().await;
}

/// The store remembers folders it made, so that a copy into them checks nothing first; a
/// folder removed behind its back (a user deleting it) is made again by the next copy rather
/// than failing it.
#[tokio::test]
async fn a_folder_removed_under_the_store_is_made_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path().join("spool")).expect("spool");
    let store = MaildirStore::new(format!("{}/m/{{mailbox}}", dir.path().display()));
    let folder = dir.path().join("m/alice@contoso.com/.Sent Items");
    for n in 0..2 {
        let (body, mid) = message(10 + n, 2000);
        let id = support::dovecot::commit(&spool, ALICE, &body, &mid).await;
        let meta = spool.read_meta(&id).await.expect("meta");
        let copy = SentCopy {
            id,
            meta: &meta,
            message: spool.open_message(&id).await.expect("message"),
            maybe_stored: false,
        };
        store.deliver(copy).await.expect("deliver");
        let cur = files(&folder.join("cur"));
        assert_eq!(cur.len(), 1, "{cur:?}");
        assert_eq!(std::fs::read(&cur[0]).expect("read"), body);
        assert!(folder.join("maildirfolder").exists());
        std::fs::remove_dir_all(&folder).expect("remove the folder");
    }
}

/// Where each delivery ran: the thread's name, and whether it may block in place.
type Seen = Arc<std::sync::Mutex<Vec<(Option<String>, bool)>>>;

/// A store that records the thread each delivery ran on, optionally blocking it for a while
/// (a sync on a slow disk), and then stores nothing.
struct WhereDelivered {
    blocking: bool,
    hold: Duration,
    seen: Seen,
}

/// Waits until the store has seen its first delivery.
async fn delivery_started(seen: &Seen) {
    let seen = seen.clone();
    support::wait_for(
        Duration::from_secs(10),
        "the delivery to start",
        move || {
            let started = seen.lock().map(|s| !s.is_empty()).unwrap_or(false);
            async move { started }
        },
    )
    .await;
}

impl SentItemsStore for WhereDelivered {
    fn name(&self) -> &'static str {
        "maildir"
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn blocking_io(&self) -> bool {
        self.blocking
    }

    async fn deliver(&self, _copy: SentCopy<'_>) -> Result<Stored, StoreError> {
        let thread = std::thread::current().name().map(str::to_string);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((thread, submitgate::fsutil::may_block()));
        }
        if !self.hold.is_zero() {
            // Blocks the thread in place, as a Maildir copy's syncs do.
            std::thread::sleep(self.hold);
        }
        Ok(Stored::default())
    }

    async fn release_idle(&self, _all: bool) {}
}

#[tokio::test]
async fn a_blocking_store_delivers_on_threads_that_may_block_and_a_network_store_does_not() {
    for blocking in [true, false] {
        let seen = Seen::default();
        let store = WhereDelivered {
            blocking,
            hold: Duration::ZERO,
            seen: seen.clone(),
        };
        let w = Workers::start(tempfile::tempdir().expect("tempdir"), store);
        for n in 0..4 {
            w.commit(ALICE, n).await;
        }
        let s = w.spool.clone();
        support::wait_for(Duration::from_secs(10), "entries delivered", move || {
            let s = s.clone();
            async move { s.pending().await.map(|p| p.is_empty()).unwrap_or(false) }
        })
        .await;
        w.stop().await;
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen.len(), 4, "{seen:?}");
        for (thread, may_block) in seen {
            if blocking {
                // The Maildir store's file work runs in place, on the delivery threads.
                assert_eq!(thread.as_deref(), Some("sent-items"));
                assert!(may_block);
            } else {
                // The IMAP store's attempts stay on the daemon's runtime.
                assert_ne!(thread.as_deref(), Some("sent-items"));
                assert!(!may_block);
            }
        }
    }
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_delivery_blocked_in_place() {
    let seen = Seen::default();
    let store = WhereDelivered {
        blocking: true,
        hold: Duration::from_secs(30),
        seen: seen.clone(),
    };
    let w = Workers::start(tempfile::tempdir().expect("tempdir"), store);
    let id = w.commit(ALICE, 1).await;
    delivery_started(&seen).await;
    assert_eq!(w.spool.pending().await.expect("pending"), vec![id]);
    let started = std::time::Instant::now();
    // shutdown_grace is 1 s in these workers: the stop waits that and a second more, not 30 s.
    let events = w.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    // Abandoned, not reported stored: the entry stays queued for the next start.
    assert!(
        !events.iter().any(|e| e["event"] == "sent_copy_stored"),
        "{events:?}"
    );
}

#[test]
fn workers_dropped_with_their_runtime_do_not_wait_for_a_blocked_delivery() {
    // No stop: the daemon's runtime ends with the dispatcher still running (a failed start, a
    // panic). Its delivery threads must be let go, not waited for.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let seen = Seen::default();
    let w = runtime.block_on(async {
        let store = WhereDelivered {
            blocking: true,
            hold: Duration::from_secs(30),
            seen: seen.clone(),
        };
        let w = Workers::start(tempfile::tempdir().expect("tempdir"), store);
        w.commit(ALICE, 1).await;
        delivery_started(&seen).await;
        w
    });
    // A delivery runtime dropped plainly inside the daemon's would panic there ("Cannot drop
    // a runtime in a context where blocking is not allowed"; tokio catches it): count those.
    let dropped_in_async = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let previous = std::panic::take_hook();
    let count = dropped_in_async.clone();
    std::panic::set_hook(Box::new(move |info| {
        if info.to_string().contains("Cannot drop a runtime") {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        previous(info);
    }));
    let started = std::time::Instant::now();
    drop(runtime);
    let took = started.elapsed();
    drop(std::panic::take_hook());
    drop(w);
    assert!(
        took < Duration::from_secs(10),
        "the runtime's drop took {took:?}"
    );
    assert_eq!(
        dropped_in_async.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the delivery runtime was dropped inside the daemon's runtime"
    );
}
