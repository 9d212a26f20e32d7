//! The policy delegation server: accept loops for every configured listener and one task per
//! Postfix connection. Postfix never says when an SMTP session ends, so here the limit counts
//! submissions in flight: a lease is taken at the first request of a transaction and given back
//! at END-OF-MESSAGE, when the connection moves on to another session or transaction, when it
//! closes, or after `lease_idle_timeout` without a request. The decision itself is
//! [`crate::admission`]'s (transaction scope); this module only turns its outcome into policy
//! replies. Arrows: postfix_policy → admission → policy / limiter / audit, through
//! [`crate::context`]; never `daemon`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{CodecError, PolicyCodec, Request, Response};
use crate::admission::{self, Facts, Hold, Scope};
use crate::audit::{AuditEvent, EventKind, FrontEnd};
use crate::context::Context;
use crate::endpoint::{accept_loop, ConnectionCaps, Listener, Stream};
use crate::policy::Allowed;

/// Settings of the policy front end.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A held lease is given back after this long without a request on its connection.
    pub lease_idle_timeout: Duration,
    /// A connection with no request under way is closed after this long since its last reply
    /// (`policy_idle_timeout`: a little above Postfix's `smtpd_policy_service_max_idle`).
    pub idle_timeout: Duration,
    /// A request must arrive whole, and its reply be taken, within this long; a new
    /// connection's first request counts from the accept (`policy_read_timeout`).
    pub read_timeout: Duration,
}

