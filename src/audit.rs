//! The audit log: one JSON object per line for every decision and lifecycle event, written by
//! a dedicated thread behind a bounded queue. Producers wait when the queue is full
//! (back-pressure) — an event is never dropped. SIGUSR1 (via [`Audit::reopen`]) reopens the file
//! for logrotate. Operational logs (tracing) never go here. [`crate::report`] reads the log back into
//! the SMTP AUTH clients report.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::reason::Reason;

/// Where audit events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard output (`path: "-"`).
    Stdout,
    /// Appended to this file, reopened on [`Audit::reopen`].
    File(PathBuf),
}

/// The audit log's checked settings (built by the configuration's `audit` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub target: Target,
    /// Events buffered between the front ends and the writer before they wait (back-pressure).
    pub queue: usize,
    /// Permissions of a log file submitgate creates (the umask still applies); an existing
    /// file keeps its own.
    pub mode: u32,
}

/// Events buffered by default.
pub const DEFAULT_QUEUE: usize = 4096;
/// Permissions of a new audit log: owner and group only. The log names every mailbox that
/// submits and from where, which not every local user should read.
pub const DEFAULT_MODE: u32 = 0o640;
/// The audit file used when none is configured.
pub const DEFAULT_PATH: &str = "./audit.log";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            target: Target::File(PathBuf::from(DEFAULT_PATH)),
            queue: DEFAULT_QUEUE,
            mode: DEFAULT_MODE,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A submission was allowed, rejected or deferred.
    SubmissionDecision,
    /// An allowed submission reached END-OF-MESSAGE (policy front end), or was accepted at
    /// end-of-message with its Sent Items copy spooled (milter).
    SubmissionCompleted,
    SessionOpened,
    SessionClosed,
    SentCopyStored,
    SentCopyFailed,
    PolicyReloaded,
    PolicyReloadFailed,
    LimiterUnavailable,
    /// Dovecot reported a successful login (auth policy `report`).
    AuthSucceeded,
    /// Dovecot reported a failed login: wrong password, unknown user (auth policy `report`).
    AuthFailed,
    /// Dovecot reported a login refused by the auth policy, i.e. by submitgate at AUTH.
    AuthRefusedByPolicy,
    /// An auth policy request without the configured `X-API-Key`; answered 401.
    AuthPolicyUnauthorized,
    /// A mailbox reached an outbound spam threshold whose action blocks it: it is a restricted
    /// sender until `blocked_until` (absent: until an administrator releases it).
    SenderRestricted,
    /// A restricted sender was released (`submitgate blocked-sender remove`).
    SenderReleased,
    /// A mailbox reached an outbound spam threshold whose action is `alert`: mail goes on.
    OutboundSpamAlert,
    /// An authentication rule in `report_only` mode would have refused this submission (or,
    /// from the auth policy endpoint, this login), which went ahead: `reason` and `reply` say
    /// what enforcing the rule would do.
    WouldRefuse,
    /// An alert reached its webhook or command (`alerts:`).
    AlertSent,
    /// An alert could not be delivered to its webhook or command.
    AlertFailed,
}

/// The outcome of a submission decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    /// Permanent refusal (5xx).
    Reject,
    /// Temporary refusal (4xx): over the limit, or submitgate unable to decide.
    Defer,
}

/// Which front end saw the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontEnd {
    Policy,
    Milter,
    AuthPolicy,
}

