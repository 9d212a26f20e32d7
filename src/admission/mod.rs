//! The admission step: the one place that decides whether an authenticated submission may go
//! on. Given the policy snapshot, the shared [`Context`] (limiter, audit, replies) and what a
//! front end knows ([`Facts`]), [`admit`] evaluates the policy, takes or reuses the mailbox's
//! lease, writes the audit event and the log line, and returns a typed [`Outcome`] carrying its
//! [`Reason`] and [`SmtpReply`]. The Dovecot auth policy endpoint checks at AUTH, before anything
//! is submitted: [`check_login`] is its lease-free entry point. No sockets, no protocol: the
//! front ends only translate outcomes into their replies.
//!
//! Arrows: front ends (milter, postfix_policy, auth_policy) → admission → policy / limiter /
//! audit (reached through [`crate::context`]); this module never imports a front end, `daemon`
//! or `config`. A new rule (sending limits, authentication policies, TLS) is added here, once:
//! the facts already carry TLS and the SASL mechanism, and every refusal is a [`Refusal`].
//!
//! The first rule is [`login::check`]: a login that cannot be a mailbox (control characters,
//! an empty local part, over 320 bytes) is refused with [`Reason::InvalidLogin`] before the
//! policy sees it, at AUTH and at submission alike. Logins reach log lines only escaped.
//!
//! Sending limits and restricted senders ([`limits`]) run at three points: [`admit`] (the
//! start of a message: restricted sender, message rate, with the lease in one limiter step),
//! [`recipient`] (each RCPT the policy front end sees) and [`accept`] (the end of the message:
//! judged and counted only if accepted; [`unaccept`] takes it back if it is not after all).
//!
//! After the policy allows the mailbox come [`auth_rules`]: TLS required, legacy TLS and Basic
//! authentication, each enforced or, in `report_only` mode, audited as `would_refuse`.

pub mod auth_rules;
pub mod limits;
pub mod login;

pub use limits::{accept, count_recipients, recipient, release_sender, unaccept, Accept};

use crate::audit::{AuditEvent, EventKind, FrontEnd, Outcome as AuditOutcome};
use crate::auth_protocol::TlsSeen;
use crate::context::Context;
use crate::limiter::{Lease, Opening, Usage};
use crate::policy::{evaluate, Allowed, Decision, PolicySnapshot, Submission};
use crate::reason::Reason;
use crate::reply::SmtpReply;
use auth_rules::{Findings, Seen};

/// What a front end knows about a submission when it asks.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub front_end: FrontEnd,
    /// The MTA connection the request came on, for log lines.
    pub peer: &'a str,
    /// The SASL login (`sasl_username` / `{auth_authen}`), as the client gave it.
    pub login: &'a str,
    /// The SMTP client's address.
    pub client_address: Option<&'a str>,
    /// The TLS protocol of the SMTP session (`TLSv1.3`), when known.
    pub tls: Option<&'a str>,
    /// The SASL mechanism (`PLAIN`, `XOAUTH2`), when known.
    pub sasl_mechanism: Option<&'a str>,
    /// The envelope sender as the front end audits it (the milter keeps `<>` as an empty
    /// string, the policy front end leaves it out).
    pub sender: Option<&'a str>,
    /// The recipients known so far (none at MAIL FROM).
    pub recipients: &'a [String],
    /// Postfix's queue id, when known.
    pub queue_id: Option<&'a str>,
}

impl Facts<'_> {
    /// An audit event of `kind` with the fields every submission event carries.
    pub fn event(&self, kind: EventKind) -> AuditEvent {
        let mut ev = AuditEvent::new(kind);
        ev.front_end = Some(self.front_end);
        ev.client_address = self.client_address.map(str::to_string);
        ev.queue_id = self.queue_id.map(str::to_string);
        ev.tls = self.tls.map(str::to_string);
        ev.sasl_method = self.sasl_mechanism.map(str::to_string);
        ev.sender = self.sender.map(str::to_string);
        ev
    }

    /// What the authentication rules look at: an absent TLS protocol is a session without TLS.
    pub fn seen(&self) -> Seen<'_> {
        Seen {
            tls: TlsSeen::of_protocol(self.tls),
            mechanism: self.sasl_mechanism,
        }
    }
}

