//! The milter front end over real sockets: Postfix's captured sessions replayed byte for byte,
//! the exact per-mailbox session limit, verbatim replies, the Sent Items capture (folds, large
//! headers, ABORT, spool failure), bad frames that close one connection only, timeouts and
//! shutdown releasing leases.

mod support;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use submitgate::milter::codec::{
    Command, MilterCodec, Reply, SMFIC_MAIL, SMFIP_HDR_LEADSPC, SMFIP_NR_BODY, SMFIP_NR_CONN,
    SMFIP_NR_DATA, SMFIP_NR_EOH, SMFIP_NR_HDR, SMFIP_NR_HELO, SMFIP_NR_RCPT, SMFIP_NR_UNKN,
    SMFI_CURR_PROT,
};
use support::daemon::{b, spool_temp_files, TestDaemon, CONTOSO, FABRIKAM};
use support::read_audit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

const ONE_MESSAGE: &[u8] = include_bytes!("fixtures/postfix-3.7/milter-session-one-message.bin");
const TWO_MESSAGES: &[u8] = include_bytes!("fixtures/postfix-3.7/milter-session-two-messages.bin");
const LIMIT: &str = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded";
const TENANT: &str =
    "550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.";
const MAILBOX: &str =
    "550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.";
const TEMPFAIL: &str = "451 4.3.0 Temporary submission failure, try again later";

/// What we answer to Postfix 3.7's offer: version 6, no actions, the no-reply flags for the
/// events we always continue, and leading spaces kept in header values.
const NEGOTIATED: u32 = SMFIP_NR_CONN
    | SMFIP_NR_HELO
    | SMFIP_NR_RCPT
    | SMFIP_NR_DATA
    | SMFIP_NR_HDR
    | SMFIP_NR_EOH
    | SMFIP_NR_BODY
    | SMFIP_NR_UNKN
    | SMFIP_HDR_LEADSPC;

fn reply_text(r: &Reply) -> String {
    match r {
        Reply::ReplyCode(reply) => reply.to_string(),
        other => panic!("expected a reply code, got {other:?}"),
    }
}

/// The fixture's frames: raw bytes of each frame, and its decoded command.
fn frames(fixture: &[u8]) -> Vec<(Vec<u8>, Command)> {
    let mut codec = MilterCodec::default();
    let mut out = Vec::new();
    let mut rest = fixture;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let raw = rest[..4 + len].to_vec();
        let cmd = codec
            .decode(&mut BytesMut::from(&raw[..]))
            .unwrap()
            .unwrap();
        out.push((raw, cmd));
        rest = &rest[4 + len..];
    }
    out
}

/// Replays a captured Postfix session byte for byte; returns the replies received, one per
/// command that expects one (by the flags we negotiated), tagged with the command letter.
async fn replay(t: &TestDaemon, fixture: &[u8]) -> Vec<(char, Reply)> {
    let mut stream = TcpStream::connect(("127.0.0.1", t.milter_port()))
        .await
        .unwrap();
    let mut protocol = 0;
    let mut replies = Vec::new();
    let mut buf = BytesMut::new();
    let mut mta = submitgate::milter::codec::MtaCodec::default();
    for (raw, cmd) in frames(fixture) {
        stream.write_all(&raw).await.unwrap();
        if !cmd.expects_reply(protocol) {
            continue;
        }
        let reply = loop {
            if let Some(r) = mta.decode(&mut buf).unwrap() {
                break r;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut buf))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "filter closed after {}", char::from(cmd.code()));
        };
        if let Reply::OptNeg { protocol: p, .. } = reply {
            protocol = p;
        }
        replies.push((char::from(cmd.code()), reply));
    }
    // After QUIT the filter closes.
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut buf))
        .await
        .expect("close in time")
        .unwrap();
    assert_eq!(n, 0, "data after QUIT: {:?}", &buf[..]);
    assert!(buf.is_empty());
    replies
}

