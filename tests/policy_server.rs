//! The policy delegation front end over real sockets: fixture replay, the in-flight limit,
//! lease release on END-OF-MESSAGE / connection close / idle timeout, isolation of bad
//! connections, and reloads that keep a good policy.

mod support;

use std::time::Duration;

use submitgate::policy::reload::ReloadOutcome;
use support::daemon::{TestDaemon, Txn, CONTOSO, FABRIKAM};

const FIXTURE: &str = include_str!("fixtures/postfix-3.7/policy-requests.txt");
const LIMIT_REPLY: &str = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded";
const TENANT: &str =
    "550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.";
const MAILBOX: &str =
    "550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.";

fn fixture_requests() -> Vec<String> {
    FIXTURE
        .split("\n\n")
        .filter(|r| !r.trim().is_empty())
        .map(|r| format!("{r}\n\n"))
        .collect()
}

#[tokio::test]
async fn fixture_replay_allowed_mailbox() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], "").await;
    let mut c = t.client().await;
    let reqs = fixture_requests();
    assert_eq!(reqs.len(), 9);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(
            c.raw(r.as_bytes()).await.as_deref(),
            Some("DUNNO"),
            "request {i}"
        );
        // Lease held from the first authenticated request until END-OF-MESSAGE.
        let expected = match i {
            0 | 1 | 5 | 8 => 0,
            _ => 1,
        };
        assert_eq!(
            t.in_use("alice@contoso.com").await,
            expected,
            "after request {i}"
        );
    }
    let audit = t.audit().await;
    let kinds: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["decision"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("submission_decision", "allow"),
            ("submission_completed", ""),
            ("submission_decision", "allow"),
            ("submission_completed", ""),
        ]
    );
    assert_eq!(audit[0]["mailbox"], "alice@contoso.com");
    assert_eq!(audit[0]["organization"], "contoso");
    assert_eq!(audit[0]["front_end"], "policy");
    assert_eq!(audit[0]["sessions_in_use"], 1);
    assert_eq!(audit[0]["limit"], 3);
    assert_eq!(audit[0]["sasl_method"], "PLAIN");
    assert_eq!(audit[1]["queue_id"], "B54E9B6736");
    assert_eq!(audit[1]["recipient_count"], 2);
    assert_eq!(audit[1]["size"], 26);
    assert_eq!(audit[3]["queue_id"], "B62BDB6737");
}

#[tokio::test]
async fn fixture_replay_disabled_mailbox_and_org() {
    let blocked = CONTOSO.replace("blocked@contoso.com", "alice@contoso.com");
    let t = TestDaemon::start(&[("contoso.yaml", &blocked)], "").await;
    let mut c = t.client().await;
    let answers: Vec<String> = {
        let mut v = Vec::new();
        for r in fixture_requests() {
            v.push(c.raw(r.as_bytes()).await.unwrap());
        }
        v
    };
    assert_eq!(answers[0], "DUNNO");
    assert_eq!(answers[1], "DUNNO");
    assert!(answers[2..].iter().all(|a| a == MAILBOX), "{answers:?}");
    assert_eq!(t.in_use("alice@contoso.com").await, 0);
    let audit = t.audit().await;
    assert_eq!(audit.len(), 7);
    assert!(audit
        .iter()
        .all(|e| e["decision"] == "reject" && e["reason"] == "mailbox_disabled"));

    // Organization-wide disable, a mailbox exception, and an unknown organization.
    let t = TestDaemon::start(&[("fabrikam.yaml", FABRIKAM)], "").await;
    let mut c = t.client().await;
    let tx = |login, instance| Txn {
        login,
        client_port: 40000,
        instance,
    };
    assert_eq!(
        c.ask(&tx("someone@fabrikam.com", "a"), "RCPT").await,
        TENANT
    );
    assert_eq!(c.ask(&tx("erp@fabrikam.com", "b"), "RCPT").await, "DUNNO");
    assert_eq!(c.ask(&tx("x@unknown.example", "c"), "RCPT").await, TENANT);
    let audit = t.audit().await;
    let reasons: Vec<&str> = audit
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(reasons, ["org_disabled", "-", "unknown_organization"]);
}

