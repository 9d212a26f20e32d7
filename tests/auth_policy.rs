//! The Dovecot auth policy endpoint over real sockets: request bodies exactly as Dovecot 2.3
//! sends them (allow and report, before and after the password check), the API key, malformed
//! and oversized bodies, keep-alive, protocols other than SMTP, reloads, unix sockets.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::daemon::{TestDaemon, CONTOSO, FABRIKAM};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const MAILBOX_MSG: &str =
    "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox";
const TENANT_MSG: &str =
    "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant";

const AUTH_POLICY: &str = "auth_policy: [\"inet:127.0.0.1:0\"]\n";

/// `command=allow` after the password check, byte for byte as Dovecot 2.3.19 sent it for a
/// Postfix SASL login (attributes sorted by name, every value a string, then `tls`).
fn allow_body(login: &str, protocol: &str) -> String {
    format!(
        r#"{{"device_id":"","login":"{login}","protocol":"{protocol}","pwhash":"08fd","remote":"127.0.0.1","session_id":"","tls":false}}"#
    )
}

/// `command=report`: the same attributes plus `success` and `policy_reject`, then `tls`.
fn report_body(login: &str, protocol: &str, success: bool, policy_reject: bool) -> String {
    format!(
        r#"{{"device_id":"","login":"{login}","protocol":"{protocol}","pwhash":"08fd","remote":"192.0.2.7","session_id":"","success":{success},"policy_reject":{policy_reject},"tls":false}}"#
    )
}

/// One HTTP response as read off the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 client that speaks like Dovecot's http-client.
struct Client<S> {
    stream: BufReader<S>,
}

impl Client<TcpStream> {
    async fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            stream: BufReader::new(s),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// Sends a request as Dovecot does (POST, JSON, Content-Length) with extra header lines.
    async fn post(&mut self, target: &str, body: &str, extra_headers: &str) -> Reply {
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nDate: Fri, 27 Nov 2026 15:00:00 GMT\r\n\
User-Agent: dovecot/auth-policy-client\r\nConnection: Keep-Alive\r\n\
Content-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send_raw(req.as_bytes()).await;
        self.read_reply().await.expect("a reply")
    }

    async fn allow(&mut self, login: &str, protocol: &str) -> Value {
        let r = self
            .post("/?command=allow", &allow_body(login, protocol), "")
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        r.json()
    }

    async fn read_reply(&mut self) -> Option<Reply> {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read_line(&mut line))
            .await
            .expect("reply within 5 s");
        if read.ok()? == 0 {
            return None;
        }
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h).await.ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(Reply {
            status,
            headers,
            body,
        })
    }

    /// Whether the server closed the connection (reads until EOF or 2 s).
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

async fn start(extra: &str) -> (TestDaemon, Client<TcpStream>) {
    let t = TestDaemon::start(
        &[("contoso.yaml", CONTOSO), ("fabrikam.yaml", FABRIKAM)],
        &format!("{AUTH_POLICY}{extra}"),
    )
    .await;
    let c = Client::connect(t.auth_policy_port()).await;
    (t, c)
}

#[tokio::test]
async fn allow_after_auth_refuses_disabled_logins_of_smtp() {
    let (t, mut c) = start("default_domain: contoso.com\n").await;
    let refused = |msg: &str| serde_json::json!({"status": -1, "msg": msg});
    let allowed = serde_json::json!({"status": 0});
    // Mailbox disabled; organization enabled (inherits); organization disabled; mailbox
    // exception under a disabled organization; unknown organization; login without a domain
    // (default_domain); case differences.
    assert_eq!(
        c.allow("blocked@contoso.com", "smtp").await,
        refused(MAILBOX_MSG)
    );
    assert_eq!(c.allow("bob@contoso.com", "smtp").await, allowed);
    assert_eq!(
        c.allow("someone@fabrikam.com", "smtp").await,
        refused(TENANT_MSG)
    );
    assert_eq!(c.allow("erp@fabrikam.com", "smtp").await, allowed);
    assert_eq!(
        c.allow("x@unknown.example", "smtp").await,
        refused(TENANT_MSG)
    );
    assert_eq!(c.allow("blocked", "smtp").await, refused(MAILBOX_MSG));
    assert_eq!(
        c.allow("Blocked@Contoso.COM", "SMTP").await,
        refused(MAILBOX_MSG)
    );
    // Nothing counted, nothing audited for allow.
    assert_eq!(t.in_use("bob@contoso.com").await, 0);
    assert!(t.audit().await.is_empty());
}

