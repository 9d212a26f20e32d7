//! Administration against a running daemon: `mailbox set` / `org set` through the real CLI,
//! live reload without SIGHUP, a broken hand edit that keeps the old policy, `status` and
//! `reload` over the control socket, concurrent setters.

mod support;

use std::process::Command;
use std::time::Duration;

use submitgate::control::{self, Request, Status};
use submitgate::endpoint::Endpoint;
use support::daemon::{TestDaemon, Txn, CONTOSO};

const MAILBOX: &str =
    "550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.";

fn cli(t: &TestDaemon, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args(args)
        .arg("--config")
        .arg(t.config_path())
        .output()
        .expect("run submitgate")
}

fn control_endpoint(t: &TestDaemon) -> Endpoint {
    Endpoint::Unix(t.dir.path().join("control.sock"))
}

async fn status(t: &TestDaemon) -> Status {
    control::request(&control_endpoint(t), &Request::Status)
        .await
        .unwrap()
}

const CONTROL: &str = "control: \"unix:{dir}/control.sock\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_set_changes_the_running_daemons_answer_within_two_seconds() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], CONTROL).await;
    let mut c = t.client().await;
    fn txn(instance: &str) -> Txn<'_> {
        Txn {
            login: "carol@contoso.com",
            client_port: 40000,
            instance,
        }
    }
    assert_eq!(c.ask(&txn("0"), "RCPT").await, "DUNNO");

    let out = cli(
        &t,
        &[
            "mailbox",
            "set",
            "carol@contoso.com",
            "--smtp-client-authentication-disabled",
            "true",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("SmtpClientAuthenticationDisabled : True"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Source                           : mailbox"),
        "{stdout}"
    );

    let deadline = support::Deadline::new(Duration::from_secs(2), "the refusal after mailbox set");
    let mut n = 0;
    loop {
        n += 1;
        let instance = format!("{n}");
        if c.ask(&txn(&instance), "RCPT").await == MAILBOX {
            break;
        }
        deadline.tick().await;
    }
    // And back: inherit removes the entry again.
    let out = cli(
        &t,
        &[
            "mailbox",
            "set",
            "carol@contoso.com",
            "--smtp-client-authentication-disabled",
            "inherit",
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(t.policies_dir().join("contoso.yaml")).unwrap(),
        CONTOSO,
        "the file is byte-identical to before"
    );
    let deadline = support::Deadline::new(Duration::from_secs(2), "DUNNO after inherit");
    loop {
        n += 1;
        let instance = format!("{n}");
        if c.ask(&txn(&instance), "RCPT").await == "DUNNO" {
            break;
        }
        deadline.tick().await;
    }
    let s = status(&t).await;
    assert!(s.last_reload.as_ref().is_some_and(|r| r.ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_hand_edit_keeps_the_old_policy_and_status_shows_it() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], CONTROL).await;
    let mut c = t.client().await;
    let blocked = Txn {
        login: "blocked@contoso.com",
        client_port: 40000,
        instance: "a",
    };
    assert_eq!(c.ask(&blocked, "RCPT").await, MAILBOX);
    let version = status(&t).await.policy.version;

    // An editor that saves through a temp file and a rename, with a typo in a key.
    let dir = t.policies_dir();
    let tmp = dir.join(".contoso.yaml.swp");
    std::fs::write(
        &tmp,
        CONTOSO.replace(
            "  blocked@contoso.com: { smtp_client_authentication_disabled: true }",
            "  blocked@contoso.com: { smtp_client_authentication_disabld: false }",
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join("contoso.yaml")).unwrap();

    let deadline = support::Deadline::new(Duration::from_secs(5), "a reload attempt");
    let s = loop {
        let s = status(&t).await;
        if s.last_reload.is_some() {
            break s;
        }
        deadline.tick().await;
    };
    let r = s.last_reload.unwrap();
    assert!(!r.ok);
    assert!(r.errors[0].contains("contoso.yaml:6:"), "{:?}", r.errors);
    assert!(r.errors[0].contains("did you mean \"smtp_client_authentication_disabled\""));
    assert_eq!(s.policy.version, version, "the old policy stays in force");
    let blocked2 = Txn {
        instance: "b",
        ..blocked
    };
    assert_eq!(c.ask(&blocked2, "RCPT").await, MAILBOX);

    // The CLI shows it too.
    let out = cli(&t, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("last reload: FAILED"), "{text}");
    assert!(text.contains("contoso.yaml:6:"), "{text}");
    // `submitgate reload` prints the outcome and fails.
    let out = cli(&t, &["reload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("reload FAILED"));
    let audit = t.audit().await;
    let failed = audit
        .iter()
        .find(|e| e["event"] == "policy_reload_failed")
        .expect("policy_reload_failed audited");
    let error = failed["errors"][0].as_str().unwrap();
    assert!(error.ends_with("contoso.yaml:6:26: unknown_key"), "{error}");
    assert!(!error.contains("disabld"), "no text of the file: {error}");

    // Reverting the edit gives back the text in force: the reload finds nothing changed, and
    // must still clear the FAILED (it used to stay until some other change).
    std::fs::write(&tmp, CONTOSO).unwrap();
    std::fs::rename(&tmp, dir.join("contoso.yaml")).unwrap();
    let deadline = support::Deadline::new(Duration::from_secs(5), "the revert's reload");
    let s = loop {
        let s = status(&t).await;
        if s.last_reload.as_ref().is_some_and(|r| r.ok) {
            break s;
        }
        deadline.tick().await;
    };
    assert_eq!(s.policy.version, version, "same text, same version");
    assert!(s.last_reload.unwrap().errors.is_empty());
    let out = cli(&t, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("FAILED"), "{text}");
    let out = cli(&t, &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_live_sessions_busiest_first() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], CONTROL).await;
    let mut clients = Vec::new();
    for (i, login) in [
        "bob@contoso.com",
        "bob@contoso.com",
        "bob@contoso.com",
        "printer@contoso.com",
        "carol@contoso.com",
        "printer@contoso.com",
    ]
    .iter()
    .enumerate()
    {
        let mut c = t.client().await;
        let instance = format!("i{i}");
        let txn = Txn {
            login,
            client_port: 41000 + i as u16,
            instance: &instance,
        };
        assert_eq!(c.ask(&txn, "RCPT").await, "DUNNO");
        clients.push(c);
    }
    let s = status(&t).await;
    let rows: Vec<(&str, u32, Option<u32>)> = s
        .sessions
        .iter()
        .map(|m| (m.mailbox.as_str(), m.sessions, m.limit))
        .collect();
    assert_eq!(
        rows,
        [
            ("bob@contoso.com", 3, Some(3)),
            ("printer@contoso.com", 2, Some(5)),
            ("carol@contoso.com", 1, Some(3)),
        ]
    );
    assert_eq!(s.policy.organizations, 1);
    let out = cli(&t, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sessions"][0]["sessions"], 3);
    let out = cli(&t, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sessions: 6 across 3 mailboxes"), "{text}");

    // Closing connections frees the sessions.
    drop(clients);
    support::wait_for(
        Duration::from_secs(2),
        "the sessions to be freed",
        || async { status(&t).await.sessions.is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_setters_both_land_and_get_round_trips() {
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], "").await;
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_submitgate"))
                .args([
                    "mailbox",
                    "set",
                    &format!("user{i}@contoso.com"),
                    "--max-concurrent-sessions",
                    &format!("{}", i + 1),
                    "--config",
                ])
                .arg(t.config_path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..8 {
        let out = cli(
            &t,
            &["mailbox", "get", &format!("user{i}@contoso.com"), "--json"],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["mailbox_max_concurrent_sessions"], i + 1);
        assert_eq!(v["source"], "organization");
    }
    // Everything that was there before is still there, byte for byte.
    let text = std::fs::read_to_string(t.policies_dir().join("contoso.yaml")).unwrap();
    assert!(text.starts_with(CONTOSO), "{text}");
    assert_eq!(text.lines().count(), CONTOSO.lines().count() + 8);

    let out = cli(
        &t,
        &[
            "org",
            "set",
            "contoso",
            "--smtp-client-authentication-disabled",
            "true",
        ],
    );
    assert!(out.status.success());
    let out = cli(&t, &["org", "get", "contoso", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["smtp_client_authentication_disabled"], true);
    // Errors: unknown organization, address outside every organization, invalid value.
    for (args, msg) in [
        (
            vec![
                "org",
                "set",
                "nope",
                "--smtp-client-authentication-disabled",
                "true",
            ],
            "no organization \"nope\"",
        ),
        (
            vec![
                "mailbox",
                "set",
                "x@nowhere.example",
                "--smtp-client-authentication-disabled",
                "true",
            ],
            "outside every organization",
        ),
        (
            vec![
                "mailbox",
                "set",
                "x@contoso.com",
                "--max-concurrent-sessions",
                "0",
            ],
            "from 1 to 100000",
        ),
        (
            vec![
                "mailbox",
                "set",
                "x@contoso.com",
                "--smtp-client-authentication-disabled",
                "yes",
            ],
            "expected true, false or inherit",
        ),
    ] {
        let out = cli(&t, &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_milter_sessions_and_the_spool() {
    use submitgate::milter::codec::Reply;
    // No store: copies stay in the spool, so status has something to count.
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], CONTROL).await;
    let mut m = t.milter().await;
    m.open().await;
    assert_eq!(m.mail(Some("bob@contoso.com")).await, Reply::Continue);
    let r = m
        .message("Q1", &["x@example.net"], &[("Subject", " s")], &[b"x\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);
    let s = status(&t).await;
    assert_eq!(s.sessions[0].mailbox, "bob@contoso.com");
    assert_eq!(s.sessions[0].sessions, 1);
    let spool = s.spool.expect("spool counts");
    assert_eq!(spool["pending"], 1);
    assert_eq!(spool["failed"], 0);
    let out = cli(&t, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spool: 1 pending (oldest "), "{text}");
    assert!(text.contains("listener milter: inet:127.0.0.1:"), "{text}");
    m.quit().await;
}
