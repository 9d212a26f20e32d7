//! Sent Items delivery into a real Dovecot over IMAP: both login modes, byte-identical `\Seen`
//! copies, TRYCREATE, a wrong master secret, an outage, a connection cut right after the
//! APPEND (through a small proxy in the test), and the connection pool (one login for many
//! copies of a mailbox, a Dovecot restart in between, the bound on idle connections). Skipped,
//! with a note, without Dovecot.

mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::dovecot::{message, Dovecot, Options, Rig, SECRET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ALICE: &str = "alice@contoso.com";
const FAST_RETRY: &str =
    "  retry: { initial: 100ms, max: 300ms, auth_failure_attempts: 2 }\n  scan_interval: 200ms\n";

async fn delivers_in_mode(login: &str) {
    let Some(dovecot) = Dovecot::start(login, Options::default()) else {
        return;
    };
    let secret = dovecot.secret_file(SECRET);
    let rig = Rig::start(&format!(
        "  store: {}\n{FAST_RETRY}",
        dovecot.store_yaml(login, &secret)
    ));
    let mut sent = Vec::new();
    for n in 0..3 {
        let (body, mid) = message(n, 10 * 1024);
        rig.commit(ALICE, &body, &mid).await;
        sent.push((body, mid));
    }
    // 8-bit and a bare, unusual but legal layout survive too.
    let odd =
        b"Subject: odd\r\nMessage-ID: <odd@contoso.com>\r\n\r\n\xff\xfe binary-ish\r\n.\r\n..\r\n"
            .to_vec();
    rig.commit(ALICE, &odd, "<odd@contoso.com>").await;
    sent.push((odd, "<odd@contoso.com>".into()));
    rig.drained(Duration::from_secs(20)).await;

    let stored = dovecot.fetch(ALICE, "Sent Items").await;
    assert_eq!(stored.len(), sent.len(), "{}", dovecot.log());
    for (body, _) in &sent {
        let found: Vec<_> = stored.iter().filter(|(b, _)| b == body).collect();
        assert_eq!(found.len(), 1, "one byte-identical copy");
        assert!(found[0].1, "copy is \\Seen");
    }
    let events = rig.events().await;
    let stored_events: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "sent_copy_stored")
        .collect();
    assert_eq!(stored_events.len(), sent.len());
    for e in &stored_events {
        assert_eq!(e["mailbox"], ALICE);
        assert_eq!(e["folder"], "Sent Items");
        assert_eq!(e["store"], "imap");
        assert_eq!(e["attempts"], 1);
        assert!(e["uid"].as_u64().is_some(), "APPENDUID reported: {e}");
        assert!(e["uid_validity"].as_u64().is_some());
        assert!(e["message_id"].as_str().is_some());
    }
    assert!(
        !dovecot.log().contains(SECRET),
        "the secret never appears in logs"
    );
    rig.stop().await;
}

#[tokio::test]
async fn delivers_with_master_user_login() {
    delivers_in_mode("master_user").await;
}

#[tokio::test]
async fn delivers_with_sasl_authzid() {
    delivers_in_mode("sasl_authzid").await;
}

#[tokio::test]
async fn missing_folder_is_created_after_trycreate() {
    let Some(dovecot) = Dovecot::start(
        "missing_folder_is_created_after_trycreate",
        Options {
            auto_sent: false,
            ..Options::default()
        },
    ) else {
        return;
    };
    assert!(dovecot.fetch(ALICE, "Sent Items").await.is_empty());
    let secret = dovecot.secret_file(SECRET);
    let rig = Rig::start(&format!(
        "  store: {}\n{FAST_RETRY}",
        dovecot.store_yaml("master_user", &secret)
    ));
    let (body, mid) = message(1, 2048);
    rig.commit(ALICE, &body, &mid).await;
    rig.drained(Duration::from_secs(20)).await;
    let stored = dovecot.fetch(ALICE, "Sent Items").await;
    assert!(
        stored == vec![(body.clone(), true)],
        "expected one byte-identical \\Seen copy, found {} message(s)",
        stored.len()
    );
    assert!(dovecot.subscribed(ALICE, "Sent Items"), "folder subscribed");
    let events = rig.events().await;
    assert!(events
        .iter()
        .any(|e| e["event"] == "sent_copy_stored" && e["attempts"] == 1));
    rig.stop().await;
}