/// How long a lease lives, which also decides what is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One SMTP session (milter): the first admitted submission takes the lease and opens the
    /// session (`session_opened`); later submissions of the session reuse it (one for another
    /// mailbox gives it back first); every admitted submission is audited.
    Session,
    /// One mail transaction (policy front end): a transaction that holds a lease keeps it; the
    /// allow decision is audited once per transaction, even if its lease expired and is taken
    /// again.
    Transaction,
}

/// The mailbox and organization of an opened session (for `session_closed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub mailbox: String,
    pub organization: String,
}

/// What a session or transaction holds across admissions: its lease and what was audited about
/// it. The front end keeps it, gives the lease back when its scope ends and never looks inside.
#[derive(Debug)]
pub struct Hold {
    scope: Scope,
    lease: Option<Lease>,
    opened: Option<Opened>,
    allow_audited: bool,
    /// The message in progress, for the sending limits.
    tracked: Option<limits::Tracked>,
}

impl Hold {
    /// An empty hold for a session or a transaction.
    pub fn new(scope: Scope) -> Hold {
        Hold {
            scope,
            lease: None,
            opened: None,
            allow_audited: false,
            tracked: None,
        }
    }

    /// Whether a lease is held.
    pub fn is_held(&self) -> bool {
        self.lease.is_some()
    }

    /// Takes the lease out (to give it back); the hold keeps what was audited.
    pub fn take_lease(&mut self) -> Option<Lease> {
        self.lease.take()
    }

    /// Takes the opened session out (to audit `session_closed` exactly once).
    pub fn take_opened(&mut self) -> Option<Opened> {
        self.opened.take()
    }
}

/// A refusal or a deferral: why, and what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub reply: SmtpReply,
    /// The normalized mailbox.
    pub mailbox: String,
    /// `None` when no organization claims the mailbox's domain.
    pub organization: Option<String>,
}

/// The outcome of [`admit`]; its audit event is already written.
#[derive(Debug)]
pub enum Outcome {
    /// The submission goes on; the lease is in the [`Hold`]. With the limiter's
    /// `on_error: allow` an unreachable Redis also admits (with a lease counted later).
    Admitted {
        allowed: Allowed,
        /// Sessions in use for the mailbox when this was decided (`None` when a transaction
        /// went on with the lease it held).
        in_use: Option<u32>,
    },
    /// Refused: the policy disables the mailbox or its organization, the login cannot be a
    /// mailbox (then `mailbox` is the login escaped, [`login::shown`]), or an enforced
    /// authentication rule refuses the session (legacy TLS answers `421`: Postfix then closes
    /// the connection). The reply's class is the audit decision: 5xx `reject`, 4xx `defer`.
    Refused(Refusal),
    /// Try again later (4xx): over the mailbox's limit, or the limiter cannot answer.
    Deferred(Refusal),
}

