//! `submitgate report --format html` opened in a real headless Chromium, driven through
//! chromedriver's WebDriver HTTP API: the page renders from a `file://` URL with no server,
//! each chart has the bars a known audit log calls for, the table sorts on a click, and the
//! browser logged no error (a script error, a blocked load). Also: the defaults (`--config`'s
//! audit log and its rotated, gzipped siblings).
//!
//! `SUBMITGATE_REPORT_SCREENSHOT=path.png` also saves the page's screenshot there (how
//! docs/report-html.png was made).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_submitgate");

/// One `submission_completed` line.
fn message(ts: &str, mailbox: &str, tls: Option<&str>) -> String {
    let mut ev = json!({"ts": ts, "event": "submission_completed", "mailbox": mailbox,
        "front_end": "milter", "sasl_method": "PLAIN"});
    if let Some(tls) = tls {
        ev["tls"] = json!(tls);
    }
    ev.to_string()
}

/// A known week: five days asked for (2026-11-23 … 27), messages on four of them (none on
/// the 25th), six senders over three domains, one refused sender without messages.
fn known_log() -> (String, Expected) {
    let mut lines = Vec::new();
    let plan: &[(&str, &str, Option<&str>, usize)] = &[
        (
            "2026-11-23T08:00:00Z",
            "alice@contoso.com",
            Some("TLSv1.3"),
            3,
        ),
        ("2026-11-23T09:00:00Z", "erp@fabrikam.com", Some("TLSv1"), 2),
        (
            "2026-11-24T10:00:00Z",
            "bob@contoso.com",
            Some("TLSv1.2"),
            4,
        ),
        ("2026-11-24T11:00:00Z", "app@northwind.example", None, 1),
        (
            "2026-11-26T12:00:00Z",
            "alice@contoso.com",
            Some("TLSv1.2"),
            2,
        ),
        (
            "2026-11-26T13:00:00Z",
            "scanner@fabrikam.com",
            Some("TLSv1.1"),
            5,
        ),
        (
            "2026-11-27T14:00:00Z",
            "printer@contoso.com",
            Some("TLSv1.3"),
            6,
        ),
        // Outside the range: not counted, no bar.
        (
            "2026-11-29T14:00:00Z",
            "late@contoso.com",
            Some("TLSv1.3"),
            9,
        ),
    ];
    for (ts, mailbox, tls, n) in plan {
        for _ in 0..*n {
            lines.push(message(ts, mailbox, *tls));
        }
    }
    lines.push(
        json!({"ts": "2026-11-25T10:00:00Z", "event": "submission_decision",
            "mailbox": "blocked@contoso.com", "decision": "reject", "reason": "mailbox_disabled"})
        .to_string(),
    );
    let expected = Expected {
        days: vec![
            ("2026-11-23", 2),
            ("2026-11-24", 2),
            ("2026-11-25", 0),
            ("2026-11-26", 2),
            ("2026-11-27", 1),
        ],
        senders: vec![
            ("printer@contoso.com", 6),
            ("alice@contoso.com", 5),
            ("scanner@fabrikam.com", 5),
            ("bob@contoso.com", 4),
            ("erp@fabrikam.com", 2),
            ("app@northwind.example", 1),
        ],
        domains: vec![
            ("contoso.com", 15),
            ("fabrikam.com", 7),
            ("northwind.example", 1),
        ],
        // Senders per protocol: alice used 1.3 and 1.2.
        tls: vec![
            ("TLS 1.0", 1),
            ("TLS 1.1", 1),
            ("TLS 1.2", 2),
            ("TLS 1.3", 2),
            ("No TLS/unknown", 1),
        ],
        table_rows: 7,
    };
    (lines.join("\n") + "\n", expected)
}

