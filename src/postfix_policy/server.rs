//! The policy delegation server: accept loops for every configured listener and one task per
//! Postfix connection. Postfix never says when an SMTP session ends, so here the limit counts
//! submissions in flight: a lease is taken at the first request of a transaction and given back
//! at END-OF-MESSAGE, when the connection moves on to another session or transaction, when it
//! closes, or after `lease_idle_timeout` without a request.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{PolicyCodec, Request, Response};
use crate::audit::{AuditEvent, EventKind, FrontEnd, Outcome};
use crate::daemon::Context;
use crate::endpoint::{accept_loop, Listener, Stream};
use crate::limiter::{Acquire, Lease};
use crate::policy::{evaluate, Allowed, Decision, Submission};
use crate::reason::Reason;

/// Settings of the policy front end.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A held lease is given back after this long without a request on its connection.
    pub lease_idle_timeout: Duration,
}

/// Accepts connections until `shutdown`; each runs in its own task on `tracker`.
pub async fn serve(
    listener: Listener,
    ctx: Context,
    settings: Settings,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let stop = shutdown.clone();
    accept_loop(
        "policy",
        listener,
        connections,
        stop,
        tracker,
        move |stream, peer| {
            let (ctx, settings, shutdown) = (ctx.clone(), settings.clone(), shutdown.clone());
            async move { handle_connection(stream, &peer, &ctx, &settings, shutdown).await }
        },
    )
    .await
}

/// What identifies a mail transaction: the SMTP session's addresses and Postfix's instance.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TxnKey {
    client_address: String,
    client_port: String,
    server_address: String,
    server_port: String,
    instance: String,
}

impl TxnKey {
    fn of(r: &Request) -> Self {
        TxnKey {
            client_address: r.client_address.clone(),
            client_port: r.client_port.clone(),
            server_address: r.server_address.clone(),
            server_port: r.server_port.clone(),
            instance: r.instance.clone(),
        }
    }

    fn matches(&self, r: &Request) -> bool {
        self.instance == r.instance
            && self.client_port == r.client_port
            && self.client_address == r.client_address
            && self.server_port == r.server_port
            && self.server_address == r.server_address
    }
}

/// The transaction this connection is currently serving.
struct Txn {
    key: TxnKey,
    /// The login and decision of the transaction's first allowed request.
    login: String,
    allowed: Option<Allowed>,
    lease: Option<Lease>,
    allow_audited: bool,
    last_seen: Instant,
}

/// Per-connection state: one smtpd process serves one SMTP session at a time, so a connection
/// has at most one transaction in flight.
struct Connection<'a> {
    ctx: &'a Context,
    peer: &'a str,
    txn: Option<Txn>,
}