#[tokio::test]
async fn allow_before_auth_body_and_appended_command() {
    // With auth_policy_check_before_auth = yes Dovecot asks before the password check; the
    // body has the same shape. A URL that ends in '&' gets "command=..." appended to it.
    let (_t, mut c) = start("").await;
    let body = r#"{"device_id":"","login":"blocked@contoso.com","protocol":"smtp","pwhash":"1c2e","remote":"203.0.113.9","session_id":"WpTIu6ok3tTAfwAB","tls":true}"#;
    let r = c.post("/policy?tenant=x&command=allow", body, "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], -1);
    let r = c
        .post(
            "/any/path?command=allow",
            &allow_body("bob@contoso.com", "smtp"),
            "",
        )
        .await;
    assert_eq!(r.json(), serde_json::json!({"status": 0}));
}

#[tokio::test]
async fn other_protocols_and_missing_login_are_allowed() {
    let (t, mut c) = start("").await;
    // The flag is about SMTP: a disabled mailbox still reads its mail over IMAP/POP3.
    for protocol in ["imap", "pop3", "submission", "doveadm", "lmtp"] {
        assert_eq!(
            c.allow("blocked@contoso.com", protocol).await["status"],
            0,
            "{protocol}"
        );
    }
    let r = c
        .post(
            "/?command=allow",
            r#"{"login":"blocked@contoso.com","remote":"127.0.0.1"}"#,
            "",
        )
        .await;
    assert_eq!(r.json()["status"], 0, "no protocol");
    for body in [
        r#"{"protocol":"smtp","remote":"127.0.0.1"}"#,
        r#"{"login":"","protocol":"smtp"}"#,
        r#"{}"#,
    ] {
        let r = c.post("/?command=allow", body, "").await;
        assert_eq!(r.json()["status"], 0, "{body}");
    }
    // Reports of other protocols are not audited either.
    let r = c
        .post(
            "/?command=report",
            &report_body("blocked@contoso.com", "imap", true, false),
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(t.audit().await.is_empty());
}

#[tokio::test]
async fn configured_protocols() {
    let (_t, mut c) = start("auth_policy_protocols: [smtp, submission]\n").await;
    assert_eq!(
        c.allow("blocked@contoso.com", "submission").await["status"],
        -1
    );
    assert_eq!(c.allow("blocked@contoso.com", "smtp").await["status"], -1);
    assert_eq!(c.allow("blocked@contoso.com", "imap").await["status"], 0);
}

#[tokio::test]
async fn reports_are_audited() {
    let (t, mut c) = start("").await;
    let reports = [
        report_body("bob@contoso.com", "smtp", true, false),
        report_body("bob@contoso.com", "smtp", false, false),
        report_body("blocked@contoso.com", "smtp", false, true),
        report_body("someone@fabrikam.com", "smtp", false, true),
        // With the mechanism added to auth_policy_request_attributes, and TLS.
        r#"{"device_id":"","login":"Bob@Contoso.com","mechanism":"PLAIN","protocol":"smtp","pwhash":"08fd","remote":"192.0.2.8","session_id":"a1b2c3","success":true,"policy_reject":false,"tls":true}"#.to_string(),
    ];
    for body in &reports {
        let r = c.post("/?command=report", body, "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), serde_json::json!({"status": 0}));
    }
    let audit = t.audit().await;
    let kinds: Vec<&str> = audit.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "auth_succeeded",
            "auth_failed",
            "auth_refused_by_policy",
            "auth_refused_by_policy",
            "auth_succeeded"
        ]
    );
    for e in &audit {
        assert_eq!(e["front_end"], "auth_policy");
        assert_eq!(e["protocol"], "smtp");
    }
    assert_eq!(audit[0]["mailbox"], "bob@contoso.com");
    assert_eq!(audit[0]["organization"], "contoso");
    assert_eq!(audit[0]["client_address"], "192.0.2.7");
    assert_eq!(audit[0]["secured"], false);
    assert!(audit[0].get("reason").is_none());
    assert!(audit[0].get("session_id").is_none());
    assert_eq!(audit[2]["mailbox"], "blocked@contoso.com");
    assert_eq!(audit[2]["reason"], "mailbox_disabled");
    assert_eq!(audit[2]["reply"], MAILBOX_MSG);
    assert_eq!(audit[3]["reason"], "org_disabled");
    assert_eq!(audit[3]["organization"], "fabrikam");
    assert_eq!(audit[3]["reply"], TENANT_MSG);
    assert_eq!(audit[4]["mailbox"], "bob@contoso.com");
    assert_eq!(audit[4]["sasl_method"], "PLAIN");
    assert_eq!(audit[4]["secured"], true);
    assert_eq!(audit[4]["session_id"], "a1b2c3");
}

#[tokio::test]
async fn api_key_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.key"), "k3y-0f-submitgate\n").unwrap();
    let t = start_with_key(&dir).await;
    let mut c = Client::connect(t.auth_policy_port()).await;
    let body = allow_body("blocked@contoso.com", "smtp");

    let r = c.post("/?command=allow", &body, "").await;
    assert_eq!(r.status, 401);
    let r = c
        .post("/?command=allow", &body, "X-API-Key: wrong-key\r\n")
        .await;
    assert_eq!(r.status, 401);
    // auth_policy_server_api_header = X-API-Key:k3y-0f-submitgate, or with a space.
    let r = c
        .post("/?command=allow", &body, "X-API-Key: k3y-0f-submitgate\r\n")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], -1);
    let r = c
        .post(
            "/?command=report",
            &report_body("bob@contoso.com", "smtp", true, false),
            "x-api-key:k3y-0f-submitgate\r\n",
        )
        .await;
    assert_eq!(r.status, 200);

    let audit = t.audit().await;
    let kinds: Vec<&str> = audit.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "auth_policy_unauthorized",
            "auth_policy_unauthorized",
            "auth_succeeded"
        ]
    );
    assert_eq!(audit[0]["message"], "missing X-API-Key");
    assert_eq!(audit[0]["client_address"], "127.0.0.1");
    assert_eq!(audit[1]["message"], "wrong X-API-Key");
    // The key never reaches the audit log.
    let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(!text.contains("k3y-0f-submitgate") && !text.contains("wrong-key"));
}

