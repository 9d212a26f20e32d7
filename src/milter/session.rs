//! One milter conversation = one SMTP session: the legal order of stages as one table
//! ([`State`] × [`Event`]), option negotiation, asking [`crate::admission`] at MAIL FROM and
//! turning its outcome into milter replies, and the capture of allowed messages into the Sent
//! Items spool. Arrows: milter → admission → policy / limiter / audit, through
//! [`crate::context`]; never `daemon`.
//!
//! Per-connection state (`Connection`: client address, login, TLS, the lease) lives as long as
//! the SMTP session; per-message state (`Message`: envelope, capture) is reset by ABORT,
//! end-of-message and any reply that ends the message. The server ([`super::server`]) owns the
//! socket: it feeds commands to [`Session::handle`], sends the replies it returns, and calls
//! [`Session::finish`] exactly once, however the connection ends.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::codec::{
    macro_value, Command, Reply, SMFIF_NONE, SMFIP_HDR_LEADSPC, SMFIP_NR_BODY, SMFIP_NR_CONN,
    SMFIP_NR_DATA, SMFIP_NR_EOH, SMFIP_NR_HDR, SMFIP_NR_HELO, SMFIP_NR_RCPT, SMFIP_NR_UNKN,
    SMFI_PROT_VERSION,
};
use crate::admission::{self, Facts, Hold, Opened, Scope};
use crate::audit::{AuditEvent, EventKind, FrontEnd};
use crate::context::Context;
use crate::policy::PolicySnapshot;
use crate::reason::Reason;
use crate::sent_items::spool::{EntryMeta, Spool, SpoolWriter};

/// Protocol flags we ask for when the MTA offers them. Every `SMFIP_NR_*` here is an event we
/// always answer with "continue": not answering saves Postfix a round trip per event (per
/// header and per body chunk, too). `SMFIP_HDR_LEADSPC` makes header values arrive with their
/// leading whitespace, so that the Sent Items copy is the header byte for byte. Never asked for:
/// `SMFIP_NOHDRS`/`SMFIP_NOBODY` (the capture needs them), `SMFIP_NR_MAIL` (the decision is
/// made there), and anything the MTA did not offer (Postfix drops such a filter).
///
/// `SMFIP_NR_RCPT` stays: the sending limits that need the recipients (recipients per message,
/// per day, the outbound spam thresholds) are judged at end-of-message, where the milter knows
/// them all, and refuse the whole message there. Refusing at RCPT instead would cost Postfix a
/// round trip per recipient of every message, for the rare message over a limit.
pub const WANTED_PROTOCOL: u32 = SMFIP_NR_CONN
    | SMFIP_NR_HELO
    | SMFIP_NR_RCPT
    | SMFIP_NR_DATA
    | SMFIP_NR_HDR
    | SMFIP_NR_EOH
    | SMFIP_NR_BODY
    | SMFIP_NR_UNKN
    | SMFIP_HDR_LEADSPC;

/// Actions we may request: none (submitgate never modifies a message).
pub const WANTED_ACTIONS: u32 = SMFIF_NONE;

/// Oldest milter protocol version we speak.
const MIN_PROT_VERSION: u32 = 2;

/// Where a milter conversation stands: the last stage seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing yet: option negotiation comes first.
    Start,
    /// Options agreed; CONNECT comes next.
    Negotiated,
    /// Connected, no transaction open: after CONNECT, HELO, end-of-message, ABORT, or a
    /// reply that ended the message.
    Idle,
    /// MAIL FROM seen.
    Mail,
    /// At least one RCPT TO seen.
    Rcpt,
    /// DATA seen.
    Data,
    /// Headers arriving.
    Headers,
    /// End-of-headers seen: body chunks, then end-of-message.
    Body,
    /// QUIT seen: nothing more may come.
    Closed,
}