#[tokio::test]
async fn fourth_transaction_in_flight_is_deferred_until_one_ends() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], "").await;
    let mut clients = Vec::new();
    let ports = [50001, 50002, 50003, 50004];
    let instances = ["i1", "i2", "i3", "i4"];
    for (port, instance) in ports.iter().zip(instances) {
        let mut c = t.client().await;
        let txn = Txn {
            login: "bob@contoso.com",
            client_port: *port,
            instance,
        };
        let answer = c.ask(&txn, "RCPT").await;
        clients.push((c, txn, answer));
    }
    let answers: Vec<&str> = clients.iter().map(|(_, _, a)| a.as_str()).collect();
    assert_eq!(answers, ["DUNNO", "DUNNO", "DUNNO", LIMIT_REPLY]);
    assert_eq!(t.in_use("bob@contoso.com").await, 3);

    // Another RCPT of the refused transaction is still refused.
    let (c4, txn4, _) = &mut clients[3];
    assert_eq!(c4.ask(txn4, "RCPT").await, LIMIT_REPLY);

    // The first finishes its message: its slot goes to the fourth.
    let (c1, txn1, _) = &mut clients[0];
    assert_eq!(c1.ask(txn1, "DATA").await, "DUNNO");
    assert_eq!(c1.ask(txn1, "END-OF-MESSAGE").await, "DUNNO");
    assert_eq!(t.in_use("bob@contoso.com").await, 2);
    let (c4, txn4, _) = &mut clients[3];
    assert_eq!(c4.ask(txn4, "RCPT").await, "DUNNO");
    assert_eq!(t.in_use("bob@contoso.com").await, 3);

    // A mailbox with its own higher limit, and another mailbox, are unaffected.
    let mut c = t.client().await;
    for i in 0..5 {
        let instance = format!("p{i}");
        let mut ci = t.client().await;
        let txn = Txn {
            login: "printer@contoso.com",
            client_port: 51000 + i,
            instance: &instance,
        };
        assert_eq!(ci.ask(&txn, "RCPT").await, "DUNNO");
        std::mem::forget(ci);
    }
    let txn = Txn {
        login: "carol@contoso.com",
        client_port: 52000,
        instance: "c1",
    };
    assert_eq!(c.ask(&txn, "RCPT").await, "DUNNO");

    let audit = t.audit().await;
    let defers: Vec<_> = audit.iter().filter(|e| e["decision"] == "defer").collect();
    assert_eq!(defers.len(), 2);
    assert_eq!(defers[0]["reason"], "concurrency_limit");
    assert_eq!(defers[0]["sessions_in_use"], 3);
    assert_eq!(defers[0]["limit"], 3);
    assert_eq!(defers[0]["reply"], LIMIT_REPLY);
}

#[tokio::test]
async fn next_transaction_or_session_on_a_connection_releases_the_lease() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], "").await;
    let mut c = t.client().await;
    let first = Txn {
        login: "bob@contoso.com",
        client_port: 40000,
        instance: "t1",
    };
    assert_eq!(c.ask(&first, "RCPT").await, "DUNNO");
    assert_eq!(c.ask(&first, "RCPT").await, "DUNNO");
    assert_eq!(t.in_use("bob@contoso.com").await, 1);
    // RSET then a new transaction in the same session: a new instance.
    let second = Txn {
        instance: "t2",
        ..first
    };
    assert_eq!(c.ask(&second, "RCPT").await, "DUNNO");
    assert_eq!(t.in_use("bob@contoso.com").await, 1);
    // The smtpd process moves on to another client's session, unauthenticated.
    let other = Txn {
        login: "",
        client_port: 40001,
        instance: "t3",
    };
    assert_eq!(c.ask(&other, "RCPT").await, "DUNNO");
    assert_eq!(t.in_use("bob@contoso.com").await, 0);
    // Unauthenticated requests are neither counted nor audited.
    let audit = t.audit().await;
    assert_eq!(audit.len(), 2);
}

