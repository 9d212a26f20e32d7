//! From the milter to Dovecot inside one daemon: a submission captured by the milter front end
//! is delivered by the workers into the sender's `Sent Items` over IMAP — once, `\Seen`,
//! byte-identical to what the client sent — and a mailbox with `sent_items.enabled: false` gets
//! no copy. (The same path through the real Postfix belongs to tests/e2e.) Skipped, with a
//! note, without Dovecot.

mod support;

use std::time::Duration;

use submitgate::milter::codec::Reply;
use support::daemon::{TestDaemon, CONTOSO};
use support::dovecot::{Dovecot, Options, SECRET};

#[tokio::test]
async fn milter_capture_reaches_dovecot_once() {
    let Some(dovecot) = Dovecot::start("milter_capture_reaches_dovecot_once", Options::default())
    else {
        return;
    };
    let secret = dovecot.secret_file(SECRET);
    let policy = format!("{CONTOSO}  nocopy@contoso.com: {{ sent_items: {{ enabled: false }} }}\n");
    let front = format!(
        "milter: [\"inet:127.0.0.1:0\"]\nsent_items:\n  spool: {{dir}}/spool\n  scan_interval: 1h\n  store: {}\n",
        dovecot.store_yaml("master_user", &secret)
    );
    let t = TestDaemon::start_with(&front, &[("contoso.yaml", &policy)], "").await;
    assert!(t.daemon.sent_items().is_some(), "workers run with a store");

    let headers = [
        ("From", " bob@contoso.com"),
        ("Subject", " folded\n header"),
        ("Message-ID", " <milter-e2e@contoso.com>"),
    ];
    let expected: &[u8] = b"From: bob@contoso.com\r\nSubject: folded\r\n header\r\nMessage-ID: <milter-e2e@contoso.com>\r\n\r\nbody line\r\n";
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    let r = c
        .message("Q1", &["x@example.net"], &headers, &[b"body line\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);
    c.abort().await;
    assert_eq!(c.mail(Some("nocopy@contoso.com")).await, Reply::Continue);
    let r = c
        .message("Q2", &["x@example.net"], &[("Subject", " s")], &[b"x\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);
    c.quit().await;

    // The commit wakes the workers (the rescan interval is an hour).
    let spool = t.daemon.sent_items().map(|s| s.spool.clone());
    support::wait_for(Duration::from_secs(10), "the copy to be delivered", || {
        let spool = spool.clone();
        async move {
            match spool {
                Some(s) => s.pending().await.map(|p| p.is_empty()).unwrap_or(false),
                None => false,
            }
        }
    })
    .await;
    let stored = dovecot.fetch("bob@contoso.com", "Sent Items").await;
    assert!(
        stored == vec![(expected.to_vec(), true)],
        "one byte-identical \\Seen copy expected, found {} message(s)",
        stored.len()
    );
    assert!(dovecot
        .fetch("nocopy@contoso.com", "Sent Items")
        .await
        .is_empty());
    let audit = t.audit().await;
    let ev: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "sent_copy_stored")
        .collect();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["mailbox"], "bob@contoso.com");
    assert_eq!(ev[0]["queue_id"], "Q1");
    assert_eq!(ev[0]["message_id"], "<milter-e2e@contoso.com>");
    t.daemon.shutdown().await;
}
