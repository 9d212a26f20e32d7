//! Alerts from a real daemon to a real local HTTP receiver and a real command (`/bin/sh`):
//! a failed reload reaches both and is audited; the same alert again is rate-limited; the
//! sending limits' hook (`sender_restricted`) raised while the receiver answers 500 and the
//! command exits 3 is audited as failed; a receiver that never answers costs the timeout, a
//! burst overflows the queue (dropped and counted), and decisions go on meanwhile.
//!
//! One test: the alerter is installed process-wide, so two daemons with alerts in one test
//! process would share it.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use submitgate::alerts::{self, AlertEvent};
use support::daemon::{TestDaemon, Txn, CONTOSO};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// A local webhook receiver: keeps every request body, answers 200, 500 or never.
struct Receiver {
    port: u16,
    mode: Arc<AtomicU8>,
    bodies: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(OK));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (m, b) = (mode.clone(), bodies.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (m, b) = (m.clone(), b.clone());
                tokio::spawn(async move {
                    let mut raw = Vec::new();
                    let mut buf = [0u8; 4096];
                    let (head, start) = loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        raw.extend_from_slice(&buf[..n]);
                        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                            break (String::from_utf8_lossy(&raw[..i]).to_string(), i + 4);
                        }
                    };
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while raw.len() < start + length {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        raw.extend_from_slice(&buf[..n]);
                    }
                    let body: Value = serde_json::from_slice(&raw[start..start + length]).unwrap();
                    b.lock().unwrap().push((head.clone(), body));
                    let answer = match m.load(Ordering::SeqCst) {
                        OK => "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                        FAIL => "HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops",
                        _ => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                    };
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        Receiver { port, mode, bodies }
    }

    fn bodies(&self) -> Vec<(String, Value)> {
        self.bodies.lock().unwrap().clone()
    }
}

/// What the command wrote: one JSON file per alert it was run for.
fn command_outputs(dir: &Path) -> Vec<Value> {
    let mut out: Vec<(std::time::SystemTime, Value)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((
                e.metadata().ok()?.modified().ok()?,
                serde_json::from_str(&text).ok()?,
            ))
        })
        .collect();
    out.sort_by_key(|(t, _)| *t);
    out.into_iter().map(|(_, v)| v).collect()
}

fn alert_events(audit: &[Value]) -> Vec<&Value> {
    audit
        .iter()
        .filter(|e| e["event"] == "alert_sent" || e["event"] == "alert_failed")
        .collect()
}