async fn start_with_key(dir: &tempfile::TempDir) -> StartedWithKey {
    let pdir = dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    std::fs::write(pdir.join("contoso.yaml"), CONTOSO).unwrap();
    let text = format!(
        "{AUTH_POLICY}policies: {}\naudit: {{ path: {} }}\nauth_policy_api_key_file: {}\n",
        pdir.display(),
        dir.path().join("audit.log").display(),
        dir.path().join("api.key").display()
    );
    let path = dir.path().join("submitgate.yaml");
    std::fs::write(&path, text).unwrap();
    let config = submitgate::config::Config::load(&path).unwrap();
    StartedWithKey {
        daemon: submitgate::daemon::Daemon::start(config).await.unwrap(),
        audit_path: dir.path().join("audit.log"),
    }
}

struct StartedWithKey {
    daemon: submitgate::daemon::Daemon,
    audit_path: std::path::PathBuf,
}

impl StartedWithKey {
    fn auth_policy_port(&self) -> u16 {
        match &self.daemon.auth_policy_endpoints()[0] {
            submitgate::endpoint::Endpoint::Inet { port, .. } => *port,
            other => panic!("not inet: {other}"),
        }
    }

    async fn audit(&self) -> Vec<Value> {
        self.daemon.context().audit.flush().await;
        support::read_audit(&self.audit_path)
    }
}

