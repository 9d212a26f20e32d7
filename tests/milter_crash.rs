//! Crash safety of the Sent Items capture, with the real binary: `kill -9` while a large
//! message streams into the spool, restart, and check that no partial entry was committed,
//! that the temp file is gone, and that the entries committed before are intact.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use submitgate::milter::codec::{Command as Milter, Reply};
use support::daemon::{b, read_spool_entries, spool_temp_files, MilterClient, CONTOSO};

/// The daemon as a child process; its stderr goes to `log`.
struct Running {
    child: Child,
    port: u16,
}

fn start(dir: &Path, run: usize) -> Running {
    let log = dir.join(format!("daemon-{run}.log"));
    // Owned by `Running` at once: its Drop kills a daemon that a failing test leaves behind.
    let mut running = Running {
        child: Command::new(env!("CARGO_BIN_EXE_submitgate"))
            .arg("serve")
            .arg("--config")
            .arg(dir.join("submitgate.yaml"))
            .env("SUBMITGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        port: 0,
    };
    let deadline = support::Deadline::new(Duration::from_secs(20), "the daemon to start");
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let port = BufReader::new(text.as_bytes())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split("listener=inet:127.0.0.1:")
                    .nth(1)
                    .and_then(|p| p.trim().parse::<u16>().ok())
            });
        if let (Some(port), true) = (port, text.contains("ready")) {
            running.port = port;
            return running;
        }
        deadline.tick_sync();
    }
}

impl Drop for Running {
    /// A failing test still leaves no daemon behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    std::fs::write(pdir.join("contoso.yaml"), CONTOSO).unwrap();
    let spool = dir.path().join("spool");
    std::fs::write(
        dir.path().join("submitgate.yaml"),
        format!(
            "milter: [\"inet:127.0.0.1:0\"]\npolicies: {}\naudit: {{ path: {} }}\nsent_items: {{ spool: {} }}\n",
            pdir.display(),
            dir.path().join("audit.log").display(),
            spool.display()
        ),
    )
    .unwrap();
    (dir, spool)
}

async fn one_message(port: u16, qid: &str, body: &str) {
    let mut c = MilterClient::connect(port).await;
    c.open().await;
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    let r = c
        .message(
            qid,
            &["x@example.net"],
            &[("Subject", " committed")],
            &[body.as_bytes()],
        )
        .await;
    assert_eq!(r, Reply::Continue);
    c.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_streaming_leaves_no_partial_entry() {
    let (dir, spool) = setup();
    let mut daemon = start(dir.path(), 1);
    one_message(daemon.port, "QA", "first\r\n").await;
    one_message(daemon.port, "QB", "second\r\n").await;
    let before = read_spool_entries(&spool);
    assert_eq!(before.len(), 2);

    // A large message, streaming: past the write buffer, so a temp file is on disk.
    let mut c = MilterClient::connect(daemon.port).await;
    c.open().await;
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    c.send(Milter::Rcpt {
        args: vec![b("<x@example.net>")],
    })
    .await;
    c.send(Milter::Data).await;
    c.send(Milter::Header {
        name: b("Subject"),
        value: b(" large"),
    })
    .await;
    c.send(Milter::EndOfHeaders).await;
    let chunk =
        Bytes::from(b"0123456789abcdef0123456789abcdef0123456789abcdef012345678\r\n".repeat(1000));
    for _ in 0..40 {
        c.send(Milter::Body(chunk.clone())).await;
    }
    support::wait_for(
        Duration::from_secs(10),
        "a spool temp file over 1 MB",
        || async {
            let size: u64 = spool_temp_files(&spool)
                .iter()
                .filter_map(|f| std::fs::metadata(spool.join("tmp").join(f)).ok())
                .map(|m| m.len())
                .sum();
            size > 1_000_000
        },
    )
    .await;
    // kill -9: no chance to clean up.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert!(c.closed().await);
    assert_eq!(
        spool_temp_files(&spool).len(),
        1,
        "the partial file is left in tmp/"
    );
    assert_eq!(
        read_spool_entries(&spool),
        before,
        "nothing committed by the crash"
    );

    // Restart: the leftover is removed, committed entries are untouched, service resumes.
    let mut daemon = start(dir.path(), 2);
    assert!(
        spool_temp_files(&spool).is_empty(),
        "temp file not removed at start"
    );
    assert_eq!(read_spool_entries(&spool), before);
    one_message(daemon.port, "QC", "third\r\n").await;
    let after = read_spool_entries(&spool);
    assert_eq!(after.len(), 3);
    assert_eq!(after[..2], before[..]);
    assert_eq!(after[2].2["queue_id"], "QC");

    // SIGTERM: a clean stop.
    let pid = i32::try_from(daemon.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