/// A wrong master secret is the operator's to fix: the copies stay queued (the attempts are not
/// counted, nothing moves to `failed/`), the one cause is listed, and once the secret file is
/// corrected the next attempt stores the copy and clears the problem.
#[tokio::test]
async fn wrong_master_secret_keeps_copies_queued_until_it_is_fixed() {
    let Some(dovecot) = Dovecot::start(
        "wrong_master_secret_keeps_copies_queued_until_it_is_fixed",
        Options::default(),
    ) else {
        return;
    };
    let secret = dovecot.secret_file("not-the-secret");
    let rig = Rig::start(&format!(
        "  store: {}\n{FAST_RETRY}",
        dovecot.store_yaml("master_user", &secret)
    ));
    let (body, mid) = message(1, 1024);
    let id = rig.commit(ALICE, &body, &mid).await;
    let (body2, mid2) = message(2, 1024);
    rig.commit("bob@contoso.com", &body2, &mid2).await;
    // Well past auth_failure_attempts (2): before, the copies were given up by now.
    let problems = rig.delivery.problems().clone();
    support::wait_for(Duration::from_secs(20), "six refused logins", || {
        let problems = problems.clone();
        async move {
            problems
                .list()
                .first()
                .is_some_and(|p| p.failed_attempts >= 6)
        }
    })
    .await;
    let listed = problems.list();
    assert_eq!(listed.len(), 1, "one cause for both mailboxes: {listed:?}");
    let cause = &listed[0].cause;
    assert!(cause.contains("AUTHENTICATIONFAILED"), "{cause}");
    assert!(cause.contains("master_password_file"), "{cause}");
    assert!(!cause.contains("not-the-secret"), "secret not in the cause");
    assert_eq!(listed[0].mailboxes, 2);
    assert!(rig.spool.list(true).await.expect("failed").is_empty());
    let queued = rig.spool.list(false).await.expect("queued");
    assert_eq!(queued.len(), 2);
    let alice = queued.iter().find(|e| e.id == id).expect("alice queued");
    // An attempt in flight shows itself (the IMAP store records it first); finished ones that
    // failed this way are not counted.
    assert!(alice.attempts <= 1, "not counted: {alice:?}");
    let error = alice.last_error.clone().unwrap_or_default();
    assert!(error.contains("login as alice@contoso.com"), "{error}");

    // The operator fixes the file: read again at the next login. (Dovecot's auth penalty
    // for this address may delay the next logins by up to 15 s.)
    std::fs::write(&secret, format!("{SECRET}\n")).expect("fix the secret");
    rig.drained(Duration::from_secs(60)).await;
    assert!(problems.list().is_empty(), "fixed: {:?}", problems.list());
    let events = rig.events().await;
    assert!(!events.iter().any(|e| e["event"] == "sent_copy_failed"));
    let stored: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "sent_copy_stored")
        .collect();
    assert_eq!(stored.len(), 2);
    // The refused logins are not counted (a login slowed past the timeout by Dovecot's
    // penalty would be, as a transient failure).
    assert!(
        stored.iter().all(|e| e["attempts"].as_u64() < Some(3)),
        "{stored:?}"
    );
    assert_eq!(dovecot.fetch(ALICE, "Sent Items").await, vec![(body, true)]);
    rig.stop().await;
}