/// The admission step for one submission: policy, then the lease (per `hold`'s scope); audits
/// `submission_decision` (and `session_opened` for a session's first admission).
pub async fn admit(
    ctx: &Context,
    snapshot: &PolicySnapshot,
    facts: &Facts<'_>,
    hold: &mut Hold,
) -> Outcome {
    let _timer = crate::metrics::DecisionTimer::start(facts.front_end);
    if let Err(problem) = login::check(facts.login) {
        let refusal = Refusal {
            reason: Reason::InvalidLogin,
            reply: ctx.replies.for_reason(Reason::InvalidLogin).clone(),
            mailbox: login::shown(facts.login),
            organization: None,
        };
        tracing::info!(
            peer = facts.peer,
            login = %refusal.mailbox,
            %problem,
            "submission refused: invalid login"
        );
        record_refusal(ctx, facts, AuditOutcome::Reject, &refusal, None, None).await;
        return Outcome::Refused(refusal);
    }
    let allowed = match evaluate(snapshot, &Submission { login: facts.login }) {
        Decision::Allow(allowed) => allowed,
        Decision::Reject {
            reason,
            mailbox,
            organization,
        } => {
            let refusal = Refusal {
                reply: ctx.replies.for_reason(reason).clone(),
                reason,
                mailbox,
                organization,
            };
            record_refusal(ctx, facts, AuditOutcome::Reject, &refusal, None, None).await;
            return Outcome::Refused(refusal);
        }
    };
    let findings = auth_rules::check(&allowed.auth, &facts.seen());
    if let Some(reason) = findings.refusal() {
        let refusal = Refusal {
            reply: ctx.replies.for_reason(reason).clone(),
            reason,
            mailbox: allowed.mailbox,
            organization: Some(allowed.organization),
        };
        tracing::info!(
            peer = facts.peer,
            mailbox = %refusal.mailbox,
            %reason,
            tls = facts.tls,
            mechanism = facts.sasl_mechanism,
            "submission refused by an authentication rule"
        );
        let decision = if refusal.reply.code >= 500 {
            AuditOutcome::Reject
        } else {
            AuditOutcome::Defer
        };
        record_refusal(ctx, facts, decision, &refusal, None, None).await;
        return Outcome::Refused(refusal);
    }
    match hold.scope {
        Scope::Session => admit_session(ctx, facts, allowed, &findings, hold).await,
        Scope::Transaction => admit_transaction(ctx, facts, allowed, &findings, hold).await,
    }
}

async fn admit_session(
    ctx: &Context,
    facts: &Facts<'_>,
    allowed: Allowed,
    findings: &Findings,
    hold: &mut Hold,
) -> Outcome {
    // A session holds one lease, for the mailbox it authenticated as.
    if let Some(lease) = hold.lease.take_if(|l| l.mailbox() != allowed.mailbox) {
        lease.release().await;
    }
    let want_lease = hold.lease.is_none();
    let in_use = match open(ctx, facts, &allowed, want_lease, hold).await {
        Ok(in_use) => in_use,
        Err(refused) => return refused,
    };
    if hold.opened.is_none() {
        let mut ev = facts.event(EventKind::SessionOpened);
        ev.mailbox = Some(allowed.mailbox.clone());
        ev.organization = Some(allowed.organization.clone());
        ev.sessions_in_use = Some(in_use);
        ev.limit = Some(allowed.limit);
        ctx.audit.record(ev).await;
        hold.opened = Some(Opened {
            mailbox: allowed.mailbox.clone(),
            organization: allowed.organization.clone(),
        });
    }
    record_allow(ctx, facts, &allowed, findings, in_use).await;
    Outcome::Admitted {
        allowed,
        in_use: Some(in_use),
    }
}

async fn admit_transaction(
    ctx: &Context,
    facts: &Facts<'_>,
    allowed: Allowed,
    findings: &Findings,
    hold: &mut Hold,
) -> Outcome {
    if hold.lease.is_some() {
        return Outcome::Admitted {
            allowed,
            in_use: None,
        };
    }
    match open(ctx, facts, &allowed, true, hold).await {
        Ok(in_use) => {
            if !std::mem::replace(&mut hold.allow_audited, true) {
                record_allow(ctx, facts, &allowed, findings, in_use).await;
            }
            Outcome::Admitted {
                allowed,
                in_use: Some(in_use),
            }
        }
        Err(refused) => refused,
    }
}

