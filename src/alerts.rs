//! Alerts, as Exchange sends them ("User restricted from sending email" and the like): an
//! [`AlertEvent`] raised by the module that sees the problem is posted as JSON to a webhook
//! and/or given on standard input to a configured command (the `alerts:` section), rate-limited
//! per kind and subject, and audited (`alert_sent` / `alert_failed`).
//!
//! [`raise`] never blocks and never fails: it puts the event on a bounded queue and returns;
//! a full queue drops the event and counts it (`submitgate_alerts_total{result="dropped"}`).
//! One task per daemon delivers them, each target under a timeout, so that a slow webhook or a
//! hanging command never holds a decision. Without an `alerts:` section (or outside the
//! daemon: the CLI, unit tests) [`raise`] does nothing.
//!
//! The daemon [`install`]s the alerter process-wide, so that a leaf (the policy reload, the
//! Sent Items worker, the Redis limiter) raises with one call and no handle passed down.
//! Kinds raised today: `policy_reload_failed`, `sent_copy_failed` (a copy given up for good),
//! `limiter_unavailable` (once per Redis outage). [`AlertEvent::sender_restricted`] is the
//! typed hook for the sending limits (a sender restricted after exceeding a limit): the
//! admission step calls `alerts::raise(AlertEvent::sender_restricted(...))` when it restricts
//! one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, AuditEvent, EventKind};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A reload found errors; the old policy stays in force.
    PolicyReloadFailed,
    /// A Sent Items copy was given up for good (moved to `failed/`).
    SentCopyFailed,
    /// The limiter's Redis cannot be reached (raised once per outage).
    LimiterUnavailable,
    /// A sender was restricted from sending (Exchange's "User restricted from sending
    /// email"), raised by the sending limits.
    SenderRestricted,
}

impl AlertKind {
    /// Every kind (the default of `alerts.kinds`).
    pub const ALL: [AlertKind; 4] = [
        AlertKind::PolicyReloadFailed,
        AlertKind::SentCopyFailed,
        AlertKind::LimiterUnavailable,
        AlertKind::SenderRestricted,
    ];

    /// The name in the configuration, the JSON and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::PolicyReloadFailed => "policy_reload_failed",
            AlertKind::SentCopyFailed => "sent_copy_failed",
            AlertKind::LimiterUnavailable => "limiter_unavailable",
            AlertKind::SenderRestricted => "sender_restricted",
        }
    }

    /// Exchange-style title.
    pub fn title(self) -> &'static str {
        match self {
            AlertKind::PolicyReloadFailed => "Policy reload failed",
            AlertKind::SentCopyFailed => "Sent Items copy failed",
            AlertKind::LimiterUnavailable => "Session limiter unavailable",
            AlertKind::SenderRestricted => "User restricted from sending email",
        }
    }

    /// How urgent, as Exchange's alert policies grade them.
    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::PolicyReloadFailed | AlertKind::LimiterUnavailable => "medium",
            AlertKind::SentCopyFailed => "low",
            AlertKind::SenderRestricted => "high",
        }
    }
}

impl std::str::FromStr for AlertKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AlertKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown alert kind {s:?} (known: {})", names.join(", "))
            })
    }
}

/// One alert: what the webhook receives as its JSON body and the command on standard input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertEvent {
    /// The kind (`sender_restricted`…).
    pub alert: AlertKind,
    /// Exchange-style title ("User restricted from sending email").
    pub title: &'static str,
    /// `low`, `medium`, `high`.
    pub severity: &'static str,
    /// When it was raised, RFC 3339 UTC.
    pub ts: String,
    /// The host that raised it.
    pub host: String,
    /// The mailbox concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    /// Its organization, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// What happened, for a person.
    pub message: String,
}

impl AlertEvent {
    /// An event of `kind` raised now.
    pub fn new(kind: AlertKind, message: impl Into<String>) -> AlertEvent {
        AlertEvent {
            alert: kind,
            title: kind.title(),
            severity: kind.severity(),
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            host: crate::fsutil::hostname(),
            mailbox: None,
            organization: None,
            message: message.into(),
        }
    }

    /// A reload refused: `errors` as `file:line:column: kind` (no text from the files).
    pub fn policy_reload_failed(version_in_force: &str, errors: &[String]) -> AlertEvent {
        let shown: Vec<&str> = errors.iter().take(5).map(String::as_str).collect();
        AlertEvent::new(
            AlertKind::PolicyReloadFailed,
            format!(
                "{} error(s); policy {version_in_force} stays in force: {}{}",
                errors.len(),
                shown.join("; "),
                if errors.len() > shown.len() {
                    "; …"
                } else {
                    ""
                }
            ),
        )
    }

    /// A Sent Items copy given up for good (`reason`: `permanent`, `max_age`…).
    pub fn sent_copy_failed(
        mailbox: Option<&str>,
        organization: Option<&str>,
        reason: &str,
        detail: &str,
    ) -> AlertEvent {
        let mut ev = AlertEvent::new(
            AlertKind::SentCopyFailed,
            format!("a Sent Items copy was given up ({reason}): {detail}"),
        );
        ev.mailbox = mailbox.map(str::to_string);
        ev.organization = organization.map(str::to_string);
        ev
    }