/// One audit record. Fields that do not apply are left out of the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    pub event: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub front_end: Option<FrontEnd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_in_use: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// TLS protocol (`TLSv1.3`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_count: Option<u32>,
    /// How long a session lasted (`session_closed`), in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Messages a session sent (`session_closed`): accepted at end-of-message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u32>,
    /// The Sent Items spool entry holding the message's copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_entry: Option<String>,
    /// Policy version (reload events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Human-readable detail: reload errors, failure reasons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
    /// The Dovecot protocol of a login (`smtp`, `imap`; auth policy events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Whether the login came over TLS, as Dovecot says (auth policy events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secured: Option<bool>,
    /// Dovecot's session id of a login, to find it in Dovecot's log (auth policy events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Sent Items folder (copy events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// The message's Message-ID header (copy events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Which store took the copy: `maildir` or `imap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<&'static str>,
    /// Delivery attempts it took (copy events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Milliseconds from submission to stored or failed (copy events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// `UIDVALIDITY` and `UID` from the server's `APPENDUID`, when it gave them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid_validity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The copy was found already stored (an earlier attempt's outcome was unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already_stored: Option<bool>,
    /// The sending limit or outbound spam threshold concerned (its policy key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<&'static str>,
    /// The count that reached `limit`, the message included (sending-limit events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The outbound spam policy's action (`block_user_for_today`, `block_user`, `alert`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// When a restriction ends by itself (RFC 3339, a midnight UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_until: Option<String>,
    /// The alert's kind (`alert_sent` / `alert_failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<&'static str>,
}

impl AuditEvent {
    /// A new event stamped with the current time.
    pub fn new(event: EventKind) -> Self {
        AuditEvent {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event,
            mailbox: None,
            organization: None,
            front_end: None,
            client_address: None,
            queue_id: None,
            decision: None,
            reason: None,
            sessions_in_use: None,
            limit: None,
            reply: None,
            tls: None,
            sasl_method: None,
            sender: None,
            size: None,
            recipient_count: None,
            duration_ms: None,
            messages: None,
            spool_entry: None,
            version: None,
            message: None,
            errors: None,
            protocol: None,
            secured: None,
            session_id: None,
            folder: None,
            message_id: None,
            store: None,
            attempts: None,
            delay_ms: None,
            uid_validity: None,
            uid: None,
            already_stored: None,
            threshold: None,
            count: None,
            action: None,
            blocked_until: None,
            alert: None,
        }
    }
}

/// Pause after each written batch (bounds how stale the file can be, not how many events wait:
/// the queue keeps filling meanwhile).
const BATCH_PAUSE: Duration = Duration::from_millis(2);

enum Msg {
    Event(Box<AuditEvent>),
    Reopen,
    Flush(oneshot::Sender<()>),
    Close,
}

/// A handle for recording events; cheap to clone.
#[derive(Clone, Debug)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
}

/// The writer thread; [`AuditWriter::finish`] waits until every recorded event is written.
#[derive(Debug)]
pub struct AuditWriter {
    thread: std::thread::JoinHandle<()>,
}

impl AuditWriter {
    /// Waits for the writer to drain (all [`Audit`] handles must be dropped first).
    pub async fn finish(self) {
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

impl Audit {
    /// Opens the target (so a bad path fails at start, not at the first event) and starts the
    /// writer thread.
    pub fn start(settings: &Settings) -> io::Result<(Audit, AuditWriter)> {
        let sink = Sink::open(&settings.target, settings.mode)?;
        let (tx, rx) = mpsc::channel(settings.queue);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(sink, rx))?;
        Ok((Audit { tx }, AuditWriter { thread }))
    }

    /// Records an event; waits when the queue is full rather than dropping it.
    pub async fn record(&self, event: AuditEvent) {
        if self.tx.send(Msg::Event(Box::new(event))).await.is_err() {
            tracing::error!("audit writer has stopped; event not written");
        }
    }

    /// Reopens the file (after logrotate moved it away).
    pub async fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen).await;
    }

    /// Ends the writer after every event recorded before this call is written, even if other
    /// handles still exist (shutdown).
    pub async fn close(&self) {
        let _ = self.tx.send(Msg::Close).await;
    }

    /// Waits until every event recorded before this call is written and flushed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

enum Sink {
    Stdout(io::Stdout),
    File {
        path: PathBuf,
        out: BufWriter<File>,
        mode: u32,
    },
}

