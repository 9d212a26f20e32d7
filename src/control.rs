//! The control socket (`control: unix:PATH`, mode 0600): `submitgate status`, `reload`,
//! `blocked-sender list|remove` and the usage part of `mailbox get` talk to the running daemon
//! through it. One JSON request per line, one JSON reply per line. It reads only the
//! [`Handles`] the daemon passes in (limiter, audit, policy snapshot, reloader, listeners,
//! spool) and never imports `daemon`; releasing a restricted sender goes through
//! [`crate::admission`], which audits it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Audit;
use crate::endpoint::{Endpoint, Listener, Stream};
use crate::limiter::{BlockedSender, Limiter, MailboxState};
use crate::policy::reload::{PolicyHandle, ReloadOutcome, ReloadRecord, Reloader};
use crate::sent_items::spool::Spool;
use crate::sent_items::store::problems::{format_problems, Problems, StoreProblem};
use crate::text;

/// Longest request line accepted on the control socket.
const MAX_REQUEST: usize = 4096;
/// How long a control client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the control socket reads, built by the daemon once everything is bound.
#[derive(Debug)]
pub struct Handles {
    pub policy: PolicyHandle,
    pub limiter: Limiter,
    /// For the `sender_released` event.
    pub audit: Audit,
    pub reloader: Arc<Reloader>,
    /// The addresses each front end listens on (real ports when 0 was configured).
    pub listeners: Listeners,
    pub started: SystemTime,
    /// The Sent Items spool, when the daemon has one (for `status`).
    pub spool: Option<Spool>,
    /// The Sent Items store's configuration problems, when the daemon delivers copies.
    pub store_problems: Option<Problems>,
}

/// Bound listener addresses per front end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listeners {
    pub policy: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub milter: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// Dovecot auth policy (HTTP) listeners.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub auth_policy: Vec<String>,
}

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Reload,
    /// `blocked-sender list`: every restricted sender.
    BlockedSenders,
    /// `blocked-sender remove ADDRESS`.
    ReleaseSender {
        address: String,
    },
    /// The live part of `mailbox get`: sessions, usage, block.
    MailboxState {
        address: String,
    },
}

/// The answer to `blocked_senders`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockedReply {
    pub blocked: Vec<BlockedSender>,
}

/// The answer to `release_sender`: the entry released, `None` when it was not blocked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseReply {
    pub released: Option<BlockedSender>,
}

/// The answer to `mailbox_state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MailboxStateReply {
    pub state: MailboxState,
}

/// Live sessions of one mailbox with its limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MailboxStatus {
    pub mailbox: String,
    pub sessions: u32,
    /// The limit the current policy gives this mailbox (none for an unknown organization).
    pub limit: Option<u32>,
}

/// The policy in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyStatus {
    pub version: String,
    pub loaded_at: String,
    pub organizations: usize,
    pub mailboxes: usize,
    pub files: usize,
}

/// What `submitgate status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub version: String,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub limiter: String,
    pub policy: PolicyStatus,
    pub last_reload: Option<ReloadStatus>,
    pub listeners: serde_json::Value,
    /// Mailboxes with live sessions, the busiest first.
    pub sessions: Vec<MailboxStatus>,
    /// Spool depth, when the daemon has a spool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<serde_json::Value>,
    /// Configuration errors of the Sent Items store that no delivery has fixed yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent_items_problems: Vec<StoreProblem>,
}

/// The last reload attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadStatus {
    pub at: String,
    pub ok: bool,
    #[serde(default)]
    pub errors: Vec<String>,
}

impl From<ReloadRecord> for ReloadStatus {
    fn from(r: ReloadRecord) -> Self {
        ReloadStatus {
            at: r.at,
            ok: r.ok,
            errors: r.errors,
        }
    }
}