/// What a command does to the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `O`: option negotiation.
    OptNeg,
    /// `D`: macros for the next command.
    Macro,
    /// `C`: the client connected.
    Connect,
    /// `H`: HELO/EHLO.
    Helo,
    /// `M`: MAIL FROM.
    Mail,
    /// `R`: RCPT TO.
    Rcpt,
    /// `T`: DATA.
    Data,
    /// `L`: one header.
    Header,
    /// `N`: end of headers.
    EndOfHeaders,
    /// `B`: a body chunk.
    Body,
    /// `E`: end of message.
    EndOfMessage,
    /// `U`: an unknown SMTP command.
    Unknown,
    /// `A`: abort the message.
    Abort,
    /// `Q`: the session ends.
    Quit,
    /// `K`: the session ends, a new one follows on the same connection.
    QuitNewConnection,
}

impl Event {
    /// The event a command stands for.
    pub fn of(command: &Command) -> Event {
        match command {
            Command::OptNeg { .. } => Event::OptNeg,
            Command::Macro { .. } => Event::Macro,
            Command::Connect { .. } => Event::Connect,
            Command::Helo(_) => Event::Helo,
            Command::Mail { .. } => Event::Mail,
            Command::Rcpt { .. } => Event::Rcpt,
            Command::Data => Event::Data,
            Command::Header { .. } => Event::Header,
            Command::EndOfHeaders => Event::EndOfHeaders,
            Command::Body(_) => Event::Body,
            Command::EndOfMessage(_) => Event::EndOfMessage,
            Command::Unknown(_) => Event::Unknown,
            Command::Abort => Event::Abort,
            Command::Quit => Event::Quit,
            Command::QuitNewConnection => Event::QuitNewConnection,
        }
    }
}

/// Where an event leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    To(State),
    Stay,
}

use State as S;

/// States in which the MTA may talk about the connection (everything between negotiation
/// and QUIT).
const LIVE: &[State] = &[
    S::Negotiated,
    S::Idle,
    S::Mail,
    S::Rcpt,
    S::Data,
    S::Headers,
    S::Body,
];
/// States inside a connection (after CONNECT).
const CONNECTED: &[State] = &[S::Idle, S::Mail, S::Rcpt, S::Data, S::Headers, S::Body];

/// The legal order of stages, as libmilter and Postfix follow it: for each event, the states
/// it may arrive in and where it leads. Anything else is a protocol violation that closes the
/// connection. MACRO may precede any command; ABORT (Postfix sends one after every message,
/// after RSET and after STARTTLS, sometimes twice) ends the message, never the connection;
/// DATA is optional before the headers (protocol versions before 4 do not send it).
const TRANSITIONS: &[(Event, &[State], Next)] = &[
    (Event::OptNeg, &[S::Start], Next::To(S::Negotiated)),
    (Event::Macro, LIVE, Next::Stay),
    (Event::Connect, &[S::Negotiated], Next::To(S::Idle)),
    (Event::Helo, &[S::Idle], Next::To(S::Idle)),
    (Event::Mail, &[S::Idle], Next::To(S::Mail)),
    (Event::Rcpt, &[S::Mail, S::Rcpt], Next::To(S::Rcpt)),
    (Event::Data, &[S::Rcpt], Next::To(S::Data)),
    (
        Event::Header,
        &[S::Rcpt, S::Data, S::Headers],
        Next::To(S::Headers),
    ),
    (
        Event::EndOfHeaders,
        &[S::Rcpt, S::Data, S::Headers],
        Next::To(S::Body),
    ),
    (Event::Body, &[S::Body], Next::To(S::Body)),
    (Event::EndOfMessage, &[S::Body], Next::To(S::Idle)),
    (Event::Unknown, &[S::Idle, S::Mail, S::Rcpt], Next::Stay),
    (Event::Abort, CONNECTED, Next::To(S::Idle)),
    (Event::Quit, LIVE, Next::To(S::Closed)),
    (Event::QuitNewConnection, LIVE, Next::To(S::Negotiated)),
];

impl State {
    /// The state after `event`, or `None` if the event may not come now.
    pub fn next(self, event: Event) -> Option<State> {
        TRANSITIONS
            .iter()
            .find(|(e, from, _)| *e == event && from.contains(&self))
            .map(|(_, _, next)| match next {
                Next::To(state) => *state,
                Next::Stay => self,
            })
    }

    /// Whether `event` may come in this state.
    pub fn has_transition(self, event: Event) -> bool {
        self.next(event).is_some()
    }

