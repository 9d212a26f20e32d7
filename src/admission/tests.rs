//! Tests of the admission step: outcomes, leases per scope and the audit events it writes
//! (read back from a real audit file), with the memory limiter and a snapshot built from YAML.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::*;
use crate::audit::{Audit, AuditWriter};
use crate::context::Stats;
use crate::limiter::redis::{OnError, RedisBackend, RedisSettings, Topology};
use crate::limiter::Limiter;
use crate::policy::reload::PolicyHandle;
use crate::policy::{load_files, LoadOptions};
use crate::reply::{self, Replies};

const CONTOSO: &str = "\
organization: contoso
domains: [contoso.com]
smtp_client_authentication_disabled: false
max_concurrent_sessions_per_mailbox: 3
mailboxes:
  blocked@contoso.com: { smtp_client_authentication_disabled: true }
  single@contoso.com: { max_concurrent_sessions_per_mailbox: 1 }
";

const FABRIKAM: &str = "\
organization: fabrikam
domains: [fabrikam.com]
smtp_client_authentication_disabled: true
";

/// Basic authentication off and TLS required; one mailbox keeps both old ways.
const WOODGROVE: &str = "\
organization: woodgrove
domains: [woodgrove.com]
allow_basic_auth_smtp: false
require_tls: true
mailboxes:
  legacy@woodgrove.com: { allow_basic_auth_smtp: true, allow_legacy_tls_clients: true, require_tls: false }
";

/// The same rules, only reported.
const TAILSPIN: &str = "\
organization: tailspin
domains: [tailspin.com]
allow_basic_auth_smtp: false
basic_auth_mode: report_only
require_tls: true
tls_mode: report_only
";

/// A context over the memory limiter with its audit log in a temporary directory.
struct Harness {
    ctx: Context,
    snapshot: Arc<PolicySnapshot>,
    audit_path: PathBuf,
    _writer: AuditWriter,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_limiter(Limiter::memory())
    }

    fn with_limiter(limiter: Limiter) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit_path = dir.path().join("audit.log");
        // The only line that knows how the audit log is configured.
        let (audit, writer) = Audit::start(&crate::audit::Settings {
            target: crate::audit::Target::File(audit_path.clone()),
            queue: 16,
            mode: crate::audit::DEFAULT_MODE,
        })
        .expect("audit log");
        let files = [
            ("contoso.yaml", CONTOSO),
            ("fabrikam.yaml", FABRIKAM),
            ("tailspin.yaml", TAILSPIN),
            ("woodgrove.yaml", WOODGROVE),
        ]
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect::<Vec<_>>();
        let snapshot = load_files(
            &files,
            &LoadOptions {
                default_domain: Some("contoso.com".into()),
            },
        )
        .expect("policy");
        let policy = PolicyHandle::new(snapshot);
        Harness {
            snapshot: policy.load_full(),
            ctx: Context {
                policy,
                limiter,
                audit,
                replies: Arc::new(Replies::default()),
                stats: Arc::new(Stats::default()),
            },
            audit_path,
            _writer: writer,
            _dir: dir,
        }
    }

    async fn admit(&self, facts: &Facts<'_>, hold: &mut Hold) -> Outcome {
        admit(&self.ctx, &self.snapshot, facts, hold).await
    }

    /// Every audit event written so far.
    async fn audit(&self) -> Vec<Value> {
        self.ctx.audit.flush().await;
        std::fs::read_to_string(&self.audit_path)
            .expect("audit file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

fn milter(login: &str) -> Facts<'_> {
    Facts {
        front_end: FrontEnd::Milter,
        peer: "127.0.0.1:4000",
        login,
        client_address: Some("192.0.2.7"),
        tls: Some("TLSv1.3"),
        sasl_mechanism: Some("PLAIN"),
        sender: Some(""),
        recipients: &[],
        queue_id: Some("5B0E4B672E"),
    }
}

fn policy(login: &str) -> Facts<'_> {
    Facts {
        front_end: FrontEnd::Policy,
        sender: None,
        queue_id: None,
        ..milter(login)
    }
}

