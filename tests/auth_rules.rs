//! Authentication policies (issue 16) through all three front ends of one real daemon over real
//! sockets: Basic authentication off, legacy TLS refused, TLS required, and `report_only`. The
//! milter reads `{auth_type}` (MAIL) and `{tls_version}` (HELO, or MAIL when the admin adds it
//! there), the policy front end `sasl_method` and `encryption_protocol`, the Dovecot auth policy
//! endpoint `mechanism` and `secured` — and every one answers with the same reason and text.

mod support;

use submitgate::milter::codec::{
    Command, Reply, SMFIA_INET, SMFIC_CONNECT, SMFIC_HELO, SMFIC_MAIL, SMFI_CURR_PROT,
};
use support::daemon::{b, MilterClient, TestDaemon, Txn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BASIC: &str = "550 5.7.30 Basic authentication is not supported for Client Submission.";
const LEGACY: &str = "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2.";
const NO_TLS: &str = "530 5.7.0 Must issue a STARTTLS command first.";
const AUTH_BASIC: &str = "Basic authentication is not supported for Client Submission";

/// contoso keeps the defaults except for two mailboxes; woodgrove retires Basic authentication
/// and requires TLS; tailspin has the same rules, report_only.
const CONTOSO: &str = "\
organization: contoso
domains: [contoso.com]
mailboxes:
  alice@contoso.com: { allow_basic_auth_smtp: false }
  old@contoso.com: { allow_legacy_tls_clients: true }
";
const WOODGROVE: &str = "\
organization: woodgrove
domains: [woodgrove.com]
allow_basic_auth_smtp: false
require_tls: true
";
const TAILSPIN: &str = "\
organization: tailspin
domains: [tailspin.com]
allow_basic_auth_smtp: false
basic_auth_mode: report_only
allow_legacy_tls_clients: false
tls_mode: report_only
";

async fn daemon() -> TestDaemon {
    TestDaemon::start_with(
        "policy: [\"inet:127.0.0.1:0\"]\nmilter: [\"inet:127.0.0.1:0\"]\n\
auth_policy: [\"inet:127.0.0.1:0\"]\nsent_items: { spool: {dir}/spool }\n",
        &[
            ("contoso.yaml", CONTOSO),
            ("woodgrove.yaml", WOODGROVE),
            ("tailspin.yaml", TAILSPIN),
        ],
        "",
    )
    .await
}

/// A policy request as Postfix 3.7 sends it, with this mechanism and TLS protocol.
fn policy_request(login: &str, port: u16, mechanism: &str, tls: &str) -> String {
    Txn {
        login,
        client_port: port,
        instance: "a1.b2.c3.0",
    }
    .request("RCPT")
    .replace("sasl_method=PLAIN\n", &format!("sasl_method={mechanism}\n"))
    .replace(
        "encryption_protocol=TLSv1.3\n",
        &format!("encryption_protocol={tls}\n"),
    )
}

#[tokio::test]
async fn the_policy_front_end_reads_sasl_method_and_encryption_protocol() {
    let t = daemon().await;
    let mut c = t.client().await;
    for (i, (login, mechanism, tls, want)) in [
        ("alice@contoso.com", "PLAIN", "TLSv1.3", BASIC),
        ("alice@contoso.com", "LOGIN", "TLSv1.2", BASIC),
        ("alice@contoso.com", "XOAUTH2", "TLSv1.3", "DUNNO"),
        ("bob@contoso.com", "PLAIN", "TLSv1.1", LEGACY),
        ("bob@contoso.com", "PLAIN", "TLSv1", LEGACY),
        ("bob@contoso.com", "PLAIN", "", "DUNNO"),
        ("old@contoso.com", "PLAIN", "TLSv1", "DUNNO"),
        ("x@woodgrove.com", "OAUTHBEARER", "", NO_TLS),
        ("x@woodgrove.com", "OAUTHBEARER", "TLSv1.2", "DUNNO"),
        ("x@woodgrove.com", "CRAM-MD5", "TLSv1.2", BASIC),
        ("dave@tailspin.com", "PLAIN", "TLSv1.1", "DUNNO"),
    ]
    .into_iter()
    .enumerate()
    {
        // A new client port per request: each is its own session and transaction.
        let reply = c
            .raw(policy_request(login, 40000 + i as u16, mechanism, tls).as_bytes())
            .await;
        assert_eq!(reply.as_deref(), Some(want), "{login} {mechanism} {tls:?}");
    }
    let audit = t.audit().await;
    let reasons: Vec<(&str, &str, &str)> = audit
        .iter()
        .filter(|e| e["event"] == "submission_decision" && e["decision"] != "allow")
        .map(|e| {
            (
                e["mailbox"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("alice@contoso.com", "basic_auth_disabled", "reject"),
            ("alice@contoso.com", "basic_auth_disabled", "reject"),
            ("bob@contoso.com", "legacy_tls", "defer"),
            ("bob@contoso.com", "legacy_tls", "defer"),
            ("x@woodgrove.com", "tls_required", "reject"),
            ("x@woodgrove.com", "basic_auth_disabled", "reject"),
        ]
    );
    let would: Vec<&str> = audit
        .iter()
        .filter(|e| e["event"] == "would_refuse")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(would, ["legacy_tls", "basic_auth_disabled"]);
    // And counted for Prometheus (per process: other tests of this file may add to it).
    let metrics = submitgate::metrics::global().render(Default::default());
    for reason in ["legacy_tls", "basic_auth_disabled"] {
        let series =
            format!("submitgate_would_refuse_total{{front_end=\"policy\",reason=\"{reason}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&series));
        let n: f64 = line
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
        assert!(n >= 1.0, "{series}{n}");
    }
}

/// A milter session as Postfix runs it, with `{tls_version}` at HELO and/or MAIL.
async fn milter_mail(
    t: &TestDaemon,
    login: &str,
    auth_type: Option<&str>,
    tls_at_helo: Option<&str>,
    tls_at_mail: Option<&str>,
) -> Reply {
    let mut m = MilterClient::connect(t.milter_port()).await;
    m.negotiate_with(SMFI_CURR_PROT).await;
    m.macros(SMFIC_CONNECT, &[("j", "mx.test")]).await;
    m.ask(Command::Connect {
        hostname: b("client.example"),
        family: SMFIA_INET,
        port: Some(40000),
        address: b("192.0.2.10"),
    })
    .await;
    let helo: Vec<(&str, &str)> = tls_at_helo
        .map(|v| ("{tls_version}", v))
        .into_iter()
        .collect();
    m.macros(SMFIC_HELO, &helo).await;
    m.ask(Command::Helo(b("client.example"))).await;
    let mut mail = vec![("{auth_authen}", login), ("{mail_addr}", login)];
    mail.extend(auth_type.map(|a| ("{auth_type}", a)));
    mail.extend(tls_at_mail.map(|v| ("{tls_version}", v)));
    m.macros(SMFIC_MAIL, &mail).await;
    let reply = m
        .ask(Command::Mail {
            args: vec![b(&format!("<{login}>"))],
        })
        .await
        .expect("MAIL is answered");
    m.quit().await;
    reply
}

fn code(reply: &Reply) -> String {
    match reply {
        Reply::ReplyCode(r) => r.to_string(),
        Reply::Continue => "continue".to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn the_milter_reads_auth_type_and_tls_version() {
    let t = daemon().await;
    let cases = [
        (
            "alice@contoso.com",
            Some("PLAIN"),
            Some("TLSv1.3"),
            None,
            BASIC,
        ),
        (
            "alice@contoso.com",
            Some("XOAUTH2"),
            Some("TLSv1.3"),
            None,
            "continue",
        ),
        // Without {auth_type} nothing shows the mechanism is not Basic.
        ("alice@contoso.com", None, Some("TLSv1.3"), None, BASIC),
        (
            "bob@contoso.com",
            Some("PLAIN"),
            Some("TLSv1.1"),
            None,
            LEGACY,
        ),
        // No EHLO after STARTTLS: only the MAIL macro tells.
        (
            "bob@contoso.com",
            Some("PLAIN"),
            None,
            Some("TLSv1.1"),
            LEGACY,
        ),
        ("bob@contoso.com", Some("PLAIN"), None, None, "continue"),
        ("x@woodgrove.com", Some("XOAUTH2"), None, None, NO_TLS),
        (
            "x@woodgrove.com",
            Some("XOAUTH2"),
            None,
            Some("TLSv1.3"),
            "continue",
        ),
        (
            "dave@tailspin.com",
            Some("LOGIN"),
            Some("TLSv1"),
            None,
            "continue",
        ),
    ];
    for (login, auth_type, helo, mail, want) in cases {
        let reply = milter_mail(&t, login, auth_type, helo, mail).await;
        assert_eq!(
            code(&reply),
            want,
            "{login} {auth_type:?} {helo:?} {mail:?}"
        );
    }
    let audit = t.audit().await;
    let would: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e["event"] == "would_refuse")
        .map(|e| (e["reason"].as_str().unwrap(), e["tls"].as_str().unwrap()))
        .collect();
    assert_eq!(
        would,
        [("legacy_tls", "TLSv1"), ("basic_auth_disabled", "TLSv1")]
    );
}

/// POSTs one auth policy request; returns the JSON answer.
async fn auth_policy(t: &TestDaemon, command: &str, body: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(("127.0.0.1", t.auth_policy_port()))
        .await
        .unwrap();
    let req = format!(
        "POST /?command={command} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

/// Dovecot 2.3's body with `mechanism=%{mech} secured=%{secured}` added to the attributes.
fn dovecot_body(login: &str, mechanism: &str, secured: &str, report: Option<bool>) -> String {
    let report = report
        .map(|ok| format!(r#","success":{ok},"policy_reject":false"#))
        .unwrap_or_default();
    format!(
        r#"{{"device_id":"","login":"{login}","mechanism":"{mechanism}","protocol":"smtp","pwhash":"08fd","remote":"192.0.2.7","secured":"{secured}","session_id":"s1"{report},"tls":false}}"#
    )
}

#[tokio::test]
async fn the_auth_policy_endpoint_reads_the_mechanism_and_secured() {
    let t = daemon().await;
    let refuse = |msg: &str| serde_json::json!({"status": -1, "msg": msg});
    let allow = serde_json::json!({"status": 0});
    let ask = |login: &'static str, mech: &'static str, secured: &'static str| {
        let t = &t;
        async move { auth_policy(t, "allow", &dovecot_body(login, mech, secured, None)).await }
    };
    assert_eq!(
        ask("alice@contoso.com", "PLAIN", "secured").await,
        refuse(AUTH_BASIC)
    );
    assert_eq!(ask("alice@contoso.com", "XOAUTH2", "secured").await, allow);
    assert_eq!(
        ask("x@woodgrove.com", "XOAUTH2", "").await,
        refuse("Must issue a STARTTLS command first")
    );
    assert_eq!(ask("x@woodgrove.com", "XOAUTH2", "secured").await, allow);
    // Dovecot cannot tell the TLS version: legacy TLS is the MAIL-stage front ends' to refuse.
    assert_eq!(ask("bob@contoso.com", "PLAIN", "secured").await, allow);
    // report_only: allowed at AUTH, and audited as would_refuse once Dovecot reports success.
    assert_eq!(ask("dave@tailspin.com", "PLAIN", "").await, allow);
    auth_policy(
        &t,
        "report",
        &dovecot_body("dave@tailspin.com", "PLAIN", "", Some(true)),
    )
    .await;
    let audit = t.audit().await;
    let would: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "would_refuse")
        .collect();
    assert_eq!(would.len(), 1, "{audit:?}");
    assert_eq!(would[0]["front_end"], "auth_policy");
    assert_eq!(would[0]["reason"], "basic_auth_disabled");
    assert_eq!(would[0]["reply"], AUTH_BASIC);
    assert_eq!(would[0]["secured"], false);
    let succeeded = audit
        .iter()
        .find(|e| e["event"] == "auth_succeeded")
        .unwrap();
    assert_eq!(succeeded["sasl_method"], "PLAIN");
}