#[tokio::test]
async fn outage_is_ridden_out_and_each_copy_stored_once() {
    let Some(dovecot) = Dovecot::start(
        "outage_is_ridden_out_and_each_copy_stored_once",
        Options::default(),
    ) else {
        return;
    };
    let secret = dovecot.secret_file(SECRET);
    dovecot.stop();
    let rig = Rig::start(&format!(
        "  store: {}\n{FAST_RETRY}",
        dovecot.store_yaml("master_user", &secret)
    ));
    let mut sent = Vec::new();
    for n in 0..5 {
        let (body, mid) = message(n, 4096);
        rig.commit(ALICE, &body, &mid).await;
        sent.push(body);
    }
    // Let every entry fail at least once.
    let spool = rig.spool.clone();
    support::wait_for(Duration::from_secs(10), "failed attempts", move || {
        let spool = spool.clone();
        async move {
            spool
                .list(false)
                .await
                .map(|l| {
                    l.len() == 5 && l.iter().all(|e| e.attempts >= 1 && e.last_error.is_some())
                })
                .unwrap_or(false)
        }
    })
    .await;
    let queued = rig.spool.list(false).await.expect("list");
    assert!(queued[0]
        .last_error
        .as_deref()
        .unwrap_or_default()
        .contains("cannot connect"));
    dovecot.restart();
    rig.drained(Duration::from_secs(20)).await;
    let stored = dovecot.fetch(ALICE, "Sent Items").await;
    assert_eq!(stored.len(), 5);
    for body in &sent {
        assert_eq!(
            stored.iter().filter(|(b, seen)| b == body && *seen).count(),
            1
        );
    }
    assert!(rig.spool.list(true).await.expect("failed").is_empty());
    rig.stop().await;
}

/// Forwards to `upstream`, but drops both sides instead of passing on the server's answer
/// that matches the next of `cuts` (e.g. `Append completed`: the copy is stored, the client
/// cannot know). Each pattern cuts once, in order.
async fn cutting_proxy(upstream: u16, cuts: Arc<Mutex<VecDeque<&'static [u8]>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let cuts = cuts.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    let cut = {
                        let mut cuts = cuts.lock().unwrap_or_else(|p| p.into_inner());
                        let hit = cuts.front().is_some_and(|pattern| {
                            chunk
                                .windows(pattern.len())
                                .any(|w| w.eq_ignore_ascii_case(pattern))
                        });
                        if hit {
                            cuts.pop_front();
                        }
                        hit
                    };
                    if cut || cw.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    port
}