#[tokio::test]
async fn closing_a_connection_releases_its_lease() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], "").await;
    let mut c = t.client().await;
    let txn = Txn {
        login: "bob@contoso.com",
        client_port: 40000,
        instance: "t1",
    };
    assert_eq!(c.ask(&txn, "RCPT").await, "DUNNO");
    assert_eq!(t.in_use("bob@contoso.com").await, 1);
    drop(c);
    support::wait_for(
        Duration::from_secs(5),
        "the lease to be released after the connection closed",
        || async { t.in_use("bob@contoso.com").await == 0 },
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn idle_lease_is_released_after_the_timeout() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], "lease_idle_timeout: 300s\n").await;
    let mut c = t.client().await;
    let txn = Txn {
        login: "bob@contoso.com",
        client_port: 40000,
        instance: "t1",
    };
    assert_eq!(c.ask(&txn, "RCPT").await, "DUNNO");
    tokio::time::advance(Duration::from_secs(299)).await;
    tokio::task::yield_now().await;
    assert_eq!(t.in_use("bob@contoso.com").await, 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(t.in_use("bob@contoso.com").await, 0);
    // The connection stays open and the transaction can go on, taking a lease again.
    assert_eq!(c.ask(&txn, "DATA").await, "DUNNO");
    assert_eq!(t.in_use("bob@contoso.com").await, 1);
    assert_eq!(c.ask(&txn, "END-OF-MESSAGE").await, "DUNNO");
    assert_eq!(t.in_use("bob@contoso.com").await, 0);
    // One allow decision for the transaction, even though the lease was taken twice.
    let audit = t.audit().await;
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["event"] == "submission_decision")
            .count(),
        1
    );
}

#[tokio::test]
async fn garbage_on_one_connection_does_not_disturb_another() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], "").await;
    let mut good = t.client().await;
    let txn = Txn {
        login: "bob@contoso.com",
        client_port: 40000,
        instance: "t1",
    };
    assert_eq!(good.ask(&txn, "RCPT").await, "DUNNO");

    let cases: Vec<Vec<u8>> = vec![
        b"this line has no equals sign\n\n".to_vec(),
        b"sasl_username=\xff\xfe\n\n".to_vec(),
        format!("x={}\n\n", "y".repeat(70_000)).into_bytes(),
        (0..600)
            .map(|i| format!("a{i}=b\n"))
            .collect::<String>()
            .into_bytes(),
        vec![0u8; 100_000],
    ];
    for bad in cases {
        let mut c = t.client().await;
        assert_eq!(c.raw(&bad).await, None, "a malformed request gets no reply");
        assert!(c.closed().await);
    }
    // The good connection still holds its lease and is served.
    assert_eq!(t.in_use("bob@contoso.com").await, 1);
    assert_eq!(good.ask(&txn, "END-OF-MESSAGE").await, "DUNNO");
    assert_eq!(t.in_use("bob@contoso.com").await, 0);
}