struct Expected {
    /// Day → stacked segments (domains with messages that day).
    days: Vec<(&'static str, usize)>,
    senders: Vec<(&'static str, u64)>,
    domains: Vec<(&'static str, u64)>,
    tls: Vec<(&'static str, u64)>,
    table_rows: usize,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A WebDriver session in headless Chromium.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
        };
        support::wait_for_sync(Duration::from_secs(20), "chromedriver to answer", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && b.call("GET", "/status", None)["value"]["ready"] == json!(true)
        });
        // The flags this machine needs (no network but loopback: no background fetches).
        let args = json!([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            format!("--user-data-dir={}", profile.display()),
        ]);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium(), "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b.call("POST", "/session", Some(&caps));
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    /// One WebDriver call; the JSON answer.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // Read the head, then exactly Content-Length bytes (chromedriver may keep the
        // connection open whatever the request says).
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        let (head, body_start) = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "chromedriver closed before answering {method} {path}"
            );
            raw.extend_from_slice(&buf[..n]);
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break (String::from_utf8_lossy(&raw[..i]).to_string(), i + 4);
            }
        };
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or_else(|| panic!("no Content-Length: {head}"));
        while raw.len() < body_start + length {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "chromedriver closed mid-answer");
            raw.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8_lossy(&raw[body_start..body_start + length]).to_string();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {head}\n{body}"))
    }

    fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let v = self.call(method, &format!("/session/{}{path}", self.session), body);
        assert!(
            v["value"].get("error").is_none(),
            "{method} {path}: {}",
            v["value"]
        );
        v["value"].clone()
    }

    fn script(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn chromium() -> String {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|p| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(p))
                    .find(|f| f.is_file())
            })
        })
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "chromium".into())
}

fn report(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("report").args(args).output().unwrap()
}

/// Bars of one chart: (data-label, data-value) in drawing order.
fn bars(b: &Browser, id: &str) -> Vec<(String, u64)> {
    let v = b.script(&format!(
        "return Array.from(document.querySelectorAll('#{id} rect.bar')).map(r => \
         [r.getAttribute('data-label'), Number(r.getAttribute('data-value'))]);"
    ));
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap()))
        .collect()
}

fn owned(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(a, b)| (a.to_string(), *b)).collect()
}

#[test]
fn html_report_renders_in_chromium_with_its_charts_and_a_sortable_table() {
    let Some(_) = support::require("chromium") else {
        return;
    };
    let Some(_) = support::require("chromedriver") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (log, expected) = known_log();
    let audit = dir.path().join("audit.log");
    std::fs::write(&audit, log).unwrap();
    let out = report(&[
        "--audit",
        audit.to_str().unwrap(),
        "--since",
        "2026-11-23",
        "--until",
        "2026-11-27",
        "--format",
        "html",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = String::from_utf8(out.stdout).unwrap();
    // Self-contained: nothing to fetch, and the policy forbids any fetch.
    for needle in ["http://", "https://", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(needle), "{needle} in the page");
    }
    assert!(html.contains("Content-Security-Policy"));
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();

    let browser = Browser::start(&dir.path().join("profile"));
    browser.session_call(
        "POST",
        "/url",
        Some(&json!({"url": format!("file://{}", page.display())})),
    );
    assert_eq!(
        browser.script("return document.title;"),
        json!("SMTP AUTH clients report")
    );
    // The script ran to its end.
    assert_eq!(
        browser.script("return document.getElementById('senders').getAttribute('data-sortable');"),
        json!("ready")
    );
    // The charts render with a real size.
    let sizes = browser.script(
        "return Array.from(document.querySelectorAll('figure.chart svg')).map(s => \
         [s.getBoundingClientRect().width, s.getBoundingClientRect().height]);",
    );
    assert_eq!(sizes.as_array().unwrap().len(), 4, "{sizes}");
    for s in sizes.as_array().unwrap() {
        assert!(
            s[0].as_f64().unwrap() > 200.0 && s[1].as_f64().unwrap() > 50.0,
            "{sizes}"
        );
    }

    // Volume: one group per day of the range, its segments the domains of that day.
    let days = browser.script(
        "return Array.from(document.querySelectorAll('#volume g.day')).map(g => \
         [g.getAttribute('data-day'), g.querySelectorAll('rect.bar').length]);",
    );
    let days: Vec<(String, usize)> = days
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d[0].as_str().unwrap().to_string(),
                d[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let want: Vec<(String, usize)> = expected
        .days
        .iter()
        .map(|(d, n)| (d.to_string(), *n))
        .collect();
    assert_eq!(days, want);
    let volume_total: u64 = bars(&browser, "volume").iter().map(|b| b.1).sum();
    assert_eq!(volume_total, 23);
    assert_eq!(bars(&browser, "senders-chart"), owned(&expected.senders));
    assert_eq!(bars(&browser, "domains-chart"), owned(&expected.domains));
    assert_eq!(bars(&browser, "tls-chart"), owned(&expected.tls));

    // The table: one row per sender, sorted by messages; a click on "Sender address" sorts
    // A→Z, a second Z→A; the totals stay last.
    let first_column = "return Array.from(document.querySelectorAll('#senders tbody tr')).map(r \
                        => r.cells[0].textContent);";
    let rows = browser.script(first_column);
    assert_eq!(rows.as_array().unwrap().len(), expected.table_rows);
    assert_eq!(rows[0], json!("printer@contoso.com"));
    browser.script("document.querySelector('#senders thead th').click(); return null;");
    let sorted = browser.script(first_column);
    assert_eq!(sorted[0], json!("alice@contoso.com"));
    assert_eq!(sorted[6], json!("scanner@fabrikam.com"));
    browser.script("document.querySelector('#senders thead th').click(); return null;");
    assert_eq!(
        browser.script(first_column)[0],
        json!("scanner@fabrikam.com")
    );
    assert_eq!(
        browser.script("return document.querySelector('#senders tfoot td').textContent;"),
        json!("Total (7 senders)")
    );

    // No error in the browser's console (script errors, refused loads). A probe written to
    // the console first shows that the log is really read.
    browser.script("console.error('submitgate-probe'); return null;");
    let log = browser.session_call("POST", "/se/log", Some(&json!({"type": "browser"})));
    let entries = log.as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .contains("submitgate-probe")),
        "the console probe is not in the browser log: {log}"
    );
    let errors: Vec<&Value> = entries
        .iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        .filter(|e| {
            !e["message"]
                .as_str()
                .unwrap_or("")
                .contains("submitgate-probe")
        })
        .collect();
    assert!(errors.is_empty(), "browser console: {errors:#?}");

    if let Some(path) = std::env::var_os("SUBMITGATE_REPORT_SCREENSHOT") {
        let png = browser.session_call("GET", "/screenshot", None);
        let bytes = base64_decode(png.as_str().unwrap());
        std::fs::write(PathBuf::from(path), bytes).unwrap();
    }
}