async fn cut_run(cuts: &[&'static [u8]], expect_attempts: u64) {
    cut_run_with(Options::default(), cuts, expect_attempts, true).await;
}

async fn cut_run_with(
    options: Options,
    cuts: &[&'static [u8]],
    expect_attempts: u64,
    expect_found: bool,
) {
    let Some(dovecot) = Dovecot::start("connection cut", options) else {
        return;
    };
    let cuts = Arc::new(Mutex::new(cuts.iter().copied().collect::<VecDeque<_>>()));
    let proxy = cutting_proxy(dovecot.port, cuts.clone()).await;
    let secret = dovecot.secret_file(SECRET);
    let rig = Rig::start(&format!(
        "  store: {{ backend: imap, address: \"127.0.0.1:{proxy}\", tls: none, login: master_user, master_user: {}, master_password_file: \"{}\", timeout: 10s }}\n{FAST_RETRY}",
        support::dovecot::MASTER,
        secret.display()
    ));
    let (body, mid) = message(7, 10 * 1024);
    rig.commit(ALICE, &body, &mid).await;
    rig.drained(Duration::from_secs(20)).await;
    assert!(
        cuts.lock().map(|c| c.is_empty()).unwrap_or(false),
        "every cut happened"
    );
    let stored = dovecot.fetch(ALICE, "Sent Items").await;
    assert!(
        stored == vec![(body.clone(), true)],
        "expected one byte-identical \\Seen copy, found {} message(s)",
        stored.len()
    );
    let events = rig.events().await;
    let ev: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "sent_copy_stored")
        .collect();
    assert_eq!(ev.len(), 1);
    if expect_found {
        assert_eq!(ev[0]["already_stored"], true, "{}", ev[0]);
    } else {
        assert!(ev[0].get("already_stored").is_none(), "{}", ev[0]);
    }
    assert_eq!(ev[0]["attempts"], expect_attempts);
    rig.stop().await;
}

#[tokio::test]
async fn connection_cut_after_append_gives_exactly_one_copy() {
    cut_run(&[b"Append completed"], 2).await;
}

/// The retry's search is cut too: the copy must still count as "maybe stored" on the third
/// attempt, which searches again instead of appending a second copy.
#[tokio::test]
async fn connection_cut_during_the_search_keeps_the_outcome_unknown() {
    cut_run(&[b"Append completed", b"Search completed"], 3).await;
}

/// Cut while the folder does not exist yet: the retry's EXAMINE is told `NONEXISTENT`, which
/// proves the copy absent, so it creates the folder and appends once.
#[tokio::test]
async fn connection_cut_before_the_folder_exists_appends_once() {
    cut_run_with(
        Options {
            auto_sent: false,
            ..Options::default()
        },
        &[b"TRYCREATE"],
        2,
        false,
    )
    .await;
}

/// Logins of `user` in Dovecot's log.
fn logins(dovecot: &Dovecot, user: &str) -> usize {
    dovecot
        .log()
        .matches(&format!("Login: user=<{user}>"))
        .count()
}

/// Every entry stored once, at its first attempt (no failed attempt, no retry).
async fn stored_at_first_attempt(rig: &Rig, expected: usize) {
    let events = rig.events().await;
    let stored: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "sent_copy_stored")
        .collect();
    assert_eq!(stored.len(), expected, "{events:?}");
    for e in &stored {
        assert_eq!(e["attempts"], 1, "{e}");
        assert!(e.get("already_stored").is_none(), "{e}");
    }
}

/// A burst of copies from one sender goes over one session: the workers take turns on the
/// mailbox instead of logging in once each.
#[tokio::test]
async fn many_copies_of_one_mailbox_share_one_login() {
    let Some(dovecot) = Dovecot::start(
        "many_copies_of_one_mailbox_share_one_login",
        Options::default(),
    ) else {
        return;
    };
    let secret = dovecot.secret_file(SECRET);
    let rig = Rig::start(&format!(
        "  workers: 4\n  store: {}\n{FAST_RETRY}",
        dovecot.store_yaml("master_user", &secret)
    ));
    let mut sent = Vec::new();
    for n in 0..20 {
        let (body, mid) = message(n, 4096);
        rig.commit_quietly(ALICE, &body, &mid).await;
        sent.push(body);
    }
    rig.delivery.wake();
    rig.drained(Duration::from_secs(20)).await;
    let stored = dovecot.fetch(ALICE, "Sent Items").await;
    assert_eq!(stored.len(), sent.len());
    for body in &sent {
        assert_eq!(stored.iter().filter(|(b, _)| b == body).count(), 1);
    }
    stored_at_first_attempt(&rig, sent.len()).await;
    // The fetch above logs in once more.
    assert_eq!(logins(&dovecot, ALICE), 2, "{}", dovecot.log());
    rig.stop().await;
}