/// The limiter's step at the start of a message: a restricted sender is refused, a mailbox
/// over its message rate deferred, and a lease taken when `want_lease` (into `hold`), in one
/// limiter call. Returns the sessions in use; a refusal is audited, logged and returned as
/// the [`Outcome`] to give.
async fn open(
    ctx: &Context,
    facts: &Facts<'_>,
    allowed: &Allowed,
    want_lease: bool,
    hold: &mut Hold,
) -> Result<u32, Outcome> {
    // A transaction admitted again (its lease went idle) keeps the recipients it counted.
    let scope = hold.scope;
    let counted = hold
        .tracked
        .take()
        .filter(|t| scope == Scope::Transaction && t.mailbox == allowed.mailbox)
        .map(|t| t.count);
    let mpm = allowed.limits.messages_per_minute;
    let lease_limit = want_lease.then_some(allowed.limit);
    let (reason, in_use, limit) = match ctx.limiter.open(&allowed.mailbox, lease_limit, mpm).await {
        Opening::Open {
            lease,
            in_use,
            usage,
        } => {
            if lease.is_some() {
                hold.lease = lease;
            }
            let mut tracked = track(allowed, usage);
            tracked.count = counted.unwrap_or_default();
            hold.tracked = Some(tracked);
            return Ok(in_use);
        }
        Opening::Blocked(entry) => {
            let refusal = limits::refuse_restricted(
                ctx,
                facts,
                &allowed.mailbox,
                &allowed.organization,
                &entry,
            )
            .await;
            return Err(Outcome::Refused(refusal));
        }
        Opening::MessageRate { usage } => {
            let refusal = limits::defer_message_rate(
                ctx,
                facts,
                &allowed.mailbox,
                &allowed.organization,
                &usage,
                mpm,
            )
            .await;
            return Err(Outcome::Deferred(refusal));
        }
        Opening::Full { in_use, limit } => (Reason::ConcurrencyLimit, Some(in_use), limit),
        Opening::Unavailable => (Reason::LimiterUnavailable, None, allowed.limit),
    };
    let refusal = Refusal {
        reply: ctx.replies.for_reason(reason).clone(),
        reason,
        mailbox: allowed.mailbox.clone(),
        organization: Some(allowed.organization.clone()),
    };
    tracing::info!(peer = facts.peer, mailbox = %refusal.mailbox, %reason, "submission deferred");
    record_refusal(
        ctx,
        facts,
        AuditOutcome::Defer,
        &refusal,
        in_use,
        Some(limit),
    )
    .await;
    Err(Outcome::Deferred(refusal))
}

/// What the sending-limit steps of this message need later.
fn track(allowed: &Allowed, usage: Usage) -> limits::Tracked {
    limits::Tracked {
        mailbox: allowed.mailbox.clone(),
        organization: allowed.organization.clone(),
        limits: allowed.limits,
        usage,
        count: Default::default(),
        counted: None,
    }
}

/// Audits an admitted submission: first a `would_refuse` event for each authentication rule in
/// `report_only` mode that it breaks, then the allow decision. Both come exactly once per
/// admitted submission (session scope) or transaction (transaction scope), so the report can
/// count them against the messages.
async fn record_allow(
    ctx: &Context,
    facts: &Facts<'_>,
    allowed: &Allowed,
    findings: &Findings,
    in_use: u32,
) {
    crate::metrics::decision(facts.front_end, AuditOutcome::Allow, None);
    for reason in findings.would_refuse() {
        crate::metrics::would_refuse(facts.front_end, reason);
        let mut ev = facts.event(EventKind::WouldRefuse);
        ev.mailbox = Some(allowed.mailbox.clone());
        ev.organization = Some(allowed.organization.clone());
        ev.reason = Some(reason);
        ev.reply = Some(ctx.replies.for_reason(reason).to_string());
        tracing::debug!(
            peer = facts.peer,
            mailbox = %allowed.mailbox,
            %reason,
            "submission would be refused (report_only): let through"
        );
        ctx.audit.record(ev).await;
    }
    let mut ev = facts.event(EventKind::SubmissionDecision);
    ev.mailbox = Some(allowed.mailbox.clone());
    ev.organization = Some(allowed.organization.clone());
    ev.decision = Some(AuditOutcome::Allow);
    ev.sessions_in_use = Some(in_use);
    ev.limit = Some(allowed.limit);
    ctx.audit.record(ev).await;
}

async fn record_refusal(
    ctx: &Context,
    facts: &Facts<'_>,
    decision: AuditOutcome,
    refusal: &Refusal,
    in_use: Option<u32>,
    limit: Option<u32>,
) {
    crate::metrics::decision(facts.front_end, decision, Some(refusal.reason));
    let mut ev = facts.event(EventKind::SubmissionDecision);
    ev.mailbox = Some(refusal.mailbox.clone());
    ev.organization.clone_from(&refusal.organization);
    ev.decision = Some(decision);
    ev.reason = Some(refusal.reason);
    ev.sessions_in_use = in_use;
    ev.limit = limit;
    ev.reply = Some(refusal.reply.to_string());
    ctx.audit.record(ev).await;
}