#[tokio::test]
async fn fixture_one_message_replayed_byte_for_byte() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let replies = replay(&t, ONE_MESSAGE).await;
    assert_eq!(
        replies,
        [
            (
                'O',
                Reply::OptNeg {
                    version: 6,
                    actions: 0,
                    protocol: NEGOTIATED,
                }
            ),
            ('M', Reply::Continue),
            ('E', Reply::Continue),
        ]
    );
    // Never more than Postfix offered, never NOHDRS/NOBODY.
    assert_eq!(NEGOTIATED & !SMFI_CURR_PROT, 0);
    let entries = t.spool_entries();
    assert_eq!(entries.len(), 1);
    let (_, message, meta) = &entries[0];
    assert_eq!(meta["mailbox"], "alice@contoso.com");
    assert_eq!(meta["organization"], "contoso");
    assert_eq!(meta["folder"], "Sent Items");
    assert_eq!(meta["queue_id"], "5B0E4B672E");
    assert_eq!(meta["message_id"], "<20261127134542.010779@vm>");
    assert_eq!(meta["sender"], "alice@contoso.com");
    assert_eq!(meta["recipients"], serde_json::json!(["carol@example.org"]));
    assert_eq!(meta["size"], message.len());
    // The capture traffic carries no leading spaces (it was recorded without
    // SMFIP_HDR_LEADSPC); the fold comes back as CRLF and the body is as sent.
    let text = String::from_utf8(message.clone()).unwrap();
    assert!(
        text.starts_with("Date:Fri, 27 Nov 2026 13:45:42 +0000\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nSubject:folded\r\n header test\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\nline1\r\nline2\r\n\r\n\r\n"),
        "{text}"
    );
    assert_eq!(t.in_use("alice@contoso.com").await, 0);

    let audit = t.audit().await;
    let kinds: Vec<&str> = audit.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "session_opened",
            "submission_decision",
            "submission_completed",
            "session_closed"
        ]
    );
    assert!(audit.iter().all(|e| e["front_end"] == "milter"));
    assert_eq!(audit[1]["decision"], "allow");
    assert_eq!(audit[1]["sasl_method"], "PLAIN");
    assert_eq!(audit[1]["sessions_in_use"], 1);
    assert_eq!(audit[1]["limit"], 3);
    assert_eq!(audit[2]["queue_id"], "5B0E4B672E");
    assert_eq!(audit[2]["recipient_count"], 1);
    assert_eq!(audit[2]["spool_entry"], entries[0].0);
    assert_eq!(audit[3]["messages"], 1);
    assert!(audit[3]["duration_ms"].is_u64());
}

#[tokio::test]
async fn fixture_two_messages_one_lease_two_entries() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let replies = replay(&t, TWO_MESSAGES).await;
    let letters: String = replies.iter().map(|(c, _)| *c).collect();
    assert_eq!(letters, "OMEME");
    assert!(replies[1..].iter().all(|(_, r)| *r == Reply::Continue));
    let entries = t.spool_entries();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].2["queue_id"], "D24DBB6705");
    assert_eq!(entries[0].2["message_id"], "<m1@client>");
    assert_eq!(
        entries[0].2["recipients"],
        serde_json::json!(["bob@example.net", "carol@example.org"])
    );
    assert_eq!(entries[1].2["queue_id"], "D4D44B6705");
    assert!(entries[1].0 > entries[0].0);
    assert!(entries[1]
        .1
        .ends_with(b"\r\n\r\nbody two\r\n.leading dot\r\n"));
    assert_eq!(t.in_use("alice@contoso.com").await, 0);
    let audit = t.audit().await;
    let opened = audit
        .iter()
        .filter(|e| e["event"] == "session_opened")
        .count();
    assert_eq!(opened, 1);
    let closed: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "session_closed")
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["messages"], 2);
}