    /// The limiter's backend cannot be reached.
    pub fn limiter_unavailable(detail: &str) -> AlertEvent {
        AlertEvent::new(AlertKind::LimiterUnavailable, detail)
    }

    /// **The hook for the sending limits**: `mailbox` was restricted from sending (`why`: the
    /// limit it exceeded, e.g. "10000 recipients in 24h"); Exchange's "User restricted from
    /// sending email" alert. Rate-limited per mailbox like every alert.
    pub fn sender_restricted(mailbox: &str, organization: Option<&str>, why: &str) -> AlertEvent {
        let mut ev = AlertEvent::new(
            AlertKind::SenderRestricted,
            format!("{mailbox} has been restricted from sending email: {why}"),
        );
        ev.mailbox = Some(mailbox.to_string());
        ev.organization = organization.map(str::to_string);
        ev
    }

    /// What the rate limit counts separately: the kind and the mailbox (if any).
    fn subject(&self) -> (AlertKind, String) {
        (self.alert, self.mailbox.clone().unwrap_or_default())
    }
}

/// The `alerts:` section, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `http://` or `https://` URL the event is POSTed to as JSON.
    pub webhook: Option<String>,
    /// A command (argv, no shell) run per event with the JSON on standard input.
    pub command: Option<Vec<String>>,
    /// The kinds sent (others are ignored).
    pub kinds: Vec<AlertKind>,
    /// The same kind about the same mailbox is sent at most once per this long.
    pub min_interval: Duration,
    /// A webhook call or command taking longer is abandoned (the command killed).
    pub timeout: Duration,
    /// Events waiting to be sent before new ones are dropped.
    pub queue: usize,
}

/// Defaults of the section's keys.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(300);
/// See [`Settings::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// See [`Settings::queue`].
pub const DEFAULT_QUEUE: usize = 256;
/// Longest standard error of a failing command kept for the audit line.
const MAX_STDERR: usize = 1024;
/// Longest webhook answer read (only its status matters).
const MAX_ANSWER: usize = 64 * 1024;

/// The sending side: cheap to clone; events go to the delivery task.
#[derive(Debug, Clone)]
pub struct Alerter {
    tx: mpsc::Sender<AlertEvent>,
    kinds: Arc<[AlertKind]>,
    id: u64,
}

impl Alerter {
    /// Queues `event` if its kind is configured; drops and counts it when the queue is full.
    pub fn raise(&self, event: AlertEvent) {
        if !self.kinds.contains(&event.alert) {
            return;
        }
        let kind = event.alert.as_str();
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::metrics::alert(kind, "dropped");
                tracing::warn!(alert = kind, "alert queue full: alert dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

static INSTALLED: RwLock<Option<Alerter>> = RwLock::new(None);
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Raises an alert through the installed alerter (none: nothing happens). Never blocks.
pub fn raise(event: AlertEvent) {
    let installed = INSTALLED.read().unwrap_or_else(|e| e.into_inner());
    if let Some(alerter) = installed.as_ref() {
        alerter.raise(event);
    }
}

/// Keeps an alerter installed process-wide; dropping it uninstalls it (unless another one
/// was installed since).
#[derive(Debug)]
pub struct Installed(u64);

/// Makes `alerter` the one [`raise`] uses.
pub fn install(alerter: Alerter) -> Installed {
    let id = alerter.id;
    *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = Some(alerter);
    Installed(id)
}

impl Drop for Installed {
    fn drop(&mut self) {
        let mut installed = INSTALLED.write().unwrap_or_else(|e| e.into_inner());
        if installed.as_ref().is_some_and(|a| a.id == self.0) {
            *installed = None;
        }
    }
}

/// Starts the delivery task (on `tracker`, until `shutdown`) and returns its [`Alerter`].
pub fn start(
    settings: Settings,
    audit: Audit,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Alerter {
    let (tx, rx) = mpsc::channel(settings.queue.max(1));
    let alerter = Alerter {
        tx,
        kinds: settings.kinds.clone().into(),
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    };
    let tls = settings
        .webhook
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
        .then(tls_connector)
        .flatten();
    tracker.spawn(deliver_all(settings, audit, rx, shutdown, tls));
    alerter
}

async fn deliver_all(
    settings: Settings,
    audit: Audit,
    mut rx: mpsc::Receiver<AlertEvent>,
    shutdown: CancellationToken,
    tls: Option<tokio_rustls::TlsConnector>,
) {
    let mut last_sent: HashMap<(AlertKind, String), Instant> = HashMap::new();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = rx.recv() => match e { Some(e) => e, None => return },
        };
        let now = Instant::now();
        last_sent.retain(|_, at| now.duration_since(*at) < settings.min_interval);
        let subject = event.subject();
        if last_sent.contains_key(&subject) {
            crate::metrics::alert(event.alert.as_str(), "rate_limited");
            tracing::debug!(alert = event.alert.as_str(), "alert rate-limited");
            continue;
        }
        last_sent.insert(subject, now);
        let body = match serde_json::to_vec(&event) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("alert not serializable: {e}");
                continue;
            }
        };
        let webhook = async {
            match &settings.webhook {
                Some(url) => Some(post(url, &body, settings.timeout, tls.as_ref()).await),
                None => None,
            }
        };
        let command = async {
            match &settings.command {
                Some(argv) => Some(run(argv, &body, settings.timeout).await),
                None => None,
            }
        };
        let (webhook, command) = tokio::join!(webhook, command);
        for (target, outcome) in [("webhook", webhook), ("command", command)] {
            let Some(outcome) = outcome else { continue };
            record(&audit, &event, target, outcome).await;
        }
    }
}