/// What the Dovecot auth policy endpoint knows at AUTH.
#[derive(Debug, Clone, Copy)]
pub struct LoginFacts<'a> {
    /// The login as the client gave it.
    pub login: &'a str,
    /// The client's address (`remote`).
    pub remote: Option<&'a str>,
    /// Dovecot's protocol (`smtp`, `submission`).
    pub protocol: Option<&'a str>,
    /// The SASL mechanism, when Dovecot sends it.
    pub sasl_mechanism: Option<&'a str>,
    /// Whether the login came over TLS, as Dovecot says.
    pub secured: Option<bool>,
}

impl LoginFacts<'_> {
    /// What the authentication rules look at: Dovecot knows whether the login is encrypted,
    /// never the TLS version, so legacy TLS cannot be judged at AUTH.
    pub fn seen(&self) -> Seen<'_> {
        Seen {
            tls: TlsSeen::of_secured(self.secured),
            mechanism: self.sasl_mechanism,
        }
    }
}

/// The answer at AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginCheck {
    /// The login may go ahead; `findings` are the authentication rules in `report_only` mode
    /// it breaks (what enforcing them would refuse it for).
    Allowed {
        allowed: Allowed,
        findings: Findings,
    },
    /// `text` is the auth policy refusal text (no SMTP code: Postfix adds `535 5.7.8`).
    Refused {
        reason: Reason,
        text: String,
        mailbox: String,
        organization: Option<String>,
    },
}

/// The lease-free check at AUTH: the policy and the authentication rules that can be judged
/// there (Basic authentication, TLS required; nothing is submitted yet, so nothing is counted).
/// A refusal is logged; the audit event comes with Dovecot's report.
pub fn check_login(ctx: &Context, snapshot: &PolicySnapshot, facts: &LoginFacts<'_>) -> LoginCheck {
    let _timer = crate::metrics::DecisionTimer::start(FrontEnd::AuthPolicy);
    let check = describe_login(ctx, snapshot, facts);
    let (outcome, reason) = match &check {
        LoginCheck::Allowed { .. } => (AuditOutcome::Allow, None),
        LoginCheck::Refused { reason, .. } => (AuditOutcome::Reject, Some(*reason)),
    };
    crate::metrics::decision(FrontEnd::AuthPolicy, outcome, reason);
    if let LoginCheck::Refused {
        reason, mailbox, ..
    } = &check
    {
        // An invalid login's `mailbox` is already escaped; a policy refusal's is a checked
        // login, normalized.
        let problem = login::check(facts.login).err().map(|p| p.to_string());
        tracing::info!(
            mailbox = %mailbox,
            reason = reason.as_str(),
            problem,
            remote = facts.remote,
            protocol = facts.protocol,
            mechanism = facts.sasl_mechanism,
            "login refused at AUTH"
        );
    }
    check
}

/// [`check_login`] without the log line: what the policy says now about a login (for the
/// audit of Dovecot's report).
pub fn describe_login(
    ctx: &Context,
    snapshot: &PolicySnapshot,
    facts: &LoginFacts<'_>,
) -> LoginCheck {
    if login::check(facts.login).is_err() {
        return LoginCheck::Refused {
            reason: Reason::InvalidLogin,
            text: ctx.replies.auth_text_for(Reason::InvalidLogin).to_string(),
            mailbox: login::shown(facts.login),
            organization: None,
        };
    }
    match evaluate(snapshot, &Submission { login: facts.login }) {
        Decision::Allow(allowed) => {
            let findings = auth_rules::check(&allowed.auth, &facts.seen());
            match findings.refusal() {
                Some(reason) => LoginCheck::Refused {
                    text: ctx.replies.auth_text_for(reason).to_string(),
                    reason,
                    mailbox: allowed.mailbox,
                    organization: Some(allowed.organization),
                },
                None => LoginCheck::Allowed { allowed, findings },
            }
        }
        Decision::Reject {
            reason,
            mailbox,
            organization,
        } => LoginCheck::Refused {
            text: ctx.replies.auth_text_for(reason).to_string(),
            reason,
            mailbox,
            organization,
        },
    }
}

#[cfg(test)]
mod tests;