#[tokio::test]
async fn folded_header_is_rebuilt_with_crlf_folds() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let headers = [
        ("From", " bob@contoso.com"),
        ("Subject", " folded\n header\n\ttest"),
        ("X-Tight", "no-space"),
        ("Message-ID", "\n <fold@client>"),
    ];
    let expected = b"From: bob@contoso.com\r\nSubject: folded\r\n header\r\n\ttest\r\n\
X-Tight:no-space\r\nMessage-ID:\r\n <fold@client>\r\n\r\nbody\r\n";
    // With SMFIP_HDR_LEADSPC (Postfix offers it): the header exactly as written.
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.protocol & SMFIP_HDR_LEADSPC, SMFIP_HDR_LEADSPC);
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    let r = c
        .message("Q1", &["x@example.net"], &headers, &[b"body\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);
    let entries = t.spool_entries();
    assert_eq!(entries[0].1, expected);
    assert_eq!(entries[0].2["message_id"], "<fold@client>");
    c.quit().await;

    // An MTA without it strips one leading space; we put the customary one back.
    let mut c = t.milter().await;
    c.open_with(SMFI_CURR_PROT & !SMFIP_HDR_LEADSPC).await;
    assert_eq!(c.protocol & SMFIP_HDR_LEADSPC, 0);
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    let r = c
        .message("Q2", &["x@example.net"], &headers[..2], &[b"body\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);
    let entries = t.spool_entries();
    assert_eq!(
        entries[1].1,
        b"From: bob@contoso.com\r\nSubject: folded\r\n header\r\n\ttest\r\n\r\nbody\r\n"
    );
    c.quit().await;
}

#[tokio::test]
async fn header_over_64k_is_captured() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let value: String = (0..100_000)
        .map(|i| {
            if i % 70 == 69 {
                '\n'
            } else {
                (b'a' + (i % 26) as u8) as char
            }
        })
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join("")
        .replace('\n', "\n ");
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    let big = format!(" {value}");
    let r = c
        .message("Q1", &["x@example.net"], &[("X-Big", &big)], &[b"b\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);
    let entries = t.spool_entries();
    let expected = format!("X-Big: {}\r\n\r\nb\r\n", value.replace('\n', "\r\n"));
    assert!(expected.len() > 64 * 1024);
    assert_eq!(entries[0].1, expected.as_bytes());
    c.quit().await;
}

#[tokio::test]
async fn disabled_org_and_mailbox_get_verbatim_replies() {
    let t = TestDaemon::start_milter(
        &[("contoso.yaml", CONTOSO), ("fabrikam.yaml", FABRIKAM)],
        "",
    )
    .await;
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(
        reply_text(&c.mail(Some("blocked@contoso.com")).await),
        MAILBOX
    );
    c.abort().await;
    assert_eq!(
        reply_text(&c.mail(Some("anyone@fabrikam.com")).await),
        TENANT
    );
    assert_eq!(reply_text(&c.mail(Some("x@unknown.example")).await), TENANT);
    // The mailbox exception in a disabled organization.
    assert_eq!(c.mail(Some("erp@fabrikam.com")).await, Reply::Continue);
    c.quit().await;
    let audit = t.audit().await;
    let reasons: Vec<&str> = audit
        .iter()
        .filter(|e| e["event"] == "submission_decision")
        .map(|e| e["reason"].as_str().unwrap_or("allowed"))
        .collect();
    assert_eq!(
        reasons,
        [
            "mailbox_disabled",
            "org_disabled",
            "unknown_organization",
            "allowed"
        ]
    );
    let first = &audit[0];
    assert_eq!(first["reply"], MAILBOX);
    assert_eq!(first["tls"], "TLSv1.3");
    assert_eq!(first["client_address"], "192.0.2.10");
    assert_eq!(t.in_use("blocked@contoso.com").await, 0);
}

#[tokio::test]
async fn unauthenticated_mail_is_accepted_and_not_counted() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.mail(None).await, Reply::Accept);
    // Accept ends the message for the MTA: the next MAIL is a new transaction.
    c.abort().await;
    assert_eq!(c.mail(None).await, Reply::Accept);
    c.quit().await;
    assert!(t.audit().await.is_empty());
    assert!(t.spool_entries().is_empty());
    assert_eq!(
        t.daemon
            .context()
            .stats
            .unauthenticated
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn three_sessions_pass_the_fourth_waits_for_a_quit() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut c = t.milter().await;
        c.open().await;
        assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
        sessions.push(c);
    }
    assert_eq!(t.in_use("bob@contoso.com").await, 3);
    let mut fourth = t.milter().await;
    fourth.open().await;
    assert_eq!(
        reply_text(&fourth.mail(Some("bob@contoso.com")).await),
        LIMIT
    );
    // Refused again while the three stay.
    assert_eq!(
        reply_text(&fourth.mail(Some("bob@contoso.com")).await),
        LIMIT
    );
    assert_eq!(t.in_use("bob@contoso.com").await, 3);
    // Another mailbox is not affected.
    let mut other = t.milter().await;
    other.open().await;
    assert_eq!(other.mail(Some("carol@contoso.com")).await, Reply::Continue);

    sessions.remove(0).quit().await;
    assert_eq!(t.in_use("bob@contoso.com").await, 2);
    assert_eq!(fourth.mail(Some("bob@contoso.com")).await, Reply::Continue);
    assert_eq!(t.in_use("bob@contoso.com").await, 3);
    let r = fourth
        .message("Q4", &["x@example.net"], &[("Subject", " hi")], &[b"x\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);

    // End-of-file without QUIT releases too.
    drop(sessions);
    fourth.quit().await;
    other.quit().await;
    support::wait_for(
        Duration::from_secs(5),
        "the leases to be released",
        || async { t.in_use("bob@contoso.com").await == 0 },
    )
    .await;
    let audit = t.audit().await;
    let defers: Vec<_> = audit.iter().filter(|e| e["decision"] == "defer").collect();
    assert_eq!(defers.len(), 2);
    assert_eq!(defers[0]["reason"], "concurrency_limit");
    assert_eq!(defers[0]["sessions_in_use"], 3);
    assert_eq!(defers[0]["reply"], LIMIT);
    let opened = audit
        .iter()
        .filter(|e| e["event"] == "session_opened")
        .count();
    let closed = audit
        .iter()
        .filter(|e| e["event"] == "session_closed")
        .count();
    assert_eq!((opened, closed), (5, 5));
}

#[tokio::test]
async fn two_messages_on_one_connection_take_one_lease() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let mut c = t.milter().await;
    c.open().await;
    for (i, qid) in ["QA", "QB"].iter().enumerate() {
        assert_eq!(c.mail(Some("Bob@Contoso.com")).await, Reply::Continue);
        assert_eq!(t.in_use("bob@contoso.com").await, 1, "message {i}");
        let r = c
            .message(qid, &["x@example.net"], &[("Subject", " m")], &[b"x\r\n"])
            .await;
        assert_eq!(r, Reply::Continue);
        c.abort().await;
        assert_eq!(t.in_use("bob@contoso.com").await, 1);
    }
    c.quit().await;
    assert_eq!(t.in_use("bob@contoso.com").await, 0);
    assert_eq!(t.spool_entries().len(), 2);
    let audit = t.audit().await;
    let closed: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "session_closed")
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["messages"], 2);
    assert_eq!(closed[0]["mailbox"], "bob@contoso.com");
}

#[tokio::test]
async fn sent_items_disabled_means_no_copy() {
    let policy = format!("{CONTOSO}  nocopy@contoso.com: {{ sent_items: {{ enabled: false }} }}\n");
    let t = TestDaemon::start_milter(&[("contoso.yaml", &policy)], "").await;
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.mail(Some("nocopy@contoso.com")).await, Reply::Continue);
    let r = c
        .message("Q1", &["x@example.net"], &[("Subject", " s")], &[b"x\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);
    c.quit().await;
    assert!(t.spool_entries().is_empty());
    let audit = t.audit().await;
    let closed = audit
        .iter()
        .find(|e| e["event"] == "session_closed")
        .unwrap();
    assert_eq!(closed["messages"], 1);
}

#[tokio::test]
async fn spool_failure_tempfails_and_the_daemon_keeps_serving() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    // The queue directory gone (moved away, so that it comes back the same directory): the
    // commit cannot create its segment.
    let queue = t.spool_dir().join("queue");
    let away = t.spool_dir().join("queue.away");
    std::fs::rename(&queue, &away).unwrap();
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    let r = c
        .message("QF", &["x@example.net"], &[("Subject", " s")], &[b"x\r\n"])
        .await;
    assert_eq!(reply_text(&r), TEMPFAIL);
    assert!(t.spool_entries().is_empty());
    c.abort().await;

    // The same connection and a new one both work once the disk is back.
    std::fs::rename(&away, &queue).unwrap();
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    let r = c
        .message("QG", &["x@example.net"], &[("Subject", " s")], &[b"x\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);
    let mut d = t.milter().await;
    d.open().await;
    assert_eq!(d.mail(Some("carol@contoso.com")).await, Reply::Continue);
    d.quit().await;
    c.quit().await;
    assert_eq!(t.spool_entries().len(), 1);
    let audit = t.audit().await;
    let failed: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "sent_copy_failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["queue_id"], "QF");
    assert_eq!(failed[0]["reply"], TEMPFAIL);
    assert!(failed[0]["message"].as_str().unwrap().contains("queue"));
    let bob_closed = audit
        .iter()
        .find(|e| e["event"] == "session_closed" && e["mailbox"] == "bob@contoso.com")
        .unwrap();
    assert_eq!(
        bob_closed["messages"], 1,
        "the tempfailed message is not counted"
    );
}

#[tokio::test]
async fn abort_before_end_of_message_discards_the_capture() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    c.send(Command::Rcpt {
        args: vec![b("<x@example.net>")],
    })
    .await;
    c.send(Command::Data).await;
    c.send(Command::EndOfHeaders).await;
    let chunk = Bytes::from(vec![b'x'; 60_000]);
    for _ in 0..4 {
        c.send(Command::Body(chunk.clone())).await;
    }
    // Beyond the write buffer: a temp file exists now.
    let spool = t.spool_dir();
    support::wait_for(Duration::from_secs(5), "a spool temp file", || async {
        !spool_temp_files(&spool).is_empty()
    })
    .await;
    assert_eq!(spool_temp_files(&spool).len(), 1);
    c.abort().await;
    // Still one lease, the session goes on.
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    assert!(spool_temp_files(&spool).is_empty());
    assert!(t.spool_entries().is_empty());
    c.quit().await;
}

/// Opens a session holding a lease, then sends `garbage` on a second connection that also
/// holds one: that connection closes (its lease released), the first goes on.
async fn bad_input_closes_only_its_connection(garbage: &[u8], half_close: bool) {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let mut good = t.milter().await;
    good.open().await;
    assert_eq!(good.mail(Some("bob@contoso.com")).await, Reply::Continue);

    let mut bad = t.milter().await;
    bad.open().await;
    assert_eq!(bad.mail(Some("bob@contoso.com")).await, Reply::Continue);
    assert_eq!(t.in_use("bob@contoso.com").await, 2);
    let stream = bad.framed.get_mut();
    stream.write_all(garbage).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    }
    assert!(bad.closed().await, "connection not closed for {garbage:?}");
    support::wait_for(
        Duration::from_secs(5),
        "the bad session's lease to be released",
        || async { t.in_use("bob@contoso.com").await == 1 },
    )
    .await;

    let r = good
        .message("QOK", &["x@example.net"], &[("Subject", " s")], &[b"x\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);
    good.quit().await;
    // A new connection works too.
    let mut again = t.milter().await;
    again.open().await;
    assert_eq!(again.mail(Some("bob@contoso.com")).await, Reply::Continue);
    again.quit().await;
}

#[tokio::test]
async fn truncated_frame_closes_one_connection() {
    bad_input_closes_only_its_connection(b"\0\0\0\x20Rhalf", true).await;
}

#[tokio::test]
async fn zero_length_frame_closes_one_connection() {
    bad_input_closes_only_its_connection(b"\0\0\0\0", false).await;
}

#[tokio::test]
async fn frame_over_the_cap_closes_one_connection() {
    // 1 MiB + 1: refused from the length field alone.
    bad_input_closes_only_its_connection(b"\0\x10\0\x01B", false).await;
}

#[tokio::test]
async fn unknown_command_closes_one_connection() {
    bad_input_closes_only_its_connection(b"\0\0\0\x05Zabcd", false).await;
}

#[tokio::test]
async fn out_of_order_command_closes_one_connection() {
    // DATA right after MAIL, without a recipient.
    bad_input_closes_only_its_connection(b"\0\0\0\x01T", false).await;
}

#[tokio::test]
async fn configured_frame_cap_applies() {
    let t =
        TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "milter_max_frame: 65536\n").await;
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    c.send(Command::Rcpt {
        args: vec![b("<x@example.net>")],
    })
    .await;
    c.send(Command::Data).await;
    let value = "v".repeat(70_000);
    c.send(Command::Header {
        name: b("X-Big"),
        value: b(&value),
    })
    .await;
    assert!(c.closed().await);
    support::wait_for(
        Duration::from_secs(5),
        "the lease to be released",
        || async { t.in_use("bob@contoso.com").await == 0 },
    )
    .await;
}

#[tokio::test]
async fn silent_connection_times_out_and_releases_its_lease() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "milter_timeout: 1s\n").await;
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    assert_eq!(t.in_use("bob@contoso.com").await, 1);
    let started = std::time::Instant::now();
    assert!(c.closed().await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    support::wait_for(
        Duration::from_secs(5),
        "the lease to be released",
        || async { t.in_use("bob@contoso.com").await == 0 },
    )
    .await;
    let audit = t.audit().await;
    assert!(audit.iter().any(|e| e["event"] == "session_closed"));
}

#[tokio::test]
async fn shutdown_releases_leases_and_audits_the_close() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    let limiter = t.daemon.context().limiter.clone();
    let audit_path = t.dir.path().join("audit.log");
    let TestDaemon { daemon, dir: _dir } = t;
    daemon.shutdown().await;
    assert!(c.closed().await);
    assert_eq!(limiter.in_use("bob@contoso.com").await, 0);
    let audit = read_audit(&audit_path);
    assert_eq!(audit.last().unwrap()["event"], "session_closed");
}