/// The answer to `reload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub unchanged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Builds the status from the daemon's public handles.
pub async fn status(shared: &Handles) -> Status {
    let snap = shared.policy.load_full();
    let sessions = shared
        .limiter
        .sessions()
        .await
        .into_iter()
        .map(|s| MailboxStatus {
            limit: snap.describe(&s.mailbox).effective_max_concurrent_sessions,
            mailbox: s.mailbox,
            sessions: s.sessions,
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: humantime::format_rfc3339_seconds(shared.started).to_string(),
        uptime_seconds: SystemTime::now()
            .duration_since(shared.started)
            .map_or(0, |d| d.as_secs()),
        limiter: shared.limiter.backend_name().to_string(),
        policy: PolicyStatus {
            version: snap.version.clone(),
            loaded_at: humantime::format_rfc3339_seconds(snap.loaded_at).to_string(),
            organizations: snap.organizations().len(),
            mailboxes: snap.mailbox_count(),
            files: snap.files.len(),
        },
        last_reload: shared.reloader.last_reload().map(ReloadStatus::from),
        listeners: listeners_json(&shared.listeners),
        sessions,
        spool: match &shared.spool {
            None => None,
            Some(spool) => Some(match spool.counts().await {
                Ok(c) => serde_json::to_value(c).unwrap_or(serde_json::Value::Null),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            }),
        },
        sent_items_problems: shared
            .store_problems
            .as_ref()
            .map(Problems::list)
            .unwrap_or_default(),
    }
}

fn to_json<T: Serialize>(value: T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
}

fn listeners_json(l: &Listeners) -> serde_json::Value {
    serde_json::to_value(l).unwrap_or(serde_json::Value::Null)
}

/// Serves the control socket until shutdown.
pub async fn serve(
    listener: Listener,
    shared: Arc<Handles>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tracker.spawn(async move {
                    if let Err(e) = handle(stream, &shared).await {
                        tracing::warn!("control socket: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(stream: Stream, shared: &Handles) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut limited = (&mut reader).take(MAX_REQUEST as u64);
        limited.read_until(b'\n', &mut line).await
    })
    .await;
    let reply = match read {
        Err(_) => serde_json::json!({"error": "timed out waiting for the request"}),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
            Ok(Request::Status) => serde_json::to_value(status(shared).await)
                .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()})),
            Ok(Request::BlockedSenders) => match shared.limiter.blocked_senders().await {
                Ok(blocked) => to_json(BlockedReply { blocked }),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            },
            Ok(Request::ReleaseSender { address }) => {
                let snapshot = shared.policy.load_full();
                match crate::admission::release_sender(
                    &shared.limiter,
                    &shared.audit,
                    &snapshot,
                    &address,
                    "an administrator (control socket)",
                )
                .await
                {
                    Ok(released) => to_json(ReleaseReply { released }),
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                }
            }
            Ok(Request::MailboxState { address }) => {
                let mailbox = shared.policy.load().normalize(&address);
                match shared.limiter.mailbox_state(&mailbox).await {
                    Some(state) => to_json(MailboxStateReply { state }),
                    None => serde_json::json!({"error": "the limiter (redis) does not answer"}),
                }
            }
            Ok(Request::Reload) => {
                let reply = match shared.reloader.reload().await {
                    ReloadOutcome::Reloaded {
                        version, unchanged, ..
                    } => ReloadReply {
                        ok: true,
                        version: Some(version),
                        unchanged,
                        errors: Vec::new(),
                    },
                    ReloadOutcome::Failed(e) => ReloadReply {
                        ok: false,
                        version: Some(shared.policy.load().version.clone()),
                        unchanged: false,
                        errors: e.0.iter().map(|e| e.to_string()).collect(),
                    },
                };
                serde_json::to_value(reply)
                    .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
            }
        },
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let stream = reader.get_mut();
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// Why the CLI could not talk to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the control socket {endpoint}: {source} (is submitgate running, and is `control` set in its configuration?)")]
    Connect {
        endpoint: Endpoint,
        source: std::io::Error,
    },
    #[error("control socket {0}: {1}")]
    Io(Endpoint, std::io::Error),
    #[error("control socket {0}: unexpected reply: {1}")]
    Reply(Endpoint, String),
}

/// Sends one request and returns the reply (CLI side).
pub async fn request<T: serde::de::DeserializeOwned>(
    endpoint: &Endpoint,
    req: &Request,
) -> Result<T, ClientError> {
    let mut stream = endpoint
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
    let mut line =
        serde_json::to_vec(req).map_err(|e| ClientError::Reply(endpoint.clone(), e.to_string()))?;
    line.push(b'\n');
    let io = |e| ClientError::Io(endpoint.clone(), e);
    stream.write_all(&line).await.map_err(io)?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut reply))
        .await
        .map_err(|_| ClientError::Reply(endpoint.clone(), "no reply within 60 s".into()))?
        .map_err(|e| ClientError::Io(endpoint.clone(), e))?;
    let value: serde_json::Value = serde_json::from_slice(&reply)
        .map_err(|e| ClientError::Reply(endpoint.clone(), e.to_string()))?;
    if let Some(err) = value.get("error").and_then(|e| e.as_str()) {
        return Err(ClientError::Reply(endpoint.clone(), err.to_string()));
    }
    serde_json::from_value(value).map_err(|e| ClientError::Reply(endpoint.clone(), e.to_string()))
}