fn admitted(outcome: Outcome) -> (Allowed, Option<u32>) {
    match outcome {
        Outcome::Admitted { allowed, in_use } => (allowed, in_use),
        other => panic!("expected admitted, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_opens_once_and_keeps_its_lease() {
    let h = Harness::new();
    let mut hold = Hold::new(Scope::Session);
    let (allowed, in_use) = admitted(h.admit(&milter("alice"), &mut hold).await);
    assert_eq!(allowed.mailbox, "alice@contoso.com");
    assert_eq!(allowed.organization, "contoso");
    assert_eq!(in_use, Some(1));
    assert!(hold.is_held());
    // The session's second message reuses its lease.
    let (_, in_use) = admitted(h.admit(&milter("alice"), &mut hold).await);
    assert_eq!(in_use, Some(1));
    assert_eq!(h.ctx.limiter.in_use("alice@contoso.com").await, 1);

    let audit = h.audit().await;
    let kinds: Vec<&str> = audit.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "session_opened",
            "submission_decision",
            "submission_decision"
        ]
    );
    for ev in &audit {
        assert_eq!(ev["front_end"], "milter");
        assert_eq!(ev["mailbox"], "alice@contoso.com");
        assert_eq!(ev["organization"], "contoso");
        assert_eq!(ev["client_address"], "192.0.2.7");
        assert_eq!(ev["tls"], "TLSv1.3");
        assert_eq!(ev["sasl_method"], "PLAIN");
        assert_eq!(ev["queue_id"], "5B0E4B672E");
        // The milter audits the null sender as an empty string.
        assert_eq!(ev["sender"], "");
        assert_eq!(ev["sessions_in_use"], 1);
        assert_eq!(ev["limit"], 3);
        assert!(ev.get("reason").is_none() && ev.get("reply").is_none());
    }
    assert_eq!(audit[1]["decision"], "allow");
    assert!(audit[0].get("decision").is_none());

    assert_eq!(
        hold.take_opened(),
        Some(Opened {
            mailbox: "alice@contoso.com".into(),
            organization: "contoso".into(),
        })
    );
    if let Some(lease) = hold.take_lease() {
        lease.release().await;
    }
    assert_eq!(h.ctx.limiter.in_use("alice@contoso.com").await, 0);
}

#[tokio::test]
async fn a_session_that_changes_mailbox_gives_the_old_lease_back() {
    let h = Harness::new();
    let mut hold = Hold::new(Scope::Session);
    admitted(h.admit(&milter("alice"), &mut hold).await);
    admitted(h.admit(&milter("bob"), &mut hold).await);
    assert_eq!(h.ctx.limiter.in_use("alice@contoso.com").await, 0);
    assert_eq!(h.ctx.limiter.in_use("bob@contoso.com").await, 1);
    let kinds: Vec<String> = h
        .audit()
        .await
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect();
    // Still one session.
    assert_eq!(
        kinds,
        [
            "session_opened",
            "submission_decision",
            "submission_decision"
        ]
    );
}

#[tokio::test]
async fn policy_refusals_carry_reason_and_reply() {
    let h = Harness::new();
    let cases = [
        (
            "blocked@contoso.com",
            Reason::MailboxDisabled,
            reply::MAILBOX_DISABLED,
            Some("contoso"),
        ),
        (
            "anyone@fabrikam.com",
            Reason::OrgDisabled,
            reply::TENANT_DISABLED,
            Some("fabrikam"),
        ),
        (
            "x@unknown.example",
            Reason::UnknownOrganization,
            reply::TENANT_DISABLED,
            None,
        ),
    ];
    for (login, reason, text, organization) in cases {
        let mut hold = Hold::new(Scope::Session);
        match h.admit(&milter(login), &mut hold).await {
            Outcome::Refused(r) => {
                assert_eq!(r.reason, reason);
                assert_eq!(r.reply.to_string(), text);
                assert_eq!(r.mailbox, login);
                assert_eq!(r.organization.as_deref(), organization);
            }
            other => panic!("{login}: {other:?}"),
        }
        assert!(!hold.is_held());
        assert_eq!(hold.take_opened(), None);
    }
    let audit = h.audit().await;
    assert_eq!(audit.len(), 3);
    for (ev, (login, reason, text, organization)) in audit.iter().zip(cases) {
        assert_eq!(ev["event"], "submission_decision");
        assert_eq!(ev["decision"], "reject");
        assert_eq!(ev["reason"], reason.as_str());
        assert_eq!(ev["reply"], text);
        assert_eq!(ev["mailbox"], login);
        assert_eq!(ev["organization"].as_str(), organization);
        assert!(ev.get("sessions_in_use").is_none() && ev.get("limit").is_none());
    }
}