impl Sink {
    fn open(target: &Target, mode: u32) -> io::Result<Sink> {
        Ok(match target {
            Target::Stdout => Sink::Stdout(io::stdout()),
            Target::File(path) => Sink::File {
                out: BufWriter::with_capacity(64 * 1024, open_append(path, mode)?),
                path: path.clone(),
                mode,
            },
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().write_all(bytes),
            Sink::File { out, .. } => out.write_all(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(s) => s.lock().flush(),
            Sink::File { out, .. } => out.flush(),
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Sink::File { path, out, mode } = self {
            out.flush()?;
            *out = BufWriter::with_capacity(64 * 1024, open_append(path, *mode)?);
        }
        Ok(())
    }
}

fn open_append(path: &PathBuf, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("audit log {}: {e}", path.display())))
}

/// Writes batches: everything queued is serialized and written, then flushed once.
/// A failing disk is retried (the queue fills and producers wait) rather than losing events.
fn writer_loop(mut sink: Sink, mut rx: mpsc::Receiver<Msg>) {
    let mut line = Vec::with_capacity(512);
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    while open {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(ev) => {
                    line.clear();
                    if let Err(e) = serde_json::to_writer(&mut line, &ev) {
                        tracing::error!("audit event not serializable: {e}");
                        continue;
                    }
                    line.push(b'\n');
                    retry("write", || sink.write_all(&line));
                }
                Msg::Reopen => retry("reopen", || sink.reopen()),
                Msg::Flush(done) => waiting.push(done),
                Msg::Close => {
                    open = false;
                    break;
                }
            }
            next = rx.try_recv().ok();
        }
        retry("flush", || sink.flush());
        for w in waiting.drain(..) {
            let _ = w.send(());
        }
        // Let events gather for a moment: producers then find the writer awake (no wake-up
        // system call per event) and the next batch is written with one write and one flush.
        if open {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
    retry("flush", || sink.flush());
}

fn retry(what: &str, mut op: impl FnMut() -> io::Result<()>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match op() {
            Ok(()) => return,
            Err(e) => {
                tracing::error!("audit log {what} failed: {e}; retrying in {delay:?}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_json_lines_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (audit, writer) = Audit::start(&Settings {
            target: Target::File(path.clone()),
            queue: 2,
            mode: DEFAULT_MODE,
        })
        .unwrap();
        for i in 0..10 {
            let mut ev = AuditEvent::new(EventKind::SubmissionDecision);
            ev.mailbox = Some(format!("m{i}@x"));
            ev.decision = Some(Outcome::Allow);
            audit.record(ev).await;
        }
        audit.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[3]["mailbox"], "m3@x");
        assert_eq!(lines[3]["event"], "submission_decision");
        assert_eq!(lines[3]["decision"], "allow");
        assert!(lines[3].get("queue_id").is_none());
        assert!(lines[3]["ts"].as_str().unwrap().ends_with('Z'));

        // logrotate: move the file away, reopen, new events go to a new file.
        std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
        audit.reopen().await;
        audit
            .record(AuditEvent::new(EventKind::PolicyReloaded))
            .await;
        drop(audit);
        writer.finish().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("policy_reloaded"));
    }

    #[tokio::test]
    async fn a_new_log_is_created_with_the_configured_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("default.log", DEFAULT_MODE), ("strict.log", 0o600)] {
            let path = dir.path().join(name);
            let (audit, writer) = Audit::start(&Settings {
                target: Target::File(path.clone()),
                queue: 2,
                mode,
            })
            .unwrap();
            // logrotate moved it away: the reopened file gets the same mode.
            std::fs::rename(&path, dir.path().join(format!("{name}.1"))).unwrap();
            audit.reopen().await;
            audit
                .record(AuditEvent::new(EventKind::PolicyReloaded))
                .await;
            drop(audit);
            writer.finish().await;
            for p in [path.clone(), dir.path().join(format!("{name}.1"))] {
                let got = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                // The umask can only take bits away: never more than asked, never world-readable.
                assert_eq!(got & !mode, 0, "{}: {got:o}", p.display());
                assert_eq!(got & 0o007, 0, "{}: {got:o}", p.display());
                assert_eq!(got & 0o600, 0o600, "{}: {got:o}", p.display());
            }
        }
    }

    #[test]
    fn bad_path_fails_at_start() {
        let e = Audit::start(&Settings {
            target: Target::File("/nonexistent-dir/x/audit.log".into()),
            queue: 8,
            mode: DEFAULT_MODE,
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/x/audit.log"));
    }
}