#[tokio::test]
async fn macros_for_any_stage_and_empty_macros_are_tolerated() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let mut c = t.milter().await;
    c.open().await;
    c.send(Command::Macro {
        stage: b'?',
        macros: vec![],
    })
    .await;
    c.send(Command::Macro {
        stage: 0,
        macros: vec![],
    })
    .await;
    c.macros(SMFIC_MAIL, &[]).await;
    assert_eq!(c.ask(Command::Unknown(b("XYZZY"))).await, None);
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    c.quit().await;
}

#[tokio::test]
async fn milter_and_policy_front_ends_run_side_by_side() {
    let t = TestDaemon::start_with(
        "policy: [\"inet:127.0.0.1:0\"]\nmilter: [\"inet:127.0.0.1:0\"]\n",
        &[("contoso.yaml", CONTOSO)],
        "sent_items: { spool: {dir}/spool }\n",
    )
    .await;
    assert_eq!(t.daemon.policy_endpoints().len(), 1);
    let mut c = t.milter().await;
    c.open().await;
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    c.quit().await;
    let mut p = t.client().await;
    let tx = support::daemon::Txn {
        login: "bob@contoso.com",
        client_port: 1,
        instance: "i",
    };
    assert_eq!(p.ask(&tx, "RCPT").await, "DUNNO");
}