/// `n` and the noun in singular or plural: "1 mailbox", "2 mailboxes".
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `submitgate status` as text.
pub fn format_status(s: &Status) -> String {
    let mut out = String::new();
    let up = humantime::format_duration(Duration::from_secs(s.uptime_seconds));
    out.push_str(&format!(
        "submitgate {}, up {up} (since {}), limiter {}\n",
        s.version, s.started_at, s.limiter
    ));
    out.push_str(&format!(
        "policy: version {} loaded {} ({}, {} with own settings, {})\n",
        s.policy.version,
        s.policy.loaded_at,
        counted(s.policy.organizations, "organization", "organizations"),
        counted(s.policy.mailboxes, "mailbox", "mailboxes"),
        counted(s.policy.files, "file", "files")
    ));
    match &s.last_reload {
        None => out.push_str("last reload: none since start\n"),
        Some(r) if r.ok => out.push_str(&format!("last reload: ok at {}\n", r.at)),
        Some(r) => {
            out.push_str(&format!(
                "last reload: FAILED at {} (the policy above is still in force)\n",
                r.at
            ));
            for e in &r.errors {
                out.push_str(&format!("  {e}\n"));
            }
        }
    }
    if let Some(obj) = s.listeners.as_object() {
        for (front_end, addrs) in obj {
            let list = match addrs {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                serde_json::Value::String(v) => v.clone(),
                _ => continue,
            };
            if !list.is_empty() {
                out.push_str(&format!("listener {front_end}: {list}\n"));
            }
        }
    }
    if let Some(spool) = &s.spool {
        let n = |k: &str| spool.get(k).and_then(|v| v.as_u64());
        match (n("pending"), n("failed")) {
            (Some(pending), Some(failed)) => {
                let oldest = n("oldest_pending")
                    .map(|secs| {
                        format!(
                            " (oldest {})",
                            humantime::format_duration(Duration::from_secs(secs))
                        )
                    })
                    .unwrap_or_default();
                out.push_str(&format!(
                    "spool: {pending} pending{oldest}, {failed} failed\n"
                ));
            }
            _ => out.push_str(&format!("spool: {spool}\n")),
        }
    }
    out.push_str(&format_problems(&s.sent_items_problems));
    if s.sessions.is_empty() {
        out.push_str("sessions: none\n");
    } else {
        let total: u32 = s.sessions.iter().map(|m| m.sessions).sum();
        out.push_str(&format!(
            "sessions: {total} across {} (busiest first)\n",
            counted(s.sessions.len(), "mailbox", "mailboxes")
        ));
        // A mailbox is a checked login, but the table never trusts that: escaped, cut to
        // text::CELL_MAX_CHARS, so that no width can overflow the formatter.
        let cells: Vec<_> = s
            .sessions
            .iter()
            .map(|m| text::cell(&m.mailbox, text::CELL_MAX_CHARS))
            .collect();
        let width = cells
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(7)
            .max(7);
        out.push_str(&format!("  {:<width$}  SESSIONS  LIMIT\n", "MAILBOX"));
        for (m, cell) in s.sessions.iter().zip(&cells) {
            out.push_str(&format!(
                "  {cell:<width$}  {:>8}  {:>5}\n",
                m.sessions,
                m.limit.map_or("-".to_string(), |l| l.to_string())
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_cuts_a_huge_mailbox_instead_of_panicking() {
        let huge = format!("{}@contoso.com", "a".repeat(70_000));
        let status: Status = serde_json::from_value(serde_json::json!({
            "version": "test", "started_at": "2026-12-04T20:00:00Z", "uptime_seconds": 5,
            "limiter": "memory",
            "policy": {"version": "v", "loaded_at": "t", "organizations": 1, "mailboxes": 0,
                       "files": 1},
            "last_reload": null, "listeners": {},
            "sessions": [{"mailbox": huge, "sessions": 1, "limit": 3},
                         {"mailbox": "bob\u{1b}[2J@contoso.com", "sessions": 2, "limit": null}],
        }))
        .expect("status");
        let text = format_status(&status);
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("MAILBOX"))
            .collect();
        assert_eq!(rows.len(), 3, "{text}");
        let width = crate::text::CELL_MAX_CHARS;
        assert!(
            rows[1].starts_with(&format!("  {}…  ", "a".repeat(width - 1))),
            "{text}"
        );
        assert!(rows[2].starts_with("  bob\\u{1b}[2J@contoso.com"), "{text}");
        assert!(rows
            .iter()
            .all(|r| r.chars().count() == rows[0].chars().count()));
    }
}
