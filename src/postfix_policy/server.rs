//! The policy delegation server: accept loops for every configured listener and one task per
//! Postfix connection. Postfix never says when an SMTP session ends, so here the limit counts
//! submissions in flight: a lease is taken at the first request of a transaction and given back
//! at END-OF-MESSAGE, when the connection moves on to another session or transaction, when it
//! closes, or after `lease_idle_timeout` without a request. The decision itself is
//! [`crate::admission`]'s (transaction scope); this module only turns its outcome into policy
//! replies. Arrows: postfix_policy → admission → policy / limiter / audit, through
//! [`crate::context`]; never `daemon`.

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
use crate::admission::{self, Facts, Hold, Scope};
use crate::audit::{AuditEvent, EventKind, FrontEnd};
use crate::context::Context;
use crate::endpoint::{accept_loop, Listener, Stream};
use crate::policy::Allowed;

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
    /// The transaction's lease and whether its allow decision was audited.
    hold: Hold,
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
        let holding = conn.txn.as_ref().is_some_and(|t| t.hold.is_held());
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
    if let Some(lease) = conn.txn.take().and_then(|mut t| t.hold.take_lease()) {
        tracing::debug!(
            peer,
            mailbox = lease.mailbox(),
            "connection closed; lease released"
        );
        lease.release().await;
    }
    tracing::debug!(peer, "policy connection closed");
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// What the admission step and the audit events need from a request.
fn facts<'a>(peer: &'a str, r: &'a Request) -> Facts<'a> {
    Facts {
        front_end: FrontEnd::Policy,
        peer,
        login: &r.sasl_username,
        client_address: non_empty(&r.client_address),
        tls: non_empty(&r.encryption_protocol),
        sasl_mechanism: non_empty(&r.sasl_method),
        sender: non_empty(&r.sender),
        recipients: if r.recipient.is_empty() {
            &[]
        } else {
            std::slice::from_ref(&r.recipient)
        },
        queue_id: non_empty(&r.queue_id),
    }
}

impl Connection<'_> {
    async fn expire_idle_lease(&mut self) {
        if let Some(lease) = self.txn.as_mut().and_then(|t| t.hold.take_lease()) {
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
        if let Some(lease) = self.txn.take().and_then(|mut t| t.hold.take_lease()) {
            lease.release().await;
        }
    }

    fn event(&self, kind: EventKind, r: &Request) -> AuditEvent {
        facts(self.peer, r).event(kind)
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
            .filter(|t| t.hold.is_held() && t.login == r.sasl_username)
        {
            txn.last_seen = Instant::now();
            if r.is_end_of_message() {
                let allowed = txn.allowed.take();
                self.complete(&r, allowed).await;
            }
            return Response::dunno();
        }
        let snapshot = self.ctx.policy.load();
        let txn = self.txn.get_or_insert_with(|| Txn {
            key: TxnKey::of(&r),
            login: r.sasl_username.clone(),
            allowed: None,
            hold: Hold::new(Scope::Transaction),
            last_seen: Instant::now(),
        });
        txn.last_seen = Instant::now();
        let facts = facts(self.peer, &r);
        let allowed = match admission::admit(self.ctx, &snapshot, &facts, &mut txn.hold).await {
            admission::Outcome::Admitted { allowed, .. } => allowed,
            admission::Outcome::Refused(refusal) => {
                self.end_txn().await;
                return Response(refusal.reply.to_string());
            }
            admission::Outcome::Deferred(refusal) => return Response(refusal.reply.to_string()),
        };
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
