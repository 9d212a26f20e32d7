//! `GET /metrics` of the real daemon (the `submitgate serve` binary, alone in its process so
//! that its counters hold this test's traffic only) under load: policy transactions from
//! several connections, whole milter sessions whose copies are delivered into a Maildir, auth
//! policy checks and a failed reload; scrapes while the load runs, then the exposition is
//! parsed and its counts compared with the audit log and with what was sent.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::daemon::{MilterClient, PolicyClient, Txn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONTOSO: &str = "\
organization: contoso
domains: [contoso.com]
max_concurrent_sessions_per_mailbox: 3
mailboxes:
  blocked@contoso.com: { smtp_client_authentication_disabled: true }
";
const FABRIKAM: &str = "\
organization: fabrikam
domains: [fabrikam.com]
smtp_client_authentication_disabled: true
";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Ports {
    policy: u16,
    milter: u16,
    auth_policy: u16,
    metrics: u16,
}

struct Running {
    child: Child,
    ports: Ports,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_daemon(dir: &Path) -> Running {
    let pdir = dir.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("contoso.yaml"), CONTOSO).unwrap();
    std::fs::write(pdir.join("fabrikam.yaml"), FABRIKAM).unwrap();
    let ports = Ports {
        policy: free_port(),
        milter: free_port(),
        auth_policy: free_port(),
        metrics: free_port(),
    };
    let d = dir.display();
    let config = format!(
        "policy: [\"inet:127.0.0.1:{}\"]\nmilter: [\"inet:127.0.0.1:{}\"]\n\
         auth_policy: [\"inet:127.0.0.1:{}\"]\nmetrics: [\"inet:127.0.0.1:{}\"]\n\
         policies: {d}/policies\nwatch_policies: false\naudit: {{ path: {d}/audit.log }}\n\
         sent_items:\n  spool: {d}/spool\n  store: {{ backend: maildir, root: \"{d}/mail/{{domain}}/{{local}}/Maildir\" }}\n",
        ports.policy, ports.milter, ports.auth_policy, ports.metrics
    );
    std::fs::write(dir.join("sg.yaml"), config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args(["serve", "--config"])
        .arg(dir.join("sg.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running { child, ports };
    let metrics = running.ports.metrics;
    support::wait_for_sync(Duration::from_secs(20), "the daemon to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", metrics)).is_ok()
    });
    running
}

/// One HTTP/1.1 request (`Connection: close`): status code and body.
async fn http(port: u16, method: &str, target: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    if target == "/metrics" && status == 200 {
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
    }
    (status, body.to_string())
}

/// The samples of an exposition: `name{labels}` → value. Fails on a line that is neither a
/// comment nor a sample, and on a HELP/TYPE line that does not name a metric.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap();
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            assert!(words.next().is_some_and(|n| !n.is_empty()), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "twice: {line}"
        );
    }
    samples
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn txn(login: &str, client_port: u16, instance: &str) -> String {
    Txn {
        login,
        client_port,
        instance,
    }
    .request("RCPT")
}

