//! Exchange's sending limits and restricted senders over both front ends, against the real
//! daemon: the 31st message in a minute deferred, the 10 001st recipient of a day refused,
//! 501 recipients refused, a mailbox blocked by an outbound spam threshold and released with
//! `submitgate blocked-sender remove` (the real CLI, through the control socket), what `mailbox
//! get` shows, the state after a restart (memory backend, `limiter.state_dir`), that a refused
//! message counts nothing, and `report` counting it all per sender.

mod support;

use std::process::Command;

use serde_json::Value;
use submitgate::config::Config;
use submitgate::daemon::Daemon;
use submitgate::milter::codec::Reply;
use support::daemon::{MilterClient, PolicyClient, TestDaemon};

const RATE: &str = "451 4.7.0 Message submission rate for this mailbox has exceeded the configured limit, try again later";
const QUOTA: &str = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException";
const RECIP_LIMIT: &str = "550 5.5.3 RESOLVER.ADR.RecipLimit; too many recipients";
const RESTRICTED: &str = "550 5.1.8 Access denied, bad outbound sender";

/// Exchange's defaults for everyone; spammer@ has outbound spam thresholds that block, and
/// watched@ one that only alerts.
const CONTOSO: &str = "\
organization: contoso
domains: [contoso.com, contoso.net]
mailboxes:
  spammer@contoso.com:
    outbound_spam:
      recipient_limit_external_per_hour: 5
      recipient_limit_internal_per_hour: 100
      action_when_threshold_reached: block_user_for_today
  forever@contoso.com:
    outbound_spam: { recipient_limit_per_day: 3, action_when_threshold_reached: block_user }
  watched@contoso.com:
    outbound_spam: { recipient_limit_external_per_hour: 2, action_when_threshold_reached: alert }
  slow@contoso.com:
    sending_limits: { messages_per_minute: 2 }
";

const CONTROL: &str = "control: \"unix:{dir}/control.sock\"\nlimiter: { backend: memory, state_dir: \"{dir}/state\" }\n";

/// A policy request for one state of a transaction, with its recipient.
fn request(login: &str, instance: &str, state: &str, rcpt: &str, count: usize) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
client_address=192.0.2.10\nclient_name=client.example\nclient_port=40000\n\
server_address=127.0.0.1\nserver_port=10587\nhelo_name=client.example\nsender={login}\n\
recipient={rcpt}\nrecipient_count={count}\nqueue_id=\ninstance={instance}\nsize=1234\n\
sasl_method=PLAIN\nsasl_username={login}\nencryption_protocol=TLSv1.3\n\n"
    )
}

/// One message through the policy front end: an RCPT per recipient, then END-OF-MESSAGE if
/// one was accepted (as Postfix does). Returns the answers (one per RCPT, then the
/// end-of-message one).
async fn policy_message(
    c: &mut PolicyClient,
    login: &str,
    instance: &str,
    rcpts: &[String],
) -> Vec<String> {
    let mut answers = Vec::new();
    let mut accepted = 0;
    for r in rcpts {
        let a = c
            .raw(request(login, instance, "RCPT", r, accepted).as_bytes())
            .await
            .expect("reply");
        if a == "DUNNO" {
            accepted += 1;
        }
        let stop = a.starts_with("550 5.1.8") || a.starts_with("451");
        answers.push(a);
        if stop {
            return answers;
        }
    }
    if accepted == 0 {
        return answers;
    }
    let a = c
        .raw(request(login, instance, "END-OF-MESSAGE", "", accepted).as_bytes())
        .await
        .expect("reply");
    answers.push(a);
    answers
}

fn rcpts(n: usize, domain: &str) -> Vec<String> {
    (0..n).map(|i| format!("r{i}@{domain}")).collect()
}

fn text(r: &Reply) -> String {
    match r {
        Reply::ReplyCode(reply) => reply.to_string(),
        other => format!("{other:?}"),
    }
}