/// Accepts connections until `shutdown`; each runs in its own task on `tracker`.
pub async fn serve(
    listener: Listener,
    ctx: Context,
    settings: Settings,
    caps: ConnectionCaps,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let stop = shutdown.clone();
    accept_loop(
        "policy",
        listener,
        caps,
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
    mut stream: Stream,
    peer: &str,
    ctx: &Context,
    settings: &Settings,
    shutdown: CancellationToken,
) {
    tracing::debug!(peer, "policy connection opened");
    let mut codec = PolicyCodec::new();
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::new();
    let mut conn = Connection {
        ctx,
        peer,
        txn: None,
    };
    let opened = Instant::now();
    let mut clock = Clock {
        // Postfix connects when it has a request to send and writes it at once: the first
        // request is under way from the moment the connection is accepted.
        request_started: Some(opened),
        last_reply: opened,
    };
    // One timer per connection, moved when it fires, or forward when a deadline comes sooner
    // than it (a request arriving in pieces): a request that comes in one read, as Postfix
    // writes it, only compares instants and never touches the timer wheel.
    let timer = tokio::time::sleep_until(opened + settings.read_timeout);
    tokio::pin!(timer);
    // Registered once: a fresh `cancelled()` per loop would join and leave the token's waiter
    // list (a lock each time) at every request.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    // Every request is parsed into this one (its strings' allocations are reused).
    let mut request = Request::default();
    loop {
        // Every whole request in the buffer is answered (Postfix sends one at a time; a client
        // that pipelines gets its replies in one write).
        let mut failed = None;
        loop {
            match codec.decode_into(&mut buf, &mut request) {
                Ok(true) => {
                    let response = conn.handle(&request).await;
                    if let Err(e) = codec.encode(response, &mut out) {
                        failed = Some(e);
                        break;
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if !out.is_empty() {
            // Replies to the requests before a bad one still go out.
            if let Err(e) = send(&mut stream, &out, settings).await {
                tracing::warn!(peer, "policy connection: cannot send reply: {e}");
                break;
            }
            out.clear();
            let now = Instant::now();
            clock.last_reply = now;
            // Bytes after the request (pipelining) start the next one.
            clock.request_started = (!buf.is_empty()).then_some(now);
        }
        if let Some(e) = failed {
            tracing::warn!(peer, "closing policy connection: {e}");
            break;
        }
        let lease_since = conn
            .txn
            .as_ref()
            .filter(|t| t.hold.is_held())
            .map(|t| t.last_seen);
        // Deadlines only move later while requests come in; a new one that is earlier (a
        // request arriving in pieces, a short idle timeout) moves the timer forward.
        let due = clock.next_deadline(lease_since, settings);
        if due < timer.deadline() {
            timer.as_mut().reset(due);
        }
        tokio::select! {
            _ = &mut cancelled => break,
            _ = timer.as_mut() => {
                match clock.wake(Instant::now(), lease_since, settings) {
                    Wake::RequestTimedOut if buf.is_empty() => {
                        tracing::info!(
                            peer,
                            "closing policy connection: no request within policy_read_timeout \
                             ({:?}) of connecting",
                            settings.read_timeout
                        );
                        break;
                    }
                    Wake::RequestTimedOut => {
                        tracing::warn!(
                            peer,
                            "closing policy connection: request not complete within \
                             policy_read_timeout ({:?})",
                            settings.read_timeout
                        );
                        break;
                    }
                    Wake::Idle => {
                        tracing::info!(
                            peer,
                            "closing policy connection: no request within policy_idle_timeout \
                             ({:?})",
                            settings.idle_timeout
                        );
                        break;
                    }
                    Wake::LeaseIdle => {
                        conn.expire_idle_lease().await;
                        timer.as_mut().reset(clock.next_deadline(None, settings));
                    }
                    Wake::At(next) => timer.as_mut().reset(next),
                }
            }
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) => {
                    if !buf.iter().all(u8::is_ascii_whitespace) {
                        tracing::warn!(peer, "closing policy connection: {}", CodecError::Truncated);
                    }
                    break;
                }
                Ok(_) => {
                    if clock.request_started.is_none() {
                        clock.request_started = Some(Instant::now());
                    }
                }
                Err(e) => {
                    tracing::warn!(peer, "closing policy connection: {e}");
                    break;
                }
            },
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

/// Writes the replies; a peer that does not take them within `read_timeout` is given up on.
async fn send(stream: &mut Stream, out: &[u8], settings: &Settings) -> Result<(), CodecError> {
    match tokio::time::timeout(settings.read_timeout, stream.write_all(out)).await {
        Ok(written) => Ok(written?),
        Err(_) => Err(CodecError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "reply not taken within policy_read_timeout ({:?})",
                settings.read_timeout
            ),
        ))),
    }
}

/// A connection's times: when the request being read started, when the last reply went out.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// `Some` while a request is under way (bytes of it received, or the connection new).
    request_started: Option<Instant>,
    last_reply: Instant,
}

/// What the connection's timer found when it fired.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// A request has been under way for `read_timeout`: close.
    RequestTimedOut,
    /// No request for `idle_timeout`: close.
    Idle,
    /// The held lease saw no request for `lease_idle_timeout`: give it back.
    LeaseIdle,
    /// Nothing due yet: sleep until then.
    At(Instant),
}

impl Clock {
    /// What is due at `now`; `lease_since` is when the held lease last saw a request.
    fn wake(&self, now: Instant, lease_since: Option<Instant>, s: &Settings) -> Wake {
        match self.request_started {
            Some(started) if now >= started + s.read_timeout => return Wake::RequestTimedOut,
            None if now >= self.last_reply + s.idle_timeout => return Wake::Idle,
            _ => {}
        }
        if lease_since.is_some_and(|t| now >= t + s.lease_idle_timeout) {
            return Wake::LeaseIdle;
        }
        Wake::At(self.next_deadline(lease_since, s))
    }

    /// The earliest deadline: of the request under way or of idleness, and of the lease.
    fn next_deadline(&self, lease_since: Option<Instant>, s: &Settings) -> Instant {
        let own = match self.request_started {
            Some(started) => started + s.read_timeout,
            None => self.last_reply + s.idle_timeout,
        };
        let lease = lease_since.map(|t| t + s.lease_idle_timeout);
        lease.map_or(own, |l| l.min(own))
    }
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

    async fn handle(&mut self, r: &Request) -> Response {
        // A request from another session or transaction ends the one before.
        if self.txn.as_ref().is_some_and(|t| !t.key.matches(r)) {
            self.end_txn().await;
        }
        if r.sasl_username.is_empty() {
            self.ctx
                .stats
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
            return Response::dunno();
        }
        let snapshot = self.ctx.policy.load();
        // A transaction holding its lease was admitted at its first request: later requests of
        // the same transaction (more RCPTs, DATA, END-OF-MESSAGE) go on to the recipient and
        // end-of-message steps.
        let admitted = self
            .txn
            .as_ref()
            .is_some_and(|t| t.hold.is_held() && t.login == r.sasl_username);
        if !admitted {
            let txn = self.txn.get_or_insert_with(|| Txn {
                key: TxnKey::of(r),
                login: r.sasl_username.clone(),
                allowed: None,
                hold: Hold::new(Scope::Transaction),
                last_seen: Instant::now(),
            });
            txn.last_seen = Instant::now();
            let facts = facts(self.peer, r);
            match admission::admit(self.ctx, &snapshot, &facts, &mut txn.hold).await {
                admission::Outcome::Admitted { allowed, .. } => {
                    txn.login.clone_from(&r.sasl_username);
                    txn.allowed = Some(allowed);
                }
                admission::Outcome::Refused(refusal) => {
                    self.end_txn().await;
                    return Response(refusal.reply.to_string());
                }
                admission::Outcome::Deferred(refusal) => {
                    return Response(refusal.reply.to_string())
                }
            }
        }
        let Some(txn) = self.txn.as_mut() else {
            return Response::dunno();
        };
        txn.last_seen = Instant::now();
        let facts = facts(self.peer, r);
        if r.is_end_of_message() {
            let verdict = admission::accept(
                self.ctx,
                &snapshot,
                &facts,
                &mut txn.hold,
                None,
                r.recipient_count,
            )
            .await;
            let allowed = txn.allowed.take();
            return match verdict {
                admission::Accept::Accepted => {
                    self.complete(r, allowed).await;
                    Response::dunno()
                }
                admission::Accept::Refused(refusal) | admission::Accept::Deferred(refusal) => {
                    self.end_txn().await;
                    Response(refusal.reply.to_string())
                }
            };
        }
        if r.protocol_state.eq_ignore_ascii_case("RCPT") && !r.recipient.is_empty() {
            // Refused or not, the transaction goes on (with its other recipients).
            if let Err(refusal) =
                admission::recipient(self.ctx, &snapshot, &facts, &mut txn.hold, &r.recipient).await
            {
                return Response(refusal.reply.to_string());
            }
        }
        Response::dunno()
    }

    /// END-OF-MESSAGE of an accepted transaction: audit it and end it (its lease went back
    /// with the end-of-message step).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            lease_idle_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(330),
            read_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_request_under_way_times_out_after_read_timeout() {
        let s = settings();
        let t0 = Instant::now();
        let clock = Clock {
            request_started: Some(t0),
            last_reply: t0,
        };
        let at = Duration::from_secs(10);
        assert_eq!(
            clock.wake(t0 + Duration::from_secs(3), None, &s),
            Wake::At(t0 + at)
        );
        assert_eq!(clock.wake(t0 + at, None, &s), Wake::RequestTimedOut);
        // A request under way is never "idle", however long ago the last reply was.
        let old = Clock {
            request_started: Some(t0 + Duration::from_secs(400)),
            last_reply: t0,
        };
        assert_eq!(
            old.wake(t0 + Duration::from_secs(401), None, &s),
            Wake::At(t0 + Duration::from_secs(410))
        );
    }

    #[test]
    fn an_idle_connection_closes_after_idle_timeout_and_its_lease_goes_first() {
        let s = settings();
        let t0 = Instant::now();
        let clock = Clock {
            request_started: None,
            last_reply: t0,
        };
        let lease = Some(t0);
        assert_eq!(
            clock.wake(t0 + Duration::from_secs(10), lease, &s),
            Wake::At(t0 + Duration::from_secs(300))
        );
        assert_eq!(
            clock.wake(t0 + Duration::from_secs(300), lease, &s),
            Wake::LeaseIdle
        );
        assert_eq!(
            clock.wake(t0 + Duration::from_secs(300), None, &s),
            Wake::At(t0 + Duration::from_secs(330))
        );
        assert_eq!(
            clock.wake(t0 + Duration::from_secs(330), None, &s),
            Wake::Idle
        );
    }
}