fn allow_body(login: &str) -> String {
    format!(
        r#"{{"device_id":"","login":"{login}","protocol":"smtp","pwhash":"08fd","remote":"127.0.0.1","session_id":"","tls":false}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scraped_under_load_match_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = spawn_daemon(dir.path());
    let ports = &d.ports;

    // Not the metrics path, not GET.
    assert_eq!(http(ports.metrics, "GET", "/", "").await.0, 404);
    assert_eq!(http(ports.metrics, "POST", "/metrics", "").await.0, 405);

    // Three milter sessions of one mailbox hold its three leases to the end: at its limit.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut m = MilterClient::connect(ports.milter).await;
        m.open().await;
        let r = m.mail(Some("held@contoso.com")).await;
        assert!(
            matches!(r, submitgate::milter::codec::Reply::Continue),
            "{r:?}"
        );
        let r = m
            .message(
                &format!("HELD{i}"),
                &["x@example.net"],
                &[
                    ("Subject", " held"),
                    ("Message-ID", &format!(" <held{i}@test>")),
                ],
                &[b"hello\r\n"],
            )
            .await;
        assert!(
            matches!(r, submitgate::milter::codec::Reply::Continue),
            "{r:?}"
        );
        m.abort().await;
        held.push(m);
    }

    // The load: 6 policy connections, 40 transactions each over 6 logins (allowed ones,
    // one disabled mailbox, a disabled tenant, an unknown domain, the mailbox at its limit), and milter sessions with a copy each; scraping all the while.
    let logins = [
        "a@contoso.com",
        "b@contoso.com",
        "blocked@contoso.com",
        "x@fabrikam.com",
        "y@nowhere.example",
        "held@contoso.com",
    ];
    let mut tasks = Vec::new();
    for c in 0..6u16 {
        let port = ports.policy;
        tasks.push(tokio::spawn(async move {
            let mut client = PolicyClient::connect(port).await;
            for n in 0..40u16 {
                let login = logins[usize::from(n + c) % logins.len()];
                let instance = format!("{c}.{n}");
                let client_port = 20000 + c * 100 + n;
                let reply = client
                    .raw(txn(login, client_port, &instance).as_bytes())
                    .await;
                assert!(reply.is_some(), "policy connection closed");
                let eom = Txn {
                    login,
                    client_port,
                    instance: &instance,
                }
                .request("END-OF-MESSAGE");
                assert!(client.raw(eom.as_bytes()).await.is_some());
            }
        }));
    }
    let milter_port = ports.milter;
    tasks.push(tokio::spawn(async move {
        for i in 0..10 {
            let mut m = MilterClient::connect(milter_port).await;
            m.open().await;
            m.mail(Some("sender@contoso.com")).await;
            m.message(
                &format!("Q{i}"),
                &["r@example.net"],
                &[
                    ("Subject", " load"),
                    ("Message-ID", &format!(" <m{i}@test>")),
                ],
                &[b"body\r\n"],
            )
            .await;
            m.abort().await;
            m.quit().await;
        }
    }));
    let auth_port = ports.auth_policy;
    tasks.push(tokio::spawn(async move {
        for login in ["a@contoso.com", "a@contoso.com", "a@contoso.com"]
            .into_iter()
            .chain(["blocked@contoso.com", "blocked@contoso.com"])
        {
            let (status, _) = http(auth_port, "POST", "/?command=allow", &allow_body(login)).await;
            assert_eq!(status, 200);
        }
    }));
    let mut scrapes = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        let (status, body) = http(ports.metrics, "GET", "/metrics", "").await;
        assert_eq!(status, 200);
        parse(&body);
        scrapes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(scrapes >= 2, "only {scrapes} scrape(s) during the load");

    // A broken policy file: the reload fails (SIGHUP) and the old policy stays.
    std::fs::write(dir.path().join("policies/broken.yaml"), "organization: [\n").unwrap();
    let pid = d.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());

    // Wait until the copies are stored, the reload is audited and the policy connections
    // are gone.
    let audit_path = dir.path().join("audit.log");
    let deadline = support::Deadline::new(
        Duration::from_secs(20),
        "copies stored, the reload audited, policy connections closed",
    );
    let samples = loop {
        let audit = support::read_audit(&audit_path);
        let stored = audit
            .iter()
            .filter(|e| e["event"] == "sent_copy_stored")
            .count();
        let failed_reload = audit.iter().any(|e| e["event"] == "policy_reload_failed");
        let (_, body) = http(ports.metrics, "GET", "/metrics", "").await;
        let samples = parse(&body);
        if stored == 13
            && failed_reload
            && value(&samples, "submitgate_connections{front_end=\"policy\"}") == 0.0
            && value(
                &samples,
                "submitgate_sent_items_spool_entries{state=\"pending\"}",
            ) == 0.0
        {
            break samples;
        }
        deadline.tick().await;
    };
    let audit = support::read_audit(&audit_path);

    // Every audited decision is counted once, under its front end, decision and reason.
    let mut audited: BTreeMap<String, f64> = BTreeMap::new();
    for e in audit.iter().filter(|e| e["event"] == "submission_decision") {
        let series = format!(
            "submitgate_decisions_total{{front_end=\"{}\",decision=\"{}\",reason=\"{}\"}}",
            e["front_end"].as_str().unwrap(),
            e["decision"].as_str().unwrap(),
            e["reason"].as_str().unwrap_or("none"),
        );
        *audited.entry(series).or_default() += 1.0;
    }
    let counted: BTreeMap<String, f64> = samples
        .iter()
        .filter(|(k, v)| {
            k.starts_with("submitgate_decisions_total{") && !k.contains("auth_policy") && **v > 0.0
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(counted, audited);
    for reason in [
        "mailbox_disabled",
        "org_disabled",
        "unknown_organization",
        "concurrency_limit",
    ] {
        assert!(
            counted.keys().any(|k| k.contains(reason)),
            "no {reason} in {counted:#?}"
        );
    }
    // Checks at AUTH are not audited (Dovecot's report is): counted as sent.
    assert_eq!(
        value(
            &samples,
            "submitgate_decisions_total{front_end=\"auth_policy\",decision=\"allow\",reason=\"none\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "submitgate_decisions_total{front_end=\"auth_policy\",decision=\"reject\",reason=\"mailbox_disabled\"}"
        ),
        2.0
    );

    // Durations: one per admission step, whole histograms.
    for (front_end, at_least) in [
        ("policy", audited_for(&audited, "policy")),
        ("milter", audited_for(&audited, "milter")),
        ("auth_policy", 5.0),
    ] {
        let count = value(
            &samples,
            &format!("submitgate_decision_duration_seconds_count{{front_end=\"{front_end}\"}}"),
        );
        let inf = value(
            &samples,
            &format!(
                "submitgate_decision_duration_seconds_bucket{{front_end=\"{front_end}\",le=\"+Inf\"}}"
            ),
        );
        assert!(
            count >= at_least && count > 0.0,
            "{front_end}: {count} < {at_least}"
        );
        assert_eq!(count, inf, "{front_end}");
    }

    // Sent Items: 13 copies stored into the Maildir, each with its lag.
    let stored = audit
        .iter()
        .filter(|e| e["event"] == "sent_copy_stored")
        .count() as f64;
    assert_eq!(stored, 13.0);
    assert_eq!(
        value(
            &samples,
            "submitgate_sent_items_deliveries_total{store=\"maildir\",result=\"stored\"}"
        ),
        stored
    );
    assert_eq!(
        value(&samples, "submitgate_sent_items_delivery_lag_seconds_count"),
        stored
    );
    assert_eq!(
        value(
            &samples,
            "submitgate_sent_items_spool_entries{state=\"failed\"}"
        ),
        0.0
    );

    // Live state: the three held sessions, one mailbox at its limit, three milter connections.
    assert_eq!(value(&samples, "submitgate_sessions_in_use"), 3.0);
    assert_eq!(value(&samples, "submitgate_mailboxes_at_limit"), 1.0);
    assert_eq!(
        value(&samples, "submitgate_connections{front_end=\"milter\"}"),
        3.0
    );
    assert!(samples.contains_key("submitgate_connections{front_end=\"auth_policy\"}"));
    // The reload failed; the version in force is the one loaded at start.
    assert_eq!(
        value(
            &samples,
            "submitgate_policy_reloads_total{result=\"failed\"}"
        ),
        1.0
    );
    let versions: Vec<&String> = samples
        .keys()
        .filter(|k| k.starts_with("submitgate_policy_version_info{"))
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    let version = audit
        .iter()
        .find(|e| e["event"] == "policy_reload_failed")
        .and_then(|e| e["version"].as_str())
        .unwrap();
    assert_eq!(
        versions[0],
        &format!("submitgate_policy_version_info{{version=\"{version}\"}}")
    );
    // The process.
    assert!(value(&samples, "process_resident_memory_bytes") > 1e6);
    assert!(value(&samples, "process_open_fds") >= 5.0);
    assert!(value(&samples, "process_cpu_seconds_total") > 0.0);
    assert!(value(&samples, "process_start_time_seconds") > 1.6e9);
    // No label names a mailbox.
    for k in samples.keys() {
        assert!(!k.contains("@"), "a mailbox in a label: {k}");
    }
    drop(held);
}

fn audited_for(audited: &BTreeMap<String, f64>, front_end: &str) -> f64 {
    audited
        .iter()
        .filter(|(k, _)| k.contains(&format!("front_end=\"{front_end}\"")))
        .map(|(_, v)| v)
        .sum()
}