fn metric(name: &str) -> f64 {
    let text = submitgate::metrics::global().render(Default::default());
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_webhook_and_a_command_rate_limited_audited_never_blocking() {
    let Some(sh) = support::require("sh") else {
        return;
    };
    let receiver = Receiver::start().await;
    let out_dir = tempfile::tempdir().unwrap();
    let script = format!(
        "f=$(mktemp -p {}); cat > \"$f\"; if grep -q sender_restricted \"$f\"; then echo refused >&2; exit 3; fi",
        out_dir.path().display()
    );
    let config = format!(
        "alerts:\n  webhook: \"http://127.0.0.1:{}/hooks/submitgate?x=1\"\n  command: [{}, \"-c\", {}]\n  min_interval: 1h\n  timeout: 500ms\n  queue: 1\n",
        receiver.port,
        serde_json::to_string(&sh.display().to_string()).unwrap(),
        serde_json::to_string(&script).unwrap(),
    );
    let t = TestDaemon::start(&[("contoso.yaml", CONTOSO)], &config).await;

    // 1. A failed reload: both targets get the event; both deliveries are audited.
    std::fs::write(t.policies_dir().join("broken.yaml"), "organization: [\n").unwrap();
    let version = t.daemon.context().policy.load().version.clone();
    assert!(matches!(
        t.daemon.reload().await,
        submitgate::policy::reload::ReloadOutcome::Failed(_)
    ));
    support::wait_for(Duration::from_secs(10), "two alert_sent events", || async {
        alert_events(&t.audit().await).len() == 2
    })
    .await;
    let audit = t.audit().await;
    let events = alert_events(&audit);
    let mut targets: Vec<&str> = events
        .iter()
        .map(|e| {
            assert_eq!(e["event"], "alert_sent", "{e}");
            assert_eq!(e["alert"], "policy_reload_failed", "{e}");
            e["message"].as_str().unwrap().split(':').next().unwrap()
        })
        .collect();
    targets.sort();
    assert_eq!(targets, ["command", "webhook"]);
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 1);
    let (head, body) = &bodies[0];
    assert!(
        head.starts_with("POST /hooks/submitgate?x=1 HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    assert_eq!(body["alert"], "policy_reload_failed");
    assert_eq!(body["title"], "Policy reload failed");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("policy {version} stays in force")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("broken.yaml:"),
        "{body}"
    );
    let written = command_outputs(out_dir.path());
    assert_eq!(written, vec![body.clone()], "the command got the same JSON");

    // 2. The same failure again within min_interval: rate-limited, nothing sent.
    let limited =
        metric("submitgate_alerts_total{kind=\"policy_reload_failed\",result=\"rate_limited\"}");
    t.daemon.reload().await;
    support::wait_for(
        Duration::from_secs(10),
        "the second alert to be rate-limited",
        || async {
            metric("submitgate_alerts_total{kind=\"policy_reload_failed\",result=\"rate_limited\"}")
                == limited + 1.0
        },
    )
    .await;
    assert_eq!(receiver.bodies().len(), 1);
    assert_eq!(alert_events(&t.audit().await).len(), 2);

    // 3. The sending limits' hook, while the receiver answers 500 and the command exits 3.
    receiver.mode.store(FAIL, Ordering::SeqCst);
    alerts::raise(AlertEvent::sender_restricted(
        "alice@contoso.com",
        Some("contoso"),
        "over 10000 recipients in 24 h",
    ));
    support::wait_for(
        Duration::from_secs(10),
        "two alert_failed events",
        || async { alert_events(&t.audit().await).len() == 4 },
    )
    .await;
    let audit = t.audit().await;
    let failed: Vec<&Value> = alert_events(&audit)
        .into_iter()
        .filter(|e| e["event"] == "alert_failed")
        .collect();
    assert_eq!(failed.len(), 2);
    for e in &failed {
        assert_eq!(e["alert"], "sender_restricted");
        assert_eq!(e["mailbox"], "alice@contoso.com");
        assert_eq!(e["organization"], "contoso");
    }
    let messages: Vec<&str> = failed
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.iter().any(|m| m.starts_with("webhook: HTTP 500")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("command: ")
            && m.contains("exit status: 3")
            && m.ends_with("refused")),
        "{messages:?}"
    );
    let body = &receiver.bodies()[1].1;
    assert_eq!(body["title"], "User restricted from sending email");
    assert_eq!(body["severity"], "high");

    // 4. A receiver that never answers: raising stays instant, a burst overflows the queue
    //    (one in flight, one queued, the rest dropped), decisions are answered meanwhile, and
    //    the hung call is abandoned after the timeout.
    receiver.mode.store(HANG, Ordering::SeqCst);
    let dropped = metric("submitgate_alerts_total{kind=\"sender_restricted\",result=\"dropped\"}");
    let started = Instant::now();
    for i in 0..6 {
        alerts::raise(AlertEvent::sender_restricted(
            &format!("user{i}@contoso.com"),
            None,
            "burst",
        ));
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    let now_dropped =
        metric("submitgate_alerts_total{kind=\"sender_restricted\",result=\"dropped\"}") - dropped;
    assert!((4.0..=5.0).contains(&now_dropped), "{now_dropped} dropped");
    let mut c = t.client().await;
    let asked = Instant::now();
    let txn = Txn {
        login: "carol@contoso.com",
        client_port: 40000,
        instance: "a",
    };
    assert_eq!(c.ask(&txn, "RCPT").await, "DUNNO");
    assert!(
        asked.elapsed() < Duration::from_millis(400),
        "{:?}",
        asked.elapsed()
    );
    support::wait_for(
        Duration::from_secs(10),
        "the hung webhook to time out",
        || async {
            t.audit().await.iter().any(|e| {
                e["event"] == "alert_failed"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("webhook: no answer within 500ms"))
            })
        },
    )
    .await;
    t.daemon.shutdown().await;
}