/// The spool writer's temp file is not a committed entry, and a second daemon cannot take
/// the same spool.
#[tokio::test]
async fn spool_is_owned_by_one_daemon() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sg.yaml");
    std::fs::write(
        &path,
        format!(
            "milter: [\"inet:127.0.0.1:0\"]\npolicies: {}\naudit: {{ path: {} }}\nsent_items: {{ spool: {} }}\n",
            t.policies_dir().display(),
            dir.path().join("audit.log").display(),
            t.spool_dir().display()
        ),
    )
    .unwrap();
    let config = submitgate::config::Config::load(&path).unwrap();
    let err = submitgate::daemon::Daemon::start(config)
        .await
        .err()
        .expect("second owner refused");
    assert!(err.to_string().contains("locked"), "{err}");
}

#[tokio::test]
async fn unix_socket_listener_serves_a_session() {
    use futures_util::{SinkExt, StreamExt};
    let t = TestDaemon::start_with(
        "milter: [\"unix:{dir}/milter.sock\"]\nsent_items: { spool: {dir}/spool }\n",
        &[("contoso.yaml", CONTOSO)],
        "",
    )
    .await;
    let stream = tokio::net::UnixStream::connect(t.dir.path().join("milter.sock"))
        .await
        .unwrap();
    let mut framed =
        tokio_util::codec::Framed::new(stream, submitgate::milter::codec::MtaCodec::default());
    framed
        .send(Command::OptNeg {
            version: 6,
            actions: 0x1ff,
            protocol: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        framed.next().await.unwrap().unwrap(),
        Reply::OptNeg {
            version: 6,
            actions: 0,
            protocol: 0,
        }
    );
    framed
        .send(Command::Connect {
            hostname: b("localhost"),
            family: b'L',
            port: Some(0),
            address: b("/var/run/client"),
        })
        .await
        .unwrap();
    assert_eq!(framed.next().await.unwrap().unwrap(), Reply::Continue);
    framed
        .send(Command::Macro {
            stage: SMFIC_MAIL,
            macros: vec![(b("{auth_authen}"), b("bob@contoso.com"))],
        })
        .await
        .unwrap();
    framed
        .send(Command::Mail {
            args: vec![b("<bob@contoso.com>")],
        })
        .await
        .unwrap();
    assert_eq!(framed.next().await.unwrap().unwrap(), Reply::Continue);
    assert_eq!(t.in_use("bob@contoso.com").await, 1);
    framed.send(Command::Quit).await.unwrap();
    assert!(framed.next().await.is_none());
    support::wait_for(
        Duration::from_secs(5),
        "the lease to be released",
        || async { t.in_use("bob@contoso.com").await == 0 },
    )
    .await;
}

#[tokio::test]
async fn a_session_keeps_the_policy_it_started_with() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], "watch_policies: false\n").await;
    let mut old = t.milter().await;
    old.open().await;
    assert_eq!(old.mail(Some("bob@contoso.com")).await, Reply::Continue);
    old.abort().await;

    // The organization is disabled while the session is open.
    std::fs::write(
        t.policies_dir().join("contoso.yaml"),
        CONTOSO.replace(
            "smtp_client_authentication_disabled: false",
            "smtp_client_authentication_disabled: true",
        ),
    )
    .unwrap();
    assert!(matches!(
        t.daemon.reload().await,
        submitgate::policy::reload::ReloadOutcome::Reloaded { .. }
    ));

    // The session that started before the reload finishes under its policy...
    assert_eq!(old.mail(Some("bob@contoso.com")).await, Reply::Continue);
    // ...a new session gets the new one.
    let mut new = t.milter().await;
    new.open().await;
    match new.mail(Some("bob@contoso.com")).await {
        Reply::ReplyCode(r) => assert!(r.to_string().contains("disabled for the Tenant"), "{r}"),
        other => panic!("{other:?}"),
    }
    old.quit().await;
    new.quit().await;
}