/// Standard base64 (the screenshot), without a dependency for one test.
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(value) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn without_audit_the_configured_log_and_its_rotated_siblings_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let gz = |text: &str| {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let one = |who: &str| message("2026-11-27T09:00:00Z", who, Some("TLSv1.3")) + "\n";
    std::fs::write(&log, one("now@contoso.com")).unwrap();
    std::fs::write(dir.path().join("audit.log.1"), one("yesterday@contoso.com")).unwrap();
    std::fs::write(
        dir.path().join("audit.log.2.gz"),
        gz(&one("older@contoso.com")),
    )
    .unwrap();
    // After a gap: not a sibling logrotate would leave.
    std::fs::write(
        dir.path().join("audit.log.4.gz"),
        gz(&one("stray@contoso.com")),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let config = dir.path().join("sg.yaml");
    std::fs::write(
        &config,
        format!(
            "policy: [\"inet:127.0.0.1:1\"]\npolicies: {}\naudit: {{ path: {} }}\n",
            dir.path().join("policies").display(),
            log.display()
        ),
    )
    .unwrap();
    let out = report(&["--config", config.to_str().unwrap(), "--format", "csv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    for who in ["now@", "yesterday@", "older@"] {
        assert!(csv.contains(who), "{who} missing:\n{csv}");
    }
    assert!(!csv.contains("stray@"), "{csv}");

    // A configuration that logs to stdout has no file to read.
    std::fs::write(
        &config,
        format!(
            "policy: [\"inet:127.0.0.1:1\"]\npolicies: {}\naudit: {{ path: \"-\" }}\n",
            dir.path().join("policies").display()
        ),
    )
    .unwrap();
    let out = report(&["--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--audit"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No configuration where it is looked for: the error says so.
    let out = report(&["--config", dir.path().join("nope.yaml").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope.yaml"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