#[tokio::test]
async fn missing_or_bad_key_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    std::fs::write(pdir.join("contoso.yaml"), CONTOSO).unwrap();
    let config_for = |key: &std::path::Path| {
        let text = format!(
            "{AUTH_POLICY}policies: {}\naudit: {{ path: {} }}\nauth_policy_api_key_file: {}\n",
            pdir.display(),
            dir.path().join("audit.log").display(),
            key.display()
        );
        submitgate::config::Config::parse(std::path::Path::new("sg.yaml"), &text).unwrap()
    };
    let missing = dir.path().join("nope.key");
    let Err(e) = submitgate::daemon::Daemon::start(config_for(&missing)).await else {
        panic!("started without its key file");
    };
    assert!(e.to_string().contains("nope.key"), "{e}");
    let spaced = dir.path().join("spaced.key");
    std::fs::write(&spaced, "two words\n").unwrap();
    let Err(e) = submitgate::daemon::Daemon::start(config_for(&spaced)).await else {
        panic!("started with an unusable key");
    };
    assert!(e.to_string().contains("printable ASCII"), "{e}");
    assert!(!e.to_string().contains("two words"), "{e}");
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_server_keeps_serving() {
    let (t, mut c) = start("").await;
    let cases: [(&str, &str); 6] = [
        ("/?command=allow", "{\"login\":"),
        ("/?command=allow", "not json at all"),
        ("/?command=allow", "[\"a\",\"b\"]"),
        ("/?command=allow", ""),
        ("/?command=delete", &allow_body("bob@contoso.com", "smtp")),
        ("/", &allow_body("bob@contoso.com", "smtp")),
    ];
    for (target, body) in cases {
        let r = c.post(target, body, "").await;
        assert_eq!(r.status, 400, "{target} {body:?}");
    }
    // Same connection, still answering.
    assert_eq!(c.allow("blocked@contoso.com", "smtp").await["status"], -1);

    // GET is not this endpoint's method.
    c.send_raw(b"GET /?command=allow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let r = c.read_reply().await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));

    // Over 64 KiB, announced by Content-Length.
    let mut big = Client::connect(t.auth_policy_port()).await;
    let huge = format!(
        "{{\"login\":\"bob@contoso.com\",\"protocol\":\"smtp\",\"pad\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let r = big.post("/?command=allow", &huge, "").await;
    assert_eq!(r.status, 400);

    // Over 64 KiB, chunked (no length up front).
    let mut chunked = Client::connect(t.auth_policy_port()).await;
    chunked
        .send_raw(b"POST /?command=allow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    let chunk = "y".repeat(16 * 1024);
    for _ in 0..5 {
        chunked
            .send_raw(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await;
    }
    chunked.send_raw(b"0\r\n\r\n").await;
    let r = chunked.read_reply().await.unwrap();
    assert_eq!(r.status, 400);

    // Garbage that is not HTTP closes that connection only.
    let mut garbage = Client::connect(t.auth_policy_port()).await;
    garbage.send_raw(b"\x00\x01\x02 hello\r\n\r\n").await;
    let r = garbage.read_reply().await;
    assert!(
        matches!(&r, None | Some(Reply { status: 400, .. })),
        "{r:?}"
    );

    // And the daemon answers new connections as before.
    let mut fresh = Client::connect(t.auth_policy_port()).await;
    assert_eq!(fresh.allow("bob@contoso.com", "smtp").await["status"], 0);
    assert!(t.audit().await.is_empty());
}

#[tokio::test]
async fn keep_alive_many_requests_on_one_connection() {
    let (t, mut c) = start("").await;
    for i in 0..50 {
        let (login, expected) = if i % 2 == 0 {
            ("blocked@contoso.com", -1)
        } else {
            ("bob@contoso.com", 0)
        };
        let r = c
            .post("/?command=allow", &allow_body(login, "smtp"), "")
            .await;
        assert_eq!(r.status, 200);
        assert_ne!(r.header("connection"), Some("close"));
        assert_eq!(r.json()["status"], expected, "request {i}");
        let r = c
            .post(
                "/?command=report",
                &report_body(login, "smtp", expected == 0, expected != 0),
                "",
            )
            .await;
        assert_eq!(r.status, 200);
    }
    // Pipelined: two requests in one write, two answers in order.
    let one = allow_body("blocked@contoso.com", "smtp");
    let two = allow_body("bob@contoso.com", "smtp");
    let req = |b: &str| {
        format!(
            "POST /?command=allow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )
    };
    c.send_raw(format!("{}{}", req(&one), req(&two)).as_bytes())
        .await;
    assert_eq!(c.read_reply().await.unwrap().json()["status"], -1);
    assert_eq!(c.read_reply().await.unwrap().json()["status"], 0);
    assert_eq!(t.audit().await.len(), 50);

    // A client that asks to close gets its answer, then the close.
    let r = c
        .post("/?command=allow", &one, "Connection: close\r\n")
        .await;
    assert_eq!(r.json()["status"], -1);
    assert!(c.closed().await);
}

#[tokio::test]
async fn reload_changes_the_answer() {
    let (t, mut c) = start("").await;
    assert_eq!(c.allow("bob@contoso.com", "smtp").await["status"], 0);
    let changed = CONTOSO.replace(
        "mailboxes:\n",
        "mailboxes:\n  bob@contoso.com: { smtp_client_authentication_disabled: true }\n",
    );
    std::fs::write(t.policies_dir().join("contoso.yaml"), changed).unwrap();
    t.daemon.reload().await;
    assert_eq!(c.allow("bob@contoso.com", "smtp").await["status"], -1);
}

#[tokio::test]
async fn configured_texts_and_unix_socket_and_status() {
    let t = TestDaemon::start(
        &[("contoso.yaml", CONTOSO)],
        "auth_policy: [\"inet:127.0.0.1:0\", \"unix:{dir}/auth-policy.sock\"]\n\
replies: { auth_mailbox_disabled: \"SMTP AUTH is off for this mailbox\" }\n",
    )
    .await;
    let listeners = &t.daemon.control_handles().listeners.auth_policy;
    assert_eq!(listeners.len(), 2, "{listeners:?}");
    assert!(listeners[1].ends_with("/auth-policy.sock"), "{listeners:?}");
    let status = submitgate::control::status(t.daemon.control_handles()).await;
    assert_eq!(status.listeners["auth_policy"].as_array().unwrap().len(), 2);

    let sock = tokio::net::UnixStream::connect(t.dir.path().join("auth-policy.sock"))
        .await
        .unwrap();
    let mut c = Client {
        stream: BufReader::new(sock),
    };
    let r = c
        .post(
            "/?command=allow",
            &allow_body("blocked@contoso.com", "smtp"),
            "",
        )
        .await;
    assert_eq!(
        r.json(),
        serde_json::json!({"status": -1, "msg": "SMTP AUTH is off for this mailbox"})
    );
}

#[tokio::test]
async fn shutdown_with_open_keep_alive_connections() {
    let (t, mut c) = start("").await;
    assert_eq!(c.allow("bob@contoso.com", "smtp").await["status"], 0);
    // An idle keep-alive connection must not hold up shutdown.
    tokio::time::timeout(Duration::from_secs(8), t.daemon.shutdown())
        .await
        .expect("shutdown within 8 s");
    assert!(c.closed().await);
}

#[tokio::test]
async fn check_reads_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    std::fs::write(pdir.join("contoso.yaml"), CONTOSO).unwrap();
    let config = dir.path().join("submitgate.yaml");
    std::fs::write(
        &config,
        format!(
            "{AUTH_POLICY}policies: {}\nauth_policy_api_key_file: {}\n",
            pdir.display(),
            dir.path().join("api.key").display()
        ),
    )
    .unwrap();
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_submitgate"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("api.key"), "{stdout}");
    std::fs::write(dir.path().join("api.key"), "secret-key\n").unwrap();
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("secret-key"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_set_changes_the_auth_answer_without_reload() {
    let (t, mut c) = start("").await;
    assert_eq!(c.allow("bob@contoso.com", "smtp").await["status"], 0);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args([
            "mailbox",
            "set",
            "bob@contoso.com",
            "--smtp-client-authentication-disabled",
            "true",
            "--config",
        ])
        .arg(t.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon watches the policy directory (debounced): no SIGHUP, no restart.
    let deadline = support::Deadline::new(Duration::from_secs(5), "the refusal after the edit");
    loop {
        let answer = c.allow("bob@contoso.com", "smtp").await;
        if answer["status"] == -1 {
            assert_eq!(answer["msg"], MAILBOX_MSG);
            break;
        }
        deadline.tick().await;
    }
}

#[tokio::test]
async fn allow_refuses_invalid_logins_and_the_report_audits_them() {
    let (t, mut c) = start("default_domain: contoso.com\n").await;
    const INVALID: &str = "Authentication unsuccessful, the login is not a valid mailbox address";
    let long = format!("{}@contoso.com", "a".repeat(400));
    // A whitespace-only login used to become "@contoso.com" and be allowed.
    for bad in [
        "  ",
        "@contoso.com",
        "bob\n@contoso.com",
        "\u{1b}[2Jbob@contoso.com",
        "moc.\u{202e}bob@contoso.com",
        long.as_str(),
    ] {
        let body = serde_json::json!({
            "device_id": "", "login": bad, "protocol": "smtp", "pwhash": "08fd",
            "remote": "127.0.0.1", "session_id": "", "tls": false,
        });
        let r = c.post("/?command=allow", &body.to_string(), "").await;
        assert_eq!(r.status, 200, "{bad:?}: {r:?}");
        assert_eq!(
            r.json(),
            serde_json::json!({"status": -1, "msg": INVALID}),
            "{bad:?}"
        );
    }
    assert_eq!(
        c.allow("bob@contoso.com", "smtp").await,
        serde_json::json!({"status": 0})
    );
    // Dovecot's report of the refusal is audited with the typed reason and the escaped login.
    let body = serde_json::json!({
        "device_id": "", "login": "bob\n@contoso.com", "protocol": "smtp", "pwhash": "08fd",
        "remote": "192.0.2.7", "session_id": "", "success": false, "policy_reject": true,
        "tls": false,
    });
    let r = c.post("/?command=report", &body.to_string(), "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let audit = t.audit().await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["event"], "auth_refused_by_policy");
    assert_eq!(audit[0]["reason"], "invalid_login");
    assert_eq!(audit[0]["reply"], INVALID);
    assert_eq!(audit[0]["mailbox"], "bob\\n@contoso.com");
}