#[tokio::test]
async fn invalid_logins_are_refused_verbatim_and_take_no_lease() {
    const INVALID: &str =
        "550 5.7.1 Authentication unsuccessful, the login is not a valid mailbox address.";
    let t = TestDaemon::start_milter(
        &[("contoso.yaml", CONTOSO)],
        "default_domain: contoso.com\n",
    )
    .await;
    let mut c = t.milter().await;
    c.open().await;
    let long = format!("{}@contoso.com", "a".repeat(400));
    let bad = [
        "  ",
        "bob\r\n@contoso.com",
        "\u{1b}]0;owned\u{7}bob@contoso.com",
        "moc.\u{2067}bob@contoso.com",
        long.as_str(),
    ];
    for login in bad {
        assert_eq!(reply_text(&c.mail(Some(login)).await), INVALID, "{login:?}");
        c.abort().await;
    }
    assert_eq!(t.in_use("@contoso.com").await, 0);
    // The same session may still authenticate properly.
    assert_eq!(c.mail(Some("bob@contoso.com")).await, Reply::Continue);
    c.quit().await;
    let audit = t.audit().await;
    let refused: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["reason"] == "invalid_login")
        .collect();
    assert_eq!(refused.len(), bad.len(), "{audit:?}");
    assert!(refused
        .iter()
        .all(|e| e["decision"] == "reject" && e["reply"] == INVALID && e["front_end"] == "milter"));
    assert_eq!(refused[1]["mailbox"], "bob\\r\\n@contoso.com");
    assert!(t.spool_entries().is_empty());
}
