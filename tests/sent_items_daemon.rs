//! The real `submitgate` binary with Sent Items: `kill -9` (or SIGTERM) during deliveries into
//! Dovecot, then a restart, delivers every entry exactly once (skipped, with a note, without
//! Dovecot); and the `spool list` / `spool retry` commands beside it.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use submitgate::sent_items::spool::Spool;
use support::dovecot::{message, Dovecot, Options, SECRET};
use support::read_audit;

const ALICE: &str = "alice@contoso.com";

fn write_config(dir: &Path, sent_items: &str) -> std::path::PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("policies");
    std::fs::write(
        policies.join("contoso.yaml"),
        "organization: contoso\ndomains: [contoso.com]\n",
    )
    .expect("policy");
    let path = dir.join("submitgate.yaml");
    std::fs::write(
        &path,
        format!(
            "policy: [\"inet:127.0.0.1:0\"]\npolicies: \"{}\"\naudit: {{ path: \"{}\" }}\nsent_items:\n  spool: \"{}\"\n{sent_items}",
            policies.display(),
            dir.join("audit.log").display(),
            dir.join("spool").display()
        ),
    )
    .expect("config");
    path
}

fn serve(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("SUBMITGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn submitgate")
}

fn stored_count(dir: &Path) -> usize {
    read_audit(&dir.join("audit.log"))
        .iter()
        .filter(|e| e["event"] == "sent_copy_stored")
        .count()
}

/// Stops the daemon in the middle of a backlog (`kill -9`, or SIGTERM with `graceful`),
/// restarts it, and checks that every entry reached Dovecot exactly once.
async fn interrupted_then_restarted(test: &str, graceful: bool) {
    let Some(dovecot) = Dovecot::start(test, Options::default()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dovecot.secret_file(SECRET);
    let config = write_config(
        dir.path(),
        &format!(
            "  workers: 4\n  retry: {{ initial: 1s, max: 2s }}\n  scan_interval: 200ms\n  store: {}\n",
            dovecot.store_yaml("master_user", &secret)
        ),
    );
    const N: usize = 300;
    let mut sent = HashMap::new();
    {
        let spool = Spool::open(dir.path().join("spool")).expect("spool");
        for n in 0..N {
            let (body, mid) = message(n, 4096);
            support::dovecot::commit(&spool, ALICE, &body, &mid).await;
            sent.insert(mid, body);
        }
    }
    let mut child = serve(&config);
    let audit_dir = dir.path().to_path_buf();
    support::wait_for(Duration::from_secs(30), "some deliveries", || {
        let d = audit_dir.clone();
        async move { stored_count(&d) >= N / 5 }
    })
    .await;
    if graceful {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let status = child.wait().expect("wait");
        assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    } else {
        child.kill().expect("kill -9");
        let _ = child.wait();
    }
    let before = stored_count(dir.path());
    assert!(before < N, "stopped before the end ({before} stored)");

    let mut child = serve(&config);
    let spool = Spool::attach(dir.path().join("spool")).expect("attach");
    support::wait_for(Duration::from_secs(60), "the spool to drain", || {
        let spool = spool.clone();
        async move { spool.pending().await.map(|p| p.is_empty()).unwrap_or(false) }
    })
    .await;
    // SIGTERM: a clean stop.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");

    assert!(spool.list(true).await.expect("failed").is_empty());
    let stored = dovecot.fetch(ALICE, "Sent Items").await;
    assert_eq!(stored.len(), N, "every entry exactly once");
    let mut seen_ids = HashMap::new();
    for (body, seen) in &stored {
        assert!(seen);
        let mid = sent
            .iter()
            .find(|(_, b)| *b == body)
            .map(|(m, _)| m.clone())
            .expect("a copy of a sent message, byte-identical");
        *seen_ids.entry(mid).or_insert(0) += 1;
    }
    assert_eq!(seen_ids.len(), N);
    assert!(seen_ids.values().all(|&c| c == 1));
}

#[tokio::test]
async fn kill_9_during_deliveries_then_restart_delivers_each_once() {
    interrupted_then_restarted(
        "kill_9_during_deliveries_then_restart_delivers_each_once",
        false,
    )
    .await;
}

#[tokio::test]
async fn sigterm_during_deliveries_then_restart_delivers_each_once() {
    interrupted_then_restarted(
        "sigterm_during_deliveries_then_restart_delivers_each_once",
        true,
    )
    .await;
}

fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run submitgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn spool_list_and_retry_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "  store: { backend: maildir, root: \"./mail/{domain}/{local}/Maildir\" }\n",
    );
    let spool = Spool::open(dir.path().join("spool")).expect("spool");
    let (body, mid) = message(1, 500);
    let queued = support::dovecot::commit(&spool, ALICE, &body, &mid).await;
    let (body, mid) = message(2, 500);
    let failed = support::dovecot::commit(&spool, "bob@contoso.com", &body, &mid).await;
    spool
        .fail(&failed, "imap 127.0.0.1:143: login refused")
        .await
        .expect("fail");

    let (ok, out) = cli(&config, &["spool", "list"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("MAILBOX") && out.contains("LAST ERROR"),
        "{out}"
    );
    assert!(
        out.contains(&queued.to_string()) && out.contains(ALICE),
        "{out}"
    );
    assert!(out.contains("4TestQ1"), "{out}");
    assert!(!out.contains(&failed.to_string()), "{out}");
    assert!(out.contains("1 entry"), "{out}");

    let (ok, out) = cli(&config, &["spool", "list", "--failed", "--json"]);
    assert!(ok, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json[0]["id"], failed.to_string());
    assert_eq!(json[0]["mailbox"], "bob@contoso.com");
    assert_eq!(json[0]["last_error"], "imap 127.0.0.1:143: login refused");

    let (ok, out) = cli(&config, &["spool", "retry", "not-an-id"]);
    assert!(!ok, "{out}");
    assert!(out.contains("invalid spool entry id"), "{out}");
    let (ok, out) = cli(&config, &["spool", "retry", &failed.to_string()]);
    assert!(ok, "{out}");
    assert!(out.contains("1 entry queued again"), "{out}");
    assert_eq!(
        spool.pending().await.expect("pending"),
        vec![queued, failed]
    );

    spool.fail(&queued, "x").await.expect("fail");
    spool.fail(&failed, "y").await.expect("fail");
    let (ok, out) = cli(&config, &["spool", "retry", "--all"]);
    assert!(ok, "{out}");
    assert!(out.contains("2 entries queued again"), "{out}");
    let (ok, out) = cli(&config, &["spool", "retry"]);
    assert!(!ok, "an id or --all is required: {out}");
}