/// One message through the milter: MAIL, then (if it goes on) the recipients and the data.
/// Returns the MAIL reply and, when MAIL was accepted, the end-of-message reply.
async fn milter_message(
    m: &mut MilterClient,
    login: &str,
    queue_id: &str,
    rcpts: &[String],
) -> (Reply, Option<Reply>) {
    let mail = m.mail(Some(login)).await;
    if mail != Reply::Continue {
        return (mail, None);
    }
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let eom = m
        .message(queue_id, &refs, &[("Subject", " hi")], &[b"hello\r\n"])
        .await;
    m.abort().await;
    (mail, Some(eom))
}

async fn milter_session(t: &TestDaemon) -> MilterClient {
    let mut m = t.milter().await;
    m.open().await;
    m
}

fn cli(t: &TestDaemon, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args(args)
        .arg("--config")
        .arg(t.config_path())
        .output()
        .expect("run submitgate")
}

fn reasons(audit: &[Value], mailbox: &str) -> Vec<String> {
    audit
        .iter()
        .filter(|e| e["mailbox"] == mailbox && e["event"] == "submission_decision")
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

const BOTH: &str = "policy: [\"inet:127.0.0.1:0\"]\nmilter: [\"inet:127.0.0.1:0\"]\nsent_items: { spool: \"{dir}/spool\" }\n";

async fn start() -> TestDaemon {
    TestDaemon::start_with(BOTH, &[("contoso.yaml", CONTOSO)], CONTROL).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_31st_message_in_a_minute_is_deferred_on_both_front_ends() {
    let t = start().await;
    // Policy front end: 30 messages pass, the 31st is deferred at its first RCPT.
    let mut c = t.client().await;
    let one = rcpts(1, "example.net");
    for i in 0..30 {
        let a = policy_message(&mut c, "alice@contoso.com", &format!("p{i}"), &one).await;
        assert_eq!(a, ["DUNNO", "DUNNO"], "message {}", i + 1);
    }
    let a = policy_message(&mut c, "alice@contoso.com", "p30", &one).await;
    assert_eq!(a, [RATE], "the 31st");
    // Milter: the same for another mailbox, deferred at MAIL.
    let mut m = milter_session(&t).await;
    for i in 0..30 {
        let (mail, eom) = milter_message(&mut m, "bob@contoso.com", &format!("Q{i}"), &one).await;
        assert_eq!(mail, Reply::Continue, "message {}", i + 1);
        assert_eq!(eom, Some(Reply::Continue), "message {}", i + 1);
    }
    let (mail, _) = milter_message(&mut m, "bob@contoso.com", "Q30", &one).await;
    assert_eq!(text(&mail), RATE);
    // A mailbox's own limit: slow@ may send 2 per minute.
    for i in 0..2 {
        let (_, eom) = milter_message(&mut m, "slow@contoso.com", &format!("S{i}"), &one).await;
        assert_eq!(eom, Some(Reply::Continue));
    }
    let (mail, _) = milter_message(&mut m, "slow@contoso.com", "S2", &one).await;
    assert_eq!(text(&mail), RATE);
    let audit = t.audit().await;
    let deferral = audit
        .iter()
        .find(|e| e["mailbox"] == "alice@contoso.com" && e["reason"] == "message_rate_limit")
        .expect("audited");
    assert_eq!(deferral["decision"], "defer");
    assert_eq!(deferral["threshold"], "messages_per_minute");
    assert_eq!(deferral["count"], 31);
    assert_eq!(deferral["limit"], 30);
    assert_eq!(deferral["reply"], RATE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_10001st_recipient_of_a_day_is_refused_and_refused_messages_count_nothing() {
    let t = start().await;
    // 20 messages of 500 recipients: 10 000 recipients today, through the milter.
    let mut m = milter_session(&t).await;
    let full = rcpts(500, "example.net");
    for i in 0..20 {
        let (_, eom) = milter_message(&mut m, "carol@contoso.com", &format!("C{i}"), &full).await;
        assert_eq!(eom, Some(Reply::Continue), "message {}", i + 1);
    }
    // The 10 001st recipient: refused at end-of-message (milter) …
    let one = rcpts(1, "example.net");
    let (_, eom) = milter_message(&mut m, "carol@contoso.com", "C20", &one).await;
    assert_eq!(text(&eom.unwrap()), QUOTA);
    // … and at its RCPT through the policy front end (the usage is shared: one limiter).
    let mut c = t.client().await;
    let a = policy_message(&mut c, "carol@contoso.com", "x", &one).await;
    assert_eq!(a[0], QUOTA);
    // Through the policy front end alone, for another mailbox: 20 × 500 RCPTs, then one more.
    for i in 0..20 {
        let a = policy_message(&mut c, "dave@contoso.com", &format!("d{i}"), &full).await;
        assert!(
            a.iter().all(|a| a == "DUNNO"),
            "message {}: {:?}",
            i + 1,
            a.last()
        );
    }
    let two = rcpts(2, "example.net");
    let a = policy_message(&mut c, "dave@contoso.com", "d20", &two).await;
    assert_eq!(
        a,
        [QUOTA, QUOTA],
        "no recipient left: Postfix sends no DATA"
    );
    let state = t
        .daemon
        .context()
        .limiter
        .mailbox_state("dave@contoso.com")
        .await
        .unwrap();
    assert_eq!(
        state.usage.recipients_last_day, 10_000,
        "refused recipients count nothing"
    );
    assert_eq!(state.usage.messages_last_minute, 20);
    let audit = t.audit().await;
    let refusal = audit
        .iter()
        .find(|e| e["mailbox"] == "carol@contoso.com" && e["reason"] == "recipient_rate_limit")
        .expect("audited");
    assert_eq!(refusal["decision"], "reject");
    assert_eq!(refusal["count"], 10_001);
    assert_eq!(refusal["limit"], 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_and_one_recipients_are_refused() {
    let t = start().await;
    let many = rcpts(501, "example.net");
    // Milter: the whole message, at end-of-message.
    let mut m = milter_session(&t).await;
    let (_, eom) = milter_message(&mut m, "erin@contoso.com", "E1", &many).await;
    assert_eq!(text(&eom.unwrap()), RECIP_LIMIT);
    assert!(
        t.spool_entries().is_empty(),
        "a refused message has no Sent Items copy"
    );
    let (_, eom) = milter_message(&mut m, "erin@contoso.com", "E2", &many[..500]).await;
    assert_eq!(eom, Some(Reply::Continue));
    // Policy: the 501st RCPT; the message goes on with 500.
    let mut c = t.client().await;
    let a = policy_message(&mut c, "frank@contoso.com", "f1", &many).await;
    assert_eq!(a.len(), 502);
    assert!(a[..500].iter().all(|a| a == "DUNNO"));
    assert_eq!(a[500], RECIP_LIMIT);
    assert_eq!(a[501], "DUNNO");
    let state = t
        .daemon
        .context()
        .limiter
        .mailbox_state("erin@contoso.com")
        .await
        .unwrap();
    assert_eq!(state.usage.recipients_last_day, 500);
    assert_eq!(
        state.usage.messages_last_minute, 1,
        "the refused message did not count"
    );
    let audit = t.audit().await;
    assert!(reasons(&audit, "erin@contoso.com").contains(&"recipients_per_message".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_spam_threshold_blocks_and_the_cli_releases() {
    // The sender_restricted alert goes to a command that appends it to a file.
    let alerts = format!(
        "{CONTROL}alerts: {{ command: [\"sh\", \"-c\", \"cat >> {{dir}}/alerts.jsonl; echo >> {{dir}}/alerts.jsonl\"], kinds: [sender_restricted] }}\n"
    );
    let t = TestDaemon::start_with(BOTH, &[("contoso.yaml", CONTOSO)], &alerts).await;
    let mut c = t.client().await;
    // 5 external recipients an hour: 4 + 1 pass, the message with 2 more is refused and the
    // mailbox restricted.
    let a = policy_message(
        &mut c,
        "spammer@contoso.com",
        "s1",
        &rcpts(4, "example.net"),
    )
    .await;
    assert_eq!(a.last().unwrap(), "DUNNO");
    // Internal recipients count against the internal threshold only.
    let a = policy_message(
        &mut c,
        "spammer@contoso.com",
        "s2",
        &rcpts(3, "contoso.net"),
    )
    .await;
    assert_eq!(a.last().unwrap(), "DUNNO");
    let a = policy_message(
        &mut c,
        "spammer@contoso.com",
        "s3",
        &rcpts(1, "example.org"),
    )
    .await;
    assert_eq!(a.last().unwrap(), "DUNNO");
    let a = policy_message(
        &mut c,
        "spammer@contoso.com",
        "s4",
        &rcpts(2, "example.org"),
    )
    .await;
    assert_eq!(a.last().unwrap(), RESTRICTED);
    // From now on refused at once, on both front ends (at MAIL for the milter).
    let a = policy_message(
        &mut c,
        "spammer@contoso.com",
        "s5",
        &rcpts(1, "contoso.com"),
    )
    .await;
    assert_eq!(a, [RESTRICTED]);
    let mut m = milter_session(&t).await;
    let (mail, _) = milter_message(&mut m, "spammer@contoso.com", "M1", &rcpts(1, "x.org")).await;
    assert_eq!(text(&mail), RESTRICTED);

    // blocked-sender list, as JSON and as a table.
    let out = cli(&t, &["blocked-sender", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["mailbox"], "spammer@contoso.com");
    assert_eq!(list[0]["threshold"], "recipient_limit_external_per_hour");
    assert_eq!(
        list[0]["count"], 7,
        "4 + 1 counted, 2 with the refused message"
    );
    assert_eq!(list[0]["limit"], 5);
    assert_eq!(list[0]["action"], "block_user_for_today");
    let until = list[0]["until"].as_u64().unwrap();
    assert_eq!(until % 86_400, 0, "until midnight UTC");
    let out = cli(&t, &["blocked-sender", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("spammer@contoso.com"), "{table}");
    assert!(
        table.contains("recipient_limit_external_per_hour"),
        "{table}"
    );

    // mailbox get shows the usage against each limit and the block.
    let out = cli(&t, &["mailbox", "get", "spammer@contoso.com"]);
    let view = String::from_utf8_lossy(&out.stdout);
    assert!(view.contains("RestrictedSender"), "{view}");
    assert!(view.contains("True (since"), "{view}");
    assert!(view.contains("ExternalRecipientsLastHour"), "{view}");
    assert!(view.contains("5 of 5"), "{view}");
    assert!(view.contains("InternalRecipientsLastHour"), "{view}");
    assert!(view.contains("3 of 100"), "{view}");
    assert!(view.contains("RecipientLimitExternalPerHour"), "{view}");
    assert!(view.contains("5 (mailbox)"), "{view}");
    let out = cli(&t, &["mailbox", "get", "spammer@contoso.com", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["live"]["usage"]["external_last_hour"], 5);
    assert_eq!(json["live"]["blocked"]["limit"], 5);

    // Released: mail flows again; a second remove says it is not blocked (exit 1).
    let out = cli(&t, &["blocked-sender", "remove", "Spammer@Contoso.com"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("released: spammer@contoso.com"));
    let out = cli(&t, &["blocked-sender", "remove", "spammer@contoso.com"]);
    assert_eq!(out.status.code(), Some(1));
    let (mail, _) = milter_message(
        &mut m,
        "spammer@contoso.com",
        "M2",
        &rcpts(1, "contoso.com"),
    )
    .await;
    assert_eq!(mail, Reply::Continue);
    let out = cli(&t, &["blocked-sender", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no restricted senders\n"
    );

    // An alert-only threshold lets mail through and says so.
    let a = policy_message(
        &mut c,
        "watched@contoso.com",
        "w1",
        &rcpts(3, "example.net"),
    )
    .await;
    assert_eq!(a.last().unwrap(), "DUNNO");

    let audit = t.audit().await;
    let restricted: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "sender_restricted")
        .collect();
    assert_eq!(restricted.len(), 1);
    assert_eq!(restricted[0]["mailbox"], "spammer@contoso.com");
    assert_eq!(
        restricted[0]["threshold"],
        "recipient_limit_external_per_hour"
    );
    assert_eq!(restricted[0]["action"], "block_user_for_today");
    assert!(restricted[0]["blocked_until"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00Z"));
    let released: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "sender_released")
        .collect();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["mailbox"], "spammer@contoso.com");
    let alert = audit
        .iter()
        .find(|e| e["event"] == "outbound_spam_alert")
        .expect("alert");
    assert_eq!(alert["mailbox"], "watched@contoso.com");
    assert_eq!(alert["count"], 3);
    let refusals = reasons(&audit, "spammer@contoso.com");
    assert_eq!(
        refusals
            .iter()
            .filter(|r| *r == "sender_restricted")
            .count(),
        3,
        "{refusals:?}"
    );

    // The alert reached its command (other tests of this file may add theirs: the alerter is
    // process-wide).
    let alerts_file = t.dir.path().join("alerts.jsonl");
    support::wait_for(
        std::time::Duration::from_secs(10),
        "the sender_restricted alert",
        || {
            let alerts_file = alerts_file.clone();
            async move {
                std::fs::read_to_string(&alerts_file)
                    .is_ok_and(|t| t.contains("spammer@contoso.com"))
            }
        },
    )
    .await;
    let line = std::fs::read_to_string(&alerts_file).unwrap();
    let alert: Value = line
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|a| a["mailbox"] == "spammer@contoso.com")
        .expect("the alert as JSON");
    assert_eq!(alert["alert"], "sender_restricted");
    assert_eq!(alert["organization"], "contoso");
    let message = alert["message"].as_str().unwrap();
    assert!(
        message.contains("recipient_limit_external_per_hour 7 of 5"),
        "{message}"
    );

    // report: per sender.
    let out = Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args(["report", "--format", "json", "--audit"])
        .arg(t.dir.path().join("audit.log"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["sender"] == "spammer@contoso.com")
        .unwrap();
    assert_eq!(row["refusals"]["sender_restricted"], 3);
    assert_eq!(row["restricted"], 1);
    assert_eq!(row["released"], 1);
    let watched = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["sender"] == "watched@contoso.com")
        .unwrap();
    assert_eq!(watched["spam_alerts"], 1);
    assert_eq!(watched["messages_sent"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_and_counters_survive_a_restart() {
    let t = start().await;
    let mut c = t.client().await;
    // block_user: until released, even across restarts.
    let a = policy_message(
        &mut c,
        "forever@contoso.com",
        "f1",
        &rcpts(4, "example.net"),
    )
    .await;
    assert_eq!(a.last().unwrap(), RESTRICTED);
    // 30 messages this minute for alice.
    let mut m = milter_session(&t).await;
    let one = rcpts(1, "example.net");
    for i in 0..30 {
        let (_, eom) = milter_message(&mut m, "alice@contoso.com", &format!("A{i}"), &one).await;
        assert_eq!(eom, Some(Reply::Continue));
    }
    drop((c, m));
    let TestDaemon { daemon, dir } = t;
    daemon.shutdown().await;
    assert!(dir.path().join("state/blocked.json").exists());
    assert!(dir.path().join("state/counters.json").exists());

    let config = Config::load(&dir.path().join("submitgate.yaml")).unwrap();
    let t = TestDaemon {
        daemon: Daemon::start(config).await.unwrap(),
        dir,
    };
    let mut c = t.client().await;
    let a = policy_message(&mut c, "forever@contoso.com", "f2", &one).await;
    assert_eq!(a, [RESTRICTED], "still blocked after the restart");
    let a = policy_message(&mut c, "alice@contoso.com", "a31", &one).await;
    assert_eq!(a, [RATE], "the counters came back");
    let state = t
        .daemon
        .context()
        .limiter
        .mailbox_state("alice@contoso.com")
        .await
        .unwrap();
    assert_eq!(state.usage.messages_last_minute, 30);
    assert_eq!(state.usage.recipients_last_day, 30);
    // A second daemon on the same state_dir is refused (each needs its own).
    let path = t.config_path();
    let config = Config::load(&path).unwrap();
    let err = match Daemon::start(config).await {
        Ok(_) => panic!("a second daemon on one state_dir started"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("locked by another submitgate"), "{err}");
}
