//! Crash safety of the Sent Items capture, with the real binary: `kill -9` while a large
//! message streams into the spool, restart, and check that no partial entry was committed,
//! that the temp file is gone, and that the entries committed before are intact; and `kill -9`
//! in the middle of concurrent sessions (commits sharing their fdatasyncs) while the delivery
//! workers store copies into a Maildir, restart, and check that every message Postfix was told
//! to continue has exactly one copy and no other message has more than one.

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
    setup_with("")
}

/// A daemon directory; `store` goes into the `sent_items` flow mapping, with `{dir}` standing
/// for the directory.
fn setup_with(store: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = store.replace("{dir}", &dir.path().display().to_string());
    let pdir = dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    // A load test: Exchange's 30 messages a minute per mailbox would defer it.
    let contoso = CONTOSO.replace(
        "mailboxes:\n",
        "sending_limits: { messages_per_minute: 0 }\nmailboxes:\n",
    );
    std::fs::write(pdir.join("contoso.yaml"), contoso).unwrap();
    let spool = dir.path().join("spool");
    std::fs::write(
        dir.path().join("submitgate.yaml"),
        format!(
            "milter: [\"inet:127.0.0.1:0\"]\npolicies: {}\naudit: {{ path: {} }}\nsent_items: {{ spool: {}{store} }}\n",
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

/// One whole milter session for `mailbox` whose message is `qid`, as Postfix sends it, with
/// every error returned rather than panicking (the daemon is killed under it): `Ok(true)` when
/// end-of-message was answered "continue".
async fn session(port: u16, mailbox: &str, qid: &str) -> Result<bool, String> {
    use futures_util::{SinkExt, StreamExt};
    use submitgate::milter::codec::{
        MtaCodec, SMFIA_INET, SMFIC_CONNECT, SMFIC_DATA, SMFIC_MAIL, SMFIC_RCPT, SMFI_CURR_ACTS,
        SMFI_CURR_PROT,
    };
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let mut framed = tokio_util::codec::Framed::new(stream, MtaCodec::default());
    let mut protocol = 0;
    let body = format!("Subject: {qid}\r\nMessage-ID: <{qid}@crash.test>\r\n\r\n{qid}\r\n");
    let macro_ = |stage, pairs: &[(&str, &str)]| Milter::Macro {
        stage,
        macros: pairs.iter().map(|(n, v)| (b(n), b(v))).collect(),
    };
    let sender = format!("<{mailbox}>");
    let script = vec![
        Milter::OptNeg {
            version: 6,
            actions: SMFI_CURR_ACTS,
            protocol: SMFI_CURR_PROT,
        },
        macro_(SMFIC_CONNECT, &[("j", "mx.test")]),
        Milter::Connect {
            hostname: b("client.example"),
            family: SMFIA_INET,
            port: Some(40000),
            address: b("192.0.2.10"),
        },
        Milter::Helo(b("client.example")),
        macro_(
            SMFIC_MAIL,
            &[("{auth_type}", "PLAIN"), ("{auth_authen}", mailbox)],
        ),
        Milter::Mail {
            args: vec![b(&sender)],
        },
        macro_(SMFIC_RCPT, &[("{rcpt_addr}", "x@example.net")]),
        Milter::Rcpt {
            args: vec![b("<x@example.net>")],
        },
        macro_(SMFIC_DATA, &[("i", qid)]),
        Milter::Data,
        Milter::Header {
            name: b("Subject"),
            value: b(qid),
        },
        Milter::EndOfHeaders,
        Milter::Body(Bytes::from(body)),
        Milter::EndOfMessage(Bytes::new()),
    ];
    for command in script {
        let eom = matches!(command, Milter::EndOfMessage(_));
        let wants = command.expects_reply(protocol);
        framed.send(command).await.map_err(|e| e.to_string())?;
        if !wants {
            continue;
        }
        let reply = match framed.next().await {
            Some(Ok(reply)) => reply,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".to_string()),
        };
        match reply {
            Reply::OptNeg { protocol: p, .. } => protocol = p,
            Reply::Continue if eom => {
                let _ = framed.send(Milter::Quit).await;
                return Ok(true);
            }
            Reply::Continue => {}
            other => return Ok(matches!(other, Reply::Accept) && eom),
        }
    }
    Ok(false)
}

/// Copies in the Maildirs under `mail`, counted by the queue id in their Subject.
fn copies(mail: &Path) -> std::collections::HashMap<String, usize> {
    let mut found = std::collections::HashMap::new();
    let mut stack = vec![mail.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.map_while(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.parent().is_some_and(|p| p.ends_with("cur")) {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if let Some(qid) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: "))
                    .map(str::to_string)
                {
                    *found.entry(qid).or_default() += 1;
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_and_duplicates_no_copy() {
    let (dir, spool) =
        setup_with(", store: { backend: maildir, root: \"{dir}/mail/{domain}/{local}/Maildir\" }");
    let mail_root = dir.path().join("mail");

    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut daemon = start(dir.path(), 1);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (answered, sent, port) = (answered.clone(), sent.clone(), daemon.port);
        tasks.spawn(async move {
            for n in 0.. {
                let qid = format!("Q{t}N{n}");
                sent.lock().unwrap().push(qid.clone());
                match session(port, &format!("user{t}@contoso.com"), &qid).await {
                    Ok(true) => answered.lock().unwrap().push(qid),
                    Ok(false) => panic!("{qid}: not continued"),
                    Err(_) => return,
                }
            }
        });
    }
    // Commits and deliveries under way, then kill -9.
    support::wait_for(Duration::from_secs(20), "300 messages continued", || {
        let answered = answered.clone();
        async move { answered.lock().unwrap().len() >= 300 }
    })
    .await;
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();

    // Restart: the queue drains into the Maildirs.
    let mut daemon = start(dir.path(), 2);
    support::wait_for(Duration::from_secs(30), "the spool to drain", || {
        let spool = spool.clone();
        async move { read_spool_entries(&spool).is_empty() }
    })
    .await;
    let found = copies(&mail_root);
    for qid in &answered {
        assert_eq!(
            found.get(qid),
            Some(&1),
            "{qid}: continued, so exactly one copy"
        );
    }
    for (qid, n) in &found {
        assert!(sent.contains(qid), "{qid}: a copy of a message never sent");
        assert_eq!(*n, 1, "{qid}: {n} copies");
    }
    assert!(spool_temp_files(&spool).is_empty());
    let pid = i32::try_from(daemon.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(daemon.child.wait().unwrap().success());
}