#[tokio::test]
async fn reload_with_a_broken_file_keeps_the_old_policy() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], "").await;
    let mut c = t.client().await;
    let txn = |instance| Txn {
        login: "bob@contoso.com",
        client_port: 40000,
        instance,
    };
    assert_eq!(c.ask(&txn("a"), "RCPT").await, "DUNNO");

    let file = t.policies_dir().join("contoso.yaml");
    std::fs::write(
        &file,
        CONTOSO.replace(
            "max_concurrent_sessions_per_mailbox: 3",
            "max_concurrent_sessions_per_mailbox: lots",
        ),
    )
    .unwrap();
    match t.daemon.reload().await {
        ReloadOutcome::Failed(e) => {
            assert!(e.to_string().contains("contoso.yaml:"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // The old policy is still in force.
    assert_eq!(c.ask(&txn("b"), "RCPT").await, "DUNNO");

    // A good edit takes effect at the next request.
    std::fs::write(
        &file,
        CONTOSO.replace(
            "smtp_client_authentication_disabled: false",
            "smtp_client_authentication_disabled: true",
        ),
    )
    .unwrap();
    assert!(matches!(
        t.daemon.reload().await,
        ReloadOutcome::Reloaded { .. }
    ));
    assert_eq!(c.ask(&txn("c"), "RCPT").await, TENANT);

    let audit = t.audit().await;
    let events: Vec<&str> = audit.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "submission_decision",
            "policy_reload_failed",
            "submission_decision",
            "policy_reloaded",
            "submission_decision"
        ]
    );
    // The audit log gets the place and the kind, never text from the file.
    let failed = &audit[1];
    let error = failed["errors"][0].as_str().unwrap();
    assert!(error.ends_with("contoso.yaml:4:38: wrong_type"), "{error}");
    assert!(!error.contains("lots"), "{error}");
}

#[tokio::test]
async fn shutdown_releases_leases_and_flushes_the_audit_log() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], "").await;
    let mut c = t.client().await;
    let txn = Txn {
        login: "bob@contoso.com",
        client_port: 40000,
        instance: "t1",
    };
    assert_eq!(c.ask(&txn, "RCPT").await, "DUNNO");
    let limiter = t.daemon.context().limiter.clone();
    let audit_path = t.dir.path().join("audit.log");
    let TestDaemon { daemon, dir: _dir } = t;
    daemon.shutdown().await;
    assert_eq!(limiter.in_use("bob@contoso.com").await, 0);
    assert!(c.closed().await);
    assert_eq!(support::read_audit(&audit_path).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lease_in_use_is_not_expired_by_its_first_deadline() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], "lease_idle_timeout: 300s\n").await;
    let mut c = t.client().await;
    let txn = Txn {
        login: "bob@contoso.com",
        client_port: 40000,
        instance: "t1",
    };
    let settle = || async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    };
    assert_eq!(c.ask(&txn, "RCPT").await, "DUNNO");
    tokio::time::advance(Duration::from_secs(200)).await;
    assert_eq!(c.ask(&txn, "RCPT").await, "DUNNO");
    // 350 s after the first request, 150 s after the last: still held.
    tokio::time::advance(Duration::from_secs(150)).await;
    settle().await;
    assert_eq!(t.in_use("bob@contoso.com").await, 1);
    // 301 s after the last request: released.
    tokio::time::advance(Duration::from_secs(151)).await;
    settle().await;
    assert_eq!(t.in_use("bob@contoso.com").await, 0);
}

#[tokio::test]
async fn invalid_logins_are_refused_with_their_own_reply() {
    const INVALID: &str =
        "550 5.7.1 Authentication unsuccessful, the login is not a valid mailbox address.";
    let t = TestDaemon::start(
        &[("contoso.yaml", CONTOSO)],
        "default_domain: contoso.com\n",
    )
    .await;
    let mut c = t.client().await;
    let long = format!("{}@contoso.com", "a".repeat(400));
    // The policy protocol is line-based: no newline in a value, but every other control.
    let bad = [
        " ",
        "@contoso.com",
        "bob\u{1b}[31m@contoso.com",
        "moc.\u{202e}bob@contoso.com",
        "bob\u{7f}@contoso.com",
        long.as_str(),
    ];
    for (i, login) in bad.iter().enumerate() {
        let instance = format!("bad{i}");
        let tx = Txn {
            login,
            client_port: 40000 + i as u16,
            instance: &instance,
        };
        assert_eq!(c.ask(&tx, "RCPT").await, INVALID, "{login:?}");
    }
    // Nothing counted, not even the mailbox " " would have become with the default domain.
    assert_eq!(t.in_use("@contoso.com").await, 0);
    let ok = Txn {
        login: "bob@contoso.com",
        client_port: 41000,
        instance: "good",
    };
    assert_eq!(c.ask(&ok, "RCPT").await, "DUNNO");
    let audit = t.audit().await;
    let refused: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["reason"] == "invalid_login")
        .collect();
    assert_eq!(refused.len(), bad.len(), "{audit:?}");
    assert!(refused
        .iter()
        .all(|e| e["decision"] == "reject" && e["reply"] == INVALID));
    assert_eq!(refused[2]["mailbox"], "bob\\u{1b}[31m@contoso.com");
    assert_eq!(refused[3]["mailbox"], "moc.\\u{202e}bob@contoso.com");
}