async fn handle_connection(
    stream: Stream,
    peer: &str,
    ctx: &Context,
    settings: &Settings,
    shutdown: CancellationToken,
) {
    tracing::debug!(peer, "policy connection opened");
    let mut framed = Framed::new(stream, PolicyCodec::new());
    let mut conn = Connection {
        ctx,
        peer,
        txn: None,
    };
    // One timer per connection, moved only when it fires: requests just note their time, so
    // the hot path never touches the timer wheel.
    let idle = tokio::time::sleep(settings.lease_idle_timeout);
    tokio::pin!(idle);
    loop {
        let holding = conn.txn.as_ref().is_some_and(|t| t.lease.is_some());
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = idle.as_mut(), if holding => {
                let now = Instant::now();
                let deadline = conn
                    .txn
                    .as_ref()
                    .map_or(now, |t| t.last_seen + settings.lease_idle_timeout);
                if now >= deadline {
                    conn.expire_idle_lease().await;
                    idle.as_mut().reset(now + settings.lease_idle_timeout);
                } else {
                    idle.as_mut().reset(deadline);
                }
                continue;
            }
            next = framed.next() => next,
        };
        let request = match next {
            None => break,
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::warn!(peer, "closing policy connection: {e}");
                break;
            }
        };
        let response = conn.handle(request).await;
        if let Err(e) = framed.send(response).await {
            tracing::warn!(peer, "policy connection: cannot send reply: {e}");
            break;
        }
    }
    if let Some(lease) = conn.txn.take().and_then(|t| t.lease) {
        tracing::debug!(
            peer,
            mailbox = lease.mailbox(),
            "connection closed; lease released"
        );
        lease.release().await;
    }
    tracing::debug!(peer, "policy connection closed");
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Connection<'_> {
    async fn expire_idle_lease(&mut self) {
        if let Some(lease) = self.txn.as_mut().and_then(|t| t.lease.take()) {
            tracing::info!(
                peer = self.peer,
                mailbox = lease.mailbox(),
                "no request within lease_idle_timeout; lease released"
            );
            lease.release().await;
        }
    }

    /// Ends the current transaction, giving its lease back.
    async fn end_txn(&mut self) {
        if let Some(lease) = self.txn.take().and_then(|t| t.lease) {
            lease.release().await;
        }
    }

    fn event(&self, kind: EventKind, r: &Request) -> AuditEvent {
        let mut ev = AuditEvent::new(kind);
        ev.front_end = Some(FrontEnd::Policy);
        ev.client_address = non_empty(&r.client_address);
        ev.queue_id = non_empty(&r.queue_id);
        ev.tls = non_empty(&r.encryption_protocol);
        ev.sasl_method = non_empty(&r.sasl_method);
        ev.sender = non_empty(&r.sender);
        ev
    }

    async fn handle(&mut self, r: Request) -> Response {
        // A request from another session or transaction ends the one before.
        if self.txn.as_ref().is_some_and(|t| !t.key.matches(&r)) {
            self.end_txn().await;
        }
        if r.sasl_username.is_empty() {
            self.ctx
                .stats
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
            return Response::dunno();
        }
        // A transaction holding its lease was decided at its first request: later requests of
        // the same transaction (more RCPTs, DATA, END-OF-MESSAGE) only move it along.
        if let Some(txn) = self
            .txn
            .as_mut()
            .filter(|t| t.lease.is_some() && t.login == r.sasl_username)
        {
            txn.last_seen = Instant::now();
            if r.is_end_of_message() {
                let allowed = txn.allowed.take();
                self.complete(&r, allowed).await;
            }
            return Response::dunno();
        }
        let snapshot = self.ctx.policy.load();
        let decision = evaluate(
            &snapshot,
            &Submission {
                login: &r.sasl_username,
            },
        );
        let allowed = match decision {
            Decision::Reject {
                reason,
                mailbox,
                organization,
            } => {
                self.end_txn().await;
                let reply = self.ctx.replies.for_reason(reason).to_string();
                let mut ev = self.event(EventKind::SubmissionDecision, &r);
                ev.mailbox = Some(mailbox);
                ev.organization = organization;
                ev.decision = Some(Outcome::Reject);
                ev.reason = Some(reason);
                ev.reply = Some(reply.clone());
                self.ctx.audit.record(ev).await;
                return Response(reply);
            }
            Decision::Allow(a) => a,
        };
        let txn = self.txn.get_or_insert_with(|| Txn {
            key: TxnKey::of(&r),
            login: r.sasl_username.clone(),
            allowed: None,
            lease: None,
            allow_audited: false,
            last_seen: Instant::now(),
        });
        txn.last_seen = Instant::now();
        if txn.lease.is_none() {
            let refusal = match self
                .ctx
                .limiter
                .acquire(&allowed.mailbox, allowed.limit)
                .await
            {
                Acquire::Granted(lease) => {
                    let in_use = lease.in_use();
                    txn.lease = Some(lease);
                    if !std::mem::replace(&mut txn.allow_audited, true) {
                        let mut ev = self.event(EventKind::SubmissionDecision, &r);
                        ev.mailbox = Some(allowed.mailbox.clone());
                        ev.organization = Some(allowed.organization.clone());
                        ev.decision = Some(Outcome::Allow);
                        ev.sessions_in_use = Some(in_use);
                        ev.limit = Some(allowed.limit);
                        self.ctx.audit.record(ev).await;
                    }
                    None
                }
                Acquire::Refused { in_use, limit } => Some((
                    Reason::ConcurrencyLimit,
                    self.ctx.replies.concurrency_limit.to_string(),
                    Some(in_use),
                    limit,
                )),
                Acquire::Unavailable => Some((
                    Reason::LimiterUnavailable,
                    self.ctx.replies.tempfail.to_string(),
                    None,
                    allowed.limit,
                )),
            };
            if let Some((reason, reply, in_use, limit)) = refusal {
                let mut ev = self.event(EventKind::SubmissionDecision, &r);
                ev.mailbox = Some(allowed.mailbox);
                ev.organization = Some(allowed.organization);
                ev.decision = Some(Outcome::Defer);
                ev.reason = Some(reason);
                ev.sessions_in_use = in_use;
                ev.limit = Some(limit);
                ev.reply = Some(reply.clone());
                tracing::info!(
                    peer = self.peer,
                    mailbox = ev.mailbox.as_deref(),
                    %reason,
                    "submission deferred"
                );
                self.ctx.audit.record(ev).await;
                return Response(reply);
            }
        }
        if r.is_end_of_message() {
            self.complete(&r, Some(allowed)).await;
        } else if let Some(txn) = self.txn.as_mut() {
            txn.login.clone_from(&r.sasl_username);
            txn.allowed = Some(allowed);
        }
        Response::dunno()
    }

    /// END-OF-MESSAGE of an allowed transaction: audit it and give the lease back.
    async fn complete(&mut self, r: &Request, allowed: Option<Allowed>) {
        let mut ev = self.event(EventKind::SubmissionCompleted, r);
        if let Some(a) = allowed {
            ev.mailbox = Some(a.mailbox);
            ev.organization = Some(a.organization);
        }
        ev.size = r.size;
        ev.recipient_count = r.recipient_count;
        self.ctx.audit.record(ev).await;
        self.end_txn().await;
    }
}