    /// Inside a mail transaction (between MAIL and end-of-message).
    fn in_message(self) -> bool {
        matches!(self, S::Mail | S::Rcpt | S::Data | S::Headers | S::Body)
    }
}

/// Why a session cannot go on; the server closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A command that may not come in the current state.
    #[error("milter protocol violation: {event:?} in state {state:?}")]
    OutOfOrder {
        /// Where the conversation stood.
        state: State,
        /// What came.
        event: Event,
    },
    /// The MTA speaks a protocol version we do not.
    #[error("MTA offers milter protocol version {0}; at least {MIN_PROT_VERSION} is needed")]
    Version(u32),
}

/// The SMTP session's state: lives from CONNECT to QUIT or end-of-file.
#[derive(Debug)]
struct Connection {
    started: Instant,
    macros: Macros,
    /// The lease, held from the first allowed authenticated MAIL until the session ends, and
    /// the opened session (`session_opened` audited).
    hold: Hold,
    /// Messages accepted at end-of-message.
    messages: u32,
}

/// What Postfix told us about the SMTP session.
#[derive(Debug, Default)]
struct Macros {
    client_address: Option<String>,
    /// `{auth_authen}`: sent with MAIL, kept for the session.
    login: Option<String>,
    /// `{auth_type}`.
    sasl_method: Option<String>,
    /// `{tls_version}`.
    tls: Option<String>,
    /// Postfix's queue id (`i`) for the message in progress; arrives with RCPT or DATA.
    queue_id: Option<String>,
}

impl Connection {
    fn new() -> Connection {
        Connection {
            started: Instant::now(),
            macros: Macros::default(),
            hold: Hold::new(Scope::Session),
            messages: 0,
        }
    }
}

/// The facts of the session and its message for the admission step and the audit events.
fn facts<'a>(peer: &'a str, macros: &'a Macros, msg: Option<&'a Message>) -> Facts<'a> {
    Facts {
        front_end: FrontEnd::Milter,
        peer,
        login: macros.login.as_deref().unwrap_or_default(),
        client_address: macros.client_address.as_deref(),
        tls: macros.tls.as_deref(),
        sasl_mechanism: macros.sasl_method.as_deref(),
        sender: msg.map(|m| m.sender.as_str()),
        recipients: msg.map_or(&[], |m| m.recipients.as_slice()),
        queue_id: macros.queue_id.as_deref(),
    }
}

/// An allowed, authenticated message: who sends it.
#[derive(Debug)]
struct Sender {
    mailbox: String,
    organization: String,
}

/// The Sent Items capture of one message.
#[derive(Debug)]
enum Capture {
    /// Not copied (Sent Items disabled for the mailbox, or no spool).
    Off,
    /// Streaming into the spool; `folder` is where the copy goes.
    Writing { writer: SpoolWriter, folder: String },
    /// A write failed: the message will be tempfailed at end-of-message.
    Failed(String),
}

/// One mail transaction: from MAIL to end-of-message or ABORT.
#[derive(Debug)]
struct Message {
    /// Envelope sender without angle brackets (empty for `<>`).
    sender: String,
    recipients: Vec<String>,
    message_id: Option<String>,
    /// `Some` for an allowed authenticated submission.
    submitter: Option<Sender>,
    capture: Capture,
    /// Bytes of the message as rebuilt (headers, blank line, body).
    size: u64,
}

/// One milter connection's conversation.
pub struct Session {
    ctx: Context,
    /// The policy as it was when the session started: a reload in the middle of a session
    /// applies from the next session on, never half-way.
    policy: Arc<PolicySnapshot>,
    spool: Option<Spool>,
    peer: String,
    state: State,
    /// The protocol flags we negotiated (`SMFIP_*`).
    protocol: u32,
    conn: Connection,
    msg: Option<Message>,
}

impl Session {
    /// A conversation with the MTA at `peer` (for log lines). `spool` is where allowed
    /// messages are captured; `None` disables capture.
    pub fn new(ctx: Context, spool: Option<Spool>, peer: impl Into<String>) -> Session {
        Session {
            policy: ctx.policy.load_full(),
            ctx,
            spool,
            peer: peer.into(),
            state: State::Start,
            protocol: 0,
            conn: Connection::new(),
            msg: None,
        }
    }