#[tokio::test]
async fn over_the_limit_is_deferred_with_exchange_reply() {
    let h = Harness::new();
    let mut first = Hold::new(Scope::Session);
    admitted(h.admit(&milter("single"), &mut first).await);
    let mut second = Hold::new(Scope::Transaction);
    match h.admit(&policy("single"), &mut second).await {
        Outcome::Deferred(r) => {
            assert_eq!(r.reason, Reason::ConcurrencyLimit);
            assert_eq!(r.reply.to_string(), reply::CONCURRENCY_LIMIT);
            assert_eq!(r.mailbox, "single@contoso.com");
            assert_eq!(r.organization.as_deref(), Some("contoso"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!second.is_held());
    let audit = h.audit().await;
    let defer = audit.last().expect("an event");
    assert_eq!(defer["event"], "submission_decision");
    assert_eq!(defer["front_end"], "policy");
    assert_eq!(defer["decision"], "defer");
    assert_eq!(defer["reason"], "concurrency_limit");
    assert_eq!(defer["reply"], reply::CONCURRENCY_LIMIT);
    assert_eq!(defer["sessions_in_use"], 1);
    assert_eq!(defer["limit"], 1);
    // The policy front end leaves an empty sender and queue id out.
    assert!(defer.get("sender").is_none() && defer.get("queue_id").is_none());
}

#[tokio::test]
async fn a_transaction_audits_its_allow_once() {
    let h = Harness::new();
    let mut hold = Hold::new(Scope::Transaction);
    let (_, in_use) = admitted(h.admit(&policy("alice"), &mut hold).await);
    assert_eq!(in_use, Some(1));
    // Holding its lease, the transaction goes on without a new decision.
    let (_, in_use) = admitted(h.admit(&policy("alice"), &mut hold).await);
    assert_eq!(in_use, None);
    // Its lease expired (lease_idle_timeout) and is taken again: not audited twice.
    if let Some(lease) = hold.take_lease() {
        lease.release().await;
    }
    let (_, in_use) = admitted(h.admit(&policy("alice"), &mut hold).await);
    assert_eq!(in_use, Some(1));
    let audit = h.audit().await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["event"], "submission_decision");
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["front_end"], "policy");
    // A transaction never opens a session.
    assert_eq!(hold.take_opened(), None);
}

#[tokio::test]
async fn the_check_at_auth_takes_no_lease_and_writes_no_event() {
    let h = Harness::new();
    let facts = |login| LoginFacts {
        login,
        remote: Some("192.0.2.7"),
        protocol: Some("smtp"),
        sasl_mechanism: Some("PLAIN"),
        secured: Some(true),
    };
    match check_login(&h.ctx, &h.snapshot, &facts("blocked")) {
        LoginCheck::Refused {
            reason,
            text,
            mailbox,
            organization,
        } => {
            assert_eq!(reason, Reason::MailboxDisabled);
            assert_eq!(text, reply::AUTH_MAILBOX_DISABLED);
            assert_eq!(mailbox, "blocked@contoso.com");
            assert_eq!(organization.as_deref(), Some("contoso"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        describe_login(&h.ctx, &h.snapshot, &facts("x@fabrikam.com")),
        LoginCheck::Refused { reason: Reason::OrgDisabled, ref text, .. }
            if text == reply::AUTH_TENANT_DISABLED
    ));
    match check_login(&h.ctx, &h.snapshot, &facts("alice@contoso.com")) {
        LoginCheck::Allowed { allowed: a, .. } => assert_eq!(a.mailbox, "alice@contoso.com"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.ctx.limiter.in_use("alice@contoso.com").await, 0);
    assert!(h.audit().await.is_empty());
}

/// A Redis limiter that cannot reach its server (a socket that does not exist).
fn unreachable_redis(on_error: OnError) -> Limiter {
    let backend = RedisBackend::new(
        RedisSettings {
            topology: Topology::Single,
            url: "unix:///nonexistent/submitgate-test/redis.sock".into(),
            key_prefix: "sg:".into(),
            lease_ttl: std::time::Duration::from_secs(30),
            timeout: std::time::Duration::from_millis(50),
            on_error,
            node_id: "test".into(),
        },
        None,
    )
    .expect("a lazy redis client");
    Limiter::redis(backend)
}

#[tokio::test]
async fn an_unreachable_limiter_defers_with_tempfail() {
    let h = Harness::with_limiter(unreachable_redis(OnError::Tempfail));
    let mut hold = Hold::new(Scope::Session);
    match h.admit(&milter("alice"), &mut hold).await {
        Outcome::Deferred(r) => {
            assert_eq!(r.reason, Reason::LimiterUnavailable);
            assert_eq!(r.reply.to_string(), reply::TEMPFAIL);
        }
        other => panic!("{other:?}"),
    }
    assert!(!hold.is_held());
    assert_eq!(hold.take_opened(), None);
    let audit = h.audit().await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["decision"], "defer");
    assert_eq!(audit[0]["reason"], "limiter_unavailable");
    assert_eq!(audit[0]["reply"], reply::TEMPFAIL);
    assert_eq!(audit[0]["limit"], 3);
    assert!(audit[0].get("sessions_in_use").is_none());
}

#[tokio::test]
async fn an_unreachable_limiter_with_on_error_allow_admits() {
    let h = Harness::with_limiter(unreachable_redis(OnError::Allow));
    let mut hold = Hold::new(Scope::Transaction);
    let (allowed, in_use) = admitted(h.admit(&policy("alice"), &mut hold).await);
    assert_eq!(allowed.mailbox, "alice@contoso.com");
    // Not counted in Redis yet: the lease is written back when Redis answers again.
    assert_eq!(in_use, Some(0));
    assert!(hold.is_held());
    let audit = h.audit().await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["sessions_in_use"], 0);
    drop(hold);
}

/// Logins that cannot be mailboxes, each with the escaped form the audit event shows. The
/// whitespace-only one used to become `@contoso.com` (the default domain) and be allowed.
const INVALID_LOGINS: &[(&str, &str)] = &[
    ("   ", "\"   \""),
    ("@contoso.com", "@contoso.com"),
    ("alice\n@contoso.com", "alice\\n@contoso.com"),
    (
        "\u{1b}[31malice@contoso.com",
        "\\u{1b}[31malice@contoso.com",
    ),
    (
        "moc.\u{202e}alice@contoso.com",
        "moc.\\u{202e}alice@contoso.com",
    ),
    ("alice\u{85}@contoso.com", "alice\\u{85}@contoso.com"),
];

#[tokio::test]
async fn invalid_logins_are_refused_before_the_policy_and_audited() {
    let h = Harness::new();
    let too_long = format!("{}@contoso.com", "a".repeat(400));
    let too_long_shown = login::shown(&too_long);
    assert_eq!(too_long_shown.chars().count(), login::SHOWN_LOGIN_CHARS);
    let mut cases: Vec<(&str, &str)> = INVALID_LOGINS.to_vec();
    cases.push((&too_long, &too_long_shown));
    for (i, (bad, shown)) in cases.iter().enumerate() {
        // Both scopes, as the milter and the policy front end ask.
        let (facts, scope) = if i % 2 == 0 {
            (milter(bad), Scope::Session)
        } else {
            (policy(bad), Scope::Transaction)
        };
        let mut hold = Hold::new(scope);
        match h.admit(&facts, &mut hold).await {
            Outcome::Refused(r) => {
                assert_eq!(r.reason, Reason::InvalidLogin, "{bad:?}");
                assert_eq!(r.reply.to_string(), reply::INVALID_LOGIN);
                assert_eq!(r.mailbox, *shown);
                assert_eq!(r.organization, None);
            }
            other => panic!("{bad:?}: {other:?}"),
        }
        assert!(!hold.is_held());
        assert_eq!(hold.take_opened(), None);
    }
    // Nothing was counted, not even for the mailbox the default domain would have made.
    assert_eq!(h.ctx.limiter.in_use("@contoso.com").await, 0);
    let audit = h.audit().await;
    assert_eq!(audit.len(), cases.len());
    for (ev, (bad, shown)) in audit.iter().zip(&cases) {
        assert_eq!(ev["event"], "submission_decision", "{bad:?}");
        assert_eq!(ev["decision"], "reject");
        assert_eq!(ev["reason"], "invalid_login");
        assert_eq!(ev["reply"], reply::INVALID_LOGIN);
        assert_eq!(ev["mailbox"], *shown);
        assert!(ev.get("organization").map_or(true, Value::is_null));
        assert!(ev.get("session_opened").is_none());
    }
    // A valid login is still admitted after all that.
    let mut hold = Hold::new(Scope::Session);
    admitted(h.admit(&milter("alice@contoso.com"), &mut hold).await);
}

#[tokio::test]
async fn the_configured_invalid_login_reply_is_used() {
    let mut h = Harness::new();
    h.ctx.replies = Arc::new(Replies {
        invalid_login: "553 5.7.1 Bad login".parse().expect("reply"),
        auth_invalid_login: "Bad login".to_string(),
        ..Replies::default()
    });
    let mut hold = Hold::new(Scope::Transaction);
    match h.admit(&policy("a\u{7f}b@contoso.com"), &mut hold).await {
        Outcome::Refused(r) => assert_eq!(r.reply.to_string(), "553 5.7.1 Bad login"),
        other => panic!("{other:?}"),
    }
    let facts = LoginFacts {
        login: " ",
        remote: None,
        protocol: Some("smtp"),
        sasl_mechanism: None,
        secured: None,
    };
    assert!(matches!(
        check_login(&h.ctx, &h.snapshot, &facts),
        LoginCheck::Refused { reason: Reason::InvalidLogin, ref text, .. } if text == "Bad login"
    ));
}

#[tokio::test]
async fn the_check_at_auth_refuses_invalid_logins() {
    let h = Harness::new();
    for (bad, shown) in INVALID_LOGINS {
        let facts = LoginFacts {
            login: bad,
            remote: Some("192.0.2.7"),
            protocol: Some("smtp"),
            sasl_mechanism: Some("PLAIN"),
            secured: Some(true),
        };
        match check_login(&h.ctx, &h.snapshot, &facts) {
            LoginCheck::Refused {
                reason,
                text,
                mailbox,
                organization,
            } => {
                assert_eq!(reason, Reason::InvalidLogin, "{bad:?}");
                assert_eq!(text, reply::AUTH_INVALID_LOGIN);
                assert_eq!(mailbox, *shown);
                assert_eq!(organization, None);
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert!(h.audit().await.is_empty());
}

#[tokio::test]
async fn sending_limits_steps_count_only_accepted_messages() {
    let h = Harness::new();
    let mut hold = Hold::new(Scope::Transaction);
    admitted(h.admit(&policy("bob"), &mut hold).await);
    // 500 recipients pass at RCPT; the 501st is refused, the transaction goes on.
    for i in 0..500 {
        let r = format!("r{i}@example.net");
        assert!(
            recipient(&h.ctx, &h.snapshot, &policy("bob"), &mut hold, &r)
                .await
                .is_ok()
        );
    }
    let refused = recipient(
        &h.ctx,
        &h.snapshot,
        &policy("bob"),
        &mut hold,
        "x@example.net",
    )
    .await
    .unwrap_err();
    assert_eq!(refused.reason, Reason::RecipientsPerMessage);
    assert_eq!(refused.reply.to_string(), reply::RECIPIENTS_PER_MESSAGE);
    // End of message: counted with its 500 recipients, the lease given back.
    assert!(matches!(
        accept(
            &h.ctx,
            &h.snapshot,
            &policy("bob"),
            &mut hold,
            None,
            Some(500)
        )
        .await,
        Accept::Accepted
    ));
    assert!(!hold.is_held());
    assert_eq!(h.ctx.limiter.in_use("bob@contoso.com").await, 0);
    let state = h
        .ctx
        .limiter
        .mailbox_state("bob@contoso.com")
        .await
        .unwrap();
    assert_eq!(state.usage.recipients_last_day, 500);
    assert_eq!(state.usage.messages_last_minute, 1);

    // A milter message with 501 recipients is refused whole and counts nothing.
    let mut session = Hold::new(Scope::Session);
    admitted(h.admit(&milter("carol"), &mut session).await);
    let many: Vec<String> = (0..501).map(|i| format!("r{i}@contoso.com")).collect();
    let outcome = accept(
        &h.ctx,
        &h.snapshot,
        &milter("carol"),
        &mut session,
        Some(&many),
        None,
    )
    .await;
    assert!(
        matches!(&outcome, Accept::Refused(r) if r.reason == Reason::RecipientsPerMessage),
        "{outcome:?}"
    );
    let state = h
        .ctx
        .limiter
        .mailbox_state("carol@contoso.com")
        .await
        .unwrap();
    assert_eq!(state.usage, crate::limiter::Usage::default());
    // Counted, then taken back (its Sent Items copy could not be spooled).
    admitted(h.admit(&milter("carol"), &mut session).await);
    let internal = ["a@contoso.com".to_string(), "b@example.net".to_string()];
    assert!(matches!(
        accept(
            &h.ctx,
            &h.snapshot,
            &milter("carol"),
            &mut session,
            Some(&internal),
            None
        )
        .await,
        Accept::Accepted
    ));
    let state = h
        .ctx
        .limiter
        .mailbox_state("carol@contoso.com")
        .await
        .unwrap();
    assert_eq!(state.usage.internal_last_hour, 1);
    assert_eq!(state.usage.external_last_hour, 1);
    unaccept(&h.ctx, &mut session).await;
    let state = h
        .ctx
        .limiter
        .mailbox_state("carol@contoso.com")
        .await
        .unwrap();
    assert_eq!(state.usage, crate::limiter::Usage::default());

    let audit = h.audit().await;
    let refusals: Vec<&Value> = audit
        .iter()
        .filter(|e| e["reason"] == "recipients_per_message")
        .collect();
    assert_eq!(refusals.len(), 2);
    assert_eq!(refusals[0]["count"], 501);
    assert_eq!(refusals[0]["limit"], 500);
    assert_eq!(refusals[0]["threshold"], "recipients_per_message");
}

fn refused(outcome: Outcome) -> Refusal {
    match outcome {
        Outcome::Refused(r) => r,
        other => panic!("expected refused, got {other:?}"),
    }
}

#[tokio::test]
async fn authentication_rules_refuse_with_their_reason_and_reply() {
    let h = Harness::new();
    let oauth = |login, tls| Facts {
        tls,
        sasl_mechanism: Some("XOAUTH2"),
        ..milter(login)
    };
    // Basic authentication off: PLAIN refused, XOAUTH2 of the same mailbox admitted.
    let r = refused(
        h.admit(&milter("x@woodgrove.com"), &mut Hold::new(Scope::Session))
            .await,
    );
    assert_eq!(r.reason, Reason::BasicAuthDisabled);
    assert_eq!(r.reply.to_string(), reply::BASIC_AUTH_DISABLED);
    assert_eq!(r.mailbox, "x@woodgrove.com");
    assert_eq!(r.organization.as_deref(), Some("woodgrove"));
    let mut hold = Hold::new(Scope::Session);
    admitted(
        h.admit(&oauth("x@woodgrove.com", Some("TLSv1.3")), &mut hold)
            .await,
    );
    if let Some(lease) = hold.take_lease() {
        lease.release().await;
    }
    // TLS required: no TLS refused first, whatever the mechanism.
    let r = refused(
        h.admit(
            &oauth("x@woodgrove.com", None),
            &mut Hold::new(Scope::Session),
        )
        .await,
    );
    assert_eq!(r.reason, Reason::TlsRequired);
    assert_eq!(r.reply.to_string(), reply::TLS_REQUIRED);
    // Legacy TLS is refused by default (contoso sets nothing), with a 421.
    let r = refused(
        h.admit(
            &oauth("alice", Some("TLSv1.1")),
            &mut Hold::new(Scope::Transaction),
        )
        .await,
    );
    assert_eq!(r.reason, Reason::LegacyTls);
    assert_eq!(r.reply.to_string(), reply::LEGACY_TLS);
    // The mailbox's own settings win over its organization's.
    let old = Facts {
        tls: Some("TLSv1"),
        ..milter("legacy@woodgrove.com")
    };
    let mut hold = Hold::new(Scope::Session);
    admitted(h.admit(&old, &mut hold).await);
    if let Some(lease) = hold.take_lease() {
        lease.release().await;
    }
    assert_eq!(h.ctx.limiter.in_use("x@woodgrove.com").await, 0);

    let audit = h.audit().await;
    let refusals: Vec<(&str, &str, &str)> = audit
        .iter()
        .filter(|e| e["event"] == "submission_decision" && e["decision"] != "allow")
        .map(|e| {
            (
                e["reason"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
                e["reply"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refusals,
        [
            ("basic_auth_disabled", "reject", reply::BASIC_AUTH_DISABLED),
            ("tls_required", "reject", reply::TLS_REQUIRED),
            // A 421 is audited as what it is: a 4xx.
            ("legacy_tls", "defer", reply::LEGACY_TLS),
        ]
    );
    assert!(audit.iter().all(|e| e["event"] != "would_refuse"));
}

#[tokio::test]
async fn report_only_rules_let_through_and_audit_would_refuse_once_per_submission() {
    let h = Harness::new();
    let plain = Facts {
        tls: None,
        ..milter("dave@tailspin.com")
    };
    // A milter session: two messages, each audited.
    let mut hold = Hold::new(Scope::Session);
    admitted(h.admit(&plain, &mut hold).await);
    admitted(h.admit(&plain, &mut hold).await);
    if let Some(lease) = hold.take_lease() {
        lease.release().await;
    }
    // A policy transaction: three requests, audited once.
    let mut hold = Hold::new(Scope::Transaction);
    let txn = Facts {
        front_end: FrontEnd::Policy,
        ..plain
    };
    for _ in 0..3 {
        admitted(h.admit(&txn, &mut hold).await);
    }
    // OAuth over TLS breaks no rule: nothing to report.
    let clean = Facts {
        sasl_mechanism: Some("OAUTHBEARER"),
        tls: Some("TLSv1.2"),
        ..milter("erin@tailspin.com")
    };
    admitted(h.admit(&clean, &mut Hold::new(Scope::Session)).await);

    let audit = h.audit().await;
    let seq: Vec<(String, String)> = audit
        .iter()
        .filter(|e| e["event"] != "session_opened")
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let would = |r: &str| ("would_refuse".to_string(), r.to_string());
    let allow = || ("submission_decision".to_string(), String::new());
    assert_eq!(
        seq,
        [
            would("tls_required"),
            would("basic_auth_disabled"),
            allow(),
            would("tls_required"),
            would("basic_auth_disabled"),
            allow(),
            would("tls_required"),
            would("basic_auth_disabled"),
            allow(),
            allow(),
        ]
    );
    let w = audit.iter().find(|e| e["event"] == "would_refuse").unwrap();
    assert_eq!(w["mailbox"], "dave@tailspin.com");
    assert_eq!(w["organization"], "tailspin");
    assert_eq!(w["front_end"], "milter");
    assert_eq!(w["sasl_method"], "PLAIN");
    assert_eq!(w["reply"], reply::TLS_REQUIRED);
    assert!(w.get("decision").is_none());
}

#[tokio::test]
async fn the_check_at_auth_applies_the_rules_it_can_judge() {
    let h = Harness::new();
    let facts = |login, mech, secured| LoginFacts {
        login,
        remote: Some("192.0.2.7"),
        protocol: Some("smtp"),
        sasl_mechanism: mech,
        secured,
    };
    let refusal = |f: &LoginFacts<'_>| match check_login(&h.ctx, &h.snapshot, f) {
        LoginCheck::Refused { reason, text, .. } => Some((reason, text)),
        LoginCheck::Allowed { .. } => None,
    };
    assert_eq!(
        refusal(&facts("x@woodgrove.com", Some("PLAIN"), Some(true))),
        Some((
            Reason::BasicAuthDisabled,
            reply::AUTH_BASIC_AUTH_DISABLED.to_string()
        ))
    );
    // Dovecot without mechanism=%{mech}: nothing shows it is not Basic.
    assert_eq!(
        refusal(&facts("x@woodgrove.com", None, Some(true))).map(|r| r.0),
        Some(Reason::BasicAuthDisabled)
    );
    assert_eq!(
        refusal(&facts("x@woodgrove.com", Some("XOAUTH2"), Some(false))),
        Some((Reason::TlsRequired, reply::AUTH_TLS_REQUIRED.to_string()))
    );
    assert_eq!(
        refusal(&facts("x@woodgrove.com", Some("XOAUTH2"), Some(true))),
        None
    );
    // No `tls` field: the TLS rule cannot be judged here (the MAIL-stage front end does).
    assert_eq!(
        refusal(&facts("x@woodgrove.com", Some("XOAUTH2"), None)),
        None
    );
    match check_login(
        &h.ctx,
        &h.snapshot,
        &facts("dave@tailspin.com", Some("LOGIN"), Some(false)),
    ) {
        LoginCheck::Allowed { allowed, findings } => {
            assert_eq!(allowed.mailbox, "dave@tailspin.com");
            assert_eq!(
                findings.would_refuse().collect::<Vec<_>>(),
                [Reason::TlsRequired, Reason::BasicAuthDisabled]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(h.audit().await.is_empty());
}