/// Audits and counts one target's outcome.
async fn record(audit: &Audit, event: &AlertEvent, target: &str, outcome: Result<String, String>) {
    let kind = event.alert.as_str();
    let mut ev = AuditEvent::new(match outcome {
        Ok(_) => EventKind::AlertSent,
        Err(_) => EventKind::AlertFailed,
    });
    ev.alert = Some(kind);
    ev.mailbox.clone_from(&event.mailbox);
    ev.organization.clone_from(&event.organization);
    match outcome {
        Ok(detail) => {
            crate::metrics::alert(kind, "sent");
            ev.message = Some(format!("{target}: {detail}"));
        }
        Err(e) => {
            crate::metrics::alert(kind, "failed");
            tracing::warn!(alert = kind, "alert {target} failed: {e}");
            ev.message = Some(format!("{target}: {e}"));
        }
    }
    audit.record(ev).await;
}

/// POSTs `body` to `url`; `Ok("HTTP 204")` for a 2xx answer.
async fn post(
    url: &str,
    body: &[u8],
    timeout: Duration,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<String, String> {
    match tokio::time::timeout(timeout, post_inner(url, body, tls)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn post_inner(
    url: &str,
    body: &[u8],
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let authority = uri
        .authority()
        .map_or_else(|| host.clone(), |a| a.to_string());
    let request = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("submitgate/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let status = if https {
        let connector = tls.ok_or("TLS could not be set up (no system CA certificates)")?;
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| format!("{host}: {e}"))?;
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        exchange(stream, request).await?
    } else {
        exchange(tcp, request).await?
    };
    if status.is_success() {
        Ok(format!("HTTP {}", status.as_u16()))
    } else {
        Err(format!("HTTP {status}"))
    }
}

async fn exchange<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
) -> Result<http::StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string());
    let status = match response {
        Ok(r) => {
            let status = r.status();
            // Read (a bounded part of) the answer so the server sees its reply taken.
            let _ = http_body_util::Limited::new(r.into_body(), MAX_ANSWER)
                .collect()
                .await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    conn.abort();
    status
}

/// Runs `argv` with `body` on standard input; `Ok("exit 0")` when it succeeds.
async fn run(argv: &[String], body: &[u8], timeout: Duration) -> Result<String, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut child = tokio::process::Command::new(PathBuf::from(program))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let work = async {
        if let Some(mut stdin) = stdin.take() {
            // A command that does not read its input is its own business.
            let _ = stdin.write_all(body).await;
            drop(stdin);
        }
        let mut err = Vec::new();
        if let Some(stderr) = stderr.take() {
            let _ = stderr.take(MAX_STDERR as u64).read_to_end(&mut err).await;
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, err))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok((status, _))) if status.success() => Ok("exit 0".into()),
        Ok(Ok((status, err))) => Err(format!(
            "{program}: {status}{}",
            if err.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    crate::text::escape(String::from_utf8_lossy(&err).trim())
                )
            }
        )),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Err(_) => Err(format!("{program}: no exit within {timeout:?}; killed")),
    }
}

/// A TLS client with the system's roots (none found: https webhooks fail, each with a
/// message).
fn tls_connector() -> Option<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?;
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("alerts: no system CA certificates found: https webhooks will fail");
        return None;
    }
    let config = builder.with_root_certificates(roots).with_no_client_auth();
    Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_has_the_exchange_title() {
        let ev = AlertEvent::sender_restricted(
            "alice@contoso.com",
            Some("contoso"),
            "10000 recipients in 24h",
        );
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["alert"], "sender_restricted");
        assert_eq!(v["title"], "User restricted from sending email");
        assert_eq!(v["severity"], "high");
        assert_eq!(v["mailbox"], "alice@contoso.com");
        assert!(v["message"].as_str().unwrap().contains("10000 recipients"));
        for k in AlertKind::ALL {
            assert_eq!(k.as_str().parse::<AlertKind>(), Ok(k));
        }
        assert!("nope".parse::<AlertKind>().is_err());
    }

    #[test]
    fn reload_failure_lists_at_most_five_places() {
        let errors: Vec<String> = (1..=7).map(|i| format!("p/x.yaml:{i}:1: syntax")).collect();
        let ev = AlertEvent::policy_reload_failed("abc", &errors);
        assert!(ev
            .message
            .starts_with("7 error(s); policy abc stays in force"));
        assert!(ev.message.contains("p/x.yaml:5:1") && !ev.message.contains("p/x.yaml:6:1"));
        assert!(ev.message.ends_with("; …"));
    }
}