    /// Where the conversation stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// The protocol flags agreed at negotiation (0 before).
    pub fn protocol(&self) -> u32 {
        self.protocol
    }

    /// Handles one command and returns the reply to send, if the MTA waits for one (never
    /// for MACRO, ABORT, QUIT, nor for the events negotiated as `SMFIP_NR_*`). An error means
    /// the connection must be closed (then call [`Session::finish`]).
    pub async fn handle(&mut self, command: Command) -> Result<Option<Reply>, SessionError> {
        let event = Event::of(&command);
        let Some(next) = self.state.next(event) else {
            return Err(SessionError::OutOfOrder {
                state: self.state,
                event,
            });
        };
        self.state = next;
        let expects_reply = command.expects_reply(self.protocol);
        let reply = match command {
            Command::OptNeg {
                version,
                actions: _,
                protocol,
            } => {
                if version < MIN_PROT_VERSION {
                    return Err(SessionError::Version(version));
                }
                self.protocol = protocol & WANTED_PROTOCOL;
                Reply::OptNeg {
                    version: version.min(SMFI_PROT_VERSION),
                    actions: WANTED_ACTIONS,
                    protocol: self.protocol,
                }
            }
            Command::Macro { macros, .. } => {
                self.take_macros(&macros);
                Reply::Continue
            }
            Command::Connect { address, .. } => {
                self.conn.macros.client_address = non_empty(&address);
                Reply::Continue
            }
            Command::Helo(_) | Command::Data | Command::Unknown(_) => Reply::Continue,
            Command::Mail { args } => self.mail(&args).await,
            Command::Rcpt { args } => {
                if let (Some(msg), Some(rcpt)) = (self.msg.as_mut(), args.first()) {
                    msg.recipients.push(address(rcpt));
                }
                Reply::Continue
            }
            Command::Header { name, value } => {
                self.header(&name, &value).await;
                Reply::Continue
            }
            Command::EndOfHeaders => {
                self.capture(b"\r\n").await;
                Reply::Continue
            }
            Command::Body(chunk) => {
                self.capture(&chunk).await;
                Reply::Continue
            }
            Command::EndOfMessage(chunk) => {
                self.capture(&chunk).await;
                self.end_of_message().await
            }
            Command::Abort => {
                self.end_message();
                Reply::Continue
            }
            Command::Quit => Reply::Continue,
            Command::QuitNewConnection => {
                // The socket stays for a new SMTP session; negotiation still holds.
                self.finish().await;
                self.conn = Connection::new();
                Reply::Continue
            }
        };
        // A reply other than "continue" ends the message for the MTA: it sends nothing more
        // about it (accept, reject, tempfail), so neither do we expect anything.
        if self.state.in_message()
            && matches!(
                reply,
                Reply::Accept | Reply::Reject | Reply::TempFail | Reply::ReplyCode(_)
            )
        {
            self.end_message();
            self.state = State::Idle;
        }
        Ok(expects_reply.then_some(reply))
    }

    /// Ends the session: releases the lease (exactly once: it is taken out) and audits
    /// `session_closed` if the session had been opened. Idempotent.
    pub async fn finish(&mut self) {
        self.end_message();
        if let Some(lease) = self.conn.hold.take_lease() {
            tracing::debug!(peer = %self.peer, mailbox = lease.mailbox(), "milter session ended; lease released");
            lease.release().await;
        }
        if let Some(Opened {
            mailbox,
            organization,
        }) = self.conn.hold.take_opened()
        {
            let mut ev = self.event(EventKind::SessionClosed);
            ev.queue_id = None;
            ev.mailbox = Some(mailbox);
            ev.organization = Some(organization);
            ev.duration_ms =
                Some(u64::try_from(self.conn.started.elapsed().as_millis()).unwrap_or(u64::MAX));
            ev.messages = Some(self.conn.messages);
            self.ctx.audit.record(ev).await;
        }
    }

    fn take_macros(&mut self, macros: &[(Bytes, Bytes)]) {
        if let Some(v) = macro_value(macros, "{auth_authen}").and_then(non_empty) {
            self.conn.macros.login = Some(v);
        }
        if let Some(v) = macro_value(macros, "{auth_type}").and_then(non_empty) {
            self.conn.macros.sasl_method = Some(v);
        }
        if let Some(v) = macro_value(macros, "{tls_version}").and_then(non_empty) {
            self.conn.macros.tls = Some(v);
        }
        if let Some(v) = macro_value(macros, "i").and_then(non_empty) {
            self.conn.macros.queue_id = Some(v);
        }
    }