/// The server ends a session while it waits in the pool (`doveadm kick`: `* BYE` and close),
/// then Dovecot restarts: the next copy notices the goodbye before using the connection and
/// logs in again, instead of failing an attempt (which would hold the copy back for
/// `retry.initial` and then search for it); nothing is lost or stored twice.
#[tokio::test]
async fn a_session_ended_by_the_server_costs_a_login_not_an_attempt() {
    let Some(dovecot) = Dovecot::start(
        "a_session_ended_by_the_server_costs_a_login_not_an_attempt",
        Options::default(),
    ) else {
        return;
    };
    let secret = dovecot.secret_file(SECRET);
    // A retry would only come after a minute: the test would time out on a failed attempt.
    let rig = Rig::start(&format!(
        "  workers: 2\n  store: {}\n  retry: {{ initial: 60s, max: 60s }}\n",
        dovecot.store_yaml("master_user", &secret)
    ));
    let mut sent = Vec::new();
    for round in 0..3 {
        for n in 0..5 {
            let (body, mid) = message(round * 10 + n, 4096);
            rig.commit(ALICE, &body, &mid).await;
            sent.push(body);
        }
        rig.drained(Duration::from_secs(20)).await;
        if round == 2 {
            break;
        }
        // Dovecot 2.3 lets the sessions of a stopped master live on: kick, and wait until the
        // session is gone (its goodbye sent), so that the next copy finds it closed.
        let ended = |dovecot: &Dovecot| {
            let log = dovecot.log();
            log.lines()
                .filter(|l| l.contains(&format!("imap({ALICE})")) && l.contains("Disconnected"))
                .count()
        };
        let before = ended(&dovecot);
        dovecot.kick(ALICE);
        support::wait_for(Duration::from_secs(10), "the kicked session to end", || {
            let now = ended(&dovecot);
            async move { now > before }
        })
        .await;
        if round == 1 {
            dovecot.stop();
            dovecot.restart();
        }
    }
    stored_at_first_attempt(&rig, sent.len()).await;
    assert_eq!(logins(&dovecot, ALICE), 3, "{}", dovecot.log());
    let stored = dovecot.fetch(ALICE, "Sent Items").await;
    assert_eq!(stored.len(), sent.len());
    for body in &sent {
        assert_eq!(stored.iter().filter(|(b, _)| b == body).count(), 1);
    }
    rig.stop().await;
}

/// Idle connections are bounded across mailboxes: with room for two, the others are logged
/// out as later ones come back, and a mailbox whose connection was let go logs in again.
#[tokio::test]
async fn idle_connections_are_bounded_and_the_oldest_is_logged_out() {
    let Some(dovecot) = Dovecot::start(
        "idle_connections_are_bounded_and_the_oldest_is_logged_out",
        Options::default(),
    ) else {
        return;
    };
    let secret = dovecot.secret_file(SECRET);
    let store = dovecot
        .store_yaml("master_user", &secret)
        .replace(" }", ", max_idle_connections: 2 }");
    let rig = Rig::start(&format!("  workers: 1\n  store: {store}\n{FAST_RETRY}"));
    let users: Vec<String> = (0..6).map(|n| format!("user{n}@contoso.com")).collect();
    for (n, user) in users.iter().enumerate() {
        let (body, mid) = message(n, 2048);
        rig.commit(user, &body, &mid).await;
        rig.drained(Duration::from_secs(20)).await;
    }
    // user0..user3 were let go, user4 and user5 wait in the pool.
    let log_outs = |dovecot: &Dovecot| dovecot.log().matches("Logged out").count();
    support::wait_for(Duration::from_secs(10), "four logouts", || {
        let n = log_outs(&dovecot);
        async move { n >= 4 }
    })
    .await;
    assert_eq!(log_outs(&dovecot), 4, "{}", dovecot.log());
    // user5's connection is reused, user0 logs in again.
    for (n, user) in [(10, &users[5]), (11, &users[0])] {
        let (body, mid) = message(n, 2048);
        rig.commit(user, &body, &mid).await;
        rig.drained(Duration::from_secs(20)).await;
    }
    assert_eq!(logins(&dovecot, &users[5]), 1, "{}", dovecot.log());
    assert_eq!(logins(&dovecot, &users[0]), 2, "{}", dovecot.log());
    stored_at_first_attempt(&rig, 8).await;
    rig.stop().await;
}