    fn event(&self, kind: EventKind) -> AuditEvent {
        facts(&self.peer, &self.conn.macros, self.msg.as_ref()).event(kind)
    }

    /// The decision at MAIL FROM.
    async fn mail(&mut self, args: &[Bytes]) -> Reply {
        // The MAIL-stage macros (the queue id among them) came just before: keep them.
        self.drop_message();
        self.msg = Some(Message {
            sender: args.first().map(|s| address(s)).unwrap_or_default(),
            recipients: Vec::new(),
            message_id: None,
            submitter: None,
            capture: Capture::Off,
            size: 0,
        });
        if self.conn.macros.login.is_none() {
            // Not a submission: nothing to count, decide or copy for this message.
            self.ctx
                .stats
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
            return Reply::Accept;
        }
        let facts = facts(&self.peer, &self.conn.macros, self.msg.as_ref());
        let outcome = admission::admit(&self.ctx, &self.policy, &facts, &mut self.conn.hold).await;
        let allowed = match outcome {
            admission::Outcome::Admitted { allowed, .. } => allowed,
            admission::Outcome::Refused(refusal) | admission::Outcome::Deferred(refusal) => {
                return Reply::ReplyCode(refusal.reply)
            }
        };
        let capture = match &self.spool {
            Some(spool) if allowed.sent_items.enabled => Capture::Writing {
                writer: spool.begin(),
                folder: allowed.sent_items.folder,
            },
            _ => Capture::Off,
        };
        if let Some(msg) = self.msg.as_mut() {
            msg.capture = capture;
            msg.submitter = Some(Sender {
                mailbox: allowed.mailbox,
                organization: allowed.organization,
            });
        }
        Reply::Continue
    }

    /// One header, rebuilt as the client sent it: `\n` folds back to CRLF folds; the value's
    /// leading space is on the wire when `SMFIP_HDR_LEADSPC` was negotiated, else restored.
    async fn header(&mut self, name: &[u8], value: &[u8]) {
        let Some(msg) = self.msg.as_mut() else {
            return;
        };
        if msg.message_id.is_none() && name.eq_ignore_ascii_case(b"Message-ID") {
            msg.message_id = non_empty(&unfold(value));
        }
        if msg.submitter.is_none() {
            return;
        }
        let mut line = Vec::with_capacity(name.len() + value.len() + 8);
        line.extend_from_slice(name);
        line.push(b':');
        if self.protocol & SMFIP_HDR_LEADSPC == 0 {
            line.push(b' ');
        }
        crlf_folds(value, &mut line);
        line.extend_from_slice(b"\r\n");
        self.capture(&line).await;
    }

    /// Appends message bytes to the capture; a failing write turns the capture into a
    /// failure reported at end-of-message.
    async fn capture(&mut self, bytes: &[u8]) {
        let Some(msg) = self.msg.as_mut() else {
            return;
        };
        msg.size += bytes.len() as u64;
        if bytes.is_empty() {
            return;
        }
        if let Capture::Writing { writer, .. } = &mut msg.capture {
            if let Err(e) = writer.write(bytes).await {
                tracing::error!(peer = %self.peer, queue_id = self.conn.macros.queue_id.as_deref(), "Sent Items capture failed: {e}");
                msg.capture = Capture::Failed(e.to_string());
            }
        }
    }

    /// End-of-message: the sending limits judge the message with its recipients (refused or
    /// deferred here, the whole message: the milter never answers at RCPT, see
    /// [`WANTED_PROTOCOL`]); then commit the copy (durable before we answer), then "continue".
    /// If the copy cannot be made, tempfail so that no accepted message lacks its copy, and
    /// take the message's count back: it was not accepted.
    async fn end_of_message(&mut self) -> Reply {
        let Some(msg) = self.msg.take() else {
            return Reply::Continue;
        };
        let Some(submitter) = &msg.submitter else {
            return Reply::Continue;
        };
        let facts = facts(&self.peer, &self.conn.macros, Some(&msg));
        let verdict = admission::accept(
            &self.ctx,
            &self.policy,
            &facts,
            &mut self.conn.hold,
            Some(&msg.recipients),
            None,
        )
        .await;
        match verdict {
            admission::Accept::Accepted => {}
            admission::Accept::Refused(refusal) | admission::Accept::Deferred(refusal) => {
                tracing::debug!(peer = %self.peer, mailbox = %submitter.mailbox, reason = %refusal.reason, "message refused at end-of-message");
                if let Capture::Writing { writer, .. } = msg.capture {
                    writer.abort();
                }
                self.conn.macros.queue_id = None;
                return Reply::ReplyCode(refusal.reply);
            }
        }
        let Some(submitter) = msg.submitter else {
            return Reply::Continue;
        };
        let queue_id = self.conn.macros.queue_id.clone().unwrap_or_default();
        let outcome = match msg.capture {
            Capture::Off => Ok(None),
            Capture::Failed(e) => Err(e),
            Capture::Writing { writer, folder } => {
                let meta = EntryMeta {
                    mailbox: submitter.mailbox.clone(),
                    organization: submitter.organization.clone(),
                    folder,
                    queue_id: queue_id.clone(),
                    message_id: msg.message_id.clone(),
                    sender: msg.sender.clone(),
                    recipients: msg.recipients.clone(),
                    submitted_at: SystemTime::now(),
                    size: 0,
                };
                writer
                    .commit(meta)
                    .await
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
        };
        let mut ev = self.event(EventKind::SubmissionCompleted);
        ev.queue_id = non_empty(queue_id.as_bytes());
        ev.sender = Some(msg.sender);
        ev.mailbox = Some(submitter.mailbox);
        ev.organization = Some(submitter.organization);
        ev.size = Some(msg.size);
        ev.recipient_count = u32::try_from(msg.recipients.len()).ok();
        self.conn.macros.queue_id = None;
        match outcome {
            Ok(entry) => {
                self.conn.messages += 1;
                ev.spool_entry = entry.map(|id| id.to_string());
                self.ctx.audit.record(ev).await;
                Reply::Continue
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, queue_id = %queue_id, "cannot spool the Sent Items copy; message tempfailed: {e}");
                admission::unaccept(&self.ctx, &mut self.conn.hold).await;
                let reply = self.ctx.replies.tempfail.clone();
                ev.event = EventKind::SentCopyFailed;
                ev.reason = Some(Reason::SpoolUnavailable);
                crate::metrics::decision(FrontEnd::Milter, crate::audit::Outcome::Defer, ev.reason);
                ev.reply = Some(reply.to_string());
                ev.message = Some(e);
                self.ctx.audit.record(ev).await;
                Reply::ReplyCode(reply)
            }
        }
    }

    /// Ends the message in progress: drops it (its capture's temp file with it) and forgets
    /// its queue id.
    fn end_message(&mut self) {
        self.drop_message();
        self.conn.macros.queue_id = None;
    }

    fn drop_message(&mut self) {
        if let Some(msg) = self.msg.take() {
            if let Capture::Writing { writer, .. } = msg.capture {
                writer.abort();
            }
        }
    }
}

/// A macro or address value as text; `None` when empty.
fn non_empty(v: &[u8]) -> Option<String> {
    (!v.is_empty()).then(|| String::from_utf8_lossy(v).into_owned())
}

/// `<alice@contoso.com>` → `alice@contoso.com`; `<>` → empty.
fn address(arg: &[u8]) -> String {
    let text = String::from_utf8_lossy(arg);
    let trimmed = text.trim();
    trimmed
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(trimmed)
        .to_string()
}

/// A header value on one line, trimmed (for Message-ID).
fn unfold(value: &[u8]) -> Vec<u8> {
    let joined: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\n' && b != b'\r')
        .collect();
    joined.trim_ascii().to_vec()
}

/// Copies a header value turning each bare `\n` (Postfix's fold marker) into CRLF.
fn crlf_folds(value: &[u8], out: &mut Vec<u8>) {
    let mut prev = 0u8;
    for &b in value {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
}

#[cfg(test)]
mod tests;
